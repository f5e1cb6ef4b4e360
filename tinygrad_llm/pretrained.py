"""``tl.pretrained``: GPT-2 weights in the Hugging Face layout (the code lives in ``tinygrad_llm.finetune.pretrained``).

    import tinygrad_llm as tl
    model = tl.pretrained.load_gpt2("path/to/gpt2")          # folder with model.safetensors (+ config.json)
    tok = tl.pretrained.load_gpt2_tokenizer("path/to/gpt2")  # vocab.json + merges.txt or encoder.json + vocab.bpe
    tl.pretrained.export_gpt2(model, "out/gpt2-ft", tokenizer=tok)
"""
from .finetune.pretrained import (HF_TO_OURS, KNOWN_N_HEAD, PretrainedFormatError, export_gpt2, gpt2_config_from_hf,
                                  hf_config_from_gpt, load_gpt2, load_gpt2_tokenizer)

__all__ = ["load_gpt2", "export_gpt2", "load_gpt2_tokenizer", "gpt2_config_from_hf", "hf_config_from_gpt",
           "PretrainedFormatError", "HF_TO_OURS", "KNOWN_N_HEAD"]
