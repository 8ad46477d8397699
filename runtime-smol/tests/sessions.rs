//! Sessions on smol members over real loopback sockets (each test on its own group port):
//! a failover to the secondary after the primary crashed, a claim from a live primary, and a
//! session lost with both of its holders.

use hybridcast_smol::core::{
    Config, Event, ExpiredReason, LogicalRef, MemberKey, SessionId, SessionState, SessionToken,
    Value,
};
use hybridcast_smol::{Events, Node, Resumed, RuntimeConfig};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

/// How long a wait may last before the test fails (a bound on waiting, not a timing
/// assertion).
const WAIT: Duration = Duration::from_secs(30);

fn config(port: u16, name: &str) -> RuntimeConfig {
    let mut c = RuntimeConfig::new("smol-sessions", name);
    c.group = SocketAddrV4::new(Ipv4Addr::new(239, 255, 78, 4), port);
    c.core = Config {
        heartbeat_interval: Duration::from_millis(100),
        // Generous for a loaded machine.
        request_timeout: Duration::from_secs(2),
        ..Config::default()
    };
    c
}

async fn member(port: u16, name: &str) -> Node {
    Node::start(config(port, name)).await.expect("start")
}

/// Polls `f` until it holds or [`WAIT`] passes.
async fn eventually<F: Future<Output = bool>>(mut f: impl FnMut() -> F) -> bool {
    let end = Instant::now() + WAIT;
    while Instant::now() < end {
        if f().await {
            return true;
        }
        async_io::Timer::after(Duration::from_millis(20)).await;
    }
    false
}

/// Every node has joined and sees `peers` live members.
async fn agree(nodes: &[&Node], peers: usize) -> bool {
    for n in nodes {
        let v = n.view().await.expect("running");
        let live = v
            .members
            .iter()
            .filter(|m| m.state == "alive" || m.state == "suspect")
            .count();
        if !v.joined || live != peers {
            return false;
        }
    }
    true
}

/// Awaits `f`, failing with `what` if it has not finished after [`WAIT`] (a resume waits for
/// its outcome: a bug there would hang).
async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    let give_up = async {
        async_io::Timer::after(WAIT).await;
        panic!("{what} never finished");
    };
    futures_lite::future::or(f, give_up).await
}

/// Takes events until one matches `want`, or fails with `what` after [`WAIT`].
async fn wait_for(events: &Events, what: &str, mut want: impl FnMut(&Event) -> bool) -> Event {
    let end = Instant::now() + WAIT;
    while Instant::now() < end {
        let next = futures_lite::future::or(events.recv(), async {
            async_io::Timer::after(Duration::from_millis(200)).await;
            None
        });
        if let Some(e) = next.await {
            if want(&e) {
                return e;
            }
        }
    }
    panic!("never saw {what}");
}

/// Three members that see each other, named `a`, `b`, `c`.
async fn cluster(port: u16) -> Vec<(MemberKey, Node)> {
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        nodes.push((MemberKey::of(name), member(port, name).await));
    }
    let all: Vec<&Node> = nodes.iter().map(|(_, n)| n).collect();
    assert!(eventually(|| agree(&all, 2)).await, "views never agreed");
    nodes
}

/// A session on `primary` with a reference and a raw value, committed and acknowledged by
/// its secondary: its token (which names the secondary) and state.
async fn replicated_session(primary: &Node) -> (SessionToken, SessionState) {
    let events = primary.events();
    let token = primary
        .session_create()
        .await
        .expect("running")
        .expect("create");
    let id = token.id;
    let cart = Value::Ref(LogicalRef::new("product", &b"sku-42"[..]));
    for (pool, key, value) in [
        ("cart", "item", cart),
        ("form", "quantity", Value::raw(&b"3"[..])),
    ] {
        let old = primary
            .session_put(id, pool, key, value)
            .await
            .expect("running")
            .expect("put");
        assert_eq!(old, None);
    }
    let token = primary
        .session_commit(id)
        .await
        .expect("running")
        .expect("commit");
    assert!(token.secondary.is_some(), "no secondary chosen: {token:?}");
    wait_for(
        &events,
        "the commit replicated",
        |e| matches!(e, Event::SessionReplicated { id: i, version } if *i == id && *version >= 1),
    )
    .await;
    let (info, state) = primary
        .session(id)
        .await
        .expect("running")
        .expect("served here");
    assert_eq!(info.token, token);
    assert_eq!(info.replicated, Some(info.version));
    assert_eq!(state.len(), 2);
    (token, state)
}

fn take(nodes: &mut Vec<(MemberKey, Node)>, key: MemberKey) -> Node {
    let i = nodes
        .iter()
        .position(|(k, _)| *k == key)
        .expect("a member of the cluster");
    nodes.remove(i).1
}

#[test]
fn failover_to_the_secondary_then_a_claim_from_the_new_primary() {
    smol::block_on(async {
        let mut nodes = cluster(47_421).await;
        let a = take(&mut nodes, MemberKey::of("a"));
        let (token, state) = replicated_session(&a).await;
        let id: SessionId = token.id;
        let secondary_key = token.secondary.expect("a secondary");
        let secondary = take(&mut nodes, secondary_key);
        let (third_key, third) = nodes.pop().expect("a third member");
        a.crash().await;

        // The secondary takes over from its replica (at once, or after a failed claim on
        // the crashed primary).
        let secondary_events = secondary.events();
        let resumed = within("the secondary's resume", secondary.session_resume(token))
            .await
            .expect("running")
            .expect("resume");
        let Resumed::FailedOver {
            token: moved,
            from,
            state: got,
        } = resumed
        else {
            panic!("expected a failover, got {resumed:?}");
        };
        assert_eq!(from, MemberKey::of("a"));
        assert_eq!(got, state);
        assert_eq!(moved.id, id);
        assert_eq!(moved.primary, secondary_key);
        assert!(moved.epoch > token.epoch, "{moved:?} after {token:?}");
        let (_, served) = secondary
            .session(id)
            .await
            .expect("running")
            .expect("served by the secondary now");
        assert_eq!(served, state);
        // Resuming there again finds the session served (its secondary may have changed
        // since, as the crash was detected).
        let again = within(
            "a resume where the session is served",
            secondary.session_resume(moved),
        )
        .await
        .expect("running")
        .expect("resume");
        assert!(
            matches!(again, Resumed::Ready(t)
                if t.id == id && t.primary == secondary_key && t.epoch == moved.epoch),
            "{again:?}"
        );

        // The third member claims it from the live new primary.
        let resumed = within("the third member's resume", third.session_resume(moved))
            .await
            .expect("running")
            .expect("resume");
        let Resumed::FailedOver {
            token: last,
            from,
            state: got,
        } = resumed
        else {
            panic!("expected a failover, got {resumed:?}");
        };
        assert_eq!(from, secondary_key);
        assert_eq!(got, state);
        assert_eq!(last.primary, third_key);
        assert!(last.epoch > moved.epoch, "{last:?} after {moved:?}");
        wait_for(
            &secondary_events,
            "the secondary superseded",
            |e| matches!(e, Event::SessionSuperseded { id: i, by } if *i == id && *by == third_key),
        )
        .await;
        assert_eq!(
            secondary.session(id).await.expect("running"),
            None,
            "the superseded member no longer serves it"
        );
        third.leave().await;
        secondary.leave().await;
    });
}

#[test]
fn a_session_whose_primary_and_secondary_crashed_is_lost() {
    smol::block_on(async {
        let mut nodes = cluster(47_422).await;
        let a = take(&mut nodes, MemberKey::of("a"));
        let (token, _) = replicated_session(&a).await;
        let secondary = take(&mut nodes, token.secondary.expect("a secondary"));
        let (_, third) = nodes.pop().expect("a third member");
        a.crash().await;
        secondary.crash().await;
        let events = third.events();
        let resumed = within("the resume of a lost session", third.session_resume(token))
            .await
            .expect("running")
            .expect("resume");
        assert_eq!(resumed, Resumed::Expired(ExpiredReason::Lost));
        wait_for(&events, "the expiry reported", |e| {
            matches!(e, Event::SessionExpired { id, reason: ExpiredReason::Lost } if *id == token.id)
        })
        .await;
        third.leave().await;
    });
}
