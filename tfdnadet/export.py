"""SavedModel export for TensorFlow Serving, and the check that loads an export the way the server does."""

import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import tensorflow as tf

from tfdnadet.atomic import atomic_path
from tfdnadet.errors import TfdnadetError
from tfdnadet.models.model_dir import load_detector
from tfdnadet.precision import AUTO
from tfdnadet.serving import layout
from tfdnadet.serving.graph import DEFAULT_SIGNATURE, IMAGES_SIGNATURE, DetectorServing
from tfdnadet.serving.warmup import read_warmup, write_warmup

DEFAULT_BASE = "savedmodels"
SERVER_BASE = "/models"  # where the README's docker command mounts BASE inside the container
EXPORT_PRECISIONS = (AUTO, "float32", "mixed_bfloat16")
REST_UNENCODABLE = (tf.float16, tf.bfloat16)  # TF Serving's REST (JSON) encoder cannot return these
TF_NOISE = ("Graph execution error", "Detected at node", "<stack traces", "[[")


@dataclass
class ExportResult:
    path: str
    name: str
    version: int
    models_config: str
    signatures: list = field(default_factory=list)
    precision: str = "float32"  # the dtype policy the graph computes in; inputs and outputs are float32 in every one


def export_model(
    model_dir: str,
    name: str,
    base: str = DEFAULT_BASE,
    version: Optional[int] = None,
    server_base: str = SERVER_BASE,
    precision: str = AUTO,
) -> ExportResult:
    """Write BASE/NAME/VERSION/ (SavedModel + warm-up requests) atomically, then list every model in BASE/models.config.

    `precision`: "auto" keeps a mixed_bfloat16 model's bfloat16 graph where this machine has native bfloat16 (export
    on, or like, the serving machine) and computes in float32 elsewhere (`Detector.for_inference`); "float32" or
    "mixed_bfloat16" force one.
    """
    if precision not in EXPORT_PRECISIONS:
        raise TfdnadetError(f"precision must be one of {', '.join(EXPORT_PRECISIONS)}. Received: precision={precision!r}")
    layout.check_model_name(name)
    model_base = os.path.join(base, name)
    version = layout.next_version(model_base) if version is None else version
    if version < 1:
        raise TfdnadetError(f"--version must be a positive integer. Received: {version}")
    path = os.path.join(model_base, str(version))
    if os.path.exists(path):
        raise TfdnadetError(f"{path} already exists: an exported version is never overwritten; choose another --version.")
    serving = DetectorServing(load_detector(model_dir), precision)
    signatures = serving.signatures()
    # The temporary folder's name starts with '.', so a server watching BASE/NAME never sees a half-written version.
    try:
        with atomic_path(path, directory=True, overwrite=False) as temporary:
            tf.saved_model.save(serving, temporary, signatures=signatures)
            write_warmup(temporary, name, serving.warmup_requests())
    except FileExistsError:
        raise TfdnadetError(f"{path} was written by another export meanwhile and is kept; run the export again for the next version.") from None
    models_config = layout.write_models_config(base, server_base)
    return ExportResult(path, name, version, models_config, sorted(signatures), serving.precision)


def check_export(path: str) -> dict:
    """Load an export as TF Serving would, list its signatures and replay its warm-up requests."""
    version_dir = layout.export_dir(path)
    try:
        loaded = tf.saved_model.load(version_dir)
    except Exception as exc:  # a damaged SavedModel raises many kinds of errors
        raise TfdnadetError(f"Cannot load the SavedModel in {version_dir}: {_first_line(exc)}") from None
    signatures = {key: _describe(function) for key, function in loaded.signatures.items()}
    missing = [key for key in (DEFAULT_SIGNATURE, IMAGES_SIGNATURE) if key not in signatures]
    if missing:
        raise TfdnadetError(f"{version_dir} lacks the signature(s) {', '.join(missing)}; it has {', '.join(sorted(signatures))}.")
    unencodable = [
        f"{key}.{output}"
        for key, function in loaded.signatures.items()
        for output, spec in function.structured_outputs.items()
        if spec.dtype in REST_UNENCODABLE
    ]
    if unencodable:
        raise TfdnadetError(f"Outputs the REST API cannot encode (float16/bfloat16): {', '.join(unencodable)}")
    requests = []
    for signature, inputs in read_warmup(version_dir):
        if signature not in loaded.signatures:
            raise TfdnadetError(f"A warm-up request names the signature {signature!r}, which {version_dir} lacks.")
        try:
            outputs = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        except tf.errors.OpError as exc:
            raise TfdnadetError(f"The warm-up request for {signature!r} failed: {_first_line(exc)}") from None
        requests.append({"signature": signature, "outputs": {k: _first_row(v) for k, v in sorted(outputs.items())}})
    return {"path": version_dir, "signatures": signatures, "requests": requests}


def _describe(function) -> dict:
    inputs = function.structured_input_signature[1]
    return {
        "inputs": {k: _spec(v) for k, v in sorted(inputs.items())},
        "outputs": {k: _spec(v) for k, v in sorted(function.structured_outputs.items())},
    }


def _spec(spec: tf.TensorSpec) -> dict:
    return {"dtype": spec.dtype.name, "shape": [-1 if d is None else d for d in spec.shape.as_list()]}


def _first_row(tensor: tf.Tensor):
    value = tensor.numpy()[0]
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return np.asarray(value).tolist()


def _first_line(exc: BaseException) -> str:
    """The line that names the problem; TensorFlow wraps it in lines about graph nodes and stack traces."""
    text = exc.message if isinstance(exc, tf.errors.OpError) else str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(TF_NOISE)]
    return lines[0] if lines else type(exc).__name__
