"""Callbacks every trainer uses: atomic checkpoints, a guard against non-finite losses, curve plots, progress reports."""

import csv
import json
import math
import os
from dataclasses import dataclass

import keras

from tfdnadet.atomic import atomic_path
from tfdnadet.plots import plot_training_curves

CHECKPOINT_WEIGHTS = "weights.weights.h5"
CHECKPOINT_STATE = "state.json"


class AtomicCheckpoint(keras.callbacks.Callback):
    """After each good epoch, replace RUN_DIR/checkpoint (weights + optimizer + epoch) in one rename."""

    def __init__(self, directory: str):
        super().__init__()
        self.directory = directory

    def on_epoch_end(self, epoch, logs=None):
        if self.model.stop_training and not _finite(logs):
            return
        with atomic_path(self.directory, directory=True) as temporary:
            self.model.save_weights(os.path.join(temporary, CHECKPOINT_WEIGHTS))
            state = {"epoch": epoch + 1, "step": int(self.model.optimizer.iterations.numpy())}
            with open(os.path.join(temporary, CHECKPOINT_STATE), "w") as f:
                json.dump(state, f)


def read_checkpoint_state(directory: str):
    """The checkpoint's state ({'epoch', 'step'}), or None when there is no complete checkpoint."""
    path = os.path.join(directory, CHECKPOINT_STATE)
    if not os.path.isfile(path) or not os.path.isfile(os.path.join(directory, CHECKPOINT_WEIGHTS)):
        return None
    with open(path) as f:
        return json.load(f)


def truncate_history(history_csv: str, epochs: int) -> None:
    """Keep the header and the rows of the first `epochs` epochs (those a checkpoint holds) of a CSVLogger file."""
    if not os.path.isfile(history_csv):
        return
    with open(history_csv, newline="") as f:
        rows = list(csv.reader(f))
    kept = rows[:1] + [row for row in rows[1:] if row and row[0].isdigit() and int(row[0]) < epochs]
    with atomic_path(history_csv) as temporary:
        with open(temporary, "w", newline="") as f:
            csv.writer(f).writerows(kept)


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops at the first NaN/inf loss and remembers where, so the trainer can say so."""

    def __init__(self):
        super().__init__()
        self.stopped_at = None

    def on_train_batch_end(self, batch, logs=None):
        if self.stopped_at is None and not _finite(logs):
            self.stopped_at = int(self.model.optimizer.iterations.numpy())
            self.model.stop_training = True


class TrainingCurves(keras.callbacks.Callback):
    """Redraws RUN_DIR/curves.png from history.csv after each epoch."""

    def __init__(self, history_csv: str, png: str):
        super().__init__()
        self.history_csv = history_csv
        self.png = png

    def on_epoch_end(self, epoch, logs=None):
        if os.path.isfile(self.history_csv):
            plot_training_curves(self.history_csv, self.png)


def _finite(logs) -> bool:
    loss = (logs or {}).get("loss")
    return loss is None or math.isfinite(float(loss))


@dataclass
class TrainingProgress:
    epoch: int  # 1-based, counting the epochs of a resumed run too
    epochs: int
    step: int  # 1-based within the epoch
    steps: int
    logs: dict  # metric name -> float
    epoch_done: bool  # True once per epoch, with the validation metrics in `logs`


class ProgressReport(keras.callbacks.Callback):
    """Hands `on_progress(TrainingProgress)` each step and epoch end, so a caller draws progress its own way
    (Keras' bar is fixed-width: it wraps, and so scrolls, in a narrow terminal)."""

    def __init__(self, on_progress):
        super().__init__()
        self.on_progress = on_progress
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._report(batch + 1, logs, epoch_done=False)

    def on_epoch_end(self, epoch, logs=None):
        self._report(self.params.get("steps") or 0, logs, epoch_done=True)

    def _report(self, step: int, logs, epoch_done: bool) -> None:
        numbers = {key: float(value) for key, value in (logs or {}).items() if _is_number(value)}
        steps = self.params.get("steps") or step  # unknown until a first pass over a data set without steps_per_epoch
        self.on_progress(TrainingProgress(self.epoch + 1, self.params["epochs"], step or steps, steps, numbers, epoch_done))


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
