"""The fine-tuning runs end to end, as the CLI and the examples call them: ``run_classify``, ``run_instruct``; and
``tinygrad-llm finetune predict`` (``run_predict``), which classifies texts with a ``run_classify`` checkpoint.

Each reads its data, builds the base model (GPT-2 weights, a tinygrad-llm checkpoint or a preset), optionally wraps
it with LoRA, trains with AdamW, reports metrics, saves a checkpoint in the trainer's format to ``out_dir`` (LoRA
merged), and returns a summary dict.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from .classifier import ClassificationDataset, GPTClassifier, accuracy, evaluate_loss, read_labeled_file
from .common import claim_out_dir, eos_id_of, fit, load_base, save_finetuned
from .instruct import (InstructionDataset, collate, format_example, generate_responses, load_instruction_data,
                       split_instruction_data)
from .lora import apply_lora, merge_lora

__all__ = ["run_classify", "run_instruct", "load_classifier", "split_classification_data", "balance_classes",
           "configure_predict", "run_predict"]


def balance_classes(texts: list, labels: list, seed: int = 123) -> tuple[list, list]:
    """Undersample every class to the size of the smallest (the book balances spam and ham this way)."""
    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    n = min(int((y == c).sum()) for c in np.unique(y))
    keep = np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), n, replace=False) for c in np.unique(y)]))
    return [texts[i] for i in keep], [labels[i] for i in keep]


def split_classification_data(texts: list, labels: list, train: float = 0.7, val: float = 0.1, seed: int = 123):
    """Shuffle (seeded) and split 70% / 10% / 20% (the book's split): three (texts, labels) pairs."""
    order = np.random.default_rng(seed).permutation(len(texts))
    n_train, n_val = int(len(texts) * train), int(len(texts) * val)
    parts = order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]
    return [([texts[i] for i in p], [labels[i] for i in p]) for p in parts]


def run_classify(data: str, val_data: str | None = None, test_data: str | None = None, *,
                 init_from: str | None = None, checkpoint: str | None = None, preset: str | None = None,
                 tokenizer=None, out_dir: str = "out/classifier", epochs: int = 5, max_steps: int | None = None,
                 batch_size: int = 8, lr: float = 5e-5, weight_decay: float = 0.1, trainable: str | int = "last_block",
                 pool: str = "last_token", max_length: int | None = None, balance: bool = False,
                 lora_rank: int = 0, lora_alpha: float = 16.0, eval_batches: int | None = None, seed: int = 123,
                 device: str = "cpu", vocab_size: int = 512, context_length: int | None = None, text_col=None,
                 label_col=None, overwrite: bool = False,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fine-tune a classifier on ``data`` (CSV/TSV of text, label); see ``GPTClassifier`` and the module doc.

    Without ``val_data``/``test_data`` the file is shuffled and split 70/10/20. Returns a summary with the
    train/val/test accuracy, the losses and the checkpoint path.
    """
    from ..train.build import require_device
    require_device(device)
    with claim_out_dir(out_dir, overwrite, log, {"--init-from": init_from, "--checkpoint": checkpoint}):
        texts, labels, names = read_labeled_file(data, text_col, label_col)
        if balance:
            texts, labels = balance_classes(texts, labels, seed)
        if val_data or test_data:
            splits = [(texts, labels)]
            for extra in (val_data, test_data):
                if extra:
                    t, y, _ = read_labeled_file(extra, text_col, label_col, label_names=names)
                    splits.append((t, y))
                else:
                    splits.append(([], []))
        else:
            splits = split_classification_data(texts, labels, seed=seed)
        if not splits[0][0]:
            raise ValueError(f"{data}: no training rows after splitting ({len(texts)} rows)")
        log(f"{len(names)} classes {names}; train {len(splits[0][0])}, val {len(splits[1][0])}, "
            f"test {len(splits[2][0])} rows")

        gpt, tok = load_base(init_from, checkpoint, preset, tokenizer, texts=splits[0][0], vocab_size=vocab_size,
                             context_length=context_length, seed=seed, log=log)
        pad = eos_id_of(tok)
        ctx = gpt.config.context_length
        train_ds = ClassificationDataset(*splits[0], tok, min(max_length or ctx, ctx), pad)
        length = train_ds.max_length                          # the book pads every text to the longest training one
        val_ds, test_ds = (ClassificationDataset(*s, tok, length, pad) if s[0] else None for s in splits[1:])
        pad_to = length if pool == "last" else None

        clf = GPTClassifier(gpt, len(names), trainable=trainable, pool=pool, seed=seed)
        clf.pad_to = pad_to
        if lora_rank:
            log(str(apply_lora(clf, lora_rank, lora_alpha, keep_trainable=("head",), seed=seed)))
        else:
            log(f"trainable ({trainable}): {clf.num_parameters(True):,} of {clf.num_parameters():,} parameters")
        clf.to(device)

        def metrics() -> dict:
            m = {"train_loss": evaluate_loss(clf, train_ds, batch_size, eval_batches, pad_to)}
            if val_ds is not None:
                m["val_loss"] = evaluate_loss(clf, val_ds, batch_size, eval_batches, pad_to)
                m["val_acc"] = accuracy(clf, val_ds, batch_size, eval_batches, pad_to)
            return m

        before = metrics()
        log("before fine-tuning: " + " ".join(f"{k} {v:.4f}" for k, v in before.items()))
        hist = fit(clf, clf.named_parameters(), lambda b: clf.loss(b[0], b[2], b[1]),
                   lambda ep: train_ds.batches(batch_size, shuffle=True, rng=seed + ep, pad_to=pad_to, drop_last=True),
                   epochs=epochs, max_steps=max_steps, lr=lr, weight_decay=weight_decay, eval_fn=metrics, log=log)
        result = {"train_acc": accuracy(clf, train_ds, batch_size, pad_to=pad_to)}
        for key, ds in (("val_acc", val_ds), ("test_acc", test_ds)):
            if ds is not None:
                result[key] = accuracy(clf, ds, batch_size, pad_to=pad_to)
        log("accuracy: " + ", ".join(f"{k[:-4]} {v:.1%}" for k, v in result.items()))
        if lora_rank:
            merge_lora(clf, unfreeze=True)
        info = {"num_classes": len(names), "labels": names, "pool": pool, "max_length": length, "pad_id": pad}
        path = save_finetuned(out_dir, clf, tok, hist["steps"], {"classifier": info, "metrics": result,
                                                                  "history": hist["evals"]}, model_config=gpt.config)
        log(f"saved {path}")
        return {**result, "before": before, "losses": hist["losses"], "evals": hist["evals"], "path": str(path),
                "labels": names, "model": clf, "tokenizer": tok}


def load_classifier(path: str, dtype=np.float32, device: str = "cpu"):
    """(classifier, tokenizer, info) from a ``run_classify`` checkpoint; info has labels, pool, max_length."""
    from ..model.gpt import GPT
    from ..tokenizer import load_tokenizer
    from ..train.build import model_config_from_dict, require_device
    from ..train.checkpoint import load_checkpoint
    require_device(device)
    ck = load_checkpoint(path)
    info = ck.get("classifier")
    if not info:
        raise ValueError(f"{ck.path}: not a classifier checkpoint (no 'classifier' section: it was not written by "
                         "`tinygrad-llm finetune classify`); for a language model use `tinygrad-llm generate`")
    gpt = GPT(model_config_from_dict(ck["model_config"]), seed=None, dtype=dtype, init=False)
    clf = GPTClassifier(gpt, info["num_classes"], trainable="all", pool=info["pool"])
    clf.pad_to = info["max_length"] if info["pool"] == "last" else None
    clf.load_state_dict(ck.model)
    clf.to(device)
    clf.eval()
    return clf, load_tokenizer(ck["tokenizer"]), info


def configure_predict(p) -> None:
    """Flags of ``tinygrad-llm finetune predict``."""
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder (or output folder) written by "
                                                       "`tinygrad-llm finetune classify`")
    p.add_argument("--text", action="append", default=[], metavar="TEXT", help="a text to classify (repeatable)")
    p.add_argument("--file", help="classify every non-empty line of this UTF-8 file ('-': standard input)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")


def run_predict(args) -> int:
    """``tinygrad-llm finetune predict``: one ``label<TAB>text`` line per text, in the order given."""
    import sys
    from ..cli import UserError
    texts = list(args.text)
    if args.file:
        src = sys.stdin.read() if args.file == "-" else _read_lines_file(args.file)
        texts += [line for line in src.splitlines() if line.strip()]
    if not texts:
        raise UserError("nothing to classify: give --text TEXT (repeatable) or --file FILE")
    clf, tok, info = load_classifier(args.checkpoint, device=args.device)
    from .classifier import classify_texts
    for text, label in zip(texts, classify_texts(clf, tok, texts, info["labels"])):
        print(f"{label}\t{text}")
    return 0


def _read_lines_file(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--file {path!r}: no such file")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"--file {path!r}: not UTF-8 text ({e})") from None


def run_instruct(data: str, *, init_from: str | None = None, checkpoint: str | None = None,
                 preset: str | None = None, tokenizer=None, out_dir: str = "out/instruct", epochs: int = 2,
                 max_steps: int | None = None, batch_size: int = 8, lr: float = 5e-5, weight_decay: float = 0.1,
                 mask_prompt: bool = False, allowed_max_length: int | None = None, lora_rank: int = 0,
                 lora_alpha: float = 16.0, eval_batches: int | None = 5, max_new_tokens: int = 256,
                 num_responses: int | None = None, responses: str | None = None, export_hf: str | None = None,
                 seed: int = 123, device: str = "cpu", vocab_size: int = 512, context_length: int | None = None,
                 overwrite: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Instruction-tune on ``data`` (JSON list of {instruction, input, output}), then write the model's responses to
    the held-out test split to ``responses`` (default ``out_dir/instruction-data-with-response.json``).

    ``context_length`` applies to ``preset`` models only (default 256: the Alpaca template alone is ~40 tokens).
    """
    from ..train.build import require_device
    require_device(device)
    with claim_out_dir(out_dir, overwrite, log, {"--init-from": init_from, "--checkpoint": checkpoint}):
        records = load_instruction_data(data)
        train, val, test = split_instruction_data(records)
        log(f"{len(records)} records: train {len(train)}, val {len(val)}, test {len(test)}")
        texts = ["".join(format_example(r)) for r in train]      # a BPE trained for --preset learns the template
        model, tok = load_base(init_from, checkpoint, preset, tokenizer, texts=texts, vocab_size=vocab_size,
                               context_length=context_length or (256 if preset else None), seed=seed, log=log)
        pad = eos_id_of(tok)
        ctx = model.config.context_length
        limit = min(allowed_max_length or ctx, ctx)
        train_ds, val_ds = InstructionDataset(train, tok, limit + 1), InstructionDataset(val, tok, limit + 1)
        cut = sum(len(it["input_ids"]) > limit for it in train_ds.items)
        if cut:
            log(f"note: {cut} of {len(train_ds)} training examples are longer than {limit} tokens and are cropped")
        if lora_rank:
            log(str(apply_lora(model, lora_rank, lora_alpha, seed=seed)))
        model.to(device)

        def batches(ds, shuffle: bool, ep: int = 0):
            order = np.random.default_rng(seed + ep).permutation(len(ds)) if shuffle else np.arange(len(ds))
            for s in range(0, len(order), batch_size):
                yield collate([ds[i] for i in order[s:s + batch_size]], pad_id=pad, allowed_max_length=limit,
                              mask_prompt=mask_prompt)

        def loss_of(b):
            return model.loss(b[0], b[1])

        def val_loss() -> dict:
            from autograd import no_grad
            out = {}
            model.eval()
            with no_grad():
                for name, ds in (("train_loss", train_ds), ("val_loss", val_ds)):
                    vals = [float(loss_of(b).item()) for k, b in enumerate(batches(ds, False))
                            if eval_batches is None or k < eval_batches]
                    if vals:
                        out[name] = float(np.mean(vals))
            return out

        before = val_loss()
        log("before fine-tuning: " + " ".join(f"{k} {v:.4f}" for k, v in before.items()))
        hist = fit(model, model.named_parameters(), loss_of, lambda ep: batches(train_ds, True, ep), epochs=epochs,
                   max_steps=max_steps, lr=lr, weight_decay=weight_decay, eval_fn=val_loss, log=log)
        if lora_rank:
            merge_lora(model, unfreeze=True)
        out = Path(out_dir)
        path = save_finetuned(out, model, tok, hist["steps"], {"instruct": {"mask_prompt": mask_prompt,
                                                                              "allowed_max_length": limit},
                                                                 "history": hist["evals"]})
        log(f"saved {path}")
        if export_hf:
            log(f"exported the Hugging Face layout to {model.save_pretrained(export_hf, tokenizer=tok)}")
        entries = test if num_responses is None else test[:num_responses]
        resp_path = Path(responses) if responses else out / "instruction-data-with-response.json"
        answered = generate_responses(model, tok, entries, resp_path, max_new_tokens, eos_id=pad)
        log(f"wrote {len(answered)} responses to {resp_path}")
        for r in answered[:3]:
            log(f"\n### {r['instruction']}\n{r['input']}\n-> correct: {r['output']!r}\n"
                f"-> model:   {r['model_response']!r}")
        return {"before": before, "losses": hist["losses"], "evals": hist["evals"], "path": str(path),
                "responses": str(resp_path), "model": model, "tokenizer": tok}
