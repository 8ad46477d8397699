//! A member on a thread of its own, for applications without a mio loop.

use crate::Driver;
use bytes::Bytes;
use hybridcast_core::{
    CommandError, Event, SessionError, SessionId, SessionInfo, SessionState, SessionToken, Stats,
    Value,
};
use hybridcast_runtime::endpoints::{ClusterView, cluster_view};
use hybridcast_runtime::{Error, ResumeWaiters, Resumed, RuntimeConfig, RuntimeStats};
use mio::{Events, Poll, Token, Waker};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Commands waiting for the node's thread; a caller blocks while this many wait.
pub const COMMAND_QUEUE: usize = 1024;
/// Events waiting for the owner. When the owner falls this far behind, the thread stops
/// draining the node, whose own backlog policy then applies (new data is refused and
/// recovered later; only membership events beyond `max_queued_events` waiting are dropped).
pub const EVENT_QUEUE: usize = 65_536;

const WAKER: Token = Token(0);
const BASE: Token = Token(1);

enum Command {
    Bind(String, String, SyncSender<Result<(), CommandError>>),
    Unbind(String, SyncSender<Result<bool, CommandError>>),
    Publish(String, Bytes, SyncSender<Result<u64, CommandError>>),
    View(SyncSender<ClusterView>),
    Stats(SyncSender<(Stats, RuntimeStats)>),
    Session(SessionCommand),
    Resume(SessionToken, SyncSender<Result<Resumed, SessionError>>),
    Shutdown,
    Crash,
}

/// A session command carried to the member's thread.
enum SessionCommand {
    Create(SyncSender<Result<SessionToken, SessionError>>),
    Put(SessionId, String, String, Value, Reply<Option<Value>>),
    Remove(SessionId, String, String, Reply<Option<Value>>),
    Commit(SessionId, SyncSender<Result<SessionToken, SessionError>>),
    End(SessionId, Reply<bool>),
    State(SessionId, SyncSender<Option<(SessionInfo, SessionState)>>),
}

type Reply<T> = SyncSender<Result<T, SessionError>>;

/// The handle of a spawned member (see [`spawn`]). Dropping it shuts the member down.
pub struct NodeHandle {
    commands: SyncSender<Command>,
    waker: Arc<Waker>,
    events: Receiver<Event>,
    thread: Option<JoinHandle<()>>,
    http_addr: SocketAddr,
}

/// Starts a member on its own thread with its own `Poll`.
pub fn spawn(config: RuntimeConfig) -> Result<NodeHandle, Error> {
    let io = |what: &'static str| move |source: std::io::Error| Error::Io { what, source };
    let mut driver = Driver::new(config)?;
    let poll = Poll::new().map_err(io("creating the poll"))?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(io("creating the waker"))?);
    driver
        .register(poll.registry(), BASE)
        .map_err(io("registering the sockets"))?;
    let http_addr = driver.http_addr();
    let (commands, inbox) = mpsc::sync_channel(COMMAND_QUEUE);
    let (outbox, events) = mpsc::sync_channel(EVENT_QUEUE);
    let thread = std::thread::Builder::new()
        .name(format!("hybridcast-{}", driver.node().identity().name))
        .spawn(move || run(poll, driver, inbox, outbox))
        .map_err(io("starting the thread"))?;
    Ok(NodeHandle {
        commands,
        waker,
        events,
        thread: Some(thread),
        http_addr,
    })
}

fn run(mut poll: Poll, mut driver: Driver, inbox: Receiver<Command>, outbox: SyncSender<Event>) {
    let mut events = Events::with_capacity(1024);
    let mut held: Option<Event> = None;
    let mut resumes = ResumeWaiters::default();
    loop {
        let now = Instant::now();
        let timeout = driver
            .poll_timeout()
            .map(|t| t.saturating_duration_since(now).min(Duration::from_secs(1)));
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                tracing::error!("poll failed, member stops: {e}");
                return;
            }
        }
        let now = Instant::now();
        let mut commands = false;
        for e in events.iter() {
            if e.token() == WAKER {
                commands = true;
            } else {
                driver.handle_event(e, now);
            }
        }
        if driver.poll_timeout().is_some_and(|t| t <= now) {
            driver.handle_timeout(now);
        }
        if commands {
            match obey(&mut driver, &inbox, &mut resumes) {
                Some(Stop::Leave) => {
                    driver.leave();
                    return;
                }
                Some(Stop::Crash) => return,
                None => {}
            }
        }
        // Forward events until the owner's queue is full.
        loop {
            let Some(e) = held.take().or_else(|| driver.poll_event()) else {
                break;
            };
            for (waiter, outcome) in resumes.on_event(&e) {
                drop(waiter.send(Ok(outcome)));
            }
            match outbox.try_send(e) {
                Ok(()) => {}
                Err(TrySendError::Full(e)) => {
                    held = Some(e);
                    break;
                }
                Err(TrySendError::Disconnected(_)) => break,
            }
        }
    }
}

enum Stop {
    Leave,
    Crash,
}

/// Carries out waiting commands; says how to stop on shutdown, crash, or a dropped handle.
fn obey(
    driver: &mut Driver,
    inbox: &Receiver<Command>,
    resumes: &mut ResumeWaiters<SyncSender<Result<Resumed, SessionError>>>,
) -> Option<Stop> {
    loop {
        let cmd = match inbox.try_recv() {
            Ok(c) => c,
            Err(mpsc::TryRecvError::Empty) => return None,
            Err(mpsc::TryRecvError::Disconnected) => return Some(Stop::Leave),
        };
        // A caller that stopped waiting for the answer is no reason to stop.
        match cmd {
            Command::Bind(n, v, reply) => drop(reply.send(driver.bind(&n, &v))),
            Command::Unbind(n, reply) => drop(reply.send(driver.unbind(&n))),
            Command::Publish(t, p, reply) => drop(reply.send(driver.publish(&t, p))),
            Command::View(reply) => drop(reply.send(cluster_view(driver.node()))),
            Command::Stats(reply) => {
                drop(reply.send((driver.stats(), driver.driver_stats().clone())))
            }
            Command::Session(c) => session(driver, c),
            Command::Resume(token, reply) => {
                let answer = driver.session_resume(token);
                if let Some((reply, outcome)) = resumes.start(token.id, answer, reply) {
                    drop(reply.send(outcome));
                }
            }
            Command::Shutdown => return Some(Stop::Leave),
            Command::Crash => return Some(Stop::Crash),
        }
    }
}

fn session(driver: &mut Driver, c: SessionCommand) {
    match c {
        SessionCommand::Create(reply) => drop(reply.send(driver.session_create())),
        SessionCommand::Put(id, pool, key, value, reply) => {
            drop(reply.send(driver.session_put(id, &pool, &key, value)))
        }
        SessionCommand::Remove(id, pool, key, reply) => {
            drop(reply.send(driver.session_remove(id, &pool, &key)))
        }
        SessionCommand::Commit(id, reply) => drop(reply.send(driver.session_commit(id))),
        SessionCommand::End(id, reply) => drop(reply.send(driver.session_end(id))),
        SessionCommand::State(id, reply) => {
            let state = driver.session(id).zip(driver.session_state(id).cloned());
            drop(reply.send(state))
        }
    }
}

/// The member's thread is gone (it stopped after an error, or was shut down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the member's thread has stopped")]
pub struct Stopped;

impl NodeHandle {
    fn call<T>(&self, make: impl FnOnce(SyncSender<T>) -> Command) -> Result<T, Stopped> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.commands.send(make(tx)).map_err(|_| Stopped)?;
        self.waker.wake().map_err(|_| Stopped)?;
        rx.recv().map_err(|_| Stopped)
    }

    /// Where the member serves HTTP (its cluster view, metrics, the protocol's exchanges).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Offers `name = value`.
    pub fn bind(&self, name: &str, value: &str) -> Result<Result<(), CommandError>, Stopped> {
        self.call(|r| Command::Bind(name.to_owned(), value.to_owned(), r))
    }

    /// Withdraws the offer `name`.
    pub fn unbind(&self, name: &str) -> Result<Result<bool, CommandError>, Stopped> {
        self.call(|r| Command::Unbind(name.to_owned(), r))
    }

    /// Publishes `payload` on `topic`.
    pub fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<Result<u64, CommandError>, Stopped> {
        let payload = payload.into();
        self.call(|r| Command::Publish(topic.to_owned(), payload, r))
    }

    /// A snapshot of the member's view of the cluster.
    pub fn view(&self) -> Result<ClusterView, Stopped> {
        self.call(Command::View)
    }

    /// The core's and the runtime's counters.
    pub fn stats(&self) -> Result<(Stats, RuntimeStats), Stopped> {
        self.call(Command::Stats)
    }

    /// Starts a session served by this member (see `hybridcast_core::session`).
    pub fn session_create(&self) -> Result<Result<SessionToken, SessionError>, Stopped> {
        self.call(|r| Command::Session(SessionCommand::Create(r)))
    }

    /// Sets `pool[key] = value` in a session this member serves; returns the value replaced.
    pub fn session_put(
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
    }

    /// Removes `pool[key]` from a session this member serves; returns the value removed.
    pub fn session_remove(
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
    }

    /// Ends a user interaction: commits and replicates the changes; returns the token to give
    /// the user. The secondary's acknowledgement comes later as
    /// [`Event::SessionReplicated`].
    pub fn session_commit(
        &self,
        id: SessionId,
    ) -> Result<Result<SessionToken, SessionError>, Stopped> {
        self.call(|r| Command::Session(SessionCommand::Commit(id, r)))
    }

    /// Ends (logs out) a session this member serves.
    pub fn session_end(&self, id: SessionId) -> Result<Result<bool, SessionError>, Stopped> {
        self.call(|r| Command::Session(SessionCommand::End(id, r)))
    }

    /// A session this member serves: its info and state (uncommitted changes included).
    pub fn session(&self, id: SessionId) -> Result<Option<(SessionInfo, SessionState)>, Stopped> {
        self.call(|r| Command::Session(SessionCommand::State(id, r)))
    }

    /// Finds the session `token` names and makes this member its primary, waiting for the
    /// outcome: at once if this member serves it; after a failover (from the local replica, or
    /// a copy claimed point-to-point — bounded by a few `request_timeout`s) with the state to
    /// rebuild from; or `Expired`. The failover is also reported on [`NodeHandle::events`].
    pub fn session_resume(
        &self,
        token: SessionToken,
    ) -> Result<Result<Resumed, SessionError>, Stopped> {
        self.call(|r| Command::Resume(token, r))
    }

    /// The member's events, in order (bounded: see [`EVENT_QUEUE`]).
    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }

    /// Leaves the cluster (the Leave datagram goes out), closes the sockets and joins the
    /// thread.
    pub fn shutdown(mut self) {
        self.stop(Command::Shutdown);
    }

    /// Stops the member without a Leave, as if its process died: the others detect it by
    /// missing heartbeats and a failed probe. For demos and tests.
    pub fn crash(mut self) {
        self.stop(Command::Crash);
    }

    fn stop(&mut self, how: Command) {
        if let Some(thread) = self.thread.take() {
            if self.commands.send(how).is_ok() {
                let _ = self.waker.wake();
            }
            let _ = thread.join();
        }
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        self.stop(Command::Shutdown);
    }
}
