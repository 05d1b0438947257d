"""Reliability: killed and resumed runs, non-finite losses, fuzzed image files, decompression bombs, safe loading."""

import csv
import io
import json
import functools
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import run_cli, write_manifest
from tfdnadet.config import load_config
from tfdnadet.data.images import ImageError, decode_image
from tfdnadet.data.pipeline import load_images, make_patch_dataset
from tfdnadet.data.sources import read_dataset
from tfdnadet.errors import TfdnadetError
from tfdnadet.inference import attribute
from tfdnadet.models.detector import Detector, Preprocessing
from tfdnadet.models.model_dir import load_detector, save_detector
from tfdnadet.training.callbacks import read_checkpoint_state
from tfdnadet.training.trainer import fit_patch_model

# The fuzzed files and bombs are corrupt on purpose: Pillow's warnings about them are expected, not news.
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning:PIL.*"),
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
]

FUZZ_FILES = 2000


def cli_process(*args):
    return [sys.executable, "-m", "tfdnadet.cli", *map(str, args)]


def history_epochs(run_dir):
    with open(os.path.join(run_dir, "history.csv")) as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def test_sigkill_mid_epoch_then_resume_ends_with_all_steps(gan_images, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    args = ["train-stage2", "--data", gan_images["train"], "--out", run, "--config", "tiny", "--epochs", 3, "--steps-per-epoch", 12]
    with open(tmp_path / "log", "w") as log:
        process = subprocess.Popen(cli_process(*args), stdout=log, stderr=log)
        deadline = time.time() + 300
        while read_checkpoint_state(str(run / "checkpoint")) is None and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # into the second epoch
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, open(tmp_path / "log").read()[-2000:]
    killed_at = read_checkpoint_state(str(run / "checkpoint"))
    assert 1 <= killed_at["epoch"] < 3 and killed_at["step"] == 12 * killed_at["epoch"]
    assert not (run / "model").exists()

    code, out, err = run_cli(["train-stage2", "--data", gan_images["train"], "--out", run, "--resume"], monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert {k: summary[k] for k in ("model", "epochs", "steps")} == {"model": str(run / "model"), "epochs": 3, "steps": 36}
    assert summary["selection"]["epochs_run"] == 3
    assert history_epochs(run) == [0, 1, 2]
    assert load_detector(str(run / "model")).class_names == ["dcgan", "mmdgan", "progan", "real"]


def test_a_kill_while_saving_a_model_leaves_the_previous_one_whole(trained_run, tmp_path):
    target = tmp_path / "model"
    script = textwrap.dedent(
        f"""
        import os, signal
        from tfdnadet.models import model_dir as d
        model = d.load_detector({trained_run.model_dir!r})
        d.save_detector(model, {str(target)!r})
        d.write_head = lambda *args: os.kill(os.getpid(), signal.SIGKILL)  # dies after backbone.keras is written
        d.save_detector(model.with_preprocessing(input_size=999), {str(target)!r})
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    half_written = [name for name in os.listdir(tmp_path) if name.startswith(".model.tmp-")]
    assert half_written and os.path.isfile(tmp_path / half_written[0] / "backbone.keras")
    reloaded = load_detector(str(target))
    assert reloaded.preprocessing == load_detector(trained_run.model_dir).preprocessing


def poisoned(dataset, from_step):
    """The data set, with NaN images from batch `from_step` on."""
    def poison(step, batch):
        patches, labels = batch
        return tf.where(step >= from_step, patches * np.nan, patches), labels

    return dataset.enumerate().map(poison)


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
    config = load_config("tiny", {"train.epochs": 3, "train.steps_per_epoch": 3, "train.tensorboard": False, "train.gradcam_images": 0})
    images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(2, dtype=np.int32), 8)
    clean = functools.partial(make_patch_dataset, images, labels, 2, config.data, 0, None)
    run = str(tmp_path / "run")
    with pytest.raises(TfdnadetError, match=r"NaN/inf at step 5\. The last good checkpoint \(epoch 1\) is kept in .*--resume"):
        fit_patch_model(lambda step: poisoned(clean(step), from_step=4), 3, None, ["a", "b"], config, run, verbose=0)
    assert read_checkpoint_state(os.path.join(run, "checkpoint")) == {"epoch": 1, "step": 3}
    assert not os.path.exists(os.path.join(run, "model"))

    resumed = fit_patch_model(clean, 3, None, ["a", "b"], config, run, resume=True, verbose=0)
    assert (resumed.epochs_completed, resumed.steps) == (3, 9)
    assert history_epochs(run) == [0, 1, 2]  # the NaN epoch's row is gone
    backbone = load_detector(resumed.model_dir).backbone
    assert all(np.all(np.isfinite(w)) for w in backbone.get_weights())


def test_diverging_training_is_a_one_line_error_from_the_cli(gan_images, tmp_path, monkeypatch, capsys):
    args = ["train-stage2", "--data", gan_images["train"], "--out", tmp_path / "run", "--config", "tiny", "--epochs", 1, "--learning-rate", 1e30]
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 1 and out == ""
    message = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(message) == 1 and "NaN/inf" in message[0] and "No epoch finished" in message[0]
    assert "Traceback" not in err


# ---- bad image files ---------------------------------------------------------------------------------------


def encode(image, fmt, **params):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_declaring(width, height):
    """A tiny PNG whose header declares width x height (a decompression bomb needs no more)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def good_images():
    """Usable files in many formats and modes, 40 px or more a side: {name: bytes}."""
    pixels = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    rgb = Image.fromarray(pixels)
    rotated = Image.Exif()
    rotated[0x0112] = 6  # EXIF orientation: rotate 90 degrees
    frames = [rgb.convert("P"), rgb.rotate(180).convert("P")]
    return {
        "rgb.png": encode(rgb, "PNG"),
        "photo.jpg": encode(rgb, "JPEG", quality=85),
        "cmyk.jpg": encode(rgb.convert("CMYK"), "JPEG"),
        "exif_rotated.jpg": encode(rgb, "JPEG", exif=rotated.tobytes()),
        "animated.gif": encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "sixteen_bit.png": encode(Image.fromarray((pixels[..., 0].astype(np.uint16) * 257)), "PNG"),
        "rgba.png": encode(rgb.convert("RGBA"), "PNG"),
        "gray.webp": encode(rgb.convert("L"), "WEBP"),
        "image.bmp": encode(rgb, "BMP"),
    }


def bad_images():
    """Files no model can use: {name: bytes}."""
    good = good_images()
    return {
        "zero_bytes.png": b"",
        "text.jpg": b"not an image at all",
        "truncated.png": good["rgb.png"][:200],
        "truncated.jpg": good["photo.jpg"][:300],
        "bomb.png": png_declaring(50_000, 50_000),
        "one_pixel.png": encode(Image.new("RGB", (1, 1)), "PNG"),
    }


def mutate(data: bytes, rng) -> bytes:
    """Truncate, overwrite or insert bytes, once or twice."""
    data = bytearray(data)
    for _ in range(rng.integers(1, 3)):
        if not data:
            break
        kind = rng.integers(0, 3)
        if kind == 0:
            data = data[: rng.integers(0, len(data))]
        elif kind == 1:
            for _ in range(rng.integers(1, 10)):
                data[rng.integers(0, len(data))] = rng.integers(0, 256)
        else:
            at = rng.integers(0, len(data))
            data[at:at] = rng.integers(0, 256, rng.integers(1, 20), dtype=np.uint8).tobytes()
    return bytes(data)


@pytest.fixture(scope="module")
def fuzz_folder(tmp_path_factory):
    """Class folders of FUZZ_FILES files: every good image once, every bad one, the rest mutants under any extension."""
    root = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(0)
    usable = good_images()
    seeds = {**usable, **bad_images()}
    extensions = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp")
    files = {f"{i:04d}_{name}": data for i, (name, data) in enumerate(seeds.items())}
    names = sorted(seeds)
    while len(files) < FUZZ_FILES:
        name = names[rng.integers(len(names))]
        files[f"{len(files):04d}_mutant_{name}{extensions[rng.integers(len(extensions))]}"] = mutate(seeds[name], rng)
    good = set()
    for i, (name, data) in enumerate(sorted(files.items())):
        path = root / ("real" if i % 2 else "progan") / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        if "mutant" not in name and name.split("_", 1)[1] in usable:
            good.add(str(path))
    return {"root": str(root), "good": good}


def test_the_data_pipeline_survives_thousands_of_mutated_files(fuzz_folder):
    images = read_dataset(fuzz_folder["root"])
    assert len(images) == FUZZ_FILES
    loaded = load_images(images, base_size=32, max_pixels=1_000_000, min_size=32)
    assert len(loaded.paths) + len(loaded.failures) == FUZZ_FILES
    assert fuzz_folder["good"] <= set(loaded.paths)
    assert loaded.images.shape == (len(loaded.paths), 32, 32, 3)
    assert all(reason and "\n" not in reason for _, reason in loaded.failures)
    assert len(loaded.failures) > FUZZ_FILES // 4


def test_predict_survives_thousands_of_mutated_files(trained_run, fuzz_folder):
    detector = load_detector(trained_run.model_dir)
    detector = detector.with_preprocessing(max_pixels=1_000_000)
    results, failures = attribute(detector, [fuzz_folder["root"]], batch_size=64)
    assert len(results) + len(failures) == FUZZ_FILES
    attributed = {r.path for r in results}
    assert fuzz_folder["good"] <= attributed
    assert attributed.isdisjoint(path for path, _ in failures)
    for result in results:
        assert result.label in detector.class_names and abs(sum(result.probabilities.values()) - 1) < 1e-4


def test_predict_cli_reports_each_bad_file_and_attributes_the_good_ones(trained_run, tmp_path, monkeypatch, capsys):
    for name, data in {**good_images(), **bad_images()}.items():
        (tmp_path / name).write_bytes(data)
    code, out, err = run_cli(["predict", trained_run.model_dir, tmp_path, "--json"], monkeypatch, capsys)
    assert code == 3 and "Traceback" not in err
    assert sorted(os.path.basename(json.loads(line)["path"]) for line in out.splitlines()) == sorted(good_images())
    failed = {line.split(": ")[1].split("/")[-1]: line for line in err.splitlines() if line.startswith("failed:")}
    assert set(failed) == set(bad_images())
    assert "too large" in failed["bomb.png"] and "smaller than a patch" in failed["one_pixel.png"]
    assert "not a readable image" in failed["zero_bytes.png"]

    code, out, err = run_cli(["predict", trained_run.model_dir, tmp_path / "exif_rotated.jpg"], monkeypatch, capsys)
    assert code == 0 and "exif_rotated.jpg" in out
    code, out, err = run_cli(["predict", trained_run.model_dir, tmp_path / "missing.png"], monkeypatch, capsys)
    assert code == 3 and "no such file" in err


def test_odd_formats_decode_to_upright_rgb():
    good = good_images()
    assert decode_image(good["exif_rotated.jpg"]).shape == (48, 40, 3)  # 48 x 40 stored, shown rotated
    assert decode_image(good["photo.jpg"]).shape == (40, 48, 3)
    first_frame = np.asarray(Image.open(io.BytesIO(good["animated.gif"])).convert("RGB"))
    np.testing.assert_array_equal(decode_image(good["animated.gif"]), first_frame)
    for name in ("cmyk.jpg", "sixteen_bit.png", "rgba.png", "gray.webp", "image.bmp"):
        decoded = decode_image(good[name])
        assert decoded.dtype == np.uint8 and decoded.shape == (40, 48, 3), name


def test_decompression_bombs_are_refused_before_decoding(trained_run, tmp_path):
    with pytest.raises(ImageError, match="image too large"):
        decode_image(png_declaring(50_000, 50_000))  # past PIL's own limit: PIL refuses it
    with pytest.raises(ImageError, match="image too large: 12000x12000 exceeds max_pixels=100000000"):
        decode_image(png_declaring(12_000, 12_000))  # under PIL's limit: ours refuses it
    with pytest.raises(ImageError, match="exceeds max_pixels=1000"):
        decode_image(good_images()["rgb.png"], max_pixels=1000)

    detector = load_detector(trained_run.model_dir)
    assert detector.preprocessing.max_pixels == load_config("tiny").data.max_pixels  # the model carries its limit
    (tmp_path / "a.png").write_bytes(good_images()["rgb.png"])
    detector = detector.with_preprocessing(max_pixels=1000)
    results, failures = attribute(detector, [str(tmp_path)])
    assert results == [] and "exceeds max_pixels=1000" in failures[0][1]


def test_models_load_in_safe_mode_and_never_run_code_from_the_file(tmp_path):
    import keras

    marker = tmp_path / "code_ran"
    code = f"lambda x: (open({str(marker)!r}, 'w').close(), x)[1]"
    inputs = keras.Input((8, 8, 3))
    backbone = keras.Model(inputs, keras.layers.Lambda(eval(code), name="payload")(inputs))
    marker.unlink(missing_ok=True)
    model_dir = str(tmp_path / "model")
    save_detector(Detector(backbone, {}, {}, Preprocessing(base_size=8, input_size=8, patch_size=8, max_pixels=64), {}), model_dir)
    marker.unlink(missing_ok=True)
    with pytest.raises(TfdnadetError, match=r"Cannot load .*backbone\.keras: .*Lambda"):
        load_detector(model_dir)
    assert not marker.exists()


def test_manifest_paths_outside_their_folder_need_a_flag(trained_run, gan_images, tmp_path, monkeypatch, capsys):
    outside = tmp_path / "elsewhere" / "test.csv"
    outside.parent.mkdir()
    with open(gan_images["test"]) as f:
        rows = [(os.path.join(gan_images["root"], row["path"]), row["label"]) for row in csv.DictReader(f)]
    write_manifest(outside, [(os.path.relpath(path, outside.parent), label) for path, label in rows])
    code, out, err = run_cli(["evaluate", trained_run.model_dir, "--data", outside], monkeypatch, capsys)
    assert code == 1 and "points outside its folder" in err and "--allow-outside-root" in err and "Traceback" not in err
    code, out, err = run_cli(["evaluate", trained_run.model_dir, "--data", outside, "--allow-outside-root"], monkeypatch, capsys)
    assert code == 0 and f"images: {len(rows)}" in out
    code, out, err = run_cli(["train-stage2", "--data", outside, "--out", tmp_path / "run", "--config", "tiny"], monkeypatch, capsys)
    assert code == 1 and "points outside its folder" in err and not (tmp_path / "run").exists()
