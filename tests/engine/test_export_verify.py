"""Export verification (engine/export/verify.py): every format passes on a good export of every
family, and each realistic fault, planted in the written files, fails with a message that says
what differed. Runs are tiny LoRA runs over behaving random models (tests/engine/verify_models.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from verify_models import DEFAULT_SYSTEM, DEFAULT_SYSTEM_TEMPLATE, lora_run  # noqa: E402

from engine.export import export, read_run, verification_line, verify_export  # noqa: E402
from engine.export.gotemplate import TemplateError, render_ollama  # noqa: E402
from engine.export.ollama import OLLAMA_TEMPLATES  # noqa: E402

QUIET = dict(log=lambda _: None)
FEW = dict(prompts=6, max_new_tokens=8)   # the fault tests: enough to show each difference


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_tokenizer) -> dict[str, Path]:
    """llama (the demo ChatML template), mistral, and qwen2: tied lm_head, and a template with
    a default system prompt."""
    root = tmp_path_factory.mktemp("verify")
    return {"llama": lora_run(root, "llama", tiny_tokenizer),
            "mistral": lora_run(root, "mistral", tiny_tokenizer),
            "qwen2": lora_run(root, "qwen2", tiny_tokenizer, DEFAULT_SYSTEM_TEMPLATE)}


def _names(record) -> set[tuple[str, bool]]:
    return {(c["name"], c["ok"]) for c in record["checks"]}


def _failed(record) -> list[dict]:
    return [c for c in record["checks"] if not c["ok"]]


# --------------------------------------------------------------------------- good exports


@pytest.mark.parametrize("kind,fmt", [
    ("llama", "adapter"), ("llama", "merged"), ("llama", "bnb4"), ("llama", "bnb8"),
    ("llama", "gguf-f16"), ("llama", "gguf-q8_0"), ("llama", "gguf-q4_0"),
    ("mistral", "merged"), ("mistral", "gguf-f16"),
    ("qwen2", "merged"), ("qwen2", "gguf-f16"), ("qwen2", "gguf-q8_0"), ("qwen2", "gguf-q4_0"),
])
def test_a_good_export_is_verified(runs, kind, fmt):
    result = export(runs[kind], fmt, **QUIET)
    record = result.verification
    assert record["status"] == "verified", record["line"]
    assert record["line"].startswith("verified: ") and "same answers" in record["line"]
    assert record["source"].startswith("held-out 0.1 of data.train (chat.jsonl")
    names = {c["name"] for c in record["checks"]}
    assert {"tokenization", "template", "logits", "answers"} <= names
    logits = next(c["numbers"] for c in record["checks"] if c["name"] == "logits")
    assert logits["r"] >= record["tolerance"]["min_r"] and logits["positions"] > 100
    saved = json.loads((result.out_dir / "verify.json").read_text())
    assert saved["line"] == record["line"]
    assert any(a.path.name == "verify.json" for a in result.artifacts)
    if fmt.startswith("gguf-"):
        assert record["line"].endswith("template and stop tokens match")
        assert ("stops", True) in _names(record)
    if kind == "qwen2" and fmt.startswith("gguf-"):   # tied: the file has no output matrix
        modelfile = (result.out_dir / "Modelfile").read_text()
        assert f'SYSTEM """{DEFAULT_SYSTEM}"""' in modelfile


def test_no_verify_says_so(runs):
    result = export(runs["llama"], "merged", verify=False, **QUIET)
    assert result.verification["status"] == "skipped"
    assert verification_line(result.verification) == "not verified (--no-verify)"
    assert json.loads((result.out_dir / "verify.json").read_text())["status"] == "skipped"


# --------------------------------------------------------------------------- planted faults


def test_rope_permutation_dropped_fails_on_the_logits(runs, monkeypatch):
    import engine.export.gguf as eg

    monkeypatch.setattr(eg, "rope_permute", lambda w, n_head: w)
    record = export(runs["llama"], "gguf-f16", **QUIET, **FEW).verification
    assert record["status"] == "unverified"
    logits = next(c for c in record["checks"] if c["name"] == "logits")
    assert not logits["ok"] and "next-token logits are off" in logits["detail"]
    assert logits["numbers"]["max_abs"] > 0.3, logits
    assert record["line"].startswith("unverified: ") and "logits" in record["line"]


def test_wrong_eos_in_the_modelfile_fails_on_the_stops(runs):
    out = export(runs["llama"], "gguf-q8_0", verify=False, **QUIET).out_dir
    modelfile = out / "Modelfile"
    text = modelfile.read_text()
    assert 'PARAMETER stop "<|im_end|>"' in text
    modelfile.write_text(text.replace('PARAMETER stop "<|im_end|>"', 'PARAMETER stop "</s>"'))
    record = verify_export(read_run(runs["llama"]), "gguf-q8_0", out, **QUIET, **FEW)
    [failed] = _failed(record)   # only the stops: the weights and templates are good
    assert failed["name"] == "stops" and failed["runtime"] == "Ollama Modelfile"
    assert '"</s>"' in failed["detail"] and 'end-of-turn token "<|im_end|>"' in failed["detail"]
    assert "unverified" in record["line"] and "<|im_end|>" in record["line"]


def test_truncated_tokenizer_merges_fail_on_the_tokenization(runs):
    out = export(runs["llama"], "merged", verify=False, **QUIET).out_dir
    spec = json.loads((out / "tokenizer.json").read_text())
    spec["model"]["merges"] = spec["model"]["merges"][: len(spec["model"]["merges"]) // 3]
    (out / "tokenizer.json").write_text(json.dumps(spec))
    record = verify_export(read_run(runs["llama"]), "merged", out, **QUIET, **FEW)
    tok = next(c for c in record["checks"] if c["name"] == "tokenization")
    assert not tok["ok"]
    assert "tokenizes prompt 1 differently from token" in tok["detail"]
    assert "training" in tok["detail"] and "export" in tok["detail"]
    assert tok["numbers"]["training"] != tok["numbers"]["export"]


def test_template_without_the_generation_prompt_fails_on_the_template(runs):
    from transformers import AutoTokenizer

    out = export(runs["llama"], "merged", verify=False, **QUIET).out_dir
    tokenizer = AutoTokenizer.from_pretrained(out)
    head, _, _ = tokenizer.chat_template.partition("{% if add_generation_prompt %}")
    tokenizer.chat_template = head
    tokenizer.save_pretrained(out)
    record = verify_export(read_run(runs["llama"]), "merged", out, **QUIET, **FEW)
    tpl = next(c for c in record["checks"] if c["name"] == "template")
    assert not tpl["ok"] and "with the generation prompt" in tpl["detail"]
    assert "<|im_start|>assistant" in tpl["detail"]   # what training has there


def test_gguf_template_without_the_generation_prompt_fails_too(runs, monkeypatch):
    """The same fault in a GGUF file's tokenizer.chat_template and the Modelfile TEMPLATE."""
    import engine.export.ollama as eo

    bad = {k: v.removesuffix("<|im_start|>assistant\n") for k, v in OLLAMA_TEMPLATES.items()}
    monkeypatch.setattr(eo, "OLLAMA_TEMPLATES", bad)
    record = export(runs["llama"], "gguf-q8_0", **QUIET, **FEW).verification
    [failed] = _failed(record)
    assert failed["runtime"] == "Ollama Modelfile" and failed["name"] == "template"
    assert "with the generation prompt" in failed["detail"]


def test_modelfile_without_the_default_system_prompt_fails(runs, monkeypatch):
    import engine.export.ollama as eo

    monkeypatch.setattr(eo, "default_system", lambda tokenizer: None)
    record = export(runs["qwen2"], "gguf-q8_0", **QUIET, **FEW).verification
    [failed] = _failed(record)
    assert failed["name"] == "template" and DEFAULT_SYSTEM[:12] in failed["detail"]


def test_lm_head_untied_when_it_should_be_tied_fails(runs):
    out = export(runs["qwen2"], "merged", verify=False, **QUIET).out_dir
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is True
    (out / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    record = verify_export(read_run(runs["qwen2"]), "merged", out, **QUIET, **FEW)
    failed = {c["name"]: c for c in _failed(record)}
    assert "tying" in failed and "ties lm_head to the embeddings" in failed["tying"]["detail"]
    assert "logits" in failed
    assert record["line"].startswith("unverified: ")


def test_a_check_that_cannot_run_marks_the_export_unverified(runs, monkeypatch):
    import engine.export.runtimes as rt

    def broken(*args, **kw):
        raise OSError("no runtime here")
        yield

    monkeypatch.setattr(rt, "load_runtimes", broken)
    result = export(runs["llama"], "merged", **QUIET, **FEW)
    assert result.verification["status"] == "unverified"
    assert "the check could not run: OSError: no runtime here" in result.verification["line"]
    assert (result.out_dir / "model.safetensors").is_file()   # the files stay


# --------------------------------------------------------------------------- the pieces


def test_ollama_templates_render_as_go_does():
    chat = [{"role": "system", "content": "S"}, {"role": "user", "content": "u1"},
            {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"}]
    assert render_ollama(OLLAMA_TEMPLATES["chatml"], chat) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nu1<|im_end|>\n<|im_start|>assistant"
        "\na1<|im_end|>\n<|im_start|>user\nu2<|im_end|>\n<|im_start|>assistant\n")
    assert render_ollama(OLLAMA_TEMPLATES["mistral"].replace("{eos}", "</s>"), chat) == \
        "[INST] S\n\nu1[/INST] a1</s>[INST] u2[/INST]"
    assert render_ollama(OLLAMA_TEMPLATES["chatml"], chat[1:], default_system="D") \
        .startswith("<|im_start|>system\nD<|im_end|>\n")
    assert render_ollama("{{- if .System }}x{{ else }}y{{ end -}}  \n", chat[1:]) == "y"
    with pytest.raises(TemplateError, match="unknown function 'printf'"):
        render_ollama('{{ printf "%s" .System }}', chat)
    with pytest.raises(TemplateError, match="never closed"):
        render_ollama("{{ if .System }}x", chat)


@pytest.mark.slow
def test_llama_cpp_itself_verifies_a_good_export(runs):
    pytest.importorskip("llama_cpp")
    record = export(runs["llama"], "gguf-f16", **QUIET).verification
    assert "llama.cpp" in record["runtimes"] and record["status"] == "verified", record["line"]
