"""The phone helpers (SPEC 6) on a simulated phone through a real adb server.

Closed-loop steps, the one-round-trip dump and its fallback, pop-ups on top of the
target, lost taps, block screens, an app that left the screen, the pre-task checks and
what is given back afterwards, and the selectors on real window dumps.
"""
from pathlib import Path

import pytest

import tikmatrix_lite as lite
from farm import Farm, wait_until
from phonesim import App, alert_window, hierarchy_xml, ui_node, with_windows

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "ui"
PKG = "com.example.steps"


class StepsApp(App):
    """Two screens: "start" with a Go button; tapping Go shows "done". A dialog window
    can sit on top and swallow every tap but its own button; a tutorial overlay takes
    every tap and goes on a swipe up only."""

    package = PKG

    def __init__(self):
        super().__init__()
        self.screen, self.dialog, self.taps_on_go = "start", None, 0
        self.ignore_taps = 0
        self.tutorial = False
        self.busy = None        # "tapped": Go took a tap and shows a spinner, not Done
        self.confirms = False   # a tap on Go asks "Post anyway?" first, then goes busy

    def dump(self):
        label = "Go" if self.screen == "start" else "Done!"
        spinner = [ui_node("android.widget.ProgressBar", (250, 400, 350, 500))] \
            if self.busy == "tapped" else []
        xml = hierarchy_xml(ui_node(children=[
            ui_node("android.widget.Button", (100, 100, 500, 300), text=label,
                    resource_id=f"{PKG}:id/go", clickable=True), *spinner]), package=PKG)
        windows = [self.dialog] if self.dialog is not None else []
        if self.tutorial:
            windows.append(ui_node("android.widget.FrameLayout", (0, 0, 1080, 2400),
                                   package=PKG, clickable=True, children=[
                ui_node("android.widget.TextView", (140, 1500, 940, 1600),
                        text="Swipe up for more", package=PKG)]))
        return with_windows(xml, windows) if windows else xml

    def swipe(self, x1, y1, x2, y2, ms):
        if self.tutorial and y1 - y2 > 300:
            self.tutorial = False

    def tap(self, x, y):
        if self.tutorial:
            return                                # the overlay takes it
        if self.dialog is not None:
            if 700 <= y < 1500 and x >= 600:      # the dialog's positive button
                self.dialog = None
                if self.confirms:
                    self.busy = "tapped"
            return
        if self.ignore_taps:
            self.ignore_taps -= 1
            return
        if 100 <= x < 500 and 100 <= y < 300 and self.screen == "start":
            self.taps_on_go += 1
            if self.confirms:
                self.show_dialog("Post anyway")
            elif self.busy is None:
                self.screen = "done"
            else:
                self.busy = "tapped"

    def show_dialog(self, button="OK"):
        self.dialog = alert_window(PKG, "Terms", "We updated our terms.",
                                   [(button, "android:id/button1")],
                                   bounds=(90, 820, 990, 1500))


@pytest.fixture(scope="module")
def farm(tmp_path_factory, adb, sim):
    f = Farm(tmp_path_factory.mktemp("helpers"), adb, sim).start()
    yield f
    f.close()


@pytest.fixture
def phone(farm):
    app = StepsApp()
    device = farm.add_phone(apps=[app])
    device.start_app(PKG)
    # the farm view reads a new phone's screen size and keyboard in the background:
    # wait for it, so that the round trips counted below are the helpers' own
    wait_until(lambda: farm.lite.store.get_device(device.address) is not None
               and farm.lite.store.get_device(device.address)["screen"], 10, "identified")
    token = lite.CancelToken()
    p = lite.Phone(farm.lite.devices, device.address, token, log=app_log(app))
    p.watch(package=PKG)
    return p, device, app


def app_log(app):
    app.log = []
    return app.log.append


GO = {"resource_id": f"{PKG}:id/go", "text": "Go"}
DONE = {"text": "Done!"}


def test_step_acts_and_confirms_with_two_dumps_and_keeps_the_last(phone):
    p, device, app = phone
    device.reset_counters()
    node = p.step("tap Go", GO, expect=DONE)
    assert node.text == "Done!" and app.taps_on_go == 1
    assert device.dumps == 2
    assert p.screen().find(**DONE) is not None and device.dumps == 2   # no new dump


def test_dump_is_one_round_trip_on_stdout(phone):
    p, device, _ = phone
    device.reset_counters()
    p.dump()
    assert device.round_trips == 1
    assert device.commands("uiautomator")[-1] == ["uiautomator", "dump", "/dev/tty"]


def test_stdout_dump_carries_the_end_marker(phone):
    """A dump through exec: ends with the same marker as a shell command, so a stream
    cut short by a lost phone (adb 29 ends it as if finished) is no partial screen."""
    p, device, _ = phone
    device.clear_log()
    p.dump()
    assert ("exec", ["echo", "tmlite-end"]) in [(r.service, r.argv) for r in device.command_log]


def test_exec_output_cut_short_is_a_lost_phone(farm):
    import threading
    device = farm.add_phone()
    outcome = []

    def run():
        try:
            outcome.append(farm.lite.devices.run(device.address, "exec:echo partial; sleep 60",
                                                 timeout=90, token=lite.CancelToken(),
                                                 marked=True))
        except Exception as exc:
            outcome.append(exc)
    worker = threading.Thread(target=run)
    worker.start()
    assert device.wait_for_command(lambda cmd: cmd.argv[0] == "sleep", timeout=10)
    device.unplug()
    worker.join(15)
    assert not worker.is_alive() and isinstance(outcome[0], lite.DeviceLost), outcome


@pytest.mark.parametrize("mode", ["exec", "none"])
def test_dump_falls_back_to_the_file_form_in_one_round_trip(farm, phone, mode):
    p, device, _ = phone
    device.tty_dump = mode
    device.reset_counters()
    assert p.dump().find(**GO) is not None
    p.dump()
    if mode == "exec":          # exec: gets the XML on stdout: never the file
        assert device.round_trips == 2 and not device.commands("cat")
    else:                       # one failed try, then the file form, remembered
        assert device.round_trips == 3 and len(device.commands("cat")) == 2


def test_popup_on_top_of_the_target_is_dismissed_before_acting(phone):
    """The target is in the dump (the screen below stays there), but the dialog
    would swallow the tap: it is closed first, then the target is tapped once."""
    p, _, app = phone
    app.show_dialog("Agree")
    p.watch(popups=[{"text": "Agree"}])
    p.step("tap Go", GO, expect=DONE)
    assert app.taps_on_go == 1 and app.dialog is None
    assert any("pop-up" in line for line in app.log)


def test_a_popup_whose_entry_says_swipe_is_swiped_away_not_tapped(phone):
    """A tutorial overlay takes every tap; its table entry says how it goes: one slow
    swipe up, then the target is tapped once."""
    p, device, app = phone
    app.tutorial = True
    p.watch(popups=[{"text": "Swipe up for more", "dismiss": "swipe up"}])
    p.step("tap Go", GO, expect=DONE)
    assert app.screen == "done" and app.taps_on_go == 1 and not app.tutorial
    swipes = [argv for argv in device.commands("input") if argv[1] == "swipe"]
    assert len(swipes) == 1
    _, _, x1, y1, x2, y2, ms = swipes[0]
    assert int(y1) - int(y2) > 300 and x1 == x2 and ms == str(lite.POPUP_SWIPE_MS)
    assert [a for a in device.commands("input") if a[1] == "tap"] == [
        ["input", "tap", "300", "200"]]                 # Go only: the overlay never
    with pytest.raises(ValueError, match="dismissal"):  # an unknown way is refused
        p.watch(popups=[{"text": "Swipe up for more", "dismiss": "shake"}])


def test_unknown_android_dialog_is_closed_by_its_positive_button(phone):
    p, _, app = phone
    app.show_dialog("Understood")
    p.step("tap Go", GO, expect=DONE)
    assert app.dialog is None and app.screen == "done"


def test_tap_without_effect_is_tried_again(phone):
    p, _, app = phone
    app.ignore_taps = 2
    p.step("tap Go", GO, expect=DONE)
    assert app.screen == "done" and sum("acting again" in l for l in app.log) == 2


def test_once_step_taps_again_only_where_the_screen_stayed_as_it_was(phone):
    """A lost tap leaves the screen unchanged to the byte: a step done once taps again,
    but only after UNCHANGED_LOOKS looks at it."""
    p, _, app = phone
    app.ignore_taps = 1
    p.step("publish", GO, expect=DONE, once=True)
    assert app.screen == "done" and app.taps_on_go == 1
    assert sum("acting again" in line for line in app.log) == 1


def test_once_step_never_taps_twice_a_tap_the_app_took(phone):
    """The app took the tap (a spinner shows) but the expected screen never comes: a
    step done once waits it out and fails, not auto-retried, with one tap made; an
    ordinary step would have tapped again (and posted twice)."""
    p, _, app = phone
    app.busy = "idle"
    with pytest.raises(lite.StepFailed) as failure:
        p.step("publish", GO, expect=DONE, once=True, timeout=4)
    assert app.taps_on_go == 1 and failure.value.retry is False
    assert "did not show within 4 s" in str(failure.value)
    assert any("not retried" in line for line in app.log)
    app.busy, app.taps_on_go = "idle", 0
    with pytest.raises(lite.StepFailed) as failure:
        p.step("tap Go", GO, expect=DONE, timeout=4)
    assert app.taps_on_go >= 2 and failure.value.retry is not False


def test_once_step_is_not_tapped_again_after_its_own_confirmation(phone):
    """The tap brings a confirmation ("Post anyway"), closed as a pop-up, and the app
    goes on (a spinner): that pop-up was the tap's effect, not a pop-up that took it,
    and the button under it is not tapped again."""
    p, _, app = phone
    app.confirms = True
    p.watch(popups=[{"text": "Post anyway"}], package=PKG)
    with pytest.raises(lite.StepFailed) as failure:
        p.step("publish", GO, expect=DONE, once=True, timeout=4)
    assert app.taps_on_go == 1 and app.busy == "tapped" and failure.value.retry is False


def test_once_step_whose_tap_was_cut_short_is_not_retried(phone):
    """The phone went away during the tap: it may have landed, so no auto-retry."""
    p, _, _ = phone

    def cut_short(node):
        raise lite.CommandTimeout("input tap did not finish within 10 s")
    with pytest.raises(lite.CommandTimeout) as failure:
        p.step("publish", GO, expect=DONE, once=True, act=cut_short)
    assert failure.value.retry is False


def test_once_step_that_never_acted_is_retried(phone):
    """Nothing was done: a missing target fails as usual, free to be auto-retried."""
    p, _, _ = phone
    with pytest.raises(lite.ElementNotFound) as failure:
        p.step("publish", {"text": "Rocket"}, expect=DONE, once=True, timeout=0.5)
    assert failure.value.retry is not False


def test_step_fails_naming_step_expected_and_screen(phone):
    p, _, app = phone
    app.ignore_taps = 10
    with pytest.raises(lite.StepFailed) as failure:
        p.step("tap Go", GO, expect=DONE, attempts=2, timeout=10)
    message = str(failure.value)
    assert message.startswith("tap Go: ") and "text='Done!'" in message
    assert "after 2 attempts" in message and "'Go'" in message     # what it showed


def test_missing_target_fails_with_what_the_screen_showed(phone):
    p, _, _ = phone
    with pytest.raises(lite.ElementNotFound) as failure:
        p.step("tap Rocket", {"text": "Rocket"}, timeout=0.5)
    assert "text='Rocket'" in str(failure.value) and "'Go'" in str(failure.value)


def test_block_screen_fails_as_account_blocked_without_retry(phone):
    p, _, app = phone
    app.dialog = alert_window(PKG, "Try Again Later", "We restrict certain activity.",
                              [("OK", "android:id/button1")], bounds=(90, 820, 990, 1500))
    p.watch(blocks=[{"text": "Try Again Later"}])
    with pytest.raises(lite.AccountBlocked) as failure:
        p.step("tap Go", GO, expect=DONE)
    assert failure.value.retry is False and app.taps_on_go == 0
    assert "account blocked: Try Again Later" in str(failure.value)
    assert "We restrict certain activity." in failure.value.said


def test_block_text_counts_only_where_the_app_says_it(phone):
    """Not in a field, a notification of another app, or the words this task typed (its
    comment showing in the list); the app's own message still counts beside them."""
    p, _, _ = phone
    p.watch(blocks=[{"text_contains": "Too many attempts"}], package=PKG)
    p._typed.append("Too many attempts to land this, respect")   # what type_text keeps

    def look(*nodes):
        p.check_blocked(lite.UiTree(hierarchy_xml(ui_node(children=nodes), package=PKG)),
                        "look")
    look(ui_node("android.widget.EditText", text="Too many attempts, my friend"),
         ui_node(text="Too many attempts to land this, respect"),
         ui_node(text="Too many attempts. Try again later.",
                 package="com.android.systemui"))
    with pytest.raises(lite.AccountBlocked) as failure:
        look(ui_node(text="Too many attempts to land this, respect"),
             ui_node(text="Too many attempts. Try again later."))
    assert failure.value.said == "Too many attempts. Try again later."


def test_block_text_in_a_list_of_what_people_wrote_is_no_block(phone):
    """Another user's comment quoting a block text is a row of the comments list; the
    same words in a dialog, even one holding a list, are the app's (GramAddict calls a
    block the dialog showing)."""
    p, _, _ = phone
    p.watch(blocks=[{"text_contains": "Too many attempts"}], package=PKG)
    recycler = "androidx.recyclerview.widget.RecyclerView"

    def look(*nodes):
        p.check_blocked(lite.UiTree(hierarchy_xml(ui_node(children=nodes), package=PKG)),
                        "look")
    look(ui_node(recycler, children=[ui_node(children=[
        ui_node(text="sam_k"), ui_node(text="Too many attempts to land this, respect")])]))
    with pytest.raises(lite.AccountBlocked):
        look(ui_node(resource_id=f"{PKG}:id/dialog_container", children=[
            ui_node(recycler, children=[ui_node(text="Too many attempts. Try later.")])]))
    with pytest.raises(lite.AccountBlocked):
        look(ui_node(recycler, children=[ui_node(text="sam_k")]),
             ui_node(text="Too many attempts. Try again later."))


def test_app_that_left_the_screen_raises_app_left(phone):
    p, device, _ = phone
    device.stop_app(PKG)
    with pytest.raises(lite.AppLeft) as failure:
        p.step("tap Go", GO, expect=DONE, timeout=20)
    assert "no longer on the screen" in str(failure.value)


def test_a_crash_at_the_tap_is_no_effect_even_for_an_element_expected_to_go(phone):
    """The launcher a crash falls back to lacks the button as well: "Go gone" is not
    seen there (the app must be on the screen), and the step ends AppLeft, acted."""
    p, device, _ = phone
    device.crash_after_taps(0)
    with pytest.raises(lite.AppLeft) as failure:
        p.step("tap Go", GO, expect=lite.GONE, timeout=20)
    assert failure.value.acted


def test_crash_dialog_is_closed_and_raises_app_left(phone):
    p, device, _ = phone
    device.crash_app(PKG, dialog=True)
    with pytest.raises(lite.AppLeft):
        p.step("tap Go", GO, expect=DONE)
    assert not device.system_windows


def test_prepare_wakes_unlocks_keeps_awake_and_restore_gives_it_back(phone):
    p, device, _ = phone
    device.settings["global"]["stay_on_while_plugged_in"] = "0"
    device.screen_off()
    facts = p.prepare(PKG)
    assert device.screen_on and not device.locked
    assert device.stay_awake and facts["locale"] == "en-US"
    p.restore()
    assert not device.stay_awake


def test_prepare_refuses_a_missing_app_without_retry(phone):
    p, _, _ = phone
    with pytest.raises(lite.StepFailed) as failure:
        p.prepare("com.not.installed")
    assert failure.value.retry is False and "not installed" in str(failure.value)


def test_keyboard_is_remembered_by_the_device_manager_and_given_back(farm, phone):
    p, device, _ = phone
    device.installed_imes.append(lite.FAST_INPUT_IME)
    own = device.settings["secure"]["default_input_method"]
    p.type_text("héllo")
    assert device.settings["secure"]["default_input_method"] == lite.FAST_INPUT_IME
    assert farm.lite.devices.own_keyboard(device.address) == own
    p.restore()
    assert device.settings["secure"]["default_input_method"] == own


def test_text_the_phone_cannot_type_fails_before_anything(phone):
    p, device, _ = phone
    with pytest.raises(lite.StepFailed) as failure:
        p.check_can_type("Привет")
    assert failure.value.retry is False and "FastInputIME" in str(failure.value)


# -- selectors on real dumps -------------------------------------------------------------

def test_search_row_is_told_apart_from_the_field_keeping_the_query():
    """Instagram 410's results (real dump): the field keeps the query and a keyword
    row repeats it; a user row whose name is the query is found by its own id, and
    editable=False never gives the field."""
    xml = (FIXTURES / "ig410_fr_account_search_results.xml").read_text("utf-8")
    tree = lite.UiTree(xml)
    name = tree.find(resource_id="row_search_user_username").text
    field = tree.find(resource_id="action_bar_search_edit_text")
    xml = xml.replace(f'text="{field.text}"', f'text="{name}"', 1)
    tree = lite.UiTree(xml)
    naive = tree.find_all(text=name)
    assert any(n.class_name.endswith("EditText") for n in naive) and len(naive) >= 3
    assert not any(n.class_name.endswith("EditText")
                   for n in tree.find_all(text=name, editable=False))
    row = tree.find(resource_id="row_search_user_username", text=name,
                    inside={"resource_id": "row_search_user_container"})
    assert row is not None and row.clickable is False
    assert tree.inside(row, {"clickable": True})            # a tap on it opens the row


def test_inside_needs_the_ancestor():
    xml = hierarchy_xml(ui_node(children=[
        ui_node("android.widget.LinearLayout", (0, 0, 500, 200),
                resource_id="x:id/action_bar_username_container", children=[
            ui_node("android.widget.TextView", (0, 0, 400, 200), text="me",
                    resource_id="x:id/action_bar_large_title_auto_size")]),
        ui_node("android.widget.TextView", (0, 300, 400, 400), text="other",
                resource_id="x:id/action_bar_large_title_auto_size")]), package="x")
    tree = lite.UiTree(xml)
    inside = {"resource_id": "action_bar_username_container"}
    assert [n.text for n in tree.find_all(resource_id="action_bar_large_title_auto_size",
                                          inside=inside)] == ["me"]
    with pytest.raises(ValueError):
        tree.find(inside={"nope": 1})
