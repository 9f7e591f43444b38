#!/usr/bin/env bash
# Installs what ./test.sh needs beyond Rust and Docker, when it is missing: rustfmt and
# clippy; curl, ip and iptables (the nemesis test's network namespaces); the Docker suite's
# Python packages. The browser test installs Chromium and selenium itself
# (tests/browser/run.sh). Needs root for apt; does nothing when all is there.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup component list --installed 2>/dev/null | grep -qE '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -qE '^clippy' || rustup component add clippy
missing=""
command -v curl >/dev/null || missing="$missing curl"
command -v ip >/dev/null || missing="$missing iproute2"
command -v iptables >/dev/null || missing="$missing iptables"
if [ -n "$missing" ]; then
  echo "installing:$missing"
  apt-get update -qq && apt-get install -y -qq $missing
fi
python3 -m pip install --quiet --disable-pip-version-check -r tests/e2e/requirements.txt
