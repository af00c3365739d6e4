#!/usr/bin/env python3
"""Benchmark (issue 9 item 12): one task's create + claim + finish in the Store.

The figure is the time of one cycle through Lite's Store (``create_tasks`` of one task,
``claim_next``, ``finish`` with a small result), each step its own transaction, on a
real sqlite file. The baseline, in the same run, is the same cycle through huey's
SqliteHuey (``enqueue``, ``dequeue``, ``execute`` which stores the result) with the same
``synchronous=NORMAL`` and WAL. The ratio is huey's time over Lite's: >= 1 means Lite is
as fast or faster. The module of an earlier commit (``--baseline-rev``) is timed too.
The Store is timed alone, as huey is, without the server's events hub: with one, a
create also reads its phone's row for the phone's event (about 70,000 instructions).
Both wall-clock and process CPU time are given (medians of the repeats, and the best
repeat's CPU time): on a busy shared machine the wall time is mostly other processes'
turns on the cores.

Usage: python bench/bench_store.py [--cycles 3000] [--repeats 5]
"""
import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from bench_wear import BASELINE_REV, module_at  # noqa: E402


def load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def lite_cycles(tml, folder, cycles):
    """Seconds per create + claim + finish through tml.Store."""
    store = tml.Store(Path(folder) / f"lite-{tml.__name__}.db")
    try:
        store.upsert_device("bench-phone", state="device")
        task = tml.NewTask(serial="bench-phone", script_name="say",
                           script_config={"word": "hello"})
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(cycles):
            (task_id,) = store.create_tasks([task])
            row = store.claim_next("bench-phone", time.time())
            assert row["id"] == task_id
            assert store.finish(task_id, ok=True, result={"said": "hello"}) == "completed"
        return ((time.perf_counter() - t0) / cycles, (time.process_time() - c0) / cycles)
    finally:
        store.close()


def huey_cycles(folder, cycles):
    """Seconds per enqueue + dequeue + execute (result stored) through SqliteHuey."""
    from huey import SqliteHuey
    huey = SqliteHuey(filename=str(Path(folder) / "huey.db"), journal_mode="wal")
    huey.storage.conn.execute("PRAGMA synchronous=NORMAL")

    @huey.task()
    def say(word):
        return {"said": word}

    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(cycles):
        huey.enqueue(say.s("hello"))
        task = huey.dequeue()
        huey.execute(task)
    elapsed = ((time.perf_counter() - t0) / cycles, (time.process_time() - c0) / cycles)
    assert huey.result_count() >= 1
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline-rev", default=BASELINE_REV)
    args = parser.parse_args()
    current = load_module(ROOT / "tikmatrix_lite.py", "tml_current")
    with tempfile.TemporaryDirectory() as folder:
        before = load_module(module_at(args.baseline_rev, folder), "tml_before")
        times = {"lite": [], "huey": [], "lite_before": []}
        for repeat in range(args.repeats):       # interleaved: a busy moment hits all three
            with tempfile.TemporaryDirectory(dir=folder) as run:
                times["lite"].append(lite_cycles(current, run, args.cycles))
                times["huey"].append(huey_cycles(run, args.cycles))
                times["lite_before"].append(lite_cycles(before, run, args.cycles))
    rev = args.baseline_rev
    out = {"cycles": args.cycles, "repeats": args.repeats}
    for measure, index, pick in (("wall", 0, statistics.median),
                                 ("cpu", 1, statistics.median), ("cpu_best", 1, min)):
        us = {k: round(pick(t[index] for t in v) * 1e6, 1) for k, v in times.items()}
        out[measure] = {"lite_cycle_us": us["lite"], "baseline_huey_cycle_us": us["huey"],
                        "ratio_huey_over_lite": round(us["huey"] / us["lite"], 2),
                        f"lite_{rev}_cycle_us": us["lite_before"],
                        f"ratio_huey_over_lite_{rev}": round(us["huey"] / us["lite_before"],
                                                             2)}
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "store.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
