"""Selectors of the TikTok and Instagram screens the scripts drive: data only.

Not a script (the name starts with "_"). Each entry names a step's element:
``"ids": {app version: [resource ids, or an id with more conditions]}`` and ``"labels":
[selector dicts on the English text / content-desc]``. How they are tried is
``_common.App.alternatives``: for a known version its ids first (so a phone in another
language works where ids are known), then the labels, then the other versions' ids
(screens whose ids did not change); for an unknown version the labels, then every id
(``ids_first`` puts the ids before the labels).

Where each id and label comes from is noted beside it (no code was copied; facts only).
Abbreviations, from docs/research/selectors.md (sources with their commits there):
    DUMP   real window dumps copied in tests/fixtures/ui/ (masterFuf/taktik-bot,
           tests/unit/social_media/{tiktok,instagram}/fixtures/*.xml; rows and commits in
           tests/fixtures/ui/SOURCES.md). TikTok 43.1.4, 46.6.3, 46.9.3, 47.0.3; IG 410.
    GA     GramAddict/bot GramAddict/core/resources.py, core/views.py, core/interaction.py
    INS    alexal1/Insomniac insomniac/views.py, insomniac/actions_impl.py
    TK     masterFuf/taktik-bot taktik/core/social_media/{instagram,tiktok}/ui/selectors/
           (same author as DUMP: not independent of it)
    GL     YallaPapi/geelark-automation tiktok_id_map.py, TIKTOK_SCREEN_REFERENCE.md,
           follow_action_engine.py, follow_screen_detector.py, action_engine.py
    EU     edde746/tiktok-uploader api/uploader.py
    TMX    tikmatrix/www.tikmatrix.com docs (flows, the English rule)
    ES     an anonymous Spanish TikTok farm project in the search index
           (tiktok_mobile_interact.py; the comment bar as it ran against the app)
    WEB    user reports and help pages (labels only): Insomniac#339/#179, InstaPy#5132,
           #6353, #6512, SimpleInstaBot#202; everydaytech.org "How to Add Another TikTok
           Account"; swaggyP36000/TrollStore-IPAs#627 (image comments per account)
Where sources disagree, every alternative is listed, in the order tried.
"""
from typing import Any, Dict

#: The profile button's labels, English then French (text_regex, whole label).
FOLLOW_LABELS = r"Follow( back)?|Suivre( en retour)?"
FOLLOWING_LABELS = r"Following|Friends|Suivi(e)?s ?|Ami\(e\)s|Amis"

TIKTOK: Dict[str, Dict[str, Any]] = {
    # -- tabs (ids: DUMP per version, mkn/mks for 43.x also GL + TK; labels: TK, GL, EU)
    "home_tab": {"ids": {"47.0.3": ["omq"], "43.1.4": ["mkq"], "46.9.3": ["olw"],
                         "46.6.3": ["ofc"]},
                 "labels": [{"desc": "Home"}]},
    "profile_tab": {"ids": {"47.0.3": ["oms"], "43.1.4": ["mks"], "46.9.3": ["oly"],
                            "46.6.3": ["ofe"]},
                    "labels": [{"desc": "Profile"}]},
    "create": {"ids": {"47.0.3": ["omm"], "43.1.4": ["mkn"], "46.9.3": ["ols"],
                       "46.6.3": ["of9"]},
               "labels": [{"desc": "Create"}]},
    # search icon: k_8 (DUMP 47), irz (GL + TK for 43.x); desc "Search" (TK, GL, EU)
    "search": {"ids": {"47.0.3": ["k_8"], "46.9.3": ["k9z"], "46.6.3": ["map"],
                       "43.1.4": ["irz"]},
               "labels": [{"desc": "Search", "clickable": True}]},
    # the field keeps the query after submitting (TK's 47.0.3 dump: hu0, hint "Search")
    "search_field": {"ids": {"47.0.3": ["hu0"]},
                     "labels": [{"class_name": "android.widget.EditText"}]},
    # result tabs have no ids: "Users" (TK search.py), "Accounts" on some builds
    "users_tab": {"ids": {}, "labels": [{"text": "Users"}, {"desc": "Users"},
                                        {"text": "Accounts"}]},
    # a user row's handle: tv_username (TK's 47.0.3 dump and search.py on 46.6.3), ye2
    # (TK search.py, 43.1.4); trill 46.x has it in tv_aweme_id and the display name in
    # tv_username (VNF-search; TikTok fills tv_username from a server field, DECOMP:
    # docs/research/sources_s6.md 5a). Rows are matched with the handle's text, never
    # the EditText
    "user_row_name": {"ids": {"47.0.3": ["tv_username", "tv_aweme_id"], "43.1.4": ["ye2"]},
                      "labels": []},
    "sounds_tab": {"ids": {}, "labels": [{"text": "Sounds"}, {"desc": "Sounds"}]},
    # -- create flow: DUMP 47.0.3 ids; labels EU ("Upload", "Next (n)", "Post",
    # "Post Now"), TK ("Add a description", "Publish now", "successfully"), GL
    "upload": {"ids": {"47.0.3": ["upload_hot_area"]},
               "labels": [{"text": "Upload"}, {"desc": "Upload"}, {"text": "Gallery"}]},
    "gallery_select": {"ids": {"47.0.3": ["l34"]}, "labels": []},
    "gallery_next": {"ids": {"47.0.3": ["xyk"]},
                     "labels": [{"text_regex": r"Next( \(\d+\))?"}]},
    "editor_next": {"ids": {"47.0.3": ["q05"]}, "labels": [{"text": "Next"}]},
    # caption: h8e (DUMP 47), g19 (GL + TK for 43.x); an EditText with the hint
    "caption": {"ids": {"47.0.3": ["h8e"], "43.1.4": ["g19"]},
                "labels": [{"class_name": "android.widget.EditText",
                            "text_contains": "description"},
                           {"class_name": "android.widget.EditText",
                            "text_contains": "Describe your video"},
                           {"class_name": "android.widget.EditText"}]},
    "title": {"ids": {}, "labels": [{"class_name": "android.widget.EditText",
                                     "text_contains": "title"}]},
    # Post: tiq (DUMP 47), qrb (GL + TK for 43.x)
    "post": {"ids": {"47.0.3": ["tiq"], "43.1.4": ["qrb"]}, "labels": [{"text": "Post"}]},
    "publish_now": {"ids": {}, "labels": [{"text": "Publish now"}, {"text": "Post now"},
                                          {"text": "Post Now"}]},
    "upload_progress": {"ids": {"47.0.3": ["tvProgress"], "46.6.3": ["tvProgress"]},
                        "labels": [{"text_regex": r"\d{1,3}%"}]},
    "posted": {"ids": {}, "labels": [{"text_contains": "posted"},
                                     {"text_contains": "successfully"},
                                     {"text_contains": "published"}, {"desc": "Posted"}]},
    "use_sound": {"ids": {}, "labels": [{"text": "Use sound"}, {"desc": "Use sound"},
                                        {"text": "Use this sound"}]},
    # -- the editor's sound (research: docs/research/sound.md). The pill atop the
    # editor: e1p holding tv_top_text "Add sound", then the sound's name (DUMP 47.0.3
    # editor; CC and EU tap it; GL: d8a on 43.x, d24 on 35.x, desc "Add sound"); a
    # TikTok Shop poster reads it "Sounds" (CNSHOP, docs/research/sources_s6.md gap 1).
    "sound_pill": {"ids": {"47.0.3": ["e1p"], "43.1.4": ["d8a"]},
                   "labels": [{"text": "Add sound"}, {"desc": "Add sound"},
                              {"text": "Sounds"}]},
    "sound_pill_text": {"ids": {"47.0.3": ["tv_top_text"]},
                        "labels": [{"text": "Add sound"}, {"text": "Sounds"}]},
    # the panel: "Volume" (EU, CC), its tabs (TikMatrix's "recommended" sounds; no
    # code source names the tabs: research gap), a magnifier that opens its search
    # (EU: the panel's first ImageView; the field shows "Search")
    "sound_panel": {"ids": {}, "labels": [{"text": "Volume"}, {"text": "Recommended"},
                                          {"text": "Favorites"}]},
    "sound_search": {"ids": {}, "labels": [{"desc": "Search", "class_name":
                                            "android.widget.ImageView"},
                                           {"desc": "Search"}]},
    "sound_search_field": {"ids": {}, "labels": [{"class_name": "android.widget.EditText"}]},
    # rows: clickable LinearLayouts of the panel's RecyclerView (EU); the chosen one
    # names the sound in the pill (CC reads the editor after choosing)
    "no_results": {"ids": {}, "labels": [{"text_contains": "No results"}]},
    "sound_row": {"ids": {}, "labels": [{"class_name": "android.widget.LinearLayout",
                                         "clickable": True, "inside": {
                                             "class_name": "androidx.recyclerview.widget."
                                                           "RecyclerView"}}]},
    # Volume -> two SeekBars, the original sound first (EU, CC), set by a tap at a
    # point of the bar (EU: 0-200 %, 100 % in the middle; CC), then "Done" (EU, CC)
    "sound_volume": {"ids": {}, "labels": [{"text": "Volume"}, {"desc": "Volume"}]},
    "volume_bar": {"ids": {}, "labels": [{"class_name": "android.widget.SeekBar"}]},
    "volume_done": {"ids": {}, "labels": [{"text": "Done"}, {"desc": "Done"}]},
    # -- post screen: "Add link" (DUMP 47.0.3 post screen: the row dty/ze3 "Ajouter un
    # lien"; TikTok Seller University: add link -> products) -> "Products" -> the
    # showcase's first product -> "Add" (TikMatrix: "the first product link in the
    # showcase"). getskillary's TikTok-Automated-Posting-System (GSK in
    # docs/research/sources_s5.md, ran) adds two optional steps after Add: an "Add
    # product?" confirmation (its button "Add" or "Confirm add") and a product-name
    # page (an EditText with the name, a wide "Add" at the bottom). "Product" first: a
    # second poster (CNSHOP) and a help page name it so (sources_s6.md gap 2).
    "add_link": {"ids": {}, "labels": [{"text": "Add link"}, {"desc": "Add link"}]},
    "product_confirm": {"ids": {}, "labels": [{"text": "Add product?"},
                                              {"desc": "Add product?"}]},
    "product_confirm_add": {"ids": {}, "labels": [{"text": "Confirm add"}, {"text": "Add"},
                                                  {"desc": "Add"}]},
    "product_name_page": {"ids": {}, "labels": [{"text_contains": "Add product name"},
                                                {"text": "Product name"}]},
    "link_products": {"ids": {}, "labels": [{"text": "Product"}, {"text": "Products"},
                                            {"desc": "Products"}]},
    "product_add": {"ids": {}, "labels": [{"text": "Add"}, {"desc": "Add"}]},
    "no_products": {"ids": {}, "labels": [{"text_contains": "No products"}]},
    "product_added": {"ids": {}, "labels": [{"text_regex": r"(?i)\d+ products?"},
                                            {"desc_contains": "product"}]},
    # -- profiles. One id serves "Follow", "Following" and "Message" (43.1.4 "eme" DUMP +
    # TK, 47.0.3 "fmp" DUMP), so an id alone cannot tell the state: id and label
    # together. "Following" is also the label of the followings count: the ids come
    # first there. Labels: TK en.py, unworld11/ved-experiments (Following / Friends);
    # beside the ids, the French labels of the real dumps (DUMP 43.1.4 "Suivre", 47.0.3
    # "Suivre en retour", "Suivis " with its space), so a French phone reads the state.
    "follow": {"ids": {"43.1.4": [{"resource_id": "eme", "text_regex": FOLLOW_LABELS}],
                       "47.0.3": [{"resource_id": "fmp", "text_regex": FOLLOW_LABELS}]},
               "labels": [{"text": "Follow"}, {"text": "Follow back"}]},
    "following": {"ids_first": True,
                  "ids": {"43.1.4": [{"resource_id": "eme", "text_regex": FOLLOWING_LABELS}],
                          "47.0.3": [{"resource_id": "fmp",
                                      "text_regex": FOLLOWING_LABELS}]},
                  "labels": [{"text": "Friends"}, {"text": "Requested"}]},
    "unfollow_confirm": {"ids": {}, "labels": [{"text": "Unfollow"}]},
    # not found: WEB (username checkers); no Android source confirms the in-app text
    "profile_missing": {"ids": {}, "labels": [
        {"text_contains": "Couldn't find this account"},
        {"text_contains": "account doesn't exist"},
        {"text_contains": "account isn't available"},
        {"text_contains": "This account is banned"},
        {"text_contains": "No results found"}]},
    # -- own profile and accounts. The @handle: qh5 (DUMP 43 + TK), t3y (DUMP 47); TK also
    # reads a content-desc with "@". Tapping it copies the handle (anonymous trill farm
    # notes in the research): the switcher opens from the NAME at the top, which has no
    # id in 43.1.4 / 47.0.3 (DUMP) and is found by _common from the current handle.
    "own_handle": {"ids": {"43.1.4": ["qh5"], "47.0.3": ["t3y"]},
                   "labels": [{"text_regex": r"@[\w.]+"}]},
    "switcher_open": {"ids": {},
                      "labels": [{"desc": "Switch account"}, {"desc_contains": "Switch account"},
                                 {"text": "Switch account"}]},
    # The long way: "Profile menu" (TK en.py; DUMP 43.1.4 own profile "Menu du profil") ->
    # "Settings and privacy" (TK auth/logout.py; WEB) -> "Switch account" (WEB; the row is
    # under the fold: the list is scrolled). A TikTok Shop poster takes the same way by
    # the labels' starts, "Settings" and "Switch" (CNSHOP, docs/research/sources_s6.md
    # 5b); Lite keeps the whole labels: "Switch to Business account" starts alike.
    "profile_menu": {"ids": {}, "labels": [{"desc": "Profile menu"}, {"desc": "Menu"}]},
    "settings": {"ids": {}, "labels": [{"text": "Settings and privacy"},
                                       {"desc": "Settings and privacy"}]},
    "settings_switch": {"ids": {}, "labels": [{"text": "Switch account"},
                                              {"desc": "Switch account"}]},
    # The display name in the profile body opens the account list: qf8 (43.1.4: the
    # DUMP's clickable Button above the @handle; taktik-bot taps it, TK-SW in
    # docs/research/sources_s5.md), su7 (46.7.3: TK-SW's test; the anonymous trill
    # farm's body name); a French iOS bot taps the big name too. Only for the version
    # whose id it is: an obfuscated id means something else in another release.
    "profile_name": {"ids": {"43.1.4": [{"resource_id": "qf8", "clickable": True}],
                             "46.7.3": [{"resource_id": "su7", "clickable": True}]},
                     "labels": []},
    # The account list ("Switch account" sheet, TK-SW 43.1.4 / 46.7.3; the Spanish
    # TiktokAutomator ES2 agrees): a clickable Button per account, the current one
    # first, desc = the name without "@", its TextView (ljk / n72) showing it; "Add
    # account" is a row alike, last (TK-SW, ES2; gone at TikTok's 8 accounts: VNF).
    # Rows are matched by the account's name; VNF saw rows show the display name
    # instead of the handle on trill 46.x (then the account is reported missing).
    "switcher_row": {"ids": {"43.1.4": ["ljk"], "46.7.3": ["n72"]}, "labels": []},
    "add_account": {"ids": {}, "labels": [{"text": "Add account"}, {"desc": "Add account"}]},
    # -- feed (DUMP 46.9.3 English feed; labels AJ6, WDIO, RUST, U2F in the research)
    "like": {"ids": {}, "labels": [{"desc_contains": "Like video"}, {"desc": "Like"}]},
    "feed_follow": {"ids": {"46.9.3": ["ivc"]}, "labels": [{"desc_contains": "Follow "}]},
    "collect": {"ids": {"46.9.3": ["i74"]},
                "labels": [{"desc_contains": "from Favorites"}]},
    "comments": {"ids": {"46.9.3": ["eor"]},
                 "labels": [{"desc_contains": "Read or add comments"},
                            {"desc_contains": "comments"}]},
    # comment box: an EditText (desc "Add comment": TK); send: desc "Post comment"
    # (WDIO), desc containing "Post" (TK)
    # the comment sheet's bar (TK dumps of the sheet, not copied here:
    # tt4314_fr_comment_sheet_empty.xml @e9e10ca, tt4703_fr_comment_sheet.xml @b1865b4):
    # the EditText dpl / ejs, then an icon row whose first icon (jfd / l12, the row's only
    # Button; desc an unresolved "@2131823358", also seen by the anonymous ES project)
    # is the image button: the other two are "Stickers" and "Mention". TikTok shows it
    # to some accounts only (WEB: TrollStore-IPAs#627). No label: none is public.
    # The research: docs/research/comment_image.md.
    "comment_field": {"ids": {"47.0.3": ["ejs"], "43.1.4": ["dpl"]},
                      "labels": [{"class_name": "android.widget.EditText", "focused": True},
                                 {"class_name": "android.widget.EditText"}]},
    "comment_image": {"ids": {"47.0.3": ["l12"], "43.1.4": ["jfd"]}, "labels": []},
    "comment_send": {"ids": {}, "labels": [{"desc": "Post comment"}, {"text": "Post"},
                                           {"desc": "Send"}, {"desc_contains": "Post"}]},
    "video": {"ids": {"47.0.3": ["long_press_layout"], "46.9.3": ["long_press_layout"]},
              "labels": [{"desc": "Video"}]},
}

INSTAGRAM: Dict[str, Dict[str, Any]] = {
    # -- tabs: feed_tab / profile_tab / creation_tab / search_tab (TK, GL); descs
    # "Home", "Profile", "Search and Explore" (GA, INS); tab_avatar in the old UI (GA)
    "home_tab": {"ids": {"410": ["feed_tab"]}, "labels": [{"desc": "Home"}]},
    "profile_tab": {"ids": {"410": ["profile_tab", "tab_avatar"]},
                    "labels": [{"desc": "Profile"}]},
    "create": {"ids": {"410": ["creation_tab"]}, "labels": [{"desc": "Create"}]},
    "search": {"ids": {"410": ["search_tab"]},
               "labels": [{"desc": "Search and explore"}, {"desc": "Search and Explore"},
                          {"desc": "Search"}]},
    # -- create flow (DUMP 410; TK content_creation.py; GL action_engine.py,
    # post_reel_smart.py)
    "tab_reel": {"ids": {"410": ["cam_dest_clips"]}, "labels": [{"text": "REEL"}]},
    "tab_story": {"ids": {"410": ["cam_dest_story"]}, "labels": [{"text": "STORY"}]},
    "tab_post": {"ids": {"410": ["cam_dest_feed"]}, "labels": [{"text": "POST"}]},
    "gallery_item": {"ids": {"410": ["gallery_grid_item_thumbnail",
                                     "gallery_picker_grid_item_container"]}, "labels": []},
    "gallery_multi": {"ids": {"410": ["multi_select_slide_button_alt"]},
                      "labels": [{"desc": "Select multiple button"}]},
    # media_thumbnail_tray_button: the Next of the reel gallery's selection tray in
    # newer builds (three posters, docs/research/sources_s5b.md 2b)
    "gallery_next": {"ids": {"410": ["next_button_textview", "creation_next_button",
                                     "media_thumbnail_tray_button"]},
                     "labels": [{"text": "Next"}]},
    "editor_next": {"ids": {"410": ["clips_right_action_button"]},
                    "labels": [{"desc": "Next"}]},
    "nux_continue": {"ids": {"410": ["clips_download_privacy_nux_button"]},
                     "labels": [{"desc": "Continue"}]},
    "caption": {"ids": {"410": ["caption_input_text_view"]},
                "labels": [{"text_contains": "Write a caption"}]},
    # share_button reads "Next" on the 410 reel composer (DUMP), "Share" elsewhere
    "share": {"ids": {"410": ["share_button", "action_bar_button_text"]},
              "labels": [{"desc": "Share"}]},
    "story_share": {"ids": {}, "labels": [{"desc": "Your story"}, {"text": "Your story"},
                                          {"desc": "Share to your story"}]},
    # the first reel's "About Reels" sheet after Share: its own Share posts the reel
    # (clips_nux_sheet_share_button: six public posters; the original-audio one: one;
    # docs/research/sources_s5b.md 2e)
    "reels_nux_share": {"ids": {"410": ["clips_nux_sheet_share_button",
                                        "clips_original_audio_nux_sheet_share_button"]},
                        "labels": []},
    # upload: "Sharing to Reels", "Keep Instagram open to finish posting" (GL)
    # newer builds: upload_progress_bar_container (a 2025 poster), igds_upload_snackbar
    "upload_progress": {"ids": {"410": ["row_pending_media_progress_bar",
                                        "upload_progress_bar_container",
                                        "igds_upload_snackbar"]},
                        "labels": [{"text_contains": "Sharing"},
                                   {"text_contains": "Posting"},
                                   {"text_contains": "Keep Instagram open"}]},
    "posted": {"ids": {}, "labels": [{"text_contains": "shared"},
                                     {"text_contains": "posted"},
                                     {"text_contains": "Done posting"}]},
    "use_sound": {"ids": {}, "labels": [{"text": "Use audio"}, {"desc": "Use audio"}]},
    # -- profiles: profile_header_follow_button (DUMP 410, TK, GL); "Follow", "Follow
    # Back", "Following", "Requested" (GA, INS); unfollow: follow_sheet_unfollow_row (GA)
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
    # -- own profile and accounts. The own username: action_bar_large_title_auto_size
    # (GA ACTION_BAR_LARGE_TITLE_AUTO_SIZE; INS; TK) inside action_bar_username_container
    # (TK reads its TextView; DUMP 410 profiles), then the older titles GA and INS try:
    # action_bar_title, action_bar_large_title, action_bar_textview_title, title_view.
    "own_handle": {"ids_first": True, "ids": {"410": [
        {"resource_id": "action_bar_large_title_auto_size",
         "inside": {"resource_id": "action_bar_username_container"}},
        "action_bar_large_title_auto_size",
        {"resource_id": "action_bar_title",
         "inside": {"resource_id": "action_bar_username_container"}},
        "action_bar_title", "action_bar_large_title", "action_bar_textview_title",
        "title_view"]}, "labels": []},
    # The account list opens from action_bar_title_chevron (GA changeToUsername), the
    # username container (TK: "without logging out"), or the title itself (INS).
    "switcher_open": {"ids_first": True, "ids": {"410": [
        "action_bar_title_chevron", "action_bar_username_container",
        "action_bar_large_title_auto_size"]}, "labels": [{"desc": "Switch account"}]},
    # rows: row_user_textview / username_textview with the name (GA, INS); on 410 a
    # clickable row whose content-desc is the name (TK): _common adds text/desc rows
    "switcher_row": {"ids": {"410": ["row_user_textview", "username_textview"]},
                     "labels": []},
    "add_account": {"ids": {}, "labels": [{"text": "Add account"},
                                          {"text": "Add Instagram account"},
                                          {"desc": "Add account"}]},
    # -- search: action_bar_search_edit_text keeps the query (DUMP 410; GA, INS, TK, GL);
    # a user row's username is row_search_user_username (DUMP; GA, INS, TK, GL), never
    # the EditText nor the keyword row row_search_keyword_title (DUMP; GL) that repeat
    # the query; the "Accounts" tab (GA, INS: tab_button_name_text)
    "search_field": {"ids": {"410": ["action_bar_search_edit_text", "row_search_edit_text"]},
                     "labels": [{"class_name": "android.widget.EditText"}]},
    "users_tab": {"ids": {"410": [{"resource_id": "tab_button_name_text",
                                   "text_regex": "(?i)accounts"}]},
                  "labels": [{"text": "Accounts"}, {"text": "ACCOUNTS"}]},
    "user_row_name": {"ids": {"410": ["row_search_user_username"]}, "labels": []},
    "sounds_tab": {"ids": {}, "labels": [{"text": "Audio"}, {"desc": "Audio"}]},
    # -- feed and comments (GA, INS, TK: row_feed_button_*, layout_comment_thread_*)
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
#: helpers (which also close permission prompts, Android dialogs and the "keeps stopping"
#: dialog). TikTok: the Terms consent "Agree and continue", feature tips "Got it",
#: "Not now" / "Skip" / "Dismiss" (TK popups.py), the first-feed swipe tutorial "Swipe
#: up for more" (the one source that meets it, CNAJ in docs/research/sources_s5b.md,
#: swipes it away slowly: its entry says "dismiss": "swipe up", the phone helpers'
#: POPUP_SWIPES), the permission prompt's "WHILE USING THE APP" (GL). Instagram: "Not Now" /
#: "Not now" (notifications, save login info: TK, GL), "Skip", "Maybe later", "No
#: thanks" (GL), "Got it" (GL, TK), a Huawei update's "Later" (INS), and "Start new
#: video" of the "Keep editing your draft?" dialog, never its primary button, which
#: opens another run's video (five posters, docs/research/sources_s5b.md 2e). Both:
#: "Post anyway".
POPUPS = {
    "tiktok": [{"text": "Agree and continue"}, {"text": "Got it"}, {"text": "Post anyway"},
               {"text": "Swipe up for more", "dismiss": "swipe up"}, {"text": "Not now"},
               {"text": "Skip"}, {"text": "WHILE USING THE APP"}, {"desc": "Dismiss"}],
    "instagram": [{"text": "Start new video"},
                  {"text": "Not Now"}, {"text": "Not now"}, {"text": "Agree and continue"},
                  {"text": "Post anyway"}, {"text": "Skip"}, {"text": "Maybe later"},
                  {"text": "No thanks"}, {"text": "Got it"}],
}

#: Screens that say the account may not act now: the task fails "account blocked" and
#: is not retried. Instagram: "Action Blocked", "Try Again Later", "We restrict certain
#: activity", "This action was blocked", "temporarily blocked" (GL
#: follow_screen_detector.py; TK en.py rate_limit_indicators; WEB InstaPy#5132, #6512,
#: Insomniac#339), "Too many requests" (TK), the profile-view limit "we limit the number
#: of profiles you can view" (WEB Insomniac#179). TikTok: "You're tapping too fast" (a
#: toast; WEB), "Maximum number of attempts reached", "Too many attempts", "Try again
#: later" (TK's generic markers), "You're visiting too frequently" (research: no code
#: source; kept as users quote it); from docs/research/sources_s5b.md: the follow
#: limit's own words "You are following too fast." (hushfeed's test of the app's reply;
#: web tools), a ban "Your account was permanently banned" (GL, a Chinese Auto.js trill
#: farm CNAJ, an iOS bot), a suspension (GL, the iOS bot), and the verification puzzle
#: a suspicious account gets ("Verify you are human", "slide to verify": GL; desc
#: "verify captcha": CNAJ): the account needs a person before it acts again. From
#: docs/research/sources_s6.md gap 4: TikTok's own wording "You are visiting our service
#: too frequently" (an Auto.js login farm, LBH; TikTok's API), which the earlier
#: "visiting too frequently" missed; the follow cap "Limit reached. You are unable to
#: follow more people." and "Account status: locked" (screenshots of the app, BYTE);
#: Instagram's "We limit how often you can do certain things" (the body of its "Try
#: Again Later") and "Follow limit reached" (server replies and web bots; its "going
#: too fast" comes inside "...temporarily blocked", and alone would match captions);
#: TikTok's "session expired, please sign in again" banner (BYTE): the account is
#: logged out, a person must sign in again. Session 8: Instagram's warning "We suspect
#: automated behavior on your account" (HYD automation/profile.py detect_challenge, on
#: the Android app; web bots meet the same words and dismiss them, docs/research/
#: sources_s7.md): dismissing it and going on is what gets an account restricted.
BLOCKS = {
    "instagram": [{"text": "Action Blocked"}, {"text": "Action blocked"},
                  {"text": "Try Again Later"},
                  {"text_contains": "We restrict certain activity"},
                  {"text_contains": "This action was blocked"},
                  {"text_contains": "temporarily blocked"},
                  {"text_contains": "Too many requests"},
                  {"text_contains": "limit the number of profiles you can view"},
                  {"text_contains": "We limit how often"},
                  {"text_contains": "Follow limit reached"},
                  {"text_contains": "We suspect automated behavior"}],
    "tiktok": [{"text_contains": "tapping too fast"},
               {"text_contains": "following too fast"},
               {"text_contains": "Your account was permanently banned"},
               {"text_contains": "account has been suspended"},
               {"text_contains": "Account is currently suspended"},
               {"text_contains": "Verify you are human"}, {"text_contains": "slide to verify"},
               {"desc_contains": "verify captcha"},
               {"text_contains": "Maximum number of attempts reached"},
               {"text_contains": "Too many attempts"},
               {"text_regex": "(?i).*visiting (our service )?too frequently.*"},
               {"text_contains": "unable to follow more people"},
               {"text_contains": "Account status: locked"},
               {"text_contains": "session expired, please sign in again"},
               {"text_regex": "(?i)try again later\\.?"}],
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
