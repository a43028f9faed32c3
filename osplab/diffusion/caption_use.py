"""Does a DiT listen to each fact of its caption? A loss probe next to the pixel judge.

The judge (osplab.metrics.judge) says whether a generated clip *shows* the caption's colour, shape
and direction. When a fact fails it cannot say why: the network may never have learned to read the
word, or it reads it and the sampler loses it. This probe asks the network directly.

For val clips whose caption names one object, the objective's loss (the training loss: RF velocity
MSE or DDPM's) is measured at the fixed times `t_grid` with fixed noise, under

- the clip's own caption (`true`),
- the same caption with one fact word replaced by the next value of its kind in the data
  generator's lists (`colour`: red -> green, `shape`: circle -> square, `direction`: left -> right
  ...), the other words kept, and
- the null caption (`null`, mask all False: the unconditional branch of classifier-free guidance).

A network that uses a fact denoises worse when it is told the wrong one; one that ignores it scores
the same. Reported per variant: the relative loss increase over the true caption, mean over the
times, (L_swapped / L_true - 1), and the losses per time. Only the synthetic data's caption grammar
is understood (osplab.data.synthetic; parse_caption raises on other captions).
"""

from __future__ import annotations

import re

import torch

from osplab.data.synthetic import COLOURS, DIRECTIONS, SHAPES
from osplab.metrics.judge import KINDS, parse_caption

VALUES = {"colour": tuple(COLOURS), "shape": tuple(SHAPES), "direction": tuple(DIRECTIONS)}
VARIANTS = ("true", *KINDS, "null")


def swapped(caption: str, kind: str) -> str:
    """The one-object `caption` with its `kind` word replaced by the next value of that kind."""
    specs = parse_caption(caption)
    if len(specs) != 1:
        raise ValueError(f"caption {caption!r} names {len(specs)} objects; the probe swaps facts of one-object captions")
    value = getattr(specs[0], kind)
    if value is None:
        raise ValueError(f"caption {caption!r} names no {kind}")
    options = VALUES[kind]
    new = options[(options.index(value) + 1) % len(options)]
    out, n = re.subn(rf"\b{re.escape(value)}\b", new, caption, count=1)
    if n != 1:  # parse_caption lower-cases; a capitalised word would not be found
        raise ValueError(f"caption {caption!r}: could not replace {value!r}")
    return out


def one_object_rows(rows: list[dict], clips: int) -> list[int]:
    """Indices of the first `clips` rows whose caption names exactly one object with all three facts."""
    picked = []
    for i, row in enumerate(rows):
        specs = parse_caption(row["caption"])
        if len(specs) == 1 and specs[0].shape and specs[0].direction:
            picked.append(i)
            if len(picked) == clips:
                break
    return picked


@torch.no_grad()
def caption_use(loss_fn, data, encoder, clips: int, t_grid, seed: int, noise_fn) -> dict:
    """The probe on the first `clips` one-object clips of `data` (osplab.tasks.dit.TextLatents).

    loss_fn(batch, t (1,), noise) -> scalar loss of the model in eval mode (caption dropout off);
    encoder.encode(captions) -> (tokens (N, L, D), mask (N, L)); noise_fn(shape, generator) -> the
    objective's noise (the training noise prior). One noise draw per clip (seeded by `seed`), shared
    by every variant and time, so the variants differ only in the caption.

    Returns {"clips": n, "t_grid": [...], "loss": {variant: [mean loss per t]},
             "increase": {variant: mean over t of L_variant / L_true - 1}} for VARIANTS but `true`.
    """
    rows = data.latents.rows
    picked = one_object_rows(rows, clips)
    if not picked:
        raise ValueError("no one-object captions with colour, shape and direction in this split")
    grid = [float(t) for t in t_grid]
    gen = torch.Generator().manual_seed(seed)
    totals = {v: torch.zeros(len(grid), dtype=torch.float64) for v in VARIANTS}
    named = ("true", *KINDS)
    captions = [c for i in picked for c in (rows[i]["caption"], *(swapped(rows[i]["caption"], k) for k in KINDS))]
    # one encoder call for all clips' captions; padding is masked, so it changes a row's tokens only by rounding
    all_tokens, all_mask = encoder.encode(captions)  # (n * 4, L, D), (n * 4, L)
    for n, i in enumerate(picked):
        x = data[i]["x"][None]  # (1, C, t, h, w)
        noise = noise_fn(x.shape, gen)
        rows_of = slice(n * len(named), (n + 1) * len(named))
        tokens, mask = all_tokens[rows_of], all_mask[rows_of]  # (4, L, D), (4, L)
        texts = {v: (tokens[j:j + 1], mask[j:j + 1]) for j, v in enumerate(named)}
        texts["null"] = (tokens[:1], torch.zeros_like(mask[:1]))
        for k, t in enumerate(grid):
            tt = torch.tensor([t])
            for v, (tok, m) in texts.items():
                totals[v][k] += float(loss_fn({"x": x, "text": tok, "mask": m}, tt, noise))
    loss = {v: (s / len(picked)).tolist() for v, s in totals.items()}
    true = torch.tensor(loss["true"])
    increase = {v: float((torch.tensor(loss[v]) / true - 1).mean()) for v in VARIANTS if v != "true"}
    return {"clips": len(picked), "t_grid": grid, "loss": loss, "increase": increase}
