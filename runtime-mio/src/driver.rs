//! The embeddable driver: a core [`Node`] on a multicast UDP socket and an HTTP listener,
//! driven by the owner's mio loop.

use crate::conn::{Conn, Expiry, ReadEnd, Role};
use bytes::Bytes;
use hybridcast_core::http::{self, HttpLimits};
use hybridcast_core::hub::{HubLink, LinkAction, LinkStats};
use hybridcast_core::{
    CommandError, Event, Node, RequestFailure, RequestId, Resume, SessionError, SessionId,
    SessionInfo, SessionState, SessionToken, Stats, Transmit, Value,
};
use hybridcast_runtime::endpoints::WhoAmI;
use hybridcast_runtime::{Error, ReceiveDrops, RuntimeConfig, RuntimeStats, SendQueue, hub, serve};
use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Interest, Registry, Token};
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Datagrams received (or connections accepted) per wake-up before yielding to the loop.
const BATCH: usize = 256;
/// Tokens used besides connections: the UDP socket, the listener and the hub connection.
const FIXED_TOKENS: usize = 3;
/// Reads of the hub connection per wake-up before yielding to the loop.
const HUB_READ_BATCH: usize = 16;
/// How long a member that leaves waits for the hub to take its goodbye and close.
const LINGER: Duration = Duration::from_millis(500);

/// Hub mode: the link and its connection.
struct HubConn {
    link: HubLink,
    stream: Option<TcpStream>,
    /// The connection is being opened (not yet writable).
    connecting: bool,
    /// Bytes were left unread at the end of a batch.
    more: bool,
}

/// A member driven by its owner's mio event loop.
///
/// Call order, as for the core: [`Driver::register`] once; then on every mio event with one
/// of the driver's tokens call [`Driver::handle_event`], and whenever the instant from
/// [`Driver::poll_timeout`] passes call [`Driver::handle_timeout`]; drain
/// [`Driver::poll_event`]. Each call does a bounded amount of work; when more is ready,
/// `poll_timeout` returns an instant already due. Time (`now`) must never go backwards.
pub struct Driver {
    node: Node,
    udp: Option<UdpSocket>,
    hub: Option<HubConn>,
    group: SocketAddr,
    listener: TcpListener,
    registry: Option<Registry>,
    base: usize,
    conns: Vec<Option<Conn>>,
    idle: BTreeMap<SocketAddr, Vec<usize>>,
    sends: SendQueue,
    more_udp: bool,
    more_accept: bool,
    /// Commands were issued since the last pump: their datagrams go out at the next call.
    dirty: bool,
    limits: HttpLimits,
    max_served: usize,
    max_outgoing: usize,
    idle_timeout: Duration,
    request_read_timeout: Duration,
    request_timeout: Duration,
    drops: ReceiveDrops,
    whoami: WhoAmI,
    stats: RuntimeStats,
    /// Connections accepted so far (orders the idle ones of equal age for eviction).
    accepted: u64,
    last_now: Instant,
    buf: Vec<u8>,
}

impl Driver {
    /// Opens the sockets and builds the node (validating both configurations).
    pub fn new(cfg: RuntimeConfig) -> Result<Driver, Error> {
        let now = Instant::now();
        let p = hybridcast_runtime::prepare(cfg, now)?;
        Ok(Driver {
            udp: p.udp.map(UdpSocket::from_std),
            hub: p.link.map(|link| HubConn {
                link,
                stream: None,
                connecting: false,
                more: false,
            }),
            group: p.config.group.into(),
            listener: TcpListener::from_std(p.listener),
            registry: None,
            base: 0,
            conns: (0..p.config.max_served_connections + p.config.max_outgoing_connections)
                .map(|_| None)
                .collect(),
            idle: BTreeMap::new(),
            sends: SendQueue::default(),
            more_udp: false,
            more_accept: false,
            dirty: false,
            limits: p.config.core.http,
            max_served: p.config.max_served_connections,
            max_outgoing: p.config.max_outgoing_connections,
            idle_timeout: p.config.idle_timeout,
            request_read_timeout: p.config.request_read_timeout,
            request_timeout: p.config.core.request_timeout,
            drops: p.drops,
            whoami: p.whoami,
            stats: RuntimeStats::default(),
            accepted: 0,
            last_now: now,
            buf: vec![0; 65_536],
            node: p.node,
        })
    }

    /// How many consecutive tokens from the base the driver uses.
    pub fn token_count(&self) -> usize {
        FIXED_TOKENS + self.conns.len()
    }

    /// True if `token` is one of the driver's.
    pub fn owns(&self, token: Token) -> bool {
        (self.base..self.base + self.token_count()).contains(&token.0)
    }

    /// Registers the sockets with `registry`, using tokens `base .. base + token_count()`.
    pub fn register(&mut self, registry: &Registry, base: Token) -> io::Result<()> {
        self.base = base.0;
        let both = Interest::READABLE | Interest::WRITABLE;
        if let Some(udp) = &mut self.udp {
            registry.register(udp, base, both)?;
        }
        registry.register(&mut self.listener, Token(base.0 + 1), Interest::READABLE)?;
        self.registry = Some(registry.try_clone()?);
        self.pump(self.last_now);
        Ok(())
    }

    // ----- getters and commands -----

    /// The core node (read-only: views, members, stats, selection).
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The core's counters.
    pub fn stats(&self) -> Stats {
        self.node.stats()
    }

    /// The runtime's counters.
    pub fn driver_stats(&self) -> &RuntimeStats {
        &self.stats
    }

    /// The hub link's counters in hub mode.
    pub fn hub_stats(&self) -> Option<LinkStats> {
        self.hub.as_ref().map(|h| h.link.stats())
    }

    /// In hub mode, whether the hub has accepted this member's registration.
    pub fn hub_registered(&self) -> bool {
        self.hub.as_ref().is_some_and(|h| h.link.is_registered())
    }

    /// Where this member serves HTTP.
    pub fn http_addr(&self) -> SocketAddr {
        self.node.identity().http_addr
    }

    /// Offers `name = value` to the cluster.
    ///
    /// Commands go out at the next [`Driver::handle_timeout`] (or event), which
    /// [`Driver::poll_timeout`] makes due at once: commands issued together form one tick and
    /// share datagrams.
    pub fn bind(&mut self, name: &str, value: &str) -> Result<(), CommandError> {
        self.dirty = true;
        self.node.bind(name, value)
    }

    /// Withdraws the offer `name`; true if it was offered.
    pub fn unbind(&mut self, name: &str) -> Result<bool, CommandError> {
        self.dirty = true;
        self.node.unbind(name)
    }

    /// Publishes a message on `topic`; returns its sequence number.
    pub fn publish(&mut self, topic: &str, payload: impl Into<Bytes>) -> Result<u64, CommandError> {
        self.dirty = true;
        self.node.publish(topic, payload)
    }

    // ----- sessions (see `hybridcast_core::session`) -----

    /// Starts a session served by this member.
    pub fn session_create(&mut self) -> Result<SessionToken, SessionError> {
        self.dirty = true;
        let now = self.now();
        self.node.session_create(now)
    }

    /// Sets `pool[key] = value` in a session this member serves.
    pub fn session_put(
        &mut self,
        id: SessionId,
        pool: &str,
        key: &str,
        value: Value,
    ) -> Result<Option<Value>, SessionError> {
        let now = self.now();
        self.node.session_put(now, id, pool, key, value)
    }

    /// Removes `pool[key]` from a session this member serves.
    pub fn session_remove(
        &mut self,
        id: SessionId,
        pool: &str,
        key: &str,
    ) -> Result<Option<Value>, SessionError> {
        let now = self.now();
        self.node.session_remove(now, id, pool, key)
    }

    /// Commits the changes since the last commit and replicates them; returns the token.
    pub fn session_commit(&mut self, id: SessionId) -> Result<SessionToken, SessionError> {
        self.dirty = true;
        let now = self.now();
        self.node.session_commit(now, id)
    }

    /// Ends a session this member serves.
    pub fn session_end(&mut self, id: SessionId) -> Result<bool, SessionError> {
        self.dirty = true;
        let now = self.now();
        self.node.session_end(now, id)
    }

    /// Starts resuming the session `token` names (see
    /// [`Node::session_resume`](hybridcast_core::Node::session_resume)): anything but
    /// `Ready` is settled by a later `SessionFailover` or `SessionExpired` event.
    pub fn session_resume(&mut self, token: SessionToken) -> Result<Resume, SessionError> {
        self.dirty = true;
        let now = self.now();
        self.node.session_resume(now, token)
    }

    /// The state of a session this member serves.
    pub fn session_state(&self, id: SessionId) -> Option<&SessionState> {
        self.node.session_state(id)
    }

    /// A session this member serves.
    pub fn session(&self, id: SessionId) -> Option<SessionInfo> {
        self.node.session(id)
    }

    /// The clock for commands: never behind the last input.
    fn now(&mut self) -> Instant {
        self.last_now = self.last_now.max(Instant::now());
        self.last_now
    }

    /// Leaves the cluster gracefully: the Leave datagram is sent at once. In hub mode a
    /// goodbye to the hub follows, and this call blocks for up to 500 ms while the hub takes
    /// both and closes its side (so that closing cannot reset the connection before the hub
    /// read them).
    pub fn leave(&mut self) {
        self.node.leave();
        self.pump(self.last_now);
        if let Some(h) = &mut self.hub {
            h.link.close();
        }
        self.hub_write(self.last_now);
        self.hub_linger();
    }

    /// After the goodbye: writes what is left, half-closes, and reads until the hub closes
    /// too (at most [`LINGER`]), so that closing never resets the connection while the hub
    /// still has the leave and the goodbye unread (a reset would discard them, and the
    /// others would see a failure instead of a leave).
    fn hub_linger(&mut self) {
        let Some(h) = &mut self.hub else {
            return;
        };
        let Some(stream) = &mut h.stream else {
            return;
        };
        if h.connecting {
            return;
        }
        let end = Instant::now() + LINGER;
        let mut shut = false;
        let mut sink = [0u8; 4096];
        while Instant::now() < end {
            let queued = h.link.queued_bytes();
            if hub::write_link(&mut h.link, &mut *stream).is_err() {
                return;
            }
            let mut progress = h.link.queued_bytes() < queued;
            if h.link.peek_output().is_none() && !shut {
                let _ = stream.shutdown(std::net::Shutdown::Write);
                shut = true;
            }
            match stream.read(&mut sink) {
                Ok(0) => return,
                Ok(_) => progress = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
            if !progress {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    /// The next event of the node, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.node.poll_event()
    }

    // ----- driving -----

    /// Handles one mio event for one of the driver's tokens (others are ignored).
    pub fn handle_event(&mut self, event: &mio::event::Event, now: Instant) {
        self.last_now = self.last_now.max(now);
        let now = self.last_now;
        let t = event.token().0;
        if t == self.base {
            if event.is_readable() {
                self.receive(now);
            }
            if event.is_writable() {
                self.flush_sends();
            }
        } else if t == self.base + 1 {
            self.accept(now);
        } else if t == self.base + 2 {
            self.hub_event(event, now);
        } else if let Some(slot) = t.checked_sub(self.base + FIXED_TOKENS) {
            if slot < self.conns.len() {
                self.drive(slot, now);
            }
        }
        self.pump(now);
    }

    /// When [`Driver::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.more_udp
            || self.more_accept
            || self.dirty
            || self.hub.as_ref().is_some_and(|h| h.more)
        {
            return Some(self.last_now);
        }
        let conns = self.conns.iter().flatten().map(|c| c.deadline).min();
        let hub = self.hub.as_ref().and_then(|h| h.link.poll_timeout());
        [self.node.poll_timeout(), conns, hub]
            .into_iter()
            .flatten()
            .min()
    }

    /// Fires the node's timers, expires connections and continues work left over.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        let now = self.last_now;
        // Follow the system clock's corrections (NTP steps, a suspend): authenticated traffic
        // carries wall-clock stamps.
        self.node
            .set_wall_clock(now, hybridcast_runtime::unix_millis());
        // Bytes already waiting are read first: an acknowledgement among them must count
        // before the link's timer judges the hub silent.
        if self.hub.as_ref().is_some_and(|h| h.more) {
            self.hub_read(now);
        }
        if let Some(h) = &mut self.hub {
            h.link.handle_timeout(now);
        }
        self.node.handle_timeout(now);
        for slot in 0..self.conns.len() {
            if self.conns[slot].as_ref().is_some_and(|c| c.deadline <= now) {
                if let Some(conn) = self.conns[slot].take() {
                    match conn.expiry {
                        Expiry::SlowRequest => self.stats.slow_requests += 1,
                        _ => self.stats.connections_timed_out += 1,
                    }
                    self.finish(slot, conn, now, Some(RequestFailure::Timeout));
                }
            }
        }
        if self.more_udp {
            self.receive(now);
        }
        if self.more_accept {
            self.accept(now);
        }
        self.pump(now);
    }

    fn receive(&mut self, now: Instant) {
        self.more_udp = false;
        let Some(udp) = &self.udp else {
            return;
        };
        for _ in 0..BATCH {
            match udp.recv_from(&mut self.buf) {
                Ok((n, from)) => {
                    if self.drops.drop_next(&mut self.stats) {
                        continue;
                    }
                    let datagram = Bytes::copy_from_slice(&self.buf[..n]);
                    self.node.handle_datagram(now, from, datagram);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!("multicast receive failed: {e}");
                    return;
                }
            }
        }
        self.more_udp = true;
    }

    fn send(&mut self, now: Instant, datagram: Bytes) {
        if let Some(h) = &mut self.hub {
            // Dropped (and counted by the link) while no connection is registered, as a
            // multicast datagram may be lost: the receivers recover it.
            h.link.send_group(now, datagram);
            return;
        }
        let Some(udp) = &self.udp else {
            return;
        };
        let group = self.group;
        let dropped = self.sends.send(datagram, |d| udp.send_to(d, group));
        if dropped > 0 {
            self.stats.send_drops += dropped;
        }
    }

    fn flush_sends(&mut self) {
        let Some(udp) = &self.udp else {
            return;
        };
        let group = self.group;
        let dropped = self.sends.flush(|d| udp.send_to(d, group));
        if dropped > 0 {
            self.stats.send_drops += dropped;
        }
    }

    /// Sends what the node queued and starts the requests it asked for.
    fn pump(&mut self, now: Instant) {
        self.dirty = false;
        while let Some(t) = self.node.poll_transmit() {
            match t {
                Transmit::Group(d) => self.send(now, d),
                Transmit::Request { id, to, request } => self.ask(now, id, to, request, true),
            }
        }
        self.hub_write(now);
        if let Some(h) = &self.hub {
            // For `/metrics` and `driver_stats`: the link's counters as of this wake-up.
            self.stats.hub = Some(h.link.stats());
            self.stats.hub_registered = h.link.is_registered();
        }
    }

    // ----- hub mode -----

    /// An event on the hub connection: completes a connect, reads, hands what came to the
    /// node.
    fn hub_event(&mut self, event: &mio::event::Event, now: Instant) {
        let Some(h) = &mut self.hub else {
            return;
        };
        let Some(stream) = &mut h.stream else {
            return;
        };
        if h.connecting {
            let failed = match stream.take_error() {
                Ok(Some(_)) | Err(_) => true,
                Ok(None) => match stream.peer_addr() {
                    Ok(_) => false,
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                        if event.is_error() || event.is_write_closed() {
                            true
                        } else {
                            return;
                        }
                    }
                    Err(_) => true,
                },
            };
            if failed {
                self.hub_lost(now);
                return;
            }
            h.connecting = false;
            let _ = stream.set_nodelay(true);
            h.link.connected(now);
        }
        self.hub_read(now);
        self.hub_write(now);
    }

    fn hub_read(&mut self, now: Instant) {
        let Some(h) = &mut self.hub else {
            return;
        };
        h.more = false;
        let Some(stream) = &mut h.stream else {
            return;
        };
        if h.connecting {
            return;
        }
        let mut lost = false;
        let mut batch = 0;
        loop {
            if batch == HUB_READ_BATCH {
                h.more = true;
                break;
            }
            batch += 1;
            match stream.read(&mut self.buf) {
                Ok(0) => {
                    lost = true;
                    break;
                }
                Ok(n) => h.link.handle_bytes(now, &self.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    lost = true;
                    break;
                }
            }
        }
        if lost {
            self.hub_lost(now);
        }
        self.hub_deliver(now);
    }

    /// Hands the link's datagrams (less the injected drops) and departure notices to the
    /// node; logs the rest.
    fn hub_deliver(&mut self, now: Instant) {
        let Some(h) = &mut self.hub else {
            return;
        };
        while let Some(e) = hub::poll_hub(
            &mut h.link,
            &mut self.node,
            &mut self.drops,
            &mut self.stats.injected_drops,
            now,
        ) {
            hub::log_link_event(&e);
        }
    }

    /// The hub connection broke.
    fn hub_lost(&mut self, now: Instant) {
        let Some(h) = &mut self.hub else {
            return;
        };
        if let Some(mut s) = h.stream.take() {
            if let Some(r) = &self.registry {
                let _ = r.deregister(&mut s);
            }
        }
        h.connecting = false;
        h.more = false;
        h.link.connection_lost(now);
        self.hub_deliver(now);
    }

    /// Carries out the link's actions and writes what it queued.
    fn hub_write(&mut self, now: Instant) {
        loop {
            let Some(h) = &mut self.hub else {
                return;
            };
            let Some(action) = h.link.poll_action() else {
                break;
            };
            match action {
                LinkAction::Connect { to } => {
                    if let Some(mut old) = h.stream.take() {
                        if let Some(r) = &self.registry {
                            let _ = r.deregister(&mut old);
                        }
                    }
                    let token = Token(self.base + 2);
                    let opened = TcpStream::connect(to).and_then(|mut s| {
                        match &self.registry {
                            Some(r) => {
                                r.register(&mut s, token, Interest::READABLE | Interest::WRITABLE)?
                            }
                            None => return Err(io::Error::other("driver not registered")),
                        }
                        Ok(s)
                    });
                    match opened {
                        Ok(s) => {
                            h.stream = Some(s);
                            h.connecting = true;
                        }
                        Err(e) => {
                            tracing::debug!("connecting to the hub at {to} failed: {e}");
                            h.link.connection_lost(now);
                        }
                    }
                }
                LinkAction::Close => {
                    if let Some(mut s) = h.stream.take() {
                        if let Some(r) = &self.registry {
                            let _ = r.deregister(&mut s);
                        }
                    }
                    h.connecting = false;
                    h.more = false;
                }
            }
        }
        let Some(h) = &mut self.hub else {
            return;
        };
        let Some(stream) = &mut h.stream else {
            return;
        };
        if h.connecting {
            return;
        }
        if hub::write_link(&mut h.link, stream).is_err() {
            self.hub_lost(now);
            // Reconnecting is the link's to decide (after its backoff).
        }
        // Losses found by the link's own timers or a failed connect are reported here.
        self.hub_deliver(now);
    }

    fn free_slot(&self) -> Option<usize> {
        self.conns.iter().position(Option::is_none)
    }

    fn register_conn(&mut self, slot: usize, stream: &mut TcpStream) -> io::Result<()> {
        let token = Token(self.base + FIXED_TOKENS + slot);
        match &self.registry {
            Some(r) => r.register(stream, token, Interest::READABLE | Interest::WRITABLE),
            None => Err(io::Error::other("driver not registered")),
        }
    }

    fn accept(&mut self, now: Instant) {
        self.more_accept = false;
        for _ in 0..BATCH {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let Some(slot) = self.room_to_serve() else {
                        self.stats.connections_refused += 1;
                        continue; // dropped: closed at once
                    };
                    if self.register_conn(slot, &mut stream).is_ok() {
                        let deadline = now + self.idle_timeout;
                        let mut conn = Conn::new(stream, Role::Serve, now, deadline);
                        self.accepted += 1;
                        conn.order = self.accepted;
                        self.conns[slot] = Some(conn);
                        self.stats.served_opened();
                        // A request already here makes the connection busy before more
                        // accepts of this batch look for an idle one to evict.
                        self.drive(slot, now);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!("accept failed: {e}");
                    return;
                }
            }
        }
        self.more_accept = true;
    }

    /// A free slot for a new served connection: below the served limit any free one, at the
    /// limit the slot of the served connection idle the longest, closed (evicted) for it.
    fn room_to_serve(&mut self) -> Option<usize> {
        if self.stats.served_connections < self.max_served as u64 {
            return self.free_slot();
        }
        let oldest = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(slot, c)| {
                c.as_ref()
                    .filter(|c| c.serving_idle())
                    .map(|c| ((c.active_at, c.order), slot))
            })
            .min()?
            .1;
        let conn = self.conns[oldest].take()?;
        self.stats.connections_evicted += 1;
        self.close(conn);
        Some(oldest)
    }

    /// A free slot for a new outgoing connection: below the outgoing limit any free one, at
    /// the limit the slot of the pooled connection idle the longest, closed for it.
    fn room_to_ask(&mut self, now: Instant) -> Option<usize> {
        if self.stats.outgoing_connections < self.max_outgoing as u64 {
            return self.free_slot();
        }
        let conns = &self.conns;
        let oldest = self
            .idle
            .values()
            .flatten()
            .filter_map(|&slot| conns[slot].as_ref().map(|c| (c.active_at, slot)))
            .min()?
            .1;
        let conn = self.conns[oldest].take()?;
        self.finish(oldest, conn, now, None);
        Some(oldest)
    }

    /// Takes an idle pooled connection to `to`, dropping the address from the pool map once
    /// it has none left.
    fn take_idle(&mut self, to: SocketAddr) -> Option<usize> {
        let slots = self.idle.get_mut(&to)?;
        let slot = slots.pop();
        if slots.is_empty() {
            self.idle.remove(&to);
        }
        slot
    }

    /// Starts request `id` to `to`, on a pooled connection when `pooled` allows one.
    fn ask(&mut self, now: Instant, id: RequestId, to: SocketAddr, request: Bytes, pooled: bool) {
        let deadline = now + self.request_timeout;
        let reuse = if pooled { self.take_idle(to) } else { None };
        if let Some(slot) = reuse {
            if let Some(mut conn) = self.conns[slot].take() {
                conn.role = Role::Ask {
                    id: Some(id),
                    target: to,
                    request: request.clone(),
                    reused: true,
                };
                conn.deadline = deadline;
                conn.expiry = Expiry::Unanswered;
                conn.queue(&request, now);
                self.conns[slot] = Some(conn);
                self.drive(slot, now);
                return;
            }
        }
        let Some(slot) = self.room_to_ask(now) else {
            self.stats.connections_refused += 1;
            let failure = RequestFailure::Connect("connection limit reached".into());
            self.node.handle_http_response(now, id, Err(failure));
            return;
        };
        let opened = TcpStream::connect(to).and_then(|mut s| {
            self.register_conn(slot, &mut s)?;
            Ok(s)
        });
        match opened {
            Ok(stream) => {
                let role = Role::Ask {
                    id: Some(id),
                    target: to,
                    request: request.clone(),
                    reused: false,
                };
                let mut conn = Conn::new(stream, role, now, deadline);
                conn.queue(&request, now);
                self.conns[slot] = Some(conn);
                self.stats.outgoing_opened();
            }
            Err(e) => {
                let failure = RequestFailure::Connect(e.to_string());
                self.node.handle_http_response(now, id, Err(failure));
            }
        }
    }

    /// Moves bytes on connection `slot` and acts on complete messages.
    fn drive(&mut self, slot: usize, now: Instant) {
        let Some(mut conn) = self.conns[slot].take() else {
            return;
        };
        let outcome = match conn.role {
            Role::Serve => self.serve(&mut conn, now),
            Role::Ask { .. } => self.collect(&mut conn, now),
        };
        match outcome {
            Ok(Next::Keep) => self.conns[slot] = Some(conn),
            Ok(Next::Park(target)) => {
                self.idle.entry(target).or_default().push(slot);
                self.conns[slot] = Some(conn);
            }
            Ok(Next::Close) => self.finish(slot, conn, now, None),
            Err(failure) => self.finish(slot, conn, now, Some(failure)),
        }
    }

    /// Serves requests on an accepted connection, one at a time: the next is parsed once the
    /// last answer is written.
    ///
    /// The deadline follows what the connection is doing: a request partly read must be
    /// complete within the request read timeout of its first byte (more bytes do not extend
    /// it), an answer being written must make progress within the idle timeout, and only a
    /// connection with neither waits the idle timeout for its next request.
    fn serve(&mut self, conn: &mut Conn, now: Instant) -> Result<Next, RequestFailure> {
        let limits = serve::serve_limits(&self.limits, self.node.config().max_request_body());
        let io = |e: io::Error| RequestFailure::Io(e.to_string());
        let end = conn.read(serve::buffer_limit(&limits), now).map_err(io)?;
        self.stats.served_buffered(conn.inbuf.len());
        if !conn.inbuf.is_empty() && conn.request_started.is_none() {
            conn.request_started = Some(now);
        }
        while conn.flushed() && !conn.close_after_write {
            let (node, whoami, stats) = (&mut self.node, &self.whoami, &self.stats);
            let answered = serve::next_answer(&mut conn.inbuf, &limits, |req| {
                serve::answer(node, whoami, stats, now, req)
            });
            let Some(a) = answered else {
                break;
            };
            // Bytes left over begin the next request: its clock starts now.
            conn.request_started = (!conn.inbuf.is_empty()).then_some(now);
            conn.queue(&a.bytes, now);
            conn.close_after_write = a.close;
            // Nothing else is produced until the owner's next call: send it now.
            conn.write(now).map_err(io)?;
        }
        conn.write(now).map_err(io)?;
        (conn.deadline, conn.expiry) = if !conn.flushed() {
            (
                conn.write_progress + self.idle_timeout,
                Expiry::StalledWrite,
            )
        } else if let Some(started) = conn.request_started {
            (started + self.request_read_timeout, Expiry::SlowRequest)
        } else {
            (conn.active_at + self.idle_timeout, Expiry::Idle)
        };
        let done = conn.flushed() && (conn.close_after_write || end == ReadEnd::Closed);
        Ok(if done { Next::Close } else { Next::Keep })
    }

    /// Sends our request and reads the answer.
    fn collect(&mut self, conn: &mut Conn, now: Instant) -> Result<Next, RequestFailure> {
        let asking = matches!(conn.role, Role::Ask { id: Some(_), .. });
        if let Ok(Some(e)) | Err(e) = conn.stream.take_error() {
            return Err(RequestFailure::Connect(e.to_string()));
        }
        if asking {
            match conn.stream.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(Next::Keep),
                Err(e) => return Err(RequestFailure::Connect(e.to_string())),
            }
            conn.write(now)
                .map_err(|e| RequestFailure::Io(e.to_string()))?;
        }
        let end = conn
            .read(serve::buffer_limit(&self.limits), now)
            .map_err(|e| RequestFailure::Io(e.to_string()))?;
        if !asking {
            // Pooled and idle: anything arriving (or a close) ends it.
            let quiet = end == ReadEnd::WouldBlock && conn.inbuf.is_empty();
            return Ok(if quiet { Next::Keep } else { Next::Close });
        }
        match http::parse_response(&conn.inbuf, &self.limits) {
            Ok(Some((resp, used))) => {
                conn.consume(used);
                let keep =
                    end == ReadEnd::WouldBlock && conn.inbuf.is_empty() && serve::reusable(&resp);
                let mut next = Next::Close;
                if let Role::Ask { id, target, .. } = &mut conn.role {
                    if let Some(id) = id.take() {
                        self.node.handle_http_response(now, id, Ok(resp));
                    }
                    if keep {
                        next = Next::Park(*target);
                    }
                }
                conn.deadline = now + self.idle_timeout;
                conn.expiry = Expiry::Idle;
                conn.active_at = now;
                Ok(next)
            }
            Ok(None) if end == ReadEnd::Closed => Err(RequestFailure::Io(
                "connection closed before a full response".into(),
            )),
            Ok(None) => Ok(Next::Keep),
            Err(e) => Err(RequestFailure::InvalidResponse(e.to_string())),
        }
    }

    /// Closes connection `slot`, telling the node how its request ended (once, on a fresh
    /// connection, a request that failed on a pooled one is tried again).
    fn finish(
        &mut self,
        slot: usize,
        mut conn: Conn,
        now: Instant,
        failure: Option<RequestFailure>,
    ) {
        let (id, target, request, reused) = match &mut conn.role {
            Role::Ask {
                id,
                target,
                request,
                reused,
            } => (id.take(), *target, request.clone(), *reused),
            Role::Serve => {
                self.close(conn);
                return;
            }
        };
        if let Some(v) = self.idle.get_mut(&target) {
            v.retain(|&s| s != slot);
            if v.is_empty() {
                // No address stays in the pool map without a connection.
                self.idle.remove(&target);
            }
        }
        self.close(conn);
        let Some(id) = id else {
            return; // an idle pooled connection: nobody waits on it
        };
        let failure = failure.unwrap_or_else(|| RequestFailure::Io("connection closed".into()));
        if reused && conn_was_quiet(&failure) {
            // A pooled connection the peer had closed: try once on a fresh one.
            self.ask(now, id, target, request, false);
        } else {
            self.node.handle_http_response(now, id, Err(failure));
        }
    }

    fn close(&mut self, mut conn: Conn) {
        match conn.role {
            Role::Serve => self.stats.served_closed(),
            Role::Ask { .. } => self.stats.outgoing_closed(),
        }
        if let Some(r) = &self.registry {
            let _ = r.deregister(&mut conn.stream);
        }
    }
}

/// What to do with a connection after moving its bytes.
enum Next {
    /// Keep it open, waiting for more.
    Keep,
    /// Our request was answered and the connection can carry another one to this address.
    Park(SocketAddr),
    /// Close it.
    Close,
}

/// Failures that a stale pooled connection produces before any answer byte.
fn conn_was_quiet(f: &RequestFailure) -> bool {
    matches!(f, RequestFailure::Io(_) | RequestFailure::Connect(_))
}
