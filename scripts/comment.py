"""Comment on posts by link, on TikTok or Instagram (TikMatrix's `comment` script).

One task per post URL. With comment_order "sequential" the n-th URL of the request gets
the n-th comment (wrapping around), so a request spreads its comments in order.
"""

import urllib.parse
from pathlib import Path

import _common

DESCRIPTION = "Comment on posts (one task per post URL)"
PLATFORMS = ("tiktok", "instagram")
PARAMS = {
    "target_post_urls": {"type": "list", "default": [], "items": "str", "max_items": 1000},
    "target_post_url": {"type": "str", "default": "", "max_length": 100_000,
                        "description": "URLs separated by newlines or commas"},
    "comment_content": {"type": "str", "required": True, "max_length": 100_000,
                        "description": "candidate comments, one per line"},
    "comment_order": {"type": "str", "default": "random", "choices": ["random", "sequential"]},
    "insert_emoji": {"type": "bool", "default": False},
    "comment_image_path": {"type": "str", "default": "", "max_length": 4096,
                           "description": "an image on the box to attach (TikTok only)"},
    "platform": {"type": "str", "choices": ["tiktok", "instagram"],
                 "description": "Lite: the app when the task has no account; by default "
                                "the link's site (instagram.com: instagram, else tiktok)"},
}

INSTAGRAM_HOSTS = ("instagram.com", "instagr.am")


def validate(config):
    if not _common.lines(config["comment_content"]):
        raise ValueError("comment_content", "needs at least one comment (one per line)")
    image = config["comment_image_path"]
    if image:           # the app first: a file fixed for a link that cannot take it is lost
        urls = _common.split_list(config["target_post_urls"], config["target_post_url"])
        on_instagram = [i for i, url in enumerate(urls) if link_platform(url) == "instagram"]
        if on_instagram or config.get("platform") == "instagram":
            where = f"target_post_urls[{on_instagram[0]}] is a link to instagram" \
                if on_instagram else "platform is instagram"
            raise ValueError("comment_image_path", f"TikTok only: Instagram comments take "
                                                   f"no image ({where})")
        if not Path(image).expanduser().is_file():
            raise ValueError("comment_image_path", f"file not found on the box: {image}")
        if Path(image).suffix.lower() not in _common.IMAGE_EXT:
            raise ValueError("comment_image_path", f"{Path(image).name} is not an image")


def expand(config):
    urls = _common.split_list(config["target_post_urls"], config["target_post_url"])
    if not urls:
        raise ValueError("target_post_urls", "give at least one post URL")
    configs = []
    for i, url in enumerate(urls):
        if not url.startswith(("https://", "http://")):
            raise ValueError(f"target_post_urls[{i}]", f"{url!r} is not an http(s) link")
        site = link_platform(url)
        if config.get("platform") not in (None, site):
            raise ValueError(f"target_post_urls[{i}]", f"is a link to {site}, but platform "
                                                       f"is {config['platform']}")
        configs.append(dict(config, target_post_urls=[url], target_post_url=url,
                            comment_index=i, platform=site))
    return configs


def link_platform(url):
    """The app a post link belongs to: TikMatrix's docs send Instagram links to the same
    script without saying which app ("Instagram Comment Example")."""
    host = urllib.parse.urlsplit(url).hostname or ""
    return "instagram" if host in INSTAGRAM_HOSTS or \
        host.endswith(tuple("." + h for h in INSTAGRAM_HOSTS)) else "tiktok"


def run(phone, task):
    config = task.config
    url = config["target_post_url"]
    text = _common.pick_comment(config, task.random, config.get("comment_index", 0),
                                "comment_content")
    account = getattr(task, "account", None)
    if account is not None and account["platform"] != config["platform"]:
        raise _common.StepFailed(           # else it would comment on whatever shows
            "comment: check the link", f"{url} is a {config['platform']} post, and the "
            f"task's account @{task.username} is on {account['platform']}", retry=False)
    app = _common.open_app(phone, task, text=text, launch=False)
    image = config["comment_image_path"]
    task.progress(30, f"opening {url}")
    remote = phone.push_media(Path(image).expanduser()) if image else None

    def open_and_type():
        app.open_url(url)
        _common.type_comment(app, text)
        if remote:
            attach_image(app, text)
    try:
        app.recovering("comment", open_and_type)
        _common.send_comment(app, text)
    finally:
        if remote:
            phone.remove(remote)
    return {"url": url, "comment": text, **({"image": Path(image).name} if image else {})}


def attach_image(app, text):
    """With the text typed (the composer open: its tool row holds the image button, as
    the ES project saw it), the image button, then the gallery's newest item (the pushed
    image: TikMatrix's docs say it is "selected as the first image in the gallery"), its
    selection confirmed before Next, back to the text. TikTok shows the button to some
    accounts only: without it the task fails, not retried, rather than send the text alone."""
    try:
        app.wait("comment_image", "find the comment bar's image button", timeout=5)
    except _common.ElementNotFound:
        versions = " and ".join(sorted(app.table["comment_image"]["ids"]))
        known = "" if app.known_version("comment_image") else \
            f"; its id is known for TikTok {versions}, this phone has {app.version}"
        raise _common.StepFailed("comment: attach the image", "the comment bar shows no image "
                                 "button (TikTok offers image comments to some accounts "
                                 f"only{known})", retry=False) from None
    app.step("open the gallery (the comment bar's image button)", "comment_image",
             expect="gallery_select")
    back = _common.field_shows(text) or "comment_field"     # a text with nothing to see
    _common.pick_in_gallery(app, "gallery_select", 1, "select the image", at_once=False,
                            then=("gallery_next", back))
    app.task.log("image attached")
