#!/usr/bin/env python3
"""TikMatrix Lite: a phone-farm task server for a small box full of Android phones.

Copy this file and the ``scripts/`` folder onto a Raspberry Pi (or any Linux box),
``pip install -r requirements.txt`` and run ``python tikmatrix_lite.py``. It serves the
TikMatrix local task API on port 50809, so clients written for TikMatrix work against it
unchanged, keeps tasks, devices and accounts in one sqlite file beside the program, and
runs each task on its phone through a real adb server (``adbutils``), one task at a time
per phone.

The module reads top to bottom: configuration, errors, store, scripts, devices, phone
helpers, runner, scheduler, operations (webhooks, account safety, schedules, metrics),
server, HTTP API, main. Anything a section uses is defined above it,
except that the runner and scheduler are handed the objects they call.

Needs: Python 3.9+, bottle, waitress, adbutils. Licence: MIT.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as _dt
import functools
import hashlib
import hmac
import importlib.util
import ipaddress
import json
import logging
import math
import os
import posixpath
import random
import re
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
    #: URLs that get every webhook event (SPEC 8.3), and the secret that signs them
    webhooks: List[str] = field(default_factory=list)
    webhook_secret: Optional[str] = None
    #: a log file rotated at 10 MB (3 kept), beside the log on stderr
    log_file: Optional[Path] = None

    @property
    def artifacts_dir(self) -> Path:
        """Failure screenshots and UI dumps live in a folder beside the database."""
        return self.db.parent / (self.db.stem + "-artifacts")


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


def _http_url(text: str) -> str:
    from urllib.parse import urlsplit
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
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add("--host", help="address to listen on [TMLITE_HOST]", default=DEFAULT_HOST)
    add("--port", type=_port, default=DEFAULT_PORT, help="port to listen on [TMLITE_PORT]")
    add("--db", type=Path, default=HERE / "tikmatrix_lite.db",
        help="sqlite file for tasks, devices and accounts; created on first start [TMLITE_DB]")
    add("--scripts", type=Path, default=HERE / "scripts",
        help="folder of automation scripts [TMLITE_SCRIPTS]")
    add("--adb-server", dest="adb_servers", action="append", type=_adb_address,
        metavar="HOST:PORT",
        help="adb server to use; repeat for several hosts. A local server is started when "
             f"none answers at {DEFAULT_ADB_SERVER} [TMLITE_ADB_SERVERS, comma list] "
             f"(default: {DEFAULT_ADB_SERVER})")
    add("--api-key", help="when set, every request must send it as 'Authorization: Bearer "
                          "KEY' or 'X-API-Key: KEY' [TMLITE_API_KEY]")
    add("--allow-from", action="append", type=_network, metavar="CIDR",
        help="client network allowed; repeatable [TMLITE_ALLOW_FROM, comma list] "
             "(default: loopback and private ranges)")
    add("--max-running", type=_non_negative, default=0,
        help="cap on tasks running at once across all devices, 0 for no cap "
             "[TMLITE_MAX_RUNNING]")
    add("--log-level", choices=LOG_LEVELS, default="info", help="[TMLITE_LOG_LEVEL]")
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
    "TMLITE_ALLOW_FROM": ("--allow-from", True), "TMLITE_MAX_RUNNING": ("--max-running", False),
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
                           if k not in ("adb_servers", "allow_from", "webhooks")})
    args = parser.parse_args(argv)
    return Config(
        host=args.host, port=args.port, db=args.db.expanduser().resolve(),
        scripts=args.scripts.expanduser().resolve(),
        adb_servers=args.adb_servers or env_args.adb_servers or [DEFAULT_ADB_SERVER],
        api_key=args.api_key or None,
        allow_from=args.allow_from or env_args.allow_from or
        [ipaddress.ip_network(n) for n in DEFAULT_ALLOW_FROM],
        max_running=args.max_running, log_level=args.log_level,
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
        self.field = field_name


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


class Stopped(Exception):
    """Raised inside a script when its task is stopped by the user."""


class DeviceLost(Exception):
    """Raised inside a script when its phone disconnected or stopped answering."""


class CommandTimeout(Exception):
    """A device command did not finish within its timeout."""


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

STATUS_TEXT = {0: "pending", 1: "running", 2: "completed", 3: "failed"}
PENDING, RUNNING, COMPLETED, FAILED = 0, 1, 2, 3
STOPPED_BY_USER = "stopped by user"
INTERRUPTED = "interrupted by restart"
DISCONNECTED = "device disconnected"
LEASE_EXPIRED = "worker lease expired"

#: Forward migrations; PRAGMA user_version counts how many have been applied.
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
    # 2: one index per real query (each index is written on every change of a task, and
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
            ON CONFLICT DO UPDATE SET n = n + 1;
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
            ON CONFLICT DO UPDATE SET n = n + 1;
    END;
    """,
    # 3: operations (SPEC 8): callbacks, expiry, timeouts, schedules, external workers,
    # account safety, keys. External tasks hold no phone, so the one-running-task-per-
    # device rule leaves them out. Its indexes follow schema 2's rule: one per real
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
    -- schema 2's tasks_due again, with external after serial: a phone's claim and due
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
#: A runner's log lines and progress wait in memory for the next write; this many lines
#: of one task make a write of their own.
MAX_BUFFERED_LINES = 100
#: A device's last_seen alone is written when it is this much older than the new one.
LAST_SEEN_PRECISION = 60.0

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
    callback_url: Optional[str] = None
    expire_at: Optional[float] = None
    timeout: Optional[int] = None
    schedule_id: Optional[int] = None
    creator: Optional[str] = None
    external: bool = False
    message: str = ""


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

    def __init__(self, path: Path, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.clock = clock
        self._write_lock = threading.RLock()
        self._local = threading.local()
        #: every connection with the thread that uses it, so close() can spare live ones
        self._all_connections: List[Tuple[threading.Thread, sqlite3.Connection]] = []
        self._connections_lock = threading.Lock()
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
        self.migrate()
        self._adopt_page_size()
        self._watch_changes()

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

    def query(self, sql: str, params: Sequence[Any] = ()) -> List[sqlite3.Row]:
        return self._reader().execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> Optional[sqlite3.Row]:
        return self._reader().execute(sql, params).fetchone()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One transaction on the writer connection: all of it is committed, or none.

        A write inside a write (same thread, holding the lock) joins the outer one. If
        COMMIT itself fails (disk full, I/O error) the transaction is rolled back, so
        the connection never stays inside a transaction that later writes would join.
        Every transaction first writes the log lines and progress waiting in memory.
        """
        with self._write_lock:
            conn = self._writer
            depth = getattr(self._local, "write_depth", 0)
            if depth:
                yield conn
                return
            self._local.write_depth = 1
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    flushed = self._flush_live(conn)
                    yield conn
                    self._commit(conn, flushed)
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    self._unflush_live()
                    self._due_marks.clear()
                    raise
                self._close_ended()
                self._mark_due_stale()
            finally:
                self._local.write_depth = 0

    # -- log lines and progress in memory ---------------------------------------
    def _watch_changes(self) -> None:
        """Let sqlite tell this process's writer which tasks leave 'running' (a finish, a
        stop, a delete, a recovery: their log lines then go straight to the file) and
        which phones' pending tasks or rest change (due_times recomputes only those)."""
        self._writer.create_function("task_left_running", 1, self._ended.append)
        self._writer.create_function("due_changed", 1, self._due_marks.append)
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
        }
        for name, (event, guard, call) in triggers.items():
            self._writer.execute(f"CREATE TEMP TRIGGER IF NOT EXISTS {name} AFTER {event}"
                                 f" WHEN {guard} BEGIN SELECT {call}; END")

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
            for number in range(version, len(MIGRATIONS)):
                for statement in _split_sql(MIGRATIONS[number]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={number + 1}")
        return len(MIGRATIONS)

    def _adopt_page_size(self) -> None:
        """Rewrite a small file made with bigger pages (before schema 2) with PAGE_SIZE
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
        """Insert all the tasks in one transaction, or none of them."""
        now = self.clock()
        ids = []
        with self.write() as conn:
            for t in tasks:
                cur = conn.execute(
                    "INSERT INTO tasks (serial, username, script_name, script_config, source,"
                    " priority, start_time, rest_seconds, min_interval, max_interval,"
                    " created_at, max_retry_count, auto_retry, callback_url, expire_at,"
                    " timeout, schedule_id, creator, external, message)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (t.serial, t.username, t.script_name, _dump_json(t.script_config),
                     t.source, t.priority, t.start_time or now, t.rest_seconds,
                     t.min_interval, t.max_interval, now, t.max_retry_count,
                     int(t.auto_retry), t.callback_url, t.expire_at, t.timeout,
                     t.schedule_id, t.creator, int(t.external), t.message))
                ids.append(cur.lastrowid)
        return ids

    def get_task(self, task_id: int) -> Optional[sqlite3.Row]:
        return self._with_live(self.query_one("SELECT * FROM tasks WHERE id=?", (task_id,)))

    def list_tasks(self, *, statuses: Sequence[int] = (), serial: Optional[str] = None,
                   script_name: Optional[str] = None, source: Optional[str] = None,
                   username: Optional[str] = None, created_from: Optional[float] = None,
                   created_to: Optional[float] = None, page: int = 1,
                   page_size: int = 20, creator: Optional[str] = None
                   ) -> Tuple[List[Any], int]:
        """Newest first, filtered and paginated; returns (rows, total matching).

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
            count, first, last = self.query_one(
                "SELECT COUNT(*), MIN(id), MAX(id) FROM tasks INDEXED BY tasks_created"
                " WHERE created_at BETWEEN ? AND ?", (low, high))
            if not count:
                return [], 0
            where += ["id BETWEEN ? AND ?", "created_at BETWEEN ? AND ?"]
            params += [first, last, low, high]
            total = count if len(where) == 2 else None
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        table = "tasks " + self._status_index(statuses, total)
        if total is None:
            total = self.query_one(f"SELECT COUNT(*) FROM {table} {clause}", params)[0]
        rows = self.query(f"SELECT * FROM {table} {clause} ORDER BY id DESC LIMIT ? OFFSET ?",
                          params + [page_size, (page - 1) * page_size])
        return [self._with_live(row) for row in rows], total

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
        return self.query_one(f"SELECT COALESCE(SUM(n), 0) FROM task_counts {clause}",
                              params)[0]

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
        counts = dict(self.query("SELECT status, SUM(n) FROM task_counts GROUP BY status"))
        out = {"total": sum(counts.values())}
        for status, name in STATUS_TEXT.items():
            out[name] = counts.get(status, 0)
        return out

    # -- tasks: what runners write ------------------------------------------
    def add_log(self, task_id: int, line: str) -> None:
        """A running task's line waits in memory for the next write; another is written."""
        at = self.clock()
        with self._live_lock:
            live = self._live.get(task_id)
            if live is not None:
                live.lines.append((at, line))
                if len(live.lines) < MAX_BUFFERED_LINES:
                    return
        with self.write() as conn:        # flushes the buffered lines, or writes this one
            if live is None:
                conn.execute("INSERT INTO task_log (task_id, at, line) VALUES (?,?,?)",
                             (task_id, at, line))

    def set_progress(self, task_id: int, percent: int, message: str) -> None:
        """A running task's progress waits in memory for the next write (reads see it)."""
        with self._live_lock:
            live = self._live.get(task_id)
            if live is not None:
                live.progress, live.message, live.progress_dirty = percent, message, True
                return
        with self.write() as conn:
            conn.execute(f"UPDATE tasks SET progress=?, message=? WHERE id=?"
                         f" AND status={RUNNING}", (percent, message, task_id))

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
        sql = (f"UPDATE tasks SET status={RUNNING}, started_at=?, progress=0, message='',"
               f" error='' WHERE id=? AND status={PENDING}")
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
            if stale is None:
                self._due = {}
                stale = [r[0] for r in self.query(
                    f"SELECT serial FROM task_counts WHERE status={PENDING}"
                    " GROUP BY serial HAVING SUM(n) > 0")]
            for serial in stale:
                rested = self.query_one("SELECT last_task_end FROM devices WHERE serial=?",
                                        (serial,))
                due = self._due_time(serial, (rested and rested[0]) or 0)
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
        for task_id in ids:
            self.task_ended(task_id, "failed")
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
            self.task_ended(task_id, outcome)
        return ended

    def finish(self, task_id: int, *, ok: bool, error: str = "", result: Any = None,
               allow_auto_retry: bool = True, rng: random.Random = random,
               auto_retry: Optional[bool] = None) -> str:
        """End a running task; returns 'completed', 'failed', 'retrying' or 'gone'.

        A failed task with auto_retry goes back to pending after a random 5-60 s, until
        its retry limit is reached; a stop by the user is never retried. ``auto_retry``
        overrides the task's own flag (an external worker's ``allow_retry``).
        """
        outcome = self._finish(task_id, ok=ok, error=error, result=result,
                               allow_auto_retry=allow_auto_retry, rng=rng,
                               auto_retry=auto_retry)
        self.task_ended(task_id, outcome)
        return outcome

    def task_ended(self, task_id: int, outcome: str) -> None:
        """Tell the listeners that a task ended for good (completed or failed)."""
        if outcome not in ("completed", "failed"):
            return
        for listener in self.on_task_end:
            try:
                listener(task_id, outcome)
            except Exception:
                log.exception("task %s: a task-end listener failed", task_id)

    def _finish(self, task_id: int, *, ok: bool, error: str, result: Any,
                allow_auto_retry: bool, rng: random.Random, auto_retry: Optional[bool]) -> str:
        now = self.clock()
        with self.write() as conn:
            row = conn.execute("SELECT * FROM tasks WHERE id=?", (task_id,)).fetchone()
            if row is None or row["status"] != RUNNING:
                return "gone"
            conn.execute("UPDATE devices SET last_task_end=?, last_seen=? WHERE serial=?",
                         (now, now, row["serial"]))
            if ok:
                conn.execute("UPDATE tasks SET status=2, end_time=?, progress=100, error='',"
                             " result=?, message='completed', lease_until=NULL"
                             " WHERE id=? AND status=1",
                             (now, _dump_json(result), task_id))
                return "completed"
            wants_retry = row["auto_retry"] if auto_retry is None else auto_retry
            if (allow_auto_retry and wants_retry
                    and row["retry_count"] < row["max_retry_count"]):
                delay = rng.uniform(5, 60)
                conn.execute(
                    "UPDATE tasks SET status=0, retry_count=retry_count+1, error='',"
                    " start_time=?, started_at=NULL, end_time=NULL, result=NULL,"
                    " worker_id=NULL, lease_until=NULL, message=? WHERE id=? AND status=1",
                    (now + delay, f"retrying in {delay:.0f} s after: {error}", task_id))
                conn.execute("INSERT INTO task_log (task_id, at, line) VALUES (?,?,?)",
                             (task_id, now, f"failed: {error}; auto-retry "
                              f"{row['retry_count'] + 1}/{row['max_retry_count']} in "
                              f"{delay:.0f} s"))
                return "retrying"
            conn.execute("UPDATE tasks SET status=3, end_time=?, error=?, result=?, message=?,"
                         " lease_until=NULL WHERE id=? AND status=1",
                         (now, error or "failed", _dump_json(result),
                          ended_message(error or "failed"), task_id))
            return "failed"

    def cancel_pending(self, task_id: int) -> bool:
        """A pending task stopped by the user ends failed without ever running."""
        with self.write() as conn:
            cur = conn.execute("UPDATE tasks SET status=3, end_time=?, error=?, message=?"
                               " WHERE id=? AND status=0",
                               (self.clock(), STOPPED_BY_USER, STOPPED_BY_USER, task_id))
        if cur.rowcount == 1:
            self.task_ended(task_id, "failed")
        return cur.rowcount == 1

    def retry(self, task_id: int) -> bool:
        """A failed task under its retry limit goes back to pending (compare-and-set)."""
        with self.write() as conn:
            cur = conn.execute(
                "UPDATE tasks SET status=0, retry_count=retry_count+1, error='', progress=0,"
                " message='', result=NULL, started_at=NULL, end_time=NULL"
                " WHERE id=? AND status=3 AND retry_count < max_retry_count", (task_id,))
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

    def delete_task(self, task_id: int) -> bool:
        with self.write() as conn:
            return conn.execute("DELETE FROM tasks WHERE id=?", (task_id,)).rowcount == 1

    def clear(self, statuses: Sequence[int]) -> List[int]:
        """Delete finished tasks (completed and/or failed) and return their ids."""
        with self.write() as conn:
            marks = ",".join("?" * len(statuses))
            ids = [r[0] for r in conn.execute(
                f"SELECT id FROM tasks WHERE status IN ({marks})", list(statuses))]
            conn.execute(f"DELETE FROM tasks WHERE status IN ({marks})", list(statuses))
            return ids

    def recover_interrupted(self) -> List[int]:
        """At start-up: tasks left running by a crash or kill end failed, retryable.
        External workers' tasks are not ours to interrupt: their leases carry on."""
        with self.write() as conn:
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM tasks WHERE status=1 AND external = 0")]
            conn.execute("UPDATE tasks SET status=3, end_time=?, error=?, message=?"
                         " WHERE status=1 AND external = 0",
                         (self.clock(), INTERRUPTED, ended_message(INTERRUPTED)))
            for task_id in ids:
                conn.execute("INSERT INTO task_log (task_id, at, line) VALUES (?,?,?)",
                             (task_id, self.clock(), INTERRUPTED))
            return ids

    # -- devices --------------------------------------------------------------
    def upsert_device(self, serial: str, **fields: Any) -> None:
        """Create the device on first sight, then update the fields given."""
        now = self.clock()
        allowed = {"state", "model", "android_version", "battery", "adb_server",
                   "connection", "last_seen"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown device fields {sorted(unknown)}")
        if self._device_unchanged(serial, fields):
            return
        with self.write() as conn:
            conn.execute("INSERT OR IGNORE INTO devices (serial, first_seen) VALUES (?, ?)",
                         (serial, now))
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

    def list_devices(self) -> List[sqlite3.Row]:
        """Devices with their running task and pending count: the phone's own tasks, not
        workers' (external) tasks that merely name its serial."""
        return self.query(
            "SELECT d.*, (SELECT id FROM tasks WHERE serial=d.serial AND status=1"
            " AND external = 0) AS running_task_id, (SELECT COUNT(*) FROM tasks WHERE"
            " serial=d.serial AND external = 0 AND status=0) AS pending_count"
            " FROM devices d ORDER BY d.serial")

    def mark_all_devices(self, state: str) -> None:
        """At start-up no phone is known to be there until adb reports it."""
        with self.write() as conn:
            conn.execute("UPDATE devices SET state=? WHERE state IS NOT ?", (state, state))

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
            return conn.execute("DELETE FROM accounts WHERE username=?",
                                (username,)).rowcount == 1

    # -- accounts: safety (SPEC 8.1) -------------------------------------------------
    def save_account_safety(self, username: str, limits: Optional[dict],
                            active_hours: Optional[str], cooldown_hours: float) -> None:
        with self.write() as conn:
            conn.execute("UPDATE accounts SET limits=?, active_hours=?, cooldown_hours=?"
                         " WHERE username=?",
                         (_dump_json(limits), active_hours, cooldown_hours, username))

    def set_cooldown(self, username: str, until: Optional[float]) -> bool:
        with self.write() as conn:
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
            return conn.execute("INSERT INTO api_keys (name, role, key_hash, created_at)"
                                " VALUES (?,?,?,?)",
                                (name, role, key_hash, self.clock())).lastrowid

    def api_key_by_hash(self, key_hash: str) -> Optional[sqlite3.Row]:
        return self.query_one("SELECT * FROM api_keys WHERE key_hash=?", (key_hash,))

    def list_api_keys(self) -> List[sqlite3.Row]:
        return self.query("SELECT id, name, role, created_at FROM api_keys ORDER BY id")

    def delete_api_key(self, key_id: int) -> bool:
        with self.write() as conn:
            return conn.execute("DELETE FROM api_keys WHERE id=?", (key_id,)).rowcount == 1

    def has_admin_key(self) -> bool:
        return self.query_one("SELECT 1 FROM api_keys WHERE role='admin' LIMIT 1") is not None


def ended_message(error: str) -> str:
    """A finished task's message says how it ended, not its last progress line."""
    return error if error in (STOPPED_BY_USER, "expired") else f"failed: {error}"


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


###############################################################################
# Scripts #####################################################################
###############################################################################

#: TikMatrix scripts that its API does not run yet: asking for them is a 40003.
NOT_API_SCRIPTS = frozenset({"like", "message", "super_marketing", "profile", "scrape_user"})
PARAM_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
               "list": (list,), "dict": (dict,)}
PARAM_KEYS = {"type", "default", "choices", "min", "max", "required", "description",
              "items", "max_length", "max_items"}
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
    #: "phone" (Lite's runners run it) or "external" (workers take its tasks, SPEC 8.4)
    runner: str = "phone"

    def describe(self) -> Dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "platforms": list(self.platforms), "params": self.params,
                "expands": self.expand is not None, "runner": self.runner}

    def check_config(self, config: Dict[str, Any]) -> Dict[str, Any]:
        """Validate a script_config against PARAMS; returns it with defaults filled in."""
        out = dict(config)           # keys a script does not declare are kept as sent
        for name, decl in self.params.items():
            where = f"script_config.{name}"
            if name not in config or config[name] is None:
                if decl.get("required"):
                    raise BadRequest(where, "is required")
                if "default" in decl:
                    out[name] = json.loads(json.dumps(decl["default"]))
                continue
            out[name] = check_param(where, config[name], decl)
        if self.validate is not None:
            try:
                self.validate(out)
            except ValueError as exc:
                if len(exc.args) == 2:
                    raise BadRequest(f"script_config.{exc.args[0]}", str(exc.args[1]))
                raise BadRequest("script_config", str(exc))
        return out

    def expand_config(self, config: Dict[str, Any]) -> List[Dict[str, Any]]:
        """One request config -> the configs of the tasks it makes (usually just itself)."""
        if self.expand is None:
            return [config]
        try:
            configs = list(self.expand(dict(config)))
        except ValueError as exc:
            if len(exc.args) == 2:
                raise BadRequest(f"script_config.{exc.args[0]}", str(exc.args[1]))
            raise BadRequest("script_config", str(exc))
        if not configs or not all(isinstance(c, dict) for c in configs):
            raise BadRequest("script_config", f"script {self.name} made no task from it")
        return configs


def check_param(where: str, value: Any, decl: Dict[str, Any]) -> Any:
    """Check one value against its declaration; raise BadRequest naming the field."""
    types = decl["type"] if isinstance(decl["type"], (list, tuple)) else [decl["type"]]
    if "bool" in types and isinstance(value, int) and not isinstance(value, bool) \
            and value in (0, 1):
        value = bool(value)                  # TikMatrix clients send 0/1 for switches
    ok = any(isinstance(value, PARAM_TYPES[t]) and
             not (t in ("int", "float") and isinstance(value, bool)) for t in types)
    if not ok and "int" in types and isinstance(value, float) and value.is_integer():
        value, ok = int(value), True
    if not ok:
        raise BadRequest(where, f"must be {' or '.join(types)}, got {_json_type(value)}")
    if "choices" in decl and value not in decl["choices"]:
        raise BadRequest(where, f"must be one of {', '.join(map(repr, decl['choices']))}, "
                                f"got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "min" in decl and value < decl["min"]:
            raise BadRequest(where, f"must be at least {decl['min']}, got {value}")
        if "max" in decl and value > decl["max"]:
            raise BadRequest(where, f"must be at most {decl['max']}, got {value}")
    if isinstance(value, str) and len(value) > decl.get("max_length", 100_000):
        raise BadRequest(where, f"is longer than {decl.get('max_length', 100_000)} characters")
    if isinstance(value, list):
        if len(value) > decl.get("max_items", 10_000):
            raise BadRequest(where, f"has more than {decl.get('max_items', 10_000)} items")
        item_type = decl.get("items")
        for i, item in enumerate(value):
            if item_type and not (isinstance(item, PARAM_TYPES[item_type])
                                  and not isinstance(item, bool)):
                raise BadRequest(f"{where}[{i}]", f"must be {item_type}, got {_json_type(item)}")
    return value


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
                  validate=getattr(module, "validate", None), runner=runner)


def load_scripts(folder: Path) -> Dict[str, Script]:
    """Every .py in the folder but _helpers; a broken script is logged and left out."""
    scripts: Dict[str, Script] = {}
    folder_text = str(folder)
    if folder_text not in sys.path:          # lets scripts import their _helpers
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
            try:
                with conn:
                    self._socket = conn.conn
                    while not self._stopping.is_set():
                        self._report(conn.read_string_block())
            except Exception as exc:
                if not self._stopping.is_set():
                    log.warning("lost adb server %s: %s", self.address, exc)
            finally:
                self._socket = None
                self.connected.clear()
                self._report("")                    # every device of it is gone

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
        """Start a local adb server on this address, with the one adb binary we use."""
        import subprocess
        try:
            import adbutils
            adb = adbutils.adb_path()
            log.info("no adb server answers at %s: starting one (%s)", self.address, adb)
            subprocess.run([adb, "-P", str(self.port), "start-server"], timeout=30,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, check=True)
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
        self.keyboards: Dict[str, str] = {}
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
            self._state[serial] = (state, link)
            self._unresponsive.discard(serial)
        log.info("device %s: %s -> %s (adb server %s)", serial, previous, state, link.address)
        self.store.upsert_device(serial, state=state, adb_server=link.address,
                                 connection=connection_type(serial),
                                 last_seen=self.store.clock())
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
        except Exception as exc:
            log.warning("could not read the properties of %s: %s", serial, exc)

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
                self.store.upsert_device(serial, state="device", last_seen=self.store.clock())
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
            answer_timeout: float = DEVICE_ANSWER_TIMEOUT) -> bytes:
        """Run a shell:/exec: service and return all it printed, within the timeout."""
        began = time.monotonic()
        try:
            return self._run(serial, service, timeout=timeout, token=token,
                             answer_timeout=answer_timeout)
        finally:
            self.on_call(service, time.monotonic() - began)

    def _run(self, serial: str, service: str, *, timeout: float, token: CancelToken,
             answer_timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
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
        return b"".join(chunks)

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
                    raise RuntimeError(f"push to {remote} failed: "
                                       f"{message.decode('utf-8', 'replace')}")
                if reply[:4] != b"OKAY":
                    raise RuntimeError(f"push to {remote}: unexpected reply {reply[:4]!r}")
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
            raise RuntimeError("the phone did not return a PNG screenshot")
        return png

    # -- network phones ----------------------------------------------------------
    def connect(self, address: str) -> str:
        """adb connect through the first adb server that answers; returns adb's reply."""
        return self._host_command(f"host:connect:{address}")

    def disconnect(self, address: str) -> str:
        return self._host_command(f"host:disconnect:{address}")

    def _host_command(self, command: str) -> str:
        errors = []
        for link in self.links:
            try:
                with link.client.make_connection(timeout=15) as conn:
                    conn.send_command(command)
                    conn.check_okay()
                    return conn.read_string_block()
            except Exception as exc:
                errors.append(f"{link.address}: {exc}")
        raise Unavailable("no adb server answers: " + "; ".join(errors))

    def status(self) -> List[Dict[str, Any]]:
        return [{"address": l.address, "connected": l.connected.is_set(),
                 "devices": len(l.devices), "error": l.error} for l in self.links]


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
LAUNCH_ACTIVITIES = {
    "com.zhiliaoapp.musically": "com.ss.android.ugc.aweme.splash.SplashActivity",
    "com.ss.android.ugc.trill": "com.ss.android.ugc.aweme.splash.SplashActivity",
}
#: Buttons of pop-ups that appear at random and are dismissed while waiting.
POPUP_BUTTONS = (
    "Allow", "While using the app", "Only this time", "Not now", "Not Now", "Skip",
    "Got it", "Dismiss", "Agree and continue", "Remind me later", "Continue anyway",
    "Post anyway", "Maybe later", "No thanks", "Don't allow",
)
FAST_INPUT_IME = "com.github.tikmatrix/.FastInputIME"
ADB_KEYBOARD_IME = "com.android.adbkeyboard/.AdbIME"
KEYS = {"back": "KEYCODE_BACK", "home": "KEYCODE_HOME", "enter": "KEYCODE_ENTER",
        "delete": "KEYCODE_DEL", "search": "KEYCODE_SEARCH", "menu": "KEYCODE_MENU",
        "tab": "KEYCODE_TAB", "space": "KEYCODE_SPACE", "recent": "KEYCODE_APP_SWITCH",
        "volume_up": "KEYCODE_VOLUME_UP", "volume_down": "KEYCODE_VOLUME_DOWN",
        "power": "KEYCODE_POWER", "play_pause": "KEYCODE_MEDIA_PLAY_PAUSE"}
SELECTOR_KEYS = {"text", "text_contains", "text_regex", "desc", "desc_contains",
                 "desc_regex", "resource_id", "class_name", "clickable", "any_of"}
MEDIA_DIR = "/sdcard/DCIM/Camera"


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

    @property
    def center(self) -> Tuple[int, int]:
        left, top, right, bottom = self.bounds
        return (left + right) // 2, (top + bottom) // 2

    def matches(self, sel: Dict[str, Any]) -> bool:
        if "any_of" in sel:
            return any(self.matches(alt) for alt in sel["any_of"])
        for key, want in sel.items():
            if key == "text" and self.text.strip() != want:
                return False
            if key == "text_contains" and want.lower() not in self.text.lower():
                return False
            if key == "text_regex" and not re.fullmatch(want, self.text.strip()):
                return False
            if key == "desc_regex" and not re.fullmatch(want, self.desc.strip()):
                return False
            if key == "desc" and self.desc.strip() != want:
                return False
            if key == "desc_contains" and want.lower() not in self.desc.lower():
                return False
            if key == "resource_id" and not (self.resource_id == want or
                                             self.resource_id.endswith(":id/" + want)):
                return False
            if key == "class_name" and not (self.class_name == want or
                                            self.class_name.endswith("." + want)):
                return False
            if key == "clickable" and self.clickable != bool(want):
                return False
        return True


class UiTree:
    """A parsed window dump: the nodes in document order, and the XML it came from."""

    def __init__(self, xml: str):
        self.xml = xml
        self.nodes: List[Node] = []
        try:
            root = ET.fromstring(xml.encode("utf-8"))
        except ET.ParseError as exc:
            raise RuntimeError(f"the window dump is not XML: {exc}") from None
        for el in root.iter("node"):
            nums = [int(n) for n in re.findall(r"-?\d+", el.get("bounds", ""))] + [0] * 4
            self.nodes.append(Node(
                text=el.get("text", ""), resource_id=el.get("resource-id", ""),
                desc=el.get("content-desc", ""), class_name=el.get("class", ""),
                package=el.get("package", ""), bounds=tuple(nums[:4]),
                clickable=el.get("clickable") == "true", enabled=el.get("enabled") != "false",
                selected=el.get("selected") == "true", checked=el.get("checked") == "true",
                focused=el.get("focused") == "true"))

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
            nodes = [n for n in visible if n.matches(wanted)]
            if nodes:
                return nodes
        return []


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


def input_text_args(text: str) -> List[str]:
    """ASCII text as the arguments of Android's `input text`, one call each.

    `input text` turns "%s" into a space and changes nothing else, so spaces are sent as
    "%s", and a "%s" the user wrote is typed in two calls: "%" ends one, "s" starts the
    next. (The arguments are shell-quoted later, like every argument.)
    """
    return [piece.replace(" ", "%s") for piece in re.split(r"(?<=%)(?=s)", text) if piece]


class Phone:
    """What a script drives a phone with (SPEC 6). Every call checks the stop flag.

    Arguments given as a list are quoted for the device shell, so text from users never
    reaches it unquoted; a string command is passed as it is and is for constants only.
    """

    #: scripts raise this (they do not import the server) for a step that finds nothing
    ElementNotFound = ElementNotFound

    def __init__(self, devices: DeviceManager, serial: str, token: CancelToken,
                 account: Optional[sqlite3.Row] = None, log: Callable[[str], None] = None):
        self.devices = devices
        self.serial = serial
        self.token = token
        self.account = account
        self._log = log or (lambda line: None)
        self.last_dump: Optional[str] = None
        self._ime: Optional[str] = None           # the broadcast IME found, "" for none
        self._ime_before: Optional[str] = None
        self._sdk: Optional[int] = None

    # -- shell ------------------------------------------------------------------
    def shell(self, args: Any, timeout: float = 30) -> str:
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
            text = self.shell(["getprop", "ro.build.version.sdk"]).strip()
            self._sdk = int(text) if text.isdigit() else 0
        return self._sdk

    # -- the screen -----------------------------------------------------------------
    def dump(self) -> UiTree:
        """The current window hierarchy.

        uiautomator cannot dump while a video plays ("could not get idle state"): the
        screen is tapped in the middle to pause it, then dumped again.
        """
        path = "/sdcard/tmlite_window_dump.xml"
        error = ""
        for attempt in range(3):
            out = self.shell(["uiautomator", "dump", path], timeout=30)
            if "dumped to" in out:
                xml = self.shell(["cat", path], timeout=30)
                self.last_dump = xml
                return UiTree(xml)
            error = out.strip() or "no output"
            if "idle" in error and attempt == 0:       # pause the video
                size = self.screen_size()
                self.shell(["input", "tap", str(size[0] // 2), str(size[1] // 2)])
            elif "idle" in error and attempt == 1:     # a dialog took the tap: close it
                self.press("back")
        raise RuntimeError(f"uiautomator dump failed: {error}")

    def screen_size(self) -> Tuple[int, int]:
        match = re.search(r"(\d+)x(\d+)", self.shell(["wm", "size"]))
        return (int(match[1]), int(match[2])) if match else (1080, 2400)

    def find(self, **sel: Any) -> Optional[Node]:
        return self.dump().find(**sel)

    def wait(self, timeout: float = 10, step: str = "", dismiss_popups: bool = True,
             **sel: Any) -> Node:
        """Dump until the element shows, dismissing known pop-ups meanwhile."""
        return self.wait_any({"": sel}, timeout, step, dismiss_popups)[1]

    def wait_any(self, choices: Dict[str, Dict[str, Any]], timeout: float = 10,
                 step: str = "", dismiss_popups: bool = True) -> Tuple[str, Node]:
        """Wait for whichever of several elements shows first: (its name, the node).

        A flow often cannot know which screen comes next (a dialog, or straight to the
        result); this dumps once per round for all of them. Pop-ups are dismissed first,
        because a modal pop-up swallows the taps meant for what lies under it.
        """
        for sel in choices.values():
            check_selector(sel)
        deadline = time.monotonic() + timeout
        while True:
            tree = self.dump()
            dismissed = dismiss_popups and self.dismiss_popup(tree)
            if not dismissed:
                for name, sel in choices.items():
                    node = tree.find(**sel)
                    if node is not None:
                        return name, node
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                wanted = next(iter(choices.values())) if len(choices) == 1 \
                    else {"any_of": list(choices.values())}
                raise ElementNotFound(step or "wait", wanted,
                                      f"waited {timeout:g} s; the app must be in English")
            if not dismissed:
                self.sleep(min(0.3, remaining))

    def dismiss_popup(self, tree: Optional[UiTree] = None) -> bool:
        tree = tree or self.dump()
        for label in POPUP_BUTTONS:
            node = tree.find(text=label)       # by text: icons labelled "Dismiss" stay
            if node is not None:
                self._log(f"dismissed a pop-up ({label})")
                self.tap(node)
                return True
        return False

    def exists(self, **sel: Any) -> bool:
        return self.find(**sel) is not None

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
        ime = self._broadcast_ime()
        encoded = base64.b64encode(text.encode("utf-8")).decode("ascii")
        if ime == FAST_INPUT_IME:
            self.shell(["am", "broadcast", "-a", "ADB_INPUT_TEXT", "--es", "text", encoded])
        elif ime == ADB_KEYBOARD_IME:
            self.shell(["am", "broadcast", "-a", "ADB_INPUT_B64", "--es", "msg", encoded])
        elif all(32 <= ord(c) < 127 for c in text):
            for line_no, line in enumerate(text.split("\n")):
                if line_no:
                    self.press("enter")
                for piece in input_text_args(line):
                    self.shell(["input", "text", piece])
        else:
            raise RuntimeError(
                "cannot type non-ASCII text: this phone has no broadcast input method; "
                f"install TikMatrix's FastInputIME ({FAST_INPUT_IME}) or ADBKeyBoard "
                f"({ADB_KEYBOARD_IME})")

    def _broadcast_ime(self) -> str:
        if self._ime is None:
            installed = self.shell(["ime", "list", "-a", "-s"]).split()
            self._ime = next((i for i in (FAST_INPUT_IME, ADB_KEYBOARD_IME)
                              if i in installed), "")
            if self._ime:
                current = self.shell(
                    ["settings", "get", "secure", "default_input_method"]).strip()
                if current != self._ime:
                    # the phone's own keyboard, remembered per phone: a task that failed
                    # before restoring it must not make the next one take ours for it
                    self.devices.keyboards[self.serial] = current
                    self.shell(["ime", "enable", self._ime])
                    self.shell(["ime", "set", self._ime])
        return self._ime

    def restore_keyboard(self) -> None:
        """Give the phone back its own keyboard after the task typed, however the task
        ended (a fresh token: the task's own may be cancelled)."""
        own = self.devices.keyboards.get(self.serial)
        if self._ime and own and own not in (self._ime, "null"):
            self.devices.run(self.serial, "shell:" + " ".join(
                shlex.quote(a) for a in ("ime", "set", own)), timeout=10, token=CancelToken())

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

    def start_app(self, package: str) -> None:
        activity = LAUNCH_ACTIVITIES.get(package)
        if activity:
            self.shell(["am", "start", "-n", f"{package}/{activity}"])
        else:
            self.shell(["monkey", "-p", package, "-c", "android.intent.category.LAUNCHER",
                        "1"])

    def stop_app(self, package: str) -> None:
        self.shell(["am", "force-stop", package])

    def installed_packages(self) -> List[str]:
        out = self.shell(["pm", "list", "packages"])
        return [l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("package:")]

    def app_package(self, platform: str) -> str:
        """The package to drive: the account's own, else the first installed one."""
        if self.account is not None and self.account["platform"] == platform:
            return self.account["package"]
        installed = set(self.installed_packages())
        for package in APP_PACKAGES.get(platform, ()):
            if package in installed:
                return package
        raise RuntimeError(f"{platform} is not installed on {self.serial} "
                           f"(looked for {', '.join(APP_PACKAGES.get(platform, ()))})")

    def screenshot(self) -> bytes:
        return self.devices.screenshot(self.serial, self.token)

    def push_media(self, local_path: Any) -> str:
        """Push a photo or video where the gallery finds it first; returns its phone path."""
        local = Path(local_path)
        remote = posixpath.join(MEDIA_DIR, local.name)
        self.shell(["mkdir", "-p", MEDIA_DIR])
        self.push(local, remote)
        self.shell(["touch", remote])
        self.shell(["am", "broadcast", "-a", "android.intent.action.MEDIA_SCANNER_SCAN_FILE",
                    "-d", "file://" + remote])
        if self.sdk() >= 29:
            self.shell(["content", "call", "--uri", "content://media", "--method",
                        "scan_file", "--arg", remote])
        return remote

    def remove(self, remote: str) -> None:
        self.shell(["rm", "-f", remote])
        self.shell(["am", "broadcast", "-a", "android.intent.action.MEDIA_SCANNER_SCAN_FILE",
                    "-d", "file://" + remote])

    def sleep(self, seconds: float) -> None:
        """Wait, but wake at once when the task is stopped or the phone is lost."""
        self.token.check()
        self.token.event.wait(max(0.0, seconds))
        self.token.check()


###############################################################################
# Runner ######################################################################
###############################################################################

class TaskContext:
    """What a script knows of its task (SPEC 6): config, progress, log, stop-aware sleep."""

    def __init__(self, row: sqlite3.Row, store: Store, token: CancelToken):
        self.id: int = row["id"]
        self.serial: str = row["serial"]
        self.username: Optional[str] = row["username"]
        self.script_name: str = row["script_name"]
        self.config: Dict[str, Any] = json.loads(row["script_config"])
        self.retry_count: int = row["retry_count"]
        #: what the script has done so far (it may set this as it goes): kept as the
        #: task's result when it stops or fails before returning
        self.result: Any = None
        #: per-task randomness (spintax picks, waits): seeded by the task id
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

    def sleep(self, seconds: float) -> None:
        self._token.check()
        self._token.event.wait(max(0.0, float(seconds)))
        self._token.check()


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
        self._active: Dict[str, RunningTask] = {}
        self._lock = threading.Lock()
        #: holds tasks back while their account may not act (AccountSafety.wait_reason)
        self.gate: Optional[Callable[[sqlite3.Row, float], Optional[str]]] = None

    def busy(self, serial: str) -> bool:
        with self._lock:
            return serial in self._active

    def active_count(self) -> int:
        with self._lock:
            return len(self._active)

    def claim_and_start(self, serial: str, now: float) -> Optional[sqlite3.Row]:
        """Claim the phone's next due task and start it, as one step.

        Under the runner's lock a task is either pending or registered here as running,
        never running in the store but unknown to the runner: a stop in between would
        otherwise mark it stopped while its script still starts.
        """
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
                self.store.finish(row["id"], ok=False, error="internal error: no thread",
                                  allow_auto_retry=False)
                raise
            return row

    def stop(self, task_id: int, wait: float = 0) -> bool:
        """Stop a running task: interrupt its script, or end it in the store if no script
        of this runner has it. False if it is not running (any more)."""
        with self._lock:
            running = next((r for r in self._active.values() if r.task_id == task_id), None)
            if running is None:
                return self.store.finish(task_id, ok=False, error=STOPPED_BY_USER,
                                         allow_auto_retry=False) != "gone"
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
                self.store.finish(running.task_id, ok=False, error="internal error (see "
                                  "the server log)", allow_auto_retry=False)
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
        context = TaskContext(row, self.store, token)
        account = self.store.get_account(row["username"]) if row["username"] else None
        phone = Phone(self.devices, serial, token, account=account, log=context.log)
        script = self.scripts.get(row["script_name"])
        log.info("task %s (%s) started on %s", task_id, row["script_name"], serial)
        context.log(f"started on {serial}")
        result, error, save_artifacts, may_retry = None, "", False, True
        try:
            if script is None:
                raise RuntimeError(f"script {row['script_name']!r} is no longer loaded")
            result = script.run(phone, context)
            _dump_json(result)
        except Stopped:
            pass                                # the token's reason says why, below
        except DeviceLost as exc:
            error = DISCONNECTED
            log.warning("task %s: %s", task_id, exc)
            if token.reason is None:           # it did not answer; adb may still list it
                self.devices.mark_unresponsive(serial)
        except CommandTimeout as exc:
            error, save_artifacts = f"timed out: {exc}", True
        except StepFailed as exc:               # expected: no traceback in the log
            error, save_artifacts, may_retry = str(exc), True, exc.retry
            if is_block(exc, error):            # the account cools down instead
                may_retry = False
                if not error.startswith(BLOCKED_PREFIX):
                    error = f"{BLOCKED_PREFIX} {error}"
        except BaseException as exc:            # a script's SystemExit fails its task only
            error, save_artifacts = f"{exc}" or type(exc).__name__, True
            log.warning("task %s failed: %s\n%s", task_id, error, traceback.format_exc())
        if token.reason is not None:            # whatever the script did after the cancel
            error = CANCEL_ERRORS[token.reason]
            if token.reason == "timeout":
                error = f"timed out after {row['timeout']} s"
        if token.reason != "lost":
            with contextlib.suppress(Exception):
                phone.restore_keyboard()
        if not error:                           # logged first, like a failure: who sees
            context.log("completed")            # the task completed sees its whole log
            outcome = self.store.finish(task_id, ok=True, result=result)
        else:
            if save_artifacts:
                self.save_artifacts(task_id, phone)
            context.log(f"failed: {error}")
            outcome = self.store.finish(task_id, ok=False, error=error[:2000],
                                        result=context.result, allow_auto_retry=may_retry
                                        and token.reason in RETRYABLE_CANCELS)
        log.info("task %s on %s: %s%s", task_id, serial, outcome, f" ({error})" if error else "")
        return outcome

    def save_artifacts(self, task_id: int, phone: Phone) -> None:
        """A failure keeps the screen and the last UI dump, to see what the script saw."""
        folder = self.artifacts_dir / str(task_id)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if phone.last_dump:
                (folder / "ui_dump.xml").write_text(phone.last_dump, encoding="utf-8")
            fresh = Phone(self.devices, phone.serial, CancelToken())
            (folder / "screenshot.png").write_bytes(fresh.screenshot())
        except Exception as exc:
            log.warning("task %s: could not save all artifacts: %s", task_id, exc)


def is_block(exc: Optional[BaseException], error: str) -> bool:
    """The app's block screen: the scripts' AccountBlocked if they have it, else the
    error's wording (SPEC 8.1)."""
    blocked = globals().get("AccountBlocked")
    if exc is not None and blocked is not None and isinstance(exc, blocked):
        return True
    return error.startswith(BLOCKED_PREFIX)


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

class Scheduler:
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
        self.store = store
        self.devices = devices
        self.runner = runner
        self.max_running = max_running
        self.clock = clock
        #: (now) -> next time it has work, run before tasks are started
        self.chores: List[Callable[[float], Optional[float]]] = []
        #: the same, run after (the account gate's wake-ups are known only then)
        self.late_chores: List[Callable[[float], Optional[float]]] = []
        self._cond = threading.Condition()
        self._dirty = True
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)

    def wake(self, *_: Any) -> None:
        with self._cond:
            self._dirty = True
            self._cond.notify()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

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

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                self._dirty = False
            try:
                started, next_due = self.tick()
                log.debug("scheduler: started %s; next wake %s", started or "nothing",
                          format_time(next_due) or "on an event")
            except Exception:
                log.exception("scheduler round failed")
                next_due = self.clock() + 5
            with self._cond:
                if self._stopping:
                    return
                if not self._dirty:
                    timeout = None if next_due is None else max(0.0, next_due - self.clock())
                    self._cond.wait(timeout)


class _Started(list):
    """Ids of the tasks a round started, and when the next pending one is due."""

    def __init__(self, next_due: Optional[float] = None):
        super().__init__()
        self.next_due = next_due


def _earliest(times: Any) -> Optional[float]:
    times = [t for t in times if t is not None]
    return min(times) if times else None


###############################################################################
# Operations: webhooks, account safety, schedules, metrics (SPEC 8) ###########
###############################################################################

#: waits before the 2nd..5th try of a webhook delivery (SPEC 8.3)
WEBHOOK_BACKOFF = (1, 10, 60, 600)
WEBHOOK_TIMEOUT = 5.0


class Webhooks:
    """Webhook deliveries: rows in the store, sent by one thread of their own.

    Whoever has news (a runner, a request, the device watcher) only inserts rows and
    wakes the thread, so a slow or dead receiver never holds anything up; the thread
    sleeps until the next try is due. Pending tries survive a restart.
    """

    def __init__(self, store: Store, urls: Sequence[str], secret: Optional[str],
                 clock: Callable[[], float] = time.time, timeout: float = WEBHOOK_TIMEOUT):
        self.store, self.urls, self.secret = store, list(urls), secret
        self.clock, self.timeout = clock, timeout
        #: called with each try's outcome ("delivered", "retrying", "failed"): metrics
        self.on_outcome: Callable[[str], None] = lambda outcome: None
        self._cond = threading.Condition()
        self._dirty = False
        self._stopping = False
        self._started = False                  # start() was called: the thread may run
        self._thread = threading.Thread(target=self._loop, name="webhooks", daemon=True)

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
        from urllib.parse import urlsplit
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

    def wake(self) -> None:
        with self._cond:
            self._dirty = True
            self._cond.notify()
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

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=self.timeout + 1)

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                self._dirty = False
            try:
                self.deliver_due()
                next_try = self.store.next_delivery_time()
            except Exception:
                log.exception("webhook round failed")
                next_try = self.clock() + 5
            with self._cond:
                if self._stopping:
                    return
                if not self._dirty:
                    wait = None if next_try is None else max(0.0, next_try - self.clock())
                    self._cond.wait(wait)


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

    def task_ended(self, task_id: int, outcome: str) -> None:
        """Count what the task did as its account; a block starts a cooldown."""
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
            self.on_cooldown(self.store.get_account(account["username"]))


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


###############################################################################
# Server ######################################################################
###############################################################################

class Lite:
    """Store, scripts, devices, runner and scheduler of one server.

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
            self.store = Store(config.db, clock)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open database {config.db}: {exc}") from None
        self.scripts = load_scripts(config.scripts)
        self.devices: Optional[DeviceManager] = None
        self.runner: Optional[Runner] = None
        if with_devices:
            self.devices = DeviceManager(self.store, config.adb_servers)
            self.runner = Runner(self.store, self.devices, self.scripts, config.artifacts_dir)
        #: the scheduler also keeps expiry, leases and schedules without a device layer
        self.scheduler = Scheduler(self.store, self.devices, self.runner,
                                   config.max_running, clock)
        #: (request body, source, schedule id) -> tasks; the HTTP API provides it
        self.task_builder: Optional[Callable[..., List[NewTask]]] = None
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
        self.schedules = Schedules(store, self._schedule_tasks)
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

    # -- operations' hooks (SPEC 8) ----------------------------------------------------
    def _deadlines(self, now: float) -> Optional[float]:
        """Scheduler chore: expiry, timeouts and worker leases; returns the next one."""
        self.store.expire_pending(now)
        if self.runner is not None:
            for task_id in self.store.timed_out(now):
                self.runner.time_out(task_id)
        self.store.expire_leases(now)
        return self.store.next_deadline(now)

    def _schedule_tasks(self, request: Dict[str, Any], schedule_id: int) -> List[NewTask]:
        if self.task_builder is None:
            raise Unavailable("no task builder (the HTTP API is not set up)")
        return self.task_builder(request, source="schedule", schedule_id=schedule_id)

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

    # -- task operations shared by single and batch endpoints ------------------
    def stop_task(self, task_id: int) -> None:
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
                if self.runner is not None:
                    stopped = self.runner.stop(task_id, wait=3)
                else:
                    stopped = self.store.finish(task_id, ok=False, error=STOPPED_BY_USER,
                                                allow_auto_retry=False) != "gone"
            elif stopped:
                return
            else:
                raise BadRequest("task_id", f"task {task_id} is {STATUS_TEXT[row['status']]}:"
                                            " only pending or running tasks can be stopped")
        raise Unavailable(f"task {task_id} could not be stopped; try again")

    def retry_task(self, task_id: int) -> None:
        row = self.store.get_task(task_id)
        if row is None:
            raise NotFound(f"task {task_id} not found")
        if not self.store.retry(task_id):
            row = self.store.get_task(task_id)
            if row["status"] != FAILED:
                raise BadRequest("task_id", f"task {task_id} is {STATUS_TEXT[row['status']]}:"
                                            " only failed tasks can be retried")
            raise BadRequest("task_id", f"task {task_id} reached its retry limit "
                                        f"({row['retry_count']}/{row['max_retry_count']})")
        self.wake()

    def delete_task(self, task_id: int) -> None:
        row = self.store.get_task(task_id)
        if row is None:
            raise NotFound(f"task {task_id} not found")
        if row["status"] == RUNNING and self.runner is not None:
            self.runner.stop(task_id, wait=3)
        self.store.delete_task(task_id)
        remove_artifacts(self.config.artifacts_dir, task_id)


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


def _ok(data: Any) -> Dict[str, Any]:
    return {"code": 0, "message": "success", "data": data}


class _Body:
    """A request's JSON object, read with checks that name the wrong field."""

    def __init__(self, data: Dict[str, Any]):
        self.data = data

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def str(self, name: str, *, required: bool = False, default: Optional[str] = None,
            choices: Sequence[str] = (), max_length: int = 1000) -> Optional[str]:
        value = self.data.get(name)
        if value is None:
            if required:
                raise BadRequest(name, "is required")
            return default
        if not isinstance(value, str):
            raise BadRequest(name, f"must be a string, got {_json_type(value)}")
        if len(value) > max_length:
            raise BadRequest(name, f"is longer than {max_length} characters")
        if choices and value not in choices:
            raise BadRequest(name, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def int(self, name: str, default: int, low: int, high: int) -> int:
        value = self.data.get(name)
        if value is None:
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequest(name, f"must be an integer, got {_json_type(value)}")
        if not low <= value <= high:
            raise BadRequest(name, f"must be between {low} and {high}, got {value}")
        return value

    def bool(self, name: str, default: bool) -> bool:
        value = self.data.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise BadRequest(name, f"must be true or false, got {_json_type(value)}")
        return value

    def list(self, name: str, item_type: type, *, required: bool = False,
             max_items: int = 10_000) -> Optional[List[Any]]:
        value = self.data.get(name)
        if value is None:
            if required:
                raise BadRequest(name, "is required")
            return None
        if not isinstance(value, list):
            raise BadRequest(name, f"must be an array, got {_json_type(value)}")
        if len(value) > max_items:
            raise BadRequest(name, f"has more than {max_items} items")
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, item_type):
                kind = "an integer" if item_type is int else "a string"
                raise BadRequest(f"{name}[{i}]", f"must be {kind}, got {_json_type(item)}")
            if item_type is int and not -2 ** 63 <= item < 2 ** 63:
                raise BadRequest(f"{name}[{i}]", f"is out of range: {item}")
        return value

    def task_ids(self) -> List[int]:
        return self.list("task_ids", int, required=True)


def normalize_username(text: str) -> str:
    return text.strip().lstrip("@")


USERNAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
SERIAL_RE = re.compile(r"[^\s\x00-\x1f]{1,128}")
PACKAGE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+")
ADDRESS_RE = re.compile(r"([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:]+\]):(\d{1,5})")


class Api:
    """The routes of SPEC 4, on a bottle app, with the access rules of SPEC 3.

    Every route is declared with its OpenAPI description beside it, so the document
    at /openapi.json cannot drift from what is served.
    """

    def __init__(self, lite: Lite):
        import bottle
        self.bottle = bottle
        self.lite = lite
        self.store = lite.store
        self.app = bottle.Bottle()
        self.app.default_error_handler = self._router_error
        self.routes: List[Dict[str, Any]] = []
        self.allowed_networks = list(lite.config.allow_from)
        lite.task_builder = self.build_tasks
        self._declare_routes()
        self._declare_operation_routes()

    # -- plumbing ------------------------------------------------------------------
    def wsgi(self, environ, start_response):
        """Every request, logged in one line at info: client, method, path, status, time
        (never the key)."""
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
            self._check_access(environ)
            length = environ.get("CONTENT_LENGTH") or "0"
            if not length.isdigit():
                raise BadRequest("Content-Length", "is not a number")
            if int(length) > MAX_BODY_BYTES:
                raise BodyTooLarge(f"request body is larger than {MAX_BODY_BYTES} bytes")
            if environ.get("PATH_INFO") == "/metrics":
                if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
                    raise MethodNotAllowed("method not allowed here; allowed: GET")
                text = self.metrics().encode("utf-8")
                start_response("200 OK", [
                    ("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
                    ("Content-Length", str(len(text)))])
                return [text]
        except LiteError as exc:
            body = json.dumps({"code": exc.code, "message": exc.message, "data": None})
            start_response(f"{exc.code // 100} {_reason(exc.code // 100)}",
                           [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
            return [body.encode()]
        return self.app(environ, start_response)

    def _check_access(self, environ) -> None:
        try:
            address = ipaddress.ip_address(environ.get("REMOTE_ADDR", "").split("%")[0])
            address = getattr(address, "ipv4_mapped", None) or address
        except ValueError:
            raise Forbidden("client address unknown") from None
        if not any(address in net for net in self.allowed_networks
                   if net.version == address.version):
            log.warning("refused %s %s from %s: address not allowed (--allow-from)",
                        environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), address)
            raise Forbidden(f"client address {address} is not allowed (--allow-from)")
        key = self.lite.config.api_key
        if not key and not self.store.has_admin_key():
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
        response.status = status
        response.content_type = "application/json"
        return json.dumps(payload, ensure_ascii=False)

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

    def route(self, method: str, path: str, summary: str, *, body: Optional[dict] = None,
              query: Optional[Dict[str, dict]] = None, data: Optional[dict] = None,
              produces: str = "application/json"):
        """Declare an endpoint: its handler returns the `data` of a success envelope."""
        def decorator(handler):
            def endpoint(**kwargs):
                try:
                    for name, value in kwargs.items():
                        if name.endswith("_id") and not -2 ** 63 <= value < 2 ** 63:
                            raise NotFound(f"{name[:-3]} {value} not found")
                    result = handler(**kwargs)
                except LiteError as exc:
                    return self._error(exc)
                except Exception:
                    log.exception("%s %s failed", method, path)
                    return self._error(LiteError("internal error"))
                if isinstance(result, self.bottle.HTTPResponse):
                    return result
                return self._respond(200, _ok(result))
            self.app.route(API_PREFIX + re.sub(r"\{(\w+)\}", lambda m: f"<{m[1]}:int>" if
                                               m[1].endswith("_id") else f"<{m[1]}>", path),
                           method, endpoint)
            self.routes.append({"method": method, "path": path, "summary": summary,
                                "body": body, "query": query or {}, "data": data,
                                "produces": produces})
            return handler
        return decorator

    def json_body(self) -> _Body:
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
        if not isinstance(data, dict):
            raise BadRequest("body", f"must be a JSON object, got {_json_type(data)}")
        return _Body(data)

    def query(self) -> Dict[str, str]:
        from urllib.parse import parse_qsl
        return dict(parse_qsl(self.bottle.request.environ.get("QUERY_STRING", ""),
                              keep_blank_values=False))

    # -- routes ------------------------------------------------------------------------
    def _declare_routes(self) -> None:
        route, store, lite = self.route, self.store, self.lite
        task_list = {"items": "array of Task", "total": "integer", "page": "integer",
                     "page_size": "integer"}
        ids_body = {"task_ids": "array of integer (required)"}
        done_errors = {"done": "array of integer", "errors": "object: id -> reason"}

        @route("POST", "/task", "Create tasks on devices or accounts", body={
            "serials": "array of string (this or usernames)",
            "usernames": "array of string (this or serials)",
            "script_name": "string (required)", "script_config": "object (required)",
            "enable_multi_account": "boolean", "start_time": "string HH:MM",
            "min_interval": "integer 0-1440 (minutes)", "max_interval": "integer 0-1440",
            "priority": "integer -100..100", "max_retry_count": "integer 1-10",
            "auto_retry": "boolean", "callback_url": "string http(s) URL",
            "expire_in": "integer 1-10080 (minutes)",
            "expire_at": "string YYYY-MM-DD HH:MM:SS", "timeout": "integer 10-86400 (s)"},
            data={"task_ids": "array of integer", "created_count": "integer"})
        def create_task():
            tasks = self.build_tasks(self.json_body())
            for task in tasks:
                task.creator = self.bottle.request.environ.get("tmlite.creator")
            ids = store.create_tasks(tasks)
            lite.wake()
            return {"task_ids": ids, "created_count": len(ids)}

        @route("GET", "/task", "List tasks, newest first", query={
            "status": "0-3 or pending/running/completed/failed, or a comma list",
            "creator": "string (a key's name, or admin)", "serial": "string",
            "script_name": "string", "source": "api or ui", "username": "string",
            "start_timestamp": "epoch seconds (creation time from)",
            "end_timestamp": "epoch seconds (creation time to)",
            "page": "integer >= 1 (default 1)",
            "page_size": "integer 1-100 (default 20; larger is clamped)"}, data=task_list)
        def list_tasks():
            q = self.query()
            statuses = []
            names = {name: number for number, name in STATUS_TEXT.items()}
            for part in q.get("status", "").split(","):
                part = part.strip().lower()
                if part:
                    if part not in ("0", "1", "2", "3") and part not in names:
                        raise BadRequest("status", "must be 0-3 or pending, running, "
                                         "completed, failed, or a comma list of them, "
                                         f"got {q['status']!r}")
                    statuses.append(names[part] if part in names else int(part))
            page = _query_int(q, "page", 1, 1, 10 ** 9)
            page_size = min(_query_int(q, "page_size", 20, 1, 10 ** 9), 100)
            rows, total = store.list_tasks(
                statuses=statuses, serial=q.get("serial"), script_name=q.get("script_name"),
                source=q.get("source"),
                username=normalize_username(q["username"]) if "username" in q else None,
                created_from=_query_number(q, "start_timestamp"),
                created_to=_query_number(q, "end_timestamp"), page=page, page_size=page_size,
                creator=q.get("creator"))
            return {"items": [task_to_json(r) for r in rows], "total": total, "page": page,
                    "page_size": page_size}

        @route("GET", "/task/stats", "Count tasks by status",
               data={"total": "integer", "pending": "integer", "running": "integer",
                     "completed": "integer", "failed": "integer"})
        def task_stats():
            return store.stats()

        @route("POST", "/task/retry-all", "Retry every failed task under its limit",
               data={"retried_count": "integer"})
        def retry_all():
            ids = store.retry_all()
            lite.wake()
            return {"retried_count": len(ids)}

        @route("DELETE", "/task/batch", "Delete tasks (running ones are stopped first)",
               body=ids_body, data={"deleted_count": "integer", "errors": "object"})
        def delete_batch():
            done, errors = self._each(self.json_body().task_ids(), lite.delete_task)
            return {"deleted_count": len(done), "errors": errors}

        @route("POST", "/task/batch/stop", "Stop tasks", body=ids_body, data=done_errors)
        def stop_batch():
            done, errors = self._each(self.json_body().task_ids(), lite.stop_task)
            return {"done": done, "errors": errors}

        @route("POST", "/task/batch/retry", "Retry failed tasks", body=ids_body,
               data=done_errors)
        def retry_batch():
            done, errors = self._each(self.json_body().task_ids(), self._retry_unless_stopped)
            return {"done": done, "errors": errors}

        @route("POST", "/task/clear", "Delete finished tasks in the given states",
               body={"status": "array of 2 (completed) and/or 3 (failed) (required)"},
               data={"deleted_count": "integer"})
        def clear_tasks():
            statuses = self.json_body().list("status", int, required=True)
            for i, status in enumerate(statuses):
                if status not in (COMPLETED, FAILED):
                    raise BadRequest(f"status[{i}]", f"only finished tasks (2 completed, "
                                                     f"3 failed) can be cleared, got {status}")
            ids = store.clear(sorted(set(statuses))) if statuses else []
            for task_id in ids:
                remove_artifacts(lite.config.artifacts_dir, task_id)
            return {"deleted_count": len(ids)}

        @route("GET", "/task/{task_id}", "A task with its log and artifacts",
               data={"...Task": "", "log": "array of string", "artifacts": "array of URL"})
        def get_task(task_id):
            row = store.get_task(task_id)
            if row is None:
                raise NotFound(f"task {task_id} not found")
            out = task_to_json(row)
            out["log"] = [f"{format_time(r['at'])} {r['line']}" for r in store.task_log(task_id)]
            out["artifacts"] = [f"{API_PREFIX}/task/{task_id}/artifacts/{name}" for name in
                                artifact_names(lite.config.artifacts_dir, task_id)]
            return out

        @route("DELETE", "/task/{task_id}", "Delete a task (a running one is stopped first)")
        def delete_task(task_id):
            lite.delete_task(task_id)
            return {"deleted": task_id}

        @route("POST", "/task/{task_id}/stop", "Stop a running task or cancel a pending one",
               data={"...Task": ""})
        def stop_task(task_id):
            lite.stop_task(task_id)
            return task_to_json(store.get_task(task_id))

        @route("POST", "/task/{task_id}/retry", "Put a failed task back to pending",
               data={"...Task": ""})
        def retry_task(task_id):
            lite.retry_task(task_id)
            return task_to_json(store.get_task(task_id))

        @route("GET", "/task/{task_id}/artifacts/{name}",
               "A failure screenshot (PNG) or UI dump (XML)", produces="image/png, text/xml")
        def get_artifact(task_id, name):
            if name not in artifact_names(lite.config.artifacts_dir, task_id):
                raise NotFound(f"task {task_id} has no artifact {name!r}")
            return self.bottle.static_file(name, root=str(lite.config.artifacts_dir /
                                                          str(task_id)))

        @route("GET", "/license/check", "What this server's plan allows",
               data={"plan_name": "string", "api_enabled": "boolean",
                     "device_limit": "integer", "message": "string"})
        def license_check():
            return {"plan_name": "Lite", "api_enabled": True, "device_limit": 0,
                    "message": "API access enabled"}

        @route("GET", "/device", "Every known device",
               data={"items": "array of Device", "total": "integer"})
        def list_devices():
            items = [device_to_json(row, lite.devices) for row in store.list_devices()]
            return {"items": items, "total": len(items)}

        @route("POST", "/device/connect", "adb connect a network or cloud phone",
               body={"address": "string host:port (required)"},
               data={"address": "string", "message": "string"})
        def connect_device():
            address = self._address(self.json_body())
            devices = lite.need_devices()
            message = devices.connect(address)
            if "connected to" not in message:
                raise Unavailable(f"adb could not connect to {address}: {message.strip()}")
            store.upsert_device(address, connection="tcp", last_seen=store.clock())
            return {"address": address, "message": message.strip()}

        @route("POST", "/device/disconnect", "adb disconnect a network phone",
               body={"address": "string host:port (required)"},
               data={"address": "string", "message": "string"})
        def disconnect_device():
            address = self._address(self.json_body())
            message = lite.need_devices().disconnect(address)
            return {"address": address, "message": message.strip()}

        @route("GET", "/device/{serial}/screenshot", "The phone's screen now (PNG)",
               produces="image/png")
        def device_screenshot(serial):
            if store.get_device(serial) is None:
                raise NotFound(f"device {serial} not found")
            devices = lite.need_devices()
            if not devices.is_online(serial):
                raise Unavailable(f"device {serial} is {devices.state(serial)}")
            try:
                png = devices.screenshot(serial)
            except (DeviceLost, CommandTimeout, RuntimeError) as exc:
                raise Unavailable(f"device {serial}: no screenshot ({exc})") from None
            return self.bottle.HTTPResponse(png, status=200, headers={
                "Content-Type": "image/png", "Cache-Control": "no-store"})

        @route("GET", "/account", "Accounts", query={"serial": "string"},
               data={"items": "array of Account", "total": "integer"})
        def list_accounts():
            items = [self._account_json(r)
                     for r in store.list_accounts(self.query().get("serial"))]
            return {"items": items, "total": len(items)}

        @route("POST", "/account", "Add an account bound to a device", body={
            "username": "string (required)", "serial": "string (required)",
            "platform": "tiktok or instagram (required)",
            "package": "string (default: the platform's app)", "enabled": "boolean"},
            data={"...Account": ""})
        def create_account():
            body = self.json_body()
            username = self._username(body.str("username", required=True))
            serial, platform, package, enabled = self._account_fields(body, None)
            safety = account_safety_fields(body, None)
            with store.write():
                if not store.save_account(username, serial, platform, package, enabled, True):
                    raise BadRequest("username", f"account {username} already exists")
                store.save_account_safety(username, *safety)
            return self._account_json(store.get_account(username))

        @route("GET", "/account/{username}", "One account", data={"...Account": ""})
        def get_account(username):
            return self._account_json(self._account(username))

        @route("PUT", "/account/{username}", "Change an account's device, platform, package "
               "or enabled", body={"serial": "string", "platform": "string",
                                   "package": "string", "enabled": "boolean"},
               data={"...Account": ""})
        def update_account(username):
            row, body = self._account(username), self.json_body()
            serial, platform, package, enabled = self._account_fields(body, row)
            safety = account_safety_fields(body, row)
            with store.write():
                store.save_account(row["username"], serial, platform, package, enabled, False)
                store.save_account_safety(row["username"], *safety)
            lite.wake()                          # new limits may free waiting tasks
            return self._account_json(store.get_account(row["username"]))

        @route("DELETE", "/account/{username}", "Remove an account")
        def delete_account(username):
            row = self._account(username)
            store.delete_account(row["username"])
            return {"deleted": row["username"]}

        @route("GET", "/script", "The loaded scripts and their parameters",
               data={"items": "array of Script", "total": "integer"})
        def list_scripts():
            items = [s.describe() for _, s in sorted(lite.scripts.items())]
            return {"items": items, "total": len(items)}

        @route("GET", "/health", "Version, uptime, time, database and adb status")
        def health():
            return self.health()

        @route("GET", "/openapi.json", "This API as an OpenAPI 3 document")
        def openapi():
            return self.bottle.HTTPResponse(
                json.dumps(self.openapi(), ensure_ascii=False), status=200,
                headers={"Content-Type": "application/json"})

    # -- operations' routes (SPEC 8) ---------------------------------------------------
    def _declare_operation_routes(self) -> None:
        route = self.route
        account = {"...Account": "", "limits": "object", "active_hours": "string",
                   "cooldown_hours": "number", "status": "ok or cooldown",
                   "cooldown_until": "string or null", "counts": "object"}
        route("POST", "/account/{username}/resume", "End an account's cooldown early",
              data=account)(self.resume_account)
        route("GET", "/webhook/deliveries", "The last 500 webhook deliveries",
              data={"items": "array of Delivery", "total": "integer"})(self.list_deliveries)
        schedule = {"name": "string (required)", "script_name": "string (required)",
                    "script_config": "object (required)", "serials": "array of string",
                    "usernames": "array of string", "days": "array of 1-7 (ISO weekdays)",
                    "times": "array of HH:MM (required)", "jitter_minutes": "integer 0-120",
                    "enabled": "boolean", "...POST /task options": ""}
        listing = {"items": "array of Schedule", "total": "integer"}
        route("POST", "/schedule", "Create a recurring schedule", body=schedule,
              data={"...Schedule": ""})(self.create_schedule)
        route("GET", "/schedule", "Schedules", data=listing)(self.list_schedules)
        route("GET", "/schedule/{schedule_id}", "One schedule",
              data={"...Schedule": ""})(self.get_schedule)
        route("PUT", "/schedule/{schedule_id}", "Change a schedule", body=schedule,
              data={"...Schedule": ""})(self.update_schedule)
        route("DELETE", "/schedule/{schedule_id}", "Delete a schedule")(self.delete_schedule)
        route("POST", "/schedule/{schedule_id}/run", "Make a schedule's tasks now",
              data={"task_ids": "array of integer", "created_count": "integer"}
              )(self.run_schedule)
        route("POST", "/worker/next", "Take the next due task of external scripts", body={
            "worker_id": "string (required)", "script_names": "array of string (required)",
            "lease_seconds": "integer 30-3600 (default 300)"},
            data={"...Task or null": ""})(self.worker_next)
        route("POST", "/worker/progress", "Report progress; renews the lease", body={
            "task_id": "integer", "worker_id": "string", "progress": "integer 0-100",
            "message": "string"}, data={"...Task": ""})(self.worker_progress)
        route("POST", "/worker/complete", "Complete a task taken by this worker", body={
            "task_id": "integer", "worker_id": "string", "result": "any JSON"},
            data={"...Task": ""})(self.worker_complete)
        route("POST", "/worker/fail", "Fail a task taken by this worker", body={
            "task_id": "integer", "worker_id": "string", "error": "string",
            "allow_retry": "boolean"}, data={"...Task": ""})(self.worker_fail)
        route("POST", "/apikey", "Create an API key (returned once)", body={
            "name": "string (required)", "role": "admin, operator or viewer (required)"},
            data={"id": "integer", "name": "string", "role": "string", "key": "string",
                  "created_at": "string"})(self.create_key)
        route("GET", "/apikey", "API keys (no secrets)",
              data={"items": "array of Key", "total": "integer"})(self.list_keys)
        route("DELETE", "/apikey/{key_id}", "Delete an API key")(self.delete_key)

    # -- accounts --
    def resume_account(self, username):
        row = self._account(username)
        self.store.set_cooldown(row["username"], None)
        self.lite.wake()
        return self.lite.safety.describe(self.store.get_account(row["username"]),
                                         self.store.clock())

    # -- webhooks --
    def list_deliveries(self):
        items = [{"id": r["id"], "delivery_id": r["delivery_id"], "event": r["event"],
                  "url": r["url"], "tries": r["tries"], "last_status": r["last_status"],
                  "next_try": format_time(r["next_try"]),
                  "created_at": format_time(r["created_at"])}
                 for r in self.store.list_deliveries()]
        return {"items": items, "total": len(items)}

    # -- schedules --
    def create_schedule(self):
        fields = schedule_fields(self.json_body(), None, self.build_tasks)
        schedule_id = self.store.save_schedule(None, fields)
        return self._replan(schedule_id)

    def list_schedules(self):
        items = [schedule_to_json(r) for r in self.store.list_schedules()]
        return {"items": items, "total": len(items)}

    def get_schedule(self, schedule_id):
        return schedule_to_json(self._schedule(schedule_id))

    def update_schedule(self, schedule_id):
        row = self._schedule(schedule_id)
        fields = schedule_fields(self.json_body(), row, self.build_tasks)
        self.store.save_schedule(schedule_id, fields)
        return self._replan(schedule_id)

    def delete_schedule(self, schedule_id):
        self._schedule(schedule_id)
        self.store.delete_schedule(schedule_id)
        return {"deleted": schedule_id}

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

    # -- workers --
    def worker_next(self):
        body = self.json_body()
        worker = body.str("worker_id", required=True, max_length=200)
        names = body.list("script_names", str, required=True, max_items=100)
        if not names:
            raise BadRequest("script_names", "must name at least one external script")
        for i, name in enumerate(names):
            script = self.lite.scripts.get(name)
            if script is None or script.runner != "external":
                raise BadRequest(f"script_names[{i}]", f"{name!r} is not an external script")
        lease = body.int("lease_seconds", 300, 30, 3600)
        row = self.store.worker_claim(worker, names, lease, self.store.clock())
        if row is None:
            return None
        self.lite.wake()                       # the scheduler now watches its lease
        return task_to_json(row)

    def worker_progress(self):
        body = self.json_body()
        task_id, worker = self._worker_task(body)
        if not self.store.worker_progress(task_id, worker, body.int("progress", 0, 0, 100),
                                          body.str("message", default="", max_length=500),
                                          self.store.clock()):
            raise self._not_yours(task_id, worker)
        self.lite.wake()
        return task_to_json(self.store.get_task(task_id))

    def worker_complete(self):
        body = self.json_body()
        task_id, _ = self._worker_task(body)
        self.store.finish(task_id, ok=True, result=body.data.get("result"))
        return task_to_json(self.store.get_task(task_id))

    def worker_fail(self):
        body = self.json_body()
        task_id, _ = self._worker_task(body)
        error = body.str("error", default="failed by the worker", max_length=2000)
        allow = body.bool("allow_retry", False)
        self.store.finish(task_id, ok=False, error=error, auto_retry=allow,
                          allow_auto_retry=allow)
        self.lite.wake()
        return task_to_json(self.store.get_task(task_id))

    def _worker_task(self, body: _Body) -> Tuple[int, str]:
        """The task and worker of a call; 40001 unless that worker holds that task."""
        task_id = body.int("task_id", 0, 1, 2 ** 63 - 1)
        worker = body.str("worker_id", required=True, max_length=200)
        row = self.store.get_task(task_id)
        if row is None or row["status"] != RUNNING or row["worker_id"] != worker:
            raise self._not_yours(task_id, worker)
        return task_id, worker

    def _not_yours(self, task_id: int, worker: str) -> BadRequest:
        return BadRequest("task_id", f"task {task_id} is not running for worker {worker!r}")

    # -- keys --
    def create_key(self):
        body = self.json_body()
        name = body.str("name", required=True, max_length=100).strip()
        if not name:
            raise BadRequest("name", "must not be empty")
        role = body.str("role", required=True, choices=KEY_ROLES)
        key = "tml_" + base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")
        key_id = self.store.add_api_key(name, role, hash_key(key))
        log.info("API key %s (%s, %s) created", key_id, name, role)
        return {"id": key_id, "name": name, "role": role, "key": key,
                "created_at": format_time(self.store.clock())}

    def list_keys(self):
        items = [{"id": r["id"], "name": r["name"], "role": r["role"],
                  "created_at": format_time(r["created_at"])}
                 for r in self.store.list_api_keys()]
        return {"items": items, "total": len(items)}

    def delete_key(self, key_id):
        if not self.store.delete_api_key(key_id):
            raise NotFound(f"API key {key_id} not found")
        return {"deleted": key_id}

    # -- metrics --
    def metrics(self) -> str:
        """GET /metrics (outside /api/v1, served by wsgi()): Prometheus text, counted now."""
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
             {"": getattr(lite, "event_streams_open", 0)}),
        ]
        return lite.metrics.render(gauges)

    # -- helpers of the routes --------------------------------------------------------
    def _each(self, ids: List[int], action: Callable[[int], None]):
        done, errors = [], {}
        for task_id in dict.fromkeys(ids):
            try:
                action(task_id)
                done.append(task_id)
            except NotFound:
                errors[str(task_id)] = "task not found"
            except LiteError as exc:
                errors[str(task_id)] = exc.message.split(": ", 1)[-1]
        return done, errors

    def _retry_unless_stopped(self, task_id: int) -> None:
        """Batch retry leaves tasks the user stopped alone; a single retry may take them."""
        row = self.store.get_task(task_id)
        if row is not None and row["status"] == FAILED and row["error"] == STOPPED_BY_USER:
            raise BadRequest("task_id", f"task {task_id}: {STOPPED_BY_USER}; retry it alone "
                                        "to run it again")
        self.lite.retry_task(task_id)

    def _address(self, body: _Body) -> str:
        address = body.str("address", required=True).strip()
        match = ADDRESS_RE.fullmatch(address)
        if not match or not 1 <= int(match[2]) <= 65535:
            raise BadRequest("address", f"must be host:port, got {address!r}")
        return address

    def _username(self, text: str) -> str:
        username = normalize_username(text)
        if not USERNAME_RE.fullmatch(username):
            raise BadRequest("username", "must be 1-64 letters, digits, '.', '_' or '-' "
                                         f"(an optional leading @), got {text!r}")
        return username

    def _account(self, username: str) -> sqlite3.Row:
        row = self.store.get_account(normalize_username(username))
        if row is None:
            raise NotFound(f"account {normalize_username(username)} not found")
        return row

    def _account_json(self, row: sqlite3.Row) -> Dict[str, Any]:
        return self.lite.safety.describe(row, self.store.clock())

    def _account_fields(self, body: _Body, row: Optional[sqlite3.Row]):
        required = row is None
        serial = body.str("serial", required=required) or row["serial"]
        if self.store.get_device(serial) is None:
            raise BadRequest("serial", f"unknown device {serial!r}: connect it first")
        platform = body.str("platform", required=required, choices=PLATFORM_NAMES) \
            or row["platform"]
        package = body.str("package")
        if package is None:
            same = row is not None and row["platform"] == platform
            package = row["package"] if same else APP_PACKAGES[platform][0]
        if not PACKAGE_RE.fullmatch(package):
            raise BadRequest("package", f"is not an Android package name: {package!r}")
        enabled = body.bool("enabled", True if row is None else bool(row["enabled"]))
        return serial, platform, package, enabled

    def build_tasks(self, body: Any, source: str = "api",
                    schedule_id: Optional[int] = None) -> List[NewTask]:
        """The tasks one POST /task asks for, all validated before any is written."""
        body = body if isinstance(body, _Body) else _Body(body)
        name = body.data.get("script_name")
        if name is None or name == "":
            raise MissingScriptName("script_name is required")
        if not isinstance(name, str):
            raise BadRequest("script_name", f"must be a string, got {_json_type(name)}")
        script = self.lite.scripts.get(name)
        if script is None or name in NOT_API_SCRIPTS:
            known = ", ".join(sorted(self.lite.scripts))
            raise ScriptNotSupported(f"script {name!r} is not supported through the API"
                                     f" (loaded: {known or 'none'})")
        if "script_config" not in body.data or body.data["script_config"] is None:
            raise BadRequest("script_config", "is required")
        if not isinstance(body.data["script_config"], dict):
            raise BadRequest("script_config", "must be an object, got "
                             f"{_json_type(body.data['script_config'])}")
        serials = body.list("serials", str)
        usernames = body.list("usernames", str)
        if serials and usernames:
            raise BadRequest("serials", "give serials or usernames, not both")
        external = script.runner == "external"
        if not serials and not usernames and not external:
            raise BadRequest("serials", "give a non-empty serials or usernames array")
        multi = body.bool("enable_multi_account", False)
        now = self.store.clock()
        start, start_note = start_time_of(body.str("start_time", default=""), now)
        extras = task_end_fields(body, now)
        low = body.int("min_interval", 0, 0, 1440)
        high = body.int("max_interval", 0, 0, 1440)
        if low > high:
            raise BadRequest("min_interval", f"must not exceed max_interval ({low} > {high})")
        priority = body.int("priority", 0, -100, 100)
        max_retry = body.int("max_retry_count", 3, 1, 10)
        auto_retry = body.bool("auto_retry", False)
        configs = script.expand_config(script.check_config(body.data["script_config"]))
        targets = self._task_targets(script, serials, usernames, multi)
        if len(targets) * len(configs) > 10_000:
            raise BadRequest("serials", f"would create {len(targets) * len(configs)} tasks; "
                                        "the limit is 10000 per request")
        return [NewTask(serial=serial, username=username, script_name=name,
                        script_config=config, priority=priority, start_time=start,
                        rest_seconds=random.uniform(low * 60, high * 60), min_interval=low,
                        max_interval=high, max_retry_count=max_retry, auto_retry=auto_retry,
                        source=source, schedule_id=schedule_id, external=external,
                        message=start_note, **extras)
                for serial, username in targets for config in configs]

    def _task_targets(self, script: Script, serials: Optional[List[str]],
                      usernames: Optional[List[str]], multi: bool
                      ) -> List[Tuple[str, Optional[str]]]:
        """(serial, username) of each task of a request, checked."""
        name, external = script.name, script.runner == "external"
        targets: List[Tuple[str, Optional[str]]] = []
        if serials:
            for i, serial in _first_of_each(serials):
                if self.store.get_device(serial) is None and not external:
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
        elif usernames:          # @NASA and nasa are one account, as in the apps
            for i, text in _first_of_each(usernames, key=lambda u: normalize_username(u)
                                          .lower()):
                account = self.store.get_account(normalize_username(text))
                if account is None:
                    raise BadRequest(f"usernames[{i}]", f"unknown account {text!r}")
                if not account["enabled"]:
                    raise BadRequest(f"usernames[{i}]", f"account {text!r} is disabled")
                if account["platform"] not in script.platforms:
                    raise BadRequest(f"usernames[{i}]", f"account {text!r} is on "
                                     f"{account['platform']}, which {name} does not support")
                targets.append((account["serial"], account["username"]))
        else:
            targets.append(("", None))           # an external task held by no phone
        return targets

    def health(self) -> Dict[str, Any]:
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

    def openapi(self) -> Dict[str, Any]:
        """An OpenAPI 3 document made from the route declarations."""
        def schema_of(fields: Optional[dict]) -> Dict[str, Any]:
            if not fields:
                return {"type": "object"}
            return {"type": "object", "properties": {
                k: {"description": v} for k, v in fields.items()}}

        paths: Dict[str, Dict[str, Any]] = {}
        for r in self.routes:
            params = [{"name": n, "in": "path", "required": True,
                       "schema": {"type": "integer" if n.endswith("_id") else "string"}}
                      for n in re.findall(r"\{(\w+)\}", r["path"])]
            params += [{"name": n, "in": "query", "required": False,
                        "description": d, "schema": {"type": "string"}}
                       for n, d in r["query"].items()]
            envelope = {"type": "object", "properties": {
                "code": {"type": "integer"}, "message": {"type": "string"},
                "data": schema_of(r["data"])}}
            if r["produces"] != "application/json":
                ok = {"description": "success", "content": {
                    t.strip(): {} for t in r["produces"].split(",")}}
            elif r["path"] == "/openapi.json":
                ok = {"description": "the OpenAPI document itself (not enveloped)",
                      "content": {"application/json": {"schema": {"type": "object"}}}}
            else:
                ok = {"description": "success",
                      "content": {"application/json": {"schema": envelope}}}
            operation = {
                "summary": r["summary"], "parameters": params,
                "responses": {"200": ok, "default": {
                    "description": "error: code 40001, 40002, 40003, 40101, 40301, 40401, "
                                   "40501, 41301 or 50001; HTTP status code // 100",
                    "content": {"application/json": {"schema": {
                        "$ref": "#/components/schemas/Error"}}}}}}
            if r["body"]:
                operation["requestBody"] = {"required": True, "content": {
                    "application/json": {"schema": schema_of(r["body"])}}}
            paths.setdefault(API_PREFIX + r["path"], {})[r["method"].lower()] = operation
        return {
            "openapi": "3.0.3",
            "info": {"title": "TikMatrix Lite", "version": __version__,
                     "description": "The TikMatrix local task API, served by TikMatrix Lite."},
            "paths": paths,
            "components": {
                "schemas": {"Error": {"type": "object", "properties": {
                    "code": {"type": "integer"}, "message": {"type": "string"},
                    "data": {"nullable": True}}}},
                "securitySchemes": {
                    "bearer": {"type": "http", "scheme": "bearer"},
                    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}},
        }


#: the POST /task fields a schedule keeps as its request
SCHEDULE_TASK_FIELDS = ("script_name", "script_config", "serials", "usernames", "groups",
                        "enable_multi_account", "priority", "min_interval", "max_interval",
                        "max_retry_count", "auto_retry", "callback_url", "expire_in",
                        "timeout")


def schedule_fields(body: _Body, row: Optional[sqlite3.Row],
                    build: Callable[[Dict[str, Any]], List[NewTask]]) -> Dict[str, Any]:
    """A schedule's columns from a POST/PUT body (PUT: merged over the row), checked;
    its task request is checked as POST /task would, at once."""
    old = dict(schedule_to_json(row)) if row is not None else {}
    for one, other in (("serials", "usernames"), ("usernames", "serials")):
        if body.has(one):                        # naming phones anew replaces accounts
            old.pop(other, None)
    data = dict(old, **{k: v for k, v in body.data.items() if v is not None})
    merged = _Body(data)
    name = merged.str("name", required=True, max_length=200)
    days = merged.list("days", int)
    if days is None:
        days = [1, 2, 3, 4, 5, 6, 7]
    if not days:
        raise BadRequest("days", "must name at least one ISO weekday 1-7 (absent: every day)")
    for i, day in enumerate(days):
        if not 1 <= day <= 7:
            raise BadRequest(f"days[{i}]", f"must be an ISO weekday 1-7, got {day}")
    times = merged.list("times", str, required=True, max_items=100)
    if not times:
        raise BadRequest("times", "must name at least one time HH:MM")
    for i, text in enumerate(times):
        if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", text):
            raise BadRequest(f"times[{i}]", f"must be HH:MM (00:00-23:59), got {text!r}")
    request = {k: data[k] for k in SCHEDULE_TASK_FIELDS if data.get(k) is not None}
    if request.get("groups") is not None:
        raise BadRequest("groups", "phone groups are not supported by this server yet")
    build(request)                               # raises what POST /task would
    return {"name": name, "request": _dump_json(request),
            "days": _dump_json(sorted(set(days))), "times": _dump_json(sorted(set(times))),
            "jitter_minutes": merged.int("jitter_minutes", 0, 0, 120),
            "enabled": int(merged.bool("enabled", True))}


def account_safety_fields(body: _Body, row: Optional[sqlite3.Row]
                          ) -> Tuple[Optional[dict], Optional[str], float]:
    """limits, active_hours and cooldown_hours of an account body (SPEC 8.1), checked;
    fields not sent keep the row's values."""
    limits = _load_json(row["limits"]) if row is not None else None
    if "limits" in body.data:
        limits = body.data["limits"]
        if limits is not None and not isinstance(limits, dict):
            raise BadRequest("limits", f"must be an object, got {_json_type(limits)}")
        for action, limit in (limits or {}).items():
            where = f"limits.{action}"
            if action not in LIMITED_ACTIONS:
                raise BadRequest(where, f"unknown action; known: {', '.join(LIMITED_ACTIONS)}")
            if not isinstance(limit, dict) or not limit or set(limit) - {"per_hour", "per_day"}:
                raise BadRequest(where, "must be an object with per_hour and/or per_day")
            for key, value in limit.items():
                if isinstance(value, bool) or not isinstance(value, int) \
                        or not 0 <= value <= 100_000:
                    raise BadRequest(f"{where}.{key}", f"must be an integer 0-100000, "
                                                       f"got {value!r}")
    hours = row["active_hours"] if row is not None else None
    if "active_hours" in body.data:
        hours = body.str("active_hours")
        if hours is not None and not ACTIVE_HOURS_RE.fullmatch(hours):
            raise BadRequest("active_hours", f"must be HH:MM-HH:MM, got {hours!r}")
    cooldown = row["cooldown_hours"] if row is not None else DEFAULT_COOLDOWN_HOURS
    value = body.data.get("cooldown_hours")
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 0 <= value <= 24 * 30:
            raise BadRequest("cooldown_hours", f"must be a number of hours 0-720, got {value!r}")
        cooldown = float(value)
    return limits or None, hours or None, cooldown


KEY_ROLES = ("admin", "operator", "viewer")


def hash_key(key: str) -> str:
    """Keys are 192 random bits, so one SHA-256 is enough to store them safely."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


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
    raise BadRequest(name, f"must be 'YYYY-MM-DD HH:MM:SS' (box local time), got {text!r}")


def task_end_fields(body: _Body, now: float) -> Dict[str, Any]:
    """callback_url, expiry and timeout of POST /task (SPEC 8.3), checked."""
    from urllib.parse import urlsplit
    url = body.str("callback_url", max_length=2000)
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise BadRequest("callback_url", f"must be an http or https URL, got {url!r}")
    if body.has("expire_in") and body.has("expire_at"):
        raise BadRequest("expire_in", "give expire_in or expire_at, not both")
    expire_at = None
    if body.has("expire_in"):
        expire_at = now + body.int("expire_in", 0, 1, 10080) * 60
    elif body.has("expire_at"):
        expire_at = parse_local_time("expire_at", body.str("expire_at"))
        if expire_at <= now:
            raise BadRequest("expire_at", f"is in the past: {body.data['expire_at']}")
    timeout = body.int("timeout", 0, 10, 86400) if body.has("timeout") else None
    return {"callback_url": url or None, "expire_at": expire_at, "timeout": timeout}


def _first_of_each(items: Sequence[str], key: Callable[[str], str] = lambda x: x):
    """(index, item) of each item's first occurrence: duplicates count once, and an
    error names the index the client sent."""
    seen = set()
    for i, item in enumerate(items):
        if key(item) not in seen:
            seen.add(key(item))
            yield i, item


def _query_int(q: Dict[str, str], name: str, default: int, low: int, high: int) -> int:
    if name not in q:
        return default
    text = q[name].strip()
    if not re.fullmatch(r"-?\d{1,12}", text):
        raise BadRequest(name, f"must be an integer, got {q[name]!r}")
    value = int(text)
    if not low <= value <= high:
        raise BadRequest(name, f"must be between {low} and {high}, got {value}")
    return value


def _query_number(q: Dict[str, str], name: str) -> Optional[float]:
    if name not in q:
        return None
    try:
        value = float(q[name])
    except ValueError:
        raise BadRequest(name, f"must be epoch seconds, got {q[name]!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise BadRequest(name, f"must be epoch seconds, got {q[name]!r}")
    return value


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
            "pending_count": row["pending_count"], "last_seen": format_time(row["last_seen"])}


def account_to_json(row: sqlite3.Row) -> Dict[str, Any]:
    return {"username": row["username"], "serial": row["serial"],
            "platform": row["platform"], "package": row["package"],
            "enabled": bool(row["enabled"]), "created_at": format_time(row["created_at"])}


def create_app(config: Config, lite: Optional[Lite] = None):
    """The WSGI application for a configuration (a Lite without adb unless one is given).

    The returned callable carries ``.lite`` and ``.api`` so tests can reach the store.
    """
    lite = lite or Lite(config, with_devices=False)
    api = Api(lite)

    def application(environ, start_response):
        return api.wsgi(environ, start_response)

    application.lite = lite
    application.api = api
    return application


###############################################################################
# Main ########################################################################
###############################################################################

def make_server(config: Config, lite: Lite):
    """Bind the port (a taken port is a ConfigError) before anything else starts."""
    import waitress.server
    try:
        return waitress.server.create_server(
            create_app(config, lite), host=config.host, port=config.port, threads=8,
            ident="TikMatrix-Lite", max_request_body_size=8 * MAX_BODY_BYTES,
            clear_untrusted_proxy_headers=True, asyncore_loop_timeout=1)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {config.host}:{config.port}: "
                          f"{exc.strerror or exc}") from None


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
        lite = Lite(config)
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
