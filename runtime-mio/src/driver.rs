//! The embeddable driver: a core [`Node`] on a multicast UDP socket and an HTTP listener,
//! driven by the owner's mio loop.

use crate::config::DriverConfig;
use crate::conn::{Conn, ReadEnd, Role};
use crate::endpoints::{self, WhoAmI};
use crate::{Error, socket};
use bytes::Bytes;
use hybridcast_core::http::{self, HttpLimits, Method, Request, Response};
use hybridcast_core::ids::{Rng, stable_hash};
use hybridcast_core::{
    CommandError, Event, Identity, Node, RequestFailure, RequestId, Stats, Transmit,
};
use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Interest, Registry, Token};
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Group datagrams waiting for a full socket to drain; more are dropped (and counted): the
/// protocol recovers them like lost ones.
const MAX_PENDING_SENDS: usize = 1024;
/// Datagrams received (or connections accepted) per wake-up before yielding to the loop.
const BATCH: usize = 256;
/// Largest request body served (the protocol's requests have none): a served connection
/// buffers at most the head limit plus this.
pub const MAX_REQUEST_BODY: usize = 64 * 1024;
/// Tokens used besides connections: the UDP socket and the listener.
const FIXED_TOKENS: usize = 2;

/// Counters of the runtime itself (the core's are in [`Stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Group datagrams dropped on purpose by `receive_drop_rate`.
    pub injected_drops: u64,
    /// Group datagrams dropped because the socket stayed full.
    pub send_drops: u64,
    /// HTTP connections refused or requests failed at the connection limit.
    pub connections_refused: u64,
    /// HTTP connections closed for idling, or requests given up, at their deadline.
    pub connections_timed_out: u64,
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
    udp: UdpSocket,
    group: SocketAddr,
    listener: TcpListener,
    registry: Option<Registry>,
    base: usize,
    conns: Vec<Option<Conn>>,
    idle: BTreeMap<SocketAddr, Vec<usize>>,
    sends: VecDeque<Bytes>,
    more_udp: bool,
    more_accept: bool,
    /// Commands were issued since the last pump: their datagrams go out at the next call.
    dirty: bool,
    limits: HttpLimits,
    idle_timeout: Duration,
    request_timeout: Duration,
    drop_rate: f64,
    rng: Rng,
    whoami: WhoAmI,
    stats: DriverStats,
    last_now: Instant,
    buf: Vec<u8>,
}

impl Driver {
    /// Opens the sockets and builds the node (validating both configurations).
    pub fn new(cfg: DriverConfig) -> Result<Driver, Error> {
        cfg.validate()?;
        let io = |what: &'static str| move |source: io::Error| Error::Io { what, source };
        let listener = socket::listener(cfg.http).map_err(io("binding the HTTP listener"))?;
        let mut http_addr = listener
            .local_addr()
            .map_err(io("reading the HTTP address"))?;
        if http_addr.ip().is_unspecified() {
            // Advertise an address peers can reach: the interface the group is joined on.
            http_addr.set_ip(IpAddr::V4(cfg.interface));
        }
        let udp = socket::multicast(cfg.group, cfg.interface, cfg.ttl)
            .map_err(io("joining the multicast group"))?;
        let incarnation = cfg.incarnation.unwrap_or_else(|| {
            let ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_millis());
            u64::try_from(ms).unwrap_or(u64::MAX).max(1)
        });
        let mut identity = Identity::new(&cfg.cluster, &cfg.name, incarnation, http_addr);
        identity.host_id = cfg.host_id.clone().unwrap_or_else(|| {
            std::env::var("HOSTNAME").unwrap_or_else(|_| cfg.interface.to_string())
        });
        let seed = cfg
            .seed
            .unwrap_or_else(|| stable_hash(&[cfg.name.as_bytes(), &incarnation.to_be_bytes()]));
        let whoami = WhoAmI {
            cluster: cfg.cluster.clone(),
            group: cfg.clone.as_ref().map(|c| c.0.clone()),
            clone_index: cfg.clone.as_ref().map(|c| c.1),
            name: cfg.name.clone(),
            host: identity.host_id.clone(),
            incarnation,
        };
        let now = Instant::now();
        let limits = cfg.core.http;
        let request_timeout = cfg.core.request_timeout;
        let node = Node::new(cfg.core, identity, now, seed)?;
        Ok(Driver {
            node,
            udp: UdpSocket::from_std(udp),
            group: cfg.group.into(),
            listener: TcpListener::from_std(listener),
            registry: None,
            base: 0,
            conns: (0..cfg.max_connections).map(|_| None).collect(),
            idle: BTreeMap::new(),
            sends: VecDeque::new(),
            more_udp: false,
            more_accept: false,
            dirty: false,
            limits,
            idle_timeout: cfg.idle_timeout,
            request_timeout,
            drop_rate: cfg.receive_drop_rate,
            rng: Rng::new(seed ^ 0xd20b),
            whoami,
            stats: DriverStats::default(),
            last_now: now,
            buf: vec![0; 65_536],
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
        registry.register(&mut self.udp, base, both)?;
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
    pub fn driver_stats(&self) -> &DriverStats {
        &self.stats
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

    /// Leaves the cluster gracefully: the Leave datagram is sent at once.
    pub fn leave(&mut self) {
        self.node.leave();
        self.pump(self.last_now);
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
        } else if let Some(slot) = t.checked_sub(self.base + FIXED_TOKENS) {
            if slot < self.conns.len() {
                self.drive(slot, now);
            }
        }
        self.pump(now);
    }

    /// When [`Driver::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.more_udp || self.more_accept || self.dirty {
            return Some(self.last_now);
        }
        let conns = self.conns.iter().flatten().map(|c| c.deadline).min();
        match (self.node.poll_timeout(), conns) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fires the node's timers, expires connections and continues work left over.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        let now = self.last_now;
        self.node.handle_timeout(now);
        for slot in 0..self.conns.len() {
            if self.conns[slot].as_ref().is_some_and(|c| c.deadline <= now) {
                self.stats.connections_timed_out += 1;
                if let Some(conn) = self.conns[slot].take() {
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
        for _ in 0..BATCH {
            match self.udp.recv_from(&mut self.buf) {
                Ok((n, from)) => {
                    if self.drop_rate > 0.0 && self.rng.unit() < self.drop_rate {
                        self.stats.injected_drops += 1;
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

    fn send(&mut self, datagram: Bytes) {
        if self.sends.is_empty() {
            match self.udp.send_to(&datagram, self.group) {
                Ok(_) => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    tracing::debug!("multicast send failed: {e}");
                    self.stats.send_drops += 1;
                    return;
                }
            }
        }
        if self.sends.len() < MAX_PENDING_SENDS {
            self.sends.push_back(datagram);
        } else {
            self.stats.send_drops += 1;
        }
    }

    fn flush_sends(&mut self) {
        while let Some(d) = self.sends.front() {
            match self.udp.send_to(d, self.group) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => self.stats.send_drops += 1,
            }
            self.sends.pop_front();
        }
    }

    /// Sends what the node queued and starts the requests it asked for.
    fn pump(&mut self, now: Instant) {
        self.dirty = false;
        while let Some(t) = self.node.poll_transmit() {
            match t {
                Transmit::Group(d) => self.send(d),
                Transmit::Request { id, to, request } => self.ask(now, id, to, request, true),
            }
        }
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
                    let Some(slot) = self.free_slot() else {
                        self.stats.connections_refused += 1;
                        continue; // dropped: closed at once
                    };
                    if self.register_conn(slot, &mut stream).is_ok() {
                        let deadline = now + self.idle_timeout;
                        self.conns[slot] = Some(Conn::new(stream, Role::Serve, deadline));
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

    /// Starts request `id` to `to`, on a pooled connection when `pooled` allows one.
    fn ask(&mut self, now: Instant, id: RequestId, to: SocketAddr, request: Bytes, pooled: bool) {
        let deadline = now + self.request_timeout;
        let reuse = if pooled {
            self.idle.get_mut(&to).and_then(Vec::pop)
        } else {
            None
        };
        if let Some(slot) = reuse {
            if let Some(mut conn) = self.conns[slot].take() {
                conn.role = Role::Ask {
                    id: Some(id),
                    target: to,
                    request: request.clone(),
                    reused: true,
                };
                conn.deadline = deadline;
                conn.queue(&request);
                self.conns[slot] = Some(conn);
                self.drive(slot, now);
                return;
            }
        }
        let Some(slot) = self.free_slot() else {
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
                let mut conn = Conn::new(stream, role, deadline);
                conn.queue(&request);
                self.conns[slot] = Some(conn);
            }
            Err(e) => {
                let failure = RequestFailure::Connect(e.to_string());
                self.node.handle_http_response(now, id, Err(failure));
            }
        }
    }

    /// Most bytes buffered for one answer we wait for (a dump can be large).
    fn input_limit(&self) -> usize {
        self.limits.max_header_bytes + self.limits.max_body_bytes + 1
    }

    /// The limits for requests we serve: every exchange is a GET, so a body is capped at
    /// [`MAX_REQUEST_BODY`] whatever `http.max_body_bytes` allows for answers.
    fn serve_limits(&self) -> HttpLimits {
        HttpLimits {
            max_body_bytes: self.limits.max_body_bytes.min(MAX_REQUEST_BODY),
            ..self.limits
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

    /// Serves requests on an accepted connection.
    fn serve(&mut self, conn: &mut Conn, now: Instant) -> Result<Next, RequestFailure> {
        let limits = self.serve_limits();
        let end = conn
            .read(limits.max_header_bytes + limits.max_body_bytes + 1)
            .map_err(|e| RequestFailure::Io(e.to_string()))?;
        while conn.flushed() && !conn.close_after_write {
            match http::parse_request(&conn.inbuf, &limits) {
                Ok(Some((req, used))) => {
                    conn.consume(used);
                    let mut resp = self.answer(now, &req);
                    if !req.keep_alive() {
                        resp.headers.push(("connection".into(), "close".into()));
                        conn.close_after_write = true;
                    }
                    conn.queue(&resp.encode());
                    // Nothing else is produced until the owner's next call: send it now.
                    conn.write()
                        .map_err(|e| RequestFailure::Io(e.to_string()))?;
                }
                Ok(None) => break,
                Err(e) => {
                    conn.queue(&e.to_response().encode());
                    conn.close_after_write = true;
                    conn.inbuf.clear();
                }
            }
        }
        conn.write()
            .map_err(|e| RequestFailure::Io(e.to_string()))?;
        conn.deadline = now + self.idle_timeout;
        let done = conn.flushed() && (conn.close_after_write || end == ReadEnd::Closed);
        Ok(if done { Next::Close } else { Next::Keep })
    }

    /// The answer to one request: the runtime's endpoints, else the protocol's.
    fn answer(&mut self, now: Instant, req: &Request) -> Response {
        let own = [
            endpoints::PATH_CLUSTER,
            endpoints::PATH_WHOAMI,
            endpoints::PATH_METRICS,
        ];
        if !own.contains(&req.path.as_str()) {
            return self.node.handle_http_request(now, req);
        }
        if req.method != Method::Get {
            return Response::error(405, "only GET is served");
        }
        match req.path.as_str() {
            endpoints::PATH_CLUSTER => endpoints::json(&endpoints::cluster_view(&self.node)),
            endpoints::PATH_WHOAMI => endpoints::json(&self.whoami),
            _ => endpoints::metrics(&self.node.stats(), &self.stats),
        }
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
            conn.write()
                .map_err(|e| RequestFailure::Io(e.to_string()))?;
        }
        let end = conn
            .read(self.input_limit())
            .map_err(|e| RequestFailure::Io(e.to_string()))?;
        if !asking {
            // Pooled and idle: anything arriving (or a close) ends it.
            let quiet = end == ReadEnd::WouldBlock && conn.inbuf.is_empty();
            return Ok(if quiet { Next::Keep } else { Next::Close });
        }
        match http::parse_response(&conn.inbuf, &self.limits) {
            Ok(Some((resp, used))) => {
                conn.consume(used);
                let keep = end == ReadEnd::WouldBlock
                    && conn.inbuf.is_empty()
                    && !resp
                        .header("connection")
                        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
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
