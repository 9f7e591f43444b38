#!/usr/bin/env bash
# Runs the nemesis test for several seeds in a row and prints one summary line per seed
# (operations per second, 503 share during faults, convergence after heal, anomalies).
# Needs root. Builds the tests in release mode first.
#
#   scripts/nemesis-seeds.sh [SEEDS] [SECONDS] [FIRST_SEED]     default 10 seeds x 60 s from seed 1
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-10} seconds=${2:-60} first=${3:-1}
out=$(mktemp -d -t kvs-nemesis-XXXXXX)
cargo test --release --test nemesis --no-run 2>&1 | tail -1
failed=0
for seed in $(seq "$first" $((first + seeds - 1))); do
  if NEMESIS_SEED=$seed NEMESIS_SECONDS=$seconds \
       cargo test --release --test nemesis -- --ignored --nocapture >"$out/seed-$seed.log" 2>&1; then
    verdict=clean
  else
    verdict=FAILED; failed=$((failed + 1))
  fi
  summary=$(grep -h "^nemesis seed $seed:" "$out/seed-$seed.log" | head -1 || true)
  anomalies=$(grep -h "^kvs-check:" "$out/seed-$seed.log" | head -1 || true)
  echo "$verdict | ${summary:-no summary (see $out/seed-$seed.log)} | ${anomalies}"
done
echo "$seeds seeds x ${seconds} s: $failed failed; logs in $out"
[ "$failed" = 0 ]
