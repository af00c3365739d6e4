#!/usr/bin/env python3
"""Benchmark: what each script costs on a phone, in window dumps, adb round trips and time.

A `uiautomator dump` takes 1-2 s on a real phone, so dumps are the scripts' speed. This
runs every script through the real runner, a private adb server and a simulated phone
(tests/phonesim.py with the app models of tests/apps.py) whose dumps take 1.5 s
(``--dump-delay``) and whose uploads take 8 s from the publishing tap, moving with time
as on a phone (``--upload-seconds``), without pop-ups, and counts per task:

- dumps: `uiautomator dump` commands the phone received;
- round trips: adb services opened by Lite (one shell command, one push...);
- wall time: claim to end, as the store records it.

The baseline is the figures of the scripts before the closed-loop steps (BEFORE, measured
with this same harness on 2026-12-07 at commit b397647); the table shows both and their
ratio (its posts were measured with an upload that moved a third per look: three looks
whatever the waiting did). Warmup is reported per watched video.

Usage: python bench/bench_scripts.py [--dump-delay 1.5] [--upload-seconds 8]
                                     [--only follow_link,...]
Writes bench/results/scripts.json and prints a table.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from apps import InstagramApp, TikTokApp  # noqa: E402
from farm import Farm, wait_until  # noqa: E402
from phonesim import FASTINPUT_IME, AdbServer, PhoneSim  # noqa: E402

#: Figures of the scripts before issue 7 (commit b397647), TikTok 47.0.3 / Instagram 410,
#: 1.5 s dumps: (dumps, round trips, seconds). Warmup: per video.
BEFORE = {
    "tiktok": {"follow_link": (5, 17, 7.8), "follow_search": (9, 35, 14.1),
               "unfollow": (5, 17, 7.8), "post_video": (13, 52, 21.1),
               "post_images": (14, 71, 23.4), "comment": (7, 30, 11.1),
               "warmup": (2.2, 9.0, 4.6)},
    "instagram": {"follow_link": (4, 14, 6.4), "follow_search": (7, 29, 11.1),
                  "unfollow": (5, 17, 7.9), "post_video": (13, 52, 21.5),
                  "post_images": (14, 71, 24.3), "comment": (5, 24, 8.0),
                  "warmup": (1.2, 5.8, 2.9)},
}


def media(folder, name):
    path = folder / name
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + name.encode())
    return str(path)


def scenarios(folder):
    """name -> (script, config, phone kwargs). Every run is without pop-ups."""
    video, images = media(folder, "v.mp4"), [media(folder, f"i{n}.jpg") for n in range(3)]
    users = {"alice": False, "bob": True}
    return {
        "follow_link": ("follow", {"target_users": ["alice"]}, {"users": dict(users)}),
        "follow_search": ("follow", {"target_users": ["alice"], "access_method": "search"},
                          {"users": dict(users)}),
        "unfollow": ("unfollow", {"target_users": ["bob"]}, {"users": dict(users)}),
        "post_video": ("post", {"material_list": [video], "post_way": "addButton",
                                "captions": "hello #fyp"}, {}),
        "post_images": ("post", {"material_list": images, "content_type": 1,
                                 "image_count": 3, "post_way": "addButton",
                                 "captions": "three"}, {}),
        "comment": ("comment", {"target_post_url": "https://www.tiktok.com/@a/video/1",
                                "comment_content": "nice"}, {}),
        "comment_image": ("comment", {"target_post_url": "https://www.tiktok.com/@a/video/1",
                                      "comment_content": "nice",
                                      "comment_image_path": media(folder, "c.png")}, {}),
        "warmup": ("account_warmup", {"task_duration": 12, "min_duration": 1,
                                      "max_duration": 1, "like_probable": 100}, {}),
    }


class Counting:
    """Counts the adb services Lite opens for scripts (round trips) on its device
    manager: the runner's heartbeat pings and its battery refresh are left out."""

    NOT_THE_SCRIPT = ("shell:echo tmlite-ok", "shell:getprop ro.product.model")

    def __init__(self, devices):
        self.count = 0
        original = devices.open_service

        def counted(serial, service, *args, **kwargs):
            if not service.startswith(self.NOT_THE_SCRIPT):
                self.count += 1
            return original(serial, service, *args, **kwargs)
        devices.open_service = counted


def run_one(farm, sim, adb, platform, name, script, config, app_kw, args, counter):
    app_kw = dict(app_kw, upload_seconds=args.upload_seconds)
    app = TikTokApp("47.0.3", **app_kw) if platform == "tiktok" else InstagramApp(**app_kw)
    device = sim.add_device(ime="fastinput", apps=[app])
    device.enabled_imes.add(FASTINPUT_IME)
    adb.connect(device.address)
    wait_until(lambda: farm.lite.devices.is_online(device.address), 20, "online")
    wait_until(lambda: farm.lite.store.get_device(device.address)["model"], 10, "identified")
    device.slow_dumps(args.dump_delay)
    config = dict(config, platform=platform)
    if platform == "instagram" and "target_post_url" in config:
        config["target_post_url"] = "https://www.instagram.com/p/AbC/"
    device.clear_log()
    before = counter.count
    started = time.monotonic()
    task_id = farm.create([device.address], script, config)[0]
    task = farm.wait_status(task_id, (2, 3), timeout=600)
    seconds = time.monotonic() - started
    farm.wait_idle(device)
    trips = counter.count - before
    dumps = len(device.commands("uiautomator"))
    row = {"ok": task["status"] == 2, "error": task["error"], "dumps": dumps,
           "round_trips": trips, "seconds": round(seconds, 1)}
    if script == "account_warmup" and task["result"]:
        videos = max(1, task["result"]["videos"])
        row.update(videos=videos, dumps=round(dumps / videos, 1),
                   round_trips=round(trips / videos, 1), seconds=round(seconds / videos, 1))
    device.slow_dumps(0)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dump-delay", type=float, default=1.5)
    parser.add_argument("--upload-seconds", type=float, default=8.0,
                        help="how long the simulated app takes to upload a post")
    parser.add_argument("--only", default="", help="comma list of scenario names")
    parser.add_argument("--platforms", default="tiktok,instagram")
    args = parser.parse_args(argv)
    only = set(filter(None, args.only.split(",")))
    results = {}
    with tempfile.TemporaryDirectory() as tmp, AdbServer() as adb, PhoneSim() as sim:
        tmp = Path(tmp)
        farm = Farm(tmp, adb, sim, scripts=ROOT / "scripts")
        farm.start()
        farm.lite.runner.heartbeat = 3600        # no pings inside the measured window
        counter = Counting(farm.lite.devices)
        try:
            for platform in args.platforms.split(","):
                for name, (script, config, app_kw) in scenarios(tmp).items():
                    if only and name not in only or \
                            platform == "instagram" and "comment_image_path" in config:
                        continue                 # image comments are TikTok's only
                    row = run_one(farm, sim, adb, platform, name, script, config, app_kw,
                                  args, counter)
                    results.setdefault(platform, {})[name] = row
                    print_row(platform, name, row)
        finally:
            farm.close()
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "scripts.json").write_text(json.dumps({"dump_delay": args.dump_delay,
                                                  "upload_seconds": args.upload_seconds,
                                                  "after": results, "before": BEFORE},
                                                 indent=2))
    return 0 if all(r["ok"] for p in results.values() for r in p.values()) else 1


def print_row(platform, name, row):
    base = BEFORE.get(platform, {}).get(name)
    then = f"  before {base[0]} dumps, {base[1]} trips, {base[2]} s" if base else ""
    status = "ok" if row["ok"] else f"FAILED: {row['error']}"
    print(f"{platform:9} {name:14} {row['dumps']:>6} dumps {row['round_trips']:>6} trips "
          f"{row['seconds']:>6} s  {status}{then}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
