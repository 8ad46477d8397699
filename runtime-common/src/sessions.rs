//! The session API as a runtime offers it: a resume that waits for its outcome.
//!
//! Core's [`Node::session_resume`](hybridcast_core::Node::session_resume) answers at once only
//! when this member is the primary; a failover or an expiry is reported by an event (which
//! carries the state), possibly after a point-to-point claim. [`ResumeWaiters`] parks whoever
//! asked until that event, so both runtimes give their users one call that returns a
//! [`Resumed`].

use hybridcast_core::{
    Event, ExpiredReason, MemberKey, Resume, SessionError, SessionId, SessionState, SessionToken,
};
use std::collections::HashMap;

/// The outcome of a resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resumed {
    /// This member serves the session: go on.
    Ready(SessionToken),
    /// This member took the session over (from its replica or a copy fetched from another
    /// member): rebuild the application's objects from `state` and give the user `token`.
    FailedOver {
        /// The new token.
        token: SessionToken,
        /// The former primary.
        from: MemberKey,
        /// The state as of the last version the copy held.
        state: SessionState,
    },
    /// No copy survives, or the session timed out.
    Expired(ExpiredReason),
}

/// Most callers parked on one session's resume; a further one is answered
/// [`SessionError::Resuming`] at once (the owner's threads asking in a loop cannot grow it).
pub const MAX_WAITERS_PER_SESSION: usize = 64;

/// Callers waiting for the outcome of a resume, by session. `W` is whatever answers one (a
/// channel's sending half).
#[derive(Debug)]
pub struct ResumeWaiters<W> {
    waiting: HashMap<SessionId, Vec<W>>,
}

impl<W> Default for ResumeWaiters<W> {
    fn default() -> Self {
        ResumeWaiters {
            waiting: HashMap::new(),
        }
    }
}

impl<W> ResumeWaiters<W> {
    /// Takes the answer of `session_resume` for `id`: an outcome known now is returned with
    /// its waiter; otherwise the waiter is parked until [`ResumeWaiters::on_event`] sees the
    /// outcome. A resume already in progress for `id` ([`SessionError::Resuming`]) parks the
    /// waiter beside the first one, up to [`MAX_WAITERS_PER_SESSION`] of them (then it is
    /// answered `Resuming`). Any other error is returned.
    pub fn start(
        &mut self,
        id: SessionId,
        answer: Result<Resume, SessionError>,
        waiter: W,
    ) -> Option<(W, Result<Resumed, SessionError>)> {
        match answer {
            Ok(Resume::Ready(token)) => Some((waiter, Ok(Resumed::Ready(token)))),
            // The outcome's event (with the state) is queued or will be.
            Ok(Resume::FailedOver(_) | Resume::Pending | Resume::Expired(_))
            | Err(SessionError::Resuming(_)) => {
                let parked = self.waiting.entry(id).or_default();
                if parked.len() >= MAX_WAITERS_PER_SESSION {
                    return Some((waiter, Err(SessionError::Resuming(id))));
                }
                parked.push(waiter);
                None
            }
            Err(e) => Some((waiter, Err(e))),
        }
    }

    /// The waiters `event` answers, with their outcome.
    pub fn on_event(&mut self, event: &Event) -> Vec<(W, Resumed)> {
        let (id, outcome) = match event {
            Event::SessionFailover {
                id,
                from,
                token,
                state,
            } => (
                *id,
                Resumed::FailedOver {
                    token: *token,
                    from: *from,
                    state: state.clone(),
                },
            ),
            Event::SessionExpired { id, reason } => (*id, Resumed::Expired(*reason)),
            _ => return Vec::new(),
        };
        self.waiting
            .remove(&id)
            .unwrap_or_default()
            .into_iter()
            .map(|w| (w, outcome.clone()))
            .collect()
    }

    /// Callers waiting.
    pub fn len(&self) -> usize {
        self.waiting.values().map(Vec::len).sum()
    }

    /// True if nobody waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> SessionToken {
        SessionToken {
            id: SessionId(7),
            epoch: 2,
            primary: MemberKey(1),
            secondary: None,
        }
    }

    #[test]
    fn ready_answers_at_once_and_others_wait_for_their_event() {
        let mut w = ResumeWaiters::default();
        let id = SessionId(7);
        assert_eq!(
            w.start(id, Ok(Resume::Ready(token())), 1),
            Some((1, Ok(Resumed::Ready(token()))))
        );
        assert_eq!(w.start(id, Ok(Resume::Pending), 2), None);
        assert_eq!(w.start(id, Err(SessionError::Resuming(id)), 3), None);
        assert_eq!(
            w.start(id, Err(SessionError::Left), 4),
            Some((4, Err(SessionError::Left)))
        );
        assert_eq!(w.len(), 2);
        let other = Event::SessionExpired {
            id: SessionId(8),
            reason: ExpiredReason::Lost,
        };
        assert!(w.on_event(&other).is_empty());
        let done = w.on_event(&Event::SessionFailover {
            id,
            from: MemberKey(1),
            token: token(),
            state: SessionState::default(),
        });
        assert_eq!(done.len(), 2);
        assert!(w.is_empty());
    }

    #[test]
    fn waiters_per_session_are_capped() {
        let id = SessionId(9);
        let mut w: ResumeWaiters<usize> = ResumeWaiters::default();
        for i in 0..MAX_WAITERS_PER_SESSION {
            assert!(w.start(id, Err(SessionError::Resuming(id)), i).is_none());
        }
        let over = w.start(id, Err(SessionError::Resuming(id)), 999);
        assert_eq!(over, Some((999, Err(SessionError::Resuming(id)))));
        assert_eq!(w.len(), MAX_WAITERS_PER_SESSION);
    }
}
