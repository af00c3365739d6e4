"""How an exception ends a task: one mapping (Failure.of) for the error, the artifacts,
auto-retry and whether the log gets a traceback."""
import pytest

import tikmatrix_lite as tml


@pytest.mark.parametrize("exc, error, artifacts, retry, traceback", [
    (tml.StepFailed("tap", "no button"), "tap: no button", True, True, False),
    (tml.StepFailed("open", "no such profile", retry=False), "open: no such profile",
     True, False, False),
    (tml.ElementNotFound("tap", {"text": "Go"}), "tap: element not found (text='Go')",
     True, True, False),
    (tml.DeviceError("ui_dump", "no dump"), "no dump", True, True, False),
    (tml.DeviceError("app_missing", "tiktok is not installed"), "tiktok is not installed",
     True, False, False),
    (tml.AccountBlocked("follow", "Try Again Later"), "account blocked: Try Again Later "
     "(follow)", True, False, False),
    (tml.StepFailed("follow", "account blocked: Slow down"), "account blocked: Slow down",
     True, False, False),
    (tml.AppLeft("tap Follow", "the app stopped"), "tap Follow: the app stopped", True, True,
     False),
    (tml.DeviceLost("gone"), tml.DISCONNECTED, False, True, False),
    (tml.CommandTimeout("slow"), "timed out: slow", True, True, False),
    (tml.BadRequest("caption", "too long"), "caption: too long", False, False, False),
    (KeyError("x"), "'x'", True, True, True),
    (SystemExit(), "SystemExit", True, True, True),
])
def test_each_exception_has_one_outcome(exc, error, artifacts, retry, traceback):
    failure = tml.Failure.of(exc)
    assert (failure.error, failure.artifacts, failure.retry, failure.traceback) == (
        error, artifacts, retry, traceback)


def test_device_errors_are_runtime_errors_with_a_known_kind():
    assert isinstance(tml.DeviceError("push", "refused"), RuntimeError)
    with pytest.raises(ValueError):
        tml.DeviceError("exploded", "no such kind")
