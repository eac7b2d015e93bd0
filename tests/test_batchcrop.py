"""Training batches cut from photos kept as tensors (``--batch-crop``): the crops are drawn as
fastai's ``RandomResizedCrop`` draws them, the resampling is fastai's flips and warps exactly,
each crop stays with its own label, photos are read once per run, and a run trains, resizes
progressively and resumes with them."""

from __future__ import annotations

import json
import math
import random
import warnings
from functools import partial

import pytest
import torch
from PIL import Image

import flowerfast
from flowerfast.data.batchcrop import (
    CROP_RATIO,
    BatchCropDL,
    canvas_side,
    crop_batch,
    crop_boxes,
    to_canvas,
)
from flowerfast.data.loaders import UnreadablePhotoWarning, load_data
from flowerfast.runs.folder import RunFolder
from tests.conftest import invoke
from tests.test_recipe import TrainingSizes
from tests.test_resume import StopAfterEpochs

CPU = torch.device("cpu")


@pytest.mark.parametrize(("width", "height"), [(400, 800), (600, 600), (900, 600), (1200, 400)])
def test_crops_are_drawn_as_fastais_random_resized_crop(width, height):
    """Pinned to fastai: the same distribution of areas, ratios and fallbacks to the centre as
    ``RandomResizedCrop`` draws photo by photo (3,000 draws each; means within 0.01)."""
    from fastai.vision.augment import RandomResizedCrop
    from fastai.vision.core import PILImage

    aspect, n = width / height, 3000
    torch.manual_seed(0)
    fw, fh, cx, cy = crop_boxes(torch.full((n,), aspect), min_scale=0.35).unbind(1)
    assert bool((fw <= 1).all() and (fh <= 1).all())
    assert bool(((cx.abs() <= 1 - fw + 1e-6) & (cy.abs() <= 1 - fh + 1e-6)).all())  # inside the photo
    ours = torch.stack([fw * fh, fw * aspect / fh, ((cx == 0) & (cy == 0)).float()])  # area, ratio, centred
    fastai, photo = RandomResizedCrop(64, min_scale=0.35), PILImage.create(Image.new("RGB", (width, height)))
    random.seed(0)
    draws = []
    for _ in range(n):
        fastai.before_call(photo, split_idx=0)
        (w, h), (left, top) = fastai.cp_size, fastai.tl
        centred = (left, top) == ((width - w) // 2, (height - h) // 2) and (w, h) != (width, height)
        draws.append([w * h / (width * height), w / h, float(centred or (w, h) == (width, height))])
    theirs = torch.tensor(draws).T
    assert float(ours[1].min()) >= CROP_RATIO[0] - 1e-5 and float(ours[1].max()) <= CROP_RATIO[1] + 1e-5
    assert ours[:2].mean(dim=1).tolist() == pytest.approx(theirs[:2].mean(dim=1).tolist(), abs=0.01)
    assert ours[:2].std(dim=1).tolist() == pytest.approx(theirs[:2].std(dim=1).tolist(), abs=0.01)
    assert float(ours[2].mean()) == pytest.approx(float(theirs[2].mean()), abs=0.02)


def test_a_photo_too_wide_for_any_crop_gets_the_largest_centred_one():
    fw, fh, cx, cy = crop_boxes(torch.full((50,), 3.0), min_scale=0.75).unbind(1)  # 3:1, no crop of 75% fits
    assert fw.tolist() == pytest.approx([CROP_RATIO[1] / 3] * 50) and fh.tolist() == [1.0] * 50
    assert cx.tolist() == [0.0] * 50 and cy.tolist() == [0.0] * 50


def test_a_box_reads_its_own_part_of_the_canvas():
    """Four quarters of four colours: a box inside a quarter gives that colour and nothing else."""
    canvas = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    colours = {(-0.5, -0.5): (255, 0, 0), (0.5, -0.5): (0, 255, 0), (-0.5, 0.5): (0, 0, 255), (0.5, 0.5): (9, 9, 9)}
    for (x, y), colour in colours.items():
        rows, cols = slice(0, 32) if y < 0 else slice(32, 64), slice(0, 32) if x < 0 else slice(32, 64)
        canvas[0, :, rows, cols] = torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1)
    for (x, y), colour in colours.items():
        crop = crop_batch(canvas, torch.tensor([[0.4, 0.4, x, y]]), size=16)
        assert crop.shape == (1, 3, 16, 16)
        assert float((crop[0] - torch.tensor(colour).view(3, 1, 1)).abs().max()) < 1e-3


def test_the_resampling_is_fastais_flips_rotations_zooms_and_warps():
    """Pinned to fastai: with the whole photo as the box, the one resampling gives what fastai's
    own merged transform of ``aug_transforms`` gives for the same draws."""
    from fastai.torch_core import TensorImage
    from fastai.vision.augment import aug_transforms
    from fasttransform import compose_tfms

    geometry = aug_transforms()[0]
    torch.manual_seed(1)
    canvases = torch.randint(0, 256, (8, 3, 40, 40), dtype=torch.uint8)
    geometry.before_call(torch.zeros(1).expand(8, 3, 24, 24), 0)
    ours = crop_batch(canvases, torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 8), 24, geometry)
    warp = partial(compose_tfms, tfms=geometry.coord_fs)
    theirs = TensorImage(canvases.float()).affine_coord(
        geometry.mat, warp, sz=24, mode="bilinear", pad_mode=geometry.pad_mode, align_corners=geometry.align_corners
    )
    theirs = theirs.as_subclass(torch.Tensor)
    assert theirs.shape == ours.shape == (8, 3, 24, 24)
    assert float((ours - theirs).abs().max()) < 0.05  # of 255
    assert float((ours - canvases.float()[..., 8:32, 8:32]).abs().mean()) > 1  # they did move the pixels


def test_the_canvas_is_the_photo_squashed_and_big_enough_for_the_smallest_crop():
    photo = Image.new("RGB", (120, 60), (10, 200, 30))
    canvas, aspect = to_canvas(photo, 50)
    assert canvas.dtype == torch.uint8 and canvas.shape == (3, 50, 50) and aspect == 2.0
    assert canvas[:, 25, 25].tolist() == [10, 200, 30]
    assert canvas_side(64, 0.75) == math.ceil(64 / math.sqrt(0.75 * 3 / 4)) == 86
    assert canvas_side(64, 0.35) == 125 and canvas_side(64, 0.08) == 128  # never beyond the loader's 2 * size


def two_colour_folder(root, n=10):
    for name, colour in (("blue", (20, 40, 230)), ("red", (230, 30, 20))):
        (root / name).mkdir(parents=True)
        for i in range(n):
            shade = tuple(max(0, c - 7 * i) for c in colour)
            Image.new("RGB", (48 + 4 * i, 40), shade).save(root / name / f"{name}{i}.png")
    return root


def test_every_crop_goes_with_its_own_label_and_photos_are_read_once(tmp_path):
    root = two_colour_folder(tmp_path / "photos")
    data = load_data(root, size=32, bs=4, valid_pct=0.2, device=CPU, cache_dir=tmp_path / "cache", batch_crop=True)
    train = data.dls.train
    assert isinstance(train, BatchCropDL) and train.drop_last and data.n_train == 16
    red = data.classes.index("red")
    for _ in range(2):
        seen = 0
        for xb, yb in train:
            assert xb.shape == (4, 3, 32, 32)
            redder = (xb[:, 0] - xb[:, 2]).mean(dim=(1, 2)) > 0  # normalised: red above blue in red photos
            assert redder.tolist() == (yb == red).tolist()
            seen += len(yb)
        assert seen == 16
        assert train.store.reads == 16  # the second epoch reads no photo again
    vb, _ = data.dls.valid.one_batch()
    assert vb.shape[-1] == 32  # validation as before: the loader's own photos, resized and centred
    train.set_train_size(24)
    assert train.one_batch()[0].shape == (4, 3, 24, 24)


def test_without_the_cache_photos_are_read_every_epoch_and_one_deleted_drops_out(tmp_path):
    root = two_colour_folder(tmp_path / "photos")
    data = load_data(root, size=32, bs=4, valid_pct=0.2, device=CPU, cache_dir=None, batch_crop=True)
    train = data.dls.train
    assert sum(len(yb) for _, yb in train) == 16 and train.store.reads == 16
    gone = next(r.file for r in data.rows if not r.is_valid)
    gone.unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert sum(len(yb) for _, yb in train) == 15
    assert [str(w.message) for w in caught if w.category is UnreadablePhotoWarning] == [
        f"{gone} could not be read after the scan (FileNotFoundError: [Errno 2] No such file or directory: '{gone}'): "
        "skipped"
    ]
    assert train.store.reads == 31


def test_a_batch_cropped_run_resizes_progressively_and_resumes(tmp_path):
    out, seen = tmp_path / "run", {}
    options = dict(arch="resnet10t_050", pretrained=False, size=48, progressive=[32, 48], epochs=4, bs=16)
    options.update(batch_crop=True, device="cpu", precision="fp32", workers=0, clean_train_sample=0)
    with pytest.raises(KeyboardInterrupt):
        flowerfast.train(out=out, callbacks=[StopAfterEpochs(2), TrainingSizes(seen)], **options)
    flowerfast.resume(out, callbacks=[TrainingSizes(seen)])
    history = RunFolder(out).read_history()
    assert [r.epoch for r in history] == [1, 2, 3, 4]
    assert [seen[("train", e)] for e in range(4)] == [{32}, {32}, {48}, {48}]
    assert all(sizes == {48} for key, sizes in seen.items() if key[0] == "valid")
    assert json.loads((out / "config.json").read_text())["options"]["batch_crop"] is True
    assert all(0 <= r.valid_accuracy <= 1 and r.train_loss > 0 for r in history)


def test_batch_crops_need_the_standard_augmentation(runner, tmp_path):
    result = invoke(runner, ["train", "--batch-crop", "--augment", "trivial", "--out", str(tmp_path / "run")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert (
        "--batch-crop works with the standard augmentation only: --augment trivial transforms each photo on its own"
        in (result.output)
    )
    assert not (tmp_path / "run").exists()
