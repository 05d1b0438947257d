"""GFD-Net: its parts, its losses, one training step, saving, and fingerprint pictures (tiny 32 px models)."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from test_models import check_keras_round_trip

from conftest import run_cli

from tfdnadet.config import load_config
from tfdnadet.precision import with_resolved_precision
from tfdnadet.data.preprocess import to_model_input
from tfdnadet.errors import TfdnadetError
from tfdnadet.export import export_model
from tfdnadet.explain.fingerprint import amplitude_spectrum, fingerprint_files, fingerprint_picture, write_fingerprints
from tfdnadet.models.detector import MULTICLASS, Detector, Preprocessing
from tfdnadet.inference import load_for_detector
from tfdnadet.models.model_dir import DECODER_FILE, load_detector, save_detector, write_decoder
from tfdnadet.models.encoder import Encoder
from tfdnadet.models.gfd import (
    AuxiliaryClassifier,
    FingerprintDecoder,
    PatchDiscriminator,
    check_unet_size,
    fingerprint_generator,
    load_fingerprint_generator,
    perceptual_features,
    unet_features,
)
from tfdnadet.training.gfd import build_gfd_model, random_real_images
from tfdnadet.training.callbacks import CHECKPOINT_WEIGHTS
from tfdnadet.training.trainer import _build, build_training_model, make_optimizer

WIDTH = 0.125
CLASSES = ["real", "progan", "sngan"]
LABELS = np.array([0, 0, 1, 1, 2, 2], np.int32)
PREPROCESSING = Preprocessing(base_size=32, input_size=32, patch_size=32, max_pixels=10**8)


def images(count=6, size=32, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (count, size, size, 3)).astype("float32")


@pytest.fixture(scope="module")
def perceptual_dir(tmp_path_factory):
    """A stand-in stage-1 model directory: its encoder serves the perceptual loss."""
    backbone = Encoder(width=WIDTH, name="encoder")
    path = str(tmp_path_factory.mktemp("stage1") / "model")
    save_detector(Detector(backbone, {}, {}, PREPROCESSING, {}), path)
    return path


def gfd_config(perceptual_dir=None, **overrides):
    values = {"model.width": WIDTH, "gfd.perceptual_model": perceptual_dir, "train.precision": "float32"}
    if perceptual_dir is None:
        values["gfd.perceptual_weight"] = 0
    return load_config("tiny", {**values, **overrides})


def build(config, classes=CLASSES, seed=0):
    keras.utils.set_random_seed(seed)
    config = with_resolved_precision(config)  # as the trainer builds it
    backbone = Encoder(width=config.model.width, dtype=config.train.precision, name="encoder")
    return build_gfd_model(config, classes, backbone, lambda: make_optimizer(config.train, config.train.learning_rate))


def test_parts_have_the_papers_shapes_and_round_trip(tmp_path):
    x = images()
    encoder = Encoder(width=WIDTH, name="encoder")
    decoder = FingerprintDecoder(WIDTH, name="decoder")
    maps = unet_features(encoder)(x)
    assert {name: tuple(m.shape[1:3]) for name, m in maps.items()} == {"block2": (16, 16), "block4": (8, 8), "block6": (4, 4), "block8": (2, 2)}
    fingerprint = keras.ops.convert_to_numpy(fingerprint_generator(encoder, decoder)(x))
    assert fingerprint.shape == x.shape and np.abs(fingerprint).max() <= 1.0
    discriminator = PatchDiscriminator(WIDTH, name="discriminator")
    assert discriminator(x).shape == (6, 4, 4, 1)  # one logit per patch
    auxiliary = AuxiliaryClassifier(len(CLASSES), WIDTH, name="auxiliary")
    assert auxiliary(x).shape == (6, 3)
    check_keras_round_trip(decoder, maps, tmp_path)
    check_keras_round_trip(discriminator, x, tmp_path)
    check_keras_round_trip(auxiliary, x, tmp_path)


def test_mixed_precision_keeps_fingerprints_and_logits_float32():
    x = images(2)
    encoder = Encoder(width=WIDTH, dtype="mixed_bfloat16")
    generator = fingerprint_generator(encoder, FingerprintDecoder(WIDTH, dtype="mixed_bfloat16"))
    for model in (generator, PatchDiscriminator(WIDTH, dtype="mixed_bfloat16"), AuxiliaryClassifier(3, WIDTH, dtype="mixed_bfloat16")):
        assert keras.backend.standardize_dtype(model(x).dtype) == "float32"


def test_fingerprints_are_added_to_real_images_of_the_batch():
    x = tf.constant(images())
    picked = random_real_images(x, tf.constant(LABELS), 0).numpy()
    real = x.numpy()[LABELS == 0]
    assert all(any(np.array_equal(p, r) for r in real) for p in picked)
    # A replica's share without real images draws from its own images.
    fakes = tf.constant(LABELS[2:])
    picked = random_real_images(x[2:], fakes, 0).numpy()
    assert all(any(np.array_equal(p, r) for r in x.numpy()[2:]) for p in picked)


def test_losses_are_the_papers_weighted_sum(perceptual_dir):
    model = build(gfd_config(perceptual_dir))
    logs = model.test_on_batch(images(), LABELS, return_dict=True)
    parts = {"latent_ce": 10.0, "adversarial": 0.1, "auxiliary_ce": 1.0, "perceptual": 1.0}
    assert set(parts) <= set(logs)
    assert all(np.isfinite(logs[name]) and logs[name] > 0 for name in parts)
    np.testing.assert_allclose(logs["loss"], sum(w * logs[name] for name, w in parts.items()), rtol=1e-5)
    # Untrained heads on three classes: cross-entropies near log(3).
    assert abs(logs["latent_ce"] - np.log(3)) < 0.5 and abs(logs["auxiliary_ce"] - np.log(3)) < 0.5


@pytest.fixture(scope="module")
def trained(perceptual_dir):
    """The full model (G+D+C+perceptual) under mixed_bfloat16 and a strategy, before and after one fit step."""
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        model = build(gfd_config(perceptual_dir, **{"train.precision": "mixed_bfloat16"}))
    parts = {name: getattr(model, name) for name in ("backbone", "decoder", "classifier", "discriminator", "auxiliary", "perceptual")}
    before = {name: [w.numpy().copy() for w in part.weights] for name, part in parts.items()}
    history = model.fit(tf.data.Dataset.from_tensor_slices((images(), LABELS)).batch(6), epochs=1, verbose=0)
    return model, parts, before, {name: values[-1] for name, values in history.history.items()}


def test_one_train_step_moves_every_trainable_part(trained):
    model, parts, before, logs = trained
    assert {"discriminator", "auxiliary_fit", "perceptual"} <= set(logs) and all(np.isfinite(v) for v in logs.values())
    for name, part in parts.items():
        trainable = {id(w) for w in part.trainable_weights}
        moved = [not np.array_equal(a, w.numpy()) for a, w in zip(before[name], part.weights) if id(w) in trainable]
        assert any(moved) == (name != "perceptual"), name  # F is frozen
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before["perceptual"], model.perceptual.weights))
    assert int(model.optimizer.iterations.numpy()) == 1 and int(model.discriminator_optimizer.iterations.numpy()) == 1


@pytest.mark.parametrize(
    "weights, present",
    [
        ({"gfd.adversarial_weight": 0, "gfd.auxiliary_weight": 0}, set()),  # G
        ({"gfd.auxiliary_weight": 0}, {"decoder", "discriminator"}),  # G+D
        ({"gfd.adversarial_weight": 0}, {"decoder", "auxiliary"}),  # G+C
    ],
)
def test_ablations_leave_their_parts_out(weights, present):
    model = build(gfd_config(**weights))
    assert {name for name in ("decoder", "discriminator", "auxiliary", "perceptual") if getattr(model, name) is not None} == present
    assert (model.discriminator_optimizer is None) == (not present - {"decoder"})


def test_the_generator_alone_trains_its_encoder_and_head():
    model = build(gfd_config(**{"gfd.adversarial_weight": 0, "gfd.auxiliary_weight": 0}))
    model.run_eagerly = True  # one tiny step: faster than tracing it
    before = [w.numpy().copy() for w in model.generator_variables]
    logs = model.train_on_batch(images(), LABELS, return_dict=True)
    assert set(logs) == {"loss", "accuracy", "latent_ce"} and np.isclose(logs["loss"], 10 * logs["latent_ce"])
    assert all(not np.array_equal(a, w.numpy()) for a, w in zip(before, model.generator_variables) if w.name == "kernel")


def test_float16_steps_scale_their_losses():
    model = build(gfd_config(**{"train.precision": "mixed_float16"}))
    model.run_eagerly = True
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(model.discriminator_optimizer, keras.optimizers.LossScaleOptimizer)
    scale = float(model.optimizer.initial_scale)
    for _ in range(2):
        logs = model.train_on_batch(images(), LABELS, return_dict=True)
    # The first steps' float16 gradients overflow at the initial scale: the step is skipped and the scale lowered.
    assert all(np.isfinite(v) for v in logs.values()) and float(model.optimizer.dynamic_scale.numpy()) < scale


def test_save_load_gives_the_same_predictions_and_fingerprints(trained, tmp_path):
    model = trained[0]
    detector = Detector(model.backbone, {}, {}, PREPROCESSING, {})
    detector.add_head(MULTICLASS, model.classifier, {"class_names": CLASSES})
    path = str(tmp_path / "model")
    save_detector(detector, path)
    write_decoder(path, model.decoder)
    loaded = load_detector(path)
    x = images(4, seed=1)
    np.testing.assert_array_equal(detector.predict(x)[MULTICLASS], loaded.predict(x)[MULTICLASS])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.softmax(model(x))), loaded.predict(x)[MULTICLASS], atol=1e-3)  # G_enc + H
    original = fingerprint_generator(model.backbone, model.decoder)(x)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(original), keras.ops.convert_to_numpy(load_fingerprint_generator(path, loaded.backbone)(x)))


def test_fingerprint_pictures_and_spectrum():
    fingerprint = np.zeros((16, 16, 3), np.float32)
    fingerprint[::2] = 0.01  # stripes of period 2 rows
    picture = fingerprint_picture(fingerprint - 0.005)
    assert picture.dtype == np.uint8 and {picture.min(), picture.max()} == {0, 255}
    spectrum = amplitude_spectrum(fingerprint)
    assert spectrum.shape == (16, 16) and spectrum.max() == 1.0
    assert np.unravel_index(np.argmax(spectrum), spectrum.shape) == (0, 8)  # the Nyquist row frequency, centred layout


def test_write_fingerprints_one_png_per_image_plus_classes_and_sheet(tmp_path):
    fingerprints = np.random.default_rng(0).normal(0, 0.02, (5, 32, 32, 3)).astype("float32")
    paths = ["a/x.png", "b/x.png", "c/y.png", "d/z.jpg", "e/w.png"]
    groups = ["progan", "progan", "real", "sngan", "real"]
    result = write_fingerprints(fingerprints, paths, groups, str(tmp_path / "out"))
    pngs = sorted(os.listdir(tmp_path / "out" / "fingerprints"))
    assert len(pngs) == 5 and pngs[0] == "0000_x.png" and pngs[1] == "0001_x.png"
    assert Image.open(result.fingerprints[0]["png"]).size == (32, 32)
    assert sorted(result.classes) == ["progan", "real", "sngan"] and result.classes["real"]["images"] == 2
    kinds = ("mean", "spectrum", "own", "own_spectrum")
    assert sorted(os.listdir(tmp_path / "out" / "classes")) == sorted(f"{g}_{kind}.png" for g in ("progan", "real", "sngan") for kind in kinds)
    # A class's own part is its mean minus the mean of all images: a pattern every fingerprint shares cancels.
    shared = np.broadcast_to(np.sin(np.arange(32) * np.pi / 2)[None, None, :, None], fingerprints.shape).astype("float32")
    again = write_fingerprints(fingerprints + shared, paths, groups, str(tmp_path / "again"))
    for group, files in result.classes.items():
        own, own_again = (np.asarray(Image.open(f), np.float32) for f in (files["own"], again.classes[group]["own"]))
        assert np.abs(own - own_again).max() <= 1  # the same picture, up to rounding
        assert np.abs(np.asarray(Image.open(files["mean"]), np.float32) - np.asarray(Image.open(again.classes[group]["mean"]), np.float32)).max() > 50
    assert os.path.getsize(result.contact_sheet) > 0 and not [n for n in os.listdir(tmp_path / "out") if n.startswith(".")]


def test_fingerprint_files_from_a_model_directory(trained, gan_images, tmp_path):
    model = trained[0]
    detector = Detector(model.backbone, {}, {}, PREPROCESSING, {})
    detector.add_head(MULTICLASS, model.classifier, {"class_names": CLASSES})
    path = str(tmp_path / "model")
    save_detector(detector, path)
    folder = os.path.join(gan_images["root"], "progan")
    with pytest.raises(TfdnadetError, match="only models trained with --method gfd"):
        fingerprint_files(detector, path, [folder], str(tmp_path / "out"))
    write_decoder(path, model.decoder)
    result, failures = fingerprint_files(load_detector(path), path, [folder, str(tmp_path / "missing.png")], str(tmp_path / "out"))
    assert failures == [(str(tmp_path / "missing.png"), "no such file or folder")]
    assert len(result.fingerprints) == len(os.listdir(tmp_path / "out" / "fingerprints")) > 0
    assert os.path.isfile(result.contact_sheet) and set(result.classes) <= set(CLASSES)
    by_folder, _ = fingerprint_files(load_detector(path), path, [folder], str(tmp_path / "by_folder"), group_by="folder")
    assert set(by_folder.classes) == {os.path.basename(os.path.dirname(item["path"])) for item in by_folder.fingerprints} == set(os.listdir(folder))
    with pytest.raises(TfdnadetError, match="Unknown fingerprint grouping.*Known: predicted, folder"):
        fingerprint_files(load_detector(path), path, [folder], str(tmp_path / "out"), group_by="truth")


def test_bad_setups_are_clear_errors(perceptual_dir, tmp_path):
    with pytest.raises(TfdnadetError, match="no class 'real'"):
        build(gfd_config(), classes=["progan", "sngan"])
    with pytest.raises(TfdnadetError, match="needs gfd.perceptual_model"):
        build(load_config("tiny", {"model.width": WIDTH}))
    with pytest.raises(TfdnadetError, match="Perceptual model not found"):
        perceptual_features(str(tmp_path / "nothing"))
    with pytest.raises(TfdnadetError, match="multiple of 16"):
        check_unet_size(40)
    with pytest.raises(TfdnadetError, match="needs the dnadet encoder"):
        unet_features(PatchDiscriminator(WIDTH))
    with pytest.raises(TfdnadetError, match="gfd.latent_weight must be > 0"):
        load_config("tiny", {"gfd.latent_weight": 0})
    with pytest.raises(TfdnadetError, match="Unknown config key 'gfd.vgg'"):
        load_config("tiny", {"gfd.vgg": 1})


def test_perceptual_features_from_a_stage1_directory_or_a_keras_file(perceptual_dir, tmp_path):
    x = images(2)
    from_dir = perceptual_features(perceptual_dir)
    assert from_dir(x).shape == (2, 8, 8, 16) and not from_dir.trainable_weights  # block 4 of a width-1/8 encoder
    path = str(tmp_path / "features.keras")
    from_dir.save(path)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(from_dir(x)), keras.ops.convert_to_numpy(perceptual_features(path)(x)))


def test_train_stage2_gfd_resume_predict_fingerprint_and_export(gan_images, perceptual_dir, tmp_path, monkeypatch, capsys):
    """--method gfd through the CLI (--init gives F), --resume restores both Adams, then predict, fingerprint, report, export."""
    run = tmp_path / "run"
    train = ["train-stage2", "--data", gan_images["train"], "--out", run, "--method", "gfd", "--steps-per-epoch", 2]
    code, _, err = run_cli([*train, "--config", "tiny", "--init", perceptual_dir, "--epochs", 1], monkeypatch, capsys)
    assert code == 0, err
    saved = load_config(str(run / "config.yaml"))
    assert saved.train.loss == "gfd" and saved.gfd.perceptual_model == os.path.abspath(perceptual_dir)
    code, _, err = run_cli([*train, "--resume", "--epochs", 2], monkeypatch, capsys)  # with the run's config.yaml
    assert code == 0, err
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 3 and {"latent_ce", "discriminator", "val_loss"} <= set(history[0].split(","))
    assert os.path.isfile(run / "curves.png")

    # The checkpoint holds both optimizers, each at 4 steps (2 epochs x 2).
    resumed = build_training_model(saved, json.loads((run / "run.json").read_text())["class_names"])
    _build(resumed, tf.data.Dataset.from_tensors((tf.zeros([1, 64, 64, 3]), tf.zeros([1], tf.int32))))
    resumed.load_weights(str(run / "checkpoint" / CHECKPOINT_WEIGHTS))
    assert int(resumed.optimizer.iterations.numpy()) == 4 and int(resumed.discriminator_optimizer.iterations.numpy()) == 4

    model_dir = str(run / "model")
    assert os.path.isfile(os.path.join(model_dir, DECODER_FILE))
    pngs = [os.path.join(gan_images["root"], arch, "seed2", "0003.png") for arch in ("progan", "mmdgan", "dcgan")]
    code, out, err = run_cli(["predict", model_dir, *pngs, "--json"], monkeypatch, capsys)
    assert code == 0, err
    assert [json.loads(line)["path"] for line in out.splitlines()] == pngs
    code, out, err = run_cli(["fingerprint", model_dir, *pngs, "--out", tmp_path / "fp"], monkeypatch, capsys)
    assert code == 0, err
    assert len(json.loads(out)["fingerprints"]) == 3 and os.path.isfile(tmp_path / "fp" / "contact_sheet.png")
    code, _, err = run_cli(["evaluate", model_dir, "--data", gan_images["test"], "--report", tmp_path / "report"], monkeypatch, capsys)
    assert code == 0, err
    assert "## GFD-Net fingerprints" in (tmp_path / "report" / "report.md").read_text()
    assert sorted(os.listdir(tmp_path / "report" / "fingerprints" / "classes")) == sorted(
        f"{name}_{kind}.png" for name in ("dcgan", "mmdgan", "progan", "real") for kind in ("mean", "spectrum", "own", "own_spectrum")
    )

    detector = load_detector(model_dir)
    loaded = load_for_detector(detector, pngs)
    batch = to_model_input(loaded.images, detector.preprocessing.input_size)
    served = tf.saved_model.load(export_model(model_dir, "gfd", str(tmp_path / "served")).path)
    from_batch = served.signatures["predict_images"](images=batch)["multiclass_probabilities"].numpy()
    np.testing.assert_allclose(from_batch, detector.predict(batch)[MULTICLASS], atol=1e-5)
