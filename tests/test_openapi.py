"""The OpenAPI document and the declarations it is made from.

The document must be valid OpenAPI 3 (openapi-spec-validator) with a type on every
property, and it must tell the truth: a fuzzer that makes requests from the same
declarations (hypothesis) finds none that the server answers with a 500 or refuses for
its shape. Refusals for what the data means (an unknown device, a task that is not
failed) are the API's to make and are allowed.
"""
from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

import tikmatrix_lite as tml

API = tml.API_PREFIX
#: what a request the schema allows must never be told: its shape was wrong
SHAPE_WORDS = ("must be ", "is required", "is longer than", "has more than",
               "is out of range", "is not valid JSON", "contains a NUL", "is empty")
#: text as the schema allows it where it has no pattern of its own: anything but a NUL
TEXT = st.characters(blacklist_characters="\x00")


@pytest.fixture
def doc(client):
    resp = client.get(API + "/openapi.json")
    assert resp.status_int == 200
    return resp.json


def test_document_passes_openapi_spec_validator(doc):
    from openapi_spec_validator import validate
    validate(doc)                                 # raises on any error


def _schemas(node, where="$"):
    """Every (place, schema) under properties, items and components."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "properties":
                for name, schema in value.items():
                    yield f"{where}.{name}", schema
            yield from _schemas(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _schemas(value, f"{where}[{i}]")


def test_every_property_has_a_type(doc):
    places = list(_schemas(doc))
    assert len(places) > 100
    untyped = [place for place, schema in places
               if not ({"type", "$ref", "anyOf", "allOf"} & set(schema))]
    assert untyped == []


def test_named_schemas_are_used_by_the_answers(doc):
    text = json.dumps(doc["paths"])
    for name in ("Task", "Device", "Account", "Script", "TaskDetail"):
        assert f'"#/components/schemas/{name}"' in text, name
    create = doc["paths"][API + "/task"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]
    assert create["required"] == ["script_name", "script_config"]
    assert create["properties"]["priority"] == {
        "type": "integer", "format": "int64", "default": 0, "minimum": -100, "maximum": 100}
    listing = {p["name"]: p["schema"] for p in doc["paths"][API + "/task"]["get"]["parameters"]}
    assert listing["page_size"]["minimum"] == 1 and "maximum" not in listing["page_size"]
    assert "security" in doc and doc["components"]["securitySchemes"]
    assert create["properties"]["script_name"]["minLength"] == 1
    assert listing["serial"]["pattern"] == "^[^\\x00]*$"     # no NUL in any string


def test_security_is_required_when_a_key_is_set(make_app, make_config, make_client):
    app = make_app(make_config(api_key="k"))
    doc = make_client(app, HTTP_X_API_KEY="k").get(API + "/openapi.json").json
    assert doc["security"] == [{"bearer": []}, {"apiKey": []}]


# -- the fuzzer --------------------------------------------------------------------------
KNOWN = {"serial": ["d1", "d2"], "serials": ["d1", "d2"], "username": ["alice", "@bob"],
         "usernames": ["alice", "bob"], "script_name": ["echo", "fanout", "like"]}


def value_of(decl, name=""):
    """Values the declaration allows, with the known names mixed in."""
    kind = decl["type"]
    if isinstance(kind, list):                    # one of several types (tags: array or text)
        return st.one_of([value_of({**decl, "type": k}, name) for k in kind])
    if kind == "str":
        if "choices" in decl:
            base = st.sampled_from(decl["choices"])
        elif "pattern" in decl:
            base = st.from_regex(decl["pattern"], fullmatch=True)
        else:
            base = st.text(TEXT, min_size=decl.get("min_length", 0),
                           max_size=min(decl.get("max_length", 100_000), 30))
        base = base.filter(lambda t: len(t) <= decl.get("max_length", 100_000))
        return st.sampled_from(KNOWN[name]) | base if name in KNOWN else base
    if kind == "int":
        if "choices" in decl:
            return st.sampled_from(decl["choices"])
        return st.integers(decl.get("min", tml.INT64[0]), decl.get("max", tml.INT64[1]))
    if kind == "float":
        return st.floats(decl.get("min"), decl.get("max"), allow_nan=False,
                         allow_infinity=False)
    if kind == "bool":
        return st.booleans()
    if kind == "list":
        items = decl.get("items") or "str"         # a list of anything: of text, say
        items = {"type": items} if isinstance(items, str) else items
        return st.lists(value_of(items, name), max_size=min(decl.get("max_items", 10), 4))
    # a free object's keys and text are strings too: no NUL (the schema's rule)
    return st.dictionaries(st.text(TEXT, max_size=8), st.integers(0, 5) |
                           st.text(TEXT, max_size=8), max_size=3)


def _utf8(value):
    """Whether a form field's value can be written as UTF-8."""
    items = value if isinstance(value, list) else [value]
    try:
        for item in items:
            str(item).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def fields_of(decls):
    required = {n: value_of(d, n) for n, d in decls.items() if d.get("required")}
    optional = {n: value_of(d, n) for n, d in decls.items() if not d.get("required")}
    return st.fixed_dictionaries(required, optional=optional)


def as_query(fields):
    return urlencode({k: v if isinstance(v, str) else repr(v) for k, v in fields.items()})


@st.composite
def requests(draw, routes):
    spec = draw(st.sampled_from(routes))
    path = spec["path"]
    path = path.replace("{task_id}", str(draw(st.sampled_from([1, 2, 3]) |
                                              st.integers(0, tml.INT64[1]))))
    path = path.replace("{material_id}", str(draw(st.sampled_from([1, 2]) |
                                                  st.integers(0, tml.INT64[1]))))
    for name in ("schedule_id", "key_id"):          # issue 10's (none exist: 40401)
        path = path.replace("{%s}" % name, str(draw(st.sampled_from([1, 2]) |
                                                    st.integers(0, tml.INT64[1]))))
    for name in ("username", "serial", "name"):
        path = path.replace("{%s}" % name, draw(
            st.sampled_from(["alice", "d1", "screenshot.png"]) |
            st.text("abc._-@", min_size=1, max_size=8)))
    body = draw(fields_of(spec["body"])) if spec["body"] else None
    query = as_query(draw(fields_of(spec["query"]))) if spec["query"] else ""
    return spec, API + path + ("?" + query if query else ""), body


def test_schema_valid_requests_are_never_refused_for_their_shape(app, client, add_account):
    add_account("alice", "d1")
    add_account("bob", "d2", platform="instagram")
    client.post_json(API + "/task", {"serials": ["d1"], "script_name": "echo",
                                     "script_config": {"text": "x"}})
    # the routes that would reach adb (absent here) or wait on phones are left out, and
    # so is the event stream, which never ends (tests/test_events.py); multipart uploads
    # are fuzzed by the test below
    # an admin key made by POST /apikey would turn keys on (SPEC 8.5): every later
    # request would be a 40101, so that route is left out too (tests/test_keys_metrics.py)
    routes = [r for r in app.api.routes if not r["path"].startswith("/device/")
              and r["path"] != "/events" and r["consumes"] == "application/json"
              and not (r["method"] == "POST" and r["path"] == "/apikey")]

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(requests(routes))
    def check(request):
        spec, url, body = request
        params = json.dumps(body) if body is not None else ""
        resp = client.request(url, method=spec["method"], body=params.encode(),
                              content_type="application/json", expect_errors=True)
        if resp.content_type != "application/json" or spec["path"] == "/openapi.json":
            assert resp.status_int in (200, 404), (url, resp.status)
            return
        reply = resp.json
        assert resp.status_int < 500, (spec["method"], url, body, reply)
        if reply["code"] == 40001 and not reply["message"].startswith("script_config"):
            assert not any(w in reply["message"] for w in SHAPE_WORDS), (url, body, reply)

    check()


MEDIA_HEADS = [b"\x00\x00\x00\x18ftypmp42", b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n",
               b"GIF89a", b"not media at all"]


def test_schema_valid_uploads_are_never_refused_for_their_shape(app, client, add_account):
    add_account("alice", "d1")
    spec = next(r for r in app.api.routes if r["path"] == "/material")
    assert spec["consumes"] == "multipart/form-data"

    @settings(max_examples=60, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(fields_of(spec["body"]),
           st.lists(st.tuples(st.text("abc._- ", min_size=1, max_size=8),
                              st.sampled_from(MEDIA_HEADS), st.binary(max_size=64)),
                    min_size=1, max_size=3))
    def check(fields, files):
        # a form field travels as UTF-8 bytes: a lone surrogate cannot be sent at all
        # (the JSON routes get it escaped, and refuse it: test_bad_text.py)
        assume(all(_utf8(v) for v in fields.values()))
        uploads = [("file", name, head + tail) for name, head, tail in files]
        resp = client.post(API + "/material", params=fields, upload_files=uploads,
                           expect_errors=True)
        reply = resp.json
        assert resp.status_int < 500, (fields, reply)
        if reply["code"] == 40001:
            assert not any(w in reply["message"] for w in SHAPE_WORDS), (fields, reply)

    check()
