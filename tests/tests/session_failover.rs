//! A user session survives the death of its primary's process, across runtimes: the primary
//! is a separate process (a mio member, `session_primary`) that is killed with SIGKILL; the
//! survivors are a mio and two smol members in this process. Real loopback sockets, and an
//! authenticated cluster: the helper reads the key from `HYBRIDCAST_CLUSTER_KEYS`.

use hybridcast_mio::core::session::pool;
use hybridcast_mio::core::{AuthConfig, Config, Keyring, MemberKey, SessionToken, Value};
use hybridcast_mio::{NodeHandle, Resumed, RuntimeConfig, spawn};
use hybridcast_smol::Node;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const HELPER: &str = env!("CARGO_BIN_EXE_session_primary");
const CLUSTER: &str = "failover-test";
const PORT: u16 = 47_511;
const CART: [(&str, u32); 3] = [("p-4", 10), ("p-17", 20), ("p-31", 30)];
/// The cluster key, as the helper's environment carries it.
const KEY_HEX: &str = "6b6579206f6620746865206661696c6f7665722074657374206b6579732121";

fn config(name: &str) -> RuntimeConfig {
    let mut c = RuntimeConfig::new(CLUSTER, name);
    c.group = SocketAddrV4::new(Ipv4Addr::new(239, 255, 79, 7), PORT);
    c.host_id = Some(format!("{name}-host"));
    c.core = Config {
        heartbeat_interval: Duration::from_millis(100),
        request_timeout: Duration::from_secs(2),
        auth: Some(AuthConfig::new(
            Keyring::parse(KEY_HEX).expect("the test key"),
        )),
        ..Config::default()
    };
    c
}

/// Kills the helper when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_session_survives_the_kill_of_its_primary_process() {
    let mio = spawn(config("mio-1")).expect("mio member");
    smol::block_on(async {
        let smol_a = Node::start(config("smol-1")).await.expect("smol member");
        let smol_b = Node::start(config("smol-2")).await.expect("smol member");
        let mut helper = Killed(
            Command::new(HELPER)
                .args([CLUSTER, &PORT.to_string(), "primary", "3"])
                .env(hybridcast_mio::keys::KEYS_ENV, KEY_HEX)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start the helper process"),
        );
        let stdout = helper.0.stdout.take().expect("helper stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the helper prints its token (it waits for 3 peers and an acknowledgement)");
        let token: SessionToken = line
            .strip_prefix("TOKEN ")
            .expect("a TOKEN line")
            .parse()
            .expect("a valid token");
        assert_eq!(token.primary, MemberKey::of("primary"));
        let secondary = token.secondary.expect("a secondary");
        assert_ne!(secondary, token.primary);

        // SIGKILL: no Leave, no goodbye; sockets closed by the kernel.
        helper.0.kill().expect("kill the primary's process");
        let _ = helper.0.wait();

        // The user's next request reaches a survivor that is not the secondary: it claims the
        // copy point-to-point (across runtimes) and takes the session over.
        let survivors = ["mio-1", "smol-1", "smol-2"];
        let at = survivors
            .iter()
            .position(|n| MemberKey::of(n) != secondary)
            .expect("a survivor without the copy");
        let outcome = match at {
            0 => mio.session_resume(token).expect("mio member running"),
            1 => smol_a
                .session_resume(token)
                .await
                .expect("smol member running"),
            _ => smol_b
                .session_resume(token)
                .await
                .expect("smol member running"),
        }
        .expect("resume accepted");
        let Resumed::FailedOver {
            token: new,
            from,
            state,
        } = outcome
        else {
            panic!("expected a failover, got {outcome:?}");
        };
        assert_eq!(from, token.primary);
        assert_eq!(new.primary, MemberKey::of(survivors[at]));
        assert!(new.epoch > token.epoch);
        for (product, qty) in CART {
            assert!(
                matches!(state.get(&pool::application("cart"), product), Some(Value::Ref(r)) if r.key == product.as_bytes()),
                "{product} in the cart"
            );
            assert_eq!(
                state.get(&pool::application("cart/qty"), product),
                Some(&Value::raw(qty.to_be_bytes().to_vec())),
                "quantity of {product}"
            );
        }
        assert_eq!(state.len(), 2 * CART.len());

        // One owner: the new primary serves it; resuming there again is plain.
        let again = match at {
            0 => mio.session_resume(new).expect("running"),
            1 => smol_a.session_resume(new).await.expect("running"),
            _ => smol_b.session_resume(new).await.expect("running"),
        }
        .expect("resume accepted");
        assert!(
            matches!(again, Resumed::Ready(t) if t.primary == new.primary),
            "{again:?}"
        );
        let served = |h: &NodeHandle| h.session(token.id).expect("running").is_some();
        let mut owners = usize::from(served(&mio));
        owners += usize::from(smol_a.session(token.id).await.expect("running").is_some());
        owners += usize::from(smol_b.session(token.id).await.expect("running").is_some());
        assert_eq!(owners, 1, "exactly one survivor serves the session");
    });
}
