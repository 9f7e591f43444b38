#!/usr/bin/env python3
"""Prints the benchmark table and the targets from the JSON files bench/run.sh wrote.

usage: bench/report.py OUT_DIR
"""
import json
import os
import sys

OUT = sys.argv[1] if len(sys.argv) > 1 else "."


def load(name):
    path = os.path.join(OUT, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


FIXED = "trivial HTTP server"
K3 = "kvs 3 nodes, 1 shard"
ETCD = "etcd 3.4, 3 members"
K6 = "kvs 6 nodes, 2 shards"

ROWS = [
    (FIXED, "GET (the request of a kvs GET), 1 worker", "fixed1.get"),
    (FIXED, "GET (the request of a kvs GET), 2 workers", "fixed2.get"),
    (FIXED, "GET (the request of a kvs GET)", "fixed.get"),
    (FIXED, "GET at half peak (open loop)", "fixed.get.half"),
    (K3, "GET", "kvs3.get"),
    (K3, "PUT (replicated to 3)", "kvs3.put"),
    (K3, "90/10 GET/PUT", "kvs3.mix"),
    (K3, "GET at half peak (open loop)", "kvs3.get.half"),
    (K3, "PUT at half peak (open loop)", "kvs3.put.half"),
    (K3, "90/10 at half peak (open loop)", "kvs3.mix.half"),
    (K3, "PUT, sessions on one node (fresh store)", "kvs3.put.sticky"),
    (K3, "PUT, round robin per request (fresh store)", "kvs3.put.rr"),
    (K3, "90/10, sessions on one node (fresh store)", "kvs3.mix.sticky"),
    (K3, "GET, linearizable (fresh store)", "kvs3.get.lin"),
    (K3, "PUT, linearizable (fresh store)", "kvs3.put.lin"),
    (K3, "90/10, round robin per request (fresh store)", "kvs3.mix.rr"),
    ("kvs3, KVS_SYNC=always", "GET", "kvs3always.get"),
    ("kvs3, KVS_SYNC=always", "PUT (synced before the answer)", "kvs3always.put"),
    ("kvs3, in memory", "GET", "kvs3memory.get"),
    ("kvs3, in memory", "PUT (not on disk)", "kvs3memory.put"),
    (ETCD, "GET (serializable range)", "etcd.get"),
    (ETCD, "GET (linearizable range)", "etcd.get.linearizable"),
    (ETCD, "PUT", "etcd.put"),
    (ETCD, "90/10 GET/PUT", "etcd.mix"),
    (ETCD, "GET at half peak (open loop)", "etcd.get.half"),
    (ETCD, "PUT at half peak (open loop)", "etcd.put.half"),
    (ETCD, "90/10 at half peak (open loop)", "etcd.mix.half"),
    (K6, "GET", "kvs6.get"),
    (K6, "PUT", "kvs6.put"),
    (K6, "90/10 GET/PUT", "kvs6.mix"),
    (K6, "GET at half peak (open loop)", "kvs6.get.half"),
    (K6, "PUT at half peak (open loop)", "kvs6.put.half"),
    (K6, "90/10 at half peak (open loop)", "kvs6.mix.half"),
    (K6, "GET, shard 0 keys, to owners (local)", "kvs6.local.get"),
    (K6, "GET, shard 0 keys, to non-owners (forwarded)", "kvs6.forwarded.get"),
    (K6, "PUT, shard 0 keys, to owners (local)", "kvs6.local.put"),
    (K6, "PUT, shard 0 keys, to non-owners (forwarded)", "kvs6.forwarded.put"),
]


def fmt(x, digits=2):
    return "-" if x is None else f"{x:.{digits}f}"


def lat(r, k):
    return r.get("latency", {}).get(k) if r else None


def ops(name):
    r = load(name)
    return r["ops_per_s"] if r else None


def main():
    lines = []
    header = (f"| {'system':<22} | {'workload':<45} | {'ops/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} | "
              f"{'p99.9 ms':>8} | {'errors':>6} | {'lag p99':>7} |")
    lines.append(header)
    lines.append("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for system, workload, name in ROWS:
        r = load(name)
        if r is None or (name == "fixed.get" and load("fixed1.get")):
            continue  # fixed.get is a copy of the faster of fixed1 and fixed2
        rate = f"{r['ops_per_s']:.0f}"
        if r.get("rate_target"):
            workload = f"{workload} @{r['rate_target']:.0f}/s"
        lines.append(
            f"| {system:<22} | {workload:<45} | {rate:>8} | {fmt(lat(r, 'p50_ms')):>7} | "
            f"{fmt(lat(r, 'p99_ms')):>7} | {fmt(lat(r, 'p999_ms')):>8} | {r['errors_total']:>6} | "
            f"{fmt((r.get('send_lag') or {}).get('p99_ms')):>7} |"
        )
    if len(lines) > 2:
        print("\n".join(lines))
        print("(lag p99: open loop only, how late the generator sent a request after it was due and its "
              "session was free: the generator's own scheduling delay, a lower bound)")

    errors = []
    for _, _, name in ROWS:
        r = load(name)
        if r and r["errors_total"]:
            errors.append(f"{name}: {r['errors']}")
        if r and r.get("prefill") and r["prefill"].get("errors_total"):
            errors.append(f"{name} prefill: {r['prefill']['errors']}")
    if errors:
        print("\nerrors:")
        for e in errors:
            print("  " + e)

    targets = []

    def ratio(label, num, den, goal, at_least=True):
        a, b = ops(num), ops(den)
        if a is None or b is None or b == 0:
            return
        v = a / b
        if goal is None:  # informational: a ratio without a target
            targets.append((label, f"{v:.2f}x", "-", None))
            return
        ok = v >= goal if at_least else v <= goal
        targets.append((label, f"{v:.2f}x", f"{'>=' if at_least else '<='} {goal}x", ok))

    ratio("kvs3 GET / trivial server", "kvs3.get", "fixed.get", 0.7)
    ratio("kvs3 PUT / trivial server", "kvs3.put", "fixed.get", 0.4)
    ratio("kvs3 GET / etcd GET (serializable)", "kvs3.get", "etcd.get", 5)
    ratio("kvs3 GET / etcd GET (linearizable)", "kvs3.get", "etcd.get.linearizable", 5)
    ratio("kvs3 PUT / etcd PUT", "kvs3.put", "etcd.put", 5)
    ratio("kvs3 90/10 / etcd 90/10", "kvs3.mix", "etcd.mix", 5)
    ratio("kvs6 GET forwarded / local", "kvs6.forwarded.get", "kvs6.local.get", 0.5)
    ratio("kvs6 PUT forwarded / local", "kvs6.forwarded.put", "kvs6.local.put", 0.5)
    ratio("kvs3 durable PUT (periodic sync) / trivial server", "kvs3.put", "fixed.get", 0.5)
    ratio("kvs3 durable GET / trivial server", "kvs3.get", "fixed.get", 0.85)
    ratio("kvs3 PUT, sync always / etcd PUT", "kvs3always.put", "etcd.put", 1)
    ratio("kvs3 PUT periodic sync / in memory", "kvs3.put", "kvs3memory.put", None)
    ratio("kvs3 PUT sync always / periodic", "kvs3always.put", "kvs3.put", None)
    ratio("kvs3 PUT round robin / sticky", "kvs3.put.rr", "kvs3.put.sticky", 0.6)
    ratio("kvs3 linearizable GET / etcd linearizable GET", "kvs3.get.lin", "etcd.get.linearizable", 2)
    ratio("kvs3 linearizable PUT / etcd PUT", "kvs3.put.lin", "etcd.put", 2)
    ratio("kvs3 linearizable GET / causal GET", "kvs3.get.lin", "kvs3.get", None)
    ratio("kvs3 linearizable PUT / causal PUT", "kvs3.put.lin", "kvs3.put", None)
    ratio("kvs3 90/10 round robin / sticky", "kvs3.mix.rr", "kvs3.mix.sticky", 0.6)
    for name, label in [
        ("kvs3.get.half", "kvs3 GET"),
        ("kvs3.put.half", "kvs3 PUT"),
        ("kvs3.mix.half", "kvs3 90/10"),
        ("kvs6.get.half", "kvs6 GET"),
        ("kvs6.put.half", "kvs6 PUT"),
        ("kvs6.mix.half", "kvs6 90/10"),
    ]:
        r = load(name)
        if r and lat(r, "p99_ms") is not None:
            p = lat(r, "p99_ms")
            targets.append((f"{label} p99 at half peak", f"{p:.2f} ms", "<= 5 ms", p <= 5))

    m = load("mem")
    if m:
        mb = m["rss_kb"] * 1024 / 1e6
        targets.append((f"RSS of a node holding {m['keys'] / 1e6:.2f}M keys (durable)", f"{mb:.0f} MB",
                        "<= 300 MB", mb <= 300))

    s = load("scale")
    if s:
        rss = s["rss_kb"]
        worst = max(rss.values()) * 1024 / 1e6  # MB, as the goal is stated
        held = max(s["shard0_keys"], s["shard1_keys"])
        targets.append(
            (f"RSS of a node holding {held / 1e6:.2f}M keys (max of 6)", f"{worst:.0f} MB", "<= 400 MB",
             worst <= 400)
        )
        empty = s.get("rss_kb_empty")
        if empty and held and abs(held - 1e6) > 0.02e6:
            base = max(empty.values()) * 1024 / 1e6
            per_m = base + (worst - base) * 1e6 / held
            targets.append(("RSS per node for 1M keys (linear from the above)", f"{per_m:.0f} MB",
                            "<= 400 MB", per_m <= 400))
        def timed(label, secs, answer, goal):
            code = answer.rsplit(" ", 1)[-1]
            shown = f"{secs:.2f} s" if code == "200" else f"{code} at {secs:.1f} s"
            targets.append((label, shown, f"<= {goal} s", secs <= goal and code == "200"))

        if "restart_s" in s:
            whole = s["restart_answered_keys"] == s["restart_keys"]
            targets.append((f"restart (kill -9) of a node holding {s['restart_keys'] / 1e6:.2f}M keys",
                            f"{s['restart_s']:.2f} s" if whole else f"not whole at {s['restart_s']:.1f} s",
                            "<= 5 s", whole and s["restart_s"] <= 5))
        timed("add-member wall time", s["add_member_s"], s["add_member_answer"], 10)
        timed("reshard 2 -> 3 wall time", s["reshard_s"], s["reshard_answer"], 20)
        print(
            f"\nscale: {s['keys']} keys; shard 0 {s['shard0_keys']}, shard 1 {s['shard1_keys']}; "
            f"RSS kB per node {rss}; after add-member + reshard {s['rss_kb_after_reshard']}; "
            f"add-member answer '{s['add_member_answer']}', new member holds {s['new_member_keys']}; "
            f"reshard answer '{s['reshard_answer']}', keys after {s['keys_after_reshard']}"
        )
        p = load("scale.prefill")
        if p and p.get("prefill"):
            pf = p["prefill"]
            print(f"scale prefill: {pf['ok']} PUTs in {pf['seconds']:.0f} s ({pf['ops_per_s']:.0f}/s), "
                  f"{pf['errors_total']} errors")

    if targets:
        print()
        w = max(len(t[0]) for t in targets)
        print(f"| {'target':<{w}} | {'measured':>13} | {'goal':>10} | met |")
        print(f"|{'-' * (w + 2)}|{'-' * 15}|{'-' * 12}|-----|")
        for label, v, goal, ok in targets:
            met = "-" if ok is None else ("yes" if ok else "NO")
            print(f"| {label:<{w}} | {v:>13} | {goal:>10} | {met:<3} |")


if __name__ == "__main__":
    main()
