"""Evaluating a fine-tuned model: a judge model scores its responses (the book's chapter 7), and multiple-choice
accuracy by log-likelihood (the HellaSwag / MMLU method).

    scores = score_responses(entries, "http://127.0.0.1:8000")       # any OpenAI-compatible server
    run_judge("instruction-data-with-response.json", "http://localhost:11434")   # writes the scores, the mean
    mcq_accuracy(model, tokenizer, load_mcq("questions.jsonl"))      # {"accuracy", "accuracy_norm", ...}

Judge. Each record (instruction, input, output and the model's response) becomes the book's prompt, sent as one
user message to ``/v1/chat/completions`` with temperature 0 and a fixed seed; the first integer 0..100 in the
answer is the score (``parse_score``), and an answer without one counts as unscored (left out of the mean).

Multiple choice. A JSON Lines file, one question per line: the text before the answer under ``context``
(``question``, ``ctx``), the candidate continuations under ``choices`` (``endings``, ``options``), the right one
under ``answer`` (``label``, ``gold``) as an index, a letter A.. or the choice text. Each choice is scored by the
sum of its tokens' log-probabilities after the context (``accuracy``) and by their mean per token
(``accuracy_norm``, the length-normalised variant, which does not favour short choices).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

import autograd as ag

from ..serve.client import ClientError, get_json, post_json
from .dpo import sequence_logprobs
from .instruct import format_input

__all__ = ["judge_prompt", "parse_score", "chat_endpoint", "query_judge", "score_responses", "run_judge",
           "load_mcq", "choice_logprobs", "mcq_accuracy", "run_mcq", "JudgeError"]


class JudgeError(ValueError):
    """The judge endpoint cannot be reached, answers with an error, or answers something else than a chat reply."""


def judge_prompt(entry: dict, response_key: str = "model_response") -> str:
    """The book's scoring prompt for one record."""
    return (f"Given the input `{format_input(entry)}` "
            f"and correct output `{entry['output']}`, "
            f"score the model response `{entry[response_key]}`"
            f" on a scale from 0 to 100, where 100 is the best score. "
            f"Respond with the integer number only.")


_NUMBER = re.compile(r"(?<![\d.\-])(\d{1,3})(?:\.\d+)?(?!\d)")


def parse_score(text: str) -> int | None:
    """The first number 0..100 in a judge's answer ("85", "Score: 85/100", "**90**."), else None."""
    for m in _NUMBER.finditer(text or ""):
        value = int(m.group(1))
        if 0 <= value <= 100:
            return value
    return None


def chat_endpoint(url: str) -> str:
    """``http://host:port`` or ``.../v1`` or the full ``.../v1/chat/completions`` URL -> the full URL."""
    u = url.rstrip("/")
    if u.endswith("/chat/completions"):
        return u
    return u + ("/chat/completions" if u.endswith("/v1") else "/v1/chat/completions")


def judge_model_name(url: str, timeout: float = 30.0) -> str:
    """The first model id listed by the server's ``/v1/models``."""
    base = chat_endpoint(url)[:-len("/chat/completions")]
    try:
        return str(get_json(base + "/models", timeout)["data"][0]["id"])
    except ClientError as e:
        raise JudgeError(f"the judge's model list: {e}") from None
    except (KeyError, IndexError, TypeError):
        raise JudgeError(f"{base}/models lists no model; pass --model NAME") from None


def query_judge(endpoint: str, model: str, prompt: str, timeout: float = 120.0, max_tokens: int = 64,
                seed: int = 123) -> str:
    """The judge's answer text to one user message (temperature 0, a fixed seed, as the book)."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0.0, "seed": seed,
            "max_tokens": max_tokens, "stream": False}
    try:
        out = post_json(endpoint, body, timeout)
    except ClientError as e:
        raise JudgeError(f"the judge: {e}") from None
    try:
        return str(out["choices"][0]["message"]["content"])
    except (KeyError, IndexError, TypeError):
        raise JudgeError(f"the judge at {endpoint} answered without choices[0].message.content: "
                         f"{json.dumps(out)[:200]}") from None


def score_responses(entries: Sequence[dict], judge: str, model: str | None = None,
                    response_key: str = "model_response", timeout: float = 120.0, max_tokens: int = 64,
                    progress: bool = False) -> list[dict]:
    """For each entry {"score": int | None, "judge_answer": str}; the judge is asked once per entry."""
    endpoint = chat_endpoint(judge)
    model = model or judge_model_name(judge, timeout)
    for i, e in enumerate(entries):
        missing = [k for k in ("instruction", "output", response_key) if k not in e]
        if missing:
            raise ValueError(f"record {i} has no {missing} field(s) (keys: {sorted(e)}); the judge needs the "
                             f"instruction, the correct output and the response (--response-key)")
    it = entries
    if progress:
        from tqdm import tqdm
        it = tqdm(entries, desc="scoring", leave=False)
    out = []
    for e in it:
        answer = query_judge(endpoint, model, judge_prompt(e, response_key), timeout, max_tokens)
        out.append({"score": parse_score(answer), "judge_answer": answer})
    return out


def run_judge(responses: str, judge: str, model: str | None = None, response_key: str = "model_response",
              out_path: str | None = None, timeout: float = 120.0, log: Callable[[str], None] = print
              ) -> dict[str, Any]:
    """Score the records of ``responses`` (a JSON list); write them with "score" (and the judge's answer) to
    ``out_path`` (default: ``<responses>-scores.json``); returns {"scores", "mean", "scored", "total", "path"}."""
    p = Path(responses)
    if not p.is_file():
        raise FileNotFoundError(f"responses file not found: {p}")
    try:
        entries = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON: {e}") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"{p}: expected a JSON list of records")
    results = score_responses(entries, judge, model, response_key, timeout, progress=True)
    scores = [r["score"] for r in results]
    valid = [s for s in scores if s is not None]
    mean = float(np.mean(valid)) if valid else float("nan")
    out = Path(out_path) if out_path else p.with_name(p.stem + "-scores.json")
    out.write_text(json.dumps([{**e, **r} for e, r in zip(entries, results)], indent=2, ensure_ascii=False) + "\n",
                   encoding="utf-8")
    if len(valid) < len(scores):
        log(f"note: {len(scores) - len(valid)} answers had no score 0..100 and are left out of the mean")
    log(f"mean score {mean:.2f} over {len(valid)} of {len(scores)} responses; wrote {out}")
    return {"scores": scores, "mean": mean, "scored": len(valid), "total": len(scores), "path": str(out)}


# ------------------------------------------------------------------------------------------- multiple choice
def load_mcq(path: str) -> list[dict]:
    """Questions from a JSON Lines file as {"context": str, "choices": [str, ...], "answer": int}."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"questions file not found: {p}")
    out = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            q = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}:{n}: not valid JSON: {e}") from None
        ctx = next((q[k] for k in ("context", "question", "ctx") if isinstance(q, dict) and k in q), None)
        choices = next((q[k] for k in ("choices", "endings", "options") if isinstance(q, dict) and k in q), None)
        answer = next((q[k] for k in ("answer", "label", "gold") if isinstance(q, dict) and k in q), None)
        if not isinstance(ctx, str) or not isinstance(choices, list) or len(choices) < 2 \
                or not all(isinstance(c, str) and c for c in choices) or answer is None:
            raise ValueError(f"{p}:{n}: a question needs 'context' (or 'question'), 'choices' (two or more "
                             f"non-empty strings) and 'answer'")
        out.append({"context": ctx, "choices": choices, "answer": _answer_index(answer, choices, f"{p}:{n}")})
    if not out:
        raise ValueError(f"{p}: no questions")
    return out


def _answer_index(answer, choices: list[str], where: str) -> int:
    if isinstance(answer, str) and answer.strip().isdigit():
        answer = int(answer)
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        return answer
    if isinstance(answer, str):
        a = answer.strip()
        if len(a) == 1 and "A" <= a.upper() <= chr(ord("A") + len(choices) - 1):
            return ord(a.upper()) - ord("A")
        if a in [c.strip() for c in choices]:
            return [c.strip() for c in choices].index(a)
    raise ValueError(f"{where}: 'answer' {answer!r} is neither an index 0..{len(choices) - 1}, a letter, "
                     f"nor one of the choices")


def choice_logprobs(model, tokenizer, context: str, choices: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(sum of log-probs (K,), token counts (K,)) of each choice's tokens after ``context``, in one batch.

    Context and choice are encoded separately (a choice's leading space stays with it, as in HellaSwag's endings);
    a sequence longer than the context window loses its oldest context tokens.
    """
    ctx_ids = list(tokenizer.encode(context))
    window = model.config.context_length + 1
    rows = []
    for c in choices:
        cont = list(tokenizer.encode(c))
        if not cont:
            raise ValueError(f"the choice {c!r} encodes to no tokens")
        seq = (ctx_ids + cont)[-window:]
        rows.append((seq, min(len(cont), len(seq) - 1)))
    length = max(len(s) for s, _ in rows) - 1
    x = np.zeros((len(rows), length), dtype=np.int64)
    y = np.full((len(rows), length), -100, dtype=np.int64)
    for i, (seq, n) in enumerate(rows):
        x[i, :len(seq) - 1] = seq[:-1]
        y[i, len(seq) - 1 - n:len(seq) - 1] = seq[len(seq) - n:]
    with ag.no_grad():
        lp = ag.backend.to_numpy(sequence_logprobs(model, x, y).data).astype(np.float64)
    return lp, np.array([n for _, n in rows])


def mcq_accuracy(model, tokenizer, questions: Sequence[dict]) -> dict[str, Any]:
    """{"accuracy", "accuracy_norm", "total", "predictions", "predictions_norm"} over ``questions``."""
    model.eval()
    pred, pred_norm = [], []
    for q in questions:
        lp, n = choice_logprobs(model, tokenizer, q["context"], q["choices"])
        pred.append(int(np.argmax(lp)))
        pred_norm.append(int(np.argmax(lp / n)))
    gold = np.array([q["answer"] for q in questions])
    return {"accuracy": float(np.mean(np.array(pred) == gold)), "accuracy_norm": float(np.mean(np.array(pred_norm)
                                                                                              == gold)),
            "total": len(questions), "predictions": pred, "predictions_norm": pred_norm}


def run_mcq(path: str, checkpoint: str | None = None, init_from: str | None = None, device: str = "cpu",
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Multiple-choice accuracy of a checkpoint (or GPT-2 folder) on the questions of ``path``."""
    from .common import load_base
    questions = load_mcq(path)
    model, tok = load_base(init_from=init_from, checkpoint=checkpoint, log=log)
    model.to(device)
    res = mcq_accuracy(model, tok, questions)
    log(f"{res['total']} questions: accuracy {res['accuracy']:.4f}, length-normalised {res['accuracy_norm']:.4f}")
    return res
