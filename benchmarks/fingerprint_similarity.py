"""Do GFD-Net fingerprints of one source look alike, and differ across sources? Numbers beside the fingerprint PNGs.

For images in one folder per source (FOLDER/<source>/*.png), each fingerprint G(x) is compared with the others by
cosine similarity: the mean over pairs of one source (within) and of two sources (across), and the leave-one-out
accuracy of naming an image's source by the nearest source-mean fingerprint. Each is measured on the raw
fingerprints and on their own parts (minus the mean over all images, which removes the pattern G's decoder adds to
every image). The strongest off-centre peaks of each mean's amplitude spectrum (as `tfdnadet fingerprint` draws it)
are listed as (cycles per image down, across).

    python benchmarks/fingerprint_similarity.py GFD_MODEL_DIR FOLDER [--out benchmarks/results/gfd_fingerprints]
"""

import argparse
import os

from tfdnadet.quiet import quiet_startup  # noqa: E402

quiet_startup()  # before TensorFlow is imported

import numpy as np  # noqa: E402
from cross_test import RESULTS, write_results  # noqa: E402  (the script's own folder is on sys.path)

from tfdnadet.data.pipeline import make_image_dataset  # noqa: E402
from tfdnadet.explain.fingerprint import amplitude_spectrum, load_generator  # noqa: E402
from tfdnadet.inference import expand_inputs, load_for_detector  # noqa: E402
from tfdnadet.models.model_dir import load_detector  # noqa: E402

PEAKS = 6  # spectral peaks listed per mean


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model directory trained with --method gfd")
    parser.add_argument("folder", help="one sub-folder of images per source")
    parser.add_argument("--out", default=os.path.join(RESULTS, "gfd_fingerprints"), help="writes OUT.json and OUT.md")
    return parser.parse_args()


def fingerprints_by_source(model_dir: str, folder: str) -> dict:
    """{source: float32 [n, S, S, 3] fingerprints of FOLDER/<source>/*}."""
    detector = load_detector(model_dir)
    generator = load_generator(detector, model_dir)
    found = {}
    for source in sorted(os.listdir(folder)):
        files, _ = expand_inputs([os.path.join(folder, source)])
        loaded = load_for_detector(detector, files)
        batches = make_image_dataset(loaded.images, None, detector.preprocessing.input_size, 16)
        found[source] = np.concatenate([np.asarray(generator(batch, training=False), np.float32) for batch in batches])
    return found


def similarity(fingerprints: dict) -> dict:
    """Within- and across-source mean cosine similarity, and nearest-source-mean (leave-one-out) accuracy."""
    sources = list(fingerprints)
    unit = {s: _unit(f.reshape(len(f), -1)) for s, f in fingerprints.items()}
    within = {}
    for s, u in unit.items():
        pairs = u @ u.T
        within[s] = float(pairs[np.triu_indices(len(u), 1)].mean())
    across = np.mean([float((unit[a] @ unit[b].T).mean()) for i, a in enumerate(sources) for b in sources[i + 1 :]])
    sums = {s: f.reshape(len(f), -1).sum(axis=0) for s, f in fingerprints.items()}
    correct = total = 0
    for s, f in fingerprints.items():
        for x in f.reshape(len(f), -1):
            means = {t: (sums[t] - (x if t == s else 0)) / (len(fingerprints[t]) - (t == s)) for t in sources}
            correct += max(sources, key=lambda t: float(_unit(x[None])[0] @ _unit(means[t][None])[0])) == s
            total += 1
    return {"within": within, "within_mean": float(np.mean(list(within.values()))), "across_mean": float(across), "nearest_mean_accuracy": correct / total}


def spectral_peaks(fingerprint: np.ndarray) -> list:
    """The strongest off-centre peaks of the amplitude spectrum: [(value, cycles down, cycles across)]."""
    spectrum = amplitude_spectrum(fingerprint)
    centre = spectrum.shape[0] // 2
    down, across = np.meshgrid(np.arange(spectrum.shape[0]) - centre, np.arange(spectrum.shape[1]) - centre, indexing="ij")
    values = np.where(np.abs(down) + np.abs(across) > 2, spectrum, -1.0).ravel()
    top = np.argsort(values)[::-1][:PEAKS]
    return [(round(float(values[i]), 2), int(down.ravel()[i]), int(across.ravel()[i])) for i in top]


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def main():
    args = parse_args()
    fingerprints = fingerprints_by_source(args.model, args.folder)
    overall = np.concatenate(list(fingerprints.values())).mean(axis=0)
    own = {s: f - overall for s, f in fingerprints.items()}
    report = {
        "model": os.path.abspath(args.model),
        "images": {s: len(f) for s, f in fingerprints.items()},
        "raw": similarity(fingerprints),
        "own": similarity(own),
        "peaks": {"all images": spectral_peaks(overall), **{s: spectral_peaks(f.mean(axis=0)) for s, f in own.items()}},
    }
    table = markdown_table(report)
    print(table)
    write_results(args.out, report, f"GFD-Net fingerprint cosine similarity, model `{report['model']}`", table)


def markdown_table(report: dict) -> str:
    sources = list(report["images"])
    lines = ["| fingerprints | " + " | ".join(f"within {s}" for s in sources) + " | within (mean) | across | nearest mean |"]
    lines.append("|" + "---|" * (len(sources) + 4))
    for kind in ("raw", "own"):
        r = report[kind]
        cells = [r["within"][s] for s in sources] + [r["within_mean"], r["across_mean"]]
        lines.append(f"| {kind} | " + " | ".join(f"{value:.2f}" for value in cells) + f" | {100 * r['nearest_mean_accuracy']:.0f}% |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
