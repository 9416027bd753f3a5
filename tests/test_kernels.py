"""Attention kernel choice and the flash-attn varlen path (run on CPU with a stand-in kernel)."""
import argparse
import sys

import pytest
import torch

import training


def _fake_flash_attn(tmp_path, monkeypatch, body):
    pkg = tmp_path / "flash_attn"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)


@pytest.mark.parametrize("error", [
    "ImportError('flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDeviceEi')",
    "OSError('libcudart.so.11.0: cannot open shared object file')"])
def test_broken_flash_attn_falls_back_to_sdpa_with_one_warning(tmp_path, monkeypatch, capsys, error):
    """A flash_attn that is installed but fails to import (wheel for another torch) means SDPA, one warning line."""
    _fake_flash_attn(tmp_path, monkeypatch, f"raise {error}\n")
    args = argparse.Namespace(attn_implementation="auto", layout="auto")
    kernels = training.choose_kernels(args, torch.device("cuda"))
    assert (kernels.attn_implementation, kernels.layout) == ("sdpa", "padded")
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert len(warnings) == 1 and error.split("(")[0] in warnings[0] and "flash_attn" in warnings[0]


def test_importable_flash_attn_is_chosen_on_cuda_only(tmp_path, monkeypatch, capsys):
    """flash_attn that imports: flash_attention_2 + packed on CUDA, SDPA on CPU; no warning either way."""
    _fake_flash_attn(tmp_path, monkeypatch, "__version__ = '2.8.3'\n")
    args = argparse.Namespace(attn_implementation="auto", layout="auto")
    kernels = training.choose_kernels(args, torch.device("cuda"))
    assert (kernels.attn_implementation, kernels.layout, kernels.packed) == ("flash_attention_2", "packed", True)
    kernels = training.choose_kernels(args, torch.device("cpu"))
    assert (kernels.attn_implementation, kernels.layout, kernels.packed) == ("sdpa", "padded", False)
    assert (args.attn_implementation, args.layout) == ("auto", "auto")        # the parsed options stay as parsed
    assert "warning" not in capsys.readouterr().out


def _varlen_attention_on_cpu(calls):
    """A stand-in for flash-attn varlen, shaped like transformers' attention functions: it attends
    within the segments that cu_seq_lens_q gives (causal SDPA per segment) and records what it got.
    Without the boundaries it fails, as a kernel that had to rebuild them would be doing extra work."""
    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        cu, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
        max_q, max_k = kwargs.get("max_length_q"), kwargs.get("max_length_k")
        assert cu is not None and cu_k is not None, "varlen boundaries were not passed down"
        assert isinstance(max_q, int) and isinstance(max_k, int), "max lengths must be host ints (no device sync)"
        calls.append((cu.tolist(), max_q))
        groups = query.shape[1] // key.shape[1]                 # [B, H, T, D] with grouped-query attention
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
        out = torch.cat([torch.nn.functional.scaled_dot_product_attention(
            query[..., a:b, :], key[..., a:b, :], value[..., a:b, :], is_causal=True, scale=scaling)
            for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())], dim=2)
        return out.transpose(1, 2).contiguous(), None
    return attention


def test_packed_varlen_gets_boundaries_built_once_and_equals_padded(tiny_model_dir, monkeypatch):
    """Packed + flash path: every layer receives collate's cu_seqlens and max length; log-probs equal the padded layout."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from data import collate, tokenize_sft

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples = tokenize_sft(tokenizer, [
        {"id": f"e{i}", "prompt_messages": [{"role": "user", "content": f"What is {i}+{i}?"}],
         "response": f"<think>\n{i}+{i}={2 * i}." + " Check." * i + f"\n</think>\n\n$\\boxed{{{2 * i}}}$"}
        for i in (1, 7, 3)])
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    model = training.LogpsModel(lm, chunk_size=16)
    with torch.no_grad():
        padded_sums, padded_counts = model(**collate(examples, tokenizer.pad_token_id, packed=False))
        calls = []
        monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "flash_attention_2", _varlen_attention_on_cpu(calls))
        lm.config._attn_implementation = "flash_attention_2"
        batch = collate(examples, tokenizer.pad_token_id, packed=True)
        packed_sums, packed_counts = model(**batch)
    lengths = [len(e["input_ids"]) for e in examples]
    expected = ([0, lengths[0], lengths[0] + lengths[1], sum(lengths)], max(lengths))
    assert calls == [expected] * lm.config.num_hidden_layers
    assert batch["cu_seqlens"].dtype == torch.int32
    assert torch.equal(packed_counts, padded_counts)
    torch.testing.assert_close(packed_sums, padded_sums, rtol=1e-5, atol=1e-5)
