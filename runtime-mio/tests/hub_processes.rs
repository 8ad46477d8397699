//! Hub mode with real processes on loopback: a `hybridcast hub` process and four
//! `hybridcast node --hub` processes (plus one member embedded in the test, which makes
//! changes while the hub is down), all authenticated with one key file.
//!
//! - No multicast at all: the members are given a multicast group that a socket of the test
//!   watches (it hears a control datagram, then nothing from the cluster), and none of the
//!   member processes owns a UDP socket.
//! - The hub is killed with SIGKILL and started again on the same address: the members
//!   reconnect (`hybridcast_hub_registrations_total`), and what changed during the outage (an
//!   offer withdrawn, one added, one changed, a newcomer started) converges through the
//!   protocol's recovery.
//! - A member is killed with SIGKILL: the hub announces its departure, the others take the
//!   notice (`hybridcast_departure_notices_total`, `Event::MemberFailed`), declare it failed
//!   and drop its offers.

use hybridcast_mio::core::hub::LinkConfig;
use hybridcast_mio::core::{AuthConfig, Config, Event, MemberKey};
use hybridcast_mio::endpoints::{self, ClusterView, PATH_CLUSTER, PATH_METRICS};
use hybridcast_mio::{NodeHandle, RuntimeConfig, Transport, keys, socket, spawn};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_hybridcast");
const CLUSTER: &str = "hub-proc";
/// Every polling loop gives up after this long (a generous bound for a loaded machine; the
/// test asserts outcomes, never how long they took).
const PATIENCE: Duration = Duration::from_secs(60);
const CONTROL: &[u8] = b"control datagram of the test";

/// A process of the test, with its log (the CLI logs on standard output).
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

/// The test's processes and files; killed and removed when the test ends, however it ends.
struct Lab {
    dir: PathBuf,
    key_file: PathBuf,
    procs: Vec<Proc>,
}

impl Lab {
    fn new() -> Lab {
        let dir = std::env::temp_dir().join(format!("hybridcast-hubproc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let key_file = dir.join("cluster.key");
        std::fs::write(&key_file, keys::new_key_file_text().expect("a key")).expect("key file");
        Lab {
            dir,
            key_file,
            procs: Vec::new(),
        }
    }

    /// Starts `hybridcast <args>` as process `name`, its output going to a log file.
    fn start(&mut self, name: &str, args: &[String]) {
        let log = self.dir.join(format!("{name}-{}.log", self.procs.len()));
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(BIN)
            .args(args)
            .env_remove(keys::KEYS_ENV)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.procs.push(Proc {
            name: name.into(),
            child,
            log,
        });
    }

    fn proc(&mut self, name: &str) -> &mut Proc {
        self.procs
            .iter_mut()
            .rev()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no process {name}"))
    }

    /// Kills process `name` with SIGKILL (no goodbye, no Leave) and reaps it.
    fn kill(&mut self, name: &str) {
        let p = self.proc(name);
        p.child.kill().expect("SIGKILL");
        p.child.wait().expect("reap");
    }

    fn start_hub(&mut self, addr: SocketAddr) {
        let args = [
            "hub",
            "--listen",
            &addr.to_string(),
            "--cluster",
            CLUSTER,
            "--key-file",
            &self.key_file.display().to_string(),
        ]
        .map(String::from);
        self.start("hub", &args);
        let want = format!("hub listening on {addr}");
        self.wait("the hub to listen", |lab| {
            let p = lab.proc("hub");
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("the hub exited ({status}):\n{}", read(&p.log));
            }
            read(&p.log).contains(&want)
        });
    }

    fn start_member(&mut self, name: &str, http: SocketAddr, hub: SocketAddr, group: SocketAddrV4) {
        let args = [
            "node",
            "--cluster",
            CLUSTER,
            "--name",
            name,
            "--hub",
            &hub.to_string(),
            "--group",
            &group.to_string(),
            "--http",
            &http.to_string(),
            "--heartbeat-ms",
            "100",
            "--seconds",
            "600",
            "--key-file",
            &self.key_file.display().to_string(),
            "--bind",
            &format!("svc-{name}=v-{name}"),
            "--bind",
            &format!("shared={name}"),
        ]
        .map(String::from);
        self.start(name, &args);
    }

    /// Polls `done` until it holds; panics with the logs' ends after [`PATIENCE`].
    fn wait(&mut self, what: &str, mut done: impl FnMut(&mut Lab) -> bool) {
        let end = Instant::now() + PATIENCE;
        while !done(self) {
            if Instant::now() > end {
                panic!("gave up waiting for {what}\n{}", self.log_tails());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tails(&self) -> String {
        let mut s = String::new();
        for p in &self.procs {
            let text = read(&p.log);
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            s.push_str(&format!("--- {} ({}):\n{tail}\n", p.name, p.log.display()));
        }
        s
    }

    fn pid(&mut self, name: &str) -> u32 {
        self.proc(name).child.id()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

fn view(addr: SocketAddr) -> Option<ClusterView> {
    let resp = endpoints::get(&addr.to_string(), PATH_CLUSTER, Duration::from_secs(5)).ok()?;
    serde_json::from_slice(&resp.body).ok()
}

/// The member's `/metrics`, as `line name (labels included) -> value`.
fn metrics(addr: SocketAddr) -> Option<BTreeMap<String, u64>> {
    let resp = endpoints::get(&addr.to_string(), PATH_METRICS, Duration::from_secs(5)).ok()?;
    let text = String::from_utf8(resp.body.to_vec()).ok()?;
    Some(
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, v) = l.rsplit_once(' ')?;
                Some((name.to_owned(), v.parse().ok()?))
            })
            .collect(),
    )
}

fn metric(addr: SocketAddr, name: &str) -> Option<u64> {
    metrics(addr)?.get(name).copied()
}

/// True if `v` sees exactly `alive` (besides itself) alive, and offers exactly `offers`.
fn sees(
    v: &ClusterView,
    alive: &[&str],
    offers: &BTreeMap<String, BTreeMap<String, String>>,
) -> bool {
    let mut got: Vec<&str> = v
        .members
        .iter()
        .filter(|m| m.state == "alive")
        .map(|m| m.name.as_str())
        .collect();
    got.sort_unstable();
    let mut want: Vec<&str> = alive.iter().copied().filter(|n| *n != v.name).collect();
    want.sort_unstable();
    v.joined && got == want && v.offers == *offers
}

/// The offers the members `names` make (each `svc-NAME=v-NAME` and `shared=NAME`), plus
/// `extra`.
fn expected_offers(
    names: &[&str],
    extra: &[(&str, &str, &str)],
) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut offers: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for n in names.iter().filter(|n| **n != "obs") {
        offers
            .entry(format!("svc-{n}"))
            .or_default()
            .insert(n.to_string(), format!("v-{n}"));
        offers
            .entry("shared".into())
            .or_default()
            .insert(n.to_string(), n.to_string());
    }
    for (offer, member, value) in extra {
        offers
            .entry(offer.to_string())
            .or_default()
            .insert(member.to_string(), value.to_string());
    }
    offers
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
fn embedded(lab: &Lab, hub: SocketAddr, group: SocketAddrV4) -> NodeHandle {
    let mut cfg = RuntimeConfig::new(CLUSTER, "obs");
    cfg.transport = Transport::Hub(LinkConfig::new(hub));
    cfg.group = group;
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
    let mut lab = Lab::new();
    let group = SocketAddrV4::new(
        Ipv4Addr::new(239, 255, 77, 11),
        47_700 + (std::process::id() % 200) as u16,
    );
    // The watcher hears a datagram sent to the group, so its silence later means something.
    let watcher = Watcher::start(group);
    let sender = socket::multicast(group, Ipv4Addr::LOCALHOST, 1).expect("a control sender");
    lab.wait("the watcher to hear the control datagram", |_| {
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
        lab.start_member(name, addr, hub, group);
    }
    let obs = embedded(&lab, hub, group);
    http.insert("obs", obs.http_addr());

    // 1. Everyone converges through the hub.
    let all = ["p0", "p1", "p2", "p3", "obs"];
    let offers = expected_offers(&all, &[("obs-svc", "obs", "1"), ("shared", "obs", "obs")]);
    lab.wait("the five members to converge", |_| {
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
    lab.kill("hub");
    lab.wait("every member to see the hub gone", |_| {
        names
            .iter()
            .all(|n| metric(http[n], "hybridcast_hub_registered") == Some(0))
            && obs.stats().is_ok_and(|(_, d)| !d.hub_registered)
    });
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
    lab.start_member("p4", p4, hub, group);
    // The changes went nowhere: the link dropped them, offline.
    lab.wait(
        "the embedded member's changes to be dropped offline",
        |_| {
            obs.stats()
                .is_ok_and(|(_, d)| d.hub.is_some_and(|h| h.dropped_offline > dropped_before))
        },
    );
    assert!(!obs.stats().expect("stats").1.hub_registered);

    // 3. The hub comes back on the same address: everyone reconnects, and the changes made
    // during the outage converge.
    lab.start_hub(hub);
    let all = ["p0", "p1", "p2", "p3", "p4", "obs"];
    let offers = expected_offers(
        &all,
        &[
            ("shared", "obs", "obs-2"),
            ("outage", "obs", "made while the hub was down"),
        ],
    );
    lab.wait(
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
    lab.kill("p1");
    let live = ["p0", "p2", "p3", "p4", "obs"];
    let offers = expected_offers(
        &live,
        &[
            ("shared", "obs", "obs-2"),
            ("outage", "obs", "made while the hub was down"),
        ],
    );
    lab.wait("the others to declare p1 failed", |_| {
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
