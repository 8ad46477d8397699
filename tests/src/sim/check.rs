//! The invariant checker: sees every publish and every event of every node.
//!
//! Per receiving process and sending member it follows the sender's incarnation (from
//! `MemberJoined` / `MemberRestarted` / departures) and the next log sequence it must deliver,
//! and records a violation when:
//!
//! - a message is delivered that its sender never published at that sequence and incarnation,
//!   or with other contents;
//! - a message is delivered twice or out of order, or a sequence is skipped without a `Gap`
//!   that starts exactly where delivery stopped;
//! - a `Gap` covers messages that were never published, or messages its sender still retains
//!   (the sender is up and has published fewer than its retention holds);
//! - a node reports a name conflict (the simulator never starts two processes with one name);
//! - at quiescence ([`Checker::check_complete`]), a live receiver that admitted a live sender
//!   before it published a message has neither delivered it nor reported it missing (whether
//!   after its last delivery or before its first).
//!
//! The simulator adds its own violations (bounds, requests in flight, busy loops, divergence).

use bytes::Bytes;
use hybridcast_core::{Channel, Config, Event, MemberKey};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// What one receiving process delivered from one sender incarnation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// The sender incarnation being followed.
    pub incarnation: u64,
    /// First sequence delivered or reported missing.
    pub first: Option<u64>,
    /// Next sequence expected.
    pub next: Option<u64>,
    /// Messages delivered.
    pub messages: u64,
    /// Messages reported missing through `Gap`.
    pub missing: u64,
    admitted_at: Duration,
    departed_at: Option<Duration>,
    /// After a long absence the member may have been forgotten and readmitted from scratch,
    /// so the next delivery may start anywhere at or above `next`.
    may_restart: bool,
}

#[derive(Debug, Clone)]
struct Publication {
    topic: String,
    payload: Bytes,
    at: Duration,
}

#[derive(Debug, Clone, Default)]
struct SenderLog {
    up: bool,
    messages: BTreeMap<u64, Publication>,
    bytes: usize,
}

/// Invariants over all events of a run; see the module docs.
#[derive(Debug, Default)]
pub struct Checker {
    retention_messages: usize,
    retention_bytes: usize,
    tombstone_ttl: Duration,
    senders: BTreeMap<(MemberKey, u64), SenderLog>,
    receivers: BTreeMap<(usize, u64), BTreeMap<MemberKey, Delivery>>,
    lossy: BTreeSet<(usize, u64)>,
    violations: Vec<String>,
    /// Messages delivered in all.
    pub messages: u64,
    /// `Gap` events on the log channel.
    pub gaps: u64,
    /// Messages reported missing.
    pub gap_messages: u64,
    /// `Gap` events on the state channel (its state is repaired by snapshots instead).
    pub state_gaps: u64,
    /// `MemberFailed` events.
    pub failures_reported: u64,
}

/// Most violations kept (later ones are counted in the last entry).
const KEEP: usize = 64;

impl Checker {
    /// A checker for nodes running `config`.
    pub fn new(config: &Config) -> Self {
        Checker {
            retention_messages: config.log_retention_messages,
            retention_bytes: config.log_retention_bytes,
            tombstone_ttl: config.tombstone_ttl,
            ..Checker::default()
        }
    }

    /// Violations so far.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// Records a violation.
    pub fn violation(&mut self, what: String) {
        if self.violations.len() < KEEP {
            self.violations.push(what);
        }
    }

    /// A process of `key` with `incarnation` started.
    pub fn started(&mut self, key: MemberKey, incarnation: u64) {
        self.senders.entry((key, incarnation)).or_default().up = true;
    }

    /// That process crashed or left: what it did not get out is legitimately lost.
    pub fn stopped(&mut self, key: MemberKey, incarnation: u64) {
        if let Some(s) = self.senders.get_mut(&(key, incarnation)) {
            s.up = false;
        }
    }

    /// `key` (at `incarnation`) published `payload` as log sequence `seq`.
    pub fn published(
        &mut self,
        key: MemberKey,
        incarnation: u64,
        seq: u64,
        topic: &str,
        payload: Bytes,
        at: Duration,
    ) {
        let s = self.senders.entry((key, incarnation)).or_default();
        s.bytes += payload.len() + topic.len() + 16;
        let p = Publication {
            topic: topic.to_owned(),
            payload,
            at,
        };
        if s.messages.insert(seq, p).is_some() {
            self.violation(format!("{key:?}/{incarnation} published seq {seq} twice"));
        }
    }

    /// What process `life` of slot `node` delivered from `member` so far.
    pub fn delivery(&self, node: usize, life: u64, member: MemberKey) -> Option<&Delivery> {
        self.receivers.get(&(node, life))?.get(&member)
    }

    /// One event of process `life` of slot `node`, produced and drained at `at`.
    pub fn event(&mut self, node: usize, life: u64, at: Duration, e: &Event) {
        self.event_within(node, life, at, at, e);
    }

    /// One event drained at `at` that the node may have produced as early as `earliest` (its
    /// owner was not draining events meanwhile).
    pub fn event_within(
        &mut self,
        node: usize,
        life: u64,
        earliest: Duration,
        at: Duration,
        e: &Event,
    ) {
        let ttl = self.tombstone_ttl;
        let tracks = self.receivers.entry((node, life)).or_default();
        let fresh = |incarnation| Delivery {
            incarnation,
            admitted_at: at,
            ..Delivery::default()
        };
        match e {
            Event::MemberJoined { peer, .. } => {
                let t = tracks
                    .entry(peer.key)
                    .or_insert_with(|| fresh(peer.incarnation));
                if t.incarnation != peer.incarnation {
                    *t = fresh(peer.incarnation);
                } else if let Some(left) = t.departed_at.take() {
                    // Readmission resumes where delivery stopped, unless the tombstone may
                    // have been forgotten meanwhile (`left` is the earliest the departure
                    // can have happened, so this errs towards allowing it).
                    if at.saturating_sub(left) >= ttl {
                        t.may_restart = true;
                        t.admitted_at = at;
                    }
                } else if self.lossy.contains(&(node, life)) {
                    // Admitted again with no departure seen: the news of the departure was
                    // among the events dropped, and the tombstone may have been forgotten
                    // since (found in hub mode, schedule seed 5334007790013770559).
                    t.may_restart = true;
                    t.admitted_at = at;
                }
            }
            Event::MemberRestarted { peer, .. } => {
                tracks.insert(peer.key, fresh(peer.incarnation));
            }
            Event::MemberFailed { peer } | Event::MemberLeft { peer } => {
                if matches!(e, Event::MemberFailed { .. }) {
                    self.failures_reported += 1;
                }
                if let Some(t) = tracks.get_mut(&peer.key) {
                    if t.incarnation == peer.incarnation {
                        t.departed_at = Some(earliest);
                    }
                }
            }
            Event::NameConflict { name, .. } => {
                self.violation(format!("node {node} reports a name conflict on {name}"));
            }
            Event::Message {
                member,
                incarnation,
                seq,
                topic,
                payload,
            } => {
                self.messages += 1;
                let inc = *incarnation;
                let (expected, may_restart) = self.follow(node, life, at, *member, inc, *seq);
                if let Some(t) = self.track(node, life, *member) {
                    t.messages += 1;
                    t.first.get_or_insert(*seq);
                    t.next = Some(seq + 1);
                    t.may_restart = false;
                }
                match expected {
                    Some(n) if *seq == n => {}
                    Some(n) if may_restart && *seq > n => {}
                    Some(n) => {
                        let msg = format!(
                            "node {node} delivered {member:?}/{inc} #{seq}, expected #{n} \
                             (duplicate, reordered or skipped without a gap)"
                        );
                        self.violation(msg);
                    }
                    None => {}
                }
                let published = self
                    .senders
                    .get(&(*member, inc))
                    .and_then(|s| s.messages.get(seq));
                match published {
                    Some(p) if p.topic == *topic && p.payload == *payload => {}
                    Some(_) => self.violation(format!(
                        "node {node} delivered {member:?}/{inc} #{seq} with other contents"
                    )),
                    None => self.violation(format!(
                        "node {node} delivered {member:?}/{inc} #{seq}, never published"
                    )),
                }
            }
            Event::Gap {
                member,
                incarnation,
                channel,
                range,
            } => {
                if *channel != Channel::Log {
                    self.state_gaps += 1;
                    return;
                }
                self.gaps += 1;
                let (start, end) = (*range.start(), *range.end());
                self.gap_messages += end.saturating_sub(start) + 1;
                let inc = *incarnation;
                let (expected, may_restart) = self.follow(node, life, at, *member, inc, start);
                if let Some(t) = self.track(node, life, *member) {
                    t.missing += end.saturating_sub(start) + 1;
                    t.first.get_or_insert(start);
                    t.next = Some(end + 1);
                    t.may_restart = false;
                }
                match expected {
                    Some(n) if start == n || (may_restart && start > n) => {}
                    Some(n) => self.violation(format!(
                        "node {node}: gap {start}..={end} of {member:?}/{inc}, expected #{n}"
                    )),
                    None => {}
                }
                if start > end {
                    self.violation(format!("node {node}: empty gap {start}..={end}"));
                }
                let sender = self.senders.get(&(*member, inc));
                let last = sender
                    .and_then(|s| s.messages.last_key_value())
                    .map_or(0, |(k, _)| *k);
                let retained_by_live_sender = sender.map(|s| {
                    let all = s.messages.len() <= self.retention_messages
                        && s.bytes <= self.retention_bytes / 2;
                    (s.up && all, s.messages.len())
                });
                if end > last {
                    self.violation(format!(
                        "node {node}: gap {start}..={end} of {member:?}/{inc}, which published \
                         only up to #{last}"
                    ));
                }
                if let Some((true, n)) = retained_by_live_sender {
                    self.violation(format!(
                        "node {node}: gap {start}..={end} of {member:?}/{inc}, which is up and \
                         retains all {n} messages it published"
                    ));
                }
            }
            _ => {}
        }
    }

    /// Process `life` of slot `node` dropped membership events (its owner fell too far
    /// behind): from now on a delivery may be the first news of an admission, a restart or a
    /// readmission, and completeness is not judged for it.
    pub fn events_dropped(&mut self, node: usize, life: u64) {
        self.lossy.insert((node, life));
    }

    fn track(&mut self, node: usize, life: u64, member: MemberKey) -> Option<&mut Delivery> {
        self.receivers.get_mut(&(node, life))?.get_mut(&member)
    }

    /// Finds (or, after lost membership events, makes) the track a delivery of `member` at
    /// `incarnation` at sequence `seq` belongs to; returns its expected next sequence and
    /// whether it may restart anywhere.
    fn follow(
        &mut self,
        node: usize,
        life: u64,
        at: Duration,
        member: MemberKey,
        incarnation: u64,
        seq: u64,
    ) -> (Option<u64>, bool) {
        let lossy = self.lossy.contains(&(node, life));
        let tracks = self.receivers.entry((node, life)).or_default();
        let fresh = Delivery {
            incarnation,
            admitted_at: at,
            ..Delivery::default()
        };
        let mut problems = Vec::new();
        let t = match tracks.get_mut(&member) {
            None => {
                if !lossy {
                    problems.push(format!(
                        "node {node} delivered {member:?}/{incarnation} #{seq} before admitting it"
                    ));
                }
                tracks.entry(member).or_insert(fresh)
            }
            Some(t) if t.incarnation < incarnation => {
                if !lossy {
                    problems.push(format!(
                        "node {node} delivered {member:?}/{incarnation} #{seq} while following \
                         incarnation {} (no restart reported)",
                        t.incarnation
                    ));
                }
                *t = fresh;
                t
            }
            Some(t) => t,
        };
        if t.incarnation > incarnation {
            problems.push(format!(
                "node {node} delivered {member:?}/{incarnation} #{seq} after incarnation {}",
                t.incarnation
            ));
        }
        if t.departed_at.is_some() {
            if lossy {
                t.departed_at = None;
                t.may_restart = true;
            } else {
                problems.push(format!(
                    "node {node} delivered {member:?}/{incarnation} #{seq} after it departed"
                ));
            }
        }
        let out = (t.next, t.may_restart);
        for p in problems {
            self.violation(p);
        }
        out
    }

    /// Completeness at quiescence, over the live processes `(slot, life)`: every message a live
    /// sender published after a live receiver admitted it (and never lost it since) was
    /// delivered or reported missing.
    pub fn check_complete(&mut self, live: &[(usize, u64)]) {
        let mut found = Vec::new();
        for &(node, life) in live {
            if self.lossy.contains(&(node, life)) {
                continue;
            }
            let Some(tracks) = self.receivers.get(&(node, life)) else {
                continue;
            };
            for (member, t) in tracks {
                if t.departed_at.is_some() {
                    continue;
                }
                let Some(s) = self.senders.get(&(*member, t.incarnation)) else {
                    continue;
                };
                if !s.up {
                    continue;
                }
                // Owed: published after the admission, and neither delivered nor reported
                // missing — beyond the last delivery, or before the first one (a receiver
                // placed too far ahead skipped it silently).
                let (first, next) = (t.first.unwrap_or(u64::MAX), t.next.unwrap_or(0));
                let owed = s
                    .messages
                    .iter()
                    .filter(|(_, p)| p.at > t.admitted_at)
                    .map(|(seq, _)| *seq)
                    .find(|&seq| seq >= next || seq < first);
                if let Some(seq) = owed {
                    found.push(format!(
                        "node {node} never delivered {member:?}/{} #{seq} (delivered up to {:?})",
                        t.incarnation,
                        t.next.map(|n| n - 1)
                    ));
                }
            }
        }
        for f in found {
            self.violation(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hybridcast_core::Peer;

    const A: MemberKey = MemberKey(0xa);

    fn checker() -> Checker {
        let mut c = Checker::new(&Config {
            log_retention_messages: 4,
            ..Config::default()
        });
        c.started(A, 7);
        for seq in 1..=10 {
            let p = Bytes::from(format!("m{seq}"));
            c.published(A, 7, seq, "t", p, Duration::from_millis(100 + seq));
        }
        c.event(1, 0, Duration::ZERO, &joined(7));
        c
    }

    fn joined(incarnation: u64) -> Event {
        Event::MemberJoined {
            peer: Peer {
                key: A,
                name: "a".into(),
                incarnation,
            },
            http_addr: "127.0.0.1:1".parse().expect("addr"),
        }
    }

    fn msg(seq: u64) -> Event {
        msg_of(7, seq)
    }

    fn msg_of(incarnation: u64, seq: u64) -> Event {
        Event::Message {
            member: A,
            incarnation,
            seq,
            topic: "t".into(),
            payload: Bytes::from(format!("m{seq}")),
        }
    }

    fn gap(range: std::ops::RangeInclusive<u64>) -> Event {
        Event::Gap {
            member: A,
            incarnation: 7,
            channel: Channel::Log,
            range,
        }
    }

    fn feed(c: &mut Checker, events: &[Event]) {
        for e in events {
            c.event(1, 0, Duration::from_secs(1), e);
        }
    }

    #[test]
    fn in_order_deliveries_and_an_exact_gap_pass() {
        let mut c = checker();
        c.stopped(A, 7); // gone: its unsent messages may be reported missing
        feed(&mut c, &[msg(1), msg(2), gap(3..=5), msg(6)]);
        assert!(c.violations().is_empty(), "{:?}", c.violations());
        let d = c.delivery(1, 0, A).expect("tracked");
        assert_eq!(
            (d.first, d.next, d.messages, d.missing),
            (Some(1), Some(7), 3, 3)
        );
    }

    #[test]
    fn duplicates_reordering_and_silent_skips_are_violations() {
        for events in [
            vec![msg(1), msg(1)],
            vec![msg(2), msg(1)],
            vec![msg(1), msg(3)],
        ] {
            let mut c = checker();
            feed(&mut c, &events);
            assert_eq!(c.violations().len(), 1, "{events:?}");
        }
    }

    #[test]
    fn forged_or_altered_messages_are_violations() {
        let mut c = checker();
        let altered = Event::Message {
            member: A,
            incarnation: 7,
            seq: 1,
            topic: "t".into(),
            payload: Bytes::from_static(b"other"),
        };
        feed(&mut c, &[altered]);
        assert_eq!(c.violations().len(), 1, "{:?}", c.violations());
        let mut c = checker();
        feed(&mut c, &[msg(11)]);
        assert_eq!(
            c.violations().len(),
            1,
            "never published: {:?}",
            c.violations()
        );
    }

    #[test]
    fn gaps_must_start_where_delivery_stopped_and_cover_only_lost_messages() {
        let mut c = checker();
        c.stopped(A, 7);
        feed(&mut c, &[msg(1), gap(3..=4)]);
        assert_eq!(
            c.violations().len(),
            1,
            "misplaced gap: {:?}",
            c.violations()
        );
        let mut c = checker();
        c.stopped(A, 7);
        feed(&mut c, &[msg(1), gap(2..=12)]);
        assert_eq!(
            c.violations().len(),
            1,
            "gap past the last: {:?}",
            c.violations()
        );
    }

    #[test]
    fn a_gap_of_messages_a_live_sender_still_retains_is_a_violation() {
        let mut c = Checker::new(&Config::default());
        c.started(A, 7);
        for seq in 1..=3 {
            c.published(
                A,
                7,
                seq,
                "t",
                Bytes::from(format!("m{seq}")),
                Duration::ZERO,
            );
        }
        c.event(1, 0, Duration::ZERO, &joined(7));
        feed(&mut c, &[msg(1), gap(2..=2)]);
        assert_eq!(c.violations().len(), 1, "{:?}", c.violations());
    }

    #[test]
    fn completeness_finds_messages_never_delivered() {
        let mut c = checker();
        feed(&mut c, &[msg(1), msg(2)]);
        c.check_complete(&[(1, 0)]);
        assert_eq!(c.violations().len(), 1, "{:?}", c.violations());
        assert!(c.violations()[0].contains("#3"));
        // A departed sender owes nothing.
        let mut c = checker();
        c.stopped(A, 7);
        c.check_complete(&[(1, 0)]);
        assert!(c.violations().is_empty());
    }

    #[test]
    fn a_restart_starts_a_fresh_sequence() {
        let mut c = checker();
        c.started(A, 8);
        c.published(A, 8, 1, "t", Bytes::from_static(b"m1"), Duration::ZERO);
        feed(&mut c, &[msg(1), msg(2)]);
        let restarted = Event::MemberRestarted {
            peer: Peer {
                key: A,
                name: "a".into(),
                incarnation: 8,
            },
            old_incarnation: 7,
        };
        feed(&mut c, &[restarted, msg_of(8, 1)]);
        assert!(c.violations().is_empty(), "{:?}", c.violations());
        assert_eq!(c.delivery(1, 0, A).map(|d| d.incarnation), Some(8));
        // Back to the old incarnation: a violation.
        feed(&mut c, &[msg(3)]);
        assert!(
            c.violations()[0].contains("after incarnation 8"),
            "{:?}",
            c.violations()
        );
    }

    #[test]
    fn a_restart_learnt_only_from_a_delivery_needs_dropped_events_to_pass() {
        let setup = || {
            let mut c = checker();
            c.started(A, 8);
            c.published(A, 8, 1, "t", Bytes::from_static(b"m1"), Duration::ZERO);
            feed(&mut c, &[msg(1)]);
            c
        };
        let mut c = setup();
        feed(&mut c, &[msg_of(8, 1)]);
        assert_eq!(c.violations().len(), 1, "{:?}", c.violations());
        let mut c = setup();
        c.events_dropped(1, 0);
        feed(&mut c, &[msg_of(8, 1)]);
        assert!(c.violations().is_empty(), "{:?}", c.violations());
    }
}
