"""The counterfactual stakes of caption facts (osplab.diffusion.fact_stakes), with a pixel-pooling encoder."""

import numpy as np
import pytest
import torch
from einops import reduce

from osplab.diffusion import fact_stakes as fs

FACTORS = (4, 8, 8)


def pooled(clips):
    """A stand-in VQVAE: (t, h, w) cell means of each RGB channel as latents, their rounded grey level as codes."""
    x = torch.stack([torch.from_numpy(c.astype(np.float32) / 255.0) for c in clips])          # (V, T, H, W, 3)
    z = reduce(x, "v (t a) (h b) (w c) rgb -> v rgb t h w", "mean", a=4, b=8, c=8)
    return z, (z.mean(1) * 16).round().long()


def scenes(n=3):
    return [fs.draw_scene(5, i, 16, 64, 64, p_textured=0.5) for i in range(n)]


def test_versions_change_only_their_fact():
    scene = scenes(1)[0]
    true, changed = fs.versions(scene, shift_px=4.0)
    assert [len(changed[f]) for f in fs.FACTS] == [2, 7, 1, 1]
    for clips in changed.values():
        assert all(not np.array_equal(c, true) for c in clips)
    # the reversed path renders the true clip backwards in time: the same places, the opposite direction
    assert np.array_equal(changed["direction"][0], true[::-1])
    # a change of shape leaves every pixel outside the objects alone
    cells = fs.object_cells([true, *changed["shape"]], scene.background, (1, 1, 1))  # (T, H, W) pixels any touches
    for clip in changed["shape"]:
        assert np.array_equal(clip[~cells], true[~cells])


def test_object_cells_marks_the_cells_an_object_touches():
    background = np.zeros((64, 64, 3))
    obj = {"shape": "square", "rgb": (200, 0, 0), "radius": 3.0}
    path = np.tile([[12.0, 20.0]], (8, 1))                               # still, inside cell (1, 2)
    clip = fs.render_clip(background, [obj], path[:, None, :])
    cells = fs.object_cells([clip], background, FACTORS)
    assert cells.shape == (2, 8, 8)
    assert cells.sum() == 2 and cells[:, 1, 2].all()


def test_measure_with_pooling_encoder():
    out = fs.measure(pooled, scenes(), FACTORS)
    assert set(out) == set(fs.FACTS)
    for fact, r in out.items():
        assert r["distance"] > 0, fact
        # the pooled background cells never change: every bit of the distance is where an object is
        assert r["distance_outside"] == 0.0 and r["code_changed_outside"] == 0.0, fact
        if fact != "shift":
            assert 0 < r["excess"] <= r["distance"], fact
    # a colour swap moves the pixels of the whole object, a shape swap only its outline
    assert out["colour"]["distance"] > out["shape"]["distance"]


def test_measure_is_zero_when_the_encoder_sees_nothing():
    def blind(clips):
        return torch.zeros(len(clips), 3, 4, 8, 8), torch.zeros(len(clips), 4, 8, 8, dtype=torch.long)

    out = fs.measure(blind, scenes(1), FACTORS)
    assert all(r["distance"] == 0 and r["code_changed"] == 0 and r.get("excess", 0) == 0 for r in out.values())


def test_cli_rejects_no_scenes():
    with pytest.raises(SystemExit):
        fs.main(["--scenes", "0"])
