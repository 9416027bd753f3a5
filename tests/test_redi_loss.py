"""The maths of redi_loss.py, pinned by hand-derived values, invariants and naive references."""
import ast
import math
from pathlib import Path

import pytest
import torch

from redi_loss import (IGNORE_INDEX, LOSSES, dpo_loss, redi_loss as redi, sequence_logps,
                       sequence_logps_from_hidden, sft_loss, simpo_loss, token_logps, token_logps_from_hidden)

ROOT = Path(__file__).resolve().parent.parent


def naive_sequence_logps(logits, labels):
    """Float64 log_softmax + gather with the HF shift: the definition the fast code must equal."""
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1), mask.sum(-1)


def random_labels(batch, length, vocab, prompt_lengths, pad_lengths, generator):
    """Input ids with IGNORE_INDEX on a prompt prefix and a padding suffix of the given lengths."""
    labels = torch.randint(0, vocab, (batch, length), generator=generator)
    for b, (p, pad) in enumerate(zip(prompt_lengths, pad_lengths)):
        labels[b, :p] = IGNORE_INDEX
        if pad:
            labels[b, length - pad:] = IGNORE_INDEX
    return labels


# ----------------------------------------------------------------------------- imports


def test_redi_loss_imports_only_torch():
    """redi_loss.py must stand alone on torch (users copy it)."""
    tree = ast.parse((ROOT / "redi_loss.py").read_text())
    modules = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert modules <= {"torch", "__future__"}, modules


def test_losses_mapping_names_every_objective():
    """The one name -> function mapping train_redi.py's --loss dispatches on: the three pair losses and SFT."""
    assert LOSSES == {"redi": redi, "dpo": dpo_loss, "simpo": simpo_loss, "sft": sft_loss}


# ----------------------------------------------------------------------------- hand-derived values


def test_redi_hand_derived_value():
    """-c/|w| + alpha r/|l| with c=-6 over 3 tokens, r=-10 over 5 tokens, alpha 0.8: 2 - 1.6 = 0.4."""
    loss = redi(torch.tensor([-6.0]), torch.tensor([3]), torch.tensor([-10.0]), torch.tensor([5]), alpha=0.8)
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(0.4, abs=1e-6)


def test_dpo_hand_derived_value():
    """margin = (-5 - -6) - (-9 - -7) = 3; beta 0.5 -> -log sigmoid(1.5) = log(1 + e^-1.5)."""
    loss = dpo_loss(torch.tensor([-5.0]), torch.tensor([-9.0]), torch.tensor([-6.0]), torch.tensor([-7.0]), beta=0.5)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.5)), abs=1e-6)


def test_dpo_equals_ln2_when_policy_equals_reference():
    """With pi = pi_ref every margin is 0, so every pair's DPO loss is ln 2 whatever beta."""
    g = torch.Generator().manual_seed(0)
    chosen, rejected = -50 * torch.rand(7, generator=g), -50 * torch.rand(7, generator=g)
    for beta in (0.001, 0.1, 5.0):
        loss = dpo_loss(chosen, rejected, chosen.clone(), rejected.clone(), beta=beta)
        torch.testing.assert_close(loss, torch.full((7,), math.log(2.0)))


def test_simpo_value_at_known_margin():
    """c/|w| - r/|l| = -1 - (-2) = 1; beta 2, gamma 1 -> -log sigmoid(1) = log(1 + e^-1)."""
    loss = simpo_loss(torch.tensor([-4.0]), torch.tensor([4]), torch.tensor([-6.0]), torch.tensor([3]),
                      beta=2.0, gamma=1.0)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-6)
    at_gamma = simpo_loss(torch.tensor([-1.5]), torch.tensor([1]), torch.tensor([-2.0]), torch.tensor([1]),
                          beta=2.0, gamma=1.0)   # beta*margin == gamma -> ln 2
    assert at_gamma.item() == pytest.approx(math.log(2.0), abs=1e-6)


def test_sft_loss_is_token_mean_and_global_normaliser():
    """(-(-3) - (-5)) / (2 + 6) = 1; with total_length=16 (a micro-batch of a larger step) 0.5."""
    s, n = torch.tensor([-3.0, -5.0]), torch.tensor([2, 6])
    assert sft_loss(s, n).item() == pytest.approx(1.0)
    assert sft_loss(s, n, total_length=16).item() == pytest.approx(0.5)


# ----------------------------------------------------------------------------- invariants and limits


def _grads(loss_fn, *inputs):
    inputs = [t.clone().requires_grad_(t.is_floating_point()) for t in inputs]
    loss_fn(*inputs).sum().backward()
    return [t.grad for t in inputs]


def test_redi_alpha_zero_equals_length_normalised_sft_gradient():
    """alpha=0: gradient on y_w is exactly that of -log p(y_w)/|y_w|, and nothing reaches y_l."""
    c, lw, r, ll = torch.tensor([-3.0, -8.0]), torch.tensor([3, 4]), torch.tensor([-6.0, -2.0]), torch.tensor([2, 5])
    gc, _, gr, _ = _grads(lambda *a: redi(*a, alpha=0.0), c, lw, r, ll)
    (gc_sft,) = _grads(lambda x: -x / lw, c)
    torch.testing.assert_close(gc, gc_sft, rtol=0, atol=0)
    assert torch.count_nonzero(gr) == 0


def test_redi_alpha_one_is_symmetric_objective():
    """alpha=1 gives Eq. (4), -c/|w| + r/|l|, in value."""
    c, lw, r, ll = torch.tensor([-3.0, -8.0]), torch.tensor([3, 4]), torch.tensor([-6.0, -2.0]), torch.tensor([2, 5])
    torch.testing.assert_close(redi(c, lw, r, ll, alpha=1.0), -c / lw + r / ll)


@pytest.mark.parametrize("name", ["redi", "dpo", "simpo"])
def test_gradient_raises_chosen_and_lowers_rejected(name):
    """Descent increases log p(y_w) (dL/dc < 0) and decreases log p(y_l) (dL/dr > 0) for every loss."""
    c, lw, r, ll = torch.tensor([-3.0, -8.0]), torch.tensor([3, 4]), torch.tensor([-6.0, -2.0]), torch.tensor([2, 5])
    if name == "dpo":
        gc, gr, _, _ = _grads(lambda c, r, a, b: dpo_loss(c, r, a, b, beta=0.1), c, r, c - 1, r + 1)
    else:
        gc, _, gr, _ = _grads(LOSSES[name], c, lw, r, ll)
    assert (gc < 0).all() and (gr > 0).all()


def test_redi_gradient_magnitudes_are_inverse_lengths():
    """dL/dc = -1/|w| and dL/dr = alpha/|l|: the per-pair weights are constants, unlike DPO/SimPO."""
    c, lw, r, ll = torch.tensor([-3.0]), torch.tensor([4]), torch.tensor([-6.0]), torch.tensor([5])
    gc, _, gr, _ = _grads(lambda *a: redi(*a, alpha=0.8), c, lw, r, ll)
    assert gc.item() == pytest.approx(-0.25) and gr.item() == pytest.approx(0.16)


def test_simpo_small_beta_is_proportional_to_symmetric_objective():
    """Prop. B.3: as beta -> 0, (SimPO(beta) - SimPO(0)) / beta -> sigmoid(gamma) * L_sym, in value and gradient."""
    g = torch.Generator().manual_seed(1)
    c, r = -20 * torch.rand(5, generator=g, dtype=torch.float64), -20 * torch.rand(5, generator=g, dtype=torch.float64)
    lw, ll = torch.randint(1, 30, (5,), generator=g), torch.randint(1, 30, (5,), generator=g)
    gamma, beta = 1.0, 1e-6
    sym = -c / lw + r / ll
    scaled = (simpo_loss(c, lw, r, ll, beta=beta, gamma=gamma) - simpo_loss(c, lw, r, ll, beta=0.0, gamma=gamma)) / beta
    torch.testing.assert_close(scaled, torch.sigmoid(torch.tensor(gamma, dtype=torch.float64)) * sym, rtol=1e-4, atol=1e-8)
    gc, _, gr, _ = _grads(lambda *a: simpo_loss(*a, beta=beta, gamma=gamma), c, lw, r, ll)
    gc_sym, _, gr_sym, _ = _grads(lambda c, lw, r, ll: -c / lw + r / ll, c, lw, r, ll)
    ratio = torch.cat([gc / gc_sym, gr / gr_sym]) / beta
    torch.testing.assert_close(ratio, torch.full_like(ratio, 1 / (1 + math.exp(-gamma))), rtol=1e-5, atol=0)


@pytest.mark.parametrize("fn", [
    lambda lw, ll: redi(torch.zeros(2), lw, torch.zeros(2), ll),
    lambda lw, ll: simpo_loss(torch.zeros(2), lw, torch.zeros(2), ll),
    lambda lw, ll: sft_loss(torch.zeros(2), lw),
])
def test_zero_length_response_is_an_error(fn):
    """A response with no supervised token raises ValueError instead of returning NaN/inf."""
    with pytest.raises(ValueError, match="zero-length"):
        fn(torch.tensor([3, 0]), torch.tensor([2, 2]))


def test_dpo_and_simpo_at_hand_derived_margins():
    """DPO margin (c - c_ref) - (r - r_ref) = 2 at beta 0.5, and SimPO LogPS margin 1 at beta 2, gamma 1:
    both are -log sigmoid(1) = log(1 + e^-1) = 0.3132616875; halving beta or adding gamma moves them as derived."""
    t = torch.tensor
    expected = math.log1p(math.exp(-1.0))                                  # 0.31326168751822286
    # c - c_ref = -10 - (-11) = 1, r - r_ref = -12 - (-11) = -1: margin 2, beta * margin = 1
    assert dpo_loss(t([-10.0]), t([-12.0]), t([-11.0]), t([-11.0]), beta=0.5).item() == pytest.approx(expected)
    assert dpo_loss(t([-10.0]), t([-12.0]), t([-11.0]), t([-11.0]), beta=0.25).item() == \
        pytest.approx(math.log1p(math.exp(-0.5)))
    # LogPS: -6 / 3 = -2 and -12 / 4 = -3: margin 1, beta * margin - gamma = 2 - 1 = 1
    assert simpo_loss(t([-6.0]), t([3]), t([-12.0]), t([4]), beta=2.0, gamma=1.0).item() == pytest.approx(expected)
    assert simpo_loss(t([-6.0]), t([3]), t([-12.0]), t([4]), beta=2.0, gamma=3.0).item() == \
        pytest.approx(math.log1p(math.exp(1.0)))


# ----------------------------------------------------------------------------- log-probabilities


def test_sequence_logps_equals_naive_float64_with_shift_masking_and_empty_rows():
    """Against log_softmax+gather in float64: prompt masks, padding, a fully masked row, chunking."""
    g = torch.Generator().manual_seed(3)
    B, T, V = 4, 11, 37
    logits = torch.randn(B, T, V, generator=g) * 3
    labels = random_labels(B, T, V, prompt_lengths=[3, 1, T, 5], pad_lengths=[0, 4, 0, 2], generator=g)
    expected_sum, expected_n = naive_sequence_logps(logits, labels)
    for chunk in (1, 3, 4, 10, 1024):
        got_sum, got_n = sequence_logps(logits, labels, chunk_size=chunk)
        assert got_sum.dtype == torch.float32
        torch.testing.assert_close(got_sum.double(), expected_sum, rtol=1e-6, atol=1e-5)
        assert got_n.tolist() == expected_n.tolist() == [8, 6, 0, 4]   # T - prompt - padding
    assert got_sum[2].item() == 0.0


def test_sequence_logps_uses_the_one_token_shift():
    """Label t is scored by the logits at t-1: a one-hot logit at t-1 makes that label certain."""
    logits = torch.full((1, 3, 5), -1e4)
    logits[0, 0, 2] = 0.0       # position 0 predicts token 2 with probability ~1
    logits[0, 1, 4] = 0.0       # position 1 predicts token 4
    labels = torch.tensor([[IGNORE_INDEX, 2, 4]])
    total, n = sequence_logps(logits, labels)
    assert n.item() == 2 and total.item() == pytest.approx(0.0, abs=1e-4)
    wrong, _ = sequence_logps(logits, torch.tensor([[IGNORE_INDEX, 4, 2]]))
    assert wrong.item() < -1e3


def test_sequence_logps_bf16_accumulates_in_fp32():
    """bf16 logits give fp32 output equal to the float64 reference on the bf16 values."""
    g = torch.Generator().manual_seed(4)
    logits = (torch.randn(2, 300, 50, generator=g) * 4).bfloat16()
    labels = random_labels(2, 300, 50, [10, 20], [0, 30], g)
    got, _ = sequence_logps(logits, labels, chunk_size=64)
    expected, _ = naive_sequence_logps(logits.double(), labels)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-3)
    # A bf16 running sum over 300 tokens would be off by far more than this.
    assert (got.double() - expected).abs().max() < 1e-2


def test_sequence_logps_gradient_matches_naive():
    """Gradient through the checkpointed chunks equals autograd through the naive version."""
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 9, 13, generator=g, dtype=torch.float64)
    labels = random_labels(3, 9, 13, [2, 4, 9], [1, 0, 0], g)
    weights = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    a = logits.clone().requires_grad_()
    (sequence_logps(a.float(), labels, chunk_size=4)[0].double() * weights).sum().backward()
    b = logits.clone().requires_grad_()
    (naive_sequence_logps(b, labels)[0] * weights).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 5, 7, 16, 64])
def test_chunked_hidden_variant_equals_naive_in_value_and_gradient(chunk):
    """From hidden states + lm_head weight: value and both gradients within 1e-6 relative (fp32)."""
    g = torch.Generator().manual_seed(6)
    B, T, H, V = 3, 29, 16, 41
    hidden = torch.randn(B, T, H, generator=g)
    weight = torch.randn(V, H, generator=g) * 0.5
    labels = random_labels(B, T, V, [4, 10, 2], [0, 5, 11], g)
    upstream = torch.randn(B, generator=g)

    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    s1, n1 = sequence_logps_from_hidden(h1, w1, labels, chunk_size=chunk)
    (s1 * upstream).sum().backward()

    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    s2, n2 = naive_sequence_logps(h2 @ w2.t(), labels)
    (s2.float() * upstream).sum().backward()

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()
    assert n1.tolist() == n2.tolist()
    assert rel(s1, s2.float()) < 1e-6
    assert rel(h1.grad, h2.grad) < 1e-6
    assert rel(w1.grad, w2.grad) < 1e-6


def test_hidden_variant_in_bf16_keeps_fp32_logits_and_matches_autograd():
    """bf16 hidden and weight (FSDP's compute dtype): the logits are the fp32 product of the bf16
    operands, never rounded to bf16 (value within 1e-5 of autograd through
    `log_softmax(h.float() @ W.float().T)`, while rounding the logits to bf16 is off by more than 1e-3);
    the gradients come back in bf16 and equal autograd's to bf16 precision."""
    g = torch.Generator().manual_seed(8)
    hidden = (torch.randn(2, 23, 16, generator=g) * 4).bfloat16()       # logits of ~16-32, as real models'
    weight = (torch.randn(37, 16, generator=g) * 2).bfloat16()
    labels = random_labels(2, 23, 37, [3, 6], [0, 4], g)
    upstream = torch.randn(2, generator=g)
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    s1, _ = sequence_logps_from_hidden(h1, w1, labels, chunk_size=7)
    (s1 * upstream).sum().backward()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    s2, _ = naive_sequence_logps(h2.float() @ w2.float().t(), labels)
    (s2.float() * upstream).sum().backward()
    rounded, _ = naive_sequence_logps((hidden @ weight.t()).float(), labels)      # the old path: bf16 logits
    exact, _ = naive_sequence_logps(hidden.double() @ weight.double().t(), labels)  # fp64 reference
    assert h1.grad.dtype == w1.grad.dtype == torch.bfloat16
    torch.testing.assert_close(s1, s2.float(), rtol=1e-5, atol=1e-5)
    ours_error, rounded_error = (s1.double() - exact).abs().max(), (rounded.double() - exact).abs().max()
    assert ours_error < 1e-4 and rounded_error > 1e-3 and rounded_error > 100 * ours_error, (ours_error, rounded_error)
    torch.testing.assert_close(h1.grad, h2.grad.bfloat16(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(w1.grad, w2.grad.bfloat16(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("logit_scale,softcap", [(0.25, None), (3.0, None), (1.0, 2.0), (0.5, 1.5)])
def test_hidden_variant_with_the_family_head_equals_naive_in_value_and_gradient(logit_scale, softcap):
    """Granite/Cohere's logit scale and Gemma's soft-cap: value and both gradients equal autograd through
    `log_softmax(cap * tanh(scale * h @ W.T / cap))` within 1e-6 relative (fp32), and differ from the
    plain head's (the head is not a no-op at these sizes)."""
    g = torch.Generator().manual_seed(9)
    hidden, weight = torch.randn(2, 19, 16, generator=g), torch.randn(41, 16, generator=g)
    labels = random_labels(2, 19, 41, [3, 5], [0, 2], g)
    upstream = torch.randn(2, generator=g)
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    s1, _ = sequence_logps_from_hidden(h1, w1, labels, chunk_size=5, logit_scale=logit_scale, softcap=softcap)
    (s1 * upstream).sum().backward()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    logits = (h2 @ w2.t()) * logit_scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    s2, _ = naive_sequence_logps(logits, labels)
    (s2.float() * upstream).sum().backward()
    plain, _ = sequence_logps_from_hidden(hidden, weight, labels, chunk_size=5)

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()
    assert rel(s1, s2.float()) < 1e-6
    assert rel(h1.grad, h2.grad) < 1e-6
    assert rel(w1.grad, w2.grad) < 1e-6
    assert rel(plain, s2.float()) > 1e-2


def test_token_logps_per_position_and_hidden_variant_agree():
    """token_logps puts log p(label_t) at position t (0 elsewhere); both variants agree per token."""
    g = torch.Generator().manual_seed(7)
    hidden, weight = torch.randn(2, 12, 8, generator=g), torch.randn(19, 8, generator=g)
    labels = random_labels(2, 12, 19, [3, 0], [2, 0], g)
    from_logits = token_logps(hidden @ weight.t(), labels, chunk_size=5)
    from_hidden = token_logps_from_hidden(hidden, weight, labels, chunk_size=5)
    torch.testing.assert_close(from_logits, from_hidden, rtol=1e-6, atol=1e-6)
    assert (from_logits[labels == IGNORE_INDEX] == 0).all()
    assert (from_logits[:, 0] == 0).all()
    assert (from_logits[:, 1:][labels[:, 1:] != IGNORE_INDEX] < 0).all()


def test_chunked_variant_never_holds_full_logits_in_autograd_graph():
    """Saved tensors of the graph stay far below T x V floats: the logits are rebuilt per chunk."""
    T, H, V, chunk = 512, 8, 4096, 32
    hidden = torch.randn(1, T, H, requires_grad=True)
    weight = torch.randn(V, H, requires_grad=True)
    labels = torch.randint(0, V, (1, T))
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        total, _ = sequence_logps_from_hidden(hidden, weight, labels, chunk_size=chunk)
    assert max(saved) < T * V / 4, max(saved)      # nothing of size [T, V] (or [T/4, V]) is kept
    total.backward()
    assert hidden.grad is not None and weight.grad is not None
