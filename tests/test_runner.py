"""The runner, end to end: scripts driving simulated phones through the real adb server.

Stops, unplugged and silent phones, quoting of user text, failure artifacts, and a
server killed with SIGKILL in the middle of a task.
"""
import base64
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import tikmatrix_lite as tml
from farm import RUNNER_SCRIPTS, Farm, open_gate, wait_until

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = "a b'c\"d; rm -rf / && $(touch /sdcard/pwned) `id` | cat > /sdcard/x & echo %s"


@pytest.fixture
def farm(tmp_path, adb, sim):
    farm = Farm(tmp_path, adb, sim).start()
    yield farm
    farm.close()


def test_result_progress_and_log_are_recorded(farm):
    phone = farm.add_phone()
    task = farm.wait_status(farm.create([phone.address], "say", {"word": "hello"})[0], 2)
    assert task["result"] == {"said": "said hello"}
    assert task["progress"] == 100 and task["message"] == "completed"   # how it ended
    assert task["started_at"] and task["end_time"] and task["error"] == ""
    lines = [line.split(" ", 2)[2] for line in task["log"]]
    assert lines == [f"started on {phone.address}", "50% saying hello", "completed"]


def test_stop_interrupts_a_blocking_device_command(farm):
    phone = farm.add_phone()
    task_id = farm.create([phone.address], "block", {"seconds": 120})[0]
    farm.wait_status(task_id, 1)
    assert phone.wait_for_command(lambda cmd: cmd.argv[0] == "sleep", timeout=10)
    asked = time.monotonic()
    reply = farm.http.post(f"/api/v1/task/{task_id}/stop").json
    task = farm.wait_status(task_id, 3, timeout=2)
    assert time.monotonic() - asked < 2.5            # SPEC: interrupted within 2 s
    assert task["error"] == "stopped by user" and reply["data"]["status"] == 3
    assert farm.http.post(f"/api/v1/task/{task_id}/stop", expect_errors=True).json[
        "code"] == 40001                             # stopping a finished task
    follow = farm.create([phone.address], "say", {"word": "after-stop"})[0]
    assert farm.wait_status(follow, 2)["status"] == 2  # the phone is free again


def test_stopped_task_is_not_auto_retried(farm):
    phone = farm.add_phone()
    task_id = farm.create([phone.address], "block", {"seconds": 60}, auto_retry=True)[0]
    farm.wait_status(task_id, 1)
    farm.http.post(f"/api/v1/task/{task_id}/stop")
    task = farm.wait_status(task_id, 3, timeout=3)
    assert task["retry_count"] == 0 and task["error"] == "stopped by user"


def test_unplugged_phone_fails_its_task_then_comes_back(farm):
    phone = farm.add_phone()
    task_id = farm.create([phone.address], "block", {"seconds": 120})[0]
    farm.wait_status(task_id, 1)
    assert phone.wait_for_command(lambda cmd: cmd.argv[0] == "sleep", timeout=10)
    phone.unplug()
    task = farm.wait_status(task_id, 3, timeout=10)   # SPEC: within 10 s
    assert task["error"] == "device disconnected"
    assert task["artifacts"] == []                     # nothing to save from a lost phone

    waiting = farm.create([phone.address], "say", {"word": "back"})[0]
    phone.replug()                                     # adb retries TCP phones by itself
    assert farm.wait_status(waiting, 2, timeout=30)["result"] == {"said": "said back"}


def test_silent_phone_fails_its_task_and_recovers(farm):
    phone = farm.add_phone()
    task_id = farm.create([phone.address], "gate", {"word": "hush"})[0]
    farm.wait_status(task_id, 1)
    phone.go_silent()
    task = farm.wait_status(task_id, 3, timeout=10)    # SPEC: within 10 s
    assert task["error"] == "device disconnected"
    wait_until(lambda: farm.lite.devices.state(phone.address) == "offline", 5, "offline")
    waiting = farm.create([phone.address], "say", {"word": "awake"})[0]
    assert farm.task(waiting)["status"] == 0
    phone.wake()
    assert farm.wait_status(waiting, 2, timeout=30)["status"] == 2


def test_user_text_reaches_the_phone_as_one_literal_argument(farm):
    phone = farm.add_phone()                             # no broadcast IME: `input text`
    task = farm.wait_status(farm.create([phone.address], "payload", {"text": PAYLOAD})[0],
                            (2, 3))
    assert task["status"] == 2, task["error"]
    assert ["echo", PAYLOAD] in phone.commands("echo")
    typed = [argv[2] for argv in phone.commands("input") if argv[1] == "text"]
    assert all(" " not in arg for arg in typed)
    assert "".join(android_input_text(arg) for arg in typed) == PAYLOAD
    assert not phone.fs.exists("/sdcard/pwned") and not phone.fs.exists("/sdcard/x")
    assert ["touch", "/sdcard/pwned"] not in phone.commands("touch")


def android_input_text(arg):
    """What Android's `input text ARG` types: "%s" becomes a space, nothing else changes
    (AOSP Input.sendText)."""
    return arg.replace("%s", " ")


@pytest.mark.parametrize("text", ["50% off", "100%", "code %s now", "%%s %", "a b  c"])
def test_input_text_arguments_type_exactly_the_text(text):
    args = tml.input_text_args(text)
    assert all(" " not in arg for arg in args)
    assert "".join(android_input_text(arg) for arg in args) == text


def test_unicode_text_goes_through_the_fast_input_ime(farm):
    phone = farm.add_phone(ime="fastinput")
    text = "héllo 你好 🎉 $(id); rm -rf /"
    task = farm.wait_status(farm.create([phone.address], "payload", {"text": text})[0], (2, 3))
    assert task["status"] == 2, task["error"]
    broadcasts = [a for a in phone.commands("am") if a[1] == "broadcast"]
    encoded = base64.b64encode(text.encode()).decode()
    assert ["am", "broadcast", "-a", "ADB_INPUT_TEXT", "--es", "text", encoded] in broadcasts
    assert ["ime", "set", "com.github.tikmatrix/.FastInputIME"] in phone.commands("ime")


def test_the_phone_gets_its_own_keyboard_back_even_after_a_failure(farm):
    phone = farm.add_phone(ime="fastinput")
    own = phone.settings["secure"]["default_input_method"]
    assert own != "com.github.tikmatrix/.FastInputIME"
    for _ in range(2):                  # the second task must not take ours for the phone's
        task = farm.wait_status(farm.create([phone.address], "type_fail", {})[0], 3)
        assert task["error"] == "failed after typing"
        farm.wait_idle(phone)
        assert phone.settings["secure"]["default_input_method"] == own


def test_a_second_server_on_the_same_database_is_refused(farm):
    with pytest.raises(tml.ConfigError, match="in use by another TikMatrix Lite"):
        tml.Server(farm.config)


def test_unicode_text_without_an_ime_fails_clearly(farm):
    phone = farm.add_phone()
    task = farm.wait_status(farm.create([phone.address], "payload", {"text": "café ☕"})[0],
                            (2, 3))
    assert task["status"] == 3
    assert "non-ASCII" in task["error"] and "FastInputIME" in task["error"]
    assert not [a for a in phone.commands("input") if a[1] == "text"]


def test_missing_element_fails_with_step_and_artifacts(farm):
    phone = farm.add_phone()
    task_id = farm.create([phone.address], "missing", {})[0]
    task = farm.wait_status(task_id, 3)
    assert task["error"].startswith("open the rocket menu: element not found")
    assert "rocket_button" in task["error"] and "English" in task["error"]
    names = sorted(url.rsplit("/", 1)[1] for url in task["artifacts"])
    assert names == ["screenshot.png", "ui_dump.xml"]
    png = farm.http.get(f"/api/v1/task/{task_id}/artifacts/screenshot.png")
    assert png.content_type == "image/png" and png.body.startswith(b"\x89PNG")
    dump = farm.http.get(f"/api/v1/task/{task_id}/artifacts/ui_dump.xml")
    assert b"<hierarchy" in dump.body
    folder = farm.config.artifacts_dir / str(task_id)
    assert folder.is_dir()
    farm.http.delete(f"/api/v1/task/{task_id}")
    assert not folder.exists()


def test_failed_dump_is_retried_after_a_tap(farm):
    phone = farm.add_phone()
    phone.fail_dumps(1)                                   # a video is playing
    task = farm.wait_status(farm.create([phone.address], "missing", {})[0], 3)
    assert "element not found" in task["error"]           # it got a dump in the end
    assert any(a[:2] == ["input", "tap"] for a in phone.commands("input"))


def test_stop_racing_the_start_never_leaves_a_script_running(farm):
    """A stop sent right after creation lands before, during or after the claim; in every
    case the task ends stopped and the phone is free again (no script left behind)."""
    phone = farm.add_phone()
    for i in range(15):
        task_id = farm.create([phone.address], "gate", {"word": f"race-{i}"})[0]
        reply = farm.http.post(f"/api/v1/task/{task_id}/stop").json["data"]
        assert (reply["status"], reply["error"]) == (3, "stopped by user")
    after = farm.create([phone.address], "say", {"word": "free"})[0]
    assert farm.wait_status(after, (2, 3))["status"] == 2     # no gate script holds it


def test_script_calling_sys_exit_fails_its_task_only(farm):
    phone = farm.add_phone()
    task = farm.wait_status(farm.create([phone.address], "bail", {})[0], (2, 3))
    assert task["status"] == 3 and task["error"] == "3"
    nxt = farm.create([phone.address], "say", {"word": "still-alive"})[0]
    assert farm.wait_status(nxt, (2, 3))["status"] == 2


def test_task_threads_leave_no_sqlite_connection_behind(farm):
    phone = farm.add_phone()
    farm.http.post_json("/api/v1/account", {"username": "acct", "serial": phone.address,
                                            "platform": "tiktok"})
    def run_batch():
        ids = farm.http.post_json("/api/v1/task", {
            "usernames": ["acct"], "script_name": "say",
            "script_config": {"word": "x"}}).json["data"]["task_ids"]
        farm.wait_status(ids[0], 2)
        farm.wait_idle(phone)
    run_batch()
    before = len(farm.lite.store._all_connections)
    for _ in range(10):
        run_batch()
    assert len(farm.lite.store._all_connections) <= before


def test_identifying_a_phone_leaves_no_sqlite_connection_behind(farm):
    """A thread reads each phone that comes online (model, apps): its reader is closed
    with it, or a farm whose phones reconnect all day piles them up."""
    phone = farm.add_phone()
    wait_until(lambda: farm.lite.store.get_device(phone.address)["model"], 10, "identified")
    wait_until(lambda: not any(t.name.startswith("identify-") and t.is_alive()
                               for t in threading.enumerate()), 10, "identify thread ends")
    assert not [t.name for t, _ in farm.lite.store._all_connections
                if t.name.startswith("identify-")]


def test_delete_of_a_running_task_stops_it_first(farm):
    phone = farm.add_phone()
    task_id = farm.create([phone.address], "block", {"seconds": 120})[0]
    farm.wait_status(task_id, 1)
    farm.http.delete(f"/api/v1/task/{task_id}")
    assert farm.http.get(f"/api/v1/task/{task_id}", expect_errors=True).status_int == 404
    nxt = farm.create([phone.address], "say", {"word": "next"})[0]
    farm.wait_status(nxt, 2)


def test_shutdown_ends_running_tasks_as_interrupted(tmp_path, adb, sim):
    farm = Farm(tmp_path, adb, sim).start()
    phone = farm.add_phone()
    task_id = farm.create([phone.address], "block", {"seconds": 120}, auto_retry=True)[0]
    farm.wait_status(task_id, 1)
    assert phone.wait_for_command(lambda cmd: cmd.argv[0] == "sleep", timeout=10)
    farm.close()                                         # a graceful stop (SIGTERM)
    store = tml.Store(farm.config.db)
    try:
        row = store.get_task(task_id)
        assert (row["status"], row["error"], row["retry_count"]) == \
            (3, "interrupted by restart", 0)           # like a crash: retry by hand
    finally:
        store.close()


# -- the server as a process, killed with SIGKILL -------------------------------------
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, tmp_path, adb_port):
        self.port = free_port()
        self.args = [sys.executable, str(ROOT / "tikmatrix_lite.py"), "--host", "127.0.0.1",
                     "--port", str(self.port), "--db", str(tmp_path / "kill.db"),
                     "--scripts", str(RUNNER_SCRIPTS), "--adb-server", f"127.0.0.1:{adb_port}"]
        self.log = open(tmp_path / "server.log", "ab")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=self.log)
        wait_until(self._answers, 20, "server up")

    def _answers(self):
        try:
            return self.call("GET", "/health")["code"] == 0
        except OSError:
            return False

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/v1{path}",
                                         data=data, method=method)
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.loads(reply.read())

    def task(self, task_id):
        return self.call("GET", f"/task/{task_id}")["data"]

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=15)


def test_sigkill_mid_task_then_restart(tmp_path, adb, sim):
    phone = sim.add_device()
    adb.connect(phone.address)
    server = ServerProcess(tmp_path, adb.port)
    server.start()
    try:
        wait_until(lambda: any(d["serial"] == phone.address and d["state"] == "device"
                               for d in server.call("GET", "/device")["data"]["items"]),
                   15, "phone online")
        body = {"serials": [phone.address], "script_name": "gate",
                "script_config": {"word": "killed"}}
        killed = server.call("POST", "/task", body)["data"]["task_ids"][0]
        body["script_config"] = {"word": "survivor"}
        survivor = server.call("POST", "/task", body)["data"]["task_ids"][0]
        wait_until(lambda: server.task(killed)["status"] == 1, 15, "task running")
        assert phone.wait_for_command(
            lambda cmd: cmd.argv == ["echo", "entered", "killed"], timeout=15)

        server.stop(signal.SIGKILL)
        assert server.proc.returncode == -signal.SIGKILL
        open_gate(phone)
        server.start()

        task = server.task(killed)
        assert task["status"] == 3 and task["error"] == "interrupted by restart"
        assert wait_until(lambda: server.task(survivor)["status"] == 2, 20, "survivor ran")
        entered = [a[-1] for a in phone.commands("echo") if a[1] == "entered"]
        assert entered == ["killed", "survivor"]           # nothing ran twice
        retried = server.call("POST", f"/task/{killed}/retry")["data"]
        assert retried["status"] in (0, 1, 2) and retried["retry_count"] == 1
        assert wait_until(lambda: server.task(killed)["status"] == 2, 20, "retried task ran")
    finally:
        server.stop()


def test_a_task_that_ends_on_a_full_disk_is_written_when_space_is_back(small_disk):
    """The end is kept while the disk is full, written once space is freed (no restart),
    and the phone takes tasks again.

    Its own adb server: the module's lists every phone of the earlier tests, and their
    state and farm-view writes would fill the 512 KiB disk's WAL again once freed."""
    from phonesim import AdbServer, PhoneSim
    with AdbServer() as adb, PhoneSim() as sim:
        full_disk_end_is_written_later(small_disk, adb, sim)


def full_disk_end_is_written_later(small_disk, adb, sim):
    farm = Farm(small_disk.path, adb, sim).start()
    try:
        farm.lite.runner.unwritten_retry = (0.05,)
        phone = farm.add_phone()
        task_id = farm.create([phone.address], "gate", {"word": "full"})[0]
        farm.wait_status(task_id, 1)
        assert phone.wait_for_command(lambda cmd: cmd.argv[:1] == ["cat"], timeout=10)
        small_disk.fill()
        open_gate(phone)
        wait_until(lambda: task_id in farm.lite.runner._unwritten, 10,
                   "the end kept aside for later")
        assert farm.task(task_id)["status"] == 1          # not written: the disk is full
        small_disk.free()
        task = farm.wait_status(task_id, 2, timeout=10)
        assert task["result"] == {"passed": "full"}
        follow = farm.create([phone.address], "say", {"word": "after"})[0]
        assert farm.wait_status(follow, 2)["result"] == {"said": "said after"}
    finally:
        farm.close()


def test_a_stopped_task_keeps_its_whole_log_on_disk(farm):
    """Log lines and progress wait in memory while the task runs (the API shows them) and
    are in the file once it has stopped."""
    phone = farm.add_phone()
    task_id = farm.create([phone.address], "block", {"seconds": 120})[0]
    assert phone.wait_for_command(lambda cmd: cmd.argv[0] == "sleep", timeout=10)
    task = farm.task(task_id)
    assert (task["status"], task["progress"], task["message"]) == (1, 5, "blocking")
    assert [line.split(" ", 2)[2] for line in task["log"]] == [
        f"started on {phone.address}", "5% blocking"]
    farm.http.post(f"/api/v1/task/{task_id}/stop")
    farm.wait_status(task_id, 3)
    raw = sqlite3.connect(str(farm.lite.store.path))
    try:
        on_disk = [r[0] for r in raw.execute("SELECT line FROM task_log WHERE task_id=?"
                                             " ORDER BY id", (task_id,))]
        progress = raw.execute("SELECT progress, message FROM tasks WHERE id=?",
                               (task_id,)).fetchone()
    finally:
        raw.close()
    assert on_disk == [f"started on {phone.address}", "5% blocking",
                       "failed: stopped by user"]
    # the progress it reached is on disk; its message says how it ended (issue 10)
    assert progress == (5, tml.STOPPED_BY_USER)
