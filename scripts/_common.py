"""The scripts' app layer: TikTok and Instagram driven with closed-loop steps.

Not a script (the name starts with "_"): the server puts the scripts folder on sys.path and
the scripts `import _common`. The selectors are data in `_selectors.py`; the generic
Android mechanics (dumps, closed-loop steps, pop-ups, typing) are the phone helpers of
the server (SPEC 6). What is here is app knowledge: which package, how to start it, which
selectors for which version, the account switcher, the flows several scripts share.

A step names what it acts on and what must show afterwards::

    app.step("tap Create (+)", "create", expect="upload")

The phone dumps the screen (or reuses the dump that confirmed the previous step),
fails on a block screen, dismisses a pop-up on top first, taps, and confirms the effect
from the next dump, retrying a tap that had none; a failure names the step, what was
expected and what the screen showed. Selectors are tried in order: for a known app
version its resource ids, then the English labels (so a phone in another language works
where ids are known).
"""

import contextlib
import re
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from _selectors import (BLOCKS, LAUNCH_ACTIVITIES, POPUPS, PROFILE_URLS, SELECTORS,
                        SHARE_ACTIVITIES)
from tikmatrix_lite import (APP_PACKAGES, GONE, USERNAME_RE, AccountBlocked,  # noqa: F401
                            AppLeft, ElementNotFound, StepFailed, as_dumped)

APP_NAMES = {"tiktok": "TikTok", "instagram": "Instagram"}


# ---------------------------------------------------------------------------------------
# The app being driven
# ---------------------------------------------------------------------------------------

class App:
    """One app on one phone, driven for one task: the phone, the task, the platform,
    the package, its version (when the phone says) and the selectors for it.

    Every step is named after the script, so a failure reads "post: tap Create: ..."."""

    def __init__(self, phone: Any, task: Any, platform: str, package: str,
                 version: str = ""):
        self.phone, self.task, self.platform = phone, task, platform
        self.package, self.version = package, version
        self.name = APP_NAMES[platform]
        self.table = SELECTORS[platform]
        self.script = getattr(task, "script_name", "") or "script"

    # -- selectors ---------------------------------------------------------------------
    def alternatives(self, key: str) -> List[Dict[str, Any]]:
        """The selectors of a step, in the order they are tried (see the module doc)."""
        entry = self.table[key]
        ids = entry["ids"]
        every = [self._id_selector(i) for v in ids.values() for i in v]
        every = [sel for n, sel in enumerate(every) if sel not in every[:n]]
        # a label only counts in the app's own windows: the navigation bar's "Home"
        # button (com.android.systemui) is not the app's Home tab
        labels = [dict(sel, package=self.package) if "resource_id" not in sel else sel
                  for sel in entry["labels"]]
        if self.known_version(key):
            # this version's ids, the labels, then the other versions' ids (screens
            # that did not change their ids between releases)
            id_list = next(ids[v] for v in ids if self.version.startswith(v))
            own = [self._id_selector(i) for i in id_list]
            return own + labels + [sel for sel in every if sel not in own]
        if entry.get("ids_first"):
            return every + labels
        return labels + every

    def known_version(self, key: str) -> bool:
        ids = self.table[key]["ids"]
        return bool(self.version) and any(self.version.startswith(v) for v in ids)

    def _id_selector(self, entry: Any) -> Dict[str, Any]:
        """An id ("omm") or an id with more conditions ({"resource_id": "eme", ...})."""
        sel = dict(entry) if isinstance(entry, dict) else {"resource_id": entry}
        sel["resource_id"] = f"{self.package}:id/{sel['resource_id']}"
        return sel

    def sel(self, wanted: Any) -> Any:
        """A step's target or expectation: a key of the table, a selector, a function,
        or a list of keys and selectors (any of them)."""
        if isinstance(wanted, str) and wanted != GONE:
            return {"any_of": self.alternatives(wanted)}
        if isinstance(wanted, (list, tuple)):
            return {"any_of": [alt for item in wanted for alt in (
                self.alternatives(item) if isinstance(item, str) else [item])]}
        return wanted

    def find(self, key: str, tree: Any = None) -> Optional[Any]:
        tree = tree if tree is not None else self.phone.screen()
        return tree.find(any_of=self.alternatives(key))

    def find_all(self, key: str, tree: Any = None) -> List[Any]:
        tree = tree if tree is not None else self.phone.screen()
        return tree.find_all(any_of=self.alternatives(key))

    # -- steps -------------------------------------------------------------------------
    def step(self, name: str, target: Any, expect: Any = None, timeout: float = 15,
             act: Any = None, attempts: int = 4, once: bool = False) -> Any:
        """A closed-loop step (the phone's): act on `target`, confirm `expect`; `once`
        for a tap that must never be made twice (publishing, sending)."""
        with english_rule():
            return self.phone.step(f"{self.script}: {name}", self.sel(target),
                                   expect=self.sel(expect), act=act, timeout=timeout,
                                   attempts=attempts, once=once)

    def tap(self, key: str, step: str, timeout: float = 15, expect: Any = None) -> Any:
        return self.step(step, key, expect, timeout)

    def wait(self, key: str, step: str, timeout: float = 15,
             alternatives: Optional[Sequence[Dict[str, Any]]] = None) -> Any:
        """The step's element once it shows (pop-ups dismissed meanwhile)."""
        return self.phone.wait(timeout=timeout, step=f"{self.script}: {step}",
                               any_of=list(alternatives or self.alternatives(key)))

    def wait_any(self, wanted: Dict[str, Any], step: str, timeout: float = 15
                 ) -> Tuple[str, Any]:
        """Whichever of several elements shows first: (its key, the node)."""
        with english_rule():
            return self.phone.wait_any({key: self.sel(alternatives)
                                        for key, alternatives in wanted.items()},
                                       timeout=timeout, step=f"{self.script}: {step}")

    def any_of(self, *keys: str):
        """An expectation: one of these elements shows."""
        sels = [self.sel(k) for k in keys]

        def shown(tree: Any) -> bool:
            return any(tree.find(**s) is not None for s in sels)
        shown.__doc__ = " or ".join(k if isinstance(k, str) else "the row" for k in keys)
        return shown

    def tap_if_present(self, key: str) -> bool:
        return self.phone.tap_if_present(any_of=self.alternatives(key))

    def type_into(self, key: str, text: str, step: str) -> None:
        """Focus a field, type, and see the text in it (through the phone's Unicode IME
        when it has one). Typed again only when the text did not land (a pop-up took
        the tap on the field)."""
        typed = field_shows(text)

        def focus_and_type(node: Any) -> None:
            self.phone.tap(node)
            self.phone.type_text(text)
        self.step(step, key, expect=typed, act=focus_and_type, attempts=3)

    # -- app lifecycle -------------------------------------------------------------------
    def launch(self, fresh: bool = True) -> None:
        """Start the app afresh (stopped first, so it starts from home), or with
        ``fresh=False`` bring it back as it is (an upload under way goes on). No dump:
        the first step looks for its element with a longer wait while the app starts."""
        if fresh:
            self.phone.stop_app(self.package)
        self.phone.start_app(self.package, LAUNCH_ACTIVITIES.get(self.package))

    def restart(self) -> None:
        """After the app left the screen mid-flow: start it again, on the account."""
        self.launch()
        if self.task.username:
            switch_account(self, self.task.username)

    def recovering(self, what: str, flow: Any, attempts: int = 3) -> Any:
        """Run a flow; when the app closes under it (a crash back to the launcher),
        start the app again and run the flow again from its start. Only for flows that
        are safe to repeat (they check the state they find)."""
        for attempt in range(attempts):
            try:
                return flow()
            except AppLeft as exc:
                if attempt == attempts - 1:
                    raise
                self.task.log(f"{what}: {exc.reason}; starting the app again")
                self.restart()

    def open_url(self, url: str) -> None:
        self.phone.open_url(url, self.package)

    def share(self, remote: Sequence[str], content_type: int, placement: str = "") -> None:
        activity = SHARE_ACTIVITIES["tiktok" if self.platform == "tiktok"
                                    else (self.platform, placement)]
        self.phone.share(self.package, activity, remote,
                         "video/*" if content_type == 0 else "image/*")


@contextlib.contextmanager
def english_rule():
    """A step that found nothing says the rule: labels are English ones."""
    try:
        yield
    except (AccountBlocked, AppLeft):
        raise
    except StepFailed as exc:
        found_nothing = isinstance(exc, ElementNotFound) or "did not show" in exc.reason
        if not found_nothing or not exc.retry or "English" in str(exc):
            raise
        raise StepFailed(exc.step, f"{exc.reason}; where no resource id is known for "
                         "this app version, the app must be in English") from None


def app_package(phone: Any, platform: str, account: Any) -> str:
    """The package to drive: the account's own, else the first installed one."""
    if account is not None and account["platform"] == platform:
        return account["package"]
    installed = set(phone.installed_packages())
    for package in APP_PACKAGES.get(platform, ()):
        if package in installed:
            return package
    raise StepFailed("check the phone", f"{APP_NAMES[platform]} is not installed on "
                     f"{phone.serial} (looked for {', '.join(APP_PACKAGES[platform])})",
                     retry=False)


def open_app(phone: Any, task: Any, default_platform: str = "tiktok", text: str = "",
             launch: bool = True) -> App:
    """Before the task's first step: the phone awake and unlocked, the app installed,
    a keyboard for the text, a language the selectors can read; then the app on the
    task's account. `launch=False` leaves starting the app to a link the script opens
    (unless the task runs as an account, which needs the app's own profile)."""
    script = getattr(task, "script_name", "") or "script"
    account = getattr(task, "account", None)
    platform = account["platform"] if account is not None else \
        task.config.get("platform", default_platform)
    try:
        app = check_phone(phone, task, platform, account, text)
    except StepFailed as exc:               # "post: check the phone: ..."
        raise StepFailed(f"{script}: {exc.step}", exc.reason, retry=exc.retry) from None
    phone.watch(popups=POPUPS[platform], blocks=BLOCKS[platform], package=app.package)
    if launch or task.username:
        app.launch()
    else:
        phone.stop_app(app.package)
    if task.username:
        switch_account(app, task.username)
    return app


def check_phone(phone: Any, task: Any, platform: str, account: Any, text: str) -> App:
    """The pre-task checks, in two round trips: fail fast, without retry, with what is
    missing (the app, a keyboard for the text, a language the selectors can read)."""
    package = app_package(phone, platform, account)
    facts = phone.prepare(package)
    app = App(phone, task, platform, package, facts.get("version", ""))
    locale = facts.get("locale", "")
    if locale and not locale.lower().startswith("en") and not app.known_version("create"):
        raise StepFailed("check the phone", f"the phone's language is {locale} and "
                         f"{app.name} {app.version or '(unknown version)'} has no known "
                         "resource ids: set the phone to English", retry=False)
    phone.check_can_type(text)
    return app


# ---------------------------------------------------------------------------------------
# Accounts
# ---------------------------------------------------------------------------------------

def current_account(app: App) -> str:
    """The handle shown on the own profile (without "@")."""
    node = app.step("open own profile", "profile_tab", expect="own_handle", timeout=30)
    return (node.text.strip() or node.desc.strip()).lstrip("@")


def switch_account(app: App, username: str) -> None:
    """Make `username` the app's current account: own profile -> account list -> its
    row; on TikTok through the name at the top of the profile, else the long way
    (profile menu -> Settings and privacy -> Switch account).

    An account that is not in the list is not logged in on this phone: the task fails
    naming it, without auto-retry, and nothing is done as another account."""
    name = username.lstrip("@")
    current = current_account(app)
    if current.lower() == name.lower():
        app.task.log(f"already on @{name}")
        return
    rows = named_rows(app, "switcher_row", name) + [
        {"text": name, "editable": False}, {"text": "@" + name, "editable": False},
        {"desc": name, "clickable": True}, {"desc": name}]
    open_switcher(app, current, app.any_of("add_account", rows))
    if app.phone.screen().find(any_of=rows) is None:
        raise StepFailed(f"{app.script}: switch account", f"@{name} is not logged in on "
                         f"this phone's {app.name} (not in its account list)", retry=False)
    app.step(f"choose @{name}", rows, expect=app.any_of("home_tab", "profile_tab"))
    now = current_account(app)
    if now.lower() != name.lower():
        raise StepFailed(f"{app.script}: switch account",
                         f"still on @{now} after choosing @{name}", retry=False)
    app.task.log(f"switched to @{name}")


def open_switcher(app: App, current: str, listed: Any) -> None:
    """From the own profile to the list of the accounts logged in on the phone. TikTok:
    the display name in the body (where its id is known for the version) or the name at
    the top; a short way whose tap shows no list gives way to the next, and the long
    way (profile menu -> Settings and privacy -> Switch account) comes last."""
    def name_at_top(tree: Any) -> Any:
        """TikTok: the account's name at the top of its profile, with a chevron."""
        return next((n for n in tree.nodes if n.text.strip().lstrip("@") == current
                     and n.bounds[1] < 400 and not n.class_name.endswith("EditText")), None)
    tree = app.phone.screen()
    if app.platform != "tiktok" or app.find("switcher_open", tree) is not None:
        app.step("open the account switcher", "switcher_open", expect=listed)
        return
    short = [("the display name", "profile_name")] if app.known_version("profile_name") \
        and app.find("profile_name", tree) is not None else []
    short += [("the name at the top", name_at_top)] if name_at_top(tree) is not None else []
    for how, target in short:
        try:
            app.step(f"open the account switcher ({how})", target, expect=listed,
                     attempts=2)
            return
        except (AccountBlocked, AppLeft):
            raise
        except StepFailed as exc:
            app.task.log(f"{app.script}: {how} opened no account list ({exc}); the next way")
            if app.find("own_handle") is None:         # it opened something else
                app.phone.press("back")
    app.step("open the profile menu", "profile_menu", expect="settings")
    app.step("open Settings and privacy", "settings",
             expect=["settings_switch", {"text": "Account"}, {"text": "Privacy"}])
    scroll_to(app, "settings_switch", "find Switch account in the settings")
    app.step("open Switch account", "settings_switch", expect=listed)


def scroll_to(app: App, key: str, step: str, swipes: int = 6) -> None:
    """Swipe up until the element shows (a long list: the element under the fold)."""
    for _ in range(swipes):
        if app.find(key) is not None:
            return
        app.phone.swipe("up")
    app.wait(key, step, timeout=2)


# ---------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------

_SPIN = re.compile(r"\{([^{}]*)\}")


def spintax(text: str, rng: Any) -> str:
    """Resolve `{a|b|c}` (nested too, innermost first) with one random pick each.

    Braces without a "|" are kept as written, so "{}" or "{name}" stay literal."""
    def pick(match: "re.Match") -> str:
        options = match.group(1).split("|")
        return rng.choice(options) if len(options) > 1 else "\x00" + match.group(1) + "\x01"
    previous = None
    while previous != text:
        previous, text = text, _SPIN.sub(pick, text)
    return text.replace("\x00", "{").replace("\x01", "}")


def split_title(caption: str) -> Tuple[str, str]:
    """TikMatrix's "title##description": (title, description); no "##": ("", caption)."""
    if "##" in caption:
        title, description = caption.split("##", 1)
        return title.strip(), description.strip()
    return "", caption.strip()


def split_list(values: Iterable[str], text: str) -> List[str]:
    """A list parameter, or else a newline/comma separated text, cleaned, in order."""
    items = [v for v in (values or []) if isinstance(v, str)]
    if not items:
        items = re.split(r"[\n,]", text or "")
    return list(dict.fromkeys(i.strip() for i in items if i.strip()))


def lines(text: str) -> List[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


EMOJI = ["😀", "😂", "😍", "🔥", "👍", "👏", "🙌", "💯", "✨", "🥰", "😎", "🎉"]


def pick_comment(config: Dict[str, Any], rng: Any, index: int, field: str) -> str:
    """One comment from the candidates: random or the index-th (sequential); spintax
    resolved and an emoji appended when insert_emoji is on."""
    candidates = lines(config.get(field, ""))
    if not candidates:
        raise StepFailed(f"{field}: no comment to write")
    if config.get("comment_order") == "sequential":
        text = candidates[index % len(candidates)]
    else:
        text = rng.choice(candidates)
    text = spintax(text, rng)
    if config.get("insert_emoji"):
        text = f"{text} {rng.choice(EMOJI)}"
    return text


def check_username(field: str, name: str) -> str:
    """A target user name, without "@"; ValueError(field, reason) if it is not one."""
    name = name.strip().lstrip("@")
    if not USERNAME_RE.fullmatch(name):
        raise ValueError(field, f"{name!r} is not a valid user name (letters, digits, "
                                "'.' and '_', at most 64)")
    return name


def field_shows(text: str) -> Any:
    """An expectation: the text's first line shows in a field (as the dump writes it;
    the first 30 characters, which every field shows). None for a text with nothing
    to see (spaces only): nothing to confirm."""
    shown = as_dumped(text.split("\n")[0])[:30].strip()
    if not shown:
        return None

    def typed(tree: Any) -> bool:
        return any(shown in n.text for n in tree.nodes
                   if n.class_name.endswith(("EditText", "TextView")))
    typed.__doc__ = f"the text {shown!r} in the field"
    return typed


# ---------------------------------------------------------------------------------------
# Profiles: open, follow state
# ---------------------------------------------------------------------------------------

def open_profile(app: App, username: str, method: str) -> str:
    """Open a user's profile by link or by the app's search; returns "follow" or
    "following" (the button's state). A missing profile fails clearly, without retry."""
    states = {"follow": "follow", "following": "following", "missing": "profile_missing"}
    if method == "search":
        search_user(app, username)
    else:
        app.open_url(PROFILE_URLS[app.platform].format(username))
    key, _ = app.wait_any(states, f"open the profile of @{username}", timeout=30)
    if key == "missing":
        raise StepFailed(f"{app.script}", f"the profile @{username} does not exist "
                         f"(or is not available) on {app.name}", retry=False)
    return key


def user_rows(app: App, username: str) -> List[Dict[str, Any]]:
    """A search result's row for exactly this user; never the search field, which
    keeps the query after it is submitted."""
    rows = [{"text": username, "editable": False},
            {"text": "@" + username, "editable": False}]
    return named_rows(app, "user_row_name", username) + rows


def named_rows(app: App, key: str, name: str) -> List[Dict[str, Any]]:
    """The row ids a step knows (a list's name field), each with this name as text."""
    return [dict(sel, text=name) for sel in app.alternatives(key) if "resource_id" in sel]


def search_user(app: App, username: str) -> None:
    """Search -> type the name -> the users tab (when the results open on another) ->
    the row whose name is exactly it -> the profile shows."""
    app.step("open search", "search", expect="search_field", timeout=30)
    app.type_into("search_field", username, "type the user name in search")
    app.phone.press("enter")
    rows = user_rows(app, username)
    key, _ = app.wait_any({"user": rows, "missing": "profile_missing",
                           "tab": "users_tab"}, f"search @{username}")
    if key == "tab":                    # results open on "Top" / "For you": the users
        app.step("open the users tab", "users_tab",
                 expect=app.any_of(rows, "profile_missing"))
    key, _ = app.wait_any({"user": rows, "missing": "profile_missing"},
                          f"find @{username} in the search results")
    if key == "missing":
        raise StepFailed(app.script, f"the profile @{username} does not exist",
                         retry=False)
    follow_state = app.any_of("follow", "following")

    def profile_shown(tree: Any) -> bool:
        """The profile, not the results (whose rows have Follow buttons too): the
        field holding the query is gone."""
        return follow_state(tree) and not any(
            n.class_name.endswith("EditText") and username in n.text for n in tree.nodes)
    profile_shown.__doc__ = f"the profile of @{username} (Follow or Following)"
    app.step(f"open @{username} from the results", rows, expect=profile_shown)


def follow_flow(phone: Any, task: Any, want_following: bool) -> Dict[str, Any]:
    """Follow (or unfollow) the task's one target; already in that state: completed
    with {"already": true}. A profile that does not exist fails clearly."""
    name = task.config["target_user"].lstrip("@")
    method = task.config["access_method"]
    app = open_app(phone, task, launch=method == "search")
    task.progress(30, f"opening @{name} ({method})")
    return app.recovering(f"@{name}", lambda: follow_once(app, name, method,
                                                           want_following))


def follow_once(app: App, name: str, method: str, want_following: bool) -> Dict[str, Any]:
    """The follow flow from the app's start: safe to run again (it reads the state)."""
    task = app.task
    state = open_profile(app, name, method)
    if (state == "following") == want_following:
        task.log(f"@{name}: already {'following' if want_following else 'not following'}")
        return {"user": name, "already": True}
    task.progress(70, f"{'follow' if want_following else 'unfollow'} @{name}")
    if want_following:
        app.step(f"tap Follow on @{name}", "follow", expect="following")
        confirm_follow(app, name)
    else:
        app.step(f"tap Following on @{name}", "following",
                 expect=app.any_of("unfollow_confirm", "follow"))
        if app.find("unfollow_confirm") is not None:
            app.step(f"confirm Unfollow of @{name}", "unfollow_confirm", expect="follow")
    return {"user": name, "already": False, "following": want_following}


#: Seconds between the look that sees Following and the look that sees it held. A
#: follow the server refuses shows Following at once (the app does not wait for the
#: reply: "a follow TikTok turns down comes back looking like a success", HUSH) and
#: Follow again when the refusal arrives; enkaku reads the button 2 s after its tap.
#: On Instagram the refusal is its "Action Blocked" dialog, which GramAddict and
#: Insomniac look for right after the follow (docs/research/sources_s6.md).
FOLLOW_SETTLES = 2.0


def confirm_follow(app: App, name: str) -> None:
    """A second look, after a pause, that the follow held: Follow again means the app
    undid it (a soft block): the task fails "account blocked", without auto-retry,
    like a block screen, which this look also catches."""
    app.phone.sleep(FOLLOW_SETTLES)
    app.phone.changed()
    key, _ = app.wait_any({"held": "following", "undone": "follow"},
                          f"see the follow of @{name} hold")
    if key == "undone":
        raise AccountBlocked(f"{app.script}: follow @{name}",
                             f"{app.name} undid the follow of @{name} (the button "
                             "went back to Follow)")


def type_comment(app: App, text: str) -> None:
    """On an open video or post: comments -> type (safe to do again after a crash)."""
    app.step("open the comments", "comments", expect="comment_field", timeout=30)
    app.type_into("comment_field", text, "type the comment")


def send_comment(app: App, text: str) -> None:
    """Send the typed comment, once, and see it in the list: the send is tapped again
    only where it plainly went nowhere, and a failure after it is not auto-retried (a
    retry could comment twice)."""
    shown = as_dumped(text)
    app.step("send the comment", "comment_send", once=True,
             expect=[{"text": shown, "editable": False},
                     {"text_contains": shown[:60], "editable": False}])


def write_comment(app: App, text: str) -> None:
    type_comment(app, text)
    send_comment(app, text)


def open_topic(app: App, topic: str) -> None:
    """account_warmup: search the topic and open its first video."""
    app.step("open search", "search", expect="search_field", timeout=30)
    app.type_into("search_field", topic, "type the topic")
    app.phone.press("enter")
    app.step(f"open the first video for {topic!r}",
             [{"desc_contains": "video by"}, {"desc_contains": "Reel by"}], expect="video")


# ---------------------------------------------------------------------------------------
# Galleries: the newest media, selected (post, comment)
# ---------------------------------------------------------------------------------------

#: Seconds the screen after Next may take when the item and Next were tapped at once.
NEXT_SHOWS = 5


def pick_in_gallery(app: App, key: str, count: int, step: str, *, then: Tuple[str, Any],
                    first: Optional[str] = None, at_once: bool = True) -> None:
    """Select the newest `count` items (the first cells, where the pushed files are),
    then tap Next: `then` is (the Next key, what shows after it).

    The cells are tapped in order and one look confirms them all (their badges or the
    Next button's count). If it does not, a pop-up or a lost tap got in the way: what
    was selected is unselected and each item is selected with its own closed-loop step,
    so the order stays the gallery's. `first`: a key tapped before the cells on the
    same look (a multi-select switch that moves nothing).

    One item on a gallery where nothing shows selected: Next is tapped on the same look
    and one look confirms both, a dump less. It cannot post the wrong media: had the
    item's tap been lost, nothing would be selected and Next does nothing (the gallery
    still shows, and the careful way takes over). That holds for the galleries seen in
    real dumps; `at_once=False` confirms the selection first where none was seen."""
    next_key, after = then

    def left(tree: Any) -> Optional[bool]:
        """The next screen shows and the gallery's cells are gone (the gallery's own
        Next reads "Next" like the editor's while nothing is selected)."""
        shown = after(tree) if callable(after) else app.find(after, tree) is not None
        return True if shown and app.find(key, tree) is None else None     # None: not yet
    left.__doc__ = f"the gallery gone and {getattr(after, '__doc__', None) or after}"
    app.wait(key, step)
    tree = app.phone.screen()
    cells = app.find_all(key, tree)
    if first is not None and app.find(first, tree) is not None:
        app.phone.tap(app.find(first, tree))
    if len(cells) < count:
        raise StepFailed(f"{app.script}: {step}",
                         f"{len(cells)} item(s) in the gallery, {count} needed")
    button = app.find(next_key, tree)
    at_once = at_once and count == 1 and button is not None and \
        not any(shows_selected(node) for node in cells)
    for node in cells[:count]:
        app.phone.tap(node)
    if at_once:
        app.phone.tap(button)
        app.phone.changed()
        try:                                       # normally the first look shows it
            app.wait_any({"next": left}, f"{step} and Next", timeout=NEXT_SHOWS)
            return
        except (AccountBlocked, AppLeft):
            raise
        except StepFailed:
            app.task.log(f"{step}: Next showed nothing new; selecting with a look")
    if app.wait_any({"next": left, "gallery": key}, step)[0] == "next":
        return                                     # a slow screen came after all
    tree = app.phone.screen()
    if not all_selected(app, key, tree, count):
        select_one_by_one(app, key, count, step, tree)
    app.step("gallery: Next", next_key, expect=left)


def select_one_by_one(app: App, key: str, count: int, step: str, tree: Any) -> None:
    """The careful way: unselect what shows selected, then each item in its own step."""
    app.task.log(f"{step}: the selection did not show; selecting one by one")
    for index, node in enumerate(app.find_all(key, tree)):
        if shows_selected(node):
            app.step(f"{step}: unselect item {index + 1}",
                     lambda t, i=index: cell(app, key, t, i),
                     expect=lambda t, i=index: not shows_selected(cell(app, key, t, i)))
    for index in range(count):
        app.step(f"{step} ({index + 1} of {count})", lambda t, i=index: cell(app, key, t, i),
                 expect=lambda t, i=index: is_selected(app, key, t, i))


def cell(app: App, key: str, tree: Any, index: int) -> Any:
    cells = app.find_all(key, tree)
    return cells[index] if len(cells) > index else None


def shows_selected(node: Any) -> bool:
    return node is not None and (node.selected or node.text.strip().isdigit())


def is_selected(app: App, key: str, tree: Any, index: int) -> bool:
    """The item shows selected: its own flag or its number in the badge."""
    node = cell(app, key, tree, index)
    return node is not None and (node.selected or node.text.strip() == str(index + 1))


def all_selected(app: App, key: str, tree: Any, count: int) -> bool:
    """All `count` first items show selected, or the Next button counts them."""
    if all(is_selected(app, key, tree, i) for i in range(count)):
        return True
    return count > 1 and tree.find(text_regex=rf".*\({count}\)") is not None and \
        all(shows_selected(cell(app, key, tree, i)) for i in range(count))


# ---------------------------------------------------------------------------------------
# Waiting for an upload
# ---------------------------------------------------------------------------------------

#: Seconds between looks at an upload whose pace does not show (Instagram's banner has
#: no percent): an upload takes seconds, and every look costs the phone a dump.
UPLOAD_BACKOFF = (2.0, 3.0, 5.0, 8.0)
#: Seconds after the publishing tap by which the apps are taken to show an upload's
#: progress. Before it a look at the bare feed proves nothing: the app may still be
#: preparing the media (compressing a long video) with nothing on screen, and it reads
#: the pushed files meanwhile. No public source measures that delay (docs/research/
#: sources_s6.md); the public bots that watch uploads never take a bare screen this
#: early for the end. 12 s is six times the 2 s the old rule trusted, leaves the default
#: upload_wait_time (30 s) 18 s for the upload itself, and costs an upload over before
#: the first look three more dumps than before (2, 3 then 7 s apart).
UPLOAD_SHOWS_WITHIN = 12.0


def wait_upload(app: App, seconds: float, tapped_at: Optional[float] = None) -> None:
    """Wait until the upload finishes: "posted"/"successfully" shows, or the progress
    that was showing goes away, on a screen of the app. Fails after `seconds` with the
    last progress seen. If the app leaves the screen meanwhile it is brought back once,
    not stopped: the apps go on with a pending upload and show its end. No failure
    here is auto-retried: the post may be out.

    Where the app shows a percent (TikTok), the next look is when the upload should end
    at the pace seen since the publishing tap (`tapped_at`, monotonic), so a steady
    upload takes two looks; without one, looks back off from 2 to 8 s. Looks that show
    neither progress nor its end (the feed or profile: "bare") count as an upload over
    before the first look only when there are two and the later one is at least
    UPLOAD_SHOWS_WITHIN s after the tap (or `seconds`, the whole wait the user allows,
    if shorter); the look due after that moment is pulled to it."""
    seen = {"progress": False, "last": "", "bare": 0}
    readings = [(tapped_at, 0)] if tapped_at is not None else []
    deadline = time.monotonic() + seconds
    proof_at = (time.monotonic() if tapped_at is None else tapped_at) + \
        min(UPLOAD_SHOWS_WITHIN, seconds)

    def finished(tree: Any) -> bool:
        if app.find("posted", tree) is not None:
            return True
        progress = app.find("upload_progress", tree)
        if progress is not None:
            seen.update(progress=True, last=progress.text)
            percent = re.search(r"(\d{1,3})\s?%", progress.text)
            if percent:
                readings.append((time.monotonic(), int(percent.group(1))))
            app.task.progress(90, f"uploading {progress.text}")
            return False
        if tree.find(package=app.package) is None:
            return False         # the launcher a crash fell back to has no progress either
        return seen["progress"] or bare_look(app, tree, seen, proof_at)
    looked: Optional[StepFailed] = None
    for attempt in range(2):
        try:
            app.phone.wait_until(finished, max(1.0, deadline - time.monotonic()),
                                 f"{app.script}: wait for the upload",
                                 pauses=lambda looks: upload_pause(readings, looks,
                                                                   proof_at))
            return
        except (AccountBlocked, AppLeft) as exc:
            if not isinstance(exc, AppLeft):
                raise
            if attempt:
                raise StepFailed(app.script, f"{exc.reason} again while uploading: the "
                                 f"post may still be published, so it is not repeated",
                                 retry=False) from None
            app.task.log(f"{app.script}: {exc.reason}; bringing the app back to see "
                         "the upload finish")
            app.launch(fresh=False)          # not stopped: it may still be uploading
        except StepFailed as exc:
            looked = exc
            break
    # the publishing tap took effect: the app may still publish the post, and a retry
    # would post it twice
    why = f"did not finish within {seconds:g} s (upload_wait_time" \
        if looked is None or time.monotonic() >= deadline \
        else f"could not be followed ({looked.reason}"
    raise StepFailed(app.script, f"the upload {why}; last progress "
                     f"{seen['last'] or 'none seen'}); the post may still be published, so "
                     "it is not repeated", retry=False)


@contextlib.contextmanager
def done_once(app: App, what: str) -> Iterator[None]:
    """Past a tap that must be done once (a post's publishing): whatever fails from
    here on is not auto-retried, a lost phone included; the task cannot tell whether
    the tap took effect, and a retry would do it twice."""
    try:
        yield
    except Exception as exc:
        if getattr(exc, "retry", True) is not False:
            app.task.log(f"{app.script}: not retried: {what}")
            exc.retry = False
        raise


def bare_look(app: App, tree: Any, seen: Dict[str, Any], proof_at: float) -> bool:
    """A look at the app's feed or profile with nothing of the upload (not another
    screen, which proves nothing): True when it ends the wait, the second such look at
    least at `proof_at`."""
    if not app.any_of("home_tab", "profile_tab")(tree):
        return False
    seen["bare"] += 1
    if seen["bare"] < 2 or time.monotonic() < proof_at:
        return False
    app.task.log(f"{app.script}: no upload progress showed in the "
                 f"{seen['bare']} looks after the publishing tap: the upload ended "
                 "before the first look")
    return True


#: The longest wait between two looks at an upload whose pace shows: the pace measured
#: from the tap counts the app's own preparing, so it can quicken; a look this late at
#: most (half the default upload_wait_time) keeps the end seen soon enough.
UPLOAD_LOOK_AT_MOST = 15.0


def upload_pause(readings: Sequence[Tuple[float, int]], looks: int,
                 proof_at: Optional[float] = None) -> float:
    """Seconds to the next look at an upload: a little after the end the pace of the
    last two (time, percent) readings points to, at most UPLOAD_LOOK_AT_MOST ahead;
    UPLOAD_BACKOFF while no pace shows, a look due after `proof_at` (monotonic: from
    then a bare look proves the upload over) pulled to it, never sooner than the first
    back-off step."""
    if len(readings) >= 2:
        (then, before), (now, percent) = readings[-2:]
        if percent > before and now > then:
            left = (100 - percent) * (now - then) / (percent - before)
            return min(UPLOAD_LOOK_AT_MOST, max(0.25, left * 1.1 + 0.2))
    pause = UPLOAD_BACKOFF[min(looks, len(UPLOAD_BACKOFF) - 1)]
    until = proof_at - time.monotonic() if proof_at is not None else 0.0
    return min(pause, max(until, UPLOAD_BACKOFF[0])) if until > 0 else pause


# ---------------------------------------------------------------------------------------
# Media on the box
# ---------------------------------------------------------------------------------------

VIDEO_EXT = {".mp4", ".mov", ".m4v", ".3gp", ".webm", ".mkv"}
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".webp", ".heic", ".bmp", ".gif"}
USED_LEDGER = ".tmlite_used"
_ledger_lock = threading.Lock()


def media_files(folder: Path, content_type: int) -> List[Path]:
    wanted = VIDEO_EXT if content_type == 0 else IMAGE_EXT
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in wanted)


def material_folder(config: Dict[str, Any], username: Optional[str]) -> Path:
    """The account's own `@username` subfolder when it exists, else the root."""
    root = Path(config["material_path"]).expanduser()
    if username:
        own = root / ("@" + username.lstrip("@"))
        if own.is_dir():
            return own
    return root


def claim_media(folder: Path, content_type: int, count: int, task: Any = None) -> List[Path]:
    """Pick `count` files not used by an earlier task and mark them used at once, so two
    phones posting from one folder at the same time never take the same file.

    The ledger is the server's database (task.claim_media); without a task (a script run
    by hand) it is a hidden file in the folder, one used file name per line."""
    kind = "video" if content_type == 0 else "image"
    files = media_files(folder, content_type)
    if task is not None and hasattr(task, "claim_media"):
        chosen = [Path(p) for p in task.claim_media(files, count)]
    else:
        with _ledger_lock:
            ledger = folder / USED_LEDGER
            used = set(ledger.read_text("utf-8").splitlines()) if ledger.exists() else set()
            chosen = [p for p in files if p.name not in used][:count]
            if len(chosen) == count:
                with open(ledger, "a", encoding="utf-8") as out:
                    out.writelines(p.name + "\n" for p in chosen)
    if len(chosen) < count:
        raise StepFailed("post", f"{folder} has {len(chosen)} unused {kind} file(s), "
                         f"{count} needed (files already posted are not used again)",
                         retry=False)
    return chosen


# ---------------------------------------------------------------------------------------
# Flows shared by several scripts
# ---------------------------------------------------------------------------------------

#: Parameters of follow and unfollow (TikMatrix's names and defaults).
TARGET_USER_PARAMS = {
    "target_users": {"type": "list", "default": [], "items": "str", "max_items": 1000},
    "target_user": {"type": "str", "default": "", "max_length": 100_000,
                    "description": "names separated by newlines or commas"},
    "target_username": {"type": ["str", "list"], "items": "str", "max_items": 1000,
                        "max_length": 100_000,
                        "description": "older spelling (TikMatrix's API Examples page): a "
                                       "name, names separated by newlines or commas, or a "
                                       "list; used when target_users and target_user are "
                                       "empty"},
    "access_method": {"type": "str", "default": "direct", "choices": ["direct", "search"]},
    "platform": {"type": "str", "default": "tiktok", "choices": ["tiktok", "instagram"],
                 "description": "Lite: the app when the task has no account"},
}


def expand_targets(config: Dict[str, Any]) -> List[Dict[str, Any]]:
    """follow/unfollow: one config per target user (names checked, "@" dropped).

    The targets are the first non-empty of target_users, target_user and target_username
    (the spelling of TikMatrix's API Examples page); each task's config names its one
    target under all three."""
    for field in ("target_users", "target_user", "target_username"):
        value = config.get(field)
        names = split_list(value, "") if isinstance(value, list) else \
            split_list([], value or "")
        if names:
            break
    if not names:
        raise ValueError("target_users", "give at least one target user (target_users, "
                                         "or target_user with names separated by newlines "
                                         "or commas, or target_username)")
    unique: Dict[str, str] = {}          # @NASA and nasa are one account, as in the apps
    for name in (check_username(field, n) for n in names):
        unique.setdefault(name.lower(), name)
    return [dict(config, target_users=[n], target_user=n, target_username=n)
            for n in unique.values()]


