"""Losses for Reinforcement Distillation (REDI) and its baselines, in plain PyTorch.

Paper: "Harnessing Negative Signals: Reinforcement Distillation from Teacher Data for LLM
Reasoning" (arXiv 2505.24850). This file imports only torch: copy it into any project.

Notation (per example or per pair; shapes in brackets, B = batch, T = tokens, V = vocabulary):
    x            the prompt
    y_w, y_l     a correct ("chosen", winning) and an incorrect ("rejected", losing) teacher trace
    log p(y|x)   summed log-probability of the response tokens: `sequence_logps` [B]
    |y|          number of response tokens (the supervised, non-ignored labels)             [B]
    pi_ref       a frozen reference policy (DPO only)

The four objectives (equation numbers from the paper):
    (1) SFT    L = -sum_i log p(y_i|x_i) / sum_i |y_i|                      (token mean)
    (2) DPO    L = -log sigmoid( beta * [ (log p(y_w|x) - log p_ref(y_w|x))
                                         - (log p(y_l|x) - log p_ref(y_l|x)) ] )
    (3) SimPO  L = -log sigmoid( beta * ( log p(y_w|x)/|y_w| - log p(y_l|x)/|y_l| ) - gamma )
    (4) symmetric REINFORCE-style objective
               L = -log p(y_w|x)/|y_w| + log p(y_l|x)/|y_l|
    (5) REDI   L = -log p(y_w|x)/|y_w| + alpha * log p(y_l|x)/|y_l|,   alpha in [0, 1]

REDI is (4) with the push-down on negatives scaled by alpha < 1: the symmetric objective is
unbounded below (the model can lower log p(y_l) forever by degrading everything, the collapse
the paper shows at high learning rates), while alpha = 0 is length-normalised SFT on y_w alone.
No reference model is needed. Paper defaults: REDI alpha=0.8, lr 1e-6; DPO beta=0.001,
lr 2e-7; SimPO beta=2, gamma=1, lr 5e-7 (Qwen2.5-Math-1.5B, global batch 32 pairs, 1 epoch).

Conventions:
  * Log-probabilities follow Hugging Face: `labels` are the input ids with IGNORE_INDEX (-100)
    on the prompt and on padding; the functions here do the one-token shift themselves.
  * Log-probabilities are accumulated in fp32 whatever the logits' dtype, without ever building
    a full fp32 [B, T, V] log-softmax (a 20k-token trace x 151,936 vocabulary is ~12 GB).
  * Preference losses return UNREDUCED per-pair values [B]: the caller averages over the GLOBAL
    batch (all micro-batches and ranks of an optimizer step), not per micro-batch.
  * A response with zero supervised tokens is an error (ValueError), never a silent NaN.

Checked against Hugging Face TRL 1.16.0's own code (2026-11-26, scratch environment; TRL is not a
dependency): `dpo_loss` equals DPOTrainer's sigmoid loss bitwise in fp32; `simpo_loss` equals
CPOTrainer's simpo loss (cpo_alpha=0) within 2e-6 relative in fp32; `token_logps` equals
`trl.trainer.utils.selective_log_softmax` bitwise on fp32 logits, and is more accurate on bf16
logits (TRL's bf16 path is off by up to 0.06 nats per token there; ours by 2e-6). The formulas
are re-derived in tests/test_redi_loss.py so the suite needs no TRL.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


# -----------------------------------------------------------------------------
# log-probabilities of the labels


def _chunk_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) for one chunk: [C, V] logits, [C] targets (valid ids) -> [C] fp32."""
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


_MM_OUT_DTYPE = True   # torch.mm(out_dtype=) is used on CUDA until it raises once


def _mm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b in fp32 accumulation and NOT rounded to bf16 on the way out (bf16 logits of 16-32 cost up to ~0.06
    nats per token: TRL's bf16 path). CUDA: torch.mm(out_dtype=fp32); elsewhere: upcast first."""
    global _MM_OUT_DTYPE
    if a.dtype == torch.float32 and b.dtype == torch.float32:
        return a @ b
    if a.is_cuda and _MM_OUT_DTYPE:
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (RuntimeError, TypeError):   # a torch or GPU without aten::mm.dtype: upcast from now on
            _MM_OUT_DTYPE = False
    return a.float() @ b.float()


def _apply_head(raw: torch.Tensor, logit_scale: float, softcap: float | None) -> torch.Tensor:
    """The family's head after lm_head, in place on fp32 raw = h @ W.T [C, V]: logits = raw * scale,
    then soft-capped as cap * tanh(logits / cap) when softcap is set (Gemma2/3). When soft-capped,
    returns tanh(...) (the caller multiplies by cap), so backward can reuse it."""
    if softcap is not None:
        return raw.mul_(logit_scale / softcap).tanh_()
    return raw.mul_(logit_scale) if logit_scale != 1.0 else raw


class _LogpsFromHidden(torch.autograd.Function):
    """log p(target) from hidden rows [N, H] and the output embedding [V, H] -> [N] fp32, `chunk_size` rows
    at a time, holding ONE fp32 [C, V] block at a time (two in backward when soft-capped). Autograd's graph
    for log_softmax(h @ W.T) keeps four [C, V] tensors in backward (bench/bench_vocab.py), so the backward
    is written out: d log p(t) / d logits = onehot(t) - p, G = g * (onehot - p) built in the rebuilt logits'
    buffer, chained through the head; dh = G @ W, dW = sum over chunks of G.T @ h, in fp32 and cast once
    (bf16 sums over ~32 chunks would round small terms away). Saved: h, W, the targets and logsumexp [N].
    """

    @staticmethod
    def forward(ctx, rows, weight, targets, chunk_size, logit_scale, softcap):
        out, lse = rows.new_empty(len(rows), dtype=torch.float32), rows.new_empty(len(rows), dtype=torch.float32)
        for s in range(0, len(rows), chunk_size):
            logits = _apply_head(_mm_fp32(rows[s:s + chunk_size], weight.t()), logit_scale, softcap)   # [C, V]
            if softcap is not None:
                logits.mul_(softcap)
            picked = logits.gather(-1, targets[s:s + chunk_size].unsqueeze(-1)).squeeze(-1)       # [C]
            shift = logits.amax(dim=-1)                                      # logsumexp, in place:
            lse[s:s + chunk_size] = logits.sub_(shift.unsqueeze(-1)).exp_().sum(-1).log_().add_(shift)
            out[s:s + chunk_size] = picked - lse[s:s + chunk_size]
        ctx.save_for_backward(rows, weight, targets, lse)
        ctx.chunk_size, ctx.logit_scale, ctx.softcap = chunk_size, logit_scale, softcap
        return out

    @staticmethod
    def backward(ctx, grad):                                                 # grad [N]
        rows, weight, targets, lse = ctx.saved_tensors
        chunk_size, scale, cap = ctx.chunk_size, ctx.logit_scale, ctx.softcap
        grad_rows = torch.empty_like(rows) if ctx.needs_input_grad[0] else None
        grad_weight = weight.new_zeros(weight.shape, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        for s in range(0, len(rows), chunk_size):
            h, t, g = rows[s:s + chunk_size], targets[s:s + chunk_size], grad[s:s + chunk_size]
            head = _apply_head(_mm_fp32(h, weight.t()), scale, cap)          # [C, V], rebuilt
            G = (head * cap if cap is not None else head).sub_(lse[s:s + chunk_size].unsqueeze(-1)).exp_()
            G.mul_(-g.unsqueeze(-1)).scatter_add_(-1, t.unsqueeze(-1), g.unsqueeze(-1))  # g * (onehot - p)
            if cap is not None:
                G.mul_(head.square_().neg_().add_(1.0))                      # d cap*tanh(a/cap) / da
            if scale != 1.0:
                G.mul_(scale)
            if grad_rows is not None:
                grad_rows[s:s + chunk_size] = _mm_fp32(G.to(weight.dtype), weight).to(rows.dtype)
            if grad_weight is not None:
                grad_weight += _mm_fp32(G.to(rows.dtype).t(), h)
        return grad_rows, None if grad_weight is None else grad_weight.to(weight.dtype), None, None, None, None


def _check_shapes(rows: torch.Tensor, labels: torch.Tensor) -> None:
    if labels.dim() != 2 or rows.shape[:2] != labels.shape:
        raise ValueError(f"expected [B, T, ...] and labels [B, T], got {tuple(rows.shape)} and {tuple(labels.shape)}")


def _maybe_checkpoint(fn, *args):
    """Run fn, checkpointed when it will be differentiated: its fp32 [C, V] block is rebuilt in
    backward instead of kept, so peak memory is one such block, forward and backward."""
    if torch.is_grad_enabled() and any(a.requires_grad for a in args):
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def token_logps(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                chunk_size: int = 1024) -> torch.Tensor:
    """Per-token log-probabilities of the labels: logits [B, T, V], labels [B, T] -> [B, T] fp32.

    Entry t is log p(labels[t] | input[:t]) and 0 where labels[t] == ignore_index (and at t=0).
    Naive equivalent: `log_softmax(logits[:, :-1].float(), -1).gather(-1, labels[:, 1:])`,
    which builds the full fp32 [B, T, V] tensor; this gathers the label logit and subtracts a
    logsumexp, row by row and `chunk_size` positions at a time (slices of the logits are views,
    so nothing of size [B, T, V] is copied), skipping chunks with no supervised label. Use
    per-token values for packed rows (several sequences per row), summing them per sequence.
    """
    _check_shapes(logits, labels)
    batch, length = labels.shape
    targets = labels[:, 1:]                          # [B, T-1]: what position t-1 predicts
    valid = targets != ignore_index
    valid_cpu = valid.cpu()                          # one host sync instead of one per chunk
    safe_targets = targets.masked_fill(~valid, 0)
    out_rows = []
    for b in range(batch):
        pieces = [logits.new_zeros(1, dtype=torch.float32)]   # position 0 has no prediction
        for start in range(0, length - 1, chunk_size):
            end = min(start + chunk_size, length - 1)
            if not valid_cpu[b, start:end].any():
                pieces.append(logits.new_zeros(end - start, dtype=torch.float32))
                continue
            logps = _maybe_checkpoint(_chunk_logps, logits[b, start:end], safe_targets[b, start:end])
            pieces.append(logps * valid[b, start:end])
        out_rows.append(torch.cat(pieces))
    return torch.stack(out_rows)


def token_logps_from_hidden(hidden: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor,
                            ignore_index: int = IGNORE_INDEX, chunk_size: int = 1024, logit_scale: float = 1.0,
                            softcap: float | None = None) -> torch.Tensor:
    """Memory-lean `token_logps` from final hidden states [B, T, H] and `lm_head.weight` [V, H]: only the
    supervised positions' logits are formed, `chunk_size` at a time, and rebuilt in backward, so peak extra
    memory is one chunk_size x V fp32 block (1024 x 151,936 x 4 = 0.6 GB), not T x V x 4 per sequence.
    logits = softcap(logit_scale * hidden @ W.T), softcap(z) = cap * tanh(z / cap): Qwen2/2.5, Llama,
    Mistral scale 1, no cap; Granite 1 / logits_scaling; Cohere logit_scale; Gemma2/3 a cap. No head bias.
    """
    _check_shapes(hidden, labels)
    batch, length = labels.shape
    targets = labels[:, 1:].reshape(-1)                                  # [B*(T-1)]
    positions = (targets != ignore_index).nonzero().squeeze(1)           # supervised positions [N]
    rows = hidden[:, :-1].reshape(-1, hidden.shape[-1]).index_select(0, positions)   # [N, H]
    kept_targets = targets.index_select(0, positions)                     # [N]
    values = _LogpsFromHidden.apply(rows, lm_head_weight, kept_targets, chunk_size, float(logit_scale),
                                    None if softcap is None else float(softcap))
    flat = hidden.new_zeros(targets.numel(), dtype=torch.float32).index_copy(0, positions, values)
    return torch.cat([flat.new_zeros(batch, 1), flat.view(batch, length - 1)], dim=1)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                   chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log p(response | prompt) per row and its token count.

    logits [B, T, V] (any float dtype), labels [B, T] with ignore_index on prompt and padding.
    Returns (logps [B] fp32, lengths [B] int64: supervised tokens |y|). Rows with no supervised token give (0, 0).
    """
    per_token = token_logps(logits, labels, ignore_index, chunk_size)
    return per_token.sum(-1), (labels[:, 1:] != ignore_index).sum(-1)


def sequence_logps_from_hidden(hidden: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor,
                               ignore_index: int = IGNORE_INDEX, chunk_size: int = 1024, logit_scale: float = 1.0,
                               softcap: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`sequence_logps` from hidden states [B, T, H] and lm_head weight [V, H]; see token_logps_from_hidden."""
    per_token = token_logps_from_hidden(hidden, lm_head_weight, labels, ignore_index, chunk_size, logit_scale, softcap)
    return per_token.sum(-1), (labels[:, 1:] != ignore_index).sum(-1)


def _check_lengths(**lengths: torch.Tensor) -> None:
    """ValueError on a zero-length response (a host sync, like the nonzero() of the supervised positions)."""
    for name, value in lengths.items():
        if (value <= 0).any():
            raise ValueError(f"{name} has a zero-length response at rows {torch.nonzero(value <= 0).flatten().tolist()}: "
                             f"every response needs at least one supervised token")


# -----------------------------------------------------------------------------
# losses


def sft_loss(logps: torch.Tensor, lengths: torch.Tensor, total_length: torch.Tensor | float | None = None) -> torch.Tensor:
    """Eq. (1): token-mean negative log-likelihood over the batch it is given. Returns a scalar.

    logps [B] summed log p(y|x), lengths [B] = |y|. When this batch is one micro-batch of a larger
    optimizer step, pass `total_length` = sum of |y| over the WHOLE step (all micro-batches and ranks)
    so that summing the micro-batch losses gives the step's token mean. Unlike the pair losses it is
    reduced: a token mean is not a mean of per-example values. Paper recipe: lr 5e-5, global batch 128,
    3-5 epochs.
    """
    _check_lengths(lengths=lengths)
    denominator = lengths.sum() if total_length is None else total_length
    return -logps.sum() / denominator


def redi_loss(chosen_logps: torch.Tensor, chosen_lengths: torch.Tensor, rejected_logps: torch.Tensor,
              rejected_lengths: torch.Tensor, alpha: float = 0.8) -> torch.Tensor:
    """Eq. (5): -log p(y_w|x)/|y_w| + alpha * log p(y_l|x)/|y_l|. All inputs [B]; returns [B].

    alpha weighs the push-down on the incorrect trace: 0 is length-normalised SFT on y_w,
    1 is the symmetric objective (4), which the paper finds collapses (both log-probs fall) at
    usable learning rates. Paper default alpha=0.8 with lr 1e-6. The loss is unbounded below
    for alpha > 0; it is the gradient, not the value, that matters.
    """
    _check_lengths(chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    return -chosen_logps / chosen_lengths + alpha * rejected_logps / rejected_lengths


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """Eq. (2): -log sigmoid(beta * ((c - c_ref) - (r - r_ref))). All inputs summed logps [B]; returns [B].

    beta is the strength of the implicit KL penalty to the frozen reference (larger = stay closer).
    Equals ln 2 when the policy equals the reference. Implicit rewards are
    beta * (c - c_ref) and beta * (r - r_ref). Paper's tuned setting: beta=0.001, lr 2e-7.
    Matches TRL DPOTrainer with loss_type="sigmoid" and no label smoothing.
    """
    margin = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)
    return -F.logsigmoid(beta * margin)


def simpo_loss(chosen_logps: torch.Tensor, chosen_lengths: torch.Tensor, rejected_logps: torch.Tensor,
               rejected_lengths: torch.Tensor, beta: float = 2.0, gamma: float = 1.0) -> torch.Tensor:
    """Eq. (3): -log sigmoid(beta * (c/|y_w| - r/|y_l|) - gamma). All inputs [B]; returns [B].

    beta scales the length-normalised log-prob margin; gamma is the target reward margin.
    No reference model. Paper default beta=2, gamma=1, lr 5e-7. As beta -> 0 the gradient is
    beta * sigmoid(gamma) times that of the symmetric objective (4) (paper Appendix B, Prop. B.3).
    Matches TRL CPOTrainer with loss_type="simpo", cpo_alpha=0 (TRL's simpo_gamma is this gamma;
    the SimPO authors' code writes it as beta * gamma_beta_ratio).
    """
    _check_lengths(chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    margin = chosen_logps / chosen_lengths - rejected_logps / rejected_lengths
    return -F.logsigmoid(beta * margin - gamma)


# The objectives by name (train_redi.py --loss). A pair loss's arguments are named after the per-pair
# statistic it takes (chosen_logps, chosen_lengths, rejected_logps, rejected_lengths, ref_chosen_logps,
# ref_rejected_logps) or after its hyperparameter, so a caller can pass them by keyword; "sft" is
# Eq. (1), stage 1's loss and stage 2's "just more SFT" control on the chosen traces.
LOSSES = {
    "redi": redi_loss,
    "dpo": dpo_loss,
    "simpo": simpo_loss,
    "sft": sft_loss,
}
