"""The Jobs tab's handlers: the table, one job's live metrics, actions and downloads.

Live charts: the first poll of a job reads each curve as at most CHART_POINTS buckets
aggregated in SQL (`jobs.api.metric_buckets`), later polls only the new rows
(`jobs.api.metrics(job_id, since_step)`); the session keeps each curve as a Curve, which merges
neighbouring buckets when it holds too many, so a tick moves only new rows and the web process
holds O(CHART_POINTS) numbers per curve, whatever the job's length. A bucket of many steps is
drawn as its min and max, so a one-step loss spike stays visible.
Downloads are written by jobs.bundles into the job's own folder (each path checked by
jobs.api.path_in_job: inside the folder, through no symlink out of it) and served as a copy.
Job records are the plain dicts of jobs.api (jobs.store's rows).

About 460 lines, in four parts marked below (table, live metrics, compare, files): the job
page's state without gradio, so tests drive it as the page does; the page's sections with
their own controls (eval_panel, export_panel, continue_panel, shrink_panel) live in their own
modules.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from app.studio import render
from app.studio.curves import CHART_POINTS, Curve, curves
from jobs import bundles
from jobs.bundles import metric_rows

#: the generation evaluation's curves (engine.evaluation.evaluate: train.eval_generate), drawn in percent
GEN_CHARTED = {"gen_exact_match": "exact match", "gen_token_f1": "token F1",
               "gen_rouge_l": "ROUGE-L"}
#: the throughput chart's two series: tokens that carry loss, and every real token computed
#: (prompts included: the figure other tools report)
RATES = {"tokens_per_s": "trained tokens/s", "total_tokens_per_s": "all tokens/s"}
#: preference tuning (train.objective dpo/orpo/simpo/kto, engine.training.preference): the implicit
#: rewards of the chosen and rejected answers and their margin, on training and eval pairs
REWARDS = {"reward_chosen": "chosen", "reward_rejected": "rejected",
           "reward_margin": "margin", "eval_reward_margin": "eval margin"}
#: the share of pairs whose chosen answer wins, in percent
ACCURACY = {"reward_accuracy": "train", "eval_reward_accuracy": "eval"}
#: GRPO (train.objective grpo, engine.training.grpo): the mean reward of the sampled completions
#: (total, and per function as "rewards/<function>" series), the held-out mean reward
#: (gen_reward), the reward's spread, KL to the reference, clip ratio, completion length
GRPO_REWARD = {"reward": "mean reward", "gen_reward": "held-out (greedy)"}
GRPO_STATS = {"reward_std": "reward spread (std)", "kl": "KL", "clip_ratio": "clip ratio"}
GRPO_LENGTH = {"completion_length": "completion tokens"}
GRPO_PREFIX = "rewards/"
CHARTED = ("loss", "eval_loss", "lr", *RATES, "total_steps", *GEN_CHARTED, *REWARDS,
           *ACCURACY, *GRPO_REWARD, *GRPO_STATS, *GRPO_LENGTH)  # kept
SAMPLE_COLUMNS = ["Step", "Prompt", "Completion", "Reward", "Per function", "Advantage"]
#: what Compare jobs can overlay: label -> (metric, its eval twin or None, scale)
COMPARED = {"training loss": ("loss", "eval_loss", 1.0),
            "reward margin": ("reward_margin", "eval_reward_margin", 1.0),
            "reward accuracy (%)": ("reward_accuracy", "eval_reward_accuracy", 100.0),
            "chosen reward": ("reward_chosen", None, 1.0),
            "rejected reward": ("reward_rejected", None, 1.0)}
LOG_LINES = 300
SERVED_COPY_TTL_S = 3600       # served_copy folders older than this go when a new one is made
TABLE_COLUMNS = ["ID", "Name", "Status", "Progress", "ETA", "Started", "Duration", "Owner",
                 "Model", "Method", "GPUs"]


def _api():
    from jobs import api

    return api


def parse_id(value: Any) -> str:
    """Job ids are text (jobs.store.new_id); dropdowns and API callers may send anything."""
    return str(value).strip()


def _clock(ts: float | None) -> str:
    """A time (unix seconds, as the store keeps them) as the clock, with the day when not
    today."""
    if not ts:
        return ""
    when = datetime.fromtimestamp(ts)
    fmt = "%H:%M:%S" if when.date() == datetime.now().date() else "%b %d %H:%M"
    return when.strftime(fmt)


# --------------------------------------------------------------------------- table


def progress_of(job: dict[str, Any]) -> tuple[int, int | None]:
    return int(job.get("step") or 0), (int(job["total_steps"]) if job.get("total_steps")
                                        else None)


#: steps the job must have timed itself over before its ETA comes from its own pace
PACE_STEPS = 3


def eta_of(job: dict[str, Any], times: dict[str, Any] | None = None,
           now: float | None = None) -> float | None:
    """Seconds left for a running job: THE ETA, for every place that shows one (the table,
    the progress bar). From the job's own pace between its first and latest logged step
    (`times`: jobs.api.step_times of the job) once PACE_STEPS steps were timed, so loading the
    model does not count as training; before that from the time since it started. None when
    not running or the total is unknown."""
    step, total = progress_of(job)
    started = job.get("started_at")
    if job["status"] != "running" or not started or not total or step <= 0:
        return None
    now = now or time.time()
    if times and times["last_step"] - times["first_step"] >= PACE_STEPS:
        pace = (times["last_time"] - times["first_time"]) / \
            (times["last_step"] - times["first_step"])
        done = max(step, times["last_step"])
        since = max(0.0, now - times["last_time"])     # the step under way
        return max(0.0, pace * max(0, total - done) - min(since, pace))
    return (now - started) / step * max(0, total - step)


def table_row(job: dict[str, Any], times: dict[str, Any] | None = None) -> list[Any]:
    cfg, status = job["config"], job["status"]
    step, total = progress_of(job)
    share = f"{step / total:.0%} · {step}/{total}" if total else (f"step {step}" if step else "")
    if status == "completed":
        share = f"100% · {total or step}/{total or step}" if (total or step) else "100%"
    started, finished = job.get("started_at"), job.get("finished_at")
    took = (finished or time.time()) - started if started else None
    model = str((cfg.get("model") or {}).get("name", ""))
    return [job["id"], job["name"], f"{render.STATUS_ICONS.get(status, '')} {status}", share,
            render.duration(eta_of(job, times)), _clock(job.get("started_at") or job["created_at"]),
            render.duration(took), job["owner"],
            model.rstrip("/").rsplit("/", 1)[-1] if "/" in model and Path(model).is_absolute()
            else model, (cfg.get("method") or {}).get("kind", ""), gpus_cell(job)]


def gpus_cell(job: dict[str, Any]) -> str:
    """The GPUs a job holds (or held), or how many a queued job waits for."""
    parallel = (job["config"].get("parallel") or {})
    if job.get("gpus"):
        return f"{job['gpus']}" + (" (fsdp)" if parallel.get("strategy") == "fsdp" else "")
    wanted = int(parallel.get("gpus") or 1)
    return f"waits for {wanted}" if job["status"] == "queued" and wanted > 1 else ""


def parallel_text(job: dict[str, Any]) -> str:
    """How the job splits its work and on which GPUs: run.json's resolved strategy (auto
    becomes ddp or fsdp) and the jobs row's GPUs."""
    import json

    parallel = job["config"].get("parallel") or {}
    strategy = parallel.get("strategy", "auto")
    try:
        run = json.loads((Path(job["output_dir"]) / "run.json").read_text())
        strategy = run.get("parallel") or strategy
        processes = run.get("processes")
    except (OSError, ValueError, TypeError):
        processes = None
    if strategy == "none":
        strategy = "one process"
    gpus = job.get("gpus")
    where = f"GPU {gpus}" if gpus else (f"{processes} processes" if processes and processes > 1
                                        else "")
    offload = " + CPU offload" if parallel.get("cpu_offload") and strategy == "fsdp" else ""
    return f"{strategy}{offload}" + (f" on {where}" if where else "")


def list_jobs(status: str | None = None, kind: str = "train", actor: Any = None
              ) -> list[dict[str, Any]]:
    """Training jobs by default: export jobs are shown under the job they export. With a
    non-admin actor (app/studio/session.py) only their own."""
    return list(_api().list_jobs(status=status or None, kind=kind, actor=actor))


def table(status: str | None = None, jobs: list[Any] | None = None, actor: Any = None):
    import pandas as pd

    jobs = list_jobs(status, actor=actor) if jobs is None else jobs
    running = [j for j in jobs if j["status"] == "running"]
    times = _api().step_times(running) if running else {}
    return pd.DataFrame([table_row(j, times.get(j["id"])) for j in jobs],
                        columns=TABLE_COLUMNS)


def job_label(job: dict[str, Any]) -> str:
    return f"#{job['id']} · {job['name']} · {job['status']}"


def choices(jobs: list[dict[str, Any]] | None = None, statuses: set[str] | None = None,
            actor: Any = None) -> list[tuple[str, str]]:
    jobs = list_jobs(actor=actor) if jobs is None else jobs
    return [(job_label(j), j["id"]) for j in jobs if statuses is None or j["status"] in statuses]


def pick_default(jobs: list[dict[str, Any]], remembered: Any = None) -> str | None:
    """The job to show: the remembered one if it still exists, else the newest running one,
    else the newest."""
    ids = [j["id"] for j in jobs]
    if remembered is not None and str(remembered) in ids:
        return str(remembered)
    running = [j["id"] for j in jobs if j["status"] == "running"]
    return (running or ids or [None])[0]


# --------------------------------------------------------------------------- live metrics


def new_session(job_id: Any = None) -> dict[str, Any]:
    """A page's state for one job; "curves" is None until the first poll reads them."""
    return {"job": None if job_id in (None, "") else str(job_id), "since": -1, "curves": None,
            "status": None, "log_since": 0, "log": [], "version": 0}


def poll(session: dict[str, Any] | None, job_id: Any, actor: Any = None
         ) -> tuple[dict[str, Any], bool, Any]:
    """Fetch what is new for `job_id`: (session, changed, job record)."""
    api = _api()
    if not session or session.get("job") != (None if job_id in (None, "") else str(job_id)):
        session = new_session(job_id)
    if session["job"] is None:
        return session, False, None
    jid = parse_id(session["job"])
    try:
        job = api.get(jid, actor=actor)
    except (KeyError, LookupError, ValueError):
        job = None
    if job is None:
        changed = session["status"] != "missing"
        session["status"] = "missing"
        return session, changed, None
    status, attempt = job["status"], job.get("attempt")
    if session.get("attempt") not in (None, attempt):
        # claimed again (resumed from a checkpoint): the steps past the checkpoint were
        # deleted and are being written anew, so the curves start over from the store
        session.update(curves=None, since=-1)
    session["attempt"] = attempt
    if session["curves"] is None:     # the first poll: every curve so far, bucketed in SQL
        names = (*CHARTED, *reward_series(job))
        added = _seed_curves(session, api.metric_buckets(jid, CHART_POINTS, names=names,
                                                         actor=actor))
    else:
        # rows at the last seen step are fetched again: an eval row may land after its train
        # row (Curve.add skips a step it has counted)
        records = api.metrics(jid, since_step=max(-1, session["since"] - 1), actor=actor)
        added = _add_rows(session, metric_rows(records))
    lines = api.logs(jid, since=session["log_since"], actor=actor)
    new_lines, session["log_since"] = _log_lines(lines, session["log_since"])
    if new_lines:
        session["log"] = (session["log"] + new_lines)[-LOG_LINES:]
    changed = bool(added) or bool(new_lines) or status != session["status"] or \
        session["version"] == 0
    session["status"] = status
    session["version"] += 1
    return session, changed, job


def _seed_curves(session: dict[str, Any], seed: dict[str, Any]) -> int:
    """Start the session's curves from jobs.api.metric_buckets; how many buckets came."""
    session["curves"] = curves(seed)
    ends = [c.last[0] for c in session["curves"].values() if c.last]
    session["since"] = max([session["since"], *ends])
    return sum(len(c.buckets) for c in session["curves"].values())


def _add_rows(session: dict[str, Any], rows: list[tuple[int, str, float]]) -> int:
    """Feed new (step, name, value) rows to the session's curves; how many were new."""
    added = 0
    for step, name, value in rows:
        session["since"] = max(session["since"], step)
        if name in CHARTED or name.startswith(GRPO_PREFIX):
            added += session["curves"].setdefault(name, Curve()).add(step, value)
    return added


def reward_series(job: dict[str, Any] | None) -> list[str]:
    """The per-function reward metrics a GRPO job logs ("rewards/<function>"), from its
    config's train.rewards (dots in custom names become underscores, as the engine names them)."""
    train = ((job or {}).get("config") or {}).get("train") or {}
    if train.get("objective") != "grpo":
        return []
    return [GRPO_PREFIX + str(r.get("name", "")).replace(".", "_")
            for r in train.get("rewards") or [] if isinstance(r, dict)]


def samples_frame(job: dict[str, Any] | None, actor: Any = None):
    """The newest sampled completions of a GRPO job (jobs.api.samples) as the table's frame."""
    rows = []
    if reward_series(job):
        try:
            found = _api().samples(job["id"], actor=actor)
        except (KeyError, LookupError, ValueError):
            found = {"rows": []}
        for r in found.get("rows") or []:
            per = ", ".join(f"{k} {'–' if v is None else f'{v:.2f}'}"
                            for k, v in (r.get("rewards") or {}).items())
            rows.append({"Step": int(r.get("step") or 0), "Prompt": str(r.get("prompt", "")),
                         "Completion": str(r.get("completion", "")),
                         "Reward": float("nan") if r.get("reward") is None else
                         float(r["reward"]), "Per function": per,
                         "Advantage": float(r.get("advantage") or 0.0)})
    return frame(rows, {"Step": "int64", "Prompt": "str", "Completion": "str",
                        "Reward": "float64", "Per function": "str", "Advantage": "float64"})


def _log_lines(events: list[dict[str, Any]], since: int) -> tuple[list[str], int]:
    """The lines of jobs.api.logs events ({id, time, level, line}; a level other than info
    shown before its line) and the event id to ask from next time."""
    out = [e["line"] if e["level"] == "info" else f"[{e['level']}] {e['line']}"
           for e in events]
    return out, max([since, *(e["id"] for e in events)])


def series(session: dict[str, Any], name: str) -> list[tuple[int, float]]:
    """The (step, value) points the chart of `name` draws."""
    return curve(session, name).points()


def curve(session: dict[str, Any], name: str) -> Curve:
    """The session's Curve of `name` (an empty one before any value)."""
    return (session.get("curves") or {}).get(name) or Curve()


def frame(rows: list[dict[str, Any]], columns: dict[str, str]):
    """A DataFrame with fixed column dtypes even when empty: the browser picks each chart's
    axis types (numbers or categories) from the first frame it gets."""
    import pandas as pd

    return pd.DataFrame({c: pd.Series([r[c] for r in rows], dtype=t) for c, t in
                         columns.items()})


STEP_VALUE = {"step": "int64", "value": "float64"}

#: series colours, distinct at a glance (Tableau 10); named series keep theirs (FIXED_COLORS)
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#bab0ac")
FIXED_COLORS = {"raw": "#a5b4fc", "smoothed": "#4338ca", "eval": "#ea580c"}


def color_map(frame: Any, column: str) -> dict[str, str] | None:
    """A colour for every series in `frame[column]`, in order of appearance; None when empty."""
    if frame is None or column not in getattr(frame, "columns", ()) or not len(frame):
        return None
    names = list(dict.fromkeys(str(v) for v in frame[column]))
    free = iter(c for c in PALETTE * (1 + len(names) // len(PALETTE))
                if c not in FIXED_COLORS.values())
    return {n: FIXED_COLORS.get(n) or next(free) for n in names}


def plot_update(frame: Any, column: str | None = None, **kw: Any) -> dict[str, Any]:
    """The gr.update of a chart's data: its frame (None while empty: an empty frame would fix
    the colour scale before any series exists). Its colours follow in a second update
    (colors_update): the browser's chart fixes which series it draws when its settings
    change, not when only its data does, and a settings change sent with the data is applied
    before the data is; so a chart of several series gets its data first, then a colour per
    series, which redraws it with every series it was given whenever that set changed."""
    import gradio as gr

    empty = frame is None or not len(frame)
    return gr.update(value=None if empty else frame, **kw)


def colors_update(frame: Any, column: str) -> Any:
    """The second update of a multi-series chart (after plot_update's, once it was applied):
    a colour per series; unchanged when the same series are drawn (no redraw), skipped while
    empty."""
    import gradio as gr

    found = color_map(frame, column)
    return gr.update(color_map=found) if found else gr.skip()


def labelled(session: dict[str, Any], names: dict[str, str], scale: float = 1.0):
    """One chart's frame of several curves: each metric in `names` as the series of its label,
    its values times `scale` (100: shares drawn in percent)."""
    return frame([{"step": s, "value": v * scale, "series": label}
                  for name, label in names.items() for s, v in series(session, name)],
                 {**STEP_VALUE, "series": "str"})


def frames(session: dict[str, Any]) -> dict[str, Any]:
    """The chart frames: loss (raw, smoothed and eval: train vs eval on one chart), eval loss, learning rate, tokens/s, and the
    generation metrics (the tuned model's answers, in percent: one point per evaluation), and
    for preference tuning the rewards and reward accuracy (percent); at most twice CHART_POINTS
    points per series (Curve.points)."""
    loss = curve(session, "loss")
    rows = [{"step": s, "value": v, "series": "raw"} for s, v in loss.points()] + \
        [{"step": s, "value": v, "series": "smoothed"} for s, v in loss.smoothed()] + \
        [{"step": s, "value": v, "series": "eval"} for s, v in series(session, "eval_loss")]
    out = {"loss": frame(rows, {**STEP_VALUE, "series": "str"})}
    for name in ("eval_loss", "lr"):
        out[name] = frame([{"step": s, "value": v} for s, v in series(session, name)],
                          STEP_VALUE)
    out["tokens_per_s"] = labelled(session, RATES)
    out["gen"] = labelled(session, GEN_CHARTED, scale=100)
    out["rewards"] = labelled(session, REWARDS)
    out["accuracy"] = labelled(session, ACCURACY, scale=100)
    per_function = {n: n.removeprefix(GRPO_PREFIX) for n in sorted(session.get("curves") or {})
                    if n.startswith(GRPO_PREFIX)}
    out["grpo_reward"] = labelled(session, {**GRPO_REWARD, **per_function})
    out["grpo_stats"] = labelled(session, GRPO_STATS)
    out["grpo_length"] = labelled(session, GRPO_LENGTH)
    return out


def progress_html(session: dict[str, Any], job: dict[str, Any] | None) -> str:
    if job is None:
        return ""
    status = job["status"]
    step, total = progress_of(job)
    last_loss, last_total = curve(session, "loss").last, curve(session, "total_steps").last
    if last_loss:
        step = max(step, last_loss[0])
    if last_total and not total:
        total = int(last_total[1])
    if status == "completed" and not total:
        total = step or None
    times = _api().step_times([job]).get(job["id"]) if status == "running" else None
    eta = eta_of({**job, "step": step, "total_steps": total}, times)
    label = f"ETA {render.duration(eta)}" if eta is not None else ""
    return render.progress(step, total, label, status)


def actions(job: dict[str, Any] | None) -> dict[str, bool]:
    """Which of the job page's buttons apply to the job's state: cancel a queued, running or
    interrupted job; resume an interrupted, failed or cancelled one (jobs.api.resume's rule);
    delete one that is not queued or running."""
    status = job["status"] if job else None
    return {"cancel": status in ("queued", "running", "interrupted"),
            "resume": status in ("interrupted", "failed", "cancelled"),
            "delete": status is not None and status not in ("queued", "running")}


def studio_hint(hint: str) -> str:
    """A job's hint as the studio says it: the CLI's resume command is the Resume button here."""
    import re

    return re.sub(r"`ftstudio jobs resume [^`]+`", "the ↻ Resume button above", hint)


def header_html(job: dict[str, Any] | None) -> str:
    if job is None:
        return render.note("Pick a job from the table, or start one in the Train tab.")
    cfg = job["config"]
    model = (cfg.get("model") or {}).get("name", "")
    data = (cfg.get("data") or {}).get("train", "")
    meta = " · ".join([f"owner {job['owner']}"] + [
        f"{key.removesuffix('_at')} {_clock(job[key])}"
        for key in ("created_at", "started_at", "finished_at") if job.get(key)]
        + [f"parallel {parallel_text(job)}"])
    error, hint = job.get("error"), job.get("hint")
    notes = (render.note(str(error), "bad") if error else "") + \
        (render.note(studio_hint(str(hint)), "info") if hint else "")
    return (f'<div class="fs-job-h"><span class="fs-job-name">#{render.esc(job["id"])} '
            f'{render.esc(job["name"])}</span>'
            f'{render.badge(job["status"])}<span class="fs-muted">'
            f'{render.esc((cfg.get("method") or {}).get("kind", ""))} on '
            f'{render.esc(Path(model).name if Path(model).is_absolute() else model)} · data '
            f'{render.esc(Path(str(data)).name)}</span></div><div class="fs-muted">'
            f'{render.esc(meta)}</div>' + notes)


# --------------------------------------------------------------------------- compare


def compare_frame(job_ids: list[Any], actor: Any = None, metric: str = "training loss"):
    """One metric of several jobs on one chart (COMPARED: smoothed, with its eval twin as
    points): training loss by default, or a preference job's reward margin, accuracy, or
    chosen and rejected rewards. A job without the metric adds nothing."""
    name, twin, scale = COMPARED.get(metric) or COMPARED["training loss"]
    api, rows = _api(), []
    for jid in job_ids or []:
        try:
            seed = api.metric_buckets(parse_id(jid), CHART_POINTS,
                                      names=tuple(n for n in (name, twin) if n), actor=actor)
        except (KeyError, LookupError, ValueError):   # gone, or not the actor's
            continue
        found = curves(seed)
        main, evals = found.get(name) or Curve(), found.get(twin) or Curve()
        label = f"#{jid}"
        try:
            label = job_label(api.get(parse_id(jid), actor=actor)).rsplit(" · ", 1)[0]
        except Exception:  # noqa: BLE001 - a deleted job keeps its number as label
            pass
        rows += [{"step": a, "loss": v * scale, "job": label} for a, v in main.smoothed()]
        rows += [{"step": a, "loss": v * scale, "job": f"{label} (eval)"}
                 for a, v in evals.points()]
    return frame(rows, {"step": "int64", "loss": "float64", "job": "str"})


# --------------------------------------------------------------------------- files


def click_download(elem_id: str) -> str:
    """The JS that fetches the newest file shown in the gr.File `elem_id`: run after a handler
    handed it a file, so one click on a download button (or on a file) downloads it; the
    file box stays, as a link to fetch it again. The box may render the new link a while after
    the handler returned (a busy browser or server): it waits up to 3 s for a link it has not
    fetched yet, then fetches the newest link (the same file asked for again)."""
    return ("() => { const box = '#" + elem_id + " a[download]'; "
            "const done = (window.__ftFetched = window.__ftFetched || {}); "
            "const seen = (done['" + elem_id + "'] = done['" + elem_id + "'] || new Set()); "
            "let tries = 0; const look = () => { const links = document.querySelectorAll(box); "
            "const last = links.length ? links[links.length - 1] : null; "
            "if (last && (!seen.has(last.href) || tries >= 15)) { seen.add(last.href); "
            "last.click(); return; } if (tries++ < 50) setTimeout(look, 200); }; "
            "setTimeout(look, 200); }")


def visible_job(job_id: Any, actor: Any = None) -> dict[str, Any]:
    """The job if the actor may see it; JobNotFound (a KeyError) otherwise, as for a missing
    id. Every download fetches the job this way before touching its folder."""
    return _api().get(parse_id(job_id), actor=actor)


def served_copy(path: Any) -> str:
    """A copy of the file in a fresh temp folder (same name), for Gradio to hand out: the
    studio serves no path under FTSTUDIO_HOME/jobs, so a file can only be fetched through a
    handler that checked who is asking (Gradio moves the copy into its hashed cache).
    Folders of earlier copies older than SERVED_COPY_TTL_S are removed on the way."""
    import shutil
    import tempfile

    src = Path(path)
    folder = Path(tempfile.mkdtemp(prefix="ftstudio-dl-"))
    remove_old_copies(folder.parent)
    out = folder / src.name
    try:
        os.link(src, out)          # the same file system: no copy of a large export
    except OSError:
        shutil.copy2(src, out)
    return str(out)


def remove_old_copies(tmp: Path, max_age_s: float = SERVED_COPY_TTL_S) -> list[Path]:
    """Remove the served_copy folders in `tmp` untouched for max_age_s; returns them. Safe for
    downloads in progress: Gradio takes the file into its own cache as soon as the handler
    returns, so nothing reads a copy minutes later. Links and others' folders are left."""
    import shutil

    cutoff, gone = time.time() - max_age_s, []
    for folder in tmp.glob("ftstudio-dl-*"):
        try:
            info = folder.lstat()
        except OSError:            # removed meanwhile by another studio process
            continue
        if folder.is_dir() and not folder.is_symlink() and info.st_uid == os.getuid() and \
                info.st_mtime < cutoff:
            shutil.rmtree(folder, ignore_errors=True)
            gone.append(folder)
    return gone


def adapter_zip(job_id: Any, actor: Any = None) -> str:
    """The job's adapter as a zip (jobs.bundles.adapter_zip), once the actor may see the job."""
    return str(bundles.adapter_zip(visible_job(job_id, actor)))


def bundle_zip(job_id: Any, actor: Any = None) -> str:
    """config.yaml, run.json, metrics.jsonl and log.txt as one zip (jobs.bundles.run_zip)."""
    return str(bundles.run_zip(visible_job(job_id, actor)))


def metrics_csv(job_id: Any, actor: Any = None) -> str:
    """Every metrics row of the job, one line per step, one column per metric
    (jobs.bundles.metrics_csv)."""
    job = visible_job(job_id, actor)
    return str(bundles.metrics_csv(job, _api().metrics(job["id"], since_step=-1, actor=actor)))
