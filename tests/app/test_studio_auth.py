"""Logins in the studio: a user lists, views, cancels, resumes, deletes, downloads and chats with
only their own jobs; an admin sees all. The pages' handlers are called as plain functions with a
stand-in request, then the named API endpoints through gradio_client against an in-process
server launched with auth= (no worker: jobs stay queued or are marked finished by hand)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))
from queue_helpers import fake_config  # noqa: E402


def _req(username):
    return SimpleNamespace(username=username)


def _finish(job_id: str) -> None:
    """Make a job look completed with an adapter, a run file and a metrics row."""
    from jobs import store

    folder = store.job_dir(job_id)
    (folder / "adapter").mkdir(parents=True, exist_ok=True)
    (folder / "adapter" / "adapter_config.json").write_text("{}")
    (folder / "run.json").write_text("{}")
    with store.connect() as db:
        store.transition(db, job_id, "running")
        store.transition(db, job_id, "completed")
        store.add_artifact(db, job_id, "adapter", folder / "adapter")


@pytest.fixture()
def people(home):
    from jobs import api, users

    home.mkdir(parents=True, exist_ok=True)
    who = {"alice": users.add_user("alice", "alice-password"),
           "bob": users.add_user("bob", "bob-password"),
           "root": users.add_user("root", "root-password", is_admin=True)}
    jobs = {name: api.submit(fake_config(), name=f"{name}-run", actor=who[name])["id"]
            for name in ("alice", "bob")}
    return SimpleNamespace(users=who, jobs=jobs)


def _ids(frame) -> set[str]:
    return {str(v) for v in frame["ID"].tolist()}


def test_session_actor(people):
    from app.studio import session
    from jobs import users

    assert session.actor(None) is None
    assert session.actor(_req(None)) is None
    assert session.actor(_req("alice"))["username"] == "alice"
    users.set_disabled("bob")
    with pytest.raises(gr.Error):
        session.actor(_req("bob"))
    with pytest.raises(gr.Error):
        session.actor(_req("nobody"))


def test_jobs_tab_shows_only_ones_own(people):
    from app.studio import jobs_tab

    a, b = people.jobs["alice"], people.jobs["bob"]
    frame, picker, compare = jobs_tab.refresh_table("", _req("alice"))
    assert _ids(frame) == {a}
    assert {v for _, v in picker["choices"]} == {a}
    assert _ids(jobs_tab.refresh_table("", _req("root"))[0]) == {a, b}
    assert _ids(jobs_tab.refresh_table("", None)[0]) == {a, b}      # no logins: local mode

    # opening bob's job as alice shows nothing of it
    out = jobs_tab.select_job(b, None, _req("alice"))
    session = out[0]
    assert session["status"] == "missing"
    assert "bob-run" not in str(out[1])
    assert "bob-run" in str(jobs_tab.select_job(b, None, _req("root"))[1])
    clone = jobs_tab.clone_values(b, _req("alice"))
    assert "Could not clone" in clone[-1]


def test_acting_on_anothers_job_is_not_found(people):
    from app.studio import jobs_tab, jobview
    from jobs import api, store

    b = people.jobs["bob"]
    _finish(b)
    alice = _req("alice")
    for fn in (jobview.adapter_zip, jobview.bundle_zip, jobview.metrics_csv):
        out, note = jobs_tab._download(fn)(b, None, alice)
        assert out is not None and "no job" in note and "bob" not in note.replace(b, "")
    plot, evals = jobs_tab.compare([b], "training loss", alice)
    assert plot["value"] is None and len(evals) == 0   # no curves, no evaluations
    # the actions of the job page (cancel / resume / delete), as the page wires them
    for call in (api.cancel, api.resume, api.delete):
        with pytest.raises(KeyError, match="no job"):
            call(b, actor=people.users["alice"])
    # bob himself downloads his adapter: a copy outside FTSTUDIO_HOME/jobs
    out, note = jobs_tab._download(jobview.adapter_zip)(b, None, _req("bob"))
    path = out["value"][-1]
    assert note == "" and Path(path).name == "adapter.zip"
    assert not Path(path).resolve().is_relative_to(store.job_dir(b).parent)
    assert api.get(b)["status"] == "completed"


def test_export_panel_and_playground_refuse_anothers_job(people):
    from app.studio import export_panel, playground_tab

    b = people.jobs["bob"]
    _finish(b)
    alice = people.users["alice"]
    jid, note = export_panel.start(b, "adapter", actor=alice)
    assert jid is None and "no job" in note
    assert "no export" in export_panel.cancel(b, actor=alice)     # nothing of bob's
    with pytest.raises(KeyError):
        export_panel.exported_files(b, actor=alice)
    with pytest.raises(ValueError, match="no longer exists"):
        playground_tab.model_for_job(b, actor=alice)
    choices = playground_tab.job_choices(None, _req("alice"))["choices"]
    assert b not in {v for _, v in choices}
    assert b in {v for _, v in playground_tab.job_choices(None, _req("bob"))["choices"]}
    assert playground_tab.model_for_job(b, actor=people.users["root"])[1].endswith("adapter")


def test_named_endpoints_with_logins(people):
    from gradio_client import Client

    from app.cli_serve import gradio_auth
    from app.studio import build_app, launch_kwargs

    a, b = people.jobs["alice"], people.jobs["bob"]
    app = build_app(worker="external")
    app.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None,
                       quiet=True, auth=gradio_auth, **launch_kwargs())
    try:
        alice = Client(app.local_url, auth=("alice", "alice-password"), verbose=False)
        assert {j["id"] for j in alice.predict("", "", api_name="/list_jobs")} == {a}
        for endpoint in ("/job_status", "/job_artifacts", "/cancel_job", "/job_logs"):
            with pytest.raises(Exception) as err:
                alice.predict(b, api_name=endpoint)
            assert "bob" not in str(err.value)
        assert alice.predict(a, api_name="/job_status")["owner"] == "alice"
        root = Client(app.local_url, auth=("root", "root-password"), verbose=False)
        assert {j["id"] for j in root.predict("", "", api_name="/list_jobs")} == {a, b}
        with pytest.raises(Exception):
            Client(app.local_url, auth=("alice", "wrong-password"), verbose=False)
        with pytest.raises(Exception):
            Client(app.local_url, verbose=False).predict("", "", api_name="/list_jobs")
    finally:
        app.close()


def test_a_locked_login_refuses_the_right_password(people, monkeypatch):
    from gradio_client import Client

    from app.cli_serve import gradio_auth
    from app.studio import build_app, launch_kwargs
    from jobs import logins

    monkeypatch.setenv("FTSTUDIO_LOGIN_MAX_FAILURES", "2")
    monkeypatch.setattr(logins, "_default", None)
    app = build_app(worker="external")
    app.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None,
                       quiet=True, auth=gradio_auth, **launch_kwargs())
    try:
        for _ in range(2):
            with pytest.raises(ValueError, match="Could not login"):
                Client(app.local_url, auth=("alice", "wrong-password"), verbose=False)
        with pytest.raises(ValueError, match="Could not login"):
            Client(app.local_url, auth=("alice", "alice-password"), verbose=False)
        bob = Client(app.local_url, auth=("bob", "bob-password"), verbose=False)
        assert {j["id"] for j in bob.predict("", "", api_name="/list_jobs")} == \
            {people.jobs["bob"]}
    finally:
        app.close()


def test_start_from_the_form_is_the_users_job(people):
    from app.studio import handlers
    from jobs import api

    from engine.config import from_dict

    values = handlers.form.form_to_values(handlers.form.config_to_form(from_dict(fake_config())))
    job_id, problems = handlers.start_job(values, "mine", actor=people.users["root"])
    assert problems == [] and api.get(job_id)["owner"] == "root"


def test_an_upload_is_the_uploaders_and_a_disabled_account_cannot_upload(people, tmp_path):
    """Regression: the upload handler read request.username itself, skipping session.actor's
    check of disabled accounts."""
    import shutil

    from app.studio import train_tab
    from jobs import datasets, users
    from tests_paths import EXAMPLES

    src = tmp_path / "mine.jsonl"
    shutil.copy(EXAMPLES / "chat.jsonl", src)
    stored, note = train_tab.uploaded(str(src), _req("root"))
    assert note == "" and [d["owner"] for d in datasets.list_datasets()] == ["root"]
    users.set_disabled("alice")
    with pytest.raises(gr.Error, match="account 'alice' is disabled or no longer exists"):
        train_tab.uploaded(str(src), _req("alice"))
    assert [(d["owner"], d["path"]) for d in datasets.list_datasets()] == [("root", stored)]


def test_submitting_a_path_one_may_not_use_says_nothing_about_it(people, tmp_path):
    """Regression: /submit_job and the Train form answered "does not exist" or "unsupported
    file type" for a non-admin before the access check, so they could probe the server."""
    import yaml

    from app.studio import api as studio_api, handlers
    from engine.config import from_dict

    there = tmp_path / "there.txt"
    there.write_text("x")
    answers = []
    for path in (tmp_path / "missing.json", there, tmp_path):
        cfg = fake_config()
        cfg["data"]["train"] = str(path)
        out = studio_api.submit_job(yaml.safe_dump(cfg), "probe", 0, _req("alice"))
        values = handlers.form.form_to_values(handlers.form.config_to_form(from_dict(cfg)))
        _, problems = handlers.start_job(values, "probe", actor=people.users["alice"])
        answers.append((out["problems"], [(p.key, p.message) for p in problems]))
    assert answers[0] == answers[1] == answers[2]
    assert [p["key"] for p in answers[0][0]] == ["data.train"]
    assert "uploaded" in str(answers) and "exist" not in str(answers)
    assert "unsupported" not in str(answers)
    out = studio_api.submit_job(yaml.safe_dump(cfg), "probe", 0, _req("root"))
    assert "unsupported file type" in out["problems"][0]["message"]   # an admin is told
