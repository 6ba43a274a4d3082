#!/usr/bin/env bash
# docker-run.sh: build the gateway image and run it as a long-lived container.
# An example to copy and adapt, not something the tests or CI run.
#
#   scripts/docker-run.sh                  # with conf/gateway.conf
#   scripts/docker-run.sh path/to/my.conf  # with your own config
#
# Once it runs:
#   reload   docker kill -s HUP gateway
#            Edit the mounted file on the host first. The gateway checks the new file
#            completely; a bad one keeps the old config serving and logs FILE:LINE: reason
#            (docker logs gateway). Changes to workers, listen and admin need a restart.
#            Editors that write a new file (vim, sed -i) give it a new inode, and a
#            single-file bind mount keeps showing the old one: edit in place, or mount the
#            config's directory instead of the file.
#   drain    docker stop gateway
#            Docker sends SIGTERM (the image's STOPSIGNAL): the gateway stops accepting,
#            lets requests in flight finish for up to drain_timeout_ms, then exits 0.
#            Docker sends SIGKILL after --stop-timeout, hence 15 s below against the
#            config's default drain_timeout_ms of 10000. Raise both together.
#   logs     docker logs gateway   (access log on stdout, events on stderr)
#   health   docker inspect --format '{{.State.Health.Status}}' gateway
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The config, as an absolute path (docker -v needs one). A relative $1 is taken from
# where the script was started.
conf=${1:-$root/conf/gateway.conf}
if [ ! -f "$conf" ]; then
    echo "docker-run.sh: no config file at $conf" >&2
    exit 1
fi
conf=$(cd "$(dirname "$conf")" && pwd)/$(basename "$conf")

# From here on paths are relative to the repository: the build context is ".", and
# conf/seccomp.json is read by the docker CLI on this machine.
cd "$root"

docker build -t gateway .

# The options both docker runs below share:
#   seccomp   Docker 25+ blocks io_uring in its default profile; conf/seccomp.json is a
#             deny-by-default profile that allows io_uring and what else the gateway
#             needs. Without it the gateway exits at start ("io_uring_setup was refused").
#   -v ...:ro the config, where the image's CMD (-c /etc/gateway/gateway.conf) reads it.
common=(
    --security-opt seccomp=conf/seccomp.json
    --security-opt no-new-privileges
    --cap-drop ALL
    --read-only
    -v "$conf:/etc/gateway/gateway.conf:ro"
)

# Check the config with the image's own binary before touching a running container:
# gateway -t exits 1 and prints FILE:LINE: reason for a bad file. (The image's ENTRYPOINT
# is the gateway, so the words after the image name are its arguments.)
docker run --rm "${common[@]}" gateway -t -c /etc/gateway/gateway.conf

# Replace a container from an earlier run. docker stop drains it first, so requests in
# flight finish; new connections are refused until the new container listens. (For a
# config change alone, the reload above keeps serving without that gap.)
if docker container inspect gateway >/dev/null 2>&1; then
    docker stop gateway >/dev/null
    docker rm gateway >/dev/null
fi

# --stop-timeout 15          longer than drain_timeout_ms (10 s by default), else Docker
#                            SIGKILLs the gateway before requests in flight finish
# --ulimit nofile=...        the gateway raises its soft open-file limit to the hard one and
#                            needs about two descriptors per connection (max_connections
#                            10000 -> ~21000); Docker's default may be lower
# --restart unless-stopped   back after a crash or a reboot of the host, but not after
#                            docker stop
# -p 8080:8080               the listen address of the config ("0.0.0.0:8080")
# -p 127.0.0.1:9901:9901     the admin listener (/metrics, /healthz, /readyz, /config; no
#                            authentication), published on the host's loopback only. It is
#                            reachable only when the config binds admin to "0.0.0.0:9901" inside
#                            the container: conf/gateway.conf binds 127.0.0.1:9901, which is
#                            enough for the image's HEALTHCHECK but not for a scraper outside.
#                            The HEALTHCHECK asks port 9901: keep that port.
# --read-only, --cap-drop ALL, no-new-privileges
#                            the gateway writes no files and binds ports above 1024, so it
#                            needs neither a writable root nor any capability
docker run -d --name gateway \
    "${common[@]}" \
    --stop-timeout 15 \
    --ulimit nofile=65536:65536 \
    --restart unless-stopped \
    -p 8080:8080 \
    -p 127.0.0.1:9901:9901 \
    gateway

echo "docker-run.sh: gateway started; docker logs -f gateway to follow it"
