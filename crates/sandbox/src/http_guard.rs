//! `wasi:http` as the guest sees it: every outgoing request is decided by
//! the same network policy as raw sockets, the host resolves and checks the
//! addresses itself, and TLS is done and verified here, on the host.
//!
//! wasmtime-wasi-http builds the request from the guest's resources; capsa's
//! [`WasiHttpHooks::send_request`] takes it from there:
//!
//! 1. the authority's host and port are decided by `--allow-net` (a name is
//!    looked up by the host, and each address it gets is checked as a
//!    connect to that name would be: a granted name that resolves to a
//!    private address is refused unless the address is granted);
//! 2. a connection to a checked address is reused from this run's pool, or
//!    opened (TLS with the operating system's trust store plus `--ca-cert`);
//! 3. the request is sent over HTTP/1.1 with connect, first-byte and
//!    between-bytes timeouts.
//!
//! A refused request is an error the guest sees (`HTTP-request-denied`), a
//! denial line with the flag that would allow it, and an audit record.

use crate::Guard;
use crate::report::{Decision, Kind};
use bytes::Bytes;
use capsa_policy::Verdict;
use http::uri::Scheme;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::client::conn::http1::SendRequest;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// Used where the guest sets no timeout of its own. The run's `--timeout`
/// still ends everything.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Idle connections kept per host and port.
const POOL_PER_KEY: usize = 8;

/// How long a request waits for a pooled connection whose last response
/// was read to its end to be taken back by its task, before it opens
/// another. It is usually a matter of microseconds.
const SETTLE: Duration = Duration::from_millis(500);

/// The run's HTTP client: policy, trust and the connection pool.
pub struct HttpClient {
    guard: Arc<Guard>,
    /// The `--ca-cert` CAs, checked at start.
    extra_roots: rustls::RootCertStore,
    tls: OnceLock<Arc<rustls::ClientConfig>>,
    pool: Mutex<HashMap<PoolKey, Vec<Pooled>>>,
}

/// A connection in the pool. It goes in as soon as its response's head has
/// come; HTTP/1.1 can take the next request once that response's body has
/// been read (`body_done`) and the connection's task has seen it.
struct Pooled {
    sender: SendRequest<WasiBody>,
    body_done: Arc<AtomicBool>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    tls: bool,
    host: String,
    port: u16,
}

/// The hooks wasmtime-wasi-http calls; one per store.
pub struct HttpHooks(pub Arc<HttpClient>);

/// Reads the CA certificates given with `--ca-cert`; each file must hold at
/// least one PEM certificate, and each must serve as a trust anchor.
pub fn read_ca_certs(paths: &[PathBuf]) -> Result<rustls::RootCertStore, String> {
    let mut store = rustls::RootCertStore::empty();
    for path in paths {
        let bad = |why: String| format!("--ca-cert={}: {why}", path.display());
        let bytes = read_ca_file(path).map_err(bad)?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| bad(pem_error(path, e)))?;
        if certs.is_empty() {
            return Err(bad("no PEM certificate in the file".into()));
        }
        for cert in certs {
            store
                .add(cert)
                .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
        }
    }
    Ok(store)
}

/// The largest CA file read: a bundle of every public CA is about 200 KiB.
const MAX_CA_FILE: u64 = 16 << 20;

/// The bytes of a CA file: a regular file, or a link to one. A FIFO or a
/// device would never end, or block the run before it starts.
fn read_ca_file(path: &Path) -> Result<Vec<u8>, String> {
    use crate::load::NotRead;
    crate::load::read_regular_file(path, MAX_CA_FILE, true).map_err(|e| match e {
        NotRead::Io(e) if e.kind() == std::io::ErrorKind::NotFound => {
            format!("{}: no such file", path.display())
        }
        NotRead::Io(e) => e.to_string(),
        NotRead::NotAFile => "not a regular file".into(),
        NotRead::TooLarge => format!("larger than {} MiB", MAX_CA_FILE >> 20),
    })
}

fn pem_error(path: &Path, e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
            format!("{}: no such file", path.display())
        }
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        other => format!("not a PEM file: {other:?}"),
    }
}

impl HttpClient {
    pub fn new(guard: Arc<Guard>, extra_roots: rustls::RootCertStore) -> Self {
        HttpClient {
            guard,
            extra_roots,
            tls: OnceLock::new(),
            pool: Mutex::new(HashMap::new()),
        }
    }

    /// The TLS configuration, made on the first HTTPS request: the system's
    /// trust store is read only by runs that need it.
    fn tls_config(&self) -> Arc<rustls::ClientConfig> {
        self.tls
            .get_or_init(|| {
                let mut roots = self.extra_roots.clone();
                // Certificates the system store has but rustls cannot use are
                // skipped, as every other client of that store does.
                let native = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(native.certs);
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let mut config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default protocol versions")
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                Arc::new(config)
            })
            .clone()
    }

    async fn send(
        self: Arc<Self>,
        mut req: Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<Response<WasiBody>, Error> {
        let uri = req.uri().clone();
        let tls = uri.scheme() == Some(&Scheme::HTTPS);
        let authority = uri.authority().ok_or(Error::HttpRequestUriInvalid)?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if host.is_empty() {
            return Err(Error::HttpRequestUriInvalid);
        }
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let shown = format!(
            "{}://{}{}",
            if tls { "https" } else { "http" },
            display_authority(&host, port),
            uri.path()
        );
        let op = req.method().as_str().to_string();
        let key = PoolKey { tls, host, port };
        let addrs = self.check(&op, &shown, &key).await?;

        let opt = |f: fn(&RequestOptions) -> Option<Duration>| {
            options.as_ref().and_then(f).unwrap_or(DEFAULT_TIMEOUT)
        };
        let connect_timeout = opt(|o| o.connect_timeout);
        let first_byte = opt(|o| o.first_byte_timeout);
        let between_bytes = opt(|o| o.between_bytes_timeout);

        // HTTP/1.1 sends the path only; the authority went in the Host header.
        *req.uri_mut() = http::Uri::builder()
            .path_and_query(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
            .build()
            .map_err(|_| Error::HttpRequestUriInvalid)?;

        let mut req = Some(req);
        // A pooled connection the server closed in the meantime gives the
        // request back unsent; it then goes on a new connection.
        while let Some(mut s) = self.take_pooled(&key).await {
            let attempt = s.try_send_request(req.take().expect("request present"));
            match tokio::time::timeout(first_byte, attempt).await {
                Err(_) => return Err(Error::ConnectionReadTimeout),
                Ok(Ok(res)) => return Ok(self.finish(key, s, res, between_bytes)),
                Ok(Err(mut e)) => match e.take_message() {
                    Some(r) => req = Some(r),
                    None => return Err(Error::Hyper(e.into_error())),
                },
            }
        }
        let req = req.expect("request present");
        let mut s = self
            .connect(&key, &addrs, &shown, &op, connect_timeout)
            .await?;
        let res = tokio::time::timeout(first_byte, s.send_request(req))
            .await
            .map_err(|_| Error::ConnectionReadTimeout)??;
        Ok(self.finish(key, s, res, between_bytes))
    }

    /// Puts the connection back for the next request (HTTP/1.1 makes it
    /// ready again once this response's body is read) and wraps the body
    /// in the between-bytes timeout.
    fn finish(
        &self,
        key: PoolKey,
        sender: SendRequest<WasiBody>,
        res: Response<hyper::body::Incoming>,
        between_bytes: Duration,
    ) -> Response<WasiBody> {
        let body_done = Arc::new(AtomicBool::new(false));
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let idle = pool.entry(key).or_default();
        idle.retain(|p| !p.sender.is_closed());
        if idle.len() < POOL_PER_KEY {
            idle.push(Pooled {
                sender,
                body_done: body_done.clone(),
            });
        }
        drop(pool);
        res.map(|body| {
            TimedBody {
                inner: body,
                between: between_bytes,
                sleep: Box::pin(tokio::time::sleep(between_bytes)),
                done: body_done,
            }
            .boxed_unsync()
        })
    }

    /// A pooled connection that can take a request: one that is ready now,
    /// or else one whose last response the guest has read to the end (or
    /// dropped), once its task has caught up. Taking only ready ones opened
    /// a second connection whenever the guest sent its next request before
    /// that task had run, as it does on a busy machine.
    async fn take_pooled(&self, key: &PoolKey) -> Option<SendRequest<WasiBody>> {
        loop {
            let mut settling = {
                let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
                let idle = pool.get_mut(key)?;
                idle.retain(|p| !p.sender.is_closed());
                if let Some(i) = idle.iter().position(|p| p.sender.is_ready()) {
                    return Some(idle.swap_remove(i).sender);
                }
                let i = idle
                    .iter()
                    .position(|p| p.body_done.load(Ordering::Acquire))?;
                idle.swap_remove(i)
            };
            // A body dropped before its end closes the connection: ready()
            // then fails, and the next one is tried.
            if let Ok(Ok(())) = tokio::time::timeout(SETTLE, settling.sender.ready()).await {
                return Some(settling.sender);
            }
        }
    }

    /// Decides the request and returns the addresses it may go to.
    async fn check(&self, op: &str, shown: &str, key: &PoolKey) -> Result<Vec<SocketAddr>, Error> {
        let net = &self.guard.policy.net;
        let report = |v: &Verdict| self.guard.reporter.verdict(Kind::Net, op, shown, v);
        if let Ok(ip) = key.host.parse::<IpAddr>() {
            let v = net.decide_connect(ip, key.port, &[]);
            report(&v);
            return match v.is_allowed() {
                true => Ok(vec![SocketAddr::new(ip, key.port)]),
                false => Err(Error::HttpRequestDenied),
            };
        }
        let lookup = net.decide_lookup(&key.host);
        if let Verdict::Deny { rule, reason, hint } = lookup {
            // A request names its port: grant exactly that.
            let hint = hint.map(|_| format!("--allow-net={}:{}", key.host, key.port));
            report(&Verdict::Deny { rule, reason, hint });
            return Err(Error::HttpRequestDenied);
        }
        let found: Vec<SocketAddr> = tokio::net::lookup_host((key.host.as_str(), key.port))
            .await
            .map_err(|e| Error::DnsError {
                rcode: Some(e.to_string()),
                info_code: None,
            })?
            .collect();
        let names = [key.host.clone()];
        let verdicts: Vec<(SocketAddr, Verdict)> = found
            .into_iter()
            .map(|a| {
                let v = crate::net_guard::decide_connect(&self.guard, a.ip(), key.port, &names);
                (a, v)
            })
            .collect();
        let allowed: Vec<SocketAddr> = verdicts
            .iter()
            .filter(|(_, v)| v.is_allowed())
            .map(|(a, _)| *a)
            .collect();
        // The rule that allowed it, or why the first address was refused.
        let shown_verdict = verdicts
            .iter()
            .find(|(_, v)| v.is_allowed())
            .or(verdicts.first())
            .map(|(_, v)| v)
            .ok_or(Error::DestinationNotFound)?;
        report(shown_verdict);
        match allowed.is_empty() {
            true => Err(Error::HttpRequestDenied),
            false => Ok(allowed),
        }
    }

    async fn connect(
        &self,
        key: &PoolKey,
        addrs: &[SocketAddr],
        shown: &str,
        op: &str,
        timeout: Duration,
    ) -> Result<SendRequest<WasiBody>, Error> {
        let mut last = None;
        let mut tcp = None;
        for addr in addrs {
            match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                Err(_) => return Err(Error::ConnectionTimeout),
                Ok(Ok(s)) => {
                    tcp = Some(s);
                    break;
                }
                Ok(Err(e)) => last = Some(e),
            }
        }
        let tcp = match (tcp, last) {
            (Some(s), _) => s,
            (None, Some(e)) => return Err(Error::Connect(e)),
            (None, None) => return Err(Error::DestinationNotFound),
        };
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = if key.tls {
            let name =
                ServerName::try_from(key.host.clone()).map_err(|_| Error::HttpRequestUriInvalid)?;
            let connector = tokio_rustls::TlsConnector::from(self.tls_config());
            match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
                Err(_) => return Err(Error::ConnectionTimeout),
                Ok(Ok(s)) => Box::new(s),
                Ok(Err(e)) => return Err(self.tls_error(e, shown, op, key)),
            }
        } else {
            Box::new(tcp)
        };
        let handshake = hyper::client::conn::http1::Builder::new()
            .handshake(wasmtime_wasi_http::io::TokioIo::new(stream));
        let (sender, conn) = tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| Error::ConnectionTimeout)??;
        // The connection is driven on its own, so it outlives this request
        // and can serve the next one.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// A certificate the host does not trust is refused like a grant is:
    /// with a line that says why and what would allow it.
    fn tls_error(&self, e: std::io::Error, shown: &str, op: &str, key: &PoolKey) -> Error {
        let rustls_error = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        match rustls_error {
            Some(rustls::Error::InvalidCertificate(why)) => {
                // Only an unknown issuer is fixed by trusting a CA; a
                // certificate for another name, or expired, is not.
                let by_ca = matches!(
                    why,
                    rustls::CertificateError::UnknownIssuer
                        | rustls::CertificateError::BadSignature
                );
                let reason = format!(
                    "the certificate of {} is not trusted: {why}{}",
                    display_authority(&key.host, key.port),
                    if by_ca {
                        "; --ca-cert=FILE trusts the PEM certificate of the CA that signed it"
                    } else {
                        ""
                    }
                );
                self.guard.reporter.record(&Decision {
                    kind: Kind::Net,
                    op,
                    target: shown,
                    allowed: false,
                    rule: None,
                    reason: Some(&reason),
                    hint: by_ca.then_some("--ca-cert=FILE"),
                });
                Error::TlsCertificateError
            }
            _ => Error::Tls(e),
        }
    }
}

fn display_authority(host: &str, port: u16) -> String {
    match host.contains(':') {
        true => format!("[{host}]:{port}"),
        false => format!("{host}:{port}"),
    }
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// A response body that fails when the server sends nothing for too long.
struct TimedBody {
    inner: hyper::body::Incoming,
    between: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// Set once the body has been read to its end or dropped.
    done: Arc<AtomicBool>,
}

impl Drop for TimedBody {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let deadline = tokio::time::Instant::now() + self.between;
                self.sleep.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Error::Hyper(e)))),
            Poll::Ready(None) => {
                self.done.store(true, Ordering::Release);
                Poll::Ready(None)
            }
            Poll::Pending => match self.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Error::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        request: Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), Error>> + Send>,
                    ),
                    Error,
                >,
            > + Send,
    > {
        let client = self.0.clone();
        Box::new(async move {
            let res = client.send(request, options).await?;
            let io: Box<dyn Future<Output = Result<(), Error>> + Send> = Box::new(async { Ok(()) });
            Ok((res, io))
        })
    }

    fn p2_error_from_connect(&mut self, err: &std::io::Error) -> ErrorCode {
        match err.kind() {
            std::io::ErrorKind::TimedOut => ErrorCode::ConnectionTimeout,
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
                ErrorCode::ConnectionTerminated
            }
            _ => ErrorCode::ConnectionRefused,
        }
    }

    fn p2_error_from_hyper(&mut self, err: &hyper::Error) -> ErrorCode {
        if err.is_timeout() {
            ErrorCode::ConnectionReadTimeout
        } else if err.is_incomplete_message() || err.is_closed() {
            ErrorCode::ConnectionTerminated
        } else {
            ErrorCode::HttpProtocolError
        }
    }
}
