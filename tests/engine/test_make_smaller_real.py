"""Make it smaller, on a real model (slow): SmolLM2-135M-Instruct (imported from its GGUF file)
tuned with LoRA on a small task (colour names into French) is the teacher; a quarter of its
layers is pruned away (engine/models/prune.py) and the rest healed by distillation from it
(engine/training/distill.py, the teacher's top-k cached); the run's own evaluation shows how
much of the teacher's exact match the student keeps, and distill.md the size, parameters and
generation speed of both. The figures in docs/distillation.md come from this test
(FTSTUDIO_TEST_FIGURES=FILE writes them as JSON)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from engine.config import TrainConfig
from engine.training.loop import run
from engine.training.reporter import ListReporter

COLOURS = {"red": "rouge", "blue": "bleu", "green": "vert", "yellow": "jaune", "black": "noir",
           "white": "blanc", "pink": "rose", "grey": "gris", "purple": "violet",
           "brown": "marron", "orange": "orange", "gold": "or"}
ASK = ["Translate the colour {c} into French. Answer with one word.",
       "What is {c} in French? One word.",
       "French word for the colour {c}? Answer with the word only.",
       "Say {c} in French (one word).",
       "Give the French for {c}, one word only."]


def colour_data(path: Path) -> Path:
    rows = [{"instruction": a.format(c=c), "output": f} for c, f in COLOURS.items() for a in ASK]
    random.Random(0).shuffle(rows)
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def base_config(model, data: Path, out: Path, **train) -> TrainConfig:
    cfg = TrainConfig()
    cfg.model.name, cfg.model.dtype = str(model), "float32"
    cfg.data.train, cfg.data.max_seq_len, cfg.data.val_fraction = str(data), 96, 0.2
    cfg.train.precision = "fp32"
    cfg.train.batch_size, cfg.train.warmup_ratio, cfg.train.scheduler = 8, 0.0, "constant"
    cfg.train.eval_every, cfg.train.save_every = 0, 0
    cfg.train.eval_generate, cfg.train.eval_generate_max_new_tokens = "end", 6
    cfg.output_dir = str(out)
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


@pytest.mark.slow
def test_prune_a_quarter_and_heal_by_distillation(smollm2_model, home, tmp_path):
    from engine.export import export
    from engine.models.prune import prune

    data = colour_data(tmp_path / "colours.json")
    teacher_run = tmp_path / "teacher"
    cfg = base_config(smollm2_model, data, teacher_run, max_steps=16, lr=2e-3)
    cfg.method.r, cfg.method.alpha = 8, 16
    run(cfg, ListReporter())
    teacher_eval = json.loads((teacher_run / "eval.json").read_text())
    teacher_em = teacher_eval["metrics"]["exact_match"]["tuned"]
    assert teacher_em >= 0.5, teacher_eval["metrics"]["exact_match"]

    merged = tmp_path / "teacher-merged"
    export(teacher_run, "merged", out=merged, log=lambda _: None, verify=False)
    layers = json.loads((merged / "config.json").read_text())["num_hidden_layers"]
    pruned = prune(str(merged), drop_layers=layers // 4, data=str(data), name="colours-small",
                   log=print)
    assert pruned.layers_after == layers - layers // 4

    student_run = tmp_path / "student"
    cfg = base_config(pruned.folder, data, student_run, max_steps=24, lr=1e-4,
                      objective="distill", teacher=str(merged), distill_alpha=0.5,
                      distill_temperature=1.0, teacher_topk_cache=32)
    cfg.method.kind = "full"
    reporter = ListReporter()
    run(cfg, reporter)
    record = json.loads((student_run / "eval.json").read_text())
    assert record["baseline"] == "teacher"
    em = record["metrics"]["exact_match"]
    facts = json.loads((student_run / "run.json").read_text())["distill"]
    print("\n" + (student_run / "distill.md").read_text())
    figures = {"teacher_exact_match": teacher_em, "exact_match": em, "facts": facts,
               "removed_layers": pruned.removed_layers, "layers": [layers, pruned.layers_after],
               "distill_first_last": [reporter.series("distill")[0][1],
                                      reporter.series("distill")[-1][1]]}
    if os.environ.get("FTSTUDIO_TEST_FIGURES"):
        Path(os.environ["FTSTUDIO_TEST_FIGURES"]).write_text(json.dumps(figures, indent=2))
    assert em["base"] == pytest.approx(teacher_em)           # the teacher, answering again
    assert facts["student"]["params"] < 0.85 * facts["teacher"]["params"]
    assert facts["student"]["bytes"] < facts["teacher"]["bytes"]
    assert "exact_match" in facts["kept"]
    assert em["tuned"] >= 0.25 * teacher_em, em   # healing kept a real share of the skill
    assert reporter.series("distill")[-1][1] < reporter.series("distill")[0][1]
