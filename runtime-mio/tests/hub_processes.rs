//! Hub mode with real processes on loopback: a `hybridcast hub` process and four
//! `hybridcast node --hub` processes (plus one member embedded in the test, which makes
//! changes while the hub is down), all authenticated with one key file.
//!
//! - No multicast at all: the members are given a multicast group that a socket of the test
//!   watches (it hears a control datagram, then nothing from the cluster), and none of the
//!   member processes owns a UDP socket.
//! - The hub is killed with SIGKILL and started again on the same address. While it is down
//!   the members suspect each other and probe point-to-point, finding each other alive (no one
//!   is declared failed for the hub's crash); once it is back they reconnect
//!   (`hybridcast_hub_registrations_total`), and what changed during the outage (an offer
//!   withdrawn, one added, one changed, a newcomer that joined alone) converges through the
//!   protocol's recovery.
//! - A member is killed with SIGKILL: the hub announces its departure, the others take the
//!   notice (`hybridcast_departure_notices_total`, `Event::MemberFailed`), declare it failed
//!   and drop its offers.

mod support;

use hybridcast_mio::core::hub::LinkConfig;
use hybridcast_mio::core::{AuthConfig, Config, Event, MemberKey};
use hybridcast_mio::{NodeHandle, RuntimeConfig, Transport, keys, socket, spawn};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use support::{
    BIN, Procs, expected_offers, hub_args, member_args, metric, metrics, read, sees, view,
};

const CLUSTER: &str = "hub-proc";
const CONTROL: &[u8] = b"control datagram of the test";

/// The test's processes and key.
struct Lab {
    procs: Procs,
    key_file: PathBuf,
    /// The multicast group the members are given (and must not use).
    group: SocketAddrV4,
}

impl Lab {
    fn start_hub(&mut self, addr: SocketAddr) {
        let mut cmd = Command::new(BIN);
        cmd.args(hub_args(CLUSTER, addr, &self.key_file));
        self.procs.start("hub", cmd);
        self.procs
            .wait_for_line("hub", &format!("hub listening on {addr}"));
    }

    fn start_member(&mut self, name: &str, http: SocketAddr, hub: SocketAddr) {
        let mut cmd = Command::new(BIN);
        cmd.args(member_args(CLUSTER, name, http, hub, &self.key_file))
            .args(["--group", &self.group.to_string()]);
        self.procs.start(name, cmd);
    }

    fn pid(&mut self, name: &str) -> u32 {
        self.procs.get(name).child.id()
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// The inodes of the UDP sockets open in this network namespace (IPv4 and IPv6).
fn udp_inodes() -> Vec<String> {
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .flat_map(|p| {
            read(Path::new(p))
                .lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().nth(9).map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// How many UDP sockets process `pid` holds.
fn udp_sockets_of(pid: u32) -> usize {
    let udp = udp_inodes();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("the process's descriptors");
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .filter(|inode| udp.contains(inode))
        .count()
}

/// A socket joined to `group` on loopback counting every datagram that arrives (the control
/// datagram apart).
struct Watcher {
    heard: Arc<AtomicU64>,
    control: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn start(group: SocketAddrV4) -> Watcher {
        let s = socket::multicast(group, Ipv4Addr::LOCALHOST, 1).expect("the watching socket");
        s.set_nonblocking(false).expect("blocking");
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let (heard, control, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (h, c, st) = (heard.clone(), control.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !st.load(Ordering::Relaxed) {
                if let Ok((n, _)) = s.recv_from(&mut buf) {
                    if &buf[..n] == CONTROL {
                        c.store(true, Ordering::Relaxed);
                    } else {
                        h.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        Watcher {
            heard,
            control,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The member embedded in the test (it changes its offers while the hub is down).
fn embedded(lab: &Lab, hub: SocketAddr) -> NodeHandle {
    let mut cfg = RuntimeConfig::new(CLUSTER, "obs");
    cfg.transport = Transport::Hub(LinkConfig::new(hub));
    cfg.group = lab.group;
    cfg.core = Config {
        heartbeat_interval: Duration::from_millis(100),
        auth: Some(AuthConfig::new(
            keys::read_key_file(&lab.key_file).expect("the key file"),
        )),
        ..Config::default()
    };
    let h = spawn(cfg).expect("the embedded member");
    h.bind("obs-svc", "1").expect("running").expect("bind");
    h.bind("shared", "obs").expect("running").expect("bind");
    h
}

#[test]
fn hub_process_relays_four_member_processes_through_crashes_without_multicast() {
    let procs = Procs::new("hubproc");
    let key_file = support::key_file(&procs.dir);
    let group = SocketAddrV4::new(
        Ipv4Addr::new(239, 255, 77, 11),
        47_700 + (std::process::id() % 200) as u16,
    );
    let mut lab = Lab {
        procs,
        key_file,
        group,
    };
    // The watcher hears a datagram sent to the group, so its silence later means something.
    let watcher = Watcher::start(group);
    let sender = socket::multicast(group, Ipv4Addr::LOCALHOST, 1).expect("a control sender");
    lab.procs
        .wait("the watcher to hear the control datagram", |_| {
            let _ = sender.send_to(CONTROL, group);
            watcher.control.load(Ordering::Relaxed)
        });
    drop(sender);

    let hub = free_addr();
    lab.start_hub(hub);
    let names = ["p0", "p1", "p2", "p3"];
    let mut http: BTreeMap<&str, SocketAddr> = BTreeMap::new();
    for name in names {
        let addr = free_addr();
        http.insert(name, addr);
        lab.start_member(name, addr, hub);
    }
    let obs = embedded(&lab, hub);
    http.insert("obs", obs.http_addr());

    // 1. Everyone converges through the hub.
    let all = ["p0", "p1", "p2", "p3", "obs"];
    let offers = expected_offers(&names, &[("obs-svc", "obs", "1"), ("shared", "obs", "obs")]);
    lab.procs.wait("the five members to converge", |_| {
        all.iter()
            .all(|n| view(http[n]).is_some_and(|v| sees(&v, &all, &offers)))
    });
    for n in names {
        let m = metrics(http[n]).expect("metrics");
        assert_eq!(m.get("hybridcast_hub_registered"), Some(&1), "{n}");
        assert!(m["hybridcast_hub_datagrams_out_total"] > 0, "{n}");
        assert!(m["hybridcast_hub_datagrams_in_total"] > 0, "{n}");
    }
    // No member process holds a UDP socket (the same count finds the watcher's in ours).
    assert!(
        udp_sockets_of(std::process::id()) >= 1,
        "the check finds UDP sockets"
    );
    for n in names {
        let pid = lab.pid(n);
        assert_eq!(udp_sockets_of(pid), 0, "{n} holds a UDP socket");
    }

    // 2. The hub crashes. Changes are made while it is down: the embedded member withdraws
    // an offer, adds one and changes one; a newcomer starts.
    lab.procs.kill("hub");
    lab.procs.wait("every member to see the hub gone", |_| {
        names
            .iter()
            .all(|n| metric(http[n], "hybridcast_hub_registered") == Some(0))
            && obs.stats().is_ok_and(|(_, d)| !d.hub_registered)
    });
    while obs.events().try_recv().is_ok() {}
    let before: BTreeMap<&str, u64> = names
        .iter()
        .map(|n| {
            let r = metric(http[n], "hybridcast_recoveries_requested_total").expect("metrics");
            (*n, r)
        })
        .collect();
    let dropped_before = obs
        .stats()
        .expect("stats")
        .1
        .hub
        .expect("hub mode")
        .dropped_offline;
    assert_eq!(obs.unbind("obs-svc").expect("running"), Ok(true));
    obs.bind("outage", "made while the hub was down")
        .expect("running")
        .expect("bind");
    obs.bind("shared", "obs-2").expect("running").expect("bind");
    let p4 = free_addr();
    http.insert("p4", p4);
    lab.start_member("p4", p4, hub);
    // The changes went nowhere: the link dropped them, offline (the hub comes back only
    // after this).
    lab.procs.wait(
        "the embedded member's changes to be dropped offline",
        |_| {
            obs.stats()
                .is_ok_and(|(_, d)| d.hub.is_some_and(|h| h.dropped_offline > dropped_before))
        },
    );
    assert!(!obs.stats().expect("stats").1.hub_registered);
    // The outage lasts: the newcomer joins alone, and the embedded member, hearing no
    // heartbeat, suspects the others, probes them point-to-point and finds them alive. Nobody
    // is declared failed for the hub's crash.
    let mut outage_events = Vec::new();
    lab.procs.wait(
        "the newcomer to join alone and the others to be probed",
        |_| {
            outage_events.extend(obs.events().try_iter());
            let alive_again = names.iter().all(|n| {
                outage_events
                    .iter()
                    .any(|e| matches!(e, Event::MemberAlive { peer } if peer.name == *n))
            });
            alive_again
                && view(p4).is_some_and(|v| v.joined && v.members.len() == 1)
                && metric(p4, "hybridcast_hub_registrations_total") == Some(0)
        },
    );
    outage_events.extend(obs.events().try_iter());
    assert!(
        !outage_events
            .iter()
            .any(|e| matches!(e, Event::MemberFailed { .. } | Event::MemberLeft { .. })),
        "a member was declared gone while only the hub was: {outage_events:?}"
    );
    for n in names {
        let v = view(http[n]).expect("view");
        let gone: Vec<_> = v.members.iter().filter(|m| m.state == "failed").collect();
        assert!(gone.is_empty(), "{n} declared members failed: {gone:?}");
    }

    // 3. The hub comes back on the same address: everyone reconnects, and the changes made
    // during the outage converge.
    lab.start_hub(hub);
    let all = ["p0", "p1", "p2", "p3", "p4", "obs"];
    let outage_offers = [
        ("shared", "obs", "obs-2"),
        ("outage", "obs", "made while the hub was down"),
    ];
    let offers = expected_offers(&["p0", "p1", "p2", "p3", "p4"], &outage_offers);
    lab.procs.wait(
        "the six members to converge after the hub's restart",
        |_| {
            all.iter()
                .all(|n| view(http[n]).is_some_and(|v| sees(&v, &all, &offers)))
        },
    );
    for n in names {
        let m = metrics(http[n]).expect("metrics");
        assert_eq!(m.get("hybridcast_hub_registered"), Some(&1), "{n}");
        assert!(
            m["hybridcast_hub_registrations_total"] >= 2,
            "{n} did not register again: {m:?}"
        );
        // What the embedded member changed was lost in transit: it came by recovery.
        assert!(
            m["hybridcast_recoveries_requested_total"] > before[n],
            "{n} made no recovery request"
        );
    }
    assert!(obs.stats().expect("stats").1.hub_registered);

    // 4. A member is killed: the hub announces the departure, the others probe at once and
    // declare it failed.
    let survivors = ["p0", "p2", "p3", "p4"];
    let notices: BTreeMap<&str, u64> = survivors
        .iter()
        .map(|n| {
            let d = metric(http[n], "hybridcast_departure_notices_total").expect("metrics");
            (*n, d)
        })
        .collect();
    let obs_notices = obs.stats().expect("stats").0.departure_notices;
    while obs.events().try_recv().is_ok() {}
    lab.procs.kill("p1");
    let live = ["p0", "p2", "p3", "p4", "obs"];
    let offers = expected_offers(&survivors, &outage_offers);
    lab.procs.wait("the others to declare p1 failed", |_| {
        live.iter().all(|n| {
            view(http[n]).is_some_and(|v| {
                sees(&v, &live, &offers)
                    && v.members
                        .iter()
                        .any(|m| m.name == "p1" && m.state == "failed")
            })
        })
    });
    for n in survivors {
        let d = metric(http[n], "hybridcast_departure_notices_total").expect("metrics");
        assert!(d > notices[n], "{n} took no departure notice");
    }
    assert!(obs.stats().expect("stats").0.departure_notices > obs_notices);
    let p1 = MemberKey::of("p1");
    let mut failed = false;
    while let Ok(e) = obs.events().try_recv() {
        failed |= matches!(e, Event::MemberFailed { peer } if peer.key == p1);
    }
    assert!(
        failed,
        "the embedded member reported no MemberFailed for p1"
    );

    // 5. All along, nothing was multicast to the group the members were given, and the
    // newcomer holds no UDP socket either.
    for n in survivors {
        let pid = lab.pid(n);
        assert_eq!(udp_sockets_of(pid), 0, "{n} holds a UDP socket");
    }
    assert_eq!(
        watcher.heard.load(Ordering::Relaxed),
        0,
        "datagrams were multicast to the members' group"
    );
    obs.shutdown();
}
