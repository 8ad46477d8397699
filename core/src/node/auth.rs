//! The node's side of cluster authentication ([`crate::auth`]): sealing what it sends, opening
//! what it receives, and refusing replays. Everything here is a no-op without
//! [`Config::auth`](crate::Config::auth).

use super::Node;
use crate::auth::{
    self, AuthConfig, Domain, Freshness, NonceCache, Replay, ReplayWindow, RequestAuthError,
};
use crate::http::{Request, Response};
use crate::ids::MemberKey;
use crate::wire::{self, Datagram};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

/// Per-node authentication state.
#[derive(Debug, Default)]
pub(super) struct AuthState {
    /// Counter of the last datagram sealed (from 1 per incarnation).
    counter: u64,
    /// Datagram counters accepted per sender, with the newest stamp accepted from it.
    windows: BTreeMap<MemberKey, (ReplayWindow, u64)>,
    /// Nonces of requests served recently.
    nonces: NonceCache,
    /// The latest `now` an input brought: what datagrams sent after it are stamped with.
    last_now: Option<Instant>,
    /// The wall clock: Unix milliseconds at an instant, set by the owner.
    wall: Option<(Instant, u64)>,
}

/// Why a served request failed authentication.
enum Refusal {
    Missing,
    BadTag,
    Misdirected,
    Stale,
    Replayed,
    Full,
    NoClock,
}

impl Node {
    /// Tells the node the wall-clock time: `unix_ms` (milliseconds since the Unix epoch) at
    /// `now`. The node derives later wall-clock times from its monotonic `now` arguments.
    ///
    /// Needed only with [`Config::auth`](crate::Config::auth): requests carry the sender's
    /// wall-clock time and servers refuse one further than `max_clock_skew` from their own.
    /// Call it once before the first input and again whenever the owner's clock is corrected;
    /// a node with authentication and no wall clock refuses every request it serves (503) and
    /// stamps its own with time 0, which every peer refuses.
    pub fn set_wall_clock(&mut self, now: Instant, unix_ms: u64) {
        self.auth.wall = Some((now, unix_ms));
    }

    /// Notes the time of an input: datagrams sent after it carry its wall-clock time.
    pub(super) fn note_time(&mut self, now: Instant) {
        self.auth.last_now = Some(now);
    }

    fn wall_ms(&self, now: Instant) -> Option<u64> {
        let (at, ms) = self.auth.wall?;
        let since = now.saturating_duration_since(at).as_millis();
        Some(ms.saturating_add(u64::try_from(since).unwrap_or(u64::MAX)))
    }

    fn auth_config(&self) -> Option<&AuthConfig> {
        self.config.auth.as_ref()
    }

    /// The datagram as it goes on the wire: sealed with the next counter when authentication
    /// is on.
    pub(super) fn seal_group(&mut self, datagram: Bytes) -> Bytes {
        let Some(auth) = self.config.auth.as_ref() else {
            return datagram;
        };
        self.auth.counter += 1;
        let stamp = self
            .auth
            .last_now
            .and_then(|now| self.wall_ms(now))
            .unwrap_or(0);
        wire::seal(&datagram, self.auth.counter, stamp, &auth.keys)
    }

    /// Decodes a received datagram; with authentication on, checks its tag and refuses a
    /// replay: a stamp further than `max_clock_skew` from this node's clock, a counter already
    /// accepted or older than the window, an older incarnation. Refusals are counted; `None`
    /// means dropped.
    pub(super) fn open_datagram(&mut self, now: Instant, datagram: &Bytes) -> Option<Datagram> {
        let Some(auth) = self.config.auth.as_ref() else {
            return wire::decode(datagram)
                .map_err(|e| self.count_wire_error(e))
                .ok();
        };
        let skew = auth.skew_ms();
        let opened = wire::open(datagram, &auth.keys)
            .map_err(|e| self.count_wire_error(e))
            .ok()?;
        let h = opened.datagram.header;
        let ours = h.sender == self.key && h.incarnation == self.identity.incarnation;
        if h.cluster == self.cluster && !ours {
            let fresh = self
                .wall_ms(now)
                .is_some_and(|wall| opened.stamp_ms.abs_diff(wall) <= skew);
            if !fresh {
                self.stats.auth.datagram_stale += 1;
                return None;
            }
            let accepted = match self.auth.windows.get_mut(&h.sender) {
                Some((w, newest)) => {
                    let r = w.accept(h.incarnation, opened.counter);
                    if r.is_ok() {
                        *newest = (*newest).max(opened.stamp_ms);
                    }
                    r
                }
                None => {
                    let w = ReplayWindow::new(h.incarnation, opened.counter);
                    self.auth.windows.insert(h.sender, (w, opened.stamp_ms));
                    Ok(())
                }
            };
            if let Err(Replay::Seen | Replay::OldIncarnation) = accepted {
                self.stats.auth.datagram_replayed += 1;
                return None;
            }
        }
        Some(opened.datagram)
    }

    /// Forgets the replay window of a sender gone from the member table once its newest
    /// datagram is older than the skew: anything recorded from it is then refused by its stamp.
    pub(super) fn prune_replay_windows(&mut self, now: Instant) {
        let (Some(auth), Some(wall)) = (self.config.auth.as_ref(), self.wall_ms(now)) else {
            return;
        };
        let skew = auth.skew_ms();
        let members = &self.members;
        self.auth.windows.retain(|k, (_, newest)| {
            members.contains_key(k) || newest.saturating_add(skew) >= wall
        });
    }

    /// A fresh session id. With authentication it is a keyed hash of this member, its
    /// incarnation and the node's randomness, so nobody without the key can predict one from
    /// ids seen before; without, it comes from the seeded generator and can be guessed by
    /// whoever sees a few.
    pub(super) fn new_session_id(&mut self) -> crate::session::SessionId {
        let (a, b) = (self.rng.next_u64(), self.rng.next_u64());
        let raw = match self.auth_config() {
            Some(auth) => {
                let parts: [&[u8]; 4] = [
                    &self.key.0.to_be_bytes(),
                    &self.identity.incarnation.to_be_bytes(),
                    &a.to_be_bytes(),
                    &b.to_be_bytes(),
                ];
                u128::from_be_bytes(auth.keys.tag(Domain::SessionId, &parts))
            }
            None => u128::from(a ^ self.key.0) << 64 | u128::from(b),
        };
        crate::session::SessionId(raw)
    }

    /// Adds credentials to a request about to be sent; returns its nonce.
    pub(super) fn sign_request(
        &mut self,
        now: Instant,
        to: SocketAddr,
        req: &mut Request,
    ) -> Option<u128> {
        self.auth_config()?;
        let stamp_ms = self.wall_ms(now).unwrap_or(0);
        let nonce = u128::from(self.rng.next_u64()) << 64 | u128::from(self.rng.next_u64());
        let keys = &self.config.auth.as_ref()?.keys;
        auth::sign_request(keys, req, &to.to_string(), stamp_ms, nonce);
        Some(nonce)
    }

    /// Checks a served request's credentials. `Ok(None)`: authentication is off; `Ok(Some)`:
    /// the request's nonce, to sign the response with; `Err`: the refusal to send (counted).
    pub(super) fn check_request(
        &mut self,
        now: Instant,
        req: &Request,
    ) -> Result<Option<u128>, Response> {
        let Some(auth) = self.config.auth.as_ref() else {
            return Ok(None);
        };
        let refusal = match auth::verify_request(&auth.keys, req) {
            Err(RequestAuthError::Missing) => Refusal::Missing,
            Err(RequestAuthError::BadTag) => Refusal::BadTag,
            Ok(_) if req.header("host") != Some(&self.identity.http_addr.to_string()) => {
                Refusal::Misdirected
            }
            Ok((stamp_ms, nonce)) => {
                let skew = auth.skew_ms();
                let capacity = auth.max_nonces;
                match self.wall_ms(now) {
                    None => Refusal::NoClock,
                    Some(wall) => {
                        let nonces = &mut self.auth.nonces;
                        match nonces.accept(wall, stamp_ms, nonce, skew, capacity) {
                            Ok(()) => return Ok(Some(nonce)),
                            Err(Freshness::OutsideWindow) => Refusal::Stale,
                            Err(Freshness::Replayed) => Refusal::Replayed,
                            Err(Freshness::Full) => Refusal::Full,
                        }
                    }
                }
            }
        };
        let a = &mut self.stats.auth;
        let (status, reason, counter) = match refusal {
            Refusal::Missing => (401, "authentication required", &mut a.request_untagged),
            Refusal::BadTag => (401, "bad authentication tag", &mut a.request_bad_tag),
            Refusal::Misdirected => (
                401,
                "request for another member",
                &mut a.request_misdirected,
            ),
            Refusal::Stale => (401, "request time outside the window", &mut a.request_stale),
            Refusal::Replayed => (401, "replayed request", &mut a.request_replayed),
            Refusal::Full => (503, "too many recent requests", &mut a.request_nonces_full),
            Refusal::NoClock => (503, "no wall clock set", &mut a.request_no_clock),
        };
        *counter += 1;
        Err(Response::error(status, reason))
    }

    /// Tags a response to a request that carried `nonce`.
    pub(super) fn sign_response(&self, nonce: u128, resp: &mut Response) {
        if let Some(a) = self.auth_config() {
            auth::sign_response(&a.keys, nonce, resp);
        }
    }

    /// True if `resp` may be used as the answer to the request sent with `nonce`: always
    /// without authentication, else only with a valid tag (a failure is counted).
    pub(super) fn check_response(&mut self, nonce: Option<u128>, resp: &Response) -> bool {
        let Some(a) = self.config.auth.as_ref() else {
            return true;
        };
        let ok = nonce.is_some_and(|n| auth::verify_response(&a.keys, n, resp));
        if !ok {
            self.stats.auth.response_bad += 1;
        }
        ok
    }
}
