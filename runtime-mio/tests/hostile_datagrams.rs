//! Members on real loopback multicast under a stream of hostile datagrams: forged with the
//! wrong key, untagged, replayed, truncated, oversized, and (from an admitted member, as an
//! insider with the key would send them) fragments claiming a 4 GiB message or filling the
//! receive caches. The members stay up, their caches stay within the configured bounds, every
//! refusal is counted, and they keep converging on what the legitimate members offer.

use hybridcast_mio::core::wire::{self, FragmentPacker, Header, Heartbeat};
use hybridcast_mio::core::{
    AuthConfig, Channel, ClusterId, ClusterKey, Config, Keyring, MemberKey, Stats,
};
use hybridcast_mio::{NodeHandle, RuntimeConfig, socket, spawn};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

const CLUSTER: &str = "hostile-test";

fn member(group: SocketAddrV4, name: &str, auth: Option<AuthConfig>) -> NodeHandle {
    let mut c = RuntimeConfig::new(CLUSTER, name);
    c.group = group;
    c.core = Config {
        heartbeat_interval: Duration::from_millis(100),
        request_timeout: Duration::from_millis(500),
        max_cached_bytes_per_sender: 2 << 20,
        max_cached_bytes_total: 8 << 20,
        max_message_size: 1 << 20,
        auth,
        ..Config::default()
    };
    spawn(c).expect("member starts")
}

/// Reads every member's events so none of them backs up, and reports whether all members see
/// `offer` from all of `names` and exactly the other members alive.
fn converged(members: &[NodeHandle], names: &[&str], offer: &str) -> bool {
    members.iter().all(|h| {
        while h.events().try_recv().is_ok() {}
        h.view().is_ok_and(|v| {
            let alive: Vec<&str> = v
                .members
                .iter()
                .filter(|m| m.state == "alive")
                .map(|m| m.name.as_str())
                .collect();
            v.joined
                && alive.len() == names.len() - 1
                && alive.iter().all(|a| names.contains(a))
                && v.offers.get(offer).is_some_and(|p| p.len() == names.len())
        })
    })
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < end, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stats(h: &NodeHandle) -> Stats {
    h.stats().expect("running").0
}

fn attacker(group: SocketAddrV4) -> UdpSocket {
    let s = socket::multicast(group, Ipv4Addr::LOCALHOST, 1).expect("attacker socket");
    s.set_nonblocking(false).expect("blocking");
    s.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    s
}

fn heartbeat(name: &str, incarnation: u64) -> (Header, Heartbeat) {
    let header = Header {
        cluster: ClusterId::of(CLUSTER),
        sender: MemberKey::of(name),
        incarnation,
    };
    let hb = Heartbeat {
        cluster_name: CLUSTER.into(),
        name: name.into(),
        // Nobody serves there: probes and recoveries to it fail at once.
        http_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 9)),
        host_id: "elsewhere".into(),
        load: 0,
        interval_ms: 100,
        joining: false,
        last_seq: vec![(Channel::State, 0), (Channel::Log, 0)],
    };
    (header, hb)
}

/// A fragments datagram of one record claiming a message of `total_len` bytes in `count`
/// pieces, carrying piece `index` (filled with `data_len` bytes).
fn fragment(
    h: &Header,
    seq: u64,
    total_len: u32,
    count: u32,
    index: u32,
    data_len: usize,
) -> Vec<u8> {
    let mut p = FragmentPacker::new(h, 65_507);
    assert!(p.push(
        Channel::Log,
        seq,
        index,
        count,
        total_len,
        &vec![0xab; data_len]
    ));
    p.finish().to_vec()
}

#[test]
fn an_authenticated_cluster_shrugs_off_forged_untagged_replayed_and_truncated_datagrams() {
    let group = SocketAddrV4::new(Ipv4Addr::new(239, 255, 78, 1), 47_811);
    let key = ClusterKey::new(vec![0x5a; 32]).expect("key");
    let auth = AuthConfig::new(Keyring::single(key));
    let names = ["m0", "m1", "m2"];
    let mut members: Vec<NodeHandle> = names
        .iter()
        .map(|n| member(group, n, Some(auth.clone())))
        .collect();
    for (i, h) in members.iter().enumerate() {
        h.bind("before", &format!("v{i}"))
            .expect("up")
            .expect("bind");
    }
    wait_for("the cluster forms", Duration::from_secs(20), || {
        converged(&members, &names, "before")
    });
    // Record genuine traffic to replay.
    let sock = attacker(group);
    let mut recorded = Vec::new();
    let mut buf = vec![0u8; 65_536];
    let until = Instant::now() + Duration::from_millis(800);
    while Instant::now() < until {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            recorded.push(buf[..n].to_vec());
        }
    }
    assert!(recorded.len() >= 10, "recorded {}", recorded.len());
    let wrong = Keyring::single(ClusterKey::new(vec![0x17; 32]).expect("key"));
    let (fake_h, fake_hb) = heartbeat("mallory", 1);
    let forged_hb = wire::encode_heartbeat(&fake_h, &fake_hb);
    let send = |d: &[u8]| {
        let _ = sock.send_to(d, group);
    };
    // The attack runs while a member changes its offers; the others must still hear it.
    members[1].bind("during", "x").expect("up").expect("bind");
    let mut sent = 0u64;
    for round in 0..40u64 {
        for d in &recorded {
            send(d); // replayed as is
            send(&d[..d.len() / 2]); // truncated
            send(&d[..wire::HEADER_LEN + 3]);
            sent += 3;
        }
        for c in 0..200u64 {
            let counter = round * 1_000 + c + 1;
            let stamp = hybridcast_mio::unix_millis();
            send(&wire::seal(&forged_hb, counter, stamp, &wrong)); // the wrong key
            send(&forged_hb); // untagged
            let claim = fragment(&fake_h, c + 1, u32::MAX, u32::MAX / 1_343 + 1, 0, 1_343);
            send(&wire::seal(&claim, counter, stamp, &wrong)); // 4 GiB, wrong key
            send(&vec![0x42; 60_000]); // oversized garbage
            sent += 4;
        }
        for h in &members {
            while h.events().try_recv().is_ok() {}
        }
    }
    for (i, h) in members.iter().enumerate() {
        h.bind("after", &format!("v{i}"))
            .expect("up")
            .expect("bind");
    }
    wait_for(
        "the cluster converges after the attack",
        Duration::from_secs(20),
        || converged(&members, &names, "after") && converged(&members, &names, "before"),
    );
    assert!(members.iter().all(|h| {
        h.view()
            .is_ok_and(|v| v.offers.get("during").is_some_and(|p| p.len() == 1))
    }));
    for (name, h) in names.iter().zip(&members) {
        let s = stats(h);
        let a = &s.auth;
        println!(
            "{name}: {sent} hostile datagrams sent; refused: {a:?}; drops: {:?}",
            s.drops
        );
        assert!(a.datagram_bad_tag > 0, "{name}: wrong key and truncations");
        assert!(a.datagram_untagged > 0, "{name}: untagged");
        assert!(a.datagram_replayed > 0, "{name}: replays");
        assert!(s.drops.not_hybridcast > 0, "{name}: garbage");
        assert_eq!(
            s.drops.too_large, 0,
            "{name}: the 4 GiB claim never got past its tag"
        );
        assert_eq!(s.members_alive, 2, "{name}: nobody else admitted");
        assert!(s.cached_bytes <= 8 << 20);
    }
    for h in members.drain(..) {
        h.shutdown();
    }
}

#[test]
fn an_admitted_sender_cannot_push_a_member_past_its_cache_bounds() {
    // Without a key anyone can be admitted; the same holds for an insider holding the key. What
    // it sends is refused by the receive limits instead.
    let group = SocketAddrV4::new(Ipv4Addr::new(239, 255, 78, 1), 47_812);
    let names = ["n0", "n1"];
    let mut members: Vec<NodeHandle> = names.iter().map(|n| member(group, n, None)).collect();
    for (i, h) in members.iter().enumerate() {
        h.bind("before", &format!("v{i}"))
            .expect("up")
            .expect("bind");
    }
    wait_for("the cluster forms", Duration::from_secs(20), || {
        converged(&members, &names, "before")
    });
    let sock = attacker(group);
    let send = |d: &[u8]| {
        let _ = sock.send_to(d, group);
    };
    let (h, hb) = heartbeat("mallory", 1);
    let beat = wire::encode_heartbeat(&h, &hb);
    send(&beat);
    wait_for("mallory is admitted", Duration::from_secs(10), || {
        members.iter().all(|m| {
            m.view()
                .is_ok_and(|v| v.members.iter().any(|x| x.name == "mallory"))
        })
    });
    let mut seq = 0u64;
    for round in 0..30 {
        send(&beat);
        for _ in 0..100 {
            seq += 1;
            // A message of 4 GiB.
            send(&fragment(&h, seq, u32::MAX, u32::MAX / 1_343 + 1, 0, 1_343));
            seq += 1;
            // The first piece of a 1 MiB message (the limit), never finished: it stays cached
            // until the cache is full.
            send(&fragment(
                &h,
                seq + 1_000_000,
                1 << 20,
                (1 << 20) / 1_343 + 1,
                0,
                1_343,
            ));
            // A fragment of a message whose later pieces claim another length.
            send(&fragment(&h, seq + 2_000_000, 2_686, 2, 0, 1_343));
            send(&fragment(&h, seq + 2_000_000, 5_372, 4, 1, 1_343));
            // Oversized: one record of 60 000 bytes, alone bigger than a default datagram.
            send(&fragment(&h, seq + 3_000_000, 60_000, 1, 0, 60_000));
            // Truncated: a record announcing more bytes than the datagram holds.
            let cut = fragment(&h, seq + 4_000_000, 1_343, 1, 0, 1_343);
            send(&cut[..cut.len() - 100]);
        }
        if round % 5 == 0 {
            for m in &members {
                while m.events().try_recv().is_ok() {}
                let s = stats(m);
                assert!(s.cached_bytes <= 8 << 20, "total cache bound");
            }
        }
    }
    for (i, m) in members.iter().enumerate() {
        m.bind("after", &format!("v{i}"))
            .expect("up")
            .expect("bind");
    }
    wait_for(
        "legitimate offers converge",
        Duration::from_secs(20),
        || {
            members.iter().all(|m| {
                while m.events().try_recv().is_ok() {}
                m.view().is_ok_and(|v| {
                    v.offers.get("after").is_some_and(|p| p.len() == 2)
                        && v.offers.get("before").is_some_and(|p| p.len() == 2)
                })
            })
        },
    );
    for (name, m) in names.iter().zip(&members) {
        let s = stats(m);
        println!("{name}: cached {} B; drops {:?}", s.cached_bytes, s.drops);
        assert!(s.drops.too_large > 0, "{name}: the 4 GiB claims");
        assert!(
            s.drops.cache_full > 0,
            "{name}: the cache filled up and refused more"
        );
        assert!(s.drops.inconsistent > 0, "{name}: contradicting fragments");
        assert!(s.drops.malformed > 0, "{name}: truncated records");
        assert!(
            s.cached_bytes <= 2 << 20,
            "{name}: one sender holds at most max_cached_bytes_per_sender ({} B)",
            s.cached_bytes
        );
    }
    for m in members.drain(..) {
        m.shutdown();
    }
}
