"""Fixtures of the queue tests; the helpers live in queue_helpers.py."""

from __future__ import annotations

import pytest

from queue_helpers import Workers


@pytest.fixture()
def workers(home, tmp_path):
    home.mkdir(parents=True, exist_ok=True)
    w = Workers(home, tmp_path)
    yield w
    w.stop_all()
