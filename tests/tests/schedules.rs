//! quickcheck-generated fault schedules: ops, network parameters, crashes, partitions and
//! pauses, each run to quiescence and checked. A failure prints its seed;
//! `HYBRIDCAST_SIM_SEED=<seed> cargo test -p hybridcast-tests --test schedules` replays it.

use hybridcast_tests::sim::check_schedules;

#[test]
fn generated_fault_schedules_settle_with_every_invariant_held() {
    check_schedules(200);
}
