"""Sampling for evaluate.py: the model, and a continuous-batching sampler with a preallocated KV cache.

evaluate.py owns the evaluation (prompts, resume, grading, metrics, reporting); this module owns
turning prompts into samples:
    load_model(path, device, dtype) -> (model, tokenizer);  stop_token_ids(model, tokenizer)
    sample_pool(model, jobs, max_new_tokens, temperature, top_p, stop_ids, rows, sync_every=16)
        jobs: [(key, prompt_ids, seed)] -> yields (key, generated ids, finish reason) as samples end;
        rows="auto": as many as fit in free accelerator memory (auto_rows), AUTO_ROWS_OFF_CUDA elsewhere
    sample_next(logits, temperature, top_p, generators): one token per row, each from its own
        seeded generator, so a sample's tokens do not depend on what else is in the pool
    check_engine(model): once before sampling, the engine's log-probabilities against the model's own
        forward on a short probe; InputError (use --engine vllm) where they differ
The engine builds every attention mask itself, per row and per layer type (full, sliding window), so it
runs any decoder whose layers take a ready mask (Llama, Mistral, Qwen2/3, Gemma2/3, Phi3, OLMo2, Granite,
SmolLM3, Cohere: tests/test_families_generate.py); samples end at max_new_tokens or the model's context.
torch is imported inside the functions, so `import evaluate` (and `--help`, `--responses`) stays
free of it. How the pool works and where reproducibility can break: docs/evaluation.md.
"""
from __future__ import annotations

import inspect
import os

from cli import InputError


def check_model(path):
    """--model is a local directory holding a config.json, or looks like a hub id ORG/NAME (which
    transformers then resolves); otherwise InputError, before any process group or download."""

    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise InputError(f"--model {path}: no config.json; not a Hugging Face model directory")
    elif os.path.exists(path) or path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise InputError(f"--model {path}: no such directory (expected a Hugging Face model directory, "
                         f"or a hub id ORG/NAME)")


def load_model(path, device, dtype):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer


    torch_dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32, "float32": torch.float32,
                   "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    except (OSError, ValueError) as e:  # transformers' words for "no model there" (offline hub, missing files)
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"--model {path}: cannot load a model and tokenizer: {first_line}") from None
    return model.to(device).eval(), tokenizer


def stop_token_ids(model, tokenizer):
    """Where a sample ends, for both engines: the tokenizer's eos, every eos of the model's generation
    config (an int or a list; Qwen's instruct models list several) and the chat template's end-of-turn
    token (data.end_of_turn_id). All three, because checkpoints disagree: Qwen2.5-Math-1.5B (base),
    whose tokenizer files a fine-tuned checkpoint keeps, has eos `<|endoftext|>` in its tokenizer and
    generation config, while its chat template, and so training, ends a turn with `<|im_end|>`.
    `model`: anything with .generation_config (vllm_engine passes the one read from the files)."""
    from data import end_of_turn_id

    ids = {tokenizer.eos_token_id, end_of_turn_id(tokenizer)}
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(config_eos if isinstance(config_eos, (list, tuple)) else [config_eos])
    return sorted(i for i in ids if i is not None)


# --batch-size auto (pool rows sized by memory)
AUTO_ROWS_OFF_CUDA = 16  # the old default; on CPU a wider pool is slower (BENCHMARKS.md, bench_engines.py)
AUTO_MEMORY_FRACTION = 0.8  # of the free memory after the weights: headroom for the prefill's and step's activations
SAMPLING_BYTES_PER_LOGIT = 48  # ~12 fp32 [rows, V] temporaries alive at once in sample_next's top-p path


def pool_row_bytes(layers, kv_heads, head_dim, dtype_bytes, capacity, vocab):
    """Memory one pool row holds: its KV cache, layers x 2 (keys, values) x kv_heads x head_dim x dtype
    bytes x capacity slots, plus its share of the sampling step's [rows, V] temporaries. Qwen2.5-Math-1.5B,
    bf16, 32k slots: 28 x 2 x 2 x 128 x 2 x 32768 = 0.875 GiB of KV cache per row."""
    return layers * 2 * kv_heads * head_dim * dtype_bytes * capacity + vocab * SAMPLING_BYTES_PER_LOGIT


def rows_that_fit(free_bytes, row_bytes, fraction=AUTO_MEMORY_FRACTION):
    """Pool rows for `fraction` of `free_bytes`, at least 1."""
    return max(1, int(free_bytes * fraction) // row_bytes)


def auto_rows(model, capacity):
    """--batch-size auto: on CUDA the rows that fit in the free memory (torch.cuda.mem_get_info, read with
    the weights loaded) at `capacity` KV slots per row; elsewhere AUTO_ROWS_OFF_CUDA."""
    import torch

    p = next(model.parameters())
    if p.device.type != "cuda":
        return AUTO_ROWS_OFF_CUDA
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    row_bytes = pool_row_bytes(config.num_hidden_layers, config.num_key_value_heads, head_dim, p.element_size(),
                               capacity, model.get_output_embeddings().weight.shape[0])
    free_bytes, _ = torch.cuda.mem_get_info(p.device)
    return rows_that_fit(free_bytes, row_bytes)


def model_name(model):
    """How an error names a model: its path or hub id, and its type."""
    return f"model {getattr(model, 'name_or_path', '') or '?'} ({model.config.model_type})"


def attention_windows(model):
    """The masks the decoder takes from us, as sliding windows (None: full causal attention), checked once.
    With sliding layers among config.layer_types (Qwen2 with use_sliding_window, Gemma2/3):
    {layer type: window}; the decoder uses a dict of masks by type as is. Otherwise one window for the one
    4D mask every layer gets: config.sliding_window where there are no layer types (Mistral and Phi3 window
    every layer when it is set), None (full) where every layer is full (Llama, Qwen3, OLMo2, ...); a
    tensor, since the decoders that take a dict also take one, not the other way round.
    A layer type with no mask we can build (chunked, linear attention) is an InputError."""
    config = model.config
    layer_types = getattr(config, "layer_types", None)
    if layer_types is None:
        return getattr(config, "sliding_window", None)
    known = {"full_attention": None, "sliding_attention": getattr(config, "sliding_window", None)}
    for layer_type in layer_types:
        if layer_type not in known:
            raise InputError(f"{model_name(model)} has '{layer_type}' layers, which the native engine cannot mask; "
                             f"use --engine vllm or another model")
    windows = {layer_type: known[layer_type] for layer_type in layer_types}
    return windows if any(window is not None for window in windows.values()) else None


def attention_masks(windows, query_positions, width, dtype):
    """Additive masks [B, 1, Q, width] for attention_windows' plan (a dict by layer type, or one tensor).
    Slot kv holds position kv (a row's tokens sit at slots 0, 1, ...), visible to the query at position q
    iff kv <= q and, in a windowed layer, kv > q - window (transformers' sliding_window_overlay). Built
    here, per row, since each pool row is at its own position; transformers' builder assumes one for all.
    query_positions: [B, Q]."""
    import torch

    kv = torch.arange(width, device=query_positions.device)
    q = query_positions[:, None, :, None]  # [B, 1, Q, 1]

    def additive(window):
        hidden = kv > q if window is None else (kv > q) | (kv <= q - window)  # [B, 1, Q, width]
        return torch.zeros(hidden.shape, dtype=dtype, device=kv.device).masked_fill_(hidden, torch.finfo(dtype).min)

    if isinstance(windows, dict):
        return {layer_type: additive(window) for layer_type, window in windows.items()}
    return additive(windows)


def _forward(model, input_ids, masks, positions, cache):
    """Logits of the last position [B, V]. `masks` (attention_masks) go to the layers as they are: a 4D
    tensor or a dict by layer type makes transformers build no mask of its own. `cache=` in
    transformers 5, `past_key_values=` before."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(input_ids=input_ids, attention_mask=masks, position_ids=positions,
                use_cache=True, logits_to_keep=1, **{name: cache})
    return out.logits[:, -1, :]


def sample_next(logits, temperature, top_p, generators):
    """Next token per row [A] from logits [A, V]: temperature, then top-p (keep the most likely
    tokens until their mass reaches top_p, as transformers' TopPLogitsWarper), then an
    exponential race (argmax p / E, E ~ Exp(1): an exact sample from p) with each row's own
    generator, so a row's draw does not depend on the other rows."""
    import torch

    if temperature == 0:
        return logits.argmax(-1)
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_logp, order = logp.sort(dim=-1, descending=True)
        probs = sorted_logp.exp()
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p  # mass before this token already enough
        logp = logp.masked_fill(torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted), float("-inf"))
    noise = torch.stack([torch.empty(logp.shape[-1], device=logp.device).exponential_(generator=g)
                         for g in generators])
    return (logp - noise.clamp_min(1e-30).log()).argmax(-1)


class PoolCache:
    """A preallocated KV cache for a fixed pool of rows: per layer keys and values
    [rows, kv_heads, capacity, head_dim]. Row r holds its prompt in slots [0, L) and each fed token
    at the next slot, so slots [0, lengths[r]] are its context; nothing grows by concatenation.
    Sliding-window layers keep every slot too: their masks hide what falls out of the window.
    It provides the one method transformers' attention layers call, update(). In prefill mode
    (`prefill = []`) it passes one prompt's keys through and keeps them for copying into rows."""

    def __init__(self, model, rows, capacity):
        import torch

        config, p = model.config, next(model.parameters())
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        shape = (rows, config.num_key_value_heads, capacity, head_dim)
        self.keys = [p.new_zeros(shape) for _ in range(config.num_hidden_layers)]
        self.values = [p.new_zeros(shape) for _ in range(config.num_hidden_layers)]
        self.write_at, self.width, self.prefill = None, 0, None  # [R] slots of this step's token
        self.rows = torch.arange(rows, device=p.device)
        self.windows, self.dtype = attention_windows(model), p.dtype  # the masks' plan, checked here once

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if self.prefill is not None:  # [1, kv, L, hd]: attention within the prompt only
            self.prefill.append((key_states[0], value_states[0]))
            return key_states, value_states
        rows, keys, values = self.rows, self.keys[layer_idx], self.values[layer_idx]
        keys[rows, :, self.write_at] = key_states[:, :, 0]  # [R, kv, hd] at each row's own slot
        values[rows, :, self.write_at] = value_states[:, :, 0]
        return keys[:, :, :self.width], values[:, :, :self.width]

    def load_row(self, row, kv):
        """Row `row` starts from a prefilled prompt: kv = per-layer (keys, values) [kv_heads, L, hd]."""
        for layer, (k, v) in enumerate(kv):
            self.keys[layer][row, :, :k.shape[1]], self.values[layer][row, :, :v.shape[1]] = k, v

    def keep(self, index):
        """Drop rows (the pool shrinks at the tail of the queue), one tensor at a time: each old tensor is
        freed as its copy replaces it, so the peak is the cache plus one layer's keys, not plus a whole
        new cache (which could run out of memory with --batch-size auto filling the accelerator)."""
        for tensors in (self.keys, self.values):
            for layer in range(len(tensors)):
                tensors[layer] = tensors[layer][index]
        self.rows = self.rows[:len(index)]


def _prefill(model, cache, ids):
    """(logits of the prompt's last position [V], per-layer (keys, values) [kv, L, hd]); the prompt
    alone, unpadded, so its KV does not depend on the rest of the pool."""
    import torch

    device = next(model.parameters()).device
    positions = torch.arange(len(ids), device=device)[None]  # [1, L]
    cache.prefill = []
    logits = _forward(model, torch.tensor([ids], device=device),
                      attention_masks(cache.windows, positions, len(ids), cache.dtype), positions, cache)
    kv, cache.prefill = cache.prefill, None
    return logits[0], kv


def _decode_step(model, cache, tokens, lengths, width):
    """Logits [R, V] after feeding tokens [R], row r's at slot and position lengths[r]; `width` = the
    longest row's length + 1 (the slots any row sees). A row past the model's context (finished, found
    at the next sync) is fed at the last position: a rescaling RoPE (dynamic NTK) reads the batch's
    largest position, and would change every row's step."""
    cache.write_at, cache.width = lengths, width
    masks = attention_masks(cache.windows, lengths[:, None], width, cache.dtype)
    positions = lengths.clamp(max=context_length(model) - 1)[:, None]
    return _forward(model, tokens[:, None], masks, positions, cache)


def context_length(model):
    """Positions the model has, config.max_position_embeddings: where a sample ends ("length"), as vLLM
    ends it at its default max_model_len."""
    return getattr(model.config, "max_position_embeddings", None) or 2**62


# start-up self-check
PROBE_PROMPTS = (88, 11)  # prompt lengths: past a small sliding window, and crossing one of 16 while decoding
PROBE_STEPS = 8  # teacher-forced decode steps after the prefill
PROBE_TOP = 5  # the tokens compared at each position: the model's most likely ones
PROBE_TOLERANCE = {"float32": 1e-3, "half": 0.3}  # nats; bf16/fp16 forwards differ by summation order


def _engine_logps(model, sequences, prompt_lengths):
    """[R, PROBE_STEPS + 1, V] log-probabilities the engine computes for the sequences side by side in
    one pool: each prompt prefilled alone, then the rest of its sequence fed one token per step."""
    import torch

    device = next(model.parameters()).device
    cache = PoolCache(model, len(sequences), max(prompt_lengths) + PROBE_STEPS)
    first = []
    for row, (ids, n) in enumerate(zip(sequences, prompt_lengths)):
        logits, kv = _prefill(model, cache, ids[:n])
        cache.load_row(row, kv)
        first.append(logits)
    steps, lengths = [torch.stack(first)], torch.tensor(prompt_lengths, device=device)
    for i in range(PROBE_STEPS):
        tokens = torch.tensor([ids[n + i] for ids, n in zip(sequences, prompt_lengths)], device=device)
        steps.append(_decode_step(model, cache, tokens, lengths, int(lengths.max()) + 1))
        lengths += 1
    return torch.log_softmax(torch.stack(steps, 1).float(), -1)


def check_engine(model):
    """Run once before sampling, since no list of families foresees every model: two probe sequences of
    random tokens (PROBE_PROMPTS + PROBE_STEPS) go through the engine (_prefill, then PoolCache rows
    decoding teacher-forced side by side), and at every decoded position the log-probabilities of the
    PROBE_TOP tokens the model's plain forward `model(ids)` likes best must agree within PROBE_TOLERANCE.
    A mismatch, or a forward that fails on our masks or cache, is an InputError naming the model."""
    import torch

    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    attention_windows(model)  # an unsupported layer type is refused as such, before any forward
    generator, vocab = torch.Generator().manual_seed(0), model.get_input_embeddings().num_embeddings
    sequences = [torch.randint(vocab, (n + PROBE_STEPS,), generator=generator).tolist() for n in PROBE_PROMPTS]
    with torch.no_grad():
        try:
            got = _engine_logps(model, sequences, PROBE_PROMPTS)
        except Exception as e:  # the model's code, given our masks and cache: any failure means "not supported"
            first_line = (str(e).strip().splitlines() or [""])[0]
            raise InputError(f"{model_name(model)}: the native engine's forward fails on it ({type(e).__name__}: "
                             f"{first_line}); use --engine vllm") from e
        want = torch.stack([model(input_ids=torch.tensor([ids], device=device)).logits[0, n - 1:].float()
                            for ids, n in zip(sequences, PROBE_PROMPTS)]).log_softmax(-1)  # [R, S + 1, V]
    top = want.topk(PROBE_TOP, dim=-1).indices
    worst = (got.gather(-1, top) - want.gather(-1, top)).abs().max().item()
    tolerance = PROBE_TOLERANCE["float32" if dtype == torch.float32 else "half"]
    if not worst <= tolerance:  # also catches NaN
        raise InputError(f"{model_name(model)}: the native engine's log-probabilities differ from the model's "
                         f"own forward by up to {worst:.3g} nats (tolerance {tolerance:g}): the engine does not "
                         f"support this model's attention; use --engine vllm")


def sample_pool(model, jobs, max_new_tokens, temperature, top_p, stop_ids, rows, sync_every=16):
    """Sample every job = (key, prompt ids, seed) with continuous batching; yields (key, new token
    ids, "stop" | "length") as samples finish, in finish order.

    A pool of `rows` sequences decodes one token per step over a PoolCache; every `sync_every` steps
    (the only host sync) finished rows are found, yielded, and refilled from the queue with the
    next job, whose prompt is prefilled alone (once per distinct prompt: the n samples of a problem
    share it). Each job samples with its own torch.Generator(seed), one draw per token, so its
    tokens do not depend on the other rows. When the queue is empty the pool shrinks by halves.
    A sample ends "length" after max_new_tokens, or when prompt + new tokens fill the model's context
    (context_length); a prompt that fills it alone is an InputError, as vLLM refuses it.
    rows="auto": auto_rows at this call's capacity (the longest prompt + max_new_tokens, at most the
    context, + sync_every)."""
    import torch

    device = next(model.parameters()).device
    queue = list(jobs)[::-1]  # pop() takes the next job
    if not queue:
        return
    context, longest = context_length(model), max(len(ids) for _, ids, _ in queue)
    if longest >= context:
        raise InputError(f"a prompt of {longest} tokens fills the {context} positions of {model_name(model)} "
                         f"(config.max_position_embeddings): no room to generate")
    capacity = min(longest + max_new_tokens, context) + sync_every
    if rows == "auto":
        rows = auto_rows(model, capacity)
        print(f"sample_pool: --batch-size auto: {rows} rows of {capacity} KV slots on {device}", flush=True)
    rows = min(rows, len(queue))
    cache = PoolCache(model, rows, capacity)
    stop = torch.tensor(stop_ids, device=device)
    vocab = model.get_output_embeddings().weight.shape[0]
    logits = torch.zeros((rows, vocab), device=device)
    lengths = torch.zeros(rows, dtype=torch.long, device=device)  # [R] valid slots per row
    host_lengths, jobs_in, tokens, gens = [0] * rows, [None] * rows, [[] for _ in range(rows)], [None] * rows
    budgets = [0] * rows  # new tokens each row's sample may have: max_new_tokens, or less near the context's end
    idle_gen, last_prompt = torch.Generator(device=device).manual_seed(0), (None, None)

    def refill(r):
        nonlocal last_prompt
        key, ids, seed = queue.pop()
        if last_prompt[0] != tuple(ids):
            last_prompt = (tuple(ids), _prefill(model, cache, ids))
        first_logits, kv = last_prompt[1]
        cache.load_row(r, kv)
        logits[r], lengths[r], host_lengths[r] = first_logits, len(ids), len(ids)
        jobs_in[r], tokens[r], gens[r] = key, [], torch.Generator(device=device).manual_seed(seed)
        budgets[r] = min(max_new_tokens, context - len(ids))

    for r in range(rows):
        refill(r)
    window = []
    with torch.no_grad():
        while any(j is not None for j in jobs_in):
            nxt = sample_next(logits, temperature, top_p, [g or idle_gen for g in gens])  # [R]
            window.append(nxt)
            logits = _decode_step(model, cache, nxt, lengths, max(host_lengths) + 1).float()
            lengths += 1
            host_lengths = [n + 1 for n in host_lengths]
            if len(window) < sync_every:
                continue
            drawn, window = torch.stack(window, 1), []  # [R, k]
            hit = torch.isin(drawn, stop).tolist()  # the one host sync per window
            drawn = drawn.tolist()
            for r, key in enumerate(jobs_in):
                if key is None:
                    lengths[r], host_lengths[r] = 0, 0  # an idle row: keep its writes inside the buffer
                    continue
                room = budgets[r] - len(tokens[r])
                first_stop = next((i for i, h in enumerate(hit[r][:room]) if h), None)
                tokens[r] += drawn[r][:room if first_stop is None else first_stop + 1]
                if first_stop is not None or len(tokens[r]) == budgets[r]:
                    yield key, tokens[r], "stop" if first_stop is not None else "length"
                    jobs_in[r], gens[r] = None, None
                    if queue:
                        refill(r)
                    else:
                        lengths[r], host_lengths[r] = 0, 0
            idle = [r for r, j in enumerate(jobs_in) if j is None]
            if not queue and idle and len(idle) * 2 >= len(jobs_in):
                keep = [r for r, j in enumerate(jobs_in) if j is not None]
                index = torch.tensor(keep, dtype=torch.long, device=device)
                cache.keep(index)
                logits, lengths = logits[index], lengths[index]
                host_lengths, jobs_in = [host_lengths[r] for r in keep], [jobs_in[r] for r in keep]
                tokens, gens, budgets = [tokens[r] for r in keep], [gens[r] for r in keep], [budgets[r] for r in keep]
