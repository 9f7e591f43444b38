#!/usr/bin/env bash
# The project's test command: lints, unit and integration tests, the Docker end-to-end suite
# and a smoke run of the load generator. Every part runs; a missing tool is a failure, never
# a silent skip.
#
#   ./test.sh            everything
#   ./test.sh --no-e2e   skip the Docker suite (says so loudly; CI never passes this)
set -euo pipefail
cd "$(dirname "$0")"

e2e=1
for arg in "$@"; do
  case "$arg" in
    --no-e2e) e2e=0 ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $arg" >&2; exit 2 ;;
  esac
done

step() { printf '\n==== %s ====\n' "$*"; }

step "test dependencies (scripts/test-deps.sh)"
scripts/test-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "unit and integration tests (cargo test)"
cargo test --workspace --all-targets

# The parsers' fuzz targets (src/fuzz.rs) with many more inputs than the unit run gives them:
# about 20 s here.
step "fuzz targets (20,000 inputs each)"
PROPTEST_CASES=20000 cargo test --lib fuzz

# The dashboard (/dashboard/) in headless Chromium against three local nodes: cluster view,
# key browser, admin forms, a killed node shown down. Installs Chromium and selenium when
# missing (and fails if it cannot); about a minute.
step "dashboard in headless Chromium (tests/browser/run.sh)"
tests/browser/run.sh

# The Kubernetes manifests render (kustomize) and validate offline against the schemas.
step "Kubernetes manifests (deploy/kubernetes/validate.sh)"
deploy/kubernetes/validate.sh

step "load generator smoke run"
bench/smoke.sh

# 1,500 values of 1 MiB through one node of a 3-node store (issue 23): every node's peak
# resident memory under its KVS_MEMORY_MB, every value read back. Against the release
# build bench/smoke.sh just made (a debug node takes minutes over 1.5 GB); about 2 minutes.
step "memory bounded in bytes: 1,500 values of 1 MiB"
cargo build --release --bin kvs   # already built by the smoke run: a no-op
KVS_TEST_BINARY="$PWD/target/x86_64-unknown-linux-gnu/release/kvs" \
  cargo test --test abuse -- --ignored --nocapture large_values

# Six nodes under a steady writer while one hostile client loops over the attacks of
# tests/abuse.rs (issue 23 ran it for 5 minutes; here 60 s, 30 s per phase of attacks), against the release build: no
# node down, no acknowledged write lost, peak RSS within KVS_MEMORY_MB, the writer's p99
# under the attacks within 3x its quiet p99.
step "hostile soak: one hostile client for ${HOSTILE_SECONDS:=60} s"
KVS_TEST_BINARY="$PWD/target/x86_64-unknown-linux-gnu/release/kvs" SOAK_SECONDS=$HOSTILE_SECONDS \
  cargo test --test hostile_soak -- --ignored --nocapture

# Causal sessions, then linearizable clients, against six nodes in network namespaces while a
# nemesis kills, pauses and partitions them; the history checkers (causal, and Wing and
# Gong's linearizability search) fail the build on any anomaly. Needs root.
step "nemesis: causal sessions under kill, pause and partition (seed ${NEMESIS_SEED:=$(date +%s)})"
[ "$(id -u)" = 0 ] || { echo "the nemesis test needs root (network namespaces)" >&2; exit 1; }
NEMESIS_SEED=$NEMESIS_SEED NEMESIS_SECONDS=${NEMESIS_SECONDS:-40} \
  cargo test --test nemesis -- --ignored --nocapture --test-threads=1

# Six nodes with a cluster secret under a steady writer while a hostile sender loops over
# every gossip attack, mutations of captured gossip, replays and junk (issue 22 ran it for
# 5 minutes; here 30 s): no node may leave a view, no acknowledged write be lost, gossip
# traffic stay within twice its quiet rate.
step "gossip soak: a hostile sender for ${SOAK_SECONDS:=30} s"
SOAK_SECONDS=$SOAK_SECONDS cargo test --test gossip_soak -- --ignored --nocapture

if [ "$e2e" = 1 ]; then
  step "Docker end-to-end suite"
  command -v docker >/dev/null || { echo "docker is required for the end-to-end suite" >&2; exit 1; }
  python3 -m unittest discover -s tests/e2e -v
else
  step "SKIPPED: Docker end-to-end suite (--no-e2e)"
fi
step "all tests passed"
