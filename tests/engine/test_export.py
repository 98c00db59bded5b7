"""Exports of a run folder: adapter, merged, bnb4/bnb8 (GGUF: test_export_gguf.py), and the CLI.

Run folders are built here with peft directly (the LoRA B weights perturbed so the adapter is not
a no-op), shaped like engine.training.loop's: adapter/ and run.json with the config.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from engine.export import FORMATS, ExportError, export

QUIET = dict(log=lambda _: None)
TEXT = "reverse: one two three four"


def make_run(root: Path, base: Path, tokenizer, method: str = "lora") -> Path:
    """A finished run folder for method over base: adapter/ (or the model for full), run.json."""
    from peft import (IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig,
                      get_peft_model)
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base)
    configs = {
        "lora": lambda: LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8,
                                   target_modules="all-linear"),
        "dora": lambda: LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, use_dora=True,
                                   target_modules=["q_proj", "v_proj", "down_proj"]),
        "ia3": lambda: IA3Config(task_type="CAUSAL_LM", target_modules=["k_proj", "v_proj",
                                 "down_proj"], feedforward_modules=["down_proj"]),
        "prompt_tuning": lambda: PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
        "prefix_tuning": lambda: PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    }
    if method != "full":
        model = get_peft_model(model, configs[method]())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if method == "full" or "lora_B" in name or "ia3_l" in name or "magnitude" in name:
                p.add_(torch.randn_like(p) * 0.05)
    run = root / f"run-{method}"
    model.save_pretrained(run / "adapter")
    tokenizer.save_pretrained(run / "adapter")
    record = {"config": {"model": {"name": str(base)}, "data": {"train": "alpaca.json",
                                                                "max_seq_len": 128},
                         "method": {"kind": method, "r": 4, "alpha": 8},
                         "train": {"lr": 3e-3, "max_steps": 6, "seed": 7}},
              "status": "completed", "data_sha256": {"static/examples/alpaca.json": "ab" * 32},
              "final_metrics": {"step": 6, "loss": 1.5, "eval_loss": 1.2345}}
    (run / "run.json").write_text(json.dumps(record))
    return run


def logits(model, tokenizer, text: str = TEXT) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits[0].float()


def adapter_model(run: Path, base: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base),
                                     run / "adapter").eval()


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model, tiny_tokenizer) -> Path:
    return make_run(tmp_path_factory.mktemp("export"), tiny_model, tiny_tokenizer)


# --------------------------------------------------------------------------- adapter


def test_adapter_zip_reloads_with_the_same_logits(lora_run, tiny_model, tiny_tokenizer, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = export(lora_run, "adapter", **QUIET)
    assert result.out_dir == lora_run / "exports" / "adapter"
    zips = [a for a in result.artifacts if a.path.suffix == ".zip"]
    assert len(zips) == 1 and zips[0].bytes == zips[0].path.stat().st_size > 0
    with zipfile.ZipFile(zips[0].path) as zf:
        assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= \
            set(zf.namelist())
        zf.extractall(tmp_path / "unzipped")
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model),
                                         tmp_path / "unzipped").eval()
    want = logits(adapter_model(lora_run, tiny_model), tiny_tokenizer)
    base = logits(AutoModelForCausalLM.from_pretrained(tiny_model), tiny_tokenizer)
    assert (want - base).abs().max() > 1e-3            # the adapter does something
    assert torch.equal(logits(reloaded, tiny_tokenizer), want)


def test_adapter_card_names_base_method_data_and_metrics(lora_run, tiny_model):
    result = export(lora_run, "adapter", **QUIET)
    card = (result.out_dir / "adapter" / "README.md").read_text()
    for needle in (str(tiny_model), "| method | lora |", "| r | 4 |", "| alpha | 8 |",
                   "| lr | 0.003 |", f"data `alpaca.json` sha256 | `{'ab' * 32}`",
                   "final eval_loss | 1.2345", "final loss | 1.5000", "Demo model",
                   "PeftModel.from_pretrained"):
        assert needle in card, needle


# --------------------------------------------------------------------------- merged


def test_merged_logits_equal_adapter_logits(lora_run, tiny_model, tiny_tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lines: list[str] = []
    result = export(lora_run, "merged", log=lines.append)
    out = lora_run / "exports" / "merged"
    names = {a.path.name for a in result.artifacts}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "chat_template.jinja", "README.md"} <= names
    assert all(a.bytes > 0 for a in result.artifacts)
    assert len(lines) >= 4 and any("merge_and_unload" in ln for ln in lines)
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == tiny_tokenizer.chat_template
    assert merged.generation_config.eos_token_id == tiny_tokenizer.eos_token_id
    want = logits(adapter_model(lora_run, tiny_model), tiny_tokenizer)
    torch.testing.assert_close(logits(merged, tokenizer), want, atol=1e-4, rtol=1e-4)


def test_merged_keeps_the_base_dtype(tmp_path, tiny_model, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    base = tmp_path / "bf16-base"
    AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16).save_pretrained(base)
    tiny_tokenizer.save_pretrained(base)
    run = make_run(tmp_path, base, tiny_tokenizer)
    export(run, "merged", **QUIET)
    weights = load_file(run / "exports" / "merged" / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}


@pytest.mark.parametrize("method", ["dora", "ia3"])
def test_other_adapters_merge_to_the_same_logits(method, tmp_path, tiny_model, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    run = make_run(tmp_path, tiny_model, tiny_tokenizer, method)
    export(run, "merged", **QUIET)
    merged = AutoModelForCausalLM.from_pretrained(run / "exports" / "merged").eval()
    want = logits(adapter_model(run, tiny_model), tiny_tokenizer)
    torch.testing.assert_close(logits(merged, tiny_tokenizer), want, atol=1e-4, rtol=1e-4)


def test_full_finetune_merged_is_the_trained_model(tmp_path, tiny_model, tiny_tokenizer):
    run = make_run(tmp_path, tiny_model, tiny_tokenizer, "full")
    result = export(run, "merged", out=tmp_path / "out", **QUIET)
    assert result.out_dir == tmp_path / "out"
    got = load_file(tmp_path / "out" / "model.safetensors")
    want = load_file(run / "adapter" / "model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert (tmp_path / "out" / "tokenizer.json").is_file()


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_virtual_token_methods_cannot_merge_and_say_what_can(method, tmp_path, tiny_model,
                                                             tiny_tokenizer):
    run = make_run(tmp_path, tiny_model, tiny_tokenizer, method)
    for fmt in ("merged", "bnb4", "gguf-q8_0"):
        with pytest.raises(ExportError, match=method) as err:
            export(run, fmt, **QUIET)
        assert "--format adapter" in str(err.value)
    assert not (run / "exports").exists()
    assert export(run, "adapter", **QUIET).artifacts


# --------------------------------------------------------------------------- bitsandbytes


@pytest.mark.parametrize("fmt,layer", [("bnb4", "Linear4bit"), ("bnb8", "Linear8bitLt")])
def test_bnb_exports_reload_quantized_and_generate(fmt, layer, lora_run, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    result = export(lora_run, fmt, **QUIET)
    config = json.loads((result.out_dir / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "bitsandbytes"
    if fmt == "bnb4":
        assert config["load_in_4bit"] and config["bnb_4bit_quant_type"] == "nf4"
        assert config["bnb_4bit_use_double_quant"]
    else:
        assert config["load_in_8bit"]
    model = AutoModelForCausalLM.from_pretrained(result.out_dir, device_map={"": "cpu"})
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == layer
    assert model.is_loaded_in_4bit if fmt == "bnb4" else model.is_loaded_in_8bit
    ids = tiny_tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    merged_size = sum(p.numel() * 4 for p in model.parameters())   # as if all float32
    assert (result.out_dir / "model.safetensors").stat().st_size < merged_size


# --------------------------------------------------------------------------- errors and CLI


def test_unknown_format_and_missing_run_are_clear(tmp_path, lora_run):
    with pytest.raises(ExportError, match="choose one of: adapter, merged"):
        export(lora_run, "onnx", **QUIET)
    with pytest.raises(ExportError, match="no adapter/"):
        export(tmp_path, "merged", **QUIET)
    assert list(FORMATS) == ["adapter", "merged", "bnb4", "bnb8", "gguf-f16", "gguf-q8_0",
                             "gguf-q4_0"]


def test_cli_export_runs(lora_run, tmp_path):
    from app.cli import cli

    result = CliRunner().invoke(cli, ["export", str(lora_run), "--format", "adapter",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "adapter.zip" in result.output and (tmp_path / "out" / "adapter").is_dir()
    assert "verified: " in result.output and "same answers" in result.output
    skipped = CliRunner().invoke(cli, ["export", str(lora_run), "--format", "adapter",
                                       "--out", str(tmp_path / "out2"), "--no-verify"])
    assert skipped.exit_code == 0, skipped.output
    assert skipped.output.rstrip().endswith("not verified (--no-verify)")
    bad = CliRunner().invoke(cli, ["export", str(tmp_path), "--format", "merged"])
    assert bad.exit_code != 0 and "no adapter/" in bad.output


def test_cli_export_resolves_a_job_id(lora_run, tmp_path, monkeypatch):
    from jobs import api

    from app.cli import cli

    jobs = {"abc123": {"id": "abc123", "status": "completed", "output_dir": str(lora_run)}}

    def get(job_id):
        if job_id not in jobs:
            raise api.JobNotFound(f"no job {job_id}")
        return jobs[job_id]

    monkeypatch.setattr(api, "get", get)
    result = CliRunner().invoke(cli, ["export", "abc123", "--format", "adapter",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").is_file()
    missing = CliRunner().invoke(cli, ["export", "nope", "--format", "adapter"])
    assert missing.exit_code != 0 and "neither a run folder nor a job" in missing.output


@pytest.mark.slow
def test_real_lora_run_exports_merged_and_gguf(tmp_path, tiny_model, tiny_tokenizer):
    """A short real training run (engine.training.loop), then merged and GGUF exports of it."""
    from engine.training import loop as train
    from transformers import AutoModelForCausalLM

    from engine.config import from_dict
    from engine.training.reporter import NullReporter
    from tests_paths import EXAMPLES

    cfg = from_dict({"model": {"name": str(tiny_model)},
                     "data": {"train": str(EXAMPLES / "alpaca.json"), "max_seq_len": 128},
                     "method": {"kind": "lora", "r": 8, "alpha": 16},
                     "train": {"max_steps": 4, "lr": 3e-3, "batch_size": 8, "eval_every": 0,
                               "save_every": 0},
                     "output_dir": str(tmp_path / "run")})
    train.run(cfg, NullReporter())
    export(tmp_path / "run", "merged", **QUIET)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "exports" / "merged").eval()
    want = logits(adapter_model(tmp_path / "run", tiny_model), tiny_tokenizer)
    torch.testing.assert_close(logits(merged, tiny_tokenizer), want, atol=1e-4, rtol=1e-4)
    result = export(tmp_path / "run", "gguf-q8_0", **QUIET)
    assert any(a.path.suffix == ".gguf" and a.bytes > 0 for a in result.artifacts)
    card = (result.out_dir / "README.md").read_text()
    assert "lora" in card
