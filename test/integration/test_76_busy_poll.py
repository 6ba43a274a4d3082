"""busy_poll_us: a busy worker spins briefly for new completions before it sleeps, and 0 turns
the spin off. gateway_ring_busy_polls_total{result} counts spins
that found work and spins that ended in a sleep."""

import json
import subprocess
import threading

from gwtest import gateway_bin, route_block, upstream_block


def polls(gw):
    m = gw.metrics()
    return (m.value("gateway_ring_busy_polls_total", result="work"),
            m.value("gateway_ring_busy_polls_total", result="sleep"))


def load(gw, clients=6, each=150):
    """Keep-alive GETs from several clients at once, as fast as they answer."""
    errors = []

    def client():
        try:
            c = gw.conn()
            for _ in range(each):
                r = gw.request("GET", "/ok", conn=c)
                assert r.status == 200, r
            c.close()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]


def start(gateway_factory, upstream, **top):
    return gateway_factory(upstreams=[upstream_block("app", upstream.addr)],
                           routes=[route_block("default", "app")], workers=1, access_log=False,
                           **top)


def test_busy_worker_spins_and_finds_work(gateway_factory, upstream):
    """Under load (the default, 10 us), spins happen and some of them find work, so those
    completions were taken without a sleep and a wake-up."""
    gw = start(gateway_factory, upstream)
    load(gw)
    work, sleep = polls(gw)
    assert work > 0, (work, sleep)


def test_zero_turns_the_spin_off(gateway_factory, upstream):
    """busy_poll_us = 0: the same load makes no spin at all, and -T shows the value."""
    gw = start(gateway_factory, upstream, busy_poll_us=0)
    load(gw)
    assert polls(gw) == (0, 0)
    path = json.loads(gw.admin("/config").body)["file"]
    dump = subprocess.run([gateway_bin(), "-T", "-c", path], capture_output=True, text=True,
                          timeout=30).stdout
    assert "busy_poll_us = 0;" in dump, dump[:500]


def test_reload_changes_busy_poll(gateway_factory, upstream):
    """A reload to 0 stops the spins; one back to 10 starts them again."""
    gw = start(gateway_factory, upstream, busy_poll_us=0)

    def set_poll(v):
        def change(s):
            s["busy_poll_us"] = v
        return change

    gw.reload(set_poll(10))
    load(gw)
    work, _ = polls(gw)
    assert work > 0
    gw.reload(set_poll(0))
    load(gw, clients=2, each=20)  # the worker takes the new config on its next turn
    after = polls(gw)
    load(gw)
    assert polls(gw) == after
