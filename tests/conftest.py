"""Shared fixtures. Test tiers, by pytest marker:

- (no marker)  fast, offline, CPU: the default `pytest` run, well under 10 minutes on 2 cores.
- slow         longer real-training tests (DDP, every method end to end); CI runs them.
- e2e          real browser / multi-process layouts; CI installs what they need and runs them.

`make test` runs all tiers; `make test-fast` only the first.
Nothing downloads: models are built here from engine.demo with a tokenizer trained offline.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "static" / "examples"

# one thread per process: tests start worker and runner processes beside pytest on 2 cores,
# where torch's default thread count makes each of them several times slower
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer Llama (hidden 64) with the demo tokenizer and chat template, built once."""
    from engine.demo import build_demo_model

    return build_demo_model(tmp_path_factory.mktemp("models") / "tiny", size="tiny",
                            max_position_embeddings=512)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture()
def examples() -> Path:
    return EXAMPLES


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    """A fresh FTSTUDIO_HOME for one test."""
    monkeypatch.setenv("FTSTUDIO_HOME", str(tmp_path / "home"))
    return tmp_path / "home"
