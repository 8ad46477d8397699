//! Hub-mode targets: the frame codec, and a hub with members' links driven by arbitrary input.
//!
//! `hub_frames` decodes a byte stream as frames; whatever decodes must encode back to exactly
//! the bytes it came from (the encoding is canonical), and the decoder never holds more than
//! one frame beyond what was pushed.
//!
//! `hub_ops` runs one [`Hub`] (small limits, with or without a key) and a few [`HubLink`]s.
//! The input picks operations: open or drop a connection, deliver some or all bytes one way or
//! the other, inject raw bytes or well-formed frames (a registration tagged for the
//! connection's challenge, group and direct frames numbered correctly or not, pings, byes),
//! send datagrams through a link, advance time. After every operation:
//! - every byte the hub and the links write parses as frames (they never write garbage);
//! - no connection's queue exceeds `max_queued_bytes` (plus its closing frame), no link's
//!   unacknowledged bytes exceed `max_unacked_bytes`, and at most `max_connections` members are
//!   registered;
//! - a relayed datagram goes only to a registered member, names a registered origin and never
//!   returns to its sender.

use super::input::{Input, Script};
use bytes::Bytes;
use hybridcast_core::hub::frame::{Frame, FrameDecoder, Hello, LEN_PREFIX, MAX_FRAME_LEN};
use hybridcast_core::hub::{
    ConnId, Hub, HubAction, HubConfig, HubLink, LinkAction, LinkConfig, frame,
};
use hybridcast_core::ids::{ClusterId, MemberKey};
use hybridcast_core::wire::{self, Header};
use hybridcast_core::{ClusterKey, Keyring};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const CLUSTER: &str = "fz";
const CONNS: usize = 4;
const LINKS: usize = 3;

/// `FrameDecoder` over arbitrary bytes pushed in arbitrary pieces; the round trip.
pub fn hub_frames(data: &[u8]) {
    let mut input = Input::new(data);
    let mut dec = FrameDecoder::new();
    let mut stream = Vec::new();
    let mut decoded = Vec::new();
    while !input.is_empty() {
        let piece = input.bytes(4096);
        stream.extend_from_slice(piece);
        dec.push(piece);
        assert!(dec.buffered() <= 2 * (LEN_PREFIX + MAX_FRAME_LEN));
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => decoded.push(f),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let again: Vec<u8> = decoded.iter().flat_map(|f| f.encode().to_vec()).collect();
    assert_eq!(
        &again[..],
        &stream[..again.len()],
        "frames re-encode to their bytes"
    );
    assert_eq!(again.len() + dec.buffered(), stream.len());
}

fn key() -> Keyring {
    Keyring::single(ClusterKey::new(vec![0x5a; 32]).expect("key"))
}

fn datagram(member: MemberKey, incarnation: u64, extra: &[u8]) -> Bytes {
    let h = Header {
        cluster: ClusterId::of(CLUSTER),
        sender: member,
        incarnation,
    };
    let mut d = wire::encode_leave(&h).to_vec();
    d.extend_from_slice(extra);
    Bytes::from(d)
}

/// Reads a byte stream and checks that it parses as frames.
#[derive(Default)]
struct Reader {
    dec: FrameDecoder,
}

impl Reader {
    fn take(&mut self, bytes: &[u8]) -> Vec<Frame> {
        self.dec.push(bytes);
        let mut out = Vec::new();
        loop {
            match self.dec.next_frame() {
                Ok(Some(f)) => out.push(f),
                Ok(None) => return out,
                Err(e) => panic!("unparsable output: {e}"),
            }
        }
    }
}

/// A raw connection the input drives by hand (a hostile or odd client).
struct Raw {
    id: ConnId,
    reader: Reader,
    nonce: Option<[u8; frame::NONCE_LEN]>,
    member: MemberKey,
    incarnation: u64,
    next_id: u64,
}

/// A member's link and the hub connection it is on.
struct Member {
    link: HubLink,
    conn: Option<ConnId>,
    /// What the hub wrote to it, not yet delivered.
    inbound: Vec<u8>,
    reader: Reader,
    key: MemberKey,
}

/// A hub and its clients under arbitrary operations.
pub fn hub_ops(data: &[u8]) {
    run(data);
}

/// [`hub_ops`], returning the hub's counters at the end.
fn run(data: &[u8]) -> hybridcast_core::hub::HubStats {
    let mut input = Input::new(data);
    let keyed = input.bool();
    let mut config = HubConfig::new(CLUSTER);
    config.max_connections = CONNS;
    config.max_queued_bytes = 2 * (LEN_PREFIX + MAX_FRAME_LEN);
    if keyed {
        config.keys = Some(key());
    }
    let max_queue = config.max_queued_bytes;
    let mut now = Instant::now();
    let mut secret = [0u8; 32];
    secret[..8].copy_from_slice(&input.u64().to_le_bytes());
    let Ok(mut hub) = Hub::new(config, secret) else {
        panic!("valid hub settings refused");
    };
    let mut next_conn = 1u64;
    let mut raws: Vec<Raw> = Vec::new();
    let mut members: Vec<Member> = (0..LINKS)
        .map(|i| {
            let key = MemberKey::of(&format!("m{i}"));
            let mut lc = LinkConfig::new("127.0.0.1:9".parse().expect("addr"));
            lc.max_unacked_bytes = LEN_PREFIX + MAX_FRAME_LEN;
            let link = HubLink::new(
                lc,
                ClusterId::of(CLUSTER),
                key,
                1 + i as u64,
                keyed.then(self::key),
                now,
                i as u64,
            )
            .expect("link");
            Member {
                link,
                conn: None,
                inbound: Vec::new(),
                reader: Reader::default(),
                key,
            }
        })
        .collect();
    let mut registered: BTreeMap<ConnId, MemberKey> = BTreeMap::new();
    let mut steps = 0;
    while !input.is_empty() && steps < 400 {
        steps += 1;
        match input.u8() % 12 {
            0 => {
                // A raw connection.
                let id = ConnId(next_conn);
                next_conn += 1;
                hub.accept(now, id);
                raws.push(Raw {
                    id,
                    reader: Reader::default(),
                    nonce: None,
                    member: MemberKey::of(&format!("r{}", input.below(3))),
                    incarnation: u64::from(input.u8()),
                    next_id: 1,
                });
            }
            1 if !raws.is_empty() => {
                let r = &raws[input.below(raws.len())];
                let bytes = input.bytes(70_000);
                hub.handle_bytes(now, r.id, bytes);
            }
            2 if !raws.is_empty() => {
                // A well-formed frame from a raw connection, maybe numbered wrongly.
                let i = input.below(raws.len());
                let choice = input.u8() % 6;
                let bad_number = input.u8() == 0;
                let r = &mut raws[i];
                let f = match choice {
                    0 => {
                        let nonce = r.nonce.unwrap_or([0; frame::NONCE_LEN]);
                        let tag = keyed.then(|| {
                            frame::hello_tag(
                                &key(),
                                &nonce,
                                ClusterId::of(CLUSTER),
                                r.member,
                                r.incarnation,
                            )
                        });
                        Frame::Hello(Hello {
                            cluster: ClusterId::of(CLUSTER),
                            member: r.member,
                            incarnation: r.incarnation,
                            tag,
                        })
                    }
                    1 | 2 => {
                        let id = if bad_number { r.next_id + 5 } else { r.next_id };
                        r.next_id += 1;
                        let d = datagram(r.member, r.incarnation, input.bytes(2000));
                        if choice == 1 {
                            Frame::Group { id, datagram: d }
                        } else {
                            Frame::Direct {
                                id,
                                to: MemberKey::of(&format!("m{}", input.below(LINKS))),
                                datagram: d,
                            }
                        }
                    }
                    3 => {
                        let id = r.next_id;
                        r.next_id += 1;
                        Frame::Ping { id }
                    }
                    4 => Frame::Bye {
                        reason: frame::CloseReason::Closed,
                    },
                    _ => Frame::Ack { id: 1 },
                };
                hub.handle_bytes(now, r.id, &f.encode());
            }
            3 if !raws.is_empty() => {
                let i = input.below(raws.len());
                let r = raws.remove(i);
                hub.disconnect(now, r.id);
                registered.remove(&r.id);
            }
            4 => {
                let m = input.below(LINKS);
                let extra = input.bytes(3000);
                let d = datagram(members[m].key, 1 + m as u64, extra);
                let _ = members[m].link.send_group(now, d);
            }
            5 => {
                let m = input.below(LINKS);
                let to = MemberKey::of(&format!("m{}", input.below(LINKS)));
                let d = datagram(members[m].key, 1 + m as u64, input.bytes(100));
                let _ = members[m].link.send_direct(now, to, d);
            }
            6 => {
                // Deliver part of what the hub wrote to a member.
                let m = input.below(LINKS);
                let n = usize::from(input.u16());
                let mem = &mut members[m];
                let n = n.min(mem.inbound.len());
                let part: Vec<u8> = mem.inbound.drain(..n).collect();
                mem.link.handle_bytes(now, &part);
            }
            7 => {
                // A member's connection breaks.
                let m = input.below(LINKS);
                if let Some(c) = members[m].conn.take() {
                    hub.disconnect(now, c);
                    registered.remove(&c);
                    members[m].inbound.clear();
                    members[m].reader = Reader::default();
                    members[m].link.connection_lost(now);
                }
            }
            8 => {
                let m = input.below(LINKS);
                let bytes = input.bytes(200);
                members[m].link.handle_bytes(now, bytes);
            }
            9 => members[input.below(LINKS)].link.close(),
            _ => {
                now += Duration::from_millis(u64::from(input.u16()) * 4);
                hub.handle_timeout(now);
                for m in &mut members {
                    m.link.handle_timeout(now);
                }
            }
        }
        settle(
            now,
            &mut hub,
            &mut raws,
            &mut members,
            &mut next_conn,
            &mut registered,
            max_queue,
        );
        let s = hub.stats();
        assert!(s.registered <= CONNS, "{} registered", s.registered);
        for m in &members {
            assert!(m.link.stats().unacked_bytes <= LEN_PREFIX + MAX_FRAME_LEN);
        }
    }
    hub.stats()
}

/// Carries out actions and moves queued bytes (the hub's output into the clients' inbound
/// buffers, the links' output into the hub), checking every byte written parses.
fn settle(
    now: Instant,
    hub: &mut Hub,
    raws: &mut Vec<Raw>,
    members: &mut [Member],
    next_conn: &mut u64,
    registered: &mut BTreeMap<ConnId, MemberKey>,
    max_queue: usize,
) {
    for _ in 0..64 {
        let mut moved = false;
        for m in members.iter_mut() {
            while let Some(a) = m.link.poll_action() {
                moved = true;
                match a {
                    LinkAction::Connect { .. } => {
                        let id = ConnId(*next_conn);
                        *next_conn += 1;
                        hub.accept(now, id);
                        m.conn = Some(id);
                        m.inbound.clear();
                        m.reader = Reader::default();
                        m.link.connected(now);
                    }
                    LinkAction::Close => {
                        if let Some(c) = m.conn.take() {
                            hub.disconnect(now, c);
                            registered.remove(&c);
                        }
                    }
                }
            }
            if let Some(c) = m.conn {
                let mut out = Vec::new();
                while let Some(b) = m.link.peek_output() {
                    out.extend_from_slice(b);
                    let n = b.len();
                    m.link.consume_output(n);
                }
                if !out.is_empty() {
                    moved = true;
                    let mut check = Reader::default();
                    let _ = check.take(&out);
                    hub.handle_bytes(now, c, &out);
                }
            }
        }
        while let Some(HubAction::Close { conn, .. }) = hub.poll_action() {
            moved = true;
            let queued = hub.queued_bytes(conn);
            assert!(queued <= 64, "a closing connection holds only its bye");
            drain_to(hub, conn, raws, members, registered);
            hub.disconnect(now, conn);
            registered.remove(&conn);
            raws.retain(|r| r.id != conn);
            for m in members.iter_mut() {
                if m.conn == Some(conn) {
                    let inbound = std::mem::take(&mut m.inbound);
                    m.link.handle_bytes(now, &inbound);
                    if m.conn == Some(conn) {
                        m.conn = None;
                        m.link.connection_lost(now);
                    }
                }
            }
        }
        while let Some(conn) = hub.poll_ready() {
            assert!(hub.queued_bytes(conn) <= max_queue + 64);
            if drain_to(hub, conn, raws, members, registered) {
                moved = true;
            }
        }
        if !moved {
            return;
        }
    }
}

/// Moves what the hub queued for `conn` to its client; checks the frames.
fn drain_to(
    hub: &mut Hub,
    conn: ConnId,
    raws: &mut [Raw],
    members: &mut [Member],
    registered: &mut BTreeMap<ConnId, MemberKey>,
) -> bool {
    let mut out = Vec::new();
    while let Some(b) = hub.peek_output(conn) {
        out.extend_from_slice(b);
        let n = b.len();
        hub.consume_output(conn, n);
    }
    if out.is_empty() {
        return false;
    }
    // Frames in order: a relayed datagram only after this connection's welcome, never its
    // own coming back.
    let mut check = |frames: &[Frame], me: MemberKey| {
        for f in frames {
            match f {
                Frame::Welcome => {
                    registered.insert(conn, me);
                }
                Frame::Deliver { from, .. } => {
                    assert!(registered.contains_key(&conn), "delivered before welcome");
                    assert_ne!(*from, me, "a datagram came back to its sender");
                }
                _ => {}
            }
        }
    };
    if let Some(r) = raws.iter_mut().find(|r| r.id == conn) {
        let frames = r.reader.take(&out);
        for f in &frames {
            match f {
                Frame::Challenge { nonce } => r.nonce = Some(*nonce),
                Frame::Welcome => r.next_id = 1,
                _ => {}
            }
        }
        check(&frames, r.member);
    } else if let Some(m) = members.iter_mut().find(|m| m.conn == Some(conn)) {
        let frames = m.reader.take(&out);
        check(&frames, m.key);
        m.inbound.extend_from_slice(&out);
    }
    true
}

/// Seeds: a keyed and an open hub with traffic of every kind.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let traffic = |keyed: bool| {
        let mut s = Script::new().u8(u8::from(keyed)).u64(7);
        // Time for the links to connect, then a raw client registers and sends.
        s = s.u8(11).u16(10);
        s = s.u8(0).u8(1).u8(9);
        s = s.u8(2).u8(0).u8(0).u8(1);
        s = s.u8(2).u8(0).u8(1).u8(1).bytes(b"group");
        s = s.u8(2).u8(0).u8(2).u8(1).bytes(b"direct").u8(1);
        s = s.u8(2).u8(0).u8(3).u8(1);
        // Each link reads its challenge, then its welcome: registered.
        for _ in 0..2 {
            for m in 0..3u8 {
                s = s.u8(6).u8(m).u16(4000);
            }
        }
        for m in 0..3u8 {
            s = s.u8(4).u8(m).bytes(b"hello from a link");
            s = s.u8(5).u8(m).u8((m + 1) % 3).bytes(b"to one");
        }
        s = s.u8(2).u8(0).u8(1).u8(1).bytes(b"group again");
        s = s.u8(11).u16(300);
        for m in 0..3u8 {
            s = s.u8(6).u8(m).u16(60_000);
        }
        s = s.u8(7).u8(1).u8(11).u16(100);
        s = s.u8(3).u8(0).u8(9).u8(0);
        s.finish()
    };
    vec![
        ("open".to_owned(), traffic(false)),
        ("keyed".to_owned(), traffic(true)),
    ]
}

/// Seeds for `hub_frames`: one of every frame, pushed in pieces.
pub fn frame_seeds() -> Vec<(String, Vec<u8>)> {
    let d = datagram(MemberKey::of("m0"), 1, b"x");
    let frames = [
        Frame::Challenge { nonce: [1; 16] },
        Frame::Hello(Hello {
            cluster: ClusterId::of(CLUSTER),
            member: MemberKey::of("m0"),
            incarnation: 1,
            tag: Some([2; 16]),
        }),
        Frame::Welcome,
        Frame::Group {
            id: 1,
            datagram: d.clone(),
        },
        Frame::Direct {
            id: 2,
            to: MemberKey::of("m1"),
            datagram: d.clone(),
        },
        Frame::Ping { id: 3 },
        Frame::Deliver {
            from: MemberKey::of("m2"),
            datagram: d,
        },
        Frame::Ack { id: 3 },
        Frame::Departed {
            member: MemberKey::of("m2"),
            incarnation: 4,
            reason: frame::CloseReason::Idle,
        },
        Frame::Bye {
            reason: frame::CloseReason::Full,
        },
    ];
    let stream: Vec<u8> = frames.iter().flat_map(|f| f.encode().to_vec()).collect();
    let mut s = Script::new();
    for chunk in stream.chunks(37) {
        s = s.bytes(chunk);
    }
    vec![("every_frame".to_owned(), s.finish())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_register_members_and_relay_both_ways() {
        for (name, bytes) in seeds() {
            let s = run(&bytes);
            assert!(s.registrations >= 4, "{name}: {s:?}");
            assert!(s.group_frames >= 4, "{name}: {s:?}");
            assert!(s.direct_frames >= 1, "{name}: {s:?}");
            assert!(s.copies_out >= 8, "{name}: {s:?}");
        }
    }
}
