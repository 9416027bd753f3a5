"""Attention kernel choice and the flash-attn varlen path (run on CPU with a stand-in kernel)."""
import argparse
import sys

import pytest
import torch

import train_sft


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
    train_sft.choose_kernels(args, torch.device("cuda"))
    assert (args.attn_implementation, args.layout) == ("sdpa", "padded")
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert len(warnings) == 1 and error.split("(")[0] in warnings[0] and "flash_attn" in warnings[0]


def test_importable_flash_attn_is_chosen_on_cuda_only(tmp_path, monkeypatch, capsys):
    """flash_attn that imports: flash_attention_2 + packed on CUDA, SDPA on CPU; no warning either way."""
    _fake_flash_attn(tmp_path, monkeypatch, "__version__ = '2.8.3'\n")
    args = argparse.Namespace(attn_implementation="auto", layout="auto")
    train_sft.choose_kernels(args, torch.device("cuda"))
    assert (args.attn_implementation, args.layout) == ("flash_attention_2", "packed")
    args = argparse.Namespace(attn_implementation="auto", layout="auto")
    train_sft.choose_kernels(args, torch.device("cpu"))
    assert (args.attn_implementation, args.layout) == ("sdpa", "padded")
    assert "warning" not in capsys.readouterr().out
