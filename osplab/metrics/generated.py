"""Scoring one set of generated clips, the same way everywhere: `evaluate_generation` and the ablations.

- `fvd_entry`: FVD of the clips' `eval` windows against the cached real I3D features, with its
  bootstrap spread and protocol record.
- `judged`: the caption judge (osplab.metrics.judge) over the set: accuracy and one score per fact kind.

Its own module so that the stages scoring sample sets depend on this file, not on the stage script
`evaluate_generation` (whose probes and figures the ablations never run).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from osplab.metrics.judge import caption_accuracy, judge_clips
from osplab.metrics.sanity import clip_features, fvd_result, fvd_window


def fvd_entry(feats_real, clips: list[np.ndarray], ecfg: dict, i3d, desc: str, progress: bool) -> dict:
    """{'fvd', 'std', 'p2_5', 'p97_5', 'clips', 'protocol'}: FVD of `clips` (uint8 (T, H, W, 3) each, cut to
    their `ecfg` windows) vs `feats_real` (N, 400) I3D features, with its bootstrap spread."""
    windows = [fvd_window(v, ecfg["frames"], ecfg["stride"]) for v in clips]
    result = fvd_result(feats_real, clip_features(windows, i3d, ecfg, desc, progress), ecfg, i3d.weights_sha256)
    return {"fvd": result.fvd, "std": result.bootstrap_std, "p2_5": result.bootstrap_p2_5,
            "p97_5": result.bootstrap_p97_5, "clips": len(clips), "protocol": dataclasses.asdict(result.protocol)}


def judged(clips: list[np.ndarray], captions: list[str], key: str) -> tuple[dict, list[str]]:
    """{key: caption accuracy, key_colour / key_shape / key_direction: per fact kind, key_motion_px: how far
    the named objects travel along their caption's axis (px), key_jump_share: the share of their frame-to-frame
    moves that are jumps (None where no named object was found)}, verdict lines."""
    verdicts = judge_clips(clips, captions)
    summary = caption_accuracy(verdicts)
    # NaN when no named object was found: None keeps the metrics file strict JSON
    strict = {name: None if np.isnan(summary[name]) else summary[name] for name in ("motion_px", "jump_share")}
    scores = {key: summary["caption_accuracy"], f"{key}_motion_px": strict["motion_px"],
              f"{key}_jump_share": strict["jump_share"]}
    scores.update({f"{key}_{kind}": summary[f"{kind}_accuracy"] for kind in ("colour", "shape", "direction")})
    return scores, [v.text for v in verdicts]
