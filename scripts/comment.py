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
                           "description": "an image to attach (TikTok): refused, Lite "
                                          "cannot attach images yet"},
    "platform": {"type": "str", "choices": ["tiktok", "instagram"],
                 "description": "Lite: the app when the task has no account; by default "
                                "the link's site (instagram.com: instagram, else tiktok)"},
}

INSTAGRAM_HOSTS = ("instagram.com", "instagr.am")


def validate(config):
    if not _common.lines(config["comment_content"]):
        raise ValueError("comment_content", "needs at least one comment (one per line)")
    image = config["comment_image_path"]
    if image:
        if not Path(image).expanduser().is_file():
            raise ValueError("comment_image_path", f"file not found on the box: {image}")
        raise ValueError("comment_image_path", "Lite cannot attach an image to a comment "
                                               "yet; leave it out for a text comment")


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
    app = _common.open_app(phone, task, text=text, launch=False)
    task.progress(30, f"opening {url}")

    def open_and_type():
        app.open_url(url)
        _common.type_comment(app, text)
    app.recovering("comment", open_and_type)
    _common.send_comment(app, text)
    return {"url": url, "comment": text}
