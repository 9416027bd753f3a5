"""OpenR1-Math-Raw -> REDI's two training sets (SFT examples, preference pairs), by the paper's rules.

REDI (arXiv 2505.24850, Appendix C.2, and its scripts in Tim-Siu/reinforcement-distillation) keeps, per
problem, the lowest-index generation both verifiers accept as the SFT example and as a pair's chosen
y_w, and the lowest-index generation they do not both accept as its rejected y_l; with a tokenizer,
pairs whose prompt or either response is too long for training are dropped. The rules, where this
departs from REDI's scripts and why, the output formats and the summary's fields: docs/curation.md.
Lengths are counted as training tokenizes (data.tokenize_examples, the run's `--system-prompt`); the
outputs load with data.py's `load_sft_examples` / `load_pairs`, as the training scripts read them.

    python curate.py --raw OpenR1-Math-Raw/data --id-prefix openr1-math-raw \\
        --sft-out runs/data/sft.jsonl --pairs-out runs/data/pairs.jsonl --tokenizer Qwen/Qwen2.5-Math-1.5B \\
        --benchmarks eval_sets/{math500,aime24,amc23,minerva,olympiadbench}.jsonl \\
        --expect-counts 77629 53175
    python curate.py --raw runs/toy/raw.jsonl --sft-out runs/toy/sft.jsonl --pairs-out runs/toy/pairs.jsonl

The code runs in the order of a raw row's path: input files -> REDI's rules on one row -> candidates
(one per problem with a positive) -> length filter -> decontamination report -> outputs in seeded
shuffle order -> the summary -> the command line (`main()` last). Bad input is one line,
`curate.py: error: FILE:LINE: field 'F': expected ..., found ...`, and exit status 2.
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

from cli import (InputError, add_system_prompt_option, data_error, describe, exit_on_input_error, make_output_dir,
                 read_jsonl)
from data import IGNORE_INDEX, load_tokenizer, tokenize_examples


# -----------------------------------------------------------------------------
# constants and input files


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

# What the length filter's counts are (rule 7 of docs/curation.md), for the summary.
COUNTED_AS = ("as training tokenizes (data.tokenize_examples, same --system-prompt): prompt = the chat-templated "
              "prompt with its generation prompt, system prompt included; chosen / rejected = the supervised "
              "tokens (the response through its end-of-turn token)")

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
# REDI's rules on one raw row


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
# candidates, one per problem with a positive


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
    prompt_tokens: int | None = None      # filled by measure_lengths (training's tokenization)
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
# length filter (pairs only; rule 7 of docs/curation.md)


def measure_lengths(tokenizer, batch: list[Candidate], stats: CurationStats, system_prompt: str | None = None) -> None:
    """Set each candidate's token counts exactly as training will tokenize it (data.tokenize_examples, with
    the same --system-prompt), in one batched call: prompt = the chat-templated prompt with its generation
    prompt (system prompt included); chosen / rejected = the supervised tokens, response + end of turn."""
    sequences = [([{"role": "user", "content": c.problem}], c.chosen, f"{c.id} (chosen)") for c in batch]
    with_pair = [c for c in batch if c.rejected is not None]
    sequences += [([{"role": "user", "content": c.problem}], c.rejected, f"{c.id} (rejected)") for c in with_pair]
    start = time.perf_counter()
    tokenized = tokenize_examples(tokenizer, sequences, system_prompt=system_prompt)
    stats.tokenize_seconds += time.perf_counter() - start
    stats.tokenized_texts += len(tokenized)
    stats.tokenized_tokens += sum(len(t["input_ids"]) for t in tokenized)
    prompts = [t["labels"].count(IGNORE_INDEX) for t in tokenized]      # labels are IGNORE_INDEX on the prompt only
    responses = [len(t["input_ids"]) - n for t, n in zip(tokenized, prompts)]
    for i, c in enumerate(batch):
        c.prompt_tokens, c.chosen_tokens = prompts[i], responses[i]
    for c, count in zip(with_pair, responses[len(batch):]):
        c.rejected_tokens = count


def over_limits(c: Candidate, max_prompt_tokens: int, max_response_tokens: int) -> list[str]:
    """Which limits a pair exceeds: a subset of ['prompt', 'chosen', 'rejected']."""
    checks = (("prompt", c.prompt_tokens, max_prompt_tokens), ("chosen", c.chosen_tokens, max_response_tokens),
              ("rejected", c.rejected_tokens, max_response_tokens))
    return [name for name, tokens, limit in checks if tokens > limit]


# -----------------------------------------------------------------------------
# decontamination report


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
# outputs in seeded shuffle order


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
# the whole pipeline


def emit_batch(batch, tokenizer, args, stats: CurationStats, sft_out: ShuffledJsonlWriter,
               pairs_out: ShuffledJsonlWriter) -> None:
    """Measure a batch of candidates (if a tokenizer is given), length-filter the pairs, spool both outputs."""
    if tokenizer is not None and batch:
        measure_lengths(tokenizer, batch, stats, args.system_prompt)
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
    """Run the curation of docs/curation.md; write both outputs; return the summary."""
    start = time.perf_counter()
    files = list_input_files(args.raw)
    for option, path in output_paths(args):   # fail now, not after the whole run
        make_output_dir(os.path.dirname(os.path.abspath(path)), f"{option} {path}")
    id_prefix = args.id_prefix or os.path.splitext(os.path.basename(os.path.normpath(args.raw)))[0]
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    if tokenizer is not None and not getattr(tokenizer, "chat_template", None):
        raise InputError(f"--tokenizer {args.tokenizer}: the tokenizer has no chat template (tokenizer_config.json "
                         f"'chat_template'); the length filter counts tokens as training templates them")
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
# summary


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
    """The summary dict (schema in docs/curation.md); checks that every row is accounted for."""
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
            "applied": args.tokenizer is not None, "tokenizer": args.tokenizer, "system_prompt": args.system_prompt,
            "counted_as": COUNTED_AS,
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
    """`curate.py --raw ... --sft-out ... --pairs-out ...` (see docs/curation.md)."""
    parser = argparse.ArgumentParser(prog="curate.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    io = parser.add_argument_group("input and outputs")
    io.add_argument("--raw", required=True, help="OpenR1-Math-Raw as a .jsonl or .parquet file, or a directory of "
                                                 "shards (all *.jsonl / *.parquet, sorted by name)")
    io.add_argument("--sft-out", required=True, help="JSON Lines output: one SFT example per problem")
    io.add_argument("--pairs-out", required=True, help="JSON Lines output: one preference pair per problem")
    io.add_argument("--summary-out", default=None, help="summary JSON (default: <sft-out stem>.summary.json)")
    io.add_argument("--id-prefix", default=None, help="ids are PREFIX/original_index (default: --raw's file "
                                                      "stem or directory name)")
    rules = parser.add_argument_group("REDI's rules")
    rules.add_argument("--exclude-source", nargs="*", default=DEFAULT_EXCLUDED_SOURCES, metavar="SOURCE",
                       help="drop rows from these sources (default: cn_k12; give the flag alone to keep all)")
    rules.add_argument("--seed", type=int, default=42, help="seed of the shuffle that orders the outputs")
    rules.add_argument("--drop-identical-pairs", action="store_true",
                       help="refuse pairs whose chosen and rejected texts are identical (default: keep and "
                            "count them, as REDI does)")
    length = parser.add_argument_group("length filter (pairs only)")
    length.add_argument("--tokenizer", default=None, help="tokenizer dir or hub name (REDI: Qwen2.5-Math-1.5B); "
                                                          "without it pairs are NOT length-filtered")
    length.add_argument("--max-prompt-tokens", type=int, default=800, help="keep pairs whose prompt is <= this")
    length.add_argument("--max-response-tokens", type=int, default=19000,
                        help="keep pairs whose chosen AND rejected are <= this")
    length.add_argument("--batch-size", type=int, default=256, help="problems per batched tokenizer call")
    add_system_prompt_option(length, note=". Here it changes only what the length filter counts (pass the training "
                                          "run's): rows are written without a system message")
    decon = parser.add_argument_group("decontamination report")
    decon.add_argument("--benchmarks", nargs="+", default=None, metavar="FILE",
                       help="benchmark JSON Lines files (field 'problem') to check the curated problems against")
    decon.add_argument("--decontam-ngram", type=int, default=13, help="word n-gram size for the overlap check")
    decon.add_argument("--drop-contaminated", action="store_true",
                       help="drop problems that share an n-gram with a benchmark (default: report only)")
    check = parser.add_argument_group("checks")
    check.add_argument("--expect-counts", nargs=2, type=int, default=None, metavar=("SFT", "PAIRS"),
                       help=f"fail unless exactly these counts are written (paper, full data with "
                            f"the Qwen2.5-Math tokenizer: {PAPER_COUNTS['sft']} {PAPER_COUNTS['pairs']})")
    return parser


def validate_args(parser, args) -> None:
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
    if args.system_prompt is not None and not args.tokenizer:
        parser.error("--system-prompt needs --tokenizer: it only changes the length filter's counts")


def run(args) -> int:
    """Curate, write the summary, print the table; 1 when --expect-counts disagrees, else 0."""
    summary = curate(args)
    path = summary_path(args)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(summary, f, ensure_ascii=False, indent=2)
    print(format_summary(summary))
    print(f"summary written to {path}")
    for kind, loader in (("sft", "load_sft_examples"), ("pairs", "load_pairs")):
        if summary["outputs"][kind]["rows"] == 0:
            print(f"curate.py: warning: {summary['outputs'][kind]['path']} has no rows (see the table); "
                  f"{loader}, and so training, refuses an empty file", file=sys.stderr)
    expected = summary["expected_counts"]
    if expected and not expected["ok"]:
        print(f"curate.py: error: expected {expected['expected']} but wrote {expected['found']}",
              file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    validate_args(parser, args)
    with exit_on_input_error("curate.py"):
        code = run(args)
    sys.exit(code)


if __name__ == "__main__":
    main()
