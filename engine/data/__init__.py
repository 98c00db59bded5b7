"""From data files to batches: reading, formats, chat templates, encoding, the tokenized-data
cache, the data report and batching. Callers outside the package import from here.

    engine.data.readers    files (.json, .jsonl, .csv, .parquet) into raw records with their lines
    engine.data.formats    one function per record format (alpaca, chat, ..., preference, kto),
                           and detection
    engine.data.template   ftstudio's default chat template, the tokenizer's fingerprint
    engine.data.encode     a normalized example into input_ids and labels (the loss mask)
    engine.data.cache      the tokenized-data cache under FTSTUDIO_HOME/cache
    engine.data.report     the data report (DataReport) and its text forms
    engine.data.prompts    prompt-only records for GRPO (prompt, chat, alpaca) and their columns
    engine.data.pipeline   the pipeline: prepare(), data_report(), check_file(), preview()
    engine.data.batching   packing and padding rows into batches (Batches)
    engine.data.examples   the bundled example datasets (static/examples), and the demo's text

Use from Python:
    from engine.data import prepare, data_report, format_report, Batches
    data = prepare(cfg, tokenizer, log=print)     # PreparedData: train, validation, report
"""

from engine.data.batching import (Batches, best_fit_decreasing, block_causal_mask,
                                  collate_flat, segment_ids, to_device, collate_kto, collate_packed, collate_packed_pairs, collate_padded, collate_pairs,
                                  data_kind, fit_batch_count, kto_mismatched,
                                  token_budget_batches, trained_tokens)
from engine.data.encode import IGNORE_INDEX, Encoded, Encoder
from engine.data.formats import (CHAT_KINDS, FORMATS, PREFERENCE_KINDS, EmptyAnswer, Format,
                                 RecordError, detect_format)
from engine.data.pipeline import (MAX_BAD_EXAMPLES, FormatNotDetected, PreparedData, check_file,
                                 data_report, dataset_columns, normalized_examples, prepare,
                                 preview, split_indices)
from engine.data.readers import (MAX_LINE_CHARS, DataError, RawRecord, check_path, file_sha256,
                                 read_records)
from engine.data.report import (DataReport, fill_lengths, fill_side_lengths, format_report,
                                summary_line, why_none_used)
from engine.data.template import DEFAULT_CHAT_TEMPLATE, ensure_chat_template

__all__ = ["Batches", "best_fit_decreasing", "block_causal_mask", "collate_packed",
           "collate_packed_pairs",
           "collate_flat", "segment_ids", "to_device",
           "collate_padded", "fit_batch_count", "token_budget_batches", "trained_tokens",
           "IGNORE_INDEX", "Encoded", "Encoder", "FORMATS", "Format", "RecordError",
           "detect_format", "MAX_BAD_EXAMPLES", "FormatNotDetected", "PreparedData",
           "check_file", "data_report", "normalized_examples", "prepare", "preview",
           "split_indices", "MAX_LINE_CHARS", "DataError", "RawRecord", "check_path",
           "file_sha256", "read_records", "DataReport", "fill_lengths", "format_report",
           "summary_line", "why_none_used", "DEFAULT_CHAT_TEMPLATE", "ensure_chat_template",
           # preference tuning (DPO/IPO/SimPO/ORPO pairs, KTO)
           "collate_kto", "collate_pairs", "data_kind", "kto_mismatched", "CHAT_KINDS",
           "PREFERENCE_KINDS", "EmptyAnswer", "dataset_columns", "fill_side_lengths"]
