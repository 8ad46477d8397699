//! The node's point-to-point side: the requests it asks its runtime to make (recovery, probe,
//! state dump), the answers it applies, and the requests it serves.

use super::{Node, Pending, Phase, Purpose};
use crate::channel::receiver::Ask;
use crate::codec;
use crate::event::Event;
use crate::exchange::{
    self, ClusterDump, DumpEntry, LogRange, ProbeReply, StateSnapshot, WireIdentity,
};
use crate::http::{Method, Request, Response, percent_encode};
use crate::ids::{Channel, MemberKey, RequestId};
use crate::membership::MemberState;
use crate::node::Transmit;
use crate::wire;
use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Instant;

/// Why a point-to-point request produced no response. Reported by the runtime.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestFailure {
    /// The connection could not be established.
    #[error("connect failed: {0}")]
    Connect(String),
    /// The runtime gave up waiting.
    #[error("timed out")]
    Timeout,
    /// The connection broke or closed before a full response.
    #[error("connection failed: {0}")]
    Io(String),
    /// The response could not be parsed or exceeded the limits.
    #[error("invalid response: {0}")]
    InvalidResponse(String),
}

impl Node {
    /// Serves one point-to-point request (the runtime parsed it with
    /// [`crate::http::parse_request`]). Always returns a response: 200 with a bincode body, or
    /// an error status with a plain-text reason (400 malformed, 403 other cluster, 404 unknown
    /// path, 405 wrong method, 410 after leaving, 507 answer larger than `http.max_body_bytes`,
    /// 500 answer that could not be encoded).
    pub fn handle_http_request(&mut self, now: Instant, request: &Request) -> Response {
        self.note_time(now);
        let r = match self.check_request(now, request) {
            Ok(nonce) => {
                let mut r = self.serve(now, request);
                if let Some(nonce) = nonce {
                    self.sign_response(nonce, &mut r);
                }
                r
            }
            Err(refused) => refused,
        };
        self.sessions_settle(now);
        if r.status != 200 {
            self.stats.http_errors += 1;
        }
        r
    }

    fn serve(&mut self, now: Instant, req: &Request) -> Response {
        if !req.path.starts_with(exchange::PATH_PREFIX) {
            return Response::error(404, "unknown path");
        }
        let post = req.path.starts_with(exchange::PATH_SESSION_PREFIX);
        match (post, req.method) {
            (false, Method::Get) | (true, Method::Post) => {}
            (false, _) => return Response::error(405, "only GET is served"),
            (true, _) => return Response::error(405, "session exchanges are POST"),
        }
        match req.header(exchange::HEADER_CLUSTER) {
            None => return Response::error(400, "missing x-hybridcast-cluster header"),
            Some(c) if c != self.cluster.to_string() => {
                return Response::error(403, "request from another cluster");
            }
            Some(_) => {}
        }
        if self.left {
            return Response::error(410, "this member has left the cluster");
        }
        if post {
            return self
                .serve_session(now, req)
                .unwrap_or_else(|| Response::error(404, "unknown session path"));
        }
        let body = match req.path.as_str() {
            exchange::PATH_PROBE => codec::encode(&ProbeReply {
                identity: self.wire_identity(),
            }),
            exchange::PATH_STATE => {
                self.stats.recoveries_served += 1;
                codec::encode(&self.snapshot())
            }
            exchange::PATH_LOG => {
                let (Some(from), Some(to)) = (seq_param(req, "from"), seq_param(req, "to")) else {
                    return Response::error(400, "query needs numeric `from` and `to`");
                };
                if from == 0 || from > to {
                    return Response::error(400, "need 1 <= from <= to");
                }
                self.stats.recoveries_served += 1;
                let sender = &self.senders[Channel::Log.index()];
                let last = sender.last_seq();
                let retention = sender.retention();
                let budget = self.config.http.max_body_bytes / 2;
                codec::encode(&LogRange {
                    incarnation: self.identity.incarnation,
                    first_retained: retention.first_seq().unwrap_or(last + 1),
                    last_seq: last,
                    messages: retention.range(from, to.min(last), budget),
                })
            }
            exchange::PATH_DUMP => {
                self.stats.dumps_served += 1;
                codec::encode(&self.dump())
            }
            _ => return Response::error(404, "unknown hybridcast path"),
        };
        match body {
            Ok(b) if b.len() <= self.config.http.max_body_bytes => {
                Response::ok(exchange::CONTENT_TYPE, Bytes::from(b))
            }
            Ok(_) => Response::error(507, "answer exceeds http.max_body_bytes"),
            Err(_) => Response::error(500, "could not encode the answer"),
        }
    }

    fn wire_identity(&self) -> WireIdentity {
        WireIdentity {
            name: self.identity.name.clone(),
            incarnation: self.identity.incarnation,
            http_addr: self.identity.http_addr,
            host_id: self.identity.host_id.clone(),
            load: self.load,
        }
    }

    /// This node's announced offers and the state-channel sequence they reflect.
    fn snapshot(&self) -> StateSnapshot {
        StateSnapshot {
            incarnation: self.identity.incarnation,
            seq: self.senders[Channel::State.index()].last_seq(),
            offers: self
                .announced
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    fn dump(&self) -> ClusterDump {
        let me = self.snapshot();
        let mut members = vec![DumpEntry {
            identity: self.wire_identity(),
            state: Some((me.seq, me.offers)),
            log_seq: Some(self.senders[Channel::Log.index()].last_seq()),
        }];
        for m in self.members.values().filter(|m| m.state.is_live()) {
            let state = m.receivers[Channel::State.index()].next().map(|n| {
                let offers = self
                    .registry
                    .offers_of(m.key)
                    .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    .unwrap_or_default();
                (n - 1, offers)
            });
            members.push(DumpEntry {
                identity: WireIdentity {
                    name: m.name.clone(),
                    incarnation: m.incarnation,
                    http_addr: m.http_addr,
                    host_id: m.host_id.clone(),
                    load: m.load,
                },
                state,
                log_seq: m.receivers[Channel::Log.index()].next().map(|n| n - 1),
            });
        }
        ClusterDump { members }
    }

    // ----- client side -----

    fn send_request(
        &mut self,
        now: Instant,
        to: SocketAddr,
        path: String,
        purpose: Purpose,
    ) -> RequestId {
        self.send_with_body(now, to, Request::get(&path), purpose)
    }

    /// Queues a POST of `body` to `path` (the session exchanges).
    pub(super) fn send_post(
        &mut self,
        now: Instant,
        to: SocketAddr,
        path: &str,
        body: Bytes,
        purpose: Purpose,
    ) -> RequestId {
        let mut req = Request::get(path);
        req.method = Method::Post;
        req.headers
            .push(("content-type".to_owned(), exchange::CONTENT_TYPE.to_owned()));
        req.body = body;
        self.send_with_body(now, to, req, purpose)
    }

    fn send_with_body(
        &mut self,
        now: Instant,
        to: SocketAddr,
        mut req: Request,
        purpose: Purpose,
    ) -> RequestId {
        let id = self.next_request_id();
        req.headers.push((
            exchange::HEADER_CLUSTER.to_owned(),
            self.cluster.to_string(),
        ));
        req.headers
            .push((exchange::HEADER_FROM.to_owned(), self.identity.name.clone()));
        let nonce = self.sign_request(now, to, &mut req);
        let request = Bytes::from(req.encode(&to.to_string()));
        self.out.push_back(Transmit::Request { id, to, request });
        self.requests.insert(
            id,
            Pending {
                purpose,
                deadline: now + self.config.request_timeout,
                nonce,
            },
        );
        id
    }

    pub(super) fn start_probe(&mut self, now: Instant, key: MemberKey) {
        let Some(m) = self.members.get(&key) else {
            return;
        };
        let (to, incarnation) = (m.http_addr, m.incarnation);
        let id = self.send_request(
            now,
            to,
            exchange::PATH_PROBE.to_owned(),
            Purpose::Probe {
                member: key,
                incarnation,
            },
        );
        self.stats.probes_sent += 1;
        if let Some(m) = self.members.get_mut(&key) {
            m.probe = Some(id);
        }
    }

    pub(super) fn start_recovery(
        &mut self,
        now: Instant,
        key: MemberKey,
        channel: Channel,
        ask: Ask,
    ) {
        let Some(m) = self.members.get(&key) else {
            return;
        };
        let (to, incarnation) = (m.http_addr, m.incarnation);
        let path = match ask {
            Ask::Snapshot { .. } => exchange::PATH_STATE.to_owned(),
            Ask::Range { from, to } => format!(
                "{}?from={}&to={}",
                exchange::PATH_LOG,
                percent_encode(&from.to_string()),
                percent_encode(&to.to_string())
            ),
        };
        let id = self.send_request(
            now,
            to,
            path,
            Purpose::Recovery {
                member: key,
                incarnation,
                channel,
            },
        );
        self.stats.recoveries_requested += 1;
        self.recovering.insert((key, channel));
        if let Some(m) = self.members.get_mut(&key) {
            m.receivers[channel.index()].start(id);
        }
    }

    /// Sends the join's one state-dump request to the best-ranked live member not yet tried,
    /// or finishes the join if there is none.
    pub(super) fn start_dump(&mut self, now: Instant, tried: Vec<MemberKey>) {
        let candidate = self
            .members
            .values()
            .filter(|m| m.state == MemberState::Alive && !m.joining && !tried.contains(&m.key))
            .max_by_key(|m| (self.rank(m.key), m.key))
            .map(|m| (m.key, m.http_addr));
        match candidate {
            Some((key, to)) => {
                let id = self.send_request(
                    now,
                    to,
                    exchange::PATH_DUMP.to_owned(),
                    Purpose::Dump { member: key },
                );
                self.stats.dump_requests += 1;
                let mut tried = tried;
                tried.push(key);
                self.phase = Phase::Dumping { id, tried };
            }
            None => self.finish_join(None),
        }
    }

    fn finish_join(&mut self, via: Option<MemberKey>) {
        self.phase = Phase::Joined;
        let via = via.and_then(|k| self.members.get(&k)).map(super::peer_of);
        let members = self.members.values().filter(|m| m.state.is_live()).count();
        self.push_event(Event::Joined { via, members });
    }

    /// Hands the node the outcome of a request it asked for with [`Transmit::Request`].
    /// Answers to requests that already timed out are ignored (and counted).
    pub fn handle_http_response(
        &mut self,
        now: Instant,
        id: RequestId,
        response: Result<Response, RequestFailure>,
    ) {
        self.note_time(now);
        if self.left {
            return;
        }
        self.resume_parked();
        let Some(pending) = self.take_request(id) else {
            self.stats.stale_responses += 1;
            return;
        };
        let response = match response {
            Ok(r) if !self.check_response(pending.nonce, &r) => {
                Err(RequestFailure::InvalidResponse(
                    "response without a valid authentication tag".into(),
                ))
            }
            other => other,
        };
        match pending.purpose {
            Purpose::Replicate {
                id: sid, version, ..
            } => {
                let body = ok_body(&response);
                self.on_replicate_reply(now, id, sid, version, body);
                self.sessions_settle(now);
                return;
            }
            Purpose::Claim { id: sid, member } => {
                let body = ok_body(&response);
                self.on_claim_reply(now, member, sid, body);
                self.sessions_settle(now);
                return;
            }
            Purpose::Release { id: sid, member } => {
                let ok = ok_body(&response).is_some();
                self.on_release_reply(id, sid, member, ok);
                return;
            }
            _ => {}
        }
        let backlogged =
            self.events_backlogged() && matches!(pending.purpose, Purpose::Recovery { .. });
        let body = match response {
            // A recovery answer waits (retried with backoff) until the owner drains its events.
            Ok(r) if r.status == 200 && !backlogged => r.body,
            _ => {
                self.request_failed(now, id, pending.purpose);
                return;
            }
        };
        let ok = match pending.purpose.clone() {
            Purpose::Probe {
                member,
                incarnation,
            } => self.on_probe_reply(now, id, member, incarnation, &body),
            Purpose::Recovery {
                member,
                incarnation,
                channel,
            } => self.on_recovery_reply(now, id, member, incarnation, channel, &body),
            Purpose::Dump { member } => self.on_dump_reply(now, id, member, &body),
            Purpose::Replicate { .. } | Purpose::Claim { .. } | Purpose::Release { .. } => true,
        };
        if !ok {
            self.request_failed(now, id, pending.purpose);
        }
        self.sessions_settle(now);
    }

    /// A request failed, timed out or got an unusable answer.
    pub(super) fn request_failed(&mut self, now: Instant, id: RequestId, purpose: Purpose) {
        match purpose {
            Purpose::Probe {
                member,
                incarnation,
            } => {
                let confirmed = self.members.get(&member).is_some_and(|m| {
                    m.incarnation == incarnation
                        && m.state == MemberState::Suspect
                        && m.probe == Some(id)
                });
                if confirmed {
                    self.depart(now, member, MemberState::Failed);
                } else if let Some(m) = self.members.get_mut(&member) {
                    if m.probe == Some(id) {
                        m.probe = None;
                    }
                }
            }
            Purpose::Recovery {
                member,
                incarnation,
                channel,
            } => {
                self.stats.recoveries_failed += 1;
                if let Some(m) = self.members.get_mut(&member) {
                    let r = &mut m.receivers[channel.index()];
                    if m.incarnation == incarnation && r.in_flight() == Some(id) {
                        r.fail(now, &mut self.rng, &self.limits);
                    }
                }
            }
            Purpose::Replicate {
                id: sid, version, ..
            } => self.on_replicate_reply(now, id, sid, version, None),
            Purpose::Claim { id: sid, member } => self.on_claim_reply(now, member, sid, None),
            Purpose::Release { id: sid, member } => self.on_release_reply(id, sid, member, false),
            Purpose::Dump { .. } => {
                if let Phase::Dumping { id: current, tried } = &mut self.phase {
                    if *current == id {
                        let tried = std::mem::take(tried);
                        self.start_dump(now, tried);
                    }
                }
            }
        }
    }

    fn on_probe_reply(
        &mut self,
        now: Instant,
        id: RequestId,
        member: MemberKey,
        incarnation: u64,
        body: &[u8],
    ) -> bool {
        let Ok(reply) = codec::decode::<ProbeReply>(body, self.config.http.max_body_bytes) else {
            return false;
        };
        if reply.identity.incarnation != incarnation
            || MemberKey::of(&reply.identity.name) != member
        {
            // Someone else answers at that address now: the probed incarnation is gone.
            return false;
        }
        if let Some(m) = self.members.get_mut(&member) {
            if m.incarnation == incarnation && m.probe == Some(id) {
                m.probe = None;
                m.last_heard = now;
                if m.state == MemberState::Suspect {
                    m.state = MemberState::Alive;
                    let peer = super::peer_of(m);
                    self.push_event(Event::MemberAlive { peer });
                    self.sessions.membership_changed();
                }
            }
        }
        true
    }

    fn on_recovery_reply(
        &mut self,
        now: Instant,
        id: RequestId,
        member: MemberKey,
        incarnation: u64,
        channel: Channel,
        body: &[u8],
    ) -> bool {
        let current = self.members.get(&member).is_some_and(|m| {
            m.incarnation == incarnation
                && m.state.is_live()
                && m.receivers[channel.index()].in_flight() == Some(id)
        });
        if !current {
            self.stats.stale_responses += 1;
            return true;
        }
        let limit = self.config.http.max_body_bytes;
        let mut deliveries = Vec::new();
        match channel {
            Channel::State => {
                let Ok(snap) = codec::decode::<StateSnapshot>(body, limit) else {
                    return false;
                };
                if snap.incarnation != incarnation || snap.seq > wire::MAX_SEQ {
                    return false;
                }
                let Some(m) = self.members.get_mut(&member) else {
                    return true;
                };
                let held = m.budget.bytes;
                let r = &mut m.receivers[channel.index()];
                let before = r.next();
                let applied = r.apply_snapshot(
                    now,
                    snap.seq,
                    &mut m.budget,
                    &self.limits,
                    &mut self.rng,
                    &mut deliveries,
                );
                self.cached_total = self.cached_total + m.budget.bytes - held;
                if !applied || before == Some(snap.seq + 1) {
                    self.stats.recoveries_spurious += 1;
                }
                if applied {
                    self.replace_offers(member, snap.offers);
                }
            }
            Channel::Log => {
                let Ok(range) = codec::decode::<LogRange>(body, limit) else {
                    return false;
                };
                if range.incarnation != incarnation {
                    return false;
                }
                let Some(m) = self.members.get_mut(&member) else {
                    return true;
                };
                let held = m.budget.bytes;
                let r = &mut m.receivers[channel.index()];
                let advanced = r.apply_log(
                    now,
                    range,
                    &mut m.budget,
                    &self.limits,
                    &mut self.rng,
                    &mut deliveries,
                );
                self.cached_total = self.cached_total + m.budget.bytes - held;
                if !advanced {
                    self.stats.recoveries_spurious += 1;
                }
            }
        }
        self.deliver(member, incarnation, channel, deliveries);
        true
    }

    fn replace_offers(&mut self, member: MemberKey, offers: Vec<(String, String)>) {
        let max_name = self.config.max_name_len;
        let max_value = self.config.max_value_len;
        let before = offers.len();
        let offers: Vec<(String, String)> = offers
            .into_iter()
            .filter(|(k, v)| k.len() <= max_name && v.len() <= max_value)
            .collect();
        self.stats.drops.bad_payload += (before - offers.len()) as u64;
        let mut events = std::mem::take(&mut self.scratch);
        let refused = self
            .registry
            .replace(member, offers, self.offer_limits(), &mut events);
        self.stats.drops.offers_over_limit += refused as u64;
        self.push_events(&mut events);
        self.scratch = events;
    }

    fn on_dump_reply(&mut self, now: Instant, id: RequestId, from: MemberKey, body: &[u8]) -> bool {
        if !matches!(self.phase, Phase::Dumping { id: current, .. } if current == id) {
            self.stats.stale_responses += 1;
            return true;
        }
        let Ok(dump) = codec::decode::<ClusterDump>(body, self.config.http.max_body_bytes) else {
            return false;
        };
        for entry in dump.members.into_iter().take(self.config.max_members + 1) {
            self.apply_dump_entry(now, entry);
        }
        self.finish_join(Some(from));
        true
    }

    fn apply_dump_entry(&mut self, now: Instant, e: DumpEntry) {
        let key = MemberKey::of(&e.identity.name);
        if key == self.key
            || e.identity.name.len() > wire::MAX_WIRE_STRING
            || e.identity.host_id.len() > wire::MAX_WIRE_STRING
        {
            return;
        }
        let inc = e.identity.incarnation;
        match self.members.get(&key) {
            Some(m) if m.incarnation > inc => return,
            Some(m) if m.incarnation == inc && !m.state.is_live() => return,
            Some(m) if m.incarnation < inc => {
                self.restart_member(now, key, &e.identity.name, inc, e.identity.http_addr);
            }
            Some(_) => {}
            None => {
                if !self.admit(now, key, &e.identity.name, inc, e.identity.http_addr) {
                    return;
                }
            }
        }
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        if m.host_id.is_empty() {
            m.host_id = e.identity.host_id;
        }
        m.load = e.identity.load;
        let mut state_deliveries = Vec::new();
        let mut log_deliveries = Vec::new();
        let mut offers = None;
        let held = m.budget.bytes;
        if let Some((seq, o)) = e.state {
            let r = &mut m.receivers[Channel::State.index()];
            if r.jump_to(now, seq, &mut m.budget, &self.limits, &mut state_deliveries) {
                offers = Some(o);
            }
        }
        let log = &mut m.receivers[Channel::Log.index()];
        if let (Some(seq), None) = (e.log_seq, log.next()) {
            // Only a receiver with no position takes the dump's: one that already delivers
            // messages keeps its place, so nothing is skipped without a Gap.
            log.jump_to(now, seq, &mut m.budget, &self.limits, &mut log_deliveries);
        }
        self.cached_total = self.cached_total + m.budget.bytes - held;
        if let Some(o) = offers {
            // The dump's state supersedes announcements still waiting for the owner: applied
            // after it they would undo part of it.
            self.parked
                .retain(|(k, _, c, _)| !(*k == key && *c == Channel::State));
            self.replace_offers(key, o);
        }
        self.deliver(key, inc, Channel::State, state_deliveries);
        self.deliver(key, inc, Channel::Log, log_deliveries);
    }
}

/// The body of a 200 response, if that is what came back.
fn ok_body(response: &Result<Response, RequestFailure>) -> Option<&[u8]> {
    match response {
        Ok(r) if r.status == 200 => Some(&r.body),
        _ => None,
    }
}

fn seq_param(req: &Request, name: &str) -> Option<u64> {
    req.query_param(name)?.parse().ok()
}
