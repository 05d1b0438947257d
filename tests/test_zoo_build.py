"""The mini GAN zoo: GAN training pieces, the preset's model plan, the built tiny zoo and its resumption."""

import csv
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import run_cli
from tfdnadet.data.sources import read_dataset
from tfdnadet.errors import TfdnadetError
from tfdnadet.zoo import build, fidelity, train
from tfdnadet.zoo.generators import build_generator, sample_images
from tfdnadet.zoo.photos import load_photos, random_crops

# === GAN training pieces ===


def test_gan_losses_on_known_logits():
    real, fake = tf.constant([[2.0], [0.0]]), tf.constant([[-1.0], [1.0]])
    d_loss, g_loss = train.gan_losses("nonsaturating", real, fake)
    softplus = lambda x: np.log1p(np.exp(x))  # noqa: E731
    np.testing.assert_allclose(d_loss, np.mean(softplus(-np.array([2.0, 0.0]))) + np.mean(softplus(np.array([-1.0, 1.0]))), rtol=1e-6)
    np.testing.assert_allclose(g_loss, np.mean(softplus(np.array([1.0, -1.0]))), rtol=1e-6)
    d_loss, g_loss = train.gan_losses("hinge", real, fake)
    np.testing.assert_allclose([d_loss, g_loss], [(0 + 1) / 2 + (0 + 2) / 2, 0.0], rtol=1e-6)
    d_loss, g_loss = train.gan_losses("lsgan", real, fake)
    np.testing.assert_allclose([d_loss, g_loss], [0.5 * (1 + 1) / 2 + 0.5 * (1 + 1) / 2, 0.5 * (4 + 0) / 2], rtol=1e-6)
    with pytest.raises(ValueError, match=r"loss='wgan'.*Known: \['nonsaturating', 'hinge', 'lsgan'\]"):
        train.gan_losses("wgan", real, fake)


def test_discriminator_shape_and_minibatch_stddev(tmp_path):
    model = train.build_discriminator(32, width=16, seed=3)
    images = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype("float32")
    logits = model(images)
    assert logits.shape == (4, 1) and logits.dtype == tf.float32
    np.testing.assert_array_equal(logits, train.build_discriminator(32, width=16, seed=3)(images))
    # The extra channel is the batch's mean feature spread: about zero when every sample is the same.
    x = np.random.default_rng(1).normal(size=(3, 4, 4, 5)).astype("float32")
    out = train.MinibatchStddev(name="mbstd")(x).numpy()
    assert out.shape == (3, 4, 4, 6)
    np.testing.assert_allclose(out[..., -1], np.mean(np.std(x, axis=0)), rtol=1e-5)
    assert train.MinibatchStddev(name="mbstd")(np.repeat(x[:1], 3, axis=0)).numpy()[..., -1].max() < 1e-3
    model.save(tmp_path / "d.keras")
    np.testing.assert_allclose(keras.saving.load_model(tmp_path / "d.keras", safe_mode=True)(images), logits, atol=1e-6)


def test_train_gan_moves_the_generator_towards_the_photos():
    photos = random_crops(list(load_photos("A")), 64, 16, seed=0)
    generator = build_generator("progan", 16, latent_dim=8, width=16, seed=0)
    before = sample_images(generator, 32, seed=1).astype(float)
    steps = []
    history = train.train_gan(
        generator, train.build_discriminator(16, 32, seed=0), photos, 40, batch_size=8, learning_rate=2e-3, on_step=steps.append
    )
    after = sample_images(generator, 32, seed=1).astype(float)
    assert steps == list(range(1, 41)) and len(history["d_loss"]) == len(history["g_loss"]) == 40
    assert np.all(np.isfinite(history["d_loss"]))
    # Untrained ProGAN output is grey noise; after training its colour statistics are closer to the photos'.
    target = photos.reshape(-1, 3).astype(float).mean(axis=0)
    assert np.abs(after.reshape(-1, 3).mean(axis=0) - target).sum() < np.abs(before.reshape(-1, 3).mean(axis=0) - target).sum()


def test_refresh_batch_statistics_makes_inference_match_a_training_pass():
    generator = build_generator("sngan", 16, latent_dim=8, width=16, seed=0)
    latents = np.random.default_rng(7).standard_normal((256, 8)).astype("float32")
    train.refresh_batch_statistics(generator, seed=7)
    np.testing.assert_allclose(generator(latents, training=False), generator(latents, training=True), atol=1e-4)
    assert all(norm.momentum == 0.99 for norm in generator.layers if isinstance(norm, keras.layers.BatchNormalization))


def test_upsampling_kind_alone_changes_the_output():
    """SNGAN and InfoMaxGAN share blocks and, with one seed, weights: only nearest vs bilinear differs."""
    nearest, bilinear = (build_generator(name, 16, latent_dim=8, width=16, seed=5) for name in ("sngan", "infomaxgan"))
    for a, b in zip(nearest.get_weights(), bilinear.get_weights()):
        np.testing.assert_array_equal(a, b)
    z = np.random.default_rng(0).standard_normal((2, 8)).astype("float32")
    assert np.abs(nearest(z, training=False) - bilinear(z, training=False)).mean() > 1e-3


# === The model plan ===


@pytest.mark.parametrize("preset", build.preset_names())
def test_plan_follows_table_1(preset):
    settings = build.get_preset(preset)
    models = build.plan_models(settings)
    ids = [m.id for m in models]
    assert len(ids) == len(set(ids))
    by_split = {split: [m for m in models if m.split == split] for split in (build.TRAIN_SPLIT, *build.TEST_SPLITS[1:])}
    train_models = {m.architecture: m for m in by_split["train"]}
    assert sorted(train_models) == sorted(settings.architectures)
    assert {(m.seed, m.loss, m.content, m.origin) for m in by_split["train"]} == {(0, "nonsaturating", "A", "scratch")}
    for m in by_split["cross-seed"]:
        assert (m.loss, m.content) == ("nonsaturating", "A") and m.seed != 0
    for m in by_split["cross-loss"]:
        assert (m.seed, m.content) == (0, "A") and m.loss in ("hinge", "lsgan")
    for m in by_split["cross-dataset"]:
        assert (m.seed, m.loss, m.content, m.origin) == (0, "nonsaturating", "B", "scratch")
    for m in by_split["cross-finetune"]:
        parent = train_models[m.architecture]
        assert (m.origin, m.content, m.steps) == (parent.id, "B", settings.finetune_steps)
        assert ids.index(parent.id) < ids.index(m.id)
    validation = [m for m in models if m.split == build.VALIDATION_SPLIT]
    assert len(validation) == 2 * len(settings.validation_seeds) > 0
    test_seeds = {(m.architecture, m.seed) for m in models if m.split != build.VALIDATION_SPLIT}
    for m in validation:  # generator models of their own: no test split shares a seed with them
        assert (m.architecture, m.seed) not in test_seeds
        assert (m.content, m.origin) in {("A", "scratch"), ("B", f"{m.architecture}-seed{m.seed}-nonsaturating-A")}
    assert all(by_split.values())


def test_unknown_preset_and_bad_workers(tmp_path):
    with pytest.raises(TfdnadetError, match=r"preset='huge'. Known: tiny, small, medium, full"):
        build.build_zoo(str(tmp_path), "huge")
    with pytest.raises(TfdnadetError, match="--workers"):
        build.build_zoo(str(tmp_path), "tiny", workers=0)


# === The built tiny zoo ===


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tiny_zoo_manifest_and_files(tiny_zoo):
    root, preset = tiny_zoo["root"], build.get_preset("tiny")
    with open(os.path.join(root, "zoo.json")) as f:
        on_disk = json.load(f)
    assert on_disk["format"] == "tfdnadet-zoo" and on_disk["preset"]["name"] == "tiny"
    assert on_disk["class_names"] == ["real", *sorted(preset.architectures)]
    models = {m["id"]: m for m in on_disk["models"]}
    assert sorted(models) == sorted(m.id for m in build.plan_models(preset))
    for entry in models.values():
        assert {"architecture", "seed", "loss", "content", "origin", "steps", "split", "seconds", "folders"} <= set(entry)
        assert os.path.isfile(os.path.join(root, "models", entry["id"], "generator.keras"))
        for split, folder in entry["folders"].items():
            count = preset.train_images if split == "train" else preset.test_images
            pngs = sorted(os.listdir(os.path.join(root, folder)))
            assert len(pngs) == count
            image = np.asarray(Image.open(os.path.join(root, folder, pngs[0])))
            assert image.shape == (32, 32, 3) and image.std() > 5  # not a flat colour
        score = entry["fidelity"]
        assert score["images"] == preset.test_images and 0.2 < score["diversity"] < 2
        assert 0 < score["real_frechet"] < score["frechet"] < 1e4 and np.isfinite(entry["final_g_loss"])
    preview = Image.open(os.path.join(root, on_disk["preview"]))
    assert preview.size[1] > 64 * (len(models) + 2)  # a row per model plus two rows of real crops


def test_tiny_zoo_splits_follow_table_1(tiny_zoo):
    root, splits = tiny_zoo["root"], tiny_zoo["splits"]
    assert list(splits) == ["train", "validation", *build.TEST_SPLITS]
    assert splits["validation"]["classes"] == ["progan", "real"]
    architectures = sorted(build.get_preset("tiny").architectures)
    everything = sorted(["real", *architectures])
    assert splits["train"]["classes"] == splits["closed-set"]["classes"] == splits["cross-dataset"]["classes"] == everything
    assert "real" not in splits["cross-seed"]["classes"] + splits["cross-loss"]["classes"] + splits["cross-finetune"]["classes"]
    models = {m["id"]: m for m in tiny_zoo["models"]}
    for split, info in splits.items():
        rows = _csv_rows(os.path.join(root, info["manifest"]))
        assert len(rows) == info["images"] and {r["split"] for r in rows} == {split}
        real_groups = {"cross-dataset": {"real-B"}, "validation": {"real-A", "real-B"}}.get(split, {"real-A"})
        # validation's models learnt A and B, so it holds real crops of both
        assert {r["group"] for r in rows if r["label"] == "real"} in (set(), real_groups)
        for row in rows:
            if row["label"] == "real":
                assert row["group"] in real_groups
            else:
                model = models[row["group"]]
                assert model["architecture"] == row["label"] and split in model["folders"]
        # The manifests and the split folders are data sets that training and evaluation read directly.
        assert len(read_dataset(os.path.join(root, info["manifest"]))) == len(rows)
        assert read_dataset(os.path.join(root, split)).class_names == info["classes"]
    train_files = {r["path"] for r in _csv_rows(os.path.join(root, "train.csv"))}
    closed_files = {r["path"] for r in _csv_rows(os.path.join(root, "closed-set.csv"))}
    assert not train_files & closed_files


def test_rebuild_resumes_and_redraws_only_what_is_missing(tiny_zoo, tmp_path):
    root = str(tmp_path / "zoo")
    shutil.copytree(tiny_zoo["root"], root)
    lost = next(m for m in tiny_zoo["models"] if m["split"] == "cross-seed")
    lost_folder = os.path.join(root, lost["folders"]["cross-seed"])
    kept = sorted(os.listdir(lost_folder))
    first_png = open(os.path.join(lost_folder, kept[0]), "rb").read()
    shutil.rmtree(lost_folder)
    model_json = os.path.join(root, "models", lost["id"], "model.json")
    stamp = os.stat(model_json).st_mtime_ns
    events = []
    rebuilt = build.build_zoo(root, "tiny", on_progress=lambda *event: events.append(event))
    # Every model was already trained: each reports its last step once and nothing trains again.
    assert sorted(events) == sorted((m["id"], m["steps"], m["steps"]) for m in tiny_zoo["models"])
    assert os.stat(model_json).st_mtime_ns == stamp
    assert sorted(os.listdir(lost_folder)) == kept
    assert open(os.path.join(lost_folder, kept[0]), "rb").read() == first_png  # redrawn from the same latents
    assert rebuilt["splits"] == tiny_zoo["splits"]


def test_a_zoo_directory_keeps_its_preset(tiny_zoo, tmp_path, monkeypatch, capsys):
    root = tmp_path / "zoo"
    root.mkdir()
    shutil.copy(os.path.join(tiny_zoo["root"], "build.json"), root / "build.json")
    code, _, err = run_cli(["zoo", "build", "--out", root, "--preset", "small"], monkeypatch, capsys)
    assert code == 1 and "holds a zoo of preset 'tiny'" in err and "Traceback" not in err
    code, _, err = run_cli(["zoo", "build", "--out", root, "--preset", "huge"], monkeypatch, capsys)
    assert code == 1 and "Unknown zoo preset" in err


def test_a_zoo_built_before_validation_models_existed_gains_them(tmp_path):
    preset = build.get_preset("tiny")
    older = {k: v for k, v in dataclasses.asdict(preset).items() if k != "validation_seeds"}
    (tmp_path / "build.json").write_text(json.dumps(older))
    build._claim(str(tmp_path), preset)
    assert json.loads((tmp_path / "build.json").read_text())["validation_seeds"] == [["progan", 2]]
    changed = {**older, "steps": 1}
    (tmp_path / "build.json").write_text(json.dumps(changed))
    with pytest.raises(TfdnadetError, match="built with other settings"):
        build._claim(str(tmp_path), preset)


def test_read_zoo_rejects_what_is_not_a_zoo(tmp_path):
    with pytest.raises(TfdnadetError, match="No zoo manifest"):
        build.read_zoo(str(tmp_path))
    (tmp_path / "zoo.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(TfdnadetError, match="not a tfdnadet zoo manifest"):
        build.read_zoo(str(tmp_path / "zoo.json"))
    (tmp_path / "zoo.json").write_text("{broken")
    with pytest.raises(TfdnadetError, match="not valid JSON"):
        build.read_zoo(str(tmp_path))


def test_workers_train_models_in_parallel_processes(tmp_path):
    preset = dataclasses.replace(
        build.get_preset("tiny"), image_size=8, width=16, batch_size=4, steps=3, photo_crops=16, train_images=2, test_images=2
    )
    models = [m for m in build.plan_models(preset) if m.split == "cross-dataset"][:2]
    events = []
    build._run_models(str(tmp_path), preset, models, 2, lambda *event: events.append(event))
    for model in models:
        assert (model.id, 3, 3) in events and [e[1] for e in events if e[0] == model.id] == [1, 2, 3]
        assert len(os.listdir(tmp_path / "cross-dataset" / model.architecture / model.id)) == 2
        with open(tmp_path / "models" / model.id / "model.json") as f:
            assert json.load(f)["steps"] == 3


def test_a_failing_model_process_stops_the_build_with_its_error(tmp_path):
    preset = dataclasses.replace(build.get_preset("tiny"), image_size=8, width=16, batch_size=4, steps=3, photo_crops=16)
    good, bad = [m for m in build.plan_models(preset) if m.split == "cross-dataset"][:2]
    with pytest.raises(ValueError, match="Unknown generator architecture. Received: name='nosuch'"):
        build._run_models(str(tmp_path), preset, [good, dataclasses.replace(bad, architecture="nosuch")], 2, None)


def test_ctrl_c_stops_every_model_process_at_once(tmp_path):
    """Ctrl-C reaches the command's whole process group: the build ends within seconds, not after its models."""
    out = tmp_path / "zoo"
    process = _start_tiny_build(out)
    try:
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)  # a tiny zoo takes minutes: it did not finish its models first
        assert process.returncode == 130 and "Traceback" not in stderr
        command = f"tfdnadet zoo build --preset tiny --workers 2 --out {out}"
        assert stderr.strip().splitlines()[-1] == f"interrupted: {command} again continues; finished models are kept."
        _wait_for_group_to_end(process.pid)
        assert not (out / "zoo.json").exists()
    finally:
        _kill_group(process.pid)


def test_ctrl_c_while_the_model_processes_start_gives_no_traceback(tmp_path):
    """Pressed while the workers still import TensorFlow, Ctrl-C reaches them too: they must not print a traceback."""
    process = _start_tiny_build(tmp_path / "zoo", settle=1)
    try:
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130 and stderr.strip().splitlines()[-1].startswith("interrupted: ")
        assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
        _wait_for_group_to_end(process.pid)
    finally:
        _kill_group(process.pid)


def test_sigterm_to_the_command_alone_stops_its_model_processes(tmp_path):
    """`kill PID` (or `timeout`, a job scheduler) reaches only the command: left to the default it died at once and
    its model processes trained on, orphaned, into the zoo a rerun would build."""
    process = _start_tiny_build(tmp_path / "zoo")
    try:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130 and "Traceback" not in stderr
        assert stderr.strip().splitlines()[-1].endswith(" again continues; finished models are kept.")
        _wait_for_group_to_end(process.pid)
    finally:
        _kill_group(process.pid)


def test_a_killed_model_process_ends_the_build_with_a_clear_error(tmp_path):
    """A worker killed from outside (e.g. for memory) ends the command at once, where a pool would wait forever."""
    process = _start_tiny_build(tmp_path / "zoo")
    try:
        os.kill(_child_training_a_model(process.pid), signal.SIGKILL)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 1 and "Traceback" not in stderr
        assert "error: The process training" in stderr and "run again with fewer --workers" in stderr
        _wait_for_group_to_end(process.pid)
    finally:
        _kill_group(process.pid)


def _start_tiny_build(out, settle=20):
    """`tfdnadet zoo build --preset tiny --workers 2` in a process group of its own, `settle` seconds after the build
    began (by then its models are training)."""
    command = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # as in a terminal
        f"sys.argv = ['tfdnadet', 'zoo', 'build', '--preset', 'tiny', '--workers', '2', '--out', {str(out)!r}]\n"
        "from tfdnadet.cli import main; main()"
    )
    process = subprocess.Popen([sys.executable, "-c", command], stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (out / "build.json").is_file() and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(settle)
    return process


def _child_training_a_model(parent: int) -> int:
    """The child process of `parent` that has used the most CPU time, once that is more than importing TensorFlow
    takes (a worker killed before it takes a model is only replaced by the pool)."""
    deadline = time.monotonic() + 120
    while True:
        children = _cpu_seconds_of_children(parent)
        busiest = max(children, key=children.get)
        if children[busiest] > 30 or time.monotonic() > deadline:
            return busiest
        time.sleep(1)


def _cpu_seconds_of_children(parent: int) -> dict:
    children = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):  # it ended meanwhile
            continue
        if int(fields[1]) == parent:  # fields after the name: state, ppid, ..., utime (12th), stime
            children[int(entry)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return children


def _wait_for_group_to_end(group: int) -> None:
    deadline = time.monotonic() + 20
    while _group_alive(group) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _group_alive(group)


def _kill_group(group: int) -> None:
    if _group_alive(group):
        os.killpg(group, signal.SIGKILL)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


# === Fidelity ===


def test_frechet_distance_of_known_gaussians():
    a = np.random.default_rng(0).normal(size=(500, 4))
    assert fidelity.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # b = 2a + 3: mean 2 mu + 3, covariance 4 S, so the distance is |mu + 3|^2 + tr(S + 4S - 2 * 2S) = |mu + 3|^2 + tr(S)
    expected = np.sum((a.mean(axis=0) + 3) ** 2) + np.trace(np.cov(a, rowvar=False))
    assert fidelity.frechet_distance(a, 2 * a + 3) == pytest.approx(expected, rel=1e-6)


def test_fidelity_tells_a_collapsed_generator_from_real_crops():
    reference = fidelity.RealReference("A", 16, seed=0)
    real = random_crops(list(load_photos("A")), 64, 16, seed=9)
    other_content = random_crops(list(load_photos("B")), 64, 16, seed=9)
    collapsed = np.repeat(real[:1], 64, axis=0)
    scores = {name: reference.fidelity(images) for name, images in [("real", real), ("B", other_content), ("collapsed", collapsed)]}
    assert scores["real"]["images"] == 64 and scores["real"]["real_frechet"] == scores["collapsed"]["real_frechet"] > 0
    assert 0.8 < scores["real"]["diversity"] < 1.25 and scores["collapsed"]["diversity"] == 0.0
    assert scores["real"]["frechet"] < 2 * scores["real"]["real_frechet"]
    assert scores["collapsed"]["frechet"] > 10 * scores["real"]["frechet"]
    assert scores["real"]["frechet"] < scores["B"]["frechet"]  # the other content set is further from A's crops
    assert fidelity.image_features(real).shape == (64, 8 + fidelity.SPECTRUM_BINS)


def test_mixed_bfloat16_trains_in_bfloat16_and_saves_float32_models(tmp_path, monkeypatch):
    preset = dataclasses.replace(
        build.get_preset("tiny"), image_size=8, width=16, batch_size=4, steps=3, finetune_steps=2, photo_crops=16,
        train_images=2, test_images=2, precision="mixed_bfloat16",
    )
    parent = build.plan_models(preset)[0]
    models = [parent, next(m for m in build.plan_models(preset) if m.origin == parent.id)]
    seen = []
    original = train.train_gan

    def recording_train_gan(generator, discriminator, *args, **kwargs):
        seen.append({layer.compute_dtype for layer in (*generator.layers[1:], *discriminator.layers[1:])})
        return original(generator, discriminator, *args, **kwargs)

    monkeypatch.setattr(train, "train_gan", recording_train_gan)
    for model in models:
        build.build_model(str(tmp_path), preset, model)
    assert len(seen) == 2 and all("bfloat16" in dtypes and "float32" in dtypes for dtypes in seen)  # logits/tanh in float32
    assert keras.config.dtype_policy().name == "float32"
    for model in models:
        generator = keras.saving.load_model(tmp_path / "models" / model.id / "generator.keras", compile=False)
        assert {layer.compute_dtype for layer in generator.layers} == {"float32"}
        with open(tmp_path / "models" / model.id / "model.json") as f:
            assert np.isfinite(json.load(f)["final_d_loss"])
        assert len(os.listdir(tmp_path / model.image_splits[-1] / model.architecture / model.id)) == 2


def test_small_and_tiny_presets_are_unchanged():
    """Zoos of these presets must stay comparable across releases: their recipe and model ids are fixed."""
    for name, key, ids in [
        ("tiny", (32, 16, 32, 16, 300, 100, 5e-4, 1000, 48, 16, "float32"), 13),
        ("small", (64, 32, 64, 16, 1200, 400, 5e-4, 4000, 300, 100, "float32"), 40),
    ]:
        preset = build.get_preset(name)
        assert (
            preset.image_size, preset.width, preset.latent_dim, preset.batch_size, preset.steps, preset.finetune_steps,
            preset.learning_rate, preset.photo_crops, preset.train_images, preset.test_images, preset.precision,
        ) == key
        assert len(build.plan_models(preset)) == ids
    small = [m.id for m in build.plan_models(build.get_preset("small"))]
    assert small[:6] == [f"{a}-seed0-nonsaturating-A" for a in ("progan", "mmdgan", "sngan", "infomaxgan", "dcgan", "stylegan2")]
    assert small[-1] == "stylegan2-seed2-nonsaturating-A-ftB" and "dcgan-seed0-lsgan-A" in small
    assert build.get_preset("tiny").validation_seeds == (("progan", 2),)


def test_medium_trains_small_models_for_longer():
    small, medium = build.get_preset("small"), build.get_preset("medium")
    assert [m.id for m in build.plan_models(medium)] == [m.id for m in build.plan_models(small)]
    assert (medium.steps, medium.finetune_steps, medium.precision) == (1600, 500, "mixed_bfloat16")
    same = ("image_size", "width", "latent_dim", "batch_size", "learning_rate", "photo_crops", "train_images", "test_images")
    assert all(getattr(medium, field) == getattr(small, field) for field in same)
