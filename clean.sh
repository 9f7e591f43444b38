#!/usr/bin/env bash
# Stop and remove the containers and the network that build.sh (or docker-compose.yml)
# made for one store. Safe to run twice. Touches only what carries the label
# kvs.store=<network>: other containers, networks and images are left alone.
set -euo pipefail

usage() {
    cat <<'EOF2'
Usage: ./clean.sh [--keep-data] [-h|--help]

Removes every container and data volume labelled kvs.store=$KVS_NETWORK and then
the network $KVS_NETWORK itself if it carries that label (a network build.sh did not
create is kept). The image is kept.

  --keep-data   keep the nodes' data volumes (./build.sh --keep-data starts the
                store again on them)

Environment (as for build.sh):
  KVS_NETWORK   network name [mynet]
EOF2
}

KEEP_DATA=0
for arg in "$@"; do
    case "$arg" in
        -h|--help) usage; exit 0 ;;
        --keep-data) KEEP_DATA=1 ;;
        *) echo "clean.sh: unknown option '$arg' (see --help)" >&2; exit 1 ;;
    esac
done

NETWORK="${KVS_NETWORK:-mynet}"
LABEL="kvs.store=${NETWORK}"

command -v docker >/dev/null || { echo "clean.sh: docker is not installed" >&2; exit 1; }

ids="$(docker ps -aq --filter "label=$LABEL")"
if [[ -n "$ids" ]]; then
    names="$(docker ps -a --filter "label=$LABEL" --format '{{.Names}}' | sort -V | tr '\n' ' ')"
    echo "==> removing containers: $names" >&2
    # shellcheck disable=SC2086
    docker rm -f $ids >/dev/null
fi

volumes="$(docker volume ls -q --filter "label=$LABEL")"
if [[ -n "$volumes" ]]; then
    if (( KEEP_DATA )); then
        echo "==> keeping data volumes: $(tr '\n' ' ' <<<"$volumes")" >&2
    else
        echo "==> removing data volumes: $(tr '\n' ' ' <<<"$volumes")" >&2
        # shellcheck disable=SC2086
        docker volume rm $volumes >/dev/null
    fi
fi

if docker network inspect "$NETWORK" >/dev/null 2>&1; then
    owner="$(docker network inspect "$NETWORK" --format '{{index .Labels "kvs.store"}}' 2>/dev/null || true)"
    if [[ "$owner" == "$NETWORK" ]]; then
        echo "==> removing network $NETWORK" >&2
        docker network rm "$NETWORK" >/dev/null
    else
        echo "==> keeping network $NETWORK: build.sh did not create it" >&2
    fi
fi
echo "==> clean" >&2
