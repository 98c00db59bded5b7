"""The Ollama Modelfile beside an exported GGUF file: FROM, the chat template as an Ollama
TEMPLATE, and the stop tokens.

Use from Python:
    from engine.export import modelfile, write_modelfile, chat_style
"""

from __future__ import annotations

from pathlib import Path

from engine.export.run import Log


#: Ollama (Go text/template) translations of the chat template styles we recognise. Ollama
#: passes system messages both in .Messages and joined in .System, so they are rendered once,
#: first, from .System. {eos} is replaced by the tokenizer's end-of-sequence token.
OLLAMA_TEMPLATES = {
    "chatml": ('{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}'
               '{{ range .Messages }}{{ if ne .Role "system" }}<|im_start|>{{ .Role }}\n'
               '{{ .Content }}<|im_end|>\n{{ end }}{{ end }}<|im_start|>assistant\n'),
    "llama3": ('{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}'
               '<|eot_id|>{{ end }}{{ range .Messages }}{{ if ne .Role "system" }}'
               '<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>'
               '{{ end }}{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n'),
    "mistral": ('{{ $system := .System }}{{ range .Messages }}{{ if eq .Role "user" }}[INST] '
                '{{ if $system }}{{ $system }}\n\n{{ $system = "" }}{{ end }}{{ .Content }}'
                '[/INST]{{ else if eq .Role "assistant" }} {{ .Content }}{eos}{{ end }}{{ end }}'),
    # ftstudio's default template (engine.data.DEFAULT_CHAT_TEMPLATE), zephyr style
    "zephyr": ('{{ if .System }}<|system|>\n{{ .System }}\n{{ end }}{{ range .Messages }}'
               '{{ if ne .Role "system" }}<|{{ .Role }}|>\n{{ .Content }}'
               '{{ if eq .Role "assistant" }}{eos}{{ end }}\n{{ end }}{{ end }}<|assistant|>\n'),
}
OLLAMA_STOPS = {"chatml": ["<|im_start|>", "<|im_end|>"],
                "llama3": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
                "mistral": ["[INST]", "[/INST]"],
                "zephyr": ["<|user|>", "<|system|>"]}


def chat_style(template: str | None) -> str | None:
    """Which OLLAMA_TEMPLATES style an HF chat template is, or None when not recognised."""
    if not template:
        return None
    if "<|im_start|>" in template:
        return "chatml"
    if "<|start_header_id|>" in template:
        return "llama3"
    if "[INST]" in template:
        return "mistral"
    if "<|user|>" in template or "'<|' + message['role'] + '|>" in template:
        return "zephyr"
    return None


def modelfile(tokenizer, gguf_file: str) -> str:
    """An Ollama Modelfile for gguf_file (a name beside it): FROM, TEMPLATE and stop tokens."""
    style = chat_style(getattr(tokenizer, "chat_template", None))
    eos = tokenizer.eos_token or ""
    lines = [f"# Ollama: ollama create my-model -f Modelfile && ollama run my-model",
             f"FROM ./{gguf_file}", ""]
    if style is None:
        lines += ["# The chat template was not recognised, so no TEMPLATE is given here; Ollama "
                  "uses the one stored", "# in the GGUF file (tokenizer.chat_template) when it "
                  "recognises it.", ""]
        stops = [eos] if eos else []
    else:
        lines += [f'TEMPLATE """{OLLAMA_TEMPLATES[style].replace("{eos}", eos)}"""', ""]
        system = default_system(tokenizer)
        if system:   # Ollama gives .System this text when a chat has no system message
            lines += ["# the chat template's own system prompt, used when a chat has none",
                      f'SYSTEM """{system}"""', ""]
        stops = OLLAMA_STOPS[style] + ([eos] if eos and eos not in OLLAMA_STOPS[style] else [])
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    return "\n".join(lines) + "\n"


def default_system(tokenizer) -> str | None:
    """The system prompt the chat template writes when a chat has no system message (Qwen2's
    "You are a helpful assistant."), or None: found by rendering a chat with and without one."""
    marker, user = "QqQsystemQqQ", [{"role": "user", "content": "XyZuserXyZ"}]
    try:
        with_system = tokenizer.apply_chat_template(
            [{"role": "system", "content": marker}] + user, tokenize=False)
        without = tokenizer.apply_chat_template(user, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render this has no default
        return None
    if marker not in with_system:
        return None
    head, tail = with_system.split(marker, 1)
    if without.startswith(head) and without.endswith(tail) and \
            len(without) > len(head) + len(tail):
        return without[len(head):len(without) - len(tail)]
    return None


def write_modelfile(tokenizer, gguf_path: Path, log: Log = print) -> Path:
    path = Path(gguf_path).with_name("Modelfile")
    style = chat_style(getattr(tokenizer, "chat_template", None))
    log(f"gguf: Ollama Modelfile ({style or 'template not recognised'})")
    path.write_text(modelfile(tokenizer, Path(gguf_path).name), encoding="utf-8")
    return path
