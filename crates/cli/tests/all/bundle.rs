//! Bundles: pack a folder, inspect it, run it with consent; refuse damaged
//! or hostile bundles before anything runs.

use crate::support::*;
use std::path::Path;

fn pack(dir: &Path, out: &Path, extra: &[&str]) -> Run {
    capsa()
        .arg("pack")
        .arg(dir)
        .arg("-o")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
        .into()
}

fn run_bundle(cwd: &Path, flags: &[&str], bundle: &Path, args: &[&str]) -> Run {
    python_ready();
    run_in(cwd, flags, bundle, args)
}

/// A Python project with a data file, a capsa.toml and a dependency.
fn python_project(root: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let app = root.join("app");
    std::fs::create_dir_all(app.join("data")).unwrap();
    std::fs::write(
        app.join("main.py"),
        "import sys, greeting\n\
         cities = open('/app/data/cities.txt').read().split()\n\
         print(greeting.hello(cities), sys.argv[1:])\n",
    )
    .unwrap();
    std::fs::write(app.join("data/cities.txt"), "Paris Lagos").unwrap();
    std::fs::write(app.join(".env"), "SECRET=1").unwrap();
    std::fs::write(
        app.join("capsa.toml"),
        "version = 1\n[run]\nentry = \"main.py\"\nargs = [\"--from-manifest\"]\n",
    )
    .unwrap();
    let deps = root.join("deps/greeting");
    std::fs::create_dir_all(&deps).unwrap();
    std::fs::write(
        deps.join("__init__.py"),
        "def hello(names): return 'hello ' + ' and '.join(names)\n",
    )
    .unwrap();
    (app, root.join("deps"))
}

#[test]
fn python_bundle_packs_reproducibly_and_runs_anywhere() {
    let (_g, d) = scratch();
    let (app, deps) = python_project(&d);
    let out = d.join("app.capsa");
    let r = pack(&app, &out, &["--python-path", s(&deps)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let first = std::fs::read(&out).unwrap();
    let again = d.join("again.capsa");
    assert_eq!(pack(&app, &again, &["--python-path", s(&deps)]).code, 0);
    assert_eq!(
        std::fs::read(&again).unwrap(),
        first,
        "packing is reproducible"
    );

    let inspect: Run = capsa().arg("inspect").arg(&out).output().unwrap().into();
    assert!(
        inspect.stdout.contains("runs    main.py --from-manifest"),
        "{}",
        inspect.stdout
    );
    assert!(
        inspect
            .stdout
            .contains("site-packages/greeting/__init__.py")
    );
    assert!(!inspect.stdout.contains(".env"), "hidden files stay out");
    let json: Run = capsa()
        .args(["inspect", "--json"])
        .arg(&out)
        .output()
        .unwrap()
        .into();
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["manifest"]["run"]["entry"], "main.py");
    assert_eq!(v["sha256"].as_str().unwrap().len(), 64);

    let want = "hello Paris and Lagos ['--from-manifest', 'x']\n";
    let here = run_bundle(&d, &[], &out, &["x"]);
    assert_eq!(here.stdout, want, "{}", here.stderr);
    let (_h, elsewhere) = scratch();
    let moved = elsewhere.join("moved.capsa");
    std::fs::copy(&out, &moved).unwrap();
    let there = run_bundle(&elsewhere, &[], &moved, &["x"]);
    assert_eq!(there.stdout, want, "{}", there.stderr);
}

#[test]
fn wasm_bundle_without_manifest() {
    let (_g, d) = scratch();
    let app = d.join("tool");
    std::fs::create_dir(&app).unwrap();
    std::fs::copy(probe(P1), app.join("probe.wasm")).unwrap();
    let out = d.join("tool.capsa");
    assert_eq!(pack(&app, &out, &[]).code, 0);
    let r = run_in(&d, &[], &out, &["hello"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("ok: hello"), "{}", r.stdout);
    // Its own files are read-only inside it.
    let w = run_in(&d, &[], &out, &["write", "/app/probe.wasm", "x"]);
    assert!(w.stdout.starts_with("err:"), "{}", w.stdout);
}

#[test]
fn consent_is_needed_for_what_a_bundle_asks() {
    let (_g, d) = scratch();
    let app = d.join("asks");
    std::fs::create_dir(&app).unwrap();
    std::fs::write(
        app.join("main.py"),
        "import os\nprint(os.environ.get('CAPSA_TEST_TOKEN'))\nopen('/output/r.txt', 'w').write('done')\n",
    )
    .unwrap();
    std::fs::write(
        app.join("capsa.toml"),
        "version = 1\n[run]\nentry = \"main.py\"\n\
         [[ask.env]]\nname = \"CAPSA_TEST_TOKEN\"\nreason = \"authenticates\"\n\
         [ask.dirs.output]\naccess = \"read-write\"\nguest = \"/output\"\nreason = \"the report\"\n",
    )
    .unwrap();
    let out = d.join("asks.capsa");
    assert_eq!(pack(&app, &out, &[]).code, 0);
    std::fs::create_dir(d.join("out")).unwrap();
    let bind = format!("output={}", s(&d.join("out")));
    let go = |flags: &[&str]| -> Run {
        python_ready();
        capsa()
            .current_dir(&d)
            .env("CAPSA_TEST_TOKEN", "t0k")
            .arg("run")
            .args(flags)
            .arg(&out)
            .output()
            .unwrap()
            .into()
    };
    let unbound = go(&["--grant-requested"]);
    assert_eq!(unbound.code, 125);
    assert!(
        unbound.stderr.contains("--bind output=PATH"),
        "{}",
        unbound.stderr
    );
    let no_consent = go(&["--bind", &bind]);
    assert_eq!(no_consent.code, 125);
    assert!(
        no_consent.stderr.contains("--grant-requested"),
        "{}",
        no_consent.stderr
    );
    assert!(
        no_consent.stderr.contains("--allow-env=CAPSA_TEST_TOKEN"),
        "{}",
        no_consent.stderr
    );
    assert!(!d.join("out/r.txt").exists(), "nothing ran");
    // A bind without :ro or :rw does not say which access it grants.
    let unstated = go(&["--allow-env=CAPSA_TEST_TOKEN", "--bind", &bind]);
    assert_eq!(unstated.code, 125, "{}", unstated.stderr);
    assert!(
        unstated
            .stderr
            .contains("read-write at /output: the report"),
        "{}",
        unstated.stderr
    );
    assert!(!d.join("out/r.txt").exists(), "nothing ran");
    let typed = go(&[
        "--allow-env=CAPSA_TEST_TOKEN",
        "--bind",
        &format!("{bind}:rw"),
    ]);
    assert_eq!(
        typed.stdout, "t0k\n",
        "the explicit flags are consent: {}",
        typed.stderr
    );
    std::fs::remove_file(d.join("out/r.txt")).unwrap();
    let ok = go(&["--grant-requested", "--bind", &bind]);
    assert_eq!(ok.stdout, "t0k\n", "{}", ok.stderr);
    assert_eq!(
        std::fs::read_to_string(d.join("out/r.txt")).unwrap(),
        "done"
    );
    let stray = go(&["--bind", "nope=/tmp"]);
    assert_eq!(stray.code, 125);
    assert!(
        stray.stderr.contains("no directory named nope"),
        "{}",
        stray.stderr
    );
}

#[test]
fn damaged_bundles_are_refused_before_anything_runs() {
    let (_g, d) = scratch();
    let app = d.join("app");
    std::fs::create_dir(&app).unwrap();
    std::fs::write(
        app.join("main.py"),
        "open('/tmp/capsa-should-not-run', 'w')\n",
    )
    .unwrap();
    let out = d.join("app.capsa");
    assert_eq!(pack(&app, &out, &[]).code, 0);
    let good = std::fs::read(&out).unwrap();
    let cache = d.join("cache");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (good[..good.len() - 7].to_vec(), "truncated"),
        (
            {
                let mut m = good.clone();
                let i = m.len() - 3;
                m[i] ^= 0xff;
                m
            },
            "modified or damaged",
        ),
        (
            b"capsa bundle 1\nsha256=zz size=1\nx".to_vec(),
            "bad digest line",
        ),
    ];
    for (bytes, want) in cases {
        let f = d.join("bad.capsa");
        std::fs::write(&f, &bytes).unwrap();
        let r: Run = capsa()
            .env("CAPSA_CACHE_DIR", &cache)
            .args(["run", "--grant-requested"])
            .arg(&f)
            .output()
            .unwrap()
            .into();
        assert_eq!(r.code, 126, "{want}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{want}: {}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        assert!(!cache.join("bundles").exists(), "nothing unpacked");
    }
    // A folder that cannot be packed, and nothing left behind.
    std::os::unix::fs::symlink("/etc/passwd", app.join("passwd")).unwrap();
    let r = pack(&app, &d.join("linked.capsa"), &[]);
    assert_eq!(r.code, 125);
    assert!(r.stderr.contains("symbolic link"), "{}", r.stderr);
    assert!(!d.join("linked.capsa").exists());
    std::fs::remove_file(app.join("passwd")).unwrap();
    // capsa.toml itself a link to a manifest outside: refused too, not read.
    let outside = d.join("outside.toml");
    std::fs::write(
        &outside,
        "version = 1\n[run]\nentry = \"main.py\"\n[ask]\nnet = [\"evil.example:443\"]\n",
    )
    .unwrap();
    let manifest = app.join("capsa.toml");
    let kept = std::fs::read(&manifest).ok();
    let _ = std::fs::remove_file(&manifest);
    std::os::unix::fs::symlink(&outside, &manifest).unwrap();
    let r = pack(&app, &d.join("linked.capsa"), &[]);
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(
        r.stderr.contains("capsa.toml is a symbolic link"),
        "{}",
        r.stderr
    );
    assert!(!d.join("linked.capsa").exists());
    std::fs::remove_file(&manifest).unwrap();
    // A directory in its place is refused too (it was packed silently with
    // a default manifest).
    std::fs::create_dir(&manifest).unwrap();
    let r = pack(&app, &d.join("dir.capsa"), &[]);
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(
        r.stderr.contains("capsa.toml is not a regular file"),
        "{}",
        r.stderr
    );
    assert!(!d.join("dir.capsa").exists());
    std::fs::remove_dir(&manifest).unwrap();
    if let Some(k) = kept {
        std::fs::write(&manifest, k).unwrap();
    }
    for (manifest, want) in [
        (
            "version = 1\n[run]\nentry = \"main.py\"\nsudo = true\n",
            "unknown field `sudo`",
        ),
        (
            "version = 7\n[run]\nentry = \"main.py\"\n",
            "version 7 is not supported",
        ),
        (
            "version = 1\n[run]\nentry = \"main.py\"\n[[ask.net]]\nrule = \"every.where:*:*\"\nreason = \"r\"\n",
            "ask.net rule",
        ),
    ] {
        let bad = d.join("bad-manifest");
        let _ = std::fs::remove_dir_all(&bad);
        std::fs::create_dir(&bad).unwrap();
        std::fs::write(bad.join("main.py"), "").unwrap();
        std::fs::write(bad.join("capsa.toml"), manifest).unwrap();
        let r = pack(&bad, &d.join("bad.capsa"), &[]);
        assert_eq!(r.code, 125, "{want}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{want}: {}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    }
    let empty = d.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let r = pack(&empty, &d.join("empty.capsa"), &[]);
    assert_eq!(r.code, 125);
    assert!(r.stderr.contains("nothing to run"), "{}", r.stderr);
}

/// On a terminal, capsa asks once; `y` runs the bundle, `n` does not.
#[test]
fn terminal_prompt() {
    python_ready();
    let (_g, d) = scratch();
    let app = d.join("asks");
    std::fs::create_dir(&app).unwrap();
    std::fs::write(
        app.join("main.py"),
        "import os\nprint('ran with', os.environ['CAPSA_TEST_TOKEN'])\n",
    )
    .unwrap();
    std::fs::write(
        app.join("capsa.toml"),
        "version = 1\n[run]\nentry = \"main.py\"\n[[ask.env]]\nname = \"CAPSA_TEST_TOKEN\"\nreason = \"authenticates\"\n",
    )
    .unwrap();
    let out = d.join("asks.capsa");
    assert_eq!(pack(&app, &out, &[]).code, 0);
    // The answer is typed ahead on a real terminal.
    let answer = |a: &str| -> Run {
        on_terminal(
            &d,
            &["run", s(&out)],
            &format!("{a}\n"),
            &[("CAPSA_TEST_TOKEN", "t0k")],
        )
    };
    let yes = answer("y");
    assert_eq!(yes.code, 0, "{}", yes.stdout);
    assert!(
        yes.stdout.contains("--allow-env=CAPSA_TEST_TOKEN"),
        "{}",
        yes.stdout
    );
    assert!(yes.stdout.contains("Grant these?"), "{}", yes.stdout);
    assert!(yes.stdout.contains("ran with t0k"), "{}", yes.stdout);
    let no = answer("n");
    assert_eq!(no.code, 125, "{}", no.stdout);
    assert!(no.stdout.contains("not granted"), "{}", no.stdout);
    assert!(!no.stdout.contains("ran with"), "{}", no.stdout);
}

/// `capsa pack --exe`: one native executable that runs the bundle, with no
/// capsa on PATH, taking `capsa run`'s flags.
#[test]
fn packed_executable_runs_without_capsa() {
    python_ready();
    let (_g, d) = scratch();
    let (app, deps) = python_project(&d);
    let exe = d.join("hello-app");
    let r = pack(&app, &exe, &["--exe", "--python-path", s(&deps)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (_h, elsewhere) = scratch();
    let moved = elsewhere.join("hello-app");
    std::fs::copy(&exe, &moved).unwrap();
    let mut first = std::process::Command::new(&moved);
    first
        .arg("x")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env(
            "CAPSA_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("capsa-cache"),
        )
        .current_dir(&elsewhere);
    // Another test's child forked while the copy was being written holds
    // it open for writing until that child execs: Linux then refuses to
    // run it (ETXTBSY) for that moment.
    let mut tries = 0;
    let out = loop {
        match first.output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => break r.unwrap(),
        }
    };
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello Paris and Lagos ['--from-manifest', 'x']\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // capsa looks for an appended bundle only in its own executable: the
    // file given to inspect (or run) is read from its start, as a bundle.
    let inspect: Run = capsa().arg("inspect").arg(&moved).output().unwrap().into();
    assert_eq!(inspect.code, 126, "{}", inspect.stdout);
    assert!(
        inspect.stderr.contains("not a capsa bundle"),
        "{}",
        inspect.stderr
    );
    // The executable checks the digest it is told to expect.
    let wrong = std::process::Command::new(&moved)
        .arg(format!("--expect-sha256={}", "0".repeat(64)))
        .env(
            "CAPSA_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("capsa-cache"),
        )
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains(&"0".repeat(64)));
    // Its flags are capsa run's: a limit applies.
    let limited = std::process::Command::new(&moved)
        .args(["--memory=lots"])
        .env(
            "CAPSA_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("capsa-cache"),
        )
        .output()
        .unwrap();
    assert_eq!(limited.status.code(), Some(125));
    // After `--`, a flag is the program's; the help says to put it there
    // before arguments the caller did not write.
    let passed = std::process::Command::new(&moved)
        .args(["--", "--allow-read=/", "-h"])
        .env(
            "CAPSA_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("capsa-cache"),
        )
        .current_dir(&elsewhere)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&passed.stdout),
        "hello Paris and Lagos ['--from-manifest', '--allow-read=/', '-h']\n",
        "{}",
        String::from_utf8_lossy(&passed.stderr)
    );
    let help = std::process::Command::new(&moved)
        .arg("-h")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let words = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        words.contains("put `--` before arguments you did not write"),
        "{help}"
    );
}

// Hostile bundles. capsa's own writer refuses what these carry, so they are
// forged here byte by byte: a tar written by hand, stored in one zstd frame
// of raw (uncompressed) blocks, behind a correct digest line. The reader
// must refuse them on their content, not because the digest is wrong.

/// A tar of regular files, in order.
fn tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in entries {
        out.extend_from_slice(&tar_header(name, data.len() as u64));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// The ustar header of a regular file `name` of `size` bytes.
fn tar_header(name: &str, size: u64) -> [u8; 512] {
    tar_header_of(name, size, b'0')
}

/// A ustar header of type `kind` (`0` a regular file, `L` a GNU long name).
fn tar_header_of(name: &str, size: u64, kind: u8) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// One zstd frame of raw blocks: a 1 MiB window, blocks of at most 128 KiB,
/// no checksum.
fn zstd_frame(data: &[u8]) -> Vec<u8> {
    zstd_frame_then_zeros(data, 0)
}

/// [`zstd_frame`] of `data` followed by `zeros` zero bytes, which take
/// run-length blocks of 4 bytes each: a bundle of a few kilobytes that
/// unpacks to as much as wanted.
fn zstd_frame_then_zeros(data: &[u8], zeros: u64) -> Vec<u8> {
    const MAX: usize = 128 << 10;
    // (block type, size, content): 0 raw, 1 run-length.
    let mut blocks: Vec<(u32, usize, &[u8])> = data.chunks(MAX).map(|c| (0, c.len(), c)).collect();
    let mut left = zeros;
    while left > 0 {
        let n = left.min(MAX as u64) as usize;
        blocks.push((1, n, &[0u8][..]));
        left -= n as u64;
    }
    if blocks.is_empty() {
        blocks.push((0, 0, &[]));
    }
    let mut out = vec![0x28, 0xB5, 0x2F, 0xFD, 0x00, 10 << 3];
    let count = blocks.len();
    for (i, (kind, size, content)) in blocks.into_iter().enumerate() {
        let last = u32::from(i + 1 == count);
        let header = last | (kind << 1) | ((size as u32) << 3);
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.extend_from_slice(content);
    }
    out
}

/// A bundle of `manifest` and `files`, with nothing checked.
fn forge(manifest: &str, files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut entries = vec![("capsa.toml", manifest.as_bytes())];
    entries.extend_from_slice(files);
    capsa_bundle::wrap_payload(&zstd_frame(&tar(&entries)))
}

/// The payload of a bundle file (after the magic and digest lines).
fn payload(bundle: &[u8]) -> &[u8] {
    let (_, p) = capsa_bundle::verify(bundle).unwrap();
    p
}

/// A folder with the probe guest as `probe.wasm` and `manifest`.
fn probe_project(root: &Path, name: &str, manifest: &str) -> std::path::PathBuf {
    let app = root.join(name);
    std::fs::create_dir(&app).unwrap();
    std::fs::copy(probe(P1), app.join("probe.wasm")).unwrap();
    std::fs::write(app.join("capsa.toml"), manifest).unwrap();
    app
}

fn inspect(bundle: &Path) -> Run {
    capsa().arg("inspect").arg(bundle).output().unwrap().into()
}

/// `guest = "/out,/"` once passed the manifest check, and the bind became
/// the flag text `HOST::/out,/`, which the flag parser split at `,`: the
/// bundle was granted the host's `/` with no prompt. Now the manifest is
/// refused when packed and when read, and nothing runs.
#[test]
fn comma_in_a_guest_path_grants_nothing_more() {
    let (_g, d) = scratch();
    let manifest = "version = 1\n[run]\nentry = \"probe.wasm\"\n\
        [ask.dirs.out]\naccess = \"read-write\"\nguest = \"/out,/\"\nreason = \"results\"\n";
    let app = probe_project(&d, "app", manifest);
    let packed = d.join("app.capsa");
    let r = pack(&app, &packed, &[]);
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(
        r.stderr
            .contains(r#"ask.dirs.out.guest: invalid guest path "/out,/""#),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(!packed.exists());

    let wasm = std::fs::read(probe(P1)).unwrap();
    let forged = d.join("forged.capsa");
    std::fs::write(&forged, forge(manifest, &[("probe.wasm", &wasm)])).unwrap();
    std::fs::create_dir(d.join("out")).unwrap();
    let bind = format!("out={}:rw", s(&d.join("out")));
    let r = run_in(
        &d,
        &["--grant-requested", "--bind", &bind],
        &forged,
        &["read", "/etc/passwd"],
    );
    assert_eq!(r.code, 126, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("invalid guest path"), "{}", r.stderr);
    assert!(
        !r.stdout.contains("root:"),
        "the host's / was read: {}",
        r.stdout
    );
    assert_eq!(r.stdout, "", "nothing ran");
    let i = inspect(&forged);
    assert_eq!(i.code, 126, "{}", i.stdout);
    assert!(i.stderr.contains("invalid guest path"), "{}", i.stderr);
}

/// A reason once reached the terminal raw: `\r\x1b[2K` erased the prompt's
/// line and wrote a harmless-looking one over it. Such text is refused where
/// it enters, and every message that quotes it shows it escaped.
#[test]
fn escape_sequences_from_a_bundle_never_reach_the_terminal() {
    let (_g, d) = scratch();
    let hostile = [
        ("\\r\\u001b[2Kreads nothing", "\\u{1b}[2K"),
        ("reads \\u202e/etc/shadow", "\\u{202e}"),
        ("ok\\u009b2J", "\\u{9b}"),
    ];
    for (i, (reason, shown)) in hostile.iter().enumerate() {
        let manifest = format!(
            "version = 1\n[run]\nentry = \"probe.wasm\"\n\
             [[ask.net]]\nrule = \"example.com:443\"\nreason = \"{reason}\"\n"
        );
        let app = probe_project(&d, &format!("app{i}"), &manifest);
        let packed = d.join(format!("app{i}.capsa"));
        let r = pack(&app, &packed, &[]);
        assert_eq!(r.code, 125, "{}", r.stderr);
        assert!(r.stderr.contains("invalid reason"), "{}", r.stderr);
        assert!(r.stderr.contains(shown), "{shown}: {}", r.stderr);
        assert!(!packed.exists());

        let wasm = std::fs::read(probe(P1)).unwrap();
        let forged = d.join(format!("forged{i}.capsa"));
        std::fs::write(&forged, forge(&manifest, &[("probe.wasm", &wasm)])).unwrap();
        for r in [
            inspect(&forged),
            run_in(&d, &["--grant-requested"], &forged, &["hello"]),
        ] {
            assert_eq!(r.code, 126, "{}", r.stderr);
            assert!(r.stderr.contains(shown), "{shown}: {}", r.stderr);
            for out in [&r.stdout, &r.stderr] {
                assert!(
                    !out.contains(['\r', '\u{1b}', '\u{202e}', '\u{9b}']),
                    "raw control text printed: {out:?}"
                );
            }
            assert_eq!(r.stdout, "", "nothing ran");
        }
    }
    // A bundle's own file name, printed by inspect and by error messages.
    let bad_name = d.join("app\u{1b}[2K.capsa");
    std::fs::write(&bad_name, b"capsa bundle 1\nsha256=zz size=1\nx").unwrap();
    let r = run_in(&d, &[], &bad_name, &[]);
    assert_eq!(r.code, 126, "{}", r.stderr);
    assert!(r.stderr.contains("app\\u{1b}[2K.capsa"), "{}", r.stderr);
    assert!(!r.stderr.contains('\u{1b}'), "{:?}", r.stderr);
}

/// A valid bundle A could carry a bundle B in a zstd skippable frame at the
/// end of its payload, followed by `capsa pack --exe`'s trailer: A's digest
/// covered it, the decoder skipped it, and the trailer search (run on any
/// file given to capsa) ran B. Now a payload is exactly one frame, and only
/// capsa's own executable is searched for a trailer.
#[test]
fn a_bundle_carrying_another_is_refused() {
    let (_g, d) = scratch();
    let a_dir = probe_project(
        &d,
        "a",
        "version = 1\n[run]\nentry = \"probe.wasm\"\nargs = [\"args\", \"I am A\"]\n",
    );
    let b_dir = probe_project(
        &d,
        "b",
        "version = 1\n[run]\nentry = \"probe.wasm\"\nargs = [\"args\", \"I am B\"]\n",
    );
    let (a, b) = (d.join("a.capsa"), d.join("b.capsa"));
    assert_eq!(pack(&a_dir, &a, &[]).code, 0);
    assert_eq!(pack(&b_dir, &b, &[]).code, 0);
    let (a, b) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let mut trailer = b.clone();
    trailer.extend_from_slice(&(b.len() as u64).to_le_bytes());
    trailer.extend_from_slice(capsa_bundle::EXE_MAGIC);

    let mut skippable = vec![0x50, 0x2A, 0x4D, 0x18];
    skippable.extend_from_slice(&(trailer.len() as u32).to_le_bytes());
    skippable.extend_from_slice(&trailer);
    let mut carrying = payload(&a).to_vec();
    carrying.extend_from_slice(&skippable);
    let mut appended = a.clone();
    appended.extend_from_slice(&trailer);
    let cases = [
        (
            capsa_bundle::wrap_payload(&carrying),
            "bytes after the payload's zstd frame",
        ),
        (appended, "bytes after the"),
    ];
    for (bytes, want) in cases {
        let f = d.join("carrying.capsa");
        std::fs::write(&f, &bytes).unwrap();
        for r in [inspect(&f), run_in(&d, &["--grant-requested"], &f, &[])] {
            assert_eq!(r.code, 126, "{want}: {}{}", r.stdout, r.stderr);
            assert!(r.stderr.contains(want), "{want}: {}", r.stderr);
            assert!(!r.stdout.contains("I am"), "{want}: {}", r.stdout);
        }
    }
}

/// `--bind NAME=PATH:ro` gives the bundle read-only access where it asked
/// for read-write; a write fails in the guest and the host file is unchanged.
#[test]
fn bind_read_only_where_the_bundle_asks_read_write() {
    let (_g, d) = scratch();
    let app = probe_project(
        &d,
        "app",
        "version = 1\n[run]\nentry = \"probe.wasm\"\n\
         [ask.dirs.data]\naccess = \"read-write\"\nguest = \"/data\"\nreason = \"keeps notes\"\n",
    );
    let bundle = d.join("app.capsa");
    assert_eq!(pack(&app, &bundle, &[]).code, 0);
    // A host path may hold `:`; only a trailing :ro or :rw is the access.
    let host = d.join("my:notes");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("keep.txt"), "original").unwrap();
    let bind = |suffix: &str| format!("data={}{suffix}", s(&host));
    let before = tree(&host);

    let ro = bind(":ro");
    let read = run_in(&d, &["--bind", &ro], &bundle, &["read", "/data/keep.txt"]);
    assert_eq!(read.stdout, "ok: original\n", "{}", read.stderr);
    for attempt in [
        &["write", "/data/keep.txt", "changed"][..],
        &["write", "/data/new.txt", "x"],
        &["append", "/data/keep.txt", "more"],
        &["rm", "/data/keep.txt"],
    ] {
        let w = run_in(&d, &["--bind", &ro], &bundle, attempt);
        assert!(w.stdout.starts_with("err:"), "{attempt:?}: {}", w.stdout);
        assert_eq!(tree(&host), before, "{attempt:?} changed the host");
    }

    // Without a suffix the bundle's own ask applies, after consent.
    let plain = bind("");
    let unasked = run_in(&d, &["--bind", &plain], &bundle, &["hello"]);
    assert_eq!(unasked.code, 125, "{}", unasked.stderr);
    let w = run_in(
        &d,
        &["--grant-requested", "--bind", &plain],
        &bundle,
        &["write", "/data/keep.txt", "changed"],
    );
    assert!(w.stdout.starts_with("ok:"), "{}{}", w.stdout, w.stderr);
    assert_eq!(
        std::fs::read_to_string(host.join("keep.txt")).unwrap(),
        "changed"
    );
    let rw = bind(":rw");
    let w = run_in(
        &d,
        &["--bind", &rw],
        &bundle,
        &["write", "/data/new.txt", "x"],
    );
    assert!(w.stdout.starts_with("ok:"), "{}{}", w.stdout, w.stderr);

    // :rw never grants more than a read-only ask.
    let reader = probe_project(
        &d,
        "reader",
        "version = 1\n[run]\nentry = \"probe.wasm\"\n\
         [ask.dirs.data]\naccess = \"read\"\nguest = \"/data\"\nreason = \"reads notes\"\n",
    );
    let reader_bundle = d.join("reader.capsa");
    assert_eq!(pack(&reader, &reader_bundle, &[]).code, 0);
    let more = run_in(&d, &["--bind", &rw], &reader_bundle, &["hello"]);
    assert_eq!(more.code, 125, "{}", more.stderr);
    assert!(more.stderr.contains("not to write it"), "{}", more.stderr);
}

/// A directory bound to a bundle is never reached through a link inside a
/// writable grant (one a program could have made in an earlier run), as for
/// `--allow-read`.
#[test]
fn a_bind_is_never_reached_through_a_link_in_a_writable_grant() {
    let (_g, d) = scratch();
    let app = probe_project(
        &d,
        "app",
        "version = 1\n[run]\nentry = \"probe.wasm\"\n\
         [ask.dirs.data]\naccess = \"read\"\nguest = \"/data\"\nreason = \"reads notes\"\n",
    );
    let bundle = d.join("app.capsa");
    assert_eq!(pack(&app, &bundle, &[]).code, 0);
    let (w, secret) = (d.join("w"), d.join("secret"));
    std::fs::create_dir(&w).unwrap();
    std::fs::create_dir(&secret).unwrap();
    std::fs::write(secret.join("key"), "HOST SECRET").unwrap();
    std::os::unix::fs::symlink("../secret", w.join("notes")).unwrap();
    let write = format!("--allow-write={}", s(&w));
    let bind = format!("data={}:ro", s(&w.join("notes")));
    let r = run_in(
        &d,
        &[&write, "--bind", &bind],
        &bundle,
        &["read", "/data/key"],
    );
    assert_eq!(r.code, 125, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("reached through the link"),
        "{}",
        r.stderr
    );
    assert!(!r.stdout.contains("HOST SECRET"), "{}", r.stdout);
    // The same directory bound by its own path is granted.
    let bind = format!("data={}:ro", s(&secret));
    let r = run_in(
        &d,
        &[&write, "--bind", &bind],
        &bundle,
        &["read", "/data/key"],
    );
    assert_eq!(r.stdout, "ok: HOST SECRET\n", "{}", r.stderr);
}

/// A bundle that asked only for directories was never shown to the user:
/// the prompt covered network and environment asks only.
#[test]
fn a_bundle_asking_only_for_directories_is_shown() {
    let (_g, d) = scratch();
    let app = probe_project(
        &d,
        "app",
        "version = 1\n[run]\nentry = \"probe.wasm\"\n\
         [ask.dirs.home]\naccess = \"read-write\"\nguest = \"/home\"\nreason = \"tidies up\"\n",
    );
    let bundle = d.join("app.capsa");
    assert_eq!(pack(&app, &bundle, &[]).code, 0);
    let host = d.join("home");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("keep.txt"), "mine").unwrap();
    let bind = format!("home={}", s(&host));
    let args = ["rm", "/home/keep.txt"];

    let r = run_in(&d, &["--bind", &bind], &bundle, &args);
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("--bind home={}:rw", s(&host))),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("read-write at /home: tidies up"),
        "{}",
        r.stderr
    );
    assert!(host.join("keep.txt").exists(), "nothing ran");

    let mut argv = vec!["run", "--bind", bind.as_str(), s(&bundle)];
    argv.extend(args);
    let no = on_terminal(&d, &argv, "n\n", &[]);
    assert_eq!(no.code, 125, "{}", no.stdout);
    assert!(
        no.stdout.contains("read-write at /home: tidies up"),
        "{}",
        no.stdout
    );
    assert!(no.stdout.contains("Grant these?"), "{}", no.stdout);
    assert!(host.join("keep.txt").exists(), "nothing ran");
    let yes = on_terminal(&d, &argv, "y\n", &[]);
    assert_eq!(yes.code, 0, "{}", yes.stdout);
    assert!(!host.join("keep.txt").exists());
}

#[test]
fn expected_digest() {
    let (_g, d) = scratch();
    let app = probe_project(&d, "app", "version = 1\n[run]\nentry = \"probe.wasm\"\n");
    let bundle = d.join("app.capsa");
    let packed = pack(&app, &bundle, &[]);
    assert_eq!(packed.code, 0);
    let digest = packed
        .stdout
        .lines()
        .last()
        .unwrap()
        .trim_start_matches("sha256 ")
        .to_string();
    assert_eq!(digest.len(), 64, "{}", packed.stdout);
    let right = format!("--expect-sha256={digest}");
    let ok = run_in(&d, &[&right], &bundle, &["hello"]);
    assert_eq!(ok.stdout, "ok: hello from wasm\n", "{}", ok.stderr);
    let upper = format!("--expect-sha256={}", digest.to_uppercase());
    let ok = run_in(&d, &[&upper], &bundle, &[]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);

    let other = format!(
        "{}{}",
        if digest.starts_with('0') { "1" } else { "0" },
        &digest[1..]
    );
    let flag = format!("--expect-sha256={other}");
    let run_wrong = run_in(&d, &[&flag], &bundle, &["hello"]);
    let inspect_wrong: Run = capsa()
        .args(["inspect", &flag])
        .arg(&bundle)
        .output()
        .unwrap()
        .into();
    for r in [run_wrong, inspect_wrong] {
        assert_eq!(r.code, 125, "{}", r.stderr);
        assert_eq!(r.stdout, "", "nothing ran");
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        assert!(
            r.stderr.contains(&digest) && r.stderr.contains(&other),
            "{}",
            r.stderr
        );
    }
    let bad = run_in(&d, &["--expect-sha256=abc"], &bundle, &[]);
    assert_eq!(bad.code, 125, "{}", bad.stderr);
    let not_bundle = run(&[&right], &probe(P1), &["hello"]);
    assert_eq!(not_bundle.code, 125, "{}", not_bundle.stderr);
}

#[test]
fn a_bundle_may_only_lower_limits() {
    let (_g, d) = scratch();
    for (i, (limits, want)) in [
        ("memory = \"2G\"", "above capsa's default of 1G"),
        ("timeout = \"1h\"", "above capsa's default of 10m"),
    ]
    .into_iter()
    .enumerate()
    {
        let app = probe_project(
            &d,
            &format!("app{i}"),
            &format!("version = 1\n[run]\nentry = \"probe.wasm\"\n[limits]\n{limits}\n"),
        );
        let r = pack(&app, &d.join("x.capsa"), &[]);
        assert_eq!(r.code, 125, "{}", r.stderr);
        assert!(r.stderr.contains(want), "{}", r.stderr);
        assert!(
            r.stderr.contains("a bundle may only lower limits"),
            "{}",
            r.stderr
        );
    }
    // A lower limit applies; the user's flag still wins over it.
    let app = probe_project(
        &d,
        "small",
        "version = 1\n[run]\nentry = \"probe.wasm\"\n[limits]\nmemory = \"32M\"\n",
    );
    let bundle = d.join("small.capsa");
    assert_eq!(pack(&app, &bundle, &[]).code, 0);
    let r = run_in(&d, &[], &bundle, &["alloc"]);
    assert_eq!(r.code, 137, "{}", r.stderr);
    assert!(r.stderr.contains("memory limit of 32M"), "{}", r.stderr);
}

/// An unpacked bundle in the cache was trusted because its `.complete`
/// marker existed: a changed or planted file there ran as the bundle's.
#[test]
fn a_changed_cache_is_unpacked_again() {
    let (_g, d) = scratch();
    let app = probe_project(&d, "app", "version = 1\n[run]\nentry = \"probe.wasm\"\n");
    let bundle = d.join("app.capsa");
    assert_eq!(pack(&app, &bundle, &[]).code, 0);
    let cache = d.join("cache");
    let go = |args: &[&str]| -> Run {
        capsa()
            .env("CAPSA_CACHE_DIR", &cache)
            .arg("run")
            .arg(&bundle)
            .args(args)
            .output()
            .unwrap()
            .into()
    };
    assert_eq!(go(&["hello"]).stdout, "ok: hello from wasm\n");
    let unpacked: Vec<_> = std::fs::read_dir(cache.join("bundles"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(unpacked.len(), 1, "{unpacked:?}");
    let dir = &unpacked[0];
    std::fs::write(dir.join("probe.wasm"), b"(module)").unwrap();
    std::fs::write(dir.join("planted.txt"), b"x").unwrap();
    let r = go(&["ls", "/app"]);
    assert_eq!(r.stdout, "ok: .complete,probe.wasm\n", "{}", r.stderr);
    assert_eq!(
        std::fs::read(dir.join("probe.wasm")).unwrap(),
        std::fs::read(probe(P1)).unwrap()
    );
}

#[test]
fn a_file_name_cannot_forge_a_line_of_packs_errors() {
    let (_t, dir) = scratch();
    let app = dir.join("app");
    std::fs::create_dir(&app).unwrap();
    std::fs::write(app.join("main.py"), "print(1)\n").unwrap();
    std::fs::write(app.join("x\ncapsa: packed fine\n\u{1b}[2J.py"), "").unwrap();
    let r = pack(&app, &dir.join("app.capsa"), &[]);
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(!r.stderr.contains('\u{1b}'), "{}", r.stderr);
    assert!(!dir.join("app.capsa").exists());
}

/// A bundle of a few kilobytes may unpack to gigabytes (up to the reader's
/// 2 GiB cap). capsa held every file of a bundle in memory to list it or
/// unpack it: `capsa inspect` of a 67 KB bundle took 2.1 GB. Files are now
/// streamed, listed by size and hash, unpacked straight to disk. Both run
/// here with their data (heap) limited to 192 MiB, on a 512 MiB file.
#[test]
fn a_bundle_is_never_held_unpacked_in_memory() {
    let (_g, d) = scratch();
    const BIG: u64 = 512 << 20;
    let probe_wasm = std::fs::read(probe(P1)).unwrap();
    let mut head = tar(&[
        (
            "capsa.toml",
            b"version = 1\n[run]\nentry = \"probe.wasm\"\n",
        ),
        ("probe.wasm", &probe_wasm),
    ]);
    head.truncate(head.len() - 1024);
    head.extend_from_slice(&tar_header("zeros.bin", BIG));
    let bytes = capsa_bundle::wrap_payload(&zstd_frame_then_zeros(&head, BIG + 1024));
    assert!(
        bytes.len() < probe_wasm.len() + (64 << 10),
        "{}",
        bytes.len()
    );
    let f = d.join("big.capsa");
    std::fs::write(&f, &bytes).unwrap();
    let limited = |c: std::process::Command| with_heap_limit(c, 192 << 20);
    let mut c = capsa();
    c.arg("inspect").arg(&f);
    let r = limited(c);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains(&format!("{BIG:>10}  zeros.bin")),
        "{}",
        r.stdout
    );
    let cache = d.join("cache");
    let mut c = capsa();
    c.env("CAPSA_CACHE_DIR", &cache)
        .args(["run", "--grant-requested"])
        .arg(&f)
        .args(["ls", "/app"]);
    let r = limited(c);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), "ok: .complete,probe.wasm,zeros.bin");
    let digest = capsa_bundle::hex(&capsa_bundle::verify(&bytes).unwrap().0);
    let unpacked = cache.join("bundles").join(digest).join("zeros.bin");
    assert_eq!(std::fs::metadata(&unpacked).unwrap().len(), BIG);
    // The first entry's name is checked before any of its bytes are read:
    // a bundle whose first entry declares more than it holds is refused for
    // its name, not for being short.
    let mut lying = tar_header("main.py", BIG).to_vec();
    lying.extend_from_slice(&[0u8; 1024]);
    std::fs::write(&f, capsa_bundle::wrap_payload(&zstd_frame(&lying))).unwrap();
    let r = inspect(&f);
    assert_eq!(r.code, 126, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("the first entry is \"main.py\", not capsa.toml"),
        "{}",
        r.stderr
    );
    // A GNU long name, which the tar reader would read whole (the reviewer's
    // 254 KB bundle with a 1 GiB name took 5.25 GB), is refused for its size
    // before it is read, under the same limit.
    let long_name = tar_header_of("././@LongLink", BIG, b'L');
    let payload = zstd_frame_then_zeros(&long_name, BIG);
    std::fs::write(&f, capsa_bundle::wrap_payload(&payload)).unwrap();
    let mut c = capsa();
    c.arg("inspect").arg(&f);
    let r = limited(c);
    assert_eq!(r.code, 126, "{}", r.stderr);
    assert!(
        r.stderr.contains("a long name of 536870912 bytes"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.len() < 300, "{}", r.stderr.len());
    // And a capsa.toml over 1 MiB is refused for its size, unread.
    let mut big_manifest = tar_header("capsa.toml", 2 << 20).to_vec();
    big_manifest.extend_from_slice(&[0u8; 1024]);
    std::fs::write(&f, capsa_bundle::wrap_payload(&zstd_frame(&big_manifest))).unwrap();
    let r = inspect(&f);
    assert_eq!(r.code, 126, "{}", r.stderr);
    assert!(
        r.stderr.contains("more than the 1048576 a manifest may be"),
        "{}",
        r.stderr
    );
}
