"""A real waitress server in the test process, on a free loopback port.

``serve(config, lite)`` binds with the module's own ``make_server`` (so its thread
counts are the ones under test) and runs it in a thread until the context ends.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import threading
from typing import Iterator, Optional

import tikmatrix_lite as lite_module


class LiveServer:
    def __init__(self, server, lite):
        self.server, self.lite = server, lite
        self.port = server.effective_port
        self.base = f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body=None, headers=None, timeout=10.0):
        """(status, parsed JSON or bytes) of one request on a fresh connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        try:
            conn.request(method, path, body=data, headers=headers or {})
            reply = conn.getresponse()
            raw = reply.read()
        finally:
            conn.close()
        if reply.getheader("Content-Type", "").startswith("application/json"):
            return reply.status, json.loads(raw)
        return reply.status, raw


@contextlib.contextmanager
def serve(config: lite_module.Config, lite: Optional[lite_module.Server] = None,
          **lite_kwargs) -> Iterator[LiveServer]:
    config.host, config.port = "127.0.0.1", 0
    own = lite is None
    lite = lite or lite_module.Server(config, **lite_kwargs)
    server = lite_module.make_server(config, lite)
    thread = threading.Thread(target=server.run, name="test-waitress", daemon=True)
    thread.start()
    try:
        yield LiveServer(server, lite)
    finally:
        lite.events.close(wait=10)          # open streams end, so waitress can close
        server.close()
        thread.join(timeout=10)
        if own:
            lite.close()


class EventReader:
    """Reads one text/event-stream response event by event (a blocking socket)."""

    def __init__(self, port: int, path: str = "/api/v1/events", headers=None,
                 timeout: float = 20.0):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.conn.request("GET", path, headers=headers or {})
        self.response = self.conn.getresponse()

    def next(self) -> dict:
        """The next event (comments are skipped): {"id", "event", "data"}."""
        event: dict = {}
        while True:
            line = self.response.readline()
            if not line:
                raise EOFError("event stream closed")
            line = line.decode("utf-8").rstrip("\n")
            if not line:
                if "event" in event:
                    return event
                event = {}
                continue
            if line.startswith(":"):
                event.setdefault("comments", 0)
                continue
            name, _, value = line.partition(": ")
            if name == "id":
                event["id"] = int(value)
            elif name == "event":
                event["event"] = value
            elif name == "data":
                event["data"] = json.loads(value)

    def until(self, predicate, limit: int = 200) -> dict:
        for _ in range(limit):
            event = self.next()
            if predicate(event):
                return event
        raise AssertionError("no matching event")

    def close(self) -> None:
        self.conn.close()
