# kvs node image: one static binary in an empty image.
#
# Build the binary first, then the image (the build context is only that binary,
# see .dockerignore):
#   cargo build --release          # -> target/x86_64-unknown-linux-gnu/release/kvs, kvsctl
#   docker build -t kvs-image .    # or: docker build -t assignment4-img .
#
# .cargo/config.toml links glibc statically, so nothing else is needed at run time.
# Configuration is by environment: SOCKET_ADDRESS, VIEW, SHARD_COUNT, API_FORMAT,
# BIND_ADDRESS, KVS_DATA_DIR, KVS_SYNC, RUST_LOG (see README.md and docs/docker.md).
FROM scratch
COPY target/x86_64-unknown-linux-gnu/release/kvs /kvs
# The command-line client, for `docker exec` / `kubectl exec` (add-member, reshard, status).
COPY target/x86_64-unknown-linux-gnu/release/kvsctl /kvsctl
# The data directory, writable by the node's user; a volume mounted here starts as a copy
# of it (same owner). The image has no shell to make it, so it is copied from the context.
COPY --chown=65534:65534 docker/data /data
ENV KVS_DATA_DIR=/data
USER 65534:65534
# HTTP on TCP 8080, gossip on UDP 8080 (the port of SOCKET_ADDRESS).
EXPOSE 8080/tcp 8080/udp
# Ready: the node has a shard map and holds its shard's data (docs/docker.md). The image has
# no shell and no curl: the binary probes itself.
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=3 CMD ["/kvs", "healthcheck"]
ENTRYPOINT ["/kvs"]
