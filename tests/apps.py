"""Simulated TikTok (43.1.4, 47.0.3) and Instagram (410) apps for the phone simulator.

Why
    The scripts find elements by resource id and English label. Hand-written screens
    would only test our idea of the apps; so every screen that has a real window dump
    (tests/fixtures/ui/, rows in SOURCES.md there) is served FROM that dump: loaded,
    then patched where the state demands (the Follow label after a tap, the typed
    caption in the EditText, the gallery cells showing the pushed media, the upload
    percentage) and with the French labels replaced by the English ones of SCRIPTS.md
    (resource ids are the same across locales of a version).

Invented screens (no real dump of them exists in the fixtures) are built with
phonesim.ui_node and marked "INVENTED" where they are made: the TikTok search page and
its results, the sound page, the account switcher, the comment sheets, the "Publish
now" dialog and the missing-profile page; Instagram's home, own profile, switcher,
unfollow sheet, story editor, post page, comments and "shared" banner. Pop-ups are
invented too (a dialog with one closing button).

Versions: TikTok 47.0.3 serves its own dumps (camera, gallery, editor, post screen,
uploading, profiles); 43.1.4 serves its own profile (Follow) and own-profile/posted
dumps, and the 47.0.3 create-flow dumps where no 43.1.4 one was copied. Both serve the
only English feed dump (46.9.3) as home and video page.

Behaviour the scripts must cope with, as on a phone:
- taps land on bounds: the point is hit-tested against the nodes of the screen shown;
- a modal pop-up (random, seeded; or `inject_popup`) swallows every tap but its button;
- while a video plays, `uiautomator dump` fails ("could not get idle state") until the
  screen is tapped (the tap pauses it);
- typed text appears in the focused field; characters outside the BMP are written as
  two dots by the dumper (phonesim does that);
- media pushed to /sdcard/DCIM/Camera and scanned show first in the gallery, newest first.
"""

import collections
import functools
import random
import re
import urllib.parse
import xml.etree.ElementTree as ET
from pathlib import Path

from phonesim import App, SCREEN_SIZE, serialize_hierarchy, ui_node

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "ui"
CAMERA_DIR = "/sdcard/DCIM/Camera/"
VIDEO_EXT = (".mp4", ".mov", ".m4v", ".3gp", ".webm", ".mkv")
W, H = SCREEN_SIZE

#: French labels of the TikTok dumps -> the English ones (SCRIPTS.md and the English
#: 46.x dumps). Whole-string replacements of text and content-desc.
FRENCH = {
    "Suivant": "Next", "Publier": "Post", "Brouillons": "Drafts", "Créer": "Create",
    "Ajouter une description…": "Add a description…", "Profil": "Profile",
    "Accueil": "Home", "Amis": "Friends", "Ami(e)s": "Friends", "Messages": "Inbox",
    "Rechercher": "Search", "Suivre": "Follow", "Suivis ": "Following",
    "Suivre en retour": "Follow back", "Suivis": "Following", "J'aime": "Likes",
    "Vidéos": "Videos", "Récents": "Recents", "Ajouter un son": "Add sound",
    "Ta Story": "Your Story", "Paramètres": "Settings", "Partager": "Share",
    "Modifier": "Edit", "Texte": "Text", "Filtres": "Filters", "Aperçu": "Preview",
    "Abonnement": "Subscription", "Vidéos republiées": "Reposts", "Republier": "Repost",
    "Publications": "Posts", "Ce compte est privé": "This account is private",
    "Comptes suggérés": "Suggested accounts", "Tout voir": "See all",
    "Menu du profil": "Profile menu", "Photo de profil": "Profile photo",
    "Créer une Story": "Create a Story", "Vues du profil": "Profile views",
    "Vidéos privées": "Private videos", "Favoris": "Favorites",
    "Vidéos aimées": "Liked videos", "Ajouter aux Favoris": "Add to Favorites",
    "Effacer le texte": "Clear text", "Vidéo": "Video", "Communauté": "Community",
    "Pour toi": "For You", "Boutique": "Shop", "PUBLIER": "POST", "CRÉER": "CREATE",
    "TEXTE": "TEXT",
}

#: Pop-ups that show at random: (title, closing button).
POPUPS = [("Allow TikTok to access photos and videos on this device?", "Allow"),
          ("Turn on notifications?", "Not now"),
          ("Swipe up for more videos", "Got it")]


# ---------------------------------------------------------------------------------------
# Working on real dumps
# ---------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.xml").read_bytes()


def load(name: str, package: str = None, translate: bool = True) -> ET.Element:
    """A fresh copy of a real dump's <hierarchy>, re-packaged (TikTok's two packages
    share one code base) and with the French labels in English."""
    root = ET.fromstring(_fixture(name))
    for el in root.iter("node"):
        if package and el.get("package") in ("com.zhiliaoapp.musically",
                                              "com.instagram.android"):
            if el.get("package") != package:
                rid = el.get("resource-id", "")
                el.set("resource-id", rid.replace(el.get("package") + ":", package + ":"))
                el.set("package", package)
        if translate:
            for attr in ("text", "content-desc"):
                if el.get(attr) in FRENCH:
                    el.set(attr, FRENCH[el.get(attr)])
    return root


def short_id(el) -> str:
    return el.get("resource-id", "").rsplit("/", 1)[-1]


def bounds(el) -> tuple:
    return tuple(int(n) for n in re.findall(r"-?\d+", el.get("bounds", "[0,0][0,0]")))


def first(root, rid=None, text=None, desc=None):
    return next(iter(find_all(root, rid, text, desc)), None)


def find_all(root, rid=None, text=None, desc=None):
    return [el for el in root.iter("node")
            if (rid is None or short_id(el) == rid) and (text is None or el.get("text") == text)
            and (desc is None or el.get("content-desc") == desc)]


def remove(root, predicate) -> None:
    parents = {child: parent for parent in root.iter() for child in parent}
    for el in [e for e in root.iter("node") if predicate(e)]:
        if el in parents:
            parents[el].remove(el)


def hits(root, x, y) -> list:
    """Every node whose bounds hold the point, topmost (last drawn) first."""
    out = []
    for el in root.iter("node"):
        x1, y1, x2, y2 = bounds(el)
        if x1 <= x < x2 and y1 <= y < y2:
            out.append(el)
    return out[::-1]


def hit(hit_list, rid=None, text=None, desc=None, desc_prefix=None) -> bool:
    for el in hit_list:
        if rid is not None and short_id(el) != rid:
            continue
        if text is not None and el.get("text", "").strip() != text:
            continue
        if desc is not None and el.get("content-desc", "") != desc:
            continue
        if desc_prefix is not None and not el.get("content-desc", "").startswith(desc_prefix):
            continue
        return True
    return False


def hierarchy(*nodes, package: str) -> ET.Element:
    """An INVENTED screen: a <hierarchy> of phonesim nodes."""
    top = ET.Element("hierarchy", {"rotation": "0"})
    root = ui_node(package=package, children=list(nodes))
    _set_package(root, package)
    top.append(root)
    return top


def _set_package(el, package):
    if not el.get("package"):
        el.set("package", package)
    for position, child in enumerate(el):
        child.set("index", str(position))
        _set_package(child, package)


def overlay(root: ET.Element, *nodes, package: str) -> None:
    """Draw INVENTED nodes on top of a screen (a sheet, a dialog, a toast)."""
    layer = ui_node(package=package, children=list(nodes))
    _set_package(layer, package)
    root.append(layer)


def text_node(text, box, rid="", clickable=False, desc="", cls="android.widget.TextView"):
    return ui_node(cls, box, text=text, desc=desc, resource_id=rid, clickable=clickable,
                   focusable=clickable)


# ---------------------------------------------------------------------------------------
# The base of both apps
# ---------------------------------------------------------------------------------------

class ModelApp(App):
    """A small state machine: `screen` names what shows, `render_<screen>` draws it
    (mostly from a real dump), `tap_<screen>` reacts to the nodes under a tap.

    State a test can read: posts, comments, follows (user -> bool), likes, collects,
    feed_follows, current (account), typed text in `fields`.
    """

    PLAYING = ("home", "video")

    def __init__(self, package, *, accounts=("sim_user",), users=None, seed=1,
                 popup_rate=0.0):
        super().__init__(package=package)
        self.accounts = list(accounts)
        self.current = self.accounts[0]
        self.follows = dict(users or {})        #: user -> followed by the current account
        self.rng = random.Random(seed)
        self.popup_rate = popup_rate
        self.screen = "home"
        self.popup = None
        self.fields = collections.defaultdict(str)
        self.focus = None
        self.playing = False
        self.posts, self.comments = [], collections.defaultdict(list)
        self.likes = self.collects = self.feed_follows = 0
        self.selected, self.media_mode = [], "video"
        self.upload_pct = 0
        self.target = None                      #: the profile / post / sound on screen
        self.query = ""

    # -- the phonesim App interface ------------------------------------------------------
    def on_start(self, activity):
        super().on_start(activity)
        if self.screen == "closed" or activity and "SplashActivity" in activity:
            self.goto("home")
        if activity and ("Share" in activity or "share" in activity):
            self.selected = self._shared_paths()
            self.goto(self.share_screen(activity))

    def on_stop(self):
        self.fields.clear()                     # a fresh start has empty fields
        self.goto("closed")

    def dump(self) -> str:
        root = self.render()
        if self.popup:
            title, button = self.popup
            overlay(root, ui_node("android.widget.FrameLayout", (0, 0, W, H),
                                  resource_id="android:id/content", children=[
                text_node(title, (90, 900, 990, 1050), rid="android:id/message"),
                text_node(button, (600, 1100, 990, 1220), rid="android:id/button1",
                          clickable=True, cls="android.widget.Button")]),
                package=self.package)
        return serialize_hierarchy(root)

    def render(self) -> ET.Element:
        return getattr(self, "render_" + self.screen)()

    def tap(self, x, y):
        hit_list = hits(self.render(), x, y)
        if self.popup:                          # modal: only its button does something
            if y >= 1100 and y < 1220 and x >= 600:
                self.popup = None
                if self.screen in self.PLAYING:
                    self._play()
            return
        handler = getattr(self, "tap_" + self.screen, None)
        if handler is not None:
            handler(hit_list, x, y)

    def text(self, s):
        if self.focus:
            self.fields[self.focus] += s

    def set_text(self, s):
        if self.focus:
            self.fields[self.focus] = s

    def key(self, code) -> bool:
        if code == "KEYCODE_DEL" and self.focus:
            self.fields[self.focus] = self.fields[self.focus][:-1]
        elif code == "KEYCODE_ENTER":
            self.on_enter()
        elif code == "KEYCODE_BACK":
            return self.on_back()
        return True

    def swipe(self, x1, y1, x2, y2, ms):
        if self.screen in self.PLAYING and y1 - y2 > 300:
            self.video_index = getattr(self, "video_index", 0) + 1
            self.goto(self.screen)              # the next video plays

    # -- state changes ---------------------------------------------------------------------
    def goto(self, screen, focus=None):
        """Show another screen; maybe a random pop-up; a video screen starts playing."""
        self.screen, self.focus = screen, focus
        if screen in self.PLAYING:
            self._play()
        else:
            self._pause()
        if screen != "closed" and self.popup_rate and self.rng.random() < self.popup_rate:
            self.inject_popup(*self.rng.choice(POPUPS))

    def inject_popup(self, title="Turn on notifications?", button="Not now"):
        """A pop-up now (tests of a pop-up in the middle of a flow). Like TikTok, the
        video pauses while a dialog has the focus, and plays again when it closes."""
        self.popup = (title, button)
        self._pause()

    def _play(self):
        """A playing video keeps uiautomator from getting an idle state: dumps fail
        until a tap pauses it."""
        self.playing = True
        if self.device is not None:
            self.device.fail_dumps(3)

    def _pause(self):
        if self.playing and self.device is not None:
            with self.device.lock:              # no public "clear" in phonesim
                self.device._dump_failures.clear()
        self.playing = False

    def _shared_paths(self):
        """The files of the last share intent (from the device's command log)."""
        for record in reversed(self.device.command_log):
            argv = record.argv
            if argv[:2] == ["am", "start"] and "android.intent.extra.STREAM" in argv:
                value = argv[argv.index("android.intent.extra.STREAM") + 1]
                return [urllib.parse.urlsplit(u).path for u in value.split(",")]
        return []

    def gallery(self):
        """Media of the camera folder that the scanner knows, newest first."""
        fs = self.device.fs
        scanned = {path: n for n, path in enumerate(self.device.media_scans)}
        files = [p for p in list(fs.files) if p.startswith(CAMERA_DIR) and p in scanned]
        return sorted(files, key=lambda p: (fs.files[p].mtime, scanned[p]), reverse=True)

    def on_enter(self):
        pass

    def on_back(self) -> bool:
        back = {"comments": "video", "switcher": "own_profile", "gallery": "camera",
                "camera": "home", "search": "home", "search_results": "search",
                "profile": "home", "missing": "home", "editor": "home", "post": "editor"}
        if self.screen in back:
            self.goto(back[self.screen])
            return True
        return False

    def tap_switcher(self, h, x, y):
        """The account switcher (both apps): tapping an account's row makes it current."""
        for name in self.accounts:
            if hit(h, text=name):
                self.current = name
                self.goto("home")
                return


# ---------------------------------------------------------------------------------------
# TikTok
# ---------------------------------------------------------------------------------------

class TikTokApp(ModelApp):
    """TikTok 47.0.3 or 43.1.4 under either package (global or Asia)."""

    label = "TikTok"
    launch_activity = "com.ss.android.ugc.aweme.splash.SplashActivity"
    hosts = ("tiktok.com",)

    def __init__(self, version="47.0.3", package="com.zhiliaoapp.musically",
                 sounds=("original sound - sim_user",), publish_dialog=False, **kw):
        super().__init__(package, **kw)
        self.version = version
        self.sounds = list(sounds)
        self.publish_dialog = publish_dialog
        self.sound = None

    def share_screen(self, activity):
        return "editor"

    def open_url(self, url):
        super().open_url(url)
        parts = urllib.parse.urlsplit(url)
        path = parts.path.strip("/")
        if path.startswith("@") and "/video/" not in path:
            self.target = path[1:].split("/")[0]
            self.goto("profile" if self.target in self.follows else "missing")
        elif "/video/" in path:
            self.target = path
            self.goto("video")
        elif path.startswith("music/"):
            self.target = urllib.parse.unquote(path.split("/", 1)[1])
            self.goto("sound")
        else:
            self.goto("home")

    # -- home and videos (real: the English 46.9.3 feed) ---------------------------------
    def render_home(self):
        root = load("tt4693_en_for_you_video", self.package)
        if self.screen == "comments" or self.feed_followed():
            remove(root, lambda el: short_id(el) == "ivc")
        return root

    render_video = render_home

    def feed_followed(self):
        return getattr(self, "_feed_followed_at", None) == getattr(self, "video_index", 0)

    def tap_home(self, h, x, y):
        if hit(h, desc="Create"):
            self.goto("camera")
        elif hit(h, desc="Profile"):
            self.goto("own_profile")
        elif hit(h, desc="Search"):
            self.goto("search", focus="search")
        elif hit(h, desc_prefix="Like video"):
            self.likes += 1
        elif hit(h, rid="ivc"):
            self.feed_follows += 1
            self._feed_followed_at = getattr(self, "video_index", 0)
        elif hit(h, desc_prefix="Add or remove this video from Favorites"):
            self.collects += 1
        elif hit(h, desc_prefix="Read or add comments"):
            self.goto("comments")
        elif self.playing:
            self._pause()
        else:
            self._play()

    tap_video = tap_home

    # -- comments (INVENTED: no dump of the comment sheet) -------------------------------
    def render_comments(self):
        root = self.render_home()
        rows = [text_node(c, (40, 1000 + 90 * i, 1040, 1080 + 90 * i))
                for i, c in enumerate(self.comments[self.target or "feed"][-8:])]
        typed = self.fields["comment"]
        field = ui_node("android.widget.EditText", (40, 2200, 900, 2320),
                        text=typed or "Add comment...", clickable=True, focusable=True,
                        focused=self.focus == "comment")
        send = [ui_node("android.widget.ImageView", (910, 2200, 1040, 2320),
                        desc="Post comment", clickable=True)] if typed else []
        overlay(root, ui_node("android.widget.FrameLayout", (0, 900, W, H), clickable=True,
                              children=[text_node("Comments", (40, 920, 600, 990))] + rows
                              + [field] + send), package=self.package)
        return root

    def tap_comments(self, h, x, y):
        if hit(h, desc="Post comment"):
            self.comments[self.target or "feed"].append(self.fields.pop("comment"))
        elif any("EditText" in el.get("class") for el in h):
            self.focus = "comment"

    def on_back(self):
        if self.screen == "comments":
            self.screen, self.focus = "video" if self.target else "home", None
            return True
        return super().on_back()

    # -- create: camera, gallery, editor, post screen (real 47.0.3 dumps) ----------------
    def render_camera(self):
        return load("tt4703_fr_publish_camera", self.package)

    def tap_camera(self, h, x, y):
        if hit(h, rid="upload_hot_area"):
            self.selected = []
            self.goto("gallery")

    def _gallery_cells(self, root):
        grid = first(root, rid="jmm")
        return [c for c in grid if c.tag == "node"] if grid is not None else []

    def render_gallery(self):
        root = load("tt4703_fr_publish_gallery", self.package)
        media = self.gallery()
        for cell, path in zip(self._gallery_cells(root), media):
            label = first(cell, rid="gpx")
            if label is not None and not path.lower().endswith(VIDEO_EXT):
                label.set("text", "")            # photos have no duration
            circle = first(cell, rid="l34")
            if circle is not None and path in self.selected:
                circle.set("text", str(self.selected.index(path) + 1))
        if self.selected:
            first(root, rid="xyk").set("text", "Next (%d)" % len(self.selected))
        return root

    def tap_gallery(self, h, x, y):
        root = self.render_gallery()
        media = self.gallery()
        for cell, path in zip(self._gallery_cells(root), media):
            circle = first(cell, rid="l34")
            x1, y1, x2, y2 = bounds(circle)
            if x1 <= x < x2 and y1 <= y < y2:
                (self.selected.remove if path in self.selected else self.selected.append)(path)
                return
        if hit(h, rid="xyk") and self.selected:
            self.goto("editor")

    def render_editor(self):
        return load("tt4703_fr_publish_editor_no_sound", self.package)

    def tap_editor(self, h, x, y):
        if hit(h, rid="q03") or hit(h, text="Next"):
            self.fields["caption"] = ""
            self.goto("post")

    def render_post(self):
        root = load("tt4703_fr_publish_post_screen", self.package)
        caption = first(root, rid="h8e")
        caption.set("text", self.fields["caption"] or "Add a description…")
        caption.set("focused", "true" if self.focus == "caption" else "false")
        if self.screen == "publish_dialog":      # INVENTED: no dump of this dialog
            overlay(root, ui_node("android.widget.FrameLayout", (0, 1500, W, H), children=[
                text_node("Publish video publicly?", (60, 1550, 1020, 1650)),
                text_node("Publish now", (60, 1700, 1020, 1820), clickable=True,
                          cls="android.widget.Button"),
                text_node("Cancel", (60, 1850, 1020, 1970), clickable=True,
                          cls="android.widget.Button")]), package=self.package)
        return root

    def tap_post(self, h, x, y):
        if hit(h, rid="h8e"):
            self.focus = "caption"
        elif hit(h, rid="tiq"):
            self.goto("publish_dialog" if self.publish_dialog else "uploading")
            if not self.publish_dialog:
                self._publish()

    render_publish_dialog = render_post

    def tap_publish_dialog(self, h, x, y):
        if hit(h, text="Publish now"):
            self.goto("uploading")
            self._publish()
        elif hit(h, text="Cancel"):
            self.goto("post")

    def _publish(self):
        self.posts.append({"caption": self.fields["caption"], "media": list(self.selected),
                           "sound": self.sound, "account": self.current})
        self.upload_pct = 0

    # -- uploading, posted -----------------------------------------------------------------
    def render_uploading(self):
        self.upload_pct = min(100, self.upload_pct + 34)     # each look: a bit further
        if self.upload_pct >= 100:
            self.goto("own_profile" if self.version.startswith("43") else "home")
            return self.render()
        if self.version.startswith("43"):          # real 43.1.4: own profile, 94% tile
            root = self.render_own_profile(progress=True)
        else:
            root = load("tt4703_fr_publish_uploading", self.package)
        for el in root.iter("node"):
            if re.fullmatch(r"\d+%", el.get("text", "")):
                el.set("text", "%d%%" % self.upload_pct)
        return root

    # -- own profile and the account switcher ----------------------------------------------
    def render_own_profile(self, progress=False):
        root = load("tt4314_fr_publish_posted", self.package)   # real 43.1.4 own profile
        first(root, rid="qh5").set("text", "@" + self.current)
        # INVENTED label: the dump's top-left account button (wh8) has no content-desc
        first(root, rid="wh8").set("content-desc", "Switch account")
        if not progress:
            remove(root, lambda el: re.fullmatch(r"\d+%", el.get("text", "")))
        if self.screen == "switcher":               # INVENTED: no dump of the switcher
            rows = [text_node(name, (40, 1300 + 130 * i, 1040, 1420 + 130 * i),
                              clickable=True) for i, name in enumerate(self.accounts)]
            overlay(root, ui_node("android.widget.FrameLayout", (0, 1200, W, H),
                                  children=rows + [text_node(
                                      "Add account", (40, 2200, 1040, 2320),
                                      clickable=True)]), package=self.package)
        return root

    render_switcher = render_own_profile

    def tap_own_profile(self, h, x, y):
        if hit(h, desc="Switch account"):
            self.goto("switcher")
        elif hit(h, desc="Home"):
            self.goto("home")
        elif hit(h, desc="Create"):
            self.goto("camera")

    # -- other users' profiles (real: 43.1.4 / 47.0.3 dumps) ----------------------------
    def render_profile(self):
        name, following = self.target, self.follows.get(self.target)
        if self.version.startswith("43"):
            root = load("tt4314_fr_profile", self.package)
            first(root, rid="qh5").set("text", "@" + name)
            first(root, rid="eme", text="Follow").set("text",
                                                      "Following" if following else "Follow")
        else:
            root = load("tt4703_fr_profile_followed" if following else
                        "tt4703_fr_profile_suggested_accounts", self.package)
            first(root, rid="t3y").set("text", "@" + name)
            button = first(root, rid="fmp", text="Following" if following else "Follow back")
            button.set("text", "Following" if following else "Follow")
        return root

    def tap_profile(self, h, x, y):
        if hit(h, rid="emg") or hit(h, rid="fmj") or hit(h, text="Follow") \
                or hit(h, text="Following"):
            label = next((el.get("text") for el in h if el.get("text") in
                          ("Follow", "Following")), None)
            if label is None:
                for el in h:
                    inner = [c.get("text") for c in el.iter("node")
                             if c.get("text") in ("Follow", "Following")]
                    if inner:
                        label = inner[0]
                        break
            if label is not None:
                self.follows[self.target] = label == "Follow"

    # -- search, sounds, missing profile (INVENTED: no copyable dumps) ---------------------
    def render_search(self):
        field = ui_node("android.widget.EditText", (150, 140, 900, 270),
                        text=self.fields["search"] or "Search", clickable=True,
                        focused=self.focus == "search")
        return hierarchy(field, text_node("Search", (900, 140, 1060, 270), clickable=True),
                         package=self.package)

    def tap_search(self, h, x, y):
        if any("EditText" in el.get("class") for el in h):
            self.focus = "search"

    def on_enter(self):
        if self.screen == "search":
            self.query, self.tab = self.fields.pop("search", ""), "Top"
            self.goto("search_results")

    def render_search_results(self):
        tabs = [text_node(t, (20 + 260 * i, 300, 260 + 260 * i, 400), clickable=True,
                          desc=t) for i, t in enumerate(("Top", "Videos", "Users", "Sounds"))]
        q = self.query.lower()
        if self.tab == "Users":
            items = [text_node(u, (40, 450 + 160 * i, 1040, 590 + 160 * i), clickable=True)
                     for i, u in enumerate(u for u in self.follows if q in u.lower())]
        elif self.tab == "Sounds":
            items = [text_node(s, (40, 450 + 160 * i, 1040, 590 + 160 * i), clickable=True)
                     for i, s in enumerate(s for s in self.sounds if q in s.lower())]
        else:
            items = [ui_node("android.widget.FrameLayout", (0 + 540 * i, 450, 540 + 540 * i,
                                                            1200), clickable=True,
                             desc="%s video by sim_creator" % self.query) for i in range(2)]
        field = ui_node("android.widget.EditText", (150, 140, 900, 270), text=self.query,
                        clickable=True)
        return hierarchy(field, *tabs, *(items or [text_node("No results found",
                                                             (40, 450, 1040, 590))]),
                         package=self.package)

    def tap_search_results(self, h, x, y):
        for el in h:
            text = el.get("text", "")
            if text in ("Top", "Videos", "Users", "Sounds") and y < 400:
                self.tab = text
                return
            if self.tab == "Users" and text in self.follows:
                self.target = text
                self.goto("profile")
                return
            if self.tab == "Sounds" and text in self.sounds:
                self.target = text
                self.goto("sound")
                return
            if "video by" in el.get("content-desc", ""):
                self.goto("home")
                return

    def render_sound(self):
        return hierarchy(text_node(self.target, (40, 300, 1040, 400)),
                         text_node("Use sound", (200, 2100, 880, 2240), clickable=True,
                                   cls="android.widget.Button"), package=self.package)

    def tap_sound(self, h, x, y):
        if hit(h, text="Use sound"):
            self.sound = self.target
            self.goto("camera")

    def render_missing(self):
        return hierarchy(text_node("Couldn't find this account", (40, 900, 1040, 1000)),
                         package=self.package)

    def render_closed(self):
        return hierarchy(package="com.android.launcher3")


# ---------------------------------------------------------------------------------------
# Instagram
# ---------------------------------------------------------------------------------------

class InstagramApp(ModelApp):
    """Instagram 410."""

    package = "com.instagram.android"
    label = "Instagram"
    launch_activity = "com.instagram.mainactivity.LauncherActivity"
    hosts = ("instagram.com",)
    PLAYING = ()

    def __init__(self, **kw):
        super().__init__("com.instagram.android", **kw)
        self.placement = "reel"
        self.nux_seen = False

    def share_screen(self, activity):
        self.placement = "story" if "Story" in activity else "reel"
        return "story_editor" if self.placement == "story" else "editor"

    def open_url(self, url):
        super().open_url(url)
        path = urllib.parse.urlsplit(url).path.strip("/")
        if path.startswith(("p/", "reel/")):
            self.target = path
            self.goto("post_page")
        elif path.startswith("reels/audio/"):
            self.target = path
            self.goto("audio")
        elif path and "/" not in path:
            self.target = path
            self.goto("profile" if path in self.follows else "missing")
        else:
            self.goto("home")

    # -- home (INVENTED: no Instagram home dump) -------------------------------------
    def _tab_bar(self):
        tabs = [("feed_tab", "Home"), ("search_tab", "Search and explore"),
                ("creation_tab", "Create"), ("clips_tab", "Reels"), ("profile_tab", "Profile")]
        return [ui_node("android.widget.FrameLayout", (216 * i, 2200, 216 * (i + 1), 2320),
                        resource_id=f"{self.package}:id/{rid}", desc=desc, clickable=True)
                for i, (rid, desc) in enumerate(tabs)]

    def _post_row(self, top=1700):
        ids = [("row_feed_button_like", "Like"), ("row_feed_button_comment", "Comment"),
               ("row_feed_button_save", "Add to Saved")]
        return [ui_node("android.widget.ImageView", (30 + 150 * i, top, 150 + 150 * i,
                                                     top + 120),
                        resource_id=f"{self.package}:id/{rid}", desc=desc, clickable=True)
                for i, (rid, desc) in enumerate(ids)]

    def render_home(self):
        nodes = [ui_node("android.view.View", (0, 300, W, 1650), desc="Video by sim_creator",
                         clickable=True)] + self._post_row() + self._tab_bar()
        if self.banner:
            nodes.append(text_node(self.banner, (40, 240, 1040, 300)))
        return hierarchy(*nodes, package=self.package)

    banner = ""

    def tap_home(self, h, x, y):
        if hit(h, rid="creation_tab"):
            self.goto("gallery")
        elif hit(h, rid="search_tab"):
            self.goto("search", focus="search")
        elif hit(h, rid="profile_tab"):
            self.goto("own_profile")
        elif hit(h, rid="feed_tab"):
            self.goto("home")
        elif hit(h, rid="row_feed_button_like"):
            self.likes += 1
        elif hit(h, rid="row_feed_button_save"):
            self.collects += 1
        elif hit(h, rid="row_feed_button_comment"):
            self.goto("comments")

    # -- search (real: keyboard-open page, then the results page) ----------------------
    def render_search(self):
        root = load("ig410_en_search_keyboard_open")
        field = first(root, rid="action_bar_search_edit_text")
        field.set("text", self.fields["search"])
        return root

    def tap_search(self, h, x, y):
        if hit(h, rid="action_bar_search_edit_text"):
            self.focus = "search"
        elif hit(h, rid="dismiss_button"):
            pass                                 # a recent search removed: nothing shown

    def text(self, s):
        super().text(s)
        if self.screen == "search":
            self.query = self.fields["search"]
            self.goto("search_results", focus="search")

    def render_search_results(self):
        root = load("ig410_fr_account_search_results")
        first(root, rid="action_bar_search_edit_text").set("text", self.query)
        matches = [u for u in self.follows if self.query.lower() in u.lower()]
        rows = find_all(root, rid="row_search_user_container")
        for row, name in zip(rows, matches + [None] * len(rows)):
            label = first(row, rid="row_search_user_username")
            if name is None:
                remove(root, lambda el, row=row: el is row)
            elif label is not None:
                label.set("text", name)
        if not matches:                          # INVENTED: no dump of an empty result
            overlay(root, text_node("No results found.", (40, 500, 1040, 600)),
                    package=self.package)
        return root

    def tap_search_results(self, h, x, y):
        root = self.render_search_results()
        for row in find_all(root, rid="row_search_user_container"):
            x1, y1, x2, y2 = bounds(row)
            if x1 <= x < x2 and y1 <= y < y2:
                label = first(row, rid="row_search_user_username")
                self.target = label.get("text")
                self.goto("profile")
                return
        if hit(h, rid="action_bar_search_edit_text"):
            self.focus = "search"

    def on_enter(self):
        pass

    # -- profiles (real: followed / not followed) ---------------------------------------
    def render_profile(self):
        following = self.follows.get(self.target)
        root = load("ig410_en_profile_following" if following else
                    "ig410_en_profile_follow_with_mutuals")
        title = first(root, rid="action_bar_title")
        if title is not None:
            title.set("text", self.target)
        if self.screen == "unfollow_sheet":       # INVENTED: no dump of this sheet
            overlay(root, ui_node("android.widget.FrameLayout", (0, 1400, W, 2220), children=[
                text_node(self.target, (40, 1450, 1040, 1550)),
                text_node("Unfollow", (40, 1900, 1040, 2020), clickable=True,
                          rid=f"{self.package}:id/follow_sheet_unfollow_row")]),
                package=self.package)
        return root

    render_unfollow_sheet = render_profile

    def tap_profile(self, h, x, y):
        if hit(h, rid="profile_header_follow_button", text="Follow"):
            self.follows[self.target] = True
        elif hit(h, rid="profile_header_follow_button", text="Following"):
            self.goto("unfollow_sheet")

    def tap_unfollow_sheet(self, h, x, y):
        if hit(h, text="Unfollow"):
            self.follows[self.target] = False
            self.goto("profile")

    def render_missing(self):                     # INVENTED
        return hierarchy(text_node("Sorry, this page isn't available.", (40, 900, 1040, 1000)),
                         package=self.package)

    # -- own profile and switcher (INVENTED: no dump of the own profile) ---------------
    def render_own_profile(self):
        nodes = [text_node(self.current, (176, 77, 700, 231),
                           rid=f"{self.package}:id/action_bar_title"),
                 ui_node("android.widget.ImageView", (700, 77, 800, 231), desc="Switch account",
                         resource_id=f"{self.package}:id/action_bar_title_chevron",
                         clickable=True)] + self._tab_bar()
        if self.screen == "switcher":
            nodes += [text_node(n, (40, 1300 + 130 * i, 1040, 1420 + 130 * i), clickable=True)
                      for i, n in enumerate(self.accounts)]
            nodes.append(text_node("Add account", (40, 2050, 1040, 2170), clickable=True))
        return hierarchy(*nodes, package=self.package)

    render_switcher = render_own_profile

    def tap_own_profile(self, h, x, y):
        if hit(h, desc="Switch account"):
            self.goto("switcher")
        else:
            self.tap_home(h, x, y)

    # -- create: gallery, editor, composer (real dumps) ---------------------------------
    def render_gallery(self):
        root = load("ig410_en_new_post_gallery_video_selected")
        for tab, rid in (("reel", "cam_dest_clips"), ("story", "cam_dest_story")):
            first(root, rid=rid).set("selected", "true" if self.placement == tab else "false")
        for cell, path in zip(find_all(root, rid="gallery_grid_item_thumbnail"), self.gallery()):
            kind = "Video" if path.lower().endswith(VIDEO_EXT) else "Photo"
            cell.set("content-desc", f"{kind} thumbnail, {path.rsplit('/', 1)[-1]}")
            cell.set("selected", "true" if path in self.selected else "false")
        return root

    def tap_gallery(self, h, x, y):
        if hit(h, rid="cam_dest_clips"):
            self.placement = "reel"
        elif hit(h, rid="cam_dest_story"):
            self.placement = "story"
        elif hit(h, rid="multi_select_slide_button_alt"):
            self.multi = True
        elif hit(h, rid="next_button_textview") and self.selected:
            self.goto("story_editor" if self.placement == "story" else "editor")
        elif hit(h, rid="gallery_grid_item_thumbnail"):
            root = self.render_gallery()
            for cell, path in zip(find_all(root, rid="gallery_grid_item_thumbnail"),
                                  self.gallery()):
                x1, y1, x2, y2 = bounds(cell)
                if x1 <= x < x2 and y1 <= y < y2:
                    if getattr(self, "multi", False):
                        self.selected.append(path)
                    else:
                        self.selected = [path]

    def render_editor(self):
        return load("ig410_en_reel_editor")       # real, captured at 576x1280

    def tap_editor(self, h, x, y):
        if hit(h, rid="clips_right_action_button"):
            self.fields["caption"] = ""
            self.goto("composer")

    def render_composer(self):
        root = load("ig410_en_new_reel_composer_download_nux")
        caption = first(root, rid="caption_input_text_view")
        caption.set("text", self.fields["caption"] or "Write a caption and add hashtags…")
        caption.set("focused", "true" if self.focus == "caption" else "false")
        if self.nux_seen:
            remove(root, lambda el: short_id(el) in ("background_dimmer",
                                                     "layout_container_bottom_sheet"))
        return root

    def tap_composer(self, h, x, y):
        if not self.nux_seen:
            if hit(h, rid="clips_download_privacy_nux_button"):
                self.nux_seen = True
            return                                 # the sheet covers the screen
        if hit(h, rid="caption_input_text_view"):
            self.focus = "caption"
        elif hit(h, rid="share_button"):
            self._publish()

    def render_story_editor(self):                 # INVENTED: no story editor dump
        return hierarchy(ui_node("android.widget.Button", (40, 2100, 520, 2240),
                                 desc="Your story", clickable=True), package=self.package)

    def tap_story_editor(self, h, x, y):
        if hit(h, desc="Your story"):
            self._publish()

    def _publish(self):
        self.posts.append({"caption": self.fields["caption"], "media": list(self.selected),
                           "placement": self.placement, "account": self.current})
        self.upload_pct = 0
        self.goto("uploading")

    def render_uploading(self):                    # INVENTED progress banner on home
        self.upload_pct = min(100, self.upload_pct + 34)
        self.banner = "Sharing…" if self.upload_pct < 100 else "Your reel has been shared."
        if self.upload_pct >= 100:
            self.goto("home")
        return self.render_home()

    def tap_uploading(self, h, x, y):
        self.tap_home(h, x, y)

    # -- a post by link, its comments, an audio page (INVENTED) ------------------------
    def render_post_page(self):
        return hierarchy(ui_node("android.view.View", (0, 300, W, 1650), desc="Photo by sim",
                                 clickable=True), *self._post_row(), package=self.package)

    def tap_post_page(self, h, x, y):
        if hit(h, rid="row_feed_button_comment"):
            self.goto("comments")
        elif hit(h, rid="row_feed_button_like"):
            self.likes += 1

    def render_comments(self):
        rows = [text_node(c, (40, 400 + 90 * i, 1040, 480 + 90 * i))
                for i, c in enumerate(self.comments[self.target or "feed"][-8:])]
        field = ui_node("android.widget.EditText", (40, 2200, 850, 2320),
                        text=self.fields["comment"] or "Add a comment…", clickable=True,
                        resource_id=f"{self.package}:id/layout_comment_thread_edittext",
                        focused=self.focus == "comment")
        post = text_node("Post", (860, 2200, 1040, 2320), clickable=True, rid=(
            f"{self.package}:id/layout_comment_thread_post_button_click_area"))
        return hierarchy(text_node("Comments", (40, 100, 600, 200)), *rows, field, post,
                         package=self.package)

    def tap_comments(self, h, x, y):
        if hit(h, rid="layout_comment_thread_post_button_click_area") and self.fields["comment"]:
            self.comments[self.target or "feed"].append(self.fields.pop("comment"))
        elif hit(h, rid="layout_comment_thread_edittext"):
            self.focus = "comment"

    def on_back(self):
        if self.screen == "comments":
            self.goto("post_page" if self.target else "home")
            return True
        return super().on_back()

    def render_audio(self):
        return hierarchy(text_node("Use audio", (200, 2000, 880, 2140), clickable=True,
                                   cls="android.widget.Button"), package=self.package)

    def tap_audio(self, h, x, y):
        if hit(h, text="Use audio"):
            self.sound = self.target
            self.goto("gallery")

    def render_closed(self):
        return hierarchy(package="com.android.launcher3")
