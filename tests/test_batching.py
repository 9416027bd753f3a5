"""data.py tokenizer, formatting, collation and sharding: pad token, labels, layouts and the batch order."""
from collections import Counter

import pytest
import torch

from data import (IGNORE_INDEX, BatchOrder, collate, collate_pairs, load_tokenizer, tokenize_example,
                  tokenize_pairs)

QUESTION = [{"role": "user", "content": "What is 12+7?"}]
RESPONSE = "<think>\n12+7=19\n</think>\n\nThe answer is $\\boxed{19}$."


# ----------------------------------------------------------------------------- tokenizer


def test_load_tokenizer_pads_with_eos_only_when_the_tokenizer_has_no_pad_token(tiny_model_dir, tmp_path):
    """A tokenizer's own pad token is kept; a tokenizer without one gets EOS as its pad token."""
    own = load_tokenizer(str(tiny_model_dir))
    own.pad_token = "<|im_start|>"  # the tiny tokenizer pads with its eos (as Qwen2.5-Math base): tell them apart
    own.save_pretrained(tmp_path / "own")
    assert load_tokenizer(str(tmp_path / "own")).pad_token == "<|im_start|>"
    own.pad_token = None
    own.save_pretrained(tmp_path / "padless")
    padless = load_tokenizer(str(tmp_path / "padless"))
    assert padless.eos_token_id is not None
    assert padless.pad_token_id == padless.eos_token_id


# ----------------------------------------------------------------------------- labels


def test_labels_mask_the_prompt_and_end_with_the_end_of_turn_token(tiny_tokenizer):
    """Prompt (incl. the forced '<think>\\n') is -100; labels decode to response + <|im_end|>, nothing after."""
    tok = tiny_tokenizer
    ex = tokenize_example(tok, QUESTION, RESPONSE, "ex")
    prompt_text = ("<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}."
                   "<|im_end|>\n<|im_start|>user\nWhat is 12+7?<|im_end|>\n<|im_start|>assistant\n<think>\n")
    n_prompt = len(tok(prompt_text, add_special_tokens=False)["input_ids"])
    assert ex["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert IGNORE_INDEX not in ex["labels"][n_prompt:]
    assert tok.decode(ex["input_ids"][:n_prompt]) == prompt_text
    assert tok.decode(ex["labels"][n_prompt:]) == RESPONSE.removeprefix("<think>\n") + "<|im_end|>"
    assert ex["labels"][-1] == ex["input_ids"][-1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert ex["input_ids"][n_prompt:] == ex["labels"][n_prompt:]


def test_response_that_does_not_follow_the_generation_prompt_is_an_error(tiny_tokenizer):
    """REDI's template forces '<think>\\n'; a response without it cannot be aligned and is named."""
    with pytest.raises(ValueError, match=r"example byo:7: .*starts with 'The answer is 19'"):
        tokenize_example(tiny_tokenizer, QUESTION, "The answer is 19", "byo:7")


def test_over_long_example_is_an_error_never_truncated(tiny_tokenizer):
    """A sequence over max_length raises, naming the example and both lengths."""
    n = len(tokenize_example(tiny_tokenizer, QUESTION, RESPONSE, "x")["input_ids"])
    assert len(tokenize_example(tiny_tokenizer, QUESTION, RESPONSE, "x", max_length=n)["input_ids"]) == n
    with pytest.raises(ValueError, match=f"example long/1: {n} tokens exceed .* {n - 1}"):
        tokenize_example(tiny_tokenizer, QUESTION, RESPONSE, "long/1", max_length=n - 1)


# ----------------------------------------------------------------------------- layouts


def _pairs(tok, n=3):
    pairs = [{"id": f"p{i}", "prompt_messages": [{"role": "user", "content": f"What is {i}+{i * 7}?" + " pad" * i}],
              "chosen": f"<think>\n{i}+{i * 7}={i * 8}\n</think>\n\n$\\boxed{{{i * 8}}}$",
              "rejected": f"<think>\nwrong\n</think>\n\n$\\boxed{{{i}}}$"} for i in range(n)]
    return tokenize_pairs(tok, pairs)


def test_pair_micro_batch_is_chosen_block_then_rejected_block(tiny_tokenizer):
    """Padded pair batch: rows [c0, c1, c2, r0, r1, r2], right-padded, labels -100 on padding."""
    pairs = _pairs(tiny_tokenizer)
    batch = collate_pairs(pairs, pad_id=tiny_tokenizer.pad_token_id)
    order = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    assert batch["num_sequences"] == 6
    for row, seq in enumerate(order):
        n = len(seq["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == seq["input_ids"]
        assert batch["labels"][row, :n].tolist() == seq["labels"]
        assert (batch["input_ids"][row, n:] == tiny_tokenizer.pad_token_id).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()


def test_packed_layout_restarts_positions_and_masks_sequence_starts(tiny_tokenizer):
    """Packed: one row, positions 0.. per sequence, seq_index owner ids, no label on a sequence start."""
    pairs = _pairs(tiny_tokenizer, 2)
    batch = collate_pairs(pairs, pad_id=0, packed=True)
    lengths = [len(p["chosen"]["input_ids"]) for p in pairs] + [len(p["rejected"]["input_ids"]) for p in pairs]
    assert batch["input_ids"].shape == (1, sum(lengths))
    assert batch["position_ids"][0].tolist() == [t for n in lengths for t in range(n)]
    assert batch["seq_index"].tolist() == [i for i, n in enumerate(lengths) for _ in range(n)]
    assert (batch["labels"][0, batch["position_ids"][0] == 0] == IGNORE_INDEX).all()


def test_packed_and_padded_give_identical_per_sequence_logps(tiny_model_dir, tiny_tokenizer):
    """On the tiny Qwen2 (sdpa and eager), both layouts equal each sequence scored on its own."""
    from transformers import AutoModelForCausalLM

    import training
    from redi_loss import sequence_logps

    pairs = _pairs(tiny_tokenizer, 3)
    sequences = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    for impl in ("sdpa", "eager"):
        lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=impl).eval()
        model = training.LogpsModel(lm, chunk_size=4)
        with torch.no_grad():
            padded, padded_n = model(**collate(sequences, tiny_tokenizer.pad_token_id))
            packed, packed_n = model(**collate(sequences, tiny_tokenizer.pad_token_id, packed=True))
            alone = [sequence_logps(lm(torch.tensor([s["input_ids"]])).logits, torch.tensor([s["labels"]]))
                     for s in sequences]
        expected = torch.cat([a[0] for a in alone])
        assert padded_n.tolist() == packed_n.tolist() == [int(a[1]) for a in alone]
        torch.testing.assert_close(padded, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(packed, expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- sharding


def _all_ranks(lengths, world, **kw):
    return [BatchOrder(lengths, world_size=world, rank=r, **kw) for r in range(world)]


@pytest.mark.parametrize("mode", [{"micro_batch_size": 2}, {"max_tokens": 40}])
def test_every_rank_gets_the_same_number_of_micro_batches_on_uneven_data(mode):
    """13 examples, global batch 8, 2 ranks: equal counts per step; each example once per epoch with weight 1."""
    lengths = [5 + (7 * i) % 23 for i in range(13)]
    orders = _all_ranks(lengths, 2, global_batch=8, seed=0, **mode)
    assert orders[0].steps_per_epoch == 2
    for epoch in range(3):
        seen = Counter()
        for step in range(2):
            plans = [s.micro_batches(epoch, step) for s in orders]
            assert len(plans[0]) == len(plans[1])
            assert all(mb for plan in plans for mb in plan)            # no empty micro-batch
            for plan in plans:
                for mb in plan:
                    seen.update(i for i, w in mb if w == 1.0)
        assert seen == Counter(range(13))                              # nothing dropped, nothing twice
    last = [it for s in orders for mb in s.micro_batches(0, 1) for it in mb]
    assert sum(w for _, w in last) == 5 and len(last) == 8             # 3 zero-weight repeats


def test_token_budget_is_respected_except_by_single_long_examples():
    """max_tokens packs: sum of lengths <= budget unless one example alone exceeds it."""
    lengths = [3, 30, 8, 8, 8, 50, 2, 9, 9, 1, 12, 4]
    for s in _all_ranks(lengths, 2, global_batch=12, seed=1, max_tokens=20):
        for mb in s.micro_batches(0, 0):
            total = sum(lengths[i] for i, _ in mb)
            assert total <= 20 or len(mb) == 1


def test_step_membership_is_deterministic_and_independent_of_world_size():
    """Same (seed, epoch, step) -> same examples for 1, 2 or 4 ranks; other epochs reshuffle."""
    lengths = [10] * 37

    def step_members(world, epoch, step):
        return sorted((i, w) for s in _all_ranks(lengths, world, global_batch=8, seed=5, micro_batch_size=1)
                      for mb in s.micro_batches(epoch, step) for i, w in mb)
    assert step_members(1, 0, 3) == step_members(2, 0, 3) == step_members(4, 0, 3)
    assert step_members(2, 0, 3) == step_members(2, 0, 3)
    order = BatchOrder(lengths, 8, 1, 0, seed=5, micro_batch_size=1).epoch_order
    assert order(0) != order(1) and sorted(order(0)) == list(range(37))
    assert BatchOrder(lengths, 8, 1, 0, seed=6, micro_batch_size=1).epoch_order(0) != order(0)


def test_resuming_mid_epoch_needs_only_the_step_counter():
    """A fresh BatchOrder asked for (epoch 1, step 2) returns what the original returned there."""
    lengths = list(range(1, 30))
    a = BatchOrder(lengths, 4, 2, 1, seed=9, max_tokens=25)
    plans = {(e, s): a.micro_batches(e, s) for e in range(2) for s in range(a.steps_per_epoch)}
    b = BatchOrder(lengths, 4, 2, 1, seed=9, max_tokens=25)
    assert b.micro_batches(1, 2) == plans[(1, 2)]
    with pytest.raises(IndexError, match="past the end"):
        b.micro_batches(0, a.steps_per_epoch)


# ----------------------------------------------------------------------------- attention without [T, T]


def _long_sequences(tokenizer, lengths, seed=0):
    """Random token sequences of the given lengths, labels on their second half."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, tokenizer.vocab_size, (n,), generator=generator).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * (n // 2) + ids[n // 2:]})
    return out


def _logps_and_grads(lm, batch):
    import training

    lm.zero_grad(set_to_none=True)
    sums, counts = training.LogpsModel(lm, chunk_size=64)(**batch)
    (sums.sum() / counts.sum()).backward()
    return sums.detach(), {n: p.grad.clone() for n, p in lm.named_parameters()}


def test_padded_and_packed_layouts_give_equal_logps_and_gradients(tiny_model_dir, tiny_tokenizer):
    """Padded (no mask) and packed (one SDPA call per sequence) rows: log-probs and every gradient within 1e-5."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    sequences = _long_sequences(tiny_tokenizer, [37, 90, 64, 11])
    padded, padded_grads = _logps_and_grads(lm, collate(sequences, tiny_tokenizer.pad_token_id))
    packed, packed_grads = _logps_and_grads(lm, collate(sequences, tiny_tokenizer.pad_token_id, packed=True))
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)
    for name, g in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], g, rtol=1e-5, atol=1e-6, msg=name)


class _LargestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """Records, over every op run inside it, the output tensor with the most elements."""

    def __init__(self):
        super().__init__()
        self.largest = (0, None, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor) and t.numel() > self.largest[0]:
                self.largest = (t.numel(), tuple(t.shape), str(func))
        return out


@pytest.mark.parametrize("packed", [False, True])
def test_no_layout_builds_a_t_by_t_tensor_in_forward_or_backward(packed, tiny_model_dir, tiny_tokenizer):
    """Two 1,200-token sequences: the largest tensor of forward + backward is far below T x T elements."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    sequences = _long_sequences(tiny_tokenizer, [1200, 1100])
    batch = collate(sequences, tiny_tokenizer.pad_token_id, packed=packed)
    with _LargestTensor() as probe:
        _logps_and_grads(lm, batch)
    numel, shape, op = probe.largest
    # T x T of one sequence is 1.44M; the activations are [2, 1200, 256] = 614k at most (hidden 64, MLP 256).
    assert numel < 1200 * 1200 / 2, (shape, op)


def test_balanced_assignment_keeps_the_step_and_evens_out_the_longest_examples():
    """balance=True: each rank gets per_rank of the step's items, together exactly the step's, same on every
    call; on long-tailed lengths the most loaded rank carries far less than with contiguous slices."""
    import random

    rng = random.Random(0)
    lengths = [int(rng.lognormvariate(9.3, 0.8)) for _ in range(640)]
    plain = _all_ranks(lengths, 8, global_batch=32, seed=1, micro_batch_size=1)
    balanced = _all_ranks(lengths, 8, global_batch=32, seed=1, micro_batch_size=1, balance=True)
    worst_plain, worst_balanced = [], []
    for step in range(plain[0].steps_per_epoch):
        a = [s.rank_slice(0, step, r) for r, s in enumerate(plain)]
        b = [s.rank_slice(0, step, r) for r, s in enumerate(balanced)]
        assert all(len(x) == 4 for x in b)
        assert Counter(i for x in a for i in x) == Counter(i for x in b for i in x)
        assert b == [s.rank_slice(0, step, r) for r, s in enumerate(balanced)]
        load = lambda slices: [sum(lengths[i] for i, _ in x) for x in slices]  # noqa: E731
        worst_plain.append(max(load(a)) / (sum(load(a)) / 8))
        worst_balanced.append(max(load(b)) / (sum(load(b)) / 8))
    mean_plain, mean_balanced = sum(worst_plain) / len(worst_plain), sum(worst_balanced) / len(worst_balanced)
    assert mean_balanced < 1.25 < 1.4 < mean_plain, (mean_balanced, mean_plain)
