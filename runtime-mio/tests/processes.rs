//! Three `hybridcast node` processes on loopback; their views are read over HTTP from
//! `/hybridcast/v1/cluster`, and `hybridcast status` prints one.

use hybridcast_mio::endpoints::{self, ClusterView, PATH_CLUSTER};
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
    for i in 0..3 {
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let child = Command::new(BIN)
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
