#!/usr/bin/env python3
"""Benchmark: how fast a due task starts, and what an idle server costs.

Runs the real server (a subprocess, waitress), a private adb server and 20 simulated
phones (tests/phonesim.py), then measures:

- due-to-started latency: a task created for a free phone, from the POST that creates
  it to the API showing it started, p50 and p99 over many tasks; the baseline is one
  `adb shell echo` round trip to a simulated phone, measured in the same run;
- idle CPU: the server's CPU time over an idle window with 20 phones connected and no
  task due; the baseline is the same window of a bare Python process;
- RSS: the server's resident memory, against a Python process that imported the same
  libraries (bottle, waitress, adbutils).

Usage: python bench/bench_server.py [--phones 20] [--rounds 10] [--idle 10]
Writes bench/results/server.json and prints a table.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from phonesim import AdbServer, PhoneSim  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS     # utime + stime


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


class Server:
    """The real server as a subprocess on a free port: this checkout's module, or
    ``program`` (another build, for a before/after in the same run)."""

    def __init__(self, workdir, adb_port, program=None, db_name="bench.db"):
        workdir = Path(workdir)
        self.port = free_port()
        self.db = workdir / db_name
        self.proc = subprocess.Popen(
            [sys.executable, str(program or ROOT / "tikmatrix_lite.py"), "--host", "127.0.0.1",
             "--port", str(self.port), "--db", str(self.db),
             "--scripts", str(ROOT / "tests" / "fixtures" / "runner_scripts"),
             "--adb-server", f"127.0.0.1:{adb_port}", "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=open(workdir / "server.log", "ab"))

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/v1{path}",
                                         data=data, method=method)
        with urllib.request.urlopen(request, timeout=30) as reply:
            return json.loads(reply.read())["data"]

    def answers(self):
        try:
            self.call("GET", "/health")
            return True
        except OSError:
            return False

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=20)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phones", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10, help="tasks per phone")
    parser.add_argument("--idle", type=float, default=10, help="idle window in seconds")
    args = parser.parse_args()
    workdir = ROOT / "bench" / "results"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "bench.db").unlink(missing_ok=True)

    with PhoneSim() as sim, AdbServer() as adb:
        phones = [sim.add_device(model=f"Bench {i}") for i in range(args.phones)]
        for phone in phones:
            adb.connect(phone.address)
        server = Server(workdir, adb.port)
        try:
            until(server.answers, 30, "server")
            until(lambda: sum(d["state"] == "device" for d in
                              server.call("GET", "/device")["items"]) == len(phones),
                  60, "phones online")

            # baseline: one adb shell round trip to a simulated phone
            device = adb.client().device(phones[0].address)
            trips = []
            for _ in range(50):
                t0 = time.perf_counter()
                device.shell("echo x")
                trips.append(time.perf_counter() - t0)
            shell_trip = statistics.median(trips)

            # latency: tasks created one at a time per phone, from the POST to the
            # moment the API shows the task started (an upper bound: it includes the
            # client's polling, every 20 ms)
            client_side = []
            for round_no in range(args.rounds):
                for phone in phones:
                    t0 = time.perf_counter()
                    task_id = server.call("POST", "/task", {
                        "serials": [phone.address], "script_name": "say",
                        "script_config": {"word": f"r{round_no}"}})["task_ids"][0]
                    until(lambda: server.call("GET", f"/task/{task_id}")["started_at"], 10,
                          "task start")
                    client_side.append(time.perf_counter() - t0)
            until(lambda: server.call("GET", "/task/stats")["completed"]
                  == args.rounds * len(phones), 60, "all tasks done")

            # idle: 20 phones connected, nothing due
            time.sleep(2)                       # let the last task's threads end
            pid = server.proc.pid
            c0, t0 = cpu_seconds(pid), time.monotonic()
            time.sleep(args.idle)
            idle_cpu = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
            server_rss = rss_kib(pid)
        finally:
            server.stop()

    # baselines for idle CPU and memory: a Python process with the same imports
    bare = subprocess.Popen([sys.executable, "-c", "import bottle, waitress, adbutils, "
                             "sqlite3, sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    time.sleep(1.5)
    c0, t0 = cpu_seconds(bare.pid), time.monotonic()
    time.sleep(args.idle)
    bare_cpu = (cpu_seconds(bare.pid) - c0) / (time.monotonic() - t0)
    bare_rss = rss_kib(bare.pid)
    bare.stdin.close()
    bare.wait()

    client_p50, client_p99 = percentile(client_side, 0.5), percentile(client_side, 0.99)
    result = {
        "phones": args.phones, "tasks": len(client_side),
        "baseline_adb_shell_round_trip_ms": round(shell_trip * 1000, 2),
        "create_to_started_seen_by_client_ms": {"p50": round(client_p50 * 1000, 1),
                                                "p99": round(client_p99 * 1000, 1)},
        "create_to_started_ratio_to_shell_trip": {
            "p50": round(client_p50 / shell_trip, 1), "p99": round(client_p99 / shell_trip, 1)},
        "idle_cpu_percent": round(idle_cpu * 100, 3),
        "baseline_idle_cpu_percent": round(bare_cpu * 100, 3),
        "rss_mib": round(server_rss / 1024, 1), "baseline_rss_mib": round(bare_rss / 1024, 1),
        "rss_ratio_to_baseline": round(server_rss / bare_rss, 2),
    }
    (workdir / "server.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
