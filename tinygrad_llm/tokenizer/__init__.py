"""Tokenizers: byte-level BPE (trainable, GPT-2 compatible), character-level, and chat templates.

    from tinygrad_llm.tokenizer import BPETokenizer, CharTokenizer, load_tokenizer
    tok = BPETokenizer.train(text, vocab_size=4096)          # or BPETokenizer.from_gpt2_files(enc, bpe)
    ids = tok.encode("Hello world"); tok.decode(ids)
    tok.encode("a<|endoftext|>", allowed_special="all")      # special names are plain text unless allowed
    tok.save("tok.json"); tok = load_tokenizer("tok.json")   # dispatches on the file's "type"
    ids = chat_template_for(tok).encode(tok, [{"role": "user", "content": "Hi"}])
    tok = from_pretrained("Llama-3.2-1B/")                   # a Hugging Face folder (tokenizer.json); save_pretrained
"""
from .base import Tokenizer, TokenizerFormatError, load_tokenizer
from .bpe import EOT, BPETokenizer
from .bpe_train import GPT2_PATTERN
from .char import CharTokenizer
from .chat import ChatTemplate, chat_template_for
from .hf import HFTokenizer
from .pretrained import from_pretrained, save_pretrained
from .gpt2_files import bytes_to_unicode

__all__ = ["Tokenizer", "TokenizerFormatError", "load_tokenizer", "BPETokenizer", "CharTokenizer", "EOT",
           "GPT2_PATTERN", "bytes_to_unicode", "ChatTemplate", "chat_template_for", "HFTokenizer", "from_pretrained", "save_pretrained"]
