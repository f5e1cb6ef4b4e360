"""Hugging Face model folders: load any supported family into our decoder, and export back to the same layout.

    import tinygrad_llm as tl
    model = tl.from_pretrained("Llama-3.2-1B/")        # GPT-2, Llama 3.x, Qwen3 (dense and MoE), Gemma 3 text
    tok = tl.tokenizer.from_pretrained("Llama-3.2-1B/")
    model.save_pretrained("out/", tokenizer=tok)       # config.json + model.safetensors (+ tokenizer files)

``configs`` maps config.json to GPTConfig (every field honoured or refused), ``names`` maps the stored tensor names
to our parameters, ``safetensors_io`` reads memory-mapped files (float32 / float16 / bfloat16, sharded) and writes
them, ``folder`` puts it together.
"""
from .configs import config_from_hf, hf_from_config
from .folder import KNOWN_N_HEAD, from_pretrained, is_hf_folder, read_config, save_pretrained
from .safetensors_io import PretrainedFormatError

__all__ = ["from_pretrained", "save_pretrained", "config_from_hf", "hf_from_config", "read_config", "is_hf_folder",
           "PretrainedFormatError", "KNOWN_N_HEAD"]
