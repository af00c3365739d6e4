"""Selectors of the TikTok and Instagram screens the scripts drive: data only.

Not a script (the name starts with "_"). Each entry names a step's element:
``"ids": {app version: [resource ids, or an id with more conditions]}`` and ``"labels":
[selector dicts on the English text / content-desc]``. How they are tried is
``_common.App.alternatives``: for a known version its ids first (so a phone in another
language works where ids are known), then the labels, then the other versions' ids
(screens whose ids did not change); for an unknown version the labels, then every id
(``ids_first`` puts the ids before the labels).

Where each id comes from is noted beside it. Abbreviations:
    DUMP        real window dumps copied in tests/fixtures/ui/ (masterFuf/taktik-bot,
                tests/unit/social_media/{tiktok,instagram}/fixtures/*.xml; rows and
                commits in tests/fixtures/ui/SOURCES.md). Versions: TikTok 43.1.4,
                46.6.3, 46.9.3, 47.0.3; Instagram 410.
    Insomniac   alexal1/Insomniac insomniac/views.py
    GramAddict  GramAddict/bot GramAddict/core/resources.py and core/views.py
Where sources disagree, every alternative is listed, in the order tried.
"""
from typing import Any, Dict

TIKTOK: Dict[str, Dict[str, Any]] = {
    # Tabs, create flow, post screen, profiles: DUMP (ids per version), labels from
    # SCRIPTS.md (TikMatrix's docs) and the English 46.9.3 feed dump.
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
    "own_handle": {"ids": {"43.1.4": ["qh5"], "47.0.3": ["t3y"]},       # DUMP
                   "labels": [{"text_regex": r"@[\w.]+"}]},
    # The own profile's top bar: the name with a chevron opens the account list (TikTok's
    # help "Switch accounts": tap your name at the top of your profile; no id known:
    # _common finds the name itself). Labels where the button is described:
    "switcher_open": {"ids": {},
                      "labels": [{"desc": "Switch account"}, {"desc_contains": "Switch account"},
                                 {"text": "Switch account"}]},
    # The long way: profile menu (DUMP 43.1.4 own profile: desc "Menu du profil" =
    # "Profile menu") -> "Settings and privacy" -> "Switch account" (TikTok help pages).
    "profile_menu": {"ids": {}, "labels": [{"desc": "Profile menu"}, {"desc": "Menu"}]},
    "settings": {"ids": {}, "labels": [{"text": "Settings and privacy"},
                                       {"desc": "Settings and privacy"}]},
    "settings_switch": {"ids": {}, "labels": [{"text": "Switch account"},
                                              {"desc": "Switch account"}]},
    "add_account": {"ids": {}, "labels": [{"text": "Add account"}, {"desc": "Add account"}]},
    "search_field": {"ids": {}, "labels": [{"class_name": "android.widget.EditText"}]},
    "users_tab": {"ids": {}, "labels": [{"text": "Users"}, {"desc": "Users"},
                                        {"text": "Accounts"}]},
    "sounds_tab": {"ids": {}, "labels": [{"text": "Sounds"}, {"desc": "Sounds"}]},
    "like": {"ids": {}, "labels": [{"desc_contains": "Like video"}, {"desc": "Like"}]},
    "feed_follow": {"ids": {"46.9.3": ["ivc"]}, "labels": [{"desc_contains": "Follow "}]},
    "collect": {"ids": {"46.9.3": ["i74"]},
                "labels": [{"desc_contains": "from Favorites"}]},
    "comments": {"ids": {"46.9.3": ["eor"]},
                 "labels": [{"desc_contains": "Read or add comments"}]},
    "comment_field": {"ids": {}, "labels": [{"class_name": "android.widget.EditText"}]},
    "comment_send": {"ids": {}, "labels": [{"desc": "Post comment"}, {"text": "Post"},
                                           {"desc": "Send"}]},
    # pop-ups of the app: the button that closes each (POPUPS below), and the block
    # screens (BLOCKS below) are lists of selectors, not steps

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
    # The own username: action_bar_large_title_auto_size inside
    # action_bar_username_container (alexal1/Insomniac insomniac/views.py;
    # GramAddict/bot GramAddict/core/resources.py ACTION_BAR_LARGE_TITLE_AUTO_SIZE;
    # public Appium/uiautomator2 Instagram bots select the same id), then the older
    # action_bar_title (Insomniac insomniac/views.py get_title).
    "own_handle": {"ids_first": True, "ids": {"410": [
        {"resource_id": "action_bar_large_title_auto_size",
         "inside": {"resource_id": "action_bar_username_container"}},
        "action_bar_large_title_auto_size", "action_bar_title"]}, "labels": []},
    # The chevron beside the username opens the account list (GramAddict/bot
    # GramAddict/core/resources.py ACTION_BAR_TITLE_CHEVRON; Insomniac
    # insomniac/views.py), else the username itself.
    "switcher_open": {"ids_first": True, "ids": {"410": [
        "action_bar_title_chevron", "action_bar_username_container",
        "action_bar_large_title_auto_size"]}, "labels": [{"desc": "Switch account"}]},
    "add_account": {"ids": {}, "labels": [{"text": "Add account"},
                                          {"text": "Add Instagram account"},
                                          {"desc": "Add account"}]},
    "search_field": {"ids": {"410": ["action_bar_search_edit_text"]},
                     "labels": [{"class_name": "android.widget.EditText"}]},
    "users_tab": {"ids": {}, "labels": [{"text": "Accounts"}]},
    # A result row's username (DUMP ig410_fr_account_search_results; Insomniac
    # insomniac/views.py _get_username_row; GramAddict/bot resources.py
    # ROW_SEARCH_USER_USERNAME); never the EditText above that keeps the query.
    "user_row_name": {"ids": {"410": ["row_search_user_username"]}, "labels": []},
    "sounds_tab": {"ids": {}, "labels": [{"text": "Audio"}, {"desc": "Audio"}]},
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

#: Buttons that close each app's own pop-ups, tried before the generic ones of the phone
#: helpers. TikTok: the Terms consent ("Agree and continue"), feature tips ("Got it"),
#: the first-feed swipe tutorial (any tap closes it). Instagram: "Turn on Notifications"
#: and "Save your login info?" ("Not Now" / "Not now", as GramAddict and Insomniac
#: dismiss them), the Terms update. Both: "Post anyway" after a content warning.
POPUPS = {
    "tiktok": [{"text": "Agree and continue"}, {"text": "Got it"}, {"text": "Post anyway"},
               {"text": "Swipe up for more"}, {"text": "Not now"}, {"text": "Skip"}],
    "instagram": [{"text": "Not Now"}, {"text": "Not now"}, {"text": "Agree and continue"},
                  {"text": "Post anyway"}],
}

#: Screens that say the account may not act now: the task fails "account blocked" and
#: is not retried. Instagram: "Action Blocked", "Try Again Later", "We restrict certain
#: activity" (the texts GramAddict and Insomniac test for: Insomniac's
#: insomniac/action_get_my_profile_info.py / hardban_indicator, GramAddict's views.py
#: "Try Again Later" check). TikTok: "You're tapping too fast" (a toast), "Maximum
#: number of attempts reached", "Too many attempts. Try again later.", "You're
#: visiting too frequently".
BLOCKS = {
    "instagram": [{"text": "Action Blocked"}, {"text": "Try Again Later"},
                  {"text_contains": "We restrict certain activity"},
                  {"text_contains": "This action was blocked"}],
    "tiktok": [{"text_contains": "tapping too fast"},
               {"text_contains": "Maximum number of attempts reached"},
               {"text_contains": "Too many attempts"},
               {"text_contains": "visiting too frequently"}],
}

#: Activities that start the apps on their home screen (TikMatrix's docs; the apps'
#: manifests). Instagram starts from the launcher.
LAUNCH_ACTIVITIES = {
    "com.zhiliaoapp.musically": "com.ss.android.ugc.aweme.splash.SplashActivity",
    "com.ss.android.ugc.trill": "com.ss.android.ugc.aweme.splash.SplashActivity",
}

#: Activities that receive a shared file (android.intent.action.SEND).
SHARE_ACTIVITIES = {
    "tiktok": "com.ss.android.ugc.aweme.share.SystemShareActivity",
    ("instagram", "reel"): "com.instagram.share.handleractivity.ClipsShareHandlerActivity",
    ("instagram", "story"): "com.instagram.share.handleractivity.StoryShareHandlerActivity",
}

#: Where a profile lives on the web; the apps open these links themselves.
PROFILE_URLS = {"tiktok": "https://www.tiktok.com/@{}",
                "instagram": "https://www.instagram.com/{}/"}
