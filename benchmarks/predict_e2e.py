"""`predict` end to end on a folder of PNGs against the model alone, and the cost of 10 binary heads against 1.

End to end is `tfdnadet.inference.attribute` on the folder: listing, decoding, both resizes, the forward pass and
the heads, decoding streamed alongside the model (`predict_files`). Model only is `Detector.predict` on the same images already resized to model inputs. The heads share
one backbone pass, so 10 binary heads should cost little more than 1. Models are randomly initialised (speed
does not depend on the weights); the PNGs are made on the fly.

    python benchmarks/predict_e2e.py [--config cpu] [--images 1000] [--image-size 256] [--batch-size 16] [--rounds 4]
"""

import argparse
import os
import tempfile
import time

from tfdnadet.quiet import quiet_startup  # noqa: E402

quiet_startup()  # before TensorFlow is imported

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from tfdnadet.atomic import write_json  # noqa: E402
from tfdnadet.config import load_config  # noqa: E402
from tfdnadet.data.pipeline import make_image_dataset  # noqa: E402
from tfdnadet.inference import attribute, load_for_detector  # noqa: E402
from tfdnadet.models.detector import MULTICLASS, Detector, Preprocessing  # noqa: E402
from tfdnadet.models.backbones import create_backbone  # noqa: E402
from tfdnadet.models.ensemble import EnsembleEncoder  # noqa: E402
from tfdnadet.training.ensemble import ensemble_stems, shared_blocks  # noqa: E402
from tfdnadet.models.heads import BinaryHead, MulticlassHead  # noqa: E402
from tfdnadet.precision import resolve_precision  # noqa: E402


def make_backbone(config, dtype, one_run: bool = False):
    """The backbone the config trains: one encoder, or the ensemble of stage1.encoders x train.runs_per_encoder runs,
    those of one stage-1 encoder sharing the blocks below train.finetune_from_block."""
    encoders, runs = config.stage1.encoders, config.train.runs_per_encoder
    if one_run or encoders * runs == 1:
        return create_backbone(config.model.backbone, width=config.model.width, dtype=dtype, name="encoder")
    return EnsembleEncoder(ensemble_stems(encoders, runs), shared_blocks(config, pretrained=True), config.model.width, dtype=dtype, name="encoder")


def make_detector(config, binary_heads: int, multiclass: bool, one_run: bool = False) -> Detector:
    dtype = resolve_precision(config.train.precision)
    backbone = make_backbone(config, dtype, one_run)
    detector = Detector(backbone, {}, {}, Preprocessing.from_data_config(config.data), config.to_dict())
    if multiclass:
        detector.add_head(MULTICLASS, MulticlassHead(backbone.feature_dim, 5, name=MULTICLASS), {"class_names": list("abcde")})
    for index in range(binary_heads):
        head = BinaryHead(backbone.feature_dim, config.heads.hidden, dtype=dtype, name=f"arch{index}")
        detector.add_head(f"arch{index}", head, {"threshold": 0.5})
    return detector


def write_pngs(folder: str, count: int, size: int) -> None:
    """Smooth random images with noise on top (as compressible as photos, unlike pure noise)."""
    rng = np.random.default_rng(0)
    for index in range(count):
        coarse = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR), np.int16)
        image = np.clip(image + rng.integers(-8, 9, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(os.path.join(folder, f"{index:05d}.png"))


def model_only_seconds(detector: Detector, batches: list) -> float:
    start = time.perf_counter()
    for batch in batches:
        detector.predict(batch)
    return time.perf_counter() - start


def run(args) -> dict:
    config = load_config(args.config, {"train.precision": args.precision})
    with tempfile.TemporaryDirectory() as folder:
        write_pngs(folder, args.images, args.image_size)
        detector = make_detector(config, binary_heads=0, multiclass=True)
        batches = [b for b in make_image_dataset(load_for_detector(detector, [os.path.join(folder, f) for f in sorted(os.listdir(folder))]).images, None, config.data.input_size, args.batch_size)]
        one_run = make_detector(config, binary_heads=0, multiclass=True, one_run=True)  # one member of an ensemble config
        for model in (detector, one_run):
            model.predict(batches[0])  # trace
        attribute(detector, [folder], args.batch_size)  # warm the file cache and the traces of a ragged last batch
        rows = {"end_to_end": [], "model_only": [], "model_only_one_run": [], "decode_only": []}
        for _ in range(args.rounds):
            start = time.perf_counter()
            results, failures = attribute(detector, [folder], args.batch_size)
            rows["end_to_end"].append(len(results) / (time.perf_counter() - start))
            start = time.perf_counter()
            load_for_detector(detector, [os.path.join(folder, f) for f in sorted(os.listdir(folder))])
            rows["decode_only"].append(args.images / (time.perf_counter() - start))
            rows["model_only"].append(args.images / model_only_seconds(detector, batches))
            rows["model_only_one_run"].append(args.images / model_only_seconds(one_run, batches))
        assert len(results) == args.images and not failures
    with_heads = {count: make_detector(config, binary_heads=count, multiclass=False) for count in (1, 10)}
    for detector in with_heads.values():
        model_only_seconds(detector, batches)  # trace every batch shape
    heads = {count: [] for count in with_heads}
    for _ in range(args.rounds):  # interleaved, so load on the machine hits both alike
        for count, detector in with_heads.items():
            heads[count].append(model_only_seconds(detector, batches))
    heads = {count: min(seconds) for count, seconds in heads.items()}
    best = {name: max(values) for name, values in rows.items()}
    return {
        "images_per_second": best,
        "rounds": rows,
        "end_to_end_over_model_only": best["end_to_end"] / best["model_only"],
        # each round's two rates saw the same load: their ratio is steadier on a shared machine than best over best
        "end_to_end_over_model_only_per_round": [e / m for e, m in zip(rows["end_to_end"], rows["model_only"])],
        # decoding and the model each use every core alone, so sharing them caps end to end at 1 / (1/model + 1/decode)
        "shared_cpu_bound_over_model_only": best["decode_only"] / (best["decode_only"] + best["model_only"]),
        "runs_averaged": config.stage1.encoders * config.train.runs_per_encoder,
        "seconds_1_binary_head": heads[1],
        "seconds_10_binary_heads": heads[10],
        "ten_over_one_head": heads[10] / heads[1],
        "precision": resolve_precision(config.train.precision),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "predict_e2e.json"))
    args = parser.parse_args()
    load_before = os.getloadavg()
    result = run(args)
    result.update({"args": vars(args), "load_average_before": load_before, "load_average_after": os.getloadavg(), "cpus": os.cpu_count()})
    config = load_config(args.config)
    print(f"{args.images} PNGs of {args.image_size} px, config {args.config} (width {config.model.width}, input "
          f"{config.data.input_size} px, predict_on {config.data.predict_on}), {result['precision']}, batch {args.batch_size}; "
          f"best of {args.rounds} rounds; load average {load_before[0]:.1f} on {os.cpu_count()} CPUs")
    ips = result["images_per_second"]
    print(f"{'images/s':24} {'end to end':>10} {'model only':>10} {'decode+resize':>13} {'e2e/model':>9}")
    print(f"{'':24} {ips['end_to_end']:10.1f} {ips['model_only']:10.1f} {ips['decode_only']:13.1f} {result['end_to_end_over_model_only']:9.2f}")
    per_round = result["end_to_end_over_model_only_per_round"]
    print(f"e2e/model within each round: {', '.join(f'{r:.2f}' for r in per_round)} (median {np.median(per_round):.2f})")
    print(f"the most end to end can reach with decoding and the model sharing the CPUs: "
          f"{result['shared_cpu_bound_over_model_only']:.2f} of model only")
    if result["runs_averaged"] > 1:
        print(f"model only, one of the {result['runs_averaged']} runs the model averages: {ips['model_only_one_run']:.1f} images/s")
    print(f"model-only seconds: 1 binary head {result['seconds_1_binary_head']:.2f}, 10 binary heads "
          f"{result['seconds_10_binary_heads']:.2f} (x{result['ten_over_one_head']:.2f})")
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
