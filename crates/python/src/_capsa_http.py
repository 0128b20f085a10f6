"""HTTP and HTTPS for Python in capsa, through wasi:http.

CPython for WASI has no `ssl` module. capsa's host does TLS (and checks
every request against the run's grants), so this module gives http.client
(and through it urllib) and urllib3 (and through it requests) a connection
whose "socket" speaks HTTP/1.1 to the host's `wasi:http/outgoing-handler`:

- bytes http.client writes are parsed back into a request (request line,
  headers, a body by Content-Length or chunked) and sent as a wasi:http
  request as soon as its head is complete, the body streamed after it;
- the response is given back as HTTP/1.1 bytes (the body re-chunked when
  the server sent no length), so http.client parses it as it would any.

Plain http:// goes the same way, so every request gets the same checks.
Timeouts are those of the socket at each wait, as natively. Errors are the
ones a native client raises (ConnectionRefusedError, TimeoutError, gaierror,
RemoteDisconnected), wrapped by urllib and urllib3 as they wrap those.
"""

import collections
import errno
import http
import http.client
import importlib.machinery
import io
import socket
import sys
import time

from componentize_py_types import Err, Ok
from wit_world.imports import http_types as _ht
from wit_world.imports import monotonic_clock as _clock
from wit_world.imports import outgoing_handler as _handler
from wit_world.imports import poll as _poll
from wit_world.imports import streams as _streams

# Header names the host sets itself or refuses (wasi:http's forbidden list).
_FORBIDDEN = frozenset(
    (
        b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
        b"upgrade", b"host", b"http2-settings", b"proxy-authenticate",
        b"proxy-authorization",
    )
)
_METHODS = {
    "GET": _ht.Method_Get, "HEAD": _ht.Method_Head, "POST": _ht.Method_Post,
    "PUT": _ht.Method_Put, "DELETE": _ht.Method_Delete,
    "CONNECT": _ht.Method_Connect, "OPTIONS": _ht.Method_Options,
    "TRACE": _ht.Method_Trace, "PATCH": _ht.Method_Patch,
}
# The most a single wasi:io blocking write takes.
_WRITE_MAX = 4096
_READ_MAX = 64 * 1024
_MAX_HEAD = 256 * 1024


class CertificateVerifyError(ConnectionError):
    """The host did not trust the server's certificate (what natively is
    ssl.SSLCertVerificationError; Python in capsa has no ssl module)."""


def _drop(*resources):
    for r in resources:
        if r is not None:
            try:
                r.__exit__(None, None, None)
            except Exception:  # noqa: BLE001 - already gone
                pass


def _wait(pollable, deadline):
    """Blocks until `pollable` is ready; False if `deadline` passed first."""
    if deadline is None:
        pollable.block()
        return True
    left = deadline - time.monotonic()
    if left <= 0:
        return pollable.ready()
    timer = _clock.subscribe_duration(int(left * 1e9))
    try:
        ready = _poll.poll([pollable, timer])
    finally:
        _drop(timer)
    return 0 in ready


def _authority(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _error(code, host, port):
    """The exception a native client raises for a wasi:http error code."""
    name = type(code).__name__.removeprefix("ErrorCode_")
    where = _authority(host, port)
    if name == "HttpRequestDenied":
        return PermissionError(
            errno.EACCES,
            f"capsa refused the connection to {where}: it is not granted "
            "(capsa's message on stderr names the flag that allows it)",
        )
    if name in ("DnsError", "DnsTimeout", "DestinationNotFound"):
        return socket.gaierror(socket.EAI_NONAME, f"{host}: Name or service not known")
    if name == "ConnectionRefused":
        return ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    if name in ("ConnectionTimeout", "ConnectionReadTimeout", "HttpResponseTimeout"):
        return TimeoutError("timed out")
    if name == "TlsCertificateError":
        return CertificateVerifyError(
            f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed for {where} "
            "(capsa verifies certificates on the host; its message on stderr says "
            "why, and --ca-cert=FILE trusts another CA)"
        )
    if name.startswith("Tls"):
        return ConnectionError(f"TLS with {where} failed ({name})")
    if name in ("ConnectionTerminated", "HttpResponseIncomplete"):
        return http.client.RemoteDisconnected(
            "Remote end closed connection without response"
        )
    value = getattr(code, "value", None)
    detail = f": {value}" if isinstance(value, str) else ""
    return OSError(f"HTTP request to {where} failed ({name}{detail})")


def _connection_phase(exc):
    """Errors a native client gets while connecting (before any response)."""
    return isinstance(
        exc, (PermissionError, socket.gaierror, ConnectionRefusedError, CertificateVerifyError)
    )


class _Exchange:
    """One request and its response, over wasi:http."""

    def __init__(self, conn, method, target, headers, timeout):
        self.conn = conn
        self.method = method
        self.future = None
        self.body = None
        self.sink = None
        self.response = None
        self.error = None
        self.deadline = None
        scheme = conn.scheme
        path = target
        if target.startswith(("http://", "https://")):
            # Absolute form (as for a proxy): the URL names the server.
            from urllib.parse import urlsplit

            u = urlsplit(target)
            scheme, host, port = u.scheme, u.hostname, u.port
            authority = _authority(host, port or (443 if scheme == "https" else 80))
            path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        else:
            authority = _authority(self.conn.host, self.conn.port)
        try:
            fields = _ht.Fields.from_list(
                [(k.decode("latin-1"), v) for k, v in headers if k.lower() not in _FORBIDDEN]
            )
        except Err as e:
            raise http.client.HTTPException(f"invalid request header: {e.value}") from None
        req = _ht.OutgoingRequest(fields)
        make = _METHODS.get(method)
        req.set_method(make() if make else _ht.Method_Other(method))
        req.set_scheme(_ht.Scheme_Https() if scheme == "https" else _ht.Scheme_Http())
        req.set_authority(authority)
        req.set_path_with_query(path or "/")
        self.body = req.body()
        self.sink = self.body.write()
        options = None
        if timeout is not None:
            options = _ht.RequestOptions()
            options.set_connect_timeout(max(1, int(timeout * 1e9)))
        try:
            self.future = _handler.handle(req, options)
        except Err as e:
            _drop(self.sink, self.body)
            self.sink = self.body = None
            raise _error(e.value, self.conn.host, self.conn.port) from None

    def write(self, data):
        """Streams part of the request body (dropped if the host stopped)."""
        if self.sink is None:
            return
        view = memoryview(data)
        try:
            for i in range(0, len(view), _WRITE_MAX):
                self.sink.blocking_write_and_flush(bytes(view[i : i + _WRITE_MAX]))
        except Err:
            # The request failed on the host; the future says why.
            _drop(self.sink)
            self.sink = None

    def finish(self):
        _drop(self.sink)
        self.sink = None
        if self.body is not None:
            body, self.body = self.body, None
            try:
                _ht.OutgoingBody.finish(body, None)
            except Err as e:
                if self.error is None:
                    self.error = _error(e.value, self.conn.host, self.conn.port)

    def wait(self, timeout, early=False):
        """Waits for the response head, up to `timeout` seconds from the
        first wait. `early` (from request()): raise only what natively
        happens while connecting, and keep the rest for getresponse()."""
        if self.future is not None:
            if self.deadline is None and timeout is not None:
                self.deadline = time.monotonic() + timeout
            pollable = self.future.subscribe()
            try:
                while (got := self.future.get()) is None:
                    if not _wait(pollable, self.deadline):
                        break
            finally:
                _drop(pollable)
            if got is None:
                if early:
                    return
                self.close()
                raise TimeoutError("timed out")
            _drop(self.future)
            self.future = None
            if isinstance(got, Ok) and isinstance(got.value, Ok):
                self.response = got.value.value
            elif isinstance(got, Ok):
                self.error = _error(got.value.value, self.conn.host, self.conn.port)
            else:
                self.error = OSError("the HTTP response was already taken")
        if self.error is not None and (not early or _connection_phase(self.error)):
            err, self.error = self.error, None
            self.close()
            raise err

    def close(self):
        _drop(self.sink, self.body, self.future, self.response)
        self.sink = self.body = self.future = self.response = None


class _ResponseRaw(io.RawIOBase):
    """The response as HTTP/1.1 bytes: head, then the body (re-chunked when
    the server gave no length), then end of file."""

    def __init__(self, exchange, sock):
        self.ex = exchange
        self.sock = sock
        self.pending = b""
        self.stream = None
        self.incoming = None
        self.chunked = False
        self.started = False
        self.ended = False

    def readable(self):
        return True

    def _start(self):
        self.started = True
        ex = self.ex
        ex.wait(self.sock.gettimeout())
        resp = ex.response
        if resp is None:
            # The exchange was given up (a timeout, a closed connection).
            raise http.client.RemoteDisconnected("Remote end closed connection without response")
        status = resp.status()
        fields = resp.headers()
        try:
            entries = fields.entries()
        finally:
            _drop(fields)
        names = {k.lower() for k, _ in entries}
        no_body = ex.method == "HEAD" or status in (204, 304) or 100 <= status < 200
        self.chunked = not no_body and "content-length" not in names
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = ""
        head = [f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1")]
        for k, v in entries:
            if k.lower() == "transfer-encoding":
                continue  # the host took the framing off; ours follows
            head.append(k.encode("latin-1") + b": " + v + b"\r\n")
        if self.chunked:
            head.append(b"transfer-encoding: chunked\r\n")
        head.append(b"\r\n")
        self.pending = b"".join(head)
        self.incoming = resp.consume()
        self.stream = self.incoming.stream()

    def _next_body(self, n):
        """The next piece of the body, b"" at its end."""
        deadline = None
        timeout = self.sock.gettimeout()
        if timeout is not None:
            deadline = time.monotonic() + timeout
        while True:
            try:
                data = self.stream.read(n)
            except Err as e:
                if isinstance(e.value, _streams.StreamError_Closed):
                    return b""
                code = _ht.http_error_code(e.value.value)
                if code is None:
                    raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer") from None
                raise _error(code, self.ex.conn.host, self.ex.conn.port) from None
            if data:
                return data
            pollable = self.stream.subscribe()
            try:
                ready = _wait(pollable, deadline)
            finally:
                _drop(pollable)
            if not ready:
                raise TimeoutError("timed out")

    def readinto(self, buf):
        if not self.started:
            self._start()
        while not self.pending and not self.ended:
            data = self._next_body(min(len(buf), _READ_MAX))
            if not data:
                self.ended = True
                self.pending = b"0\r\n\r\n" if self.chunked else b""
                self._release()
            elif self.chunked:
                self.pending = b"%x\r\n%b\r\n" % (len(data), data)
            else:
                self.pending = data
        n = min(len(buf), len(self.pending))
        buf[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n

    def _release(self):
        _drop(self.stream)
        self.stream = None
        if self.incoming is not None:
            incoming, self.incoming = self.incoming, None
            try:
                _drop(_ht.IncomingBody.finish(incoming))
            except Exception:  # noqa: BLE001 - the body is gone either way
                pass
        self.ex.close()

    def close(self):
        if not self.closed:
            _drop(self.stream)
            self.stream = None
            _drop(self.incoming)
            self.incoming = None
            self.ex.close()
        super().close()


class WasiHTTPSocket:
    """What http.client and urllib3 see as the connection's socket."""

    def __init__(self, scheme, host, port, timeout):
        self.scheme = scheme
        self.host = host
        self.port = port
        self._timeout = socket.getdefaulttimeout() if timeout is socket._GLOBAL_DEFAULT_TIMEOUT else timeout
        self._buf = bytearray()
        self._sending = None
        self._remaining = 0  # body bytes still due (Content-Length)
        self._chunked = False
        self._unread = collections.deque()  # exchanges without a reader yet
        self._closed = False

    # --- the socket methods http.client and urllib3 use
    def settimeout(self, timeout):
        self._timeout = timeout

    def gettimeout(self):
        return self._timeout

    def setsockopt(self, *args):
        pass

    def fileno(self):
        raise OSError(errno.EBADF, "an HTTP connection in capsa has no file descriptor")

    def sendall(self, data):
        if self._closed:
            raise OSError(errno.EBADF, "Bad file descriptor")
        # Not bytes-like: a TypeError, as a socket gives (http.client then
        # sends the items of an iterable one by one).
        self._buf += memoryview(data).cast("B")
        try:
            self._parse()
        except TypeError as e:
            # Never mistaken for the above.
            raise OSError(f"cannot send this HTTP request: {e}") from e

    def send(self, data):
        self.sendall(data)
        return len(data)

    def makefile(self, mode="rb", buffering=-1, **kwargs):
        if not self._unread:
            raise http.client.RemoteDisconnected("Remote end closed connection without response")
        return io.BufferedReader(_ResponseRaw(self._unread.popleft(), self), _READ_MAX)

    def shutdown(self, how=None):
        self.close()

    def close(self):
        # A response already handed to a reader lives on (as natively, the
        # file from makefile() keeps the connection open).
        self._closed = True
        while self._unread:
            self._unread.popleft().close()
        if self._sending is not None:
            self._sending.close()
            self._sending = None

    # --- request parsing
    def _parse(self):
        while self._buf:
            if self._sending is None:
                end = self._buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self._buf) > _MAX_HEAD:
                        raise http.client.HTTPException("request head too long")
                    return
                head = bytes(self._buf[:end]).split(b"\r\n")
                del self._buf[: end + 4]
                self._start(head)
            elif self._chunked:
                if not self._parse_chunk():
                    return
            else:
                take = min(self._remaining, len(self._buf))
                self._sending.write(self._buf[:take])
                del self._buf[:take]
                self._remaining -= take
                if self._remaining == 0:
                    self._end_request()

    def _start(self, head):
        try:
            method, target, _version = head[0].decode("latin-1").split(" ", 2)
        except ValueError:
            raise http.client.HTTPException(f"bad request line {head[0]!r}") from None
        headers = []
        for line in head[1:]:
            name, _, value = line.partition(b":")
            headers.append((name.strip().lower(), value.strip()))
        length = [v for k, v in headers if k == b"content-length"]
        self._chunked = any(
            k == b"transfer-encoding" and b"chunked" in v.lower() for k, v in headers
        )
        self._remaining = 0 if self._chunked or not length else int(length[0])
        ex = _Exchange(self, method, target, headers, self._timeout)
        self._unread.append(ex)
        self._sending = ex
        if not self._chunked and self._remaining == 0:
            self._end_request()

    def _parse_chunk(self):
        """Takes one chunk of a chunked body; False when more bytes are needed."""
        line_end = self._buf.find(b"\r\n")
        if line_end < 0:
            return False
        size = int(bytes(self._buf[:line_end]).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            # Trailers (not sent on) end with an empty line.
            p = line_end + 2
            if self._buf[p : p + 2] == b"\r\n":
                end = p + 2
            else:
                found = self._buf.find(b"\r\n\r\n", p)
                if found < 0:
                    return False
                end = found + 4
            del self._buf[:end]
            self._end_request()
            return True
        start = line_end + 2
        if len(self._buf) < start + size + 2:
            return False
        self._sending.write(self._buf[start : start + size])
        del self._buf[: start + size + 2]
        return True

    def _end_request(self):
        ex, self._sending = self._sending, None
        self._chunked = False
        ex.finish()

    def _settle(self):
        """After http.client's request(): wait for the connection, so that
        refusals raise there (urllib turns them into URLError)."""
        if self._unread and self._sending is None:
            self._unread[-1].wait(self._timeout, early=True)


# --- http.client (and urllib.request, which checks for HTTPSConnection
# when it is imported: this module is imported first)

def _connect(self, scheme):
    if getattr(self, "_tunnel_host", None):
        raise OSError(
            "HTTP proxies (CONNECT tunnels) are not used in capsa: the host "
            "connects to the server directly"
        )
    self.sock = WasiHTTPSocket(scheme, self.host, self.port, self.timeout)


def _http_connect(self):
    _connect(self, "http")


_native_request = http.client.HTTPConnection.request


def _request(self, method, url, body=None, headers={}, *, encode_chunked=False):  # noqa: B006
    _native_request(self, method, url, body, headers, encode_chunked=encode_chunked)
    if isinstance(self.sock, WasiHTTPSocket):
        self.sock._settle()


class HTTPSConnection(http.client.HTTPConnection):
    """http.client's HTTPSConnection, with TLS done and verified by capsa's
    host (against the system's CAs and --ca-cert). `context` is accepted
    and not used: there is no ssl module to make one."""

    default_port = http.client.HTTPS_PORT

    def __init__(self, host, port=None, *, context=None,
                 timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None,
                 blocksize=8192):
        super().__init__(host, port, timeout, source_address, blocksize)
        self._context = context

    def connect(self):
        _connect(self, "https")


class HostVerifiedContext:
    """What urllib makes where it would make an ssl.SSLContext: the host
    verifies every certificate, against the system's CAs and --ca-cert."""

    check_hostname = True

    def set_alpn_protocols(self, protocols):
        pass

    def load_verify_locations(self, *args, **kwargs):
        pass


http.client._create_https_context = lambda http_version: HostVerifiedContext()
http.client.HTTPConnection.connect = _http_connect
http.client.HTTPConnection.request = _request
http.client.HTTPSConnection = HTTPSConnection
if "HTTPSConnection" not in http.client.__all__:
    http.client.__all__.append("HTTPSConnection")


# --- urllib3 (requests): its connections open their own sockets, and its
# HTTPS connection is a placeholder when ssl is missing. Patched as it is
# imported.

def _patch_urllib3(run, mod):
    run()
    base = mod.HTTPConnection

    def _new_conn(self):
        return WasiHTTPSocket(self.scheme_for_capsa, self._dns_host, self.port, self.timeout)

    base.scheme_for_capsa = "http"
    base._new_conn = _new_conn
    base.is_connected = property(lambda self: self.sock is not None and not self.sock._closed)

    class HTTPSConnection(base):
        default_port = 443
        scheme_for_capsa = "https"
        is_verified = True
        proxy_is_verified = None

        def __init__(self, host, port=None, **kw):
            keep = ("timeout", "source_address", "blocksize", "socket_options", "proxy", "proxy_config")
            super().__init__(host, port, **{k: kw[k] for k in keep if k in kw})

        def set_cert(self, *args, **kwargs):
            pass

    # Without ssl, urllib3's BaseSSLError matches nothing; as this, a refused
    # certificate becomes urllib3's SSLError (requests.exceptions.SSLError).
    mod.BaseSSLError = CertificateVerifyError
    HTTPSConnection.__name__ = HTTPSConnection.__qualname__ = "HTTPSConnection"
    HTTPSConnection.__module__ = mod.__name__
    mod.HTTPSConnection = HTTPSConnection
    mod.VerifiedHTTPSConnection = HTTPSConnection


def _quiet_ipv6_probe(run, module):
    """urllib3 probes for IPv6 by binding [::1]:0 as it is imported; capsa
    refuses binds not granted, and would print a denial for it on every
    run. The probe gets the answer it would get (no), quietly."""
    saved = socket.has_ipv6
    socket.has_ipv6 = False
    try:
        run()
    finally:
        socket.has_ipv6 = saved


# Module name -> patch(run, module): runs the module's code by calling run().
_PATCHES = {
    "urllib3.connection": _patch_urllib3,
    "urllib3.util.connection": _quiet_ipv6_probe,
}


class _PatchingLoader:
    def __init__(self, loader, patch):
        self.loader = loader
        self.patch = patch

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.patch(lambda: self.loader.exec_module(module), module)

    def __getattr__(self, name):
        return getattr(self.loader, name)


class _PatchFinder:
    """Runs a module's code through its patch when it is first imported."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        patch = _PATCHES.get(fullname)
        if patch is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader, patch)
        return spec


sys.meta_path.insert(0, _PatchFinder)
