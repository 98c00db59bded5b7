"""Defaults that fit the model (engine/models/recipes.py): the learning rate per method, epochs per
dataset size, max_seq_len from the p99 length, the demo model's settings, and p99 in the
data report."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from engine.models import recipes
from engine.data import DataReport, fill_lengths, format_report
from tests_paths import ROOT

PRETRAINED = {"model_type": "llama", "max_position_embeddings": 2048}


def _report(p99: int = 301, records: int = 500, unit: str = "tokens") -> dict:
    return {"used": records, "train_records": int(records * 0.9), "length_p99": p99,
            "length_p95": p99 - 20, "length_max": p99 + 50, "length_unit": unit}


@pytest.fixture(scope="module")
def pretrained_folder(tiny_model, tmp_path_factory):
    """The tiny model without the demo's label: what a real local model looks like."""
    out = tmp_path_factory.mktemp("pretrained") / "tiny-pretrained"
    shutil.copytree(tiny_model, out)
    cfg = json.loads((out / "config.json").read_text())
    del cfg["ftstudio_demo"]
    (out / "config.json").write_text(json.dumps(cfg))
    return out


@pytest.mark.parametrize("method, lr", [("lora", 2e-4), ("dora", 2e-4), ("qlora", 2e-4),
                                        ("full", 2e-5), ("prompt_tuning", 3e-2),
                                        ("prefix_tuning", 1e-2), ("ia3", 3e-3)])
def test_the_learning_rate_follows_the_method(method, lr):
    s = recipes.suggest("someone/pretrained", method, _report(), PRETRAINED)["train.lr"]
    assert s.key == "train.lr" and s.value == lr
    assert s.reason.startswith(f"lr {recipes.format_value('train.lr', lr)}: ")
    if method in ("lora", "dora", "qlora"):
        assert "LoRA-family default for a pretrained model" in s.reason


def test_a_very_large_model_gets_the_lower_lora_rate():
    big = {"model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672,
           "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
           "vocab_size": 128256, "max_position_embeddings": 8192}
    s = recipes.suggest("meta-llama/Llama-3.1-70B", "qlora", _report(), big)["train.lr"]
    assert s.value == 1e-4 and "70B" in s.reason
    assert recipes.suggest("meta-llama/Llama-3.1-70B", "full", _report(),
                           big)["train.lr"].value == 2e-5


@pytest.mark.parametrize("records, epochs", [(1, 3), (999, 3), (1_000, 2), (9_999, 2),
                                             (10_000, 1), (250_000, 1)])
def test_epochs_follow_the_dataset_size(records, epochs):
    rep = {**_report(), "train_records": records}
    s = recipes.suggest("someone/pretrained", "lora", rep, PRETRAINED)["train.epochs"]
    assert s.value == epochs and f"{records:,} training records" in s.reason
    assert 1 <= s.value <= 3


def test_max_seq_len_is_the_p99_rounded_up_to_64():
    s = recipes.suggest("someone/pretrained", "lora", _report(p99=301),
                        PRETRAINED)["data.max_seq_len"]
    assert s.value == 320
    assert s.reason == ("max_seq_len 320: the data's p99 length is 301 tokens, rounded up to a "
                        "multiple of 64")
    assert recipes.round_seq_len(320) == 320 and recipes.round_seq_len(321) == 384


def test_max_seq_len_has_a_floor_and_the_models_positions_as_a_cap():
    short = recipes.suggest("someone/pretrained", "lora", _report(p99=40), PRETRAINED)
    assert short["data.max_seq_len"].value == 128 and "floor" in short["data.max_seq_len"].reason
    small = {**PRETRAINED, "max_position_embeddings": 512}
    long = recipes.suggest("someone/pretrained", "lora", _report(p99=3000), small)
    assert long["data.max_seq_len"].value == 512
    assert "capped at the model's 512 positions" in long["data.max_seq_len"].reason
    for kind in ("prompt_tuning", "prefix_tuning"):      # the virtual tokens need positions too
        s = recipes.suggest("someone/pretrained", kind, _report(p99=3000), small,
                            num_virtual_tokens=20)["data.max_seq_len"]
        assert s.value == 492 and "minus 20 virtual tokens" in s.reason
    fits = recipes.suggest("someone/pretrained", "prompt_tuning", _report(p99=301), small)
    assert fits["data.max_seq_len"].value == 320


def test_without_token_lengths_max_seq_len_is_the_default_under_the_cap():
    for rep in (None, {"used": 0}, _report(unit="words")):
        s = recipes.suggest("someone/pretrained", "lora", rep, PRETRAINED)["data.max_seq_len"]
        assert s.value == 512
    small = {**PRETRAINED, "max_position_embeddings": 256}
    assert recipes.suggest("someone/pretrained", "lora", None,
                           small)["data.max_seq_len"].value == 256
    old = {**_report(), "length_p99": 0, "length_max": 700}   # written before p99 existed
    s = recipes.suggest("someone/pretrained", "lora", old, PRETRAINED)["data.max_seq_len"]
    assert s.value == 704 and "longest" in s.reason


def test_the_demo_model_gets_the_demo_settings(tiny_model, pretrained_folder, home):
    demo = recipes.suggest(str(tiny_model), "lora", _report())
    assert {k: s.value for k, s in demo.items()} == recipes.DEMO_SETTINGS
    assert demo["train.lr"].reason == recipes.DEMO_REASON == demo["train.epochs"].reason
    assert all(s.reason.startswith("demo model:") for s in demo.values())
    assert recipes.is_demo(str(tiny_model))
    # the studio's demo folder is the demo even before it is built
    from engine.models.catalog import demo_dir
    assert not demo_dir().exists() and recipes.is_demo(str(demo_dir()))
    # the same weights without the label are a pretrained model to the recipes
    assert not recipes.is_demo(str(pretrained_folder))
    real = recipes.suggest(str(pretrained_folder), "lora", _report(p99=301))
    assert real["train.lr"].value == 2e-4 and real["data.max_seq_len"].value == 320
    assert not recipes.is_demo("Qwen/Qwen2.5-0.5B-Instruct")


def test_the_demo_settings_are_those_of_demo_yaml():
    demo = yaml.safe_load((ROOT / "static" / "examples" / "demo.yaml").read_text())
    assert recipes.DEMO_SETTINGS == {"train.lr": demo["train"]["lr"],
                                     "train.epochs": demo["train"]["epochs"],
                                     "data.max_seq_len": demo["data"]["max_seq_len"]}


def test_the_report_has_a_p99_and_old_reports_still_load():
    report = DataReport(path="x.jsonl", used=200)
    fill_lengths(report, list(range(1, 201)))
    assert (report.length_p95, report.length_p99, report.length_max) == (190, 198, 200)
    assert "p95 190, p99 198, max 200" in format_report(report)
    old = report.to_dict()
    del old["length_p99"]
    loaded = DataReport.from_dict(old)
    assert loaded.length_p99 == 0 and loaded.length_p95 == 190
    assert "p99" not in format_report(loaded)


def test_the_report_of_a_file_has_its_p99(tiny_tokenizer, examples):
    from engine.data import data_report

    r = data_report(examples / "alpaca.json", tiny_tokenizer)
    assert r.length_p95 <= r.length_p99 <= r.length_max and r.length_p99 > 0


def test_learning_rates_are_written_short():
    assert [recipes.format_value("train.lr", v) for v in (2e-4, 3e-2, 2e-5, 2.5e-4)] == \
        ["2e-4", "3e-2", "2e-5", "2.5e-4"]
    assert recipes.format_value("train.epochs", 3) == "3"


def test_a_learning_rate_far_from_the_methods_recipe_is_warned_about():
    from engine.models.recipes import lr_warning

    assert lr_warning(2e-4, "lora", "", {"model_type": "llama"}) is None
    far = lr_warning(0.5, "lora", "", {"model_type": "llama"})
    assert "2e-4 suggested for lora" in far and "diverge" in far
    assert lr_warning(3e-2, "prompt_tuning", "", {"model_type": "llama"}) is None
    assert "barely learn" in lr_warning(1e-7, "full", "", {"model_type": "llama"})
    assert lr_warning(3e-3, "lora", "", {"model_type": "llama", "ftstudio_demo": 1}) is None
