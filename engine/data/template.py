"""Chat templates: ftstudio's default for tokenizers without one, and what identifies a
tokenizer for the tokenized-data cache.

Use from Python:
    from engine.data import ensure_chat_template, DEFAULT_CHAT_TEMPLATE
    ensure_chat_template(tokenizer)   # "tokenizer" (its own) or "default" (set in place)

DEFAULT_CHAT_TEMPLATE:

    <|system|>
    {system}
    <|user|>
    {user}
    <|assistant|>
    {assistant}{eos_token}

(each turn followed by a newline; the markers are plain text, no tokens are added to the vocab.)
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)



def ensure_chat_template(tokenizer) -> str:
    """Give a tokenizer without a chat template DEFAULT_CHAT_TEMPLATE.

    Returns "tokenizer" when it has its own, "default" when the default was set (the tokenizer is
    changed in place, so a saved adapter's tokenizer renders chats the same way)."""
    current = getattr(tokenizer, "chat_template", None)
    if current == DEFAULT_CHAT_TEMPLATE:
        return "default"
    if current:
        return "tokenizer"
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return "default"


def tokenizer_fingerprint(tokenizer) -> dict[str, Any]:
    """What identifies a tokenizer for the cache: name, vocab, chat template, special tokens."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    template = json.dumps(getattr(tokenizer, "chat_template", None), sort_keys=True)
    return {
        "class": type(tokenizer).__name__,
        "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
        "vocab_size": len(tokenizer),
        "vocab_sha256": hashlib.sha256(vocab.encode()).hexdigest(),
        "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest(),
        "bos": tokenizer.bos_token, "eos": tokenizer.eos_token,
    }
