"""The DNA-Det encoder [App. A, Table 7]: 8 Conv-BN-LeakyReLU blocks and global average pooling."""

import keras
import tensorflow as tf

from tfdnadet.errors import TfdnadetError
from tfdnadet.models.backbones import register_backbone

# (filters, kernel, stride) per block [Table 7]; zero padding 1 everywhere, as in the paper's PyTorch code.
ENCODER_BLOCKS = (
    (64, 4, 2),
    (64, 3, 1),
    (128, 4, 2),
    (128, 3, 1),
    (256, 4, 2),
    (256, 3, 1),
    (512, 4, 2),
    (512, 3, 1),
)
LEAKY_SLOPE = 0.2  # [App. A] slope of every LeakyReLU
GRADCAM_LAYER = 4  # [5.1] Grad-CAM maps are shown on layer 4
POOL_LAYER = "pool"  # name of the global-average-pooling layer: the pooled features most heads read
INPUT_FILTERS = ("none", "highpass")  # model.input_filter: what the encoder sees of the image (`input_filter`)
HIGHPASS_GAIN = 8.0  # zoo images' residual spreads 0.03 against their 0.46 in [-1, 1]; x8 brings it near the images' range

def block_layer_name(index: int) -> str:
    """Name of the output layer of encoder block `index` (1-based): a real, named feature map."""
    return f"block{index}"


@register_backbone("dnadet")
@keras.saving.register_keras_serializable(package="tfdnadet")
class Encoder(keras.Model):
    """Fully convolutional: trains on patches, predicts on full images of any size."""

    def __init__(self, width: float = 1.0, input_filter: str = "none", dtype=None, **kwargs):
        # === Functional Model ===
        images = keras.Input(shape=(None, None, 3), name="images")
        x = filter_input(images, input_filter)
        for index in range(1, len(ENCODER_BLOCKS) + 1):
            x = encoder_block(x, index, width, dtype)
        features = keras.layers.GlobalAveragePooling2D(name=POOL_LAYER, dtype=dtype)(x)
        super().__init__(inputs=images, outputs=features, dtype=dtype, **kwargs)

        # === Config ===
        self.layer_dtype = keras.dtype_policies.get(dtype).name if dtype else None  # the layers' policy, e.g. mixed_float16
        self.width = width
        self.input_filter = input_filter
        self.feature_dim = channels(ENCODER_BLOCKS[-1][0], width)

    def feature_model(self, layer: int = GRADCAM_LAYER) -> keras.Model:
        """A model returning (block `layer` feature map, pooled features), sharing these weights."""
        if not 1 <= layer <= len(ENCODER_BLOCKS):
            raise TfdnadetError(f"Encoder layer must be 1..{len(ENCODER_BLOCKS)}. Received: layer={layer}")
        feature_map = self.get_layer(block_layer_name(layer)).output
        return keras.Model(self.inputs[0], [feature_map, self.outputs[0]], name=f"encoder_block{layer}")

    def get_config(self):
        return {"width": self.width, "input_filter": self.input_filter, "name": self.name, "trainable": self.trainable, "dtype": self.layer_dtype}


def filter_input(images, input_filter: str):
    """What the encoder's first block sees: the image (`none`) or its noise residual (`highpass`, `HighPass`)."""
    if input_filter not in INPUT_FILTERS:
        raise TfdnadetError(f"Unknown input filter {input_filter!r}. Known: {', '.join(INPUT_FILTERS)}")
    return images if input_filter == "none" else HighPass(name="highpass", dtype="float32")(images)


def encoder_block(x, index: int, width: float, dtype=None, prefix: str = ""):
    """Block `index` (1-based) of Table 7 on tensor x: conv with padding 1, BN, LeakyReLU; layers named {prefix}block{index}_*."""
    filters, kernel, stride = ENCODER_BLOCKS[index - 1]
    name = prefix + block_layer_name(index)
    x = Conv2D(channels(filters, width), kernel, strides=stride, name=f"{name}_conv", dtype=dtype)(x)
    x = batch_norm(f"{name}_bn", dtype)(x)
    return keras.layers.LeakyReLU(negative_slope=LEAKY_SLOPE, name=name, dtype=dtype)(x)


PAD_ONE = [[0, 0], [1, 1], [1, 1], [0, 0]]


@keras.saving.register_keras_serializable(package="tfdnadet")
class HighPass(keras.layers.Layer):
    """Each channel minus its 3 x 3 mean (reflected at the border), times HIGHPASS_GAIN: the image's noise residual,
    where upsampling traces live, with most of its content and colour removed. In float32: the residual is a small
    difference of large values, which bfloat16 would round away."""

    def call(self, images):
        mean = keras.ops.average_pool(keras.ops.pad(images, PAD_ONE, mode="reflect"), 3, strides=1, padding="valid")
        return (images - mean) * HIGHPASS_GAIN


@keras.saving.register_keras_serializable(package="tfdnadet")
class Conv2D(keras.layers.Conv2D):
    """Keras Conv2D on channels-last maps zero-padded by 1 on every side, as PyTorch's `padding=1`.

    Where TensorFlow's "SAME" pads exactly that (stride 1 and kernel 3 always; stride 2 and kernel 4 when the height
    and width are known and even, as on training patches), the conv op pads; else a pad op runs first. The pad op's
    copy of the map and its gradient's slice cost the paper-width bfloat16 train step a sixth of its time. The class
    keeps Keras' name, so its weights sit where Keras' Conv2D's do in weight files.
    """

    def __init__(self, filters, kernel_size, strides=1, **kwargs):
        super().__init__(filters, kernel_size, strides=strides, padding="valid", **kwargs)  # the padding is always 1

    def convolution_op(self, inputs, kernel):
        if self._same_pads_one(inputs.shape):
            return keras.ops.conv(inputs, kernel, strides=self.strides, padding="same", dilation_rate=self.dilation_rate)
        return super().convolution_op(keras.ops.pad(inputs, PAD_ONE), kernel)

    def _same_pads_one(self, shape) -> bool:
        """Whether "SAME" pads 1 before and 1 after along height and width of maps of this static shape."""
        for size, kernel, stride, dilation in zip(shape[1:3], self.kernel_size, self.strides, self.dilation_rate):
            kernel = (kernel - 1) * dilation + 1  # the span of a dilated kernel
            if stride == 1:
                total = kernel - 1
            elif size is None:
                return False
            else:
                total = (-(-size // stride) - 1) * stride + kernel - size  # "SAME" pads total // 2 before, the rest after
            if total != 2:
                return False
        return True

    def compute_output_shape(self, input_shape):
        padded = [input_shape[0]] + [None if size is None else size + 2 for size in input_shape[1:3]] + [input_shape[3]]
        return super().compute_output_shape(padded)

    def get_config(self):
        config = super().get_config()
        del config["padding"]
        return config


def batch_norm(name: str, dtype=None) -> keras.layers.BatchNormalization:
    """BatchNorm as PyTorch's defaults (momentum 0.1 there, 0.9 here; eps 1e-5).

    Keras' default momentum 0.99 keeps ~5% of the initial variance 1 after 300 steps, which swamps variances
    of ~0.01 in a short CPU run and puts inference-mode predictions at chance.
    """
    return BatchNormalization(momentum=0.9, epsilon=1e-5, name=name, dtype=dtype)


@keras.saving.register_keras_serializable(package="tfdnadet")
class BatchNormalization(keras.layers.BatchNormalization):
    """Keras BatchNormalization on channels-last feature maps computed by TensorFlow's fused kernel.

    Keras 3 normalises in separate float32 ops (casts, moments, normalisation), each a pass over the map; the fused
    kernel is one op in the compute dtype: the paper-width bfloat16 train step of benchmarks/vs_pytorch.py runs 1.3x
    as fast here. Same weights and configuration as BatchNormalization; like PyTorch, the moving variance
    averages the unbiased batch variance. Other ranks or axes fall back to Keras' computation. The class keeps
    Keras' name because weight files address layers by class name: checkpoints of earlier runs load into it.
    """

    def call(self, inputs, training=None, mask=None):
        if mask is not None or len(inputs.shape) != 4 or self.axis % 4 != 3 or not (self.scale and self.center):
            return super().call(inputs, training=training, mask=mask)
        if training and self.trainable:
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(inputs, self.gamma, self.beta, epsilon=self.epsilon, is_training=True)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        else:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs, self.gamma, self.beta, self.moving_mean, self.moving_variance, epsilon=self.epsilon, is_training=False
            )
        return tf.cast(outputs, self.compute_dtype)


def channels(filters: int, width: float) -> int:
    return max(1, int(round(filters * width)))
