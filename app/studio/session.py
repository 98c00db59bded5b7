"""Who is asking: the jobs.users user behind a Gradio request (the `actor` jobs.api takes).

With `ftstudio serve --auth` Gradio logs users in (jobs.users.verify) and every event carries
request.username; without auth there is none and the actor is None (local mode: no
restriction). Every handler that reads or acts on jobs passes `actor(request)` to jobs.api, so
a non-admin sees only their own jobs (another owner's job is "not found") and an admin sees all.
"""

from __future__ import annotations

from typing import Any

import gradio as gr


def actor(request: gr.Request | None) -> dict[str, Any] | None:
    """None when logins are off; else the logged-in user. A user removed or disabled since
    logging in is refused (gr.Error), never treated as local mode."""
    username = getattr(request, "username", None) if request is not None else None
    if not username:
        return None
    from jobs import users

    user = users.get_user(str(username))
    if user is None or user.get("disabled"):
        raise gr.Error(f"account {username!r} is disabled or no longer exists; log in again "
                       "or ask an admin", print_exception=False)
    return user
