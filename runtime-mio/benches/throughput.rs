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
//! - Hub mode (1000 B): the same three mio members, their group traffic relayed by a hub
//!   (`spawn_hub`, on a thread of its own) over TCP instead of multicast; the ratio is to
//!   the multicast run just before it. The sender publishes while its link's window of
//!   unacknowledged bytes has room (`Driver::hub_stats`), as an application must not to
//!   lose messages for good.
//! - A receiver stops counting once every message was delivered or reported lost (`Gap`).
//! - Latency, multicast and hub: two members driven by one loop on one thread; one publishes
//!   a small message, the other publishes an answer as soon as it is delivered, and the time
//!   from the first publish to the answer's delivery is one round trip (two deliveries).
//!   `BENCH *_latency_us_p50` and `_p99` are those round trips in microseconds.

use hybridcast_mio::core::hub::LinkConfig;
use hybridcast_mio::core::{Config, Event};
use hybridcast_mio::{
    Driver, HubServerConfig, NodeHandle, RuntimeConfig, Transport, socket, spawn, spawn_hub,
};
use mio::{Events, Poll, Token};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

const BATCH: usize = 64;
/// The hub link's window of unacknowledged bytes (`LinkConfig::max_unacked_bytes`).
const HUB_WINDOW: usize = 4 << 20;

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

/// How the members' group traffic travels.
#[derive(Clone, Copy)]
enum Net {
    /// Multicast to this group on loopback.
    Multicast(SocketAddrV4),
    /// Through the hub at this address.
    Hub(SocketAddr),
}

fn member_config(net: Net, name: &str) -> RuntimeConfig {
    let mut c = RuntimeConfig::new("bench", name);
    match net {
        Net::Multicast(group) => c.group = group,
        Net::Hub(hub) => {
            let mut link = LinkConfig::new(hub);
            link.max_unacked_bytes = HUB_WINDOW;
            c.transport = Transport::Hub(link);
        }
    }
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
    net: Net,
    name: String,
    count: usize,
) -> std::thread::JoinHandle<(u64, Duration)> {
    match runtime {
        Runtime::Mio => mio_counter(spawn(member_config(net, &name)).expect("receiver"), count),
        Runtime::Smol => smol_counter(net, name, count),
    }
}

fn smol_counter(net: Net, name: String, count: usize) -> std::thread::JoinHandle<(u64, Duration)> {
    let node =
        smol::block_on(hybridcast_smol::Node::start(member_config(net, &name))).expect("receiver");
    std::thread::spawn(move || {
        smol::block_on(async {
            let events = node.events();
            let (mut n, mut lost, mut first, mut last) = (0u64, 0u64, None, Instant::now());
            while n + lost < count as u64 {
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
                    Some(Event::Gap { range, .. }) => lost += range.count() as u64,
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
        let (mut n, mut lost, mut first, mut last) = (0u64, 0u64, None, Instant::now());
        while n + lost < count as u64 {
            match h.events().recv_timeout(Duration::from_secs(30)) {
                Ok(Event::Message { .. }) => {
                    first.get_or_insert_with(Instant::now);
                    last = Instant::now();
                    n += 1;
                }
                Ok(Event::Gap { range, .. }) => lost += range.count() as u64,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        let took = first.map_or(Duration::ZERO, |f| last - f);
        h.shutdown();
        (n, took)
    })
}

fn hybridcast(runtime: Runtime, net: Net, size: usize, count: usize) -> Rate {
    // Receivers start counting at once; they see nothing until the sender publishes.
    let counters: Vec<_> = (0..2)
        .map(|i| counter(runtime, net, format!("rx{i}"), count))
        .collect();
    let mut poll = Poll::new().expect("poll");
    let mut tx = Driver::new(member_config(net, "tx")).expect("sender");
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
        // Through a hub, publish only while the link's window has room for the batch: past
        // it the link drops datagrams, and recovery brings back only what the sender still
        // retains (the rest is reported as a gap). Multicast has no such window.
        if let Some(link) = tx.hub_stats() {
            if link.unacked_bytes + BATCH * (size + 64) > HUB_WINDOW / 2 {
                run(&mut tx, Duration::from_micros(200));
                continue;
            }
        }
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

/// A hub on loopback for the bench, on a thread of its own.
fn hub() -> hybridcast_mio::HubHandle {
    let mut cfg = HubServerConfig::new("bench");
    cfg.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    spawn_hub(cfg).expect("hub")
}

/// Two members on one thread's loop: each of `rounds` times, `ping` publishes a small
/// message and `pong` answers it as soon as it is delivered. Returns the round trips (from
/// the publish to the delivery of the answer), sorted.
fn latency(net: Net, rounds: usize) -> Vec<Duration> {
    let mut poll = Poll::new().expect("poll");
    let mut ping = Driver::new(member_config(net, "ping")).expect("ping");
    let mut pong = Driver::new(member_config(net, "pong")).expect("pong");
    ping.register(poll.registry(), Token(0)).expect("register");
    pong.register(poll.registry(), Token(ping.token_count()))
        .expect("register");
    let mut events = Events::with_capacity(1024);
    // One turn of the loop: waits for either member's socket or timer (at most `wait`),
    // handles it, and returns the messages delivered to ping and to pong.
    let mut turn = |ping: &mut Driver, pong: &mut Driver, wait: Duration| {
        let now = Instant::now();
        let due = [ping.poll_timeout(), pong.poll_timeout(), Some(now + wait)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now);
        poll.poll(&mut events, Some(due.saturating_duration_since(now)))
            .expect("poll");
        let now = Instant::now();
        for e in events.iter() {
            if ping.owns(e.token()) {
                ping.handle_event(e, now);
            } else {
                pong.handle_event(e, now);
            }
        }
        for d in [&mut *ping, &mut *pong] {
            if d.poll_timeout().is_some_and(|t| t <= now) {
                d.handle_timeout(now);
            }
        }
        let messages = |d: &mut Driver| {
            let mut got = Vec::new();
            while let Some(e) = d.poll_event() {
                if let Event::Message { topic, payload, .. } = e {
                    got.push((topic, payload));
                }
            }
            got
        };
        (messages(ping), messages(pong))
    };
    // Until both joined and each sees the other.
    let ready = |d: &Driver| d.node().is_joined() && d.stats().members_alive == 1;
    let end = Instant::now() + Duration::from_secs(30);
    while !(ready(&ping) && ready(&pong)) {
        assert!(Instant::now() < end, "the latency pair did not meet");
        turn(&mut ping, &mut pong, Duration::from_millis(10));
    }
    let mut trips = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let body = bytes::Bytes::from(format!("{round:08}"));
        let start = Instant::now();
        ping.publish("ping", body.clone()).expect("publish");
        let end = start + Duration::from_secs(10);
        'round: while Instant::now() < end {
            let (to_ping, to_pong) = turn(&mut ping, &mut pong, Duration::from_millis(10));
            for (topic, payload) in to_pong {
                if topic == "ping" {
                    pong.publish("pong", payload).expect("publish");
                }
            }
            for (topic, payload) in to_ping {
                if topic == "pong" && payload == body {
                    trips.push(start.elapsed());
                    break 'round;
                }
            }
        }
    }
    ping.leave();
    pong.leave();
    trips.sort_unstable();
    trips
}

/// The `q` quantile of sorted `trips`, in microseconds.
fn quantile_us(trips: &[Duration], q: f64) -> f64 {
    if trips.is_empty() {
        return f64::NAN;
    }
    let i = ((trips.len() - 1) as f64 * q).round() as usize;
    trips[i].as_secs_f64() * 1e6
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
        let h = hybridcast(Runtime::Mio, Net::Multicast(group()), size, count);
        let a = hybridcast(Runtime::Smol, Net::Multicast(group()), size, count);
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
        if size == 1000 {
            let server = hub();
            let b = hybridcast(Runtime::Mio, Net::Hub(server.addr()), size, count);
            server.shutdown();
            println!(
                "{size:>5} B: through a hub {:>9.0} messages/s {:>7.1} MB/s per receiver ({} of {count} delivered)",
                b.per_s, b.mb_per_s, b.delivered
            );
            println!("BENCH hub_{size}b_per_s {:.0} messages/s", b.per_s);
            println!("BENCH hub_{size}b_mb_per_s {:.1} MB/s", b.mb_per_s);
            println!(
                "BENCH hub_vs_multicast_{size}b {:.2} ratio",
                b.per_s / h.per_s.max(1.0)
            );
        }
    }
    let rounds = if quick { 200 } else { 2000 };
    let multicast = latency(Net::Multicast(group()), rounds);
    let server = hub();
    let through_hub = latency(Net::Hub(server.addr()), rounds);
    server.shutdown();
    let (m50, h50) = (quantile_us(&multicast, 0.5), quantile_us(&through_hub, 0.5));
    println!(
        "round trip of a small message (publish, delivery, answer, delivery; {rounds} rounds): \
         multicast p50 {m50:.0} us p99 {:.0} us ({} answered), hub p50 {h50:.0} us p99 {:.0} us ({} answered)",
        quantile_us(&multicast, 0.99),
        multicast.len(),
        quantile_us(&through_hub, 0.99),
        through_hub.len()
    );
    println!("BENCH multicast_latency_us_p50 {m50:.0} us");
    println!(
        "BENCH multicast_latency_us_p99 {:.0} us",
        quantile_us(&multicast, 0.99)
    );
    println!("BENCH hub_latency_us_p50 {h50:.0} us");
    println!(
        "BENCH hub_latency_us_p99 {:.0} us",
        quantile_us(&through_hub, 0.99)
    );
    println!("BENCH hub_vs_multicast_latency {:.2} ratio", h50 / m50);
}
