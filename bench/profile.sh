#!/usr/bin/env bash
# Profiles kvs nodes under one workload with `perf` (software cpu-clock sampling: hardware
# counters are not available in this VM) and prints where the CPU goes, per process and per
# function (inclusive %, from DWARF call graphs).
#
# usage: [ROLE=owner] [SPREAD=request] [LOAD_ARGS=...] bench/profile.sh [forwarded-get|forwarded-put|local-get|local-put|kvs3-get|kvs3-put] [SECONDS]
#
# Builds kvs with symbols into a separate target dir (/tmp/kvs-bench-prof-target, about 4 min
# the first time), starts the store on 127.0.79.x, drives the load with kvs-bench and records
# one node of the role that matters (the forwarding node, or an owner). SPREAD=request sends
# each session's requests to the nodes in turn (round robin) instead of one node each.
# LOAD_ARGS adds options to the load (e.g. "--kvs-linearizable --no-metadata").
# Needs linux-perf.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORKLOAD=${1:-forwarded-get}
SECS=${2:-4}
IP=127.0.79
PROF_TARGET=${PROF_TARGET:-/tmp/kvs-bench-prof-target}
OUT=$(mktemp -d /tmp/kvs-bench-profile.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    sleep 0.5
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

command -v perf >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null; }
(cd "$ROOT" && CARGO_TARGET_DIR=$PROF_TARGET CARGO_PROFILE_RELEASE_STRIP=false \
    CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release -p kvs --bin kvs)
(cd "$ROOT" && cargo build --release -p kvs-bench --bin kvs-bench)
KVS=$PROF_TARGET/x86_64-unknown-linux-gnu/release/kvs
BENCH=$ROOT/target/x86_64-unknown-linux-gnu/release/kvs-bench

case $WORKLOAD in
    kvs3-*) N=3; SHARDS=1 ;;
    *) N=6; SHARDS=2 ;;
esac
VIEW=$(seq -f "$IP.%g:8080" 11 $((10 + N)) | paste -sd,)
declare -A PID_OF
for a in ${VIEW//,/ }; do
    SOCKET_ADDRESS=$a BIND_ADDRESS=$a VIEW=$VIEW SHARD_COUNT=$SHARDS RUST_LOG=warn \
        nice -n -10 "$KVS" >"$OUT/node-$a.log" 2>&1 &
    PIDS+=($!)
    PID_OF[$a]=$!
done
"$BENCH" wait-ready --targets "$VIEW" --nodes $N --timeout 60
"$BENCH" load --targets "$VIEW" --keys 10000 --prefill --record-shards "$OUT/keys" --requests 0 --quiet

ratio=1; [[ $WORKLOAD == *put ]] && ratio=0
if [ $N = 3 ]; then
    TARGETS=$VIEW; KEYS=(--keys 10000); RECORD=$IP.11:8080
else
    M0=$("$BENCH" shard-members --target $IP.11:8080 --shard 0)
    M1=$("$BENCH" shard-members --target $IP.11:8080 --shard 1)
    KEYS=(--key-file "$OUT/keys/shard-0.keys")
    case $WORKLOAD in
        forwarded-*) TARGETS=$M1; RECORD=${M1%%,*} ;;
        *) TARGETS=$M0; RECORD=${M0%%,*} ;;
    esac
    # ROLE=owner profiles an owner under a forwarded workload instead of a forwarder.
    [ "${ROLE:-}" = owner ] && RECORD=${M0%%,*}
fi
nice -n -10 "$BENCH" load --targets "$TARGETS" "${KEYS[@]}" --spread "${SPREAD:-worker}" --concurrency 32 --threads 1 \
    --duration $((SECS + 4)) --warmup 0 --read-ratio $ratio ${LOAD_ARGS:-} --label "$WORKLOAD" >"$OUT/load.out" &
LOAD=$!
sleep 2
perf record -a -e cpu-clock -F 999 -o "$OUT/all.data" -- sleep "$SECS" 2>/dev/null >/dev/null
wait $LOAD
cat "$OUT/load.out"
nice -n -10 "$BENCH" load --targets "$TARGETS" "${KEYS[@]}" --spread "${SPREAD:-worker}" --concurrency 32 --threads 1 \
    --duration $((SECS + 2)) --warmup 0 --read-ratio $ratio ${LOAD_ARGS:-} --quiet >/dev/null &
LOAD=$!
sleep 1
perf record -p "${PID_OF[$RECORD]}" -e cpu-clock -F 999 --call-graph dwarf,32768 -o "$OUT/node.data" \
    -- sleep "$SECS" >/dev/null 2>&1
wait $LOAD

echo
echo "== CPU per process (all CPUs, $SECS s)"
perf report -i "$OUT/all.data" --sort pid --stdio 2>/dev/null | grep -v '^#' | awk 'NF' >"$OUT/by-thread.txt"
for a in ${VIEW//,/ }; do echo "${PID_OF[$a]} $a $(ls /proc/${PID_OF[$a]}/task 2>/dev/null | tr '\n' ' ')"; done >"$OUT/threads.txt"
python3 - "$OUT" <<'EOF'
import sys
out = sys.argv[1]
owner = {}
for line in open(f"{out}/threads.txt"):
    pid, addr, *tids = line.split()
    for t in tids:
        owner[t] = addr
total = {}
for line in open(f"{out}/by-thread.txt"):
    pct, rest = line.split(None, 1)
    tid, comm = rest.strip().split(":", 1)
    key = owner.get(tid, comm)
    total[key] = total.get(key, 0.0) + float(pct.rstrip("%"))
for k, v in sorted(total.items(), key=lambda kv: -kv[1])[:12]:
    print(f"{v:6.2f}%  {k}")
EOF
echo
echo "== $RECORD ($WORKLOAD): functions by inclusive share of its samples"
perf script -i "$OUT/node.data" 2>/dev/null | python3 -c '
import sys, re, collections
samples, cur = [], []
for line in sys.stdin:
    if not line.strip():
        if cur: samples.append(cur)
        cur = []
    elif line[0] in "\t ":
        parts = line.strip().split(None, 1)
        if len(parts) == 2:
            cur.append(re.sub(r"\+0x[0-9a-f]+| \(.*\)$", "", parts[1]))
if cur: samples.append(cur)
incl, own = collections.Counter(), collections.Counter()
for s in samples:
    own[s[0]] += 1
    for f in set(s): incl[f] += 1
n = max(1, len(samples))
pat = re.compile(r"kvs::|reqwest::async_impl::client::(Pending|Client::execute)|hyper::proto::h1::dispatch|actix_http::h1::dispatcher::InnerDispatcher|regex_lite::string|url::parser::Parser::parse_url|serde_json::de::from|^malloc$|_int_malloc|malloc_consolidate|^free$|epoll_wait$|__x64_sys_sendto|__x64_sys_recvfrom|__x64_sys_write|finish_task_switch")
print(f"{len(samples)} samples")
shown = 0
for f, c in incl.most_common():
    if pat.search(f) and shown < 45:
        shown += 1
        print(f"{100*c/n:6.2f}% incl {100*own[f]/n:6.2f}% self  {f[:140]}")
'
echo "(perf data in $OUT)"
