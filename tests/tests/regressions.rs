//! Fault schedules that once failed, replayed exactly by seed. Each names what it found.
//!
//! A seed stands for its schedule only while `Schedule::generate` draws the same way: when the
//! generator changes, re-find the failure or turn it into a scenario test.

use hybridcast_tests::sim::{Schedule, ScheduleOutcome};

fn replay(seed: u64) -> ScheduleOutcome {
    let o = Schedule::generate(seed).run();
    assert!(
        o.settled.converged && o.settled.violations.is_empty(),
        "seed {seed}: {:#?}",
        o.settled.violations
    );
    o
}

/// core: a slow owner's queue dropped a `MemberRestarted` event, and the new incarnation's
/// messages could not be told from the old one's (`Event::Message` had no incarnation).
#[test]
fn deliveries_name_their_incarnation_when_the_restart_event_was_dropped() {
    let o = replay(5484295377125782787);
    assert!(o.messages > 0);
}

/// checker: a slow owner drained a departure late, so a tombstone forgotten meanwhile looked
/// like a silent skip; departures are now dated by the earliest they can have happened.
#[test]
fn a_tombstone_forgotten_while_events_were_held_is_not_a_skip() {
    replay(10224528027424167812);
}

/// core: a member paused while still joining was failed and forgotten; waking, its heartbeats
/// still said *joining*, so a peer took its log from 1 again and delivered a message twice.
/// A node now claims *joining* only during its first `tombstone_ttl`.
#[test]
fn a_member_paused_while_joining_is_not_delivered_twice() {
    replay(3239553284838952896);
}
