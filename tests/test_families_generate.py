"""The native engine (sampler.py) on every mainstream decoder family: its greedy samples are transformers'.

Each family is a tiny random model (tests/helpers/families.py) with its distinctive parts switched on,
sliding windows of 16 tokens included, so the prompts (5 to 37 tokens) and 24 new tokens cross them.
Also: the start-up self-check (sampler.check_engine) refuses what the engine cannot match, dropping
pool rows frees the cache layer by layer, and a sample ends at the model's context.
"""
import json
import sys
import types
import weakref

import pytest

import evaluate
import sampler
from cli import InputError
from conftest import EVAL_SETS, ROOT, run_script
from helpers.families import FAMILIES, WINDOW, save_family_model

PROMPT_LENGTHS = (5, 20, 37, 12)  # 3 pool rows: the 4th job refills the first row to free up
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def family_dir(tmp_path_factory):
    """family name -> its saved model dir, built once per module."""
    built = {}

    def get(name):
        if name not in built:
            built[name] = save_family_model(name, tmp_path_factory.mktemp(name))
        return built[name]
    return get


def load(model_dir):
    import torch

    return sampler.load_model(str(model_dir), torch.device("cpu"), "float32")


def prompts(lengths=PROMPT_LENGTHS):
    """Token ids of ordinary (non-special) tokens, one prompt per length."""
    import torch

    generator = torch.Generator().manual_seed(1)
    return [torch.randint(10, 400, (n,), generator=generator).tolist() for n in lengths]


def hf_greedy(model, ids, max_new_tokens, stop_ids):
    """transformers' own greedy continuation of one prompt (its cache, its masks), up to a stop token."""
    import torch

    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=stop_ids,
                         pad_token_id=stop_ids[0])
    return out[0, len(ids):].tolist()


# ---------------------------------------------------------------------------------------------
# Greedy samples equal transformers' generate, family by family
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_pooled_greedy_samples_equal_transformers_generate(family, family_dir):
    """Prompts of 5, 20, 37 and 12 tokens in one pool of 3 rows (a refill mid-run), 24 greedy tokens each
    (fp32): every sample equals model.generate(do_sample=False) for its prompt alone; the self-check passes."""
    model, tokenizer = load(family_dir(family))
    sampler.check_engine(model)
    stops = [tokenizer.eos_token_id]
    jobs = [(i, ids, 0) for i, ids in enumerate(prompts())]
    pooled = {key: ids for key, ids, _ in sampler.sample_pool(model, jobs, NEW_TOKENS, 0.0, 1.0, stops, rows=3,
                                                               sync_every=4)}
    for key, ids, _ in jobs:
        assert pooled[key] == hf_greedy(model, ids, NEW_TOKENS, stops), f"{family}, prompt of {len(ids)} tokens"


def test_sliding_masks_show_each_row_only_its_window():
    """Row 0 at position 4, row 1 at position 1, window 3: full layers see slots <= q, sliding layers
    also only slots > q - 3 (transformers' sliding_window_overlay); later slots are hidden."""
    import torch

    masks = sampler.attention_masks({"full_attention": None, "sliding_attention": 3}, torch.tensor([[4], [1]]),
                                    6, torch.float32)
    visible = {layer_type: (mask[:, 0, 0] == 0).int().tolist() for layer_type, mask in masks.items()}
    assert visible == {"full_attention": [[1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0]],
                       "sliding_attention": [[0, 0, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0]]}
    assert torch.equal(sampler.attention_masks(3, torch.tensor([[4], [1]]), 6, torch.float32),
                       masks["sliding_attention"])  # one tensor when the config has no layer types


# ---------------------------------------------------------------------------------------------
# evaluate.py --engine native, as a user runs it
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("family", ["mistral", "gemma3"])  # windowed: one 4D mask (non-Qwen) / masks by layer type
def test_evaluate_native_greedy_records_equal_transformers_generate(family, family_dir, tmp_path):
    """`evaluate.py --engine native --temperature 0` on 3 MATH-500 prompts (75-204 tokens, past the window):
    each record's text and token count are those of model.generate(do_sample=False)."""
    data = EVAL_SETS / "math500_sample20.jsonl"
    run_script([sys.executable, str(ROOT / "evaluate.py"), "--model", str(family_dir(family)), "--data", str(data),
                "--output-dir", str(tmp_path), "--limit", "3", "--num-samples", "1", "--temperature", "0",
                "--max-new-tokens", str(NEW_TOKENS), "--prompt-template", "raw", "--batch-size", "3",
                "--grading-workers", "1"])
    records = {r["id"]: r for r in map(json.loads, open(tmp_path / "generations.jsonl", encoding="utf-8"))}
    model, tokenizer = load(family_dir(family))
    stops = sampler.stop_token_ids(model, tokenizer)
    problems = [json.loads(line) for line in open(data, encoding="utf-8")][:3]
    assert sorted(records) == sorted(p["id"] for p in problems)
    for p in problems:
        text = evaluate.build_prompt(tokenizer, p["problem"], "raw")
        ids = hf_greedy(model, tokenizer(text, add_special_tokens=False)["input_ids"], NEW_TOKENS, stops)
        body = ids[:-1] if ids[-1] in stops else ids
        assert records[p["id"]]["num_tokens"] == len(ids)
        decoded = evaluate.opened_think(text) + tokenizer.decode(body, skip_special_tokens=True)
        assert records[p["id"]]["text"] == decoded


# ---------------------------------------------------------------------------------------------
# The self-check refuses what the engine cannot match
# ---------------------------------------------------------------------------------------------

def test_self_check_refuses_a_window_the_model_does_not_apply(family_dir, tmp_path, capsys):
    """A Llama config carrying sliding_window=16, which Llama's code ignores: the engine windows its masks,
    the model does not, and evaluate.py stops before sampling with one line naming the model and the gap."""
    model_dir = save_family_model("llama", tmp_path / "llama_window", sliding_window=WINDOW)
    with pytest.raises(SystemExit, match="^2$"):
        evaluate.main(["--model", str(model_dir), "--data", str(EVAL_SETS / "math500_sample20.jsonl"),
                       "--output-dir", str(tmp_path / "out"), "--limit", "1", "--num-samples", "1",
                       "--max-new-tokens", "4", "--prompt-template", "raw"])
    err = capsys.readouterr().err
    assert (f"evaluate.py: error: model {model_dir} (llama): the native engine's log-probabilities differ from "
            f"the model's own forward by up to") in err and "use --engine vllm" in err, err
    generations = tmp_path / "out" / "generations.jsonl"
    assert not generations.exists() or generations.read_text(encoding="utf-8") == ""  # no sample written


def test_self_check_refuses_a_decoder_that_builds_its_own_mask(family_dir):
    """A decoder that drops the masks handed to it builds its own from the cache, which a PoolCache cannot
    size: InputError naming the model and the failure, not a traceback from inside transformers."""
    model, _ = load(family_dir("llama"))

    def drop_mask(module, args, kwargs):
        return args, {**kwargs, "attention_mask": None}

    model.model.register_forward_pre_hook(drop_mask, with_kwargs=True)
    with pytest.raises(InputError, match=r"\(llama\): the native engine's forward fails on it \(AttributeError: "
                                         r".*\); use --engine vllm"):
        sampler.check_engine(model)


def test_a_layer_type_without_a_mask_is_refused_by_name(family_dir):
    """Chunked-attention layers (Llama 4's) have no mask the engine builds: InputError naming the model and
    the layer type, before any forward."""
    model, _ = load(family_dir("qwen2"))
    model.config.layer_types = ["chunked_attention", "full_attention"]
    message = (f"model {family_dir('qwen2')} (qwen2) has 'chunked_attention' layers, which the native engine "
               f"cannot mask; use --engine vllm or another model")
    for call in (lambda: sampler.check_engine(model),
                 lambda: next(sampler.sample_pool(model, [(0, [5, 6], 0)], 4, 0.0, 1.0, [0], rows=1))):
        with pytest.raises(InputError) as caught:
            call()
        assert str(caught.value) == message


# ---------------------------------------------------------------------------------------------
# Memory and context
# ---------------------------------------------------------------------------------------------

def test_dropping_pool_rows_frees_each_layer_before_copying_the_next():
    """PoolCache.keep, 4 rows -> 2 over 4 layers: the live KV bytes (old tensors not yet freed + new copies)
    never exceed the old cache plus one new layer tensor; all at once would hold the old cache + a new one."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
    model = types.SimpleNamespace(config=config, parameters=lambda: iter([torch.zeros(1)]))
    cache = sampler.PoolCache(model, rows=4, capacity=32)
    old = [weakref.ref(t) for t in cache.keys + cache.values]
    old_bytes, new, peaks = sum(r().nbytes for r in old), [], []

    class LiveBytes(TorchDispatchMode):
        def __torch_dispatch__(self, func, arg_types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is torch.ops.aten.index.Tensor:  # a layer's copy of the kept rows
                new.append(weakref.ref(out))
                peaks.append(sum(r().nbytes for r in old + new if r() is not None))
            return out

    with LiveBytes():
        cache.keep(torch.tensor([0, 2]))
    one_layer = cache.keys[0].nbytes
    assert len(peaks) == 8 and max(peaks) <= old_bytes + one_layer
    assert all(r() is None for r in old)


def test_a_sample_ends_with_length_when_it_reaches_the_models_context(family_dir):
    """max_position_embeddings 30, 24 new tokens asked: prompts of 5, 20 and 29 tokens get 24, 10 and 1,
    the first tokens of their unbounded samples, "length" (vLLM's rule); a 30-token prompt is an InputError."""
    model, tokenizer = load(family_dir("llama"))
    jobs = [(i, ids, 0) for i, ids in enumerate(prompts((5, 20, 29)))]
    unbounded = {key: ids for key, ids, _ in sampler.sample_pool(model, jobs, NEW_TOKENS, 0.0, 1.0, [], rows=3)}
    model.config.max_position_embeddings = 30
    bounded = {key: (ids, reason) for key, ids, reason in sampler.sample_pool(model, jobs, NEW_TOKENS, 0.0, 1.0, [],
                                                                             rows=3, sync_every=4)}
    assert bounded == {0: (unbounded[0], "length"), 1: (unbounded[1][:10], "length"), 2: (unbounded[2][:1], "length")}
    with pytest.raises(InputError, match=r"^a prompt of 30 tokens fills the 30 positions of model .* \(llama\)"):
        next(sampler.sample_pool(model, [(0, prompts((30,))[0], 0)], NEW_TOKENS, 0.0, 1.0, [], rows=1))


def test_a_row_past_the_context_leaves_the_other_rows_samples_unchanged(tmp_path):
    """Dynamic-NTK RoPE rescales every row when any position passes max_position_embeddings (32): a row
    that ended at the context keeps decoding until the next sync, at the last position, so the row beside
    it samples what it samples alone."""
    model_dir = save_family_model("llama", tmp_path / "llama_dynamic", max_position_embeddings=32,
                                  rope_parameters={"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0})
    model, _ = load(model_dir)
    short, near_the_end = prompts((5, 30))
    alone = next(sampler.sample_pool(model, [(0, short, 0)], 20, 0.0, 1.0, [], rows=1))
    pooled = {key: ids for key, ids, _ in sampler.sample_pool(model, [(0, short, 0), (1, near_the_end, 0)], 20,
                                                               0.0, 1.0, [], rows=2)}
    assert len(pooled[1]) == 2 and pooled[0] == alone[1]
