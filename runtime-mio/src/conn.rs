//! One non-blocking HTTP connection: buffers, bounded reads, queued writes, a deadline.
//!
//! Parsing and answers come from core (`hybridcast_core::http`); this file only moves bytes.

use bytes::Bytes;
use hybridcast_core::RequestId;
use mio::net::TcpStream;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

/// What a connection is for.
#[derive(Debug)]
pub(crate) enum Role {
    /// Accepted: we parse requests and answer them (keep-alive).
    Serve,
    /// Opened by us for a request of the core (`id`), or idle in the pool (`id` is `None`).
    Ask {
        id: Option<RequestId>,
        target: SocketAddr,
        /// The request, kept to retry once if a pooled connection turns out closed.
        request: Bytes,
        /// Taken from the pool: a failure before any answer byte may be a stale connection.
        reused: bool,
    },
}

/// Why a connection's deadline is set where it is: what passing it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// Nothing to do for the idle timeout (served between requests, or pooled).
    Idle,
    /// A served request not read in full within the request read timeout.
    SlowRequest,
    /// A write that made no progress for the idle timeout.
    StalledWrite,
    /// A request of ours unanswered within the core's request timeout.
    Unanswered,
}

#[derive(Debug)]
pub(crate) struct Conn {
    pub stream: TcpStream,
    pub role: Role,
    pub inbuf: Vec<u8>,
    pub out: Vec<u8>,
    pub written: usize,
    pub deadline: Instant,
    /// What passing `deadline` means.
    pub expiry: Expiry,
    /// Close once `out` is written (an answer with `connection: close`).
    pub close_after_write: bool,
    /// The last time bytes moved either way (the idle clock; the oldest is evicted first).
    pub active_at: Instant,
    /// Served: the order of its accept, to tell apart connections of equal `active_at`.
    pub order: u64,
    /// Served: when the first byte of the request being read arrived.
    pub request_started: Option<Instant>,
    /// The last time a write made progress, or queued bytes on an empty buffer.
    pub write_progress: Instant,
}

/// How a read ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadEnd {
    /// Nothing more for now.
    WouldBlock,
    /// The peer closed its side.
    Closed,
    /// `limit` bytes are buffered: the peer sent more than any valid message may hold.
    Full,
}

impl Conn {
    pub fn new(stream: TcpStream, role: Role, now: Instant, deadline: Instant) -> Conn {
        let expiry = match role {
            Role::Serve => Expiry::Idle,
            Role::Ask { .. } => Expiry::Unanswered,
        };
        Conn {
            stream,
            role,
            inbuf: Vec::new(),
            out: Vec::new(),
            written: 0,
            deadline,
            expiry,
            close_after_write: false,
            active_at: now,
            order: 0,
            request_started: None,
            write_progress: now,
        }
    }

    /// True for a served connection with nothing under way: no request partly read, nothing
    /// left to write. Such a connection may be closed to make room for another.
    pub fn serving_idle(&self) -> bool {
        matches!(self.role, Role::Serve)
            && self.inbuf.is_empty()
            && self.flushed()
            && !self.close_after_write
    }

    /// Reads until the socket would block, the peer closes, or `limit` bytes are buffered.
    pub fn read(&mut self, limit: usize, now: Instant) -> io::Result<ReadEnd> {
        let before = self.inbuf.len();
        let end = self.read_some(limit);
        if self.inbuf.len() > before {
            self.active_at = now;
        }
        end
    }

    fn read_some(&mut self, limit: usize) -> io::Result<ReadEnd> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if self.inbuf.len() >= limit {
                return Ok(ReadEnd::Full);
            }
            let room = chunk.len().min(limit - self.inbuf.len());
            match self.stream.read(&mut chunk[..room]) {
                Ok(0) => return Ok(ReadEnd::Closed),
                Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadEnd::WouldBlock),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Queues `bytes` for writing.
    pub fn queue(&mut self, bytes: &[u8], now: Instant) {
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
            self.write_progress = now;
        }
        self.out.extend_from_slice(bytes);
    }

    /// True when nothing waits to be written.
    pub fn flushed(&self) -> bool {
        self.written == self.out.len()
    }

    /// Writes what is queued until done or the socket would block.
    pub fn write(&mut self, now: Instant) -> io::Result<()> {
        while self.written < self.out.len() {
            match self.stream.write(&self.out[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.written += n;
                    self.write_progress = now;
                    self.active_at = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.written = 0;
        Ok(())
    }

    /// Drops the first `n` buffered input bytes (a parsed message).
    pub fn consume(&mut self, n: usize) {
        self.inbuf.drain(..n.min(self.inbuf.len()));
    }
}
