"""The backbone registry: `@register_backbone(name)` on a backbone class, `create_backbone(name, **kwargs)`.

A backbone is trained one of two ways: by the patchwise training loop (`GRADIENT`: DNA-Det's encoder, AttNet,
the DCT CNN), or fitted in one pass over the training images (`CLOSED_FORM`: PRNU, whose class defines
`fit_head(features, labels, num_classes)` and is built from the base image size). Training dispatches on that,
never on a backbone's name.
"""

from dataclasses import dataclass

import keras

from tfdnadet.errors import TfdnadetError

GRADIENT = "gradient"
CLOSED_FORM = "closed_form"


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    cls: type
    fit: str  # GRADIENT or CLOSED_FORM


BACKBONES = {}


def register_backbone(name: str, fit: str = GRADIENT):
    """Class decorator: make the backbone class known as `name`."""
    if fit not in (GRADIENT, CLOSED_FORM):
        raise ValueError(f"fit must be {GRADIENT!r} or {CLOSED_FORM!r}. Received: fit={fit!r}")

    def wrap(cls):
        BACKBONES[name] = BackboneSpec(name, cls, fit)
        return cls

    return wrap


def backbone_spec(backbone: str) -> BackboneSpec:
    if backbone not in BACKBONES:
        raise TfdnadetError(f"Unknown backbone. Received: backbone={backbone!r}. Known: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[backbone]


def backbone_names(fit: str) -> list:
    """Registered backbones trained the way `fit` names, sorted."""
    return sorted(name for name, spec in BACKBONES.items() if spec.fit == fit)


def create_backbone(backbone: str, **kwargs) -> keras.Model:
    """A new backbone of the registered kind `backbone`; `kwargs` (e.g. width, dtype, name) go to its class."""
    return backbone_spec(backbone).cls(**kwargs)
