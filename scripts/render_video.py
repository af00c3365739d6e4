"""Render a video on another machine, for a later post: an external script (SPEC 8.4).

Lite's runners never start these tasks; a worker program takes them with
``POST /api/v1/worker/next``, reports progress, and completes or fails them. See the
README ("External workers") for a worker in a few lines of Python.
"""
DESCRIPTION = "Render a video elsewhere (an external worker takes the task)"
RUNNER = "external"
PARAMS = {
    "source_url": {"type": "str", "required": True, "max_length": 2000,
                   "description": "where the worker fetches the footage"},
    "template": {"type": "str", "default": "vertical-1080",
                 "choices": ["vertical-1080", "vertical-720", "square-1080"]},
    "caption": {"type": "str", "default": "", "max_length": 2200},
}
