//! Receiving side of one (member, channel): the patent's receiver, without threads.
//!
//! At any time the receiver expects message `next`. Fragments of `next` and of later messages
//! are assembled in `slots`, a cache bounded in bytes and messages per sender (the current
//! message has priority: later messages are evicted, highest sequence first, to make room for
//! lower ones). A complete message at `next` is delivered at once, then any complete successors.
//!
//! Loss is inferred when a fragment or a heartbeat shows a sequence `>= next` while `next` is not
//! complete ("behind"). A gap only counts after `reorder_grace`; then the owner is asked for ONE
//! point-to-point recovery request, and no other is asked for until that one is answered or
//! failed (failures back off exponentially with jitter). The answer is applied with
//! [`Receiver::apply_snapshot`] (state channel) or [`Receiver::apply_log`] (log channel), and
//! cached later messages drain after it.

use crate::exchange::LogRange;
use crate::ids::{Channel, RequestId, Rng};
use crate::wire::{Fragment, MAX_SEQ, fragment_span};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Limits and timings a receiver works with (copied from the config).
#[derive(Debug, Clone, Copy)]
pub struct ReceiverLimits {
    /// Bytes of undelivered messages held per sender (`max_cached_bytes_per_sender`, lowered by
    /// the node so that all senders together stay within `max_cached_bytes_total`).
    pub max_bytes: usize,
    /// Undelivered messages held per sender (`max_cached_messages_per_sender`).
    pub max_messages: usize,
    /// Largest message accepted (`max_message_size`).
    pub max_message_size: usize,
    /// Most fragments per message (`max_fragments_per_message`).
    pub max_fragments: u32,
    /// Smallest fragment accepted of a message sent in several ([`MIN_CHUNK`] in the node).
    pub min_chunk: usize,
    /// Time a gap may stay open before it counts as loss (`reorder_grace`).
    pub grace: Duration,
    /// First retry delay (`recovery_backoff_initial`).
    pub backoff_initial: Duration,
    /// Largest retry delay (`recovery_backoff_max`).
    pub backoff_max: Duration,
}

/// Cache use of one remote member, shared by its channels' receivers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Bytes held by undelivered messages (buffers and copies).
    pub bytes: usize,
    /// Undelivered messages held.
    pub messages: usize,
}

/// What a receiver hands its owner, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Message `seq`, complete.
    Message {
        /// Its sequence number.
        seq: u64,
        /// Its bytes.
        payload: Bytes,
    },
    /// Messages `from..=to` are lost for good (log channel only).
    Gap {
        /// First lost sequence.
        from: u64,
        /// Last lost sequence.
        to: u64,
    },
}

/// What happened to one fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FragmentOutcome {
    /// New data, kept or delivered.
    Accepted,
    /// Already received or already delivered.
    Duplicate,
    /// Above the message size or fragment count limit.
    TooLarge,
    /// Contradicts earlier fragments of the same message.
    Inconsistent,
    /// No room in the per-sender cache, even after evicting later messages.
    CacheFull,
}

/// What the receiver wants fetched point-to-point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// The sender's current state and the sequence it reflects.
    Snapshot {
        /// Last sequence delivered here, if synchronised.
        after: Option<u64>,
    },
    /// Retained messages `from..=to`.
    Range {
        /// First missing sequence.
        from: u64,
        /// Highest sequence known sent.
        to: u64,
    },
}

/// Smallest fragment (all but the last) of a multi-fragment message that any sender produces:
/// a sender splits `T` bytes into `C = ceil(T / P)` fragments of `ceil(T / C)` bytes, which is
/// more than `P / 2` when `C > 1`, and its payload room `P` is at least the room of a
/// [`MIN_DATAGRAM`](crate::config::MIN_DATAGRAM) datagram with an authentication trailer (175
/// bytes). Smaller fragments are refused as inconsistent, so per-fragment overhead stays a
/// small fraction of the data it carries.
pub const MIN_CHUNK: usize = (crate::config::MIN_DATAGRAM
    - crate::wire::AUTH_TRAILER_LEN
    - crate::wire::HEADER_LEN
    - crate::wire::FRAGMENTS_PREFIX_LEN
    - crate::wire::FRAGMENT_OVERHEAD)
    / 2
    + 1;

/// Memory a cached message costs beyond its data: its entry in the slot map (key, slot and a
/// share of the B-tree node) and the allocator's header for its buffer. Counted in the budget
/// so that `max_bytes` bounds real memory, not just payload bytes.
pub const SLOT_OVERHEAD: usize = 128;

/// Memory a message still being assembled costs beyond [`SLOT_OVERHEAD`] and its buffers: the
/// boxed [`Assembly`] and its allocation header.
const ASSEMBLY_OVERHEAD: usize = 128;

/// Memory an out-of-order fragment kept as a copy costs beyond its data: its map entry (index
/// and `Bytes` handle, a share of the B-tree node) and the copy's allocation header.
const LATER_OVERHEAD: usize = 80;

/// Messages up to this size get their whole buffer at the first fragment; larger ones grow with
/// the data actually received.
const EAGER_BYTES: usize = 64 * 1024;

/// A message being assembled from several fragments. Memory follows the data received: the
/// buffer is sized for the whole message only when the message is small ([`EAGER_BYTES`]) or a
/// quarter of it is held, so a forged first fragment of a huge message costs little.
/// Fragments arriving in order are appended; out-of-order ones are kept as copies until the
/// buffer has its full size, and from then on every fragment is copied once to its offset, with
/// a bit per fragment to spot duplicates.
#[derive(Debug)]
struct Assembly {
    total_len: u32,
    count: u32,
    received: u32,
    /// Data bytes received so far.
    held: usize,
    buf: Vec<u8>,
    mode: Mode,
}

#[derive(Debug)]
enum Mode {
    /// Fragments `0..next` were appended in order; `later` holds copies of fragments beyond.
    Append {
        next: u32,
        later: BTreeMap<u32, Bytes>,
        later_bytes: usize,
    },
    /// `buf` has the message's full length; `have` has one bit per fragment placed.
    Scatter { have: Vec<u64> },
}

#[derive(Debug)]
enum Slot {
    Complete(Bytes),
    Partial(Box<Assembly>),
}

impl Slot {
    /// Bytes of memory this slot holds, data and structure.
    fn cost(&self) -> usize {
        SLOT_OVERHEAD
            + match self {
                Slot::Complete(b) => b.len(),
                Slot::Partial(a) => ASSEMBLY_OVERHEAD + a.footprint(),
            }
    }
}

/// Receiver state for one (member, channel).
#[derive(Debug)]
pub struct Receiver {
    channel: Channel,
    /// Next sequence to deliver; `None` until synchronised (state channel seen mid-stream).
    next: Option<u64>,
    slots: BTreeMap<u64, Slot>,
    /// Highest sequence known to have been sent completely: a heartbeat's last sequence, or one
    /// below a fragment's (the sender finishes a message before starting the next), so the
    /// fragments of the message being assembled are never taken as a sign of loss.
    known_last: u64,
    /// When to ask for recovery (set while behind and nothing is in flight).
    attempt_at: Option<Instant>,
    in_flight: Option<RequestId>,
    failures: u32,
}

impl Receiver {
    /// A receiver that has seen nothing of `channel` yet.
    pub fn new(channel: Channel) -> Self {
        Receiver {
            channel,
            next: None,
            slots: BTreeMap::new(),
            known_last: 0,
            attempt_at: None,
            in_flight: None,
            failures: 0,
        }
    }

    /// Next sequence expected, if synchronised.
    pub fn next(&self) -> Option<u64> {
        self.next
    }

    /// Last sequence delivered (0 if none or unsynchronised).
    pub fn delivered(&self) -> u64 {
        self.next.map_or(0, |n| n - 1)
    }

    /// Highest sequence known to have been sent completely (at least what was delivered).
    pub fn known_last(&self) -> u64 {
        self.known_last.max(self.delivered())
    }

    /// The recovery request in flight, if any.
    pub fn in_flight(&self) -> Option<RequestId> {
        self.in_flight
    }

    /// True if a message the sender has sent is missing here.
    pub fn is_behind(&self) -> bool {
        match self.next {
            None => self.known_last > 0,
            Some(n) => self.known_last >= n,
        }
    }

    /// Earliest time this receiver needs [`Receiver::poll_ask`] called.
    pub fn deadline(&self) -> Option<Instant> {
        self.attempt_at
    }

    /// Handles one fragment; complete messages are appended to `out` in order.
    pub fn on_fragment(
        &mut self,
        now: Instant,
        f: Fragment,
        budget: &mut Budget,
        limits: &ReceiverLimits,
        out: &mut Vec<Delivery>,
    ) -> FragmentOutcome {
        if f.total_len as usize > limits.max_message_size || f.count > limits.max_fragments {
            return FragmentOutcome::TooLarge;
        }
        if f.seq == 0
            || f.seq > MAX_SEQ
            || fragment_span(f.total_len, f.count, f.index)
                .is_none_or(|(_, len)| len != f.data.len())
            || (f.count > 1 && (f.total_len as usize).div_ceil(f.count as usize) < limits.min_chunk)
        {
            return FragmentOutcome::Inconsistent;
        }
        self.known_last = self.known_last.max(f.seq - 1);
        if self.next.is_none() && (self.channel == Channel::Log || f.seq == 1) {
            // First contact: the log channel starts wherever the sender is; the state channel
            // only when it sees the very first message (otherwise it needs a snapshot).
            self.next = Some(f.seq);
        }
        let before = out.len();
        let outcome = self.insert(f, budget, limits, out);
        let progressed = self.drain(budget, out) || out.len() > before;
        self.update_behind(now, progressed, limits);
        outcome
    }

    fn insert(
        &mut self,
        f: Fragment,
        budget: &mut Budget,
        limits: &ReceiverLimits,
        out: &mut Vec<Delivery>,
    ) -> FragmentOutcome {
        match self.next {
            Some(n) if f.seq < n => return FragmentOutcome::Duplicate,
            // Fast path: the expected message, whole in one fragment, nothing cached before it.
            Some(n) if f.seq == n && f.count == 1 && self.slots.is_empty() => {
                out.push(Delivery::Message {
                    seq: n,
                    payload: f.data,
                });
                self.next = Some(n + 1);
                return FragmentOutcome::Accepted;
            }
            _ => {}
        }
        let seq = f.seq;
        if let Some(slot) = self.slots.get_mut(&seq) {
            let before = slot.cost();
            let outcome = match slot {
                Slot::Complete(_) => return FragmentOutcome::Duplicate,
                Slot::Partial(a) => {
                    if a.total_len != f.total_len || a.count != f.count {
                        return FragmentOutcome::Inconsistent;
                    }
                    if !a.insert(f.index, &f.data) {
                        return FragmentOutcome::Duplicate;
                    }
                    if a.received == a.count {
                        let mut done = std::mem::take(&mut a.buf);
                        // A complete message is counted by its length: hold no more than that.
                        done.shrink_to_fit();
                        *slot = Slot::Complete(Bytes::from(done));
                    }
                    FragmentOutcome::Accepted
                }
            };
            budget.bytes = budget.bytes + slot.cost() - before;
            return self.enforce(seq, outcome, budget, limits);
        }
        while budget.messages + 1 > limits.max_messages {
            // Make room by evicting the latest message after this one, if any.
            let Some((&last, _)) = self.slots.range(seq + 1..).next_back() else {
                return FragmentOutcome::CacheFull;
            };
            self.evict(last, budget);
        }
        let slot = if f.count == 1 {
            // Cached data is copied out of the datagram so the budget counts what is really held.
            Slot::Complete(Bytes::copy_from_slice(&f.data))
        } else {
            let mut a = Assembly {
                total_len: f.total_len,
                count: f.count,
                received: 0,
                held: 0,
                buf: Vec::new(),
                mode: Mode::Append {
                    next: 0,
                    later: BTreeMap::new(),
                    later_bytes: 0,
                },
            };
            a.insert(f.index, &f.data);
            Slot::Partial(Box::new(a))
        };
        budget.bytes += slot.cost();
        budget.messages += 1;
        self.slots.insert(seq, slot);
        self.enforce(seq, FragmentOutcome::Accepted, budget, limits)
    }

    /// Keeps the cache within `max_bytes` by evicting the highest sequences first (lower ones
    /// always win); reports `CacheFull` if message `seq` itself had to go.
    fn enforce(
        &mut self,
        seq: u64,
        outcome: FragmentOutcome,
        budget: &mut Budget,
        limits: &ReceiverLimits,
    ) -> FragmentOutcome {
        while budget.bytes > limits.max_bytes {
            let Some((&last, _)) = self.slots.last_key_value() else {
                break;
            };
            self.evict(last, budget);
            if last == seq {
                return FragmentOutcome::CacheFull;
            }
        }
        outcome
    }

    fn evict(&mut self, seq: u64, budget: &mut Budget) {
        if let Some(evicted) = self.slots.remove(&seq) {
            budget.bytes -= evicted.cost();
            budget.messages -= 1;
        }
    }

    /// Delivers complete messages at `next`; true if any was delivered.
    fn drain(&mut self, budget: &mut Budget, out: &mut Vec<Delivery>) -> bool {
        let Some(mut next) = self.next else {
            return false;
        };
        let mut progressed = false;
        while let Some(entry) = self.slots.first_entry() {
            if *entry.key() != next || !matches!(entry.get(), Slot::Complete(_)) {
                break;
            }
            let slot = entry.remove();
            budget.bytes -= slot.cost();
            budget.messages -= 1;
            if let Slot::Complete(payload) = slot {
                out.push(Delivery::Message { seq: next, payload });
            }
            next += 1;
            progressed = true;
        }
        self.next = Some(next);
        progressed
    }

    /// Records the sender's last sequence from a heartbeat.
    pub fn on_last_seq(&mut self, now: Instant, last: u64, limits: &ReceiverLimits) {
        if last > MAX_SEQ {
            return;
        }
        if self.next.is_none() && (self.channel == Channel::Log || last == 0) {
            self.next = Some(last + 1);
        }
        self.known_last = self.known_last.max(last);
        self.update_behind(now, false, limits);
    }

    fn update_behind(&mut self, now: Instant, progressed: bool, limits: &ReceiverLimits) {
        if !self.is_behind() {
            self.attempt_at = None;
            self.failures = 0;
        } else if self.in_flight.is_none()
            && (self.attempt_at.is_none() || (progressed && self.failures == 0))
        {
            // Reordering is not loss: the gap counts only after the grace period, and progress
            // restarts that period.
            self.attempt_at = Some(now + limits.grace);
        }
    }

    /// If a recovery request is due at `now`, what to ask for. Call [`Receiver::start`] with the
    /// request's id if it is sent.
    pub fn poll_ask(&self, now: Instant) -> Option<Ask> {
        if self.in_flight.is_some() || !self.is_behind() || self.attempt_at.is_none_or(|t| t > now)
        {
            return None;
        }
        Some(match (self.channel, self.next) {
            (Channel::State, next) => Ask::Snapshot {
                after: next.map(|n| n - 1),
            },
            (Channel::Log, next) => Ask::Range {
                from: next.unwrap_or(1),
                to: self.known_last,
            },
        })
    }

    /// Marks request `id` as the one recovery in flight.
    pub fn start(&mut self, id: RequestId) {
        self.in_flight = Some(id);
        self.attempt_at = None;
    }

    /// The request in flight failed or timed out: retry later with backoff and jitter.
    pub fn fail(&mut self, now: Instant, rng: &mut Rng, limits: &ReceiverLimits) {
        self.in_flight = None;
        self.failures = self.failures.saturating_add(1);
        if self.is_behind() {
            let shift = (self.failures - 1).min(20);
            let base = limits
                .backoff_initial
                .saturating_mul(1 << shift)
                .min(limits.backoff_max);
            // Equal jitter: half fixed, half random, so retries of many receivers spread out.
            let jitter = base.mul_f64(0.5 * rng.unit());
            self.attempt_at = Some(now + base / 2 + jitter);
        }
    }

    /// Applies a state snapshot reflecting everything up to `seq`. Returns false if it is older
    /// than what was already delivered (the caller must then ignore its contents).
    ///
    /// The owner's answer is authoritative for what it had sent when it answered; only later
    /// messages already cached here still count as evidence of loss. If the receiver is still
    /// behind after the answer, the attempt counts as failed and the next one backs off, so
    /// neither a forged sequence nor a contradicting answer can make it poll.
    pub fn apply_snapshot(
        &mut self,
        now: Instant,
        seq: u64,
        budget: &mut Budget,
        limits: &ReceiverLimits,
        rng: &mut Rng,
        out: &mut Vec<Delivery>,
    ) -> bool {
        self.in_flight = None;
        let applied = self.sync_to(seq, budget);
        self.drain(budget, out);
        self.release_implausible(seq, budget, limits);
        self.known_last = seq
            .min(MAX_SEQ)
            .max(self.delivered())
            .max(self.cached_evidence());
        self.settle_after_answer(now, rng, limits);
        applied
    }

    /// Drops cached messages further beyond the owner's last sequence `newest` than a whole cache
    /// of messages: no real sender outruns its own answer by that much, so they were forged (or
    /// belong to another process with the same identity).
    fn release_implausible(&mut self, newest: u64, budget: &mut Budget, limits: &ReceiverLimits) {
        let horizon = newest.saturating_add(limits.max_messages as u64);
        while let Some((&seq, _)) = self.slots.last_key_value() {
            if seq <= horizon {
                break;
            }
            if let Some(slot) = self.slots.remove(&seq) {
                budget.bytes -= slot.cost();
                budget.messages -= 1;
            }
        }
    }

    /// Highest sequence that cached later messages prove was sent (one below the lowest cached
    /// message beyond `next`).
    fn cached_evidence(&self) -> u64 {
        let from = self.next.map_or(0, |n| n + 1);
        self.slots
            .range(from..)
            .next()
            .map_or(0, |(seq, _)| seq - 1)
    }

    /// After an owner's answer: in sync resets the failures; still behind backs off.
    fn settle_after_answer(&mut self, now: Instant, rng: &mut Rng, limits: &ReceiverLimits) {
        if self.is_behind() {
            self.fail(now, rng, limits);
        } else {
            self.failures = 0;
            self.attempt_at = None;
        }
    }

    /// Takes position `seq` from a third party (a join's state dump): like a snapshot, but what
    /// is known of the sender's own progress is kept. Returns false if already past `seq`.
    pub fn jump_to(
        &mut self,
        now: Instant,
        seq: u64,
        budget: &mut Budget,
        limits: &ReceiverLimits,
        out: &mut Vec<Delivery>,
    ) -> bool {
        let applied = self.sync_to(seq, budget);
        self.drain(budget, out);
        self.update_behind(now, true, limits);
        applied
    }

    /// Declares messages up to `seq` delivered by other means (a snapshot or a join dump).
    /// Returns false if the receiver was already past `seq`.
    pub fn sync_to(&mut self, seq: u64, budget: &mut Budget) -> bool {
        if seq > MAX_SEQ || self.next.is_some_and(|n| n > seq + 1) {
            return false;
        }
        self.next = Some(seq + 1);
        self.known_last = self.known_last.max(seq);
        self.release_below(seq + 1, budget);
        true
    }

    fn release_below(&mut self, seq: u64, budget: &mut Budget) {
        while let Some(entry) = self.slots.first_entry() {
            if *entry.key() >= seq {
                break;
            }
            let slot = entry.remove();
            budget.bytes -= slot.cost();
            budget.messages -= 1;
        }
    }

    /// Applies a log range answer. Messages continue from the cache where it has them and from
    /// the answer otherwise; a run of sequences that neither has and that left the sender's
    /// retention (below `first_retained`) is reported once as a [`Delivery::Gap`]. The answer's
    /// `last_seq` is authoritative for what the sender has sent. Returns true if the receiver
    /// advanced; if it did not, the attempt counts as failed and backs off.
    pub fn apply_log(
        &mut self,
        now: Instant,
        answer: LogRange,
        budget: &mut Budget,
        limits: &ReceiverLimits,
        rng: &mut Rng,
        out: &mut Vec<Delivery>,
    ) -> bool {
        self.in_flight = None;
        let first = answer.first_retained.min(MAX_SEQ + 1);
        let newest = answer
            .last_seq
            .max(answer.messages.last().map_or(0, |m| m.0))
            .min(MAX_SEQ);
        let mut next = self.next.unwrap_or(first.max(1));
        let start = next;
        let mut msgs = answer.messages.into_iter().peekable();
        loop {
            if matches!(self.slots.get(&next), Some(Slot::Complete(_))) {
                if let Some(slot) = self.slots.remove(&next) {
                    budget.bytes -= slot.cost();
                    budget.messages -= 1;
                    if let Slot::Complete(payload) = slot {
                        out.push(Delivery::Message { seq: next, payload });
                    }
                }
                next += 1;
                continue;
            }
            while msgs.next_if(|(s, _)| *s < next).is_some() {}
            // Nothing above MAX_SEQ is taken, whatever the answer lists: `next` stays within
            // MAX_SEQ + 1 like everywhere else.
            if let Some((seq, payload)) = msgs.next_if(|(s, _)| *s == next && *s <= MAX_SEQ) {
                out.push(Delivery::Message { seq, payload });
                next += 1;
                continue;
            }
            if next < first && next <= newest {
                // Lost for good, up to whichever comes first: the retained messages, the next
                // complete message in the cache, or the end of what the sender has sent.
                let cached = self
                    .slots
                    .range(next + 1..)
                    .find(|(_, s)| matches!(s, Slot::Complete(_)))
                    .map_or(u64::MAX, |(k, _)| *k);
                let end = first.min(newest + 1).min(cached);
                out.push(Delivery::Gap {
                    from: next,
                    to: end - 1,
                });
                next = end;
                continue;
            }
            break;
        }
        self.next = Some(next);
        self.release_below(next, budget);
        self.drain(budget, out);
        self.release_implausible(newest, budget, limits);
        self.known_last = newest.max(self.delivered()).max(self.cached_evidence());
        let advanced = self.next.is_some_and(|n| n > start);
        if advanced && newest >= self.next.unwrap_or(0) {
            // The sender has more than one answer carried (answers are capped): ask again now.
            self.failures = 0;
            self.attempt_at = Some(now);
        } else {
            self.settle_after_answer(now, rng, limits);
        }
        advanced
    }

    /// Drops all cached data (member gone); returns the budget it held.
    pub fn clear(&mut self, budget: &mut Budget) {
        for slot in std::mem::take(&mut self.slots).into_values() {
            budget.bytes -= slot.cost();
            budget.messages -= 1;
        }
        self.attempt_at = None;
        self.in_flight = None;
    }
}

/// Buffer size for a message of `total` bytes of which `held` are in: all of it if the message
/// is small or a quarter of it is held, otherwise four times what is held.
fn target_capacity(total: usize, held: usize) -> usize {
    if total <= EAGER_BYTES || held.saturating_mul(4) >= total {
        total
    } else {
        held.saturating_mul(4)
    }
}

impl Assembly {
    /// Bytes this assembly holds in memory beyond its own box: buffers and copies.
    fn footprint(&self) -> usize {
        self.buf.capacity()
            + match &self.mode {
                Mode::Append {
                    later, later_bytes, ..
                } => later_bytes + later.len() * LATER_OVERHEAD,
                Mode::Scatter { have } => have.len() * 8,
            }
    }

    /// Adds fragment `index` (whose length the caller checked); false if it was already there.
    fn insert(&mut self, index: u32, data: &[u8]) -> bool {
        let total = self.total_len as usize;
        if let Mode::Append {
            next,
            later,
            later_bytes,
        } = &mut self.mode
        {
            if index < *next || later.contains_key(&index) {
                return false;
            }
            self.held += data.len();
            self.received += 1;
            if index == *next {
                let want = self.buf.len() + data.len();
                if self.buf.capacity() < want {
                    let target = target_capacity(total, self.held);
                    self.buf.reserve_exact(target.max(want) - self.buf.len());
                }
                self.buf.extend_from_slice(data);
                *next += 1;
                while let Some(d) = later.remove(next) {
                    *later_bytes -= d.len();
                    self.buf.extend_from_slice(&d);
                    *next += 1;
                }
                return true;
            }
            if target_capacity(total, self.held) < total {
                // Copied so the cache holds exactly the bytes it counts, not whole datagrams.
                *later_bytes += data.len();
                later.insert(index, Bytes::copy_from_slice(data));
                return true;
            }
            // Enough of the message is here: give it its full buffer and place pieces at offsets.
            let appended = *next;
            let pending = std::mem::take(later);
            let mut have = vec![0u64; (self.count as usize).div_ceil(64)];
            for i in 0..appended as usize {
                have[i / 64] |= 1 << (i % 64);
            }
            // Exactly the message's size: the cache budget counts this allocation.
            self.buf.reserve_exact(total - self.buf.len());
            self.buf.resize(total, 0);
            self.mode = Mode::Scatter { have };
            for (i, d) in pending {
                self.place(i, &d);
            }
            self.place(index, data);
            return true;
        }
        if self.place(index, data) {
            self.held += data.len();
            self.received += 1;
            true
        } else {
            false
        }
    }

    /// Scatter mode: copies fragment `index` to its offset; false if already placed.
    fn place(&mut self, index: u32, data: &[u8]) -> bool {
        let Mode::Scatter { have } = &mut self.mode else {
            return false;
        };
        let (word, bit) = (index as usize / 64, 1u64 << (index % 64));
        let Some((offset, len)) = fragment_span(self.total_len, self.count, index) else {
            return false;
        };
        if len != data.len() || have.get(word).is_none_or(|w| w & bit != 0) {
            return false;
        }
        have[word] |= bit;
        self.buf[offset..offset + len].copy_from_slice(data);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `receiver_ops` fuzz target: a log answer listing messages above `MAX_SEQ`
    /// walked `next` past `MAX_SEQ + 1`.
    #[test]
    fn log_answer_never_moves_next_past_max_seq() {
        let t = Instant::now();
        let l = limits();
        let mut r = Receiver::new(Channel::Log);
        let (mut b, mut out, mut rng) = (Budget::default(), Vec::new(), Rng::new(1));
        let top = MAX_SEQ + 1;
        let msgs = (top..top + 3)
            .map(|s| (s, Bytes::from_static(b"x")))
            .collect();
        r.apply_log(
            t,
            log_answer(top, MAX_SEQ, msgs),
            &mut b,
            &l,
            &mut rng,
            &mut out,
        );
        assert!(r.next().is_some_and(|n| n <= MAX_SEQ + 1), "{:?}", r.next());
        assert!(out.is_empty(), "{out:?}");
    }
    use crate::wire::fragment_count;

    fn limits() -> ReceiverLimits {
        ReceiverLimits {
            max_bytes: 1 << 20,
            max_messages: 64,
            max_message_size: 1 << 20,
            max_fragments: 1 << 16,
            min_chunk: 1,
            grace: Duration::from_millis(50),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
        }
    }

    fn log_answer(first_retained: u64, last_seq: u64, messages: Vec<(u64, Bytes)>) -> LogRange {
        LogRange {
            incarnation: 1,
            first_retained,
            last_seq,
            messages,
        }
    }

    #[test]
    fn gap_stops_at_cached_messages_and_answers_are_authoritative() {
        let t = Instant::now();
        let l = limits();
        let mut r = Receiver::new(Channel::Log);
        let mut b = Budget::default();
        let mut out = Vec::new();
        r.on_last_seq(t, 4, &l); // next = 5
        for seq in 6..=7 {
            for f in frags(seq, b"cached", 40) {
                r.on_fragment(t, f, &mut b, &l, &mut out);
            }
        }
        // A forged far-future sequence makes the receiver think it is far behind.
        r.on_last_seq(t, 1 << 40, &l);
        r.start(RequestId(1));
        // The sender retains 9..=10 only and has sent up to 10.
        r.apply_log(
            t,
            log_answer(9, 10, vec![(9, Bytes::new()), (10, Bytes::new())]),
            &mut b,
            &l,
            &mut Rng::new(1),
            &mut out,
        );
        let seqs: Vec<String> = out
            .iter()
            .map(|d| match d {
                Delivery::Message { seq, .. } => seq.to_string(),
                Delivery::Gap { from, to } => format!("gap {from}..={to}"),
            })
            .collect();
        assert_eq!(seqs, ["gap 5..=5", "6", "7", "gap 8..=8", "9", "10"]);
        assert_eq!(b, Budget::default());
        assert!(
            !r.is_behind(),
            "the answer's last_seq replaces the forged one"
        );
        assert!(r.deadline().is_none(), "nothing more to ask");
    }

    fn frags(seq: u64, msg: &[u8], payload: usize) -> Vec<Fragment> {
        let count = fragment_count(msg.len(), payload) as u32;
        (0..count)
            .map(|i| {
                let (off, len) = fragment_span(msg.len() as u32, count, i).expect("span");
                Fragment {
                    channel: Channel::Log,
                    seq,
                    index: i,
                    count,
                    total_len: msg.len() as u32,
                    data: Bytes::copy_from_slice(&msg[off..off + len]),
                }
            })
            .collect()
    }

    #[test]
    fn in_order_and_reordered_fragments_deliver_once() {
        let t = Instant::now();
        let mut r = Receiver::new(Channel::Log);
        let mut b = Budget::default();
        let mut out = Vec::new();
        let m1: Vec<u8> = (0..250u8).collect();
        let m2 = vec![9u8; 30];
        let mut all = frags(1, &m1, 40);
        all.extend(frags(2, &m2, 40));
        all.reverse();
        r.on_last_seq(t, 0, &limits());
        for f in all.iter().cloned() {
            r.on_fragment(t, f, &mut b, &limits(), &mut out);
        }
        for f in all {
            assert_eq!(
                r.on_fragment(t, f, &mut b, &limits(), &mut out),
                FragmentOutcome::Duplicate
            );
        }
        assert_eq!(
            out,
            vec![
                Delivery::Message {
                    seq: 1,
                    payload: Bytes::from(m1)
                },
                Delivery::Message {
                    seq: 2,
                    payload: Bytes::from(m2)
                },
            ]
        );
        assert_eq!(b, Budget::default(), "cache empty after delivery");
    }

    #[test]
    fn a_large_message_still_arriving_is_not_loss() {
        let t = Instant::now();
        let l = limits();
        let mut r = Receiver::new(Channel::Log);
        let mut b = Budget::default();
        let mut out = Vec::new();
        r.on_last_seq(t, 0, &l);
        let msg = vec![7u8; 200 * 40];
        // 200 fragments over 400 ms, far longer than the 50 ms grace.
        for (i, f) in frags(1, &msg, 40).into_iter().enumerate() {
            let now = t + Duration::from_millis(2 * i as u64);
            r.on_fragment(now, f, &mut b, &l, &mut out);
            assert!(!r.is_behind() && r.deadline().is_none(), "fragment {i}");
        }
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn gap_waits_for_grace_then_asks_once() {
        let t = Instant::now();
        let l = limits();
        let mut r = Receiver::new(Channel::Log);
        let mut b = Budget::default();
        let mut out = Vec::new();
        r.on_last_seq(t, 0, &l);
        assert_eq!(r.next(), Some(1));
        for f in frags(2, b"later", 40) {
            r.on_fragment(t, f, &mut b, &l, &mut out);
        }
        assert!(out.is_empty() && r.is_behind());
        assert_eq!(r.poll_ask(t), None, "grace period");
        let due = r.deadline().expect("deadline");
        assert_eq!(r.poll_ask(due), Some(Ask::Range { from: 1, to: 1 }));
        r.start(RequestId(1));
        assert_eq!(
            r.poll_ask(due + Duration::from_secs(9)),
            None,
            "one in flight"
        );
        let mut rng = Rng::new(1);
        r.fail(due, &mut rng, &l);
        let retry = r.deadline().expect("retry");
        assert!(
            retry >= due + Duration::from_millis(50) && retry <= due + Duration::from_millis(100)
        );
        r.start(RequestId(2));
        r.apply_log(
            retry,
            log_answer(1, 2, vec![(1, Bytes::from_static(b"first"))]),
            &mut b,
            &l,
            &mut rng,
            &mut out,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(r.next(), Some(3));
        assert!(!r.is_behind() && r.deadline().is_none());
    }

    #[test]
    fn log_gap_beyond_retention() {
        let t = Instant::now();
        let l = limits();
        let mut r = Receiver::new(Channel::Log);
        let mut b = Budget::default();
        let mut out = Vec::new();
        r.on_last_seq(t, 0, &l);
        r.on_last_seq(t, 10, &l);
        r.start(RequestId(1));
        r.apply_log(
            t,
            log_answer(
                8,
                10,
                vec![(8, Bytes::new()), (9, Bytes::new()), (10, Bytes::new())],
            ),
            &mut b,
            &l,
            &mut Rng::new(1),
            &mut out,
        );
        assert_eq!(out[0], Delivery::Gap { from: 1, to: 7 });
        assert_eq!(out.len(), 4);
        assert_eq!(r.next(), Some(11));
    }

    #[test]
    fn state_channel_needs_a_snapshot_mid_stream() {
        let t = Instant::now();
        let l = limits();
        let mut r = Receiver::new(Channel::State);
        let mut b = Budget::default();
        let mut out = Vec::new();
        r.on_last_seq(t, 4, &l);
        assert_eq!(r.next(), None);
        assert!(r.is_behind());
        for f in frags(6, b"six", 40) {
            r.on_fragment(t, f, &mut b, &l, &mut out);
        }
        assert_eq!(r.poll_ask(t + l.grace), Some(Ask::Snapshot { after: None }));
        r.start(RequestId(5));
        assert!(r.apply_snapshot(t, 5, &mut b, &l, &mut Rng::new(1), &mut out));
        assert_eq!(
            out,
            vec![Delivery::Message {
                seq: 6,
                payload: Bytes::from_static(b"six")
            }]
        );
        assert!(!r.is_behind());
        assert!(!r.sync_to(3, &mut b), "older snapshot is refused");
    }

    #[test]
    fn cache_is_bounded_and_prefers_the_current_message() {
        let t = Instant::now();
        let mut l = limits();
        l.max_messages = 3;
        let mut r = Receiver::new(Channel::Log);
        let mut b = Budget::default();
        let mut out = Vec::new();
        r.on_last_seq(t, 0, &l);
        for seq in 2..=4 {
            r.on_fragment(t, frags(seq, b"x", 40).remove(0), &mut b, &l, &mut out);
        }
        assert_eq!(
            r.on_fragment(t, frags(5, b"x", 40).remove(0), &mut b, &l, &mut out),
            FragmentOutcome::CacheFull
        );
        // The current message evicts the latest cached one.
        r.on_fragment(t, frags(1, b"x", 40).remove(0), &mut b, &l, &mut out);
        assert_eq!(out.len(), 3, "1, 2, 3 delivered; 4 was evicted");
        assert!(b.messages <= 3);
    }
}
