//! Four `hybridcast node` processes in four network namespaces on a bridge, each dropping 20%
//! of the UDP it receives with iptables: real kernel loss, real multicast between
//! interfaces. Needs root; `.ci/run` runs it with `--ignored`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_hybridcast");
const MEMBERS: usize = 4;

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

/// The namespaces, bridge and processes of one test; removed when dropped.
struct Lab {
    tag: String,
    procs: Vec<Child>,
    /// The cluster key every member reads (the members leave loopback, so they need one).
    key_file: std::path::PathBuf,
}

impl Lab {
    fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }
    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }
    fn addr(&self, i: usize) -> String {
        format!("10.231.77.{}", i + 1)
    }

    fn build() -> Lab {
        let tag = format!("hc{}", std::process::id() % 100_000);
        let key_file = std::env::temp_dir().join(format!("{tag}.key"));
        let text = hybridcast_mio::keys::new_key_file_text().expect("a key");
        std::fs::write(&key_file, text).expect("write the key file");
        let lab = Lab {
            tag,
            procs: Vec::new(),
            key_file,
        };
        let br = lab.bridge();
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
        sh(&["ip", "link", "set", &br, "up"]);
        for i in 0..MEMBERS {
            let ns = lab.ns(i);
            let (outer, inner) = (format!("{}a{i}", lab.tag), format!("{}b{i}", lab.tag));
            sh(&["ip", "netns", "add", &ns]);
            sh(&[
                "ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ]);
            sh(&["ip", "link", "set", &inner, "netns", &ns]);
            sh(&["ip", "link", "set", &outer, "master", &br, "up"]);
            let cidr = format!("{}/24", lab.addr(i));
            sh(&["ip", "-n", &ns, "addr", "add", &cidr, "dev", &inner]);
            sh(&["ip", "-n", &ns, "link", "set", &inner, "up"]);
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            sh(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "iptables",
                "-A",
                "INPUT",
                "-p",
                "udp",
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                "0.2",
                "-j",
                "DROP",
            ]);
        }
        lab
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        for i in 0..MEMBERS {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(i)])
                .status();
        }
        let _ = std::fs::remove_file(&self.key_file);
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .status();
    }
}

fn status(lab: &Lab, from: usize, of: usize) -> String {
    let target = format!("{}:7070", lab.addr(of));
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns(from), BIN, "status", &target])
        .output()
        .expect("run status");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs root: creates network namespaces, a bridge and iptables rules"]
fn four_namespaces_with_kernel_loss_converge() {
    let mut lab = Lab::build();
    for i in 0..MEMBERS {
        let addr = lab.addr(i);
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ns(i),
                BIN,
                "node",
                "--cluster",
                "netns-test",
            ])
            .args(["--name", &format!("ns-member-{i}"), "--interface", &addr])
            .args([
                "--http",
                &format!("{addr}:7070"),
                "--group",
                "239.255.77.5:47501",
            ])
            .args(["--heartbeat-ms", "200", "--seconds", "300"])
            .arg("--key-file")
            .arg(&lab.key_file)
            .args([
                "--bind",
                &format!("svc-{i}=v{i}"),
                "--bind",
                &format!("shared=m{i}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a member in its namespace");
        lab.procs.push(child);
    }
    let end = Instant::now() + Duration::from_secs(60);
    let converged = |lab: &Lab| {
        (0..MEMBERS).all(|i| {
            let s = status(lab, i, i);
            s.matches(" alive ").count() == MEMBERS - 1
                && (0..MEMBERS).all(|k| s.contains(&format!("svc-{k}:")))
                && (0..MEMBERS).all(|k| s.contains(&format!("m{k}")))
        })
    };
    while !converged(&lab) {
        assert!(
            Instant::now() < end,
            "no convergence; member 0 sees:\n{}",
            status(&lab, 0, 0)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The kernel really dropped datagrams on the way in.
    let dropped: u64 = (0..MEMBERS)
        .map(|i| {
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &lab.ns(i),
                    "iptables",
                    "-L",
                    "INPUT",
                    "-v",
                    "-n",
                    "-x",
                ])
                .output()
                .expect("read iptables counters");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains("DROP"))
                .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum();
    assert!(dropped > 0, "iptables dropped nothing");
}
