# Container image of the gateway.
#
#   docker build -t gateway .
#   docker run --rm -p 8080:8080 --security-opt seccomp=conf/seccomp.json \
#       -v "$PWD/my.conf:/etc/gateway/gateway.conf:ro" gateway
#
# Docker 25+ and containerd 2.0 block io_uring in their default seccomp
# profiles: without the --security-opt above the gateway exits at once with a
# line saying so. See README.md, "Running in a container".

# ---- build stage: compiler, meson and the -dev packages
FROM debian:bookworm-slim AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        gcc libc6-dev pkg-config meson ninja-build liburing-dev libconfig-dev libhiredis-dev \
        libmbedtls-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN meson setup /build --buildtype=release \
 && meson compile -C /build gateway \
 && install -D -m 0755 -s /build/gateway/gateway /out/gateway

# ---- runtime stage: the binary, its shared libraries and the CA bundle that
# upstreams.tls verifies against by default
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        liburing2 libconfig9 libhiredis0.14 libmbedtls14 libmbedx509-1 libmbedcrypto7 \
        ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin gateway
COPY --from=build /out/gateway /usr/local/bin/gateway
COPY conf/gateway.conf /etc/gateway/gateway.conf
# Numeric, so that Kubernetes' runAsNonRoot can check it without a passwd lookup.
USER 10001:10001
EXPOSE 8080 9901
STOPSIGNAL SIGTERM
# No curl in the slim image: bash's /dev/tcp asks the admin listener (which
# conf/gateway.conf binds to 127.0.0.1:9901 inside the container) for /healthz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9901 && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && read -r -t 2 line <&3 && [[ $line == HTTP/1.?' 200 '* ]]"]
ENTRYPOINT ["gateway"]
CMD ["-c", "/etc/gateway/gateway.conf"]
