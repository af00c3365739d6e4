#!/usr/bin/env python3
"""Benchmark (issue 9 item 8): bytes written to the disk per task lifecycle.

Runs the real server (a subprocess, waitress), a private adb server and simulated phones,
creates TASKS tasks (one POST each) of the `say` script (a progress step, log lines, a
shell command), waits until all have completed, and reads the server's
``/proc/PID/io`` ``write_bytes`` before and after: what the kernel was asked to write to
the disk on the server's behalf (the WAL, checkpoints into the database). It also prints
how much the database and WAL files grew, and the WAL's size at the end.

The baseline is the same run against the module of an earlier commit (``--baseline-rev``,
default the commit before issue 9's store work), with a fresh database each.

Usage: python bench/bench_wear.py [--tasks 200] [--phones 20] [--baseline-rev REV]
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from bench_server import Server, until  # noqa: E402
from phonesim import AdbServer, PhoneSim  # noqa: E402

BASELINE_REV = "b397647"


def module_at(rev, folder):
    """The server module as of git revision REV, written into FOLDER."""
    path = Path(folder) / f"tikmatrix_lite_{rev}.py"
    path.write_bytes(subprocess.run(["git", "-C", str(ROOT), "show",
                                     f"{rev}:tikmatrix_lite.py"], check=True,
                                    capture_output=True).stdout)
    return path


def io_counters(pid):
    pairs = (line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return {k: int(v) for k, v in pairs}


def files_size(db):
    return sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists())


def measure(module, adb, phones, tasks):
    """Run TASKS tasks through a fresh server of MODULE; bytes written per task."""
    with tempfile.TemporaryDirectory(dir=ROOT / "bench" / "results") as workdir:
        server = Server(workdir, adb.port, program=module, db_name="wear.db")
        try:
            until(server.answers, 30, "server")
            until(lambda: sum(d["state"] == "device" for d in
                              server.call("GET", "/device")["items"]) == len(phones),
                  60, "phones online")
            time.sleep(2)                 # the phones' first refreshes are not the tasks'
            pid = server.proc.pid
            io0, size0 = io_counters(pid), files_size(server.db)
            for i in range(tasks):
                server.call("POST", "/task", {
                    "serials": [phones[i % len(phones)].address], "script_name": "say",
                    "script_config": {"word": f"w{i}"}})
            until(lambda: server.call("GET", "/task/stats")["completed"] == tasks,
                  120, "all tasks completed")
            time.sleep(1)                 # the last device refreshes after each task
            io1, size1 = io_counters(pid), files_size(server.db)
            wal = Path(f"{server.db}-wal")
            wal_size = wal.stat().st_size if wal.exists() else 0
        finally:
            server.stop()
    return {"write_bytes_per_task_kib": round((io1["write_bytes"] - io0["write_bytes"])
                                              / tasks / 1024, 1),
            "files_growth_per_task_kib": round((size1 - size0) / tasks / 1024, 2),
            "wal_bytes_at_end": wal_size}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--phones", type=int, default=20)
    parser.add_argument("--baseline-rev", default=BASELINE_REV)
    args = parser.parse_args()
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    with PhoneSim() as sim, AdbServer() as adb, tempfile.TemporaryDirectory() as folder:
        phones = [sim.add_device(model=f"Wear {i}") for i in range(args.phones)]
        for phone in phones:
            adb.connect(phone.address)
        baseline = measure(module_at(args.baseline_rev, folder), adb, phones, args.tasks)
        current = measure(ROOT / "tikmatrix_lite.py", adb, phones, args.tasks)
    out = {"tasks": args.tasks, "phones": args.phones, "goal_kib_per_task": 32,
           "current": current, f"baseline_{args.baseline_rev}": baseline,
           "ratio_to_baseline": round(current["write_bytes_per_task_kib"]
                                      / max(0.1, baseline["write_bytes_per_task_kib"]), 2)}
    (results / "wear.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
