"""Accounts and ownership: two users and an admin across every jobs.api function (fast, no
training); the queue limit, trust_remote_code and the files a non-admin may name."""

from __future__ import annotations

import shutil

import pytest

from engine.config import ConfigError
from jobs import api, datasets, store, users
from queue_helpers import fake_config
from tests_paths import EXAMPLES


@pytest.fixture()
def people(home):
    return {"ana": users.add_user("ana", "ana-password"),
            "bob": users.add_user("bob", "bob-password"),
            "root": users.add_user("root", "root-password", is_admin=True)}


def _finished(job_id: str) -> None:
    """Make a job look completed with an adapter and a file to download."""
    folder = store.job_dir(job_id)
    (folder / "adapter").mkdir(parents=True, exist_ok=True)
    (folder / "adapter" / "adapter_config.json").write_text("{}")
    with store.connect() as db:
        store.transition(db, job_id, "running")
        store.transition(db, job_id, "completed")
        store.add_artifact(db, job_id, "adapter", folder / "adapter")


# every api function that acts on one job, as (name, call)
CALLS = {
    "get": lambda j, a: api.get(j, actor=a),
    "metrics": lambda j, a: api.metrics(j, actor=a),
    "metric_buckets": lambda j, a: api.metric_buckets(j, 100, actor=a),
    "logs": lambda j, a: api.logs(j, actor=a),
    "artifacts": lambda j, a: api.artifacts(j, actor=a),
    "artifact_path": lambda j, a: api.artifact_path(j, "adapter/adapter_config.json", actor=a),
    "export": lambda j, a: api.export(j, "adapter", actor=a),
    "clone": lambda j, a: api.clone(j, actor=a),
    "resume": lambda j, a: api.resume(j, actor=a),
    "cancel": lambda j, a: api.cancel(j, actor=a),
    "delete": lambda j, a: api.delete(j, actor=a),
}


@pytest.mark.parametrize("call", list(CALLS))
def test_another_users_job_is_not_found_like_a_missing_one(people, call):
    ana, bob, root = people["ana"], people["bob"], people["root"]
    job = api.submit(fake_config(), actor=ana, name="anas")
    assert job["owner"] == "ana"
    _finished(job["id"])
    with pytest.raises(store.JobNotFound) as theirs:
        CALLS[call](job["id"], bob)
    with pytest.raises(store.JobNotFound) as missing:
        CALLS[call]("0000000000", bob)
    assert str(theirs.value) == str(missing.value).replace("0000000000", job["id"])
    assert api.get(job["id"])["status"] == "completed"  # bob changed nothing
    for who in (ana, root, None):  # the owner, an admin and local mode get past the check
        try:
            CALLS[call](job["id"], who)
        except store.JobNotFound:
            pytest.fail(f"{call} hid job {job['id']} from {who and who['username']}")
        except store.JobError:
            pass  # the status may not allow it (e.g. cancel a completed job): not hidden
        if call == "delete":
            break


def test_list_jobs_shows_a_user_only_their_own_and_an_admin_everything(people):
    ana, bob, root = people["ana"], people["bob"], people["root"]
    a = api.submit(fake_config(), actor=ana)["id"]
    b = api.submit(fake_config(), actor=bob)["id"]
    r = api.submit(fake_config(), actor=root)["id"]
    local = api.submit(fake_config())["id"]
    assert [j["id"] for j in api.list_jobs(actor=ana)] == [a]
    assert [j["id"] for j in api.list_jobs(actor=bob, owner="ana")] == [b]  # owner ignored
    assert {j["id"] for j in api.list_jobs(actor=root)} == {a, b, r, local}
    assert [j["id"] for j in api.list_jobs(actor=root, owner="ana")] == [a]
    assert len(api.list_jobs()) == 4
    assert api.get(local)["owner"] == "local" and api.get(r)["owner"] == "root"


def test_a_user_cannot_submit_for_someone_else_but_an_admin_can(people):
    assert api.submit(fake_config(), owner="bob", actor=people["ana"])["owner"] == "ana"
    assert api.submit(fake_config(), owner="bob", actor=people["root"])["owner"] == "bob"
    copy = api.clone(api.submit(fake_config(), actor=people["bob"])["id"],
                     actor=people["root"])
    assert copy["owner"] == "root"


def test_the_queued_jobs_limit_refuses_a_user_but_not_an_admin(people, monkeypatch):
    monkeypatch.setenv("FTSTUDIO_MAX_QUEUED_PER_USER", "2")
    first = api.submit(fake_config(), actor=people["ana"])
    api.submit(fake_config(), actor=people["ana"])
    with pytest.raises(store.JobError, match=r"ana already has 2 queued jobs.*"
                                             "FTSTUDIO_MAX_QUEUED_PER_USER"):
        api.submit(fake_config(), actor=people["ana"])
    api.submit(fake_config(), actor=people["bob"])  # per user
    for _ in range(3):
        api.submit(fake_config(), actor=people["root"])
    api.cancel(first["id"], actor=people["ana"])
    api.submit(fake_config(), actor=people["ana"])  # a slot freed
    with pytest.raises(store.JobError, match="queued jobs"):
        api.resume(first["id"], actor=people["ana"])
    assert len(api.list_jobs(actor=people["ana"], status="queued")) == 2


def test_trust_remote_code_needs_the_server_setting_and_an_admin(people, monkeypatch):
    cfg = fake_config()
    cfg["model"]["trust_remote_code"] = True
    monkeypatch.delenv("FTSTUDIO_ALLOW_REMOTE_CODE", raising=False)
    for who in (people["ana"], people["root"], None):
        with pytest.raises(ConfigError, match="model.trust_remote_code.*"
                                              "FTSTUDIO_ALLOW_REMOTE_CODE=1"):
            api.submit(cfg, actor=who)
    monkeypatch.setenv("FTSTUDIO_ALLOW_REMOTE_CODE", "1")
    with pytest.raises(ConfigError, match="model.trust_remote_code: only an admin"):
        api.submit(cfg, actor=people["ana"])
    assert api.submit(cfg, actor=people["root"])["config"]["model"]["trust_remote_code"]
    assert api.list_jobs(actor=people["ana"]) == []


def test_a_user_trains_only_on_examples_and_their_own_uploads(people, tmp_path):
    ana, bob = people["ana"], people["bob"]
    upload = store.home() / "datasets" / "abc" / "mine.json"
    upload.parent.mkdir(parents=True)
    shutil.copy(EXAMPLES / "alpaca.json", upload)
    datasets.record("ana", upload, sha256="abc", size=upload.stat().st_size, records=1)
    cfg = fake_config()
    cfg["data"]["train"] = str(upload)
    assert api.submit(cfg, actor=ana)["owner"] == "ana"
    with pytest.raises(ConfigError, match="data.train: use a bundled example or a file you "
                                          "uploaded"):
        api.submit(cfg, actor=bob)
    elsewhere = tmp_path / "elsewhere.json"
    shutil.copy(EXAMPLES / "alpaca.json", elsewhere)
    cfg["data"]["train"], cfg["data"]["validation"] = str(elsewhere), str(elsewhere)
    cfg["model"]["name"] = str(shutil.copytree(store.home() / "models" / "fake",
                                               tmp_path / "model"))
    with pytest.raises(ConfigError) as err:
        api.submit(cfg, actor=ana)
    assert {p.key for p in err.value.problems} == {"data.train", "data.validation",
                                                   "model.name"}
    assert api.submit(cfg, actor=people["root"])  # admins may name any file
    assert [d["path"] for d in datasets.list_datasets(ana)] == [str(upload.resolve())]
    assert datasets.list_datasets(bob) == []


def test_a_refusal_says_nothing_of_whether_a_server_path_exists(people, tmp_path):
    """Regression: for a non-admin, submit and evaluate said "does not exist", "unsupported
    file type" or listed a folder's files before the access check: a probe of the server."""
    ana = people["ana"]
    real = tmp_path / "real.json"
    shutil.copy(EXAMPLES / "alpaca.json", real)
    (tmp_path / "secret.txt").write_text("x")
    probes = [(tmp_path / "missing.json", tmp_path / "missing-model"),   # nothing there
              (real, tmp_path),                                          # both there
              (tmp_path / "secret.txt", tmp_path / "secret.txt")]        # a wrong type
    submitted, evaluated = [], []
    job = api.submit(fake_config(), actor=ana)["id"]
    _finished(job)
    for data, model in probes:
        cfg = fake_config()
        cfg["data"].update(train=str(data), validation=str(data))
        cfg["model"]["name"] = str(model)
        with pytest.raises(ConfigError) as err:
            api.submit(cfg, actor=ana)
        submitted.append([str(p) for p in err.value.problems])
        with pytest.raises(ConfigError) as err:
            api.evaluate(job, data=str(data), actor=ana)
        evaluated.append([str(p) for p in err.value.problems])
    assert submitted[0] == submitted[1] == submitted[2]
    assert [p.split(":")[0] for p in submitted[0]] == ["model.name", "data.train",
                                                       "data.validation"]
    assert evaluated[0] == evaluated[1] == evaluated[2]
    assert evaluated[0] == ["data: use a bundled example or a file you uploaded; other files on "
                            "the server are not available"]
    said = str(submitted + evaluated)
    for leak in ("exist", "unsupported", "secret", "config.json", "safetensors", "neither"):
        assert leak not in said, leak
    cfg["data"].update(train=str(tmp_path / "missing.json"), validation=None)
    with pytest.raises(ConfigError, match="missing.json does not exist"):
        api.submit(cfg, actor=people["root"])      # an admin may name any path: told why
