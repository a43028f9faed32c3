"""The caption-use probe: fact swaps, and the increases it reports for a model of known behaviour."""

from __future__ import annotations

import pytest
import torch

from osplab.diffusion.caption_use import caption_use, one_object_rows, swapped

CAPTION = "a small red circle moves left slowly and bounces off the walls on a textured background"


def test_swaps_replace_exactly_one_fact():
    assert swapped(CAPTION, "colour") == CAPTION.replace(" red ", " green ")  # not inside "textured"
    assert swapped(CAPTION, "shape") == CAPTION.replace("circle", "square")
    assert swapped(CAPTION, "direction") == CAPTION.replace("left", "right")
    assert swapped("a large cyan triangle glides down quickly", "colour") == "a large red triangle glides down quickly"
    with pytest.raises(ValueError, match="names 2 objects"):
        swapped("a small red circle moves left slowly while a large blue square slides up quickly", "shape")
    with pytest.raises(ValueError, match="names no direction"):
        swapped("a small red circle", "direction")


class Words:
    """A fake text encoder: one token per word, one-hot over the words seen so far."""

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def encode(self, captions):
        split = [c.split() for c in captions]
        for words in split:
            for w in words:
                self.vocab.setdefault(w, len(self.vocab))
        L = max(map(len, split))
        tokens, mask = torch.zeros(len(captions), L, 64), torch.zeros(len(captions), L, dtype=torch.bool)
        for i, words in enumerate(split):
            for j, w in enumerate(words):
                tokens[i, j, self.vocab[w]] = 1
                mask[i, j] = True
        return tokens, mask


class Data:
    def __init__(self, captions):
        self.latents = type("L", (), {"rows": [{"caption": c} for c in captions]})()

    def __getitem__(self, i):
        return {"x": torch.zeros(4, 2, 2, 2)}


def test_a_model_that_reads_only_the_colour():
    enc = Words()
    data = Data(["a small red circle moves left slowly while a small blue square moves up slowly",  # skipped
                 CAPTION, "a large red square slides up quickly"])
    assert one_object_rows(data.latents.rows, 5) == [1, 2]

    def loss_fn(batch, t, noise):  # 1 with the true colour (red) in the caption, 1.5 without, 2 for no caption
        seen = batch["text"][0][batch["mask"][0]].sum(0)
        if not batch["mask"].any():
            return torch.tensor(2.0)
        return torch.tensor(1.0 + 0.5 * float(seen[enc.vocab["red"]] == 0) + 0 * float(t))

    enc.encode(["red"])  # give 'red' a token id before the probe runs
    out = caption_use(loss_fn, data, enc, clips=8, t_grid=[0.3, 0.9], seed=0,
                      noise_fn=lambda shape, g: torch.randn(shape, generator=g))
    assert out["clips"] == 2 and out["t_grid"] == [0.3, 0.9]
    assert out["loss"]["true"] == [1.0, 1.0] and out["loss"]["colour"] == [1.5, 1.5]
    assert out["increase"] == pytest.approx({"colour": 0.5, "shape": 0.0, "direction": 0.0, "null": 1.0})
