"""GFD-Net's training-time model [3.2-3.4]: G (G_enc + G_dec) with the head H, trained against D and C.

Each step alternates the paper's two objectives: first G and H with D and C fixed (Eq. 7), then D and C with G
fixed (Eq. 8), each with its own Adam. Losses are computed in float32 under mixed precision; under a
tf.distribute strategy each replica contributes its share of the gradients, as in `PatchContrastiveModel`.
"""

import copy
import os
from typing import Optional

import keras
import tensorflow as tf

from tfdnadet.config import Config, GFDConfig
from tfdnadet.errors import TfdnadetError
from tfdnadet.models.encoder import POOL_LAYER
from tfdnadet.models.gfd import (
    UNET_LAYERS,
    AuxiliaryClassifier,
    FingerprintDecoder,
    PatchDiscriminator,
    check_unet_size,
    perceptual_features,
    unet_features,
)
from tfdnadet.models.heads import MulticlassHead

GFD_LOSS = "gfd"  # config.train.loss of GFD-Net (methods.py: --method gfd)


class GFDModel(keras.Model):
    """Calls G_enc + H (logits); `train_step` runs the G/H step and then the D/C step.

    `backbone` (G_enc) and `classifier` (H) are what a model directory keeps; `decoder` (G_dec) draws fingerprints;
    `discriminator` (D), `auxiliary` (C) and `perceptual` (F) only train. A part whose loss weight is 0 is None.
    """

    def __init__(
        self,
        backbone: keras.Model,
        classifier: keras.Model,
        decoder: Optional[keras.Model],
        discriminator: Optional[keras.Model],
        auxiliary: Optional[keras.Model],
        perceptual: Optional[keras.Model],
        real_index: int,
        weights: GFDConfig,
        **kwargs,
    ):
        super().__init__(**kwargs)
        # === Layers ===
        self.backbone = backbone
        self.classifier = classifier
        self.decoder = decoder
        self.discriminator = discriminator
        self.auxiliary = auxiliary
        self.perceptual = perceptual
        # One encoder pass gives H its pooled code and G_dec its skips.
        self.encoder_maps = unet_features(backbone, extra=(POOL_LAYER,)) if decoder is not None else None
        # === Metrics ===
        self.loss_metric = keras.metrics.Mean(name="loss")  # the generator's weighted objective, Eq. 7
        self.accuracy_metric = keras.metrics.SparseCategoricalAccuracy(name="accuracy")  # H on the inputs
        names = ["latent_ce", "adversarial", "auxiliary_ce", "perceptual", "discriminator", "auxiliary_fit"]
        self.part_metrics = {name: keras.metrics.Mean(name=name) for name in names}
        # === Config ===
        self.real_index = real_index
        self.loss_weights = weights
        self.discriminator_optimizer = None
        self.built = True  # every part is a functional model, built when constructed

    def compile(self, optimizer, discriminator_optimizer=None, **kwargs):
        """`optimizer` trains G and H; `discriminator_optimizer` trains D and C (needed when either exists)."""
        super().compile(optimizer=optimizer, **kwargs)
        if (self.discriminator or self.auxiliary) and discriminator_optimizer is None:
            raise TfdnadetError("GFD-Net with D or C needs a discriminator_optimizer.")
        self.discriminator_optimizer = discriminator_optimizer

    def build_optimizers(self) -> None:
        """Create both Adams' slots (before loading a checkpoint that holds them)."""
        self.optimizer.build(self.generator_variables)
        if self.discriminator_optimizer is not None:
            self.discriminator_optimizer.build(self.discriminator_variables)

    @property
    def generator_variables(self) -> list:
        parts = (self.backbone, self.classifier, self.decoder)
        return [v for part in parts if part is not None for v in part.trainable_variables]

    @property
    def discriminator_variables(self) -> list:
        parts = (self.discriminator, self.auxiliary)
        return [v for part in parts if part is not None for v in part.trainable_variables]

    def call(self, images, training=False):
        return self.classifier(self.backbone(images, training=training), training=training)

    def train_step(self, data):
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        replicas = tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, tf.float32)
        with tf.GradientTape() as tape:
            losses, fingerprinted = self._generator_losses(images, labels, training=True)
            total = self._weighted(losses)
            scaled = self.optimizer.scale_loss(total / replicas)
        variables = self.generator_variables
        self.optimizer.apply(tape.gradient(scaled, variables), variables)
        if self.discriminator_optimizer is not None:
            fingerprinted = tf.stop_gradient(fingerprinted)
            with tf.GradientTape() as tape:
                adversary = self._discriminator_losses(images, labels, fingerprinted)
                scaled = self.discriminator_optimizer.scale_loss(tf.add_n(list(adversary.values())) / replicas)
            variables = self.discriminator_variables
            self.discriminator_optimizer.apply(tape.gradient(scaled, variables), variables)
            losses.update(adversary)
        return self._record(total, losses)

    def test_step(self, data):
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        losses, _ = self._generator_losses(images, labels, training=False)
        return self._record(self._weighted(losses), losses)

    def _generator_losses(self, images, labels, training: bool) -> tuple:
        """Eq. 7's parts (unweighted, float32) and the fingerprinted images x_fp = x_real + G(x) [Eq. 1]."""
        maps = self.encoder_maps(images, training=training) if self.decoder is not None else {POOL_LAYER: self.backbone(images, training=training)}
        logits = tf.cast(self.classifier(maps[POOL_LAYER], training=training), tf.float32)
        self.accuracy_metric.update_state(labels, logits)
        losses = {"latent_ce": _cross_entropy(labels, logits)}
        if self.decoder is None:
            return losses, None
        fingerprint = tf.cast(self.decoder({name: maps[name] for name in UNET_LAYERS}, training=training), tf.float32)
        real = random_real_images(tf.cast(images, tf.float32), labels, self.real_index)
        fingerprinted = real + fingerprint
        if self.discriminator is not None:
            # Non-saturating form of Eq. 4's generator term: x_fp should be judged an input image.
            fake_logits = self._judge(images, fingerprinted, training)[1]
            losses["adversarial"] = _binary_cross_entropy(tf.ones_like(fake_logits), fake_logits)
        if self.auxiliary is not None:
            losses["auxiliary_ce"] = _cross_entropy(labels, tf.cast(self.auxiliary(fingerprinted, training=training), tf.float32))
        if self.perceptual is not None:
            losses["perceptual"] = _feature_distance(self.perceptual(fingerprinted, training=False), self.perceptual(real, training=False))
        return losses, fingerprinted

    def _discriminator_losses(self, images, labels, fingerprinted) -> dict:
        """Eq. 8: D tells input images from fingerprinted ones [Eq. 4]; C learns the inputs' classes [Eq. 3]."""
        losses = {}
        if self.discriminator is not None:
            input_logits, fake_logits = self._judge(images, fingerprinted, training=True)
            losses["discriminator"] = _binary_cross_entropy(tf.ones_like(input_logits), input_logits) + _binary_cross_entropy(
                tf.zeros_like(fake_logits), fake_logits
            )
        if self.auxiliary is not None:
            losses["auxiliary_fit"] = _cross_entropy(labels, tf.cast(self.auxiliary(images, training=True), tf.float32))
        return losses

    def _judge(self, images, fingerprinted, training: bool) -> tuple:
        """D's patch logits of the inputs and of x_fp, from one batch, so its BN statistics are the same in both steps."""
        both = tf.concat([tf.cast(images, tf.float32), fingerprinted], axis=0)
        logits = tf.cast(self.discriminator(both, training=training), tf.float32)
        return tf.split(logits, 2, axis=0)

    def _weighted(self, losses: dict):
        w = self.loss_weights
        weights = {"latent_ce": w.latent_weight, "adversarial": w.adversarial_weight, "auxiliary_ce": w.auxiliary_weight, "perceptual": w.perceptual_weight}
        return tf.add_n([weights[name] * losses[name] for name in weights if name in losses])

    def _record(self, total, losses: dict) -> dict:
        self.loss_metric.update_state(total)
        for name, value in losses.items():
            self.part_metrics[name].update_state(value)
        shown = [self.loss_metric, self.accuracy_metric, *(self.part_metrics[name] for name in self.part_metrics if name in losses)]
        return {metric.name: metric.result() for metric in shown}


def random_real_images(images, labels, real_index: int):
    """For each image, a random image of the real class from the same batch [3.2].

    A replica's share of a batch that holds no real image (possible under a distribution strategy) draws from
    all of its images instead.
    """
    is_real = tf.cast(tf.equal(labels, real_index), tf.float32)
    candidates = tf.cond(tf.reduce_any(is_real > 0), lambda: is_real, lambda: tf.ones_like(is_real))
    picks = tf.random.categorical(tf.math.log(candidates)[tf.newaxis], tf.shape(labels)[0])[0]
    return tf.gather(images, picks)


def _cross_entropy(labels, logits):
    return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))


def _binary_cross_entropy(targets, logits):
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(targets, logits))


def _feature_distance(features, targets):
    """Mean squared distance of (one or several) feature maps [Eq. 5], in float32."""
    pairs = zip(tf.nest.flatten(features), tf.nest.flatten(targets))
    return tf.add_n([tf.reduce_mean(tf.square(tf.cast(a, tf.float32) - tf.cast(b, tf.float32))) for a, b in pairs])


def with_perceptual_init(config: Config, init_model: Optional[str]) -> Config:
    """`config` whose perceptual model is the --init model directory when gfd.perceptual_model is unset.

    Written into the run's config.yaml, so --resume (which has no --init) builds the same F.
    """
    if config.train.loss != GFD_LOSS or not init_model or config.gfd.perceptual_model or config.gfd.perceptual_weight == 0:
        return config
    config = copy.deepcopy(config)
    config.gfd.perceptual_model = os.path.abspath(init_model)
    return config


def build_gfd_model(config: Config, class_names: list, backbone: keras.Model, make_optimizer) -> GFDModel:
    """G_enc (`backbone`, already built or initialised) + H, G_dec, D, C, F as `config.gfd` asks, compiled.

    `make_optimizer()` returns a fresh Adam with the run's schedule (the paper's 1e-4, x0.9 every 500 steps [4.1]).
    """
    g, m, t = config.gfd, config.model, config.train
    if g.real_class not in class_names:
        raise TfdnadetError(f"GFD-Net adds fingerprints to real images: no class {g.real_class!r} among {', '.join(class_names)} (gfd.real_class).")
    if g.perceptual_weight > 0 and not g.perceptual_model:
        raise TfdnadetError(
            "GFD-Net's perceptual loss needs gfd.perceptual_model (a stage-1 model directory or a .keras file), or gfd.perceptual_weight: 0."
        )
    check_unet_size(config.data.input_size, "input size (data.input_size)")
    draws = max(g.adversarial_weight, g.auxiliary_weight, g.perceptual_weight) > 0
    feature_dim = backbone.outputs[0].shape[-1]
    model = GFDModel(
        backbone,
        MulticlassHead(feature_dim, len(class_names), name="multiclass"),
        FingerprintDecoder(m.width, dtype=t.precision, name="decoder") if draws else None,
        PatchDiscriminator(m.width, dtype=t.precision, name="discriminator") if g.adversarial_weight > 0 else None,
        AuxiliaryClassifier(len(class_names), m.width, dtype=t.precision, name="auxiliary") if g.auxiliary_weight > 0 else None,
        perceptual_features(g.perceptual_model, g.perceptual_layer) if g.perceptual_weight > 0 else None,
        class_names.index(g.real_class),
        g,
        name="gfd_model",
    )
    adversaries = g.adversarial_weight > 0 or g.auxiliary_weight > 0
    model.compile(make_optimizer(), make_optimizer() if adversaries else None, jit_compile=t.jit_compile)
    return model
