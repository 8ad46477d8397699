//! A hybridcast member inside an application's own mio loop, beside the application's own
//! service (here a tiny TCP "time of day" server on another token).
//!
//!     cargo run -p hybridcast-mio --example custom_loop -- [seconds]
//!
//! The loop: poll with the driver's deadline as timeout, hand the driver the events of its
//! tokens, serve our own, wake the driver when its deadline passes, drain its events.

use hybridcast_mio::core::Event;
use hybridcast_mio::{Driver, RuntimeConfig};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const APP: Token = Token(0);
const DRIVER_BASE: Token = Token(1);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3);
    let mut poll = Poll::new()?;
    let mut app = TcpListener::bind("127.0.0.1:0".parse()?)?;
    poll.registry()
        .register(&mut app, APP, Interest::READABLE)?;

    let mut driver = Driver::new(RuntimeConfig::new("example", "custom-loop"))?;
    driver.register(poll.registry(), DRIVER_BASE)?;
    driver.bind("time-of-day", &app.local_addr()?.to_string())?;
    println!(
        "serving the time on {} and hybridcast HTTP on {}",
        app.local_addr()?,
        driver.http_addr()
    );

    let mut events = Events::with_capacity(256);
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        let now = Instant::now();
        let timeout = driver
            .poll_timeout()
            .map_or(end, |t| t.min(end))
            .saturating_duration_since(now);
        poll.poll(&mut events, Some(timeout))?;
        let now = Instant::now();
        for e in events.iter() {
            if e.token() == APP {
                // Our own service: answer every waiting client with the time.
                while let Ok((mut stream, _)) = app.accept() {
                    let secs = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
                    let _ = writeln!(stream, "{secs}");
                }
            } else if driver.owns(e.token()) {
                driver.handle_event(e, now);
            }
        }
        if driver.poll_timeout().is_some_and(|t| t <= now) {
            driver.handle_timeout(now);
        }
        while let Some(e) = driver.poll_event() {
            if !matches!(e, Event::Bound { .. } | Event::Unbound { .. }) {
                println!("{e:?}");
            }
        }
    }
    driver.leave();
    println!("left after {seconds} s");
    Ok(())
}
