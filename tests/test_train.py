"""train_sft.py and train_redi.py on CPU: correctness of the global batch, FSDP, resume, guards."""
import json
import math
import os
import shutil
import sys

import pytest
import torch

from conftest import torchrun

import run_safety
import train_sft
import training

COMMON = ["--no-progress", "--seed", "3"]


def read_metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    return lines[0], [r for r in lines[1:] if "step" in r]


def worker_stderr(stderr: str) -> str:
    """The ranks' own stderr: torchrun's launcher appends a ChildFailedError report (with the launcher's
    traceback) when a worker exits non-zero; that part is cut off."""
    cut = stderr.find("torch/distributed/elastic/multiprocessing/api.py")
    return stderr if cut < 0 else stderr[:cut]


def load_state_dict(model_dir):
    from safetensors.torch import load_file

    return load_file(os.path.join(model_dir, "model.safetensors"))


# ----------------------------------------------------------------------------- pure pieces


def test_lr_schedule_warmup_then_linear_decay_to_zero():
    """10 steps, warmup 0.2: 0.5, 1.0 x peak, then peak * (10 - s) / 8 down to 1/8 at the last step."""
    lrs = [training.lr_at(s, 10, 1.0, 0.2) for s in range(10)]
    assert lrs[:2] == [0.5, 1.0]
    assert lrs[2:] == pytest.approx([(10 - s) / 8 for s in range(2, 10)])
    assert training.lr_at(10, 10, 1.0, 0.2) == 0.0
    assert training.lr_at(0, 10, 3e-4, 0.0) == 3e-4 * 10 / 10


def test_accumulation_must_divide_with_a_message_naming_the_numbers():
    """global 8 on 2 ranks with micro-batch 3: the error shows 8 / (2 x 3)."""
    from data import BatchOrder

    with pytest.raises(ValueError, match=r"8 / \(2 x 3\)"):
        BatchOrder([5] * 20, global_batch=8, world_size=2, rank=0, seed=0, micro_batch_size=3)


def test_redi_per_loss_paper_defaults_and_validation():
    """--loss picks the paper's lr/alpha/beta/gamma unless overridden; bad combinations are refused."""
    import train_redi

    base = ["--model", "m", "--data", "d", "--output-dir", "o"]
    a = train_redi.parse_args(base)
    assert (a.loss, a.lr, a.alpha, a.global_batch_size, a.epochs) == ("redi", 1e-6, 0.8, 32, 1)
    d = train_redi.parse_args(base + ["--loss", "dpo"])
    assert (d.lr, d.beta) == (2e-7, 0.001)
    s = train_redi.parse_args(base + ["--loss", "simpo", "--lr", "1e-5"])
    assert (s.lr, s.beta, s.gamma) == (1e-5, 2.0, 1.0)
    with pytest.raises(SystemExit):
        train_redi.parse_args(base + ["--loss", "redi", "--precompute-ref"])
    with pytest.raises(SystemExit):
        train_redi.parse_args(base + ["--alpha", "1.5"])
    sft = train_sft.parse_args(base)
    assert (sft.lr, sft.global_batch_size, sft.epochs) == (5e-5, 128, 3)


# ----------------------------------------------------------------------------- global batch equivalence


def _probe(tmp_path, nproc, stage, model, data, extra, timeout=300):
    out = tmp_path / f"probe-{stage}-{nproc}-{'-'.join(extra)}.pt"
    torchrun(nproc, "tests/helpers/grad_probe.py", out, stage, "--model", model, "--data", data,
             "--output-dir", tmp_path / "unused", *COMMON, *extra, timeout=timeout)
    return torch.load(out)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "redi"])
def test_global_batch_equivalence_across_ranks_and_accumulation(stage, tmp_path, tiny_model_dir, sft_file, pairs_file):
    """(1 rank, accum 8) == (2 ranks, accum 4) == (1 rank, micro-batch 8): same loss and gradients."""
    data = sft_file if stage == "sft" else pairs_file
    runs = [(1, ["--global-batch-size", "8", "--micro-batch-size", "1"]),
            (2, ["--global-batch-size", "8", "--micro-batch-size", "1"]),
            (1, ["--global-batch-size", "8", "--micro-batch-size", "8"])]
    results = [_probe(tmp_path, n, stage, tiny_model_dir, data, extra + ["--lr", "1e-3"]) for n, extra in runs]
    assert [r["micro_batches"] for r in results] == [8, 4, 1]
    ref = results[0]
    for other in results[1:]:
        assert other["loss"] == pytest.approx(ref["loss"], rel=1e-5)
        assert other["grads"].keys() == ref["grads"].keys()
        for name, g in ref["grads"].items():
            torch.testing.assert_close(other["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)
    assert all(g.abs().sum() > 0 for g in ref["grads"].values())


@pytest.mark.slow
@pytest.mark.parametrize("script,extra", [("train_sft", []), ("train_redi", ["--loss", "dpo"])])
def test_one_rank_gathers_once_per_step_and_trains_bitwise_like_copies_per_micro_batch(
        script, extra, tmp_path, tiny_model_dir, sft_file, pairs_file):
    """training.sync_gradients on one rank (one gather and one reduce-scatter per step) against the copies per
    micro-batch it replaces (tests/helpers/copies_per_micro_batch.py): 3 steps of 4 micro-batches, the exported
    weights equal to the byte and every step's loss and grad norm equal. DPO also runs its frozen reference."""
    data = sft_file if script == "train_sft" else pairs_file
    args = ["--data", data, *COMMON, "--model", tiny_model_dir, "--global-batch-size", "8", "--micro-batch-size", "2",
            "--max-steps", "3", "--epochs", "3", "--lr", "1e-3", *extra]
    torchrun(1, f"{script}.py", "--output-dir", tmp_path / "once", *args)
    torchrun(1, "tests/helpers/copies_per_micro_batch.py", script, "--output-dir", tmp_path / "copies", *args)
    steps = {run: [(m["loss"], m["optim/grad_norm"]) for m in read_metrics(tmp_path / run)[1]]
             for run in ("once", "copies")}
    assert len(steps["once"]) == 3 and steps["once"] == steps["copies"]
    assert steps["once"][0] != steps["once"][2]          # it trained
    weights = {run: (tmp_path / run / "final" / "model.safetensors").read_bytes() for run in ("once", "copies")}
    assert weights["once"] == weights["copies"]


@pytest.mark.slow
def test_the_same_run_twice_writes_the_same_checkpoint_bytes(tmp_path, tiny_model_dir, pairs_file):
    """Two identical 2-step runs: every checkpoint file byte-identical (RNG states included: numpy's is seeded
    too), except trainer_state.json, whose only differences are the output dir and the elapsed time, and
    DCP's index train_state/.metadata (its writer records the directory and a random save id)."""
    for run in ("a", "b"):
        torchrun(2, "train_redi.py", "--model", tiny_model_dir, "--data", pairs_file, "--output-dir", tmp_path / run,
                 *COMMON, "--global-batch-size", "4", "--max-steps", "2", "--lr", "1e-3")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a" / "final").rglob("*")
                   if p.is_file() and p.name != ".metadata")
    assert {"rng-rank1.pt", "model.safetensors", "__1_0.distcp"} <= {f.name for f in files}
    for f in files:
        a, b = (tmp_path / "a" / f).read_bytes(), (tmp_path / "b" / f).read_bytes()
        if f.name == "trainer_state.json":
            a, b = (json.loads(x) for x in (a, b))
            for state in (a, b):
                state.pop("elapsed_s")
                state["args"].pop("output_dir")
        assert a == b, f


@pytest.mark.slow
def test_packed_layout_gives_the_same_step(tmp_path, tiny_model_dir, pairs_file):
    """Padding-free packed micro-batches: same pair loss and gradients as the padded layout."""
    extra = ["--global-batch-size", "4", "--micro-batch-size", "2", "--lr", "1e-3"]
    padded = _probe(tmp_path, 1, "redi", tiny_model_dir, pairs_file, extra + ["--layout", "padded"])
    packed = _probe(tmp_path, 1, "redi", tiny_model_dir, pairs_file, extra + ["--layout", "packed"])
    assert packed["loss"] == pytest.approx(padded["loss"], rel=1e-5)
    for name, g in padded["grads"].items():
        torch.testing.assert_close(packed["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)


def _uneven_pairs(path, repeats):
    """Pairs whose chosen trace repeats a sentence `repeats[i]` times (one long pair among short ones)."""
    from conftest import write_jsonl

    rows = []
    for i, k in enumerate(repeats):
        a, b = 11 + i, 20 + i
        chosen = f"<think>\n{a}+{b}={a + b}." + " Let me double check." * k + \
            f"\n</think>\n\nThe answer is $\\boxed{{{a + b}}}$."
        rejected = f"<think>\n{a}+{b}={a + b + 1}.\n</think>\n\nThe answer is $\\boxed{{{a + b + 1}}}$."
        rows.append({"id": f"pair/{i}", "prompt": [{"role": "user", "content": f"What is {a}+{b}?"}],
                     "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": rejected}]})
    return write_jsonl(path, rows)


@pytest.mark.slow
def test_packed_without_varlen_on_ranks_with_unequal_sequence_counts_finishes_with_the_same_step(
        tmp_path, tiny_model_dir):
    """2 ranks, packed (one decoder call per sequence), micro-batches of [1, 3] vs [2, 2] pairs: no hang, same step."""
    from transformers import AutoTokenizer
    from data import BatchOrder, load_pairs, example_tokens, tokenize_pairs

    data = _uneven_pairs(tmp_path / "pairs.jsonl", [64] + [0] * 7)
    lengths = [example_tokens(p) for p in tokenize_pairs(AutoTokenizer.from_pretrained(tiny_model_dir), load_pairs(data))]
    budget = max(lengths)
    per_rank = [[len(mb) for mb in BatchOrder(lengths, 8, 2, r, 3, max_tokens=budget, balance=True).micro_batches(0, 0)]
                for r in range(2)]
    assert per_rank == [[1, 3], [2, 2]]           # the fixture provokes unequal decoder-call counts
    padded = _probe(tmp_path, 1, "redi", tiny_model_dir, data,
                    ["--global-batch-size", "8", "--micro-batch-size", "8", "--lr", "1e-3", "--layout", "padded"])
    packed = _probe(tmp_path, 2, "redi", tiny_model_dir, data,
                    ["--global-batch-size", "8", "--max-tokens-per-micro-batch", str(budget), "--lr", "1e-3",
                     "--layout", "packed", "--attn-implementation", "sdpa"], timeout=120)
    assert packed["loss"] == pytest.approx(padded["loss"], rel=1e-5)
    for name, g in padded["grads"].items():
        torch.testing.assert_close(packed["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)


# ----------------------------------------------------------------------------- full runs


def _train(tmp_path, nproc, script, name, model, data, *extra, check=True):
    out = tmp_path / name
    proc = torchrun(nproc, script, "--model", model, "--data", data, "--output-dir", out, *COMMON, *extra,
                    check=check)
    return out, proc


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["redi", "dpo", "simpo", "sft"])
def test_each_stage2_loss_trains_three_steps_and_changes_every_parameter(loss, tmp_path, tiny_model_dir, pairs_file):
    """2 ranks, 3 steps: every tensor of the exported model differs from the start; metrics keys present."""
    out, _ = _train(tmp_path, 2, "train_redi.py", loss, tiny_model_dir, pairs_file, "--loss", loss,
                    "--global-batch-size", "4", "--max-steps", "3", "--lr", "1e-3")
    header, steps = read_metrics(out)
    assert header["args"]["loss"] == loss and header["world_size"] == 2 and "torch" in header["versions"]
    assert [r["step"] for r in steps] == [1, 2, 3]
    expected = {"step", "epoch", "lr", "loss", "optim/grad_norm", "optim/update_norm", "data/tokens",
                "perf/tokens_per_s", "perf/peak_mem_gb", "perf/step_time_s", "perf/elapsed_s", "logps/chosen",
                "logps/rejected", "logps/margin", "logps/accuracy", "data/pairs", "logps/collapse_warning"}
    assert expected <= steps[0].keys()
    assert all(math.isfinite(r["loss"]) and r["optim/update_norm"] > 0 and r["data/pairs"] == 4 for r in steps)
    if loss == "dpo":
        assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)      # reference == policy at step 0
        assert {"rewards/chosen", "rewards/rejected", "rewards/accuracy"} <= steps[0].keys()
    before, after = load_state_dict(tiny_model_dir), load_state_dict(out / "final")
    assert before.keys() == after.keys()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, unchanged


@pytest.mark.slow
def test_sft_two_ranks_uneven_data_full_epoch_and_export_reloads(tmp_path, tiny_model_dir, sft_file):
    """13 examples, batch 4, 2 ranks: 4 steps (last one of 1 example), export reloads with equal log-probs."""
    out, _ = _train(tmp_path, 2, "train_sft.py", "sft", tiny_model_dir, sft_file, "--global-batch-size", "4",
                    "--micro-batch-size", "1", "--epochs", "1", "--lr", "1e-3", "--save-every", "2",
                    "--max-position-embeddings", "4096", "--rope-theta", "300000")
    header, steps = read_metrics(out)
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert sum(r["data/response_tokens"] for r in steps) == _total_response_tokens(tiny_model_dir, sft_file)
    assert sorted(os.listdir(out / "checkpoints")) == ["latest", "step-0000002", "step-0000004"]
    assert os.readlink(out / "final") == os.path.join("checkpoints", "step-0000004")
    # The overrides are persisted into the exported config, and the export reloads.
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    config = AutoConfig.from_pretrained(out / "final")
    assert config.max_position_embeddings == 4096
    rope = getattr(config, "rope_parameters", None) or {"rope_theta": config.rope_theta}
    assert rope["rope_theta"] == 300000
    # transformers 4.x reads only the top-level key (5.x writes theta inside rope_parameters alone).
    raw = json.loads((out / "final" / "config.json").read_text())
    assert raw["rope_theta"] == 300000 and raw["max_position_embeddings"] == 4096
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    assert AutoTokenizer.from_pretrained(out / "final").chat_template
    assert model.generation_config.eos_token_id is not None


def _total_response_tokens(model_dir, path):
    from transformers import AutoTokenizer
    from data import load_sft_examples, tokenize_sft

    tok = AutoTokenizer.from_pretrained(model_dir)
    return sum(sum(t != -100 for t in e["labels"]) for e in tokenize_sft(tok, load_sft_examples(path)))


@pytest.mark.slow
def test_resume_continues_bitwise_identically(tmp_path, tiny_model_dir, pairs_file):
    """Run 6 steps (crossing an epoch) saving at 3; restart from step 3: steps 4-6 are bitwise identical.

    The resumed run must really resume: it says so, its metrics header records step 3, steps 1-3
    are not recomputed (their lines, marked here, survive), and a last line cut short by the kill
    is repaired rather than crashing the resume."""
    args = ["--loss", "redi", "--global-batch-size", "4", "--micro-batch-size", "1", "--max-steps", "6", "--epochs", "2",
            "--lr", "1e-3", "--save-every", "3"]
    full, _ = _train(tmp_path, 2, "train_redi.py", "full", tiny_model_dir, pairs_file, *args)
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed, symlinks=True)
    shutil.rmtree(resumed / "checkpoints" / "step-0000006")
    (resumed / "checkpoints" / "latest").write_text("step-0000003")      # as if killed after step 3 ...
    lines = (resumed / "metrics.jsonl").read_text().splitlines()
    marked = [json.dumps({**json.loads(line), "marker": "before the kill"}) for line in lines[1:4]]
    # ... while writing step 4's line: keep steps 1-3 (marked) and half of line 4
    (resumed / "metrics.jsonl").write_text("\n".join([lines[0], *marked, lines[4][:25]]))
    proc = torchrun(2, "train_redi.py", "--model", tiny_model_dir, "--data", pairs_file, "--output-dir", resumed,
                    *COMMON, *args, "--resume")
    assert "at step 3" in proc.stdout and "dropped a cut-short last line" in proc.stdout
    _, a = read_metrics(full)
    _, b = read_metrics(resumed)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert [r.get("marker") for r in b] == ["before the kill"] * 3 + [None] * 3      # 1-3 not recomputed
    headers = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines() if '"args"' in line]
    assert [h["resumed_from_step"] for h in headers] == [None, 3]
    for key in ("loss", "optim/grad_norm", "optim/update_norm", "logps/chosen", "logps/rejected", "lr"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    sa, sb = load_state_dict(full / "final"), load_state_dict(resumed / "final")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def _faulty(tmp_path, fault, name, model, data, *extra, check=True):
    """2-rank train_sft.py with one fault injected by tests/helpers/fault_run.py (monkeypatching)."""
    out = tmp_path / name
    proc = torchrun(2, "tests/helpers/fault_run.py", fault, "train_sft", "--model", model, "--data", data,
                    "--output-dir", out, *COMMON, *extra, check=check)
    return out, proc


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["nan", "inf", "nan-grad"])
def test_nonfinite_on_rank1_stops_both_ranks_cleanly_after_saving(kind, tmp_path, tiny_model_dir, sft_file):
    """A NaN/inf loss, or NaN only in the gradients, on rank 1 at step 2: both ranks exit 3 naming step 2,
    no update is applied, and the saved state (the last finite one) is finite."""
    out, proc = _faulty(tmp_path, f"{kind}:2:1", kind, tiny_model_dir, sft_file, "--global-batch-size", "4",
                        "--max-steps", "5", "--lr", "1e-3", check=False)
    assert proc.returncode != 0
    assert proc.stderr.count("stopped: non-finite") == 2 and "at step 2" in proc.stderr
    if kind == "nan-grad":
        assert "non-finite loss (" in proc.stderr and "gradient norm (nan)" in proc.stderr
    _, steps = read_metrics(out)
    assert [r["step"] for r in steps] == [1, 2]
    saved = json.loads((out / "checkpoints" / "step-0000002" / "trainer_state.json").read_text())
    assert "non-finite" in saved["stopped"]
    weights = load_state_dict(out / "final")
    assert all(torch.isfinite(w).all() for w in weights.values())


@pytest.mark.slow
@pytest.mark.parametrize("kind,at_step", [("nan-grad", 1), ("inf", 2)])
def test_skip_mode_on_two_ranks_applies_no_update_anywhere_and_still_exports(kind, at_step, tmp_path, tiny_model_dir,
                                                                             sft_file):
    """--on-nonfinite skip, fault on rank 1: that step is logged as skipped, the weights saved before and after
    it are identical (no rank stepped), the other steps train, and a skip at the LAST step still exports."""
    out, _ = _faulty(tmp_path, f"{kind}:{at_step}:1", "skip", tiny_model_dir, sft_file, "--global-batch-size", "4",
                     "--max-steps", "3", "--lr", "1e-3", "--save-every", "1", "--on-nonfinite", "skip")
    _, steps = read_metrics(out)
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert [bool(r.get("optim/skipped")) for r in steps] == [s == at_step for s in range(3)]
    assert all(r["optim/update_norm"] > 0 for r in steps if not r.get("optim/skipped"))
    ckpt = {s: load_state_dict(out / "checkpoints" / f"step-{s:07d}") for s in (1, 2, 3)}
    ckpt[0] = load_state_dict(tiny_model_dir)
    skipped_before, skipped_after = ckpt[at_step], ckpt[at_step + 1]
    assert all(torch.equal(skipped_before[k], skipped_after[k]) for k in skipped_before)
    assert not all(torch.equal(ckpt[0][k], ckpt[1][k]) for k in ckpt[0])          # step 0 trained
    assert os.path.realpath(out / "final") == os.path.realpath(out / "checkpoints" / "step-0000003")
    assert all(torch.isfinite(w).all() for w in ckpt[3].values())


@pytest.mark.slow
def test_a_failed_save_on_rank0_stops_both_ranks_and_keeps_the_previous_checkpoint(tmp_path, tiny_model_dir, sft_file):
    """Disk full while rank 0 writes step 2's checkpoint: both ranks stop with one clear line (exit 4, no
    waiting for the process-group timeout), `latest` stays step 1, which still resumes."""
    args = ["--global-batch-size", "4", "--max-steps", "3", "--lr", "1e-3", "--save-every", "1"]
    out, proc = _faulty(tmp_path, "save-error:2:0", "full", tiny_model_dir, sft_file, *args, check=False)
    assert proc.returncode != 0
    assert proc.stderr.count("saving checkpoint step-0000002 (model export) failed") == 2
    assert "No space left on device" in proc.stderr and "Traceback" not in worker_stderr(proc.stderr)
    assert (out / "checkpoints" / "latest").read_text() == "step-0000001"
    assert not (out / "checkpoints" / "step-0000002").exists()
    proc = torchrun(2, "train_sft.py", "--model", tiny_model_dir, "--data", sft_file, "--output-dir", out,
                    *COMMON, *args, "--resume")
    assert "at step 1" in proc.stdout
    assert (out / "checkpoints" / "latest").read_text() == "step-0000003"


@pytest.mark.slow
def test_bad_model_dir_stops_every_rank_before_compute_without_a_traceback(tmp_path, sft_file):
    """--model pointing nowhere: each of 2 ranks prints one clear line and exits non-zero; no hang."""
    out, proc = _train(tmp_path, 2, "train_sft.py", "bad", tmp_path / "no-such-model", sft_file, check=False)
    assert proc.returncode != 0
    assert proc.stderr.count("error: --model") == 2 and "no such directory" in proc.stderr
    assert "Traceback" not in worker_stderr(proc.stderr)


def _two_node_run(out, model, data, *args):
    """torchrun --nnodes 2 --nproc_per_node 1 with a c10d rendezvous on localhost: two launchers, as two nodes."""
    import socket
    import subprocess

    from conftest import ROOT

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"test-{port}",
           str(ROOT / "train_redi.py"), "--model", str(model), "--data", str(data), "--output-dir", str(out),
           *COMMON, *args]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    nodes = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    logs = [node.communicate(timeout=240)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), "\n".join(log[-3000:] for log in logs)
    return logs


@pytest.mark.slow
def test_two_nodes_train_checkpoint_resume_and_equal_the_one_node_run(tmp_path, tiny_model_dir, pairs_file):
    """2 nodes x 1 rank (c10d rendezvous) train 4 steps and checkpoint; killed after step 2 they resume on 2 nodes;
    losses, LogPS and final weights equal those of 1 node x 2 ranks."""
    args = ["--loss", "redi", "--global-batch-size", "4", "--max-steps", "4", "--lr", "1e-3", "--save-every", "2"]
    one_node, _ = _train(tmp_path, 2, "train_redi.py", "one-node", tiny_model_dir, pairs_file, *args)
    two_nodes = tmp_path / "two-nodes"
    _two_node_run(two_nodes, tiny_model_dir, pairs_file, *args)
    resumed = tmp_path / "two-nodes-resumed"
    shutil.copytree(two_nodes, resumed, symlinks=True)
    shutil.rmtree(resumed / "checkpoints" / "step-0000004")
    (resumed / "checkpoints" / "latest").write_text("step-0000002")
    logs = _two_node_run(resumed, tiny_model_dir, pairs_file, *args, "--resume")
    assert any("at step 2" in log for log in logs)
    _, reference = read_metrics(one_node)
    header, _ = read_metrics(two_nodes)
    assert header["world_size"] == 2
    for run in (two_nodes, resumed):
        _, steps = read_metrics(run)
        for key in ("loss", "optim/grad_norm", "logps/chosen", "logps/rejected"):
            assert [r[key] for r in steps] == pytest.approx([r[key] for r in reference], rel=1e-6), (run, key)
        a, b = load_state_dict(one_node / "final"), load_state_dict(run / "final")
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-6, atol=1e-7, msg=k)


# ----------------------------------------------------------------------------- in-process checkpoint checks


def _in_process_model(tiny_model_dir, tmp_path, extra=()):
    args = train_sft.parse_args(["--model", str(tiny_model_dir), "--data", "unused", "--output-dir",
                                 str(tmp_path / "out"), "--no-progress", *extra])
    device = torch.device("cpu")
    model, lm = training.load_model(args.model, args, device)
    return args, model, lm, training.build_optimizer(model, args), training.load_tokenizer(args.model)


def _one_step(model, optimizer, batch):
    sums, counts = model(**batch)
    (-(sums.sum() / counts.sum())).backward()
    optimizer.step()
    optimizer.zero_grad()


def _batch(tokenizer):
    from data import collate, tokenize_example

    examples = [tokenize_example(tokenizer, [{"role": "user", "content": f"q{i}"}], f"<think>\nr {i}\n</think>\n\n{i}", f"e{i}")
                for i in range(3)]
    return collate(examples, tokenizer.pad_token_id)


@pytest.mark.slow
def test_crash_mid_save_keeps_the_last_good_checkpoint(single_rank_group, tiny_model_dir, tmp_path, monkeypatch):
    """An exception while writing step 2 leaves `latest` = step 1, intact and resumable."""
    args, model, lm, optimizer, tok = _in_process_model(tiny_model_dir, tmp_path)
    batch = _batch(tok)
    _one_step(model, optimizer, batch)
    good = training.save_checkpoint(args.output_dir, 1, model, lm, optimizer, tok, args)
    _one_step(model, optimizer, batch)

    def crash(*a, **k):
        raise OSError("disk full (simulated)")
    monkeypatch.setattr(tok, "save_pretrained", crash)
    with pytest.raises(run_safety.CheckpointError, match=r"rank 0: OSError: disk full \(simulated\)"):
        training.save_checkpoint(args.output_dir, 2, model, lm, optimizer, tok, args)
    ckpts = tmp_path / "out" / "checkpoints"
    assert (ckpts / "latest").read_text() == "step-0000001"
    assert not (ckpts / "step-0000002").exists()
    assert os.path.realpath(tmp_path / "out" / "final") == os.path.realpath(good)
    state = training.load_checkpoint(good, model, optimizer)
    assert state["step"] == 1


def test_resaving_a_step_keeps_latest_on_a_complete_checkpoint_at_every_moment(single_rank_group, tiny_model_dir,
                                                                               tmp_path, monkeypatch):
    """Saving step 1 again: at every write of `latest` the directory it names exists and holds a checkpoint;
    a crash between moving the old copy aside and installing the new one leaves `latest` resumable."""
    args, model, lm, optimizer, tok = _in_process_model(tiny_model_dir, tmp_path)
    _one_step(model, optimizer, _batch(tok))
    training.save_checkpoint(args.output_dir, 1, model, lm, optimizer, tok, args)
    ckpts = tmp_path / "out" / "checkpoints"
    named, write = [], run_safety.atomic_write

    def checked_write(path, text):
        write(path, text)
        if os.path.basename(path) == "latest":
            named.append((text, (ckpts / text / "trainer_state.json").is_file()))
    monkeypatch.setattr(run_safety, "atomic_write", checked_write)
    training.save_checkpoint(args.output_dir, 1, model, lm, optimizer, tok, args)
    assert named == [(".replaced-step-0000001", True), ("step-0000001", True)]
    replace = os.replace

    def crash_on_install(src, dst):
        if os.path.basename(src).startswith(".tmp-"):
            raise OSError(28, "No space left on device (simulated)")
        replace(src, dst)
    monkeypatch.setattr(os, "replace", crash_on_install)
    with pytest.raises(run_safety.CheckpointError, match="finalising"):
        training.save_checkpoint(args.output_dir, 1, model, lm, optimizer, tok, args)
    monkeypatch.setattr(os, "replace", replace)
    args.resume = "latest"
    assert training.load_checkpoint(training.resolve_resume(args), model, optimizer)["step"] == 1


def _preflight(args):
    run_safety.preflight(args, training.load_config, training.model_class)


def _preflight_args(tmp_path, model, *extra):
    return train_sft.parse_args(["--model", str(model), "--data", "unused", "--output-dir", str(tmp_path / "out"),
                                 *extra])


def test_preflight_names_each_problem_before_any_compute(single_rank_group, tiny_model_dir, tmp_path, monkeypatch):
    """Missing model dir, no config, no chat template, --max-seq-len beyond the context, an output dir that
    cannot be created, too little disk for one checkpoint: each is an InputError naming the option."""
    from cli import InputError

    cases = []
    cases.append((_preflight_args(tmp_path, tmp_path / "missing"), r"--model .*missing: no such directory"))
    (tmp_path / "empty").mkdir()
    cases.append((_preflight_args(tmp_path, tmp_path / "empty"), r"--model .*empty: no config.json"))
    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare)
    for name in ("chat_template.jinja", "chat_template.json"):
        if (bare / name).exists():
            (bare / name).unlink()
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    cases.append((_preflight_args(tmp_path, bare), r"the tokenizer has no chat template"))
    cases.append((_preflight_args(tmp_path, tiny_model_dir, "--max-seq-len", "1000000"),
                  r"--max-seq-len 1000000 exceeds the model's context \d+"))
    (tmp_path / "a-file").write_text("")
    args = _preflight_args(tmp_path, tiny_model_dir)
    args.output_dir = str(tmp_path / "a-file" / "out")
    cases.append((args, r"--output-dir .*a-file/out: not writable"))
    for args, message in cases:
        with pytest.raises(InputError, match=message):
            _preflight(args)
    _preflight(_preflight_args(tmp_path, tiny_model_dir))                 # all fine: no error
    need = run_safety.checkpoint_bytes(training.load_config(str(tiny_model_dir), _preflight_args(tmp_path, tiny_model_dir)))
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 * need, 10 * need, need - 1))
    with pytest.raises(InputError, match=r"GiB free, one checkpoint needs about"):
        _preflight(_preflight_args(tmp_path, tiny_model_dir))


@pytest.mark.slow
def test_exported_model_reloads_with_the_same_log_probs(single_rank_group, tiny_model_dir, tmp_path):
    """AutoModelForCausalLM on the export gives the FSDP model's per-sequence log-probs (and logits agree)."""
    from transformers import AutoModelForCausalLM

    from redi_loss import sequence_logps
    args, model, lm, optimizer, tok = _in_process_model(tiny_model_dir, tmp_path)
    batch = _batch(tok)
    _one_step(model, optimizer, batch)
    path = training.save_checkpoint(args.output_dir, 1, model, lm, optimizer, tok, args, with_state=False)
    with torch.no_grad():
        fsdp_sums, fsdp_counts = model(**batch)
        reloaded = AutoModelForCausalLM.from_pretrained(path).eval()
        logits = reloaded(input_ids=batch["input_ids"]).logits      # right padding: causal, no mask needed
    sums, counts = sequence_logps(logits, batch["labels"])
    assert counts.tolist() == fsdp_counts.tolist()
    torch.testing.assert_close(sums, fsdp_sums, rtol=1e-5, atol=1e-5)
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()   # still tied


def test_bf16_export_is_written_and_reloads_as_bf16_with_close_log_probs(single_rank_group, tiny_model_dir, tmp_path):
    """--save-dtype bf16: safetensors and config say bfloat16, the export reloads, log-probs agree to bf16 precision;
    the training state in the same checkpoint stays fp32 (exact resume)."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    args, model, lm, optimizer, tok = _in_process_model(tiny_model_dir, tmp_path, ["--save-dtype", "bf16"])
    batch = _batch(tok)
    _one_step(model, optimizer, batch)
    path = training.save_checkpoint(args.output_dir, 1, model, lm, optimizer, tok, args)
    with safe_open(os.path.join(path, "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert str(AutoConfig.from_pretrained(path).dtype).endswith("bfloat16")
    reloaded = AutoModelForCausalLM.from_pretrained(path).eval()
    assert next(reloaded.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        fsdp_sums, _ = model(**batch)
        bf16_sums, _ = training.LogpsModel(reloaded, 64)(**batch)
    torch.testing.assert_close(bf16_sums.float(), fsdp_sums, rtol=0.05, atol=0.5)
    assert training.load_checkpoint(path, model, optimizer)["step"] == 1
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.slow
def test_activation_checkpointing_gives_the_same_gradients(single_rank_group, tiny_model_dir, tmp_path):
    """--activation-checkpointing recomputes layers in backward: gradients are unchanged."""
    grads = []
    for extra in ([], ["--activation-checkpointing"]):
        args, model, lm, optimizer, tok = _in_process_model(tiny_model_dir, tmp_path, extra)
        sums, counts = model(**_batch(tok))
        (-(sums.sum() / counts.sum())).backward()
        grads.append({n: p.grad.full_tensor().clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-7, msg=name)


# ----------------------------------------------------------------------------- stage-2 specifics


@pytest.mark.slow
def test_dpo_precomputed_reference_is_cached_and_reused(tmp_path, tiny_model_dir, pairs_file):
    """--precompute-ref writes a cache keyed by the reference model beside the data, starts at ln 2, reuses it."""
    data = tmp_path / "pairs.jsonl"
    shutil.copy(pairs_file, data)
    args = ["--loss", "dpo", "--precompute-ref", "--global-batch-size", "4", "--max-steps", "2", "--lr", "1e-3"]
    out, proc = _train(tmp_path, 2, "train_redi.py", "a", tiny_model_dir, data, *args)
    caches = list(tmp_path.glob("pairs.jsonl.ref-logps.*.jsonl"))
    assert len(caches) == 1 and "computing for 13 pairs" in proc.stdout
    rows = [json.loads(line) for line in caches[0].read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(f"pair/{i}" for i in range(13))
    assert all(r["chosen"] < 0 and r["rejected"] < 0 for r in rows)
    _, steps = read_metrics(out)
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    _, again = _train(tmp_path, 1, "train_redi.py", "b", tiny_model_dir, data, *args)
    assert "read 13 from" in again.stdout and "computing" not in again.stdout


def test_collapse_warning_needs_both_logps_to_fall_past_the_threshold(capsys):
    """Flag only when the windowed chosen AND rejected LogPS are > threshold below the first step's."""
    import train_redi

    monitor = train_redi.CollapseMonitor(threshold=0.5, window=2)
    flags = [monitor.check(i + 1, c, r)
             for i, (c, r) in enumerate([(-0.1, -0.3), (-0.2, -1.5), (-0.9, -1.6), (-1.0, -1.7), (-1.1, 0.5)])]
    # window means: (-0.15,-0.9): chosen fell 0.05; (-0.55,-1.55): 0.45; (-0.95,-1.65): both > 0.5;
    # (-1.05,-0.6): rejected fell only 0.3
    assert flags == [False, False, False, True, False]
    assert capsys.readouterr().out.count("WARNING step 4") == 1


def test_report_to_without_the_package_fails_at_argument_validation(monkeypatch):
    """--report-to wandb with wandb absent: SystemExit while parsing (every rank), naming option and package."""
    monkeypatch.setitem(sys.modules, "wandb", None)       # make `import wandb` fail even if installed
    with pytest.raises(SystemExit, match="--report-to wandb needs the optional package 'wandb'"):
        train_sft.parse_args(["--model", "m", "--data", "d", "--output-dir", "o", "--report-to", "wandb"])
