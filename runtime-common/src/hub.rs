//! What both runtimes do with a hub link's events (hub mode, [`crate::Transport::Hub`]).

use crate::ReceiveDrops;
use hybridcast_core::Node;
use hybridcast_core::hub::{HubLink, LinkEvent};
use std::time::Instant;

/// Hands the link's events to the node until one is left for the runtime, and returns it:
/// relayed datagrams go to [`Node::handle_datagram`] (less those [`ReceiveDrops`] drops, so
/// the demos' and tests' loss injection works through a hub as over multicast), departure
/// notices to [`Node::handle_departure_notice`] (and are returned too, for the log).
/// Injected drops are added to `injected`.
pub fn poll_hub(
    link: &mut HubLink,
    node: &mut Node,
    drops: &mut ReceiveDrops,
    injected: &mut u64,
    now: Instant,
) -> Option<LinkEvent> {
    loop {
        match link.poll_event()? {
            LinkEvent::Datagram { datagram, .. } => {
                if drops.drop() {
                    *injected += 1;
                } else {
                    node.handle_datagram(now, link.config().hub, datagram);
                }
            }
            LinkEvent::Departed {
                member,
                incarnation,
                reason,
            } => {
                node.handle_departure_notice(now, member, incarnation);
                return Some(LinkEvent::Departed {
                    member,
                    incarnation,
                    reason,
                });
            }
            other => return Some(other),
        }
    }
}

/// Logs a link event; true if it says the connection is gone ([`LinkEvent::Lost`]).
pub fn log_link_event(e: &LinkEvent) -> bool {
    match e {
        LinkEvent::Registered => tracing::info!("registered with the hub"),
        LinkEvent::Lost(why) => {
            tracing::info!(?why, "hub connection lost; reconnecting");
            return true;
        }
        LinkEvent::Departed {
            member,
            incarnation,
            reason,
        } => tracing::debug!(member = member.0, incarnation, %reason, "hub: member departed"),
        LinkEvent::Joined {
            member,
            incarnation,
        } => tracing::debug!(member = member.0, incarnation, "hub: member registered"),
        LinkEvent::Undeliverable { to } => tracing::debug!(to = to.0, "hub: undeliverable"),
        LinkEvent::Datagram { .. } => {}
    }
    false
}
