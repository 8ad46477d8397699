//! The driver task: the only owner of the core node (and, in hub mode, of the link to the
//! hub and its connection).

use crate::http::{self, Client, Msg, Shared};
use bytes::Bytes;
use futures_lite::future;
use hybridcast_core::hub::{HubLink, LinkAction, LinkStats};
use hybridcast_core::{
    CommandError, Event, Node, RequestId, SessionError, SessionId, SessionInfo, SessionState,
    SessionToken, Stats, Transmit, Value,
};
use hybridcast_runtime::endpoints::{ClusterView, WhoAmI, cluster_view};
use hybridcast_runtime::{
    Error, ReceiveDrops, ResumeWaiters, Resumed, RuntimeConfig, RuntimeStats, SendQueue, hub, serve,
};
use smol::channel::{self, Receiver, Sender, TrySendError};
use smol::{Async, Task};
use std::future::Future;
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Datagrams taken per wake-up before the driver looks at its other sources.
const BATCH: usize = 256;
/// Messages from connection tasks waiting for the driver.
const INBOX: usize = 1024;
/// How soon the driver looks again at an owner whose event queue was full.
const EVENTS_RECHECK: Duration = Duration::from_millis(20);
/// How long the driver stops reading the multicast socket after a receive error (so that an
/// error that persists cannot make it spin).
const RECEIVE_PAUSE: Duration = Duration::from_millis(10);
/// Reads of the hub connection per wake-up before the driver looks at its other sources.
const HUB_READ_BATCH: usize = 16;
/// On a graceful leave, how long the driver waits for the Leave datagram and the goodbye to
/// reach the hub, and for the hub to close its end (an unresponsive hub cannot hold a leave
/// up longer).
const HUB_GOODBYE: Duration = Duration::from_secs(1);

pub(crate) enum Command {
    Bind(String, String, Sender<Result<(), CommandError>>),
    Unbind(String, Sender<Result<bool, CommandError>>),
    Publish(String, Bytes, Sender<Result<u64, CommandError>>),
    View(Sender<ClusterView>),
    Stats(Sender<(Stats, RuntimeStats)>),
    Hub(Sender<Option<HubStatus>>),
    Session(SessionCommand),
    Resume(SessionToken, Sender<Result<Resumed, SessionError>>),
    Leave,
    Crash,
}

/// A session command carried to the driver.
pub(crate) enum SessionCommand {
    Create(Reply<SessionToken>),
    Put(SessionId, String, String, Value, Reply<Option<Value>>),
    Remove(SessionId, String, String, Reply<Option<Value>>),
    Commit(SessionId, Reply<SessionToken>),
    End(SessionId, Reply<bool>),
    State(SessionId, Sender<Option<(SessionInfo, SessionState)>>),
}

pub(crate) type Reply<T> = Sender<Result<T, SessionError>>;

/// The hub link's state, for [`crate::Node::hub_stats`] and [`crate::Node::hub_registered`].
pub(crate) struct HubStatus {
    pub stats: LinkStats,
    pub registered: bool,
}

/// A connection being opened: `Async::<TcpStream>::connect`, polled by the driver's wait
/// beside its other sources (so it never blocks them) and dropped to abandon it.
type Connecting = Pin<Box<dyn Future<Output = io::Result<Async<TcpStream>>> + Send>>;

/// Hub mode: the link and the connection it asked for.
struct Hub {
    link: HubLink,
    conn: HubConn,
}

enum HubConn {
    /// No connection (the link waits for its backoff, or has closed for good).
    None,
    /// Being opened.
    Connecting(Connecting),
    /// Open: bytes move both ways.
    Open(Async<TcpStream>),
}

pub(crate) struct Driver {
    node: Node,
    /// The multicast socket; `None` in hub mode.
    udp: Option<Async<UdpSocket>>,
    /// The link to the hub in hub mode; `None` with multicast.
    hub: Option<Hub>,
    /// The task serving the HTTP listener.
    accept: Task<()>,
    /// Messages from connection tasks.
    inbox: Receiver<Msg>,
    /// Every connection task stops when this is dropped, with the driver.
    _stop: Sender<()>,
    /// Receiving waits until then after an error.
    receive_paused: Option<Instant>,
    group: SocketAddr,
    sends: SendQueue,
    drops: ReceiveDrops,
    whoami: WhoAmI,
    shared: Arc<Shared>,
    client: Client,
    outbox: Sender<Event>,
    /// An event taken from the node (and shown to `resumes`) that the owner had no room for.
    held: Option<Event>,
    /// Callers of `session_resume` waiting for their outcome's event.
    resumes: ResumeWaiters<Sender<Result<Resumed, SessionError>>>,
    buf: Vec<u8>,
}

/// What woke the driver.
enum Wake {
    Datagram,
    Writable,
    /// The hub connection being opened is open, or failed to open.
    HubConnected(io::Result<Async<TcpStream>>),
    /// The hub connection has bytes to read (or was closed).
    HubReadable,
    /// The hub connection has room for the link's output.
    HubWritable,
    Command(Option<Command>),
    Msg(Msg),
    Timer,
}

impl Driver {
    pub fn new(cfg: RuntimeConfig, outbox: Sender<Event>) -> Result<Driver, Error> {
        let p = hybridcast_runtime::prepare(cfg, Instant::now())?;
        let udp = match p.udp {
            Some(udp) => {
                Some(Async::new(udp).map_err(Error::io("registering the multicast socket"))?)
            }
            None => None,
        };
        let hub = p.link.map(|link| Hub {
            link,
            conn: HubConn::None,
        });
        let listener =
            Async::new(p.listener).map_err(Error::io("registering the HTTP listener"))?;
        let shared = Arc::new(Shared::new(&p.config));
        let (to_driver, inbox) = channel::bounded(INBOX);
        let (stop, stopped) = channel::bounded::<()>(1);
        let accept = smol::spawn(http::accept(
            listener,
            shared.clone(),
            to_driver.clone(),
            stopped.clone(),
        ));
        Ok(Driver {
            node: p.node,
            udp,
            hub,
            accept,
            inbox,
            _stop: stop,
            receive_paused: None,
            group: p.config.group.into(),
            sends: SendQueue::default(),
            drops: p.drops,
            whoami: p.whoami,
            client: Client::new(shared.clone(), to_driver, stopped),
            shared,
            outbox,
            held: None,
            resumes: ResumeWaiters::default(),
            buf: vec![0; 65_536],
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.node.identity().http_addr
    }

    /// Runs until a leave, a crash or a dropped handle; the sockets are closed when it
    /// returns.
    pub async fn run(mut self, commands: Receiver<Command>) {
        self.drive(&commands).await;
        // The listener is closed before the caller of leave or crash hears that it ended.
        self.accept.cancel().await;
    }

    async fn drive(&mut self, commands: &Receiver<Command>) {
        self.pump(Instant::now());
        loop {
            let wake = self.wait(commands).await;
            let now = Instant::now();
            match wake {
                Wake::Datagram => self.receive(now),
                Wake::Writable => self.flush_sends(),
                Wake::Command(first) => {
                    // Commands already waiting join this tick and share its datagrams.
                    let mut next = first;
                    loop {
                        match next {
                            None | Some(Command::Leave) => {
                                self.node.leave();
                                self.pump(now);
                                self.hub_goodbye(now).await;
                                return;
                            }
                            Some(Command::Crash) => return,
                            Some(c) => self.obey(c, now),
                        }
                        let Ok(c) = commands.try_recv() else {
                            break;
                        };
                        next = Some(c);
                    }
                }
                Wake::Msg(m) => {
                    self.handle(m, now);
                    for _ in 0..BATCH {
                        let Ok(m) = self.inbox.try_recv() else {
                            break;
                        };
                        self.handle(m, now);
                    }
                }
                Wake::HubConnected(result) => self.hub_connected(result, now),
                Wake::HubReadable => self.hub_read(now),
                Wake::HubWritable => self.hub_write(now),
                Wake::Timer => {}
            }
            if let Some(h) = &mut self.hub {
                if h.link.poll_timeout().is_some_and(|t| t <= now) {
                    h.link.handle_timeout(now);
                    self.hub_deliver(now);
                }
            }
            if self.node.poll_timeout().is_some_and(|t| t <= now) {
                // Follow the system clock's corrections (NTP steps, a suspend): authenticated
                // traffic carries wall-clock stamps.
                self.node
                    .set_wall_clock(now, hybridcast_runtime::unix_millis());
                self.node.handle_timeout(now);
            }
            self.client.expire(now);
            self.pump(now);
        }
    }

    /// Waits for the first of: a datagram, room to send, a command, a message from a
    /// connection task, the node's (or the hub link's) deadline, and in hub mode the
    /// connection opening, bytes to read from it or room to write the link's output.
    async fn wait(&mut self, commands: &Receiver<Command>) -> Wake {
        let recheck = self.held.as_ref().map(|_| Instant::now() + EVENTS_RECHECK);
        let link = self.hub.as_ref().and_then(|h| h.link.poll_timeout());
        let deadline = [
            self.node.poll_timeout(),
            recheck,
            self.client.next_expiry(),
            link,
        ]
        .into_iter()
        .flatten()
        .min();
        let (udp, paused, sends_waiting) = (&self.udp, self.receive_paused, !self.sends.is_empty());
        let inbox = &self.inbox;
        let link_conn = self.hub.as_mut();
        let timer = async {
            match deadline {
                Some(d) => async_io::Timer::at(d).await,
                None => async_io::Timer::never().await,
            };
            Wake::Timer
        };
        let readable = async {
            let Some(udp) = udp else {
                return future::pending().await;
            };
            if let Some(until) = paused {
                async_io::Timer::at(until).await;
            }
            // An error shows again on the receive that follows.
            let _ = udp.readable().await;
            Wake::Datagram
        };
        let writable = async {
            let Some(udp) = udp.as_ref().filter(|_| sends_waiting) else {
                return future::pending().await;
            };
            let _ = udp.writable().await;
            Wake::Writable
        };
        let command = async { Wake::Command(commands.recv().await.ok()) };
        let msg = async {
            match inbox.recv().await {
                Ok(m) => Wake::Msg(m),
                Err(_) => future::pending().await,
            }
        };
        let hub = async {
            let Some(h) = link_conn else {
                return future::pending().await;
            };
            let output = h.link.peek_output().is_some();
            match &mut h.conn {
                HubConn::None => future::pending().await,
                HubConn::Connecting(opening) => Wake::HubConnected(opening.await),
                HubConn::Open(stream) => {
                    let read = async {
                        // An error or a close shows on the read that follows.
                        let _ = stream.readable().await;
                        Wake::HubReadable
                    };
                    let write = async {
                        if !output {
                            future::pending::<()>().await;
                        }
                        let _ = stream.writable().await;
                        Wake::HubWritable
                    };
                    future::race(read, write).await
                }
            }
        };
        future::race(
            future::race(future::race(readable, hub), command),
            future::race(msg, future::race(timer, writable)),
        )
        .await
    }

    /// Takes up to [`BATCH`] datagrams that are ready. An error (an ICMP report, a full
    /// buffer) is logged and reading pauses briefly, as the loss it may cause is recovered.
    fn receive(&mut self, now: Instant) {
        self.receive_paused = None;
        let Some(udp) = &self.udp else {
            return;
        };
        for _ in 0..BATCH {
            match udp.get_ref().recv_from(&mut self.buf) {
                Ok((n, from)) => {
                    if self.drops.drop_next(&mut self.shared.stats()) {
                        continue;
                    }
                    let datagram = Bytes::copy_from_slice(&self.buf[..n]);
                    self.node.handle_datagram(now, from, datagram);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!("multicast receive failed: {e}");
                    self.receive_paused = Some(now + RECEIVE_PAUSE);
                    return;
                }
            }
        }
    }

    /// Carries out a command at `now` (the tick's, as for every other input). What it queues
    /// (datagrams, point-to-point requests) goes out in the `pump` that ends the tick.
    fn obey(&mut self, c: Command, now: Instant) {
        // A caller that stopped waiting for the answer is no reason to stop.
        match c {
            Command::Bind(n, v, reply) => drop(reply.try_send(self.node.bind(&n, &v))),
            Command::Unbind(n, reply) => drop(reply.try_send(self.node.unbind(&n))),
            Command::Publish(t, p, reply) => drop(reply.try_send(self.node.publish(&t, p))),
            Command::View(reply) => drop(reply.try_send(cluster_view(&self.node))),
            Command::Stats(reply) => {
                let runtime = self.shared.stats().clone();
                drop(reply.try_send((self.node.stats(), runtime)))
            }
            Command::Hub(reply) => {
                let status = self.hub.as_ref().map(|h| HubStatus {
                    stats: h.link.stats(),
                    registered: h.link.is_registered(),
                });
                drop(reply.try_send(status))
            }
            Command::Session(c) => self.session(c, now),
            Command::Resume(token, reply) => {
                let answer = self.node.session_resume(now, token);
                // Anything but an answer known now waits for its event (see `pump`).
                if let Some((reply, outcome)) = self.resumes.start(token.id, answer, reply) {
                    drop(reply.try_send(outcome));
                }
            }
            Command::Leave | Command::Crash => {}
        }
    }

    fn session(&mut self, c: SessionCommand, now: Instant) {
        let node = &mut self.node;
        match c {
            SessionCommand::Create(reply) => drop(reply.try_send(node.session_create(now))),
            SessionCommand::Put(id, pool, key, value, reply) => {
                drop(reply.try_send(node.session_put(now, id, &pool, &key, value)))
            }
            SessionCommand::Remove(id, pool, key, reply) => {
                drop(reply.try_send(node.session_remove(now, id, &pool, &key)))
            }
            SessionCommand::Commit(id, reply) => drop(reply.try_send(node.session_commit(now, id))),
            SessionCommand::End(id, reply) => drop(reply.try_send(node.session_end(now, id))),
            SessionCommand::State(id, reply) => {
                let state = node.session(id).zip(node.session_state(id).cloned());
                drop(reply.try_send(state))
            }
        }
    }

    fn handle(&mut self, m: Msg, now: Instant) {
        match m {
            Msg::Serve(req, reply) => {
                let stats = self.shared.stats().clone();
                let resp = serve::answer(&mut self.node, &self.whoami, &stats, now, &req);
                drop(reply.try_send(serve::respond(&req, resp)));
            }
            Msg::Answered(id, result) => self.node.handle_http_response(now, id, result),
        }
    }

    /// Sends what the node queued, starts the requests it asked for, carries out the hub
    /// link's actions and writes its output, forwards the node's events. Every event is shown
    /// to the waiting resumes as it is taken from the node, before it waits (held) for room
    /// in the owner's queue.
    fn pump(&mut self, now: Instant) {
        while let Some(t) = self.node.poll_transmit() {
            match t {
                Transmit::Group(d) => self.send(now, d),
                Transmit::Request { id, to, request } => self.ask(now, id, to, request),
            }
        }
        self.hub_act();
        self.hub_write(now);
        if let Some(h) = &self.hub {
            // What `/metrics` and `stats` show of the link.
            let mut s = self.shared.stats();
            s.hub = Some(h.link.stats());
            s.hub_registered = h.link.is_registered();
        }
        loop {
            let e = match self.held.take() {
                Some(e) => e,
                None => {
                    let Some(e) = self.node.poll_event() else {
                        break;
                    };
                    for (waiter, outcome) in self.resumes.on_event(&e) {
                        drop(waiter.try_send(Ok(outcome)));
                    }
                    e
                }
            };
            match self.outbox.try_send(e) {
                Ok(()) => {}
                Err(TrySendError::Full(e)) => {
                    self.held = Some(e);
                    break;
                }
                Err(TrySendError::Closed(_)) => {}
            }
        }
    }

    fn ask(&mut self, now: Instant, id: RequestId, to: SocketAddr, request: Bytes) {
        if let Err(failure) = self.client.ask(id, to, request) {
            self.node.handle_http_response(now, id, Err(failure));
        }
    }

    fn send(&mut self, now: Instant, datagram: Bytes) {
        if let Some(h) = &mut self.hub {
            // Dropped (and counted by the link) while no connection is registered or its
            // window is full, as a multicast datagram may be lost: the receivers recover it.
            h.link.send_group(now, datagram);
            return;
        }
        let Some(udp) = &self.udp else {
            return;
        };
        let group = self.group;
        let dropped = self
            .sends
            .send(datagram, |d| udp.get_ref().send_to(d, group));
        if dropped > 0 {
            self.shared.stats().send_drops += dropped;
        }
    }

    fn flush_sends(&mut self) {
        let Some(udp) = &self.udp else {
            return;
        };
        let group = self.group;
        let dropped = self.sends.flush(|d| udp.get_ref().send_to(d, group));
        if dropped > 0 {
            self.shared.stats().send_drops += dropped;
        }
    }

    // ----- hub mode -----

    /// Carries out the link's actions: open a connection (raced in [`Driver::wait`], so it
    /// never holds the driver up), or drop the current one.
    fn hub_act(&mut self) {
        let Some(h) = &mut self.hub else {
            return;
        };
        while let Some(action) = h.link.poll_action() {
            match action {
                LinkAction::Connect { to } => {
                    tracing::debug!("connecting to the hub at {to}");
                    h.conn = HubConn::Connecting(Box::pin(Async::<TcpStream>::connect(to)));
                }
                LinkAction::Close => h.conn = HubConn::None,
            }
        }
    }

    /// The connection being opened is open (the link starts registering), or failed.
    fn hub_connected(&mut self, result: io::Result<Async<TcpStream>>, now: Instant) {
        let Some(h) = &mut self.hub else {
            return;
        };
        match result {
            Ok(stream) => {
                // Small frames (acks, pings, heartbeats) should not wait for more.
                let _ = stream.get_ref().set_nodelay(true);
                h.conn = HubConn::Open(stream);
                h.link.connected(now);
            }
            Err(e) => {
                tracing::debug!(
                    "connecting to the hub at {} failed: {e}",
                    h.link.config().hub
                );
                h.conn = HubConn::None;
                h.link.connection_lost(now);
            }
        }
        self.hub_deliver(now);
    }

    /// Reads what the hub sent, up to [`HUB_READ_BATCH`] reads (more wakes the driver
    /// again), and hands it to the link and on to the node.
    fn hub_read(&mut self, now: Instant) {
        let Some(h) = &mut self.hub else {
            return;
        };
        let HubConn::Open(stream) = &h.conn else {
            return;
        };
        let (mut lost, mut dropped) = (false, false);
        for _ in 0..HUB_READ_BATCH {
            match stream.get_ref().read(&mut self.buf) {
                Ok(0) => {
                    lost = true;
                    break;
                }
                Ok(n) => {
                    h.link.handle_bytes(now, &self.buf[..n]);
                    // Datagrams reach the node as they are read: the link holds only one
                    // read's worth.
                    let mut injected = 0;
                    while let Some(e) = hub::poll_hub(
                        &mut h.link,
                        &mut self.node,
                        &mut self.drops,
                        &mut injected,
                        now,
                    ) {
                        dropped |= hub::log_link_event(&e);
                    }
                    if injected > 0 {
                        self.shared.stats().injected_drops += injected;
                    }
                    if dropped {
                        // The link dropped the connection (a bye, a protocol error).
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!("reading from the hub failed: {e}");
                    lost = true;
                    break;
                }
            }
        }
        if dropped {
            h.conn = HubConn::None;
        } else if lost {
            self.hub_lost(now);
        }
    }

    /// Writes the link's output until it is all written or the socket is full (the wait
    /// then includes room to write).
    fn hub_write(&mut self, now: Instant) {
        let Some(h) = &mut self.hub else {
            return;
        };
        let HubConn::Open(stream) = &h.conn else {
            return;
        };
        if let Err(e) = hub::write_link(&mut h.link, stream.get_ref()) {
            tracing::debug!("writing to the hub failed: {e}");
            self.hub_lost(now);
        }
    }

    /// The hub connection closed or broke: the link reconnects after its backoff.
    fn hub_lost(&mut self, now: Instant) {
        let Some(h) = &mut self.hub else {
            return;
        };
        h.conn = HubConn::None;
        h.link.connection_lost(now);
        self.hub_deliver(now);
    }

    /// Hands the link's datagrams and departure notices to the node; logs the rest.
    fn hub_deliver(&mut self, now: Instant) {
        let Some(h) = &mut self.hub else {
            return;
        };
        let mut injected = 0;
        while let Some(e) = hub::poll_hub(
            &mut h.link,
            &mut self.node,
            &mut self.drops,
            &mut injected,
            now,
        ) {
            if hub::log_link_event(&e) {
                h.conn = HubConn::None;
            }
        }
        if injected > 0 {
            self.shared.stats().injected_drops += injected;
        }
    }

    /// On a graceful leave (the node's Leave datagram already handed to the link): says
    /// goodbye to the hub, writes the Leave and the goodbye out, closes our side and waits
    /// for the hub to close its own, so that nothing unread turns the close into a reset
    /// that could discard them; for at most [`HUB_GOODBYE`].
    async fn hub_goodbye(&mut self, now: Instant) {
        let Some(h) = &mut self.hub else {
            return;
        };
        h.link.close();
        let until = Instant::now() + HUB_GOODBYE;
        let give_up = || async move {
            async_io::Timer::at(until).await;
            false
        };
        loop {
            self.hub_write(now);
            let Some(Hub {
                link,
                conn: HubConn::Open(stream),
            }) = &self.hub
            else {
                return;
            };
            if link.peek_output().is_none() {
                break;
            }
            let room = async { stream.writable().await.is_ok() };
            if !future::or(room, give_up()).await {
                return;
            }
        }
        let Some(Hub {
            conn: HubConn::Open(stream),
            ..
        }) = &self.hub
        else {
            return;
        };
        if stream.get_ref().shutdown(Shutdown::Write).is_err() {
            return;
        }
        // Read (and ignore) what the hub still sends until it closes its end.
        loop {
            match stream.get_ref().read(&mut self.buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let more = async { stream.readable().await.is_ok() };
                    if !future::or(more, give_up()).await {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    }
}
