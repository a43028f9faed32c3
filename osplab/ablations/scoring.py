"""Scoring a set of generated clips as `evaluate_generation` does: FVD with its interval and the caption judge.

Its own module because the ablations that generate video use it and the codebook ablation (VQVAE
only) does not; the scoring itself is osplab.metrics.generated, which `evaluate_generation` uses too.
"""

from __future__ import annotations

import numpy as np


def judge_scores(clips: list[np.ndarray], captions: list[str]) -> dict:
    """The caption judge of a sample set: accuracy and one score per fact kind, as `evaluate_generation`."""
    from osplab.metrics.generated import judged

    j, _ = judged(clips, captions, "acc")
    return {"clips": len(clips), "caption_accuracy": j["acc"], "colour": j["acc_colour"], "shape": j["acc_shape"],
            "direction": j["acc_direction"]}


def score(clips: list[np.ndarray], captions: list[str], feats_real, ecfg: dict, i3d) -> dict:
    """FVD of `clips` (their `eval` windows) against the real features, with its 95% bootstrap interval
    (None when too few clips for a spread), and the caption judge: as `evaluate_generation` scores."""
    from osplab.metrics.generated import fvd_entry

    f = fvd_entry(feats_real, clips, ecfg, i3d, "I3D", False)
    return {"fvd": f["fvd"], "fvd_p2_5": f["p2_5"], "fvd_p97_5": f["p97_5"], **judge_scores(clips, captions)}
