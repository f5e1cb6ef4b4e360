"""Fine-tuning: classification (book ch. 6), instructions (ch. 7), LoRA (app. E), from pretrained weights.

    from tinygrad_llm import finetune as ft
    model = tl.from_pretrained("gpt2/")                         # any Hugging Face folder (tinygrad_llm.model.hf)
    clf = ft.GPTClassifier(model, num_classes=2)                 # last block + final norm + head trainable
    x, y = ft.collate(batch, pad_id=50256, mask_prompt=True)     # instruction batches, targets -100 where ignored
    print(ft.apply_lora(model, rank=8, alpha=16)); ...; ft.merge_lora(model)
    ft.run_classify("spam.tsv", init_from="gpt2/"); ft.run_instruct("instruction-data.json", init_from="gpt2/")
    ft.run_dpo("prefs.json", checkpoint="out/instruct", beta=0.1)  # preference tuning (DPO, ch. 7's bonus)
    ft.run_judge("responses.json", "http://127.0.0.1:8000"); ft.mcq_accuracy(model, tok, ft.load_mcq("q.jsonl"))

Command line: ``tinygrad-llm finetune classify|instruct|dpo|evaluate`` (``tinygrad_llm.finetune.cli``).
"""
from .classifier import (ClassificationDataset, GPTClassifier, accuracy, classify_texts, evaluate_loss,
                         read_labeled_file, set_trainable)
from .common import eos_id_of, fit, load_base, save_finetuned
from .instruct import (InstructionDataset, collate, format_example, format_input, generate_response,
                       generate_responses, load_instruction_data, split_instruction_data)
from .lora import DEFAULT_TARGETS, LoRALinear, LoRAReport, apply_lora, lora_parameters, merge_lora
from . import demo
from .dpo import dpo_loss, run_dpo, sequence_logprobs
from .evaluate import load_mcq, mcq_accuracy, run_judge, score_responses
from .run import balance_classes, load_classifier, run_classify, run_instruct, split_classification_data

__all__ = [
    "GPTClassifier", "set_trainable", "read_labeled_file", "ClassificationDataset", "accuracy", "evaluate_loss",
    "classify_texts", "format_input", "format_example", "load_instruction_data", "split_instruction_data",
    "InstructionDataset", "collate", "generate_response", "generate_responses",
    "LoRALinear", "LoRAReport", "apply_lora", "merge_lora", "lora_parameters", "DEFAULT_TARGETS",
    "load_base", "fit", "save_finetuned", "eos_id_of", "run_classify", "run_instruct", "load_classifier",
    "balance_classes", "split_classification_data", "demo",
    "dpo_loss", "run_dpo", "sequence_logprobs", "load_mcq", "mcq_accuracy", "run_judge", "score_responses",
]
