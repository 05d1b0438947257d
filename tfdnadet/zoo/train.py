"""Training the zoo's generators as GANs: one shared discriminator design, three GAN losses, finetuning.

Every architecture meets the same DCGAN-like discriminator, so what tells two zoo models apart is the
generator (architecture, seed, loss, content), as in the paper's Table 1.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from tfdnadet.zoo.generators import sample_latents

# The losses of the cross-loss split [5.2, Table 1]: the paper's CramerGAN and SSGAN keep the generators of
# MMDGAN and InfoMaxGAN but change the objective; hinge and least squares do the same here.
GAN_LOSSES = ("nonsaturating", "hinge", "lsgan")


def build_discriminator(image_size, width=64, seed=None):
    """images [B, S, S, 3] in [-1, 1] -> float32 logits [B, 1]: conv k4 s2 + LeakyReLU down to 4x4,
    minibatch standard deviation, linear."""
    init = _seeded_initializers(seed)
    images = keras.Input((image_size, image_size, 3), name="images")
    x = images
    resolution, filters = image_size, max(8, width // 2)
    while resolution > 4:
        resolution //= 2
        x = layers.Conv2D(filters, 4, strides=2, padding="same", kernel_initializer=next(init), name=f"down{resolution}")(x)
        x = layers.LeakyReLU(0.2, name=f"down{resolution}_lrelu")(x)
        filters = min(filters * 2, 2 * width)
    x = MinibatchStddev(name="minibatch_stddev")(x)
    x = layers.Flatten(name="flatten")(x)
    logits = layers.Dense(1, kernel_initializer=next(init), dtype="float32", name="logits")(x)
    return keras.Model(images, logits, name="discriminator")


@keras.saving.register_keras_serializable(package="tfdnadet")
class MinibatchStddev(layers.Layer):
    """ProGAN's minibatch standard deviation: appends the batch's mean feature spread as one channel.

    A generator that collapses to a few images makes the spread small, which the discriminator then sees.
    """

    def call(self, inputs):
        # epsilon keeps the square root's gradient finite when every sample is the same
        spread = tf.reduce_mean(tf.sqrt(tf.math.reduce_variance(inputs, axis=0) + 1e-8))
        extra = tf.ones_like(inputs[..., :1]) * spread
        return tf.concat([inputs, extra], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] + 1)


def gan_losses(loss, real_logits, fake_logits):
    """(discriminator loss, generator loss) of a GAN objective on the discriminator's logits."""
    if loss == "nonsaturating":
        d_loss = tf.reduce_mean(tf.nn.softplus(-real_logits)) + tf.reduce_mean(tf.nn.softplus(fake_logits))
        return d_loss, tf.reduce_mean(tf.nn.softplus(-fake_logits))
    if loss == "hinge":
        d_loss = tf.reduce_mean(tf.nn.relu(1.0 - real_logits)) + tf.reduce_mean(tf.nn.relu(1.0 + fake_logits))
        return d_loss, -tf.reduce_mean(fake_logits)
    if loss == "lsgan":
        d_loss = 0.5 * tf.reduce_mean(tf.square(real_logits - 1.0)) + 0.5 * tf.reduce_mean(tf.square(fake_logits))
        return d_loss, 0.5 * tf.reduce_mean(tf.square(fake_logits - 1.0))
    raise ValueError(f"Unknown GAN loss. Received: loss={loss!r}. Known: {list(GAN_LOSSES)}")


def train_gan(
    generator,
    discriminator,
    real_images,
    steps,
    *,
    loss="nonsaturating",
    seed=0,
    batch_size=32,
    learning_rate=2e-4,
    ema_decay=0.99,
    on_step=None,
):
    """Trains `generator` against `discriminator` on uint8 `real_images` [N, S, S, 3] for `steps` steps.

    One discriminator and one generator Adam update per step on the same fakes; random horizontal flips
    of the real images. The generator ends with the exponential moving average of its weights (decay
    `ema_decay`), which smooths out the last steps' oscillations. Finetuning is the same call on a trained
    pair with other images. `on_step(step)` hears about every finished step. Returns {"d_loss": [...],
    "g_loss": [...]} per step.
    """
    latent_dim = generator.input_shape[-1]
    # beta_1 = 0.5 as in DCGAN: a lower momentum keeps the two players from overshooting each other.
    g_optimizer = keras.optimizers.Adam(learning_rate, beta_1=0.5, beta_2=0.99)
    d_optimizer = keras.optimizers.Adam(learning_rate, beta_1=0.5, beta_2=0.99)
    noise = tf.random.Generator.from_seed(seed)
    averages = [tf.Variable(v, trainable=False) for v in generator.trainable_variables]

    @tf.function
    def step(real):
        z = noise.normal((tf.shape(real)[0], latent_dim))
        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            fake = generator(z, training=True)
            real_logits = discriminator(real, training=True)
            fake_logits = discriminator(fake, training=True)
            d_loss, g_loss = gan_losses(loss, real_logits, fake_logits)
        d_grads = d_tape.gradient(d_loss, discriminator.trainable_variables)
        g_grads = g_tape.gradient(g_loss, generator.trainable_variables)
        d_optimizer.apply_gradients(zip(d_grads, discriminator.trainable_variables))
        g_optimizer.apply_gradients(zip(g_grads, generator.trainable_variables))
        for average, variable in zip(averages, generator.trainable_variables):
            average.assign(ema_decay * average + (1.0 - ema_decay) * variable)
        return d_loss, g_loss

    history = {"d_loss": [], "g_loss": []}
    for number, real in enumerate(_real_batches(real_images, batch_size, seed).take(steps), start=1):
        d_loss, g_loss = step(real)
        history["d_loss"].append(float(d_loss))
        history["g_loss"].append(float(g_loss))
        if on_step:
            on_step(number)
    for average, variable in zip(averages, generator.trainable_variables):
        variable.assign(average)
    return history


def _real_batches(images, batch_size, seed):
    def to_float(batch):
        batch = tf.cast(batch, tf.float32) / 127.5 - 1.0
        return tf.image.random_flip_left_right(batch, seed=seed)

    return (
        tf.data.Dataset.from_tensor_slices(np.asarray(images, np.uint8))
        .shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        .repeat()
        .batch(batch_size, drop_remainder=True)
        .map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )


def _seeded_initializers(seed):
    """He-normal initializers, each with its own seed derived from `seed` (None: unseeded)."""
    count = 0
    while True:
        count += 1
        layer_seed = None if seed is None else int(np.random.SeedSequence([seed, count]).generate_state(1)[0] >> 1)
        yield keras.initializers.HeNormal(seed=layer_seed)


def refresh_batch_statistics(generator, seed=0, count=256):
    """Sets every BatchNormalization's moving statistics to those of `count` fresh samples.

    After a short GAN run the moving averages still lag the weights, so inference-mode samples would
    differ from what the discriminator saw; momentum 0 for one pass makes them exact.
    """
    norms = [layer for layer in generator.layers if isinstance(layer, layers.BatchNormalization)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.momentum = 0.0
    generator(sample_latents(count, generator.input_shape[-1], seed), training=True)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
