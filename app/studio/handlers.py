"""The Train tab's handlers: plain functions from form values to what the page shows.

Each one calls engine/ or jobs/ and turns their errors into messages; none trains, tokenizes or
touches the database itself. Tested as plain functions in tests/app/test_studio_handlers.py.
"""

from __future__ import annotations

import hashlib
import shlex
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from app.studio import form, render
from engine.models import recipes
from engine.models.catalog import NEEDS_ASSUME, demo_dir, describe, list_models, studio_home
from engine.config import (DATA_SUFFIXES, ConfigError, Problem, TrainConfig, load_config,
                           to_yaml)

STATIC = Path(__file__).resolve().parents[2] / "static"
EXAMPLES = STATIC / "examples"
PREVIEW_RECORDS = 3


# --------------------------------------------------------------------------- defaults


def default_config() -> TrainConfig:
    """The form's starting point: the demo model on the bundled alpaca example, with the
    settings of static/examples/demo.yaml (it visibly learns in a minute or two on a CPU)."""
    try:
        cfg = load_config(EXAMPLES / "demo.yaml")
    except ConfigError:
        cfg = TrainConfig()
    cfg.model.name = str(demo_dir())
    cfg.data.train = str(EXAMPLES / "alpaca.json")
    cfg.output_dir = None
    return cfg


def model_choices() -> list[tuple[str, str]]:
    return [(c.label, c.name) for c in list_models()]


def example_choices() -> list[tuple[str, str]]:
    """The bundled example datasets: (label, absolute path)."""
    out = []
    for p in sorted(EXAMPLES.iterdir()) if EXAMPLES.is_dir() else []:
        if p.suffix in DATA_SUFFIXES:
            out.append((f"{p.stem} ({p.suffix[1:]})", str(p)))
    return out


# --------------------------------------------------------------------------- model


def model_card(name: str | None) -> str:
    if not name:
        return render.note("Pick a base model.", "warn")
    try:
        return render.model_card(describe(name))
    except Exception as exc:  # noqa: BLE001 - a broken folder should not break the page
        return render.note(f"Could not read {name}: {exc}", "bad")


def import_gguf_upload(path: str | None, actor: dict[str, Any] | None = None
                       ) -> tuple[str | None, str]:
    """Import an uploaded .gguf file as a base model by the rule `ftstudio models import`
    follows too (jobs.models.import_model: admins only with logins on, the same file again
    selects the model it made before, a taken name gets -2, -3 ...): (the folder, to select as
    model.name, or None; a note saying what happened)."""
    from engine.models.catalog import human_count
    from engine.models.gguf_import import GGUFImportError
    from jobs.models import ImportRefused, import_model

    if not path:
        return None, ""
    src = Path(path)
    try:
        done = import_model(src, actor=actor)
    except ImportRefused as exc:
        return None, render.note(str(exc), "bad")
    except (GGUFImportError, OSError, MemoryError) as exc:
        return None, render.note(str(exc).replace(str(src), src.name), "bad")
    if done.reused:
        return str(done.folder), render.note(
            f"{src.name} was imported before as {done.name}: selected it.", "good")
    m = done.imported
    return str(m.folder), render.note(
        f"Imported {src.name} as {m.name}: {m.model_type}, {human_count(m.params)} parameters, "
        f"dequantized from {m.quantization[0]} to float32 in {m.seconds:.0f} s. Its README.md "
        "notes that dequantized weights approximate the original model.", "good")


def install_reward_upload(path: str | None, actor: dict[str, Any] | None = None) -> str:
    """Install an uploaded reward file into FTSTUDIO_HOME/rewards (engine.training.rewards
    .install): a note naming the rewards it provides, or why not. Code that the workers run:
    with logins on, only admins may (like `ftstudio rewards add FILE.py` on the server)."""
    from engine.training.rewards import RewardError, install

    if not path:
        return ""
    if actor is not None and not actor.get("is_admin"):
        return render.note("Only an admin can install a reward function: it is code that runs "
                           "on the workers. Ask an admin, or run `ftstudio rewards add FILE.py` "
                           "on the server.", "bad")
    src = Path(path)
    try:
        names = install(src)
    except (RewardError, OSError) as exc:
        return render.note(str(exc).replace(str(src.parent) + "/", ""), "bad")
    return render.note(f"Installed {src.name}: {', '.join(names)}. Use one in the reward "
                       f"functions, e.g. [{{name: {names[0]}}}].", "good")


# --------------------------------------------------------------------------- data

_tokenizers: dict[str, Any] = {}
_tok_lock = threading.Lock()


def tokenizer_for(name: str):
    """The model's tokenizer (kept), or None when it does not load without a network."""
    with _tok_lock:
        if name in _tokenizers:
            return _tokenizers[name]
    from engine.models.catalog import tokenizer_if_available

    try:
        tok = tokenizer_if_available(name)
    except Exception:  # noqa: BLE001 - offline hub ids, broken folders: report words instead
        tok = None
    if tok is not None:   # failures are not kept: the folder may appear or be fixed
        with _tok_lock:
            _tokenizers[name] = tok
    return tok


def store_upload(path: str | None, owner: str | None = None,
                 actor: dict[str, Any] | None = None,
                 columns: dict[str, str] | None = None) -> str | None:
    """The uploaded file, checked (its columns renamed by `columns`, data.columns) and kept by
    jobs.datasets.store_upload as the actor's (else `owner`'s, default "local"); None for no
    file. A refused file raises DataError and leaves nothing behind."""
    from jobs import access, datasets

    return datasets.store_upload(path, access.owner_of(actor, owner), columns) if path \
        else None


def data_panel(values: dict[str, Any]) -> tuple[str, Any, list[list[tuple[str, str | None]]]]:
    """(report HTML, histogram frame, preview records) for the form's data settings."""
    from app.studio.jobview import frame
    from engine.data import DataError
    from jobs import api

    columns = {"length": "str", "start": "int64", "records": "int64"}
    cfg, _ = form.build_config(values)
    path = values.get("data.train")
    if not path or not Path(path).is_file():
        return render.note("Choose a bundled example or upload a .json, .jsonl, .csv or "
                           ".parquet file.", "info"), None, []
    if cfg.train.objective == "grpo":      # prompts and reward columns, not answers to learn
        return _prompt_report(cfg), None, []
    tok = tokenizer_for(cfg.model.name)
    try:
        rep = report_for(cfg)     # tokenized apart from the web process (jobs.apart)
    except (DataError, ConfigError, OSError) as exc:
        return render.note(str(exc), "bad"), None, []
    bins = rep.get("histogram") or []
    width = max((len(str(b - 1)) for _, b, _ in bins), default=1)
    # labels padded with leading spaces: the chart orders bars by label, so "  9–17" must sort
    # before " 18–26" and "108–116"
    hist = frame([{"length": f"{a:>{width}}–{b - 1}", "start": a, "records": n}
                  for a, b, n in bins], columns)
    records: list[list[tuple[str, str | None]]] = []
    if tok is not None and rep.get("used"):
        try:
            shown = api.preview_for(cfg, PREVIEW_RECORDS)   # apart, as the report
        except (DataError, ConfigError, ValueError) as exc:
            rep.setdefault("notes", []).append(f"preview unavailable: {exc}")
            shown = []
        records = [_preview_pieces(rec) for rec in shown]
    return render.data_report(rep), hist if len(hist) else None, records


def _preview_pieces(record: Any) -> list[tuple[str, str | None]]:
    """One previewed record as highlighted pieces (trained tokens marked); a preference pair
    shows its chosen answer, then its rejected one (marked as such), each with its prompt."""
    def marked(pieces, label: str) -> list[tuple[str, str | None]]:
        return [(text, label if loss else None) for text, loss in pieces]

    if isinstance(record, dict):
        return ([("✓ chosen\n", None)] + marked(record["chosen"], "trained")
                + [("\n\n✗ rejected\n", None)] + marked(record["rejected"], "rejected"))
    return marked(record, "trained")


# --------------------------------------------------------------------------- estimate

_device: tuple[float, Any] | None = None


def device():
    """The detected GPU or RAM, refreshed at most every 15 seconds."""
    global _device
    from engine.models.estimate import detect_device

    if _device is None or time.monotonic() - _device[0] > 15:
        _device = (time.monotonic(), detect_device())
    return _device[1]


def worker_gpus():
    """jobs.api.worker_devices: (GPUs a job can get, a Device for one) or None."""
    from jobs import api

    return api.worker_devices()


def estimate_panel(values: dict[str, Any], actor: Any = None) -> str:
    """The memory estimate, and the time per epoch when a finished run measured the speed;
    where the workers have GPUs, per GPU: fits on 1 GPU / needs N GPUs with FSDP / needs
    offload (engine.models.estimate.plan_for)."""
    from engine.models.estimate import estimate_for, plan_for
    from jobs import api

    from engine.models.recipes import lr_warning

    cfg, _ = form.build_config(values)
    timing = api.time_estimate(cfg, actor)
    try:   # the rate far from what fits the method and model: said where the numbers are
        far = lr_warning(cfg.train.lr, cfg.method.kind, cfg.model.name)
    except Exception:  # noqa: BLE001 - an unreadable config.json: no advice
        far = None
    warn = render.note(far[:1].upper() + far[1:] + ".", "warn") if far else ""
    gpus = worker_gpus()
    try:
        est = estimate_for(cfg, device=gpus[1] if gpus else device())
    except Exception as exc:  # noqa: BLE001 - odd config.json files: say so, keep going
        return render.estimate_card(None, f"No estimate: {exc}", timing=timing) + warn
    plan = None
    if gpus and est is not None:
        p = cfg.parallel
        plan = plan_for(est, p.gpus, cpu_offload=p.cpu_offload,
                        reshard=p.reshard_after_forward, max_gpus=gpus[0])
    return render.estimate_card(est, timing=timing, plan=plan) + warn


def _prompt_report(cfg: TrainConfig) -> str:
    """A GRPO data file as the form shows it: its prompt format, how many prompts train and are
    held out, and the columns its reward functions can read (engine.data.prompts)."""
    from engine.data import DataError
    from engine.data.prompts import split_prompts

    try:
        train, held, source = split_prompts(cfg)
    except (DataError, ValueError, OSError) as exc:
        return render.note(str(exc), "bad")
    columns = sorted(train[0].columns) if train else []
    first = train[0].shown if train else ""
    return (render.tiles([("Format", "prompts (grpo)", "good"),
                          ("Train / held out", f"{len(train)} / {len(held)}", ""),
                          ("Reward columns", ", ".join(columns) or "none", "")])
            + render.note(f"First prompt: {first[:200]}. Held out: {source}. Every column "
                          "reaches the reward functions by name.", "info"))


def report_for(cfg: TrainConfig, tokenizer: Any = None) -> dict[str, Any]:
    """The data report of cfg.data.train (jobs.api.report_for: made once per file, model and
    settings, and kept), counted with the model's tokenizer when none is given: then made in
    jobs.apart's child process, so tokenizing a big upload never holds up other requests."""
    from jobs import api

    if tokenizer is None:
        return api.report_for(cfg, apart=True)
    return api.report_for(cfg, tokenizer)


# --------------------------------------------------------------------------- defaults

#: the fields that take the model's defaults (engine.models.recipes), in the order the card lists them
DEFAULT_KEYS = recipes.KEYS
#: where a field's value came from when it is not the suggestion
KEPT_TEXT = {"typed": "kept your value", "yaml": "kept the value from the YAML file",
             "clone": "kept the value from the cloned job"}


def new_defaults_state() -> dict[str, Any]:
    """The Train form's defaults state (a gr.State per browser session): `edited` maps each
    DEFAULT_KEYS field the user set to how ("typed", "yaml", "clone"); those are never
    overwritten. `suggested` holds the latest suggestions, {key: [value, reason]}."""
    return {"edited": {}, "suggested": {}}


def suggestions(values: dict[str, Any]) -> dict[str, recipes.Suggestion]:
    """engine.models.recipes.suggest for the form's model, method and data file (its report is the
    data panel's, made here when it is not there yet; none when the file does not read)."""
    from engine.models.catalog import read_config

    cfg, _ = form.build_config(values)
    name = cfg.model.name
    try:
        model_config = read_config(name) or {}
    except Exception:  # noqa: BLE001 - an unreadable config.json: no position limit
        model_config = {}
    report = None
    if not recipes.is_demo(name, model_config) and cfg.data.train and \
            Path(cfg.data.train).is_file():
        try:
            report = report_for(cfg)
        except Exception:  # noqa: BLE001 - the data panel shows the error; no lengths here
            report = None
    return recipes.suggest(name, cfg.method.kind, report, model_config=model_config,
                           num_virtual_tokens=cfg.method.num_virtual_tokens)


def apply_defaults(values: dict[str, Any], state: dict[str, Any] | None
                   ) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The model's defaults for the fields the user has not edited: (the values to set,
    {key: value}, only those that change; the new state; the card HTML). Called when the
    user picks a model, a method or a data file."""
    state = state or new_defaults_state()
    edited = dict(state.get("edited") or {})
    found = suggestions(values)
    changes = {k: s.value for k, s in found.items()
               if k not in edited and not _same(values.get(k), s.value)}
    new_state = {"edited": edited,
                 "suggested": {k: [s.value, s.reason] for k, s in found.items()}}
    return changes, new_state, defaults_card(new_state, {**values, **changes})


def mark_edited(state: dict[str, Any] | None, key: str, how: str = "typed"
                ) -> dict[str, Any]:
    """The state with `key` set by the user (the field's .input event: a person typed)."""
    state = state or new_defaults_state()
    return {**state, "edited": {**(state.get("edited") or {}), key: how}}


def mark_loaded(state: dict[str, Any] | None, how: str) -> dict[str, Any]:
    """Every default field set by a loaded YAML file ("yaml") or a cloned job ("clone"): the
    loaded values count as the user's. The old suggestions no longer describe the form."""
    return {"edited": {k: how for k in DEFAULT_KEYS}, "suggested": {}}


def defaults_card(state: dict[str, Any] | None, values: dict[str, Any]) -> str:
    """Where each default came from, and which fields kept the user's value."""
    state = state or new_defaults_state()
    edited, suggested = state.get("edited") or {}, state.get("suggested") or {}
    rows = []
    for key in DEFAULT_KEYS:
        now = recipes.format_value(key, values.get(key))
        if key in suggested:
            value, reason = suggested[key]
            why = _why(key, value, reason)
        else:
            value, why = None, ""
        if key in edited:
            kept = KEPT_TEXT.get(edited[key], KEPT_TEXT["typed"])
            hint = f" (suggested {recipes.format_value(key, value)}: {why})" if why else ""
            rows.append((form.label_for(key), now, f"{kept}{hint}", True))
        elif why:
            rows.append((form.label_for(key), recipes.format_value(key, value), why, False))
    return render.defaults_card(rows)


def _why(key: str, value: Any, reason: str) -> str:
    """A reason without its leading "lr 2e-4: " (the card shows the value beside it)."""
    name = "lr" if key == "train.lr" else key.rsplit(".", 1)[-1]
    head = f"{name} {recipes.format_value(key, value)}: "
    return reason[len(head):] if reason.startswith(head) else reason


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(b)))
    return a == b


# --------------------------------------------------------------------------- YAML and command


def command_preview(values: dict[str, Any], name: str = "") -> str:
    """The same run from a terminal: the config with --set, then train (or submit) it."""
    cfg, _ = form.build_config(values)
    sets = " \\\n    ".join(f"--set {shlex.quote(o)}" for o in form.overrides(cfg))
    run = _slug(name) or "my-run"
    return ("# the same settings as a YAML file (or use Save YAML above)\n"
            f"ftstudio config {sets} > {run}.yaml\n\n"
            "# train in this terminal with a progress bar\n"
            f"ftstudio train {run}.yaml --set output_dir=runs/{run}\n\n"
            "# or queue it for the studio's workers\n"
            f"ftstudio submit {run}.yaml\n")


def yaml_text(values: dict[str, Any]) -> str:
    cfg, _ = form.build_config(values)
    return to_yaml(cfg)


def save_yaml(values: dict[str, Any], name: str = "") -> str:
    """Write the settings to a YAML file to download; returns its path."""
    text = yaml_text(values)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    out = Path(tempfile.gettempdir()) / "ftstudio-yaml" / digest / \
        f"{_slug(name) or 'ftstudio-config'}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return str(out)


def load_yaml(path: str) -> tuple[list[Any] | None, list[Problem]]:
    """Form values from a YAML (or JSON) config file, or the problems reading it."""
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        return None, exc.problems
    cfg.output_dir = None
    cfg.train.resume_from = None
    return form.config_to_form(cfg), []


def _slug(name: str | None) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in (name or "").strip())[:60]


# --------------------------------------------------------------------------- start


def start_job(values: dict[str, Any], name: str = "", owner: str = "local",
              actor: dict[str, Any] | None = None) -> tuple[Any | None, list[Problem]]:
    """Validate the form and queue the job: (job id, []) or (None, every problem; for a
    non-admin, the access rules' first, saying nothing of files they may not use)."""
    from jobs import access, api

    cfg, problems = form.check_form(values)
    if problems:
        return None, access.screened(cfg, actor, problems) if actor is not None else problems

    try:
        job = api.submit(cfg, owner=None if actor is not None else owner or "local",
                         name=(name or "").strip() or None,
                         actor=actor)   # with an actor the job is theirs (jobs.access)
    except ConfigError as exc:
        return None, exc.problems
    return job["id"], []
