"""osplab.train: one training loop for every model (DDP/FSDP, bf16 autocast, EMA, exact resume).

    from osplab.train import Task, TrainConfig, seed_everything, train

    cfg = TrainConfig.from_dict(OmegaConf.to_container(hydra_cfg.train, resolve=True))
    seed_everything(cfg.seed)                 # identical initial weights on every rank
    task = Task(model, loss, dataset, collate, flops_per_sample)
    metrics = train(cfg, task)                # resumes from cfg.out_dir/checkpoints if present
    ema_weights = read_weights(cfg.checkpoint_dir, "ema")

See task.py for the contract a model fulfils, loop.py for the step, checkpoint.py for the files.
"""

from .checkpoint import (CheckpointError, Checkpointer, latest_checkpoint, load_tensors,
                         read_weights, save_tensors_atomic)
from .config import TrainConfig
from .distributed import DistEnv, cleanup_distributed, init_distributed, setup_logging, unwrap
from .ema import EMA
from .loop import NonFiniteError, train
from .sampler import BatchSampler, ShardedBatchSampler
from .state import seed_everything
from .task import Task

__all__ = [
    "BatchSampler", "CheckpointError", "Checkpointer", "DistEnv", "EMA", "NonFiniteError",
    "ShardedBatchSampler", "Task", "TrainConfig", "cleanup_distributed", "init_distributed", "setup_logging",
    "latest_checkpoint", "load_tensors", "read_weights", "save_tensors_atomic",
    "seed_everything", "train", "unwrap",
]
