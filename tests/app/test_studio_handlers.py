"""The Train tab's handlers as plain functions: form <-> config, data report, estimate,
YAML, the command preview, uploads."""

from __future__ import annotations

import json

import re
import shlex
import shutil

import yaml
from click.testing import CliRunner

from app.cli import cli
from app.studio import form, handlers, render
from engine.config import TrainConfig, load_config, to_yaml
from jobs import api


def _values(cfg: TrainConfig | None = None) -> dict:
    return form.form_to_values(form.config_to_form(cfg or TrainConfig()))


def _good(tiny_model, examples) -> dict:
    cfg = TrainConfig()
    cfg.model.name, cfg.data.train = str(tiny_model), str(examples / "alpaca.json")
    return _values(cfg)


def test_every_form_key_is_a_config_key_with_help():
    from engine.config import all_keys, help_for, label_for

    assert set(form.FORM_KEYS) <= set(all_keys())
    for key in form.FORM_KEYS:
        spec = form.widget_spec(key)
        assert spec["info"] == help_for(key) and spec["label"] == label_for(key)
    assert not hasattr(form, "LABELS"), "labels live in the config fields' metadata"
    assert form.label_for("train.eval_generate") == "Generation eval"
    assert form.label_for("sweep.grid") == "Grid"   # a key that is not a config key


def test_form_round_trip_keeps_the_config(tiny_model, examples):
    cfg = TrainConfig()
    cfg.model.name, cfg.data.train = str(tiny_model), str(examples / "chat.jsonl")
    cfg.method.kind, cfg.method.target_modules = "dora", ["q_proj", "v_proj"]
    cfg.train.max_steps, cfg.train.lr, cfg.data.system_prompt = 7, 1e-3, "Be brief."
    built, problems = form.check_form(_values(cfg))
    assert problems == []
    assert built.to_dict() == cfg.to_dict()


def test_the_form_sends_metrics_to_the_chosen_trackers(tiny_model, examples):
    spec = form.widget_spec("train.report_to")
    assert spec["type"] == "dropdown" and spec["multiselect"] and spec["value"] == []
    assert spec["choices"] == ["tensorboard", "mlflow", "wandb"]
    values = _good(tiny_model, examples)
    assert values["train.report_to"] == [] and values["train.tracker_experiment"] is None
    cfg, problems = form.check_form({**values, "train.report_to": ["mlflow", "tensorboard"],
                                     "train.tracker_experiment": "lr-search"})
    assert not problems
    assert cfg.train.report_to == ["mlflow", "tensorboard"]
    assert cfg.train.tracker_experiment == "lr-search"
    shown = dict(zip(form.FORM_KEYS, form.config_to_form(cfg)))
    assert shown["train.report_to"] == ["mlflow", "tensorboard"]
    assert "train.report_to=mlflow,tensorboard" in form.overrides(cfg)
    _, problems = form.check_form({**values, "train.report_to": ["comet"]})
    assert [p.key for p in problems] == ["train.report_to"]


def test_every_problem_is_reported_at_once(tiny_model, examples):
    values = _good(tiny_model, examples)
    values.update({"train.lr": "fast", "method.r": None, "data.train": "notes.txt",
                   "train.warmup_ratio": 2, "train.max_steps": "-3"})
    _, problems = form.check_form(values)
    keys = {p.key for p in problems}
    assert {"train.lr", "method.r", "data.train", "train.warmup_ratio",
            "train.max_steps"} <= keys
    html = render.problems(problems, form.label_for)
    assert "Learning rate" in html and f"{len(problems)} problems to fix" in html


def test_empty_optional_numbers_become_null(tiny_model, examples):
    values = _good(tiny_model, examples)
    values = form.form_to_values([values[k] for k in form.FORM_KEYS])
    assert values["train.max_steps"] is None and values["train.neftune_alpha"] is None
    cfg, problems = form.check_form({**values, "train.max_steps": "12"})
    assert not problems and cfg.train.max_steps == 12


def test_data_panel_reports_and_previews_with_loss_marks(tiny_model, examples):
    html, hist, records = handlers.data_panel(_good(tiny_model, examples))
    assert "alpaca" in html and "Records" in html
    assert len(hist) > 0 and hist["records"].sum() > 0
    assert len(records) == handlers.PREVIEW_RECORDS
    labels = {label for _, label in records[0]}
    assert labels == {"trained", None}              # both kinds of token are there
    trained = "".join(t for t, label in records[0] if label == "trained")
    assert "<|im_end|>" in trained                  # the end of turn is trained


def test_data_panel_previews_preference_pairs_side_by_side(tiny_model, examples):
    values = _good(tiny_model, examples)
    values["data.train"] = str(examples / "preference.jsonl")
    html, _, records = handlers.data_panel(values)
    assert "preference" in html and len(records) == handlers.PREVIEW_RECORDS
    labels = [label for _, label in records[0]]
    assert {"trained", "rejected", None} == set(labels)     # both answers, their own marks
    texts = "".join(t for t, _ in records[0])
    assert texts.index("chosen") < texts.index("rejected")


def test_data_panel_shows_bad_records_with_line_numbers(tiny_model, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\nnot json\n')
    values = {**_good(tiny_model, tmp_path), "data.train": str(bad)}
    html, _, _ = handlers.data_panel(values)
    assert "line 2" in html and "line 3" in html


def test_data_panel_without_a_file_says_what_to_do(tiny_model, examples):
    html, hist, records = handlers.data_panel({**_good(tiny_model, examples),
                                               "data.train": None})
    assert "upload" in html.lower() and hist is None and records == []


def test_the_cpu_allocator_note_is_one_line_with_its_detail_under_breakdown(
        tiny_model, examples, monkeypatch):
    """Regression: on CPU the card carried engine.models.estimate's paragraph on glibc's heap and
    MALLOC_MMAP_THRESHOLD_ among its notes."""
    from engine.models.estimate import estimate_for
    from engine.models.estimate import Device

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    cfg, _ = form.build_config(_good(tiny_model, examples))
    est = estimate_for(cfg, device=Device("cpu", "CPU RAM", 64 * 2**30, 32 * 2**30))
    assert any("MALLOC_MMAP_THRESHOLD_" in n for n in est.notes)
    html = render.estimate_card(est)
    details = re.search(r'<details class="fs-breakdown">.*?</details>', html, re.S).group(0)
    rest = html.replace(details, "")
    assert render.esc(render.ALLOCATOR_LINE) in rest and rest.count("fs-note") == 1
    assert "glibc" not in rest and "MALLOC_MMAP_THRESHOLD_" not in rest
    assert "glibc" in details and "MALLOC_MMAP_THRESHOLD_=131072" in details
    est.notes.append("QLoRA needs a CUDA GPU (bitsandbytes); on this machine it cannot run")
    assert "QLoRA needs a CUDA GPU" in render.estimate_card(est).replace(details, "")


def test_estimate_panel_shows_trainable_params_and_a_verdict(tiny_model, examples):
    html = handlers.estimate_panel(_good(tiny_model, examples))
    assert "Trainable parameters" in html and "32.8K" in html
    assert any(v in html for v in ("Fits", "Tight", "Exceeds"))
    unknown = handlers.estimate_panel({**_good(tiny_model, examples),
                                       "model.name": "nobody/nothing-here"})
    assert "No estimate" in unknown


def test_command_preview_reproduces_the_config(tiny_model, examples):
    values = _good(tiny_model, examples)
    values.update({"method.kind": "ia3", "train.lr": 0.01, "data.system_prompt": "Be brief & kind",
                   "method.target_modules": "k_proj, v_proj"})
    text = handlers.command_preview(values, "my run")
    first = text.split("ftstudio config ", 1)[1].split(" > ", 1)[0].replace("\\\n", " ")
    result = CliRunner().invoke(cli, ["config", *shlex.split(first)])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output) == yaml.safe_load(handlers.yaml_text(values))
    assert "ftstudio train my-run.yaml" in text


def test_yaml_save_and_load_round_trip(tiny_model, examples):
    values = _good(tiny_model, examples)
    values["method.kind"], values["train.epochs"] = "prompt_tuning", 2.5
    path = handlers.save_yaml(values, "demo")
    assert path.endswith("demo.yaml")
    loaded, problems = handlers.load_yaml(path)
    assert not problems
    assert dict(zip(form.FORM_KEYS, loaded))["method.kind"] == "prompt_tuning"
    assert load_config(path).train.epochs == 2.5


def test_loading_a_bad_yaml_lists_its_problems(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: fast\n  speed: 3\n")
    values, problems = handlers.load_yaml(str(bad))
    assert values is None and {p.key for p in problems} == {"train.lr", "train.speed"}


def test_uploads_are_kept_by_content_hash(home, examples, tmp_path):
    src = tmp_path / "mine.jsonl"
    shutil.copy(examples / "chat.jsonl", src)
    stored = handlers.store_upload(str(src))
    assert stored.startswith(str(home.resolve())) and stored.endswith("mine.jsonl")
    assert handlers.store_upload(str(src)) == stored
    try:
        handlers.store_upload(str(examples / "demo.yaml"))
    except ValueError as exc:
        assert "unsupported" in str(exc)
    else:
        raise AssertionError("a .yaml upload was accepted as data")


def test_default_form_is_the_demo_with_a_bundled_example(home):
    cfg = handlers.default_config()
    assert cfg.model.name.endswith("models/demo") and cfg.data.train.endswith("alpaca.json")
    assert cfg.output_dir is None
    assert to_yaml(cfg)
    assert any(path.endswith("chat.jsonl") for _, path in handlers.example_choices())


def _finished_run(model: str, method: str, rates: list[float], owner: str = "local") -> str:
    """A completed training job in the store that logged these tokens/s, one per step."""
    from jobs import store

    with store.connect() as db:
        job_id = store.insert_job(db, config={"model": {"name": model},
                                              "method": {"kind": method}},
                                  name=f"{method}-run", owner=owner, priority=0)
        assert store.transition(db, job_id, "running", attempt=store.Expr("attempt + 1"))
        for step, rate in enumerate(rates, 1):
            store.add_metrics(db, job_id, {"step": step, "loss": 2.0, "tokens_per_s": rate},
                              attempt=1)
        assert store.transition(db, job_id, "completed", frm=("running",))
    return job_id


def test_the_estimate_gives_the_time_per_epoch_a_finished_run_measured(home, tiny_model,
                                                                       examples):
    values = {**_good(tiny_model, examples), "train.epochs": 3, "train.max_steps": None}
    report_html, _, _ = handlers.data_panel(values)
    assert "Format" in report_html
    before = handlers.estimate_panel(values)
    assert "no finished run of this model here yet" in before

    _finished_run(str(tiny_model), "full", [50.0, 400.0])      # another method: a fallback
    other = handlers.estimate_panel(values)
    assert "per epoch" in other and "a full run" in other

    job_id = _finished_run(str(tiny_model), "lora", [9.0, 180.0, 220.0])  # first step: warm-up
    cfg, _ = form.build_config(values)
    timing = api.time_estimate(cfg)
    report = api.kept_report(cfg)
    tokens = int(report["trained_tokens"] * report["train_records"] / report["used"])
    assert timing["job_id"] == job_id and timing["same_method"]
    assert timing["tokens_per_s"] == 200.0 and timing["tokens_per_epoch"] == tokens > 0
    assert timing["seconds_per_epoch"] == tokens / 200.0
    html = handlers.estimate_panel(values)
    assert f"About {render.duration(tokens / 200.0)} per epoch" in html
    assert f"{render.duration(3 * tokens / 200.0)} for 3 epochs" in html
    assert f"job #{job_id}" in html and "a full run" not in html


def test_another_users_run_is_not_used_for_their_estimate(home, tiny_model, examples):
    values = _good(tiny_model, examples)
    handlers.data_panel(values)
    _finished_run(str(tiny_model), "lora", [100.0, 100.0], owner="bob")
    alice = {"username": "alice", "is_admin": False}
    assert "no finished run" in handlers.estimate_panel(values, alice)
    assert "per epoch" in handlers.estimate_panel(values, {"username": "bob", "is_admin": False})
    assert "per epoch" in handlers.estimate_panel(values, None)    # local mode sees all


def test_the_form_takes_grpo_and_shows_only_its_settings(tiny_model, examples, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "2+2?", "answer": "4"}\n' * 8)
    values = _good(tiny_model, examples)
    values.update({"train.objective": "grpo", "data.train": str(data),
                   "train.rewards": "[{name: numeric_match, args: {column: answer}}]",
                   "train.num_generations": 4, "train.grpo_loss_type": "dr_grpo",
                   "train.epsilon_high": "0.28", "train.max_completion_len": 64})
    cfg, problems = form.check_form(values)
    assert not problems, problems
    assert cfg.train.rewards == [{"name": "numeric_match", "args": {"column": "answer"}}]
    assert (cfg.train.grpo_loss_type, cfg.train.epsilon_high) == ("dr_grpo", 0.28)
    shown = form.config_to_form(cfg)[form.FORM_KEYS.index("train.rewards")]
    assert json.loads(shown) == cfg.train.rewards      # shown as JSON, read back as YAML
    grpo = {k for k, objectives in form.OBJECTIVE_KEYS.items() if "grpo" in objectives}
    assert {"train.rewards", "train.num_generations", "train.scale_rewards",
            "train.beta"} <= grpo and "train.dpo_loss_type" not in grpo
    assert form.label_for("train.num_generations") == "Completions per prompt"
    html, hist, _ = handlers.data_panel(values)          # prompts and their reward columns
    assert "prompts (grpo)" in html and "answer" in html and "2+2?" in html and hist is None
    _, problems = form.check_form({**values, "train.rewards": "", "train.num_generations": 3})
    keys = {p.key for p in problems}
    assert {"train.rewards", "train.num_generations"} <= keys


def test_the_form_offers_the_objective_and_only_its_settings(tiny_model, examples):
    spec = form.widget_spec("train.objective")
    assert spec["choices"] == ["sft", "dpo", "orpo", "kto", "simpo", "grpo", "distill"]
    values = _good(tiny_model, examples)
    values.update({"train.objective": "dpo", "data.train": str(examples / "preference.jsonl"),
                   "train.beta": 0.2, "train.dpo_loss_type": "ipo"})
    cfg, problems = form.check_form(values)
    assert not problems, problems
    assert (cfg.train.objective, cfg.train.beta, cfg.train.dpo_loss_type) == ("dpo", 0.2, "ipo")
    assert form.config_to_form(cfg)[form.FORM_KEYS.index("train.objective")] == "dpo"
    shown = {k for k, objectives in form.OBJECTIVE_KEYS.items() if "kto" in objectives}
    assert shown == {"train.beta", "train.kto_desirable_weight", "train.kto_undesirable_weight"}
    values["train.objective"] = "kto"       # pairs cannot train kto: said at once, by key
    _, problems = form.check_form({**values, "data.format": "preference",
                                   "train.dpo_loss_type": "sigmoid"})
    assert "data.format" in {p.key for p in problems}
