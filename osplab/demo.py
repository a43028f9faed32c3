"""`osplab demo`: a Gradio app for text to video with the trained checkpoints.

    osplab demo                        # http://127.0.0.1:7860 with the checkpoints params.yaml names
    osplab demo --port 7861 --checkpoint checkpoints/dit_rf.safetensors
    osplab demo --share                # also a public gradio.live link (off unless asked)

A thin layer over `osplab.generate`, the code behind `osplab sample`: the page picks a caption,
a (frames, height, width) shape from those the DiT trained on, the sampler (RF Euler/Heun from the
RF checkpoint, DDPM ancestral/DDIM from the DDPM one), steps, guidance scale and seed; the result
is an mp4 written exactly as `osplab sample` writes it, shown with the time taken and the CLI
command that reproduces it. A shape the model never trained on needs an explicit tick and comes
with the generator's warning (it samples noise-like video there).

Safety and sharing. The server binds 127.0.0.1 unless `--host` says otherwise and makes no public
link unless `--share`. Checkpoint paths come only from the command line; nothing typed in the page
reads or writes a path (videos go to a fresh temporary folder). Requests queue and run one at a
time (one sampler saturates a CPU); Stop cancels a running sample at its next model call.
Bad input (empty caption, missing or mismatched checkpoints, a shape the VQVAE and patch cannot
take) is a message in the page, never a stack trace.
"""

from __future__ import annotations

import itertools
import json
import shlex
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from osplab.generate import Generator, guidance_interval, load_generator

# page label -> (objective of the checkpoint, sampler name of osplab.generate)
SAMPLERS = {"RF Euler": ("rf", "euler"), "RF Heun": ("rf", "heun"),
            "DDPM ancestral": ("ddpm", "ancestral"), "DDPM DDIM": ("ddpm", "ddim")}
FPS, UPSCALE = 8, 4  # as `osplab sample` writes clips by default


class Cancelled(RuntimeError):
    """Raised inside the sampler when Stop was pressed."""


@dataclass
class Result:
    video: str     # path of the mp4
    info: str      # markdown: time taken, settings, the reproducing CLI command, warnings
    seconds: float
    frames: int


def shape_label(frames: int, height: int, width: int) -> str:
    return f"{frames} frames, {height}x{width}"


def val_captions(cfg, limit: int = 8) -> list[str]:
    """The first `limit` distinct captions of the val split of the latent store (page examples)."""
    path = Path(cfg.vqvae.latents) / "captions.jsonl"
    if not path.is_file():
        return []
    seen: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["split"] == "val" and row["caption"] not in seen:
            seen.append(row["caption"])
        if len(seen) == limit:
            break
    return seen


class DemoBackend:
    """Loads the checkpoints once and runs one request at a time; no Gradio in here (tests call it).

    `dit_paths`: DiT checkpoints to serve (default: dit_rf and dit_ddpm of `diffusion.checkpoints`).
    A checkpoint that is missing or does not match the VQVAE / text encoder is kept as an error
    message, shown in the page, and its samplers answer with that message.
    """

    def __init__(self, cfg, dit_paths: list[str] | None = None, out_dir: str | None = None):
        from osplab.tasks.dit import checkpoint_path

        self.cfg = cfg
        self.generators: dict[str, Generator] = {}
        self.errors: dict[str, str] = {}
        paths = dit_paths or [checkpoint_path(cfg, objective) for objective in ("rf", "ddpm")]
        for path in paths:
            guess = "ddpm" if "ddpm" in Path(path).name else "rf"  # named by train_dit; the metadata decides
            try:
                gen = load_generator(path, cfg.vqvae.checkpoint, cfg.text)
            except (FileNotFoundError, ValueError) as err:
                self.errors.setdefault(guess, str(err))
                continue
            self.generators[gen.meta["objective"]] = gen
            self.errors.pop(gen.meta["objective"], None)
        self.out_dir = Path(out_dir or tempfile.mkdtemp(prefix="osplab-demo-"))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.examples = val_captions(cfg)
        self._shapes = self._trained_shapes()
        self._cancel = threading.Event()
        self._counter = itertools.count()

    # ----------------------------------------------------------------------------- what the page offers
    def shapes(self) -> dict[str, tuple[int, int, int]]:
        """label -> (frames, height, width) of every latent shape the served DiTs trained on."""
        return dict(self._shapes)

    def _trained_shapes(self) -> dict[str, tuple[int, int, int]]:
        out: dict[str, tuple[int, int, int]] = {}
        for gen in self.generators.values():
            ft, fh, fw = gen.vqvae.cfg.downsample
            for t, h, w in sorted(gen.meta["train_shapes"], key=lambda s: (s[1] * s[2], s[0])):
                out.setdefault(shape_label(t * ft, h * fh, w * fw), (t * ft, h * fh, w * fw))
        return out

    def samplers(self) -> list[str]:
        return list(SAMPLERS)

    def default_steps(self, sampler: str) -> int:
        s = self.cfg.diffusion.sample
        return int(s.rf_steps if SAMPLERS[sampler][0] == "rf" else s.ddpm_steps)

    def status(self) -> str:
        """Markdown: which checkpoints are served, and why the others are not."""
        lines = []
        for objective in ("rf", "ddpm"):
            if objective in self.generators:
                meta = self.generators[objective].meta
                n = sum(p.numel() for p in self.generators[objective].dit.parameters())
                commit = str(meta.get("record", {}).get("git_commit", "unknown"))[:10]
                lines.append(f"- **{objective}**: DiT of {n / 1e6:.1f}M parameters, trained at commit {commit}")
            elif objective in self.errors:
                lines.append(f"- **{objective}**: not available: {self.errors[objective]}")
        return "\n".join(lines)

    # ------------------------------------------------------------------------------------ one request
    def cancel(self) -> None:
        self._cancel.set()

    def generate(self, caption: str, shape: str, sampler: str, steps: int, cfg_scale: float, seed: int,
                 untrained: bool = False, frames: int | None = None, height: int | None = None,
                 width: int | None = None, progress: bool = False) -> Result:
        """One clip. Bad input raises ValueError / FileNotFoundError with the message for the page."""
        from osplab.media import write_video

        caption = (caption or "").strip()
        if not caption:
            raise ValueError("the caption is empty: describe the clip, e.g. 'a small red circle moves left slowly'")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler {sampler!r} is unknown; choose one of {list(SAMPLERS)}")
        objective, name = SAMPLERS[sampler]
        if objective not in self.generators:
            raise FileNotFoundError(self.errors.get(objective, f"no {objective} checkpoint is served"))
        gen = self.generators[objective]
        if untrained:
            if not all(isinstance(v, (int, float)) and v > 0 for v in (frames, height, width)):
                raise ValueError("give frames, height and width (positive numbers) for an untrained shape")
            f, h, w = int(frames), int(height), int(width)
        else:
            if shape not in self._shapes:
                raise ValueError(f"shape {shape!r} is not one the model trained on; choose one of {list(self._shapes)} "
                                 "or tick 'untrained shape'")
            f, h, w = self._shapes[shape]
        steps, seed = int(steps), int(seed)
        self._cancel.clear()
        interval = guidance_interval(self.cfg.diffusion.sample)  # None: guidance at every step

        def check_cancel(module, args):
            if self._cancel.is_set():
                raise Cancelled("cancelled: Stop was pressed")

        hook = gen.dit.register_forward_pre_hook(check_cancel)
        started = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                video = gen.generate([caption], f, h, w, steps, float(cfg_scale), seed, sampler=name,
                                     snap=bool(self.cfg.diffusion.sample.snap_to_codebook), progress=progress,
                                     precision=str(self.cfg.diffusion.sample.precision),
                                     cfg_interval=interval)[0]
        finally:
            hook.remove()
        seconds = time.perf_counter() - started
        path = self.out_dir / f"{next(self._counter):04d}_{objective}_{name}_seed{seed}.mp4"
        write_video(path, video, fps=FPS, upscale=UPSCALE)
        command = " ".join(["osplab", "sample", shlex.quote(caption), "--frames", str(f), "--size", str(h), str(w),
                            "--steps", str(steps), "--cfg", f"{float(cfg_scale):g}", "--seed", str(seed),
                            "--objective", objective, "--sampler", name, "--out", "clip.mp4"])
        notes = [f"> ⚠️ {warning.message}" for warning in caught if issubclass(warning.category, UserWarning)]
        info = "\n".join([
            f"**{seconds:.1f} s** on {'CPU' if next(gen.dit.parameters()).device.type == 'cpu' else 'GPU'}: "
            f"{f} frames at {h}x{w}, {sampler}, {steps} steps, guidance {float(cfg_scale):g}"
            f"{guidance_note(interval)}, seed {seed}",
            "", "Reproduce from the command line (same checkpoints and params.yaml):", "",
            f"```\n{command}\n```", *notes])
        return Result(str(path), info, seconds, f)


def guidance_note(interval: tuple[float, float] | None) -> str:
    """' at noise levels 0.7-1' for a guidance interval, '' when guidance runs at every step."""
    return "" if interval is None else f" at noise levels {interval[0]:g}-{interval[1]:g}"


def build_app(backend: DemoBackend):
    """The Gradio Blocks page over `backend` (not launched)."""
    import gradio as gr

    shapes = list(backend.shapes())
    default_shape = shape_label(16, 64, 64) if shape_label(16, 64, 64) in shapes else (shapes[0] if shapes else None)
    sample = backend.cfg.diffusion.sample

    def run(caption, shape, sampler, steps, cfg_scale, seed, untrained, frames, height, width,
            progress=gr.Progress(track_tqdm=True)):
        try:
            result = backend.generate(caption, shape, sampler, steps, cfg_scale, seed, untrained, frames, height,
                                      width, progress=True)
        except (ValueError, FileNotFoundError, Cancelled) as err:
            raise gr.Error(str(err), print_exception=False) from None
        return result.video, result.video, result.info

    with gr.Blocks(title="osplab: text to video") as app:
        gr.Markdown("# osplab: text to video\nA tiny DiT trained on osplab's synthetic moving-shapes clips "
                    "(CPU-sized; see README for what it can and cannot do).\n\n" + backend.status())
        with gr.Row():
            with gr.Column():
                caption = gr.Textbox(label="Caption", lines=2, elem_id="caption",
                                     placeholder="a small red circle moves left slowly")
                if backend.examples:
                    gr.Examples(backend.examples, inputs=caption, label="Captions of the val split")
                shape = gr.Dropdown(shapes, value=default_shape, label="Frames and size (shapes the model trained on)")
                with gr.Accordion("Untrained shape (expect noise)", open=False):
                    untrained = gr.Checkbox(False, label="Use this shape; the model never trained on it")
                    frames = gr.Number(16, precision=0, label="frames")
                    height = gr.Number(64, precision=0, label="height")
                    width = gr.Number(64, precision=0, label="width")
                sampler = gr.Dropdown(backend.samplers(), value="RF Euler", label="Sampler")
                steps = gr.Slider(1, 1000, value=backend.default_steps("RF Euler"), step=1, label="Steps")
                cfg_scale = gr.Slider(1.0, 10.0, value=float(sample.cfg), step=0.5, label="Guidance scale")
                seed = gr.Number(int(sample.seed), precision=0, label="Seed")
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop = gr.Button("Stop", elem_id="stop")
            with gr.Column():
                video = gr.Video(label="Result", elem_id="result", autoplay=True, loop=True)
                download = gr.File(label="Download the mp4", elem_id="download")
                info = gr.Markdown(elem_id="info")
        sampler.change(backend.default_steps, sampler, steps)
        event = go.click(run, [caption, shape, sampler, steps, cfg_scale, seed, untrained, frames, height, width],
                         [video, download, info], api_name="generate", concurrency_limit=1)
        stop.click(backend.cancel, None, None, cancels=[event], api_name="stop")
    app.queue(default_concurrency_limit=1)
    return app


def launch(cfg, dit_paths: list[str] | None = None, host: str = "127.0.0.1", port: int = 7860,
           share: bool = False, block: bool = True):
    """Build the backend and the page and serve it; returns the app (block=False: the server thread runs on)."""
    backend = DemoBackend(cfg, dit_paths)
    app = build_app(backend)
    app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
               allowed_paths=[str(backend.out_dir)], show_error=True, quiet=not block)
    return app
