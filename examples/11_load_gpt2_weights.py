"""Loading GPT-2's weights: what a Hugging Face model folder holds, and how its tensors map onto our GPT.

    python examples/11_load_gpt2_weights.py                    # offline: a tiny random GPT-2 written and read back
    python examples/11_load_gpt2_weights.py --model-dir gpt2   # the real GPT-2 small (download it first, below)

A Hugging Face folder holds ``config.json`` (the sizes) and ``model.safetensors`` (named tensors: a small JSON
header, then the raw arrays; nothing is executed when it is read, unlike a pickle). GPT-2 names its tensors
``wte`` (token embedding), ``wpe`` (positions), ``h.N.ln_1``, ``h.N.attn.c_attn`` (q, k and v in one matrix),
``h.N.attn.c_proj``, ``h.N.ln_2``, ``h.N.mlp.c_fc``, ``h.N.mlp.c_proj`` and ``ln_f``; its output head reuses
``wte`` (tied weights). GPT-2's linear layers are "Conv1D" modules that store W as (in, out), where our Linear
(PyTorch's layout) stores (out, in): those matrices are transposed on the way in.

Offline, this lesson builds a tiny random GPT-2-shaped model, writes its weights under GPT-2's names by hand (so
each mapping is visible), loads the folder with ``tl.from_pretrained`` and checks that the logits are the same.

The real weights (548 MB for GPT-2 small; needs internet once):
    pip install huggingface_hub
    huggingface-cli download openai-community/gpt2 model.safetensors config.json vocab.json merges.txt \\
        --local-dir gpt2
(gpt2-medium, gpt2-large and gpt2-xl work the same way). Then ``--model-dir gpt2`` loads them and continues
"Every effort moves you" greedily: a fluent English sentence, where the random model writes noise.

What to expect offline: 28 tensors under GPT-2's names, the 8 transposed ones listed, the loaded model's logits
equal to the original's (largest difference 0), and ``model.save_pretrained`` writing the same 28 tensors.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from course import done, lesson, section

import autograd as ag
import tinygrad_llm as tl

#: our parameter name (block N as {i}) -> (GPT-2's name, transposed?)
GPT2_NAMES = {
    "tok_emb.weight": ("wte.weight", False),
    "pos_emb.weight": ("wpe.weight", False),
    "blocks.{i}.norm1.weight": ("h.{i}.ln_1.weight", False),
    "blocks.{i}.norm1.bias": ("h.{i}.ln_1.bias", False),
    "blocks.{i}.attn.qkv.weight": ("h.{i}.attn.c_attn.weight", True),
    "blocks.{i}.attn.qkv.bias": ("h.{i}.attn.c_attn.bias", False),
    "blocks.{i}.attn.proj.weight": ("h.{i}.attn.c_proj.weight", True),
    "blocks.{i}.attn.proj.bias": ("h.{i}.attn.c_proj.bias", False),
    "blocks.{i}.norm2.weight": ("h.{i}.ln_2.weight", False),
    "blocks.{i}.norm2.bias": ("h.{i}.ln_2.bias", False),
    "blocks.{i}.ffn.fc.weight": ("h.{i}.mlp.c_fc.weight", True),
    "blocks.{i}.ffn.fc.bias": ("h.{i}.mlp.c_fc.bias", False),
    "blocks.{i}.ffn.proj.weight": ("h.{i}.mlp.c_proj.weight", True),
    "blocks.{i}.ffn.proj.bias": ("h.{i}.mlp.c_proj.bias", False),
    "final_norm.weight": ("ln_f.weight", False),
    "final_norm.bias": ("ln_f.bias", False),
}


def hf_name(ours: str) -> tuple[str, bool]:
    """GPT-2's name for one of our parameter names, and whether the matrix is stored transposed."""
    parts = ours.split(".")
    if parts[0] == "blocks":
        pattern, i = ".".join(["blocks", "{i}", *parts[2:]]), parts[1]
        name, transposed = GPT2_NAMES[pattern]
        return name.format(i=i), transposed
    return GPT2_NAMES[ours]


def write_gpt2_folder(model: tl.GPT, folder: Path) -> list[str]:
    """Write ``model`` as a Hugging Face GPT-2 folder; returns the names of the transposed tensors."""
    from safetensors.numpy import save_file
    cfg = model.config
    tensors, transposed = {}, []
    for ours, p in model.named_parameters():
        name, t = hf_name(ours)
        tensors[name] = np.ascontiguousarray(p.numpy().T if t else p.numpy())
        if t:
            transposed.append(name)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": cfg.vocab_size,
              "n_positions": cfg.context_length, "n_ctx": cfg.context_length, "n_embd": cfg.n_embd,
              "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": None, "activation_function": "gelu_new",
              "layer_norm_epsilon": cfg.norm_eps, "tie_word_embeddings": True,
              "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return transposed


def safe_open_get(folder: Path, name: str) -> np.ndarray:
    from safetensors import safe_open
    with safe_open(str(folder / "model.safetensors"), "np") as f:
        return f.get_tensor(name)


def offline() -> float:
    section("a tiny random GPT-2 (same layout, 2 blocks of width 16)")
    cfg = tl.GPTConfig(vocab_size=300, context_length=32, n_layer=2, n_head=2, n_embd=16, qkv_bias=True, bias=True,
                       tie_weights=True, dropout=0.0)
    model = tl.GPT(cfg, seed=0)
    for name, p in model.named_parameters():
        print(f"  {name:<28} {str(p.shape):<10} -> {hf_name(name)[0]}" + ("   (transposed)" * hf_name(name)[1]))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tiny-gpt2"
        transposed = write_gpt2_folder(model, folder)
        from safetensors import safe_open
        with safe_open(str(folder / "model.safetensors"), "np") as f:
            names = sorted(f.keys())
        print(f"\nwrote {folder.name}/config.json and model.safetensors: {len(names)} tensors, "
              f"{len(transposed)} transposed: {', '.join(transposed)}")
        print("no 'lm_head.weight' is stored: GPT-2's head is wte (tied)")
        section("load it back with tl.from_pretrained")
        loaded = tl.from_pretrained(str(folder))
        idx = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 10))
        with ag.no_grad():
            a, b = model(idx).numpy(), loaded(idx).numpy()
        err = float(np.abs(a - b).max())
        print(f"logits {a.shape} of the original and the loaded model: largest difference {err:.1e}")
        section("the library's own export: model.save_pretrained")
        model.save_pretrained(str(Path(tmp) / "exported"))
        with safe_open(str(Path(tmp) / "exported" / "model.safetensors"), "np") as f:
            exported = sorted(k.removeprefix("transformer.") for k in f.keys())   # HF's GPT2LMHeadModel prefix
            same_values = all(np.array_equal(f.get_tensor(k), safe_open_get(folder, k.removeprefix("transformer.")))
                              for k in f.keys())
        print(f"save_pretrained wrote {len(exported)} tensors; the same names as ours: {exported == names}; "
              f"the same values: {same_values}")
    return err


def real(model_dir: str) -> None:
    section(f"GPT-2 from {model_dir}")
    model = tl.from_pretrained(model_dir)
    tok = tl.tokenizer.from_pretrained(model_dir)
    print(f"{model.num_parameters():,} parameters: {model.config.n_layer} blocks of width {model.config.n_embd}")
    prompt = "Every effort moves you"
    out = tl.generate(model, np.array([tok.encode(prompt)]), 25, temperature=0.0)
    print(f"greedy: {tok.decode(out[0].tolist())!r}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", help="a downloaded Hugging Face GPT-2 folder (see this file's docstring)")
    args = ap.parse_args(argv)
    lesson("Lesson 11: loading GPT-2 weights",
           "the Hugging Face folder layout, GPT-2's tensor names, Conv1D transposes, tied head; tl.from_pretrained",
           "28 tensors (8 transposed) written under GPT-2's names; the loaded model's logits = the original's")
    err = offline()
    if args.model_dir:
        real(args.model_dir)
    else:
        print("\n(for the real GPT-2: download it as this file's docstring shows, then pass --model-dir gpt2)")
    done(f"a GPT-2 folder written by hand loads into the same model (logits differ by {err:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
