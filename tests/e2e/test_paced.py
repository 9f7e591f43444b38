"""A paced run of the sharded scenario, the way the course runs it: six nodes with
SHARD_COUNT=2 started seconds apart, then writes at about one a second (each PUT carrying
the causal-metadata of the previous answer), round robin over the six nodes, with idle gaps
of a few seconds between some of them, for a few minutes, while CPU hogs load the machine
in some phases and not in others. Every write must answer 201 (new key) or 200 (update);
at the end every key reads back, with the last metadata, with its last value, through a
node of its shard and through a node of the other shard.

Environment:
  KVS_E2E_PACED_SEED     seed of the pacing, keys and idle gaps [random; printed]
  KVS_E2E_PACED_SECONDS  length of the write phase [140]
"""

import atexit
import os
import random
import subprocess
import sys
import time
import unittest

from kvs_e2e import StoreTestCase, Timer, build_image, log

SECONDS = float(os.environ.get("KVS_E2E_PACED_SECONDS", "140"))
SEED = int(os.environ.get("KVS_E2E_PACED_SEED") or random.SystemRandom().randrange(2**32))
CORES = os.cpu_count() or 1
# (hogs per core, share of the run): idle, loaded, idle, heavily loaded, idle.
PHASES = ((0, 0.20), (2, 0.25), (0, 0.15), (8, 0.25), (0, 0.15))
PACE = 1.0             # seconds between two writes, in general
IDLE_CHANCE = 0.1      # after a write, the chance of an idle gap instead
IDLE_GAP = (2.0, 6.0)  # its length, uniform
REWRITE_CHANCE = 0.3   # the chance that a write updates a key written before

# A busy loop that ends by itself when its parent (this test) is gone or after a deadline,
# so that not even a SIGKILL of the test leaves it spinning.
HOG = """
import os, time
parent, end, n = os.getppid(), time.monotonic() + {lifetime}, 0
while True:
    n += 1
    if n % 100000 == 0 and (os.getppid() != parent or time.monotonic() > end):
        break
"""


def setUpModule():
    build_image()


class Hogs:
    """CPU hogs: processes of this test, stopped by their pid (kill + wait)."""

    def __init__(self, lifetime):
        self.lifetime = lifetime
        self.procs = []
        atexit.register(self.stop)

    def start(self, count):
        code = HOG.format(lifetime=int(self.lifetime))
        for _ in range(count):
            self.procs.append(subprocess.Popen(
                [sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        log(f"started {count} CPU hogs ({count / CORES:g}x the {CORES} cores): "
            f"pids {[p.pid for p in self.procs]}")

    def stop(self):
        if not self.procs:
            return
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            p.wait(timeout=10)
        log(f"stopped {len(self.procs)} CPU hogs")
        self.procs = []

    @property
    def count(self):
        return len(self.procs)


def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


class PacedUnderLoad(StoreTestCase):
    NODES = 6
    SHARDS = 2
    FORMAT = "2019"
    START_GAP = 2

    def test_paced_chained_writes_under_load(self):
        s = self.store
        rng = random.Random(SEED)
        hogs = Hogs(lifetime=SECONDS + 300)
        self.addCleanup(hogs.stop)
        log(f"paced run: seed {SEED} (KVS_E2E_PACED_SEED={SEED} replays it), {SECONDS:g}s, "
            f"{CORES} cores, hogs by phase {[f * CORES for f, _ in PHASES]}")

        # Phases by time since the first write: (start, end, hogs).
        phases, t = [], 0.0
        for factor, share in PHASES:
            phases.append((t, t + share * SECONDS, factor * CORES))
            t += share * SECONDS
        phases[-1] = (phases[-1][0], float("inf"), phases[-1][2])

        values = {}      # key -> last value
        shard_of = {}    # key -> shard-id its writes returned
        latencies = {}   # hogs -> [seconds]
        meta = ""
        nodes = s.indexes
        start = time.monotonic()
        n = 0
        try:
            while True:
                elapsed = time.monotonic() - start
                if elapsed >= SECONDS:
                    break
                want_hogs = next(h for (a, b, h) in phases if a <= elapsed < b)
                if want_hogs != hogs.count:
                    hogs.stop()
                    if want_hogs:
                        hogs.start(want_hogs)
                    log(f"phase at {elapsed:.0f}s: {want_hogs} hogs, {n} writes so far")
                if values and rng.random() < REWRITE_CHANCE:
                    key = rng.choice(sorted(values))
                else:
                    key = f"paced-{n}"
                value = f"v{n}-{SEED}"
                status = 200 if key in values else 201
                i = nodes[n % len(nodes)]
                t0 = time.monotonic()
                r = s.kv_put(i, key, value, meta)
                took = time.monotonic() - t0
                self.assertEqual(
                    r.status_code, status,
                    f"write #{n} PUT {key}={value} via {s.name(i)} ({s.url(i, '')}) with "
                    f"{hogs.count} hogs, {elapsed:.1f}s into the run, metadata of {len(meta)} "
                    f"chars: {r.status_code} after {took:.2f}s: {r.text}")
                got = r.json()
                self.assertEqual(got["version"], got["causal-metadata"], r.text)
                meta = got["causal-metadata"]
                values[key] = value
                self.assertEqual(shard_of.setdefault(key, got["shard-id"]), got["shard-id"],
                                 f"{key} changed shards")
                latencies.setdefault(hogs.count, []).append(took)
                if took > 1.0:
                    log(f"slow write #{n}: PUT {key} via {s.name(i)} took {took:.2f}s "
                        f"({hogs.count} hogs)")
                n += 1
                if rng.random() < IDLE_CHANCE:
                    gap = rng.uniform(*IDLE_GAP)
                    log(f"idle {gap:.1f}s after write #{n - 1}")
                else:
                    gap = PACE
                time.sleep(max(0.0, gap - took))
        finally:
            hogs.stop()
        log(f"{n} writes of {len(values)} keys in {time.monotonic() - start:.1f}s")
        self.report(latencies)

        # Every key, with the last metadata, through a node of its shard and one of the other.
        shard_map = s.shard_map(1)
        self.assertEqual(sorted(shard_map), ["0", "1"], shard_map)
        by_shard = {sh: [s.index_of(a) for a in members] for sh, members in shard_map.items()}
        with Timer(f"reading back {len(values)} keys through both shards"):
            for k, (key, value) in enumerate(sorted(values.items())):
                own = shard_of[key]
                other = next(sh for sh in by_shard if sh != own)
                for i in (by_shard[own][k % len(by_shard[own])],
                          by_shard[other][k % len(by_shard[other])]):
                    r = s.kv_get(i, key, meta)
                    self.assertEqual(r.status_code, 200,
                                     f"GET {key} via {s.name(i)} (shard {own}): {r.text}")
                    self.assertEqual(r.json()["value"], value,
                                     f"GET {key} via {s.name(i)} (shard {own}): {r.text}")
        self.assertGreater(len({shard_of[k] for k in values}), 1, "keys of both shards")

    def report(self, latencies):
        def line(label, xs):
            xs = sorted(xs)
            return (f"{label}: {len(xs)} writes, median {percentile(xs, 0.5) * 1000:.0f} ms, "
                    f"p99 {percentile(xs, 0.99) * 1000:.0f} ms, max {xs[-1] * 1000:.0f} ms")
        everything = [x for xs in latencies.values() for x in xs]
        lines = [line("all", everything)]
        lines += [line(f"{h} hogs", xs) for h, xs in sorted(latencies.items())]
        log("per-write latency (seed %d)\n  %s" % (SEED, "\n  ".join(lines)))


if __name__ == "__main__":
    unittest.main()
