"""Chat with a base model or a fine-tuned one, streaming tokens as they are generated.

Use from Python:
    from engine.evaluation.generate import stream_chat
    for text in stream_chat("studio-data/models/demo", "studio-data/jobs/7/adapter",
                            [{"role": "user", "content": "reverse: a b c"}]):
        print(text)                       # the answer so far, growing token by token

`adapter` is a PEFT adapter folder (adapter_config.json) or, after full fine-tuning, a whole
model folder; None chats with the base. With a PEFT adapter, `use_adapter=False` answers with the
base weights of the same loaded model (peft's disable_adapter), so comparing base and tuned costs
one model in memory. Loaded models are cached (the newest CACHE_SIZE) and each holds a lock:
generations on one model run one after another.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: how many loaded models the playground keeps in memory
CACHE_SIZE = 2


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    is_peft: bool
    device: str
    lock: threading.Lock = field(default_factory=threading.Lock)


_cache: OrderedDict[tuple[str, str | None], Loaded] = OrderedDict()
_cache_lock = threading.Lock()


def adapter_kind(folder: str | Path | None) -> str | None:
    """'peft' for an adapter folder, 'full' for a whole model folder, None when neither."""
    if not folder:
        return None
    p = Path(folder)
    if (p / "adapter_config.json").is_file():
        return "peft"
    if (p / "config.json").is_file():
        return "full"
    return None


def load(base: str, adapter: str | None = None, dtype: str = "auto") -> Loaded:
    """The model for (base, adapter), from the cache or loaded now (never downloads offline)."""
    key = (str(base), str(adapter) if adapter else None)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    loaded = open_model(*key, dtype=dtype)
    with _cache_lock:
        _cache[key] = loaded
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return loaded


def open_model(base: str, adapter: str | None, dtype: str = "auto") -> Loaded:
    """Load (base, adapter) now, outside the cache (engine.evaluation.evaluate frees it when done)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.training.precision import this_device, weight_dtype

    device, bf16 = this_device()
    torch_dtype = getattr(torch, weight_dtype(dtype, None, device, bf16))
    kind = adapter_kind(adapter)
    if adapter and kind is None:
        raise FileNotFoundError(f"{adapter} holds neither an adapter (adapter_config.json) nor "
                                "a model (config.json); did the job finish?")
    source = adapter if kind == "full" else base
    has_tokenizer = kind and any((Path(adapter) / f).is_file() for f in
                                 ("tokenizer.json", "tokenizer_config.json"))
    # a hub model a job trained on is in the local cache: load it without asking the hub
    from engine.models.presets import hub_cached_file

    offline = {"local_files_only": True} if hub_cached_file(base, "config.json") else {}
    tokenizer = AutoTokenizer.from_pretrained(adapter if has_tokenizer else base,
                                              **({} if has_tokenizer else offline))
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, use_safetensors=True,
                                                 **({} if kind == "full" else offline))
    if kind == "peft":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.to(device).eval()
    from engine.data import ensure_chat_template

    ensure_chat_template(tokenizer)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Loaded(model, tokenizer, kind == "peft", device)


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def render_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    """The conversation in the model's chat template, ending where the assistant speaks."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def stream_chat(base: str, adapter: str | None, messages: list[dict[str, str]], *,
                use_adapter: bool = True, max_new_tokens: int = 128, temperature: float = 0.7,
                top_p: float = 0.9, top_k: int = 50, repetition_penalty: float = 1.0,
                seed: int | None = None) -> Iterator[str]:
    """Yield the assistant's answer so far, growing as tokens arrive."""
    import torch
    from transformers import TextIteratorStreamer

    loaded = load(base, adapter)
    tok, model = loaded.tokenizer, loaded.model
    ids = tok(render_prompt(tok, messages), return_tensors="pt", add_special_tokens=False)
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and ids["input_ids"].shape[1] + max_new_tokens > limit:
        keep = max(1, limit - max_new_tokens)
        ids = {k: v[:, -keep:] for k, v in ids.items()}
    ids = {k: v.to(loaded.device) for k, v in ids.items()}
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True,
                                    timeout=300)
    sampling = temperature > 0
    kwargs = dict(**ids, streamer=streamer, max_new_tokens=int(max_new_tokens),
                  do_sample=sampling, repetition_penalty=float(repetition_penalty),
                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    if sampling:
        kwargs.update(temperature=float(temperature), top_p=float(top_p), top_k=int(top_k))
    errors: list[BaseException] = []

    def work() -> None:
        with loaded.lock:
            try:
                if seed is not None:
                    torch.manual_seed(int(seed))
                switch = model.disable_adapter() if loaded.is_peft and not use_adapter \
                    else nullcontext()
                with switch, torch.inference_mode():
                    model.generate(**kwargs)
            except BaseException as exc:  # noqa: BLE001 - reported to the caller below
                errors.append(exc)
                streamer.end()

    thread = threading.Thread(target=work, daemon=True, name="ftstudio-generate")
    thread.start()
    text = ""
    for piece in streamer:
        text += piece
        yield text
    thread.join()
    if errors:
        raise errors[0]
    if not text:
        yield ""


def chat(base: str, adapter: str | None, messages: list[dict[str, str]], **kw: Any) -> str:
    """The whole answer at once (for scripts and tests)."""
    text = ""
    for text in stream_chat(base, adapter, messages, **kw):
        pass
    return text
