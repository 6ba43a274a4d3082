"""README's configuration reference is checked against the code: its key tables list exactly
the keys the parser accepts (the key tables of gateway/core/config.c), and every default they
give as a literal is the value `gateway -T` prints for a config that leaves the key out."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# README heading -> the parser's key groups it documents
SECTIONS = {
    "Top level": ["top"],
    "`listen` and `admin`": ["listen", "admin"],
    "`limits`": ["limits"],
    "`upstreams`": ["upstream"],
    "`routes`": ["route"],
    "Rate limits": ["rate_limit"],
    "Circuit breakers": ["breaker"],
    "Response cache": ["route_cache", "cache"],
    "Redis": ["redis"],
    "TLS": ["tls", "tls_cert"],
    "TLS to upstreams": ["upstream_tls"],
}

# Every optional group present and empty, so that -T prints its defaults.
MINIMAL = """
listen = ( { address = "127.0.0.1:1"; } );
redis = { address = "127.0.0.1:2"; };
upstreams = ( { name = "app"; servers = [ "127.0.0.1:2" ]; breaker = {}; tls = {}; } );
routes = ( { name = "r"; upstream = "app"; rate_limit = { rate = 1.0; }; cache = {}; } );
"""


def parser_keys():
    """{group: [keys]} from the `static const char *const NAME_keys[] = {...};` tables."""
    src = (ROOT / "gateway/core/config.c").read_text()
    tables = re.findall(r"static const char \*const (\w+)_keys\[\] = \{(.*?)\};", src, re.S)
    assert tables, "no key tables found in config.c"
    return {name: re.findall(r'"([^"]+)"', body) for name, body in tables}


def readme_rows():
    """{section: {key: default cell}} for the sections of SECTIONS."""
    text = (ROOT / "README.md").read_text()
    rows, section, col = {}, None, None
    for line in text.splitlines():
        m = re.match(r"#{2,3} (.*)", line)
        if m:
            section = m.group(1).strip() if m.group(1).strip() in SECTIONS else None
            continue
        if section is None or not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "key":
            col = cells.index("default")
            continue
        m = re.fullmatch(r"`(\w+)`", cells[0])
        if m and col is not None:
            rows.setdefault(section, {})[m.group(1)] = cells[col]
    return rows


def dump(gateway_bin, tmp_path):
    """{group: {key: value text}} from `gateway -T` of MINIMAL (first entry of each list)."""
    conf = tmp_path / "min.conf"
    conf.write_text(MINIMAL)
    out = subprocess.run([gateway_bin, "-T", "-c", str(conf)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    groups, stack = {"top": {}}, ["top"]
    group_of = {"upstreams": "upstream", "routes": "route"}
    for line in out.stdout.splitlines():
        s = line.strip()
        if not s or s.startswith("#") or s in ("{", "}", "},"):
            continue
        m = re.fullmatch(r"(\w+) = [{(]", s)
        if m:  # a group or list opens on its own line
            name = group_of.get(m.group(1), m.group(1))
            name = {("route", "cache"): "route_cache",
                    ("upstream", "tls"): "upstream_tls"}.get((stack[-1], name), name)
            stack.append(name)
            continue
        if s in ("};", ");"):
            stack.pop()
            continue
        m = re.fullmatch(r"(\w+) = \{(.*)\};", s)  # a group on one line: admin
        g, body = (m.group(1), m.group(2)) if m else (stack[-1], s)
        for k, v in re.findall(r"(\w+) = ([^;]+);", body):
            groups.setdefault(g, {}).setdefault(k, v.strip())  # the first entry of a list
    return out.stdout, groups


def literal(cell):
    """The default as a config literal when the cell starts with one, else None."""
    m = re.match(r"`([^`]+)`", cell)
    return m.group(1) if m else None


def same(a, b):
    a, b = a.replace(" ", ""), b.replace(" ", "")
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


def test_readme_lists_every_parser_key():
    keys, rows = parser_keys(), readme_rows()
    for section, groups in SECTIONS.items():
        assert section in rows, "README has no key table under '%s'" % section
        documented = set(rows[section])
        accepted = set().union(*(keys[g] for g in groups))
        assert accepted - documented == set(), \
            "keys the parser accepts but README's '%s' table lacks" % section
        assert documented - accepted == set(), \
            "keys README's '%s' table lists but the parser rejects" % section


def test_readme_defaults_match_the_parser(gateway_bin, tmp_path):
    text, groups = dump(gateway_bin, tmp_path)
    rows = readme_rows()
    checked = 0
    for section, gnames in SECTIONS.items():
        for key, cell in rows[section].items():
            for g in gnames:
                value = groups.get(g, {}).get(key)
                want = literal(cell.split(";")[-1].strip()) if g == "admin" else literal(cell)
                if want is None or value is None or value[0] in "{(":
                    continue
                assert same(value, want), \
                    "README says %s.%s defaults to %s, the parser gives %s\n%s" % (
                        g, key, want, value, text)
                checked += 1
    # every scalar the dump prints with a literal default in README was compared
    assert checked >= 30, (checked, text)


def test_dump_reads_back_to_itself(gateway_bin, tmp_path):
    """-T output is a valid config and dumps to the same text (a fixed point)."""
    conf = tmp_path / "a.conf"
    conf.write_text((ROOT / "conf/gateway.conf").read_text())
    first = subprocess.run([gateway_bin, "-T", "-c", str(conf)], capture_output=True, text=True,
                           timeout=30)
    assert first.returncode == 0, first.stderr
    again = tmp_path / "b.conf"
    again.write_text(first.stdout)
    second = subprocess.run([gateway_bin, "-T", "-c", str(again)], capture_output=True,
                            text=True, timeout=30)
    assert second.returncode == 0, second.stderr
    assert first.stdout.splitlines()[1:] == second.stdout.splitlines()[1:]


@pytest.mark.parametrize("bad", ["routes = oops;", "listen = ();"])
def test_dump_of_a_bad_file_is_an_error(gateway_bin, tmp_path, bad):
    conf = tmp_path / "bad.conf"
    conf.write_text(bad + "\n")
    out = subprocess.run([gateway_bin, "-T", "-c", str(conf)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 1 and out.stdout == ""
    assert re.match(r".*bad\.conf:1: ", out.stderr), out.stderr
