"""Encoding: one normalized example (engine.data.formats) into input_ids and labels, with the
loss mask the data pipeline's rules give (engine.data.pipeline docstring states them).

Use from Python:
    from engine.data import Encoder, IGNORE_INDEX
    enc = Encoder(tokenizer, "messages").encode(messages)    # Encoded(input_ids, labels)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from engine.data.formats import RecordError
from engine.data.readers import DataError

#: the label of a position that carries no loss (prompt, template, padding); the one definition
IGNORE_INDEX = -100



@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    #: the text of each token (for previews), only when asked for
    pieces: list[str] | None = None


class Encoder:
    """Turns normalized examples into input_ids and labels (see the module docstring's rules)."""

    def __init__(self, tokenizer, kind: str, train_on_prompt: bool = False,
                 max_seq_len: int | None = None, path: str = ""):
        self.tokenizer = tokenizer
        self.kind = kind
        self.train_on_prompt = train_on_prompt
        self.max_seq_len = max_seq_len
        self.path = path
        bos = tokenizer.bos_token_id
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        self.add_bos = bos is not None and bool(probe) and probe[0] == bos

    # -- one example
    def encode(self, example: Any, where: str = "", with_pieces: bool = False) -> Encoded:
        """Raises RecordError when the chat template rejects a conversation."""
        tok = self.tokenizer
        append_eos = None
        if self.kind == "messages":
            text, spans = self._render(example, where)
        elif self.kind == "completion":
            prompt, completion = example
            text, spans = prompt + completion, [(len(prompt), len(prompt) + len(completion))]
            append_eos = tok.eos_token_id
        else:
            text, spans = example, [(0, len(example))]
            append_eos = tok.eos_token_id
        if append_eos is not None and tok.eos_token and text.endswith(tok.eos_token):
            append_eos = None
        ids, offsets = self._tokenize(text, spans)
        labels = [tid if self.train_on_prompt or any(s < b and e > a for a, b in spans)
                  else IGNORE_INDEX for tid, (s, e) in zip(ids, offsets)]
        pieces = _pieces(text, offsets) if with_pieces else None
        if self.add_bos and not (tok.bos_token and text.startswith(tok.bos_token)):
            ids, labels = [tok.bos_token_id] + ids, [IGNORE_INDEX] + labels
            if pieces is not None:
                pieces = [tok.bos_token] + pieces
        if append_eos is not None:
            ids, labels = ids + [append_eos], labels + [append_eos]
            if pieces is not None:
                pieces.append(tok.eos_token)
        if labels:
            labels[0] = IGNORE_INDEX  # never predict a record's first token (packing relies on it)
        return Encoded(ids, labels, pieces)

    def _render(self, messages: list[dict], where: str) -> tuple[str, list[tuple[int, int]]]:
        """The conversation's text and the character span of each assistant turn."""
        full = self._apply(messages, False)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prefix = self._apply(messages[:i], True)
            through = self._apply(messages[:i + 1], False)
            if not (through.startswith(prefix) and full.startswith(through)):
                raise DataError(
                    f"{self.path} {where}: the chat template renders the first {i + 1} messages "
                    "differently from the start of the whole conversation (or its generation "
                    "prompt is not a prefix of the assistant turn), so assistant turns cannot "
                    "be located for the loss mask; use a tokenizer whose template renders "
                    "earlier turns unchanged, or convert the data to the completion format")
            end = len(through.rstrip())
            spans.append((len(prefix), max(end, len(prefix))))
        return full, spans

    def _apply(self, messages: list[dict], add_generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        except Exception as exc:  # jinja raises TemplateError; templates may raise anything
            raise RecordError(None, f"the chat template rejected this conversation ({exc})",
                              "check the roles and their order for this model") from None

    def _tokenize(self, text: str, spans: list[tuple[int, int]]
                  ) -> tuple[list[int], list[tuple[int, int]]]:
        tok = self.tokenizer
        if tok.is_fast:
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        # slow tokenizers have no offsets: tokenize each prompt/response segment on its own
        cuts = sorted({0, len(text), *(c for span in spans for c in span)})
        ids, offsets = [], []
        for a, b in zip(cuts, cuts[1:]):
            seg = tok(text[a:b], add_special_tokens=False)["input_ids"]
            ids += seg
            offsets += [(a, b)] * len(seg)
        return ids, offsets

    # -- a batch, for datasets.map
    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {k: [] for k in ("input_ids", "labels", "length", "full_length",
                                                 "trained", "error")}
        for where, raw in zip(batch["where"], batch["example"]):
            try:
                enc = self.encode(json.loads(raw), where)
                error = None
            except RecordError as exc:
                enc, error = Encoded([], []), str(exc)
            full = len(enc.input_ids)
            ids, labels = enc.input_ids, enc.labels
            if self.max_seq_len is not None and full > self.max_seq_len:
                ids, labels = ids[:self.max_seq_len], labels[:self.max_seq_len]
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["length"].append(len(ids))
            out["full_length"].append(full)
            out["trained"].append(sum(x != IGNORE_INDEX for x in labels))
            out["error"].append(error)
        return out


def _pieces(text: str, offsets: list[tuple[int, int]]) -> list[str]:
    """Each token's text, so that the pieces join back into `text` exactly."""
    pieces, done = [], 0
    for s, e in offsets:
        start = max(s, done)
        pieces.append(text[start:e] if e > start else "")
        done = max(done, e)
    return pieces
