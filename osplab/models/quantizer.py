"""Vector quantizer with EMA codebook updates and dead-code restart (VQ-VAE stage 1).

    vq = VectorQuantizer(codebook_size=8192, dim=64, commitment=0.25, decay=0.99,
                         l2_normalize=True, restart_every=50)
    z_q, indices, stats = vq(z_e)        # z_e: (B, D, T, H, W) float
    z = vq.lookup(indices)               # indices: (B, T, H, W) int64 -> (B, D, T, H, W)

Choices (and why):
- **l2-normalised lookup** (`l2_normalize=True`, the default in conf/vqvae): encoder outputs and codes
  are projected onto the unit sphere and matched by cosine similarity (as in ViT-VQGAN). Codes
  cannot drift to a far-away norm where nothing reaches them, which keeps far more of a large
  codebook in use. With `l2_normalize=False` the lookup is plain Euclidean.
- **EMA codebook** (no codebook loss, no optimizer state): per code k, after each training batch
      N_k <- decay * N_k + (1 - decay) * n_k          (n_k: vectors assigned to k in the batch)
      m_k <- decay * m_k + (1 - decay) * sum_{i->k} z_i
      e_k <- m_k / N_k                                 (plain)   or   m_k / |m_k|   (l2)
  N and m start at (1, e): every code behaves as if it had been assigned to itself once, so a code
  that is not used keeps its value (both N and m decay by the same factor) instead of being
  dragged towards zero, as it would be with N starting at 0.
- **Dead-code restart**: every `restart_every` training forward passes (micro-batches; and on the
  very first one, which doubles as a data-dependent initialisation), each code that received no
  vector since the last check is replaced by a randomly chosen encoder output of the current batch.
- **Error sampling** (`error_sampling` = a in [0, 1]): k-means seeds, codes that k-means leaves empty
  and dead-code replacements are drawn with probability (1 - a) / N + a * e_i / sum(e), where e_i is
  the row's squared distance to its nearest code (to the mean, for the first seeds; a one-step
  k-means++). Uniform draws (a = 0) follow the data's density, and in videos that is mostly flat
  background: on the embedded data 16% of the latents (object cells) held 96% of the quantization
  error with uniform seeding, so objects came back with rounded corners. Error draws put codes where
  the error is.
- Only training mode (`module.train()`) updates the codebook; encode for evaluation in eval mode.
- All state (codebook, EMA statistics, usage since the last restart, update counter) is in buffers,
  so it is saved with the weights; the restart draws from torch's global RNG (restored on resume).
- **Distributed**: counts and sums are all-reduced across ranks before the EMA update and the
  replacement vectors come from rank 0, so every rank holds the same codebook.
- Quantization runs in float32 even under bf16 autocast: nearest-neighbour search in bf16 picks
  wrong codes.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def codebook_stats(counts: torch.Tensor) -> dict[str, float]:
    """Usage and perplexity of a code histogram.

    counts: (K,) number of vectors assigned to each code (any non-negative numbers).
    Returns usage = fraction of codes with a non-zero count (0-1) and
    perplexity = exp(entropy of the empirical code distribution) (1 = one code, K = uniform).
    """
    counts = counts.double()
    total = counts.sum()
    if total <= 0:
        return {"usage": 0.0, "perplexity": 0.0}
    p = counts / total
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum()
    return {"usage": (counts > 0).double().mean().item(), "perplexity": math.exp(entropy.item())}


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class VectorQuantizer(nn.Module):
    """Nearest-code quantization of (B, D, T, H, W) latents with a straight-through gradient."""

    def __init__(self, codebook_size: int, dim: int, commitment: float, decay: float,
                 l2_normalize: bool, restart_every: int, error_sampling: float = 0.0, chunk: int = 4096):
        super().__init__()
        if codebook_size < 2 or dim < 1:
            raise ValueError(f"codebook_size={codebook_size} and dim={dim}: need codebook_size >= 2 and dim >= 1")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay={decay}: the EMA decay must be in [0, 1)")
        if restart_every < 1:
            raise ValueError(f"restart_every={restart_every}: must be >= 1 (training batches between restarts)")
        if not 0.0 <= error_sampling <= 1.0:
            raise ValueError(f"error_sampling={error_sampling}: must be in [0, 1] (share of draws weighted by error)")
        self.codebook_size, self.dim = codebook_size, dim
        self.error_sampling = float(error_sampling)
        self.commitment, self.decay = commitment, decay
        self.l2_normalize, self.restart_every = l2_normalize, restart_every
        self.chunk = chunk  # vectors per distance block: bounds memory at chunk x K floats
        codebook = self._norm(torch.randn(codebook_size, dim))
        self.register_buffer("codebook", codebook)                      # (K, D)
        self.register_buffer("ema_count", torch.ones(codebook_size))    # (K,)  N_k
        self.register_buffer("ema_sum", codebook.clone())               # (K, D) m_k
        self.register_buffer("usage_since_restart", torch.zeros(codebook_size))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))  # training batches seen

    def _norm(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(z, dim=-1) if self.l2_normalize else z

    def _draw(self, err: torch.Tensor, k: int, generator=None) -> torch.Tensor:
        """k distinct row indices of N rows (k <= N), drawn with probability (1 - a) / N + a * err / sum(err)
        (a = error_sampling); err (N,) non-negative, e.g. squared distances to the nearest code."""
        n, a = len(err), self.error_sampling
        if a == 0.0 or float(err.sum()) <= 0.0:
            return torch.randperm(n, generator=generator, device=err.device)[:k]
        p = (1.0 - a) / n + a * err.double() / err.double().sum()
        # every row stays drawable (a = 1 and few rows with error): without replacement needs k non-zero weights
        return torch.multinomial(p.clamp_min(1e-12 / n).float(), k, replacement=False, generator=generator)

    def nearest(self, z_flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of z_flat (N, D) (already normalised) -> (N,) int64."""
        e = self.codebook
        out = []
        for block in z_flat.split(self.chunk):
            if self.l2_normalize:  # unit vectors: nearest in L2 == largest dot product
                out.append((block @ e.t()).argmax(dim=1))
            else:  # |z|^2 is constant per row, so argmin |e|^2 - 2 z.e
                out.append(((e * e).sum(1) - 2.0 * block @ e.t()).argmin(dim=1))
        return torch.cat(out) if out else z_flat.new_zeros(0, dtype=torch.long)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes for indices (B, T, H, W) int -> (B, D, T, H, W) float32."""
        if indices.dtype.is_floating_point:
            raise TypeError(f"indices must be an integer tensor, got {indices.dtype}")
        bad = (indices < 0) | (indices >= self.codebook_size)
        if bad.any():
            raise ValueError(f"indices out of range [0, {self.codebook_size}): found {indices[bad][0].item()}")
        return rearrange(self.codebook[indices.long()], "b t h w d -> b d t h w")

    @torch.no_grad()
    def snap(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest codes of continuous latents z (B, D, T, H, W) -> (B, D, T, H, W); no update, no stats."""
        b, _, t, h, w = z.shape
        idx = self.nearest(self._norm(rearrange(z.float(), "b d t h w -> (b t h w) d")))
        return self.lookup(rearrange(idx, "(b t h w) -> b t h w", b=b, t=t, h=h, w=w))

    def forward(self, z_e: torch.Tensor):
        """Quantize z_e (B, D, T, H, W).

        Returns z_q (B, D, T, H, W) whose values are codes and whose gradient is the identity
        (straight-through) onto the (normalised) encoder output, indices (B, T, H, W) int64 and
        stats: commit_loss (scalar tensor with grad, already scaled by `commitment`), perplexity
        and usage of this batch (floats), counts (K,) histogram of this batch (all ranks).
        In training mode the codebook is updated (EMA + dead-code restart) after the lookup.
        """
        if z_e.ndim != 5 or z_e.shape[1] != self.dim:
            raise ValueError(f"quantizer input must be (B, {self.dim}, T, H, W), got {tuple(z_e.shape)}")
        with torch.autocast(device_type=z_e.device.type, enabled=False):
            b, _, t, h, w = z_e.shape
            z = self._norm(rearrange(z_e.float(), "b d t h w -> (b t h w) d"))  # (N, D)
            with torch.no_grad():
                idx = self.nearest(z)                                  # (N,)
            q = self.codebook[idx]                                     # (N, D), no grad
            commit = self.commitment * F.mse_loss(z, q)
            z_st = z + (q - z).detach()                                # straight-through estimator
            counts = torch.bincount(idx, minlength=self.codebook_size).float()
            if _distributed():
                dist.all_reduce(counts)
            if self.training:
                self._update(z.detach(), idx, counts)
        z_q = rearrange(z_st, "(b t h w) d -> b d t h w", b=b, t=t, h=h, w=w)
        stats = {"commit_loss": commit, "counts": counts, **codebook_stats(counts)}
        return z_q, rearrange(idx, "(b t h w) -> b t h w", b=b, t=t, h=h, w=w), stats

    @torch.no_grad()
    def _update(self, z: torch.Tensor, idx: torch.Tensor, counts: torch.Tensor) -> None:
        """EMA step for the codes used in this batch, then the dead-code restart when due.

        z (N, D) normalised encoder outputs, idx (N,) their codes, counts (K,) global histogram.
        """
        due = self.updates.item() % self.restart_every == 0
        # (N,) squared errors against the codes before this update; only a restart reads them
        err = (z - self.codebook[idx]).pow(2).sum(1) if self.error_sampling and due else None
        sums = torch.zeros_like(self.ema_sum).index_add_(0, idx, z)    # (K, D) sum of assigned z
        if _distributed():
            dist.all_reduce(sums)
        d = self.decay
        self.ema_count.mul_(d).add_(counts, alpha=1 - d)
        self.ema_sum.mul_(d).add_(sums, alpha=1 - d)
        if self.l2_normalize:
            self.codebook.copy_(F.normalize(self.ema_sum, dim=1))
        else:  # the clamp only matters after ~10^4 unused steps, long after a restart took the code
            self.codebook.copy_(self.ema_sum / self.ema_count.clamp_min(1e-12)[:, None])
        self.usage_since_restart.add_(counts)
        if due:
            self.restart_dead(z, err)
        self.updates.add_(1)

    @torch.no_grad()
    def init_kmeans(self, z: torch.Tensor, iters: int, seed: int) -> dict[str, float]:
        """Start the codebook as k-means of the vectors z (N, D), N >= codebook_size (Lloyd's algorithm).

        Codes start at distinct rows of z (seeded by `seed`; drawn by squared distance to the mean
        for the error_sampling share); each Lloyd step moves every code to the mean of its vectors
        (renormalised with l2_normalize) and re-seeds empty codes with rows drawn by their
        quantization error (error_sampling share) or uniformly. The EMA state restarts from the result, and the final assignment counts
        as usage, so the first training batch's dead-code restart only replaces codes that k-means
        left empty. Returns kmeans_snr_db (10 log10 of the vectors' total variance over the mean
        squared quantization error), kmeans_usage (fraction of codes with vectors) and kmeans_vectors.
        """
        z = self._norm(z.detach().float())
        n, K = len(z), self.codebook_size
        if n < K:
            raise ValueError(f"k-means needs at least codebook_size={K} vectors, got {n}: initialise from more clips")
        g = torch.Generator().manual_seed(seed)
        self.codebook.copy_(z[self._draw((z - z.mean(0)).pow(2).sum(1), K, g)])
        for _ in range(iters):
            idx = self.nearest(z)
            counts = torch.bincount(idx, minlength=K)
            means = torch.zeros_like(self.codebook).index_add_(0, idx, z) / counts.clamp_min(1)[:, None]
            empty = counts == 0
            if empty.any() and self.error_sampling:
                err = (z - self.codebook[idx]).pow(2).sum(1)
                means[empty] = z[self._draw(err, int(empty.sum()), g)]
            else:
                means[empty] = z[torch.randint(n, (int(empty.sum()),), generator=g)]
            self.codebook.copy_(self._norm(means))
        if _distributed():  # every rank computed the same; make it bitwise so
            dist.broadcast(self.codebook, src=0)
        idx = self.nearest(z)
        counts = torch.bincount(idx, minlength=K).float()
        self.ema_sum.copy_(self.codebook)
        self.ema_count.fill_(1.0)
        self.usage_since_restart.copy_(counts)
        err = (z - self.codebook[idx]).pow(2).sum(1).mean()
        var = (z - z.mean(0)).pow(2).sum(1).mean()
        return {"kmeans_snr_db": 10.0 * math.log10(var.item() / max(err.item(), 1e-30)),
                "kmeans_usage": (counts > 0).float().mean().item(), "kmeans_vectors": n}

    @torch.no_grad()
    def restart_dead(self, z: torch.Tensor, err: torch.Tensor | None = None) -> int:
        """Replace every code unused since the last check by a random row of z (N, D).

        Sampling is without replacement when z has enough rows (drawn by err (N,), the rows'
        squared quantization errors, for the error_sampling share; uniformly without err);
        otherwise with replacement plus a tiny jitter so duplicates are not exact ties. Returns the
        number of codes replaced.
        """
        dead = self.usage_since_restart == 0
        n_dead = int(dead.sum().item())
        self.usage_since_restart.zero_()
        if n_dead == 0 or z.shape[0] == 0:
            return 0
        if z.shape[0] >= n_dead:
            pick = (self._draw(err, n_dead) if err is not None
                    else torch.randperm(z.shape[0], device=z.device)[:n_dead])
            new = z[pick]
        else:
            new = z[torch.randint(z.shape[0], (n_dead,), device=z.device)]
            new = new + 1e-3 * new.std() * torch.randn_like(new)
        new = self._norm(new).contiguous()
        if _distributed():  # every rank must hold the same codebook
            dist.broadcast(new, src=0)
        self.codebook[dead] = new
        self.ema_sum[dead] = new
        self.ema_count[dead] = 1.0
        return n_dead

    def extra_repr(self) -> str:
        return (f"codebook_size={self.codebook_size}, dim={self.dim}, l2_normalize={self.l2_normalize}, "
                f"decay={self.decay}, commitment={self.commitment}, restart_every={self.restart_every}, "
                f"error_sampling={self.error_sampling}")
