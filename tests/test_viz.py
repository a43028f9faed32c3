"""Figures of osplab.viz: what a reader sees has to fit on the page."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402

from osplab.viz import samples_figure  # noqa: E402

LONG = ("a large yellow circle glides up quickly and bounces off the walls while a small orange circle glides up "
        "quickly and bounces off the walls on a textured background")


def test_samples_figure_keeps_long_captions_inside_the_figure():
    clip = np.zeros((16, 32, 32, 3), np.uint8)
    captions = [LONG, "a small red square moves left slowly"]
    fig = samples_figure({"real": [clip, clip], "rf": [clip, clip]}, captions,
                         {"real": ["ok", "ok"], "rf": ["ok; x", "ok"]}, title="t")
    fig.canvas.draw()
    renderer, right = fig.canvas.get_renderer(), fig.bbox.x1
    titles = [ax._left_title for ax in fig.axes if ax._left_title.get_text()]
    assert [t.get_text().replace("\n", " ") for t in titles] == captions  # wrapped, not cut
    assert titles[0].get_text().count("\n") >= 1 and "\n" not in titles[1].get_text()
    for t in titles:
        assert t.get_window_extent(renderer).x1 <= right, t.get_text()
