"""Direct preference optimisation (DPO; Rafailov et al. 2023, the book's chapter 7 bonus): learn from pairs of a
preferred ("chosen") and a dispreferred ("rejected") response without a reward model.

    data = load_preference_data("instruction-data-with-preference.json")  # {instruction, input, chosen, rejected}
    ds = PreferenceDataset(data, tokenizer)
    batch = collate_preferences([ds[i] for i in range(8)], pad_id=50256)
    pi = sequence_logprobs(model, batch["inputs"], batch["targets"])         # (2B,): chosen rows, then rejected
    with ag.no_grad(): ref = sequence_logprobs(reference, batch["inputs"], batch["targets"])
    loss, r_chosen, r_rejected = dpo_loss(pi[:B], pi[B:], ref[:B], ref[B:], beta=0.1)

The loss, for a sequence log-probability log pi(y | x) summed over the response tokens only (the prompt is masked):

    z    = beta * ((log pi(y_c|x) - log ref(y_c|x)) - (log pi(y_r|x) - log ref(y_r|x)))
    loss = mean(-log sigmoid(z))          computed as logsumexp(0, -z): stable for any z

The implicit rewards are ``beta * (log pi - log ref)`` of each response; the reward margin is their difference
(chosen minus rejected) and the accuracy the fraction of pairs with a positive margin. Before any training the
policy equals the reference, so every reward, the margin and the accuracy are 0 (the baseline to beat).

The reference is a frozen copy of the starting model; its log-probabilities are computed once per batch under
``no_grad`` (no graph). With LoRA only the adapters of the policy train, and they are merged before saving.
Prompts use the instruction format (``instruct.format_input`` + "### Response:"); each response is followed by the
end-of-text token, which counts as a response token (the model learns where to stop), as in instruction tuning.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

import autograd as ag
from autograd import Tensor
from autograd import functional as F

from .instruct import RESPONSE_HEADER, collate, format_input, load_records, split_instruction_data

__all__ = ["load_preference_data", "PreferenceDataset", "collate_preferences", "sequence_logprobs",
           "dpo_loss", "preference_metrics", "evaluate_preferences", "frozen_copy", "demo_preferences",
           "write_demo_preferences", "run_dpo"]


def load_preference_data(path: str) -> list[dict]:
    """A JSON list (or JSON Lines) of {"instruction", "input", "chosen", "rejected"} records; checks each one."""
    return load_records(path, ("instruction", "chosen", "rejected"))


class PreferenceDataset:
    """Token ids of each pair: ``ds[i]`` -> {"prompt": ids, "chosen": ids, "rejected": ids}.

    ``max_length`` crops prompt + response to that many tokens (the end goes first).
    """

    def __init__(self, data: Sequence[dict], tokenizer, max_length: int | None = None):
        self.items = []
        for entry in data:
            prompt = list(tokenizer.encode(format_input(entry) + RESPONSE_HEADER))
            item = {"prompt": prompt}
            for key in ("chosen", "rejected"):
                resp = list(tokenizer.encode(entry[key]))
                ids = prompt + resp
                item[key] = ids[:max_length] if max_length else ids
            self.items.append(item)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def collate_preferences(batch: Sequence[dict], pad_id: int, allowed_max_length: int | None = None) -> dict:
    """One (2B, L) batch: rows 0..B-1 the chosen sequences, rows B..2B-1 the rejected ones.

    Returns {"inputs", "targets"} int64 (2B, L) from ``instruct.collate`` with ``mask_prompt``: targets are -100
    at prompt positions and after the end-of-text, so only response tokens (and the end-of-text) count.
    """
    rows = [{"input_ids": it[k], "prompt_length": len(it["prompt"])} for k in ("chosen", "rejected") for it in batch]
    x, y = collate(rows, pad_id=pad_id, allowed_max_length=allowed_max_length, mask_prompt=True)
    return {"inputs": x, "targets": y, "pairs": len(batch)}


def sequence_logprobs(model, inputs, targets, average: bool = False, logits: Tensor | None = None) -> Tensor:
    """Sum over positions of log p(target | prefix) where targets != -100: inputs, targets (N, T) -> (N,).

    ``average`` divides by the number of counted tokens (the book's variant). ``logits`` (N, T, V) may be given
    instead of running ``model``.
    """
    logits = model(inputs) if logits is None else logits
    t = targets.data if isinstance(targets, Tensor) else targets
    t = ag.backend.to_device(np.asarray(t) if not hasattr(t, "dtype") else t, logits.device)
    token_lp = -F.cross_entropy(logits, t, reduction="none")             # (N, T), 0 where the target is -100
    total = token_lp.sum(axis=-1)
    if average:
        xp = ag.backend.xp_of(t)
        counts = xp.maximum((t != -100).sum(axis=-1), 1).astype(total.dtype)
        total = total / Tensor(counts)
    return total


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen, ref_rejected,
             beta: float = 0.1) -> tuple[Tensor, np.ndarray, np.ndarray]:
    """(loss, chosen_rewards, rejected_rewards): sequence log-probs (B,) each -> scalar loss, rewards (B,) arrays.

    The reference log-probs are constants (arrays or Tensors without a graph).
    """
    if beta <= 0:
        raise ValueError(f"dpo_loss: beta must be > 0, got {beta}")
    def const(r) -> Tensor:                                # a reference value on the policy's device and dtype
        a = r.data if isinstance(r, Tensor) else r
        a = a if hasattr(a, "dtype") else np.asarray(a)
        return Tensor(ag.backend.to_device(a, policy_chosen.device).astype(policy_chosen.dtype, copy=False))
    rc, rr = const(ref_chosen), const(ref_rejected)
    chosen = (policy_chosen - rc) * beta
    rejected = (policy_rejected - rr) * beta
    z = chosen - rejected
    # -log sigmoid(z) = log(exp(0) + exp(-z)): a logsumexp is stable for any z and smooth at z = 0, where training
    # starts (relu(-z) + log(1 + exp(-|z|)) has a zero subgradient there)
    loss = ag.stack([z * 0.0, -z], axis=0).logsumexp(axis=0).mean()
    return loss, ag.backend.to_numpy(chosen.data).copy(), ag.backend.to_numpy(rejected.data).copy()


def preference_metrics(chosen_rewards: np.ndarray, rejected_rewards: np.ndarray) -> dict[str, float]:
    """Mean rewards, reward margin (chosen - rejected) and accuracy (fraction with a positive margin)."""
    margin = chosen_rewards - rejected_rewards
    return {"chosen_reward": float(np.mean(chosen_rewards)), "rejected_reward": float(np.mean(rejected_rewards)),
            "reward_margin": float(np.mean(margin)), "reward_accuracy": float(np.mean(margin > 0))}


def frozen_copy(model):
    """A copy of ``model`` (same class and config, copied weights) with no trainable parameter, in eval mode."""
    ref = type(model)(model.config, seed=None, dtype=model.dtype, init=False)
    ref.load_state_dict(model.state_dict(copy=True))
    ref.to(model.device)
    ref.requires_grad_(False)
    ref.eval()
    return ref


class _Objective:
    """The per-batch DPO computation shared by training and validation."""

    def __init__(self, policy, reference, beta: float, average: bool):
        self.policy, self.reference, self.beta, self.average = policy, reference, beta, average

    def __call__(self, batch: dict) -> tuple[Tensor, np.ndarray, np.ndarray]:
        b = batch["pairs"]
        with ag.no_grad():
            ref = ag.backend.to_numpy(sequence_logprobs(self.reference, batch["inputs"], batch["targets"],
                                                        self.average).data)
        pi = sequence_logprobs(self.policy, batch["inputs"], batch["targets"], self.average)
        return dpo_loss(pi[:b], pi[b:], ref[:b], ref[b:], self.beta)


def evaluate_preferences(objective: _Objective, batches) -> dict[str, float]:
    """Loss and preference metrics over ``batches`` (under no_grad, model in eval mode)."""
    objective.policy.eval()
    losses, chosen, rejected = [], [], []
    with ag.no_grad():
        for batch in batches:
            loss, c, r = objective(batch)
            losses.append(float(loss.item()))
            chosen.append(c)
            rejected.append(r)
    if not losses:
        return {}
    return {"loss": float(np.mean(losses)), **preference_metrics(np.concatenate(chosen), np.concatenate(rejected))}


_WORDS = ["apple", "river", "stone", "cloud", "tiger", "lamp", "green", "music", "paper", "chair", "ocean", "bread"]


def demo_preferences(n: int = 64, seed: int = 0) -> list[dict]:
    """Preference records where the chosen response follows a learnable pattern ("{w} is good." over
    "{w} is bad."), for trying DPO without downloads (``--demo``)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w = _WORDS[rng.integers(len(_WORDS))]
        out.append({"instruction": "Describe the word.", "input": w, "chosen": f"{w} is good.",
                    "rejected": f"{w} is bad."})
    return out


def write_demo_preferences(path, n: int = 64, seed: int = 0) -> str:
    """Write ``demo_preferences`` as a JSON list; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(demo_preferences(n, seed), indent=1) + "\n", encoding="utf-8")
    return str(p)


def run_dpo(data: str, *, init_from: str | None = None, checkpoint: str | None = None, preset: str | None = None,
            tokenizer=None, out_dir: str = "out/dpo", epochs: int = 1, max_steps: int | None = None,
            batch_size: int = 8, lr: float = 5e-6, weight_decay: float = 0.01, beta: float = 0.1,
            average_logprobs: bool = False, allowed_max_length: int | None = None, lora_rank: int = 0,
            lora_alpha: float = 16.0, eval_batches: int | None = 5, log_every: int = 1, seed: int = 123,
            device: str = "cpu", vocab_size: int = 512, context_length: int | None = None,
            overwrite: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """DPO on ``data`` (JSON list of {instruction, input, chosen, rejected}), split 85/10/5 in file order like the
    instruction data (the test part is used as extra validation). Logs the loss, rewards, reward margin and
    accuracy every ``log_every`` steps and on the validation split after each epoch; saves a checkpoint in the
    fine-tuning format (LoRA merged). Returns a summary with the metrics before and after and the history.
    """
    from .common import claim_out_dir, eos_id_of, fit, load_base, save_finetuned
    from .lora import apply_lora, merge_lora
    with claim_out_dir(out_dir, overwrite, log, {"--init-from": init_from, "--checkpoint": checkpoint}):
        records = load_preference_data(data)
        train, val, test = split_instruction_data(records)
        val = val + test
        log(f"{len(records)} preference pairs: train {len(train)}, validation {len(val)}")
        texts = [format_input(r) + RESPONSE_HEADER + r["chosen"] + "\n" + r["rejected"] for r in train]
        model, tok = load_base(init_from, checkpoint, preset, tokenizer, texts=texts, vocab_size=vocab_size,
                               context_length=context_length or (256 if preset else None), seed=seed, log=log)
        pad = eos_id_of(tok)
        limit = min(allowed_max_length or model.config.context_length, model.config.context_length)
        train_ds, val_ds = PreferenceDataset(train, tok, limit + 1), PreferenceDataset(val, tok, limit + 1)
        cut = sum(len(it[k]) > limit for it in train_ds.items for k in ("chosen", "rejected"))
        if cut:
            log(f"note: {cut} of {2 * len(train_ds)} training sequences are longer than {limit} tokens and are cropped")
        model.to(device)
        reference = frozen_copy(model)
        if lora_rank:
            log(str(apply_lora(model, lora_rank, lora_alpha, seed=seed)))
        objective = _Objective(model, reference, beta, average_logprobs)

        def batches(ds, shuffle: bool, ep: int = 0, limit_batches: int | None = None):
            order = np.random.default_rng(seed + ep).permutation(len(ds)) if shuffle else np.arange(len(ds))
            for k, s in enumerate(range(0, len(order), batch_size)):
                if limit_batches is not None and k >= limit_batches:
                    return
                yield collate_preferences([ds[i] for i in order[s:s + batch_size]], pad, limit)

        steps: list[dict] = []

        def loss_fn(batch):
            loss, c, r = objective(batch)
            steps.append({"step": len(steps) + 1, "loss": float(loss.item()), **preference_metrics(c, r)})
            if log_every and len(steps) % log_every == 0:
                log(f"step {len(steps)}: " + " ".join(f"{k} {v:.4f}" for k, v in steps[-1].items() if k != "step"))
            return loss

        def val_metrics() -> dict:
            return {f"val_{k}": v for k, v in evaluate_preferences(objective, batches(val_ds, False, 0,
                                                                                      eval_batches)).items()}

        before = val_metrics()
        log("before DPO: " + " ".join(f"{k} {v:.4f}" for k, v in before.items()))
        hist = fit(model, model.named_parameters(), loss_fn, lambda ep: batches(train_ds, True, ep), epochs=epochs,
                   max_steps=max_steps, lr=lr, weight_decay=weight_decay, eval_fn=val_metrics, log=log)
        after = hist["evals"][-1] if hist["evals"] else val_metrics()
        if lora_rank:
            merge_lora(model, unfreeze=True)
        settings = {"beta": beta, "average_logprobs": average_logprobs, "allowed_max_length": limit,
                    "lora_rank": lora_rank}
        path = save_finetuned(out_dir, model, tok, hist["steps"], {"dpo": settings, "history": hist["evals"],
                                                                    "metrics": {k: v for k, v in after.items()
                                                                                if k not in ("step", "epoch")}})
        log(f"saved {path}")
        return {"before": before, "after": after, "steps": steps, "evals": hist["evals"], "path": str(path),
                "model": model, "tokenizer": tok}
