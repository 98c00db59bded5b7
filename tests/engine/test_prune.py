"""Structured pruning (engine/models/prune.py): the block with the smallest angular distance is
removed and nothing else changes, the MLPs narrow to a budget, and the pruned folder loads in
transformers and exports to a GGUF file that verifies."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from engine.models.prune import (PruneError, block_distances, layers_for_budget, parse_budget,
                                 prune)


@pytest.fixture(scope="module")
def six_layers(tiny_model, tmp_path_factory) -> Path:
    """tiny_model's shape with 6 decoder layers (random weights), its tokenizer and template."""
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    config = AutoConfig.from_pretrained(tiny_model)
    config.num_hidden_layers = 6
    torch.manual_seed(3)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("six") / "six"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    return out


def load(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def test_dropping_layers_removes_exactly_the_least_changing_block(six_layers, examples, home):
    result = prune(str(six_layers), drop_layers=2, data=str(examples / "chat.jsonl"),
                   records=12, log=lambda _: None)
    d = result.distances
    assert len(d) == 5 and all(0 <= x <= 1 for x in d)
    start = min(range(5), key=d.__getitem__)
    assert result.removed_layers == [start, start + 1]
    assert result.folder == home / "models" / "six-pruned"
    assert result.calibration["records"] == 12 and not result.calibration["bundled"]

    source, pruned = load(six_layers), load(result.folder)
    assert pruned.config.num_hidden_layers == 4
    kept = [i for i in range(6) if i not in result.removed_layers]
    theirs, ours = source.state_dict(), pruned.state_dict()
    for new, old in enumerate(kept):     # every kept layer is the source's, untouched
        for key, value in ours.items():
            if key.startswith(f"model.layers.{new}."):
                twin = key.replace(f"model.layers.{new}.", f"model.layers.{old}.")
                assert torch.equal(value, theirs[twin]), key
    for key in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert torch.equal(ours[key], theirs[key])
    # the pruned model computes what the source does with those layers skipped
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    source.model.layers = torch.nn.ModuleList([source.model.layers[i] for i in kept])
    for new, layer in enumerate(source.model.layers):
        layer.self_attn.layer_idx = new
    assert torch.allclose(pruned(ids).logits, source(ids).logits, atol=1e-5)
    assert sum(p.numel() for p in pruned.parameters()) == result.params_after

    card = (result.folder / "README.md").read_text()
    assert f"Layers {start} to {start + 1}" in card and "chat.jsonl" in card
    assert json.loads((result.folder / "ftstudio-pruned.json").read_text())[
        "removed_layers"] == result.removed_layers
    assert (result.folder / "tokenizer.json").is_file()
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(result.folder).chat_template


def test_the_distances_follow_the_definition(six_layers, tiny_tokenizer):
    """Hand-computed: the hidden states entering and leaving each block, at the last token."""
    model = load(six_layers)
    batch = {"input_ids": torch.tensor([[5, 17, 42, 99, 0], [8, 9, 10, 11, 12]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])}
    states = []
    handles = [layer.register_forward_hook(
        lambda m, a, k, o: states.append(o[0] if isinstance(o, tuple) else o), with_kwargs=True)
        for layer in model.model.layers]
    with torch.no_grad():
        embedded = model.model.embed_tokens(batch["input_ids"])
        model(**batch)
    for h in handles:
        h.remove()
    xs = [embedded] + states
    last = torch.tensor([3, 4])
    rows = torch.arange(2)
    expected = []
    for start in range(4):
        a, b = xs[start][rows, last], xs[start + 3][rows, last]
        cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
        expected.append(float((torch.arccos(cos) / math.pi).mean()))
    assert block_distances(model, [batch], 3) == pytest.approx(expected, abs=1e-5)


def test_a_parameter_budget_narrows_the_mlps_or_drops_layers(six_layers, examples, home):
    mlp = prune(str(six_layers), param_budget="85%", by="mlp", name="narrow", records=8,
                log=lambda _: None)
    assert mlp.params_after <= 0.85 * mlp.params_before
    model = load(mlp.folder)
    assert model.config.intermediate_size == mlp.mlp_width[1] < 128
    assert model.model.layers[0].mlp.down_proj.weight.shape[1] == mlp.mlp_width[1]
    assert model(torch.tensor([[5, 6, 7]])).logits.isfinite().all()

    layers = prune(str(six_layers), param_budget=0.7, name="fewer", records=8,
                   log=lambda _: None)
    assert layers.params_after <= 0.7 * layers.params_before
    assert len(layers.removed_layers) == layers_for_budget(
        layers.params_before, (layers.params_before - layers.params_after) //
        len(layers.removed_layers), 6, int(0.7 * layers.params_before))


def test_bad_targets_are_refused_with_the_fix(six_layers, home):
    with pytest.raises(PruneError, match="exactly one target"):
        prune(str(six_layers), log=lambda _: None)
    with pytest.raises(PruneError, match="drop 1 to 5"):
        prune(str(six_layers), drop_layers=6, log=lambda _: None)
    with pytest.raises(PruneError, match="give a count"):
        parse_budget("lots", 1000)
    assert parse_budget("100M", 1) == 100_000_000 and parse_budget("0.5", 1000) == 500
    assert parse_budget("25%", 1000) == 250 and parse_budget("800k", 1) == 800_000


def test_the_pruned_model_exports_to_a_gguf_that_verifies(six_layers, home, tmp_path):
    from engine.export import export_model

    result = prune(str(six_layers), drop_layers=3, records=8, log=lambda _: None)
    exported = export_model(result.folder, "gguf-q8_0", tmp_path / "gguf", log=lambda _: None,
                            prompts=2, max_new_tokens=8)
    assert exported.verification["status"] == "verified", exported.verification["line"]
    assert any(a.path.suffix == ".gguf" for a in exported.artifacts)
