"""The pictures of a run, read back: each exists, has the expected size and shows something."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from flowerfast.runs.folder import RunFolder
from tests.conftest import invoke


def picture(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def assert_not_blank(pixels: np.ndarray) -> None:
    """More than a background and a few lines: many distinct colours, not one flat tone."""
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 50 and pixels.std() > 10


@pytest.mark.parametrize(
    "name, size", [("curves.png", (1100, 420)), ("confusion.png", (950, 515)), ("batch.png", (1280, 400))]
)
def test_a_run_draws_its_pictures(tiny_run, name, size):
    pixels = picture(tiny_run / name)
    assert pixels.shape[1::-1] == size
    assert_not_blank(pixels)


def test_mistakes_show_the_best_models_most_confident_wrong_answers(tiny_run):
    wrong = [p for p in RunFolder(tiny_run).read_valid_predictions() if not p.correct]
    assert wrong  # a 2-epoch model from random weights is often wrong
    from flowerfast.core.plots import grid_columns

    pixels = picture(tiny_run / "mistakes.png")
    assert pixels.shape[1] == 300 * grid_columns(min(12, len(wrong)), 4)  # 3 inches a column, 100 dpi
    assert_not_blank(pixels)


def test_show_batch_draws_without_training_and_leaves_the_random_streams_alone(tmp_path, runner):
    import random

    import torch

    result = invoke(runner, ["show-batch", "--size", "64", "-n", "12", "--out", tmp_path / "b.png"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"batch: {tmp_path / 'b.png'}"
    pixels = picture(tmp_path / "b.png")
    assert pixels.shape[1::-1] == (960, 400)  # 6 columns by 2 rows: no empty cell
    assert_not_blank(pixels)

    from flowerfast.data.loaders import load_data
    from flowerfast.training.pictures import draw_batch

    data = load_data(None, size=32, bs=8, device=torch.device("cpu"))
    before = (random.getstate(), torch.get_rng_state(), data.dls.train.rng.getstate())
    draw_batch(tmp_path / "c.png", data, 32, 8)
    after = (random.getstate(), torch.get_rng_state(), data.dls.train.rng.getstate())
    assert before[0] == after[0] and torch.equal(before[1], after[1]) and before[2] == after[2]
    bad = invoke(runner, ["show-batch", "--out", tmp_path / "b.jpg"])
    assert bad.exit_code == 1 and bad.stderr.strip() == f"error: --out must name a .png file (got {tmp_path / 'b.jpg'})"
