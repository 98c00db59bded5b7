"""Sweep groups: one queued training job per point of a grid (or a random sample of it), a
leaderboard over them, and the group's actions.

Use from Python:
    from jobs import sweeps
    grid = sweeps.parse_grid(["train.lr=1e-4,2e-4", "method.r=8..32 step 8"])
    sweeps.expand(grid)                                  # every point, in order
    sweeps.expand(grid, random=3, seed=0)                # 3 of them, drawn without replacement
    sw = sweeps.submit(cfg, grid, priority=0, name="lr-r", halving=[20, 40], actor=user)
    sweeps.leaderboard(sw["id"], metric="eval_loss")    # best first, varied keys as columns
    sweeps.cancel_rest(sw["id"]); sweeps.resume_failed(sw["id"]); sweeps.best(sw["id"])
    sweeps.tensorboard_zip(sw["id"])                     # every job's tb/ folder, one zip

Values: a comma list (`1e-4, 2e-4`), or a range: `8..32 step 8` (inclusive, arithmetic), `8..12`
(whole numbers, step 1) or `1e-5..1e-3 log 3` (3 values evenly spaced in log scale). Every value
goes through the same coercion as `--set` (engine.config.apply_overrides), and every point's
config through submit()'s checks (jobs.api.prepare) before any job is queued: every problem of
every point comes back at once, a problem all points share only once.

Priorities (halving.queue_priority): the k-th job of a sweep is queued at priority - k/(k+1),
so someone's single job waits behind at most one job of each sweep, and sweeps of different
people interleave. Per-user queue limits (FTSTUDIO_MAX_QUEUED_PER_USER) count every job of a sweep.
A sweep has an owner; another user sees neither it nor its jobs (jobs.access).
"""

from __future__ import annotations

import itertools
import math
import random as random_module
from pathlib import Path
from typing import Any

from engine.config import ConfigError, Problem, TrainConfig, apply_overrides, from_dict
from jobs import access, api, halving, store
from jobs.bundles import write_zip

#: metrics where lower is better; every other metric ranks higher first
LOWER_IS_BETTER = ("loss", "perplexity")
DEFAULT_METRIC = "eval_loss"


# --------------------------------------------------------------------------- the space


def parse_values(key: str, text: str) -> list[str]:
    """One setting's values as the texts --set would take: `a, b, c`, `a..b`, `a..b step s`
    or `a..b log n`. ValueError says what is wrong and what fits."""
    text = text.strip()
    if ".." not in text:
        values = [v.strip() for v in text.split(",")]
        if not text or any(not v for v in values):
            raise ValueError(f"{key}: {text!r} has an empty value; write values as a, b, c "
                             "or a range such as 8..32 step 8")
        return values
    lo_text, _, rest = text.partition("..")
    parts = rest.split()
    try:
        lo, hi = float(lo_text), float(parts[0])
        how = parts[1] if len(parts) > 1 else "step"
        amount = float(parts[2]) if len(parts) > 2 else 1.0
        if len(parts) not in (1, 3) or how not in ("step", "log"):
            raise ValueError
    except (ValueError, IndexError):
        raise ValueError(f"{key}: {text!r} is not a range; write START..END, START..END step "
                         "S, or START..END log N (N values evenly spaced in log scale)") from None
    if hi < lo:
        raise ValueError(f"{key}: {text!r} ends below its start; write the smaller value first")
    if how == "log":
        n = int(amount)
        if n < 2 or n != amount or lo <= 0:
            raise ValueError(f"{key}: {text!r}: a log range needs positive ends and a whole "
                             "number of values of at least 2, e.g. 1e-5..1e-3 log 3")
        values = [math.exp(math.log(lo) + i * (math.log(hi) - math.log(lo)) / (n - 1))
                  for i in range(n)]
    else:
        if amount <= 0:
            raise ValueError(f"{key}: {text!r}: the step must be above 0")
        count = int(math.floor((hi - lo) / amount + 1e-9)) + 1
        if count > 1000:
            raise ValueError(f"{key}: {text!r} makes {count} values; use a larger step")
        values = [lo + i * amount for i in range(count)]
    whole = all(float(v).is_integer() for v in (lo, hi, amount)) and how == "step"
    return [str(int(round(v))) if whole else format(v, ".6g") for v in values]


def parse_grid(items: list[str] | dict[str, str]) -> dict[str, list[str]]:
    """`key=values` items (as --grid takes them; or {key: values text}) to {key: [value
    texts]}, in the order given. ConfigError with every bad item at once."""
    pairs = list(items.items()) if isinstance(items, dict) else \
        [tuple(i.partition("=")[::2]) for i in items]
    grid, problems = {}, []
    for item, (key, text) in zip(items, pairs):
        key = key.strip()
        if not key or (not isinstance(items, dict) and "=" not in item):
            problems.append(Problem(key or str(item), "a sweep setting looks like key=v1,v2, "
                                                      "e.g. --grid train.lr=1e-4,2e-4"))
            continue
        if key in grid:
            problems.append(Problem(key, "given twice; put all its values in one --grid"))
            continue
        try:
            grid[key] = parse_values(key, text)
        except ValueError as exc:
            problems.append(Problem(key, str(exc).removeprefix(f"{key}: ")))
    if problems:
        raise ConfigError(problems)
    return grid


def expand(grid: dict[str, list[str]], random: int | None = None, seed: int = 0
           ) -> list[dict[str, str]]:
    """The points of the grid ({key: value text} each, keys in grid order): every combination
    (the first key varies slowest), or `random` of them drawn without replacement by
    random.Random(seed), kept in grid order."""
    keys = list(grid)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*grid.values())]
    if random is None:
        return points
    if random < 1 or random > len(points):
        raise ConfigError([Problem("--random", f"{random} points asked of a grid of "
                                               f"{len(points)}; use 1 to {len(points)}")])
    chosen = sorted(random_module.Random(seed).sample(range(len(points)), random))
    return [points[i] for i in chosen]


def describe(point: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items())


# --------------------------------------------------------------------------- validation


def plan(config: TrainConfig | dict, grid: dict[str, list[str]], *, random: int | None = None,
         seed: int = 0, halving_steps: list[int] | None = None, actor: dict | None = None
         ) -> list[dict[str, Any]]:
    """Every job the sweep would queue, [{id, point, config}], after checking every point as
    submit() does. ConfigError listing every problem of every point at once (each naming its
    point; one shared by all points, once)."""
    base = from_dict(config) if isinstance(config, dict) else config.copy()
    if not grid:
        raise ConfigError([Problem("--grid", "a sweep needs at least one setting to vary, "
                                             "e.g. --grid train.lr=1e-4,2e-4")])
    _check_values(base, grid)
    points = expand(grid, random, seed)
    found: list[tuple[int, Problem]] = []
    jobs = []
    for i, point in enumerate(points):
        cfg = apply_overrides(base, [f"{k}={v}" for k, v in point.items()])
        job_id = store.new_id()
        cfg, problems = api.prepare(cfg, job_id, actor)
        problems += _halving_problems(cfg, halving_steps or [], len(points))
        found += [(i, p) for p in problems]
        jobs.append({"id": job_id, "point": point, "config": cfg.to_dict()})
    if found:
        raise ConfigError(_merged(found, points))
    return jobs


def _check_values(base: TrainConfig, grid: dict[str, list[str]]) -> None:
    """Each value once, with --set's coercion: an unknown key or a value of the wrong type is
    reported per value, not per point."""
    problems = []
    for key, values in grid.items():
        for value in values:
            try:
                apply_overrides(base, [f"{key}={value}"])
            except ConfigError as exc:
                problems += [Problem(p.key, f"{value!r}: {p.message}") for p in exc.problems]
                if any("unknown setting" in p.message for p in exc.problems):
                    break
    if problems:
        raise ConfigError(problems)


def _halving_problems(cfg: TrainConfig, steps: list[int], points: int) -> list[Problem]:
    if not steps:
        return []
    problems, t = [], cfg.train
    if points < 2:
        problems.append(Problem("--halving-steps", "successive halving needs at least 2 "
                                                   "points to compare"))
    if sorted(set(steps)) != list(steps) or min(steps) < 1:
        problems.append(Problem("--halving-steps", f"{','.join(map(str, steps))}: give "
                                "increasing positive steps, e.g. 20,40"))
    if not (cfg.data.validation or cfg.data.val_fraction):
        problems.append(Problem("data.val_fraction", "successive halving ranks by eval loss: "
                                "set data.validation or a data.val_fraction above 0"))
    if not t.eval_every or any(s % t.eval_every for s in steps):
        problems.append(Problem("train.eval_every", f"{t.eval_every}: every halving step "
                                f"({','.join(map(str, steps))}) must be a multiple of it, so "
                                "each job is evaluated there"))
    if t.max_steps and max(steps) >= t.max_steps:
        problems.append(Problem("--halving-steps", f"{max(steps)} is not before "
                                f"train.max_steps ({t.max_steps}); cut earlier"))
    return problems


def _merged(found: list[tuple[int, Problem]], points: list[dict[str, str]]) -> list[Problem]:
    out, seen = [], set()
    for i, p in found:
        every = all((j, p) in found for j in range(len(points)))
        if every and (p.key, p.message) in seen:
            continue
        seen.add((p.key, p.message))
        where = "every point" if every and len(points) > 1 else \
            f"point {i + 1} of {len(points)} ({describe(points[i])})"
        out.append(Problem(p.key, f"{where}: {p.message}"))
    return out


# --------------------------------------------------------------------------- the group


def submit(config: TrainConfig | dict, grid: dict[str, list[str]] | list[str], *,
           random: int | None = None, seed: int = 0, priority: int = 0,
           name: str | None = None, halving_steps: list[int] | None = None,
           owner: str | None = None, actor: dict | None = None) -> dict[str, Any]:
    """Check every point, then queue one job per point as a sweep group; returns the sweep
    ({id, name, owner, jobs: [...]}). Nothing is queued when any point has a problem
    (ConfigError) or the jobs would pass the actor's queue limit (JobError)."""
    grid = grid if isinstance(grid, dict) else parse_grid(grid)
    owner = access.owner_of(actor, owner)
    jobs = plan(config, grid, random=random, seed=seed, halving_steps=halving_steps,
                actor=actor)
    sweep_id = store.new_id()
    name = (name or "").strip() or f"sweep-{sweep_id}"
    for i, job in enumerate(jobs):
        job["name"] = f"{name}-{i + 1}"
        train = job["config"]["train"]      # the group is the trackers' experiment / group
        if train.get("report_to") and not train.get("tracker_experiment"):
            train["tracker_experiment"] = name
    base = from_dict(config) if isinstance(config, dict) else config
    with store.connect() as db:
        access.check_queue_limit(db, actor, adding=len(jobs))
        store.insert_sweep(db, sweep_id=sweep_id, name=name, owner=owner,
                           config=base.to_dict(), keys=list(grid),
                           space={"grid": grid, "random": random, "seed": seed},
                           halving=list(halving_steps or []), priority=int(priority),
                           jobs=jobs)
        for job in jobs:
            api._enqueue_or_fail(db, job["id"], halving.queue_priority(
                db, {"id": job["id"], "priority": priority}))
    return get(sweep_id, actor=actor)


def get(sweep_id: str, actor: dict | None = None) -> dict[str, Any]:
    """The sweep and its jobs (in point order, each with sweep_point, paused_at, cut_at);
    due successive-halving decisions are taken first (jobs/halving.py)."""
    with store.connect() as db:
        sweep = access.check_sweep_visible(store.get_sweep(db, sweep_id), actor)
        if sweep["halving"]:
            halving.advance(db, sweep_id)
        sweep["jobs"] = [api._public(j) for j in store.sweep_members(db, sweep_id)]
        return sweep


def list_sweeps(owner: str | None = None, actor: dict | None = None) -> list[dict[str, Any]]:
    """Sweeps newest first, each with its job count (a non-admin sees only their own)."""
    with store.connect() as db:
        return store.list_sweeps(db, access.list_owner(actor, owner))


def metrics_of(sweep: dict[str, Any]) -> list[str]:
    """The metrics a leaderboard can rank by: eval_loss first, then the other eval_* and
    the gen_* metrics the group's jobs logged, then the newest generation evaluations'."""
    ids = [j["id"] for j in sweep["jobs"]]
    with store.connect() as db:
        names = store.metric_names(db, ids)
        for job_id in ids:
            for e in store.evals(db, job_id)[:1]:
                names += [f"gen_{k}" for k in e["metrics"]]
    ranked = [n for n in names if n.startswith(("eval_", "gen_"))]
    return list(dict.fromkeys([DEFAULT_METRIC, *sorted(ranked)]))


def lower_is_better(metric: str) -> bool:
    return any(word in metric for word in LOWER_IS_BETTER)


def leaderboard(sweep_id: str, metric: str = DEFAULT_METRIC, actor: dict | None = None
                ) -> dict[str, Any]:
    """The group's jobs ranked by `metric` (its newest value; gen_* also from the newest
    generation evaluation): best first, jobs without it after them in point order.
    {"sweep", "metric", "metrics" (what it can rank by), "keys" (the varied settings), "rows":
    [{rank, job_id, name, status, step, total_steps, progress, value, value_step, <key>: value,
    cut_at, paused_at}]}."""
    sweep = get(sweep_id, actor)
    ids = [j["id"] for j in sweep["jobs"]]
    with store.connect() as db:
        values = store.metric_at(db, ids, metric)
        if metric.startswith("gen_"):
            for job_id in ids:
                newest = next(iter(store.evals(db, job_id)), None)
                got = newest and newest["metrics"].get(metric.removeprefix("gen_"))
                if job_id not in values and got and got.get("tuned") is not None:
                    values[job_id] = (newest.get("step"), got["tuned"])
    sign = 1 if lower_is_better(metric) else -1
    jobs = sorted(sweep["jobs"], key=lambda j: (j["id"] not in values,
                                                sign * values.get(j["id"], (0, 0))[1],
                                                j["sweep_index"]))
    rows = []
    for rank, j in enumerate(jobs, start=1):
        step, value = values.get(j["id"], (None, None))
        rows.append({"rank": rank if value is not None else None, "job_id": j["id"],
                     "name": j["name"], "status": j["status"], "step": j["step"],
                     "total_steps": j["total_steps"], "progress": j["progress"],
                     "value": value, "value_step": step, **j["sweep_point"],
                     "cut_at": j["cut_at"], "paused_at": j["paused_at"]})
    return {"sweep": {k: sweep[k] for k in ("id", "name", "owner", "created_at", "halving",
                                            "priority", "space")},
            "metric": metric, "metrics": metrics_of(sweep), "keys": sweep["keys"],
            "rows": rows}


def best(sweep_id: str, metric: str = DEFAULT_METRIC, actor: dict | None = None
         ) -> str | None:
    """The id of the leaderboard's first job that has the metric, or None."""
    rows = leaderboard(sweep_id, metric, actor)["rows"]
    return rows[0]["job_id"] if rows and rows[0]["value"] is not None else None


def cancel_rest(sweep_id: str, actor: dict | None = None) -> list[str]:
    """Cancel every job of the group that has not ended (queued ones never start, running ones
    checkpoint and stop, paused ones stay stopped); returns their ids."""
    done = []
    for job in get(sweep_id, actor)["jobs"]:
        if job["status"] in ("queued", "running", "interrupted"):
            try:
                api.cancel(job["id"], actor=actor)
                done.append(job["id"])
            except store.JobError:  # it ended in between
                pass
    return done


def resume_failed(sweep_id: str, actor: dict | None = None) -> list[str]:
    """Queue again every failed job of the group, and every interrupted one not paused by
    successive halving; each continues from its newest checkpoint. Returns their ids."""
    again = []
    for job in get(sweep_id, actor)["jobs"]:
        if job["status"] == "failed" or (job["status"] == "interrupted"
                                         and job["paused_at"] is None):
            api.resume(job["id"], actor=actor)
            again.append(job["id"])
    return again


def tensorboard_zip(sweep_id: str, actor: dict | None = None) -> Path:
    """Every job's TensorBoard folder (tb/, written with train.report_to: [tensorboard]) in one
    zip, one folder per job named after it, in the FTSTUDIO_HOME/sweeps/ID/ folder, written
    atomically (jobs.bundles.write_zip). JobError when no job of the group has one yet."""
    sweep = get(sweep_id, actor)
    out = store.home() / "sweeps" / sweep_id / f"sweep-{sweep_id}-tensorboard.zip"
    entries = []
    for job in sweep["jobs"]:
        tb = (store.folder_of(job) / "tb").resolve()
        if not tb.is_dir() or not tb.is_relative_to(store.folder_of(job).resolve()):
            continue
        entries += [(f, f"{job['name']}/{f.relative_to(tb).as_posix()}")
                    for f in sorted(p for p in tb.rglob("*") if p.is_file()
                                    and p.resolve().is_relative_to(tb))]
    if not entries:
        out.unlink(missing_ok=True)
        raise store.JobError(f"no job of sweep {sweep_id} has a TensorBoard folder (tb/) yet; "
                             "set train.report_to: [tensorboard] in the sweep's config")
    return write_zip(out, entries)


__all__ = ["parse_values", "parse_grid", "expand", "plan", "submit", "get", "list_sweeps",
           "leaderboard", "best", "cancel_rest", "resume_failed", "tensorboard_zip"]
