"""``tinygrad-llm finetune classify|instruct|dpo|evaluate``: registered with ``tinygrad_llm.cli.register_command`` at import.

    tinygrad-llm finetune classify --data sms.tsv --init-from gpt2/ --epochs 5
    tinygrad-llm finetune classify --data sms.tsv --checkpoint out/           # a model from `tinygrad-llm train`
    tinygrad-llm finetune classify --demo --preset micro                       # synthetic data, no downloads
    tinygrad-llm finetune instruct --data instruction-data.json --init-from gpt2-medium/ --epochs 2
    tinygrad-llm finetune instruct --demo --preset micro --steps 30
    tinygrad-llm finetune dpo --data instruction-data-with-preference.json --checkpoint out/instruct --beta 0.1
    tinygrad-llm finetune evaluate --responses out/instruct/instruction-data-with-response.json \
        --judge http://127.0.0.1:8000 [--model NAME]
    tinygrad-llm finetune evaluate --mcq questions.jsonl --checkpoint out/instruct
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

__all__ = ["configure", "run", "configure_classify", "configure_instruct", "configure_dpo", "configure_evaluate",
           "run_classify_args", "run_instruct_args", "run_dpo_args", "run_evaluate_args"]


def _common(p: argparse.ArgumentParser, out_default: str, epochs: int) -> None:
    src = p.add_argument_group("base model (exactly one)")
    src.add_argument("--init-from", help="a Hugging Face folder (GPT-2, Llama 3, Qwen3, Gemma 3): config.json + "
                                         "*.safetensors + tokenizer.json (or GPT-2's vocab.json/merges.txt)")
    src.add_argument("--checkpoint", help="a checkpoint folder (or output folder) written by `tinygrad-llm train`")
    src.add_argument("--preset", help="a fresh random model of this preset (micro, tiny, ...): for trying it out")
    p.add_argument("--tokenizer", help="tokenizer JSON or GPT-2 files folder (default: the base model's; with "
                                       "--preset, a BPE trained on the data)")
    p.add_argument("--vocab-size", type=int, default=512, help="vocabulary of the BPE trained with --preset")
    p.add_argument("--context-length", type=int, help="context length of a --preset model")
    p.add_argument("--demo", action="store_true", help="generate a tiny synthetic dataset instead of --data")
    p.add_argument("--out-dir", default=out_default, help=f"output folder (default {out_default}); a folder that "
                                                          "holds another run is refused unless --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out-dir that holds another run, deleting that run's checkpoints "
                        "(step_*), 'latest' and metrics.jsonl first")
    p.add_argument("--epochs", type=int, default=epochs, help=f"passes over the training split (default {epochs})")
    p.add_argument("--steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=None,
                   help="AdamW learning rate (default 5e-5 as the book; 1e-3 for a fresh --preset model)")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--lora-rank", type=int, default=0, help="train LoRA adapters of this rank instead (0: off)")
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")


def configure_classify(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="CSV/TSV of text and label (header optional; e.g. SMSSpamCollection)")
    p.add_argument("--val-data", help="validation CSV/TSV (default: split --data 70/10/20)")
    p.add_argument("--test-data", help="test CSV/TSV")
    p.add_argument("--text-col", help="text column (header name or 0-based index)")
    p.add_argument("--label-col", help="label column (header name or 0-based index)")
    p.add_argument("--trainable", default="last_block",
                   help="last_block (the book) | all | head | N (the last N blocks + final norm); "
                        "the head always trains")
    p.add_argument("--pool", default="last_token", choices=["last_token", "last"],
                   help="classify the last real token (default) or the last position after EOS padding (the book)")
    p.add_argument("--max-length", type=int, help="truncate texts to this many tokens")
    p.add_argument("--balance", action="store_true", help="undersample classes to the smallest (the book's spam set)")
    p.add_argument("--eval-batches", type=int, default=None, help="batches per loss/accuracy estimate during training")
    p.add_argument("--predict", action="append", metavar="TEXT", help="classify TEXT after training (repeatable)")
    _common(p, "out/classifier", 5)


def configure_instruct(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="JSON list of {instruction, input, output} (e.g. the book's instruction-data.json)")
    p.add_argument("--mask-prompt", action="store_true", help="no loss on the prompt tokens, only the response")
    p.add_argument("--allowed-max-length", type=int, help="crop batches to this many tokens (default: context length)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="length limit of the generated test responses")
    p.add_argument("--num-responses", type=int, help="generate for only the first N test records")
    p.add_argument("--responses", help="output JSON (default OUT_DIR/instruction-data-with-response.json)")
    p.add_argument("--export-hf", help="also write the fine-tuned model in the Hugging Face GPT-2 layout here")
    p.add_argument("--eval-batches", type=int, default=5, help="batches per train/val loss estimate")
    _common(p, "out/instruct", 2)


def configure_dpo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="JSON list of {instruction, input, chosen, rejected} (e.g. the book's "
                                  "instruction-data-with-preference.json)")
    p.add_argument("--beta", type=float, default=0.1, help="DPO temperature: how far the policy may move from the "
                                                           "reference (default 0.1)")
    p.add_argument("--average-logprobs", action="store_true",
                   help="average the response log-probabilities over its tokens (the book) instead of summing")
    p.add_argument("--allowed-max-length", type=int, help="crop sequences to this many tokens (default: context)")
    p.add_argument("--eval-batches", type=int, default=5, help="validation batches per evaluation")
    p.add_argument("--log-every", type=int, default=1, help="print the step's loss, rewards, margin, accuracy")
    _common(p, "out/dpo", 1)


def configure_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--responses", help="JSON list of records with instruction/input/output and a model response")
    p.add_argument("--judge", help="base URL of an OpenAI-compatible server (e.g. http://127.0.0.1:8000, or its "
                                   "/v1/chat/completions URL)")
    p.add_argument("--model", help="model name sent to the judge (default: the first of its /v1/models)")
    p.add_argument("--response-key", default="model_response", help="field holding the response to score")
    p.add_argument("--scores", help="output JSON (default: RESPONSES with '-scores' before .json)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per judge request")
    p.add_argument("--mcq", help="JSON Lines of multiple-choice questions {question|context, choices, answer}")
    p.add_argument("--checkpoint", help="the model to evaluate with --mcq (a fine-tuning or training checkpoint)")
    p.add_argument("--init-from", help="or a Hugging Face folder (any family) for --mcq")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="task", metavar="TASK")
    configure_classify(sub.add_parser("classify", help="classification fine-tuning (spam / sentiment ...)"))
    configure_instruct(sub.add_parser("instruct", help="instruction fine-tuning on Alpaca-style JSON"))
    configure_dpo(sub.add_parser("dpo", help="preference tuning (DPO) on chosen/rejected response pairs"))
    configure_evaluate(sub.add_parser("evaluate", help="score responses with a judge endpoint, or multiple-choice "
                                                       "accuracy by log-likelihood"))
    from .run import configure_predict
    configure_predict(sub.add_parser("predict", help="classify texts with a `finetune classify` checkpoint"))


def _need_data(args: argparse.Namespace, kind: str):
    from ..cli import UserError
    if args.demo and args.data:
        raise UserError("give --data or --demo, not both")
    if not args.demo and not args.data:
        raise UserError(f"--data is required (a {kind}), or --demo for a synthetic one")
    if args.data and not Path(args.data).is_file():
        raise UserError(f"--data {args.data!r}: no such file")


def _base(args: argparse.Namespace) -> dict:
    from ..cli import UserError
    given = [f for f in ("init_from", "checkpoint", "preset") if getattr(args, f)]
    if len(given) > 1:
        raise UserError("give one base model: --init-from, --checkpoint or --preset")
    preset = args.preset or (None if given else ("micro" if args.demo else None))
    if not given and not preset:
        raise UserError("no base model: --init-from DIR (Hugging Face weights), --checkpoint DIR or --preset NAME")
    lr = args.lr if args.lr is not None else (1e-3 if preset else 5e-5)
    return dict(init_from=args.init_from, checkpoint=args.checkpoint, preset=preset, tokenizer=args.tokenizer,
                out_dir=args.out_dir, epochs=args.epochs, max_steps=args.steps, batch_size=args.batch_size,
                lr=lr, weight_decay=args.weight_decay, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
                seed=args.seed, device=args.device, vocab_size=args.vocab_size,
                context_length=args.context_length, overwrite=args.overwrite)


def run_classify_args(args: argparse.Namespace) -> int:
    from .demo import write_demo_classification
    from .run import run_classify
    _need_data(args, "CSV/TSV of text and label")
    data = args.data or write_demo_classification(Path(tempfile.mkdtemp(prefix="tl-demo-")) / "demo.tsv")
    trainable = int(args.trainable) if str(args.trainable).isdigit() else args.trainable
    res = run_classify(data, args.val_data, args.test_data, trainable=trainable, pool=args.pool,
                       max_length=args.max_length, balance=args.balance, eval_batches=args.eval_batches,
                       text_col=args.text_col, label_col=args.label_col, **_base(args))
    print("accuracy: " + ", ".join(f"{k[:-4]} {res[k]:.1%}" for k in ("train_acc", "val_acc", "test_acc") if k in res)
          + f"; checkpoint {res['path']}")
    if args.predict:
        from .classifier import classify_texts
        for text, label in zip(args.predict, classify_texts(res["model"], res["tokenizer"], args.predict,
                                                            res["labels"])):
            print(f"{label}\t{text}")
    return 0


def run_instruct_args(args: argparse.Namespace) -> int:
    from .demo import write_demo_instructions
    from .run import run_instruct
    _need_data(args, "JSON file of instruction records")
    data = args.data or write_demo_instructions(Path(tempfile.mkdtemp(prefix="tl-demo-")) / "instructions.json")
    res = run_instruct(data, mask_prompt=args.mask_prompt, allowed_max_length=args.allowed_max_length,
                       max_new_tokens=args.max_new_tokens, num_responses=args.num_responses,
                       responses=args.responses, export_hf=args.export_hf, eval_batches=args.eval_batches,
                       **_base(args))
    print(f"responses: {res['responses']}; checkpoint {res['path']}")
    return 0


def run_dpo_args(args: argparse.Namespace) -> int:
    from .dpo import run_dpo, write_demo_preferences
    _need_data(args, "JSON file of preference records")
    data = args.data or write_demo_preferences(Path(tempfile.mkdtemp(prefix="tl-demo-")) / "preferences.json")
    base = _base(args)
    if base["init_from"] and (Path(base["init_from"]) / "latest").is_file() \
            or base["init_from"] and (Path(base["init_from"]) / "checkpoint.json").is_file():
        base["checkpoint"], base["init_from"] = base["init_from"], None   # an instruction-tuned checkpoint folder
    if args.lr is None and not base["preset"]:
        base["lr"] = 5e-6                                   # the book's DPO learning rate
    res = run_dpo(data, beta=args.beta, average_logprobs=args.average_logprobs,
                  allowed_max_length=args.allowed_max_length, eval_batches=args.eval_batches,
                  log_every=args.log_every, **base)
    a = res["after"]
    print(f"validation reward margin {a.get('val_reward_margin', 0.0):.4f}, accuracy "
          f"{a.get('val_reward_accuracy', 0.0):.1%}; checkpoint {res['path']}")
    return 0


def run_evaluate_args(args: argparse.Namespace) -> int:
    from ..cli import UserError
    from .evaluate import run_judge, run_mcq
    if bool(args.responses) == bool(args.mcq):
        raise UserError("give --responses FILE --judge URL (judge scores) or --mcq FILE --checkpoint DIR "
                        "(multiple-choice accuracy)")
    if args.responses:
        if not args.judge:
            raise UserError("--responses needs --judge URL (an OpenAI-compatible server, e.g. tinygrad-llm serve)")
        res = run_judge(args.responses, args.judge, model=args.model, response_key=args.response_key,
                        out_path=args.scores, timeout=args.timeout)
        print(f"scored {res['scored']} of {res['total']} responses; mean score {res['mean']:.2f}; "
              f"scores {res['path']}")
        return 0
    if bool(args.checkpoint) == bool(args.init_from):
        raise UserError("--mcq needs the model: --checkpoint DIR or --init-from DIR")
    res = run_mcq(args.mcq, checkpoint=args.checkpoint, init_from=args.init_from, device=args.device)
    print(f"{res['total']} questions: accuracy {res['accuracy']:.1%}, length-normalised {res['accuracy_norm']:.1%}")
    return 0


def run(args: argparse.Namespace) -> int:
    from ..cli import UserError
    if args.task == "classify":
        return run_classify_args(args)
    if args.task == "instruct":
        return run_instruct_args(args)
    if args.task == "dpo":
        return run_dpo_args(args)
    if args.task == "evaluate":
        return run_evaluate_args(args)
    if args.task == "predict":
        from .run import run_predict
        return run_predict(args)
    raise UserError("choose a task: tinygrad-llm finetune classify | instruct | dpo | evaluate | predict ... (--help for flags)")


def _register() -> None:
    try:
        from ..cli import register_command
    except ImportError:  # pragma: no cover - the CLI module not present
        return
    register_command("finetune", "fine-tune a pretrained GPT (classify | predict | instruct | dpo | evaluate)",
                     configure, run)


_register()
