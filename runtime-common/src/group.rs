//! Sending group datagrams on a non-blocking socket without ever waiting for it.

use bytes::Bytes;
use std::collections::VecDeque;
use std::io;

/// Group datagrams waiting for a full socket to drain; more are dropped (and counted): the
/// protocol recovers them like lost ones.
pub const MAX_PENDING_SENDS: usize = 1024;

/// The group datagrams a runtime could not send yet, in order.
///
/// `send_to` is the runtime's non-blocking send on its multicast socket. Each call returns
/// how many datagrams were dropped (a full queue, or a send error), for
/// [`crate::RuntimeStats::send_drops`]. While [`SendQueue::is_empty`] is false the runtime
/// waits for the socket to become writable and calls [`SendQueue::flush`].
#[derive(Debug, Default)]
pub struct SendQueue {
    pending: VecDeque<Bytes>,
}

impl SendQueue {
    /// True when nothing waits for the socket.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Sends `datagram` now if nothing waits before it and the socket takes it, else queues
    /// it; returns the datagrams dropped.
    pub fn send(
        &mut self,
        datagram: Bytes,
        mut send_to: impl FnMut(&[u8]) -> io::Result<usize>,
    ) -> u64 {
        if self.pending.is_empty() {
            match send_to(&datagram) {
                Ok(_) => return 0,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    tracing::debug!("multicast send failed: {e}");
                    return 1;
                }
            }
        }
        if self.pending.len() < MAX_PENDING_SENDS {
            self.pending.push_back(datagram);
            0
        } else {
            1
        }
    }

    /// Sends what waits until the socket is full again; returns the datagrams dropped.
    pub fn flush(&mut self, mut send_to: impl FnMut(&[u8]) -> io::Result<usize>) -> u64 {
        let mut dropped = 0;
        while let Some(d) = self.pending.front() {
            match send_to(d) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => dropped += 1,
            }
            self.pending.pop_front();
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_in_order_while_full_bounds_the_queue_and_counts_drops() {
        let mut q = SendQueue::default();
        let mut sent: Vec<Bytes> = Vec::new();
        let full = |_: &[u8]| -> io::Result<usize> { Err(io::ErrorKind::WouldBlock.into()) };
        assert_eq!(q.send(Bytes::from_static(b"a"), full), 0);
        // Once one waits, later datagrams queue behind it even if the socket has room.
        assert_eq!(
            q.send(Bytes::from_static(b"b"), |d| {
                sent.push(Bytes::copy_from_slice(d));
                Ok(d.len())
            }),
            0
        );
        assert!(sent.is_empty() && !q.is_empty());
        for _ in 2..MAX_PENDING_SENDS {
            assert_eq!(q.send(Bytes::from_static(b"x"), full), 0);
        }
        assert_eq!(q.send(Bytes::from_static(b"over"), full), 1, "bounded");
        let dropped = q.flush(|d| {
            sent.push(Bytes::copy_from_slice(d));
            if sent.len() == 3 {
                Err(io::ErrorKind::ConnectionRefused.into())
            } else {
                Ok(d.len())
            }
        });
        assert_eq!(dropped, 1, "a send error drops that datagram only");
        assert_eq!(sent.len(), MAX_PENDING_SENDS);
        assert_eq!((&sent[0][..], &sent[1][..]), (&b"a"[..], &b"b"[..]));
        assert!(q.is_empty());
        let err = |_: &[u8]| -> io::Result<usize> { Err(io::ErrorKind::ConnectionRefused.into()) };
        assert_eq!(q.send(Bytes::from_static(b"y"), err), 1);
    }
}
