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
    let typed = go(&["--allow-env=CAPSA_TEST_TOKEN", "--bind", &bind]);
    assert_eq!(
        typed.stdout, "t0k\n",
        "the explicit flag is consent: {}",
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
    let out = std::process::Command::new(&moved)
        .arg("x")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env(
            "CAPSA_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("capsa-cache"),
        )
        .current_dir(&elsewhere)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello Paris and Lagos ['--from-manifest', 'x']\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inspect: Run = capsa().arg("inspect").arg(&moved).output().unwrap().into();
    assert!(
        inspect.stdout.contains("runs    main.py"),
        "{}",
        inspect.stdout
    );
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
}
