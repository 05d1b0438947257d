"""Warm-up requests: TF Serving replays assets.extra/tf_serving_warmup_requests when it loads a version."""

import os

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from tfdnadet.errors import TfdnadetError

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def write_warmup(export_dir: str, model_name: str, requests: dict) -> str:
    """Write {signature: {input name: array}} as PredictionLog records (a TFRecord file), one per signature."""
    path = os.path.join(export_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature, inputs in requests.items():
            request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
            for key, value in inputs.items():
                request.inputs[key].CopyFrom(tf.make_tensor_proto(np.asarray(value)))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def read_warmup(export_dir: str) -> list:
    """[(signature name, {input name: numpy array})] from an export's warm-up file."""
    path = os.path.join(export_dir, WARMUP_FILE)
    if not os.path.isfile(path):
        raise TfdnadetError(f"{export_dir} has no {WARMUP_FILE}: TF Serving would answer its first request slowly.")
    requests = []
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
        requests.append((request.model_spec.signature_name, {k: tf.make_ndarray(v) for k, v in request.inputs.items()}))
    return requests
