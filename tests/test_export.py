"""SavedModel export for TensorFlow Serving: layout, signatures, parity with Keras, REST b64 bodies, bad images."""

import base64
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from PIL import Image
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.config import model_server_config_pb2

from conftest import run_cli
from tfdnadet.data.preprocess import to_model_input
from tfdnadet.errors import TfdnadetError
from tfdnadet.export import check_export, export_model
from tfdnadet.inference import attribute, load_for_detector, predict_loaded
from tfdnadet.models.detector import MULTICLASS, Detector, Preprocessing
from tfdnadet.models.model_dir import load_detector, save_detector
from tfdnadet.models.encoder import Encoder
from tfdnadet.models.heads import BinaryHead, MulticlassHead
from tfdnadet.serving.graph import DetectorServing
from tfdnadet.serving.warmup import read_warmup
from tfdnadet.verdict import verdicts

PREPROCESSING = Preprocessing(base_size=32, input_size=64, patch_size=32, max_pixels=10**8)


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    """The tiny trained model exported once; its version folder and the model it came from."""
    base = tmp_path_factory.mktemp("savedmodels")
    result = export_model(trained_run.model_dir, "detector", str(base))
    return {"path": result.path, "detector": load_detector(trained_run.model_dir), "loaded": tf.saved_model.load(result.path)}


@pytest.fixture(scope="module")
def test_pngs(gan_images, tmp_path_factory):
    """Held-out PNGs of every class plus one larger, non-square PNG (so the in-graph resize really resamples)."""
    paths = [os.path.join(gan_images["root"], arch, "seed2", "0003.png") for arch in ("progan", "mmdgan", "dcgan")]
    paths.append(os.path.join(gan_images["root"], "real", "0004.png"))
    larger = tmp_path_factory.mktemp("pngs") / "larger.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (53, 41, 3), dtype=np.uint8)).save(larger)
    return paths + [str(larger)]


def encoded(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def hand_made_detector(precision="float32", judges=(MULTICLASS,), architectures=("progan", "sngan")):
    """Backbone + real/fake judges (the multiclass head and/or a binary `real` head) + binary architecture heads;
    the second architecture head reads block 7 through its own copy of the top block."""
    backbone = Encoder(width=0.125, dtype=precision, name="encoder")
    detector = Detector(backbone, {}, {}, PREPROCESSING, {})
    if MULTICLASS in judges:
        detector.add_head(MULTICLASS, MulticlassHead(backbone.feature_dim, 3, name=MULTICLASS), {"class_names": ["real", "progan", "sngan"]})
    if "real" in judges:
        detector.add_head("real", BinaryHead(backbone.feature_dim, 8, dtype=precision, name="real"), {"threshold": 0.5})
    for index, name in enumerate(architectures):
        top = 1 if index == 1 else 0
        head = BinaryHead(backbone.feature_dim, 8, finetune_top=top, width=0.125, dtype=precision, name=name)
        detector.add_head(name, head, {"threshold": 0.5, **({"input_layer": "block7"} if top else {})})
    return detector


def test_cli_export_twice_gives_versions_1_and_2_and_models_config(trained_run, tmp_path, monkeypatch, capsys):
    base = tmp_path / "savedmodels"
    monkeypatch.setenv("TFDNADET_MODEL", trained_run.model_dir)
    for version, model in ((1, [trained_run.model_dir]), (2, [])):  # the second time from $TFDNADET_MODEL
        code, out, err = run_cli(["export", *model, "--name", "detector", "--base", base], monkeypatch, capsys)
        assert code == 0, err
        result = json.loads(out)
        assert result["version"] == version and result["path"] == str(base / "detector" / str(version))
        assert {"serving_default", "predict_images", "head_multiclass"} <= set(result["signatures"])
        assert os.path.isfile(base / "detector" / str(version) / "saved_model.pb")
    config = text_format.Parse((base / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())
    assert [(c.name, c.base_path, c.model_platform) for c in config.model_config_list.config] == [
        ("detector", "/models/detector", "tensorflow")
    ]
    assert sorted(os.listdir(base / "detector")) == ["1", "2"]

    code, _, err = run_cli(["export", trained_run.model_dir, "--name", "detector", "--base", base, "--version", 1], monkeypatch, capsys)
    assert code == 1 and "never overwritten" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["export", trained_run.model_dir, "--name", "bad/name", "--base", base], monkeypatch, capsys)
    assert code == 1 and "Invalid model name" in err
    code, _, err = run_cli(["export", trained_run.model_dir], monkeypatch, capsys)
    assert code == 2 and "--name" in err


def test_interrupted_export_leaves_no_partial_version(trained_run, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("killed before the rename")

    monkeypatch.setattr("tfdnadet.export.write_warmup", fail)
    with pytest.raises(RuntimeError, match="before the rename"):
        export_model(trained_run.model_dir, "detector", str(tmp_path))
    assert os.listdir(tmp_path / "detector") == []  # neither a version folder nor a temporary one
    assert not os.path.exists(tmp_path / "models.config")


def test_a_concurrent_export_of_the_same_version_is_kept(trained_run, tmp_path, monkeypatch):
    """Two exports that both chose version 1: the one renaming second fails and leaves the first intact."""
    from tfdnadet.serving import warmup

    def other_export_finishes_first(temporary, name, requests):
        warmup.write_warmup(temporary, name, requests)
        os.makedirs(tmp_path / "detector" / "1")
        (tmp_path / "detector" / "1" / "saved_model.pb").write_bytes(b"the other export")

    monkeypatch.setattr("tfdnadet.export.write_warmup", other_export_finishes_first)
    with pytest.raises(TfdnadetError, match="written by another export meanwhile"):
        export_model(trained_run.model_dir, "detector", str(tmp_path))
    assert (tmp_path / "detector" / "1" / "saved_model.pb").read_bytes() == b"the other export"
    assert os.listdir(tmp_path / "detector") == ["1"]  # no temporary folder left


def test_fresh_process_parity_with_keras(exported, test_pngs, tmp_path):
    detector = exported["detector"]
    loaded_images = load_for_detector(detector, test_pngs)  # the Python path: PIL decode + resize_to_base
    assert len(loaded_images.paths) == len(test_pngs)
    keras_from_files = predict_loaded(detector, loaded_images)[MULTICLASS]
    batch = to_model_input(loaded_images.images, detector.preprocessing.input_size)
    np.save(tmp_path / "batch.npy", batch.numpy())
    keras_from_batch = detector.predict(batch)[MULTICLASS]
    script = (
        "import sys, numpy as np, tensorflow as tf\n"
        "export, batch, out, *files = sys.argv[1:]\n"
        "model = tf.saved_model.load(export)\n"
        "from_bytes = model.signatures['serving_default'](images_bytes=tf.constant([open(f, 'rb').read() for f in files]))\n"
        "from_batch = model.signatures['predict_images'](images=tf.constant(np.load(batch)))\n"
        "np.savez(out, bytes=from_bytes['multiclass_probabilities'], batch=from_batch['multiclass_probabilities'],\n"
        "         names=from_bytes['multiclass_class_name'].numpy().astype(str))\n"
    )
    out = tmp_path / "served.npz"
    done = subprocess.run(
        [sys.executable, "-c", script, exported["path"], str(tmp_path / "batch.npy"), str(out), *test_pngs],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    served = np.load(out)
    np.testing.assert_allclose(served["bytes"], keras_from_files, atol=1e-5)
    np.testing.assert_allclose(served["batch"], keras_from_batch, atol=1e-5)
    assert list(served["names"]) == [detector.class_names[i] for i in keras_from_files.argmax(axis=1)]


def rest_predict(signatures, body: str) -> dict:
    """What TF Serving's REST layer does with a row-format body: {"b64": ...} -> bytes, rows -> batch, batch -> rows."""
    request = json.loads(body)
    signature = signatures[request.get("signature_name", "serving_default")]
    (input_name,) = signature.structured_input_signature[1]
    values = [row[input_name] if isinstance(row, dict) and input_name in row else row for row in request["instances"]]
    batch = [base64.b64decode(value["b64"]) if isinstance(value, dict) else value for value in values]
    outputs = {key: value.numpy() for key, value in signature(**{input_name: tf.constant(batch)}).items()}
    rows = [{key: value[i].decode() if value.dtype == object else value[i].tolist() for key, value in outputs.items()} for i in range(len(batch))]
    return json.loads(json.dumps({"predictions": rows}))


def test_rest_b64_body_gives_the_python_answer(exported, test_pngs):
    body = json.dumps(
        {"signature_name": "serving_default", "instances": [{"b64": base64.b64encode(open(p, "rb").read()).decode()} for p in test_pngs]}
    )
    answer = rest_predict(exported["loaded"].signatures, body)
    results, failures = attribute(exported["detector"], test_pngs)
    assert not failures and len(answer["predictions"]) == len(results)
    for row, result in zip(answer["predictions"], results):
        assert row["multiclass_class_name"] == result.label
        assert exported["detector"].class_names[row["multiclass_class_index"]] == result.label
        np.testing.assert_allclose(row["multiclass_probabilities"], [result.probabilities[n] for n in exported["detector"].class_names], atol=1e-5)
    # The named form {"images_bytes": {"b64": ...}} and a per-head signature answer the same.
    named = json.dumps({"signature_name": "head_multiclass", "instances": [{"images_bytes": {"b64": base64.b64encode(open(test_pngs[0], "rb").read()).decode()}}]})
    assert rest_predict(exported["loaded"].signatures, named)["predictions"][0]["multiclass_class_name"] == results[0].label


def test_formats_decode_in_graph(exported):
    image = np.random.default_rng(1).integers(0, 256, (40, 36, 3), dtype=np.uint8)
    serve = exported["loaded"].signatures["serving_default"]
    batch = [encoded(image, fmt) for fmt in ("PNG", "BMP", "JPEG", "GIF")]
    batch.append(encoded(image[..., 0], "PNG"))  # grayscale becomes RGB
    batch.append(encoded(np.dstack([image, np.full(image.shape[:2], 255, np.uint8)]), "PNG"))  # RGBA drops alpha
    batch.append(encoded(image, "WEBP", lossless=True))
    probabilities = serve(images_bytes=tf.constant(batch))["multiclass_probabilities"].numpy()
    assert probabilities.shape == (7, 4) and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    for lossless in (1, 5, 6):  # BMP, RGBA PNG and lossless WebP hold the PNG's very pixels
        np.testing.assert_allclose(probabilities[lossless], probabilities[0], atol=1e-6)


def test_bad_images_are_flagged_and_the_others_answered(exported, test_pngs):
    """Through the loaded SavedModel: an unusable image gets valid 0 and defined outputs; its neighbours are answered."""
    serve = exported["loaded"].signatures["serving_default"]
    good = [open(path, "rb").read() for path in test_pngs[:2]]
    alone = serve(images_bytes=tf.constant(good))
    bad = {
        "garbage": b"this is not an image",
        "truncated PNG": good[0][: len(good[0]) // 2],
        "truncated JPEG": encoded(np.zeros((64, 64, 3), np.uint8), "JPEG")[:200],
        "empty": b"",
        "smaller than a patch": encoded(np.zeros((8, 8, 3), np.uint8), "PNG"),
    }
    for what, data in bad.items():
        answer = serve(images_bytes=tf.constant([good[0], data, good[1]]))
        assert answer["valid"].numpy().tolist() == [1, 0, 1], what
        kept = answer["multiclass_probabilities"].numpy()[[0, 2]]
        np.testing.assert_allclose(kept, alone["multiclass_probabilities"].numpy(), atol=1e-6, err_msg=what)
        assert answer["multiclass_probabilities"].numpy()[1].tolist() == [0.0] * 4
        assert answer["multiclass_class_index"].numpy()[1] == -1 and answer["multiclass_class_name"].numpy()[1] == b""
    every_bad = serve(images_bytes=tf.constant(list(bad.values())))
    assert every_bad["valid"].numpy().tolist() == [0] * len(bad)
    assert every_bad["multiclass_class_name"].numpy().tolist() == [b""] * len(bad)
    head = exported["loaded"].signatures["head_multiclass"](images_bytes=tf.constant([b"", good[0]]))
    assert head["valid"].numpy().tolist() == [0, 1]


def test_the_pixel_limit_applies_in_the_graph(trained_run, tmp_path):
    """An image over the model's max_pixels is refused (valid 0) as predict refuses it."""
    detector = load_detector(trained_run.model_dir).with_preprocessing(max_pixels=40 * 40)
    serving = DetectorServing(detector)
    small = encoded(np.full((40, 40, 3), 90, np.uint8), "PNG")
    large = encoded(np.full((41, 40, 3), 90, np.uint8), "PNG")
    assert serving.serve_bytes(tf.constant([small, large]))["valid"].numpy().tolist() == [1, 0]


def test_serving_decodes_stored_pixels_without_exif_orientation(exported, tmp_path):
    """What the README says: the graph ignores EXIF orientation (predict applies it); a client sends upright pixels."""
    serve = exported["loaded"].signatures["serving_default"]
    pixels = np.random.default_rng(3).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    tagged = encoded(pixels, "PNG", exif=exif)
    plain = encoded(pixels, "PNG")
    upright = encoded(np.rot90(pixels, k=-1).copy(), "PNG")
    outputs = serve(images_bytes=tf.constant([tagged, plain, upright]))["multiclass_probabilities"].numpy()
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-6)  # the tag changed nothing
    path = tmp_path / "tagged.png"
    path.write_bytes(tagged)
    (result,), _ = attribute(exported["detector"], [str(path)])
    np.testing.assert_allclose([result.probabilities[n] for n in exported["detector"].class_names], outputs[2], atol=1e-5)


def test_exported_version_is_readable_by_other_users(trained_run, tmp_path):
    old_umask = os.umask(0o022)
    try:
        result = export_model(trained_run.model_dir, "detector", str(tmp_path))
    finally:
        os.umask(old_umask)
    for dirpath, dirnames, filenames in os.walk(result.path):
        assert os.stat(dirpath).st_mode & 0o777 == 0o755, dirpath
        for name in filenames:
            assert os.stat(os.path.join(dirpath, name)).st_mode & 0o777 == 0o644, name


def test_saved_model_cli_lists_both_signatures(exported):
    done = subprocess.run(["saved_model_cli", "show", "--all", "--dir", exported["path"]], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for expected in ("signature_def['serving_default']", "signature_def['predict_images']", "inputs['images_bytes']", "DT_STRING",
                     "inputs['images']", "outputs['multiclass_class_name']", "outputs['multiclass_probabilities']"):
        assert expected in done.stdout
    assert "DT_HALF" not in done.stdout and "DT_BFLOAT16" not in done.stdout


def test_check_replays_the_warmup_requests(exported, tmp_path, monkeypatch, capsys):
    warmup = read_warmup(exported["path"])
    assert sorted(signature for signature, _ in warmup) == ["head_multiclass", "predict_images", "serving_default"]
    code, out, err = run_cli(["export", "--check", os.path.dirname(exported["path"])], monkeypatch, capsys)
    assert code == 0, err
    checked = json.loads(out)
    assert checked["path"] == exported["path"]
    assert checked["signatures"]["serving_default"]["inputs"] == {"images_bytes": {"dtype": "string", "shape": [-1]}}
    assert checked["signatures"]["predict_images"]["inputs"]["images"] == {"dtype": "float32", "shape": [-1, 64, 64, 3]}
    first = checked["requests"][0]["outputs"]
    assert first["multiclass_class_name"] in exported["detector"].class_names and len(first["multiclass_probabilities"]) == 4
    code, _, err = run_cli(["export", "--check", tmp_path], monkeypatch, capsys)
    assert code == 1 and "No SavedModel" in err and len(err.strip().splitlines()) == 1
    no_warmup = tmp_path / "no_warmup"
    shutil.copytree(exported["path"], no_warmup)
    shutil.rmtree(no_warmup / "assets.extra")
    with pytest.raises(TfdnadetError, match="no assets.extra/tf_serving_warmup_requests"):
        check_export(str(no_warmup))
    (no_warmup / "saved_model.pb").write_bytes(b"not a SavedModel")
    code, _, err = run_cli(["export", "--check", no_warmup], monkeypatch, capsys)
    assert code == 1 and "Cannot load the SavedModel" in err and len(err.strip().splitlines()) == 1


def test_binary_heads_mixed_precision_export(tmp_path):
    detector = hand_made_detector("mixed_float16")
    detector.head_info["progan"]["threshold"], detector.head_info["sngan"]["threshold"] = 0.45, 0.55
    save_detector(detector, str(tmp_path / "model"))
    result = export_model(str(tmp_path / "model"), "heads", str(tmp_path / "base"))
    assert {"head_multiclass", "head_progan", "head_sngan"} <= set(result.signatures)
    # The graph holds no float16 at all: it was built from a float32 copy.
    saved = saved_model_pb2.SavedModel.FromString(open(os.path.join(result.path, "saved_model.pb"), "rb").read())
    graph = saved.meta_graphs[0].graph_def
    nodes = list(graph.node) + [node for function in graph.library.function for node in function.node_def]
    dtypes = {attr.type for node in nodes for attr in node.attr.values()} | {t for node in nodes for a in node.attr.values() for t in a.list.type}
    assert types_pb2.DT_HALF not in dtypes and types_pb2.DT_FLOAT in dtypes

    images = np.random.default_rng(2).uniform(-1, 1, (6, 64, 64, 3)).astype("float32")
    loaded = tf.saved_model.load(result.path)
    served = {k: v.numpy() for k, v in loaded.signatures["predict_images"](images=tf.constant(images)).items()}
    float32 = load_detector(str(tmp_path / "model")).float32()
    expected = float32.predict(images)
    np.testing.assert_allclose(served["sngan_score"], expected["sngan"][:, 0], atol=1e-5)
    np.testing.assert_allclose(served["multiclass_probabilities"], expected[MULTICLASS], atol=1e-5)
    np.testing.assert_allclose(served["progan_score"], detector.predict(images)["progan"][:, 0], atol=1e-2)  # the mixed model itself
    np.testing.assert_array_equal(served["progan_decision"], (served["progan_score"] >= 0.45).astype(np.int32))
    np.testing.assert_array_equal(served["sngan_decision"], (served["sngan_score"] >= 0.55).astype(np.int32))
    assert list(served["verdict"].astype(str)) == [v.label for v in verdicts(float32, expected)]
    head_only = loaded.signatures["head_sngan"](images_bytes=tf.constant([encoded(np.zeros((40, 40, 3), np.uint8), "PNG")]))
    assert sorted(head_only) == ["sngan_decision", "sngan_score", "valid"]
    assert check_export(result.path)["requests"][0]["outputs"]["verdict"]


def test_a_highpass_encoder_exports_with_the_same_outputs(tmp_path):
    backbone = Encoder(width=0.125, input_filter="highpass", dtype="mixed_bfloat16", name="encoder")
    detector = Detector(backbone, {}, {}, PREPROCESSING, {})
    detector.add_head(MULTICLASS, MulticlassHead(backbone.feature_dim, 3, name=MULTICLASS), {"class_names": ["real", "progan", "sngan"]})
    save_detector(detector, str(tmp_path / "model"))
    result = export_model(str(tmp_path / "model"), "highpass", str(tmp_path / "base"))
    images = np.random.default_rng(3).uniform(-1, 1, (4, 64, 64, 3)).astype("float32")
    served = tf.saved_model.load(result.path).signatures["predict_images"](images=tf.constant(images))
    expected = load_detector(str(tmp_path / "model")).predict(images)[MULTICLASS]  # bfloat16 is served as it is
    np.testing.assert_allclose(served["multiclass_probabilities"].numpy(), expected, atol=1e-6)


@pytest.mark.parametrize(
    "judges, architectures",
    [((MULTICLASS,), ("progan", "sngan")), (("real",), ("progan", "sngan")), ((), ("progan", "sngan")),
     ((MULTICLASS, "real"), ("progan",)), ((MULTICLASS, "real"), ()), (("real",), ())],
)
def test_in_graph_verdict_matches_the_python_verdict(judges, architectures):
    images = tf.constant(np.random.default_rng(3).uniform(-1, 1, (12, 64, 64, 3)).astype("float32"))
    detector = hand_made_detector(judges=judges, architectures=architectures)
    scores = detector.predict(images)
    binary = [name for name, head in detector.heads.items() if head.kind == BinaryHead.kind]
    medians = [float(np.median(scores[name])) for name in binary]
    for thresholds in ([0.0] * len(binary), [2.0] * len(binary), [0.0, 2.0, 0.0][: len(binary)], [2.0, 0.0, 2.0][: len(binary)], medians):
        for name, threshold in zip(binary, thresholds):
            detector.head_info[name]["threshold"] = threshold
        served = DetectorServing(detector).serve_images(images)["verdict"].numpy().astype(str)
        assert list(served) == [v.label for v in verdicts(detector, scores)], thresholds


def test_a_head_of_unknown_kind_is_refused():
    detector = hand_made_detector()
    detector.heads["progan"].kind = "regression"
    with pytest.raises(TfdnadetError, match="Head 'progan' has kind 'regression'"):
        DetectorServing(detector)
