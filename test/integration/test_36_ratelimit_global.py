"""rate_limit scope "global": the bucket lives in Redis (one script call per check, pipelined
with the rest), so several gateway processes enforce one limit together; without Redis the
local bucket stands in and that is counted."""

import subprocess
import time

from gwtest import route_block, wait_redis_up


def limited_gateway(gateway_factory, upstream, redis, name, scope="global", **rl):
    route = route_block("default", "app")
    route["rate_limit"] = dict({"rate": 5.0, "burst": 5, "key": "route", "scope": scope}, **rl)
    return gateway_factory(upstreams=[{"name": "app", "servers": [upstream.addr]}],
                           routes=[route], workers=2, name=name,
                           redis={"address": redis.addr, "timeout_ms": 200})




def test_two_gateways_share_one_limit(gateway_factory, upstream, redis_server):
    a = limited_gateway(gateway_factory, upstream, redis_server, "a")
    b = limited_gateway(gateway_factory, upstream, redis_server, "b")
    assert wait_redis_up(a) and wait_redis_up(b)
    t0 = time.monotonic()
    statuses = [(a if i % 2 else b).get("/ok").status for i in range(20)]
    took = time.monotonic() - t0
    admitted = statuses.count(200)
    # 5 at once, plus what refilled at 5/s while the 20 requests ran
    assert 5 <= admitted <= 5 + int(took * 5) + 1, (admitted, took, statuses)
    assert statuses.count(429) == 20 - admitted
    r = a.get("/ok")
    assert r.status == 429 and int(r.header("Retry-After")) >= 1
    assert r.header("RateLimit-Limit") == "5"
    keys = redis_server.command("KEYS", "gwrl1:*")
    assert keys == ["gwrl1:default:r:"], keys
    m = a.metrics()
    assert m.value("gateway_ratelimit_rejected_total", route="default") >= 1
    assert m.value("gateway_ratelimit_fallback_total", route="default") == 0


def calls(redis, cmd):
    """How often Redis ran cmd (INFO commandstats)."""
    for line in redis.command("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_%s:" % cmd):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


def test_script_lost_by_redis(gateway_factory, upstream, redis_server):
    """After the first check the gateway sends EVALSHA; when Redis no longer has the script
    (SCRIPT FLUSH, a restart) the check is made again with the script, not dropped."""
    a = limited_gateway(gateway_factory, upstream, redis_server, "a", rate=1.0, burst=3)
    assert wait_redis_up(a)
    assert [a.get("/ok").status for _ in range(3)] == [200, 200, 200]
    assert calls(redis_server, "evalsha") >= 1, "still sending the script every time"
    redis_server.command("SCRIPT", "FLUSH")
    evals = calls(redis_server, "eval")
    statuses = [a.get("/ok").status for _ in range(3)]
    assert statuses == [429, 429, 429], statuses
    assert calls(redis_server, "eval") > evals, "NOSCRIPT was not answered with the script"
    assert a.metrics().value("gateway_ratelimit_fallback_total", route="default") == 0


def test_local_scope_is_per_process(gateway_factory, upstream, redis_server):
    a = limited_gateway(gateway_factory, upstream, redis_server, "a", scope="local")
    b = limited_gateway(gateway_factory, upstream, redis_server, "b", scope="local")
    statuses = [(a if i % 2 else b).get("/ok").status for i in range(20)]
    assert statuses.count(200) >= 10, "each process has its own bucket of 5"


def test_keys_by_client_and_header(gateway_factory, upstream, redis_server):
    a = limited_gateway(gateway_factory, upstream, redis_server, "a", key="header:X-Api-Key",
                        burst=2, rate=0.5)
    assert wait_redis_up(a)
    s1 = [a.get("/ok", headers={"X-Api-Key": "one"}).status for _ in range(4)]
    s2 = [a.get("/ok", headers={"X-Api-Key": "two"}).status for _ in range(4)]
    assert s1 == [200, 200, 429, 429] and s2 == [200, 200, 429, 429], (s1, s2)
    assert sorted(redis_server.command("KEYS", "gwrl1:*")) == ["gwrl1:default:h:one",
                                                              "gwrl1:default:h:two"]


def test_falls_back_to_the_local_bucket(gateway_factory, upstream, redis_server):
    a = limited_gateway(gateway_factory, upstream, redis_server, "a")
    assert wait_redis_up(a)
    redis_server.stop()
    statuses = [a.get("/ok").status for _ in range(12)]
    assert statuses.count(200) >= 5 and statuses.count(429) >= 1, statuses
    assert a.metrics().value("gateway_ratelimit_fallback_total", route="default") >= 12


def test_global_scope_needs_redis(gateway_bin, tmp_path):
    conf = tmp_path / "g.conf"
    conf.write_text('listen = ( { address = "127.0.0.1:1"; } );\n'
                    'upstreams = ( { name = "app"; servers = [ "127.0.0.1:2" ]; } );\n'
                    'routes = ( { name = "r"; upstream = "app";\n'
                    '  rate_limit = { rate = 1.0; scope = "global"; }; } );\n')
    out = subprocess.run([gateway_bin, "-t", "-c", str(conf)], capture_output=True, text=True)
    assert out.returncode == 1
    assert "g.conf:4: " in out.stderr and "redis block" in out.stderr, out.stderr
