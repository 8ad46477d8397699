//! The hub (message server) of hub mode on mio: the core [`Hub`] state machine behind a TCP
//! listener. `hybridcast hub --listen ADDR` runs it; [`spawn_hub`] runs it on a thread;
//! [`HubServer`] embeds it in an event loop you own.

use hybridcast_core::hub::{ConnId, Hub, HubAction, HubConfig, HubEvent, HubStats};
use hybridcast_runtime::{Error, socket};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Connections accepted per wake-up before yielding to the loop.
const ACCEPT_BATCH: usize = 64;
/// Reads of one connection per wake-up before yielding to the others.
const READ_BATCH: usize = 16;
/// Socket slots beyond `max_connections`, so that a connection over the limit can still be
/// told why it is refused.
const SPARE_SLOTS: usize = 16;

/// A hub server's settings.
#[derive(Debug, Clone)]
pub struct HubServerConfig {
    /// Where to listen. Default `127.0.0.1:45893`.
    pub listen: SocketAddr,
    /// The hub's own settings (cluster, keys, limits).
    pub hub: HubConfig,
    /// Key of the challenges' nonces; `None` (the default) draws one from the operating
    /// system, as it should be: a key used twice repeats the nonces.
    pub secret: Option<[u8; 32]>,
    /// Allows a hub without keys although it listens beyond loopback. Default false: anyone
    /// who can reach it could then register and receive the cluster's traffic.
    pub allow_unauthenticated: bool,
}

/// The hub's default port.
pub const DEFAULT_HUB_PORT: u16 = 45_893;

impl HubServerConfig {
    /// Defaults for a hub serving `cluster`, on loopback.
    pub fn new(cluster: &str) -> Self {
        HubServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_HUB_PORT)),
            hub: HubConfig::new(cluster),
            secret: None,
            allow_unauthenticated: false,
        }
    }

    fn validate(&self) -> Result<(), Error> {
        self.hub.validate().map_err(|e| Error::Config {
            field: "hub",
            reason: e.to_string(),
        })?;
        if !self.listen.ip().is_loopback() && self.hub.keys.is_none() && !self.allow_unauthenticated
        {
            return Err(Error::Config {
                field: "hub.keys",
                reason: format!(
                    "no cluster key, and the hub listens on {} beyond this host: give a key (a key file, or the {} variable) or allow unauthenticated traffic explicitly",
                    self.listen,
                    hybridcast_runtime::keys::KEYS_ENV
                ),
            });
        }
        Ok(())
    }
}

/// Counters of the hub server's sockets (the hub's own are in [`HubStats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubServerStats {
    /// Connections dropped at accept because even the spare slots were taken.
    pub accept_dropped: u64,
    /// Read or write errors that ended a connection.
    pub io_errors: u64,
}

struct Slot {
    stream: TcpStream,
    id: ConnId,
}

/// A hub on sockets, driven by its owner's mio loop; the same call order as the member
/// [`crate::Driver`]: [`HubServer::register`], then [`HubServer::handle_event`] for its
/// tokens and [`HubServer::handle_timeout`] at [`HubServer::poll_timeout`].
pub struct HubServer {
    hub: Hub,
    listener: TcpListener,
    local: SocketAddr,
    registry: Option<Registry>,
    base: usize,
    slots: Vec<Option<Slot>>,
    /// The slot of each connection.
    by_id: HashMap<ConnId, usize>,
    next_id: u64,
    more_accept: bool,
    more_read: Vec<usize>,
    stats: HubServerStats,
    buf: Vec<u8>,
    last_now: Instant,
}

impl HubServer {
    /// Binds the listener and builds the hub.
    pub fn new(config: HubServerConfig) -> Result<HubServer, Error> {
        config.validate()?;
        let secret = match config.secret {
            Some(s) => s,
            None => hybridcast_runtime::random_secret().ok_or_else(|| Error::Config {
                field: "secret",
                reason: "the operating system's random source failed".into(),
            })?,
        };
        let slots = config.hub.max_connections + SPARE_SLOTS;
        let hub = Hub::new(config.hub, secret).map_err(|e| Error::Config {
            field: "hub",
            reason: e.to_string(),
        })?;
        let std_listener =
            socket::listener(config.listen).map_err(Error::io("binding the hub listener"))?;
        let local = std_listener
            .local_addr()
            .map_err(Error::io("reading the hub address"))?;
        Ok(HubServer {
            hub,
            listener: TcpListener::from_std(std_listener),
            local,
            registry: None,
            base: 0,
            slots: (0..slots).map(|_| None).collect(),
            by_id: HashMap::new(),
            next_id: 0,
            more_accept: false,
            more_read: Vec::new(),
            stats: HubServerStats::default(),
            buf: vec![0; 64 << 10],
            last_now: Instant::now(),
        })
    }

    /// Where the hub listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The hub's counters and gauges.
    pub fn stats(&self) -> HubStats {
        self.hub.stats()
    }

    /// The socket counters.
    pub fn server_stats(&self) -> &HubServerStats {
        &self.stats
    }

    /// The core hub (read-only).
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// How many consecutive tokens from the base the server uses.
    pub fn token_count(&self) -> usize {
        1 + self.slots.len()
    }

    /// True if `token` is one of the server's.
    pub fn owns(&self, token: Token) -> bool {
        (self.base..self.base + self.token_count()).contains(&token.0)
    }

    /// Registers the listener with `registry`, using tokens `base .. base + token_count()`.
    pub fn register(&mut self, registry: &Registry, base: Token) -> io::Result<()> {
        self.base = base.0;
        registry.register(&mut self.listener, base, Interest::READABLE)?;
        self.registry = Some(registry.try_clone()?);
        Ok(())
    }

    /// Handles one mio event for one of the server's tokens.
    pub fn handle_event(&mut self, event: &mio::event::Event, now: Instant) {
        self.last_now = self.last_now.max(now);
        let now = self.last_now;
        let t = event.token().0;
        if t == self.base {
            self.accept(now);
        } else if let Some(slot) = t.checked_sub(self.base + 1) {
            if slot < self.slots.len() {
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.read(slot, now);
                }
                if event.is_writable() {
                    self.write(slot, now);
                }
            }
        }
        self.settle(now);
    }

    /// When [`HubServer::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.more_accept || !self.more_read.is_empty() {
            return Some(self.last_now);
        }
        self.hub.poll_timeout()
    }

    /// Fires the hub's deadlines and continues work left over.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        let now = self.last_now;
        self.hub.handle_timeout(now);
        if self.more_accept {
            self.accept(now);
        }
        for slot in std::mem::take(&mut self.more_read) {
            self.read(slot, now);
        }
        self.settle(now);
    }

    /// Closes every connection, telling each member why ([`CloseReason::Shutdown`]).
    ///
    /// [`CloseReason::Shutdown`]: hybridcast_core::hub::CloseReason::Shutdown
    pub fn shutdown(&mut self, now: Instant) {
        self.hub.shutdown();
        self.settle(now);
    }

    /// The next hub event, for the log.
    pub fn poll_event(&mut self) -> Option<HubEvent> {
        self.hub.poll_event()
    }

    fn accept(&mut self, now: Instant) {
        self.more_accept = false;
        for _ in 0..ACCEPT_BATCH {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let Some(slot) = self.slots.iter().position(Option::is_none) else {
                        self.stats.accept_dropped += 1;
                        continue; // closed at once
                    };
                    let _ = stream.set_nodelay(true);
                    let token = Token(self.base + 1 + slot);
                    let registered = match &self.registry {
                        Some(r) => r
                            .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                            .is_ok(),
                        None => false,
                    };
                    if !registered {
                        continue;
                    }
                    self.next_id += 1;
                    let id = ConnId(self.next_id);
                    self.slots[slot] = Some(Slot { stream, id });
                    self.by_id.insert(id, slot);
                    self.hub.accept(now, id);
                    self.settle(now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!("hub accept failed: {e}");
                    return;
                }
            }
        }
        self.more_accept = true;
    }

    fn read(&mut self, slot: usize, now: Instant) {
        for _ in 0..READ_BATCH {
            let Some(s) = self.slots[slot].as_mut() else {
                return;
            };
            let id = s.id;
            match s.stream.read(&mut self.buf) {
                Ok(0) => return self.drop_slot(slot, now),
                Ok(n) => {
                    self.hub.handle_bytes(now, id, &self.buf[..n]);
                    // Relays queue output for others; closes may come of it.
                    self.settle(now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.stats.io_errors += 1;
                    return self.drop_slot(slot, now);
                }
            }
        }
        if !self.more_read.contains(&slot) {
            self.more_read.push(slot);
        }
    }

    /// Writes what the hub holds for `slot` until the socket would block.
    fn write(&mut self, slot: usize, now: Instant) {
        let Some(s) = self.slots[slot].as_mut() else {
            return;
        };
        let id = s.id;
        while let Some(bytes) = self.hub.peek_output(id) {
            match s.stream.write(bytes) {
                Ok(0) => break,
                Ok(n) => self.hub.consume_output(id, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.stats.io_errors += 1;
                    return self.drop_slot(slot, now);
                }
            }
        }
    }

    /// The connection ended: the hub announces the member's departure.
    fn drop_slot(&mut self, slot: usize, now: Instant) {
        if let Some(mut s) = self.slots[slot].take() {
            self.by_id.remove(&s.id);
            if let Some(r) = &self.registry {
                let _ = r.deregister(&mut s.stream);
            }
            self.hub.disconnect(now, s.id);
        }
    }

    fn slot_of(&self, id: ConnId) -> Option<usize> {
        self.by_id.get(&id).copied()
    }

    /// Carries out the hub's closes and writes what it queued.
    fn settle(&mut self, now: Instant) {
        loop {
            let mut busy = false;
            while let Some(HubAction::Close { conn, reason }) = self.hub.poll_action() {
                busy = true;
                tracing::debug!(conn = conn.0, %reason, "hub closes a connection");
                if let Some(slot) = self.slot_of(conn) {
                    // The bye, as far as the socket takes it now.
                    self.write(slot, now);
                    if let Some(mut s) = self.slots[slot].take() {
                        self.by_id.remove(&s.id);
                        let _ = s.stream.shutdown(std::net::Shutdown::Both);
                        if let Some(r) = &self.registry {
                            let _ = r.deregister(&mut s.stream);
                        }
                    }
                }
                self.hub.disconnect(now, conn);
            }
            while let Some(conn) = self.hub.poll_ready() {
                busy = true;
                if let Some(slot) = self.slot_of(conn) {
                    self.write(slot, now);
                }
            }
            if !busy {
                return;
            }
        }
    }
}

enum HubCommand {
    Stats(SyncSender<(HubStats, HubServerStats)>),
    Shutdown,
    Crash,
}

const HUB_WAKER: Token = Token(0);
const HUB_BASE: Token = Token(1);

/// The handle of a hub on its own thread ([`spawn_hub`]). Dropping it stops the hub.
pub struct HubHandle {
    commands: SyncSender<HubCommand>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

/// Starts a hub on its own thread with its own `Poll`.
pub fn spawn_hub(config: HubServerConfig) -> Result<HubHandle, Error> {
    let io = |what: &'static str| move |source: io::Error| Error::Io { what, source };
    let mut server = HubServer::new(config)?;
    let poll = Poll::new().map_err(io("creating the poll"))?;
    let waker = Arc::new(Waker::new(poll.registry(), HUB_WAKER).map_err(io("creating the waker"))?);
    server
        .register(poll.registry(), HUB_BASE)
        .map_err(io("registering the hub listener"))?;
    let addr = server.local_addr();
    let (commands, inbox) = mpsc::sync_channel(64);
    let thread = std::thread::Builder::new()
        .name("hybridcast-hub".into())
        .spawn(move || run_hub(poll, server, inbox))
        .map_err(io("starting the thread"))?;
    Ok(HubHandle {
        commands,
        waker,
        thread: Some(thread),
        addr,
    })
}

/// Runs a hub on this thread until `stop` says so (used by [`spawn_hub`] and the CLI).
fn run_hub(mut poll: Poll, mut server: HubServer, inbox: Receiver<HubCommand>) {
    let mut events = Events::with_capacity(1024);
    loop {
        let now = Instant::now();
        let timeout = server
            .poll_timeout()
            .map(|t| t.saturating_duration_since(now).min(Duration::from_secs(1)));
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                tracing::error!("poll failed, hub stops: {e}");
                return;
            }
        }
        let now = Instant::now();
        let mut commands = false;
        for e in events.iter() {
            if e.token() == HUB_WAKER {
                commands = true;
            } else {
                server.handle_event(e, now);
            }
        }
        if server.poll_timeout().is_some_and(|t| t <= now) {
            server.handle_timeout(now);
        }
        log_events(&mut server);
        if commands {
            while let Ok(c) = inbox.try_recv() {
                match c {
                    HubCommand::Stats(reply) => {
                        let _ = reply.send((server.stats(), server.server_stats().clone()));
                    }
                    HubCommand::Shutdown => {
                        server.shutdown(Instant::now());
                        return;
                    }
                    // The sockets close with the server, without a bye.
                    HubCommand::Crash => return,
                }
            }
        }
    }
}

/// Logs what happened at the hub.
pub fn log_events(server: &mut HubServer) {
    while let Some(e) = server.poll_event() {
        match e {
            HubEvent::Registered {
                member,
                incarnation,
                ..
            } => tracing::info!(member = member.0, incarnation, "member registered"),
            HubEvent::Departed {
                member,
                incarnation,
                reason,
                ..
            } => tracing::info!(member = member.0, incarnation, %reason, "member departed"),
            HubEvent::Refused { conn, reason } => {
                tracing::debug!(conn = conn.0, %reason, "connection refused")
            }
        }
    }
}

impl HubHandle {
    /// Where the hub listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The hub's counters, or `None` once it stopped.
    pub fn stats(&self) -> Option<(HubStats, HubServerStats)> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.commands.send(HubCommand::Stats(tx)).ok()?;
        self.waker.wake().ok()?;
        rx.recv().ok()
    }

    /// Stops the hub: every member is told ([`CloseReason::Shutdown`]) and disconnected.
    ///
    /// [`CloseReason::Shutdown`]: hybridcast_core::hub::CloseReason::Shutdown
    pub fn shutdown(mut self) {
        self.stop(HubCommand::Shutdown);
    }

    /// Stops the hub as if it crashed: connections are dropped without a word.
    pub fn crash(mut self) {
        self.stop(HubCommand::Crash);
    }

    fn stop(&mut self, how: HubCommand) {
        if self.commands.send(how).is_ok() {
            let _ = self.waker.wake();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for HubHandle {
    fn drop(&mut self) {
        self.stop(HubCommand::Shutdown);
    }
}
