#!/usr/bin/env python3
"""TikMatrix Lite: a phone-farm task server for a small box full of Android phones.

Copy this file and the ``scripts/`` folder onto a Raspberry Pi (or any Linux box),
``pip install -r requirements.txt`` and run ``python tikmatrix_lite.py``. It serves the
TikMatrix local task API on port 50809, so clients written for TikMatrix work against it
unchanged, keeps tasks, devices and accounts in one sqlite file beside the program, and
runs each task on its phone through a real adb server (``adbutils``), one task at a time
per phone.

The module reads top to bottom: configuration, errors, time, store, events, scripts,
devices, phone helpers, runner, scheduler, task operations (with webhooks, account safety,
schedules, metrics), server, HTTP API, main. Anything a section uses is defined above it,
except that the runner and scheduler are handed the objects they call. The dashboard
(``GET /``) is plain HTML, CSS and JavaScript in ``web/`` beside this file.

Needs: Python 3.9+, bottle, waitress, adbutils. Licence: MIT.
"""
from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import dataclasses
import datetime as _dt
import functools
import hashlib
import hmac
import importlib.util
import itertools
import ipaddress
import json
import logging
import math
import os
import posixpath
import random
import re
import select
import shlex
import socket
import sqlite3
import struct
import sys
import threading
import time
import traceback
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import parse_qsl, urlsplit

__version__ = "0.1.0"

log = logging.getLogger("tikmatrix_lite")
#: one line per HTTP request
http_log = logging.getLogger("tikmatrix_lite.http")

HERE = Path(__file__).resolve().parent


###############################################################################
# Configuration ###############################################################
###############################################################################

DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 50809
DEFAULT_ADB_SERVER = "127.0.0.1:5037"
#: Client networks allowed when --allow-from is not given: loopback and private ranges.
DEFAULT_ALLOW_FROM = (
    "127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
    "169.254.0.0/16", "100.64.0.0/10", "fc00::/7", "fe80::/10",
)
LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_BODY_BYTES = 1024 * 1024
#: Frames per second of live screens across all phones: what a Pi's USB bus spares.
DEFAULT_SCREEN_FPS = 4.0
DEFAULT_MAX_UPLOAD_MB = 1024


class ConfigError(Exception):
    """A start-up setting is wrong; main() prints it as one line and exits non-zero."""


@dataclass
class Config:
    """Everything the server needs to start, from flags, environment and defaults."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    db: Path = HERE / "tikmatrix_lite.db"
    scripts: Path = HERE / "scripts"
    #: adb servers as "host:port"; the first default one is started locally if silent.
    adb_servers: List[str] = field(default_factory=lambda: [DEFAULT_ADB_SERVER])
    api_key: Optional[str] = None
    allow_from: List[Any] = field(
        default_factory=lambda: [ipaddress.ip_network(n) for n in DEFAULT_ALLOW_FROM])
    max_running: int = 0
    log_level: str = "info"
    screen_fps: float = DEFAULT_SCREEN_FPS
    max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB
    #: URLs that get every webhook event (SPEC 8.3), and the secret that signs them
    webhooks: List[str] = field(default_factory=list)
    webhook_secret: Optional[str] = None
    #: a log file rotated at 10 MB (3 kept), beside the log on stderr
    log_file: Optional[Path] = None

    @property
    def artifacts_dir(self) -> Path:
        """Failure screenshots and UI dumps live in a folder beside the database."""
        return self.db.parent / (self.db.stem + "-artifacts")

    @property
    def materials_dir(self) -> Path:
        """The material library's files, beside the database like the artifacts."""
        return self.db.parent / (self.db.stem + "-materials")


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line instead of usage + error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is outside 1-65535")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1000:
        raise argparse.ArgumentTypeError(f"{value:g} is outside (0, 1000]")
    return value


def _network(text: str):
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a network (CIDR)") from None


def _adb_address(text: str) -> str:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"{text!r} is not host:port")
    if ":" in host or "[" in host:
        raise argparse.ArgumentTypeError(f"{text!r}: adb servers are reached over IPv4 "
                                         "(adbutils); give an IPv4 address or a host name")
    _port(port)
    return f"{host}:{int(port)}"


def _key_file(text: str) -> str:
    """The API key from a file (first line, spaces trimmed): it stays out of ``ps``."""
    try:
        with open(os.path.expanduser(text), encoding="utf-8") as stream:
            key = stream.readline(4096).strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise argparse.ArgumentTypeError(f"cannot read {text}: {reason}") from None
    if not key:
        raise argparse.ArgumentTypeError(f"{text} is empty: write the API key in it")
    return key


class _DefaultsOnce(argparse.HelpFormatter):
    """Shows a flag's default unless its help already says it or it has none."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default" in text or action.default is None or action.default is False \
                or action.default == argparse.SUPPRESS:
            return text
        return text + " (default: %(default)s)"


def _http_url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s) URL")
    return text.strip()


def build_arg_parser(prog: str = "tikmatrix_lite") -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog=prog,
        description="TikMatrix Lite: the TikMatrix local task API for a box of Android "
                    "phones. Every flag can also be set by the environment variable named "
                    "in brackets; a flag wins over its variable.",
        formatter_class=_DefaultsOnce)
    add = parser.add_argument
    add("--host", help="address to listen on [TMLITE_HOST]", default=DEFAULT_HOST)
    add("--port", type=_port, default=DEFAULT_PORT, help="port to listen on [TMLITE_PORT]")
    add("--db", type=Path, default=HERE / "tikmatrix_lite.db",
        help="sqlite file for tasks, devices and accounts; created on first start [TMLITE_DB]")
    add("--scripts", type=Path, default=HERE / "scripts",
        help="folder of automation scripts [TMLITE_SCRIPTS]")
    add("--adb-server", dest="adb_servers", action="append", type=_adb_address,
        metavar="HOST:PORT",
        help="adb server to use; repeat for several hosts. One on 127.0.0.1 or localhost "
             "is started when none answers there [TMLITE_ADB_SERVERS, comma list] "
             f"(default: {DEFAULT_ADB_SERVER})")
    key = parser.add_mutually_exclusive_group()
    key.add_argument("--api-key", help="when set, every request must send it as "
                     "'Authorization: Bearer KEY' or 'X-API-Key: KEY'; visible in ps, so "
                     "prefer --api-key-file [TMLITE_API_KEY]")
    key.add_argument("--api-key-file", type=_key_file, metavar="FILE",
                     help="read the API key from the first line of FILE "
                          "[TMLITE_API_KEY_FILE]")
    add("--allow-from", action="append", type=_network, metavar="CIDR",
        help="client network allowed; repeatable [TMLITE_ALLOW_FROM, comma list] "
             "(default: loopback and private ranges)")
    add("--max-running", type=_non_negative, default=0,
        help="cap on tasks running at once across all devices, 0 for no cap "
             "[TMLITE_MAX_RUNNING]")
    add("--log-level", choices=LOG_LEVELS, default="info", help="[TMLITE_LOG_LEVEL]")
    add("--screen-fps", type=_positive_number, default=DEFAULT_SCREEN_FPS,
        help="live-screen frames per second across all phones; the opened phone gets the "
             "larger share [TMLITE_SCREEN_FPS]")
    add("--max-upload-mb", type=_non_negative, default=DEFAULT_MAX_UPLOAD_MB,
        help="largest material upload in MiB [TMLITE_MAX_UPLOAD_MB]")
    add("--log-file", type=Path, help="also log to this file, rotated at 10 MB with 3 old "
                                      "files kept [TMLITE_LOG_FILE]")
    add("--webhook", dest="webhooks", action="append", type=_http_url, metavar="URL",
        help="POST every task end, device and account event here; repeatable "
             "[TMLITE_WEBHOOKS, comma list]")
    add("--webhook-secret", help="sign webhook bodies: X-TMLite-Signature: sha256=HMAC "
                                 "[TMLITE_WEBHOOK_SECRET]")
    add("--version", action="version", version=f"TikMatrix Lite {__version__}")
    return parser


#: environment variable -> (flag, splits on commas)
_ENV_FLAGS = {
    "TMLITE_HOST": ("--host", False), "TMLITE_PORT": ("--port", False),
    "TMLITE_DB": ("--db", False), "TMLITE_SCRIPTS": ("--scripts", False),
    "TMLITE_ADB_SERVERS": ("--adb-server", True), "TMLITE_API_KEY": ("--api-key", False),
    "TMLITE_API_KEY_FILE": ("--api-key-file", False),
    "TMLITE_ALLOW_FROM": ("--allow-from", True), "TMLITE_MAX_RUNNING": ("--max-running", False),
    "TMLITE_LOG_LEVEL": ("--log-level", False), "TMLITE_SCREEN_FPS": ("--screen-fps", False),
    "TMLITE_MAX_UPLOAD_MB": ("--max-upload-mb", False),
    "TMLITE_LOG_LEVEL": ("--log-level", False), "TMLITE_LOG_FILE": ("--log-file", False),
    "TMLITE_WEBHOOKS": ("--webhook", True), "TMLITE_WEBHOOK_SECRET": ("--webhook-secret", False),
}


def parse_config(argv: Optional[Sequence[str]] = None,
                 environ: Optional[Dict[str, str]] = None) -> Config:
    """Flags win over environment variables, which win over defaults.

    Environment values go through the same parser as flags, so a bad TMLITE_PORT is
    reported exactly like a bad --port.
    """
    environ = os.environ if environ is None else environ
    argv = list(sys.argv[1:] if argv is None else argv)
    from_env: List[str] = []
    for name, (flag, is_list) in _ENV_FLAGS.items():
        value = environ.get(name, "").strip()
        items = [i.strip() for i in (value.split(",") if is_list else [value]) if i.strip()]
        args = [part for item in items for part in (flag, item)]
        build_arg_parser(prog=f"tikmatrix_lite (environment {name})").parse_args(args)
        from_env += args
    env_args = build_arg_parser().parse_args(from_env)
    parser = build_arg_parser()
    # scalar settings from the environment become the flags' defaults; the repeatable
    # ones are merged by hand, since argparse would append flags to a default list
    parser.set_defaults(**{k: v for k, v in vars(env_args).items()
                           if k not in ("adb_servers", "allow_from", "api_key", "api_key_file",
                                        "webhooks")})
    args = parser.parse_args(argv)
    # a key given by flag (either form) wins over both key variables
    api_key = args.api_key or args.api_key_file or env_args.api_key or env_args.api_key_file
    return Config(
        host=args.host, port=args.port, db=args.db.expanduser().resolve(),
        scripts=args.scripts.expanduser().resolve(),
        adb_servers=args.adb_servers or env_args.adb_servers or [DEFAULT_ADB_SERVER],
        api_key=api_key or None,
        allow_from=args.allow_from or env_args.allow_from or
        [ipaddress.ip_network(n) for n in DEFAULT_ALLOW_FROM],
        max_running=args.max_running, log_level=args.log_level,
        screen_fps=args.screen_fps, max_upload_mb=args.max_upload_mb,
        webhooks=args.webhooks or env_args.webhooks or [],
        webhook_secret=args.webhook_secret or None,
        log_file=args.log_file.expanduser().resolve() if args.log_file else None)


def setup_logging(level: str, log_file: Optional[Path] = None) -> None:
    """Readable, levelled log lines; waitress's queue-depth chatter only when it matters.

    ``log_file`` adds a file rotated at 10 MB with three old files kept, so a box left
    alone for months does not fill its SD card.
    """
    handlers: List[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        from logging.handlers import RotatingFileHandler
        try:
            handlers.append(RotatingFileHandler(
                log_file, maxBytes=10 * 1024 * 1024, backupCount=3, encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot write log file {log_file}: {exc.strerror or exc}") \
                from None
    logging.basicConfig(
        level=getattr(logging, level.upper()), handlers=handlers,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S", force=True)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    logging.getLogger("adbutils").setLevel(logging.WARNING)


###############################################################################
# Errors ######################################################################
###############################################################################

class LiteError(Exception):
    """An error with its API code (SPEC 2); the HTTP status is code // 100."""

    code = 50001

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(LiteError):
    """40001: a parameter is wrong. The message names the field and what is wrong."""

    code = 40001

    def __init__(self, field_name: str, reason: str):
        super().__init__(f"{field_name}: {reason}" if field_name else reason)
        self.field, self.reason = field_name, reason


class MissingScriptName(LiteError):
    code = 40002


class ScriptNotSupported(LiteError):
    code = 40003


class Unauthorized(LiteError):
    code = 40101


class Forbidden(LiteError):
    code = 40301


class NotFound(LiteError):
    code = 40401


class MethodNotAllowed(LiteError):
    code = 40501


class BodyTooLarge(LiteError):
    code = 41301


class Unavailable(LiteError):
    """50001 with a message the client may see (a missing device layer, a dead phone)."""

    code = 50001


class StorageFull(Unavailable):
    """The sqlite file's disk is full: nothing of the request was written."""

    def __init__(self):
        super().__init__("database or disk is full: nothing was written; free space on "
                         "the box's disk and try again")


class Stopped(Exception):
    """Raised inside a script when its task is stopped by the user."""


class DeviceLost(Exception):
    """Raised inside a script when its phone disconnected or stopped answering."""


class CommandTimeout(Exception):
    """A device command did not finish within its timeout."""


class DeviceError(RuntimeError):
    """The phone answered, but not with what was asked: ``kind`` says which.

    Kinds: "push" (a file copy refused), "screenshot" (no PNG), "ui_dump" (no window
    dump), "keyboard" (cannot type this text), "app_missing" (the app is not installed:
    trying again cannot help). A RuntimeError, as scripts written before it expect.
    """

    KINDS = ("push", "screenshot", "ui_dump", "keyboard", "app_missing")

    def __init__(self, kind: str, message: str):
        if kind not in self.KINDS:
            raise ValueError(f"unknown DeviceError kind {kind!r}")
        super().__init__(message)
        self.kind = kind
        self.retry = kind != "app_missing"


class StepFailed(Exception):
    """A step of a script could not be done; the message names the step and why.

    ``retry=False`` says that trying again cannot help (the profile does not exist, the
    app is not installed, the account is not on the phone): the task fails without
    auto-retry. Scripts raise it as ``from tikmatrix_lite import StepFailed``.
    """

    def __init__(self, step: str, reason: str = "", *, retry: bool = True):
        super().__init__(f"{step}: {reason}" if reason else step)
        self.step, self.reason, self.retry = step, reason, retry


class ElementNotFound(StepFailed):
    """A script step could not find what it looked for on the screen."""

    def __init__(self, step: str, selector: Any, hint: str = ""):
        self.selector = selector
        text = f"element not found ({describe_selector(selector)})"
        super().__init__(step, text + (f"; {hint}" if hint else ""))


def describe_selector(selector: Any) -> str:
    if isinstance(selector, dict):
        if "any_of" in selector:
            return " or ".join(describe_selector(s) for s in selector["any_of"])
        return ", ".join(f"{k}={v!r}" for k, v in selector.items())
    return repr(selector)


###############################################################################
# Time ########################################################################
###############################################################################

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def format_time(epoch: Optional[float]) -> Optional[str]:
    """Epoch seconds -> the API's 'YYYY-MM-DD HH:MM:SS' in the box's local time."""
    if epoch is None:
        return None
    return _format_second(math.floor(epoch))


@functools.lru_cache(maxsize=4096)
def _format_second(second: int) -> str:
    # a page of tasks repeats the same few seconds; strftime costs more than the lookup
    return time.strftime(TIME_FORMAT, time.localtime(second))


def next_occurrence(hhmm: str, now: float) -> float:
    """'HH:MM' -> epoch of its next occurrence in local time: later today, else tomorrow."""
    match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", hhmm.strip())
    if not match:
        raise BadRequest("start_time", f"{hhmm!r} is not a time of day HH:MM (00:00-23:59)")
    today = _dt.datetime.fromtimestamp(now)
    candidate = today.replace(hour=int(match[1]), minute=int(match[2]), second=0, microsecond=0)
    if candidate.timestamp() <= now:
        candidate = (candidate.date() + _dt.timedelta(days=1))
        candidate = _dt.datetime.combine(candidate, _dt.time(int(match[1]), int(match[2])))
    return candidate.timestamp()


def local_timezone_name() -> str:
    return time.strftime("%Z") + " (UTC" + time.strftime("%z") + ")"


###############################################################################
# Store #######################################################################
###############################################################################

PENDING, RUNNING, COMPLETED, FAILED = 0, 1, 2, 3
STATUS_TEXT = {PENDING: "pending", RUNNING: "running", COMPLETED: "completed", FAILED: "failed"}
STOPPED_BY_USER = "stopped by user"
INTERRUPTED = "interrupted by restart"
DISCONNECTED = "device disconnected"
LEASE_EXPIRED = "worker lease expired"

#: Forward migrations; PRAGMA user_version counts how many have been applied. Every
#: upsert names its conflict target: sqlite before 3.35 (Raspberry Pi OS 11) needs it.
MIGRATIONS: List[str] = [
    """
    CREATE TABLE tasks (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        serial          TEXT    NOT NULL,
        username        TEXT,
        script_name     TEXT    NOT NULL,
        script_config   TEXT    NOT NULL,
        status          INTEGER NOT NULL DEFAULT 0 CHECK (status BETWEEN 0 AND 3),
        source          TEXT    NOT NULL DEFAULT 'api',
        priority        INTEGER NOT NULL DEFAULT 0,
        start_time      REAL    NOT NULL,
        rest_seconds    REAL    NOT NULL DEFAULT 0,
        min_interval    INTEGER NOT NULL DEFAULT 0,
        max_interval    INTEGER NOT NULL DEFAULT 0,
        created_at      REAL    NOT NULL,
        started_at      REAL,
        end_time        REAL,
        progress        INTEGER NOT NULL DEFAULT 0,
        message         TEXT    NOT NULL DEFAULT '',
        error           TEXT    NOT NULL DEFAULT '',
        result          TEXT,
        retry_count     INTEGER NOT NULL DEFAULT 0,
        max_retry_count INTEGER NOT NULL DEFAULT 3,
        auto_retry      INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX tasks_status ON tasks (status);
    CREATE INDEX tasks_due ON tasks (serial, status, priority DESC, start_time, id);
    CREATE INDEX tasks_script ON tasks (script_name);
    CREATE INDEX tasks_source ON tasks (source);
    CREATE INDEX tasks_username ON tasks (username);
    CREATE INDEX tasks_created ON tasks (created_at);
    -- the database itself refuses a second running task on one device
    CREATE UNIQUE INDEX tasks_one_running_per_device ON tasks (serial) WHERE status = 1;

    CREATE TABLE task_log (
        id      INTEGER PRIMARY KEY,
        task_id INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
        at      REAL    NOT NULL,
        line    TEXT    NOT NULL
    );
    CREATE INDEX task_log_task ON task_log (task_id, id);

    CREATE TABLE devices (
        serial          TEXT PRIMARY KEY,
        state           TEXT NOT NULL DEFAULT 'disconnected',
        model           TEXT NOT NULL DEFAULT '',
        android_version TEXT NOT NULL DEFAULT '',
        battery         INTEGER,
        adb_server      TEXT NOT NULL DEFAULT '',
        connection      TEXT NOT NULL DEFAULT 'usb',
        first_seen      REAL NOT NULL,
        last_seen       REAL,
        last_task_end   REAL
    );

    CREATE TABLE accounts (
        username   TEXT PRIMARY KEY COLLATE NOCASE,
        serial     TEXT NOT NULL,
        platform   TEXT NOT NULL CHECK (platform IN ('tiktok', 'instagram')),
        package    TEXT NOT NULL,
        enabled    INTEGER NOT NULL DEFAULT 1,
        created_at REAL NOT NULL
    );
    CREATE INDEX accounts_serial ON accounts (serial);
    """,
    """
    -- network and cloud phones connected through Lite, by the adb server used: they
    -- are connected again whenever that server (re)starts
    ALTER TABLE devices ADD COLUMN reconnect_via TEXT;
    """,
    # 3: the farm view: phones' names and groups, the material library, the folder ledger
    """
    ALTER TABLE devices ADD COLUMN alias TEXT NOT NULL DEFAULT '';
    ALTER TABLE devices ADD COLUMN groups TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE devices ADD COLUMN ime TEXT;
    ALTER TABLE devices ADD COLUMN screen TEXT NOT NULL DEFAULT '';
    ALTER TABLE devices ADD COLUMN apps TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE devices ADD COLUMN last_error TEXT NOT NULL DEFAULT '';

    CREATE TABLE materials (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        name         TEXT    NOT NULL,
        kind         TEXT    NOT NULL CHECK (kind IN ('video', 'image')),
        size         INTEGER NOT NULL,
        sha256       TEXT    NOT NULL UNIQUE,
        file         TEXT    NOT NULL,
        tags         TEXT    NOT NULL DEFAULT '[]',
        username     TEXT    COLLATE NOCASE,
        caption      TEXT    NOT NULL DEFAULT '',
        used_count   INTEGER NOT NULL DEFAULT 0,
        last_used_at REAL,
        created_at   REAL    NOT NULL,
        -- the pending or running task that holds it (SPEC 7.2 reservation)
        reserved_by  INTEGER REFERENCES tasks (id) ON DELETE SET NULL
    );
    CREATE INDEX materials_free ON materials (kind, used_count, reserved_by);
    CREATE INDEX materials_reserved ON materials (reserved_by);

    -- localFolder media already posted, so a folder's file is not picked twice
    CREATE TABLE used_media (
        path    TEXT PRIMARY KEY,
        task_id INTEGER,
        used_at REAL NOT NULL
    );
    """,
    # 4 (issue 9's store): one index per real query (each index is written on every change of a task, and
    # the SD card pays for it), counters for the totals, and the pending tasks of each
    # phone in partial indexes that hold only them.
    f"""
    DROP INDEX tasks_status;
    DROP INDEX tasks_due;
    DROP INDEX tasks_script;
    DROP INDEX tasks_source;
    DROP INDEX tasks_username;
    -- claim_next (a phone's best due task) and due_times (when it is due), from the
    -- index alone: it holds the pending tasks only, so it stays small at any size
    CREATE INDEX tasks_due ON tasks (serial, priority DESC, start_time, id, rest_seconds)
        WHERE status = {PENDING};
    -- GET /task?serial=: a phone's tasks, newest first
    CREATE INDEX tasks_serial ON tasks (serial, id);
    -- GET /task?status=2 or 3, newest first (written once, when a task ends)
    CREATE INDEX tasks_completed ON tasks (id) WHERE status = {COMPLETED};
    CREATE INDEX tasks_failed ON tasks (id) WHERE status = {FAILED};

    -- the tasks per status of every (serial, script, source, account): GET /task's
    -- totals and /task/stats add up these few rows instead of counting the tasks
    CREATE TABLE task_counts (
        serial      TEXT    NOT NULL,
        script_name TEXT    NOT NULL,
        source      TEXT    NOT NULL,
        username    TEXT    NOT NULL,   -- '' for a task without an account
        status      INTEGER NOT NULL,
        n           INTEGER NOT NULL,
        PRIMARY KEY (serial, script_name, source, username, status)
    ) WITHOUT ROWID;
    INSERT INTO task_counts
        SELECT serial, script_name, source, COALESCE(username, ''), status, COUNT(*)
        FROM tasks GROUP BY 1, 2, 3, 4, 5;
    CREATE TRIGGER task_counts_insert AFTER INSERT ON tasks BEGIN
        INSERT INTO task_counts VALUES (NEW.serial, NEW.script_name, NEW.source,
                                        COALESCE(NEW.username, ''), NEW.status, 1)
            ON CONFLICT (serial, script_name, source, username, status)
            DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER task_counts_delete AFTER DELETE ON tasks BEGIN
        UPDATE task_counts SET n = n - 1
            WHERE serial = OLD.serial AND script_name = OLD.script_name
            AND source = OLD.source AND username = COALESCE(OLD.username, '')
            AND status = OLD.status;
    END;
    CREATE TRIGGER task_counts_update
        AFTER UPDATE OF status, serial, script_name, source, username ON tasks
        WHEN OLD.status IS NOT NEW.status OR OLD.serial IS NOT NEW.serial
            OR OLD.script_name IS NOT NEW.script_name OR OLD.source IS NOT NEW.source
            OR OLD.username IS NOT NEW.username
    BEGIN
        UPDATE task_counts SET n = n - 1
            WHERE serial = OLD.serial AND script_name = OLD.script_name
            AND source = OLD.source AND username = COALESCE(OLD.username, '')
            AND status = OLD.status;
        INSERT INTO task_counts VALUES (NEW.serial, NEW.script_name, NEW.source,
                                        COALESCE(NEW.username, ''), NEW.status, 1)
            ON CONFLICT (serial, script_name, source, username, status)
            DO UPDATE SET n = n + 1;
    END;
    """,
    # 5: operations (SPEC 8): callbacks, expiry, timeouts, schedules, external workers,
    # account safety, keys. External tasks hold no phone, so the one-running-task-per-
    # device rule leaves them out. Its indexes follow schema 4's rule: one per real
    # query, partial where a query reads only some tasks, none written for a task
    # that does not use the feature.
    f"""
    ALTER TABLE tasks ADD COLUMN callback_url TEXT;
    ALTER TABLE tasks ADD COLUMN expire_at REAL;
    ALTER TABLE tasks ADD COLUMN timeout INTEGER;
    ALTER TABLE tasks ADD COLUMN schedule_id INTEGER;
    ALTER TABLE tasks ADD COLUMN creator TEXT;
    ALTER TABLE tasks ADD COLUMN external INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tasks ADD COLUMN worker_id TEXT;
    ALTER TABLE tasks ADD COLUMN lease_until REAL;
    ALTER TABLE tasks ADD COLUMN lease_seconds INTEGER;
    -- one running task per phone; a worker's task holds no phone, so its second key
    -- is its own id (unique anyway). The index still holds every running task: the
    -- queries on them (running_count, timeouts, leases, GET /task?status=1) read it.
    DROP INDEX tasks_one_running_per_device;
    CREATE UNIQUE INDEX tasks_one_running_per_device
        ON tasks (serial, CASE WHEN external THEN id ELSE 0 END) WHERE status = {RUNNING};
    -- schema 4's tasks_due again, with external after serial: a phone's claim and due
    -- time read only its own tasks (external = 0), GET /task?status=0 still all pending
    DROP INDEX tasks_due;
    CREATE INDEX tasks_due ON tasks (serial, external, priority DESC, start_time, id,
                                     rest_seconds) WHERE status = {PENDING};
    -- POST /worker/next: the due tasks of external scripts, best first
    CREATE INDEX tasks_external ON tasks (script_name, priority DESC, start_time, id)
        WHERE status = {PENDING} AND external = 1;
    -- the scheduler's expiry chore and its next deadline: pending tasks with an expiry
    CREATE INDEX tasks_expiry ON tasks (expire_at)
        WHERE status = {PENDING} AND expire_at IS NOT NULL;
    -- GET /task?creator= (an operator key's own tasks); tasks made without a key: none
    CREATE INDEX tasks_creator ON tasks (creator) WHERE creator IS NOT NULL;

    ALTER TABLE accounts ADD COLUMN limits TEXT;
    ALTER TABLE accounts ADD COLUMN active_hours TEXT;
    ALTER TABLE accounts ADD COLUMN cooldown_hours REAL NOT NULL DEFAULT 24;
    ALTER TABLE accounts ADD COLUMN cooldown_until REAL;
    CREATE TABLE account_actions (
        id       INTEGER PRIMARY KEY,
        username TEXT    NOT NULL COLLATE NOCASE,
        action   TEXT    NOT NULL,
        at       REAL    NOT NULL,
        count    INTEGER NOT NULL
    );
    CREATE INDEX account_actions_by ON account_actions (username, action, at);

    CREATE TABLE schedules (
        id             INTEGER PRIMARY KEY AUTOINCREMENT,
        name           TEXT    NOT NULL,
        request        TEXT    NOT NULL,
        days           TEXT    NOT NULL,
        times          TEXT    NOT NULL,
        jitter_minutes INTEGER NOT NULL DEFAULT 0,
        enabled        INTEGER NOT NULL DEFAULT 1,
        next_slot      REAL,
        next_run       REAL,
        last_run       REAL,
        created_at     REAL    NOT NULL
    );

    CREATE TABLE webhook_deliveries (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        delivery_id TEXT    NOT NULL,
        event       TEXT    NOT NULL,
        url         TEXT    NOT NULL,
        body        TEXT    NOT NULL,
        tries       INTEGER NOT NULL DEFAULT 0,
        last_status TEXT    NOT NULL DEFAULT '',
        next_try    REAL,
        created_at  REAL    NOT NULL
    );
    CREATE INDEX webhook_due ON webhook_deliveries (next_try) WHERE next_try IS NOT NULL;

    CREATE TABLE api_keys (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        name       TEXT NOT NULL,
        role       TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
        key_hash   TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL
    );
    """,
    # 6: GET /task's time ranges. A day holds thousands of tasks, and counting them in
    # tasks_created read that many index entries on every page asked for; the tasks
    # created in each hour, and the ids they span, let a range add its whole hours and
    # count only the two partial ones. The ids are bounds (a deleted task may have been
    # one end); the hour is CAST(created_at / 3600) wherever it is computed. A phone's
    # tasks, or the ended ones, in a range are counted in their index alone once it
    # holds created_at (set once, at creation: the entries grow, no write is added).
    f"""
    DROP INDEX tasks_serial;
    CREATE INDEX tasks_serial ON tasks (serial, id, created_at);
    DROP INDEX tasks_completed;
    CREATE INDEX tasks_completed ON tasks (id, created_at) WHERE status = {COMPLETED};
    DROP INDEX tasks_failed;
    CREATE INDEX tasks_failed ON tasks (id, created_at) WHERE status = {FAILED};
    CREATE TABLE task_hours (
        hour     INTEGER PRIMARY KEY,
        n        INTEGER NOT NULL,
        first_id INTEGER NOT NULL,
        last_id  INTEGER NOT NULL
    );
    INSERT INTO task_hours
        SELECT CAST(created_at / 3600 AS INTEGER), COUNT(*), MIN(id), MAX(id)
        FROM tasks GROUP BY 1;
    CREATE TRIGGER task_hours_insert AFTER INSERT ON tasks BEGIN
        INSERT INTO task_hours VALUES (CAST(NEW.created_at / 3600 AS INTEGER), 1, NEW.id,
                                       NEW.id)
            ON CONFLICT (hour) DO UPDATE SET n = n + 1, first_id = MIN(first_id, NEW.id),
                                      last_id = MAX(last_id, NEW.id);
    END;
    CREATE TRIGGER task_hours_delete AFTER DELETE ON tasks BEGIN
        UPDATE task_hours SET n = n - 1 WHERE hour = CAST(OLD.created_at / 3600 AS INTEGER);
    END;
    """,
    # 7: a task's revision, so a page of tasks is made of the JSON kept for each one
    # (Store.task_page_json) while it is current. Every UPDATE moves it: a trigger, so
    # no writer can forget; it rewrites the row in the page the update writes anyway.
    # Recursive triggers are off: the trigger's own UPDATE does not fire it again.
    """
    ALTER TABLE tasks ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
    CREATE TRIGGER tasks_rev AFTER UPDATE ON tasks WHEN NEW.rev = OLD.rev BEGIN
        UPDATE tasks SET rev = OLD.rev + 1 WHERE id = NEW.id;
    END;
    """,
    # 8: a task moves between counts in one statement of two rows, -1 where it was and
    # +1 where it is, not in an UPDATE and an INSERT: each statement of a trigger is a
    # program sqlite runs for the row, and every task moves twice (claim, end).
    """
    DROP TRIGGER task_counts_update;
    CREATE TRIGGER task_counts_update
        AFTER UPDATE OF status, serial, script_name, source, username ON tasks
        WHEN OLD.status IS NOT NEW.status OR OLD.serial IS NOT NEW.serial
            OR OLD.script_name IS NOT NEW.script_name OR OLD.source IS NOT NEW.source
            OR OLD.username IS NOT NEW.username
    BEGIN
        INSERT INTO task_counts VALUES
            (OLD.serial, OLD.script_name, OLD.source, COALESCE(OLD.username, ''),
             OLD.status, -1),
            (NEW.serial, NEW.script_name, NEW.source, COALESCE(NEW.username, ''),
             NEW.status, 1)
            ON CONFLICT (serial, script_name, source, username, status)
            DO UPDATE SET n = n + excluded.n;
    END;
    """,
]

#: New databases get small pages: a commit writes every page it changed to the WAL, whole,
#: and a task's few commits change about twenty pages (see bench/bench_wear.py).
PAGE_SIZE = 1024
#: An older file with bigger pages is rewritten once (VACUUM) with PAGE_SIZE pages when
#: it is no larger than this; a bigger one keeps its pages (the rewrite would take long).
ADOPT_PAGE_SIZE_UP_TO = 64 * 1024 * 1024
#: The WAL is checkpointed into the database at this many pages (4 MB), then reused from
#: its start and cut back to JOURNAL_SIZE_LIMIT bytes: it stays between the two. Each
#: checkpoint costs two fsyncs, so a smaller WAL would make every write slower.
WAL_AUTOCHECKPOINT = 4000
JOURNAL_SIZE_LIMIT = 1024 * 1024
#: UPDATE ... RETURNING came with sqlite 3.35 (Raspberry Pi OS 11 has 3.34).
SQLITE_HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)
#: A phone's columns its event shows (with its running task and pending count).
DEVICE_SUMMARY_COLUMNS = "d.serial, d.state, d.battery, d.alias, d.groups, d.last_error"
#: A runner's log lines and progress wait in memory for the next write; this many lines
#: of one task make a write of their own.
MAX_BUFFERED_LINES = 100
#: A device's last_seen alone is written when it is this much older than the new one.
LAST_SEEN_PRECISION = 60.0

#: A new task's row; INSERT_ROWS of them make one statement (20 values each: sqlite
#: before 3.32 binds at most 999).
INSERT_TASKS_SQL = (
    "INSERT INTO tasks (serial, username, script_name, script_config, source, priority,"
    " start_time, rest_seconds, min_interval, max_interval, created_at, max_retry_count,"
    " auto_retry, callback_url, expire_at, timeout, schedule_id, creator, external,"
    " message) VALUES ")
INSERT_ROW = "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
INSERT_ROWS = 40
#: Characters of tasks' JSON the store keeps for pages (a task is about 1 KB: 200 pages
#: of 20), and the largest JSON of one task it keeps; pages bigger than the second are
#: not kept either (Store.task_page_json).
KEPT_TASKS_JSON = 4_000_000
KEPT_JSON_LARGEST = 64 * 1024
#: The newest tasks of a filter whose pages are cut from one read (Store._page_entries):
#: 50 pages of 20, about 80 KB of ids.
PAGE_WINDOW = 1000

TASK_COLUMNS = ("id", "serial", "username", "script_name", "script_config", "status",
                "source", "priority", "start_time", "rest_seconds", "min_interval",
                "max_interval", "created_at", "started_at", "end_time", "progress",
                "message", "error", "result", "retry_count", "max_retry_count", "auto_retry",
                "callback_url", "expire_at", "timeout", "schedule_id", "creator", "external",
                "worker_id", "lease_until", "lease_seconds")


@dataclass
class LiveTask:
    """A task running in this process: what its script reported since the last write."""

    progress: Optional[int] = None
    message: str = ""
    progress_dirty: bool = False
    #: (at, line) not written yet
    lines: List[Tuple[float, str]] = field(default_factory=list)
    #: taken by the transaction under way; back to lines if it rolls back
    in_flight: List[Tuple[float, str]] = field(default_factory=list)


@dataclass
class NewTask:
    """One task to insert; the API builds these and Store.create_tasks writes them."""

    serial: str
    script_name: str
    script_config: Dict[str, Any]
    username: Optional[str] = None
    source: str = "api"
    priority: int = 0
    start_time: float = 0.0
    rest_seconds: float = 0.0
    min_interval: int = 0
    max_interval: int = 0
    max_retry_count: int = 3
    auto_retry: bool = False
    #: material library request of the task's script: {"kind", "count", "tags"}
    materials: Optional[Dict[str, Any]] = None
    callback_url: Optional[str] = None
    expire_at: Optional[float] = None
    timeout: Optional[int] = None
    schedule_id: Optional[int] = None
    creator: Optional[str] = None
    external: bool = False
    message: str = ""


class _CreateJob:
    """One create_tasks call in line: the call that writes it sets ids or error, then
    releases turn (held from the start), as it does for the next call in line."""

    __slots__ = ("tasks", "ids", "error", "done", "turn")

    def __init__(self, tasks: Sequence[NewTask]):
        self.tasks = tasks
        self.ids: Optional[List[int]] = None
        self.error: Optional[BaseException] = None
        self.done = False
        self.turn = threading.Lock()
        self.turn.acquire()


class _Transaction:
    """Store.write()'s transaction as a context manager (a generator-based one cost each
    write as much again in Python as all the rest of it: a task's life has three)."""

    __slots__ = ("store", "one_statement", "joined", "alone", "flushed")

    def __init__(self, store: "Store", one_statement: bool):
        self.store = store
        self.one_statement = one_statement

    def __enter__(self) -> sqlite3.Connection:
        store = self.store
        store._write_lock.acquire()
        self.joined = getattr(store._local, "write_depth", 0)
        if not self.joined:
            self.alone = self.one_statement and not store._live
            self.flushed = store._begin(self.alone)
        return store._writer

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        store = self.store
        if self.joined:                      # the outer write commits or rolls back
            store._write_lock.release()
            return
        store._end(self.alone, self.flushed, failed=kind is not None)
        if isinstance(exc, sqlite3.OperationalError) and _is_disk_full(exc):
            raise StorageFull() from exc


class Store:
    """Tasks, task logs, devices and accounts in one sqlite file.

    WAL lets readers (one connection per thread) run beside the single writer; every
    write goes through ``write()``, which holds one lock around BEGIN IMMEDIATE..COMMIT,
    so nothing ever sees "database is locked". Each change of a task's status is a
    compare-and-set (``WHERE id=? AND status=?``) whose row count says who won.

    The log lines and progress of the tasks this process runs wait in memory (reads show
    them) and go to the file with the next write, whatever it is: a task's end is a
    write, so its log is complete on disk when it stops, fails or is interrupted.
    """

    def __init__(self, path: Path, clock: Callable[[], float] = time.time, *,
                 sole_writer: bool = False):
        self.path = Path(path)
        self.clock = clock
        #: nobody else writes the file (the server holds its lock): what a read found
        #: holds until this store's next commit, so small hot reads are kept (_cached)
        self.sole_writer = sole_writer
        self._init_kept_reads()
        self._write_lock = threading.RLock()
        #: create_tasks calls waiting for the first of them to write them all
        self._creates: "collections.deque[_CreateJob]" = collections.deque()
        self._creates_lock = threading.Lock()
        self._local = threading.local()
        #: what the transaction under way changed (_note) and wrote whole (_note_written)
        self._tx_changes: Dict[str, Dict[Any, None]] = {}
        self._tx_written: Dict[str, Dict[Any, Any]] = {}
        #: every connection with the thread that uses it, so close() can spare live ones
        self._all_connections: List[Tuple[threading.Thread, sqlite3.Connection]] = []
        self._connections_lock = threading.Lock()
        #: called with (kind, keys) after each commit that changed tasks, devices,
        #: accounts or materials: the events hub listens here
        self.on_change: Optional[Callable[[str, List[Any]], None]] = None
        #: called with (kind, {key: row as written}) right after the commit, still under
        #: the write lock, for the rows a transaction wrote whole or read as it left
        #: them (_note_written): the hub needs not read them back, and their events
        #: precede any later commit's (None: nothing listens, nothing is read for it)
        self.on_written: Optional[Callable[[str, Dict[Any, Any]], None]] = None
        #: task id -> LiveTask, for the tasks claimed here and still running
        self._live: Dict[int, LiveTask] = {}
        self._live_lock = threading.Lock()
        #: tasks that left 'running' in the transaction under way (see _watch_changes)
        self._ended: List[int] = []
        #: due_times' answer, and the phones whose pending tasks or rest changed since
        #: (None: all of them); marks of the transaction under way count once committed
        self._due: Dict[str, float] = {}
        self._due_stale: Optional[set] = None
        self._due_marks: List[str] = []
        self._due_version: Optional[int] = None
        self._due_lock = threading.Lock()
        self._writer = self._connect()
        self._writer.execute(f"PRAGMA page_size={PAGE_SIZE}")     # a new file only
        self._writer.execute("PRAGMA journal_mode=WAL")
        #: called with (task id, outcome) after a task ended completed or failed, outside
        #: the transaction: webhooks, account counts and metrics hang here
        self.on_task_end: List[Callable[[int, str], None]] = []
        #: called with (task id, outcome) inside the transaction that ends the task, so
        #: what they write (an account's counts and cooldown) is committed with the end
        #: or not at all: a client that sees the task ended sees its effects too
        self.in_task_end: List[Callable[[int, str], None]] = []
        self.migrate()
        self._adopt_page_size()
        self._watch_changes()

    def _init_kept_reads(self) -> None:
        """What the store keeps in memory for reads, and the counts that say it holds."""
        #: counts this store's commits and the progress its running tasks report in
        #: memory: what _cached keeps is good while it stays the same
        self._changes = 0
        self._changes_lock = threading.Lock()
        #: the same for the API keys alone: every request asks whether there is an
        #: admin key, and a task's write must not make it ask sqlite again
        self._key_changes = 0
        #: the same for the devices' rows coming and going (device_known), counted
        #: after the commit that added or removed one (their marks wait in _device_marks)
        self._device_rows = 0
        self._device_marks: List[str] = []
        self._cache: Dict[Any, Tuple[int, Any]] = {}
        #: task id -> (rev, the task's JSON) for pages of tasks: a page after a commit
        #: builds only the tasks that changed (building one costs sqlite ~30 columns)
        self._task_json: Dict[int, Tuple[int, str]] = {}
        self._task_json_chars = 0
        #: a filter's newest tasks as (id, rev, status), and the commit count they hold
        #: for: pages are cut from them (_page_entries)
        self._windows: Dict[Any, Tuple[int, List[Tuple[int, int, int]], bool]] = {}

    # -- connections ---------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None,
                               check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA foreign_keys=ON")
        # NORMAL is durable across a crash of the program in WAL mode and spares the SD card
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT}")
        conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        with self._connections_lock:
            self._all_connections.append((threading.current_thread(), conn))
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def release_thread(self) -> None:
        """Close this thread's reader: a short-lived thread (a task's) must not leave an
        open connection behind."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            return
        self._local.conn = None
        with self._connections_lock:
            self._all_connections = [(t, c) for t, c in self._all_connections if c is not conn]
        with contextlib.suppress(sqlite3.Error):
            conn.close()

    def _conn(self) -> sqlite3.Connection:
        """Inside write() a read sees the transaction's own changes; elsewhere it is a
        reader's."""
        return self._writer if getattr(self._local, "write_depth", 0) else self._reader()

    def _cached(self, key: Any, compute: Callable[[], Any],
                changes: Optional[int] = None,
                keep: Callable[[Any], bool] = lambda value: True) -> Any:
        """compute(), or its answer kept since this store's last commit (or since the
        count of the changes it depends on, ``changes``, moved). An answer ``keep``
        refuses (too big to hold) is not kept.

        Each query costs a request more than its own time: sqlite3 lets go of the GIL at
        every step, and with the server's threads busy each step waits its turn again.
        Only for a store that is the file's sole writer, and never inside a write (whose
        reads see what may yet roll back). A commit under way while compute() reads
        leaves the answer filed under the older count: it is read again next time.
        """
        if not self.sole_writer or getattr(self._local, "write_depth", 0):
            return compute()
        changes = self._changes if changes is None else changes
        kept = self._cache.get(key)
        if kept is not None and kept[0] == changes:
            return kept[1]
        value = compute()
        if not keep(value):                # too big to hold in memory
            return value
        if len(self._cache) >= 64:        # filters of many kinds (pages up to 256 KB)
            self._cache = {}
        self._cache[key] = (changes, value)
        return value

    def _changed(self) -> None:
        """After a commit or a change of progress in memory: what was kept is stale."""
        with self._changes_lock:         # += from two threads at once could count one
            self._changes += 1

    def query(self, sql: str, params: Sequence[Any] = ()) -> List[sqlite3.Row]:
        return self._conn().execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> Optional[sqlite3.Row]:
        return self._conn().execute(sql, params).fetchone()

    def write(self, one_statement: bool = False) -> "_Transaction":
        """One transaction on the writer connection: all of it is committed, or none.

        A write inside a write (same thread, holding the lock) joins the outer one. If
        COMMIT itself fails (disk full, I/O error) the transaction is rolled back, so
        the connection never stays inside a transaction that later writes would join.
        Every transaction first writes the log lines and progress waiting in memory.
        A caller that runs ``one_statement`` while nothing waits in memory gets no
        BEGIN and COMMIT: sqlite makes a lone statement atomic, and each of the two is a
        step more under the lock (a hand-off between threads under load).
        """
        return _Transaction(self, one_statement)

    def _begin(self, alone: bool) -> bool:
        """Open the outer transaction (the write lock held); True if it wrote log lines."""
        self._local.write_depth = 1
        self._tx_changes, self._tx_written = {}, {}
        if alone:
            return False
        conn = self._writer
        try:
            conn.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            self._left_write()
            raise _storage_error(exc)
        try:
            return bool(self._live) and self._flush_live(conn)
        except BaseException as exc:
            try:
                self._rolled_back()
            finally:
                self._left_write()
            raise _storage_error(exc)

    def _end(self, alone: bool, flushed: bool, failed: bool) -> None:
        """Commit the outer transaction, or roll it back if its body failed (the write
        lock held; let go of here), then tell what it changed."""
        try:
            if failed:
                self._rolled_back()
                return
            try:
                if not alone:
                    self._commit(self._writer, flushed)
            except BaseException as exc:
                self._rolled_back()
                raise _storage_error(exc)
            self._changed()
            if self._ended:
                self._close_ended()
            if self._due_marks:
                self._mark_due_stale()
            if self._device_marks:
                self._count_device_rows()
            if self._tx_written and self.on_written is not None:
                self._tell_written()
        finally:
            changes = self._left_write()
        if changes and not failed:
            self._announce(changes)

    def _rolled_back(self) -> None:
        conn = self._writer
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        self._unflush_live()
        self._due_marks.clear()
        self._device_marks.clear()

    def _left_write(self) -> Dict[str, Dict[Any, None]]:
        """The outer transaction is over: what it changed, and the write lock let go."""
        self._local.write_depth = 0
        changes, self._tx_changes, self._tx_written = self._tx_changes, {}, {}
        self._write_lock.release()
        return changes

    def _note(self, kind: str, *keys: Any) -> None:
        """Remember what this transaction changed; announced only once it commits."""
        bucket = self._tx_changes.setdefault(kind, {})
        for key in keys:
            bucket[key] = None

    def _note_written(self, kind: str, rows: Dict[Any, Any]) -> None:
        """Remember rows this transaction wrote whole, as written (a new task), or read
        as it leaves them (a device, None if it has no row); a key _note'd too (changed
        in the same transaction) is read back instead."""
        self._tx_written.setdefault(kind, {}).update(rows)

    def _tell_written(self) -> None:
        """The rows written whole, told while the lock is held: an event of a later commit
        (a claim of the new task) comes after theirs."""
        written, self._tx_written = self._tx_written, {}
        for kind, rows in written.items():
            rows = {k: v for k, v in rows.items()
                    if k not in self._tx_changes.get(kind, {})}
            try:
                self.on_written(kind, rows)
            except Exception:                     # a listener must not fail a write
                log.exception("change listener failed")

    def _announce(self, changes: Dict[str, Dict[Any, None]]) -> None:
        for kind in ("task", "device", "account", "material") if self.on_change else ():
            if changes.get(kind):
                try:
                    self.on_change(kind, list(changes[kind]))
                except Exception:                 # a listener must not fail a write
                    log.exception("change listener failed")
        for task_id, outcome in changes.get("ended", ()):   # webhooks, accounts, metrics
            self.task_ended(task_id, outcome)
        if changes.get("api_key"):                # committed: has_admin_key asks again
            with self._changes_lock:
                self._key_changes += 1

    # -- log lines and progress in memory ---------------------------------------
    def _watch_changes(self) -> None:
        """Let sqlite tell this process's writer which tasks leave 'running' (a finish, a
        stop, a delete, a recovery: their log lines then go straight to the file) and
        which phones' pending tasks or rest change (due_times recomputes only those)."""
        self._writer.create_function("task_left_running", 1, self._ended.append)
        self._writer.create_function("due_changed", 1, self._due_marks.append)
        self._writer.create_function("device_row_changed", 1, self._device_marks.append)
        triggers = {
            "left_running_update": ("UPDATE OF status ON main.tasks",
                                    f"NEW.status != {RUNNING} AND OLD.status = {RUNNING}",
                                    "task_left_running(OLD.id)"),
            "left_running_delete": ("DELETE ON main.tasks", f"OLD.status = {RUNNING}",
                                    "task_left_running(OLD.id)"),
            # a worker's (external) task is in no phone's due time; a held-back task's
            # waiting message (claim_next's gate) changes none either
            "due_insert": ("INSERT ON main.tasks",
                           f"NEW.status = {PENDING} AND NEW.external = 0",
                           "due_changed(NEW.serial)"),
            "due_update": ("UPDATE OF status, serial, priority, start_time, rest_seconds"
                           " ON main.tasks", f"(OLD.status = {PENDING} OR NEW.status ="
                           f" {PENDING}) AND NEW.external = 0",
                           "due_changed(OLD.serial), due_changed(NEW.serial)"),
            "due_delete": ("DELETE ON main.tasks",
                           f"OLD.status = {PENDING} AND OLD.external = 0",
                           "due_changed(OLD.serial)"),
            "due_rested": ("UPDATE OF last_task_end ON main.devices", "1",
                           "due_changed(NEW.serial)"),
            # a device known or not any more (device_known)
            "device_added": ("INSERT ON main.devices", "1", "device_row_changed(NEW.serial)"),
            "device_renamed": ("UPDATE OF serial ON main.devices", "1",
                               "device_row_changed(NEW.serial)"),
            "device_removed": ("DELETE ON main.devices", "1",
                               "device_row_changed(OLD.serial)"),
        }
        for name, (event, guard, call) in triggers.items():
            self._writer.execute(f"CREATE TEMP TRIGGER IF NOT EXISTS {name} AFTER {event}"
                                 f" WHEN {guard} BEGIN SELECT {call}; END")

    def _count_device_rows(self) -> None:
        if self._device_marks:
            self._device_marks.clear()
            with self._changes_lock:
                self._device_rows += 1

    def _mark_due_stale(self) -> None:
        if not self._due_marks:
            return
        with self._due_lock:
            if self._due_stale is not None:
                self._due_stale.update(self._due_marks)
        self._due_marks.clear()

    def _flush_live(self, conn: sqlite3.Connection) -> bool:
        """Write what the running tasks reported since the last write; True if any."""
        if not self._live:                     # nothing runs here: no lock to take
            return False
        lines, progress = [], []
        with self._live_lock:
            for task_id, live in self._live.items():
                if live.lines:
                    live.in_flight, live.lines = live.lines, []
                    lines += [(task_id, at, line, task_id) for at, line in live.in_flight]
                if live.progress_dirty:
                    live.progress_dirty = False
                    progress.append((live.progress, live.message, task_id))
        if lines:      # a task deleted by another connection loses its lines, not the write
            conn.executemany("INSERT INTO task_log (task_id, at, line) SELECT ?, ?, ?"
                             " WHERE EXISTS (SELECT 1 FROM tasks WHERE id=?)", lines)
        if progress:
            conn.executemany(f"UPDATE tasks SET progress=?, message=? WHERE id=?"
                             f" AND status={RUNNING}", progress)
        return bool(lines)

    def _commit(self, conn: sqlite3.Connection, flushed: bool) -> None:
        if not flushed:
            conn.execute("COMMIT")
            return
        # readers of a log take this lock too: they see a line in memory or in the file,
        # never in both or in neither
        with self._live_lock:
            conn.execute("COMMIT")
            for live in self._live.values():
                live.in_flight = []

    def _unflush_live(self) -> None:
        self._ended.clear()
        with self._live_lock:
            for live in self._live.values():
                if live.in_flight:
                    live.lines[:0], live.in_flight = live.in_flight, []
                    live.progress_dirty = live.progress is not None

    def _close_ended(self) -> None:
        """Tasks that stopped running keep no buffer; a line logged while their end was
        being written is written now."""
        if not self._ended:
            return
        with self._live_lock:
            late = []
            for task_id in self._ended:
                live = self._live.pop(task_id, None)
                late += [(task_id, at, line, task_id) for at, line in (live.lines if live
                                                                        else ())]
            self._ended.clear()
        if late:      # the caller's write is committed: a failure here is not its own
            conn = self._writer
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany("INSERT INTO task_log (task_id, at, line) SELECT ?, ?, ?"
                                 " WHERE EXISTS (SELECT 1 FROM tasks WHERE id=?)", late)
                conn.execute("COMMIT")
                self._changed()
            except sqlite3.Error as exc:
                log.warning("%d log lines of ended tasks not written: %s", len(late), exc)
                if conn.in_transaction:
                    conn.execute("ROLLBACK")

    def _with_live(self, row: Optional[sqlite3.Row]) -> Any:
        """A running task's row with the progress its script reported since the last write."""
        if row is None or row["status"] != RUNNING:
            return row
        with self._live_lock:
            live = self._live.get(row["id"])
            if live is None or live.progress is None:
                return row
            out = dict(row)
            out["progress"], out["message"] = live.progress, live.message
        return out

    def close(self) -> None:
        """Close the writer (under its lock) and the readers of finished threads.

        Closing a connection while another thread runs a query on it can crash the
        interpreter, so a reader whose thread is still alive is left to that thread.
        What running tasks reported since the last write is written first.
        """
        with self._live_lock:
            unwritten = any(live.lines or live.progress_dirty for live in self._live.values())
        if unwritten:
            with contextlib.suppress(sqlite3.Error), self.write():
                pass
        with self._write_lock, self._connections_lock:
            keep = []
            for thread, conn in self._all_connections:
                if conn is self._writer or not thread.is_alive() \
                        or thread is threading.current_thread():
                    with contextlib.suppress(sqlite3.Error):
                        conn.close()
                else:
                    keep.append((thread, conn))
            self._all_connections = keep

    def migrate(self) -> int:
        """Apply the migrations this file has not seen yet; returns the schema version."""
        with self.write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise ConfigError(f"database {self.path} has schema version {version}, newer "
                                  f"than this program ({len(MIGRATIONS)}): upgrade the program")
            if 0 < version < len(MIGRATIONS):     # a million tasks: seconds on a Pi
                log.info("upgrading %s from schema %d to %d (once)", self.path, version,
                         len(MIGRATIONS))
            for number in range(version, len(MIGRATIONS)):
                for statement in _split_sql(MIGRATIONS[number]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={number + 1}")
        return len(MIGRATIONS)

    def _adopt_page_size(self) -> None:
        """Rewrite a small file made with bigger pages (before schema 4) with PAGE_SIZE
        pages, once: every commit writes whole pages. Needs the file to itself (only
        this writer is open yet); if anything else holds it, this waits for next time."""
        conn = self._writer
        if conn.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE \
                or self.path.stat().st_size > ADOPT_PAGE_SIZE_UP_TO:
            return
        log.info("rewriting %s with %d-byte pages (once)", self.path, PAGE_SIZE)
        try:
            conn.execute("PRAGMA journal_mode=DELETE")   # page size is fixed in WAL mode
            conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
            conn.execute("VACUUM")
        except sqlite3.OperationalError as exc:
            log.warning("could not rewrite %s with smaller pages: %s", self.path, exc)
        finally:
            conn.execute("PRAGMA journal_mode=WAL")

    def schema_version(self) -> int:
        return self.query_one("PRAGMA user_version")[0]

    # -- tasks: creation and reading ----------------------------------------
    def create_tasks(self, tasks: Sequence[NewTask]) -> List[int]:
        """Insert all the tasks in one transaction, or none of them.

        Creates that arrive while one is being written wait in line, and the first of
        them writes them all in one statement (group commit): under a stream of POST
        /task each commit, and each step of sqlite (where the server's threads hand the
        interpreter to one another), was a request's time again. Each call still gets
        its own ids or its own error, and only once they are committed. A task that
        asks for library material, a create inside a write, and a create that finds
        nobody in line and the writer free are written at once.
        """
        if getattr(self._local, "write_depth", 0) or any(t.materials for t in tasks):
            return self._insert_tasks(tasks)
        # nobody in line and the writer free: no line to form (a create that comes
        # meanwhile queues, and its first writes the line once this one is done)
        if not self._creates and self._write_lock.acquire(blocking=False):
            try:
                return self._insert_tasks(tasks)
            finally:
                self._write_lock.release()
        job = _CreateJob(tasks)
        with self._creates_lock:
            self._creates.append(job)
            first = len(self._creates) == 1
        if not first:
            job.turn.acquire()               # until written, or first in line
        if not job.done:
            self._write_creates()
        if job.error is not None:
            raise job.error
        return job.ids

    def _write_creates(self) -> None:
        """The first in line writes the creates waiting behind it, then wakes them and
        the next in line. It takes them once another write has let go of the lock (more
        come meanwhile), but does not keep the lock: its write's events are told after
        the write lets go, as any write's."""
        with self._write_lock, self._creates_lock:
            batch = list(self._creates)
        try:
            self._write_batch(batch)
        finally:
            with self._creates_lock:
                for _ in batch:
                    self._creates.popleft()
                after = self._creates[0] if self._creates else None
            for job in batch:
                if job.ids is None and job.error is None:        # the writer was stopped
                    job.error = Unavailable("the task write was interrupted")
                job.done = True
        for job in batch[1:] + ([after] if after else []):
            job.turn.release()

    def _write_batch(self, batch: List["_CreateJob"]) -> None:
        """Every call's tasks in one write; its ids, or its error, on each call."""
        try:
            ids = self._insert_tasks([t for job in batch for t in job.tasks])
        except Exception as exc:
            # a statement that failed wrote nothing: if one call's tasks broke it (a
            # constraint, a value sqlite cannot bind), each call is tried alone
            if len(batch) == 1 or isinstance(exc, (sqlite3.OperationalError, LiteError)):
                for job in batch:
                    job.error = exc
                return
            for job in batch:
                try:
                    job.ids = self._insert_tasks(job.tasks)
                except Exception as alone:
                    job.error = alone
            return
        for job in batch:
            job.ids, ids = ids[:len(job.tasks)], ids[len(job.tasks):]

    def _insert_tasks(self, tasks: Sequence[NewTask]) -> List[int]:
        """Write tasks now, in one transaction; those without material in statements of
        many rows (one step of sqlite each). A task that asks for library material
        reserves it here, in the same transaction, so two tasks never get the same
        file; not enough of it refuses the whole request."""
        plain = not any(t.materials for t in tasks)
        ids: List[int] = []
        with self.write(one_statement=plain and len(tasks) <= INSERT_ROWS) as conn:
            now = self.clock()                   # under the lock: ids grow with time
            rows = [(t.serial, t.username, t.script_name, _dump_json(t.script_config),
                     t.source, t.priority, t.start_time or now, t.rest_seconds,
                     t.min_interval, t.max_interval, now, t.max_retry_count,
                     int(t.auto_retry), t.callback_url, t.expire_at, t.timeout,
                     t.schedule_id, t.creator, int(t.external), t.message) for t in tasks]
            for start in range(0, len(rows), INSERT_ROWS if plain else 1):
                chunk = rows[start:start + (INSERT_ROWS if plain else 1)]
                cur = conn.execute(INSERT_TASKS_SQL + ",".join([INSERT_ROW] * len(chunk)),
                                   [value for row in chunk for value in row])
                # AUTOINCREMENT gives a statement's rows consecutive ids
                ids += range(cur.lastrowid - len(chunk) + 1, cur.lastrowid + 1)
                if tasks[start].materials:
                    config = self._reserve_materials(conn, cur.lastrowid, tasks[start])
                    conn.execute("UPDATE tasks SET script_config=? WHERE id=?",
                                 (_dump_json(config), cur.lastrowid))
            if self.on_written is not None:     # nobody to tell: nothing to read
                self._note_created(tasks, ids)
        return ids

    def _note_created(self, tasks: Sequence[NewTask], ids: Sequence[int]) -> None:
        """The new tasks' events as written (the other fields are the columns'
        defaults), and their phones' rows as this write leaves them, read by the writer:
        a reader would read again the pages the commit changed (each a step of sqlite)."""
        self._note_written("task", {task_id: {
            "id": task_id, "status": PENDING, "progress": 0, "message": t.message,
            "serial": t.serial, "username": t.username, "error": "",
            "script_name": t.script_name} for task_id, t in zip(ids, tasks)})
        serials = dict.fromkeys(t.serial for t in tasks)
        self._note_written("device", {serial: self.device_summary(serial)
                                      for serial in serials})

    def get_task(self, task_id: int) -> Optional[sqlite3.Row]:
        return self._with_live(self.query_one("SELECT * FROM tasks WHERE id=?", (task_id,)))

    def list_tasks(self, **filters: Any) -> Tuple[List[Any], int]:
        """Newest first, filtered and paginated; returns (rows, total matching).
        The filters are _page_query's."""
        found = self._page_query(**filters)
        if found is None:
            return [], 0
        sql, params, total = found
        return [self._with_live(row) for row in self.query(sql, params)], total

    def task_page_json(self, **filters: Any) -> Tuple[str, int]:
        """list_tasks' page as the API's JSON array of tasks (task_to_json's), read by
        sqlite in a step or two; returns (JSON text, total matching).

        Each row read is a step, and sqlite3 lets go of the GIL at every step: under
        load every release hands the interpreter to another thread, and a page read row
        by row, decoded and encoded again cost 3-4 times a bare request. So sqlite joins
        the rows into one text, and each task's JSON, once built, is kept at its
        revision (rev): a page after a commit builds again only the tasks it changed.
        A page asked for again before any change is the one kept (_cached).
        """
        key = tuple((name, tuple(value) if isinstance(value, list) else value)
                    for name, value in sorted(filters.items()))
        return self._cached(("page",) + key, lambda: self._task_page_json(**filters),
                            keep=lambda page: len(page[0]) <= KEPT_JSON_LARGEST * 4)

    def _task_page_json(self, **filters: Any) -> Tuple[str, int]:
        """The page from its tasks' ids, revisions and states (_page_entries), and the
        JSON of those not kept at their revision, built in one more step. A task
        changed between the two shows its newer state; one deleted is left out."""
        found = self._page_query(**filters, columns="id, rev, status")
        if found is None:
            return "[]", 0
        sql, params, total = found
        page = self._page_entries(sql, params)
        kept = self._task_json
        pieces = {task_id: kept[task_id][1] for task_id, rev, status in page
                  if status != RUNNING and kept.get(task_id, (None,))[0] == rev}
        missing = [task_id for task_id, _rev, _status in page if task_id not in pieces]
        if missing:
            pieces.update(self._tasks_json(missing))
        return "[" + ",".join(pieces[task_id] for task_id, _rev, _status in page
                              if task_id in pieces) + "]", total

    def _page_entries(self, sql: str, params: List[Any]) -> List[Tuple[int, int, int]]:
        """(id, rev, status) of a page's tasks, in one step of sqlite.

        Within the newest PAGE_WINDOW tasks of a filter they come from a window of them
        read once per commit, twice as deep as the page asked for: a client going
        through the pages after a change reads sqlite once, not once a page (each read
        a hand-off of the interpreter under load, see task_page_json)."""
        *where, size, offset = params
        end = offset + size
        if not self.sole_writer or getattr(self._local, "write_depth", 0) \
                or end > PAGE_WINDOW:
            return self._listed(sql, params)
        key = (sql, *where)
        changes = self._changes
        kept = self._windows.get(key)
        if kept is None or kept[0] != changes or (len(kept[1]) < end and not kept[2]):
            rows = min(PAGE_WINDOW, max(2 * end, 100))
            window = self._listed(sql, where + [rows, 0])
            kept = (changes, window, len(window) < rows)     # all there is, if short
            if len(self._windows) >= 16:        # kinds of filters (_cache: their pages)
                self._windows = {}
            self._windows[key] = kept
        return kept[1][offset:end]

    def _listed(self, sql: str, params: List[Any]) -> List[Tuple[int, int, int]]:
        listed = self.query_one(f"SELECT group_concat(id || ' ' || rev || ' ' || status)"
                                f" FROM ({sql})", params)[0]
        return [tuple(map(int, entry.split(" "))) for entry in listed.split(",")] \
            if listed else []

    def _tasks_json(self, ids: List[int]) -> Dict[int, str]:
        """These tasks' JSON (task_to_json's) built by sqlite in one step, kept at their
        revision unless running (whose progress waits in memory, _with_live). A task
        with a time sqlite cannot show as Python does (see TASK_TIMES_EXACT_SQL) is
        built in Python."""
        with self._live_lock:                  # progress reported since the last write
            live = {str(task_id): [t.progress, t.message] for task_id, t in
                    self._live.items() if t.progress is not None}
        marks = ",".join("?" * len(ids))
        text = self.query_one(
            f"SELECT group_concat(id || ' ' || rev || ' ' || status || ' ' ||"
            f" ({TASK_TIMES_EXACT_SQL}) || ' ' || {TASK_JSON_SQL}, char(10))"
            f" FROM tasks WHERE id IN ({marks})", [_dump_json(live)] + ids)[0]
        built, inexact = {}, []
        for line in (text or "").split("\n"):      # JSON text holds no raw newline
            task_id, rev, status, exact, task_json = line.split(" ", 4)
            if exact != "1":
                inexact.append(int(task_id))
                continue
            built[int(task_id)] = task_json
            if int(status) != RUNNING:
                self._keep_task_json(int(task_id), int(rev), task_json)
        if inexact:
            marks = ",".join("?" * len(inexact))
            rows = self.query(f"SELECT * FROM tasks WHERE id IN ({marks})", inexact)
            built.update((row["id"], json.dumps(task_to_json(self._with_live(row)),
                                                ensure_ascii=False)) for row in rows)
        return built

    def _keep_task_json(self, task_id: int, rev: int, task_json: str) -> None:
        """Kept up to KEPT_TASKS_JSON characters in all; a task bigger than a
        KEPT_JSON_LARGEST (a config near the 1 MB body limit) is built each time. Never
        inside a write, whose reads see what may yet roll back."""
        if len(task_json) > KEPT_JSON_LARGEST or getattr(self._local, "write_depth", 0):
            return
        if self._task_json_chars + len(task_json) > KEPT_TASKS_JSON:
            self._task_json, self._task_json_chars = {}, 0     # a rebinding: no lock
        self._task_json[task_id] = (rev, task_json)
        self._task_json_chars += len(task_json)

    def _page_query(self, *, statuses: Sequence[int] = (), serial: Optional[str] = None,
                    script_name: Optional[str] = None, source: Optional[str] = None,
                    username: Optional[str] = None, created_from: Optional[float] = None,
                    created_to: Optional[float] = None, page: int = 1,
                    page_size: int = 20, creator: Optional[str] = None,
                    columns: str = "*") -> Optional[Tuple[str, List[Any], int]]:
        """The query of a page of tasks, newest first: (SQL, params, total matching), or
        None when no task can match.

        The total comes from task_counts unless a time range or a creator (not counted
        there) is asked for; a time range is first turned into the range of ids created
        in it (ids grow with time), so that the page is read newest first along the ids
        instead of sorted.
        """
        # a status is written into the SQL (validated ints) so a partial index can serve it
        statuses = sorted({int(status) for status in statuses})
        where = [f"status IN ({','.join(map(str, statuses))})"] if len(statuses) > 1 else \
            [f"status = {statuses[0]}"] if statuses else []
        params: List[Any] = []
        for column, value in (("serial", serial), ("script_name", script_name),
                              ("source", source), ("username", username),
                              ("creator", creator)):
            if value is not None:          # usernames are one account whatever the case
                where.append(f"{column} = ?" + (" COLLATE NOCASE" if column == "username"
                                                  else ""))
                params.append(value)
        total = None if username == "" or creator is not None \
            else self._counted(where, params)
        if created_from is not None or created_to is not None:
            low = -math.inf if created_from is None else created_from
            high = math.inf if created_to is None else created_to
            count, first, last = self._created_between(low, high)
            if not count:
                return None
            where += ["id BETWEEN ? AND ?", "created_at BETWEEN ? AND ?"]
            params += [first, last, low, high]
            total = count if len(where) == 2 else None
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        table = "tasks " + self._status_index(statuses, total)
        if total is None:
            total = self.query_one(f"SELECT COUNT(*) FROM {table} {clause}", params)[0]
        return (f"SELECT {columns} FROM {table} {clause} ORDER BY id DESC LIMIT ? OFFSET ?",
                params + [page_size, (page - 1) * page_size], total)

    def _created_between(self, low: float, high: float) -> Tuple[int, int, int]:
        """How many tasks were created in [low, high], and bounds of their ids: the
        whole hours inside from task_hours, the partial hours at the ends counted in
        tasks_created (a day: 24 rows and at most two hours' entries, not the day's)."""
        if low > high:
            return 0, 0, 0
        # floats: sqlite's integers end at 2**63, a timestamp asked for need not
        hour_low = float(math.floor(low / 3600)) if low > -math.inf else None
        hour_high = float(math.floor(high / 3600)) if high < math.inf else None
        count_sql = ("SELECT COUNT(*), MIN(id), MAX(id) FROM tasks INDEXED BY tasks_created"
                     " WHERE created_at BETWEEN ? AND ? AND CAST(created_at / 3600 AS"
                     " INTEGER) BETWEEN ? AND ?")
        if hour_low is not None and hour_low == hour_high:
            return self.query_one(count_sql, (low, high, hour_low, hour_low))
        inside = " AND ".join(["n > 0"] + ["hour > ?"] * (hour_low is not None)
                              + ["hour < ?"] * (hour_high is not None))
        parts = [self.query_one(f"SELECT COALESCE(SUM(n), 0), MIN(first_id), MAX(last_id)"
                                f" FROM task_hours WHERE {inside}",
                                [h for h in (hour_low, hour_high) if h is not None])]
        if hour_low is not None:
            parts.append(self.query_one(count_sql, (low, (hour_low + 1) * 3600,
                                                    hour_low, hour_low)))
        if hour_high is not None:
            parts.append(self.query_one(count_sql, (hour_high * 3600, high,
                                                    hour_high, hour_high)))
        parts = [part for part in parts if part[0]]
        return (sum(part[0] for part in parts), min((part[1] for part in parts), default=0),
                max((part[2] for part in parts), default=0))

    @staticmethod
    def _status_index(statuses: List[int], total: Optional[int]) -> str:
        """The partial index holding just the tasks of the one status asked for: else the
        planner walks all ids from the newest, past every task of the other states.
        Pending tasks are read from tasks_due (and sorted) when there are few."""
        if len(statuses) != 1:
            return ""
        if statuses[0] == PENDING:
            return "INDEXED BY tasks_due" if total is not None and total <= 2000 else ""
        return {RUNNING: "INDEXED BY tasks_one_running_per_device",
                COMPLETED: "INDEXED BY tasks_completed",
                FAILED: "INDEXED BY tasks_failed"}[statuses[0]]

    def _counted(self, where: List[str], params: List[Any]) -> Optional[int]:
        """How many tasks match these equality filters, from task_counts."""
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        return self._cached(("counted", clause, *params), lambda: self.query_one(
            f"SELECT COALESCE(SUM(n), 0) FROM task_counts {clause}", params)[0])

    def task_log(self, task_id: int) -> List[Any]:
        """The task's log lines (rows with 'at' and 'line'), those still in memory last."""
        with self._live_lock:
            rows = self.query("SELECT at, line FROM task_log WHERE task_id=? ORDER BY id",
                              (task_id,))
            live = self._live.get(task_id)
            if live is not None:
                rows += [{"at": at, "line": line} for at, line in live.in_flight + live.lines]
        return rows

    def stats(self) -> Dict[str, int]:
        counts = self._cached("stats", lambda: dict(self.query(
            "SELECT status, SUM(n) FROM task_counts GROUP BY status")))
        out = {"total": sum(counts.values())}
        for status, name in STATUS_TEXT.items():
            out[name] = counts.get(status, 0)
        return out

    # -- tasks: what runners write ------------------------------------------
    def add_log(self, task_id: int, line: str) -> None:
        """A running task's line waits in memory for the next write; another is written,
        unless the task was deleted meanwhile (its script may still be winding down)."""
        at = self.clock()
        with self._live_lock:
            live = self._live.get(task_id)
            if live is not None:
                live.lines.append((at, line))
                if len(live.lines) < MAX_BUFFERED_LINES:
                    return
        with self.write() as conn:        # flushes the buffered lines, or writes this one
            if live is None:
                conn.execute("INSERT INTO task_log (task_id, at, line) SELECT ?, ?, ?"
                             " WHERE EXISTS (SELECT 1 FROM tasks WHERE id=?)",
                             (task_id, at, line, task_id))

    def set_progress(self, task_id: int, percent: int, message: str) -> None:
        """A running task's progress waits in memory for the next write (reads see it)."""
        with self._live_lock:
            live = self._live.get(task_id)
            if live is not None:
                live.progress, live.message, live.progress_dirty = percent, message, True
        if live is not None:
            self._changed()                               # pages show it
            self._announce({"task": {task_id: None}})     # the farm view shows it live
            return
        with self.write() as conn:
            conn.execute(f"UPDATE tasks SET progress=?, message=? WHERE id=? AND status={RUNNING}",
                         (percent, message, task_id))
            self._note("task", task_id)

    # -- tasks: the lifecycle, each step a compare-and-set -------------------
    def claim_next(self, serial: str, now: float,
                   gate: Optional[Callable[[sqlite3.Row, float], Optional[str]]] = None
                   ) -> Optional[sqlite3.Row]:
        """Mark the device's best due task running and return it (None if none is due).

        Due means the start time has come and the device has rested the task's interval
        since its previous task ended. Among due tasks: priority, then start time, then id.
        ``gate(row, now)`` may hold a task back with a reason (its account's limits):
        the reason becomes its message and the next task in order gets its chance.
        The claimed task's log lines and progress then wait in memory until the next
        write. A worker's (external) task is never a phone's to claim.
        """
        with self.write() as conn:
            candidates = conn.execute(
                "SELECT t.id, t.serial, t.username, t.script_name, t.message"
                " FROM tasks t INDEXED BY tasks_due LEFT JOIN devices d ON d.serial = t.serial"
                f" WHERE t.serial=? AND t.external = 0 AND t.status={PENDING}"
                " AND t.start_time <= ? AND COALESCE(d.last_task_end, 0) + t.rest_seconds <= ?"
                " ORDER BY t.priority DESC, t.start_time, t.id" + ("" if gate else " LIMIT 1"),
                (serial, now, now))
            row = self._admitted(conn, candidates, gate, now)
            if row is None:
                return None
            try:
                claimed = self._mark_running(conn, row[0], now)
            except sqlite3.IntegrityError:   # the device already has a running task
                log.error("device %s already has a running task in the store", serial)
                return None
            if claimed is None:
                return None
            self._note("task", claimed["id"])
            self._note("device", serial)
        with self._live_lock:
            self._live[claimed["id"]] = LiveTask()
        return claimed

    @staticmethod
    def _admitted(conn: sqlite3.Connection, candidates: sqlite3.Cursor,
                  gate: Optional[Callable[[sqlite3.Row, float], Optional[str]]],
                  now: float) -> Optional[sqlite3.Row]:
        """The first candidate the gate lets through, read lazily (a phone may have many
        pending tasks); those held back get the reason as their message."""
        row, verdicts, held = None, {}, []       # one verdict per account and script
        for candidate in candidates:
            key = (candidate["username"], candidate["script_name"])
            if key not in verdicts:
                verdicts[key] = gate(candidate, now) if gate is not None else None
            why = verdicts[key]
            if why is None:
                row = candidate
                break
            if candidate["message"] != why:
                log.debug("task %s holds back: %s", candidate["id"], why)
                held.append((why, candidate["id"]))
        candidates.close()    # the read ends here, before the writes that follow
        if held:
            conn.executemany(f"UPDATE tasks SET message=? WHERE id=? AND status={PENDING}",
                             held)
        return row

    @staticmethod
    def _mark_running(conn: sqlite3.Connection, task_id: int,
                      now: float) -> Optional[sqlite3.Row]:
        """The compare-and-set pending -> running; the task's new row, or None."""
        # it moves rev itself: RETURNING shows the row before triggers run (tasks_rev)
        sql = (f"UPDATE tasks SET status={RUNNING}, started_at=?, progress=0, message='',"
               f" error='', rev=rev + 1 WHERE id=? AND status={PENDING}")
        if SQLITE_HAS_RETURNING:        # one statement instead of two
            rows = conn.execute(sql + " RETURNING *", (now, task_id)).fetchall()
            return rows[0] if rows else None
        if conn.execute(sql, (now, task_id)).rowcount != 1:
            return None
        return conn.execute("SELECT * FROM tasks WHERE id=?", (task_id,)).fetchone()

    def due_times(self) -> Dict[str, float]:
        """serial -> when its earliest pending task becomes due (start time and rest).

        The scheduler asks at every wake-up; only the phones whose pending tasks or rest
        changed since the last answer are looked up again (all of them after a write by
        another connection). Per phone, from the partial index tasks_due: in each
        priority, the tasks in start-time order until a start time is past the best due
        time found; usually one or two index rows. Workers' (external) tasks are
        no phone's: they are left out.
        """
        with self._write_lock:       # changes only when another connection committed
            version = self._writer.execute("PRAGMA data_version").fetchone()[0]
        with self._due_lock:
            if version != self._due_version:
                self._due_version, self._due_stale = version, None
            stale, self._due_stale = self._due_stale, set()
            if stale is None:                # all phones: their rests in one query
                self._due = {}
                stale = [r[0] for r in self.query(
                    f"SELECT serial FROM task_counts WHERE status={PENDING}"
                    " GROUP BY serial HAVING SUM(n) > 0")]
                rests = dict(self.query("SELECT serial, last_task_end FROM devices"))
            else:
                rests = {serial: self.query_one("SELECT last_task_end FROM devices WHERE"
                                                " serial=?", (serial,)) for serial in stale}
                rests = {serial: row[0] for serial, row in rests.items() if row}
            for serial in stale:
                due = self._due_time(serial, rests.get(serial) or 0)
                if due < math.inf:
                    self._due[serial] = due
                else:
                    self._due.pop(serial, None)
            return dict(self._due)

    def _due_time(self, serial: str, rested_from: float) -> float:
        """min(max(start, rested_from + rest)) over the phone's pending tasks."""
        best, below = math.inf, math.inf
        sql = ("SELECT priority, start_time, rest_seconds FROM tasks INDEXED BY tasks_due"
               f" WHERE serial=? AND external = 0 AND status={PENDING} AND priority < ?"
               " ORDER BY priority DESC, start_time")
        while True:
            for priority, start, rest in self._reader().execute(sql, (serial, below)):
                if max(start, rested_from) >= best:   # the rest of this priority cannot
                    below = priority                  # be due sooner
                    break
                best = min(best, max(start, rested_from + rest))
            else:
                return best

    def running_count(self) -> int:
        return self.query_one(f"SELECT COUNT(*) FROM tasks WHERE status={RUNNING}")[0]

    # -- tasks: clocks of their own (SPEC 8.3, 8.4) ----------------------------------
    def expire_pending(self, now: float) -> List[int]:
        """Pending tasks not started by their expiry end failed "expired", not retried."""
        if self.query_one(f"SELECT 1 FROM tasks WHERE status={PENDING} AND expire_at <= ?"
                          " LIMIT 1", (now,)) is None:
            return []                          # every scheduler round: no write for nothing
        with self.write() as conn:
            ids = [r[0] for r in conn.execute(
                f"SELECT id FROM tasks WHERE status={PENDING} AND expire_at <= ?", (now,))]
            for task_id in ids:
                conn.execute(f"UPDATE tasks SET status={FAILED}, end_time=?, error='expired',"
                             f" message='expired' WHERE id=? AND status={PENDING}",
                             (now, task_id))
                self._release_materials(conn, task_id)
                self._ending(conn, task_id, "failed")
            self._note_tasks(conn, ids)
        return ids

    def timed_out(self, now: float) -> List[int]:
        """Running tasks whose timeout has passed."""
        return [r[0] for r in self.query(
            f"SELECT id FROM tasks WHERE status={RUNNING} AND timeout IS NOT NULL"
            " AND started_at + timeout <= ?", (now,))]

    def next_deadline(self, now: float) -> Optional[float]:
        """The next moment a task expires, times out or loses its worker's lease."""
        return self.query_one(
            "SELECT MIN(at) FROM ("
            f" SELECT MIN(expire_at) AS at FROM tasks WHERE status={PENDING} AND expire_at > ?"
            f" UNION ALL SELECT MIN(started_at + timeout) FROM tasks WHERE status={RUNNING}"
            "  AND external = 0 AND started_at + timeout > ?"
            f" UNION ALL SELECT MIN(lease_until) FROM tasks WHERE status={RUNNING}"
            "  AND lease_until > ?)", (now, now, now))[0]

    # -- tasks: external workers (SPEC 8.4) ------------------------------------------
    def worker_claim(self, worker_id: str, script_names: Sequence[str], lease: float,
                     now: float) -> Optional[sqlite3.Row]:
        """The next due pending external task of those scripts, now running for the
        worker; the compare-and-set makes one winner when workers race."""
        marks = ",".join("?" * len(script_names))
        with self.write() as conn:
            for row in conn.execute(
                    f"SELECT id FROM tasks WHERE status={PENDING} AND external = 1"
                    f" AND script_name IN ({marks}) AND start_time <= ?"
                    " ORDER BY priority DESC, start_time, id LIMIT 20",
                    list(script_names) + [now]).fetchall():
                cur = conn.execute(
                    f"UPDATE tasks SET status={RUNNING}, started_at=?, progress=0, message='',"
                    f" error='', worker_id=?, lease_until=?, lease_seconds=?"
                    f" WHERE id=? AND status={PENDING}",
                    (now, worker_id, now + lease, lease, row["id"]))
                if cur.rowcount == 1:
                    conn.execute("INSERT INTO task_log (task_id, at, line) VALUES (?,?,?)",
                                 (row["id"], now, f"taken by worker {worker_id}"))
                    self._note_tasks(conn, [row["id"]])
                    return conn.execute("SELECT * FROM tasks WHERE id=?",
                                        (row["id"],)).fetchone()
        return None

    def worker_progress(self, task_id: int, worker_id: str, percent: int, message: str,
                        now: float) -> bool:
        """Progress from the worker holding the task; renews its lease for as long."""
        with self.write() as conn:
            cur = conn.execute(
                "UPDATE tasks SET progress=?, message=?, lease_until=? + lease_seconds"
                f" WHERE id=? AND status={RUNNING} AND worker_id=?",
                (percent, message, now, task_id, worker_id))
            if cur.rowcount == 1:
                self._note("task", task_id)
            if cur.rowcount == 1 and message:
                conn.execute("INSERT INTO task_log (task_id, at, line) VALUES (?,?,?)",
                             (task_id, now, f"{percent}% {message}"))
            return cur.rowcount == 1

    def expire_leases(self, now: float) -> List[Tuple[int, str]]:
        """Leases run out: back to pending counting a retry, or failed at the limit."""
        ended: List[Tuple[int, str]] = []
        if self.query_one(f"SELECT 1 FROM tasks WHERE status={RUNNING} AND lease_until <= ?"
                          " LIMIT 1", (now,)) is None:
            return ended
        with self.write() as conn:
            rows = conn.execute(
                f"SELECT * FROM tasks WHERE status={RUNNING} AND lease_until <= ?",
                (now,)).fetchall()
            for row in rows:
                if row["retry_count"] < row["max_retry_count"]:
                    conn.execute(
                        f"UPDATE tasks SET status={PENDING}, retry_count=retry_count+1,"
                        " started_at=NULL, worker_id=NULL, lease_until=NULL,"
                        f" message=? WHERE id=? AND status={RUNNING}",
                        (f"worker {row['worker_id']} lease expired; waiting for a worker",
                         row["id"]))
                    ended.append((row["id"], "pending"))
                else:
                    conn.execute(
                        f"UPDATE tasks SET status={FAILED}, end_time=?, error=?, message=?,"
                        f" lease_until=NULL WHERE id=? AND status={RUNNING}",
                        (now, LEASE_EXPIRED, ended_message(LEASE_EXPIRED), row["id"]))
                    ended.append((row["id"], "failed"))
                conn.execute("INSERT INTO task_log (task_id, at, line) VALUES (?,?,?)",
                             (row["id"], now, f"{LEASE_EXPIRED} ({row['worker_id']})"))
            for task_id, outcome in ended:
                self._ending(conn, task_id, outcome)
                if outcome == "failed":
                    self._release_materials(conn, task_id)
            self._note_tasks(conn, [task_id for task_id, _ in ended])
        return ended

    # -- tasks: how a running task ends (each move calls the task-end hooks) ------------
    @staticmethod
    def _update_running(conn: sqlite3.Connection, sql: str,
                        params: Sequence[Any]) -> Optional[str]:
        """Run the compare-and-set ``sql`` (its last parameter the task's id, its WHERE
        ``id=? AND status=running``); the task's phone, or None if it was not running."""
        if SQLITE_HAS_RETURNING:
            rows = conn.execute(sql + " RETURNING serial", params).fetchall()
            return rows[0][0] if rows else None
        row = conn.execute(f"SELECT serial FROM tasks WHERE id=? AND status={RUNNING}",
                           (params[-1],)).fetchone()
        if row is not None:
            conn.execute(sql, params)
        return row and row[0]

    def _rested(self, conn: sqlite3.Connection, task_id: int, serial: str,
                now: float) -> None:
        """A task of the phone's ended now: its rest interval starts."""
        self._note("task", task_id)
        self._note("device", serial)
        conn.execute("UPDATE devices SET last_task_end=?, last_seen=? WHERE serial=?",
                     (now, now, serial))

    def complete(self, task_id: int, result: Any = None) -> bool:
        """running -> completed, with the script's result."""
        now = self.clock()
        with self.write() as conn:
            # the compare-and-set says which phone rests, with no read of the row first;
            # every task ends here or in fail(): it moves rev itself
            serial = self._update_running(
                conn, f"UPDATE tasks SET status={COMPLETED}, end_time=?, progress=100,"
                " error='', result=?, message='completed', lease_until=NULL, rev=rev + 1"
                f" WHERE id=? AND status={RUNNING}", (now, _dump_json(result), task_id))
            if serial is None:
                return False
            self._rested(conn, task_id, serial, now)
            self._use_materials(conn, task_id, now)
            self._ending(conn, task_id, "completed")
            return True

    def fail(self, task_id: int, error: str, result: Any = None) -> bool:
        """running -> failed, for good (no auto-retry); what it got so far is its result."""
        now = self.clock()
        error = error or "failed"
        with self.write() as conn:
            serial = self._update_running(
                conn, f"UPDATE tasks SET status={FAILED}, end_time=?, error=?, result=?,"
                " message=?, lease_until=NULL, rev=rev + 1"
                f" WHERE id=? AND status={RUNNING}",
                (now, error, _dump_json(result), ended_message(error), task_id))
            if serial is None:
                return False
            self._rested(conn, task_id, serial, now)
            self._release_materials(conn, task_id)
            self._ending(conn, task_id, "failed")
            return True

    def stop(self, task_id: int, error: str = STOPPED_BY_USER, result: Any = None) -> bool:
        """running -> failed because the user (or a shutdown) stopped it: never retried;
        the partial result is kept."""
        return self.fail(task_id, error, result)

    def back_to_pending(self, task_id: int, error: str, rng: random.Random = random,
                        auto_retry: Optional[bool] = None) -> bool:
        """running -> pending again after a random 5-60 s: an auto-retry of a failure.

        False if the task is not running or its auto-retry is off or used up.
        ``auto_retry`` overrides the task's own flag (an external worker's allow_retry).
        """
        now = self.clock()
        with self.write() as conn:
            row = conn.execute("SELECT * FROM tasks WHERE id=?", (task_id,)).fetchone()
            wants = row is not None and (row["auto_retry"] if auto_retry is None
                                         else auto_retry)
            if not wants or row["retry_count"] >= row["max_retry_count"] \
                    or row["status"] != RUNNING:
                return False
            self._rested(conn, task_id, row["serial"], now)
            delay = rng.uniform(5, 60)
            conn.execute(
                f"UPDATE tasks SET status={PENDING}, retry_count=retry_count+1, error='',"
                " start_time=?, started_at=NULL, end_time=NULL, result=NULL,"
                f" worker_id=NULL, lease_until=NULL, message=? WHERE id=? AND status={RUNNING}",
                (now + delay, f"retrying in {delay:.0f} s after: {error}", task_id))
            conn.execute("INSERT INTO task_log (task_id, at, line) VALUES (?,?,?)",
                         (task_id, now, f"failed: {error}; auto-retry "
                          f"{row['retry_count'] + 1}/{row['max_retry_count']} in "
                          f"{delay:.0f} s"))
            return True

    def finish(self, task_id: int, *, ok: bool, error: str = "", result: Any = None,
               allow_auto_retry: bool = True, rng: random.Random = random,
               auto_retry: Optional[bool] = None) -> str:
        """End a running task by the move that fits; returns 'completed', 'failed',
        'retrying' or 'gone' (it was not running). All in one transaction; the task-end
        hooks run once it is committed."""
        if ok:                               # complete() is one transaction itself
            return "completed" if self.complete(task_id, result) else "gone"
        with self.write():
            if allow_auto_retry and self.back_to_pending(task_id, error, rng, auto_retry):
                return "retrying"
            return "failed" if self.fail(task_id, error, result) else "gone"

    def _ending(self, conn: sqlite3.Connection, task_id: int, outcome: str) -> None:
        """A task ends for good in this transaction: the in-transaction listeners write
        beside it (a listener that fails takes back only its own writes), the others
        hear of it once it is committed."""
        self._note("ended", (task_id, outcome))
        for listener in self.in_task_end:
            conn.execute("SAVEPOINT task_end")
            try:
                listener(task_id, outcome)
            except Exception:
                conn.execute("ROLLBACK TO task_end")
                log.exception("task %s: a task-end listener failed", task_id)
            conn.execute("RELEASE task_end")

    def task_ended(self, task_id: int, outcome: str) -> None:
        """Tell the listeners that a task ended for good (completed or failed)."""
        if outcome not in ("completed", "failed"):
            return
        for listener in self.on_task_end:
            try:
                listener(task_id, outcome)
            except Exception:
                log.exception("task %s: a task-end listener failed", task_id)


    def cancel_pending(self, task_id: int) -> bool:
        """A pending task stopped by the user ends failed without ever running."""
        with self.write() as conn:
            cur = conn.execute(f"UPDATE tasks SET status={FAILED}, end_time=?, error=?,"
                               f" message=? WHERE id=? AND status={PENDING}",
                               (self.clock(), STOPPED_BY_USER, STOPPED_BY_USER, task_id))
            if cur.rowcount == 1:
                self._note_tasks(conn, [task_id])
                self._release_materials(conn, task_id)
                self._ending(conn, task_id, "failed")
            return cur.rowcount == 1

    def retry(self, task_id: int) -> bool:
        """A failed task under its retry limit goes back to pending (compare-and-set)."""
        with self.write() as conn:
            cur = conn.execute(
                f"UPDATE tasks SET status={PENDING}, retry_count=retry_count+1, error='',"
                " progress=0, message='', result=NULL, started_at=NULL, end_time=NULL"
                f" WHERE id=? AND status={FAILED} AND retry_count < max_retry_count",
                (task_id,))
            if cur.rowcount == 1:
                self._note_tasks(conn, [task_id])
                self._rereserve_materials(conn, task_id)
            return cur.rowcount == 1

    def retry_all(self) -> List[int]:
        """Every failed task under its limit, but those the user stopped (SPEC 8.3)."""
        with self.write() as conn:
            ids = [r[0] for r in conn.execute(
                f"SELECT id FROM tasks WHERE status={FAILED} AND retry_count < max_retry_count"
                " AND error != ?", (STOPPED_BY_USER,))]
            for task_id in ids:
                self.retry(task_id)
            return ids

    def delete_task(self, task_id: int, running_too: bool = True) -> bool:
        """Delete a task; ``running_too=False`` spares it if it is running (a claim got
        there first), so the caller can stop its script before deleting it."""
        sql = "DELETE FROM tasks WHERE id=?" + ("" if running_too else
                                                  f" AND status != {RUNNING}")
        with self.write() as conn:
            row = conn.execute("SELECT status FROM tasks WHERE id=?", (task_id,)).fetchone()
            if row is None or (not running_too and row[0] == RUNNING):
                return False
            self._note_tasks(conn, [task_id])
            self._release_materials(conn, task_id)
            return conn.execute(sql, (task_id,)).rowcount == 1

    def clear(self, statuses: Sequence[int]) -> List[int]:
        """Delete finished tasks (completed and/or failed) and return their ids."""
        with self.write() as conn:
            marks = ",".join("?" * len(statuses))
            ids = [r[0] for r in conn.execute(
                f"SELECT id FROM tasks WHERE status IN ({marks})", list(statuses))]
            self._note_tasks(conn, ids)
            conn.execute(f"DELETE FROM tasks WHERE status IN ({marks})", list(statuses))
            return ids

    def recover_interrupted(self) -> List[int]:
        """At start-up: tasks left running by a crash or kill end failed, retryable.
        External workers' tasks are not ours to interrupt: their leases carry on."""
        with self.write() as conn:
            ids = [r[0] for r in conn.execute(
                f"SELECT id FROM tasks WHERE status={RUNNING} AND external = 0")]
            conn.execute(f"UPDATE tasks SET status={FAILED}, end_time=?, error=?, message=?"
                         f" WHERE status={RUNNING} AND external = 0",
                         (self.clock(), INTERRUPTED, ended_message(INTERRUPTED)))
            for task_id in ids:
                conn.execute("INSERT INTO task_log (task_id, at, line) VALUES (?,?,?)",
                             (task_id, self.clock(), INTERRUPTED))
                self._release_materials(conn, task_id)
            self._note_tasks(conn, ids)
            return ids

    def _note_tasks(self, conn: sqlite3.Connection, ids: Sequence[int]) -> None:
        """Note tasks and their phones (whose running task and queue change with them)."""
        self._note("task", *ids)
        for chunk in range(0, len(ids), 500):
            part = list(ids[chunk:chunk + 500])
            self._note("device", *(r[0] for r in conn.execute(
                f"SELECT DISTINCT serial FROM tasks WHERE id IN ({','.join('?' * len(part))})",
                part)))

    # -- devices --------------------------------------------------------------
    def upsert_device(self, serial: str, **fields: Any) -> None:
        """Create the device on first sight, then update the fields given."""
        now = self.clock()
        allowed = {"state", "model", "android_version", "battery", "adb_server",
                   "connection", "last_seen", "alias", "groups", "ime", "screen", "apps",
                   "last_error"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown device fields {sorted(unknown)}")
        if self._device_unchanged(serial, fields):
            return
        with self.write() as conn:
            conn.execute("INSERT OR IGNORE INTO devices (serial, first_seen) VALUES (?, ?)",
                         (serial, now))
            self._note("device", serial)
            if fields:
                sets = ", ".join(f"{k}=?" for k in fields)
                conn.execute(f"UPDATE devices SET {sets} WHERE serial=?",
                             list(fields.values()) + [serial])

    def _device_unchanged(self, serial: str, fields: Dict[str, Any]) -> bool:
        """True if writing these fields would change nothing worth a write: a phone's
        refresh after each task mostly finds the same model, version and battery."""
        row = self.get_device(serial)
        if row is None:
            return False
        for name, value in fields.items():
            if name == "last_seen" and value is not None and row[name] is not None:
                if value - row[name] >= LAST_SEEN_PRECISION:
                    return False
            elif row[name] != value:
                return False
        return True

    def get_device(self, serial: str) -> Optional[sqlite3.Row]:
        return self.query_one("SELECT * FROM devices WHERE serial=?", (serial,))

    def device_known(self, serial: str) -> bool:
        """Whether the device has a row: asked for every phone of every POST /task, so
        the answer is kept until a commit adds or removes a device (_device_rows)."""
        return self._cached(("device known", serial), lambda: self.query_one(
            "SELECT 1 FROM devices WHERE serial=?", (serial,)) is not None,
            self._device_rows)

    def list_devices(self, serial: Optional[str] = None) -> List[sqlite3.Row]:
        """Devices with their running task and pending count: the phone's own tasks, not
        workers' (external) tasks that merely name its serial.

        The count is task_counts' (a few rows per phone) less the phone's external
        pending tasks (usually none): counting its pending tasks one by one cost every
        POST /task (whose device event reads this) a walk over all of them. The running
        task is looked up in the index of running tasks, named: an index on (serial, ...)
        of all tasks looks as good to the planner and walks all the phone's tasks."""
        return self._devices("d.*", serial)

    def device_summary(self, serial: str) -> Optional[sqlite3.Row]:
        """A phone's row as its event shows it (EventHub.device_event), None if it has
        none: every POST /task tells its phone's, and the whole row (the apps, the
        screen) cost sqlite as much again as these columns."""
        return next(iter(self._devices(DEVICE_SUMMARY_COLUMNS, serial)), None)

    def _devices(self, columns: str, serial: Optional[str]) -> List[sqlite3.Row]:
        return self.query(
            f"SELECT {columns}, (SELECT id FROM tasks INDEXED BY tasks_one_running_per_device"
            f" WHERE serial=d.serial AND status={RUNNING} AND external = 0)"
            " AS running_task_id, (SELECT COALESCE(SUM(n), 0) FROM"
            f" task_counts WHERE serial=d.serial AND status={PENDING}) - (SELECT COUNT(*)"
            " FROM tasks INDEXED BY tasks_due WHERE serial=d.serial AND external = 1"
            f" AND status={PENDING}) AS pending_count FROM devices d"
            + (" WHERE d.serial=?" if serial is not None else "") + " ORDER BY d.serial",
            () if serial is None else (serial,))

    def remember_connection(self, address: str, adb_server: Optional[str]) -> None:
        """A phone connected with adb connect through Lite (None: disconnected by it)."""
        with self.write() as conn:
            if adb_server is not None:
                conn.execute("INSERT OR IGNORE INTO devices (serial, first_seen, connection)"
                             " VALUES (?, ?, 'tcp')", (address, self.clock()))
            conn.execute("UPDATE devices SET reconnect_via=? WHERE serial=?",
                         (adb_server, address))

    def connections_via(self, adb_server: str) -> List[str]:
        return [r[0] for r in self.query(
            "SELECT serial FROM devices WHERE reconnect_via=? ORDER BY serial", (adb_server,))]

    def mark_all_devices(self, state: str) -> None:
        """At start-up no phone is known to be there until adb reports it."""
        with self.write() as conn:
            conn.execute("UPDATE devices SET state=? WHERE state IS NOT ?", (state, state))

    def delete_device(self, serial: str) -> bool:
        """Forget a phone; refused (False) while it has pending or running tasks."""
        with self.write() as conn:
            busy = conn.execute("SELECT COUNT(*) FROM tasks WHERE serial=? AND status IN"
                                " (0, 1)", (serial,)).fetchone()[0]
            if busy:
                return False
            self._note("device", serial)
            return conn.execute("DELETE FROM devices WHERE serial=?", (serial,)).rowcount == 1

    def devices_in_groups(self, groups: Sequence[str]) -> List[str]:
        wanted = set(groups)
        return [r["serial"] for r in self.query("SELECT serial, groups FROM devices"
                                                " ORDER BY serial")
                if wanted & set(_load_json(r["groups"]) or [])]

    # -- materials (SPEC 7.2) ---------------------------------------------------
    def add_material(self, name: str, kind: str, size: int, sha256: str, file: str,
                     tags: Sequence[str], username: Optional[str],
                     caption: str) -> Tuple[int, bool]:
        """Insert a material, or find the one with the same bytes: (id, created)."""
        with self.write() as conn:
            row = conn.execute("SELECT id FROM materials WHERE sha256=?", (sha256,)).fetchone()
            if row is not None:
                return row[0], False
            cur = conn.execute(
                "INSERT INTO materials (name, kind, size, sha256, file, tags, username,"
                " caption, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (name, kind, size, sha256, file, _dump_json(list(tags)), username, caption,
                 self.clock()))
            self._note("material", cur.lastrowid)
            return cur.lastrowid, True

    def get_material(self, material_id: int) -> Optional[sqlite3.Row]:
        return self.query_one("SELECT * FROM materials WHERE id=?", (material_id,))

    def list_materials(self, *, kind: Optional[str] = None, tag: Optional[str] = None,
                       username: Optional[str] = None, unused: bool = False, page: int = 1,
                       page_size: int = 20) -> Tuple[List[sqlite3.Row], int]:
        where, params = [], []
        for column, value in (("kind", kind), ("username", username)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if unused:
            where.append("used_count = 0")
        if tag is not None:                 # tags are a JSON array of plain strings
            where.append("EXISTS (SELECT 1 FROM json_each(materials.tags) WHERE value = ?)")
            params.append(tag)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        total = self.query_one(f"SELECT COUNT(*) FROM materials {clause}", params)[0]
        rows = self.query(f"SELECT * FROM materials {clause} ORDER BY id DESC LIMIT ?"
                          " OFFSET ?", params + [page_size, (page - 1) * page_size])
        return rows, total

    def update_material(self, material_id: int, **fields: Any) -> bool:
        if not fields:
            return self.get_material(material_id) is not None
        with self.write() as conn:
            self._note("material", material_id)
            sets = ", ".join(f"{k}=?" for k in fields)
            return conn.execute(f"UPDATE materials SET {sets} WHERE id=?",
                                list(fields.values()) + [material_id]).rowcount == 1

    def delete_material(self, material_id: int) -> Optional[str]:
        """Delete a material no pending or running task holds; returns its file name,
        None when it is held. (The caller checked that it exists.)"""
        with self.write() as conn:
            row = conn.execute("SELECT m.file FROM materials m LEFT JOIN tasks t ON"
                               " t.id = m.reserved_by WHERE m.id=? AND (m.reserved_by IS"
                               " NULL OR t.status NOT IN (0, 1))", (material_id,)).fetchone()
            if row is None:
                return None
            conn.execute("DELETE FROM materials WHERE id=?", (material_id,))
            self._note("material", material_id)
            return row[0]

    def _reserve_materials(self, conn: sqlite3.Connection, task_id: int,
                           task: NewTask) -> Dict[str, Any]:
        """Reserve never-used material for a task; returns its config with the files.

        Material bound to the task's account comes first, then material bound to none.
        """
        want = task.materials
        tags = set(want.get("tags") or ())
        rows = conn.execute(
            "SELECT * FROM materials WHERE kind=? AND used_count=0 AND reserved_by IS NULL"
            " AND (username IS NULL OR username=?) ORDER BY username IS NULL, id",
            (want["kind"], task.username or "")).fetchall()
        picked = [r for r in rows if not tags or tags & set(_load_json(r["tags"]))]
        picked = picked[:want["count"]]
        if len(picked) < want["count"]:
            what = f"tags {', '.join(sorted(tags))}" if tags else "any tag"
            raise BadRequest("script_config.materials_tags",
                             f"not enough unused {want['kind']} material with {what}"
                             f"{' for @' + task.username if task.username else ''}: "
                             f"{want['count']} needed per task, {len(picked)} left")
        ids = [r["id"] for r in picked]
        conn.execute(f"UPDATE materials SET reserved_by=? WHERE id IN "
                     f"({','.join('?' * len(ids))})", [task_id] + ids)
        self._note("material", *ids)
        config = dict(task.script_config)
        config["material_ids"] = ids
        config["material_list"] = [str(Path(want["folder"]) / r["file"]) for r in picked]
        if not config.get("captions"):
            config["captions"] = next((r["caption"] for r in picked if r["caption"]), "")
        return config

    def _release_materials(self, conn: sqlite3.Connection, task_id: int) -> None:
        ids = [r[0] for r in conn.execute("SELECT id FROM materials WHERE reserved_by=?",
                                          (task_id,))]
        if ids:
            conn.execute("UPDATE materials SET reserved_by=NULL WHERE reserved_by=?",
                         (task_id,))
            self._note("material", *ids)

    def _rereserve_materials(self, conn: sqlite3.Connection, task_id: int) -> None:
        """A retried task takes back its material if no other task took it meanwhile."""
        row = conn.execute("SELECT script_config FROM tasks WHERE id=?", (task_id,)).fetchone()
        ids = [i for i in (_load_json(row[0]) or {}).get("material_ids") or []
               if isinstance(i, int)]
        if ids:
            conn.execute(f"UPDATE materials SET reserved_by=? WHERE reserved_by IS NULL AND"
                         f" used_count=0 AND id IN ({','.join('?' * len(ids))})",
                         [task_id] + ids)
            self._note("material", *ids)

    def _use_materials(self, conn: sqlite3.Connection, task_id: int, now: float) -> None:
        ids = [r[0] for r in conn.execute("SELECT id FROM materials WHERE reserved_by=?",
                                          (task_id,))]
        if ids:
            conn.execute("UPDATE materials SET used_count=used_count+1, last_used_at=?,"
                         " reserved_by=NULL WHERE reserved_by=?", (now, task_id))
            self._note("material", *ids)

    def claim_folder_media(self, task_id: int, paths: Sequence[str],
                           count: int) -> List[str]:
        """localFolder media: the first ``count`` paths no task used yet, marked used in
        the same transaction (two phones posting from one folder never share a file).
        Fewer come back when fewer are left."""
        with self.write() as conn:
            used = set()
            for chunk in range(0, len(paths), 500):
                part = list(paths[chunk:chunk + 500])
                used |= {r[0] for r in conn.execute(
                    f"SELECT path FROM used_media WHERE path IN ({','.join('?' * len(part))})",
                    part)}
            chosen = [p for p in paths if p not in used][:count]
            if len(chosen) == count:
                conn.executemany("INSERT INTO used_media (path, task_id, used_at) VALUES"
                                 " (?,?,?)", [(p, task_id, self.clock()) for p in chosen])
            return chosen

    # -- accounts -------------------------------------------------------------
    def list_accounts(self, serial: Optional[str] = None) -> List[sqlite3.Row]:
        if serial is None:
            return self.query("SELECT * FROM accounts ORDER BY username")
        return self.query("SELECT * FROM accounts WHERE serial=? ORDER BY created_at, username",
                          (serial,))

    def get_account(self, username: str) -> Optional[sqlite3.Row]:
        return self.query_one("SELECT * FROM accounts WHERE username=?", (username,))

    def save_account(self, username: str, serial: str, platform: str, package: str,
                     enabled: bool, create: bool) -> bool:
        """Insert (create=True) or replace an account; False if that clashes or is absent."""
        with self.write() as conn:
            self._note("account", username)
            if create:
                try:
                    conn.execute("INSERT INTO accounts (username, serial, platform, package,"
                                 " enabled, created_at) VALUES (?,?,?,?,?,?)",
                                 (username, serial, platform, package, int(enabled),
                                  self.clock()))
                except sqlite3.IntegrityError:
                    return False
                return True
            cur = conn.execute("UPDATE accounts SET serial=?, platform=?, package=?, enabled=?"
                               " WHERE username=?",
                               (serial, platform, package, int(enabled), username))
            return cur.rowcount == 1

    def delete_account(self, username: str) -> bool:
        with self.write() as conn:
            self._note("account", username)
            return conn.execute("DELETE FROM accounts WHERE username=?",
                                (username,)).rowcount == 1

    # -- accounts: safety (SPEC 8.1) -------------------------------------------------
    def save_account_safety(self, username: str, limits: Optional[dict],
                            active_hours: Optional[str], cooldown_hours: float) -> None:
        with self.write() as conn:
            self._note("account", username)
            conn.execute("UPDATE accounts SET limits=?, active_hours=?, cooldown_hours=?"
                         " WHERE username=?",
                         (_dump_json(limits), active_hours, cooldown_hours, username))

    def set_cooldown(self, username: str, until: Optional[float]) -> bool:
        with self.write() as conn:
            self._note("account", username)          # the farm view's account event
            return conn.execute("UPDATE accounts SET cooldown_until=? WHERE username=?",
                                (until, username)).rowcount == 1

    def record_actions(self, username: str, counts: Dict[str, int], at: float) -> None:
        """Count what a task did as an account; rows older than two days are dropped."""
        with self.write() as conn:
            for action, count in counts.items():
                if count > 0:
                    conn.execute("INSERT INTO account_actions (username, action, at, count)"
                                 " VALUES (?,?,?,?)", (username, action, at, count))
            conn.execute("DELETE FROM account_actions WHERE username=? AND at < ?",
                         (username, at - 2 * 86400))

    def actions_since(self, username: str, since: float) -> List[sqlite3.Row]:
        return self.query("SELECT action, at, count FROM account_actions"
                          " WHERE username=? AND at >= ? ORDER BY at", (username, since))

    # -- schedules (SPEC 8.2) --------------------------------------------------------
    def save_schedule(self, schedule_id: Optional[int], fields: Dict[str, Any]) -> int:
        """Insert (no id) or update a schedule; fields are column -> value."""
        with self.write() as conn:
            if schedule_id is None:
                fields = dict(fields, created_at=self.clock())
                cur = conn.execute(
                    f"INSERT INTO schedules ({', '.join(fields)})"
                    f" VALUES ({','.join('?' * len(fields))})", list(fields.values()))
                return cur.lastrowid
            conn.execute(f"UPDATE schedules SET {', '.join(f'{k}=?' for k in fields)}"
                         " WHERE id=?", list(fields.values()) + [schedule_id])
            return schedule_id

    def get_schedule(self, schedule_id: int) -> Optional[sqlite3.Row]:
        return self.query_one("SELECT * FROM schedules WHERE id=?", (schedule_id,))

    def list_schedules(self) -> List[sqlite3.Row]:
        return self.query("SELECT * FROM schedules ORDER BY id")

    def delete_schedule(self, schedule_id: int) -> bool:
        with self.write() as conn:
            return conn.execute("DELETE FROM schedules WHERE id=?",
                                (schedule_id,)).rowcount == 1

    def advance_schedule(self, schedule_id: int, expected_run: float, next_slot: float,
                         next_run: float, fired_at: Optional[float],
                         tasks: Sequence[NewTask] = ()) -> Optional[List[int]]:
        """Move a schedule to its next slot and create the slot's tasks, in one
        transaction guarded by the slot it expected: a slot fires at most once."""
        with self.write() as conn:
            cur = conn.execute(
                "UPDATE schedules SET next_slot=?, next_run=?,"
                " last_run=COALESCE(?, last_run) WHERE id=? AND next_run=?",
                (next_slot, next_run, fired_at, schedule_id, expected_run))
            if cur.rowcount != 1:
                return None
            return self.create_tasks(tasks)

    # -- webhook deliveries (SPEC 8.3) -----------------------------------------------
    def add_deliveries(self, items: Sequence[Tuple[str, str, str, str]], now: float) -> None:
        """(delivery id, event, url, body) rows due now; the log keeps the last 500."""
        with self.write() as conn:
            for delivery_id, event, url, body in items:
                conn.execute("INSERT INTO webhook_deliveries (delivery_id, event, url, body,"
                             " next_try, created_at) VALUES (?,?,?,?,?,?)",
                             (delivery_id, event, url, body, now, now))
            conn.execute("DELETE FROM webhook_deliveries WHERE id <= "
                         "(SELECT MAX(id) FROM webhook_deliveries) - 500")

    def due_deliveries(self, now: float) -> List[sqlite3.Row]:
        return self.query("SELECT * FROM webhook_deliveries WHERE next_try <= ?"
                          " ORDER BY next_try, id LIMIT 50", (now,))

    def next_delivery_time(self) -> Optional[float]:
        return self.query_one("SELECT MIN(next_try) FROM webhook_deliveries")[0]

    def delivery_tried(self, row_id: int, status: str, next_try: Optional[float]) -> None:
        with self.write() as conn:
            conn.execute("UPDATE webhook_deliveries SET tries=tries+1, last_status=?,"
                         " next_try=? WHERE id=?", (status, next_try, row_id))

    def list_deliveries(self) -> List[sqlite3.Row]:
        return self.query("SELECT * FROM webhook_deliveries ORDER BY id DESC LIMIT 500")

    # -- API keys (SPEC 8.5) ---------------------------------------------------------
    def add_api_key(self, name: str, role: str, key_hash: str) -> int:
        with self.write() as conn:
            self._note("api_key", name)
            return conn.execute("INSERT INTO api_keys (name, role, key_hash, created_at)"
                                " VALUES (?,?,?,?)",
                                (name, role, key_hash, self.clock())).lastrowid

    def api_key_by_hash(self, key_hash: str) -> Optional[sqlite3.Row]:
        return self.query_one("SELECT * FROM api_keys WHERE key_hash=?", (key_hash,))

    def list_api_keys(self) -> List[sqlite3.Row]:
        return self.query("SELECT id, name, role, created_at FROM api_keys ORDER BY id")

    def delete_api_key(self, key_id: int) -> bool:
        with self.write() as conn:
            self._note("api_key", key_id)
            return conn.execute("DELETE FROM api_keys WHERE id=?", (key_id,)).rowcount == 1

    def has_admin_key(self) -> bool:
        """Asked by every request (keys count once an admin key exists)."""
        return self._cached("admin key", lambda: self.query_one(
            "SELECT 1 FROM api_keys WHERE role='admin' LIMIT 1") is not None,
            self._key_changes)


def ended_message(error: str) -> str:
    """A finished task's message says how it ended, not its last progress line."""
    return error if error in (STOPPED_BY_USER, "expired") else f"failed: {error}"


def _is_disk_full(exc: sqlite3.Error) -> bool:
    """SQLITE_FULL (13): the disk of the database or its journal ran out of space."""
    return getattr(exc, "sqlite_errorcode", None) == 13 or "disk is full" in str(exc)


def _storage_error(exc: BaseException) -> BaseException:
    """A disk-full error as StorageFull (the API's 50001 that says so); others as is."""
    if isinstance(exc, sqlite3.OperationalError) and _is_disk_full(exc):
        full = StorageFull()
        full.__cause__ = exc
        return full
    return exc


def _split_sql(script: str) -> List[str]:
    """Split a migration into statements (a trigger's body holds semicolons)."""
    lines = [l for l in script.splitlines() if not l.strip().startswith("--")]
    statements, pending = [], ""
    for piece in "\n".join(lines).split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                statements.append(pending.strip())
            pending = ""
    if pending.strip(" \n;"):
        statements.append(pending.strip())
    return statements


#: one encoder for every stored value (json.dumps with options builds one per call)
_STORED_JSON = json.JSONEncoder(ensure_ascii=False, default=str)


def _dump_json(value: Any) -> Optional[str]:
    if value is None:
        return None
    return _STORED_JSON.encode(value)


def _load_json(text: Optional[str]) -> Any:
    return None if text is None else json.loads(text)


def _load_shown_json(text: str) -> Any:
    """Decoded JSON for a response only (never changed, so rows may share it): the tasks
    of one POST share their config, and a page of them decodes it once."""
    return _load_cached_json(text) if len(text) <= 2048 else json.loads(text)


@functools.lru_cache(maxsize=1024)           # at most 2 MB of texts
def _load_cached_json(text: str) -> Any:
    return json.loads(text)


def task_to_json(row: Any) -> Dict[str, Any]:
    """A task row (or a dict of one) as the API shows it (SPEC 4.1).

    The columns are taken by position: a page of rows read by name costs more than the
    query (sqlite3.Row searches its column names for each name).
    """
    values = (tuple(row[name] for name in TASK_COLUMNS) if isinstance(row, dict)
              else row[:len(TASK_COLUMNS)])
    (task_id, serial, username, script_name, script_config, status, source, priority,
     start_time, _rest, min_interval, max_interval, created_at, started_at, end_time,
     progress, message, error, result, retry_count, max_retry_count, auto_retry,
     callback_url, expire_at, timeout, schedule_id, creator, _external, worker_id,
     lease_until, _lease_seconds) = values
    return {
        "id": task_id, "serial": serial, "username": username, "script_name": script_name,
        "script_config": _load_shown_json(script_config), "status": status,
        "status_text": STATUS_TEXT[status], "source": source, "priority": priority,
        "start_time": format_time(start_time), "started_at": format_time(started_at),
        "end_time": format_time(end_time), "created_at": format_time(created_at),
        "progress": progress, "message": message, "error": error,
        "result": None if result is None else _load_shown_json(result),
        "retry_count": retry_count, "max_retry_count": max_retry_count,
        "auto_retry": bool(auto_retry), "min_interval": min_interval,
        "max_interval": max_interval, "callback_url": callback_url,
        "expire_at": format_time(expire_at), "timeout": timeout,
        "schedule_id": schedule_id, "creator": creator, "worker_id": worker_id,
        "lease_until": format_time(lease_until),
    }


def _time_sql(column: str) -> str:
    """format_time in SQL: the whole second below (floor, as format_time) in local time."""
    second = f"(CAST({column} AS INTEGER) - ({column} < CAST({column} AS INTEGER)))"
    return f"strftime('{TIME_FORMAT}', {second}, 'unixepoch', 'localtime')"


#: task_to_json as one sqlite expression over a tasks row (the API's JSON of a task,
#: keys in the same order), for pages built in one step (Store.task_page_json). Its
#: first parameter is {"task id": [progress, message]} of the running tasks whose
#: progress waits in memory (Store._with_live). tests/test_store.py compares the two.
TASK_JSON_SQL = "json_object(" + ", ".join(f"'{key}', {value}" for key, value in (
    ("id", "id"), ("serial", "serial"), ("username", "username"),
    ("script_name", "script_name"), ("script_config", "json(script_config)"),
    ("status", "status"),
    ("status_text", "CASE status " + " ".join(
        f"WHEN {number} THEN '{text}'" for number, text in STATUS_TEXT.items()) + " END"),
    ("source", "source"), ("priority", "priority"),
    ("start_time", _time_sql("start_time")), ("started_at", _time_sql("started_at")),
    ("end_time", _time_sql("end_time")), ("created_at", _time_sql("created_at")),
    ("progress", f"CASE WHEN status = {RUNNING} THEN COALESCE(json_extract(?1, '$.\"' ||"
                 " id || '\"[0]'), progress) ELSE progress END"),
    ("message", f"CASE WHEN status = {RUNNING} AND json_type(?1, '$.\"' || id || '\"')"
                " IS NOT NULL THEN json_extract(?1, '$.\"' || id || '\"[1]') ELSE message"
                " END"),
    ("error", "error"), ("result", "json(result)"), ("retry_count", "retry_count"),
    ("max_retry_count", "max_retry_count"),
    ("auto_retry", "json(CASE WHEN auto_retry THEN 'true' ELSE 'false' END)"),
    ("min_interval", "min_interval"), ("max_interval", "max_interval"),
    ("callback_url", "callback_url"), ("expire_at", _time_sql("expire_at")),
    ("timeout", "timeout"), ("schedule_id", "schedule_id"), ("creator", "creator"),
    ("worker_id", "worker_id"), ("lease_until", _time_sql("lease_until")),
)) + ")"
#: 1 when every time of the row is one sqlite shows as format_time does: sqlite (before
#: 3.42) finds the local time of a date outside 1971-2037 from another year's offset
TASK_TIMES_EXACT_SQL = " AND ".join(
    f"COALESCE({column} BETWEEN 31536000 AND 2145916799, 1)" for column in (
        "start_time", "started_at", "end_time", "created_at", "expire_at", "lease_until"))


###############################################################################
# Events ######################################################################
###############################################################################

#: Events kept in memory for clients that reconnect (SPEC 7.1: at least 1,000).
EVENT_RING = 2000
#: A comment line this often keeps proxies from closing an idle stream.
EVENT_KEEPALIVE = 15.0


#: one encoder for every event (json.dumps with options builds one per call)
_EVENT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)


class EventHub:
    """Live events (SPEC 7.1): what the store's commits changed, as numbered events.

    The store announces the keys each commit changed; the hub reads them back as the
    API shows them and keeps the newest events in a ring, so a client that reconnects
    with the last id it saw gets what it missed. Ids start from the clock in ms, so they
    keep growing across a restart and a stale id is recognised (it gets a "reset").
    Readers wait on a condition: nothing polls.
    """

    def __init__(self, store: Store, size: int = EVENT_RING):
        self.store = store
        self._ring: "collections.deque[Tuple[int, str, str]]" = collections.deque(maxlen=size)
        self._next_id = int(time.time() * 1000)
        self.first_id = self._next_id
        self._cond = threading.Condition()
        self._closed = False
        self._streams = 0                         # streams being served right now
        store.on_change = self.on_store_change
        store.on_written = self.on_store_written

    def publish(self, kind: str, data: Dict[str, Any]) -> int:
        text = _EVENT_JSON.encode(data)
        with self._cond:
            event_id = self._next_id
            self._next_id += 1
            self._ring.append((event_id, kind, text))
            self._cond.notify_all()
        return event_id

    @property
    def last_id(self) -> int:
        with self._cond:
            return self._next_id - 1

    def on_store_change(self, kind: str, keys: List[Any]) -> None:
        for key in keys:
            self.publish(kind, self.describe(kind, key))

    def on_store_written(self, kind: str, rows: Dict[Any, Any]) -> None:
        """Rows told as written (new tasks, their phones): their events without reading
        them back."""
        for key, row in rows.items():
            self.publish(kind, self.task_event(row) if kind == "task"
                         else self.device_event(key, row))

    @staticmethod
    def task_event(row: Any) -> Dict[str, Any]:
        return {k: row[k] for k in ("id", "status", "progress", "message", "serial",
                                    "username", "error", "script_name")} | {
            "status_text": STATUS_TEXT[row["status"]]}

    @staticmethod
    def device_event(serial: str, row: Any) -> Dict[str, Any]:
        """A row of Store.list_devices (None: the phone has no row)."""
        if row is None:
            return {"serial": serial, "deleted": True}
        return {"serial": serial, "state": row["state"], "battery": row["battery"],
                "running_task_id": row["running_task_id"],
                "pending_count": row["pending_count"], "alias": row["alias"],
                "groups": _load_json(row["groups"]), "last_error": row["last_error"]}

    def describe(self, kind: str, key: Any) -> Dict[str, Any]:
        """The event's data: the changed row as the page needs it, or that it is gone."""
        store = self.store
        if kind == "task":
            row = store.get_task(key)
            return {"id": key, "deleted": True} if row is None else self.task_event(row)
        if kind == "device":
            return self.device_event(key, store.device_summary(key))
        if kind == "account":
            row = store.get_account(key)
            if row is None:
                return {"username": key, "status": "deleted", "cooldown_until": None,
                        "serial": None}
            until = row["cooldown_until"]
            cooling = until is not None and until > store.clock()
            status = "cooldown" if cooling else ("enabled" if row["enabled"] else "disabled")
            return {"username": key, "status": status, "serial": row["serial"],
                    "cooldown_until": format_time(until) if cooling else None}
        row = store.get_material(key)
        if row is None:
            return {"id": key, "deleted": True}
        return {"id": key, "used_count": row["used_count"],
                "reserved_by": row["reserved_by"]}

    def wait_after(self, after: int, timeout: float) -> List[Tuple[int, str, str]]:
        """Events newer than ``after``, waiting up to ``timeout`` for the first one."""
        with self._cond:
            if not self._closed and self._next_id - 1 <= after:
                self._cond.wait(timeout)
            if not self._ring or self._ring[-1][0] <= after:
                return []
            return [e for e in self._ring if e[0] > after]

    def missed(self, after: int) -> bool:
        """True when events after ``after`` have left the ring (or the id is from the
        future: another run of the server): the client must reload."""
        with self._cond:
            oldest = self._ring[0][0] if self._ring else self._next_id
            return after < oldest - 1 or after >= self._next_id

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, wait: float = 0) -> None:
        """End every stream; with ``wait``, until their threads have let go of them."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            if wait:
                self._cond.wait_for(lambda: self._streams == 0, wait)

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        with self._cond:
            self._streams += 1
        try:
            yield
        finally:
            with self._cond:
                self._streams -= 1
                self._cond.notify_all()


def event_stream(hub: EventHub, after: Optional[int], *, keepalive: float = EVENT_KEEPALIVE,
                 release: Callable[[], None] = lambda: None) -> Iterator[bytes]:
    """The text/event-stream of one client: missed events first, then live ones.

    The generator waits on the hub between events; a comment line goes out every
    ``keepalive`` seconds, and a client that went away is noticed when that write fails
    (waitress then closes the generator, which calls ``release``).
    """
    with contextlib.ExitStack() as stack:
        stack.callback(release)
        stack.enter_context(hub.serving())
        yield b"retry: 2000\n\n"
        if after is None:
            after = hub.last_id
        elif hub.missed(after):
            yield f"id: {hub.last_id}\nevent: reset\ndata: {{}}\n\n".encode()
            after = hub.last_id
        while not hub.closed:
            events = hub.wait_after(after, keepalive)
            if not events:
                yield b": keep-alive\n\n"
                continue
            after = events[-1][0]
            yield "".join(f"id: {i}\nevent: {k}\ndata: {d}\n\n"
                          for i, k, d in events).encode("utf-8")


###############################################################################
# Scripts #####################################################################
###############################################################################

#: TikMatrix scripts that its API does not run yet: asking for them is a 40003.
NOT_API_SCRIPTS = frozenset({"like", "message", "super_marketing", "profile", "scrape_user"})
PARAM_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
               "list": (list,), "dict": (dict,)}
PARAM_KEYS = {"type", "default", "choices", "min", "max", "required", "description",
              "items", "min_length", "max_length", "max_items", "pattern", "nullable"}
#: The range of an sqlite INTEGER: a larger whole number is refused, never overflows.
INT64 = (-2 ** 63, 2 ** 63 - 1)
PLATFORM_NAMES = ("tiktok", "instagram")


class ScriptError(Exception):
    """A script file that cannot be used; it is logged and left out."""


@dataclass
class Script:
    """A loaded automation script: its declarations and its functions."""

    name: str
    path: Path
    description: str
    platforms: Tuple[str, ...]
    params: Dict[str, Dict[str, Any]]
    run: Callable[..., Any]
    expand: Optional[Callable[[Dict[str, Any]], List[Dict[str, Any]]]] = None
    validate: Optional[Callable[[Dict[str, Any]], None]] = None
    #: config -> the library material a task needs ({"kind", "count", "tags"}) or None
    reserve_materials: Optional[Callable[[Dict[str, Any]], Optional[Dict[str, Any]]]] = None
    #: "phone" (Lite's runners run it) or "external" (workers take its tasks, SPEC 8.4)
    runner: str = "phone"

    def describe(self) -> Dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "platforms": list(self.platforms), "params": self.params,
                "expands": self.expand is not None, "runner": self.runner}

    def check_config(self, config: Dict[str, Any]) -> Dict[str, Any]:
        """Validate a script_config against PARAMS; returns it with defaults filled in."""
        out = {**config, **check_fields(config, self.params, "script_config.")}
        if self.validate is not None:
            with _script_errors():
                self.validate(out)
        return out

    def expand_config(self, config: Dict[str, Any]) -> List[Dict[str, Any]]:
        """One request config -> the configs of the tasks it makes (usually just itself)."""
        if self.expand is None:
            return [config]
        with _script_errors():
            configs = list(self.expand(dict(config)))
        if not configs or not all(isinstance(c, dict) for c in configs):
            raise BadRequest("script_config", f"script {self.name} made no task from it")
        return configs


@contextlib.contextmanager
def _script_errors() -> Iterator[None]:
    """A script's validate/expand refuses a config with BadRequest(field, reason) (or the
    older ValueError(field, reason)); the field is inside script_config."""
    try:
        yield
    except BadRequest as exc:
        raise BadRequest(f"script_config.{exc.field}" if exc.field else "script_config",
                         exc.reason) from None
    except ValueError as exc:
        if len(exc.args) == 2:
            raise BadRequest(f"script_config.{exc.args[0]}", str(exc.args[1])) from None
        raise BadRequest("script_config", str(exc)) from None


def check_fields(data: Dict[str, Any], decls: Dict[str, Dict[str, Any]], prefix: str = "",
                 *, switches: bool = True) -> Dict[str, Any]:
    """The one validation of script parameters, request bodies and queries.

    Returns the declared fields, checked, with defaults filled in (a null counts as
    absent, except in a ``nullable`` field, where it is kept: "clear this"). ``switches``
    lets 0/1 stand for false/true, as TikMatrix clients send in script configs; API
    bodies want real booleans.
    """
    out: Dict[str, Any] = {}
    for name, decl in decls.items():     # most are absent: each costs a lookup or two
        value = data.get(name)
        if value is not None:
            out[name] = check_param(prefix + name, value, decl, switches=switches)
        elif name in data and decl.get("nullable"):
            out[name] = None
        elif decl.get("required"):
            raise BadRequest(prefix + name, "is required")
        elif "default" in decl:           # a list or dict is the caller's own copy
            default = decl["default"]
            out[name] = _copy_json(default) if isinstance(default, (list, dict)) \
                else default
    return out


def _copy_json(value: Any) -> Any:
    """A deep copy of JSON data (lists, dicts and immutable leaves)."""
    if isinstance(value, list):
        return [_copy_json(item) for item in value]
    if isinstance(value, dict):
        return {key: _copy_json(item) for key, item in value.items()}
    return value


def check_param(where: str, value: Any, decl: Dict[str, Any], *,
                switches: bool = True) -> Any:
    """Check one value against its declaration; raise BadRequest naming the field."""
    kind = decl["type"]
    types = kind if isinstance(kind, (list, tuple)) else (kind,)
    if switches and "bool" in types and isinstance(value, int) \
            and not isinstance(value, bool) and value in (0, 1):
        value = bool(value)                  # TikMatrix clients send 0/1 for switches
    ok = False
    for t in types:                          # a bool is no number here
        if isinstance(value, PARAM_TYPES[t]) and \
                not (t in ("int", "float") and isinstance(value, bool)):
            ok = True
            break
    if not ok and "int" in types and isinstance(value, float) and value.is_integer():
        value, ok = int(value), True
    if not ok:
        # the declared type names first (the words a script's PARAMS use), then JSON's
        words = " or ".join(_JSON_WORDS[t] for t in types)
        raise BadRequest(where, f"must be {' or '.join(types)} ({words}), "
                                f"got {_json_type(value)}")
    if "choices" in decl and value not in decl["choices"]:
        raise BadRequest(where, f"must be one of {', '.join(map(repr, decl['choices']))}, "
                                f"got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        _check_range(where, value, decl)
    if isinstance(value, str):
        _check_text(where, value, decl)
    if isinstance(value, list):
        if len(value) > decl.get("max_items", 10_000):
            raise BadRequest(where, f"has more than {decl.get('max_items', 10_000)} items")
        items = decl.get("items")
        if items:
            items = {"type": items} if isinstance(items, str) else items
            value = [check_param(f"{where}[{i}]", item, items, switches=switches)
                     for i, item in enumerate(value)]
    return value


def _check_range(where: str, value: Any, decl: Dict[str, Any]) -> None:
    if isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
        raise BadRequest(where, f"is out of range: {value}")
    if "min" in decl and value < decl["min"]:
        raise BadRequest(where, f"must be at least {decl['min']}, got {value}")
    if "max" in decl and value > decl["max"]:
        raise BadRequest(where, f"must be at most {decl['max']}, got {value}")


def _check_text(where: str, value: str, decl: Dict[str, Any]) -> None:
    _check_chars(where, value)
    if len(value) < decl.get("min_length", 0):
        raise BadRequest(where, "is empty" if not value else
                         f"is shorter than {decl['min_length']} characters")
    if len(value) > decl.get("max_length", 100_000):
        raise BadRequest(where, f"is longer than {decl.get('max_length', 100_000)} characters")
    if "pattern" in decl and not re.fullmatch(decl["pattern"], value):
        raise BadRequest(where, f"must be {decl.get('description') or decl['pattern']}, "
                                f"got {value!r}")


#: How deep a request's JSON may nest: deeper is no TikMatrix request, and unbounded
#: depth ends in a RecursionError somewhere.
MAX_JSON_DEPTH = 32


def check_json(value: Any, where: str = "") -> None:
    """Every string of a request, keys too, is text that sqlite and a phone can take (no
    NUL, no lone UTF-16 surrogate), and it nests at most MAX_JSON_DEPTH deep.

    A value's place is kept as (parent's place, key or index) and spelled out only for
    an error: every request with a body comes here, and the names cost more than the
    checks."""
    stack: List[Tuple[Any, Any, int]] = [(value, where, 0)]
    while stack:
        value, place, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise BadRequest(_place_name(place) or "body",
                             f"nests deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(value, str):
            _check_chars(place or "body", value)
        elif isinstance(value, list):
            stack += [(item, (place, i), depth + 1) for i, item in enumerate(value)]
        elif isinstance(value, dict):
            for key, item in value.items():
                _check_chars((place, key), key)
                stack.append((item, (place, key), depth + 1))


def _place_name(place: Any) -> str:
    """check_json's (parent, key or index) as "a.b[0].c"; a str is a name already."""
    if isinstance(place, str):
        return place
    parent, step = place
    name = _place_name(parent)
    if isinstance(step, int):
        return f"{name}[{step}]"
    return f"{name}.{_printable(step)}" if name else _printable(step)


def _check_chars(where: Any, text: str) -> None:
    """``where``: a field's name, or check_json's place of the text."""
    if "\x00" in text:
        raise BadRequest(_printable(_place_name(where)), "contains a NUL character")
    if text.isascii():                  # (a flag of the str: no surrogate can be in it)
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(_printable(_place_name(where)),
                         "contains a lone UTF-16 surrogate") from None


def _printable(text: str) -> str:
    """A name that is safe to put in an answer (a lone surrogate cannot be encoded)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\0")


#: a declared type as the JSON word a client knows
_JSON_WORDS = {"str": "a string", "int": "an integer", "float": "a number",
               "bool": "true or false", "list": "an array", "dict": "an object"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string",
            list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _check_declarations(name: str, params: Any) -> Dict[str, Dict[str, Any]]:
    if not isinstance(params, dict):
        raise ScriptError(f"PARAMS must be a dict, not {type(params).__name__}")
    for pname, decl in params.items():
        if not isinstance(decl, dict) or "type" not in decl:
            raise ScriptError(f"PARAMS[{pname!r}] must be a dict with a 'type'")
        types = decl["type"] if isinstance(decl["type"], (list, tuple)) else [decl["type"]]
        bad = [t for t in types if t not in PARAM_TYPES]
        if bad or set(decl) - PARAM_KEYS:
            raise ScriptError(f"PARAMS[{pname!r}]: unknown type {bad} or keys "
                              f"{sorted(set(decl) - PARAM_KEYS)}")
        if "default" in decl and decl["default"] is not None:
            try:
                check_param(pname, decl["default"], decl)
            except BadRequest as exc:
                raise ScriptError(f"default of {exc.message}") from None
    return params


def load_script(path: Path) -> Script:
    """Import one script file; ScriptError says what is wrong with it."""
    name = path.stem
    spec = importlib.util.spec_from_file_location(f"tmlite_script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise ScriptError(f"syntax error at line {exc.lineno}: {exc.msg}") from None
    except Exception as exc:
        raise ScriptError(f"{type(exc).__name__} while loading: {exc}") from None
    run = getattr(module, "run", None)
    runner = getattr(module, "RUNNER", "phone")
    if runner not in ("phone", "external"):
        raise ScriptError(f"RUNNER must be 'phone' or 'external', not {runner!r}")
    if runner == "external" and run is not None:
        raise ScriptError("an external script (RUNNER = 'external') has no run()")
    if runner == "phone" and not callable(run):
        raise ScriptError("it has no run(phone, task) function")
    platforms = tuple(getattr(module, "PLATFORMS", PLATFORM_NAMES))
    if not set(platforms) <= set(PLATFORM_NAMES):
        raise ScriptError(f"PLATFORMS must be among {PLATFORM_NAMES}")
    return Script(name=name, path=path, run=run,
                  description=str(getattr(module, "DESCRIPTION", (module.__doc__ or "")
                                          .strip().split("\n")[0])),
                  platforms=platforms,
                  params=_check_declarations(name, getattr(module, "PARAMS", {})),
                  expand=getattr(module, "expand", None),
                  validate=getattr(module, "validate", None), runner=runner,
                  reserve_materials=getattr(module, "reserve_materials", None))


def load_scripts(folder: Path) -> Dict[str, Script]:
    """Every .py in the folder but those named _*.py (modules the scripts share, such
    as _common.py); a broken script is logged and left out."""
    scripts: Dict[str, Script] = {}
    folder_text = str(folder)
    if folder_text not in sys.path:          # lets scripts import their _*.py modules
        sys.path.insert(0, folder_text)
    # run as a program this module is __main__: scripts that `import tikmatrix_lite` (for
    # StepFailed) must get this very module, not a second copy with other classes
    sys.modules.setdefault("tikmatrix_lite", sys.modules[__name__])
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        try:
            scripts[path.stem] = load_script(path)
        except ScriptError as exc:
            log.error("script %s left out: %s", path.name, exc)
    log.info("loaded %d script(s) from %s: %s", len(scripts), folder,
             ", ".join(sorted(scripts)) or "none")
    return scripts


###############################################################################
# Devices #####################################################################
###############################################################################

#: How long a phone may take to accept a command before it counts as not answering.
DEVICE_ANSWER_TIMEOUT = 5.0
#: While a task runs, the phone is pinged this often; a silent phone fails the task.
HEARTBEAT_INTERVAL = 3.0
ADB_BACKOFF = (1, 2, 4, 8, 15, 30)
#: adb 29 (Debian's, the Pi's) never tells track-devices that a TCP phone dropped or is
#: unauthorized: while the tracker is silent, the device list is read this often.
LISTING_CHECK_INTERVAL = 5.0
#: Printed after every shell command: a stream that ends without it was cut short (adb 29
#: just closes the streams of a phone that drops, as if its commands had finished).
SHELL_END = "tmlite-end"


#: Why a running task was cancelled -> the error it ends with.
CANCEL_ERRORS = {"stopped": STOPPED_BY_USER, "lost": DISCONNECTED, "shutdown": INTERRUPTED,
                 "timeout": "timed out"}
#: cancel reasons after which auto-retry may run the task again
RETRYABLE_CANCELS = (None, "lost", "timeout")
BLOCKED_PREFIX = "account blocked:"


class CancelToken:
    """Lets one thread abort another's device I/O: a stop by the user or a lost phone.

    Blocking reads on adb sockets cannot be interrupted by a flag, so the token keeps
    the sockets in use and shuts them down when it is cancelled; the reader then wakes
    at once, sees the reason and raises Stopped or DeviceLost.
    """

    def __init__(self):
        self.reason: Optional[str] = None          # a key of CANCEL_ERRORS
        self.event = threading.Event()
        self._sockets: set = set()
        self._lock = threading.Lock()

    def cancel(self, reason: str) -> None:
        with self._lock:
            if self.reason is None or reason == "stopped":   # a user's stop always counts
                self.reason = reason
            sockets = list(self._sockets)
        self.event.set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def check(self) -> None:
        if self.reason == "lost":
            raise DeviceLost(DISCONNECTED)
        if self.reason is not None:
            raise Stopped(CANCEL_ERRORS[self.reason])

    @contextlib.contextmanager
    def guard(self, sock: socket.socket) -> Iterator[None]:
        with self._lock:
            self._sockets.add(sock)
            cancelled = self.reason is not None
        if cancelled:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        try:
            yield
        finally:
            with self._lock:
                self._sockets.discard(sock)


def _adb_client_class():
    """adbutils' client, minus its habit of starting an adb server on any failed connect.

    adbutils runs ``adb start-server`` (on the default port) whenever a connection to
    the server fails; Lite decides itself when to start a local server, so its
    connections just fail.
    """
    import adbutils
    from adbutils._adb import AdbConnection

    class _Connection(AdbConnection):
        def _safe_connect(self):
            return self._create_socket()

    class Client(adbutils.AdbClient):
        def make_connection(self, timeout: Optional[float] = None):
            conn = _Connection(self.host, self.port)
            if timeout:
                conn.conn.settimeout(timeout)
            return conn

    return Client


def connection_type(serial: str) -> str:
    return "tcp" if re.search(r":\d+$", serial) or serial.startswith("emulator-") else "usb"


class AdbServerLink:
    """One adb server, watched with track-devices; reconnects with backoff.

    The tracking connection blocks until the server reports a change, so watching
    costs nothing while nothing happens. When the server goes away the devices it
    reported become 'disconnected' and the link retries 1, 2, 4 ... 30 s apart,
    starting a local server itself when it owns a loopback address.
    """

    def __init__(self, address: str, manager: "DeviceManager", may_start_server: bool):
        self.address = address
        host, _, port = address.rpartition(":")
        self.host, self.port = host, int(port)
        self.manager = manager
        self.may_start_server = may_start_server
        self.client = _adb_client_class()(host=self.host, port=self.port)
        self.connected = threading.Event()
        self.devices: Dict[str, str] = {}            # serial -> adb state
        self.error = ""
        self.listing_check_interval = LISTING_CHECK_INTERVAL
        #: the adb server process Lite started on this address, stopped with Lite
        self.own_server: Optional[Any] = None
        self._socket: Optional[socket.socket] = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"adb-{address}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        sock = self._socket
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._stop_own_server()

    def _stop_own_server(self) -> None:
        """Stop the adb server Lite started, and no other: the one of this process."""
        server, self.own_server = self.own_server, None
        if server is None or server.poll() is not None:
            return
        log.info("stopping the adb server Lite started on %s", self.address)
        server.terminate()
        try:
            server.wait(timeout=5)
        except Exception:
            server.kill()
            server.wait(timeout=5)

    def _watch(self) -> None:
        failures = 0                              # failed connects since the last success
        while not self._stopping.is_set():
            try:
                conn = self._open_tracker()
            except Exception as exc:
                failures += 1
                self.error = f"{type(exc).__name__}: {exc}"
                delay = ADB_BACKOFF[min(failures - 1, len(ADB_BACKOFF) - 1)]
                if self.may_start_server and (failures == 1 or delay == ADB_BACKOFF[-1]) \
                        and self._start_server():
                    delay = ADB_BACKOFF[0]        # connect to it soon, but never spin
                elif failures in (1, len(ADB_BACKOFF)):
                    log.warning("adb server %s not answering (%s); retrying with backoff "
                                "up to every %s s", self.address, self.error, ADB_BACKOFF[-1])
                self._stopping.wait(delay)
                continue
            failures = 0
            self.error = ""
            self.connected.set()
            log.info("watching devices of adb server %s", self.address)
            session = threading.Event()            # set when this tracker is lost
            threading.Thread(target=self._reconnect_phones, args=(session,), daemon=True,
                             name=f"reconnect-{self.address}").start()
            try:
                with conn:
                    self._socket = conn.conn
                    while not self._stopping.is_set():
                        if self._tracker_speaks(conn.conn):
                            self._report(conn.read_string_block())
                        else:
                            self._report(self._listing())
            except Exception as exc:
                if not self._stopping.is_set():
                    log.warning("lost adb server %s: %s", self.address, exc)
            finally:
                session.set()
                self._socket = None
                self.connected.clear()
                self._report("")                    # every device of it is gone

    def _reconnect_phones(self, session: threading.Event) -> None:
        """adb connect again, with backoff, the network phones connected through Lite:
        a restarted adb server (or one at start-up) knows none of them."""
        for attempt in itertools.count():
            remembered = self.manager.store.connections_via(self.address)
            waiting = {a for a in remembered if self.devices.get(a) != "device"}
            if not waiting or session.is_set() or self._stopping.is_set():
                return
            for address in sorted(waiting):
                try:
                    with self.client.make_connection(timeout=15) as conn:
                        conn.send_command(f"host:connect:{address}")
                        conn.check_okay()
                        reply = conn.read_string_block().strip()
                    log.info("reconnecting %s through %s: %s", address, self.address, reply)
                except Exception as exc:              # the first failure is enough news
                    (log.info if attempt == 0 else log.debug)(
                        "reconnecting %s through %s failed: %s", address, self.address, exc)
            session.wait(ADB_BACKOFF[min(attempt, len(ADB_BACKOFF) - 1)])

    def _tracker_speaks(self, sock: socket.socket) -> bool:
        """Wait for the tracker; False when it stayed silent for a listing check."""
        readable, _, _ = select.select([sock], [], [], self.listing_check_interval)
        return bool(readable)

    def _listing(self) -> str:
        with self.client.make_connection(timeout=5) as conn:
            conn.send_command("host:devices")
            conn.check_okay()
            return conn.read_string_block()

    def _open_tracker(self):
        conn = self.client.make_connection(timeout=5)
        try:
            conn.send_command("host:track-devices")
            conn.check_okay()
        except Exception:
            conn.close()
            raise
        conn.conn.settimeout(None)
        return conn

    def _start_server(self) -> bool:
        """Start a local adb server on this address, with the one adb binary we use.

        It runs as Lite's child (``nodaemon``), in its own session so that a Ctrl-C
        reaches Lite first, and Lite stops it when it exits.
        """
        import subprocess
        if self.own_server is not None and self.own_server.poll() is None:
            return True                             # still starting: give it time
        try:
            import adbutils
            adb = adbutils.adb_path()
            log.info("no adb server answers at %s: starting one (%s)", self.address, adb)
            self.own_server = subprocess.Popen(
                [adb, "-P", str(self.port), "nodaemon", "server"], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            return True
        except Exception as exc:
            log.error("could not start an adb server on %s: %s", self.address, exc)
            return False

    def _report(self, listing: str) -> None:
        current = {}
        for line in listing.splitlines():
            serial, _, state = line.strip().partition("\t")
            if serial and state:
                current[serial] = state
        for serial in set(self.devices) - set(current):
            self.manager.on_state(serial, "disconnected", self)
        for serial, state in current.items():
            if self.devices.get(serial) != state:
                self.manager.on_state(serial, state, self)
        self.devices = current


class DeviceManager:
    """Knows every phone of every adb server, and does all device I/O with deadlines.

    adbutils can wait for minutes on a phone that is connected but silent, so every
    command here opens its stream with a short deadline, reads with the command's
    timeout, and registers its socket with a CancelToken so that a stop or a lost phone
    interrupts it at once.
    """

    def __init__(self, store: Store, servers: Sequence[str],
                 on_online: Callable[[str], None] = lambda serial: None,
                 on_offline: Callable[[str], None] = lambda serial: None,
                 start_local_server: bool = True):
        self.store = store
        self.on_online, self.on_offline = on_online, on_offline
        #: told (service, seconds) after each device call: metrics
        self.on_call: Callable[[str, float], None] = lambda service, seconds: None
        loopback = ("127.0.0.1", "localhost")
        self.links = [AdbServerLink(a, self, start_local_server and
                                    a.rpartition(":")[0] in loopback) for a in servers]
        self._state: Dict[str, Tuple[str, AdbServerLink]] = {}
        self._unresponsive: set = set()
        #: serial -> the phone's own keyboard, set aside while a task types with ours
        self._keyboards: Dict[str, str] = {}
        #: serial -> what was learnt about the phone (its screen size, dump form...)
        self._facts: Dict[str, Dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    # -- life cycle -----------------------------------------------------------
    def start(self) -> None:
        self.store.mark_all_devices("disconnected")
        for link in self.links:
            link.start()

    def stop(self) -> None:
        self._stopping.set()
        for link in self.links:
            link.stop()

    # -- state ----------------------------------------------------------------
    def on_state(self, serial: str, state: str, link: AdbServerLink) -> None:
        """Called by a link when adb reports a change for one of its devices."""
        with self._lock:
            previous = self._state.get(serial, ("disconnected", link))[0]
        log.info("device %s: %s -> %s (adb server %s)", serial, previous, state, link.address)
        try:                  # the row first: a phone seen online takes tasks at once, and
            self.store.upsert_device(  # a task is refused for a phone without a row
                serial, state=state, adb_server=link.address,
                connection=connection_type(serial), last_seen=self.store.clock())
        except StorageFull:                    # the state in memory is what counts
            log.warning("device %s: state %s not stored: the disk is full", serial, state)
        finally:
            with self._lock:
                self._state[serial] = (state, link)
                self._unresponsive.discard(serial)
        if state == "device":
            self.on_online(serial)             # its due tasks start now, not after getprop
            threading.Thread(target=self._identify, args=(serial,), daemon=True,
                             name=f"identify-{serial}").start()
        elif previous == "device":
            self.on_offline(serial)

    def _identify(self, serial: str) -> None:
        """Read model, Android version and battery of a phone that just came online."""
        try:
            self.refresh(serial)
            self.describe(serial)
        except Exception as exc:
            log.warning("could not read the properties of %s: %s", serial, exc)
            with contextlib.suppress(Exception):
                self.store.upsert_device(serial, last_error=f"identify: {exc}"[:500])
        finally:                   # a thread per phone that comes online: no reader kept
            self.store.release_thread()

    def describe(self, serial: str) -> None:
        """Screen size, broadcast input method and app versions, for the farm view."""
        token = CancelToken()
        out = self.run(serial, "shell:wm size; ime list -a -s; pm list packages", timeout=20,
                       token=token).decode("utf-8", "replace")
        size = re.search(r"(\d+)x(\d+)", out)
        words = set(out.split())
        ime = next((i for i in (FAST_INPUT_IME, ADB_KEYBOARD_IME) if i in words), None)
        apps = {}
        for package in (p for ps in APP_PACKAGES.values() for p in ps):
            if "package:" + package in words:
                info = self.run(serial, f"shell:dumpsys package {package}", timeout=20,
                                token=token).decode("utf-8", "replace")
                version = re.search(r"versionName=(\S+)", info)
                apps[package] = version[1] if version else ""
        self.store.upsert_device(serial, ime=ime, screen=f"{size[1]}x{size[2]}" if size
                                 else "", apps=_dump_json(apps), last_error="")

    def refresh(self, serial: str) -> None:
        token = CancelToken()
        out = self.run(serial, "shell:getprop ro.product.model; getprop "
                       "ro.build.version.release; dumpsys battery",
                       timeout=10, token=token).decode("utf-8", "replace").splitlines()
        model = out[0].strip() if out else ""
        version = out[1].strip() if len(out) > 1 else ""
        level = re.search(r"level:\s*(\d+)", "\n".join(out[2:]))
        self.store.upsert_device(serial, model=model, android_version=version,
                                 battery=int(level[1]) if level else None,
                                 last_seen=self.store.clock())

    def state(self, serial: str) -> str:
        with self._lock:
            if serial in self._unresponsive:
                return "offline"
            return self._state.get(serial, ("disconnected", None))[0]

    def is_online(self, serial: str) -> bool:
        return self.state(serial) == "device"

    def mark_unresponsive(self, serial: str) -> None:
        """A phone adb still lists but that stopped answering: offline until it answers."""
        with self._lock:
            if serial in self._unresponsive or serial not in self._state:
                return
            self._unresponsive.add(serial)
        log.warning("device %s is not answering; marking it offline", serial)
        with contextlib.suppress(StorageFull):
            self.store.upsert_device(serial, state="offline")
        threading.Thread(target=self._await_recovery, args=(serial,), daemon=True,
                         name=f"recover-{serial}").start()

    def _await_recovery(self, serial: str) -> None:
        for attempt in range(10 ** 9):
            if self._stopping.wait(ADB_BACKOFF[min(attempt, len(ADB_BACKOFF) - 1)]):
                return
            with self._lock:
                if serial not in self._unresponsive:
                    return                          # adb reported it anew meanwhile
            if self.ping(serial):
                with self._lock:
                    self._unresponsive.discard(serial)
                log.info("device %s answers again", serial)
                with contextlib.suppress(StorageFull):
                    self.store.upsert_device(serial, state="device",
                                             last_seen=self.store.clock())
                self.on_online(serial)
                return

    def link_of(self, serial: str) -> AdbServerLink:
        with self._lock:
            entry = self._state.get(serial)
        if entry is None:
            if len(self.links) == 1:
                return self.links[0]
            raise DeviceLost(f"device {serial} is not connected")
        return entry[1]

    # -- what is known of each phone ----------------------------------------------
    def set_aside_keyboard(self, serial: str, ime: str) -> None:
        """A task switched the phone to our input method: remember the phone's own,
        across tasks, so that a task that failed before giving it back is repaired by
        the next one rather than taking ours for the phone's."""
        with self._lock:
            self._keyboards[serial] = ime

    def own_keyboard(self, serial: str) -> Optional[str]:
        with self._lock:
            return self._keyboards.get(serial)

    def remember(self, serial: str, key: str, value: Any) -> None:
        with self._lock:
            self._facts.setdefault(serial, {})[key] = value

    def recall(self, serial: str, key: str) -> Any:
        with self._lock:
            return self._facts.get(serial, {}).get(key)

    # -- I/O with deadlines -----------------------------------------------------
    @contextlib.contextmanager
    def open_service(self, serial: str, service: str, token: CancelToken,
                     answer_timeout: float = DEVICE_ANSWER_TIMEOUT):
        """A stream to one service of the phone; DeviceLost if the phone does not answer."""
        token.check()
        link = self.link_of(serial)
        try:
            conn = link.client.make_connection(timeout=answer_timeout)
        except Exception as exc:
            raise DeviceLost(f"adb server {link.address} not answering: {exc}") from None
        try:
            with token.guard(conn.conn):
                try:
                    conn.send_command(f"host:transport:{serial}")
                    conn.check_okay()
                    conn.send_command(service)
                    conn.check_okay()
                except Exception as exc:
                    token.check()
                    raise DeviceLost(f"{DISCONNECTED} ({exc})") from None
                yield conn.conn
        finally:
            conn.close()

    def run(self, serial: str, service: str, *, timeout: float, token: CancelToken,
            answer_timeout: float = DEVICE_ANSWER_TIMEOUT,
            marked: Optional[bool] = None) -> bytes:
        """Run a shell:/exec: service and return all it printed, within the timeout."""
        began = time.monotonic()
        try:
            return self._run(serial, service, timeout=timeout, token=token,
                             answer_timeout=answer_timeout, marked=marked)
        finally:
            self.on_call(service, time.monotonic() - began)

    def _run(self, serial: str, service: str, *, timeout: float, token: CancelToken,
             answer_timeout: float, marked: Optional[bool]) -> bytes:
        """A shell command's output must end with SHELL_END: one cut short by a lost
        phone is DeviceLost, never a success with partial output. An exec: command gets
        the marker too when ``marked`` (text output; a binary one checks its own end)."""
        deadline = time.monotonic() + timeout
        shell = service.startswith("shell:") if marked is None else marked
        if shell:
            service += "\necho " + SHELL_END
        chunks = []
        with self.open_service(serial, service, token, answer_timeout) as sock:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CommandTimeout(f"{service[:80]!r} took more than {timeout:g} s")
                sock.settimeout(remaining)
                try:
                    chunk = sock.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    token.check()
                    raise DeviceLost(DISCONNECTED) from None
                if not chunk:
                    break
                chunks.append(chunk)
        token.check()
        out = b"".join(chunks)
        if not shell:
            return out
        end = out.rfind(SHELL_END.encode())
        if end < 0 or out[end + len(SHELL_END):].strip():
            command = service.partition(":")[2][:40]
            raise DeviceLost(f"{DISCONNECTED} (the output of {command!r} was cut short)")
        return out[:end]

    def push(self, serial: str, source: Any, remote: str, *, token: CancelToken,
             mode: int = 0o644, timeout: float = 120) -> None:
        """SYNC SEND: write bytes, or a local file read 64 KiB at a time, to the phone."""
        deadline = time.monotonic() + timeout
        with self.open_service(serial, "sync:", token) as sock:
            def send(payload: bytes) -> None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CommandTimeout(f"push to {remote} took more than {timeout:g} s")
                sock.settimeout(remaining)
                sock.sendall(payload)
            try:
                header = f"{remote},{mode}".encode()
                send(b"SEND" + struct.pack("<I", len(header)) + header)
                for chunk in _chunks(source, 64 * 1024):
                    send(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
                send(b"DONE" + struct.pack("<I", int(time.time())))
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                reply = _recv_exact(sock, 8)
                if reply[:4] == b"FAIL":
                    message = _recv_exact(sock, struct.unpack("<I", reply[4:])[0])
                    raise DeviceError("push", f"push to {remote} failed: "
                                      f"{message.decode('utf-8', 'replace')}")
                if reply[:4] != b"OKAY":
                    raise DeviceError("push", f"push to {remote}: unexpected reply {reply[:4]!r}")
                with contextlib.suppress(OSError):
                    sock.sendall(b"QUIT" + struct.pack("<I", 0))
            except socket.timeout:
                raise CommandTimeout(f"push to {remote} took more than {timeout:g} s") from None
            except OSError:
                token.check()
                raise DeviceLost(DISCONNECTED) from None

    def ping(self, serial: str, token: Optional[CancelToken] = None) -> bool:
        try:
            out = self.run(serial, "shell:echo tmlite-ok", timeout=DEVICE_ANSWER_TIMEOUT,
                           token=token or CancelToken())
            return b"tmlite-ok" in out
        except (DeviceLost, CommandTimeout):
            return False

    def screenshot(self, serial: str, token: Optional[CancelToken] = None) -> bytes:
        png = self.run(serial, "exec:screencap -p", timeout=20, token=token or CancelToken())
        if not png.startswith(b"\x89PNG"):
            raise DeviceError("screenshot", "the phone did not return a PNG screenshot")
        if not png.rstrip().endswith(b"IEND\xaeB`\x82"):       # the stream was cut short
            raise DeviceLost(f"{DISCONNECTED} (the screenshot was cut short)")
        return png

    # -- network phones ----------------------------------------------------------
    def connect(self, address: str) -> str:
        """adb connect through the first adb server that answers; returns adb's reply.

        A phone connected is remembered, to be connected again when that adb server
        restarts and when Lite starts.
        """
        link, reply = self._host_command(f"host:connect:{address}")
        if "connected to" in reply:
            self.store.remember_connection(address, link.address)
        return reply

    def disconnect(self, address: str) -> str:
        link, reply = self._host_command(f"host:disconnect:{address}")
        self.store.remember_connection(address, None)
        return reply

    def _host_command(self, command: str) -> Tuple[AdbServerLink, str]:
        errors = []
        for link in self.links:
            try:
                with link.client.make_connection(timeout=15) as conn:
                    conn.send_command(command)
                    conn.check_okay()
                    return link, conn.read_string_block()
            except Exception as exc:
                errors.append(f"{link.address}: {exc}")
        raise Unavailable("no adb server answers: " + "; ".join(errors))

    def status(self) -> List[Dict[str, Any]]:
        return [{"address": l.address, "connected": l.connected.is_set(),
                 "devices": len(l.devices), "error": l.error} for l in self.links]


@dataclass
class Frame:
    """One capture of a phone's screen, as the phone encoded it (never decoded here)."""

    data: bytes
    mime: str
    at: float                                  # monotonic time of the capture


class ScreenHub:
    """Live screens for the farm view within a per-box budget of frames per second.

    A capture is shared by every viewer of the phone while it is fresh enough, and a
    capture already under way is waited for rather than repeated. Only phones that
    viewers ask for are captured (the page asks only for the tiles it shows), and the
    budget is split among the phones asked for in the last few seconds: the opened
    phone ("focus") gets most of it, the grid shares the rest. A viewer is told when to
    ask next, so nothing polls here.
    """

    #: a phone counts as viewed until this long after its viewers' next request was due
    VIEW_GRACE = 2.0
    #: the opened phone's share of the budget when the grid is watched too
    FOCUS_SHARE = 0.6

    def __init__(self, devices: "DeviceManager", fps: float,
                 clock: Callable[[], float] = time.monotonic):
        self.devices = devices
        self.fps = fps
        self.clock = clock
        self._frames: Dict[Tuple[str, str], Frame] = {}
        self._capturing: Dict[Tuple[str, str], threading.Event] = {}
        #: serial -> (viewed until, opened): a phone counts as viewed while its viewers
        #: are expected back, so a slow grid tile still holds its share
        self._viewed: Dict[str, Tuple[float, bool]] = {}
        self._no_jpeg: set = set()
        self._lock = threading.Lock()
        self.captures = 0                      #: how many captures were made (bench)

    def interval(self, serial: str, focus: bool) -> float:
        """Seconds between captures of this phone under the budget right now."""
        now = self.clock()
        with self._lock:
            viewed = {s: f for s, (until, f) in self._viewed.items()
                      if until > now or s == serial}
        viewed[serial] = focus or viewed.get(serial, False)
        focused = sum(1 for f in viewed.values() if f)
        grid = len(viewed) - focused
        if focus:
            share = self.fps * (self.FOCUS_SHARE if grid else 1.0) / focused
        else:
            share = self.fps * ((1 - self.FOCUS_SHARE) if focused else 1.0) / grid
        return 1.0 / share

    def frame(self, serial: str, fmt: str = "png", max_age_ms: Optional[int] = None,
              view: Optional[str] = None) -> Tuple[Frame, float]:
        """A frame of the phone and the seconds the viewer should wait before the next.

        ``view`` ("grid" or "focus") puts the request under the budget; a plain request
        gets a capture not older than ``max_age_ms`` (a fresh one by default).
        """
        key = (serial, fmt)
        focus = view == "focus"
        now = self.clock()
        gap = 0.0
        if view:
            with self._lock:
                self._viewed[serial] = (now + self.VIEW_GRACE, focus)
            gap = self.interval(serial, focus)
            with self._lock:
                self._viewed[serial] = (now + gap + self.VIEW_GRACE, focus)
        while True:
            with self._lock:
                cached = self._frames.get(key)
                if cached is not None:
                    age = self.clock() - cached.at
                    if age <= max(gap, (max_age_ms or 0) / 1000):
                        return cached, max(0.0, gap - age)
                running = self._capturing.get(key)
                if running is None:
                    self._capturing[key] = threading.Event()
                    break
            running.wait(30)                       # another viewer's capture: share it
            with self._lock:
                cached = self._frames.get(key)
            if cached is not None and cached.at >= now:
                return cached, gap
        try:
            frame = self._capture(serial, fmt)
            with self._lock:
                self._frames[key] = frame
                self.captures += 1
            return frame, gap
        finally:
            with self._lock:
                self._capturing.pop(key).set()

    def _capture(self, serial: str, fmt: str) -> Frame:
        """JPEG where the phone encodes it (screencap -j, Android 14+), else PNG."""
        if fmt == "jpeg" and serial not in self._no_jpeg:
            data = self.devices.run(serial, "exec:screencap -j", timeout=20,
                                    token=CancelToken())
            if data.startswith(b"\xff\xd8"):
                return Frame(data, "image/jpeg", self.clock())
            self._no_jpeg.add(serial)             # this phone cannot: PNG from now on
        return Frame(self.devices.screenshot(serial), "image/png", self.clock())

    def forget(self, serial: str) -> None:
        with self._lock:
            for key in [k for k in self._frames if k[0] == serial]:
                del self._frames[key]
            self._viewed.pop(serial, None)


def _chunks(source: Any, size: int) -> Iterator[bytes]:
    """Pieces of a bytes object, or of a file read as it goes."""
    if isinstance(source, (bytes, bytearray)):
        for offset in range(0, len(source), size):
            yield bytes(source[offset:offset + size])
        return
    with open(source, "rb") as stream:
        for chunk in iter(lambda: stream.read(size), b""):
            yield chunk


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise OSError("connection closed")
        data += chunk
    return data


###############################################################################
# Phone helpers ###############################################################
###############################################################################

#: App packages by platform, in the order they are looked for on a phone.
APP_PACKAGES = {
    "tiktok": ("com.zhiliaoapp.musically", "com.ss.android.ugc.trill"),
    "instagram": ("com.instagram.android",),
}
#: Buttons that close the pop-ups any app may show (system permission prompts, rating
#: and notification nags). Apps add their own with ``Phone.watch``.
POPUP_BUTTONS = (
    "Allow", "While using the app", "Only this time", "Not now", "Not Now", "Skip",
    "Got it", "Dismiss", "Agree and continue", "Remind me later", "Continue anyway",
    "Maybe later", "No thanks", "Don't allow",
)
#: A runtime permission prompt is answered with its fullest grant, found by the AOSP ids
#: (PermissionController's grant_permissions.xml) in any language: the gallery needs
#: every photo, and Android 14's other choices ("Select photos and videos", then the
#: deny button, drawn last) would leave the pushed media out of it.
PERMISSION_GRANTS = ("permission_allow_all_button", "permission_allow_foreground_only_button",
                     "permission_allow_button")
#: How a pop-up the table names is closed when a tap does not do it: an entry's
#: ``"dismiss"`` (``{"text": "Swipe up for more", "dismiss": "swipe up"}``); without one
#: its button is tapped. A swipe is slow (POPUP_SWIPE_MS), as a person pushes a tutorial
#: away: a fling could move the screen below too.
POPUP_SWIPES = {"swipe up": "up", "swipe down": "down", "swipe left": "left",
                "swipe right": "right"}
POPUP_SWIPE_MS = 600
#: Packages whose windows are pop-ups over the app (runtime permission prompts).
POPUP_PACKAGES = ("com.android.permissioncontroller", "com.google.android.permissioncontroller",
                  "com.android.packageinstaller")
#: The ids of an Android AlertDialog: a window with these is a dialog over the screen.
DIALOG_IDS = ("android:id/alertTitle", "android:id/message", "android:id/parentPanel")
#: Lists of what people wrote (comments, captions, search results): a block text in a
#: row of one is somebody's words, not the app speaking, unless the list is in a dialog.
CONTENT_LISTS = ("RecyclerView", "ListView")
#: Ids (their last part) of the containers the apps' own dialogs and sheets sit in:
#: Instagram's dialog_container / dialog_root_view (GramAddict core/views.py
#: detect_block calls a block "the dialog shows"), bottom sheets, Android's AlertDialog.
DIALOG_CONTAINERS = ("dialog_container", "dialog_root_view", "bottom_sheet_container",
                     "parentPanel", "contentPanel")
FAST_INPUT_IME = "com.github.tikmatrix/.FastInputIME"
ADB_KEYBOARD_IME = "com.android.adbkeyboard/.AdbIME"
KEYS = {"back": "KEYCODE_BACK", "home": "KEYCODE_HOME", "enter": "KEYCODE_ENTER",
        "delete": "KEYCODE_DEL", "search": "KEYCODE_SEARCH", "menu": "KEYCODE_MENU",
        "tab": "KEYCODE_TAB", "space": "KEYCODE_SPACE", "recent": "KEYCODE_APP_SWITCH",
        "volume_up": "KEYCODE_VOLUME_UP", "volume_down": "KEYCODE_VOLUME_DOWN",
        "power": "KEYCODE_POWER", "play_pause": "KEYCODE_MEDIA_PLAY_PAUSE",
        "wakeup": "KEYCODE_WAKEUP"}
SELECTOR_KEYS = {"text", "text_contains", "text_regex", "desc", "desc_contains",
                 "desc_regex", "resource_id", "class_name", "clickable", "editable",
                 "selected", "focused", "package", "inside", "any_of"}
MEDIA_DIR = "/sdcard/DCIM/Camera"
#: Seconds between two dumps of a wait that sees nothing new: a dump costs 1-2 s on a
#: phone, so waits back off instead of dumping back to back.
BACKOFF = (0.25, 0.5, 1.0, 2.0)
#: A step done ``once`` acts again only when the screen stayed unchanged, to the byte,
#: since its tap through this many looks after the first: about 8 s of dumps and
#: pauses on a real phone, while an app that took the tap shows it within a dump (a
#: disabled button, a spinner, another screen).
UNCHANGED_LOOKS = 3
#: The file form of the dump, for phones whose uiautomator cannot write to /dev/tty.
#: One round trip still: the old file is removed first, so a failed dump prints no
#: stale screen.
DUMP_FILE = "/sdcard/tmlite_window_dump.xml"


class AccountBlocked(StepFailed):
    """The app said the account may not act now ("Action Blocked", "Try again later",
    "You're tapping too fast"). Retrying soon makes it worse: no auto-retry; ``said`` is
    the app's words, for a cooldown."""

    def __init__(self, step: str, said: str):
        super().__init__(step, f"account blocked: {said}", retry=False)
        self.said = said


class AppLeft(StepFailed):
    """The app the task drives is no longer in front (it crashed back to the launcher):
    the flow can start again from the app's start. ``acted``: the step had already
    acted (its tap may have taken effect before the app went)."""

    acted = False


#: Android's "<App> keeps stopping" dialog: its close button (AOSP
#: frameworks/base/core/res/res/layout/app_error_dialog.xml).
CRASH_CLOSE_ID = "android:id/aerr_close"
#: Looks in a row without the app in front before a step gives up on it (an app
#: starting cold shows the launcher for a look or two).
APP_ABSENT_LOOKS = 4


#: Directional marks the apps wrap text in (TikTok shows "\u200e\u2068name\u2069" for
#: every handle: TK search.py and its 47.0.3 test, docs/research/sources_s6.md 5a). A
#: dump's text and desc are read without them, so a handle compares as typed.
BIDI_MARKS = dict.fromkeys(map(ord, "\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                                    "\u2066\u2067\u2068\u2069"))


def as_dumped(text: str) -> str:
    """Text as the phone helpers read a dump: characters outside the BMP become two
    dots (uiautomator), directional marks are dropped (UiTree)."""
    return "".join(".." if ord(c) > 0xFFFF else c for c in text.translate(BIDI_MARKS))


@dataclass
class Node:
    """One element of a uiautomator window dump."""

    text: str
    resource_id: str
    desc: str
    class_name: str
    package: str
    bounds: Tuple[int, int, int, int]
    clickable: bool
    enabled: bool
    selected: bool
    checked: bool
    focused: bool
    #: index of the parent node in its UiTree, None for a window's root
    parent: Optional[int] = None

    @property
    def center(self) -> Tuple[int, int]:
        left, top, right, bottom = self.bounds
        return (left + right) // 2, (top + bottom) // 2

    @property
    def label(self) -> str:
        return self.text.strip() or self.desc.strip()

    def matches(self, sel: Dict[str, Any]) -> bool:
        """Whether this node alone satisfies a selector (``inside`` is the tree's)."""
        if "any_of" in sel:
            return any(self.matches(alt) for alt in sel["any_of"])
        return all(_MATCHERS[key](self, want) for key, want in sel.items()
                   if key != "inside")


def _id_matches(node: Node, want: str) -> bool:
    return node.resource_id == want or node.resource_id.endswith(":id/" + want)


def _class_matches(node: Node, want: str) -> bool:
    return node.class_name == want or node.class_name.endswith("." + want)


def _in_content_list(tree: "UiTree", node: Node) -> bool:
    """Whether the node is in a row of a list (CONTENT_LISTS) that no dialog or sheet
    (DIALOG_CONTAINERS) holds."""
    in_list, index = False, node.parent
    while index is not None:
        above = tree.nodes[index]
        if above.resource_id.rpartition("/")[2] in DIALOG_CONTAINERS:
            return False
        in_list = in_list or any(_class_matches(above, c) for c in CONTENT_LISTS)
        index = above.parent
    return in_list


_MATCHERS: Dict[str, Callable[[Node, Any], bool]] = {
    "text": lambda n, w: n.text.strip() == w,
    "text_contains": lambda n, w: w.lower() in n.text.lower(),
    "text_regex": lambda n, w: re.fullmatch(w, n.text.strip()) is not None,
    "desc": lambda n, w: n.desc.strip() == w,
    "desc_contains": lambda n, w: w.lower() in n.desc.lower(),
    "desc_regex": lambda n, w: re.fullmatch(w, n.desc.strip()) is not None,
    "resource_id": _id_matches,
    "class_name": _class_matches,
    "clickable": lambda n, w: n.clickable == bool(w),
    "selected": lambda n, w: n.selected == bool(w),
    "focused": lambda n, w: n.focused == bool(w),
    "package": lambda n, w: n.package == w,
    # a search field keeps the query after submitting: a result row is told apart from
    # the field by not being an EditText
    "editable": lambda n, w: _class_matches(n, "EditText") == bool(w),
}


class UiTree:
    """A parsed window dump: the nodes in document order, and the XML it came from."""

    def __init__(self, xml: str):
        self.xml = xml
        self.nodes: List[Node] = []
        try:
            root = ET.fromstring(xml.encode("utf-8"))
        except ET.ParseError as exc:
            raise DeviceError("ui_dump", f"the window dump is not XML: {exc}") from None
        self._add(root, None)

    def _add(self, element: ET.Element, parent: Optional[int]) -> None:
        for el in element:
            if el.tag != "node":
                continue
            nums = [int(n) for n in re.findall(r"-?\d+", el.get("bounds", ""))] + [0] * 4
            self.nodes.append(Node(
                text=el.get("text", "").translate(BIDI_MARKS),
                resource_id=el.get("resource-id", ""),
                desc=el.get("content-desc", "").translate(BIDI_MARKS),
                class_name=el.get("class", ""),
                package=el.get("package", ""), bounds=tuple(nums[:4]),
                clickable=el.get("clickable") == "true", enabled=el.get("enabled") != "false",
                selected=el.get("selected") == "true", checked=el.get("checked") == "true",
                focused=el.get("focused") == "true", parent=parent))
            self._add(el, len(self.nodes) - 1)

    def find(self, **sel: Any) -> Optional[Node]:
        found = self.find_all(**sel)
        return found[0] if found else None

    def find_all(self, **sel: Any) -> List[Node]:
        """The visible nodes a selector matches, in document order.

        ``any_of`` alternatives are in order of preference: the nodes of the first
        alternative that matches anything win, so a resource id known for this app
        version is preferred to a label that may also match something else.
        """
        check_selector(sel)
        visible = [n for n in self.nodes if n.bounds[2] > n.bounds[0]]
        common = {k: v for k, v in sel.items() if k != "any_of"}
        for alternative in sel.get("any_of") or [{}]:
            wanted = {**common, **alternative}
            nodes = [n for n in visible if n.matches(wanted)
                     and ("inside" not in wanted or self.inside(n, wanted["inside"]))]
            if nodes:
                return nodes
        return []

    def inside(self, node: Node, sel: Dict[str, Any]) -> bool:
        """Whether an ancestor of the node matches the selector."""
        index = node.parent
        while index is not None:
            ancestor = self.nodes[index]
            if ancestor.matches(sel):
                return True
            index = ancestor.parent
        return False

    def labels(self, limit: int = 15) -> List[str]:
        """The first texts and descriptions shown: what a failure says the screen was."""
        seen: List[str] = []
        for node in self.nodes:
            if node.label and node.label not in seen and node.bounds[2] > node.bounds[0]:
                seen.append(node.label[:40])
        return seen[:limit]

    def describe(self) -> str:
        packages = [n.package for n in self.nodes if n.package]
        app = max(set(packages), key=packages.count) if packages else "nothing"
        return f"{app}: " + ", ".join(repr(s) for s in self.labels())


def check_selector(sel: Dict[str, Any]) -> None:
    if not sel:
        raise ValueError("a selector needs at least one of " + ", ".join(sorted(SELECTOR_KEYS)))
    unknown = set(sel) - SELECTOR_KEYS
    if unknown:
        raise ValueError(f"unknown selector keys {sorted(unknown)}")
    if "any_of" in sel and not sel["any_of"]:
        raise ValueError("any_of needs at least one alternative")
    for alt in sel.get("any_of", ()):
        check_selector(alt)
    if "inside" in sel:
        check_selector(sel["inside"])


def input_text_args(text: str) -> List[str]:
    """ASCII text as the arguments of Android's `input text`, one call each.

    `input text` turns "%s" into a space and changes nothing else, so spaces are sent as
    "%s", and a "%s" the user wrote is typed in two calls: "%" ends one, "s" starts the
    next. (The arguments are shell-quoted later, like every argument.)
    """
    return [piece.replace(" ", "%s") for piece in re.split(r"(?<=%)(?=s)", text) if piece]


def _xml_of(output: str) -> Optional[str]:
    """The hierarchy in a dump's output: uiautomator prints its "dumped to" line after
    the XML (to the same stream with /dev/tty), and some phones print warnings before."""
    start, end = output.find("<?xml"), output.rfind("</hierarchy>")
    if start < 0:
        start = output.find("<hierarchy")
    if start < 0 or end < 0:
        return None
    return output[start:end + len("</hierarchy>")]


Selector = Dict[str, Any]
#: what a step expects afterwards: a selector that must show, or a test of the screen
Expectation = Any
GONE = "gone"        #: expect=GONE: the element acted on is no longer shown


class Phone:
    """What a script drives a phone with (SPEC 6). Every call checks the stop flag.

    Arguments given as a list are quoted for the device shell, so text from users never
    reaches it unquoted; a string command is passed as it is and is for constants only.

    Screens are read with closed-loop steps (``step``, ``wait_any``): the last dump is
    kept until something is done to the phone, so the dump that confirms one step is the
    one the next step acts on. ``dumps`` counts them (a dump takes 1-2 s on a phone).
    """

    #: scripts raise these (they do not import the server) for a step that fails
    ElementNotFound = ElementNotFound
    StepFailed = StepFailed
    AccountBlocked = AccountBlocked
    AppLeft = AppLeft

    def __init__(self, devices: DeviceManager, serial: str, token: CancelToken,
                 log: Callable[[str], None] = None):
        self.devices = devices
        self.serial = serial
        self.token = token
        self._log = log or (lambda line: None)
        self.last_dump: Optional[str] = None
        self.dumps = 0
        self._screen: Optional[UiTree] = None     # the last dump, while nothing changed
        self._popups: List[Selector] = [{"resource_id": grant} for grant in PERMISSION_GRANTS] \
            + [{"text": label} for label in POPUP_BUTTONS]
        self._blocks: List[Selector] = []
        #: what this task typed, as a dump shows it: a block text in it (a comment that
        #: says "too many attempts") is the task's own words, not the app's
        self._typed: List[str] = []
        self._app: Optional[str] = None           # the package a task drives, if told
        self._absent = 0                          # looks in a row without it in front
        self._ime: Optional[str] = None           # the broadcast IME found, "" for none
        self._ime_selected = False
        self._sdk: Optional[int] = None
        self._stay_on_before: Optional[str] = None

    # -- shell ------------------------------------------------------------------
    def shell(self, args: Any, timeout: float = 30) -> str:
        """Run a command; it may change the screen, so the next look dumps anew."""
        self.changed()
        return self._run(args, timeout)

    def _run(self, args: Any, timeout: float = 30) -> str:
        """Run a command that changes nothing on the screen."""
        command = " ".join(shlex.quote(str(a)) for a in args) \
            if isinstance(args, (list, tuple)) else str(args)
        out = self.devices.run(self.serial, "shell:" + command, timeout=timeout,
                               token=self.token)
        return out.decode("utf-8", "replace")

    def push(self, local: Any, remote: str, timeout: float = 300) -> None:
        """Copy a file of the box to the phone, streamed (a video need not fit in RAM)."""
        self.devices.push(self.serial, Path(local), remote, token=self.token,
                          timeout=timeout)

    def sdk(self) -> int:
        if self._sdk is None:
            text = self._run(["getprop", "ro.build.version.sdk"]).strip()
            self._sdk = int(text) if text.isdigit() else 0
        return self._sdk

    # -- before and after a task -------------------------------------------------------
    def prepare(self, package: str) -> Dict[str, str]:
        """Make the phone usable and say what it has, in one round trip: wake the screen,
        dismiss a keyguard without PIN, keep the screen on while plugged in (given back
        by ``restore``), and read the package's version and the phone's language.

        Fails at once (no auto-retry) when the app is not installed."""
        pkg = shlex.quote(package)
        self.changed()
        out = self._run(
            "input keyevent KEYCODE_WAKEUP; wm dismiss-keyguard; "
            "echo tmlite:stay; settings get global stay_on_while_plugged_in; "
            "settings put global stay_on_while_plugged_in 7; "
            "echo tmlite:locale; getprop persist.sys.locale; getprop ro.product.locale; "
            f"echo tmlite:path; pm path {pkg}; echo tmlite:package; dumpsys package {pkg}")
        facts: Dict[str, str] = {}
        for section in re.split(r"^tmlite:", out, flags=re.M)[1:]:
            name, _, body = section.partition("\n")
            facts[name.strip()] = body.strip()
        version = re.search(r"versionName=([\w.]+)", facts.pop("package", ""))
        facts["version"] = version.group(1) if version else ""
        facts["locale"] = (facts.get("locale", "").split() or [""])[0]
        if self._stay_on_before is None:
            self._stay_on_before = facts.get("stay", "").strip() or "0"
        if "package:" not in facts.get("path", ""):
            raise StepFailed("check the phone", f"{package} is not installed on "
                             f"{self.serial}", retry=False)
        return facts

    def restore(self) -> None:
        """After a task, however it ended (a fresh token: the task's own may be
        cancelled): the phone's own keyboard and screen timeout back."""
        commands = []
        own = self.devices.own_keyboard(self.serial)
        if self._ime and own and own not in (self._ime, "null"):
            commands.append("ime set " + shlex.quote(own))
        if self._stay_on_before is not None and self._stay_on_before != "7":
            value = self._stay_on_before if self._stay_on_before.isdigit() else "0"
            commands.append(f"settings put global stay_on_while_plugged_in {value}")
        if commands:
            self._run_cleanup("; ".join(commands), timeout=10)

    def _run_cleanup(self, command: str, timeout: float = 30) -> None:
        """A command that puts the phone back after a task: on a fresh token, since the
        task's own may be cancelled (a stopped task must still clean up)."""
        self.devices.run(self.serial, "shell:" + command, timeout=timeout,
                         token=CancelToken())


    def app_version(self, package: str) -> str:
        """versionName from `dumpsys package`, or "" when the phone does not say."""
        out = self._run(["dumpsys", "package", package])
        match = re.search(r"versionName=([\w.]+)", out)
        return match.group(1) if match else ""

    # -- the screen -----------------------------------------------------------------
    def dump(self, step: str = "read the screen") -> UiTree:
        """The current window hierarchy, in one round trip.

        The XML comes on stdout (`uiautomator dump /dev/tty` through exec:, like `adb
        exec-out`); a phone that prints only the status line there gets the file form
        from then on. uiautomator cannot dump while a video plays ("could not get idle
        state"): the screen is tapped in the middle to pause it, then dumped again; any
        other failure is tried again after a pause.
        """
        error = ""
        for attempt in range(5):
            xml, error = self._dump_once()
            if xml is not None:
                self.dumps += 1
                self.last_dump = xml
                self._screen = UiTree(xml)
                return self._screen
            if "idle" in error and attempt in (0, 2):      # pause the video
                size = self.screen_size()
                self.shell(["input", "tap", str(size[0] // 2), str(size[1] // 2)])
            elif "idle" in error and attempt == 3:         # a dialog took the taps
                self.press("back")
            else:
                self.sleep(BACKOFF[min(attempt, len(BACKOFF) - 1)])
        raise StepFailed(step, f"could not read the screen: uiautomator dump failed "
                         f"5 times: {error.splitlines()[0] if error else 'no output'}")

    def _dump_once(self) -> Tuple[Optional[str], str]:
        to_file = self.devices.recall(self.serial, "dump_to_file")
        command = (f"rm -f {DUMP_FILE}; uiautomator dump {DUMP_FILE} >/dev/null; "
                   f"cat {DUMP_FILE}") if to_file else "uiautomator dump /dev/tty"
        if to_file:
            out = self._run(command, timeout=30)
        else:      # exec: no terminal in between, raw bytes; a dump cut short is no screen
            out = self.devices.run(self.serial, "exec:" + command, timeout=30,
                                   token=self.token, marked=True).decode("utf-8", "replace")
        xml = _xml_of(out)
        if xml is None and not to_file and "dumped to" in out and "ERROR" not in out:
            # only the status line: this phone's uiautomator cannot write to /dev/tty
            self.devices.remember(self.serial, "dump_to_file", True)
            return self._dump_once()
        return xml, out.strip() or "no output"

    def screen(self, step: str = "read the screen") -> UiTree:
        """The screen as last dumped, if nothing was done to the phone since; else a
        fresh dump."""
        return self._screen if self._screen is not None else self.dump(step)

    def changed(self) -> None:
        """Something may have changed the screen: the next look dumps it anew."""
        self._screen = None

    def screen_size(self) -> Tuple[int, int]:
        if self.devices.recall(self.serial, "size") is None:
            match = re.search(r"(\d+)x(\d+)", self._run(["wm", "size"]))
            self.devices.remember(self.serial, "size", (int(match[1]), int(match[2]))
                                  if match else (1080, 2400))
        return self.devices.recall(self.serial, "size")

    def find(self, **sel: Any) -> Optional[Node]:
        return self.dump().find(**sel)

    def exists(self, **sel: Any) -> bool:
        return self.find(**sel) is not None

    def watch(self, popups: Sequence[Selector] = (), blocks: Sequence[Selector] = (),
              package: Optional[str] = None) -> None:
        """Teach the phone an app's pop-ups (the button that closes each, or a selector
        with how it is closed: ``"dismiss": "swipe up"``, see POPUP_SWIPES), the screens
        that say the account is blocked, and the app's package (a step whose app left
        the screen raises AppLeft); every look checks for them first."""
        for entry in popups:
            if entry.get("dismiss", "tap") not in ("tap", *POPUP_SWIPES):
                raise ValueError(f"unknown pop-up dismissal {entry['dismiss']!r}")
        self._popups = list(popups) + [p for p in self._popups if p not in popups]
        self._blocks = list(blocks) + [b for b in self._blocks if b not in blocks]
        self._app = package or self._app

    def check_screen(self, tree: UiTree, step: str) -> None:
        """What every look checks before anything else: a block screen, and whether the
        app is still in front (a crash dialog is closed; AppLeft either way)."""
        self.check_blocked(tree, step)
        if self._app is None:
            return
        crash = tree.find(resource_id=CRASH_CLOSE_ID)
        if crash is not None:
            self.tap(crash)
            self._absent = 0
            raise AppLeft(step, "the app stopped (a crash dialog showed)")
        if any(n.package == self._app for n in tree.nodes):
            self._absent = 0
            return
        self._absent += 1
        if self._absent >= APP_ABSENT_LOOKS:
            self._absent = 0
            raise AppLeft(step, f"{self._app} is no longer on the screen (it closed or "
                          f"crashed); the screen showed {tree.describe()}")

    def check_blocked(self, tree: UiTree, step: str) -> None:
        """A block text counts where the app says it: not in a field, not in another
        app's window (a notification's text is in the dump), not in what this task
        typed (its comment or caption showing in a list), not in a row of a list of
        what people wrote (another user's comment quoting "Too many attempts")."""
        for sel in self._blocks:
            node = next((n for n in tree.find_all(**sel)
                         if self._says_blocked(n, sel) and not _in_content_list(tree, n)),
                        None)
            if node is not None:
                said = " ".join(n.label for n in tree.nodes if n.label and (
                    n is node or n.resource_id == "android:id/message"))
                raise AccountBlocked(step, said or node.label)

    def _says_blocked(self, node: Node, sel: Selector) -> bool:
        if _class_matches(node, "EditText") or (
                self._app is not None and node.package not in (self._app, "android", "")):
            return False
        unsaid = node.text, node.desc                  # the node without the typed words
        for typed in self._typed:
            unsaid = tuple(part.replace(typed, " ") for part in unsaid)
        return dataclasses.replace(node, text=unsaid[0], desc=unsaid[1]).matches(sel)

    def popup(self, tree: UiTree, keep: Optional[Selector] = None
              ) -> Optional[Tuple[Node, str]]:
        """A pop-up on top of the screen, if one shows: (the node that closes it, how:
        "tap" or one of POPUP_SWIPES). A known pop-up, a permission prompt, or an
        Android dialog (its positive button). Not when the step's own target is that
        node."""
        for entry in self._popups:
            sel = {k: v for k, v in entry.items() if k != "dismiss"}
            node = tree.find(**sel)
            if node is not None and not (keep and tree.find(**keep) is node):
                return node, entry.get("dismiss", "tap")
        for node in reversed(tree.nodes):           # the topmost window is drawn last
            foreign = node.package in POPUP_PACKAGES and node.clickable and node.label
            dialog = node.resource_id == "android:id/button1" and any(
                n.resource_id in DIALOG_IDS for n in tree.nodes)
            if (foreign or dialog) and not (keep and tree.find(**keep) is node):
                return node, "tap"
        return None

    def dismiss_popup(self, tree: Optional[UiTree] = None,
                      keep: Optional[Selector] = None) -> bool:
        """Close the pop-up on top, if one shows: a tap on its button, or the swipe its
        table entry names (a tutorial overlay that takes every tap)."""
        tree = tree or self.screen()
        found = self.popup(tree, keep)
        if found is None:
            return False
        node, how = found
        self._log(f"dismissed a pop-up ({node.label or node.resource_id}"
                  f"{'' if how == 'tap' else ': ' + how})")
        if how == "tap":
            self.tap(node)
        else:
            self.swipe(POPUP_SWIPES[how], duration_ms=POPUP_SWIPE_MS)
        return True

    # -- closed-loop steps ----------------------------------------------------------
    def step(self, name: str, target: Any, *, expect: Expectation = None,
             act: Optional[Callable[[Node], None]] = None, timeout: float = 15,
             attempts: int = 4, once: bool = False) -> Node:
        """One step of a flow: find what it acts on, act, and see the effect.

        ``target`` is a selector (or a function of the screen giving a node or None);
        ``act`` defaults to a tap; ``expect`` is what must be true afterwards: a
        selector that must show, ``GONE`` (the target went away), a function of the
        screen, or None (the next step's own find confirms it). Each look handles a
        block screen (AccountBlocked) and a pop-up on top (dismissed BEFORE acting: the
        screen below stays in the dump but the pop-up would swallow the tap). A tap
        without effect is tried again, ``attempts`` times in all. The dump that
        confirms is kept for the next step (a tap a pop-up took does not count; at most
        5 pop-ups a step). Returns the node acted on, or the expected node when
        ``expect`` is a selector.

        ``once``: an act that must never happen twice (publishing a post, sending a
        comment). It is repeated only where it plainly went nowhere: every look since
        showed the screen exactly as it was, to the byte, for UNCHANGED_LOOKS looks
        after the first, a pop-up closed meanwhile or not (a tap the app took changes
        something: the button, a spinner, the screen; a pop-up that follows it may be
        its own confirmation, "Post anyway"). Whatever fails once it was done is not
        auto-retried.
        """
        done: List[Node] = []
        try:
            return self._step(name, target, expect, act, timeout, attempts, once, done)
        except Exception as exc:
            if once and done and getattr(exc, "retry", True) is not False:
                self._log(f"{name}: not retried: done once, and doing it again could "
                          "do it twice")
                exc.retry = False
            raise

    def _step(self, name: str, target: Any, expect: Expectation,
              act: Optional[Callable[[Node], None]], timeout: float, attempts: int,
              once: bool, done: List[Node]) -> Node:
        deadline = time.monotonic() + timeout
        keep = None if callable(target) else target
        acted, node, swallowed, looks, popups = 0, None, False, 0, 0
        before, moved = "", False       # the screen acted on; whether it changed since
        while True:
            tree = self.screen(name)
            try:
                self.check_screen(tree, name)
            except AppLeft as exc:
                exc.acted = acted > 0
                raise
            if popups < 5 and self.dismiss_popup(tree, keep=keep):
                swallowed, popups = acted > 0, popups + 1
                continue
            if not acted:
                node = self._locate(tree, target)
                if node is not None:
                    done.append(node)       # before: a tap cut short may have landed
                    (act or self.tap)(node)
                    self.changed()
                    acted, looks, before, moved = 1, 0, tree.xml, False
                    if expect is None:
                        return node
                    continue
            else:
                # an effect counts on the app's screen only, not on a crash's launcher
                effect = self._expected(tree, expect, target) if self._absent == 0 else None
                if effect is not None:
                    return node if effect is True else effect
                moved = moved or tree.xml != before
                again = self._locate(tree, target)
                # once: a pop-up after the tap may be its effect (a confirmation that
                # goes on publishing), so only an unchanged screen says it went nowhere
                if again is not None and (
                        (not once and (swallowed or looks)) or
                        (once and not moved and looks >= UNCHANGED_LOOKS)):
                    if acted >= attempts and not swallowed:
                        raise StepFailed(name, f"{self._wanted(expect, target)} did not "
                                         f"show after {acted} attempts; the screen showed "
                                         f"{tree.describe()}")
                    self._log(f"{name}: no effect yet; acting again")
                    (act or self.tap)(again)
                    self.changed()
                    # a tap a pop-up took is not an attempt that had no effect
                    acted += 0 if swallowed else 1
                    node, swallowed, looks, before, moved = again, False, 0, tree.xml, False
                    continue
            if time.monotonic() >= deadline:
                self._fail(name, tree, None if acted else target, expect, timeout)
            self._backoff(looks, deadline)
            looks += 1

    def wait_any(self, choices: Dict[str, Any], timeout: float = 10, step: str = "",
                 dismiss_popups: bool = True,
                 pauses: Optional[Callable[[int], float]] = None) -> Tuple[str, Node]:
        """Wait for whichever of several elements shows first: (its name, the node).

        A flow often cannot know which screen comes next (a dialog, or straight to the
        result); each look serves all of them, and the screen already dumped is looked
        at first. Block screens fail the step; pop-ups are dismissed first, because a
        modal pop-up swallows the taps meant for what lies under it. ``pauses(looks)``
        says how long to wait before the next look, for a wait that knows better than
        BACKOFF (an upload whose pace shows).
        """
        for sel in choices.values():
            if not callable(sel):
                check_selector(sel)
        deadline, looks = time.monotonic() + timeout, 0
        while True:
            tree = self.screen(step or "wait")
            self.check_screen(tree, step or "wait")
            if not (dismiss_popups and self.dismiss_popup(tree)):
                for name, sel in choices.items():
                    node = self._locate(tree, sel)
                    if node is not None:
                        return name, node
                if time.monotonic() >= deadline:
                    wanted = next(iter(choices.values())) if len(choices) == 1 \
                        else {"any_of": [c for c in choices.values() if not callable(c)]}
                    raise ElementNotFound(step or "wait", wanted, f"waited {timeout:g} s; "
                                          "the app must be in English where no id is "
                                          f"known; the screen showed {tree.describe()}")
                self._backoff(looks, deadline, pauses)
                looks += 1

    def wait(self, timeout: float = 10, step: str = "", dismiss_popups: bool = True,
             **sel: Any) -> Node:
        """The element once it shows (see ``wait_any``)."""
        return self.wait_any({"": sel}, timeout, step, dismiss_popups)[1]

    def wait_until(self, predicate: Callable[[UiTree], Any], timeout: float, step: str,
                   what: str = "", pauses: Optional[Callable[[int], float]] = None) -> Any:
        """Look at the screen, backing off, until ``predicate(screen)`` is truthy; its
        value. Pop-ups are dismissed and block screens fail the step meanwhile."""
        _, value = self.wait_any({"": lambda tree: predicate(tree) or None}, timeout, step,
                                 pauses=pauses)
        return value

    def tap_if_present(self, **sel: Any) -> bool:
        """Tap the element if the current screen has it (no waiting)."""
        tree = self.screen()
        self.check_screen(tree, "tap if present")
        if self.dismiss_popup(tree, keep=sel):
            tree = self.screen()
        node = tree.find(**sel)
        if node is not None:
            self.tap(node)
        return node is not None

    def _locate(self, tree: UiTree, target: Any) -> Optional[Node]:
        if callable(target):
            return target(tree)
        return tree.find(**target)

    def _expected(self, tree: UiTree, expect: Expectation, target: Any) -> Any:
        """True or the expected node when the step's effect shows; None when not yet."""
        if expect is GONE:
            return True if self._locate(tree, target) is None else None
        if callable(expect):
            return True if expect(tree) else None
        return tree.find(**expect)

    @staticmethod
    def _wanted(expect: Expectation, target: Any) -> str:
        if expect is GONE:
            return f"({describe_selector(target)}) to go away"
        if callable(expect):
            return getattr(expect, "__doc__", None) or "the expected screen"
        return describe_selector(expect)

    def _fail(self, name: str, tree: UiTree, target: Any, expect: Expectation,
              timeout: float) -> None:
        if target is not None and not callable(target):
            raise ElementNotFound(name, target, f"waited {timeout:g} s; the screen "
                                  f"showed {tree.describe()}")
        wanted = "the element" if target is not None else self._wanted(expect, target)
        raise StepFailed(name, f"{wanted} did not show within {timeout:g} s; the screen "
                         f"showed {tree.describe()}")

    def _backoff(self, looks: int, deadline: float,
                 pauses: Optional[Callable[[int], float]] = None) -> None:
        """Wait before the next dump, longer each time nothing changed; then look anew."""
        pause = pauses(looks) if pauses else BACKOFF[min(looks, len(BACKOFF) - 1)]
        self.sleep(max(0.0, min(pause, deadline - time.monotonic())))
        self.changed()

    # -- input ----------------------------------------------------------------------
    def tap(self, node: Optional[Node] = None, *, x: Optional[int] = None,
            y: Optional[int] = None, timeout: float = 10, step: str = "", **sel: Any) -> Node:
        """Tap a node, a point, or the element a selector finds (waiting for it)."""
        if node is None and x is not None and y is not None:
            self.shell(["input", "tap", str(int(x)), str(int(y))])
            return None
        if node is None:
            node = self.wait(timeout=timeout, step=step or "tap", **sel)
        cx, cy = node.center
        self.shell(["input", "tap", str(cx), str(cy)])
        return node

    def type_text(self, text: str) -> None:
        """Type any text into the focused field: through a broadcast IME if the phone has
        one, else ASCII through `input text`."""
        if not text:
            return
        self.check_can_type(text)
        self._typed += [shown for shown in (as_dumped(line).strip()
                                            for line in text.split("\n")) if shown]
        ime = self._broadcast_ime()
        encoded = base64.b64encode(text.encode("utf-8")).decode("ascii")
        if ime == FAST_INPUT_IME:
            self.shell(["am", "broadcast", "-a", "ADB_INPUT_TEXT", "--es", "text", encoded])
        elif ime == ADB_KEYBOARD_IME:
            self.shell(["am", "broadcast", "-a", "ADB_INPUT_B64", "--es", "msg", encoded])
        else:
            for line_no, line in enumerate(text.split("\n")):
                if line_no:
                    self.press("enter")
                for piece in input_text_args(line):
                    self.shell(["input", "text", piece])

    def check_can_type(self, text: str) -> None:
        """Before a task types: text other than ASCII needs a broadcast IME."""
        if all(32 <= ord(c) < 127 or c == "\n" for c in text) or self._find_ime():
            return
        raise StepFailed(
            "check the keyboard", "cannot type non-ASCII text: this phone has no "
            f"broadcast input method; install TikMatrix's FastInputIME ({FAST_INPUT_IME}) "
            f"or ADBKeyBoard ({ADB_KEYBOARD_IME})", retry=False)

    def _find_ime(self) -> str:
        if self._ime is None:
            installed = self._run(["ime", "list", "-a", "-s"]).split()
            self._ime = next((i for i in (FAST_INPUT_IME, ADB_KEYBOARD_IME)
                              if i in installed), "")
            self._ime_selected = False
        return self._ime

    def _broadcast_ime(self) -> str:
        ime = self._find_ime()
        if ime and not self._ime_selected:
            current = self._run(["settings", "get", "secure", "default_input_method"]).strip()
            if current != ime:
                # the phone's own keyboard, remembered per phone by the device manager:
                # a task that failed before restoring it must not make the next one
                # take ours for it
                self.devices.set_aside_keyboard(self.serial, current)
                self._run(f"ime enable {shlex.quote(ime)}; ime set {shlex.quote(ime)}")
            self._ime_selected = True
        return ime

    def press(self, key: Any) -> None:
        code = KEYS.get(str(key).lower(), str(key))
        if not re.fullmatch(r"KEYCODE_[A-Z0-9_]+|\d+", code):
            raise ValueError(f"unknown key {key!r}")
        self.shell(["input", "keyevent", code])

    def swipe(self, x1: Any = "up", y1: int = None, x2: int = None, y2: int = None,
              duration_ms: int = 300) -> None:
        """swipe(x1, y1, x2, y2) or swipe("up"/"down"/"left"/"right") across the screen."""
        if isinstance(x1, str):
            w, h = self.screen_size()
            x1, y1, x2, y2 = {
                "up": (w // 2, h * 3 // 4, w // 2, h // 4),
                "down": (w // 2, h // 4, w // 2, h * 3 // 4),
                "left": (w * 4 // 5, h // 2, w // 5, h // 2),
                "right": (w // 5, h // 2, w * 4 // 5, h // 2)}[x1]
        self.shell(["input", "swipe"] + [str(int(v)) for v in (x1, y1, x2, y2, duration_ms)])

    # -- apps -----------------------------------------------------------------------
    def open_url(self, url: str, package: Optional[str] = None) -> None:
        args = ["am", "start", "-a", "android.intent.action.VIEW", "-d", url]
        if package:
            args += ["-p", package]
        self.shell(args)

    def start_app(self, package: str, activity: Optional[str] = None) -> None:
        """Start an app: its given activity, else the launcher's."""
        if activity:
            self.shell(["am", "start", "-n", f"{package}/{activity}"])
        else:
            self.shell(["monkey", "-p", package, "-c", "android.intent.category.LAUNCHER",
                        "1"])

    def stop_app(self, package: str) -> None:
        self.shell(["am", "force-stop", package])

    def share(self, package: str, activity: str, remote: Sequence[str], mime: str) -> None:
        """Send files of the phone to an app like the gallery's Share button does."""
        uris = ["file://" + r for r in remote]
        if len(uris) == 1:
            extra = ["-a", "android.intent.action.SEND", "--eu",
                     "android.intent.extra.STREAM", uris[0]]
        else:
            extra = ["-a", "android.intent.action.SEND_MULTIPLE", "--eua",
                     "android.intent.extra.STREAM", ",".join(uris)]
        self.shell(["am", "start", "-n", f"{package}/{activity}", "-t", mime,
                    "--grant-read-uri-permission"] + extra)

    def installed_packages(self) -> List[str]:
        out = self._run(["pm", "list", "packages"])
        return [l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("package:")]

    def screenshot(self) -> bytes:
        return self.devices.screenshot(self.serial, self.token)

    def push_media(self, local_path: Any) -> str:
        """Push a photo or video where the gallery finds it first; returns its phone path."""
        local = Path(local_path)
        remote = posixpath.join(MEDIA_DIR, local.name)
        self._run(["mkdir", "-p", MEDIA_DIR])
        self.push(local, remote)
        scan = ["touch", remote, ";", "am", "broadcast", "-a",
                "android.intent.action.MEDIA_SCANNER_SCAN_FILE", "-d", "file://" + remote]
        if self.sdk() >= 29:
            scan += [";", "content", "call", "--uri", "content://media", "--method",
                     "scan_file", "--arg", remote]
        self._run(" ".join(a if a == ";" else shlex.quote(a) for a in scan))
        self.changed()
        return remote

    def remove(self, remote: str) -> None:
        """Delete a pushed file and tell the gallery; a cleanup, so a stopped task's
        media does not stay in the phone's gallery."""
        self._run_cleanup(f"rm -f {shlex.quote(remote)}; am broadcast -a android.intent"
                          f".action.MEDIA_SCANNER_SCAN_FILE -d "
                          f"{shlex.quote('file://' + remote)}")

    def sleep(self, seconds: float) -> None:
        """Wait, but wake at once when the task is stopped or the phone is lost."""
        self.token.check()
        self.token.event.wait(max(0.0, seconds))
        self.token.check()


def remote_input(devices: DeviceManager, serial: str, action: Dict[str, Any]) -> None:
    """One input from the farm view's live screen: tap, swipe, key or text.

    Text goes through the phone's broadcast input method like a script's (any Unicode,
    never through a shell unquoted), and the phone gets its own keyboard back after.
    """
    phone = Phone(devices, serial, CancelToken())
    kind = action["action"]
    if kind == "tap":
        phone.tap(x=action["x"], y=action["y"])
    elif kind == "swipe":
        phone.swipe(action["x1"], action["y1"], action["x2"], action["y2"],
                    action["duration_ms"])
    elif kind == "key":
        phone.press("KEYCODE_" + action["key"])
    else:
        try:
            phone.type_text(action["text"])
        finally:
            with contextlib.suppress(Exception):
                phone.restore()


###############################################################################
# Runner ######################################################################
###############################################################################

@dataclass
class Failure:
    """How a task that raised ends: its error, whether artifacts are saved, whether it
    may auto-retry, and whether the log gets a traceback (only for the unexpected)."""

    error: str
    artifacts: bool = True
    retry: bool = True
    traceback: bool = False

    @classmethod
    def of(cls, exc: BaseException) -> "Failure":
        """The one mapping of exceptions to outcomes."""
        if isinstance(exc, Stopped):            # the token's reason says why
            return cls(str(exc) or STOPPED_BY_USER, artifacts=False, retry=False)
        # any exception may say that trying again cannot help, or would do harm
        # (retry=False: a post's publishing tap was made, see scripts' done_once)
        retry = getattr(exc, "retry", True) is not False
        if isinstance(exc, DeviceLost):
            return cls(DISCONNECTED, artifacts=False, retry=retry)
        if isinstance(exc, CommandTimeout):
            return cls(f"timed out: {exc}", retry=retry)
        if isinstance(exc, (StepFailed, DeviceError)):    # expected: no traceback
            error = str(exc)
            if isinstance(exc, AccountBlocked):  # the account cools down instead (SPEC 8.1)
                return cls(f"{BLOCKED_PREFIX} {exc.said} ({exc.step})", retry=False)
            if error.startswith(BLOCKED_PREFIX) or f": {BLOCKED_PREFIX}" in error:
                return cls(error[error.index(BLOCKED_PREFIX):], retry=False)
            return cls(error, retry=retry)
        if isinstance(exc, BadRequest):         # the config cannot work: no screen to keep
            return cls(exc.message, artifacts=False, retry=False)
        return cls(f"{exc}" or type(exc).__name__, traceback=True, retry=retry)

    def log(self, task_id: int, exc: BaseException) -> None:
        """Called in the except block, so the traceback is the exception's."""
        if self.traceback:
            log.warning("task %s failed: %s\n%s", task_id, self.error, traceback.format_exc())
        elif isinstance(exc, DeviceLost):
            log.warning("task %s: %s", task_id, exc)


class TaskContext:
    """What a script knows of its task (SPEC 6): config, progress, log, stop-aware sleep."""

    def __init__(self, row: sqlite3.Row, store: Store, token: CancelToken,
                 account: Optional[sqlite3.Row] = None):
        self.id: int = row["id"]
        self.serial: str = row["serial"]
        self.username: Optional[str] = row["username"]
        #: the account the task runs as (platform, package), None for the phone's current
        self.account: Optional[sqlite3.Row] = account
        self.script_name: str = row["script_name"]
        self.config: Dict[str, Any] = json.loads(row["script_config"])
        self.retry_count: int = row["retry_count"]
        #: what the script has done so far (it may set this as it goes): kept as the
        #: task's result when it stops or fails before returning
        self.result: Any = None
        #: per-run randomness (spintax picks, waits): seeded by the task, its retry and
        #: the time, so a retry does not repeat the same picks
        self.random = random.Random(f"{row['id']}-{row['retry_count']}-{time.time()}")
        self._store = store
        self._token = token

    @property
    def stopped(self) -> bool:
        return self._token.reason is not None

    def progress(self, percent: Any, message: str = "") -> None:
        self._token.check()
        percent = max(0, min(100, int(percent)))
        self._store.set_progress(self.id, percent, str(message)[:500])
        if message:
            self.log(f"{percent}% {message}")

    def log(self, message: Any) -> None:
        self._store.add_log(self.id, str(message)[:2000])

    def claim_media(self, paths: Sequence[Any], count: int) -> List[str]:
        """Take ``count`` of these files that no task used yet (the ledger is in sqlite)."""
        return self._store.claim_folder_media(self.id, [str(p) for p in paths], count)

    def sleep(self, seconds: float) -> None:
        self._token.check()
        self._token.event.wait(max(0.0, float(seconds)))
        self._token.check()


#: seconds between tries to write a task's end that a full disk refused
UNWRITTEN_END_RETRY = (1, 2, 4, 8, 15, 30)


@dataclass
class RunningTask:
    task_id: int
    serial: str
    token: CancelToken
    done: threading.Event = field(default_factory=threading.Event)


class Runner:
    """Runs tasks: one worker thread per busy phone, each running one script.

    A heartbeat pings the phone while its task runs, because a phone that is connected
    but silent would otherwise hold the task forever. The outcome goes to the store, a
    failure with a screenshot and the last UI dump saved as artifacts.
    """

    def __init__(self, store: Store, devices: DeviceManager, scripts: Dict[str, Script],
                 artifacts_dir: Path, on_finished: Callable[[str], None] = lambda s: None,
                 heartbeat: float = HEARTBEAT_INTERVAL):
        self.store = store
        self.devices = devices
        self.scripts = scripts
        self.artifacts_dir = artifacts_dir
        self.on_finished = on_finished
        self.heartbeat = heartbeat
        #: waits between tries to write task ends that a full disk refused
        self.unwritten_retry = UNWRITTEN_END_RETRY
        self._active: Dict[str, RunningTask] = {}
        #: task id -> (serial, finish() arguments) of ends not written yet (disk full)
        self._unwritten: Dict[int, Tuple[str, Dict[str, Any]]] = {}
        self._unwritten_writer: Optional[threading.Thread] = None
        self._closing = threading.Event()
        self._lock = threading.Lock()
        #: holds tasks back while their account may not act (AccountSafety.wait_reason)
        self.gate: Optional[Callable[[sqlite3.Row, float], Optional[str]]] = None

    def busy(self, serial: str) -> bool:
        with self._lock:
            return serial in self._active

    def active_count(self) -> int:
        with self._lock:
            return len(self._active)

    def claim_and_start(self, serial: str, now: float,
                        inline: bool = False) -> Optional[sqlite3.Row]:
        """Claim the phone's next due task and start it, as one step.

        Under the runner's lock a task is either pending or registered here as running,
        never running in the store but unknown to the runner: a stop in between would
        otherwise mark it stopped while its script still starts. ``inline`` runs it to
        its end in the caller's thread instead (tests of the scheduling rules).
        """
        if inline:
            with self._lock:
                if serial in self._active:
                    return None
                row = self.store.claim_next(serial, now)
                if row is None:
                    return None
                running = self._active[serial] = RunningTask(row["id"], serial,
                                                             CancelToken())
            self._work(row, running)
            return row
        with self._lock:
            if serial in self._active:
                return None
            row = self.store.claim_next(serial, now, self.gate)
            if row is None:
                return None
            running = RunningTask(row["id"], serial, CancelToken())
            self._active[serial] = running
            thread = threading.Thread(target=self._work, args=(row, running),
                                      daemon=True, name=f"runner-{serial}")
            try:
                thread.start()
            except BaseException:
                del self._active[serial]
                self.store.fail(row["id"], "internal error: no thread")
                raise
            return row

    def stop(self, task_id: int, wait: float = 0) -> bool:
        """Stop a running task: interrupt its script, or end it in the store if no script
        of this runner has it. False if it is not running (any more)."""
        with self._lock:
            running = next((r for r in self._active.values() if r.task_id == task_id), None)
            if running is None:
                return self.store.stop(task_id)
            running.token.cancel("stopped")
        if wait:
            running.done.wait(wait)
        return True

    def time_out(self, task_id: int) -> None:
        """A task past its timeout is interrupted like a stop, but may be auto-retried."""
        with self._lock:
            running = next((r for r in self._active.values() if r.task_id == task_id), None)
        if running is not None and running.token.reason is None:
            running.token.cancel("timeout")

    def device_lost(self, serial: str) -> None:
        with self._lock:
            running = self._active.get(serial)
        if running is not None:
            running.token.cancel("lost")

    def stop_all(self, wait: float = 5) -> None:
        """At shutdown: running tasks end as "interrupted by restart", like after a crash."""
        self._closing.set()                  # unwritten ends: marked at the next start
        with self._lock:
            runnings = list(self._active.values())
        for running in runnings:
            running.token.cancel("shutdown")
        for running in runnings:
            running.done.wait(wait)

    def _work(self, row: sqlite3.Row, running: RunningTask) -> None:
        watchdog = threading.Thread(target=self._watch_phone, args=(running,), daemon=True,
                                    name=f"heartbeat-{running.serial}")
        watchdog.start()
        try:
            self.run_task(row, running.token)
        except BaseException:
            # never leave the task running: the phone would take no task until a restart
            log.exception("task %s: the runner failed", running.task_id)
            with contextlib.suppress(Exception):
                self.write_end(running.task_id, running.serial, ok=False,
                               error="internal error (see the server log)",
                               allow_auto_retry=False)
        finally:
            running.done.set()
            with self._lock:
                self._active.pop(running.serial, None)
            self.on_finished(running.serial)
        try:
            if running.token.reason is None:         # battery and model for GET /device
                with contextlib.suppress(Exception):
                    self.devices.refresh(running.serial)
        finally:
            self.store.release_thread()

    def _watch_phone(self, running: RunningTask) -> None:
        """Ping the phone between heartbeats; a silent phone fails its task."""
        while not running.done.wait(self.heartbeat):
            if not self.devices.ping(running.serial):
                if running.done.is_set():
                    return
                log.warning("task %s: device %s stopped answering", running.task_id,
                            running.serial)
                running.token.cancel("lost")
                self.devices.mark_unresponsive(running.serial)
                return

    def run_task(self, row: sqlite3.Row, token: CancelToken) -> str:
        """Run one claimed task to its end in this thread; returns how it ended."""
        task_id, serial = row["id"], row["serial"]
        account = self.store.get_account(row["username"]) if row["username"] else None
        context = TaskContext(row, self.store, token, account)
        phone = Phone(self.devices, serial, token, log=context.log)
        script = self.scripts.get(row["script_name"])
        log.info("task %s (%s) started on %s", task_id, row["script_name"], serial)
        context.log(f"started on {serial}")
        result, failure, refused = None, None, False
        try:
            if script is None:
                raise StepFailed(f"script {row['script_name']!r} is no longer loaded",
                                 retry=False)
            result = script.run(phone, context)
            _dump_json(result)
        except BaseException as exc:            # a script's SystemExit fails its task only
            failure = Failure.of(exc)
            failure.log(task_id, exc)
            refused = getattr(exc, "retry", True) is False   # the script said: never again
            if isinstance(exc, DeviceLost) and token.reason is None:
                self.devices.mark_unresponsive(serial)   # silent; adb may still list it
        if token.reason is not None:            # whatever the script did after the cancel
            error = CANCEL_ERRORS[token.reason]
            if token.reason == "timeout":
                error = f"timed out after {row['timeout']} s"
            failure = Failure(error, artifacts=False,
                              retry=token.reason in RETRYABLE_CANCELS and not refused)
        if token.reason != "lost":
            with contextlib.suppress(Exception):
                phone.restore()
        outcome = self._record(task_id, context, result, failure, phone.last_dump)
        log.info("task %s on %s: %s%s", task_id, serial, outcome,
                 f" ({failure.error})" if failure else "")
        return outcome

    def _record(self, task_id: int, context: TaskContext, result: Any,
                failure: Optional["Failure"], last_dump: Optional[str]) -> str:
        """Write the task's end by the move that fits; returns its name."""
        serial = context.serial
        if failure is None:
            with contextlib.suppress(StorageFull):
                context.log("completed")
            return self.write_end(task_id, serial, ok=True, result=result)
        if failure.artifacts and self.store.get_task(task_id) is not None:   # not deleted
            self.save_artifacts(task_id, serial, last_dump)
        with contextlib.suppress(StorageFull):
            context.log(f"failed: {failure.error}")
        return self.write_end(task_id, serial, ok=False, error=failure.error[:2000],
                              result=context.result, allow_auto_retry=failure.retry)

    def write_end(self, task_id: int, serial: str, **outcome: Any) -> str:
        """Store a task's end; if the disk is full, keep it and write it once space is
        back, so the task does not stay running and its phone free for nothing."""
        try:
            return self.store.finish(task_id, **outcome)
        except StorageFull:
            log.error("task %s: its end cannot be written (database or disk is full); "
                      "writing it as soon as space is freed", task_id)
        with self._lock:
            self._unwritten[task_id] = (serial, outcome)
            if self._unwritten_writer is None:
                self._unwritten_writer = threading.Thread(
                    target=self._write_unwritten_ends, name="unwritten-ends", daemon=True)
                self._unwritten_writer.start()
        return "unwritten"

    def _write_unwritten_ends(self) -> None:
        """Try the ends a full disk refused, with backoff, until all are written."""
        for attempt in itertools.count():
            delays = self.unwritten_retry
            if self._closing.wait(delays[min(attempt, len(delays) - 1)]):
                return
            with self._lock:
                pending = list(self._unwritten.items())
            for task_id, (serial, outcome) in pending:
                try:
                    ended = self.store.finish(task_id, **outcome)
                except StorageFull:
                    break
                log.info("task %s on %s: %s (written after the disk had been full)",
                         task_id, serial, ended)
                with self._lock:
                    del self._unwritten[task_id]
                self.on_finished(serial)           # its phone can take tasks again
            with self._lock:
                if not self._unwritten:
                    self._unwritten_writer = None
                    return

    def save_artifacts(self, task_id: int, serial: str, last_dump: Optional[str]) -> None:
        """A failure keeps the screen and the last UI dump, to see what the script saw.

        The screenshot gets a token of its own: the task's may be cancelled already.
        """
        folder = self.artifacts_dir / str(task_id)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if last_dump:
                (folder / "ui_dump.xml").write_text(last_dump, encoding="utf-8")
            (folder / "screenshot.png").write_bytes(self.devices.screenshot(serial))
        except Exception as exc:
            log.warning("task %s: could not save all artifacts: %s", task_id, exc)


def is_block(exc: Optional[BaseException], error: str) -> bool:
    """The app's block screen (SPEC 8.1): AccountBlocked, or an error that says so."""
    return isinstance(exc, AccountBlocked) or error.startswith(BLOCKED_PREFIX)


def artifact_names(artifacts_dir: Path, task_id: int) -> List[str]:
    folder = artifacts_dir / str(task_id)
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def remove_artifacts(artifacts_dir: Path, task_id: int) -> None:
    folder = artifacts_dir / str(task_id)
    if folder.is_dir():
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()


###############################################################################
# Scheduler ###################################################################
###############################################################################

class WakeLoop:
    """A thread that does a round whenever it is woken, else sleeps until the time the
    last round said it next has work: the scheduler's and the webhook deliveries' one
    way of waiting, so neither polls. A subclass gives ``round() -> next time or None``.
    """

    def __init__(self, name: str, clock: Callable[[], float]):
        self.clock = clock
        self._cond = threading.Condition()
        self._dirty = True
        self._stopping = False
        #: while the thread waits: when that wait ends by itself (None: on a wake only);
        #: False while a round is under way (or before the first)
        self._waits_until: Any = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def round(self) -> Optional[float]:
        raise NotImplementedError

    def wake(self, *_: Any) -> None:
        with self._cond:
            self._dirty = True
            self._cond.notify()

    def wake_by(self, at: float) -> None:
        """A round must look at what the caller just committed by ``at`` (a time of
        ``clock``): wake now, unless the thread waits and its wait ends by then anyway
        (that round reads the store after the caller's commit). A round under way may
        have read the store before it: it is made to do another."""
        with self._cond:
            until = self._waits_until
            if until is False or until is None or until > at:
                self._dirty = True
                self._cond.notify()

    def stop(self, join_timeout: float = 5) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=join_timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                self._dirty = False
            try:
                next_due = self.round()
            except Exception:
                log.exception("%s round failed", self._thread.name)
                next_due = self.clock() + 5
            with self._cond:
                if self._stopping:
                    return
                if not self._dirty:
                    timeout = None if next_due is None else max(0.0, next_due - self.clock())
                    self._waits_until = next_due
                    self._cond.wait(timeout)
                    self._waits_until = False


class Scheduler(WakeLoop):
    """Starts due tasks on free, online phones; sleeps until something can change.

    It waits on a condition that is notified by every event that may make a task
    startable (a new or retried task, a phone coming online, a task ending) with a
    timeout that ends at the next start time, so an idle server uses no CPU.
    ``tick()`` does one round synchronously, which is what tests call.

    Chores keep the other clocks (expiry, timeouts, leases, schedules, accounts that may
    act again): each does what is due and returns when it next has work, and the wait
    ends then. Without a device layer (``runner`` None) only the chores run.
    """

    def __init__(self, store: Store, devices: Optional[DeviceManager],
                 runner: Optional[Runner], max_running: int = 0,
                 clock: Callable[[], float] = time.time):
        super().__init__("scheduler", clock)
        self.store = store
        self.devices = devices
        self.runner = runner
        self.max_running = max_running
        #: (now) -> next time it has work, run before tasks are started
        self.chores: List[Callable[[float], Optional[float]]] = []
        #: the same, run after (the account gate's wake-ups are known only then)
        self.late_chores: List[Callable[[float], Optional[float]]] = []

    def start(self) -> None:
        self._thread.start()

    def round(self) -> Optional[float]:
        started, next_due = self.tick()
        log.debug("scheduler: started %s; next wake %s", started or "nothing",
                  format_time(next_due) or "on an event")
        return next_due

    def tick(self, now: Optional[float] = None) -> Tuple[List[int], Optional[float]]:
        """Start what is due now; returns (started task ids, next time something is due)."""
        now = self.clock() if now is None else now
        next_due = _earliest(chore(now) for chore in self.chores)
        started = self._start_due(now, next_due) if self.runner is not None \
            else _Started(next_due)
        return started, _earliest([started.next_due] + [c(now) for c in self.late_chores])

    def _start_due(self, now: float, next_due: Optional[float]) -> "_Started":
        started = _Started(next_due=next_due)
        running = self.runner.active_count()
        for serial, due in sorted(self.store.due_times().items(), key=lambda kv: kv[1]):
            if not self.devices.is_online(serial) or self.runner.busy(serial):
                continue                     # woken again when it comes online or frees
            if due > now:
                started.next_due = _earliest([started.next_due, due])
                continue
            if self.max_running and running >= self.max_running:
                break                        # woken again when a task ends
            row = self.runner.claim_and_start(serial, now)
            if row is None:                  # the earliest due is resting: look again later
                continue
            running += 1
            started.append(row["id"])
        return started

    def run_next_due(self, now: Optional[float] = None) -> Optional[int]:
        """Run the task that is due first, to its end, in this thread (as huey's tests
        do); returns its id, or None if nothing is due. For tests of the rules."""
        now = self.clock() if now is None else now
        if self.max_running and self.runner.active_count() >= self.max_running:
            return None
        for serial, due in sorted(self.store.due_times().items(), key=lambda kv: kv[1]):
            if due <= now and self.devices.is_online(serial) and not self.runner.busy(serial):
                row = self.runner.claim_and_start(serial, now, inline=True)
                if row is not None:
                    return row["id"]
        return None



class _Started(list):
    """Ids of the tasks a round started, and when the next pending one is due."""

    def __init__(self, next_due: Optional[float] = None):
        super().__init__()
        self.next_due = next_due


def _earliest(times: Any) -> Optional[float]:
    times = [t for t in times if t is not None]
    return min(times) if times else None


###############################################################################
# Task operations #############################################################
###############################################################################

# -- operations (SPEC 8): webhooks, account safety, schedules, metrics ---------------

#: waits before the 2nd..5th try of a webhook delivery (SPEC 8.3)
WEBHOOK_BACKOFF = (1, 10, 60, 600)
WEBHOOK_TIMEOUT = 5.0


class Webhooks(WakeLoop):
    """Webhook deliveries: rows in the store, sent by one thread of their own.

    Whoever has news (a runner, a request, the device watcher) only inserts rows and
    wakes the thread, so a slow or dead receiver never holds anything up; the thread
    sleeps until the next try is due. Pending tries survive a restart.
    """

    def __init__(self, store: Store, urls: Sequence[str], secret: Optional[str],
                 clock: Callable[[], float] = time.time, timeout: float = WEBHOOK_TIMEOUT):
        super().__init__("webhooks", clock)
        self.store, self.urls, self.secret = store, list(urls), secret
        self.timeout = timeout
        #: called with each try's outcome ("delivered", "retrying", "failed"): metrics
        self.on_outcome: Callable[[str], None] = lambda outcome: None
        self._started = False                  # start() was called: the thread may run

    def send(self, event: str, subject: str, payload: Dict[str, Any],
             extra_urls: Sequence[str] = ()) -> None:
        """Queue ``{"event", subject: payload}`` for the task's own and the global URLs."""
        urls = list(dict.fromkeys([u for u in extra_urls if u] + self.urls))
        if not urls:
            return
        body = json.dumps({"event": event, subject: payload}, ensure_ascii=False)
        self.store.add_deliveries([(uuid.uuid4().hex, event, url, body) for url in urls],
                                  self.clock())
        self.wake()

    def task_finished(self, task_id: int, outcome: str) -> None:
        row = self.store.get_task(task_id)
        if row is not None:
            self.send("task.finished", "task", task_to_json(row), [row["callback_url"]])

    def signature(self, body: bytes) -> Optional[str]:
        if not self.secret:
            return None
        return "sha256=" + hmac.new(self.secret.encode(), body, "sha256").hexdigest()

    def deliver_due(self, now: Optional[float] = None) -> int:
        """Try every delivery that is due; returns how many were tried."""
        now = self.clock() if now is None else now
        rows = self.store.due_deliveries(now)
        for row in rows:
            status = self._post(row)
            tries = row["tries"] + 1
            ok = status.isdigit() and 200 <= int(status) < 300
            retry = not ok and tries <= len(WEBHOOK_BACKOFF)
            next_try = now + WEBHOOK_BACKOFF[tries - 1] if retry else None
            self.store.delivery_tried(row["id"], status, next_try)
            outcome = "delivered" if ok else "retrying" if retry else "failed"
            (log.debug if ok else log.warning)("webhook %s to %s: %s (try %d, %s)",
                                               row["event"], row["url"], status, tries, outcome)
            self.on_outcome(outcome)
        return len(rows)

    def _post(self, row: sqlite3.Row) -> str:
        """One POST; the HTTP status as text, or "error: why". http.client rather than
        urllib, which would rewrite the headers' case and follow redirects."""
        import http.client
        body = row["body"].encode("utf-8")
        headers = {"Content-Type": "application/json", "X-TMLite-Event": row["event"],
                   "X-TMLite-Delivery": row["delivery_id"],
                   "User-Agent": f"TikMatrix-Lite/{__version__}"}
        if self.secret:
            headers["X-TMLite-Signature"] = self.signature(body)
        url = urlsplit(row["url"])
        kind = http.client.HTTPSConnection if url.scheme == "https" else \
            http.client.HTTPConnection
        try:
            connection = kind(url.netloc, timeout=self.timeout)
            try:
                connection.request("POST", (url.path or "/") + (f"?{url.query}" if url.query
                                                                else ""), body, headers)
                return str(connection.getresponse().status)
            finally:
                connection.close()
        except Exception as exc:
            return f"error: {exc or type(exc).__name__}"[:200]

    def wake(self, *_: Any) -> None:
        super().wake()
        with self._cond:
            self._run_thread()

    def start(self) -> None:
        """The thread starts now if tries are due from before a restart, else with the
        first delivery: a box without webhooks never runs it."""
        with self._cond:
            self._started = True
            if self.store.next_delivery_time() is not None:
                self._run_thread()

    def _run_thread(self) -> None:
        if self._started and not self._stopping and self._thread.ident is None:
            self._thread.start()

    def stop(self, join_timeout: Optional[float] = None) -> None:
        super().stop(self.timeout + 1 if join_timeout is None else join_timeout)

    def round(self) -> Optional[float]:
        self.deliver_due()
        return self.store.next_delivery_time()


#: the action a completed task of a script counts as (SPEC 8.1)
SCRIPT_ACTIONS = {"follow": "follow", "unfollow": "unfollow", "comment": "comment",
                  "post": "post"}
#: account_warmup's result keys -> actions
WARMUP_COUNTS = {"likes": "like", "follows": "follow", "comments": "comment"}
LIMITED_ACTIONS = ("follow", "unfollow", "comment", "post", "like")
DEFAULT_COOLDOWN_HOURS = 24
ACTIVE_HOURS_RE = re.compile(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)")


class AccountSafety:
    """Limits, active hours and cooldowns of accounts (SPEC 8.1).

    ``wait_reason`` is the runner's gate: a task whose account may not act now stays
    pending with the reason as its message, and the moment it may start is kept for the
    scheduler (``take_wake``), which sleeps until then instead of polling.
    """

    def __init__(self, store: Store, scripts: Dict[str, Script]):
        self.store, self.scripts = store, scripts
        #: called with the account row when a block puts it into cooldown
        self.on_cooldown: Callable[[sqlite3.Row], None] = lambda account: None
        self._wake: Optional[float] = None
        self._lock = threading.Lock()

    def account_of(self, task: sqlite3.Row) -> Optional[sqlite3.Row]:
        """The task's account; in device mode the phone's only enabled account of the
        script's platforms, when there is exactly one."""
        if task["username"]:
            return self.store.get_account(task["username"])
        script = self.scripts.get(task["script_name"])
        platforms = script.platforms if script else PLATFORM_NAMES
        accounts = [a for a in self.store.list_accounts(task["serial"])
                    if a["enabled"] and a["platform"] in platforms]
        return accounts[0] if len(accounts) == 1 else None

    def wait_reason(self, task: sqlite3.Row, now: float) -> Optional[str]:
        account = self.account_of(task)
        if account is None:
            return None
        found = self.forbidden(account, SCRIPT_ACTIONS.get(task["script_name"]), now)
        if found is None:
            return None
        why, until = found
        with self._lock:
            self._wake = _earliest([self._wake, until])
        return f"waiting: @{account['username']} {why}; next at {format_time(until)}"

    def take_wake(self, now: float) -> Optional[float]:
        """The earliest moment a held-back task may start (a late scheduler chore)."""
        with self._lock:
            wake, self._wake = self._wake, None
        return wake

    def forbidden(self, account: sqlite3.Row, action: Optional[str],
                  now: float) -> Optional[Tuple[str, float]]:
        """(why, until when) the account may not act now, or None."""
        if account["cooldown_until"] and account["cooldown_until"] > now:
            return "is in cooldown after a block", account["cooldown_until"]
        hours = account["active_hours"]
        if hours and not within_hours(hours, now):
            return (f"is outside its active hours {hours}",
                    next_occurrence(hours.split("-")[0], now))
        limit = (_load_json(account["limits"]) or {}).get(action) if action else None
        if not limit:
            return None
        day_start = _local_midnight(now)
        rows = self.store.actions_since(account["username"], min(day_start, now - 3600))
        rows = [r for r in rows if r["action"] == action]
        per_day = limit.get("per_day")
        if per_day is not None and sum(r["count"] for r in rows
                                       if r["at"] >= day_start) >= per_day:
            return (f"reached its {action} limit of {per_day} per day",
                    _local_midnight(now, days=1))
        per_hour = limit.get("per_hour")
        window = [r for r in rows if r["at"] > now - 3600]
        total = sum(r["count"] for r in window)
        if per_hour is not None and total >= per_hour:
            for r in window:                     # the oldest drop out of the window first
                total -= r["count"]
                if total < per_hour:
                    return (f"reached its {action} limit of {per_hour} per hour",
                            r["at"] + 3600)
        return None

    def counts(self, username: str, now: float) -> Dict[str, Dict[str, int]]:
        """Actions done in the last hour and today, per action."""
        day_start = _local_midnight(now)
        out = {a: {"last_hour": 0, "today": 0} for a in LIMITED_ACTIONS}
        for r in self.store.actions_since(username, min(day_start, now - 3600)):
            entry = out.setdefault(r["action"], {"last_hour": 0, "today": 0})
            if r["at"] > now - 3600:
                entry["last_hour"] += r["count"]
            if r["at"] >= day_start:
                entry["today"] += r["count"]
        return out

    def describe(self, account: sqlite3.Row, now: float) -> Dict[str, Any]:
        """An account as the API shows it, with its safety fields."""
        cooling = bool(account["cooldown_until"] and account["cooldown_until"] > now)
        return dict(account_to_json(account), limits=_load_json(account["limits"]),
                    active_hours=account["active_hours"],
                    cooldown_hours=account["cooldown_hours"],
                    status="cooldown" if cooling else "ok",
                    cooldown_until=format_time(account["cooldown_until"]) if cooling
                    else None, counts=self.counts(account["username"], now))

    def task_ending(self, task_id: int, outcome: str) -> None:
        """Count what the task did as its account; a block starts a cooldown. Runs in
        the transaction that ends the task (Store.in_task_end)."""
        task = self.store.get_task(task_id)
        account = self.account_of(task) if task is not None else None
        if account is None:
            return
        now = self.store.clock()
        result = _load_json(task["result"])
        if task["script_name"] == "account_warmup" and isinstance(result, dict):
            counts = {action: result.get(key) for key, action in WARMUP_COUNTS.items()}
            self.store.record_actions(account["username"], {
                a: c for a, c in counts.items() if isinstance(c, int)}, now)
        elif outcome == "completed" and task["script_name"] in SCRIPT_ACTIONS:
            self.store.record_actions(account["username"],
                                      {SCRIPT_ACTIONS[task["script_name"]]: 1}, now)
        if outcome == "failed" and is_block(None, task["error"]):
            until = now + account["cooldown_hours"] * 3600
            self.store.set_cooldown(account["username"], until)
            log.warning("account @%s blocked (task %s): cooldown until %s",
                        account["username"], task_id, format_time(until))

    def task_ended(self, task_id: int, outcome: str) -> None:
        """Once the end is committed: a block's cooldown is announced (on_cooldown)."""
        task = self.store.get_task(task_id)
        if outcome != "failed" or task is None or not is_block(None, task["error"]):
            return
        account = self.account_of(task)
        if account is not None:
            self.on_cooldown(account)


def within_hours(hours: str, now: float) -> bool:
    """Whether local time now is inside "HH:MM-HH:MM" (which may wrap midnight)."""
    match = ACTIVE_HOURS_RE.fullmatch(hours)
    start = int(match[1]) * 60 + int(match[2])
    end = int(match[3]) * 60 + int(match[4])
    local = _dt.datetime.fromtimestamp(now)
    minute = local.hour * 60 + local.minute
    if start == end:
        return True
    return start <= minute < end if start < end else minute >= start or minute < end


def _local_midnight(now: float, days: int = 0) -> float:
    day = _dt.datetime.fromtimestamp(now).date() + _dt.timedelta(days=days)
    return _dt.datetime.combine(day, _dt.time()).timestamp()


#: a slot found this late (the box was off, the clock jumped) is skipped, not made up
SCHEDULE_GRACE = 120


class Schedules:
    """Recurring task templates (SPEC 8.2): days, times and a per-slot jitter.

    Each schedule keeps its next slot and the jittered moment it runs. Firing moves
    both forward in the same transaction that creates the tasks, guarded by the moment
    it expected, so a slot fires at most once, also across restarts; a slot long past
    (the box was off) is logged and skipped.
    """

    def __init__(self, store: Store, build: Callable[[Dict[str, Any], int], List[NewTask]],
                 rng: random.Random = random):
        self.store, self.build, self.rng = store, build, rng

    @staticmethod
    def next_slot(days: Sequence[int], times: Sequence[str], after: float) -> float:
        """The first (day, time) slot strictly after ``after``, in local time."""
        start = _dt.datetime.fromtimestamp(after).date()
        for offset in range(0, 9):
            day = start + _dt.timedelta(days=offset)
            if day.isoweekday() not in days:
                continue
            for hhmm in sorted(times):
                hour, minute = map(int, hhmm.split(":"))
                slot = _dt.datetime.combine(day, _dt.time(hour, minute)).timestamp()
                if slot > after:
                    return slot
        raise ValueError("a schedule needs at least one day and one time")

    def plan(self, row: Any, after: float) -> Tuple[float, float]:
        """(next slot after ``after``, the moment it runs with its jitter)."""
        slot = self.next_slot(_load_json(row["days"]), _load_json(row["times"]), after)
        return slot, slot + self.rng.uniform(0, row["jitter_minutes"] * 60)

    def fire_due(self, now: float) -> Optional[float]:
        """Fire the slots that are due (a scheduler chore); returns the next run."""
        next_at = None
        for row in self.store.list_schedules():
            for _ in range(3):                  # one slot at a time, while any is due
                if not row["enabled"] or row["next_run"] is None or row["next_run"] > now:
                    break
                self._fire(row, now)
                row = self.store.get_schedule(row["id"])
                if row is None:
                    break
            if row is not None and row["enabled"] and row["next_run"] is not None:
                next_at = _earliest([next_at, row["next_run"]])
        return next_at

    def _fire(self, row: sqlite3.Row, now: float) -> None:
        late = now - row["next_run"]
        tasks: List[NewTask] = []
        if late > SCHEDULE_GRACE:
            log.warning("schedule %s (%s): slot at %s missed (server off or clock change);"
                        " not made up", row["id"], row["name"], format_time(row["next_run"]))
            slot, run = self.plan(row, now)
        else:
            try:
                tasks = self.build(_load_json(row["request"]), row["id"])
            except LiteError as exc:
                log.error("schedule %s (%s): slot at %s made no task: %s", row["id"],
                          row["name"], format_time(row["next_run"]), exc.message)
            slot, run = self.plan(row, max(row["next_slot"], now - SCHEDULE_GRACE))
        fired = now if late <= SCHEDULE_GRACE else None
        ids = self.store.advance_schedule(row["id"], row["next_run"], slot, run, fired, tasks)
        if ids:
            log.info("schedule %s (%s) made task(s) %s", row["id"], row["name"], ids)

    def run_now(self, row: sqlite3.Row) -> List[int]:
        """POST /schedule/{id}/run: the schedule's tasks now, slots untouched."""
        tasks = self.build(_load_json(row["request"]), row["id"])
        with self.store.write():
            ids = self.store.create_tasks(tasks)
            self.store.save_schedule(row["id"], {"last_run": self.store.clock()})
        return ids


def schedule_to_json(row: sqlite3.Row) -> Dict[str, Any]:
    request = _load_json(row["request"])
    return dict(request, id=row["id"], name=row["name"], days=_load_json(row["days"]),
                times=_load_json(row["times"]), jitter_minutes=row["jitter_minutes"],
                enabled=bool(row["enabled"]),
                next_run=format_time(row["next_run"]) if row["enabled"] else None,
                last_run=format_time(row["last_run"]),
                created_at=format_time(row["created_at"]))


#: histogram buckets in seconds: device calls, then task run times
CALL_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
RUN_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)


class Metrics:
    """Counters and histograms for GET /metrics, in Prometheus' text format.

    Written by hand rather than with prometheus_client: the format is a few lines of
    text, and a registry of our own per server keeps tests (several servers in one
    process) apart without the library's global registry and a new dependency on the Pi.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._counters: Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float] = {}
        self._histograms: Dict[str, Tuple[Sequence[float], List[int], List[float]]] = {}
        self.help: Dict[str, Tuple[str, str]] = {}

    def inc(self, name: str, help_text: str, by: float = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self.help.setdefault(name, ("counter", help_text))
            self._counters[key] = self._counters.get(key, 0) + by

    def observe(self, name: str, help_text: str, value: float,
                buckets: Sequence[float]) -> None:
        with self._lock:
            self.help.setdefault(name, ("histogram", help_text))
            bounds, counts, total = self._histograms.setdefault(
                name, (buckets, [0] * (len(buckets) + 1), [0.0]))
            counts[next((i for i, b in enumerate(bounds) if value <= b), len(bounds))] += 1
            total[0] += value

    def render(self, gauges: Sequence[Tuple[str, str, Dict[str, float]]]) -> str:
        """The text format; ``gauges`` are (name, help, {label text: value}) read now."""
        lines = []
        for name, help_text, values in gauges:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
            lines += [f"{name}{labels} {value:g}" for labels, value in values.items()]
        with self._lock:
            for name, (kind, help_text) in sorted(self.help.items()):
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
                if kind == "counter":
                    lines += [f"{n}{_labels(dict(l))} {v:g}"
                              for (n, l), v in sorted(self._counters.items()) if n == name]
                    continue
                bounds, counts, total = self._histograms[name]
                running = 0
                for bound, count in zip(list(bounds) + ["+Inf"], counts):
                    running += count
                    lines.append(f'{name}_bucket{{le="{bound}"}} {running}')
                lines += [f"{name}_sum {total[0]:g}", f"{name}_count {running}"]
        return "\n".join(lines) + "\n"


def _labels(labels: Dict[str, Any]) -> str:
    if not labels:
        return ""

    def quote(value: Any) -> str:
        return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    escaped = (f'{k}="{quote(v)}"' for k, v in sorted(labels.items()))
    return "{" + ",".join(escaped) + "}"


# -- what may be done to tasks: TaskOps -----------------------------------------------
#: ``POST /task``'s body, declared like a script's PARAMS.
TASK_CREATE: Dict[str, Dict[str, Any]] = {
    "serials": {"type": "list", "items": {"type": "str", "max_length": 1000},
                "description": "devices to run on (this or usernames)"},
    "usernames": {"type": "list", "items": {"type": "str", "max_length": 1000},
                  "description": "accounts to run as (this or serials)"},
    "script_name": {"type": "str", "required": True, "min_length": 1, "max_length": 1000},
    "script_config": {"type": "dict", "required": True,
                      "description": "the script's parameters (GET /script)"},
    "enable_multi_account": {"type": "bool", "default": False,
                             "description": "one task per enabled account of each device"},
    "start_time": {"type": "str", "default": "", "max_length": 1000,
                   "pattern": r" *(([01]?\d|2[0-3]):[0-5]\d|\d{4}-\d\d-\d\d \d\d:\d\d(:\d\d)?)? *",
                   "description": "a time of day HH:MM (00:00-23:59), next occurrence, or "
                                  "YYYY-MM-DD HH:MM[:SS] (box local time)"},
    "min_interval": {"type": "int", "default": 0, "min": 0, "max": 1440,
                     "description": "minutes the phone rests before the task, at least"},
    "max_interval": {"type": "int", "default": 0, "min": 0, "max": 1440,
                     "description": "minutes the phone rests before the task, at most"},
    "priority": {"type": "int", "default": 0, "min": -100, "max": 100},
    "max_retry_count": {"type": "int", "default": 3, "min": 1, "max": 10},
    "auto_retry": {"type": "bool", "default": False},
    "groups": {"type": "list", "items": {"type": "str", "max_length": 1000},
               "description": "every phone of these groups, as if listed in serials"},
    "source": {"type": "str", "default": "api", "choices": ["api", "ui"],
               "description": "who made the task: a client of the API or the dashboard"},
    # SPEC 8.3: a callback when it ends, an expiry while pending, a timeout while running
    "callback_url": {"type": "str", "max_length": 2000,
                     "pattern": r"[Hh][Tt][Tt][Pp][Ss]?://[^/?#\s]+[^\s]*",
                     "description": "an http(s) URL POSTed the task when it ends"},
    "expire_in": {"type": "int", "min": 1, "max": 10080,
                  "description": "minutes it may wait pending (or expire_at)"},
    "expire_at": {"type": "str", "max_length": 100,
                  "pattern": r" *\d{4}-\d\d-\d\d \d\d:\d\d(:\d\d)? *",
                  "description": "YYYY-MM-DD HH:MM:SS (box local time) it expires"},
    "timeout": {"type": "int", "min": 10, "max": 86400,
                "description": "seconds it may run"},
}


def start_time_of(text: str, now: float) -> Tuple[float, str]:
    """start_time as "HH:MM" (next occurrence) or "YYYY-MM-DD HH:MM[:SS]"; returns the
    epoch and a note for the task's message when HH:MM has passed today."""
    text = text.strip()
    if not text:
        return now, ""
    if re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d(:\d\d)?", text):
        return parse_local_time("start_time", text), ""
    start = next_occurrence(text, now)
    if _dt.datetime.fromtimestamp(start).date() != _dt.datetime.fromtimestamp(now).date():
        return start, (f"starts tomorrow at {format_time(start)}: {text} had already "
                       "passed today")
    return start, ""


def parse_local_time(name: str, text: str) -> float:
    """"YYYY-MM-DD HH:MM[:SS]" in the box's local time -> epoch seconds."""
    for fmt in (TIME_FORMAT, "%Y-%m-%d %H:%M"):
        try:
            return _dt.datetime.strptime(text.strip(), fmt).timestamp()
        except ValueError:
            continue
    raise BadRequest(name, f"is not a time on the calendar: {text!r} (YYYY-MM-DD HH:MM:SS,"
                           " box local time)")


def task_end_fields(fields: Dict[str, Any], now: float) -> Dict[str, Any]:
    """callback_url, expiry and timeout of checked POST /task fields (SPEC 8.3)."""
    url = fields.get("callback_url")
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise BadRequest("callback_url", f"must be an http or https URL, got {url!r}")
    if fields.get("expire_in") is not None and fields.get("expire_at") is not None:
        raise BadRequest("expire_in", "give expire_in or expire_at, not both")
    expire_at = None
    if fields.get("expire_in") is not None:
        expire_at = now + fields["expire_in"] * 60
    elif fields.get("expire_at") is not None:
        expire_at = parse_local_time("expire_at", fields["expire_at"])
        if expire_at <= now:
            raise BadRequest("expire_at", f"is in the past: {fields['expire_at']}")
    return {"callback_url": url or None, "expire_at": expire_at,
            "timeout": fields.get("timeout")}


#: a schedule's own fields, then the POST /task fields it keeps as its request (SPEC 8.2)
SCHEDULE_TASK_FIELDS = ("script_name", "script_config", "serials", "usernames", "groups",
                        "enable_multi_account", "priority", "min_interval", "max_interval",
                        "max_retry_count", "auto_retry", "callback_url", "expire_in",
                        "timeout")
SCHEDULE_FIELDS: Dict[str, Dict[str, Any]] = {
    "name": {"type": "str", "min_length": 1, "max_length": 200},
    "days": {"type": "list", "max_items": 7, "items": {"type": "int", "min": 1, "max": 7},
             "description": "ISO weekdays 1-7 (absent: every day)"},
    "times": {"type": "list", "max_items": 100,
              "items": {"type": "str", "pattern": r"([01]\d|2[0-3]):[0-5]\d"},
              "description": "times of day HH:MM"},
    "jitter_minutes": {"type": "int", "min": 0, "max": 120},
    "enabled": {"type": "bool"},
    **{k: {n: v for n, v in TASK_CREATE[k].items() if n not in ("required", "default")}
       for k in SCHEDULE_TASK_FIELDS},
}
SCHEDULE_CREATE = {k: dict(v, required=True) if k in ("name", "times", "script_name",
                                                      "script_config") else v
                   for k, v in SCHEDULE_FIELDS.items()}


def schedule_fields(body: Dict[str, Any], row: Optional[sqlite3.Row],
                    build: Callable[[Dict[str, Any]], List["NewTask"]]) -> Dict[str, Any]:
    """A schedule's columns from a POST/PUT body (PUT: merged over the row), checked;
    its task request is checked as POST /task would, at once."""
    check_fields(body, SCHEDULE_FIELDS, switches=False)
    old = dict(schedule_to_json(row)) if row is not None else {}
    for one, other in (("serials", "usernames"), ("usernames", "serials")):
        if body.get(one) is not None:           # naming phones anew replaces accounts
            old.pop(other, None)
    data = dict(old, **{k: v for k, v in body.items() if v is not None})
    fields = check_fields(data, SCHEDULE_CREATE, switches=False)
    days = fields.get("days")
    if days is None:
        days = [1, 2, 3, 4, 5, 6, 7]
    if not days:
        raise BadRequest("days", "must name at least one ISO weekday 1-7 (absent: every day)")
    if not fields["times"]:
        raise BadRequest("times", "must name at least one time HH:MM")
    request = {k: data[k] for k in SCHEDULE_TASK_FIELDS if data.get(k) is not None}
    build(request)                               # raises what POST /task would
    return {"name": fields["name"], "request": _dump_json(request),
            "days": _dump_json(sorted(set(days))),
            "times": _dump_json(sorted(set(fields["times"]))),
            "jitter_minutes": fields.get("jitter_minutes") or 0,
            "enabled": int(fields.get("enabled", True) is not False)}
MAX_TASKS_PER_REQUEST = 10_000


class TaskOps:
    """What may be done to tasks, and the rules of it: the one place the HTTP API (and
    the dashboard) go through. Each operation raises NotFound or BadRequest itself."""

    def __init__(self, store: Store, scripts: Dict[str, Script], runner: Optional[Runner],
                 artifacts_dir: Path, wake: Callable[[], None],
                 materials_dir: Optional[Path] = None,
                 wake_for_new: Optional[Callable[[Sequence[NewTask]], None]] = None):
        self.store, self.scripts, self.runner = store, scripts, runner
        self.artifacts_dir, self.wake = artifacts_dir, wake
        #: after a create: wakes the scheduler if it must look at the new tasks soon
        self.wake_for_new = wake_for_new or (lambda tasks: wake())
        #: the material library's files, named in the config of a task that reserves some
        self.materials_dir = materials_dir or artifacts_dir.with_name("materials")
        #: how long stop and delete wait for a running script to end
        self.stop_wait = 3.0

    def get(self, task_id: int) -> sqlite3.Row:
        row = self.store.get_task(task_id)
        if row is None:
            raise NotFound(f"task {task_id} not found")
        return row

    # -- create ------------------------------------------------------------------
    def create(self, body: Dict[str, Any], *, source: Optional[str] = None,
               schedule_id: Optional[int] = None, creator: Optional[str] = None) -> List[int]:
        """The tasks one request asks for, all validated before any is written."""
        tasks = self.build(body, source=source, schedule_id=schedule_id, creator=creator)
        ids = self.store.create_tasks(tasks)
        self.wake_for_new(tasks)
        return ids

    def build(self, body: Dict[str, Any], *, source: Optional[str] = None,
              schedule_id: Optional[int] = None,
              creator: Optional[str] = None) -> List[NewTask]:
        """The tasks of a request, checked, not written (a schedule writes them itself)."""
        check_json({k: v for k, v in body.items() if k in TASK_CREATE})  # others: unused
        name, script = self._script(body.get("script_name"))
        fields = check_fields(body, TASK_CREATE, switches=False)
        fields["serials"] = self._with_groups(fields.get("serials"), fields.get("groups"))
        external = script.runner == "external"
        if fields.get("serials") and fields.get("usernames"):
            raise BadRequest("serials", "give serials or usernames, not both")
        if not fields.get("serials") and not fields.get("usernames") and not external:
            raise BadRequest("serials", "give a non-empty serials or usernames array")
        if external and fields.get("timeout"):   # never accepted and then ignored
            raise BadRequest("timeout", f"{name} runs on an external worker, whose lease "
                                        f"(lease_seconds of /worker/next) bounds it instead")
        now = self.store.clock()
        start, start_note = start_time_of(fields["start_time"], now)
        extras = task_end_fields(fields, now)
        low, high = fields["min_interval"], fields["max_interval"]
        if low > high:
            raise BadRequest("min_interval", f"must not exceed max_interval ({low} > {high})")
        configs = script.expand_config(script.check_config(fields["script_config"]))
        if fields.get("serials"):
            targets = self._device_targets(script, fields["serials"],
                                           fields["enable_multi_account"])
        elif fields.get("usernames"):
            targets = self._account_targets(script, fields["usernames"])
        else:
            targets = [("", None)]               # an external task held by no phone
        if len(targets) * len(configs) > MAX_TASKS_PER_REQUEST:
            raise BadRequest("serials", f"would create {len(targets) * len(configs)} tasks;"
                                        f" the limit is {MAX_TASKS_PER_REQUEST} per request")
        wants = [self._material_request(script, config) for config in configs]
        return [NewTask(
            serial=serial, username=username, script_name=name, script_config=config,
            priority=fields["priority"], start_time=start,
            rest_seconds=random.uniform(low * 60, high * 60), min_interval=low,
            max_interval=high, max_retry_count=fields["max_retry_count"],
            auto_retry=fields["auto_retry"], source=source or fields["source"],
            materials=want, schedule_id=schedule_id, creator=creator, external=external,
            message=start_note, **extras)
            for serial, username in targets for config, want in zip(configs, wants)]

    def _with_groups(self, serials: Optional[List[str]], groups: Optional[List[str]]):
        """SPEC 7.3: every phone of the groups, as if listed in serials."""
        if not groups:
            return serials
        in_groups = self.store.devices_in_groups(groups)
        if not in_groups:
            raise BadRequest("groups", f"no phone is in {', '.join(groups)}")
        return (serials or []) + in_groups

    def _material_request(self, script: Script, config: Dict[str, Any]):
        """What the script reserves from the library for one task (SPEC 7.2), if any:
        the store reserves it in the transaction that writes the task."""
        want = script.reserve_materials(config) if script.reserve_materials else None
        if want:
            want = dict(want, folder=str(self.materials_dir))
        return want

    def _script(self, name: Any) -> Tuple[str, Script]:
        """script_name is checked first, with codes of its own (40002, 40003)."""
        if name is None or name == "":
            raise MissingScriptName("script_name is required")
        if not isinstance(name, str):
            raise BadRequest("script_name", f"must be a string, got {_json_type(name)}")
        script = self.scripts.get(name)
        if script is None or name in NOT_API_SCRIPTS:
            known = ", ".join(sorted(self.scripts))
            raise ScriptNotSupported(f"script {name!r} is not supported through the API"
                                     f" (loaded: {known or 'none'})")
        return name, script

    def _device_targets(self, script: Script, serials: List[str],
                        multi: bool) -> List[Tuple[str, Optional[str]]]:
        targets: List[Tuple[str, Optional[str]]] = []
        for i, serial in _first_of_each(serials):
            if script.runner != "external" and not self.store.device_known(serial):
                raise BadRequest(f"serials[{i}]", f"unknown device {serial!r}")
            if not multi:
                targets.append((serial, None))
                continue
            accounts = [a for a in self.store.list_accounts(serial)
                        if a["enabled"] and a["platform"] in script.platforms]
            if not accounts:
                raise BadRequest(f"serials[{i}]", f"device {serial!r} has no enabled "
                                 f"account for {'/'.join(script.platforms)} "
                                 "(enable_multi_account)")
            targets += [(serial, a["username"]) for a in accounts]
        return targets

    def _account_targets(self, script: Script,
                         usernames: List[str]) -> List[Tuple[str, Optional[str]]]:
        targets: List[Tuple[str, Optional[str]]] = []
        # @NASA and nasa are one account, as in the apps
        for i, text in _first_of_each(usernames, key=lambda u: normalize_username(u).lower()):
            account = self.store.get_account(normalize_username(text))
            if account is None:
                raise BadRequest(f"usernames[{i}]", f"unknown account {text!r}")
            if not account["enabled"]:
                raise BadRequest(f"usernames[{i}]", f"account {text!r} is disabled")
            if account["platform"] not in script.platforms:
                raise BadRequest(f"usernames[{i}]", f"account {text!r} is on "
                                 f"{account['platform']}, which {script.name} does not "
                                 "support")
            targets.append((account["serial"], account["username"]))
        return targets

    # -- one task ---------------------------------------------------------------------
    def stop(self, task_id: int) -> None:
        """Cancel a pending task or interrupt a running one; both end 'stopped by user'."""
        stopped = False
        for _ in range(10):           # until its status holds still under our change
            row = self.store.get_task(task_id)
            if row is None:
                if stopped:
                    return
                raise NotFound(f"task {task_id} not found")
            if row["status"] == PENDING:          # also a failure that was just auto-retried
                if self.store.cancel_pending(task_id):
                    return
            elif row["status"] == RUNNING:
                if stopped:                       # asked; it ends at its next phone call
                    return
                stopped = self.runner.stop(task_id, wait=self.stop_wait) \
                    if self.runner is not None else self.store.stop(task_id)
            elif stopped:
                return
            else:
                raise BadRequest("task_id", f"task {task_id} is {STATUS_TEXT[row['status']]}:"
                                            " only pending or running tasks can be stopped")
        raise Unavailable(f"task {task_id} could not be stopped; try again")

    def retry(self, task_id: int) -> sqlite3.Row:
        """A failed task under its retry limit goes back to pending; returns it as it
        is then. One transaction: a delete is wholly before or after it."""
        with self.store.write():
            row = self.get(task_id)
            if row["status"] != FAILED:
                raise BadRequest("task_id", f"task {task_id} is {STATUS_TEXT[row['status']]}:"
                                            " only failed tasks can be retried")
            if not self.store.retry(task_id):
                raise BadRequest("task_id", f"task {task_id} reached its retry limit "
                                            f"({row['retry_count']}/{row['max_retry_count']})")
            row = self.get(task_id)
        self.wake()
        return row

    def retry_unless_stopped(self, task_id: int) -> sqlite3.Row:
        """Batch retry leaves tasks the user stopped alone; a single retry may take them."""
        row = self.get(task_id)
        if row["status"] == FAILED and row["error"] == STOPPED_BY_USER:
            raise BadRequest("task_id", f"task {task_id}: {STOPPED_BY_USER}; retry it alone "
                                        "to run it again")
        return self.retry(task_id)

    def delete(self, task_id: int) -> None:
        """Delete a task and its artifacts; a running one is stopped first.

        A pending task is deleted only while it is not running (compare-and-set): if
        the scheduler claims it first, its script is stopped, then the row goes. A
        script still winding down after that finds its task gone and writes nothing.
        """
        row = self.get(task_id)
        if row["status"] == RUNNING or not self.store.delete_task(task_id, running_too=False):
            if self.runner is not None:
                self.runner.stop(task_id, wait=self.stop_wait)
            if not self.store.delete_task(task_id):
                raise NotFound(f"task {task_id} not found")
        remove_artifacts(self.artifacts_dir, task_id)

    # -- many tasks ------------------------------------------------------------------
    def retry_all(self) -> List[int]:
        ids = self.store.retry_all()
        self.wake()
        return ids

    def clear(self, statuses: Sequence[int]) -> List[int]:
        """Delete finished tasks (completed and/or failed) with their artifacts."""
        for i, status in enumerate(statuses):
            if status not in (COMPLETED, FAILED):
                raise BadRequest(f"status[{i}]", f"only finished tasks ({COMPLETED} completed,"
                                 f" {FAILED} failed) can be cleared, got {status}")
        ids = self.store.clear(sorted(set(statuses))) if statuses else []
        for task_id in ids:
            remove_artifacts(self.artifacts_dir, task_id)
        return ids

    @staticmethod
    def batch(ids: Sequence[int],
              action: Callable[[int], None]) -> Tuple[List[int], Dict[str, str]]:
        """Apply one operation to each task; (ids done, id -> why not) for the rest."""
        done, errors = [], {}
        for task_id in dict.fromkeys(ids):
            try:
                action(task_id)
                done.append(task_id)
            except NotFound:
                errors[str(task_id)] = "task not found"
            except BadRequest as exc:
                errors[str(task_id)] = exc.reason
            except LiteError as exc:
                errors[str(task_id)] = exc.message
        return done, errors


def normalize_username(text: str) -> str:
    return text.strip().lstrip("@")


def _first_of_each(items: Sequence[str], key: Callable[[str], str] = lambda x: x):
    """(index, item) of each item's first occurrence: duplicates count once, and an
    error names the index the client sent."""
    seen = set()
    for i, item in enumerate(items):
        if key(item) not in seen:
            seen.add(key(item))
            yield i, item


###############################################################################
# Server ######################################################################
###############################################################################

def sniff_media(head: bytes) -> Optional[Tuple[str, str]]:
    """(kind, extension) from a file's first bytes, or None: never trust the name."""
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"heim", b"heis"):
            return "image", ".heic"
        if brand == b"qt  ":
            return "video", ".mov"
        return "video", ".3gp" if brand.startswith(b"3g") else ".mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video", ".webm"
    if head.startswith(b"\xff\xd8\xff"):
        return "image", ".jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image", ".png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image", ".gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image", ".webp"
    return None


class Server:
    """Store, scripts, devices, runner, scheduler and task operations of one server.

    ``with_devices=False`` leaves out everything that touches adb: the HTTP API then
    works fully on the store, tasks stay pending, and the live-phone endpoints answer
    "device layer not available". Tests of the API use that.
    """

    def __init__(self, config: Config, *, with_devices: bool = True,
                 clock: Callable[[], float] = time.time):
        self.config = config
        self.clock = clock
        self.started_at = time.time()
        if not config.scripts.is_dir():
            raise ConfigError(f"scripts folder {config.scripts} does not exist")
        #: one server per database: a second would call the first's tasks interrupted
        self._db_lock = _lock_database(config.db) if with_devices else None
        try:
            self.store = Store(config.db, clock, sole_writer=self._db_lock is not None)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open database {config.db}: {exc}") from None
        self.events = EventHub(self.store)
        self.scripts = load_scripts(config.scripts)
        self.devices: Optional[DeviceManager] = None
        self.runner: Optional[Runner] = None
        self.screens: Optional[ScreenHub] = None
        if with_devices:
            self.devices = DeviceManager(self.store, config.adb_servers)
            self.screens = ScreenHub(self.devices, config.screen_fps)
            self.runner = Runner(self.store, self.devices, self.scripts, config.artifacts_dir)
        #: the scheduler also keeps expiry, leases and schedules without a device layer
        self.scheduler = Scheduler(self.store, self.devices, self.runner,
                                   config.max_running, clock)
        self.tasks = TaskOps(self.store, self.scripts, self.runner, config.artifacts_dir,
                             self.wake, config.materials_dir, self.wake_for_new)
        self._wire_operations()

    def _wire_operations(self) -> None:
        """Webhooks, account safety, schedules and metrics hang on the store's task-end
        listeners and the scheduler's chores (SPEC 8)."""
        config, store, scheduler = self.config, self.store, self.scheduler
        self.metrics = Metrics()
        self.webhooks = Webhooks(store, config.webhooks, config.webhook_secret, self.clock)
        self.webhooks.on_outcome = lambda outcome: self.metrics.inc(
            "tmlite_webhook_deliveries_total", "Webhook delivery tries by outcome",
            outcome=outcome)
        self.safety = AccountSafety(store, self.scripts)
        self.safety.on_cooldown = lambda account: self.webhooks.send(
            "account.cooldown", "account", self.safety.describe(account, self.clock()))
        # a schedule's slot makes its tasks as POST /task would (TaskOps.build)
        self.schedules = Schedules(store, lambda request, schedule_id: self.tasks.build(
            request, source="schedule", schedule_id=schedule_id))
        store.in_task_end.append(self.safety.task_ending)
        store.on_task_end += [self.safety.task_ended, self.webhooks.task_finished,
                              self._count_task_end, lambda *_: self.wake()]
        scheduler.chores += [self._deadlines, self.schedules.fire_due]
        scheduler.late_chores.append(self.safety.take_wake)
        if self.runner is not None:
            self.runner.gate = self.safety.wait_reason
            self.runner.on_finished = scheduler.wake
            self.devices.on_online = lambda serial: (scheduler.wake(), self._device_event(
                "device.online", serial))
            self.devices.on_offline = lambda serial: (self.runner.device_lost(serial),
                                                      self._device_event("device.offline",
                                                                         serial))
            self.devices.on_call = self._count_device_call

    def start(self) -> None:
        """Recover from a crash, then start watching phones and scheduling tasks."""
        interrupted = self.store.recover_interrupted()
        if interrupted:
            log.warning("%d task(s) were running when the server last stopped; marked "
                        "failed (%s): %s", len(interrupted), INTERRUPTED, interrupted)
        for task_id in interrupted:
            self.store.task_ended(task_id, "failed")
        self.webhooks.start()
        if self.devices is not None:
            self.devices.start()
        self.scheduler.start()

    def close(self) -> None:
        self.events.close()                        # open event streams end
        self.scheduler.stop()
        if self.runner is not None:
            self.runner.stop_all()
        if self.devices is not None:
            self.devices.stop()
        self.webhooks.stop()
        self.store.close()
        if self._db_lock is not None:
            self._db_lock.close()                  # releases the lock

    def wake(self) -> None:
        self.scheduler.wake()

    def wake_for_new(self, tasks: Sequence[NewTask]) -> None:
        """Wake the scheduler for tasks just created only if it must look before it
        would anyway: a round costs a dozen reads, which under a stream of creates
        took a request's time again in hand-offs between threads.

        A free, online phone's task must start at its start time. A phone offline or
        busy now wakes the scheduler itself when it comes online or its task ends
        (on_online, on_finished, both after the state the check below reads), and that
        round reads these tasks with the rest. An expiry must be kept on time. Nothing
        else about a new task has a clock: a timeout or a lease starts when it runs.
        """
        by = math.inf
        for task in tasks:
            if self.runner is not None and not task.external \
                    and self.devices.is_online(task.serial) \
                    and not self.runner.busy(task.serial):
                by = min(by, task.start_time or -math.inf)
            if task.expire_at is not None:
                by = min(by, task.expire_at)
        if by < math.inf:
            self.scheduler.wake_by(by)

    # -- operations' hooks (SPEC 8) ----------------------------------------------------
    def _deadlines(self, now: float) -> Optional[float]:
        """Scheduler chore: expiry, timeouts and worker leases; returns the next one."""
        self.store.expire_pending(now)
        if self.runner is not None:
            for task_id in self.store.timed_out(now):
                self.runner.time_out(task_id)
        self.store.expire_leases(now)
        return self.store.next_deadline(now)

    def _device_event(self, event: str, serial: str) -> None:
        row = self.store.get_device(serial)
        if row is not None:
            self.webhooks.send(event, "device", {
                "serial": serial, "state": row["state"], "model": row["model"],
                "battery": row["battery"], "adb_server": row["adb_server"],
                "last_seen": format_time(row["last_seen"])})

    def _count_task_end(self, task_id: int, outcome: str) -> None:
        row = self.store.get_task(task_id)
        if row is None:
            return
        self.metrics.inc("tmlite_tasks_finished_total", "Tasks ended, by script and outcome",
                         script=row["script_name"], outcome=outcome)
        if row["started_at"] is not None and row["end_time"] is not None:
            self.metrics.observe("tmlite_task_run_seconds", "Run time of ended tasks",
                                 row["end_time"] - row["started_at"], RUN_BUCKETS)

    def _count_device_call(self, service: str, seconds: float) -> None:
        self.metrics.observe("tmlite_device_call_seconds", "Latency of adb device calls",
                             seconds, CALL_BUCKETS)
        if "uiautomator dump" in service:
            self.metrics.inc("tmlite_window_dumps_total", "UI window dumps taken")

    def need_devices(self) -> DeviceManager:
        if self.devices is None:
            raise Unavailable("device layer not available")
        return self.devices

    # -- farm view: phones and materials (SPEC 7.2, 7.3) ------------------------
    def known_device(self, serial: str) -> sqlite3.Row:
        row = self.store.get_device(serial)
        if row is None:
            raise NotFound(f"device {serial} not found")
        return row

    def forget_device(self, serial: str) -> None:
        self.known_device(serial)
        if self.devices is not None and self.devices.is_online(serial):
            raise BadRequest("serial", f"device {serial} is online: only an offline phone "
                                       "can be forgotten (disconnect or unplug it first)")
        if not self.store.delete_device(serial):
            raise BadRequest("serial", f"device {serial} has pending or running tasks: "
                                       "stop or delete them first")
        if self.screens is not None:
            self.screens.forget(serial)

    def online_device(self, serial: str) -> DeviceManager:
        self.known_device(serial)
        devices = self.need_devices()
        if not devices.is_online(serial):
            raise Unavailable(f"device {serial} is {devices.state(serial)}")
        return devices

    def device_input(self, serial: str, action: Dict[str, Any], take_over: bool) -> None:
        """Drive a phone by hand; a running task is refused unless the user takes over."""
        devices = self.online_device(serial)
        running = self.store.query_one("SELECT id, script_name FROM tasks WHERE serial=?"
                                       f" AND status={RUNNING}", (serial,))
        if running is not None:
            if not take_over:
                raise BadRequest("take_over", f"task {running['id']} "
                                 f"({running['script_name']}) is running on {serial}: send "
                                 "take_over true to stop it and take the phone")
            self.tasks.stop(running["id"])
        try:
            remote_input(devices, serial, action)
        except (DeviceLost, CommandTimeout) as exc:
            raise Unavailable(f"device {serial}: {exc}") from None
        except (StepFailed, RuntimeError) as exc:  # text the phone cannot type
            raise BadRequest(action["action"], str(exc)) from None

    def material(self, material_id: Any) -> sqlite3.Row:
        text = str(material_id)
        row = self.store.get_material(int(text)) if re.fullmatch(r"\d{1,18}", text) else None
        if row is None:
            raise NotFound(f"material {text} not found")
        return row

    def delete_material(self, material_id: int) -> None:
        name = self.store.delete_material(material_id)
        if name is None:
            raise BadRequest("material_id", f"material {material_id} is held by a pending or "
                                            "running task: stop or delete the task first")
        with contextlib.suppress(FileNotFoundError):
            (self.config.materials_dir / name).unlink()

    def add_materials(self, files: List["UploadedFile"], tags: List[str],
                      username: Optional[str], caption: str) -> List[int]:
        """Keep uploaded files whose content is a video or an image; all or none.

        The same bytes (sha256) are one material: a second upload finds the first.
        """
        if not files:
            raise BadRequest("file", "no file part in the upload")
        kinds = []
        for f in files:
            kind = sniff_media(f.head)
            if kind is None:
                raise BadRequest("file", f"{f.name}: not a video (mp4, mov, webm, 3gp) or "
                                         "an image (jpeg, png, webp, gif, heic)")
            kinds.append(kind)
        ids = []
        for f, (kind, ext) in zip(files, kinds):
            final = f.sha256[:32] + ext
            material_id, created = self.store.add_material(
                f.name, kind, f.size, f.sha256, final, tags, username, caption)
            if created:
                os.replace(f.path, self.config.materials_dir / final)
            ids.append(material_id)
        return list(dict.fromkeys(ids))

    def screen(self, serial: str, fmt: str, max_age_ms: Optional[int],
               view: Optional[str]) -> Tuple[Frame, float]:
        self.online_device(serial)
        try:
            return self.screens.frame(serial, fmt, max_age_ms, view)
        except (DeviceLost, CommandTimeout, RuntimeError) as exc:
            with contextlib.suppress(Exception):
                self.store.upsert_device(serial, last_error=f"screenshot: {exc}"[:500])
            raise Unavailable(f"device {serial}: no screenshot ({exc})") from None



def _lock_database(db: Path):
    """Hold an exclusive lock beside the database for the life of the server."""
    try:
        import fcntl
    except ImportError:                             # not POSIX: no lock
        return None
    handle = open(db.with_name(db.name + ".lock"), "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ConfigError(f"database {db} is in use by another TikMatrix Lite") from None
    return handle


###############################################################################
# HTTP API ####################################################################
###############################################################################

API_PREFIX = "/api/v1"
#: the dashboard's files (GET /)
WEB_DIR = HERE / "web"
#: waitress threads for ordinary requests, and the extra ones event streams may hold:
#: a stream keeps its thread while open, so streams never take the API's threads. The
#: extra ones run only while their streams are open: idle threads in the pool cost the
#: API (each request got a thread of its own, and all contended for the interpreter)
API_THREADS = 8
EVENT_STREAMS = 16

#: Letters, digits, '.' and '_': what TikTok and Instagram allow in a user name.
USERNAME_RE = re.compile(r"[A-Za-z0-9._]{1,64}")
PACKAGE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+")
_PORT = r"([1-9]\d{0,3}|[1-5]\d{4}|6[0-4]\d{3}|65[0-4]\d\d|655[0-2]\d|6553[0-5])"

# Bodies and queries, declared like a script's PARAMS: checked by check_fields, and
# turned into the OpenAPI document, so the two cannot disagree.
TASK_IDS = {"task_ids": {"type": "list", "items": "int", "required": True,
                         "max_items": 10_000}}
TASK_CLEAR = {"status": {"type": "list", "required": True, "max_items": 10_000,
                         "items": {"type": "int", "choices": [COMPLETED, FAILED]},
                         "description": "2 (completed) and/or 3 (failed)"}}
DEVICE_ADDRESS = {"address": {
    "type": "str", "required": True, "max_length": 1000, "description": "host:port",
    "pattern": r" *([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:]+\]):" + _PORT + r" *"}}
ACCOUNT_FIELDS = {
    "serial": {"type": "str", "max_length": 1000, "description": "the device it is on"},
    "platform": {"type": "str", "choices": list(PLATFORM_NAMES)},
    "package": {"type": "str", "max_length": 1000, "pattern": PACKAGE_RE.pattern,
                "description": "an Android package name (default: the platform's app)"},
    "enabled": {"type": "bool"},
    # account safety (SPEC 8.1)
    "limits": {"type": "dict", "nullable": True,
               "description": "action -> {per_hour, per_day}; actions: "
                              + ", ".join(LIMITED_ACTIONS) + "; null: no limit"},
    "active_hours": {"type": "str", "max_length": 11, "pattern": ACTIVE_HOURS_RE.pattern,
                     "nullable": True, "description": "HH:MM-HH:MM, box local time; "
                                                      "null: any time"},
    "cooldown_hours": {"type": "float", "min": 0, "max": 720,
                       "description": "rest after a block screen (default 24)"},
}
ACCOUNT_CREATE = {
    "username": {"type": "str", "required": True, "max_length": 1000,
                 "pattern": r" *@*" + USERNAME_RE.pattern + r" *",
                 "description": "1-64 letters, digits, '.' or '_', an optional leading @"},
    **{k: {**v, "required": k in ("serial", "platform")} for k, v in ACCOUNT_FIELDS.items()},
}
_STATUS_WORD = r"[0-3]|[Pp][Ee][Nn][Dd][Ii][Nn][Gg]|[Rr][Uu][Nn][Nn][Ii][Nn][Gg]|" \
    r"[Cc][Oo][Mm][Pp][Ll][Ee][Tt][Ee][Dd]|[Ff][Aa][Ii][Ll][Ee][Dd]"
TASK_QUERY = {
    "status": {"type": "str", "pattern": rf" *({_STATUS_WORD})? *(, *({_STATUS_WORD})? *)*",
               "description": "0-3 or pending/running/completed/failed, or a comma list"},
    "creator": {"type": "str", "description": "a key's name, or admin"},
    "serial": {"type": "str"}, "script_name": {"type": "str"},
    "source": {"type": "str", "description": "api or ui"}, "username": {"type": "str"},
    "start_timestamp": {"type": "float", "description": "creation time from (epoch s)"},
    "end_timestamp": {"type": "float", "description": "creation time to (epoch s)"},
    "page": {"type": "int", "default": 1, "min": 1, "max": 10 ** 9},
    "page_size": {"type": "int", "default": 20, "min": 1,
                  "description": "at most 100; a larger size is clamped to 100"},
}
ACCOUNT_QUERY = {"serial": {"type": "str"}}

# Operations' bodies (SPEC 8)
KEY_ROLES = ("admin", "operator", "viewer")
KEY_CREATE = {"name": {"type": "str", "required": True, "max_length": 100},
              "role": {"type": "str", "required": True, "choices": list(KEY_ROLES)}}
_WORKER_ID = {"type": "str", "required": True, "min_length": 1, "max_length": 200}
WORKER_NEXT = {
    "worker_id": _WORKER_ID,
    "script_names": {"type": "list", "required": True, "max_items": 100,
                     "items": {"type": "str", "max_length": 1000},
                     "description": "external scripts this worker runs"},
    "lease_seconds": {"type": "int", "default": 300, "min": 30, "max": 3600},
}
WORKER_TASK = {"task_id": {"type": "int", "required": True, "min": 1, "max": INT64[1]},
               "worker_id": _WORKER_ID}
WORKER_PROGRESS = {**WORKER_TASK,
                   "progress": {"type": "int", "default": 0, "min": 0, "max": 100},
                   "message": {"type": "str", "default": "", "max_length": 500}}
WORKER_COMPLETE = {**WORKER_TASK,
                   "result": {"type": ["dict", "list", "str", "int", "float", "bool"],
                              "description": "any JSON: the task's result"}}
WORKER_FAIL = {**WORKER_TASK,
               "error": {"type": "str", "default": "failed by the worker",
                         "max_length": 2000},
               "allow_retry": {"type": "bool", "default": False}}
MAX_PAGE_SIZE = 100

# The farm view's (SPEC 7). Tags and groups are short names without a comma.
_NAME = {"type": "str", "max_length": 64, "pattern": r"[^,\x00]*",
         "description": "at most 64 characters, no comma"}
EVENTS_QUERY = {"after": {"type": "int", "min": 0, "max": 10 ** 18 - 1,
                          "description": "the last event id seen (or header Last-Event-ID)"}}
DEVICE_FIELDS = {"alias": {"type": "str", "max_length": 64},
                 "groups": {"type": "list", "items": _NAME, "max_items": 50}}
SCREENSHOT_QUERY = {
    "format": {"type": "str", "choices": ["png", "jpeg"], "default": "png"},
    "max_age_ms": {"type": "int", "min": 0, "max": 3_600_000,
                   "description": "a shared capture this recent will do"},
    "view": {"type": "str", "choices": ["grid", "focus"],
             "description": "counted in the --screen-fps budget as a grid tile or the "
                            "opened phone"},
}
_SCREEN_XY = {"type": "int", "min": 0, "max": 100_000}
DEVICE_INPUT = {
    "action": {"type": "str", "required": True, "choices": ["tap", "swipe", "key", "text"],
               "description": "tap needs x, y; swipe x1, y1, x2, y2; key key; text text"},
    **{name: dict(_SCREEN_XY) for name in ("x", "y", "x1", "y1", "x2", "y2")},
    "duration_ms": {"type": "int", "default": 300, "min": 1, "max": 10_000},
    "key": {"type": "str", "max_length": 40,
            "pattern": r"[A-Za-z0-9_]{1,32}|[Kk][Ee][Yy][Cc][Oo][Dd][Ee]_[A-Za-z0-9_]{1,32}",
            "description": "a key name like BACK, HOME, APP_SWITCH (KEYCODE_ optional)"},
    "text": {"type": "str", "min_length": 1, "max_length": 5000},
    "take_over": {"type": "bool", "default": False,
                  "description": "stop the task running on the phone first"},
}
_MATERIAL_USERNAME = {"type": "str", "max_length": 1000,
                      "pattern": r" *(@*" + USERNAME_RE.pattern + r")? *",
                      "description": "the account it is for, or empty for any account"}
_CAPTION = {"type": "str", "max_length": 5000}
MATERIAL_UPLOAD = {"tags": {"type": "str", "max_length": 5000, "description": "comma list"},
                   "username": _MATERIAL_USERNAME, "caption": _CAPTION}
MATERIAL_FIELDS = {
    "tags": {"type": ["list", "str"], "items": _NAME, "max_items": 50, "max_length": 5000,
             "description": "an array of tags or a comma list"},
    "username": {**_MATERIAL_USERNAME, "description": "the account it is for; empty or "
                                                      "null for any account"},
    "caption": _CAPTION,
}
MATERIAL_QUERY = {
    "kind": {"type": "str", "choices": ["video", "image"]}, "tag": {"type": "str"},
    "username": {"type": "str"}, "unused": {"type": "str", "description": "1: never used"},
    "page": {"type": "int", "default": 1, "min": 1, "max": 10 ** 9},
    "page_size": {"type": "int", "default": 20, "min": 1,
                  "description": "at most 100; a larger size is clamped to 100"},
}


#: The answers' JSON: json.dumps makes a new encoder at every call given an option.
_ANSWER_JSON = json.JSONEncoder(ensure_ascii=False)


class EncodedJson(str):
    """A handler's answer already encoded as JSON: the envelope goes around it as text."""


def _ok(data: Any) -> Dict[str, Any]:
    return {"code": 0, "message": "success", "data": data}


def route(method: str, path: str, summary: str, *, body: Optional[dict] = None,
          query: Optional[dict] = None, data: Optional[dict] = None,
          produces: str = "application/json", checks_body: bool = False,
          consumes: str = "application/json"):
    """Mark an Api method as the handler of an endpoint.

    ``body`` and ``query`` are declarations (like a script's PARAMS): the handler gets
    them checked as ``body=`` and ``query=``, unless ``checks_body`` says its operation
    checks the body itself, check_json included (a multipart ``consumes`` is always read
    by its handler).
    ``data`` is the OpenAPI schema of a success's data.
    """
    def mark(handler):
        handler.route = {"method": method, "path": path, "summary": summary, "body": body,
                         "query": query or {}, "data": data, "produces": produces,
                         "checks_body": checks_body, "consumes": consumes}
        return handler
    return mark


class Api:
    """The routes of SPEC 4, on a bottle app, with the access rules of SPEC 3.

    Every endpoint is a method marked with ``@route``, which declares its body, query
    and answer; the checks and the document at /openapi.json are made from those
    declarations, so they cannot drift from what is served.
    """

    def __init__(self, lite: Server):
        import bottle
        self.bottle = bottle
        self.lite = lite
        self.store = lite.store
        self.tasks = lite.tasks
        self.app = bottle.Bottle()
        self.app.default_error_handler = self._router_error
        self.routes: List[Dict[str, Any]] = []
        self.allowed_networks = list(lite.config.allow_from)
        self._clients: Dict[str, Tuple[Any, bool]] = {}
        self._queries: Dict[Tuple[int, str], Dict[str, Any]] = {}
        self._stream_slots = threading.BoundedSemaphore(EVENT_STREAMS)
        self._streams_open = 0
        self._streams_lock = threading.Lock()
        #: sets how many threads serve requests (make_server hooks waitress's pool here)
        self.set_threads: Callable[[int], None] = lambda count: None
        for name in dict.fromkeys(n for klass in type(self).__mro__ for n in vars(klass)):
            handler = getattr(self, name)
            if hasattr(handler, "route"):
                self._add_route(handler)
        self.app.route("/", "GET", self.page)          # the dashboard: no envelope
        self.app.route("/web/<name:path>", "GET", self.page_file)

    # -- plumbing ------------------------------------------------------------------
    def wsgi(self, environ, start_response):
        """Every request, logged in one line at info: client, method, path, status, time
        (never the key)."""
        if not http_log.isEnabledFor(logging.INFO):    # the line is all the rest is for
            return self._serve(environ, start_response)
        began = time.monotonic()
        seen = []

        def record_status(status, headers, *exc_info):
            seen.append(status.split(" ", 1)[0])
            return start_response(status, headers, *exc_info)

        try:
            return self._serve(environ, record_status)
        finally:
            query = environ.get("QUERY_STRING", "")
            http_log.info("%s %s %s%s %s %.1f ms", environ.get("REMOTE_ADDR", "-"),
                          environ.get("REQUEST_METHOD", "-"), environ.get("PATH_INFO", ""),
                          f"?{query}" if query else "", seen[0] if seen else "-",
                          (time.monotonic() - began) * 1000)

    def _serve(self, environ, start_response):
        """Access rules first (SPEC 3), then the size of the body, then the routes."""
        try:
            path = environ.get("PATH_INFO", "")
            # the page's own files hold no data: it must load to ask for the key
            self._check_access(environ, need_key=not (path == "/" or path.startswith("/web/")))
            length = environ.get("CONTENT_LENGTH") or "0"
            if not length.isdigit():
                raise BadRequest("Content-Length", "is not a number")
            limit = MAX_BODY_BYTES
            if path == API_PREFIX + "/material" and environ.get("REQUEST_METHOD") == "POST":
                limit = self.lite.config.max_upload_mb * 1024 * 1024 + 64 * 1024
            if int(length) > limit:
                raise BodyTooLarge(f"request body is larger than {limit} bytes")
            if path == "/metrics":
                return self._serve_metrics(environ, start_response)
        except LiteError as exc:
            body = json.dumps({"code": exc.code, "message": exc.message, "data": None})
            start_response(f"{exc.code // 100} {_reason(exc.code // 100)}",
                           [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
            return [body.encode()]
        return self.app(environ, start_response)

    def _serve_metrics(self, environ, start_response):
        """GET /metrics: Prometheus text, outside the JSON envelope."""
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            raise MethodNotAllowed("method not allowed here; allowed: GET")
        text = self.metrics().encode("utf-8")
        start_response("200 OK", [
            ("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
            ("Content-Length", str(len(text)))])
        return [text]

    def _check_access(self, environ, need_key: bool = True) -> None:
        address, allowed = self._client(environ.get("REMOTE_ADDR", ""))
        if address is None:
            raise Forbidden("client address unknown")
        if not allowed:
            log.warning("refused %s %s from %s: address not allowed (--allow-from)",
                        environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), address)
            raise Forbidden(f"client address {address} is not allowed (--allow-from)")
        key = self.lite.config.api_key
        if not need_key or (not key and not self.store.has_admin_key()):
            return                               # keys count only once an admin key exists
        sent = environ.get("HTTP_X_API_KEY", "")
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if auth[:7].lower() == "bearer ":
            sent = auth[7:].strip()
        role = name = None
        if key and hmac.compare_digest(sent.encode(), key.encode()):
            role, name = "admin", "admin"
        elif sent:
            row = self.store.api_key_by_hash(hash_key(sent))
            if row is not None:
                role, name = row["role"], row["name"]
        if role is None:
            log.warning("rejected %s %s from %s: API key %s", environ.get("REQUEST_METHOD"),
                        environ.get("PATH_INFO"), address, "wrong" if sent else "missing")
            raise Unauthorized("API key missing or wrong" if sent or auth
                               else "API key required: send 'Authorization: Bearer KEY'"
                                    " or 'X-API-Key: KEY'")
        environ["tmlite.creator"] = name
        self._check_role(environ, role, name)

    def _client(self, remote: str) -> Tuple[Any, bool]:
        """(the client's address, or None if it is none; whether --allow-from lets it in),
        kept per address: parsing it and testing the networks cost a request more than
        all the rest of a /task/stats."""
        known = self._clients.get(remote)
        if known is not None:
            return known
        try:
            address = ipaddress.ip_address(remote.split("%")[0])
            address = getattr(address, "ipv4_mapped", None) or address
            known = address, any(address in net for net in self.allowed_networks
                                 if net.version == address.version)
        except ValueError:
            known = None, False
        if len(self._clients) >= 1024:        # a LAN's hosts fit; a scan starts it again
            self._clients = {}
        self._clients[remote] = known
        return known

    @staticmethod
    def _check_role(environ, role: str, name: str) -> None:
        """viewer: GET only; operator: everything but keys; admin: all (SPEC 8.5)."""
        if role == "viewer" and environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            raise Forbidden(f"key {name!r} is a viewer: it may only read (GET)")
        if role == "operator" and environ.get("PATH_INFO", "").startswith(
                API_PREFIX + "/apikey"):
            raise Forbidden(f"key {name!r} is an operator: only admin keys manage keys")

    def _respond(self, status: int, payload: Any) -> str:
        response = self.bottle.response
        if status != 200:                  # bottle starts every request's response at 200
            response.status = status
        response.content_type = "application/json"
        return _ANSWER_JSON.encode(payload)

    def _error(self, exc: LiteError) -> str:
        return self._respond(exc.code // 100, {"code": exc.code, "message": exc.message,
                                               "data": None})

    def _router_error(self, http_error) -> str:
        """bottle's own errors (no route, wrong method) in the API's envelope."""
        if http_error.status_code == 404:
            exc: LiteError = NotFound(f"no such endpoint: {self.bottle.request.method} "
                                      f"{self.bottle.request.path}")
        elif http_error.status_code == 405:
            exc = MethodNotAllowed(f"method {self.bottle.request.method} not allowed here; "
                                   f"allowed: {http_error.headers.get('Allow', '')}")
        else:
            log.error("unhandled error: %s", http_error.body)
            exc = LiteError("internal error")
        body = self._error(exc)
        if http_error.status_code == 405:
            self.bottle.response.set_header("Allow", http_error.headers.get("Allow", ""))
        return body

    def _add_route(self, handler: Callable[..., Any]) -> None:
        """Serve one marked method: checked input in, the success envelope out."""
        spec = handler.route

        def endpoint(**kwargs):
            try:
                for name in ("task_id", "material_id", "schedule_id", "key_id"):
                    if not INT64[0] <= kwargs.get(name, 0) <= INT64[1]:
                        raise NotFound(f"{name[:-3]} {kwargs[name]} not found")
                if spec["body"] and spec["consumes"] == "application/json":
                    raw = self.json_body()
                    if not spec["checks_body"]:
                        check_json({k: v for k, v in raw.items() if k in spec["body"]})
                    kwargs["body"] = raw if spec["checks_body"] else \
                        check_fields(raw, spec["body"], switches=False)
                if spec["query"]:
                    kwargs["query"] = self.query(spec["query"])
                result = handler(**kwargs)
            except LiteError as exc:
                return self._error(exc)
            except Exception:
                log.exception("%s %s failed", spec["method"], spec["path"])
                return self._error(LiteError("internal error"))
            if isinstance(result, self.bottle.HTTPResponse):
                return result
            if isinstance(result, EncodedJson):
                self._respond(200, None)
                return f'{{"code": 0, "message": "success", "data": {result}}}'
            return self._respond(200, _ok(result))
        rule = re.sub(r"\{(\w+_id)\}", r"<\1:int>", spec["path"])
        rule = re.sub(r"\{(\w+)\}", r"<\1>", rule)
        self.app.route(API_PREFIX + rule, spec["method"], endpoint)
        self.routes.append(spec)

    def json_body(self) -> Dict[str, Any]:
        raw = self.bottle.request.environ["wsgi.input"].read(
            int(self.bottle.request.environ.get("CONTENT_LENGTH") or 0) or MAX_BODY_BYTES + 1)
        if len(raw) > MAX_BODY_BYTES:
            raise BodyTooLarge(f"request body is larger than {MAX_BODY_BYTES} bytes")
        if not raw.strip():
            raise BadRequest("body", "must be a JSON object, got an empty body")
        try:
            data = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadRequest("body", f"is not valid JSON: {exc}") from None
        except RecursionError:
            raise BadRequest("body", f"nests deeper than {MAX_JSON_DEPTH} levels") from None
        if not isinstance(data, dict):
            raise BadRequest("body", f"must be a JSON object, got {_json_type(data)}")
        return data

    def query(self, decls: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
        """The query string checked against its declarations (numbers read from text).

        A query string checked before is not parsed again: a client polling one page
        asks the same one each time, and reading it cost more than the kept page."""
        text = self.bottle.request.environ.get("QUERY_STRING", "")
        kept = self._queries.get((id(decls), text))
        if kept is not None:
            return dict(kept)                 # the handler's own copy
        q = dict(parse_qsl(text, keep_blank_values=False))
        values = {name: _query_value(name, q[name], decl["type"])
                  for name, decl in decls.items() if name in q}
        checked = check_fields(values, decls, switches=False)
        if len(self._queries) >= 256:
            self._queries = {}
        self._queries[(id(decls), text)] = checked
        return dict(checked)

    # -- tasks ---------------------------------------------------------------------------
    @route("POST", "/task", "Create tasks on devices or accounts", body=TASK_CREATE,
           checks_body=True, data={"task_ids": [int], "created_count": int})
    def create_task(self, body):
        ids = self.tasks.create(body, creator=self.bottle.request.environ.get(
            "tmlite.creator"))
        # ints only: Python spells a list of them as JSON does (one encoding saved on
        # the busiest write)
        return EncodedJson(f'{{"task_ids": {ids}, "created_count": {len(ids)}}}')

    @route("GET", "/task", "List tasks, newest first", query=TASK_QUERY,
           data={"items": ["Task"], "total": int, "page": int, "page_size": int})
    def list_tasks(self, query):
        names = {name: number for number, name in STATUS_TEXT.items()}
        statuses = [names.get(p.strip().lower()) if not p.strip().isdigit() else int(p)
                    for p in query.get("status", "").split(",") if p.strip()]
        page, page_size = query["page"], min(query["page_size"], MAX_PAGE_SIZE)
        username = query.get("username")
        items, total = self.store.task_page_json(
            statuses=statuses, serial=query.get("serial"),
            script_name=query.get("script_name"), source=query.get("source"),
            username=None if username is None else normalize_username(username),
            created_from=query.get("start_timestamp"), created_to=query.get("end_timestamp"),
            page=page, page_size=page_size, creator=query.get("creator"))
        # the page comes as JSON text: the envelope is put around it, not encoded again
        return EncodedJson(f'{{"items": {items}, "total": {total}, "page": {page},'
                           f' "page_size": {page_size}}}')

    @route("GET", "/task/stats", "Count tasks by status",
           data={k: int for k in ("total", "pending", "running", "completed", "failed")})
    def task_stats(self):
        return self.store.stats()

    @route("POST", "/task/retry-all", "Retry every failed task under its limit",
           data={"retried_count": int})
    def retry_all(self):
        return {"retried_count": len(self.tasks.retry_all())}

    @route("DELETE", "/task/batch", "Delete tasks (running ones are stopped first)",
           body=TASK_IDS, data={"deleted_count": int, "errors": {str: str}})
    def delete_batch(self, body):
        done, errors = self.tasks.batch(body["task_ids"], self.tasks.delete)
        return {"deleted_count": len(done), "errors": errors}

    @route("POST", "/task/batch/stop", "Stop tasks", body=TASK_IDS,
           data={"done": [int], "errors": {str: str}})
    def stop_batch(self, body):
        done, errors = self.tasks.batch(body["task_ids"], self.tasks.stop)
        return {"done": done, "errors": errors}

    @route("POST", "/task/batch/retry", "Retry failed tasks", body=TASK_IDS,
           data={"done": [int], "errors": {str: str}})
    def retry_batch(self, body):
        done, errors = self.tasks.batch(body["task_ids"], self.tasks.retry_unless_stopped)
        return {"done": done, "errors": errors}

    @route("POST", "/task/clear", "Delete finished tasks in the given states",
           body=TASK_CLEAR, data={"deleted_count": int})
    def clear_tasks(self, body):
        return {"deleted_count": len(self.tasks.clear(body["status"]))}

    @route("GET", "/task/{task_id}", "A task with its log and artifacts", data="TaskDetail")
    def get_task(self, task_id):
        out = task_to_json(self.tasks.get(task_id))
        out["log"] = [f"{format_time(r['at'])} {r['line']}"
                      for r in self.store.task_log(task_id)]
        out["artifacts"] = [f"{API_PREFIX}/task/{task_id}/artifacts/{name}" for name in
                            artifact_names(self.lite.config.artifacts_dir, task_id)]
        return out

    @route("DELETE", "/task/{task_id}", "Delete a task (a running one is stopped first)",
           data={"deleted": int})
    def delete_task(self, task_id):
        self.tasks.delete(task_id)
        return {"deleted": task_id}

    @route("POST", "/task/{task_id}/stop", "Stop a running task or cancel a pending one",
           data="Task")
    def stop_task(self, task_id):
        self.tasks.stop(task_id)
        return task_to_json(self.tasks.get(task_id))

    @route("POST", "/task/{task_id}/retry", "Put a failed task back to pending", data="Task")
    def retry_task(self, task_id):
        return task_to_json(self.tasks.retry(task_id))

    @route("GET", "/task/{task_id}/artifacts/{name}",
           "A failure screenshot (PNG) or UI dump (XML)", produces="image/png, text/xml")
    def get_artifact(self, task_id, name):
        folder = self.lite.config.artifacts_dir
        if name not in artifact_names(folder, task_id):
            raise NotFound(f"task {task_id} has no artifact {name!r}")
        return self.bottle.static_file(name, root=str(folder / str(task_id)))

    # -- phones ------------------------------------------------------------------------
    @route("GET", "/device", "Every known device", data={"items": ["Device"], "total": int})
    def list_devices(self):
        items = [device_to_json(row, self.lite.devices) for row in self.store.list_devices()]
        return {"items": items, "total": len(items)}

    @route("POST", "/device/connect", "adb connect a network or cloud phone",
           body=DEVICE_ADDRESS, data={"address": str, "message": str})
    def connect_device(self, body):
        address = body["address"].strip()
        message = self.lite.need_devices().connect(address)
        if "connected to" not in message:
            raise Unavailable(f"adb could not connect to {address}: {message.strip()}")
        self.store.upsert_device(address, connection="tcp", last_seen=self.store.clock())
        return {"address": address, "message": message.strip()}

    @route("POST", "/device/disconnect", "adb disconnect a network phone",
           body=DEVICE_ADDRESS, data={"address": str, "message": str})
    def disconnect_device(self, body):
        address = body["address"].strip()
        message = self.lite.need_devices().disconnect(address)
        return {"address": address, "message": message.strip()}

    # -- accounts ----------------------------------------------------------------------
    @route("GET", "/account", "Accounts", query=ACCOUNT_QUERY,
           data={"items": ["Account"], "total": int})
    def list_accounts(self, query):
        items = [self._account_json(r) for r in self.store.list_accounts(query.get("serial"))]
        return {"items": items, "total": len(items)}

    @route("POST", "/account", "Add an account bound to a device", body=ACCOUNT_CREATE,
           data="Account")
    def create_account(self, body):
        username = normalize_username(body["username"])
        serial, platform, package, enabled = self._account_fields(body, None)
        safety = account_safety_fields(body, None)
        with self.store.write():
            if not self.store.save_account(username, serial, platform, package, enabled,
                                           True):
                raise BadRequest("username", f"account {username} already exists")
            self.store.save_account_safety(username, *safety)
        return self._account_json(self.store.get_account(username))

    @route("GET", "/account/{username}", "One account", data="Account")
    def get_account(self, username):
        return self._account_json(self._account(username))

    @route("PUT", "/account/{username}", "Change an account's device, platform, package "
           "or enabled", body=ACCOUNT_FIELDS, data="Account")
    def update_account(self, username, body):
        row = self._account(username)
        serial, platform, package, enabled = self._account_fields(body, row)
        safety = account_safety_fields(body, row)
        with self.store.write():
            self.store.save_account(row["username"], serial, platform, package, enabled,
                                    False)
            self.store.save_account_safety(row["username"], *safety)
        self.lite.wake()                         # new limits may free waiting tasks
        return self._account_json(self.store.get_account(row["username"]))

    @route("DELETE", "/account/{username}", "Remove an account", data={"deleted": str})
    def delete_account(self, username):
        row = self._account(username)
        self.store.delete_account(row["username"])
        return {"deleted": row["username"]}

    # -- operations (SPEC 8): account safety, webhooks, schedules, workers, keys --------
    @route("POST", "/account/{username}/resume", "End an account's cooldown early",
           data="Account")
    def resume_account(self, username):
        row = self._account(username)
        self.store.set_cooldown(row["username"], None)
        self.lite.wake()
        return self._account_json(self.store.get_account(row["username"]))

    @route("GET", "/webhook/deliveries", "The last 500 webhook deliveries",
           data={"items": ["Delivery"], "total": int})
    def list_deliveries(self):
        items = [{"id": r["id"], "delivery_id": r["delivery_id"], "event": r["event"],
                  "url": r["url"], "tries": r["tries"], "last_status": r["last_status"],
                  "next_try": format_time(r["next_try"]),
                  "created_at": format_time(r["created_at"])}
                 for r in self.store.list_deliveries()]
        return {"items": items, "total": len(items)}

    @route("POST", "/schedule", "Create a recurring schedule", body=SCHEDULE_CREATE,
           data="Schedule")
    def create_schedule(self, body):
        fields = schedule_fields(body, None, self.tasks.build)
        return self._replan(self.store.save_schedule(None, fields))

    @route("GET", "/schedule", "Schedules", data={"items": ["Schedule"], "total": int})
    def list_schedules(self):
        items = [schedule_to_json(r) for r in self.store.list_schedules()]
        return {"items": items, "total": len(items)}

    @route("GET", "/schedule/{schedule_id}", "One schedule", data="Schedule")
    def get_schedule(self, schedule_id):
        return schedule_to_json(self._schedule(schedule_id))

    @route("PUT", "/schedule/{schedule_id}", "Change a schedule", body=SCHEDULE_FIELDS,
           data="Schedule")
    def update_schedule(self, schedule_id, body):
        row = self._schedule(schedule_id)
        self.store.save_schedule(schedule_id, schedule_fields(body, row, self.tasks.build))
        return self._replan(schedule_id)

    @route("DELETE", "/schedule/{schedule_id}", "Delete a schedule", data={"deleted": int})
    def delete_schedule(self, schedule_id):
        self._schedule(schedule_id)
        self.store.delete_schedule(schedule_id)
        return {"deleted": schedule_id}

    @route("POST", "/schedule/{schedule_id}/run", "Make a schedule's tasks now",
           data={"task_ids": [int], "created_count": int})
    def run_schedule(self, schedule_id):
        ids = self.lite.schedules.run_now(self._schedule(schedule_id))
        self.lite.wake()
        return {"task_ids": ids, "created_count": len(ids)}

    def _schedule(self, schedule_id: int) -> sqlite3.Row:
        row = self.store.get_schedule(schedule_id)
        if row is None:
            raise NotFound(f"schedule {schedule_id} not found")
        return row

    def _replan(self, schedule_id: int) -> Dict[str, Any]:
        """A new or changed schedule runs at its next slot from now."""
        row = self.store.get_schedule(schedule_id)
        slot, run = self.lite.schedules.plan(row, self.store.clock())
        self.store.save_schedule(schedule_id, {"next_slot": slot, "next_run": run})
        self.lite.wake()
        return schedule_to_json(self.store.get_schedule(schedule_id))

    @route("POST", "/worker/next", "Take the next due task of external scripts",
           body=WORKER_NEXT, data="TaskOrNull")
    def worker_next(self, body):
        names = body["script_names"]
        if not names:
            raise BadRequest("script_names", "must name at least one external script")
        for i, name in enumerate(names):
            script = self.lite.scripts.get(name)
            if script is None or script.runner != "external":
                raise BadRequest(f"script_names[{i}]", f"{name!r} is not an external script")
        row = self.store.worker_claim(body["worker_id"], names, body["lease_seconds"],
                                      self.store.clock())
        if row is None:
            return None
        self.lite.wake()                       # the scheduler now watches its lease
        return task_to_json(row)

    @route("POST", "/worker/progress", "Report progress; renews the lease",
           body=WORKER_PROGRESS, data="Task")
    def worker_progress(self, body):
        task_id, worker = self._worker_task(body)
        if not self.store.worker_progress(task_id, worker, body["progress"], body["message"],
                                          self.store.clock()):
            raise self._not_yours(task_id, worker)
        self.lite.wake()
        return task_to_json(self.store.get_task(task_id))

    @route("POST", "/worker/complete", "Complete a task taken by this worker",
           body=WORKER_COMPLETE, data="Task")
    def worker_complete(self, body):
        task_id, _ = self._worker_task(body)
        self.store.finish(task_id, ok=True, result=body.get("result"))
        return task_to_json(self.store.get_task(task_id))

    @route("POST", "/worker/fail", "Fail a task taken by this worker", body=WORKER_FAIL,
           data="Task")
    def worker_fail(self, body):
        task_id, _ = self._worker_task(body)
        allow = body["allow_retry"]
        self.store.finish(task_id, ok=False, error=body["error"], auto_retry=allow,
                          allow_auto_retry=allow)
        self.lite.wake()
        return task_to_json(self.store.get_task(task_id))

    def _worker_task(self, body: Dict[str, Any]) -> Tuple[int, str]:
        """The task and worker of a call; 40001 unless that worker holds that task."""
        task_id, worker = body["task_id"], body["worker_id"]
        row = self.store.get_task(task_id)
        if row is None or row["status"] != RUNNING or row["worker_id"] != worker:
            raise self._not_yours(task_id, worker)
        return task_id, worker

    @staticmethod
    def _not_yours(task_id: int, worker: str) -> BadRequest:
        return BadRequest("task_id", f"task {task_id} is not running for worker {worker!r}")

    @route("POST", "/apikey", "Create an API key (returned once)", body=KEY_CREATE,
           data="ApiKey")
    def create_key(self, body):
        name, role = body["name"].strip(), body["role"]
        if not name:
            raise BadRequest("name", "must not be empty")
        key = "tml_" + base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")
        key_id = self.store.add_api_key(name, role, hash_key(key))
        log.info("API key %s (%s, %s) created", key_id, name, role)
        return {"id": key_id, "name": name, "role": role, "key": key,
                "created_at": format_time(self.store.clock())}

    @route("GET", "/apikey", "API keys (no secrets)", data={"items": ["ApiKey"], "total": int})
    def list_keys(self):
        items = [{"id": r["id"], "name": r["name"], "role": r["role"],
                  "created_at": format_time(r["created_at"])}
                 for r in self.store.list_api_keys()]
        return {"items": items, "total": len(items)}

    @route("DELETE", "/apikey/{key_id}", "Delete an API key", data={"deleted": int})
    def delete_key(self, key_id):
        if not self.store.delete_api_key(key_id):
            raise NotFound(f"API key {key_id} not found")
        return {"deleted": key_id}

    def metrics(self) -> str:
        """GET /metrics (outside /api/v1, served by _serve()): Prometheus text, counted now."""
        lite, store = self.lite, self.store
        stats = store.stats()
        phones: Dict[str, float] = {}
        for row in store.list_devices():
            state = lite.devices.state(row["serial"]) if lite.devices else row["state"]
            phones[state] = phones.get(state, 0) + 1
        gauges = [
            ("tmlite_tasks", "Tasks by status",
             {f'{{status="{name}"}}': stats[name] for name in STATUS_TEXT.values()}),
            ("tmlite_phones", "Known phones by state",
             {f'{{state="{s}"}}': n for s, n in sorted(phones.items())}),
            ("tmlite_event_streams_open", "Open event streams",
             {"": lite.events.streams_open() if hasattr(lite.events, "streams_open")
              else 0}),
        ]
        return lite.metrics.render(gauges)

    def _account(self, username: str) -> sqlite3.Row:
        row = self.store.get_account(normalize_username(username))
        if row is None:
            raise NotFound(f"account {normalize_username(username)} not found")
        return row

    def _account_json(self, row: sqlite3.Row) -> Dict[str, Any]:
        return self.lite.safety.describe(row, self.store.clock())

    def _account_fields(self, body: Dict[str, Any], row: Optional[sqlite3.Row]):
        """A new account's fields, or a changed one's with what the body leaves out."""
        serial = body.get("serial") or (row["serial"] if row is not None else "")
        if self.store.get_device(serial) is None:
            raise BadRequest("serial", f"unknown device {serial!r}: connect it first")
        platform = body.get("platform") or row["platform"]
        package = body.get("package")
        if package is None:
            same = row is not None and row["platform"] == platform
            package = row["package"] if same else APP_PACKAGES[platform][0]
        enabled = body.get("enabled")
        if enabled is None:
            enabled = True if row is None else bool(row["enabled"])
        return serial, platform, package, enabled

    # -- farm view: events, materials, phones (SPEC 7) ------------------------------------
    @route("GET", "/events", "Live events (Server-Sent Events)", query=EVENTS_QUERY,
           produces="text/event-stream")
    def events_stream(self, query):
        """SPEC 7.1. A stream holds one of the threads kept for streams, never the API's."""
        after = query.get("after")
        if after is None:
            text = self.bottle.request.environ.get("HTTP_LAST_EVENT_ID", "").strip()
            if text and not re.fullmatch(r"\d{1,18}", text):
                raise BadRequest("Last-Event-ID", f"must be an event id, got {text!r}")
            after = int(text) if text else None
        if not self._stream_slots.acquire(blocking=False):
            raise Unavailable(f"too many event streams open (at most {EVENT_STREAMS})")
        self._streams_changed(+1)
        body = event_stream(self.lite.events, after, release=self._stream_closed)
        return self.bottle.HTTPResponse(body, status=200, headers={
            "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-store",
            "X-Accel-Buffering": "no"})

    def _streams_changed(self, by: int) -> None:
        """One thread more in the pool for each open stream, so the API keeps its own.
        Once the hub is closed the server is shutting down: its pool is left alone."""
        with self._streams_lock:
            self._streams_open += by
            if not self.lite.events.closed:
                self.set_threads(API_THREADS + self._streams_open)

    def _stream_closed(self) -> None:
        self._streams_changed(-1)
        self._stream_slots.release()

    @route("PUT", "/device/{serial}", "Rename a phone or put it in groups",
           body=DEVICE_FIELDS, data="Device")
    def update_device(self, serial, body):
        self.lite.known_device(serial)
        fields = {}
        if "alias" in body:
            fields["alias"] = body["alias"].strip()
        if "groups" in body:
            fields["groups"] = _dump_json(clean_names("groups", body["groups"]))
        self.store.upsert_device(serial, **fields)
        return device_to_json(self.store.list_devices(serial)[0], self.lite.devices)

    @route("DELETE", "/device/{serial}", "Forget an offline phone with no pending or "
           "running task", data={"deleted": str})
    def forget_device(self, serial):
        self.lite.forget_device(serial)
        return {"deleted": serial}

    @route("GET", "/device/{serial}/screenshot", "The phone's screen (PNG, or JPEG where "
           "the phone encodes it)", query=SCREENSHOT_QUERY, produces="image/png, image/jpeg")
    def device_screenshot(self, serial, query):
        frame, wait = self.lite.screen(serial, query["format"], query.get("max_age_ms"),
                                       query.get("view"))
        return self.bottle.HTTPResponse(frame.data, status=200, headers={
            "Content-Type": frame.mime, "Cache-Control": "no-store",
            "X-Next-Frame-Ms": str(int(wait * 1000))})

    @route("POST", "/device/{serial}/input", "Tap, swipe, press a key or type text",
           body=DEVICE_INPUT, data={"serial": str, "action": str})
    def device_input(self, serial, body):
        action = parse_input_action(body)
        self.lite.device_input(serial, action, body["take_over"])
        return {"serial": serial, "action": action["action"]}

    @route("POST", "/material", "Upload materials (multipart/form-data: file parts and "
           "these fields)", body=MATERIAL_UPLOAD, checks_body=True,
           consumes="multipart/form-data", data={"items": ["Material"]})
    def upload_materials(self, body=None):
        form = read_multipart(self.bottle.request.environ, self.lite.config.materials_dir,
                              self.lite.config.max_upload_mb * 1024 * 1024)
        try:
            check_fields(form.fields, MATERIAL_UPLOAD, switches=False)
            ids = self.lite.add_materials(form.files, **self._material_fields(form.fields))
        finally:
            form.discard()
        return {"items": [material_to_json(self.store.get_material(i)) for i in ids]}

    @route("GET", "/material", "Materials, newest first", query=MATERIAL_QUERY,
           data={"items": ["Material"], "total": int, "page": int, "page_size": int})
    def list_materials(self, query):
        page, page_size = query["page"], min(query["page_size"], MAX_PAGE_SIZE)
        username = query.get("username")
        rows, total = self.store.list_materials(
            kind=query.get("kind"), tag=query.get("tag"), unused=query.get("unused") == "1",
            username=None if username is None else normalize_username(username),
            page=page, page_size=page_size)
        return {"items": [material_to_json(r) for r in rows], "total": total, "page": page,
                "page_size": page_size}

    @route("GET", "/material/{material_id}", "One material", data="Material")
    def get_material(self, material_id):
        return material_to_json(self.lite.material(material_id))

    @route("GET", "/material/{material_id}/file", "A material's bytes (range requests)",
           produces="video/*, image/*")
    def material_file(self, material_id):
        row = self.lite.material(material_id)
        response = self.bottle.static_file(row["file"], root=str(
            self.lite.config.materials_dir))
        response.set_header("Content-Disposition", f"inline; filename*=UTF-8''"
                            f"{_url_quote(row['name'])}")
        return response

    @route("PUT", "/material/{material_id}", "Change a material's tags, account or caption",
           body=MATERIAL_FIELDS, checks_body=True, data="Material")
    def update_material(self, material_id, body):
        check_json({k: v for k, v in body.items() if k in MATERIAL_FIELDS})
        row = self.lite.material(material_id)
        check_fields(body, MATERIAL_FIELDS, switches=False)
        fields = self._material_fields({k: body[k] for k in MATERIAL_FIELDS if k in body},
                                       partial=True)
        if "tags" in fields:
            fields["tags"] = _dump_json(fields["tags"])
        self.store.update_material(row["id"], **fields)
        return material_to_json(self.store.get_material(row["id"]))

    @route("DELETE", "/material/{material_id}", "Delete a material no task holds",
           data={"deleted": int})
    def delete_material(self, material_id):
        self.lite.delete_material(self.lite.material(material_id)["id"])
        return {"deleted": material_id}

    def page(self):
        return self.page_file("index.html")

    def page_file(self, name):
        """The dashboard's files from web/ beside the module: no data, so no key."""
        response = self.bottle.static_file(name, root=str(WEB_DIR))
        if response.status_code >= 400:          # absent, or outside web/
            return self._error(NotFound(f"no such file: {name}"))
        response.set_header("Cache-Control", "no-cache")
        return response

    def _material_fields(self, data: Dict[str, Any], partial: bool = False):
        """tags (comma list or array), username (an account, or empty for any), caption."""
        out: Dict[str, Any] = {}
        if "tags" in data or not partial:
            tags = data.get("tags") or []
            if isinstance(tags, str):
                tags = tags.split(",")
            out["tags"] = clean_names("tags", tags)
        if "username" in data or not partial:
            name = data.get("username")
            out["username"] = None
            if name and name.strip():
                account = self.store.get_account(normalize_username(name.strip()))
                if account is None:
                    raise BadRequest("username", f"unknown account {name!r}")
                out["username"] = account["username"]
        if "caption" in data or not partial:
            out["caption"] = data.get("caption") or ""
        return out

    # -- scripts and meta -------------------------------------------------------------
    @route("GET", "/script", "The loaded scripts and their parameters",
           data={"items": ["Script"], "total": int})
    def list_scripts(self):
        items = [s.describe() for _, s in sorted(self.lite.scripts.items())]
        return {"items": items, "total": len(items)}

    @route("GET", "/license/check", "What this server's plan allows",
           data={"plan_name": str, "api_enabled": bool, "device_limit": int, "message": str})
    def license_check(self):
        return {"plan_name": "Lite", "api_enabled": True, "device_limit": 0,
                "message": "API access enabled"}

    @route("GET", "/health", "Version, uptime, time, database and adb status", data=dict)
    def health(self):
        lite = self.lite
        try:
            schema = self.store.schema_version()
            database = {"ok": True, "path": str(self.store.path), "schema_version": schema,
                        "size_bytes": self.store.path.stat().st_size}
        except Exception as exc:
            database = {"ok": False, "path": str(self.store.path), "error": str(exc)}
        return {
            "version": __version__, "uptime_seconds": int(time.time() - lite.started_at),
            "server_time": format_time(time.time()), "time_zone": local_timezone_name(),
            "database": database,
            "adb": {"enabled": lite.devices is not None,
                    "servers": lite.devices.status() if lite.devices else []},
            "scripts": sorted(lite.scripts),
            "running_tasks": lite.runner.active_count() if lite.runner else 0,
        }

    @route("GET", "/openapi.json", "This API as an OpenAPI 3 document")
    def openapi_document(self):
        return self.bottle.HTTPResponse(
            json.dumps(self.openapi(), ensure_ascii=False), status=200,
            headers={"Content-Type": "application/json"})

    def openapi(self) -> Dict[str, Any]:
        """An OpenAPI 3 document made from the route declarations."""
        paths: Dict[str, Dict[str, Any]] = {}
        for spec in self.routes:
            paths.setdefault(API_PREFIX + spec["path"], {})[spec["method"].lower()] = \
                openapi_operation(spec)
        security = [{"bearer": []}, {"apiKey": []}]
        return {
            "openapi": "3.0.3",
            "info": {"title": "TikMatrix Lite", "version": __version__,
                     "description": "The TikMatrix local task API, served by TikMatrix Lite."},
            "paths": paths,
            "security": security if self.lite.config.api_key else [{}] + security,
            "components": {"schemas": OPENAPI_SCHEMAS, "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}},
        }


def _query_value(name: str, text: str, kind: str) -> Any:
    """A query's text as the number its declaration wants; other kinds stay text."""
    if kind == "int":
        if not re.fullmatch(r" *-?[0-9]{1,19} *", text):
            raise BadRequest(name, f"must be an integer, got {text!r}")
        return int(text)
    if kind == "float":
        try:
            value = float(text)
        except ValueError:
            raise BadRequest(name, f"must be a number, got {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise BadRequest(name, f"must be a finite number, got {text!r}")
        return value
    return text


def account_safety_fields(body: Dict[str, Any], row: Optional[sqlite3.Row]
                          ) -> Tuple[Optional[dict], Optional[str], float]:
    """limits, active_hours and cooldown_hours of a checked account body (SPEC 8.1);
    fields not sent keep the row's values."""
    limits = _load_json(row["limits"]) if row is not None else None
    if "limits" in body:                        # null clears them
        limits = body["limits"] or {}
        for action, limit in limits.items():
            where = f"limits.{action}"
            if action not in LIMITED_ACTIONS:
                raise BadRequest(where, f"unknown action; known: {', '.join(LIMITED_ACTIONS)}")
            if not isinstance(limit, dict) or not limit or set(limit) - {"per_hour", "per_day"}:
                raise BadRequest(where, "takes an object with per_hour and/or per_day")
            for key, value in limit.items():
                if isinstance(value, bool) or not isinstance(value, int) \
                        or not 0 <= value <= 100_000:
                    raise BadRequest(f"{where}.{key}", f"is not a whole number 0-100000: "
                                                       f"{value!r}")
    hours = body["active_hours"] if "active_hours" in body else \
        (row["active_hours"] if row is not None else None)
    cooldown = body.get("cooldown_hours")
    if cooldown is None:
        cooldown = row["cooldown_hours"] if row is not None else DEFAULT_COOLDOWN_HOURS
    return limits or None, hours or None, float(cooldown)


def hash_key(key: str) -> str:
    """Keys are 192 random bits, so one SHA-256 is enough to store them safely."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


# -- OpenAPI, from the declarations ----------------------------------------------------
_OPENAPI_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean",
                  "list": "array", "dict": "object"}


def openapi_schema(decl: Dict[str, Any]) -> Dict[str, Any]:
    """One declaration (a script parameter, a body field, a query) as a JSON schema."""
    types = decl["type"] if isinstance(decl["type"], (list, tuple)) else [decl["type"]]
    if len(types) > 1:
        return {"anyOf": [openapi_schema({**decl, "type": t}) for t in types]}
    kind = types[0]
    out: Dict[str, Any] = {"type": _OPENAPI_TYPES[kind]}
    if decl.get("nullable"):
        out["nullable"] = True
    if kind == "int":
        out["format"] = "int64"
    for key, name in (("description", "description"), ("choices", "enum"),
                      ("min", "minimum"), ("max", "maximum"), ("default", "default")):
        if key in decl and not (key == "default" and decl[key] is None):
            out[name] = decl[key]
    if kind == "str":
        out["maxLength"] = decl.get("max_length", 100_000)
        if decl.get("min_length"):
            out["minLength"] = decl["min_length"]
        # a NUL is refused in any string (a real adbd cuts a command there)
        out["pattern"] = f"^(?:{decl['pattern']})$" if "pattern" in decl else "^[^\\x00]*$"
    if kind == "list":
        out["maxItems"] = decl.get("max_items", 10_000)
        items = decl.get("items")
        items = {"type": items} if isinstance(items, str) else items
        out["items"] = openapi_schema(items) if items else {}
    return out


def openapi_object(decls: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    out = {"type": "object", "properties": {n: openapi_schema(d) for n, d in decls.items()}}
    required = [n for n, d in decls.items() if d.get("required")]
    if required:
        out["required"] = required
    return out


def _answer_schema(shape: Any) -> Dict[str, Any]:
    """A success's data, written shortly: int/str/bool, "Name" of a component,
    [item], {str: value} for a map, {field: shape} for an object."""
    if shape in (int, str, bool):
        return {"type": {int: "integer", str: "string", bool: "boolean"}[shape]}
    if shape is dict:
        return {"type": "object", "additionalProperties": True}
    if isinstance(shape, str):
        return {"$ref": f"#/components/schemas/{shape}"}
    if isinstance(shape, list):
        return {"type": "array", "items": _answer_schema(shape[0])}
    if set(shape) == {str}:
        return {"type": "object", "additionalProperties": _answer_schema(shape[str])}
    return {"type": "object", "required": list(shape),
            "properties": {k: _answer_schema(v) for k, v in shape.items()}}


def openapi_operation(spec: Dict[str, Any]) -> Dict[str, Any]:
    params = [{"name": n, "in": "path", "required": True,
               "schema": {"type": "integer", "format": "int64"} if n.endswith("_id")
               else {"type": "string"}} for n in re.findall(r"\{(\w+)\}", spec["path"])]
    params += [{"name": n, "in": "query", "required": bool(d.get("required")),
                "schema": openapi_schema(d)} for n, d in spec["query"].items()]
    if spec["produces"] != "application/json":
        ok = {"description": "success", "content": {
            t.strip(): {"schema": {"type": "string", "format": "binary"}}
            for t in spec["produces"].split(",")}}
    elif spec["path"] == "/openapi.json":
        ok = {"description": "the OpenAPI document itself (not enveloped)",
              "content": {"application/json": {"schema": {"type": "object"}}}}
    else:
        envelope = {"type": "object", "required": ["code", "message", "data"],
                    "properties": {"code": {"type": "integer", "enum": [0]},
                                   "message": {"type": "string"},
                                   "data": _answer_schema(spec["data"] or dict)}}
        ok = {"description": "success", "content": {"application/json": {"schema": envelope}}}
    operation = {
        "summary": spec["summary"], "operationId": _operation_id(spec),
        "parameters": params, "responses": {"200": ok, "default": {
            "description": "error: code 40001, 40002, 40003, 40101, 40301, 40401, "
                           "40501, 41301 or 50001; HTTP status code // 100",
            "content": {"application/json": {"schema": {
                "$ref": "#/components/schemas/Error"}}}}}}
    if spec["body"]:
        schema = openapi_object(spec["body"])
        if spec["consumes"] == "multipart/form-data":
            schema["properties"]["file"] = {"type": "array", "description": "file part(s)",
                                            "items": {"type": "string", "format": "binary"}}
            schema["required"] = ["file"]
        operation["requestBody"] = {"required": True, "content": {
            spec["consumes"]: {"schema": schema}}}
    return operation


def _operation_id(spec: Dict[str, Any]) -> str:
    words = re.findall(r"[a-z]+", (spec["method"] + spec["path"]).lower().replace(
        "{", "by_"))
    return "_".join(words)


def _nullable(kind: str, **extra: Any) -> Dict[str, Any]:
    return {"type": kind, "nullable": True, **extra}


_TIME = _nullable("string", description="local time YYYY-MM-DD HH:MM:SS")
_TASK = {
    "id": {"type": "integer"}, "serial": {"type": "string"},
    "username": _nullable("string"), "script_name": {"type": "string"},
    "script_config": {"type": "object", "additionalProperties": True},
    "status": {"type": "integer", "enum": list(STATUS_TEXT)},
    "status_text": {"type": "string", "enum": list(STATUS_TEXT.values())},
    "source": {"type": "string"}, "priority": {"type": "integer"},
    "start_time": _TIME, "started_at": _TIME, "end_time": _TIME, "created_at": _TIME,
    "progress": {"type": "integer", "minimum": 0, "maximum": 100},
    "message": {"type": "string"}, "error": {"type": "string"},
    "result": _nullable("object", additionalProperties=True,
                        description="what the script returned"),
    "retry_count": {"type": "integer"}, "max_retry_count": {"type": "integer"},
    "auto_retry": {"type": "boolean"}, "min_interval": {"type": "integer"},
    "max_interval": {"type": "integer"},
    # operations' (SPEC 8)
    "callback_url": _nullable("string"), "expire_at": _TIME,
    "timeout": _nullable("integer", description="seconds it may run"),
    "schedule_id": _nullable("integer"),
    "creator": _nullable("string", description="the name of the key that made it"),
    "worker_id": _nullable("string"), "lease_until": _TIME,
}
OPENAPI_SCHEMAS: Dict[str, Any] = {
    "Error": {"type": "object", "required": ["code", "message", "data"], "properties": {
        "code": {"type": "integer"}, "message": {"type": "string"},
        "data": _nullable("object")}},
    "Task": {"type": "object", "required": list(_TASK), "properties": _TASK},
    "TaskDetail": {"allOf": [{"$ref": "#/components/schemas/Task"}, {
        "type": "object", "required": ["log", "artifacts"], "properties": {
            "log": {"type": "array", "items": {"type": "string"}},
            "artifacts": {"type": "array", "items": {"type": "string"}}}}]},
    "Device": {"type": "object", "properties": {
        "serial": {"type": "string"},
        "state": {"type": "string", "description": "device, offline, unauthorized, "
                                                   "disconnected, ..."},
        "model": {"type": "string"}, "android_version": {"type": "string"},
        "battery": _nullable("integer"), "adb_server": {"type": "string"},
        "connection": {"type": "string", "enum": ["usb", "tcp"]},
        "running_task_id": _nullable("integer"), "pending_count": {"type": "integer"},
        "last_seen": _TIME,
        # the farm view's (SPEC 7.3)
        "alias": {"type": "string", "description": "a name given on the dashboard"},
        "groups": {"type": "array", "items": {"type": "string"}},
        "ime": _nullable("string", description="the keyboard the phone had before Lite's"),
        "screen": _nullable("string", description="WIDTHxHEIGHT"),
        "apps": {"type": "object", "description": "package -> version of the apps scripts "
                                                 "drive", "additionalProperties": True},
        "last_error": _nullable("string", description="what last went wrong with it")}},
    "Material": {"type": "object", "properties": {
        "id": {"type": "integer"}, "name": {"type": "string"},
        "kind": {"type": "string", "enum": ["video", "image"]},
        "size": {"type": "integer"}, "sha256": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "username": _nullable("string", description="the account it is for (null: any)"),
        "caption": {"type": "string"}, "used_count": {"type": "integer"},
        "last_used_at": _TIME, "created_at": _TIME,
        "reserved_by": _nullable("integer", description="the task that holds it"),
        "url": {"type": "string", "description": "its bytes"}}},
    "Account": {"type": "object", "properties": {
        "username": {"type": "string"}, "serial": {"type": "string"},
        "platform": {"type": "string", "enum": list(PLATFORM_NAMES)},
        "package": {"type": "string"}, "enabled": {"type": "boolean"},
        "created_at": _TIME,
        # account safety (SPEC 8.1)
        "limits": _nullable("object", additionalProperties=True),
        "active_hours": _nullable("string"), "cooldown_hours": {"type": "number"},
        "status": {"type": "string", "enum": ["ok", "cooldown"]},
        "cooldown_until": _TIME,
        "counts": {"type": "object", "additionalProperties": True}}},
    # anyOf, not allOf: client generators (openapi-python-client) make a second copy of
    # Task's inner models from a nullable allOf and give up on Task altogether
    "TaskOrNull": {"nullable": True, "anyOf": [{"$ref": "#/components/schemas/Task"}]},
    "Schedule": {"type": "object", "properties": {
        "id": {"type": "integer"}, "name": {"type": "string"},
        "days": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 7}},
        "times": {"type": "array", "items": {"type": "string"}},
        "jitter_minutes": {"type": "integer"}, "enabled": {"type": "boolean"},
        "next_run": _TIME, "last_run": _TIME, "created_at": _TIME,
        "script_name": {"type": "string"},
        "script_config": {"type": "object", "additionalProperties": True}},
        "additionalProperties": True,
        "description": "its own fields and the POST /task fields it makes tasks with"},
    "Delivery": {"type": "object", "properties": {
        "id": {"type": "integer"}, "delivery_id": {"type": "string"},
        "event": {"type": "string"}, "url": {"type": "string"},
        "tries": {"type": "integer"}, "last_status": {"type": "string"},
        "next_try": _TIME, "created_at": _TIME}},
    "ApiKey": {"type": "object", "properties": {
        "id": {"type": "integer"}, "name": {"type": "string"},
        "role": {"type": "string", "enum": list(KEY_ROLES)},
        "key": {"type": "string", "description": "only when created: it is not kept"},
        "created_at": _TIME}},
    "Script": {"type": "object", "properties": {
        "name": {"type": "string"}, "description": {"type": "string"},
        "platforms": {"type": "array", "items": {"type": "string",
                                                 "enum": list(PLATFORM_NAMES)}},
        "params": {"type": "object", "description": "parameter name -> declaration",
                   "additionalProperties": {"type": "object", "additionalProperties": True}},
        "expands": {"type": "boolean"}}},
}


def clean_names(field_name: str, names: Sequence[str]) -> List[str]:
    """Tags or groups: trimmed, without empties and repeats, each short."""
    out = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    for i, name in enumerate(out):
        if len(name) > 64 or "," in name:
            raise BadRequest(f"{field_name}[{i}]", "must be at most 64 characters, no comma")
    if len(out) > 50:
        raise BadRequest(field_name, "at most 50")
    return out


def parse_input_action(body: Dict[str, Any]) -> Dict[str, Any]:
    """POST /device/{serial}/input (SPEC 7.3), its body checked by DEVICE_INPUT: the
    fields each action needs."""
    action = body["action"]

    def number(name: str) -> int:
        if name not in body:
            raise BadRequest(name, f"is required for {action}")
        return body[name]

    if action == "tap":
        return {"action": action, "x": number("x"), "y": number("y")}
    if action == "swipe":
        return {"action": action, **{n: number(n) for n in ("x1", "y1", "x2", "y2")},
                "duration_ms": body["duration_ms"]}
    if action == "key":
        key = number("key").upper()
        return {"action": action,
                "key": key[len("KEYCODE_"):] if key.startswith("KEYCODE_") else key}
    return {"action": action, "text": number("text")}


@dataclass
class UploadedFile:
    """A file part of a multipart upload, already on disk beside the library."""

    name: str
    path: Path
    size: int
    sha256: str
    head: bytes                                # its first bytes, to tell its kind


@dataclass
class UploadForm:
    fields: Dict[str, str]
    files: List[UploadedFile]

    def discard(self) -> None:
        """Remove what was not kept (kept files were moved away already)."""
        for f in self.files:
            with contextlib.suppress(FileNotFoundError):
                f.path.unlink()


def read_multipart(environ: Dict[str, Any], folder: Path, limit: int) -> UploadForm:
    """Stream a multipart/form-data body to files in ``folder``, 64 KiB at a time.

    Nothing is held whole in memory; each file is hashed as it is written. A body that
    ends before its closing boundary (an upload cut off) leaves nothing behind.
    """
    match = re.search(r'boundary="?([^";]+)"?', environ.get("CONTENT_TYPE", ""))
    if not environ.get("CONTENT_TYPE", "").startswith("multipart/form-data") or not match:
        raise BadRequest("body", "must be multipart/form-data with file parts")
    reader = _MultipartReader(environ["wsgi.input"],
                              int(environ.get("CONTENT_LENGTH") or 0), match[1].encode())
    folder.mkdir(parents=True, exist_ok=True)
    form = UploadForm({}, [])
    try:
        for headers in reader.parts():
            disposition = headers.get("content-disposition", "")
            name = re.search(r'\bname="([^"]*)"', disposition)
            filename = re.search(r'\bfilename="([^"]*)"', disposition)
            if filename is None:
                value = b"".join(reader.body(limit=64 * 1024))
                if name:
                    form.fields[name[1]] = value.decode("utf-8", "replace")
                continue
            form.files.append(_save_part(reader, folder, filename[1], limit))
        return form
    except BaseException:
        form.discard()
        raise


def _save_part(reader: "_MultipartReader", folder: Path, filename: str,
               limit: int) -> UploadedFile:
    import hashlib
    import tempfile
    digest, size, head = hashlib.sha256(), 0, b""
    handle, temp = tempfile.mkstemp(dir=folder, prefix=".upload-", suffix=".part")
    path = Path(temp)
    try:
        with os.fdopen(handle, "wb") as out:
            for chunk in reader.body(limit=limit):
                if len(head) < 64:
                    head += chunk[:64 - len(head)]
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
    except BaseException:
        path.unlink()
        raise
    name = Path(filename.replace("\\", "/")).name[:200] or "upload"
    return UploadedFile(name, path, size, digest.hexdigest(), head)


class _MultipartReader:
    """The parts of a multipart body, read from a stream with a small buffer."""

    def __init__(self, stream: Any, length: int, boundary: bytes):
        self.stream, self.left = stream, length
        self.delimiter = b"\r\n--" + boundary
        self.buffer = b"\r\n"                   # the first boundary has no CRLF before

    def _fill(self) -> bool:
        if self.left <= 0:
            return False
        chunk = self.stream.read(min(65536, self.left))
        if not chunk:
            self.left = 0
            return False
        self.left -= len(chunk)
        self.buffer += chunk
        return True

    def _cut_off(self) -> BadRequest:
        return BadRequest("file", "the upload was cut off before its end")

    def parts(self) -> Iterator[Dict[str, str]]:
        for _ in self.body(limit=1024 * 1024):    # the preamble, if any
            pass
        while True:
            while len(self.buffer) < 2:
                if not self._fill():
                    raise self._cut_off()
            if self.buffer.startswith(b"--"):
                return
            while b"\r\n\r\n" not in self.buffer:
                if len(self.buffer) > 16 * 1024 or not self._fill():
                    raise self._cut_off()
            raw, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            headers = {}
            for line in raw.decode("utf-8", "replace").split("\r\n"):
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
            yield headers

    def body(self, limit: int) -> Iterator[bytes]:
        """The current part's bytes up to the next delimiter (which is consumed)."""
        size, keep = 0, len(self.delimiter)
        while True:
            at = self.buffer.find(self.delimiter)
            if at >= 0:
                data, self.buffer = self.buffer[:at], self.buffer[at + keep:]
            elif len(self.buffer) > keep:
                data, self.buffer = self.buffer[:-keep], self.buffer[-keep:]
            else:
                data = b""
            size += len(data)
            if size > limit:
                raise BodyTooLarge(f"upload part is larger than {limit} bytes")
            if data:
                yield data
            if at >= 0:
                return
            if not self._fill():
                raise self._cut_off()


def _url_quote(text: str) -> str:
    from urllib.parse import quote
    return quote(text, safe="")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _reason(status: int) -> str:
    from http import HTTPStatus
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def device_to_json(row: sqlite3.Row, devices: Optional[DeviceManager]) -> Dict[str, Any]:
    return {"serial": row["serial"],
            "state": devices.state(row["serial"]) if devices else row["state"],
            "model": row["model"], "android_version": row["android_version"],
            "battery": row["battery"], "adb_server": row["adb_server"],
            "connection": row["connection"], "running_task_id": row["running_task_id"],
            "pending_count": row["pending_count"], "last_seen": format_time(row["last_seen"]),
            "alias": row["alias"], "groups": _load_json(row["groups"]) or [],
            "ime": row["ime"], "screen": row["screen"] or None,
            "apps": _load_json(row["apps"]) or {}, "last_error": row["last_error"]}


def material_to_json(row: sqlite3.Row) -> Dict[str, Any]:
    return {"id": row["id"], "name": row["name"], "kind": row["kind"], "size": row["size"],
            "sha256": row["sha256"], "tags": _load_json(row["tags"]),
            "username": row["username"], "caption": row["caption"],
            "used_count": row["used_count"], "last_used_at": format_time(row["last_used_at"]),
            "created_at": format_time(row["created_at"]), "reserved_by": row["reserved_by"],
            "url": f"{API_PREFIX}/material/{row['id']}/file"}


def account_to_json(row: sqlite3.Row) -> Dict[str, Any]:
    return {"username": row["username"], "serial": row["serial"],
            "platform": row["platform"], "package": row["package"],
            "enabled": bool(row["enabled"]), "created_at": format_time(row["created_at"])}


def create_app(config: Config, lite: Optional[Server] = None):
    """The WSGI application for a configuration (a Lite without adb unless one is given).

    The returned callable carries ``.lite`` and ``.api`` so tests can reach the store.
    """
    lite = lite or Server(config, with_devices=False)
    api = Api(lite)

    def application(environ, start_response):
        return api.wsgi(environ, start_response)

    application.lite = lite
    application.api = api
    return application


###############################################################################
# Main ########################################################################
###############################################################################

#: Connections open at once: room for the dashboard's event streams of many browsers.
CONNECTION_LIMIT = 512
#: Connections one client address may hold: an allowed one, and one outside --allow-from
#: (which only ever gets 40301). Idle sockets of one host cannot shut others out.
CONNECTIONS_PER_HOST = 64
CONNECTIONS_PER_STRANGER = 4
#: Seconds before an idle connection (no request in progress) is closed.
IDLE_CONNECTION_TIMEOUT = 30


def make_server(config: Config, lite: Server):
    """Bind the port (a taken port is a ConfigError) before anything else starts."""
    import waitress.server
    app = create_app(config, lite)
    try:
        server = waitress.server.create_server(
            app, host=config.host, port=config.port,
            threads=API_THREADS, ident="TikMatrix-Lite",
            max_request_body_size=max(8 * MAX_BODY_BYTES,
                                      (config.max_upload_mb + 1) * 1024 * 1024),
            clear_untrusted_proxy_headers=True, asyncore_loop_timeout=1,
            connection_limit=CONNECTION_LIMIT, channel_timeout=IDLE_CONNECTION_TIMEOUT,
            cleanup_interval=10)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {config.host}:{config.port}: "
                          f"{exc.strerror or exc}") from None
    app.api.set_threads = server.task_dispatcher.set_thread_count   # + open streams
    channel_class = _capped_channel_class(config.allow_from)
    listeners = server.map.values() if isinstance(server, waitress.server.MultiSocketServer) \
        else [server]                                 # one listener per address
    for listener in listeners:
        if isinstance(listener, waitress.server.BaseWSGIServer):
            listener.channel_class = channel_class
    return server


class _ConnectionsPerHost:
    """Open connections counted per client address, each address with its cap."""

    def __init__(self, allowed: Sequence[Any]):
        self.allowed = list(allowed)
        self._open: Dict[str, int] = {}
        self._lock = threading.Lock()

    def cap_of(self, host: str) -> int:
        try:
            address = ipaddress.ip_address(host.split("%")[0])
            address = getattr(address, "ipv4_mapped", None) or address
        except ValueError:
            return CONNECTIONS_PER_STRANGER
        known = any(address in net for net in self.allowed if net.version == address.version)
        return CONNECTIONS_PER_HOST if known else CONNECTIONS_PER_STRANGER

    def take(self, host: str) -> bool:
        """Count one more connection of the host; False if it holds its cap already."""
        with self._lock:
            if self._open.get(host, 0) >= self.cap_of(host):
                return False
            self._open[host] = self._open.get(host, 0) + 1
            return True

    def give_back(self, host: str) -> None:
        with self._lock:
            self._open[host] -= 1
            if not self._open[host]:
                del self._open[host]


def _capped_channel_class(allowed: Sequence[Any]):
    """waitress's connection, refused at accept time when its host holds too many, and
    writable only when the main loop can send.

    waitress counts every socket towards one limit, before any request is read, so a
    host anywhere on the LAN could fill it with idle sockets and shut out the clients
    that are allowed. Counting per host stops that where it starts.
    """
    from waitress.channel import HTTPChannel
    counts = _ConnectionsPerHost(allowed)

    class CappedChannel(HTTPChannel):
        counted_host: Optional[str] = None

        def writable(self):
            """Only when handle_write can send something. waitress says writable as soon
            as a response has bytes in the buffer, but sends nothing while the worker
            holds the buffer's lock (sending them itself) or while they are fewer than
            send_bytes: select() then returned at once and the main loop spun, taking
            the GIL from the workers (60x swings in throughput on 2 cores). The worker
            pulls the trigger when it leaves bytes behind, and at the end of its task."""
            if self.requests and not (self.will_close or self.close_when_flushed):
                if self.total_outbufs_len < self.adj.send_bytes:
                    return False
                if not self.outbuf_lock.acquire(False):
                    return False
                self.outbuf_lock.release()
            return super().writable()

        def del_channel(self, map=None):
            host, self.counted_host = self.counted_host, None
            if host is not None:
                counts.give_back(host)
            super().del_channel(map)

    def accept(server, sock, addr, adj, map=None):
        host = addr[0] if isinstance(addr, tuple) else ""
        if not counts.take(host):
            with contextlib.suppress(OSError):
                sock.close()
            return None
        try:
            channel = CappedChannel(server, sock, addr, adj, map=map)
        except BaseException:
            counts.give_back(host)
            raise
        channel.counted_host = host
        return channel

    return accept


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse the configuration, open the store, bind the port, start, serve until stopped."""
    import signal
    try:
        config = parse_config(argv)
    except SystemExit as exc:                   # --help, --version, or a bad flag
        return exc.code if isinstance(exc.code, int) else 2
    try:
        setup_logging(config.log_level, config.log_file)
    except ConfigError as exc:
        print(f"tikmatrix_lite: error: {exc}", file=sys.stderr)
        return 1
    lite = server = None
    try:
        try:
            config.db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the folder of database {config.db}: "
                              f"{exc.strerror or exc}") from None
        lite = Server(config)
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        with _shutdown_signals_to_main_thread():
            server = make_server(config, lite)
            _warn_if_open(config)
            lite.start()
        log.info("TikMatrix Lite %s serving http://%s:%d%s/ (database %s)", __version__,
                 config.host, config.port, API_PREFIX, config.db)
        server.run()
    except KeyboardInterrupt:
        log.info("shutting down")
    except (ConfigError, OSError) as exc:
        print(f"tikmatrix_lite: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if lite is not None:                # open event streams end, freeing their threads
            lite.events.close(wait=2)
        if server is not None:
            server.close()
        if lite is not None:
            lite.close()
    return 0


def _raise_keyboard_interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _shutdown_signals_to_main_thread() -> Iterator[None]:
    """Start threads with SIGINT/SIGTERM blocked, so the kernel delivers them to the
    main thread.

    The main thread sleeps in waitress's select; a signal the kernel hands to it ends
    the select at once, one handed to another thread only when the select times out.
    Threads inherit the mask of the thread that starts them, so blocking the signals
    while the threads start covers every thread started later too. (Before Python 3.12
    another thread can still hide a signal that lands while the main thread runs Python
    code; the select's 1 s timeout bounds that delay.)
    """
    import signal
    signals = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)


def _warn_if_open(config: Config) -> None:
    """SPEC 3: listening beyond loopback without a key deserves one warning."""
    try:
        loopback = ipaddress.ip_address(config.host).is_loopback
    except ValueError:
        loopback = config.host == "localhost"
    if not loopback and not config.api_key:
        log.warning("listening on %s without an API key: anyone on the allowed networks "
                    "(%s) can drive the phones; set --api-key", config.host,
                    ", ".join(map(str, config.allow_from)))


if __name__ == "__main__":
    sys.exit(main())
