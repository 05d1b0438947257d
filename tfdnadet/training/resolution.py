"""The resolution stage 2 trains at: the data set's lowest resolution [5.1], within data.base_size..max_base_size."""

from typing import Optional

from PIL import Image

from tfdnadet.config import Config, config_with_overrides


def smallest_side(paths) -> Optional[int]:
    """The smallest side over the image files (read from their headers; unreadable files are left out), or None."""
    sides = []
    for path in paths:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except Exception:  # noqa: BLE001 - unreadable files are reported when the images are decoded
            continue
    return min(sides) if sides else None


def fit_resolution(config: Config, paths) -> tuple:
    """(config, note) for training images larger than data.base_size: with data.max_base_size the base size becomes
    their smallest side, at most max_base_size, and input_size (and a whole-image patch) grow by the same factor;
    note says what happened to them (None for images no larger than base_size). Applying it to its own result
    changes nothing, so a resumed run keeps its sizes."""
    d = config.data
    side = smallest_side(paths)
    if side is None or side <= d.base_size:
        return config, None
    base = min(side, d.max_base_size or d.base_size)
    if base == d.base_size:
        limit = "see max_base_size" if d.max_base_size is None else f"max_base_size {d.max_base_size}"
        return config, f"resolution: {side} px images shrunk to {base} px (data.base_size; {limit})"
    input_size = round(d.input_size * base / d.base_size)
    overrides = {"data.base_size": base, "data.input_size": input_size}
    if d.patch_size == d.input_size:  # a whole-image method stays whole-image
        overrides["data.patch_size"] = input_size
    kept = "kept" if base == side else f"resized to {base} px"
    note = f"resolution: {side} px images {kept} (data.max_base_size {d.max_base_size}), input {input_size} px"
    return config_with_overrides(config.to_dict(), overrides), note
