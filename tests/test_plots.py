"""`fastvit plot` and `fastvit attention-map`: what the figures hold (panels, tick labels, extents,
colour bar), checked on the figure objects; the PNGs they write."""

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from fastvit import plots
from fastvit.errors import UserError

PNG = b"\x89PNG\r\n\x1a\n"


def rows(epochs: int, *, acc: bool = True) -> list[dict]:
    out = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "step": 16 * e, "train_loss": 2.0 / e, "lr": 1e-3 / e}
        if acc:
            row.update(test_acc1=50.0 + e, test_acc5=90.0 + e)
        out.append(row)
    return out


def tick_numbers(ax) -> list[float]:
    ax.figure.canvas.draw()  # tick labels are made when drawn
    lo, hi = ax.get_xlim()
    return [float(t.get_text().replace("\N{MINUS SIGN}", "-")) for t, x in zip(ax.get_xticklabels(), ax.get_xticks(),
                                                                            strict=True) if lo <= x <= hi]


@pytest.mark.parametrize("epochs", [2, 3, 7])
def test_curves_have_a_top5_panel_and_integer_epoch_ticks(epochs):
    fig = plots.curves_figure(rows(epochs), "run")
    assert [ax.get_title() for ax in fig.axes] == ["train loss", "test top-1 (%)", "test top-5 (%)",
                                                   "learning rate"]
    top5 = fig.axes[2].lines[0]
    assert list(top5.get_xdata()) == list(range(1, epochs + 1))
    assert list(top5.get_ydata()) == [90.0 + e for e in range(1, epochs + 1)]
    for ax in fig.axes:
        ticks = tick_numbers(ax)
        assert ticks and all(t == int(t) for t in ticks), (ax.get_title(), ticks)


def test_a_pretrain_run_has_no_accuracy_panels():
    fig = plots.curves_figure(rows(3, acc=False), "run")
    assert [ax.get_title() for ax in fig.axes] == ["train loss", "learning rate"]


def test_plot_writes_a_png_and_refuses_a_broken_metrics_file(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(3)))
    out = plots.plot_run(tmp_path)
    assert out == tmp_path / "curves.png" and out.read_bytes()[:8] == PNG
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "train_lo\n')
    with pytest.raises(UserError, match="not JSON lines"):
        plots.plot_run(tmp_path, tmp_path / "again.png")
    assert not (tmp_path / "again.png").exists()


@pytest.fixture
def digit(tmp_path):
    path = tmp_path / "digit.png"
    Image.fromarray((np.arange(28 * 28) % 255).astype(np.uint8).reshape(28, 28)).save(path)
    return path


def test_attention_cells_cover_their_pixels_with_a_colour_bar_and_no_warning(tiny_checkpoint, digit):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "non-writable NumPy array" warning
        pixels, maps, arch = plots.head_attention(tiny_checkpoint, digit)
        fig = plots.attention_figure(pixels, maps)
        fig.canvas.draw()
    assert arch == "vit_tiny" and pixels.shape == (32, 32) and tuple(maps.shape) == (3, 8, 8)  # patch 4
    np.testing.assert_allclose(maps.sum(dim=(1, 2)).numpy(), 1.0, atol=0.05)  # CLS row minus its own share
    heads = [ax for ax in fig.axes if ax.get_title().startswith("head")]
    assert len(heads) == 3
    for ax in heads:
        image, heat = ax.get_images()
        # both span (0, 32, 32, 0): pixel i is [i, i+1), token cell j is [4j, 4j+4) -- no half-pixel shift
        assert list(image.get_extent()) == list(heat.get_extent()) == [0, 32, 32, 0]
        assert heat.get_interpolation() == "nearest"
        assert heat.get_array().shape == (8, 8)
        assert heat.get_clim() == (float(maps.min()), float(maps.max()))  # one scale for every head
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and bars[0].get_ylabel() == "CLS attention"


def test_attention_map_cli_writes_a_png(tiny_checkpoint, digit, tmp_path):
    from fastvit.cli import main

    out = tmp_path / "map.png"
    with pytest.raises(SystemExit) as exit_:
        main(["attention-map", "--ckpt", str(tiny_checkpoint), "--image", str(digit), "--out", str(out)])
    assert exit_.value.code == 0 and out.read_bytes()[:8] == PNG
