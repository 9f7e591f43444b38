#!/usr/bin/env bash
# Runs a kvs store on this host, one process per node on 127.0.0.2, 127.0.0.3, ... (port
# 8080 by default), until Ctrl-C. No Docker needed.
#
#   scripts/local-cluster.sh [-n NODES] [-s SHARDS] [-p PORT] [-f 2019|2020] [--release] [--fresh]
#
# Each node keeps its data in kvs-data/local/<ip>_<port>, so a store stopped with Ctrl-C
# and started again has every key it had (and its shard map, which wins over -n/-s);
# --fresh removes that data first.
set -euo pipefail

nodes=3 shards=1 port=8080 format=2019 profile=debug fresh=0
usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    -n|--nodes) nodes=$2; shift 2 ;;
    -s|--shards) shards=$2; shift 2 ;;
    -p|--port) port=$2; shift 2 ;;
    -f|--format) format=$2; shift 2 ;;
    --release) profile=release; shift ;;
    --fresh) fresh=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [ "$nodes" -lt $((2 * shards)) ]; then
  echo "need at least $((2 * shards)) nodes for $shards shards" >&2
  exit 2
fi

cd "$(dirname "$0")/.."
if [ "$profile" = release ]; then cargo build --release --bin kvs; else cargo build --bin kvs; fi
binary=target/x86_64-unknown-linux-gnu/$profile/kvs
logs=$(mktemp -d -t kvs-local-XXXXXX)
data=kvs-data/local
[ "$fresh" = 1 ] && rm -rf "$data"

view=""
for i in $(seq 2 $((nodes + 1))); do view="$view${view:+,}127.0.0.$i:$port"; done

pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; echo "stopped; logs in $logs"' EXIT
for i in $(seq 2 $((nodes + 1))); do
  addr=127.0.0.$i:$port
  SOCKET_ADDRESS=$addr BIND_ADDRESS=$addr VIEW=$view SHARD_COUNT=$shards API_FORMAT=$format \
    KVS_DATA_DIR="$data/127.0.0.${i}_$port" "$binary" >"$logs/node$i.log" 2>&1 &
  pids+=($!)
done

first=127.0.0.2:$port
for _ in $(seq 1 100); do
  if curl -sf "http://$first/key-value-store-view" | grep -q "127.0.0.$((nodes + 1)):$port"; then
    break
  fi
  sleep 0.1
done
echo "kvs: $nodes nodes, $shards shard(s), view $view"
echo "logs: $logs; data: $data (--fresh starts empty)"
echo "try:  curl -X PUT http://$first/key-value-store/hello -H 'Content-Type: application/json' -d '{\"value\":\"world\"}'"
echo "Ctrl-C stops the store."
wait
