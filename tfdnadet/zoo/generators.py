"""Small GAN generators of the paper's architectures (App. B, Tables 9-12) plus DCGAN and StyleGAN2.

Every generator is a functional `keras.Model` mapping z [B, latent_dim] to images in [-1, 1] of
shape [B, image_size, image_size, 3]. It starts at 4x4 and doubles the resolution per block, so the
architectures differ in what leaves traces: the upsampling op (nearest, bilinear, depth-to-space,
transposed conv), the normalisation (PixelNorm, BatchNorm, weight demodulation) and the blocks.
Every generator ends with a layer named "tanh"; its input is the generator's pre-activation output.
"""

import functools

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

GENERATORS = {}

# Channels at a resolution: `width` up to 16x16, then halved per block (as the paper's generators
# narrow at high resolution), never below this floor and always a multiple of 4 (depth-to-space).
_MIN_CHANNELS = 16
_MAPPING_LAYERS = 4  # StyleGAN2 mapping MLP depth (8 in StyleGAN2; 4 keeps the zoo small).


def register_generator(name):
    """Decorator adding a builder `fn(image_size, latent_dim, width, init) -> Model` to GENERATORS."""

    def decorator(builder):
        if name in GENERATORS:
            raise ValueError(f"Generator architecture already registered. Received: name={name!r}")
        GENERATORS[name] = builder
        return builder

    return decorator


def generator_names():
    """Registered architecture names, sorted."""
    return sorted(GENERATORS)


def build_generator(name, image_size=64, latent_dim=64, width=64, seed=None):
    """Builds generator `name`: z [B, latent_dim] -> float32 images [B, image_size, image_size, 3].

    `width` is the channel count of the widest block; `seed` seeds every weight initializer, so
    two builds with the same seed have identical weights.
    """
    if name not in GENERATORS:
        raise ValueError(
            f"Unknown generator architecture. Received: name={name!r}. Known: {generator_names()}"
        )
    if not _is_int(image_size) or image_size < 8 or image_size & (image_size - 1):
        raise ValueError(
            f"`image_size` must be a power of two >= 8. Received: image_size={image_size!r}"
        )
    if not _is_int(latent_dim) or latent_dim < 1:
        raise ValueError(f"`latent_dim` must be a positive integer. Received: latent_dim={latent_dim!r}")
    if not _is_int(width) or width < _MIN_CHANNELS or width % 4:
        raise ValueError(
            f"`width` must be a multiple of 4 and >= {_MIN_CHANNELS}. Received: width={width!r}"
        )
    return GENERATORS[name](image_size, latent_dim, width, _Initializers(seed))


def sample_images(generator, count, seed, batch_size=64):
    """Renders `count` images with z ~ N(0, 1) from a numpy RNG seeded by `seed`: uint8 [count, H, W, 3]."""
    for arg_name, value in (("count", count), ("batch_size", batch_size)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"`{arg_name}` must be a positive integer. Received: {arg_name}={value!r}")
    latents = sample_latents(count, generator.input_shape[-1], seed)
    batches = [
        ops.convert_to_numpy(generator(latents[start : start + batch_size], training=False))
        for start in range(0, count, batch_size)
    ]
    return to_uint8(np.concatenate(batches))


def sample_latents(count, latent_dim, seed):
    """z ~ N(0, 1) as float32 [count, latent_dim] from a numpy RNG seeded by `seed`."""
    return np.random.default_rng(seed).standard_normal((count, latent_dim)).astype("float32")


def to_uint8(images):
    """Maps float images in [-1, 1] to uint8 [0, 255] with rounding and clipping."""
    return np.clip(np.rint((np.asarray(images) + 1.0) * 127.5), 0, 255).astype(np.uint8)


# === Custom layers ===


@keras.saving.register_keras_serializable(package="tfdnadet")
class PixelNorm(layers.Layer):
    """ProGAN pixelwise feature normalisation: x / sqrt(mean(x^2 over channels) + epsilon)."""

    def __init__(self, epsilon=1e-8, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def call(self, inputs):
        return inputs * ops.rsqrt(ops.mean(ops.square(inputs), axis=-1, keepdims=True) + self.epsilon)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="tfdnadet")
class DepthToSpace(layers.Layer):
    """Depth-to-space upsampling (MMDGAN): [B, H, W, C] -> [B, H*r, W*r, C/r^2], r = block_size."""

    def __init__(self, block_size=2, **kwargs):
        super().__init__(**kwargs)
        self.block_size = block_size

    def build(self, input_shape):
        if input_shape[-1] % (self.block_size**2):
            raise ValueError(
                f"DepthToSpace needs channels divisible by block_size**2. "
                f"Received: channels={input_shape[-1]}, block_size={self.block_size}"
            )

    def call(self, inputs):
        return tf.nn.depth_to_space(inputs, self.block_size)

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        r = self.block_size
        return (batch, _times(height, r), _times(width, r), channels // (r * r))

    def get_config(self):
        return {**super().get_config(), "block_size": self.block_size}


@keras.saving.register_keras_serializable(package="tfdnadet")
class ConstantInput(layers.Layer):
    """StyleGAN2's learned constant [size, size, channels], repeated over the batch of `inputs`."""

    def __init__(self, channels, size=4, initializer="random_normal", **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.size = size
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape):
        self.constant = self.add_weight(
            name="constant",
            shape=(1, self.size, self.size, self.channels),
            initializer=self.initializer,
        )

    def call(self, inputs):
        batch = ops.shape(inputs)[0]
        return ops.broadcast_to(self.constant, (batch, self.size, self.size, self.channels))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.size, self.size, self.channels)

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "size": self.size,
            "initializer": keras.initializers.serialize(self.initializer),
        }


@keras.saving.register_keras_serializable(package="tfdnadet")
class ModulatedConv2D(layers.Layer):
    """StyleGAN2 modulated convolution on inputs [x, w], stride 1, "same" padding.

    A per-sample style s = affine(w) (bias initialised to 1) scales the input channels; with
    `demodulate`, each output channel is divided by the norm of its style-scaled kernel. Scaling
    the activations instead of the kernel is the equivalent, cheaper form of the same operation.
    """

    def __init__(
        self,
        filters,
        kernel_size=3,
        demodulate=True,
        epsilon=1e-8,
        kernel_initializer="he_normal",
        style_initializer="glorot_normal",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.demodulate = demodulate
        self.epsilon = epsilon
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.style_initializer = keras.initializers.get(style_initializer)

    def build(self, input_shape):
        x_shape, w_shape = input_shape
        channels = x_shape[-1]
        k = self.kernel_size
        self.kernel = self.add_weight(
            name="kernel", shape=(k, k, channels, self.filters), initializer=self.kernel_initializer
        )
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")
        self.style_kernel = self.add_weight(
            name="style_kernel", shape=(w_shape[-1], channels), initializer=self.style_initializer
        )
        self.style_bias = self.add_weight(name="style_bias", shape=(channels,), initializer="ones")

    def call(self, inputs):
        x, w = inputs
        style = ops.matmul(w, self.style_kernel) + self.style_bias
        x = x * style[:, None, None, :]
        y = ops.conv(x, self.kernel, strides=1, padding="same")
        if self.demodulate:
            kernel_energy = ops.sum(ops.square(self.kernel), axis=(0, 1))
            norm = ops.rsqrt(ops.matmul(ops.square(style), kernel_energy) + self.epsilon)
            y = y * norm[:, None, None, :]
        return y + self.bias

    def compute_output_shape(self, input_shape):
        x_shape = input_shape[0]
        return (*x_shape[:-1], self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "demodulate": self.demodulate,
            "epsilon": self.epsilon,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "style_initializer": keras.initializers.serialize(self.style_initializer),
        }


# === Architectures ===


@register_generator("progan")
def _build_progan(image_size, latent_dim, width, init):
    """ProGAN (Table 9): PixelNorm, DCBlocks of nearest upsample + (conv3, LReLU, PN) x 2."""
    z = keras.Input((latent_dim,), name="z")
    x = PixelNorm(name="z_norm")(z)
    x = layers.Dense(16 * width, kernel_initializer=init(), name="dense")(x)
    x = layers.Reshape((4, 4, width), name="reshape")(x)
    x = layers.LeakyReLU(0.2, name="dense_lrelu")(x)
    x = PixelNorm(name="dense_norm")(x)
    x = _conv_lrelu_pn(x, width, init, "block4")
    for resolution in _resolutions(image_size):
        prefix = f"block{resolution}"
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"{prefix}_up")(x)
        x = _conv_lrelu_pn(x, _channels(width, resolution), init, f"{prefix}_a")
        x = _conv_lrelu_pn(x, _channels(width, resolution), init, f"{prefix}_b")
    x = layers.Conv2D(3, 3, padding="same", kernel_initializer=init(1.0), name="to_rgb")(x)
    return _finish(z, x, "progan")


@register_generator("mmdgan")
def _build_mmdgan(image_size, latent_dim, width, init):
    """MMDGAN (Table 10): ResBlocks with depth-to-space upsampling, BN+ReLU, final k5 s2 deconv.

    The paper ends with a sigmoid; tanh is the same curve rescaled to [-1, 1].
    """
    z = keras.Input((latent_dim,), name="z")
    x = layers.Dense(16 * width, kernel_initializer=init(1.0), name="dense")(z)
    x = layers.Reshape((4, 4, width), name="reshape")(x)
    upsample = functools.partial(DepthToSpace, 2)
    for resolution in _resolutions(image_size // 2):
        x = _res_block(x, _channels(width, resolution), upsample, init, f"block{resolution}")
    x = _bn_relu(x, "out")
    x = layers.Conv2DTranspose(
        3, 5, strides=2, padding="same", kernel_initializer=init(1.0), name="to_rgb"
    )(x)
    return _finish(z, x, "mmdgan")


@register_generator("sngan")
def _build_sngan(image_size, latent_dim, width, init):
    """SNGAN (Table 11): ResBlocks with nearest upsampling, BN+ReLU, conv3, tanh."""
    return _build_resnet_generator(image_size, latent_dim, width, init, "nearest", "sngan")


@register_generator("infomaxgan")
def _build_infomaxgan(image_size, latent_dim, width, init):
    """InfoMaxGAN (Table 12): the SNGAN ResBlock generator with bilinear upsampling."""
    return _build_resnet_generator(image_size, latent_dim, width, init, "bilinear", "infomaxgan")


@register_generator("dcgan")
def _build_dcgan(image_size, latent_dim, width, init):
    """DCGAN: blocks of transposed conv k4 s2 + BN + ReLU, final transposed conv to RGB."""
    z = keras.Input((latent_dim,), name="z")
    x = layers.Dense(16 * width, kernel_initializer=init(1.0), name="dense")(z)
    x = layers.Reshape((4, 4, width), name="reshape")(x)
    x = _bn_relu(x, "dense")
    for resolution in _resolutions(image_size // 2):
        x = layers.Conv2DTranspose(
            _channels(width, resolution),
            4,
            strides=2,
            padding="same",
            kernel_initializer=init(),
            name=f"block{resolution}_deconv",
        )(x)
        x = _bn_relu(x, f"block{resolution}")
    x = layers.Conv2DTranspose(
        3, 4, strides=2, padding="same", kernel_initializer=init(1.0), name="to_rgb"
    )(x)
    return _finish(z, x, "dcgan")


@register_generator("stylegan2")
def _build_stylegan2(image_size, latent_dim, width, init):
    """StyleGAN2-like: mapping MLP, learned constant, modulated/demodulated 3x3 convs, bilinear
    upsampling and skip toRGB outputs summed across resolutions (no noise injection)."""
    z = keras.Input((latent_dim,), name="z")
    w = PixelNorm(name="z_norm")(z)
    for i in range(_MAPPING_LAYERS):
        w = layers.Dense(latent_dim, kernel_initializer=init(), name=f"mapping{i}")(w)
        w = layers.LeakyReLU(0.2, name=f"mapping{i}_lrelu")(w)
    x = ConstantInput(width, 4, initializer=init.unit_normal(), name="constant")(w)
    x = _modulated_conv_lrelu(x, w, width, init, "block4")
    rgb = _to_rgb_modulated(x, w, init, "block4")
    for resolution in _resolutions(image_size):
        prefix = f"block{resolution}"
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"{prefix}_up")(x)
        x = _modulated_conv_lrelu(x, w, _channels(width, resolution), init, f"{prefix}_a")
        x = _modulated_conv_lrelu(x, w, _channels(width, resolution), init, f"{prefix}_b")
        rgb = layers.UpSampling2D(2, interpolation="bilinear", name=f"{prefix}_rgb_up")(rgb)
        rgb = layers.Add(name=f"{prefix}_rgb_add")([rgb, _to_rgb_modulated(x, w, init, prefix)])
    return _finish(z, rgb, "stylegan2")


# === Building blocks ===


def _build_resnet_generator(image_size, latent_dim, width, init, interpolation, name):
    z = keras.Input((latent_dim,), name="z")
    x = layers.Dense(16 * width, kernel_initializer=init(1.0), name="dense")(z)
    x = layers.Reshape((4, 4, width), name="reshape")(x)
    upsample = functools.partial(layers.UpSampling2D, 2, interpolation=interpolation)
    for resolution in _resolutions(image_size):
        x = _res_block(x, _channels(width, resolution), upsample, init, f"block{resolution}")
    x = _bn_relu(x, "out")
    x = layers.Conv2D(3, 3, padding="same", kernel_initializer=init(1.0), name="to_rgb")(x)
    return _finish(z, x, name)


def _res_block(x, filters, make_upsample, init, prefix):
    """Up-ResBlock (Tables 10-12): BN, ReLU, up, conv3, BN, ReLU, conv3, plus up + conv1 shortcut."""
    shortcut = make_upsample(name=f"{prefix}_skip_up")(x)
    shortcut = layers.Conv2D(filters, 1, kernel_initializer=init(1.0), name=f"{prefix}_skip")(shortcut)
    x = _bn_relu(x, f"{prefix}_a")
    x = make_upsample(name=f"{prefix}_up")(x)
    x = layers.Conv2D(filters, 3, padding="same", kernel_initializer=init(), name=f"{prefix}_conv_a")(x)
    x = _bn_relu(x, f"{prefix}_b")
    x = layers.Conv2D(filters, 3, padding="same", kernel_initializer=init(), name=f"{prefix}_conv_b")(x)
    return layers.Add(name=f"{prefix}_add")([shortcut, x])


def _bn_relu(x, prefix):
    x = layers.BatchNormalization(name=f"{prefix}_bn")(x)
    return layers.ReLU(name=f"{prefix}_relu")(x)


def _conv_lrelu_pn(x, filters, init, prefix):
    x = layers.Conv2D(filters, 3, padding="same", kernel_initializer=init(), name=f"{prefix}_conv")(x)
    x = layers.LeakyReLU(0.2, name=f"{prefix}_lrelu")(x)
    return PixelNorm(name=f"{prefix}_norm")(x)


def _modulated_conv_lrelu(x, w, filters, init, prefix):
    x = ModulatedConv2D(
        filters, 3, kernel_initializer=init(), style_initializer=init(1.0), name=f"{prefix}_conv"
    )([x, w])
    x = layers.LeakyReLU(0.2, name=f"{prefix}_lrelu")(x)
    # StyleGAN2's activation gain: demodulation keeps the input scale, so without it the
    # activations would shrink by the leaky ReLU at every layer.
    return layers.Rescaling(np.sqrt(2.0), name=f"{prefix}_gain")(x)


def _to_rgb_modulated(x, w, init, prefix):
    return ModulatedConv2D(
        3,
        1,
        demodulate=False,
        kernel_initializer=init(1.0),
        style_initializer=init(1.0),
        name=f"{prefix}_to_rgb",
    )([x, w])


def _finish(z, x, name):
    images = layers.Activation("tanh", dtype="float32", name="tanh")(x)
    return keras.Model(z, images, name=f"{name}_generator")


def _resolutions(image_size):
    """Resolutions produced by the upsampling blocks: 8, 16, ..., image_size."""
    return [2**k for k in range(3, int(np.log2(image_size)) + 1)]


def _channels(width, resolution):
    channels = max(_MIN_CHANNELS, min(width, width * 16 // resolution))
    return channels - channels % 4


def _times(size, factor):
    return None if size is None else size * factor


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class _Initializers:
    """Hands out fan-in normal initializers, each with its own seed derived from one base seed.

    `scale` is the variance gain: 2.0 (He) before (leaky) ReLUs, 1.0 before linear outputs.
    """

    def __init__(self, seed):
        self.seed = seed
        self.count = 0

    def __call__(self, scale=2.0):
        return keras.initializers.VarianceScaling(
            scale=scale, mode="fan_in", distribution="untruncated_normal", seed=self._next_seed()
        )

    def unit_normal(self):
        return keras.initializers.RandomNormal(stddev=1.0, seed=self._next_seed())

    def _next_seed(self):
        self.count += 1
        if self.seed is None:
            return None
        return int(np.random.SeedSequence([self.seed, self.count]).generate_state(1)[0] >> 1)
