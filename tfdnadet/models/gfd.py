"""GFD-Net (Yang et al. 2021) [3.2]: the fingerprint generator G, the discriminator D, the auxiliary classifier C.

G is a U-Net whose encoder G_enc is the DNA-Det encoder (Table 7): its `pool` output is the average pooling of
the latent code z (block 8), so the attribution head H (average pooling + linear [3.2]) is our `MulticlassHead`,
and a GFD model directory holds the same backbone and head as every other method: at inference only G_enc + H
run, as in the paper [4.3]. The decoder G_dec mirrors the encoder's resolutions with pix2pix's U-Net up-blocks
(transposed conv k4 s2, BN, ReLU, concatenated with the skip connection: the last block at each resolution) and
ends in a 3-channel fingerprint in [-1, 1] (tanh) at the input size.
"""

import os

import keras

from tfdnadet.errors import TfdnadetError
from tfdnadet.models.baselines import patchgan_blocks
from tfdnadet.models.detector import feature_extractor
from tfdnadet.models.model_dir import load_backbone, load_decoder, load_keras_file
from tfdnadet.models.encoder import ENCODER_BLOCKS, GRADCAM_LAYER, Encoder, batch_norm, block_layer_name, channels

SKIP_BLOCKS = (2, 4, 6)  # the encoder's last block at 1/2, 1/4 and 1/8 of the input size
LATENT_BLOCK = 8  # z, at 1/16: the code H reads (pooled) and the decoder starts from
UNET_LAYERS = tuple(block_layer_name(index) for index in (*SKIP_BLOCKS, LATENT_BLOCK))
UNET_STRIDE = 16  # inputs must be a multiple of it so every up-block meets its skip connection
PERCEPTUAL_LAYER = GRADCAM_LAYER  # a stage-1 encoder's mid-level block stands in for VGG-16's relu layers [3.3]


@keras.saving.register_keras_serializable(package="tfdnadet")
class FingerprintDecoder(keras.Model):
    """G_dec: {block2, block4, block6, block8 feature maps of the encoder} -> float32 fingerprint [B, S, S, 3]."""

    def __init__(self, width: float = 1.0, dtype=None, **kwargs):
        # === Functional Model ===
        maps = {
            name: keras.Input(shape=(None, None, channels(ENCODER_BLOCKS[index - 1][0], width)), name=name)
            for name, index in zip(UNET_LAYERS, (*SKIP_BLOCKS, LATENT_BLOCK))
        }
        x = maps[block_layer_name(LATENT_BLOCK)]
        for level, index in enumerate(reversed(SKIP_BLOCKS), start=1):
            skip = maps[block_layer_name(index)]
            x = keras.layers.Conv2DTranspose(skip.shape[-1], 4, strides=2, padding="same", name=f"up{level}_conv", dtype=dtype)(x)
            x = batch_norm(f"up{level}_bn", dtype)(x)
            x = keras.layers.ReLU(name=f"up{level}", dtype=dtype)(x)
            x = keras.layers.Concatenate(name=f"up{level}_skip", dtype=dtype)([x, skip])
        x = keras.layers.Conv2DTranspose(3, 4, strides=2, padding="same", name="fingerprint_conv", dtype="float32")(x)
        fingerprint = keras.layers.Activation("tanh", name="fingerprint", dtype="float32")(x)
        super().__init__(inputs=maps, outputs=fingerprint, dtype=dtype, **kwargs)

        # === Config ===
        self.width = width
        self.layer_dtype = keras.dtype_policies.get(dtype).name if dtype else None

    def get_config(self):
        return {"width": self.width, "name": self.name, "trainable": self.trainable, "dtype": self.layer_dtype}


@keras.saving.register_keras_serializable(package="tfdnadet")
class PatchDiscriminator(keras.Model):
    """D [3.2]: pix2pix's PatchGAN (three stride-2 k4 convs, one stride-1, as AttNet) -> float32 patch logits [B, h, w, 1]."""

    def __init__(self, width: float = 1.0, dtype=None, **kwargs):
        # === Functional Model ===
        images = keras.Input(shape=(None, None, 3), name="images")
        x = patchgan_blocks(images, width, dtype)
        logits = keras.layers.Conv2D(1, 4, padding="same", name="patch_logits", dtype="float32")(x)
        super().__init__(inputs=images, outputs=logits, dtype=dtype, **kwargs)

        # === Config ===
        self.width = width
        self.layer_dtype = keras.dtype_policies.get(dtype).name if dtype else None

    def get_config(self):
        return {"width": self.width, "name": self.name, "trainable": self.trainable, "dtype": self.layer_dtype}


@keras.saving.register_keras_serializable(package="tfdnadet")
class AuxiliaryClassifier(keras.Model):
    """C [3.2]: the paper's ResNet-50 replaced by our Table 7 encoder + a linear layer -> float32 logits [B, classes]."""

    def __init__(self, num_classes: int, width: float = 1.0, dtype=None, **kwargs):
        # === Layers ===
        encoder = Encoder(width=width, dtype=dtype, name="encoder")
        dense = keras.layers.Dense(num_classes, name="logits", dtype="float32")

        # === Functional Model ===
        images = keras.Input(shape=(None, None, 3), name="images")
        super().__init__(inputs=images, outputs=dense(encoder(images)), dtype=dtype, **kwargs)

        # === Config ===
        self.num_classes = num_classes
        self.width = width
        self.layer_dtype = keras.dtype_policies.get(dtype).name if dtype else None

    def get_config(self):
        return {
            "num_classes": self.num_classes,
            "width": self.width,
            "name": self.name,
            "trainable": self.trainable,
            "dtype": self.layer_dtype,
        }


def unet_features(encoder: keras.Model, extra: tuple = ()) -> keras.Model:
    """images -> {layer name: output} for the U-Net's skips and z (and `extra` layers), sharing the encoder's weights."""
    missing = [name for name in UNET_LAYERS if name not in {layer.name for layer in encoder.layers}]
    if missing:
        raise TfdnadetError(
            f"GFD-Net's generator needs the dnadet encoder (model.backbone: dnadet); this backbone has no layer {missing[0]!r}."
        )
    return feature_extractor(encoder, {*UNET_LAYERS, *extra})


def fingerprint_generator(encoder: keras.Model, decoder: FingerprintDecoder) -> keras.Model:
    """G = G_dec(G_enc(images)): float32 images [B, S, S, 3] -> fingerprints, sharing both models' weights."""
    features = unet_features(encoder)
    images = keras.Input(shape=(None, None, 3), name="images")
    return keras.Model(images, decoder(features(images)), name="fingerprint_generator")


def check_unet_size(size: int, what: str = "image size") -> None:
    if size % UNET_STRIDE:
        raise TfdnadetError(f"GFD-Net's U-Net needs an {what} that is a multiple of {UNET_STRIDE}. Received: {size}")


def perceptual_features(source: str, layer: int = PERCEPTUAL_LAYER) -> keras.Model:
    """The frozen feature extractor F of the perceptual loss [3.3, Eq. 5].

    No ImageNet VGG-16 weights can be downloaded here, so F is a stage-1 model directory's encoder up to block
    `layer` (trained on image-forensic transformations, [-1, 1] inputs like ours), or any .keras file whose
    outputs (one or several feature maps) are used as they are.
    """
    if os.path.isdir(source):
        backbone = load_backbone(source)
        if block_layer_name(layer) not in {item.name for item in backbone.layers}:
            raise TfdnadetError(f"Perceptual model {source}: its backbone has no layer {block_layer_name(layer)!r}.")
        model = keras.Model(backbone.inputs[0], backbone.get_layer(block_layer_name(layer)).output, name="perceptual")
    elif os.path.isfile(source) and source.endswith(".keras"):
        model = load_keras_file(source)
    else:
        raise TfdnadetError(f"Perceptual model not found: {source!r} is neither a model directory nor a .keras file.")
    model.trainable = False
    return model


def load_fingerprint_generator(model_dir: str, encoder: keras.Model) -> keras.Model:
    """G of a GFD model directory: its backbone `encoder` (G_enc) and its saved G_dec."""
    return fingerprint_generator(encoder, load_decoder(model_dir))
