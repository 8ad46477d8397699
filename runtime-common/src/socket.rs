//! Building the sockets: the multicast UDP socket (socket2) and the HTTP listener.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};

/// Bytes of kernel receive buffer asked for on the multicast socket (the kernel may cap it).
const RECV_BUFFER: usize = 4 << 20;

/// A non-blocking UDP socket joined to `group` on `interface`, sending there with `ttl`.
///
/// Several members on one host share the group port (address and port reuse). On Linux the
/// socket is bound to the group address itself and `IP_MULTICAST_ALL` is off, so it receives
/// only this group's datagrams, not every group some process on the host joined. Loopback is
/// on, so members on one host hear each other.
pub fn multicast(group: SocketAddrV4, interface: Ipv4Addr, ttl: u32) -> io::Result<UdpSocket> {
    if !group.ip().is_multicast() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a multicast address", group.ip()),
        ));
    }
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    // Best effort: a smaller buffer only means more loss under bursts.
    let _ = socket.set_recv_buffer_size(RECV_BUFFER);
    #[cfg(target_os = "linux")]
    {
        socket.set_multicast_all_v4(false)?;
        socket.bind(&SocketAddr::V4(group).into())?;
    }
    #[cfg(not(target_os = "linux"))]
    socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, group.port())).into())?;
    socket.join_multicast_v4(group.ip(), &interface)?;
    socket.set_multicast_if_v4(&interface)?;
    socket.set_multicast_loop_v4(true)?;
    socket.set_multicast_ttl_v4(ttl)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A non-blocking TCP listener on `addr` (port 0 picks a free port).
pub fn listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_unicast_group() {
        let e = multicast(
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, 4000),
            Ipv4Addr::LOCALHOST,
            1,
        )
        .expect_err("unicast");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn two_sockets_share_a_group_port_and_hear_each_other() {
        let group = SocketAddrV4::new(Ipv4Addr::new(239, 255, 77, 1), 47_101);
        let a = multicast(group, Ipv4Addr::LOCALHOST, 1).expect("a");
        let b = multicast(group, Ipv4Addr::LOCALHOST, 1).expect("b");
        b.set_nonblocking(false).expect("blocking");
        b.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        a.send_to(b"ping", group).expect("send");
        let mut buf = [0u8; 16];
        let (n, _) = b.recv_from(&mut buf).expect("receive");
        assert_eq!(&buf[..n], b"ping");
    }
}
