"""Generation evaluation: did the fine-tune work? The held-out prompts answered greedily by the
base model and by the tuned one, each answer scored against the record's reference.

Use from Python:
    from engine.evaluation.evaluate import evaluate_run, card_line
    record = evaluate_run("studio-data/jobs/7", log=print)     # writes jobs/7/eval.json
    print(card_line(record))   # exact match 10% -> 97% (+87 points, 95% CI +80 to +93), 60 ...

    # inside the train loop (engine.training.loop), the same code over the model being trained:
    gen = GenEval.prepare(cfg, data, tokenizer, out, log)   # None when there is nothing to score
    gen.base_answers(model)                                   # once, cached in out/eval/
    record = gen.run(model, step)                             # tuned answers, scores, eval.json

What is evaluated. Each held-out record (the run's validation split, or any data file in a
supported format) becomes a prompt and a reference: for conversations (alpaca, chat, sharegpt)
the prompt is every message before the LAST assistant turn, rendered with the chat template and
its generation prompt, and the reference is that turn's text; for completion records the prompt
and the completion. Text records (continued pre-training) have no reference and are not scored.
At most `max_records` records are used (train.eval_generate_max, default 100), in split order.

How answers are generated: greedy (no sampling), with the KV cache, in batches of
BATCH_SIZE prompts of similar length, left-padded. Generation stops at the chat template's
end-of-turn token (found by rendering a turn: <|im_end|>, <|eot_id|>, or EOS for ftstudio's
default template), the tokenizer's EOS and every eos id of the model's generation config, or
after `max_new_tokens` (default: 1.25 x the longest reference in tokens + 16, at most
MAX_NEW_TOKENS_CAP, so a short-answer task never pays for long rambles). An answer is the text
before its stop token, special tokens dropped, stripped of surrounding whitespace; each row also
says whether it stopped by itself (`*_stopped`) or ran out of tokens.

The base model's answers: with a PEFT method the tuned model with its adapter disabled (peft's
disable_adapter: no second copy in memory); after full fine-tuning, the base loaded on its own.
In training they are computed once, before the first step, and kept in out/eval/base.json, so a
resumed run does not generate them again.

Scores are engine.evaluation.metrics' (exact match after its normalisation, token F1, ROUGE-L, chrF, corpus
BLEU), with paired bootstrap 95% intervals. The record (eval.json) holds the summary and one row
per example: where (file line), prompt, reference, base, tuned and each side's scores.

About 550 lines: the examples, the batched generation, the scoring and the two places it runs
(in training, as an eval job) are one idea, kept in one file; the metrics are engine/evaluation/metrics.py.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.evaluation.metrics import (METRIC_INFO, METRICS, PER_EXAMPLE, normalize_answer, score_answers,
                            summarize)

Log = Callable[[str], None]
#: prompts answered per generate() call
BATCH_SIZE = 16
#: the most new tokens an answer may have when max_new_tokens is not given
MAX_NEW_TOKENS_CAP = 256
#: eval.json's layout version
VERSION = 1
#: prefix of the generation metrics in metrics records (gen_exact_match, gen_token_f1, ...)
PREFIX = "gen_"


class EvalError(ValueError):
    """An evaluation that cannot run; the message says why and what to do."""


@dataclass
class EvalExample:
    where: str                     # "line 17": where the record is in its file
    prompt: Any                    # messages before the answer (list of dicts), or raw text
    reference: str                 # the answer the record holds
    kind: str                      # "messages" or "completion"

    @property
    def shown_prompt(self) -> str:
        """The prompt as a person reads it: the last user message (or the raw prompt)."""
        if self.kind != "messages":
            return self.prompt
        users = [m["content"] for m in self.prompt if m["role"] == "user"]
        return users[-1] if users else self.prompt[-1]["content"]


@dataclass
class Answer:
    text: str
    stopped: bool                  # ended with a stop token (False: ran out of new tokens)
    new_tokens: int
    #: the answer's token ids (the stop token left out), for GRPO's reward functions
    ids: list[int] | None = field(default=None, compare=False, repr=False)


def metric_names() -> list[str]:
    """The metrics records' names of the generation metrics: gen_exact_match, ..."""
    return [PREFIX + m for m in METRICS]


# --------------------------------------------------------------------------- examples


def to_example(where: str, example: Any, kind: str) -> EvalExample | None:
    """An engine.data.formats example as a prompt and its reference (None: nothing to answer).
    Preference pairs are scored against their chosen answer, kto records against a desirable
    completion (undesirable ones have no reference)."""
    if kind == "messages":
        last = max((i for i, m in enumerate(example) if m["role"] == "assistant"), default=None)
        if not last:  # no assistant turn, or one with nothing before it
            return None
        return EvalExample(where, list(example[:last]), example[last]["content"], kind)
    if kind == "completion":
        prompt, completion = example
        return EvalExample(where, prompt, completion, kind)
    if kind in ("preference", "kto"):   # the answer to match: the chosen (or a desirable) one
        answer = example["chosen"] if kind == "preference" else \
            example["completion"] if example["desirable"] else None
        if not answer:
            return None
        return EvalExample(where, list(example["prompt"]),
                           "\n".join(m["content"] for m in answer), "messages")
    return None


def file_examples(path: str | Path, data_cfg=None, *, wheres: list[str] | None = None
                  ) -> tuple[list[EvalExample], str]:
    """The records of a data file as EvalExamples (bad records passed over), in file order, or
    only those at `wheres` (in that order). Returns (examples, format)."""
    from engine.config import DataConfig
    from engine.data import normalized_examples

    d = data_cfg or DataConfig(train=str(path))
    fmt, kind, pairs = normalized_examples(path, d)
    if kind == "text":
        raise EvalError(f"{path}: {fmt} records are raw text for continued pre-training and hold "
                        "no answer to compare with; evaluate a file of conversations (alpaca, "
                        "chat, sharegpt) or completion records")
    if wheres is not None:
        by_where = dict(pairs)
        pairs = [(w, by_where[w]) for w in wheres if w in by_where]
    examples = [e for e in (to_example(w, ex, kind) for w, ex in pairs) if e is not None]
    return examples, fmt


def heldout_examples(cfg, data) -> tuple[list[EvalExample], str]:
    """The validation split of a prepared run (engine.data.PreparedData) as EvalExamples, and a
    description of where they came from."""
    if data.validation is None or not len(data.validation):
        return [], "no validation split"
    wheres = list(data.validation["where"])
    if cfg.data.validation:
        examples, _ = file_examples(cfg.data.validation, cfg.data, wheres=wheres)
        return examples, f"data.validation ({Path(cfg.data.validation).name})"
    examples, _ = file_examples(cfg.data.train, cfg.data, wheres=wheres)
    return examples, (f"held-out {cfg.data.val_fraction:g} of data.train "
                      f"({Path(cfg.data.train).name}, seed {cfg.train.seed})")


# --------------------------------------------------------------------------- generation


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Where an answer ends: the chat template's end-of-turn token, the tokenizer's EOS and the
    generation config's eos ids (deduplicated, in that order)."""
    ids: list[int] = []
    turn_end = end_of_turn_id(tokenizer)
    if turn_end is not None:
        ids.append(turn_end)
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    gen_cfg = getattr(model, "generation_config", None) if model is not None else None
    eos = getattr(gen_cfg, "eos_token_id", None)
    for i in (eos if isinstance(eos, (list, tuple)) else [eos]):
        if i is not None:
            ids.append(int(i))
    return list(dict.fromkeys(ids))


def end_of_turn_id(tokenizer) -> int | None:
    """The token the chat template writes right after an assistant's text, when it is a special
    (added) token, e.g. <|im_end|>; None when the template writes plain text there."""
    marker = "XyZzY"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}],
            tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render this has no turn end
        return None
    after = text.split(marker, 1)[-1] if marker in text else ""
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after.strip() else []
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder",
                                                           {}) or {})
    return int(ids[0]) if ids and ids[0] in special else None


def prompt_ids(tokenizer, example: EvalExample) -> list[int]:
    """The prompt's token ids exactly as training renders them (chat template with the
    generation prompt; BOS once, when the tokenizer adds one by default)."""
    if example.kind == "messages":
        text = tokenizer.apply_chat_template(example.prompt, tokenize=False,
                                             add_generation_prompt=True)
    else:
        text = example.prompt
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = tokenizer.bos_token_id
    if _adds_bos(tokenizer) and not (ids and ids[0] == bos):
        ids = [bos] + ids
    return ids


def _adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts a BOS in front by default (asked once per tokenizer)."""
    known = getattr(tokenizer, "_ftstudio_adds_bos", None)
    if known is None:
        bos = tokenizer.bos_token_id
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        known = bos is not None and bool(probe) and probe[0] == bos
        tokenizer._ftstudio_adds_bos = known
    return known


def default_max_new_tokens(tokenizer, examples: list[EvalExample]) -> int:
    """1.25 x the longest reference in tokens + 16 (for the stop token and slack), capped."""
    longest = max((len(tokenizer(e.reference, add_special_tokens=False)["input_ids"])
                   for e in examples), default=16)
    return min(MAX_NEW_TOKENS_CAP, math.ceil(1.25 * longest) + 16)


def generate_answers(model, tokenizer, examples: list[EvalExample], *, max_new_tokens: int,
                     base: bool = False, batch_size: int = BATCH_SIZE,
                     max_prompt_tokens: int | None = None) -> list[Answer]:
    """Greedy answers to each example's prompt, batched by length with the KV cache. base=True
    answers with a PEFT model's adapter disabled."""
    import torch

    stops = stop_token_ids(tokenizer, model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    device = next(model.parameters()).device
    encoded = [prompt_ids(tokenizer, e) for e in examples]
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    keep = max_prompt_tokens or (limit - max_new_tokens if isinstance(limit, int) else None)
    if keep:
        encoded = [ids[-max(1, keep):] for ids in encoded]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    answers: list[Answer | None] = [None] * len(encoded)
    was_training = model.training
    model.eval()
    switch = model.disable_adapter() if base and hasattr(model, "disable_adapter") \
        else nullcontext()
    try:
        with switch, torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                width = max(len(encoded[i]) for i in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, i in enumerate(chunk):  # left padding: every prompt ends at the edge
                    n = len(encoded[i])
                    ids[row, width - n:] = torch.tensor(encoded[i])
                    mask[row, width - n:] = 1
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                     max_new_tokens=int(max_new_tokens), do_sample=False,
                                     num_beams=1, use_cache=True, eos_token_id=stops,
                                     pad_token_id=pad, temperature=None, top_p=None, top_k=None)
                new = out[:, width:].tolist()
                for row, i in enumerate(chunk):
                    answers[i] = _answer(tokenizer, new[row], set(stops))
    finally:
        model.train(was_training)
    return answers  # type: ignore[return-value]


def _answer(tokenizer, new_ids: list[int], stops: set[int]) -> Answer:
    cut = next((k for k, t in enumerate(new_ids) if t in stops), None)
    kept = new_ids if cut is None else new_ids[:cut]
    text = tokenizer.decode(kept, skip_special_tokens=True).strip()
    return Answer(text, cut is not None, len(kept) + (cut is not None), list(kept))


# --------------------------------------------------------------------------- scoring


def score(examples: list[EvalExample], base: list[Answer] | None, tuned: list[Answer], *,
          seconds: dict[str, float], source: str, step: int | None, max_new_tokens: int,
          seed: int = 0, **facts: Any) -> dict[str, Any]:
    """The eval record (what eval.json holds): summary with intervals, and one row each."""
    refs = [e.reference for e in examples]
    tuned_scores = score_answers([a.text for a in tuned], refs)
    base_scores = score_answers([a.text for a in base], refs) if base is not None else None
    summary = summarize(base_scores, tuned_scores,
                        [a.text for a in base] if base is not None else None,
                        [a.text for a in tuned], refs, seed=seed)
    rows = []
    for i, e in enumerate(examples):
        row = {"index": i, "where": e.where, "prompt": e.shown_prompt, "reference": e.reference,
               "conversation": e.prompt if e.kind == "messages" else None,
               "tuned": tuned[i].text, "tuned_stopped": tuned[i].stopped,
               "tuned_scores": tuned_scores[i]}
        if base is not None:
            row.update(base=base[i].text, base_stopped=base[i].stopped,
                       base_scores=base_scores[i])
        row["changed"] = changed(row)
        row["change"] = change_of(row)
        rows.append(row)
    return {"version": VERSION, "step": step, "n": len(examples), "source": source,
            "max_new_tokens": max_new_tokens, "seconds": seconds, "metrics": summary,
            "created_at": time.time(), **facts, "rows": rows}


def changed(row: dict[str, Any]) -> bool:
    """Whether the tuned answer differs from the base's after normalisation (False without a
    base); the one rule the table's "changed" filter and the store's column use."""
    if "changed" in row:
        return bool(row["changed"])
    return "base" in row and row["base"] is not None and \
        normalize_answer(row["base"]) != normalize_answer(row["tuned"])


def change_of(row: dict[str, Any]) -> str:
    """How a row moved from base to tuned, for the table's filters:
    "improved" / "worse" (exact match, else token F1, went up / down), "still wrong" (neither
    matches exactly and nothing improved), "same" (the normalised answers are equal)."""
    if "base" not in row:
        return "correct" if row["tuned_scores"]["exact_match"] else "wrong"
    b, t = row["base_scores"], row["tuned_scores"]
    key = (t["exact_match"] - b["exact_match"]) or (t["token_f1"] - b["token_f1"])
    if key > 0:
        return "improved"
    if key < 0:
        return "worse"
    if changed(row):
        return "changed" if t["exact_match"] else "still wrong"
    return "same" if t["exact_match"] else "still wrong"


def filter_rows(rows: list[dict[str, Any]], which: str) -> list[dict[str, Any]]:
    """The table's filters: all, changed (the answer differs from the base's), still wrong
    (tuned is not an exact match; was not either), got worse."""
    if which == "changed":
        return [r for r in rows if changed(r)]
    if which == "still wrong":
        return [r for r in rows if not r["tuned_scores"]["exact_match"] and
                not (r.get("base_scores") or {}).get("exact_match")]
    if which == "got worse":
        return [r for r in rows if r["change"] == "worse"]
    return list(rows)


def flat_metrics(record: dict[str, Any]) -> dict[str, float]:
    """{gen_exact_match: tuned value, ...}: the record as a metrics record's values."""
    return {PREFIX + name: m["tuned"] for name, m in record["metrics"].items()
            if m.get("tuned") is not None}


def card_line(record: dict[str, Any], metric: str | None = None) -> str:
    """"exact match 10% -> 97% (+87 points, 95% CI +80 to +93), 60 held-out records"; a GRPO
    run's record (scored with its reward functions) leads with the mean reward."""
    from engine.evaluation.metrics import metric_info

    metric = metric or ("exact_match" if "exact_match" in record["metrics"] else
                        "reward" if "reward" in record["metrics"] else next(iter(record["metrics"])))
    m = record["metrics"][metric]
    info = metric_info(metric)
    share = info["scale"] == "share"
    digits = 2 if metric.startswith("reward") else 1

    def val(x: float) -> str:
        return f"{x * 100:.0f}%" if share else f"{x:.{digits}f}"

    def pts(x: float) -> str:
        return f"{x * 100:+.0f}" if share else f"{x:+.{digits}f}"

    unit = " points" if share else ""
    n = f"{record['n']} held-out record{'s' if record['n'] != 1 else ''}"
    if m.get("base") is None:
        lo, hi = m["tuned_ci"]
        return f"{info['label']} {val(m['tuned'])} (95% CI {val(lo)} to {val(hi)}), {n}"
    lo, hi = m["delta_ci"]
    return (f"{info['label']} {val(m['base'])} \u2192 {val(m['tuned'])} ({pts(m['delta'])}{unit}"
            f", 95% CI {pts(lo)} to {pts(hi)}), {n}")


def write_record(record: dict[str, Any], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(p)
    return p


def read_record(path: str | Path) -> dict[str, Any] | None:
    p = Path(path)
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None


def to_csv(record: dict[str, Any], rows: list[dict[str, Any]] | None = None) -> str:
    """The rows as CSV: where, prompt, reference, base, tuned, change, and each side's scores."""
    rows = record["rows"] if rows is None else rows
    buf = io.StringIO()
    names = list(PER_EXAMPLE)  # corpus BLEU has no per-row score
    header = ["where", "prompt", "reference", "base", "tuned", "change", "base_stopped",
              "tuned_stopped"] + [f"{side}_{m}" for side in ("base", "tuned") for m in names]
    w = csv.writer(buf)
    w.writerow(header)
    for r in rows:
        w.writerow([r["where"], r["prompt"], r["reference"], r.get("base", ""), r["tuned"],
                    r["change"], r.get("base_stopped", ""), r["tuned_stopped"]]
                   + [(r.get(f"{side}_scores") or {}).get(m, "") for side in ("base", "tuned")
                      for m in names])
    return buf.getvalue()


# --------------------------------------------------------------------------- in training


class GenEval:
    """The generation evaluation of a training run: its examples, the base answers (computed
    once, cached in out/eval/base.json), and a run() per evaluation of the tuned model."""

    def __init__(self, examples: list[EvalExample], source: str, tokenizer, out: Path,
                 max_new_tokens: int, seed: int, log: Log):
        self.examples, self.source, self.tokenizer = examples, source, tokenizer
        self.out, self.max_new_tokens, self.seed, self.log = out, max_new_tokens, seed, log
        self.base: list[Answer] | None = None
        self.base_seconds = 0.0
        self.baseline: dict[str, Any] = {}   # teacher_answers: {"baseline": "teacher", ...}

    @classmethod
    def prepare(cls, cfg, data, tokenizer, out: Path, log: Log) -> "GenEval | None":
        """None when train.eval_generate is off or there is nothing to score (the log says)."""
        t = cfg.train
        if t.eval_generate == "off":
            return None
        try:
            examples, source = heldout_examples(cfg, data)
        except EvalError as exc:
            log(f"eval generate: off: {exc}")
            return None
        if not examples:
            log("eval generate: off: " + ("no validation split (give data.validation or a "
                                          "data.val_fraction above 0)" if source ==
                                          "no validation split" else "no held-out record has an "
                                          "answer to compare with"))
            return None
        examples = examples[:t.eval_generate_max]
        budget = t.eval_generate_max_new_tokens or default_max_new_tokens(tokenizer, examples)
        log(f"eval generate: {len(examples)} records of the {source}, greedy, at most {budget} "
            f"new tokens, base vs tuned ({t.eval_generate})")
        return cls(examples, source, tokenizer, out, budget, t.seed, log)

    def key(self) -> str:
        material = json.dumps([[e.where, e.prompt, e.reference] for e in self.examples] +
                              [self.max_new_tokens], ensure_ascii=False)
        return hashlib.sha256(material.encode()).hexdigest()[:16]

    def base_answers(self, model, *, separate_base: bool = False, trained: bool = False
                     ) -> None:
        """Answer with the base (adapter disabled; separate_base: the model as it is now, before
        any step of full fine-tuning), or read the answers a run before this resume cached."""
        cache = self.out / "eval" / "base.json"
        saved = read_record(cache)
        if saved and saved.get("key") == self.key():
            self.base = [Answer(**a) for a in saved["answers"]]
            self.base_seconds = saved.get("seconds", 0.0)
            self.log(f"eval generate: base answers from {cache}")
            return
        if separate_base and trained:
            self.log("eval generate: the base's answers were not kept before this resume and "
                     "the fully fine-tuned weights are no longer the base; scoring the tuned "
                     "model alone (`ftstudio eval JOB` compares with the base)")
            return
        started = time.time()
        self.base = generate_answers(model, self.tokenizer, self.examples,
                                     max_new_tokens=self.max_new_tokens, base=not separate_base)
        self.base_seconds = round(time.time() - started, 4)
        write_record({"key": self.key(), "seconds": self.base_seconds,
                      "answers": [a.__dict__ for a in self.base]}, cache)
        self.log(f"eval generate: base answered {len(self.base)} prompts in "
                 f"{self.base_seconds:.1f}s")

    def teacher_answers(self, teacher: str) -> None:
        """Distillation: the base side is the teacher (loaded here, answered, freed), so each
        evaluation shows how much of the teacher's score the student keeps; cached in
        out/eval/base.json for a resume like the base's answers."""
        import torch

        from engine.evaluation.generate import open_model

        cache = self.out / "eval" / "base.json"
        key = f"{self.key()}-teacher-{hashlib.sha256(teacher.encode()).hexdigest()[:8]}"
        self.baseline = {"baseline": "teacher", "base_model": teacher}
        saved = read_record(cache)
        if saved and saved.get("key") == key:
            self.base = [Answer(**a) for a in saved["answers"]]
            self.base_seconds = saved.get("seconds", 0.0)
            self.log(f"eval generate: the teacher's answers from {cache}")
            return
        loaded = open_model(teacher, None)
        started = time.time()
        self.base = generate_answers(loaded.model, self.tokenizer, self.examples,
                                     max_new_tokens=self.max_new_tokens)
        self.base_seconds = round(time.time() - started, 4)
        del loaded
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        write_record({"key": key, "seconds": self.base_seconds,
                      "answers": [a.__dict__ for a in self.base]}, cache)
        self.log(f"eval generate: the teacher answered {len(self.base)} prompts in "
                 f"{self.base_seconds:.1f}s (the base side of every evaluation)")

    def run(self, model, step: int, **facts: Any) -> dict[str, Any]:
        facts = {**self.baseline, **facts}
        started = time.time()
        tuned = generate_answers(model, self.tokenizer, self.examples,
                                 max_new_tokens=self.max_new_tokens)
        took = round(time.time() - started, 4)
        record = score(self.examples, self.base, tuned, source=self.source, step=step,
                       max_new_tokens=self.max_new_tokens, seed=self.seed,
                       seconds={"base": self.base_seconds, "tuned": took,
                                "scoring": 0.0}, **facts)
        record["seconds"]["scoring"] = round(time.time() - started - took, 2)
        record["new_tokens"] = {"base": sum(a.new_tokens for a in self.base) if self.base
                                else None, "tuned": sum(a.new_tokens for a in tuned)}
        write_record(record, self.out / "eval.json")
        self.log(f"eval generate at step {step}: {card_line(record)}; tuned answered in "
                 f"{took:.1f}s")
        return record


# --------------------------------------------------------------------------- an eval job


def evaluate_run(run_dir: str | Path, data: str | Path | None = None, *,
                 max_new_tokens: int | None = None, max_records: int | None = None,
                 out: str | Path | None = None, log: Log = print) -> dict[str, Any]:
    """Evaluate a finished run (a folder with adapter/ and run.json) on its validation split,
    or on `data`, base vs tuned; writes the record to `out` (default run_dir/eval.json)."""
    import torch

    from engine.config import from_dict
    from engine.export.run import ExportError, read_run
    from engine.evaluation.generate import open_model

    try:
        run = read_run(run_dir)
    except ExportError as exc:
        raise EvalError(str(exc)) from None
    cfg = from_dict(run.config) if run.config else None
    started = time.time()
    tuned_model = open_model(run.base, str(run.adapter_dir))
    tokenizer = tuned_model.tokenizer
    if data is not None:
        examples, fmt = file_examples(data, cfg.data if cfg else None)
        source = f"{Path(data).name} ({fmt})"
    else:
        if cfg is None:
            raise EvalError(f"{run_dir} has no run.json to find its validation split in; pass "
                            "a data file (--data FILE)")
        examples, source = _split_of(cfg, tokenizer, log)
    limit = max_records or (cfg.train.eval_generate_max if cfg else 100)
    if not examples:
        raise EvalError(f"no record of the {source} has an answer to compare with")
    examples = examples[:limit]
    budget = max_new_tokens or (cfg.train.eval_generate_max_new_tokens if cfg else None) or \
        default_max_new_tokens(tokenizer, examples)
    log(f"eval: {len(examples)} records of the {source}, greedy, at most {budget} new tokens")
    loaded_s = round(time.time() - started, 2)
    model = tuned_model.model
    teacher = cfg.train.teacher if cfg and cfg.train.objective == "distill" else None
    if teacher:  # distillation: the teacher is what the student is compared with
        t0 = time.time()
        base_model = open_model(teacher, None)
        base = generate_answers(base_model.model, base_model.tokenizer, examples,
                                max_new_tokens=budget)
        base_s = round(time.time() - t0, 4)
        del base_model
    elif tuned_model.is_peft:
        t0 = time.time()
        base = generate_answers(model, tokenizer, examples, max_new_tokens=budget, base=True)
        base_s = round(time.time() - t0, 4)
    else:  # full fine-tuning: the base is another model; answer with it first, then free it
        del model, tuned_model
        t0 = time.time()
        base_model = open_model(run.base, None)
        base = generate_answers(base_model.model, base_model.tokenizer, examples,
                                max_new_tokens=budget)
        base_s = round(time.time() - t0, 4)
        del base_model
        tuned_model = open_model(run.base, str(run.adapter_dir))
        model = tuned_model.model
    log(f"eval: {'the teacher' if teacher else 'base'} answered in {base_s:.1f}s")
    t0 = time.time()
    tuned = generate_answers(model, tokenizer, examples, max_new_tokens=budget)
    tuned_s = round(time.time() - t0, 4)
    log(f"eval: tuned answered in {tuned_s:.1f}s")
    record = score(examples, base, tuned, source=source, step=(run.record or {}).get("steps"),
                   max_new_tokens=budget, seed=cfg.train.seed if cfg else 0,
                   seconds={"load": loaded_s, "base": base_s, "tuned": tuned_s},
                   kind="job", base_model=teacher or run.base, adapter=str(run.adapter_dir),
                   **({"baseline": "teacher"} if teacher else {}),
                   device=str(next(model.parameters()).device),
                   data=str(data) if data is not None else None)
    target = Path(out) if out is not None else Path(run_dir) / "eval.json"
    write_record(record, target)
    log(f"eval: {card_line(record)}")
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return record


def _split_of(cfg, tokenizer, log: Log) -> tuple[list[EvalExample], str]:
    """The run's validation split, prepared again as training did (from the tokenized cache)."""
    from engine.data import prepare

    data = prepare(cfg, tokenizer, log=lambda line: None)
    examples, source = heldout_examples(cfg, data)
    if not examples and source == "no validation split":
        raise EvalError("the run has no validation split (data.validation was empty and "
                        "data.val_fraction 0); pass a data file to evaluate on (--data FILE)")
    return examples, source
