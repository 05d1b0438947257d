"""Serving speed: images/s of the exported SavedModel vs the Keras detector on the same batch, as a ratio.

Exports MODEL (or a random-init detector of a config's sizes) to a temporary model base, loads it with
tf.saved_model.load, and times the same batch, interleaved, through
    predict_images (float32 batch)   vs  Detector.predict, the Keras model      (the export must reach >= 0.95)
    serving_default (PNG bytes)      vs  the Python path of `tfdnadet predict`  (Pillow decode, resize, predict)

    python benchmarks/serving.py [--model DIR | --config cpu [--precision mixed_float16]] [--batch 32] [--repeats 30]
"""

import argparse
import os
import statistics
import tempfile
import time

from tfdnadet.quiet import quiet_startup  # noqa: E402

quiet_startup()  # before TensorFlow is imported

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from tfdnadet.atomic import write_json  # noqa: E402
from tfdnadet.config import load_config  # noqa: E402
from tfdnadet.data.preprocess import resize_to_base, to_model_input  # noqa: E402
from tfdnadet.export import export_model  # noqa: E402
from tfdnadet.inference import load_for_detector, predict_loaded  # noqa: E402
from tfdnadet.models.detector import MULTICLASS, Detector, Preprocessing  # noqa: E402
from tfdnadet.models.model_dir import load_detector, save_detector  # noqa: E402
from tfdnadet.models.backbones import create_backbone  # noqa: E402
from tfdnadet.models.heads import MulticlassHead  # noqa: E402

TARGET_RATIO = 0.95


def random_detector(config, precision: str, model_dir: str) -> str:
    """A random-init detector of the config's sizes, saved as a model directory (real + 4 architectures)."""
    backbone = create_backbone(config.model.backbone, width=config.model.width, dtype=precision, name="encoder")
    d = config.data
    preprocessing = Preprocessing(d.base_size, d.input_size, d.patch_size, d.max_pixels)
    detector = Detector(backbone, {}, {}, preprocessing, config.to_dict())
    classes = ["real", "progan", "mmdgan", "sngan", "infomaxgan"]
    detector.add_head(MULTICLASS, MulticlassHead(backbone.feature_dim, len(classes), name=MULTICLASS), {"class_names": classes})
    save_detector(detector, model_dir)
    return model_dir


def compare(keras_call, savedmodel_call, batch: int, repeats: int) -> dict:
    """Median images/s of each call, and the median of per-round speed ratios (the calls alternate, so each
    round's pair sees the same load on a shared machine)."""
    keras_call(), savedmodel_call()  # trace and warm up
    rounds = []
    for _ in range(repeats):
        pair = []
        for call in (keras_call, savedmodel_call):
            start = time.perf_counter()
            call()
            pair.append(time.perf_counter() - start)
        rounds.append(pair)
    keras_s, savedmodel_s = zip(*rounds)
    return {
        "keras": batch / statistics.median(keras_s),
        "savedmodel": batch / statistics.median(savedmodel_s),
        "ratio": statistics.median(k / s for k, s in rounds),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="Model directory (default: a random-init detector of --config's sizes)")
    parser.add_argument("--config", default="cpu")
    parser.add_argument("--precision", default="float32", help="train.precision of the random-init detector")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "serving.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as work:
        model_dir = args.model or random_detector(load_config(args.config), args.precision, os.path.join(work, "model"))
        detector = load_detector(model_dir)
        exported = export_model(model_dir, "bench", os.path.join(work, "savedmodels"))
        signatures = tf.saved_model.load(exported.path).signatures

        p = detector.preprocessing
        pixels = np.random.default_rng(0).integers(0, 256, (args.batch, 2 * p.base_size, 2 * p.base_size, 3), dtype=np.uint8)
        paths = []
        for i, image in enumerate(pixels):
            paths.append(os.path.join(work, f"{i}.png"))
            Image.fromarray(image).save(paths[-1])
        encoded = tf.constant([open(path, "rb").read() for path in paths])
        batch = to_model_input(resize_to_base(pixels, p.base_size), p.input_size)

        preprocessed = compare(
            lambda: detector.predict(batch), lambda: signatures["predict_images"](images=batch), args.batch, args.repeats
        )
        from_bytes = compare(
            lambda: predict_loaded(detector, load_for_detector(detector, paths), args.batch),
            lambda: signatures["serving_default"](images_bytes=encoded),
            args.batch,
            args.repeats,
        )

    rows = {"predict_images vs Detector.predict": preprocessed, "serving_default vs Python predict path": from_bytes}
    print(f"{'images/s (batch ' + str(args.batch) + ')':42} {'keras':>9} {'savedmodel':>11} {'ratio':>6}")
    for name, row in rows.items():
        print(f"{name:42} {row['keras']:9.1f} {row['savedmodel']:11.1f} {row['ratio']:6.2f}")
    ratio = preprocessed["ratio"]
    print(f"export vs Keras on the same batch: {ratio:.2f} ({'meets' if ratio >= TARGET_RATIO else 'BELOW'} the {TARGET_RATIO} target)")
    result = {
        "device": tf.config.list_logical_devices()[0].device_type,
        "args": vars(args),
        "precision": detector.backbone.dtype_policy.name,
        "rows": rows,
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
    }
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
