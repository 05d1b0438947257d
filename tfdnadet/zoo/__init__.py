"""The offline mini GAN zoo: generator architectures, bundled natural photos, test data."""

from tfdnadet.zoo.generators import (
    GENERATORS,
    build_generator,
    generator_names,
    register_generator,
    sample_images,
    sample_latents,
    to_uint8,
)
from tfdnadet.zoo.photos import load_photos, photo_names, random_crops
from tfdnadet.zoo.testdata import make_test_dataset
