# kvs node image: one static binary in an empty image.
#
# Build the binary first, then the image (the build context is only that binary,
# see .dockerignore):
#   cargo build --release          # -> target/x86_64-unknown-linux-gnu/release/kvs
#   docker build -t kvs-image .    # or: docker build -t assignment4-img .
#
# .cargo/config.toml links glibc statically, so nothing else is needed at run time.
# Configuration is by environment: SOCKET_ADDRESS, VIEW, SHARD_COUNT, API_FORMAT,
# BIND_ADDRESS, RUST_LOG (see docs/docker.md).
FROM scratch
COPY target/x86_64-unknown-linux-gnu/release/kvs /kvs
USER 65534:65534
# HTTP on TCP 8080, gossip on UDP 8080 (the port of SOCKET_ADDRESS).
EXPOSE 8080/tcp 8080/udp
ENTRYPOINT ["/kvs"]
