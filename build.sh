#!/usr/bin/env bash
# shellcheck disable=SC2015  # "check && check || die" is meant: die when either fails
# Build the kvs image and start a sharded, replicated store in Docker containers.
# Run `./build.sh --help` for the options; docs/docker.md has the details.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: ./build.sh [options]

Builds the static release binaries (cargo build --release --bin kvs --bin kvsctl) and the image,
creates the Docker network, and starts node1..nodeN (removing the containers of an
earlier run first). Waits until every node agrees on the shard ids and every view
lists every node, then prints the nodes.

Options:
  -n, --nodes N        number of nodes (default 6)
  -s, --shards S       number of shards, SHARD_COUNT (default 2); needs 2*S <= N
      --no-shard-count start every node with only SOCKET_ADDRESS, VIEW and API_FORMAT,
                       without SHARD_COUNT: once a node has heard from a majority of
                       the view, the nodes form one shard of all of them (the course's
                       replicated store without shards); excludes -s
      --add-node       also start one more node (node N+1, the next address and
                       host port) WITHOUT SHARD_COUNT, with a VIEW naming the store
                       and itself; add it to a shard with PUT .../add-member/<id>
      --only-add-node  start only that extra node, next to a running store built
                       with the same -n/--format/environment (nothing else changes)
      --format F       API_FORMAT of every node: 2019 (default) or 2020
      --no-build       skip cargo and docker build; reuse the existing image
      --no-cargo       skip cargo only: build the image from the binary already in
                       target/x86_64-unknown-linux-gnu/release/kvs
      --build-only     build the binary and the image, start nothing
      --host-ip IP     host address the node ports are published on
                       (default 127.0.0.1; 0.0.0.0 publishes on every interface)
      --port-base P    host port of node1 (default 8082); node i gets P+i-1
      --node-port P    port the node listens on inside its container (default 8080;
                       the course's 2020 scripts use 8085): SOCKET_ADDRESS ip:P, the
                       VIEW entries ip:P, and each host port is published to P
      --start-gap SECS wait SECS seconds (e.g. 3 or 0.5) between starting consecutive
                       nodes, as course scripts do (up to 20 s); default 0
      --timeout SECS   how long to wait for the store to form (default 90)
      --keep-data      start the nodes on the data volumes of the last store
                       (the same -n/-s; their data and shard map win over -s);
                       without it every node starts on an empty volume
  -h, --help           show this help

Environment (defaults in brackets), also read by clean.sh:
  KVS_NETWORK    Docker network name [mynet]
  KVS_SUBNET     its subnet [10.10.0.0/16]; node i gets the subnet's address + i + 1
  KVS_IMAGE      image name [kvs-image]
  KVS_PREFIX     container name prefix [node]
  KVS_HOST_IP, KVS_PORT_BASE, KVS_NODE_PORT, KVS_START_GAP, KVS_WAIT_TIMEOUT
                 defaults of the options above
  KVS_RUST_LOG   RUST_LOG given to every node (unset: the node's default)

Every node keeps its data on a named volume, <network>-<name>-data, mounted at /data.
The store's cluster secret (KVS_CLUSTER_SECRET_FILE, docs/security.md) is generated once
per store into the volume <network>-secret, mounted read-only at /run/kvs in every node;
--keep-data and --only-add-node reuse it.
Everything created carries the label kvs.store=<network>; clean.sh removes exactly that.
EOF
}

die() { echo "build.sh: $*" >&2; exit 1; }
log() { echo "==> $*" >&2; }

NETWORK="${KVS_NETWORK:-mynet}"
SUBNET="${KVS_SUBNET:-10.10.0.0/16}"
IMAGE="${KVS_IMAGE:-kvs-image}"
PREFIX="${KVS_PREFIX:-node}"
HOST_IP="${KVS_HOST_IP:-127.0.0.1}"
PORT_BASE="${KVS_PORT_BASE:-8082}"
TIMEOUT="${KVS_WAIT_TIMEOUT:-90}"
NODE_PORT="${KVS_NODE_PORT:-8080}"
START_GAP="${KVS_START_GAP:-0}"
RUST_LOG_VALUE="${KVS_RUST_LOG:-}"
NODES=6
SHARDS=2
SHARDS_GIVEN=0
WITH_SHARD_COUNT=1
FORMAT=2019
ADD_NODE=0
ONLY_ADD_NODE=0
BUILD=1
CARGO=1
BUILD_ONLY=0
KEEP_DATA=0
LABEL="kvs.store=${NETWORK}"

need_value() { [[ $# -ge 2 && -n "$2" ]] || die "option $1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        -n|--nodes) need_value "$@"; NODES="$2"; shift 2 ;;
        -s|--shards) need_value "$@"; SHARDS="$2"; SHARDS_GIVEN=1; shift 2 ;;
        --no-shard-count) WITH_SHARD_COUNT=0; shift ;;
        --add-node) ADD_NODE=1; shift ;;
        --only-add-node) ONLY_ADD_NODE=1; ADD_NODE=1; shift ;;
        --format) need_value "$@"; FORMAT="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --no-cargo) CARGO=0; shift ;;
        --build-only) BUILD_ONLY=1; shift ;;
        --host-ip) need_value "$@"; HOST_IP="$2"; shift 2 ;;
        --port-base) need_value "$@"; PORT_BASE="$2"; shift 2 ;;
        --node-port) need_value "$@"; NODE_PORT="$2"; shift 2 ;;
        --start-gap) need_value "$@"; START_GAP="$2"; shift 2 ;;
        --timeout) need_value "$@"; TIMEOUT="$2"; shift 2 ;;
        --keep-data) KEEP_DATA=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
is_uint "$NODES" && (( NODES >= 2 && NODES <= 200 )) || die "--nodes must be an integer from 2 to 200 (got '$NODES')"
if (( WITH_SHARD_COUNT )); then
    is_uint "$SHARDS" && (( SHARDS >= 1 )) || die "--shards must be a positive integer (got '$SHARDS')"
    (( SHARDS * 2 <= NODES )) || die "$SHARDS shards need at least $((SHARDS * 2)) nodes (two per shard); got --nodes $NODES"
else
    (( ! SHARDS_GIVEN )) || die "--no-shard-count and -s/--shards exclude each other (without SHARD_COUNT the nodes form one shard)"
    SHARDS=1
fi
[[ "$FORMAT" == 2019 || "$FORMAT" == 2020 ]] || die "--format must be 2019 or 2020 (got '$FORMAT')"
is_uint "$PORT_BASE" && (( PORT_BASE >= 1 && PORT_BASE + NODES <= 65535 )) || die "bad --port-base '$PORT_BASE'"
[[ "$NODE_PORT" =~ ^[1-9][0-9]{0,4}$ ]] && (( NODE_PORT <= 65535 )) || die "--node-port must be a port from 1 to 65535 (got '$NODE_PORT')"
[[ "$START_GAP" =~ ^[0-9]+(\.[0-9]+)?$ ]] && (( 10#${START_GAP%.*} <= 600 )) || die "--start-gap must be a number of seconds from 0 to 600, e.g. 3 or 0.5 (got '$START_GAP')"
is_uint "$TIMEOUT" && (( TIMEOUT >= 1 )) || die "--timeout must be a positive number of seconds (got '$TIMEOUT')"
[[ "$HOST_IP" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "--host-ip must be an IPv4 address (got '$HOST_IP')"
[[ "$SUBNET" =~ ^([0-9]+)\.([0-9]+)\.([0-9]+)\.([0-9]+)/([0-9]+)$ ]] || die "KVS_SUBNET must look like 10.10.0.0/16 (got '$SUBNET')"
PREFIX_LEN="${BASH_REMATCH[5]}"
(( PREFIX_LEN >= 8 && PREFIX_LEN <= 24 )) || die "KVS_SUBNET prefix length must be between /8 and /24"
NET_INT=$(( (BASH_REMATCH[1] << 24) | (BASH_REMATCH[2] << 16) | (BASH_REMATCH[3] << 8) | BASH_REMATCH[4] ))
[[ "$NETWORK" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "bad KVS_NETWORK '$NETWORK'"
[[ "$PREFIX" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "bad KVS_PREFIX '$PREFIX'"

command -v docker >/dev/null || die "docker is not installed"
command -v curl >/dev/null || die "curl is needed to check the store"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BINARY="target/x86_64-unknown-linux-gnu/release/kvs"

# Node i (1-based): name, address on the network, host port.
node_name() { echo "${PREFIX}$1"; }
node_ip() {
    local n=$(( NET_INT + $1 + 1 ))
    echo "$(( (n >> 24) & 255 )).$(( (n >> 16) & 255 )).$(( (n >> 8) & 255 )).$(( n & 255 ))"
}
node_addr() { echo "$(node_ip "$1"):${NODE_PORT}"; }
host_port() { echo $(( PORT_BASE + $1 - 1 )); }
url() {
    local h="$HOST_IP"
    [[ "$h" == 0.0.0.0 ]] && h=127.0.0.1
    echo "http://${h}:$(host_port "$1")"
}

# ---------------------------------------------------------------- build
if (( BUILD )); then
    if (( CARGO )); then
        command -v cargo >/dev/null || die "cargo is not installed (use --no-cargo or --no-build)"
        log "cargo build --release --bin kvs --bin kvsctl"
        (cd "$ROOT" && cargo build --release --bin kvs --bin kvsctl)
    fi
    [[ -x "$ROOT/$BINARY" ]] || die "no binary at $BINARY (cargo build --release; is .cargo/config.toml in place?)"
    log "docker build -t $IMAGE ."
    if ! out="$(cd "$ROOT" && docker build -q -t "$IMAGE" . 2>&1)"; then
        echo "$out" >&2
        die "docker build failed"
    fi
else
    docker image inspect "$IMAGE" >/dev/null 2>&1 \
        || die "image '$IMAGE' does not exist; run without --no-build (or: docker build -t $IMAGE .)"
fi
if (( BUILD_ONLY )); then
    log "image $IMAGE: $(docker image inspect "$IMAGE" --format '{{.Size}}') bytes"
    exit 0
fi

# ---------------------------------------------------------------- network
ensure_network() {
    if docker network inspect "$NETWORK" >/dev/null 2>&1; then
        local subnet owner
        subnet="$(docker network inspect "$NETWORK" --format '{{range .IPAM.Config}}{{.Subnet}} {{end}}')"
        subnet="${subnet% }"
        owner="$(docker network inspect "$NETWORK" --format '{{index .Labels "kvs.store"}}' 2>/dev/null || true)"
        if [[ " $subnet " == *" $SUBNET "* ]]; then
            return 0
        fi
        [[ "$owner" == "$NETWORK" ]] \
            || die "network '$NETWORK' exists with subnet '$subnet', not $SUBNET, and build.sh did not create it; remove it or set KVS_NETWORK/KVS_SUBNET"
        log "recreating network $NETWORK with subnet $SUBNET"
        docker network rm "$NETWORK" >/dev/null
    fi
    log "creating network $NETWORK ($SUBNET)"
    docker network create --driver bridge --subnet "$SUBNET" --label "$LABEL" "$NETWORK" >/dev/null
}

# ---------------------------------------------------------------- containers
remove_store() {
    local ids
    ids="$(docker ps -aq --filter "label=$LABEL")"
    if [[ -n "$ids" ]]; then
        log "removing the old containers of $NETWORK"
        # shellcheck disable=SC2086
        docker rm -f $ids >/dev/null
    fi
}

volume_name() { echo "${NETWORK}-$(node_name "$1")-data"; }

# A fresh store starts on empty volumes: the data of an earlier store (its shard map
# included) would otherwise win over this run's settings.
remove_volumes() {
    local ids
    ids="$(docker volume ls -q --filter "label=$LABEL")"
    if [[ -n "$ids" ]]; then
        log "removing the data volumes of the old store"
        # shellcheck disable=SC2086
        docker volume rm $ids >/dev/null
    fi
}

ensure_volume() {
    local volume
    volume="$(volume_name "$1")"
    docker volume inspect "$volume" >/dev/null 2>&1 \
        || docker volume create --label "$LABEL" "$volume" >/dev/null
}

SECRET_VOLUME="${NETWORK}-secret"

# One secret per store: 32 random bytes as hex, written once into a volume of its own (the
# image has no shell, so a created, never started container carries it there). A store
# started again on its volumes keeps it, and with it the tokens its clients hold.
ensure_secret() {
    docker volume inspect "$SECRET_VOLUME" >/dev/null 2>&1 && return 0
    log "generating the store's cluster secret (volume $SECRET_VOLUME)"
    docker volume create --label "$LABEL" "$SECRET_VOLUME" >/dev/null
    local tmp holder
    tmp="$(mktemp -d)"
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$tmp/secret"
    chmod 0444 "$tmp/secret"
    holder="$(docker create --label "$LABEL" -v "$SECRET_VOLUME:/run/kvs" "$IMAGE")"
    docker cp "$tmp/secret" "$holder:/run/kvs/secret" >/dev/null
    docker rm "$holder" >/dev/null
    rm -rf "$tmp"
}

check_name_free() {
    local name="$1"
    if docker container inspect "$name" >/dev/null 2>&1; then
        die "a container named '$name' exists and was not started by build.sh for network '$NETWORK'; remove it (docker rm -f $name) or set KVS_PREFIX"
    fi
}

VIEW_ADDRS=()
for (( i = 1; i <= NODES; i++ )); do VIEW_ADDRS+=("$(node_addr "$i")"); done
STORE_VIEW="$(IFS=,; echo "${VIEW_ADDRS[*]}")"
EXTRA=$(( NODES + 1 ))

# --start-gap: the pause between two consecutive `docker run`s.
gap() {
    [[ "$START_GAP" =~ ^0*(\.0*)?$ ]] && return 0
    log "waiting ${START_GAP}s before the next node (--start-gap)"
    sleep "$START_GAP"
}
SHARD_NOTE=""
(( WITH_SHARD_COUNT )) || SHARD_NOTE=" without SHARD_COUNT"

start_node() {
    local i="$1" with_shards="$2" view="$3"
    local name env_args=()
    name="$(node_name "$i")"
    check_name_free "$name"
    env_args+=(-e "SOCKET_ADDRESS=$(node_addr "$i")" -e "VIEW=$view" -e "API_FORMAT=$FORMAT")
    (( with_shards && WITH_SHARD_COUNT )) && env_args+=(-e "SHARD_COUNT=$SHARDS")
    [[ -n "$RUST_LOG_VALUE" ]] && env_args+=(-e "RUST_LOG=$RUST_LOG_VALUE")
    env_args+=(-e "KVS_CLUSTER_SECRET_FILE=/run/kvs/secret")
    ensure_volume "$i"
    ensure_secret
    docker run -d --name "$name" --hostname "$name" \
        --label "$LABEL" --label "kvs.node=$i" \
        --network "$NETWORK" --ip "$(node_ip "$i")" \
        -v "$(volume_name "$i"):/data" \
        -v "$SECRET_VOLUME:/run/kvs:ro" \
        -p "${HOST_IP}:$(host_port "$i"):${NODE_PORT}/tcp" \
        "${env_args[@]}" "$IMAGE" >/dev/null \
        || die "could not start $name (port $(host_port "$i") or address $(node_ip "$i") in use? ./clean.sh removes an old store)"
}

if (( ONLY_ADD_NODE )); then
    docker network inspect "$NETWORK" >/dev/null 2>&1 || die "network '$NETWORK' does not exist: start the store first"
    old="$(docker ps -aq --filter "label=$LABEL" --filter "label=kvs.node=$EXTRA")"
    # shellcheck disable=SC2086
    [[ -z "$old" ]] || docker rm -f $old >/dev/null
    (( KEEP_DATA )) || docker volume rm "$(volume_name "$EXTRA")" >/dev/null 2>&1 || true
else
    remove_store
    (( KEEP_DATA )) || remove_volumes
    for (( i = 1; i <= NODES + ADD_NODE; i++ )); do check_name_free "$(node_name "$i")"; done
    ensure_network
    for (( i = 1; i <= NODES; i++ )); do
        (( i == 1 )) || gap
        log "starting $(node_name "$i") at $(node_addr "$i") (host port $(host_port "$i"))$SHARD_NOTE"
        start_node "$i" 1 "$STORE_VIEW"
    done
fi
if (( ADD_NODE )); then
    (( ONLY_ADD_NODE )) || gap
    log "starting $(node_name "$EXTRA") at $(node_addr "$EXTRA") (host port $(host_port "$EXTRA")) without SHARD_COUNT"
    start_node "$EXTRA" 0 "$STORE_VIEW,$(node_addr "$EXTRA")"
fi

# ---------------------------------------------------------------- wait
LAST=$NODES
(( ADD_NODE )) && LAST=$EXTRA
EXPECTED_VIEW="$(for (( i = 1; i <= LAST; i++ )); do node_addr "$i"; done | sort)"

# Value of a JSON string or array-of-strings field, as "a,b,c" (compact JSON from the node).
json_list() {
    sed -n "s/.*\"$1\":\(\[[^]]*\]\|\"[^\"]*\"\).*/\1/p" | tr -d '"[] '
}
get() { curl -s --max-time 2 "$(url "$1")$2" 2>/dev/null || true; }

if (( ONLY_ADD_NODE )); then
    # The store may have been resharded since it started: expect what node 1 says now.
    EXPECTED_IDS="$(get 1 /key-value-store-shard/shard-ids | json_list shard-ids)"
    [[ -n "$EXPECTED_IDS" ]] || die "$(node_name 1) does not answer at $(url 1); is the store running?"
elif (( WITH_SHARD_COUNT )); then
    EXPECTED_IDS="$(seq -s, 0 $(( SHARDS - 1 )))"
else
    # Without SHARD_COUNT the nodes form one shard, under an id of their choosing: any
    # single id will do, as long as every node gives the same (see node_ready).
    EXPECTED_IDS=""
fi
ROUND_IDS=""  # the single shard id of this round, without SHARD_COUNT

node_ready() {
    local i="$1" body ids view
    body="$(get "$i" /key-value-store-shard/shard-ids)"
    ids="$(json_list shard-ids <<<"$body")"
    if [[ -n "$EXPECTED_IDS" ]]; then
        [[ "$ids" == "$EXPECTED_IDS" ]] || return 1
    else
        [[ -n "$ids" && "$ids" != *,* ]] || return 1
        [[ -n "$ROUND_IDS" ]] || ROUND_IDS="$ids"
        [[ "$ids" == "$ROUND_IDS" ]] || return 1
    fi
    body="$(get "$i" /key-value-store-view)"
    view="$(json_list view <<<"$body" | tr ',' '\n' | sort)"
    [[ "$view" == "$EXPECTED_VIEW" ]] || return 1
}

WANT_IDS="shards $EXPECTED_IDS"
[[ -n "$EXPECTED_IDS" ]] || WANT_IDS="one shard"
log "waiting (at most ${TIMEOUT}s) for every node to agree on $WANT_IDS and a view of $LAST nodes"
start=$SECONDS
while :; do
    pending=()
    ROUND_IDS=""
    for (( i = 1; i <= LAST; i++ )); do
        node_ready "$i" || pending+=("$(node_name "$i")")
    done
    (( ${#pending[@]} == 0 )) && break
    if (( SECONDS - start >= TIMEOUT )); then
        echo "build.sh: the store did not form within ${TIMEOUT}s; not ready: ${pending[*]}" >&2
        for name in "${pending[@]}"; do
            echo "---- docker logs --tail 20 $name" >&2
            docker logs --tail 20 "$name" >&2 || true
        done
        exit 1
    fi
    sleep 0.5
done
log "store ready after $(( SECONDS - start ))s"

# ---------------------------------------------------------------- report
SHARD_SUMMARY="$SHARDS shards"
(( WITH_SHARD_COUNT )) || SHARD_SUMMARY="no SHARD_COUNT (one shard of every node)"
(( ONLY_ADD_NODE )) && SHARD_SUMMARY="shards $EXPECTED_IDS"
W=$(( ${#PREFIX} + ${#LAST} + 2 ))
(( W < 6 )) && W=6
printf '\n%-*s %-21s %-21s %s\n' "$W" NAME ADDRESS HOST-PORT SHARD-ID
for (( i = 1; i <= LAST; i++ )); do
    shard="$(get "$i" /key-value-store-shard/node-shard-id | sed -n 's/.*"shard-id":"\([^"]*\)".*/\1/p')"
    printf '%-*s %-21s %-21s %s\n' "$W" "$(node_name "$i")" "$(node_addr "$i")" \
        "${HOST_IP}:$(host_port "$i")" "${shard:--}"
done
cat <<EOF

network $NETWORK ($SUBNET), image $IMAGE, $SHARD_SUMMARY, API_FORMAT=$FORMAT, node port $NODE_PORT

Try:
  curl -s -X PUT -H 'Content-Type: application/json' \\
       -d '{"value":"hello","causal-metadata":""}' $(url 1)/key-value-store/greeting
  curl -s $(url 2)/key-value-store/greeting
  curl -s $(url 1)/key-value-store-shard/shard-ids
EOF
if (( ADD_NODE )); then
    cat <<EOF
  # put the new node into shard 0:
  curl -s -X PUT -H 'Content-Type: application/json' \\
       -d '{"socket-address":"$(node_addr "$EXTRA")"}' $(url 1)/key-value-store-shard/add-member/0
EOF
fi
echo "Stop and remove everything: ./clean.sh (./clean.sh --keep-data keeps the volumes for ./build.sh --keep-data)"
