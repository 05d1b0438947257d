"""Timing the train step inside `fit`, shared by the benchmarks that compare train steps."""

import time

import keras


class StepClock(keras.callbacks.Callback):
    """Seconds from the first train step's start to the last one's end: the steps, without `fit`'s set-up and
    tear-down. Ending `fit` on an endless tf.data set can wait for tf.data's autotuning thread to wake up (up to
    1.7 s after three paper-width steps here, on some calls): a training run pays it once, not every few steps."""

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.start = time.perf_counter()

    def on_train_end(self, logs=None):
        self.seconds = time.perf_counter() - self.start


def fit_seconds(model, dataset, steps: int) -> float:
    """Seconds `steps` train steps of `model.fit` on `dataset` take (`StepClock`)."""
    clock = StepClock()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False, callbacks=[clock])
    return clock.seconds
