#!/usr/bin/env python3
"""Benchmark: HTTP requests per second of the API against a bare bottle hello on waitress.

Runs the real server (a subprocess, waitress, a database holding 1,000 pending tasks on
one known phone, no adb) and, in the same run, a bare bottle app answering "hello" on
waitress with the same number of threads. ``wrk`` (Debian's package) loads each with 16
connections for a few seconds, in turns, three rounds:

- ``GET /api/v1/task/stats``
- ``GET /api/v1/task?page=1&page_size=20`` (asked again and again with nothing written
  in between: the server answers with the page it kept)
- ``GET /api/v1/task`` at pages drawn at random from 200 (page 1-40, size 20-24): more
  than the server keeps, so most are read from the database ("list-new")
- ``POST /api/v1/task`` (one task each)
- the baseline: ``GET /`` of the hello app, measured in every round.

Prints requests/s per round, the median of the rounds with their spread (min and max as
a percentage of the median), each figure as a ratio to the hello of its round, and the
server's CPU time per request (from /proc; a spinning main loop shows there, and it is
less sensitive than requests/s to other load on the machine).
Nothing is pinned: the figures must hold with the scheduler moving threads freely.

Usage: python bench/bench_http.py [--seconds 5] [--rounds 3] [--connections 16]
                                  [--program OTHER/tikmatrix_lite.py]
(``--program`` measures another build, e.g. the previous commit's, for a before/after.)
Writes bench/results/http.json.
"""
import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import tikmatrix_lite as tml  # noqa: E402

SERIAL = "bench-phone"
HELLO_APP = textwrap.dedent("""
    import logging, sys, bottle, waitress
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    app = bottle.Bottle()
    @app.route("/")
    def hello():
        return "hello"
    waitress.serve(app, host="127.0.0.1", port=int(sys.argv[1]), threads=8,
                   _quiet=True)
""")
PAGES_LUA = textwrap.dedent("""
    math.randomseed(os.time())
    request = function()
        return wrk.format("GET", string.format("/api/v1/task?page=%d&page_size=%d",
                                               math.random(1, 40), math.random(20, 24)))
    end
""")
POST_LUA = textwrap.dedent("""
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
    wrk.body = '{"serials": ["%s"], "script_name": "echo", "script_config": {"text": "hi"}}'
""" % SERIAL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_answering(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} does not answer")
            time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, seconds: int, connections: int, script: str, pid: int):
    """(requests/s, server CPU ms per request) of one wrk run."""
    args = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script:
        args += ["-s", script]
    cpu = cpu_seconds(pid)
    out = subprocess.run(args + [url], capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pid) - cpu
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"{url}: {errors[1]} error answers\n{out}")
    requests = int(re.search(r"(\d+) requests in", out)[1])
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]), 1000 * cpu / requests


def prepare_database(folder: Path) -> Path:
    db = folder / "bench.db"
    store = tml.Store(db)
    store.upsert_device(SERIAL, state="device")
    store.create_tasks([tml.NewTask(SERIAL, "echo", {"text": f"t{i}"}) for i in range(1000)])
    store.close()
    return db


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--program", type=Path, default=ROOT / "tikmatrix_lite.py")
    options = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("needs wrk: apt-get install -y wrk")
    folder = Path(tempfile.mkdtemp(prefix="bench-http-"))
    lite_port, hello_port = free_port(), free_port()
    post_lua = folder / "post.lua"
    post_lua.write_text(POST_LUA)
    pages_lua = folder / "pages.lua"
    pages_lua.write_text(PAGES_LUA)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TMLITE_")}
    servers = [
        subprocess.Popen([sys.executable, str(options.program), "--host",
                          "127.0.0.1", "--port", str(lite_port), "--db",
                          str(prepare_database(folder)), "--scripts",
                          str(ROOT / "tests" / "fixtures" / "scripts"),
                          # a loopback address Lite does not start adb on: no adb at all
                          "--adb-server", "127.0.0.2:1", "--log-level", "error"],
                         env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, "-c", HELLO_APP, str(hello_port)], env=env,
                         stdin=subprocess.DEVNULL),
    ]
    base = f"http://127.0.0.1:{lite_port}/api/v1"
    targets = {
        "hello": (f"http://127.0.0.1:{hello_port}/", None),
        "stats": (f"{base}/task/stats", None),
        "list": (f"{base}/task?page=1&page_size=20", None),
        "list-new": (f"{base}/task", str(pages_lua)),
        "create": (f"{base}/task", str(post_lua)),
    }
    try:
        wait_answering(targets["hello"][0])
        wait_answering(targets["stats"][0])
        rounds, cpu_per_request = [], []
        for number in range(options.rounds):
            measured = {name: wrk(url, options.seconds, options.connections, script,
                                  servers[name == "hello"].pid)
                        for name, (url, script) in targets.items()}
            rounds.append({name: m[0] for name, m in measured.items()})
            cpu_per_request.append({name: m[1] for name, m in measured.items()})
            print(f"round {number + 1}: " + "  ".join(
                f"{n} {rate:,.0f}/s ({ms:.2f} CPU ms/req)" for n, (rate, ms) in measured.items()))
    finally:
        for server in servers:
            server.terminate()
            server.wait(20)
        shutil.rmtree(folder, ignore_errors=True)
    report(rounds, cpu_per_request, options)


def report(rounds, cpu_per_request, options) -> None:
    summary = {}
    print(f"\n{'measure':8} {'median req/s':>13} {'spread':>16} {'ratio to hello':>16}"
          f" {'CPU ms/req':>11}")
    for name in rounds[0]:
        values = [r[name] for r in rounds]
        median = statistics.median(values)
        ratios = [r[name] / r["hello"] for r in rounds]
        summary[name] = {"runs": values, "median": median,
                         "spread_pct": [round(100 * (min(values) / median - 1), 1),
                                        round(100 * (max(values) / median - 1), 1)],
                         "ratio_to_hello": round(statistics.median(ratios), 3),
                         "ratios": [round(r, 3) for r in ratios],
                         "cpu_ms_per_request": round(statistics.median(
                             c[name] for c in cpu_per_request), 3)}
        spread = "{:+.0f}% / {:+.0f}%".format(*summary[name]["spread_pct"])
        print(f"{name:8} {median:13,.0f} {spread:>16} {summary[name]['ratio_to_hello']:16.2f}"
              f" {summary[name]['cpu_ms_per_request']:11.2f}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "http.json").write_text(json.dumps(
        {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(),
         "program": str(options.program),
         "seconds": options.seconds, "connections": options.connections,
         "figures": summary}, indent=2))


if __name__ == "__main__":
    main()
