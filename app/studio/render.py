"""Small HTML pieces the studio shows: cards, stat tiles, badges, meters, problem lists.

Pure functions from plain values to HTML strings (every value escaped); styled by
static/studio.css (class names prefixed `fs-`).
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from typing import Any

from engine.data.report import why_none_used
from engine.models.catalog import ModelInfo, human_count
from engine.config import Problem
from engine.models.estimate import Estimate, human_bytes

STATUS_ICONS = {"queued": "◷", "running": "●", "completed": "✓", "failed": "✕",
                "cancelled": "■", "interrupted": "↯"}
VERDICT_TEXT = {"fits": "Fits", "tight": "Tight", "exceeds": "Exceeds"}
PART_LABELS = {"weights": "Weights", "adapter": "Adapter", "gradients": "Gradients",
               "optimizer": "Optimizer state", "activations": "Activations",
               "logits": "Logits", "slack": "Allocator slack",
               "runtime": "Runtime (libraries, CUDA context)"}
CPU_RUNTIME = "Runtime (Python libraries)"     # no CUDA context where there is no GPU
#: engine.models.estimate's note on glibc's heap on CPU (it names this variable) is a paragraph: the
#: card says it in one line and keeps the paragraph under Breakdown
ALLOCATOR_MARK = "MALLOC_MMAP_THRESHOLD_"
ALLOCATOR_LINE = "On CPU the peak may reach about twice the activations' share (see Breakdown)."


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def badge(status: str) -> str:
    return (f'<span class="fs-badge fs-{esc(status)}">{STATUS_ICONS.get(status, "")} '
            f'{esc(status)}</span>')


def tiles(items: Iterable[tuple[str, Any, str]]) -> str:
    """A row of stat tiles: (label, value, tone) with tone '', 'good', 'warn' or 'bad'."""
    cells = "".join(f'<div class="fs-tile {esc(tone)}"><div class="fs-tile-v">{esc(v)}</div>'
                    f'<div class="fs-tile-l">{esc(label)}</div></div>'
                    for label, v, tone in items)
    return f'<div class="fs-tiles">{cells}</div>'


def note(text: str, tone: str = "info") -> str:
    return f'<div class="fs-note fs-{esc(tone)}">{esc(text)}</div>'


def problems(items: list[Problem], label_for=lambda k: k) -> str:
    """Every problem, each with the setting's label, its key and the message."""
    if not items:
        return ""
    rows = "".join(f'<li><b>{esc(label_for(p.key))}</b> <code>{esc(p.key)}</code> '
                   f'{esc(p.message)}</li>' for p in items)
    n = len(items)
    return (f'<div class="fs-problems" role="alert"><div class="fs-problems-h">'
            f'{n} problem{"s" if n != 1 else ""} to fix before starting</div><ul>{rows}</ul>'
            '</div>')


def model_card(info: ModelInfo) -> str:
    avail = ("Available offline", "good") if info.offline else ("Needs a download", "warn")
    kind = {"demo": "Demo model", "local": "Local folder", "preset": "Curated preset",
            "hub": "Hub model"}[info.source]
    body = tiles([("Architecture", info.architecture, ""),
                  ("Parameters", human_count(info.params), ""),
                  (kind, avail[0], avail[1])])
    notes = "".join(note(n, "warn" if "random" not in n else "info") for n in info.notes)
    demo = '<span class="fs-pill">DEMO</span>' if info.is_demo else ""
    return (f'<div class="fs-card"><div class="fs-card-h">{esc(info.label)} {demo}</div>'
            f'<div class="fs-muted fs-mono">{esc(info.name)}</div>{body}{notes}</div>')


def timing_line(timing: dict[str, Any] | None) -> str:
    """The time per epoch (jobs.api.time_estimate), or why there is none."""
    if not timing:
        return ""
    if "missing" in timing:
        return f'<div class="fs-muted fs-timing">Time: {esc(timing["missing"])}</div>'
    per = timing["seconds_per_epoch"]
    run = (f" ({duration(per * timing['epochs'])} for {timing['epochs']:g} epochs)"
           if timing.get("epochs") not in (None, 1) else "")
    source = (f"job #{timing['job_id']}" + ("" if timing["same_method"] else
                                            f", a {timing['method']} run"))
    return (f'<div class="fs-timing"><b>About {duration(per)} per epoch</b>{esc(run)} · '
            f'{timing["tokens_per_epoch"]:,} trained tokens at {timing["tokens_per_s"]:,.0f} '
            f'tokens/s, as measured by {esc(source)} on this model</div>')


def estimate_card(est: Estimate | None, reason: str = "",
                  timing: dict[str, Any] | None = None, plan: Any = None) -> str:
    if est is None:
        return (f'<div class="fs-card fs-estimate"><div class="fs-card-h">Memory estimate</div>'
                f'{note(reason or "No estimate: the model shape is unknown offline.", "warn")}'
                f'{timing_line(timing)}</div>')
    dev, verdict = est.device, est.verdict
    share = est.peak_bytes / dev.capacity_bytes if dev.capacity_bytes else 1.0
    width = max(2, min(100, math.ceil(100 * share)))
    where = (f"{dev.name} · {human_bytes(dev.total_bytes)}" if dev.kind == "cuda" else
             f"CPU RAM · {human_bytes(dev.available_bytes)} free of "
             f"{human_bytes(dev.total_bytes)}")
    parts = sorted(((k, v) for k, v in est.parts.items() if v), key=lambda kv: -kv[1])
    labels = PART_LABELS if dev.kind == "cuda" else {**PART_LABELS, "runtime": CPU_RUNTIME}
    legend = "".join(f'<div class="fs-part"><span>{esc(labels.get(k, k))}</span>'
                     f'<span>{human_bytes(v)}</span></div>' for k, v in parts)
    allocator = [n for n in est.notes if ALLOCATOR_MARK in n]
    legend += "".join(f'<div class="fs-muted fs-part-note">{esc(n[:1].upper() + n[1:])}.</div>'
                      for n in allocator)
    notes = "".join(note(n, "warn") for n in est.notes if n not in allocator) + \
        (note(ALLOCATOR_LINE, "info") if allocator else "")
    pct = est.trainable_share * 100
    pct_text = f"{pct:.2f}%" if pct < 10 else f"{pct:.0f}%"
    return (
        f'<div class="fs-card fs-estimate"><div class="fs-card-h">Before you start</div>'
        + tiles([("Trainable parameters", human_count(est.trainable_params), ""),
                 ("of all weights", pct_text, ""),
                 ("Peak memory", human_bytes(est.peak_bytes), "")])
        + f'<div class="fs-meter fs-{verdict}"><div class="fs-meter-fill" '
          f'style="width:{width}%"></div></div>'
        f'<div class="fs-verdict fs-{verdict}"><b>{VERDICT_TEXT[verdict]}</b> · '
        f'{share:.0%} of {esc(where)}</div>'
        f'{timing_line(timing)}{parallel_lines(plan)}'
        f'<details class="fs-breakdown"><summary>Breakdown</summary>{legend}</details>'
        f'{notes}</div>')


def parallel_lines(plan: Any) -> str:
    """engine.models.estimate.ParallelPlan: the advice (fits on 1 GPU / needs N GPUs with FSDP /
    needs offload) and the per-GPU peak under each strategy for the job's GPU count."""
    if plan is None:
        return ""
    kind = "good" if plan.advice.startswith("fits") else \
        "bad" if plan.advice.startswith("does not fit") else "warn"
    per = " · ".join(f"{name} {human_bytes(plan.per_gpu[key])}" for key, name in
                     (("ddp", "DDP"), ("fsdp", "FSDP"), ("fsdp_offload", "FSDP + offload")))
    return (f'<div class="fs-parallel" id="parallel-advice">'
            f'<div class="fs-verdict fs-{"fits" if kind == "good" else "tight" if kind == "warn" else "exceeds"}">'
            f'<b>{esc(plan.advice[:1].upper() + plan.advice[1:])}</b></div>'
            f'<div class="fs-muted">per GPU with {plan.gpus} GPU{"s" if plan.gpus > 1 else ""}: '
            f'{esc(per)}</div></div>')


#: the report's counts of records left out, and what each means (as `ftstudio data check`)
LEFT_OUT = (("skipped_bad", "bad"), ("dropped_duplicates", "duplicates"),
            ("too_short", "too short"), ("too_long", "too long"),
            ("no_trained_tokens", "without a trained token after truncation"))


def data_report(rep: dict[str, Any]) -> str:
    """The dataset report (DataReport.to_dict()) as tiles, notes and problems."""
    unit = rep.get("length_unit", "tokens")
    bad = rep.get("skipped_bad", 0)
    head = tiles([
        ("Format", rep.get("format", "?"), "bad" if rep.get("format") == "unknown" else ""),
        ("Records", f"{rep.get('records', 0):,}", ""),
        ("Used", f"{rep.get('used', 0):,}", "bad" if not rep.get("used") else "good"),
        ("Train / val", f"{rep.get('train_records', 0)} / {rep.get('validation_records', 0)}",
         ""),
        ("Truncated", rep.get("truncated", 0), "warn" if rep.get("truncated") else ""),
        ("Duplicates", rep.get("duplicates", 0), "warn" if rep.get("duplicates") else ""),
        ("Errors", bad, "bad" if bad else ""),
    ])
    lines = [f'<div class="fs-muted">{esc(rep.get("format_reason", ""))}</div>']
    left = [(rep.get(k, 0), what) for k, what in LEFT_OUT if rep.get(k, 0)]
    if left:
        lines.append('<div class="fs-muted">Left out: ' + ", ".join(
            f"{n:,} {what}" for n, what in left) + "</div>")
    why = why_none_used(rep)
    if why:
        lines.append(note(f"No record to train on: {why}.", "bad"))
    if rep.get("used"):
        p99 = f', p99 {rep["length_p99"]}' if rep.get("length_p99") else ""  # older reports lack it
        lines.append(
            f'<div class="fs-muted">Length in {esc(unit)}: min {rep.get("length_min")}, median '
            f'{rep.get("length_median", 0):g}, p95 {rep.get("length_p95")}{p99}, max '
            f'{rep.get("length_max")} · {rep.get("trained_tokens", 0):,} of '
            f'{rep.get("total_tokens", 0):,} {esc(unit)} carry loss</div>')
    if unit != "tokens":
        lines.append(note("Lengths are counted in words: the model's tokenizer is not "
                          "available offline.", "warn"))
    for text in rep.get("notes") or []:
        lines.append(note(text, "info"))
    if rep.get("bad_examples"):
        items = "".join(f"<li>{esc(m)}</li>" for m in rep["bad_examples"])
        more = bad - len(rep["bad_examples"])
        lines.append(f'<div class="fs-problems"><div class="fs-problems-h">{bad} record'
                     f'{"s" if bad != 1 else ""} with errors</div><ul>{items}</ul>'
                     + (f"<div>… and {more} more</div>" if more > 0 else "") + "</div>")
    return f'<div class="fs-card fs-report">{head}{"".join(lines)}</div>'


def defaults_card(rows: list[tuple[str, str, str, bool]]) -> str:
    """Where the form's defaults came from: (label, value, reason, kept) per field, kept when
    the field holds the user's own value rather than the suggestion."""
    if not rows:
        return ""
    items = "".join(
        f'<li><b>{esc(label)}</b> <code>{esc(value)}</code> '
        + ('<span class="fs-pill">YOURS</span> ' if kept else "")
        + f'<span class="fs-muted">{esc(why)}</span></li>'
        for label, value, why, kept in rows)
    return (f'<div class="fs-card fs-defaults"><div class="fs-card-h">Defaults for this '
            f'model</div><ul>{items}</ul><div class="fs-muted">Set when you pick a model, a '
            f'method or a data file; a field you have edited keeps your value.</div></div>')


def progress(done: int, total: int | None, label: str = "", status: str = "running") -> str:
    share = (done / total) if total else 0.0
    width = max(0, min(100, round(100 * share)))
    text = f"step {done:,} of {total:,}" if total else f"step {done:,}"
    return (f'<div class="fs-progress fs-{esc(status)}"><div class="fs-progress-bar">'
            f'<div class="fs-progress-fill" style="width:{width}%"></div></div>'
            f'<div class="fs-progress-t"><span>{esc(text)}</span><span>{width}%'
            f'{" · " + esc(label) if label else ""}</span></div></div>')


def duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0 or not math.isfinite(seconds):
        return ""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"
