"""Publish a video or images on TikTok or Instagram (TikMatrix's `post` script).

The media goes from the box to the phone's camera folder (newest first in the gallery),
is published with the chosen `post_way`, and is removed from the phone afterwards.
"""

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
    "add_sound": {"type": ["str", "int"], "default": "-1"},
    "sound_name": {"type": "str", "default": "", "max_length": 500},
    "custom_sound_keyword": {"type": "str", "default": "", "max_length": 200},
    "origin_sound_volume": {"type": "int", "default": 50, "min": 0, "max": 100},
    "add_sound_volume": {"type": "int", "default": 50, "min": 0, "max": 100},
    "add_product_link": {"type": "int", "default": 0, "choices": [0, 1]},
    "placement": {"type": "str", "default": "reel", "choices": ["reel", "story"]},
    "platform": {"type": "str", "default": "tiktok", "choices": ["tiktok", "instagram"],
                 "description": "Lite: the app when the task has no account"},
}

#: Activities that receive a shared file (android.intent.action.SEND).
SHARE_ACTIVITIES = {
    "tiktok": "com.ss.android.ugc.aweme.share.SystemShareActivity",
    ("instagram", "reel"): "com.instagram.share.handleractivity.ClipsShareHandlerActivity",
    ("instagram", "story"): "com.instagram.share.handleractivity.StoryShareHandlerActivity",
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
    app = _common.open_app(phone, task)
    files = choose_media(config, task.username, task)
    caption = _common.spintax(config["captions"], task.random)
    title, description = _common.split_title(caption)
    task.log(f"media: {', '.join(f.name for f in files)}; caption: {caption!r}")
    if str(config["add_sound"]) not in ("-1", "0") or config["add_product_link"]:
        task.log("add_sound / add_product_link are accepted but not applied by Lite yet")
    remote = []
    try:
        task.progress(10, "pushing media")
        for path in reversed(files):        # the first file ends up newest: first in gallery
            remote.insert(0, phone.push_media(path))
        task.progress(30, f"opening the editor ({config['post_way']})")
        if app.platform == "tiktok":
            publish_tiktok(app, config, remote, title, description)
        else:
            publish_instagram(app, config, remote, title, description)
        task.progress(80, "uploading")
        _common.wait_upload(app, config["upload_wait_time"])
    finally:
        for path in remote:
            phone.remove(path)
    return {"media": [f.name for f in files], "caption": caption,
            "post_way": config["post_way"], "platform": app.platform}


def share_into(app, activity, remote, content_type):
    """Send the pushed files to the app like the gallery's Share button does."""
    mime = "video/*" if content_type == 0 else "image/*"
    uris = ["file://" + r for r in remote]
    if len(uris) == 1:
        extra = ["-a", "android.intent.action.SEND", "--eu", "android.intent.extra.STREAM",
                 uris[0]]
    else:
        extra = ["-a", "android.intent.action.SEND_MULTIPLE", "--eua",
                 "android.intent.extra.STREAM", ",".join(uris)]
    app.phone.shell(["am", "start", "-n", f"{app.package}/{activity}", "-t", mime,
                     "--grant-read-uri-permission"] + extra)


def open_sound(app, config):
    """useSound: the sound's page (a link, or the first search result), then Use sound."""
    name = config["sound_name"].strip()
    if name.startswith(("http://", "https://")):
        app.open_url(name)
    else:
        app.tap("search", "useSound: open search")
        app.type_into("search_field", name, "useSound: type the sound name")
        app.phone.press("enter")
        app.phone.tap(app.wait("sound_tab", "useSound: open the Sounds tab",
                               alternatives=[{"text": "Sounds"}, {"desc": "Sounds"}]))
        app.phone.tap(app.wait("sound_row", f"useSound: find the sound {name!r}",
                               alternatives=[{"text": name}, {"text_contains": name}]))
    app.tap("use_sound", "useSound: tap Use sound", timeout=config["sound_wait_time"])


def pick_in_gallery(app, key, count, step):
    """Select the newest `count` items: the first cells, where the pushed files are."""
    app.wait(key, step)
    cells = app.find_all(key)
    if len(cells) < count:
        raise _common.StepFailed(f"post: {step}: {len(cells)} item(s) in the gallery, "
                                 f"{count} needed")
    for node in cells[:count]:
        app.phone.tap(node)


def publish_tiktok(app, config, remote, title, description):
    count = len(remote)
    if config["post_way"] == "share":
        share_into(app, SHARE_ACTIVITIES["tiktok"], remote, config["content_type"])
    else:
        if config["post_way"] == "useSound":
            open_sound(app, config)
        else:
            app.tap("create", "addButton: tap Create (+)")
        app.tap("upload", "open Upload (the gallery)")
        if config["content_type"] == 1:
            app.tap_if_present("gallery_photos_tab")
        pick_in_gallery(app, "gallery_select", count, "select the media")
        app.tap("gallery_next", "gallery: Next")
    app.tap("editor_next", "editor: Next", timeout=20)
    if title and app.find("title") is not None:
        app.type_into("title", title, "type the title")
        text = description
    else:
        text = "\n".join(t for t in (title, description) if t)
    if text:
        app.type_into("caption", text, "type the caption")
    app.tap("post", "tap Post")
    key, node = app.wait_any({"confirm": app.alternatives("publish_now"),
                              "progress": app.alternatives("upload_progress"),
                              "posted": app.alternatives("posted")},
                             "after Post", timeout=15)
    if key == "confirm":
        app.phone.tap(node)


def publish_instagram(app, config, remote, title, description):
    placement = config["placement"]
    if config["post_way"] == "share":
        share_into(app, SHARE_ACTIVITIES[("instagram", placement)], remote,
                   config["content_type"])
    else:
        if config["post_way"] == "useSound":
            open_sound(app, config)
        else:
            app.tap("create", "addButton: tap Create (+)")
        app.tap("tab_story" if placement == "story" else "tab_reel",
                f"choose {placement.upper()}")
        if len(remote) > 1:
            app.tap("gallery_multi", "select multiple")
        pick_in_gallery(app, "gallery_item", len(remote), "select the media")
        app.tap("gallery_next", "gallery: Next")
    if placement == "story":
        app.tap("story_share", "share to Your story", timeout=20)
        return
    app.tap("editor_next", "editor: Next", timeout=20)
    key, node = app.wait_any({"nux": app.alternatives("nux_continue"),
                              "caption": app.alternatives("caption")},
                             "open the caption screen", timeout=15)
    if key == "nux":
        app.phone.tap(node)
    text = "\n".join(t for t in (title, description) if t)
    if text:
        app.type_into("caption", text, "type the caption")
    app.tap("share", "tap Share")
