"""GGUF export: files read back with gguf.GGUFReader, and computed the way llama.cpp computes them.

llama.cpp is not installed here, so `llama_cpp_forward` below is a small numpy forward pass that
follows llama.cpp's graph for the llama and qwen2 architectures: it reads only the GGUF file
(dequantized tensors and metadata), applies rope the way ggml does for each architecture
("normal" mode, adjacent pairs (x[2i], x[2i+1]), for llama; NEOX mode, pairs (x[i], x[i+d/2]),
for qwen2) and never undoes the exporter's permutation. Its logits are compared with
transformers' on models whose attention matters (q/k scaled up so attention is sharp: on random
tiny weights attention is near uniform and a wrong rotary layout hides).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import gguf

from engine.export import ExportError, export  # noqa: E402
from engine.export import chat_style, modelfile, write_gguf  # noqa: E402

PROMPT = [{"role": "system", "content": "You answer briefly."},
          {"role": "user", "content": "reverse: one two three four five six"},
          {"role": "assistant", "content": "six five four three two one"},
          {"role": "user", "content": "sort: pear apple fig"}]


# --------------------------------------------------------------------------- llama.cpp, in numpy


def read_gguf(path):
    reader = gguf.GGUFReader(path)
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    weights = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
               for t in reader.tensors}
    return meta, weights, {t.name: t.tensor_type for t in reader.tensors}


def _rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _rope(x, n_rot, base, neox):
    """ggml_rope on x (tokens, heads, head_dim) at positions 0..T-1."""
    t = np.arange(x.shape[0])[:, None, None]
    theta = t * base ** (-np.arange(0, n_rot, 2) / n_rot)[None, None, :]
    cos, sin = np.cos(theta), np.sin(theta)
    out = x.copy()
    if neox:   # pairs (x[i], x[i + n_rot/2])
        a, b = x[..., : n_rot // 2], x[..., n_rot // 2: n_rot]
        out[..., : n_rot // 2], out[..., n_rot // 2: n_rot] = a * cos - b * sin, a * sin + b * cos
    else:      # "normal": adjacent pairs (x[2i], x[2i+1])
        a, b = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
        out[..., 0:n_rot:2], out[..., 1:n_rot:2] = a * cos - b * sin, a * sin + b * cos
    return out


def llama_cpp_forward(path, tokens: list[int]) -> np.ndarray:
    """Logits for tokens, computed from the GGUF file alone as llama.cpp's llama/qwen2 graph."""
    meta, w, _ = read_gguf(path)
    arch = meta["general.architecture"]
    hp = lambda key: meta[f"{arch}.{key}"]  # noqa: E731
    n_head, n_kv = hp("attention.head_count"), hp("attention.head_count_kv")
    hd, n_rot = hp("attention.key_length"), hp("rope.dimension_count")
    eps, base = hp("attention.layer_norm_rms_epsilon"), hp("rope.freq_base")
    neox = {"llama": False, "qwen2": True}[arch]     # llama_model_rope_type()
    T = len(tokens)
    x = w["token_embd.weight"][tokens]
    mask = np.triu(np.full((T, T), -np.inf), 1)

    def lin(h, name):
        y = h @ w[f"{name}.weight"].T
        return y + w[f"{name}.bias"] if f"{name}.bias" in w else y

    for i in range(hp("block_count")):
        b = f"blk.{i}"
        h = _rms(x, w[f"{b}.attn_norm.weight"], eps)
        q = _rope(lin(h, f"{b}.attn_q").reshape(T, n_head, hd), n_rot, base, neox)
        k = _rope(lin(h, f"{b}.attn_k").reshape(T, n_kv, hd), n_rot, base, neox)
        v = lin(h, f"{b}.attn_v").reshape(T, n_kv, hd)
        heads = []
        for j in range(n_head):
            kv = j // (n_head // n_kv)
            s = q[:, j] @ k[:, kv].T / np.sqrt(hd) + mask
            p = np.exp(s - s.max(-1, keepdims=True))
            heads.append((p / p.sum(-1, keepdims=True)) @ v[:, kv])
        x = x + lin(np.concatenate(heads, -1), f"{b}.attn_output")
        h = _rms(x, w[f"{b}.ffn_norm.weight"], eps)
        gate = lin(h, f"{b}.ffn_gate")
        x = x + lin(gate / (1 + np.exp(-gate)) * lin(h, f"{b}.ffn_up"), f"{b}.ffn_down")
    x = _rms(x, w["output_norm.weight"], eps)
    return x @ w.get("output.weight", w["token_embd.weight"]).T


def hf_logits(model, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].double().numpy()


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of engine.export.gguf.rope_permute (back to HF's half-split rows)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2) \
        .reshape(w.shape)


# --------------------------------------------------------------------------- models


def sharpen(model, scale: float = 10.0, seed: int = 0):
    """Scale q/k so attention is peaked (and give biases values where the model has them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(scale)
            elif name.endswith("proj.bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval()


def tiny_family(kind: str, tokenizer):
    """A 2-layer model of another family with the demo tokenizer, built locally."""
    from transformers import (AutoModelForCausalLM, GPT2Config, MistralConfig, Qwen2Config)

    shape = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 max_position_embeddings=256, eos_token_id=tokenizer.eos_token_id,
                 pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    if kind == "qwen2":
        config = Qwen2Config(rms_norm_eps=1e-6, tie_word_embeddings=True, rope_theta=1e6, **shape)
    elif kind == "mistral":
        config = MistralConfig(rms_norm_eps=1e-5, tie_word_embeddings=False, sliding_window=None,
                               **shape)
    else:
        config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2)
    torch.manual_seed(3)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def sharp_run(tmp_path_factory, tiny_model, tiny_tokenizer):
    """A LoRA run over a sharpened copy of the tiny Llama, exported to all three GGUF types."""
    from transformers import AutoModelForCausalLM

    from verify_models import random_lora

    root = tmp_path_factory.mktemp("gguf")
    base_dir = root / "base"
    sharpen(AutoModelForCausalLM.from_pretrained(tiny_model)).save_pretrained(base_dir)
    tiny_tokenizer.save_pretrained(base_dir)
    peft_model = random_lora(base_dir, 0.05)
    run = root / "run"
    peft_model.save_pretrained(run / "adapter")
    tiny_tokenizer.save_pretrained(run / "adapter")
    (run / "run.json").write_text(json.dumps({"config": {
        "model": {"name": str(base_dir)}, "method": {"kind": "lora", "r": 4, "alpha": 8}}}))
    merged = peft_model.merge_and_unload().eval()
    files = {q: export(run, f"gguf-{q}", log=lambda _: None) for q in ("f16", "q8_0", "q4_0")}
    tokens = tiny_tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True,
                                                tokenize=True, return_dict=False)
    return {"merged": merged, "results": files, "tokens": list(tokens), "run": run}


def _gguf_file(result) -> Path:
    return next(a.path for a in result.artifacts if a.path.suffix == ".gguf")


# --------------------------------------------------------------------------- the forward pass


@pytest.mark.parametrize("qtype,tol", [("f16", 0.005), ("q8_0", 0.05)])
def test_llama_cpp_forward_matches_transformers(sharp_run, qtype, tol):
    tokens = sharp_run["tokens"]
    assert len(tokens) > 30
    want = hf_logits(sharp_run["merged"], tokens)
    got = llama_cpp_forward(_gguf_file(sharp_run["results"][qtype]), tokens)
    assert np.abs(got - want).max() < tol


def test_q4_0_forward_stays_close(sharp_run):
    tokens = sharp_run["tokens"]
    want = hf_logits(sharp_run["merged"], tokens)
    got = llama_cpp_forward(_gguf_file(sharp_run["results"]["q4_0"]), tokens)
    # 4-bit blocks lose real precision (rows here are only two 32-value blocks): close, not equal
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.9


def test_without_the_rope_permutation_llama_cpp_computes_something_else(sharp_run, tmp_path,
                                                                       tiny_tokenizer,
                                                                       monkeypatch):
    """The check above can fail: write the same model without permuting q/k and it drifts."""
    import engine.export.gguf as eg

    tokens, merged = sharp_run["tokens"], sharp_run["merged"]
    want = hf_logits(merged, tokens)
    right = np.abs(llama_cpp_forward(_gguf_file(sharp_run["results"]["f16"]), tokens) - want).max()
    monkeypatch.setattr(eg, "rope_permute", lambda w, n_head: w)
    bad = llama_cpp_forward(write_gguf(merged, tiny_tokenizer, tmp_path / "bad.gguf", "f16",
                                       log=lambda _: None), tokens)
    wrong, agree = np.abs(bad - want).max(), (bad.argmax(-1) == want.argmax(-1)).mean()
    assert right < 0.005 and wrong > 0.3 and agree < 0.6, (wrong, right, agree)


def test_qwen2_must_not_be_permuted(tiny_tokenizer, tmp_path, monkeypatch):
    """Qwen2 runs with NEOX rope in llama.cpp: permuting it as for Llama would break it."""
    import engine.export.gguf as eg

    model = sharpen(tiny_family("qwen2", tiny_tokenizer))
    tokens = list(tiny_tokenizer.apply_chat_template(PROMPT, tokenize=True, return_dict=False))
    want = hf_logits(model, tokens)
    right = llama_cpp_forward(write_gguf(model, tiny_tokenizer, tmp_path / "ok.gguf", "f16",
                                         log=lambda _: None), tokens)
    monkeypatch.setitem(eg.FAMILIES, "qwen2", eg.Family("qwen2", rope_permute=True))
    wrong = llama_cpp_forward(write_gguf(model, tiny_tokenizer, tmp_path / "bad.gguf", "f16",
                                         log=lambda _: None), tokens)
    assert np.abs(wrong - want).max() > 20 * np.abs(right - want).max()


@pytest.mark.parametrize("kind", ["qwen2", "mistral"])
def test_other_families_compute_the_same_in_llama_cpp(kind, tiny_tokenizer, tmp_path):
    model = sharpen(tiny_family(kind, tiny_tokenizer))
    path = write_gguf(model, tiny_tokenizer, tmp_path / f"{kind}.gguf", "f16", log=lambda _: None)
    meta, weights, _ = read_gguf(path)
    assert meta["general.architecture"] == {"qwen2": "qwen2", "mistral": "llama"}[kind]
    if kind == "qwen2":   # q/k/v biases, tied embeddings: no output tensor
        assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias"} <= set(weights)
        assert "output.weight" not in weights
    tokens = tiny_tokenizer.apply_chat_template(PROMPT, tokenize=True, return_dict=False)
    got, want = llama_cpp_forward(path, list(tokens)), hf_logits(model, list(tokens))
    assert np.abs(got - want).max() < 0.005


# --------------------------------------------------------------------------- the file's contents


def test_metadata_and_tokenizer(sharp_run, tiny_tokenizer):
    meta, _, _ = read_gguf(_gguf_file(sharp_run["results"]["q8_0"]))
    assert meta["general.architecture"] == "llama"
    assert meta["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    for key in ("block_count", "context_length", "embedding_length", "feed_forward_length",
                "attention.head_count", "attention.head_count_kv", "rope.freq_base",
                "attention.layer_norm_rms_epsilon", "rope.dimension_count", "vocab_size"):
        assert f"llama.{key}" in meta, key
    assert meta["llama.block_count"] == 2 and meta["llama.attention.head_count_kv"] == 2
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    tokens = meta["tokenizer.ggml.tokens"]
    assert len(tokens) == len(tiny_tokenizer) == meta["llama.vocab_size"]
    assert tokens == [tiny_tokenizer.convert_ids_to_tokens(i) for i in range(len(tokens))]
    spec = json.loads(tiny_tokenizer.backend_tokenizer.to_str())
    assert meta["tokenizer.ggml.merges"] == [" ".join(m) for m in spec["model"]["merges"]]
    types = meta["tokenizer.ggml.token_type"]
    assert [types[i] for i in tiny_tokenizer.all_special_ids] == \
        [gguf.TokenType.CONTROL] * len(tiny_tokenizer.all_special_ids)
    assert meta["tokenizer.ggml.eos_token_id"] == tiny_tokenizer.eos_token_id
    assert meta["tokenizer.ggml.padding_token_id"] == tiny_tokenizer.pad_token_id
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert meta["tokenizer.chat_template"] == tiny_tokenizer.chat_template


def test_tokens_and_merges_in_the_file_tokenize_like_transformers(sharp_run, tiny_tokenizer):
    """A byte-level BPE rebuilt from the file alone (gpt-2 pre-tokenizer, CONTROL tokens as
    specials) splits text exactly as the HF tokenizer does."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    from engine.data.examples import corpus

    meta, _, _ = read_gguf(_gguf_file(sharp_run["results"]["f16"]))
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    merges = [tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]
    rebuilt = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    rebuilt.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    rebuilt.decoder = decoders.ByteLevel()
    rebuilt.add_special_tokens([AddedToken(t, special=True) for t, k in zip(tokens, types)
                                if k == gguf.TokenType.CONTROL])
    texts = list(corpus())[:300] + [tiny_tokenizer.apply_chat_template(PROMPT, tokenize=False)]
    for text in texts:
        assert rebuilt.encode(text).ids == tiny_tokenizer(text)["input_ids"], text


def sentencepiece_style_tokenizer():
    """A Llama-2/Mistral-style tokenizer: BPE with byte fallback over "▁"-escaped text."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from engine.data.examples import corpus

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                           normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(corpus(), trainer=trainers.BpeTrainer(
        vocab_size=700, special_tokens=specials, show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                       special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    fast.chat_template = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
                          "{{ '[INST] ' + m['content'] + ' [/INST]' }}{% else %}"
                          "{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}")
    return fast


def spm_tokenize(text: str, meta) -> list[int]:
    """llama.cpp's SentencePiece tokenizer (llm_tokenizer_spm) over the file's vocab: merge the
    adjacent pair whose merged token scores highest (leftmost on ties), bytes for the rest."""
    tokens, scores = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.scores"]
    vocab = {t: i for i, t in enumerate(tokens)}
    text = ("\u2581" if meta["tokenizer.ggml.add_space_prefix"] else "") + \
        text.replace(" ", "\u2581")
    symbols = list(text)
    while True:
        best = None
        for j in range(len(symbols) - 1):
            merged = symbols[j] + symbols[j + 1]
            if merged in vocab and (best is None or scores[vocab[merged]] > best[0]):
                best = (scores[vocab[merged]], j)
        if best is None:
            break
        j = best[1]
        symbols[j: j + 2] = [symbols[j] + symbols[j + 1]]
    ids = [meta["tokenizer.ggml.bos_token_id"]] if meta["tokenizer.ggml.add_bos_token"] else []
    for sym in symbols:
        ids += [vocab[sym]] if sym in vocab else [vocab[f"<0x{b:02X}>"] for b in sym.encode()]
    return ids


def test_sentencepiece_style_tokenizer_is_written_for_llama_cpp(tmp_path):
    from transformers import AutoModelForCausalLM, MistralConfig

    from engine.data.examples import corpus

    tokenizer = sentencepiece_style_tokenizer()
    model = AutoModelForCausalLM.from_config(MistralConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2))
    meta, _, _ = read_gguf(write_gguf(model, tokenizer, tmp_path / "m.gguf", "q8_0",
                                      log=lambda _: None))
    assert meta["tokenizer.ggml.model"] == "llama" and meta["general.architecture"] == "llama"
    types = meta["tokenizer.ggml.token_type"]
    assert types[0] == gguf.TokenType.UNKNOWN and types[1] == types[2] == gguf.TokenType.CONTROL
    assert types[tokenizer.convert_tokens_to_ids("<0x41>")] == gguf.TokenType.BYTE
    assert meta["tokenizer.ggml.bos_token_id"] == 1 and meta["tokenizer.ggml.add_bos_token"]
    texts = list(corpus())[:200] + ["naïve café 😀 déjà-vu", "  two  spaces"]
    for text in texts:
        assert spm_tokenize(text, meta) == tokenizer(text)["input_ids"], text


@pytest.mark.parametrize("qtype,rtol", [("f16", 1e-3), ("q8_0", 1e-2), ("q4_0", 0.15)])
def test_tensors_are_the_merged_weights(sharp_run, qtype, rtol):
    merged = sharp_run["merged"]
    _, weights, types = read_gguf(_gguf_file(sharp_run["results"][qtype]))
    state = {k: v.double().numpy() for k, v in merged.state_dict().items()}
    cfg = merged.config
    expected = {"token_embd.weight", "output_norm.weight", "output.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(2) for n in (
            "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate",
            "ffn_up", "ffn_down")}
    assert set(weights) == expected
    pairs = {"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight",
             "output_norm.weight": "model.norm.weight"}
    hf_names = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
                "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    for i in range(2):
        for g, h in hf_names.items():
            pairs[f"blk.{i}.{g}.weight"] = f"model.layers.{i}.{h}.weight"
    for g_name, h_name in pairs.items():
        got = weights[g_name].reshape(state[h_name].shape)
        if ".attn_q." in g_name:
            got = unpermute(got, cfg.num_attention_heads)
        elif ".attn_k." in g_name:
            got = unpermute(got, cfg.num_key_value_heads)
        err = np.abs(got - state[h_name]).max() / np.abs(state[h_name]).max()
        assert err < rtol, (g_name, err)
        if got.ndim == 1:
            assert types[g_name] == gguf.GGMLQuantizationType.F32
    if qtype == "q4_0":
        assert types["output.weight"] == gguf.GGMLQuantizationType.Q8_0
        assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q4_0


# --------------------------------------------------------------------------- Ollama and errors


def test_modelfile_names_the_file_and_the_chatml_template(sharp_run):
    result = sharp_run["results"]["q8_0"]
    text = next(a.path for a in result.artifacts if a.path.name == "Modelfile").read_text()
    assert f"FROM ./{_gguf_file(result).name}\n" in text
    assert 'TEMPLATE """' in text and "{{ range .Messages }}" in text
    assert "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n" in text
    assert text.count('PARAMETER stop "<|im_end|>"') == 1
    assert 'PARAMETER stop "<|im_start|>"' in text


@pytest.mark.parametrize("template,style,stop", [
    ("{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}", "llama3",
     "<|eot_id|>"),
    ("{{ '[INST] ' + message['content'] + ' [/INST]' }}", "mistral", "[INST]"),
    (None, None, "</s>"),
])
def test_modelfile_for_other_template_styles(template, style, stop):
    from types import SimpleNamespace

    tok = SimpleNamespace(chat_template=template, eos_token="</s>")
    text = modelfile(tok, "m.gguf")
    assert chat_style(template) == style
    assert "FROM ./m.gguf" in text and f'PARAMETER stop "{stop}"' in text
    assert ('TEMPLATE """' in text) == (style is not None)


def test_default_template_of_ftstudio_translates(tiny_tokenizer):
    from types import SimpleNamespace

    from engine.data import DEFAULT_CHAT_TEMPLATE

    text = modelfile(SimpleNamespace(chat_template=DEFAULT_CHAT_TEMPLATE, eos_token="<|im_end|>"),
                     "m.gguf")
    assert "<|{{ .Role }}|>\n{{ .Content }}{{ if eq .Role \"assistant\" }}<|im_end|>" in text


def test_unsupported_architecture_names_it(tiny_tokenizer, tmp_path):
    model = tiny_family("gpt2", tiny_tokenizer)
    with pytest.raises(ExportError, match="'gpt2'") as err:
        write_gguf(model, tiny_tokenizer, tmp_path / "x.gguf", "f16", log=lambda _: None)
    assert "llama" in str(err.value) and "qwen2" in str(err.value)
    assert not (tmp_path / "x.gguf").exists()


def test_unsupported_architecture_through_export(tiny_tokenizer, tmp_path):
    model = tiny_family("gpt2", tiny_tokenizer)
    model.save_pretrained(tmp_path / "run" / "adapter")
    tiny_tokenizer.save_pretrained(tmp_path / "run" / "adapter")
    (tmp_path / "run" / "run.json").write_text(json.dumps({"config": {
        "model": {"name": "some/gpt2"}, "method": {"kind": "full"}}}))
    with pytest.raises(ExportError, match="'gpt2'"):
        export(tmp_path / "run", "gguf-q8_0", log=lambda _: None)


# --------------------------------------------------------------------------- llama.cpp itself


@pytest.mark.slow
def test_llama_cpp_itself_tokenizes_and_computes_the_same(sharp_run, tiny_tokenizer, tmp_path):
    """With llama-cpp-python installed (not a project dependency): load the files in llama.cpp."""
    llama_cpp = pytest.importorskip("llama_cpp")
    text = tiny_tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    for qtype, tol in (("f16", 0.005), ("q8_0", 0.05)):
        llm = llama_cpp.Llama(model_path=str(_gguf_file(sharp_run["results"][qtype])), n_ctx=256,
                              logits_all=True, n_threads=2, verbose=False)
        ids = llm.tokenize(text.encode(), add_bos=True, special=True)
        assert ids == sharp_run["tokens"]
        llm.eval(ids)
        got = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
        assert np.abs(got - hf_logits(sharp_run["merged"], ids)).max() < tol
    tokenizer = sentencepiece_style_tokenizer()
    from transformers import AutoModelForCausalLM, MistralConfig
    model = AutoModelForCausalLM.from_config(MistralConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2))
    path = write_gguf(model, tokenizer, tmp_path / "spm.gguf", "f16", log=lambda _: None)
    vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    for sample in ("reverse: one two three", "naïve café 😀 déjà-vu", "  two  spaces"):
        assert vocab.tokenize(sample.encode(), add_bos=True) == tokenizer(sample)["input_ids"]
