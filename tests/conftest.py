"""Shared fixtures of the test suite.

Generic on purpose: a configuration in a temporary folder with the test scripts of
``tests/fixtures/scripts``, the WSGI app built on it (a Lite without adb), a webtest
client from a loopback address, and helpers that register devices and accounts in the
app's store. Device fixtures (phone simulators) are added beside these by other modules.
"""
from __future__ import annotations

import datetime
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import os  # noqa: E402


def _test_adb() -> str:
    """The adb binary of the whole suite: $TMLITE_TEST_ADB (CI runs the suite once with
    Debian's /usr/bin/adb), else adbutils' bundled one, else the adb on the PATH."""
    chosen = os.environ.get("TMLITE_TEST_ADB")
    if chosen:
        return chosen
    import adbutils
    bundled = Path(adbutils.__file__).parent / "binaries" / "adb"
    return str(bundled) if bundled.is_file() else adbutils.adb_path()


#: the private adb servers of the tests (phonesim's AdbServer reads $ADB) and the ones
#: Lite starts itself (adbutils reads $ADBUTILS_ADB_PATH) run the same binary
TEST_ADB = os.environ["ADB"] = os.environ["ADBUTILS_ADB_PATH"] = _test_adb()

import tikmatrix_lite  # noqa: E402
from farm import FakeClock  # noqa: E402  (a clock tests move by hand)
from phonesim import AdbServer, PhoneSim  # noqa: E402

SCRIPTS_DIR = TESTS / "fixtures" / "scripts"
#: the scripts of SCRIPTS_DIR that load (the others are broken or helpers on purpose)
LOADABLE_SCRIPTS = {"echo", "ext_job", "fanout", "instagram_only", "like"}
#: a fixed local time for tests that need a clock: 2030-01-15 10:00:00 in local time
T0 = datetime.datetime(2030, 1, 15, 10, 0, 0).timestamp()


@pytest.fixture
def scripts_dir() -> Path:
    return SCRIPTS_DIR


@pytest.fixture
def make_config(tmp_path, scripts_dir):
    """make_config(**overrides) -> a Config whose database lives in tmp_path."""
    def make(**overrides) -> tikmatrix_lite.Config:
        settings = {"db": tmp_path / "t.db", "scripts": scripts_dir,
                    "adb_servers": ["127.0.0.1:1"]}
        settings.update(overrides)
        return tikmatrix_lite.Config(**settings)
    return make


@pytest.fixture
def config(make_config) -> tikmatrix_lite.Config:
    return make_config()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def make_app():
    """make_app(config, clock=None) -> create_app(...) on a Lite without adb; closed at the
    end of the test."""
    made = []

    def make(config: tikmatrix_lite.Config, clock=None):
        kwargs = {"with_devices": False}
        if clock is not None:
            kwargs["clock"] = clock
        lite = tikmatrix_lite.Server(config, **kwargs)
        made.append(lite)
        return tikmatrix_lite.create_app(config, lite)

    yield make
    for lite in made:
        lite.close()


@pytest.fixture
def app(make_app, config):
    return make_app(config)


@pytest.fixture
def make_client():
    """make_client(app, remote_addr="127.0.0.1", **headers) -> a webtest.TestApp."""
    import webtest

    def make(application, remote_addr: str = "127.0.0.1", **extra_environ):
        return webtest.TestApp(application, extra_environ={"REMOTE_ADDR": remote_addr,
                                                           **extra_environ})
    return make


@pytest.fixture
def client(app, make_client):
    return make_client(app)


@pytest.fixture
def store(app) -> tikmatrix_lite.Store:
    return app.lite.store


@pytest.fixture
def add_device(app):
    """add_device(serial, state="device", **fields): a device the server knows."""
    def add(serial: str, state: str = "device", **fields):
        app.lite.store.upsert_device(serial, state=state, **fields)
        return serial
    return add


@pytest.fixture
def add_account(app):
    """add_account(username, serial, platform="tiktok", enabled=True, package=None)."""
    def add(username: str, serial: str, platform: str = "tiktok", enabled: bool = True,
            package: str = None):
        store = app.lite.store
        if store.get_device(serial) is None:
            store.upsert_device(serial, state="device")
        package = package or tikmatrix_lite.APP_PACKAGES[platform][0]
        assert store.save_account(username, serial, platform, package, enabled, True)
        return username
    return add


# -- phones -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adb():
    """A real adb server on a private port with a private HOME (never 5037), per module."""
    with AdbServer() as server:
        yield server


@pytest.fixture(scope="module")
def sim():
    """The simulated phones of a test module (each test adds the ones it needs)."""
    with PhoneSim() as phones:
        yield phones


# -- a small disk -----------------------------------------------------------------------
class SmallDisk:
    """A small tmpfs: ``fill()`` takes all its free space with one file,
    ``free()`` deletes it."""

    def __init__(self, path: Path):
        self.path = path
        self.filler = path / "filler"

    def fill(self) -> int:
        written = 0
        with open(self.filler, "ab", buffering=0) as stream:
            try:
                while True:
                    written += stream.write(b"\0" * 4096)
            except OSError:                     # ENOSPC: the disk is full
                pass
        return written

    def free(self) -> None:
        self.filler.unlink()


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs (needs root and mount): skipped with the reason where not allowed.

    Room for a farm's start-up writes (a WAL of every phone's first commits) before the
    test calls fill(); at 512 KiB the WAL alone took the disk and freeing gave nothing."""
    import shutil
    import subprocess
    folder = tmp_path / "small-disk"
    folder.mkdir()
    if not shutil.which("mount"):
        pytest.skip("no mount command to make a small tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield SmallDisk(folder)
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def pytest_terminal_summary(terminalreporter):
    """Which adb the suite ran with, also under -q (CI runs the suite once per adb)."""
    import subprocess
    try:
        version = subprocess.run([TEST_ADB, "version"], capture_output=True, text=True,
                                 timeout=10).stdout.splitlines()[1]
    except Exception as exc:                             # shown, not fatal
        version = f"version unknown: {exc}"
    terminalreporter.write_line(f"adb of the tests: {TEST_ADB} ({version})")
