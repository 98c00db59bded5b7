"""The gguf-f16, gguf-q8_0 and gguf-q4_0 formats: GGUF files that llama.cpp and Ollama load,
written with the `gguf` package (the Ollama Modelfile beside them is engine/export/ollama.py).

Use from Python (the gguf-* formats call these with the merged model):
    from engine.export import write_gguf, write_modelfile
    path = write_gguf(model, tokenizer, "out/demo-ft-q8_0.gguf", "q8_0", log=print)
    write_modelfile(tokenizer, path)        # out/Modelfile: FROM ./demo-ft-q8_0.gguf + TEMPLATE

Families (HF model_type -> GGUF architecture): llama and mistral -> "llama", qwen2 -> "qwen2"
(with its q/k/v biases). Anything else is an ExportError naming the architecture.

The layout llama.cpp expects, which this module writes:
  - tensors named token_embd, blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm,
    ffn_gate, ffn_up, ffn_down}, output_norm, output (left out when the embeddings are tied);
    1-D tensors (norms, biases) stay float32, matrices take the file's type (a matrix whose rows
    do not split into the type's 32-value blocks falls back to f16; in q4_0 files the output
    matrix, or the tied embedding, stays q8_0 as llama.cpp's own quantizer keeps it higher).
  - rotary layout: llama.cpp runs the llama architecture with its "normal" rope, which rotates
    adjacent pairs (x[2i], x[2i+1]) of each head; Hugging Face Llama/Mistral weights are laid out
    for rotate_half, which pairs x[i] with x[i + d/2]. So the rows of q_proj and k_proj (and
    their biases) are permuted per head (`rope_permute`, as llama.cpp's convert_hf_to_gguf.py
    does; k with the key/value head count). Qwen2 runs with llama.cpp's NEOX rope, which pairs
    x[i] with x[i + d/2] like HF, so it is written unpermuted. Skipping the permutation gives a
    file that loads without complaint and computes wrong attention: tests/engine/
    test_export_gguf.py runs a numpy forward pass the way llama.cpp computes it to prove this.
  - tokenizer: byte-level BPE as tokenizer.ggml.model "gpt2" with tokens, token types, merges
    and tokenizer.ggml.pre chosen from the tokenizer's pre-tokenizer ("gpt-2" for plain
    ByteLevel, "llama-bpe" for Llama 3's split, "qwen2" for Qwen2's); SentencePiece-style BPE
    with byte fallback (Llama 2, Mistral) as model "llama", each merged token scored by its
    merge rank (llama.cpp merges the best-scoring pair first), with add_space_prefix. Special ids,
    add_bos/add_eos (as the HF tokenizer actually behaves) and the chat template come along.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from engine.export.card import model_card
from engine.export.merged import load_merged
from engine.export.ollama import write_modelfile
from engine.export.run import ExportError, Log, Run, check_mergeable, model_type, slug


@dataclass(frozen=True)
class Family:
    arch: str             # general.architecture in the file
    rope_permute: bool    # llama.cpp runs it with "normal" (adjacent-pair) rope


#: HF config.model_type -> how it is written
FAMILIES: dict[str, Family] = {
    "llama": Family("llama", rope_permute=True),
    "mistral": Family("llama", rope_permute=True),
    "qwen2": Family("qwen2", rope_permute=False),
}

#: the GGUF file types write_gguf makes (gguf.quants can also write q4_1, q5_0, q5_1 and bf16;
#: it cannot write the k-quants such as q4_k_m)
QTYPES = ("f16", "q8_0", "q4_0")

_TOP = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
_BLOCK = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
          "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
          "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)")

#: tokenizer.json Split regexes of known byte-level BPE pre-tokenizers -> tokenizer.ggml.pre
_SPLITS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
    r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
}


def check_supported(model_type: str | None) -> Family:
    """The Family for an HF model_type, or an ExportError naming the architecture."""
    if model_type not in FAMILIES:
        raise ExportError(
            f"GGUF export supports the {', '.join(sorted(FAMILIES))} architectures; this model is "
            f"'{model_type}'. Export --format merged and convert that folder with llama.cpp's "
            "convert_hf_to_gguf.py, which knows more architectures.")
    return FAMILIES[model_type]


def rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder each head's rows from HF's half-split rotary layout to llama.cpp's interleaved
    one: per head, rows [a0..a(d/2-1), b0..b(d/2-1)] become [a0, b0, a1, b1, ...]."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def gguf_name(hf_name: str) -> str:
    """llama.cpp's name for an HF Llama/Mistral/Qwen2 tensor, e.g. model.layers.0.self_attn.
    q_proj.weight -> blk.0.attn_q.weight."""
    stem, _, kind = hf_name.rpartition(".")
    if stem in _TOP:
        return f"{_TOP[stem]}.{kind}"
    m = _LAYER.fullmatch(hf_name)
    if m and m.group(2) in _BLOCK:
        return f"blk.{m.group(1)}.{_BLOCK[m.group(2)]}.{m.group(3)}"
    raise ExportError(f"GGUF export does not know where tensor {hf_name!r} goes in llama.cpp's "
                      "layout; export --format merged and convert with convert_hf_to_gguf.py")


# --------------------------------------------------------------------------- the file


def write_gguf(model, tokenizer, path: str | Path, qtype: str = "f16", name: str = "model",
               log: Log = print) -> Path:
    """Write the (merged, float) HF model and its tokenizer as one GGUF file at path."""
    import gguf

    if qtype not in QTYPES:
        raise ExportError(f"unknown GGUF type {qtype!r}; choose one of: {', '.join(QTYPES)}")
    cfg = model.config
    family = check_supported(getattr(cfg, "model_type", None))
    path = Path(path)
    part = path.with_name(path.name + ".part")
    n_vocab = int(cfg.vocab_size)
    writer = gguf.GGUFWriter(part, family.arch)
    log(f"gguf: {family.arch} architecture, {cfg.num_hidden_layers} blocks, {qtype} weights"
        f"{' (q/k rows permuted for llama.cpp rope)' if family.rope_permute else ''}")
    _add_hparams(writer, cfg, family, qtype, name)
    window = getattr(cfg, "sliding_window", None)
    if window and getattr(cfg, "use_sliding_window", True) and \
            window < cfg.max_position_embeddings:
        log(f"gguf: note: sliding_window={window} is not stored (llama.cpp's {family.arch} "
            f"attends to the whole context), so outputs differ past {window} tokens")
    log(f"gguf: tokenizer ({n_vocab} tokens) and chat template")
    _add_tokenizer(writer, tokenizer, cfg, n_vocab)
    tied = _tied(model)
    for tname, array in _tensors(model, family, tied):
        data, raw = _encode(tname, array, qtype, tied)
        writer.add_tensor(tname, data, raw_dtype=raw)
    for tname, array in _extra_tensors(cfg, family):
        writer.add_tensor(tname, array)
    log(f"gguf: writing {path.name}")
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        part.replace(path)
    finally:
        part.unlink(missing_ok=True)   # only left when writing failed
    return path


def _head_dim(cfg) -> int:
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


def _rope(cfg) -> dict[str, Any]:
    """Rope settings across transformers versions: rope_parameters (5.x) or rope_scaling."""
    rope = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    rope.setdefault("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    rope.setdefault("rope_type", rope.get("type") or "default")
    return rope


def _add_hparams(writer, cfg, family: Family, qtype: str, name: str) -> None:
    import gguf

    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    writer.add_key_length(_head_dim(cfg))
    writer.add_value_length(_head_dim(cfg))
    writer.add_rope_dimension_count(_head_dim(cfg))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    rope = _rope(cfg)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    kind = rope["rope_type"]
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
    elif kind == "llama3" and family.arch == "llama":
        pass  # written as the rope_freqs tensor (_extra_tensors)
    elif kind != "default":
        raise ExportError(f"GGUF export does not handle rope scaling {kind!r} of this "
                          f"{cfg.model_type} model (known: default, linear, yarn, llama3)")
    writer.add_file_type(_file_type(qtype))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _file_type(qtype: str):
    from gguf import LlamaFileType

    return {"f16": LlamaFileType.MOSTLY_F16, "q8_0": LlamaFileType.MOSTLY_Q8_0,
            "q4_0": LlamaFileType.MOSTLY_Q4_0}[qtype]


def _tied(model) -> bool:
    out, emb = model.get_output_embeddings(), model.get_input_embeddings()
    return out is not None and out.weight is emb.weight


def _tensors(model, family: Family, tied: bool) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) for every weight, q/k rows permuted where llama.cpp needs it."""
    cfg = model.config
    n_head = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_head
    for hf_name, tensor in model.state_dict().items():
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue
        array = tensor.detach().to("cpu").float().numpy()
        if family.rope_permute and ".self_attn.q_proj." in hf_name:
            array = rope_permute(array, n_head)
        elif family.rope_permute and ".self_attn.k_proj." in hf_name:
            array = rope_permute(array, n_kv)
        yield gguf_name(hf_name), array


def _extra_tensors(cfg, family: Family) -> Iterator[tuple[str, np.ndarray]]:
    """Llama 3.1-style rope scaling travels as per-frequency factors (rope_freqs.weight)."""
    rope = _rope(cfg)
    if family.arch != "llama" or rope["rope_type"] != "llama3":
        return
    dim, base = _head_dim(cfg), float(rope["rope_theta"])
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factors = []
    for freq in freqs:
        wavelen = 2 * np.pi / freq
        if wavelen < old_ctx / high:
            factors.append(1.0)
        elif wavelen > old_ctx / low:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    yield "rope_freqs.weight", np.asarray(factors, dtype=np.float32)


def _encode(name: str, array: np.ndarray, qtype: str, tied: bool):
    """(data, raw ggml type or None) for one tensor in a qtype file."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
    from gguf.quants import quantize

    if array.ndim == 1:
        return array.astype(np.float32), None
    want = {"f16": T.F16, "q8_0": T.Q8_0, "q4_0": T.Q4_0}[qtype]
    if want == T.Q4_0 and (name == "output.weight" or (tied and name == "token_embd.weight")):
        want = T.Q8_0
    if want != T.F16 and array.shape[-1] % GGML_QUANT_SIZES[want][0]:
        want = T.F16
    if want == T.F16:
        return array.astype(np.float16), None
    return quantize(array, want), want


# --------------------------------------------------------------------------- the tokenizer


def _add_tokenizer(writer, tokenizer, cfg, n_vocab: int) -> None:
    import gguf

    if not getattr(tokenizer, "is_fast", False):
        raise ExportError("GGUF export needs a fast tokenizer (tokenizer.json)")
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    bpe = spec["model"]["type"] == "BPE"
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        cfg.to_json_file(str(Path(tmp) / "config.json"))
        if bpe and not spec["model"].get("byte_fallback"):
            writer.add_tokenizer_model("gpt2")
            writer.add_tokenizer_pre(_bpe_pre(spec))
            tokens, types = _byte_level_vocab(tokenizer, n_vocab)
            writer.add_token_list(tokens)
            writer.add_token_types(types)
            special = gguf.SpecialVocab(tmp, load_merges=True, n_vocab=n_vocab)
        elif bpe:  # SentencePiece-style BPE with byte fallback (Llama 2, Mistral)
            tokens, scores, types = _sentencepiece_vocab(tokenizer, spec, n_vocab)
            writer.add_tokenizer_model("llama")
            writer.add_tokenizer_pre("default")
            writer.add_token_list(tokens)
            writer.add_token_scores(scores)
            writer.add_token_types(types)
            writer.add_add_space_prefix(_adds_space_prefix(spec))
            special = gguf.SpecialVocab(tmp, load_merges=False, n_vocab=n_vocab)
        else:
            raise ExportError(f"GGUF export handles BPE tokenizers; this one is "
                              f"{spec['model']['type']}")
    special.add_special_token.update(_adds_special_tokens(tokenizer))
    if tokenizer.chat_template:
        special.chat_template = tokenizer.chat_template
    special.add_to_gguf(writer, quiet=True)


def _bpe_pre(spec: dict[str, Any]) -> str:
    """tokenizer.ggml.pre for a byte-level BPE tokenizer, from its pre-tokenizer."""
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        if pre.get("add_prefix_space"):
            raise ExportError("GGUF export: llama.cpp's gpt-2 pre-tokenizer adds no prefix space, "
                              "but this tokenizer does (ByteLevel add_prefix_space)")
        return "gpt-2"
    parts = pre.get("pretokenizers") or []
    if (pre.get("type") == "Sequence" and len(parts) == 2 and parts[0].get("type") == "Split"
            and parts[1].get("type") == "ByteLevel" and not parts[1].get("use_regex", True)):
        regex = (parts[0].get("pattern") or {}).get("Regex")
        if regex in _SPLITS:
            return _SPLITS[regex]
    raise ExportError("GGUF export does not recognise this tokenizer's pre-tokenizer, so "
                      "llama.cpp would split text differently; known: GPT-2 ByteLevel, Llama 3 "
                      f"and Qwen2 splits. Found: {json.dumps(pre)[:300]}")


def _byte_level_vocab(tokenizer, n_vocab: int) -> tuple[list[str], list[int]]:
    """Token strings and types in id order, padded to the model's vocab_size."""
    from gguf import TokenType

    if len(tokenizer) > n_vocab:
        raise ExportError(f"the tokenizer has {len(tokenizer)} tokens but the model only "
                          f"{n_vocab} embeddings")
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
            continue
        tokens.append(by_id[i])
        if i in added:
            types.append(TokenType.CONTROL if added[i].special else TokenType.USER_DEFINED)
        else:
            types.append(TokenType.NORMAL)
    return tokens, types


def _sentencepiece_vocab(tokenizer, spec: dict[str, Any], n_vocab: int):
    """Tokens, scores and types for llama.cpp's SentencePiece tokenizer, which merges the
    adjacent pair whose merged token scores highest: each merged token scores -(its merge rank)
    so it merges in the order the BPE merges list gives (the order SentencePiece BPE uses)."""
    from gguf import TokenType

    rank: dict[str, int] = {}
    for i, merge in enumerate(spec["model"].get("merges") or []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(left + right, i)
    if len(tokenizer) > n_vocab:
        raise ExportError(f"the tokenizer has {len(tokenizer)} tokens but the model only "
                          f"{n_vocab} embeddings")
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added, unk = tokenizer.added_tokens_decoder, spec["model"].get("unk_token")
    tokens, scores, types = [], [], []
    for i in range(n_vocab):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            scores.append(-1000.0)
            types.append(TokenType.UNUSED)
            continue
        tokens.append(token)
        scores.append(-float(rank[token]) if token in rank else 0.0)
        if token == unk:
            types.append(TokenType.UNKNOWN)
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
            types.append(TokenType.BYTE)
        elif i in added:
            types.append(TokenType.CONTROL if added[i].special else TokenType.USER_DEFINED)
        else:
            types.append(TokenType.NORMAL)
    return tokens, scores, types


def _adds_space_prefix(spec: dict[str, Any]) -> bool:
    """Whether the tokenizer puts "▁" before the text (Prepend normalizer or Metaspace)."""
    def walk(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            yield node
            for key in ("normalizers", "pretokenizers"):
                for child in node.get(key) or []:
                    yield from walk(child)

    for node in [*walk(spec.get("normalizer")), *walk(spec.get("pre_tokenizer"))]:
        if node.get("type") == "Prepend" and node.get("prepend") == "\u2581":
            return True
        if node.get("type") == "Metaspace":
            return node.get("prepend_scheme", "always") != "never" and \
                node.get("add_prefix_space", True)
    return False


def _adds_special_tokens(tokenizer) -> dict[str, bool]:
    """Whether encoding adds BOS / EOS, as the HF tokenizer really does it."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return {"bos": bos is not None and with_special[:1] == [bos] and plain[:1] != [bos],
            "eos": eos is not None and with_special[-1:] == [eos] and plain[-1:] != [eos]}


# --------------------------------------------------------------------------- the formats


def export_gguf_f16(run: Run, out: Path, log: Log) -> list[Path]:
    """GGUF with 16-bit float weights (norms and biases float32): the reference for llama.cpp."""
    return _export_gguf(run, out, log, "f16")


def export_gguf_q8_0(run: Run, out: Path, log: Log) -> list[Path]:
    """GGUF with 8-bit block quantization (Q8_0): near-lossless, about half of f16."""
    return _export_gguf(run, out, log, "q8_0")


def export_gguf_q4_0(run: Run, out: Path, log: Log) -> list[Path]:
    """GGUF with 4-bit block quantization (Q4_0; the output matrix stays Q8_0)."""
    return _export_gguf(run, out, log, "q4_0")


def _export_gguf(run: Run, out: Path, log: Log, qtype: str) -> list[Path]:
    check_mergeable(run, f"gguf-{qtype}")
    if (kind := model_type(run)) is not None:
        check_supported(kind)   # before loading anything (write_gguf checks again)
    model, tokenizer = load_merged(run, log)
    path = write_gguf(model, tokenizer, out / f"{slug(run)}-{qtype}.gguf", qtype,
                      name=slug(run), log=log)
    ollama = write_modelfile(tokenizer, path, log=log)
    (out / "README.md").write_text(model_card(run, f"gguf-{qtype}", gguf_name=path.name),
                                   encoding="utf-8")
    return [path, ollama, out / "README.md"]
