//! The replicated naming service: every member's offers and the cluster view built from them.
//!
//! Invariant: `by_name` is exactly the inverse of `by_member` — a provider appears in the pool
//! of `name` if and only if its offers contain `name` — and every change to either is reported
//! as one `Bound` or `Unbound` event.

mod select;

pub(crate) use select::Selector;
pub use select::Strategy;

use crate::event::Event;
use crate::ids::MemberKey;
use std::collections::BTreeMap;

/// One provider of a service, as selection returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    /// The member offering the service.
    pub member: MemberKey,
    /// The value it offers (an address, a stub, ...).
    pub value: String,
}

/// Offers of every member (this node's included) and the name index over them.
#[derive(Debug, Default)]
pub struct Registry {
    by_member: BTreeMap<MemberKey, BTreeMap<String, String>>,
    by_name: BTreeMap<String, BTreeMap<MemberKey, String>>,
    /// Offers held, all members together.
    offers: usize,
}

/// How many offers a bind may leave behind: a new offer is refused once its member holds
/// `per_member` or the registry holds `total` (changing an existing offer's value always works).
#[derive(Debug, Clone, Copy)]
pub(crate) struct OfferLimits {
    /// Offers of the binding member (`max_offers_per_member`).
    pub(crate) per_member: usize,
    /// Offers of all members together (`max_offers_total`; unlimited for this node's own).
    pub(crate) total: usize,
}

impl Registry {
    /// The pool of `name`: its providers ordered by member key.
    pub fn pool(&self, name: &str) -> impl Iterator<Item = Provider> + '_ {
        self.by_name
            .get(name)
            .into_iter()
            .flat_map(|m| m.iter())
            .map(|(member, value)| Provider {
                member: *member,
                value: value.clone(),
            })
    }

    /// Every service name with at least one provider.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.by_name.keys().map(String::as_str)
    }

    /// The whole view: name → (member → value).
    pub fn view(&self) -> &BTreeMap<String, BTreeMap<MemberKey, String>> {
        &self.by_name
    }

    /// Offers of one member.
    pub fn offers_of(&self, member: MemberKey) -> Option<&BTreeMap<String, String>> {
        self.by_member.get(&member)
    }

    /// Total number of offers held.
    pub fn len(&self) -> usize {
        self.offers
    }

    /// True if no member offers anything.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// `member` offers `name` with `value`. Returns false if refused because the member or the
    /// registry already holds as many offers as `limits` allow.
    pub(crate) fn bind(
        &mut self,
        member: MemberKey,
        name: &str,
        value: &str,
        limits: OfferLimits,
        events: &mut Vec<Event>,
    ) -> bool {
        let offers = self.by_member.entry(member).or_default();
        let full = offers.len() >= limits.per_member || self.offers >= limits.total;
        match offers.get_mut(name) {
            Some(v) if v == value => return true,
            Some(v) => *v = value.to_owned(),
            None if full => {
                if offers.is_empty() {
                    self.by_member.remove(&member);
                }
                return false;
            }
            None => {
                offers.insert(name.to_owned(), value.to_owned());
                self.offers += 1;
            }
        }
        self.by_name
            .entry(name.to_owned())
            .or_default()
            .insert(member, value.to_owned());
        events.push(Event::Bound {
            name: name.to_owned(),
            member,
            value: value.to_owned(),
        });
        true
    }

    /// `member` no longer offers `name`; returns whether it did.
    pub(crate) fn unbind(
        &mut self,
        member: MemberKey,
        name: &str,
        events: &mut Vec<Event>,
    ) -> bool {
        let Some(offers) = self.by_member.get_mut(&member) else {
            return false;
        };
        if offers.remove(name).is_none() {
            return false;
        }
        self.offers -= 1;
        if offers.is_empty() {
            self.by_member.remove(&member);
        }
        if let Some(pool) = self.by_name.get_mut(name) {
            pool.remove(&member);
            if pool.is_empty() {
                self.by_name.remove(name);
            }
        }
        events.push(Event::Unbound {
            name: name.to_owned(),
            member,
        });
        true
    }

    /// Replaces all offers of `member` with `offers`, reporting only the differences. Returns the
    /// number of offers refused by `limits`.
    pub(crate) fn replace(
        &mut self,
        member: MemberKey,
        offers: impl IntoIterator<Item = (String, String)>,
        limits: OfferLimits,
        events: &mut Vec<Event>,
    ) -> usize {
        let mut wanted = BTreeMap::new();
        let mut refused = 0;
        for (name, value) in offers {
            if wanted.len() < limits.per_member || wanted.contains_key(&name) {
                wanted.insert(name, value);
            } else {
                refused += 1;
            }
        }
        let stale: Vec<String> = self
            .by_member
            .get(&member)
            .map(|o| {
                o.keys()
                    .filter(|k| !wanted.contains_key(*k))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for name in stale {
            self.unbind(member, &name, events);
        }
        for (name, value) in wanted {
            if !self.bind(member, &name, &value, limits, events) {
                refused += 1;
            }
        }
        refused
    }

    /// Removes every offer of `member` (it failed, left or restarted).
    pub(crate) fn remove_member(&mut self, member: MemberKey, events: &mut Vec<Event>) {
        let none = OfferLimits {
            per_member: 0,
            total: 0,
        };
        self.replace(member, std::iter::empty(), none, events);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_member(n: usize) -> OfferLimits {
        OfferLimits {
            per_member: n,
            total: usize::MAX,
        }
    }

    #[test]
    fn index_follows_offers_and_reports_changes() {
        let (a, b) = (MemberKey(1), MemberKey(2));
        let mut r = Registry::default();
        let mut ev = Vec::new();
        assert!(r.bind(a, "svc", "a:1", per_member(10), &mut ev));
        assert!(r.bind(b, "svc", "b:1", per_member(10), &mut ev));
        assert!(
            r.bind(a, "svc", "a:1", per_member(10), &mut ev),
            "same value: no event"
        );
        assert_eq!(ev.len(), 2);
        assert_eq!(r.pool("svc").count(), 2);
        let refused = r.replace(
            a,
            vec![("x".into(), "1".into()), ("y".into(), "2".into())],
            per_member(1),
            &mut ev,
        );
        assert_eq!(refused, 1);
        assert_eq!(r.offers_of(a).map(|o| o.len()), Some(1));
        assert_eq!(r.pool("svc").map(|p| p.member).collect::<Vec<_>>(), vec![b]);
        r.remove_member(b, &mut ev);
        assert_eq!(r.pool("svc").count(), 0);
        assert!(!r.view().contains_key("svc"));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn total_bound_refuses_new_offers_but_not_new_values() {
        let (a, b) = (MemberKey(1), MemberKey(2));
        let limits = OfferLimits {
            per_member: 10,
            total: 3,
        };
        let mut r = Registry::default();
        let mut ev = Vec::new();
        assert!(r.bind(a, "x", "1", limits, &mut ev));
        assert!(r.bind(a, "y", "1", limits, &mut ev));
        assert!(r.bind(b, "x", "1", limits, &mut ev));
        assert!(!r.bind(b, "y", "1", limits, &mut ev), "registry full");
        assert!(
            r.bind(b, "x", "2", limits, &mut ev),
            "a new value is no new offer"
        );
        let offers = (0..5).map(|i| (i.to_string(), String::new()));
        assert_eq!(
            r.replace(b, offers, limits, &mut ev),
            4,
            "one slot was b's own"
        );
        assert_eq!(r.len(), 3);
        assert!(r.unbind(a, "x", &mut ev));
        assert!(r.bind(b, "y", "1", limits, &mut ev), "room again");
        assert_eq!(r.len(), 3);
        r.remove_member(a, &mut ev);
        r.remove_member(b, &mut ev);
        assert_eq!((r.len(), r.is_empty()), (0, true));
    }
}
