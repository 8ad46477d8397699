//! One async member: it joins the cluster `hybridcast` on the default group (the same as
//! `hybridcast node` uses, so it meets mio members started that way), offers one service,
//! prints its events as they come and its view every two seconds, then leaves. Given a hub
//! address as a third argument, it joins through that hub (hub mode) instead of multicast.
//!
//!     cargo run -p hybridcast-smol --example member -- [name] [seconds] [hub address]

use futures_lite::{StreamExt, future};
use hybridcast_smol::core::hub::LinkConfig;
use hybridcast_smol::{Node, RuntimeConfig, Transport};
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "smol-example".into());
    let seconds: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    let hub: Option<std::net::SocketAddr> = args.next().map(|s| s.parse()).transpose()?;
    let mut config = RuntimeConfig::new("hybridcast", &name);
    if let Some(hub) = hub {
        config.transport = Transport::Hub(LinkConfig::new(hub));
    }
    smol::block_on(async {
        let node = Node::start(config).await?;
        println!("{name} serves HTTP on {}", node.http_addr());
        node.bind("smol-example", &node.http_addr().to_string())
            .await??;
        let mut events = node.events();
        let end = Instant::now() + Duration::from_secs(seconds);
        let mut next_view = Instant::now() + Duration::from_secs(2);
        while Instant::now() < end {
            let wake = next_view.min(end);
            let event = future::or(async { events.next().await }, async {
                async_io::Timer::at(wake).await;
                None
            });
            if let Some(e) = event.await {
                println!("event: {e:?}");
            }
            if Instant::now() >= next_view {
                print_view(&node).await?;
                next_view += Duration::from_secs(2);
            }
        }
        print_view(&node).await?;
        node.leave().await;
        println!("{name} left");
        Ok(())
    })
}

async fn print_view(node: &Node) -> Result<(), Box<dyn std::error::Error>> {
    let v = node.view().await?;
    println!("view of {} (joined: {}):", v.name, v.joined);
    for m in &v.members {
        println!("  {:<20} {:<8} {}", m.name, m.state, m.http);
    }
    for (offer, providers) in &v.offers {
        for (member, value) in providers {
            println!("  {offer} = {value} (from {member})");
        }
    }
    Ok(())
}
