//! The `receiver_ops` target: one [`Receiver`] driven by an operation stream.
//!
//! Checked after every operation: the cache stays within [`ReceiverLimits`] (bytes and
//! messages), deliveries come out in order, exactly once, and leave `next()` right after the
//! last one; a message assembled only from well-formed fragments carries exactly the bytes the
//! sender put in; an ask is well-formed and none is made while one is in flight. At the end
//! `clear` must hand back exactly the budget the cache took (no byte lost in the accounting).

use super::input::{Input, Script};
use bytes::Bytes;
use hybridcast_core::channel::receiver::{Ask, Budget, Delivery, Receiver, ReceiverLimits};
use hybridcast_core::exchange::LogRange;
use hybridcast_core::ids::{Channel, RequestId, Rng};
use hybridcast_core::wire::{Fragment, MAX_SEQ, fragment_span};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Operation codes of the stream (one byte each, taken modulo the count).
pub mod op {
    /// A well-formed fragment of the sender's message (fields near the receiver's position).
    pub const FRAGMENT: u8 = 0;
    /// A fragment with arbitrary fields and data.
    pub const RAW_FRAGMENT: u8 = 1;
    /// A heartbeat's last sequence.
    pub const LAST_SEQ: u8 = 2;
    /// Time passes.
    pub const ADVANCE: u8 = 3;
    /// Ask for recovery if due, and start the request.
    pub const ASK: u8 = 4;
    /// The request in flight fails.
    pub const FAIL: u8 = 5;
    /// A log answer arrives.
    pub const LOG: u8 = 6;
    /// A snapshot answer arrives.
    pub const SNAPSHOT: u8 = 7;
    /// A join dump moves the receiver.
    pub const JUMP: u8 = 8;
    /// Messages are declared delivered.
    pub const SYNC: u8 = 9;
    /// The member goes: the cache is dropped.
    pub const CLEAR: u8 = 10;
    /// Number of operations.
    pub const COUNT: u8 = 11;
}

/// The byte a well-formed fragment carries at `offset` of message `seq`.
pub fn pattern(seq: u64, offset: usize) -> u8 {
    (seq.wrapping_mul(31).wrapping_add(offset as u64 * 7) % 251) as u8
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// A sequence near `base` most of the time, any value otherwise.
fn near(inp: &mut Input<'_>, base: u64) -> u64 {
    let sel = inp.u8();
    if sel < 224 {
        base.saturating_sub(3) + u64::from(sel % 16)
    } else {
        inp.u64()
    }
}

struct Run {
    r: Receiver,
    budget: Budget,
    limits: ReceiverLimits,
    rng: Rng,
    now: Instant,
    next_id: u64,
    /// Sequences that received data from somewhere else than a well-formed fragment.
    tainted: BTreeSet<u64>,
}

/// Drives a receiver with the operations the input encodes (the `op` codes of its module).
pub fn receiver_ops(data: &[u8]) {
    let mut inp = Input::new(data);
    let channel = if inp.bool() {
        Channel::Log
    } else {
        Channel::State
    };
    let backoff_initial = ms(1 + u64::from(inp.u8()));
    let limits = ReceiverLimits {
        max_bytes: 64 + usize::from(inp.u16() % 8192),
        max_messages: 1 + inp.below(16),
        max_message_size: 1 + usize::from(inp.u16() % 4096),
        max_fragments: 1 + u32::from(inp.u8() % 64),
        grace: ms(u64::from(inp.u8())),
        backoff_initial,
        backoff_max: backoff_initial * (1 + u32::from(inp.u8() % 8)),
        // The harness's well-formed fragments may be as small as it likes.
        min_chunk: 1,
    };
    let mut run = Run {
        r: Receiver::new(channel),
        budget: Budget::default(),
        limits,
        rng: Rng::new(inp.u64()),
        now: Instant::now(),
        next_id: 1,
        tainted: BTreeSet::new(),
    };
    let mut ops = 0;
    while !inp.is_empty() && ops < 4096 {
        ops += 1;
        let before = run.r.next();
        let mut out = Vec::new();
        run.step(&mut inp, &mut out);
        run.check(before, &out);
    }
    run.r.clear(&mut run.budget);
    assert_eq!(run.budget, Budget::default(), "clear left budget behind");
}

impl Run {
    fn step(&mut self, inp: &mut Input<'_>, out: &mut Vec<Delivery>) {
        let base = self.r.next().unwrap_or(1);
        let l = self.limits;
        match inp.u8() % op::COUNT {
            op::FRAGMENT => {
                let seq = near(inp, base).clamp(1, MAX_SEQ);
                let total_len = u32::from(inp.u16()) % (l.max_message_size as u32 + 64);
                let count = 1 + u32::from(inp.u8()) % (l.max_fragments + 2);
                let index = u32::from(inp.u8()) % count;
                let Some((offset, len)) = fragment_span(total_len, count, index) else {
                    return;
                };
                let data: Vec<u8> = (offset..offset + len).map(|o| pattern(seq, o)).collect();
                let f = Fragment {
                    channel: Channel::State,
                    seq,
                    index,
                    count,
                    total_len,
                    data: Bytes::from(data),
                };
                self.r.on_fragment(self.now, f, &mut self.budget, &l, out);
            }
            op::RAW_FRAGMENT => {
                let seq = near(inp, base);
                let f = Fragment {
                    channel: Channel::Log,
                    seq,
                    index: u32::from(inp.u8()),
                    count: u32::from(inp.u8()),
                    total_len: u32::from(inp.u16()),
                    data: Bytes::copy_from_slice(inp.bytes(4096)),
                };
                self.tainted.insert(seq);
                self.r.on_fragment(self.now, f, &mut self.budget, &l, out);
            }
            op::LAST_SEQ => {
                let last = near(inp, base);
                self.r.on_last_seq(self.now, last, &l);
            }
            op::ADVANCE => self.now += ms(u64::from(inp.u16())),
            op::ASK => {
                let ask = self.r.poll_ask(self.now);
                if let Some(ask) = ask {
                    assert!(self.r.in_flight().is_none());
                    match ask {
                        Ask::Snapshot { after } => {
                            assert_eq!(after, self.r.next().map(|n| n - 1), "{ask:?}");
                        }
                        Ask::Range { from, to } => {
                            assert!(from >= 1 && from <= to, "{ask:?}");
                            assert_eq!(Some(from), self.r.next().or(Some(1)), "{ask:?}");
                        }
                    }
                    let id = RequestId(self.next_id);
                    self.next_id += 1;
                    self.r.start(id);
                    assert_eq!(self.r.in_flight(), Some(id));
                    assert_eq!(self.r.poll_ask(self.now), None, "asked twice");
                }
            }
            op::FAIL => self.r.fail(self.now, &mut self.rng, &l),
            op::LOG => {
                let first_retained = near(inp, base);
                let last_seq = near(inp, base);
                let mut seq = near(inp, base);
                let mut messages = Vec::new();
                for _ in 0..inp.below(8) {
                    self.tainted.insert(seq);
                    messages.push((seq, Bytes::copy_from_slice(inp.bytes(64))));
                    seq = seq.saturating_add(u64::from(inp.u8() % 3));
                }
                let answer = LogRange {
                    incarnation: 1,
                    first_retained,
                    last_seq,
                    messages,
                };
                let (rng, budget) = (&mut self.rng, &mut self.budget);
                self.r.apply_log(self.now, answer, budget, &l, rng, out);
            }
            op::SNAPSHOT => {
                let seq = near(inp, base);
                let (rng, budget) = (&mut self.rng, &mut self.budget);
                self.r.apply_snapshot(self.now, seq, budget, &l, rng, out);
            }
            op::JUMP => {
                let seq = near(inp, base);
                self.r.jump_to(self.now, seq, &mut self.budget, &l, out);
            }
            op::SYNC => {
                let seq = near(inp, base);
                self.r.sync_to(seq, &mut self.budget);
            }
            _ => {
                self.r.clear(&mut self.budget);
                assert_eq!(self.budget, Budget::default(), "clear left budget behind");
            }
        }
    }

    fn check(&self, before: Option<u64>, out: &[Delivery]) {
        let l = &self.limits;
        assert!(
            self.budget.bytes <= l.max_bytes,
            "{} cached bytes over {}",
            self.budget.bytes,
            l.max_bytes
        );
        assert!(self.budget.messages <= l.max_messages, "{:?}", self.budget);
        assert!(self.r.known_last() >= self.r.delivered());
        assert!(self.r.next().is_none_or(|n| (1..=MAX_SEQ + 1).contains(&n)));
        if self.r.poll_ask(self.now).is_some() {
            assert!(self.r.in_flight().is_none());
        }
        let mut expect: Option<u64> = None;
        for d in out {
            let (from, to) = match d {
                Delivery::Message { seq, payload } => {
                    if !self.tainted.contains(seq) {
                        let want: Vec<u8> = (0..payload.len()).map(|o| pattern(*seq, o)).collect();
                        assert_eq!(&payload[..], &want[..], "message {seq} corrupted");
                        assert!(payload.len() <= l.max_message_size);
                    }
                    (*seq, *seq)
                }
                Delivery::Gap { from, to } => {
                    assert!(from <= to, "{d:?}");
                    (*from, *to)
                }
            };
            match expect {
                Some(e) => assert_eq!(from, e, "deliveries out of order: {out:?}"),
                None => {
                    if let Some(b) = before {
                        assert!(from >= b, "redelivery from {from} (next was {b}): {out:?}");
                    }
                }
            }
            expect = Some(to + 1);
        }
        if let Some(e) = expect {
            assert_eq!(self.r.next(), Some(e), "next() after {out:?}");
        }
    }
}

/// Seed streams: in-order delivery, reordering, loss and recovery, a snapshot, a join jump.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let head = |channel: u8| {
        Script::new()
            .u8(channel)
            .u8(50) // backoff
            .u16(4096) // max_bytes
            .u8(7) // max_messages
            .u16(2000) // max_message_size
            .u8(15) // max_fragments
            .u8(10) // grace
            .u8(3) // backoff_max factor
            .u64(7) // rng seed
    };
    // A fragment: op, seq selector (offset from next-3), total_len, count-1, index.
    let frag = |s: Script, rel: u8, total: u16, count: u8, index: u8| {
        s.u8(op::FRAGMENT)
            .u8(rel + 3)
            .u16(total)
            .u8(count - 1)
            .u8(index)
    };
    let mut out = Vec::new();
    // State channel: message 1 in three fragments out of order, then message 2 whole.
    let s = head(0);
    let s = frag(s, 0, 300, 3, 2);
    let s = frag(s, 0, 300, 3, 0);
    let s = frag(s, 0, 300, 3, 1);
    let s = frag(s, 0, 10, 1, 0);
    out.push(("state_in_order".to_owned(), s.finish()));
    // Log channel: a heartbeat, a gap, time passes, an ask, a log answer, a failure.
    let s = head(1).u8(op::LAST_SEQ).u8(3 + 2);
    let s = frag(s, 2, 40, 1, 0);
    let s = s.u8(op::ADVANCE).u16(100).u8(op::ASK);
    let s = s
        .u8(op::LOG)
        .u8(3) // first_retained = next
        .u8(6) // last_seq
        .u8(3) // first message
        .u8(2) // two messages
        .bytes(b"one")
        .u8(1)
        .bytes(b"two")
        .u8(1);
    let s = s.u8(op::FAIL).u8(op::ADVANCE).u16(500).u8(op::ASK);
    out.push(("log_recovery".to_owned(), s.finish()));
    // State channel joined mid-stream: a later fragment, a snapshot, a jump, a sync, a clear.
    let s = head(0);
    let s = frag(s, 5, 20, 2, 1);
    let s = s
        .u8(op::ADVANCE)
        .u16(20)
        .u8(op::ASK)
        .u8(op::SNAPSHOT)
        .u8(3 + 4);
    let s = frag(s, 1, 20, 2, 0);
    let s = s
        .u8(op::JUMP)
        .u8(3 + 3)
        .u8(op::SYNC)
        .u8(3 + 1)
        .u8(op::CLEAR);
    out.push(("state_snapshot_jump".to_owned(), s.finish()));
    // A cache overflow: many later messages while the first is missing.
    let mut s = head(1).u8(op::LAST_SEQ).u8(3);
    for rel in 1..12 {
        s = frag(s, rel, 600, 1, 0);
    }
    let s = s
        .u8(op::RAW_FRAGMENT)
        .u8(3)
        .u8(0)
        .u8(1)
        .u16(3)
        .bytes(b"abc");
    out.push(("cache_full".to_owned(), s.finish()));
    out
}
