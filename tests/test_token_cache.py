"""token_cache: tokenized data as compact int32 arrays, built once (shared by the ranks), never stale."""
import json
import os
import shutil

import pytest

from conftest import torchrun, write_jsonl

from data import IGNORE_INDEX, load_pairs, load_sft_examples, load_tokenizer, tokenize_pairs, tokenize_sft

PROBE = "tests/helpers/cache_probe.py"


def _probe(tmp_path, nproc, data, kind, model, check=True):
    out = tmp_path / f"probe-{nproc}-{kind}.json"
    proc = torchrun(nproc, PROBE, data, kind, model, out, check=check)
    return proc, [json.loads((tmp_path / f"probe-{nproc}-{kind}.json.rank{r}").read_text())
                  for r in range(nproc)] if proc.returncode == 0 else None


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pairs", "sft"])
def test_two_ranks_build_a_cache_that_equals_tokenizing_in_memory(kind, tmp_path, tiny_model_dir, pairs_file, sft_file):
    """Built by 2 ranks (each tokenizes half, rank 0 merges): every item, length and count equals the in-memory path."""
    data = tmp_path / f"{kind}.jsonl"
    shutil.copy(pairs_file if kind == "pairs" else sft_file, data)
    tok = load_tokenizer(str(tiny_model_dir))
    expected = tokenize_pairs(tok, load_pairs(str(data))) if kind == "pairs" else tokenize_sft(tok, load_sft_examples(str(data)))
    proc, seen = _probe(tmp_path, 2, data, kind, tiny_model_dir)
    assert "building it with 2 rank(s)" in proc.stdout
    for rank_view in seen:
        assert rank_view["items"] == expected
        sequences = [[e] for e in expected] if kind == "sft" else [[e["chosen"], e["rejected"]] for e in expected]
        assert rank_view["lengths"] == [sum(len(s["input_ids"]) for s in seqs) for seqs in sequences]
        assert rank_view["supervised"] == [sum(t != IGNORE_INDEX for t in seqs[0]["labels"][1:]) for seqs in sequences]
    directory = seen[0]["directory"]
    meta = json.loads(open(os.path.join(directory, "meta.json")).read())
    assert os.path.getsize(os.path.join(directory, "tokens.bin")) == 4 * meta["tokens"]     # int32 ids, no labels
    proc, again = _probe(tmp_path, 2, data, kind, tiny_model_dir)
    assert "building" not in proc.stdout and again[0]["items"] == expected                   # read, not rebuilt


def test_a_changed_input_is_a_new_key_and_a_corrupt_cache_is_rebuilt(single_rank, tmp_path, tiny_model_dir, pairs_file,
                                                                       capsys):
    """Editing the data or changing max_length gives a new cache dir; a truncated or edited cache file is rebuilt."""
    import token_cache

    data = tmp_path / "pairs.jsonl"
    shutil.copy(pairs_file, data)
    tok = load_tokenizer(str(tiny_model_dir))
    first = token_cache.load(str(data), tok, "pairs", None)
    assert token_cache.load(str(data), tok, "pairs", 4096).directory != first.directory
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    write_jsonl(data, rows[:-1])
    assert token_cache.load(str(data), tok, "pairs", None).directory != first.directory
    shutil.copy(pairs_file, data)
    capsys.readouterr()
    tokens = os.path.join(first.directory, "tokens.bin")
    with open(tokens, "r+b") as f:
        f.truncate(os.path.getsize(tokens) - 4)
    rebuilt = token_cache.load(str(data), tok, "pairs", None)
    assert "corrupt (tokens.bin does not match meta.json)" in capsys.readouterr().out
    assert rebuilt.directory == first.directory
    assert [rebuilt[i] for i in range(len(rebuilt))] == tokenize_pairs(tok, load_pairs(str(data)))
    with open(os.path.join(first.directory, "ids.json"), "w") as f:
        json.dump(["edited"] * len(rebuilt), f)
    token_cache.load(str(data), tok, "pairs", None)
    assert "corrupt (ids.json does not match meta.json)" in capsys.readouterr().out


@pytest.mark.slow
def test_an_over_long_example_stops_every_rank_with_its_name(tmp_path, tiny_model_dir, pairs_file):
    """max_length too small while 2 ranks build: both exit non-zero naming the example, no hang."""
    from conftest import ROOT, run_script
    import sys

    data = tmp_path / "pairs.jsonl"
    shutil.copy(pairs_file, data)
    code = ("import sys; sys.path.insert(0, %r); import token_cache, train_sft; from data import load_tokenizer, "
            "exit_on_input_error\nr, w, _ = train_sft.setup_distributed('cpu')\n"
            "with exit_on_input_error(f'rank {r}'):\n    token_cache.load(%r, load_tokenizer(%r), 'pairs', 20)\n"
            % (str(ROOT), str(data), str(tiny_model_dir)))
    script = tmp_path / "over_long.py"
    script.write_text(code)
    proc = torchrun(2, script, check=False)
    assert proc.returncode != 0
    assert proc.stderr.count("exceed the maximum sequence length 20") >= 2


@pytest.fixture
def single_rank(monkeypatch):
    import torch.distributed as dist

    import train_sft

    for k in ("RANK", "MASTER_ADDR"):
        monkeypatch.delenv(k, raising=False)
    yield train_sft.setup_distributed("cpu")
    dist.destroy_process_group()
