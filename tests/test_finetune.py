"""Fine-tuning: the instruction collate on hand-made batches, the Alpaca format, data readers, the classifier's
freezing and pooling, short training runs that reduce the loss, the end-to-end runs and the CLI."""
import json

import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import finetune as ft
from tinygrad_llm.tokenizer import BPETokenizer

# ------------------------------------------------------------------------------------------------ collate
def test_collate_pads_shifts_keeps_first_pad():
    x, y = ft.collate([[1, 2, 3], [4], [5, 6]], pad_id=0)
    np.testing.assert_array_equal(x, [[1, 2, 3], [4, 0, 0], [5, 6, 0]])
    np.testing.assert_array_equal(y, [[2, 3, 0], [0, -100, -100], [6, 0, -100]])
    assert x.dtype == np.int64 and y.dtype == np.int64


def test_collate_book_example_with_eos_id():
    # the book's worked example: inputs_1..3 with pad 50256
    x, y = ft.collate([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]])
    np.testing.assert_array_equal(x, [[0, 1, 2, 3, 4], [5, 6, 50256, 50256, 50256], [7, 8, 9, 50256, 50256]])
    np.testing.assert_array_equal(y, [[1, 2, 3, 4, 50256], [6, 50256, -100, -100, -100],
                                      [8, 9, 50256, -100, -100]])


def test_collate_allowed_max_length_and_ignore_index():
    x, y = ft.collate([[1, 2, 3, 4, 5], [6, 7]], pad_id=9, ignore_index=-1, allowed_max_length=3)
    np.testing.assert_array_equal(x, [[1, 2, 3], [6, 7, 9]])
    np.testing.assert_array_equal(y, [[2, 3, 4], [7, 9, -1]])


def test_collate_mask_prompt():
    batch = [{"input_ids": [10, 11, 12, 20, 21], "prompt_length": 3},   # prompt 10 11 12, response 20 21
             {"input_ids": [13, 14, 22], "prompt_length": 2}]
    x, y = ft.collate(batch, pad_id=0, mask_prompt=True)
    np.testing.assert_array_equal(x, [[10, 11, 12, 20, 21], [13, 14, 22, 0, 0]])
    # predictions of prompt tokens are masked; the first response token (predicted at the prompt's end) is kept
    np.testing.assert_array_equal(y, [[-100, -100, 20, 21, 0], [-100, 22, 0, -100, -100]])
    x2, y2 = ft.collate(batch, pad_id=0)                                  # without masking
    np.testing.assert_array_equal(y2, [[11, 12, 20, 21, 0], [14, 22, 0, -100, -100]])
    with pytest.raises(ValueError, match="prompt_length"):
        ft.collate([[1, 2]], mask_prompt=True)
    with pytest.raises(ValueError, match="empty"):
        ft.collate([])


def test_collate_keeps_a_real_eos_inside_the_text():
    x, y = ft.collate([[1, 0, 2], [3]], pad_id=0)
    np.testing.assert_array_equal(y, [[0, 2, 0], [0, -100, -100]])


# ------------------------------------------------------------------------------------------------ prompt format
def test_format_input_matches_the_book():
    e = {"instruction": "Identify the correct spelling of the following word.", "input": "Ocassion",
         "output": "The correct spelling is 'Occasion.'"}
    assert ft.format_input(e) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nIdentify the correct spelling of the following word.\n\n### Input:\nOcassion")
    assert ft.format_input({"instruction": "Say hi.", "input": ""}) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nSay hi.")
    prompt, resp = ft.format_example(e)
    assert prompt.endswith("Ocassion\n\n### Response:\n") and resp == e["output"]


def test_instruction_dataset_prompt_length_and_split(tmp_path):
    tok = BPETokenizer.train("abc def ghi " * 10, 280)
    data = [{"instruction": "do x", "input": "", "output": "abc"}, {"instruction": "do y", "input": "q", "output": "d"}]
    ds = ft.InstructionDataset(data, tok)
    p, r = ft.format_example(data[0])
    assert ds[0]["input_ids"] == tok.encode(p) + tok.encode(r) and ds[0]["prompt_length"] == len(tok.encode(p))
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"instruction": str(i), "input": "", "output": "o"} for i in range(20)]))
    recs = ft.load_instruction_data(path)
    tr, va, te = ft.split_instruction_data(recs)
    assert (len(tr), len(va), len(te)) == (17, 1, 2) and tr[0]["instruction"] == "0"
    path.write_text(json.dumps([{"instruction": "x"}]))
    with pytest.raises(ValueError, match="record 0"):
        ft.load_instruction_data(path)


# ------------------------------------------------------------------------------------------------ labeled files
def test_read_labeled_files(tmp_path):
    sms = tmp_path / "SMSSpamCollection"
    sms.write_text("ham\tGo until jurong point\nspam\tFree entry in 2 a wkly comp\nham\tOk lar...\n")
    texts, labels, names = ft.read_labeled_file(sms)
    assert names == ["ham", "spam"] and labels == [0, 1, 0] and texts[1] == "Free entry in 2 a wkly comp"
    csvf = tmp_path / "data.csv"
    csvf.write_text('text,label\n"hello, world",1\nbye,0\n')
    assert ft.read_labeled_file(csvf) == (["hello, world", "bye"], [1, 0], ["0", "1"])
    tsv = tmp_path / "x.tsv"
    tsv.write_text("Label\tText\n0\ta\n2\tb\n")
    assert ft.read_labeled_file(tsv) == (["a", "b"], [0, 2], ["0", "1", "2"])
    bad = tmp_path / "bad.tsv"
    bad.write_text("text\tlabel\nonly one column\n")
    with pytest.raises(ValueError, match="row 2"):
        ft.read_labeled_file(bad)


# ------------------------------------------------------------------------------------------------ classifier
def small_gpt(vocab=300, seed=0):
    cfg = tl.GPTConfig(vocab_size=vocab, context_length=32, n_layer=3, n_head=2, n_embd=32, qkv_bias=True)
    return tl.GPT(cfg, seed=seed)


def trainable_names(m):
    return {n for n, p in m.named_parameters() if p.requires_grad}


def test_classifier_freezing_options():
    clf = ft.GPTClassifier(small_gpt(), num_classes=3)
    names = trainable_names(clf)
    assert {"head.weight", "head.bias", "gpt.final_norm.weight", "gpt.blocks.2.attn.qkv.weight"} <= names
    assert not any(n.startswith(("gpt.blocks.0", "gpt.blocks.1", "gpt.tok_emb", "gpt.pos_emb")) for n in names)
    ft.set_trainable(clf, 2)
    assert any(n.startswith("gpt.blocks.1") for n in trainable_names(clf))
    assert not any(n.startswith("gpt.blocks.0") for n in trainable_names(clf))
    assert ft.set_trainable(clf, "all") == clf.num_parameters()
    assert trainable_names(clf) == {n for n, _ in clf.named_parameters()}
    ft.set_trainable(clf, "head")
    assert trainable_names(clf) == {"head.weight", "head.bias"}
    with pytest.raises(ValueError, match="trainable"):
        ft.set_trainable(clf, "some")


def test_classifier_last_token_ignores_padding_and_book_pool():
    clf = ft.GPTClassifier(small_gpt(), num_classes=2)
    ids = np.array([[5, 6, 7, 8]])
    a = clf(ids, np.array([4])).numpy()
    padded = np.array([[5, 6, 7, 8, 299, 299], [1, 2, 299, 299, 299, 299]])
    b = clf(padded, np.array([4, 2])).numpy()
    np.testing.assert_allclose(b[0], a[0], rtol=1e-5, atol=1e-6)
    assert b.shape == (2, 2)
    book = ft.GPTClassifier(clf.gpt, 2, pool="last")
    h = clf.gpt.forward_hidden(padded).numpy()[:, -1]
    np.testing.assert_allclose(book(padded, np.array([4, 2])).numpy(),
                               h @ book.head.weight.data.T + book.head.bias.data, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="lengths"):
        clf(padded, np.array([7, 2]))


def test_classifier_training_reduces_loss():
    rows = ft.demo.demo_classification(64, seed=1)
    texts, labels = [t for _, t in rows], [int(lab == "spam") for lab, _ in rows]
    tok = BPETokenizer.train("\n".join(texts), 300)
    ds = ft.ClassificationDataset(texts, labels, tok, max_length=32, pad_id=tok.eos_id)
    clf = ft.GPTClassifier(small_gpt(tok.vocab_size), num_classes=2, trainable="last_block")
    before = ft.evaluate_loss(clf, ds)
    frozen = {n: p.data.copy() for n, p in clf.named_parameters() if not p.requires_grad}
    hist = ft.fit(clf, clf.named_parameters(), lambda b: clf.loss(b[0], b[2], b[1]),
                  lambda ep: ds.batches(16, shuffle=True, rng=ep), epochs=3, lr=3e-3, log=lambda s: None)
    assert hist["steps"] == 12
    assert ft.evaluate_loss(clf, ds) < 0.5 * before
    assert ft.accuracy(clf, ds) > 0.9
    for n, p in clf.named_parameters():
        if n in frozen:
            np.testing.assert_array_equal(p.data, frozen[n])


def test_instruction_training_reduces_loss():
    data = ft.demo.demo_instructions(24)
    tok = BPETokenizer.train("\n".join("".join(ft.format_example(r)) for r in data), 320)
    ds = ft.InstructionDataset(data, tok, max_length=64)
    model = tl.GPT(tl.GPTConfig(vocab_size=tok.vocab_size, context_length=64, n_layer=2, n_head=2, n_embd=32,
                                qkv_bias=True), seed=0)
    batch = ft.collate([ds[i] for i in range(len(ds))], pad_id=tok.eos_id, mask_prompt=True)
    before = float(model(*batch)[1].item())
    ft.fit(model, model.named_parameters(), lambda b: model(*b)[1],
           lambda ep: (ft.collate([ds[i] for i in range(s, s + 8)], pad_id=tok.eos_id, mask_prompt=True)
                       for s in range(0, 24, 8)), epochs=4, lr=3e-3, log=lambda s: None)
    assert float(model(*batch)[1].item()) < 0.7 * before


# ------------------------------------------------------------------------------------------------ end to end
def test_run_classify_and_reload(tmp_path):
    data = ft.demo.write_demo_classification(tmp_path / "demo.tsv", n=80)
    res = ft.run_classify(data, preset="micro", out_dir=str(tmp_path / "clf"), epochs=1, batch_size=8, lr=3e-3,
                          pool="last",
                          vocab_size=300, log=lambda s: None)
    assert set(res) >= {"train_acc", "val_acc", "test_acc", "path"} and res["labels"] == ["ham", "spam"]
    assert res["losses"][-1] < res["losses"][0]
    clf, tok, info = ft.load_classifier(res["path"])
    assert info["labels"] == ["ham", "spam"] and clf.pad_to == res["model"].pad_to == info["max_length"]
    texts = ["Free prize, call now to claim", "See you at lunch tomorrow"]
    assert ft.classify_texts(clf, tok, texts, info["labels"]) == \
        ft.classify_texts(res["model"], res["tokenizer"], texts, info["labels"])


def test_run_instruct_with_lora_writes_responses(tmp_path):
    data = ft.demo.write_demo_instructions(tmp_path / "d.json", n=24)
    res = ft.run_instruct(data, preset="micro", context_length=128, out_dir=str(tmp_path / "ins"), max_steps=3,
                          batch_size=4, lr=1e-3, lora_rank=2, vocab_size=300, max_new_tokens=4, num_responses=2,
                          export_hf=str(tmp_path / "hf"), log=lambda s: None)
    out = json.loads(open(res["responses"]).read())
    assert len(out) == 2 and all(isinstance(r["model_response"], str) for r in out)
    model, tok = ft.load_base(checkpoint=res["path"], log=lambda s: None)     # merged LoRA: a plain GPT again
    ids = np.arange(10)[None] % tok.vocab_size
    np.testing.assert_array_equal(model(ids).numpy(), res["model"](ids).numpy())


def test_load_base_from_hf_folder(tmp_path):
    tok = BPETokenizer.train("hello world " * 30, 270)
    model = tl.GPT(tl.GPTConfig(vocab_size=tok.vocab_size, context_length=16, n_layer=1, n_head=2, n_embd=16), seed=3)
    model.save_pretrained(tmp_path / "gpt2", tokenizer=tok)
    m2, tok2 = ft.load_base(init_from=str(tmp_path / "gpt2"), log=lambda s: None)
    ids = np.array([tok.encode("hello world hello")])
    np.testing.assert_array_equal(m2(ids).numpy(), model(ids).numpy())
    assert tok2.encode("hello world") == tok.encode("hello world")
    with pytest.raises(ValueError, match="exactly one"):
        ft.load_base(init_from=str(tmp_path / "gpt2"), preset="micro")


def test_cli_finetune(tmp_path, capsys):
    from tinygrad_llm.cli import main
    out = tmp_path / "c"
    assert main(["finetune", "classify", "--demo", "--preset", "micro", "--steps", "2", "--vocab-size", "300",
                 "--out-dir", str(out)]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["finetune", "classify", "--preset", "micro"]) == 2
    assert "--data is required" in capsys.readouterr().err
    assert main(["finetune", "instruct", "--data", str(tmp_path / "nope.json"), "--preset", "micro"]) == 2
    assert main(["finetune"]) == 2
