"""`distribution: multi_worker`: two worker processes on localhost train one model together."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import yaml

WORKER = textwrap.dedent(
    """
    import hashlib, json, os, sys, tempfile
    import keras
    from tfdnadet.config import load_config
    from tfdnadet.training.stage2 import train_stage2

    class Report(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in self.model.weights)).hexdigest()
            scratch = [name for name in os.listdir(tempfile.gettempdir()) if name.startswith("tfdnadet-worker-")]
            print("REPORT", json.dumps({"weights": digest, "scratch": scratch}))

    config = load_config("tiny", {"train.epochs": 1, "train.steps_per_epoch": 2, "train.distribution": "multi_worker",
                                  "train.gradcam_images": 0, "train.tensorboard": False})
    result = train_stage2(sys.argv[1], sys.argv[2], config, verbose=0, callbacks=(Report(),))
    print("RESULT", json.dumps({"model_dir": result.model_dir, "steps": result.steps}))
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_workers_end_with_the_same_weights_and_only_the_chief_writes(gan_images, tmp_path):
    cluster = {"worker": [f"localhost:{free_port()}", f"localhost:{free_port()}"]}
    run_dir = tmp_path / "run"
    workers = []
    for index in range(2):
        scratch = tmp_path / f"tmp{index}"  # each worker's temporary directory, to see what it leaves behind
        scratch.mkdir()
        env = {**os.environ, "TMPDIR": str(scratch), "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        command = [sys.executable, "-c", WORKER, gan_images["train"], str(run_dir)]
        workers.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [worker.communicate(timeout=600) for worker in workers]
    for worker, (_, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-3000:]
    reports = [json.loads(line.split(" ", 1)[1]) for out, _ in outputs for line in out.splitlines() if line.startswith("REPORT")]
    results = [json.loads(line.split(" ", 1)[1]) for out, _ in outputs for line in out.splitlines() if line.startswith("RESULT")]

    assert reports[0]["weights"] == reports[1]["weights"]  # gradients, Adam states and BatchNorm statistics agree
    assert reports[0]["scratch"] == [] and len(reports[1]["scratch"]) == 1  # worker 1 wrote into a scratch directory...
    assert os.listdir(tmp_path / "tmp1") == []  # ...which is gone after training
    assert results == [{"model_dir": str(run_dir / "model"), "steps": 2}] * 2
    assert {"config.yaml", "history.csv", "run.json", "checkpoint", "model"} <= set(os.listdir(run_dir))
    with open(run_dir / "history.csv") as f:
        assert len(f.read().splitlines()) == 2  # the header and one epoch, written once
    assert yaml.safe_load(open(run_dir / "config.yaml"))["train"]["distribution"] == "multi_worker"
