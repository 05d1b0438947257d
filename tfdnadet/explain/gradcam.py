"""Grad-CAM (Selvaraju et al. 2017) of any head at a named encoder block [5.1, Fig. 6 and 13], and overlays.

The forward pass is the detector's own (`Detector.features`, `logits`, `aggregate`): the same patch grid and the
same answer as predict. The encoder's blocks are named layers, read with the head's input in that one pass, so no
graph surgery is needed.
"""

import math
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure

from tfdnadet.data.pipeline import LoadedImages, make_image_dataset
from tfdnadet.errors import TfdnadetError
from tfdnadet.inference import expand_inputs, load_for_detector
from tfdnadet.models.detector import MULTICLASS, Detector, untile
from tfdnadet.models.encoder import ENCODER_BLOCKS, GRADCAM_LAYER, block_layer_name
from tfdnadet.plots import save_figure

PREDICTED = -1  # class index meaning "whatever the head predicts"
OVERLAY_ALPHA = 0.45  # heatmap opacity over the image
CONTACT_SHEET_MAX = 48  # a contact sheet shows at most this many images


@dataclass
class GradCAMResult:
    heatmaps: np.ndarray  # float32 [N, H, W] in [0, 1] at the input images' resolution
    targets: np.ndarray  # int32 [N] output explained (class index; 0 for a one-logit head)
    scores: np.ndarray  # float32 [N] its probability: softmax for multiclass heads, sigmoid otherwise


class GradCAM:
    """Grad-CAM of the detector's head `head` (by name, any kind) at encoder block `layer`: build once, call on
    batches of model inputs.

    With preprocessing `predict_on: patches` each cell of the grid is explained and the maps are put together
    (where cells overlap or come from several scales, each pixel takes the mean of the cells covering it);
    the explained score is the sum of the patches' logits of the class the aggregated answer picks. Under mixed
    precision a float32 twin of the detector is explained, its weights copied on each call (it follows training):
    the channel weights are spatial means of small gradients, which bfloat16's 8-bit mantissa would round coarsely,
    and explaining is a few images, not a throughput path.
    """

    def __init__(self, detector: Detector, head: str = MULTICLASS, layer: int = GRADCAM_LAYER):
        if head not in detector.heads:
            raise TfdnadetError(f"Unknown head. Received: head={head!r}. This model's heads: {', '.join(sorted(detector.heads))}")
        _check_layer(layer, detector.input_layer(head))
        if not has_block(detector.backbone, layer):
            raise TfdnadetError(f"This {type(detector.backbone).__name__} backbone has no block {layer} for Grad-CAM to explain.")
        self.source = detector.with_heads([head])
        self.detector = self.source.float32()
        self.head = head
        self.layer = layer
        self.num_outputs = int(detector.heads[head].outputs[0].shape[-1])
        self._explain_graph = tf.function(self._explain, reduce_retracing=True, autograph=False)  # as Detector.predict

    def __call__(self, images, class_index=None) -> GradCAMResult:
        """float32 [B, H, W, 3] in [-1, 1] -> maps for `class_index` (int or [B]; None: the predicted output)."""
        images = tf.convert_to_tensor(images, tf.float32)
        wanted = np.broadcast_to(PREDICTED if class_index is None else class_index, [images.shape[0]]).astype(np.int32)
        if class_index is not None and not np.all((wanted >= 0) & (wanted < self.num_outputs)):
            raise TfdnadetError(f"class_index must be in 0..{self.num_outputs - 1}. Received: class_index={class_index}")
        self.detector.copy_weights_from(self.source)
        heatmaps, targets, scores = self._explain_graph(images, tf.constant(wanted))
        return GradCAMResult(heatmaps.numpy(), targets.numpy(), scores.numpy())

    def _explain(self, images, wanted):
        d, block = self.detector, block_layer_name(self.layer)
        with tf.GradientTape() as tape:
            features = d.features(images, {block, d.input_layer(self.head)})
            logits = d.logits(features)[self.head]  # [B, n, K]
            probabilities = d.aggregate({self.head: logits})[self.head]
            targets = tf.where(wanted == PREDICTED, tf.argmax(probabilities, axis=-1, output_type=tf.int32), wanted)
            explained = tf.gather(logits, targets, axis=2, batch_dims=1)
        # Images (and patches) do not interact in inference mode, so the gradient of the sum is each one's own.
        feature_map = features.maps[block]
        gradients = tape.gradient(explained, feature_map)
        weights = tf.reduce_mean(gradients, axis=[1, 2], keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * feature_map, axis=-1, keepdims=True))
        p = d.preprocessing
        cell = tf.shape(images)[1:3] if p.grid_patch_size is None else [p.patch_size, p.patch_size]
        cam = tf.image.resize(cam, cell, method="bilinear")[..., 0]
        if p.grid_patch_size is not None:
            cam = untile(cam, tf.shape(images), p.patch_size, p.stride, p.grid_scales)
        heatmaps = tf.math.divide_no_nan(cam, tf.reduce_max(cam, axis=[1, 2], keepdims=True))  # all-zero map stays 0
        return tf.clip_by_value(heatmaps, 0.0, 1.0), targets, tf.gather(probabilities, targets, batch_dims=1)


def has_block(backbone, layer: int) -> bool:
    """Whether `backbone` has a feature map named for block `layer` (the spectral-only ablation has none)."""
    return block_layer_name(layer) in {x.name for x in backbone.layers}


def _check_layer(layer: int, head_input: str) -> None:
    """The explained block must lie on the path from the image to the head."""
    blocks = range(1, len(ENCODER_BLOCKS) + 1)
    last = next((index for index in blocks if block_layer_name(index) == head_input), len(ENCODER_BLOCKS))
    if not 1 <= layer <= last:
        reads = f" (this head reads encoder layer {last})" if last < len(ENCODER_BLOCKS) else ""
        raise TfdnadetError(f"Encoder layer must be 1..{last}{reads}. Received: layer={layer}")


def output_names(detector: Detector, head: str) -> list:
    """What each output of a head means: class names for a multiclass head, the head's name otherwise."""
    if detector.heads[head].kind == MULTICLASS:
        return list(detector.head_info[head]["class_names"])
    return [head]


def to_uint8(model_inputs) -> np.ndarray:
    """Model inputs in [-1, 1] back to displayable uint8 RGB."""
    return np.clip((np.asarray(model_inputs) + 1.0) * 127.5, 0, 255).round().astype(np.uint8)


def explain_loaded(explainer: GradCAM, loaded: LoadedImages, input_size: int, batch_size: int = 16, class_index=None):
    """Yield (paths, uint8 images at input size, GradCAMResult) per batch of decoded base-size images."""
    start = 0
    for batch in make_image_dataset(loaded.images, None, input_size, batch_size):
        end = start + len(batch)
        wanted = None if class_index is None else np.asarray(class_index)[start:end]
        yield loaded.paths[start:end], to_uint8(batch), explainer(batch, wanted)
        start = end


def plot_gradcam_grid(images, heatmaps, captions: list, path: str, title: Optional[str] = None, columns: int = 4) -> None:
    """Jet heatmaps over images (red = strong response), one captioned panel each, with a colour bar."""
    columns = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / columns)
    # A fixed layout in inches: matplotlib's constrained layout took 60 % of the time of a picture (0.6 s of a grid
    # of 8 here), paid by every training epoch and by every image `tfdnadet gradcam` explains.
    top, caption, panel, bar = (0.4 if title else 0.05), 0.4, 2.6, 0.9
    width, height = panel * columns + bar, (panel + caption) * rows + top
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(rows, columns, squeeze=False, gridspec_kw={
        "left": 0.05 / width, "right": (width - bar) / width, "bottom": 0.05 / height,
        "top": 1 - (top + caption) / height, "wspace": 0.08, "hspace": caption / panel,
    })
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, heatmap, caption_text in zip(axes.flat, images, heatmaps, captions):
        ax.imshow(image)
        shown = ax.imshow(heatmap, cmap="jet", alpha=OVERLAY_ALPHA, vmin=0.0, vmax=1.0)
        ax.set_title(caption_text, fontsize=8)
    grid_height = (height - top - caption) / height
    colour_bar = fig.add_axes([(width - bar + 0.2) / width, 0.05 / height + 0.1 * grid_height, 0.15 / width, 0.8 * grid_height])
    fig.colorbar(shown, cax=colour_bar, label="Grad-CAM response")
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.06 / height, va="top")
    save_figure(fig, path)


@dataclass
class Explanation:
    path: str
    overlay: str
    head: str
    label: str  # the explained output: predicted class (multiclass) or the head's name
    score: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class GradCAMFiles:
    explanations: list
    failures: list  # (path, reason)
    contact_sheet: Optional[str] = None
    layer: int = GRADCAM_LAYER
    head: str = MULTICLASS


def explain_files(
    detector: Detector, inputs: list, out_dir: str, head: str = MULTICLASS, layer: int = GRADCAM_LAYER, batch_size: int = 16
) -> GradCAMFiles:
    """One overlay PNG per image in out_dir, plus contact_sheet.png when there are several images."""
    explainer = GradCAM(detector, head, layer)
    names = output_names(detector, head)
    files, failures = expand_inputs(inputs)
    loaded = load_for_detector(detector, files)
    failures += loaded.failures
    explanations, sheet, used = [], [], set()
    for paths, images, result in explain_loaded(explainer, loaded, detector.preprocessing.input_size, batch_size):
        for path, image, heatmap, target, score in zip(paths, images, result.heatmaps, result.targets, result.scores):
            overlay = os.path.join(out_dir, _unique_png_name(path, used))
            caption = f"{_short(os.path.basename(path))}\n{head}: {names[target]} {score:.3f}"
            plot_gradcam_grid([image], [heatmap], [caption], overlay, title=f"Grad-CAM, encoder layer {layer}")
            explanations.append(Explanation(path, overlay, head, names[target], float(score)))
            if len(sheet) < CONTACT_SHEET_MAX:
                sheet.append((image, heatmap, caption))
    result = GradCAMFiles(explanations, failures, layer=layer, head=head)
    if len(explanations) > 1:
        result.contact_sheet = os.path.join(out_dir, "contact_sheet.png")
        shown = f"first {len(sheet)} of {len(explanations)}" if len(sheet) < len(explanations) else f"{len(sheet)} images"
        plot_gradcam_grid(*zip(*sheet), result.contact_sheet, title=f"Grad-CAM, head {head}, encoder layer {layer} ({shown})")
    return result


def _unique_png_name(path: str, used: set) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    name, count = f"{stem}_gradcam.png", 1
    while name in used:
        count += 1
        name = f"{stem}_{count}_gradcam.png"
    used.add(name)
    return name


def _short(text: str, limit: int = 28) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
