"""GFD-Net fingerprints as pictures [4.5, Fig. 4]: one PNG per image, per-class means and their spectra, a sheet.

A fingerprint f = G(x) is small and signed, so each picture is scaled by its own largest |f| around mid-grey
(0 is grey). The amplitude spectrum of a class's mean fingerprint (mean over colour channels, its own mean
removed, log(1 + |FFT|), centred) shows periodic upsampling patterns as bright off-centre peaks. G's own decoder
adds a pattern of its own to every fingerprint (its transposed convolutions' checkerboard, the same for every
class), so each class also gets its "own" part: its mean minus the mean over all images, and that part's spectrum.
"""

import os
import re
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from tfdnadet.atomic import atomic_path
from tfdnadet.plots import plt, save_figure
from tfdnadet.data.pipeline import LoadedImages, make_image_dataset
from tfdnadet.errors import TfdnadetError
from tfdnadet.inference import expand_inputs, load_for_detector
from tfdnadet.models.detector import MULTICLASS, Detector
from tfdnadet.models.gfd import check_unet_size, load_fingerprint_generator
from tfdnadet.models.model_dir import DECODER_FILE

SHEET_EXAMPLES = 6  # fingerprints shown per class row of the contact sheet, beside its mean and spectrum
GROUP_BY = ("predicted", "folder")  # images are grouped by the class the model names, or by the folder they are in


@dataclass
class FingerprintFiles:
    fingerprints: list  # [{"path": source image, "png": its fingerprint, "group": class}]
    classes: dict = field(default_factory=dict)  # class -> {"images": n, "mean", "spectrum", "own", "own_spectrum": png}
    contact_sheet: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def fingerprint_files(detector: Detector, model_dir: str, inputs: list, out_dir: str, batch_size: int = 16, group_by: str = "predicted") -> tuple:
    """Fingerprints of image files/folders -> (FingerprintFiles, failures).

    `group_by` predicted: each class's mean is over the images the model names that class; folder: over the images
    of one folder (the folder's name is the group), so a mistaken answer does not mix the means of known sources.
    """
    if group_by not in GROUP_BY:
        raise TfdnadetError(f"Unknown fingerprint grouping. Received: group_by={group_by!r}. Known: {', '.join(GROUP_BY)}")
    generator = load_generator(detector, model_dir)
    files, failures = expand_inputs(inputs)
    loaded = load_for_detector(detector, files)
    failures += loaded.failures
    if not loaded.paths:
        return FingerprintFiles([]), failures
    folders = [os.path.basename(os.path.dirname(os.path.abspath(path))) for path in loaded.paths] if group_by == "folder" else None
    return fingerprint_loaded(detector, generator, loaded, out_dir, batch_size, folders), failures


def fingerprint_loaded(detector: Detector, generator, loaded: LoadedImages, out_dir: str, batch_size: int = 16, groups=None) -> FingerprintFiles:
    """Fingerprints of loaded images, grouped by `groups` (a class name per image) or else by the predicted class."""
    fingerprints, predicted = [], []
    for batch in make_image_dataset(loaded.images, None, detector.preprocessing.input_size, batch_size):
        fingerprints.append(np.asarray(generator(batch, training=False), np.float32))
        if groups is None:
            predicted += [detector.class_names[index] for index in np.argmax(detector.predict(batch)[MULTICLASS], axis=1)]
    return write_fingerprints(np.concatenate(fingerprints), loaded.paths, groups or predicted, out_dir)


def has_fingerprints(model_dir: str) -> bool:
    """Whether a model directory holds GFD-Net's fingerprint decoder."""
    return os.path.isfile(os.path.join(model_dir, DECODER_FILE))


def load_generator(detector: Detector, model_dir: str):
    """G of the GFD model directory `model_dir` whose loaded detector is `detector` (G_enc = its backbone)."""
    generator = load_fingerprint_generator(model_dir, detector.backbone)
    check_unet_size(detector.preprocessing.input_size, "input size (data.input_size)")
    return generator


def fingerprint_picture(fingerprint: np.ndarray) -> np.ndarray:
    """A signed fingerprint [S, S, 3] -> uint8 RGB, 0 at mid-grey, its largest |value| at 0 or 255."""
    scale = max(float(np.abs(fingerprint).max()), 1e-12)
    return np.clip(np.round(127.5 + 127.5 * fingerprint / scale), 0, 255).astype(np.uint8)


def amplitude_spectrum(fingerprint: np.ndarray) -> np.ndarray:
    """log(1 + |FFT|) of the grey fingerprint minus its mean, zero frequency centred: float32 [S, S] in [0, 1]."""
    grey = fingerprint.mean(axis=-1)
    amplitude = np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(grey - grey.mean()))))
    return (amplitude / max(float(amplitude.max()), 1e-12)).astype(np.float32)


def write_fingerprints(fingerprints: np.ndarray, paths: list, groups: list, out_dir: str) -> FingerprintFiles:
    """Write fingerprints/<image>.png, classes/<class>_{mean,spectrum,own,own_spectrum}.png and contact_sheet.png."""
    result = FingerprintFiles([])
    for index, (fingerprint, path, group) in enumerate(zip(fingerprints, paths, groups)):
        stem = _safe(os.path.splitext(os.path.basename(path))[0])
        png = os.path.join(out_dir, "fingerprints", f"{index:04d}_{stem}.png")  # numbered: two folders may hold the same name
        write_png(png, fingerprint_picture(fingerprint))
        result.fingerprints.append({"path": path, "png": png, "group": group})
    overall = fingerprints.mean(axis=0)
    rows = []
    for group in sorted(set(groups)):
        members = np.asarray([g == group for g in groups])
        mean = fingerprints[members].mean(axis=0)
        pictures = {"mean": mean, "spectrum": amplitude_spectrum(mean), "own": mean - overall, "own_spectrum": amplitude_spectrum(mean - overall)}
        stem = os.path.join(out_dir, "classes", _safe(group))
        result.classes[group] = {"images": int(members.sum())}
        for kind, picture in pictures.items():
            pixels = np.round(255 * picture).astype(np.uint8) if kind.endswith("spectrum") else fingerprint_picture(picture)
            write_png(f"{stem}_{kind}.png", pixels)
            result.classes[group][kind] = f"{stem}_{kind}.png"
        names = [p for p, m in zip(paths, members) if m]
        rows.append((f"{group}: mean of {len(names)}", pictures, fingerprints[members][:SHEET_EXAMPLES], names[:SHEET_EXAMPLES]))
    result.contact_sheet = os.path.join(out_dir, "contact_sheet.png")
    plot_contact_sheet(rows, result.contact_sheet)
    return result


def plot_contact_sheet(rows: list, path: str) -> None:
    """One row per class (title, pictures, examples, their paths): its mean fingerprint and the mean's amplitude
    spectrum, its own part (mean minus the mean of all images) and that part's spectrum, then some of its fingerprints."""
    titles = {"mean": None, "spectrum": "|FFT| of mean", "own": "own: mean - all", "own_spectrum": "|FFT| of own"}
    columns = len(titles) + max(len(examples) for *_, examples, _ in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.9 * columns, 2.1 * len(rows) + 0.4), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for row, (title, pictures, examples, names) in zip(axes, rows):
        for ax, (kind, kind_title) in zip(row, titles.items()):
            if kind.endswith("spectrum"):
                ax.imshow(pictures[kind], cmap="magma", vmin=0, vmax=1)
            else:
                ax.imshow(fingerprint_picture(pictures[kind]))
            ax.set_title(kind_title or title, fontsize=8)
        for ax, example, name in zip(row[len(titles):], examples, names):
            ax.imshow(fingerprint_picture(example))
            ax.set_title(os.path.basename(name)[:22], fontsize=7)
    fig.suptitle("GFD-Net fingerprints (each scaled to its own range, grey = 0)", fontsize=10)
    save_figure(fig, path)


def write_png(path: str, pixels: np.ndarray) -> None:
    """uint8 RGB [H, W, 3] or grey [H, W] -> PNG, written atomically."""
    with atomic_path(path) as temporary:
        Image.fromarray(pixels).save(temporary, format="PNG")


def _safe(name: str) -> str:
    """A class or file name as a file name: anything but letters, digits, '.', '-' and '_' becomes '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"

