"""Warm an account up: watch videos like a person and sometimes interact
(TikMatrix's `account_warmup` script).

Watches the feed, or the results of one random `topic`, for `task_duration` seconds;
each video for a random `min_duration`..`max_duration` seconds, then like / follow /
collect / comment with the given percent chances. Waiting is the task's stop-aware
sleep, so a stop request ends the task within a fraction of a second.
"""

import time

import _common

DESCRIPTION = "Watch videos and interact like a person"
PLATFORMS = ("tiktok", "instagram")
PARAMS = {
    "task_duration": {"type": "int", "default": 600, "min": 1, "max": 86_400},
    "topic": {"type": "str", "default": "", "max_length": 10_000,
              "description": "keywords, one per line; one is searched"},
    "min_duration": {"type": "int", "default": 15, "min": 1, "max": 3600},
    "max_duration": {"type": "int", "default": 30, "min": 1, "max": 3600},
    "like_probable": {"type": "int", "default": 0, "min": 0, "max": 100},
    "floow_probable": {"type": "int", "default": 0, "min": 0, "max": 100,
                       "description": "follow chance (TikMatrix's spelling)"},
    "collect_probable": {"type": "int", "default": 0, "min": 0, "max": 100},
    "comment_probable": {"type": "int", "default": 0, "min": 0, "max": 100},
    "comment": {"type": "str", "default": "", "max_length": 100_000,
                "description": "comment templates, one per line"},
    "insert_emoji": {"type": "bool", "default": False},
    "comment_order": {"type": "str", "default": "random", "choices": ["random", "sequential"]},
    "generate_by_chatgpt": {"type": "bool", "default": False,
                            "description": "refused: Lite calls no service outside your "
                                           "network; comments come from `comment`"},
    "platform": {"type": "str", "default": "tiktok", "choices": ["tiktok", "instagram"],
                 "description": "Lite: the app when the task has no account"},
}

ACTIONS = (("like_probable", "like"), ("floow_probable", "feed_follow"),
           ("collect_probable", "collect"))


def validate(config):
    if config["generate_by_chatgpt"]:
        raise ValueError("generate_by_chatgpt", "Lite does not generate comments with "
                         "ChatGPT (it calls no service outside your network and keeps no "
                         "third-party keys): give comment templates in comment instead")
    if config["min_duration"] > config["max_duration"]:
        raise ValueError("min_duration", f"must not exceed max_duration "
                         f"({config['min_duration']} > {config['max_duration']})")
    if config["comment_probable"] and not _common.lines(config["comment"]):
        raise ValueError("comment", "is required when comment_probable is above 0")


def run(phone, task):
    config, rng = task.config, task.random
    app = _common.open_app(phone, task, text=config["comment"] + config["topic"]
                           if config["comment_probable"] else config["topic"])
    topics = _common.lines(config["topic"])
    topic = rng.choice(topics) if topics else ""
    if topic:
        task.log(f"topic: {topic}")
        app.recovering("warmup", lambda: _common.open_topic(app, topic))
    end = time.monotonic() + config["task_duration"]
    counts = {"videos": 0, "like": 0, "feed_follow": 0, "collect": 0, "comment": 0}
    while time.monotonic() < end:
        watch = rng.uniform(config["min_duration"], config["max_duration"])
        task.sleep(min(watch, max(0.0, end - time.monotonic())))
        counts["videos"] += 1
        try:
            interact(app, config, rng, counts)
        except _common.AppLeft as exc:        # a crash: back to watching
            task.log(f"warmup: {exc.reason}; starting the app again")
            app.restart()
            if topic:
                _common.open_topic(app, topic)
        elapsed = config["task_duration"] - max(0.0, end - time.monotonic())
        task.progress(100 * elapsed / config["task_duration"],
                      f"watched {counts['videos']} video(s)")
        if time.monotonic() < end:
            app.phone.swipe("up")                 # next video
    return {"videos": counts["videos"], "likes": counts["like"],
            "follows": counts["feed_follow"], "collects": counts["collect"],
            "comments": counts["comment"]}


def interact(app, config, rng, counts):
    """On the video playing: like / follow / collect / comment with their chances."""
    for param, action in ACTIONS:
        if rng.randrange(100) < config[param] and app.tap_if_present(action):
            counts[action] += 1
    if rng.randrange(100) < config["comment_probable"]:
        text = _common.pick_comment(config, rng, counts["comment"], "comment")
        _common.write_comment(app, text)
        counts["comment"] += 1
        app.phone.press("back")               # close the comment sheet
