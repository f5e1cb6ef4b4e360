"""Training: the Trainer loop, its config, one optimizer step, checkpoints (safetensors + JSON), run folders, the
JSONL metrics log and plots.

    from tinygrad_llm.train import Trainer, TrainConfig
    summary = Trainer(TrainConfig(max_steps=300, out_dir="out")).train()
    ckpt = load_checkpoint("out")            # the latest checkpoint; arrays as NumPy
"""
from .checkpoint import Checkpoint, CheckpointError, list_checkpoints, load_checkpoint, resolve_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig, load_config_file
from .metrics import MetricsLog, read_metrics
from .plot import plot_metrics
from .run_folder import RunFolder, RunFolderError
from .step import StepOutput, TrainStep
from .trainer import Trainer, lm_loss

__all__ = ["Trainer", "TrainConfig", "ConfigError", "load_config_file", "lm_loss", "Checkpoint", "CheckpointError",
           "save_checkpoint", "load_checkpoint", "resolve_checkpoint", "list_checkpoints", "MetricsLog",
           "read_metrics", "plot_metrics", "TrainStep", "StepOutput", "RunFolder", "RunFolderError"]
