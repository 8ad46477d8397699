//! One async member: it joins the cluster `hybridcast` on the default group (the same as
//! `hybridcast node` uses, so it meets mio members started that way), offers one service,
//! prints its events as they come and its view every two seconds, then leaves.
//!
//!     cargo run -p hybridcast-smol --example member -- [name] [seconds]

use futures_lite::{StreamExt, future};
use hybridcast_smol::{Node, RuntimeConfig};
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "smol-example".into());
    let seconds: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    smol::block_on(async {
        let node = Node::start(RuntimeConfig::new("hybridcast", &name)).await?;
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
