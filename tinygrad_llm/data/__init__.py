"""Data: corpora (embedded default, .txt files/folders), token-window datasets, token files and the DataLoader.

    from tinygrad_llm.data import default_corpus, SlidingWindowDataset, DataLoader, train_val_split
    train_ids, val_ids = train_val_split(ids, 0.1)
    loader = DataLoader(SlidingWindowDataset(train_ids, max_length=256, stride=256), batch_size=8, seed=0)
    for x, y in loader: ...          # int64 (B, T) inputs and next-token targets
"""
from .corpus import default_corpus, load_text
from .datasets import (SlidingWindowDataset, TokenFileDataset, read_token_file_meta, train_val_split,
                       write_token_file)
from .loader import DataLoader

__all__ = ["default_corpus", "load_text", "SlidingWindowDataset", "TokenFileDataset", "write_token_file",
           "read_token_file_meta", "train_val_split", "DataLoader"]
