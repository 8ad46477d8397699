//! # hybridcast-smol
//!
//! The smol/async-io runtime of hybridcast: an async member on real UDP multicast (or, in hub
//! mode, one TCP connection to a hub) and TCP/HTTP sockets, driving a
//! [`hybridcast_core::Node`]. It speaks the same wire protocol as the mio
//! runtime (`hybridcast-mio`), and members of both kinds form one cluster.
//!
//! ```no_run
//! # async fn demo() -> Result<(), hybridcast_smol::Error> {
//! use futures_lite::StreamExt;
//! use hybridcast_smol::{Node, RuntimeConfig};
//!
//! let node = Node::start(RuntimeConfig::new("shop", "web-1")).await?;
//! node.bind("checkout", "http://10.0.0.7:8080").await.ok();
//! let mut events = node.events();
//! while let Some(event) = events.next().await {
//!     println!("{event:?}");
//! }
//! node.leave().await;
//! # Ok(()) }
//! ```
//!
//! One task (the driver) owns the core node: it receives group datagrams, sends what the
//! node queues, re-arms an [`async_io::Timer`] from `poll_timeout`, carries out commands and
//! forwards events. HTTP connections, served and requested, run in tasks of their own and
//! talk to the driver through bounded channels; they share one connection limit. Tasks run on
//! smol's global executor. Sockets are built by `hybridcast-runtime` with the same options as
//! the mio runtime's, and the same endpoints are served (`/hybridcast/v1/cluster`,
//! `/hybridcast/v1/whoami`, `/metrics`).
//!
//! ## Hub mode
//!
//! Where IP multicast is not routed, set [`RuntimeConfig::transport`] to
//! [`Transport::Hub`] with the hub's address (a hub is `hybridcast hub --listen ADDR`, or
//! `hybridcast_mio::spawn_hub`). No multicast socket is opened: the driver also owns the
//! member's [`HubLink`](hybridcast_core::hub::HubLink) and its TCP connection, opening it
//! when the link asks (the connect is awaited beside the driver's other sources, never in
//! its way), reading and writing it as it becomes ready, and opening a new one after the
//! link's backoff when it is lost. Group datagrams go to the hub, which relays them to every
//! other member; point-to-point requests still go member to member. A graceful leave sends
//! the Leave datagram, then a goodbye to the hub. [`Node::hub_stats`] and
//! [`Node::hub_registered`] show the link's state.
//!
//! ```no_run
//! # async fn demo() -> Result<(), hybridcast_smol::Error> {
//! use hybridcast_smol::core::hub::LinkConfig;
//! use hybridcast_smol::{Node, RuntimeConfig, Transport};
//!
//! let mut config = RuntimeConfig::new("shop", "web-2");
//! let hub = std::net::SocketAddr::from(([127, 0, 0, 1], 45_893));
//! config.transport = Transport::Hub(LinkConfig::new(hub));
//! let node = Node::start(config).await?;
//! node.bind("checkout", "http://10.0.0.8:8080").await.ok();
//! # Ok(()) }
//! ```

mod driver;
mod http;

pub use hybridcast_core as core;
pub use hybridcast_runtime::{
    DEFAULT_GROUP, Error, Resumed, RuntimeConfig, RuntimeStats, Transport, endpoints, keys,
    serve::MAX_REQUEST_BODY, unix_millis,
};

use bytes::Bytes;
use driver::{Command, SessionCommand};
use futures_lite::Stream;
use hybridcast_core::hub::LinkStats;
use hybridcast_core::{
    CommandError, Event, SessionError, SessionId, SessionInfo, SessionState, SessionToken, Stats,
    Value,
};
use hybridcast_runtime::endpoints::ClusterView;
use smol::Task;
use smol::channel::{self, Receiver, Sender};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Commands waiting for the driver; a caller waits while this many do.
pub const COMMAND_QUEUE: usize = 1024;
/// Events waiting for the owner. When the owner falls this far behind, the driver stops
/// draining the node, whose own backlog policy then applies (new data is refused and
/// recovered later; only membership events beyond `max_queued_events` waiting are dropped).
pub const EVENT_QUEUE: usize = 65_536;

/// The member's driver has stopped (it was shut down, or its multicast socket failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the member's driver has stopped")]
pub struct Stopped;

/// A running member. Dropping it makes the member leave in the background; [`Node::leave`]
/// does the same and waits for it.
pub struct Node {
    commands: Sender<Command>,
    events: Receiver<Event>,
    task: Option<Task<()>>,
    http_addr: SocketAddr,
}

impl Node {
    /// Opens the sockets, builds the node (validating the configuration) and starts its
    /// driver on smol's global executor.
    pub async fn start(config: RuntimeConfig) -> Result<Node, Error> {
        let (commands, inbox) = channel::bounded(COMMAND_QUEUE);
        let (outbox, events) = channel::bounded(EVENT_QUEUE);
        let driver = driver::Driver::new(config, outbox)?;
        let http_addr = driver.http_addr();
        let task = smol::spawn(driver.run(inbox));
        Ok(Node {
            commands,
            events,
            task: Some(task),
            http_addr,
        })
    }

    async fn call<T>(&self, make: impl FnOnce(Sender<T>) -> Command) -> Result<T, Stopped> {
        let (tx, rx) = channel::bounded(1);
        self.commands.send(make(tx)).await.map_err(|_| Stopped)?;
        rx.recv().await.map_err(|_| Stopped)
    }

    /// Where the member serves HTTP (its cluster view, metrics, the protocol's exchanges).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Offers `name = value` to the cluster. Commands issued together share datagrams.
    pub async fn bind(&self, name: &str, value: &str) -> Result<Result<(), CommandError>, Stopped> {
        self.call(|r| Command::Bind(name.to_owned(), value.to_owned(), r))
            .await
    }

    /// Withdraws the offer `name`; true if it was offered.
    pub async fn unbind(&self, name: &str) -> Result<Result<bool, CommandError>, Stopped> {
        self.call(|r| Command::Unbind(name.to_owned(), r)).await
    }

    /// Publishes `payload` on `topic`; returns its sequence number.
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<Result<u64, CommandError>, Stopped> {
        let payload = payload.into();
        self.call(|r| Command::Publish(topic.to_owned(), payload, r))
            .await
    }

    /// A snapshot of the member's view of the cluster.
    pub async fn view(&self) -> Result<ClusterView, Stopped> {
        self.call(Command::View).await
    }

    /// The core's and the runtime's counters.
    pub async fn stats(&self) -> Result<(Stats, RuntimeStats), Stopped> {
        self.call(Command::Stats).await
    }

    /// In hub mode, the hub link's counters (connection attempts, registrations, losses,
    /// datagrams each way, datagrams dropped while offline or beyond the window); `None`
    /// with multicast.
    pub async fn hub_stats(&self) -> Result<Option<LinkStats>, Stopped> {
        Ok(self.call(Command::Hub).await?.map(|h| h.stats))
    }

    /// In hub mode, whether the hub has accepted this member's registration on the current
    /// connection (group datagrams flow); false with multicast.
    pub async fn hub_registered(&self) -> Result<bool, Stopped> {
        Ok(self.call(Command::Hub).await?.is_some_and(|h| h.registered))
    }

    /// Starts a session served by this member (see `hybridcast_core::session`).
    pub async fn session_create(&self) -> Result<Result<SessionToken, SessionError>, Stopped> {
        self.call(|r| Command::Session(SessionCommand::Create(r)))
            .await
    }

    /// Sets `pool[key] = value` in a session this member serves; returns the value replaced.
    pub async fn session_put(
        &self,
        id: SessionId,
        pool: &str,
        key: &str,
        value: Value,
    ) -> Result<Result<Option<Value>, SessionError>, Stopped> {
        self.call(|r| {
            Command::Session(SessionCommand::Put(
                id,
                pool.to_owned(),
                key.to_owned(),
                value,
                r,
            ))
        })
        .await
    }

    /// Removes `pool[key]` from a session this member serves; returns the value removed.
    pub async fn session_remove(
        &self,
        id: SessionId,
        pool: &str,
        key: &str,
    ) -> Result<Result<Option<Value>, SessionError>, Stopped> {
        self.call(|r| {
            Command::Session(SessionCommand::Remove(
                id,
                pool.to_owned(),
                key.to_owned(),
                r,
            ))
        })
        .await
    }

    /// Ends a user interaction: commits and replicates the changes; returns the token to give
    /// the user. The secondary's acknowledgement comes later as
    /// [`Event::SessionReplicated`].
    pub async fn session_commit(
        &self,
        id: SessionId,
    ) -> Result<Result<SessionToken, SessionError>, Stopped> {
        self.call(|r| Command::Session(SessionCommand::Commit(id, r)))
            .await
    }

    /// Ends (logs out) a session this member serves.
    pub async fn session_end(&self, id: SessionId) -> Result<Result<bool, SessionError>, Stopped> {
        self.call(|r| Command::Session(SessionCommand::End(id, r)))
            .await
    }

    /// A session this member serves: its info and state (uncommitted changes included).
    pub async fn session(
        &self,
        id: SessionId,
    ) -> Result<Option<(SessionInfo, SessionState)>, Stopped> {
        self.call(|r| Command::Session(SessionCommand::State(id, r)))
            .await
    }

    /// Finds the session `token` names and makes this member its primary, waiting for the
    /// outcome: at once if this member serves it; after a failover (from the local replica, or
    /// a copy claimed point-to-point — bounded by a few `request_timeout`s) with the state to
    /// rebuild from; or `Expired`. The failover is also reported on [`Node::events`].
    ///
    /// The outcome is known when the driver takes its event from the node, which it stops
    /// doing while the owner's event queue is full ([`EVENT_QUEUE`]): an owner that does not
    /// read its events makes resumes wait too.
    pub async fn session_resume(
        &self,
        token: SessionToken,
    ) -> Result<Result<Resumed, SessionError>, Stopped> {
        self.call(|r| Command::Resume(token, r)).await
    }

    /// The member's events, in order, as a `Stream` (bounded: see [`EVENT_QUEUE`]). Every
    /// call returns a handle on the same queue: an event goes to one of them.
    pub fn events(&self) -> Events {
        Events(Box::pin(self.events.clone()))
    }

    /// Leaves the cluster (the Leave datagram goes out), closes the sockets and waits for
    /// the driver to end.
    pub async fn leave(mut self) {
        self.stop(Command::Leave).await;
    }

    /// Stops the member without a Leave, as if its process died: the others detect it by
    /// missing heartbeats and a failed probe. For demos and tests.
    pub async fn crash(mut self) {
        self.stop(Command::Crash).await;
    }

    /// Cancel-safe: the task stays in `self` while this waits, so a caller that gives up
    /// waiting drops the node, whose `Drop` lets the driver finish (and leave) on its own.
    async fn stop(&mut self, how: Command) {
        if let Some(task) = &mut self.task {
            // If the driver already stopped, the send fails and the task is done anyway.
            let _ = self.commands.send(how).await;
            task.await;
            self.task = None;
        }
    }
}

/// A member's events, in order: a `Stream` (and `Unpin`, so `StreamExt::next` works on it
/// directly). It ends when the member has stopped and every event was taken.
pub struct Events(Pin<Box<Receiver<Event>>>);

impl Events {
    /// The next event, waiting for one; `None` once the member has stopped and every event
    /// was taken.
    pub async fn recv(&self) -> Option<Event> {
        self.0.recv().await.ok()
    }

    /// The next event if one is waiting.
    pub fn try_recv(&self) -> Option<Event> {
        self.0.try_recv().ok()
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.0.as_mut().poll_next(cx)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The closed command queue makes the driver leave; let it finish on its own.
        if let Some(task) = self.task.take() {
            task.detach();
        }
    }
}
