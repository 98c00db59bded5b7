"""From tokenized examples to training batches: order, packing or length grouping, padding.

Use from Python:
    from engine.data import Batches
    batches = Batches(prep.train, batch_size=8, max_seq_len=512, packing=True, order="shuffle",
                      seed=42, pad_id=tokenizer.pad_token_id)
    for rows in batches.plan(epoch=0):            # this process's batches, deterministic
        batch = batches.collate(rows)             # dict of tensors for model(**batch)

A batch is a list of rows and a row is a list of example indices: one example, or several packed
into one sequence. The plan depends only on (seed, epoch, settings), so a resumed run that asks
for the same epoch gets the same batches.

- packing: examples go into rows of at most max_seq_len tokens by best-fit decreasing.
  position_ids restart at 0 for every example and the attention mask is a 4-D additive float
  mask (0 where allowed, the dtype's minimum elsewhere) that is causal within each example and
  blocks everything across examples. (Restarted position_ids alone do not isolate examples, and
  a boolean 4-D mask is added to the scores as 0/1 by eager attention; the float mask isolates
  under both sdpa and eager.)
- packing with varlen attention (engine/models/attention.py; `varlen=True`): the rows of a batch are
  laid end to end as ONE flat row with no padding and no mask (collate_flat): position_ids
  restart per example and cu_seq_lens_q/k mark where each example starts, which the varlen
  kernels read. A batch takes memory linear in its tokens. The plan (which examples go in
  which batch) is the same as with the 4-D mask.
- no packing: one example per row, right padding, 2-D attention mask. With order=shuffle the
  examples are grouped by length inside mega-batches so that padding stays small.
- order: shuffle (by seed and epoch), shortest_first, or as_is (file order).
- batch_tokens (optional): batches sized by tokens instead of rows. Packed: batch_tokens //
  max_seq_len rows per batch. Not packed: rows in training order are cut greedily so that rows x
  the longest row of the batch stays within batch_tokens (with order=shuffle the rows come
  length-grouped, so batches of short rows hold many and batches of long rows few); a row
  longer than the budget makes a batch of its own. Same seed and epoch, same batches.
  The number of cuts varies a little with each epoch's shuffle, but the count per epoch is
  fixed at epoch 0's: an epoch with fewer batches splits its largest ones in two, an epoch
  with more leaves its last ones out (logged; a later shuffle brings them back). See
  `fit_batch_count`.
- processes: every process gets the same number of batches in every epoch, so that they step
  together and one checkpointed (epoch, batch) position resumes them all. The epoch's batches
  are dealt round-robin (rank r gets batches r, r + world, ...); the batches past a multiple
  of the number of processes are left out (logged).

Preference data (the dataset has rejected_input_ids; engine.data.pipeline's columns): a record
is a PAIR and is planned exactly as an SFT record is (order, epochs, resume positions, its
length being its longer side's). Packing is refused (ValueError). A batch of B pairs collates
to [2B, L] tensors (collate_pairs): rows 0..B-1 the chosen sides, rows B..2B-1 the rejected
sides, pair i in rows i and B + i, all right-padded to the longest of the 2B. batch_tokens
counts both sides: a batch of B pairs costs 2B x its longest side.
kto data (the dataset has desirable): one record per row as without packing (packing is
refused), plus "desirable", a bool tensor [B] (collate_kto); kto_mismatched builds the
mismatched (prompt i, completion i-1) batch KTO's KL estimate needs.

About 540 lines: planning (best-fit packing, token budgets, equal batch counts across
processes) and collation (padded, packed, flat, pairs, KTO) of one Batches object belong
together.
"""

from __future__ import annotations

import bisect
import heapq
import random
from typing import Any, Callable, Sequence

import torch

from engine.data.encode import IGNORE_INDEX

#: examples shuffled together before sorting by length (in batches), as in HF's length grouping
MEGABATCH_BATCHES = 50


def best_fit_decreasing(indices: Sequence[int], lengths: Sequence[int], capacity: int
                        ) -> list[list[int]]:
    """Pack examples into bins of `capacity` tokens: longest first, each into the fullest bin
    it still fits in (ties keep the order of `indices`). An example longer than the capacity
    gets a bin of its own."""
    order = sorted(indices, key=lambda i: -lengths[i])  # stable: ties keep the given order
    bins: list[list[int]] = []
    free: dict[int, list[int]] = {}   # free tokens -> bins with exactly that much room
    sizes: list[int] = []             # the sorted keys of `free`
    for i in order:
        n = lengths[i]
        at = bisect.bisect_left(sizes, n)
        if at < len(sizes):
            room = sizes[at]
            b = free[room].pop()
            if not free[room]:
                del free[room]
                sizes.pop(at)
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        left = room - n
        if left > 0:
            if left not in free:
                free[left] = []
                bisect.insort(sizes, left)
            free[left].append(b)
    return bins


def ordered_indices(lengths: Sequence[int], order: str, seed: int, epoch: int,
                    batch_size: int, batch_tokens: int | None = None) -> list[int]:
    """Example indices in training order for one epoch (no packing). With shuffle, groups of
    similar length (batch_size rows, or what fits in batch_tokens) are shuffled as units."""
    n = len(lengths)
    if order == "as_is":
        return list(range(n))
    if order == "shortest_first":
        return sorted(range(n), key=lambda i: lengths[i])
    rng = _rng(seed, epoch)
    idx = list(range(n))
    rng.shuffle(idx)
    mega = batch_size * MEGABATCH_BATCHES
    groups = [sorted(idx[s:s + mega], key=lambda i: -lengths[i]) for s in range(0, n, mega)]
    if batch_tokens:
        batches = [[g[p] for p in b] for g in groups
                   for b in token_budget_batches([[i] for i in g], lengths, batch_tokens)]
    else:
        batches = [g[s:s + batch_size] for g in groups for s in range(0, len(g), batch_size)]
    rng.shuffle(batches)
    return [i for b in batches for i in b]


def packed_rows(lengths: Sequence[int], order: str, seed: int, epoch: int, capacity: int
                ) -> list[list[int]]:
    """Rows of packed example indices in training order for one epoch."""
    n = len(lengths)
    if order == "shuffle":
        rng = _rng(seed, epoch)
        idx = list(range(n))
        rng.shuffle(idx)
        rows = best_fit_decreasing(idx, lengths, capacity)
        rng.shuffle(rows)
        return rows
    rows = best_fit_decreasing(range(n), lengths, capacity)
    if order == "shortest_first":
        return sorted(rows, key=lambda r: (sum(lengths[i] for i in r) / len(r), min(r)))
    return sorted(rows, key=min)  # as_is: by the first record each row holds


def token_budget_batches(rows: Sequence[Sequence[int]], lengths: Sequence[int],
                         batch_tokens: int) -> list[list[int]]:
    """Cut rows (in order) into batches of consecutive positions whose padded size, rows x the
    longest row, stays within batch_tokens; a row longer than the budget is a batch alone.
    Returns each batch's row positions."""
    batches: list[list[int]] = []
    current: list[int] = []
    widest = 0
    for pos, row in enumerate(rows):
        n = sum(lengths[i] for i in row)
        if current and (len(current) + 1) * max(widest, n) > batch_tokens:
            batches.append(current)
            current, widest = [], 0
        current.append(pos)
        widest = max(widest, n)
    if current:
        batches.append(current)
    return batches


def fit_batch_count(batches: list[list[list[int]]], lengths: Sequence[int], count: int
                    ) -> tuple[list[list[list[int]]], list[list[list[int]]]]:
    """Exactly `count` batches out of `batches` (in training order), and the batches left out.

    More than `count`: the last ones are left out, like drop_last (in a shuffled order they are
    a random few, and another epoch's shuffle trains them). Fewer: the batch with the most rows
    (then the largest padded size, then the earliest) is split in place into two halves, its
    first rows and its last, until there are `count`. A half has fewer rows than its batch and
    no longer a row, so it fits any budget the batch fit.

    Splitting can go on while any batch has 2+ rows, i.e. until there is one batch per row, so
    it reaches any `count` up to the number of rows. Batches cut by a token budget (not packed)
    hold the same rows, one record each, in every epoch, and `Batches` asks for at most epoch
    0's number of batches, each of which held at least one row: the count is always reached.
    Raises ValueError when `count` is more than the number of rows."""
    if len(batches) >= count:
        return batches[:count], batches[count:]

    def entry(rows: list[list[int]], key: tuple[int, ...]):
        width = max(sum(lengths[i] for i in r) for r in rows)
        return -len(rows), -len(rows) * width, key, rows   # keys are unique: rows never compared

    heap = [entry(rows, (p,)) for p, rows in enumerate(batches)]
    heapq.heapify(heap)
    for _ in range(count - len(batches)):
        if not heap or -heap[0][0] < 2:
            raise ValueError(f"{count} batches asked of {len(heap)} rows: a batch cannot be "
                             "split below one row")
        *_, key, rows = heapq.heappop(heap)
        half = (len(rows) + 1) // 2
        heapq.heappush(heap, entry(rows[:half], key + (0,)))
        heapq.heappush(heap, entry(rows[half:], key + (1,)))
    return [rows for *_, rows in sorted(heap, key=lambda e: e[2])], []


def collate_pairs(pairs: list[tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]],
                  pad_id: int) -> dict[str, torch.Tensor]:
    """B (chosen, rejected) pairs of (input_ids, labels) as [2B, L] tensors: rows 0..B-1 the
    chosen sides, B..2B-1 the rejected sides in the same order; right-padded (labels -100)."""
    return collate_padded([c for c, _ in pairs] + [r for _, r in pairs], pad_id)


def collate_packed_pairs(rows: list[list[tuple[tuple[list[int], list[int]],
                                              tuple[list[int], list[int]]]]],
                         pad_id: int, mask_dtype: torch.dtype = torch.float32,
                         flat: bool = False) -> dict[str, torch.Tensor]:
    """Pairs packed several to a row, each pair's chosen and rejected side as two records of
    the row (attention stays inside each: collate_packed's block-diagonal mask, or with
    flat=True collate_flat's one row of cu_seqlens for varlen attention). "seq_ids" (the shape
    of input_ids) tells the sequence every token belongs to, numbered as collate_pairs' rows:
    pair j's chosen side j, its rejected side P + j (P pairs, in row order), -1 for padding,
    so engine.training.preference sums each side's log-probs over its own tokens."""
    pairs = [pair for row in rows for pair in row]
    count = len(pairs)
    sides, numbers = [], []
    j = 0
    for row in rows:
        seqs, nums = [], []
        for chosen, rejected in row:
            seqs += [chosen, rejected]
            nums += [j, count + j]
            j += 1
        sides.append(seqs)
        numbers.append(nums)
    if flat:
        batch = collate_flat([seq for row in sides for seq in row])
        lengths = torch.tensor([len(ids) for row in sides for ids, _ in row])
        batch["seq_ids"] = torch.repeat_interleave(
            torch.tensor([n for row in numbers for n in row]), lengths)[None]
        return batch
    batch = collate_packed(sides, pad_id, mask_dtype)
    seq_ids = torch.full(batch["input_ids"].shape, -1, dtype=torch.long)
    for b, (row, nums) in enumerate(zip(sides, numbers)):
        at = 0
        for (ids, _), n in zip(row, nums):
            seq_ids[b, at:at + len(ids)] = n
            at += len(ids)
    batch["seq_ids"] = seq_ids
    return batch


def collate_kto(examples: list[tuple[list[int], list[int]]], desirable: Sequence[bool],
                pad_id: int) -> dict[str, torch.Tensor]:
    """kto records right-padded as collate_padded, plus "desirable": a bool tensor [B]."""
    batch = collate_padded(examples, pad_id)
    batch["desirable"] = torch.tensor([bool(x) for x in desirable], dtype=torch.bool)
    return batch


def kto_mismatched(batch: dict[str, torch.Tensor], pad_id: int, max_len: int | None = None
                   ) -> dict[str, torch.Tensor]:
    """The mismatched batch of KTO's KL estimate from a collated kto batch: row i is row i's
    prompt followed by row (i - 1) mod B's completion (TRL's pairing), right-padded, cut to
    max_len keeping the start. A row's prompt is its tokens before its first trained label; its
    completion the rest of its real tokens. With B = 1 a row is matched with itself."""
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    rows = []
    for i in range(ids.shape[0]):
        n = int(mask[i].sum())
        trained = (labels[i, :n] != IGNORE_INDEX).nonzero()
        start = int(trained[0]) if len(trained) else n
        rows.append((ids[i, :start].tolist(), ids[i, start:n].tolist(),
                     labels[i, start:n].tolist()))
    examples = []
    for i, (prompt, _, _) in enumerate(rows):
        _, answer, answer_labels = rows[i - 1]
        seq = prompt + answer
        lab = [IGNORE_INDEX] * len(prompt) + answer_labels
        if max_len is not None:
            seq, lab = seq[:max_len], lab[:max_len]
        examples.append((seq, lab))
    return collate_padded(examples, pad_id)


def records_moved(rows: Sequence[Sequence[int]]) -> int:
    """How many examples are not at their file position in this order."""
    return sum(1 for pos, i in enumerate(i for r in rows for i in r) if pos != i)


def _latest(cache: dict[int, Any], epoch: int, value: Any) -> dict[int, Any]:
    """A per-epoch cache with `epoch`'s value and the previous epoch's only (a resumed or
    wrapping stream asks for both)."""
    return {e: v for e, v in cache.items() if e == epoch - 1} | {epoch: value}


def _rng(seed: int, epoch: int) -> random.Random:
    return random.Random(seed * 1_000_003 + epoch)


def data_kind(dataset) -> str:
    """"preference" (pairs: the dataset has rejected_input_ids), "kto" (it has desirable) or
    "sft" (one sequence per record), from a tokenized dataset's columns."""
    columns = dataset.column_names
    if "rejected_input_ids" in columns:
        return "preference"
    return "kto" if "desirable" in columns else "sft"


class Batches:
    """The batches of one split for this process: planned per epoch, collated on demand.

    `kind` (data_kind: sft, preference, kto) is read from the dataset's columns."""

    def __init__(self, dataset, *, batch_size: int, max_seq_len: int, packing: bool,
                 order: str, seed: int, pad_id: int, mask_dtype: torch.dtype = torch.float32,
                 rank: int = 0, world: int = 1, batch_tokens: int | None = None,
                 log: Callable[[str], None] | None = None, varlen: bool = False):
        self.kind = data_kind(dataset)
        if packing and self.kind == "kto":
            raise ValueError("packing is not supported for kto records: the reference point "
                             "pairs each prompt with another record's answer, row by row; set "
                             "data.packing: false")
        columns = {"sft": ["input_ids", "labels"],
                   "preference": ["input_ids", "labels", "rejected_input_ids", "rejected_labels"],
                   "kto": ["input_ids", "labels", "desirable"]}[self.kind]
        self.dataset = dataset.select_columns(columns)
        #: each record's length (a pair's: its longer side), which orders and groups records
        self.lengths: list[int] = list(dataset["length"])
        #: each record's real tokens (a pair's: both sides)
        self.record_tokens: list[int] = _pair_tokens(dataset) if self.kind == "preference" \
            else self.lengths
        #: what a record costs in a batch: its length, twice its longer side for a pair in rows
        #: of its own (two padded rows), both sides' tokens for a packed pair
        self.costs: list[int] = self.record_tokens if packing else \
            [2 * n for n in self.lengths] if self.kind == "preference" else self.lengths
        self.max_seq_len, self.batch_tokens = max_seq_len, batch_tokens
        #: a packed row's tokens: max_seq_len, or two sides of max_seq_len for pairs
        self.row_capacity = max_seq_len * (2 if self.kind == "preference" else 1)
        self.batch_size = max(1, batch_tokens // self.row_capacity) \
            if batch_tokens and packing else batch_size
        self.packing, self.order, self.seed = packing, order, seed
        #: packed batches collate to one flat row (collate_flat) for varlen attention
        self.varlen = packing and varlen
        self.pad_id, self.mask_dtype = pad_id, mask_dtype
        self.rank, self.world = rank, world
        #: pairs: precomputed reference log-probs [N, 2] (chosen, rejected), engine.training.reference
        self.reference_logps: torch.Tensor | None = None
        self.log = log
        self._plans: dict[int, list[list[list[int]]]] = {}
        self._rows: dict[int, list[list[int]]] = {}
        self._cut: dict[int, list[list[list[int]]]] = {}     # all_batches, by epoch
        self._fitted: dict[int, tuple] = {}                  # epoch_batches, by epoch
        self.rows_per_epoch = len(self.rows(0))
        # one count for every process and every epoch: epoch 0's, dealt evenly (by token budget
        # other epochs cut a few more or fewer; plan() fits them to it)
        self.batches_per_epoch = len(self.all_batches(0)) // world

    def __len__(self) -> int:
        return self.batches_per_epoch

    def rows(self, epoch: int) -> list[list[int]]:
        """All rows of the epoch, every process's, in training order (the latest two kept)."""
        if epoch not in self._rows:
            if self.packing:
                rows = packed_rows(self.costs, self.order, self.seed, epoch, self.row_capacity)
            else:
                rows = [[i] for i in ordered_indices(self.costs, self.order, self.seed, epoch,
                                                     self.batch_size, self.batch_tokens)]
            self._rows = _latest(self._rows, epoch, rows)
        return self._rows[epoch]

    @property
    def by_tokens(self) -> bool:
        """Batches cut by the token budget (not packed); packed budgets fix the rows instead."""
        return bool(self.batch_tokens) and not self.packing

    def all_batches(self, epoch: int) -> list[list[list[int]]]:
        """The epoch's rows cut into batches, in training order: every record once, before the
        count is fitted to the processes (see epoch_batches)."""
        if epoch not in self._cut:
            rows = self.rows(epoch)
            cut = ([[rows[p] for p in b]
                    for b in token_budget_batches(rows, self.costs, self.batch_tokens)]
                   if self.by_tokens else
                   [rows[s:s + self.batch_size] for s in range(0, len(rows), self.batch_size)])
            self._cut = _latest(self._cut, epoch, cut)
        return self._cut[epoch]

    def epoch_batches(self, epoch: int) -> tuple[list[list[list[int]]], list[list[list[int]]]]:
        """Every process's batches of the epoch, exactly batches_per_epoch x world of them in
        training order, and the batches left out (fit_batch_count)."""
        if epoch not in self._fitted:
            fitted = fit_batch_count(self.all_batches(epoch), self.costs,
                                     self.batches_per_epoch * self.world)
            self._fitted = _latest(self._fitted, epoch, fitted)
        return self._fitted[epoch]

    def plan(self, epoch: int) -> list[list[list[int]]]:
        """This process's batches for `epoch`: every world-th batch, batches_per_epoch of them
        on every process in every epoch."""
        if epoch not in self._plans:
            rows = self.rows(epoch)
            cut = len(self.all_batches(epoch))
            batches, left_out = self.epoch_batches(epoch)
            self._plans = {epoch: batches[self.rank::self.world]}
            if self.log:
                self.log(f"batching: epoch {epoch + 1}: order {self.order}"
                         f"{f' (seed {self.seed})' if self.order == 'shuffle' else ''}, "
                         f"{records_moved(rows)} of {len(self.lengths)} records moved from "
                         f"file order")
                if len(batches) > cut:
                    self.log(f"batching: epoch {epoch + 1}: the budget cuts {cut} batches; "
                             f"{len(batches) - cut} splits of the batches with the most rows "
                             f"keep the count at {len(batches)}")
                if left_out:
                    self.log(f"batching: epoch {epoch + 1}: {self._left_out(left_out)} past "
                             f"this epoch's {len(batches)}{self._per_process()} "
                             f"{'are' if len(left_out) > 1 else 'is'} left out; "
                             f"{self._comes_back()}")
        return self._plans[epoch]

    def _left_out(self, batches: list[list[list[int]]]) -> str:
        records = sum(len(r) for b in batches for r in b)
        return (f"{len(batches)} batch{'es' if len(batches) > 1 else ''} "
                f"({records} record{'s' if records > 1 else ''})")

    def _per_process(self) -> str:
        return f" ({self.batches_per_epoch} for each of {self.world} processes)" \
            if self.world > 1 else ""

    def _comes_back(self) -> str:
        return ("other epochs' shuffles train them" if self.order == "shuffle" else
                f"order {self.order} leaves out the same ones every epoch")

    def padding_share(self, epoch: int = 0) -> float:
        """Share of the tokens in this epoch's batches that are padding (none when flat)."""
        if self.varlen:
            return 0.0
        real = padded = 0
        for rows in self.epoch_batches(epoch)[0]:
            batch = [sum(self.costs[i] for i in r) for r in rows]
            real += self.tokens(rows)
            padded += max(batch) * len(batch)
        return 1 - real / padded if padded else 0.0

    def tokens(self, rows: list[list[int]]) -> int:
        """The real (not padding) tokens of a batch: both sides of every pair."""
        return sum(self.record_tokens[i] for r in rows for i in r)

    def summary(self) -> dict[str, Any]:
        """For run.json."""
        return {"packing": self.packing, "order": self.order, "rows_per_epoch": self.rows_per_epoch,
                "batches_per_epoch": self.batches_per_epoch, "batch_tokens": self.batch_tokens,
                "padding_share": round(self.padding_share(), 4)}

    def describe(self) -> str:
        what = "pairs (both sides of each in the same row)" if self.kind == "preference" \
            else "records"
        how = (f"packing {len(self.lengths)} {what} into {self.rows_per_epoch} rows of at most "
               f"{self.row_capacity} tokens" if self.packing else
               f"{len(self.lengths)} pairs, each a chosen and a rejected row"
               if self.kind == "preference" else
               f"{len(self.lengths)} records, one per row")
        how += ", grouped by length" if self.order == "shuffle" and not self.packing else ""
        how += ", each batch one flat row (varlen attention)" if self.varlen else ""
        size = (f"at most {self.batch_tokens} padded tokens" if self.by_tokens else
                f"{self.batch_size} pairs ({2 * self.batch_size} rows)"
                if self.kind == "preference" and not self.packing else f"{self.batch_size} rows")
        fitted = (" (epoch 1's count: other epochs split their largest batches or leave out "
                  "their last to keep it)" if self.by_tokens and self.order == "shuffle" else "")
        left_out = self.epoch_batches(0)[1]
        dropped = (f"; {self._left_out(left_out)} past a multiple of the {self.world} "
                   f"processes left out of {'epoch 1' if fitted else 'every epoch'} "
                   f"({self._comes_back()})" if left_out else "")
        return (f"batching: {how}; {self.batches_per_epoch} batches of {size} "
                f"per epoch{f' per process' if self.world > 1 else ''}{fitted}{dropped}; "
                f"padding {self.padding_share():.1%} of tokens")

    def collate(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        """Tensors for one batch: input_ids, labels, attention_mask (+ position_ids packed).
        Pairs: [2B, L], chosen rows then rejected rows (collate_pairs); kto: + desirable [B]."""
        flat = [i for r in rows for i in r]
        data = self.dataset[flat]
        if self.kind == "preference":
            pairs = list(zip(zip(data["input_ids"], data["labels"]),
                             zip(data["rejected_input_ids"], data["rejected_labels"])))
            if self.packing:
                at = {i: pos for pos, i in enumerate(flat)}
                batch = collate_packed_pairs([[pairs[at[i]] for i in r] for r in rows],
                                             self.pad_id, self.mask_dtype, flat=self.varlen)
            else:
                batch = collate_pairs(pairs, self.pad_id)
            if self.reference_logps is not None:    # [N, 2] per pair (engine.training.reference)
                picked = self.reference_logps[torch.tensor(flat)]
                batch["ref_logps"] = torch.cat([picked[:, 0], picked[:, 1]])
            return batch
        if self.kind == "kto":
            return collate_kto(list(zip(data["input_ids"], data["labels"])), data["desirable"],
                               self.pad_id)
        by_index = {i: (ids, lab) for i, ids, lab in zip(flat, data["input_ids"], data["labels"])}
        if self.varlen:
            return collate_flat([by_index[i] for r in rows for i in r])
        if self.packing:
            return collate_packed([[by_index[i] for i in r] for r in rows], self.pad_id,
                                  self.mask_dtype)
        return collate_padded([by_index[r[0]] for r in rows], self.pad_id)


def _pair_tokens(dataset) -> list[int]:
    """Both sides' lengths of every pair, read from Arrow (no token lists in Python)."""
    import pyarrow.compute as pc

    table = dataset.with_format("arrow")
    chosen = pc.list_value_length(table["input_ids"]).to_pylist()
    rejected = pc.list_value_length(table["rejected_input_ids"]).to_pylist()
    return [c + r for c, r in zip(chosen, rejected)]


def collate_padded(examples: list[tuple[list[int], list[int]]], pad_id: int
                   ) -> dict[str, torch.Tensor]:
    """One example per row, right-padded; labels padded with -100."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for b, (ids, lab) in enumerate(examples):
        input_ids[b, :len(ids)] = torch.tensor(ids)
        labels[b, :len(lab)] = torch.tensor(lab)
        mask[b, :len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


def collate_packed(rows: list[list[tuple[list[int], list[int]]]], pad_id: int,
                   mask_dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Several examples per row: positions restart per example and attention stays inside it."""
    width = max(sum(len(ids) for ids, _ in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    segment = torch.full((len(rows), width), -1, dtype=torch.long)  # -1: padding
    for b, row in enumerate(rows):
        at = 0
        for k, (ids, lab) in enumerate(row):
            n = len(ids)
            input_ids[b, at:at + n] = torch.tensor(ids)
            labels[b, at:at + n] = torch.tensor(lab)
            position_ids[b, at:at + n] = torch.arange(n)
            segment[b, at:at + n] = k
            at += n
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids,
            "attention_mask": block_causal_mask(segment, mask_dtype)}


def collate_flat(examples: list[tuple[list[int], list[int]]]) -> dict[str, Any]:
    """Examples end to end as one row [1, T] with no padding and no attention mask, for varlen
    attention (engine/models/attention.py): position_ids restart at 0 per example; cu_seq_lens_q/k
    (int32, [n + 1]) are the examples' boundaries and max_length_q/k the longest (ints), the
    keyword arguments of flash attention's varlen path (transformers passes them through the
    model to every attention layer). Memory is linear in T: nothing is T x T.

    Pair packing can build on it: put each side of each pair in as an example, then
    segment_ids(batch) tells which example every token belongs to."""
    lengths = [len(ids) for ids, _ in examples]
    input_ids = torch.tensor([t for ids, _ in examples for t in ids], dtype=torch.long)[None]
    labels = torch.tensor([t for _, lab in examples for t in lab], dtype=torch.long)[None]
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    longest = max(lengths)
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids,
            "cu_seq_lens_q": cu, "cu_seq_lens_k": cu.clone(), "max_length_q": longest,
            "max_length_k": longest}


def segment_ids(batch: dict[str, Any]) -> torch.Tensor:
    """Which example each token of a flat batch (collate_flat) belongs to: [T] of 0..n-1."""
    cu = batch["cu_seq_lens_q"].long()
    return torch.repeat_interleave(torch.arange(len(cu) - 1, device=cu.device), cu.diff())


def to_device(batch: dict[str, Any], device) -> dict[str, Any]:
    """A collated batch on `device` (tensors moved, ints such as max_length_q kept)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def block_causal_mask(segment: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, 1, L, L) additive mask from per-token segment ids (-1 = padding): 0 where token q may
    attend to token k (same segment, k <= q), the dtype's minimum elsewhere. Padding tokens
    attend only to themselves, so no row is fully masked."""
    width = segment.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same = segment[:, :, None] == segment[:, None, :]
    allowed = same & causal & (segment[:, :, None] >= 0)
    allowed |= torch.eye(width, dtype=torch.bool)
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def trained_tokens(batch: dict[str, Any]) -> int:
    """Tokens that carry loss in a batch (labels shifted by one, as the loss sees them)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
