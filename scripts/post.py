"""Publish a video or images on TikTok or Instagram (TikMatrix's `post` script).

The media goes from the box to the phone's camera folder (newest first in the gallery),
is published with the chosen `post_way`, and is removed from the phone afterwards.
"""

import re
import time
from pathlib import Path

import _common

DESCRIPTION = "Publish a video or images (TikTok, Instagram reel or story)"
PLATFORMS = ("tiktok", "instagram")
PARAMS = {
    "content_type": {"type": "int", "default": 0, "choices": [0, 1],
                     "description": "0 video, 1 images (carousel)"},
    "image_count": {"type": "int", "default": 1, "min": 1, "max": 35},
    "captions": {"type": "str", "default": "", "max_length": 5000,
                 "description": "spintax {a|b}; 'title##description'"},
    "post_way": {"type": "str", "default": "share",
                 "choices": ["share", "addButton", "useSound"]},
    "material_source": {"type": "str", "default": "materialLibrary",
                        "choices": ["materialLibrary", "localFolder"]},
    "material_path": {"type": "str", "default": "", "max_length": 4096},
    "material_list": {"type": "list", "default": [], "items": "str", "max_items": 35},
    "materials_tags": {"type": "str", "default": ""},
    "upload_wait_time": {"type": "int", "default": 30, "min": 5, "max": 600},
    "sound_wait_time": {"type": "int", "default": 10, "min": 1, "max": 120},
    "add_sound": {"type": ["str", "int"], "default": "-1",
                  "description": "TikTok: -1 as is, 0 none, 1 the first recommended "
                                 "sound, custom the first found for custom_sound_keyword"},
    "sound_name": {"type": "str", "default": "", "max_length": 500},
    "custom_sound_keyword": {"type": "str", "default": "", "max_length": 200},
    "origin_sound_volume": {"type": "int", "default": 50, "min": 0, "max": 100,
                            "description": "TikTok, with an added sound; 50: as is"},
    "add_sound_volume": {"type": "int", "default": 50, "min": 0, "max": 100,
                         "description": "TikTok, with an added sound; 50: as is"},
    "add_product_link": {"type": "int", "default": 0, "choices": [0, 1],
                         "description": "TikTok: the showcase's first product"},
    "placement": {"type": "str", "default": "reel", "choices": ["reel", "story"]},
    "platform": {"type": "str", "default": "tiktok", "choices": ["tiktok", "instagram"],
                 "description": "Lite: the app when the task has no account"},
}

def validate(config):
    """Checks that need the box: the media files exist (40001 at creation, not a failed
    task later), and the library Lite does not have is refused with what to send instead."""
    kind = _common.VIDEO_EXT if config["content_type"] == 0 else _common.IMAGE_EXT
    if config["material_list"]:
        for i, name in enumerate(config["material_list"]):
            path = Path(name).expanduser()
            if not path.is_file():
                raise ValueError(f"material_list[{i}]", f"file not found on the box: {name}")
            if path.suffix.lower() not in kind:
                raise ValueError(f"material_list[{i}]", f"{path.name} is not a "
                                 f"{'video' if config['content_type'] == 0 else 'image'}")
        if config["content_type"] == 1 and len(config["material_list"]) < config["image_count"]:
            raise ValueError("material_list", f"has {len(config['material_list'])} image(s), "
                             f"image_count is {config['image_count']}")
    elif config["material_source"] == "localFolder":
        if not config["material_path"]:
            raise ValueError("material_path", "is required for material_source localFolder")
        if not Path(config["material_path"]).expanduser().is_dir():
            raise ValueError("material_path", f"folder not found on the box: "
                                              f"{config['material_path']}")
    if config["post_way"] == "useSound" and not config["sound_name"].strip():
        raise ValueError("sound_name", "is required for post_way useSound")
    if str(config["add_sound"]) not in ("-1", "0", "1", "custom"):
        raise ValueError("add_sound", "must be -1, 0, 1 or custom")
    if str(config["add_sound"]) == "custom" and not config["custom_sound_keyword"].strip():
        raise ValueError("custom_sound_keyword", "is required when add_sound is custom")
    refuse_unapplied(config)


def refuse_unapplied(config):
    """What cannot be applied is refused here, at creation, with why: never ignored."""
    sound, way = str(config["add_sound"]), config["post_way"]
    instagram = config["platform"] == "instagram"
    if sound in ("1", "custom") and (way == "useSound" or instagram):
        raise ValueError("add_sound", "post_way useSound brings its own sound (use -1)"
                         if way == "useSound" else "adds a sound on TikTok only (as "
                         "TikMatrix's post script; use -1 or 0 for Instagram)")
    if sound == "0" and way == "useSound":
        raise ValueError("add_sound", "0 (no sound) contradicts post_way useSound")
    if config["custom_sound_keyword"].strip() and sound != "custom":
        raise ValueError("custom_sound_keyword", "is used only with add_sound custom")
    if config["custom_sound_keyword"].strip().startswith(("http://", "https://")):
        raise ValueError("custom_sound_keyword", "takes a sound's name; for a sound's "
                         "link use post_way useSound with sound_name")
    if config["sound_name"].strip() and way != "useSound":
        raise ValueError("sound_name", f"is only used with post_way useSound (post_way is "
                         f"{way}: use add_sound custom with custom_sound_keyword)")
    mixed = sound in ("1", "custom") or way == "useSound"
    for name in ("origin_sound_volume", "add_sound_volume"):
        if config[name] != 50 and (not mixed or instagram):
            raise ValueError(name, "is set on TikTok only" if instagram else "applies only "
                             "with an added sound: add_sound 1 or custom, or post_way "
                             "useSound (50 leaves the volume as it is)")
    if config["add_product_link"] and instagram:
        raise ValueError("add_product_link", "is TikTok only (TikTok Shop's showcase)")


def refuse_on_instagram(config):
    """At run time, when the task's account made it an Instagram post (the config said
    TikTok): what only TikTok applies fails the task, without retry, in the same words."""
    try:
        refuse_unapplied(dict(config, platform="instagram"))
    except ValueError as exc:
        field, reason = exc.args
        raise _common.StepFailed("post: check the parameters", f"{field} {reason}",
                                 retry=False) from None


def reserve_materials(config):
    """The material library (SPEC 7.2): what a task reserves when it is created. The
    server puts the reserved files in material_list, so run() needs nothing else."""
    if config["material_list"] or config["material_source"] != "materialLibrary":
        return None
    return {"kind": "video" if config["content_type"] == 0 else "image",
            "count": config["image_count"] if config["content_type"] == 1 else 1,
            "tags": [t.strip() for t in config["materials_tags"].split(",") if t.strip()]}


def choose_media(config, username, task=None):
    """The files to post: material_list as given, else unused files of the folder."""
    count = config["image_count"] if config["content_type"] == 1 else 1
    if config["material_list"]:
        return [Path(p).expanduser() for p in config["material_list"][:count]]
    folder = _common.material_folder(config, username)
    return _common.claim_media(folder, config["content_type"], count, task)


def run(phone, task):
    config = task.config
    files = choose_media(config, task.username, task)
    caption = _common.spintax(config["captions"], task.random)
    title, description = _common.split_title(caption)
    app = _common.open_app(phone, task, text=caption,
                           launch=config["post_way"] != "share" or bool(task.username))
    if app.platform == "instagram":
        refuse_on_instagram(config)
    task.log(f"media: {', '.join(f.name for f in files)}; caption: {caption!r}")
    remote, done, tapped, uploaded = [], {}, [], False
    try:
        task.progress(10, "pushing media")
        for path in reversed(files):        # the first file ends up newest: first in gallery
            remote.insert(0, phone.push_media(path))
        task.progress(30, f"opening the editor ({config['post_way']})")

        def edit_and_publish():
            if app.platform == "tiktok":
                done.update(edit_tiktok(app, config, remote, title, description))
                return publish_once(app, lambda: publish_tiktok(app), tapped)
            edit_instagram(app, config, remote, title, description)
            return publish_once(app, lambda: publish_instagram(app, config["placement"]),
                                tapped)
        # if the app crashes before the publishing tap the flow starts again; the tap
        # itself is done once (a second one could post twice)
        tapped_at = app.recovering("post", edit_and_publish)
        task.progress(80, "uploading")
        with _common.done_once(app, "the post may still be published"):
            _common.wait_upload(app, config["upload_wait_time"], tapped_at)
        uploaded = True
    finally:
        if tapped and not uploaded:     # the app may still read them for its upload
            task.log(f"post: {', '.join(remote)} left on the phone: the app may still be "
                     "uploading")
        else:
            for path in remote:
                phone.remove(path)
    return {"media": [f.name for f in files], "caption": caption,
            "post_way": config["post_way"], "platform": app.platform, **done}


def open_sound(app, config):
    """useSound: the sound's page (a link, or the first search result), then Use sound."""
    name = config["sound_name"].strip()
    if name.startswith(("http://", "https://")):
        app.open_url(name)
    else:
        app.step("useSound: open search", "search", expect="search_field", timeout=30)
        app.type_into("search_field", name, "useSound: type the sound name")
        app.phone.press("enter")
        shown = _common.as_dumped(name)         # as the dump shows it (emoji, marks)
        row = [{"text": shown, "editable": False},
               {"text_contains": shown, "editable": False}]
        app.step("useSound: open the Sounds tab", "sounds_tab", expect=row)
        app.step(f"useSound: open the sound {name!r}", row, expect="use_sound")
    app.step("useSound: tap Use sound", "use_sound", timeout=config["sound_wait_time"],
             expect="upload" if app.platform == "tiktok" else ["tab_reel", "gallery_item"])


def type_caption(app, title, description):
    """The post screen: the title where the app has one, then the caption."""
    if title and app.find("title") is not None:
        app.type_into("title", title, "type the title")
        text = description
    else:
        text = "\n".join(t for t in (title, description) if t)
    if text:
        app.type_into("caption", text, "type the caption")


def edit_tiktok(app, config, remote, title, description):
    """From the app's start to the post screen with its caption typed."""
    if config["post_way"] == "share":
        app.share(remote, config["content_type"])
    else:
        if config["post_way"] == "useSound":
            open_sound(app, config)
        else:
            app.step("addButton: tap Create (+)", "create", expect="upload", timeout=30)
        # the gallery opens on its "all media" tab, newest first, where the pushed files
        # are the first cells, images or videos (edde746/tiktok-uploader picks photos
        # there too, without a Photos tab): no tab to switch, no look more
        app.step("open Upload (the gallery)", "upload", expect="gallery_select")
        _common.pick_in_gallery(app, "gallery_select", len(remote), "select the media",
                                then=("gallery_next", "editor_next"))
    done = {"sound": mix_sound(app, config)}
    app.step("editor: Next", "editor_next", expect="caption", timeout=30)
    type_caption(app, title, description)
    if config["add_product_link"]:
        add_product_link(app)
        done["product_link"] = True
    return {k: v for k, v in done.items() if v is not None}


def mix_sound(app, config):
    """The editor's sound: add_sound 1 (the first recommended sound), custom (the first
    sound found for the keyword), 0 (no added sound: the pill must still offer one),
    and the two volumes. TikMatrix's 0-100 spans the bar: 50 is its middle, where
    TikTok starts (100 %), so 50 leaves a volume as it is."""
    choice = str(config["add_sound"])
    volumes = [config["origin_sound_volume"], config["add_sound_volume"]]
    if choice == "0":
        pill = app.find("sound_pill_text")
        if pill is not None and pill.text.strip() not in NO_SOUND_LABELS:
            raise _common.StepFailed("post: add_sound 0", f"the editor has a sound added "
                                     f"({pill.text.strip()!r}); Lite does not remove one",
                                     retry=False)
        app.task.log("no sound added (add_sound 0)")
        return
    if choice == "-1" and volumes == [50, 50]:
        return
    app.step("editor: open the sounds", "sound_pill", expect="sound_panel")
    title = None
    if choice in ("1", "custom"):
        title = choose_sound(app, config["custom_sound_keyword"].strip(),
                             config["sound_wait_time"])
    if volumes != [50, 50]:
        set_volumes(app, volumes)
    app.step("close the sounds", "sound_panel", act=lambda node: app.phone.press("back"),
             expect=lambda tree: app.find("sound_panel", tree) is None and
             app.find("editor_next", tree) is not None)
    return title


#: What the editor's pill says while no sound is added (English; French of the dump).
NO_SOUND_LABELS = ("Add sound", "Sounds", "Ajouter un son", "")


def choose_sound(app, keyword, wait):
    """The first recommended row, or the first row found for the keyword. It is added
    when the editor's pill names it (the row is tapped again if it does not)."""
    if keyword:
        app.step("sounds: open the search", "sound_search", expect="sound_search_field")
        app.type_into("sound_search_field", keyword, "sounds: type the keyword")
        app.phone.press("enter")
        found, _ = app.wait_any({"row": "sound_row", "none": "no_results"},
                                f"sounds: results for {keyword!r}", timeout=wait)
        if found == "none":
            raise _common.StepFailed("post: add_sound custom", f"no sound found for "
                                     f"{keyword!r}", retry=False)
    row = app.wait("sound_row", "sounds: the list", timeout=wait)
    title = row_title(app.phone.screen(), row)
    app.step(f"sounds: add {title!r}", "sound_row", timeout=wait,
             expect=lambda tree: any(n.text.strip() == title
                                     for n in app.find_all("sound_pill_text", tree)))
    app.task.log(f"sound added: {title}")
    if keyword:                                     # the search's Back: the panel's list
        app.step("sounds: back from the search", "sound_search_field",
                 act=lambda node: app.phone.press("back"), expect="sound_panel")
    return title


def row_title(tree, row):
    """A sound row's title: the first text drawn inside the row."""
    left, top, right, bottom = row.bounds
    return next((n.text.strip() for n in tree.nodes if n.text.strip() and
                 left <= n.bounds[0] and n.bounds[2] <= right and
                 top <= n.bounds[1] and n.bounds[3] <= bottom), row.label)


def set_volumes(app, volumes):
    """Volume -> the two bars (original sound, then added sound), each tapped at its
    share of the bar, each seen to take it where the sheet shows the bar's percent
    (TikTok's 0-200 %); Done."""
    app.step("sounds: open Volume", "sound_volume", expect="volume_bar")
    for index, (value, name) in enumerate(zip(volumes, ("original sound", "added sound"))):
        if value == 50:
            continue

        def bar(tree, i=index):
            bars = app.find_all("volume_bar", tree)
            return bars[i] if len(bars) > i else None

        def tap_at_share(node, v=value):
            left, top, right, bottom = node.bounds
            app.phone.tap(x=left + round((right - left - 1) * v / 100), y=(top + bottom) // 2)

        def taken(tree, i=index, v=value):
            node = bar(tree, i)
            shown = None if node is None else percent_above(tree, node)
            return node is not None and (shown is None or abs(shown - 2 * v) <= 2)
        taken.__doc__ = f"the {name} at {2 * value} %"
        app.step(f"sounds: the {name} to {value} of 100", bar, act=tap_at_share,
                 expect=taken)
        app.task.log(f"volume of the {name}: {value} of 100")
    app.step("sounds: Volume done", "volume_done", expect=lambda tree: app.find(
        "volume_bar", tree) is None)


def percent_above(tree, bar):
    """The percent the sheet shows for a bar (the nearest "NN%" above it), or None."""
    labels = [n for n in tree.nodes if re.fullmatch(r"\d{1,3} ?%", n.text.strip())
              and n.bounds[3] <= bar.bounds[1]]
    if not labels:
        return None
    return int(max(labels, key=lambda n: n.bounds[3]).text.strip().rstrip("% "))


def add_product_link(app):
    """The showcase's first product (TikTok Shop): Add link -> Products -> Add (then,
    where the app asks, "Add product?" -> Add, and the product-name page's Add). An
    account TikTok does not let add products has no Add link row, or no product in
    its showcase: that fails without retry, saying which."""
    if app.find("add_link") is None:
        raise _common.StepFailed("post: add_product_link", "the post screen has no Add "
                                 "link: this account cannot add product links (TikTok "
                                 "Shop)", retry=False)
    app.step("add a link", "add_link", expect="link_products")
    app.step("open Products", "link_products",
             expect=app.any_of("product_add", "no_products"))
    if app.find("no_products") is not None:
        raise _common.StepFailed("post: add_product_link", "the account's showcase has no "
                                 "product to add", retry=False)
    app.step("add the showcase's first product", "product_add", expect=app.any_of(
        "product_added", "product_confirm", "product_name_page"))
    if app.find("product_confirm") is not None:
        app.step("confirm Add product?", last_of(app, "product_confirm_add"),
                 expect=app.any_of("product_added", "product_name_page"))
    if app.find("product_name_page") is not None:
        app.step("keep the product's name: Add", wide_at_bottom(app, "product_add"),
                 expect="product_added")
    app.task.log("product link added")


def last_of(app, key):
    """The element drawn last: a dialog's button, not the one of the list under it."""
    def last(tree):
        found = app.find_all(key, tree)
        return found[-1] if found else None
    last.__doc__ = f"{key} (the dialog's)"
    return last


def wide_at_bottom(app, key):
    """The page's main button: the widest of the key's elements in the bottom quarter."""
    def wide(tree):
        height = max((n.bounds[3] for n in tree.nodes), default=0)
        low = [n for n in app.find_all(key, tree) if n.bounds[1] >= height * 3 // 4]
        return max(low, key=lambda n: n.bounds[2] - n.bounds[0], default=None)
    wide.__doc__ = f"{key} (the wide one at the bottom)"
    return wide


def publish_once(app, publish, tapped):
    """The publishing tap: if the app closes before it, the flow starts again; if it
    closes after, the post may be out: never tapped twice, and no auto-retry. Returns
    the time of the tap (monotonic), where the upload starts; ``tapped`` gets it once
    the tap is known made (the media must then stay for the app's upload)."""
    tapped_at = time.monotonic()
    try:
        publish()
    except _common.AppLeft as exc:
        if not exc.acted:
            raise
        tapped.append(tapped_at)
        raise _common.StepFailed(f"post: {exc.step.split(': ', 1)[-1]}", f"{exc.reason} "
                                 "right after the publishing tap: the post may or may not "
                                 "be published, so it is not repeated", retry=False) from None
    tapped.append(tapped_at)
    return tapped_at


def publish_tiktok(app):
    app.step("tap Post", "post", expect=left_for_the_upload(app, "publish_now"), once=True)
    if app.find("publish_now") is not None:
        app.step("confirm Publish now", "publish_now", expect=left_for_the_upload(app),
                 once=True)


def left_for_the_upload(app, *also):
    """The publishing tap's effect: the upload's progress or its end shows, or the app's
    feed or profile instead of the post screen (an upload shorter than a dump can end
    before the next look). An empty or failed dump proves nothing."""
    shown = app.any_of(*also, "upload_progress", "posted")
    main = app.any_of("home_tab", "profile_tab")

    def published(tree):
        return shown(tree) or (main(tree) and app.find("post", tree) is None and
                               app.find("caption", tree) is None)
    published.__doc__ = f"{shown.__doc__}, or the feed instead of the post screen"
    return published


def edit_instagram(app, config, remote, title, description):
    """From the app's start to the story editor, or the reel's caption typed."""
    placement = config["placement"]
    tab = "tab_story" if placement == "story" else "tab_reel"
    if config["post_way"] == "share":
        app.share(remote, config["content_type"], placement)
    else:
        if config["post_way"] == "useSound":
            open_sound(app, config)
        else:
            app.step("addButton: tap Create (+)", "create", expect=tab, timeout=30)
        if not any(n.selected for n in app.find_all(tab)):
            app.step(f"choose {placement.upper()}", tab,
                     expect=lambda tree: any(n.selected for n in app.find_all(tab, tree)))
        _common.pick_in_gallery(app, "gallery_item", len(remote), "select the media",
                                first="gallery_multi" if len(remote) > 1 else None,
                                then=("gallery_next", app.any_of("story_share",
                                                                 "editor_next")))
    if placement == "story":
        return
    app.step("editor: Next", "editor_next", timeout=30,
             expect=app.any_of("nux_continue", "caption"))
    if app.find("nux_continue") is not None:
        app.step("accept the download notice", "nux_continue", expect="caption")
    type_caption(app, "", "\n".join(t for t in (title, description) if t))


def publish_instagram(app, placement):
    if placement == "story":
        app.step("share to Your story", "story_share", timeout=30, once=True,
                 expect=app.any_of("upload_progress", "posted", "home_tab"))
    else:
        app.step("tap Share", "share", once=True,
                 expect=app.any_of("reels_nux_share", "upload_progress", "posted",
                                   "home_tab"))
        if app.find("reels_nux_share") is not None:     # the first reel: About Reels
            app.step("share from About Reels", "reels_nux_share", once=True,
                     expect=app.any_of("upload_progress", "posted", "home_tab"))
