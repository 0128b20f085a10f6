//! The HTTP side of `capsa serve`: authentication, routes, and the JSON of
//! each request and answer.

// A handler's early answer (a refusal) travels as the error of a Result.
#![allow(clippy::result_large_err)]

use super::ceiling::{Asks, Ceiling, Refusal};
use super::child::{Launch, RunResult, Stream, Tap, run_once};
use super::scratch::{self, FileError, Found};
use super::session::{Ended, Session};
use base64::Engine as _;
use bytes::Bytes;
use capsa_sandbox::OutputBudget;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bytes of one request body (a base64 program, files and code).
const MAX_BODY: usize = 64 << 20;

/// Time for a request's body to arrive, once its head has.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// Connections open at once, at most; more are closed as they come.
pub const MAX_CONNECTIONS: usize = 4096;

/// Sessions remembered after they end, so that a late call hears why.
const ENDED_KEPT: usize = 1024;

const OPENAPI: &str = include_str!("openapi.json");
const SESSION_LOOP: &str = include_str!("session.py");

/// The server's private directory: every run's and session's files.
pub struct WorkDir {
    pub path: PathBuf,
    /// Removed when the server ends.
    owned: bool,
}

impl WorkDir {
    pub fn make(given: Option<&Path>) -> anyhow::Result<WorkDir> {
        // A directory of its own, private, even inside a given one (which
        // may be shared, such as a volume mounted for it).
        let mut builder = tempfile::Builder::new();
        builder.prefix("capsa-serve-");
        let made = match given {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
                builder.tempdir_in(dir)
            }
            None => builder.tempdir(),
        }
        .map_err(|e| anyhow::anyhow!("cannot make a working directory: {e}"))?;
        let path = capsa_sandbox::load::canonical(&made.keep())?;
        let owned = true;
        let text = path.to_string_lossy();
        if text.contains(',') || text.contains("::") || path.to_str().is_none() {
            anyhow::bail!(
                "{} cannot be granted to runs (a comma, `::` or not UTF-8): choose another --work-dir",
                path.display()
            );
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
        }
        for sub in ["runs", "sessions"] {
            std::fs::create_dir_all(path.join(sub))?;
        }
        std::fs::write(path.join("session.py"), SESSION_LOOP)?;
        Ok(WorkDir { path, owned })
    }

    /// Removes what the server made.
    pub fn remove(&self) {
        if self.owned {
            let _ = capsa_sandbox::load::remove_tree(&self.path);
        }
    }
}

pub struct Config {
    pub ceiling: Ceiling,
    pub token: Option<String>,
    pub idle: Duration,
    pub max_sessions: usize,
    pub max_runs: usize,
    /// Runs that may wait for one of `max_runs`.
    pub max_queue: usize,
    pub base: WorkDir,
    pub listen: SocketAddr,
    pub ca_certs: Vec<PathBuf>,
    pub python_path: Vec<PathBuf>,
    /// Run Python in warm workers (else a `capsa run` per run).
    pub warm: bool,
}

/// A session as the map holds it: its scratch directory is reachable while
/// a call runs in it.
#[derive(Clone)]
struct Handle {
    scratch: PathBuf,
    session: Arc<tokio::sync::Mutex<Session>>,
    cancel: Arc<tokio::sync::Notify>,
    /// What files put into the session may still hold, in all: counted
    /// against the session's `--max-write` as its program's own writes are
    /// (apart from them: the program's are counted in its own process), the
    /// body's bytes and [`NAME_COST`] for each component of the name (a
    /// directory the put may make, and the file's own name), so that empty
    /// bodies under deep names cannot fill the disk's inodes. Replacing a
    /// file counts its new bytes again, as a program's writes do.
    uploads: Arc<OutputBudget>,
    /// The session's `--max-write`, for the answer that refuses a put.
    max_write: Option<u64>,
}

impl Handle {
    /// Ends the session: a call going on ends now, then its interpreter.
    async fn end(&self) {
        self.cancel.notify_one();
        self.session.lock().await.end().await;
    }
}

pub struct State {
    config: Config,
    runs: Arc<tokio::sync::Semaphore>,
    /// Runs accepted and waiting for one of `runs`, and their bytes.
    waiting: Arc<(std::sync::atomic::AtomicUsize, std::sync::atomic::AtomicU64)>,
    /// Open connections.
    pub connections: Arc<tokio::sync::Semaphore>,
    max_connections: usize,
    /// Open connections by peer address: one peer may hold a quarter.
    peers: Mutex<HashMap<std::net::IpAddr, usize>>,
    /// Kibibytes of request bodies being read at once.
    body_kib: Arc<tokio::sync::Semaphore>,
    pool: Option<super::worker::Pool>,
    /// Every run going on, warm or in a process of its own.
    gate: super::worker::Gate,
    sessions: Mutex<HashMap<String, Handle>>,
    ended: Mutex<VecDeque<(String, Ended)>>,
    /// The `Host` values a tokenless server answers.
    hosts: Vec<String>,
    /// MCP clients over HTTP (`/mcp`), by their `Mcp-Session-Id`: the
    /// session names each has given.
    mcp: Mutex<HashMap<String, Arc<tokio::sync::Mutex<super::mcp::Names>>>>,
}

impl State {
    pub fn new(config: Config) -> State {
        // Raises the descriptor limit once, and sizes the cap by it.
        let connections = max_connections();
        State {
            runs: Arc::new(tokio::sync::Semaphore::new(config.max_runs)),
            waiting: Arc::default(),
            connections: Arc::new(tokio::sync::Semaphore::new(connections)),
            max_connections: connections,
            peers: Mutex::new(HashMap::new()),
            body_kib: Arc::new(tokio::sync::Semaphore::new(BODIES_KIB)),
            gate: Default::default(),
            pool: config
                .warm
                .then(|| super::worker::Pool::new(&config.base.path)),
            config,
            sessions: Mutex::new(HashMap::new()),
            ended: Mutex::new(VecDeque::new()),
            hosts: Vec::new(),
            mcp: Mutex::new(HashMap::new()),
        }
    }

    pub fn listening_on(mut self, addr: SocketAddr) -> State {
        let port = addr.port();
        self.hosts = vec![
            addr.to_string(),
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ];
        self.config.listen = addr;
        self
    }

    /// Counts a connection from `peer`; `None` if that peer holds its share.
    pub fn enter(self: &Arc<Self>, peer: std::net::IpAddr) -> Option<PeerSlot> {
        let share = (self.max_connections / 4).max(16);
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let n = peers.entry(peer).or_default();
        if *n >= share {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            state: self.clone(),
            peer,
        })
    }

    pub fn has_token(&self) -> bool {
        self.config.token.is_some()
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Handle>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remember_end(&self, id: &str, why: Ended) {
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        if ended.len() >= ENDED_KEPT {
            ended.pop_front();
        }
        ended.push_back((id.to_string(), why));
    }

    fn why_ended(&self, id: &str) -> Option<Ended> {
        let ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        ended
            .iter()
            .rev()
            .find(|(i, _)| i == id)
            .map(|(_, w)| w.clone())
    }

    /// Removes the server's directories (before it ever listened).
    pub fn remove_files(&self) {
        self.config.base.remove();
    }

    pub async fn end_all(&self) {
        let all: Vec<_> = self.sessions().drain().collect();
        for (_, h) in all {
            h.end().await;
        }
        self.gate.end().await;
        // A run just ended removes its own directory at the same time;
        // whichever is second finds a name already gone.
        for _ in 0..50 {
            self.config.base.remove();
            if !self.config.base.path.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Ends sessions idle for longer than `--session-idle`, and sessions whose
/// interpreter runs between calls.
pub async fn reap_idle(state: Arc<State>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut ending: Vec<(String, Handle, String)> = Vec::new();
        for (id, h) in state.sessions().iter() {
            // A session in a call is not idle.
            let Ok(s) = h.session.try_lock() else {
                continue;
            };
            if s.ran_between_calls() {
                let why = RAN_BETWEEN_CALLS.to_string();
                ending.push((id.clone(), h.clone(), why));
            } else if s.last_used.elapsed() > state.config.idle {
                let why = format!(
                    "it was idle for longer than --session-idle={}",
                    capsa_policy::format_duration(state.config.idle)
                );
                ending.push((id.clone(), h.clone(), why));
            }
        }
        for (id, h, why) in ending {
            state.sessions().remove(&id);
            state.remember_end(&id, why);
            h.end().await;
        }
        // MCP clients over HTTP that went away without DELETE /mcp.
        let idle_clients: Vec<(String, Arc<tokio::sync::Mutex<super::mcp::Names>>)> = state
            .mcp
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, n)| {
                n.try_lock()
                    .is_ok_and(|n| n.last_used.elapsed() > state.config.idle)
            })
            .map(|(id, n)| (id.clone(), n.clone()))
            .collect();
        for (id, names) in idle_clients {
            state
                .mcp
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            for sid in names.lock().await.ids() {
                let _ = delete_session(&state, &sid).await;
            }
        }
    }
}

/// How long an answer may wait for a client that does not read it; then
/// the connection is closed (else it would be held for good).
const WRITE_STALL: Duration = Duration::from_secs(30);

/// A connection whose writes fail once they have waited [`WRITE_STALL`].
struct Stalls<T> {
    inner: T,
    waiting: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<T> Stalls<T> {
    fn check<R>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        r: std::task::Poll<std::io::Result<R>>,
    ) -> std::task::Poll<std::io::Result<R>> {
        use std::future::Future;
        use std::task::Poll;
        match r {
            Poll::Pending => {
                let w = self
                    .waiting
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_STALL)));
                match w.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::ErrorKind::TimedOut.into())),
                    Poll::Pending => Poll::Pending,
                }
            }
            done => {
                self.waiting = None;
                done
            }
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Stalls<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Stalls<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, r)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, r)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

pub async fn connection(state: Arc<State>, stream: tokio::net::TcpStream) {
    let io = hyper_util::rt::TokioIo::new(Stalls {
        inner: stream,
        waiting: None,
    });
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(state, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(15))
        .serve_connection(io, service)
        .await;
}

type Answer = Response<Body>;

/// An answer's body: whole, or a stream of server-sent events.
pub enum Body {
    Full(Full<Bytes>),
    Events(tokio::sync::mpsc::Receiver<Bytes>),
}

impl Default for Body {
    fn default() -> Self {
        Body::Full(Full::new(Bytes::new()))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Body::Full(f) => std::pin::Pin::new(f).poll_frame(cx),
            Body::Events(rx) => rx
                .poll_recv(cx)
                .map(|b| b.map(|b| Ok(hyper::body::Frame::data(b)))),
        }
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Body::Full(Full::new(bytes.into()))
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Answer {
    let body = serde_json::to_vec(value).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(body))
        .unwrap_or_default()
}

fn error(status: StatusCode, message: impl Into<String>) -> Answer {
    let mut message = message.into();
    // What a request sent comes back in some messages (serde names an
    // unknown key): a 60 MB key came back whole, held in memory for as
    // long as a client that does not read takes.
    if message.len() > MAX_ERROR {
        let mut cut = MAX_ERROR;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("...");
    }
    json(status, &serde_json::json!({"error": message}))
}

/// Bytes of an error message in an answer.
const MAX_ERROR: usize = 4096;

/// 405, with the methods the path takes (RFC 9110 asks for them).
fn not_allowed(method: &Method, path: &str, allow: &'static str) -> Answer {
    let shown = capsa_policy::escape_for_terminal(path);
    let mut a = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not taken at {shown} (it takes {allow})"),
    );
    a.headers_mut()
        .insert("allow", hyper::header::HeaderValue::from_static(allow));
    a
}

fn no_content() -> Answer {
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(Body::default())
        .unwrap_or_default()
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 400 for a request with more than one header `name`: what a check reads
/// (the first) may not be what another reader acts on.
fn one_header(req: &Request<Incoming>, name: &str) -> Result<(), Answer> {
    if req.headers().get_all(name).iter().nth(1).is_some() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("a request has one {name} header, not several"),
        ));
    }
    Ok(())
}

fn authorize(state: &State, req: &Request<Incoming>) -> Result<(), Answer> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    // RFC 9112 (3.2): more than one Host is a bad request. The check below
    // reads the first; a proxy or a browser may act on another.
    one_header(req, "Host")?;
    match &state.config.token {
        Some(token) => {
            let given = header("authorization").and_then(|v| v.strip_prefix("Bearer "));
            match given {
                Some(t) if same(t.trim().as_bytes(), token.as_bytes()) => Ok(()),
                Some(_) => Err(error(StatusCode::UNAUTHORIZED, "wrong token")),
                None => Err(error(
                    StatusCode::UNAUTHORIZED,
                    "this server needs Authorization: Bearer TOKEN",
                )),
            }
        }
        None => {
            // A web page may send requests to a loopback port too; a
            // browser always says where it came from.
            if req.headers().contains_key("origin") {
                return Err(error(
                    StatusCode::FORBIDDEN,
                    "requests from web pages are refused (this server has no token)",
                ));
            }
            // A request target in absolute form names a host as well.
            let named = req.uri().authority().map(|a| a.as_str());
            if named.is_some_and(|a| !state.hosts.iter().any(|ok| ok.eq_ignore_ascii_case(a))) {
                return Err(error(
                    StatusCode::FORBIDDEN,
                    "the request target does not name this server's address (this server has no token)",
                ));
            }
            match header("host") {
                Some(h) if state.hosts.iter().any(|ok| ok.eq_ignore_ascii_case(h)) => Ok(()),
                _ => Err(error(
                    StatusCode::FORBIDDEN,
                    "the Host header does not name this server's address (this server has no token)",
                )),
            }
        }
    }
}

async fn body_json<T: for<'a> Deserialize<'a>>(
    state: &State,
    req: Request<Incoming>,
) -> Result<T, Answer> {
    one_header(&req, "Content-Type")?;
    // Absent, or JSON: exactly that media type, in any case, with any
    // parameters. A value that is not text is not JSON.
    let ctype = req.headers().get("content-type").map(|v| {
        v.to_str().is_ok_and(|t| {
            t.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        })
    });
    let bytes = body_bytes(state, req).await?;
    // No body is `{}`, unless it says it is something else: a page may post
    // an empty form (text/plain) without asking first.
    if bytes.is_empty() && ctype != Some(false) {
        return serde_json::from_slice(b"{}")
            .map_err(|e| error(StatusCode::BAD_REQUEST, format!("a body is needed: {e}")));
    }
    if ctype != Some(true) {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON (Content-Type: application/json)",
        ));
    }
    if too_many_values(&bytes) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("a request body may hold at most {MAX_JSON_VALUES} values"),
        ));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("bad JSON: {e}")))
}

/// Values (array items, object members) a request body may hold, far more
/// than the most a request can use (1,000 files, 4,096 arguments, 1,000
/// items in each list of asks). Parsed, a value takes many times its bytes
/// in the body: 60 MB of empty strings took the server to 1.4 GB before
/// any limit on arguments was looked at.
const MAX_JSON_VALUES: usize = 50_000;

/// Whether the JSON text `b` holds more than [`MAX_JSON_VALUES`] values, by
/// its commas and opening brackets outside strings, before it is parsed.
fn too_many_values(b: &[u8]) -> bool {
    let (mut n, mut in_string, mut escaped) = (0usize, false, false);
    for &c in b {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match c {
                b'"' => in_string = true,
                b',' | b'[' | b'{' => n += 1,
                _ => {}
            }
        }
    }
    n > MAX_JSON_VALUES
}

/// The body, read within [`BODY_TIMEOUT`] and [`MAX_BODY`]. While it is
/// read, its bytes are counted against the server's budget for bodies
/// (`503` at once when that is spent, not a wait behind others); the count
/// is given back once it is read.
async fn body_bytes(state: &State, req: Request<Incoming>) -> Result<Bytes, Answer> {
    let budget = state.body_kib.clone();
    let read = async move {
        let mut body = req.into_body();
        let mut out = bytes::BytesMut::new();
        let mut held = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the body: {e}"),
                )
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if out.len() + data.len() > MAX_BODY {
                return Err(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("a request body may hold at most {} MiB", MAX_BODY >> 20),
                ));
            }
            let kib = (data.len().div_ceil(1024)) as u32;
            match budget.clone().try_acquire_many_owned(kib) {
                Ok(permit) => held.push(permit),
                Err(_) => {
                    return Err(error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the server is reading too many request bodies now; try again later",
                    ));
                }
            }
            out.extend_from_slice(&data);
        }
        Ok(out.freeze())
    };
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(r) => r,
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the body did not arrive within {} s",
                BODY_TIMEOUT.as_secs()
            ),
        )),
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Answer {
    // For load balancers' probes, which carry no token; it tells nothing.
    if req.method() == Method::GET && req.uri().path() == "/v1/health" {
        return json(StatusCode::OK, &serde_json::json!({"status": "ok"}));
    }
    if let Err(answer) = authorize(&state, &req) {
        return answer;
    }
    // Room for the body in the server's memory, before any of it is read.
    let declared = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a request body may hold at most {} MiB", MAX_BODY >> 20),
        );
    }
    let path = req.uri().path().to_string();
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    let method = req.method().clone();
    let events = wants_events(&req);
    match (&method, parts.as_slice()) {
        (&Method::POST, ["mcp"]) => mcp_post(&state, req).await,
        (&Method::DELETE, ["mcp"]) => mcp_delete(&state, &req).await,
        (_, ["mcp"]) => not_allowed(&method, &path, "POST, DELETE"),
        (&Method::GET, ["v1", "openapi.json"]) => Response::builder()
            .header("content-type", "application/json")
            .body(full(OPENAPI))
            .unwrap_or_default(),
        (&Method::POST, ["v1", "run"]) => match body_json::<RunRequest>(&state, req).await {
            Ok(r) => post_run(&state, r, events).await,
            Err(a) => a,
        },
        (&Method::POST, ["v1", "sessions"]) => match body_json::<Asks>(&state, req).await {
            Ok(asks) => post_session(&state, asks).await,
            Err(a) => a,
        },
        (&Method::POST, ["v1", "sessions", id, "exec"]) => {
            let id = id.to_string();
            match body_json::<ExecRequest>(&state, req).await {
                Ok(r) => exec(&state, &id, r, events).await,
                Err(a) => a,
            }
        }
        (&Method::DELETE, ["v1", "sessions", id]) => delete_session(&state, id).await,
        (&Method::GET, ["v1", "sessions", id, "files"]) => get_file(&state, id, None).await,
        (&Method::GET, ["v1", "sessions", id, "files", name]) => {
            get_file(&state, id, Some(name)).await
        }
        (&Method::PUT, ["v1", "sessions", id, "files", name]) => {
            let (id, name) = (id.to_string(), name.to_string());
            match body_bytes(&state, req).await {
                Ok(b) => put_file(&state, &id, &name, &b).await,
                Err(a) => a,
            }
        }
        (_, ["v1", "run"]) | (_, ["v1", "sessions"]) | (_, ["v1", "sessions", _, "exec"]) => {
            not_allowed(&method, &path, "POST")
        }
        (_, ["v1", "openapi.json" | "health"]) | (_, ["v1", "sessions", _, "files"]) => {
            not_allowed(&method, &path, "GET")
        }
        (_, ["v1", "sessions", _]) => not_allowed(&method, &path, "DELETE"),
        (_, ["v1", "sessions", _, "files", _]) => not_allowed(&method, &path, "GET, PUT"),
        _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
    }
}

/// `/v1/run`'s body: the program and its input, and what it asks for.
#[derive(Debug)]
struct RunRequest {
    code: Option<String>,
    wasm: Option<String>,
    stdin: String,
    args: Vec<String>,
    files: BTreeMap<String, String>,
    asks: Asks,
}

impl<'de> Deserialize<'de> for RunRequest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        // serde's flatten does not combine with deny_unknown_fields: take
        // the program's keys out, and read the rest as the asks.
        let mut map = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        fn take<T: for<'a> Deserialize<'a> + Default, E: Error>(
            map: &mut serde_json::Map<String, serde_json::Value>,
            key: &str,
        ) -> Result<T, E> {
            match map.remove(key) {
                None | Some(serde_json::Value::Null) => Ok(T::default()),
                Some(v) => serde_json::from_value(v).map_err(|e| E::custom(format!("{key}: {e}"))),
            }
        }
        Ok(RunRequest {
            code: take(&mut map, "code")?,
            wasm: take(&mut map, "wasm")?,
            stdin: take(&mut map, "stdin")?,
            args: take(&mut map, "args")?,
            files: take(&mut map, "files")?,
            asks: serde_json::from_value(serde_json::Value::Object(map))
                .map_err(D::Error::custom)?,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecRequest {
    code: String,
    #[serde(default)]
    stdin: String,
    /// Lower than the session's own limit, for this call.
    timeout: Option<String>,
}

fn refused(r: Refusal) -> Answer {
    match r {
        Refusal::Bad(m) => error(StatusCode::BAD_REQUEST, m),
        Refusal::Beyond(m) => error(StatusCode::FORBIDDEN, format!("denied: {m}")),
    }
}

fn file_error(e: FileError) -> Answer {
    match e {
        FileError::BadName(m) => error(StatusCode::BAD_REQUEST, m),
        FileError::NotFound(m) => error(StatusCode::NOT_FOUND, m),
        FileError::TooLarge(m) => error(StatusCode::PAYLOAD_TOO_LARGE, m),
        FileError::Io(m) => error(StatusCode::INTERNAL_SERVER_ERROR, m),
    }
}

fn internal(e: impl std::fmt::Display) -> Answer {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("capsa serve: {e}"),
    )
}

/// A directory of a run's (or a warm worker's), removed with everything in
/// it when dropped.
pub struct RunDir(pub PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = capsa_sandbox::load::remove_tree(&self.0);
    }
}

/// Arguments a run may be given, the bytes of each (a WASI program's go to
/// its `capsa run` on the command line, where Linux takes at most 128 KiB
/// with the NUL), and their bytes together.
const MAX_ARGS: usize = 4096;
const MAX_ARG_LEN: usize = (128 << 10) - 1;
const MAX_ARG_BYTES: usize = 1 << 20;

async fn post_run(state: &Arc<State>, mut r: RunRequest, events: bool) -> Answer {
    let program = match (&r.code, &r.wasm) {
        (Some(code), None) => Program::Python(code.clone()),
        (None, Some(b64)) => match base64::engine::general_purpose::STANDARD.decode(b64) {
            // A module or a component; nothing else `capsa run` would take
            // (a bundle, text) is sent this way.
            Ok(bytes) if bytes.starts_with(b"\0asm") => Program::Wasm(bytes),
            Ok(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "wasm: not a WebAssembly binary (a module or a component, starting with \\0asm)",
                );
            }
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("wasm: not base64: {e}")),
        },
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give either \"code\" (Python) or \"wasm\" (a WASI program, base64)",
            );
        }
    };
    // An argument reaches a program as a C string.
    if r.args.iter().any(|a| a.contains('\0')) {
        return error(
            StatusCode::BAD_REQUEST,
            "args: an argument cannot hold a NUL character",
        );
    }
    // As a system's `ARG_MAX` bounds them: each argument costs the server
    // and the worker far more than its bytes in the body (`""` is three
    // bytes there, a string of its own here).
    let arg_bytes: usize = r.args.iter().map(String::len).sum();
    if r.args.len() > MAX_ARGS
        || arg_bytes > MAX_ARG_BYTES
        || r.args.iter().any(|a| a.len() > MAX_ARG_LEN)
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "args: at most {MAX_ARGS} arguments, each of at most {MAX_ARG_LEN} bytes, of at most {MAX_ARG_BYTES} bytes together"
            ),
        );
    }
    let names = match scratch::check_files(&r.files) {
        Ok(names) => names,
        Err(e) => return file_error(e),
    };
    let id = super::random_id();
    let runs = state.config.base.path.join("runs");
    let scratch_dir = RunDir(runs.join(&id));
    let scratch = scratch_dir.0.clone();
    if let Err(e) = std::fs::create_dir(&scratch) {
        return internal(e);
    }
    let (policy, limits) = match state.config.ceiling.narrow(&r.asks, &scratch) {
        Ok(p) => p,
        Err(e) => return refused(e),
    };
    let policy = match policy.to_toml() {
        Ok(t) => t,
        Err(e) => return internal(e),
    };
    // Python in a warm worker writes its program, policy and input over
    // the worker's own (see `worker::Pool`); any other run has a directory
    // of its own for them, and a WebAssembly program a cache of its own.
    let own = match (&state.pool, &program) {
        (Some(_), Program::Python(_)) => None,
        _ => {
            let dir = RunDir(runs.join(format!("{id}.run")));
            if let Err(e) = std::fs::create_dir(&dir.0) {
                return internal(e);
            }
            let (name, bytes) = match &program {
                Program::Python(code) => ("main.py", code.as_bytes()),
                Program::Wasm(bytes) => ("program.wasm", &bytes[..]),
            };
            let written = std::fs::write(dir.0.join(name), bytes)
                .and_then(|_| std::fs::write(dir.0.join("policy.toml"), &policy));
            if let Err(e) = written {
                return internal(e);
            }
            Some((dir, name))
        }
    };
    // Runs beyond the queue's length, or its bytes, are refused now.
    let size = (r.code.as_ref().map_or(0, String::len)
        + r.wasm.as_ref().map_or(0, String::len)
        + r.stdin.len()
        + arg_bytes
        + r.files
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()) as u64;
    let Some(ticket) = Queued::enter(state, size) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many runs are waiting (see --max-runs and --max-queue); try again later",
        );
    };
    // The request's files, once it has its place in the queue, on a thread
    // for blocking work: a thousand files keep no other request waiting.
    // The thread holds the directory and the place until it is done, so a
    // client that hangs up meanwhile leaves nothing behind and frees its
    // place only then.
    let files = std::mem::take(&mut r.files);
    // (A fill that fails is removed there too.)
    let fill = tokio::task::spawn_blocking(move || {
        scratch::fill(&scratch_dir.0, &files, &names).map(|()| (scratch_dir, ticket))
    });
    let (scratch_dir, ticket) = match fill.await {
        Ok(Ok(kept)) => kept,
        Ok(Err(e)) => return file_error(e),
        Err(e) => return internal(e),
    };
    let state = state.clone();
    respond(events, move |tap| async move {
        let Ok(_permit) = state.runs.clone().acquire_owned().await else {
            return Err("the server is ending".to_string());
        };
        drop(ticket);
        // The scratch directory goes when the run has ended (a streamed
        // answer's too), below.
        let result = match (&state.pool, own) {
            (Some(pool), None) => {
                let Program::Python(code) = &program else {
                    return Err("a warm worker runs Python only".to_string());
                };
                let job = super::worker::Job {
                    code,
                    policy: &policy,
                    stdin: r.stdin.as_bytes(),
                    scratch: &scratch,
                    ca_certs: &state.config.ca_certs,
                    python_path: &state.config.python_path,
                    args: &r.args,
                };
                pool.run(job, limits, tap, &state.gate).await
            }
            (_, own) => {
                let Some((dir, name)) = own else {
                    return Err("the run's files are missing".to_string());
                };
                // Programs sent by clients cannot fill capsa's shared cache.
                let cache = matches!(program, Program::Wasm(_)).then(|| dir.0.join("cache"));
                let launch = Launch {
                    policy_file: &dir.0.join("policy.toml"),
                    audit_file: &dir.0.join("audit.jsonl"),
                    scratch: &scratch,
                    ca_certs: &state.config.ca_certs,
                    python_path: &state.config.python_path,
                    cache_dir: cache.as_deref(),
                    program: &dir.0.join(name),
                    args: &r.args,
                };
                run_once(launch, r.stdin.into_bytes(), limits, tap, &state.gate).await
            }
        };
        // A tree the guest made may take seconds to remove (a deep one): on
        // a thread for blocking work, so that other requests go on.
        let _ = tokio::task::spawn_blocking(move || drop(scratch_dir)).await;
        match result {
            Ok(result) => Ok(serde_json::to_value(&result).unwrap_or_default()),
            Err(e) => Err(format!("cannot start a run: {e}")),
        }
    })
    .await
}

/// Whether the client asked for server-sent events.
fn wants_events(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all("accept")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

/// One server-sent event; `data` is one line of JSON.
fn event(name: &str, data: &serde_json::Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// Answers with what `work` returns: as one JSON body, or (`events`) as
/// `stdout` and `stderr` events while it runs, then a `result` event with
/// the whole answer (or an `error` event).
async fn respond<F, Fut>(events: bool, work: F) -> Answer
where
    F: FnOnce(Tap) -> Fut,
    Fut: std::future::Future<Output = Result<serde_json::Value, String>> + Send + 'static,
{
    if !events {
        // In a task of its own: a client that hangs up does not cut a call
        // short (a session would be left mid-call); it goes to its end, and
        // its answer is dropped.
        return match tokio::spawn(work(None)).await {
            Ok(Ok(v)) => json(StatusCode::OK, &v),
            Ok(Err(e)) => internal(e),
            Err(e) => internal(e),
        };
    }
    let (tap_tx, mut tap_rx) = tokio::sync::mpsc::channel(16);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let fut = work(Some(tap_tx));
    tokio::spawn(async move {
        let forward = async {
            let mut listening = true;
            let (mut out, mut err) = (Utf8Chunks::default(), Utf8Chunks::default());
            while let Some((which, bytes)) = tap_rx.recv().await {
                if !listening {
                    continue;
                }
                let (name, text) = match which {
                    Stream::Stdout => ("stdout", out.push(&bytes)),
                    Stream::Stderr => ("stderr", err.push(&bytes)),
                };
                if text.is_empty() {
                    continue;
                }
                // A client that left ends nothing: the run goes to its end.
                listening = tx
                    .send(event(name, &serde_json::Value::String(text)))
                    .await
                    .is_ok();
            }
            // What an output ended in the middle of, as the result has it.
            for (name, rest) in [("stdout", out.finish()), ("stderr", err.finish())] {
                if listening && !rest.is_empty() {
                    listening = tx
                        .send(event(name, &serde_json::Value::String(rest)))
                        .await
                        .is_ok();
                }
            }
        };
        let (answer, ()) = tokio::join!(fut, forward);
        let _ = tx
            .send(match answer {
                Ok(v) => event("result", &v),
                Err(e) => event(
                    "error",
                    &serde_json::json!({ "error": format!("capsa serve: {e}") }),
                ),
            })
            .await;
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-store")
        .body(Body::Events(rx))
        .unwrap_or_default()
}

/// The text of one output's chunks as they come, holding back a character
/// cut between two chunks (each event was decoded alone, and a character
/// split between two became two U+FFFD).
#[derive(Default)]
struct Utf8Chunks {
    held: Vec<u8>,
}

impl Utf8Chunks {
    fn push(&mut self, bytes: &[u8]) -> String {
        self.held.extend_from_slice(bytes);
        let rest = self
            .held
            .split_off(self.held.len() - cut_at_end(&self.held));
        let text = String::from_utf8_lossy(&self.held).into_owned();
        self.held = rest;
        text
    }

    fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.held).into_owned();
        self.held.clear();
        text
    }
}

/// How many bytes at the end of `b` begin a UTF-8 character that is not
/// complete there.
fn cut_at_end(b: &[u8]) -> usize {
    for back in 1..=b.len().min(4) {
        let need = match b[b.len() - back] {
            0x80..=0xBF => continue,
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if need > back { back } else { 0 };
    }
    0
}

enum Program {
    Python(String),
    Wasm(Vec<u8>),
}

async fn post_session(state: &State, asks: Asks) -> Answer {
    if state.sessions().len() >= state.config.max_sessions {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{} sessions are open, the most this server keeps (--max-sessions); end one first",
                state.config.max_sessions
            ),
        );
    }
    let id = super::random_id();
    let dir = state.config.base.path.join("sessions").join(&id);
    let scratch = dir.join("scratch");
    if let Err(e) = std::fs::create_dir_all(&scratch) {
        return internal(e);
    }
    let (mut policy, limits) = match state.config.ceiling.narrow(&asks, &scratch) {
        Ok(p) => p,
        Err(e) => {
            let _ = capsa_sandbox::load::remove_tree(&dir);
            return refused(e);
        }
    };
    // The interpreter lives on between calls; the server holds each call
    // to the limits instead.
    policy.limits.timeout = Some(capsa_policy::Scalar::Str("none".into()));
    policy.limits.max_output = Some(capsa_policy::Scalar::Str("none".into()));
    let policy_file = dir.join("policy.toml");
    let written = policy
        .to_toml()
        .map_err(|e| e.to_string())
        .and_then(|t| std::fs::write(&policy_file, t).map_err(|e| e.to_string()));
    if let Err(e) = written {
        let _ = capsa_sandbox::load::remove_tree(&dir);
        return internal(e);
    }
    let program = state.config.base.path.join("session.py");
    let args: [String; 0] = [];
    let launch = Launch {
        policy_file: &policy_file,
        audit_file: &dir.join("audit.jsonl"),
        scratch: &scratch,
        ca_certs: &state.config.ca_certs,
        python_path: &state.config.python_path,
        cache_dir: None,
        program: &program,
        args: &args,
    };
    let uploads = OutputBudget::new(limits.max_write);
    match Session::start(launch, dir.clone(), limits) {
        Ok(s) => {
            let mut sessions = state.sessions();
            if sessions.len() >= state.config.max_sessions {
                drop(sessions);
                tokio::spawn(async move {
                    let mut s = s;
                    s.end().await
                });
                return error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "the most sessions this server keeps are open (--max-sessions)",
                );
            }
            let handle = Handle {
                scratch: s.scratch.clone(),
                cancel: s.cancel.clone(),
                session: Arc::new(tokio::sync::Mutex::new(s)),
                uploads,
                max_write: limits.max_write,
            };
            sessions.insert(id.clone(), handle);
            json(StatusCode::CREATED, &serde_json::json!({"id": id}))
        }
        Err(e) => {
            let _ = capsa_sandbox::load::remove_tree(&dir);
            internal(format!("cannot start a session: {e}"))
        }
    }
}

fn gone(state: &State, id: &str) -> Answer {
    let shown = capsa_policy::escape_for_terminal(id);
    match state.why_ended(id) {
        Some(why) => error(
            StatusCode::NOT_FOUND,
            format!("session {shown} has ended: {why}"),
        ),
        None => error(StatusCode::NOT_FOUND, format!("no session {shown}")),
    }
}

fn find(state: &State, id: &str) -> Option<Handle> {
    state.sessions().get(id).cloned()
}

async fn exec(state: &Arc<State>, id: &str, r: ExecRequest, events: bool) -> Answer {
    let Some(handle) = find(state, id) else {
        return gone(state, id);
    };
    let Ok(s) = handle.session.clone().try_lock_owned() else {
        return error(
            StatusCode::CONFLICT,
            "the session is running another call; wait for its answer",
        );
    };
    // It may have ended while this call waited for it.
    if find(state, id).is_none() {
        return gone(state, id);
    }
    if s.ran_between_calls() {
        state.sessions().remove(id);
        state.remember_end(id, RAN_BETWEEN_CALLS.into());
        let mut s = s;
        s.end().await;
        return gone(state, id);
    }
    let timeout = match r.timeout.as_deref().map(capsa_policy::parse_duration) {
        None => None,
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        Some(Ok(t)) => match s.limits.timeout {
            Some(max) if t > max => {
                return error(
                    StatusCode::FORBIDDEN,
                    format!(
                        "denied: a timeout of {} is beyond this session's {}",
                        capsa_policy::format_duration(t),
                        capsa_policy::format_duration(max)
                    ),
                );
            }
            _ => Some(t),
        },
    };
    let state = state.clone();
    let id = id.to_string();
    respond(events, move |tap| async move {
        let mut s = s;
        Ok(match s.exec(&r.code, &r.stdin, timeout, tap).await {
            Ok(result) => serde_json::to_value(&result).unwrap_or_default(),
            Err((result, why)) => {
                // A session deleted during the call keeps that reason.
                if state.sessions().remove(&id).is_some() {
                    state.remember_end(&id, why);
                }
                s.end().await;
                with_end(result)
            }
        })
    })
    .await
}

/// The answer of a call that ended its session says so.
fn with_end(result: RunResult) -> serde_json::Value {
    let mut v = serde_json::to_value(&result).unwrap_or_default();
    v["session_ended"] = serde_json::Value::Bool(true);
    v
}

async fn delete_session(state: &State, id: &str) -> Answer {
    let Some(handle) = state.sessions().remove(id) else {
        return gone(state, id);
    };
    state.remember_end(id, "it was deleted".into());
    // A call going on in it ends with its process.
    handle.end().await;
    no_content()
}

fn decode_name(raw: &str) -> Result<PathBuf, Answer> {
    let name = percent_decode(raw)
        .ok_or_else(|| error(StatusCode::BAD_REQUEST, "the file name is not UTF-8"))?;
    scratch::check_name(&name).map_err(file_error)
}

/// Whether a name in the file API (as sent, percent-encoded) names a
/// directory as a path would: ending in `/` or `/.`.
fn names_dir(raw: &str) -> bool {
    percent_decode(raw).is_some_and(|n| n.ends_with('/') || n.ends_with("/.") || n == ".")
}

async fn get_file(state: &State, id: &str, name: Option<&str>) -> Answer {
    let Some(handle) = find(state, id) else {
        return gone(state, id);
    };
    let raw_name = name.unwrap_or_default();
    let name = match name.filter(|n| !n.is_empty()) {
        Some(n) => match decode_name(n) {
            Ok(p) => Some(p),
            Err(a) => return a,
        },
        None => None,
    };
    // `sub/` names a directory, as a path does: never a file.
    let as_dir = name.as_ref().is_some() && names_dir(raw_name);
    let root = handle.scratch;
    let found = tokio::task::spawn_blocking(move || scratch::read(&root, name.as_deref())).await;
    match found {
        Ok(Ok(Found::File(_))) if as_dir => error(
            StatusCode::BAD_REQUEST,
            format!(
                "{}: a file, not a directory (the name ends in /)",
                capsa_policy::escape_for_terminal(raw_name)
            ),
        ),
        Ok(Ok(Found::File(bytes))) => Response::builder()
            .header("content-type", "application/octet-stream")
            .body(full(bytes))
            .unwrap_or_default(),
        Ok(Ok(Found::Dir(entries))) => json(
            StatusCode::OK,
            &serde_json::json!({"entries": entries.into_iter().map(|(name, dir, size)| serde_json::json!({
                "name": name, "type": if dir { "directory" } else { "file" }, "size": size,
            })).collect::<Vec<_>>()}),
        ),
        Ok(Err(e)) => file_error(e),
        Err(e) => internal(e),
    }
}

async fn put_file(state: &State, id: &str, name: &str, bytes: &Bytes) -> Answer {
    let Some(handle) = find(state, id) else {
        return gone(state, id);
    };
    if names_dir(name) {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "{}: a file is put under its name, which does not end in /",
                capsa_policy::escape_for_terminal(name)
            ),
        );
    }
    let name = match decode_name(name) {
        Ok(p) => p,
        Err(a) => return a,
    };
    let names = NAME_COST * name.components().count() as u64;
    let n = bytes.len() as u64;
    if !handle.uploads.spend(n + names) {
        let limit = handle.max_write.unwrap_or_default();
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the files put into this session would pass its write limit of {} \
                 (--max-write): nothing was written",
                capsa_policy::format_size(limit)
            ),
        );
    }
    let root = handle.scratch;
    let bytes = bytes.clone();
    let answer =
        match tokio::task::spawn_blocking(move || scratch::write(&root, &name, &bytes)).await {
            Ok(Ok(())) => return no_content(),
            Ok(Err(e)) => file_error(e),
            Err(e) => internal(e),
        };
    // The directories it made stay, and so does what they cost.
    handle.uploads.give_back(n);
    answer
}

/// What each name an upload makes costs against the budget: a block, as a
/// program's own writes are charged for each file or directory they make.
const NAME_COST: u64 = 4096;

/// `%XX` escapes of a URL path, decoded; `None` if the result is not UTF-8
/// or an escape is malformed.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

const RAN_BETWEEN_CALLS: &str = "its interpreter kept running after its call had ended";

/// A connection counted against its peer, until dropped.
pub struct PeerSlot {
    state: Arc<State>,
    peer: std::net::IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut peers = self.state.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = peers.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                peers.remove(&self.peer);
            }
        }
    }
}

/// Kibibytes of request bodies the server reads at once (512 MiB).
const BODIES_KIB: usize = 512 << 10;

/// Bytes of the runs waiting (their programs, input and files, on disk).
const MAX_WAITING_BYTES: u64 = 1 << 30;

/// A run's place in the queue, given back when it starts (or is dropped).
struct Queued {
    waiting: Arc<(std::sync::atomic::AtomicUsize, std::sync::atomic::AtomicU64)>,
    size: u64,
}

impl Queued {
    fn enter(state: &State, size: u64) -> Option<Queued> {
        use std::sync::atomic::Ordering::SeqCst;
        let w = state.waiting.clone();
        let queued = Queued {
            waiting: w.clone(),
            size,
        };
        let n = w.0.fetch_add(1, SeqCst);
        let bytes = w.1.fetch_add(size, SeqCst);
        // Given back at once (by drop) when over.
        (n < state.config.max_queue && bytes + size <= MAX_WAITING_BYTES).then_some(queued)
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.waiting.0.fetch_sub(1, SeqCst);
        self.waiting.1.fetch_sub(self.size, SeqCst);
    }
}

/// Connections the server keeps open at once: as many as its descriptors
/// allow (raised to the hard limit), half of them, at most 4096.
fn max_connections() -> usize {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let mut limit = getrlimit(Resource::Nofile);
        if limit.current < limit.maximum {
            limit.current = limit.maximum;
            let _ = setrlimit(Resource::Nofile, limit);
        }
        let fds = getrlimit(Resource::Nofile).current.unwrap_or(1024);
        ((fds / 2) as usize).clamp(64, MAX_CONNECTIONS)
    }
    #[cfg(not(unix))]
    {
        MAX_CONNECTIONS
    }
}

/// MCP clients one server keeps at once over HTTP.
const MAX_MCP_CLIENTS: usize = 1024;

fn mcp_session_id(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}

/// MCP's streamable HTTP transport, answering each request in its response
/// (as JSON; no server-initiated messages are sent).
async fn mcp_post(state: &Arc<State>, req: Request<Incoming>) -> Answer {
    let given = mcp_session_id(&req);
    let msg: serde_json::Value = match body_json(state, req).await {
        Ok(v) => v,
        Err(a) => return a,
    };
    if !msg.is_object() {
        return error(
            StatusCode::BAD_REQUEST,
            "send one JSON-RPC message per request",
        );
    }
    let initialize = msg["method"] == "initialize";
    let (id, names) = if initialize {
        // When the table is full, the client unheard from longest makes
        // room (a flood of clients cannot lock new ones out).
        let evicted = {
            let mut clients = state.mcp.lock().unwrap_or_else(|e| e.into_inner());
            let oldest = (clients.len() >= MAX_MCP_CLIENTS)
                .then(|| {
                    clients
                        .iter()
                        .filter_map(|(id, n)| Some((n.try_lock().ok()?.last_used, id.clone())))
                        .min()
                        .map(|(_, id)| id)
                })
                .flatten();
            oldest.and_then(|id| clients.remove(&id))
        };
        if let Some(old) = evicted {
            for sid in old.lock().await.ids() {
                let _ = delete_session(state, &sid).await;
            }
        }
        let mut clients = state.mcp.lock().unwrap_or_else(|e| e.into_inner());
        if clients.len() >= MAX_MCP_CLIENTS {
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many MCP clients are busy; end one (DELETE /mcp) first",
            );
        }
        let id = super::random_id();
        let names = Arc::new(tokio::sync::Mutex::new(super::mcp::Names::default()));
        clients.insert(id.clone(), names.clone());
        (id, names)
    } else {
        let Some(id) = given else {
            return error(
                StatusCode::BAD_REQUEST,
                "an Mcp-Session-Id header is needed (from the answer to initialize)",
            );
        };
        let found = state
            .mcp
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned();
        match found {
            Some(n) => (id, n),
            None => {
                return error(
                    StatusCode::NOT_FOUND,
                    "no such MCP session; initialize again",
                );
            }
        }
    };
    let answer = {
        let mut names = names.lock().await;
        super::mcp::handle(state, &mut names, &msg).await
    };
    let mut r = match answer {
        Some(a) => json(StatusCode::OK, &a),
        None => Response::builder()
            .status(StatusCode::ACCEPTED)
            .body(Body::default())
            .unwrap_or_default(),
    };
    if let Ok(v) = hyper::header::HeaderValue::from_str(&id) {
        r.headers_mut().insert("mcp-session-id", v);
    }
    r
}

/// Ends an MCP client's session, and the sandboxes it started.
async fn mcp_delete(state: &Arc<State>, req: &Request<Incoming>) -> Answer {
    let Some(id) = mcp_session_id(req) else {
        return error(
            StatusCode::BAD_REQUEST,
            "an Mcp-Session-Id header is needed",
        );
    };
    let removed = state
        .mcp
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    let Some(names) = removed else {
        return error(StatusCode::NOT_FOUND, "no such MCP session");
    };
    for sid in names.lock().await.ids() {
        let _ = delete_session(state, &sid).await;
    }
    no_content()
}

/// The same calls as the HTTP routes, for the MCP server: the status and
/// the body of the answer the route would give.
pub mod calls {
    use super::*;

    async fn decode(a: Answer) -> (StatusCode, Bytes) {
        let status = a.status();
        let body = a
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        (status, body)
    }

    fn bad(e: impl std::fmt::Display) -> (StatusCode, Bytes) {
        let body = serde_json::json!({ "error": e.to_string() }).to_string();
        (StatusCode::BAD_REQUEST, Bytes::from(body))
    }

    pub async fn run(state: &Arc<State>, body: serde_json::Value) -> (StatusCode, Bytes) {
        match serde_json::from_value::<RunRequest>(body) {
            Ok(r) => decode(post_run(state, r, false).await).await,
            Err(e) => bad(e),
        }
    }

    pub async fn start_session(state: &Arc<State>) -> (StatusCode, Bytes) {
        decode(post_session(state, Asks::default()).await).await
    }

    pub async fn exec(state: &Arc<State>, id: &str, code: String) -> (StatusCode, Bytes) {
        let r = ExecRequest {
            code,
            stdin: String::new(),
            timeout: None,
        };
        decode(super::exec(state, id, r, false).await).await
    }

    pub async fn read(state: &Arc<State>, id: &str, name: Option<&str>) -> (StatusCode, Bytes) {
        let name = name.map(utf8_percent_encode);
        decode(get_file(state, id, name.as_deref()).await).await
    }

    pub async fn write(
        state: &Arc<State>,
        id: &str,
        name: &str,
        bytes: &[u8],
    ) -> (StatusCode, Bytes) {
        let name = utf8_percent_encode(name);
        decode(put_file(state, id, &name, &Bytes::copy_from_slice(bytes)).await).await
    }

    /// The routes take a name as it appears in a URL.
    fn utf8_percent_encode(name: &str) -> String {
        name.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Utf8Chunks;

    /// Values are counted outside strings only, escapes included.
    #[test]
    fn values_are_counted_before_a_body_is_parsed() {
        let many = format!("[{}]", vec!["\"\""; super::MAX_JSON_VALUES + 2].join(","));
        assert!(super::too_many_values(many.as_bytes()));
        let fewer = format!("[{}]", vec!["\"\""; super::MAX_JSON_VALUES].join(","));
        assert!(!super::too_many_values(fewer.as_bytes()));
        let text = format!(
            r#"{{"code": "{}", "x": "\\", "y": "\"[,{{"}}"#,
            ",".repeat(super::MAX_JSON_VALUES * 2)
        );
        assert!(!super::too_many_values(text.as_bytes()));
        assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok());
    }

    /// A character cut between two chunks comes out whole, in the second.
    #[test]
    fn output_events_never_cut_a_character() {
        let text = "aé€😀b";
        let bytes = text.as_bytes();
        for at in 0..=bytes.len() {
            for at2 in at..=bytes.len() {
                let mut d = Utf8Chunks::default();
                let mut got = d.push(&bytes[..at]);
                got += &d.push(&bytes[at..at2]);
                got += &d.push(&bytes[at2..]);
                got += &d.finish();
                assert_eq!(got, text, "cut at {at} and {at2}");
            }
        }
        // Bytes that are no UTF-8 are replaced as before, and a character
        // the output ended in the middle of too.
        let mut d = Utf8Chunks::default();
        assert_eq!(d.push(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(d.push(b"c\xe2\x82"), "c");
        assert_eq!(d.finish(), "\u{fffd}");
    }
}
