"""train.report_to: a real tiny run logs to TensorBoard, MLflow and W&B, and each tracker's own
reader gives back the steps and values of metrics.jsonl; a tracker that fails is logged once and
the run goes on.

About 470 lines: each tracker's reader, the round trips, the failures and the several-process
cases share the tiny runs' helpers, so they stay in one file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine import settings
from engine.training import trackers
from engine.config import ConfigError, TrainConfig, from_dict, load_config, validate
from engine.training.reporter import ListReporter
from engine.training.loop import run

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_tracker_env(monkeypatch):
    """No tracker server, key or mode from the machine running the tests."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID",
                 "WANDB_API_KEY", "WANDB_MODE", "WANDB_PROJECT", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)


def config(tiny_model, examples, out: Path, report_to: list[str], **train) -> TrainConfig:
    cfg = TrainConfig()
    cfg.model.name = str(tiny_model)
    cfg.data.train = str(examples / "alpaca.json")
    cfg.data.max_seq_len = 128
    cfg.train.batch_size = 8
    cfg.train.max_steps = 6
    cfg.train.lr = 3e-2
    cfg.train.eval_every = 3
    cfg.train.save_every = 0
    cfg.train.eval_generate = "off"
    cfg.train.report_to = report_to
    for k, v in train.items():
        setattr(cfg.train, k, v)
    cfg.output_dir = str(out)
    return cfg


def jsonl_series(out: Path) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value), ...]} of metrics.jsonl, every number but the step, one point
    per step (a step's evaluation records repeat its epoch; TensorBoard and MLflow keep the
    repeats, W&B merges a step's records into one row)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, value in trackers.metric_values(record).items():
            series.setdefault(key, []).append((record["step"], value))
    return {k: unique(v) for k, v in series.items()}


def unique(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    return list(dict.fromkeys(points))


# --------------------------------------------------------------------------- each tracker's reader


def tensorboard_series(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: unique([(e.step, e.value) for e in acc.Scalars(tag)])
            for tag in acc.Tags()["scalars"]}


def tensorboard_hparams(folder: Path) -> dict[str, object]:
    """The hyperparameters of the hparams run accelerate writes in a subfolder of tb/."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    found: dict[str, object] = {}
    for sub in folder.iterdir():
        if not any(sub.glob("events.out.tfevents.*")):
            continue  # accelerate's hparams.yml beside it
        acc = EventAccumulator(str(sub))
        acc.Reload()
        for content in acc.PluginTagToContent("hparams").values():
            data = plugin_data_pb2.HParamsPluginData.FromString(content)
            for key, value in data.session_start_info.hparams.items():
                found[key] = getattr(value, value.WhichOneof("kind"))
    return found


def mlflow_run(experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(settings.mlflow_tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment}"
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, runs
    return client, runs[0]


def mlflow_series(client, run_obj, keys) -> dict[str, list[tuple[int, float]]]:
    return {k: unique([(m.step, m.value)
                       for m in client.get_metric_history(run_obj.info.run_id, k)])
            for k in keys}


def wandb_records(out: Path) -> list[dict]:
    """The offline run's .wandb log as JSON records, read by wandb's own reader
    (`wandb leet inspect --json`)."""
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    done = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json",
                           str(runs[0])], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def wandb_series(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        if r["type"] == "history":
            step = int(r["history"]["step"]["num"])
            for key, value in r["history"]["item"].items():
                if not key.startswith("_"):
                    series.setdefault(key, []).append((step, value))
    return series


def wandb_config(records: list[dict]) -> dict[str, object]:
    config: dict[str, object] = {}
    for r in records:
        update = (r.get("config") or r.get("run", {}).get("config") or {}).get("update", {})
        config.update({k: v for k, v in update.items() if not k.startswith("_")})
    return config


# --------------------------------------------------------------------------- round trips


def test_every_tracker_gives_back_the_steps_and_values_of_metrics_jsonl(tiny_model, examples,
                                                                         home, tmp_path):
    out = tmp_path / "run"
    cfg = config(tiny_model, examples, out, ["tensorboard", "mlflow", "wandb"],
                 tracker_experiment="sweep-a", eval_generate="every 3", eval_generate_max=3,
                 eval_generate_max_new_tokens=4)
    reporter = ListReporter()
    result = run(cfg, reporter)
    assert result.steps == 6

    expected = jsonl_series(out)
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "eval_loss"} <= set(expected)
    assert any(k.startswith("gen_") for k in expected), expected.keys()
    assert [s for s, _ in expected["loss"]] == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in expected["eval_loss"]] == [3, 6]
    # the job page's records are metrics.jsonl's
    assert [r["step"] for r in reporter.records] == \
        [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    started = [ln for ln in reporter.lines if ln.startswith("trackers:")]
    assert len(started) == 3 and not any("failed" in ln for ln in started), started

    tb = tensorboard_series(out / "tb")
    assert set(tb) == set(expected)
    for key, points in expected.items():      # event files hold float32
        assert [s for s, _ in tb[key]] == [s for s, _ in points], key
        assert [v for _, v in tb[key]] == pytest.approx([v for _, v in points], rel=1e-6), key
    hp = tensorboard_hparams(out / "tb")
    assert hp["train.lr"] == pytest.approx(3e-2) and hp["method.kind"] == "lora"
    assert hp["train.report_to"] == "tensorboard,mlflow,wandb"

    client, ml = mlflow_run("sweep-a")
    assert ml.info.run_name == "run" and ml.info.status == "FINISHED"
    assert mlflow_series(client, ml, expected) == expected
    assert ml.data.params["train.lr"] == "0.03" and ml.data.params["method.r"] == "16"
    assert ml.data.tags["ftstudio.output_dir"] == str(out)
    assert (home / "mlflow" / "mlflow.db").is_file()
    assert "MLFLOW_TRACKING_URI" not in os.environ   # mlflow exports it; a later job picks its own

    records = wandb_records(out)
    assert wandb_series(records) == expected
    header = next(r["run"] for r in records if r["type"] == "run")
    assert header["run_group"] == "sweep-a" and header["project"] == "ftstudio"
    assert header["display_name"] == "run"
    wb = wandb_config(records)
    assert wb["train.lr"] == 3e-2 and wb["train.tracker_experiment"] == "sweep-a"
    assert next(r for r in records if r["type"] == "exit")["exit"].get("exit_code", 0) == 0


def test_no_report_to_leaves_no_tracker_files(tiny_model, examples, home, tmp_path):
    out = tmp_path / "run"
    reporter = ListReporter()
    run(config(tiny_model, examples, out, [], max_steps=2), reporter)
    assert not (out / "tb").exists() and not (out / "wandb").exists()
    assert not (home / "mlflow").exists()
    assert not any(ln.startswith("trackers:") for ln in reporter.lines)


def test_no_secret_of_the_environment_reaches_a_tracker(tiny_model, examples, home, tmp_path,
                                                        monkeypatch):
    import shutil

    from engine.training.redact import MASK

    secrets = {"HF_TOKEN": "hf_" + "a1" * 16, "WANDB_API_KEY": "b2" * 20,
               "MLFLOW_TRACKING_TOKEN": "mlflow-token-c3d4e5", "MLFLOW_TRACKING_PASSWORD":
               "mlflow-pass-f6g7h8"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WANDB_MODE", "offline")   # a key is set, but there is no network here
    data = tmp_path / f"alpaca-{secrets['HF_TOKEN']}.json"  # the config holds the token
    shutil.copy(examples / "alpaca.json", data)
    out = tmp_path / "run"
    cfg = config(tiny_model, examples, out, ["tensorboard", "mlflow", "wandb"], max_steps=2,
                 eval_every=0)
    cfg.data.train = str(data)
    run(cfg, ListReporter())

    client, ml = mlflow_run("ftstudio")
    assert ml.data.params["data.train"].endswith(f"alpaca-{MASK}.json")
    files = [p for folder in (out / "tb", out / "wandb", home / "mlflow")
             for p in folder.rglob("*") if p.is_file()]
    assert len(files) > 5
    leaked = {name: [str(p) for p in files if value.encode() in p.read_bytes()]
              for name, value in secrets.items()}
    assert not any(leaked.values()), leaked


def test_a_resumed_run_replaces_the_steps_it_repeats_in_tensorboard(tiny_model, examples, home,
                                                                      tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    run(config(tiny_model, examples, out, ["tensorboard"], save_every=3), ListReporter())
    resumed = config(tiny_model, examples, out, ["tensorboard"], save_every=3,
                     resume_from=str(out / "checkpoints" / "step-3"))
    run(resumed, ListReporter())

    assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 2     # two writers
    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("loss")]      # not deduplicated: repeats would show
    assert steps == [1, 2, 3, 4, 5, 6]
    expected = jsonl_series(out)
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == \
        [(s, pytest.approx(v, rel=1e-6)) for s, v in expected["loss"]]


# --------------------------------------------------------------------------- failures


class FullDisk:
    """A real TensorBoard tracker whose writes fail from step 3 on, as on a full disk."""

    def __init__(self, tracker):
        self.tracker, self.steps = tracker, []

    def store_init_configuration(self, values):
        self.tracker.store_init_configuration(values)

    def log(self, values, step=None):
        if step >= 3:
            raise OSError(28, "No space left on device")
        self.steps.append(step)
        self.tracker.log(values, step=step)

    def finish(self):
        self.tracker.finish()


def test_a_failing_tracker_is_logged_once_and_training_goes_on(tiny_model, examples, home,
                                                                 tmp_path, monkeypatch):
    start_tb = trackers.START["tensorboard"]
    monkeypatch.setitem(trackers.START, "tensorboard",
                        lambda cfg, step: (FullDisk(start_tb(cfg, step)[0]), "tb"))
    # MLflow's store inside a regular file: it cannot be created
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("MLFLOW_TRACKING_URI",
                       f"sqlite:///{tmp_path / 'not-a-folder' / 'mlflow.db'}")
    out = tmp_path / "run"
    cfg = config(tiny_model, examples, out, ["mlflow", "tensorboard"], max_steps=5)
    clean = ListReporter()
    plain = run(config(tiny_model, examples, tmp_path / "plain", [], max_steps=5), clean)
    reporter = ListReporter()
    result = run(cfg, reporter)

    failed = [ln for ln in reporter.lines if "failed" in ln and ln.startswith("trackers:")]
    assert len(failed) == 2, reporter.lines
    assert failed[0].startswith("trackers: mlflow failed while starting")
    assert "tensorboard failed while logging (OSError: [Errno 28] No space left" in failed[1]
    assert "training continues without it" in failed[1]
    # the run itself is untouched: every step, the same losses as without trackers
    assert result.steps == 5 and not result.cancelled
    assert reporter.series("loss") == clean.series("loss")
    timing = ("tokens_per_s", "total_tokens_per_s")
    assert {k: v for k, v in result.metrics.items() if k not in timing} == \
        {k: v for k, v in plain.metrics.items() if k not in timing}
    assert [s for s, _ in jsonl_series(out)["loss"]] == [1, 2, 3, 4, 5]
    assert [s for s, _ in tensorboard_series(out / "tb")["loss"]] == [1, 2]


def test_a_tracker_that_cannot_start_is_dropped_and_the_others_log(home, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "tb").write_text("a file where TensorBoard wants its folder")
    cfg = TrainConfig(output_dir=str(out))
    cfg.train.report_to = ["tensorboard", "mlflow"]
    inner = ListReporter()
    with pytest.raises(RuntimeError, match="boom"):
        with trackers.tracked(cfg, inner) as reporter:
            for step in (1, 2):
                reporter.on_metrics({"step": step, "epoch": 0.5, "loss": 2.0 / step})
            raise RuntimeError("boom")
    assert inner.records == [{"step": 1, "epoch": 0.5, "loss": 2.0},
                             {"step": 2, "epoch": 0.5, "loss": 1.0}]
    failed = [ln for ln in inner.lines if "failed" in ln]
    assert len(failed) == 1 and failed[0].startswith("trackers: tensorboard failed while "
                                                     "starting"), inner.lines
    client, ml = mlflow_run("ftstudio")
    assert ml.info.status == "FAILED"       # the block raised
    assert ml.info.run_name == "run"
    assert mlflow_series(client, ml, ["loss"]) == {"loss": [(1, 2.0), (2, 1.0)]}


def test_an_mlflow_write_that_fails_in_the_background_is_caught_one_record_late(home, tmp_path):
    """MLflow writes asynchronously: its failure surfaces at the next record, logged once."""
    from mlflow.tracking import MlflowClient

    cfg = TrainConfig(output_dir=str(tmp_path / "run"))
    cfg.train.report_to = ["mlflow"]
    inner = ListReporter()
    with trackers.tracked(cfg, inner) as reporter:
        reporter.on_metrics({"step": 1, "loss": 1.0})
        client, ml = mlflow_run("ftstudio")
        reporter.on_metrics({"step": 2, "loss": 0.5})
        reporter.on_metrics({"step": 3, "loss": 1 / 3})     # it waits for step 2's write
        MlflowClient(settings.mlflow_tracking_uri()).delete_run(ml.info.run_id)  # no more writes
        for step in (4, 5, 6):
            reporter.on_metrics({"step": step, "loss": 1.0 / step})
    assert [r["step"] for r in inner.records] == [1, 2, 3, 4, 5, 6]
    failed = [ln for ln in inner.lines if "failed" in ln]
    assert len(failed) == 1 and failed[0].startswith("trackers: mlflow failed while logging"), \
        inner.lines
    # step 3's write raced the deletion
    assert [m.step for m in client.get_metric_history(ml.info.run_id, "loss")] in ([1, 2],
                                                                                   [1, 2, 3])


# --------------------------------------------------------------------------- config and settings


def test_report_to_takes_a_list_or_names_separated_by_commas():
    assert load_config(None, ["train.report_to=tensorboard, wandb"]).train.report_to == \
        ["tensorboard", "wandb"]
    assert load_config(None, ["train.report_to=[mlflow]"]).train.report_to == ["mlflow"]
    assert load_config(None, ["train.report_to=none"]).train.report_to == []
    assert from_dict({"train": {"report_to": None}}).train.report_to == []
    assert TrainConfig().train.report_to == [] and TrainConfig().train.tracker_experiment is None
    with pytest.raises(ConfigError, match="train.report_to: 3 is not a list of tracker names"):
        from_dict({"train": {"report_to": 3}})


def test_validation_names_every_tracker_problem():
    cfg = from_dict({"train": {"report_to": ["tensorbord", "wandb", "wandb"],
                               "tracker_experiment": "  "}})
    problems = [str(p) for p in validate(cfg, check_files=False)
                if p.key.startswith("train.tracker") or p.key == "train.report_to"]
    assert problems == [
        "train.report_to: 'tensorbord': use a list of tensorboard, mlflow, wandb (or leave it "
        "empty)",
        "train.report_to: ['tensorbord', 'wandb', 'wandb']: names a tracker twice",
        "train.tracker_experiment: is blank; give a name or leave it empty for ftstudio"]


def test_where_mlflow_and_wandb_go(home, monkeypatch):
    assert settings.mlflow_tracking_uri() == f"sqlite:///{(home / 'mlflow' / 'mlflow.db').resolve()}"
    assert settings.mlflow_artifacts() == (home / "mlflow" / "artifacts").resolve()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert settings.mlflow_tracking_uri() == "http://mlflow.example:5000"
    assert settings.mlflow_artifacts() is None
    assert settings.wandb_mode() == "offline" and settings.wandb_project() == "ftstudio"
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert settings.wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert settings.wandb_mode() == "offline"


def test_what_is_logged_and_as_what():
    cfg = TrainConfig(output_dir="studio-data/jobs/12")
    cfg.method.target_modules = ["q_proj", "v_proj"]
    params = trackers.hyperparameters(cfg)
    assert params["method.target_modules"] == "q_proj,v_proj" and params["train.lr"] == 2e-4
    assert params["output_dir"] == "studio-data/jobs/12" and params["train.max_steps"] is None
    assert trackers.run_name(cfg) == "job-12"
    assert trackers.metric_values({"step": 3, "epoch": 0.5, "loss": 1.5, "note": "x",
                                   "flag": True}) == {"epoch": 0.5, "loss": 1.5}
    assert trackers.without_password("https://me:s3cret@mlflow.example/x") == \
        "https://me:***@mlflow.example/x"
    assert trackers.without_password("sqlite:////tmp/m.db") == "sqlite:////tmp/m.db"


# --------------------------------------------------------------------------- several processes


MLFLOW_JOB = """
import sys
from engine.config import TrainConfig
from engine.training.reporter import ListReporter
from engine.training.trackers import tracked
cfg = TrainConfig(output_dir=sys.argv[1])
cfg.train.report_to = ["mlflow"]
inner = ListReporter()
with tracked(cfg, inner) as reporter:
    for step in range(1, 6):
        reporter.on_metrics({"step": step, "epoch": 0.1, "loss": 1.0 / step})
print([line for line in inner.lines if "failed" in line])
"""


@pytest.mark.slow
def test_jobs_starting_together_share_a_new_mlflow_store(home, tmp_path):
    """Without a lock each would migrate the new SQLite database at once, and all fail."""
    env = {**os.environ, "FTSTUDIO_HOME": str(home), "PYTHONPATH": str(ROOT)}
    jobs = [subprocess.Popen([sys.executable, "-c", MLFLOW_JOB, str(tmp_path / f"job{i}")],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(4)]
    outputs = [job.communicate(timeout=300) for job in jobs]
    assert [job.returncode for job in jobs] == [0] * 4, outputs
    assert [out.strip().splitlines()[-1] for out, _ in outputs] == ["[]"] * 4, outputs
    from mlflow.tracking import MlflowClient

    client = MlflowClient(settings.mlflow_tracking_uri())
    runs = client.search_runs([client.get_experiment_by_name("ftstudio").experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"job{i}" for i in range(4)]
    for r in runs:
        assert [m.step for m in client.get_metric_history(r.info.run_id, "loss")] == \
            [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_two_processes_log_once(tiny_model, examples, home, tmp_path):
    from engine.config import save_config
    from tests.engine.test_ddp import free_port

    out = tmp_path / "ddp"
    cfg = config(tiny_model, examples, out, ["tensorboard", "mlflow"], batch_size=4, max_steps=4,
                 eval_every=2)
    path = save_config(cfg, tmp_path / "ddp.yaml")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
              "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "--main_process_port", str(free_port()),
              "-m", "engine.training.loop", str(path)]
    done = subprocess.run(launch, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads((out / "run.json").read_text())["processes"] == 2
    assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 1   # one writer
    expected = jsonl_series(out)
    assert {k: [s for s, _ in v] for k, v in tensorboard_series(out / "tb").items()} == \
        {k: [s for s, _ in v] for k, v in expected.items()}
    client, ml = mlflow_run("ftstudio")                                 # one run
    assert mlflow_series(client, ml, expected) == expected
