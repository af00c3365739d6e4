"""Configuration (SPEC 1): flags, TMLITE_* variables, defaults, and start-up failures.

parse_config is tested in-process with an explicit ``environ``; start-up failures run the
program as a subprocess (``sys.executable tikmatrix_lite.py ...``) with a fake adb binary
that only records that it was called, so no real adb server is ever started.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import tikmatrix_lite as tml
from conftest import ROOT

PROGRAM = ROOT / "tikmatrix_lite.py"
FLAGS = ("--host", "--port", "--db", "--scripts", "--adb-server", "--api-key",
         "--api-key-file", "--allow-from", "--max-running", "--log-level")
ENV_VARS = ("TMLITE_HOST", "TMLITE_PORT", "TMLITE_DB", "TMLITE_SCRIPTS",
            "TMLITE_ADB_SERVERS", "TMLITE_API_KEY", "TMLITE_API_KEY_FILE",
            "TMLITE_ALLOW_FROM",
            "TMLITE_MAX_RUNNING", "TMLITE_LOG_LEVEL")
DEFAULT_NETS = [ipaddress.ip_network(n) for n in tml.DEFAULT_ALLOW_FROM]


def nets(*texts):
    return [ipaddress.ip_network(t) for t in texts]


# ---------------------------------------------------------------------------
# parse_config
# ---------------------------------------------------------------------------

def test_defaults():
    config = tml.parse_config([], environ={})
    assert config.host == "0.0.0.0"
    assert config.port == 50809
    assert config.db == (PROGRAM.parent / "tikmatrix_lite.db").resolve()
    assert config.scripts == (PROGRAM.parent / "scripts").resolve()
    assert config.adb_servers == ["127.0.0.1:5037"]
    assert config.api_key is None
    assert config.allow_from == DEFAULT_NETS
    assert config.max_running == 0
    assert config.log_level == "info"
    assert config.artifacts_dir.parent == config.db.parent      # beside the database


def test_every_flag(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tml.parse_config([
        "--host", "127.0.0.1", "--port", "8080", "--db", "data/lite.db",
        "--scripts", "my_scripts", "--adb-server", "10.0.0.12:5037",
        "--adb-server", "127.0.0.1:5038", "--api-key", "k3y",
        "--allow-from", "10.0.0.0/8", "--allow-from", "192.168.1.0/24",
        "--max-running", "4", "--log-level", "debug"], environ={})
    assert config.host == "127.0.0.1" and config.port == 8080
    assert config.db == tmp_path / "data" / "lite.db"              # made absolute
    assert config.scripts == tmp_path / "my_scripts"
    assert config.adb_servers == ["10.0.0.12:5037", "127.0.0.1:5038"]
    assert config.api_key == "k3y"
    assert config.allow_from == nets("10.0.0.0/8", "192.168.1.0/24")
    assert config.max_running == 4 and config.log_level == "debug"
    assert config.artifacts_dir.parent == tmp_path / "data"


def test_every_environment_variable(tmp_path):
    environ = {
        "TMLITE_HOST": "127.0.0.1", "TMLITE_PORT": "9000",
        "TMLITE_DB": str(tmp_path / "env.db"), "TMLITE_SCRIPTS": str(tmp_path / "s"),
        "TMLITE_ADB_SERVERS": "10.0.0.12:5037, 10.0.0.13:5037",
        "TMLITE_API_KEY": "envkey", "TMLITE_ALLOW_FROM": "10.0.0.0/8,::1/128",
        "TMLITE_MAX_RUNNING": "3", "TMLITE_LOG_LEVEL": "warning",
    }
    config = tml.parse_config([], environ=environ)
    assert config.host == "127.0.0.1" and config.port == 9000
    assert config.db == tmp_path / "env.db" and config.scripts == tmp_path / "s"
    assert config.adb_servers == ["10.0.0.12:5037", "10.0.0.13:5037"]
    assert config.api_key == "envkey"
    assert config.allow_from == nets("10.0.0.0/8", "::1/128")
    assert config.max_running == 3 and config.log_level == "warning"


def test_flags_win_over_environment(tmp_path):
    environ = {"TMLITE_HOST": "127.0.0.1", "TMLITE_PORT": "9000",
               "TMLITE_DB": str(tmp_path / "env.db"), "TMLITE_API_KEY": "envkey",
               "TMLITE_ADB_SERVERS": "10.0.0.12:5037,10.0.0.13:5037",
               "TMLITE_ALLOW_FROM": "10.0.0.0/8", "TMLITE_MAX_RUNNING": "3",
               "TMLITE_LOG_LEVEL": "warning", "TMLITE_SCRIPTS": str(tmp_path / "s")}
    config = tml.parse_config([
        "--host", "::", "--port", "9001", "--db", str(tmp_path / "flag.db"),
        "--api-key", "flagkey", "--adb-server", "192.168.0.9:5037",
        "--allow-from", "172.16.0.0/12", "--max-running", "0", "--log-level", "error",
        "--scripts", str(tmp_path / "t")], environ=environ)
    assert (config.host, config.port) == ("::", 9001)
    assert config.db == tmp_path / "flag.db" and config.scripts == tmp_path / "t"
    assert config.api_key == "flagkey"
    assert config.adb_servers == ["192.168.0.9:5037"]          # replaces, not appends
    assert config.allow_from == nets("172.16.0.0/12")
    assert config.max_running == 0 and config.log_level == "error"


def test_environment_fills_what_flags_leave_out():
    config = tml.parse_config(["--port", "9001"],
                              environ={"TMLITE_HOST": "127.0.0.1", "TMLITE_PORT": "9000",
                                       "TMLITE_ADB_SERVERS": "10.0.0.12:5037"})
    assert (config.host, config.port) == ("127.0.0.1", 9001)
    assert config.adb_servers == ["10.0.0.12:5037"]


def test_empty_environment_values_are_ignored():
    config = tml.parse_config([], environ={name: "" for name in ENV_VARS})
    assert (config.host, config.port, config.api_key) == ("0.0.0.0", 50809, None)
    assert config.adb_servers == ["127.0.0.1:5037"] and config.allow_from == DEFAULT_NETS


def test_comma_lists_skip_blank_items():
    config = tml.parse_config([], environ={"TMLITE_ADB_SERVERS": " a.local:5037 ,, b:1 ,",
                                           "TMLITE_ALLOW_FROM": "10.1.0.0/16, ,::1"})
    assert config.adb_servers == ["a.local:5037", "b:1"]
    assert config.allow_from == nets("10.1.0.0/16", "::1/128")


# -- the API key from a file ----------------------------------------------------------
def test_api_key_file_gives_its_first_line(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("  s3cret-from-file \nsecond line ignored\n")
    assert tml.parse_config(["--api-key-file", str(key_file)], environ={}).api_key == \
        "s3cret-from-file"
    assert tml.parse_config([], environ={"TMLITE_API_KEY_FILE": str(key_file)}).api_key == \
        "s3cret-from-file"


def test_a_key_flag_of_either_form_wins_over_both_key_variables(tmp_path):
    env_file, flag_file = tmp_path / "env-key", tmp_path / "flag-key"
    env_file.write_text("envfilekey\n")
    flag_file.write_text("flagfilekey\n")
    environ = {"TMLITE_API_KEY_FILE": str(env_file)}
    assert tml.parse_config(["--api-key", "flagkey"], environ=environ).api_key == "flagkey"
    environ = {"TMLITE_API_KEY": "envkey"}
    assert tml.parse_config(["--api-key-file", str(flag_file)],
                            environ=environ).api_key == "flagfilekey"


def test_api_key_and_api_key_file_together_are_refused(tmp_path, capsys):
    key_file = tmp_path / "key"
    key_file.write_text("k\n")
    with pytest.raises(SystemExit) as exc:
        tml.parse_config(["--api-key", "a", "--api-key-file", str(key_file)], environ={})
    assert exc.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_host_only_network_and_non_strict_cidr():
    config = tml.parse_config(["--allow-from", "10.0.0.7", "--allow-from", "10.9.8.7/8"],
                              environ={})
    assert config.allow_from == nets("10.0.0.7/32", "10.0.0.0/8")


def test_db_path_expands_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    config = tml.parse_config(["--db", "~/x/lite.db"], environ={})
    assert config.db == tmp_path / "x" / "lite.db"


@pytest.mark.parametrize("argv", [
    ["--port", "0"], ["--port", "70000"], ["--port", "abc"], ["--port", "-1"],
    ["--port", ""], ["--allow-from", "10.0.0.0/33"], ["--allow-from", "not-a-net"],
    ["--max-running", "-1"], ["--max-running", "x"], ["--log-level", "loud"],
    ["--adb-server", "nohost"], ["--adb-server", "host:99999"], ["--adb-server", ":5037"],
    ["--adb-server", "[::1]:5037"], ["--adb-server", "::1:5037"],
    ["--nope"], ["--port"], ["extra-positional"],
])
def test_bad_flags_exit_2_with_one_line(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        tml.parse_config(argv, environ={})
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tikmatrix_lite: error:")
    assert "Traceback" not in err and "usage:" not in err


@pytest.mark.parametrize("name, value", [
    ("TMLITE_PORT", "abc"), ("TMLITE_PORT", "0"), ("TMLITE_PORT", "70000"),
    ("TMLITE_MAX_RUNNING", "-3"), ("TMLITE_LOG_LEVEL", "loud"),
    ("TMLITE_ALLOW_FROM", "10.0.0.0/8,bad"), ("TMLITE_ADB_SERVERS", "x"),
])
def test_bad_environment_values_exit_2_with_one_line(capsys, name, value):
    with pytest.raises(SystemExit) as exc:
        tml.parse_config([], environ={name: value})
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and len(lines) == 1, err
    assert lines[0].startswith("tikmatrix_lite")
    assert "error:" in lines[0] and f"environment {name}" in lines[0]
    assert "Traceback" not in err and "usage:" not in err


def test_main_returns_2_on_a_bad_flag(capsys):
    assert tml.main(["--port", "0"]) == 2
    _, err = capsys.readouterr()
    assert err.startswith("tikmatrix_lite: error:") and len(err.splitlines()) == 1


# ---------------------------------------------------------------------------
# the program as a subprocess
# ---------------------------------------------------------------------------

@pytest.fixture
def fake_adb(tmp_path):
    """An adb 'binary' that only records its arguments, so no adb server is started."""
    marker = tmp_path / "adb-called"
    script = tmp_path / "fake-adb"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> '{marker}'\nexit 1\n")
    script.chmod(0o755)
    return script, marker


@pytest.fixture
def run_program(tmp_path, fake_adb):
    """run_program(*args) -> CompletedProcess of `python tikmatrix_lite.py args`."""
    script, _ = fake_adb
    env = {k: v for k, v in os.environ.items() if not k.startswith("TMLITE_")}
    env["ADBUTILS_ADB_PATH"] = str(script)

    def run(*args, timeout=30):
        return subprocess.run([sys.executable, str(PROGRAM), *map(str, args)],
                              cwd=str(tmp_path), env=env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    return run


@pytest.fixture
def closed_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


@pytest.fixture
def empty_scripts(tmp_path):
    folder = tmp_path / "scripts"
    folder.mkdir()
    return folder


def the_error_line(result):
    """The one `tikmatrix_lite: error:` line of a failed start; no traceback anywhere."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    errors = [l for l in result.stderr.splitlines() if l.startswith("tikmatrix_lite: error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_help_mentions_every_flag_and_variable(run_program):
    result = run_program("--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for name in FLAGS + ENV_VARS:
        assert name in text, name
    assert "50809" in text and "127.0.0.1:5037" in text
    assert result.stderr == ""


def test_help_gives_each_default_once():
    text = " ".join(tml.build_arg_parser().format_help().split())
    assert "(default: None)" not in text
    for default in ("(default: 127.0.0.1:5037)", "(default: 50809)", "(default: 0)",
                    "(default: loopback and private ranges)"):
        assert text.count(default) == 1, default
    assert "127.0.0.1 or localhost is started" in text


def test_version(run_program):
    result = run_program("--version")
    assert result.returncode == 0 and tml.__version__ in result.stdout


def test_bad_flag_as_a_program(run_program):
    result = run_program("--port", "70000")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [the_error_line(result)]


def test_bad_environment_as_a_program(run_program, tmp_path, fake_adb):
    script, _ = fake_adb
    env = {k: v for k, v in os.environ.items() if not k.startswith("TMLITE_")}
    env.update(ADBUTILS_ADB_PATH=str(script), TMLITE_PORT="abc")
    result = subprocess.run([sys.executable, str(PROGRAM)], cwd=str(tmp_path), env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize("problem, expected", [
    ("missing", "No such file or directory"), ("a-folder", "Is a directory"),
    ("empty", "is empty"), ("blank-line", "is empty"), ("not-text", "cannot read"),
])
def test_bad_api_key_file_is_one_line(run_program, tmp_path, fake_adb, problem, expected):
    key_file = tmp_path / "key"
    if problem == "a-folder":
        key_file.mkdir()
    elif problem == "empty":
        key_file.write_text("")
    elif problem == "blank-line":
        key_file.write_text("   \nkey on the second line\n")
    elif problem == "not-text":
        key_file.write_bytes(b"\xff\xfe\x00key")
    result = run_program("--api-key-file", key_file)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "--api-key-file" in result.stderr and str(key_file) in result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert not fake_adb[1].exists()


def test_bad_api_key_file_from_the_environment_is_one_line(tmp_path, fake_adb):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TMLITE_")}
    env.update(ADBUTILS_ADB_PATH=str(fake_adb[0]),
               TMLITE_API_KEY_FILE=str(tmp_path / "missing-key"))
    result = subprocess.run([sys.executable, str(PROGRAM)], cwd=str(tmp_path), env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [l for l in result.stderr.splitlines()
                                          if "TMLITE_API_KEY_FILE" in l
                                          and "missing-key" in l], result.stderr


@pytest.mark.parametrize("where", ["parent-is-a-file", "proc"])
def test_unwritable_database(run_program, tmp_path, empty_scripts, fake_adb, closed_port,
                             where):
    if where == "parent-is-a-file":
        blocker = tmp_path / "blocker"
        blocker.write_text("a regular file")
        db, named = blocker / "lite.db", str(blocker)
    else:
        db, named = Path("/proc/tmlite-test.db"), "/proc/tmlite-test.db"
    result = run_program("--host", "127.0.0.1", "--port", closed_port, "--db", db,
                         "--scripts", empty_scripts, "--adb-server",
                         f"127.0.0.1:{closed_port}")
    line = the_error_line(result)
    assert result.stderr.splitlines() == [line]
    assert named in line
    assert not fake_adb[1].exists()                   # adb never touched


def test_missing_scripts_folder(run_program, tmp_path, fake_adb, closed_port):
    missing = tmp_path / "no-such-scripts"
    db = tmp_path / "lite.db"
    result = run_program("--host", "127.0.0.1", "--port", closed_port, "--db", db,
                         "--scripts", missing, "--adb-server", f"127.0.0.1:{closed_port}")
    line = the_error_line(result)
    assert result.stderr.splitlines() == [line]
    assert str(missing) in line and "scripts" in line
    assert not db.exists()
    assert not fake_adb[1].exists()


@pytest.fixture
def taken_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield sock.getsockname()[1]
    sock.close()


def test_taken_port(run_program, tmp_path, empty_scripts, taken_port, closed_port):
    result = run_program("--host", "127.0.0.1", "--port", taken_port,
                         "--db", tmp_path / "lite.db", "--scripts", empty_scripts,
                         "--adb-server", f"127.0.0.1:{closed_port}", "--log-level", "error")
    line = the_error_line(result)
    assert f"127.0.0.1:{taken_port}" in line


def test_taken_port_fails_before_touching_adb(run_program, tmp_path, empty_scripts,
                                              taken_port, closed_port, fake_adb):
    """A port that cannot be bound is found before any adb server is started: the start-up
    error then comes at once, alone on stderr, with no adb side effects."""
    result = run_program("--host", "127.0.0.1", "--port", taken_port,
                         "--db", tmp_path / "lite.db", "--scripts", empty_scripts,
                         "--adb-server", f"127.0.0.1:{closed_port}", "--log-level", "error")
    line = the_error_line(result)
    assert not fake_adb[1].exists(), "adb was run: " + fake_adb[1].read_text()
    assert result.stderr.splitlines() == [line]


@pytest.mark.parametrize("host, key, warned", [
    ("0.0.0.0", None, 1), ("0.0.0.0", "s3cret", 0), ("127.0.0.1", None, 0),
])
def test_warning_without_key_on_a_public_address(tmp_path, empty_scripts, fake_adb,
                                                 closed_port, host, key, warned):
    """SPEC 3: a server that starts on a non-loopback address without a key warns once
    (and one that fails to start does not warn at all)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TMLITE_")}
    env["ADBUTILS_ADB_PATH"] = str(fake_adb[0])
    args = [sys.executable, str(PROGRAM), "--host", host, "--port", str(closed_port),
            "--db", str(tmp_path / "w.db"), "--scripts", str(empty_scripts),
            "--adb-server", "127.0.0.1:1"] + (["--api-key", key] if key else [])
    proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    lines = []
    try:
        for line in proc.stderr:                 # ends when the program ends
            lines.append(line)
            if "serving http" in line:
                break
    finally:
        proc.terminate()
        rest = proc.communicate(timeout=20)[1]
    lines += rest.splitlines()
    assert any("serving http" in l for l in lines), "".join(lines)
    assert proc.returncode == 0, "SIGTERM is a clean shutdown"
    assert sum("without an API key" in l for l in lines) == warned
    assert key is None or key not in "".join(lines)


def test_newer_database_schema(run_program, tmp_path, empty_scripts, closed_port, fake_adb):
    import sqlite3
    db = tmp_path / "future.db"
    raw = sqlite3.connect(str(db))
    raw.execute(f"PRAGMA user_version={len(tml.MIGRATIONS) + 5}")
    raw.commit()
    raw.close()
    result = run_program("--host", "127.0.0.1", "--port", closed_port, "--db", db,
                         "--scripts", empty_scripts)
    line = the_error_line(result)
    assert result.stderr.splitlines() == [line]
    assert "schema version" in line and str(db) in line
    assert not fake_adb[1].exists()
