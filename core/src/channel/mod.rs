//! Sequenced channels: the sending side (sequence numbers, fragmentation, bundling, retention)
//! and the receiving side ([`receiver`]: in-order exactly-once assembly and loss detection).
//!
//! Invariant kept here: a channel's sequence numbers start at 1 for each incarnation and grow by
//! one per message; every message handed to `Sender::push` goes out exactly once, in order,
//! packed greedily into datagrams of at most the configured budget.

pub mod receiver;

use crate::ids::Channel;
use crate::wire::{self, FragmentPacker, Header};
use bytes::Bytes;
use std::collections::VecDeque;

/// Sending side of one channel.
#[derive(Debug)]
pub(crate) struct Sender {
    channel: Channel,
    next_seq: u64,
    queue: VecDeque<(u64, Bytes)>,
    retention: Retention,
}

impl Sender {
    /// A sender whose first message gets sequence 1; `retention` keeps sent messages for recovery.
    pub(crate) fn new(channel: Channel, retention: Retention) -> Self {
        Sender {
            channel,
            next_seq: 1,
            queue: VecDeque::new(),
            retention,
        }
    }

    /// Assigns the next sequence number to `payload` and queues it.
    pub(crate) fn push(&mut self, payload: Bytes) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.retention.push(seq, payload.clone());
        self.queue.push_back((seq, payload));
        seq
    }

    /// Sequence number of the last message pushed (0 before the first).
    pub(crate) fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Messages retained for recovery.
    pub(crate) fn retention(&self) -> &Retention {
        &self.retention
    }

    /// True if messages wait to be packed.
    pub(crate) fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Packs every queued message into datagrams appended to `out`.
    pub(crate) fn pack(&mut self, packer: &mut Packer<'_>) {
        while let Some((seq, payload)) = self.queue.pop_front() {
            packer.add(self.channel, seq, &payload);
        }
    }
}

/// Greedy datagram builder shared by the channels of one flush, so that small messages of both
/// channels queued in one tick share datagrams.
pub(crate) struct Packer<'a> {
    header: Header,
    budget: usize,
    current: Option<FragmentPacker>,
    out: &'a mut VecDeque<Bytes>,
}

impl<'a> Packer<'a> {
    /// A packer writing datagrams of at most `budget` bytes into `out`.
    pub(crate) fn new(header: Header, budget: usize, out: &'a mut VecDeque<Bytes>) -> Self {
        Packer {
            header,
            budget,
            current: None,
            out,
        }
    }

    /// Payload bytes one fragment carries.
    pub(crate) fn max_payload(budget: usize) -> usize {
        budget
            .saturating_sub(wire::HEADER_LEN + wire::FRAGMENTS_PREFIX_LEN + wire::FRAGMENT_OVERHEAD)
            .max(1)
    }

    fn add(&mut self, channel: Channel, seq: u64, payload: &[u8]) {
        let total = payload.len() as u32;
        let count = wire::fragment_count(payload.len(), Self::max_payload(self.budget)) as u32;
        for index in 0..count {
            let Some((off, len)) = wire::fragment_span(total, count, index) else {
                return;
            };
            let data = &payload[off..off + len];
            let fits = self
                .current
                .as_mut()
                .is_some_and(|p| p.push(channel, seq, index, count, total, data));
            if !fits {
                self.finish_current();
                let mut p = FragmentPacker::new(&self.header, self.budget);
                // An empty packer always has room for one max-size fragment.
                let pushed = p.push(channel, seq, index, count, total, data);
                debug_assert!(pushed);
                self.current = Some(p);
            }
        }
    }

    fn finish_current(&mut self) {
        if let Some(p) = self.current.take() {
            if !p.is_empty() {
                self.out.push_back(p.finish());
            }
        }
    }
}

impl Drop for Packer<'_> {
    fn drop(&mut self) {
        self.finish_current();
    }
}

/// Bounded buffer of sent messages, oldest dropped first, for log-channel recovery.
#[derive(Debug)]
pub(crate) struct Retention {
    msgs: VecDeque<(u64, Bytes)>,
    bytes: usize,
    max_msgs: usize,
    max_bytes: usize,
}

impl Retention {
    /// Keeps at most `max_msgs` messages and `max_bytes` bytes (0 keeps nothing).
    pub(crate) fn new(max_msgs: usize, max_bytes: usize) -> Self {
        Retention {
            msgs: VecDeque::new(),
            bytes: 0,
            max_msgs,
            max_bytes,
        }
    }

    fn push(&mut self, seq: u64, payload: Bytes) {
        if self.max_msgs == 0 || payload.len() > self.max_bytes {
            self.msgs.clear();
            self.bytes = 0;
            return;
        }
        self.bytes += payload.len();
        self.msgs.push_back((seq, payload));
        while self.msgs.len() > self.max_msgs || self.bytes > self.max_bytes {
            if let Some((_, p)) = self.msgs.pop_front() {
                self.bytes -= p.len();
            }
        }
    }

    /// Oldest retained sequence number, if any.
    pub(crate) fn first_seq(&self) -> Option<u64> {
        self.msgs.front().map(|(s, _)| *s)
    }

    /// Retained messages with `from <= seq <= to`, in order, stopping before `max_bytes` is exceeded
    /// (at least one message is returned if any is in range).
    pub(crate) fn range(&self, from: u64, to: u64, max_bytes: usize) -> Vec<(u64, Bytes)> {
        let Some(first) = self.first_seq() else {
            return Vec::new();
        };
        let skip = from.saturating_sub(first).min(self.msgs.len() as u64) as usize;
        let mut out = Vec::new();
        let mut size = 0usize;
        for (seq, p) in self.msgs.iter().skip(skip) {
            if *seq > to || (!out.is_empty() && size + p.len() > max_bytes) {
                break;
            }
            size += p.len();
            out.push((*seq, p.clone()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ClusterId, MemberKey};
    use crate::wire::{Body, decode};

    fn header() -> Header {
        Header {
            cluster: ClusterId(1),
            sender: MemberKey(2),
            incarnation: 3,
        }
    }

    #[test]
    fn sequences_start_at_one_and_small_messages_bundle() {
        let mut s = Sender::new(Channel::Log, Retention::new(10, 1000));
        assert_eq!(s.last_seq(), 0);
        for i in 0..10u8 {
            assert_eq!(s.push(Bytes::from(vec![i; 10])), u64::from(i) + 1);
        }
        let mut out = VecDeque::new();
        s.pack(&mut Packer::new(header(), 1400, &mut out));
        assert_eq!(out.len(), 1, "ten small messages share one datagram");
        let Body::Fragments(f) = decode(&out[0]).expect("decode").body else {
            panic!()
        };
        assert_eq!(
            f.iter().map(|f| f.seq).collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>()
        );
    }

    #[test]
    fn large_messages_fragment_within_budget() {
        let mut s = Sender::new(Channel::State, Retention::new(0, 0));
        s.push(Bytes::from(vec![7u8; 10_000]));
        let mut out = VecDeque::new();
        s.pack(&mut Packer::new(header(), 1400, &mut out));
        assert_eq!(out.len(), 8);
        let mut total = 0;
        for d in &out {
            assert!(d.len() <= 1400);
            let Body::Fragments(f) = decode(d).expect("decode").body else {
                panic!()
            };
            total += f.iter().map(|f| f.data.len()).sum::<usize>();
        }
        assert_eq!(total, 10_000);
    }

    #[test]
    fn retention_is_bounded_and_ranges_are_ordered() {
        let mut r = Retention::new(3, 100);
        for seq in 1..=5 {
            r.push(seq, Bytes::from(vec![0u8; 10]));
        }
        assert_eq!(r.first_seq(), Some(3));
        let got: Vec<u64> = r.range(1, 4, 1000).into_iter().map(|(s, _)| s).collect();
        assert_eq!(got, vec![3, 4]);
        assert_eq!(r.range(3, 5, 15).len(), 1, "byte cap, but at least one");
        r.push(6, Bytes::from(vec![0u8; 95]));
        assert_eq!(r.first_seq(), Some(6));
    }
}
