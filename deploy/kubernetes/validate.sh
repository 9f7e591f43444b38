#!/usr/bin/env bash
# Renders the kustomization and validates every resource offline against the Kubernetes
# schemas (kubernetes-validate from PyPI, strict: no unknown fields), then checks what the
# store relies on. Installs what it needs when missing; CI runs it from ./test.sh.
set -euo pipefail
cd "$(dirname "$0")"

fail() { echo "deploy/kubernetes/validate.sh: $*" >&2; exit 1; }
python3 -m pip install --quiet --disable-pip-version-check -r requirements.txt \
  || fail "cannot install kubernetes-validate"
if ! command -v kubectl >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client \
    || fail "kubectl is missing and cannot be installed"
fi
rendered=$(mktemp -t kvs-k8s-XXXXXX.yaml)
trap 'rm -f "$rendered"' EXIT
kubectl kustomize . > "$rendered" || fail "the kustomization does not render"
kubernetes-validate --strict --quiet "$rendered" || fail "a resource does not validate"
python3 check_manifests.py "$rendered"
echo "deploy/kubernetes: $(grep -c '^kind:' "$rendered") resources render and validate"
