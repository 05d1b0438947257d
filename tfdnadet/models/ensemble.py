"""Several DNA-Det encoders in one backbone, their answers averaged: the model of an ensemble of training runs.

Runs of one recipe that differ only in their seeds agree on the training generators and disagree on generators
they never saw (single runs of the cpu config differ by 5-13 points on a cross-test split); the mean of their
logits keeps what they agree on. Members are the stage-2 fine-tunings of one or more stage-1 encoders: members of
one stage-1 encoder share its frozen blocks (`shared_blocks`), computed once.

Layer names: member 0 keeps the encoder's own (block1..block8), so Grad-CAM and the tools that read an encoder
block see it as the encoder; the shared blocks of stage-1 encoder s > 0 are `stem{s}_block{i}`, the other blocks
of member k > 0 `member{k}_block{i}`. `pool` concatenates the members' pooled features [B, K * D]; `assemble`
gives the multiclass head the mean of the members' logits.
"""

import keras
import numpy as np

from tfdnadet.errors import TfdnadetError
from tfdnadet.models.detector import MULTICLASS, Detector
from tfdnadet.models.encoder import ENCODER_BLOCKS, POOL_LAYER, Encoder, block_layer_name, channels, encoder_block, filter_input
from tfdnadet.models.heads import MulticlassHead


@keras.saving.register_keras_serializable(package="tfdnadet")
class EnsembleEncoder(keras.Model):
    """Member k reads stage-1 encoder `stems[k]`'s first `shared_blocks` blocks, then its own; features concatenated."""

    def __init__(self, stems, shared_blocks: int = 0, width: float = 1.0, input_filter: str = "none", dtype=None, **kwargs):
        stems = [int(stem) for stem in stems]
        if len(stems) < 2 or stems[0] != 0 or sorted(set(stems)) != list(range(max(stems) + 1)):
            raise TfdnadetError(f"An ensemble needs >= 2 members and stage-1 encoders numbered 0, 1, ... from member 0. Received: stems={stems}")
        if not 0 <= shared_blocks <= len(ENCODER_BLOCKS):
            raise TfdnadetError(f"shared_blocks must be 0..{len(ENCODER_BLOCKS)}. Received: shared_blocks={shared_blocks}")

        # === Functional Model ===
        images = keras.Input(shape=(None, None, 3), name="images")
        filtered = filter_input(images, input_filter)  # once for all members
        trunks = {}
        for stem in sorted(set(stems)):
            x = filtered
            for index in range(1, shared_blocks + 1):
                x = encoder_block(x, index, width, dtype, _stem_prefix(stem))
            trunks[stem] = x
        pools = []
        for member, stem in enumerate(stems):
            x = trunks[stem]
            for index in range(shared_blocks + 1, len(ENCODER_BLOCKS) + 1):
                x = encoder_block(x, index, width, dtype, _member_prefix(member))
            pools.append(keras.layers.GlobalAveragePooling2D(name=f"member{member}_pool", dtype=dtype)(x))
        features = keras.layers.Concatenate(name=POOL_LAYER, dtype=dtype)(pools)
        super().__init__(inputs=images, outputs=features, dtype=dtype, **kwargs)

        # === Config ===
        self.stems = stems
        self.shared_blocks = shared_blocks
        self.width = width
        self.input_filter = input_filter
        self.layer_dtype = keras.dtype_policies.get(dtype).name if dtype else None
        self.member_dim = channels(ENCODER_BLOCKS[-1][0], width)
        self.feature_dim = self.member_dim * len(stems)

    def block_name(self, member: int, index: int) -> str:
        """The name of member `member`'s block `index` (a shared block's is its stage-1 encoder's)."""
        prefix = _stem_prefix(self.stems[member]) if index <= self.shared_blocks else _member_prefix(member)
        return prefix + block_layer_name(index)

    def member_encoder(self, member: int) -> Encoder:
        """Member `member` as a plain encoder with its weights."""
        encoder = Encoder(self.width, self.input_filter, dtype=self.layer_dtype, name="encoder")
        for index in range(1, len(ENCODER_BLOCKS) + 1):
            for part in ("conv", "bn"):
                source = self.get_layer(f"{self.block_name(member, index)}_{part}")
                encoder.get_layer(f"{block_layer_name(index)}_{part}").set_weights(source.get_weights())
        return encoder

    @classmethod
    def from_members(cls, encoders: list, stems: list, shared_blocks: int = 0, **kwargs) -> "EnsembleEncoder":
        """An ensemble holding `encoders`' weights; members of one stage-1 encoder must agree on the shared blocks."""
        if any(not isinstance(encoder, Encoder) for encoder in encoders):
            names = sorted({type(encoder).__name__ for encoder in encoders})
            raise TfdnadetError(f"Only DNA-Det encoders can be ensembled (model.backbone dnadet). Received: {', '.join(names)}")
        for setting in ("width", "input_filter"):
            values = sorted({getattr(encoder, setting) for encoder in encoders})
            if len(values) > 1:
                raise TfdnadetError(f"Ensemble members must have one model.{setting}. Received: {values}")
        first = encoders[0]
        ensemble = cls(stems, shared_blocks, first.width, first.input_filter, dtype=first.layer_dtype, **kwargs)
        for member, encoder in enumerate(encoders):
            for index in range(1, len(ENCODER_BLOCKS) + 1):
                for part in ("conv", "bn"):
                    weights = encoder.get_layer(f"{block_layer_name(index)}_{part}").get_weights()
                    target = ensemble.get_layer(f"{ensemble.block_name(member, index)}_{part}")
                    if index <= shared_blocks and member != stems.index(stems[member]):
                        if not all(np.array_equal(a, b) for a, b in zip(weights, target.get_weights())):
                            raise TfdnadetError(f"Ensemble member {member} differs from its stage-1 encoder's other members in block {index}, which they share.")
                    target.set_weights(weights)
        return ensemble

    def get_config(self):
        return {
            "stems": self.stems,
            "shared_blocks": self.shared_blocks,
            "width": self.width,
            "input_filter": self.input_filter,
            "name": self.name,
            "trainable": self.trainable,
            "dtype": self.layer_dtype,
        }


def _stem_prefix(stem: int) -> str:
    return "" if stem == 0 else f"stem{stem}_"


def _member_prefix(member: int) -> str:
    return "" if member == 0 else f"member{member}_"


def assemble(detectors: list, stems: list, shared_blocks: int = 0) -> Detector:
    """One detector averaging the multiclass logits of `detectors` (same classes and preprocessing), member k
    fine-tuned from stage-1 encoder `stems[k]` with blocks 1..`shared_blocks` kept as that encoder's."""
    first = detectors[0]
    for detector in detectors[1:]:
        if detector.class_names != first.class_names or detector.preprocessing != first.preprocessing:
            raise TfdnadetError("Ensemble members must have the same classes and preprocessing.")
    backbone = EnsembleEncoder.from_members([d.backbone for d in detectors], stems, shared_blocks, name="encoder")
    count = len(detectors)
    head = MulticlassHead(backbone.feature_dim, len(first.class_names), name=MULTICLASS)
    kernels, biases = zip(*(d.heads[MULTICLASS].get_layer("logits").get_weights() for d in detectors))
    head.get_layer("logits").set_weights([np.concatenate(kernels) / count, np.mean(biases, axis=0)])
    members = [{"seed": d.config["train"]["seed"], "selection": d.config.get("selection")} for d in detectors]
    config = {**first.config, "selection": None, "ensemble": {"stems": list(stems), "shared_blocks": shared_blocks, "members": members}}
    ensemble = Detector(backbone, {}, {}, first.preprocessing, config)
    ensemble.add_head(MULTICLASS, head, {"class_names": first.class_names})
    return ensemble
