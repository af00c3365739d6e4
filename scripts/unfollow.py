"""Unfollow users on TikTok or Instagram (TikMatrix's `unfollow` script).

One task per target user per device (or account): `expand` splits the request.
"""

import _common

DESCRIPTION = "Unfollow users (one task per target)"
PLATFORMS = ("tiktok", "instagram")
PARAMS = _common.TARGET_USER_PARAMS      # target_users, target_user, access_method


def expand(config):
    """One config per target; target_users wins over target_user when both are given."""
    return _common.expand_targets(config)


def run(phone, task):
    return _common.follow_flow(phone, task, want_following=False)
