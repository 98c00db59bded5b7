"""Export a finished run for use elsewhere: the adapter, a merged model, a bitsandbytes-quantized
model, or a GGUF file for llama.cpp and Ollama.

Use from Python:
    from engine.export import export, FORMATS
    result = export("studio-data/jobs/7", "gguf-q8_0", log=print)   # -> run_dir/exports/gguf-q8_0/
    for artifact in result.artifacts:
        print(artifact.path, artifact.bytes)

Run as: ftstudio export JOB --format merged [--out PATH]      (JOB: a job id or a run folder)

Each format is one function of the same shape, `fmt(run, out, log) -> list[Path]`, listed in
FORMATS; `export()` reads the run folder, calls it and measures what it wrote:

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
                Ollama Modelfile beside it (see engine/export_gguf.py for families and layout)

A run folder is what `engine.train.run` writes: adapter/ and run.json (whose "config" holds the
TrainConfig). Every format function logs one line per stage through `log`.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine.config import VIRTUAL_TOKEN_METHODS
from engine.estimate import human_bytes

Log = Callable[[str], None]


class ExportError(ValueError):
    """An export that cannot be made; the message says why and what can be exported instead."""


@dataclass(frozen=True)
class Artifact:
    path: Path
    bytes: int


@dataclass
class ExportResult:
    """What one export wrote: every file with its size in bytes."""

    fmt: str
    out_dir: Path
    artifacts: list[Artifact] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(a.bytes for a in self.artifacts)

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.fmt, "out_dir": str(self.out_dir), "total_bytes": self.total_bytes,
                "artifacts": [{"path": str(a.path), "bytes": a.bytes} for a in self.artifacts]}


@dataclass
class Run:
    """A finished run folder, as the export functions need it."""

    run_dir: Path
    adapter_dir: Path
    base: str                      # base model: hub id or local folder
    method: str                    # TrainConfig method.kind
    record: dict[str, Any]         # run.json ({} when the folder has none)

    @property
    def config(self) -> dict[str, Any]:
        return self.record.get("config") or {}

    @property
    def model_options(self) -> dict[str, Any]:
        m = self.config.get("model") or {}
        opts = {"trust_remote_code": bool(m.get("trust_remote_code", False))}
        if m.get("revision") and not Path(self.base).is_dir():
            opts["revision"] = m["revision"]
        return opts


def read_run(run_dir: str | Path) -> Run:
    """The run in run_dir: its adapter folder, base model and method (from run.json, else from
    the adapter's own files)."""
    root = Path(run_dir)
    adapter = root / "adapter"
    if not adapter.is_dir():
        found = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
        raise ExportError(f"{root} is not a finished run folder: it has no adapter/ "
                          f"(found: {', '.join(found) or 'nothing'}). Export a run after training "
                          "has finished, or pass the folder that holds adapter/ and run.json.")
    record: dict[str, Any] = {}
    if (root / "run.json").is_file():
        record = json.loads((root / "run.json").read_text(encoding="utf-8"))
    cfg = record.get("config") or {}
    peft_cfg = _read_json(adapter / "adapter_config.json")
    method = (cfg.get("method") or {}).get("kind") or _method_from_adapter(peft_cfg, adapter)
    base = (cfg.get("model") or {}).get("name") or peft_cfg.get("base_model_name_or_path")
    if method == "full":
        base = base or str(adapter)
    if not base:
        raise ExportError(f"{root}: cannot tell the base model (run.json has no config.model.name "
                          "and adapter_config.json no base_model_name_or_path)")
    return Run(root, adapter, str(base), method, record)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _method_from_adapter(peft_cfg: dict[str, Any], adapter: Path) -> str:
    kind = str(peft_cfg.get("peft_type", "")).lower()
    if kind == "lora":
        return "dora" if peft_cfg.get("use_dora") else "lora"
    if kind in ("prompt_tuning", "prefix_tuning", "ia3"):
        return kind
    if not peft_cfg and (adapter / "config.json").is_file():
        return "full"
    raise ExportError(f"{adapter}: unknown adapter type {kind or '(none)'}")


# --------------------------------------------------------------------------- the formats


def export_adapter(run: Run, out: Path, log: Log) -> list[Path]:
    """The adapter folder as trained, a README card inside it, and a zip of the folder."""
    folder = out / "adapter"
    log(f"adapter: copying {run.adapter_dir}")
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(run.adapter_dir, folder)
    card = folder / "README.md"
    card.write_text(model_card(run, "adapter"), encoding="utf-8")
    zip_path = out / f"{_slug(run)}-adapter.zip"
    log(f"adapter: zipping into {zip_path.name}")
    part = zip_path.with_name(zip_path.name + ".part")
    with zipfile.ZipFile(part, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():   # weights barely compress: store them, deflate the rest
                kind = zipfile.ZIP_STORED if path.suffix == ".safetensors" else None
                zf.write(path, path.relative_to(folder).as_posix(), compress_type=kind)
    part.replace(zip_path)
    return _files(folder) + [zip_path]


def export_merged(run: Run, out: Path, log: Log) -> list[Path]:
    """The adapter merged into the base, in the base's dtype, as a from_pretrained folder."""
    check_mergeable(run, "merged")
    if run.method == "full":
        log(f"merged: full fine-tuning, copying the trained model from {run.adapter_dir}")
        for path in _files(run.adapter_dir):
            shutil.copy2(path, out / path.name)
    else:
        dtype = _saved_dtype(run)
        model, tokenizer = load_merged(run, log)
        log(f"merged: saving safetensors ({str(dtype).removeprefix('torch.')}) with the tokenizer")
        model.to(dtype).save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
    (out / "README.md").write_text(model_card(run, "merged"), encoding="utf-8")
    return _files(out)


def export_bnb4(run: Run, out: Path, log: Log) -> list[Path]:
    """The merged model as NF4 with double quantization (bitsandbytes), saved pre-quantized."""
    return _export_bnb(run, out, log, bits=4)


def export_bnb8(run: Run, out: Path, log: Log) -> list[Path]:
    """The merged model as LLM.int8 (bitsandbytes), saved pre-quantized."""
    return _export_bnb(run, out, log, bits=8)


def export_gguf_f16(run: Run, out: Path, log: Log) -> list[Path]:
    """GGUF with 16-bit float weights (norms and biases float32): the reference for llama.cpp."""
    return _export_gguf(run, out, log, "f16")


def export_gguf_q8_0(run: Run, out: Path, log: Log) -> list[Path]:
    """GGUF with 8-bit block quantization (Q8_0): near-lossless, about half of f16."""
    return _export_gguf(run, out, log, "q8_0")


def export_gguf_q4_0(run: Run, out: Path, log: Log) -> list[Path]:
    """GGUF with 4-bit block quantization (Q4_0; the output matrix stays Q8_0)."""
    return _export_gguf(run, out, log, "q4_0")


FORMATS: dict[str, Callable[[Run, Path, Log], list[Path]]] = {
    "adapter": export_adapter, "merged": export_merged, "bnb4": export_bnb4, "bnb8": export_bnb8,
    "gguf-f16": export_gguf_f16, "gguf-q8_0": export_gguf_q8_0, "gguf-q4_0": export_gguf_q4_0}


def export(run_dir: str | Path, fmt: str, out: str | Path | None = None,
           log: Log = print) -> ExportResult:
    """Export the run in run_dir as fmt into out (default run_dir/exports/<fmt>/)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    run = read_run(run_dir)
    if fmt != "adapter":
        check_mergeable(run, fmt)
    target = Path(out) if out is not None else run.run_dir / "exports" / fmt
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
    result = ExportResult(fmt, target, [Artifact(p, p.stat().st_size) for p in paths])
    log(f"export {fmt}: done, {len(paths)} file(s), {human_bytes(result.total_bytes)}")
    return result


# --------------------------------------------------------------------------- shared steps


def check_mergeable(run: Run, fmt: str) -> None:
    if run.method in VIRTUAL_TOKEN_METHODS:
        raise ExportError(
            f"{run.method} cannot be exported as {fmt}: it learns virtual tokens that are fed in "
            "front of every input, not a change to the model's weights, so there is nothing to "
            "merge into the base. Export the adapter instead (--format adapter) and load it over "
            f"the base with peft: PeftModel.from_pretrained(base, adapter_folder).")


def load_merged(run: Run, log: Log):
    """(merged model in float32 on CPU, tokenizer with the chat template used in training)."""
    import torch
    from transformers import AutoModelForCausalLM

    check_mergeable(run, "a merged model")
    if run.method == "full":
        log(f"merged: loading the fully fine-tuned model from {run.adapter_dir}")
        model = AutoModelForCausalLM.from_pretrained(run.adapter_dir, dtype=torch.float32,
                                                     use_safetensors=True, **run.model_options)
    else:
        from peft import PeftModel

        log(f"merged: loading base {run.base} in float32")
        base = AutoModelForCausalLM.from_pretrained(run.base, dtype=torch.float32,
                                                    use_safetensors=True, **run.model_options)
        if run.method == "qlora":
            log("merged: qlora adapter merged into the full-precision base (the quantized base "
                "is only a training-time memory saving)")
        log(f"merged: merging the {run.method} adapter (merge_and_unload)")
        model = PeftModel.from_pretrained(base, run.adapter_dir).merge_and_unload()
    model.eval()
    return model, _tokenizer(run)


def _tokenizer(run: Run):
    from engine.data import ensure_chat_template
    from engine.model import load_tokenizer

    has_own = any((run.adapter_dir / f).is_file() for f in ("tokenizer.json",
                                                             "tokenizer_config.json"))
    source = str(run.adapter_dir) if has_own else run.base
    tokenizer = load_tokenizer(source, None if has_own else run.model_options.get("revision"),
                               run.model_options["trust_remote_code"])
    ensure_chat_template(tokenizer)   # the template training rendered records with
    return tokenizer


def _saved_dtype(run: Run):
    """The dtype the base (or the fully fine-tuned model) was saved in, read from its config
    before loading (loading in float32 rewrites config.dtype), so merged files keep its size."""
    import torch
    from transformers import AutoConfig

    source = run.adapter_dir if run.method == "full" else run.base
    name = AutoConfig.from_pretrained(source, **run.model_options).dtype
    dtype = name if isinstance(name, torch.dtype) else getattr(torch, str(name or ""), None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def _export_bnb(run: Run, out: Path, log: Log, bits: int) -> list[Path]:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from engine.model import default_device

    check_mergeable(run, f"bnb{bits}")
    with tempfile.TemporaryDirectory(prefix=".merged-", dir=out) as tmp:
        dtype = _saved_dtype(run)
        model, tokenizer = load_merged(run, log)
        model.to(dtype).save_pretrained(tmp, safe_serialization=True)
        del model
        if bits == 4:
            quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                       bnb_4bit_use_double_quant=True,
                                       bnb_4bit_compute_dtype=dtype)
        else:
            quant = BitsAndBytesConfig(load_in_8bit=True)
        device = default_device()
        log(f"bnb{bits}: quantizing with bitsandbytes on {device} "
            f"({'NF4, double quantization' if bits == 4 else 'LLM.int8'})")
        qmodel = AutoModelForCausalLM.from_pretrained(
            tmp, quantization_config=quant, device_map={"": device}, dtype=dtype,
            use_safetensors=True)
        log(f"bnb{bits}: saving the quantized model with its quantization_config")
        qmodel.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
    del qmodel
    (out / "README.md").write_text(model_card(run, f"bnb{bits}"), encoding="utf-8")
    return _files(out)


def _export_gguf(run: Run, out: Path, log: Log, qtype: str) -> list[Path]:
    from engine.export_gguf import check_supported, write_gguf, write_modelfile

    check_mergeable(run, f"gguf-{qtype}")
    if (model_type := _model_type(run)) is not None:
        check_supported(model_type)   # before loading anything (write_gguf checks again)
    model, tokenizer = load_merged(run, log)
    path = write_gguf(model, tokenizer, out / f"{_slug(run)}-{qtype}.gguf", qtype,
                      name=_slug(run), log=log)
    modelfile = write_modelfile(tokenizer, path, log=log)
    (out / "README.md").write_text(model_card(run, f"gguf-{qtype}", gguf_name=path.name),
                                   encoding="utf-8")
    return [path, modelfile, out / "README.md"]


def _model_type(run: Run) -> str | None:
    """The model_type from the base's (or full run's) config.json, without loading weights."""
    folder = run.adapter_dir if run.method == "full" else Path(run.base)
    if (folder / "config.json").is_file():
        return _read_json(folder / "config.json").get("model_type")
    return None   # a hub id: checked again once the model is loaded


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def _slug(run: Run) -> str:
    name = Path(run.base.rstrip("/")).name or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") + "-ft"


# --------------------------------------------------------------------------- the card


USAGE = {
    "adapter": ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
                "from peft import PeftModel\n\n"
                "base = AutoModelForCausalLM.from_pretrained(\"{base}\")\n"
                "model = PeftModel.from_pretrained(base, \"path/to/this/folder\")\n"
                "tokenizer = AutoTokenizer.from_pretrained(\"path/to/this/folder\")\n```\n"),
    "merged": ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
               "model = AutoModelForCausalLM.from_pretrained(\"path/to/this/folder\")\n"
               "tokenizer = AutoTokenizer.from_pretrained(\"path/to/this/folder\")\n```\n\n"
               "vLLM: `vllm serve path/to/this/folder`\n"),
    "bnb": ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            "# needs bitsandbytes; loads quantized (quantization_config is in config.json)\n"
            "model = AutoModelForCausalLM.from_pretrained(\"path/to/this/folder\", "
            "device_map=\"auto\")\n```\n"),
    "gguf": ("```bash\nllama-cli -m {gguf_name} -cnv\nollama create my-model -f Modelfile && "
             "ollama run my-model\n```\n"),
}


#: the method settings that matter for each method (shown on the card)
METHOD_KEYS = {"lora": ("r", "alpha", "dropout", "target_modules"),
               "dora": ("r", "alpha", "dropout", "target_modules"),
               "qlora": ("r", "alpha", "dropout", "target_modules", "quant_bits"),
               "ia3": ("target_modules",),
               "prompt_tuning": ("num_virtual_tokens", "prompt_init_text"),
               "prefix_tuning": ("num_virtual_tokens",)}


def model_card(run: Run, fmt: str, gguf_name: str | None = None) -> str:
    """README.md for an export: what it was trained from and on, and how to load it."""
    from engine.demo import is_demo_model

    cfg = run.config
    method, train, data = cfg.get("method") or {}, cfg.get("train") or {}, cfg.get("data") or {}
    lines = [f"# Fine-tuned {Path(run.base).name} ({fmt})", "",
             "Exported by ftstudio.", ""]
    if Path(run.base).is_dir() and is_demo_model(run.base):
        lines += ["**Demo model**: the base is the ftstudio demo model (random weights, offline); "
                  "it knows only what this run taught it.", ""]
    lines += ["| | |", "| --- | --- |", f"| base model | `{run.base}` |",
              f"| method | {run.method} |"]
    hyper = {k: method[k] for k in METHOD_KEYS.get(run.method, ()) if k in method}
    hyper.update({k: train.get(k) for k in ("lr", "epochs", "max_steps", "batch_size",
                                            "grad_accum", "scheduler", "seed") if k in train})
    if "max_seq_len" in data:
        hyper["max_seq_len"] = data["max_seq_len"]
    for key, value in hyper.items():
        lines.append(f"| {key} | {value} |")
    for name, digest in _data_hashes(run.record).items():
        lines.append(f"| data `{name}` sha256 | `{digest}` |")
    metrics = run.record.get("final_metrics") or run.record.get("metrics") or {}
    for key, value in metrics.items():
        if key in ("step", "lr", "grad_norm", "tokens_per_s"):
            continue
        shown = f"{value:.4f}" if isinstance(value, float) else value
        lines.append(f"| final {key} | {shown} |")
    key = "bnb" if fmt.startswith("bnb") else "gguf" if fmt.startswith("gguf") else fmt
    if key == "adapter" and run.method == "full":
        key = "merged"   # full fine-tuning's "adapter" is the whole model
    lines += ["", "## Use", "", USAGE[key].format(base=run.base, gguf_name=gguf_name)]
    if run.method == "qlora" and fmt != "adapter":
        lines += ["Trained as QLoRA: the adapter was merged into the full-precision base, not "
                  "the 4/8-bit base it was trained over.", ""]
    return "\n".join(lines)


def _data_hashes(record: dict[str, Any]) -> dict[str, str]:
    """{data file: sha256} from run.json wherever the trainer keeps them: every 64-hex string
    outside "config", named by the nearest key that is not itself about sha256."""
    found: dict[str, str] = {}

    def visit(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, dict) and len(path) < 4:
            for k, v in node.items():
                visit(v, path + (str(k),))
        elif isinstance(node, str) and re.fullmatch(r"[0-9a-f]{64}", node):
            names = [p for p in path if "sha" not in p.lower() and "hash" not in p.lower()]
            found[Path(names[-1]).name if names else "train"] = node

    visit({k: v for k, v in record.items() if k != "config"}, ())
    return found
