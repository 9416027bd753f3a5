"""Sampling for evaluate.py: the model, and a continuous-batching sampler with a preallocated KV cache.

evaluate.py owns the evaluation (prompts, resume, grading, metrics, reporting); this module owns
turning prompts into samples:
    load_model(path, device, dtype) -> (model, tokenizer);  stop_token_ids(model, tokenizer)
    sample_pool(model, jobs, max_new_tokens, temperature, top_p, stop_ids, rows, sync_every=16)
        jobs: [(key, prompt_ids, seed)] -> yields (key, generated ids, finish reason) as samples end;
        rows="auto": as many as fit in free accelerator memory (auto_rows), AUTO_ROWS_OFF_CUDA elsewhere
    sample_next(logits, temperature, top_p, generators): one token per row, each from its own
        seeded generator, so a sample's tokens do not depend on what else is in the pool
torch is imported inside the functions, so `import evaluate` (and `--help`, `--responses`) stays
free of it. How the pool works and where reproducibility can break: evaluate.py's docstring.
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


def _forward(model, input_ids, mask, positions, cache):
    """Logits of the last position [B, V]. `mask` is the additive 4D mask [B, 1, q, kv], handed to every
    layer as is (a dict by layer type: transformers then builds no mask of its own); `cache=` in
    transformers 5, `past_key_values=` before."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(input_ids=input_ids, attention_mask={"full_attention": mask}, position_ids=positions,
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

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if self.prefill is not None:  # [1, kv, L, hd]: attention within the prompt only
            self.prefill.append((key_states[0], value_states[0]))
            return key_states, value_states
        rows, keys, values = self.rows, self.keys[layer_idx], self.values[layer_idx]
        keys[rows, :, self.write_at] = key_states[:, :, 0]  # [R, kv, hd] at each row's own slot
        values[rows, :, self.write_at] = value_states[:, :, 0]
        return keys[:, :, :self.width], values[:, :, :self.width]

    def keep(self, index):
        """Drop rows (the pool shrinks at the tail of the queue): one copy per layer."""
        self.keys = [k[index] for k in self.keys]
        self.values = [v[index] for v in self.values]
        self.rows = self.rows[:len(index)]


def _prefill(model, cache, ids):
    """(logits of the prompt's last position [V], per-layer (keys, values) [kv, L, hd]); the prompt
    alone, unpadded, so its KV does not depend on the rest of the pool."""
    import torch

    device = next(model.parameters()).device
    n = len(ids)
    mask = torch.zeros((1, 1, n, n), dtype=next(model.parameters()).dtype, device=device)
    mask.masked_fill_(torch.ones((n, n), dtype=torch.bool, device=device).triu(1), torch.finfo(mask.dtype).min)
    cache.prefill = []
    logits = _forward(model, torch.tensor([ids], device=device), mask, torch.arange(n, device=device)[None], cache)
    kv, cache.prefill = cache.prefill, None
    return logits[0], kv


def sample_pool(model, jobs, max_new_tokens, temperature, top_p, stop_ids, rows, sync_every=16):
    """Sample every job = (key, prompt ids, seed) with continuous batching; yields (key, new token
    ids, "stop" | "length") as samples finish, in finish order.

    A pool of `rows` sequences decodes one token per step over a PoolCache; every `sync_every` steps
    (the only host sync) finished rows are found, yielded, and refilled from the queue with the
    next job, whose prompt is prefilled alone (once per distinct prompt: the n samples of a problem
    share it). Each job samples with its own torch.Generator(seed), one draw per token, so its
    tokens do not depend on the other rows. When the queue is empty the pool shrinks by halves.
    rows="auto": auto_rows at this call's capacity (the longest prompt + max_new_tokens + sync_every)."""
    import torch

    if "sliding_attention" in getattr(model.config, "layer_types", None) or []:
        raise ValueError("sample_pool: sliding-window attention layers are not supported")
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    queue = list(jobs)[::-1]  # pop() takes the next job
    if not queue:
        return
    capacity = max(len(ids) for _, ids, _ in queue) + max_new_tokens + sync_every
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
    idle_gen, last_prompt = torch.Generator(device=device).manual_seed(0), (None, None)

    def refill(r):
        nonlocal last_prompt
        key, ids, seed = queue.pop()
        if last_prompt[0] != tuple(ids):
            last_prompt = (tuple(ids), _prefill(model, cache, ids))
        first_logits, kv = last_prompt[1]
        for layer, (k, v) in enumerate(kv):
            cache.keys[layer][r, :, :len(ids)], cache.values[layer][r, :, :len(ids)] = k, v
        logits[r], lengths[r], host_lengths[r] = first_logits, len(ids), len(ids)
        jobs_in[r], tokens[r], gens[r] = key, [], torch.Generator(device=device).manual_seed(seed)

    for r in range(rows):
        refill(r)
    window = []
    with torch.no_grad():
        while any(j is not None for j in jobs_in):
            nxt = sample_next(logits, temperature, top_p, [g or idle_gen for g in gens])  # [R]
            window.append(nxt)
            cache.write_at, cache.width = lengths, max(host_lengths) + 1
            mask = torch.zeros((len(host_lengths), 1, 1, cache.width), dtype=dtype, device=device)
            mask.masked_fill_((torch.arange(cache.width, device=device) > lengths[:, None])[:, None, None],
                              torch.finfo(dtype).min)
            logits = _forward(model, nxt[:, None], mask, lengths[:, None], cache).float()
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
                room = max_new_tokens - len(tokens[r])
                first_stop = next((i for i, h in enumerate(hit[r][:room]) if h), None)
                tokens[r] += drawn[r][:room if first_stop is None else first_stop + 1]
                if first_stop is not None or len(tokens[r]) == max_new_tokens:
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
                tokens, gens = [tokens[r] for r in keep], [gens[r] for r in keep]


