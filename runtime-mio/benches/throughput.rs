//! End-to-end throughput on loopback: one member publishes, two receive; beside a raw UDP
//! multicast baseline (plain sockets, same sizes, same run). Prints `BENCH` lines with the
//! ratio to the baseline.
//!
//!     cargo bench -p hybridcast-mio --bench throughput
//!
//! `HYBRIDCAST_BENCH_QUICK=1` sends fewer messages (a smoke run for CI).
//!
//! - Raw: one socket sends datagrams of the size as fast as it can; two sockets count what
//!   arrives (UDP may lose some) from the first to the last datagram.
//! - hybridcast: an embedded driver publishes messages of the size in batches of 64 (one
//!   tick each, so small messages share datagrams), two spawned members count deliveries;
//!   the time runs from the first publish to the last delivery, loss recovery included.
//! - The same with two smol members (`hybridcast-smol`) receiving, for the ratio of the
//!   async runtime's receive path to the mio one's.

use hybridcast_mio::core::{Config, Event};
use hybridcast_mio::{Driver, NodeHandle, RuntimeConfig, socket, spawn};
use mio::{Events, Poll, Token};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

const BATCH: usize = 64;

struct Rate {
    per_s: f64,
    mb_per_s: f64,
    delivered: u64,
}

fn raw(group: SocketAddrV4, size: usize, count: usize) -> Rate {
    let receivers: Vec<_> = (0..2)
        .map(|_| {
            let s = socket::multicast(group, Ipv4Addr::LOCALHOST, 1).expect("receiver");
            s.set_nonblocking(false).expect("blocking");
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .expect("timeout");
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                let (mut n, mut first, mut last) = (0u64, None, Instant::now());
                while let Ok((len, _)) = s.recv_from(&mut buf) {
                    if len == size {
                        first.get_or_insert_with(Instant::now);
                        last = Instant::now();
                        n += 1;
                    }
                }
                (n, first.map_or(Duration::ZERO, |f| last - f))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    let sender = socket::multicast(group, Ipv4Addr::LOCALHOST, 1).expect("sender");
    sender.set_nonblocking(false).expect("blocking");
    let payload = vec![0x5au8; size];
    for _ in 0..count {
        let _ = sender.send_to(&payload, group);
    }
    let results: Vec<(u64, Duration)> = receivers
        .into_iter()
        .map(|r| r.join().expect("receiver thread"))
        .collect();
    average(&results, size)
}

fn average(results: &[(u64, Duration)], size: usize) -> Rate {
    let per: Vec<f64> = results
        .iter()
        .map(|(n, d)| *n as f64 / d.as_secs_f64().max(1e-9))
        .collect();
    let per_s = per.iter().sum::<f64>() / per.len() as f64;
    Rate {
        per_s,
        mb_per_s: per_s * size as f64 / 1e6,
        delivered: results.iter().map(|r| r.0).sum::<u64>() / results.len() as u64,
    }
}

fn member_config(group: SocketAddrV4, name: &str) -> RuntimeConfig {
    let mut c = RuntimeConfig::new("bench", name);
    c.group = group;
    c.core = Config {
        heartbeat_interval: Duration::from_millis(100),
        ..Config::default()
    };
    c
}

/// Which runtime the receiving members run on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Runtime {
    Mio,
    Smol,
}

fn counter(
    runtime: Runtime,
    group: SocketAddrV4,
    name: String,
    count: usize,
) -> std::thread::JoinHandle<(u64, Duration)> {
    match runtime {
        Runtime::Mio => mio_counter(spawn(member_config(group, &name)).expect("receiver"), count),
        Runtime::Smol => smol_counter(group, name, count),
    }
}

fn smol_counter(
    group: SocketAddrV4,
    name: String,
    count: usize,
) -> std::thread::JoinHandle<(u64, Duration)> {
    let node = smol::block_on(hybridcast_smol::Node::start(member_config(group, &name)))
        .expect("receiver");
    std::thread::spawn(move || {
        smol::block_on(async {
            let events = node.events();
            let (mut n, mut first, mut last) = (0u64, None, Instant::now());
            while n < count as u64 {
                let next = futures_lite::future::or(events.recv(), async {
                    async_io::Timer::after(Duration::from_secs(30)).await;
                    None
                });
                match next.await {
                    Some(Event::Message { .. }) => {
                        first.get_or_insert_with(Instant::now);
                        last = Instant::now();
                        n += 1;
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            let took = first.map_or(Duration::ZERO, |f| last - f);
            node.leave().await;
            (n, took)
        })
    })
}

fn mio_counter(h: NodeHandle, count: usize) -> std::thread::JoinHandle<(u64, Duration)> {
    std::thread::spawn(move || {
        let (mut n, mut first, mut last) = (0u64, None, Instant::now());
        while n < count as u64 {
            match h.events().recv_timeout(Duration::from_secs(30)) {
                Ok(Event::Message { .. }) => {
                    first.get_or_insert_with(Instant::now);
                    last = Instant::now();
                    n += 1;
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        let took = first.map_or(Duration::ZERO, |f| last - f);
        h.shutdown();
        (n, took)
    })
}

fn hybridcast(runtime: Runtime, group: SocketAddrV4, size: usize, count: usize) -> Rate {
    // Receivers start counting at once; they see nothing until the sender publishes.
    let counters: Vec<_> = (0..2)
        .map(|i| counter(runtime, group, format!("rx{i}"), count))
        .collect();
    let mut poll = Poll::new().expect("poll");
    let mut tx = Driver::new(member_config(group, "tx")).expect("sender");
    tx.register(poll.registry(), Token(0)).expect("register");
    let mut events = Events::with_capacity(1024);
    let mut run = |tx: &mut Driver, d: Duration| {
        let end = Instant::now() + d;
        loop {
            let now = Instant::now();
            let wait = tx.poll_timeout().map_or(end, |t| t.min(end));
            poll.poll(&mut events, Some(wait.saturating_duration_since(now)))
                .expect("poll");
            let now = Instant::now();
            for e in events.iter() {
                tx.handle_event(e, now);
            }
            if tx.poll_timeout().is_some_and(|t| t <= now) {
                tx.handle_timeout(now);
            }
            while tx.poll_event().is_some() {}
            if now >= end {
                return;
            }
        }
    };
    // Let the three find each other and finish joining.
    run(&mut tx, Duration::from_millis(600));
    let payload = bytes::Bytes::from(vec![0xa5u8; size]);
    let mut sent = 0;
    while sent < count {
        for _ in 0..BATCH.min(count - sent) {
            tx.publish("bench", payload.clone()).expect("publish");
            sent += 1;
        }
        run(&mut tx, Duration::ZERO);
    }
    // Keep serving recovery requests until both receivers are done.
    while counters.iter().any(|c| !c.is_finished()) {
        run(&mut tx, Duration::from_millis(10));
    }
    let results: Vec<(u64, Duration)> = counters
        .into_iter()
        .map(|c| c.join().expect("counter thread"))
        .collect();
    tx.leave();
    average(&results, size)
}

fn main() {
    let quick = std::env::var_os("HYBRIDCAST_BENCH_QUICK").is_some();
    let count = if quick { 20_000 } else { 200_000 };
    let mut port = 47_600 + (std::process::id() % 200) as u16;
    let mut group = || {
        port += 1;
        SocketAddrV4::new(Ipv4Addr::new(239, 255, 77, 9), port)
    };
    for size in [1000usize, 100] {
        let r = raw(group(), size, count);
        let h = hybridcast(Runtime::Mio, group(), size, count);
        let a = hybridcast(Runtime::Smol, group(), size, count);
        println!(
            "{size:>5} B: raw multicast {:>9.0} datagrams/s {:>7.1} MB/s per receiver ({} of {count} arrived); \
             hybridcast {:>9.0} messages/s {:>7.1} MB/s per receiver ({} of {count} delivered)",
            r.per_s, r.mb_per_s, r.delivered, h.per_s, h.mb_per_s, h.delivered
        );
        println!(
            "BENCH raw_multicast_{size}b_per_s {:.0} datagrams/s",
            r.per_s
        );
        println!("BENCH hybridcast_{size}b_per_s {:.0} messages/s", h.per_s);
        println!("BENCH hybridcast_{size}b_mb_per_s {:.1} MB/s", h.mb_per_s);
        println!(
            "BENCH hybridcast_vs_raw_{size}b {:.2} ratio",
            h.per_s / r.per_s.max(1.0)
        );
        println!(
            "{size:>5} B: smol receivers {:>9.0} messages/s {:>7.1} MB/s per receiver ({} of {count} delivered)",
            a.per_s, a.mb_per_s, a.delivered
        );
        println!(
            "BENCH hybridcast_smol_{size}b_per_s {:.0} messages/s",
            a.per_s
        );
        println!(
            "BENCH smol_vs_mio_receivers_{size}b {:.2} ratio",
            a.per_s / h.per_s.max(1.0)
        );
    }
}
