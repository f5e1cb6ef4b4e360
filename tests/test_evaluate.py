"""Evaluation: the judge prompt and score parsing, scoring responses against our own server on the loopback (a tiny
model trained in the test to answer "85"), a judge that cannot be reached, and multiple-choice accuracy by
log-likelihood on constructed question files (with a brute-force reference), from Python and the CLI."""
import json
import socket
import threading

import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm.finetune import evaluate as ev
from tinygrad_llm.optim import AdamW
from tinygrad_llm.serve import ChatService, make_server
from tinygrad_llm.tokenizer import BPETokenizer
from tinygrad_llm.tokenizer.chat import chat_template_for

ENTRIES = [{"instruction": "Name the opposite of hot.", "input": "", "output": "Cold.", "model_response": "Cold."},
           {"instruction": "Give the plural.", "input": "cat", "output": "cats", "model_response": "dogs"},
           {"instruction": "What is the capital of France?", "input": "", "output": "Paris.",
            "model_response": "The capital is Paris."}]


def test_judge_prompt_is_the_books():
    e = ENTRIES[1]
    assert ev.judge_prompt(e) == (
        "Given the input `Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nGive the plural.\n\n### Input:\ncat` and correct output `cats`, "
        "score the model response `dogs` on a scale from 0 to 100, where 100 is the best score. "
        "Respond with the integer number only.")


@pytest.mark.parametrize("text,score", [("85", 85), (" 85\n", 85), ("Score: 90/100", 90), ("**100**.", 100),
                                        ("0", 0), ("I'd say 72.5 points", 72), ("1000 then 50", 50),
                                        ("no idea", None), ("", None), ("8555", None), ("-5", None)])
def test_parse_score(text, score):
    assert ev.parse_score(text) == score


def test_chat_endpoint():
    for u in ("http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/chat/completions"):
        assert ev.chat_endpoint(u) == "http://h:1/v1/chat/completions"


@pytest.fixture(scope="module")
def judge():
    """A tiny model trained to answer every judge prompt with "85", served on the loopback."""
    prompts = [ev.judge_prompt(e) for e in ENTRIES]
    tok = BPETokenizer.train("\n".join(prompts) * 3 + " 85 90 ", 512)
    tpl = chat_template_for(tok)
    model = tl.GPT(tl.GPTConfig.preset("micro", vocab_size=tok.vocab_size, context_length=320), seed=0)
    rows = [tpl.encode_with_mask(tok, [{"role": "user", "content": p}, {"role": "assistant", "content": "85"}])
            for p in prompts]
    length = max(len(ids) for ids, _ in rows) - 1
    x, y = np.zeros((len(rows), length), np.int64), np.full((len(rows), length), -100, np.int64)
    for i, (ids, mask) in enumerate(rows):
        x[i, :len(ids) - 1] = ids[:-1]
        y[i, :len(ids) - 1] = np.where(np.array(mask[1:]), ids[1:], -100)   # train on the answer only
    opt = AdamW(list(model.named_parameters()), lr=3e-3, weight_decay=0.0)
    for _ in range(40):
        model.loss(x, y).backward()
        opt.step()
        opt.zero_grad()
    service = ChatService(model, tok, name="judge")
    server = make_server(service, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    service.close()


def test_scores_from_our_own_server(judge, tmp_path):
    path = tmp_path / "responses.json"
    path.write_text(json.dumps(ENTRIES))
    res = ev.run_judge(str(path), judge, log=lambda s: None)         # model name from /v1/models
    assert res["scores"] == [85, 85, 85] and res["mean"] == 85.0 and res["scored"] == res["total"] == 3
    written = json.loads((tmp_path / "responses-scores.json").read_text())
    assert [r["score"] for r in written] == [85, 85, 85]
    assert written[1]["model_response"] == "dogs" and written[0]["judge_answer"].strip() == "85"


def test_judge_cli_and_errors(judge, tmp_path, capsys):
    from tinygrad_llm.cli import main
    path = tmp_path / "r.json"
    path.write_text(json.dumps(ENTRIES[:2]))
    out = tmp_path / "s.json"
    assert main(["finetune", "evaluate", "--responses", str(path), "--judge", judge + "/v1", "--model", "judge",
                 "--scores", str(out)]) == 0
    assert "mean score 85.00" in capsys.readouterr().out and out.is_file()
    assert main(["finetune", "evaluate", "--responses", str(path), "--judge", judge, "--model", "nope"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["finetune", "evaluate", "--responses", str(path)]) == 2                # no --judge
    assert main(["finetune", "evaluate"]) == 2
    assert "--responses" in capsys.readouterr().err
    with socket.socket() as s:                                         # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(ev.JudgeError, match="cannot reach"):
        ev.score_responses(ENTRIES, f"http://127.0.0.1:{closed}", model="x", timeout=5)
    with pytest.raises(ValueError, match="model_response"):
        ev.score_responses([{"instruction": "x", "output": "y"}], judge, model="judge")


# ------------------------------------------------------------------------------------------------ multiple choice
@pytest.fixture(scope="module")
def lm():
    tok = BPETokenizer.train("the cat sat on the mat. a dog ran in the park. " * 10, 300)
    model = tl.GPT(tl.GPTConfig.preset("micro", vocab_size=tok.vocab_size, context_length=32), seed=1)
    return model, tok


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def test_choice_logprobs_match_brute_force(lm):
    model, tok = lm
    ctx, choices = "the cat sat", [" on the mat", " in", " a dog ran in the park"]
    lp, n = ev.choice_logprobs(model, tok, ctx, choices)
    c_ids = tok.encode(ctx)
    for k, ch in enumerate(choices):
        cont = tok.encode(ch)
        seq = c_ids + cont
        logits = model(np.array([seq[:-1]])).data[0].astype(np.float64)
        want = sum(_log_softmax(logits)[len(c_ids) - 1 + j, t] for j, t in enumerate(cont))
        assert n[k] == len(cont)
        np.testing.assert_allclose(lp[k], want, rtol=1e-4, atol=1e-4)
    # longer than the window: the oldest context goes, the choice stays whole
    lp2, n2 = ev.choice_logprobs(model, tok, "the cat sat on the mat. " * 10, [" a dog"])
    assert np.isfinite(lp2).all() and n2[0] == len(tok.encode(" a dog"))


def test_mcq_accuracy_on_constructed_files(lm, tmp_path, capsys):
    model, tok = lm
    contexts = ["the cat", "a dog ran", "the mat.", "in the park"]
    singles = [tok.decode([i]) for i in range(97, 123)]                 # one-token choices: the letters a..z
    lines_best, lines_worst = [], []
    for c in contexts:
        logits = model(np.array([tok.encode(c)])).data[0, -1]
        ids = [tok.encode(s)[0] for s in singles]
        scores = logits[ids]
        best, worst = int(np.argmax(scores)), int(np.argmin(scores))
        picks = sorted({best, worst, (best + 1) % len(ids), (worst + 1) % len(ids)} - {best, worst})[:2]
        choices = [singles[i] for i in [best, worst] + picks]
        lines_best.append({"question": c, "choices": choices, "answer": 0})
        lines_worst.append({"context": c, "endings": choices, "label": "B"})
    f_best, f_worst = tmp_path / "best.jsonl", tmp_path / "worst.jsonl"
    f_best.write_text("\n".join(json.dumps(q) for q in lines_best) + "\n")
    f_worst.write_text("\n".join(json.dumps(q) for q in lines_worst))
    res = ev.mcq_accuracy(model, tok, ev.load_mcq(f_best))
    assert res["accuracy"] == 1.0 and res["accuracy_norm"] == 1.0 and res["total"] == 4
    assert ev.mcq_accuracy(model, tok, ev.load_mcq(f_worst))["accuracy"] == 0.0
    ck = tl.finetune.save_finetuned(tmp_path / "ck", model, tok, 0, {})
    from tinygrad_llm.cli import main
    assert main(["finetune", "evaluate", "--mcq", str(f_best), "--checkpoint", str(ck)]) == 0
    assert "4 questions: accuracy 100.0%, length-normalised 100.0%" in capsys.readouterr().out


def test_length_normalisation_changes_the_pick(lm):
    model, tok = lm
    ctx = "the cat"
    lp, n = ev.choice_logprobs(model, tok, ctx, [" sat on the mat", " sat"])
    # a sum over more tokens is lower; per token it can win: both rules as documented
    q = [{"context": ctx, "choices": [" sat on the mat", " sat"], "answer": 0}]
    res = ev.mcq_accuracy(model, tok, q)
    assert res["predictions"] == [int(np.argmax(lp))] and res["predictions_norm"] == [int(np.argmax(lp / n))]


def test_load_mcq_errors(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text('{"question": "x", "choices": ["a"], "answer": 0}\n')
    with pytest.raises(ValueError, match=":1: a question needs"):
        ev.load_mcq(p)
    p.write_text('{"question": "x", "choices": ["a", "b"], "answer": 5}\n')
    with pytest.raises(ValueError, match="'answer' 5"):
        ev.load_mcq(p)
    p.write_text('{"question": "x", "choices": ["a", "b"], "answer": "b"}\n{oops\n')
    with pytest.raises(ValueError, match=":2: not valid JSON"):
        ev.load_mcq(p)
    p.write_text('{"question": "x", "options": ["a", "b"], "gold": "1"}\n')
    assert ev.load_mcq(p)[0]["answer"] == 1
    with pytest.raises(FileNotFoundError):
        ev.load_mcq(tmp_path / "none.jsonl")
