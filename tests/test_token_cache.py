"""token_cache: tokenized data as compact int32 arrays, built once (shared by the ranks), never stale."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import ROOT, torchrun, write_jsonl

from data import IGNORE_INDEX, load_pairs, load_sft_examples, load_tokenizer, tokenize_pairs, tokenize_sft

PROBE = "tests/helpers/cache_probe.py"
RACE = ROOT / "tests" / "helpers" / "token_cache_race.py"


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
    assert not [n for n in os.listdir(f"{data}.tokenized") if ".tmp-" in n or ".old-" in n]   # the bad one too


@pytest.mark.slow
def test_an_over_long_example_stops_every_rank_with_its_name(tmp_path, tiny_model_dir, pairs_file):
    """max_length too small while 2 ranks build: both exit non-zero naming the example, no hang."""
    from conftest import ROOT, run_script
    import sys

    data = tmp_path / "pairs.jsonl"
    shutil.copy(pairs_file, data)
    code = ("import sys; sys.path.insert(0, %r); import token_cache, training; from data import load_tokenizer, "
            "exit_on_input_error\nr, w, _ = training.setup_distributed('cpu')\n"
            "with exit_on_input_error(f'rank {r}'):\n    token_cache.load(%r, load_tokenizer(%r), 'pairs', 20)\n"
            % (str(ROOT), str(data), str(tiny_model_dir)))
    script = tmp_path / "over_long.py"
    script.write_text(code)
    proc = torchrun(2, script, check=False)
    assert proc.returncode != 0
    assert proc.stderr.count("exceed the maximum sequence length 20") >= 2


def _race(tmp_path, data, kind, model, jobs, nproc=1, lock=True, delay=1.5):
    """Start `jobs` jobs of `nproc` ranks each on `data` at one moment (see token_cache_race.py);
    returns each job's (exit code, stdout + stderr) and every rank's view, job by job."""
    go, env = tmp_path / "go", dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    launcher = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                                   if nproc > 1 else [])
    procs = []
    for j in range(jobs):
        log = open(tmp_path / f"job{j}.log", "w")
        procs.append(subprocess.Popen([*launcher, str(RACE), str(data), kind, str(model), str(tmp_path / f"job{j}"),
                                       str(go), "--delay", str(delay), *([] if lock else ["--no-lock"])],
                                      cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
        log.close()
    deadline = time.monotonic() + 120
    while (len(list(tmp_path.glob("go.ready-*"))) < jobs * nproc and time.monotonic() < deadline
           and all(p.poll() is None for p in procs)):
        time.sleep(0.02)
    go.touch()
    codes = [p.wait(timeout=120) for p in procs]
    logs = [(tmp_path / f"job{j}.log").read_text() for j in range(jobs)]
    views = [[json.loads((tmp_path / f"job{j}.rank{r}.json").read_text()) for r in range(nproc)]
             if code == 0 else None for j, code in enumerate(codes)]
    return list(zip(codes, logs)), views


def _cache_bytes(directory):
    return {name: open(os.path.join(directory, name), "rb").read() for name in ("tokens.bin", "index.npy", "ids.json")}


def _assert_one_clean_cache(views, data, reference):
    """Every rank of every job read the same verified cache, byte-equal to `reference`; nothing else is left."""
    import token_cache

    directory = views[0][0]["directory"]
    assert {view["directory"] for job in views for view in job} == {directory}
    assert token_cache.check(directory, os.path.basename(directory)) is None
    assert _cache_bytes(directory) == _cache_bytes(reference.directory)
    expected = [reference[i] for i in range(len(reference))]
    assert all(view["items"] == expected for job in views for view in job)
    left = sorted(os.listdir(f"{data}.tokenized"))
    assert [n for n in left if not n.endswith(".lock")] == [os.path.basename(directory)], left


def _single_process_build(tmp_path, source, tok, kind):
    import token_cache

    os.makedirs(tmp_path / "reference")
    data = shutil.copy(source, tmp_path / "reference" / os.path.basename(source))
    return token_cache.load(str(data), tok, kind, None)


@pytest.mark.slow
@pytest.mark.parametrize("jobs, lock", [(4, False), (2, True)], ids=["4-jobs-no-lock", "2-jobs-flock"])
def test_jobs_started_at_once_on_a_new_file_all_read_one_complete_cache(jobs, lock, single_rank, tmp_path, tiny_model_dir,
                                                                        pairs_file):
    """Jobs loading one new file at once all exit 0 and read one cache equal to a single-process build, no temp left:
    without a lock (as on NFS) all build and the first rename wins; with the flock one builds, the others wait."""
    data = shutil.copy(pairs_file, tmp_path / "pairs.jsonl")
    results, views = _race(tmp_path, data, "pairs", tiny_model_dir, jobs=jobs, lock=lock)
    assert [code for code, _ in results] == [0] * jobs, "\n".join(log[-3000:] for _, log in results)
    tok = load_tokenizer(str(tiny_model_dir))
    reference = _single_process_build(tmp_path, pairs_file, tok, "pairs")
    assert [reference[i] for i in range(len(reference))] == tokenize_pairs(tok, load_pairs(str(data)))
    _assert_one_clean_cache(views, data, reference)
    built = sum("building it with 1 rank(s)" in log for _, log in results)
    adopted = sum("another job published it first" in log for _, log in results)
    if lock:
        assert (built, adopted) == (1, 0)
        assert sum("another job is building it, waiting" in log for _, log in results) == jobs - 1
    else:
        assert built >= 2 and adopted == built - 1          # the race happened and every loser read the winner's


@pytest.mark.slow
def test_two_two_rank_torchrun_jobs_started_at_once_on_a_new_file_both_read_one_complete_cache(
        single_rank, tmp_path, tiny_model_dir, sft_file):
    """Two 2-rank torchrun jobs, no lock (as on NFS), build one new SFT file at once: both exit 0, every rank reads
    one cache equal to a single-process build, and no parts or temp dirs are left."""
    data = shutil.copy(sft_file, tmp_path / "sft.jsonl")
    results, views = _race(tmp_path, data, "sft", tiny_model_dir, jobs=2, nproc=2, lock=False)
    assert [code for code, _ in results] == [0, 0], "\n".join(log[-3000:] for _, log in results)
    reference = _single_process_build(tmp_path, sft_file, load_tokenizer(str(tiny_model_dir)), "sft")
    _assert_one_clean_cache(views, data, reference)
    assert sum("building it with 2 rank(s)" in log for _, log in results) == 2
    assert sum("another job published it first" in log for _, log in results) == 1


def test_a_job_that_loses_the_publish_race_leaves_the_published_cache_alone(single_rank, tmp_path, tiny_model_dir,
                                                                           pairs_file):
    """publish onto a verified cache (which other jobs may be reading) neither deletes nor replaces it: it says so."""
    import token_cache

    data = shutil.copy(pairs_file, tmp_path / "pairs.jsonl")
    published = token_cache.load(str(data), load_tokenizer(str(tiny_model_dir)), "pairs", None)
    built = shutil.copytree(published.directory, tmp_path / "built")
    before = {n: os.stat(os.path.join(published.directory, n)).st_ino for n in os.listdir(published.directory)}
    note = token_cache.publish(str(built), published.directory, os.path.basename(published.directory))
    assert "another job published it first" in note
    assert {n: os.stat(os.path.join(published.directory, n)).st_ino for n in before} == before
    assert os.path.isdir(built)                                     # the caller removes its own work dir


def test_a_killed_jobs_temp_dir_is_swept_once_stale_and_a_live_jobs_is_left_alone(single_rank, tmp_path,
                                                                                  tiny_model_dir, pairs_file):
    """Temp dirs of other jobs do not disturb a build; one untouched for STALE_S is removed, a fresh one is kept."""
    import token_cache

    data = shutil.copy(pairs_file, tmp_path / "pairs.jsonl")
    tok = load_tokenizer(str(tiny_model_dir))
    key = token_cache.cache_key(str(data), tok, "pairs", None)
    dead, live = (tmp_path / "pairs.jsonl.tokenized" / f".{key}.tmp-{who}" for who in ("dead", "live"))
    for work in (dead, live):
        os.makedirs(work / "cache")
        (work / "part-0.bin").write_bytes(b"\0" * 8)
    long_ago = time.time() - token_cache.STALE_S - 60
    for path in (dead, dead / "cache", dead / "part-0.bin"):
        os.utime(path, (long_ago, long_ago))
    examples = token_cache.load(str(data), tok, "pairs", None)
    assert token_cache.check(examples.directory, key) is None
    assert not dead.exists() and live.exists()


@pytest.fixture
def single_rank(monkeypatch):
    import torch.distributed as dist

    import training

    for k in ("RANK", "MASTER_ADDR"):
        monkeypatch.delenv(k, raising=False)
    yield training.setup_distributed("cpu")
    dist.destroy_process_group()
