"""Data sets: class folders, CSV manifests, and the official DNA-Det annotation files."""

import csv
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from tfdnadet.data.images import IMAGE_EXTENSIONS
from tfdnadet.errors import TfdnadetError


@dataclass
class ImageList:
    """Image paths with integer labels into `class_names`; `groups` says which model made each."""

    paths: list
    labels: np.ndarray
    class_names: list
    groups: list = field(default_factory=list)
    splits: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices) -> "ImageList":
        indices = list(indices)
        pick = lambda values: [values[i] for i in indices] if values else []
        return ImageList(
            [self.paths[i] for i in indices], self.labels[indices], self.class_names, pick(self.groups), pick(self.splits)
        )


def read_dataset(source: str, class_names: Optional[list] = None, allow_outside_root: bool = False) -> ImageList:
    """Read a folder `ROOT/<class>/**/*`, a CSV manifest or an annotation txt (`path<TAB>label`)."""
    if not os.path.exists(source):
        raise TfdnadetError(f"Data path not found: {source}")
    if os.path.isdir(source):
        return read_class_folders(source)
    if source.lower().endswith(".csv"):
        return read_csv_manifest(source, allow_outside_root)
    if source.lower().endswith(".txt"):
        return read_annotation_file(source, class_names, allow_outside_root)
    raise TfdnadetError(f"Unsupported data source {source!r}: give a folder, a .csv manifest or a .txt annotation file.")


def list_image_files(folder: str) -> list:
    """All image files below a folder, sorted, hidden files skipped."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files) if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
    return found


def read_class_folders(root: str) -> ImageList:
    class_names = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if not class_names:
        raise TfdnadetError(f"No class folders in {root}: expected {root}/<class>/**/*.png|jpg|jpeg|webp|bmp")
    paths, labels, groups = [], [], []
    for label, name in enumerate(class_names):
        files = list_image_files(os.path.join(root, name))
        if not files:
            raise TfdnadetError(f"Class folder '{name}' in {root} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
        paths += files
        labels += [label] * len(files)
        groups += [_group_of(os.path.relpath(f, root)) for f in files]
    return ImageList(paths, np.asarray(labels, dtype=np.int32), class_names, groups)


def _group_of(relative_path: str) -> str:
    """`progan/seed1/3.png` -> `progan/seed1`: the model an image came from, when folders say it."""
    return os.path.dirname(relative_path).replace(os.sep, "/")


def read_csv_manifest(manifest: str, allow_outside_root: bool = False) -> ImageList:
    with open(manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise TfdnadetError(f"Manifest {manifest} needs a header with at least the columns path,label")
    names = sorted({row["label"] for row in rows})
    index = {name: i for i, name in enumerate(names)}
    root = os.path.dirname(os.path.abspath(manifest))
    paths = [_resolve(root, row["path"], manifest, allow_outside_root) for row in rows]
    return ImageList(
        paths,
        np.asarray([index[row["label"]] for row in rows], dtype=np.int32),
        names,
        [row.get("group") or "" for row in rows] if "group" in rows[0] else [],
        [row.get("split") or "" for row in rows] if "split" in rows[0] else [],
    )


def read_annotation_file(path: str, class_names: Optional[list], allow_outside_root: bool = False) -> ImageList:
    """The official DNA-Det layout: one `image_path<TAB>integer_label` per line."""
    if not class_names:
        raise TfdnadetError(
            f"Annotation file {path} has integer labels: name them with data.class_names in the config (or --classes)."
        )
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    root = _annotation_root(path, lines)
    paths, labels = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.rstrip("\n").split("\t") if "\t" in line else line.split()
        if len(parts) != 2 or not parts[1].strip().lstrip("-").isdigit():
            raise TfdnadetError(f"{path}:{number}: expected 'path<TAB>integer-label', got {line.strip()!r}")
        label = int(parts[1])
        if not 0 <= label < len(class_names):
            raise TfdnadetError(f"{path}:{number}: label {label} has no name; class names: {', '.join(class_names)}")
        paths.append(_resolve(root, parts[0].strip(), path, allow_outside_root))
        labels.append(label)
    if not paths:
        raise TfdnadetError(f"Annotation file {path} lists no images.")
    return ImageList(paths, np.asarray(labels, dtype=np.int32), list(class_names))


def _annotation_root(path: str, lines: list) -> str:
    """The folder that relative paths are written against: the file's own, or the nearest ancestor where the
    first listed image exists (the official release writes paths like ./dataset/GANs/... from its repo root)."""
    folder = os.path.dirname(os.path.abspath(path))
    first = next((line.split("\t")[0].strip() for line in lines if line.strip()), "")
    candidate = folder
    while first and not os.path.isabs(first):
        if os.path.exists(os.path.join(candidate, first)):
            return candidate
        parent = os.path.dirname(candidate)
        if parent == candidate:
            break
        candidate = parent
    return folder


def _resolve(root: str, relative: str, manifest: str, allow_outside_root: bool) -> str:
    full = os.path.normpath(os.path.join(root, relative))
    if not allow_outside_root and os.path.commonpath([root, os.path.abspath(full)]) != root:
        raise TfdnadetError(
            f"Manifest {manifest} points outside its folder: {relative!r} (pass allow_outside_root / --allow-outside-root to permit)"
        )
    return full


def align_to_classes(images: ImageList, model_classes: list) -> ImageList:
    """Relabel a data set by class name to a model's class order; unknown names are an error."""
    index = {name: i for i, name in enumerate(model_classes)}
    unknown = sorted(set(images.class_names) - set(index))
    if unknown:
        raise TfdnadetError(
            f"Data has classes the model does not know: {', '.join(unknown)}. The model knows: {', '.join(model_classes)}."
        )
    mapping = np.asarray([index[name] for name in images.class_names], dtype=np.int32)
    return ImageList(images.paths, mapping[images.labels], list(model_classes), images.groups, images.splits)


def split_train_val(images: ImageList, val_fraction: float, seed: int):
    """Stratified random split: about `val_fraction` of each class goes to validation."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(images.labels):
        members = rng.permutation(np.flatnonzero(images.labels == label))
        n_val = int(round(len(members) * val_fraction)) if len(members) > 1 else 0
        val += members[:n_val].tolist()
        train += members[n_val:].tolist()
    return images.subset(sorted(train)), images.subset(sorted(val))
