#!/usr/bin/env python3
"""The stalls of one harness run next to the scheduler's record of the same time (LoadTests/run-sched.sh).

Reads OUT/run.json (the harness's stalls, in UTC), OUT/clock (one reading of CLOCK_MONOTONIC and of the wall
clock), OUT/sched.data (perf sched record -k CLOCK_MONOTONIC), and prints per stall: its time, length, worst
delivery, how busy the cores were in its window, and per thread (name@pid) the milliseconds it ran and the
milliseconds it was runnable but waiting for a CPU, with its longest single wait. Then a summary over the run.
"""
import collections
import datetime
import json
import os
import re
import subprocess
import sys

out = sys.argv[1]
top = int(sys.argv[2]) if len(sys.argv) > 2 else 8
mono, wall = map(float, open(os.path.join(out, "clock")).read().split())
offset = wall - mono  # wall clock = monotonic + offset

timehist = os.path.join(out, "timehist.txt")
if not os.path.exists(timehist):
    with open(timehist, "w") as f:
        subprocess.run(["perf", "sched", "timehist", "-i", os.path.join(out, "sched.data")], stdout=f, stderr=subprocess.DEVNULL, check=False)

# "time [cpu] name[tid/pid] wait sch-delay run": the task ran for `run` ms up to `time`, after being runnable and
# not running for `sch-delay` ms.
line_rx = re.compile(r"^\s*([\d.]+)\s+\[(\d+)\]\s+(.*?)\[(\d+)(?:/(\d+))?\]\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)")
events = []
cpus = set()
with open(timehist) as f:
    for line in f:
        m = line_rx.match(line)
        if m:
            t, cpu, name, tid, pid, _wait, delay, run = m.groups()
            cpus.add(cpu)
            events.append((float(t), f"{name.strip()}@{pid or tid}", float(delay), float(run)))

run = json.load(open(os.path.join(out, "run.json")))
stalls = run.get("stalls") or []
cores = max(1, len(cpus))


def window(a, b):
    ran = collections.Counter()
    waited = collections.Counter()
    longest = collections.Counter()
    for t, name, delay, length in events:
        start = t - length / 1000
        overlap = min(t, b) - max(start, a)
        if overlap > 0:
            ran[name] += overlap * 1000
        wait_overlap = min(start, b) - max(start - delay / 1000, a)
        if wait_overlap > 0:
            waited[name] += wait_overlap * 1000
            longest[name] = max(longest[name], delay)
    return ran, waited, longest


print(f"{len(stalls)} stalls reported (the harness's JSON), {len(events)} scheduler switches, {cores} CPUs")
busy_shares = []
for s in sorted(stalls, key=lambda s: s["at_s"]):
    a = datetime.datetime.fromisoformat(s["at_utc"].replace("Z", "+00:00")).timestamp() - offset
    b = a + s["duration_ms"] / 1000
    ran, waited, longest = window(a, b)
    length_ms = (b - a) * 1000
    busy = sum(ran.values()) / (length_ms * cores) * 100 if length_ms > 0 else 0
    busy_shares.append(busy)
    log = s.get("storage_log") or []
    switch = " memtable switch in window" if any("New memtable created" in line for line in log) else ""
    print(f"+{s['at_s']:.2f} s  {s['duration_ms']:.1f} ms long, worst {s['worst_ms']:.1f} ms, {s['messages']} late;"
          f" CPUs {busy:.0f}% busy{switch}")
    for name, ms in ran.most_common(top):
        print(f"    ran {ms:7.1f} ms  waited for a CPU {waited[name]:7.1f} ms (longest {longest[name]:.1f})  {name}")
if busy_shares:
    busy_shares.sort()
    print(f"CPU use in the stalls' windows: median {busy_shares[len(busy_shares) // 2]:.0f}%,"
          f" {sum(1 for x in busy_shares if x >= 85)} of {len(busy_shares)} at 85% or more")
