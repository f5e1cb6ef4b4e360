"""Against Hugging Face transformers (optional: skipped unless torch and transformers are installed): logits of tiny
random models of every family agree (float32, max abs diff <= 1e-4) both ways, folders written here load there and
folders written there load here (float32 and bfloat16), and the exported tokenizer and chat template give the same
ids and text."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import tinygrad_llm as tl  # noqa: E402
from tinygrad_llm.tokenizer import BPETokenizer  # noqa: E402
from tinygrad_llm.tokenizer.chat import chat_template_for  # noqa: E402

from test_hf_models import CHAT, FAMILIES, random_model  # noqa: E402

TOL = 1e-4


def their_logits(folder, idx, dtype=torch.float32) -> np.ndarray:
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, attn_implementation="eager")
    with torch.no_grad():
        return model.eval()(torch.tensor(idx)).logits.float().numpy()


def ids(vocab: int, t: int = 20) -> np.ndarray:
    return np.random.default_rng(1).integers(0, vocab, (2, t))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_our_export_runs_the_same_in_transformers(tmp_path, name):
    model = random_model(name)
    folder = model.save_pretrained(tmp_path / name)
    idx = ids(model.config.vocab_size)
    assert np.abs(their_logits(folder, idx) - model(idx).numpy()).max() <= TOL


def _their_configs():
    c = dict(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=96, max_position_embeddings=64)
    return {
        "gpt2": transformers.GPT2Config(vocab_size=300, n_positions=64, n_embd=64, n_layer=2, n_head=4),
        "gpt2-unscaled": transformers.GPT2Config(vocab_size=300, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                                                 scale_attn_weights=False, tie_word_embeddings=False),
        "llama": transformers.LlamaConfig(**c, rope_theta=500000.0, rope_scaling=dict(
            rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
            original_max_position_embeddings=16)),
        "qwen3": transformers.Qwen3Config(**c, head_dim=32, tie_word_embeddings=True),
        "qwen3-moe": transformers.Qwen3MoeConfig(**c, head_dim=32, num_experts=4, num_experts_per_tok=2,
                                                 moe_intermediate_size=32, norm_topk_prob=True),
        "gemma3": transformers.Gemma3TextConfig(**{**c, "num_hidden_layers": 4}, head_dim=32, sliding_window=6,
                                                layer_types=["sliding_attention", "full_attention"] * 2,
                                                rope_scaling={"rope_type": "linear", "factor": 4.0},
                                                query_pre_attn_scalar=24, final_logit_softcapping=30.0),
    }


@pytest.mark.parametrize("name", ["gpt2", "gpt2-unscaled", "llama", "qwen3", "qwen3-moe", "gemma3"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_their_folders_load_here(tmp_path, name, dtype):
    torch.manual_seed(0)
    cfg = _their_configs()[name]
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():                 # weights large enough for O(1) logits; norm gains random too
        for n, p in model.named_parameters():
            p.normal_(0.0, 0.2) if p.ndim > 1 else p.add_(torch.randn_like(p) * 0.1)
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(str(tmp_path / name))
    ours = tl.from_pretrained(tmp_path / name)
    idx = ids(300)
    theirs = their_logits(tmp_path / name, idx)          # their model in float32, from the same stored weights
    assert np.abs(theirs - ours(idx).numpy()).max() <= TOL


@pytest.mark.parametrize("name", ["llama", "qwen3", "gemma3", "gpt2"])
def test_tokenizer_and_chat_template_match(tmp_path, name):
    tok = BPETokenizer.train("hello world, the quick brown fox. Don't 123 naïve " * 10, 290,
                             special_tokens=CHAT[name])
    folder = random_model(name).save_pretrained(tmp_path / name, tokenizer=tok)
    theirs = transformers.AutoTokenizer.from_pretrained(str(folder))
    ours = tl.tokenizer.from_pretrained(folder)
    for text in ["hello world" + "".join(CHAT[name]) + " fox", "Don't  123\n\n naïve", ""]:
        want = theirs(text, add_special_tokens=False)["input_ids"]
        assert ours.encode(text, allowed_special="all") == want
        assert ours.decode(want) == theirs.decode(want)
    if name == "gpt2":
        return
    msgs = [{"role": "system", "content": " be brief "}, {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "world"}, {"role": "user", "content": "fox"}]
    tpl = chat_template_for(ours)
    assert json.loads((folder / "tokenizer_config.json").read_text())["chat_template"] == tpl.jinja
    for gen in (True, False):
        assert theirs.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen) == tpl.render(msgs, gen)
        want = theirs.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen)
        want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want
        assert tpl.encode(ours, msgs, add_generation_prompt=gen) == list(want)
