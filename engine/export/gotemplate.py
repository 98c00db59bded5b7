"""Render an Ollama Modelfile TEMPLATE (Go text/template) the way Ollama does, for the subset of
the language that Ollama chat templates use, so an export's verification can compare the prompt
Ollama builds with the one training rendered (engine/export/verify.py).

Use from Python:
    from engine.export.gotemplate import render_ollama
    text = render_ollama(template, messages, default_system=None)

Supported: text, {{ .Field }} / {{ $.Field }} / {{ $var }} / {{ "literal" }}, {{ if }} /
{{ else if }} / {{ else }} / {{ end }}, {{ range .Messages }}, {{ $v := x }} and {{ $v = x }},
the functions eq, ne, and, or, not, and the {{- -}} whitespace trims. Anything else raises
TemplateError naming the action, so an unknown construct is reported, never guessed at.

Ollama's data for a chat: .System (the system messages joined by blank lines, else the
Modelfile's SYSTEM), .Messages (every message, system ones included; each with .Role and
.Content), .Prompt and .Response (empty for a chat with messages).
"""

from __future__ import annotations

import re
import shlex
from typing import Any


class TemplateError(ValueError):
    """A TEMPLATE this renderer cannot read; the message names the action."""


_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def render_ollama(template: str, messages: list[dict[str, str]],
                  default_system: str | None = None) -> str:
    """The prompt Ollama renders from template for a chat of messages."""
    systems = [m["content"] for m in messages if m["role"] == "system"]
    root = {"System": "\n\n".join(systems) if systems else (default_system or ""),
            "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages],
            "Prompt": "", "Response": "", "Tools": None}
    nodes, rest = _parse(_lex(template), 0, top=True)
    out: list[str] = []
    _run(nodes, root, root, {"$": root}, out)
    return "".join(out)


def _lex(template: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", s)] with {{- and -}} trims applied."""
    items: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        if m.group(1):
            text = text.rstrip()
        items.append(("text", text))
        items.append(("action", m.group(2)))
        pos = m.end()
        if m.group(3):
            tail = template[pos:]
            pos += len(tail) - len(tail.lstrip())
    items.append(("text", template[pos:]))
    return items


def _parse(items, i: int, top: bool = False):
    """Nodes until an {{ end }} / {{ else }} at this level: (nodes, index of that item)."""
    nodes: list[Any] = []
    while i < len(items):
        kind, body = items[i]
        if kind == "text":
            if body:
                nodes.append(("text", body))
            i += 1
            continue
        word = body.split(None, 1)[0] if body else ""
        if word in ("end", "else"):
            if top:
                raise TemplateError(f"{{{{ {body} }}}} without an opening if or range")
            return nodes, i
        if word in ("if", "range"):
            branches: list[tuple[str | None, list[Any]]] = []
            cond: str | None = body[len(word):].strip()
            while True:
                inner, i = _parse(items, i + 1)
                branches.append((cond, inner))
                closing = items[i][1]
                if closing == "end":
                    i += 1
                    break
                if cond is not None and closing == "else":
                    cond = None
                elif cond is not None and word == "if" and closing.startswith("else if "):
                    cond = closing[len("else if "):].strip()
                else:
                    raise TemplateError(f"cannot read {{{{ {closing} }}}} in {{{{ {word} }}}}")
            nodes.append((word, branches))
            continue
        nodes.append(("expr", body))
        i += 1
    if not top:
        raise TemplateError("a block is never closed by {{ end }}")
    return nodes, i


def _run(nodes, dot, root, scope: dict[str, Any], out: list[str]) -> None:
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "expr":
            body = node[1]
            m = re.fullmatch(r"(\$\w+)\s*(:?=)\s*(.+)", body, re.S)
            if m:
                scope[m.group(1)] = _eval(m.group(3), dot, scope)
            else:
                value = _eval(body, dot, scope)
                out.append("" if value is None else str(value))
        elif kind == "if":
            for cond, inner in node[1]:
                if cond is None or _truth(_eval(cond, dot, scope)):
                    _run(inner, dot, root, scope, out)
                    break
        elif kind == "range":
            (cond, inner), *other = node[1]
            items = _eval(cond, dot, scope) or []
            for item in items:
                _run(inner, item, root, scope, out)
            if not items and other:
                _run(other[0][1], dot, root, scope, out)


def _truth(value: Any) -> bool:
    return bool(value)


def _eval(expr: str, dot, scope: dict[str, Any]) -> Any:
    expr = expr.strip()
    if expr.startswith("(") and expr.endswith(")"):
        expr = expr[1:-1].strip()
    try:
        words = shlex.split(expr, posix=False)
    except ValueError as exc:
        raise TemplateError(f"cannot read {{{{ {expr} }}}}: {exc}") from None
    if not words:
        raise TemplateError("an empty {{ }} action")
    head, args = words[0], words[1:]
    funcs = {"eq": lambda a, *b: any(a == x for x in b), "ne": lambda a, b: a != b,
             "not": lambda a: not _truth(a), "and": lambda *a: all(_truth(x) for x in a),
             "or": lambda *a: any(_truth(x) for x in a)}
    if head in funcs:
        return funcs[head](*[_operand(a, dot, scope) for a in args])
    if args:
        raise TemplateError(f"unknown function {head!r} in {{{{ {expr} }}}} (this check reads "
                            f"{', '.join(funcs)})")
    return _operand(head, dot, scope)


def _operand(word: str, dot, scope: dict[str, Any]) -> Any:
    if word.startswith('"') and word.endswith('"'):
        return bytes(word[1:-1], "utf-8").decode("unicode_escape")
    if word == ".":
        return dot
    if word.startswith("$"):
        name, _, path = word.partition(".")
        if name not in scope:
            raise TemplateError(f"undefined variable {name}")
        value = scope[name]
        return _field(value, path) if path else value
    if word.startswith("."):
        return _field(dot, word[1:])
    raise TemplateError(f"cannot read {word!r}")


def _field(value: Any, path: str) -> Any:
    for name in path.split("."):
        if not isinstance(value, dict) or name not in value:
            raise TemplateError(f"no field .{name} here")
        value = value[name]
    return value
