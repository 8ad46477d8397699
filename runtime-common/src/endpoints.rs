//! The runtime's own HTTP endpoints beside the protocol's: the cluster view as JSON,
//! Prometheus metrics, and who this member is.

use crate::RuntimeStats;
use hybridcast_core::http::{self, HttpLimits, Request, Response};
use hybridcast_core::hub::LinkStats;
use hybridcast_core::{Channel, Node, Stats};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write as _};
use std::net::TcpStream;
use std::time::Duration;

/// `GET` path of the cluster view ([`ClusterView`] as JSON).
pub const PATH_CLUSTER: &str = "/hybridcast/v1/cluster";
/// `GET` path of this member's identity ([`WhoAmI`] as JSON).
pub const PATH_WHOAMI: &str = "/hybridcast/v1/whoami";
/// `GET` path of the Prometheus metrics.
pub const PATH_METRICS: &str = "/metrics";

/// One member as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// Name.
    pub name: String,
    /// Incarnation.
    pub incarnation: u64,
    /// `alive`, `suspect`, `failed`, `left`, or `self`.
    pub state: String,
    /// Point-to-point address.
    pub http: String,
    /// Host id.
    pub host: String,
    /// Per channel (`state`, `log`): last sequence delivered here, highest known sent (for
    /// this member itself: last sent, twice).
    pub sequences: BTreeMap<String, (u64, u64)>,
}

/// A node's view of its cluster, served at [`PATH_CLUSTER`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// Cluster name.
    pub cluster: String,
    /// The serving member's name.
    pub name: String,
    /// True once it finished joining.
    pub joined: bool,
    /// Members, this one first.
    pub members: Vec<MemberView>,
    /// Offers: name → member name → value.
    pub offers: BTreeMap<String, BTreeMap<String, String>>,
}

/// Who a member is (seed 002's naming), served at [`PATH_WHOAMI`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAmI {
    /// Cluster name.
    pub cluster: String,
    /// Clone group, if the name was derived from one.
    pub group: Option<String>,
    /// Clone index within the group.
    pub clone_index: Option<u32>,
    /// Member name.
    pub name: String,
    /// Host id.
    pub host: String,
    /// Incarnation.
    pub incarnation: u64,
}

/// The cluster view of `node`.
pub fn cluster_view(node: &Node) -> ClusterView {
    let id = node.identity();
    let mut names = BTreeMap::new();
    names.insert(node.key(), id.name.clone());
    let own = MemberView {
        name: id.name.clone(),
        incarnation: id.incarnation,
        state: "self".into(),
        http: id.http_addr.to_string(),
        host: id.host_id.clone(),
        sequences: Channel::ALL
            .iter()
            .map(|&c| (c.name().to_owned(), (node.last_sent(c), node.last_sent(c))))
            .collect(),
    };
    let mut members = vec![own];
    for m in node.members() {
        names.insert(m.key, m.name.clone());
        members.push(MemberView {
            name: m.name,
            incarnation: m.incarnation,
            state: m.state.as_str().to_owned(),
            http: m.http_addr.to_string(),
            host: m.host_id,
            sequences: m
                .sequences
                .iter()
                .map(|&(c, delivered, known)| (c.name().to_owned(), (delivered, known)))
                .collect(),
        });
    }
    let offers = node
        .registry()
        .view()
        .iter()
        .map(|(name, providers)| {
            let by_name = providers
                .iter()
                .map(|(k, v)| {
                    let who = names.get(k).cloned().unwrap_or_else(|| format!("{k:?}"));
                    (who, v.clone())
                })
                .collect();
            (name.clone(), by_name)
        })
        .collect();
    ClusterView {
        cluster: id.cluster.clone(),
        name: id.name.clone(),
        joined: node.is_joined(),
        members,
        offers,
    }
}

/// A JSON 200 response.
pub fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => Response::ok("application/json", body),
        Err(e) => Response::error(500, &format!("cannot encode JSON: {e}")),
    }
}

/// The Prometheus text exposition of the core's and the runtime's counters.
pub fn metrics(s: &Stats, d: &RuntimeStats) -> Response {
    let mut o = String::new();
    let mut counter = |name: &str, help: &str, v: u64| {
        let _ = writeln!(o, "# HELP hybridcast_{name} {help}");
        let _ = writeln!(o, "# TYPE hybridcast_{name} counter");
        let _ = writeln!(o, "hybridcast_{name} {v}");
    };
    counter(
        "datagrams_in_total",
        "Group datagrams received.",
        s.datagrams_in,
    );
    counter(
        "bytes_in_total",
        "Group datagram bytes received.",
        s.bytes_in,
    );
    counter(
        "datagrams_out_total",
        "Group datagrams sent.",
        s.datagrams_out,
    );
    counter("bytes_out_total", "Group datagram bytes sent.", s.bytes_out);
    counter(
        "messages_delivered_total",
        "Sequenced messages delivered.",
        s.messages_delivered,
    );
    counter("gaps_total", "Gap events reported.", s.gaps);
    counter(
        "gap_messages_total",
        "Messages reported lost for good.",
        s.gap_messages,
    );
    counter(
        "recoveries_requested_total",
        "Recovery requests sent.",
        s.recoveries_requested,
    );
    counter(
        "recoveries_served_total",
        "Recovery requests answered.",
        s.recoveries_served,
    );
    counter(
        "recoveries_failed_total",
        "Recovery requests failed.",
        s.recoveries_failed,
    );
    counter(
        "recoveries_spurious_total",
        "Recovery answers with nothing new.",
        s.recoveries_spurious,
    );
    counter(
        "dump_requests_total",
        "State-dump requests sent.",
        s.dump_requests,
    );
    counter("dumps_served_total", "State dumps served.", s.dumps_served);
    counter("probes_sent_total", "Liveness probes sent.", s.probes_sent);
    counter(
        "departure_notices_total",
        "Departures of live members announced by the transport (the hub), each probed at once.",
        s.departure_notices,
    );
    counter(
        "http_errors_total",
        "Requests answered with an error status.",
        s.http_errors,
    );
    counter(
        "stale_responses_total",
        "Answers to requests no longer waited for.",
        s.stale_responses,
    );
    counter(
        "events_dropped_total",
        "Membership events dropped (owner too slow).",
        s.events_dropped,
    );
    counter(
        "injected_drops_total",
        "Datagrams dropped by receive_drop_rate.",
        d.injected_drops,
    );
    counter(
        "send_drops_total",
        "Group datagrams dropped because the socket was full.",
        d.send_drops,
    );
    counter(
        "connections_refused_total",
        "HTTP connections refused (limit).",
        d.connections_refused,
    );
    counter(
        "connections_timed_out_total",
        "HTTP connections closed idle, stalled or late.",
        d.connections_timed_out,
    );
    counter(
        "slow_requests_total",
        "Served connections closed for a request not read in full in time.",
        d.slow_requests,
    );
    counter(
        "connections_evicted_total",
        "Idle served connections closed to make room for a new one.",
        d.connections_evicted,
    );
    let mut gauge = |name: &str, help: &str, by_role: [u64; 2]| {
        let _ = writeln!(o, "# HELP hybridcast_{name} {help}");
        let _ = writeln!(o, "# TYPE hybridcast_{name} gauge");
        for (role, v) in ["served", "outgoing"].iter().zip(by_role) {
            let _ = writeln!(o, "hybridcast_{name}{{role=\"{role}\"}} {v}");
        }
    };
    gauge(
        "connections_open",
        "HTTP connections open, by role.",
        [d.served_connections, d.outgoing_connections],
    );
    gauge(
        "connections_open_peak",
        "Most HTTP connections open at once, by role.",
        [d.served_connections_peak, d.outgoing_connections_peak],
    );
    let _ = writeln!(
        o,
        "# HELP hybridcast_served_buffer_peak_bytes Most bytes one served connection held buffered."
    );
    let _ = writeln!(o, "# TYPE hybridcast_served_buffer_peak_bytes gauge");
    let _ = writeln!(
        o,
        "hybridcast_served_buffer_peak_bytes {}",
        d.served_buffer_peak
    );
    let dr = &s.drops;
    let _ = writeln!(
        o,
        "# HELP hybridcast_drops_total Datagrams dropped, by reason."
    );
    let _ = writeln!(o, "# TYPE hybridcast_drops_total counter");
    for (reason, v) in [
        ("not_hybridcast", dr.not_hybridcast),
        ("unsupported", dr.unsupported),
        ("malformed", dr.malformed),
        ("wrong_cluster", dr.wrong_cluster),
        ("own", dr.own),
        ("stale_incarnation", dr.stale_incarnation),
        ("unknown_member", dr.unknown_member),
        ("members_over_limit", dr.members_over_limit),
        ("too_large", dr.too_large),
        ("cache_full", dr.cache_full),
        ("inconsistent", dr.inconsistent),
        ("backlogged", dr.backlogged),
        ("duplicate", dr.duplicate),
        ("bad_payload", dr.bad_payload),
        ("offers_over_limit", dr.offers_over_limit),
        ("bad_identity", dr.bad_identity),
    ] {
        let _ = writeln!(o, "hybridcast_drops_total{{reason=\"{reason}\"}} {v}");
    }
    let _ = writeln!(
        o,
        "# HELP hybridcast_auth_refused_total Traffic refused by cluster authentication, by reason."
    );
    let _ = writeln!(o, "# TYPE hybridcast_auth_refused_total counter");
    let a = &s.auth;
    for (reason, v) in [
        ("datagram_untagged", a.datagram_untagged),
        ("datagram_bad_tag", a.datagram_bad_tag),
        ("datagram_stale", a.datagram_stale),
        ("datagram_replayed", a.datagram_replayed),
        ("request_untagged", a.request_untagged),
        ("request_bad_tag", a.request_bad_tag),
        ("request_misdirected", a.request_misdirected),
        ("request_stale", a.request_stale),
        ("request_replayed", a.request_replayed),
        ("request_nonces_full", a.request_nonces_full),
        ("request_no_clock", a.request_no_clock),
        ("response_bad", a.response_bad),
    ] {
        let _ = writeln!(
            o,
            "hybridcast_auth_refused_total{{reason=\"{reason}\"}} {v}"
        );
    }
    let _ = writeln!(
        o,
        "# HELP hybridcast_cached_bytes Bytes held by the receive caches of all senders."
    );
    let _ = writeln!(o, "# TYPE hybridcast_cached_bytes gauge");
    let _ = writeln!(o, "hybridcast_cached_bytes {}", s.cached_bytes);
    let _ = writeln!(
        o,
        "# HELP hybridcast_events_queued Events waiting for the owner, and the bytes they hold."
    );
    let _ = writeln!(o, "# TYPE hybridcast_events_queued gauge");
    let _ = writeln!(o, "hybridcast_events_queued {}", s.events_queued);
    let _ = writeln!(o, "hybridcast_events_queued_bytes {}", s.event_bytes_queued);
    let _ = writeln!(o, "# HELP hybridcast_members Members by state.");
    let _ = writeln!(o, "# TYPE hybridcast_members gauge");
    for (state, v) in [
        ("alive", s.members_alive),
        ("suspect", s.members_suspect),
        ("failed", s.members_failed),
        ("left", s.members_left),
    ] {
        let _ = writeln!(o, "hybridcast_members{{state=\"{state}\"}} {v}");
    }
    let _ = writeln!(o, "# HELP hybridcast_sessions Sessions held, by role.");
    let _ = writeln!(o, "# TYPE hybridcast_sessions gauge");
    for (role, v) in [
        ("primary", s.sessions_primary),
        ("replica", s.sessions_replica),
    ] {
        let _ = writeln!(o, "hybridcast_sessions{{role=\"{role}\"}} {v}");
    }
    let _ = writeln!(
        o,
        "# HELP hybridcast_session_events_total Session replication and ownership, by kind."
    );
    let _ = writeln!(o, "# TYPE hybridcast_session_events_total counter");
    for (kind, v) in [
        ("replication_sent", s.replications_sent),
        ("replication_full", s.replications_full),
        ("replication_failed", s.replications_failed),
        ("replication_applied", s.replications_applied),
        ("replication_superseded", s.replications_superseded),
        ("failed_over", s.sessions_failed_over),
        ("expired", s.sessions_expired),
        ("superseded", s.sessions_superseded),
        ("claim_served", s.claims_served),
    ] {
        let _ = writeln!(o, "hybridcast_session_events_total{{kind=\"{kind}\"}} {v}");
    }
    let _ = writeln!(
        o,
        "# HELP hybridcast_session_replication_bytes_total Bytes of replication bodies sent."
    );
    let _ = writeln!(
        o,
        "# TYPE hybridcast_session_replication_bytes_total counter"
    );
    let _ = writeln!(
        o,
        "hybridcast_session_replication_bytes_total {}",
        s.replication_bytes
    );
    if let Some(h) = &d.hub {
        hub_metrics(&mut o, h, d.hub_registered);
    }
    Response::ok("text/plain; version=0.0.4", o)
}

/// The hub link's lines of [`metrics`] (hub mode only).
fn hub_metrics(o: &mut String, h: &LinkStats, registered: bool) {
    let mut counter = |name: &str, help: &str, v: u64| {
        let _ = writeln!(o, "# HELP hybridcast_hub_{name} {help}");
        let _ = writeln!(o, "# TYPE hybridcast_hub_{name} counter");
        let _ = writeln!(o, "hybridcast_hub_{name} {v}");
    };
    counter(
        "connects_total",
        "Connection attempts to the hub.",
        h.connects,
    );
    counter(
        "registrations_total",
        "Registrations the hub accepted (one per connection that came up).",
        h.registrations,
    );
    counter("losses_total", "Hub connections lost.", h.losses);
    counter(
        "datagrams_out_total",
        "Group datagrams handed to the hub.",
        h.datagrams_out,
    );
    counter(
        "datagrams_in_total",
        "Group datagrams relayed by the hub.",
        h.datagrams_in,
    );
    let _ = writeln!(
        o,
        "# HELP hybridcast_hub_dropped_total Group datagrams not handed to the hub, by reason."
    );
    let _ = writeln!(o, "# TYPE hybridcast_hub_dropped_total counter");
    for (reason, v) in [("offline", h.dropped_offline), ("window", h.dropped_window)] {
        let _ = writeln!(o, "hybridcast_hub_dropped_total{{reason=\"{reason}\"}} {v}");
    }
    let _ = writeln!(
        o,
        "# HELP hybridcast_hub_registered 1 while the hub has accepted this member's registration."
    );
    let _ = writeln!(o, "# TYPE hybridcast_hub_registered gauge");
    let _ = writeln!(o, "hybridcast_hub_registered {}", u8::from(registered));
    let _ = writeln!(
        o,
        "# HELP hybridcast_hub_unacked_bytes Bytes sent to the hub and not yet acknowledged."
    );
    let _ = writeln!(o, "# TYPE hybridcast_hub_unacked_bytes gauge");
    let _ = writeln!(o, "hybridcast_hub_unacked_bytes {}", h.unacked_bytes);
}

/// A blocking `GET path` to the member serving HTTP at `addr` (`host:port`), for tools and
/// tests: one connection, closed after the answer, which core's parser reads within its
/// default limits; `timeout` bounds the whole exchange, however slowly the server answers.
pub fn get(addr: &str, path: &str, timeout: Duration) -> io::Result<Response> {
    // One deadline for the whole exchange: a server trickling bytes cannot hold us longer.
    let deadline = std::time::Instant::now() + timeout;
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut req = Request::get(path);
    req.headers.push(("connection".into(), "close".into()));
    stream.write_all(&req.encode(addr))?;
    let limits = HttpLimits::default();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match http::parse_response(&buf, &limits) {
            Ok(Some((resp, _))) => return Ok(resp),
            Ok(None) => {}
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no full answer within the timeout",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before a full answer",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn metrics_show_departure_notices_and_the_hub_link_only_in_hub_mode() {
        let s = Stats {
            departure_notices: 3,
            ..Stats::default()
        };
        let text = |d: &RuntimeStats| String::from_utf8_lossy(&metrics(&s, d).body).into_owned();
        let multicast = text(&RuntimeStats::default());
        assert!(multicast.contains("\nhybridcast_departure_notices_total 3\n"));
        assert!(!multicast.contains("hybridcast_hub_"), "{multicast}");
        let hub = RuntimeStats {
            hub: Some(LinkStats {
                registrations: 2,
                dropped_offline: 5,
                ..LinkStats::default()
            }),
            hub_registered: true,
            ..RuntimeStats::default()
        };
        let hub = text(&hub);
        for line in [
            "hybridcast_hub_registrations_total 2",
            "hybridcast_hub_dropped_total{reason=\"offline\"} 5",
            "hybridcast_hub_registered 1",
        ] {
            assert!(
                hub.contains(&format!("\n{line}\n")),
                "{line} missing:\n{hub}"
            );
        }
    }

    #[test]
    fn get_gives_up_on_a_server_that_trickles_its_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let server = std::thread::spawn(move || {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            // A valid start, then one byte every 50 ms: each read succeeds, the answer never
            // completes.
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n");
            for _ in 0..200 {
                std::thread::sleep(Duration::from_millis(50));
                if s.write_all(b"x").is_err() {
                    return;
                }
            }
        });
        let e = get(&addr, "/x", Duration::from_millis(300)).expect_err("gives up");
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ),
            "{e:?}"
        );
        let _ = server.join();
    }
}
