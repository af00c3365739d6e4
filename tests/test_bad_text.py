"""Text no phone or database can take, and JSON nested without end, in any body or query:
always a 40001 that names the field, never a 500 and never a half-written change.

A property test (hypothesis) makes requests for every endpoint from the declarations,
puts a NUL or a lone UTF-16 surrogate into one of its strings, and checks the answer.
"""
from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

import tikmatrix_lite as tml
from test_openapi import as_query, fields_of

API = tml.API_PREFIX
BAD = st.sampled_from(["\x00"] + [chr(c) for c in (0xD800, 0xDBFF, 0xDC00, 0xDFFF)])


@pytest.fixture
def ready(app, client, add_account):
    add_account("alice", "d1")
    client.post_json(API + "/task", {"serials": ["d1"], "script_name": "echo",
                                     "script_config": {"text": "x"}})
    return app, client


def send(client, method, path, body):
    return client.request(API + path, method=method, expect_errors=True,
                          body=json.dumps(body).encode(), content_type="application/json")


def strings_of(value, where=""):
    """(field name as the server names it, setter) of every string in a body."""
    if isinstance(value, dict):
        for key, item in value.items():
            name = f"{where}.{key}" if where else key
            if isinstance(item, str):
                yield name, (value, key)
            else:
                yield from strings_of(item, name)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, str):
                yield f"{where}[{i}]", (value, i)
            else:
                yield from strings_of(item, f"{where}[{i}]")


def clean(body):
    try:
        tml.check_json(body)
    except tml.BadRequest:
        return False
    return True


def body_routes(app):
    """Routes with a JSON body (a multipart upload's fields: test_farm_view_api.py)."""
    return [r for r in app.api.routes if r["body"] and r["consumes"] == "application/json"]


def test_every_body_string_with_bad_text_is_refused_by_name(ready):
    app, client = ready

    @settings(max_examples=200, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def check(data):
        spec = data.draw(st.sampled_from(body_routes(app)))
        body = data.draw(fields_of(spec["body"]))
        if isinstance(body.get("script_config"), dict):  # a key no script declares
            body["script_config"]["free"] = data.draw(st.text(max_size=5))
        assume(clean(body))                              # one bad string: the one put in
        places = list(strings_of(body))
        if not places:
            return
        name, (holder, key) = data.draw(st.sampled_from(places))
        text = holder[key]
        at = data.draw(st.integers(0, len(text)))
        holder[key] = text[:at] + data.draw(BAD) + text[at:]
        path = spec["path"].replace("{task_id}", "1").replace("{username}", "alice") \
            .replace("{material_id}", "1").replace("{schedule_id}", "1")
        before = app.lite.store.query("SELECT COUNT(*) FROM tasks")[0][0]
        resp = send(client, spec["method"], path, body)
        reply = resp.json
        assert reply["code"] == 40001 and reply["message"].startswith(name), (name, reply)
        assert app.lite.store.query("SELECT COUNT(*) FROM tasks")[0][0] == before

    check()


def test_bad_text_in_a_field_nobody_reads_is_ignored(ready):
    _, client = ready
    reply = send(client, "POST", "/task", {"serials": ["d1"], "script_name": "echo",
                                           "script_config": {"text": "x"},
                                           "unused\x00": ["\ud800", "\x00"]}).json
    assert reply["code"] == 0


def test_a_bad_key_is_named_printably(ready):
    _, client = ready
    reply = send(client, "POST", "/task", {"serials": ["d1"], "script_name": "echo",
                                           "script_config": {"te\ud800xt": "x"}}).json
    assert reply["code"] == 40001 and reply["message"].startswith("script_config.te\\ud800xt")


def test_every_query_string_with_a_nul_is_refused_by_name(ready):
    app, client = ready
    routes = [r for r in app.api.routes
              if any(d["type"] == "str" for d in r["query"].values())]

    @settings(max_examples=100, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def check(data):
        spec = data.draw(st.sampled_from(routes))
        fields = data.draw(fields_of(spec["query"]))
        assume(clean(fields))
        names = [n for n, d in spec["query"].items() if d["type"] == "str"]
        name = data.draw(st.sampled_from(names))
        text = fields.get(name) or "x"
        at = data.draw(st.integers(0, len(text)))
        fields[name] = text[:at] + "\x00" + text[at:]
        reply = client.get(f"{API}{spec['path']}?{as_query(fields)}",
                           expect_errors=True).json
        assert reply["code"] == 40001 and reply["message"].startswith(name), (fields, reply)

    check()


@pytest.mark.parametrize("query, field", [
    ("serial=d%001", "serial"), ("username=al%00ice", "username"),
    ("script_name=%00", "script_name"), ("source=a%00", "source"), ("status=1%00", "status"),
])
def test_a_nul_in_a_query_is_refused_by_name(ready, query, field):
    _, client = ready
    reply = client.get(f"{API}/task?{query}", expect_errors=True).json
    assert reply["code"] == 40001 and reply["message"].startswith(field), reply


def test_a_surrogate_in_a_query_cannot_arrive():
    """A query is %-escaped UTF-8, which cannot carry a lone surrogate: its bytes decode
    as U+FFFD, ordinary text."""
    assert quote("\ud800".encode("utf-8", "surrogatepass")) == "%ED%A0%80"


def test_the_escaped_surrogate_bytes_in_a_query_are_harmless(ready):
    _, client = ready
    reply = client.get(f"{API}/task?serial=%ED%A0%80", expect_errors=True).json
    assert reply["code"] == 0 and reply["data"]["total"] == 0


@pytest.mark.parametrize("depth", [tml.MAX_JSON_DEPTH + 1, 1000, 100_000])
def test_json_nested_without_end_is_refused(ready, depth):
    app, client = ready
    nested = "[" * depth + "]" * depth
    raw = ('{"serials": ["d1"], "script_name": "echo", "script_config": {"text": "x", '
           f'"deep": {nested}}}}}').encode()
    resp = client.request(API + "/task", method="POST", body=raw,
                          content_type="application/json", expect_errors=True)
    reply = resp.json
    assert reply["code"] == 40001 and "nests deeper" in reply["message"], reply
    assert app.lite.store.query("SELECT COUNT(*) FROM tasks")[0][0] == 1


def test_json_as_deep_as_allowed_is_taken(ready):
    _, client = ready
    depth = tml.MAX_JSON_DEPTH - 2                # script_config and deep count too
    nested = "[" * depth + "]" * depth
    raw = ('{"serials": ["d1"], "script_name": "echo", "script_config": {"text": "x", '
           f'"deep": {nested}}}}}').encode()
    reply = json.loads(client.request(API + "/task", method="POST", body=raw,
                                      content_type="application/json").body)
    assert reply["code"] == 0
