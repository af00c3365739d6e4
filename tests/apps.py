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
its results, the sound page, the name-with-chevron, profile menu and settings (the
"Switch account" sheet follows taktik-bot's captured trees), the comment sheets, the
"Publish now" dialog and the missing-profile page; Instagram's home, own profile,
switcher sheet, unfollow sheet, story editor, post page, comments, "shared" banner,
"About Reels" sheet and draft dialog; the app dialogs after a showcase product's Add;
the puzzle window. Pop-ups and block screens are Android dialog windows
(phonesim.alert_window, AOSP ids) with the apps' texts; their sources are cited at
POPUP_KINDS and BLOCKS.

Versions: TikTok 47.0.3 serves its own dumps (camera, gallery, editor, post screen,
uploading, profiles); 43.1.4 serves its own profile (Follow) and own-profile/posted
dumps, and the 47.0.3 create-flow dumps where no 43.1.4 one was copied. Both serve the
only English feed dump (46.9.3) as home and video page.

Behaviour the scripts must cope with, as on a phone:
- taps land on bounds: the point is hit-tested against the nodes of the screen shown;
- a pop-up is another window on top: the screen below stays in the dump, and every tap
  but one on its buttons is swallowed (BACK closes the cancellable ones; the swipe-up
  tutorial takes every tap and closes on a swipe up, which does nothing else);
- while a video plays, `uiautomator dump` fails ("could not get idle state") until the
  screen is tapped (the tap pauses it);
- typed text appears in the focused field; characters outside the BMP are written as
  two dots by the dumper (phonesim does that);
- search fields keep the query after submitting; tapping the field goes back to typing
  (TikTok: keyboard and suggestions), it opens no result;
- several accounts can be logged in (`accounts`); follows are kept per account and
  every action is recorded with the account that did it (`actions`);
- media pushed to /sdcard/DCIM/Camera and scanned show first in the gallery, newest first.

Knobs (constructor keywords, or attributes a test sets on the app):
- `locale="fr"`: the dumps show the French labels of the real dumps (ids unchanged);
- `accounts=[...]`: logged-in accounts, the first current; `users={name: followed}`:
  the profiles that exist (followed by the first account);
- `popup_rate`: chance of a pop-up with each new screen (it shows in the next dump);
- `popup_on_tap_rate`: chance that a pop-up appears between a dump and the next tap,
  drawn over the tapped point, so that tap is swallowed;
- `popup_kinds=[...]`: which POPUP_KINDS of the platform are drawn (default: all);
  `show_popup(kind)` / `inject_popup(title, button)`: one now;
- `block_next(action, kind)`: the next "follow" / "comment" / "like" is refused with the
  app's block screen (BLOCKS);
- `follow_reverts_after=s`: a follow shows Following, then Follow again after s
  seconds, silently (a follow the server refused: a soft block);
- `upload_seconds`: an upload's length from the publishing tap, moving with time;
  `upload_prepare_seconds`: before its progress shows, the app prepares the media this
  long showing nothing of the upload (its feed or profile); `uploading()`: it still
  reads the media;
- TikTok `switcher_paths=("name", "settings")`: the ways to the account list that work
  (the name with chevron atop the own profile; profile menu -> Settings and privacy ->
  swipe -> Switch account); `publish_dialog`; `sounds` (search and sound pages);
  `recommended` (the editor's sound panel); `first_feed_tutorial` (the next feed shows
  the "Swipe up for more" overlay); `link_row`, `showcase` (TikTok Shop's
  Add link -> Products); `version`, `package`. A post records its sound, the two
  volumes (TikTok's 0-200 %) and its product.
Device-side faults (screen off, keyguard, crashes, lost taps, slow and failing dumps)
are phonesim's knobs (see its docstring).
"""

import collections
import functools
import random
import re
import time
import urllib.parse
import xml.etree.ElementTree as ET
from pathlib import Path

from phonesim import App, SCREEN_SIZE, alert_window, serialize_hierarchy, ui_node

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

#: English -> French, for a phone in French (`locale="fr"`): the dump's labels only.
ENGLISH_TO_FRENCH = {}
for _fr, _en in FRENCH.items():
    ENGLISH_TO_FRENCH.setdefault(_en, _fr)

#: Pop-ups that show at random: (title, closing button) (kept for older tests; the
#: models draw from POPUP_KINDS below).
POPUPS = [("Allow TikTok to access photos and videos on this device?", "Allow"),
          ("Turn on notifications?", "Not now"),
          ("Swipe up for more videos", "Got it")]

PERMISSION = "com.google.android.permissioncontroller"
#: Android's runtime permission dialog (AOSP packages/modules/Permission,
#: PermissionController/res/layout/grant_permissions.xml: permission_message,
#: permission_allow_button, permission_deny_button). Android writes "Don’t allow" with
#: a typographic apostrophe (U+2019, string grant_dialog_button_deny).
PERMISSION_IDS = {"title": PERMISSION + ":id/permission_message",
                  "panel": PERMISSION + ":id/grant_dialog"}
DONT_ALLOW = "Don\u2019t allow"

#: Android 14's photos and videos prompt (AOSP PermissionController, the
#: READ_MEDIA_VISUAL_USER_SELECTED grant: permission_allow_all_button "Allow all",
#: permission_allow_selected_button, the deny button last). Only "Allow all" lets the app
#: see the pushed media; "Select photos and videos" shows it only the items picked.
MEDIA_PROMPT = dict(window=PERMISSION, title="Allow {app} to access photos and videos on "
                    "this device?", ids=PERMISSION_IDS, back=True, buttons=[
                        ("Allow all", PERMISSION + ":id/permission_allow_all_button"),
                        ("Select photos and videos",
                         PERMISSION + ":id/permission_allow_selected_button"),
                        (DONT_ALLOW, PERMISSION + ":id/permission_deny_button")],
                    stacked=True)

#: Pop-ups by kind: where the window comes from ("app" = the app's own package), title,
#: message, buttons (label, resource id; "{pkg}" is the app's package), whether BACK
#: closes it, and "tutorial": a full-screen overlay without buttons that swallows every
#: tap and closes on a swipe up (which does nothing else): the one public source that
#: meets it, an Auto.js trill farm (CNAJ in docs/research/sources_s5b.md), swipes it
#: away slowly; none taps it.
#: Sources of the texts: the permission dialogs are Android's (above); Instagram's
#: "Turn on Notifications"/"Not Now" and "Save your login info?"/"Not now" are the
#: prompts public Instagram bots dismiss after logging in (a Playwright login flow and an
#: Auto.js script, both found by the text "Save Your Login Info"; code search, 2026-12);
#: TikTok's "Agree and continue" is its first-start Terms/Privacy Policy consent; the
#: swipe-up tutorial's "Swipe up for more" is the hint TikTok shows on a first feed.
#: Dialog layouts and the app dialogs' ids are INVENTED (AlertDialog ids of Android).
POPUP_KINDS = {
    "tiktok": {
        "contacts": dict(window=PERMISSION, title="Allow TikTok to access your contacts?",
                         buttons=[("Allow", PERMISSION + ":id/permission_allow_button"),
                                  (DONT_ALLOW, PERMISSION + ":id/permission_deny_button")],
                         ids=PERMISSION_IDS, back=True),
        "notifications": dict(window=PERMISSION,
                              title="Allow TikTok to send you notifications?",
                              buttons=[("Allow", PERMISSION + ":id/permission_allow_button"),
                                       (DONT_ALLOW, PERMISSION
                                        + ":id/permission_deny_button")],
                              ids=PERMISSION_IDS, back=True),
        "terms": dict(window="app", title="We're updating our Terms of Service",
                      message="Our updated Terms of Service and Privacy Policy take effect "
                              "on 1 January. Tap Agree and continue to keep using TikTok.",
                      buttons=[("Agree and continue", "android:id/button1")], back=False),
        "swipe_tutorial": dict(window="app", title="Swipe up for more", tutorial=True),
        "got_it": dict(window="app", title="Easily switch between accounts",
                       message="Tap your name at the top of your profile.",
                       buttons=[("Got it", "android:id/button1")], back=True),
    },
    "instagram": {
        "notifications": dict(window="app", title="Turn on Notifications",
                              message="Know right away when people follow you or like and "
                                      "comment on your photos.",
                              buttons=[("Turn On", "android:id/button1"),
                                       ("Not Now", "android:id/button2")], back=True),
        "save_login": dict(window="app", title="Save your login info?",
                           message="We can save your login info on this device so you "
                                   "don't need to enter it again.",
                           buttons=[("Save", "android:id/button1"),
                                    ("Not now", "android:id/button2")], back=True),
        "terms": dict(window="app", title="We're updating our Terms and Privacy Policy",
                      message="Review the updates and agree to keep using Instagram.",
                      buttons=[("Agree and continue", "android:id/button1")], back=False),
        "photos": dict(window=PERMISSION,
                       title="Allow Instagram to access photos and videos on this device?",
                       buttons=[("Allow", PERMISSION + ":id/permission_allow_button"),
                                (DONT_ALLOW, PERMISSION + ":id/permission_deny_button")],
                       ids=PERMISSION_IDS, back=True),
    },
}

#: Block screens by kind (the texts are the apps' own, as users quote them):
#: Instagram "Try Again Later" / "We restrict certain activity to protect our community"
#: (reported by users in April 2024: noticias.marketingdigitalenrique.com,
#: "why-does-instagram-say-we-restrict-certain-activity"), the older "Action Blocked"
#: (qainsta.com, "what-does-action-blocked-mean-on-instagram"); TikTok's "You're tapping
#: too fast. Take a break." (old.artsprofessional.co.uk, "why-is-tiktok-saying-im-tapping-
#: too-fast") is a toast; its "Maximum number of attempts reached" dialog is INVENTED;
#: "You are following too fast." is the app's reply to a refused follow, shown as a
#: toast (SysAdminDoc/hushfeed's follow diagnostics); the verification puzzle's window
#: is INVENTED around its desc "verify captcha" (a Chinese Auto.js trill farm).
#: From docs/research/sources_s6.md gap 4: TikTok's "You are visiting our service too
#: frequently" (LBH; drawn as a toast: INVENTED) and the follow cap's top banner (BYTE's
#: screenshots, also the lost session's banner); Instagram's "Try Again Later" body
#: "We limit how often..." under a "Follow limit reached" title (web bots; the
#: dialog's frame is the other blocks'). Instagram's warning "We suspect automated
#: behavior on your account" with its body and Dismiss button as web bots meet it
#: (a puppeteer bot's handleAutomatedBehaviorWarning; the frame is the other blocks').
BLOCKS = {
    "instagram": {
        "try_again_later": dict(title="Try Again Later",
                                message="We restrict certain activity to protect our "
                                        "community. Tell us if you think we made a "
                                        "mistake.",
                                buttons=[("OK", "android:id/button1"),
                                         ("Tell us", "android:id/button2")]),
        "action_blocked": dict(title="Action Blocked",
                               message="This action was blocked. Please try again later. "
                                       "We restrict certain content and actions to "
                                       "protect our community.",
                               buttons=[("OK", "android:id/button1"),
                                        ("Tell us", "android:id/button2")]),
        "follow_limit": dict(title="Follow limit reached",
                             message="We limit how often you can do certain things on "
                                     "Instagram to protect our community.",
                             buttons=[("OK", "android:id/button1")]),
        "suspect_automated": dict(title="We suspect automated behavior on your account",
                                  message="To prevent your account from being temporarily "
                                          "restricted, you can let us know that this was "
                                          "you.",
                                  buttons=[("Dismiss", "android:id/button1")]),
    },
    "tiktok": {
        "tapping_too_fast": dict(toast="You're tapping too fast. Take a break."),
        "following_too_fast": dict(toast="You are following too fast."),
        "visiting_too_frequently": dict(
            toast="You are visiting our service too frequently. Please try again later."),
        "follow_cap": dict(toast="Limit reached. You are unable to follow more people."),
        "session_expired": dict(toast="Session expired, please sign in again"),
        "captcha": dict(title="Security verification", desc="verify captcha",
                        message="Drag the puzzle piece into place",
                        buttons=[("Refresh", "android:id/button1")]),
        "try_again_later": dict(title="Maximum number of attempts reached",
                                message="Try again later.",
                                buttons=[("OK", "android:id/button1")]),
    },
}


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


#: How TikTok shows a handle (directional isolates around it), and the handle back.
HANDLE_MARKS = "\u200e\u2068%s\u2069"


def unmarked(text: str) -> str:
    return text.strip("\u200e\u2068\u2069")


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


def app_dialog(box, title, *buttons):
    """An INVENTED dialog of the app: its title and its buttons, each (label, box)."""
    return ui_node("android.widget.FrameLayout", box, children=[text_node(*title)] + [
        text_node(label, where, clickable=True, cls="android.widget.Button")
        for label, where in buttons])


# ---------------------------------------------------------------------------------------
# The base of both apps
# ---------------------------------------------------------------------------------------

class ModelApp(App):
    """A small state machine: `screen` names what shows, `render_<screen>` draws it
    (mostly from a real dump), `tap_<screen>` reacts to the nodes under a tap.

    State a test can read: posts, comments, follows (user -> bool, of the current
    account; `follow_state` has every account's), likes, collects, feed_follows,
    current (account), `actions` (every follow, unfollow, like, collect, comment and
    post with the account that did it), typed text in `fields`.
    """

    PLAYING = ("home", "video")
    platform = ""

    def __init__(self, package, *, accounts=("sim_user",), users=None, seed=1,
                 popup_rate=0.0, popup_on_tap_rate=0.0, popup_kinds=None, locale="en",
                 upload_seconds=0.5, upload_prepare_seconds=0.0, clock=time.monotonic,
                 media_access="all", follow_reverts_after=None):
        super().__init__(package=package)
        #: the photos permission: "all", "limited", "denied", None (not asked yet: the
        #: prompt shows when the gallery opens)
        self.media_access = media_access
        self.locale = locale                    #: "fr": the labels of the real dumps

        self.accounts = list(accounts)          #: logged in on this phone, in order
        self.current = self.accounts[0]
        self.users = dict(users or {})          #: profiles that exist (-> followed by
        self.follow_state = {self.current: dict(self.users)}   # the first account)
        self.rng = random.Random(seed)
        self.popup_rate = popup_rate            #: a pop-up on a new screen (in the dump)
        self.popup_on_tap_rate = popup_on_tap_rate  #: one between a dump and the tap
        self.popup_kinds = list(popup_kinds or POPUP_KINDS[self.platform])
        self.screen = "home"
        self.popup = None
        self.blocks = {}                        #: action -> block kind, for the next one
        #: seconds after which a follow shows Follow again, silently (the server
        #: refused it: a soft block); None: follows hold
        self.follow_reverts_after = follow_reverts_after
        self.reverts = []                       #: (account, user, when), pending
        self.toast, self.toast_dumps = "", 0
        self.actions = []
        self.fields = collections.defaultdict(str)
        self.focus = None
        self.playing = False
        self.posts, self.comments = [], collections.defaultdict(list)
        #: the next this many comments sent are taken but not listed (held for review, as
        #: the apps do with some); `held` gets them
        self.hold_comments, self.held = 0, []
        self.likes = self.collects = self.feed_follows = 0
        self.selected, self.media_mode = [], "video"
        #: an upload takes this long from the publishing tap, by `clock`: on a phone it
        #: moves with time, whatever the looks (a model moving per look would count the
        #: same looks whatever a script's waiting does)
        self.upload_seconds, self.clock = upload_seconds, clock
        #: before its progress shows, the app prepares the media this long (compressing
        #: a long video) showing nothing of the upload: its feed or profile, bare
        self.upload_prepare_seconds = upload_prepare_seconds
        self.upload_pct, self.upload_started = 0, None
        self.upload_looks = 0                   #: dumps taken while an upload showed
        self.target = None                      #: the profile / post / sound on screen
        self.query = ""

    @property
    def follows(self):
        """user -> followed, for the account the app acts as now."""
        return self.follow_state.setdefault(self.current, {u: False for u in self.users})

    @follows.setter
    def follows(self, value):
        self.follow_state[self.current] = dict(value)

    def start_upload(self):
        self.upload_pct, self.upload_started = 0, self.clock()

    def upload_percent(self):
        """How far the upload is, by the time since the publishing tap; None while the
        app still prepares the media (`upload_prepare_seconds`: nothing shows)."""
        elapsed = self.clock() - self.upload_started - self.upload_prepare_seconds
        if elapsed < 0:
            return None
        if self.upload_seconds <= 0:
            return 100
        return min(100, int(100 * elapsed / self.upload_seconds))

    def uploading(self) -> bool:
        """An upload is being prepared or sent: the app still reads its media."""
        return self.upload_started is not None and (self.upload_percent() or 0) < 100

    def record(self, action, target=None):
        self.actions.append({"account": self.current, "action": action, "target": target})

    def send_comment(self):
        """The typed comment is sent: listed, or held (``hold_comments``); the field
        empties either way."""
        text, where = self.fields.pop("comment"), self.target or "feed"
        if self.hold_comments:
            self.hold_comments -= 1
            self.held.append((where, text))
        else:
            self.comments[where].append(text)

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
        self.popup, self.toast = None, ""
        self.goto("closed")

    def dump(self) -> str:
        self.upload_looks += self.screen == "uploading"
        self._undo_refused_follows()
        root = self.render()
        if self.toast:                          # a toast is a window of its own
            self.toast_dumps -= 1
            root.append(_toast_window(self.toast, self.package))
            if self.toast_dumps <= 0:
                self.toast = ""
        if self.popup:
            root.append(self.popup["window"])
        if self.locale == "fr":                 # the ids stay, the labels are French
            for el in root.iter("node"):
                for attr in ("text", "content-desc"):
                    if el.get(attr) in ENGLISH_TO_FRENCH:
                        el.set(attr, ENGLISH_TO_FRENCH[el.get(attr)])
        return serialize_hierarchy(root)

    def render(self) -> ET.Element:
        return getattr(self, "render_" + self.screen)()

    def tap(self, x, y):
        if self.popup:                          # modal: only its buttons do something
            self._tap_popup(x, y)
            return
        if self.popup_on_tap_rate and self.screen != "closed" \
                and self.rng.random() < self.popup_on_tap_rate:
            self.show_popup(self.rng.choice(self.popup_kinds), over=(x, y))
            return                              # it came first: the tap hits it
        hit_list = hits(self.render(), x, y)
        handler = getattr(self, "tap_" + self.screen, None)
        if handler is not None:
            handler(hit_list, x, y)

    def _tap_popup(self, x, y):
        popup = self.popup
        if popup["tutorial"]:
            return                              # it wants a swipe up: the tap is lost
        for el in popup["window"].iter("node"):
            if el.get("clickable") == "true" and _inside(el, x, y):
                self.close_popup()
                if popup.get("on_button"):
                    popup["on_button"](el.get("text") or el.get("content-desc"))
                return
        # outside the buttons (or outside the dialog): swallowed

    def close_popup(self):
        self.popup = None
        if self.screen in self.PLAYING:
            self._play()

    def text(self, s):
        if self.popup:
            return                              # the dialog has the focus
        if self.focus:
            self.fields[self.focus] += s

    def set_text(self, s):
        if self.focus and not self.popup:
            self.fields[self.focus] = s

    def key(self, code) -> bool:
        if self.popup:
            if code == "KEYCODE_BACK" and (self.popup["back"] or self.popup["tutorial"]):
                self.close_popup()
            return True
        if code == "KEYCODE_DEL" and self.focus:
            self.fields[self.focus] = self.fields[self.focus][:-1]
        elif code == "KEYCODE_ENTER":
            self.on_enter()
        elif code == "KEYCODE_BACK":
            return self.on_back()
        return True

    def swipe(self, x1, y1, x2, y2, ms):
        if self.popup:
            if self.popup["tutorial"] and y1 - y2 > 300:
                self.close_popup()              # swiped up: gone, the feed stays
            return
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
            self.show_popup(self.rng.choice(self.popup_kinds))
        if screen == "gallery" and self.media_access is None:
            self.ask_media_access()

    def ask_media_access(self):
        """The photos and videos prompt, the first time the gallery opens; the answer
        decides what the gallery shows."""
        spec = dict(MEDIA_PROMPT, title=MEDIA_PROMPT["title"].format(app=self.label))
        self._set_popup(spec, kind="media", on_button=lambda label: setattr(
            self, "media_access", {"Allow all": "all", "Select photos and videos":
                                   "limited"}.get(label, "denied")))

    def inject_popup(self, title="Turn on notifications?", button="Not now"):
        """A pop-up now (tests of a pop-up in the middle of a flow): an AlertDialog
        with one closing button. Like TikTok, the video pauses while a dialog has the
        focus, and plays again when it closes."""
        self._set_popup(dict(window="app", title=title, buttons=[(button,
                                                                   "android:id/button1")],
                             back=True))

    def show_popup(self, kind, over=None):
        """A pop-up of POPUP_KINDS now; `over`: a point it covers (the tap's target)."""
        self._set_popup(POPUP_KINDS[self.platform][kind], over, kind)

    def block_next(self, action="follow", kind=None):
        """The next `action` ("follow", "comment", "like", "post") is refused: nothing
        changes and the app's block screen shows (BLOCKS; default the first kind)."""
        self.blocks[action] = kind or next(iter(BLOCKS[self.platform]))

    def blocked(self, action) -> bool:
        """True (and the block screen shows) when this action is to be refused."""
        kind = self.blocks.pop(action, None)
        if kind is None:
            return False
        spec = BLOCKS[self.platform][kind]
        self.record("blocked " + action, self.target)
        if "toast" in spec:
            self.toast, self.toast_dumps = spec["toast"], 2
        else:
            self._set_popup(dict(spec, window="app", back=True), kind="block:" + kind)
        return True

    def _set_popup(self, spec, over=None, kind="", element=None, on_button=None):
        """Show a pop-up: a window drawn from `spec` (or `element`, drawn already);
        `on_button(label)` is told which of its buttons closed it."""
        if element is None:
            element = self._popup_window(spec, over)
        if spec.get("desc"):
            element.set("content-desc", spec["desc"])
        self.popup = {"kind": kind, "window": element, "tutorial": bool(spec.get("tutorial")),
                      "back": spec.get("back", True), "on_button": on_button}
        self._pause()

    def _popup_window(self, spec, over=None):
        """The window of a POPUP_KINDS / BLOCKS spec, `over` a point it covers."""
        window = spec.get("window", "app")
        package = self.package if window == "app" else window
        if spec.get("tutorial"):
            element = ui_node("android.widget.FrameLayout", (0, 0, W, H), package=package,
                              clickable=True, children=[
                ui_node("android.widget.TextView", (140, 1500, 940, 1600),
                        text=spec["title"], package=package)])
        elif spec.get("stacked"):               # Android 12+'s grant dialog: buttons
            buttons = spec["buttons"]            # one under the other, deny last
            top = 700
            element = ui_node("android.widget.LinearLayout", (90, top, 990, top + 300 + 150 *
                                                                len(buttons)),
                              package=package, resource_id=spec["ids"]["panel"], children=[
                ui_node("android.widget.TextView", (150, top + 60, 930, top + 240),
                        text=spec["title"], resource_id=spec["ids"]["title"])] + [
                ui_node("android.widget.Button", (150, top + 280 + 150 * i, 930,
                                                  top + 400 + 150 * i),
                        text=label, resource_id=rid, clickable=True, focusable=True)
                for i, (label, rid) in enumerate(buttons)])
        else:
            top = 820
            if over is not None:                # drawn right over the tapped point
                top = max(200, min(H - 900, over[1] - 300))
            buttons = [(label, rid.replace("{pkg}", self.package))
                       for label, rid in spec.get("buttons", ())]
            element = alert_window(package, spec.get("title", ""), spec.get("message", ""),
                                   buttons, bounds=(90, top, 990, top + 680),
                                   ids=spec.get("ids"))
        return element

    def _play(self):
        """A playing video keeps uiautomator from getting an idle state: the next three
        dumps fail unless a tap pauses it (a state, not a count: playing again does not
        add more failures than three)."""
        self.playing = True
        if self.device is not None:
            with self.device.lock:
                missing = 3 - len(self.device._dump_failures)
            if missing > 0:
                self.device.fail_dumps(missing)

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
        """Media of the camera folder that the scanner knows, newest first (none when
        the app may not see every photo: the pushed ones were not picked)."""
        if self.media_access != "all":
            return []
        fs = self.device.fs
        scanned = {path: n for n, path in enumerate(self.device.media_scans)}
        files = [p for p in list(fs.files) if p.startswith(CAMERA_DIR) and p in scanned]
        return sorted(files, key=lambda p: (fs.files[p].mtime, scanned[p]), reverse=True)

    def on_enter(self):
        pass

    def on_back(self) -> bool:
        back = {"comments": "video", "comment_gallery": "comments",
                "switcher": "own_profile", "gallery": "camera",
                "camera": "home", "search": "home", "search_results": "search",
                "profile": "home", "missing": "home", "editor": "home", "post": "editor",
                "profile_menu": "own_profile", "settings": "own_profile"}
        if self.screen in back:
            self.goto(back[self.screen])
            return True
        return False

    # -- following (both apps) -------------------------------------------------------------
    def set_following(self, following: bool) -> None:
        """A tap on Follow / Following of the profile on screen, unless blocked."""
        if following and self.blocked("follow"):
            return
        self.follows[self.target] = following
        self.record("follow" if following else "unfollow", self.target)
        if following and self.follow_reverts_after is not None:
            self.reverts.append((self.current, self.target,
                                 self.clock() + self.follow_reverts_after))

    def _undo_refused_follows(self):
        """`follow_reverts_after`: a follow the server refused shows Follow again."""
        for account, user, when in list(self.reverts):
            if self.clock() >= when:
                self.reverts.remove((account, user, when))
                self.follow_state.setdefault(account, {})[user] = False
                self.actions.append({"account": account, "action": "follow undone",
                                     "target": user})

    # -- the account switcher (both apps) --------------------------------------------------
    def switcher_rows(self, top, package, name_id=""):
        """INVENTED rows of the account list (no dump of it): one clickable row per
        logged-in account (name, with `name_id`, and a radio button checked for the
        current one), then "Add account"."""
        rows = []
        for i, name in enumerate(self.accounts):
            y = top + 150 * i
            rows.append(ui_node("android.widget.LinearLayout", (0, y, W, y + 140),
                                clickable=True, children=[
                text_node(name, (180, y + 30, 800, y + 110), rid=name_id),
                ui_node("android.widget.RadioButton", (920, y + 30, 1040, y + 110),
                        checkable=True, checked=name == self.current)]))
        y = top + 150 * len(self.accounts)
        rows.append(ui_node("android.widget.LinearLayout", (0, y, W, y + 140), clickable=True,
                            children=[text_node("Add account", (180, y + 30, 800, y + 110))]))
        return rows

    def tap_switcher(self, h, x, y):
        """The account switcher (both apps): tapping an account's row makes it current."""
        for el in h:
            for node in el.iter("node"):
                if node.get("text") in self.accounts and el.get("clickable") == "true":
                    self.current = node.get("text")
                    self.goto("home")
                    return


def _inside(el, x, y) -> bool:
    x1, y1, x2, y2 = bounds(el)
    return x1 <= x < x2 and y1 <= y < y2


def _full_name(user: str) -> str:
    """A display name unlike the handle ("carol_x" -> "Carol X")."""
    return user.replace("_", " ").replace(".", " ").title()


def _texts(el) -> set:
    return {n.get("text") for n in el.iter("node")}


def _parent_row(hit_list):
    return next(el for el in hit_list if short_id(el) == "user_item")


def _toast_window(text, package):
    """A toast: a window of the app with one TextView (android:id/message, as
    frameworks/base/core/res/res/layout/transient_notification.xml)."""
    return ui_node("android.widget.LinearLayout", (140, 1900, 940, 2040), package=package,
                   children=[ui_node("android.widget.TextView", (170, 1920, 910, 2020),
                                     text=text, resource_id="android:id/message",
                                     package=package)])


# ---------------------------------------------------------------------------------------
# TikTok
# ---------------------------------------------------------------------------------------

class TikTokApp(ModelApp):
    """TikTok 47.0.3 or 43.1.4 under either package (global or Asia)."""

    label = "TikTok"
    launch_activity = "com.ss.android.ugc.aweme.splash.SplashActivity"
    hosts = ("tiktok.com",)
    platform = "tiktok"

    def __init__(self, version="47.0.3", package="com.zhiliaoapp.musically",
                 sounds=("original sound - sim_user",), publish_dialog=False,
                 recommended=("Trending beat - sim_dj", "Lo-fi morning - sim_band"),
                 link_row=True, showcase=(), product_steps=(), comment_images=True,
                 switcher_paths=("name", "body", "settings"), first_feed_tutorial=False,
                 **kw):
        super().__init__(package, **kw)
        self.version = version
        #: the next feed shown carries the "Swipe up for more" tutorial (a first start)
        self.first_feed_tutorial = first_feed_tutorial
        self.sounds = list(sounds)
        #: the sound panel's recommended list; the mix, in TikTok's % (100 = unchanged)
        self.recommended = list(recommended)
        self.panel, self.sound_query = "list", None
        self.volumes = {"original": 100, "added": 100}
        #: TikTok Shop: the post screen's Add link row, and the showcase's products
        self.link_row, self.showcase, self.product = link_row, list(showcase), None
        #: what TikTok asks after a product's Add, in order: "confirm" (an "Add
        #: product?" dialog), "name" (the product-name page), as GSK met them
        self.product_steps, self.product_pending = tuple(product_steps), None
        self.publish_dialog = publish_dialog
        #: the comment bar's image button (TikTok shows it to some accounts only); the
        #: image attached to the comment being written; comments sent with their image
        self.comment_images, self.comment_image = comment_images, None
        self.image_comments = []
        self.switcher_paths = tuple(switcher_paths)   #: ways to the account list
        self.settings_scrolled = False
        self.sound = None

    def share_screen(self, activity):
        self.new_draft()
        return "editor"

    def goto(self, screen, focus=None):
        super().goto(screen, focus)
        if screen == "home" and self.first_feed_tutorial and self.popup is None:
            self.first_feed_tutorial = False
            self.show_popup("swipe_tutorial")

    def new_draft(self):
        """A new post starts without an added sound, the mix unchanged, no product."""
        self.sound, self.volumes = None, {"original": 100, "added": 100}
        self.product = None

    def open_url(self, url):
        super().open_url(url)
        parts = urllib.parse.urlsplit(url)
        path = parts.path.strip("/")
        if path.startswith("@") and "/video/" not in path:
            self.target = path[1:].split("/")[0]
            self.goto("profile" if self.target in self.users else "missing")
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
            self.new_draft()
            self.goto("camera")
        elif hit(h, desc="Profile"):
            self.goto("own_profile")
        elif hit(h, desc="Search"):
            self.goto("search", focus="search")
        elif hit(h, desc_prefix="Like video"):
            if not self.blocked("like"):
                self.likes += 1
                self.record("like", getattr(self, "video_index", 0))
        elif hit(h, rid="ivc"):
            if not self.blocked("follow"):
                self.feed_follows += 1
                self._feed_followed_at = getattr(self, "video_index", 0)
                self.record("feed follow", getattr(self, "video_index", 0))
        elif hit(h, desc_prefix="Add or remove this video from Favorites"):
            self.collects += 1
            self.record("collect", getattr(self, "video_index", 0))
        elif hit(h, desc_prefix="Read or add comments"):
            self.goto("comments")
        elif self.playing:
            self._pause()
        else:
            self._play()

    tap_video = tap_home

    # -- comments. The sheet is INVENTED, except its bar, which follows the real dumps
    # of the sheet (taktik-bot tt4314_fr_comment_sheet_empty @e9e10ca, tt4703_fr_comment_
    # sheet @b1865b4): the EditText (dpl / ejs) and an icon row (j21 / kjk) of the image
    # Button (jfd / l12, desc an unresolved resource "@2131823358"), Stickers and Mention.
    # Over the closed bar lies a clickable overlay (l74 / mzp in the dumps): a tap on it,
    # icons included, opens the composer, whose tool row holds the image button (as the
    # ES project saw it). The image button opens the gallery (the real 47.0.3 gallery
    # dump: TikMatrix's docs say the image is "selected as the first image in the
    # gallery"); the attachment's thumbnail above the field is INVENTED.
    def _bar_ids(self):
        """(field, icon row, image button, the overlay over the closed bar)."""
        return ("dpl", "j21", "jfd", "l74") if self.version.startswith("43") else \
            ("ejs", "kjk", "l12", "mzp")

    def render_comments(self):
        root = self.render_home()
        rows = [text_node(c, (40, 1000 + 90 * i, 1040, 1080 + 90 * i))
                for i, c in enumerate(self.comments[self.target or "feed"][-8:])]
        typed = self.fields["comment"]
        field_id, row_id, image_id, cover_id = (f"{self.package}:id/{i}"
                                                for i in self._bar_ids())
        field = ui_node("android.widget.EditText", (40, 2200, 700, 2320), resource_id=field_id,
                        text=typed or "Add comment...", clickable=True, focusable=True,
                        focused=self.focus == "comment")
        icons = [ui_node("android.widget.Button", (710, 2210, 810, 2310), clickable=True,
                         resource_id=image_id, desc="@2131823358")] if self.comment_images else []
        icons += [ui_node("android.widget.ImageView", (815, 2210, 915, 2310), clickable=True,
                          desc="Stickers"),
                  ui_node("android.widget.ImageView", (920, 2210, 1020, 2310), clickable=True,
                          desc="Mention someone")]
        bar = [field, ui_node("android.widget.LinearLayout", (710, 2210, 1020, 2310),
                              resource_id=row_id, children=icons)]
        if self.focus != "comment":     # the closed bar: a tap anywhere opens the composer
            bar.append(ui_node("android.view.View", (40, 2200, 1020, 2320), clickable=True,
                               resource_id=cover_id))
        if self.comment_image:
            bar.append(ui_node("android.widget.ImageView", (40, 2040, 200, 2190)))
        send = [ui_node("android.widget.ImageView", (1025, 2200, 1075, 2320),
                        desc="Post comment", clickable=True)] if typed else []
        rows = [ui_node("androidx.recyclerview.widget.RecyclerView", (40, 1000, 1040, 1800),
                        scrollable=True, children=rows)]     # the comments: a list
        overlay(root, ui_node("android.widget.FrameLayout", (0, 900, W, H), clickable=True,
                              children=[text_node("Comments", (40, 920, 600, 990))] + rows
                              + bar + send), package=self.package)
        return root

    def tap_comments(self, h, x, y):
        _, _, image, cover = self._bar_ids()
        if hit(h, desc="Post comment"):
            if self.blocked("comment"):
                return
            self.send_comment()
            if self.comment_image:
                self.image_comments.append((self.target or "feed", self.comment_image))
                self.comment_image = None
            self.record("comment", self.target or "feed")
        elif self.focus != "comment" and hit(h, rid=cover):
            self.focus = "comment"                  # the composer opens, whatever was hit
        elif hit(h, rid=image):
            self.selected = []
            self.goto("comment_gallery")
        elif any("EditText" in el.get("class") for el in h):
            self.focus = "comment"

    def render_comment_gallery(self):
        return self.render_gallery()

    def tap_comment_gallery(self, h, x, y):
        """One image: its Next goes back to the comment bar with the image attached."""
        if hit(h, rid="xyk"):
            if self.selected:
                self.comment_image = self.selected[-1]
                self.goto("comments")
            return
        self.tap_gallery(h, x, y)
        self.selected = self.selected[-1:]           # one image

    def on_stop(self):
        super().on_stop()
        self.comment_image = None                  # a fresh start has no attachment

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
        root = load("tt4703_fr_publish_editor_no_sound", self.package)
        if self.sound:                  # the pill names the sound once one is added
            first(root, rid="tv_top_text").set("text", self.sound)
        return root

    def tap_editor(self, h, x, y):
        if hit(h, rid="q03") or hit(h, text="Next"):
            self.fields["caption"] = ""
            self.goto("post")
        elif hit(h, rid="e1p"):
            self.panel = "list"
            self.goto("sound_panel")

    # -- the editor's sound panel (INVENTED layout: no dump of it was published). What
    # it holds follows edde746/tiktok-uploader and AIClipCreator's uploader (a search
    # magnifier, rows in a RecyclerView, "Volume" with two SeekBars, original sound
    # first, that take a tap at a point, "Done"; Back closes the panel) and TikMatrix's
    # form (the recommended list; the bars' 0-200 % scale with 100 % in the middle).
    SHEET_TOP = 1150

    def _sheet_rows(self, titles):
        return ui_node("androidx.recyclerview.widget.RecyclerView",
                       (0, 1450, W, 2250), scrollable=True, children=[
            ui_node("android.widget.LinearLayout", (0, 1450 + 150 * i, W, 1590 + 150 * i),
                    clickable=True, selected=t == self.sound, children=[
                        text_node(t, (180, 1470 + 150 * i, 900, 1540 + 150 * i)),
                        text_node("", (950, 1480 + 150 * i, 1040, 1560 + 150 * i),
                                  desc="Selected" if t == self.sound else "")])
            for i, t in enumerate(titles)])

    def render_sound_panel(self):
        root = self.render_editor()
        sheet = [ui_node("android.widget.FrameLayout", (0, self.SHEET_TOP, W, H))]
        if self.panel == "volume":
            for i, (name, key) in enumerate((("Original sound", "original"),
                                             ("Added sound", "added"))):
                y = 1350 + 300 * i
                sheet += [text_node(name, (60, y, 700, y + 80)),
                          text_node(f"{self.volumes[key]}%", (880, y, 1040, y + 80)),
                          ui_node("android.widget.SeekBar", (60, y + 100, 1020, y + 200),
                                  clickable=True, focusable=True)]
            sheet.append(text_node("Done", (700, 2050, 1040, 2180), clickable=True,
                                   cls="android.widget.Button"))
        elif self.panel == "search":
            typed = self.fields["sound_search"]
            sheet += [ui_node("android.widget.EditText", (60, 1200, 900, 1320),
                              text=typed or "Search", clickable=True,
                              focused=self.focus == "sound_search"),
                      text_node("Search", (900, 1200, 1060, 1320), clickable=True)]
            if self.sound_query is not None:
                q = self.sound_query.lower()
                found = [t for t in dict.fromkeys(self.sounds + self.recommended)
                         if q in t.lower()]
                sheet.append(self._sheet_rows(found) if found else
                             text_node("No results found", (60, 1500, 1040, 1600)))
        else:
            sheet += [text_node("Recommended", (60, 1200, 400, 1300), clickable=True),
                      text_node("Favorites", (420, 1200, 760, 1300), clickable=True),
                      ui_node("android.widget.ImageView", (900, 1200, 1040, 1300),
                              clickable=True, desc="Search"),
                      self._sheet_rows(self.recommended),
                      text_node("Volume", (60, 2260, 400, 2330), clickable=True)]
        overlay(root, *sheet, package=self.package)
        return root

    def tap_sound_panel(self, h, x, y):
        if y < self.SHEET_TOP:                           # outside the sheet: closed
            self.goto("editor")
            return
        for el in h:
            cls, text = el.get("class", ""), el.get("text", "")
            if self.panel == "volume" and cls.endswith("SeekBar"):
                x1, _, x2, _ = bounds(el)
                key = "original" if bounds(el)[1] < 1600 else "added"
                self.volumes[key] = round(200 * (x - x1) / (x2 - x1))
                return
            if self.panel == "volume" and text == "Done":
                self.panel = "list"
                return
            if self.panel == "search" and cls.endswith("EditText"):
                self.focus = "sound_search"
                return
            if self.panel == "search" and text == "Search":
                self.on_enter()
                return
            if self.panel == "list" and el.get("content-desc") == "Search":
                self.panel, self.sound_query = "search", None
                self.fields["sound_search"] = ""
                self.focus = "sound_search"
                return
            if self.panel == "list" and text == "Volume":
                self.panel = "volume" if self.sound else "list"   # nothing to mix yet
                return
            if cls.endswith("LinearLayout") and el.get("clickable") == "true":
                self.sound = el.find("node").get("text")
                return

    def on_back(self):
        if self.screen == "comments":                # the sheet closes on what it covered
            self.screen, self.focus = "video" if self.target else "home", None
            return True
        if self.screen in ("link_sheet", "showcase"):
            self.goto("post")
            return True
        if self.screen == "sound_panel":             # one level up: list, then editor
            if self.panel == "list":
                self.goto("editor")
            self.panel, self.focus = "list", None
            return True
        return super().on_back()

    def render_post(self):
        root = load("tt4703_fr_publish_post_screen", self.package)
        caption = first(root, rid="h8e")
        caption.set("text", self.fields["caption"] or "Add a description…")
        caption.set("focused", "true" if self.focus == "caption" else "false")
        self._link_row(root)
        if self.screen == "publish_dialog":      # INVENTED: no dump of this dialog
            overlay(root, app_dialog((0, 1500, W, H), ("Publish video publicly?",
                                                       (60, 1550, 1020, 1650)),
                                     ("Publish now", (60, 1700, 1020, 1820)),
                                     ("Cancel", (60, 1850, 1020, 1970))),
                    package=self.package)
        return root

    def _link_row(self, root):
        """The post screen's "Add link" row (the dump anonymised its noun), or the
        product it holds once one is added; gone for an account without it."""
        for el in root.iter("node"):
            if "name_23" in el.get("text", "") + el.get("content-desc", ""):
                label = "1 product" if self.product else "Add link"
                el.set("text" if el.get("text") else "content-desc", label)
        if not self.link_row:
            remove(root, lambda el: el.get("text") in ("Add link", "1 product")
                   or el.get("content-desc") in ("Add link", "1 product"))

    # The link sheet and the showcase (INVENTED: no dump; TikTok Seller University's
    # manual: "add link" -> products; TikMatrix: "the first product link in the
    # showcase").
    def render_link_sheet(self):
        root = self.render_post()
        overlay(root, ui_node("android.widget.FrameLayout", (0, 1600, W, H)),
                text_node("Products", (60, 1700, 1040, 1820), clickable=True),
                text_node("Cancel", (60, 2000, 1040, 2120), clickable=True),
                package=self.package)
        return root

    def tap_link_sheet(self, h, x, y):
        if hit(h, text="Products"):
            self.goto("showcase")
        elif hit(h, text="Cancel") or y < 1600:
            self.goto("post")

    def render_showcase(self):
        rows = [node for i, name in enumerate(self.showcase) for node in (
            text_node(name, (60, 300 + 160 * i, 700, 420 + 160 * i)),
            text_node("Add", (800, 300 + 160 * i, 1040, 420 + 160 * i), clickable=True,
                      cls="android.widget.Button"))]
        return hierarchy(text_node("Showcase", (40, 150, 1040, 260)), *(rows or [
            text_node("No products in your showcase", (60, 300, 1040, 420))]),
            package=self.package)

    def tap_showcase(self, h, x, y):
        if hit(h, text="Add"):
            index = (y - 300) // 160
            self.product_pending = self.showcase[index]
            self._next_product_step(None)

    def _next_product_step(self, done):
        steps = list(self.product_steps)
        later = steps[steps.index(done) + 1:] if done in steps else steps
        if later:
            self.goto({"confirm": "product_confirm", "name": "product_name"}[later[0]])
        else:
            self.product, self.product_pending = self.product_pending, None
            self.goto("post")

    # After Add (GSK, ran; INVENTED screens from its description): an "Add product?"
    # dialog over the showcase, its buttons Cancel and Add; a product-name page, the
    # name in an EditText, a wide Add at the bottom.
    def render_product_confirm(self):
        root = self.render_showcase()
        overlay(root, app_dialog((90, 900, 990, 1500), ("Add product?", (140, 950, 940, 1050)),
                                 ("Cancel", (140, 1350, 500, 1450)),
                                 ("Add", (580, 1350, 940, 1450))), package=self.package)
        return root

    def tap_product_confirm(self, h, x, y):
        if 900 <= y < 1500 and 90 <= x < 990:          # a modal: only its buttons act
            if hit(h, text="Add"):
                self._next_product_step("confirm")
            elif hit(h, text="Cancel"):
                self.goto("showcase")

    def render_product_name(self):
        return hierarchy(
            text_node("Add product name", (40, 150, 1040, 260)),
            ui_node("android.widget.EditText", (40, 400, 1040, 520),
                    text=self.product_pending or ""),
            text_node("Add", (40, 2100, 1040, 2220), clickable=True,
                      cls="android.widget.Button"), package=self.package)

    def tap_product_name(self, h, x, y):
        if hit(h, text="Add"):
            self._next_product_step("name")

    def tap_post(self, h, x, y):
        if hit(h, text="Add link") or hit(h, desc="Add link"):
            self.goto("link_sheet")
        elif hit(h, rid="h8e"):
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
                           "sound": self.sound, "volumes": dict(getattr(self, "volumes", {})),
                           "product": getattr(self, "product", None),
                           "account": self.current})
        self.new_draft()
        self.record("post", self.fields["caption"])
        self.start_upload()

    # -- uploading, posted -----------------------------------------------------------------
    def render_uploading(self):
        percent = self.upload_percent()
        if percent is None:                        # preparing: the feed, nothing of it
            return self.render_own_profile() if self.version.startswith("43") \
                else self.render_home()
        self.upload_pct = percent
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
    # The real 43.1.4 own profile (after posting). Its top bar holds "Add friends" (wh8),
    # profile views, share and the "Profile menu" button, with the middle empty: TikTok
    # draws the account's name there with a chevron that opens the account list (an
    # anonymous trill farm's notes). The display name in the body (qf8, in the dump)
    # opens the list too: taktik-bot taps it on 43.1.4 (TK-SW). The name at the top,
    # the profile menu sheet ("Settings and privacy") and the settings list (its
    # "Switch account" row under the fold, after a swipe) are INVENTED (no dump of
    # them); the "Switch account" sheet follows taktik-bot's captured trees.
    def render_own_profile(self, progress=False):
        root = load("tt4314_fr_publish_posted", self.package)   # real 43.1.4 own profile
        first(root, rid="qh5").set("text", "@" + self.current)
        if not progress:
            remove(root, lambda el: re.fullmatch(r"\d+%", el.get("text", "")))
        if "name" in self.switcher_paths:
            overlay(root, ui_node("android.widget.LinearLayout", (340, 148, 740, 253),
                                  clickable=True, children=[
                text_node(self.current, (360, 160, 660, 240)),
                ui_node("android.widget.ImageView", (660, 170, 720, 230))]),
                package=self.package)
        if self.screen == "switcher":
            overlay(root, self.switch_sheet(), package=self.package)
        elif self.screen == "profile_menu":
            items = ["TikTok Studio", "Your orders", "Balance", "Your QR code",
                     "Settings and privacy"]
            overlay(root, ui_node("android.widget.FrameLayout", (0, 1400, W, H), children=[
                ui_node("android.widget.LinearLayout", (0, 1450 + 150 * i, W, 1590 + 150 * i),
                        clickable=True, children=[text_node(t, (120, 1480 + 150 * i, 900,
                                                                 1560 + 150 * i))])
                for i, t in enumerate(items)]), package=self.package)
        return root

    render_switcher = render_profile_menu = render_own_profile

    #: the sheet's ids in taktik-bot's captured 43.1.4 tree (47.0.3's are unknown)
    SHEET_IDS = {"43": {"sheet": "f0u", "title": "nmh", "row": "k5o", "label": "ljk",
                        "check": "en4"}}

    def switch_sheet(self):
        """The "Switch account" sheet as taktik-bot's captured 43.1.4 and 46.7.3 trees
        show it (TK-SW in docs/research/sources_s5.md; the Spanish TiktokAutomator
        agrees on the rows): a "Bottom sheet" with its title, one clickable Button per
        account, the current one first, whose desc is the name and whose TextView
        shows it, the current one selected with a "Checkmark", and "Add account" as a
        row alike, last."""
        ids = self.SHEET_IDS.get(self.version[:2], {})

        def rid(part):
            return f"{self.package}:id/{ids[part]}" if part in ids else ""
        names = [self.current] + [a for a in self.accounts if a != self.current]
        rows = []
        for i, name in enumerate(names + ["Add account"]):
            y, current = 1250 + 150 * i, name == self.current
            rows.append(ui_node("android.widget.Button", (0, y, W, y + 140), desc=name,
                                clickable=True, selected=current, resource_id=rid("row"),
                                children=[text_node(name, (180, y + 30, 800, y + 110),
                                                    rid=rid("label"))] + ([ui_node(
                                    "android.widget.ImageView", (920, y + 30, 1040, y + 110),
                                    desc="Checkmark", resource_id=rid("check"))]
                                    if current else [])))
        return ui_node("android.widget.FrameLayout", (0, 1100, W, H), desc="Bottom sheet",
                       resource_id=rid("sheet"), children=[
                           text_node("Switch account", (40, 1120, 900, 1220),
                                     desc="Switch account", rid=rid("title")),
                           ui_node("android.widget.Button", (920, 1120, 1040, 1220),
                                   desc="Close", clickable=True)] + rows)

    def tap_own_profile(self, h, x, y):
        if "name" in self.switcher_paths and 148 <= y < 253 and 340 <= x < 740:
            self.goto("switcher")
        elif "body" in self.switcher_paths and hit(h, rid="qf8"):
            self.goto("switcher")           # the display name in the body (TK-SW)
        elif hit(h, desc="Profile menu"):
            self.goto("profile_menu")
        elif hit(h, desc="Home"):
            self.goto("home")
        elif hit(h, desc="Create"):
            self.goto("camera")

    def tap_profile_menu(self, h, x, y):
        if any(_texts(el) & {"Settings and privacy"} for el in h if
               el.get("clickable") == "true"):
            self.settings_scrolled = False
            self.goto("settings")
        elif y < 1400:
            self.goto("own_profile")            # a tap above the sheet closes it

    SETTINGS_ROWS = ["Account", "Privacy", "Security & permissions", "Share profile",
                     "Notifications", "LIVE", "Activity center", "Content preferences",
                     "Ads", "Playback", "Display", "Language", "Screen time",
                     "Family Pairing", "Accessibility", "Offline videos",
                     "Free up space", "Report a problem", "Support", "Terms and Policies",
                     "Switch account", "Log out"]

    def render_settings(self):
        rows = self.SETTINGS_ROWS[8:] if self.settings_scrolled else self.SETTINGS_ROWS[:13]
        if "settings" not in self.switcher_paths:
            rows = [r for r in rows if r != "Switch account"]
        items = [ui_node("android.widget.LinearLayout", (0, 300 + 150 * i, W, 440 + 150 * i),
                         clickable=True, children=[text_node(t, (120, 330 + 150 * i, 900,
                                                                  410 + 150 * i))])
                 for i, t in enumerate(rows)]
        return hierarchy(ui_node("android.widget.ImageView", (20, 140, 140, 260),
                                 desc="Back", clickable=True),
                         text_node("Settings and privacy", (200, 150, 880, 250)),
                         ui_node("androidx.recyclerview.widget.RecyclerView",
                                 (0, 290, W, H), scrollable=True, children=items),
                         package=self.package)

    def tap_settings(self, h, x, y):
        if hit(h, desc="Back"):
            self.goto("own_profile")
        elif any("Switch account" in _texts(el) for el in h if el.get("clickable") == "true"):
            self.goto("switcher")

    def swipe(self, x1, y1, x2, y2, ms):
        if self.screen == "settings" and not self.popup:
            self.settings_scrolled = y1 > y2
            return
        super().swipe(x1, y1, x2, y2, ms)

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
                self.set_following(label == "Follow")

    # -- search, sounds, missing profile (INVENTED: no copyable dumps) ---------------------
    # As on the real app, the field keeps the query after submitting; tapping it again
    # goes back to typing (keyboard and suggestions), it opens no result. The Users tab's
    # rows carry their own ids (INVENTED names): nickname, handle, a Follow button.
    def _search_field(self, text, focused):
        return ui_node("android.widget.EditText", (150, 140, 900, 270), text=text,
                       clickable=True, focusable=True, focused=focused,
                       resource_id=f"{self.package}:id/search_input")

    def render_search(self):
        typed = self.fields["search"]
        suggestions = [ui_node("android.widget.LinearLayout", (0, 320 + 130 * i, W,
                                                               440 + 130 * i),
                               clickable=True, children=[text_node(
                                   t, (120, 340 + 130 * i, 1000, 420 + 130 * i),
                                   rid=f"{self.package}:id/sug_text")])
                       for i, t in enumerate([typed, typed + " dance", typed + " edit"]
                                             if typed else [])]
        return hierarchy(self._search_field(typed or "Search", self.focus == "search"),
                         text_node("Search", (900, 140, 1060, 270), clickable=True),
                         *suggestions, package=self.package)

    def tap_search(self, h, x, y):
        if any("EditText" in el.get("class") for el in h):
            self.focus = "search"
        elif hit(h, text="Search") or any(hit([el], rid="sug_text") for el in
                                          (c for e in h for c in e.iter("node"))):
            picked = next((c.get("text") for e in h for c in e.iter("node")
                           if short_id(c) == "sug_text"), None)
            if picked:
                self.fields["search"] = picked
            self.on_enter()

    def on_enter(self):
        if self.screen == "sound_panel" and self.panel == "search":
            self.sound_query = self.fields["sound_search"]
            return
        if self.screen == "search":
            self.query, self.tab = self.fields["search"], "Top"
            self.goto("search_results")

    def _user_row(self, i, name):
        y = 450 + 200 * i
        pkg = self.package
        return ui_node("android.widget.RelativeLayout", (0, y, W, y + 190), clickable=True,
                       resource_id=f"{pkg}:id/user_item", children=[
            ui_node("android.widget.ImageView", (30, y + 20, 180, y + 170),
                    resource_id=f"{pkg}:id/avatar"),
            text_node(name.replace("_", " ").replace(".", " ").title(),
                      (210, y + 25, 760, y + 90), rid=f"{pkg}:id/nickname"),
            # the handle wrapped in directional marks, as TikTok shows every handle (TK
            # search.py and its 47.0.3 test)
            text_node(HANDLE_MARKS % name, (210, y + 95, 760, y + 150),
                      rid=f"{pkg}:id/unique_id"),
            text_node("Following" if self.follows.get(name) else "Follow",
                      (800, y + 50, 1050, y + 140), clickable=True,
                      rid=f"{pkg}:id/follow_btn", cls="android.widget.Button")])

    def render_search_results(self):
        tabs = [text_node(t, (20 + 260 * i, 300, 260 + 260 * i, 400), clickable=True,
                          desc=t) for i, t in enumerate(("Top", "Videos", "Users", "Sounds"))]
        q = self.query.lower()
        if self.tab == "Users":
            items = [self._user_row(i, u) for i, u in
                     enumerate(u for u in self.users if q in u.lower())]
        elif self.tab == "Sounds":
            items = [text_node(s, (40, 450 + 160 * i, 1040, 590 + 160 * i), clickable=True)
                     for i, s in enumerate(s for s in self.sounds if q in s.lower())]
        else:
            items = [ui_node("android.widget.FrameLayout", (0 + 540 * i, 450, 540 + 540 * i,
                                                            1200), clickable=True,
                             desc="%s video by sim_creator" % self.query) for i in range(2)]
        return hierarchy(self._search_field(self.query, False), *tabs,
                         *(items or [text_node("No results found", (40, 450, 1040, 590))]),
                         package=self.package)

    def tap_search_results(self, h, x, y):
        if any("EditText" in el.get("class") for el in h):
            self.fields["search"] = self.query      # back to typing, the query kept
            self.goto("search", focus="search")
            return
        for el in h:
            text = el.get("text", "")
            if text in ("Top", "Videos", "Users", "Sounds") and y < 400:
                self.tab = text
                return
            if self.tab == "Users" and short_id(el) == "follow_btn":
                name = unmarked(first(_parent_row(h), rid="unique_id").get("text"))
                self.target = name
                self.set_following(not self.follows.get(name))
                return
            if self.tab == "Users" and short_id(el) == "user_item":
                self.target = unmarked(first(el, rid="unique_id").get("text"))
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
    platform = "instagram"

    def __init__(self, reels_nux=False, draft=False, **kw):
        super().__init__("com.instagram.android", **kw)
        self.placement = "reel"
        self.nux_seen = False
        #: the first reel's "About Reels" sheet after Share, whose own Share posts it;
        #: a draft left by another run, offered again when the gallery opens
        self.reels_nux, self.draft = reels_nux, draft

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
            self.goto("profile" if path in self.users else "missing")
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
            if self.draft:
                self._draft_dialog()
        elif hit(h, rid="search_tab"):
            self.goto("search", focus="search")
        elif hit(h, rid="profile_tab"):
            self.goto("own_profile")
        elif hit(h, rid="feed_tab"):
            self.goto("home")
        elif hit(h, rid="row_feed_button_like"):
            self._like()
        elif hit(h, rid="row_feed_button_save"):
            self.collects += 1
            self.record("collect", "feed")
        elif hit(h, rid="row_feed_button_comment"):
            self.goto("comments")

    def _like(self):
        if not self.blocked("like"):
            self.likes += 1
            self.record("like", self.target or "feed")

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
        if self.screen in ("search", "search_results") and self.focus == "search":
            self.query = self.fields["search"]
            self.goto("search_results", focus="search")

    def set_text(self, s):
        super().set_text(s)
        if self.screen in ("search", "search_results") and self.focus == "search":
            self.query = self.fields["search"]
            self.goto("search_results" if s else "search", focus="search")

    def render_search_results(self):
        """The real typeahead page: a keyword row (the query itself, opening the full
        results) above the account rows; an avatar with a story ring opens the story."""
        root = load("ig410_fr_account_search_results")
        first(root, rid="action_bar_search_edit_text").set("text", self.query)
        first(root, rid="row_search_keyword_title").set("text", self.query)
        matches = [u for u in self.users if self.query.lower() in u.lower()]
        rows = find_all(root, rid="row_search_user_container")
        for row, name in zip(rows, matches + [None] * len(rows)):
            label = first(row, rid="row_search_user_username")
            if name is None:
                remove(root, lambda el, row=row: el is row)
            elif label is not None:
                label.set("text", name)
                first(row, rid="row_search_user_fullname").set("text", _full_name(name))
        if not matches:                          # INVENTED: no dump of an empty result
            overlay(root, text_node("No results found.", (40, 500, 1040, 600)),
                    package=self.package)
        return root

    def tap_search_results(self, h, x, y):
        if hit(h, rid="action_bar_search_edit_text"):
            self.focus = "search"
            return
        if any(short_id(el) == "row_search_avatar_with_ring" and el.get("content-desc")
               for el in h):
            self.goto("story")                   # the ring: that account's story
            return
        root = self.render_search_results()
        for row in find_all(root, rid="row_search_user_container"):
            if _inside(row, x, y):
                self.target = first(row, rid="row_search_user_username").get("text")
                self.goto("profile")
                return
        if 253 <= y < 407:                       # the keyword row: all the results
            self.on_enter()

    def on_enter(self):
        if self.screen in ("search", "search_results"):
            self.tab = "For you"
            self.goto("serp")

    # INVENTED (no dump): the full results after the keyboard's search key, with tabs;
    # the field keeps the query; "Accounts" lists rows with the typeahead rows' ids.
    SERP_TABS = ("For you", "Accounts", "Audio", "Tags", "Places")

    def render_serp(self):
        pkg = self.package
        field = ui_node("android.widget.EditText", (154, 107, 1025, 204), text=self.query,
                        clickable=True, resource_id=f"{pkg}:id/action_bar_search_edit_text")
        tabs = [ui_node("android.widget.TextView", (20 + 210 * i, 230, 220 + 210 * i, 330),
                        text=t, desc=t, clickable=True, selected=t == self.tab)
                for i, t in enumerate(self.SERP_TABS)]
        if self.tab == "Accounts":
            names = [u for u in self.users if self.query.lower() in u.lower()]
            items = [ui_node("android.widget.Button", (0, 360 + 200 * i, W, 550 + 200 * i),
                             clickable=True, resource_id=f"{pkg}:id/row_search_user_container",
                             children=[
                text_node(n, (253, 400 + 200 * i, 700, 450 + 200 * i),
                          rid=f"{pkg}:id/row_search_user_username"),
                text_node(_full_name(n), (253, 450 + 200 * i, 700, 500 + 200 * i),
                          rid=f"{pkg}:id/row_search_user_fullname")])
                     for i, n in enumerate(names)]
        else:
            items = [ui_node("android.widget.FrameLayout", (360 * (i % 3), 360 + 480 * (i // 3),
                                                            360 * (i % 3 + 1),
                                                            840 + 480 * (i // 3)),
                             clickable=True, desc=f"Reel by sim_creator about {self.query}")
                     for i in range(6)]
        return hierarchy(field, *tabs, *items, package=pkg)

    def tap_serp(self, h, x, y):
        for el in h:
            if el.get("text") in self.SERP_TABS:
                self.tab = el.get("text")
                return
            if short_id(el) == "action_bar_search_edit_text":
                self.fields["search"] = self.query
                self.goto("search_results", focus="search")
                return
            if short_id(el) == "row_search_user_container":
                self.target = first(el, rid="row_search_user_username").get("text")
                self.goto("profile")
                return
            if "Reel by" in el.get("content-desc", ""):
                self.goto("home")
                return

    def render_story(self):                       # INVENTED: a story plays
        return hierarchy(ui_node("android.view.View", (0, 0, W, H), desc="Story",
                                 resource_id=f"{self.package}:id/reel_viewer_root"),
                         package=self.package)

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
            self.set_following(True)
        elif hit(h, rid="profile_header_follow_button", text="Following"):
            self.goto("unfollow_sheet")

    def tap_unfollow_sheet(self, h, x, y):
        if hit(h, text="Unfollow"):
            self.set_following(False)
            self.goto("profile")

    def render_missing(self):                     # INVENTED
        return hierarchy(text_node("Sorry, this page isn't available.", (40, 900, 1040, 1000)),
                         package=self.package)

    # -- own profile and switcher (INVENTED: no dump of the own profile) ---------------
    # Current Instagram shows the own username as a large title: a clickable
    # action_bar_username_container holding action_bar_large_title_auto_size (the name)
    # and action_bar_title_chevron; any of them opens the account list as a bottom
    # sheet (ids named in issue 7 from public automation projects; layout INVENTED).
    def render_own_profile(self):
        pkg = self.package
        nodes = [ui_node("android.widget.LinearLayout", (40, 77, 800, 231), clickable=True,
                         resource_id=f"{pkg}:id/action_bar_username_container", children=[
                     text_node(self.current, (40, 90, 620, 220),
                               rid=f"{pkg}:id/action_bar_large_title_auto_size"),
                     ui_node("android.widget.ImageView", (630, 120, 700, 190),
                             resource_id=f"{pkg}:id/action_bar_title_chevron")]),
                 ui_node("android.widget.Button", (960, 100, 1060, 200), desc="Options",
                         clickable=True)] + self._tab_bar()
        if self.screen == "switcher":
            nodes.append(ui_node("android.widget.FrameLayout", (0, 1100, W, H),
                                 resource_id=f"{pkg}:id/bottom_sheet_container",
                                 children=self.switcher_rows(
                                     1200, pkg, f"{pkg}:id/row_user_textview")))
        return hierarchy(*nodes, package=pkg)

    render_switcher = render_own_profile

    def tap_own_profile(self, h, x, y):
        if hit(h, rid="action_bar_username_container"):
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
        elif hit(h, rid="share_button") and self.reels_nux:
            self._about_reels()
        elif hit(h, rid="share_button"):
            self._publish()

    # The first reel's "About Reels" sheet after Share, and the dialog offering another
    # run's draft (INVENTED from their ids and labels in six and five public posters:
    # docs/research/sources_s5b.md, gap 2e).
    def _about_reels(self):
        pkg = self.package
        sheet = ui_node(
            "android.widget.FrameLayout", (0, 1200, W, H), package=pkg, children=[
                text_node("About Reels", (60, 1260, 1020, 1360),
                          rid=f"{pkg}:id/clips_nux_sheet_title"),
                ui_node("android.widget.Button", (60, 1500, 1020, 1620), desc="Share",
                        clickable=True, resource_id=f"{pkg}:id/clips_nux_sheet_share_button"),
                ui_node("android.widget.Button", (60, 1660, 1020, 1780), text="Cancel",
                        clickable=True, resource_id=f"{pkg}:id/clips_nux_sheet_cancel_button")])

        def answered(label):
            self.reels_nux = False
            if label == "Share":
                self._publish()
        self._set_popup({"back": True}, kind="about_reels", element=sheet, on_button=answered)

    def _draft_dialog(self):
        pkg = self.package
        dialog = ui_node(
            "android.widget.FrameLayout", (90, 300, 990, 850), package=pkg, children=[
                text_node("Keep editing your draft?", (150, 360, 930, 460),
                          rid=f"{pkg}:id/igds_headline_headline"),
                text_node("Continue editing", (150, 560, 930, 660), clickable=True,
                          rid=f"{pkg}:id/primary_button", cls="android.widget.Button"),
                text_node("Start new video", (150, 700, 930, 800), clickable=True,
                          rid=f"{pkg}:id/auxiliary_button", cls="android.widget.Button")])

        def answered(label):
            self.draft = False
            if label == "Continue editing":        # another run's video, in the editor
                self.selected = ["/sdcard/DCIM/Camera/old_draft.mp4"]
                self.goto("editor")
        self._set_popup({"back": False}, kind="draft", element=dialog, on_button=answered)

    def render_story_editor(self):                 # INVENTED: no story editor dump
        return hierarchy(ui_node("android.widget.Button", (40, 2100, 520, 2240),
                                 desc="Your story", clickable=True), package=self.package)

    def tap_story_editor(self, h, x, y):
        if hit(h, desc="Your story"):
            self._publish()

    def _publish(self):
        self.posts.append({"caption": self.fields["caption"], "media": list(self.selected),
                           "placement": self.placement, "account": self.current})
        self.record("post", self.fields["caption"])
        self.start_upload()
        self.goto("uploading")

    def render_uploading(self):                    # INVENTED progress banner on home
        percent = self.upload_percent()
        if percent is None:                        # preparing: the feed, no banner yet
            self.banner = ""
            return self.render_home()
        self.upload_pct = percent
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
            self._like()

    def render_comments(self):
        rows = [text_node(c, (40, 400 + 90 * i, 1040, 480 + 90 * i))
                for i, c in enumerate(self.comments[self.target or "feed"][-8:])]
        field = ui_node("android.widget.EditText", (40, 2200, 850, 2320),
                        text=self.fields["comment"] or "Add a comment…", clickable=True,
                        resource_id=f"{self.package}:id/layout_comment_thread_edittext",
                        focused=self.focus == "comment")
        post = text_node("Post", (860, 2200, 1040, 2320), clickable=True, rid=(
            f"{self.package}:id/layout_comment_thread_post_button_click_area"))
        rows = ui_node("androidx.recyclerview.widget.RecyclerView", (40, 400, 1040, 2100),
                       scrollable=True, children=rows)
        return hierarchy(text_node("Comments", (40, 100, 600, 200)), rows, field, post,
                         package=self.package)

    def tap_comments(self, h, x, y):
        if hit(h, rid="layout_comment_thread_post_button_click_area") and self.fields["comment"]:
            if self.blocked("comment"):
                return
            self.send_comment()
            self.record("comment", self.target or "feed")
        elif hit(h, rid="layout_comment_thread_edittext"):
            self.focus = "comment"

    def on_back(self):
        if self.screen == "comments":
            self.goto("post_page" if self.target else "home")
            return True
        if self.screen in ("serp", "story"):
            self.goto("search_results", focus="search")
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
