//! Hub mode across network namespaces where multicast cannot pass: four `hybridcast node
//! --hub` members, each in a namespace of its own, and a `hybridcast hub` in a fifth, on a
//! bridge. No namespace has a multicast route, and iptables drops every multicast packet in
//! and out of each (the drop counter of UDP multicast sent stays at zero; a multicast member
//! started there at the end shows the rule would catch one). Needs root; `.ci/run` runs it
//! with `--ignored`.
//!
//! Three members converge through the hub; the hub is killed with SIGKILL; a fourth member
//! starts and joins alone while it is down, and the others, probing each other
//! point-to-point, declare no one failed; the hub restarts on its address and all four
//! converge (the newcomer catching up by recovery); a member is killed with SIGKILL and the
//! others, told by the hub, declare it failed. The test reads views and metrics over HTTP
//! from the host's side of the bridge.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use support::{BIN, Procs, expected_offers, hub_args, member_args, metric, sees, view};

const MEMBERS: usize = 4;
const CLUSTER: &str = "netns-hub";
/// The members' and the hub's subnet (netns.rs uses 10.231.77.0/24).
const NET: &str = "10.231.78";
const HUB_PORT: u16 = 7171;
const HTTP_PORT: u16 = 7070;

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn output(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Packets of UDP multicast the first OUTPUT rule of namespace `ns` dropped.
fn multicast_sent(ns: &str) -> u64 {
    let out = output(&[
        "ip", "netns", "exec", ns, "iptables", "-L", "OUTPUT", "-v", "-n", "-x",
    ]);
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        // pkts bytes target prot ...: the protocol shows as a name or a number.
        .find(|f| f.len() > 3 && f[2] == "DROP" && (f[3] == "udp" || f[3] == "17"))
        .and_then(|f| f[0].parse().ok())
        .unwrap_or_else(|| panic!("no UDP multicast rule in {ns}:\n{out}"))
}

/// The namespaces, bridge and processes of the test; all removed when dropped, however the
/// test ends.
struct Lab {
    tag: String,
    procs: Procs,
    key_file: PathBuf,
    /// Namespaces created so far (removed on drop).
    namespaces: Vec<String>,
    bridge: bool,
}

impl Lab {
    fn member_ns(&self, i: usize) -> String {
        format!("{}m{i}", self.tag)
    }
    fn hub_ns(&self) -> String {
        format!("{}hub", self.tag)
    }
    fn bridge_name(&self) -> String {
        format!("{}br", self.tag)
    }
    fn member_http(&self, i: usize) -> SocketAddr {
        let ip = format!("{NET}.{}", i + 1);
        SocketAddr::new(ip.parse().expect("ip"), HTTP_PORT)
    }
    fn hub_addr(&self) -> SocketAddr {
        SocketAddr::new(format!("{NET}.10").parse().expect("ip"), HUB_PORT)
    }

    fn build() -> Lab {
        let tag = format!("hh{}", std::process::id() % 100_000);
        let procs = Procs::new("netns-hub");
        let key_file = support::key_file(&procs.dir);
        let mut lab = Lab {
            tag,
            procs,
            key_file,
            namespaces: Vec::new(),
            bridge: false,
        };
        let br = lab.bridge_name();
        sh(&[
            "ip",
            "link",
            "add",
            &br,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        lab.bridge = true;
        // The host's side of the bridge, from which the test reads views and metrics.
        sh(&["ip", "addr", "add", &format!("{NET}.254/24"), "dev", &br]);
        sh(&["ip", "link", "set", &br, "up"]);
        for i in 0..MEMBERS {
            let ns = lab.member_ns(i);
            lab.add_ns(&ns, &format!("{NET}.{}", i + 1), i);
        }
        let ns = lab.hub_ns();
        lab.add_ns(&ns, &format!("{NET}.10"), MEMBERS);
        lab
    }

    /// A namespace on the bridge with address `ip`, where multicast cannot pass: no route
    /// for it, and iptables drops it both ways (the first OUTPUT rule counts UDP multicast).
    fn add_ns(&mut self, ns: &str, ip: &str, index: usize) {
        let (outer, inner) = (
            format!("{}a{index}", self.tag),
            format!("{}b{index}", self.tag),
        );
        sh(&["ip", "netns", "add", ns]);
        self.namespaces.push(ns.to_owned());
        sh(&[
            "ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ]);
        sh(&["ip", "link", "set", &inner, "netns", ns]);
        sh(&[
            "ip",
            "link",
            "set",
            &outer,
            "master",
            &self.bridge_name(),
            "up",
        ]);
        sh(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            &inner,
        ]);
        sh(&["ip", "-n", ns, "link", "set", &inner, "up"]);
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        // A fresh namespace has no multicast route; make sure.
        let _ = Command::new("ip")
            .args(["-n", ns, "route", "del", "224.0.0.0/4"])
            .output();
        let routes = output(&["ip", "-n", ns, "route", "show", "table", "all"]);
        assert!(
            !routes.contains("224."),
            "a multicast route in {ns}:\n{routes}"
        );
        for rule in [
            &["OUTPUT", "-p", "udp", "-d", "224.0.0.0/4", "-j", "DROP"][..],
            &["OUTPUT", "-d", "224.0.0.0/4", "-j", "DROP"],
            &["INPUT", "-d", "224.0.0.0/4", "-j", "DROP"],
        ] {
            let mut args = vec!["ip", "netns", "exec", ns, "iptables", "-A"];
            args.extend_from_slice(rule);
            sh(&args);
        }
    }

    fn in_ns(&self, ns: &str, args: &[String]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, BIN]).args(args);
        cmd
    }

    fn start_hub(&mut self) {
        let args = hub_args(CLUSTER, self.hub_addr(), &self.key_file);
        let cmd = self.in_ns(&self.hub_ns(), &args);
        self.procs.start("hub", cmd);
        let line = format!("hub listening on {}", self.hub_addr());
        self.procs.wait_for_line("hub", &line);
    }

    fn start_member(&mut self, i: usize) {
        let name = format!("m{i}");
        let mut args = member_args(
            CLUSTER,
            &name,
            self.member_http(i),
            self.hub_addr(),
            &self.key_file,
        );
        // Were multicast used after all, this is where it would go.
        args.extend(["--group", "239.255.77.12:47611", "--interface"].map(String::from));
        args.push(self.member_http(i).ip().to_string());
        let cmd = self.in_ns(&self.member_ns(i), &args);
        self.procs.start(&name, cmd);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in &mut self.procs.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        for (index, ns) in self.namespaces.iter().enumerate() {
            // The veth pair goes with its namespace, but only once the kernel has torn the
            // namespace down; deleting the host's end makes it go now.
            let _ = Command::new("ip")
                .args(["link", "del", &format!("{}a{index}", self.tag)])
                .output();
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        if self.bridge {
            let _ = Command::new("ip")
                .args(["link", "del", &self.bridge_name()])
                .status();
        }
    }
}

#[test]
#[ignore = "needs root: creates network namespaces, a bridge and iptables rules"]
fn four_namespaces_without_multicast_converge_through_a_hub_that_crashes() {
    let mut lab = Lab::build();
    let names: Vec<String> = (0..MEMBERS).map(|i| format!("m{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let http: Vec<SocketAddr> = (0..MEMBERS).map(|i| lab.member_http(i)).collect();

    // 1. Three members converge through the hub.
    lab.start_hub();
    for i in 0..3 {
        lab.start_member(i);
    }
    let first = &names[..3];
    let offers = expected_offers(first, &[]);
    lab.procs.wait("three members to converge", |_| {
        (0..3).all(|i| view(http[i]).is_some_and(|v| sees(&v, first, &offers)))
    });

    // 2. The hub is killed; a fourth member starts and joins alone while it is down.
    lab.procs.kill("hub");
    lab.procs.wait("the members to see the hub gone", |_| {
        (0..3).all(|i| metric(http[i], "hybridcast_hub_registered") == Some(0))
    });
    lab.start_member(3);
    lab.procs
        .wait("the newcomer to join alone, the hub unreachable", |_| {
            view(http[3]).is_some_and(|v| v.joined && v.members.len() == 1)
                && metric(http[3], "hybridcast_hub_losses_total").is_some_and(|l| l > 0)
                && metric(http[3], "hybridcast_hub_registrations_total") == Some(0)
        });

    // Hearing no heartbeat, the members probe each other point-to-point and find each other
    // alive: nobody is declared failed for the hub's crash.
    lab.procs.wait("the members to probe each other", |_| {
        (0..3).all(|i| metric(http[i], "hybridcast_probes_sent_total").is_some_and(|p| p > 0))
    });
    for (i, addr) in http.iter().enumerate().take(3) {
        let v = view(*addr).expect("view");
        let gone: Vec<_> = v.members.iter().filter(|m| m.state == "failed").collect();
        assert!(gone.is_empty(), "m{i} declared members failed: {gone:?}");
    }

    // 3. The hub restarts on its address: all four converge.
    lab.start_hub();
    let offers = expected_offers(&names, &[]);
    lab.procs
        .wait("four members to converge after the hub's restart", |_| {
            (0..MEMBERS).all(|i| view(http[i]).is_some_and(|v| sees(&v, &names, &offers)))
        });
    for (i, addr) in http.iter().enumerate().take(3) {
        let r = metric(*addr, "hybridcast_hub_registrations_total").expect("metrics");
        assert!(r >= 2, "m{i} did not register again ({r})");
    }
    let r = metric(http[3], "hybridcast_recoveries_requested_total").expect("metrics");
    assert!(r > 0, "the newcomer caught up without recovery requests");

    // 4. A member is killed: the hub announces it, the others declare it failed.
    let survivors = [0, 2, 3];
    let notices: Vec<u64> = survivors
        .iter()
        .map(|&i| metric(http[i], "hybridcast_departure_notices_total").expect("metrics"))
        .collect();
    lab.procs.kill("m1");
    let live = ["m0", "m2", "m3"];
    let offers = expected_offers(&live, &[]);
    lab.procs.wait("the others to declare m1 failed", |_| {
        survivors.iter().all(|&i| {
            view(http[i]).is_some_and(|v| {
                sees(&v, &live, &offers)
                    && v.members
                        .iter()
                        .any(|m| m.name == "m1" && m.state == "failed")
            })
        })
    });
    for (k, &i) in survivors.iter().enumerate() {
        let d = metric(http[i], "hybridcast_departure_notices_total").expect("metrics");
        assert!(d > notices[k], "m{i} took no departure notice");
    }

    // 5. No namespace sent any UDP multicast; yet a multicast member in one of them would
    // have been caught by the rule.
    for i in 0..MEMBERS {
        let ns = lab.member_ns(i);
        assert_eq!(multicast_sent(&ns), 0, "multicast sent from {ns}");
    }
    assert_eq!(
        multicast_sent(&lab.hub_ns()),
        0,
        "multicast sent by the hub"
    );
    let control_ns = lab.member_ns(0);
    let control_args: Vec<String> = [
        "node",
        "--cluster",
        "control",
        "--name",
        "control",
        "--group",
        "239.255.77.12:47611",
        "--interface",
        &format!("{NET}.1"),
        "--http",
        &format!("{NET}.1:0"),
        "--heartbeat-ms",
        "50",
        "--seconds",
        "1",
        "--key-file",
        &lab.key_file.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    let cmd = lab.in_ns(&control_ns, &control_args);
    lab.procs.start("control", cmd);
    lab.procs
        .wait("the multicast rule to catch the control member", |_| {
            multicast_sent(&control_ns) > 0
        });
}
