"""The mini GAN zoo: generators trained here as GANs, split as the paper's Table 1 [5.2].

Layout of a zoo directory:
    zoo.json                       the manifest: preset, models, splits, real images
    build.json                     the preset being built (a resumed build must use the same one)
    models/<model-id>/             generator.keras, discriminator.keras, model.json (one folder per model)
    <split>/<arch>/<model-id>/     PNGs of a model; <split>/real/ real photo crops
    <split>.csv                    the split as a manifest: path,label,group,split
    preview.png                    a row of samples per model, real crops first

Splits: `train` (models of content A, seed 0, non-saturating loss) and the test splits `closed-set`
(other images of the train models), `cross-seed`, `cross-loss`, `cross-finetune` (train models finetuned
on content B) and `cross-dataset` (models trained on content B from scratch, with real crops of B).
`validation` holds generator models of their own (other seeds of the train architectures, on content A and
finetuned on B, with real crops of A and B): epochs and configs are chosen on it, never on a test split.
"""

import contextlib
import csv
import dataclasses
import json
import multiprocessing
import os
import queue
import signal
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

from tfdnadet.atomic import atomic_path, process_alive, write_json
from tfdnadet.errors import TfdnadetError

FORMAT = "tfdnadet-zoo"
REAL = "real"
TRAIN_SPLIT = "train"
VALIDATION_SPLIT = "validation"
TEST_SPLITS = ("closed-set", "cross-seed", "cross-loss", "cross-finetune", "cross-dataset")
TRAIN_CONTENT, OTHER_CONTENT = "A", "B"
TRAIN_SEED, TRAIN_LOSS = 0, "nonsaturating"
_PREVIEW_SAMPLES = 8


@dataclass(frozen=True)
class ZooPreset:
    name: str
    image_size: int  # generator output size (the paper's zoo is 128 px; 64 px keeps a CPU build short)
    width: int  # channels of the widest generator block (the discriminator gets twice as many)
    latent_dim: int
    batch_size: int
    steps: int  # GAN steps of a model trained from scratch
    finetune_steps: int  # further GAN steps of a train model on content B (cross-finetune)
    learning_rate: float
    architectures: tuple  # the classes besides real
    cross_seeds: tuple  # (architecture, seed): the train GAN retrained with another seed
    cross_losses: tuple  # (architecture, loss): the train GAN retrained with another loss
    photo_crops: int  # real crops per content set that the GANs learn from
    train_images: int  # images per train model, and real crops, in the train split
    test_images: int  # images per model, and real crops, in a test split
    # (architecture, seed): a validation model on content A and its finetune on content B; added later than
    # the rest, so a zoo built before it gains these models and keeps every other one (see _claim)
    validation_seeds: tuple = ()
    # the GAN steps' compute dtype: "mixed_bfloat16" runs the layers in bfloat16 with float32 weights, logits and
    # losses; the saved models compute in float32 either way, so sampling is the same code for every preset
    precision: str = "float32"


_PAPER_ARCHITECTURES = ("progan", "mmdgan", "sngan", "infomaxgan")  # Table 1
_ALL_ARCHITECTURES = (*_PAPER_ARCHITECTURES, "dcgan", "stylegan2")

# The zoo of the README's results: its recipe, seeds and images stay fixed so that results compare across releases.
_SMALL = ZooPreset(
    name="small", image_size=64, width=32, latent_dim=64, batch_size=16, steps=1200, finetune_steps=400,
    learning_rate=5e-4, architectures=_ALL_ARCHITECTURES, cross_seeds=tuple((a, 1) for a in _ALL_ARCHITECTURES),
    cross_losses=(("progan", "hinge"), ("mmdgan", "hinge"), ("infomaxgan", "lsgan"), ("dcgan", "lsgan")),
    photo_crops=4000, train_images=300, test_images=100,
    validation_seeds=tuple((a, 2) for a in _ALL_ARCHITECTURES),
)

PRESETS = {
    # CI and the quick start: the paper's three upsampling kinds (nearest, depth-to-space, bilinear).
    "tiny": ZooPreset(
        name="tiny", image_size=32, width=16, latent_dim=32, batch_size=16, steps=300, finetune_steps=100,
        learning_rate=5e-4, architectures=("progan", "mmdgan", "infomaxgan"), cross_seeds=(("progan", 1),),
        cross_losses=(("mmdgan", "hinge"),), photo_crops=1000, train_images=48, test_images=16,
        validation_seeds=(("progan", 2),),
    ),
    "small": _SMALL,
    # small's recipe and models with a third more GAN steps in bfloat16: GANs further on towards settled
    # architecture traces in about 90 minutes on 2 cores with --workers 2. The estimate: a plan of 28 x 1600 +
    # 12 x 500 = 50,800 GAN steps against small's 38,400 (x1.32); a bfloat16 step of a small-sized progan took
    # 0.84 x a float32 one (200 timed steps each, 0.099 vs 0.119 s, on this 2-core CPU under heavy load from
    # other jobs; width 48 would cost 1.9x per step, so steps, not width, grow), so x1.11 small's cost. small
    # ran at 480-540 GAN steps a minute with --workers 2 (an hour for its 28,800 steps before the validation
    # models; 27,600 steps in 51 minutes of a loaded rebuild), so medium's 42,700 float32-equivalent steps take
    # 80-90 minutes plus sampling.
    "medium": dataclasses.replace(_SMALL, name="medium", steps=1600, finetune_steps=500, precision="mixed_bfloat16"),
    "full": ZooPreset(
        name="full", image_size=64, width=64, latent_dim=128, batch_size=32, steps=6000, finetune_steps=2000,
        learning_rate=2e-4, architectures=_ALL_ARCHITECTURES,
        cross_seeds=tuple((a, seed) for a in _ALL_ARCHITECTURES for seed in (1, 2)),
        cross_losses=tuple((a, loss) for a in _ALL_ARCHITECTURES for loss in ("hinge", "lsgan")),
        photo_crops=8000, train_images=1000, test_images=250,
        validation_seeds=tuple((a, 3) for a in _ALL_ARCHITECTURES),
    ),
}


@dataclass(frozen=True)
class ZooModel:
    id: str
    architecture: str
    seed: int
    loss: str
    content: str  # the photos it learnt last
    origin: str  # "scratch", or the id of the train model it was finetuned from
    steps: int
    split: str

    @property
    def image_splits(self) -> tuple:
        """The splits holding this model's images: a train model also makes the closed-set test images."""
        return (TRAIN_SPLIT, "closed-set") if self.split == TRAIN_SPLIT else (self.split,)


def preset_names() -> list:
    return list(PRESETS)


def get_preset(name: str) -> ZooPreset:
    if name not in PRESETS:
        raise TfdnadetError(f"Unknown zoo preset. Received: preset={name!r}. Known: {', '.join(PRESETS)}")
    return PRESETS[name]


def plan_models(preset: ZooPreset) -> list:
    """Every model of a preset, train models first (the finetuned ones start from them)."""
    models = []
    for architecture in preset.architectures:
        models.append(_scratch(preset, architecture, TRAIN_SEED, TRAIN_LOSS, TRAIN_CONTENT, TRAIN_SPLIT))
    for architecture, seed in preset.cross_seeds:
        models.append(_scratch(preset, architecture, seed, TRAIN_LOSS, TRAIN_CONTENT, "cross-seed"))
    for architecture, loss in preset.cross_losses:
        models.append(_scratch(preset, architecture, TRAIN_SEED, loss, TRAIN_CONTENT, "cross-loss"))
    for architecture in preset.architectures:
        models.append(_scratch(preset, architecture, TRAIN_SEED, TRAIN_LOSS, OTHER_CONTENT, "cross-dataset"))
    for architecture, seed in preset.validation_seeds:
        models.append(_scratch(preset, architecture, seed, TRAIN_LOSS, TRAIN_CONTENT, VALIDATION_SPLIT))
    for parent in [m for m in models if m.split in (TRAIN_SPLIT, VALIDATION_SPLIT)]:
        split = "cross-finetune" if parent.split == TRAIN_SPLIT else VALIDATION_SPLIT
        models.append(_finetuned(preset, parent, split))
    return models


def _finetuned(preset, parent, split):
    return dataclasses.replace(
        parent, id=f"{parent.id}-ft{OTHER_CONTENT}", content=OTHER_CONTENT, origin=parent.id, steps=preset.finetune_steps, split=split
    )


def _scratch(preset, architecture, seed, loss, content, split):
    model_id = f"{architecture}-seed{seed}-{loss}-{content}"
    return ZooModel(model_id, architecture, seed, loss, content, "scratch", preset.steps, split)


def build_zoo(out_dir: str, preset: str = "tiny", workers: Optional[int] = None, on_progress=None) -> dict:
    """Builds (or finishes) a zoo in `out_dir` and returns its manifest (also written to zoo.json).

    Finished models are kept, so an interrupted build resumes where it stopped. `on_progress(model_id,
    step, total)` hears about GAN steps; with `workers` > 1 models train in that many processes (None:
    `default_workers()`).
    """
    settings = get_preset(preset)
    workers = default_workers() if workers is None else workers
    if not isinstance(workers, int) or workers < 1:
        raise TfdnadetError(f"--workers must be a positive integer. Received: {workers!r}")
    _claim(out_dir, settings)
    models = plan_models(settings)
    scratch = [m for m in models if m.origin == "scratch"]
    for phase in (scratch, [m for m in models if m.origin != "scratch"]):
        _run_models(out_dir, settings, phase, workers, on_progress)
    return _write_manifest(out_dir, settings, models)


def read_zoo(path: str) -> dict:
    """A zoo's manifest from its zoo.json or its directory; `root` is added (the zoo directory)."""
    manifest_path = os.path.join(path, "zoo.json") if os.path.isdir(path) else path
    if not os.path.isfile(manifest_path):
        raise TfdnadetError(f"No zoo manifest at {manifest_path}: build one with `tfdnadet zoo build --out DIR`.")
    try:
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
    except json.JSONDecodeError as exc:
        raise TfdnadetError(f"{manifest_path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise TfdnadetError(f"{manifest_path} is not a tfdnadet zoo manifest (no format '{FORMAT}').")
    return {**manifest, "root": os.path.dirname(os.path.abspath(manifest_path))}


def _claim(out_dir: str, preset: ZooPreset) -> None:
    """Records the preset in build.json; a resumed build must ask for the same one."""
    path = os.path.join(out_dir, "build.json")
    wanted = dataclasses.asdict(preset)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            existing = json.load(f)
        # A zoo built before `validation_seeds` (or `precision`) existed gains the validation models and keeps the rest.
        if {**json.loads(json.dumps(wanted)), **existing} != json.loads(json.dumps(wanted)):
            raise TfdnadetError(
                f"{out_dir} holds a zoo of preset '{existing.get('name')}' built with other settings: "
                f"choose another --out to build preset '{preset.name}'."
            )
        if existing == json.loads(json.dumps(wanted)):
            return
    os.makedirs(out_dir, exist_ok=True)
    write_json(path, wanted)


def default_workers() -> int:
    """Models trained at once unless told: one process per core, at most four (a small GAN's holds about 1.2 GB)."""
    return max(1, min(4, os.cpu_count() or 1))


def _run_models(out_dir, preset, models, workers, on_progress):
    if workers == 1 or len(models) < 2:
        for model in models:
            build_model(out_dir, preset, model, on_progress)
        return
    context = multiprocessing.get_context("spawn")  # TensorFlow does not survive a fork
    processes = min(workers, len(models))
    threads = max(1, (os.cpu_count() or 1) // processes)
    # Leaving the pool terminates its processes: Ctrl-C or a failed model stops every model at once (finished ones
    # are kept, each written atomically), where an executor would wait for all of them.
    with contextlib.ExitStack() as stack:
        with _children_ignore_ctrl_c():
            manager = stack.enter_context(context.Manager())
            pool = stack.enter_context(context.Pool(processes, _start_worker, (threads,)))
        events = manager.Queue()
        pending = {m.id: pool.apply_async(_build_model_in_worker, (out_dir, preset, m, events)) for m in models}
        training = {}  # model id -> the process training it
        while pending:
            next(iter(pending.values())).wait(0.2)
            _drain(events, on_progress, training)
            for model_id, result in list(pending.items()):
                if result.ready():
                    result.get()  # raises what the model's process raised
                    del pending[model_id]
                elif model_id in training and not process_alive(training[model_id]):  # a pool would wait for it forever
                    raise TfdnadetError(
                        f"The process training {model_id} ended before the model did (killed, e.g. out of memory?): "
                        "run again with fewer --workers; finished models are kept."
                    )
        _drain(events, on_progress, training)


@contextlib.contextmanager
def _children_ignore_ctrl_c():
    """Processes started inside ignore SIGINT from their first instruction (an ignored signal stays ignored across
    exec, and Python keeps it so): Ctrl-C reaches the whole process group, and a worker still importing TensorFlow
    would print a traceback. A Ctrl-C in this window of well under a second is lost; blocking it instead would not
    reach the children (a spawn unblocks every signal)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _start_worker(threads):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    for accelerator in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(accelerator, True)  # the processes share it


def _build_model_in_worker(out_dir, preset, model, events):
    events.put(("process", model.id, os.getpid()))
    build_model(out_dir, preset, model, lambda *progress: events.put(("progress", *progress)))


def _drain(events, on_progress, training):
    """Pass on the workers' progress; note which process trains which model."""
    while True:
        try:
            kind, model_id, *rest = events.get_nowait()
        except queue.Empty:
            return
        if kind == "process":
            training[model_id] = rest[0]
        elif on_progress:
            on_progress(model_id, *rest)


def build_model(out_dir: str, preset: ZooPreset, model: ZooModel, on_progress=None) -> None:
    """Trains one model unless models/<id> is complete, then writes any of its image folders still missing."""
    import keras

    from tfdnadet.zoo.generators import sample_images

    model_dir = os.path.join(out_dir, "models", model.id)
    if os.path.isfile(os.path.join(model_dir, "model.json")):
        if on_progress:
            on_progress(model.id, model.steps, model.steps)
        generator = None
    else:
        generator = _train_model(out_dir, preset, model, model_dir, on_progress)
    for split in model.image_splits:
        folder = os.path.join(out_dir, split, model.architecture, model.id)
        if os.path.isdir(folder):
            continue
        if generator is None:
            generator = keras.saving.load_model(os.path.join(model_dir, "generator.keras"), compile=False)
        count = preset.train_images if split == TRAIN_SPLIT else preset.test_images
        _write_pngs(sample_images(generator, count, seed=_stable_seed(model.id, split)), folder)


def _train_model(out_dir, preset, model, model_dir, on_progress):
    import keras

    from tfdnadet.zoo.generators import build_generator
    from tfdnadet.zoo.train import build_discriminator, refresh_batch_statistics, train_gan

    started = time.time()
    keras.utils.set_random_seed(model.seed)
    if model.origin == "scratch":
        generator = build_generator(model.architecture, preset.image_size, preset.latent_dim, preset.width, seed=model.seed)
        # A discriminator wider than the generator sees fine detail early, so short runs leave less noise.
        discriminator = build_discriminator(preset.image_size, 2 * preset.width, seed=model.seed)
    else:
        parent_dir = os.path.join(out_dir, "models", model.origin)
        generator = keras.saving.load_model(os.path.join(parent_dir, "generator.keras"), compile=False)
        discriminator = keras.saving.load_model(os.path.join(parent_dir, "discriminator.keras"), compile=False)
    if preset.precision != "float32":
        generator, discriminator = _recast(preset, model, generator, discriminator, preset.precision)
    history = train_gan(
        generator,
        discriminator,
        _photo_crops(preset, model.content),
        model.steps,
        loss=model.loss,
        seed=_stable_seed(model.id, "gan"),
        batch_size=preset.batch_size,
        learning_rate=preset.learning_rate,
        on_step=on_progress and (lambda step: on_progress(model.id, step, model.steps)),
    )
    if preset.precision != "float32":
        generator, discriminator = _recast(preset, model, generator, discriminator, "float32")
    refresh_batch_statistics(generator, seed=model.seed)
    info = {
        **dataclasses.asdict(model),
        "seconds": round(time.time() - started, 1),
        "final_d_loss": float(np.mean(history["d_loss"][-50:])),
        "final_g_loss": float(np.mean(history["g_loss"][-50:])),
    }
    with atomic_path(model_dir, directory=True) as temporary:
        generator.save(os.path.join(temporary, "generator.keras"))
        discriminator.save(os.path.join(temporary, "discriminator.keras"))
        write_json(os.path.join(temporary, "model.json"), info)
    return generator


def _recast(preset, model, generator, discriminator, policy):
    """The same generator and discriminator (weights copied) with layers that compute in dtype policy `policy`."""
    import keras

    from tfdnadet.zoo.generators import build_generator
    from tfdnadet.zoo.train import build_discriminator

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        pair = (
            build_generator(model.architecture, preset.image_size, preset.latent_dim, preset.width),
            build_discriminator(preset.image_size, 2 * preset.width),
        )
    finally:
        keras.config.set_dtype_policy(previous)
    for twin, original in zip(pair, (generator, discriminator)):
        twin.set_weights(original.get_weights())
    return pair


def _photo_crops(preset, content):
    from tfdnadet.zoo.photos import load_photos, random_crops

    return random_crops(list(load_photos(content)), preset.photo_crops, preset.image_size, seed=_stable_seed(content, "gan"))


def _real_folders(preset):
    """(split, content, count) of the real crops: content A beside the train models, B in cross-dataset,
    both in validation (whose models learnt A and B, so content alone cannot tell real from fake there)."""
    folders = [
        (TRAIN_SPLIT, TRAIN_CONTENT, preset.train_images),
        ("closed-set", TRAIN_CONTENT, preset.test_images),
        ("cross-dataset", OTHER_CONTENT, preset.test_images),
    ]
    if preset.validation_seeds:
        folders += [(VALIDATION_SPLIT, content, preset.test_images // 2) for content in (TRAIN_CONTENT, OTHER_CONTENT)]
    return folders


def _write_real_images(out_dir, preset):
    from tfdnadet.zoo.photos import load_photos, random_crops

    written = []
    for split, content, count in _real_folders(preset):
        folder = os.path.join(out_dir, split, REAL, content) if split == VALIDATION_SPLIT else os.path.join(out_dir, split, REAL)
        if not os.path.isdir(folder):
            crops = random_crops(list(load_photos(content)), count, preset.image_size, seed=_stable_seed(content, split))
            _write_pngs(crops, folder)
        written.append({"split": split, "content": content, "folder": os.path.relpath(folder, out_dir), "images": count})
    return written


def _write_manifest(out_dir, preset, models):
    real = _write_real_images(out_dir, preset)
    splits = {}
    for split in (TRAIN_SPLIT, VALIDATION_SPLIT, *TEST_SPLITS):
        rows = _split_rows(out_dir, split, models, real)
        if rows:
            _write_split_csv(os.path.join(out_dir, f"{split}.csv"), rows)
            labels = sorted({row[1] for row in rows})
            splits[split] = {"manifest": f"{split}.csv", "folder": split, "images": len(rows), "classes": labels}
    preview = os.path.join(out_dir, "preview.png")
    write_preview(out_dir, models, real, preview)
    manifest = {
        "format": FORMAT,
        "format_version": 1,
        "preset": dataclasses.asdict(preset),
        "image_size": preset.image_size,
        "class_names": [REAL, *sorted(preset.architectures)],
        "splits": splits,
        "models": _model_entries(out_dir, preset, models),
        "real": real,
        "preview": os.path.basename(preview),
    }
    write_json(os.path.join(out_dir, "zoo.json"), manifest)
    return {**manifest, "root": os.path.abspath(out_dir)}


def _model_entries(out_dir, preset, models):
    """model.json of each model, its image folders and the fidelity of its test images (see zoo.fidelity)."""
    from tfdnadet.zoo.fidelity import RealReference

    references = {}
    entries = []
    for model in models:
        with open(os.path.join(out_dir, "models", model.id, "model.json"), encoding="utf-8") as f:
            info = json.load(f)
        folders = {split: f"{split}/{model.architecture}/{model.id}" for split in model.image_splits}
        if model.content not in references:
            references[model.content] = RealReference(model.content, preset.image_size, seed=_stable_seed(model.content, "fidelity"))
        samples = _read_pngs(os.path.join(out_dir, folders[model.image_splits[-1]]))
        entries.append({**info, "folders": folders, "fidelity": references[model.content].fidelity(samples)})
    return entries


def _read_pngs(folder, limit=None):
    """The first `limit` (default: all) PNGs of a folder by name, uint8 [N, S, S, 3]."""
    names = sorted(n for n in os.listdir(folder) if n.endswith(".png"))[:limit]
    return np.stack([np.asarray(Image.open(os.path.join(folder, name)).convert("RGB")) for name in names])


def _split_rows(out_dir, split, models, real):
    """(relative path, label, group) of every image of a split, models first, then real crops."""
    folders = [(f"{split}/{m.architecture}/{m.id}", m.architecture, m.id) for m in models if split in m.image_splits]
    folders += [(r["folder"], REAL, f"{REAL}-{r['content']}") for r in real if r["split"] == split]
    rows = []
    for folder, label, group in folders:
        names = sorted(n for n in os.listdir(os.path.join(out_dir, folder)) if n.endswith(".png"))
        rows += [(f"{folder}/{name}", label, group) for name in names]
    return rows


def _write_split_csv(path, rows):
    split = os.path.splitext(os.path.basename(path))[0]
    with atomic_path(path) as temporary:
        with open(temporary, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label", "group", "split"])
            writer.writerows((*row, split) for row in rows)


def write_preview(out_dir: str, models: list, real: list, path: str) -> None:
    """One labelled row of samples per model after the real crops of the test splits; written atomically."""
    rows = [(f"real, content {r['content']}", os.path.join(out_dir, r["folder"])) for r in real if r["split"] != TRAIN_SPLIT]
    rows += [(m.id, os.path.join(out_dir, m.image_splits[-1], m.architecture, m.id)) for m in models]
    tiles = [_read_pngs(folder, _PREVIEW_SAMPLES) for _, folder in rows]
    size = tiles[0][0].shape[0]
    scale = max(1, 64 // size)
    cell, label_width, gap = size * scale, 260, 2
    canvas = Image.new("RGB", (label_width + _PREVIEW_SAMPLES * (cell + gap), len(rows) * (cell + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, ((label, _), images) in enumerate(zip(rows, tiles)):
        top = r * (cell + gap)
        draw.text((4, top + cell // 2 - 6), label, fill="black")
        for c, image in enumerate(images):
            tile = Image.fromarray(image).resize((cell, cell), Image.Resampling.NEAREST)
            canvas.paste(tile, (label_width + c * (cell + gap), top))
    with atomic_path(path) as temporary:
        canvas.save(temporary, format="PNG")


def _write_pngs(images, folder):
    with atomic_path(folder, directory=True) as temporary:
        for i, image in enumerate(images):
            Image.fromarray(image).save(os.path.join(temporary, f"{i:04d}.png"))


def _stable_seed(*parts) -> int:
    """A seed that names decide, the same in every process and Python run (unlike hash())."""
    return zlib.crc32("/".join(map(str, parts)).encode())
