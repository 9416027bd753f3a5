"""Data for REDI: loading and batching for the training scripts, and OpenR1-Math-Raw curation.

The code is laid out in the order a user meets it:
1. What train_sft.py and train_redi.py import: `load_tokenizer`, the loaders `load_sft_examples`
   / `load_pairs` (curated files or your own), `tokenize_sft` / `tokenize_pairs`, `num_tokens`,
   `collate` / `collate_pairs` and `StepSampler`.
2. Curation: OpenR1-Math-Raw -> REDI's two training sets, SFT examples and preference pairs.
3. The command line (`main()` last):

    python data.py curate --raw OpenR1-Math-Raw/data --id-prefix openr1-math-raw \\
        --sft-out runs/data/sft.jsonl --pairs-out runs/data/pairs.jsonl --tokenizer Qwen/Qwen2.5-Math-1.5B \\
        --benchmarks benchmarks/{math500,aime24,amc23,minerva,olympiadbench}.jsonl \\
        --expect-counts 77629 53175
    python data.py check --data runs/data/sft.jsonl my_pairs.jsonl   # validate curated / own files

## Bring your own data
The training scripts read curated files through `load_sft_examples(path)` / `load_pairs(path)`,
which accept our outputs ("Curated output formats" below) and the common formats, one kind per
file (detected from the keys):
    pairs: "prompt" (string or messages) + "chosen" / "rejected", each a string, [assistant
           message], or the full conversation (prompt messages + assistant message, checked
           against the prompt); or, without "prompt", "chosen" / "rejected" as full conversations
           sharing everything but the last message (TRL's implicit-prompt form)
    SFT:   "messages" (the last must be the assistant's; the ones before are the prompt), or
           "prompt" + "completion" (strings or messages, as for pairs)
Both return canonical dicts: pairs {"id", "prompt_messages", "chosen", "rejected"}, SFT
{"id", "prompt_messages", "response"}; a missing "id" becomes "BASENAME:LINE", duplicates are
an error. A prompt's last message must be the user's. Bad rows raise InputError (a ValueError)
naming file, line and field. `python data.py check --data FILE...` runs the same loaders and prints counts.

## Formatting and batching (used by train_sft.py and train_redi.py)
`load_tokenizer` loads a Hugging Face tokenizer and, when it has none, makes EOS the pad token
(pads only fill the padded layout: their labels are IGNORE_INDEX and their attention mask 0).

`tokenize_example` chat-templates [prompt messages..., assistant: response] and returns
input_ids and labels: IGNORE_INDEX (-100, from redi_loss) on the prompt (which, with REDI's
template, ends in the generation prompt `<|im_start|>assistant\n<think>\n`), and the response
tokens INCLUDING the end-of-turn token `<|im_end|>` as labels, so the model learns to stop;
whatever the template puts after it (Qwen: "\n") is dropped. The boundary comes from tokenizing
the prompt and the whole conversation and checking the first is a token prefix of the second.
Responses are never truncated: a sequence over the maximum length is an error naming the example.

`collate` builds a micro-batch in the padded layout (right padding + attention_mask) or the
packed, padding-free layout (one row, position_ids restarting per sequence, `seq_index` telling
which sequence owns each token); per-sequence log-probs are identical in both
(tests/test_batching.py). SFT micro-batches are `collate(examples)`; a pair micro-batch,
`collate_pairs(pairs)`, holds chosen and rejected of each pair: sequences
[chosen_0..chosen_{n-1}, rejected_0..rejected_{n-1}] go through ONE forward.

`StepSampler` assigns examples to (epoch, step, rank, micro-batch) as a pure function of
(seed, epoch, step): deterministic, resumable from the step counter alone, the same number of
micro-batches on every rank (a short last step is padded with zero-weight repeats), micro-batches
of a fixed size or formed by a token budget.

## Curation
`curate` turns OpenR1-Math-Raw (about 516k NuminaMath-1.5 problems, each with DeepSeek-R1
generations and two verifiers' labels) into REDI's two training sets, by the rules of the
paper (arXiv 2505.24850, Appendix C.2) and of its code (`clean_base_shuffled.py`,
`clean_base_shuffled_dpo.py`, `study_length_distribution.py` in Tim-Siu/reinforcement-distillation).
`--raw` is a .jsonl or .parquet file (Parquet needs `pip install pyarrow`, an optional
dependency) or a directory whose *.jsonl / *.parquet shards are read in name order.

## Curation rules (columns: the schema notes of OpenR1-Math-Raw, summarised below)
1. Every raw row gets `original_index`, its 0-based position across all input files.
2. Row filters, in REDI's order; a row is dropped by the first it fails and counted there:
   `invalid_problem` (`problem_is_valid` is not a string equal to "yes" after strip/lower:
   " yes " passes, "No", null and missing do not); `excluded_source` (`--exclude-source`,
   default cn_k12); `empty_problem` (missing, null or ""); `empty_generations` (missing, null
   or []); `bad_correctness` (`correctness`, `correctness.llama_verification` or
   `.math_verify_reparsed_answer` missing or null, or a list not as long as `generations`).
3. Generation i is positive iff `llama_verification[i]` AND `math_verify_reparsed_answer[i]`
   are true; otherwise negative (one verifier alone is not enough; a null label is negative, as
   REDI's `bool(label)`; their number is reported). `math_verify_answer` plays no part.
4. SFT set: for each kept row with a positive, [user: problem, assistant: the lowest-index
   positive], the generation unchanged (with its <think> block). Not length-filtered.
5. Pairs: for each kept row with a positive AND a negative: chosen = that same positive,
   rejected = the lowest-index negative.
6. Refusals, so that every row written loads with `load_sft_examples` / `load_pairs` (which
   refuse an empty response). Not written, and counted by name (`refused` in the summary; a
   pair once, by the first that applies): SFT `empty_response` (the chosen generation is "":
   no SFT example and no pair); pairs `empty_chosen` (the same case, for the pair),
   `empty_rejected` (the rejected generation is ""; the SFT example is still written), and,
   only with `--drop-identical-pairs`, `chosen_equals_rejected` (the very same text labelled
   positive and negative: nothing to prefer). Without that flag such pairs are written, as
   REDI's code writes them, and counted (`identical_pairs`); OPENR1_SCHEMA.md's fixture
   expects two of them (rows D and H).
7. Length filter, pairs only, with `--tokenizer` (REDI: Qwen2.5-Math-1.5B): prompt tokens =
   the chat-templated [user] message without generation prompt, + 1; chosen / rejected tokens
   = the lone [assistant] message chat-templated, + 1 for EOS (Qwen's template adds its default
   system block to a lone message, so this overcounts slightly, exactly as REDI did). Keep the
   pair iff prompt <= 800 and chosen <= 19,000 and rejected <= 19,000. Without `--tokenizer`
   this step is skipped and the summary says so.
8. Outputs are ordered by a seeded shuffle (`--seed`, default 42) of the raw rows.

The paper reports **77,629 SFT examples and 53,175 pairs** on the full Raw train split. Those
figures come from the paper and were NOT reproduced here (these machines cannot reach the hub);
`--expect-counts 77629 53175` makes a run on the real data fail loudly if it disagrees. On
`tests/data/openr1_raw_synthetic_fixture.jsonl` the rules give 4 SFT examples
(rows A, D, E, H) and 3 pairs (A, D, H), as OPENR1_SCHEMA.md states (tests/test_curation.py).

## Where curation departs from REDI's scripts, and why
1. Ids are deterministic, `PREFIX/original_index` (PREFIX: `--id-prefix`, default the stem of
   `--raw`), not uuid4: an SFT example and the pair of the same problem share it, and reruns agree.
2. Order: REDI shuffled the raw rows with `datasets`' `shuffle(seed=42)` and curated them in
   that order. We curate in file order and then sort the outputs by each row's position in
   `np.random.default_rng(seed).permutation(num_rows)`, which is what `datasets` does per its
   source; without that library installed it is not checked bit-for-bit.
3. A field of the wrong JSON type (e.g. `generations` not a list of strings, a label that is not
   true/false/null, `problem_is_valid` not a string), a row that is not an object, malformed
   JSON, and a text to be written that UTF-8 cannot encode (a lone surrogate escape, "\\ud800")
   are errors naming file, line and field: they mean a different schema, and REDI's code would
   crash or misread them. Rows REDI's code skips (rule 2) are skipped and counted.
4. Pairs are stored in TRL's conversational explicit-prompt form (prompt as a message list,
   chosen / rejected as the lone assistant message); REDI stored `prompt` as a string and
   chosen / rejected as full two-message conversations. Both forms load ("Bring your own data").
5. A decontamination report, which REDI did not make: `--benchmarks FILE...` lists word
   n-gram overlaps (`--decontam-ngram`, default 13, after lower-casing and collapsing
   non-alphanumerics) between curated problems and benchmark problems; `--drop-contaminated`
   also removes those problems from both outputs (counted). Default: report only. Each hit
   lists the shared n-gram: overlaps inside [asy] code or tables can be coincidental, so read them.
6. Rule 6's refusals: REDI's scripts would write an empty response, which our loaders (and any
   trainer) cannot use. Whether the full Raw data holds any was not measured here; if it does, a
   run there writes fewer rows than the paper's counts by the numbers under `refused`.
   Identical chosen/rejected pairs are kept by default, as REDI kept them (REDI's loss on one
   is (1 - alpha)-weighted SFT; DPO's gradient is zero); the built-in toy task has them (a
   correct trace the noisy judge refused, ~3% of its pairs), and `--drop-identical-pairs`
   refuses them.

## Curated output formats (JSON Lines, UTF-8)
    SFT:  {"id", "messages": [{"role": "user", "content": PROBLEM},
                              {"role": "assistant", "content": GENERATION}],
           "source", "original_index", "chosen_gen_idx"}
    pair: {"id", "prompt": [{"role": "user", "content": PROBLEM}],
           "chosen": [{"role": "assistant", "content": POSITIVE}],
           "rejected": [{"role": "assistant", "content": NEGATIVE}],
           "source", "original_index", "chosen_gen_idx", "rejected_gen_idx"}
The problem is the raw user message: no instruction and no system message are added (the chat
template adds its default system prompt at training time).

## Curation summary
`curate` prints a table and writes `<sft-out without .jsonl>.summary.json` (or `--summary-out`):
    inputs            [{"path", "rows"}] per file; rows_read: their total
    row_filters       [{"name", "reason", "dropped", "detail": {what was found: rows}}], in order
    rows_kept         rows passing every filter
    labels            {"generations", "positive", "negative", "null_labels_counted_negative"}
    selection         {"no_positive" (no SFT, no pair), "no_negative" (SFT only), "problems_with_positive"}
    refused           {"sft": [{"name", "reason", "dropped"}], "pairs": [...]}: rule 6, in the order above
    identical_pairs   {"found" (pairs whose chosen text equals the rejected), "action" ("kept" or "dropped")}
    decontamination   null, or {"ngram", "normalisation", "checked", "action", "contaminated_problems",
                      "dropped": {"sft", "pairs"},
                      "benchmarks": {name: {"files", "problems", "too_short", "hits", "curated_problems_hit"}},
                      "hits": [{"curated_id", "benchmark", "benchmark_id", "ngram", "shared_ngrams"}]}
    length_filter     {"applied", "tokenizer", "max_prompt_tokens", "max_response_tokens", "pairs_before",
                      "dropped", "dropped_by_limit": {"prompt", "chosen", "rejected"} (a pair over two
                      limits counts under both), "note" when skipped}
    outputs           {"sft": {"path", "rows"}, "pairs": {"path", "rows"}, "order"}
    length_stats      null without a tokenizer, else {"counted_over", "prompt", "chosen", "rejected" (pairs
                      written), "sft_response" (SFT written): {"count", "mean", "median", "p95", "max"}}
    expected_counts   null, or {"expected", "found", "ok"} from --expect-counts
    timing            {"seconds", "setup_seconds" (tokenizer, benchmarks), "rows_per_second" (after setup),
                      "tokenize_seconds", "tokenized_texts", "tokenized_tokens"}
    args              the command line options
Every raw row is accounted for: rows_read = sum of dropped + rows_kept, and rows_kept =
no_positive + problems_with_positive; SFT written = problems_with_positive - refused sft -
decontamination dropped sft; pairs before the length filter = problems_with_positive -
no_negative - refused pairs - decontamination dropped pairs (checked on every run).

## Errors
Bad input (a missing or unreadable file, a row that is not what the rules expect, an option out
of range, an output that cannot be written) is one line, `data.py COMMAND: error: FILE:LINE:
field 'F': expected ..., found ...` where a file and line exist, and exit status 2, with no
traceback (`InputError`, `exit_on_input_error`); anything else is a bug and keeps its traceback.
"""


from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from collections import Counter

import numpy as np
import torch

from cli import InputError, data_error, describe, exit_on_input_error, make_output_dir, read_jsonl, run_then_exit  # noqa: F401
from redi_loss import IGNORE_INDEX   # one value for data and losses: labels the loss skips


# -----------------------------------------------------------------------------
# tokenizer


def load_tokenizer(name_or_path):
    """transformers.AutoTokenizer, with EOS as the pad token when the tokenizer defines none.

    The pad token only fills the padded layout (labels IGNORE_INDEX, attention mask 0 there), so
    EOS is safe; curation's length filter never pads. transformers is imported here, not at the
    top, because it adds seconds to `data.py --help`, `data.py check` and curation without
    `--tokenizer`, none of which need it.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:   # transformers' words for "no tokenizer there"
        if os.path.isdir(name_or_path):
            reason = f"the directory holds {sorted(os.listdir(name_or_path))[:8]}, no tokenizer it can read"
        elif str(name_or_path).startswith(("/", ".", "~")):
            reason = "no such directory"
        else:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"{name_or_path}: cannot load a tokenizer (expected a model or tokenizer directory, or a "
                         f"Hugging Face hub name): {reason}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# -----------------------------------------------------------------------------
# loading curated or bring-your-own data (module docstring: "Bring your own data")


CHAT_ROLES = ("system", "user", "assistant")


def _messages(value, path, line, field) -> list[dict]:
    """Validate a non-empty chat message list; returns copies holding only role and content."""
    if not isinstance(value, list) or not value:
        raise data_error(path, line, field, "a non-empty list of {\"role\", \"content\"} messages",
                         describe(value))
    out = []
    for i, m in enumerate(value):
        if not (isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") in CHAT_ROLES):
            raise data_error(path, line, f"{field}[{i}]",
                             "a message {\"role\": system|user|assistant, \"content\": string}", describe(m))
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _prompt(value, path, line, field) -> list[dict]:
    """A prompt given as a string (one user message) or as messages ending with a user turn."""
    if isinstance(value, str):
        if not value:
            raise data_error(path, line, field, "a non-empty prompt", describe(value))
        return [{"role": "user", "content": value}]
    messages = _messages(value, path, line, field)
    if messages[-1]["role"] != "user":
        raise data_error(path, line, f"{field}[{len(messages) - 1}].role", "\"user\" (the prompt's last turn)",
                         describe(messages[-1]["role"]))
    return messages


def _response(value, prompt, path, line, field) -> str:
    """The assistant reply: a string, [assistant], or prompt + [assistant] (TRL's implicit-prompt form)."""
    if isinstance(value, str):
        text = value
    else:
        messages = _messages(value, path, line, field)
        if len(messages) > 1 and messages[:-1] != prompt:
            raise data_error(path, line, field,
                             "[assistant message] or the prompt's messages + [assistant message]",
                             f"{len(messages)} messages whose first {len(messages) - 1} differ from the prompt")
        if messages[-1]["role"] != "assistant":
            raise data_error(path, line, f"{field}[{len(messages) - 1}].role", "\"assistant\"",
                             describe(messages[-1]["role"]))
        text = messages[-1]["content"]
    if not text:
        raise data_error(path, line, field, "a non-empty response", describe(text))
    return text


def _record_id(record, path, line) -> str:
    """The record's id (string or integer), else BASENAME:LINE."""
    rid = record.get("id")
    if rid is None:
        return f"{os.path.basename(path)}:{line}"
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or rid == "":
        raise data_error(path, line, "id", "a non-empty string or an integer", describe(rid))
    return str(rid)


def normalize_record(record, path, line) -> dict:
    """One curated or bring-your-own row -> canonical dict.

    pairs: {"id", "prompt_messages", "chosen": str, "rejected": str}
    SFT:   {"id", "prompt_messages", "response": str}
    Accepted inputs are listed in the module docstring ("Bring your own data").
    """
    if not isinstance(record, dict):
        raise data_error(path, line, None, "a JSON object", describe(record))
    rid = _record_id(record, path, line)
    if "chosen" in record or "rejected" in record:
        for name in ("chosen", "rejected"):
            if name not in record:
                raise data_error(path, line, name, "both 'chosen' and 'rejected' in a pair", "it missing")
        if record.get("prompt") is not None:
            prompt = _prompt(record["prompt"], path, line, "prompt")
        elif isinstance(record["chosen"], list) and len(record["chosen"]) > 1:
            prompt = _prompt(record["chosen"][:-1], path, line, "chosen")   # implicit prompt: the shared prefix
        else:
            raise data_error(path, line, "prompt", "a prompt, or 'chosen'/'rejected' as full conversations",
                             "no prompt and a 'chosen' that is not a full conversation")
        return {"id": rid, "prompt_messages": prompt,
                "chosen": _response(record["chosen"], prompt, path, line, "chosen"),
                "rejected": _response(record["rejected"], prompt, path, line, "rejected")}
    if "messages" in record:
        messages = _messages(record["messages"], path, line, "messages")
        if len(messages) < 2:
            raise data_error(path, line, "messages", "prompt turn(s) followed by an assistant message",
                             "1 message")
        last = f"messages[{len(messages) - 1}]"
        if messages[-1]["role"] != "assistant":
            raise data_error(path, line, f"{last}.role", "\"assistant\" (the last message is the response)",
                             describe(messages[-1]["role"]))
        prompt = _prompt(messages[:-1], path, line, "messages")
        return {"id": rid, "prompt_messages": prompt,
                "response": _response(messages[-1]["content"], prompt, path, line, f"{last}.content")}
    if "prompt" in record or "completion" in record:
        for name in ("prompt", "completion"):
            if name not in record:
                raise data_error(path, line, name, "both 'prompt' and 'completion'", "it missing")
        prompt = _prompt(record["prompt"], path, line, "prompt")
        return {"id": rid, "prompt_messages": prompt,
                "response": _response(record["completion"], prompt, path, line, "completion")}
    raise data_error(path, line, None, "a pair (prompt/chosen/rejected) or an SFT example (messages, or "
                     "prompt/completion)", f"an object with keys {sorted(record)}")


def load_curated(path) -> tuple[str, list[dict]]:
    """(kind, canonical records) of a curated JSON Lines file; kind is 'pairs' or 'sft', one per file."""
    kind, first_line, records, seen = None, None, [], {}
    for line, record in read_jsonl(path):
        canonical = normalize_record(record, path, line)
        row_kind = "sft" if "response" in canonical else "pairs"
        if kind is None:
            kind, first_line = row_kind, line
        elif row_kind != kind:
            raise InputError(f"{path}:{line}: this row is {row_kind} but line {first_line} is {kind}; "
                             f"a file must hold one kind")
        if canonical["id"] in seen:
            raise data_error(path, line, "id", "ids unique within the file",
                             f"{canonical['id']!r} again (first on line {seen[canonical['id']]})")
        seen[canonical["id"]] = line
        records.append(canonical)
    if kind is None:
        raise InputError(f"{path}: no records (the file is empty)")
    return kind, records


def load_sft_examples(path) -> list[dict]:
    """Canonical SFT examples ({"id", "prompt_messages", "response"}) from any accepted SFT format."""
    kind, records = load_curated(path)
    if kind != "sft":
        raise InputError(f"{path}: expected SFT examples (messages, or prompt/completion), found preference pairs")
    return records


def load_pairs(path) -> list[dict]:
    """Canonical pairs ({"id", "prompt_messages", "chosen", "rejected"}) from any accepted pair format."""
    kind, records = load_curated(path)
    if kind != "pairs":
        raise InputError(f"{path}: expected preference pairs (prompt/chosen/rejected), found SFT examples")
    return records


# -----------------------------------------------------------------------------
# formatting: chat template -> input_ids / labels


def end_of_turn_id(tokenizer) -> int:
    """The token that closes the assistant turn: `<|im_end|>` for Qwen chat templates, else EOS."""
    token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
        return token_id
    if tokenizer.eos_token_id is None:
        raise InputError("the tokenizer has neither <|im_end|> nor an EOS token to end the assistant turn")
    return tokenizer.eos_token_id


def tokenize_example(tokenizer, prompt_messages: list[dict], response: str, example_id: str,
                     max_length: int | None = None) -> dict:
    """Chat-template one (prompt, response) and return {"input_ids", "labels"} as int lists.

    The prompt is the conversation with the generation prompt (so with REDI's template it ends in
    `<|im_start|>assistant\\n<think>\\n`); the labels are IGNORE_INDEX on it and cover the whole
    response INCLUDING the end-of-turn token, so the model learns to stop. Anything the template
    adds after the end-of-turn token (Qwen adds "\\n") is dropped. The prompt/response boundary is
    found by tokenizing the prompt and the full conversation and checking that the first is a
    prefix of the second, never by searching for a marker. Nothing is truncated: a sequence over
    `max_length` is an error naming the example (filter long examples at curation).
    """
    prompt_text = tokenizer.apply_chat_template(prompt_messages, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(
        list(prompt_messages) + [{"role": "assistant", "content": response}], tokenize=False)
    if not full_text.startswith(prompt_text):
        raise InputError(
            f"example {example_id}: the templated prompt is not a prefix of the templated conversation. "
            f"The chat template's generation prompt ends with {prompt_text[-30:]!r}, but the conversation "
            f"continues with {full_text[len(prompt_text) - 30:len(prompt_text)]!r}. With REDI's template the "
            f"response must start with the text the generation prompt forces (e.g. '<think>\\n'); "
            f"the response starts with {response[:30]!r}")
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    if full_ids[:len(prompt_ids)] != prompt_ids:
        raise InputError(f"example {example_id}: the prompt tokenizes differently alone and inside the "
                         f"conversation (a token merges across the prompt/response boundary)")
    eot = end_of_turn_id(tokenizer)
    ends = [i for i in range(len(prompt_ids), len(full_ids)) if full_ids[i] == eot]
    if not ends:
        raise InputError(f"example {example_id}: no end-of-turn token (id {eot}) after the response")
    input_ids = full_ids[:ends[-1] + 1]
    if len(input_ids) == len(prompt_ids):
        raise InputError(f"example {example_id}: empty response")
    if max_length is not None and len(input_ids) > max_length:
        raise InputError(f"example {example_id}: {len(input_ids)} tokens exceed the maximum sequence length "
                         f"{max_length}; responses are never truncated, filter such examples at curation "
                         f"(data.py curate --max-response-tokens) or raise --max-seq-len")
    labels = [IGNORE_INDEX] * len(prompt_ids) + input_ids[len(prompt_ids):]
    return {"input_ids": input_ids, "labels": labels}


def tokenize_sft(tokenizer, examples: list[dict], max_length: int | None = None) -> list[dict]:
    """Canonical SFT examples ({"id", "prompt_messages", "response"}) -> tokenized dicts with "id"."""
    return [dict(tokenize_example(tokenizer, e["prompt_messages"], e["response"], e["id"], max_length), id=e["id"])
            for e in examples]


def tokenize_pairs(tokenizer, pairs: list[dict], max_length: int | None = None) -> list[dict]:
    """Canonical pairs ({"id", "prompt_messages", "chosen", "rejected"}) -> {"id", "chosen", "rejected"} tokenized."""
    out = []
    for p in pairs:
        chosen = tokenize_example(tokenizer, p["prompt_messages"], p["chosen"], f"{p['id']} (chosen)", max_length)
        rejected = tokenize_example(tokenizer, p["prompt_messages"], p["rejected"], f"{p['id']} (rejected)", max_length)
        out.append({"id": p["id"], "chosen": chosen, "rejected": rejected})
    return out


def num_tokens(example: dict) -> int:
    """Sequence length of a tokenized SFT example or pair (chosen + rejected: they share a micro-batch)."""
    if "input_ids" in example:
        return len(example["input_ids"])
    return len(example["chosen"]["input_ids"]) + len(example["rejected"]["input_ids"])


# -----------------------------------------------------------------------------
# collation: padded or packed micro-batches


def collate(sequences: list[dict], pad_id: int, packed: bool = False, device=None) -> dict:
    """`_collate` on `device`: tensors moved there, ints left as they are."""
    batch = _collate(sequences, pad_id, packed)
    return batch if device is None else {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def _collate(sequences: list[dict], pad_id: int, packed: bool = False) -> dict:
    """Stack tokenized sequences into one micro-batch of tensors.

    padded (default; works with every attention implementation):
        input_ids, labels, attention_mask [S, T_max] (right padding, labels IGNORE_INDEX on pads)
    packed (padding-free: all sequences in one row, positions restart per sequence):
        input_ids, labels, position_ids [1, sum T]; seq_index [sum T] (which sequence owns each
        token); cu_seqlens [S + 1] (int32 offsets) and max_length (int), flash-attn varlen's
        sequence boundaries. Attention must not cross sequences: flash-attn reads the boundaries,
        otherwise the forward runs each sequence alone.
    Both carry num_sequences = S; per-sequence log-probs are identical in the two layouts.
    An SFT micro-batch is `collate(examples)`: sequence i is examples[i].
    """
    if packed:
        input_ids = torch.tensor([t for s in sequences for t in s["input_ids"]]).unsqueeze(0)
        labels = torch.tensor([t for s in sequences for t in s["labels"]]).unsqueeze(0)
        position_ids = torch.cat([torch.arange(len(s["input_ids"])) for s in sequences]).unsqueeze(0)
        seq_index = torch.cat([torch.full((len(s["input_ids"]),), i) for i, s in enumerate(sequences)])
        # The first token of a sequence would be "predicted" by the previous sequence's last token.
        labels[0, position_ids[0] == 0] = IGNORE_INDEX
        # flash-attn varlen's boundaries, built here once: from position_ids alone transformers would
        # rebuild them, with a device sync, in every layer's forward and recompute.
        lengths = [len(s["input_ids"]) for s in sequences]
        cu_seqlens = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)  # [S + 1]
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids,
                "seq_index": seq_index, "num_sequences": len(sequences),
                "cu_seqlens": cu_seqlens, "max_length": max(lengths)}
    longest = max(len(s["input_ids"]) for s in sequences)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(sequences), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for i, s in enumerate(sequences):
        n = len(s["input_ids"])
        input_ids[i, :n] = torch.tensor(s["input_ids"])
        labels[i, :n] = torch.tensor(s["labels"])
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask,
            "num_sequences": len(sequences)}


def collate_pairs(pairs: list[dict], pad_id: int, packed: bool = False, device=None) -> dict:
    """One pair micro-batch in ONE forward: sequences [chosen_0..chosen_{n-1}, rejected_0..rejected_{n-1}]."""
    return collate([p["chosen"] for p in pairs] + [p["rejected"] for p in pairs], pad_id, packed, device)


# -----------------------------------------------------------------------------
# sharding: which examples each rank sees in each optimizer step


class StepSampler:
    """Deterministic assignment of examples to (epoch, step, rank, micro-batch).

    Each epoch is a permutation of the examples drawn from (seed, epoch). Step s of the epoch
    takes the next `global_batch` examples of it (the last step may be smaller: nothing is
    dropped), so which examples form a step does not depend on the number of ranks. The step's
    examples are split into `world_size` equal slices (contiguous, or with `balance` by token cost
    so that no rank holds all the longest examples: bench/bench_balance.py); a short last step is padded
    with zero-weight repeats, so every rank runs the same number of micro-batches and no
    collective waits on a rank that ran out. Within a rank's slice, micro-batches are either
    `micro_batch_size` examples each (gradient accumulation = global_batch / (world_size *
    micro_batch_size), which must divide), or, with `max_tokens`, greedy packs of at most that
    many tokens, their count equalised across ranks by splitting. Everything is a pure function
    of (seed, epoch, step), so resuming mid-epoch needs only the step counter.

    micro_batches(epoch, step) -> list of micro-batches; each a list of (example_index, weight),
    weight 1.0 for real examples and 0.0 for padding repeats.
    """

    def __init__(self, lengths: list[int], global_batch: int, world_size: int, rank: int, seed: int,
                 micro_batch_size: int | None = None, max_tokens: int | None = None, balance: bool = False):
        if global_batch % world_size:
            raise InputError(f"global batch {global_batch} is not divisible by the world size {world_size}")
        per_rank = global_batch // world_size
        if max_tokens is None and (micro_batch_size is None or per_rank % micro_batch_size):
            raise InputError(
                f"global batch {global_batch} = world size {world_size} x micro-batch {micro_batch_size} "
                f"x accumulation steps must hold; {global_batch} / ({world_size} x {micro_batch_size}) "
                f"is not an integer")
        if not lengths:
            raise InputError("no examples to sample from")
        self.lengths, self.global_batch, self.world_size, self.rank = lengths, global_batch, world_size, rank
        self.seed, self.micro_batch_size, self.max_tokens = seed, micro_batch_size, max_tokens
        self.per_rank, self.balance = per_rank, balance
        self.steps_per_epoch = -(-len(lengths) // global_batch)

    def epoch_order(self, epoch: int) -> list[int]:
        """This epoch's permutation of the example indices, drawn from (seed, epoch) alone."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.lengths), generator=generator).tolist()

    def rank_slice(self, epoch: int, step: int, rank: int) -> list[tuple[int, float]]:
        """This rank's (example, weight) list for the step, padded to global_batch / world_size."""
        order = self.epoch_order(epoch)
        members = order[step * self.global_batch:(step + 1) * self.global_batch]
        if not members:
            raise IndexError(f"step {step} is past the end of epoch {epoch} ({self.steps_per_epoch} steps)")
        padded = [(i, 1.0) for i in members]
        padded += [(members[k % len(members)], 0.0) for k in range(self.global_batch - len(members))]
        if not self.balance:
            return padded[rank * self.per_rank:(rank + 1) * self.per_rank]
        return [padded[k] for k in self._balanced_positions(padded)[rank]]

    def _balanced_positions(self, items: list[tuple[int, float]]) -> list[list[int]]:
        """Positions of the step's items for each rank, by token cost: longest first, each to the
        least-loaded rank that still has room (per_rank items each; ties to the lower rank and the
        earlier item). A pure function of the step's items, so resume stays exact."""
        loads, slots = [0] * self.world_size, [[] for _ in range(self.world_size)]
        for k in sorted(range(len(items)), key=lambda k: (-self.lengths[items[k][0]], k)):
            rank = min((r for r in range(self.world_size) if len(slots[r]) < self.per_rank),
                       key=lambda r: (loads[r], r))
            slots[rank].append(k)
            loads[rank] += self.lengths[items[k][0]]
        return slots

    def _pack(self, items: list[tuple[int, float]]) -> list[list[tuple[int, float]]]:
        """Micro-batches of `micro_batch_size` items, or greedy packs of at most `max_tokens` tokens
        (an example longer than that alone is a pack of its own: examples are never cut)."""
        if self.max_tokens is None:
            size = self.micro_batch_size
            return [items[k:k + size] for k in range(0, len(items), size)]
        packs, current, used = [], [], 0
        for item in items:
            n = self.lengths[item[0]]
            if current and used + n > self.max_tokens:
                packs.append(current)
                current, used = [], 0
            current.append(item)
            used += n
        packs.append(current)
        return packs

    def global_count(self, epoch: int, step: int, cost) -> float:
        """sum of cost[i] * weight over the step's examples on ALL ranks: the loss's denominator.
        Every rank computes every rank's share, so this needs no collective; padding weighs 0."""
        return float(sum(cost[i] * w for r in range(self.world_size) for i, w in self.rank_slice(epoch, step, r)))

    def micro_batches(self, epoch: int, step: int) -> list[list[tuple[int, float]]]:
        """This rank's micro-batches for the step; as many on every rank (see the class docstring)."""
        mine = self._pack(self.rank_slice(epoch, step, self.rank))
        if self.max_tokens is None:
            return mine
        # Every rank computes every rank's packing (cheap, deterministic) to agree on the count.
        target = max(len(self._pack(self.rank_slice(epoch, step, r))) for r in range(self.world_size))
        while len(mine) < target:   # split the largest pack; always possible (count <= per_rank)
            k = max(range(len(mine)), key=lambda j: (len(mine[j]), -j))
            half = len(mine[k]) // 2
            mine[k:k + 1] = [mine[k][:half], mine[k][half:]]
        return mine


# -----------------------------------------------------------------------------
# curation (OpenR1-Math-Raw -> SFT examples and preference pairs): constants and input files


PAPER_COUNTS = {"sft": 77_629, "pairs": 53_175}  # REDI paper, full Raw train split; NOT reproduced here
DEFAULT_EXCLUDED_SOURCES = ["cn_k12"]              # "too easy" (paper, Appendix C.2)
INPUT_SUFFIXES = (".jsonl", ".parquet")
LABEL_FIELDS = ("llama_verification", "math_verify_reparsed_answer")  # a generation is positive iff both

# Row filters in the order REDI applies them; a dropped row is counted once, by the first it fails.
ROW_FILTERS = {
    "invalid_problem": "problem_is_valid is not a string equal to 'yes' after strip().lower()",
    "excluded_source": "source is one of --exclude-source",
    "empty_problem": "problem is missing, null or ''",
    "empty_generations": "generations is missing, null or []",
    "bad_correctness": "correctness.llama_verification or .math_verify_reparsed_answer is missing, "
                       "null, or not one label per generation",
}

# Candidates the training loaders would refuse (load_* reject an empty response), and, on request,
# pairs with nothing to prefer: never written, counted by name; a pair once, by the first that applies.
SFT_REFUSALS = {
    "empty_response": "the chosen generation (lowest-index positive) is '': no SFT example and no pair",
}
PAIR_REFUSALS = {
    "empty_chosen": "the chosen generation is '' (its SFT example is refused too)",
    "empty_rejected": "the rejected generation (lowest-index negative) is ''; the SFT example is kept",
    "chosen_equals_rejected": "chosen and rejected are the same text (--drop-identical-pairs); the SFT "
                              "example is kept",
}

# Fields the rules read, with the JSON type they must have when present and not null. A wrong type
# means the file is not OpenR1-Math-Raw: an error, never a silently skipped row.
RAW_FIELD_TYPES = {
    "problem": (str, "a string"),
    "problem_is_valid": (str, "a string such as \"Yes\""),
    "source": (str, "a string"),
    "generations": (list, "a list of strings"),
    "correctness": (dict, "an object with lists of booleans"),
}


def read_parquet(path):
    """Yield (row_number, record) for each row of a Parquet file (1-based), via pyarrow if installed."""
    try:
        import pyarrow
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow") from None
    row_number = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                row_number += 1
                yield row_number, record
    except (OSError, pyarrow.ArrowException) as e:   # not Parquet, truncated, unreadable
        raise InputError(f"{path}: cannot read it as Parquet (after {row_number} rows): {e}") from None


def read_records(path):
    """(number, record) pairs from a .jsonl or .parquet file, by suffix."""
    return read_parquet(path) if path.endswith(".parquet") else read_jsonl(path)


def list_input_files(path) -> list[str]:
    """A file, or all *.jsonl / *.parquet files of a directory sorted by name (shards in order)."""
    if os.path.isdir(path):
        files = sorted(os.path.join(path, name) for name in os.listdir(path) if name.endswith(INPUT_SUFFIXES))
        if not files:
            raise InputError(f"{path}: the directory holds no *.jsonl or *.parquet files")
        return files
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file or directory")
    if not path.endswith(INPUT_SUFFIXES):
        raise InputError(f"{path}: expected a .jsonl or .parquet file, or a directory of them")
    return [path]


# -----------------------------------------------------------------------------
# curation: REDI's rules on one raw row


def check_raw_row(row, path, line) -> None:
    """Raise if a field the rules read has the wrong type (null and missing are left to the filters)."""
    if not isinstance(row, dict):
        raise data_error(path, line, None, "a JSON object (one OpenR1-Math-Raw row)", describe(row))
    for field, (types, expected) in RAW_FIELD_TYPES.items():
        value = row.get(field)
        if value is not None and not isinstance(value, types):
            raise data_error(path, line, field, expected, describe(value))
    for i, generation in enumerate(row.get("generations") or []):
        if not isinstance(generation, str):
            raise data_error(path, line, f"generations[{i}]", "a string", describe(generation))
    correctness = row.get("correctness") or {}
    for field in LABEL_FIELDS:
        labels = correctness.get(field)
        if labels is not None and not isinstance(labels, list):
            raise data_error(path, line, f"correctness.{field}", "a list of booleans", describe(labels))
        for i, label in enumerate(labels or []):
            if label is not None and not isinstance(label, bool):
                raise data_error(path, line, f"correctness.{field}[{i}]", "true, false or null", describe(label))


def _absent(container, field, empty_name) -> str | None:
    """'missing' / 'null' / empty_name when container[field] is unusable, else None."""
    if field not in container:
        return "missing"
    if container[field] is None:
        return "null"
    return empty_name if not container[field] else None


def row_drop_reason(row: dict, excluded_sources) -> tuple[str, str] | None:
    """(filter, detail) for the first of ROW_FILTERS this row fails, or None when it passes them all."""
    valid = row.get("problem_is_valid")
    if not (isinstance(valid, str) and valid.strip().lower() == "yes"):
        return "invalid_problem", "missing" if "problem_is_valid" not in row else json.dumps(valid)
    if row.get("source") in excluded_sources:
        return "excluded_source", str(row["source"])
    problem_absent = _absent(row, "problem", "empty string")
    if problem_absent:
        return "empty_problem", f"problem {problem_absent}"
    generations_absent = _absent(row, "generations", "empty list")
    if generations_absent:
        return "empty_generations", f"generations {generations_absent}"
    correctness_absent = _absent(row, "correctness", "empty object")
    if correctness_absent:
        return "bad_correctness", f"correctness {correctness_absent}"
    for field in LABEL_FIELDS:
        labels_absent = _absent(row["correctness"], field, "empty list")
        if labels_absent or len(row["correctness"][field]) != len(row["generations"]):
            return "bad_correctness", f"correctness.{field} {labels_absent or 'length != len(generations)'}"
    return None


def label_generations(row: dict) -> tuple[list[int], list[int], int]:
    """(positive indices, negative indices, null labels) under REDI's rule: positive iff both verifiers say true.

    A null label is falsy, so it makes the generation negative, exactly as REDI's `bool(label)`;
    the caller counts them so the summary shows how many there were.
    """
    llama, reparsed = (row["correctness"][field] for field in LABEL_FIELDS)
    positives, negatives = [], []
    for i, (a, b) in enumerate(zip(llama, reparsed)):
        (positives if a and b else negatives).append(i)
    return positives, negatives, llama.count(None) + reparsed.count(None)


def refusal_reasons(chosen: str, rejected: str | None, drop_identical: bool) -> tuple[str | None, str | None]:
    """(SFT refusal, pair refusal) of a problem's chosen and rejected texts (rejected None: no negative);
    the names are those of SFT_REFUSALS / PAIR_REFUSALS, None where the row is written."""
    if not chosen:
        return "empty_response", None if rejected is None else "empty_chosen"
    if rejected is None:
        return None, None
    if not rejected:
        return None, "empty_rejected"
    return None, "chosen_equals_rejected" if drop_identical and rejected == chosen else None


def check_encodable(row: dict, gen_indices, path, line) -> None:
    """Raise if a text that will be written holds a lone surrogate: valid JSON ("\\ud800") that UTF-8
    cannot encode, so writing it (or tokenizing it) would fail."""
    fields = {"problem": row["problem"], "source": row.get("source") or "",
              **{f"generations[{i}]": row["generations"][i] for i in gen_indices}}
    for field, text in fields.items():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise data_error(path, line, field, "text that UTF-8 can encode",
                             f"a lone surrogate {text[e.start]!r} at character {e.start}") from None


# -----------------------------------------------------------------------------
# curation: candidates, one per problem with a positive


@dataclasses.dataclass
class Candidate:
    """A problem that yields an SFT example, and a pair when it also has a negative."""
    id: str
    original_index: int
    source: object
    problem: str
    chosen_gen_idx: int
    chosen: str
    rejected_gen_idx: int | None = None
    rejected: str | None = None
    prompt_tokens: int | None = None      # filled by measure_lengths (REDI's counting)
    chosen_tokens: int | None = None
    rejected_tokens: int | None = None


def sft_record(c: Candidate) -> dict:
    """The SFT output row: [user: problem, assistant: first positive], no system message."""
    return {"id": c.id,
            "messages": [{"role": "user", "content": c.problem}, {"role": "assistant", "content": c.chosen}],
            "source": c.source, "original_index": c.original_index, "chosen_gen_idx": c.chosen_gen_idx}


def pair_record(c: Candidate) -> dict:
    """The pair output row, in TRL's conversational explicit-prompt format."""
    return {"id": c.id, "prompt": [{"role": "user", "content": c.problem}],
            "chosen": [{"role": "assistant", "content": c.chosen}],
            "rejected": [{"role": "assistant", "content": c.rejected}],
            "source": c.source, "original_index": c.original_index,
            "chosen_gen_idx": c.chosen_gen_idx, "rejected_gen_idx": c.rejected_gen_idx}


@dataclasses.dataclass
class CurationStats:
    """Every count the summary reports; filled while streaming the raw rows."""
    files: list = dataclasses.field(default_factory=list)              # [{"path", "rows"}]
    rows_read: int = 0
    dropped: dict = dataclasses.field(default_factory=lambda: {name: Counter() for name in ROW_FILTERS})
    generations: int = 0
    positive_generations: int = 0
    null_labels: int = 0
    no_positive: int = 0
    no_negative: int = 0
    candidates: int = 0
    refused: dict = dataclasses.field(default_factory=lambda: {"sft": Counter(), "pairs": Counter()})
    identical_pairs: int = 0
    contaminated: dict = dataclasses.field(default_factory=lambda: {"sft": 0, "pairs": 0})
    pairs_before_length_filter: int = 0
    length_dropped: int = 0
    length_dropped_by_limit: Counter = dataclasses.field(default_factory=Counter)
    lengths: dict = dataclasses.field(   # token counts of what was written
        default_factory=lambda: {k: [] for k in ("prompt", "chosen", "rejected", "sft_response")})
    sft_written: int = 0
    pairs_written: int = 0
    setup_seconds: float = 0.0
    tokenize_seconds: float = 0.0
    tokenized_texts: int = 0
    tokenized_tokens: int = 0


def iter_candidates(files, id_prefix, excluded_sources, drop_identical_pairs, stats: CurationStats):
    """Stream raw rows from all files; count every drop in `stats`; yield a Candidate per kept problem."""
    for path in files:
        rows_in_file = 0
        for line, row in read_records(path):
            original_index = stats.rows_read
            stats.rows_read += 1
            rows_in_file += 1
            check_raw_row(row, path, line)
            reason = row_drop_reason(row, excluded_sources)
            if reason:
                stats.dropped[reason[0]][reason[1]] += 1
                continue
            positives, negatives, nulls = label_generations(row)
            stats.generations += len(positives) + len(negatives)
            stats.positive_generations += len(positives)
            stats.null_labels += nulls
            if not positives:
                stats.no_positive += 1
                continue
            stats.no_negative += not negatives
            stats.candidates += 1
            generations = row["generations"]
            chosen = generations[positives[0]]
            rejected = generations[negatives[0]] if negatives else None
            stats.identical_pairs += bool(chosen) and rejected == chosen
            sft_refused, pair_refused = refusal_reasons(chosen, rejected, drop_identical_pairs)
            if pair_refused:
                stats.refused["pairs"][pair_refused] += 1
            if sft_refused:
                stats.refused["sft"][sft_refused] += 1
                continue
            with_pair = rejected is not None and not pair_refused
            check_encodable(row, positives[:1] + (negatives[:1] if with_pair else []), path, line)
            c = Candidate(id=f"{id_prefix}/{original_index}", original_index=original_index,
                          source=row.get("source"), problem=row["problem"],
                          chosen_gen_idx=positives[0], chosen=chosen)
            if with_pair:
                c.rejected_gen_idx, c.rejected = negatives[0], rejected
            yield c
        stats.files.append({"path": path, "rows": rows_in_file})


# -----------------------------------------------------------------------------
# curation: length filter (pairs only; rule 7 of the module docstring)


def chat_token_counts(tokenizer, conversations: list[list[dict]]) -> list[int]:
    """Tokens of each conversation chat-templated WITHOUT a generation prompt; one batched encode."""
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=False) for c in conversations]
    encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return [len(ids) for ids in encoded]


def measure_lengths(tokenizer, batch: list[Candidate], stats: CurationStats) -> None:
    """Set REDI's token counts on each candidate of the batch, with one batched encode.

    prompt = the templated [user] message + 1; chosen / rejected = the templated lone [assistant]
    message + 1 for EOS. With Qwen's template a lone message gains the default system block, so
    responses are slightly overcounted, exactly as in REDI's filter.
    """
    with_pair = [c for c in batch if c.rejected is not None]
    conversations = ([[{"role": "user", "content": c.problem}] for c in batch]
                     + [[{"role": "assistant", "content": c.chosen}] for c in batch]
                     + [[{"role": "assistant", "content": c.rejected}] for c in with_pair])
    start = time.perf_counter()
    counts = chat_token_counts(tokenizer, conversations)
    stats.tokenize_seconds += time.perf_counter() - start
    stats.tokenized_texts += len(counts)
    stats.tokenized_tokens += sum(counts)
    n = len(batch)
    for i, c in enumerate(batch):
        c.prompt_tokens, c.chosen_tokens = counts[i] + 1, counts[n + i] + 1
    for c, count in zip(with_pair, counts[2 * n:]):
        c.rejected_tokens = count + 1


def over_limits(c: Candidate, max_prompt_tokens: int, max_response_tokens: int) -> list[str]:
    """Which of REDI's limits a pair exceeds: a subset of ['prompt', 'chosen', 'rejected']."""
    checks = (("prompt", c.prompt_tokens, max_prompt_tokens), ("chosen", c.chosen_tokens, max_response_tokens),
              ("rejected", c.rejected_tokens, max_response_tokens))
    return [name for name, tokens, limit in checks if tokens > limit]


# -----------------------------------------------------------------------------
# curation: decontamination report


_NON_WORD = re.compile(r"[\W_]+")


def ngram_words(text: str) -> list[str]:
    """Lower-cased words with punctuation and whitespace collapsed ('\\frac{1}{2}' -> frac 1 2)."""
    return _NON_WORD.sub(" ", text.lower()).split()


class BenchmarkIndex:
    """Word n-grams of benchmark problems, built once; `hits(text)` finds the ones a problem shares.

    Benchmarks are JSON Lines with a `problem` field (and `id`; else FILE:LINE names the row).
    A benchmark problem shorter than n words has no n-gram and cannot be matched: such problems
    are counted per benchmark (`too_short`) so the report shows what it could not check.
    """

    def __init__(self, paths: list[str], n: int):
        self.n = n
        self.grams: dict[str, list[tuple[str, str]]] = {}   # "w1 ... wn" -> [(benchmark, benchmark id)]
        self.benchmarks: dict[str, dict] = {}
        for path in paths:
            name = os.path.splitext(os.path.basename(path))[0]
            info = self.benchmarks.setdefault(name, {"files": [], "problems": 0, "too_short": 0,
                                                     "hits": 0, "curated_problems_hit": 0})
            info["files"].append(path)
            for line, record in read_jsonl(path):
                problem = record.get("problem") if isinstance(record, dict) else None
                if not isinstance(problem, str):
                    raise data_error(path, line, "problem", "a string (the benchmark problem)", describe(problem))
                bench_id = str(record.get("id") or f"{os.path.basename(path)}:{line}")
                info["problems"] += 1
                words = ngram_words(problem)
                info["too_short"] += len(words) < n
                for gram in {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}:
                    self.grams.setdefault(gram, []).append((name, bench_id))

    def hits(self, text: str) -> dict[tuple[str, str], dict]:
        """{(benchmark, benchmark id): {"ngram": first shared n-gram in `text`, "shared_ngrams": count}}."""
        words, found, seen = ngram_words(text), {}, set()
        for i in range(len(words) - self.n + 1):
            gram = " ".join(words[i:i + self.n])
            if gram in seen:
                continue
            seen.add(gram)
            for key in self.grams.get(gram, ()):
                hit = found.setdefault(key, {"ngram": gram, "shared_ngrams": 0})
                hit["shared_ngrams"] += 1
        return found


def record_contamination(index: BenchmarkIndex, c: Candidate, report: list) -> bool:
    """Append this problem's benchmark hits to `report`; True when it shares an n-gram with any benchmark."""
    found = index.hits(c.problem)
    for (bench, bench_id), hit in sorted(found.items()):
        index.benchmarks[bench]["hits"] += 1
        report.append({"curated_id": c.id, "benchmark": bench, "benchmark_id": bench_id, **hit})
    for bench in {bench for bench, _ in found}:
        index.benchmarks[bench]["curated_problems_hit"] += 1
    return bool(found)


# -----------------------------------------------------------------------------
# curation: outputs in seeded shuffle order


def shuffle_rank(num_rows: int, seed: int):
    """rank[original_index] = position of that raw row after shuffling all raw rows with `seed`.

    This is Hugging Face `datasets`' algorithm (`Dataset.shuffle(seed)` selects the rows in the
    order `np.random.default_rng(seed).permutation(len(ds))`), read from its source but not run
    here: REDI shuffled the raw rows and then curated them in that order, so sorting our outputs
    by this rank should give REDI's order when the rows come in the hub's order.
    """
    permutation = np.random.default_rng(seed).permutation(num_rows)
    rank = np.empty(num_rows, dtype=np.int64)
    rank[permutation] = np.arange(num_rows)
    return rank


class ShuffledJsonlWriter:
    """Write records to PATH in shuffle order, spooling them to PATH.unshuffled.tmp meanwhile.

    Traces are long (up to ~20k tokens), so records wait on disk, not in memory; only
    (original_index, offset, size) per record is kept. `finish(rank)` writes PATH in rank order.
    """

    def __init__(self, path: str):
        self.path, self.spool_path = path, path + ".unshuffled.tmp"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.spool = open(self.spool_path, "wb")
        self.entries: list[tuple[int, int, int]] = []

    def add(self, record: dict) -> None:
        encoded = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        self.entries.append((record["original_index"], self.spool.tell(), len(encoded)))
        self.spool.write(encoded)

    def finish(self, rank) -> int:
        self.spool.close()
        self.entries.sort(key=lambda entry: rank[entry[0]])
        with open(self.spool_path, "rb") as spool, open(self.path + ".partial", "wb") as out:
            for _, offset, size in self.entries:
                spool.seek(offset)
                out.write(spool.read(size))
        os.replace(self.path + ".partial", self.path)   # never leave a half-written output
        return len(self.entries)

    def discard_spool(self) -> None:
        self.spool.close()
        if os.path.exists(self.spool_path):
            os.remove(self.spool_path)


# -----------------------------------------------------------------------------
# curation: the whole pipeline


def emit_batch(batch, tokenizer, args, stats: CurationStats, sft_out: ShuffledJsonlWriter,
               pairs_out: ShuffledJsonlWriter) -> None:
    """Measure a batch of candidates (if a tokenizer is given), length-filter the pairs, spool both outputs."""
    if tokenizer is not None and batch:
        measure_lengths(tokenizer, batch, stats)
    for c in batch:
        sft_out.add(sft_record(c))   # SFT examples are not length-filtered (REDI: 32k max sequence)
        if c.chosen_tokens is not None:
            stats.lengths["sft_response"].append(c.chosen_tokens)
        if c.rejected is None:
            continue
        stats.pairs_before_length_filter += 1
        if tokenizer is not None:
            exceeded = over_limits(c, args.max_prompt_tokens, args.max_response_tokens)
            if exceeded:
                stats.length_dropped += 1
                stats.length_dropped_by_limit.update(exceeded)
                continue
            for name, tokens in (("prompt", c.prompt_tokens), ("chosen", c.chosen_tokens),
                                 ("rejected", c.rejected_tokens)):
                stats.lengths[name].append(tokens)
        pairs_out.add(pair_record(c))


def curate(args) -> dict:
    """Run the curation described in the module docstring; write both outputs; return the summary."""
    start = time.perf_counter()
    files = list_input_files(args.raw)
    for option, path in output_paths(args):   # fail now, not after the whole run
        make_output_dir(os.path.dirname(os.path.abspath(path)), f"{option} {path}")
    id_prefix = args.id_prefix or os.path.splitext(os.path.basename(os.path.normpath(args.raw)))[0]
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    if tokenizer is not None and not getattr(tokenizer, "chat_template", None):
        raise InputError(f"--tokenizer {args.tokenizer}: the tokenizer has no chat template (tokenizer_config.json "
                         f"'chat_template'); REDI's length filter counts chat-templated tokens")
    index = BenchmarkIndex(args.benchmarks, args.decontam_ngram) if args.benchmarks else None
    stats, hits = CurationStats(), []
    stats.setup_seconds = time.perf_counter() - start   # tokenizer and benchmark loading
    sft_out, pairs_out = ShuffledJsonlWriter(args.sft_out), ShuffledJsonlWriter(args.pairs_out)
    try:
        batch = []
        for c in iter_candidates(files, id_prefix, set(args.exclude_source), args.drop_identical_pairs, stats):
            if index is not None and record_contamination(index, c, hits) and args.drop_contaminated:
                stats.contaminated["sft"] += 1
                stats.contaminated["pairs"] += c.rejected is not None
                continue
            batch.append(c)
            if len(batch) == args.batch_size:
                emit_batch(batch, tokenizer, args, stats, sft_out, pairs_out)
                batch = []
        emit_batch(batch, tokenizer, args, stats, sft_out, pairs_out)
        if stats.rows_read == 0:
            raise InputError(f"--raw {args.raw}: no rows to curate (every input file is empty)")
        rank = shuffle_rank(stats.rows_read, args.seed)
        stats.sft_written, stats.pairs_written = sft_out.finish(rank), pairs_out.finish(rank)
    finally:
        sft_out.discard_spool()
        pairs_out.discard_spool()
    return build_summary(args, stats, index, hits, time.perf_counter() - start)


# -----------------------------------------------------------------------------
# curation: summary


def length_stats(values: list[int]) -> dict | None:
    """count / mean / median / p95 (numpy's linear interpolation) / max of token counts."""
    if not values:
        return None
    a = np.asarray(values)
    return {"count": len(values), "mean": round(float(a.mean()), 1), "median": float(np.median(a)),
            "p95": round(float(np.percentile(a, 95)), 1), "max": int(a.max())}


def summary_path(args) -> str:
    """--summary-out, else <sft-out without .jsonl>.summary.json beside the SFT output."""
    if args.summary_out:
        return args.summary_out
    stem = args.sft_out[:-len(".jsonl")] if args.sft_out.endswith(".jsonl") else args.sft_out
    return stem + ".summary.json"


def output_paths(args) -> list[tuple[str, str]]:
    """(option, path) of the three files curate writes."""
    return [("--sft-out", args.sft_out), ("--pairs-out", args.pairs_out),
            ("--summary-out" if args.summary_out else "the summary (from --sft-out)", summary_path(args))]


def build_summary(args, stats: CurationStats, index, hits, seconds) -> dict:
    """The summary dict (schema in the module docstring); checks that every row is accounted for."""
    dropped_rows = sum(sum(c.values()) for c in stats.dropped.values())
    rows_kept = stats.rows_read - dropped_rows
    refused = {kind: sum(counts.values()) for kind, counts in stats.refused.items()}
    assert rows_kept == stats.no_positive + stats.candidates, "a raw row went uncounted"
    assert stats.sft_written == stats.candidates - refused["sft"] - stats.contaminated["sft"], \
        "an SFT example went uncounted"
    assert stats.pairs_before_length_filter == (stats.candidates - stats.no_negative - refused["pairs"]
                                                - stats.contaminated["pairs"]), "a pair went uncounted"
    assert stats.pairs_written == stats.pairs_before_length_filter - stats.length_dropped, "a pair went uncounted"
    summary = {
        "inputs": stats.files,
        "rows_read": stats.rows_read,
        "row_filters": [{"name": name, "reason": reason, "dropped": sum(stats.dropped[name].values()),
                         "detail": dict(sorted(stats.dropped[name].items()))}
                        for name, reason in ROW_FILTERS.items()],
        "rows_kept": rows_kept,
        "labels": {"generations": stats.generations, "positive": stats.positive_generations,
                   "negative": stats.generations - stats.positive_generations,
                   "null_labels_counted_negative": stats.null_labels},
        "selection": {"no_positive": stats.no_positive, "no_negative": stats.no_negative,
                      "problems_with_positive": stats.candidates},
        "refused": {kind: [{"name": name, "reason": reason, "dropped": stats.refused[kind][name]}
                           for name, reason in reasons.items()]
                    for kind, reasons in (("sft", SFT_REFUSALS), ("pairs", PAIR_REFUSALS))},
        "identical_pairs": {"found": stats.identical_pairs,
                            "action": "dropped" if args.drop_identical_pairs else "kept"},
        "decontamination": None,
        "length_filter": {
            "applied": args.tokenizer is not None, "tokenizer": args.tokenizer,
            "max_prompt_tokens": args.max_prompt_tokens, "max_response_tokens": args.max_response_tokens,
            "pairs_before": stats.pairs_before_length_filter, "dropped": stats.length_dropped,
            "dropped_by_limit": {k: stats.length_dropped_by_limit[k] for k in ("prompt", "chosen", "rejected")}},
        "outputs": {"sft": {"path": args.sft_out, "rows": stats.sft_written},
                    "pairs": {"path": args.pairs_out, "rows": stats.pairs_written},
                    "order": f"the kept rows in the order of a shuffle of all raw rows with seed {args.seed}"},
        "length_stats": None if args.tokenizer is None else {
            "counted_over": "pairs written (prompt, chosen, rejected) and SFT examples written (sft_response)",
            **{name: length_stats(values) for name, values in stats.lengths.items()}},
        "expected_counts": None,
        "timing": {"seconds": round(seconds, 2), "setup_seconds": round(stats.setup_seconds, 2),
                   "rows_per_second": round(stats.rows_read / max(seconds - stats.setup_seconds, 1e-9), 1),
                   "tokenize_seconds": round(stats.tokenize_seconds, 2), "tokenized_texts": stats.tokenized_texts,
                   "tokenized_tokens": stats.tokenized_tokens},
        "args": vars(args),
    }
    if not args.tokenizer:
        summary["length_filter"]["note"] = "skipped: no --tokenizer given, pairs are NOT length-filtered"
    if index is not None:
        summary["decontamination"] = {
            "ngram": index.n, "normalisation": "lower-case; runs of non-alphanumerics -> one space; word n-grams",
            "checked": "problems with a positive generation, less those refused (every SFT example and pair)",
            "action": "dropped from both outputs" if args.drop_contaminated else "report only",
            "contaminated_problems": len({h["curated_id"] for h in hits}),
            "dropped": stats.contaminated, "benchmarks": index.benchmarks, "hits": hits}
    if args.expect_counts:
        expected = dict(zip(("sft", "pairs"), args.expect_counts))
        found = {"sft": stats.sft_written, "pairs": stats.pairs_written}
        summary["expected_counts"] = {"expected": expected, "found": found, "ok": expected == found}
    return summary


def format_summary(s: dict) -> str:
    """The summary as an aligned, human-readable table."""
    rows = [("rows read", s["rows_read"], ", ".join(f"{f['path']}: {f['rows']}" for f in s["inputs"]))]
    for f in s["row_filters"]:
        detail = ", ".join(f"{k}: {v}" for k, v in f["detail"].items())
        rows.append((f"  dropped: {f['name']}", f["dropped"], f["reason"] + (f" [{detail}]" if detail else "")))
    rows += [("rows kept", s["rows_kept"], ""),
             ("  no positive generation (no SFT, no pair)", s["selection"]["no_positive"], ""),
             ("  no negative generation (SFT only, no pair)", s["selection"]["no_negative"], "")]
    for kind, label in (("sft", "SFT example"), ("pairs", "pair")):
        rows += [(f"  {label} refused: {r['name']}", r["dropped"], r["reason"]) for r in s["refused"][kind]]
    same = s["identical_pairs"]
    rows.append(("  pairs with chosen == rejected", same["found"],
                 "dropped (--drop-identical-pairs)" if same["action"] == "dropped"
                 else "kept, as REDI's code keeps them (--drop-identical-pairs refuses them)"))
    d = s["decontamination"]
    if d:
        per_bench = ", ".join(f"{b}: {i['hits']}" for b, i in d["benchmarks"].items())
        rows.append((f"decontamination ({d['ngram']}-grams, {d['action']})", d["contaminated_problems"],
                     f"problems hit; hits per benchmark: {per_bench}"))
    lf = s["length_filter"]
    by_limit = ", ".join(f"{k} {v}" for k, v in lf["dropped_by_limit"].items())
    rows += [("SFT examples written", s["outputs"]["sft"]["rows"], s["outputs"]["sft"]["path"]),
             ("pairs before length filter", lf["pairs_before"], ""),
             ("  dropped by length filter", lf["dropped"],
              f"prompt > {lf['max_prompt_tokens']} or response > {lf['max_response_tokens']} tokens ({by_limit})"
              if lf["applied"] else lf["note"]),
             ("pairs written", s["outputs"]["pairs"]["rows"], s["outputs"]["pairs"]["path"])]
    lines = [f"{label:<46}{value:>9}  {note}".rstrip() for label, value, note in rows]
    if s["length_stats"]:
        lines.append(f"{'token lengths':<22}{'count':>9}{'mean':>10}{'median':>10}{'p95':>10}{'max':>9}")
        for name in ("prompt", "chosen", "rejected", "sft_response"):
            st = s["length_stats"][name]
            if st:
                lines.append(f"  {name:<20}{st['count']:>9}{st['mean']:>10}{st['median']:>10}"
                             f"{st['p95']:>10}{st['max']:>9}")
    t = s["timing"]
    lines.append(f"{s['rows_read']} rows in {t['seconds']} s: {t['setup_seconds']} s loading, then "
                 f"{t['rows_per_second']} rows/s ({t['tokenize_seconds']} s tokenizing "
                 f"{t['tokenized_texts']} texts)")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    """`data.py curate ...` and `data.py check ...` (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="data.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{curate,check}")
    cur = sub.add_parser("curate", help="OpenR1-Math-Raw -> SFT examples + preference pairs (REDI's rules)",
                         description="Curate OpenR1-Math-Raw into SFT examples and pairs by REDI's rules.")
    io = cur.add_argument_group("input and outputs")
    io.add_argument("--raw", required=True, help="OpenR1-Math-Raw as a .jsonl or .parquet file, or a directory of "
                                                 "shards (all *.jsonl / *.parquet, sorted by name)")
    io.add_argument("--sft-out", required=True, help="JSON Lines output: one SFT example per problem")
    io.add_argument("--pairs-out", required=True, help="JSON Lines output: one preference pair per problem")
    io.add_argument("--summary-out", default=None, help="summary JSON (default: <sft-out stem>.summary.json)")
    io.add_argument("--id-prefix", default=None, help="ids are PREFIX/original_index (default: --raw's file "
                                                      "stem or directory name)")
    rules = cur.add_argument_group("REDI's rules")
    rules.add_argument("--exclude-source", nargs="*", default=DEFAULT_EXCLUDED_SOURCES, metavar="SOURCE",
                       help="drop rows from these sources (default: cn_k12; give the flag alone to keep all)")
    rules.add_argument("--seed", type=int, default=42, help="seed of the shuffle that orders the outputs")
    rules.add_argument("--drop-identical-pairs", action="store_true",
                       help="refuse pairs whose chosen and rejected texts are identical (default: keep and "
                            "count them, as REDI does)")
    length = cur.add_argument_group("length filter (pairs only)")
    length.add_argument("--tokenizer", default=None, help="tokenizer dir or hub name (REDI: Qwen2.5-Math-1.5B); "
                                                          "without it pairs are NOT length-filtered")
    length.add_argument("--max-prompt-tokens", type=int, default=800, help="keep pairs whose prompt is <= this")
    length.add_argument("--max-response-tokens", type=int, default=19000,
                        help="keep pairs whose chosen AND rejected are <= this")
    length.add_argument("--batch-size", type=int, default=256, help="problems per batched tokenizer call")
    decon = cur.add_argument_group("decontamination report")
    decon.add_argument("--benchmarks", nargs="+", default=None, metavar="FILE",
                       help="benchmark JSON Lines files (field 'problem') to check the curated problems against")
    decon.add_argument("--decontam-ngram", type=int, default=13, help="word n-gram size for the overlap check")
    decon.add_argument("--drop-contaminated", action="store_true",
                       help="drop problems that share an n-gram with a benchmark (default: report only)")
    check = cur.add_argument_group("checks")
    check.add_argument("--expect-counts", nargs=2, type=int, default=None, metavar=("SFT", "PAIRS"),
                       help=f"fail unless exactly these counts are written (paper, full data with "
                            f"the Qwen2.5-Math tokenizer: {PAPER_COUNTS['sft']} {PAPER_COUNTS['pairs']})")
    chk = sub.add_parser("check", help="validate curated or bring-your-own JSON Lines files and print counts",
                         description="Load files through load_sft_examples / load_pairs and print what they hold.")
    chk.add_argument("--data", nargs="+", required=True, metavar="FILE", help="JSON Lines files to validate")
    return parser


def validate_curate_args(parser, args) -> None:
    """Reject inconsistent options right after parsing."""
    for name in ("max_prompt_tokens", "max_response_tokens", "batch_size", "decontam_ngram"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if len({os.path.abspath(path) for _, path in output_paths(args)}) < 3:
        parser.error("--sft-out, --pairs-out and the summary path must be three different files")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0 (numpy's shuffle), got {args.seed}")
    for option, path in output_paths(args):
        if os.path.isdir(path):
            parser.error(f"{option} {path} is a directory; expected the path of a JSON file to write")
        if os.path.abspath(path) == os.path.abspath(args.raw):
            parser.error(f"{option} {path} is the --raw input; it would be overwritten")
    if args.drop_contaminated and not args.benchmarks:
        parser.error("--drop-contaminated needs --benchmarks")


def run_curate(args) -> int:
    summary = curate(args)
    path = summary_path(args)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(summary, f, ensure_ascii=False, indent=2)
    print(format_summary(summary))
    print(f"summary written to {path}")
    for kind, loader in (("sft", "load_sft_examples"), ("pairs", "load_pairs")):
        if summary["outputs"][kind]["rows"] == 0:
            print(f"data.py curate: warning: {summary['outputs'][kind]['path']} has no rows (see the table); "
                  f"{loader}, and so training, refuses an empty file", file=sys.stderr)
    expected = summary["expected_counts"]
    if expected and not expected["ok"]:
        print(f"data.py curate: error: expected {expected['expected']} but wrote {expected['found']}",
              file=sys.stderr)
        return 1
    return 0


def run_check(args) -> int:
    for path in args.data:
        kind, records = load_curated(path)
        print(f"{path}: {len(records)} {'SFT examples' if kind == 'sft' else 'preference pairs'}; "
              f"first id {records[0]['id']!r}")
    return 0


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "curate":
        validate_curate_args(parser, args)
    with exit_on_input_error(f"data.py {args.command}"):
        code = {"curate": run_curate, "check": run_check}[args.command](args)
    sys.exit(code)


if __name__ == "__main__":
    main()
