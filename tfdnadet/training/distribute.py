"""tf.distribute for training: the strategy named in the config, the chief worker, and worker-synchronised statistics."""

from typing import Optional

import keras
import tensorflow as tf

_STRATEGIES = {}


def make_strategy(name: str, devices: Optional[list] = None) -> tf.distribute.Strategy:
    """The tf.distribute strategy named in the config, made once per process.

    multi_worker reads the cluster from TF_CONFIG and must exist before the first TensorFlow op of the
    process (collective ops are configured at start-up), so the training entry points call this first.
    """
    key = (name, tuple(devices or ()))
    if key not in _STRATEGIES:
        if name == "mirrored":
            _STRATEGIES[key] = tf.distribute.MirroredStrategy(devices=devices)
        elif name == "multi_worker":
            _STRATEGIES[key] = tf.distribute.MultiWorkerMirroredStrategy()
        else:
            return tf.distribute.get_strategy()
    return _STRATEGIES[key]


def task_count(strategy: tf.distribute.Strategy) -> int:
    """How many processes train together (1 unless multi-worker)."""
    resolver = strategy.cluster_resolver
    return sum(len(addresses) for addresses in resolver.cluster_spec().as_dict().values()) if resolver else 1


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True unless this process is a multi-worker task other than the chief (task "chief", else worker 0)."""
    resolver = strategy.cluster_resolver
    if resolver is None or not resolver.task_type or resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()


class AverageOverWorkers(keras.callbacks.Callback):
    """At each epoch's end, sets the non-trainable variables (BatchNorm moving statistics) to their mean over workers.

    Gradients are all-reduced every step, but each worker updates its moving statistics from its own share of the
    batch; averaging them before the checkpoint leaves every worker with the same model.
    """

    def __init__(self, strategy: tf.distribute.Strategy):
        super().__init__()
        self.strategy = strategy
        self._average = None

    def on_epoch_end(self, epoch, logs=None):
        if self._average is None:
            self._average = tf.function(self._assign_means)
        self._average([v.value for v in self.model.non_trainable_variables])

    def _assign_means(self, variables):
        means = self.strategy.run(
            lambda: tf.distribute.get_replica_context().all_reduce("MEAN", [tf.identity(v) for v in variables])
        )
        for variable, mean in zip(variables, means):
            variable.assign(self.strategy.experimental_local_results(mean)[0])
