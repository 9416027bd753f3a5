"""--system-prompt: one meaning in curate.py, train_sft.py, train_redi.py and evaluate.py; what the model
sees is logged once per run; curation counts lengths as training tokenizes them.

Templates: the tiny model's (Qwen2.5-Math's shape: a default system prompt BEFORE the message loop) and a
SmolLM2-shaped one (the default inserted INSIDE the loop when the first message is not a system message).
"""
import json
import re
import shutil
import sys

import pytest

from conftest import ROOT, run_script, torchrun, write_jsonl

import curate
import data
import evaluate
import token_cache
from data import IGNORE_INDEX
from toy import tiny_model

SMOLLM2_DEFAULT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
SMOLLM2_TEMPLATE = (   # SmolLM2-135M-Instruct's template, with REDI's `<think>` opening of the assistant turn
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + SMOLLM2_DEFAULT + "<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n' }}{% endif %}")
NO_DEFAULT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n' }}{% endif %}")
LONG_SYSTEM_PROMPT = ("You are a careful mathematician. Read the problem twice, reason step by step, check every "
                      "step, and put your final answer within \\boxed{}. ") * 3
PROBLEM = "What is 12+35?"
CHOSEN = "<think>\n12+35=47.\n</think>\n\nThe answer is $\\boxed{47}$."
REJECTED = "<think>\n12+35=48.\n</think>\n\nThe answer is $\\boxed{48}$."
SETTINGS = [None, "Box the answer.", ""]      # option absent, a text, the empty string


@pytest.fixture
def one_rank(monkeypatch):
    """A process group of one in this process (token_cache.load is collective)."""
    import torch.distributed as dist

    import training

    for k in ("RANK", "MASTER_ADDR"):
        monkeypatch.delenv(k, raising=False)
    yield training.setup_distributed("cpu")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    tok = tiny_model.build_tokenizer([])
    tok.chat_template = SMOLLM2_TEMPLATE
    return tok


def training_prompt_ids(tokenizer, messages, system_prompt):
    """The prompt tokens training masks for (messages, CHOSEN): the part of input_ids labelled IGNORE_INDEX."""
    example = data.tokenize_example(tokenizer, messages, CHOSEN, "x", system_prompt=system_prompt)
    return example["input_ids"][:example["labels"].count(IGNORE_INDEX)]


# ---- one meaning everywhere ------------------------------------------------------------------


@pytest.mark.parametrize("given, expected", [([], None), (["--system-prompt", "Be brief."], "Be brief."),
                                             (["--system-prompt", ""], "")])
def test_every_script_parses_system_prompt_to_the_same_value(given, expected, tmp_path):
    """Absent -> None (the template's default), TEXT -> TEXT, '' -> '' in all four scripts' parsers."""
    import train_redi
    import train_sft

    bench = write_jsonl(tmp_path / "bench.jsonl", [{"id": "q", "problem": PROBLEM, "answer": "47"}])
    common = ["--model", "m", "--data", str(bench), "--output-dir", str(tmp_path / "out"), *given]
    parser = curate.build_parser()
    curated = parser.parse_args(["--raw", "r.jsonl", "--sft-out", str(tmp_path / "s.jsonl"), "--pairs-out",
                                 str(tmp_path / "p.jsonl"), "--tokenizer", "t", *given])
    curate.validate_args(parser, curated)
    parsed = [train_sft.parse_args(common), train_redi.parse_args(common), evaluate.parse_args(common), curated]
    assert [args.system_prompt for args in parsed] == [expected] * 4


def test_curate_refuses_system_prompt_without_a_tokenizer(tmp_path, capsys):
    """Without --tokenizer there is no length filter for --system-prompt to change: a usage error, not a no-op."""
    parser = curate.build_parser()
    args = parser.parse_args(["--raw", "r.jsonl", "--sft-out", str(tmp_path / "s.jsonl"), "--pairs-out",
                              str(tmp_path / "p.jsonl"), "--system-prompt", "X"])
    with pytest.raises(SystemExit):
        curate.validate_args(parser, args)
    assert "--system-prompt needs --tokenizer" in capsys.readouterr().err


@pytest.mark.parametrize("system_prompt", SETTINGS)
@pytest.mark.parametrize("template", ["tiny", "smollm2"])
def test_training_prompt_ids_equal_the_prompt_ids_evaluate_feeds(template, system_prompt, tiny_tokenizer,
                                                                 smollm2_tokenizer):
    """For one problem and one --system-prompt, the prompt training masks is token for token evaluate.py's prompt."""
    tok = tiny_tokenizer if template == "tiny" else smollm2_tokenizer
    problem = {"benchmark": "b", "id": "q", "problem": PROBLEM}
    fed, _ = evaluate.prompts_of(tok, [(problem, 0)], "raw", system_prompt)["b", "q"]
    assert fed == training_prompt_ids(tok, [{"role": "user", "content": PROBLEM}], system_prompt)


@pytest.mark.parametrize("template, default", [("tiny", tiny_model.DEFAULT_SYSTEM_PROMPT),
                                               ("smollm2", SMOLLM2_DEFAULT)])
def test_each_setting_renders_the_documented_system_turn(template, default, tiny_tokenizer, smollm2_tokenizer):
    """Absent: the template's default turn; TEXT: that turn instead; '': an empty system turn, the default gone."""
    tok = tiny_tokenizer if template == "tiny" else smollm2_tokenizer
    shown = {s: tok.decode(training_prompt_ids(tok, [{"role": "user", "content": PROBLEM}], s)) for s in SETTINGS}
    assert shown[None].startswith(f"<|im_start|>system\n{default}<|im_end|>\n<|im_start|>user\n{PROBLEM}")
    assert shown["Box the answer."].startswith("<|im_start|>system\nBox the answer.<|im_end|>\n<|im_start|>user\n")
    assert shown[""].startswith(f"<|im_start|>system\n<|im_end|>\n<|im_start|>user\n{PROBLEM}")
    assert all(default not in shown[s] for s in ("Box the answer.", ""))
    assert data.template_system_prompt(tok) == default
    assert data.system_prompt_in_use(tok, [{"role": "user", "content": PROBLEM}], None) == f"(template default: {default!r})"


def test_a_data_rows_own_system_message_wins_over_the_option(tiny_tokenizer):
    """A row that opens with a system message keeps it whatever --system-prompt says; the log says whose it is."""
    messages = [{"role": "system", "content": "Row's own."}, {"role": "user", "content": PROBLEM}]
    for system_prompt in SETTINGS:
        shown = tiny_tokenizer.decode(training_prompt_ids(tiny_tokenizer, messages, system_prompt))
        assert shown.startswith(f"<|im_start|>system\nRow's own.<|im_end|>\n<|im_start|>user\n{PROBLEM}")
        assert shown.count("<|im_start|>system") == 1
        assert "the data row's own" in data.system_prompt_in_use(tiny_tokenizer, messages, system_prompt)


def test_a_template_without_a_default_reports_none(tiny_tokenizer):
    """With a template that inserts nothing, absent means no system turn at all and the log says '(none)'."""
    tok = tiny_model.build_tokenizer([])
    tok.chat_template = NO_DEFAULT_TEMPLATE
    assert data.template_system_prompt(tok) is None
    assert data.system_prompt_in_use(tok, [{"role": "user", "content": PROBLEM}], None) == "(none)"
    assert "system" not in tok.decode(training_prompt_ids(tok, [{"role": "user", "content": PROBLEM}], None))


def test_the_token_cache_is_per_system_prompt(one_rank, tmp_path, tiny_model_dir, pairs_file):
    """Each setting has its own cache directory holding its own tokens: a changed prompt never reads stale ones."""
    path = tmp_path / "pairs.jsonl"
    shutil.copy(pairs_file, path)
    tok = data.load_tokenizer(str(tiny_model_dir))
    loaded = {s: token_cache.load(str(path), tok, "pairs", None, s) for s in SETTINGS}
    assert len({examples.directory for examples in loaded.values()}) == len(SETTINGS)
    for s, examples in loaded.items():
        expected = data.tokenize_pairs(tok, data.load_pairs(str(path)), system_prompt=s)
        assert [examples[i] for i in range(len(examples))] == expected
    again = token_cache.load(str(path), tok, "pairs", None, "Box the answer.")
    assert again.directory == loaded["Box the answer."].directory


def test_the_dpo_reference_cache_is_per_token_cache(tiny_model_dir):
    """log p_ref(y|x) depends on the prompt tokens: the reference cache's name carries the token cache's key."""
    import argparse

    from dpo_reference import reference_cache_path

    args = argparse.Namespace(model=str(tiny_model_dir), ref_model=None, mixed_precision="fp32", data="pairs.jsonl",
                              max_position_embeddings=None, rope_theta=None)
    assert reference_cache_path(args, "key-a", "sdpa") != reference_cache_path(args, "key-b", "sdpa")


# ---- curation counts what training supervises ---------------------------------------------------


@pytest.fixture(scope="module")
def long_default_dir(tmp_path_factory):
    """A tokenizer dir whose template inserts LONG_SYSTEM_PROMPT (~60 tokens) into every conversation."""
    out = tmp_path_factory.mktemp("long_default")
    tiny_model.build_tokenizer([], system_prompt=LONG_SYSTEM_PROMPT).save_pretrained(out)
    return out


@pytest.mark.parametrize("system_prompt", SETTINGS)
def test_curation_counts_lengths_as_training_tokenizes_them(system_prompt, one_rank, tmp_path,
                                                            long_default_dir):
    """prompt = training's masked prompt, chosen / rejected = training's supervised tokens, under any
    --system-prompt; a long default system prompt is never counted against a response."""
    raw = write_jsonl(tmp_path / "raw.jsonl", [{
        "problem": PROBLEM, "problem_is_valid": "Yes", "source": "olympiads", "generations": [CHOSEN, REJECTED],
        "correctness": {"llama_verification": [True, False], "math_verify_reparsed_answer": [True, False]}}])
    option = [] if system_prompt is None else ["--system-prompt", system_prompt]
    summary, pairs_path = _curate(tmp_path, raw, "--tokenizer", long_default_dir, *option)
    tok = data.load_tokenizer(str(long_default_dir))
    trained = token_cache.load(pairs_path, tok, "pairs", None, system_prompt)    # what train_redi.py reads
    chosen, rejected = trained[0]["chosen"], trained[0]["rejected"]
    counted = {name: summary["length_stats"][name]["max"] for name in ("prompt", "chosen", "rejected")}
    assert counted == {"prompt": chosen["labels"].count(IGNORE_INDEX), "chosen": int(trained.supervised[0]),
                       "rejected": sum(t != IGNORE_INDEX for t in rejected["labels"][1:])}
    lone = tok.apply_chat_template([{"role": "assistant", "content": CHOSEN}], tokenize=False)
    assert counted["chosen"] + 50 < len(tok(lone, add_special_tokens=False)["input_ids"])   # REDI's count: ~60 more
    kept, _ = _curate(tmp_path, raw, "--tokenizer", long_default_dir, *option,
                      "--max-response-tokens", counted["chosen"], name="at_limit")
    dropped, _ = _curate(tmp_path, raw, "--tokenizer", long_default_dir, *option,
                         "--max-response-tokens", counted["chosen"] - 1, name="over_limit")
    assert (kept["outputs"]["pairs"]["rows"], dropped["outputs"]["pairs"]["rows"]) == (1, 0)


def _curate(tmp_path, raw, *extra, name="out"):
    """curate.py in-process; (summary, path of the pairs written)."""
    out = tmp_path / name
    parser = curate.build_parser()
    args = parser.parse_args(["--raw", str(raw), "--sft-out", str(out / "sft.jsonl"),
                              "--pairs-out", str(out / "pairs.jsonl"), *map(str, extra)])
    curate.validate_args(parser, args)
    return curate.curate(args), str(out / "pairs.jsonl")


# ---- the log shows what the model sees, once per run --------------------------------------------


def logged_example(stdout, title):
    """(header line, {part name: (token count, decoded text)}) of the one block whose header starts with `title`."""
    assert stdout.count(title) == 1, f"expected one '{title}' block, found {stdout.count(title)}:\n{stdout[-3000:]}"
    start = stdout.index(title)
    block = stdout[start:stdout.index("----- end of the example -----", start)]
    parts = re.findall(r"^----- (.+?): (\d+) tokens -----\n(.*?)\n(?=^----- |\Z)", block + "----- ", re.M | re.S)
    return block.splitlines()[0], {name: (int(n), text) for name, n, text in parts}


@pytest.mark.slow
def test_trainers_and_evaluate_log_the_first_example_once_and_alike(tmp_path, tiny_model_dir, sft_file, pairs_file):
    """2 ranks each: train_sft, train_redi and evaluate print the first example once, special tokens and the
    supervised part shown; evaluate's prompt for the SFT example's problem is the prompt train_sft printed."""
    sft, pairs = shutil.copy(sft_file, tmp_path / "sft.jsonl"), shutil.copy(pairs_file, tmp_path / "pairs.jsonl")
    problem = json.loads(open(sft).readline())["messages"][0]["content"]
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"id": "q0", "problem": problem, "answer": "1"},
                                                   {"id": "q1", "problem": "What is 1+1?", "answer": "2"}])
    option = ["--system-prompt", "Box the answer."]
    train = ["--global-batch-size", "2", "--max-steps", "1", "--no-save", "--no-progress", *option]
    sft_out = torchrun(2, "train_sft.py", "--model", tiny_model_dir, "--data", sft, "--output-dir", tmp_path / "sft",
                       *train).stdout
    redi_out = torchrun(2, "train_redi.py", "--model", tiny_model_dir, "--data", pairs, "--output-dir",
                        tmp_path / "redi", *train).stdout
    eval_out = torchrun(2, "evaluate.py", "--model", tiny_model_dir, "--data", bench, "--output-dir", tmp_path / "ev",
                        "--num-samples", "1", "--max-new-tokens", "2", "--prompt-template", "raw", *option).stdout

    header, sft_parts = logged_example(sft_out, "first training example as tokenized")
    assert "(id sft/0)" in header and "system prompt: 'Box the answer.' (--system-prompt)" in header
    assert list(sft_parts) == ["prompt (not supervised)", "response (supervised: the loss's tokens)"]
    prompt_tokens, prompt = sft_parts["prompt (not supervised)"]
    assert prompt == (f"<|im_start|>system\nBox the answer.<|im_end|>\n<|im_start|>user\n{problem}<|im_end|>\n"
                      f"<|im_start|>assistant\n<think>\n")
    assert sft_parts["response (supervised: the loss's tokens)"][1].endswith("$.<|im_end|>")

    _, redi_parts = logged_example(redi_out, "first training example as tokenized")
    assert list(redi_parts) == ["prompt (not supervised)", "chosen response (supervised: the loss's tokens)",
                                "rejected response (supervised: the loss's tokens)"]

    header, eval_parts = logged_example(eval_out, "first prompt as tokenized")
    assert "bench id q0" in header and "'Box the answer.' (--system-prompt)" in header
    assert eval_parts == {"prompt (the model continues it)": (prompt_tokens, prompt)}


@pytest.mark.slow
def test_help_of_each_script_documents_the_option(tmp_path):
    """`--help` of curate.py, train_sft.py, train_redi.py and evaluate.py describes --system-prompt alike."""
    for script in ("curate.py", "train_sft.py", "train_redi.py", "evaluate.py"):
        out = run_script([sys.executable, str(ROOT / script), "--help"], env={"CUDA_VISIBLE_DEVICES": ""}).stdout
        text = " ".join(out.split())
        assert "--system-prompt TEXT the system message of conversations that have none; same meaning in" in text
        assert "'': an empty system message" in text and "A data row's own system message is kept" in text
