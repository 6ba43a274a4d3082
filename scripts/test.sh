#!/usr/bin/env bash
# test.sh: every test, as CI runs it (.ci/run calls this and nothing else).
#
#   scripts/test.sh
#
# Stages, each run even when an earlier one failed:
#   1. packages   scripts/deps.sh build test
#   2. build      build-asan/: debug build with ASan + UBSan
#   3. unit       meson test -C build-asan (one result per test program)
#   4. integration  pytest test/integration against build-asan/gateway/gateway
#   5. fuzz       build-fuzz/test/fuzz_parse and fuzz_cache, FUZZ_SECONDS (30) in
#                 all; only when clang with its libFuzzer runtime is installed
#   6. release    build-release/: the gateway as run.sh and the Dockerfile build it
# The last line is "N passed, N failed": unit test programs, pytest tests,
# each fuzz target's run and the release build as one test each, and one failure for
# an ASan build that did not finish.
# Exits 1 if anything failed or if no test ran at all.
#
# Environment: FUZZ_SECONDS (30); PYTEST_ADDOPTS is passed to pytest as usual
# (e.g. PYTEST_ADDOPTS="-k proxy -x").
set -uo pipefail # not -e: a failing stage must not stop the others

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 1

fuzz_seconds=${FUZZ_SECONDS:-30}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

passed=0
failed=0
results=()
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Ctrl-C stops the whole run, not only the stage it interrupted.
trap 'echo "test.sh: interrupted" >&2; exit 130' INT

banner() { printf '\n==== test.sh: %s ====\n' "$*"; }

# count NAME PASSED FAILED SKIPPED [NOTE]
count() {
    passed=$((passed + $2))
    failed=$((failed + $3))
    # Not in "N passed, N failed" form: only the last line of the run may be.
    results+=("$(printf '%-12s passed %-4d failed %-4d skipped %-4d %s' "$1" "$2" "$3" "$4" "${5:-}")")
}

# setup_dir DIR MESON_ARGS...: configure DIR, or reconfigure it if it exists
# (wiping it when the old one cannot be reconfigured, e.g. another meson).
setup_dir() {
    local dir=$1
    shift
    if [ -f "$dir/meson-private/coredata.dat" ]; then
        meson setup --reconfigure "$dir" "$@" || meson setup --wipe "$dir" "$@"
    else
        meson setup "$dir" "$@"
    fi
}

# drop_stale DIR: after a failed build, delete every linked output that is out
# of date, so no later stage runs an old binary as if it were this tree's.
drop_stale() {
    ninja -C "$1" -n 2>/dev/null | sed -n 's/^\[[0-9/]*\] Linking \(static \)\{0,1\}target //p' |
        while read -r out; do
            rm -f -- "$1/$out"
        done
}

python=/usr/bin/python3
[ -x "$python" ] || python=$(command -v python3)

# ---------------------------------------------------------------- packages
banner "packages (scripts/deps.sh build test)"
if ! scripts/deps.sh build test; then
    echo "test.sh: installing packages failed; going on with what is installed" >&2
fi

# ------------------------------------------------------------------- build
banner "build: build-asan (debug, -Db_sanitize=address,undefined)"
built=0
if setup_dir build-asan -Db_sanitize=address,undefined -Db_lundef=false --buildtype=debug; then
    if ninja -C build-asan -k 0; then
        built=1
    else
        count build 0 1 0 "ninja -C build-asan failed; see the errors above"
        drop_stale build-asan
    fi
else
    count build 0 1 0 "meson setup build-asan failed"
fi

# -------------------------------------------------------------------- unit
banner "unit: meson test -C build-asan"
testlog=build-asan/meson-logs/testlog.json
if [ -f build-asan/build.ninja ]; then
    # After a failed build meson test refuses to run anything while one test
    # program is missing: run those that were built, count the others failed.
    only=()
    unbuilt=0
    if [ "$built" = 0 ]; then
        while read -r state name; do
            if [ "$state" = built ]; then only+=("$name"); else unbuilt=$((unbuilt + 1)); fi
        done < <(meson introspect --tests build-asan | "$python" -c '
import json, os, sys
for t in json.load(sys.stdin):
    print("built" if os.path.exists(t["cmd"][0]) else "missing", t["name"])')
        echo "test.sh: $unbuilt unit test program(s) did not build; running the ${#only[@]} that did"
    fi
    rm -f "$testlog"
    rc=0
    if [ "$built" = 1 ] || [ ${#only[@]} -gt 0 ]; then
        meson test -C build-asan --no-rebuild --print-errorlogs "${only[@]+"${only[@]}"}"
        rc=$?
    fi
    # One JSON object per test program; result is OK, FAIL, SKIP, TIMEOUT,
    # ERROR, EXPECTEDFAIL, UNEXPECTEDPASS or INTERRUPT.
    read -r p f s < <("$python" - "$testlog" <<'EOF'
import json, sys
ok = bad = skip = 0
try:
    with open(sys.argv[1]) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line).get("result")
            if r in ("OK", "EXPECTEDFAIL"):
                ok += 1
            elif r == "SKIP":
                skip += 1
            else:
                bad += 1
except (OSError, ValueError):
    pass
print(ok, bad, skip)
EOF
    )
    note=
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        f=1
        note="meson test exited $rc"
    fi
    if [ "$unbuilt" -gt 0 ]; then
        f=$((f + unbuilt))
        note="$note${note:+; }$unbuilt not built"
    fi
    count unit "$p" "$f" "$s" "$note"
else
    echo "test.sh: build-asan is not configured; no unit tests"
    count unit 0 1 0 "not run: build-asan not configured"
fi

# ------------------------------------------------------------- integration
banner "integration: pytest test/integration (GATEWAY_BIN=build-asan/gateway/gateway)"
junit=$tmp/pytest.xml
GATEWAY_BIN=$root/build-asan/gateway/gateway \
    "$python" -m pytest -q -p no:cacheprovider --junitxml="$junit" test/integration
rc=$?
read -r p f s < <("$python" - "$junit" <<'EOF'
import sys
import xml.etree.ElementTree as ET
ok = bad = skip = 0
try:
    root = ET.parse(sys.argv[1]).getroot()
    for suite in root.iter("testsuite"):
        n = int(suite.get("tests", 0))
        b = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        k = int(suite.get("skipped", 0))
        ok += n - b - k
        bad += b
        skip += k
except (OSError, ET.ParseError, ValueError):
    pass
print(ok, bad, skip)
EOF
)
# 0 all passed, 1 some failed, 5 none collected (the zero-test check at the
# end catches a run of nothing); 2 interrupted, 3 internal error, 4 usage.
note=
if [ "$rc" -eq 5 ]; then
    note="no tests collected"
elif [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    f=1
    note="pytest exited $rc"
fi
count integration "$p" "$f" "$s" "$note"

# -------------------------------------------------------------------- fuzz
banner "fuzz: build-fuzz/test/fuzz_parse and fuzz_cache, ${fuzz_seconds} s in all"
# The libFuzzer runtime comes with libclang-rt-dev, which clang only
# recommends: check that clang can link a fuzzer before counting on it.
if ! command -v clang >/dev/null 2>&1; then
    echo "test.sh: clang is not installed; fuzz stage skipped"
    count fuzz 0 0 1 "clang not installed"
elif ! printf 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }\n' |
    clang -x c -fsanitize=fuzzer,address,undefined -o "$tmp/probe" - 2>/dev/null; then
    echo "test.sh: clang cannot link a libFuzzer binary (install libclang-rt-dev); fuzz stage skipped"
    count fuzz 0 0 1 "no libFuzzer runtime"
else
    # b_sanitize and fuzzer-no-link instrument the parser library itself, not
    # only fuzz_parse.c, so that libFuzzer sees its coverage and ASan its
    # memory accesses. Only the fuzz target is built here.
    if CC=clang CFLAGS=-fsanitize=fuzzer-no-link \
        setup_dir build-fuzz -Dfuzz=true -Db_sanitize=address,undefined -Db_lundef=false &&
        ninja -C build-fuzz test/fuzz_parse test/fuzz_cache; then
        # New inputs go to a scratch corpus; test/fuzz/corpus (if any) only
        # seeds the parser's run, so the source tree is never written to.
        # Crash inputs land in build-fuzz/. The parser gets two thirds of the
        # time, the cache's readers (Redis values, cache fields) the rest.
        for target in fuzz_parse fuzz_cache; do
            mkdir -p "$tmp/corpus-$target"
            seeds=()
            secs=$((fuzz_seconds / 3))
            if [ "$target" = fuzz_parse ]; then
                secs=$((fuzz_seconds - fuzz_seconds / 3))
                [ -d test/fuzz/corpus ] && seeds=(test/fuzz/corpus)
            fi
            [ "$secs" -ge 1 ] || secs=1
            if build-fuzz/test/$target -max_total_time="$secs" -timeout=10 \
                -artifact_prefix=build-fuzz/ -verbosity=0 -print_final_stats=1 \
                "$tmp/corpus-$target" "${seeds[@]+"${seeds[@]}"}"; then
                count fuzz 1 0 0
            else
                count fuzz 0 1 0 "$target failed; its input is in build-fuzz/ (crash-*, leak-*, timeout-*)"
            fi
        done
    else
        count fuzz 0 1 0 "building build-fuzz/test/fuzz_parse and fuzz_cache failed"
    fi
fi

# ----------------------------------------------------------------- release
# The build run.sh and the Dockerfile make: -O3 finds warnings (hence, with
# werror, errors) that the -O0 debug build above does not.
banner "release: build-release/gateway/gateway (--buildtype=release)"
if setup_dir build-release --buildtype=release && ninja -C build-release gateway/gateway; then
    count release 1 0 0
else
    count release 0 1 0 "the release build of the gateway failed"
fi

# ----------------------------------------------------------------- summary
banner "summary"
for line in "${results[@]}"; do
    echo "  $line"
done
if [ $((passed + failed)) -eq 0 ]; then
    echo "test.sh: no test ran" >&2
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ $((passed + failed)) -gt 0 ]
