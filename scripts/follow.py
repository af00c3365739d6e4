"""Follow users on TikTok or Instagram (TikMatrix's `follow` script).

One task per target user per device (or account): `expand` splits the request.
"""

import _common

DESCRIPTION = "Follow users (one task per target)"
PLATFORMS = ("tiktok", "instagram")
PARAMS = {
    "target_users": {"type": "list", "default": [], "items": "str", "max_items": 1000},
    "target_user": {"type": "str", "default": "", "max_length": 100_000,
                    "description": "names separated by newlines or commas"},
    "access_method": {"type": "str", "default": "direct", "choices": ["direct", "search"]},
    "platform": {"type": "str", "default": "tiktok", "choices": ["tiktok", "instagram"],
                 "description": "Lite: the app when the task has no account"},
}


def expand(config):
    """One config per target; target_users wins over target_user when both are given."""
    return _common.expand_targets(config)


def run(phone, task):
    return _common.follow_flow(phone, task, want_following=True)
