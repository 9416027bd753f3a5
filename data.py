"""Data for REDI's two training stages: load, tokenize and batch; `python data.py check` validates files.

What train_sft.py and train_redi.py import, in the order a micro-batch is made:

    load_tokenizer(name)               a Hugging Face tokenizer; EOS pads when it has no pad token
    load_sft_examples / load_pairs     SFT examples {"id", "prompt_messages", "response"}, pairs {.., "chosen", "rejected"}
    tokenize_sft / tokenize_pairs      chat template -> {"input_ids", "labels"}: labels IGNORE_INDEX on the prompt
    TokenizedExamples                  the token cache's files (token_cache.py) read back as those dicts
    describe_first_example             the log block showing an example exactly as tokenized, once per run
    example_tokens(example)            all tokens of a tokenized example (a pair's: chosen + rejected)
    collate / collate_pairs            a padded or packed micro-batch; a pair micro-batch is ONE forward over
                                       [chosen_0..chosen_{n-1}, rejected_0..rejected_{n-1}]
    BatchOrder                         which examples each rank sees in each optimizer step, a pure function
                                       of (seed, epoch, step): deterministic and resumable from the step

    python data.py check --data runs/data/sft.jsonl my_pairs.jsonl   # validate curated / own files

The accepted formats (curate.py's output, TRL's and other common ones), the tokenization and the two
batch layouts: docs/data_formats.md. Bad input is one line, `FILE:LINE: field 'F': expected ..., found ...`,
and exit status 2 (cli.py's InputError).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from cli import InputError, data_error, describe, exit_on_input_error, read_jsonl
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
# loading curated or bring-your-own data (docs/data_formats.md)


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
    Accepted inputs are listed in docs/data_formats.md.
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


def chat_messages(prompt_messages: list[dict], system_prompt: str | None = None) -> list[dict]:
    """The prompt's messages as the chat template receives them, under `--system-prompt` (docs/data_formats.md).

    None (the option absent): unchanged, so a template with a default system prompt (Qwen2.5-Math,
    SmolLM2) inserts it. A string, "" included: a system message with that text first, unless the
    conversation opens with a system message of its own, which is kept: it is part of the example.
    """
    if system_prompt is None or prompt_messages[0]["role"] == "system":
        return list(prompt_messages)
    return [{"role": "system", "content": system_prompt}, *prompt_messages]


def _render(tokenizer, messages, example_id, add_generation_prompt=False) -> str:
    """apply_chat_template as text; a template that refuses the conversation is an InputError naming the example."""
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except TemplateError as e:   # e.g. a template that rejects the system role, given --system-prompt
        raise InputError(f"example {example_id}: the chat template refuses the conversation (roles "
                         f"{[m['role'] for m in messages]}): {e}") from None


def prompt_text(tokenizer, prompt_messages: list[dict], system_prompt: str | None = None,
                example_id: str = "the prompt") -> str:
    """The prompt as the model sees it, generation prompt included: what training masks and what
    evaluate.py samples from (one function, so the two cannot drift apart)."""
    return _render(tokenizer, chat_messages(prompt_messages, system_prompt), example_id, add_generation_prompt=True)


def tokenize_examples(tokenizer, examples, max_length: int | None = None,
                      system_prompt: str | None = None) -> list[dict]:
    """Chat-template (prompt_messages, response, example_id) triples; returns {"input_ids", "labels"} int lists.

    The prompt is the conversation (`chat_messages`: the --system-prompt rule) with the generation
    prompt (so with REDI's template it ends in `<|im_start|>assistant\\n<think>\\n`); the labels are
    IGNORE_INDEX on it and cover the whole response INCLUDING the end-of-turn token, so the model
    learns to stop. Anything the template adds after the end-of-turn token (Qwen adds "\\n") is
    dropped. The prompt/response boundary is found by tokenizing the prompt and the full
    conversation and checking that the first is a prefix of the second, never by searching for a
    marker. Nothing is truncated: a sequence over `max_length` is an error naming the example
    (filter long examples at curation). One batched encode for all prompts and one for all
    conversations: curation's length filter counts thousands of examples this way at once.
    """
    prompt_texts, full_texts = [], []
    for prompt_messages, response, example_id in examples:
        prompt_texts.append(prompt_text(tokenizer, prompt_messages, system_prompt, example_id))
        conversation = chat_messages(prompt_messages, system_prompt) + [{"role": "assistant", "content": response}]
        full_texts.append(_render(tokenizer, conversation, example_id))
        _check_prefix(prompt_texts[-1], full_texts[-1], response, example_id)
    if not examples:
        return []
    unique_prompts = list(dict.fromkeys(prompt_texts))   # a pair's chosen and rejected share their prompt
    prompt_ids = dict(zip(unique_prompts, tokenizer(unique_prompts, add_special_tokens=False)["input_ids"]))
    full_ids = tokenizer(full_texts, add_special_tokens=False)["input_ids"]
    eot = end_of_turn_id(tokenizer)
    return [_split(prompt_ids[text], ids, eot, example_id, max_length)
            for text, ids, (_, _, example_id) in zip(prompt_texts, full_ids, examples)]


def _check_prefix(prompt, full, response, example_id) -> None:
    """The templated prompt must open the templated conversation: where it ends is the prompt/response boundary."""
    if not full.startswith(prompt):
        raise InputError(
            f"example {example_id}: the templated prompt is not a prefix of the templated conversation. "
            f"The chat template's generation prompt ends with {prompt[-30:]!r}, but the conversation "
            f"continues with {full[len(prompt) - 30:len(prompt)]!r}. With REDI's template the "
            f"response must start with the text the generation prompt forces (e.g. '<think>\\n'); "
            f"the response starts with {response[:30]!r}")


def _split(prompt_ids, full_ids, eot, example_id, max_length) -> dict:
    """{"input_ids", "labels"}: the conversation's ids through the response's last end-of-turn token,
    labels IGNORE_INDEX on the prompt."""
    if full_ids[:len(prompt_ids)] != prompt_ids:
        raise InputError(f"example {example_id}: the prompt tokenizes differently alone and inside the "
                         f"conversation (a token merges across the prompt/response boundary)")
    # the LAST end-of-turn after the prompt, searched from the end: only the template's tail ("\\n") follows it
    end = next((i for i in range(len(full_ids) - 1, len(prompt_ids) - 1, -1) if full_ids[i] == eot), None)
    if end is None:
        raise InputError(f"example {example_id}: no end-of-turn token (id {eot}) after the response")
    input_ids = full_ids[:end + 1]
    if len(input_ids) == len(prompt_ids):
        raise InputError(f"example {example_id}: empty response")
    if max_length is not None and len(input_ids) > max_length:
        raise InputError(f"example {example_id}: {len(input_ids)} tokens exceed the maximum sequence length "
                         f"{max_length}; responses are never truncated, filter such examples at curation "
                         f"(curate.py --max-response-tokens) or raise --max-seq-len")
    labels = [IGNORE_INDEX] * len(prompt_ids) + input_ids[len(prompt_ids):]
    return {"input_ids": input_ids, "labels": labels}


def tokenize_example(tokenizer, prompt_messages: list[dict], response: str, example_id: str,
                     max_length: int | None = None, system_prompt: str | None = None) -> dict:
    """One (prompt, response) chat-templated: {"input_ids", "labels"}, as `tokenize_examples`."""
    return tokenize_examples(tokenizer, [(prompt_messages, response, example_id)], max_length, system_prompt)[0]


def tokenize_sft(tokenizer, examples: list[dict], max_length: int | None = None,
                 system_prompt: str | None = None) -> list[dict]:
    """Canonical SFT examples ({"id", "prompt_messages", "response"}) -> tokenized dicts with "id"."""
    return [dict(tokenize_example(tokenizer, e["prompt_messages"], e["response"], e["id"], max_length, system_prompt),
                 id=e["id"]) for e in examples]


def tokenize_pairs(tokenizer, pairs: list[dict], max_length: int | None = None,
                   system_prompt: str | None = None) -> list[dict]:
    """Canonical pairs ({"id", "prompt_messages", "chosen", "rejected"}) -> {"id", "chosen", "rejected"} tokenized."""
    out = []
    for p in pairs:
        sequences = [(p["prompt_messages"], p["chosen"], f"{p['id']} (chosen)"),
                     (p["prompt_messages"], p["rejected"], f"{p['id']} (rejected)")]
        chosen, rejected = tokenize_examples(tokenizer, sequences, max_length, system_prompt)
        out.append({"id": p["id"], "chosen": chosen, "rejected": rejected})
    return out


def example_tokens(example: dict) -> int:
    """All tokens, prompt included, of a tokenized SFT example or pair (chosen + rejected: they share a micro-batch)."""
    if "input_ids" in example:
        return len(example["input_ids"])
    return len(example["chosen"]["input_ids"]) + len(example["rejected"]["input_ids"])


# -----------------------------------------------------------------------------
# the tokenized examples training reads (token_cache.py builds and finds their files)


class TokenizedExamples(Sequence):
    """token_cache.py's examples, read-only; item i is the dict tokenize_sft / tokenize_pairs would give.

    `lengths` [N] (tokens per example; a pair's chosen + rejected) and `supervised` [N] (tokens
    with a label after position 0: an SFT response, a pair's chosen trace) come as arrays, so no
    pass over the tokens is needed to build the sampler or the loss normalisers."""

    def __init__(self, directory: str, kind: str):
        self.directory, self.kind = directory, kind
        self.tokens = np.memmap(os.path.join(directory, "tokens.bin"), dtype=np.int32, mode="r")
        self.index = np.load(os.path.join(directory, "index.npy"))
        with open(os.path.join(directory, "ids.json"), encoding="utf-8") as f:
            self.ids = json.load(f)
        per = 2 if kind == "pairs" else 1
        lengths, prompts = self.index[:, 1], self.index[:, 2]
        self.lengths = lengths.reshape(-1, per).sum(1)
        self.supervised = (lengths - np.maximum(prompts, 1))[::per]

    def __len__(self) -> int:
        return len(self.ids)

    def _sequence(self, s: int) -> dict:
        offset, length, prompt = (int(v) for v in self.index[s])
        ids = self.tokens[offset:offset + length].tolist()
        return {"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]}

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        if self.kind == "sft":
            return {"id": self.ids[i], **self._sequence(i)}
        return {"id": self.ids[i], "chosen": self._sequence(2 * i), "rejected": self._sequence(2 * i + 1)}


# -----------------------------------------------------------------------------
# showing what the model sees: the first example of a run, logged once


SHOWN_TOKENS = 1024          # a longer part of an example is shown as its first 512 and last 256 tokens
_PROBE = "@@system-prompt-probe@@"


def template_system_prompt(tokenizer) -> str | None:
    """The system text the chat template inserts into a conversation that has none, or None.

    Found by rendering one user turn with a probe system message and without one: what the probe
    occupies in the first render is what the template inserted in the second (None when the two
    do not line up, i.e. the template inserts no system turn, or refuses system messages)."""
    user = [{"role": "user", "content": "Q"}]
    from jinja2 import TemplateError

    try:
        probed = tokenizer.apply_chat_template([{"role": "system", "content": _PROBE}, *user], tokenize=False)
    except TemplateError:        # a template that rejects the system role (Gemma's) inserts none either
        return None
    plain = tokenizer.apply_chat_template(user, tokenize=False)
    before, _, after = probed.partition(_PROBE)
    if plain.startswith(before) and plain.endswith(after) and len(plain) > len(before) + len(after):
        return plain[len(before):len(plain) - len(after)]
    return None


def system_prompt_in_use(tokenizer, prompt_messages: list[dict], system_prompt: str | None) -> str:
    """Where an example's system prompt comes from and its text, for the log (the rule: `chat_messages`)."""
    if prompt_messages[0]["role"] == "system":
        return f"{prompt_messages[0]['content']!r} (the data row's own system message, kept)"
    if system_prompt == "":
        return "'' (--system-prompt '': an empty system message, so the template inserts no default)"
    if system_prompt is not None:
        return f"{system_prompt!r} (--system-prompt)"
    default = template_system_prompt(tokenizer)
    return f"(template default: {default!r})" if default else "(none)"


def show_tokens(tokenizer, ids: list[int]) -> str:
    """`ids` decoded with special tokens shown; the middle of a part longer than SHOWN_TOKENS is elided, marked."""
    if len(ids) <= SHOWN_TOKENS:
        return tokenizer.decode(ids, skip_special_tokens=False)
    head, tail = SHOWN_TOKENS // 2, SHOWN_TOKENS // 4
    return (tokenizer.decode(ids[:head], skip_special_tokens=False)
            + f"[... {len(ids) - head - tail} tokens not shown ...]"
            + tokenizer.decode(ids[-tail:], skip_special_tokens=False))


def describe_tokens(tokenizer, title: str, system: str, parts: list[tuple[str, list[int]]]) -> str:
    """A log block: `title`, the system prompt in use, then each (name, ids) part decoded between markers."""
    lines = [f"{title}; system prompt: {system}; decoded with special tokens shown, each part between markers:"]
    for name, ids in parts:
        lines += [f"----- {name}: {len(ids)} tokens -----", show_tokens(tokenizer, ids)]
    return "\n".join(lines + ["----- end of the example -----"])


def first_record(path) -> dict:
    """The canonical first record of a data file (read alone: the log needs only it)."""
    for line, record in read_jsonl(path):
        return normalize_record(record, path, line)
    raise InputError(f"{path}: no records (the file is empty)")


def describe_first_example(tokenizer, path, example: dict, system_prompt: str | None) -> str:
    """The training log's block for `example`, the first record of `path` exactly as tokenized for training
    (an SFT example, or a pair): its prompt (not supervised) and each response (supervised)."""
    sequences = ({"response": example} if "input_ids" in example
                 else {"chosen response": example["chosen"], "rejected response": example["rejected"]})
    prompt_length = [next(i for i, t in enumerate(s["labels"]) if t != IGNORE_INDEX) for s in sequences.values()]
    first = next(iter(sequences.values()))
    parts = [("prompt (not supervised)", first["input_ids"][:prompt_length[0]])]
    parts += [(f"{name} (supervised: the loss's tokens)", s["input_ids"][n:])
              for (name, s), n in zip(sequences.items(), prompt_length)]
    system = system_prompt_in_use(tokenizer, first_record(path)["prompt_messages"], system_prompt)
    return describe_tokens(tokenizer, f"first training example as tokenized (id {example['id']})", system, parts)


# -----------------------------------------------------------------------------
# collation: padded or packed micro-batches


def collate(sequences: list[dict], pad_id: int, packed: bool = False, device=None) -> dict:
    """Stack tokenized sequences into one micro-batch of tensors on `device` (ints left as they are), padded
    (the default; every attention implementation) or packed (`_packed`). Both carry num_sequences = S, and
    per-sequence log-probs are identical in the two layouts. An SFT micro-batch is `collate(examples)`."""
    batch = _packed(sequences) if packed else _padded(sequences, pad_id)
    return batch if device is None else {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def _padded(sequences: list[dict], pad_id: int) -> dict:
    """input_ids, labels [S, T_max]: right padding, labels IGNORE_INDEX on pads. No attention mask: a causal
    decoder's real positions never see the right padding, and the pads' outputs carry no label."""
    def pad(key, value):
        return pad_sequence([torch.tensor(s[key]) for s in sequences], batch_first=True, padding_value=value)
    return {"input_ids": pad("input_ids", pad_id), "labels": pad("labels", IGNORE_INDEX),
            "num_sequences": len(sequences)}


def _packed(sequences: list[dict]) -> dict:
    """Padding-free: all sequences in one row, positions restart per sequence. input_ids, labels,
    position_ids [1, sum T]; seq_index [sum T] (which sequence owns each token); cu_seqlens [S + 1] (int32
    offsets) and max_length (int), flash-attn varlen's boundaries. Attention must not cross sequences:
    flash-attn reads the boundaries, otherwise the forward runs each sequence alone."""
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


def collate_pairs(pairs: list[dict], pad_id: int, packed: bool = False, device=None) -> dict:
    """One pair micro-batch in ONE forward: sequences [chosen_0..chosen_{n-1}, rejected_0..rejected_{n-1}]."""
    return collate([p["chosen"] for p in pairs] + [p["rejected"] for p in pairs], pad_id, packed, device)


# -----------------------------------------------------------------------------
# sharding: which examples each rank sees in each optimizer step


class BatchOrder:
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

    def rank_slices(self, epoch: int, step: int) -> list[list[tuple[int, float]]]:
        """Every rank's (example, weight) list for the step, global_batch / world_size items each."""
        members = self.epoch_order(epoch)[step * self.global_batch:(step + 1) * self.global_batch]
        if not members:
            raise IndexError(f"step {step} is past the end of epoch {epoch} ({self.steps_per_epoch} steps)")
        padded = [(i, 1.0) for i in members]
        padded += [(members[k % len(members)], 0.0) for k in range(self.global_batch - len(members))]
        if not self.balance:
            return [padded[r * self.per_rank:(r + 1) * self.per_rank] for r in range(self.world_size)]
        return [[padded[k] for k in positions] for positions in self._balanced_positions(padded)]

    def rank_slice(self, epoch: int, step: int, rank: int) -> list[tuple[int, float]]:
        """One rank's (example, weight) list for the step."""
        return self.rank_slices(epoch, step)[rank]

    def _balanced_positions(self, items: list[tuple[int, float]]) -> list[list[int]]:
        """Positions of the step's items per rank: longest first, each to the least-loaded rank with room
        (ties to the lower rank and the earlier item); a pure function of the items, so resume stays exact."""
        loads, slots = [0] * self.world_size, [[] for _ in range(self.world_size)]
        for k in sorted(range(len(items)), key=lambda k: (-self.lengths[items[k][0]], k)):
            rank = min((r for r in range(self.world_size) if len(slots[r]) < self.per_rank),
                       key=lambda r: (loads[r], r))
            slots[rank].append(k)
            loads[rank] += self.lengths[items[k][0]]
        return slots

    def global_count(self, epoch: int, step: int, cost) -> float:
        """sum of cost[i] * weight over the step's examples on ALL ranks: the loss's denominator.
        Every rank computes every rank's share, so this needs no collective; padding weighs 0."""
        return float(sum(cost[i] * w for items in self.rank_slices(epoch, step) for i, w in items))

    def micro_batches(self, epoch: int, step: int) -> list[list[tuple[int, float]]]:
        """This rank's micro-batches for the step; as many on every rank (see the class docstring)."""
        slices = self.rank_slices(epoch, step)
        if self.max_tokens is not None:
            return self._token_packs(slices)
        mine, size = slices[self.rank], self.micro_batch_size
        return [mine[k:k + size] for k in range(0, len(mine), size)]

    def _token_packs(self, slices: list[list[tuple[int, float]]]) -> list[list[tuple[int, float]]]:
        """This rank's greedy packs of at most max_tokens tokens (an example longer than that alone is a pack
        of its own: examples are never cut); every rank packs every rank's slice, to agree on the count."""
        packs = [self._pack(items) for items in slices]
        mine, target = packs[self.rank], max(len(p) for p in packs)
        while len(mine) < target:   # split the largest pack; always possible (count <= per_rank)
            k = max(range(len(mine)), key=lambda j: (len(mine[j]), -j))
            half = len(mine[k]) // 2
            mine[k:k + 1] = [mine[k][:half], mine[k][half:]]
        return mine

    def _pack(self, items: list[tuple[int, float]]) -> list[list[tuple[int, float]]]:
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


# -----------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    """`data.py check --data FILE...` (curation has its own script: curate.py)."""
    parser = argparse.ArgumentParser(prog="data.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{check}")
    chk = sub.add_parser("check", help="validate curated or bring-your-own JSON Lines files and print counts",
                         description="Load files through load_sft_examples / load_pairs and print what they hold.")
    chk.add_argument("--data", nargs="+", required=True, metavar="FILE", help="JSON Lines files to validate")
    return parser


def run_check(args) -> int:
    for path in args.data:
        kind, records = load_curated(path)
        print(f"{path}: {len(records)} {'SFT examples' if kind == 'sft' else 'preference pairs'}; "
              f"first id {records[0]['id']!r}")
    return 0


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    with exit_on_input_error(f"data.py {args.command}"):
        code = run_check(args)
    sys.exit(code)


if __name__ == "__main__":
    main()
