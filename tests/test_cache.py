"""The photo cache: used from the second epoch on, invalidated by a file's content, and invisible
to the model (the same seed gives the same batches with and without it, and prediction sees the
same pixels as validation). Every cache here lives in ``tmp_path``, never the user's own."""

from __future__ import annotations

import os
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import flowerfast
from flowerfast.data.imagecache import CacheUnavailableWarning, ImageCache, decode, default_cache_dir, load_size
from flowerfast.data.loaders import load_data
from tests.conftest import make_folder, sample_files

CPU = torch.device("cpu")


def pixels(img) -> np.ndarray:
    return np.asarray(img, dtype=np.uint8)


def big_photo(path, size=(600, 400), source=None, fmt=None):
    """A photo bigger than the samples: a sample upscaled with PIL (a JPEG unless ``fmt``)."""
    with Image.open(source or sample_files("rose")[0]) as im:
        im.convert("RGB").resize(size, Image.BICUBIC).save(path, format=fmt, quality=95)
    return path


@pytest.fixture()
def count_opens(monkeypatch):
    """Counts every ``PIL.Image.open`` (every decode) from now on."""
    calls = []
    real_open = Image.open

    def counting_open(fp, *args, **kwargs):
        calls.append(fp)
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    return calls


def first_batches(root, cache_dir, seed=3):
    """The first training and validation batches of a fresh load, the random state reset before each."""
    from fastai.torch_core import set_seed

    data = load_data(root, size=32, bs=4, seed=seed, device=CPU, cache_dir=cache_dir)
    set_seed(seed)
    xb, yb = next(iter(data.dls.train))
    set_seed(seed)
    vb, vy = next(iter(data.dls.valid))
    return data, [t.as_subclass(torch.Tensor) for t in (xb, yb, vb, vy)]


def test_second_epoch_reads_the_cache_and_still_augments(tmp_path, count_opens):
    root = make_folder(tmp_path / "d", {"rose": 8, "tulip": 8})
    data = load_data(root, size=32, bs=4, seed=0, device=CPU, cache_dir=tmp_path / "cache")
    cache = data.cache
    assert cache is not None and cache.root == tmp_path / "cache" / "64"
    dl = data.dls.train.new(shuffle=False)  # the training transforms, the same order every pass

    def one_pass():
        del count_opens[:]
        hits, misses = cache.hits, cache.misses
        batches = [(xb.as_subclass(torch.Tensor).clone(), yb.as_subclass(torch.Tensor).clone()) for xb, yb in dl]
        return batches, cache.hits - hits, cache.misses - misses, len(count_opens)

    data.loader.memory.clear()  # what setup loaded
    first, hits1, misses1, opens1 = one_pass()
    assert misses1 > 0 and opens1 == misses1  # the first epoch decodes (what setup did not already)
    assert hits1 + misses1 == len(dl.dataset) == data.n_train  # every training photo, once
    assert len(list((tmp_path / "cache" / "64").rglob("*.npy"))) >= misses1

    second, hits2, misses2, opens2 = one_pass()
    assert (hits2, misses2, opens2) == (0, 0, 0)  # this process kept the photos: not even the cache is read
    assert len(data.loader.memory.photos) >= data.n_train
    data.loader.memory.budget = 0  # a process without that memory (a worker, the next run)
    data.loader.memory.clear()
    third, hits3, misses3, opens3 = one_pass()
    assert misses3 == 0 and opens3 == 0  # no JPEG decoding at all
    assert hits3 == data.n_train and not data.loader.memory.photos
    assert len(first) == len(second) == len(third) >= 2
    for (x1, y1), (x2, y2), (x3, y3) in zip(first, second, third):
        assert torch.equal(y1, y2) and torch.equal(y1, y3)  # the same photos...
        assert not torch.equal(x1, x2) and not torch.equal(x2, x3)  # ...cropped, flipped and erased anew


def test_photos_kept_in_memory_are_read_again_when_rewritten_skipped_when_gone_and_bounded(tmp_path):
    from fastai.data.load import SkipItemException

    from flowerfast.data.loaders import ImageLoader

    rose, tulip = sample_files("rose")[0], sample_files("tulip")[0]
    photo, other = tmp_path / "photo.jpg", tmp_path / "other.jpg"
    shutil.copy(rose, photo)
    shutil.copy(tulip, other)
    loader = ImageLoader(32, tmp_path / "cache")
    first = pixels(loader(photo))
    loader(photo).paste((0, 0, 0), (0, 0, 16, 16))  # what is done to a copy never reaches the kept photo
    assert np.array_equal(pixels(loader(photo)), first) and loader.cache.hits + loader.cache.misses == 1
    os.replace(other, photo)  # replaced by another photo: read again
    assert np.array_equal(pixels(loader(photo)), pixels(decode(tulip, 64)))
    assert loader.cache.misses == 2 and loader.memory.used == 64 * 64 * 3
    photo.unlink()
    with pytest.warns(UserWarning, match="could not be read after the scan"):
        with pytest.raises(SkipItemException):
            loader(photo)
    small = ImageLoader(32, tmp_path / "cache", memory_bytes=64 * 64 * 3)  # room for one photo of 64 x 64
    for f in sample_files("daisy")[:3]:
        small(f)
    assert len(small.memory.photos) == 1 and small.memory.used == 64 * 64 * 3
    assert not ImageLoader(32, None).memory.budget  # --no-cache: every photo decoded every time


def test_a_changed_file_is_a_miss_with_its_new_pixels(tmp_path):
    rose, tulip = sample_files("rose")[0], sample_files("tulip")[0]
    photo = tmp_path / "photo.jpg"
    shutil.copy(rose, photo)
    cache = ImageCache(tmp_path / "cache", 64)

    first = pixels(cache.load(photo))
    assert (cache.hits, cache.misses) == (0, 1)
    assert np.array_equal(pixels(cache.load(photo)), first) and cache.hits == 1
    moved = tmp_path / "elsewhere" / "renamed.jpg"  # keyed by content, not by path
    moved.parent.mkdir()
    shutil.copy(photo, moved)
    assert np.array_equal(pixels(cache.load(moved)), first) and cache.hits == 2

    photo.write_bytes(tulip.read_bytes())
    changed = pixels(cache.load(photo))
    assert cache.misses == 2
    assert np.array_equal(changed, pixels(decode(tulip, 64)))
    assert not np.array_equal(changed, first)
    assert len(list(cache.root.rglob("*.npy"))) == 2

    entry = cache.entry(cache.key(photo.read_bytes()))  # a broken entry is a miss, written again
    entry.write_bytes(entry.read_bytes()[:100])
    assert np.array_equal(pixels(cache.load(photo)), changed) and cache.misses == 3
    assert np.array_equal(pixels(cache.load(photo)), changed) and cache.misses == 3
    assert not [p for p in entry.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_the_cache_never_changes_what_the_model_sees(tmp_path):
    root = make_folder(tmp_path / "d", {"rose": 6, "tulip": 6})
    big_photo(root / "rose" / "big.jpg")  # reduced by resizing, the samples by JPEG draft
    big_photo(root / "tulip" / "big.png", size=(400, 700), source=sample_files("tulip")[0])
    _, plain = first_batches(root, None)
    cold_data, cold = first_batches(root, tmp_path / "cache")
    warm_data, warm = first_batches(root, tmp_path / "cache")
    assert cold_data.cache.misses > 0
    assert warm_data.cache.misses == 0 and warm_data.cache.hits > 0
    for a, b, c in zip(plain, cold, warm):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_decode_reduces_big_photos_and_never_upscales(tmp_path):
    small = sample_files("daisy")[0]
    with Image.open(small) as im:
        as_is = pixels(im.convert("RGB"))
    assert as_is.shape == (128, 128, 3)
    assert np.array_equal(pixels(decode(small, load_size(128))), as_is)  # 128 px at size 128: untouched
    assert np.array_equal(pixels(decode(small, 128)), as_is)
    assert decode(small, load_size(32)).size == (64, 64)

    wide = big_photo(tmp_path / "wide.jpg")
    tall = big_photo(tmp_path / "tall.jpg", size=(400, 600))
    png = big_photo(tmp_path / "wide.png")
    assert load_size(128) == 256
    assert decode(wide, load_size(128)).size == (384, 256)
    assert decode(tall, load_size(128)).size == (256, 384)
    assert decode(png, load_size(128)).size == (384, 256)
    assert decode(wide, load_size(64)).size == (192, 128)  # JPEG draft at 1/2, then resized
    assert decode(wide, 1000).size == (600, 400)
    img = decode(wide, load_size(64))
    assert img.mode == "RGB" and type(img) is Image.Image


def test_prediction_sees_validation_pixels_of_big_photos(tmp_path):
    """Photos larger than ``2 * size`` are reduced the same way by training's validation and by
    ``preprocess``, so predict's input equals fastai's validation batch."""
    from flowerfast.data.folders import scan_image_folder
    from flowerfast.data.loaders import build_dataloaders
    from flowerfast.data.split import split_rows
    from flowerfast.infer.preprocessing import normalise, preprocess
    from flowerfast.models.archs import IMAGENET_MEAN, IMAGENET_STD

    root = tmp_path / "d"
    for cls in ("rose", "tulip"):
        (root / cls).mkdir(parents=True)
        for i, src in enumerate(sample_files(cls, 3)):
            big_photo(root / cls / f"{i}.jpg", size=(600 - 50 * i, 400 + 100 * i), source=src)
    folder = scan_image_folder(root)
    rows = split_rows(folder, valid_pct=0.5, seed=0)
    dls = build_dataloaders(rows, folder.classes, size=64, bs=2, device=CPU, cache_dir=tmp_path / "cache")
    valid_files = [item[0] for item in dls.valid.items]
    for start, (xb, _) in zip(range(0, len(valid_files), 2), dls.valid):
        ours = normalise(
            torch.stack([preprocess(p, 64) for p in valid_files[start : start + 2]]), IMAGENET_MEAN, IMAGENET_STD
        )
        assert torch.allclose(xb.as_subclass(torch.Tensor), ours, atol=1e-5)


def _file_in_the_way(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should be")
    return blocker / "cache"


def _read_only_folder(tmp_path):
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o500)
    if os.access(folder, os.W_OK):
        folder.chmod(0o700)
        pytest.skip("running as root: a read-only folder is writable anyway")
    return folder


@pytest.mark.parametrize("blocked", [_file_in_the_way, _read_only_folder], ids=["file-in-the-way", "read-only"])
def test_an_unwritable_cache_folder_warns_and_loads_anyway(tmp_path, blocked):
    cache_dir = blocked(tmp_path)
    root = make_folder(tmp_path / "d", {"rose": 4, "tulip": 4})
    try:
        with pytest.warns(CacheUnavailableWarning, match="cannot be written"):
            data = load_data(root, size=32, bs=4, device=CPU, cache_dir=cache_dir)
        assert not data.cache.writable
        with warnings.catch_warnings():
            warnings.simplefilter("error", CacheUnavailableWarning)  # once, not per photo
            xb, _ = next(iter(data.dls.train))
        assert tuple(xb.shape) == (4, 3, 32, 32)
    finally:
        if cache_dir.is_dir():
            cache_dir.chmod(0o700)  # so tmp_path can be removed


def test_training_fills_the_cache_and_survives_an_unwritable_one(tmp_path):
    root = make_folder(tmp_path / "d", {"rose": 5, "tulip": 5})
    options = dict(
        data=root,
        arch="resnet18",
        pretrained=False,
        size=32,
        epochs=1,
        bs=4,
        device="cpu",
        workers=0,
        clean_train_sample=0,
    )
    flowerfast.train(**options, out=tmp_path / "run", cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache" / "64").rglob("*.npy"))) == 10

    with pytest.warns(CacheUnavailableWarning):
        result = flowerfast.train(**options, out=tmp_path / "run2", cache_dir=_file_in_the_way(tmp_path))
    assert result.summary is not None


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FLOWERFAST_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("FLOWERFAST_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "flowerfast" / "images"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "flowerfast" / "images"


def test_loaders_pickle_and_work_in_worker_processes(tmp_path):
    import pickle

    root = make_folder(tmp_path / "d", {"rose": 4, "tulip": 4})
    data = load_data(root, size=32, bs=4, device=CPU, cache_dir=tmp_path / "cache", workers=2)
    copy = pickle.loads(pickle.dumps(data.dls.train_ds))  # as a spawned worker receives it
    img, _ = copy[0]
    assert img.size == (64, 64)
    xb, yb = next(iter(data.dls.train))
    assert tuple(xb.shape) == (4, 3, 32, 32)


def test_a_failing_write_warns_once_and_decodes_on(tmp_path, monkeypatch):
    """A disk that fills up mid-run: that photo's pixels are still returned, and from then on photos
    are decoded without trying to write."""
    import errno

    import flowerfast.data.imagecache as imagecache

    def full_disk(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    cache = ImageCache(tmp_path / "cache", 64)
    assert cache.writable
    monkeypatch.setattr(imagecache, "atomic_write_bytes", full_disk)
    rose, tulip = sample_files("rose")[:2]
    with pytest.warns(CacheUnavailableWarning, match="No space left"):
        img = cache.load(rose)
    assert np.array_equal(pixels(img), pixels(decode(rose, 64))) and not cache.writable
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheUnavailableWarning)
        assert np.array_equal(pixels(cache.load(tulip)), pixels(decode(tulip, 64)))
    assert cache.misses == 2 and not list(cache.root.rglob("*.npy"))
