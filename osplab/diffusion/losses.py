"""What the rectified-flow and DDPM objectives share: a checked model output and the weighted MSE."""

from __future__ import annotations

import torch


def checked(pred: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The model must return x's shape: a broadcastable shape would silently give a wrong loss or sample."""
    if pred.shape != x.shape:
        raise ValueError(f"the model returned shape {tuple(pred.shape)} for an input of shape {tuple(x.shape)}")
    return pred


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean over samples of each sample's MSE (B, ...) -> scalar; with weights (B,): mean_b(w_b * mse_b)."""
    per_sample = (pred - target).square().flatten(1).mean(1)  # (B,)
    if weights is None:
        return per_sample.mean()
    if weights.shape != per_sample.shape:
        raise ValueError(f"weights must have shape ({len(per_sample)},), got {tuple(weights.shape)}")
    return (weights.to(per_sample.dtype) * per_sample).mean()
