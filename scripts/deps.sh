#!/usr/bin/env bash
# deps.sh: install the Debian packages a stage needs, only those missing.
#
#   scripts/deps.sh build    compiler, meson, ninja, liburing, libconfig, hiredis, mbedtls, python3
#   scripts/deps.sh test     build + pytest, prometheus-client, yaml, curl, redis-server, strace; clang +
#                            its runtimes for the fuzzer if the archive has them (optional)
#   scripts/deps.sh bench    build + nginx-light, haproxy, wrk
#
# Several stages may be named at once (scripts/deps.sh build test). Nothing is
# done, not even `apt-get update`, when every package is already installed.
# Runs apt-get as root, or through sudo when not root. Debian bookworm.
set -euo pipefail

build_pkgs=(build-essential pkg-config meson ninja-build liburing-dev libconfig-dev libhiredis-dev
            libmbedtls-dev python3)
# python3-yaml reads scripts/k8s/gateway.yaml and strace lists the gateway's system
# calls against conf/seccomp.json (test/integration/test_95_container.py); ca-certificates is
# the default CA bundle of upstreams.tls, which `gateway -T` loads in test_03.
test_pkgs=(python3-pytest python3-prometheus-client python3-yaml curl redis-server strace
           ca-certificates)
# clang builds test/fuzz_parse (libFuzzer + ASan/UBSan); on bookworm the
# fuzzer and sanitizer runtimes are in libclang-rt-dev, which clang only
# recommends. Optional: the fuzz stage is skipped without them.
test_optional_pkgs=(clang libclang-rt-dev)
bench_pkgs=(nginx-light haproxy wrk)

usage() {
    echo "usage: $0 build|test|bench [...]" >&2
    exit 2
}

[ $# -ge 1 ] || usage
want=()
optional=()
for stage in "$@"; do
    case "$stage" in
    build) want+=("${build_pkgs[@]}") ;;
    test) want+=("${build_pkgs[@]}" "${test_pkgs[@]}"); optional+=("${test_optional_pkgs[@]}") ;;
    bench) want+=("${build_pkgs[@]}" "${bench_pkgs[@]}") ;;
    -h | --help) usage ;;
    *) echo "$0: unknown set '$stage'" >&2; usage ;;
    esac
done

# installed PKG: true if dpkg has PKG fully installed ("install ok installed",
# also "hold ok installed"); false for config-files, half-installed, unknown.
installed() {
    local status
    status=$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) || return 1
    [[ "$status" == *" ok installed" ]]
}

missing() {
    local p
    for p in "$@"; do
        installed "$p" || echo "$p"
    done | sort -u
}

mapfile -t need < <(missing "${want[@]}")
mapfile -t need_opt < <(missing "${optional[@]+"${optional[@]}"}")

if [ ${#need[@]} -eq 0 ] && [ ${#need_opt[@]} -eq 0 ]; then
    echo "deps: all packages for '$*' are installed"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "deps: missing packages (${need[*]} ${need_opt[*]}) and no apt-get here;" \
        "install them with your package manager" >&2
    exit 1
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "deps: need root to install: ${need[*]} ${need_opt[*]} (no sudo found)" >&2
        exit 1
    fi
    as_root=(sudo)
fi
apt_get() {
    "${as_root[@]+"${as_root[@]}"}" env DEBIAN_FRONTEND=noninteractive apt-get "$@"
}

echo "deps: installing ${need[*]} ${need_opt[*]}"
# A source that cannot be reached fails update but may not matter: go on, and
# let install say whether the packages could be had.
apt_get update -q || echo "deps: apt-get update failed; trying to install anyway" >&2
if [ ${#need[@]} -gt 0 ]; then
    apt_get install -y -q --no-install-recommends "${need[@]}"
fi
if [ ${#need_opt[@]} -gt 0 ]; then
    if ! apt_get install -y -q --no-install-recommends "${need_opt[@]}"; then
        echo "deps: optional packages not installed (${need_opt[*]}); the fuzz stage will be skipped" >&2
    fi
fi
