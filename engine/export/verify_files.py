"""The checks of an export's verification that read its files, not its weights: the chat
template it carries renders the prompts training rendered, and the Ollama Modelfile's TEMPLATE,
SYSTEM and stop parameters build the same prompt and stop at the template's end-of-turn token.
engine/export/verify.py runs them with the numeric checks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

#: conversations every template check renders besides the held-out prompts: without a system
#: message (a template's default system prompt shows here) and with one, over two turns
PROBES: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "reverse: one two three"}],
    [{"role": "system", "content": "You answer briefly."},
     {"role": "user", "content": "sort: pear apple fig"},
     {"role": "assistant", "content": "apple fig pear"},
     {"role": "user", "content": "count: a b c"}],
]


@dataclass
class Check:
    """One comparison: what was checked, in which runtime, whether it held, and what differed."""

    name: str                       # tokenization | template | logits | answers | stops | ...
    runtime: str
    ok: bool
    detail: str                     # what held, or what differed (shown on the job page)
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "runtime": self.runtime, "ok": self.ok, "detail": self.detail,
                **({"numbers": self.numbers} if self.numbers else {})}


def first_difference(want: str, got: str, width: int = 24) -> str:
    """Where two texts part: 'at character N: training "…x" vs export "…y"'."""
    n = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
    lo = max(0, n - width)

    def shown(text: str) -> str:
        part = text[lo:n + width]
        return ("…" if lo else "") + repr(part)[1:-1] + ("…" if n + width < len(text) else "")

    return f'at character {n}: training "{shown(want)}" vs export "{shown(got)}"'


def check_template(train_render: Callable[[list[dict], bool], str],
                   export_render: Callable[[list[dict], bool], str] | None,
                   conversations: list[list[dict[str, str]]], runtime: str, source: str,
                   what: str = "chat template", whole_chats: bool = True) -> Check:
    """The export's template renders each conversation as training's does: with the generation
    prompt (what the model is asked), and (whole_chats) each whole conversation without it;
    Ollama's TEMPLATE only ever renders prompts."""
    if export_render is None:
        return Check("template", runtime, False, f"the export carries no {what} ({source}): "
                     "chats would be rendered some other way than in training")
    cases = [(c, True) for c in conversations] + \
        [(c, False) for c in conversations if whole_chats and c[-1]["role"] == "assistant"]
    for messages, generation_prompt in cases:
        want = train_render(messages, generation_prompt)
        try:
            got = export_render(messages, generation_prompt)
        except Exception as exc:  # noqa: BLE001 - a template that fails to render is the finding
            return Check("template", runtime, False,
                         f"the {what} in {source} fails to render: {exc}")
        if got != want:
            how = "with the generation prompt" if generation_prompt else "of a whole chat"
            return Check("template", runtime, False, f"the {what} in {source} renders a prompt "
                         f"{how} differently, {first_difference(want, got)}")
    return Check("template", runtime, True, f"the {what} in {source} renders {len(cases)} "
                 "prompts as training did", {"prompts": len(cases)})


# --------------------------------------------------------------------------- the Modelfile


def modelfile_stops(text: str) -> list[str]:
    """The PARAMETER stop values of a Modelfile, in order."""
    return [_unquote(m.group(1)) for m in
            re.finditer(r'^PARAMETER\s+stop\s+(.+?)\s*$', text, re.M)]


def modelfile_block(text: str, key: str) -> str | None:
    """A Modelfile's TEMPLATE or SYSTEM value (triple-quoted or one line), or None."""
    m = re.search(rf'^{key}\s+"""(.*?)"""', text, re.M | re.S)
    if m:
        return m.group(1)
    m = re.search(rf'^{key}\s+(.+?)\s*$', text, re.M)
    return _unquote(m.group(1)) if m else None


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].replace('\\"', '"')
    return value


def check_modelfile(text: str, train_render, conversations, end_of_turn: str | None,
                    runtime: str = "Ollama Modelfile") -> list[Check]:
    """The Modelfile's stops include the end-of-turn token, and its TEMPLATE (with SYSTEM as
    the default system prompt) renders training's prompts."""
    from engine.export.gotemplate import render_ollama

    checks = []
    stops = modelfile_stops(text)
    if end_of_turn is None:
        checks.append(Check("stops", runtime, bool(stops), "no end-of-turn token to look for; "
                            f"stops: {', '.join(stops) or 'none'}"))
    elif end_of_turn in stops:
        checks.append(Check("stops", runtime, True, f'PARAMETER stop includes the end-of-turn '
                            f'token "{end_of_turn}"', {"stops": stops}))
    else:
        shown = ", ".join(f'"{s}"' for s in stops) or "none"
        checks.append(Check("stops", runtime, False, f"the Modelfile's stop parameters ({shown}) "
                            f'do not include the end-of-turn token "{end_of_turn}": Ollama would '
                            "not stop where the tuned model ends its answer", {"stops": stops}))
    template = modelfile_block(text, "TEMPLATE")
    if template is None:   # Ollama then uses the GGUF's own template, checked on its own
        checks.append(Check("template", runtime, True, "no TEMPLATE: Ollama reads the chat "
                            "template stored in the GGUF file"))
        return checks
    system = modelfile_block(text, "SYSTEM")
    checks.append(check_template(
        train_render, lambda messages, _: render_ollama(template, messages, system),
        conversations, runtime, "the Modelfile", what="TEMPLATE", whole_chats=False))
    return checks
