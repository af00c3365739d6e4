"""TikMatrix's own API examples, run unchanged against Lite.

TikMatrix users copy the examples of its Local API docs (https://tikmatrix.com/docs/api/,
sources in github.com/tikmatrix/www.tikmatrix.com, ``docs/api/*.md``, read at commit
83308fc of 2026-01-06; the ``ru`` and ``zh-Hans`` pages carry the same bodies with
translated text). Each test below is one example: its request body is copied from the page
as data (that is the API contract) and sent as is, with only the placeholder serials
(``device_serial_1``, ``device_1``...) and the media paths (``C:/Videos/...``) replaced by
the simulator's. The client side is the examples' own logic, written with ``requests``
against the real waitress server of the program (``make_server``), with phones simulated
behind a private adb server. Where an example polls (``wait_for_completion``,
``auto_retry_failed``), the loop is run as the page writes it and must end as it says.

The examples that take their media from TikMatrix's material library (``material_source:
"materialLibrary"``, the default) run as a TikMatrix user runs them on Lite: material is
uploaded to Lite's library first (``POST /material``, SPEC 7.2), then the body is sent.
Examples that cannot work on Lite (the README lists them) are tested for the clear 40001
they get instead.
"""

import copy
import threading
import time
from pathlib import Path

import pytest
import requests

import tikmatrix_lite as lite_module
from apps import InstagramApp, TikTokApp
from farm import Farm, wait_until
from phonesim import FASTINPUT_IME

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
PENDING, RUNNING, COMPLETED, FAILED = 0, 1, 2, 3


# ---------------------------------------------------------------------------------------
# The examples' client ("API Examples" page, section "Python"), pointed at the test server
# ---------------------------------------------------------------------------------------

class DocsClient:
    """The functions of the Python example, one method each: same method, path, query and
    body, reading the same fields. `say` collects what the example prints."""

    def __init__(self, base_url, poll_seconds=0.05):
        self.base_url = base_url
        self.poll_seconds = poll_seconds    # the page sleeps 5 s (and 30 s) between polls
        self.said = []

    def say(self, *parts):
        self.said.append(" ".join(str(p) for p in parts))

    def check_license(self):
        return requests.get(f"{self.base_url}/license/check").json()

    def create_task(self, serials, script_name, script_config=None, multi_account=False):
        payload = {"serials": serials, "script_name": script_name,
                   "script_config": script_config or {},
                   "enable_multi_account": multi_account}
        return requests.post(f"{self.base_url}/task", json=payload,
                             headers={"Content-Type": "application/json"}).json()

    def list_tasks(self, status=None, page=1, page_size=20):
        params = {"page": page, "page_size": page_size}
        if status is not None:
            params["status"] = status
        return requests.get(f"{self.base_url}/task", params=params).json()

    def get_task(self, task_id):
        return requests.get(f"{self.base_url}/task/{task_id}").json()

    def delete_task(self, task_id):
        return requests.delete(f"{self.base_url}/task/{task_id}").json()

    def stop_task(self, task_id):
        return requests.post(f"{self.base_url}/task/{task_id}/stop").json()

    def retry_task(self, task_id):
        return requests.post(f"{self.base_url}/task/{task_id}/retry").json()

    def get_stats(self):
        return requests.get(f"{self.base_url}/task/stats").json()

    # "Common Use Cases" -> "Monitor Task Progress"
    def wait_for_completion(self, task_ids, timeout=300):
        start = time.time()
        while time.time() - start < timeout:
            stats = self.get_stats()
            running, pending = stats["data"]["running"], stats["data"]["pending"]
            if running == 0 and pending == 0:
                self.say("All tasks completed!")
                return True
            self.say(f"Running: {running}, Pending: {pending}")
            time.sleep(self.poll_seconds)
        self.say("Timeout waiting for tasks")
        return False

    # "Common Use Cases" -> "Retry Failed Tasks Automatically". The page waits a fixed
    # 30 s after retry-all ("# Wait for completion"); here the wait is the page's own
    # wait_for_completion, so the loop's outcome does not depend on the machine's speed.
    def auto_retry_failed(self, max_retries=3):
        for i in range(max_retries):
            failed = self.list_tasks(status=3)
            if failed["data"]["total"] == 0:
                self.say("No failed tasks")
                return
            self.say(f"Retrying {failed['data']['total']} failed tasks (attempt {i + 1})")
            requests.post(f"{self.base_url}/task/retry-all")
            self.wait_for_completion([], timeout=60)

    def post(self, path, body=None):
        """A raw request as the cURL examples send it."""
        return requests.post(f"{self.base_url}{path}", json=body).json()


# ---------------------------------------------------------------------------------------
# The farm: real waitress server, real adb server, simulated phones
# ---------------------------------------------------------------------------------------

class DocsFarm(Farm):
    """Lite with the real scripts, served by the program's own waitress server on a
    loopback port; phones carry the simulated TikTok 47.0.3 / Instagram 410 apps."""

    def __init__(self, tmp_path, adb, sim):
        super().__init__(tmp_path, adb, sim, scripts=SCRIPTS, host="127.0.0.1", port=0)
        self.start()
        self.server = lite_module.make_server(self.config, self.lite)
        self.thread = threading.Thread(target=self.server.run, name="waitress", daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.effective_port}/api/v1"
        self.client = DocsClient(self.base_url)
        self.tmp_path = tmp_path

    def close(self):
        """Close every channel in the server's loop thread (the trigger runs the closing
        there); a server whose loop already closed its trigger is closed from here."""
        def close_all():
            for dispatcher in list(self.server._map.values()):
                dispatcher.handle_close()
        try:
            self.server.trigger.pull_trigger(close_all)
        except OSError:
            close_all()
        self.thread.join(10)
        self.server.task_dispatcher.shutdown()
        super().close()

    def phone(self, *, tiktok=None, instagram=None, accounts=("sim_user",)):
        """A phone with the apps asked for (TikTok when none), TikMatrix's FastInputIME
        on (the examples type emoji), online in Lite."""
        apps = []
        if tiktok is not None or instagram is None:
            apps.append(TikTokApp("47.0.3", users=tiktok or {}, accounts=accounts))
        if instagram is not None:
            apps.append(InstagramApp(users=instagram, accounts=accounts))
        device = self.sim.add_device(ime="fastinput", apps=apps)
        device.enabled_imes.add(FASTINPUT_IME)
        self.adb.connect(device.address)
        wait_until(lambda: self.lite.devices.is_online(device.address), 20, "phone online")
        return device, apps

    def account(self, username, device, app, platform="tiktok"):
        """Bind an account to a phone through Lite's account API (setup, not an example)."""
        reply = requests.post(f"{self.base_url}/account", json={
            "username": username, "serial": device.address, "platform": platform,
            "package": app.package}).json()
        assert reply["code"] == 0, reply

    def send(self, body):
        """POST /task with an example's body, as its cURL command does."""
        return self.client.post("/task", body)

    def created(self, body, count):
        reply = self.send(body)
        assert reply["code"] == 0, reply
        assert reply["data"]["created_count"] == count == len(reply["data"]["task_ids"])
        return reply["data"]["task_ids"]

    def task(self, task_id):
        return self.client.get_task(task_id)["data"]

    def finished(self, task_ids, timeout=60):
        tasks = [self.wait_status(i, (COMPLETED, FAILED), timeout) for i in task_ids]
        for t in tasks:
            assert t["status"] == COMPLETED, (t["error"], t["log"])
        return tasks

    def library(self, *files, tags="", username=None, caption=None):
        """Upload (name, bytes) files to Lite's material library through its API, as a
        user does before sending the examples (setup, not an example)."""
        fields = {"tags": tags}
        if username is not None:
            fields["username"] = username
        if caption is not None:
            fields["caption"] = caption
        reply = requests.post(f"{self.base_url}/material", data=fields,
                              files=[("file", (name, data)) for name, data in files]).json()
        assert reply["code"] == 0, reply
        return reply["data"]["items"]

    def materials(self, **query):
        return requests.get(f"{self.base_url}/material", params=query).json()["data"]

    def media(self, *names):
        """Media files on the box (what C:/Videos/... stands for in the examples)."""
        paths = []
        for name in names:
            path = self.tmp_path / "media" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + name.encode())
            paths.append(str(path))
        return paths


@pytest.fixture
def farm(tmp_path, adb, sim):
    f = DocsFarm(tmp_path, adb, sim)
    yield f
    f.close()


def mp4(n):
    """A small video the server's content check takes (an ISO-BMFF ftyp box); `n` makes
    the bytes unique (the library keeps the same bytes once)."""
    return b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + bytes([n]) * 512


def jpeg(n):
    """A small JPEG as far as the content check goes (SOI + APP0), unique per `n`."""
    return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes([n]) * 512


def on_farm(body, replace):
    """The example's body with its placeholder serials and media paths replaced (exact
    string values only; nothing else changes)."""
    def walk(value):
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return replace.get(value, value) if isinstance(value, str) else value
    return walk(copy.deepcopy(body))


def error_of(reply):
    assert reply["code"] == 40001 and reply["data"] is None, reply
    return reply["message"]


# ---------------------------------------------------------------------------------------
# docs/api/examples.md ("API Examples")
# ---------------------------------------------------------------------------------------

def test_examples_python_usage_follow_target_username(farm):
    """API Examples, "Python" -> "Usage example" (the same body is sent by "JavaScript /
    Node.js" createTask, "cURL" "Create a task" and "PowerShell" Create-Task):
    check the license, create a follow with script_config {"target_username":
    "@tikmatrix"}, print the stats."""
    device, (app,) = farm.phone(tiktok={"tikmatrix": False})
    c = farm.client
    license_info = c.check_license()
    assert license_info["code"] == 0 and license_info["data"]["plan_name"] == "Lite"
    result = c.create_task(serials=[device.address], script_name="follow",
                           script_config={"target_username": "@tikmatrix"})
    assert result["code"] == 0, result
    assert result["data"]["created_count"] == 1
    stats = c.get_stats()
    assert stats["code"] == 0 and stats["data"]["total"] == 1
    task, = farm.finished(result["data"]["task_ids"])
    assert task["result"] == {"user": "tikmatrix", "already": False, "following": True}
    assert app.follows["tikmatrix"] is True
    # the cURL / JavaScript / PowerShell body, byte for byte the same request
    body = {"serials": ["device_serial_1"], "script_name": "follow",
            "script_config": {"target_username": "@tikmatrix"},
            "enable_multi_account": False}
    again, = farm.finished(farm.created(on_farm(body, {"device_serial_1": device.address}),
                                        1))
    assert again["result"]["already"] is True


def test_examples_target_username_forms_and_errors(farm):
    """API Examples: target_username is the older spelling of the follow targets; as a
    list and as a comma list too, one task per name, and a bad name is a 40001 naming
    the field."""
    device, _ = farm.phone(tiktok={"a": False, "b": False})
    for targets in (["@a", "b"], "a, @b"):
        ids = farm.created({"serials": [device.address], "script_name": "unfollow",
                            "script_config": {"target_username": targets}}, 2)
        assert [farm.task(i)["script_config"]["target_username"] for i in ids] == ["a", "b"]
    message = error_of(farm.send({"serials": [device.address], "script_name": "follow",
                                  "script_config": {"target_username": "@bad name"}}))
    assert message.startswith("script_config.target_username:")
    message = error_of(farm.send({"serials": [device.address], "script_name": "follow",
                                  "script_config": {"target_username": 7}}))
    assert "script_config.target_username: must be str or list (a string or an array)" \
        in message


def take_offline(farm, device):
    """The phone unplugged: Lite knows it, its tasks wait (pending)."""
    farm.adb.disconnect(device.address)
    wait_until(lambda: not farm.lite.devices.is_online(device.address), 15, "phone offline")


def test_examples_curl_task_management_walkthrough(farm):
    """API Examples, "cURL": every command of the section in order, on a phone that is
    unplugged so that its task waits (ids 1, 2, 3 as the commands name them). The
    PowerShell Get-Tasks sends the same list query (its [int]$Status is 0 when not given)."""
    device, _ = farm.phone(tiktok={"tikmatrix": False})
    take_offline(farm, device)
    create = on_farm({"serials": ["device_serial_1"], "script_name": "follow",
                      "script_config": {"target_username": "@tikmatrix"},
                      "enable_multi_account": False}, {"device_serial_1": device.address})
    base = farm.base_url
    assert requests.get(f"{base}/license/check").json()["data"]["api_enabled"] is True
    assert farm.created(create, 1) == [1]
    pending = requests.get(f"{base}/task?status=0&page=1&page_size=20").json()["data"]
    assert pending["total"] == 1 and pending["items"][0]["id"] == 1
    assert requests.get(f"{base}/task/1").json()["data"]["status"] == PENDING
    stopped = requests.post(f"{base}/task/1/stop").json()
    assert stopped["code"] == 0 and farm.task(1)["error"] == "stopped by user"
    assert requests.post(f"{base}/task/1/retry").json()["code"] == 0
    assert farm.task(1)["status"] == PENDING
    assert requests.delete(f"{base}/task/1").json()["code"] == 0
    assert farm.created(create, 1) == [2] and farm.created(create, 1) == [3]
    batch = requests.delete(f"{base}/task/batch", json={"task_ids": [1, 2, 3]}).json()
    assert batch["code"] == 0 and batch["data"]["deleted_count"] == 2
    assert list(batch["data"]["errors"]) == ["1"]
    assert requests.post(f"{base}/task/retry-all").json()["data"]["retried_count"] == 0
    assert requests.get(f"{base}/task/stats").json()["data"]["total"] == 0


def test_examples_batch_multi_account_then_monitor(farm):
    """API Examples, "Common Use Cases" -> "Batch Create Tasks for Multiple Devices"
    (five phones, multi_account=True) then "Monitor Task Progress" (wait_for_completion):
    the loop ends with "All tasks completed!"."""
    devices = []
    for n in range(5):
        device, (app,) = farm.phone(tiktok={"target_user": False}, accounts=[f"shop{n}"])
        farm.account(f"shop{n}", device, app)
        devices.append((device, app))
    c = farm.client
    result = c.create_task(serials=[d.address for d, _ in devices], script_name="follow",
                           script_config={"target_username": "@target_user"},
                           multi_account=True)
    assert result["code"] == 0, result
    assert result["data"]["created_count"] == 5
    assert c.wait_for_completion(result["data"]["task_ids"], timeout=120) is True
    assert c.said[-1] == "All tasks completed!"
    assert all(app.follows["target_user"] for _, app in devices)
    assert c.get_stats()["data"]["completed"] == 5


def test_examples_auto_retry_failed_ends_when_none_failed(farm):
    """API Examples, "Common Use Cases" -> "Retry Failed Tasks Automatically": a follow
    fails (the profile is not there yet), the profile appears, the loop retries it once
    and ends with "No failed tasks"."""
    device, (app,) = farm.phone(tiktok={})
    ids = farm.created({"serials": [device.address], "script_name": "follow",
                        "script_config": {"target_username": "@late_user"}}, 1)
    assert farm.wait_status(ids[0], FAILED, 60)["error"]
    app.users["late_user"] = False          # the profile appears
    c = farm.client
    c.auto_retry_failed()
    assert c.said[0] == "Retrying 1 failed tasks (attempt 1)"
    assert c.said[-1] == "No failed tasks"
    task = farm.task(ids[0])
    assert task["status"] == COMPLETED and task["retry_count"] == 1
    assert app.follows["late_user"] is True


def test_examples_auto_retry_failed_ends_after_max_retries(farm):
    """Same loop when the task keeps failing: three attempts, then the loop ends; the
    task has used its three retries (Lite's default max_retry_count)."""
    device, _ = farm.phone(tiktok={})
    ids = farm.created({"serials": [device.address], "script_name": "follow",
                        "script_config": {"target_username": "@nobody_here"}}, 1)
    farm.wait_status(ids[0], FAILED, 60)
    c = farm.client
    c.auto_retry_failed(max_retries=3)
    attempts = [line for line in c.said if line.startswith("Retrying")]
    assert attempts == [f"Retrying 1 failed tasks (attempt {i})" for i in (1, 2, 3)]
    task = farm.task(ids[0])
    assert task["status"] == FAILED and task["retry_count"] == 3
    assert "does not exist" in task["error"]


# ---------------------------------------------------------------------------------------
# docs/api/local-api.md ("Local API Overview") and task-management.md
# ---------------------------------------------------------------------------------------

def test_local_api_quick_start(farm):
    """Local API Overview, "Quick Start": 1. check API access (the documented fields),
    2. create a post with no media (content_type 1: images from the material library,
    TikMatrix's default source; two images uploaded first), 3. list tasks (the unquoted
    cURL URL sends only ?status=0 from a shell): both posts wait for 14:30, each holding
    its own image."""
    d1, _ = farm.phone()
    d2, _ = farm.phone()
    check = requests.get(f"{farm.base_url}/license/check").json()
    assert check["code"] == 0 and check["message"] == "success"
    assert set(check["data"]) >= {"plan_name", "api_enabled", "device_limit", "message"}
    images = farm.library(("a.jpg", jpeg(1)), ("b.jpg", jpeg(2)))
    assert [m["kind"] for m in images] == ["image", "image"]
    body = {"serials": ["device_serial_1", "device_serial_2"], "script_name": "post",
            "script_config": {"content_type": 1, "captions": "Check out my new video! #viral"},
            "enable_multi_account": False, "start_time": "14:30"}
    ids = farm.created(on_farm(body, {"device_serial_1": d1.address,
                                      "device_serial_2": d2.address}), 2)
    tasks = [farm.task(i) for i in ids]
    assert {t["serial"] for t in tasks} == {d1.address, d2.address}
    assert all(t["status"] == PENDING and t["start_time"].endswith(" 14:30:00")
               for t in tasks)
    held = sorted(i for t in tasks for i in t["script_config"]["material_ids"])
    assert held == sorted(m["id"] for m in images)
    for query in ("?status=0&page=1&page_size=20", "?status=0"):
        listed = requests.get(f"{farm.base_url}/task{query}").json()
        assert listed["code"] == 0 and listed["data"]["total"] == 2


def test_local_api_quick_start_with_an_empty_library(farm):
    """Local API Overview, "Quick Start" step 2 on a box whose library has no images: a
    40001 naming the field, the kind of material and how many are left; no task."""
    d1, _ = farm.phone()
    farm.library(("clip.mp4", mp4(1)))                  # a video is not an image
    body = {"serials": [d1.address], "script_name": "post",
            "script_config": {"content_type": 1, "captions": "Check out my new video! #viral"},
            "enable_multi_account": False, "start_time": "14:30"}
    assert error_of(farm.send(body)) == ("script_config.materials_tags: not enough unused "
                                         "image material with any tag: 1 needed per task, "
                                         "0 left")
    assert farm.client.get_stats()["data"]["total"] == 0


# ---------------------------------------------------------------------------------------
# docs/api/post-script.md ("Post Script Configuration")
# ---------------------------------------------------------------------------------------

BASIC_POST = {   # post-script.md "Basic Post Task with Direct Material List";
    "serials": ["device_serial_1"],              # task-management.md "Create Task" Example
    "script_name": "post",
    "script_config": {
        "content_type": 0,
        "captions": "Check out my new video! #viral #fyp",
        "material_list": [
            "C:/Videos/video1.mp4"
        ],
        "upload_wait_time": 60
    }
}


def test_post_basic_material_list_windows_path_is_not_on_the_box(farm):
    """Post Script Configuration, "Basic Post Task with Direct Material List" and Task
    Management API, "Create Task" -> "Example", sent as written: the Windows path is not
    a file on the box, and that is all the 40001 says."""
    device, _ = farm.phone()
    reply = farm.send(on_farm(BASIC_POST, {"device_serial_1": device.address}))
    assert reply == {"code": 40001, "data": None, "message":
                     "script_config.material_list[0]: file not found on the box: "
                     "C:/Videos/video1.mp4"}
    assert farm.client.get_stats()["data"]["total"] == 0


def test_post_basic_material_list(farm):
    """Post Script Configuration, "Basic Post Task with Direct Material List" (= Task
    Management API, "Create Task" -> "Example") with the file on the box."""
    device, (app,) = farm.phone()
    video, = farm.media("video1.mp4")
    body = on_farm(BASIC_POST, {"device_serial_1": device.address,
                                "C:/Videos/video1.mp4": video})
    task, = farm.finished(farm.created(body, 1))
    assert task["script_config"]["upload_wait_time"] == 60
    assert app.posts[0]["caption"] == "Check out my new video! #viral #fyp"
    assert app.posts[0]["media"] == ["/sdcard/DCIM/Camera/video1.mp4"]


MATERIAL_LIBRARY_POSTS = {
    "Post Task with Material Library (TikTok)": {
        "serials": ["device_serial_1", "device_serial_2"],
        "script_name": "post",
        "script_config": {
            "content_type": 0,
            "captions": "Check out my new video! #viral #fyp",
            "post_way": "share",
            "material_source": "materialLibrary",
            "materials_tags": "trending, dance",
            "upload_wait_time": 60,
            "add_sound": "-1"
        },
        "enable_multi_account": False
    },
    "Post with Custom Sound": {
        "serials": ["device_serial_1"],
        "script_name": "post",
        "script_config": {
            "content_type": 0,
            "captions": "Dancing to this trending sound!",
            "post_way": "share",
            "add_sound": "custom",
            "custom_sound_keyword": "trending dance 2024",
            "origin_sound_volume": 30,
            "add_sound_volume": 70,
            "material_source": "materialLibrary",
            "upload_wait_time": 60
        }
    },
    "Post Using Specific Sound URL": {
        "serials": ["device_serial_1"],
        "script_name": "post",
        "script_config": {
            "post_way": "useSound",
            "sound_name": "https://www.tiktok.com/music/original-sound-7123456789",
            "captions": "Using this awesome sound!",
            "material_source": "materialLibrary"
        }
    },
}


def library_post(farm, section, devices):
    """The example's body, with its placeholder serials replaced by these phones'."""
    return on_farm(MATERIAL_LIBRARY_POSTS[section],
                   {f"device_serial_{n + 1}": d.address for n, d in enumerate(devices)})


def test_post_material_library_tiktok(farm):
    """Post Script Configuration, "Post Task with Material Library (TikTok)": two phones,
    videos tagged "trending, dance" in the library (uploaded first, one more with another
    tag); each task takes its own matching video at creation, both posts are published,
    and the library counts those two as used."""
    (d1, (app1,)), (d2, (app2,)) = farm.phone(), farm.phone()
    trending, = farm.library(("trend.mp4", mp4(1)), tags="trending")
    dance, = farm.library(("dance.mp4", mp4(2)), tags="dance, tutorial")
    other, = farm.library(("cat.mp4", mp4(3)), tags="cats")
    ids = farm.created(library_post(farm, "Post Task with Material Library (TikTok)",
                                    [d1, d2]), 2)
    held = {farm.task(i)["script_config"]["material_ids"][0] for i in ids}
    assert held == {trending["id"], dance["id"]}
    tasks = farm.finished(ids, timeout=90)
    assert all(t["result"]["post_way"] == "share" for t in tasks)
    for app in (app1, app2):
        assert [p["caption"] for p in app.posts] == ["Check out my new video! #viral #fyp"]
    assert sorted(t["result"]["media"][0] for t in tasks) == sorted(
        Path(t["script_config"]["material_list"][0]).name for t in tasks)
    unused = farm.materials(unused=1)
    assert [m["id"] for m in unused["items"]] == [other["id"]]


def test_post_material_library_tiktok_without_enough_material(farm):
    """Post Script Configuration, "Post Task with Material Library (TikTok)" on an empty
    library, then with one matching video for its two phones: each time a 40001 naming
    materials_tags and the tags, and nothing is created or held."""
    d1, _ = farm.phone()
    d2, _ = farm.phone()
    body = library_post(farm, "Post Task with Material Library (TikTok)", [d1, d2])
    assert error_of(farm.send(body)) == ("script_config.materials_tags: not enough unused "
                                         "video material with tags dance, trending: 1 "
                                         "needed per task, 0 left")
    farm.library(("trend.mp4", mp4(1)), tags="trending")
    farm.library(("cat.mp4", mp4(2)), tags="cats")
    message = error_of(farm.send(body))
    assert message.startswith("script_config.materials_tags: not enough unused video "
                              "material with tags dance, trending")
    assert farm.client.get_stats()["data"]["total"] == 0
    assert all(m["reserved_by"] is None for m in farm.materials()["items"])


def test_post_material_library_custom_sound(farm):
    """Post Script Configuration, "Post with Custom Sound": the library's video shared
    into TikTok, the first sound found for "trending dance 2024" added in the editor's
    sound panel, the original sound at 30 and the added one at 70 of TikMatrix's 0-100
    (TikTok's 60 % and 140 %), then posted; the library counts the video used."""
    device, (app,) = farm.phone()
    app.sounds = ["Trending Dance 2024 remix - sim_dj", "Calm piano - sim_band"]
    video, = farm.library(("clip.mp4", mp4(1)))
    task, = farm.finished(farm.created(library_post(farm, "Post with Custom Sound",
                                                    [device]), 1))
    assert task["status"] == 2, task["error"]
    assert task["result"]["sound"] == "Trending Dance 2024 remix - sim_dj"
    post, = app.posts
    assert (post["caption"], post["sound"]) == ("Dancing to this trending sound!",
                                                "Trending Dance 2024 remix - sim_dj")
    assert post["volumes"] == {"original": 60, "added": 140}
    assert farm.materials(unused=1)["total"] == 0


def test_post_material_library_specific_sound_url(farm):
    """Post Script Configuration, "Post Using Specific Sound URL": the library's video
    posted from the sound's page (the link opened, "Use sound", then the gallery)."""
    device, (app,) = farm.phone()
    video, = farm.library(("clip.mp4", mp4(1)), caption="from the library")
    task, = farm.finished(farm.created(library_post(farm, "Post Using Specific Sound URL",
                                                    [device]), 1))
    assert task["script_config"]["material_ids"] == [video["id"]]
    assert task["result"]["post_way"] == "useSound"
    assert [(p["caption"], p["sound"]) for p in app.posts] == \
        [("Using this awesome sound!", "original-sound-7123456789")]
    assert farm.materials(unused=1)["total"] == 0


def test_post_by_username_list(farm):
    """Post Script Configuration, "Post Task by Username List": three accounts (bound to
    one phone here), one post each, each as its account."""
    device, (app,) = farm.phone(accounts=["user1", "user2", "user3"])
    for name in ("user1", "user2", "user3"):
        farm.account(name, device, app)
    video, = farm.media("video1.mp4")
    body = {
        "usernames": ["@user1", "@user2", "@user3"],
        "script_name": "post",
        "script_config": {
            "content_type": 0,
            "captions": "Check out my new video! #viral #fyp",
            "material_list": [
                "C:/Videos/video1.mp4"
            ],
            "upload_wait_time": 60
        }
    }
    tasks = farm.finished(farm.created(on_farm(body, {"C:/Videos/video1.mp4": video}), 3),
                          timeout=120)
    assert sorted(t["username"].lstrip("@") for t in tasks) == ["user1", "user2", "user3"]
    assert sorted(p["account"] for p in app.posts) == ["user1", "user2", "user3"]


def test_post_local_folder_instagram_multi_account(farm):
    """Post Script Configuration, "Post Task with Local Folder (Instagram)": a reel from a
    folder on the box, through the "+" button, for the phone's Instagram account."""
    device, (app,) = farm.phone(instagram={}, accounts=["insta_shop"])
    farm.account("insta_shop", device, app, "instagram")
    folder = Path(farm.media("instagram/reel1.mp4")[0]).parent
    body = {
        "serials": ["device_serial_1"],
        "script_name": "post",
        "script_config": {
            "content_type": 0,
            "captions": "Amazing content! #instagram #reels",
            "post_way": "addButton",
            "placement": "reel",
            "material_source": "localFolder",
            "material_path": "C:/Videos/instagram",
            "upload_wait_time": 45
        },
        "enable_multi_account": True
    }
    sent = on_farm(body, {"device_serial_1": device.address})
    assert error_of(farm.send(sent)) == ("script_config.material_path: folder not found on "
                                         "the box: C:/Videos/instagram")
    sent = on_farm(body, {"device_serial_1": device.address,
                          "C:/Videos/instagram": str(folder)})
    task, = farm.finished(farm.created(sent, 1))
    assert task["result"]["platform"] == "instagram" and task["result"]["media"] == \
        ["reel1.mp4"]
    assert app.posts[0]["caption"] == "Amazing content! #instagram #reels"


def test_post_images_carousel(farm):
    """Post Script Configuration, "Post Images (Carousel)": five images from a folder."""
    device, (app,) = farm.phone()
    names = [f"carousel/photo{n}.jpg" for n in range(1, 6)]
    folder = Path(farm.media(*names)[0]).parent
    body = {
        "serials": ["device_serial_1"],
        "script_name": "post",
        "script_config": {
            "content_type": 1,
            "image_count": 5,
            "captions": "Check out these photos! #photocarousel",
            "material_source": "localFolder",
            "material_path": "C:/Images/carousel",
            "upload_wait_time": 45
        }
    }
    sent = on_farm(body, {"device_serial_1": device.address,
                          "C:/Images/carousel": str(folder)})
    task, = farm.finished(farm.created(sent, 1))
    assert sorted(task["result"]["media"]) == [f"photo{n}.jpg" for n in range(1, 6)]
    assert len(app.posts[0]["media"]) == 5


# ---------------------------------------------------------------------------------------
# docs/api/follow-script.md and unfollow-script.md
# ---------------------------------------------------------------------------------------

def follow_example(script, targets, access_method):
    """Follow Single / Multiple Users, via Search Method (and the unfollow page's same
    three): the pages' bodies differ only in these three values."""
    return {
        "serials": ["device_serial_1"],
        "script_name": script,
        "script_config": {
            "target_users": targets,
            "access_method": access_method
        }
    }


@pytest.mark.parametrize("script, section, targets, access", [
    ("follow", "Follow Single User", ["@username_to_follow"], "direct"),
    ("follow", "Follow Multiple Users", ["@user1", "@user2", "@user3"], "direct"),
    ("follow", "Follow Users via Search Method", ["username1", "username2"], "search"),
    ("unfollow", "Unfollow Single User", ["@username_to_unfollow"], "direct"),
    ("unfollow", "Unfollow Multiple Users", ["@user1", "@user2", "@user3"], "direct"),
    ("unfollow", "Unfollow Users via Search Method", ["username1", "username2"], "search"),
])
def test_follow_unfollow_examples(farm, script, section, targets, access):
    """Follow / Unfollow Script Configuration, the examples on one device: one task per
    target user, each run through the app by link or by search."""
    names = [t.lstrip("@") for t in targets]
    want = script == "follow"
    device, (app,) = farm.phone(tiktok={n: not want for n in names})
    body = on_farm(follow_example(script, targets, access),
                   {"device_serial_1": device.address})
    tasks = farm.finished(farm.created(body, len(targets)), timeout=90)
    assert sorted(t["result"]["user"] for t in tasks) == sorted(names)
    assert all(t["result"]["already"] is False for t in tasks)
    assert all(app.follows[n] is want for n in names)


@pytest.mark.parametrize("script", ["follow", "unfollow"])
def test_follow_unfollow_schedule_with_start_time(farm, script):
    """Follow / Unfollow Script Configuration, "Schedule Tasks with Start Time": two
    tasks waiting for the next 14:30 of the box's clock."""
    device, _ = farm.phone(tiktok={"user1": False, "user2": True})
    body = {
        "serials": ["device_serial_1"],
        "script_name": script,
        "script_config": {
            "target_users": ["@user1", "@user2"],
            "access_method": "direct"
        },
        "start_time": "14:30"
    }
    body = on_farm(body, {"device_serial_1": device.address})
    for task_id in farm.created(body, 2):
        task = farm.task(task_id)
        assert task["status"] == PENDING and task["start_time"].endswith(" 14:30:00")


def test_follow_by_username_list(farm):
    """Follow Script Configuration, "Follow Users by Username List Mode": each of two
    accounts (on one phone) follows the target, as itself (follows are per account)."""
    device, (app,) = farm.phone(tiktok={"target_user": False},
                                accounts=["my_account1", "my_account2"])
    farm.account("my_account1", device, app)
    farm.account("my_account2", device, app)
    body = {
        "usernames": ["@my_account1", "@my_account2"],
        "script_name": "follow",
        "script_config": {
            "target_users": ["@target_user"],
            "access_method": "direct"
        }
    }
    tasks = farm.finished(farm.created(body, 2), timeout=90)
    assert sorted(t["username"].lstrip("@") for t in tasks) == ["my_account1", "my_account2"]
    assert sorted(t["result"]["already"] for t in tasks) == [False, False]
    assert all(app.follow_state[a]["target_user"] for a in ("my_account1", "my_account2"))


@pytest.mark.parametrize("script, target", [("follow", "@influencer_account"),
                                            ("unfollow", "@old_account")])
def test_follow_unfollow_batch_on_multiple_devices(farm, script, target):
    """Follow / Unfollow Script Configuration, "Batch Follow (Unfollow) on Multiple
    Devices": three phones, enable_multi_account, one task per phone's account."""
    name, want = target.lstrip("@"), script == "follow"
    phones = []
    for n in range(3):
        device, (app,) = farm.phone(tiktok={name: not want}, accounts=[f"acct{n}"])
        farm.account(f"acct{n}", device, app)
        phones.append((device, app))
    body = {
        "serials": ["device_1", "device_2", "device_3"],
        "script_name": script,
        "script_config": {
            "target_users": [target],
            "access_method": "direct"
        },
        "enable_multi_account": True
    }
    sent = on_farm(body, {f"device_{n + 1}": d.address for n, (d, _) in enumerate(phones)})
    tasks = farm.finished(farm.created(sent, 3), timeout=90)
    assert {t["serial"] for t in tasks} == {d.address for d, _ in phones}
    assert all(app.follows[name] is want for _, app in phones)


# ---------------------------------------------------------------------------------------
# docs/api/account-warmup-script.md ("Account Warmup Script Configuration")
# ---------------------------------------------------------------------------------------

WARMUPS = {
    "Basic Account Warmup": {
        "task_duration": 600,
        "min_duration": 10,
        "max_duration": 30
    },
    "Warmup with Topic Search": {
        "task_duration": 900,
        "topic": "funny cats\ndog videos\npet compilation",
        "min_duration": 15,
        "max_duration": 45
    },
    "Warmup with Interactions": {
        "task_duration": 1200,
        "topic": "cooking\nrecipes\nfood",
        "min_duration": 20,
        "max_duration": 60,
        "like_probable": 30,
        "floow_probable": 10,
        "collect_probable": 5,
        "comment_probable": 15,
        "comment": "This is amazing! 🔥\nLove this content!\nSo good! 👏\nWow, incredible!",
        "insert_emoji": True,
        "comment_order": "random"
    },
}


def assert_warming_up(farm, task_id, config, app):
    """The warm-up runs with the example's values (they last 10-30 minutes: the test
    sees it start, search its topic, then stops it as the docs' stop endpoint does)."""
    task = farm.wait_status(task_id, RUNNING, 30)
    assert {k: task["script_config"][k] for k in config} == config
    topics = [t for t in config.get("topic", "").split("\n") if t]
    if topics:
        wait_until(lambda: app.query in topics, 30, "the topic searched")
    else:                                   # the app started, then the feed is watched
        device = app.device
        wait_until(lambda: any(argv[:2] == ["am", "start"] and app.package in " ".join(argv)
                               for argv in device.commands()), 30, "the app started")
    assert farm.client.stop_task(task_id)["code"] == 0
    assert farm.task(task_id)["error"] == "stopped by user"


@pytest.mark.parametrize("section", list(WARMUPS))
def test_warmup_examples_on_one_device(farm, section):
    """Account Warmup Script Configuration: "Basic Account Warmup", "Warmup with Topic
    Search", "Warmup with Interactions"."""
    device, (app,) = farm.phone()
    body = {"serials": ["device_serial_1"], "script_name": "account_warmup",
            "script_config": WARMUPS[section]}
    task_id, = farm.created(on_farm(body, {"device_serial_1": device.address}), 1)
    assert_warming_up(farm, task_id, WARMUPS[section], app)


def test_warmup_with_chatgpt_is_refused_clearly(farm):
    """Account Warmup Script Configuration, "Warmup with ChatGPT Comments": Lite calls no
    service outside the box's network (README), so generate_by_chatgpt is a 40001 that
    says to give templates in `comment`; no task is made."""
    device, _ = farm.phone()
    body = {
        "serials": ["device_serial_1"],
        "script_name": "account_warmup",
        "script_config": {
            "task_duration": 1800,
            "topic": "tech reviews\ngadgets",
            "min_duration": 30,
            "max_duration": 90,
            "like_probable": 25,
            "comment_probable": 20,
            "generate_by_chatgpt": True,
            "chatgpt_settings": {
                "api_key": "your-api-key",
                "model": "gpt-3.5-turbo",
                "prompt": "Generate a short, friendly comment about this video"
            }
        }
    }
    message = error_of(farm.send(on_farm(body, {"device_serial_1": device.address})))
    assert message.startswith("script_config.generate_by_chatgpt: Lite does not generate "
                              "comments with ChatGPT")
    assert "give comment templates in comment" in message
    assert farm.client.get_stats()["data"]["total"] == 0


def test_warmup_batch_on_multiple_devices(farm):
    """Account Warmup Script Configuration, "Batch Warmup on Multiple Devices": three
    phones, enable_multi_account, all warming up at once."""
    phones = []
    for n in range(3):
        device, (app,) = farm.phone(accounts=[f"warm{n}"])
        farm.account(f"warm{n}", device, app)
        phones.append((device, app))
    config = {"task_duration": 600, "min_duration": 15, "max_duration": 30,
              "like_probable": 20}
    body = {
        "serials": ["device_1", "device_2", "device_3"],
        "script_name": "account_warmup",
        "script_config": {
            "task_duration": 600,
            "min_duration": 15,
            "max_duration": 30,
            "like_probable": 20
        },
        "enable_multi_account": True
    }
    ids = farm.created(on_farm(body, {f"device_{n + 1}": d.address
                                      for n, (d, _) in enumerate(phones)}), 3)
    for task_id in ids:
        task = farm.wait_status(task_id, RUNNING, 60)
        assert {k: task["script_config"][k] for k in config} == config
    for task_id in ids:
        assert farm.client.stop_task(task_id)["code"] == 0


def test_warmup_schedule(farm):
    """Account Warmup Script Configuration, "Schedule Warmup Task": waits for 09:00."""
    device, _ = farm.phone()
    body = {
        "serials": ["device_serial_1"],
        "script_name": "account_warmup",
        "script_config": {
            "task_duration": 1200,
            "topic": "music\ndance\ntrending",
            "min_duration": 20,
            "max_duration": 40,
            "like_probable": 15,
            "floow_probable": 5
        },
        "start_time": "09:00"
    }
    task_id, = farm.created(on_farm(body, {"device_serial_1": device.address}), 1)
    task = farm.task(task_id)
    assert task["status"] == PENDING and task["start_time"].endswith(" 09:00:00")
    assert task["script_config"]["floow_probable"] == 5


def test_warmup_by_username_list(farm):
    """Account Warmup Script Configuration, "Warmup by Username List": two accounts of
    one phone, one after the other; the first is seen warming up as itself."""
    device, (app,) = farm.phone(accounts=["my_account1", "my_account2"])
    farm.account("my_account1", device, app)
    farm.account("my_account2", device, app)
    body = {
        "usernames": ["@my_account1", "@my_account2"],
        "script_name": "account_warmup",
        "script_config": {
            "task_duration": 600,
            "min_duration": 15,
            "max_duration": 30,
            "like_probable": 20,
            "floow_probable": 5
        }
    }
    ids = farm.created(body, 2)
    first = wait_until(lambda: [t for t in map(farm.task, ids) if t["status"] == RUNNING],
                       60, "a warm-up running")[0]
    wait_until(lambda: app.current == first["username"].lstrip("@"), 60,
               "the app switched to the task's account")
    for task_id in ids:
        assert farm.client.stop_task(task_id)["code"] == 0
    assert {farm.task(i)["error"] for i in ids} == {"stopped by user"}


# ---------------------------------------------------------------------------------------
# docs/api/comment-script.md ("Comment Script Configuration")
# ---------------------------------------------------------------------------------------

URL = "https://www.tiktok.com/@username/video/1234567890"


@pytest.mark.parametrize("section, script_config, written", [
    ("Comment on Single Post",
     {"target_post_url": URL, "comment_content": "Great content! 🔥"},
     ["Great content! 🔥"]),
    ("Comment with Multiple Comment Options",
     {"target_post_url": URL,
      "comment_content": "Amazing video!\nLove this content!\nKeep it up! 👏\nThis is so good!",
      "comment_order": "random"},
     ["Amazing video!", "Love this content!", "Keep it up! 👏", "This is so good!"]),
    ("Comment with Emoji Insertion",
     {"target_post_url": URL, "comment_content": "This is amazing", "insert_emoji": True},
     None),
])
def test_comment_on_one_post(farm, section, script_config, written):
    """Comment Script Configuration, the single-post TikTok examples."""
    device, (app,) = farm.phone()
    body = {"serials": ["device_serial_1"], "script_name": "comment",
            "script_config": script_config}
    task, = farm.finished(farm.created(on_farm(body, {"device_serial_1": device.address}),
                                       1))
    comment = task["result"]["comment"]
    if written is None:                             # insert_emoji: text + " " + an emoji
        assert comment.startswith("This is amazing ") and len(comment) > 16
    else:
        assert comment in written
    assert sum(len(v) for v in app.comments.values()) == 1


def test_comment_on_multiple_posts_sequential(farm):
    """Comment Script Configuration, "Comment on Multiple Posts": three tasks, the n-th
    post gets the n-th comment."""
    device, (app,) = farm.phone()
    body = {
        "serials": ["device_serial_1"],
        "script_name": "comment",
        "script_config": {
            "target_post_urls": [
                "https://www.tiktok.com/@user1/video/111",
                "https://www.tiktok.com/@user2/video/222",
                "https://www.tiktok.com/@user3/video/333"
            ],
            "comment_content": "Great video!\nAwesome!\nLove it!",
            "comment_order": "sequential"
        }
    }
    ids = farm.created(on_farm(body, {"device_serial_1": device.address}), 3)
    tasks = sorted(farm.finished(ids, timeout=90), key=lambda t: t["id"])
    assert [(t["result"]["url"][-3:], t["result"]["comment"]) for t in tasks] == \
        [("111", "Great video!"), ("222", "Awesome!"), ("333", "Love it!")]


def test_comment_schedule(farm):
    """Comment Script Configuration, "Schedule Comments with Start Time"."""
    device, _ = farm.phone()
    body = {
        "serials": ["device_serial_1"],
        "script_name": "comment",
        "script_config": {
            "target_post_url": "https://www.tiktok.com/@username/video/1234567890",
            "comment_content": "Scheduled comment!"
        },
        "start_time": "14:30"
    }
    task_id, = farm.created(on_farm(body, {"device_serial_1": device.address}), 1)
    task = farm.task(task_id)
    assert task["status"] == PENDING and task["start_time"].endswith(" 14:30:00")


def test_comment_by_username_list(farm):
    """Comment Script Configuration, "Comment by Username List Mode"."""
    device, (app,) = farm.phone(accounts=["my_account1", "my_account2"])
    farm.account("my_account1", device, app)
    farm.account("my_account2", device, app)
    body = {
        "usernames": ["@my_account1", "@my_account2"],
        "script_name": "comment",
        "script_config": {
            "target_post_url": "https://www.tiktok.com/@target/video/123",
            "comment_content": "Nice video!"
        }
    }
    tasks = farm.finished(farm.created(body, 2), timeout=90)
    assert [t["result"]["comment"] for t in tasks] == ["Nice video!", "Nice video!"]
    assert sum(len(v) for v in app.comments.values()) == 2


def test_comment_batch_on_multiple_devices(farm):
    """Comment Script Configuration, "Batch Comment on Multiple Devices"."""
    phones = []
    for n in range(3):
        device, (app,) = farm.phone(accounts=[f"fan{n}"])
        farm.account(f"fan{n}", device, app)
        phones.append((device, app))
    body = {
        "serials": ["device_1", "device_2", "device_3"],
        "script_name": "comment",
        "script_config": {
            "target_post_url": "https://www.tiktok.com/@viral/video/999",
            "comment_content": "Great content!\nAmazing work!\nLove this!",
            "comment_order": "random"
        },
        "enable_multi_account": True
    }
    sent = on_farm(body, {f"device_{n + 1}": d.address for n, (d, _) in enumerate(phones)})
    tasks = farm.finished(farm.created(sent, 3), timeout=90)
    assert all(t["result"]["comment"] in ("Great content!", "Amazing work!", "Love this!")
               for t in tasks)
    assert all(sum(len(v) for v in app.comments.values()) == 1 for _, app in phones)


def test_comment_instagram_link_goes_to_instagram(farm):
    """Comment Script Configuration, "Instagram Comment Example": the same body shape
    with an Instagram link and no account; the link says which app to use."""
    device, (tiktok, instagram) = farm.phone(tiktok={}, instagram={})
    body = {
        "serials": ["device_serial_1"],
        "script_name": "comment",
        "script_config": {
            "target_post_url": "https://www.instagram.com/p/ABC123/",
            "comment_content": "Beautiful photo! 📸",
            "insert_emoji": True
        }
    }
    task, = farm.finished(farm.created(on_farm(body, {"device_serial_1": device.address}),
                                       1))
    assert task["script_config"]["platform"] == "instagram"
    assert task["result"]["comment"].startswith("Beautiful photo! 📸 ")
    assert sum(len(v) for v in instagram.comments.values()) == 1
    assert not tiktok.comments


def test_comment_with_image(farm):
    """Comment Script Configuration, "TikTok Image Comment Example": as written, the
    Windows path is not on the box (40001 saying only that); with the image on the box,
    the image is pushed, picked as the gallery's first image (the page's tip: "selected
    as the first image in the gallery") from the comment bar's image button, and sent
    with the text. The pushed copy is removed afterwards."""
    device, (app,) = farm.phone()
    body = {
        "serials": ["device_serial_1"],
        "script_name": "comment",
        "script_config": {
            "target_post_url": "https://www.tiktok.com/@username/video/1234567890",
            "comment_content": "Check out this image!",
            "comment_image_path": "C:/images/my_image.jpg"
        }
    }
    reply = farm.send(on_farm(body, {"device_serial_1": device.address}))
    assert reply == {"code": 40001, "data": None, "message":
                     "script_config.comment_image_path: file not found on the box: "
                     "C:/images/my_image.jpg"}
    assert farm.client.get_stats()["data"]["total"] == 0
    image, = farm.media("my_image.jpg")
    task, = farm.finished(farm.created(on_farm(body, {"device_serial_1": device.address,
                                                     "C:/images/my_image.jpg": image}), 1))
    assert task["result"] == {"url": "https://www.tiktok.com/@username/video/1234567890",
                              "comment": "Check out this image!", "image": "my_image.jpg"}
    assert app.comments["@username/video/1234567890"] == ["Check out this image!"]
    assert app.image_comments == [("@username/video/1234567890",
                                   "/sdcard/DCIM/Camera/my_image.jpg")]
    assert "/sdcard/DCIM/Camera/my_image.jpg" not in device.fs.files
