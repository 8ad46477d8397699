//! A helper process for the cross-runtime failover test (`tests/session_failover.rs`): a mio
//! member that serves one user session and is then killed from outside.
//!
//!     session_primary <cluster> <group port> <name> <peers>
//!
//! It waits until it sees `<peers>` other members alive, creates a session holding a small cart
//! (product references and raw quantities) committed in three interactions, waits for its
//! secondary to acknowledge the last version, prints `TOKEN <token>` on stdout and then serves
//! until it is killed (at most 120 s).

use hybridcast_mio::core::session::{LogicalRef, pool};
use hybridcast_mio::core::{Config, Value};
use hybridcast_mio::{RuntimeConfig, spawn};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The cart the helper commits: (product id, quantity).
pub const CART: [(&str, u32); 3] = [("p-4", 10), ("p-17", 20), ("p-31", 30)];

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("session_primary: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cluster, port, name, peers] = args.as_slice() else {
        return Err("usage: session_primary <cluster> <group port> <name> <peers>".into());
    };
    let port: u16 = port.parse().map_err(|_| "bad port")?;
    let peers: usize = peers.parse().map_err(|_| "bad peer count")?;
    let mut c = RuntimeConfig::new(cluster, name);
    c.group = SocketAddrV4::new(Ipv4Addr::new(239, 255, 79, 7), port);
    c.host_id = Some(format!("{name}-host"));
    c.core = Config {
        heartbeat_interval: Duration::from_millis(100),
        request_timeout: Duration::from_secs(2),
        ..Config::default()
    };
    // The test's cluster key, if it gives one.
    let keys = hybridcast_mio::keys::keys_from_env().map_err(|e| e.to_string())?;
    c.core.auth = keys.map(hybridcast_mio::core::AuthConfig::new);
    let h = spawn(c).map_err(|e| e.to_string())?;
    let until = |what: &str, mut done: Box<dyn FnMut() -> bool + '_>| {
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if done() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!("{what}: not within 30 s"))
    };
    until(
        "peers alive",
        Box::new(|| {
            h.view().is_ok_and(|v| {
                v.joined && v.members.iter().filter(|m| m.state == "alive").count() == peers
            })
        }),
    )?;
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let token = h
        .session_create()
        .map_err(|e| err(&e))?
        .map_err(|e| err(&e))?;
    let id = token.id;
    let mut last = token;
    for (product, qty) in CART {
        let reference = Value::Ref(LogicalRef::new("product", product));
        h.session_put(id, &pool::application("cart"), product, reference)
            .map_err(|e| err(&e))?
            .map_err(|e| err(&e))?;
        let qty = Value::raw(qty.to_be_bytes().to_vec());
        h.session_put(id, &pool::application("cart/qty"), product, qty)
            .map_err(|e| err(&e))?
            .map_err(|e| err(&e))?;
        last = h
            .session_commit(id)
            .map_err(|e| err(&e))?
            .map_err(|e| err(&e))?;
    }
    until(
        "acknowledged by the secondary",
        Box::new(|| {
            h.session(id)
                .ok()
                .flatten()
                .is_some_and(|(info, _)| info.replicated == Some(3))
        }),
    )?;
    println!("TOKEN {last}");
    std::io::stdout().flush().map_err(|e| err(&e))?;
    std::thread::sleep(Duration::from_secs(120));
    Ok(())
}
