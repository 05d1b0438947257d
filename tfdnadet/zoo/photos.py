"""Natural photos bundled inside installed packages, loaded offline.

The photos come from files that scikit-image and scikit-learn ship in their wheels, so nothing is
ever downloaded. They are split into two disjoint content sets, "A" and "B", for the cross-dataset
splits of the GAN zoo (paper Table 1: models trained on other content).
"""

import functools
import os

import numpy as np
import skimage.data
from PIL import Image
from sklearn.datasets import load_sample_images

# Each set mixes people/animals, objects, scenes and textures so that both are varied.
# Only loaders that read files bundled with scikit-image are listed (no pooch downloads).
_SKIMAGE_PHOTOS = {
    "A": ("astronaut", "chelsea", "coffee", "immunohistochemistry", "grass", "coins"),
    "B": ("camera", "rocket", "stereo_motorcycle", "hubble_deep_field", "gravel", "brick", "moon"),
}
_SKLEARN_PHOTOS = {"A": ("china.jpg",), "B": ("flower.jpg",)}
CONTENT_NAMES = ("A", "B", "all")


def photo_names(content="all"):
    """Names of the source photos in a content set ("A", "B" or "all")."""
    sets = _content_sets(content)
    return [name for s in sets for name in _SKIMAGE_PHOTOS[s] + _SKLEARN_PHOTOS[s]]


def load_photos(content="all"):
    """Bundled photos of a content set as a list of read-only uint8 [H, W, 3] RGB arrays."""
    return [photo for s in _content_sets(content) for photo in _load_set(s)]


def random_crops(photos, count, size, seed):
    """`count` random square crops at random scales, resized to `size`: uint8 [count, size, size, 3].

    Each crop picks a photo, a side between `size` and the photo's shorter side, and a position,
    all from a numpy RNG seeded with `seed`, then resizes the crop to `size` with PIL.
    """
    if not photos:
        raise ValueError("`photos` must be a non-empty list of [H, W, 3] uint8 arrays.")
    _check_positive("count", count)
    _check_positive("size", size)
    rng = np.random.default_rng(seed)
    crops = np.empty((count, size, size, 3), dtype=np.uint8)
    for i in range(count):
        photo = photos[rng.integers(len(photos))]
        crops[i] = _random_crop(photo, size, rng)
    return crops


def _random_crop(photo, size, rng):
    height, width = photo.shape[:2]
    shorter = min(height, width)
    side = int(rng.integers(min(size, shorter), shorter + 1))
    top = int(rng.integers(height - side + 1))
    left = int(rng.integers(width - side + 1))
    crop = Image.fromarray(photo[top : top + side, left : left + side])
    if side != size:
        crop = crop.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(crop)


def _content_sets(content):
    if content not in CONTENT_NAMES:
        raise ValueError(
            f"Unknown photo content set. Received: content={content!r}. Known: {list(CONTENT_NAMES)}"
        )
    return ("A", "B") if content == "all" else (content,)


@functools.lru_cache(maxsize=None)
def _load_set(content):
    """Loads one content set once per process; arrays are read-only so the cache stays intact."""
    photos = [_skimage_photo(name) for name in _SKIMAGE_PHOTOS[content]]
    photos += _sklearn_photos(_SKLEARN_PHOTOS[content])
    for photo in photos:
        photo.setflags(write=False)
    return tuple(photos)


def _skimage_photo(name):
    image = getattr(skimage.data, name)()
    if name == "stereo_motorcycle":
        image = image[0]  # (left view, right view, disparity): keep the left view.
    return _to_rgb_uint8(image)


def _sklearn_photos(filenames):
    bundle = load_sample_images()
    by_name = {os.path.basename(path): image for path, image in zip(bundle.filenames, bundle.images)}
    return [_to_rgb_uint8(by_name[name]) for name in filenames]


def _to_rgb_uint8(image):
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def _check_positive(name, value):
    if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
