//! The driver task: the only owner of the core node.

use crate::http::{self, Client, Msg, Shared};
use bytes::Bytes;
use futures_lite::future;
use hybridcast_core::{
    CommandError, Event, Node, RequestId, SessionError, SessionId, SessionInfo, SessionState,
    SessionToken, Stats, Transmit, Value,
};
use hybridcast_runtime::endpoints::{ClusterView, WhoAmI, cluster_view};
use hybridcast_runtime::{
    Error, ReceiveDrops, ResumeWaiters, Resumed, RuntimeConfig, RuntimeStats, SendQueue, serve,
};
use smol::channel::{self, Receiver, Sender, TrySendError};
use smol::{Async, Task};
use std::io;
use std::net::{SocketAddr, UdpSocket};
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

pub(crate) enum Command {
    Bind(String, String, Sender<Result<(), CommandError>>),
    Unbind(String, Sender<Result<bool, CommandError>>),
    Publish(String, Bytes, Sender<Result<u64, CommandError>>),
    View(Sender<ClusterView>),
    Stats(Sender<(Stats, RuntimeStats)>),
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

pub(crate) struct Driver {
    node: Node,
    udp: Async<UdpSocket>,
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
    Command(Option<Command>),
    Msg(Msg),
    Timer,
}

impl Driver {
    pub fn new(cfg: RuntimeConfig, outbox: Sender<Event>) -> Result<Driver, Error> {
        let p = hybridcast_runtime::prepare(cfg, Instant::now())?;
        let Some(udp) = p.udp else {
            return Err(Error::Config {
                field: "transport",
                reason: "hub mode is not supported by the smol runtime yet".into(),
            });
        };
        let udp = Async::new(udp).map_err(Error::io("registering the multicast socket"))?;
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
                Wake::Timer => {}
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
    /// connection task, the node's deadline.
    async fn wait(&self, commands: &Receiver<Command>) -> Wake {
        let recheck = self.held.as_ref().map(|_| Instant::now() + EVENTS_RECHECK);
        let deadline = [self.node.poll_timeout(), recheck, self.client.next_expiry()]
            .into_iter()
            .flatten()
            .min();
        let timer = async {
            match deadline {
                Some(d) => async_io::Timer::at(d).await,
                None => async_io::Timer::never().await,
            };
            Wake::Timer
        };
        let readable = async {
            if let Some(until) = self.receive_paused {
                async_io::Timer::at(until).await;
            }
            // An error shows again on the receive that follows.
            let _ = self.udp.readable().await;
            Wake::Datagram
        };
        let writable = async {
            if self.sends.is_empty() {
                future::pending::<()>().await;
            }
            let _ = self.udp.writable().await;
            Wake::Writable
        };
        let command = async { Wake::Command(commands.recv().await.ok()) };
        let msg = async {
            match self.inbox.recv().await {
                Ok(m) => Wake::Msg(m),
                Err(_) => future::pending().await,
            }
        };
        future::race(
            future::race(readable, command),
            future::race(msg, future::race(timer, writable)),
        )
        .await
    }

    /// Takes up to [`BATCH`] datagrams that are ready. An error (an ICMP report, a full
    /// buffer) is logged and reading pauses briefly, as the loss it may cause is recovered.
    fn receive(&mut self, now: Instant) {
        self.receive_paused = None;
        for _ in 0..BATCH {
            match self.udp.get_ref().recv_from(&mut self.buf) {
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

    /// Sends what the node queued, starts the requests it asked for, forwards its events.
    /// Every event is shown to the waiting resumes as it is taken from the node, before it
    /// waits (held) for room in the owner's queue.
    fn pump(&mut self, now: Instant) {
        while let Some(t) = self.node.poll_transmit() {
            match t {
                Transmit::Group(d) => self.send(d),
                Transmit::Request { id, to, request } => self.ask(now, id, to, request),
            }
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

    fn send(&mut self, datagram: Bytes) {
        let (udp, group) = (&self.udp, self.group);
        let dropped = self
            .sends
            .send(datagram, |d| udp.get_ref().send_to(d, group));
        if dropped > 0 {
            self.shared.stats().send_drops += dropped;
        }
    }

    fn flush_sends(&mut self) {
        let (udp, group) = (&self.udp, self.group);
        let dropped = self.sends.flush(|d| udp.get_ref().send_to(d, group));
        if dropped > 0 {
            self.shared.stats().send_drops += dropped;
        }
    }
}
