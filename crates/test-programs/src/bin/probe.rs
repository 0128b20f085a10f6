//! A guest that tries one thing the test names and says what happened:
//! `ok: ...` and exit 0, or `err: KIND: message` and exit 1.
//!
//! It is the attacker in the security tests: each command is a real attempt
//! (open, connect, allocate), never a simulation.

use std::io::{Read, Write};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cmd = args.get(1).map(String::as_str).unwrap_or("hello");
    let a = |i: usize| args.get(i).cloned().unwrap_or_default();
    let result: std::io::Result<String> = match cmd {
        "hello" => Ok("hello from wasm".into()),
        "args" => Ok(args.join(" ")),
        "cwd" => std::env::current_dir().map(|d| d.display().to_string()),
        "read" => std::fs::read_to_string(a(2)),
        "read3" => read_from_descriptor_3(&a(2)),
        "write" => std::fs::write(a(2), a(3)).map(|_| "written".into()),
        "append" => std::fs::OpenOptions::new()
            .append(true)
            .open(a(2))
            .and_then(|mut f| f.write_all(a(3).as_bytes()))
            .map(|_| "appended".into()),
        "truncate" => std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(a(2))
            .map(|_| "truncated".into()),
        "mkdir" => std::fs::create_dir(a(2)).map(|_| "created".into()),
        "rm" => std::fs::remove_file(a(2)).map(|_| "removed".into()),
        "rmdir" => std::fs::remove_dir(a(2)).map(|_| "removed".into()),
        "rename" => std::fs::rename(a(2), a(3)).map(|_| "renamed".into()),
        "link" => std::fs::hard_link(a(2), a(3)).map(|_| "linked".into()),
        "ls" => std::fs::read_dir(a(2)).and_then(|rd| {
            let mut names = rd
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<std::io::Result<Vec<_>>>()?;
            names.sort();
            Ok(names.join(","))
        }),
        "env" => Ok(std::env::var(a(2)).unwrap_or_else(|_| "unset".into())),
        "envall" => {
            let mut v: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
            v.sort();
            Ok(v.join(";"))
        }
        "connect" => connect(&a(2)),
        "lookup" => lookup(&a(2)),
        "http" => http_get(&a(2)),
        "hold" => hold(a(2).parse().unwrap_or(1)),
        // Has the host hold MIB of field lists with small ones between,
        // drops the large ones, then grows its own memory by as much.
        "churn" => churn(a(2).parse().unwrap_or(1)),
        // Asks the host for one field list of N entries, each value the
        // same MiB of its memory: N MiB to copy from 1 MiB held.
        "alias-fields" => alias_fields(a(2).parse().unwrap_or(1)),
        // Gives N outgoing requests an authority of LEN bytes each, and
        // keeps them.
        "authority" => authority(a(2).parse().unwrap_or(1), a(3).parse().unwrap_or(1)),
        // Reads stdin to its end, then holds, for as long as the limit's
        // watchdog takes to look.
        "drain-hold" => (|| {
            let mut buf = vec![0u8; 64 << 10];
            let mut stdin = std::io::stdin();
            while stdin.read(&mut buf)? > 0 {}
            let held = hold(a(2).parse().unwrap_or(1));
            std::thread::sleep(std::time::Duration::from_millis(300));
            held
        })(),
        "listen" => std::net::TcpListener::bind(a(2))
            .map(|l| format!("listening on {}", l.local_addr().unwrap())),
        "alloc" => {
            // Grow until the allocator fails; the sandbox must stop this.
            let mut v: Vec<Vec<u8>> = Vec::new();
            loop {
                v.push(vec![1u8; 16 << 20]);
                println!("allocated {} MiB", v.len() * 16);
            }
        }
        "spin" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_secs(a(2).parse().unwrap_or(60)));
            Ok("slept".into())
        }
        "flood" => {
            let line = "x".repeat(1023);
            let mut out = std::io::stdout().lock();
            loop {
                if writeln!(out, "{line}").is_err() {
                    std::process::exit(3);
                }
            }
        }
        // Writes N pieces of 64 KiB to a new file; N names in a directory
        // (`touch`); grows a file to a size without writing (`grow`).
        "fill" => std::fs::File::create(a(2)).and_then(|mut f| {
            for _ in 0..a(3).parse().unwrap_or(1) {
                f.write_all(&[b'x'; 65536])?;
            }
            Ok("filled".into())
        }),
        // One byte every 4 KiB: each takes a block of its own.
        "stride" => std::fs::File::create(a(2)).and_then(|mut f| {
            use std::io::{Seek, SeekFrom};
            for i in 0..a(3).parse::<u64>().unwrap_or(1) {
                f.seek(SeekFrom::Start(i * 4096))?;
                f.write_all(b"x")?;
            }
            Ok("strided".into())
        }),
        "touch" => (0..a(3).parse().unwrap_or(1))
            .try_for_each(|i| std::fs::File::create(format!("{}/f{i}", a(2))).map(drop))
            .map(|_| "touched".into()),
        "grow" => std::fs::File::create(a(2))
            .and_then(|f| f.set_len(a(3).parse().unwrap_or(0)))
            .map(|_| "grown".into()),
        "stdin" => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map(|_| s.trim().to_uppercase())
        }
        "exit" => std::process::exit(a(2).parse().unwrap_or(0)),
        "trap" => {
            #[cfg(target_arch = "wasm32")]
            core::arch::wasm32::unreachable();
            #[cfg(not(target_arch = "wasm32"))]
            std::process::abort();
        }
        other => Err(std::io::Error::other(format!("unknown command {other}"))),
    };
    match result {
        Ok(s) => println!("ok: {s}"),
        Err(e) => {
            println!("err: {:?}: {e}", e.kind());
            std::process::exit(1);
        }
    }
}

/// Reads `path` from descriptor 3, as Zig's standard library opens every
/// relative path (it takes the first directory for its working directory).
#[cfg(target_os = "wasi")]
fn read_from_descriptor_3(path: &str) -> std::io::Result<String> {
    use std::os::fd::FromRawFd;
    // wasi-libc's `O_RDONLY`.
    const O_RDONLY: i32 = 0x0400_0000;
    unsafe extern "C" {
        fn openat(dir: i32, path: *const std::ffi::c_char, flags: i32, ...) -> i32;
    }
    let c = std::ffi::CString::new(path).map_err(std::io::Error::other)?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    let fd = unsafe { openat(3, c.as_ptr(), O_RDONLY) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut s = String::new();
    f.read_to_string(&mut s)?;
    Ok(s)
}

#[cfg(not(target_os = "wasi"))]
fn read_from_descriptor_3(_: &str) -> std::io::Result<String> {
    Err(std::io::ErrorKind::Unsupported.into())
}

fn connect(addr: &str) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.write_all(b"ping\n")?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf)?;
    Ok(format!(
        "reply {}",
        String::from_utf8_lossy(&buf[..n]).trim()
    ))
}

fn lookup(name: &str) -> std::io::Result<String> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<String> = (name, 80)
        .to_socket_addrs()?
        .map(|a| a.ip().to_string())
        .collect();
    Ok(addrs.join(","))
}

/// GET a URL through `wasi:http/outgoing-handler` (WASI 0.2).
#[cfg(all(target_os = "wasi", target_env = "p2"))]
fn http_get(url: &str) -> std::io::Result<String> {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{Fields, OutgoingRequest, Scheme};
    let bad = |m: String| std::io::Error::other(m);
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad(format!("not a URL: {url}")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let req = OutgoingRequest::new(Fields::new());
    let scheme = if scheme == "https" {
        Scheme::Https
    } else {
        Scheme::Http
    };
    req.set_scheme(Some(&scheme)).unwrap();
    req.set_authority(Some(authority)).unwrap();
    req.set_path_with_query(Some(path)).unwrap();
    let fut = outgoing_handler::handle(req, None).map_err(|e| bad(format!("{e:?}")))?;
    fut.subscribe().block();
    let resp = fut
        .get()
        .expect("ready")
        .expect("first get")
        .map_err(|e| bad(format!("http error {e:?}")))?;
    let status = resp.status();
    let body = resp.consume().expect("body");
    let stream = body.stream().expect("stream");
    let mut out = Vec::new();
    while let Ok(chunk) = stream.blocking_read(65536) {
        out.extend_from_slice(&chunk);
    }
    Ok(format!("{status} {}", String::from_utf8_lossy(&out).trim()))
}

/// Makes the host hold `mib` MiB for it while its own memory stays small:
/// HTTP field lists of 100 KiB each, all made from the same bytes, all kept.
#[cfg(all(target_os = "wasi", target_env = "p2"))]
fn hold(mib: usize) -> std::io::Result<String> {
    let value = vec![b'a'; 100 << 10];
    let mut kept = Vec::new();
    for _ in 0..mib * 1024 / 100 {
        kept.push(fields_of("x-a", &value)?);
    }
    Ok(format!("holding {} field lists", kept.len()))
}

/// A field list of one field.
#[cfg(all(target_os = "wasi", target_env = "p2"))]
fn fields_of(name: &str, value: &[u8]) -> std::io::Result<wasip2::http::types::Fields> {
    let fields = wasip2::http::types::Fields::new();
    fields
        .append(name, value)
        .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    Ok(fields)
}

#[cfg(all(target_os = "wasi", target_env = "p2"))]
fn churn(mib: usize) -> std::io::Result<String> {
    let value = vec![b'a'; 100 << 10];
    let (mut large, mut small) = (Vec::new(), Vec::new());
    for _ in 0..mib * 1024 / 100 {
        large.push(fields_of("x-a", &value)?);
        small.push(fields_of("x-b", b"b")?);
    }
    drop(large);
    let mut own = vec![0u8; mib << 20];
    for i in (0..own.len()).step_by(4096) {
        own[i] = 1;
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    Ok(format!("grew by {} MiB", own.len() >> 20))
}

#[cfg(all(target_os = "wasi", target_env = "p2"))]
fn alias_fields(n: usize) -> std::io::Result<String> {
    use wasip2::http::types::Fields;
    let value = std::mem::ManuallyDrop::new(vec![b'a'; 1 << 20]);
    // Every entry's value is the same bytes: the entries are never dropped
    // (each would free them).
    let entries: Vec<(String, Vec<u8>)> = (0..n)
        .map(|_| {
            let v = unsafe {
                Vec::from_raw_parts(value.as_ptr().cast_mut(), value.len(), value.capacity())
            };
            ("x-a".to_string(), v)
        })
        .collect();
    let entries = std::mem::ManuallyDrop::new(entries);
    Ok(match Fields::from_list(&entries) {
        Ok(_) => format!("made a field list of {n} entries"),
        Err(e) => format!("refused: {e:?}"),
    })
}

#[cfg(all(target_os = "wasi", target_env = "p2"))]
fn authority(len: usize, n: usize) -> std::io::Result<String> {
    use wasip2::http::types::{Fields, Method, OutgoingRequest};
    let text = "a".repeat(len);
    let mut kept = Vec::new();
    for i in 0..n {
        let req = OutgoingRequest::new(Fields::new());
        if req.set_authority(Some(&text)).is_err() {
            return Ok(format!("authority refused at {i}"));
        }
        if req.set_method(&Method::Other(text.clone())).is_err() {
            return Ok(format!("method refused at {i}"));
        }
        kept.push(req);
    }
    Ok(format!("set {} requests", kept.len()))
}

#[cfg(not(all(target_os = "wasi", target_env = "p2")))]
fn authority(_len: usize, _n: usize) -> std::io::Result<String> {
    Err(no_http())
}

#[cfg(not(all(target_os = "wasi", target_env = "p2")))]
fn alias_fields(_n: usize) -> std::io::Result<String> {
    Err(no_http())
}

#[cfg(not(all(target_os = "wasi", target_env = "p2")))]
fn churn(_mib: usize) -> std::io::Result<String> {
    Err(no_http())
}

#[cfg(not(all(target_os = "wasi", target_env = "p2")))]
fn hold(_mib: usize) -> std::io::Result<String> {
    Err(no_http())
}

#[cfg(not(all(target_os = "wasi", target_env = "p2")))]
fn http_get(_url: &str) -> std::io::Result<String> {
    Err(no_http())
}

/// What the preview 1 build answers for every wasi:http command.
#[cfg(not(all(target_os = "wasi", target_env = "p2")))]
fn no_http() -> std::io::Error {
    std::io::Error::other("wasi:http needs WASI 0.2")
}
