"""GPT-2 weights in the Hugging Face layout: an independent NumPy GPT-2 (HF names, Conv1D (in, out) weights)
gives the reference logits for a checkpoint this test writes itself; export -> load round trips; clear errors;
the GPT-2 config.json fields that change the computation (honoured or refused)."""
import json

import numpy as np
import pytest
from safetensors.numpy import save_file

import tinygrad_llm as tl
from tinygrad_llm.model.hf import PretrainedFormatError, from_pretrained, save_pretrained
from tinygrad_llm.tokenizer import from_pretrained as tokenizer_from_pretrained


# ------------------------------------------------------------------------------------------------ reference
def ref_gpt2_logits(w: dict, ids: np.ndarray, n_layer: int, n_head: int, eps: float = 1e-5,
                    scale: bool = True) -> np.ndarray:
    """GPT-2 (Radford et al. 2019) written from its equations over HF tensor names, float64. ids (T,) -> (T, V)."""
    w = {k.removeprefix("transformer."): np.asarray(v, dtype=np.float64) for k, v in w.items()}

    def layer_norm(x, g, b):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * g + b

    def gelu_new(x):
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))

    t = len(ids)
    x = w["wte.weight"][ids] + w["wpe.weight"][:t]
    c = x.shape[-1]
    d = c // n_head
    causal = np.triu(np.ones((t, t), dtype=bool), k=1)
    for i in range(n_layer):
        p = f"h.{i}."
        h = layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"])
        qkv = h @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]          # Conv1D: x @ W, W (in, out)
        q, k, v = (qkv[:, j * c:(j + 1) * c].reshape(t, n_head, d).transpose(1, 0, 2) for j in range(3))
        s = q @ k.transpose(0, 2, 1) / (np.sqrt(d) if scale else 1.0)
        s = np.where(causal, -np.inf, s)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        y = (a @ v).transpose(1, 0, 2).reshape(t, c)
        x = x + y @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        h = layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"])
        x = x + gelu_new(h @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"]) @ w[p + "mlp.c_proj.weight"] \
            + w[p + "mlp.c_proj.bias"]
    x = layer_norm(x, w["ln_f.weight"], w["ln_f.bias"])
    return x @ w["wte.weight"].T


def random_hf_weights(v: int, ctx: int, n_layer: int, c: int, seed: int = 0, inner: int | None = None) -> dict:
    """Random float32 tensors with GPT-2's HF names and shapes (Conv1D weights (in, out))."""
    rng = np.random.default_rng(seed)
    f = inner or 4 * c

    def r(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = {"wte.weight": r(v, c, scale=0.5), "wpe.weight": r(ctx, c, scale=0.3),
         "ln_f.weight": 1 + r(c, scale=0.1), "ln_f.bias": r(c, scale=0.1)}
    for i in range(n_layer):
        p = f"h.{i}."
        w.update({p + "ln_1.weight": 1 + r(c, scale=0.1), p + "ln_1.bias": r(c, scale=0.1),
                  p + "attn.c_attn.weight": r(c, 3 * c), p + "attn.c_attn.bias": r(3 * c),
                  p + "attn.c_proj.weight": r(c, c), p + "attn.c_proj.bias": r(c),
                  p + "ln_2.weight": 1 + r(c, scale=0.1), p + "ln_2.bias": r(c, scale=0.1),
                  p + "mlp.c_fc.weight": r(c, f), p + "mlp.c_fc.bias": r(f),
                  p + "mlp.c_proj.weight": r(f, c, scale=0.1), p + "mlp.c_proj.bias": r(c)})
    return w


def hf_config(v, ctx, n_layer, c, n_head, **extra):
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": v, "n_positions": ctx,
            "n_ctx": ctx, "n_embd": c, "n_layer": n_layer, "n_head": n_head, "layer_norm_epsilon": 1e-5,
            "activation_function": "gelu_new", **extra}


def write_hf(folder, weights, config=None, prefix="", extra=None):
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {prefix + k: v for k, v in weights.items()}
    tensors.update(extra or {})
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def logits_of(model, ids):
    return model(np.asarray(ids)[None]).numpy()[0]


# ------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("prefix", ["", "transformer."])
def test_hf_layout_matches_independent_reference(tmp_path, prefix):
    v, ctx, n_layer, c, n_head = 53, 16, 2, 32, 4
    w = random_hf_weights(v, ctx, n_layer, c)
    extra = {}
    if prefix:  # a GPT2LMHeadModel-style file: prefixed names, the tied head stored, causal-mask buffers
        extra = {"lm_head.weight": w["wte.weight"]}
        for i in range(n_layer):
            extra[f"{prefix}h.{i}.attn.bias"] = np.tril(np.ones((1, 1, ctx, ctx), dtype=np.float32))
            extra[f"{prefix}h.{i}.attn.masked_bias"] = np.array(-1e4, dtype=np.float32)
    folder = write_hf(tmp_path / "gpt2", w, hf_config(v, ctx, n_layer, c, n_head), prefix, extra)
    ids = np.random.default_rng(1).integers(0, v, size=ctx)
    ref = ref_gpt2_logits(w, ids, n_layer, n_head)

    m64 = from_pretrained(folder, dtype=np.float64)
    assert (m64.config.n_layer, m64.config.n_head, m64.config.n_embd, m64.config.vocab_size,
            m64.config.context_length) == (n_layer, n_head, c, v, ctx)
    np.testing.assert_allclose(logits_of(m64, ids), ref, rtol=0, atol=1e-5)
    m32 = tl.from_pretrained(folder / "model.safetensors")            # a file path works too
    assert m32.dtype == np.float32
    np.testing.assert_allclose(logits_of(m32, ids), ref, rtol=1e-4, atol=1e-4)
    # the KV-cache path of generation sees the same weights: greedy tokens agree with the reference argmax
    out = tl.generate(m64, ids[None, :4], 1)
    assert out[0, -1] == ref[3].argmax()


def test_no_config_infers_sizes_from_shapes(tmp_path):
    v, ctx, c = 11, 8, 768                     # n_embd 768 -> 12 heads (GPT-2 small's width)
    w = random_hf_weights(v, ctx, 1, c, seed=3)
    folder = write_hf(tmp_path / "noconf", w)
    m = from_pretrained(folder, dtype=np.float64)
    assert (m.config.n_layer, m.config.n_head, m.config.vocab_size, m.config.context_length) == (1, 12, v, ctx)
    ids = np.arange(ctx) % v
    np.testing.assert_allclose(logits_of(m, ids), ref_gpt2_logits(w, ids, 1, 12), atol=1e-5, rtol=0)


def test_no_config_unknown_width_needs_n_head(tmp_path):
    w = random_hf_weights(10, 8, 1, 24)
    folder = write_hf(tmp_path / "odd", w)
    with pytest.raises(PretrainedFormatError, match="n_embd=24.*n_head"):
        from_pretrained(folder)
    m = from_pretrained(folder, n_head=3, dtype=np.float64)
    ids = np.arange(8)
    np.testing.assert_allclose(logits_of(m, ids), ref_gpt2_logits(w, ids, 1, 3), atol=1e-5, rtol=0)


def test_missing_tensor_is_named_with_file(tmp_path):
    w = random_hf_weights(20, 8, 2, 16)
    del w["h.1.mlp.c_fc.bias"]
    folder = write_hf(tmp_path / "missing", w, hf_config(20, 8, 2, 16, 2))
    with pytest.raises(PretrainedFormatError) as e:
        from_pretrained(folder)
    msg = str(e.value)
    assert "h.1.mlp.c_fc.bias" in msg and "model.safetensors" in msg and "missing" in msg


def test_misshaped_tensor_is_named_with_file(tmp_path):
    w = random_hf_weights(20, 8, 2, 16)
    w["h.0.attn.c_attn.weight"] = w["h.0.attn.c_attn.weight"].T.copy()     # stored (out, in): wrong for Conv1D
    folder = write_hf(tmp_path / "shape", w, hf_config(20, 8, 2, 16, 2))
    with pytest.raises(PretrainedFormatError) as e:
        from_pretrained(folder)
    msg = str(e.value)
    assert "h.0.attn.c_attn.weight" in msg and "model.safetensors" in msg and "[48, 16]" in msg


def test_config_mismatch_and_missing_file_errors(tmp_path):
    w = random_hf_weights(20, 8, 2, 16)
    folder = write_hf(tmp_path / "cfg", w, hf_config(20, 8, 3, 16, 2))      # config says 3 layers
    with pytest.raises(PretrainedFormatError, match="h.2.ln_1.weight"):
        from_pretrained(folder)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(FileNotFoundError, match="model.safetensors.*pickle"):
        from_pretrained(tmp_path / "empty")


def gpt2_style(**kw):
    base = dict(vocab_size=61, context_length=16, n_layer=2, n_head=2, n_embd=32, qkv_bias=True, bias=True)
    base.update(kw)
    return tl.GPTConfig(**base)


def perturb(model, seed=0):
    """Make every parameter non-trivial (GPT init leaves biases at 0 and norms at 1)."""
    rng = np.random.default_rng(seed)
    for _, p in model.named_parameters():
        p.data[...] += rng.standard_normal(p.shape).astype(p.dtype) * 0.05


@pytest.mark.parametrize("tie", [True, False])
def test_export_then_load_gives_identical_logits(tmp_path, tie):
    model = tl.GPT(gpt2_style(tie_weights=tie), seed=4)
    perturb(model)
    folder = save_pretrained(model, tmp_path / "export")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "gpt2" and cfg["n_layer"] == 2 and cfg["tie_word_embeddings"] is tie
    from safetensors import safe_open
    with safe_open(str(folder / "model.safetensors"), framework="numpy") as f:
        keys = set(f.keys())
        assert f.metadata() == {"format": "pt"}
        assert f.get_tensor("transformer.h.1.mlp.c_fc.weight").shape == (32, 128)    # Conv1D (in, out)
    assert ("lm_head.weight" in keys) is (not tie) and "transformer.wte.weight" in keys
    back = from_pretrained(folder)
    assert back.config.tie_weights is tie
    ids = np.random.default_rng(0).integers(0, 61, size=(3, 16))
    np.testing.assert_array_equal(back(ids).numpy(), model(ids).numpy())
    # and the exported file is what the independent reference reads
    if tie:
        from safetensors.numpy import load_file
        ref = ref_gpt2_logits(load_file(str(folder / "model.safetensors")), ids[0], 2, 2)
        np.testing.assert_allclose(model(ids[:1]).numpy()[0], ref, atol=1e-4, rtol=1e-4)


def test_export_refuses_what_gpt2_cannot_express(tmp_path):
    with pytest.raises(ValueError, match="norm='rmsnorm'"):
        save_pretrained(tl.GPT(gpt2_style(norm="rmsnorm")), tmp_path / "x")
    with pytest.raises(ValueError, match="n_kv_heads"):
        save_pretrained(tl.GPT(gpt2_style(n_kv_heads=1)), tmp_path / "x")


def test_models_without_biases_export_with_zero_biases(tmp_path):
    model = tl.GPT(tl.GPTConfig.preset("micro", vocab_size=50, qkv_bias=False, bias=False), seed=1)
    perturb(model)
    back = from_pretrained(save_pretrained(model, tmp_path / "nobias"))
    ids = np.random.default_rng(0).integers(0, 50, size=(2, 20))
    np.testing.assert_allclose(back(ids).numpy(), model(ids).numpy(), rtol=1e-5, atol=1e-5)


def test_tokenizer_files_round_trip(tmp_path):
    from tinygrad_llm.tokenizer import BPETokenizer
    tok = BPETokenizer.train("hello world, hello there. " * 20, 300)
    model = tl.GPT(gpt2_style(vocab_size=tok.vocab_size), seed=0)
    folder = save_pretrained(model, tmp_path / "withtok", tokenizer=tok)
    assert (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    back = tokenizer_from_pretrained(folder)
    text = "hello there world<|endoftext|>"
    assert back.encode(text) == tok.encode(text)
    assert back.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")
    for name in ("config.json", "generation_config.json"):      # only ids the vocabulary has
        cfg = json.loads((folder / name).read_text())
        assert cfg["eos_token_id"] == tok.eos_id < tok.vocab_size and cfg["bos_token_id"] is None
    bare = json.loads((save_pretrained(model, tmp_path / "bare") / "config.json").read_text())
    assert bare["eos_token_id"] is None and bare["bos_token_id"] is None      # never GPT-2's 50256 in 300 ids
    with pytest.raises(ValueError, match=f"tokenizer has {tok.vocab_size} tokens"):
        save_pretrained(tl.GPT(gpt2_style(vocab_size=200)), tmp_path / "small", tokenizer=tok)


def test_bfloat16_checkpoint_loads(tmp_path):
    """NumPy has no bfloat16: such files (written here by hand in the safetensors format) are widened to float32."""
    import struct
    w = random_hf_weights(30, 8, 1, 16)
    header, blobs, off, widened = {}, [], 0, {}
    for k, v in w.items():
        bits = (v.view(np.uint32) >> 16).astype("<u2")
        widened[k] = (bits.astype(np.uint32) << 16).view(np.float32)
        b = bits.tobytes()
        header[k] = {"dtype": "BF16", "shape": list(v.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    folder = tmp_path / "bf16"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    (folder / "config.json").write_text(json.dumps(hf_config(30, 8, 1, 16, 2)))
    m = from_pretrained(folder, dtype=np.float64)
    ids = np.arange(8)
    np.testing.assert_allclose(logits_of(m, ids), ref_gpt2_logits(widened, ids, 1, 2), atol=1e-5, rtol=0)


def test_unscaled_attention_is_honoured(tmp_path):
    """scale_attn_weights: false -> scores q k^T without 1/sqrt(D) (it used to load silently, logits off)."""
    v, ctx, c, n_head = 40, 12, 32, 4
    w = random_hf_weights(v, ctx, 2, c, seed=5)
    folder = write_hf(tmp_path / "noscale", w, hf_config(v, ctx, 2, c, n_head, scale_attn_weights=False))
    m = from_pretrained(folder, dtype=np.float64)
    ids = np.arange(ctx) % v
    ref = ref_gpt2_logits(w, ids, 2, n_head, scale=False)
    np.testing.assert_allclose(logits_of(m, ids), ref, atol=1e-5, rtol=0)
    assert np.abs(ref - ref_gpt2_logits(w, ids, 2, n_head)).max() > 1e-2     # the field matters
    again = from_pretrained(save_pretrained(m, tmp_path / "again"), dtype=np.float64)
    np.testing.assert_allclose(logits_of(again, ids), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("field, value, match", [
    ("scale_attn_by_inverse_layer_idx", True, "per-layer"),
    ("activation_function", "relu", "tanh form"),
    ("activation_function", "gelu", "tanh form"),
    ("add_cross_attention", True, "cross-attention"),
    ("some_new_switch", 1, "unknown gpt2 config fields"),
])
def test_fields_we_do_not_compute_are_refused(tmp_path, field, value, match):
    w = random_hf_weights(20, 8, 1, 16)
    folder = write_hf(tmp_path / "f", w, hf_config(20, 8, 1, 16, 2, **{field: value}))
    with pytest.raises(PretrainedFormatError, match=match) as e:
        from_pretrained(folder)
    assert "config.json" in str(e.value) and field in str(e.value)
    if field == "some_new_switch":                      # a caller may vouch for a field
        assert from_pretrained(folder, ignore_fields=[field]).config.n_layer == 1


def test_reorder_and_upcast_needs_float32(tmp_path):
    w = random_hf_weights(20, 8, 1, 16)
    folder = write_hf(tmp_path / "f", w, hf_config(20, 8, 1, 16, 2, reorder_and_upcast_attn=True))
    assert from_pretrained(folder).dtype == np.float32
    with pytest.raises(PretrainedFormatError, match="reorder_and_upcast_attn"):
        from_pretrained(folder, dtype=np.float16)
