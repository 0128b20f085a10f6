//! `wasi:sockets/tcp` as the guest sees it: wasmtime-wasi's implementation,
//! with one check of capsa's in `accept`.
//!
//! A guest may listen without a grant on an ephemeral loopback port (a
//! "private listener", see `net_guard::check_addr`): CPython for WASI makes
//! `socket.socketpair()` that way. Such a listener must take only the
//! guest's own connections. Only `accept` knows which listener a connection
//! came to, so that is decided here; every other call is passed through.

use crate::Guard;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use wasmtime::component::{HasData, Resource};
use wasmtime_wasi::p2::SocketError;
use wasmtime_wasi::p2::bindings::sockets::network::{self, ErrorCode, Network};
use wasmtime_wasi::p2::bindings::sync::sockets::tcp::{
    self, Duration, HostTcpSocket, InputStream, IpAddressFamily, IpSocketAddress, OutputStream,
    Pollable, ShutdownType, TcpSocket,
};
use wasmtime_wasi::sockets::WasiSocketsCtxView;

pub struct GuardedTcp<'a> {
    pub inner: WasiSocketsCtxView<'a>,
    pub guard: &'a Guard,
}

pub struct GuardedTcpData;

impl HasData for GuardedTcpData {
    type Data<'a> = GuardedTcp<'a>;
}

impl tcp::Host for GuardedTcp<'_> {}

impl network::Host for GuardedTcp<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        network::Host::convert_error_code(&mut self.inner, error)
    }

    fn network_error_code(
        &mut self,
        err: Resource<network::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        network::Host::network_error_code(&mut self.inner, err)
    }
}

impl network::HostNetwork for GuardedTcp<'_> {
    fn drop(&mut self, this: Resource<Network>) -> wasmtime::Result<()> {
        network::HostNetwork::drop(&mut self.inner, this)
    }
}

fn borrow<T: 'static>(r: &Resource<T>) -> Resource<T> {
    Resource::new_borrow(r.rep())
}

/// Whether the connection from `peer` is the guest's own: every socket on
/// the machine bound at `peer` is one of this process's (the guest's, as
/// capsa itself holds no loopback connections). Another process may bind the
/// same address beside one of the guest's (SO_REUSEADDR), so one match is
/// not enough: all of them must be ours.
#[cfg(target_os = "linux")]
pub fn peer_is_ours(peer: SocketAddr) -> bool {
    let ours: HashSet<u64> = std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let link = std::fs::read_link(e.ok()?.path()).ok()?;
            let link = link.to_str()?;
            link.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    let peer = (peer.ip().to_canonical(), peer.port());
    let mut found = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(inode)) = (fields.get(1), fields.get(9)) else {
                continue;
            };
            let Some(local) = proc_addr(local) else {
                return false;
            };
            if (local.ip().to_canonical(), local.port()) != peer {
                continue;
            }
            // A closed connection lingering in TIME_WAIT has no socket.
            match inode.parse::<u64>() {
                Ok(0) => continue,
                Ok(i) if ours.contains(&i) => found = true,
                _ => return false,
            }
        }
    }
    found
}

#[cfg(not(target_os = "linux"))]
pub fn peer_is_ours(_peer: SocketAddr) -> bool {
    false
}

/// An address of /proc/net/tcp{,6}: the address's 32-bit words in the
/// machine's byte order, in hex, then `:` and the port in hex.
#[cfg(target_os = "linux")]
fn proc_addr(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for i in (0..addr.len()).step_by(8) {
        let word = u32::from_str_radix(addr.get(i..i + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

impl GuardedTcp<'_> {
    fn is_private_listener(&mut self, listener: &Resource<TcpSocket>) -> bool {
        let Ok(local) = HostTcpSocket::local_address(&mut self.inner, borrow(listener)) else {
            return false;
        };
        self.guard
            .private_listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&SocketAddr::from(local))
    }

    /// Drops a connection accepted on a private listener from someone else.
    fn reset(
        &mut self,
        sock: Resource<TcpSocket>,
        input: Resource<InputStream>,
        output: Resource<OutputStream>,
    ) -> wasmtime::Result<()> {
        self.inner.table.delete(input)?;
        self.inner.table.delete(output)?;
        HostTcpSocket::drop(&mut self.inner, sock)
    }
}

impl HostTcpSocket for GuardedTcp<'_> {
    fn accept(
        &mut self,
        this: Resource<TcpSocket>,
    ) -> Result<
        (
            Resource<TcpSocket>,
            Resource<InputStream>,
            Resource<OutputStream>,
        ),
        SocketError,
    > {
        if !self.is_private_listener(&this) {
            return HostTcpSocket::accept(&mut self.inner, this);
        }
        loop {
            let (sock, input, output) = HostTcpSocket::accept(&mut self.inner, borrow(&this))?;
            let peer = HostTcpSocket::remote_address(&mut self.inner, borrow(&sock))
                .ok()
                .map(SocketAddr::from);
            if peer.is_some_and(peer_is_ours) {
                return Ok((sock, input, output));
            }
            // Someone else: gone before the guest sees it; wait for the next.
            self.reset(sock, input, output).map_err(SocketError::trap)?;
        }
    }

    fn start_bind(
        &mut self,
        this: Resource<TcpSocket>,
        network: Resource<Network>,
        local_address: IpSocketAddress,
    ) -> Result<(), SocketError> {
        HostTcpSocket::start_bind(&mut self.inner, this, network, local_address)
    }

    fn finish_bind(&mut self, this: Resource<TcpSocket>) -> Result<(), SocketError> {
        HostTcpSocket::finish_bind(&mut self.inner, this)
    }

    fn start_connect(
        &mut self,
        this: Resource<TcpSocket>,
        network: Resource<Network>,
        remote_address: IpSocketAddress,
    ) -> Result<(), SocketError> {
        HostTcpSocket::start_connect(&mut self.inner, this, network, remote_address)
    }

    fn finish_connect(
        &mut self,
        this: Resource<TcpSocket>,
    ) -> Result<(Resource<InputStream>, Resource<OutputStream>), SocketError> {
        HostTcpSocket::finish_connect(&mut self.inner, this)
    }

    fn start_listen(&mut self, this: Resource<TcpSocket>) -> Result<(), SocketError> {
        HostTcpSocket::start_listen(&mut self.inner, this)
    }

    fn finish_listen(&mut self, this: Resource<TcpSocket>) -> Result<(), SocketError> {
        HostTcpSocket::finish_listen(&mut self.inner, this)
    }

    fn local_address(&mut self, this: Resource<TcpSocket>) -> Result<IpSocketAddress, SocketError> {
        HostTcpSocket::local_address(&mut self.inner, this)
    }

    fn remote_address(
        &mut self,
        this: Resource<TcpSocket>,
    ) -> Result<IpSocketAddress, SocketError> {
        HostTcpSocket::remote_address(&mut self.inner, this)
    }

    fn is_listening(&mut self, this: Resource<TcpSocket>) -> wasmtime::Result<bool> {
        HostTcpSocket::is_listening(&mut self.inner, this)
    }

    fn address_family(&mut self, this: Resource<TcpSocket>) -> wasmtime::Result<IpAddressFamily> {
        HostTcpSocket::address_family(&mut self.inner, this)
    }

    fn set_listen_backlog_size(
        &mut self,
        this: Resource<TcpSocket>,
        value: u64,
    ) -> Result<(), SocketError> {
        HostTcpSocket::set_listen_backlog_size(&mut self.inner, this, value)
    }

    fn keep_alive_enabled(&mut self, this: Resource<TcpSocket>) -> Result<bool, SocketError> {
        HostTcpSocket::keep_alive_enabled(&mut self.inner, this)
    }

    fn set_keep_alive_enabled(
        &mut self,
        this: Resource<TcpSocket>,
        value: bool,
    ) -> Result<(), SocketError> {
        HostTcpSocket::set_keep_alive_enabled(&mut self.inner, this, value)
    }

    fn keep_alive_idle_time(&mut self, this: Resource<TcpSocket>) -> Result<Duration, SocketError> {
        HostTcpSocket::keep_alive_idle_time(&mut self.inner, this)
    }

    fn set_keep_alive_idle_time(
        &mut self,
        this: Resource<TcpSocket>,
        value: Duration,
    ) -> Result<(), SocketError> {
        HostTcpSocket::set_keep_alive_idle_time(&mut self.inner, this, value)
    }

    fn keep_alive_interval(&mut self, this: Resource<TcpSocket>) -> Result<Duration, SocketError> {
        HostTcpSocket::keep_alive_interval(&mut self.inner, this)
    }

    fn set_keep_alive_interval(
        &mut self,
        this: Resource<TcpSocket>,
        value: Duration,
    ) -> Result<(), SocketError> {
        HostTcpSocket::set_keep_alive_interval(&mut self.inner, this, value)
    }

    fn keep_alive_count(&mut self, this: Resource<TcpSocket>) -> Result<u32, SocketError> {
        HostTcpSocket::keep_alive_count(&mut self.inner, this)
    }

    fn set_keep_alive_count(
        &mut self,
        this: Resource<TcpSocket>,
        value: u32,
    ) -> Result<(), SocketError> {
        HostTcpSocket::set_keep_alive_count(&mut self.inner, this, value)
    }

    fn hop_limit(&mut self, this: Resource<TcpSocket>) -> Result<u8, SocketError> {
        HostTcpSocket::hop_limit(&mut self.inner, this)
    }

    fn set_hop_limit(&mut self, this: Resource<TcpSocket>, value: u8) -> Result<(), SocketError> {
        HostTcpSocket::set_hop_limit(&mut self.inner, this, value)
    }

    fn receive_buffer_size(&mut self, this: Resource<TcpSocket>) -> Result<u64, SocketError> {
        HostTcpSocket::receive_buffer_size(&mut self.inner, this)
    }

    fn set_receive_buffer_size(
        &mut self,
        this: Resource<TcpSocket>,
        value: u64,
    ) -> Result<(), SocketError> {
        HostTcpSocket::set_receive_buffer_size(&mut self.inner, this, value)
    }

    fn send_buffer_size(&mut self, this: Resource<TcpSocket>) -> Result<u64, SocketError> {
        HostTcpSocket::send_buffer_size(&mut self.inner, this)
    }

    fn set_send_buffer_size(
        &mut self,
        this: Resource<TcpSocket>,
        value: u64,
    ) -> Result<(), SocketError> {
        HostTcpSocket::set_send_buffer_size(&mut self.inner, this, value)
    }

    fn subscribe(&mut self, this: Resource<TcpSocket>) -> wasmtime::Result<Resource<Pollable>> {
        HostTcpSocket::subscribe(&mut self.inner, this)
    }

    fn shutdown(
        &mut self,
        this: Resource<TcpSocket>,
        shutdown_type: ShutdownType,
    ) -> Result<(), SocketError> {
        HostTcpSocket::shutdown(&mut self.inner, this, shutdown_type)
    }

    fn drop(&mut self, this: Resource<TcpSocket>) -> wasmtime::Result<()> {
        HostTcpSocket::drop(&mut self.inner, this)
    }
}
