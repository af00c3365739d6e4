#!/usr/bin/env python3
"""Benchmark: what live screens cost the box, and whether event streams starve the API.

Runs the real server (a subprocess, waitress) with --screen-fps 4 (the Pi default), a
private adb server and 10 simulated phones whose screencap returns a frame of a real
phone's size (150 KB, the size of a 1080x2400 JPEG), then measures:

- screens: the server's CPU and the bytes/s it sends while a dashboard watches the
  10-phone grid and has one phone opened (two browsers, so captures must be shared),
  against the same server idle for the same window; and the phones' captures per
  second (the budget: at most --screen-fps);
- events: GET /task/stats latency (p50, p95) with 8 event streams open, against the
  same server with none.

Usage: python bench/bench_screens.py [--phones 10] [--window 10]
Writes bench/results/screens.json and prints it.
"""
import argparse
import http.client
import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]

from bench_server import cpu_seconds, free_port, until, percentile  # noqa: E402
from phonesim import AdbServer, PhoneSim  # noqa: E402

FRAME = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 600          # ~150 KB
FPS = 4.0


class Server:
    def __init__(self, workdir, adb_port):
        import subprocess
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tikmatrix_lite.py"), "--host", "127.0.0.1",
             "--port", str(self.port), "--db", str(workdir / "screens.db"),
             "--scripts", str(ROOT / "tests" / "fixtures" / "runner_scripts"),
             "--adb-server", f"127.0.0.1:{adb_port}", "--log-level", "warning",
             "--screen-fps", str(FPS)],
            stdout=subprocess.DEVNULL, stderr=open(workdir / "screens.log", "ab"))

    def get(self, path, timeout=30):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            reply = conn.getresponse()
            return reply, reply.read()
        finally:
            conn.close()

    def answers(self):
        try:
            return self.get("/api/v1/health")[0].status == 200
        except OSError:
            return False

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=20)


class Viewer(threading.Thread):
    """One screen of one dashboard: asks, shows, waits as long as the server says."""

    def __init__(self, server, serial, view, stop):
        super().__init__(daemon=True)
        self.server, self.serial, self.view, self.stop = server, serial, view, stop
        self.bytes = self.frames = 0

    def run(self):
        path = f"/api/v1/device/{self.serial}/screenshot?format=jpeg&view={self.view}"
        while not self.stop.is_set():
            reply, body = self.server.get(path)
            self.bytes += len(body)
            self.frames += 1
            self.stop.wait(max(0.15, int(reply.getheader("X-Next-Frame-Ms", "1000")) / 1000))


def window(pid, seconds):
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


def stats_latency(server, rounds=200):
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        reply, _ = server.get("/api/v1/task/stats")
        assert reply.status == 200
        times.append(time.perf_counter() - t0)
    return percentile(times, 0.5) * 1000, percentile(times, 0.95) * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phones", type=int, default=10)
    parser.add_argument("--window", type=float, default=30, help="seconds per measure")
    args = parser.parse_args()
    workdir = ROOT / "bench" / "results"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "screens.db").unlink(missing_ok=True)

    with PhoneSim() as sim, AdbServer() as adb:
        phones = [sim.add_device(model=f"Bench {i}") for i in range(args.phones)]
        for phone in phones:
            phone.screenshot_png = lambda: FRAME
            adb.connect(phone.address)
        server = Server(workdir, adb.port)
        try:
            until(server.answers, 30, "server")
            until(lambda: sum(d["state"] == "device" for d in json.loads(server.get(
                "/api/v1/device")[1])["data"]["items"]) == len(phones), 60, "phones online")
            time.sleep(3)                                  # identify threads end
            pid = server.proc.pid
            idle_cpu = window(pid, args.window)

            # two dashboards: each shows the whole grid, one has phones[0] opened
            stop = threading.Event()
            viewers = [Viewer(server, p.address, "grid", stop) for p in phones[1:]]
            viewers += [Viewer(server, p.address, "grid", stop) for p in phones[1:]]
            viewers += [Viewer(server, phones[0].address, "focus", stop)]
            for phone in phones:
                phone.clear_log()
            for v in viewers:
                v.start()
            time.sleep(4)                                  # past the first captures
            sent0 = sum(v.bytes for v in viewers)
            caps0 = sum(len(p.commands("screencap")) for p in phones)
            focus0 = len(phones[0].commands("screencap"))
            t0 = time.monotonic()
            watch_cpu = window(pid, args.window)
            elapsed = time.monotonic() - t0
            sent = sum(v.bytes for v in viewers) - sent0
            caps = sum(len(p.commands("screencap")) for p in phones) - caps0
            focus_caps = len(phones[0].commands("screencap")) - focus0
            stop.set()
            for v in viewers:
                v.join(10)

            # events: the API's latency with 8 streams open, against none
            base_p50, base_p95 = stats_latency(server)
            streams = []
            for _ in range(8):
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
                conn.request("GET", "/api/v1/events")
                reply = conn.getresponse()
                assert reply.status == 200
                streams.append(conn)
            open_p50, open_p95 = stats_latency(server)
            for conn in streams:
                conn.close()
        finally:
            server.stop()

    result = {
        "phones": args.phones, "screen_fps_budget": FPS, "frame_bytes": len(FRAME),
        "idle_cpu_percent": round(idle_cpu * 100, 2),
        "watching_cpu_percent": round(watch_cpu * 100, 2),
        # idle is usually 0.0 %: a ratio to it would say nothing
        "cpu_ratio_watching_to_idle": round(watch_cpu / idle_cpu, 1) if idle_cpu else None,
        "sent_kib_per_s": round(sent / elapsed / 1024, 1),
        "captures_per_s": round(caps / elapsed, 2),
        "opened_phone_captures_per_s": round(focus_caps / elapsed, 2),
        "grid_phone_captures_per_s": round((caps - focus_caps) / elapsed /
                                           max(1, args.phones - 1), 3),
        "frames_delivered_per_capture": round(
            (sent / len(FRAME)) / max(caps, 1), 2),
        "api_stats_ms_no_streams": {"p50": round(base_p50, 2), "p95": round(base_p95, 2)},
        "api_stats_ms_8_streams": {"p50": round(open_p50, 2), "p95": round(open_p95, 2)},
        "api_latency_ratio_8_streams": round(open_p50 / base_p50, 2),
    }
    (workdir / "screens.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
