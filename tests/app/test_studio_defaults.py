"""The Train form's defaults that fit the model (handlers.apply_defaults and the state that
remembers which fields the user set), as plain functions, and their wiring in the page."""

from __future__ import annotations

import json
import shutil

import pytest

from app.studio import form, handlers
from engine.models import recipes


@pytest.fixture(scope="module")
def pretrained(tiny_model, tmp_path_factory):
    """The tiny model without the demo's label: a local model that is not the demo."""
    out = tmp_path_factory.mktemp("models") / "tiny-pretrained"
    shutil.copytree(tiny_model, out)
    cfg = json.loads((out / "config.json").read_text())
    del cfg["ftstudio_demo"]
    (out / "config.json").write_text(json.dumps(cfg))
    return out


@pytest.fixture(scope="module")
def longer_data(tmp_path_factory):
    """300 alpaca records, longer than the bundled ones (whose p99 fits the demo's 128)."""
    path = tmp_path_factory.mktemp("data") / "longer.jsonl"
    rows = [{"instruction": f"Repeat the word {i % 7}.",
             "output": " ".join(["sort"] * (1 + i % 100))} for i in range(300)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def demo_form(home, longer_data):
    """The form as the page opens (the demo model's settings), with a longer data file."""
    values = dict(zip(form.FORM_KEYS, form.config_to_form(handlers.default_config())))
    assert (values["train.lr"], values["train.epochs"]) == (3e-3, 15)
    return {**values, "data.train": str(longer_data)}


def _expected_seq_len(values: dict) -> int:
    cfg, _ = form.build_config(values)
    p99 = handlers.report_for(cfg)["length_p99"]
    expected = recipes.round_seq_len(p99, 512)   # the tiny model has 512 positions
    assert 128 < expected <= 512 and expected % 64 == 0 and expected - 64 < p99 <= expected
    return expected


def test_picking_a_pretrained_model_takes_its_defaults(demo_form, pretrained):
    values = {**demo_form, "model.name": str(pretrained)}
    changes, state, card = handlers.apply_defaults(values, handlers.new_defaults_state())
    assert changes == {"train.lr": 2e-4, "train.epochs": 3,
                       "data.max_seq_len": _expected_seq_len(values)}
    assert set(state["suggested"]) == set(recipes.KEYS) and state["edited"] == {}
    # the card says where each value came from
    assert "Defaults for this model" in card
    assert "LoRA-family default for a pretrained model" in card
    assert "270 training records is a small set" in card
    assert "p99 length is" in card and "rounded up to a multiple of 64" in card
    assert "YOURS" not in card


def test_a_field_the_user_edited_keeps_its_value(demo_form, pretrained):
    state = handlers.mark_edited(handlers.new_defaults_state(), "train.lr")
    values = {**demo_form, "model.name": str(pretrained), "train.lr": 1e-3}
    changes, state, card = handlers.apply_defaults(values, state)
    assert "train.lr" not in changes
    assert changes["train.epochs"] == 3 and "data.max_seq_len" in changes
    assert state["edited"] == {"train.lr": "typed"}
    assert "kept your value (suggested 2e-4: LoRA-family default" in card
    assert "<code>1e-3</code>" in card and "YOURS" in card
    # a later change of method still leaves it alone
    changes, state, card = handlers.apply_defaults(
        {**values, **changes, "method.kind": "prompt_tuning"}, state)
    assert "train.lr" not in changes and "suggested 3e-2" in card


def test_the_method_changes_the_rate(demo_form, pretrained):
    values = {**demo_form, "model.name": str(pretrained)}
    changes, state, _ = handlers.apply_defaults(values, handlers.new_defaults_state())
    values.update(changes)
    for kind, lr in (("full", 2e-5), ("ia3", 3e-3), ("prefix_tuning", 1e-2)):
        changes, state, card = handlers.apply_defaults({**values, "method.kind": kind}, state)
        assert changes == {"train.lr": lr}, kind
        assert f"<code>{recipes.format_value('train.lr', lr)}</code>" in card


def test_picking_the_demo_again_restores_the_demo_settings(demo_form, pretrained):
    values = {**demo_form, "model.name": str(pretrained)}
    changes, state, _ = handlers.apply_defaults(values, handlers.new_defaults_state())
    values.update(changes)
    state = handlers.mark_edited(state, "train.epochs")
    values["train.epochs"] = 2
    back = {**values, "model.name": demo_form["model.name"]}
    changes, state, card = handlers.apply_defaults(back, state)
    assert changes == {"train.lr": 3e-3, "data.max_seq_len": 128}   # epochs are the user's
    assert recipes.DEMO_REASON in card and "kept your value" in card


def test_loaded_settings_count_as_the_users(demo_form, pretrained, tmp_path):
    mine = {**demo_form, "train.lr": 5e-5, "train.epochs": 4, "data.max_seq_len": 1024}
    path = handlers.save_yaml(mine, "mine")
    loaded, problems = handlers.load_yaml(path)
    assert not problems
    values = dict(zip(form.FORM_KEYS, loaded))
    state = handlers.mark_loaded(handlers.new_defaults_state(), "yaml")
    assert "kept the value from the YAML file" in handlers.defaults_card(state, values)
    changes, state, card = handlers.apply_defaults({**values, "model.name": str(pretrained)},
                                                   state)
    assert changes == {}
    assert card.count("kept the value from the YAML file") == 3
    assert "suggested 2e-4" in card


def test_the_demo_form_starts_with_the_demo_reasons(demo_form):
    changes, state, card = handlers.apply_defaults(demo_form, handlers.new_defaults_state())
    assert changes == {}
    assert recipes.DEMO_REASON in card


def test_the_data_panel_shows_the_p99(demo_form, pretrained):
    html, _, _ = handlers.data_panel({**demo_form, "model.name": str(pretrained)})
    assert ", p99 " in html


def test_the_page_tracks_edits_with_input_events(home):
    """Only the fields' .input events (a person typing) mark them as the user's: a handler
    setting a value fires .change, never .input."""
    from app.studio.ui import build_app

    app = build_app(worker="external")
    ids = {b.elem_id: i for i, b in app.blocks.items() if getattr(b, "elem_id", None)}
    triggers = {(t[0], t[1]) for dep in app.config["dependencies"] for t in dep["targets"]}
    for key in recipes.KEYS:
        elem = "f-" + key.replace(".", "-").replace("_", "-")
        assert (ids[elem], "input") in triggers, key
    for picker in ("f-model-name", "f-method-kind", "f-data-train", "example-picker"):
        assert (ids[picker], "input") in triggers, picker
    # a data upload and a GGUF import set the value in a handler: the defaults follow them
    deps = app.config["dependencies"]
    card = ids["defaults-card"]
    for button in ("upload-data", "import-gguf"):
        if button not in ids:       # the GGUF import is optional to this test
            continue
        first = next(d for d in deps if (ids[button], "upload") in
                     {(t[0], t[1]) for t in d["targets"]})
        chain, found = [first["id"]], False
        while chain and not found:
            prior = chain.pop()
            after = [d for d in deps if d.get("trigger_after") == prior]
            found = any(card in d["outputs"] for d in after)
            chain += [d["id"] for d in after]
        assert found, button
    assert "Defaults for this model" in app.blocks[card].value
