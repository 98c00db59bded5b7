"""The browser studio: Gradio tabs over engine/ and jobs/ (Train, Jobs, Playground).

Run as: ftstudio serve      (see app/cli_serve.py); from Python:
    from app.studio import build_app, launch_kwargs
    build_app().launch(**launch_kwargs())

Modules: ui (Blocks, theme, header), one per tab (train_tab, jobs_tab, playground_tab), their
plain-function handlers (handlers, jobview), the form spec (form), HTML pieces (render) and the
named API endpoints (api). No training, tokenizing or SQL here: handlers call engine and jobs.
"""

from __future__ import annotations


def build_app(worker: str = "embedded"):
    from app.studio.ui import build_app as _build

    return _build(worker)


def launch_kwargs() -> dict:
    from app.studio.ui import launch_kwargs as _kw

    return _kw()
