"""Attribution methods trained by the same commands (`--method`): DNA-Det, its Base ablation, and baselines.

Each method is a change to a config; +PT (stage-1 initialisation) combines with dnadet and base via --init.
With gfd, --init also gives the perceptual loss its feature extractor (unless gfd.perceptual_model is set).
"""

import copy

from tfdnadet.config import Config
from tfdnadet.errors import TfdnadetError

# method -> (backbone, loss, trained on whole images rather than patches)
METHODS = {
    "dnadet": ("dnadet", "pcl", False),  # Base+PCL (+PT with --init)  [Table 2]
    "base": ("dnadet", "ce", True),  # Base: cross-entropy on whole images (+PT with --init)  [Table 2]
    "dnadet_spectral": ("dnadet_spectral", "pcl", False),  # DNA-Det encoder fused with a spectral branch (models/two_domain.py)
    "spectral": ("spectral", "pcl", False),  # the spectral branch alone, trained as DNA-Det (ablation)
    "attnet": ("attnet", "ce", True),  # Yu et al. 2019
    "dct": ("dct_cnn", "ce", True),  # Frank et al. 2020 (LeveFreq)
    "prnu": ("prnu", "ce", True),  # Marra et al. 2019: closed-form fingerprints, no gradient training
    "gfd": ("dnadet", "gfd", True),  # Yang et al. 2021 (GFD-Net): G_enc + H on our encoder, trained with G_dec, D, C, F
}


def apply_method(config: Config, method: str) -> Config:
    """A copy of `config` set up for `method`."""
    if method not in METHODS:
        raise TfdnadetError(f"Unknown method. Received: method={method!r}. Known: {', '.join(METHODS)}")
    backbone, loss, whole_images = METHODS[method]
    config = copy.deepcopy(config)
    config.model.backbone = backbone
    config.train.loss = loss
    if backbone != "dnadet" or loss == "gfd":  # only the DNA-Det encoder's runs are averaged into one model
        config.stage1.encoders = config.train.runs_per_encoder = 1
        config.model.input_filter = "none"  # the baselines read the image as their papers do
    if whole_images:
        config.data.patch_size = config.data.input_size
        config.data.patches_per_image = 1
    return config
