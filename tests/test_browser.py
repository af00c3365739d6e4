"""The dashboard in a real headless Chromium (Debian's chromium, driven by Playwright)
against a real waitress server, a real adb server and simulated phones.

Screenshots of the page (desktop and phone width) are saved under tests/screenshots/.
Waits are Playwright's own (on the page's state, with deadlines) or wait_until.
"""
from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

import tikmatrix_lite as tl
from apps import TikTokApp
from farm import RUNNER_SCRIPTS, open_gate, wait_until
from live_server import serve
from phonesim import FASTINPUT_IME

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright_api = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed (.ci/run installs it)",
                allow_module_level=True)

HERE = Path(__file__).resolve().parent
SHOTS = HERE / "screenshots"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
#: the smallest MP4 the library accepts (its kind is read from the ftyp box)
MP4 = struct.pack(">I", 24) + b"ftypisom" + b"\x00\x00\x02\x00isomiso2" + b"\x00" * 4000


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def farm(tmp_path_factory, adb, sim):
    """A server running the real scripts plus the runner's test scripts, with phones:
    two plain ones, one with TikTok and TikMatrix's keyboard, one known but offline."""
    tmp = tmp_path_factory.mktemp("browser")
    scripts = tmp / "scripts"
    scripts.mkdir()
    for path in list((HERE.parent / "scripts").glob("*.py")) + \
            [RUNNER_SCRIPTS / n for n in ("gate.py", "say.py", "bail.py")]:
        shutil.copy(path, scripts / path.name)
    config = tl.Config(db=tmp / "farm.db", scripts=scripts,
                       adb_servers=[f"127.0.0.1:{adb.port}"], screen_fps=8)
    lite = tl.Server(config)
    lite.runner.heartbeat = 1.0
    lite.start()
    with serve(config, lite) as server:
        phones = [sim.add_device(model="Pixel 7"), sim.add_device(model="Galaxy A52")]
        app = TikTokApp("47.0.3")
        tiktok = sim.add_device(model="Pixel 8", ime="fastinput", apps=[app])
        tiktok.enabled_imes.add(FASTINPUT_IME)
        for phone in phones + [tiktok]:
            adb.connect(phone.address)
            wait_until(lambda: lite.devices.is_online(phone.address), 20, "online")
        lite.store.upsert_device("R58M00OFFLINE", state="offline", model="Galaxy S10")
        server.phones, server.tiktok, server.app = phones, tiktok, app
        server.tmp = tmp
        yield server
    lite.close()


@pytest.fixture
def page(browser, farm):
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, errors


def shoot(page, name):
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)


def tile(page, serial):
    return page.locator(f'.tile[data-serial="{serial}"]')


def api(farm, method, path, body=None):
    status, reply = farm.request(method, tl.API_PREFIX + path, body)
    assert reply["code"] == 0, reply
    return reply["data"]


def test_grid_shows_the_phones_and_their_screens(page, farm):
    api(farm, "PUT", f"/device/{farm.phones[0].address}",
        {"alias": "Shelf A · 1", "groups": ["shelf-a", "warmup"]})
    api(farm, "PUT", f"/device/{farm.tiktok.address}", {"alias": "Shelf A · 2",
                                                        "groups": ["shelf-a"]})
    page.goto(farm.base + "/")
    page.wait_for_selector(".live.on")
    for phone in farm.phones + [farm.tiktok]:
        screen = tile(page, phone.address).locator(".screen img")
        screen.wait_for()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                               arg=screen.element_handle())
    offline = tile(page, "R58M00OFFLINE")
    assert "off" in offline.get_attribute("class")
    assert "disconnected" in offline.inner_text()      # Lite has not seen it this run
    assert "Galaxy A52" in tile(page, farm.phones[1].address).inner_text()
    assert "warmup" in tile(page, farm.phones[0].address).inner_text()
    shoot(page, "phones-desktop")
    # a tile filtered out of view is no longer captured; the one shown still is
    hidden, shown = farm.phones
    page.fill("#phone-filter", "Galaxy A52")
    page.wait_for_function("serial => !screens.loops.has(serial)", arg=hidden.address,
                           timeout=30000)                    # its loop has ended
    hidden.clear_log()
    shown.clear_log()
    wait_until(lambda: len(shown.commands("screencap")) >= 2, 20, "two captures of the shown")
    assert hidden.commands("screencap") == []
    page.set_viewport_size(PHONE)
    shoot(page, "phones-phone")


def test_a_tap_on_the_opened_phone_reaches_the_phone(page, farm):
    phone = farm.phones[0]
    page.goto(farm.base + "/")
    tile(page, phone.address).click()
    image = page.locator("#pp-img")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                           arg=image.element_handle())
    box = image.bounding_box()
    phone.clear_log()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    record = phone.wait_for_command(lambda r: r.argv[:2] == ["input", "tap"], timeout=10)
    assert record is not None
    x, y = int(record.argv[2]), int(record.argv[3])
    assert abs(x - 540) < 30 and abs(y - 1200) < 40           # the middle of 1080x2400
    page.click("#phone-panel [data-key=HOME]")
    assert phone.wait_for_command(
        lambda r: r.argv == ["input", "keyevent", "KEYCODE_HOME"], timeout=10)
    shoot(page, "phone-opened-desktop")
    page.set_viewport_size(PHONE)
    shoot(page, "phone-opened-phone")


def test_a_task_from_the_form_runs_and_its_bar_completes_live(page, farm):
    phone = farm.phones[1]
    phone.fs.write("/sdcard/gate", b"closed\n")
    page.goto(farm.base + "/#new")
    page.select_option("#script-select", "gate")
    page.fill('[data-param="word"]', "from-the-form")
    page.check(f'#targets input[value="{phone.address}"]')
    shoot(page, "new-task-desktop")
    page.click("#new-task button[type=submit]")
    page.wait_for_selector("#new-result:has-text('Created 1')")
    page.evaluate("window.noReload = true")
    page.click("#tabs a[data-view=tasks]")
    row = page.locator("#task-rows tr").first
    row.locator(".badge.running").wait_for()
    page.wait_for_function("() => document.querySelector('#task-rows tr .progress')"
                           ".dataset.progress === '10'")
    page.click("#tabs a[data-view=phones]")                 # the farm while it runs
    tile(page, phone.address).locator(".progress").wait_for()
    shoot(page, "farm-desktop")
    page.click("#tabs a[data-view=tasks]")
    open_gate(phone)
    row = page.locator("#task-rows tr").first
    row.locator(".badge.completed").wait_for(timeout=20000)
    assert row.locator(".progress").get_attribute("data-progress") == "100"
    assert page.evaluate("window.noReload") is True            # updated without a reload
    task_id = int(row.get_attribute("data-id"))
    assert api(farm, "GET", f"/task/{task_id}")["source"] == "ui"
    shoot(page, "tasks-desktop")
    page.set_viewport_size(PHONE)
    shoot(page, "tasks-phone")


def test_the_form_shows_a_refusal_next_to_its_field(page, farm):
    page.goto(farm.base + "/#new")
    page.select_option("#script-select", "follow")
    page.check(f'#targets input[value="{farm.phones[0].address}"]')
    page.fill('[data-param="target_users"]', "")
    page.click("#new-task button[type=submit]")
    error = page.locator('[data-error-for="script_config"], '
                         '[data-error-for="script_config.target_users"]').filter(
        has_text="target")
    error.first.wait_for()


def test_stop_and_retry_from_the_table(page, farm):
    phone = farm.phones[0]
    phone.fs.write("/sdcard/gate", b"closed\n")
    [task_id] = api(farm, "POST", "/task", {"serials": [phone.address],
                                            "script_name": "gate", "script_config": {}})[
        "task_ids"]
    page.goto(farm.base + "/#tasks")
    row = page.locator(f'#task-rows tr[data-id="{task_id}"]')
    row.locator(".badge.running").wait_for(timeout=15000)
    page.on("dialog", lambda dialog: dialog.accept())
    row.locator("button[data-act=stop]").click()
    row.locator(".badge.failed").wait_for()
    assert "stopped by user" in row.inner_text()
    row.locator("button[data-act=retry]").click()
    row.locator(".badge.running").wait_for(timeout=15000)
    open_gate(phone)
    row.locator(".badge.completed").wait_for(timeout=20000)


def test_a_material_uploaded_through_the_page_is_used_by_a_post(page, farm):
    page.goto(farm.base + "/#materials")
    page.fill("#up-tags", "beach")
    # dropped on the drop zone, as a user drags a file from the desktop
    page.evaluate("""bytes => {
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array(bytes)], "beach day.mp4", {type: "video/mp4"}));
        document.querySelector("#drop").dispatchEvent(
            new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
    }""", list(MP4))
    page.wait_for_selector("#up-progress.completed")
    card = page.locator(".mat", has_text="beach day.mp4")
    card.wait_for()
    [task_id] = api(farm, "POST", "/task", {
        "serials": [farm.tiktok.address], "script_name": "post",
        "script_config": {"materials_tags": "beach", "post_way": "addButton",
                          "captions": "sunny"}})["task_ids"]
    wait_until(lambda: api(farm, "GET", f"/task/{task_id}")["status"] in (2, 3), 60,
               "the post to end")
    task = api(farm, "GET", f"/task/{task_id}")
    assert task["status"] == 2, (task["error"], task["log"])
    assert len(farm.app.posts) == 1
    assert farm.app.posts[0]["media"][0].endswith(".mp4")
    card.locator("text=used 1×").wait_for(timeout=10000)       # a live event updated it
    shoot(page, "materials-desktop")
    page.set_viewport_size(PHONE)
    shoot(page, "materials-phone")


def test_a_failure_shows_its_screenshot(page, farm):
    [task_id] = api(farm, "POST", "/task", {"serials": [farm.phones[1].address],
                                            "script_name": "bail", "script_config": {}})[
        "task_ids"]
    wait_until(lambda: api(farm, "GET", f"/task/{task_id}")["artifacts"], 20,
               "the failure's artifacts")
    page.goto(farm.base + "/#tasks")
    page.locator(f'#task-rows tr[data-id="{task_id}"] td:nth-child(3)').click()
    shot = page.locator("#tp-artifacts img.shot")
    shot.wait_for()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                           arg=shot.element_handle())
    shoot(page, "task-failure-desktop")


def test_with_an_api_key_nothing_loads_before_the_key(browser, tmp_path, adb):
    config = tl.Config(db=tmp_path / "key.db", scripts=HERE.parent / "scripts",
                       adb_servers=[f"127.0.0.1:{adb.port}"], api_key="s3cret-key")
    with serve(config, with_devices=False) as server:
        server.lite.store.upsert_device("KEYPHONE", state="offline", model="Pixel 6")
        context = browser.new_context(viewport=DESKTOP)
        page = context.new_page()
        answered = []
        page.on("response", lambda r: answered.append((r.url, r.status)))
        page.goto(server.base + "/")
        page.wait_for_selector("#key-panel:not([hidden])")
        assert page.locator(".tile").count() == 0
        assert page.inner_text("#stats") == ""
        api_ok = [u for u, s in answered if "/api/v1/" in u and s == 200]
        assert api_ok == []                                   # nothing came back but 401s
        shoot(page, "api-key-desktop")
        page.fill("#key-form [name=key]", "wrong")
        page.click("#key-form button")
        page.wait_for_selector("#key-error:has-text('wrong')")
        page.fill("#key-form [name=key]", "s3cret-key")
        page.click("#key-form button")
        tile(page, "KEYPHONE").wait_for()
        page.wait_for_selector(".live.on")
        context.close()


def test_input_on_a_busy_phone_asks_before_taking_over(page, farm):
    phone = farm.phones[0]
    phone.fs.write("/sdcard/gate", b"closed\n")
    [task_id] = api(farm, "POST", "/task", {"serials": [phone.address],
                                            "script_name": "gate", "script_config": {}})[
        "task_ids"]
    wait_until(lambda: api(farm, "GET", f"/task/{task_id}")["status"] == 1, 15, "running")
    page.goto(farm.base + "/")
    tile(page, phone.address).click()
    page.wait_for_selector(f"#pp-task:has-text('#{task_id}')")
    with page.expect_event("dialog") as asked:              # declined: the task runs on
        page.dispatch_event("#phone-panel [data-key=BACK]", "click")  # the dialog comes later
    assert f"task {task_id}" in asked.value.message
    asked.value.dismiss()
    assert api(farm, "GET", f"/task/{task_id}")["status"] == 1
    assert ["input", "keyevent", "KEYCODE_BACK"] not in phone.commands("input")
    with page.expect_event("dialog") as asked:              # accepted: it is stopped
        page.dispatch_event("#phone-panel [data-key=BACK]", "click")
    asked.value.accept()
    assert phone.wait_for_command(
        lambda r: r.argv == ["input", "keyevent", "KEYCODE_BACK"], timeout=15)
    assert api(farm, "GET", f"/task/{task_id}")["error"] == "stopped by user"


def test_accounts_are_added_bound_and_disabled_from_the_page(page, farm):
    page.goto(farm.base + "/#accounts")
    form = page.locator("#new-account")
    form.locator("[name=username]").fill("@shop_anna")
    form.locator("[name=serial]").select_option(farm.tiktok.address)
    form.locator("button").click()
    row = page.locator('#account-rows tr[data-user="shop_anna"]')
    row.wait_for()
    row.locator("input.enabled").uncheck()
    row = page.locator('#account-rows tr[data-user="shop_anna"]')
    row.locator(".badge:has-text('disabled')").wait_for()
    assert api(farm, "GET", "/account/shop_anna")["enabled"] is False
    row.locator(".bind").select_option(farm.phones[0].address)
    wait_until(lambda: api(farm, "GET", "/account/shop_anna")["serial"] ==
               farm.phones[0].address, 10, "the account bound to another phone")
    form.locator("[name=username]").fill("bad name!")
    form.locator("button").click()
    page.wait_for_selector("[data-error-for=account]:has-text('username')")
    shoot(page, "accounts-desktop")
