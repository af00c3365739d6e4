"""The device layer: phones tracked through a real adb server, adb connect through the
API, live screenshots, unauthorized phones, and an adb server that goes away."""
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


def test_adb_server_restart(tmp_path, sim, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))           # keys of the adb Lite starts
    with AdbServer() as adb:
        farm = Farm(tmp_path, adb, sim).start()
        try:
            phone = farm.add_phone()
            adb.kill()                                  # the adb server dies
            wait_until(lambda: device_row(farm, phone.address)["state"] == "disconnected",
                       10, "phone gone with its adb server")
            # Lite starts a local adb server on the address it owns; TCP phones must be
            # connected again on the new server
            wait_until(lambda: farm.lite.devices.links[0].connected.is_set(), 30,
                       "Lite back on an adb server")
            farm.http.post_json("/api/v1/device/connect", {"address": phone.address})
            wait_until(lambda: farm.lite.devices.is_online(phone.address), 15, "online again")
            task = farm.create([phone.address], "say", {"word": "again"})[0]
            assert farm.wait_status(task, 2)["result"] == {"said": "said again"}
            health = farm.http.get("/api/v1/health").json["data"]
            assert health["adb"]["servers"][0]["connected"] is True
        finally:
            farm.close()
