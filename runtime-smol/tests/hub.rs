//! A smol member in hub mode against a hub scripted by the test on a loopback listener (the
//! frames come from the core's codec): it keeps trying while no hub listens, registers,
//! sends its group datagrams as frames, connects again by itself when the hub drops it, and
//! on a graceful leave sends its Leave datagram, then a goodbye, then closes its side. The
//! real hub with members of both runtimes is tested in `runtime-mio/tests/hub_smol.rs`.

use futures_lite::future;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use hybridcast_smol::core::hub::frame::Hello;
use hybridcast_smol::core::hub::{CloseReason, Frame, FrameDecoder, LinkConfig};
use hybridcast_smol::core::wire::{self, Kind};
use hybridcast_smol::core::{ClusterId, Config};
use hybridcast_smol::{Node, RuntimeConfig, Transport};
use smol::Async;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::time::{Duration, Instant};

const CLUSTER: &str = "smol-hub-test";

/// Bounds every wait for the member (a bound on waiting, not a timing assertion).
const PATIENCE: Duration = Duration::from_secs(30);

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    let late = async {
        async_io::Timer::after(PATIENCE).await;
        panic!("gave up waiting for {what}");
    };
    future::or(f, late).await
}

/// Polls `f` until it holds or [`PATIENCE`] passes.
async fn eventually<F: Future<Output = bool>>(mut f: impl FnMut() -> F) -> bool {
    let end = Instant::now() + PATIENCE;
    while Instant::now() < end {
        if f().await {
            return true;
        }
        async_io::Timer::after(Duration::from_millis(20)).await;
    }
    false
}

/// The test's side of one hub connection.
struct Scripted {
    stream: Async<TcpStream>,
    decoder: FrameDecoder,
    buf: Vec<u8>,
}

impl Scripted {
    async fn accept(listener: &Async<TcpListener>) -> Scripted {
        let (stream, _) = within("the member to connect", listener.accept())
            .await
            .expect("accept");
        Scripted {
            stream,
            decoder: FrameDecoder::new(),
            buf: vec![0; 64 << 10],
        }
    }

    async fn send(&mut self, frame: Frame) {
        self.stream
            .write_all(&frame.encode())
            .await
            .expect("write to the member");
    }

    /// The member's next frame, `None` once it closed its side. Numbered frames are
    /// acknowledged, as the hub does.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.decoder.next_frame().expect("a valid frame") {
                if let Frame::Group { id, .. } | Frame::Direct { id, .. } | Frame::Ping { id } =
                    &frame
                {
                    let id = *id;
                    self.send(Frame::Ack { id }).await;
                }
                return Some(frame);
            }
            let n = within("a frame from the member", self.stream.read(&mut self.buf))
                .await
                .expect("read from the member");
            if n == 0 {
                return None;
            }
            self.decoder.push(&self.buf[..n]);
        }
    }

    /// Challenge, hello, welcome.
    async fn register(&mut self) -> Hello {
        self.send(Frame::Challenge { nonce: [7; 16] }).await;
        let hello = match self.next().await {
            Some(Frame::Hello(h)) => h,
            other => panic!("expected a hello, got {other:?}"),
        };
        self.send(Frame::Welcome).await;
        hello
    }

    /// Reads up to the member's first group datagram of kind `kind`.
    async fn until_group(&mut self, kind: Kind) -> Hello {
        within("a group datagram of that kind", self.scan(kind)).await
    }

    async fn scan(&mut self, kind: Kind) -> Hello {
        loop {
            match self.next().await {
                Some(Frame::Group { datagram, .. }) => {
                    let (header, k) = wire::decode_header(&datagram).expect("a datagram");
                    if k == kind {
                        return Hello {
                            cluster: header.cluster,
                            member: header.sender,
                            incarnation: header.incarnation,
                            tag: None,
                        };
                    }
                }
                Some(_) => {}
                None => panic!("the member closed the connection"),
            }
        }
    }
}

#[test]
fn a_member_waits_for_the_hub_reconnects_and_says_goodbye() {
    smol::block_on(async {
        // An address where nothing listens yet.
        let addr: SocketAddr = {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
            l.local_addr().expect("address")
        };
        let mut config = RuntimeConfig::new(CLUSTER, "m");
        // Configured but never used in hub mode.
        config.group = SocketAddrV4::new(Ipv4Addr::new(239, 255, 78, 9), 47_421);
        config.core = Config {
            heartbeat_interval: Duration::from_millis(100),
            ..Config::default()
        };
        config.transport = Transport::Hub(LinkConfig::new(addr));
        let node = Node::start(config).await.expect("start");
        assert!(!node.hub_registered().await.expect("running"));

        // It keeps trying (with backoff) while no hub listens.
        assert!(
            eventually(|| async {
                let link = node.hub_stats().await.expect("running").expect("hub mode");
                link.connects >= 2
            })
            .await
        );
        let listener = Async::<TcpListener>::bind(addr).expect("bind the scripted hub");

        // It registers, then its heartbeats come as group frames.
        let mut first = Scripted::accept(&listener).await;
        let hello = first.register().await;
        assert_eq!(hello.cluster, ClusterId::of(CLUSTER));
        assert_eq!(hello.tag, None, "no cluster key, no tag");
        let sender = first.until_group(Kind::Heartbeat).await;
        assert_eq!(
            (sender.member, sender.incarnation),
            (hello.member, hello.incarnation)
        );
        assert!(node.hub_registered().await.expect("running"));
        let link = node.hub_stats().await.expect("running").expect("hub mode");
        assert_eq!(link.registrations, 1, "{link:?}");
        assert!(link.losses >= 1 && link.datagrams_out >= 1, "{link:?}");

        // The hub drops the connection: the member connects again by itself.
        drop(first);
        let mut second = Scripted::accept(&listener).await;
        let again = second.register().await;
        assert_eq!(again, hello, "the same member and incarnation");
        second.until_group(Kind::Heartbeat).await;
        let link = node.hub_stats().await.expect("running").expect("hub mode");
        assert_eq!(link.registrations, 2, "{link:?}");

        // A graceful leave: the Leave datagram, then the goodbye, then the member's side
        // closes; the leave ends once the hub closed its side.
        let leaving = smol::spawn(node.leave());
        second.until_group(Kind::Leave).await;
        let mut after = Vec::new();
        while let Some(frame) = second.next().await {
            after.push(frame);
        }
        assert_eq!(
            after,
            [Frame::Bye {
                reason: CloseReason::Closed
            }],
            "after the Leave datagram: the goodbye, then the end of the stream"
        );
        drop(second);
        within("the leave to end", leaving).await;
    });
}
