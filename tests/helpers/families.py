"""Tiny random models of the mainstream decoder families, saved as model dirs (the family matrix).

Each family is built from its own transformers config class with the family's distinctive parts
switched on at sizes where they matter: Granite's logit scaling and multipliers, Gemma2/3's final
logit soft-capping (2.0, so it bends the logits) and attention soft-capping, Cohere's logit scale,
Mistral's and Gemma's sliding windows (16 tokens, so a test prompt can be longer than the window),
Qwen2 with its sliding-window layers switched on, Qwen3/OLMo2's q/k norms, Phi3's fused
projections, SmolLM3's NoPE layers. The tokenizer is the project's tiny one (Qwen2.5-Math base's
special tokens), so every family reads the same chat-templated data.

    FAMILIES                       names the matrix runs over
    save_family_model(name, dir)   -> dir, holding config.json, weights, tokenizer, generation config
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

WINDOW = 16  # sliding window of the windowed families: shorter than the tests' prompts

# model_type -> (config class name, family-specific config fields)
_SPECS = {
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {"sliding_window": WINDOW}),
    "qwen2": ("Qwen2Config", {}),
    "qwen2_sliding": ("Qwen2Config", {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1}),
    "qwen3": ("Qwen3Config", {"head_dim": 16}),
    "gemma2": ("Gemma2Config", {"head_dim": 16, "sliding_window": WINDOW, "final_logit_softcapping": 2.0,
                                "attn_logit_softcapping": 5.0, "query_pre_attn_scalar": 16}),
    "gemma3": ("Gemma3TextConfig", {"head_dim": 16, "sliding_window": WINDOW, "final_logit_softcapping": 2.0,
                                    "query_pre_attn_scalar": 16,
                                    "layer_types": ["sliding_attention", "full_attention"]}),
    "phi3": ("Phi3Config", {"sliding_window": None}),
    "olmo2": ("Olmo2Config", {}),
    "granite": ("GraniteConfig", {"logits_scaling": 4.0, "embedding_multiplier": 2.0, "residual_multiplier": 0.5,
                                  "attention_multiplier": 0.25}),
    "smollm3": ("SmolLM3Config", {"no_rope_layers": [1, 0]}),
    "cohere": ("CohereConfig", {"logit_scale": 0.25}),
}
FAMILIES = list(_SPECS)


def family_config(name, tokenizer, **overrides):
    import transformers

    class_name, fields = _SPECS[name]
    ids = {"bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    common = dict(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512, **ids)
    common.update(fields)
    common.update(overrides)
    return getattr(transformers, class_name)(**common)


def save_family_model(name, out_dir, seed=0, **overrides):
    """A random `name` model with the project's tiny tokenizer, saved with save_pretrained."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from toy import tiny_model

    tokenizer = tiny_model.build_tokenizer([])
    config = family_config(name, tokenizer, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # some families initialise with std 0.02: logits too flat to tell heads apart
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.1)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
