//! Hostile HTTP clients on blocking std sockets, each in a thread of its own, shared by the
//! hostile-peer tests of both runtimes (the smol tests include this file by path; the crate
//! root names the runtime's re-export of core `hc`). Every
//! attack reports what it saw; the tests assert on those reports and on the member's
//! counters, never on how long anything took.

#![allow(dead_code)]

use crate::hc::http::{self, HttpLimits, Response};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long an attack waits for the member to do something before reporting that it did
/// not (a bound on waiting, not a timing assertion).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Descriptors kept free for the cluster under test and the harness when sizing a flood.
const SPARE_FDS: usize = 300;

/// Connections a flood opens: 1000, or fewer when the soft descriptor limit would not hold
/// them beside the members' own sockets (CI machines with `ulimit -n` 1024 run a flood of 724).
/// The limit is read from `/proc/self/limits` (Linux); unread, 1024 is assumed.
pub fn flood_size() -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            let line = t.lines().find(|l| l.starts_with("Max open files"))?;
            let soft = line.split_whitespace().nth(3)?;
            if soft == "unlimited" {
                Some(usize::MAX)
            } else {
                soft.parse().ok()
            }
        })
        .unwrap_or(1024);
    soft.saturating_sub(SPARE_FDS).min(1000)
}

/// A flood of idle connections: opened, never written to, each read until the member
/// closes it.
pub struct Flood {
    /// Connections opened so far.
    pub opened: Arc<AtomicUsize>,
    /// Connections the member closed so far.
    pub closed: Arc<AtomicUsize>,
    thread: JoinHandle<FloodEnd>,
}

/// How a flood ended.
#[derive(Debug)]
pub struct FloodEnd {
    /// Connections opened.
    pub opened: usize,
    /// Connections the member closed (a read saw the end of the stream or a reset).
    pub closed: usize,
}

impl Flood {
    /// Opens `n` idle connections to `addr`.
    pub fn start(addr: SocketAddr, n: usize) -> Flood {
        let opened = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (o, c) = (opened.clone(), closed.clone());
        let thread = thread::spawn(move || {
            let mut conns = Vec::with_capacity(n);
            for _ in 0..n {
                match TcpStream::connect(addr) {
                    Ok(s) => {
                        conns.push(s);
                        o.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => panic!("flood connect failed: {e}"),
                }
            }
            for s in &mut conns {
                if closed_by_peer(s) {
                    c.fetch_add(1, Ordering::SeqCst);
                }
            }
            FloodEnd {
                opened: o.load(Ordering::SeqCst),
                closed: c.load(Ordering::SeqCst),
            }
        });
        Flood {
            opened,
            closed,
            thread,
        }
    }

    /// True once every connection was opened.
    pub fn all_open(&self, n: usize) -> bool {
        self.opened.load(Ordering::SeqCst) >= n
    }

    /// True once the flood thread ended.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the end of the flood.
    pub fn join(self) -> FloodEnd {
        self.thread.join().expect("the flood thread panicked")
    }
}

/// Blocks until the peer closes `s` (true) or [`PATIENCE`] passes or it sends data (false).
fn closed_by_peer(s: &mut TcpStream) -> bool {
    if s.set_read_timeout(Some(PATIENCE)).is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
        ),
    }
}

/// How a slow-drip client ended.
#[derive(Debug)]
pub struct DripEnd {
    /// Bytes of the request sent before the member closed the connection.
    pub sent: usize,
    /// The whole request's length.
    pub request_len: usize,
    /// The member closed the connection.
    pub closed: bool,
    /// The member answered (it should not: the request never arrived in full in time).
    pub answered: bool,
}

/// A request sent one byte every `every`: a valid request that takes
/// `request_len * every` to arrive (about 25 s at 100 ms).
pub fn drip(addr: SocketAddr, every: Duration) -> JoinHandle<DripEnd> {
    thread::spawn(move || {
        let mut request = b"GET /hybridcast/v1/whoami HTTP/1.1\r\nhost: drip\r\nx-slow: ".to_vec();
        request.extend(std::iter::repeat_n(b'z', 200));
        request.extend_from_slice(b"\r\n\r\n");
        let mut end = DripEnd {
            sent: 0,
            request_len: request.len(),
            closed: false,
            answered: false,
        };
        let mut s = TcpStream::connect(addr).expect("drip connect");
        s.set_nonblocking(true).expect("non-blocking");
        for byte in &request {
            match s.write(std::slice::from_ref(byte)) {
                Ok(1) => end.sent += 1,
                Ok(_) | Err(_) => {
                    end.closed = true;
                    return end;
                }
            }
            thread::sleep(every);
            let mut b = [0u8; 256];
            match s.read(&mut b) {
                Ok(0) => {
                    end.closed = true;
                    return end;
                }
                Ok(_) => {
                    end.answered = true;
                    return end;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => {
                    end.closed = true;
                    return end;
                }
            }
        }
        end
    })
}

/// What a client that sent one oversized request heard back.
#[derive(Debug)]
pub struct Refusal {
    /// The answer, if one arrived in full.
    pub response: Option<Response>,
    /// The member closed the connection after it.
    pub closed: bool,
    /// The close was a reset (the member closed with bytes of ours unread).
    pub reset: bool,
}

/// Sends `head` and then `filler` bytes of header lines (about 1 KB each, never ending the
/// head), writing from a thread of its own while this one reads the answer.
pub fn huge_headers(addr: SocketAddr, filler: usize) -> JoinHandle<Refusal> {
    thread::spawn(move || {
        let s = TcpStream::connect(addr).expect("connect");
        let mut writer = s.try_clone().expect("clone");
        let sender = thread::spawn(move || {
            let _ = writer.write_all(b"GET /hybridcast/v1/whoami HTTP/1.1\r\nhost: big\r\n");
            let mut line = b"x-filler: ".to_vec();
            line.extend(std::iter::repeat_n(b'f', 1000));
            line.extend_from_slice(b"\r\n");
            let mut sent = 0;
            while sent < filler {
                // The member stops reading and closes: the rest cannot be sent.
                if writer.write_all(&line).is_err() {
                    return;
                }
                sent += line.len();
            }
        });
        let refusal = read_refusal(s);
        let _ = sender.join();
        refusal
    })
}

/// Sends a request head declaring a `length`-byte body and none of the body.
pub fn huge_body(addr: SocketAddr, length: u64) -> JoinHandle<Refusal> {
    thread::spawn(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        let head = format!(
            "POST /hybridcast/v1/probe HTTP/1.1\r\nhost: body\r\ncontent-length: {length}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).expect("send the head");
        read_refusal(s)
    })
}

/// Reads one answer, then whether the connection is closed after it.
fn read_refusal(mut s: TcpStream) -> Refusal {
    let _ = s.set_read_timeout(Some(PATIENCE));
    let limits = HttpLimits::default();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut response = None;
    loop {
        if response.is_none() {
            if let Ok(Some((resp, used))) = http::parse_response(&buf, &limits) {
                buf.drain(..used);
                response = Some(resp);
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => {
                return Refusal {
                    response,
                    closed: true,
                    reset: false,
                };
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                let reset = matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                );
                if response.is_none() {
                    if let Ok(Some((resp, _))) = http::parse_response(&buf, &limits) {
                        response = Some(resp);
                    }
                }
                return Refusal {
                    response,
                    closed: reset,
                    reset,
                };
            }
        }
    }
}

/// One keep-alive connection that sends whole requests and reads whole answers.
pub struct KeepAlive {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl KeepAlive {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> io::Result<KeepAlive> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(PATIENCE))?;
        Ok(KeepAlive {
            stream,
            buf: Vec::new(),
        })
    }

    /// `GET path` on this connection, keeping it open; the answer.
    pub fn get(&mut self, path: &str) -> io::Result<Response> {
        let req = format!("GET {path} HTTP/1.1\r\nhost: keep-alive\r\n\r\n");
        self.stream.write_all(req.as_bytes())?;
        let limits = HttpLimits::default();
        let mut chunk = [0u8; 4096];
        loop {
            match http::parse_response(&self.buf, &limits) {
                Ok(Some((resp, used))) => {
                    self.buf.drain(..used);
                    return Ok(resp);
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(ErrorKind::InvalidData, e)),
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Sends the start of a request and nothing more; true once the member closed the
/// connection (it must, at its request read timeout).
pub fn half_request(addr: SocketAddr) -> io::Result<bool> {
    let mut s = TcpStream::connect(addr)?;
    s.write_all(b"GET /hybridcast/v1/whoami HTTP/1.1\r\nhost: half")?;
    Ok(closed_by_peer(&mut s))
}

/// Waits for `f` to hold, checking every 20 ms, for at most [`PATIENCE`].
pub fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + PATIENCE;
    while Instant::now() < end {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The value of the Prometheus sample `name` (with its labels) in a `/metrics` body.
pub fn metric(body: &str, name: &str) -> Option<u64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
