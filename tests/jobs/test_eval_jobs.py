"""Generation evaluations on the queue: a training job ends with one stored in studio.db, an
eval job (jobs.api.evaluate, `ftstudio eval`) makes another over any data file, both shown by
jobs.api.job_eval with their rows filtered as the job page filters them, and refusals happen
before anything is queued. One home with one real worker and one real LoRA job on the tiny
model (module-scoped)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from app.cli import cli
from eval_data import LEARNS, yes_data
from jobs import api, bundles, store
from queue_helpers import Workers, fake_config, train_config, wait_for

DONE = ("completed", "failed", "cancelled", "interrupted")


def _wait_done(job_id: str, timeout: float = 180) -> dict:
    wait_for(lambda: api.get(job_id)["status"] in DONE, timeout, what=f"job {job_id} to finish")
    return api.get(job_id)


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-jobs")
    home = root / "home"
    home.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FTSTUDIO_HOME", str(home))
        data = yes_data(root / "yes.json")
        cfg = train_config(tiny_model, eval_every=0, save_every=100, **LEARNS)
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


def test_training_stores_its_end_of_run_evaluation(trained):
    found = api.job_eval(trained.id)
    ev = found["eval"]
    assert ev["kind"] == "end" and ev["n"] == 12 and ev["step"] == 30
    assert ev["metrics"]["exact_match"]["base"] == 0.0
    assert ev["metrics"]["exact_match"]["tuned"] == 1.0
    assert ev["card"].startswith("exact match 0% \u2192 100% (+100 points, 95% CI +100 to +100)")
    assert ev["path"] == "eval.json" and ev["seconds"]["base"] >= 0
    rows = found["rows"]
    assert len(rows) == 12 and [r["index"] for r in rows] == list(range(12))
    assert all(r["reference"] == "yes" and r["tuned"] == "yes" for r in rows)
    assert all(r["change"] == "improved" and r["tuned_stopped"] for r in rows)
    assert rows[0]["where"].startswith("record ") and rows[0]["prompt"].startswith("Is this")
    assert found["filters"] == ["all", "changed", "still wrong", "got worse"]
    assert len(api.job_eval(trained.id, which="changed")["rows"]) == 12
    assert api.job_eval(trained.id, which="got worse")["rows"] == []
    assert api.job_eval(trained.id, which="still wrong")["rows"] == []
    final = api.get(trained.id)["result"]
    assert final["gen_exact_match"] == 1.0
    steps = [m["step"] for m in api.metrics(trained.id) if "gen_exact_match" in m]
    assert steps == [30]


def test_an_eval_job_over_another_file_and_the_cli(trained):
    other = trained.root / "other.jsonl"
    other.write_text("".join(json.dumps({"prompt": f"Is {w} a word? ", "completion": "yes"})
                             + "\n" for w in ("owl", "kiwi", "moon")), encoding="utf-8")
    ev = api.evaluate(trained.id, data=str(other), max_new_tokens=6)
    assert ev["kind"] == "eval" and ev["parent"] == trained.id and ev["owner"] == "ana"
    done = _wait_done(ev["id"])
    assert done["status"] == "completed", (done, trained.workers.output())
    assert done["result"]["n"] == 3 and done["result"]["card"].startswith("exact match ")
    lines = [e["line"] for e in api.logs(ev["id"])]
    assert any(line.startswith("eval: base answered") for line in lines)
    newest = api.job_eval(trained.id)
    assert newest["eval"]["kind"] == "job" and newest["eval"]["eval_job"] == ev["id"]
    assert newest["eval"]["source"] == "other.jsonl (completion)" and len(newest["rows"]) == 3
    assert [e["kind"] for e in newest["evals"]] == ["job", "end"]
    end = newest["evals"][1]
    assert len(api.job_eval(trained.id, eval_id=end["id"])["rows"]) == 12
    assert (store.job_dir(ev["id"]) / "eval.json").is_file()
    assert [j["id"] for j in api.list_jobs(kind="train")] == [trained.id]

    csv_path = bundles.eval_csv(trained.id, which="all")
    text = csv_path.read_text(encoding="utf-8").splitlines()
    assert text[0].startswith("where,prompt,reference,base,tuned,change") and len(text) == 4
    assert csv_path.is_relative_to(store.job_dir(trained.id))

    result = CliRunner().invoke(cli, ["eval", trained.id, "--max-records", "4"])
    assert result.exit_code == 0, (result.output, trained.workers.output())
    assert result.output.startswith("queued eval job ") and "* completed" in result.output
    assert "exact match 0% \u2192 100% (+100 points" in result.output and "4 held-out" in \
        result.output
    assert "token F1" in result.output and "BLEU" in result.output
    as_json = CliRunner().invoke(cli, ["eval", trained.id, "--max-records", "2", "--json"])
    assert as_json.exit_code == 0, as_json.output
    parsed = json.loads(as_json.output)
    assert parsed["eval"]["n"] == 2 and len(parsed["rows"]) == 2


def test_evaluations_are_refused_before_anything_is_queued(trained, tmp_path):
    with pytest.raises(api.JobNotFound):
        api.evaluate("nope")
    with pytest.raises(api.ConfigError) as err:
        api.evaluate(trained.id, data=str(tmp_path / "missing.jsonl"), max_new_tokens=0)
    assert {p.key for p in err.value.problems} == {"data", "max_new_tokens"}
    bob = {"username": "bob", "is_admin": 0}
    with pytest.raises(api.JobNotFound):          # another owner's job is not there for bob
        api.evaluate(trained.id, actor=bob)
    with pytest.raises(api.JobNotFound):
        api.job_eval(trained.id, actor=bob)
    ana = {"username": "ana", "is_admin": 0}
    with pytest.raises(api.ConfigError, match="use a bundled example or a file you"):
        api.evaluate(trained.id, data=str(trained.root / "yes.json"), actor=ana)
    queued = api.submit(fake_config())["id"]
    with pytest.raises(api.JobError, match=f"job {queued} is queued; evaluate it once"):
        api.evaluate(queued)
    api.cancel(queued)
    with pytest.raises(api.JobError, match="saved no adapter"):
        api.evaluate(queued)
    result = CliRunner().invoke(cli, ["eval", queued])
    assert result.exit_code == 1 and "saved no adapter" in result.output
    assert [j["status"] for j in api.list_jobs(kind="eval")].count("queued") == 0


def test_migration_and_delete_take_the_evaluation_rows_along(home):
    job = store.new_id()
    folder = store.job_dir(job)
    folder.mkdir(parents=True)
    record = {"n": 1, "step": 3, "source": "s", "seconds": {}, "metrics": {
        "exact_match": {"base": 0.0, "tuned": 1.0, "delta": 1.0, "n": 1}},
        "rows": [{"index": 0, "where": "line 1", "prompt": "q", "reference": "a", "base": "b",
                  "tuned": "a", "change": "improved",
                  "base_scores": {"exact_match": 0.0, "token_f1": 0.0},
                  "tuned_scores": {"exact_match": 1.0, "token_f1": 1.0}}]}
    with store.connect() as db:
        store.insert_job(db, config={"output_dir": str(folder)}, name="j", owner="local",
                         priority=0, job_id=job)
        eid = store.add_eval(db, job, record, kind="end", path=folder / "eval.json")
        assert store.eval_rows(db, eid)[0]["tuned"] == "a"
        with pytest.raises(ValueError, match="unknown filter 'odd'"):
            api.eval_filter("odd")  # the filters' wording is the api's (jobs/api.py)
        assert store.delete_job(db, job)
        assert db.execute("SELECT COUNT(*) FROM eval_rows").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM evals").fetchone()[0] == 0
