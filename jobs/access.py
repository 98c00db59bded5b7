"""Who may see and do what: the rules jobs.api applies for an `actor` (a jobs.users user dict).

    actor None         local mode (no auth; the CLI on the server): no restriction
    actor, is_admin    sees and acts on every job; may allow trust_remote_code
    actor, otherwise   sees only jobs it owns (another owner's job is "not found", the same
                       message as a job that does not exist); reads only its own uploads, the
                       bundled examples and FTSTUDIO_HOME/models; at most
                       FTSTUDIO_MAX_QUEUED_PER_USER queued jobs

Server settings (environment): FTSTUDIO_ALLOW_REMOTE_CODE=1 lets admins submit configs with
model.trust_remote_code true (off: nobody may); FTSTUDIO_MAX_QUEUED_PER_USER (default 20).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jobs import settings
from engine.config import Problem, TrainConfig
from jobs import store
from jobs.store import JobError, JobNotFound

EXAMPLES = Path(__file__).resolve().parents[1] / "static" / "examples"
DEFAULT_MAX_QUEUED = 20
#: the keys naming files, which a non-admin may only point at allowed places
PATH_KEYS = ("model.name", "data.train", "data.validation", "train.teacher")


def owner_of(actor: dict[str, Any] | None, owner: str | None = None) -> str:
    """The owner a new job gets: the actor's name (a non-admin cannot submit for others)."""
    if actor is None:
        return owner or "local"
    if actor.get("is_admin") and owner:
        return owner
    return actor["username"]


def can_see(job: dict[str, Any], actor: dict[str, Any] | None) -> bool:
    """May the actor see this job (or sweep: any row with an owner)."""
    return actor is None or bool(actor.get("is_admin")) or job["owner"] == actor["username"]


def check_sweep_visible(sweep: dict[str, Any], actor: dict[str, Any] | None) -> dict[str, Any]:
    """The sweep, or JobNotFound worded exactly like store.get_sweep's for a missing id."""
    if not can_see(sweep, actor):
        raise JobNotFound(f"no sweep {sweep['id']!r}; `ftstudio sweep ls` lists the sweeps "
                          "there are")
    return sweep


def check_visible(job: dict[str, Any], actor: dict[str, Any] | None) -> dict[str, Any]:
    """The job, or JobNotFound worded exactly like store.get_job's for a missing id."""
    if not can_see(job, actor):
        raise JobNotFound(f"no job {job['id']!r}; `ftstudio jobs ls` lists the jobs there are")
    return job


def list_owner(actor: dict[str, Any] | None, owner: str | None) -> str | None:
    """The owner filter list_jobs must use: a non-admin sees only their own."""
    if actor is None or actor.get("is_admin"):
        return owner
    return actor["username"]


def max_queued() -> int:
    return settings.max_queued_per_user(DEFAULT_MAX_QUEUED)


def remote_code_allowed() -> bool:
    return settings.allow_remote_code()


def check_queue_limit(db, actor: dict[str, Any] | None, adding: int = 1) -> None:
    """Refuse `adding` more queued jobs (a sweep's count them all) past
    FTSTUDIO_MAX_QUEUED_PER_USER, every queued job of the user counted, a sweep's included
    (admins are exempt)."""
    if actor is None or actor.get("is_admin"):
        return
    limit = max_queued()
    n = db.execute("SELECT COUNT(*) FROM jobs WHERE owner = ? AND status = 'queued'",
                   [actor["username"]]).fetchone()[0]
    if n + adding > limit:
        more = "" if adding == 1 else f"; this sweep would add {adding}"
        raise JobError(f"{actor['username']} already has {n} queued jobs (the limit is {limit}, "
                       f"FTSTUDIO_MAX_QUEUED_PER_USER){more}; wait for some to start, cancel "
                       "some, or sweep fewer points")


def config_problems(cfg: TrainConfig, actor: dict[str, Any] | None) -> list[Problem]:
    """What this actor may not run, each naming its key: remote code (FTSTUDIO_ALLOW_REMOTE_CODE
    and an admin), and for a non-admin any local file outside their own uploads, the bundled
    examples and the studio's models folder."""
    problems = []
    if cfg.model.trust_remote_code:
        if not remote_code_allowed():
            problems.append(Problem("model.trust_remote_code", "running a model's own Python "
                                    "code is off on this server (an admin sets "
                                    "FTSTUDIO_ALLOW_REMOTE_CODE=1 to allow it); set it to false"))
        elif actor is not None and not actor.get("is_admin"):
            problems.append(Problem("model.trust_remote_code", "only an admin may run a "
                                    "model's own Python code; set it to false or ask an admin"))
    if actor is not None and not actor.get("is_admin"):
        problems += _path_problems(cfg, actor["username"])
    return problems


def screened(cfg: TrainConfig, actor: dict[str, Any] | None, problems: list[Problem]
             ) -> list[Problem]:
    """`problems` (validate()'s) as this actor may see them: config_problems first, and for a
    non-admin no other problem of a model or data path they may not use, so a refusal says
    nothing about whether a file on the server exists or what type it is."""
    refused = config_problems(cfg, actor)
    hidden = {p.key for p in refused if p.key in PATH_KEYS}
    return refused + [p for p in problems if p.key not in hidden]


def _names_a_path(name: str) -> bool:
    """model.name names a file system path rather than a hub id (owner/name); the rule of
    engine.config's model check, whether or not the path exists."""
    path = Path(name).expanduser()
    return bool(name.strip()) and (path.is_absolute() or name.startswith((".", "~")) or
                                   path.exists() or name.count("/") != 1)


def _path_problems(cfg: TrainConfig, username: str) -> list[Problem]:
    home = store.home()
    problems = []
    name = str(cfg.model.name)
    if _names_a_path(name) and \
            not Path(name).expanduser().resolve().is_relative_to(home / "models"):
        problems.append(Problem("model.name", "a local model must be one of the studio's models "
                                f"(under {home / 'models'}) or a hub id"))
    teacher = str(cfg.train.teacher or "")
    if teacher and _names_a_path(teacher):
        path = Path(teacher).expanduser().resolve()
        job_merged = path.is_relative_to(home / "jobs") and path.parts[-2:] == ("exports",
                                                                                "merged")
        if not (path.is_relative_to(home / "models") or job_merged):
            problems.append(Problem("train.teacher", "a local teacher must be one of the "
                                    f"studio's models (under {home / 'models'}), a finished "
                                    "job's id, or a hub id"))
    from jobs.datasets import owned_paths

    mine = owned_paths(username)
    for key in ("train", "validation"):
        value = getattr(cfg.data, key)
        if not value:
            continue
        path = Path(value).resolve()
        if not (path.is_relative_to(EXAMPLES) or str(path) in mine):
            problems.append(Problem(f"data.{key}", "use a bundled example or a file you "
                                    "uploaded; other files on the server are not available"))
    if cfg.train.resume_from:
        problems.append(Problem("train.resume_from", "to continue a job use resume on it; "
                                "checkpoint folders cannot be named directly"))
    return problems
