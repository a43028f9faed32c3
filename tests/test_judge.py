"""The caption-following judge reads colour, shape and direction from pixels, and only what is there."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from einops import reduce, repeat

from osplab.config import compose
from osplab.data.render import render_clip
from osplab.data.synthetic import COLOURS, SIZES, SynthConfig, fold, generate_store, make_clip, sample_background
from osplab.metrics import judge as J


@pytest.fixture(scope="module")
def synth_cfg():
    return SynthConfig.from_conf(compose([]).data.synthetic)


@pytest.fixture(scope="module")
def clips(synth_cfg):
    """40 clips of the default generator (64x64 and 48x64, 8-32 frames, one or two objects)."""
    return [make_clip(synth_cfg, "val", i) for i in range(40)]


def scene(objects: list[dict], frames: int = 16, size: tuple = (64, 64), textured: bool = False, seed: int = 0):
    """Render objects {shape, colour, size, start (y, x), step (dy, dx) px/frame} like the generator does
    (walls reflect the path); returns uint8 (T, H, W, 3)."""
    h, w = size
    rng = np.random.default_rng(seed)
    bg = sample_background(rng, h, w, textured)
    objs, paths = [], []
    for o in objects:
        r = SIZES[o["size"]] * min(h, w)
        free = np.asarray(o["start"], float)[None] + np.arange(frames)[:, None] * np.asarray(o["step"], float)[None]
        paths.append(np.stack([fold(free[:, 0], r, h - r), fold(free[:, 1], r, w - r)], axis=1))
        objs.append({"shape": o["shape"], "rgb": o.get("rgb", COLOURS[o["colour"]]), "radius": r})
    return render_clip(bg, objs, np.stack(paths, axis=1))


def blocky(frames: np.ndarray, cell: int = 8) -> np.ndarray:
    """Every cell x cell block of every frame replaced by its mean colour (a harsh stand-in for a decoder)."""
    means = reduce(frames.astype(np.float64), "t (h a) (w b) c -> t h w c", "mean", a=cell, b=cell)
    return np.floor(repeat(means, "t h w c -> t (h a) (w b) c", a=cell, b=cell) + 0.5).astype(np.uint8)


def test_true_captions_are_found_and_shuffled_ones_are_not(clips):
    own = J.caption_accuracy(J.judge_clips([c.frames for c in clips], [c.caption for c in clips]))
    assert own["clips"] == 40 and own["facts"] == sum(3 * len(c.scene["objects"]) for c in clips)
    assert own["caption_accuracy"] >= 0.95 and own["fact_accuracy"] >= 0.95
    assert min(own[f"{k}_accuracy"] for k in J.KINDS) >= 0.9
    # every clip paired with another clip's caption: chance level (about 0.1-0.2 on this data)
    rolled = [clips[(i + 1) % len(clips)].caption for i in range(len(clips))]
    chance = J.caption_accuracy(J.judge_clips([c.frames for c in clips], rolled))
    assert chance["caption_accuracy"] <= 0.35, chance


def test_parse_caption_one_and_two_objects():
    one = J.parse_caption("a small red circle moves left slowly and bounces off the walls on a textured background")
    assert one == [J.ObjectSpec("red", "circle", "left")]
    two = J.parse_caption("a large blue square glides up quickly while a small white triangle slides down slowly")
    assert two == [J.ObjectSpec("blue", "square", "up"), J.ObjectSpec("white", "triangle", "down")]
    assert J.parse_caption("A Green thing") == [J.ObjectSpec("green", None, None)]
    with pytest.raises(ValueError, match="names no colour"):
        J.parse_caption("a small red circle moves left while a square moves up")
    with pytest.raises(ValueError, match="same colour twice"):
        J.parse_caption("a red circle moves up while a red square moves down")


def test_facts_of_a_partial_caption_are_only_those_it_names():
    clip = scene([{"shape": "circle", "colour": "red", "size": "large", "start": (32, 20), "step": (0, 1)}])
    verdict = J.judge_clip(clip, "a red thing")
    assert [(f["kind"], f["ok"]) for f in verdict.facts] == [("colour", True)]
    assert verdict.text == "red: colour ok"


@pytest.mark.parametrize("shape", ["circle", "square", "triangle"])
@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("direction", ["left", "down"])
def test_rendered_object_on_texture(shape, size, direction):
    step = {"left": (0, -1.5), "down": (1.5, 0)}[direction]
    clip = scene([{"shape": shape, "colour": "purple", "size": size, "start": (24, 40), "step": step}],
                 size=(48, 64), textured=True, seed=3)
    verdict = J.judge_clip(clip, f"a {size} purple {shape} moves {direction} quickly")
    assert verdict.accuracy == 1.0, verdict.text
    assert verdict.text == f"purple {shape}: colour ok, shape ok, direction ok"


def test_object_painted_another_colour_fails_its_facts():
    objects = [{"shape": "square", "colour": "red", "size": "large", "start": (20, 16), "step": (0, 1.5)},
               {"shape": "triangle", "colour": "cyan", "size": "small", "start": (48, 40), "step": (-1, 0)}]
    caption = "a large red square moves right quickly while a small cyan triangle moves up slowly"
    assert J.judge_clip(scene(objects), caption).accuracy == 1.0
    repainted = [{**objects[0], "rgb": COLOURS["orange"]}, objects[1]]   # the square is now orange
    verdict = J.judge_clip(scene(repainted), caption)
    assert [(f["object"], f["kind"], f["ok"]) for f in verdict.facts] == [
        (0, "colour", False), (0, "shape", False), (0, "direction", False),
        (1, "colour", True), (1, "shape", True), (1, "direction", True)]
    assert verdict.text.startswith("red square: colour x (none), shape x (none), direction x (none); cyan triangle")
    assert J.judge_clip(scene(repainted), caption.replace("red", "orange")).accuracy == 1.0


def test_direction_is_the_initial_one_when_the_object_bounces():
    # starts 3 px from the right wall at 2 px/frame: right for one frame, then left for 15
    clip = scene([{"shape": "circle", "colour": "yellow", "size": "small", "start": (30, 64 - 0.09 * 64 - 3),
                   "step": (0, 2)}])
    seen = J.observe(*J.colour_labels(clip), "yellow")
    assert seen.present and seen.direction == "right" and seen.features["axis"] == "x"
    # a track with jitter on the other axis: the first move larger than 3x the jitter decides
    track = np.array([[10.0, 5.0], [10.1, 5.0], [9.9, 5.0], [10.2, 6.0], [10.0, 7.0], [10.1, 8.0]])
    assert J.read_direction(track, 64)[0] == "right" and J.read_direction(track[:, ::-1], 64)[0] == "down"
    assert J.read_direction(track[:1], 64)[0] is None


def test_a_jump_is_not_motion():
    # a static object re-placed 20 px to the right once (a generated object's jump between latent frames):
    # the first big displacement would say "right", but a re-placement is not a glide
    track = np.array([[30.0, 20.0]] * 8 + [[30.0, 40.0]] * 8)
    track[:, 0] += np.tile([0.0, 0.2], 8)
    glide, jumps = J.glide_track(track, 64)
    assert jumps == 1 and np.allclose(glide[:, 1], 20.0)
    direction, info = J.read_direction(track, 64)
    assert direction is None and info["jumps"] == 1
    # the limit scales with the frame: the same track scaled to half the size still jumps; 20 px in one
    # frame at 512 px (limit 2 x 2 x 8 = 32 px) is a glide
    assert J.glide_track(track / 2, 32)[1] == 1 and J.glide_track(track, 512)[1] == 0
    # a glide of 1 px/frame that jumps back by 12 px halfway keeps its glide and its direction
    glide_then_jump = np.stack([np.full(16, 30.0), 10.0 + np.arange(16) - 12.0 * (np.arange(16) >= 8)], axis=1)
    glide, jumps = J.glide_track(glide_then_jump, 64)
    assert jumps == 1 and np.allclose(glide[:, 1], 10.0 + np.arange(16) - 1.0 * (np.arange(16) >= 8))
    assert J.read_direction(glide_then_jump, 64)[0] == "right"
    # frames where the object was not found keep their NaN; the limit grows with the frames elapsed
    gappy = np.array([[5.0, 5.0], [np.nan, np.nan], [np.nan, np.nan], [5.0, 15.0]])
    glide, jumps = J.glide_track(gappy, 64)
    assert jumps == 0 and np.isnan(glide[1:3]).all() and glide[3, 1] == 15.0


def test_a_wobble_is_not_motion():
    # 16 frames: the least visible motion is a quarter of the slow object's 15 px path, 3.75 px
    wobble = np.stack([np.full(16, 30.0), 30.0 + 2.5 * np.arange(16) / 15], axis=1)
    direction, info = J.read_direction(wobble, 64)
    assert direction is None and info["min_travel_px"] == 3.75
    assert J.read_direction(wobble * 2.0, 128)[0] is None          # the same wobble at twice the size
    assert J.read_direction(wobble * np.array([1.0, 2.0]) - np.array([0.0, 30.0]), 64)[0] == "right"
    # rendered: a slow object that only creeps 0.15 px per frame has its colour and shape but no direction
    clip = scene([{"shape": "square", "colour": "green", "size": "large", "start": (30, 30), "step": (0, 0.15)}])
    verdict = J.judge_clip(clip, "a large green square moves right slowly")
    assert [f["ok"] for f in verdict.facts] == [True, True, False], verdict.text


def test_blocky_degradation_keeps_colour_and_direction(clips):
    summary = J.caption_accuracy(J.judge_clips([blocky(c.frames) for c in clips], [c.caption for c in clips]))
    assert summary["colour_accuracy"] >= 0.95 and summary["direction_accuracy"] >= 0.9, summary


@pytest.mark.parametrize("first", [0, 1])
def test_distractor_blobs_and_noise(first):
    rng = np.random.default_rng(0)
    clip = scene([{"shape": "circle", "colour": "green", "size": "large", "start": (40, 16), "step": (0, 1)}],
                 frames=12).astype(np.float64)
    # a larger green blob right of the object, flickering in every third frame from `first`: taking
    # the largest region per frame (or the largest of frame 0) jumps between the two and reads "left";
    # tracking the plausibly moving region keeps "right"
    clip[first::3, 30:52, 40:62] = COLOURS["green"]
    clip = np.clip(clip + rng.normal(0, 10, clip.shape), 0, 255).astype(np.uint8)
    verdict = J.judge_clip(clip, "a large green circle moves right slowly")
    assert verdict.accuracy == 1.0, verdict.text


def test_array_batch_equals_list_and_bad_input(clips):
    same = [c for c in clips if c.frames.shape == clips[0].frames.shape][:3]
    batch = np.stack([c.frames for c in same])                            # (N, T, H, W, 3) uint8
    caps = [c.caption for c in same]
    assert [v.facts for v in J.judge_clips(batch, caps)] == [v.facts for v in J.judge_clips(list(batch), caps)]
    with pytest.raises(ValueError, match="2 captions"):
        J.judge_clips(batch, caps[:2])
    with pytest.raises(ValueError, match="uint8"):
        J.judge_clip(batch[0].astype(np.float32), caps[0])


def test_cli_on_a_store(tmp_path, synth_cfg, capsys):
    root = tmp_path / "raw"
    generate_store(root, replace(synth_cfg, num_clips={"val": 12}), shard_size=8, progress=False)
    out = tmp_path / "judge.json"
    own = J.main([str(root), "val", "--out", str(out), "--show", "0"])
    assert own["clips"] == 12 and own["caption_accuracy"] >= 0.9
    record = json.loads(out.read_text())
    assert len(record["verdicts"]) == 12 and record["caption_accuracy"] == own["caption_accuracy"]
    shuffled = J.main([str(root), "val", "--shuffle-seed", "1", "--limit", "10"])
    assert shuffled["clips"] == 10 and shuffled["caption_accuracy"] < own["caption_accuracy"] - 0.4
    assert '"shuffle_seed": 1' in capsys.readouterr().out


def test_cli_judges_vqvae_reconstructions(tmp_path, synth_cfg, smoke_cfg):
    """--vqvae swaps the clips for their reconstructions: an untrained tiny VQVAE decodes no caption."""
    import torch
    from omegaconf import OmegaConf

    from osplab.io import sha256_file
    from osplab.models.vqvae import VQVAE, VQVAEConfig
    from osplab.train.checkpoint import save_tensors_atomic

    root = tmp_path / "raw"
    generate_store(root, replace(synth_cfg, num_clips={"val": 6}), shard_size=8, progress=False)
    conf = OmegaConf.to_container(smoke_cfg.vqvae.model, resolve=True)
    with torch.random.fork_rng():          # seeded weights without touching the caller's global stream
        torch.manual_seed(0)
        model = VQVAE(VQVAEConfig.from_dict(conf))
    ckpt = tmp_path / "vqvae.safetensors"
    save_tensors_atomic(model.state_dict(), ckpt, metadata={"config": json.dumps(conf)})
    own = J.main([str(root), "val", "--show", "0"])
    recon = J.main([str(root), "val", "--vqvae", str(ckpt), "--show", "0"])
    assert own["clips_from"] == "store" and recon["clips_from"] == "vqvae reconstructions"
    assert recon["vqvae_sha256"] == sha256_file(ckpt) and recon["clips"] == 6
    assert recon["caption_accuracy"] < own["caption_accuracy"] - 0.5


def test_motion_px_tells_a_static_object_from_a_moving_one(clips):
    # the generator's objects travel 1-2 px per frame; the same clips frozen at their first frame do not move
    moving = J.caption_accuracy(J.judge_clips([c.frames for c in clips], [c.caption for c in clips]))
    frozen = J.caption_accuracy(J.judge_clips([np.repeat(c.frames[:1], len(c.frames), axis=0) for c in clips],
                                              [c.caption for c in clips]))
    assert moving["motion_px"] >= 8.0 and frozen["motion_px"] <= 0.5, (moving["motion_px"], frozen["motion_px"])
    assert frozen["direction_accuracy"] == 0.0 and frozen["colour_accuracy"] >= 0.95
    # one object at 1.5 px/frame for 16 frames: the 5-95 percentile spread of its track is 0.9 x 15 x 1.5 px
    clip = scene([{"shape": "square", "colour": "green", "size": "small", "start": (20, 10), "step": (0, 1.5)}])
    fact = J.judge_clip(clip, "a small green square moves right quickly").facts[-1]
    assert fact["kind"] == "direction" and fact["travel_px"] == pytest.approx(0.9 * 15 * 1.5, abs=1.0)
    absent = J.judge_clip(clip, "a small blue square moves right quickly").facts[-1]
    assert absent["travel_px"] is None
    assert np.isnan(J.caption_accuracy([J.judge_clip(clip, "a small blue square moves right quickly")])["motion_px"])


def test_jump_share_counts_re_placements(clips):
    # real objects glide: (almost) none of their frame-to-frame moves is a jump
    real = J.caption_accuracy(J.judge_clips([c.frames for c in clips], [c.caption for c in clips]))
    assert real["jump_share"] <= 0.01, real["jump_share"]
    # a still object shown at x = 15 for 8 frames, then at x = 45: one jump in 15 moves, and no direction
    still = {"shape": "circle", "colour": "blue", "size": "large", "step": (0, 0)}
    clip = np.concatenate([scene([dict(still, start=(30, 15))])[:8], scene([dict(still, start=(30, 45))])[8:]])
    verdict = J.judge_clip(clip, "a large blue circle moves right slowly")
    summary = J.caption_accuracy([verdict])
    assert summary["jump_share"] == pytest.approx(1 / 15) and [f["ok"] for f in verdict.facts] == [True, True, False]
    assert verdict.facts[-1]["travel_px"] < 1.0
