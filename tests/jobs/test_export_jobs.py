"""Exports as jobs on the queue: jobs.api.export, the runner's export path, artifacts recorded on
the training job, safe download paths, and `ftstudio export --queue`.

The fast tests use hand-made run folders (what engine.export reads: adapter/ and run.json), one of
them with a real worker process. The slow ones share a module-scoped home with one worker and one
real LoRA job trained there through the queue on the tiny model (~11 s, paid by the first).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from sqlite_utils import Database

from app.cli import cli
from jobs import api, store, tasks
from queue_helpers import Workers, fake_config, train_config, wait_for

DONE = ("completed", "failed", "cancelled", "interrupted")


def _wait_done(job_id: str, timeout: float = 180) -> dict:
    wait_for(lambda: api.get(job_id)["status"] in DONE, timeout, what=f"job {job_id} to finish")
    return api.get(job_id)


def _finished_job(method: str = "lora", status: str = "completed", base: str = "base-model",
                  adapter: bool = True, owner: str = "ana") -> str:
    """A training job row that has run and ended as `status`, with a run folder holding what
    engine.export reads: adapter/adapter_config.json and run.json."""
    job_id = store.new_id()
    folder = store.job_dir(job_id)
    peft_type = {"lora": "LORA", "prompt_tuning": "PROMPT_TUNING"}[method]
    if adapter:
        (folder / "adapter").mkdir(parents=True)
        (folder / "adapter" / "adapter_config.json").write_text(json.dumps(
            {"peft_type": peft_type, "base_model_name_or_path": base}))
        (folder / "run.json").write_text(json.dumps(
            {"status": status, "config": {"model": {"name": base}, "method": {"kind": method}}}))
    with store.connect() as db:
        store.insert_job(db, config={"output_dir": str(folder)}, name=f"{method}-run",
                         owner=owner, priority=0, job_id=job_id)
        assert store.transition(db, job_id, "running")
        assert store.transition(db, job_id, status)
    return job_id


# --------------------------------------------------------------------------- fast: no worker


def test_export_refuses_what_cannot_be_exported_before_anything_is_queued(home):
    prompt = _finished_job("prompt_tuning")
    with pytest.raises(api.JobError) as err:
        api.export(prompt, "merged")
    assert "prompt_tuning cannot be exported as merged" in str(err.value)
    assert "virtual tokens" in str(err.value) and "--format adapter" in str(err.value)
    with pytest.raises(api.JobError, match="cannot be exported as gguf-q8_0"):
        api.export(prompt, "gguf-q8_0")
    with pytest.raises(api.JobError, match="unknown export format 'onnx'; choose one of: adapter"):
        api.export(prompt, "onnx")
    with pytest.raises(api.JobNotFound, match="no job 'nope'"):
        api.export("nope", "adapter")
    queued = api.submit(fake_config())["id"]
    with pytest.raises(api.JobError, match=f"job {queued} is queued; export it once it has "
                                           "completed"):
        api.export(queued, "adapter")
    failed = _finished_job(status="failed", adapter=False)
    with pytest.raises(api.JobError, match="is failed and saved no adapter"):
        api.export(failed, "adapter")
    with pytest.raises(api.JobError, match=f"job {prompt} belongs to ana, not bob"):
        api.export(prompt, "adapter", owner="bob")
    assert api.list_jobs(kind="export") == []
    assert tasks.queued_job_ids() == {queued}

    result = CliRunner().invoke(cli, ["export", prompt, "--format", "merged", "--queue"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Error: prompt_tuning cannot be exported as merged" in result.output
    result = CliRunner().invoke(cli, ["export", prompt, "--format", "adapter", "--queue",
                                      "--out", "x"])
    assert result.exit_code == 2 and "--out is for an export run here" in result.output
    result = CliRunner().invoke(cli, ["export", prompt, "--format", "adapter", "--wait"])
    assert result.exit_code == 2 and "add --queue" in result.output
    assert api.list_jobs(kind="export") == []


def test_an_export_job_is_queued_under_its_parent_and_follows_the_job_rules(home):
    parent = _finished_job("prompt_tuning")   # the adapter of a stopped job exports too
    stopped = _finished_job(status="cancelled")
    exp = api.export(parent, "adapter")
    other = api.export(stopped, "adapter", verify=False)
    assert (exp["kind"], exp["status"], exp["parent"], exp["owner"], exp["name"]) == \
        ("export", "queued", parent, "ana", "prompt_tuning-run-adapter")
    assert exp["config"] == {"format": "adapter", "parent": parent, "verify": True}
    assert other["config"]["verify"] is False   # queued with verify=False: the job skips it
    assert exp["output_dir"] == str(store.job_dir(exp["id"]))
    assert tasks.queued_job_ids() == {exp["id"], other["id"]}
    assert [j["id"] for j in api.list_jobs(kind="export", parent=parent)] == [exp["id"]]
    assert {j["id"] for j in api.list_jobs(kind="train")} == {parent, stopped}
    assert len(api.list_jobs()) == 4
    with pytest.raises(api.JobError, match="is an export job, not a training job"):
        api.export(exp["id"], "adapter")
    with pytest.raises(api.JobError, match="only training jobs can be cloned"):
        api.clone(exp["id"])
    with pytest.raises(api.JobError, match=f"has an export or eval queued or running \\({exp['id']}\\)"):
        api.delete(parent)
    assert api.cancel(exp["id"])["status"] == "cancelled"
    again = api.resume(exp["id"])   # an export job starts over
    assert again["status"] == "queued" and again["config"] == exp["config"]
    api.cancel(exp["id"])
    store.job_dir(exp["id"]).mkdir(parents=True)
    assert api.delete(parent) == {"id": parent, "deleted": True}
    assert not store.job_dir(parent).exists() and not store.job_dir(exp["id"]).exists()
    with pytest.raises(api.JobNotFound):
        api.get(exp["id"])


def test_artifact_path_refuses_every_way_out_of_the_job_folder(home, tmp_path):
    job = _finished_job()
    folder = store.job_dir(job)
    (folder / "exports" / "adapter").mkdir(parents=True)
    (folder / "exports" / "adapter" / "a.zip").write_bytes(b"zip")
    assert api.artifact_path(job, "exports/adapter/a.zip") == \
        (folder / "exports" / "adapter" / "a.zip").resolve()
    assert api.artifact_path(job, "./run.json").name == "run.json"
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    (folder / "escape").symlink_to(home / "studio.db")
    (folder / "exports" / "link").symlink_to(tmp_path)
    refused = {
        "../../studio.db": "not a path inside",
        "exports/../../../studio.db": "not a path inside",
        "exports/adapter/../a.zip": "not a path inside",   # no `..` at all, even staying inside
        str(home / "studio.db"): "not a path inside",
        str(folder / "run.json"): "not a path inside",     # absolute, even inside
        "escape": "leads outside",
        "exports/link/secret.txt": "leads outside",
        "exports/adapter": "is a folder",
        "exports/missing.gguf": "does not exist",
        "": "not a path inside",
    }
    for path, message in refused.items():
        with pytest.raises(api.JobError, match=message):
            api.artifact_path(job, path)
    with pytest.raises(api.JobNotFound):
        api.artifact_path("nope", "run.json")


def test_exports_are_recorded_relative_to_the_job_folder_one_set_per_format(home):
    job = _finished_job()
    folder = store.job_dir(job)
    files = []
    for name, data in (("exports/gguf-q8_0/m.gguf", b"g" * 10), ("exports/gguf-q8_0/Modelfile",
                                                                   b"m")):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        files.append((folder / name, len(data)))
    with store.connect() as db:
        store.add_artifact(db, job, "adapter", folder / "adapter")
        store.replace_exports(db, job, "gguf-q8_0", files, meta={"export_job": "e1"})
        store.replace_exports(db, job, "gguf-q8_0", files[:1], meta={"export_job": "e2"})
        store.replace_exports(db, job, "adapter", [], meta={"export_job": "e3"})
    rows = api.artifacts(job)
    assert [(r["kind"], r["format"], r["path"], r["size"], r["meta"]) for r in rows] == [
        ("adapter", None, "adapter", (folder / "adapter" / "adapter_config.json").stat().st_size,
         {}),
        ("export", "gguf-q8_0", "exports/gguf-q8_0/m.gguf", 10, {"export_job": "e2"})]


def test_migration_makes_old_absolute_artifact_paths_relative(tmp_path):
    db = Database(tmp_path / "studio.db")
    store.MIGRATIONS.apply(db, stop_before="m002_export_jobs")
    out = tmp_path / "jobs" / "j1"
    db["jobs"].insert({"id": "j1", "status": "completed", "kind": "train", "owner": "local",
                       "output_dir": str(out)})
    db["artifacts"].insert_all([{"job_id": "j1", "kind": "adapter", "path": str(out / "adapter")},
                                {"job_id": "j1", "kind": "adapter", "path": "/elsewhere/x"}])
    assert store.migrate(db)[:1] == ["m002_export_jobs"]  # later migrations follow it
    assert [r["path"] for r in db["artifacts"].rows] == ["adapter", "/elsewhere/x"]
    assert "parent" in db["jobs"].columns_dict and "format" in db["artifacts"].columns_dict


def test_a_worker_runs_export_jobs_records_their_files_and_fails_with_the_engines_message(
        home, workers, tmp_path):
    ok = _finished_job()
    (store.job_dir(ok) / "adapter" / "adapter_model.safetensors").write_bytes(b"w" * 1000)
    base = tmp_path / "bert"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "bert"}))
    bad = _finished_job(base=str(base))
    good = api.export(ok, "adapter")
    wrong = api.export(bad, "gguf-f16")   # the GGUF family is the engine's to check, at run time
    workers.start()

    done = _wait_done(good["id"], 120)
    assert done["status"] == "completed", (done, workers.output())
    assert done["progress"] == 1.0 and done["step"] >= 2    # one step per logged stage
    rows = api.artifacts(ok)
    assert {Path(a["path"]).name for a in rows} == {"adapter_config.json", "README.md",
                                                    "adapter_model.safetensors",
                                                    "base-model-ft-adapter.zip", "verify.json"}
    # the hand-made adapter cannot be loaded: the export completes, marked unverified
    check = done["result"]["verification"]
    assert check["status"] == "unverified" and check["failed"][0]["name"] == "load"
    assert check["line"].startswith("unverified: load: the check could not run")
    shown = CliRunner().invoke(cli, ["jobs", "show", good["id"]])
    assert f"verified:    {check['line']}" in shown.output, shown.output
    for a in rows:
        assert a["size"] == api.artifact_path(ok, a["path"]).stat().st_size
    assert sum(a["size"] for a in rows) == done["result"]["total_bytes"]

    failed = _wait_done(wrong["id"], 120)
    assert failed["status"] == "failed", (failed, workers.output())
    assert failed["error"] == f"cannot export job {bad} as gguf-f16"
    assert failed["hint"].startswith("GGUF export supports the") and "'bert'" in failed["hint"]
    assert any("export gguf-f16 failed: GGUF export supports" in e["line"]
               for e in api.logs(wrong["id"]))
    assert api.artifacts(bad) == [] and not (store.job_dir(bad) / "exports" / "gguf-f16").exists()


# --------------------------------------------------------------------------- a real worker


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    """One home with a running worker and one LoRA job trained there through the queue."""
    root = tmp_path_factory.mktemp("export-jobs")
    home = root / "home"
    home.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FTSTUDIO_HOME", str(home))
        workers = Workers(home, root)
        job = api.submit(train_config(tiny_model, max_steps=4, eval_every=0, save_every=100),
                         name="lora")
        workers.start()
        try:
            done = _wait_done(job["id"])
            assert done["status"] == "completed", (done, workers.output())
            yield SimpleNamespace(home=home, id=job["id"], workers=workers,
                                  folder=store.job_dir(job["id"]))
        finally:
            workers.stop_all()


@pytest.mark.slow
def test_a_trained_job_exports_adapter_and_gguf_through_the_queue(trained):
    adapter = api.export(trained.id, "adapter")
    gguf = api.export(trained.id, "gguf-q8_0")
    exports = {j["id"]: j for j in api.list_jobs(kind="export", parent=trained.id)}
    assert {adapter["id"], gguf["id"]} <= set(exports)
    assert [j["id"] for j in api.list_jobs(kind="train")] == [trained.id]
    for exp, fmt in ((adapter, "adapter"), (gguf, "gguf-q8_0")):
        done = _wait_done(exp["id"])
        assert done["status"] == "completed", (done, trained.workers.output())
        assert done["progress"] == 1.0 and done["step"] >= 2   # one step per logged stage
        assert done["result"]["format"] == fmt and done["result"]["out_dir"] == f"exports/{fmt}"
        lines = [e["line"] for e in api.logs(exp["id"])]
        assert lines[:2] == ["queued", "running"] and lines[-1] == "completed"
        assert any(ln.startswith(f"export {fmt}: done") for ln in lines)
        assert (store.job_dir(exp["id"]) / "log.txt").is_file()

    parent = api.get(trained.id)
    assert parent["status"] == "completed"
    assert [a["path"] for a in parent["artifacts"] if a["kind"] == "adapter"] == ["adapter"]
    by_format: dict[str, list[dict]] = {}
    for a in api.artifacts(trained.id):
        if a["kind"] == "export":
            by_format.setdefault(a["format"], []).append(a)
    assert set(by_format) == {"adapter", "gguf-q8_0"}
    for fmt, exp in (("adapter", adapter), ("gguf-q8_0", gguf)):
        rows = by_format[fmt]
        for a in rows:
            path = api.artifact_path(trained.id, a["path"])
            assert a["path"].startswith(f"exports/{fmt}/") and not os.path.isabs(a["path"])
            assert path == (trained.folder / a["path"]).resolve() and path.is_file()
            assert a["size"] == path.stat().st_size > 0
            assert a["meta"] == {"export_job": exp["id"]} and a["created_at"] > 0
        assert sum(a["size"] for a in rows) == api.get(exp["id"])["result"]["total_bytes"]
    names = sorted(Path(a["path"]).name for a in by_format["gguf-q8_0"])
    assert len(names) == 4 and names[0] == "Modelfile" and names[1] == "README.md"
    assert names[2].endswith("-ft-q8_0.gguf") and names[3] == "verify.json"
    check = api.get(gguf["id"])["result"]["verification"]
    assert check["status"] in ("verified", "unverified") and check["n"] > 0   # a 4-step model
    assert check["line"].startswith(("verified: ", "unverified: "))
    assert any(a["path"].endswith("-adapter.zip") for a in by_format["adapter"])
    assert any(a["path"] == "exports/adapter/adapter/adapter_config.json"
               for a in by_format["adapter"])
    for bad in ("../../studio.db", str(trained.home / "studio.db")):
        with pytest.raises(api.JobError):
            api.artifact_path(trained.id, bad)


@pytest.mark.slow
def test_ftstudio_export_queue_wait_follows_the_export_job_and_lists_its_files(trained):
    result = CliRunner().invoke(cli, ["export", trained.id, "--format", "adapter", "--queue",
                                      "--wait"])
    assert result.exit_code == 0, (result.output, trained.workers.output())
    assert result.output.startswith("queued export job ")
    assert "export adapter: done" in result.output and "* completed" in result.output
    exports = trained.folder.resolve() / "exports" / "adapter"
    assert "-adapter.zip" in result.output and str(exports) in result.output
    exp_id = result.output.split()[3]
    after = [a for a in api.artifacts(trained.id) if a["format"] == "adapter"]
    assert {a["meta"]["export_job"] for a in after} == {exp_id}   # replaced, not added to
    on_disk = [p for p in exports.rglob("*") if p.is_file()]
    assert sorted(a["path"] for a in after) == \
        sorted(p.relative_to(trained.folder.resolve()).as_posix() for p in on_disk)
