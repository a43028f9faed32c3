"""`osplab demo`: the backend with the smoke checkpoints, the HTTP API through gradio_client, and a
real browser (Debian's Chromium driven by Playwright) that types a caption and gets a playable video.

The browser test needs /usr/bin/chromium (Debian package `chromium`, installed by .ci/run). It is
skipped where Chromium is missing, except when OSPLAB_REQUIRE_BROWSER=1 (.ci/run sets it): there
a skip would hide a failure.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest

from osplab.config import load_params
from stage2_smoke import run_python

CAPTION = "a small red circle moves left slowly"
REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("OSPLAB_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def backend(stage2_pipeline):
    from osplab.demo import DemoBackend

    cwd = os.getcwd()
    os.chdir(stage2_pipeline)  # the smoke params.yaml names checkpoints relative to its folder
    try:
        yield DemoBackend(load_params("params.yaml"), out_dir=tempfile.mkdtemp(prefix="osplab-demo-test-"))
    finally:
        os.chdir(cwd)


@pytest.fixture
def in_pipeline(stage2_pipeline, monkeypatch):
    monkeypatch.chdir(stage2_pipeline)
    return stage2_pipeline


def a_shape(backend) -> tuple[str, tuple[int, int, int]]:
    return next(iter(backend.shapes().items()))


def test_page_offers_the_trained_shapes_and_val_captions(backend):
    assert set(backend.generators) == {"rf", "ddpm"} and not backend.errors
    trained = {tuple(s) for s in backend.generators["rf"].meta["train_shapes"]}
    ft, fh, fw = backend.generators["rf"].vqvae.cfg.downsample
    assert {(f // ft, h // fh, w // fw) for f, h, w in backend.shapes().values()} == trained
    assert backend.examples and all(isinstance(c, str) and c for c in backend.examples)
    sample = backend.cfg.diffusion.sample
    assert backend.default_steps("RF Heun") == sample.rf_steps and backend.default_steps("DDPM DDIM") == sample.ddpm_steps


@pytest.mark.parametrize("sampler", ["RF Euler", "RF Heun", "DDPM ancestral", "DDPM DDIM"])
def test_generate_writes_the_requested_clip(backend, sampler, in_pipeline):
    from osplab.media import read_video

    label, (frames, height, width) = a_shape(backend)
    result = backend.generate(CAPTION, label, sampler, 3, 4.0, 7)
    video = read_video(result.video)
    assert video.shape == (frames, 4 * height, 4 * width, 3)  # written with the CLI's 4x pixel repetition
    assert "osplab sample" in result.info and "--seed 7" in result.info and "never seen" not in result.info


def test_cli_command_in_the_page_reproduces_the_clip(backend, in_pipeline, tmp_path):
    """The command shown under the video, run as is, writes the same frames."""
    import shlex

    from osplab.media import read_video

    label, _ = a_shape(backend)
    result = backend.generate(CAPTION, label, "RF Euler", 3, 2.5, 11)
    command = result.info.split("```")[1].strip()
    args = shlex.split(command)
    assert args[:2] == ["osplab", "sample"]
    args[args.index("--out") + 1] = str(tmp_path / "cli.mp4")
    run_python(["-m", "osplab.cli", *args[1:]], in_pipeline)
    np.testing.assert_array_equal(read_video(tmp_path / "cli.mp4"), read_video(result.video))


def test_bad_input_is_a_message(backend, in_pipeline):
    label, _ = a_shape(backend)
    with pytest.raises(ValueError, match="caption is empty"):
        backend.generate("   ", label, "RF Euler", 2, 4.0, 0)
    with pytest.raises(ValueError, match="not one the model trained on"):
        backend.generate(CAPTION, "5 frames, 7x7", "RF Euler", 2, 4.0, 0)
    with pytest.raises(ValueError, match="nearest valid frames"):
        backend.generate(CAPTION, label, "RF Euler", 2, 4.0, 0, untrained=True, frames=10, height=32, width=32)
    result = backend.generate(CAPTION, label, "RF Euler", 1, 4.0, 0, untrained=True, frames=8, height=96, width=96)
    assert "never seen in training" in result.info  # an untrained shape works, with the warning shown


def test_missing_or_mismatched_checkpoints_are_named(in_pipeline, tmp_path):
    from osplab.demo import DemoBackend

    cfg = load_params("params.yaml")
    missing = DemoBackend(cfg, [str(tmp_path / "dit_rf.safetensors")], out_dir=str(tmp_path / "out"))
    assert not missing.generators and "dvc repro train_dit" in missing.errors["rf"]
    assert "dvc repro train_dit" in missing.status()
    with pytest.raises(FileNotFoundError, match="dvc repro train_dit"):
        missing.generate(CAPTION, "any", "RF Euler", 2, 4.0, 0)
    other = cfg.copy()
    other.text.max_length = 16  # not the text encoder settings the DiT was trained with
    mismatched = DemoBackend(other, out_dir=str(tmp_path / "out2"))
    assert not mismatched.generators and "max_length" in mismatched.errors["rf"]


def test_stop_cancels_a_running_sample(backend, in_pipeline):
    from osplab.demo import Cancelled

    label, _ = a_shape(backend)
    dit = backend.generators["rf"].dit
    calls = []

    def press_stop_on_third_call(module, args):
        calls.append(1)
        if len(calls) == 3:
            backend.cancel()

    hook = dit.register_forward_pre_hook(press_stop_on_third_call)
    try:
        with pytest.raises(Cancelled):
            backend.generate(CAPTION, label, "RF Euler", 50, 4.0, 0)
    finally:
        hook.remove()
    assert len(calls) == 3  # the demo's own check runs after this hook: the 3rd call never reached the model
    backend.generate(CAPTION, label, "RF Euler", 2, 4.0, 0)  # the next request starts afresh


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(backend, stage2_pipeline):
    from osplab.demo import build_app

    cwd = os.getcwd()
    os.chdir(stage2_pipeline)
    app = build_app(backend)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
               allowed_paths=[str(backend.out_dir)])
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()
        os.chdir(cwd)


def test_http_api_through_gradio_client(server, backend):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from osplab.media import read_video

    label, (frames, height, width) = a_shape(backend)
    client = Client(server, verbose=False)
    video, download, info = client.predict(CAPTION, label, "RF Euler", 3, 4.0, 0, False, 16, 64, 64,
                                           api_name="/generate")
    path = video["video"] if isinstance(video, dict) else video
    assert read_video(path).shape == (frames, 4 * height, 4 * width, 3)
    assert Path(download).read_bytes() == Path(path).read_bytes() and "osplab sample" in info
    with pytest.raises(AppError, match="caption is empty"):
        client.predict("", label, "RF Euler", 3, 4.0, 0, False, 16, 64, 64, api_name="/generate")


def test_real_browser_generates_a_playable_video(server, backend, tmp_path):
    """Headless Chromium: type a caption, press Generate, wait for the <video>, decode its source."""
    if not Path(CHROMIUM).is_file():
        if os.environ.get("OSPLAB_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} is missing and OSPLAB_REQUIRE_BROWSER=1; .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} not installed (apt install chromium); CI runs this test")
    from playwright.sync_api import sync_playwright

    from osplab.media import read_video

    label, (frames, height, width) = a_shape(backend)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(server, wait_until="networkidle")
        page.locator("#caption textarea").fill(CAPTION)
        page.locator("#generate").click()
        video = page.locator("#result video")
        video.wait_for(state="attached", timeout=120_000)
        src = video.get_attribute("src")
        body = page.request.get(src if src.startswith("http") else server.rstrip("/") + "/" + src.lstrip("/")).body()
        (tmp_path / "page.mp4").write_bytes(body)
        page.wait_for_timeout(500)  # let the player draw its first frame for the screenshot
        screenshot = page.screenshot(full_page=True)
        browser.close()
    assert read_video(tmp_path / "page.mp4").shape == (frames, 4 * height, 4 * width, 3)
    (REPO / "reports").mkdir(exist_ok=True)
    (REPO / "reports/demo.png").write_bytes(screenshot)


def test_guidance_note_names_the_band_only_when_there_is_one():
    from osplab.demo import guidance_note

    assert guidance_note(None) == ""
    assert guidance_note((0.7, 1.0)) == " at noise levels 0.7-1"
