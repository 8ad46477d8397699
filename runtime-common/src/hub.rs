//! What both runtimes do with a hub link's events (hub mode, [`crate::Transport::Hub`]).

use crate::ReceiveDrops;
use hybridcast_core::Node;
use hybridcast_core::hub::{HubLink, LinkEvent};
use std::io::{self, Write};
use std::time::Instant;

/// Hands the link's events to the node until one is left for the runtime, and returns it
/// ([`HubLink::poll_for_node`]), less the relayed datagrams [`ReceiveDrops`] drops (so the
/// demos' and tests' loss injection works through a hub as over multicast); those are added
/// to `injected`.
pub fn poll_hub(
    link: &mut HubLink,
    node: &mut Node,
    drops: &mut ReceiveDrops,
    injected: &mut u64,
    now: Instant,
) -> Option<LinkEvent> {
    link.poll_for_node_with(now, node, || {
        let drop = drops.drop();
        *injected += u64::from(drop);
        !drop
    })
}

/// Writes the link's output to `w` until all of it is written or `w` would block. An error
/// means the connection is broken.
pub fn write_link(link: &mut HubLink, mut w: impl Write) -> io::Result<()> {
    while let Some(bytes) = link.peek_output() {
        match w.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => link.consume_output(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
