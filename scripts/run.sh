#!/usr/bin/env bash
# run.sh: build the gateway (release) and run it in the foreground.
#
#   scripts/run.sh [--no-demo] [CONFIG]        CONFIG defaults to conf/gateway.conf
#
# Installs missing build packages (scripts/deps.sh build), configures and
# builds build/ with --buildtype=release, starts the demo upstream
# (scripts/demo_upstream.py) on 127.0.0.1:9000 unless --no-demo is given or
# something already listens there, then runs build/gateway/gateway -c CONFIG.
# Ctrl-C or SIGTERM drains the gateway (a second one stops it at once);
# SIGHUP reloads its config. The demo upstream is stopped when the gateway
# exits, and the script exits with the gateway's status.
set -euo pipefail

usage() {
    echo "usage: scripts/run.sh [--no-demo] [CONFIG]   (CONFIG defaults to conf/gateway.conf)" >&2
    exit 2
}

demo=1
conf=
for arg in "$@"; do
    case "$arg" in
    --no-demo) demo=0 ;;
    -h | --help) usage ;;
    -*) echo "run.sh: unknown option $arg" >&2; usage ;;
    *) [ -z "$conf" ] || usage; conf=$arg ;;
    esac
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -n "$conf" ]; then
    # A path the user typed is relative to where they are, not to the repo.
    [ -f "$conf" ] || { echo "run.sh: no such config file: $conf" >&2; exit 2; }
    conf=$(cd "$(dirname "$conf")" && pwd)/$(basename "$conf")
fi
cd "$root"
conf=${conf:-conf/gateway.conf}

python=/usr/bin/python3
[ -x "$python" ] || python=$(command -v python3)

scripts/deps.sh build

if [ -f build/meson-private/coredata.dat ]; then
    # --wipe when the old directory cannot be reconfigured (another meson version).
    meson setup --reconfigure build --buildtype=release ||
        meson setup --wipe build --buildtype=release
else
    meson setup build --buildtype=release
fi
ninja -C build

listening() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

demo_pid=
gw_pid=
cleanup() {
    if [ -n "$demo_pid" ]; then
        kill -TERM "$demo_pid" 2>/dev/null || true
        wait "$demo_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

if [ "$demo" = 1 ]; then
    if listening 127.0.0.1 9000; then
        echo "run.sh: something already listens on 127.0.0.1:9000; using it as the upstream"
    else
        "$python" scripts/demo_upstream.py --host 127.0.0.1 --port 9000 --exit-with-parent &
        demo_pid=$!
        for _ in $(seq 50); do
            listening 127.0.0.1 9000 && break
            kill -0 "$demo_pid" 2>/dev/null || { demo_pid=; break; }
            sleep 0.1
        done
        [ -n "$demo_pid" ] || echo "run.sh: the demo upstream did not start; continuing without it" >&2
    fi
fi

# The gateway gets its own session, so a Ctrl-C in the terminal reaches only
# this script, which forwards it once: the gateway reads a second SIGINT or
# SIGTERM as "stop now, don't drain".
forward() {
    [ -z "$gw_pid" ] || kill -"$1" "$gw_pid" 2>/dev/null || true
}
trap 'forward TERM' TERM
trap 'forward INT' INT
trap 'forward HUP' HUP

setsid build/gateway/gateway -c "$conf" &
gw_pid=$!

set +e
for _ in $(seq 100); do
    kill -0 "$gw_pid" 2>/dev/null || break
    if [ "$conf" = conf/gateway.conf ]; then
        if listening 127.0.0.1 8080 && listening 127.0.0.1 9901; then
            echo "run.sh: gateway listening on http://0.0.0.0:8080 (admin http://127.0.0.1:9901);" \
                "try: curl http://127.0.0.1:8080/hello and curl http://127.0.0.1:9901/metrics;" \
                "Ctrl-C stops it"
            break
        fi
    else
        echo "run.sh: gateway running with $conf (pid $gw_pid); Ctrl-C stops it"
        break
    fi
    sleep 0.1
done

while kill -0 "$gw_pid" 2>/dev/null; do
    wait "$gw_pid"
done
wait "$gw_pid"
status=$?
exit "$status"
