"""Real photo folders are messy: links (loops, links to the parent, links out of the data folder),
FIFOs, EXIF-rotated, 16-bit, transparent, CMYK and palette images, decompression bombs. Each is
built here as a real file and scanned or decoded as training and prediction do."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from PIL import Image, ImageOps

from flowerfast.data.folders import scan_image_folder
from flowerfast.data.imagecache import ImageCache, decode
from flowerfast.data.imagefiles import MAX_PIXELS, MAX_PIXELS_ENV, check_image, image_files_under, max_pixels
from tests.conftest import make_folder, sample_files


def pixels(img) -> np.ndarray:
    return np.asarray(img, dtype=np.uint8)


def scan(root, timeout=30):
    """``scan_image_folder`` in a thread, failing (not hanging) if it does not finish in time."""
    result = {}

    def work():
        try:
            result["folder"] = scan_image_folder(root)
        except BaseException as exc:  # re-raised in the test's thread
            result["error"] = exc

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"scanning {root} did not finish in {timeout}s"
    if "error" in result:
        raise result["error"]
    return result["folder"]


# Links and special files


def test_a_link_to_its_own_folder_does_not_multiply_photos(tmp_path):
    root = make_folder(tmp_path / "photos", {"daisy": 3, "rose": 3})
    os.symlink(".", root / "daisy" / "self")
    (root / "daisy" / "sub").mkdir()
    os.symlink("..", root / "daisy" / "sub" / "back")
    folder = scan(root)
    assert folder.labels.count("daisy") == 3 and folder.labels.count("rose") == 3
    assert len({os.path.realpath(f) for f in folder.files}) == len(folder.files) == 6
    assert not any("self" in f.parts or "back" in f.parts for f in folder.files)
    assert not folder.skipped  # a loop is not a problem to report: every photo is taken once


def test_a_link_to_the_parent_does_not_pull_other_classes_in(tmp_path):
    root = make_folder(tmp_path / "photos", {"daisy": 3, "rose": 4})
    os.symlink("..", root / "daisy" / "up")
    folder = scan(root)
    assert folder.labels.count("daisy") == 3 and folder.labels.count("rose") == 4
    assert all(f.parent.name == label for f, label in zip(folder.files, folder.labels))
    [s] = folder.skipped
    assert s.path == root / "daisy" / "up" and "out of its class folder" in s.reason


def test_a_folder_link_out_of_the_data_folder_is_skipped_and_reported(tmp_path):
    """A folder linked into a class folder from outside is not taken in; a link to one photo is
    (folders of links to photos are a common way to build a subset)."""
    outside = make_folder(tmp_path / "elsewhere", {"tulip": 2})
    root = make_folder(tmp_path / "photos", {"daisy": 3, "rose": 3})
    os.symlink(outside / "tulip", root / "daisy" / "more")
    os.symlink(outside / "tulip" / sample_files("tulip")[0].name, root / "rose" / "extra.jpg")
    folder = scan(root)
    assert len(folder.files) == 7 and root / "rose" / "extra.jpg" in folder.files
    assert [s.path for s in folder.skipped] == [root / "daisy" / "more"]
    assert "out of the data folder" in folder.skipped[0].reason


def test_links_inside_a_class_folder_take_each_file_once_by_real_path(tmp_path):
    root = make_folder(tmp_path / "photos", {"daisy": 3, "rose": 3})
    real = root / "daisy" / "real"
    real.mkdir()
    first = sample_files("daisy")[0].name
    os.rename(root / "daisy" / first, real / first)
    os.symlink("real", root / "daisy" / "alias")  # the same folder twice
    os.symlink(f"real/{first}", root / "daisy" / "a_link.jpg")  # the same file again, sorted first
    folder = scan(root)
    daisies = [f for f, label in zip(folder.files, folder.labels) if label == "daisy"]
    assert len(daisies) == 3 and real / first in daisies  # the real path wins over both links
    assert not folder.skipped
    assert image_files_under(root / "daisy") == sorted(daisies)


def test_a_class_folder_may_be_a_link_to_a_folder_elsewhere(tmp_path):
    outside = make_folder(tmp_path / "elsewhere", {"tulip": 2, "rose": 2})
    linked = tmp_path / "linked"
    linked.mkdir()
    for cls in ("rose", "tulip"):
        os.symlink(outside / cls, linked / cls)
    assert scan(linked).classes == ["rose", "tulip"]  # every class a link: still found
    root = make_folder(tmp_path / "photos", {"daisy": 3})
    os.symlink(outside / "tulip", root / "tulip")
    os.symlink(root / "daisy", root / "daisy2")  # a second name for a class inside: refused
    folder = scan(root)
    assert folder.classes == ["daisy", "tulip"] and len(folder.files) == 5
    [s] = folder.skipped
    assert s.path == root / "daisy2"


def test_a_fifo_is_skipped_without_opening_it(tmp_path):
    root = make_folder(tmp_path / "photos", {"daisy": 3, "rose": 3})
    os.mkfifo(root / "daisy" / "pipe.jpg")
    os.mkfifo(root / "rose" / "pipe")  # not named like an image: ignored like any other file
    folder = scan(root, timeout=20)
    assert len(folder.files) == 6
    [s] = folder.skipped
    assert s.path == root / "daisy" / "pipe.jpg" and "FIFO" in s.reason
    assert "FIFO" in check_image(root / "daisy" / "pipe.jpg")
    with pytest.raises(OSError, match="FIFO"):
        decode(root / "daisy" / "pipe.jpg", 64)


# Decoding: the same in training and prediction


def test_exif_orientation_is_applied(tmp_path):
    src = Image.open(sample_files("rose")[0]).convert("RGB").resize((120, 80))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    src.save(path, exif=exif, quality=95)
    with Image.open(path) as im:
        assert im.size == (120, 80)
        upright = ImageOps.exif_transpose(im).convert("RGB")
    img = decode(path, 1000)
    assert img.size == (80, 120) == upright.size
    assert np.array_equal(pixels(img), pixels(upright))
    assert decode(path, 40).size == (40, 60)  # reduced, then upright
    assert check_image(path) is None


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((40, 50), 32768, dtype=np.uint16)).save(path)
    with Image.open(path) as im:
        assert im.mode in ("I;16", "I")
    a = pixels(decode(path, 1000))
    assert a.shape == (40, 50, 3) and np.all(np.abs(a.astype(int) - 128) <= 1)
    ramp = tmp_path / "ramp16.png"
    Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.uint16)).save(ramp)
    assert pixels(decode(ramp, 1000))[0, :, 0].tolist() == [0, 100, 255]
    assert check_image(path) is None


@pytest.mark.parametrize("mode, value, expected", [("I", 32768, 128), ("F", 0.5, 128), ("I;16B", 65535, 255)])
def test_other_high_bit_depth_modes_become_eight_bits(mode, value, expected):
    import io

    im = Image.new(mode, (8, 6), value)
    im.putpixel((0, 0), 0)
    buf = io.BytesIO()
    im.save(buf, format="TIFF")
    buf.seek(0)
    a = pixels(decode(buf, 1000))
    assert a.shape == (6, 8, 3)
    assert abs(int(a[5, 7, 0]) - expected) <= 1 and a[0, 0, 0] == 0


def test_transparency_is_white(tmp_path):
    rgba = np.zeros((20, 30, 4), dtype=np.uint8)
    rgba[:, :15] = (200, 30, 30, 255)  # opaque red on the left, fully transparent black on the right
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    a = pixels(decode(path, 1000))
    assert (a[:, :15] == (200, 30, 30)).all() and (a[:, 15:] == 255).all()

    la = tmp_path / "la.png"
    Image.fromarray(np.dstack([np.full((4, 4), 50, np.uint8), np.zeros((4, 4), np.uint8)]), "LA").save(la)
    assert (pixels(decode(la, 1000)) == 255).all()

    pal = Image.new("P", (6, 4), 0)
    pal.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    pal.paste(1, (0, 0, 3, 4))
    ptrans = tmp_path / "ptrans.png"
    pal.save(ptrans, transparency=0)
    a = pixels(decode(ptrans, 1000))
    assert (a[:, :3] == (10, 200, 10)).all() and (a[:, 3:] == 255).all()
    assert all(check_image(p) is None for p in (path, la, ptrans))


def test_cmyk_jpeg_and_palette_png_decode_to_rgb(tmp_path):
    src = Image.open(sample_files("tulip")[0]).convert("RGB")
    cmyk = tmp_path / "cmyk.jpg"
    src.convert("CMYK").save(cmyk, quality=95)
    with Image.open(cmyk) as im:
        assert im.mode == "CMYK"
    img = decode(cmyk, 1000)
    assert img.mode == "RGB" and img.size == src.size
    assert np.abs(pixels(img).astype(int) - pixels(src).astype(int)).mean() < 12

    pal = tmp_path / "pal.png"
    src.convert("P", palette=Image.Palette.ADAPTIVE).save(pal)
    img = decode(pal, 1000)
    assert img.mode == "RGB" and np.array_equal(pixels(img), pixels(Image.open(pal).convert("RGB")))
    assert check_image(cmyk) is None and check_image(pal) is None


def test_the_cache_serves_what_decode_gives_for_unusual_images(tmp_path):
    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((10, 12), 32768, dtype=np.uint16)).save(path)
    cache = ImageCache(tmp_path / "cache", 64)
    first, again = cache.load(path), cache.load(path)
    assert cache.misses == 1 and cache.hits == 1
    assert np.array_equal(pixels(first), pixels(decode(path, 64))) and np.array_equal(pixels(again), pixels(first))


# Decompression bombs


def bomb(path, side=10_000):
    Image.new("L", (side, side), 0).save(path, optimize=True)  # 100 megapixels in a few KB
    return path


def test_an_image_over_the_pixel_limit_is_skipped_never_decoded(tmp_path, monkeypatch):
    assert MAX_PIXELS == 50_000_000 and max_pixels() == MAX_PIXELS
    root = make_folder(tmp_path / "photos", {"daisy": 3, "rose": 3})
    big = bomb(root / "daisy" / "huge.png", side=3000)
    assert big.stat().st_size < 100_000
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000000")
    assert max_pixels() == 1_000_000
    with _no_warnings():
        folder = scan(root)
    assert len(folder.files) == 6
    [s] = folder.skipped
    assert s.path == big and "9.0 megapixels" in s.reason and "limit of 1 megapixels" in s.reason
    assert MAX_PIXELS_ENV in s.reason
    with pytest.raises(ValueError, match="over the limit"):
        decode(big, 64)
    monkeypatch.setenv(MAX_PIXELS_ENV, "10000000")
    assert check_image(big) is None


def test_a_bomb_past_pillows_own_limit_gives_our_reason_and_no_warning(tmp_path):
    big = bomb(tmp_path / "bomb.png")  # 100 megapixels: over Pillow's warning threshold too
    with _no_warnings():
        reason = check_image(big)
    assert reason.startswith("ImageTooLargeError") and "100.0 megapixels" in reason


def test_a_bad_limit_is_refused_by_message(monkeypatch, tmp_path):
    from flowerfast.core.errors import FlowerfastError

    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(FlowerfastError, match=MAX_PIXELS_ENV):
        check_image(sample_files("rose")[0])


class _no_warnings:
    """Fails if any warning is raised inside the block."""

    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings(record=True)
        self.caught = self._cm.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)
        assert not [str(w.message) for w in self.caught]


def test_a_photo_that_vanishes_during_training_is_skipped_and_reported(tmp_path):
    """One training and one validation photo deleted after the first epoch: the run goes on
    without them, warns once for each, and scores the validation photos that are left."""
    from fastai.callback.core import Callback

    import flowerfast
    from flowerfast.data.loaders import UnreadablePhotoWarning
    from flowerfast.runs.folder import RunFolder

    data = make_folder(tmp_path / "photos", {"daisy": 10, "rose": 10, "tulip": 10})
    run = RunFolder(tmp_path / "run")
    gone = []

    class DeleteAfterFirstEpoch(Callback):
        order = 100

        def after_epoch(self):
            if self.epoch == 0:
                rows = run.read_split(data)
                for is_valid in (False, True):
                    victim = next(r.file for r in rows if r.is_valid == is_valid)
                    victim.unlink()
                    gone.append(victim)

    with pytest.warns(UnreadablePhotoWarning) as caught:
        result = flowerfast.train(
            data=data,
            arch="resnet18",
            pretrained=False,
            size=32,
            epochs=3,
            bs=8,
            device="cpu",
            workers=0,
            cache=False,
            out=run.path,
            callbacks=[DeleteAfterFirstEpoch()],
        )
    messages = sorted({str(w.message) for w in caught if issubclass(w.category, UnreadablePhotoWarning)})
    assert messages == sorted(
        f"{f} could not be read after the scan (FileNotFoundError: [Errno 2] No such file or directory: '{f}'): skipped"
        for f in gone
    )
    assert [r.epoch for r in result.history] == [1, 2, 3]
    n_valid = sum(r.is_valid for r in run.read_split(data))
    predictions = run.read_valid_predictions()
    assert len(predictions) == n_valid - 1 and gone[1].name not in {p.file for p in predictions}
    assert result.summary.skipped_files == 2


def test_file_names_in_any_encoding_train_and_predict(tmp_path, runner):
    """Names that are not valid UTF-8 (bytes a Linux file system allows), accents, CJK and spaces:
    scanned, written to split.csv and read back as the same files, and predicted."""
    from flowerfast.runs.folder import RunFolder
    from tests.conftest import invoke

    data = make_folder(tmp_path / "photos", {"daisy": 8, "rose": 8})
    daisy, rose = sample_files("daisy", 1)[0], sample_files("rose", 1)[0]
    odd = [
        os.fsdecode(bytes(data / "daisy") + b"/\xff\xfe latin-1 \xe9t\xe9.jpg"),
        str(data / "rose" / "rosé 日本 ünïcode.jpg"),
    ]
    for name, src in zip(odd, (daisy, rose)):
        with open(src, "rb") as fh_in, open(os.fsencode(name), "wb") as fh_out:
            fh_out.write(fh_in.read())
    result = invoke(
        runner,
        [
            "train",
            "--data",
            data,
            "--arch",
            "resnet18",
            "--no-pretrained",
            "--size",
            "32",
            "--epochs",
            "1",
            "--bs",
            "8",
            "--device",
            "cpu",
            "--out",
            tmp_path / "run",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = RunFolder(tmp_path / "run").read_split(data)
    assert {str(r.file) for r in rows} >= set(odd) and all(r.file.exists() for r in rows)
    predicted = invoke(runner, ["predict", tmp_path / "run", *odd, "--json"])
    assert predicted.exit_code == 0, predicted.output
    import json

    assert len(json.loads(predicted.stdout)) == 2
