"""The real waitress server: idle sockets of one host must not shut out an allowed client.

Other hosts are other loopback addresses (127.0.0.2, 127.0.0.3 are loopback on Linux),
with an allow-list that names only some of them.
"""
from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import threading

import pytest

import tikmatrix_lite as tml
from farm import wait_until


@pytest.fixture
def serve(make_config, tmp_path):
    """serve(allow=[...]) -> the port of a real waitress server running the API."""
    started = []

    def start(allow):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        config = make_config(host="127.0.0.1", port=port,
                             allow_from=[ipaddress.ip_network(a) for a in allow])
        lite = tml.Server(config, with_devices=False)
        server = tml.make_server(config, lite)
        def run():
            with contextlib.suppress(OSError):      # select() on sockets closed below
                server.run()
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        started.append((server, thread, lite))
        return port

    yield start
    for server, thread, lite in started:
        server.close()
        thread.join(5)
        lite.close()


def idle_sockets(port, source, count):
    """count connections from the address `source` that never send anything."""
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind((source, 0))
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))
        sockets.append(sock)
    return sockets


def still_open(sockets):
    """How many of the sockets the server has not closed."""
    alive = 0
    for sock in sockets:
        sock.setblocking(False)
        try:
            alive += sock.recv(1) != b""
        except BlockingIOError:
            alive += 1                                  # nothing to read: still open
        except OSError:
            pass
    return alive


def get(port, path="/api/v1/health", source="127.0.0.1", conn=None):
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=5,
                                              source_address=(source, 0))
    conn.request("GET", path)
    reply = conn.getresponse()
    reply.read()
    return reply.status, conn


def test_idle_sockets_of_a_stranger_do_not_shut_out_an_allowed_client(serve):
    port = serve(["127.0.0.1/32"])
    hostile = idle_sockets(port, "127.0.0.2", 150)      # waitress alone allows 100
    try:
        assert get(port)[0] == 200
        wait_until(lambda: still_open(hostile) <= tml.CONNECTIONS_PER_STRANGER, 10,
                   "the stranger's extra sockets closed")
        for _ in range(20):
            assert get(port)[0] == 200
    finally:
        for sock in hostile:
            sock.close()


def test_an_allowed_host_cannot_take_every_connection(serve):
    """An allowed client with several streams open still gets through while another
    allowed host holds idle sockets far beyond its share."""
    port = serve(["127.0.0.1/32", "127.0.0.3/32"])
    streams = [get(port)[1] for _ in range(6)]          # kept-alive, like event streams
    greedy = idle_sockets(port, "127.0.0.3", 300)
    try:
        wait_until(lambda: still_open(greedy) <= tml.CONNECTIONS_PER_HOST, 10,
                   "the greedy host capped")
        for conn in streams:                            # the open ones still answer
            assert get(port, conn=conn)[0] == 200
        for _ in range(10):
            assert get(port)[0] == 200                  # and new ones get in
    finally:
        for sock in greedy:
            sock.close()
        for conn in streams:
            conn.close()


def test_a_stranger_is_still_told_it_is_not_allowed(serve):
    port = serve(["127.0.0.1/32"])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5,
                                      source_address=("127.0.0.2", 0))
    conn.request("GET", "/api/v1/health")
    reply = conn.getresponse()
    assert reply.status == 403 and b"40301" in reply.read()
    conn.close()


def test_the_main_loop_sleeps_while_a_worker_holds_the_output(monkeypatch):
    """While a worker holds a connection's output lock with bytes to send (it is in
    the middle of sending them), the main loop must wait, not spin: stock waitress
    says the socket is writable, fails to take the lock and turns again at once, many
    thousand times a second, taking the GIL from the worker it waits for."""
    import time
    import waitress.server
    import waitress.wasyncore as wasyncore
    turns = [0]
    real_poll = wasyncore.poll

    def counting_poll(*args, **kwargs):
        turns[0] += 1
        return real_poll(*args, **kwargs)
    monkeypatch.setattr(wasyncore, "poll", counting_poll)
    running, release = threading.Event(), threading.Event()

    def app(environ, start_response):
        running.set()
        release.wait(10)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]
    server = waitress.server.create_server(app, host="127.0.0.1", port=0, threads=2,
                                           asyncore_loop_timeout=1)
    server.channel_class = tml._capped_channel_class([ipaddress.ip_network("127.0.0.0/8")])

    def run():
        with contextlib.suppress(OSError):
            server.run()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        client = socket.create_connection(("127.0.0.1", server.effective_port), timeout=10)
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert running.wait(10)
        channel = next(c for c in list(server._map.values()) if hasattr(c, "outbuf_lock"))
        with channel.outbuf_lock:                       # what a worker's send holds
            channel.outbufs[-1].append(b"HTTP/1.1 200 OK\r\n")
            channel.total_outbufs_len += 17
            server.pull_trigger()       # any event on a busy server wakes the loop now
            before = turns[0]
            time.sleep(0.5)                             # the window observed, not a race
            spun = turns[0] - before
        server.pull_trigger()                           # as write_soon does after it
        release.set()
        assert spun <= 3, f"the main loop turned {spun} times in 0.5 s"
        assert client.recv(100).startswith(b"HTTP/1.1 200 OK")     # then it is sent
        client.close()
    finally:
        release.set()
        server.close()
        thread.join(5)
