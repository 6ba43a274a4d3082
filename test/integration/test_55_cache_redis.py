"""The cache's shared level in a real redis-server: two gateway processes share entries,
corrupt or truncated values are misses, Redis going away costs no request (and
gateway_redis_up says so), PURGE removes the Redis copy, AUTH and unix sockets, and the
pipeline depth histogram."""

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote_plus


from conftest import RedisServer
from gwtest import route_block, wait_redis_up


def path(name, *headers, **params):
    q = ["h=" + quote_plus(h) for h in headers] + ["%s=%s" % kv for kv in params.items()]
    return "/cache/%s%s" % (name, ("?" + "&".join(q)) if q else "")


def redis_gateway(gateway_factory, upstream, redis, workers=1, name=None, l1_ttl_s=5,
                  **redis_extra):
    route = route_block("default", "app")
    route["cache"] = {}
    conf = {"address": redis if isinstance(redis, str) else redis.addr, "timeout_ms": 1000}
    conf.update(redis_extra)
    return gateway_factory(upstreams=[{"name": "app", "servers": [upstream.addr]}],
                           routes=[route], workers=workers, name=name, redis=conf,
                           cache={"l1_ttl_s": l1_ttl_s})




def wait_keys(redis, n=1, timeout=5.0):
    """The cache keys in Redis once there are n (a gateway stores right after answering)."""
    deadline = time.monotonic() + timeout
    while True:
        keys = redis.command("KEYS", "gwc1:*")
        if len(keys) >= n or time.monotonic() > deadline:
            return keys
        time.sleep(0.005)


def test_two_gateways_share_entries(gateway_factory, upstream, redis_server):
    a = redis_gateway(gateway_factory, upstream, redis_server, name="a")
    b = redis_gateway(gateway_factory, upstream, redis_server, name="b")
    assert wait_redis_up(a) and wait_redis_up(b)
    p = path("sh", "Cache-Control: max-age=60")
    assert a.get(p).header("X-Cache") == "MISS"
    keys = wait_keys(redis_server)
    assert len(keys) == 1 and keys[0].endswith("p:/cache/sh\nq:" + p.split("?", 1)[1]), keys
    ttl = redis_server.command("PTTL", keys[0])
    assert 50000 < ttl <= 60000, ttl
    r = b.get(p)
    assert (r.header("X-Cache"), r.body) == ("HIT", b"sh 1"), "the second gateway read Redis"
    assert upstream.cache_count("sh") == 1
    # counters are updated after the response is written
    m = b.wait_metric("gateway_cache_requests_total", 1, route="default", result="hit")
    assert m.value("gateway_cache_requests_total", route="default", result="hit") == 1
    cfg = b.admin("/config").json()
    assert cfg["redis"] == {"address": redis_server.addr, "up": True}
    assert cfg["routes"][0]["cache"]["ttl_s"] == 60
    assert m.value("gateway_redis_pipeline_depth_count") >= 1


def test_corrupt_and_truncated_values_are_misses(gateway_factory, upstream, redis_server):
    gw = redis_gateway(gateway_factory, upstream, redis_server)
    other = redis_gateway(gateway_factory, upstream, redis_server, name="other")
    assert wait_redis_up(gw) and wait_redis_up(other)
    p = path("cv", "Cache-Control: max-age=60")
    gw.get(p)
    key = wait_keys(redis_server)[0]
    value = redis_server.command("GET", key, raw=True)
    redis_server.command("SET", key, value[:-10])
    r = other.get(p)
    assert (r.status, r.header("X-Cache"), r.body) == (200, "MISS", b"cv 2"), \
        "a truncated value was served"
    # other stores its fresh copy right after answering: let that land first
    deadline = time.monotonic() + 5
    while redis_server.command("GET", key, raw=True) == value[:-10]:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    flipped = bytearray(value)
    flipped[len(flipped) // 2] ^= 0x40
    redis_server.command("SET", key, bytes(flipped))
    third = redis_gateway(gateway_factory, upstream, redis_server, name="third")
    assert wait_redis_up(third)
    r = third.get(p)
    assert (r.status, r.body) == (200, b"cv 3"), "a corrupt value was served"
    deadline = time.monotonic() + 5
    while redis_server.command("GET", key, raw=True) == bytes(flipped):
        assert time.monotonic() < deadline  # third stores its fresh copy after answering
        time.sleep(0.005)
    redis_server.command("SET", key, "not an entry at all")
    fourth = redis_gateway(gateway_factory, upstream, redis_server, name="fourth")
    assert wait_redis_up(fourth)
    assert fourth.get(p).body == b"cv 4"
    m = other.wait_metric("gateway_cache_requests_total", 1, route="default", result="error")
    assert m.value("gateway_cache_l2_errors_total") == 1
    assert m.value("gateway_cache_requests_total", route="default", result="error") == 1


def test_redis_going_away_costs_no_request(gateway_factory, upstream, redis_server):
    gw = redis_gateway(gateway_factory, upstream, redis_server, workers=2, l1_ttl_s=1)
    assert wait_redis_up(gw)
    p = path("rg", "Cache-Control: max-age=60")
    gw.get(p)
    redis_server.stop()
    statuses = [gw.get(path("rg%d" % i, "Cache-Control: max-age=60")).status
                for i in range(20)]
    assert statuses == [200] * 20
    assert wait_redis_up(gw, 0), "gateway_redis_up still says 1"
    statuses = [gw.get(path("rh%d" % i, "Cache-Control: max-age=60")).status
                for i in range(20)]
    assert statuses == [200] * 20
    redis_server.restart()
    assert wait_redis_up(gw, 1, timeout=15), "did not reconnect"
    q = path("after", "Cache-Control: max-age=60")
    gw.get(q)
    deadline = time.monotonic() + 5
    while not redis_server.command("KEYS", "gwc1:*"):
        assert time.monotonic() < deadline, "nothing stored after the reconnect"
        time.sleep(0.01)


def test_slow_redis_times_out(gateway_factory, upstream, redis_server):
    gw = redis_gateway(gateway_factory, upstream, redis_server, timeout_ms=100)
    assert wait_redis_up(gw)
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        r = gw.get(path("slow", "Cache-Control: max-age=60"))
        assert r.status == 200 and time.monotonic() - t0 < 2
        assert wait_redis_up(gw, 0)
        assert gw.get(path("slow2")).status == 200
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    assert wait_redis_up(gw, 1, timeout=15)


def test_purge_removes_the_redis_copy(gateway_factory, upstream, redis_server):
    a = redis_gateway(gateway_factory, upstream, redis_server, name="a", l1_ttl_s=1)
    b = redis_gateway(gateway_factory, upstream, redis_server, name="b", l1_ttl_s=1)
    assert wait_redis_up(a) and wait_redis_up(b)
    p = path("pr", "Cache-Control: max-age=60")
    a.get(p)
    wait_keys(redis_server)
    assert b.get(p).header("X-Cache") == "HIT"
    assert a.request("PURGE", p).status == 200
    deadline = time.monotonic() + 5
    while redis_server.command("KEYS", "gwc1:*"):
        assert time.monotonic() < deadline, "PURGE left the Redis copy"
        time.sleep(0.005)
    time.sleep(1.2)  # b's L1 copy lives l1_ttl_s at most
    r = b.get(p)
    assert (r.header("X-Cache"), r.body) == ("MISS", b"pr 2")


def test_auth_and_db(gateway_factory, upstream, tmp_path):
    srv = RedisServer(tmp_path, extra=["--requirepass", "s3cret"])
    try:
        gw = redis_gateway(gateway_factory, upstream, srv, password="s3cret", db=3)
        assert wait_redis_up(gw)
        gw.get(path("au", "Cache-Control: max-age=60"))
        deadline = time.monotonic() + 5
        while not srv.command("KEYS", "gwc1:*", db=3):
            assert time.monotonic() < deadline, "nothing stored in db 3"
            time.sleep(0.01)
        assert srv.command("KEYS", "gwc1:*") == [], "stored in db 0 too"
        bad = redis_gateway(gateway_factory, upstream, srv, name="bad", password="wrong")
        time.sleep(0.5)
        assert bad.metrics().value("gateway_redis_up") == 0
        assert bad.get(path("au2")).status == 200, "a refused AUTH costs no request"
        assert "redis" in bad.stderr().lower()
    finally:
        srv.stop()


def test_unix_socket(gateway_factory, upstream, tmp_path):
    sock = str(tmp_path / "redis.sock")
    srv = RedisServer(tmp_path, extra=["--unixsocket", sock, "--unixsocketperm", "700"])
    try:
        gw = redis_gateway(gateway_factory, upstream, "unix:" + sock)
        assert wait_redis_up(gw)
        gw.get(path("ux", "Cache-Control: max-age=60"))
        assert len(wait_keys(srv)) == 1
    finally:
        srv.stop()


def test_pipelining_under_load(gateway_factory, upstream, redis_server):
    """Concurrent misses of distinct keys: their GETs share writes (depth above 1)."""
    gw = redis_gateway(gateway_factory, upstream, redis_server, workers=1)
    assert wait_redis_up(gw)

    def one(i):
        return gw.get(path("pl%d" % i, "Cache-Control: max-age=60")).status

    with ThreadPoolExecutor(32) as pool:
        assert set(pool.map(one, range(600))) == {200}
    deadline = time.monotonic() + 5
    while True:
        m = gw.metrics()
        count = m.value("gateway_redis_pipeline_depth_count")
        total = m.value("gateway_redis_pipeline_depth_sum")
        if total >= 1200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    # one GET per miss and one SET per stored answer, fewer writes than commands
    assert total == 1200 and 0 < count < total, (count, total)


def test_reload_moves_to_another_redis(gateway_factory, upstream, redis_server, tmp_path):
    second = RedisServer(tmp_path)
    try:
        gw = redis_gateway(gateway_factory, upstream, redis_server, workers=2)
        assert wait_redis_up(gw)
        gw.reload(lambda s: s["redis"].update(address=second.addr))
        # each worker switches at its next loop turn and then connects anew: stores made
        # meanwhile are skipped (a later miss), so keep storing until one lands
        deadline = time.monotonic() + 10
        i = 0
        while not second.command("KEYS", "gwc1:*"):
            assert time.monotonic() < deadline, "nothing reached the new Redis"
            gw.get(path("mv%d" % i, "Cache-Control: max-age=60"))
            i += 1
            time.sleep(0.05)
        before = set(redis_server.command("KEYS", "gwc1:*"))
        gw.get(path("mv-last", "Cache-Control: max-age=60"))
        deadline = time.monotonic() + 5
        while not any("mv-last" in k for k in second.command("KEYS", "gwc1:*")):
            assert time.monotonic() < deadline, "the new Redis did not get the next entry"
            time.sleep(0.01)
        assert set(redis_server.command("KEYS", "gwc1:*")) == before, "still storing in the old"
        # and a reload without the block closes the connections
        gw.reload(lambda s: s.pop("redis"))
        deadline = time.monotonic() + 5
        while gw.metrics().find("gateway_redis_up") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not gw.metrics().find("gateway_redis_up")
        assert gw.get(path("mv2")).status == 200
    finally:
        second.stop()
