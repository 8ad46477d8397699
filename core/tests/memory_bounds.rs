//! Counted cache and session sizes against the memory really held: hostile input fills receivers, the
//! process's resident memory is read before and after, and the counted bytes must bound the
//! growth within a small factor. Measuring tests take a lock so they never run together, and
//! everything measured is kept alive until the end so no scenario reuses another's memory.

use bytes::Bytes;
use hybridcast_core::Channel;
use hybridcast_core::channel::receiver::{
    Budget, FragmentOutcome, MIN_CHUNK, Receiver, ReceiverLimits,
};
use hybridcast_core::wire::Fragment;
use std::time::{Duration, Instant};

/// Resident memory of this process in bytes (Linux `/proc/self/statm`, 4 KiB pages).
fn resident() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

/// Held by each test that measures resident memory, so no other one allocates meanwhile.
static MEASURING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Allowance for measurement noise (allocator arenas, page granularity).
const SLACK: usize = 2 << 20;

fn limits(max_bytes: usize) -> ReceiverLimits {
    ReceiverLimits {
        max_bytes,
        max_messages: 1024,
        max_message_size: 16 << 20,
        max_fragments: 65_536,
        min_chunk: MIN_CHUNK,
        grace: Duration::from_millis(50),
        backoff_initial: Duration::from_millis(250),
        backoff_max: Duration::from_secs(8),
    }
}

static DATA: [u8; 4096] = [7; 4096];

fn fragment(seq: u64, index: u32, count: u32, total_len: u32, len: usize) -> Fragment {
    Fragment {
        channel: Channel::Log,
        seq,
        index,
        count,
        total_len,
        data: Bytes::from_static(&DATA[..len]),
    }
}

/// Feeds `frags` to fresh receivers of `max_bytes` each, `per_receiver` fragments apiece; they
/// stay behind (message 1 never comes). Returns the receivers (to keep them alive), the bytes
/// they counted and the resident memory they added.
fn hold(
    max_bytes: usize,
    per_receiver: usize,
    frags: impl Iterator<Item = Fragment>,
) -> (Vec<Receiver>, usize, usize) {
    let t = Instant::now();
    let l = limits(max_bytes);
    let start = resident();
    let mut receivers = Vec::new();
    let mut counted = 0;
    let mut frags = frags.peekable();
    while frags.peek().is_some() {
        let mut r = Receiver::new(Channel::Log);
        let mut b = Budget::default();
        let mut out = Vec::new();
        r.on_last_seq(t, 0, &l);
        for f in frags.by_ref().take(per_receiver) {
            r.on_fragment(t, f, &mut b, &l, &mut out);
        }
        assert!(out.is_empty(), "nothing deliverable");
        assert!(b.bytes <= max_bytes, "the cap holds");
        counted += b.bytes;
        receivers.push(r);
    }
    let grown = resident().saturating_sub(start);
    (receivers, counted, grown)
}

/// Messages of `count` fragments of `chunk` bytes, too large for an eager buffer: every
/// fragment but index 0, up to just under a quarter of each, so they stay separate copies.
fn out_of_order(chunk: usize, count: u32) -> impl Iterator<Item = Fragment> {
    let total = count * chunk as u32;
    (2..=1025u64)
        .flat_map(move |seq| (1..count / 4).map(move |i| fragment(seq, i, count, total, chunk)))
}

#[test]
fn counted_cache_bytes_bound_resident_memory() {
    let _alone = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    if !std::path::Path::new("/proc/self/statm").exists() {
        return;
    }
    let max_bytes = 8 << 20;
    let mut kept = Vec::new();
    let cases: Vec<(&str, usize, Box<dyn Iterator<Item = Fragment>>)> = vec![
        // 2-byte fragments of 65 536-fragment messages (refused now: no sender splits so fine).
        (
            "2-byte out-of-order fragments",
            usize::MAX,
            Box::new(out_of_order(2, 65_536)),
        ),
        (
            "smallest out-of-order fragments",
            usize::MAX,
            Box::new(out_of_order(MIN_CHUNK, 4096)),
        ),
        // First fragments of many large messages: one appended buffer each.
        (
            "first fragments",
            usize::MAX,
            Box::new(
                (2..=1025u64).map(|seq| fragment(seq, 0, 4096, 4096 * MIN_CHUNK as u32, MIN_CHUNK)),
            ),
        ),
        // Empty and 1-byte complete messages from 64 senders, 1024 each.
        (
            "empty messages",
            1024,
            Box::new((0..64).flat_map(|_| (2..=1025u64).map(|seq| fragment(seq, 0, 1, 0, 0)))),
        ),
        (
            "1-byte messages",
            1024,
            Box::new((0..64).flat_map(|_| (2..=1025u64).map(|seq| fragment(seq, 0, 1, 1, 1)))),
        ),
    ];
    for (what, per_receiver, frags) in cases {
        let (receivers, counted, grown) = hold(max_bytes, per_receiver, frags);
        println!("{what}: counted {counted} B, resident grew {grown} B");
        assert!(
            grown <= 2 * counted + SLACK,
            "{what}: resident memory grew {grown} B, only {counted} B counted"
        );
        kept.push(receivers);
    }
}

#[test]
fn fragments_smaller_than_any_sender_makes_are_refused() {
    let t = Instant::now();
    let l = limits(1 << 20);
    let mut r = Receiver::new(Channel::Log);
    let mut b = Budget::default();
    let mut out = Vec::new();
    let small = (MIN_CHUNK - 1) as u32;
    // Two fragments of MIN_CHUNK - 1 bytes: no sender's payload is that small.
    let f = fragment(2, 0, 2, 2 * small, small as usize);
    assert_eq!(
        r.on_fragment(t, f, &mut b, &l, &mut out),
        FragmentOutcome::Inconsistent
    );
    // The smallest split a sender makes: 176 bytes at a 175-byte payload, two fragments.
    let f = fragment(2, 1, 2, 2 * MIN_CHUNK as u32 - 1, MIN_CHUNK - 1);
    assert_eq!(
        r.on_fragment(t, f, &mut b, &l, &mut out),
        FragmentOutcome::Accepted
    );
    // A message in one fragment may be as small as it likes.
    let f = fragment(3, 0, 1, 1, 1);
    assert_eq!(
        r.on_fragment(t, f, &mut b, &l, &mut out),
        FragmentOutcome::Accepted
    );
}

#[test]
fn counted_session_bytes_bound_resident_memory() {
    let _alone = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    use hybridcast_core::SessionState;
    use hybridcast_core::session::{Change, Value};
    if !std::path::Path::new("/proc/self/statm").exists() {
        return;
    }
    let mut kept = Vec::new();
    // Many states of one-entry pools, and many states of one pool of small entries.
    for (what, pools, per_pool) in [("one-entry pools", 50, 1), ("one pool", 1, 400)] {
        let start = resident();
        let mut counted = 0;
        let mut states = Vec::new();
        for _ in 0..500 {
            let mut s = SessionState::default();
            for p in 0..pools {
                for k in 0..per_pool {
                    s.apply(Change::Put {
                        pool: format!("p{p}"),
                        key: format!("k{k}"),
                        value: Value::raw(vec![1u8; 4]),
                    });
                }
            }
            counted += s.bytes();
            states.push(s);
        }
        let grown = resident().saturating_sub(start);
        println!("{what}: counted {counted} B, resident grew {grown} B");
        assert!(
            grown <= 2 * counted + SLACK,
            "{what}: resident memory grew {grown} B, only {counted} B counted"
        );
        kept.push(states);
    }
}

/// Putting one key over and over without committing used to keep every change and every value
/// it replaced; uncommitted changes are now kept per (pool, key).
#[test]
fn uncommitted_puts_of_one_key_do_not_accumulate() {
    use hybridcast_core::session::Value;
    use hybridcast_core::{Config, Identity, Node};
    if !std::path::Path::new("/proc/self/statm").exists() {
        return;
    }
    let _alone = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let t = Instant::now();
    let addr = "127.0.0.1:7001".parse().expect("addr");
    let mut n = Node::new(
        Config::default(),
        Identity::new("prod", "web/1", 1, addr),
        t,
        1,
    )
    .expect("node");
    let id = n.session_create(t).expect("create").id;
    let start = resident();
    for i in 0..100_000u32 {
        let value = Value::raw(vec![i as u8; 1024]);
        n.session_put(t, id, "global", "draft", value).expect("put");
        if i % 2 == 0 {
            n.session_put(t, id, "global", "other", Value::raw("x"))
                .expect("put");
            n.session_remove(t, id, "global", "other").expect("remove");
        }
        assert_eq!(
            n.session_remove(t, id, "global", &format!("missing-{i}")),
            Ok(None)
        );
    }
    let grown = resident().saturating_sub(start);
    println!("100 000 puts of one 1 KiB value: resident grew {grown} B");
    assert!(grown <= SLACK, "{grown} B held for one uncommitted key");
    let info = n.session(id).expect("served");
    assert!(info.uncommitted);
    n.session_commit(t, id).expect("commit");
    let info = n.session(id).expect("served");
    assert_eq!(
        (info.version, info.uncommitted),
        (1, false),
        "one commit, one version"
    );
    let state = n.session_state(id).expect("served");
    assert_eq!(state.len(), 1);
    assert_eq!(
        state.get("global", "draft"),
        Some(&Value::raw(vec![159u8; 1024]))
    );
}
