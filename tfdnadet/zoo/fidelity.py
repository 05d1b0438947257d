"""How close a zoo model's images are to the real crops of the content it learnt, from the PNGs alone.

Two figures per model, both cheap and free of downloaded networks:
- diversity: the per-pixel standard deviation across its samples (averaged over pixels and channels)
  divided by the same figure on real crops of its content. About 1 for a generator as varied as the
  photos; near 0 for one that collapsed to a single image.
- frechet: the Frechet distance between Gaussians fitted to cheap image features of its samples and of
  real crops (colour mean and spread, mean gradient magnitude, radially averaged log amplitude spectrum),
  each feature in units of its spread over the real crops. 0 is indistinguishable; `real_frechet`, the
  same distance for another set of real crops as large as the samples, is the floor that sample size
  alone gives.
"""

import numpy as np

from tfdnadet.zoo.photos import load_photos, random_crops

SPECTRUM_BINS = 8
REFERENCE_CROPS = 1000  # real crops the samples are compared with (more than any model's samples)


class RealReference:
    """Real crops of one content set, `size` px, with their feature statistics: what a model is measured against."""

    def __init__(self, content, size, seed):
        photos = list(load_photos(content))
        self._photos, self._size, self._seed = photos, size, seed
        crops = random_crops(photos, REFERENCE_CROPS, size, seed=seed)
        features = image_features(crops)
        self.feature_mean = features.mean(axis=0)
        self.feature_scale = features.std(axis=0) + 1e-8
        self.pixel_spread = pixel_spread(crops)
        self._standardized = self.standardize(features)
        self._floors = {}

    def standardize(self, features):
        return (features - self.feature_mean) / self.feature_scale

    def real_frechet(self, count):
        """The Frechet distance of `count` other real crops to the reference: the floor for `count` samples."""
        if count not in self._floors:
            crops = random_crops(self._photos, count, self._size, seed=self._seed + 1)
            self._floors[count] = frechet_distance(self.standardize(image_features(crops)), self._standardized)
        return self._floors[count]

    def fidelity(self, images):
        """{"images", "diversity", "frechet", "real_frechet"} of uint8 samples [N, S, S, 3] (N >= 2)."""
        count = len(images)
        return {
            "images": count,
            "diversity": round(pixel_spread(images) / self.pixel_spread, 4),
            "frechet": round(frechet_distance(self.standardize(image_features(images)), self._standardized), 4),
            "real_frechet": round(self.real_frechet(count), 4),
        }


def pixel_spread(images):
    """The standard deviation across images of each pixel and channel, averaged; images uint8 [N, S, S, 3]."""
    return float(np.mean(np.std(np.asarray(images, np.float64) / 255.0, axis=0)))


def image_features(images):
    """Per image: colour mean and std per channel (6), mean |horizontal| and |vertical| grey gradient (2),
    log amplitude spectrum of the grey image averaged over SPECTRUM_BINS rings out to Nyquist. [N, 16]."""
    x = np.asarray(images, np.float64) / 255.0
    grey = x.mean(axis=-1)
    colour = np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2))], axis=1)
    gradient = np.stack([np.abs(np.diff(grey, axis=2)).mean(axis=(1, 2)), np.abs(np.diff(grey, axis=1)).mean(axis=(1, 2))], axis=1)
    return np.concatenate([colour, gradient, _ring_spectrum(grey)], axis=1)


def _ring_spectrum(grey):
    """Mean log amplitude over SPECTRUM_BINS equal rings from 1 cycle per image out to Nyquist (the mean and
    the corners past Nyquist left out): every ring holds frequencies down to 8 px images."""
    size = grey.shape[1]
    amplitude = np.abs(np.fft.fft2(grey))
    cycles = np.fft.fftfreq(size) * size
    radius = np.hypot(*np.meshgrid(cycles, cycles, indexing="ij")).reshape(-1)
    rings = np.minimum(np.floor((radius - 1) / (size / 2 - 1) * SPECTRUM_BINS), SPECTRUM_BINS - 1)
    rings[(radius < 1) | (radius > size / 2)] = -1
    log_amplitude = np.log(amplitude + 1e-6).reshape(len(grey), -1)
    return np.stack([log_amplitude[:, rings == ring].mean(axis=1) for ring in range(SPECTRUM_BINS)], axis=1)


def frechet_distance(a, b):
    """The Frechet distance between Gaussians fitted to the rows of `a` and of `b`:
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))."""
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    # tr((S_a S_b)^(1/2)) is the sum of the square roots of S_a S_b's eigenvalues, which are real and >= 0
    # (S_a S_b is similar to S_a^(1/2) S_b S_a^(1/2)); round-off can leave tiny negative or imaginary parts.
    cross = np.sqrt(np.clip(np.linalg.eigvals(cov_a @ cov_b).real, 0.0, None)).sum()
    return float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * cross)
