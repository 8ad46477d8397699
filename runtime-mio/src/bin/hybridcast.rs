//! `hybridcast`: run a member, look at a cluster, or watch a demo cluster on loopback.

use clap::{Args, Parser, Subcommand};
use hybridcast_mio::core::hub::{CloseReason, LinkConfig};
use hybridcast_mio::core::session::{LogicalRef, pool};
use hybridcast_mio::core::{AuthConfig, Keyring};
use hybridcast_mio::core::{Config, Event, Identity, MemberKey, SessionState, SessionToken, Value};
use hybridcast_mio::endpoints::{self, ClusterView, PATH_CLUSTER};
use hybridcast_mio::hub::DEFAULT_HUB_PORT;
use hybridcast_mio::{
    DEFAULT_GROUP, HubHandle, HubServer, HubServerConfig, NodeHandle, Resumed, RuntimeConfig,
    Transport, keys, spawn, spawn_hub,
};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "hybridcast: cluster membership, naming and messaging"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one member until interrupted (or for --seconds), logging its events.
    Node(NodeArgs),
    /// Run a hub (message server) for hub mode until interrupted: members started with
    /// `node --hub ADDR` send their group traffic through it instead of IP multicast.
    Hub(HubArgs),
    /// Print a member's view of its cluster.
    Status {
        /// The member's HTTP address, e.g. 127.0.0.1:8080 or http://127.0.0.1:8080.
        url: String,
    },
    /// Start a cluster on loopback, lose packets, crash a member, join a new one, and exit 0
    /// once every view agrees.
    Demo(DemoArgs),
    /// Make a fresh random cluster key in key-file format: into a new file readable by its
    /// owner only (`--out cluster.key`), or on standard output.
    Keygen {
        /// Create this file (it must not exist yet) with mode 0600 and write the key there.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct NodeArgs {
    /// Cluster name.
    #[arg(long, default_value = "hybridcast")]
    cluster: String,
    /// Member name (or use --clone-group and --clone-index).
    #[arg(long, required_unless_present = "clone_group")]
    name: Option<String>,
    /// Server group this member is a clone of; its name becomes `<group>/<index>`.
    #[arg(long, requires = "clone_index", conflicts_with = "name")]
    clone_group: Option<String>,
    /// Clone index within --clone-group.
    #[arg(long)]
    clone_index: Option<u32>,
    /// Send group traffic through the hub at this address (`hybridcast hub`) instead of IP
    /// multicast: for networks that do not route multicast. --group, --interface and --ttl
    /// are then unused; an --http on 0.0.0.0 is advertised with this host's address towards
    /// the hub.
    #[arg(long)]
    hub: Option<SocketAddr>,
    /// Multicast group and port.
    #[arg(long, default_value_t = DEFAULT_GROUP)]
    group: SocketAddrV4,
    /// Interface address to join the group on and send from (the one that reaches the other
    /// machines; the default keeps the cluster on this host).
    #[arg(long, default_value_t = Ipv4Addr::LOCALHOST)]
    interface: Ipv4Addr,
    /// Multicast TTL.
    #[arg(long, default_value_t = 1)]
    ttl: u32,
    /// Address of the point-to-point HTTP server (port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:0")]
    http: SocketAddr,
    /// An offer to make, `name=value`; repeat for more.
    #[arg(long = "bind", value_parser = parse_binding)]
    binds: Vec<(String, String)>,
    /// Heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
    /// Leave after this many seconds (default: run until killed).
    #[arg(long)]
    seconds: Option<u64>,
    /// Drop this share of received group datagrams on purpose (demos and tests only).
    #[arg(long, default_value_t = 0.0)]
    drop_rate: f64,
    /// File holding the cluster keys: hex, one per line, the first signs and all are accepted
    /// (make one with `hybridcast keygen`). Without it the keys come from the
    /// HYBRIDCAST_CLUSTER_KEYS variable.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Run without authentication: anyone who can reach the group or the HTTP port can join,
    /// inject offers and take sessions. Only for a network you trust entirely.
    #[arg(long, conflicts_with = "key_file")]
    insecure: bool,
}

#[derive(Debug, Args)]
struct HubArgs {
    /// Address to listen on (a non-loopback address needs a cluster key).
    #[arg(long, default_value_t = SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_HUB_PORT)))]
    listen: SocketAddr,
    /// Cluster name (members of other clusters are refused).
    #[arg(long, default_value = "hybridcast")]
    cluster: String,
    /// Most member connections at once.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Most bytes queued for one member before it is disconnected as a slow consumer.
    #[arg(long, default_value_t = 8 << 20)]
    max_queued_bytes: usize,
    /// Stop after this many seconds (default: run until killed).
    #[arg(long)]
    seconds: Option<u64>,
    /// File holding the cluster keys (as for `node`): registrations must be tagged with one.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Run without authentication: anyone who can reach the hub can register and receive the
    /// cluster's traffic. Only for a network you trust entirely.
    #[arg(long, conflicts_with = "key_file")]
    insecure: bool,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Members at the start (a newcomer joins later).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(3..=64))]
    nodes: u64,
    /// Share of received datagrams the lossy member drops.
    #[arg(long, default_value_t = 0.2)]
    loss: f64,
    /// Give up (exit 1) if the cluster has not converged after this many seconds in a phase.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Run the cluster in hub mode: a hub on loopback relays the group traffic, no multicast.
    #[arg(long)]
    hub: bool,
}

fn parse_binding(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((n, v)) if !n.is_empty() => Ok((n.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not name=value")),
    }
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Node(a) => node(a),
        Command::Hub(a) => hub(a),
        Command::Status { url } => status(&url),
        Command::Demo(a) => demo(a),
        Command::Keygen { out } => keygen(out),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// The cluster keys from `--key-file` or the environment; `None` only with `--insecure`.
fn cluster_keys(
    key_file: &Option<PathBuf>,
    insecure: bool,
    who: &str,
) -> Result<Option<Keyring>, String> {
    let keys = match key_file {
        Some(path) => Some(keys::read_key_file(path).map_err(|e| e.to_string())?),
        None => keys::keys_from_env().map_err(|e| e.to_string())?,
    };
    match keys {
        Some(k) => {
            if insecure {
                tracing::warn!(
                    "--insecure ignored: a cluster key was given, the {who} runs authenticated"
                );
            }
            Ok(Some(k))
        }
        None if insecure => {
            tracing::warn!("running WITHOUT authentication (--insecure)");
            Ok(None)
        }
        None => Err(format!(
            "no cluster key: give --key-file FILE (make one with `hybridcast keygen`) or set {}; --insecure runs without authentication",
            keys::KEYS_ENV
        )),
    }
}

fn hub(a: HubArgs) -> Result<ExitCode, String> {
    let mut cfg = HubServerConfig::new(&a.cluster);
    cfg.listen = a.listen;
    cfg.hub.max_connections = a.max_connections;
    cfg.hub.max_queued_bytes = a.max_queued_bytes;
    cfg.hub.keys = cluster_keys(&a.key_file, a.insecure, "hub")?;
    cfg.allow_unauthenticated = cfg.hub.keys.is_none();
    let authenticated = cfg.hub.keys.is_some();
    let mut server = HubServer::new(cfg).map_err(|e| e.to_string())?;
    let mut poll = mio::Poll::new().map_err(|e| e.to_string())?;
    server
        .register(poll.registry(), mio::Token(0))
        .map_err(|e| e.to_string())?;
    // Scripts and tests read this line for the address (the port may have been 0).
    println!("hub listening on {}", server.local_addr());
    tracing::info!(listen = %server.local_addr(), cluster = %a.cluster, authenticated, "hub started");
    let end = a.seconds.map(|s| Instant::now() + Duration::from_secs(s));
    let mut events = mio::Events::with_capacity(1024);
    loop {
        let now = Instant::now();
        if end.is_some_and(|e| now >= e) {
            server.shutdown(now);
            tracing::info!("hub stops");
            return Ok(ExitCode::SUCCESS);
        }
        let timeout = [server.poll_timeout(), end]
            .into_iter()
            .flatten()
            .min()
            .map_or(Duration::from_secs(1), |t| {
                t.saturating_duration_since(now).min(Duration::from_secs(1))
            });
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(format!("poll failed: {e}"));
            }
        }
        let now = Instant::now();
        for e in events.iter() {
            server.handle_event(e, now);
        }
        if server.poll_timeout().is_some_and(|t| t <= now) {
            server.handle_timeout(now);
        }
        hybridcast_mio::hub::log_events(&mut server);
    }
}

fn node(a: NodeArgs) -> Result<ExitCode, String> {
    let name = match (&a.name, &a.clone_group, a.clone_index) {
        (Some(n), _, _) => n.clone(),
        (None, Some(g), Some(i)) => Identity::clone_name(g, i),
        _ => return Err("give --name, or --clone-group with --clone-index".into()),
    };
    let mut cfg = RuntimeConfig::new(&a.cluster, &name);
    cfg.clone = a.clone_group.clone().zip(a.clone_index);
    cfg.group = a.group;
    cfg.interface = a.interface;
    cfg.ttl = a.ttl;
    cfg.http = a.http;
    cfg.receive_drop_rate = a.drop_rate;
    cfg.core.heartbeat_interval = Duration::from_millis(a.heartbeat_ms.max(1));
    if let Some(hub) = a.hub {
        cfg.transport = Transport::Hub(LinkConfig::new(hub));
    }
    match cluster_keys(&a.key_file, a.insecure, "member")? {
        Some(keys) => cfg.core.auth = Some(AuthConfig::new(keys)),
        None => cfg.allow_unauthenticated = true,
    }
    let authenticated = cfg.core.auth.is_some();
    let h = spawn(cfg).map_err(|e| e.to_string())?;
    let via = match a.hub {
        Some(hub) => format!("hub {hub}"),
        None => format!("multicast {}", a.group),
    };
    tracing::info!(%name, http = %h.http_addr(), %via, authenticated, "member started");
    for (n, v) in &a.binds {
        h.bind(n, v)
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot bind {n}: {e}"))?;
    }
    let end = a.seconds.map(|s| Instant::now() + Duration::from_secs(s));
    loop {
        let wait = end.map_or(Duration::from_secs(1), |e| {
            e.saturating_duration_since(Instant::now())
                .min(Duration::from_secs(1))
        });
        match h.events().recv_timeout(wait) {
            Ok(e) => log_event(&e),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err("the member stopped".into());
            }
        }
        if end.is_some_and(|e| Instant::now() >= e) {
            tracing::info!("leaving");
            h.shutdown();
            return Ok(ExitCode::SUCCESS);
        }
    }
}

fn keygen(out: Option<PathBuf>) -> Result<ExitCode, String> {
    let text = keys::new_key_file_text().map_err(|e| e.to_string())?;
    let Some(path) = out else {
        print!("{text}");
        return Ok(ExitCode::SUCCESS);
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    std::io::Write::write_all(&mut file, text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    eprintln!("wrote a new cluster key to {}", path.display());
    Ok(ExitCode::SUCCESS)
}

fn log_event(e: &Event) {
    match e {
        Event::Message { .. } | Event::Bound { .. } | Event::Unbound { .. } => {
            tracing::debug!("{e:?}")
        }
        Event::Gap { .. } | Event::NameConflict { .. } | Event::MemberFailed { .. } => {
            tracing::warn!("{e:?}")
        }
        _ => tracing::info!("{e:?}"),
    }
}

/// Fetches the cluster view from the member at `url`.
fn fetch_view(url: &str) -> Result<ClusterView, String> {
    let host = url.trim_start_matches("http://").trim_end_matches('/');
    let host = host.split('/').next().unwrap_or(host);
    let resp = endpoints::get(host, PATH_CLUSTER, Duration::from_secs(10))
        .map_err(|e| format!("cannot get the view from {host}: {e}"))?;
    if resp.status != 200 {
        return Err(format!("{host} answered {}", resp.status));
    }
    serde_json::from_slice(&resp.body).map_err(|e| format!("bad view: {e}"))
}

fn status(url: &str) -> Result<ExitCode, String> {
    let v = fetch_view(url)?;
    println!(
        "cluster {} as seen by {} ({})",
        v.cluster,
        v.name,
        if v.joined { "joined" } else { "joining" }
    );
    println!(
        "{:<24} {:>14} {:<8} {:<22} {:>12} {:>12}",
        "member", "incarnation", "state", "http", "state seq", "log seq"
    );
    for m in &v.members {
        let seq = |c: &str| {
            m.sequences
                .get(c)
                .map_or("-".into(), |(d, k)| format!("{d}/{k}"))
        };
        println!(
            "{:<24} {:>14} {:<8} {:<22} {:>12} {:>12}",
            m.name,
            m.incarnation,
            m.state,
            m.http,
            seq("state"),
            seq("log")
        );
    }
    println!("offers: {}", v.offers.len());
    for (name, providers) in v.offers.iter().take(50) {
        let who: Vec<String> = providers
            .iter()
            .map(|(m, val)| format!("{m}={val}"))
            .collect();
        println!("  {name}: {}", who.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

// ----- demo -----

struct Demo {
    members: Vec<(String, Option<NodeHandle>)>,
    /// The demo cluster's keys: one fresh random key, so the demo runs authenticated.
    keys: Keyring,
    group: SocketAddrV4,
    /// The hub, in hub mode.
    hub: Option<HubHandle>,
    limit: Duration,
}

impl Demo {
    fn start(&mut self, name: &str, drop_rate: f64) -> Result<(), String> {
        let mut cfg = RuntimeConfig::new("demo", name);
        cfg.group = self.group;
        if let Some(hub) = &self.hub {
            cfg.transport = Transport::Hub(LinkConfig::new(hub.addr()));
        }
        cfg.receive_drop_rate = drop_rate;
        cfg.core = Config {
            heartbeat_interval: Duration::from_millis(200),
            request_timeout: Duration::from_millis(500),
            auth: Some(AuthConfig::new(self.keys.clone())),
            ..Config::default()
        };
        let h = spawn(cfg).map_err(|e| format!("cannot start {name}: {e}"))?;
        for k in 0..20 {
            h.bind(&format!("svc-{k}"), &format!("{name}:{k}"))
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        }
        self.members.push((name.to_owned(), Some(h)));
        Ok(())
    }

    fn live(&self) -> impl Iterator<Item = (&str, &NodeHandle)> {
        self.members
            .iter()
            .filter_map(|(n, h)| h.as_ref().map(|h| (n.as_str(), h)))
    }

    /// True when every live member sees the same offers and exactly the live members alive.
    fn converged(&self) -> bool {
        let names: Vec<&str> = self.live().map(|(n, _)| n).collect();
        let mut first: Option<BTreeMap<String, BTreeMap<String, String>>> = None;
        for (name, h) in self.live() {
            let Ok(v) = h.view() else {
                return false;
            };
            let alive: Vec<&str> = v
                .members
                .iter()
                .filter(|m| m.state == "alive" || m.state == "self")
                .map(|m| m.name.as_str())
                .collect();
            let mut expected = names.clone();
            expected.sort_unstable();
            let mut got = alive.clone();
            got.sort_unstable();
            if !v.joined || got != expected || v.offers.values().any(|p| p.len() != names.len()) {
                return false;
            }
            match &first {
                None => first = Some(v.offers),
                Some(f) if *f != v.offers => return false,
                Some(_) => {}
            }
            let _ = name;
        }
        true
    }

    fn wait(&self, what: &str, mut done: impl FnMut(&Demo) -> bool) -> Result<Duration, String> {
        let start = Instant::now();
        while start.elapsed() < self.limit {
            if done(self) {
                let took = start.elapsed();
                println!("  {what}: {:.0} ms", took.as_secs_f64() * 1e3);
                return Ok(took);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!("{what}: not within {:?}", self.limit))
    }

    fn table(&self) {
        println!(
            "  {:<10} {:>8} {:>8} {:>10} {:>10} {:>10} {:>9}",
            "member", "members", "offers", "recovered", "served", "dropped", "dumps"
        );
        for (name, h) in self.live() {
            let (Ok(v), Ok((s, d))) = (h.view(), h.stats()) else {
                continue;
            };
            let offers: usize = v.offers.values().map(BTreeMap::len).sum();
            println!(
                "  {:<10} {:>8} {:>8} {:>10} {:>10} {:>10} {:>9}",
                name,
                v.members.iter().filter(|m| m.state == "alive").count() + 1,
                offers,
                s.recoveries_requested,
                s.recoveries_served,
                d.injected_drops,
                s.dump_requests
            );
        }
    }
}

fn demo(a: DemoArgs) -> Result<ExitCode, String> {
    if !(0.0..0.9).contains(&a.loss) {
        return Err("--loss must be within [0, 0.9)".into());
    }
    // A port of our own, so the demo never mixes with a cluster on the default port.
    let port = 46_000 + (std::process::id() % 2000) as u16;
    let key = keys::random_key().map_err(|e| e.to_string())?;
    let keys = Keyring::single(key);
    let hub = if a.hub {
        let mut cfg = HubServerConfig::new("demo");
        cfg.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        cfg.hub.keys = Some(keys.clone());
        Some(spawn_hub(cfg).map_err(|e| format!("cannot start the hub: {e}"))?)
    } else {
        None
    };
    let mut d = Demo {
        members: Vec::new(),
        keys,
        group: SocketAddrV4::new(*DEFAULT_GROUP.ip(), port),
        hub,
        limit: Duration::from_secs(a.seconds),
    };
    let via = match &d.hub {
        Some(h) => format!("through a hub at {} (no multicast)", h.addr()),
        None => format!("on multicast group {}", d.group),
    };
    println!(
        "starting {} members {via} (loopback, authenticated with a fresh random key), 20 offers each; member-1 drops {:.0}% of what it receives",
        a.nodes,
        a.loss * 100.0
    );
    for i in 0..a.nodes {
        let rate = if i == 1 { a.loss } else { 0.0 };
        d.start(&format!("member-{i}"), rate)?;
    }
    let t_start = d.wait("every view converged", Demo::converged)?;
    // Traffic under loss: each member publishes invalidations and changes offers.
    for round in 0..20 {
        for (name, h) in d.live() {
            let _ = h.publish("invalidate", format!("{name} round {round}"));
            let _ = h.bind("svc-0", &format!("{name}:round-{round}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let t_churn = d.wait(
        "converged again after 20 rounds of changes",
        Demo::converged,
    )?;
    if let Some((_, Some(h))) = d.members.get(1) {
        let (s, ds) = h.stats().map_err(|e| e.to_string())?;
        println!(
            "  member-1 dropped {} datagrams, detected being behind and made {} point-to-point recoveries ({} failed)",
            ds.injected_drops, s.recoveries_requested, s.recoveries_failed
        );
    }
    d.table();

    let victim = d.members.len() - 1;
    let victim_name = d.members[victim].0.clone();
    let session = match &d.members[victim].1 {
        Some(h) => start_session(h, &victim_name)?,
        None => return Err("the victim is not running".into()),
    };
    println!("crashing {victim_name} (no Leave)");
    if let Some(h) = d.members[victim].1.take() {
        h.crash();
    }
    let t_detect = d.wait("every member reports it failed", |d| {
        d.live().all(|(_, h)| {
            h.view().is_ok_and(|v| {
                v.members
                    .iter()
                    .any(|m| m.name == victim_name && m.state == "failed")
            })
        })
    })?;

    let resumed_ok = resume_session(&d, &session)?;

    println!("starting newcomer (joins with one state dump)");
    d.start("newcomer", 0.0)?;
    let t_join = d.wait("newcomer joined and every view converged", Demo::converged)?;
    let dumps = d
        .live()
        .find(|(n, _)| *n == "newcomer")
        .and_then(|(_, h)| h.stats().ok())
        .map_or(0, |(s, _)| s.dump_requests);
    println!("  newcomer state-dump requests: {dumps}");
    d.table();
    println!("summary");
    println!(
        "  converge at start {:.0} ms, after changes under loss {:.0} ms, crash detected in {:.0} ms, join {:.0} ms",
        ms(t_start),
        ms(t_churn),
        ms(t_detect),
        ms(t_join)
    );
    let ok = d.converged() && dumps == 1 && resumed_ok;
    if let Some((hub, _)) = d.hub.as_ref().and_then(|h| h.stats()) {
        println!(
            "  hub: {} registrations, {} group frames relayed as {} copies, departures announced for {} closed connections",
            hub.registrations,
            hub.group_frames,
            hub.copies_out,
            hub.closed_for(CloseReason::Closed)
        );
    }
    for (_, h) in d.members.iter_mut() {
        if let Some(h) = h.take() {
            h.shutdown();
        }
    }
    println!("{}", if ok { "CONVERGED" } else { "NOT CONVERGED" });
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A user's session on `h`: a shopping cart of three products (logical references) and
/// their quantities (raw), committed in three interactions and acknowledged by the secondary.
fn start_session(h: &NodeHandle, name: &str) -> Result<(SessionToken, SessionState), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let token = h
        .session_create()
        .map_err(|e| err(&e))?
        .map_err(|e| err(&e))?;
    let mut last = token;
    for (product, qty) in [("p-4", 10u32), ("p-17", 20), ("p-31", 30)] {
        let reference = Value::Ref(LogicalRef::new("product", product));
        h.session_put(token.id, &pool::application("cart"), product, reference)
            .map_err(|e| err(&e))?
            .map_err(|e| err(&e))?;
        let qty = Value::raw(qty.to_be_bytes().to_vec());
        h.session_put(token.id, &pool::application("cart/qty"), product, qty)
            .map_err(|e| err(&e))?
            .map_err(|e| err(&e))?;
        last = h
            .session_commit(token.id)
            .map_err(|e| err(&e))?
            .map_err(|e| err(&e))?;
    }
    let start = Instant::now();
    loop {
        let info = h.session(token.id).map_err(|e| err(&e))?;
        if let Some((info, state)) = info {
            if info.replicated == Some(info.version) {
                println!(
                    "a user's cart session on {name}: 3 interactions committed, version {} acknowledged by its secondary; token {last}",
                    info.version
                );
                return Ok((info.token, state));
            }
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err("the session was not replicated within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The user's next request, carrying the token, reaches a surviving member that holds no copy.
fn resume_session(d: &Demo, (token, state): &(SessionToken, SessionState)) -> Result<bool, String> {
    let (name, h) = d
        .live()
        .find(|(n, _)| Some(MemberKey::of(n)) != token.secondary)
        .or_else(|| d.live().next())
        .ok_or("no member left")?;
    let started = Instant::now();
    let outcome = h
        .session_resume(*token)
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let took = started.elapsed();
    match outcome {
        Resumed::FailedOver {
            token: new,
            from,
            state: got,
        } => {
            let same = got == *state;
            let from = d
                .members
                .iter()
                .find(|(n, _)| MemberKey::of(n) == from)
                .map_or_else(|| from.to_string(), |(n, _)| n.clone());
            println!(
                "  the user's next request reached {name}: it took the session over from {from} in {:.0} ms, cart {} ({} entries); new token {new}",
                ms(took),
                if same { "intact" } else { "DIFFERENT" },
                got.len()
            );
            Ok(same)
        }
        other => {
            println!("  the user's next request reached {name}: {other:?}");
            Ok(false)
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
