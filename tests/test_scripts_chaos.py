"""Chaos: every script 20 times on phones as unkind as real ones.

Each run is a real task (HTTP API -> scheduler -> runner -> real adb server -> simulated
phone with the app models of tests/apps.py) on a phone whose app throws pop-ups on new
screens and between a dump and the next tap (drawn over the target), crashes back to
the launcher now and then, loses the odd tap and the odd dump, and whose screen turns
off after a few dozen inputs unless kept awake; a few runs per script have slow dumps,
a few start on a phone asleep behind its keyguard. The randomness is seeded: the seed
is printed (run with -s) and in every assertion message; CHAOS_SEED=<n> replays a run
(as far as threads allow: the draws are per phone, their order follows the tasks).

A script passes when at least 19 of its 20 runs complete AND did what they claim, as
the account the phone acts as (checked on the app model), and every failed run says
what failed in words (names the script and step; no traceback, no bare exception).

All 160 tasks run at once, five phones per script, so the test takes about as long as
the slowest phone's five tasks.
"""

import collections
import os
import re
import time
from pathlib import Path

import pytest

from apps import InstagramApp, TikTokApp
from farm import Farm, wait_until
from phonesim import FASTINPUT_IME

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"

SEED = int(os.environ.get("CHAOS_SEED", "20261207"))
RUNS, PHONES = 20, 5                    # per script: 5 phones x 4 tasks
SLOW_PHONES = 1                         # of the 5: dumps take DUMP_SECONDS
DUMP_SECONDS = 0.25
NEEDED = 19
CHAOS = dict(popup_rate=0.2, popup_on_tap_rate=0.08)        # app knobs
FAULTS = dict(crash_rate=0.01, dump_failure_rate=0.03, tap_drop_rate=0.02,  # phone knobs
              sleep_after_inputs=40)    # the screen times out unless kept awake
ASLEEP_PHONES = (1,)                    # these start with the screen off and locked
TT_ASIA = "com.ss.android.ugc.trill"
KINDS = {
    "tiktok47": lambda **kw: TikTokApp("47.0.3", **kw),
    "tiktok43": lambda **kw: TikTokApp("43.1.4", package=TT_ASIA, **kw),
    "instagram": lambda **kw: InstagramApp(**kw),
}
PLATFORM = {"tiktok47": "tiktok", "tiktok43": "tiktok", "instagram": "instagram"}
USERS = {f"user_{n}": False for n in range(RUNS)}
FOLLOWED = {f"user_{n}": True for n in range(RUNS)}


# ---------------------------------------------------------------------------------------
# The runs: what each script is asked, and how to tell it really happened
# ---------------------------------------------------------------------------------------

def _media(tmp_path, name):
    path = tmp_path / "media" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + name.encode())
    return str(path)


def _posted(app, n, task):
    return any(p["caption"] == f"chaos {n}" and p["account"] == app.current
               for p in app.posts)


def _posted_with_sound(app, n, task):
    """Posted as the account, with the sound found and both volumes set."""
    return any(p["caption"] == f"chaos {n}" and p["account"] == app.current and
               p["sound"] == "Trending beat - sim_dj" and
               p["volumes"] == {"original": 50, "added": 150} for p in app.posts)


def _followed(want):
    def check(app, n, task):
        account = app.current
        return app.follow_state.get(account, {}).get(f"user_{n}") is want
    return check


def _commented(app, n, task):
    return any(a["action"] == "comment" and a["account"] == app.current
               for a in app.actions) and any(f"chaos comment {n}" in c
                                             for cs in app.comments.values() for c in cs)


def _commented_with_image(app, n, task):
    """The comment sent, as the account, on the run's post with its image once, and
    the pushed image gone from the phone."""
    pushed = f"/sdcard/DCIM/Camera/c{n}.png"
    return _commented(app, n, task) and pushed not in app.device.fs.files and \
        [i for post, i in app.image_comments if post == f"@a/video/{n}"] == [pushed]


def _watched(app, n, task):
    return (task["result"] or {}).get("videos", 0) >= 1


#: script label -> (script, kinds it runs on, config for run n, check, app keywords)
PLANS = {
    "post video": ("post", ["tiktok47", "tiktok43", "instagram"], lambda n, kind, tmp: {
        "material_list": [_media(tmp, f"v{n}.mp4")], "captions": f"chaos {n}",
        "post_way": "addButton", "platform": PLATFORM[kind], "upload_wait_time": 20},
        _posted, {}),
    "post images": ("post", ["tiktok47"], lambda n, kind, tmp: {
        "material_list": [_media(tmp, f"i{n}a.jpg"), _media(tmp, f"i{n}b.jpg")],
        "content_type": 1, "image_count": 2, "captions": f"chaos {n}",
        "post_way": "addButton", "platform": "tiktok", "upload_wait_time": 20},
        _posted, {}),
    "post with sound": ("post", ["tiktok47"], lambda n, kind, tmp: {
        "material_list": [_media(tmp, f"s{n}.mp4")], "captions": f"chaos {n}",
        "post_way": "share", "add_sound": "custom", "custom_sound_keyword": "beat",
        "origin_sound_volume": 25, "add_sound_volume": 75, "platform": "tiktok",
        "upload_wait_time": 20}, _posted_with_sound, {}),
    "follow direct": ("follow", ["tiktok47", "tiktok43", "instagram"], lambda n, kind, tmp: {
        "target_users": [f"user_{n}"], "access_method": "direct",
        "platform": PLATFORM[kind]}, _followed(True), {"users": USERS}),
    "follow search": ("follow", ["tiktok47", "tiktok43", "instagram"], lambda n, kind, tmp: {
        "target_users": [f"user_{n}"], "access_method": "search",
        "platform": PLATFORM[kind]}, _followed(True), {"users": USERS}),
    "unfollow": ("unfollow", ["tiktok47", "tiktok43", "instagram"], lambda n, kind, tmp: {
        "target_users": [f"user_{n}"], "access_method": "direct",
        "platform": PLATFORM[kind]}, _followed(False), {"users": FOLLOWED}),
    "comment": ("comment", ["tiktok47", "tiktok43", "instagram"], lambda n, kind, tmp: {
        "target_post_urls": [f"https://www.tiktok.com/@a/video/{n}" if kind != "instagram"
                             else f"https://www.instagram.com/p/Chaos{n}/"],
        "comment_content": f"chaos comment {n}", "insert_emoji": False,
        "platform": PLATFORM[kind]}, _commented, {}),
    "comment with image": ("comment", ["tiktok47", "tiktok43"], lambda n, kind, tmp: {
        "target_post_urls": [f"https://www.tiktok.com/@a/video/{n}"],
        "comment_content": f"chaos comment {n}", "comment_image_path": _media(tmp, f"c{n}.png"),
        "platform": "tiktok"}, _commented_with_image, {}),
    "account_warmup short": ("account_warmup", ["tiktok47", "tiktok43", "instagram"],
                             lambda n, kind, tmp: {
        "task_duration": 2, "min_duration": 1, "max_duration": 1, "like_probable": 50,
        "collect_probable": 30, "platform": PLATFORM[kind]}, _watched, {}),
}

#: a failure is clear when it starts with the script's name (then the phone helpers
#: name the step: "post: open Upload: element not found ...") and holds no traceback
#: and no bare Python exception name ("uiautomator dump failed: ..." names no step)
UNCLEAR = re.compile(r"Traceback|\b[A-Z]\w*(Error|Exception)\b")


def clear(script, error):
    return error.startswith(f"{script}: ") and not UNCLEAR.search(error)


class ChaosRun:
    """All the runs of all scripts at once on one farm; results per script label."""

    def __init__(self, farm, tmp_path):
        self.farm, self.tmp = farm, tmp_path
        self.runs = collections.defaultdict(list)     # label -> [(n, app, task_id)]

    def phone(self, label, index, kind, app_kw):
        seed = SEED + 1000 * list(PLANS).index(label) + index
        app = KINDS[kind](seed=seed, **CHAOS, **app_kw)
        device = self.farm.sim.add_device(ime="fastinput", apps=[app])
        device.enabled_imes.add(FASTINPUT_IME)
        device.seed(seed)
        for knob, value in FAULTS.items():
            setattr(device, knob, value)
        if index < SLOW_PHONES:
            device.dump_seconds = DUMP_SECONDS
        if index in ASLEEP_PHONES:
            device.screen_off()
        self.farm.adb.connect(device.address)
        wait_until(lambda: self.farm.lite.devices.is_online(device.address), 20,
                   "device online")
        return device, app

    def submit_all(self):
        for label, (script, kinds, config, _check, app_kw) in PLANS.items():
            for index in range(PHONES):
                kind = kinds[index % len(kinds)]
                device, app = self.phone(label, index, kind, app_kw)
                for n in range(index, RUNS, PHONES):
                    reply = self.farm.http.post_json("/api/v1/task", {
                        "serials": [device.address], "script_name": script,
                        "script_config": config(n, kind, self.tmp),
                        "auto_retry": False}).json
                    assert reply["code"] == 0, reply
                    self.runs[label].append((n, kind, app, reply["data"]["task_ids"][0]))

    def wait_all(self, timeout):
        """Until every task has ended (read from the store twice a second: 140 tasks
        through HTTP a hundred times a second would slow the phones down)."""
        pending = {run[3] for runs in self.runs.values() for run in runs}
        deadline = time.monotonic() + timeout
        while pending:
            pending = {i for i in pending
                       if self.farm.lite.store.get_task(i)["status"] not in (2, 3)}
            assert time.monotonic() < deadline, f"{len(pending)} chaos tasks still running"
            time.sleep(0.5)

    def outcome(self, label):
        """(completed count, [(run description, error or None when it completed
        without doing it)])."""
        check = PLANS[label][3]
        done, failures = 0, []
        for n, kind, app, task_id in self.runs[label]:
            task = self.farm.task(task_id)
            if task["status"] == 2 and check(app, n, task):
                done += 1
            elif task["status"] == 2:
                failures.append((f"run {n} ({kind}): completed but the app shows no effect "
                                 f"as @{app.current} (result {task['result']})", None))
            else:
                failures.append((f"run {n} ({kind}): {task['error']}", task["error"]))
        return done, failures


@pytest.fixture(scope="module")
def chaos(tmp_path_factory, adb, sim):
    tmp = tmp_path_factory.mktemp("chaos")
    farm = Farm(tmp, adb, sim, scripts=SCRIPTS)
    farm.start()
    print(f"\nchaos seed: {SEED} (CHAOS_SEED={SEED} replays it)")
    run = ChaosRun(farm, tmp)
    try:
        run.submit_all()
        run.wait_all(timeout=600)
        yield run
    finally:
        farm.close()


@pytest.mark.parametrize("label", list(PLANS))
def test_script_survives_chaos(chaos, label):
    done, failures = chaos.outcome(label)
    report = f"{label}: {done}/{RUNS} completed (seed {SEED})" + "".join(
        f"\n  {line}" for line, _ in failures)
    print("\n" + report)
    unclear = [line for line, error in failures
               if error is not None and not clear(PLANS[label][0], error)]
    assert done >= NEEDED, report
    assert not unclear, "failures that do not name the step:\n" + "\n".join(unclear)
