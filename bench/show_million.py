#!/usr/bin/env python3
"""Print bench/results/million.json (or the file given) as a table: current | baseline."""
import json
import sys
from pathlib import Path

path = Path(sys.argv[1] if len(sys.argv) > 1 else
            Path(__file__).resolve().parent / "results" / "million.json")
data = json.loads(path.read_text())
base = next(k for k in data if k.startswith("baseline_") and isinstance(data[k], dict))
print(f"{data['tasks']} tasks, {data['db_mib']} MiB ({base}: {data['baseline_db_mib']} MiB)")
print(f"{'':40s} {'p50 ms':>7s} {'p99':>7s} {'cpu p99':>7s} | {base + ' p50':>16s} "
      f"{'p99':>7s} {'cpu p99':>7s}")
for name, now in data["current"].items():
    old = data[base][name]
    print(f"{name:40s} {now['p50_ms']:7.3f} {now['p99_ms']:7.3f} {now['cpu_p99_ms']:7.3f} | "
          f"{old['p50_ms']:16.3f} {old['p99_ms']:7.3f} {old['cpu_p99_ms']:7.3f}")
