"""The family matrix, training side: for every mainstream decoder family the log-probs training uses
equal Hugging Face's own forward (the family's head included), a 2-rank FSDP2 step equals the 1-rank
step, and a model the code cannot reproduce is refused in one line before any compute."""
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))
from conftest import run_script, torchrun, write_jsonl  # noqa: E402
from families import FAMILIES, save_family_model  # noqa: E402

import training  # noqa: E402
import train_redi  # noqa: E402


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {name: save_family_model(name, root / name) for name in FAMILIES}


@pytest.fixture(scope="module")
def four_pairs(tmp_path_factory):
    """4 pairs, so one global batch of 4 is the whole file whatever the sampler's order; every trace is
    longer than the windowed families' 16-token window."""
    rows = []
    for i in range(4):
        a, b = 11 + 7 * i, 23 + 5 * i
        pad = " Let me double check." * i
        rows.append({"id": f"p{i}", "prompt": [{"role": "user", "content": f"What is {a}+{b}?"}],
                     "chosen": [{"role": "assistant", "content": f"<think>\n{a}+{b}={a + b}.{pad}\n</think>\n\n"
                                                                  f"The answer is $\\boxed{{{a + b}}}$."}],
                     "rejected": [{"role": "assistant", "content": f"<think>\n{a}+{b}={a + b + 1}.\n</think>\n\n"
                                                                    f"The answer is $\\boxed{{{a + b + 1}}}$."}]})
    return write_jsonl(tmp_path_factory.mktemp("pairs4") / "pairs.jsonl", rows)


def hf_sequence_logps(model_dir, batch):
    """Per-sequence summed log p(labels) from the HF model's own forward: log_softmax(model(ids).logits),
    the model loaded as transformers loads it by default (its own attention choice and head)."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids, labels = batch["input_ids"], batch["labels"]
    sums = []
    with torch.no_grad():
        for row, row_labels in zip(ids, labels):
            keep = row_labels != -100
            length = int(torch.nonzero(keep).max()) + 1              # right padding is never attended to
            logp = torch.log_softmax(lm(input_ids=row[None, :length]).logits.float()[0, :-1], -1)
            targets = row_labels[1:length]
            picked = logp.gather(-1, targets.clamp_min(0)[:, None])[:, 0]
            sums.append((picked * (targets != -100)).sum())
    return torch.stack(sums)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_logps_equal_the_models_own_forward(family, family_dirs, four_pairs, single_rank_group, tmp_path):
    """LogpsModel under FSDP2 (the chunked log-probs with the family's head) equals HF's
    log_softmax(model(ids).logits) per sequence within 1e-5 relative, fp32; sequences longer than the window."""
    from data import collate_pairs, load_pairs, tokenize_pairs

    model_dir = str(family_dirs[family])
    args = train_redi.parse_args(["--model", model_dir, "--data", str(four_pairs), "--output-dir", str(tmp_path),
                                  "--no-progress"])
    _, _, device = single_rank_group
    model, lm = training.load_model(model_dir, args, device)
    pairs = tokenize_pairs(training.load_tokenizer(model_dir), load_pairs(str(four_pairs)))
    batch = collate_pairs(pairs, training.load_tokenizer(model_dir).pad_token_id)
    assert batch["input_ids"].shape[1] > 16
    with torch.no_grad():
        sums, counts = model(**batch)
    expected = hf_sequence_logps(model_dir, batch)
    torch.testing.assert_close(sums, expected, rtol=1e-5, atol=1e-4)
    assert counts.tolist() == (batch["labels"][:, 1:] != -100).sum(-1).tolist()


def _redi_run(tmp_path, nproc, model_dir, data, name):
    out = tmp_path / name
    torchrun(nproc, "train_redi.py", "--model", model_dir, "--data", data, "--output-dir", out, "--no-progress",
             "--seed", "3", "--loss", "redi", "--global-batch-size", "4", "--epochs", "2", "--lr", "1e-2",
             "--no-save", timeout=240)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return lines[0], [r for r in lines[1:] if "step" in r]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_two_rank_steps_equal_one_rank_steps_and_step_one_logps_equal_hf(family, family_dirs, four_pairs, tmp_path):
    """train_redi.py black-box: 2 REDI steps on 1 and on 2 ranks log the same loss, LogPS and grad norm
    (rel 1e-5; step 2 after an update at lr 1e-2); step 1's logged LogPS equal HF's own forward's."""
    from data import collate_pairs, load_pairs, tokenize_pairs

    model_dir = str(family_dirs[family])
    _, one = _redi_run(tmp_path, 1, model_dir, four_pairs, "one")
    header, two = _redi_run(tmp_path, 2, model_dir, four_pairs, "two")
    assert header["world_size"] == 2 and [r["step"] for r in two] == [1, 2]
    for key in ("loss", "logps/chosen", "logps/rejected", "optim/grad_norm"):
        assert [r[key] for r in two] == pytest.approx([r[key] for r in one], rel=1e-5, abs=1e-6), key
    tokenizer = training.load_tokenizer(model_dir)
    pairs = tokenize_pairs(tokenizer, load_pairs(str(four_pairs)))
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    per_token = hf_sequence_logps(model_dir, batch) / (batch["labels"][:, 1:] != -100).sum(-1)
    chosen, rejected = per_token.view(2, -1)               # collate_pairs: all chosen, then all rejected
    assert one[0]["logps/chosen"] == pytest.approx(chosen.mean().item(), rel=1e-5)
    assert one[0]["logps/rejected"] == pytest.approx(rejected.mean().item(), rel=1e-5)


# ----------------------------------------------------------------------------- refusals


def _refused(proc, *words):
    """Exit 2 (torchrun: non-zero), one 'PROG: error:' line per rank holding every word, no traceback from a
    rank (torchrun's launcher appends its own ChildFailedError report after the ranks' output: cut off)."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    cut = proc.stderr.find("torch/distributed/elastic/multiprocessing/api.py")
    ranks = proc.stderr if cut < 0 else proc.stderr[:cut]
    assert "Traceback" not in ranks, ranks[-3000:]
    lines = [line for line in ranks.splitlines() if "error:" in line]
    assert lines and all(w in lines[0] for w in words), ranks[-3000:]
    return lines[0]


def _train_sft(*args):
    """One process, no torchrun (world size 1), as a user on one GPU would run it."""
    return run_script([sys.executable, "train_sft.py", *map(str, args)], check=False, timeout=240)


@pytest.mark.slow
def test_an_lm_head_bias_is_refused_in_one_line(tmp_path, sft_file):
    """A model whose lm_head has a bias stops before any compute: 'train_sft.py: error: ... bias', no traceback."""
    from transformers import AutoConfig

    model_dir = save_family_model("llama", tmp_path / "m")
    config = json.loads((model_dir / "config.json").read_text())
    config["model_type"], config["architectures"] = "phi", ["PhiForCausalLM"]      # Phi-2: lm_head has a bias
    config.update({"partial_rotary_factor": 0.5, "resid_pdrop": 0.0, "embd_pdrop": 0.0})
    (model_dir / "config.json").write_text(json.dumps(config))
    assert AutoConfig.from_pretrained(model_dir).model_type == "phi"
    proc = _train_sft("--model", model_dir, "--data", sft_file, "--output-dir", tmp_path / "o", "--no-progress",
                      "--max-steps", "1")
    _refused(proc, "error:", "bias", str(model_dir))


@pytest.mark.slow
def test_remote_code_model_is_refused_in_one_line(tmp_path, sft_file):
    """A config that needs trust_remote_code (an unknown model_type with auto_map) is refused, no traceback."""
    model_dir = save_family_model("llama", tmp_path / "m")
    config = json.loads((model_dir / "config.json").read_text())
    config.update({"model_type": "my_custom_lm", "auto_map": {"AutoConfig": "modeling_custom.CustomConfig",
                                                               "AutoModelForCausalLM": "modeling_custom.CustomLM"}})
    (model_dir / "config.json").write_text(json.dumps(config))
    proc = _train_sft("--model", model_dir, "--data", sft_file, "--output-dir", tmp_path / "o", "--no-progress",
                      "--max-steps", "1")
    _refused(proc, "error:", str(model_dir), "remote code")


@pytest.mark.slow
def test_a_head_the_code_does_not_know_is_refused_by_the_start_up_self_check(tmp_path, sft_file):
    """Falcon-H1 multiplies its logits by lm_head_multiplier, a config field head_of does not read: the self-check
    on a probe finds the mismatch and every rank stops with one line naming the model (2 ranks), no traceback."""
    from transformers import FalconH1Config, FalconH1ForCausalLM

    from toy import tiny_model

    tokenizer = tiny_model.build_tokenizer([])
    config = FalconH1Config(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, intermediate_size=128, mamba_d_ssm=64, mamba_n_heads=4,
                            mamba_d_head=16, mamba_d_state=16, mamba_chunk_size=16, lm_head_multiplier=3.0,
                            max_position_embeddings=512, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = FalconH1ForCausalLM(config)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    proc = torchrun(2, "train_sft.py", "--model", tmp_path / "m", "--data", sft_file, "--output-dir", tmp_path / "o",
                    "--no-progress", "--max-steps", "1", check=False)
    line = _refused(proc, "error:", str(tmp_path / "m"), "FalconH1ForCausalLM", "differ by")
    assert not (tmp_path / "o" / "metrics.jsonl").exists() or "step" not in (tmp_path / "o" / "metrics.jsonl").read_text()
    assert line


@pytest.mark.slow
def test_an_attention_the_model_does_not_support_is_refused_and_auto_picks_eager_for_gemma2(
        tmp_path, family_dirs, four_pairs):
    """Gemma2 declares no SDPA (it soft-caps attention scores): --attn-implementation sdpa is refused in one
    line; auto picks eager and trains."""
    model_dir = family_dirs["gemma2"]
    proc = run_script([sys.executable, "train_redi.py", "--model", model_dir, "--data", four_pairs, "--output-dir",
                       tmp_path / "a", "--no-progress", "--max-steps", "1", "--global-batch-size", "4", "--no-save",
                       "--attn-implementation", "sdpa"], check=False)
    _refused(proc, "--attn-implementation sdpa", "Gemma2ForCausalLM")
    proc = torchrun(1, "train_redi.py", "--model", model_dir, "--data", four_pairs, "--output-dir", tmp_path / "b",
                    "--no-progress", "--max-steps", "1", "--global-batch-size", "4", "--no-save")
    assert "attention eager" in proc.stdout + proc.stderr


def test_auto_attention_never_picks_flash_for_fp32_compute(tmp_path, monkeypatch, family_dirs):
    """flash-attn rejects fp32: with --mixed-precision fp32 on CUDA, auto picks SDPA even when flash-attn imports;
    asking for flash_attention_2 with fp32 is refused."""
    import argparse

    from transformers import AutoConfig

    monkeypatch.setattr(training, "flash_attn_import_error", lambda: None)
    config = AutoConfig.from_pretrained(family_dirs["llama"])
    cuda = torch.device("cuda")
    args = argparse.Namespace(attn_implementation="auto", layout="auto", mixed_precision="fp32", model="m")
    assert training.choose_kernels(args, cuda, config).attn_implementation == "sdpa"
    args = argparse.Namespace(attn_implementation="auto", layout="auto", mixed_precision="auto", model="m")
    assert training.choose_kernels(args, cuda, config).attn_implementation == "flash_attention_2"
    args = argparse.Namespace(attn_implementation="flash_attention_2", layout="auto", mixed_precision="fp32", model="m")
    with pytest.raises(training.InputError, match="bf16"):
        training.choose_kernels(args, cuda, config)
