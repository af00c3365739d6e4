"""The device layer: phones tracked through a real adb server, adb connect through the
API, live screenshots, unauthorized phones, and an adb server that goes away."""
import time

import pytest

from farm import Farm, wait_until
from phonesim import AdbServer


@pytest.fixture
def farm(tmp_path, adb, sim):
    farm = Farm(tmp_path, adb, sim).start()
    yield farm
    farm.close()


def device_row(farm, serial):
    items = farm.http.get("/api/v1/device").json["data"]["items"]
    return next((d for d in items if d["serial"] == serial), None)


def test_device_list_shows_what_the_phone_reports(farm):
    phone = farm.add_phone(model="Galaxy S21", android="13", sdk=33, battery=64)
    row = device_row(farm, phone.address)
    assert row == {"serial": phone.address, "state": "device", "model": "Galaxy S21",
                   "android_version": "13", "battery": 64,
                   "adb_server": f"127.0.0.1:{farm.adb.port}", "connection": "tcp",
                   "running_task_id": None, "pending_count": 0,
                   "last_seen": row["last_seen"], "alias": "", "groups": [],
                   "ime": None, "screen": row["screen"], "apps": {}, "last_error": ""}
    assert row["last_seen"] is not None


def test_connect_and_disconnect_through_the_api(farm):
    phone = farm.sim.add_device(model="Cloud Phone")
    reply = farm.http.post_json("/api/v1/device/connect", {"address": phone.address}).json
    assert reply["code"] == 0 and "connected to" in reply["data"]["message"]
    wait_until(lambda: farm.lite.devices.is_online(phone.address), 15, "online")
    wait_until(lambda: (device_row(farm, phone.address) or {}).get("model") == "Cloud Phone",
               10, "identified")
    task = farm.create([phone.address], "say", {"word": "cloud"})[0]
    farm.wait_status(task, 2)

    reply = farm.http.post_json("/api/v1/device/disconnect", {"address": phone.address}).json
    assert reply["code"] == 0
    wait_until(lambda: device_row(farm, phone.address)["state"] == "disconnected", 10,
               "disconnected")


def test_connect_to_nothing_is_a_clear_error(farm):
    import socket
    with socket.socket() as s:          # a port with nothing behind it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reply = farm.http.post_json("/api/v1/device/connect", {"address": f"127.0.0.1:{port}"},
                                expect_errors=True)
    assert reply.status_int == 500 and reply.json["code"] == 50001
    assert f"127.0.0.1:{port}" in reply.json["message"]
    bad = farm.http.post_json("/api/v1/device/connect", {"address": "no port"},
                              expect_errors=True)
    assert bad.json["code"] == 40001 and bad.json["message"].startswith("address")


def test_live_screenshot(farm):
    phone = farm.add_phone()
    shot = farm.http.get(f"/api/v1/device/{phone.address}/screenshot")
    assert shot.content_type == "image/png" and shot.body.startswith(b"\x89PNG")
    assert farm.http.get("/api/v1/device/nope/screenshot", expect_errors=True).json[
        "code"] == 40401


def test_unauthorized_phone_is_shown_and_gets_no_task(farm):
    phone = farm.sim.add_device()
    phone.set_unauthorized(True)
    farm.adb.connect(phone.address, state="unauthorized")
    wait_until(lambda: (device_row(farm, phone.address) or {}).get("state") == "unauthorized",
               15, "unauthorized in the list")
    task = farm.create([phone.address], "say", {"word": "never"})[0]
    assert farm.task(task)["status"] == 0
    phone.set_unauthorized(False)                      # the user taps "Allow"
    assert farm.wait_status(task, 2, timeout=20)["status"] == 2


def adb_answers(port: int) -> bool:
    import socket
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


def test_adb_server_restart_reconnects_network_phones(tmp_path, sim, monkeypatch):
    """A phone connected through Lite is connected again, without any call, when the adb
    server restarts; the adb server Lite started is stopped when Lite closes."""
    monkeypatch.setenv("HOME", str(tmp_path))           # keys of the adb Lite starts
    with AdbServer() as adb:
        farm = Farm(tmp_path, adb, sim).start()
        try:
            phone = farm.sim.add_device(model="Cloud Phone")
            reply = farm.http.post_json("/api/v1/device/connect", {"address": phone.address})
            assert reply.json["code"] == 0
            wait_until(lambda: farm.lite.devices.is_online(phone.address), 15, "online")
            killed = time.monotonic()
            adb.kill()                                  # the adb server dies
            wait_until(lambda: device_row(farm, phone.address)["state"] == "disconnected",
                       10, "phone gone with its adb server")
            # Lite starts a local adb server on the address it owns and connects the
            # phone again by itself
            wait_until(lambda: farm.lite.devices.is_online(phone.address), 30,
                       "online again without a call to /device/connect")
            print(f"time to reconnect after the adb server died: "
                  f"{time.monotonic() - killed:.2f} s")
            own = farm.lite.devices.links[0].own_server
            assert own is not None and own.poll() is None
            task = farm.create([phone.address], "say", {"word": "again"})[0]
            assert farm.wait_status(task, 2)["result"] == {"said": "said again"}
            health = farm.http.get("/api/v1/health").json["data"]
            assert health["adb"]["servers"][0]["connected"] is True
        finally:
            farm.close()
        assert own.poll() is not None                   # stopped with Lite
        wait_until(lambda: not adb_answers(adb.port), 10, "the adb server Lite started gone")


def test_remembered_phones_are_connected_at_start_up(tmp_path, adb, sim):
    phone = sim.add_device(model="Cloud Phone")
    farm = Farm(tmp_path, adb, sim).start()
    try:
        farm.http.post_json("/api/v1/device/connect", {"address": phone.address})
        wait_until(lambda: farm.lite.devices.is_online(phone.address), 15, "online")
    finally:
        farm.close()
    assert adb_answers(adb.port)                        # not Lite's: left running
    adb.run("disconnect", phone.address)
    adb.wait_state(phone.address, (None,))
    farm = Farm(tmp_path, adb, sim).start()             # same database
    try:
        wait_until(lambda: farm.lite.devices.is_online(phone.address), 15,
                   "connected again at start-up")
        farm.http.post_json("/api/v1/device/disconnect", {"address": phone.address})
        wait_until(lambda: not farm.lite.devices.is_online(phone.address), 10, "gone")
        assert farm.lite.store.connections_via(f"127.0.0.1:{adb.port}") == []
    finally:
        farm.close()


def test_a_command_cut_short_by_an_unplug_is_never_a_success(farm):
    """adb 29 ends the stream of a dropped phone as if the command had finished: the
    missing end marker must make it DeviceLost, under either adb."""
    import threading
    import tikmatrix_lite as tml
    phone = farm.add_phone()
    outcome = []

    def run():
        try:
            outcome.append(farm.lite.devices.run(phone.address, "shell:echo partial; sleep 60",
                                                 timeout=90, token=tml.CancelToken()))
        except Exception as exc:
            outcome.append(exc)
    worker = threading.Thread(target=run)
    worker.start()
    assert phone.wait_for_command(lambda cmd: cmd.argv[0] == "sleep", timeout=10)
    phone.unplug()
    worker.join(15)
    assert not worker.is_alive()
    assert isinstance(outcome[0], tml.DeviceLost), outcome
    assert farm.lite.devices.run(farm.add_phone().address, "shell:echo whole", timeout=10,
                                 token=tml.CancelToken()) == b"whole\n"


def test_a_phone_shows_online_only_once_its_row_is_written(farm):
    """A task may be created for a phone the moment it shows online, and one for a
    phone without a row is refused ("unknown device"): the row is written first. The
    row's write is held here; the phone must not show online until it is let go."""
    import threading
    store, entered, release = farm.lite.store, threading.Event(), threading.Event()
    original = store.upsert_device

    def held(serial, **fields):
        if fields.get("state") == "device" and not release.is_set():
            entered.set()
            assert release.wait(10)
        return original(serial, **fields)
    store.upsert_device = held
    device = farm.sim.add_device()
    farm.adb.connect(device.address)
    assert entered.wait(20), "the phone's row was never written"
    assert not farm.lite.devices.is_online(device.address)
    release.set()
    wait_until(lambda: farm.lite.devices.is_online(device.address), 10, "online")
    reply = farm.http.post_json("/api/v1/task", {
        "serials": [device.address], "script_name": "follow",
        "script_config": {"target_users": ["alice"]}}, expect_errors=True).json
    assert reply["code"] == 0, reply
