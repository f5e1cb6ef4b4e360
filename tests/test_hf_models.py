"""Hugging Face folders for every family, without downloads: tiny random models built here are exported and
reloaded (weights, config, logits, tokenizer equal), in float32 / float16 / bfloat16 files, single or sharded;
stored layouts we read but do not write (stacked experts); config.json fields we cannot honour are refused."""
import json

import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm.model.hf import PretrainedFormatError, config_from_hf, from_pretrained, hf_from_config
from tinygrad_llm.model.hf.safetensors_io import TensorFiles, to_bf16_bits
from tinygrad_llm.tokenizer import BPETokenizer

FAMILIES = {
    "gpt2": lambda: tl.GPTConfig(family="gpt2", vocab_size=300, context_length=32, n_layer=2, n_head=4, n_embd=32),
    "llama": lambda: tl.GPTConfig.preset("llama-tiny", vocab_size=300, n_layer=2),
    "qwen3": lambda: tl.GPTConfig.preset("qwen3-tiny", vocab_size=300, n_layer=2),
    "qwen3-moe": lambda: tl.GPTConfig.preset("qwen3-moe-tiny", vocab_size=300, n_layer=2),
    "gemma3": lambda: tl.GPTConfig.preset("gemma3-tiny", vocab_size=300),
}
CHAT = {"llama": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|end_of_text|>"],
        "qwen3": ["<|im_start|>", "<|im_end|>", "<|endoftext|>"], "qwen3-moe": ["<|im_start|>", "<|im_end|>"],
        "gemma3": ["<bos>", "<start_of_turn>", "<end_of_turn>", "<eos>"], "gpt2": ["<|endoftext|>"]}


def random_model(name: str, seed: int = 0) -> tl.GPT:
    """A model whose every parameter is random (norm gains and biases too), so a mix-up cannot hide."""
    model = tl.GPT(FAMILIES[name](), seed=seed)
    rng = np.random.default_rng(seed)
    for n, p in model.named_parameters():
        base = 1.0 if p.ndim == 1 and "norm" in n and not n.endswith("bias") and not model.config.norm_unit_offset else 0.0
        p.data[...] = base + rng.normal(0, 0.2 if p.ndim > 1 else 0.1, p.shape).astype(p.dtype)
    return model


def ids_for(model, t: int = 20) -> np.ndarray:
    return np.random.default_rng(1).integers(0, model.config.vocab_size, (2, t))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_round_trip_every_family(tmp_path, name):
    model = random_model(name)
    tok = BPETokenizer.train("hello world, the quick brown fox. " * 10, 290,
                             special_tokens=CHAT[name])
    assert tok.vocab_size <= model.config.vocab_size
    folder = model.save_pretrained(tmp_path / name, tokenizer=tok)
    back = tl.from_pretrained(folder)
    assert back.config == model.config
    ours, theirs = model.state_dict(), back.state_dict()
    assert sorted(ours) == sorted(theirs)
    for k in ours:
        np.testing.assert_array_equal(np.asarray(theirs[k]), np.asarray(ours[k]), err_msg=k)
    idx = ids_for(model)
    np.testing.assert_array_equal(back(idx).numpy(), model(idx).numpy())
    tok2 = tl.tokenizer.from_pretrained(folder)
    text = "hello<|endoftext|> fox " + "".join(CHAT[name])
    assert tok2.encode(text) == tok.encode(text)
    assert tok2.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["eos_token_id"] == tok.eos_id
    tcfg = json.loads((folder / "tokenizer_config.json").read_text())
    assert ("chat_template" in tcfg) is (name != "gpt2")


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_config_round_trip(name):
    cfg = FAMILIES[name]()
    hf = json.loads(json.dumps(hf_from_config(cfg)))
    assert config_from_hf(hf) == cfg


@pytest.mark.parametrize("dtype, tol", [("float16", 2e-2), ("bfloat16", 1e-1)])
def test_half_precision_files(tmp_path, dtype, tol):
    model = random_model("llama")
    folder = model.save_pretrained(tmp_path / dtype, dtype=dtype)
    tf = TensorFiles([folder / "model.safetensors"])
    assert {tf.dtype(n) for n in tf.names()} == {"F16" if dtype == "float16" else "BF16"}
    back = from_pretrained(folder)
    assert back.dtype == np.float32
    for k, v in model.state_dict().items():
        a = np.asarray(v)
        want = a.astype(np.float16).astype(np.float32) if dtype == "float16" else \
            (to_bf16_bits(a).astype(np.uint32) << 16).view(np.float32)
        np.testing.assert_array_equal(np.asarray(back.state_dict()[k]), want, err_msg=k)
    idx = ids_for(model)
    assert np.abs(back(idx).numpy() - model(idx).numpy()).max() < tol * np.abs(model(idx).numpy()).max()
    assert from_pretrained(folder, dtype=np.float64).dtype == np.float64     # widened to any float dtype


def test_bf16_rounds_to_nearest_even():
    x = np.array([1.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -2.5, np.inf, np.nan, 3.0e38], np.float32)
    back = (to_bf16_bits(x).astype(np.uint32) << 16).view(np.float32)
    assert back[0] == 1.0 and back[1] == 1.0 and back[2] == 1.0 + 2 ** -6 and back[3] == -2.5
    assert np.isinf(back[4]) and np.isnan(back[5]) and abs(back[6] - 3.0e38) / 3.0e38 < 2 ** -8


def test_sharded_folders(tmp_path):
    model = random_model("qwen3-moe")
    folder = model.save_pretrained(tmp_path / "sharded", max_shard_size=40_000)
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards) and not (folder / "model.safetensors").exists()
    back = from_pretrained(folder)
    idx = ids_for(model)
    np.testing.assert_array_equal(back(idx).numpy(), model(idx).numpy())
    model.save_pretrained(folder)                               # re-export as one file: no stale shards left
    assert not list(folder.glob("model-*.safetensors")) and (folder / "model.safetensors").is_file()
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        from_pretrained(folder)


def test_stacked_experts_layout_loads(tmp_path):
    """Newer transformers keep a layer's experts as gate_up_proj (E, 2F, C) and down_proj (E, C, F)."""
    from safetensors.numpy import load_file, save_file
    model = random_model("qwen3-moe")
    folder = model.save_pretrained(tmp_path / "moe")
    w = load_file(str(folder / "model.safetensors"))
    cfg = model.config
    for i in range(cfg.n_layer):
        p = f"model.layers.{i}.mlp.experts."
        gate_up = [np.concatenate([w.pop(f"{p}{e}.gate_proj.weight"), w.pop(f"{p}{e}.up_proj.weight")])
                   for e in range(cfg.n_experts)]
        w[p + "gate_up_proj"] = np.stack(gate_up)
        w[p + "down_proj"] = np.stack([w.pop(f"{p}{e}.down_proj.weight") for e in range(cfg.n_experts)])
    save_file(w, str(folder / "model.safetensors"))
    idx = ids_for(model)
    np.testing.assert_array_equal(from_pretrained(folder)(idx).numpy(), model(idx).numpy())


def test_generation_with_the_cache_after_loading(tmp_path):
    model = random_model("gemma3")
    back = from_pretrained(model.save_pretrained(tmp_path / "g"))
    prompt = ids_for(model, 5)[:1]
    a = tl.generate(model, prompt, 12, temperature=0.0)
    b = tl.generate(back, prompt, 12, temperature=0.0, use_cache=True)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(b, tl.generate(back, prompt, 12, temperature=0.0, use_cache=False))


# ------------------------------------------------------------------------------------------------ refusals
def _hf(name: str, **changes) -> dict:
    hf = json.loads(json.dumps(hf_from_config(FAMILIES[name]())))
    hf.update(changes)
    return hf


@pytest.mark.parametrize("name, changes, match", [
    ("llama", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling"),
    ("llama", {"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_scaling"),
    ("llama", {"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}}, "rope_scaling"),
    ("llama", {"hidden_act": "gelu"}, "hidden_act"),
    ("llama", {"attention_bias": True}, "attention_bias"),
    ("llama", {"sliding_window": 16}, "unknown llama config fields"),
    ("qwen3", {"use_sliding_window": True}, "use_sliding_window"),
    ("qwen3", {"attention_bias": True}, "attention_bias"),
    ("qwen3-moe", {"decoder_sparse_step": 2}, "decoder_sparse_step"),
    ("qwen3-moe", {"mlp_only_layers": [0]}, "mlp_only_layers"),
    ("gemma3", {"attn_logit_softcapping": 50.0}, "attn_logit_softcapping"),
    ("gemma3", {"use_bidirectional_attention": True}, "use_bidirectional_attention"),
    ("gemma3", {"hidden_activation": "gelu"}, "hidden_activation"),
    ("gemma3", {"model_type": "gemma3"}, "multimodal"),
    ("gpt2", {"model_type": "mistral"}, "model_type 'mistral'"),
    ("llama", {"num_hidden_layers": None}, "num_hidden_layers"),
])
def test_unsupported_config_fields_are_refused(name, changes, match):
    with pytest.raises(PretrainedFormatError, match=match) as e:
        config_from_hf(_hf(name, **changes), "some/folder/config.json")
    assert "some/folder/config.json" in str(e.value)


def test_honoured_fields_change_the_config():
    assert config_from_hf(_hf("llama", rope_theta=12345.0)).rope_theta == 12345.0
    both = config_from_hf(_hf("llama", attention_bias=True, mlp_bias=True))
    assert both.qkv_bias and both.bias
    newer = _hf("gemma3")                                       # transformers >= 5 spells RoPE per layer type
    newer.pop("rope_theta"), newer.pop("rope_scaling"), newer.pop("rope_local_base_freq")
    newer["rope_parameters"] = {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}
    cfg = config_from_hf(newer)
    assert cfg.rope_scaling == {"rope_type": "linear", "factor": 8.0} and cfg.rope_local_theta == 1e4
    moe = config_from_hf(_hf("qwen3-moe", output_router_logits=False))
    assert moe.router_aux_loss_coef == 0.0                      # transformers adds the loss only when asked


def test_weight_file_errors(tmp_path):
    model = random_model("qwen3")
    folder = model.save_pretrained(tmp_path / "q")
    raw = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(raw[:-100])
    with pytest.raises(PretrainedFormatError, match="truncated"):
        from_pretrained(folder)
    from safetensors.numpy import save_file
    save_file({"model.embed_tokens.weight": np.zeros((300, 64), np.int8)}, str(folder / "model.safetensors"))
    with pytest.raises(PretrainedFormatError, match="I8.*quantized"):
        from_pretrained(folder)
    folder = model.save_pretrained(tmp_path / "q2")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PretrainedFormatError, match="model.layers.2.input_layernorm.weight"):
        from_pretrained(folder)
    cfg["num_hidden_layers"] = 1
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PretrainedFormatError, match="does not have: model.layers.1"):
        from_pretrained(folder)


def test_export_refuses_what_the_family_cannot_express(tmp_path):
    with pytest.raises(ValueError, match="sliding"):
        tl.GPT(tl.GPTConfig.preset("llama-tiny", n_layer=2, layer_types=["sliding_attention", "full_attention"],
                                   sliding_window=4)).save_pretrained(tmp_path / "x")
    with pytest.raises(ValueError, match="qk_norm"):
        tl.GPT(tl.GPTConfig.preset("llama-tiny", n_layer=1, qk_norm=True)).save_pretrained(tmp_path / "x")


def test_command_line_accepts_any_family(tmp_path, capsys):
    """generate / train / finetune --init-from a Hugging Face folder (here a tiny Qwen3 with a ChatML tokenizer)."""
    from tinygrad_llm.cli import main
    text = "hello world, the quick brown fox. " * 40
    tok = BPETokenizer.train(text, 290, special_tokens=CHAT["qwen3"])
    model = random_model("qwen3")
    folder = model.save_pretrained(tmp_path / "qwen", tokenizer=tok)
    assert main(["generate", "--init-from", str(folder), "--prompt", "hello", "--max-new-tokens", "5",
                 "--temperature", "0"]) == 0
    prompt = tok.encode("hello")
    want = tl.generate(model, np.array([prompt]), 5, temperature=0.0)[0, len(prompt):]
    assert capsys.readouterr().out.strip() == ("hello" + tok.decode(want.tolist())).strip()
    assert main(["generate", "--checkpoint", str(folder), "--prompt", "hello", "--max-new-tokens", "5",
                 "--temperature", "0"]) == 0                  # a Hugging Face folder given as the checkpoint
    assert capsys.readouterr().out.strip() == ("hello" + tok.decode(want.tolist())).strip()
    (tmp_path / "data.txt").write_text(text)
    assert main(["train", "--init-from", str(folder), "--data", str(tmp_path / "data.txt"), "--steps", "2",
                 "--batch-size", "2", "--block-size", "16", "--out-dir", str(tmp_path / "run"), "--eval-every", "2",
                 "--eval-iters", "1", "--sample-tokens", "0", "--no-progress"]) == 0
    from tinygrad_llm.train.commands import load_model
    trained, tok2, _ = load_model(str(tmp_path / "run"))
    assert trained.config == model.config and type(tok2).__name__ == "HFTokenizer"   # what the checkpoint holds
    assert tok2.encode(text[:60]) == tok.encode(text[:60])


def test_export_checks_that_config_json_computes_the_same(monkeypatch):
    """A field the writer forgot (simulated) is refused by name instead of being dropped from config.json."""
    from tinygrad_llm.model.hf import configs
    real = configs._hf_from_config

    def forgetful(cfg, dtype_name):
        out = real(cfg, dtype_name)
        out.pop("rms_norm_eps")
        return out
    monkeypatch.setattr(configs, "_hf_from_config", forgetful)
    with pytest.raises(ValueError, match="cannot express norm_eps=1e-05"):
        hf_from_config(FAMILIES["llama"]())
    assert configs.computation_of(FAMILIES["llama"]().replace(dropout=0.1, activation_checkpointing=True)) == \
        configs.computation_of(FAMILIES["llama"]())
