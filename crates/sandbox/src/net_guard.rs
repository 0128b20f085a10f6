//! The network as the guest sees it: every connect, send, bind and listen
//! goes through `socket_addr_check`, and every name lookup through a check
//! in front of wasmtime-wasi's resolver.
//!
//! Names are granted, but sockets only ever see addresses. So the host does
//! the lookup for a granted name, and the addresses it got back become
//! connectable for that name in this run: the guest cannot claim that an
//! address it picked belongs to a granted name.

use crate::Guard;
use crate::report::Kind;
use capsa_policy::Verdict;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use wasmtime::component::{HasData, Resource};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::SocketError;
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{self, ResolveAddressStream};
use wasmtime_wasi::p2::bindings::sockets::network::{self, ErrorCode, IpAddress, Network};
use wasmtime_wasi::sockets::{SocketAddrUse, WasiSocketsCtxView};

/// The check wasmtime-wasi calls for every socket address the guest uses.
pub fn check_addr(guard: &Arc<Guard>, addr: SocketAddr, usage: SocketAddrUse) -> bool {
    let net = &guard.policy.net;
    let (verb, decision) = match usage {
        SocketAddrUse::TcpConnect => {
            let d = connect_decision(guard, addr);
            let private = guard
                .private_listeners
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&addr);
            if !d.is_allowed() && private {
                // The guest connects to itself: a private listener it holds.
                return true;
            }
            ("connect to", d)
        }
        SocketAddrUse::UdpSend => ("send to", connect_decision(guard, addr)),
        SocketAddrUse::TcpBind => {
            let d = net.decide_bind(addr);
            if !d.is_allowed() && is_private_loopback(addr) {
                // `tcp_guard` counts and caps these.
                return true;
            }
            ("bind to", d)
        }
        SocketAddrUse::UdpBind => {
            let d = net.decide_bind(addr);
            // An explicit bind that a listen rule granted makes a UDP
            // server, which may hear from anyone; the implicit bind of a
            // client does not.
            if d.is_allowed() && !(addr.ip().is_unspecified() && addr.port() == 0) {
                guard
                    .udp_server
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            ("bind to", d)
        }
        SocketAddrUse::TcpListen => {
            let d = net.decide_listen(addr);
            // Only a private bind (loopback, port 0) reaches an ungranted
            // listen on loopback: such a listener accepts only the guest.
            if !d.is_allowed() && addr.ip().is_loopback() {
                guard
                    .private_listeners
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(addr);
                return true;
            }
            ("listen on", d)
        }
        // A granted listener accepts anyone; a private one only the guest,
        // which `tcp_guard` decides (only it knows the listener).
        SocketAddrUse::TcpAccept => return true,
        // Replies to what the guest may send to, or anything on a granted port.
        SocketAddrUse::UdpReceive => {
            return connect_decision(guard, addr).is_allowed()
                || guard.udp_server.load(std::sync::atomic::Ordering::SeqCst);
        }
    };
    let target = addr.to_string();
    guard.reporter.verdict(Kind::Net, verb, &target, &decision);
    decision.is_allowed()
}

/// A bind that needs no grant: an ephemeral port on loopback, as
/// `socket.socketpair()` makes in CPython for WASI. What listens there
/// accepts only the guest itself (see `tcp_guard`), so it opens nothing
/// another process could use.
fn is_private_loopback(addr: SocketAddr) -> bool {
    addr.ip().is_loopback() && addr.port() == 0
}

/// Whether binding `addr` makes a private socket: ungranted, ephemeral,
/// on loopback.
pub fn is_private_bind(guard: &Guard, addr: SocketAddr) -> bool {
    is_private_loopback(addr) && !guard.policy.net.decide_bind(addr).is_allowed()
}

fn connect_decision(guard: &Guard, addr: SocketAddr) -> Verdict {
    let names = guard
        .resolved
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&addr.ip())
        .cloned()
        .unwrap_or_default();
    decide_connect(guard, addr.ip(), addr.port(), &names)
}

/// The policy's decision, and one thing only the host can know: a granted
/// name that resolves to one of this machine's own addresses would reach
/// services bound to every interface, as loopback would. Such an address
/// is reached only when a rule names it by IP.
pub fn decide_connect(guard: &Guard, ip: IpAddr, port: u16, names: &[String]) -> Verdict {
    let net = &guard.policy.net;
    let verdict = net.decide_connect(ip, port, names);
    if !verdict.is_allowed()
        || names.is_empty()
        || ip.is_loopback()
        || net.decide_connect(ip, port, &[]).is_allowed()
    {
        return verdict;
    }
    if !is_own_address(ip) {
        return verdict;
    }
    let hint = match ip {
        IpAddr::V6(_) => format!("--allow-net=[{ip}]:{port}"),
        IpAddr::V4(_) => format!("--allow-net={ip}:{port}"),
    };
    Verdict::Deny {
        rule: None,
        reason: format!(
            "{} resolved to an address of this machine, which is reached only when granted by IP",
            names[0]
        ),
        hint: Some(hint),
    }
}

/// Whether `ip` is an address of this machine: binding to it works only
/// then. Nothing is sent.
fn is_own_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Lookups in flight: stream → the granted name it resolves.
#[derive(Default)]
pub struct LookupTracker {
    streams: HashMap<u32, String>,
}

/// `wasi:sockets` as the guest sees it: name lookups checked here, TCP
/// sockets in `tcp_guard`, one view over wasmtime-wasi's for both.
pub struct GuardedSockets<'a> {
    pub inner: WasiSocketsCtxView<'a>,
    pub lookups: &'a mut LookupTracker,
    pub tcp: &'a mut crate::tcp_guard::TcpTracker,
    pub guard: &'a Guard,
}

pub struct GuardedSocketsData;

impl HasData for GuardedSocketsData {
    type Data<'a> = GuardedSockets<'a>;
}

impl ip_name_lookup::Host for GuardedSockets<'_> {
    fn resolve_addresses(
        &mut self,
        network: Resource<Network>,
        name: String,
    ) -> Result<Resource<ResolveAddressStream>, SocketError> {
        // An address literal needs no lookup; the connect check decides.
        let literal = name.parse::<IpAddr>().is_ok()
            || name
                .strip_prefix('[')
                .and_then(|n| n.strip_suffix(']'))
                .is_some_and(|n| n.parse::<IpAddr>().is_ok());
        if !literal {
            let d = self.guard.policy.net.decide_lookup(&name);
            self.guard.reporter.verdict(Kind::Dns, "look up", &name, &d);
            if !d.is_allowed() {
                // The same error a name that does not exist gives.
                return Err(ErrorCode::NameUnresolvable.into());
            }
        }
        let stream =
            ip_name_lookup::Host::resolve_addresses(&mut self.inner, network, name.clone())?;
        if !literal {
            self.lookups.streams.insert(
                stream.rep(),
                name.trim_end_matches('.').to_ascii_lowercase(),
            );
        }
        Ok(stream)
    }
}

impl ip_name_lookup::HostResolveAddressStream for GuardedSockets<'_> {
    fn resolve_next_address(
        &mut self,
        stream: Resource<ResolveAddressStream>,
    ) -> Result<Option<IpAddress>, SocketError> {
        let name = self.lookups.streams.get(&stream.rep()).cloned();
        let next = ip_name_lookup::HostResolveAddressStream::resolve_next_address(
            &mut self.inner,
            stream,
        )?;
        if let (Some(addr), Some(name)) = (&next, name) {
            let ip = match *addr {
                IpAddress::Ipv4((a, b, c, d)) => IpAddr::from([a, b, c, d]),
                IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => IpAddr::from([a, b, c, d, e, f, g, h]),
            };
            let mut resolved = self
                .guard
                .resolved
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let names = resolved.entry(ip).or_default();
            if !names.contains(&name) {
                names.push(name);
            }
        }
        Ok(next)
    }

    fn subscribe(
        &mut self,
        stream: Resource<ResolveAddressStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        ip_name_lookup::HostResolveAddressStream::subscribe(&mut self.inner, stream)
    }

    fn drop(&mut self, stream: Resource<ResolveAddressStream>) -> wasmtime::Result<()> {
        self.lookups.streams.remove(&stream.rep());
        ip_name_lookup::HostResolveAddressStream::drop(&mut self.inner, stream)
    }
}

impl network::Host for GuardedSockets<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        network::Host::convert_error_code(&mut self.inner, error)
    }

    fn network_error_code(
        &mut self,
        err: Resource<wasmtime_wasi::p2::bindings::sockets::network::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        network::Host::network_error_code(&mut self.inner, err)
    }
}

impl network::HostNetwork for GuardedSockets<'_> {
    fn drop(&mut self, this: Resource<Network>) -> wasmtime::Result<()> {
        network::HostNetwork::drop(&mut self.inner, this)
    }
}
