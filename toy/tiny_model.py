"""Build a tiny Qwen2-architecture model and a matching tokenizer, offline, as a model dir.

The tests and the demo never download anything: they train a byte-level BPE tokenizer with the
`tokenizers` library on a small corpus, wrap it as a Hugging Face fast tokenizer with a
Qwen2.5-Math-style chat template, build a randomly initialised `Qwen2ForCausalLM` from a config,
and `save_pretrained` both into one directory. Every script then loads it through the same
`--model DIR` path that real checkpoints take.

The chat template follows Qwen2.5-Math's (`<|im_start|>`/`<|im_end|>`, a default system prompt
asking for a boxed answer) with REDI's one edit: the generation prompt opens the assistant turn
with `<think>\\n`, so sampling starts inside the thinking block, as the paper's evaluation forces.
Digits are split one per token, as in Qwen's tokenizer.

Special tokens follow Qwen2.5-Math-1.5B, the BASE model the paper fine-tunes (its tokenizer files
are what every checkpoint keeps): eos and pad are `<|endoftext|>`, config.json and
generation_config.json name `<|endoftext|>` as bos and eos, and the chat template closes every
turn with `<|im_end|>`, which training supervises (data.end_of_turn_id). So a sampler that
stops only at eos runs past the end of the turn here, as it would on the real model.

    python -m toy.tiny_model --out runs/tiny --corpus data.jsonl [--vocab-size 512] [--hidden-size 64]
"""
from __future__ import annotations

import argparse

from cli import InputError, exit_on_input_error, make_output_dir, read_jsonl

DEFAULT_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Added as ordinary (non-special) added tokens, as in Qwen's tokenizers: they survive decoding.
THINK_TOKENS = ["<think>", "</think>"]



def chat_template(system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> str:
    """Qwen2.5-Math's chat template with REDI's `<think>` opening; `system_prompt` is the default
    system message (used when the conversation has none)."""
    default = system_prompt.replace("\\", "\\\\").replace("'", "\\'")
    return (
        "{%- if messages[0]['role'] == 'system' %}"
        "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
        "{%- else %}"
        "{{- '<|im_start|>system\\n" + default + "<|im_end|>\\n' }}"
        "{%- endif %}"
        "{%- for message in messages %}"
        "{%- if not (loop.first and message['role'] == 'system') %}"
        "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{%- endif %}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}"
    )


# A little text with the shapes the tests need (LaTeX, digits, think blocks, boxed answers).
BUILTIN_CORPUS = [
    "<think>\nLet me work through it. 12+35=47, so 47*2=94.\n</think>\n\nThe answer is $\\boxed{94}$.",
    "Compute $\\frac{1}{2}+\\frac{1}{3}$. We get $\\frac{5}{6}$, therefore the final answer is $\\boxed{\\frac{5}{6}}$.",
    "Convert the point $(0,3)$ in rectangular coordinates to polar coordinates $(r,\\theta)$.",
    "Wait, that is wrong. Let me check again: 7-9=-2 and 3*4=12, so x=\\sqrt{2}.",
    "Therefore, the final answer is: $\\boxed{ANSWER}$. I hope it is correct",
]


def build_tokenizer(texts, vocab_size=512, system_prompt=DEFAULT_SYSTEM_PROMPT):
    """Train a byte-level BPE on `texts` and wrap it as a chat-templated fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    # Every training sequence carries the default system prompt: weigh it like the texts so that
    # BPE merges compress it, as a real tokenizer would (it costs compute on every sequence).
    texts = list(texts)
    scaffold = f"system\n{system_prompt}\nuser\nassistant\n"      # the template's own words
    corpus = texts + BUILTIN_CORPUS + [scaffold] * max(1, len(texts) // 4)
    tok.train_from_iterator(corpus, trainer=trainer)
    hf = PreTrainedTokenizerFast(  # Qwen2.5-Math-1.5B's: no bos, eos = pad = <|endoftext|>
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"], clean_up_tokenization_spaces=False)
    hf.add_tokens(THINK_TOKENS)
    hf.chat_template = chat_template(system_prompt)
    hf.model_max_length = 1 << 20
    return hf


def build_model(tokenizer, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                intermediate_size=None, max_position_embeddings=2048, seed=0):
    """A randomly initialised Qwen2ForCausalLM with tied embeddings (like Qwen2.5-1.5B); bos and eos in
    config.json and generation_config.json are the tokenizer's eos (`<|endoftext|>`), as Qwen2.5-Math-1.5B's."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size or 4 * hidden_size,
        max_position_embeddings=max_position_embeddings, rope_theta=10000.0,
        tie_word_embeddings=True, bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        do_sample=True, temperature=0.6, top_p=0.95)
    return model


def read_corpus(path) -> list[str]:
    """Texts from a JSON Lines file: every string value (nested lists/dicts included); InputError
    naming the file when it holds none (an empty file would silently train on the built-in texts)."""
    def strings(value):
        if isinstance(value, str):
            yield value
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)
        elif isinstance(value, dict):
            for v in value.values():
                yield from strings(v)

    texts = [text for _, record in read_jsonl(path) for text in strings(record)]
    if not texts:
        raise InputError(f"--corpus {path}: no text to train the tokenizer on (no string values in it)")
    return texts


def save_tiny(out_dir, texts=(), vocab_size=512, seed=0, system_prompt=DEFAULT_SYSTEM_PROMPT, **model_kwargs):
    """Build tokenizer + model and save both to `out_dir`; returns `out_dir`."""
    tokenizer = build_tokenizer(texts, vocab_size=vocab_size, system_prompt=system_prompt)
    model = build_model(tokenizer, seed=seed, **model_kwargs)
    make_output_dir(out_dir, f"output directory {out_dir}")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="directory to write the model and tokenizer to")
    p.add_argument("--corpus", nargs="*", default=[],
                   help="JSON Lines files whose string values train the tokenizer")
    p.add_argument("--vocab-size", type=int, default=512, help="BPE vocabulary size (before special tokens)")
    p.add_argument("--hidden-size", type=int, default=64, help="model width")
    p.add_argument("--num-layers", type=int, default=2, help="decoder layers")
    p.add_argument("--num-heads", type=int, default=4, help="attention heads")
    p.add_argument("--num-kv-heads", type=int, default=2, help="key/value heads (grouped-query attention)")
    p.add_argument("--intermediate-size", type=int, default=None, help="MLP width (default 4 x hidden)")
    p.add_argument("--max-position-embeddings", type=int, default=2048, help="context length")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed")
    p.add_argument("--system-prompt", default=DEFAULT_SYSTEM_PROMPT,
                   help="the chat template's default system message (default: Qwen2.5-Math's)")
    args = p.parse_args(argv)
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
                 "max_position_embeddings"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.hidden_size % args.num_heads or args.num_heads % args.num_kv_heads:
        p.error(f"--hidden-size ({args.hidden_size}) must be a multiple of --num-heads ({args.num_heads}), and "
                f"--num-heads a multiple of --num-kv-heads ({args.num_kv_heads})")
    return args


def main(argv=None):
    args = parse_args(argv)
    with exit_on_input_error("tiny_model.py"):
        texts = [t for path in args.corpus for t in read_corpus(path)]
        make_output_dir(args.out, f"--out {args.out}")   # before the build, which takes seconds
        save_tiny(args.out, texts, vocab_size=args.vocab_size, seed=args.seed, system_prompt=args.system_prompt,
                  hidden_size=args.hidden_size, num_layers=args.num_layers, num_heads=args.num_heads,
                  num_kv_heads=args.num_kv_heads, intermediate_size=args.intermediate_size,
                  max_position_embeddings=args.max_position_embeddings)
    print(f"saved tiny Qwen2 model and tokenizer to {args.out} (tokenizer trained on {len(texts)} texts from "
          f"--corpus and the built-in ones)")


if __name__ == "__main__":
    main()
