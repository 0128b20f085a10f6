"""The Python API against the real capsa binary ($CAPSA_BIN)."""

import os
import subprocess
from pathlib import Path

import pytest

import capsa


def test_run_returns_output_exit_code_and_files(tmp_path):
    r = capsa.run(
        "import sys\nprint(open('in.txt').read(), sys.stdin.read(), sys.argv[1:])\nsys.exit(4)",
        stdin="typed",
        args=["a"],
        files={"in.txt": "from a file"},
    )
    assert r.exit_code == 4 and not r.ok
    assert r.stdout == "from a file typed ['a']\n"
    assert r.denials == [] and r.limit is None


def test_nothing_is_reached_unless_granted(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    code = f"print(open({str(secret)!r}).read())"
    r = capsa.run(code)
    assert r.exit_code == 1 and "FileNotFoundError" in r.stderr
    assert any(d.startswith(f"denied: read {secret}") and "hint: --allow-read=" in d for d in r.denials), r.denials
    assert capsa.run(code, allow_read=[str(tmp_path)]).stdout == "secret\n"
    r = capsa.run("open('out.txt', 'w').write('x')", allow_read=[str(tmp_path)])
    assert r.ok, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.txt"]


def test_a_program_exiting_125_is_not_a_refusal(tmp_path):
    r = capsa.run("import sys\nprint('ran')\nsys.stderr.write('capsa: error: not really\\n')\nsys.exit(125)")
    assert r.exit_code == 125 and r.stdout == "ran\n", r
    assert "not really" in r.stderr
    with pytest.raises(capsa.CapsaError) as e:
        capsa.run("print('never')", allow_read=[str(tmp_path / "missing")])
    assert "missing" in str(e.value)


def test_a_limit_ends_the_run_and_says_which():
    r = capsa.run("while True: pass", timeout="1s")
    assert r.exit_code == 124
    assert r.limit and r.limit.startswith("time limit of 1s reached")
    r = capsa.run("f = open('big', 'wb')\nwhile True: f.write(b'x' * 65536)", max_write="1M")
    assert r.exit_code == 137, r.stderr
    assert r.limit and r.limit.startswith("file write limit of 1M reached"), r.limit


def test_a_session_keeps_globals_and_files():
    with capsa.Session(timeout="10s") as s:
        assert s.exec("x = 40\nx + 2").stdout == "42\n"
        s.write_file("data/in.txt", "uploaded")
        r = s.exec("import os\nopen('out.txt', 'w').write(open('data/in.txt').read().upper())\nsorted(os.listdir('.'))")
        assert r.stdout == "['data', 'out.txt']\n", r
        assert s.read_file("out.txt") == b"UPLOADED"
        assert [e["name"] for e in s.list_files()] == ["data", "out.txt"]
        assert s.list_files("data") == [{"name": "in.txt", "type": "file", "size": 8}]
        r = s.exec("while True: pass", timeout="1s")
        assert r.exit_code == 124 and r.session_ended
        with pytest.raises(capsa.CapsaError) as e:
            s.exec("x")
        assert e.value.status == 404 and "time limit" in str(e.value)


@pytest.fixture
def server(tmp_path):
    token = os.urandom(8).hex()
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "a.txt").write_text("shared data")
    p = subprocess.Popen(
        [capsa.binary(), "serve", "--listen=127.0.0.1:0", f"--allow-read={tmp_path / 'shared'}"],
        env=dict(os.environ, CAPSA_TOKEN=token),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in p.stderr:
        if "listening on" in line:
            break
    url = line.split("listening on ")[1].split()[0]
    yield url, token, tmp_path / "shared"
    p.terminate()
    p.wait()


def test_a_remote_server_is_the_ceiling(server):
    url, token, shared = server
    code = f"print(open({str(shared / 'a.txt')!r}).read())"
    assert capsa.run(code, url=url, token=token).stdout == "shared data\n"
    assert capsa.run(code, allow_read=[str(shared)], url=url, token=token).ok
    with pytest.raises(capsa.CapsaError) as e:
        capsa.run(code, allow_read=["/etc"], url=url, token=token)
    assert e.value.status == 403 and str(e.value).startswith("denied: --allow-read=/etc")
    with pytest.raises(capsa.CapsaError) as e:
        capsa.run("print(1)", url=url, token="wrong")
    assert e.value.status == 401
    with capsa.Session(url=url, token=token) as s:
        s.exec("n = 1")
        assert s.exec("n + 1").stdout == "2\n"
        sid = s.id
    # A closed session is gone on the server.
    with pytest.raises(capsa.CapsaError) as e:
        capsa._Remote(url, token).request("POST", f"/v1/sessions/{sid}/exec", {"code": "1"})
    assert e.value.status == 404 and "deleted" in str(e.value)


def test_the_package_is_typed():
    assert (Path(capsa.__file__).parent / "py.typed").is_file()
