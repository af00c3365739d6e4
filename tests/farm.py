"""A phone farm for tests: simulated phones, a private adb server, and a Lite server.

Everything is real except the phones: the adb server is adb itself (on a private port,
never 5037), Lite talks to it through adbutils, and ``phonesim`` plays the phones' side
of the adb protocol. Waits are on conditions with deadlines.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, List, Optional

import webtest

import tikmatrix_lite as lite_module
from phonesim import AdbServer, PhoneSim, SimDevice

HERE = Path(__file__).resolve().parent
RUNNER_SCRIPTS = HERE / "fixtures" / "runner_scripts"


def wait_until(predicate: Callable[[], object], timeout: float = 10.0,
               message: str = "condition") -> object:
    """Return the predicate's first truthy value; fail the test after the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(0.01)


class FakeClock:
    """A wall clock the test moves by hand; the scheduler is woken after each move."""

    def __init__(self, start: Optional[float] = None):
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class Farm:
    """Phones, adb and one Lite server, torn down together."""

    def __init__(self, tmp_path: Path, adb: AdbServer, sim: PhoneSim,
                 scripts: Path = RUNNER_SCRIPTS, clock: Optional[FakeClock] = None,
                 **config):
        self.adb, self.sim, self.clock = adb, sim, clock
        self.config = lite_module.Config(
            db=tmp_path / "farm.db", scripts=scripts,
            adb_servers=[f"127.0.0.1:{adb.port}"], **config)
        self.lite: Optional[lite_module.Server] = None
        self.phones: List[SimDevice] = []

    def start(self) -> "Farm":
        kwargs = {"clock": self.clock} if self.clock else {}
        self.lite = lite_module.Server(self.config, **kwargs)
        self.lite.runner.heartbeat = 1.0
        self.lite.start()
        self.app = lite_module.create_app(self.config, self.lite)
        self.http = webtest.TestApp(self.app, extra_environ={"REMOTE_ADDR": "127.0.0.1"})
        return self

    def add_phone(self, **kwargs) -> SimDevice:
        phone = self.sim.add_device(**kwargs)
        self.adb.connect(phone.address)
        wait_until(lambda: self.lite.devices.is_online(phone.address), 15,
                   f"{phone.address} online in Lite")
        wait_until(lambda: self.lite.store.get_device(phone.address)["model"], 10,
                   f"{phone.address} identified")
        self.phones.append(phone)
        return phone

    def create(self, serials, script: str, config=None, **extra) -> List[int]:
        body = {"serials": list(serials), "script_name": script,
                "script_config": config or {}, **extra}
        reply = self.http.post_json("/api/v1/task", body).json
        assert reply["code"] == 0, reply
        return reply["data"]["task_ids"]

    def task(self, task_id: int) -> dict:
        return self.http.get(f"/api/v1/task/{task_id}").json["data"]

    def wait_status(self, task_id: int, statuses, timeout: float = 15.0) -> dict:
        statuses = (statuses,) if isinstance(statuses, int) else tuple(statuses)
        return wait_until(lambda: (lambda t: t if t["status"] in statuses else None)(
            self.task(task_id)), timeout, f"task {task_id} in status {statuses}")

    def wait_idle(self, phone: SimDevice) -> None:
        """Until the runner has let go of the phone (a task's end is stored just before)."""
        wait_until(lambda: not self.lite.runner.busy(phone.address), 10,
                   f"{phone.address} free")

    def wake(self) -> None:
        self.lite.wake()

    def close(self) -> None:
        if self.lite is not None:
            self.lite.close()


def open_gate(phone: SimDevice) -> None:
    """Let the gate script through on this phone."""
    phone.fs.write("/sdcard/gate", b"open\n")
