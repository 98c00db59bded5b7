"""Base models from GGUF files (the llama.cpp / Ollama format): dequantized into a safetensors
folder under FTSTUDIO_HOME/models that every method can fine-tune.

Use from Python (`ftstudio models import FILE.gguf` and the studio's Train tab call this):
    from engine.models.gguf_import import import_gguf
    m = import_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")     # -> FTSTUDIO_HOME/models/smollm2-...
    print(m.folder, m.model_type, m.quantization, m.params)   # then model.name: <m.folder>

What it does:
  1. reads the file's header itself (no tensor data) and refuses, before loading anything, a
     file that is not GGUF, a split file, an architecture transformers cannot load as a causal
     LM, a tensor type that cannot be dequantized, or a tokenizer kind transformers cannot build;
     each a GGUFImportError naming what is supported (transformers' and gguf's own lists);
  2. loads it with transformers' GGUF loader (`from_pretrained(folder, gguf_file=name)` with
     `GgufConfig(dequantize=True)`: transformers 5.x would otherwise keep quantized blocks packed
     when the `kernels` package is there, and such a model can neither be saved nor trained),
     never with remote code, in float32 on CPU;
  3. writes config.json, model.safetensors, the tokenizer and its chat template (the file's
     `tokenizer.chat_template`), a README.md model card (file name, sha256, quantization types,
     parameter count, date, and that the weights are an approximation of the original model)
     and ftstudio-source.json (the same facts for programs; engine.models.catalog reads it to label the
     model "Imported from GGUF") into a hidden temporary folder beside the target, and renames
     it into place: a failed import leaves nothing behind.

Why float32: dequantizing computes each weight as a float16 block scale times a small integer
(plus an offset for some types); float32 holds that exactly, where bfloat16 would round it a
second time. It costs 4 bytes a parameter on disk (a 7B model: about 28 GB), and two to three
times that in RAM while importing (measured: 1.5 GB peak for a 135M model). Training loads the
folder in model.dtype (auto: bfloat16 on recent GPUs), so disk is the only lasting cost.

About 630 lines: most of it is the header reader of step 1, which refuses a bad file before
anything loads; it has no other use, so it stays beside the import it guards.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import shutil
import struct
import tempfile
import textwrap
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from engine.models.catalog import SOURCE_FILE, human_count

Log = Callable[[str], None]
MAGIC = b"GGUF"

#: general.architecture as GGUF files spell it -> transformers' model_type, where they differ
#: (the renames transformers' own loader makes, modeling_gguf_pytorch_utils.load_gguf_checkpoint)
_FILE_TO_HF = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss",
               "minimax-m2": "minimax_m2"}
_HF_TO_FILE = {v: k for k, v in _FILE_TO_HF.items()}
#: names a model cannot take: the demo model's folder
RESERVED_NAMES = {"demo"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class GGUFImportError(ValueError):
    """A GGUF file that cannot be imported, or a name that cannot be used; the message says
    why and what to do instead."""


@dataclass
class ImportedModel:
    """What import_gguf made."""

    folder: Path                  # FTSTUDIO_HOME/models/NAME: use it as model.name
    name: str
    architecture: str             # transformers' class, e.g. LlamaForCausalLM
    model_type: str               # e.g. llama
    gguf_architecture: str        # general.architecture in the file, e.g. llama
    quantization: list[str]       # tensor types in the file, most parameters first: Q4_1, ...
    file_type: str | None         # general.file_type as llama.cpp names it, e.g. MOSTLY_Q4_1
    params: int                   # parameters of the saved model (tied weights counted once)
    source: Path                  # the GGUF file
    sha256: str
    size_bytes: int
    chat_template: bool           # the tokenizer has a chat template
    seconds: float = 0.0          # how long the import took
    tensor_types: dict[str, int] = field(default_factory=dict)  # type -> number of tensors

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["folder"], d["source"] = str(self.folder), str(self.source)
        return d


# --------------------------------------------------------------------------- the header


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]       # as ggml stores it (fastest-moving dimension first)
    type_id: int

    @property
    def elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class Header:
    version: int
    metadata: dict[str, Any]     # scalars and strings; arrays as their length
    tensors: list[Tensor]


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}


def read_header(path: str | Path) -> Header:
    """The metadata and tensor table of a GGUF file, read without touching tensor data (and
    without the gguf package, which refuses a file holding a tensor type it does not know
    before we could name it). GGUFImportError for anything that is not a readable GGUF file."""
    path = Path(path)
    if not path.exists():
        raise GGUFImportError(f"{path}: no such file")
    if path.is_dir():
        raise GGUFImportError(f"{path} is a folder, not a GGUF file")
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != MAGIC:
                raise GGUFImportError(f"{path.name} is not a GGUF file (it does not start with "
                                      "the GGUF magic bytes); pass a .gguf file from llama.cpp, "
                                      "Ollama or the Hugging Face hub")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as blob:
                return _parse(blob, path)
    except GGUFImportError:
        raise
    except (struct.error, UnicodeDecodeError, IndexError, OverflowError, ValueError,
            MemoryError) as exc:
        raise GGUFImportError(f"{path.name} starts like a GGUF file but its header cannot be "
                              f"read ({type(exc).__name__}: {exc}); the file may be truncated "
                              "or damaged: download it again") from None
    except OSError as exc:
        raise GGUFImportError(f"{path}: cannot be read ({exc})") from None


def _parse(blob, path: Path) -> Header:
    size = len(blob)
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", blob, 4)
    if version not in (2, 3):
        raise GGUFImportError(f"{path.name} is GGUF version {version}; only versions 2 and 3 "
                              "are read (convert it again with a current llama.cpp)")
    if n_tensors > size or n_kv > size:
        raise ValueError(f"{n_tensors} tensors and {n_kv} metadata keys in {size} bytes")
    pos = 24

    def string(pos: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", blob, pos)
        if pos + 8 + n > size:
            raise ValueError("a string runs past the end of the file")
        return blob[pos + 8: pos + 8 + n].decode("utf-8"), pos + 8 + n

    def value(kind: int, pos: int) -> tuple[Any, int]:
        if kind in _SCALARS:
            return struct.unpack_from(_SCALARS[kind], blob, pos)[0], \
                pos + struct.calcsize(_SCALARS[kind])
        if kind == 8:
            return string(pos)
        if kind == 9:
            inner, count = struct.unpack_from("<IQ", blob, pos)
            pos += 12
            if inner in _SCALARS:   # skipped whole: only the length is kept
                width = struct.calcsize(_SCALARS[inner])
                if pos + count * width > size:
                    raise ValueError("an array runs past the end of the file")
                return count, pos + count * width
            for _ in range(count):
                _, pos = value(inner, pos)
            return count, pos
        raise ValueError(f"unknown metadata value type {kind}")

    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key, pos = string(pos)
        (kind,) = struct.unpack_from("<I", blob, pos)
        metadata[key], pos = value(kind, pos + 4)
    tensors = []
    for _ in range(n_tensors):
        name, pos = string(pos)
        (n_dims,) = struct.unpack_from("<I", blob, pos)
        if n_dims > 8:
            raise ValueError(f"tensor {name!r} has {n_dims} dimensions")
        dims = struct.unpack_from(f"<{n_dims}Q", blob, pos + 4)
        pos += 4 + 8 * n_dims
        type_id, _offset = struct.unpack_from("<IQ", blob, pos)
        pos += 12
        tensors.append(Tensor(name, tuple(dims), type_id))
    return Header(version, metadata, tensors)


def type_name(type_id: int) -> str:
    """Q4_1 for ggml type 3; 'type 99' for an id this gguf package does not know."""
    import gguf

    try:
        return gguf.GGMLQuantizationType(type_id).name
    except ValueError:
        return f"type {type_id}"


def file_type_name(header: Header) -> str | None:
    ft = header.metadata.get("general.file_type")
    if not isinstance(ft, int):
        return None
    import gguf

    try:
        return gguf.LlamaFileType(ft).name
    except ValueError:
        return f"file type {ft}"


# --------------------------------------------------------------------------- what loads


def _new_loader_archs() -> set[str]:
    """Architectures transformers 5.x loads through its own GGUF reader (integrations.gguf)."""
    try:
        from transformers.integrations.gguf.gguf_conversion_mapping import GGUF_ARCHS
    except ImportError:
        return set()
    return set(GGUF_ARCHS)


@lru_cache(maxsize=1)
def _legacy_causal_archs() -> frozenset[str]:
    """transformers' GGUF_SUPPORTED_ARCHITECTURES that are causal LMs (its list also holds the
    metadata prefixes 'general' and 'tokenizer', and encoder-decoder T5s)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:  # pragma: no cover - older transformers: the integration's own list
        from transformers.integrations.ggml import GGUF_CONFIG_MAPPING as GGUF_SUPPORTED_ARCHITECTURES
    return frozenset(a for a in GGUF_SUPPORTED_ARCHITECTURES
                     if a in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def supported_architectures() -> list[str]:
    """general.architecture values (as GGUF files spell them) that import: read from the
    installed transformers."""
    return sorted(_new_loader_archs() | {_HF_TO_FILE.get(a, a) for a in _legacy_causal_archs()})


def architecture_supported(arch: str) -> bool:
    return arch in _new_loader_archs() or _FILE_TO_HF.get(arch, arch) in _legacy_causal_archs()


def supported_types(arch: str) -> list[str]:
    """The tensor types transformers can dequantize for this architecture: its own dequantizer
    for the architectures of its new loader, the gguf package's for the others."""
    if arch in _new_loader_archs():
        try:
            from transformers.integrations.gguf.dequant import GGML_NAME
            return sorted({"F32", "F16", "BF16", *GGML_NAME.values()}, key=_type_order)
        except ImportError:  # pragma: no cover
            pass
    return list(_gguf_dequantizable())


@lru_cache(maxsize=1)
def _gguf_dequantizable() -> tuple[str, ...]:
    """Every ggml type gguf.quants.dequantize handles, found by asking it for one block."""
    import gguf
    import numpy as np

    ok = []
    for t in gguf.GGMLQuantizationType:
        sizes = gguf.GGML_QUANT_SIZES.get(t)
        if sizes is None:
            continue
        try:
            gguf.quants.dequantize(np.zeros((1, sizes[1]), dtype=np.uint8), t)
        except Exception:  # noqa: BLE001 - NotImplementedError, or a type it cannot shape
            continue
        ok.append(t.name)
    return tuple(sorted(ok, key=_type_order))


def _type_order(name: str) -> tuple[int, str]:
    return (0 if name.startswith(("F", "BF")) else 1, name)


def _tokenizer_kinds() -> list[str] | None:
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_TYPES
    except ImportError:  # pragma: no cover - transformers' own error is wrapped instead
        return None
    return sorted(GGUF_TOKENIZER_TYPES)


def check_header(header: Header, path: Path) -> None:
    """Every reason the file cannot import, found before any tensor is read."""
    meta = header.metadata
    if int(meta.get("split.count", 1) or 1) > 1:
        raise GGUFImportError(
            f"{path.name} is part {int(meta.get('split.no', 0)) + 1} of a GGUF split into "
            f"{meta['split.count']} files; merge them first with llama.cpp's "
            "`llama-gguf-split --merge FIRST.gguf merged.gguf` and import merged.gguf")
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise GGUFImportError(f"{path.name} has no general.architecture in its metadata, so "
                              "it is not a model file transformers can load")
    if not architecture_supported(arch):
        raise GGUFImportError(
            f"{path.name}: GGUF architecture {arch!r} cannot be imported; transformers "
            f"loads these GGUF architectures as causal language models: "
            f"{', '.join(supported_architectures())}")
    if not header.tensors:
        raise GGUFImportError(f"{path.name} holds no tensors (a vocabulary-only file?); "
                              "import a file with the model's weights")
    ok = set(supported_types(arch))
    bad = Counter(type_name(t.type_id) for t in header.tensors if type_name(t.type_id) not in ok)
    if bad:
        found = ", ".join(f"{n} ({c} tensor{'s' if c != 1 else ''})" for n, c in bad.items())
        raise GGUFImportError(
            f"{path.name} holds tensors of a type that cannot be dequantized here: {found}; "
            f"supported types: {', '.join(supported_types(arch))}. Re-quantize it with "
            "llama.cpp's llama-quantize to one of those (e.g. Q8_0 or Q4_K_M)")
    kind = meta.get("tokenizer.ggml.model")
    if kind is None:
        raise GGUFImportError(f"{path.name} carries no tokenizer (no tokenizer.ggml.model); "
                              "a model needs its tokenizer to be fine-tuned")
    kinds = _tokenizer_kinds()
    if kinds is not None and kind not in kinds:
        raise GGUFImportError(f"{path.name}: tokenizer kind {kind!r} cannot be rebuilt by "
                              f"transformers; it builds: {', '.join(kinds)}")


def quantization_summary(header: Header) -> tuple[list[str], dict[str, int]]:
    """(types by parameters held, most first; {type: tensor count})."""
    elements: Counter = Counter()
    counts: Counter = Counter()
    for t in header.tensors:
        elements[type_name(t.type_id)] += t.elements
        counts[type_name(t.type_id)] += 1
    order = [name for name, _ in elements.most_common()]
    return order, {name: counts[name] for name in order}


# --------------------------------------------------------------------------- names


def default_name(path: str | Path) -> str:
    """The file stem as a folder name: SmolLM2-135M-Instruct.Q4_1.gguf ->
    smollm2-135m-instruct-q4_1."""
    stem = Path(path).name
    if stem.lower().endswith(".gguf"):
        stem = stem[:-5]
    slug = re.sub(r"[^a-z0-9_-]+", "-", stem.lower()).strip("-_")[:59].strip("-_")
    slug = slug or "gguf-model"
    return f"{slug}-gguf" if slug in RESERVED_NAMES else slug


def check_name(name: str) -> str:
    name = str(name).strip()
    if not _NAME.fullmatch(name):
        raise GGUFImportError(f"model name {name!r} cannot be a folder name: use up to 64 "
                              "letters, digits, '.', '_' or '-', starting with a letter or digit")
    if name.lower() in RESERVED_NAMES:
        raise GGUFImportError(f"{name!r} is the demo model's folder; pick another name")
    return name


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- the import


def import_gguf(path: str | Path, name: str | None = None, *, models_dir: str | Path | None = None,
                overwrite: bool = False, log: Log = print) -> ImportedModel:
    """Import one GGUF file as the model folder models_dir/NAME (default: FTSTUDIO_HOME/models
    and the file stem, slugged). An existing NAME is an error unless overwrite, which replaces
    it only once the new folder is complete."""
    from engine.models import catalog

    started = time.monotonic()
    src = Path(path).expanduser()
    header = read_header(src)
    check_header(header, src)
    name = check_name(name) if name else default_name(src)
    root = Path(models_dir) if models_dir is not None else catalog.models_dir()
    target = root / name
    if target.exists() and not overwrite:
        raise GGUFImportError(_taken(name, root))
    arch = header.metadata["general.architecture"]
    types, type_counts = quantization_summary(header)
    log(f"gguf import: {src.name}: {arch} architecture, {len(header.tensors)} tensors "
        f"({', '.join(f'{t} x{c}' for t, c in type_counts.items())})")
    size = src.stat().st_size
    digest = sha256_file(src)
    log(f"gguf import: sha256 {digest}")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".import-{name}-", dir=root))  # hidden: not listed
    try:
        model, tokenizer = _load(src, header, log)
        params = sum(p.numel() for p in model.parameters())
        log(f"gguf import: {human_count(params)} parameters; writing float32 safetensors")
        model.save_pretrained(tmp)          # transformers 5 writes safetensors only
        tokenizer.save_pretrained(tmp)
        if not list(tmp.glob("*.safetensors")):
            raise GGUFImportError(f"transformers wrote no *.safetensors file for {src.name}")
        info = ImportedModel(
            folder=target, name=name,
            architecture=(getattr(model.config, "architectures", None) or
                          [type(model).__name__])[0],
            model_type=str(model.config.model_type), gguf_architecture=arch,
            quantization=types, file_type=file_type_name(header), params=params,
            source=src.resolve(), sha256=digest, size_bytes=size,
            chat_template=bool(getattr(tokenizer, "chat_template", None)),
            tensor_types=type_counts)
        del model
        info.seconds = round(time.monotonic() - started, 1)
        (tmp / "README.md").write_text(model_card(info, header), encoding="utf-8")
        (tmp / SOURCE_FILE).write_text(json.dumps(_source_record(info, header), indent=2) + "\n",
                                       encoding="utf-8")
        _move_into_place(tmp, target, overwrite, name, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"gguf import: {name} ready in {info.seconds:.1f} s at {target} "
        f"(use it as model.name: {target})")
    return info


def _taken(name: str, root: Path) -> str:
    return (f"a model named {name!r} already exists in {root}; choose another name "
            f"(`ftstudio models import FILE --name {name}-2`) or replace it (`--force`)")


def _load(src: Path, header: Header, log: Log):
    """The dequantized float32 model and its tokenizer, from transformers' GGUF loader."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder = str(src.parent)
    errors = (ValueError, KeyError, TypeError, NotImplementedError, RuntimeError)
    log("gguf import: loading and dequantizing with transformers (takes a while for big files)")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=src.name, dtype=torch.float32,
            quantization_config=GgufConfig(dequantize=True), trust_remote_code=False,
            device_map=None)
    except errors as exc:
        raise GGUFImportError(f"transformers could not load {src.name}: {exc}") from None
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:   # the weights are plain tensors now: forget the GGUF origin
        quantizer.remove_quantization_config(model)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    packed = [n for n, m in model.named_modules() if type(m).__name__.startswith("Gguf")]
    if packed:
        raise GGUFImportError(f"transformers kept {len(packed)} layers of {src.name} packed "
                              f"(e.g. {packed[0]}); they cannot be saved for training")
    model.config.use_cache = True
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=src.name,
                                                  trust_remote_code=False)
    except errors as exc:
        raise GGUFImportError(f"transformers could not build the tokenizer of {src.name}: "
                              f"{exc}") from None
    template = _chat_template(header)
    if template:
        tokenizer.chat_template = template
    max_len = getattr(model.config, "max_position_embeddings", None)
    if isinstance(max_len, int) and max_len > 0:
        tokenizer.model_max_length = max_len
    for key in ("local_files_only", "is_local"):   # loading flags, not settings of the model
        getattr(tokenizer, "init_kwargs", {}).pop(key, None)
    return model, tokenizer


def _chat_template(header: Header) -> str | None:
    template = header.metadata.get("tokenizer.chat_template")
    return template if isinstance(template, str) and template.strip() else None


def _move_into_place(tmp: Path, target: Path, overwrite: bool, name: str, root: Path) -> None:
    old = None
    if target.exists() or target.is_symlink():
        if not overwrite:   # appeared while this import ran
            raise GGUFImportError(_taken(name, root))
        old = target.with_name(f".replaced-{name}-{os.getpid()}-{time.time_ns()}")
        target.rename(old)
    try:
        tmp.rename(target)
    except OSError:
        if old is not None:
            old.rename(target)
        if target.exists():
            raise GGUFImportError(_taken(name, root)) from None
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the card


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("transformers", "gguf", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "?"
    return out


def _source_record(info: ImportedModel, header: Header) -> dict[str, Any]:
    meta = header.metadata
    return {
        "kind": "gguf",
        "file": info.source.name,
        "path": str(info.source),
        "sha256": info.sha256,
        "size_bytes": info.size_bytes,
        "gguf_version": header.version,
        "gguf_architecture": info.gguf_architecture,
        "model_type": info.model_type,
        "architecture": info.architecture,
        "general_name": meta.get("general.name"),
        "license": meta.get("general.license"),
        "quantization": info.quantization,
        "main_quantization": main_quantization(info.quantization),
        "file_type": info.file_type,
        "tensor_types": info.tensor_types,
        "params": info.params,
        "dtype": "float32",
        "chat_template": info.chat_template,
        "imported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "import_seconds": info.seconds,
        "versions": _versions(),
    }


def main_quantization(types: list[str]) -> str | None:
    """The type most parameters are stored in (Q4_1 for a Q4_1 file with F32 norms)."""
    return types[0] if types else None


def model_card(info: ImportedModel, header: Header) -> str:
    meta = header.metadata
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    main = main_quantization(info.quantization) or "?"
    floats = all(t in ("F32", "F16", "BF16", "F64") for t in info.quantization)
    license_ = meta.get("general.license")
    front = ["---", "library_name: transformers", "tags:", "- ftstudio", "- gguf-import"]
    if isinstance(license_, str) and license_:
        front.append(f"license: {license_}")
    front.append("---")
    types = ", ".join(f"{t} ({c} tensor{'s' if c != 1 else ''})"
                      for t, c in info.tensor_types.items())
    general = " · ".join(str(meta[k]) for k in ("general.name", "general.organization")
                         if isinstance(meta.get(k), str) and meta.get(k))
    rows = [
        ("source file", f"`{info.source.name}` ({info.size_bytes:,} bytes)"),
        ("sha256", f"`{info.sha256}`"),
        ("model named in the file", general or "(none)"),
        ("architecture", f"{info.gguf_architecture} (GGUF) → {info.architecture} "
                         f"(model_type `{info.model_type}`)"),
        ("quantization", f"{main}; all tensor types: {types}"
                         + (f"; file type {info.file_type}" if info.file_type else "")),
        ("parameters", f"{info.params:,} ({human_count(info.params)})"),
        ("weights here", "float32 safetensors (dequantized on CPU)"),
        ("chat template", "from the file's tokenizer.chat_template" if info.chat_template
         else "none in the file: ftstudio's default template is used for chat data"),
        ("license in the file", license_ if isinstance(license_, str) and license_ else
         "(not stated; check the model's original licence)"),
        ("imported", f"{date} by ftstudio (transformers {_versions()['transformers']}, "
                     f"gguf {_versions()['gguf']})"),
    ]
    table = "\n".join(["| | |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows])
    if floats:
        caveat = (f"The file stored its weights as {main} floats; they are kept exactly here, "
                  "but a GGUF is a conversion: if the original model was trained in another "
                  "precision, these weights are an approximation of it, rounded to "
                  f"{main}.")
    else:
        caveat = (f"The file stored its weights quantized ({main}): each block of weights kept "
                  "only a few bits per value and a scale. Dequantizing gives back exactly the "
                  "values llama.cpp computes with, not the original model's weights: what the "
                  "quantization rounded away is lost, so these float32 weights are an "
                  "approximation of the original model, and a fine-tune starts from that "
                  "approximation. When the original (unquantized) model is available, "
                  "fine-tune that instead.")
    return "\n".join(front) + f"""

# {info.name}

Imported by ftstudio (engine/models/gguf_import.py) from the GGUF file `{info.source.name}`.

{table}

## These weights are an approximation of the original model

{textwrap.fill(caveat, 96)}

Use it as a base model: `--set model.name={info.folder}` (or pick it in the studio's model list,
where it shows as "Imported from GGUF"). `{SOURCE_FILE}` holds the same facts for programs.
"""
