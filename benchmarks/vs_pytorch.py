"""Our train step and 512 px inference against a PyTorch build of the same network, float32 and bfloat16.

The PyTorch side follows the official DNA-Det training step: one forward per crop (16 crops of B images), SupCon
over the [B, 16, D] projections, cross-entropy on every crop's logits, the two summed with learned uncertainty
weights (Kendall et al.), Adam. Ours is `PatchContrastiveModel.fit` on the same B x 16 patches (one forward of
all of them; the steps timed inside `fit`): the same convolutions, losses and optimiser. Implementations take
turns in every round so load on the machine hits all alike; the best round counts. The achieved GFLOP/s of each step is set against the
matmul peak of the same dtype, measured by TensorFlow in the same run.

    python benchmarks/vs_pytorch.py            # paper width, 5 classes x 8 images x 16 crops of 64 px, 512 px inference
    python benchmarks/vs_pytorch.py --quick    # 1/8 width, 2 x 2 x 16 crops of 32 px, 128 px: a check that it runs
"""

import argparse
import os
import time

from tfdnadet.quiet import quiet_startup  # noqa: E402

quiet_startup()  # before TensorFlow is imported

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from tfdnadet.atomic import write_json  # noqa: E402
from tfdnadet.config import load_config  # noqa: E402
from tfdnadet.models.encoder import ENCODER_BLOCKS, LEAKY_SLOPE, channels  # noqa: E402
from tfdnadet.training.trainer import build_patch_model  # noqa: E402
from timing import fit_seconds  # noqa: E402

PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


class TorchDNADet(nn.Module):
    """Table 7 in PyTorch: 8 x (Conv pad 1, BatchNorm, LeakyReLU), average pooling, classifier and projection."""

    def __init__(self, width, classes, hidden, dim):
        super().__init__()
        layers, previous = [], 3
        for filters, kernel, stride in ENCODER_BLOCKS:
            out = channels(filters, width)
            layers += [nn.Conv2d(previous, out, kernel, stride, 1), nn.BatchNorm2d(out), nn.LeakyReLU(LEAKY_SLOPE)]
            previous = out
        self.encoder = nn.Sequential(*layers)
        self.classifier = nn.Linear(previous, classes)
        self.projection = nn.Sequential(nn.Linear(previous, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, x):
        features = self.encoder(x).mean(dim=(2, 3))
        return self.classifier(features).float(), nn.functional.normalize(self.projection(features).float(), dim=1)


def torch_supcon(features, labels, temperature):
    """SupCon over [B, V, D] views (Khosla et al. 2020, Eq. 2): every view an anchor, other views of its class positives."""
    batch, views, _ = features.shape
    flat = features.transpose(0, 1).reshape(batch * views, -1)
    labels = labels.repeat(views)
    logits = flat @ flat.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    not_self = 1.0 - torch.eye(batch * views)
    positives = (labels[:, None] == labels[None, :]).float() * not_self
    log_prob = logits - torch.log((torch.exp(logits) * not_self).sum(1, keepdim=True))
    return -((positives * log_prob).sum(1) / positives.sum(1).clamp(min=1)).mean()


class TorchTrainer:
    """The official step's structure: a forward per crop, SupCon + CE with automatic weighting, Adam."""

    def __init__(self, width, classes, hidden, dim, temperature, dtype):
        torch.manual_seed(0)
        self.net = TorchDNADet(width, classes, hidden, dim)
        self.log_variances = nn.Parameter(torch.zeros(2))
        self.optimizer = torch.optim.Adam([*self.net.parameters(), self.log_variances], lr=1e-4)
        self.temperature, self.dtype = temperature, dtype

    def step(self, crops, labels):
        """crops: [B, 16, 3, P, P]; labels: [B]."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.dtype == "bfloat16"):
            outputs = [self.net(crops[:, i]) for i in range(crops.shape[1])]
        logits = torch.cat([logit for logit, _ in outputs])
        features = torch.stack([projection for _, projection in outputs], dim=1)
        supcon = torch_supcon(features, labels, self.temperature)
        ce = nn.functional.cross_entropy(logits, labels.repeat(crops.shape[1]))
        loss = (torch.exp(-self.log_variances) * torch.stack([supcon, ce]) + self.log_variances).sum()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    @torch.no_grad()
    def infer(self, images):
        self.net.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.dtype == "bfloat16"):
            logits = self.net(images)[0]
        self.net.train()
        return logits


def encoder_macs(width: float, size: int) -> int:
    """Multiply-accumulates of one encoder forward on a size x size image."""
    macs, previous = 0, 3
    for filters, kernel, stride in ENCODER_BLOCKS:
        out = channels(filters, width)
        size = (size + 2 - kernel) // stride + 1
        macs += size * size * kernel * kernel * previous * out
        previous = out
    return macs


def matmul_gflops(dtype: str, n: int, repeats: int = 5) -> float:
    a = tf.random.normal([n, n], dtype=tf.float32)
    a = tf.cast(a, dtype)
    product = tf.function(lambda x: tf.reduce_sum(tf.cast(tf.matmul(x, x)[0, :1], tf.float32)))
    product(a)
    best = min(_seconds(lambda: product(a).numpy()) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _seconds(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def build_pair(args, dtype: str):
    """(our patch model, our inference function, the PyTorch trainer) at one precision."""
    config = load_config(args.config, {"model.width": args.width, "train.precision": PRECISIONS[dtype]})
    m = config.model
    ours = build_patch_model(config, args.classes)
    infer = tf.function(lambda x: ours.classifier(ours.backbone(x, training=False)))
    theirs = TorchTrainer(m.width, args.classes, m.projection_hidden, m.projection_dim, config.train.temperature, dtype)
    return ours, infer, theirs


def run(args) -> dict:
    torch.set_num_threads(os.cpu_count())
    rng = np.random.default_rng(0)
    batch = args.classes * args.images_per_class
    crops = rng.uniform(-1, 1, (batch, args.crops, args.patch, args.patch, 3)).astype("float32")
    labels = np.repeat(np.arange(args.classes), args.images_per_class).astype("int64")
    images = rng.uniform(-1, 1, (args.infer_batch, args.infer_size, args.infer_size, 3)).astype("float32")
    # Ours takes the B x 16 patches as one batch, crop-major as the official step stacks them.
    patches = tf.constant(crops.transpose(1, 0, 2, 3, 4).reshape(-1, args.patch, args.patch, 3))
    patch_labels = tf.constant(np.tile(labels, args.crops).astype("int32"))
    dataset = tf.data.Dataset.from_tensors((patches, patch_labels)).repeat()
    torch_crops = torch.from_numpy(crops.transpose(0, 1, 4, 2, 3).copy())
    torch_labels, torch_images = torch.from_numpy(labels), torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    tf_images = tf.constant(images)

    timers = {}
    for dtype in args.dtypes:
        ours, infer, theirs = build_pair(args, dtype)
        ours.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)  # trace and warm up
        infer(tf_images).numpy()
        theirs.step(torch_crops, torch_labels)
        theirs.infer(torch_images)
        steps = args.steps
        # train and inference timers return the seconds their work took, matmul timers GFLOP/s
        timers[f"ours_{dtype}_train"] = lambda o=ours: fit_seconds(o, dataset, steps)
        timers[f"torch_{dtype}_train"] = lambda t=theirs: _seconds(lambda: [t.step(torch_crops, torch_labels) for _ in range(steps)])
        timers[f"ours_{dtype}_infer"] = lambda f=infer: _seconds(lambda: [f(tf_images).numpy() for _ in range(steps)])
        timers[f"torch_{dtype}_infer"] = lambda t=theirs: _seconds(lambda: [t.infer(torch_images) for _ in range(steps)])
        timers[f"matmul_{dtype}"] = lambda d=dtype: matmul_gflops(d, args.matmul_n)
    rounds = {name: [] for name in timers}
    for _ in range(args.rounds):
        for name, timer in timers.items():
            if name.startswith("matmul"):
                rounds[name].append(timer())
                continue
            seconds = timer()
            count = len(labels) * args.crops if name.endswith("train") else args.infer_batch
            rounds[name].append(args.steps * count / seconds)
    return summarise(args, rounds, batch * args.crops)


def summarise(args, rounds: dict, patches: int) -> dict:
    train_flop = 6 * encoder_macs(args.width, args.patch)  # forward 2 FLOP/MAC, backward twice the forward
    infer_flop = 2 * encoder_macs(args.width, args.infer_size)
    rows = []
    for dtype in args.dtypes:
        peak = max(rounds[f"matmul_{dtype}"])
        for task, flop in (("train", train_flop), ("infer", infer_flop)):
            ours, theirs = max(rounds[f"ours_{dtype}_{task}"]), max(rounds[f"torch_{dtype}_{task}"])
            rows.append(
                {
                    "dtype": dtype,
                    "task": task,
                    "unit": "patches/s" if task == "train" else "images/s",
                    "ours": ours,
                    "torch": theirs,
                    "ratio": ours / theirs,
                    "ours_gflops": ours * flop / 1e9,
                    "matmul_peak_gflops": peak,
                    "fraction_of_peak": ours * flop / 1e9 / peak,
                }
            )
    return {"rows": rows, "rounds": rounds, "patches_per_step": patches, "train_gflop_per_patch": train_flop / 1e9}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1/8 width, 2 x 2 images x 16 crops of 32 px, 128 px inference: checks that it runs")
    parser.add_argument("--config", default="paper")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=list(PRECISIONS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed train steps (and inference batches) per round")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    full = {"width": 1.0, "classes": 5, "images_per_class": 8, "crops": 16, "patch": 64, "infer_size": 512, "infer_batch": 4, "matmul_n": 2048}
    quick = {"width": 0.125, "classes": 2, "images_per_class": 2, "crops": 16, "patch": 32, "infer_size": 128, "infer_batch": 2, "matmul_n": 512}
    vars(args).update(quick if args.quick else full)
    args.out = args.out or os.path.join(os.path.dirname(__file__), "results", f"vs_pytorch{'_quick' if args.quick else ''}.json")
    load_before = os.getloadavg()
    result = run(args)
    result.update({"args": vars(args), "load_average_before": load_before, "load_average_after": os.getloadavg(),
                   "cpus": os.cpu_count(), "tensorflow": tf.__version__, "torch": torch.__version__})
    print(f"width {args.width}, train: {args.classes} classes x {args.images_per_class} images x {args.crops} crops of "
          f"{args.patch} px; inference: {args.infer_batch} images of {args.infer_size} px; best of {args.rounds} "
          f"interleaved rounds; load average {load_before[0]:.1f} -> {result['load_average_after'][0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'dtype':9} {'task':6} {'unit':10} {'ours':>8} {'PyTorch':>8} {'ratio':>6} {'GFLOP/s':>8} {'peak':>7} {'of peak':>8}")
    for r in result["rows"]:
        print(f"{r['dtype']:9} {r['task']:6} {r['unit']:10} {r['ours']:8.1f} {r['torch']:8.1f} {r['ratio']:6.2f} "
              f"{r['ours_gflops']:8.1f} {r['matmul_peak_gflops']:7.1f} {r['fraction_of_peak']:8.0%}")
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
