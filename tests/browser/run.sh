#!/usr/bin/env bash
# The dashboard's browser test: installs what it needs when missing (Chromium and chromedriver
# from Debian's packages, selenium from tests/browser/requirements.txt), builds the kvs
# binary, then runs tests/browser/test_dashboard.py against three local nodes on loopback.
# A tool that cannot be installed fails the run; nothing is skipped.
#
#   tests/browser/run.sh            KVS_BROWSER_SEED=N repeats a run; KVS_BROWSER_KEEP=1 keeps
#                                   its node logs and screenshots
set -euo pipefail
cd "$(dirname "$0")/../.."

fail() { echo "tests/browser/run.sh: $*" >&2; exit 1; }

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "installing chromium and chromium-driver (Debian packages)"
  [ "$(id -u)" = 0 ] || fail "Chromium is missing and installing it needs root (apt-get install chromium chromium-driver)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
    || fail "cannot install chromium and chromium-driver; the dashboard test needs them"
fi
# A chromedriver of another version than the browser refuses to start it: say so plainly.
browser_major=$(chromium --version 2>/dev/null | grep -o '[0-9]\+\.' | head -1)
driver_major=$(chromedriver --version | grep -o '[0-9]\+\.' | head -1)
[ "$browser_major" = "$driver_major" ] \
  || fail "chromium ($(chromium --version 2>/dev/null)) and chromedriver ($(chromedriver --version)) differ"

python3 -m pip install --quiet --disable-pip-version-check -r tests/browser/requirements.txt \
  || fail "cannot install selenium (tests/browser/requirements.txt)"

# Always asked, so that a binary older than the sources (without the dashboard) is rebuilt;
# a no-op when it is up to date.
if [ -z "${KVS_BIN:-}" ]; then
  cargo build --quiet --bin kvs || fail "cargo build --bin kvs failed"
fi

exec python3 -m unittest discover -s tests/browser -p "test_*.py" -v
