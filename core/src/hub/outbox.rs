//! Bytes queued for one stream connection, written by the runtime in pieces.

use bytes::Bytes;
use std::collections::VecDeque;

/// A queue of byte chunks, consumed from the front as the runtime writes them. Chunks are
/// shared (`Bytes`), so a datagram relayed to many connections is stored once.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    chunks: VecDeque<Bytes>,
    /// Unwritten bytes, over every chunk.
    len: usize,
}

impl Outbox {
    pub(crate) fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.len += chunk.len();
            self.chunks.push_back(chunk);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn clear(&mut self) {
        self.chunks.clear();
        self.len = 0;
    }

    /// The unwritten bytes of the first chunk.
    pub(crate) fn peek(&self) -> Option<&[u8]> {
        self.chunks.front().map(|c| &c[..])
    }

    /// Marks `n` bytes from the front as written (at most what [`Outbox::peek`] showed;
    /// more is clamped).
    pub(crate) fn consume(&mut self, n: usize) {
        let Some(front) = self.chunks.front_mut() else {
            return;
        };
        let n = n.min(front.len());
        self.len -= n;
        if n == front.len() {
            self.chunks.pop_front();
        } else {
            let _ = front.split_to(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_writes_walk_through_the_chunks() {
        let mut o = Outbox::default();
        o.push(Bytes::from_static(b"abc"));
        o.push(Bytes::new());
        o.push(Bytes::from_static(b"de"));
        assert_eq!(o.len(), 5);
        assert_eq!(o.peek(), Some(&b"abc"[..]));
        o.consume(2);
        assert_eq!(o.peek(), Some(&b"c"[..]));
        o.consume(10);
        assert_eq!(o.peek(), Some(&b"de"[..]));
        o.consume(2);
        assert_eq!(o.len(), 0);
        assert_eq!(o.peek(), None);
        o.consume(1);
        assert_eq!(o.len(), 0);
    }
}
