"""Fitting a closed-form backbone (registered with fit=CLOSED_FORM, e.g. PRNU): one pass over the training images
at the base size (no upsampling: it would smooth a noise residual away), then the backbone's own `fit_head`."""

import os

import numpy as np

from tfdnadet.config import Config
from tfdnadet.data.pipeline import check_classes_present, load_images, make_image_dataset
from tfdnadet.data.sources import ImageList
from tfdnadet.models.backbones import create_backbone
from tfdnadet.models.detector import MULTICLASS, Detector, Preprocessing
from tfdnadet.models.model_dir import save_detector
from tfdnadet.training.trainer import TrainResult


def fit_closed_form(images: ImageList, data: str, run_dir: str, config: Config, on_skipped=None) -> TrainResult:
    """Fit `config.model.backbone`'s head on the images of a folder/manifest (`data`) and write RUN_DIR/model."""
    d = config.data
    loaded = load_images(images, d.base_size, d.max_pixels, min_size=1)
    if loaded.failures and on_skipped:
        on_skipped(loaded.failure_summary())
    check_classes_present(loaded, images.class_names, "training")
    backbone = create_backbone(config.model.backbone, image_size=d.base_size, name="encoder")
    features = np.concatenate([backbone.predict(batch, verbose=0) for batch in make_image_dataset(loaded.images, None, d.base_size, 64)])
    head = backbone.fit_head(features, loaded.labels, len(images.class_names))
    preprocessing = Preprocessing(d.base_size, d.base_size, 1, d.max_pixels)
    config_record = {**config.to_dict(), "data_source": os.path.abspath(data), "method": config.model.backbone}
    detector = Detector(backbone, {}, {}, preprocessing, config_record)
    detector.add_head(MULTICLASS, head, {"class_names": list(images.class_names)})
    model_dir = os.path.join(run_dir, "model")
    os.makedirs(run_dir, exist_ok=True)
    save_detector(detector, model_dir)
    return TrainResult(run_dir, model_dir, 1, 1, {})
