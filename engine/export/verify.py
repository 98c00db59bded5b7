"""Verify an export: load the files just written in the runtime a user would load them with
(engine/export/runtimes.py) and compare them with the tuned model as trained (base + adapter, as
the engine loads it) on up to VERIFY_PROMPTS held-out prompts of the run's validation split (the
bundled example chats when it has none).

Use from Python:
    from engine.export import export, verification_line
    result = export("studio-data/jobs/7", "gguf-q8_0")      # verifies unless verify=False
    print(verification_line(result.verification))
    # verified: 16/16 same answers, logits r=0.9999, template and stop tokens match

What is compared, in each runtime (the checks are Check records, engine/export/verify_files.py):
  tokenization  the export's token ids equal training's on every prompt (BOS included), every
                reference answer and every answer the tuned model gave
  template      the chat template the export carries (tokenizer_config.json, the GGUF's
                tokenizer.chat_template, the Modelfile's TEMPLATE + SYSTEM) renders the prompts
                (and whole chats) exactly as training's template did
  stops         (GGUF) the Modelfile's PARAMETER stop values include the end-of-turn token
  tying         an lm_head tied to the embeddings in the tuned model is not loaded untied with
                other weights
  logits        next-token logits at every prompt position (the prompts as training tokenized
                them): correlation r, max |difference|, top-1 agreement, within TOLERANCES
  answers       greedy answers (at most VERIFY_MAX_NEW_TOKENS new tokens): how many are the
                same text, ending the same way (stop token at the same place, or both cut off)

The record (verify.json in the export's folder, and on the export job) has a status —
"verified", "unverified" (a check failed: the files stay downloadable) or "skipped" — the line
shown on the job page, every check, the tolerance used and the seconds each part took.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.evaluation.evaluate import EvalExample, end_of_turn_id, to_example
from engine.export.run import Log, Run
from engine.export.verify_files import PROBES, Check, check_modelfile, check_template

#: the most held-out prompts an export is checked on (capped so a 7B export's check stays
#: within a minute on a GPU worker: see docs/exports.md, "Verified exports")
VERIFY_PROMPTS = 16
#: the most new tokens of each greedy answer compared
VERIFY_MAX_NEW_TOKENS = 32
VERSION = 1


@dataclass(frozen=True)
class Tolerance:
    """How close an export must come to the tuned model. The numbers are set from measurements
    on the test models (docs/exports.md, "Verified exports"): each bound sits below the worst value a
    good export gave, and far above what the planted faults give."""

    min_r: float            # Pearson correlation of all next-token logits
    max_abs: float | None   # largest |logit difference| (None: not bounded, quantized formats)
    min_top1: float         # share of positions whose most likely next token is the same
    min_same: float         # share of greedy answers that are identical and end the same way
    min_stop: float         # share of answers that stop the same way (same place, or both run on)
    why: str


TOLERANCES: dict[str, Tolerance] = {
    "float32": Tolerance(0.99999, 1e-3, 0.999, 1.0, 1.0,
                         "float32 weights: the same numbers, summed in another order "
                         "(measured: max |difference| 6e-6)"),
    "16-bit": Tolerance(0.9999, 0.05, 0.98, 0.75, 0.9,
                        "16-bit weights round each value to ~3 significant digits (measured: "
                        "r 1.0000, max |difference| <= 0.008, top-1 >= 99.8%, 10-12/12 answers)"),
    "8-bit": Tolerance(0.999, None, 0.95, 0.4, 0.9,
                       "8-bit blocks (q8_0, LLM.int8) (measured: r >= 0.9997, top-1 >= 97.9%, "
                       "6-12/12 answers of 32 tokens)"),
    "4-bit": Tolerance(0.99, None, 0.8, 0.0, 0.75,
                       "4-bit blocks (q4_0, NF4) (measured: r >= 0.995, top-1 >= 87%; 32-token "
                       "answers part after the first flipped token, so they are counted, not "
                       "required)"),
}


def tolerance_for(fmt: str, run: Run) -> tuple[str, Tolerance]:
    """The tolerance class of an export format (merged: by the dtype it is saved in)."""
    if fmt in ("gguf-q4_0", "bnb4"):
        kind = "4-bit"
    elif fmt in ("gguf-q8_0", "bnb8"):
        kind = "8-bit"
    elif fmt == "gguf-f16":
        kind = "16-bit"
    elif fmt == "merged":
        from engine.export.merged import saved_dtype

        kind = "float32" if str(saved_dtype(run)) == "torch.float32" else "16-bit"
    else:
        kind = "float32"
    return kind, TOLERANCES[kind]


# --------------------------------------------------------------------------- the check


def verify_export(run: Run, fmt: str, out: Path, log: Log = print, *,
                  prompts: int = VERIFY_PROMPTS,
                  max_new_tokens: int = VERIFY_MAX_NEW_TOKENS) -> dict[str, Any]:
    """Check the export of run as fmt in out against the tuned model; the record (also written
    to out/verify.json)."""
    from engine.export.runtimes import hf_runtime, load_runtimes

    started = time.time()
    seconds: dict[str, float] = {}
    kind, tol = tolerance_for(fmt, run)
    ref = _reference(run)
    tokenizer = ref.model_tokenizer
    examples, source = held_out(run, tokenizer, prompts, log)
    texts = [_render(tokenizer, e) for e in examples]
    log(f"verify {fmt}: {len(examples)} prompts of the {source}, the tuned model answers "
        f"(at most {max_new_tokens} new tokens)")
    reference = hf_runtime("tuned model", ref.model, tokenizer, "training")
    want = _Outputs.of(reference, texts, max_new_tokens)
    want.tied = reference.tied
    del reference, ref
    _free()
    seconds["tuned"] = round(time.time() - started, 2)

    def train_render(messages, generation_prompt):
        return tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=generation_prompt)

    chats = [e.prompt for e in examples if e.kind == "messages"] + PROBES
    chats += [e.prompt + [{"role": "assistant", "content": e.reference}]
              for e in examples if e.kind == "messages"][:4]
    checks: list[Check] = []
    runtimes = []
    t0 = time.time()
    for runtime in load_runtimes(run, fmt, out, log):
        runtimes.append(runtime.name)
        log(f"verify {fmt}: loaded in {runtime.name}, comparing")
        checks += compare(runtime, want, tokenizer, texts, tol, train_render, chats,
                          max_new_tokens)
        del runtime
        _free()
    if fmt.startswith("gguf-") and (out / "Modelfile").is_file():
        eot = _end_of_turn(tokenizer)
        checks += check_modelfile((out / "Modelfile").read_text(encoding="utf-8"), train_render,
                                  chats, eot)
    seconds["export"] = round(time.time() - t0, 2)
    seconds["total"] = round(time.time() - started, 2)
    record = {"version": VERSION, "format": fmt, "status": "verified" if all(
        c.ok for c in checks) else "unverified", "runtimes": runtimes, "n": len(examples),
        "source": source, "max_new_tokens": max_new_tokens, "tolerance": {
            "class": kind, **asdict(tol)}, "seconds": seconds,
        "checks": [c.to_dict() for c in checks]}
    record["line"] = verification_line(record)
    write_record(record, out)
    log(f"verify {fmt}: {record['line']} ({seconds['total']:.1f}s)")
    return record


def skipped_record(fmt: str, out: Path, why: str = "--no-verify") -> dict[str, Any]:
    record = {"version": VERSION, "format": fmt, "status": "skipped", "why": why, "checks": []}
    record["line"] = verification_line(record)
    write_record(record, out)
    return record


def error_record(fmt: str, out: Path, exc: BaseException) -> dict[str, Any]:
    """The record of a verification that could not run (the export itself stands)."""
    record = {"version": VERSION, "format": fmt, "status": "unverified", "checks": [
        Check("load", "verification", False, f"the check could not run: "
              f"{type(exc).__name__}: {exc}").to_dict()]}
    record["line"] = verification_line(record)
    write_record(record, out)
    return record


def write_record(record: dict[str, Any], out: Path) -> Path:
    path = Path(out) / "verify.json"
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False), encoding="utf-8")
    return path


def verification_line(record: dict[str, Any] | None) -> str:
    """One line for people: "verified: 16/16 same answers, logits r=0.9999, template and stop
    tokens match", "unverified: <what differed first>", or why it was not verified."""
    if not record:
        return "not verified"
    if record.get("status") == "skipped":
        return f"not verified ({record.get('why') or 'skipped'})"
    checks = record.get("checks") or []
    failed = [c for c in checks if not c["ok"]]
    several = len(set(c["runtime"] for c in checks)) > 1
    if failed:
        c = failed[0]
        where = f"{c['runtime']}: " if several else ""
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        return f"unverified: {where}{c['name']}: {c['detail']}{more}"
    answers = [c["numbers"] for c in checks if c["name"] == "answers"]
    logits = [c["numbers"] for c in checks if c["name"] == "logits"]
    parts = []
    if answers:
        worst = min(answers, key=lambda a: a["same"] / max(1, a["n"]))
        parts.append(f"{worst['same']}/{worst['n']} same answers")
    if logits:
        parts.append(f"logits r={_r(min(n['r'] for n in logits))}")
    names = {c["name"] for c in checks}
    matched = [w for w in ("template", "stops") if w in names]
    parts.append(" and ".join({"template": "template", "stops": "stop tokens"}[w]
                              for w in matched) + " match" if matched else "")
    return "verified: " + ", ".join(p for p in parts if p)


def _r(r: float) -> str:
    """r with 4 decimals, never rounded up to 1.0000 unless it is."""
    return f"{np.floor(r * 1e4) / 1e4:.4f}" if r < 1 else "1.0000"


# --------------------------------------------------------------------------- comparisons


@dataclass
class _Outputs:
    """What the tuned model did on the prompts: the ids, logits and answers compared."""

    ids: list[list[int]]
    logits: list[np.ndarray]
    answers: list[Any]
    encode: Any
    tied: bool | None = None

    @classmethod
    def of(cls, runtime, texts: list[str], max_new_tokens: int) -> "_Outputs":
        ids = [runtime.prompt(t) for t in texts]
        return cls(ids, [runtime.logits(i) for i in ids], runtime.answers(texts, max_new_tokens),
                   runtime.encode)


def compare(runtime, want: _Outputs, tokenizer, texts: list[str], tol: Tolerance,
            train_render, chats, max_new_tokens: int) -> list[Check]:
    """Every check of one runtime against the tuned model's outputs."""
    checks = [_tokenization(runtime, want, tokenizer, texts)]
    if runtime.template_source:
        checks.append(check_template(train_render, runtime.render, chats, runtime.name,
                                     runtime.template_source))
    if want.tied and runtime.tied is False and runtime.untied_differs:
        checks.append(Check("tying", runtime.name, False, "the tuned model ties lm_head to the "
                            "embeddings, but the export loads an untied lm_head with other "
                            "weights (config.json tie_word_embeddings is false, or the output "
                            "matrix was written apart from the embeddings)"))
    checks.append(_logits(runtime, want, tol))
    checks.append(_answers(runtime, want, texts, tol, max_new_tokens))
    return checks


def _tokenization(runtime, want: _Outputs, tokenizer, texts: list[str]) -> Check:
    answers = [a.text for a in want.answers]
    cases = [(f"prompt {i + 1}", t, want.ids[i], runtime.prompt) for i, t in enumerate(texts)]
    cases += [(f"answer {i + 1}", a, want.encode(a), runtime.encode)
              for i, a in enumerate(answers) if a]
    for label, text, ids, encode in cases:
        got = encode(text)
        if got != ids:
            n = next((k for k, (a, b) in enumerate(zip(ids, got)) if a != b),
                     min(len(ids), len(got)))
            side = lambda seq, piece: (f'"{piece(seq[n])}" (id {seq[n]})' if n < len(seq)  # noqa
                                       else "the end")
            return Check("tokenization", runtime.name, False,
                         f"the export tokenizes {label} differently from token {n} on: training "
                         f"{side(ids, lambda i: tokenizer.convert_ids_to_tokens(int(i)))} vs "
                         f"export {side(got, runtime.piece)}; the text there: "
                         f"{_near(tokenizer, ids, n)!r}",
                         {"case": label, "token": n, "training": ids[n:n + 8],
                          "export": got[n:n + 8]})
    return Check("tokenization", runtime.name, True, f"same token ids on {len(cases)} texts",
                 {"texts": len(cases)})


def _near(tokenizer, ids: list[int], n: int) -> str:
    return tokenizer.decode(ids[max(0, n - 3):n + 3])


def _logits(runtime, want: _Outputs, tol: Tolerance) -> Check:
    got = [runtime.logits(ids) for ids in want.ids]
    if got and got[0].shape[-1] != want.logits[0].shape[-1]:
        return Check("logits", runtime.name, False, f"the export has {got[0].shape[-1]} "
                     f"output tokens, the tuned model {want.logits[0].shape[-1]}")
    a = np.concatenate([w.reshape(-1) for w in want.logits]).astype(np.float64)
    b = np.concatenate([g.reshape(-1) for g in got]).astype(np.float64)
    r = float(np.corrcoef(a, b)[0, 1]) if a.std() and b.std() else float(np.array_equal(a, b))
    top = np.concatenate([w.argmax(-1) for w in want.logits])
    top_got = np.concatenate([g.argmax(-1) for g in got])
    numbers = {"r": round(r, 6), "max_abs": round(float(np.abs(a - b).max()), 6),
               "top1": round(float((top == top_got).mean()), 4), "positions": int(len(top))}
    problems = []
    if not r >= tol.min_r:
        problems.append(f"r={r:.4f} < {tol.min_r}")
    if tol.max_abs is not None and numbers["max_abs"] > tol.max_abs:
        problems.append(f"max |difference| {numbers['max_abs']:.4g} > {tol.max_abs}")
    if numbers["top1"] < tol.min_top1:
        problems.append(f"top-1 agreement {numbers['top1']:.1%} < {tol.min_top1:.0%}")
    shown = (f"r={_r(r)}, max |difference| {numbers['max_abs']:.3g}, top-1 agreement "
             f"{numbers['top1']:.1%} over {numbers['positions']} positions")
    if problems:
        return Check("logits", runtime.name, False, f"next-token logits are off the tuned "
                     f"model's ({'; '.join(problems)}): {shown}", numbers)
    return Check("logits", runtime.name, True, shown, numbers)


def _answers(runtime, want: _Outputs, texts: list[str], tol: Tolerance,
             max_new_tokens: int) -> Check:
    got = runtime.answers(texts, max_new_tokens)
    same = [a.text == b.text and a.stopped == b.stopped and a.new_tokens == b.new_tokens
            for a, b in zip(want.answers, got)]
    ends = [a.stopped == b.stopped and (not a.stopped or a.new_tokens == b.new_tokens)
            for a, b in zip(want.answers, got)]
    stops = sum(ends)
    n = len(texts)
    numbers = {"same": int(sum(same)), "n": n, "same_stop": int(stops)}
    if n and sum(same) / n >= tol.min_same and stops / n >= tol.min_stop:
        return Check("answers", runtime.name, True, f"{sum(same)}/{n} same greedy answers, "
                     f"{stops}/{n} stop at the same place", numbers)
    i = ends.index(False) if stops / max(1, n) < tol.min_stop else same.index(False)
    a, b = want.answers[i], got[i]

    def end(x) -> str:
        return (f"stops after {x.new_tokens} tokens" if x.stopped
                else f"does not stop within {max_new_tokens} tokens")

    numbers["first"] = {"prompt": i + 1, "tuned": a.text, "export": b.text}
    return Check("answers", runtime.name, False, f"{sum(same)}/{n} same greedy answers (at "
                 f"least {tol.min_same:.0%} wanted), {stops}/{n} stop at the same place (at "
                 f"least {tol.min_stop:.0%}); first difference, prompt {i + 1}: tuned "
                 f"{a.text[:120]!r} ({end(a)}) vs export {b.text[:120]!r} ({end(b)})", numbers)


# --------------------------------------------------------------------------- inputs


@dataclass
class _Ref:
    model: Any
    model_tokenizer: Any


def _reference(run: Run) -> _Ref:
    """The tuned model as trained: the base with the adapter (or the fully tuned model), in
    float32, with the tokenizer and chat template training used."""
    from engine.evaluation.generate import open_model

    loaded = open_model(run.base, str(run.adapter_dir), dtype="float32")
    return _Ref(loaded.model, loaded.tokenizer)


def held_out(run: Run, tokenizer, k: int, log: Log) -> tuple[list[EvalExample], str]:
    """Up to k prompts with answers from the run's validation split; the bundled example chats
    when it has none (or its data cannot be read here)."""
    from engine.evaluation.evaluate import _split_of

    why = "the run has no config"
    if run.config:
        try:
            from engine.config import from_dict

            examples, source = _split_of(from_dict(run.config), tokenizer, log=lambda _: None)
            if examples:
                return examples[:k], source
            why = f"no record of the {source} has an answer"
        except Exception as exc:  # noqa: BLE001 - the check still runs, on the bundled chats
            why = f"its validation split cannot be read here ({exc})"
    from engine.data.examples import chat_records

    log(f"verify: {why}; using the bundled example chats")
    found = [to_example(f"example {i + 1}", r["messages"], "messages")
             for i, r in enumerate(chat_records(k, seed=11))]
    return [e for e in found if e is not None], "bundled example chats"


def _render(tokenizer, example: EvalExample) -> str:
    if example.kind == "messages":
        return tokenizer.apply_chat_template(example.prompt, tokenize=False,
                                             add_generation_prompt=True)
    return example.prompt


def _end_of_turn(tokenizer) -> str | None:
    i = end_of_turn_id(tokenizer)
    if i is None:
        i = tokenizer.eos_token_id
    return None if i is None else tokenizer.convert_ids_to_tokens(int(i))


def _free() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
