"""Export a finished run for use elsewhere: the adapter, a merged model, a bitsandbytes-quantized
model, or a GGUF file for llama.cpp and Ollama.

Use from Python:
    from engine.export import export, FORMATS
    result = export("studio-data/jobs/7", "gguf-q8_0", log=print)   # -> run_dir/exports/gguf-q8_0/
    for artifact in result.artifacts:
        print(artifact.path, artifact.bytes)

Run as: ftstudio export JOB --format merged [--out PATH]      (JOB: a job id or a run folder)

Each format is one function of the same shape, `fmt(run, out, log) -> list[Path]`, in a module
of its own (engine/export/adapter.py, merged.py, bnb.py, gguf.py; the card is card.py, the
Ollama Modelfile ollama.py, the run folder run.py), listed in FORMATS; `export()` reads the
run folder, calls it and measures what it wrote. Then verify.py loads each export in the runtime
it is for (runtimes.py), checks its files (verify_files.py) and the Modelfile's Go template
(gotemplate.py) against the tuned model:

    adapter     the PEFT adapter folder (or, after full fine-tuning, the model folder), a zip of
                it and a README card (base model, method, data hashes, hyperparameters, metrics)
    merged      the adapter merged into the base (merge_and_unload), float32 merge then saved in
                the base's dtype as safetensors with tokenizer, chat template and generation
                config: AutoModelForCausalLM / vLLM load it as is. After full fine-tuning: the
                trained model itself. Prompt and prefix tuning cannot be merged (ExportError).
    bnb4, bnb8  the merged model quantized by bitsandbytes while loading (NF4 + double
                quantization / LLM.int8) and saved with its quantization_config, so
                from_pretrained loads it quantized (bitsandbytes must be installed there)
    gguf-f16, gguf-q8_0, gguf-q4_0
                the merged model as one GGUF file with tokenizer and chat template, plus an
                Ollama Modelfile beside it (see engine/export/gguf.py for families and layout)

A run folder is what `engine.training.loop.run` writes: adapter/ and run.json (whose "config" holds the
TrainConfig). Every format function logs one line per stage through `log`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from engine.models.estimate import human_bytes
from engine.export.adapter import export_adapter
from engine.export.bnb import export_bnb4, export_bnb8
from engine.export.card import model_card
from engine.export.gguf import (check_supported, export_gguf_f16, export_gguf_q4_0,
                                export_gguf_q8_0, gguf_name, rope_permute, write_gguf)
from engine.export.merged import export_merged, load_merged
from engine.export.ollama import chat_style, modelfile, write_modelfile
from engine.export.run import (Artifact, ExportError, ExportResult, Log, Run, check_mergeable,
                               read_run)
from engine.export.verify import (TOLERANCES, VERIFY_MAX_NEW_TOKENS, VERIFY_PROMPTS,
                                  verification_line, verify_export)

__all__ = ["FORMATS", "export", "export_model", "ExportError", "ExportResult", "Artifact", "Run", "read_run",
           "check_mergeable", "load_merged", "model_card", "write_gguf", "check_supported",
           "gguf_name", "rope_permute", "write_modelfile", "modelfile", "chat_style",
           "export_adapter", "export_merged", "export_bnb4", "export_bnb8", "export_gguf_f16",
           "export_gguf_q8_0", "export_gguf_q4_0", "verify_export", "verification_line",
           "TOLERANCES", "VERIFY_PROMPTS", "VERIFY_MAX_NEW_TOKENS"]

FORMATS: dict[str, Callable[[Run, Path, Log], list[Path]]] = {
    "adapter": export_adapter, "merged": export_merged, "bnb4": export_bnb4, "bnb8": export_bnb8,
    "gguf-f16": export_gguf_f16, "gguf-q8_0": export_gguf_q8_0, "gguf-q4_0": export_gguf_q4_0}


def export(run_dir: str | Path, fmt: str, out: str | Path | None = None,
           log: Log = print, verify: bool = True, **verify_options) -> ExportResult:
    """Export the run in run_dir as fmt into out (default run_dir/exports/<fmt>/), then verify
    the files against the tuned model (engine/export/verify.py; verify=False skips it and the
    record says so). verify_options: prompts, max_new_tokens."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    run = read_run(run_dir)
    if fmt != "adapter":
        check_mergeable(run, fmt)
    target = Path(out) if out is not None else run.run_dir / "exports" / fmt
    return _export(run, fmt, target, log, verify, verify_options)


def export_model(folder: str | Path, fmt: str, out: str | Path, log: Log = print,
                 verify: bool = True, **verify_options) -> ExportResult:
    """Export a model folder that no run made (a pruned or imported base) as fmt into out,
    verified against the folder's own model, as a full fine-tuning run's would be."""
    if fmt not in FORMATS or fmt == "adapter":
        formats = ", ".join(f for f in FORMATS if f != "adapter")
        raise ExportError(f"a model folder exports as {formats}, not {fmt!r}")
    folder = Path(folder)
    run = Run(folder, folder, str(folder), "full", {})
    return _export(run, fmt, Path(out), log, verify, verify_options)


def _export(run: Run, fmt: str, target: Path, log: Log, verify: bool, verify_options
            ) -> ExportResult:
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    log(f"export {fmt}: {run.method} run on {run.base} -> {target}")
    status = run.record.get("status")
    if status not in (None, "completed"):
        log(f"export {fmt}: note: the run's status is {status!r}; exporting its last saved adapter")
    try:
        paths = FORMATS[fmt](run, target, log)
    except BaseException:
        if created and target.is_dir() and not any(target.iterdir()):
            target.rmdir()   # leave no empty folder behind a failed export
        raise
    log(f"export {fmt}: wrote {len(paths)} file(s)")
    record = _verify(run, fmt, target, log, verify, verify_options)
    paths = [p for p in paths if p.name != "verify.json"] + [target / "verify.json"]
    result = ExportResult(fmt, target, [Artifact(p, p.stat().st_size) for p in paths], record)
    log(f"export {fmt}: done, {len(paths)} file(s), {human_bytes(result.total_bytes)}")
    return result


def _verify(run: Run, fmt: str, target: Path, log: Log, verify: bool, options) -> dict:
    """The verification record: the check's, "skipped" when not asked for, or the reason it
    could not run (an export that cannot be checked is kept, marked unverified)."""
    from engine.export.verify import error_record, skipped_record

    if not verify:
        log(f"export {fmt}: not verified (--no-verify)")
        return skipped_record(fmt, target)
    try:
        return verify_export(run, fmt, target, log, **options)
    except Exception as exc:  # noqa: BLE001 - the files stand; the record says why unchecked
        log(f"verify {fmt}: the check could not run: {type(exc).__name__}: {exc}")
        return error_record(fmt, target, exc)
