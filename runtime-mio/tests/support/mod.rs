//! What the hub tests share: processes with logs, polling with a deadline, and reading a
//! member's view and metrics over HTTP.
#![allow(dead_code)] // each test uses its part

use hybridcast_mio::endpoints::{self, ClusterView, PATH_CLUSTER, PATH_METRICS};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `hybridcast` binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_hybridcast");

/// Every polling loop gives up after this long (a generous bound for a loaded machine; the
/// tests assert outcomes, never how long they took).
pub const PATIENCE: Duration = Duration::from_secs(90);

/// Offers: name → member name → value (as in [`ClusterView::offers`]).
pub type Offers = BTreeMap<String, BTreeMap<String, String>>;

/// A process of a test, with its log (the CLI logs on standard output).
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

/// A test's processes, killed when dropped (however the test ends), and its directory of
/// logs and keys, removed unless the test failed.
pub struct Procs {
    pub dir: PathBuf,
    pub procs: Vec<Proc>,
}

impl Procs {
    /// An empty set with a fresh directory named after `tag`.
    pub fn new(tag: &str) -> Procs {
        let dir = std::env::temp_dir().join(format!("hybridcast-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temp dir");
        Procs {
            dir,
            procs: Vec::new(),
        }
    }

    /// Starts `cmd` as process `name`, its output going to a log file.
    pub fn start(&mut self, name: &str, mut cmd: Command) {
        let log = self.dir.join(format!("{name}-{}.log", self.procs.len()));
        let out = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .env_remove(hybridcast_mio::keys::KEYS_ENV)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
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

    /// The latest process named `name`.
    pub fn get(&mut self, name: &str) -> &mut Proc {
        self.procs
            .iter_mut()
            .rev()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no process {name}"))
    }

    /// Kills process `name` with SIGKILL (no goodbye, no Leave) and reaps it.
    pub fn kill(&mut self, name: &str) {
        let p = self.get(name);
        p.child.kill().expect("SIGKILL");
        p.child.wait().expect("reap");
    }

    /// Waits until process `name` logs `line`; panics if it exits first.
    pub fn wait_for_line(&mut self, name: &str, line: &str) {
        self.wait(&format!("{name} to print {line:?}"), |procs| {
            let p = procs.get(name);
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("{name} exited ({status}):\n{}", read(&p.log));
            }
            read(&p.log).contains(line)
        });
    }

    /// Polls `done` until it holds; panics with the logs' ends after [`PATIENCE`].
    pub fn wait(&mut self, what: &str, mut done: impl FnMut(&mut Procs) -> bool) {
        let end = Instant::now() + PATIENCE;
        while !done(self) {
            if Instant::now() > end {
                panic!("gave up waiting for {what}\n{}", self.log_tails());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of every process's log.
    pub fn log_tails(&self) -> String {
        let mut s = String::new();
        for p in &self.procs {
            let text = read(&p.log);
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            s.push_str(&format!("--- {} ({}):\n{tail}\n", p.name, p.log.display()));
        }
        s
    }
}

impl Drop for Procs {
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

/// A file's text (lossy), empty if it cannot be read.
pub fn read(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The view of the member serving HTTP at `addr`.
pub fn view(addr: SocketAddr) -> Option<ClusterView> {
    let resp = endpoints::get(&addr.to_string(), PATH_CLUSTER, Duration::from_secs(5)).ok()?;
    serde_json::from_slice(&resp.body).ok()
}

/// The `/metrics` of the member at `addr`, as `name (labels included) -> value`.
pub fn metrics(addr: SocketAddr) -> Option<BTreeMap<String, u64>> {
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

/// One metric of the member at `addr`.
pub fn metric(addr: SocketAddr, name: &str) -> Option<u64> {
    metrics(addr)?.get(name).copied()
}

/// True if `v` has joined, sees exactly `alive` (itself apart) alive, and exactly `offers`.
pub fn sees(v: &ClusterView, alive: &[&str], offers: &Offers) -> bool {
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

/// The offers members `names` make when started by [`member_args`] (`svc-NAME=v-NAME` and
/// `shared=NAME`), plus `extra` (offer, member, value).
pub fn expected_offers(names: &[&str], extra: &[(&str, &str, &str)]) -> Offers {
    let mut offers = Offers::new();
    for n in names {
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

/// `node` arguments of member `name` of `cluster` in hub mode, offering `svc-NAME=v-NAME`
/// and `shared=NAME`, authenticated with `key_file`.
pub fn member_args(
    cluster: &str,
    name: &str,
    http: SocketAddr,
    hub: SocketAddr,
    key_file: &Path,
) -> Vec<String> {
    [
        "node",
        "--cluster",
        cluster,
        "--name",
        name,
        "--hub",
        &hub.to_string(),
        "--http",
        &http.to_string(),
        "--heartbeat-ms",
        "100",
        "--seconds",
        "600",
        "--key-file",
        &key_file.display().to_string(),
        "--bind",
        &format!("svc-{name}=v-{name}"),
        "--bind",
        &format!("shared={name}"),
    ]
    .map(String::from)
    .to_vec()
}

/// `hub` arguments listening on `listen` for `cluster`, authenticated with `key_file`.
pub fn hub_args(cluster: &str, listen: SocketAddr, key_file: &Path) -> Vec<String> {
    [
        "hub",
        "--listen",
        &listen.to_string(),
        "--cluster",
        cluster,
        "--key-file",
        &key_file.display().to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// A fresh cluster key file in `dir`, readable by its owner only.
pub fn key_file(dir: &Path) -> PathBuf {
    let path = dir.join("cluster.key");
    let text = hybridcast_mio::keys::new_key_file_text().expect("a key");
    std::fs::write(&path, text).expect("key file");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    path
}
