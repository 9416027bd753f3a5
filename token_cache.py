"""Tokenized training data, built once and shared: compact int32 arrays cached next to the data.

    examples = token_cache.load(path, tokenizer, kind, max_length, system_prompt)   # collective: every rank
    python token_cache.py --data pairs.jsonl --model runs/sft/final --kind pairs    # build before a long run

A token costs 4 bytes, once per machine (memory-mapped, so the ranks of a node share the page cache),
and labels are not stored: they are the ids with the prompt masked (data.TokenizedExamples reads the
files back as example dicts; this module builds and finds them). The cache lives in
DATA.tokenized/KEY/, KEY a hash of everything tokenization depends on (data bytes, tokenizer, chat
template, kind, max length, --system-prompt), so a stale cache is never read and a torn one is rebuilt.
Ranks build it together (rank r tokenizes examples r, r+W, ...; rank 0 merges and publishes it with one
atomic rename); jobs sharing a data file build in their own temp dirs and read whichever landed first.
A bad example on any rank stops every rank with its message. The on-disk layout and the rules:
docs/training.md ("Tokenized data").
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
import time

import numpy as np
import torch.distributed as dist

from cli import InputError
from data import TokenizedExamples, load_pairs, load_sft_examples, tokenize_example
from redi_loss import IGNORE_INDEX
from run_safety import raise_on_every_rank

FORMAT_VERSION = 1
KINDS = ("sft", "pairs")
POLL_S = 2.0            # how often a job waiting for another job's build looks again
WAIT_S = 3600.0         # then it builds too: a lock can outlive its holder (a crashed NFS client)
STALE_S = 24 * 3600.0   # a temp dir untouched this long is a killed job's, and is removed


# -----------------------------------------------------------------------------
# the collective entry point


def load(path: str, tokenizer, kind: str, max_length: int | None,
         system_prompt: str | None = None) -> TokenizedExamples:
    """The tokenized examples of `path` (a curated or bring-your-own file), from the cache or built now;
    `system_prompt` is --system-prompt (data.chat_messages)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rank, world = dist.get_rank(), dist.get_world_size()
    key = directory = lock = None
    if rank == 0:
        key = cache_key(path, tokenizer, kind, max_length, system_prompt)
        directory = os.path.join(f"{path}.tokenized", key)
    since, noted = time.monotonic(), False
    try:
        while True:
            # rank 0 decides for the job, one collective a round, so a long wait never times out
            message = [None]
            if rank == 0:
                step, problem, lock, work = _decide(directory, key, time.monotonic() - since)
                if step == "wait" and not noted:
                    print(f"tokenized cache {directory}: {problem}; another job is building it, waiting", flush=True)
                    noted = True
                message = [(step, directory, problem, work)]
            dist.broadcast_object_list(message, src=0)
            step, directory, problem, work = message[0]
            if step != "wait":
                break
            time.sleep(POLL_S)
        if step == "error":
            raise InputError(problem)
        if step == "build":
            build(path, tokenizer, kind, max_length, directory, key, problem, work, rank, world, system_prompt)
    finally:
        if lock:
            lock.close()    # releases the flock
    return TokenizedExamples(directory, kind)


def _decide(directory, key, waited) -> tuple:
    """Rank 0: (step, why, lock, work dir), step "read" | "wait" | "build" | "error". A job builds, in a
    new temp dir of its own, when the cache is missing or bad and it holds the lock, or no lock works
    here, or it has waited WAIT_S for another job's build."""
    problem = check(directory, key)
    if problem is None:
        return "read", None, None, None
    lock = _try_lock(directory)
    if lock is False and waited < WAIT_S:
        return "wait", problem, None, None
    lock = lock or None
    problem = check(directory, key)      # the last holder may have published just before letting go
    if problem is None:
        if lock:
            lock.close()
        return "read", None, None, None
    work = os.path.join(os.path.dirname(directory), f".{key}.tmp-{secrets.token_hex(6)}")
    try:
        os.makedirs(work)
    except OSError as e:
        return "error", f"{directory}: could not write the tokenized cache: {e}", lock, None
    return "build", problem, lock, work


def _try_lock(directory):
    """An exclusive flock on DATA.tokenized/.KEY.lock; False while another job holds it; None where
    locks do not work (some NFS mounts): then every job builds, which is correct, only slower."""
    try:
        os.makedirs(os.path.dirname(directory), exist_ok=True)
        f = open(os.path.join(os.path.dirname(directory), f".{os.path.basename(directory)}.lock"), "a")
    except OSError:
        return None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return f
    except BlockingIOError:
        f.close()
        return False
    except OSError:
        f.close()
        return None


def build(path, tokenizer, kind, max_length, directory, key, problem, work, rank, world, system_prompt=None) -> None:
    """Every rank tokenizes its share into a part in this job's own `work` dir; rank 0 merges and
    publishes; a failure anywhere stops all. The work dir is removed however it ends."""
    if rank == 0:
        print(f"tokenized cache {directory}: {problem}; building it with {world} rank(s)", flush=True)
    error = None
    try:
        try:
            records = load_pairs(path) if kind == "pairs" else load_sft_examples(path)
            write_part(os.path.join(work, f"part-{rank}"), records[rank::world], tokenizer, kind, max_length,
                       system_prompt)
        except InputError as e:
            error = str(e)
        except OSError as e:
            error = f"{directory}: could not write the tokenized cache: {e}"
        raise_on_every_rank(error)
        if rank == 0:
            try:
                built = os.path.join(work, "cache")
                merge_parts(work, world, built, key,
                            {"data": os.path.abspath(path), "kind": kind, "max_length": max_length,
                             "system_prompt": system_prompt})
                note = publish(built, directory, key)
                if note:
                    print(f"tokenized cache {directory}: {note}", flush=True)
            except OSError as e:
                error = f"{directory}: could not write the tokenized cache: {e}"
        raise_on_every_rank(error)
    finally:
        if rank == 0:
            shutil.rmtree(work, ignore_errors=True)
            sweep_stale(os.path.dirname(directory))


def publish(built, directory, key) -> str | None:
    """Rename the complete cache `built` to `directory`: None, or a note when another job's is read instead.

    Builds of one key are byte-identical (bar meta.json's data path), so when jobs race the first
    rename wins and the others verify it and read it. A published cache is never deleted in place,
    since another job may be reading it: a corrupt one is renamed aside first, and an aside that
    verifies after all (a racing job had just replaced it) is left to the stale sweep."""
    for _ in range(3):
        try:
            os.rename(built, directory)
            return None
        except OSError:
            if not os.path.isdir(directory):
                raise
        if check(directory, key) is None:
            return "another job published it first; reading that one (equal content)"
        aside = os.path.join(os.path.dirname(directory), f".{key}.old-{secrets.token_hex(6)}")
        try:
            os.rename(directory, aside)
        except FileNotFoundError:
            continue                    # another job moved it aside first
        if check(aside, key) is not None:
            shutil.rmtree(aside, ignore_errors=True)
    raise OSError(f"{directory} kept changing while this job published its build")


def sweep_stale(parent) -> None:
    """Remove killed jobs' temp dirs: any untouched for STALE_S (a live build writes all the time)."""
    for name in os.listdir(parent):
        top = os.path.join(parent, name)
        if not (name.startswith(".") and (".tmp-" in name or ".old-" in name)):
            continue
        try:
            touched = max(os.stat(os.path.join(d, n)).st_mtime for d, _, files in os.walk(top) for n in [".", *files])
        except (OSError, ValueError):
            continue                    # its owner removed it meanwhile
        if time.time() - touched > STALE_S:
            print(f"tokenized cache: removing {top}, a temp dir untouched for {STALE_S / 3600:g} h", flush=True)
            shutil.rmtree(top, ignore_errors=True)


# -----------------------------------------------------------------------------
# key, parts, merge, check


def cache_key(path, tokenizer, kind, max_length, system_prompt=None) -> str:
    # json.dumps keeps None (the template's default) and "" (an empty system message) apart
    h = hashlib.sha256(f"v{FORMAT_VERSION}|{kind}|{max_length}|{json.dumps(system_prompt)}|".encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))).encode())
    h.update(str(tokenizer.chat_template).encode())
    return h.hexdigest()[:16]


def write_part(prefix, records, tokenizer, kind, max_length, system_prompt=None) -> None:
    """prefix.bin (int32 ids), prefix.npy (int64 [S, 2]: length, prompt length), prefix.json (ids)."""
    rows = []
    with open(prefix + ".bin", "wb") as f:
        for r in records:
            responses = [r["response"]] if kind == "sft" else [r["chosen"], r["rejected"]]
            names = [r["id"]] if kind == "sft" else [f"{r['id']} (chosen)", f"{r['id']} (rejected)"]
            for response, name in zip(responses, names):
                seq = tokenize_example(tokenizer, r["prompt_messages"], response, name, max_length, system_prompt)
                prompt = next(i for i, t in enumerate(seq["labels"]) if t != IGNORE_INDEX)
                f.write(np.asarray(seq["input_ids"], dtype=np.int32).tobytes())
                rows.append((len(seq["input_ids"]), prompt))
    np.save(prefix + ".npy", np.asarray(rows, dtype=np.int64).reshape(-1, 2))
    with open(prefix + ".json", "w", encoding="utf-8") as f:
        json.dump([r["id"] for r in records], f)


def merge_parts(parts_dir, world, out, key, inputs) -> None:
    """Parts (records r, r+W, ...) -> one complete cache in file order, in the new directory `out`."""
    per = 2 if inputs["kind"] == "pairs" else 1
    parts = []
    for r in range(world):
        prefix = os.path.join(parts_dir, f"part-{r}")
        with open(prefix + ".json", encoding="utf-8") as f:
            parts.append((np.memmap(prefix + ".bin", dtype=np.int32, mode="r") if os.path.getsize(prefix + ".bin")
                          else np.zeros(0, np.int32), np.load(prefix + ".npy"), json.load(f)))
    starts = [np.concatenate([[0], np.cumsum(rows[:, 0])]) for _, rows, _ in parts]
    os.makedirs(out)
    index, ids, offset = [], [], 0
    with open(os.path.join(out, "tokens.bin"), "wb") as tokens_out:
        for i in range(sum(len(p[2]) for p in parts)):
            tokens, rows, names = parts[i % world]
            j = i // world
            ids.append(names[j])
            for s in range(per * j, per * j + per):
                length, prompt = (int(v) for v in rows[s])
                tokens_out.write(tokens[starts[i % world][s]:starts[i % world][s] + length].tobytes())
                index.append((offset, length, prompt))
                offset += length
    np.save(os.path.join(out, "index.npy"), np.asarray(index, dtype=np.int64).reshape(-1, 3))
    with open(os.path.join(out, "ids.json"), "w", encoding="utf-8") as f:
        json.dump(ids, f)
    meta = {"key": key, "format_version": FORMAT_VERSION, **inputs, "examples": len(ids), "tokens": offset,
            "files": {name: _file_digest(os.path.join(out, name)) for name in ("tokens.bin", "index.npy", "ids.json")}}
    with open(os.path.join(out, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)


def _file_digest(path) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return {"bytes": os.path.getsize(path), "sha256": h.hexdigest()}


def check(directory, key) -> str | None:
    """None if the cache at `directory` is complete and intact; else why it must be (re)built."""
    meta_path = os.path.join(directory, "meta.json")
    if not os.path.exists(meta_path):
        return "not built yet"
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("key") != key or meta.get("format_version") != FORMAT_VERSION:
            return "stale (its key does not match the data, tokenizer and options)"
        for name, expected in meta["files"].items():
            if _file_digest(os.path.join(directory, name)) != expected:
                return f"corrupt ({name} does not match meta.json)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable ({type(e).__name__}: {e})"
    return None


def main(argv=None):
    """Build (or check) the cache before a long run: python token_cache.py --data F --model DIR --kind pairs."""
    import argparse

    import training
    from cli import add_system_prompt_option, exit_on_input_error
    from data import load_tokenizer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="curated or bring-your-own JSON Lines file")
    p.add_argument("--model", required=True, help="model (or tokenizer) directory whose tokenizer and template to use")
    p.add_argument("--kind", required=True, choices=KINDS, help="sft examples or preference pairs")
    p.add_argument("--max-seq-len", type=int, default=None, help="as the training script's --max-seq-len")
    add_system_prompt_option(p, note=" (as the training script's: the cache is per system prompt)")
    args = p.parse_args(argv)
    training.setup_distributed("cpu")
    try:
        with exit_on_input_error("token_cache.py"):
            examples = load(args.data, load_tokenizer(args.model), args.kind, args.max_seq_len, args.system_prompt)
        print(f"{len(examples)} {args.kind} examples, {len(examples.tokens)} tokens in {examples.directory}")
    finally:
        training.cleanup()


if __name__ == "__main__":
    main()
