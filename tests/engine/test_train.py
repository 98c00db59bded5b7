"""The training loop end to end on the tiny model: every method learns, the files it leaves,
evaluation, early stopping, stopping on request and on Ctrl-C."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.config import ConfigError, TrainConfig
from engine.training.reporter import ListReporter
from engine.training.loop import run

#: learning rates that make each method's loss fall visibly on the tiny model in 25 steps
LEARNING_RATES = {"lora": 3e-2, "dora": 3e-2, "qlora": 3e-2, "qlora-8bit": 3e-2,
                  "prompt_tuning": 1e-1, "prefix_tuning": 3e-2, "ia3": 1e-1, "full": 3e-3}


def config(tiny_model, examples, out: Path, kind: str = "lora", **train) -> TrainConfig:
    cfg = TrainConfig()
    cfg.model.name = str(tiny_model)
    cfg.data.train = str(examples / "alpaca.json")
    cfg.data.max_seq_len = 128
    cfg.method.kind = kind
    cfg.train.batch_size = 8
    cfg.train.max_steps = 25
    cfg.train.scheduler = "constant"
    cfg.train.warmup_ratio = 0.0
    cfg.train.eval_every = 0
    cfg.train.save_every = 0
    for k, v in train.items():
        setattr(cfg.train, k, v)
    cfg.output_dir = str(out)
    return cfg


def losses(reporter: ListReporter) -> list[float]:
    return [v for _, v in reporter.series("loss")]


def rebuild_from_checkpoint(cfg: TrainConfig, checkpoint: Path):
    """The in-memory model at the end of a run: the base + method with the checkpoint's
    trainable weights (what the loop held when it saved)."""
    from safetensors.torch import load_file

    from engine.training.checkpoint import load_trainable_state
    from engine.models.load import load_model

    model, _, _ = load_model(cfg, log=lambda line: None)
    load_trainable_state(model, load_file(checkpoint / "trainable.safetensors"))
    return model.eval()


@pytest.mark.parametrize("kind", list(LEARNING_RATES))
def test_each_method_learns_and_its_adapter_reloads(tiny_model, examples, home, tmp_path, kind):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    method = "qlora" if kind.startswith("qlora") else kind
    cfg = config(tiny_model, examples, tmp_path / "run", method, lr=LEARNING_RATES[kind])
    cfg.method.quant_bits = 8 if kind == "qlora-8bit" else 4
    reporter = ListReporter()
    result = run(cfg, reporter)

    seen = losses(reporter)
    assert len(seen) == 25 and result.steps == 25 and not result.cancelled
    assert sum(seen[-3:]) / 3 < sum(seen[:3]) / 3 - 0.05, seen
    if method in ("prompt_tuning", "prefix_tuning"):
        assert any("packing is off" in line for line in reporter.lines)

    adapter = Path(result.adapter_dir)
    in_memory = rebuild_from_checkpoint(cfg, tmp_path / "run" / "checkpoints" / "step-25")
    if method == "full":
        reloaded = AutoModelForCausalLM.from_pretrained(adapter)
    else:
        quant = in_memory.base_model.model.config.quantization_config if method == "qlora" \
            else None
        base = AutoModelForCausalLM.from_pretrained(
            tiny_model, quantization_config=BitsAndBytesConfig.from_dict(quant.to_dict())
            if quant else None)
        reloaded = PeftModel.from_pretrained(base, adapter)
    ids = torch.randint(3, 500, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = in_memory(input_ids=ids).logits, reloaded.eval()(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-5)


def test_metrics_jsonl_and_run_json(tiny_model, examples, home, tmp_path):
    out = tmp_path / "run"
    cfg = config(tiny_model, examples, out, max_steps=6, eval_every=3, save_every=4,
                 log_every=2, scheduler="cosine", warmup_ratio=0.2)
    reporter = ListReporter()
    result = run(cfg, reporter)

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records == reporter.records
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in train] == [2, 4, 6] and [r["step"] for r in evals] == [3, 6]
    assert set(train[0]) == {"step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s",
                             "total_tokens_per_s",
                             "total_steps"}
    assert train[0]["total_steps"] == 6 and train[-1]["epoch"] > train[0]["epoch"] > 0
    # every real token, prompts included, against only those that carry loss
    assert all(r["total_tokens_per_s"] > r["tokens_per_s"] > 0 for r in train)
    assert set(evals[0]) == {"step", "epoch", "eval_loss", "eval_perplexity",
                             "eval_token_accuracy"}
    assert evals[0]["eval_perplexity"] == pytest.approx(2.718281828 ** evals[0]["eval_loss"])
    assert 0 <= evals[0]["eval_token_accuracy"] <= 1

    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "completed" and info["steps"] == 6
    assert info["config"]["train"]["max_steps"] == 6 and info["seed"] == 42
    assert info["data_sha256"][cfg.data.train] and len(info["data_sha256"][cfg.data.train]) == 64
    assert set(info["versions"]) == {"torch", "transformers", "peft", "accelerate",
                                     "bitsandbytes", "datasets"}
    assert info["timings"]["seconds"] > 0 and info["timings"]["tokens_per_s"] > 0
    assert info["final_metrics"]["eval_loss"] == evals[-1]["eval_loss"] == \
        result.metrics["eval_loss"]
    assert info["data_report"]["train_records"] == 216
    assert 0 < info["trainable_params"] < info["total_params"]
    assert info["batching"]["packing"] and 0 <= info["batching"]["padding_share"] < 0.5

    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-4", "step-6"]
    assert {p.name for p in (out / "checkpoints" / "step-6").iterdir()} == {
        "trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng-rank0.json", "state.json"}
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert any(line.startswith("model:") and "trainable" in line for line in reporter.lines)
    assert any(line.startswith("batching:") and "padding" in line for line in reporter.lines)
    assert any(line.startswith("finished (completed)") for line in reporter.lines)


def test_early_stopping_stops_and_keeps_the_best_adapter(tiny_model, examples, home, tmp_path):
    from accelerate import Accelerator
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from engine.data import Batches
    from engine.data import prepare
    from engine.models.load import load_tokenizer
    from engine.training.loop import evaluate

    out = tmp_path / "run"
    cfg = config(tiny_model, examples, out, "full", lr=0.5, eval_every=1,
                 early_stopping_patience=2, max_steps=30)
    reporter = ListReporter()
    result = run(cfg, reporter)

    evals = [r["eval_loss"] for r in reporter.records if "eval_loss" in r]
    assert result.stopped_early and result.steps < 30
    assert result.best_eval_loss == min(evals) and evals[-1] > min(evals)
    assert json.loads((out / "run.json").read_text())["status"] == "stopped_early"
    assert any(line.startswith("early stopping") for line in reporter.lines)

    tokenizer = load_tokenizer(str(tiny_model))  # the kept model scores the best eval loss
    data = prepare(cfg, tokenizer, log=lambda line: None)
    batches = Batches(data.validation, batch_size=8, max_seq_len=128, packing=True,
                      order="as_is", seed=42, pad_id=tokenizer.pad_token_id)
    best = AutoModelForCausalLM.from_pretrained(out / "adapter")
    assert evaluate(best, batches, Accelerator(cpu=True))["eval_loss"] == \
        pytest.approx(result.best_eval_loss, abs=1e-5)
    assert not isinstance(best, PeftModel)


def test_should_stop_saves_a_checkpoint_and_cancels(tiny_model, examples, home, tmp_path):
    out = tmp_path / "run"
    reporter = ListReporter(stop_after_step=3)
    result = run(config(tiny_model, examples, out, eval_every=2), reporter)
    assert result.cancelled and result.steps == 3
    folder = out / "checkpoints" / "step-3"
    assert json.loads((folder / "state.json").read_text())["step"] == 3
    assert json.loads((out / "run.json").read_text())["status"] == "cancelled"
    assert any(f"train.resume_from={folder}" in line for line in reporter.lines)


class InterruptAt(ListReporter):
    """Raises KeyboardInterrupt (as Ctrl-C would) when asked after `step`."""

    def __init__(self, step: int):
        super().__init__()
        self.step = step

    def should_stop(self) -> bool:
        if max((s for s, _ in self.series("loss")), default=0) >= self.step:
            raise KeyboardInterrupt
        return False


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tiny_model, examples, home, tmp_path):
    out = tmp_path / "run"
    reporter = InterruptAt(2)
    result = run(config(tiny_model, examples, out), reporter)
    assert result.cancelled and result.steps == 2
    assert (out / "checkpoints" / "step-2" / "state.json").is_file()
    assert any(line.startswith("interrupted") for line in reporter.lines)
    assert any("ftstudio train CONFIG --set train.resume_from=" in line for line in reporter.lines)


def test_gradient_checkpointing_and_accumulation_keep_the_losses(tiny_model, examples, home,
                                                                 tmp_path):
    """Checkpointing recomputes with the same dropout masks; without dropout, 2 accumulated
    micro-batches of 4 rows give the losses of batches of 8 (the mean is over all their
    tokens)."""
    def losses_of(name, dropout=0.05, **train):
        reporter = ListReporter()
        cfg = config(tiny_model, examples, tmp_path / name, max_steps=4, **train)
        cfg.method.dropout = dropout
        run(cfg, reporter)
        return losses(reporter)

    assert losses_of("gc", gradient_checkpointing=True) == pytest.approx(losses_of("plain"),
                                                                         abs=1e-5)
    assert losses_of("accum", 0.0, batch_size=4, grad_accum=2) == pytest.approx(
        losses_of("whole", 0.0), abs=1e-5)


@pytest.mark.parametrize("optimizer", ["adamw_8bit", "lion_8bit", "adafactor", "sgd"])
def test_every_optimizer_steps(tiny_model, examples, home, tmp_path, optimizer):
    reporter = ListReporter()
    run(config(tiny_model, examples, tmp_path / "run", max_steps=3, optimizer=optimizer,
               weight_decay=0.01), reporter)
    assert len(losses(reporter)) == 3 and all(l == l for l in losses(reporter))


def test_neftune_and_shortest_first_without_packing(tiny_model, examples, home, tmp_path):
    cfg = config(tiny_model, examples, tmp_path / "run", max_steps=3, neftune_alpha=5.0)
    cfg.data.packing, cfg.data.order = False, "shortest_first"
    reporter = ListReporter()
    run(cfg, reporter)
    assert any(line.startswith("neftune") for line in reporter.lines)
    assert any("shortest_first" in line and "moved" in line for line in reporter.lines)
    assert any("one per row" in line for line in reporter.lines)


def test_run_checks_the_config_first(tiny_model, examples, tmp_path):
    cfg = config(tiny_model, examples, tmp_path / "run")
    cfg.output_dir = None
    with pytest.raises(ConfigError, match="output_dir"):
        run(cfg)
    cfg.output_dir = str(tmp_path / "run")
    cfg.train.resume_from = "latest"
    with pytest.raises(ConfigError, match="no checkpoint"):
        run(cfg)
