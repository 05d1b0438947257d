"""Open-set attribution [POSE, CVPR 2023]: calibrating the rejection rule and measuring known vs unknown architectures.

Known = the test splits of the architectures the model was trained on (a new seed, loss, finetune or data set of a
known architecture must be accepted and named); unknown = every image of the architectures held out of training.
Per known split: closed-set accuracy, AUROC (known vs unknown), OSCR, and the false-rejection rate at the threshold
that rejects 95 % of the unknowns; for the model's calibrated score, also the share its own threshold refuses.
"""

import datetime
import os
from typing import Optional

import numpy as np
from sklearn.metrics import roc_auc_score

from tfdnadet.atomic import write_json
from tfdnadet.data.pipeline import LoadedImages
from tfdnadet.data.sources import ImageList, align_to_classes, read_dataset
from tfdnadet.errors import TfdnadetError
from tfdnadet.inference import load_for_detector, predict_loaded, predict_loaded_with_features
from tfdnadet.models.detector import MULTICLASS, Detector, weights_hash
from tfdnadet.model_metadata import read_metadata
from tfdnadet.models.model_dir import load_detector, write_rejection
from tfdnadet.plots import plot_score_distributions
from tfdnadet.rejection import (
    GAUSSIAN,
    HEADS,
    check_score,
    fit_gaussian,
    gaussian_knownness,
    pooled_by_image,
    rejection_layers,
    stored_score,
)
from tfdnadet.verdict import KNOWNNESS, REAL
from tfdnadet.zoo.build import TEST_SPLITS, TRAIN_SPLIT, VALIDATION_SPLIT, read_zoo

DEFAULT_ACCEPT = 0.95  # share of known validation images the calibrated threshold accepts
UNKNOWN_REJECTION = 0.95  # the false-rejection rate is read where this share of unknowns is rejected


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """P(a known image scores above an unknown one), ties counting one half."""
    truth = np.concatenate([np.ones(len(known)), np.zeros(len(unknown))])
    return float(roc_auc_score(truth, np.concatenate([known, unknown])))


def oscr(known: np.ndarray, correct: np.ndarray, unknown: np.ndarray) -> float:
    """Area under the curve of the correct-classification rate of knowns (accepted and right) against the
    false-positive rate of unknowns (accepted), over every threshold [Dhamija et al. 2018]."""
    known, correct, unknown = np.asarray(known), np.asarray(correct, bool), np.asarray(unknown)
    thresholds = np.unique(np.concatenate([known, unknown]))[::-1]
    ccr = np.asarray([0.0] + [np.mean(correct & (known >= t)) for t in thresholds])
    fpr = np.asarray([0.0] + [np.mean(unknown >= t) for t in thresholds])
    return float(np.sum((fpr[1:] - fpr[:-1]) * (ccr[1:] + ccr[:-1]) / 2))


def rejecting_threshold(unknown: np.ndarray, share: float = UNKNOWN_REJECTION) -> float:
    """The lowest threshold whose `score < threshold` rejects at least `share` of the unknowns."""
    ordered = np.sort(np.asarray(unknown, np.float64))
    index = int(np.ceil(share * len(ordered) - 1e-9))
    return float(ordered[index]) if index < len(ordered) else float(np.nextafter(ordered[-1], np.inf))


def accepting_threshold(known: np.ndarray, share: float = DEFAULT_ACCEPT) -> float:
    """A threshold whose `score >= threshold` accepts the top `share` of the known images (at least): midway
    between the lowest accepted score and the next one down, so that no calibration image sits on the boundary
    where float rounding in another graph (the SavedModel) could flip it."""
    ordered = np.sort(np.asarray(known, np.float64))
    index = int(np.floor((1 - share) * len(ordered) + 1e-9))
    below = ordered[index - 1] if index else ordered[0] - (ordered[-1] - ordered[0] or 1.0)
    return float((below + ordered[index]) / 2)


def split_metrics(known: np.ndarray, correct: np.ndarray, unknown: np.ndarray, rule_threshold: Optional[float] = None) -> dict:
    """The metrics of one known split; with the model's calibrated threshold, also the share of it the rule refuses."""
    threshold = rejecting_threshold(unknown)
    metrics = {
        "count": int(len(known)),
        "accuracy": float(np.mean(correct)),
        "auroc": auroc(known, unknown),
        "oscr": oscr(known, correct, unknown),
        "false_rejection_at_95": float(np.mean(known < threshold)),
    }
    if rule_threshold is not None:
        metrics["refused_by_rule"] = float(np.mean(known < rule_threshold))
    return metrics


def known_images(source: str, class_names: list) -> ImageList:
    """A labelled data set restricted to the model's classes (others dropped), labels in the model's class order."""
    images = read_dataset(source)
    keep = [i for i, label in enumerate(images.labels) if images.class_names[label] in class_names]
    if not keep:
        raise TfdnadetError(f"{source} has no images of the model's classes ({', '.join(class_names)}).")
    return align_to_classes(_relabel(images.subset(keep)), class_names)


def _relabel(images: ImageList) -> ImageList:
    """Drop class names that no image carries any more (align_to_classes refuses names the model lacks)."""
    present = sorted(set(images.labels.tolist()))
    mapping = {old: new for new, old in enumerate(present)}
    labels = np.asarray([mapping[label] for label in images.labels.tolist()], np.int32)
    return ImageList(images.paths, labels, [images.class_names[i] for i in present], images.groups, images.splits)


def _load(detector: Detector, images: ImageList, source: str) -> LoadedImages:
    loaded = load_for_detector(detector, images.paths, images.labels)
    if not len(loaded.labels):
        raise TfdnadetError(f"No usable images in {source}: {loaded.failure_summary()}")
    return loaded


def zoo_calibration_data(zoo_path: str) -> dict:
    """{"train", "validation"}: the manifests of a zoo that fit the Gaussian and calibrate the threshold."""
    zoo = read_zoo(zoo_path)
    if VALIDATION_SPLIT not in zoo["splits"]:
        raise TfdnadetError(f"The zoo at {zoo['root']} has no validation split: rebuild it with the current `tfdnadet zoo build`.")
    return {split: os.path.join(zoo["root"], zoo["splits"][split]["manifest"]) for split in (TRAIN_SPLIT, VALIDATION_SPLIT)}


def calibrate_rejection(
    model_dir: str,
    score: str,
    validation: str,
    train: Optional[str] = None,
    accept: float = DEFAULT_ACCEPT,
    batch_size: int = 16,
    fit_validation: bool = False,
) -> dict:
    """Fit the rejection rule on known classes only and store it as the model's rejection.json; returns the rule.

    `gaussian` fits the class-conditional Gaussian on `train` and, with `fit_validation`, on the validation images of
    the model's classes too: there a class has other generator models (seeds, finetunes, data sets) than in training,
    which widens it towards what a known architecture's new seed looks like. The threshold of every score but
    `heads` (whose threshold is 0: no head positive) accepts `accept` of the validation images of the model's classes:
    of their out-of-fold scores when the Gaussian has seen them (`out_of_fold_knownness`), else of their scores.
    """
    if not 0 < accept < 1:
        raise TfdnadetError(f"--accept must be in (0, 1). Received: {accept}")
    read_metadata(model_dir)
    detector = load_detector(model_dir)
    check_score(detector, score)
    if score == GAUSSIAN and train is None:
        raise TfdnadetError("The gaussian score needs training images (--train DATA or --protocol ZOO).")
    rule = {"score": score, "threshold": 0.0, "backbone_sha256": weights_hash(detector.backbone)}
    validation_loaded = _load(detector, known_images(validation, detector.class_names), validation)
    scores = None
    if score == GAUSSIAN:
        train_loaded = _load(detector, known_images(train, detector.class_names), train)
        fitted, scores = _gaussian_fit(detector, train_loaded, validation_loaded if fit_validation else None, batch_size)
        rule.update(fitted, train_data=os.path.abspath(train), fit_validation=fit_validation)
    detector.rejection = rule
    if scores is None:
        scores = predict_loaded(detector, validation_loaded, batch_size)[KNOWNNESS]
    if score != HEADS:
        rule["threshold"] = accepting_threshold(scores, accept)
    rule.update(
        validation_data=os.path.abspath(validation),
        validation_count=int(len(scores)),
        validation_accepted=float(np.mean(scores >= rule["threshold"])),
        calibrated=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    write_rejection(model_dir, rule)
    return rule


def _gaussian_fit(detector: Detector, train: LoadedImages, validation: Optional[LoadedImages], batch_size: int) -> tuple:
    """(the Gaussian fitted on the training images and the validation images if given, the validation images'
    out-of-fold knownness or None when they are not fitted)."""
    train_features = pooled_features(detector, train, batch_size)
    if validation is None:
        return fit_gaussian(train_features, train.labels, detector.class_names), None
    features = pooled_features(detector, validation, batch_size)
    scores = out_of_fold_knownness(train_features, train.labels, features, validation.labels, detector.class_names)
    fitted = fit_gaussian(np.concatenate([train_features, features]), np.concatenate([train.labels, validation.labels]), detector.class_names)
    return fitted, scores


def out_of_fold_knownness(
    train_features: np.ndarray, train_labels: np.ndarray, features: np.ndarray, labels: np.ndarray, class_names: list
) -> np.ndarray:
    """Gaussian knownness [N] of validation images, each scored by a Gaussian that has not seen its generator model:
    the validation images of one class are held out together (a finetune with the model it was finetuned from, so
    none of their models leaks in) and scored by the Gaussian fitted on the training images plus the other classes'
    validation images. A threshold set on these scores is calibrated on images as new to the Gaussian as a new
    generator's; one set on the validation images the stored Gaussian was fitted on refuses more new seeds than
    it promises."""
    scores = np.empty(len(labels), np.float64)
    for label in np.unique(labels):
        held_out = labels == label
        fitted = fit_gaussian(
            np.concatenate([train_features, features[~held_out]]), np.concatenate([train_labels, labels[~held_out]]), class_names
        )
        scores[held_out] = gaussian_knownness(features[held_out], fitted["means"], fitted["precision"]).numpy()
    return scores


def pooled_features(detector: Detector, loaded: LoadedImages, batch_size: int = 16) -> np.ndarray:
    """float32 [N, D]: what the gaussian score reads of each image, from the detector's forward pass."""
    (layer,) = rejection_layers(detector, GAUSSIAN)
    return pooled_by_image(predict_loaded_with_features(detector, loaded, (layer,), batch_size)[1][layer]).numpy()


def unknown_architectures(detector: Detector, zoo: dict, unknown: Optional[list] = None) -> list:
    """The held-out architectures: `unknown` checked against the zoo and the model's classes, else all the zoo has
    that the model does not know."""
    known = set(detector.class_names)
    in_zoo = [name for name in zoo["class_names"] if name != REAL]
    if unknown is None:
        names = [name for name in in_zoo if name not in known]
        if not names:
            raise TfdnadetError(f"The model knows every architecture of the zoo ({', '.join(in_zoo)}): nothing is unknown.")
        return names
    trained = [name for name in unknown if name in known]
    if trained:
        raise TfdnadetError(f"--unknown {', '.join(trained)}: the model was trained on it; unknown architectures must be held out.")
    missing = [name for name in unknown if name not in in_zoo]
    if missing:
        raise TfdnadetError(f"--unknown {', '.join(missing)}: not an architecture of this zoo ({', '.join(in_zoo)}).")
    return list(unknown)


def evaluate_open_set(
    detector: Detector, zoo_path: str, unknown: Optional[list] = None, score: Optional[str] = None, batch_size: int = 16
) -> dict:
    """Open-set metrics of one model on a zoo: per known test split and over all of them, with the raw scores."""
    if MULTICLASS not in detector.heads:
        raise TfdnadetError("Open-set evaluation needs a multiclass head: closed-set accuracy is its answer.")
    zoo = read_zoo(zoo_path)
    names = unknown_architectures(detector, zoo, unknown)
    score = score or stored_score(detector)
    check_score(detector, score)
    manifests = {split: os.path.join(zoo["root"], entry["manifest"]) for split, entry in zoo["splits"].items()}
    unknown = _answers(detector, unknown_images(manifests, names), "unknown images", score, batch_size)
    unknown_scores = unknown["knownness"]
    rule_threshold = detector.rejection["threshold"] if detector.rejection and detector.rejection["score"] == score else None
    splits, pooled = {}, ([], [])
    for split in (s for s in TEST_SPLITS if s in manifests and _holds_known(manifests[s], detector.class_names)):
        images = known_images(manifests[split], detector.class_names)
        answers = _answers(detector, images, manifests[split], score, batch_size)
        known, correct = answers["knownness"], answers["predicted"] == answers["labels"]
        splits[split] = {**split_metrics(known, correct, unknown_scores, rule_threshold), "scores": known}
        pooled[0].append(known)
        pooled[1].append(correct)
    all_known = np.concatenate(pooled[0])
    architectures = [names[label] for label in unknown["labels"]]
    return {
        "zoo": zoo["root"],
        "score": score,
        "known_classes": detector.class_names,
        "unknown_classes": names,
        "unknown_count": int(len(unknown_scores)),
        "unknown_scores": unknown_scores,
        "unknown_architecture": architectures,
        "rejection_threshold": rule_threshold,
        "unknown_refused_by_rule": None if rule_threshold is None else float(np.mean(unknown_scores < rule_threshold)),
        "threshold_at_95": rejecting_threshold(unknown_scores),
        "splits": splits,
        "all_known": split_metrics(all_known, np.concatenate(pooled[1]), unknown_scores, rule_threshold),
        "unknown_models": unknown_model_metrics(all_known, unknown, architectures, detector.class_names, rule_threshold),
    }


def unknown_model_metrics(known: np.ndarray, unknown: dict, architectures: list, class_names: list, rule_threshold=None) -> dict:
    """{generator model: its architecture, image count, AUROC of all known test images against its images, the
    share of them the multiclass head gives each known class (most often first) and, with the model's rule, the
    share it refuses}: which new generator passes for which known architecture."""
    models = {}
    for group in dict.fromkeys(unknown["groups"]):
        mine = unknown["groups"] == group
        counts = np.bincount(unknown["predicted"][mine], minlength=len(class_names))
        taken_for = {class_names[i]: float(counts[i] / mine.sum()) for i in np.argsort(-counts, kind="stable") if counts[i]}
        entry = {"architecture": architectures[int(np.flatnonzero(mine)[0])], "count": int(mine.sum())}
        entry.update(auroc=auroc(known, unknown["knownness"][mine]), taken_for=taken_for)
        if rule_threshold is not None:
            entry["refused_by_rule"] = float(np.mean(unknown["knownness"][mine] < rule_threshold))
        models[group] = entry
    return models


def _holds_known(manifest: str, class_names: list) -> bool:
    """Whether a split has images of the model's classes (a split of held-out architectures only has none)."""
    return bool(set(read_dataset(manifest).class_names) & set(class_names))


def unknown_images(manifests: dict, names: list) -> ImageList:
    """Every image of the unknown architectures in any split of the zoo, each path once, with its generator model
    (the manifest's group; the architecture where a manifest has none)."""
    paths = {}
    for manifest in manifests.values():
        images = read_dataset(manifest)
        groups = images.groups or [""] * len(images.paths)
        for path, label, group in zip(images.paths, images.labels, groups):
            name = images.class_names[label]
            if name in names:
                paths.setdefault(path, (names.index(name), group or name))
    if not paths:
        raise TfdnadetError(f"The zoo has no images of {', '.join(names)}.")
    labels, groups = zip(*paths.values())
    return ImageList(list(paths), np.asarray(labels, np.int32), names, list(groups))


def _answers(detector: Detector, images: ImageList, source: str, score: str, batch_size: int) -> dict:
    """{"knownness", "predicted" (the multiclass answer), "labels", "groups"}: [N] each, of the usable images."""
    loaded = _load(detector, images, source)
    outputs = predict_loaded(detector, loaded, batch_size, score=score)
    group_of = dict(zip(images.paths, images.groups or [""] * len(images.paths)))
    return {
        "knownness": outputs[KNOWNNESS].astype(np.float64),
        "predicted": np.argmax(outputs[MULTICLASS], axis=1),
        "labels": loaded.labels,
        "groups": np.asarray([group_of[path] for path in loaded.paths]),
    }


def open_set_summary(results: dict) -> dict:
    """The results without the raw scores: what open_set.json holds."""
    splits = {split: {k: v for k, v in m.items() if k != "scores"} for split, m in results["splits"].items()}
    raw = ("unknown_scores", "unknown_architecture")
    return {**{k: v for k, v in results.items() if k not in raw}, "splits": splits}


def write_open_set(results: dict, out_dir: str, model: str) -> dict:
    """open_set.json (the summary) and open_set_scores.png (the score distributions) in out_dir; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "open_set.json"), "png": os.path.join(out_dir, "open_set_scores.png")}
    known = {split: m["scores"] for split, m in results["splits"].items()}
    architectures = np.asarray(results["unknown_architecture"])
    unknown = {f"unknown: {name}": results["unknown_scores"][architectures == name] for name in results["unknown_classes"]}
    thresholds = {"rejects 95% of unknowns": results["threshold_at_95"]}
    if results["rejection_threshold"] is not None:
        thresholds["the model's threshold"] = results["rejection_threshold"]
    plot_score_distributions(known, unknown, thresholds, results["score"], paths["png"])
    write_json(paths["json"], {"model": os.path.abspath(model), **open_set_summary(results)})
    return paths
