#!/usr/bin/env bash
# Smoke run of the load generator (not a speed test): a 3-node one-shard kvs and the trivial
# server on 127.0.78.x; checks that every mode of `kvs-bench load` runs, gets answers and
# reports 0 errors. About 30 s once the binaries are built. Exits non-zero on any failure.
#
# env: SMOKE_PROFILE=release|debug (default release; the cargo profile to build and use),
#      SMOKE_NO_BUILD=1 (use the binaries already built), KVS_BIN / BENCH_BIN (explicit paths).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROFILE=${SMOKE_PROFILE:-release}
IP=127.0.78
TMP=$(mktemp -d /tmp/kvs-bench-smoke.XXXXXX)
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    sleep 0.3
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
    echo "kvs-bench smoke: FAILED: $*" >&2
    for f in "$TMP"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -20 "$f" >&2; }; done
    exit 1
}

if [ "${SMOKE_NO_BUILD:-0}" != 1 ] && [ -z "${KVS_BIN:-}${BENCH_BIN:-}" ]; then
    flag=(); [ "$PROFILE" = release ] && flag=(--release)
    (cd "$ROOT" && cargo build "${flag[@]}" -p kvs -p kvs-bench --bins) || fail "build"
fi
find_bin() {
    local d
    for d in "$ROOT/target/x86_64-unknown-linux-gnu/$PROFILE" "$ROOT/target/$PROFILE"; do
        [ -x "$d/$1" ] && { echo "$d/$1"; return; }
    done
    fail "no $1 binary for profile $PROFILE"
}
KVS=${KVS_BIN:-$(find_bin kvs)}
BENCH=${BENCH_BIN:-$(find_bin kvs-bench)}

START=$(date +%s)
V=$IP.11:18080,$IP.12:18080,$IP.13:18080
for a in ${V//,/ }; do
    SOCKET_ADDRESS=$a BIND_ADDRESS=$a VIEW=$V SHARD_COUNT=1 RUST_LOG=warn KVS_DATA_DIR="$TMP/data-$a" \
        "$KVS" >"$TMP/node-$a.log" 2>&1 &
    PIDS+=($!)
done
"$BENCH" serve-fixed --bind $IP.40:19000 >"$TMP/fixed.log" 2>&1 &
PIDS+=($!)
timeout 40 "$BENCH" wait-ready --targets "$V" --nodes 3 --timeout 30 || fail "kvs nodes not ready"
timeout 20 "$BENCH" wait-ready --api fixed --targets $IP.40:19000 --timeout 10 || fail "trivial server not ready"

RUNS=0
# check NAME ARGS...: one bounded run that must succeed with answers and no error.
check() {
    local name=$1; shift
    timeout 60 "$BENCH" load --json "$TMP/$name.json" --label "$name" --max-errors 0 --timeout 5 \
        --max-time 40 "$@" >"$TMP/$name.out" 2>&1 || { cat "$TMP/$name.out" >&2; fail "$name"; }
    cat "$TMP/$name.out"
    python3 - "$TMP/$name.json" "$name" <<'EOF' || fail "$name: bad report"
import json, sys
r = json.load(open(sys.argv[1]))
name = sys.argv[2]
assert r["errors_total"] == 0, r["errors"]
assert r["ok"] > 0 and r["ops_per_s"] > 0, "no successful request"
assert r["latency"]["p99_ms"] >= r["latency"]["p50_ms"] > 0
if r.get("prefill"):
    assert r["prefill"]["errors_total"] == 0 and r["prefill"]["ok"] == r["keys"], r["prefill"]
EOF
    RUNS=$((RUNS + 1))
}

# Closed loop, 80/20, each request to the next node: sessions carry causal metadata across
# nodes, so this also checks that the carried tokens are accepted.
check mixed --targets "$V" --keys 200 --prefill --concurrency 8 --duration 3 --warmup 0.5 \
    --read-ratio 0.8 --spread request
check zipf --targets "http://$IP.11:18080,http://$IP.12:18080" --keys 200 --dist zipf \
    --concurrency 4 --duration 2 --warmup 0 --read-ratio 0.5 --spread worker
check open --targets "$V" --keys 200 --concurrency 16 --duration 2 --warmup 0.5 --read-ratio 0.9 --rate 400
check count --targets "$V" --keys 200 --concurrency 4 --requests 300 --read-ratio 0
check fixed --api fixed --targets $IP.40:19000 --concurrency 8 --duration 2 --warmup 0.5

# A run against a stopped address must report its errors and fail --max-errors.
if timeout 30 "$BENCH" load --targets $IP.99:18080 --keys 10 --requests 5 --concurrency 1 \
        --timeout 1 --max-errors 0 --json "$TMP/down.json" >"$TMP/down.out" 2>&1; then
    fail "errors against a dead target were not reported"
fi
grep -q "transport" "$TMP/down.out" || fail "no transport error reported: $(cat "$TMP/down.out")"
RUNS=$((RUNS + 1))

echo "kvs-bench smoke: OK, $RUNS runs, 0 errors where none were expected ($(( $(date +%s) - START )) s)"
