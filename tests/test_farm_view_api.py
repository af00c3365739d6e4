"""SPEC 7.2 and 7.3 over the HTTP API (webtest): materials, the library's reservations
by post, phones' names and groups, and the input endpoint's checks."""
from __future__ import annotations

import hashlib

import pytest

import tikmatrix_lite as tl
from conftest import ROOT

API = "/api/v1"
MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00" * 2000
MOV = b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00" + b"\x11" * 500
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 300


@pytest.fixture
def app(make_app, make_config):
    # the real scripts: post is the one with the material-library hook
    return make_app(make_config(scripts=ROOT / "scripts", max_upload_mb=1))


@pytest.fixture
def web(client):
    return client


def ok(resp):
    assert resp.status_int == 200, resp.body
    assert resp.json["code"] == 0, resp.json
    return resp.json["data"]


def err(resp, code, *words):
    body = resp.json
    assert body["code"] == code and resp.status_int == code // 100, body
    for word in words:
        assert word in body["message"], (word, body["message"])
    return body["message"]


def upload(web, files, status="*", **fields):
    return web.post(API + "/material", params=fields,
                    upload_files=[("file", name, data) for name, data in files],
                    status=status)


def library_files(app):
    folder = app.lite.config.materials_dir
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# -- materials ------------------------------------------------------------------------
def test_upload_checks_kind_by_content_and_dedups(web, app, add_account):
    add_account("shop", "P1")
    items = ok(upload(web, [("a.mp4", MP4), ("b.png", PNG)], tags="cats, dogs,,cats",
                      username="@shop", caption="hello"))["items"]
    assert [i["kind"] for i in items] == ["video", "image"]
    video = items[0]
    assert video["name"] == "a.mp4" and video["size"] == len(MP4)
    assert video["sha256"] == hashlib.sha256(MP4).hexdigest()
    assert video["tags"] == ["cats", "dogs"] and video["username"] == "shop"
    assert video["caption"] == "hello" and video["used_count"] == 0
    # the same bytes under another name are the same material
    again = ok(upload(web, [("copy.bin", MP4)]))["items"]
    assert again[0]["id"] == video["id"]
    assert len(library_files(app)) == 2                    # no temp file left
    got = web.get(video["url"])
    assert got.body == MP4
    part = web.get(video["url"], headers={"Range": "bytes=4-11"}, status=206)
    assert part.body == b"ftypmp42"


def test_bad_uploads_leave_nothing_behind(web, app):
    # a text file named .mp4 is refused by its content, with the good file beside it
    err(upload(web, [("ok.mp4", MP4), ("evil.mp4", b"#!/bin/sh\nrm -rf /\n" * 10)]),
        40001, "file", "evil.mp4")
    assert library_files(app) == [] and ok(web.get(API + "/material"))["total"] == 0
    # over --max-upload-mb (1 MiB here)
    err(upload(web, [("big.mp4", MP4 + b"\x00" * (2 * 1024 * 1024))]), 41301)
    assert library_files(app) == []
    # cut off before its closing boundary
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"v.mp4\"\r\n"
            b"Content-Type: video/mp4\r\n\r\n" + MP4[:1000])
    resp = web.request(API + "/material", method="POST", body=body, status="*",
                       headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
    err(resp, 40001, "cut off")
    assert library_files(app) == []
    err(web.post(API + "/material", b"{}", content_type="application/json", status="*"),
        40001, "multipart")
    err(upload(web, [("a.mp4", MP4)], username="nobody"), 40001, "username")
    assert library_files(app) == []


def test_list_filter_update_delete(web, app, add_account):
    add_account("shop", "P1")
    v = ok(upload(web, [("v.mp4", MP4)], tags="cats"))["items"][0]
    i = ok(upload(web, [("i.png", PNG)], tags="dogs", username="shop"))["items"][0]
    assert [m["id"] for m in ok(web.get(API + "/material?kind=video"))["items"]] == [v["id"]]
    assert [m["id"] for m in ok(web.get(API + "/material?tag=dogs"))["items"]] == [i["id"]]
    assert [m["id"] for m in ok(web.get(API + "/material?username=@shop"))["items"]] == \
        [i["id"]]
    assert ok(web.get(API + "/material?unused=1"))["total"] == 2
    err(web.get(API + "/material?kind=audio", status="*"), 40001, "kind")
    changed = ok(web.put_json(API + f"/material/{v['id']}",
                              {"tags": ["x", "y"], "caption": "c", "username": "shop"}))
    assert changed["tags"] == ["x", "y"] and changed["caption"] == "c"
    assert changed["username"] == "shop"
    err(web.put_json(API + f"/material/{v['id']}", {"tags": 5}, status="*"), 40001, "tags")
    assert ok(web.get(API + f"/material/{v['id']}"))["caption"] == "c"
    ok(web.delete(API + f"/material/{v['id']}"))
    err(web.get(API + f"/material/{v['id']}", status="*"), 40401)
    err(web.get(API + "/material/abc", status="*"), 40401)
    assert len(library_files(app)) == 1


def post_task(web, serial, **config):
    return web.post_json(API + "/task", {"serials": [serial], "script_name": "post",
                                         "script_config": config}, status="*")


def test_post_reserves_library_material_once(web, app, add_device):
    store = app.lite.store
    add_device("P1")
    a = ok(upload(web, [("a.mp4", MP4)], tags="cats", caption="from the library"))["items"][0]
    b = ok(upload(web, [("b.mov", MOV)], tags="cats"))["items"][0]
    ok(upload(web, [("c.png", PNG)], tags="cats"))
    first = ok(post_task(web, "P1", materials_tags="cats"))["task_ids"][0]
    second = ok(post_task(web, "P1", materials_tags="dogs, cats"))["task_ids"][0]
    configs = [ok(web.get(API + f"/task/{t}"))["script_config"] for t in (first, second)]
    assert {c["material_ids"][0] for c in configs} == {a["id"], b["id"]}
    assert configs[0]["captions"] == "from the library"
    assert all(p.startswith(str(app.lite.config.materials_dir))
               for c in configs for p in c["material_list"])
    # no video left with those tags: the whole request is refused, nothing written
    before = store.query_one("SELECT COUNT(*) FROM tasks")[0]
    err(post_task(web, "P1", materials_tags="cats"), 40001, "materials_tags", "cats")
    assert store.query_one("SELECT COUNT(*) FROM tasks")[0] == before
    # a held material cannot be deleted; deleting the task releases it
    held = configs[1]["material_ids"][0]
    err(web.delete(API + f"/material/{held}", status="*"), 40001, "held")
    ok(web.delete(API + f"/task/{second}"))
    assert ok(web.get(API + f"/material/{held}"))["reserved_by"] is None
    third = ok(post_task(web, "P1"))["task_ids"][0]          # any tag: takes it again
    # completion marks the material used; it is never picked again
    row = store.claim_next("P1", store.clock())
    assert row["id"] == first
    store.finish(first, ok=True)
    used = ok(web.get(API + f"/material/{configs[0]['material_ids'][0]}"))
    assert used["used_count"] == 1 and used["reserved_by"] is None
    # a final failure releases
    store.claim_next("P1", store.clock())
    store.finish(third, ok=False, error="boom")
    assert ok(web.get(API + f"/material/{held}"))["reserved_by"] is None
    assert ok(web.get(API + "/material?unused=1&kind=video"))["total"] == 1


def test_post_images_reserve_image_count(web, app, add_device):
    add_device("P1")
    ok(upload(web, [("c.png", PNG)]))
    err(post_task(web, "P1", content_type=1, image_count=2), 40001, "image", "1 left")
    ok(upload(web, [("d.png", PNG + b"\x01")]))
    ids = ok(post_task(web, "P1", content_type=1, image_count=2))["task_ids"]
    assert len(ok(web.get(API + f"/task/{ids[0]}"))["script_config"]["material_list"]) == 2


# -- phones ----------------------------------------------------------------------------
def test_alias_groups_and_tasks_by_group(web, app, add_device):
    for serial in ("P1", "P2", "P3"):
        add_device(serial)
    d = ok(web.put_json(API + "/device/P1", {"alias": " Shelf A ", "groups": ["a", "b"]}))
    assert d["alias"] == "Shelf A" and d["groups"] == ["a", "b"]
    ok(web.put_json(API + "/device/P2", {"groups": ["b"]}))
    err(web.put_json(API + "/device/P2", {"groups": "b"}, status="*"), 40001, "groups")
    err(web.put_json(API + "/device/nope", {"alias": "x"}, status="*"), 40401)
    ids = ok(web.post_json(API + "/task", {"groups": ["b"], "script_name": "follow",
                                           "script_config": {"target_users": ["nasa"]},
                                           "source": "ui"}))["task_ids"]
    tasks = [ok(web.get(API + f"/task/{t}")) for t in ids]
    assert sorted(t["serial"] for t in tasks) == ["P1", "P2"]
    assert {t["source"] for t in tasks} == {"ui"}
    err(web.post_json(API + "/task", {"groups": ["zzz"], "script_name": "follow",
                                      "script_config": {"target_users": ["x"]}},
                      status="*"), 40001, "groups")


def test_forget_device(web, app, add_device):
    add_device("P1", state="offline")
    add_device("P2", state="offline")
    web.post_json(API + "/task", {"serials": ["P1"], "script_name": "follow",
                                  "script_config": {"target_users": ["nasa"]}})
    err(web.delete(API + "/device/P1", status="*"), 40001, "pending")
    ok(web.delete(API + "/device/P2"))
    assert [d["serial"] for d in ok(web.get(API + "/device"))["items"]] == ["P1"]
    err(web.delete(API + "/device/P2", status="*"), 40401)


@pytest.mark.parametrize("body, words", [
    ({}, ["action", "required"]),
    ({"action": "fly"}, ["action", "one of"]),
    ({"action": "tap", "x": 1}, ["y", "required"]),
    ({"action": "tap", "x": -1, "y": 5}, ["x", "at least"]),
    ({"action": "swipe", "x1": 1, "y1": 1, "x2": 1}, ["y2"]),
    ({"action": "key", "key": "BACK; reboot"}, ["key"]),
    ({"action": "text", "text": ""}, ["text"]),
    ({"action": "text", "text": 5}, ["text", "string"]),
])
def test_input_is_checked_field_by_field(web, add_device, body, words):
    add_device("P1")
    err(web.post_json(API + "/device/P1/input", body, status="*"), 40001, *words)


def test_input_and_screens_need_the_device_layer(web, add_device):
    add_device("P1")
    err(web.post_json(API + "/device/P1/input", {"action": "tap", "x": 1, "y": 2},
                      status="*"), 50001, "device layer")
    err(web.get(API + "/device/P1/screenshot?format=gif", status="*"), 40001, "format")
    err(web.get(API + "/device/P1/screenshot?max_age_ms=x", status="*"), 40001, "max_age_ms")
    err(web.get(API + "/device/nope/screenshot", status="*"), 40401)


def test_the_page_is_served_without_key_and_the_api_is_not(make_app, make_config,
                                                           make_client):
    application = make_app(make_config(api_key="s3cret"))
    web = make_client(application)
    page = web.get("/")
    assert page.content_type == "text/html" and b"<html" in page.body
    assert web.get("/web/app.js").content_type in ("application/javascript",
                                                   "text/javascript")
    err(web.get(API + "/task", status="*"), 40101)
    err(web.get("/web/../tikmatrix_lite.py", status="*"), 40401)


def test_folder_media_ledger_in_sqlite(app, add_device):
    store = app.lite.store
    add_device("P1")
    ids = store.create_tasks([tl.NewTask(serial="P1", script_name="post", script_config={})
                              for _ in range(2)])
    files = ["/m/a.mp4", "/m/b.mp4", "/m/c.mp4"]
    assert store.claim_folder_media(ids[0], files, 2) == ["/m/a.mp4", "/m/b.mp4"]
    assert store.claim_folder_media(ids[1], files, 2) == ["/m/c.mp4"]    # too few: none taken
    assert store.claim_folder_media(ids[1], files, 1) == ["/m/c.mp4"]
    assert store.claim_folder_media(ids[1], files, 1) == []
