"""Shared pieces of the TikTok / Instagram scripts: selectors, flows, text helpers.

Not a script (the name starts with "_"): the server puts the scripts folder on sys.path and
the scripts `import _common`.

Why a selector is a list of alternatives, tried in order
    TikTok's resource ids are short obfuscated names ("omm", "l34") that change with every
    release, and the same short name can mean another element in another release. So each
    step names the ids known for each app version (taken from real window dumps, see
    tests/fixtures/ui/SOURCES.md), then the English text or content-desc. When the app's
    version is known only that version's ids are tried, before the English labels; when
    it is not, the English labels come first and the ids of every known version after.
    The first alternative that matches wins (not the first node in document order), so a
    stale id cannot shadow a correct label. The app must be in English, and a step that
    finds nothing says so.

Waiting is the phone's: ``phone.wait`` / ``phone.wait_any`` take the alternatives as
``any_of`` (tried in order), dismiss pop-ups meanwhile, and fail with the step's name,
what was looked for and the English rule; the runner then saves a screenshot and the
last UI dump.
"""

import re
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

# ---------------------------------------------------------------------------------------
# Selectors per app and step
# ---------------------------------------------------------------------------------------
# Each entry: "ids": {app version: [resource ids]}, "labels": [selector dicts on English
# text / content-desc]. Versions: 47.0.3, 43.1.4, 46.9.3, 46.6.3 from the real dumps.

TIKTOK: Dict[str, Dict[str, Any]] = {
    "home_tab": {"ids": {"47.0.3": ["omq"], "43.1.4": ["mkq"], "46.9.3": ["olw"],
                         "46.6.3": ["ofc"]},
                 "labels": [{"desc": "Home"}]},
    "profile_tab": {"ids": {"47.0.3": ["oms"], "43.1.4": ["mks"], "46.9.3": ["oly"],
                            "46.6.3": ["ofe"]},
                    "labels": [{"desc": "Profile"}]},
    "create": {"ids": {"47.0.3": ["omm"], "43.1.4": ["mkn"], "46.9.3": ["ols"],
                       "46.6.3": ["of9"]},
               "labels": [{"desc": "Create"}]},
    "search": {"ids": {"47.0.3": ["k_8"], "46.9.3": ["k9z"], "46.6.3": ["map"]},
               "labels": [{"desc": "Search", "clickable": True}]},
    "upload": {"ids": {"47.0.3": ["upload_hot_area"]},
               "labels": [{"text": "Upload"}, {"desc": "Upload"}]},
    "gallery_select": {"ids": {"47.0.3": ["l34"]}, "labels": []},
    "gallery_photos_tab": {"ids": {}, "labels": [{"desc": "Photos"}, {"text": "Photos"}]},
    "gallery_next": {"ids": {"47.0.3": ["xyk"]},
                     "labels": [{"text_regex": r"Next( \(\d+\))?"}]},
    "editor_next": {"ids": {"47.0.3": ["q05"]}, "labels": [{"text": "Next"}]},
    "caption": {"ids": {"47.0.3": ["h8e"]},
                "labels": [{"class_name": "android.widget.EditText",
                            "text_contains": "description"},
                           {"class_name": "android.widget.EditText"}]},
    "title": {"ids": {}, "labels": [{"class_name": "android.widget.EditText",
                                     "text_contains": "title"}]},
    "post": {"ids": {"47.0.3": ["tiq"]}, "labels": [{"text": "Post"}]},
    "publish_now": {"ids": {}, "labels": [{"text": "Publish now"}, {"text": "Post now"}]},
    "upload_progress": {"ids": {"47.0.3": ["tvProgress"], "46.6.3": ["tvProgress"]},
                        "labels": [{"text_regex": r"\d{1,3}%"}]},
    "posted": {"ids": {}, "labels": [{"text_contains": "posted"},
                                     {"text_contains": "successfully"}]},
    "use_sound": {"ids": {}, "labels": [{"text": "Use sound"}, {"desc": "Use sound"},
                                        {"text": "Use this sound"}]},
    # Follow: one id serves "Follow", "Following" and "Message" (43.1.4 "eme", 47.0.3
    # "fmp"), so an id alone cannot tell the state: id and label together. "Following" is
    # also the label of the followings count, so alone it would match the wrong node:
    # the ids come first there, and the label fallbacks are the unambiguous ones.
    "follow": {"ids": {"43.1.4": [{"resource_id": "eme", "text_regex": "Follow( back)?"}],
                       "47.0.3": [{"resource_id": "fmp", "text_regex": "Follow( back)?"}]},
               "labels": [{"text": "Follow"}, {"text": "Follow back"}]},
    "following": {"ids_first": True,
                  "ids": {"43.1.4": [{"resource_id": "eme", "text_regex": "Following|Friends"}],
                          "47.0.3": [{"resource_id": "fmp",
                                      "text_regex": "Following|Friends"}]},
                  "labels": [{"text": "Friends"}, {"text": "Requested"}]},
    "unfollow_confirm": {"ids": {}, "labels": [{"text": "Unfollow"}]},
    "profile_missing": {"ids": {}, "labels": [
        {"text_contains": "Couldn't find this account"},
        {"text_contains": "account doesn't exist"},
        {"text_contains": "account isn't available"},
        {"text_contains": "This account is banned"},
        {"text_contains": "No results found"}]},
    "own_handle": {"ids": {"43.1.4": ["qh5"], "47.0.3": ["t3y"]},
                   "labels": [{"text_regex": r"@[\w.]+"}]},
    "switch_account": {"ids": {}, "labels": [{"desc": "Switch account"},
                                             {"text": "Switch account"}]},
    "search_field": {"ids": {}, "labels": [{"class_name": "android.widget.EditText"}]},
    "users_tab": {"ids": {}, "labels": [{"text": "Users"}, {"desc": "Users"},
                                        {"text": "Accounts"}]},
    "like": {"ids": {}, "labels": [{"desc_contains": "Like video"}, {"desc": "Like"}]},
    "feed_follow": {"ids": {"46.9.3": ["ivc"]}, "labels": [{"desc_contains": "Follow "}]},
    "collect": {"ids": {"46.9.3": ["i74"]},
                "labels": [{"desc_contains": "from Favorites"}]},
    "comments": {"ids": {"46.9.3": ["eor"]},
                 "labels": [{"desc_contains": "Read or add comments"}]},
    "comment_field": {"ids": {}, "labels": [{"class_name": "android.widget.EditText"}]},
    "comment_send": {"ids": {}, "labels": [{"desc": "Post comment"}, {"text": "Post"},
                                           {"desc": "Send"}]},
    "video": {"ids": {"47.0.3": ["long_press_layout"], "46.9.3": ["long_press_layout"]},
              "labels": [{"desc": "Video"}]},
}

INSTAGRAM: Dict[str, Dict[str, Any]] = {
    "home_tab": {"ids": {"410": ["feed_tab"]}, "labels": [{"desc": "Home"}]},
    "profile_tab": {"ids": {"410": ["profile_tab"]}, "labels": [{"desc": "Profile"}]},
    "create": {"ids": {"410": ["creation_tab"]}, "labels": [{"desc": "Create"}]},
    "search": {"ids": {"410": ["search_tab"]},
               "labels": [{"desc": "Search and explore"}, {"desc": "Search"}]},
    "tab_reel": {"ids": {"410": ["cam_dest_clips"]}, "labels": [{"text": "REEL"}]},
    "tab_story": {"ids": {"410": ["cam_dest_story"]}, "labels": [{"text": "STORY"}]},
    "tab_post": {"ids": {"410": ["cam_dest_feed"]}, "labels": [{"text": "POST"}]},
    "gallery_item": {"ids": {"410": ["gallery_grid_item_thumbnail"]}, "labels": []},
    "gallery_multi": {"ids": {"410": ["multi_select_slide_button_alt"]},
                      "labels": [{"desc": "Select multiple button"}]},
    "gallery_next": {"ids": {"410": ["next_button_textview"]}, "labels": [{"text": "Next"}]},
    "editor_next": {"ids": {"410": ["clips_right_action_button"]},
                    "labels": [{"desc": "Next"}]},
    "nux_continue": {"ids": {"410": ["clips_download_privacy_nux_button"]},
                     "labels": [{"desc": "Continue"}]},
    "caption": {"ids": {"410": ["caption_input_text_view"]},
                "labels": [{"text_contains": "Write a caption"}]},
    "share": {"ids": {"410": ["share_button"]}, "labels": [{"desc": "Share"}]},
    "story_share": {"ids": {}, "labels": [{"desc": "Your story"}, {"text": "Your story"}]},
    "upload_progress": {"ids": {}, "labels": [{"text_contains": "Sharing"},
                                              {"text_contains": "Posting"}]},
    "posted": {"ids": {}, "labels": [{"text_contains": "shared"},
                                     {"text_contains": "posted"}]},
    "use_sound": {"ids": {}, "labels": [{"text": "Use audio"}, {"desc": "Use audio"}]},
    "follow": {"ids": {}, "labels": [{"resource_id": "profile_header_follow_button",
                                      "text": "Follow"},
                                     {"resource_id": "profile_header_follow_button",
                                      "text": "Follow Back"},
                                     {"text": "Follow"}]},
    "following": {"ids": {}, "labels": [{"resource_id": "profile_header_follow_button",
                                         "text": "Following"},
                                        {"resource_id": "profile_header_follow_button",
                                         "text": "Requested"},
                                        {"text": "Following"}]},
    "unfollow_confirm": {"ids": {"410": ["follow_sheet_unfollow_row"]},
                         "labels": [{"text": "Unfollow"}]},
    "profile_missing": {"ids": {}, "labels": [
        {"text_contains": "this page isn't available"},
        {"text_contains": "User not found"},
        {"text_contains": "No results found"}]},
    "own_handle": {"ids": {"410": ["action_bar_title"]}, "labels": []},
    "switch_account": {"ids": {"410": ["action_bar_title_chevron"]},
                       "labels": [{"desc": "Switch account"}]},
    "search_field": {"ids": {"410": ["action_bar_search_edit_text"]},
                     "labels": [{"class_name": "android.widget.EditText"}]},
    "users_tab": {"ids": {}, "labels": [{"text": "Accounts"}]},
    "user_row_name": {"ids": {"410": ["row_search_user_username"]}, "labels": []},
    "like": {"ids": {"410": ["row_feed_button_like"]}, "labels": [{"desc": "Like"}]},
    "feed_follow": {"ids": {}, "labels": [{"text": "Follow"}]},
    "collect": {"ids": {"410": ["row_feed_button_save"]},
                "labels": [{"desc": "Add to Saved"}, {"desc": "Save"}]},
    "comments": {"ids": {"410": ["row_feed_button_comment"]}, "labels": [{"desc": "Comment"}]},
    "comment_field": {"ids": {"410": ["layout_comment_thread_edittext"]},
                      "labels": [{"class_name": "android.widget.EditText"}]},
    "comment_send": {"ids": {"410": ["layout_comment_thread_post_button_click_area"]},
                     "labels": [{"text": "Post"}, {"desc": "Post"}]},
    "video": {"ids": {}, "labels": [{"desc_contains": "Video"}]},
}

SELECTORS = {"tiktok": TIKTOK, "instagram": INSTAGRAM}

#: Where a profile lives on the web; the apps open these links themselves.
PROFILE_URLS = {"tiktok": "https://www.tiktok.com/@{}",
                "instagram": "https://www.instagram.com/{}/"}

USERNAME_RE = re.compile(r"[A-Za-z0-9._]{1,64}")


# ---------------------------------------------------------------------------------------
# The app being driven
# ---------------------------------------------------------------------------------------

from tikmatrix_lite import StepFailed  # noqa: E402  (the runner's; retry=False: no auto-retry)


class App:
    """One app on one phone, driven for one task: the phone, the task, the platform,
    the package, its version (when the phone says) and the selectors for it.

    Every wait names its step, so a failure reads "post: tap Create: not found ...".
    """

    def __init__(self, phone: Any, task: Any, platform: str, package: Optional[str] = None):
        self.phone, self.task, self.platform = phone, task, platform
        self.package = package or phone.app_package(platform)
        self.version = app_version(phone, self.package)
        self.table = SELECTORS[platform]
        self.script = getattr(task, "script_name", "") or "script"

    # -- selectors ---------------------------------------------------------------------
    def alternatives(self, key: str) -> List[Dict[str, Any]]:
        """The selectors of a step, in the order they are tried (see the module doc)."""
        entry = self.table[key]
        ids = entry["ids"]
        if self.version and any(self.version.startswith(v) for v in ids):
            id_list = next(ids[v] for v in ids if self.version.startswith(v))
            return [self._id_selector(i) for i in id_list] + list(entry["labels"])
        every = [self._id_selector(i) for v in ids.values() for i in v]
        every = [sel for n, sel in enumerate(every) if sel not in every[:n]]
        if entry.get("ids_first"):
            return every + list(entry["labels"])
        return list(entry["labels"]) + every

    def _id_selector(self, entry: Any) -> Dict[str, Any]:
        """An id ("omm") or an id with more conditions ({"resource_id": "eme", ...})."""
        sel = dict(entry) if isinstance(entry, dict) else {"resource_id": entry}
        sel["resource_id"] = f"{self.package}:id/{sel['resource_id']}"
        return sel

    def find(self, key: str, tree: Any = None) -> Optional[Any]:
        tree = tree if tree is not None else self.phone.dump()
        return tree.find(any_of=self.alternatives(key))

    def find_all(self, key: str, tree: Any = None) -> List[Any]:
        tree = tree if tree is not None else self.phone.dump()
        return tree.find_all(any_of=self.alternatives(key))

    def wait(self, key: str, step: str, timeout: float = 15,
             alternatives: Optional[Sequence[Dict[str, Any]]] = None) -> Any:
        """The step's element once it shows (pop-ups dismissed meanwhile)."""
        return self.phone.wait(timeout=timeout, step=f"{self.script}: {step}",
                               any_of=list(alternatives or self.alternatives(key)))

    def wait_any(self, wanted: Dict[str, Sequence[Dict[str, Any]]], step: str,
                 timeout: float = 15) -> Tuple[str, Any]:
        """Whichever of several elements shows first: (its key, the node)."""
        return self.phone.wait_any({key: {"any_of": list(alternatives)}
                                    for key, alternatives in wanted.items()},
                                   timeout=timeout, step=f"{self.script}: {step}")

    def tap(self, key: str, step: str, timeout: float = 15) -> Any:
        node = self.wait(key, step, timeout)
        self.phone.tap(node)
        return node

    def tap_if_present(self, key: str, tree: Any = None) -> bool:
        tree = tree if tree is not None else self.phone.dump()
        if self.phone.dismiss_popup(tree):
            tree = self.phone.dump()
        node = self.find(key, tree)
        if node is not None:
            self.phone.tap(node)
        return node is not None

    def type_into(self, key: str, text: str, step: str) -> None:
        """Focus a field and type, through the phone's Unicode IME when it has one."""
        self.tap(key, step)
        try:
            self.phone.type_text(text)
        except RuntimeError as exc:
            raise StepFailed(f"{self.script}: {step}: {exc}") from None

    # -- app lifecycle -------------------------------------------------------------------
    def launch(self, fresh: bool = True) -> None:
        """Start the app on its home screen (stopped first so it starts from home)."""
        if fresh:
            self.phone.stop_app(self.package)
        self.phone.start_app(self.package)
        self.wait("home_tab", "open the app", timeout=30)

    def open_url(self, url: str) -> None:
        self.phone.open_url(url, self.package)


def app_version(phone: Any, package: str) -> str:
    """versionName from `dumpsys package`, or "" when the phone does not say."""
    try:
        out = phone.shell(["dumpsys", "package", package])
    except Exception:
        return ""
    match = re.search(r"versionName=([\w.]+)", out)
    return match.group(1) if match else ""


def open_app(phone: Any, task: Any, default_platform: str = "tiktok") -> App:
    """The app this task drives: the account's platform and package when the task runs
    as an account, else the platform in the config; then on the right account."""
    account = getattr(phone, "account", None)
    platform = account["platform"] if account is not None else \
        task.config.get("platform", default_platform)
    app = App(phone, task, platform)
    app.launch()
    if task.username:
        switch_account(app, task.username)
    return app


# ---------------------------------------------------------------------------------------
# Accounts
# ---------------------------------------------------------------------------------------

def current_account(app: App) -> str:
    """The handle shown on the own profile (without "@")."""
    app.tap("profile_tab", "open own profile")
    node = app.wait("own_handle", "read the current account")
    return node.text.strip().lstrip("@") or node.desc.strip().lstrip("@")


def switch_account(app: App, username: str) -> None:
    """Make `username` the app's current account: profile -> account switcher -> row.

    Fails clearly when the account is not logged in on this phone (no row for it)."""
    username = username.lstrip("@")
    if current_account(app).lower() == username.lower():
        app.task.log(f"already on @{username}")
        return
    app.tap("switch_account", "open the account switcher")
    rows = [{"text": username}, {"text": "@" + username}, {"desc": username}]
    key, node = app.wait_any({"row": rows, "sheet": [{"text": "Add account"},
                                                     {"desc": "Add account"}]},
                             "find the account in the switcher", timeout=10)
    if key != "row":
        raise StepFailed(f"{app.script}: switch account: @{username} is not logged in "
                         f"on this phone's {app.platform} app (not in the account switcher)")
    app.phone.tap(node)
    app.wait("home_tab", "back home after switching", timeout=20)
    now = current_account(app)
    if now.lower() != username.lower():
        raise StepFailed(f"{app.script}: switch account: still on @{now} after choosing "
                         f"@{username}")
    app.task.log(f"switched to @{username}")
    app.tap("home_tab", "back to home")


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


def as_dumped(text: str) -> str:
    """Text as uiautomator writes it: characters outside the BMP become two dots."""
    return "".join(".." if ord(c) > 0xFFFF else c for c in text)


def check_username(field: str, name: str) -> str:
    """A target user name, without "@"; ValueError(field, reason) if it is not one."""
    name = name.strip().lstrip("@")
    if not USERNAME_RE.fullmatch(name):
        raise ValueError(field, f"{name!r} is not a valid user name (letters, digits, "
                                "'.' and '_', at most 64)")
    return name


# ---------------------------------------------------------------------------------------
# Profiles: open, follow state
# ---------------------------------------------------------------------------------------

def open_profile(app: App, username: str, method: str) -> str:
    """Open a user's profile by link or by the app's search; returns "follow" or
    "following" (the button's state). A missing profile fails clearly."""
    if method == "search":
        search_user(app, username)
    else:
        app.open_url(PROFILE_URLS[app.platform].format(username))
    key, _ = app.wait_any({"follow": app.alternatives("follow"),
                           "following": app.alternatives("following"),
                           "missing": app.alternatives("profile_missing")},
                          f"open the profile of @{username}", timeout=20)
    if key == "missing":
        raise StepFailed(f"{app.script}: the profile @{username} does not exist "
                         f"(or is not available) on {app.platform}")
    return key


def search_user(app: App, username: str) -> None:
    """Search -> type the name -> Users tab -> the row whose name is exactly it."""
    app.tap("search", "open search")
    app.type_into("search_field", username, "type the user name in search")
    app.phone.press("enter")
    if app.platform == "tiktok":
        app.tap("users_tab", "open the Users tab")
    rows = [{"text": username}, {"text": "@" + username}]
    if app.platform == "instagram":
        rows = [{"resource_id": "row_search_user_username", "text": username}] + rows
    key, node = app.wait_any({"user": rows, "missing": app.alternatives("profile_missing")},
                             f"find @{username} in the search results", timeout=15)
    if key == "missing":
        raise StepFailed(f"{app.script}: the profile @{username} does not exist")
    app.phone.tap(node)


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
        raise StepFailed(f"post: {folder} has {len(chosen)} unused {kind} file(s), "
                         f"{count} needed (files already posted are not used again)")
    return chosen


# ---------------------------------------------------------------------------------------
# Waiting for an upload
# ---------------------------------------------------------------------------------------

def wait_upload(app: App, seconds: float) -> None:
    """Wait until the upload finishes: "posted"/"successfully" shows, or the progress
    that was showing goes away. Fails after `seconds` with the last progress seen."""
    deadline = time.monotonic() + seconds
    seen_progress, last = False, ""
    while True:
        tree = app.phone.dump()
        if app.find("posted", tree) is not None:
            return
        progress = app.find("upload_progress", tree)
        if progress is not None:
            seen_progress, last = True, progress.text
            app.task.progress(90, f"uploading {last}")
        elif seen_progress:
            return
        else:
            app.phone.dismiss_popup(tree)
        if time.monotonic() >= deadline:
            raise StepFailed(f"{app.script}: the upload did not finish within "
                             f"{seconds:g} s (upload_wait_time; last progress "
                             f"{last or 'none seen'})")
        app.phone.sleep(0.5)


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


def follow_flow(phone: Any, task: Any, want_following: bool) -> Dict[str, Any]:
    """Follow (or unfollow) the task's one target; already in that state: completed
    with {"already": true}. A profile that does not exist fails clearly."""
    name = task.config["target_user"].lstrip("@")
    verb = "follow" if want_following else "unfollow"
    app = open_app(phone, task)
    task.progress(30, f"opening @{name} ({task.config['access_method']})")
    state = open_profile(app, name, task.config["access_method"])
    if (state == "following") == want_following:
        task.log(f"@{name}: already {'following' if want_following else 'not following'}")
        return {"user": name, "already": True}
    task.progress(70, f"{verb} @{name}")
    if want_following:
        app.tap("follow", f"tap Follow on @{name}")
        app.wait("following", f"check that @{name} is followed")
    else:
        app.tap("following", f"tap Following on @{name}")
        key, node = app.wait_any({"confirm": app.alternatives("unfollow_confirm"),
                                  "done": app.alternatives("follow")},
                                 f"unfollow @{name}")
        if key == "confirm":
            app.phone.tap(node)
            app.wait("follow", f"check that @{name} is no longer followed")
    return {"user": name, "already": False, "following": want_following}


def write_comment(app: App, text: str) -> None:
    """On an open video or post: comments -> type -> send -> the comment shows."""
    app.tap("comments", "open the comments")
    app.type_into("comment_field", text, "type the comment")
    app.tap("comment_send", "send the comment")
    shown = as_dumped(text)
    app.wait("comment_shown", "check that the comment shows",
             alternatives=[{"text": shown}, {"text_contains": shown[:60]}])


def open_topic(app: App, topic: str) -> None:
    """account_warmup: search the topic and open its first video."""
    app.tap("search", "open search")
    app.type_into("search_field", topic, "type the topic")
    app.phone.press("enter")
    app.phone.tap(app.wait("first_video", f"open the first video for {topic!r}",
                           alternatives=[{"desc_contains": "video by"},
                                         {"desc_contains": "Reel by"}]))
    app.wait("video", "the video plays")
