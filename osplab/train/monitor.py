"""Rank-0 logging: dvclive metrics (plots for `dvc plots show`) and a tqdm progress bar.

On other ranks every method is a no-op, so the loop calls them unconditionally.
dvclive is told not to touch dvc.yaml nor create DVC experiments: the project's dvc.yaml declares
the plots (`<out_dir>/live/plots/metrics`, x = step). The run directory is kept crash-consistent by
`osplab.train.live` (atomic summary and params, repaired on resume).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


class Monitor:
    """dvclive + tqdm on the main rank; silent elsewhere."""

    def __init__(self, live_dir: Path, enabled: bool, total_steps: int, start_step: int,
                 params: dict[str, Any]) -> None:
        self.enabled = enabled
        self.live = None
        self.bar = None
        if not enabled:
            return
        from .live import AtomicLive, repair_live_dir  # imports dvclive: rank 0 only

        resume = start_step > 0
        if resume:
            repair_live_dir(live_dir, start_step)
        try:
            self.live = AtomicLive(dir=str(live_dir), resume=resume, save_dvc_exp=False, dvcyaml=False)
        except Exception as e:  # dvclive 3.49 fails inside a git repository with no commit yet
            if "Empty git repo" in str(e):
                raise RuntimeError("dvclive cannot start in a git repository without commits: "
                                   "make a first commit, or run from another directory") from e
            raise
        self.live.log_params(params)
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """One row per metric at `step` (the number of optimizer steps done)."""
        if self.live is None:
            return
        self.live.step = step
        for name, value in metrics.items():
            self.live.log_metric(name, value)
        self.live.next_step()
        self.bar.set_postfix(loss=f"{metrics.get('train/loss', float('nan')):.4g}", refresh=False)

    def close(self) -> None:
        """End the progress bar and the dvclive run (metrics.json holds the last logged row)."""
        if self.live is None:
            return
        self.bar.close()
        self.live.end()
