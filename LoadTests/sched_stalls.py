#!/usr/bin/env python3
"""The stalls of one harness run next to the scheduler's record of the same time (LoadTests/run-sched.sh).

Reads OUT/run.json (the harness's stalls, in UTC), OUT/clock (one reading of CLOCK_MONOTONIC and of the wall
clock), OUT/sched.data (perf sched record -k CLOCK_MONOTONIC), and prints per stall: its time, length, worst
delivery, how busy the cores were in its window, and per thread (name@pid) the milliseconds it ran and the
milliseconds it was runnable but waiting for a CPU, with its longest single wait. Then a summary over the run.
"""
import bisect
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
line_rx = re.compile(r"^\s*([\d.]+)\s+\[(\d+)\]\s+(<idle>|.*?\[(\d+)(?:/(\d+))?\])\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)")
events = []
cpus = set()
with open(timehist) as f:
    for line in f:
        m = line_rx.match(line)
        if m:
            t, cpu, task, tid, pid, _wait, delay, run = m.groups()
            cpus.add(cpu)
            name = "<idle>" if task == "<idle>" else f"{task[:task.rindex('[')].strip()}@{pid or tid}"
            events.append((float(t), name, float(delay), float(run), cpu))

events.sort(key=lambda e: e[0])
event_times = [e[0] for e in events]
run = json.load(open(os.path.join(out, "run.json")))

# Per CPU, the intervals it sat in the idle task, and per CPU the intervals a task was runnable there but not running:
# where the two overlap, a woken thread was queued on a CPU that stayed idle (halted) instead of running it. On a
# virtual machine that is the hypervisor running the halted vCPU late; a thread of ours cannot cause or shorten it.
idle_spans = collections.defaultdict(list)
wait_spans = collections.defaultdict(list)
for t, name, delay, length, cpu in events:
    start = t - length / 1000
    if name == "<idle>":
        idle_spans[cpu].append((start, t))
    elif delay > 0:
        wait_spans[cpu].append((start - delay / 1000, start))
late_spans = []  # (from, to): a CPU idle while a thread waited for it
for cpu, idles in idle_spans.items():
    idles.sort()
    idle_starts = [x for x, _ in idles]
    for w0, w1 in wait_spans[cpu]:
        i = max(0, bisect.bisect_right(idle_starts, w0) - 1)
        while i < len(idles) and idles[i][0] < w1:
            x, y = idles[i]
            if min(w1, y) > max(w0, x):
                late_spans.append((max(w0, x), min(w1, y)))
            i += 1
late_spans.sort()
late_starts = [x for x, _ in late_spans]
longest_late = max((y - x for x, y in late_spans), default=0)


def late_wake_ms(a, b):
    """The longest time in [a, b] a CPU stayed idle while a thread waited to run on it."""
    worst = 0.0
    i = max(0, bisect.bisect_right(late_starts, a - longest_late) - 1)
    while i < len(late_spans) and late_spans[i][0] < b:
        x, y = late_spans[i]
        worst = max(worst, (min(y, b) - max(x, a)) * 1000)
        i += 1
    return worst


stalls = run.get("stalls") or []
cores = max(1, len(cpus))


def window(a, b):
    ran = collections.Counter()
    waited = collections.Counter()
    longest = collections.Counter()
    # Events are in time order; one ending more than 2 s after the window and starting before it is not counted.
    for i in range(bisect.bisect_left(event_times, a), bisect.bisect_right(event_times, b + 2)):
        t, name, delay, length, _ = events[i]
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
causes = {}  # second of the run -> (stall length, cause) of its longest stall
for s in sorted(stalls, key=lambda s: s["at_s"]):
    a = datetime.datetime.fromisoformat(s["at_utc"].replace("Z", "+00:00")).timestamp() - offset
    b = a + s["duration_ms"] / 1000
    ran, waited, longest = window(a, b)
    length_ms = (b - a) * 1000
    ran.pop("<idle>", None)
    busy = sum(ran.values()) / (length_ms * cores) * 100 if length_ms > 0 else 0
    busy_shares.append(busy)
    log = s.get("storage_log") or []
    switch = " memtable switch in window" if any("New memtable created" in line for line in log) else ""
    # The cause named per stall, first match wins: RocksDB's own threads (a flush or compaction) ran a tenth of the
    # window or more, or the window held a memtable switch; with the cores not saturated, the slowest store commit of
    # the stall's second took 25 ms or more and at least half the stall's worst delivery (the broker's metrics, a
    # histogram bucket: with durability sync a commit waits for the WAL's fsync, i.e. the disk); a CPU stayed idle
    # 2 ms or more, and at least 30 % of the worst delivery, while a thread was queued on it (see late_wake_ms); both
    # cores were busy (85 % or more: CPU saturation, the load itself and whatever else ran); else "cores idle" (a
    # wait of ours: a lock, the GC, or several of the above too short to name alone).
    rocks = sum(ms for name, ms in ran.items() if name.startswith("rocksdb:"))
    late = late_wake_ms(a, b)
    commit = (s.get("broker") or {}).get("slowest_commit_ms_at_most") or 0
    if switch or rocks >= 0.1 * length_ms:
        cause = "flush or memtable switch"
    elif busy < 85 and commit >= 25 and commit >= s["worst_ms"] / 2:
        cause = "slow commit"
    elif late >= 2 and late >= 0.3 * s["worst_ms"]:
        cause = "idle vCPU woke late"
    elif busy >= 85:
        cause = "cores saturated"
    else:
        cause = "cores idle"
    second = int(s["at_s"])
    if causes.get(second, (0, ""))[0] < s["duration_ms"]:
        causes[second] = (s["duration_ms"], cause)
    print(f"+{s['at_s']:.2f} s  {s['duration_ms']:.1f} ms long, worst {s['worst_ms']:.1f} ms, {s['messages']} late;"
          f" CPUs {busy:.0f}% busy{switch}" + (f"; a CPU stayed idle {late:.1f} ms with a thread waiting for it" if late >= 1 else "")
          + (f"; slowest commit of its second ≤ {commit} ms" if commit >= 25 else ""))
    for name, ms in ran.most_common(top):
        print(f"    ran {ms:7.1f} ms  waited for a CPU {waited[name]:7.1f} ms (longest {longest[name]:.1f})  {name}")
if busy_shares:
    busy_shares.sort()
    print(f"CPU use in the stalls' windows: median {busy_shares[len(busy_shares) // 2]:.0f}%,"
          f" {sum(1 for x in busy_shares if x >= 85)} of {len(busy_shares)} at 85% or more")
if causes:
    print("Per second with a stall, the cause of its longest (flush or memtable switch > slow commit > idle vCPU woke"
          " late > cores saturated > cores idle):")
    for cause in ("flush or memtable switch", "slow commit", "idle vCPU woke late", "cores saturated", "cores idle"):
        seconds = sorted(sec for sec, (_, c) in causes.items() if c == cause)
        print(f"  {cause}: {len(seconds)}" + (f" (+{', +'.join(str(x) for x in seconds)} s)" if seconds else ""))
