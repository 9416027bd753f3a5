"""The whole pipeline on a real pretrained model: SmolLM2-135M-Instruct (Llama, tied embeddings, ChatML).

The model comes from a PyPI wheel as a GGUF, converted once by tools/convert_smollm2.py into a cache
(tests/helpers/smollm2.py). Without the optional packages (README, "Bring your own model", has the pip
line) the model tests are skipped with the reason; REDI_TEST_SMOLLM2=1 (CI) makes that a failure. Tiny
data, so the file stays within about five minutes on 2 CPU cores: six problems, one optimizer step per run.
    curated    curate.py on a raw file in the OpenR1-Math-Raw schema, length-filtered by SmolLM2's tokenizer
    sft        train_sft.py, one step on 1 rank (saved: the model the later stages start from) and 2 ranks
    stage2     train_redi.py --loss redi|dpo|simpo, one step each from the stage-1 model
    evaluated  evaluate.py (native engine, greedy) on the stage-1 model, four real prompts
"""
import json
import math
import os
import random
import subprocess
import sys

import pytest

from conftest import ROOT, run_script, torchrun, write_jsonl

sys.path.insert(0, str(ROOT / "tests" / "helpers"))
import smollm2  # noqa: E402

REQUIRED = os.environ.get("REDI_TEST_SMOLLM2") == "1"
COMMON = ["--no-progress", "--seed", "0", "--max-seq-len", "256", "--global-batch-size", "2",
          "--micro-batch-size", "1", "--max-steps", "1"]
MAX_NEW_TOKENS = 40


def heavy(test):
    """The model tests: slow, and selectable with -m smollm2."""
    return pytest.mark.slow(pytest.mark.smollm2(pytest.mark.timeout(600)(test)))


def read_steps(out_dir):
    with open(out_dir / "metrics.jsonl") as f:
        return [r for r in map(json.loads, filter(str.strip, f)) if "step" in r]


# ---------------------------------------------------------------------------------------------
# Fixtures: the converted model, then each stage's run on it
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def model_dir():
    """The converted SmolLM2 dir (cached across runs); skipped, or failed under REDI_TEST_SMOLLM2=1,
    when the packages the conversion needs are not installed."""
    missing = smollm2.missing()
    if missing:
        reason = (f"needs {', '.join(missing)} to convert SmolLM2-135M-Instruct: {smollm2.INSTALL} "
                  f"(README, 'Bring your own model'; REDI_TEST_SMOLLM2=1 makes this a failure)")
        (pytest.fail if REQUIRED else pytest.skip)(reason)
    return smollm2.model_dir()


def raw_row(a, b, labels):
    """One OpenR1-Math-Raw row for `a+b`: a correct trace where a label is (True, True), else one off by one."""
    def trace(ok):
        value = a + b if ok else a + b + 1
        return f"<think>\n{a} + {b} = {value}.\n</think>\n\nThe answer is $\\boxed{{{value}}}$."
    gens = [trace(llama and verify) for llama, verify in labels]
    return {"problem": f"What is {a} + {b}?", "solution": f"{a + b}", "answer": f"{a + b}", "problem_type": "Algebra",
            "question_type": "math-word-problem", "problem_is_valid": "Yes", "solution_is_valid": "Yes",
            "source": "olympiads", "synthetic": False, "generations": gens, "generations_count": len(gens),
            "correctness": {"llama_verification": [llama for llama, _ in labels],
                            "math_verify_answer": [v for _, v in labels],
                            "math_verify_reparsed_answer": [v for _, v in labels]},
            "reparsed_answers": [f"{a + b}"]}


@pytest.fixture(scope="module")
def curated(model_dir, tmp_path_factory):
    """curate.py with SmolLM2's tokenizer on six problems: four with a wrong then a right generation (an SFT
    example and a pair each), one right only (SFT), one with no right generation (nothing)."""
    root = tmp_path_factory.mktemp("smollm2_data")
    wrong_right, right, wrong = [(False, True), (True, True)], [(True, True)], [(True, False), (False, False)]
    rows = [raw_row(12 + i, 7 * i + 3, wrong_right) for i in range(4)] + [raw_row(40, 2, right), raw_row(5, 6, wrong)]
    raw = write_jsonl(root / "raw.jsonl", rows)
    run_script([sys.executable, ROOT / "curate.py", "--raw", raw, "--sft-out", root / "sft.jsonl",
                "--pairs-out", root / "pairs.jsonl", "--tokenizer", model_dir, "--seed", "0"])
    return root


@pytest.fixture(scope="module")
def sft(model_dir, curated, tmp_path_factory):
    """{ranks: output dir}: one step of train_sft.py on 1 rank (saved) and on 2 ranks (torchrun, not saved)."""
    data = curated / "sft.jsonl"
    root = tmp_path_factory.mktemp("smollm2_sft")
    args = ["--model", model_dir, "--data", data, "--lr", "1e-5", *COMMON]
    run_script([sys.executable, ROOT / "train_sft.py", *args, "--output-dir", root / "1"], timeout=600)
    torchrun(2, "train_sft.py", *args, "--output-dir", root / "2", "--no-save", timeout=600)
    return {1: root / "1", 2: root / "2"}


@pytest.fixture(scope="module")
def stage2(sft, curated, tmp_path_factory):
    """{loss: steps}: one step of train_redi.py per loss from the stage-1 model, on the curated pairs."""
    root = tmp_path_factory.mktemp("smollm2_stage2")
    steps = {}
    for loss in ("redi", "dpo", "simpo"):
        run_script([sys.executable, ROOT / "train_redi.py", "--model", sft[1] / "final", "--data",
                    curated / "pairs.jsonl", "--loss", loss, "--output-dir", root / loss, "--no-save", *COMMON],
                   timeout=600)
        steps[loss] = read_steps(root / loss)
    return steps


@pytest.fixture(scope="module")
def evaluated(sft, tmp_path_factory):
    """(model dir, {id: record}): evaluate.py --engine native, greedy, on the stage-1 model's export."""
    root = tmp_path_factory.mktemp("smollm2_eval")
    bench = write_jsonl(root / "prompts.jsonl", smollm2.PROMPTS)
    model = sft[1] / "final"
    run_script([sys.executable, ROOT / "evaluate.py", "--model", model, "--data", bench, "--n", "1",
                "--temperature", "0", "--max-new-tokens", str(MAX_NEW_TOKENS), "--prompt-template", "raw",
                "--grading-workers", "1", "--engine", "native", "--output-dir", root / "out"], timeout=600)
    with open(root / "out" / "generations.jsonl") as f:
        return model, {r["id"]: r for r in map(json.loads, f)}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """In-process forwards on one thread, as conftest runs the scripts (OMP_NUM_THREADS=1): on the loaded 2-core
    box, two threads made a greedy `generate` 10x slower (64 s against 6 s for 40 tokens)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def hf(model_dir):
    """(model, tokenizer) of the converted dir, loaded by transformers, fp32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)


# ---------------------------------------------------------------------------------------------
# The tool
# ---------------------------------------------------------------------------------------------

def test_convert_help_does_not_import_torch():
    """`tools/convert_smollm2.py --help` prints its usage without importing torch or transformers."""
    code = ("import runpy, sys; sys.argv = ['convert_smollm2.py', '--help']\n"
            "try: runpy.run_path(sys.argv[0], run_name='__main__')\n"
            "except SystemExit: pass\n"
            "print('heavy:', sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "tools", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--out" in proc.stdout and "heavy: []" in proc.stdout, proc.stdout + proc.stderr


def test_convert_without_the_packages_is_one_line_naming_the_pip_line(tmp_path):
    """With gguf (say) not installed: exit 2, one line `convert_smollm2.py: error: ...` with the pip line, no
    traceback, nothing written."""
    code = ("import runpy, sys; sys.modules['gguf'] = None\n"  # find_spec('gguf') is None: as if not installed
            f"sys.argv = ['convert_smollm2.py', '--out', {str(tmp_path / 'out')!r}]\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "tools", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    lines = proc.stderr.splitlines()             # gguf, and whichever of the others this venv lacks too
    assert len(lines) == 1 and lines[0].startswith("convert_smollm2.py: error: needs gguf"), lines
    assert lines[0].endswith(f"(not installed): {smollm2.INSTALL}"), lines
    assert os.listdir(tmp_path) == []


def test_convert_refuses_an_out_dir_holding_something_else(tmp_path):
    """--out that exists, is not empty and holds no complete conversion is refused in one line, left untouched."""
    (tmp_path / "notes.txt").write_text("mine")
    proc = subprocess.run([sys.executable, ROOT / "tools" / "convert_smollm2.py", "--out", tmp_path],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith(f"convert_smollm2.py: error: --out {tmp_path}: exists and "
                                                           f"is not a complete conversion"), proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and os.listdir(tmp_path) == ["notes.txt"]


@heavy
def test_converted_dir_is_a_complete_fp32_llama_with_the_chatml_template(model_dir):
    """The converted dir: Llama, 30 layers, tied embeddings, vocab 49,152, fp32 weights; the ChatML template
    with its default system prompt; generation and tokenizer eos `<|im_end|>`; a second run returns at once."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    config, tokenizer = AutoConfig.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    assert (config.model_type, config.num_hidden_layers, config.vocab_size) == ("llama", 30, 49152)
    assert config.tie_word_embeddings and not hasattr(config, "quantization_config")
    assert os.path.getsize(model_dir / "model.safetensors") > 4 * 134e6  # ~135M parameters in fp32
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert GenerationConfig.from_pretrained(model_dir).eos_token_id == tokenizer.eos_token_id == end_of_turn
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    again = run_script([sys.executable, ROOT / "tools" / "convert_smollm2.py", "--out", model_dir], timeout=60)
    assert again.stdout.strip() == f"{model_dir}: already converted"


# ---------------------------------------------------------------------------------------------
# The pretrained model is the real one
# ---------------------------------------------------------------------------------------------

def response_logps(model, tokenizer, prompt, response):
    """Mean log-prob per response token (the paper's LogPS), through data.py's chat tokenization."""
    import torch

    from data import tokenize_example
    from redi_loss import sequence_logps

    example = tokenize_example(tokenizer, [{"role": "user", "content": prompt}], response, "logps")
    ids, labels = (torch.tensor([example[k]]) for k in ("input_ids", "labels"))
    with torch.no_grad():
        total, count = sequence_logps(model(ids).logits, labels)
    return (total / count).item()


@heavy
def test_logps_of_a_fluent_answer_is_a_pretrained_models_and_random_tokens_far_lower(hf):
    """A short correct answer scores a LogPS in (-3, -0.05) nats per token; random tokens of the vocabulary
    score below -8 (a randomly initialised or mis-converted model gives about -ln(49152) = -10.8 to both)."""
    model, tokenizer = hf
    prompt = "What is the capital of France?"
    fluent = response_logps(model, tokenizer, prompt, "The capital of France is Paris.")
    rng = random.Random(0)
    noise = tokenizer.decode([rng.randrange(100, tokenizer.vocab_size) for _ in range(12)])
    scrambled = response_logps(model, tokenizer, prompt, noise)
    assert -3 < fluent < -0.05, fluent
    assert scrambled < -8 and scrambled < fluent - 5, (scrambled, fluent)


# ---------------------------------------------------------------------------------------------
# Curation and training on it
# ---------------------------------------------------------------------------------------------

@heavy
def test_curate_with_the_smollm2_tokenizer_writes_the_expected_examples_and_pairs(curated):
    """Five SFT examples (every problem with a right generation) and four pairs, none length-filtered."""
    sft_rows = [json.loads(line) for line in open(curated / "sft.jsonl")]
    pairs = [json.loads(line) for line in open(curated / "pairs.jsonl")]
    assert (len(sft_rows), len(pairs)) == (5, 4)
    assert all("\\boxed{" in p["chosen"][0]["content"] and p["chosen"] != p["rejected"] for p in pairs)


@heavy
def test_sft_first_step_loss_is_equal_on_one_and_two_ranks(sft):
    """The same global batch gives the same first loss on 1 rank and on 2 (FSDP2, gloo) to 1e-5; a pretrained
    model's loss on fluent traces is moderate (0.2 to 3 nats per token), and the stage-1 model is exported."""
    first = {ranks: read_steps(out)[0] for ranks, out in sft.items()}
    assert first[1]["loss"] == pytest.approx(first[2]["loss"], abs=1e-5), first
    assert 0.2 < first[1]["loss"] < 3, first[1]
    assert (sft[1] / "final" / "model.safetensors").is_file() and (sft[1] / "final" / "chat_template.jinja").is_file()


@heavy
def test_dpo_starts_at_ln2_and_every_stage2_loss_takes_a_finite_step(stage2):
    """From the stage-1 model: DPO's first loss is ln 2 (policy == reference), REDI's and SimPO's are finite,
    and the chosen traces' LogPS is a pretrained model's (above -4 nats per token)."""
    assert stage2["dpo"][0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    for loss, steps in stage2.items():
        assert len(steps) == 1 and math.isfinite(steps[0]["loss"]), (loss, steps)
        assert -4 < steps[0]["logps/chosen"] < 0, (loss, steps[0])  # random tokens: about -16


# ---------------------------------------------------------------------------------------------
# Evaluation on it
# ---------------------------------------------------------------------------------------------

@heavy
def test_native_greedy_texts_equal_hugging_face_generate(evaluated):
    """evaluate.py's native engine at temperature 0 writes, for every prompt, the text and finish reason of
    transformers' greedy `generate` (do_sample=False) on the same chat-templated prompt."""
    model, records = evaluated
    expected = smollm2.hf_greedy(model, [p["problem"] for p in smollm2.PROMPTS], MAX_NEW_TOKENS)
    for prompt, (text, reason, num_tokens) in zip(smollm2.PROMPTS, expected):
        record = records[prompt["id"]]
        assert (record["text"], record["finish_reason"], record["num_tokens"]) == (text, reason, num_tokens), prompt


@heavy
def test_native_generation_stops_at_the_end_of_turn(evaluated):
    """Asked for a number only, the instruct model answers briefly (`2 + 3 = 5`) and ends its turn: finish
    reason stop well within the budget, the text ends with the answer (`<|im_end|>` counted, not written)."""
    record = evaluated[1]["sum"]
    assert record["finish_reason"] == "stop" and record["num_tokens"] < MAX_NEW_TOKENS // 2, record
    assert record["text"].endswith("5") and "<|im_end|>" not in record["text"], record
