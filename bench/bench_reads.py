#!/usr/bin/env python3
"""Benchmark (issue 9 item 11): HTTP throughput of the task routes against a bare hello.

Runs, one after another and in the same run: a bare bottle "hello" app on waitress (the
baseline), the current server, and the server of an earlier commit (``--baseline-rev``),
each a subprocess on loopback with 8 waitress threads. The servers hold TASKS pending
tasks (start time tomorrow, so nothing runs) of one simulated phone. ``wrk`` (16
connections, 2 threads) drives each route for DURATION seconds, RUNS times, interleaved;
the figure is the median requests/s and its ratio to the hello's median.

It also times, in-process, the store's share of each route (list_tasks and task_to_json
of a page, stats, create_tasks of one task) for both modules: what the store section
costs per request, apart from the envelope and waitress.

Goals (issue 9 item 11): GET /task page of 20 >= 0.6x, /task/stats >= 0.9x, POST /task
>= 0.5x the hello.

Usage: python bench/bench_reads.py [--tasks 1000] [--duration 5] [--runs 3]
"""
import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from bench_server import free_port, until  # noqa: E402
from bench_wear import BASELINE_REV, Server, module_at  # noqa: E402
from phonesim import AdbServer, PhoneSim  # noqa: E402

HELLO = """
import sys, bottle, waitress
app = bottle.Bottle()
@app.get("/hello")
def hello():
    return "hello"
waitress.serve(app, host="127.0.0.1", port=int(sys.argv[1]), threads=8, _quiet=True)
"""


def wrk(url, duration, script=None):
    """Requests per second that wrk measured."""
    command = ["wrk", "-t2", "-c16", f"-d{duration}s", url]
    if script:
        command[1:1] = ["-s", script]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"{url}: {errors[1]} error answers\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])


def store_part(module, folder, tasks, samples=2000):
    """Microseconds of the store's share of each route, in-process: list_tasks and
    task_to_json of a page of 20, stats(), create_tasks of one task."""
    store = module.Store(Path(folder) / f"part-{module.__name__}.db")
    try:
        store.upsert_device("phone", state="device")
        new = module.NewTask(serial="phone", script_name="say", start_time=time.time() + 9e4,
                             script_config={"target_users": ["nasa", "natgeo"],
                                            "access_method": "direct"})
        store.create_tasks([new] * tasks)
        parts = {"list": lambda: [module.task_to_json(r)
                                  for r in store.list_tasks(page_size=20)[0]],
                 "stats": store.stats, "create": lambda: store.create_tasks([new])}
        out = {}
        for name, fn in parts.items():
            t0 = time.perf_counter()
            for _ in range(samples):
                fn()
            out[name] = round((time.perf_counter() - t0) / samples * 1e6, 1)
        return out
    finally:
        store.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline-rev", default=BASELINE_REV)
    args = parser.parse_args()
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    with PhoneSim() as sim, AdbServer() as adb, \
            tempfile.TemporaryDirectory(dir=results) as folder:
        phone = sim.add_device(model="Reads")
        adb.connect(phone.address)
        tomorrow = time.strftime("%H:%M", time.localtime(time.time() - 120))
        body = {"serials": [phone.address], "script_name": "say",
                "script_config": {"word": "x"}, "start_time": tomorrow}
        post = Path(folder) / "post.lua"
        post.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = '
                        f'"application/json"\nwrk.body = {json.dumps(json.dumps(body))}\n')
        hello_port = free_port()
        hello = subprocess.Popen([sys.executable, "-c", HELLO, str(hello_port)],
                                 stderr=subprocess.DEVNULL)
        servers = {}
        try:
            for name, module in (("current", ROOT / "tikmatrix_lite.py"),
                                 (args.baseline_rev, module_at(args.baseline_rev, folder))):
                workdir = Path(folder) / name
                workdir.mkdir()
                server = servers[name] = Server(workdir, adb.port, program=module,
                                                db_name="wear.db")
                until(server.answers, 30, "server")
                until(lambda: any(d["state"] == "device" for d in
                                  server.call("GET", "/device")["items"]), 30, "phone")
                for _ in range(args.tasks):
                    server.call("POST", "/task", body)
            until(lambda: subprocess.run(["wrk", "-t1", "-c1", "-d1s",
                                          f"http://127.0.0.1:{hello_port}/hello"],
                                         capture_output=True).returncode == 0, 30, "hello")
            rates = {key: [] for key in ["hello"] + [f"{n} {r}" for n in servers
                                                     for r in ("list", "stats", "create")]}
            for _ in range(args.runs):
                rates["hello"].append(wrk(f"http://127.0.0.1:{hello_port}/hello",
                                          args.duration))
                for name, server in servers.items():
                    base = f"http://127.0.0.1:{server.port}/api/v1"
                    rates[f"{name} list"].append(wrk(f"{base}/task?page_size=20",
                                                     args.duration))
                    rates[f"{name} stats"].append(wrk(f"{base}/task/stats", args.duration))
                    rates[f"{name} create"].append(wrk(f"{base}/task", args.duration,
                                                       str(post)))
        finally:
            hello.terminate()
            hello.wait()
            for server in servers.values():
                server.stop()
        from bench_store import load_module
        current = load_module(ROOT / "tikmatrix_lite.py", "tml_current")
        before = load_module(module_at(args.baseline_rev, folder), "tml_before")
        parts = {"current": store_part(current, folder, args.tasks),
                 args.baseline_rev: store_part(before, folder, args.tasks)}
    medians = {k: round(statistics.median(v)) for k, v in rates.items()}
    out = {"runs": args.runs, "duration_s": args.duration,
           "baseline_hello_req_s": medians["hello"], "req_s": medians,
           "ratio_to_hello": {k: round(v / medians["hello"], 2) for k, v in medians.items()
                              if k != "hello"},
           "spread_of_runs": {k: [round(x / statistics.median(v), 2) for x in v]
                              for k, v in rates.items()},
           "goals": {"list": 0.6, "stats": 0.9, "create": 0.5},
           "store_part_us_in_process": parts}
    (results / "reads.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
