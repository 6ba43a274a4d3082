"""Container packaging: conf/seccomp.json, the Dockerfile, scripts/docker-run.sh and
scripts/k8s/gateway.yaml. There is no Docker here, so the checks are the ones that can be made
without it:

- seccomp: the profile denies by default and allows io_uring, and it allows every system call
  the gateway makes (strace -f -c) while it proxies, serves /metrics, reloads and drains;
- Dockerfile: its instructions, then its build stage run the way the image runs it (the same
  meson commands, in a copy of the tree) and the runtime stage's packages checked against
  the shared libraries of the binary that build made;
- docker-run.sh and the Kubernetes manifest: they parse, and agree with the config they
  ship or mount (ports, drain time, config path); the manifest's config passes `gateway -t`.
"""

import errno
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from gwtest import Arr, gateway_env, gateway_settings, render_config, \
    route_block, sanitizer_report, upstream_block
from upstream import Upstream, free_port

try:
    import yaml  # python3-yaml (scripts/deps.sh test)
except ImportError:  # pragma: no cover - reported by the tests that need it
    yaml = None

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
SECCOMP = REPO / "conf" / "seccomp.json"
EXAMPLE_CONF = REPO / "conf" / "gateway.conf"
DOCKER_RUN = REPO / "scripts" / "docker-run.sh"
K8S = REPO / "scripts" / "k8s" / "gateway.yaml"

DEFAULT_ADMIN = "127.0.0.1:9901"
DEFAULT_DRAIN_MS = 10000


# -- libconfig, just enough to read listen, admin and drain_timeout_ms ------------------------


def strip_comments(text):
    """libconfig text without its #, // and /* */ comments (strings kept as they are)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif c == "#" or text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def read_conf(text):
    """listen addresses, admin address and drain_timeout_ms of a gateway config."""
    t = strip_comments(text)
    m = re.search(r"\blisten\s*[=:]\s*[(\[](.*?)[)\]]\s*;", t, re.S)
    assert m, "no listen = ( ... ); in the config"
    listen = re.findall(r'\baddress\s*[=:]\s*"([^"]*)"', m.group(1))
    assert listen, "no listen address in the config"
    m = re.search(r"\badmin\s*[=:]\s*\{(.*?)\}", t, re.S)
    admin = DEFAULT_ADMIN
    if m:
        a = re.search(r'\baddress\s*[=:]\s*"([^"]*)"', m.group(1))
        admin = a.group(1) if a else DEFAULT_ADMIN
    m = re.search(r"\bdrain_timeout_ms\s*[=:]\s*(\d+)", t)
    drain = int(m.group(1)) if m else DEFAULT_DRAIN_MS
    return SimpleNamespace(listen=listen, admin=admin, drain_timeout_ms=drain)


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def host_of(addr):
    return addr.rsplit(":", 1)[0].strip("[]")


# -- seccomp ----------------------------------------------------------------------------------

DENY_ACTIONS = ("SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD")

# Calls the profile answers ENOSYS on purpose, so that the C library falls back to another
# call that the profile can filter: clone3 passes its flags in memory, clone in a register.
ENOSYS_FALLBACKS = {"clone3": "clone"}

# The flags glibc's pthread_create passes to clone, and the namespace flags a thread never
# needs (what the clone rule exists to refuse).
CLONE_THREAD_FLAGS = (0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000 | 0x80000 | 0x100000
                      | 0x200000)  # VM FS FILES SIGHAND THREAD SYSVSEM SETTLS PARENT_SETTID
#                                    CHILD_CLEARTID
CLONE_NAMESPACE_FLAGS = {"CLONE_NEWNS": 0x20000, "CLONE_NEWCGROUP": 0x02000000,
                         "CLONE_NEWUTS": 0x04000000, "CLONE_NEWIPC": 0x08000000,
                         "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
                         "CLONE_NEWNET": 0x40000000}


def load_profile():
    with open(SECCOMP) as f:
        return json.load(f)


def allowed_syscalls(profile):
    """Names some SCMP_ACT_ALLOW rule lets through (with or without argument filters)."""
    names = set()
    for rule in profile.get("syscalls", []):
        if rule.get("action") == "SCMP_ACT_ALLOW":
            names.update(rule.get("names", []))
    return names


def rules_for(profile, name):
    return [r for r in profile.get("syscalls", []) if name in r.get("names", [])]


def clone_admits(profile, flags):
    """Whether some ALLOW rule for clone lets these flags (argument 0) through."""
    for rule in rules_for(profile, "clone"):
        if rule.get("action") != "SCMP_ACT_ALLOW":
            continue
        ok = True
        for arg in rule.get("args") or []:
            if arg.get("index") != 0:
                continue
            op, value, two = arg.get("op"), arg.get("value", 0), arg.get("valueTwo", 0)
            if op == "SCMP_CMP_MASKED_EQ":
                ok = ok and (flags & value) == two
            elif op == "SCMP_CMP_EQ":
                ok = ok and flags == value
            else:
                raise AssertionError("clone rule with an op this test does not model: %s" % op)
        if ok:
            return True
    return False


def test_seccomp_profile_denies_by_default_and_allows_io_uring():
    """conf/seccomp.json is JSON, refuses what it does not list, allows the three io_uring
    calls, lets glibc's thread-creating clone through while refusing clone with any
    namespace flag, and answers clone3 with ENOSYS (so that glibc uses clone)."""
    profile = load_profile()
    assert profile.get("defaultAction") in DENY_ACTIONS, \
        "defaultAction %r is not a deny action" % profile.get("defaultAction")
    allow_rules = [r for r in profile.get("syscalls", []) if r.get("action") == "SCMP_ACT_ALLOW"]
    assert any({"io_uring_setup", "io_uring_enter", "io_uring_register"} <= set(r["names"])
               for r in allow_rules), "no ALLOW rule names all three io_uring calls"
    for name in ("io_uring_setup", "io_uring_enter", "io_uring_register"):
        assert not any(r.get("action") != "SCMP_ACT_ALLOW" for r in rules_for(profile, name)), \
            "%s also has a rule that is not ALLOW" % name
    assert clone_admits(profile, CLONE_THREAD_FLAGS), \
        "the clone rule refuses the flags of pthread_create"
    for flag, bit in CLONE_NAMESPACE_FLAGS.items():
        assert not clone_admits(profile, CLONE_THREAD_FLAGS | bit), \
            "clone with %s is allowed" % flag
    for name, fallback in ENOSYS_FALLBACKS.items():
        rules = rules_for(profile, name)
        assert rules and all(r.get("action") == "SCMP_ACT_ERRNO"
                             and r.get("errnoRet") == errno.ENOSYS for r in rules), \
            "%s must be answered ENOSYS so the C library falls back to %s" % (name, fallback)


def is_sanitized(binary):
    with open(binary, "rb") as f:
        return b"__asan_init" in f.read()


def strace_summary_names(path):
    """System call names in the tables of `strace -c -o FILE` (every personality)."""
    names = set()
    row = re.compile(r"^\s*\d+\.\d+\s+\d+\.\d+\s+.*?\s([a-z_][a-z0-9_]*)\s*$")
    for line in Path(path).read_text().splitlines():
        m = row.match(line)
        if m and m.group(1) != "total":
            names.add(m.group(1))
    return names


def _get(port, path, body=None, method="GET", timeout=5):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def _generation(admin_port):
    status, body = _get(admin_port, "/metrics")
    assert status == 200
    m = re.search(r"^gateway_config_generation (\S+)$", body.decode(), re.M)
    return float(m.group(1)) if m else None


def _child_of(pid, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            kids = Path("/proc/%d/task/%d/children" % (pid, pid)).read_text().split()
        except OSError:
            kids = []
        if kids:
            return int(kids[0])
        time.sleep(0.05)
    raise AssertionError("strace (pid %d) has no child process" % pid)


def trace_gateway(binary, workdir):
    """Runs binary under `strace -f -c` through start, proxying (GETs on new and on pooled
    upstream connections, a 1 MiB upload and a 1 MiB download, which go by splice), /metrics, a SIGHUP reload and a SIGTERM
    drain. Returns the set of system call names strace counted."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (scripts/deps.sh test installs it)")
    up = Upstream("app").start()
    try:
        port, admin_port = free_port(), free_port()
        while admin_port == port:
            admin_port = free_port()
        route = route_block("default", "app")
        route["rate_limit"] = {"rate": 1000.0, "burst": 1000, "key": "client_ip"}
        # workers = 0: the CPU count comes from the affinity mask and cgroup cpu.max, as in
        # a container.
        settings = gateway_settings(port, admin_port,
                                    [upstream_block("app", up.addr, breaker={"failures": 5})],
                                    [route], workers=0, drain_timeout_ms=2000,
                                    trusted_proxies=Arr(["127.0.0.1"]))
        conf = workdir / "strace.conf"
        conf.write_text(render_config(settings))
        summary = workdir / "strace.summary"
        stderr_path = workdir / "strace.stderr"
        env = gateway_env()
        # LeakSanitizer stops the world with ptrace at exit, which it cannot do under
        # strace (it dies with "does not work under ptrace"): leaks are the other tests'
        # job. The ASan build makes a few calls the release build does not (readlink,
        # sigaltstack, sched_getaffinity, open, getpid, ...); the profile allows all of
        # them, so no call is excused here for being the sanitizer's.
        env["ASAN_OPTIONS"] = (env.get("ASAN_OPTIONS", "") + ":detect_leaks=0").lstrip(":")
        with open(workdir / "strace.stdout", "wb") as out, open(stderr_path, "wb") as err:
            proc = subprocess.Popen(["strace", "-f", "-qq", "-c", "-o", str(summary),
                                     str(binary), "-c", str(conf)],
                                    stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                    cwd=str(workdir))
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    text = stderr_path.read_text(errors="replace")
                    if "ptrace" in text.lower() and not summary.exists():
                        pytest.skip("strace cannot trace here: %s" % text.strip()[:300])
                    raise AssertionError("gateway under strace exited with %s at start:\n%s"
                                         % (proc.returncode, text))
                try:
                    if _get(admin_port, "/healthz", timeout=1)[0] == 200:
                        break
                except (OSError, http.client.HTTPException):
                    pass
                assert time.monotonic() < deadline, "gateway under strace not ready in 30 s:\n" \
                    + stderr_path.read_text(errors="replace")
                time.sleep(0.1)
            gw_pid = _child_of(proc.pid)

            # Several connections, so that each worker reuses a pooled upstream connection
            # at least once (the reuse path peeks at the idle connection first).
            for _ in range(8):
                assert _get(port, "/ok") == (200, b"ok")
            status, body = _get(port, "/upload", body=b"x" * (1 << 20), method="POST")
            assert status == 200 and json.loads(body)["length"] == 1 << 20
            status, body = _get(port, "/size/1048576")
            assert status == 200 and len(body) == 1 << 20
            before = _generation(admin_port)
            os.kill(gw_pid, signal.SIGHUP)
            deadline = time.monotonic() + 10
            while _generation(admin_port) == before:
                assert time.monotonic() < deadline, "SIGHUP did not load a new generation"
                time.sleep(0.05)
            assert _get(port, "/ok") == (200, b"ok")
            os.kill(gw_pid, signal.SIGTERM)
            rc = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    finally:
        up.stop()
    text = stderr_path.read_text(errors="replace")
    assert rc == 0, "gateway under strace exited with %d after SIGTERM:\n%s" % (rc, text)
    san = sanitizer_report(text)
    assert not san, "sanitizer report: %s" % san
    names = strace_summary_names(summary)
    assert "io_uring_setup" in names and "io_uring_enter" in names, \
        "strace summary has no io_uring calls; summary:\n" + summary.read_text()
    return names


def check_profile_covers(names, binary):
    profile = load_profile()
    allowed = allowed_syscalls(profile)
    missing = []
    for name in sorted(names - allowed):
        fallback = ENOSYS_FALLBACKS.get(name)
        if fallback and fallback in allowed and all(
                r.get("errnoRet") == errno.ENOSYS for r in rules_for(profile, name)):
            continue  # answered ENOSYS, and the C library retries with the fallback
        missing.append(name)
    assert not missing, ("%s made system calls conf/seccomp.json does not allow: %s "
                         "(sanitized build: %s)" % (binary, ", ".join(missing),
                                                    is_sanitized(binary)))


def test_seccomp_allows_every_syscall_of_the_gateway(gateway_bin, tmp_path):
    """The gateway of the other tests (GATEWAY_BIN), traced from exec to exit, makes no
    system call the profile would refuse."""
    names = trace_gateway(gateway_bin, tmp_path)
    check_profile_covers(names, gateway_bin)


# -- Dockerfile -------------------------------------------------------------------------------


def dockerfile_instructions(text):
    """[(KEYWORD, arguments)], continuation lines joined, comments and blank lines dropped
    (comment lines inside a continued instruction too, as Docker does)."""
    out = []
    cur = None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#") or (not s and cur is None):
            continue
        piece = s[:-1] if s.endswith("\\") else s
        cur = piece if cur is None else cur + " " + piece
        if not s.endswith("\\"):
            kw, _, args = cur.strip().partition(" ")
            out.append((kw.upper(), args.strip()))
            cur = None
    assert cur is None, "the Dockerfile ends inside a continued instruction"
    return out


def dockerfile_stages(text):
    stages = []
    for kw, args in dockerfile_instructions(text):
        if kw == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?\s*$", args, re.I)
            assert m, "FROM %s" % args
            stages.append(SimpleNamespace(image=m.group(1), name=m.group(2), ins=[]))
        else:
            assert stages, "%s before the first FROM" % kw
            stages[-1].ins.append((kw, args))
    return stages


def exec_form(args):
    """The argv of a CMD/ENTRYPOINT/HEALTHCHECK CMD: JSON form, else shell form."""
    if args.startswith("["):
        return json.loads(args)
    return ["/bin/sh", "-c", args]


def all_of(stage, kw):
    return [a for k, a in stage.ins if k == kw]


def last_of(stage, kw):
    found = all_of(stage, kw)
    return found[-1] if found else None


def apt_packages(run_text):
    """Package names of the `apt-get install` commands in a RUN's text."""
    pkgs = []
    for seg in re.split(r"&&|;|\|\|?", run_text):
        words = seg.split()
        if "apt-get" in words and "install" in words:
            pkgs += [w for w in words[words.index("install") + 1:] if not w.startswith("-")]
    return pkgs


@pytest.fixture(scope="module")
def dockerfile():
    stages = dockerfile_stages(DOCKERFILE.read_text())
    assert stages, "no FROM in the Dockerfile"
    return SimpleNamespace(build=stages[0], runtime=stages[-1], stages=stages)


def test_dockerfile_runtime_stage(dockerfile):
    """Two stages; the runtime stage runs as a non-root user it creates, stops with SIGTERM
    (the drain), checks /healthz on the admin port of conf/gateway.conf, starts the gateway
    from PATH with -c /etc/gateway/gateway.conf (which it copies there) and exposes the
    listen and admin ports of that config."""
    assert len(dockerfile.stages) == 2, "expected two stages (build, runtime), found %d" % len(
        dockerfile.stages)
    rt = dockerfile.runtime
    assert dockerfile.build.name, "the build stage has no name (FROM ... AS build)"
    copies_from = [a for a in all_of(rt, "COPY") if a.startswith("--from=")]
    assert any(a.startswith("--from=%s " % dockerfile.build.name) for a in copies_from), \
        "the runtime stage copies nothing from the build stage"

    user = last_of(rt, "USER")
    assert user, "the runtime stage has no USER: it would run as root"
    name = user.split(":")[0]
    assert name not in ("root", "0"), "USER %s" % user
    if not name.isdigit():
        assert any(re.search(r"\b(useradd|adduser)\b.*\s%s(\s|$)" % re.escape(name), r)
                   for r in all_of(rt, "RUN")), "USER %s is never created" % name

    assert last_of(rt, "STOPSIGNAL") == "SIGTERM"

    conf = read_conf(EXAMPLE_CONF.read_text())
    hc = last_of(rt, "HEALTHCHECK")
    assert hc and hc.upper() != "NONE", "no HEALTHCHECK"
    m = re.match(r"((?:--\S+\s+)*)CMD\s+(.*)$", hc)
    assert m, "HEALTHCHECK %s" % hc
    probe = " ".join(exec_form(m.group(2)))
    assert "/healthz" in probe, "the HEALTHCHECK does not ask /healthz: %s" % probe
    assert re.search(r"\b%d\b" % port_of(conf.admin), probe), \
        "the HEALTHCHECK does not use the admin port %d of conf/gateway.conf: %s" % (
            port_of(conf.admin), probe)

    cmd = exec_form(last_of(rt, "CMD") or "[]")
    assert "-c" in cmd and cmd[cmd.index("-c") + 1] == "/etc/gateway/gateway.conf", \
        "CMD %s does not run -c /etc/gateway/gateway.conf" % cmd
    copies = [a.split() for a in all_of(rt, "COPY")]
    assert ["conf/gateway.conf", "/etc/gateway/gateway.conf"] in copies, \
        "the image does not carry conf/gateway.conf as /etc/gateway/gateway.conf"

    entry = exec_form(last_of(rt, "ENTRYPOINT") or "[]")
    assert entry, "no ENTRYPOINT"
    dests = [c[-1] for c in copies]
    path_dirs = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
    assert entry[0] in dests or any(d == "%s/%s" % (p, entry[0]) for d in dests
                                    for p in path_dirs), \
        "ENTRYPOINT %s is not the binary copied into the image (%s)" % (entry, dests)

    exposed = {int(p.split("/")[0]) for a in all_of(rt, "EXPOSE") for p in a.split()}
    for addr in conf.listen + [conf.admin]:
        assert port_of(addr) in exposed, "port of %s not in EXPOSE %s" % (addr, sorted(exposed))


def test_dockerfile_build_stage_packages_are_installed(dockerfile):
    """Every package the build stage installs is installed here too (dpkg -s), so the build
    run below uses the same toolchain and -dev packages as the image's."""
    pkgs = [p for r in all_of(dockerfile.build, "RUN") for p in apt_packages(r)]
    assert pkgs, "the build stage installs no packages"
    missing = []
    for p in pkgs:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True,
                           text=True)
        if r.returncode != 0 or not r.stdout.endswith(" ok installed"):
            missing.append(p)
    assert not missing, "not installed: %s (scripts/deps.sh build should bring them)" % missing


# The directories outside the WORKDIR that the build stage's RUN writes: the build
# directory and the install destination. In the scratch run they are under its tmp dir.
IMAGE_DIRS = ("/build", "/out")


def _moved(text, root):
    pat = r"(?<![\w./-])(%s)(?=[/\s]|$)" % "|".join(re.escape(d) for d in IMAGE_DIRS)
    return re.sub(pat, lambda m: str(root) + m.group(1), text)


@pytest.fixture(scope="module")
def image_build(dockerfile, tmp_path_factory):
    """The build stage's meson commands run once, in a copy of the tree, with the image's
    /build and /out moved into the scratch directory. Returns the outcome; the tests that
    need the binary fail on it in built_binary() (a failure of theirs, not a fixture error)."""
    build = dockerfile.build
    res = SimpleNamespace(problem=None, rc=None, log=None, command=None, binary=None)
    meson_runs = [r for r in all_of(build, "RUN") if re.search(r"\bmeson\s+setup\b", r)]
    copy = [a.split() for a in all_of(dockerfile.runtime, "COPY")
            if build.name and a.startswith("--from=%s " % build.name)]
    if ("COPY", ". .") not in build.ins:
        res.problem = "the build stage does not COPY . ."
    elif len(meson_runs) != 1:
        res.problem = "expected one RUN with meson setup, found %d" % len(meson_runs)
    elif not all(d in meson_runs[0] for d in IMAGE_DIRS):
        res.problem = "the build RUN does not use %s: update IMAGE_DIRS" % (IMAGE_DIRS,)
    elif not copy:
        res.problem = "the runtime stage copies nothing from the build stage"
    if res.problem:
        return res
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: cannot tell which files COPY . . would take")
    root = tmp_path_factory.mktemp("image")
    src = root / "src"
    # COPY . . takes the tree as the build context has it: tracked files, plus new files not
    # committed yet (a source file added to meson.build but not yet to git).
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        s, d = REPO / rel, src / rel
        if not os.path.lexists(s):
            continue  # deleted in the work tree, not committed yet
        d.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(s, d, follow_symlinks=False)

    # WORKDIR /src is src; the apt-get RUN is not run (see the dpkg -s test above).
    res.command = _moved(meson_runs[0], root)
    res.log = root / "build.log"
    with open(res.log, "wb") as f:
        try:
            p = subprocess.run(["bash", "-euo", "pipefail", "-c", res.command], cwd=src,
                               stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               timeout=1200)
            res.rc = p.returncode
        except subprocess.TimeoutExpired:
            res.rc = "timeout (1200 s)"
    res.copied = copy[0][1]
    res.binary = Path(_moved(res.copied, root))
    return res


def built_binary(image_build):
    """The binary the runtime stage copies from the build stage, after a successful build."""
    assert not image_build.problem, image_build.problem
    assert image_build.rc == 0, "the build stage's RUN failed (%s):\n%s\n%s" % (
        image_build.rc, image_build.command, image_build.log.read_text(errors="replace")[-6000:])
    assert image_build.binary.is_file(), \
        "the runtime stage copies %s, which the build stage did not make" % image_build.copied
    return image_build.binary


def test_dockerfile_build_stage_makes_a_working_binary(image_build):
    """The build stage's RUN (meson setup, compile, install into /out) succeeds on this tree
    and leaves the binary that the runtime stage copies, which runs -V."""
    binary = built_binary(image_build)
    assert os.access(binary, os.X_OK)
    p = subprocess.run([str(binary), "-V"], capture_output=True, text=True, timeout=10)
    assert p.returncode == 0 and p.stdout.startswith("gateway "), (p.returncode, p.stdout,
                                                                   p.stderr)


# Packages of debian:bookworm-slim itself (Priority: required) that a C program links
# against: glibc (libc.so.6, ld-linux, libm) and libgcc_s (which glibc loads for unwinding).
BASE_PACKAGES = {"libc6", "libgcc-s1"}


def dpkg_owner(path):
    """The package that ships path (merged /usr: tries the /usr and non-/usr spellings)."""
    p = str(path)
    alt = p[len("/usr"):] if p.startswith("/usr/") else "/usr" + p
    real = os.path.realpath(p)
    for cand in dict.fromkeys([p, alt, real, real[len("/usr"):] if real.startswith("/usr/")
                               else "/usr" + real]):
        r = subprocess.run(["dpkg", "-S", cand], capture_output=True, text=True)
        if r.returncode == 0:
            for line in r.stdout.splitlines():
                if ": " in line and not line.startswith("diversion"):
                    return line.split(": ", 1)[0].split(",")[0].strip().split(":")[0]
    return None


def test_dockerfile_runtime_packages_cover_the_shared_libraries(dockerfile, image_build):
    """Each shared library of the binary the build stage made comes from a package the
    runtime stage installs, or from the base image's own C library packages."""
    binary = built_binary(image_build)
    runtime_pkgs = {p for r in all_of(dockerfile.runtime, "RUN") for p in apt_packages(r)}
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    uncovered = []
    libs = 0
    for line in out.splitlines():
        line = line.strip()
        assert "not found" not in line, "ldd: %s" % line
        m = re.match(r"(\S+)\s+=>\s+(/\S+)", line) or re.match(r"(/\S+)\s+\(", line)
        if not m:
            continue  # linux-vdso.so.1: in the kernel, not a file
        path = m.group(m.lastindex)
        libs += 1
        pkg = dpkg_owner(path)
        if pkg is None or (pkg not in runtime_pkgs and pkg not in BASE_PACKAGES):
            uncovered.append("%s (%s)" % (path, pkg or "no package"))
    assert libs >= 3, "ldd found too few libraries:\n" + out
    assert not uncovered, ("shared libraries of the image's binary that the runtime stage "
                           "does not install (apt-get install %s): %s"
                           % (" ".join(sorted(runtime_pkgs)), ", ".join(uncovered)))


def test_seccomp_allows_every_syscall_of_the_image_binary(image_build, tmp_path):
    """The release binary the image ships (the build stage's output), traced the same way,
    makes no system call the profile would refuse."""
    binary = built_binary(image_build)
    names = trace_gateway(binary, tmp_path)
    check_profile_covers(names, binary)


# -- scripts/docker-run.sh ------------------------------------------------------------------


def test_docker_run_script():
    """scripts/docker-run.sh parses (bash -n), is executable, runs with the seccomp profile,
    a stop timeout longer than the example config's drain, the admin port published on
    loopback only, and says how to reload and drain."""
    text = DOCKER_RUN.read_text()
    assert os.access(DOCKER_RUN, os.X_OK), "not executable"
    p = subprocess.run(["bash", "-n", str(DOCKER_RUN)], capture_output=True, text=True)
    assert p.returncode == 0, "bash -n: %s" % p.stderr
    assert "set -euo pipefail" in text
    assert "seccomp=conf/seccomp.json" in text
    conf = read_conf(EXAMPLE_CONF.read_text())
    m = re.search(r"^\s*--stop-timeout[ =](\d+)", text, re.M)
    assert m, "no --stop-timeout option"
    assert int(m.group(1)) * 1000 > conf.drain_timeout_ms, \
        "--stop-timeout %s s is not longer than drain_timeout_ms %d" % (m.group(1),
                                                                        conf.drain_timeout_ms)
    publish = re.findall(r"^\s*-p\s+(\S+)", text, re.M)
    admin = port_of(conf.admin)
    assert "127.0.0.1:%d:%d" % (admin, admin) in publish, publish
    for spec in publish:
        parts = spec.split(":")
        if parts[-1] == str(admin):
            assert len(parts) == 3 and parts[0] == "127.0.0.1", \
                "admin port published beyond loopback: -p %s" % spec
    for listen in conf.listen:
        assert "%d:%d" % (port_of(listen), port_of(listen)) in publish, publish
    assert "docker kill -s HUP gateway" in text
    assert "docker stop gateway" in text


# -- scripts/k8s/gateway.yaml ---------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s():
    if yaml is None:
        pytest.fail("python3-yaml is not installed (scripts/deps.sh test)")
    with open(K8S) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    kinds = sorted(d.get("kind") for d in docs)
    assert kinds == ["ConfigMap", "Deployment", "Service"], kinds
    by = {d["kind"]: d for d in docs}
    pod = by["Deployment"]["spec"]["template"]
    containers = pod["spec"]["containers"]
    assert len(containers) == 1, "expected one container"
    return SimpleNamespace(cm=by["ConfigMap"], deploy=by["Deployment"], svc=by["Service"],
                           pod=pod, c=containers[0])


def _k8s_conf(k8s):
    data = k8s.cm.get("data", {})
    assert "gateway.conf" in data, "the ConfigMap has no key gateway.conf"
    return data["gateway.conf"]


def _container_port(c, port):
    """A probe's or Service's port: a number, or the name of a containerPort."""
    if isinstance(port, int):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    for p in c.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    raise AssertionError("no container port named %r" % port)


def test_k8s_config_is_valid(k8s, gateway_bin, tmp_path):
    """The ConfigMap's gateway.conf passes the gateway's own check (-t), and its admin
    listener is not on loopback, where the kubelet's probes could not reach it."""
    path = tmp_path / "gateway.conf"
    path.write_text(_k8s_conf(k8s))
    p = subprocess.run([gateway_bin, "-t", "-c", str(path)], capture_output=True, text=True,
                       timeout=10, env=gateway_env(), stdin=subprocess.DEVNULL)
    assert p.returncode == 0, "gateway -t: %s" % p.stderr
    assert not sanitizer_report(p.stderr), p.stderr
    admin = read_conf(_k8s_conf(k8s)).admin
    assert not (host_of(admin).startswith("127.") or host_of(admin) == "::1"), \
        "admin %s is loopback: probes and scrapes come from outside the container" % admin


def test_k8s_deployment_matches_its_config(k8s):
    """The Deployment reads the ConfigMap's file where it mounts it, probes /readyz and
    /healthz on the config's admin port, gives the drain time to finish, scrapes that port,
    and the Service sends port 80 to the config's listen port."""
    conf = read_conf(_k8s_conf(k8s))
    c, spec = k8s.c, k8s.pod["spec"]
    assert k8s.deploy["spec"].get("replicas") == 2

    args = c.get("args", [])
    assert "-c" in args, "args %s" % args
    conf_path = args[args.index("-c") + 1]
    mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    found = False
    for name, m in mounts.items():
        cm = vols.get(name, {}).get("configMap")
        if cm and cm.get("name") == k8s.cm["metadata"]["name"] and "subPath" not in m:
            items = {i["key"]: i["path"] for i in cm.get("items", [])} or \
                {k: k for k in k8s.cm.get("data", {})}
            if "gateway.conf" in items and \
                    m["mountPath"].rstrip("/") + "/" + items["gateway.conf"] == conf_path:
                found = True
    assert found, "-c %s is not the ConfigMap's gateway.conf as mounted" % conf_path

    admin = port_of(conf.admin)
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = c.get(probe, {}).get("httpGet")
        assert get, "no %s.httpGet" % probe
        assert get.get("path") == path, "%s path %s" % (probe, get.get("path"))
        assert _container_port(c, get.get("port")) == admin, \
            "%s port %s is not the admin port %d" % (probe, get.get("port"), admin)

    grace = spec.get("terminationGracePeriodSeconds", 30)
    pre = (c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command") or [])
    pre_ms = int(float(pre[1]) * 1000) if len(pre) == 2 and pre[0] == "sleep" else 0
    assert grace * 1000 > conf.drain_timeout_ms + pre_ms, \
        "terminationGracePeriodSeconds %d <= drain_timeout_ms %d + preStop %d ms" % (
            grace, conf.drain_timeout_ms, pre_ms)

    ann = k8s.pod.get("metadata", {}).get("annotations", {})
    assert ann.get("prometheus.io/scrape") == "true"
    assert ann.get("prometheus.io/port") == str(admin)
    assert ann.get("prometheus.io/path", "/metrics") == "/metrics"

    labels = k8s.pod["metadata"]["labels"]
    sel = k8s.svc["spec"]["selector"]
    assert sel and all(labels.get(k) == v for k, v in sel.items()), \
        "the Service selector %s does not match the pods %s" % (sel, labels)
    assert k8s.deploy["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = k8s.svc["spec"]["ports"]
    listen_ports = {port_of(a) for a in conf.listen}
    assert any(p.get("port") == 80 and _container_port(c, p.get("targetPort", 80)) in listen_ports
               for p in ports), "no Service port 80 -> %s" % sorted(listen_ports)
    assert not any(_container_port(c, p.get("targetPort", p.get("port"))) == admin
                   for p in ports), "the Service exposes the admin port"

    limits = c.get("resources", {}).get("limits", {})
    assert "cpu" in limits and "memory" in limits, "no CPU and memory limits"


def test_k8s_security_context(k8s, dockerfile):
    """Non-root (with a numeric user when the image's USER is a name, which runAsNonRoot
    cannot check), read-only root, no privilege escalation, no capabilities, and the
    Localhost seccomp profile that allows io_uring."""
    pod_sc = k8s.pod["spec"].get("securityContext", {})
    sc = dict(pod_sc, **k8s.c.get("securityContext", {}))
    assert sc.get("runAsNonRoot") is True
    image_user = (last_of(dockerfile.runtime, "USER") or "").split(":")[0]
    if not image_user.isdigit():
        uid = sc.get("runAsUser")
        assert isinstance(uid, int) and uid > 0, \
            "the image's USER %r is not numeric: runAsNonRoot needs runAsUser" % image_user
    assert sc.get("readOnlyRootFilesystem") is True
    assert sc.get("allowPrivilegeEscalation") is False
    assert "ALL" in sc.get("capabilities", {}).get("drop", [])
    seccomp = sc.get("seccompProfile", {})
    assert seccomp.get("type") == "Localhost", seccomp
    assert seccomp.get("localhostProfile", "").endswith("gateway.json"), seccomp
