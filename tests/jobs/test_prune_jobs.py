"""Prune jobs and "Make it smaller" on the queue (jobs/prune_job.py): a finished LoRA job of a
4-layer tiny model is merged, pruned by one layer into FTSTUDIO_HOME/models, and healed by a
distillation job that ends with a teacher vs student evaluation; refusals happen before anything
is queued. One home with one real worker (module-scoped)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from app.cli import cli
from engine.config import ConfigError
from eval_data import LEARNS, yes_data
from jobs import api
from jobs.prune_job import submit_prune
from jobs.store import JobError
from queue_helpers import Workers, train_config, wait_for

pytestmark = pytest.mark.slow    # a real worker trains, prunes and heals: minutes on 2 cores
DONE = ("completed", "failed", "cancelled", "interrupted")


def _wait_done(job_id: str, timeout: float = 240) -> dict:
    wait_for(lambda: api.get(job_id)["status"] in DONE, timeout, what=f"job {job_id} to finish")
    return api.get(job_id)


@pytest.fixture(scope="module")
def four_layers(tiny_model, tmp_path_factory):
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    config = AutoConfig.from_pretrained(tiny_model)
    config.num_hidden_layers = 4
    torch.manual_seed(5)
    out = tmp_path_factory.mktemp("four") / "four"
    LlamaForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def trained(four_layers, tmp_path_factory):
    root = tmp_path_factory.mktemp("prune-jobs")
    home = root / "home"
    home.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FTSTUDIO_HOME", str(home))
        data = yes_data(root / "yes.json", n=40)
        cfg = train_config(four_layers, eval_every=0, save_every=100, eval_generate="off",
                           **{**LEARNS, "max_steps": 12})
        cfg["data"].update(train=str(data), max_seq_len=64, val_fraction=0.2)
        job = api.submit(cfg, name="yes", owner="ana")
        workers = Workers(home, root)
        workers.start()
        try:
            done = _wait_done(job["id"])
            assert done["status"] == "completed", (done, workers.output())
            yield SimpleNamespace(home=home, root=root, id=job["id"], workers=workers)
        finally:
            workers.stop_all()


def test_make_a_finished_job_smaller_then_heal_it(trained):
    job = submit_prune(trained.id, drop_layers=1,
                       heal={"steps": 4, "batch_size": 8, "max_seq_len": 64})
    assert job["kind"] == "prune" and job["owner"] == "ana" and job["name"] == "yes-pruned"
    done = _wait_done(job["id"])
    assert done["status"] == "completed", (done, trained.workers.output())
    result = done["result"]
    folder = trained.home / "models" / "yes-pruned"
    assert result["folder"] == str(folder) and result["layers"] == [4, 3]
    assert len(result["removed_layers"]) == 1 and result["params_after"] < result["params_before"]
    assert json.loads((folder / "config.json").read_text())["num_hidden_layers"] == 3
    assert "What was removed" in (folder / "README.md").read_text()
    teacher = trained.home / "jobs" / job["id"] / "teacher"
    assert (teacher / "config.json").is_file()          # the LoRA job, merged

    heal = _wait_done(result["heal_job"], timeout=300)
    assert heal["status"] == "completed", (heal, trained.workers.output())
    assert heal["config"]["train"]["objective"] == "distill"
    assert heal["config"]["train"]["teacher"] == str(teacher)
    assert heal["config"]["model"]["name"] == str(folder)
    ev = api.job_eval(heal["id"])["eval"]       # stored: teacher (base side) vs student
    assert ev["kind"] == "end" and ev["metrics"]["exact_match"]["base_ci"]
    record = json.loads((trained.home / "jobs" / heal["id"] / "eval.json").read_text())
    assert record["baseline"] == "teacher" and record["base_model"] == str(teacher)
    card = (trained.home / "jobs" / heal["id"] / "distill.md").read_text()
    assert "| parameters |" in card and "generation tokens/s" in card


def test_refusals_come_before_anything_is_queued(trained, four_layers, tmp_path):
    before = len(api.list_jobs())
    with pytest.raises(ConfigError) as e:
        submit_prune(trained.id)
    assert "exactly one" in str(e.value)
    with pytest.raises(ConfigError) as e:
        submit_prune(trained.id, drop_layers=1, param_budget="lots", by="heads")
    found = {p.key for p in e.value.problems}
    assert {"target", "param_budget", "by"} <= found
    with pytest.raises(ConfigError) as e:
        submit_prune(str(tmp_path / "nowhere"), drop_layers=1)
    assert [p.key for p in e.value.problems] == ["source"]
    (trained.home / "models" / "taken").mkdir(parents=True, exist_ok=True)
    with pytest.raises(ConfigError) as e:
        submit_prune(str(four_layers), drop_layers=1, name="taken", heal={"steps": 2})
    assert {"name", "data"} <= {p.key for p in e.value.problems}
    assert len(api.list_jobs()) == before


def test_the_cli_and_the_api_endpoint_queue_prune_jobs(trained):
    result = CliRunner().invoke(cli, ["prune", trained.id, "--param-budget", "80%", "--by",
                                      "mlp", "--name", "narrow", "--no-wait"])
    assert result.exit_code == 0, result.output
    job_id = result.output.split()[3].rstrip(";")
    done = _wait_done(job_id)
    assert done["status"] == "completed", (done, trained.workers.output())
    assert done["result"]["mlp_width"][1] < done["result"]["mlp_width"][0]
    assert done["result"]["heal_job"] is None

    from app.studio.api import prune_model

    queued = prune_model(trained.id, 2, "", "layers", "", "two", 0)
    assert queued["status"] == "queued"
    done = _wait_done(queued["prune_job_id"])
    assert done["status"] == "completed" and done["result"]["layers"] == [4, 2]
    bad = CliRunner().invoke(cli, ["prune", trained.id])
    assert bad.exit_code == 1 and "exactly one" in bad.output


def test_a_finished_job_is_a_teacher_by_its_id(trained, four_layers):
    from engine.config import TrainConfig

    cfg = TrainConfig()
    cfg.model.name = str(four_layers)
    cfg.data.train = str(trained.root / "yes.json")
    cfg.train.objective, cfg.train.teacher = "distill", trained.id
    _, problems = api.prepare(cfg, "0123456789")     # not merged yet: says what to run
    assert [p.key for p in problems] == ["train.teacher"]
    assert f"ftstudio export {trained.id} --format merged" in problems[0].message
    cfg.train.teacher = "abcdef0123"
    assert "no job" in api.prepare(cfg, "0123456789")[1][0].message
    merged = trained.home / "jobs" / trained.id / "exports" / "merged"
    from engine.export import export

    export(trained.home / "jobs" / trained.id, "merged", log=lambda _: None, verify=False)
    cfg.train.teacher = trained.id
    resolved, problems = api.prepare(cfg, "0123456789")
    assert problems == [] and resolved.train.teacher == str(merged)
