//! Bytes queued for one stream connection, written by the runtime in pieces.

use bytes::Bytes;
use std::collections::VecDeque;

/// A queue of frames, each one or more byte chunks, consumed from the front as the runtime
/// writes them. Chunks are shared (`Bytes`), so a datagram relayed to many connections is
/// stored once. The queue knows where frames end, so it can be cut short without leaving a
/// frame half written ([`Outbox::cut_after_current`]).
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    /// Chunks, each marked true when it is the last of its frame.
    chunks: VecDeque<(Bytes, bool)>,
    /// Unwritten bytes, over every chunk.
    len: usize,
    /// Part of the front frame was written already.
    started: bool,
}

impl Outbox {
    /// Queues a frame of one chunk.
    pub(crate) fn push(&mut self, frame: Bytes) {
        self.push_frame(&[frame]);
    }

    /// Queues a frame made of `chunks`, in order.
    pub(crate) fn push_frame(&mut self, chunks: &[Bytes]) {
        let last = chunks.iter().rposition(|c| !c.is_empty());
        for (i, c) in chunks.iter().enumerate() {
            if !c.is_empty() {
                self.len += c.len();
                self.chunks.push_back((c.clone(), Some(i) == last));
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Drops everything queued (the connection is gone).
    pub(crate) fn clear(&mut self) {
        self.chunks.clear();
        self.len = 0;
        self.started = false;
    }

    /// Bytes [`Outbox::cut_after_current`] would keep: the rest of a frame partly written.
    pub(crate) fn committed(&self) -> usize {
        if !self.started {
            return 0;
        }
        let mut n = 0;
        for (c, last) in &self.chunks {
            n += c.len();
            if *last {
                break;
            }
        }
        n
    }

    /// Drops every frame not yet begun, keeping the rest of a frame partly written, so that
    /// what is queued next follows a whole frame on the stream.
    pub(crate) fn cut_after_current(&mut self) {
        if !self.started {
            return self.clear();
        }
        let keep = self
            .chunks
            .iter()
            .position(|(_, last)| *last)
            .map_or(self.chunks.len(), |i| i + 1);
        for (c, _) in self.chunks.drain(keep..) {
            self.len -= c.len();
        }
    }

    /// The unwritten bytes of the first chunk.
    pub(crate) fn peek(&self) -> Option<&[u8]> {
        self.chunks.front().map(|(c, _)| &c[..])
    }

    /// Marks `n` bytes from the front as written (at most what [`Outbox::peek`] showed;
    /// more is clamped).
    pub(crate) fn consume(&mut self, n: usize) {
        let Some((front, last)) = self.chunks.front_mut() else {
            return;
        };
        let n = n.min(front.len());
        if n == 0 {
            return;
        }
        self.len -= n;
        if n == front.len() {
            self.started = !*last;
            self.chunks.pop_front();
        } else {
            let _ = front.split_to(n);
            self.started = true;
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

    #[test]
    fn cutting_keeps_the_rest_of_a_frame_begun_and_nothing_after() {
        let frame =
            |a: &'static [u8], b: &'static [u8]| [Bytes::from_static(a), Bytes::from_static(b)];
        let mut o = Outbox::default();
        o.push_frame(&frame(b"h1", b"body1"));
        o.push_frame(&frame(b"h2", b"body2"));
        // Nothing written yet: everything goes.
        o.cut_after_current();
        assert_eq!(o.len(), 0);

        o.push_frame(&frame(b"h1", b"body1"));
        o.push_frame(&frame(b"h2", b"body2"));
        o.consume(2); // the first header, whole: its body must still follow
        o.cut_after_current();
        assert_eq!(o.peek(), Some(&b"body1"[..]));
        assert_eq!(o.len(), 5);
        o.consume(3);
        o.cut_after_current();
        assert_eq!(o.peek(), Some(&b"y1"[..]));
        o.consume(2);
        assert_eq!(o.len(), 0);

        // After a whole frame was written, the next one not begun is dropped.
        o.push_frame(&frame(b"h3", b"body3"));
        o.push(Bytes::from_static(b"single"));
        o.consume(2);
        o.consume(5);
        o.cut_after_current();
        assert_eq!(o.len(), 0);
    }
}
