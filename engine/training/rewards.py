"""Reward functions for GRPO (train.rewards): the built-ins, the admin-installed custom ones, and
calling them safely.

Use from Python:
    from engine.training.rewards import resolve, score, BUILTINS, installed
    funcs = resolve([{"name": "numeric_match", "args": {"column": "answer"}},
                     {"name": "regex", "weight": 0.5, "args": {"pattern": r"^\\d+$"}}])
    table = score(funcs, prompts, completions, columns, completion_ids=ids, wheres=wheres)
    table.per_func            # [completions, functions] float tensor (NaN where a function said None)
    table.total               # [completions]: the weighted sum (NaN where every function said None)

Every function has TRL's signature, `f(prompts, completions, **columns) -> list[float | None]`:
prompts and completions are lists (a completion is the generated text, or for conversational
prompts TRL's `[{"role": "assistant", "content": text}]`), `columns` holds every other column of
the records by name (one value per completion) plus `completion_ids` (token ids). None means "not
applicable to this completion" (TRL: NaN, left out of the means). So a reward function written
for TRL's GRPOTrainer runs here unchanged.

Built-ins (each takes its arguments from train.rewards[i].args):
    exact_match   1.0 when the completion equals the record's `column` (default "answer") after
                  the evaluation's normalisation (engine.evaluation.metrics.normalize_answer:
                  NFKC, casefold, punctuation dropped, whitespace collapsed), else 0.0.
                  {"name": "exact_match", "args": {"column": "answer"}}
    contains      1.0 when the completion contains `text` (fixed) or the record's `column`,
                  case-insensitively unless case_sensitive: true.
                  {"name": "contains", "args": {"text": "Paris"}}
    regex         1.0 when `pattern` matches (search; `full: true`: the whole completion,
                  stripped, must match), else 0.0: a format reward.
                  {"name": "regex", "args": {"pattern": "^<answer>.*</answer>$", "full": true}}
    json_valid    1.0 when the completion (a ```json fence around it allowed) parses as JSON, and
                  with `schema` (an object) validates against that JSON Schema; needs the
                  jsonschema package for a schema (refused at the door without it).
                  {"name": "json_valid", "args": {"schema": {"type": "object"}}}
    numeric_match 1.0 when the completion's answer number equals the record's `column` (default
                  "answer") within `tolerance` (default 1e-6, relative to the reference's size
                  when above 1): the completion's answer is its last \\boxed{...} if it has one,
                  else its last number; the reference's is read the same way ("#### 42" works).
                  {"name": "numeric_match", "args": {"column": "answer"}}
    length_penalty  0 up to `target` completion tokens (default 128), then -(tokens - target) /
                  target: pushes answers to stay short.
                  {"name": "length_penalty", "weight": 0.2, "args": {"target": 64}}

Custom functions live in FTSTUDIO_HOME/rewards/*.py, put there by an admin (`ftstudio rewards add
FILE.py`, or the studio's admin upload): they are code that runs on the workers. Each public
function of a file is a reward named "FILE.FUNCTION" (e.g. "math_rewards.correctness"); args
are passed as keyword arguments after the columns.

A function that raises, returns the wrong number of values or a value that is not a number
(or None) stops the run with a RewardError naming the function, the record (its file line) and
the traceback's last line; the job fails, the worker goes on.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import re
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

#: a custom reward's name: FILE.FUNCTION (both Python identifiers)
CUSTOM_NAME = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)$")


class RewardError(ValueError):
    """A reward function is unknown, misconfigured or misbehaved; the message names it."""


def rewards_dir() -> Path:
    """FTSTUDIO_HOME/rewards: where admins install custom reward functions."""
    from engine import settings

    return settings.home() / "rewards"


# --------------------------------------------------------------------------- helpers


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or TRL's conversational [{"role", "content"}]."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    return str(completion)


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")


def _boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (braces balanced), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def answer_number(text: Any) -> float | None:
    """The answer number of a text: in its last \\boxed{}, else its last number (commas as
    thousands separators dropped); None when there is none."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    text = str(text if text is not None else "")
    boxed = _boxed(text)
    found = _NUMBER.findall(boxed if boxed is not None else text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def _strip_fence(text: str) -> str:
    text = text.strip()
    m = re.match(r"^```(?:json)?\s*\n?(.*?)\n?```$", text, re.S)
    return m.group(1) if m else text


def _column(columns: dict[str, list], name: str, func: str) -> list:
    if name not in columns:
        have = ", ".join(sorted(k for k in columns if k != "completion_ids")) or "none"
        raise RewardError(f"reward {func}: the records have no column {name!r} (they have: "
                          f"{have}); set its args.column to one of them")
    return columns[name]


# --------------------------------------------------------------------------- built-ins


def exact_match(prompts, completions, *, column: str = "answer", **columns) -> list[float]:
    from engine.evaluation.metrics import normalize_answer

    refs = _column(columns, column, "exact_match")
    return [float(normalize_answer(completion_text(c)) == normalize_answer(str(r)))
            for c, r in zip(completions, refs)]


def contains(prompts, completions, *, text: str | None = None, column: str | None = None,
             case_sensitive: bool = False, **columns) -> list[float]:
    refs = [text] * len(completions) if text is not None else \
        _column(columns, column or "answer", "contains")
    out = []
    for c, r in zip(completions, refs):
        got, want = completion_text(c), str(r)
        if not case_sensitive:
            got, want = got.casefold(), want.casefold()
        out.append(float(want in got))
    return out


def regex(prompts, completions, *, pattern: str, full: bool = False, **columns) -> list[float]:
    compiled = re.compile(pattern, re.S)
    if full:
        return [float(compiled.fullmatch(completion_text(c).strip()) is not None)
                for c in completions]
    return [float(compiled.search(completion_text(c)) is not None) for c in completions]


def json_valid(prompts, completions, *, schema: dict | None = None, **columns) -> list[float]:
    validator = None
    if schema is not None:
        import jsonschema

        validator = jsonschema.validators.validator_for(schema)(schema)
    out = []
    for c in completions:
        try:
            value = json.loads(_strip_fence(completion_text(c)))
        except (json.JSONDecodeError, RecursionError):
            out.append(0.0)
            continue
        out.append(float(validator is None or validator.is_valid(value)))
    return out


def numeric_match(prompts, completions, *, column: str = "answer", tolerance: float = 1e-6,
                  **columns) -> list[float]:
    refs = _column(columns, column, "numeric_match")
    out = []
    for c, r in zip(completions, refs):
        want, got = answer_number(r), answer_number(completion_text(c))
        out.append(float(want is not None and got is not None and
                         abs(got - want) <= tolerance * max(1.0, abs(want))))
    return out


def length_penalty(prompts, completions, *, target: int = 128, completion_ids=None,
                   **columns) -> list[float]:
    lengths = [len(ids) for ids in completion_ids] if completion_ids is not None else \
        [len(completion_text(c).split()) for c in completions]
    return [-max(0, n - target) / target for n in lengths]


@dataclass(frozen=True)
class Builtin:
    func: Callable
    args: dict[str, type | tuple]        # the arguments it takes and their types
    required: tuple[str, ...] = ()
    example: dict[str, Any] = field(default_factory=dict)


BUILTINS: dict[str, Builtin] = {
    "exact_match": Builtin(exact_match, {"column": str}, example={"column": "answer"}),
    "contains": Builtin(contains, {"text": str, "column": str, "case_sensitive": bool},
                        example={"text": "Paris"}),
    "regex": Builtin(regex, {"pattern": str, "full": bool}, ("pattern",),
                     {"pattern": r"^\d+$", "full": True}),
    "json_valid": Builtin(json_valid, {"schema": dict}, example={}),
    "numeric_match": Builtin(numeric_match, {"column": str, "tolerance": (int, float)},
                             example={"column": "answer"}),
    "length_penalty": Builtin(length_penalty, {"target": int}, example={"target": 128}),
}


# --------------------------------------------------------------------------- custom functions


def installed(folder: Path | None = None) -> dict[str, str]:
    """{"FILE.FUNCTION": first line of its docstring} of every custom reward in the rewards
    folder, read without importing (the AST): listing them runs no code."""
    import ast

    folder = Path(folder or rewards_dir())
    found: dict[str, str] = {}
    for path in sorted(folder.glob("*.py")) if folder.is_dir() else []:
        if not CUSTOM_NAME.match(f"{path.stem}.x"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    not node.name.startswith("_"):
                doc = (ast.get_docstring(node) or "").strip().splitlines()
                found[f"{path.stem}.{node.name}"] = doc[0] if doc else ""
    return found


def check_file(path: Path) -> list[str]:
    """The reward names a file would install (FILE.FUNCTION), or a RewardError saying why it
    cannot be installed (bad name, not Python, no public function)."""
    import ast

    path = Path(path)
    if path.suffix != ".py" or not CUSTOM_NAME.match(f"{path.stem}.x"):
        raise RewardError(f"{path.name}: a reward file must be NAME.py with NAME a Python "
                          "identifier (letters, digits, _), e.g. math_rewards.py")
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as exc:
        raise RewardError(f"{path.name} line {exc.lineno}: not valid Python ({exc.msg})")
    names = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
             and not n.name.startswith("_")]
    if not names:
        raise RewardError(f"{path.name} defines no public function; a reward is "
                          "def name(prompts, completions, **kwargs) -> list[float]")
    return [f"{path.stem}.{n}" for n in names]


def install(path: str | Path, folder: Path | None = None) -> list[str]:
    """Copy a reward file into FTSTUDIO_HOME/rewards (replacing one of the same name); returns
    the names it provides. Admins only: the caller checks."""
    import os
    import shutil
    import uuid

    path = Path(path)
    if not path.is_file():
        raise RewardError(f"{path} does not exist")
    names = check_file(path)
    folder = Path(folder or rewards_dir())
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{path.name}.{uuid.uuid4().hex}.tmp"
    shutil.copyfile(path, tmp)
    os.replace(tmp, folder / path.name)
    return names


def load_custom(name: str, folder: Path | None = None) -> Callable:
    """The function FILE.FUNCTION from FTSTUDIO_HOME/rewards/FILE.py (imported once)."""
    m = CUSTOM_NAME.match(name)
    if not m:
        raise RewardError(f"unknown reward {name!r}: built-ins are {', '.join(BUILTINS)}; "
                          "custom ones are named FILE.FUNCTION (see `ftstudio rewards ls`)")
    stem, func = m.groups()
    folder = Path(folder or rewards_dir())
    path = folder / f"{stem}.py"
    if not path.is_file():
        have = ", ".join(installed(folder)) or "none installed"
        raise RewardError(f"unknown reward {name!r}: no {path} (installed: {have}); an admin "
                          f"installs it with `ftstudio rewards add {stem}.py`")
    key = f"ftstudio_rewards_{stem}_{path.stat().st_mtime_ns}"
    module = sys.modules.get(key)
    if module is None:
        spec = importlib.util.spec_from_file_location(key, path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - the admin's file: say what broke
            raise RewardError(f"reward file {path} failed to import: {_last_line(exc)}") from None
        sys.modules[key] = module
    target = getattr(module, func, None)
    if not callable(target):
        have = ", ".join(n for n in installed(folder) if n.startswith(stem + ".")) or "none"
        raise RewardError(f"unknown reward {name!r}: {path.name} has no function {func} "
                          f"(it has: {have})")
    return target


# --------------------------------------------------------------------------- resolving the config


@dataclass
class RewardFunc:
    name: str                    # as configured: a built-in, or FILE.FUNCTION
    func: Callable
    weight: float = 1.0
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The metric name: the function's name with dots as underscores."""
        return self.name.replace(".", "_")


def spec_problems(specs: Any, *, check_custom: bool = True) -> list[str]:
    """Every problem with a train.rewards value, each a sentence naming the entry (for
    engine.config.validate)."""
    if not isinstance(specs, list):
        return [f"must be a list of reward functions, got {type(specs).__name__}"]
    problems = []
    for i, spec in enumerate(specs):
        where = f"[{i}]"
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            problems.append(f"{where}: each entry needs a name, e.g. {{name: exact_match, "
                            "weight: 1.0, args: {column: answer}}")
            continue
        name, where = spec["name"], f"[{i}] {spec['name']}"
        extra = set(spec) - {"name", "weight", "args"}
        if extra:
            problems.append(f"{where}: unknown key(s) {', '.join(sorted(extra))}; an entry has "
                            "name, weight and args")
        weight = spec.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or \
                not math.isfinite(weight):
            problems.append(f"{where}: weight {weight!r} must be a number")
        args = spec.get("args") or {}
        if not isinstance(args, dict):
            problems.append(f"{where}: args must be a mapping of argument names to values")
            continue
        if name in BUILTINS:
            b = BUILTINS[name]
            for key, value in args.items():
                if key not in b.args:
                    problems.append(f"{where}: unknown argument {key!r}; {name} takes "
                                    f"{', '.join(b.args) or 'no arguments'}")
                elif not isinstance(value, b.args[key]) or (isinstance(value, bool) and
                                                            b.args[key] is not bool):
                    problems.append(f"{where}: argument {key}={value!r} has the wrong type")
            for key in b.required:
                if key not in args:
                    problems.append(f"{where}: needs args.{key}, e.g. "
                                    f"{json.dumps(b.example)}")
            if name == "regex" and isinstance(args.get("pattern"), str):
                try:
                    re.compile(args["pattern"])
                except re.error as exc:
                    problems.append(f"{where}: pattern is not a valid regular expression "
                                    f"({exc})")
            if name == "json_valid" and args.get("schema") is not None:
                if importlib.util.find_spec("jsonschema") is None:
                    problems.append(f"{where}: a schema needs the jsonschema package, which is "
                                    "not installed; pip install jsonschema, or leave the schema "
                                    "out to check only that the answer is valid JSON")
                else:
                    import jsonschema

                    try:
                        jsonschema.validators.validator_for(args["schema"]).check_schema(
                            args["schema"])
                    except jsonschema.SchemaError as exc:
                        problems.append(f"{where}: schema is not a valid JSON Schema "
                                        f"({exc.message})")
            if name == "length_penalty" and isinstance(args.get("target"), int) and \
                    args["target"] < 1:
                problems.append(f"{where}: target must be at least 1 token")
        elif CUSTOM_NAME.match(name):
            if check_custom and name not in installed():
                have = ", ".join(installed()) or "none installed"
                problems.append(f"{where}: no such custom reward in {rewards_dir()} "
                                f"(installed: {have}); an admin installs one with `ftstudio "
                                "rewards add FILE.py`")
        else:
            problems.append(f"{where}: unknown reward; built-ins are {', '.join(BUILTINS)}, "
                            "custom ones FILE.FUNCTION (`ftstudio rewards ls`)")
    names = [s.get("name") for s in specs if isinstance(s, dict)]
    twice = sorted({n for n in names if names.count(n) > 1 and isinstance(n, str)})
    if twice:
        problems.append(f"names {', '.join(twice)} more than once; give each function once "
                        "(its args can differ only by naming another function)")
    return problems


def resolve(specs: list[dict[str, Any]], folder: Path | None = None) -> list[RewardFunc]:
    """The configured reward functions, loaded (custom ones imported now)."""
    problems = spec_problems(specs, check_custom=False)
    if problems:
        raise RewardError("train.rewards: " + "; ".join(problems))
    out = []
    for spec in specs:
        name = spec["name"]
        func = BUILTINS[name].func if name in BUILTINS else load_custom(name, folder)
        out.append(RewardFunc(name, func, float(spec.get("weight", 1.0)),
                              dict(spec.get("args") or {})))
    return out


def needed_columns(funcs: list[RewardFunc]) -> dict[str, str]:
    """{column: reward name} of the columns the built-ins read (checked against the data
    before training starts)."""
    need = {}
    for f in funcs:
        if f.name in ("exact_match", "numeric_match"):
            need[f.args.get("column", "answer")] = f.name
        elif f.name == "contains" and "text" not in f.args:
            need[f.args.get("column", "answer")] = f.name
    return need


# --------------------------------------------------------------------------- scoring


@dataclass
class Scores:
    per_func: Any                # torch.float32 [completions, functions], NaN = None
    total: Any                   # [completions]: weighted nansum, NaN where all were None
    names: list[str]


def _last_line(exc: BaseException) -> str:
    lines = [ln for ln in traceback.format_exception_only(type(exc), exc) if ln.strip()]
    return lines[-1].strip() if lines else type(exc).__name__


def _call(f: RewardFunc, prompts, completions, columns, wheres) -> list:
    try:
        values = f.func(prompts=prompts, completions=completions, **columns, **f.args)
    except RewardError:
        raise
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - find the record, fail naming it
        where = _failing_record(f, prompts, completions, columns, wheres)
        raise RewardError(f"reward function {f.name} raised on {where}: {_last_line(exc)}"
                          ) from None
    if inspect.iscoroutine(values):
        values.close()
        raise RewardError(f"reward function {f.name} is async; write it as a plain function")
    try:
        values = list(values)
    except TypeError:
        raise RewardError(f"reward function {f.name} returned {type(values).__name__}, not a "
                          f"list of {len(completions)} numbers") from None
    if len(values) != len(completions):
        raise RewardError(f"reward function {f.name} returned {len(values)} values for "
                          f"{len(completions)} completions (records {_span(wheres)}); return "
                          "one number (or None) per completion")
    for v, where in zip(values, wheres):
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            try:       # numpy and torch scalars are numbers too
                ok = not isinstance(v, (str, bytes, bool)) and math.isfinite(float(v))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise RewardError(f"reward function {f.name} returned {v!r} for {where}; "
                                  "return a finite number, or None when it does not apply")
    return [None if v is None else float(v) for v in values]


def _span(wheres: list[str]) -> str:
    uniq = list(dict.fromkeys(wheres))
    return ", ".join(uniq[:4]) + (f" and {len(uniq) - 4} more" if len(uniq) > 4 else "")


def _failing_record(f, prompts, completions, columns, wheres) -> str:
    """The first record whose completion alone makes the function raise (or all of them)."""
    for i in range(len(completions)):
        one = {k: v[i:i + 1] if isinstance(v, list) else v for k, v in columns.items()}
        try:
            f.func(prompts=prompts[i:i + 1], completions=completions[i:i + 1], **one, **f.args)
        except (Exception, SystemExit):  # noqa: BLE001
            return wheres[i]
    return f"the batch of records {_span(wheres)}"


def score(funcs: list[RewardFunc], prompts: list, completions: list,
          columns: dict[str, list], *, completion_ids: list[list[int]] | None = None,
          wheres: list[str] | None = None) -> Scores:
    """Every function over every completion (one call per function, as TRL makes it)."""
    import torch

    n = len(completions)
    wheres = wheres or [f"completion {i}" for i in range(n)]
    columns = dict(columns)
    if completion_ids is not None:
        columns["completion_ids"] = completion_ids
    per = torch.full((n, len(funcs)), float("nan"), dtype=torch.float32)
    for j, f in enumerate(funcs):
        values = _call(f, prompts, completions, columns, wheres)
        per[:, j] = torch.tensor([float("nan") if v is None else v for v in values],
                                 dtype=torch.float32)
    weights = torch.tensor([f.weight for f in funcs], dtype=torch.float32)
    total = (per * weights).nansum(dim=1)
    total[torch.isnan(per).all(dim=1)] = float("nan")
    return Scores(per, total, [f.label for f in funcs])
