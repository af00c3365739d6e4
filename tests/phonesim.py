#!/usr/bin/env python3
"""phonesim: simulated Android phones that a real adb server talks to.

What it is
    A pure-stdlib simulator of the *device side* of the adb protocol over TCP. Each
    simulated phone listens on its own 127.0.0.1 port; a real adb server reaches it with
    ``adb connect 127.0.0.1:PORT`` and from then on adbutils (or the adb CLI) uses it like
    any phone: ``shell:``, ``exec:`` and ``sync:`` (push, pull, stat, list) all work.

Why
    TikMatrix Lite drives phones through a real adb server. Mocking adbutils would test our
    idea of adb, not adb. With phonesim the whole stack runs for real (server, adbutils,
    adb's quoting, flow control, offline/online transitions) and only the phone is fake, so
    tests can also inject the faults phones really have: unplugged, unauthorized, frozen
    (connected but silent), slow or failing ``uiautomator dump``.

What a phone understands (through ``shell:`` or ``exec:``)
    Commands are parsed with POSIX shell quoting (like ``shlex``) and are never
    interpreted beyond ``;``, ``&&``, ``||``, ``&``, redirections and ``$?``: no command
    substitution, no globbing, no variables. Every simple command is recorded, as the
    exact argv received, in the device's command log, so a test can prove that a payload
    such as ``$(touch /tmp/pwned); rm -rf /`` arrived as one literal argument.
    Programs: getprop, wm, pm, am (start, force-stop, broadcast), monkey, input,
    uiautomator dump, screencap, ime, settings, dumpsys, content, cat, ls, rm, mkdir,
    touch, echo, true, false, test, sleep, id, whoami, date, pidof, exit. Anything else
    prints ``/system/bin/sh: CMD: not found`` with exit code 127.

Screen model (pluggable: app models for TikTok, Instagram... build on it)
    A device owns ``apps`` (package -> ``App``) and a foreground package; with none in
    front the ``LauncherApp`` is shown. An ``App`` subclass overrides what it needs::

        class App:
            package: str; label: str; launch_activity: str
            hosts: tuple[str, ...]      # URL hosts whose VIEW links it opens
            schemes: tuple[str, ...]    # URL schemes it opens (e.g. "snssdk1233")
            device: SimDevice           # set when installed
            def dump(self) -> str             # uiautomator XML of the current screen
            def tap(self, x, y) -> None
            def text(self, s) -> None         # typed text (input text / IME commit)
            def set_text(self, s) -> None     # IME "set text": replace the focused field
            def key(self, code) -> bool       # "KEYCODE_BACK"...; False = not handled
            def swipe(self, x1, y1, x2, y2, ms) -> None
            def open_url(self, url) -> None   # a VIEW intent reached this app
            def on_start(self, activity) -> None
            def on_stop(self) -> None

    ``XmlApp`` serves a given XML hierarchy, records taps (with the node hit), focuses an
    EditText when tapped and types into the focused EditText. Helpers ``ui_node``,
    ``hierarchy_xml``, ``parse_bounds`` and ``node_at`` build and query hierarchies.

Knobs of a harder phone (attributes and methods of ``SimDevice``; all random draws come
from ``device.rng``, re-seeded with ``device.seed(n)``)
    ``dump_seconds`` (or ``slow_dumps(s)``): seconds per ``uiautomator dump``;
    ``fail_dumps(n, message)``: the next n dumps print ``IDLE_ERROR`` (or
    ``NULL_ROOT_ERROR``) and write nothing; ``dump_failure_rate``: that at random.
    ``dumps`` and ``round_trips`` count dumps and adb services opened (``reset_counters``).
    ``uiautomator dump /dev/tty`` writes the XML then "UI hierchary dumped to: /dev/tty"
    on stdout (one round trip), the file form writes the file. ``tty_dump``: "any"
    (default), "exec" (only through ``exec:``, as measured on API 30 and 36 by a public
    adb helper: through ``adb shell`` the XML is lost and only the status line comes
    back, exit 0), "none" (never): the file form is the fallback.
    ``screen_off()``: display off and keyguard locked (no PIN): dumps show the keyguard,
    input is lost until ``input keyevent KEYCODE_WAKEUP`` (or POWER) and ``wm
    dismiss-keyguard`` (or MENU, or a swipe up); ``sleep_after_inputs = N``: the screen
    times out after N inputs unless "stay awake" is on (``svc power stayon usb`` or
    ``settings put global stay_on_while_plugged_in``). ``dumpsys power`` / ``window``
    report it.
    ``drop_taps(n)`` / ``tap_drop_rate``: taps that do nothing. ``crash_app()`` /
    ``crash_after_taps(n)`` / ``crash_rate``: the app in front dies back to the launcher
    (with ``crash_dialog``, Android's "keeps stopping" dialog on top).
    ``show_system_window(window, actions)``: any system dialog (``alert_window``).

Usage
    In tests::

        with PhoneSim() as sim, AdbServer() as adb:
            dev = sim.add_device(model="Pixel 7")
            adb.connect(dev.address)
            d = adb.client().device(dev.address)
            d.shell("getprop ro.product.model")          # -> "Pixel 7"
            dev.command_log                               # [("shell", ["getprop", ...])]

    By hand::

        python tests/phonesim.py --devices 3
        adb connect 127.0.0.1:PORT                        # for each printed port

Limitations: shell protocol v1 only (no shell_v2, no stat_v2/ls_v2/sendrecv_v2), no
pipes, no TLS, no USB. Needs Python 3.9+; ``AdbServer`` needs adbutils (for the adb
binary and the client) or an ``$ADB`` binary.
"""

from __future__ import annotations

import argparse
import base64
import collections
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
import zlib

__all__ = [
    "App", "XmlApp", "LauncherApp", "ui_node", "hierarchy_xml", "parse_bounds",
    "node_at", "SimFS", "CommandRecord", "SimDevice", "PhoneSim", "AdbServer",
    "solid_png", "tokenize", "DEFAULT_IME", "FASTINPUT_IME", "ADBKEYBOARD_IME",
    "alert_window", "keyguard_window", "with_windows", "IDLE_ERROR", "NULL_ROOT_ERROR",
]

# ---------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------

SCREEN_SIZE = (1080, 2400)          #: what ``wm size`` reports
SCREENSHOT_SIZE = (108, 240)        #: screencap images are small on purpose (fast tests)

#: Input methods a device can be built with (``ime=`` names -> IME ids).
DEFAULT_IME = "com.google.android.inputmethod.latin/com.android.inputmethod.latin.LatinIME"
FASTINPUT_IME = "com.github.tikmatrix/.FastInputIME"
ADBKEYBOARD_IME = "com.android.adbkeyboard/.AdbIME"
IME_IDS = {"fastinput": FASTINPUT_IME, "adbkeyboard": ADBKEYBOARD_IME}

SYSTEM_PACKAGES = (
    "android", "com.android.shell", "com.android.systemui", "com.android.settings",
    "com.android.launcher3", "com.android.chrome", "com.android.providers.media",
    "com.google.android.inputmethod.latin",
)
LAUNCHER_PACKAGE = "com.android.launcher3"
BROWSER_PACKAGE = "com.android.chrome"

#: Key codes by number, for ``input keyevent 4`` and friends.
KEYCODES = {
    3: "HOME", 4: "BACK", 19: "DPAD_UP", 20: "DPAD_DOWN", 21: "DPAD_LEFT",
    22: "DPAD_RIGHT", 23: "DPAD_CENTER", 24: "VOLUME_UP", 25: "VOLUME_DOWN", 26: "POWER",
    61: "TAB", 62: "SPACE", 66: "ENTER", 67: "DEL", 82: "MENU", 84: "SEARCH",
    85: "MEDIA_PLAY_PAUSE", 111: "ESCAPE", 112: "FORWARD_DEL", 122: "MOVE_HOME",
    123: "MOVE_END", 164: "VOLUME_MUTE", 187: "APP_SWITCH", 223: "SLEEP", 224: "WAKEUP",
    279: "PASTE",
}
KEYCODES.update({7 + i: str(i) for i in range(10)})

#: What ``uiautomator dump`` prints when it cannot dump (AOSP
#: frameworks/testing/uiautomator/cmds/uiautomator/src/.../DumpCommand.java): the
#: window never went idle (a playing video), or there was no active window at all.
IDLE_ERROR = "ERROR: could not get idle state."
NULL_ROOT_ERROR = "ERROR: null root node returned by UiTestAutomationBridge."
KEYCODES.update({29 + i: chr(ord("A") + i) for i in range(26)})


# ---------------------------------------------------------------------------
# Screen model: XML helpers
# ---------------------------------------------------------------------------

XML_DECLARATION = "<?xml version='1.0' encoding='UTF-8' standalone='yes' ?>"

#: Attribute order of a real ``uiautomator dump`` node.
_NODE_ATTRS = ("index", "text", "resource-id", "class", "package", "content-desc",
               "checkable", "checked", "clickable", "enabled", "focusable", "focused",
               "scrollable", "long-clickable", "password", "selected", "bounds")


def _flag(value: bool) -> str:
    return "true" if value else "false"


def ui_node(cls: str = "android.widget.FrameLayout", bounds=(0, 0, *SCREEN_SIZE), *,
            text: str = "", resource_id: str = "", desc: str = "", package: str = "",
            clickable: bool = False, focusable: bool = False, focused: bool = False,
            scrollable: bool = False, checkable: bool = False, checked: bool = False,
            selected: bool = False, enabled: bool = True, password: bool = False,
            long_clickable: bool = False, children=(), **extra: str) -> ET.Element:
    """One uiautomator ``<node>`` with every attribute a real dump has.

    ``package`` is inherited from the parent by ``hierarchy_xml`` when left empty, and
    ``index`` is filled in from the sibling position, so app models only state what
    matters. Extra attributes (``hint="..."``) may be passed as keywords.
    """
    values = {
        "index": "0", "text": text, "resource-id": resource_id, "class": cls,
        "package": package, "content-desc": desc, "checkable": _flag(checkable),
        "checked": _flag(checked), "clickable": _flag(clickable), "enabled": _flag(enabled),
        "focusable": _flag(focusable or focused), "focused": _flag(focused),
        "scrollable": _flag(scrollable), "long-clickable": _flag(long_clickable),
        "password": _flag(password), "selected": _flag(selected),
        "bounds": "[%d,%d][%d,%d]" % tuple(bounds),
    }
    element = ET.Element("node", {name: values[name] for name in _NODE_ATTRS})
    for name, value in extra.items():
        element.set(name.replace("_", "-"), value)
    element.extend(children)
    return element


def hierarchy_xml(*roots: ET.Element, package: str = "", rotation: int = 0) -> str:
    """Serialize nodes as a one-line dump, exactly like ``uiautomator dump`` writes it."""
    top = ET.Element("hierarchy", {"rotation": str(rotation)})
    for position, root in enumerate(roots):
        _fill_defaults(root, position, package)
        top.append(root)
    return serialize_hierarchy(top)


def _fill_defaults(element: ET.Element, position: int, package: str) -> None:
    element.set("index", str(position))
    if not element.get("package"):
        element.set("package", package)
    for child_position, child in enumerate(element):
        _fill_defaults(child, child_position, element.get("package", ""))


def serialize_hierarchy(root: ET.Element) -> str:
    return XML_DECLARATION + ET.tostring(root, encoding="unicode")


def parse_bounds(bounds: str) -> tuple:
    """``"[0,0][1080,2400]"`` -> ``(0, 0, 1080, 2400)``."""
    numbers = bounds.replace("][", ",").strip("[]").split(",")
    return tuple(int(n) for n in numbers)


def node_at(root: ET.Element, x: int, y: int):
    """The node a tap at (x, y) lands on: the topmost clickable node containing the
    point (later in document order = drawn on top), else the topmost node at all."""
    hit = clickable_hit = None
    for element in root.iter("node"):
        x1, y1, x2, y2 = parse_bounds(element.get("bounds", "[0,0][0,0]"))
        if x1 <= x < x2 and y1 <= y < y2:
            hit = element
            if element.get("clickable") == "true" or "EditText" in element.get("class", ""):
                clickable_hit = element
    return clickable_hit if clickable_hit is not None else hit


def _dump_text(xml: str) -> str:
    """uiautomator writes each character outside the BMP (emoji...) as two dots."""
    return "".join(".." if ord(ch) > 0xFFFF else ch for ch in xml)


# ---------------------------------------------------------------------------
# Screen model: windows drawn on top (dialogs, the keyguard)
# ---------------------------------------------------------------------------
# A dialog is its own window: uiautomator (as uiautomator2's server and the real dumps in
# tests/fixtures/ui show) writes every window as one more top-level <node> of the
# <hierarchy>, so the screen below stays in the dump. Ids are Android's own.

#: Where an AlertDialog window sits (Material dialog, 1080 px wide screen).
DIALOG_BOUNDS = (90, 820, 990, 1500)


def alert_window(package: str, title: str = "", message: str = "", buttons=(),
                 bounds=DIALOG_BOUNDS, ids: dict = None) -> ET.Element:
    """An AlertDialog window as uiautomator dumps it. ``buttons``: (label, id) pairs,
    right to left as Android lays them out (``android:id/button1`` is the positive one).

    Structure and ids from AOSP frameworks/base/core/res/res/layout/
    alert_dialog_material.xml: parentPanel > topPanel > alertTitle, contentPanel >
    message, buttonPanel > button3 / button2 / button1. ``ids`` renames the title and
    message ids (the permission controller and app crash dialogs have their own)."""
    ids = dict({"title": "android:id/alertTitle", "message": "android:id/message",
                "panel": "android:id/parentPanel"}, **(ids or {}))
    x1, y1, x2, y2 = bounds
    children = []
    if title:
        children.append(ui_node("android.widget.LinearLayout", (x1, y1, x2, y1 + 170),
                                resource_id="android:id/topPanel", children=[
            ui_node("android.widget.TextView", (x1 + 60, y1 + 60, x2 - 60, y1 + 150),
                    text=title, resource_id=ids["title"])]))
    if message:
        children.append(ui_node("android.widget.FrameLayout", (x1, y1 + 170, x2, y2 - 170),
                                resource_id="android:id/contentPanel", children=[
            ui_node("android.widget.TextView", (x1 + 60, y1 + 180, x2 - 60, y2 - 180),
                    text=message, resource_id=ids["message"])]))
    row, right = [], x2 - 40
    for label, rid in buttons:
        width = max(180, 28 * len(label) + 60)
        row.append(ui_node("android.widget.Button", (right - width, y2 - 150, right, y2 - 30),
                           text=label, resource_id=rid, clickable=True, focusable=True))
        right -= width + 20
    if row:
        children.append(ui_node("android.widget.LinearLayout", (x1, y2 - 160, x2, y2),
                                resource_id="android:id/buttonPanel", children=row[::-1]))
    panel = ui_node("android.widget.LinearLayout", bounds, resource_id=ids["panel"],
                    package=package, children=children)
    window = ui_node("android.widget.FrameLayout", bounds, package=package, children=[
        ui_node("android.widget.FrameLayout", bounds, resource_id="android:id/content",
                package=package, children=[panel])])
    _fill_defaults(window, 0, package)
    return window


def keyguard_window() -> ET.Element:
    """The lock screen of a phone without PIN (swipe to unlock), as one window of
    com.android.systemui. Ids from AOSP packages/SystemUI/res/layout/
    super_notification_shade.xml, keyguard_status_view.xml and keyguard_bottom_area.xml."""
    width, height = SCREEN_SIZE
    package = "com.android.systemui"
    window = ui_node("android.widget.FrameLayout", (0, 0, width, height), package=package,
                     resource_id="com.android.systemui:id/notification_shade", children=[
        ui_node("android.widget.FrameLayout", (0, 0, width, height),
                resource_id="com.android.systemui:id/notification_panel", children=[
            ui_node("android.widget.GridLayout", (0, 300, width, 900),
                    resource_id="com.android.systemui:id/keyguard_status_view", children=[
                ui_node("android.widget.TextView", (200, 400, 880, 700), text="12:00",
                        resource_id="com.android.systemui:id/clock_view")]),
            ui_node("android.widget.FrameLayout", (0, 2000, width, height),
                    resource_id="com.android.systemui:id/keyguard_bottom_area", children=[
                ui_node("android.widget.TextView", (200, 2150, 880, 2220),
                        text="Swipe up to open",
                        resource_id="com.android.systemui:id/keyguard_indication_text")]),
            ui_node("android.widget.ImageView", (480, 1950, 600, 2070), desc="Unlock",
                    resource_id="com.android.systemui:id/lock_icon")])])
    _fill_defaults(window, 0, package)
    return window


def with_windows(xml: str, windows) -> str:
    """A dump with more windows drawn on top (each a top-level <node>)."""
    top = ET.fromstring(xml.encode("utf-8"))
    for window in windows:
        window.set("index", str(len(top)))
        top.append(window)
    return serialize_hierarchy(top)


def in_bounds(element: ET.Element, x: int, y: int) -> bool:
    x1, y1, x2, y2 = parse_bounds(element.get("bounds", "[0,0][0,0]"))
    return x1 <= x < x2 and y1 <= y < y2


# ---------------------------------------------------------------------------
# Screen model: apps
# ---------------------------------------------------------------------------

class App:
    """A simulated app. The base class is an empty, inert screen for ``package``;
    subclasses model real screens by overriding ``dump`` and the input methods."""

    package = "com.example.app"      #: Android package name
    label = ""                       #: name under the launcher icon
    launch_activity = ".MainActivity"
    hosts: tuple = ()                #: URL hosts (and their subdomains) it opens
    schemes: tuple = ()              #: URL schemes it opens

    def __init__(self, package: str = None, label: str = None, hosts=None, schemes=None):
        if package:
            self.package = package
        if label:
            self.label = label
        if hosts is not None:
            self.hosts = tuple(hosts)
        if schemes is not None:
            self.schemes = tuple(schemes)
        self.label = self.label or self.package.rsplit(".", 1)[-1].capitalize()
        self.device = None           #: the SimDevice it is installed on
        self.activity = None         #: last activity started
        self.urls = []               #: URLs opened in this app

    def handles_url(self, url: str) -> bool:
        parts = urllib.parse.urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.scheme in self.schemes:
            return True
        return any(host == h or host.endswith("." + h) for h in self.hosts)

    def on_start(self, activity):
        self.activity = activity

    def on_stop(self):
        pass

    def dump(self) -> str:
        return hierarchy_xml(ui_node(children=[
            ui_node("android.widget.FrameLayout", resource_id="android:id/content")]),
            package=self.package)

    def tap(self, x, y):
        pass

    def text(self, s):
        pass

    def set_text(self, s):
        pass

    def key(self, code) -> bool:
        return False

    def swipe(self, x1, y1, x2, y2, ms):
        pass

    def open_url(self, url):
        self.urls.append(url)


Tap = collections.namedtuple("Tap", "x y node")   #: node: attributes of the node hit


class XmlApp(App):
    """Serves a fixed XML hierarchy (a fixture or a hand-built one) and reacts like a
    form: taps are recorded with the node hit, tapping an EditText focuses it, and typed
    text goes into the focused EditText, so the next dump shows it."""

    def __init__(self, xml: str, package: str = None, label: str = None, hosts=None,
                 schemes=None):
        self.set_xml(xml)
        super().__init__(package or self._main_package(), label, hosts, schemes)
        self.taps = []               #: Tap(x, y, node_attributes or None)

    def _main_package(self):
        """The app's package in a dump: the most frequent one, system UI and
        keyboards aside (real dumps include the status bar and the IME)."""
        counts = collections.Counter(
            element.get("package") for element in self.root.iter("node")
            if element.get("package") and "systemui" not in element.get("package")
            and "inputmethod" not in element.get("package"))
        return counts.most_common(1)[0][0] if counts else None

    def set_xml(self, xml: str) -> None:
        """Switch to another screen (subclasses call this to navigate)."""
        self.root = ET.fromstring(xml.encode("utf-8") if isinstance(xml, str) else xml)

    def dump(self) -> str:
        return serialize_hierarchy(self.root)

    def focused(self):
        """The focused EditText element, or None."""
        for element in self.root.iter("node"):
            if element.get("focused") == "true" and "EditText" in element.get("class", ""):
                return element
        return None

    def focused_text(self):
        element = self.focused()
        return None if element is None else element.get("text", "")

    def find(self, **attrs):
        """First node whose attributes equal ``attrs`` (``resource_id=`` -> resource-id)."""
        wanted = {k.replace("_", "-"): v for k, v in attrs.items()}
        for element in self.root.iter("node"):
            if all(element.get(k) == v for k, v in wanted.items()):
                return element
        return None

    def tap(self, x, y):
        element = node_at(self.root, x, y)
        self.taps.append(Tap(x, y, dict(element.attrib) if element is not None else None))
        if element is not None and "EditText" in element.get("class", ""):
            for other in self.root.iter("node"):
                other.set("focused", "false")
            element.set("focused", "true")

    def text(self, s):
        element = self.focused()
        if element is not None:
            element.set("text", element.get("text", "") + s)

    def set_text(self, s):
        element = self.focused()
        if element is not None:
            element.set("text", s)

    def key(self, code) -> bool:
        element = self.focused()
        if code == "KEYCODE_DEL" and element is not None:
            element.set("text", element.get("text", "")[:-1])
            return True
        return code not in ("KEYCODE_BACK",)


class LauncherApp(App):
    """The home screen: a search bar and one icon per installed app model. Tapping an
    icon starts that app, as on a phone."""

    package = LAUNCHER_PACKAGE
    label = "Launcher"

    def _icons(self):
        apps = [a for a in self.device.apps.values() if not isinstance(a, LauncherApp)]
        width, height = SCREEN_SIZE
        for position, app in enumerate(sorted(apps, key=lambda a: a.label)):
            row, column = divmod(position, 4)
            x1, y1 = column * width // 4, 400 + row * 300
            yield app, (x1, y1, x1 + width // 4, y1 + 300)

    def dump(self) -> str:
        icons = [ui_node("android.widget.TextView", bounds, text=app.label, desc=app.label,
                         clickable=True, focusable=True, long_clickable=True)
                 for app, bounds in self._icons()]
        width, height = SCREEN_SIZE
        workspace = ui_node("android.widget.FrameLayout", (0, 0, width, height),
                            resource_id="com.android.launcher3:id/workspace", scrollable=True,
                            children=[ui_node("android.view.ViewGroup", (0, 0, width, height),
                                              children=icons)])
        search = ui_node("android.widget.FrameLayout", (60, 2100, width - 60, 2250),
                         resource_id="com.android.launcher3:id/search_container_hotseat",
                         desc="Search", clickable=True, focusable=True)
        root = ui_node(children=[ui_node("android.widget.FrameLayout",
                                         resource_id="com.android.launcher3:id/launcher",
                                         children=[workspace, search])])
        return hierarchy_xml(root, package=self.package)

    def tap(self, x, y):
        for app, (x1, y1, x2, y2) in self._icons():
            if x1 <= x < x2 and y1 <= y < y2:
                self.device.start_app(app.package)
                return

    def key(self, code) -> bool:
        return True


# ---------------------------------------------------------------------------
# In-memory file system
# ---------------------------------------------------------------------------

S_IFDIR, S_IFREG = 0o040000, 0o100000
FileEntry = collections.namedtuple("FileEntry", "data mtime mode")


class SimFS:
    """A phone's files: ``files`` maps absolute paths to FileEntry(bytes, mtime, mode),
    ``dirs`` maps directory paths to their mtime. /storage/emulated/0 is /sdcard."""

    _ALIASES = ("/storage/emulated/0", "/storage/self/primary", "/mnt/sdcard")

    def __init__(self):
        self.lock = threading.RLock()
        now = int(time.time())
        self.files = {}
        self.dirs = {}
        for path in ("/", "/sdcard", "/sdcard/DCIM", "/sdcard/DCIM/Camera",
                     "/sdcard/Download", "/sdcard/Pictures", "/sdcard/Movies", "/data",
                     "/data/local", "/data/local/tmp", "/system", "/system/bin", "/dev",
                     "/proc", "/storage", "/storage/emulated"):
            self.dirs[path] = now

    def norm(self, path: str) -> str:
        """Absolute, normalized, alias-resolved path (adb's shell starts in /)."""
        if not path.startswith("/"):
            path = "/" + path
        parts = []
        for part in path.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if parts:
                    parts.pop()
            else:
                parts.append(part)
        result = "/" + "/".join(parts)
        for alias in self._ALIASES:
            if result == alias or result.startswith(alias + "/"):
                result = "/sdcard" + result[len(alias):]
        return result

    def parent(self, path: str) -> str:
        return self.norm(path).rsplit("/", 1)[0] or "/"

    def isdir(self, path) -> bool:
        return self.norm(path) in self.dirs

    def isfile(self, path) -> bool:
        return self.norm(path) in self.files

    def exists(self, path) -> bool:
        return self.isdir(path) or self.isfile(path)

    def stat(self, path):
        """(mode, size, mtime), or None when the path does not exist."""
        path = self.norm(path)
        with self.lock:
            if path in self.files:
                entry = self.files[path]
                return S_IFREG | entry.mode, len(entry.data), entry.mtime
            if path in self.dirs:
                return S_IFDIR | 0o771, 4096, self.dirs[path]
        return None

    def read(self, path) -> bytes:
        """File contents; raises FileNotFoundError / IsADirectoryError like open()."""
        path = self.norm(path)
        with self.lock:
            if path in self.dirs:
                raise IsADirectoryError(path)
            if path not in self.files:
                raise FileNotFoundError(path)
            return self.files[path].data

    def write(self, path, data: bytes, mtime: int = None, mode: int = 0o660,
              append: bool = False, make_parents: bool = False) -> None:
        path = self.norm(path)
        with self.lock:
            if path in self.dirs:
                raise IsADirectoryError(path)
            if make_parents:
                self.mkdir(self.parent(path), parents=True)
            elif not self.isdir(self.parent(path)):
                raise FileNotFoundError(path)
            if append and path in self.files:
                data = self.files[path].data + data
            self.files[path] = FileEntry(bytes(data), int(mtime or time.time()), mode)

    def touch(self, path) -> None:
        path = self.norm(path)
        with self.lock:
            if path in self.dirs:
                self.dirs[path] = int(time.time())
            elif path in self.files:
                self.files[path] = self.files[path]._replace(mtime=int(time.time()))
            else:
                self.write(path, b"")

    def mkdir(self, path, parents: bool = False) -> None:
        path = self.norm(path)
        with self.lock:
            if path in self.dirs:
                if parents:
                    return
                raise FileExistsError(path)
            if path in self.files:
                raise FileExistsError(path)
            if not self.isdir(self.parent(path)):
                if not parents:
                    raise FileNotFoundError(path)
                self.mkdir(self.parent(path), parents=True)
            self.dirs[path] = int(time.time())

    def listdir(self, path) -> list:
        path = self.norm(path)
        with self.lock:
            if path not in self.dirs:
                raise FileNotFoundError(path)
            prefix = path.rstrip("/") + "/"
            names = {p[len(prefix):] for p in list(self.files) + list(self.dirs)
                     if p.startswith(prefix) and p != path and "/" not in p[len(prefix):]}
            return sorted(names)

    def remove(self, path, recursive: bool = False) -> None:
        path = self.norm(path)
        with self.lock:
            if path in self.files:
                del self.files[path]
            elif path in self.dirs:
                if not recursive:
                    raise IsADirectoryError(path)
                prefix = path.rstrip("/") + "/"
                for table in (self.files, self.dirs):
                    for key in [k for k in table if k.startswith(prefix) or k == path]:
                        del table[key]
            else:
                raise FileNotFoundError(path)


def solid_png(width: int, height: int, rgb=(32, 32, 32)) -> bytes:
    """A valid PNG of one colour, built with zlib (no imaging library needed)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))
    row = b"\x00" + bytes(rgb) * width
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(row * height))
            + chunk(b"IEND", b""))


# ---------------------------------------------------------------------------
# Shell: tokenizer (POSIX quoting, nothing interpreted)
# ---------------------------------------------------------------------------

_STATUS = object()                   #: placeholder for ``$?`` inside a word
_OPERATORS = ("&&", "||", ">>", ";", "&", "|", ">", "<", "\n")


class Word(list):
    """A shell word: a list of literal strings and ``_STATUS`` markers (``$?``)."""

    def expand(self, status: int) -> str:
        return "".join(str(status) if part is _STATUS else part for part in self)


def tokenize(command: str) -> list:
    """Split a command line into Words and operator strings with POSIX quoting rules.

    Quoted text is kept literally (an operator inside quotes is part of a word); the only
    expansion is ``$?`` outside single quotes. ``$(...)``, backquotes, ``*`` and
    ``$VAR`` stay literal characters: the simulator must never run a payload.
    A digit-only word right before ``>``/``<`` becomes a file descriptor prefix
    (``2>``, ``2>&1``). Raises ValueError on an unterminated quote.
    """
    tokens, i, n = [], 0, len(command)
    word, in_word = Word(), False

    def finish():
        nonlocal word, in_word
        if in_word:
            tokens.append(word)
        word, in_word = Word(), False

    while i < n:
        ch = command[i]
        if ch in " \t\r":
            finish()
            i += 1
        elif ch == "#" and not in_word:
            while i < n and command[i] != "\n":
                i += 1
        elif ch == "'":
            end = command.find("'", i + 1)
            if end < 0:
                raise ValueError("unterminated '")
            word.append(command[i + 1:end])
            in_word, i = True, end + 1
        elif ch == '"':
            i, in_word = i + 1, True
            while True:
                if i >= n:
                    raise ValueError('unterminated "')
                ch = command[i]
                if ch == '"':
                    i += 1
                    break
                if ch == "\\" and i + 1 < n and command[i + 1] in '$`"\\\n':
                    if command[i + 1] != "\n":
                        word.append(command[i + 1])
                    i += 2
                elif command.startswith("$?", i):
                    word.append(_STATUS)
                    i += 2
                else:
                    word.append(ch)
                    i += 1
        elif ch == "\\":
            if i + 1 < n and command[i + 1] != "\n":
                word.append(command[i + 1])
                in_word = True
            i += 2
        elif command.startswith("$?", i):
            word.append(_STATUS)
            in_word, i = True, i + 2
        elif ch in ";&|<>\n":
            fd = None
            if in_word and ch in "<>" and all(isinstance(p, str) for p in word) \
                    and "".join(word).isdigit():
                fd, word, in_word = "".join(word), Word(), False
            finish()
            operator = next(op for op in _OPERATORS if command.startswith(op, i))
            i += len(operator)
            if operator in (">", ">>") and command.startswith("&", i):
                operator, i = operator + "&", i + 1        # >&2, 2>&1
            tokens.append((fd or "") + operator)
        else:
            word.append(ch)
            in_word, i = True, i + 1
    finish()
    return tokens


def _parse_chain(tokens):
    """tokens -> [(connector, words, redirections)]; connector is how the command is
    joined to the previous one: ';', '&&', '||' or '|'."""
    chain, connector = [], ";"
    words, redirects = [], []
    pending_redirect = None
    for token in tokens:
        if isinstance(token, Word):
            if pending_redirect:
                redirects.append((pending_redirect, token))
                pending_redirect = None
            else:
                words.append(token)
        elif token.lstrip("0123456789") in (">", ">>", "<", ">&", ">>&"):
            pending_redirect = token
        else:
            if pending_redirect:
                raise ValueError("syntax error: redirection without a target")
            if words or redirects:
                chain.append((connector, words, redirects))
            elif token in ("&&", "||", "|"):
                raise ValueError("syntax error near unexpected token `%s'" % token)
            words, redirects = [], []
            connector = {"&": ";", "\n": ";"}.get(token, token)
    if pending_redirect:
        raise ValueError("syntax error: redirection without a target")
    if words or redirects:
        chain.append((connector, words, redirects))
    return chain


# ---------------------------------------------------------------------------
# Shell: the emulated Android programs
# ---------------------------------------------------------------------------

class ShellExit(Exception):
    """``exit N`` ends the whole command line."""

    def __init__(self, code):
        self.code = code


class _Output:
    """Where a command writes; stdout and stderr share one buffer in execution order
    (shell v1 merges them) unless redirected."""

    def __init__(self, buffer: bytearray):
        self.stdout = self.stderr = buffer

    def out(self, data):
        self.stdout += data.encode("utf-8") if isinstance(data, str) else data

    def err(self, data):
        self.stderr += data.encode("utf-8") if isinstance(data, str) else data


def _parse_intent(args):
    """Parse ``am`` intent arguments into a dict (unknown flags are skipped)."""
    intent = {"action": None, "data": None, "package": None, "component": None,
              "categories": [], "extras": {}, "flags": None, "wait": False,
              "stop": False, "rest": []}
    i = 0
    while i < len(args):
        arg = args[i]
        value = args[i + 1] if i + 1 < len(args) else None
        if arg in ("-a", "-d", "-p", "-n", "-c", "-f", "-t", "--user"):
            key = {"-a": "action", "-d": "data", "-p": "package", "-n": "component",
                   "-f": "flags", "-t": "type", "--user": "user"}.get(arg)
            if arg == "-c":
                intent["categories"].append(value)
            else:
                intent[key] = value
            i += 2
        elif arg in ("--es", "--ei", "--ez", "--el", "--ef", "--eu", "--ecn", "--esa",
                     "--eia", "-e"):
            key, raw = value, args[i + 2] if i + 2 < len(args) else ""
            converters = {"--ei": int, "--el": int, "--ef": float,
                          "--ez": lambda v: v.lower() == "true"}
            try:
                intent["extras"][key] = converters.get(arg, str)(raw)
            except ValueError:
                intent["extras"][key] = raw
            i += 3
        elif arg == "--esn":
            intent["extras"][value] = None
            i += 2
        elif arg == "-W":
            intent["wait"], i = True, i + 1
        elif arg == "-S":
            intent["stop"], i = True, i + 1
        elif arg.startswith("-"):
            i += 1                   # --activity-clear-task, -R, --receiver-foreground...
        else:
            intent["rest"].append(arg)
            i += 1
    return intent


def _describe_intent(intent) -> str:
    parts = []
    if intent["action"]:
        parts.append("act=" + intent["action"])
    if intent["categories"]:
        parts.append("cat=[%s]" % ",".join(intent["categories"]))
    if intent["data"]:
        parts.append("dat=" + intent["data"])
    if intent["flags"]:
        parts.append("flg=" + intent["flags"])
    if intent["package"]:
        parts.append("pkg=" + intent["package"])
    if intent["component"]:
        parts.append("cmp=" + intent["component"])
    if intent["extras"]:
        parts.append("(has extras)")
    return "Intent { %s }" % " ".join(parts)


class AndroidShell:
    """Runs one command line against a SimDevice, the way /system/bin/sh and the
    Android tools would, and returns (output bytes, exit status)."""

    def __init__(self, device: "SimDevice", service: str):
        self.device, self.service = device, service
        self.exited = False          #: ``exit`` ran (ends an interactive session)

    # -- command lines ------------------------------------------------------

    def run(self, command: str):
        buffer = bytearray()
        status = 0
        try:
            chain = _parse_chain(tokenize(command))
        except ValueError as exc:
            return ("/system/bin/sh: %s\n" % exc).encode(), 2
        try:
            for connector, words, redirects in chain:
                if (connector == "&&" and status != 0) or (connector == "||" and status == 0):
                    continue
                if connector == "|":
                    buffer += b"/system/bin/sh: phonesim does not support pipes\n"
                    status = 2
                    continue
                status = self._run_simple(words, redirects, status, buffer)
        except ShellExit as done:
            status, self.exited = done.code, True
        return bytes(buffer), status

    def _run_simple(self, words, redirects, status, buffer) -> int:
        argv = [word.expand(status) for word in words]
        io = _Output(buffer)
        files = []
        for operator, target in redirects:
            target = target.expand(status)
            fd = operator.rstrip("<>&") or ("0" if operator.startswith("<") else "1")
            kind = operator[len(operator.rstrip("<>&")):]
            if kind.endswith("&"):
                if target == "1":
                    io.stderr = io.stdout
                elif target == "2":
                    io.stdout = io.stderr
                continue
            if kind == "<":
                continue
            sink = bytearray()
            if target not in ("/dev/null", "/dev/tty", "/dev/stdout"):
                files.append((target, sink, kind == ">>"))
            if fd == "2":
                io.stderr = sink
            else:
                io.stdout = sink
        if not argv:
            return 0
        self.device._log(self.service, argv)
        code = self._dispatch(argv, io)
        for target, sink, append in files:
            try:
                self.device.fs.write(target, bytes(sink), append=append)
            except OSError:
                buffer += ("/system/bin/sh: can't create %s: No such file or directory\n"
                           % target).encode()
                code = 1
        return code

    def _dispatch(self, argv, io) -> int:
        program = argv[0].rsplit("/", 1)[-1] if argv[0].startswith("/system/") else argv[0]
        handler = getattr(self, "cmd_" + program, None) if program.isidentifier() else None
        if handler is None:
            io.err("/system/bin/sh: %s: not found\n" % argv[0])
            return 127
        try:
            return handler(argv[1:], io) or 0
        except ShellExit:
            raise
        except (IndexError, ValueError) as exc:
            io.err("%s: bad arguments (%s)\n" % (program, exc))
            return 1

    # -- simple programs ----------------------------------------------------

    def cmd_echo(self, args, io):
        newline = True
        if args and args[0] == "-n":
            newline, args = False, args[1:]
        io.out(" ".join(args) + ("\n" if newline else ""))

    def cmd_true(self, args, io):
        return 0

    def cmd_false(self, args, io):
        return 1

    def cmd_exit(self, args, io):
        raise ShellExit(int(args[0]) if args else 0)

    def cmd_sleep(self, args, io):
        seconds = float(args[0].rstrip("s"))
        self.device._interruptible_sleep(seconds)

    def cmd_id(self, args, io):
        io.out("uid=2000(shell) gid=2000(shell) groups=2000(shell),1004(input),1007(log),"
               "1011(adb),1015(sdcard_rw),1028(sdcard_r),3001(net_bt_admin),3002(net_bt),"
               "3003(inet),3006(net_bw_stats) context=u:r:shell:s0\n")

    def cmd_whoami(self, args, io):
        io.out("shell\n")

    def cmd_date(self, args, io):
        if args and args[0] == "+%s":
            io.out("%d\n" % time.time())
        else:
            io.out(time.strftime("%a %b %d %H:%M:%S UTC %Y\n", time.gmtime()))

    def cmd_getprop(self, args, io):
        props = self.device.props
        if args:
            io.out(str(props.get(args[0], args[1] if len(args) > 1 else "")) + "\n")
        else:
            io.out("".join("[%s]: [%s]\n" % (k, props[k]) for k in sorted(props)))

    def cmd_pidof(self, args, io):
        pids = [str(self.device._pid(name)) for name in args if name in self.device.running]
        if not pids:
            return 1
        io.out(" ".join(pids) + "\n")

    # -- files --------------------------------------------------------------

    def cmd_cat(self, args, io):
        code = 0
        for path in args:
            try:
                io.out(self.device.fs.read(path))
            except IsADirectoryError:
                io.err("cat: %s: Is a directory\n" % path)
                code = 1
            except FileNotFoundError:
                io.err("cat: %s: No such file or directory\n" % path)
                code = 1
        return code

    def cmd_ls(self, args, io):
        fs = self.device.fs
        flags = "".join(a[1:] for a in args if a.startswith("-") and len(a) > 1)
        paths = [a for a in args if not a.startswith("-") or a == "-"] or ["/"]
        code = 0
        for path in paths:
            if not fs.exists(path):
                io.err("ls: %s: No such file or directory\n" % path)
                code = 1
                continue
            if fs.isdir(path) and "d" not in flags:
                names = fs.listdir(path)
                if "a" in flags:
                    names = [".", ".."] + names
                if len(paths) > 1:
                    io.out("%s:\n" % path)
                for name in names:
                    io.out(self._ls_line(fs, fs.norm(path) + "/" + name, name, "l" in flags))
            else:
                io.out(self._ls_line(fs, path, path, "l" in flags))
        return code

    @staticmethod
    def _ls_line(fs, path, name, long):
        if not long:
            return name + "\n"
        mode, size, mtime = fs.stat(path) or (S_IFDIR | 0o771, 4096, 0)
        kind = "d" if mode & S_IFDIR else "-"
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(mtime))
        return "%srw-rw---- 1 root sdcard_rw %d %s %s\n" % (kind, size, stamp, name)

    def cmd_rm(self, args, io):
        flags = "".join(a[1:] for a in args if a.startswith("-"))
        code = 0
        for path in (a for a in args if not a.startswith("-")):
            try:
                self.device.fs.remove(path, recursive="r" in flags or "R" in flags)
            except FileNotFoundError:
                if "f" not in flags:
                    io.err("rm: %s: No such file or directory\n" % path)
                    code = 1
            except IsADirectoryError:
                io.err("rm: %s: Is a directory\n" % path)
                code = 1
        return code

    def cmd_mkdir(self, args, io):
        parents = "-p" in args
        code = 0
        for path in (a for a in args if not a.startswith("-")):
            try:
                self.device.fs.mkdir(path, parents=parents)
            except FileExistsError:
                io.err("mkdir: '%s': File exists\n" % path)
                code = 1
            except FileNotFoundError:
                io.err("mkdir: '%s': No such file or directory\n" % path)
                code = 1
        return code

    def cmd_touch(self, args, io):
        code = 0
        for path in (a for a in args if not a.startswith("-")):
            try:
                self.device.fs.touch(path)
            except FileNotFoundError:
                io.err("touch: '%s': No such file or directory\n" % path)
                code = 1
        return code

    def cmd_test(self, args, io):
        if args and args[-1] == "]":
            args = args[:-1]
        fs = self.device.fs
        if len(args) == 2 and args[0] in ("-e", "-f", "-d", "-s"):
            check = {"-e": fs.exists, "-f": fs.isfile, "-d": fs.isdir,
                     "-s": lambda p: fs.isfile(p) and len(fs.read(p)) > 0}[args[0]]
            return 0 if check(args[1]) else 1
        if len(args) == 1:
            return 0 if args[0] else 1
        return 2

    # -- window, packages, activities --------------------------------------

    def cmd_wm(self, args, io):
        if args[:1] == ["size"]:
            io.out("Physical size: %dx%d\n" % SCREEN_SIZE)
        elif args[:1] == ["density"]:
            io.out("Physical density: 420\n")
        elif args[:1] == ["dismiss-keyguard"]:
            self.device.dismiss_keyguard()
        else:
            io.err("Unknown command: %s\n" % " ".join(args))
            return 1

    def cmd_svc(self, args, io):
        """``svc power stayon true|false|usb|ac|wireless``: the "Stay awake" setting."""
        if args[:2] == ["power", "stayon"] and len(args) > 2:
            value = {"true": "7", "false": "0", "ac": "1", "usb": "2", "wireless": "4"}
            if args[2] not in value:
                io.err("Usage: svc power stayon [true|false|usb|ac|wireless]\n")
                return 1
            self.device.settings["global"]["stay_on_while_plugged_in"] = value[args[2]]
            return 0
        io.err("Usage: svc [power|data|wifi|usb|nfc|bluetooth] ...\n")
        return 1

    def cmd_pm(self, args, io):
        device = self.device
        if args[:2] == ["list", "packages"]:
            options = [a for a in args[2:] if a.startswith("-")]
            filters = [a for a in args[2:] if not a.startswith("-")]
            packages = device.packages(third_party="-3" in options)
            for package in packages:
                if not filters or filters[0] in package:
                    io.out("package:%s\n" % package)
        elif args[:1] == ["path"]:
            package = args[1]
            if package not in device.packages():
                return 1
            if package in SYSTEM_PACKAGES:
                io.out("package:/system/app/%s/%s.apk\n" % (package, package))
            else:
                io.out("package:/data/app/~~phonesim==/%s-1/base.apk\n" % package)
        else:
            io.err("Unknown command: %s\n" % " ".join(args[:1]))
            return 1

    def cmd_am(self, args, io):
        verb, rest = args[0], args[1:]
        if verb in ("start", "start-activity"):
            return self._am_start(_parse_intent(rest), io)
        if verb == "force-stop":
            self.device.stop_app(rest[-1])
            return 0
        if verb == "broadcast":
            intent = _parse_intent(rest)
            io.out("Broadcasting: %s\n" % _describe_intent(intent))
            self.device._broadcast(intent)
            io.out("Broadcast completed: result=0\n")
            return 0
        io.err("Error: Unknown command: %s\n" % verb)
        return 1

    def _am_start(self, intent, io) -> int:
        device = self.device
        io.out("Starting: %s\n" % _describe_intent(intent))
        component = intent["component"]
        if component:
            package, _, activity = component.partition("/")
            if activity.startswith("."):
                activity = package + activity
            if package not in device.packages():
                io.err("Error type 3\nError: Activity class {%s/%s} does not exist.\n"
                       % (package, activity))
                return 1
            device.start_app(package, activity, stop_first=intent["stop"])
        elif intent["data"]:
            package = device.open_url(intent["data"], intent["package"],
                                      stop_first=intent["stop"])
            if package is None:
                io.err("Error: Activity not started, unable to resolve %s\n"
                       % _describe_intent(intent))
                return 1
            activity = package + ".MainActivity"
        elif intent["package"] and intent["package"] in device.packages():
            package, activity = intent["package"], None
            device.start_app(package, stop_first=intent["stop"])
        else:
            io.err("Error: Activity not started, unable to resolve %s\n"
                   % _describe_intent(intent))
            return 1
        if intent["wait"]:
            io.out("Status: ok\nLaunchState: COLD\nActivity: %s/%s\nTotalTime: 412\n"
                   "WaitTime: 415\nComplete\n" % (package, activity))
        return 0

    def cmd_monkey(self, args, io):
        package = args[args.index("-p") + 1] if "-p" in args else None
        if package is None or package not in self.device.packages():
            io.err("** No activities found to run, monkey aborted.\n")
            return 252
        self.device.start_app(package)
        io.out("  bash arg: -p\n  bash arg: %s\nEvents injected: 1\n"
               "## Network stats: elapsed time=14ms (0ms mobile, 0ms wifi, 14ms not "
               "connected)\n" % package)

    # -- input and screen ---------------------------------------------------

    def cmd_input(self, args, io):
        device = self.device
        while args and args[0] in ("touchscreen", "keyboard", "mouse", "touchpad", "dpad"):
            args = args[1:]
        verb, rest = args[0], args[1:]
        if verb == "tap":
            device.tap(int(float(rest[0])), int(float(rest[1])))
        elif verb == "swipe":
            x1, y1, x2, y2 = (int(float(v)) for v in rest[:4])
            device.swipe(x1, y1, x2, y2, int(rest[4]) if len(rest) > 4 else 300)
        elif verb == "keyevent":
            for key in (k for k in rest if not k.startswith("--")):
                device.press_key(key)
        elif verb == "text":
            text = rest[0].replace("%s", " ")
            if any(not (32 <= ord(ch) < 127) for ch in text):
                io.err("Exception occurred while executing 'text':\n"
                       "java.lang.NullPointerException: Attempt to get length of null "
                       "array\n")
                return 255
            device.type_text(text)
        else:
            io.err("Error: Unknown command: %s\n" % verb)
            return 1

    def cmd_uiautomator(self, args, io):
        if args[:1] != ["dump"]:
            io.err("Usage: uiautomator <subcommand> [options]\n")
            return 1
        paths = [a for a in args[1:] if not a.startswith("--")]
        path = paths[0] if paths else "/sdcard/window_dump.xml"
        error, xml = self.device._take_dump()
        if error:
            io.err(error + "\n")     # real uiautomator still exits 0 here
            return 0
        if path in ("/dev/tty", "/dev/stdout"):
            tty = self.device.tty_dump
            if tty == "any" or (tty == "exec" and self.service == "exec"):
                io.out(xml)          # else lost: no terminal to write to (exit 0 still)
        else:
            self.device.fs.write(path, xml.encode("utf-8"), make_parents=True)
        io.out("UI hierchary dumped to: %s\n" % path)

    def cmd_screencap(self, args, io):
        paths = [a for a in args if not a.startswith("-")]
        png = "-p" in args or (paths and paths[0].endswith(".png"))
        image = self.device.screenshot_png() if png else self.device.screenshot_raw()
        if paths:
            self.device.fs.write(paths[0], image, make_parents=False)
        else:
            io.out(image)

    # -- input methods, settings, system services ---------------------------

    def cmd_ime(self, args, io):
        device = self.device
        verb = args[0]
        if verb == "list":
            ids = device.installed_imes if "-a" in args else sorted(device.enabled_imes)
            for ime in ids:
                io.out(ime + "\n" if "-s" in args else "%s:\n  mId=%s\n" % (ime, ime))
        elif verb in ("enable", "disable"):
            ime = args[1]
            if ime not in device.installed_imes:
                io.err("Unknown input method %s cannot be %sd for user #0\n" % (ime, verb))
                return 1
            (device.enabled_imes.add if verb == "enable" else device.enabled_imes.discard)(ime)
            io.out("Input method %s: %s\n" % (ime, "enabled" if verb == "enable"
                                               else "disabled"))
        elif verb == "set":
            ime = args[1]
            if ime not in device.enabled_imes:
                io.err("Unknown input method %s cannot be selected for user #0\n" % ime)
                return 1
            device.settings["secure"]["default_input_method"] = ime
            io.out("Input method %s selected for user #0\n" % ime)
        else:
            io.err("Unknown command: %s\n" % verb)
            return 1

    def cmd_settings(self, args, io):
        verb, namespace = args[0], args[1]
        table = self.device.settings.setdefault(namespace, {})
        if verb == "get":
            io.out("%s\n" % table.get(args[2], "null"))
        elif verb == "put":
            table[args[2]] = args[3]
        elif verb == "delete":
            table.pop(args[2], None)
        elif verb == "list":
            io.out("".join("%s=%s\n" % kv for kv in sorted(table.items())))
        else:
            return 1

    def cmd_content(self, args, io):
        if args[:1] == ["call"] and "--method" in args:
            method = args[args.index("--method") + 1]
            if method == "scan_file" and "--arg" in args:
                self.device.media_scans.append(self.device.fs.norm(args[args.index("--arg") + 1]))
            io.out("Result: Bundle[{}]\n")
            return 0
        io.err("Unsupported content command\n")
        return 1

    def cmd_dumpsys(self, args, io):
        device = self.device
        service = args[0] if args else ""
        if service == "battery":
            io.out("Current Battery Service state:\n  AC powered: false\n  USB powered: true\n"
                   "  Wireless powered: false\n  Max charging current: 500000\n"
                   "  Max charging voltage: 5000000\n  Charge counter: 3000000\n"
                   "  status: 2\n  health: 2\n  present: true\n  level: %d\n  scale: 100\n"
                   "  voltage: 4123\n  temperature: 285\n  technology: Li-ion\n"
                   % device.battery)
        elif service == "window":
            package = device.foreground or LAUNCHER_PACKAGE
            app = device.apps.get(package)
            activity = (app.activity if app is not None and app.activity else
                        package + ".MainActivity")
            if device.locked:            # Android 12+: the shade holds the focus
                io.out("  mCurrentFocus=Window{4d5e6f u0 NotificationShade}\n")
            else:
                io.out("  mCurrentFocus=Window{1a2b3c u0 %s/%s}\n" % (package, activity))
            io.out("  mDreamingLockscreen=%s mDreamingSleepToken=null\n"
                   "  mShowingLockscreen=%s\n" % (_flag(device.locked), _flag(device.locked)))
        elif service == "display":
            io.out("  mCurrentOrientation=0\n  mOverrideDisplayInfo=DisplayInfo{\"Built-in "
                   "Screen\", real %d x %d, rotation 0, orientation=0}\n" % SCREEN_SIZE)
        elif service == "power":
            on = device.screen_on
            io.out("  mWakefulness=%s\n  mHoldingDisplaySuspendBlocker=%s\n"
                   "  mStayOn=%s\n  Display Power: state=%s\n"
                   % ("Awake" if on else "Asleep", _flag(on), _flag(device.stay_awake),
                      "ON" if on else "OFF"))
        elif service == "package" and len(args) > 1:
            app = device.apps.get(args[1])
            if app is None:
                io.out("Unable to find package: %s\n" % args[1])
                return
            io.out("Packages:\n  Package [%s] (1a2b3c):\n    versionCode=1 minSdk=24 "
                   "targetSdk=34\n    versionName=%s\n"
                   % (app.package, getattr(app, "version", "") or "1.0"))


# ---------------------------------------------------------------------------
# adb protocol: messages and streams (device side)
# ---------------------------------------------------------------------------

A_SYNC, A_CNXN, A_AUTH, A_OPEN = 0x434E5953, 0x4E584E43, 0x48545541, 0x4E45504F
A_OKAY, A_CLSE, A_WRTE, A_STLS = 0x59414B4F, 0x45534C43, 0x45545257, 0x534C5453
A_VERSION = 0x01000001               #: newest version we speak (checksum optional)
MAX_PAYLOAD = 256 * 1024             #: what we accept, announced in our CNXN
AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3
SYNC_CHUNK = 64 * 1024               #: sync DATA chunks are at most 64 KiB
FEATURES = ("fixed_push_mkdir",)     #: only what is implemented (SEND makes parent dirs)
_HEADER = struct.Struct("<6I")


class StreamClosed(Exception):
    """The other side closed the stream (or the connection dropped)."""


class _Stream:
    """One adb stream: inbound bytes buffered for the service, outbound writes paced by
    the peer's OKAY (one WRTE in flight at a time)."""

    def __init__(self, transport, local_id, remote_id):
        self.transport, self.local_id, self.remote_id = transport, local_id, remote_id
        self.cond = threading.Condition()
        self.inbox = bytearray()
        self.can_write = True        # an OPEN implies a READY
        self.closed = False

    # called by the transport's reader thread
    def feed(self, data):
        with self.cond:
            self.inbox += data
            self.cond.notify_all()

    def on_okay(self):
        with self.cond:
            self.can_write = True
            self.cond.notify_all()

    def on_close(self):
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    # called by the service thread
    def read_exact(self, size: int) -> bytes:
        with self.cond:
            self.cond.wait_for(lambda: len(self.inbox) >= size or self.closed)
            if len(self.inbox) < size:
                raise StreamClosed()
            data = bytes(self.inbox[:size])
            del self.inbox[:size]
            return data

    def read_line(self):
        with self.cond:
            self.cond.wait_for(lambda: b"\n" in self.inbox or self.closed)
            if b"\n" not in self.inbox:
                raise StreamClosed()
            end = self.inbox.index(b"\n") + 1
            line = bytes(self.inbox[:end])
            del self.inbox[:end]
            return line

    def write(self, data: bytes) -> None:
        """Send ``data`` as one WRTE per max-payload chunk, waiting for each OKAY."""
        limit = self.transport.max_send
        for start in range(0, max(len(data), 1), limit):
            chunk = data[start:start + limit]
            if not chunk:
                return
            with self.cond:
                self.cond.wait_for(lambda: self.can_write or self.closed)
                if self.closed:
                    raise StreamClosed()
                self.can_write = False
            self.transport.send(A_WRTE, self.local_id, self.remote_id, chunk)

    def close(self) -> None:
        with self.cond:
            already, self.closed = self.closed, True
            self.cond.notify_all()
        self.transport.forget(self.local_id)
        if not already:
            try:
                self.transport.send(A_CLSE, self.local_id, self.remote_id)
            except OSError:
                pass


class _Transport:
    """One TCP connection from the adb server: reads messages, answers CNXN/AUTH,
    opens streams and hands each to a service thread."""

    def __init__(self, device: "SimDevice", sock: socket.socket):
        self.device, self.sock = device, sock
        self.send_lock = threading.Lock()
        self.streams = {}
        self.streams_lock = threading.Lock()
        self.next_id = 1
        self.max_send = 4096          # until the server's CNXN tells us more
        self.online = False           # CNXN exchanged
        self.awaiting_auth = False
        self.closed = False

    # -- wire ---------------------------------------------------------------

    def _recv_exact(self, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise EOFError()
            data += chunk
        return bytes(data)

    def send(self, command, arg0, arg1, data: bytes = b"") -> None:
        """Send one message; blocks while the device is silent (nothing leaves it)."""
        self.device._wait_awake(self)
        if self.closed:
            raise OSError("connection closed")
        header = _HEADER.pack(command, arg0, arg1, len(data), sum(data) & 0xFFFFFFFF,
                              command ^ 0xFFFFFFFF)
        with self.send_lock:
            self.sock.sendall(header + data)

    # -- reader loop --------------------------------------------------------

    def run(self) -> None:
        try:
            while True:
                command, arg0, arg1, length, _checksum, magic = _HEADER.unpack(
                    self._recv_exact(_HEADER.size))
                if magic != command ^ 0xFFFFFFFF or length > 16 * 1024 * 1024:
                    break            # corrupt stream: the protocol says hang up
                data = self._recv_exact(length) if length else b""
                if self.device.silent:
                    continue         # a frozen phone swallows everything
                self._handle(command, arg0, arg1, data)
        except (OSError, EOFError, StreamClosed):
            pass
        finally:
            self.close()

    def _handle(self, command, arg0, arg1, data) -> None:
        if command == A_CNXN:
            self.max_send = min(arg1 or 4096, MAX_PAYLOAD)
            self.version = min(arg0, A_VERSION)
            if self.device.unauthorized:
                self.awaiting_auth = True
                self.send(A_AUTH, AUTH_TOKEN, 0, os.urandom(20))
            else:
                self.accept()
        elif command == A_AUTH:
            if self.awaiting_auth and arg0 == AUTH_SIGNATURE:
                self.send(A_AUTH, AUTH_TOKEN, 0, os.urandom(20))   # no key is accepted
        elif not self.online:
            return                   # nothing but CNXN/AUTH before we are connected
        elif command == A_OPEN:
            self._open(arg0, data.rstrip(b"\0").decode("utf-8", "surrogateescape"))
        elif command in (A_OKAY, A_WRTE, A_CLSE):
            with self.streams_lock:
                stream = self.streams.get(arg1)
            if stream is None:
                return               # a stream we closed already: ignore
            if command == A_OKAY:
                stream.remote_id = arg0
                stream.on_okay()
            elif command == A_WRTE:
                stream.feed(data)
                self.send(A_OKAY, arg1, arg0)
            else:
                self.forget(arg1)
                stream.on_close()

    def accept(self) -> None:
        """Send our CNXN: the server marks the device ``device``."""
        self.awaiting_auth = False
        self.online = True
        self.send(A_CNXN, getattr(self, "version", A_VERSION), MAX_PAYLOAD,
                  self.device.banner().encode("utf-8"))

    def _open(self, remote_id: int, service: str) -> None:
        with self.streams_lock:
            local_id = self.next_id
            self.next_id += 1
            stream = _Stream(self, local_id, remote_id)
            self.streams[local_id] = stream
        threading.Thread(target=self.device._serve, args=(stream, service),
                         name="phonesim-%s-%d" % (self.device.port, local_id),
                         daemon=True).start()

    def forget(self, local_id) -> None:
        with self.streams_lock:
            self.streams.pop(local_id, None)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        with self.streams_lock:
            streams, self.streams = list(self.streams.values()), {}
        for stream in streams:
            stream.on_close()
        self.device._transport_closed(self)


# ---------------------------------------------------------------------------
# Simulated device
# ---------------------------------------------------------------------------

CommandRecord = collections.namedtuple("CommandRecord", "service argv")
CommandRecord.__doc__ = "One simple command received: service ('shell'/'exec'), argv list."


class SimDevice:
    """One simulated phone listening on 127.0.0.1:port.

    Everything a test may look at or change is a plain attribute: ``props``,
    ``battery``, ``fs``, ``apps``, ``foreground``, ``settings``, ``events``,
    ``broadcasts``, ``media_scans``, ``command_log``, the counters ``dumps`` and
    ``round_trips``, the power state ``screen_on`` / ``locked``. Fault injection:
    ``unplug``, ``replug``, ``set_unauthorized``, ``fail_dumps``, ``slow_dumps``,
    ``go_silent``, ``wake``, ``screen_off``, ``crash_app``, ``drop_taps``; and the knobs
    of the module docstring (``dump_seconds``, ``dump_failure_rate``, ``tap_drop_rate``,
    ``crash_rate``, ``crash_dialog``, ``sleep_after_inputs``), drawn from ``rng``.
    """

    def __init__(self, serial_name: str = "phonesim0001", model: str = "Pixel 7",
                 manufacturer: str = "Google", android: str = "14", sdk: int = 34,
                 battery: int = 85, ime: str = None, apps=None, port: int = 0,
                 device_name: str = "panther"):
        self.model = model
        self.props = {
            "ro.product.model": model, "ro.product.manufacturer": manufacturer,
            "ro.product.brand": manufacturer.lower(), "ro.product.name": device_name,
            "ro.product.device": device_name, "ro.build.version.release": str(android),
            "ro.build.version.sdk": str(sdk), "ro.serialno": serial_name,
            "ro.product.cpu.abi": "arm64-v8a", "ro.build.type": "user",
            "ro.build.fingerprint": "%s/%s/%s:%s/PHONESIM/1:user/release-keys"
                                    % (manufacturer.lower(), device_name, device_name, android),
            "persist.sys.locale": "en-US", "sys.boot_completed": "1",
        }  #: getprop values; edit freely
        self.battery = battery       #: "level" in dumpsys battery
        self.fs = SimFS()            #: the phone's files
        self.settings = {"secure": {"default_input_method": DEFAULT_IME}, "system": {},
                         "global": {}}
        self.installed_imes = [DEFAULT_IME]
        self.enabled_imes = {DEFAULT_IME}
        if ime:
            self.installed_imes.append(IME_IDS.get(ime, ime))
        self.apps = {}               #: package -> App
        self.launcher = LauncherApp()
        self.launcher.device = self
        for app in (apps.values() if isinstance(apps, dict) else apps or ()):
            self.install(app)
        self.foreground = None       #: package in front, None = launcher
        self.running = set()         #: packages started and not force-stopped
        self.events = []             #: input events: ("tap", (x, y)), ("text", s)...
        self.broadcasts = []         #: every intent broadcast (dicts)
        self.media_scans = []        #: paths handed to the media scanner
        self.lock = threading.RLock()            #: guards the screen model
        self._log_cond = threading.Condition()
        self._command_log = []
        self._state = threading.Condition()      # silence, transports, listener
        self.silent = False
        self.unauthorized = False
        self._transports = set()
        self._listener = None
        self._closing = threading.Event()
        self._init_faults(serial_name)
        self.port = port
        self._listen()

    def _init_faults(self, serial_name: str) -> None:
        """The fault knobs, all off, and the counters (see the module docstring)."""
        self._dump_failures = collections.deque()
        self._dump_delay = 0.0
        self.rng = random.Random(serial_name)    #: the random faults' draws (``seed``)
        self.dumps = 0               #: ``uiautomator dump`` runs (failed ones too)
        self.round_trips = 0         #: services opened (each shell/exec/sync call)
        self.screen_on = True        #: the display is on
        self.locked = False          #: the keyguard shows (no PIN: a swipe opens it)
        self.dump_failure_rate = 0.0     #: chance that a dump fails (idle / null root)
        self.tap_drop_rate = 0.0         #: chance that a tap does nothing
        self.crash_rate = 0.0            #: chance that a tap crashes the app in front
        self.crash_dialog = False        #: a crash shows "<App> keeps stopping"
        self.sleep_after_inputs = None   #: the screen times out after N inputs
        self.tty_dump = "any"        #: where `uiautomator dump /dev/tty` prints: any/exec/none
        self._taps_to_drop = 0
        self._crash_after_taps = None
        self._inputs_since_wake = 0
        self.system_windows = []     #: system dialogs on top: (window, {id: action})

    # -- identity -----------------------------------------------------------

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``: what to ``adb connect``; also adb's serial for it."""
        return "127.0.0.1:%d" % self.port

    serial = address

    def banner(self) -> str:
        """The CNXN banner; adb shows model/product/device from it in ``devices -l``."""
        props = self.props
        return "device::ro.product.name=%s;ro.product.model=%s;ro.product.device=%s;" \
               "features=%s" % (props["ro.product.name"], props["ro.product.model"],
                                props["ro.product.device"], ",".join(FEATURES))

    # -- command log --------------------------------------------------------

    def _log(self, service: str, argv: list) -> None:
        with self._log_cond:
            self._command_log.append(CommandRecord(service, list(argv)))
            self._log_cond.notify_all()

    @property
    def command_log(self) -> list:
        """A copy of every simple command received, in order, as CommandRecords."""
        with self._log_cond:
            return list(self._command_log)

    def commands(self, program: str = None) -> list:
        """argv lists received, optionally only those running ``program``; adbutils'
        own ``echo X4EXIT:N`` exit-code probes and TikMatrix Lite's ``echo tmlite-end``
        end-of-output markers are left out."""
        return [r.argv for r in self.command_log
                if (program is None or r.argv[0] == program)
                and not (r.argv[0] == "echo" and (r.argv[-1].startswith("X4EXIT:")
                                                  or r.argv[1:] == ["tmlite-end"]))]

    def clear_log(self) -> None:
        with self._log_cond:
            self._command_log.clear()

    def wait_for_command(self, predicate, timeout: float = 5.0):
        """Wait until a logged CommandRecord satisfies ``predicate``; return it or None."""
        deadline = time.monotonic() + timeout
        with self._log_cond:
            while True:
                for record in self._command_log:
                    if predicate(record):
                        return record
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._log_cond.wait(remaining)

    # -- apps and screen ----------------------------------------------------

    def install(self, app) -> App:
        """Install an App instance, an App class/factory, or a bare package name."""
        if isinstance(app, str):
            app = App(app)
        elif not isinstance(app, App):
            app = app()
        app.device = self
        self.apps[app.package] = app
        return app

    def packages(self, third_party: bool = False) -> list:
        user = list(self.apps) + [ime.split("/")[0] for ime in self.installed_imes[1:]]
        return sorted(set(user) if third_party else set(user) | set(SYSTEM_PACKAGES))

    @property
    def screen(self) -> App:
        """The App drawing the screen now."""
        with self.lock:
            return self.apps.get(self.foreground) or self.launcher

    def _app(self, package: str) -> App:
        if package not in self.apps:
            self.install(App(package))
        return self.apps[package]

    def start_app(self, package: str, activity: str = None, stop_first: bool = False):
        with self.lock:
            if stop_first:
                self.stop_app(package)
            app = self._app(package)
            activity = activity or app.launch_activity
            if activity.startswith("."):
                activity = package + activity
            self.foreground = package
            self.running.add(package)
            app.on_start(activity)
            return app

    def stop_app(self, package: str) -> None:
        with self.lock:
            self.running.discard(package)
            if self.foreground == package:
                self.foreground = None
            if package in self.apps:
                self.apps[package].on_stop()

    def open_url(self, url: str, package: str = None, stop_first: bool = False):
        """Route a VIEW intent: to ``package`` if given, else to the app whose hosts or
        schemes match, else to the browser. Returns the package or None."""
        with self.lock:
            if package:
                if package not in self.packages():
                    return None
            else:
                matches = [p for p, a in self.apps.items() if a.handles_url(url)]
                package = matches[0] if matches else None
                if package is None and urllib.parse.urlsplit(url).scheme in ("http", "https"):
                    package = BROWSER_PACKAGE
                if package is None:
                    return None
            app = self.start_app(package, stop_first=stop_first)
            app.open_url(url)
            return package

    def tap(self, x: int, y: int) -> None:
        """A touch: lost while the screen is off, taken by the keyguard or a system
        dialog on top, maybe dropped or crashing the app (knobs); else the app's."""
        with self.lock:
            self.events.append(("tap", (x, y)))
            if not self._input_reaches_screen():
                return
            if self.system_windows:
                self._tap_system_window(x, y)
            elif self._taps_to_drop or (self.tap_drop_rate and
                                        self.rng.random() < self.tap_drop_rate):
                self._taps_to_drop = max(0, self._taps_to_drop - 1)
                self.events.append(("tap-dropped", (x, y)))
            elif self.foreground and self._crash_due():
                self.crash_app()
            else:
                self.screen.tap(x, y)

    def swipe(self, x1, y1, x2, y2, ms=300) -> None:
        with self.lock:
            self.events.append(("swipe", (x1, y1, x2, y2, ms)))
            if self.screen_on and self.locked and y1 - y2 > 300:
                self.locked = False          # no PIN: swiping up opens the keyguard
                return
            if self._input_reaches_screen() and not self.system_windows:
                self.screen.swipe(x1, y1, x2, y2, ms)

    def type_text(self, text: str) -> None:
        """Deliver typed text to the screen (from ``input text`` or an IME broadcast)."""
        with self.lock:
            self.events.append(("text", text))
            if self._input_reaches_screen() and not self.system_windows:
                self.screen.text(text)

    def set_text(self, text: str) -> None:
        """Replace the focused field's text (an IME's "set text" action)."""
        with self.lock:
            self.events.append(("set_text", text))
            if self._input_reaches_screen() and not self.system_windows:
                self.screen.set_text(text)

    def press_key(self, key: str) -> None:
        """``input keyevent``: power keys turn the screen on and off (MENU opens a
        keyguard without PIN), HOME goes home, BACK closes a system dialog, printable
        keys type, others go to the app (an unhandled BACK leaves the app)."""
        name = KEYCODES.get(int(key), key) if key.isdigit() else key
        name = name if name.startswith("KEYCODE_") else "KEYCODE_" + name
        with self.lock:
            self.events.append(("key", name))
            short = name[len("KEYCODE_"):]
            if short in ("WAKEUP", "POWER", "SLEEP"):
                self._power_key(short)
                return
            if self.screen_on and self.locked and short == "MENU":
                self.locked = False
                return
            if not self._input_reaches_screen():
                return
            if self.system_windows and short in ("BACK", "HOME"):
                self.system_windows.pop()
                if short == "BACK":
                    return
            if short == "HOME":
                self.foreground = None
            elif short == "SPACE" or len(short) == 1:
                self.screen.text(" " if short == "SPACE" else short.lower())
            elif not self.screen.key(name) and short == "BACK":
                self.foreground = None

    # -- power, keyguard, system dialogs, crashes ------------------------------

    def _power_key(self, short: str) -> None:
        if short == "WAKEUP" or (short == "POWER" and not self.screen_on):
            self.screen_on, self._inputs_since_wake = True, 0
        else:
            self.screen_off()

    def _input_reaches_screen(self) -> bool:
        """Counts an input towards the screen timeout; False when the screen is off or
        the keyguard takes it."""
        if self.screen_on and self.sleep_after_inputs is not None and not self.stay_awake:
            self._inputs_since_wake += 1
            if self._inputs_since_wake > self.sleep_after_inputs:
                self.screen_off()
        return self.screen_on and not self.locked

    @property
    def stay_awake(self) -> bool:
        """``svc power stayon`` / the developer option "Stay awake" (plugged in)."""
        return self.settings["global"].get("stay_on_while_plugged_in", "0") not in ("0", "")

    def screen_off(self) -> None:
        """The display goes off and the keyguard locks (as after the screen timeout)."""
        with self.lock:
            self.screen_on, self.locked = False, True

    def dismiss_keyguard(self) -> bool:
        """``wm dismiss-keyguard``: opens a keyguard without PIN if the screen is on."""
        with self.lock:
            if self.screen_on:
                self.locked = False
            return not self.locked

    def show_system_window(self, window: ET.Element, actions: dict) -> None:
        """A system dialog on top of everything: ``actions`` maps the resource id of
        each button to a callable (or None: just close). A tap anywhere else does
        nothing; BACK closes it."""
        with self.lock:
            self.system_windows.append((window, actions))

    def _tap_system_window(self, x: int, y: int) -> None:
        window, actions = self.system_windows[-1]
        for element in window.iter("node"):
            rid = element.get("resource-id")
            if rid in actions and in_bounds(element, x, y):
                self.system_windows.pop()
                if actions[rid] is not None:
                    actions[rid]()
                return
        self.events.append(("tap-swallowed", (x, y)))

    def _crash_due(self) -> bool:
        if self._crash_after_taps is not None:
            self._crash_after_taps -= 1
            if self._crash_after_taps < 0:
                self._crash_after_taps = None
                return True
            return False
        return bool(self.crash_rate) and self.rng.random() < self.crash_rate

    def crash_app(self, package: str = None, dialog: bool = None) -> None:
        """The app (in front by default) dies: back to the launcher, its screens lost
        as after a force-stop; with ``dialog`` (default ``crash_dialog``) Android's
        "<App> keeps stopping" dialog shows on top (ids of AOSP
        frameworks/base/core/res/res/layout/app_error_dialog.xml)."""
        with self.lock:
            package = package or self.foreground
            if package is None:
                return
            self.events.append(("crash", package))
            self.stop_app(package)
            if self.crash_dialog if dialog is None else dialog:
                label = self.apps[package].label if package in self.apps else package
                buttons = [("Close app", "android:id/aerr_close"),
                           ("App info", "android:id/aerr_app_info"),
                           ("Open app again", "android:id/aerr_restart")]
                window = alert_window("android", "%s keeps stopping" % label, "",
                                      buttons, bounds=(90, 900, 990, 1500))
                self.show_system_window(window, {
                    "android:id/aerr_close": None, "android:id/aerr_app_info": None,
                    "android:id/aerr_restart": lambda: self.start_app(package)})

    def seed(self, value) -> None:
        """Re-seed the random faults (the chaos tests print their seed)."""
        self.rng.seed(value)

    def _broadcast(self, intent) -> None:
        """Deliver a broadcast: the current IME's text actions, the media scanner."""
        with self.lock:
            self.broadcasts.append(intent)
            action, extras = intent["action"], intent["extras"]
            ime = self.settings["secure"].get("default_input_method")
            try:
                if ime == FASTINPUT_IME and action in ("ADB_INPUT_TEXT", "ADB_SET_TEXT"):
                    text = base64.b64decode(extras.get("text", "")).decode("utf-8")
                    (self.set_text if action == "ADB_SET_TEXT" else self.type_text)(text)
                elif ime in (FASTINPUT_IME, ADBKEYBOARD_IME) and action == "ADB_CLEAR_TEXT":
                    self.set_text("")
                elif ime == ADBKEYBOARD_IME and action == "ADB_INPUT_B64":
                    self.type_text(base64.b64decode(extras.get("msg", "")).decode("utf-8"))
                elif ime == ADBKEYBOARD_IME and action == "ADB_INPUT_TEXT":
                    self.type_text(str(extras.get("msg", "")))
            except (ValueError, UnicodeDecodeError):
                pass                 # a real IME would log and drop it
            if action == "android.intent.action.MEDIA_SCANNER_SCAN_FILE" and intent["data"]:
                self.media_scans.append(
                    self.fs.norm(urllib.parse.unquote(urllib.parse.urlsplit(intent["data"]).path)))

    def _take_dump(self):
        """(error message or None, xml) for ``uiautomator dump``, honouring faults: the
        delay, queued and random failures; a locked phone shows its keyguard; system
        dialogs are windows on top of the app's."""
        with self.lock:
            self.dumps += 1
        if self._dump_delay:
            self._interruptible_sleep(self._dump_delay)
        with self.lock:
            if self._dump_failures:
                return self._dump_failures.popleft(), None
            if self.dump_failure_rate and self.rng.random() < self.dump_failure_rate:
                return self.rng.choice((IDLE_ERROR, NULL_ROOT_ERROR)), None
            if self.locked or not self.screen_on:
                return None, hierarchy_xml(keyguard_window(), package="com.android.systemui")
            xml = self.screen.dump()
            if self.system_windows:
                xml = with_windows(xml, [window for window, _ in self.system_windows])
            return None, _dump_text(xml)

    def screenshot_png(self) -> bytes:
        seed = zlib.crc32((self.foreground or LAUNCHER_PACKAGE).encode())
        return solid_png(*SCREENSHOT_SIZE, rgb=(seed & 0xFF, seed >> 8 & 0xFF, seed >> 16 & 0xFF))

    def screenshot_raw(self) -> bytes:
        """``screencap`` without -p: width, height, format (RGBA_8888), colour space."""
        width, height = SCREENSHOT_SIZE
        return struct.pack("<IIII", width, height, 1, 0) + b"\x20\x20\x20\xff" * (width * height)

    def _pid(self, package: str) -> int:
        return 10000 + zlib.crc32(package.encode()) % 20000

    # -- fault injection ----------------------------------------------------

    def unplug(self) -> None:
        """Cable out: drop every connection and stop listening (connects are refused)."""
        with self._state:
            listener, self._listener = self._listener, None
            transports = list(self._transports)
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        for transport in transports:
            transport.close()

    def replug(self) -> None:
        """Cable back in: listen again on the same port (adb may reconnect by itself;
        ``adb connect`` makes it immediate)."""
        with self._state:
            if self._listener is None:
                self._listen()

    def set_unauthorized(self, flag: bool = True) -> None:
        """Unauthorized phones answer CNXN with AUTH and never accept a key. Clearing the
        flag accepts connections waiting for authorization, like tapping "Allow"."""
        with self._state:
            self.unauthorized = flag
            waiting = [t for t in self._transports if t.awaiting_auth]
        if not flag:
            for transport in waiting:
                transport.accept()

    def fail_dumps(self, n: int = 1, message: str = IDLE_ERROR) -> None:
        """The next ``n`` uiautomator dumps print ``message`` and write nothing."""
        with self.lock:
            self._dump_failures.extend([message] * n)

    def slow_dumps(self, seconds: float) -> None:
        """Every uiautomator dump takes ``seconds`` (0 to stop)."""
        self._dump_delay = seconds

    @property
    def dump_seconds(self) -> float:
        """Seconds per ``uiautomator dump`` (a real phone takes 1-2 s)."""
        return self._dump_delay

    @dump_seconds.setter
    def dump_seconds(self, seconds: float) -> None:
        self._dump_delay = seconds

    def drop_taps(self, n: int = 1) -> None:
        """The next ``n`` taps do nothing (an element that ignores the first tap)."""
        with self.lock:
            self._taps_to_drop += n

    def crash_after_taps(self, n: int) -> None:
        """The app in front crashes on the (n+1)-th tap from now (0: the next one)."""
        with self.lock:
            self._crash_after_taps = n

    def reset_counters(self) -> None:
        with self.lock:
            self.dumps = self.round_trips = 0

    def go_silent(self) -> None:
        """Freeze: connections stay open but everything received is swallowed and
        nothing is sent, so adb calls hang until the connection drops."""
        with self._state:
            self.silent = True

    def wake(self) -> None:
        """Unfreeze. Requests swallowed meanwhile stay unanswered (as on a phone whose
        adbd hung); new requests work."""
        with self._state:
            self.silent = False
            self._state.notify_all()

    # -- threads and sockets ------------------------------------------------

    def _wait_awake(self, transport) -> None:
        with self._state:
            self._state.wait_for(lambda: not self.silent or transport.closed
                                 or self._closing.is_set())

    def _interruptible_sleep(self, seconds: float) -> None:
        self._closing.wait(seconds)

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(8)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept_loop, args=(listener,), daemon=True,
                         name="phonesim-listen-%d" % self.port).start()

    def _accept_loop(self, listener) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return               # unplugged or closed
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            transport = _Transport(self, sock)
            with self._state:
                if self._listener is not listener:
                    sock.close()
                    return
                self._transports.add(transport)
            threading.Thread(target=transport.run, daemon=True,
                             name="phonesim-conn-%d" % self.port).start()

    def _transport_closed(self, transport) -> None:
        with self._state:
            self._transports.discard(transport)
            self._state.notify_all()

    def close(self) -> None:
        """Stop for good (threads end, port released)."""
        self._closing.set()
        self.unplug()
        with self._state:
            self._state.notify_all()

    # -- services -----------------------------------------------------------

    def _serve(self, stream: _Stream, service: str) -> None:
        """Run one OPENed service on its own thread, then close the stream."""
        kind, _, argument = service.partition(":")
        kind = kind.split(",")[0]    # "shell,v1,raw" -> "shell"
        handler = {"shell": self._serve_shell, "exec": self._serve_exec,
                   "sync": self._serve_sync}.get(kind)
        if handler is not None:
            with self.lock:
                self.round_trips += 1
        try:
            if handler is None:
                stream.transport.forget(stream.local_id)
                stream.transport.send(A_CLSE, 0, stream.remote_id)   # failed OPEN
                return
            stream.transport.send(A_OKAY, stream.local_id, stream.remote_id)
            handler(stream, argument)
        except (StreamClosed, OSError):
            pass
        finally:
            if handler is not None:
                stream.close()

    def _serve_shell(self, stream, command: str) -> None:
        shell = AndroidShell(self, "shell")
        if command.strip():
            stream.write(shell.run(command)[0])
            return
        prompt = ("%s:/ $ " % self.props["ro.product.device"]).encode()
        stream.write(prompt)
        while not shell.exited:      # interactive: one command line at a time
            line = stream.read_line().decode("utf-8", "replace").strip()
            output, _ = shell.run(line)
            stream.write(output if shell.exited else output + prompt)

    def _serve_exec(self, stream, command: str) -> None:
        stream.write(AndroidShell(self, "exec").run(command)[0])

    def _serve_sync(self, stream, _argument) -> None:
        """The sync protocol (SYNC.TXT): STAT, LIST, SEND, RECV, QUIT. Each reply goes
        out in one WRTE because adbutils reads each reply with a single recv()."""
        fs = self.fs
        while True:
            request, length = struct.unpack("<4sI", stream.read_exact(8))
            if request == b"QUIT":
                return
            if length > 4096:
                raise StreamClosed()
            path = stream.read_exact(length).decode("utf-8", "surrogateescape")
            if request == b"STAT":
                mode, size, mtime = fs.stat(path) or (0, 0, 0)
                stream.write(b"STAT" + struct.pack("<III", mode, size, mtime))
            elif request == b"LIST":
                if fs.isdir(path):
                    for name in [".", ".."] + fs.listdir(path):
                        target = path if name in (".", "..") else fs.norm(path) + "/" + name
                        mode, size, mtime = fs.stat(target) or (S_IFDIR | 0o771, 4096, 0)
                        encoded = name.encode("utf-8")
                        stream.write(b"DENT" + struct.pack("<IIII", mode, size, mtime,
                                                           len(encoded)) + encoded)
                stream.write(b"DONE" + bytes(16))
            elif request == b"SEND":
                self._sync_receive_file(stream, path)
            elif request == b"RECV":
                try:
                    data = fs.read(path)
                except OSError as exc:
                    reason = ("Is a directory" if isinstance(exc, IsADirectoryError)
                              else "No such file or directory")
                    self._sync_fail(stream, "remote object '%s' does not exist: %s"
                                    % (path, reason))
                    continue
                for start in range(0, len(data), SYNC_CHUNK):
                    chunk = data[start:start + SYNC_CHUNK]
                    stream.write(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
                stream.write(b"DONE" + struct.pack("<I", 0))
            else:
                self._sync_fail(stream, "unknown sync request %r" % request)
                return

    def _sync_receive_file(self, stream, spec: str) -> None:
        path, _, mode = spec.rpartition(",")
        if not path:
            path, mode = spec, "33188"
        body = bytearray()
        while True:
            request, value = struct.unpack("<4sI", stream.read_exact(8))
            if request == b"DATA":
                if value > SYNC_CHUNK:
                    raise StreamClosed()
                body += stream.read_exact(value)
            elif request == b"DONE":
                break
            else:
                raise StreamClosed()
        if path.endswith("/") or self.fs.isdir(path):
            self._sync_fail(stream, "couldn't create file: Is a directory")
            return
        try:
            self.fs.write(path, bytes(body), mtime=value, mode=int(mode) & 0o7777,
                          make_parents=True)
        except OSError as exc:
            self._sync_fail(stream, "couldn't create file: %s" % exc)
            return
        stream.write(b"OKAY" + struct.pack("<I", 0))

    @staticmethod
    def _sync_fail(stream, message: str) -> None:
        encoded = message.encode("utf-8")
        stream.write(b"FAIL" + struct.pack("<I", len(encoded)) + encoded)


# ---------------------------------------------------------------------------
# Many devices
# ---------------------------------------------------------------------------

class PhoneSim:
    """A set of simulated phones in one process. Use as a context manager."""

    def __init__(self):
        self.devices = []            #: SimDevice list, in creation order

    def add_device(self, serial_name: str = None, model: str = "Pixel 7",
                   manufacturer: str = "Google", android: str = "14", sdk: int = 34,
                   battery: int = 85, ime: str = None, apps=None, port: int = 0) -> SimDevice:
        """Start one phone; ``port=0`` picks a free port. ``ime``: None, "fastinput",
        "adbkeyboard" or an IME id. ``apps``: App instances/classes/package names, or a
        dict package -> those."""
        serial_name = serial_name or "phonesim%04d" % (len(self.devices) + 1)
        device = SimDevice(serial_name=serial_name, model=model, manufacturer=manufacturer,
                           android=android, sdk=sdk, battery=battery, ime=ime, apps=apps,
                           port=port)
        self.devices.append(device)
        return device

    def close(self) -> None:
        for device in self.devices:
            device.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------------
# Private adb server (tests never touch port 5037)
# ---------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class AdbServer:
    """A real adb server on a private port with a private HOME (its own keys), started
    from adbutils' bundled adb (or ``$ADB``). ``stop()`` kills it and removes HOME."""

    def __init__(self, port: int = 0, adb: str = None):
        self.port = port or free_port()
        self.adb = adb or os.environ.get("ADB") or self._bundled_adb()
        self.home = None
        self.env = None

    @staticmethod
    def _bundled_adb() -> str:
        import adbutils
        return adbutils.adb_path()

    def start(self, timeout: float = 30.0) -> "AdbServer":
        self.home = tempfile.mkdtemp(prefix="phonesim-adb-")
        self.env = dict(os.environ, HOME=self.home, TMPDIR=self.home,
                        ANDROID_ADB_SERVER_PORT=str(self.port),
                        ANDROID_USER_HOME=os.path.join(self.home, ".android"))
        self.run("start-server", timeout=timeout)
        self._until(lambda: self._answers(), timeout, "adb server did not start")
        return self

    def _answers(self) -> bool:
        try:
            self.client().server_version()
            return True
        except Exception:
            return False

    def run(self, *args, timeout: float = 20.0) -> subprocess.CompletedProcess:
        """``adb -P PORT ARGS`` (output captured through a file: a server forked by
        start-server must not hold our pipes open)."""
        with tempfile.TemporaryFile() as out:
            result = subprocess.run([self.adb, "-P", str(self.port), *args], env=self.env,
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, timeout=timeout)
            out.seek(0)
            result.stdout = out.read().decode("utf-8", "replace")
        return result

    def client(self):
        import adbutils
        return adbutils.AdbClient(host="127.0.0.1", port=self.port)

    def state(self, serial: str):
        """adb's state for ``serial`` ('device', 'offline', 'unauthorized'...) or None."""
        for info in self.client().list():
            if info.serial == serial:
                return info.state
        return None

    def wait_state(self, serial: str, states=("device",), timeout: float = 15.0):
        """Poll until adb reports ``serial`` in one of ``states`` (None = gone)."""
        states = (states,) if isinstance(states, str) or states is None else tuple(states)
        found = []
        def reached():
            found[:] = [self.state(serial)]
            return found[0] in states
        self._until(reached, timeout, "%s not in %s (last: %s)" % (serial, states, found))
        return found[0]

    def connect(self, address: str, timeout: float = 15.0, state: str = "device") -> str:
        """``adb connect`` then wait until adb lists the device in ``state``."""
        deadline = time.monotonic() + timeout
        self.run("connect", address, timeout=timeout)
        self.wait_state(address, (state,), max(0.1, deadline - time.monotonic()))
        return address

    def disconnect(self, address: str) -> None:
        self.run("disconnect", address)

    def kill(self) -> None:
        if self.env is not None:
            try:
                self.run("kill-server", timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass

    def stop(self) -> None:
        self.kill()
        if self.home:
            shutil.rmtree(self.home, ignore_errors=True)
            self.home = None

    @staticmethod
    def _until(condition, timeout: float, message: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(message)
            time.sleep(0.05)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

#: App models of tests/apps.py by name: (class name, its keyword arguments).
APP_MODELS = {
    "tiktok47": ("TikTokApp", {"version": "47.0.3"}),
    "tiktok43": ("TikTokApp", {"version": "43.1.4", "package": "com.ss.android.ugc.trill"}),
    "instagram": ("InstagramApp", {}),
}


def app_factory(name: str, users: dict, **knobs):
    """A model name -> a factory of that app model (one per phone); a package name is
    passed through (a blank app). ``knobs``: app model keywords (accounts, popup_rate...)."""
    if name not in APP_MODELS:
        return name
    # tests/apps.py imports this module by name: run as a script, this module is
    # __main__, so register it as "phonesim" first or its classes would exist twice
    sys.modules.setdefault("phonesim", sys.modules[__name__])
    import apps as models
    class_name, kwargs = APP_MODELS[name]
    return lambda: getattr(models, class_name)(users=dict(users), **kwargs, **knobs)


def _arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Simulated Android phones for adb (device side of the protocol).")
    parser.add_argument("--devices", type=int, default=3, help="how many phones")
    parser.add_argument("--base-port", type=int, default=0,
                        help="first port (then +1 per phone); 0 picks free ports")
    parser.add_argument("--model", default="Pixel 7")
    parser.add_argument("--android", default="14")
    parser.add_argument("--sdk", type=int, default=34)
    parser.add_argument("--ime", choices=("none", "fastinput", "adbkeyboard"), default="none")
    parser.add_argument("--apps", default="tiktok47,instagram",
                        help="comma-separated apps installed: the app models of "
                             "tests/apps.py (%s), or package names (blank screens)"
                             % ", ".join(APP_MODELS))
    parser.add_argument("--users", default="nasa,natgeo",
                        help="comma-separated user names whose profiles the app models show")
    parser.add_argument("--accounts", default="sim_user",
                        help="comma-separated accounts logged in on each app (first: current)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random faults")
    parser.add_argument("--popup-rate", type=float, default=0.0,
                        help="chance of a pop-up with each new screen")
    parser.add_argument("--popup-on-tap-rate", type=float, default=0.0,
                        help="chance of a pop-up between a dump and the next tap")
    parser.add_argument("--dump-seconds", type=float, default=0.0,
                        help="seconds each uiautomator dump takes (real phones: 1-2)")
    parser.add_argument("--dump-failure-rate", type=float, default=0.0)
    parser.add_argument("--tap-drop-rate", type=float, default=0.0)
    parser.add_argument("--crash-rate", type=float, default=0.0,
                        help="chance that a tap crashes the app back to the launcher")
    parser.add_argument("--sleep-after-inputs", type=int, default=None,
                        help="the screen turns off after N inputs unless kept awake")
    return parser


def main(argv=None) -> int:
    options = _arg_parser().parse_args(argv)

    sim = PhoneSim()
    users = {name.strip().lstrip("@"): False for name in options.users.split(",") if name}
    knobs = {"accounts": [a.strip() for a in options.accounts.split(",") if a.strip()],
             "seed": options.seed, "popup_rate": options.popup_rate,
             "popup_on_tap_rate": options.popup_on_tap_rate}
    apps = [app_factory(name.strip(), users, **knobs)
            for name in options.apps.split(",") if name]
    for number in range(options.devices):
        port = options.base_port + number if options.base_port else 0
        device = sim.add_device(model=options.model, android=options.android,
                                sdk=options.sdk, apps=apps, port=port,
                                ime=None if options.ime == "none" else options.ime)
        device.seed(options.seed + number)
        for knob in ("dump_seconds", "dump_failure_rate", "tap_drop_rate", "crash_rate",
                     "sleep_after_inputs"):
            setattr(device, knob, getattr(options, knob))
    print("phonesim: %d phone(s) listening" % len(sim.devices))
    for device in sim.devices:
        print("  adb connect %s    # %s, Android %s, serial %s"
              % (device.address, device.model, options.android, device.address))
    print("Point TikMatrix Lite at them: run the `adb connect` lines above against the adb "
          "server Lite uses, then `python tikmatrix_lite.py`.\nCtrl-C to stop.")
    sys.stdout.flush()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):   # also when started in background
        signal.signal(signum, lambda *_: stop.set())
    try:
        while not stop.wait(3600):
            pass
    finally:
        sim.close()
    print("phonesim: stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
