"""Real photos that are not flowers, from scikit-image's bundled sample data: a cat, coffee, a
rocket, an astronaut, a horse, motorcycles, a cameraman, coins, the moon, a clock, a galaxy field,
a stained tissue and a retina. Written as JPEG files, the form users' photos have, for the tests
and the benchmark that measure whether a flower model answers "unknown" to them."""

from __future__ import annotations

from pathlib import Path

NOT_FLOWERS = (
    "chelsea",
    "coffee",
    "rocket",
    "astronaut",
    "horse",
    "motorcycle_left",
    "motorcycle_right",
    "camera",
    "coins",
    "moon",
    "clock",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
)


def not_flower_image(name: str):
    """One of :data:`NOT_FLOWERS` as an RGB ``uint8`` array."""
    import numpy as np
    from skimage import data

    if name.startswith("motorcycle_"):
        left, right, _ = data.stereo_motorcycle()
        image = left if name.endswith("left") else right
    else:
        image = getattr(data, name)()
    image = np.asarray(image)
    if image.dtype == bool:  # the horse is a silhouette: black on white
        image = np.where(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return image[..., :3].astype(np.uint8)


def write_not_flowers(folder: Path) -> list[Path]:
    """Every photo of :data:`NOT_FLOWERS` as ``folder/NAME.jpg``; returns the paths."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in NOT_FLOWERS:
        path = folder / f"{name}.jpg"
        Image.fromarray(not_flower_image(name)).save(path, quality=92)
        paths.append(path)
    return paths
