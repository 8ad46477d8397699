//! HTTP connections in tasks of their own: the server (accept, then one task per connection)
//! and the client (one task per request the node asks for, over a keep-alive pool). Framing,
//! limits and answers come from `hybridcast-runtime` and core; the driver answers requests
//! and hears how each of its own ended, through bounded channels.

use bytes::Bytes;
use futures_lite::{AsyncReadExt, AsyncWriteExt, future};
use hybridcast_core::http::{self as core_http, HttpLimits, Request, Response};
use hybridcast_core::{RequestFailure, RequestId};
use hybridcast_runtime::serve::{self, Answer, Served};
use hybridcast_runtime::{RuntimeConfig, RuntimeStats};
use smol::Async;
use smol::channel::{self, Receiver, Sender};
use std::collections::HashMap;
use std::future::Future;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A message from a connection task to the driver.
pub(crate) enum Msg {
    /// A request served on an accepted connection, waiting for its answer.
    Serve(Request, Sender<Answer>),
    /// How a request of the node ended.
    Answered(RequestId, Result<Response, RequestFailure>),
}

/// What the driver and its connection tasks share.
pub(crate) struct Shared {
    /// The served connections open, for the limit and for eviction.
    served: Mutex<ServedTable>,
    /// Counters, and the gauges of open connections (the outgoing gauge is the count that
    /// [`Shared::try_outgoing`] holds to `max_outgoing`).
    stats: Mutex<RuntimeStats>,
    limits: HttpLimits,
    /// Largest request body served (`Config::max_request_body`).
    max_request_body: usize,
    max_served: usize,
    max_outgoing: usize,
    idle_timeout: Duration,
    request_read_timeout: Duration,
    request_timeout: Duration,
}

impl Shared {
    pub fn new(cfg: &RuntimeConfig) -> Shared {
        Shared {
            served: Mutex::new(ServedTable::default()),
            stats: Mutex::new(RuntimeStats::default()),
            limits: cfg.core.http,
            max_request_body: cfg.core.max_request_body(),
            max_served: cfg.max_served_connections,
            max_outgoing: cfg.max_outgoing_connections,
            idle_timeout: cfg.idle_timeout,
            request_read_timeout: cfg.request_read_timeout,
            request_timeout: cfg.core.request_timeout,
        }
    }

    /// The runtime's counters (a panicked holder left them intact: they are plain counts).
    pub fn stats(&self) -> MutexGuard<'_, RuntimeStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn served(&self) -> MutexGuard<'_, ServedTable> {
        self.served.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Room for one more outgoing connection, held until the slot is dropped; `None` at the
    /// outgoing limit.
    fn try_outgoing(self: &Arc<Self>) -> Option<OutgoingSlot> {
        let mut stats = self.stats();
        if stats.outgoing_connections >= self.max_outgoing as u64 {
            return None;
        }
        stats.outgoing_opened();
        Some(OutgoingSlot {
            shared: self.clone(),
        })
    }

    /// Admits a new served connection: below the limit at once; at the limit in place of the
    /// served connection idle the longest, which is told to close (evicted); `None` when
    /// every served connection is busy. The receiver ends when this connection is evicted.
    /// `busy`: a request has begun arriving on it already.
    fn admit(self: &Arc<Self>, now: Instant, busy: bool) -> Option<(ServedSlot, Receiver<()>)> {
        let mut table = self.served();
        if table.open.len() >= self.max_served {
            let oldest = table
                .open
                .iter()
                .filter_map(|(&id, c)| c.idle_since.map(|t| (t, id)))
                .min()?
                .1;
            // Dropping its sender ends the evicted task's wait.
            table.open.remove(&oldest);
            let mut stats = self.stats();
            stats.connections_evicted += 1;
            stats.served_closed();
        }
        let id = table.next_id;
        table.next_id += 1;
        let (evict, evicted) = channel::bounded(1);
        table.open.insert(
            id,
            ServedEntry {
                idle_since: (!busy).then_some(now),
                _evict: evict,
            },
        );
        self.stats().served_opened();
        let slot = ServedSlot {
            id,
            shared: self.clone(),
        };
        Some((slot, evicted))
    }
}

/// The served connections open, by id.
#[derive(Default)]
struct ServedTable {
    next_id: u64,
    open: HashMap<u64, ServedEntry>,
}

struct ServedEntry {
    /// Since when it has had nothing under way (no request partly read, nothing being
    /// written); `None` while busy. Only idle connections are evicted.
    idle_since: Option<Instant>,
    /// Dropped to evict the connection.
    _evict: Sender<()>,
}

/// A served connection's place in the [`ServedTable`], given back when dropped.
struct ServedSlot {
    id: u64,
    shared: Arc<Shared>,
}

impl ServedSlot {
    /// Marks the connection idle since `now` (`Some`) or busy (`None`).
    fn set_idle(&self, since: Option<Instant>) {
        if let Some(entry) = self.shared.served().open.get_mut(&self.id) {
            entry.idle_since = since;
        }
    }
}

impl Drop for ServedSlot {
    fn drop(&mut self) {
        let mut table = self.shared.served();
        // An evicted connection was already taken out (and counted) when it was evicted.
        if table.open.remove(&self.id).is_some() {
            self.shared.stats().served_closed();
        }
    }
}

/// Room held for one outgoing connection, given back when dropped.
pub(crate) struct OutgoingSlot {
    shared: Arc<Shared>,
}

impl Drop for OutgoingSlot {
    fn drop(&mut self) {
        self.shared.stats().outgoing_closed();
    }
}

/// `f`, or `None` once `d` passes.
async fn within<T>(d: Duration, f: impl Future<Output = T>) -> Option<T> {
    future::or(async { Some(f.await) }, async {
        async_io::Timer::after(d).await;
        None
    })
    .await
}

/// `f`, or `None` once `deadline` passes.
async fn before<T>(deadline: Instant, f: impl Future<Output = T>) -> Option<T> {
    future::or(async { Some(f.await) }, async {
        async_io::Timer::at(deadline).await;
        None
    })
    .await
}

/// Runs `f` until it ends or the driver stops (its stop sender is dropped).
async fn until_stopped(stopped: Receiver<()>, f: impl Future<Output = ()>) {
    future::or(f, async {
        let _ = stopped.recv().await;
    })
    .await
}

// ----- the server -----

/// Accepts connections until the driver stops. At the served limit a new connection takes
/// the place of the one idle the longest; with none idle it is closed at once.
pub(crate) async fn accept(
    listener: Async<TcpListener>,
    shared: Arc<Shared>,
    to_driver: Sender<Msg>,
    stopped: Receiver<()>,
) {
    let serving = async {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    // A request already here makes the connection busy before the next
                    // accept looks for an idle one to evict.
                    let Some(inbuf) = read_ready(&stream) else {
                        continue; // closed by the peer already
                    };
                    let now = Instant::now();
                    let Some((slot, evicted)) = shared.admit(now, !inbuf.is_empty()) else {
                        shared.stats().connections_refused += 1;
                        continue;
                    };
                    let conn = serve_conn(stream, inbuf, slot, shared.clone(), to_driver.clone());
                    // Eviction ends the task (and closes the stream) wherever it waits.
                    let conn = future::or(conn, async move {
                        let _ = evicted.recv().await;
                    });
                    smol::spawn(until_stopped(stopped.clone(), conn)).detach();
                }
                Err(e) => {
                    // Out of descriptors, say: wait a little rather than spin.
                    tracing::debug!("accept failed: {e}");
                    async_io::Timer::after(Duration::from_millis(10)).await;
                }
            }
        }
    };
    until_stopped(stopped.clone(), serving).await;
}

/// The bytes that arrived on a newly accepted connection, without waiting; `None` if the
/// peer closed it already.
fn read_ready(stream: &Async<TcpStream>) -> Option<Vec<u8>> {
    let mut chunk = [0u8; 4096];
    match std::io::Read::read(&mut stream.get_ref(), &mut chunk) {
        Ok(0) => None,
        Ok(n) => Some(chunk[..n].to_vec()),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Some(Vec::new()),
        Err(_) => None,
    }
}

/// Serves requests on one connection, one at a time, until it closes, idles past the idle
/// timeout, takes longer than the request read timeout to send a request (counted from its
/// first byte: more bytes do not extend it), stalls a write for the idle timeout, asks to
/// close, or sends something that cannot be framed.
async fn serve_conn(
    mut stream: Async<TcpStream>,
    mut inbuf: Vec<u8>,
    slot: ServedSlot,
    shared: Arc<Shared>,
    to_driver: Sender<Msg>,
) {
    let limits = serve::serve_limits(&shared.limits, shared.max_request_body);
    let cap = serve::buffer_limit(&limits);
    let idle = shared.idle_timeout;
    let mut chunk = vec![0u8; 16 * 1024];
    // When the first byte of the request being read arrived; `None` between requests.
    let mut started = (!inbuf.is_empty()).then(Instant::now);
    let mut buffered_peak = inbuf.len();
    shared.stats().served_buffered(buffered_peak);
    loop {
        while let Some(served) = serve::next_request(&mut inbuf, &limits) {
            let answer = match served {
                Served::Request(req) => {
                    let (tx, rx) = channel::bounded(1);
                    if to_driver.send(Msg::Serve(req, tx)).await.is_err() {
                        return;
                    }
                    let Ok(answer) = rx.recv().await else {
                        return;
                    };
                    answer
                }
                Served::Reject(answer) => answer,
            };
            match write_within(&mut stream, &answer.bytes, idle).await {
                Some(Ok(())) => {}
                Some(Err(_)) => return,
                None => {
                    shared.stats().connections_timed_out += 1;
                    return;
                }
            }
            if answer.close {
                return;
            }
            // Bytes left over begin the next request: its clock starts now.
            started = (!inbuf.is_empty()).then(Instant::now);
        }
        if started.is_none() {
            slot.set_idle(Some(Instant::now()));
        }
        // A full buffer always frames (as a request or a refusal): room is never 0 here.
        let room = cap.saturating_sub(inbuf.len()).min(chunk.len());
        if room == 0 {
            return;
        }
        let read = stream.read(&mut chunk[..room]);
        let read = match started {
            None => within(idle, read).await.ok_or(Expiry::Idle),
            Some(t) => before(t + shared.request_read_timeout, read)
                .await
                .ok_or(Expiry::SlowRequest),
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => {
                inbuf.extend_from_slice(&chunk[..n]);
                if started.is_none() {
                    started = Some(Instant::now());
                    slot.set_idle(None);
                }
                if inbuf.len() > buffered_peak {
                    buffered_peak = inbuf.len();
                    shared.stats().served_buffered(buffered_peak);
                }
            }
            Err(Expiry::Idle) => {
                shared.stats().connections_timed_out += 1;
                return;
            }
            Err(Expiry::SlowRequest) => {
                shared.stats().slow_requests += 1;
                return;
            }
        }
    }
}

/// Why a served connection's wait ended without bytes.
enum Expiry {
    /// No request began within the idle timeout.
    Idle,
    /// The request begun was not complete within the request read timeout.
    SlowRequest,
}

/// Writes all of `bytes`, giving up (`None`) when no progress is made for `idle`: a slow
/// reader of a large answer keeps its connection while it keeps reading.
async fn write_within(
    stream: &mut Async<TcpStream>,
    mut bytes: &[u8],
    idle: Duration,
) -> Option<std::io::Result<()>> {
    while !bytes.is_empty() {
        match within(idle, stream.write(bytes)).await? {
            Ok(0) => return Some(Err(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Some(Err(e)),
        }
    }
    Some(Ok(()))
}

// ----- the client -----

/// An idle connection kept for the next request to the same address, until `expires`.
struct Pooled {
    stream: Async<TcpStream>,
    permit: OutgoingSlot,
    expires: Instant,
}

impl Pooled {
    /// True if the peer closed it or sent something unasked (it cannot carry a request).
    fn spoiled(&self) -> bool {
        match self.stream.get_ref().peek(&mut [0u8; 1]) {
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            Ok(_) => true,
        }
    }
}

type Pool = Arc<Mutex<HashMap<SocketAddr, Vec<Pooled>>>>;

/// Starts the node's requests, each in a task, reusing idle connections.
pub(crate) struct Client {
    shared: Arc<Shared>,
    pool: Pool,
    /// Where answers go.
    to_driver: Sender<Msg>,
    /// Ends the request tasks when the driver stops.
    stopped: Receiver<()>,
}

/// A connection to ask on: taken from the pool, or room to open one.
enum Start {
    Pooled(Pooled),
    Fresh(OutgoingSlot),
}

impl Client {
    /// When the next idle pooled connection is due to close.
    pub fn next_expiry(&self) -> Option<Instant> {
        let pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.values().flatten().map(|p| p.expires).min()
    }

    /// Once a pooled connection is due: closes those idle past the idle timeout (counted, as
    /// the mio runtime counts them) and those the peer closed, freeing their permits.
    pub fn expire(&self, now: Instant) {
        if self.next_expiry().is_none_or(|t| t > now) {
            return;
        }
        let mut timed_out = 0;
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        for conns in pool.values_mut() {
            conns.retain(|p| {
                let late = p.expires <= now;
                timed_out += u64::from(late);
                !late && !p.spoiled()
            });
        }
        pool.retain(|_, conns| !conns.is_empty());
        drop(pool);
        self.shared.stats().connections_timed_out += timed_out;
    }

    pub fn new(shared: Arc<Shared>, to_driver: Sender<Msg>, stopped: Receiver<()>) -> Client {
        Client {
            shared,
            pool: Pool::default(),
            to_driver,
            stopped,
        }
    }

    /// Starts request `id`. At the outgoing limit an idle pooled connection (to any peer) is
    /// closed to make room; with none, the request fails at once.
    pub fn ask(
        &mut self,
        id: RequestId,
        to: SocketAddr,
        request: Bytes,
    ) -> Result<(), RequestFailure> {
        let start = match take_pooled(&self.pool, to) {
            Some(p) => Start::Pooled(p),
            None => match self.shared.try_outgoing().or_else(|| {
                drop(take_oldest_pooled(&self.pool)?);
                self.shared.try_outgoing()
            }) {
                Some(permit) => Start::Fresh(permit),
                None => {
                    self.shared.stats().connections_refused += 1;
                    return Err(RequestFailure::Connect("connection limit reached".into()));
                }
            },
        };
        let (shared, pool) = (self.shared.clone(), self.pool.clone());
        let (to_driver, stopped) = (self.to_driver.clone(), self.stopped.clone());
        let task = async move {
            let timeout = shared.request_timeout;
            let result =
                match within(timeout, request_on(start, &shared, &pool, to, &request)).await {
                    Some(r) => r,
                    None => {
                        shared.stats().connections_timed_out += 1;
                        Err(RequestFailure::Timeout)
                    }
                };
            let _ = to_driver.send(Msg::Answered(id, result)).await;
        };
        smol::spawn(until_stopped(stopped, task)).detach();
        Ok(())
    }
}

/// Takes the most recently parked connection to `to` that is still usable.
fn take_pooled(pool: &Pool, to: SocketAddr) -> Option<Pooled> {
    let mut pool = pool.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    let conns = pool.get_mut(&to)?;
    let mut found = None;
    while let Some(p) = conns.pop() {
        if p.expires > now && !p.spoiled() {
            found = Some(p);
            break;
        }
    }
    if conns.is_empty() {
        // No address stays in the pool map without a connection.
        pool.remove(&to);
    }
    found
}

/// Takes the pooled connection idle the longest, to whichever address.
fn take_oldest_pooled(pool: &Pool) -> Option<Pooled> {
    let mut pool = pool.lock().unwrap_or_else(|e| e.into_inner());
    let (&to, i) = pool
        .iter()
        .flat_map(|(to, conns)| {
            conns
                .iter()
                .enumerate()
                .map(move |(i, p)| (p.expires, to, i))
        })
        .min()
        .map(|(_, to, i)| (to, i))?;
    let conns = pool.get_mut(&to)?;
    let taken = conns.swap_remove(i);
    if conns.is_empty() {
        pool.remove(&to);
    }
    Some(taken)
}

/// Sends `request` and reads the answer; a pooled connection the peer had closed is replaced
/// by a fresh one, once. A connection that may carry another request goes back to the pool.
async fn request_on(
    start: Start,
    shared: &Shared,
    pool: &Pool,
    to: SocketAddr,
    request: &[u8],
) -> Result<Response, RequestFailure> {
    let (stream, permit) = match start {
        Start::Pooled(p) => match exchange(p.stream, request, &shared.limits).await {
            Ok((resp, kept)) => {
                park(pool, to, kept, p.permit, shared.idle_timeout);
                return Ok(resp);
            }
            // A stale pooled connection: try once on a fresh one (with its permit).
            Err(RequestFailure::Io(_)) => (connect(to).await?, p.permit),
            Err(e) => return Err(e),
        },
        Start::Fresh(permit) => (connect(to).await?, permit),
    };
    let (resp, kept) = exchange(stream, request, &shared.limits).await?;
    park(pool, to, kept, permit, shared.idle_timeout);
    Ok(resp)
}

async fn connect(to: SocketAddr) -> Result<Async<TcpStream>, RequestFailure> {
    Async::<TcpStream>::connect(to)
        .await
        .map_err(|e| RequestFailure::Connect(e.to_string()))
}

/// Keeps `kept` for the next request to `to`, for at most `idle`. The driver wakes for the
/// deadline (see [`Client::next_expiry`]); a peer that closes a pooled connection earlier
/// is noticed then or when the connection is next taken.
fn park(
    pool: &Pool,
    to: SocketAddr,
    kept: Option<Async<TcpStream>>,
    permit: OutgoingSlot,
    idle: Duration,
) {
    if let Some(stream) = kept {
        let mut pool = pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.entry(to).or_default().push(Pooled {
            stream,
            permit,
            expires: Instant::now() + idle,
        });
    }
}

/// One request and its answer on `stream`; the stream comes back if it can carry another.
async fn exchange(
    mut stream: Async<TcpStream>,
    request: &[u8],
    limits: &HttpLimits,
) -> Result<(Response, Option<Async<TcpStream>>), RequestFailure> {
    let io = |e: std::io::Error| RequestFailure::Io(e.to_string());
    stream.write_all(request).await.map_err(io)?;
    let cap = serve::buffer_limit(limits);
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match core_http::parse_response(&buf, limits) {
            Ok(Some((resp, used))) => {
                let keep = used == buf.len() && serve::reusable(&resp);
                return Ok((resp, keep.then_some(stream)));
            }
            Ok(None) => {}
            Err(e) => return Err(RequestFailure::InvalidResponse(e.to_string())),
        }
        // The parser refuses a message over the limits before the buffer is full.
        let room = cap.saturating_sub(buf.len()).min(chunk.len());
        if room == 0 {
            return Err(RequestFailure::InvalidResponse(
                "answer over the limits".into(),
            ));
        }
        let n = stream.read(&mut chunk[..room]).await.map_err(io)?;
        if n == 0 {
            return Err(RequestFailure::Io(
                "connection closed before a full response".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
