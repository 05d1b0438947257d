"""Convert the official DNA-Det PyTorch checkpoint (`model.pth`) into a tfdnadet model directory.

The released network (Table 7) is 8 blocks `main.{i}.main.{0: Conv2d, 1: BatchNorm2d, 2: LeakyReLU}`, global
average pooling and `classification_head.1` (Linear, after a Dropout). Our `Encoder` pads by 1 and convolves
with 'valid' padding, which is exactly PyTorch's k4/s2/p1 and k3/s1/p1; BatchNorm epsilon is PyTorch's 1e-5.
A backbone that holds the encoder's blocks as its spatial branch (`dnadet_spectral`) takes them the same way; its
other layers keep their fresh initialisation.
"""

import os
import zipfile

import keras
import numpy as np

from tfdnadet.errors import TfdnadetError
from tfdnadet.models.backbones import create_backbone
from tfdnadet.models.detector import MULTICLASS, Detector, Preprocessing
from tfdnadet.models.encoder import ENCODER_BLOCKS
from tfdnadet.models.model_dir import save_detector
from tfdnadet.models.heads import MulticlassHead

HEAD_WEIGHT, HEAD_BIAS = "classification_head.1.weight", "classification_head.1.bias"
IGNORED_SUFFIXES = ("num_batches_tracked",)
IGNORED_PREFIXES = ("head.",)  # the SupCon projection head, unused at inference


def read_torch_checkpoint(path: str) -> dict:
    """The checkpoint's tensors as numpy arrays, read with `weights_only=True` (no code is unpickled)."""
    try:
        import torch
    except ImportError:
        raise TfdnadetError("Reading a PyTorch checkpoint needs PyTorch: pip install 'tfdnadet[torch]'") from None
    if not os.path.isfile(path):
        raise TfdnadetError(f"Checkpoint not found: {path}")
    if not _looks_like_torch_save(path):
        raise TfdnadetError(f"{path} is not a PyTorch checkpoint: torch.save writes a zip archive (a pickle before PyTorch 1.6), and it is neither.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds of errors for a bad or unsafe file
        raise TfdnadetError(f"Cannot read {path} as a weights-only PyTorch checkpoint: {str(exc).splitlines()[0]}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise TfdnadetError(f"{path} holds a {type(state).__name__}, not a state dict.")
    return {_strip(key): value.detach().cpu().numpy() for key, value in state.items() if hasattr(value, "detach")}


def _looks_like_torch_save(path: str) -> bool:
    """A zip archive (torch.save since 1.6) or a pickle (protocol 2+ starts with 0x80)."""
    with open(path, "rb") as f:
        if zipfile.is_zipfile(f):
            return True
        f.seek(0)
        return f.read(1) == b"\x80"


def _strip(key: str) -> str:
    for prefix in ("module.", "backbone."):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def expected_shapes(width: float = 1.0, in_channels: int = 3) -> dict:
    """The released encoder's state-dict keys and shapes (OIHW convolutions)."""
    shapes, previous = {}, in_channels
    for index, (filters, kernel, _) in enumerate(ENCODER_BLOCKS):
        out = max(1, int(round(filters * width)))
        conv, bn = f"main.{index}.main.0", f"main.{index}.main.1"
        shapes[f"{conv}.weight"] = (out, previous, kernel, kernel)
        shapes[f"{conv}.bias"] = (out,)
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{bn}.{name}"] = (out,)
        previous = out
    return shapes


def check_state(state: dict, width: float = 1.0) -> None:
    """Raise a one-line error naming the first unexpected key, missing key or wrong shape."""
    expected = expected_shapes(width)
    for key, value in state.items():
        if key.endswith(IGNORED_SUFFIXES) or key.startswith(IGNORED_PREFIXES) or key in (HEAD_WEIGHT, HEAD_BIAS):
            continue
        if key not in expected:
            raise TfdnadetError(f"Unexpected key in checkpoint: {key!r} (not part of the DNA-Det encoder)")
        if tuple(value.shape) != expected[key]:
            raise TfdnadetError(f"Shape mismatch for {key!r}: checkpoint {tuple(value.shape)}, expected {expected[key]}")
    missing = [key for key in expected if key not in state]
    if missing:
        raise TfdnadetError(f"Missing key in checkpoint: {missing[0]!r}")
    if (HEAD_WEIGHT in state) != (HEAD_BIAS in state):
        raise TfdnadetError(f"Checkpoint has only one of {HEAD_WEIGHT!r} and {HEAD_BIAS!r}")


def convert_encoder(state: dict, width: float = 1.0, backbone: str = "dnadet") -> keras.Model:
    """A `backbone` whose encoder blocks (block{i}_conv, block{i}_bn) hold the checkpoint's weights."""
    encoder = create_backbone(backbone, width=width, name="encoder")
    if not all(layer in {x.name for x in encoder.layers} for layer in ("block1_conv", f"block{len(ENCODER_BLOCKS)}_bn")):
        raise TfdnadetError(f"Backbone {backbone!r} has no DNA-Det encoder blocks to load the checkpoint into.")
    for index in range(len(ENCODER_BLOCKS)):
        conv, bn = f"main.{index}.main.0", f"main.{index}.main.1"
        kernel = np.transpose(state[f"{conv}.weight"], (2, 3, 1, 0))  # OIHW -> HWIO
        encoder.get_layer(f"block{index + 1}_conv").set_weights([kernel, state[f"{conv}.bias"]])
        encoder.get_layer(f"block{index + 1}_bn").set_weights(
            [state[f"{bn}.{name}"] for name in ("weight", "bias", "running_mean", "running_var")]
        )
    return encoder


def import_torch_checkpoint(
    checkpoint: str,
    out_dir: str,
    class_names=None,
    image_size: int = 512,
    base_size: int = 128,
    patch_size: int = 64,
    backbone: str = "dnadet",
) -> Detector:
    """Write a model directory; a checkpoint whose head does not match `class_names` (pretraining) keeps none.

    With another `backbone` than dnadet the encoder becomes its spatial branch; the checkpoint's head reads the
    encoder's own pooled features, so it is not taken over (train heads with train-stage2 --init instead).
    """
    state = read_torch_checkpoint(checkpoint)
    check_state(state)
    if class_names and backbone != "dnadet":
        raise TfdnadetError(f"--classes needs backbone 'dnadet': the checkpoint's head does not read {backbone!r}'s features.")
    encoder = convert_encoder(state, backbone=backbone)
    preprocessing = Preprocessing(base_size, image_size, patch_size, max_pixels=100_000_000)
    detector = Detector(encoder, {}, {}, preprocessing, {"imported_from": checkpoint})
    if class_names:
        if HEAD_WEIGHT not in state:
            raise TfdnadetError(f"{checkpoint} has no classification head, so --classes cannot be used with it.")
        weight, bias = state[HEAD_WEIGHT], state[HEAD_BIAS]
        if weight.shape[0] != len(class_names):
            raise TfdnadetError(
                f"The checkpoint's head has {weight.shape[0]} classes but --classes names {len(class_names)}: {', '.join(class_names)}"
            )
        head = MulticlassHead(encoder.feature_dim, len(class_names), name=MULTICLASS)
        head.get_layer("logits").set_weights([weight.T, bias])
        detector.add_head(MULTICLASS, head, {"class_names": list(class_names)})
    save_detector(detector, out_dir)
    return detector
