//! Three `hybridcast node` processes on loopback, authenticated with one cluster key, beside
//! an intruder holding another key and a member refused for having none; their views are read
//! over HTTP from `/hybridcast/v1/cluster`, and `hybridcast status` prints one.

use hybridcast_mio::endpoints::{self, ClusterView, PATH_CLUSTER};
use hybridcast_mio::keys;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_hybridcast");

/// Kills the processes when the test ends, however it ends.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn view(addr: SocketAddr) -> Option<ClusterView> {
    let resp = endpoints::get(&addr.to_string(), PATH_CLUSTER, Duration::from_secs(5)).ok()?;
    serde_json::from_slice(&resp.body).ok()
}

#[test]
fn three_processes_converge_and_status_prints_the_view() {
    let group = "239.255.77.4:47401";
    let mut procs = Procs(Vec::new());
    let mut addrs = Vec::new();
    let cluster_key = keys::new_key_file_text().expect("a key");
    // The intruder's key comes from a file; the members' from the environment.
    let dir = std::env::temp_dir().join(format!("hybridcast-proc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let intruder_key = dir.join("intruder.key");
    std::fs::write(&intruder_key, keys::new_key_file_text().expect("a key")).expect("write");
    let intruder_http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let intruder = Command::new(BIN)
        .args(["node", "--cluster", "proc-test", "--name", "intruder"])
        .args(["--group", group, "--http", &intruder_http.to_string()])
        .args(["--heartbeat-ms", "100", "--seconds", "120"])
        .args(["--bind", "shared=intruder", "--key-file"])
        .arg(&intruder_key)
        .env_remove(keys::KEYS_ENV)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the intruder");
    procs.0.push(intruder);
    // No key at all: refused at start, with the reason.
    let keyless = Command::new(BIN)
        .args([
            "node",
            "--cluster",
            "proc-test",
            "--name",
            "keyless",
            "--seconds",
            "1",
        ])
        .env_remove(keys::KEYS_ENV)
        .output()
        .expect("run keyless");
    assert_eq!(keyless.status.code(), Some(2));
    let why = String::from_utf8_lossy(&keyless.stderr);
    assert!(why.contains("no cluster key"), "{why}");
    for i in 0..3 {
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let child = Command::new(BIN)
            .env(keys::KEYS_ENV, &cluster_key)
            .args(["node", "--cluster", "proc-test", "--name", &format!("p{i}")])
            .args(["--group", group, "--http", &http.to_string()])
            .args(["--heartbeat-ms", "100", "--seconds", "120"])
            .args([
                "--bind",
                &format!("svc-{i}=v{i}"),
                "--bind",
                &format!("shared=p{i}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start hybridcast node");
        procs.0.push(child);
        addrs.push(http);
    }
    let end = Instant::now() + Duration::from_secs(30);
    let converged = |addrs: &[SocketAddr]| {
        addrs.iter().all(|a| {
            view(*a).is_some_and(|v| {
                v.joined
                    && v.members.iter().filter(|m| m.state == "alive").count() == 2
                    && v.offers.get("shared").is_some_and(|p| p.len() == 3)
                    && (0..3).all(|i| v.offers.contains_key(&format!("svc-{i}")))
            })
        })
    };
    while !converged(&addrs) {
        assert!(
            Instant::now() < end,
            "processes did not converge: {:?}",
            view(addrs[0])
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The intruder heard everything and was heard by everyone, and is in no view; it sees
    // nobody either.
    for a in &addrs {
        let v = view(*a).expect("view");
        assert!(v.members.iter().all(|m| m.name != "intruder"), "{v:?}");
        assert!(v.offers["shared"].keys().all(|m| m != "intruder"), "{v:?}");
    }
    let alone = view(intruder_http).expect("the intruder's view");
    assert!(alone.members.iter().all(|m| m.state == "self"), "{alone:?}");
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(BIN)
        .args(["status", &addrs[0].to_string()])
        .output()
        .expect("run status");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for name in ["p0", "p1", "p2", "shared", "svc-2"] {
        assert!(text.contains(name), "status output lacks {name}:\n{text}");
    }
}
