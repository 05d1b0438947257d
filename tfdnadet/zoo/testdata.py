"""A tiny attribution data set from randomly initialised generators, for integration tests.

Untrained generators already leave their architecture's upsampling traces, which is all a test of
the pipeline needs, and they render in seconds. Each model's pre-tanh output is standardised per
colour channel over its images, so every model uses the full [-1, 1] range instead of a flat grey.
"""

from pathlib import Path

import keras
import numpy as np
from PIL import Image

from tfdnadet.zoo.generators import build_generator, sample_latents, to_uint8
from tfdnadet.zoo.photos import load_photos, random_crops

REAL_CLASS = "real"
_LATENT_DIM = 32
_WIDTH = 32


def make_test_dataset(
    root,
    architectures=("progan", "mmdgan", "dcgan"),
    seeds=(0, 1, 2),
    images_per_model=24,
    image_size=32,
    real_images=48,
    seed=0,
):
    """Writes `root/<arch>/seed<k>/<i>.png` and `root/real/<i>.png` (i zero-padded to 4 digits).

    One generator per (architecture, k in `seeds`) with weights seeded by k; `seed` seeds the
    latents and the real crops. Returns {class name: [(seed, folder), ...]} for what was written;
    the real class lists (`seed`, root/real). With `real_images=0` no real folder is written.
    """
    _check_args(architectures, seeds, images_per_model, real_images)
    root = Path(root)
    written = {}
    for architecture in architectures:
        for weight_seed in seeds:
            generator = build_generator(
                architecture, image_size, latent_dim=_LATENT_DIM, width=_WIDTH, seed=weight_seed
            )
            latents = sample_latents(images_per_model, _LATENT_DIM, seed=[seed, weight_seed])
            folder = root / architecture / f"seed{weight_seed}"
            _write_pngs(_render_standardised(generator, latents), folder)
            written.setdefault(architecture, []).append((weight_seed, folder))
    if real_images:
        folder = root / REAL_CLASS
        _write_pngs(random_crops(load_photos("all"), real_images, image_size, seed), folder)
        written[REAL_CLASS] = [(seed, folder)]
    return written


def _render_standardised(generator, latents):
    """Renders uint8 images with the pre-tanh output standardised per channel over the batch."""
    pre_activation = keras.Model(generator.input, generator.get_layer("tanh").input)
    x = keras.ops.convert_to_numpy(pre_activation(latents, training=False))
    x = (x - x.mean(axis=(0, 1, 2))) / (x.std(axis=(0, 1, 2)) + 1e-8)
    return to_uint8(np.tanh(x))


def _write_pngs(images, folder):
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:04d}.png")


def _check_args(architectures, seeds, images_per_model, real_images):
    if isinstance(architectures, str) or not architectures:
        raise ValueError(
            f"`architectures` must be a non-empty sequence of names. Received: {architectures!r}"
        )
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"`seeds` must be non-empty and without repeats. Received: seeds={seeds!r}")
    if images_per_model < 1:
        raise ValueError(
            f"`images_per_model` must be >= 1. Received: images_per_model={images_per_model!r}"
        )
    if real_images < 0:
        raise ValueError(f"`real_images` must be >= 0. Received: real_images={real_images!r}")
