"""Tests for the phone simulator, through a REAL adb server and adbutils.

Each module gets its own adb server on a private port with a private HOME (never 5037),
and simulated phones that the server reaches with ``adb connect``. Nothing is mocked:
if these pass, the simulator speaks adb well enough for adb 36 and adbutils.
Waits are on conditions with deadlines; there are no sleeps to win races.
"""

import base64
import re
import shlex
import struct
import threading
import time
import zlib

import pytest

from phonesim import (ADBKEYBOARD_IME, FASTINPUT_IME, App, XmlApp,
                      hierarchy_xml, node_at, tokenize, ui_node)

# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------

FORM_PACKAGE = "com.example.form"


def form_xml():
    """A screen with a focused EditText and a Send button."""
    return hierarchy_xml(ui_node(children=[
        ui_node("android.widget.EditText", (40, 200, 1040, 320), resource_id=FORM_PACKAGE
                + ":id/input", focused=True, clickable=True, hint="Add a description"),
        ui_node("android.widget.Button", (800, 400, 1040, 520), text="Send",
                resource_id=FORM_PACKAGE + ":id/send", clickable=True),
    ]), package=FORM_PACKAGE)


@pytest.fixture(scope="module")
def phones(sim, adb):
    """Three connected phones: (SimDevice, adbutils device) pairs."""
    devices = [
        sim.add_device(model="Pixel 7", android="14", sdk=34, battery=81),
        sim.add_device(model="Galaxy S21", manufacturer="samsung", android="13", sdk=33,
                       ime="fastinput", apps=[lambda: XmlApp(form_xml())]),
        sim.add_device(model="Redmi Note 8", manufacturer="Xiaomi", android="11", sdk=30,
                       ime="adbkeyboard", apps={FORM_PACKAGE: lambda: XmlApp(form_xml())}),
    ]
    for device in devices:
        adb.connect(device.address)
    client = adb.client()
    return [(device, client.device(device.address)) for device in devices]


def run_in_thread(function):
    """Start ``function`` in a daemon thread; return (thread, results list)."""
    results = []

    def target():
        try:
            results.append(function())
        except Exception as exc:          # the hang ends with an adb error: keep it
            results.append(exc)
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, results


# ---------------------------------------------------------------------------
# Connection and identity
# ---------------------------------------------------------------------------

def test_device_list_shows_three_devices_with_banner_models(phones, adb):
    listed = {d.serial for d in adb.client().device_list()}
    assert {device.address for device, _ in phones} <= listed
    models = {info.serial: info.tags.get("model") for info in adb.client().list(extended=True)}
    # adb replaces spaces in banner values with underscores in `devices -l`
    assert models[phones[0][0].address] == "Pixel_7"
    assert models[phones[1][0].address] == "Galaxy_S21"


def test_getprop(phones):
    device, d = phones[1]
    assert d.shell("getprop ro.product.model") == "Galaxy S21"
    assert d.shell(["getprop", "ro.build.version.sdk"]) == "33"
    assert "[ro.product.manufacturer]: [samsung]" in d.shell("getprop")
    device.props["ro.build.version.release"] = "15"
    assert d.prop.get("ro.build.version.release") == "15"


def test_exit_codes_and_sequencing(phones):
    _, d = phones[0]
    assert d.shell2("true").returncode == 0
    missing = d.shell2("ls /nope")
    assert missing.returncode == 1 and "No such file or directory" in missing.output
    unknown = d.shell2("frobnicate --now")
    assert unknown.returncode == 127
    assert "/system/bin/sh: frobnicate: not found" in unknown.output
    assert d.shell("echo a && false || echo b; echo $?") == "a\nb\n0"
    assert d.shell("false; echo \"status $?\" '$?'") == "status 1 $?"


def test_payload_arrives_as_one_literal_argument(phones):
    device, d = phones[0]
    device.clear_log()
    assert d.shell(["echo", "a b; rm -rf /"]) == "a b; rm -rf /"
    payload = "$(touch /tmp/pwned); rm -rf / `id` *"
    assert d.shell(["echo", payload]) == payload
    assert device.commands() == [["echo", "a b; rm -rf /"], ["echo", payload]]
    assert not device.commands("rm") and not device.commands("touch")
    assert all(record.service == "shell" for record in device.command_log)


def test_tokenizer_agrees_with_shlex_on_plain_words():
    for line in ["am start -n 'a b/.C'", 'echo "x \\"y\\" z" \\$HOME', "input text a%sb"]:
        assert [w.expand(0) for w in tokenize(line)] == shlex.split(line)
    assert tokenize("echo ';' ; true")[1].expand(0) == ";"


# ---------------------------------------------------------------------------
# Files (sync protocol)
# ---------------------------------------------------------------------------

def test_push_stat_list_pull_round_trip(phones):
    device, d = phones[2]
    payload = bytes(random_bytes(3 * 1024 * 1024))
    d.sync.push(payload, "/sdcard/DCIM/Camera/clip.mp4")
    info = d.sync.stat("/sdcard/DCIM/Camera/clip.mp4")
    assert info.size == len(payload) and info.mode & 0o100000
    names = [entry.path for entry in d.sync.list("/sdcard/DCIM/Camera")]
    assert "clip.mp4" in names
    assert d.sync.read_bytes("/sdcard/DCIM/Camera/clip.mp4") == payload
    assert device.fs.read("/storage/emulated/0/DCIM/Camera/clip.mp4") == payload
    assert d.shell("ls /sdcard/DCIM/Camera") == "clip.mp4"
    assert d.sync.stat("/sdcard/none").mode == 0


def test_push_into_missing_directory_with_trailing_slash_fails(phones):
    _, d = phones[2]
    with pytest.raises(Exception):
        d.sync.push(b"x", "/sdcard/no_such_dir/")
    d.sync.push(b"x", "/sdcard/made/by/push.txt")          # parents are created
    assert d.shell("cat /sdcard/made/by/push.txt") == "x"


def test_shell_file_commands(phones):
    _, d = phones[0]
    assert d.shell("mkdir /sdcard/a/b").startswith("mkdir: '/sdcard/a/b'")
    d.shell("mkdir -p /sdcard/a/b && touch /sdcard/a/b/f && echo hi > /sdcard/a/b/g")
    assert d.shell("ls /sdcard/a/b") == "f\ng"
    assert d.shell("cat /sdcard/a/b/g") == "hi"
    assert d.shell2("rm /sdcard/a").returncode == 1
    assert d.shell2("rm -rf /sdcard/a && test -e /sdcard/a").returncode == 1


def random_bytes(size):
    """Deterministic incompressible-ish bytes (fast, no os.urandom needed)."""
    block = b"".join(struct.pack("<I", zlib.crc32(struct.pack("<I", i))) for i in range(4096))
    return (block * (size // len(block) + 1))[:size]


# ---------------------------------------------------------------------------
# Screen: screenshots, dumps, typing
# ---------------------------------------------------------------------------

def test_screencap_png_through_exec_out_and_screenshot(phones, adb):
    device, d = phones[0]
    device.clear_log()
    result = adb.run("-s", device.address, "exec-out", "screencap", "-p")
    assert result.returncode == 0
    raw = d.shell(["screencap", "-p"], encoding=None)
    assert raw.startswith(b"\x89PNG\r\n\x1a\n")
    assert ("exec", ["screencap", "-p"]) in device.command_log   # adb 36 sent '-p' quoted
    assert d.screenshot().size == (108, 240)


def test_uiautomator_dump_then_cat(phones):
    device, d = phones[0]
    d.shell("input keyevent KEYCODE_HOME")
    assert d.shell("uiautomator dump") == "UI hierchary dumped to: /sdcard/window_dump.xml"
    xml = d.shell("cat /sdcard/window_dump.xml")
    assert xml.startswith("<?xml version='1.0' encoding='UTF-8' standalone='yes' ?>"
                          "<hierarchy rotation=\"0\">")
    assert 'package="com.android.launcher3"' in xml


def test_dump_faults(phones):
    device, d = phones[0]
    device.fail_dumps(1)
    failed = d.shell2("uiautomator dump /sdcard/x.xml")
    assert failed.returncode == 0                  # like Android: only the text says so
    assert failed.output.strip() == "ERROR: could not get idle state."
    assert d.shell2("test -e /sdcard/x.xml").returncode == 1
    device.slow_dumps(0.5)
    started = time.monotonic()
    assert "dumped to" in d.shell("uiautomator dump /sdcard/x.xml")
    assert time.monotonic() - started >= 0.5
    device.slow_dumps(0)


def test_input_text_into_focused_edittext(phones):
    device, d = phones[1]
    assert "Status: ok" in d.shell(["am", "start", "-W", "-n", FORM_PACKAGE + "/.Main"])
    d.shell(["input", "text", "hello%sworld's"])
    assert 'text="hello world\'s"' in d.shell("uiautomator dump /dev/tty")
    d.shell("input keyevent 67")                     # DEL
    d.shell("input tap 900 450")                     # the Send button
    app = device.apps[FORM_PACKAGE]
    assert app.focused_text() == "hello world'"
    assert app.taps[-1].node["text"] == "Send"
    cjk = d.shell2(["input", "text", "你好"])
    assert cjk.returncode != 0 and "Exception" in cjk.output


@pytest.mark.parametrize("which", [1, 2])
def test_ime_broadcast_types_unicode(phones, which):
    device, d = phones[which]
    text = "héllo 你好 🙂"
    encoded = base64.b64encode(text.encode("utf-8")).decode()
    ime = FASTINPUT_IME if which == 1 else ADBKEYBOARD_IME
    action, key = ("ADB_SET_TEXT", "text") if which == 1 else ("ADB_INPUT_B64", "msg")
    d.shell(["am", "start", "-S", "-n", FORM_PACKAGE + "/.Main"])
    device.apps[FORM_PACKAGE].set_text("")
    # not the current IME yet: the broadcast has no receiver, nothing is typed
    d.shell(["am", "broadcast", "-a", action, "--es", key, encoded])
    assert device.apps[FORM_PACKAGE].focused_text() == ""
    assert ime in d.shell("ime list -a -s")
    assert d.shell2(["ime", "set", ime]).returncode != 0         # must be enabled first
    d.shell(["ime", "enable", ime])
    d.shell(["ime", "set", ime])
    assert d.shell("settings get secure default_input_method") == ime
    out = d.shell(["am", "broadcast", "-a", action, "--es", key, encoded])
    assert out.endswith("Broadcast completed: result=0")
    assert device.apps[FORM_PACKAGE].focused_text() == text
    # uiautomator writes characters outside the BMP as two dots
    assert 'text="héllo 你好 .."' in d.shell("uiautomator dump /dev/tty")


def test_apps_start_stop_urls_and_packages(phones):
    device, d = phones[0]
    tiktok = device.install(App("com.zhiliaoapp.musically", hosts=("tiktok.com",)))
    assert "package:com.zhiliaoapp.musically" in d.shell("pm list packages -3 zhiliao")
    assert d.shell("pm path com.zhiliaoapp.musically").startswith("package:/data/app/")
    d.shell(["am", "start", "-a", "android.intent.action.VIEW", "-d",
             "https://www.tiktok.com/@someone"])
    assert device.foreground == tiktok.package
    assert tiktok.urls == ["https://www.tiktok.com/@someone"]
    assert "Events injected: 1" in d.shell("monkey -p com.zhiliaoapp.musically "
                                           "-c android.intent.category.LAUNCHER 1")
    d.shell("am force-stop com.zhiliaoapp.musically")
    assert device.foreground is None
    missing = d.shell2("am start -n com.nope/.Main")
    assert "does not exist" in missing.output
    assert "level: 81" in d.shell("dumpsys battery")
    assert d.shell("wm size") == "Physical size: 1080x2400"
    assert d.window_size() == (1080, 2400)


def test_node_at_prefers_topmost_clickable():
    root = ui_node(children=[ui_node("android.widget.Button", (0, 0, 100, 100), text="A",
                                     clickable=True),
                             ui_node("android.view.View", (0, 0, 100, 100))])
    assert node_at(root, 50, 50).get("text") == "A"


# ---------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------

def test_unplug_then_replug(sim, adb):
    device = sim.add_device(model="Cable")
    adb.connect(device.address)
    d = adb.client().device(device.address)
    device.unplug()
    assert adb.wait_state(device.address, ("offline", None), timeout=5) in ("offline", None)
    with pytest.raises(Exception):
        d.shell("echo hi")                         # fails fast, does not hang
    device.replug()
    # `adb connect` on an offline device only says "already connected"; adb retries
    # every 3 s by itself. Disconnect + connect brings it back at once.
    adb.disconnect(device.address)
    adb.connect(device.address, timeout=5)
    assert d.shell("echo back") == "back"


def test_unauthorized_device(sim, adb):
    device = sim.add_device(model="Locked")
    device.set_unauthorized(True)
    result = adb.run("connect", device.address)
    assert "failed to authenticate" in result.stdout
    assert adb.wait_state(device.address, "unauthorized", timeout=5) == "unauthorized"
    device.set_unauthorized(False)                 # the user taps "Allow"
    assert adb.wait_state(device.address, "device", timeout=5) == "device"


def test_silent_device_hangs_until_unplugged(sim, adb):
    device = sim.add_device(model="Frozen")
    adb.connect(device.address)
    d = adb.client().device(device.address)
    device.go_silent()
    thread, results = run_in_thread(lambda: d.shell("echo hi", timeout=1))
    thread.join(1.5)
    assert thread.is_alive() and not results       # timeout=1 did not help
    device.wake()                                  # the swallowed request stays lost
    device.unplug()                                # dropping the connection releases it
    thread.join(5)
    assert not thread.is_alive() and isinstance(results[0], Exception)


def test_dumpsys_package_reports_the_app_version(phones):
    dev, d = phones[1]
    assert "versionName=1.0" in d.shell(["dumpsys", "package", FORM_PACKAGE])
    assert "Unable to find package" in d.shell(["dumpsys", "package", "com.example.none"])


def test_command_line_phones_carry_the_app_models(adb):
    """`python tests/phonesim.py --devices 1`: what a user runs to try the server."""
    import re
    import signal
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).with_name("phonesim.py")
    proc = subprocess.Popen([sys.executable, str(script), "--devices", "1",
                             "--accounts", "main,shop", "--dump-seconds", "0.2",
                             "--dump-failure-rate", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        address = None
        for line in proc.stdout:
            found = re.search(r"adb connect (127\.0\.0\.1:\d+)", line)
            if found:
                address = found[1]
            if "Ctrl-C" in line:
                break
        assert address, "the CLI printed no adb connect line"
        adb.connect(address)
        device = adb.client().device(address)
        packages = device.shell("pm list packages")
        assert "package:com.zhiliaoapp.musically" in packages
        assert "package:com.instagram.android" in packages
        assert "versionName=47.0.3" in device.shell("dumpsys package com.zhiliaoapp.musically")
        started = time.monotonic()
        assert device.shell("uiautomator dump /dev/tty").endswith("dumped to: /dev/tty")
        assert time.monotonic() - started >= 0.2          # --dump-seconds reached it
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=15)[0]
    assert proc.returncode == 0 and "phonesim: stopped" in rest


# ---------------------------------------------------------------------------
# A harder phone: power and keyguard, counters, dump faults, lost taps, crashes
# ---------------------------------------------------------------------------

import xml.etree.ElementTree as ET  # noqa: E402

from phonesim import IDLE_ERROR, NULL_ROOT_ERROR  # noqa: E402


def dump_tree(d):
    """The phone's current dump (stdout form), parsed; a playing video (no idle state)
    is paused by a tap in the middle first, as the scripts do."""
    out = d.shell("uiautomator dump /dev/tty")
    for _ in range(3):
        if out != IDLE_ERROR:
            break
        d.shell("input tap 540 1200")
        out = d.shell("uiautomator dump /dev/tty")
    assert out.endswith("UI hierchary dumped to: /dev/tty"), out[-200:]
    return ET.fromstring(out[:-len("UI hierchary dumped to: /dev/tty")].encode())


def node(tree, **attrs):
    """First node whose attributes (resource_id= -> resource-id) equal attrs, or None."""
    wanted = {k.replace("_", "-"): v for k, v in attrs.items()}
    return next((el for el in tree.iter("node")
                 if all(el.get(k) == v for k, v in wanted.items())), None)


def tap_node(d, tree, **attrs):
    found = node(tree, **attrs)
    assert found is not None, attrs
    x1, y1, x2, y2 = (int(n) for n in found.get("bounds").replace("][", ",")
                      .strip("[]").split(","))
    d.shell(["input", "tap", str((x1 + x2) // 2), str((y1 + y2) // 2)])


@pytest.fixture
def form_phone(sim, adb):
    device = sim.add_device(model="Harder", apps=[lambda: XmlApp(form_xml())])
    adb.connect(device.address)
    d = adb.client().device(device.address)
    d.shell(["am", "start", "-n", FORM_PACKAGE + "/.Main"])
    return device, d


def test_screen_off_shows_the_keyguard_until_woken_and_dismissed(form_phone):
    device, d = form_phone
    app = device.apps[FORM_PACKAGE]
    device.screen_off()
    assert "mWakefulness=Asleep" in d.shell("dumpsys power")
    tree = dump_tree(d)
    assert node(tree, resource_id="com.android.systemui:id/keyguard_indication_text") is not None
    assert node(tree, package=FORM_PACKAGE) is None
    d.shell("input tap 900 450")                      # the Send button: not reached
    assert not app.taps
    d.shell("wm dismiss-keyguard")                   # screen still off: stays locked
    assert device.locked
    d.shell("input keyevent KEYCODE_WAKEUP")
    assert "Display Power: state=ON" in d.shell("dumpsys power")
    assert node(dump_tree(d), text="Swipe up to open") is not None   # on, still locked
    assert "mShowingLockscreen=true" in d.shell("dumpsys window")
    d.shell("wm dismiss-keyguard")
    assert node(dump_tree(d), text="Send") is not None
    d.shell("input tap 900 450")
    assert app.taps[-1].node["text"] == "Send"
    device.screen_off()
    d.shell("input keyevent 224")                    # WAKEUP by number, then MENU
    d.shell("input keyevent 82")
    assert not device.locked and device.screen_on


def test_screen_times_out_unless_kept_awake(form_phone):
    device, d = form_phone
    device.sleep_after_inputs = 2
    for _ in range(3):
        d.shell("input tap 900 450")
    assert not device.screen_on and device.locked
    assert len(device.apps[FORM_PACKAGE].taps) == 2
    d.shell("input keyevent KEYCODE_WAKEUP && wm dismiss-keyguard")
    assert d.shell2("svc power stayon usb").returncode == 0
    assert "mStayOn=true" in d.shell("dumpsys power")
    for _ in range(5):
        d.shell("input tap 900 450")
    assert device.screen_on and len(device.apps[FORM_PACKAGE].taps) == 7


def test_dump_to_stdout_is_one_round_trip_and_is_counted(form_phone, adb):
    device, d = form_phone
    device.reset_counters()
    out = d.shell("uiautomator dump /dev/tty")
    assert out.startswith("<?xml") and out.endswith("UI hierchary dumped to: /dev/tty")
    assert "</hierarchy>UI hierchary" in out         # no newline between, as on phones
    assert (device.dumps, device.round_trips) == (1, 1)
    d.shell("uiautomator dump /sdcard/w.xml")
    d.shell("cat /sdcard/w.xml")
    assert (device.dumps, device.round_trips) == (2, 3)
    device.tty_dump = "exec"             # newer phones: only exec: reaches stdout
    assert d.shell("uiautomator dump /dev/tty") == "UI hierchary dumped to: /dev/tty"
    result = adb.run("-s", device.address, "exec-out", "uiautomator", "dump", "/dev/tty")
    assert result.stdout.startswith("<?xml") and "dumped to: /dev/tty" in result.stdout
    device.tty_dump = "any"
    device.reset_counters()
    device.dump_seconds = 0.3
    started = time.monotonic()
    d.shell("uiautomator dump /dev/tty")
    assert time.monotonic() - started >= 0.3 and device.dumps == 1
    device.dump_seconds = 0


def test_random_dump_failures_print_both_real_errors(form_phone):
    device, d = form_phone
    device.seed(3)
    device.dump_failure_rate = 1.0
    seen = {d.shell2("uiautomator dump /sdcard/f.xml").output.strip() for _ in range(12)}
    assert seen == {IDLE_ERROR, NULL_ROOT_ERROR}
    assert d.shell2("test -e /sdcard/f.xml").returncode == 1    # nothing written
    device.dump_failure_rate = 0
    device.fail_dumps(1, NULL_ROOT_ERROR)
    assert d.shell("uiautomator dump /dev/tty") == NULL_ROOT_ERROR


def test_a_dropped_tap_does_nothing(form_phone):
    device, d = form_phone
    app = device.apps[FORM_PACKAGE]
    before = len(app.taps)
    device.drop_taps(1)
    d.shell("input tap 900 450")
    assert len(app.taps) == before and ("tap-dropped", (900, 450)) in device.events
    d.shell("input tap 900 450")
    assert len(app.taps) == before + 1


def test_crash_goes_to_the_launcher_with_androids_dialog(form_phone):
    device, d = form_phone
    device.crash_dialog = True
    device.crash_after_taps(0)
    d.shell("input tap 900 450")
    assert device.foreground is None and ("crash", FORM_PACKAGE) in device.events
    tree = dump_tree(d)
    windows = list(tree)
    assert len(windows) == 2 and windows[0].get("package") == "com.android.launcher3"
    assert node(tree, resource_id="android:id/alertTitle").get("text").endswith(
        "keeps stopping")
    d.shell("input tap 540 300")                      # outside the dialog: swallowed
    assert device.system_windows
    tap_node(d, tree, resource_id="android:id/aerr_restart")
    assert device.foreground == FORM_PACKAGE and not device.system_windows
    device.crash_app(dialog=False)
    assert device.foreground is None and not device.system_windows


# ---------------------------------------------------------------------------
# The app models (tests/apps.py) as hard as the real apps
# ---------------------------------------------------------------------------

def model_phone(sim, adb, app):
    device = sim.add_device(model="Models", apps=[app])
    adb.connect(device.address)
    d = adb.client().device(device.address)
    d.shell(["monkey", "-p", app.package, "1"])
    return device, d


def test_popup_is_a_window_over_the_screen_and_swallows_taps(sim, adb):
    from apps import TikTokApp
    app = TikTokApp("43.1.4", users={"alice": False})
    device, d = model_phone(sim, adb, app)
    d.shell(["am", "start", "-a", "android.intent.action.VIEW", "-d",
             "https://www.tiktok.com/@alice"])
    below = dump_tree(d)
    app.show_popup("terms")
    tree = dump_tree(d)
    assert len(tree) == len(below) + 1                 # one more window, on top
    assert tree[-1].get("package") == app.package
    assert node(tree, text="Follow") is not None       # the screen below is still there
    assert node(tree, resource_id="android:id/alertTitle").get("text").startswith("We're")
    tap_node(d, below, text="Follow")                  # under the dialog: swallowed
    d.shell("input keyevent KEYCODE_BACK")             # Terms cannot be cancelled
    assert app.follows["alice"] is False and app.popup is not None
    tap_node(d, tree, resource_id="android:id/button1", text="Agree and continue")
    assert app.popup is None
    tap_node(d, dump_tree(d), text="Follow")
    assert app.follows["alice"] is True
    assert app.actions[-1] == {"account": "sim_user", "action": "follow", "target": "alice"}


def test_popup_between_dump_and_tap_covers_the_target(sim, adb):
    from apps import TikTokApp
    app = TikTokApp(users={"alice": False}, popup_on_tap_rate=1.0, seed=5,
                    popup_kinds=["contacts"])
    device, d = model_phone(sim, adb, app)
    d.shell(["am", "start", "-a", "android.intent.action.VIEW", "-d",
             "https://www.tiktok.com/@alice"])
    tree = dump_tree(d)
    tap_node(d, tree, text="Follow")
    assert app.follows["alice"] is False               # the pop-up came first
    popup = dump_tree(d)[-1]
    assert popup.get("package") == "com.google.android.permissioncontroller"
    follow = node(tree, text="Follow").get("bounds")
    y = int(follow.split(",")[1].split("]")[0])
    top, bottom = (int(v) for v in re.findall(r"\d+", popup.get("bounds"))[1::2])
    assert top <= y <= bottom                           # drawn over the target
    deny = node(popup, resource_id="com.google.android.permissioncontroller:id/"
                                   "permission_deny_button")
    assert deny.get("text") == "Don\u2019t allow"      # Android's apostrophe
    app.popup_on_tap_rate = 0
    tap_node(d, popup, text="Don\u2019t allow")
    tap_node(d, dump_tree(d), text="Follow")
    assert app.follows["alice"] is True


@pytest.mark.parametrize("version", ["47.0.3", "43.1.4"])
def test_tiktok_search_keeps_the_query_and_rows_have_ids(sim, adb, version):
    from apps import HANDLE_MARKS, TikTokApp
    app = TikTokApp(version, users={"carol": False, "carolyn": False})
    device, d = model_phone(sim, adb, app)
    tap_node(d, dump_tree(d), **{"content-desc": "Search"})
    d.shell(["input", "text", "carol"])
    d.shell("input keyevent KEYCODE_ENTER")
    tap_node(d, dump_tree(d), text="Users")
    tree = dump_tree(d)
    field = node(tree, **{"class": "android.widget.EditText"})
    assert field.get("text") == "carol"                # the query stays in the field
    handles = [n.get("text") for n in tree.iter("node")
               if n.get("resource-id", "").endswith(":id/unique_id")]
    assert handles == [HANDLE_MARKS % name for name in ("carol", "carolyn")]   # as TikTok
    tap_node(d, tree, **{"class": "android.widget.EditText"})
    assert app.screen == "search" and app.target is None      # typing again, no profile
    assert node(dump_tree(d), focused="true").get("text") == "carol"
    d.shell("input keyevent KEYCODE_ENTER")
    tap_node(d, dump_tree(d), text="Users")
    tap_node(d, dump_tree(d), resource_id=app.package + ":id/unique_id",
             text=HANDLE_MARKS % "carolyn")
    assert app.screen == "profile" and app.target == "carolyn"


def test_instagram_switcher_and_follows_per_account(sim, adb):
    from apps import InstagramApp
    app = InstagramApp(accounts=["main", "shop"], users={"alice": False})
    device, d = model_phone(sim, adb, app)
    pkg = app.package
    tap_node(d, dump_tree(d), resource_id=pkg + ":id/profile_tab")
    tree = dump_tree(d)
    assert node(tree, resource_id=pkg + ":id/action_bar_large_title_auto_size"
                ).get("text") == "main"
    assert node(tree, resource_id=pkg + ":id/action_bar_title") is None
    tap_node(d, tree, resource_id=pkg + ":id/action_bar_title_chevron")
    sheet = dump_tree(d)
    assert node(sheet, text="Add account") is not None
    tap_node(d, sheet, resource_id=pkg + ":id/row_user_textview", text="shop")
    assert app.current == "shop"
    d.shell(["am", "start", "-a", "android.intent.action.VIEW", "-d",
             "https://www.instagram.com/alice/"])
    tap_node(d, dump_tree(d), resource_id=pkg + ":id/profile_header_follow_button")
    assert app.follow_state == {"main": {"alice": False}, "shop": {"alice": True}}
    assert [a["account"] for a in app.actions] == ["shop"]


@pytest.mark.parametrize("path", ["name", "body", "settings"])
def test_tiktok_switch_account_both_paths(sim, adb, path):
    from apps import TikTokApp
    app = TikTokApp("43.1.4", accounts=["main", "shop"], switcher_paths=[path])
    device, d = model_phone(sim, adb, app)
    tap_node(d, dump_tree(d), **{"content-desc": "Profile"})
    tree = dump_tree(d)
    assert node(tree, **{"content-desc": "Switch account"}) is None
    if path == "name":
        tap_node(d, tree, text="main", clickable="false")
    elif path == "body":                    # the display name, 43.1.4's qf8
        tap_node(d, tree, **{"resource-id": "com.zhiliaoapp.musically:id/qf8"})
    else:
        tap_node(d, tree, **{"content-desc": "Profile menu"})
        tap_node(d, dump_tree(d), text="Settings and privacy")
        assert node(dump_tree(d), text="Switch account") is None   # under the fold
        d.shell("input swipe 540 2000 540 600 300")
        tap_node(d, dump_tree(d), text="Switch account")
    sheet = dump_tree(d)
    rows = [n for n in sheet.iter("node")
            if n.get("resource-id") == "com.zhiliaoapp.musically:id/k5o"]
    assert [(n.get("content-desc"), n.get("selected")) for n in rows] == [
        ("main", "true"), ("shop", "false"), ("Add account", "false")]
    tap_node(d, sheet, text="shop")
    assert app.current == "shop" and app.screen == "home"


def test_block_screens_refuse_the_action(sim, adb):
    from apps import InstagramApp, TikTokApp
    ig = InstagramApp(users={"alice": False})
    device, d = model_phone(sim, adb, ig)
    ig.block_next("follow")
    d.shell(["am", "start", "-a", "android.intent.action.VIEW", "-d",
             "https://www.instagram.com/alice/"])
    tap_node(d, dump_tree(d), resource_id=ig.package + ":id/profile_header_follow_button")
    tree = dump_tree(d)
    assert ig.follows["alice"] is False
    assert node(tree, text="Try Again Later") is not None
    assert "We restrict certain activity" in node(tree, resource_id="android:id/message"
                                                   ).get("text")
    tap_node(d, tree, text="OK")
    tap_node(d, dump_tree(d), resource_id=ig.package + ":id/profile_header_follow_button")
    assert ig.follows["alice"] is True
    tt = TikTokApp(users={"bob": False})
    device, d = model_phone(sim, adb, tt)
    tt.block_next("follow", "tapping_too_fast")
    d.shell(["am", "start", "-a", "android.intent.action.VIEW", "-d",
             "https://www.tiktok.com/@bob"])
    tap_node(d, dump_tree(d), text="Follow")
    assert tt.follows["bob"] is False
    toast = node(dump_tree(d), text="You're tapping too fast. Take a break.")
    assert toast is not None and toast.get("resource-id") == "android:id/message"


def test_french_phone_keeps_ids_and_no_stranger_account_is_acted_as(sim, adb):
    from apps import TikTokApp
    app = TikTokApp("43.1.4", users={"alice": False}, locale="fr", accounts=["main"])
    device, d = model_phone(sim, adb, app)
    d.shell(["am", "start", "-a", "android.intent.action.VIEW", "-d",
             "https://www.tiktok.com/@alice"])
    tree = dump_tree(d)
    assert node(tree, text="Follow") is None
    tap_node(d, tree, resource_id=app.package + ":id/eme", text="Suivre")
    assert app.follows["alice"] is True
    d.shell("input keyevent KEYCODE_BACK")
    tap_node(d, dump_tree(d), **{"content-desc": "Profil"})
    tap_node(d, dump_tree(d), text="main", clickable="false")
    tap_node(d, dump_tree(d), text="Add account")      # not an account: nothing changes
    assert app.current == "main" and {a["account"] for a in app.actions} == {"main"}


def test_instagram_search_keyword_row_full_results_and_story_ring(sim, adb):
    from apps import InstagramApp
    app = InstagramApp(users={"carol": False, "carol.b": False})
    device, d = model_phone(sim, adb, app)
    pkg = app.package
    tap_node(d, dump_tree(d), resource_id=pkg + ":id/search_tab")
    d.shell(["input", "text", "carol"])
    tree = dump_tree(d)
    assert node(tree, resource_id=pkg + ":id/row_search_keyword_title").get("text") == "carol"
    assert [n.get("text") for n in tree.iter("node") if n.get("resource-id") ==
            pkg + ":id/row_search_user_username"] == ["carol", "carol.b"]
    ring = node(tree, resource_id=pkg + ":id/row_search_avatar_with_ring",
                **{"content-desc": "name_2 la story"})
    tap_node(d, tree, **{"content-desc": ring.get("content-desc")})
    assert app.screen == "story"                     # the ring opens the story
    d.shell("input keyevent KEYCODE_BACK")
    d.shell("input keyevent KEYCODE_ENTER")          # the keyboard's search key
    tree = dump_tree(d)
    assert node(tree, resource_id=pkg + ":id/action_bar_search_edit_text"
                ).get("text") == "carol"
    assert node(tree, resource_id=pkg + ":id/row_search_user_username") is None
    tap_node(d, tree, text="Accounts")
    tap_node(d, dump_tree(d), resource_id=pkg + ":id/row_search_user_username",
             text="carol.b")
    assert app.screen == "profile" and app.target == "carol.b"


def test_swipe_tutorial_wants_a_swipe_up_and_instagram_popups_close_with_back(sim, adb):
    from apps import InstagramApp, TikTokApp
    tt = TikTokApp("43.1.4", users={"alice": False})
    device, d = model_phone(sim, adb, tt)
    d.shell(["am", "start", "-a", "android.intent.action.VIEW", "-d",
             "https://www.tiktok.com/@alice"])
    below = dump_tree(d)
    tt.show_popup("swipe_tutorial")
    assert node(dump_tree(d)[-1], text="Swipe up for more") is not None
    tap_node(d, below, text="Follow")                 # swallowed: the overlay stays
    assert tt.popup is not None and tt.follows["alice"] is False
    d.shell("input swipe 540 600 540 1800 300")       # a swipe down does nothing
    assert tt.popup is not None
    d.shell("input swipe 540 1800 540 600 600")       # a swipe up closes it, nothing else
    assert tt.popup is None and tt.follows["alice"] is False and tt.screen == "profile"
    ig = InstagramApp()
    device, d = model_phone(sim, adb, ig)
    ig.show_popup("save_login")
    tree = dump_tree(d)
    assert [n.get("text") for n in tree[-1].iter("node") if n.get("clickable") == "true"] \
        == ["Not now", "Save"]
    d.shell("input keyevent KEYCODE_BACK")
    assert ig.popup is None and device.foreground == ig.package
