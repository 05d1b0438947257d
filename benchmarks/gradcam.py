"""Images/s of Grad-CAM (forward + backward to encoder layer 4) vs plain prediction, and the per-epoch cost
of GradCAMCallback (maps + the PNG) for the default 8 validation images.

Random-initialised models of each config's sizes (speed does not depend on the weights).

    python benchmarks/gradcam.py [--configs cpu paper] [--batch 8] [--repeats 3]
"""

import argparse
import os
import tempfile
import time

from tfdnadet.quiet import quiet_startup  # noqa: E402

quiet_startup()  # before TensorFlow is imported

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfdnadet.atomic import write_json  # noqa: E402
from tfdnadet.config import load_config  # noqa: E402
from tfdnadet.explain.gradcam import GradCAM  # noqa: E402
from tfdnadet.models.detector import MULTICLASS, Detector, Preprocessing  # noqa: E402
from tfdnadet.models.backbones import create_backbone  # noqa: E402
from tfdnadet.models.heads import MulticlassHead  # noqa: E402
from tfdnadet.training.gradcam_callback import GradCAMCallback  # noqa: E402

CLASSES = 5


def best_rate(functions: dict, images, repeats: int) -> dict:
    """Best images/s of each function over `repeats` turns, the functions taking turns so load hits all alike."""
    for function in functions.values():
        function(images)  # trace and warm up
    best = {name: 0.0 for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function(images)
            best[name] = max(best[name], len(images) / (time.perf_counter() - start))
    return best


def callback_seconds(backbone, head, config, repeats: int) -> float:
    """Best wall time of one GradCAMCallback.on_epoch_end on train.gradcam_images validation images."""

    class PatchModelStandIn:
        pass

    model = PatchModelStandIn()
    model.backbone, model.classifier = backbone, head
    count, base = config.train.gradcam_images, config.data.base_size
    images = np.random.default_rng(1).integers(0, 256, (count, base, base, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        preprocessing = Preprocessing.from_data_config(config.data)
        callback = GradCAMCallback(images, np.arange(count) % CLASSES, [f"c{i}" for i in range(CLASSES)], preprocessing, folder)
        callback.set_model(model)
        callback.on_epoch_end(0)
        times = []
        for epoch in range(1, repeats + 1):
            start = time.perf_counter()
            callback.on_epoch_end(epoch)
            times.append(time.perf_counter() - start)
    return min(times)


def run(name: str, batch: int, repeats: int) -> dict:
    config = load_config(name, {"train.precision": "float32"})
    size = config.data.input_size
    backbone = create_backbone(config.model.backbone, width=config.model.width, name="encoder")
    mixed = create_backbone(config.model.backbone, width=config.model.width, dtype="mixed_float16", name="encoder")
    mixed.set_weights(backbone.get_weights())
    head = MulticlassHead(backbone.feature_dim, CLASSES, name=MULTICLASS)
    d = config.data
    detector = Detector(backbone, {}, {}, Preprocessing(d.base_size, d.input_size, d.patch_size, d.max_pixels), {})
    detector.add_head(MULTICLASS, head, {"class_names": [f"c{i}" for i in range(CLASSES)]})
    mixed_detector = Detector(mixed, detector.heads, detector.head_info, detector.preprocessing, {})
    images = tf.random.uniform([batch, size, size, 3], -1, 1, seed=0)
    rates = best_rate(
        {"predict": detector.predict, "gradcam": GradCAM(detector), "gradcam_mixed": GradCAM(mixed_detector)}, images, repeats
    )
    row = {"config": name, "width": config.model.width, "input_size": size, "batch": batch, **rates}
    row["gradcam_cost"] = rates["predict"] / rates["gradcam"]
    row["callback_s"] = callback_seconds(backbone, head, config, repeats)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["cpu", "paper"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "gradcam.json"))
    args = parser.parse_args()
    results = [run(name, args.batch, args.repeats) for name in args.configs]
    print("images/s, best of each timed run (higher is better); cost = predict / gradcam; callback = s per epoch")
    print(f"{'config':8} {'width':>5} {'size':>5} {'batch':>5} {'predict':>9} {'gradcam':>9} {'gc mixed':>9} {'cost':>6} {'callback':>9}")
    for r in results:
        print(
            f"{r['config']:8} {r['width']:5.2f} {r['input_size']:5d} {r['batch']:5d} {r['predict']:9.1f} {r['gradcam']:9.1f} "
            f"{r['gradcam_mixed']:9.1f} {r['gradcam_cost']:6.2f} {r['callback_s']:8.2f}s"
        )
    write_json(args.out, {"device": tf.config.list_logical_devices()[0].device_type, "args": vars(args), "results": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
