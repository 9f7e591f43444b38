#!/usr/bin/env bash
# The kvs benchmark, on one machine, in one run: builds the release binaries, installs etcd
# if needed, then measures in turn a trivial HTTP server (the ceiling of HTTP here), a 3-node
# one-shard kvs, a 3-member etcd cluster and a 6-node two-shard kvs with the same workloads
# and the same concurrency, and prints one table with the ratios the targets are about.
# With --scale it also measures memory for 1M keys per node and the wall time of add-member
# and of a reshard 2 -> 3 over that data set.
#
# Only loopback addresses (127.0.77.x) are used; every process started here is stopped on
# exit; every load run is bounded in time.
#
# usage: bench/run.sh [--scale] [--scale-only] [--duration S] [--concurrency C]
#                     [--open-concurrency C] [--keys N]
#                     [--scale-keys N] [--mem-keys N] [--threads T] [--no-build] [--no-nice] [--out DIR]
#                     [--only fixed,kvs3,kvs3-always,kvs3-memory,etcd,kvs6]   (a subset, for quick checks)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=10          # measured seconds per closed-loop run (plus WARMUP)
WARMUP=1
CONCURRENCY=32       # client sessions, the same for every system
OPEN_CONCURRENCY=""  # sessions of open-loop runs (default: the same as CONCURRENCY)
KEYS=10000           # keys prefilled and used by the regular workloads
VALUE_SIZE=100
THREADS=1            # load generator threads (the machine has 2 cores in all)
SCALE=0
SCALE_ONLY=0
SCALE_KEYS=2000000   # two shards: each node holds about half, i.e. 1,000,000
MEM_KEYS=2000000     # the memory step: every node of a one-shard store holds all of them
BUILD=1
OUT=""
ONLY="fixed,kvs3,kvs3-always,kvs3-memory,etcd,kvs6"
NICE_LEVEL=-10       # as root, the benchmark's processes run at a higher priority than the rest

while [ $# -gt 0 ]; do
    case "$1" in
        --scale) SCALE=1 ;;
        --scale-only) SCALE=1; SCALE_ONLY=1 ;;
        --duration) DURATION=$2; shift ;;
        --concurrency) CONCURRENCY=$2; shift ;;
        --open-concurrency) OPEN_CONCURRENCY=$2; shift ;;
        --keys) KEYS=$2; shift ;;
        --scale-keys) SCALE_KEYS=$2; shift ;;
        --mem-keys) MEM_KEYS=$2; shift ;;
        --threads) THREADS=$2; shift ;;
        --no-build) BUILD=0 ;;
        --no-nice) NICE_LEVEL=0 ;;
        --out) OUT=$2; shift ;;
        --only) ONLY=$2; shift ;;
        -h|--help) sed -n 2,15p "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

OPEN_CONCURRENCY=${OPEN_CONCURRENCY:-$CONCURRENCY}
OUT=${OUT:-$(mktemp -d /tmp/kvs-bench.XXXXXX)}
mkdir -p "$OUT/logs"
RELEASE="$ROOT/target/x86_64-unknown-linux-gnu/release"
KVS="${KVS_BIN:-$RELEASE/kvs}"
# Several nodes share this machine's two cores: one HTTP thread and one background thread
# each (KVS_WORKERS, default 2 for a node with a host of its own). Override to compare.
export KVS_WORKERS=${KVS_WORKERS:-1}
# etcd members likewise get one Go scheduler thread each unless told otherwise (measured:
# GOMAXPROCS=1 is the faster setting for three members on two cores; see BENCHMARKS.md).
ETCD_GOMAXPROCS=${ETCD_GOMAXPROCS:-1}
BENCH="${BENCH_BIN:-$RELEASE/kvs-bench}"
IP=127.0.77   # every address used here is 127.0.77.x
NICE=()
GEN_NICE=()
if [ "$(id -u)" = 0 ] && [ "$NICE_LEVEL" != 0 ]; then
    NICE=(nice -n "$NICE_LEVEL")
    # The generator runs a step above the systems it measures: on two shared cores its own
    # scheduling delays would otherwise count as the server's latency (see "lag p99"). This
    # can only take CPU away from the server under test, never give it any.
    GEN_NICE=(nice -n "$((NICE_LEVEL - 5))")
fi

want() { [[ ",$ONLY," == *",$1,"* ]]; }
log() { printf '\n=== %s [%s]\n' "$*" "$(date +%T)"; }

# ---------------------------------------------------------------- processes and cleanup
PIDS=()
# stop_pids PID...: asks them to stop, waits up to 3 s, then kills what is left.
stop_pids() {
    local pid
    for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
    for _ in $(seq 30); do
        local alive=0
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for pid in "$@"; do kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
}
cleanup() {
    stop_pids "${PIDS[@]}"
    wait 2>/dev/null || true
    rm -rf /dev/shm/kvs-bench-etcd.$$.* 2>/dev/null || true
    PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Stops the processes started since the group began (GROUP_START is an index into PIDS).
stop_group() {
    local keep=("${PIDS[@]:0:$GROUP_START}")
    stop_pids "${PIDS[@]:$GROUP_START}"
    PIDS=("${keep[@]}")
    sleep 1
}
begin_group() { GROUP_START=${#PIDS[@]}; }

# start_kvs NAME SHARD_COUNT(or "") VIEW ADDR: one node, logging to $OUT/logs.
declare -A NODE_PID
start_kvs() {
    local name=$1 shards=$2 view=$3 addr=$4
    # A fresh data directory per node and run (durable storage, the default); KEEP=1
    # restarts a node on the directory it had.
    local data="$OUT/data/$name-$addr"
    [ "${KEEP:-0}" = 1 ] || rm -rf "$data"
    if [ -n "$shards" ]; then
        SOCKET_ADDRESS=$addr BIND_ADDRESS=$addr VIEW=$view SHARD_COUNT=$shards RUST_LOG=warn \
            KVS_DATA_DIR=$data "${NICE[@]}" "$KVS" >"$OUT/logs/$name-$addr.log" 2>&1 &
    else
        SOCKET_ADDRESS=$addr BIND_ADDRESS=$addr VIEW=$view RUST_LOG=warn \
            KVS_DATA_DIR=$data "${NICE[@]}" "$KVS" >"$OUT/logs/$name-$addr.log" 2>&1 &
    fi
    PIDS+=($!)
    NODE_PID[$addr]=$!
}

# ---------------------------------------------------------------- build and install
if [ $BUILD = 1 ]; then
    log "building release binaries"
    (cd "$ROOT" && cargo build --release -p kvs -p kvs-bench --bins)
fi
for b in "$KVS" "$BENCH"; do
    [ -x "$b" ] || { echo "missing $b (run without --no-build)" >&2; exit 1; }
done
if [ $SCALE_ONLY = 0 ] && want etcd && ! command -v etcd >/dev/null; then
    log "installing etcd-server (Debian)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
fi
command -v curl >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null; }

# ---------------------------------------------------------------- load runs
# run_load FILE ARGS...: one bounded run of the generator, results in $OUT/FILE.json.
run_load() {
    local file=$1; shift
    timeout 900 "${GEN_NICE[@]}" "$BENCH" load --threads "$THREADS" --value-size "$VALUE_SIZE" \
        --json "$OUT/$file.json" --label "$file" "$@" | tee -a "$OUT/load.log"
}
peak() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['ops_per_s'])" "$OUT/$1.json"; }
half_rate() { python3 -c "import json,sys; print(max(1.0, json.load(open(sys.argv[1]))['ops_per_s'] / 2))" "$OUT/$1.json"; }

# bench_system NAME API TARGETS [EXTRA ARGS for reads]: GET, PUT, 90/10 mix (closed loop),
# then each of them in open loop at half its peak.
bench_system() {
    local name=$1 api=$2 targets=$3; shift 3
    local common=(--api "$api" --targets "$targets" --keys "$KEYS" --spread worker)
    local closed=("${common[@]}" --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP")
    run_load "$name.get" "${closed[@]}" --read-ratio 1 --prefill "$@"
    run_load "$name.put" "${closed[@]}" --read-ratio 0 "$@"
    run_load "$name.mix" "${closed[@]}" --read-ratio 0.9 "$@"
    local w
    for w in get put mix; do
        local ratio=1; [ $w = put ] && ratio=0; [ $w = mix ] && ratio=0.9
        run_load "$name.$w.half" "${common[@]}" --concurrency "$OPEN_CONCURRENCY" \
            --duration "$DURATION" --warmup "$WARMUP" --read-ratio $ratio \
            --rate "$(half_rate "$name.$w")" "$@"
    done
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GB, $(uname -r); load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/machine.txt"
echo "kvs: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet HEAD -- src 2>/dev/null || echo ' +uncommitted src changes')" | tee -a "$OUT/machine.txt"
echo "results in $OUT"

if [ $SCALE_ONLY = 0 ]; then
    # ---------------------------------------------------------------- trivial server
    if want fixed; then
    log "trivial HTTP server"
    begin_group
    # With one worker and with two: the ceiling is whichever is faster here.
    FIXED=$IP.40:9000
    for workers in 1 2; do
        begin_group
        "${NICE[@]}" "$BENCH" serve-fixed --bind $FIXED --workers $workers >"$OUT/logs/fixed$workers.log" 2>&1 &
        PIDS+=($!)
        "$BENCH" wait-ready --api fixed --targets $FIXED --timeout 20
        run_load fixed$workers.get --api fixed --targets $FIXED --concurrency "$CONCURRENCY" \
            --duration "$DURATION" --warmup "$WARMUP"
        stop_group
    done
    best=1
    python3 -c "import json,sys; a,b=(json.load(open(f))['ops_per_s'] for f in sys.argv[1:]); sys.exit(0 if a>=b else 1)" \
        "$OUT/fixed1.get.json" "$OUT/fixed2.get.json" || best=2
    cp "$OUT/fixed$best.get.json" "$OUT/fixed.get.json"
    echo "trivial server: the faster setting is $best worker(s)"
    begin_group
    "${NICE[@]}" "$BENCH" serve-fixed --bind $FIXED --workers $best >"$OUT/logs/fixed.log" 2>&1 &
    PIDS+=($!)
    "$BENCH" wait-ready --api fixed --targets $FIXED --timeout 20
    run_load fixed.get.half --api fixed --targets $FIXED --concurrency "$OPEN_CONCURRENCY" \
        --duration "$DURATION" --warmup "$WARMUP" --rate "$(half_rate fixed.get)"
    stop_group
    fi

    # ---------------------------------------------------------------- kvs, 3 nodes, 1 shard
    if want kvs3; then
    log "kvs: 3 nodes, 1 shard"
    begin_group
    V3=$IP.11:8080,$IP.12:8080,$IP.13:8080
    for a in ${V3//,/ }; do start_kvs kvs3 1 "$V3" "$a"; done
    "$BENCH" wait-ready --targets "$V3" --nodes 3 --timeout 60
    bench_system kvs3 kvs "$V3"
    stop_group
    # Sessions that stay on one node against sessions that send each request to the next
    # node in turn (a session's next request then usually lands on a node that has yet to
    # receive the write it depends on). Each row on a store of its own, prefilled alike: on
    # durable storage a store slows as writes pile up in the engine, and rows measured
    # later on one store paid for the rows before them (round-robin PUT after the six rows
    # above: 0.48-0.56x of sticky; measured first: 0.63x, docs/BENCHMARKS.md).
    for row in put.sticky:worker:0 put.rr:request:0 mix.sticky:worker:0.9 mix.rr:request:0.9; do
        IFS=: read -r file spread ratio <<<"$row"
        begin_group
        for a in ${V3//,/ }; do start_kvs kvs3-sessions 1 "$V3" "$a"; done
        "$BENCH" wait-ready --targets "$V3" --nodes 3 --timeout 60
        "$BENCH" load --targets "$V3" --keys "$KEYS" --prefill --requests 0 --quiet
        run_load "kvs3.$file" --targets "$V3" --keys "$KEYS" --spread "$spread" \
            --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP" \
            --read-ratio "$ratio"
        stop_group
    done
    # Linearizable requests (a majority of the shard per operation), each on a fresh
    # store too, next to etcd's linearizable range and put below.
    for row in get.lin:1 put.lin:0; do
        IFS=: read -r file ratio <<<"$row"
        begin_group
        for a in ${V3//,/ }; do start_kvs kvs3-lin 1 "$V3" "$a"; done
        "$BENCH" wait-ready --targets "$V3" --nodes 3 --timeout 60
        "$BENCH" load --targets "$V3" --keys "$KEYS" --prefill --requests 0 --quiet
        run_load "kvs3.$file" --targets "$V3" --keys "$KEYS" --spread worker \
            --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP" \
            --read-ratio "$ratio" --kvs-linearizable --no-metadata
        stop_group
    done
    fi

    # ---------------------------------------------------------------- kvs, 3 nodes: the other storage modes
    # The same store with every write synced before its answer, and with data in memory
    # only: what durability costs, next to the default (periodic sync) above.
    for mode in always memory; do
        want "kvs3-$mode" || continue
        log "kvs: 3 nodes, 1 shard, storage mode $mode"
        begin_group
        if [ $mode = always ]; then export KVS_SYNC=always; else export KVS_IN_MEMORY=true; fi
        V3=$IP.11:8080,$IP.12:8080,$IP.13:8080
        for a in ${V3//,/ }; do start_kvs kvs3$mode 1 "$V3" "$a"; done
        unset KVS_SYNC KVS_IN_MEMORY
        "$BENCH" wait-ready --targets "$V3" --nodes 3 --timeout 60
        for w in get put; do
            ratio=1; [ $w = put ] && ratio=0
            prefill=(); [ $w = get ] && prefill=(--prefill)
            run_load kvs3$mode.$w --targets "$V3" --keys "$KEYS" --spread worker --concurrency "$CONCURRENCY" \
                --duration "$DURATION" --warmup "$WARMUP" --read-ratio $ratio "${prefill[@]}"
        done
        stop_group
    done

    # ---------------------------------------------------------------- etcd, 3 members
    if want etcd; then
    log "etcd: 3 members ($(etcd --version | head -1)), data on tmpfs"
    begin_group
    E3=$IP.21:2379,$IP.22:2379,$IP.23:2379
    CLUSTER=e1=http://$IP.21:2380,e2=http://$IP.22:2380,e3=http://$IP.23:2380
    ETCD_DIR=/dev/shm; [ -d /dev/shm ] || ETCD_DIR=$OUT
    for i in 1 2 3; do
        d=$ETCD_DIR/kvs-bench-etcd.$$.$i
        rm -rf "$d"
        GOMAXPROCS=$ETCD_GOMAXPROCS "${NICE[@]}" etcd --name e$i --data-dir "$d" \
            --listen-client-urls http://$IP.2$i:2379 --advertise-client-urls http://$IP.2$i:2379 \
            --listen-peer-urls http://$IP.2$i:2380 --initial-advertise-peer-urls http://$IP.2$i:2380 \
            --initial-cluster "$CLUSTER" --initial-cluster-state new --initial-cluster-token kvs-bench-$$ \
            --log-level warn >"$OUT/logs/etcd$i.log" 2>&1 &
        PIDS+=($!)
    done
    "$BENCH" wait-ready --api etcd --targets "$E3" --timeout 60
    # Serializable reads are local reads, like kvs's: the stronger baseline for etcd.
    bench_system etcd etcd "$E3" --etcd-serializable
    run_load etcd.get.linearizable --api etcd --targets "$E3" --keys "$KEYS" --spread worker \
        --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP" --read-ratio 1
    stop_group
    fi

    # ---------------------------------------------------------------- kvs, 6 nodes, 2 shards
    if want kvs6; then
    log "kvs: 6 nodes, 2 shards"
    begin_group
    V6=$IP.31:8080,$IP.32:8080,$IP.33:8080,$IP.34:8080,$IP.35:8080,$IP.36:8080
    for a in ${V6//,/ }; do start_kvs kvs6 2 "$V6" "$a"; done
    "$BENCH" wait-ready --targets "$V6" --nodes 6 --timeout 60
    bench_system kvs6 kvs "$V6" --record-shards "$OUT/kvs6-keys"
    # Local vs forwarded: the same keys (those of shard 0), sent only to shard 0's members,
    # or only to the other shard's members, which forward every request.
    M0=$("$BENCH" shard-members --target $IP.31:8080 --shard 0)
    M1=$("$BENCH" shard-members --target $IP.31:8080 --shard 1)
    echo "shard 0: $M0; shard 1: $M1; keys of shard 0: $(wc -l <"$OUT/kvs6-keys/shard-0.keys")"
    for w in get put; do
        ratio=1; [ $w = put ] && ratio=0
        run_load kvs6.local.$w --targets "$M0" --key-file "$OUT/kvs6-keys/shard-0.keys" --spread worker \
            --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP" --read-ratio $ratio
        run_load kvs6.forwarded.$w --targets "$M1" --key-file "$OUT/kvs6-keys/shard-0.keys" --spread worker \
            --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP" --read-ratio $ratio
    done
    stop_group
    fi
fi

# ---------------------------------------------------------------- scale
if [ $SCALE = 1 ]; then
    # Memory: a two-node one-shard store where each node holds MEM_KEYS keys (issue 11's
    # bound: 2,000,000 keys in at most 300 MB resident).
    log "memory: $MEM_KEYS keys (16-byte keys, 100-byte values) held by each node of a 2-node shard"
    begin_group
    VM=$IP.61:8080,$IP.62:8080
    for a in ${VM//,/ }; do start_kvs mem 1 "$VM" "$a"; done
    "$BENCH" wait-ready --targets "$VM" --nodes 2 --timeout 60
    timeout 1800 "${NICE[@]}" "$BENCH" load --threads 2 --targets "$VM" --spread worker --keys "$MEM_KEYS" --key-size 16 \
        --value-size 100 --prefill --prefill-concurrency 96 --requests 0 --max-time 1500 --timeout 30 \
        --json "$OUT/mem.prefill.json" --label mem.prefill | tee -a "$OUT/load.log"
    MEM_WRITTEN=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['prefill']['ok'])" "$OUT/mem.prefill.json")
    # Until both nodes hold every key written (replication settles), at most 60 s.
    for _ in $(seq 60); do
        MEM_HELD=$MEM_WRITTEN
        for a in ${VM//,/ }; do
            h=$(curl -s --max-time 60 "http://$a/kvs/storage" |
                python3 -c 'import json,sys; print(json.load(sys.stdin)["live"])' 2>/dev/null || echo 0)
            [ "$h" -lt "$MEM_HELD" ] && MEM_HELD=$h
        done
        [ "$MEM_HELD" -ge "$MEM_WRITTEN" ] && break
        sleep 1
    done
    MEM_RSS=0
    for a in ${VM//,/ }; do
        r=$(awk '/VmRSS/{print $2}' "/proc/${NODE_PID[$a]}/status")
        echo "RSS $a holding $MEM_HELD keys: $r kB"
        [ "$r" -gt "$MEM_RSS" ] && MEM_RSS=$r
    done
    echo "{\"keys\": $MEM_HELD, \"rss_kb\": $MEM_RSS}" >"$OUT/mem.json"
    stop_group

    log "scale: $SCALE_KEYS keys (16-byte keys, 100-byte values) in a 6-node 2-shard store"
    begin_group
    VS=$IP.51:8080,$IP.52:8080,$IP.53:8080,$IP.54:8080,$IP.55:8080,$IP.56:8080
    NEW=$IP.57:8080
    for a in ${VS//,/ }; do start_kvs scale 2 "$VS" "$a"; done
    "$BENCH" wait-ready --targets "$VS" --nodes 6 --timeout 60
    rss_of() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
    RSS_BEFORE="{"
    for a in ${VS//,/ }; do RSS_BEFORE="$RSS_BEFORE\"$a\": $(rss_of "${NODE_PID[$a]}"),"; done
    RSS_BEFORE="${RSS_BEFORE%,}}"
    echo "RSS before prefill (kB): $RSS_BEFORE"
    # Prefill only (--requests 0), with many sessions.
    timeout 1800 "${NICE[@]}" "$BENCH" load --threads 2 --targets "$VS" --spread worker --keys "$SCALE_KEYS" --key-size 16 \
        --value-size 100 --prefill --prefill-concurrency 96 --requests 0 --max-time 1500 --timeout 30 \
        --json "$OUT/scale.prefill.json" --label scale.prefill | tee -a "$OUT/load.log"
    # A shard's live key count as a node answers it (-1 if it answers an error).
    keycount() {
        curl -s --max-time 60 "http://$1/key-value-store-shard/shard-id-key-count/$2" |
            python3 -c 'import json,sys
try: print(json.load(sys.stdin)["shard-id-key-count"])
except Exception: print(-1)'
    }
    WRITTEN=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['prefill']['ok'])" "$OUT/scale.prefill.json")
    # Let replication settle: wait (at most 60 s) until both shards count every key written.
    for _ in $(seq 60); do
        c0=$(keycount $IP.51:8080 0); c1=$(keycount $IP.52:8080 1)
        [ $((c0 + c1)) -ge "$WRITTEN" ] && break
        sleep 1
    done
    sleep 3
    echo "key counts: shard 0 $c0, shard 1 $c1"
    RSS_JSON="{"
    for a in ${VS//,/ }; do
        r=$(rss_of "${NODE_PID[$a]}")
        echo "RSS $a: $r kB"
        RSS_JSON="$RSS_JSON\"$a\": $r,"
    done
    RSS_JSON="${RSS_JSON%,}}"
    S0=$("$BENCH" shard-members --target $IP.51:8080 --shard 0)

    # restart: kill -9 a node holding a shard, start it on its data directory, and time
    # until it answers its shard's whole key count (it serves from its disk).
    R=$IP.52:8080
    RS=$(curl -s --max-time 10 "http://$R/key-value-store-shard/node-shard-id" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["shard-id"])')
    RC=$(keycount $R "$RS")
    kill -9 "${NODE_PID[$R]}"
    wait "${NODE_PID[$R]}" 2>/dev/null || true
    t0=$(date +%s.%N)
    KEEP=1 start_kvs scale 2 "$VS" "$R"
    RESTART_COUNT=-1
    for _ in $(seq 1200); do
        # Refused until the node listens: not a failure of the script.
        RESTART_COUNT=$(curl -s --max-time 1 "http://$R/key-value-store-shard/shard-id-key-count/$RS" |
            python3 -c 'import json,sys
try: print(json.load(sys.stdin)["shard-id-key-count"])
except Exception: print(-1)') || true
        [ "$RESTART_COUNT" = "$RC" ] && break
        sleep 0.1
    done
    t1=$(date +%s.%N)
    RESTART_S=$(python3 -c "print(round($t1 - $t0, 2))")
    echo "restart of $R (kill -9) holding $RC keys: answering all of them after $RESTART_S s ($RESTART_COUNT)"

    # add-member: a 7th node, started without SHARD_COUNT, joins shard 0.
    start_kvs scale "" "$VS,$NEW" "$NEW"
    # Wait until the coordinator sees the new node up (gossip), at most 30 s.
    for _ in $(seq 150); do
        curl -s --max-time 2 "http://$IP.51:8080/key-value-store-view" | grep -q "$NEW" && break
        sleep 0.2
    done
    t0=$(date +%s.%N)
    ADD=$(curl -s --max-time 300 -w ' %{http_code}' -X PUT -H 'content-type: application/json' \
        -d "{\"socket-address\": \"$NEW\"}" "http://$IP.51:8080/key-value-store-shard/add-member/0")
    t1=$(date +%s.%N)
    ADD_S=$(python3 -c "print(round($t1 - $t0, 2))")
    NEW_COUNT=$(keycount "$NEW" 0)
    echo "add-member: $ADD_S s ($ADD); new member's count of shard 0: $NEW_COUNT (peers: $c0)"

    # reshard 2 -> 3 (7 nodes up, 6 needed).
    t0=$(date +%s.%N)
    RES=$(curl -s --max-time 600 -w ' %{http_code}' -X PUT -H 'content-type: application/json' \
        -d '{"shard-count": 3}' "http://$IP.51:8080/key-value-store-shard/reshard")
    t1=$(date +%s.%N)
    RES_S=$(python3 -c "print(round($t1 - $t0, 2))")
    sleep 1
    AFTER=""
    TOTAL=0
    for s in 0 1 2; do
        c=$(keycount $IP.51:8080 $s)
        AFTER="$AFTER $s:$c"
        TOTAL=$((TOTAL + c))
    done
    echo "reshard 2->3: $RES_S s ($RES); key counts after:$AFTER (total $TOTAL of $WRITTEN)"
    RSS_AFTER="{"
    for a in ${VS//,/ } $NEW; do RSS_AFTER="$RSS_AFTER\"$a\": $(rss_of "${NODE_PID[$a]}"),"; done
    RSS_AFTER="${RSS_AFTER%,}}"
    RESTART_S=$RESTART_S RESTART_KEYS=$RC RESTART_COUNT=$RESTART_COUNT \
    SCALE_KEYS=$WRITTEN RSS_BEFORE=$RSS_BEFORE C0=$c0 C1=$c1 S0=$S0 RSS_JSON=$RSS_JSON RSS_AFTER=$RSS_AFTER ADD_S=$ADD_S \
    ADD=$ADD NEW_COUNT=${NEW_COUNT:-0} RES_S=$RES_S RES=$RES TOTAL=$TOTAL python3 - >"$OUT/scale.json" <<'EOF'
import json, os
e = os.environ
def num(k):
    try:
        return int(e[k])
    except ValueError:
        return float(e[k])
print(json.dumps({
    "keys": num("SCALE_KEYS"), "shard0_keys": num("C0"), "shard1_keys": num("C1"),
    "shard0_members": e["S0"], "rss_kb_empty": json.loads(e["RSS_BEFORE"]),
    "rss_kb": json.loads(e["RSS_JSON"]),
    "rss_kb_after_reshard": json.loads(e["RSS_AFTER"]),
    "add_member_s": num("ADD_S"), "add_member_answer": e["ADD"], "new_member_keys": num("NEW_COUNT"),
    "reshard_s": num("RES_S"), "reshard_answer": e["RES"], "keys_after_reshard": num("TOTAL"),
    "restart_s": num("RESTART_S"), "restart_keys": num("RESTART_KEYS"),
    "restart_answered_keys": num("RESTART_COUNT"),
}, indent=1))
EOF
    stop_group
fi

log "results"
cp "$OUT/machine.txt" "$OUT/table.txt"
python3 "$ROOT/bench/report.py" "$OUT" | tee -a "$OUT/table.txt"
echo "(raw results: $OUT)"
