//! `wasi:sockets/tcp` as the guest sees it: wasmtime-wasi's implementation,
//! with capsa's bookkeeping of private listeners.
//!
//! A guest may listen without a grant on an ephemeral loopback port (a
//! "private listener", see `net_guard::check_addr`): CPython for WASI makes
//! `socket.socketpair()` that way. Such a listener takes only the guest's
//! own connections: a connection is kept only if one of the guest's own
//! sockets is its other end (the same four addresses: the kernel lets no
//! two connections share them). Only `accept` knows which listener a
//! connection came to, so that is decided here, from what this wrapper saw
//! the guest make, never from what else capsa's process holds. A listener's
//! address stops being connectable when the guest drops it, and the guest
//! may hold only so many private sockets (each takes a port of the
//! machine's).

use crate::net_guard::GuardedSockets;
use crate::report::Kind;
use capsa_policy::Verdict;
use std::collections::HashMap;
use std::net::SocketAddr;
use wasmtime::component::Resource;
use wasmtime_wasi::p2::SocketError;
use wasmtime_wasi::p2::bindings::sockets::network::{self, Network};
use wasmtime_wasi::p2::bindings::sync::sockets::tcp::{
    self, Duration, HostTcpSocket, InputStream, IpAddressFamily, IpSocketAddress, OutputStream,
    Pollable, ShutdownType, TcpSocket,
};

/// Private sockets the guest may hold at once: listeners, binds and
/// connections to its own listeners together.
const MAX_PRIVATE_SOCKETS: usize = 256;

/// The send and receive buffers of each private socket, in bytes (the
/// kernel doubles them). Set on the socket, they also stop the kernel
/// growing them (to 4 and 6 MiB on loopback by default): the guest holds
/// both ends of each connection and need not read, so its private sockets
/// could otherwise keep a gigabyte of the kernel's memory, outside every
/// limit, and press on every other connection of the machine.
const PRIVATE_BUFFER: u64 = 64 << 10;

/// Connections from someone else one `accept` drops before it lets the
/// guest run again (a flood must not hold it there).
const MAX_DROPPED_PER_ACCEPT: usize = 64;

/// What the guest made, by socket: its private listeners (their address),
/// its sockets connecting to one (that listener's address and their own),
/// and its other private binds.
#[derive(Default)]
pub struct TcpTracker {
    listeners: HashMap<u32, SocketAddr>,
    clients: HashMap<u32, (SocketAddr, SocketAddr)>,
    binds: std::collections::HashSet<u32>,
    /// Connections accepted on a private listener (the other ends of
    /// `clients`, not counted twice).
    accepted: std::collections::HashSet<u32>,
}

impl TcpTracker {
    fn held(&self) -> usize {
        self.listeners.len() + self.clients.len() + self.binds.len()
    }

    /// Whether the socket `rep` is private (see [`PRIVATE_BUFFER`]).
    fn is_private(&self, rep: u32) -> bool {
        self.listeners.contains_key(&rep)
            || self.clients.contains_key(&rep)
            || self.binds.contains(&rep)
            || self.accepted.contains(&rep)
    }
}

impl tcp::Host for GuardedSockets<'_> {}

fn borrow<T: 'static>(r: &Resource<T>) -> Resource<T> {
    Resource::new_borrow(r.rep())
}

impl GuardedSockets<'_> {
    fn private_listeners(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashSet<SocketAddr>> {
        self.guard
            .private_listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// A buffer size the guest asks for `this`: at most [`PRIVATE_BUFFER`]
    /// for a private socket.
    fn clamped(&self, this: &Resource<TcpSocket>, value: u64) -> u64 {
        if self.tcp.is_private(this.rep()) {
            value.min(PRIVATE_BUFFER)
        } else {
            value
        }
    }

    /// Refuses one more private socket past [`MAX_PRIVATE_SOCKETS`].
    fn room(&self, verb: &str, addr: SocketAddr) -> Result<(), SocketError> {
        if self.tcp.held() < MAX_PRIVATE_SOCKETS {
            return Ok(());
        }
        let verdict = Verdict::Deny {
            rule: None,
            reason: format!(
                "the program holds {MAX_PRIVATE_SOCKETS} ungranted loopback sockets already"
            ),
            hint: None,
        };
        self.guard
            .reporter
            .verdict(Kind::Net, verb, &addr.to_string(), &verdict);
        Err(network::ErrorCode::AccessDenied.into())
    }

    /// Gives the private socket `this` its small buffers (see
    /// [`PRIVATE_BUFFER`]). A socket that cannot take them is not used.
    fn small_buffers(&mut self, this: &Resource<TcpSocket>) -> Result<(), SocketError> {
        HostTcpSocket::set_send_buffer_size(&mut self.inner, borrow(this), PRIVATE_BUFFER)?;
        HostTcpSocket::set_receive_buffer_size(&mut self.inner, borrow(this), PRIVATE_BUFFER)
    }

    /// Whether `peer`, connected to the private listener at `listener`, is
    /// one of the guest's own sockets.
    fn is_own(&self, peer: SocketAddr, listener: SocketAddr) -> bool {
        self.tcp
            .clients
            .values()
            .any(|&(to, from)| to == listener && from == peer)
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

impl HostTcpSocket for GuardedSockets<'_> {
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
        let Some(&listener) = self.tcp.listeners.get(&this.rep()) else {
            return HostTcpSocket::accept(&mut self.inner, this);
        };
        for _ in 0..MAX_DROPPED_PER_ACCEPT {
            let (sock, input, output) = HostTcpSocket::accept(&mut self.inner, borrow(&this))?;
            let peer = HostTcpSocket::remote_address(&mut self.inner, borrow(&sock))
                .ok()
                .map(SocketAddr::from);
            if peer.is_some_and(|p| self.is_own(p, listener)) {
                if let Err(e) = self.small_buffers(&sock) {
                    self.reset(sock, input, output).map_err(SocketError::trap)?;
                    return Err(e);
                }
                self.tcp.accepted.insert(sock.rep());
                return Ok((sock, input, output));
            }
            // Someone else: gone before the guest sees it.
            self.reset(sock, input, output).map_err(SocketError::trap)?;
        }
        Err(network::ErrorCode::WouldBlock.into())
    }

    fn start_bind(
        &mut self,
        this: Resource<TcpSocket>,
        network: Resource<Network>,
        local_address: IpSocketAddress,
    ) -> Result<(), SocketError> {
        let addr = SocketAddr::from(local_address);
        let private = crate::net_guard::is_private_bind(self.guard, addr);
        if private {
            self.room("bind to", addr)?;
        }
        let rep = this.rep();
        if private {
            self.small_buffers(&this)?;
        }
        HostTcpSocket::start_bind(&mut self.inner, this, network, local_address)?;
        if private {
            self.tcp.binds.insert(rep);
        }
        Ok(())
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
        let addr = SocketAddr::from(remote_address);
        if !self.private_listeners().contains(&addr) {
            return HostTcpSocket::start_connect(&mut self.inner, this, network, remote_address);
        }
        self.room("connect to", addr)?;
        self.small_buffers(&this)?;
        // The address the connection will come from: known only once bound,
        // and not while connecting, when the listener may already see it.
        // So bind first, as connect itself would (the private bind of an
        // ephemeral loopback port).
        let local = match HostTcpSocket::local_address(&mut self.inner, borrow(&this)) {
            Ok(local) => SocketAddr::from(local),
            Err(_) => {
                let any = SocketAddr::new(addr.ip(), 0);
                HostTcpSocket::start_bind(
                    &mut self.inner,
                    borrow(&this),
                    borrow(&network),
                    any.into(),
                )?;
                HostTcpSocket::finish_bind(&mut self.inner, borrow(&this))?;
                SocketAddr::from(HostTcpSocket::local_address(
                    &mut self.inner,
                    borrow(&this),
                )?)
            }
        };
        let rep = this.rep();
        HostTcpSocket::start_connect(&mut self.inner, this, network, remote_address)?;
        self.tcp.binds.remove(&rep);
        self.tcp.clients.insert(rep, (addr, local));
        Ok(())
    }

    fn finish_connect(
        &mut self,
        this: Resource<TcpSocket>,
    ) -> Result<(Resource<InputStream>, Resource<OutputStream>), SocketError> {
        HostTcpSocket::finish_connect(&mut self.inner, this)
    }

    fn start_listen(&mut self, this: Resource<TcpSocket>) -> Result<(), SocketError> {
        if let Err(e) = HostTcpSocket::start_listen(&mut self.inner, borrow(&this)) {
            // The check may have recorded the address before listen failed.
            if let Ok(local) = HostTcpSocket::local_address(&mut self.inner, borrow(&this)) {
                let local = SocketAddr::from(local);
                if !self.tcp.listeners.values().any(|a| *a == local) {
                    self.private_listeners().remove(&local);
                }
            }
            return Err(e);
        }
        // The check in front of listen recorded a private listener by its
        // address; it is the guest's by this socket.
        if let Ok(local) = HostTcpSocket::local_address(&mut self.inner, borrow(&this)) {
            let local = SocketAddr::from(local);
            if self.private_listeners().contains(&local) {
                self.tcp.binds.remove(&this.rep());
                self.tcp.listeners.insert(this.rep(), local);
            }
        }
        Ok(())
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
        let value = self.clamped(&this, value);
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
        let value = self.clamped(&this, value);
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
        let rep = this.rep();
        if let Some(addr) = self.tcp.listeners.remove(&rep) {
            // Closed: another process may take the address now.
            self.private_listeners().remove(&addr);
        }
        self.tcp.clients.remove(&rep);
        self.tcp.binds.remove(&rep);
        self.tcp.accepted.remove(&rep);
        HostTcpSocket::drop(&mut self.inner, this)
    }
}
