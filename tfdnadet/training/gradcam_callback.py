"""Evidence during training: Grad-CAM of fixed validation images each epoch [5.4, Fig. 6], and TensorBoard."""

import os

import keras
import numpy as np
import tensorflow as tf

from tfdnadet.config import Config
from tfdnadet.data.preprocess import to_model_input
from tfdnadet.explain.gradcam import GradCAM, has_block, plot_gradcam_grid, to_uint8
from tfdnadet.models.detector import MULTICLASS, Detector, Preprocessing
from tfdnadet.models.encoder import GRADCAM_LAYER

GRADCAM_DIR = "gradcam"  # RUN_DIR/gradcam/epoch_NNN.png
TENSORBOARD_DIR = "tb"  # RUN_DIR/tb


class GradCAMCallback(keras.callbacks.Callback):
    """After each epoch, Grad-CAM of the model's `classifier` on fixed images -> OUT_DIR/epoch_NNN.png.

    The model must have `backbone` and `classifier` (the patch model). With `tensorboard_dir`, the same picture
    is also written as an image summary there (under gradcam/).
    """

    def __init__(
        self, images, labels, class_names: list, preprocessing: Preprocessing, out_dir: str, tensorboard_dir=None, layer: int = GRADCAM_LAYER
    ):
        super().__init__()
        self.preprocessing = preprocessing
        self.inputs = to_model_input(images, preprocessing.input_size)
        self.labels = np.asarray(labels)
        self.class_names = list(class_names)
        self.out_dir = out_dir
        self.tensorboard_dir = tensorboard_dir
        self.layer = layer
        self._explainer = None
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        if not has_block(self.model.backbone, self.layer):
            return  # nothing to explain: a backbone without spatial feature maps (the spectral-only ablation)
        if self._explainer is None:
            detector = Detector(self.model.backbone, {MULTICLASS: self.model.classifier}, {MULTICLASS: {}}, self.preprocessing, {})
            self._explainer = GradCAM(detector, MULTICLASS, self.layer)
        result = self._explainer(self.inputs)
        names = self.class_names
        captions = [
            f"true {names[label]}\npredicted {names[target]} {score:.2f}"
            for label, target, score in zip(self.labels, result.targets, result.scores)
        ]
        path = os.path.join(self.out_dir, f"epoch_{epoch + 1:03d}.png")
        title = f"epoch {epoch + 1}: Grad-CAM, encoder layer {self.layer}"
        plot_gradcam_grid(to_uint8(self.inputs), result.heatmaps, captions, path, title=title)
        if self.tensorboard_dir:
            self._write_summary(path, epoch + 1)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _write_summary(self, png: str, step: int) -> None:
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.tensorboard_dir, GRADCAM_DIR))
        with self._writer.as_default():
            tf.summary.image("gradcam", tf.image.decode_png(tf.io.read_file(png), channels=3)[None], step=step)
        self._writer.flush()


def spread_over_classes(labels, count: int) -> np.ndarray:
    """Indices of up to `count` items taken in turn from each class, earliest first: a fixed, balanced set."""
    labels = np.asarray(labels)
    rank = np.zeros(len(labels), np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rank[members] = np.arange(len(members))
    return np.lexsort((labels, rank))[:count]


def evidence_callbacks(run_dir: str, val_images, class_names: list, config: Config) -> list:
    """TensorBoard (RUN_DIR/tb) and Grad-CAM (RUN_DIR/gradcam) callbacks, as train.tensorboard and
    train.gradcam_images ask; Grad-CAM needs validation images (uint8 base size, labels)."""
    t = config.train
    tensorboard_dir = os.path.join(run_dir, TENSORBOARD_DIR) if t.tensorboard else None
    callbacks = [keras.callbacks.TensorBoard(tensorboard_dir, write_graph=False)] if tensorboard_dir else []
    if t.gradcam_images and val_images is not None and len(val_images[1]):
        chosen = spread_over_classes(val_images[1], t.gradcam_images)
        callbacks.append(
            GradCAMCallback(
                val_images[0][chosen],
                val_images[1][chosen],
                class_names,
                Preprocessing.from_data_config(config.data),
                os.path.join(run_dir, GRADCAM_DIR),
                tensorboard_dir,
            )
        )
    return callbacks
