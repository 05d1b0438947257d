"""The `tfdnadet` command: parse options, call a library function, render its result.

JSON goes to stdout; progress bars and messages go to stderr. Known errors are one line on stderr and exit
code 1, usage errors 2, "some inputs failed" 3. Every command that uses a model takes it as its first
argument, MODEL, which may be left out when $TFDNADET_MODEL (else ./model) is the model to use.
"""

import contextlib
import json
import os
import shlex
import signal
import sys
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Column, Table
from typer.core import TyperGroup

from tfdnadet.quiet import quiet_startup
from tfdnadet.wording import counted

PIPELINE_ORDER = (
    "train-stage1", "train-stage2", "add-head", "heads", "calibrate-rejection", "predict", "evaluate", "gradcam", "fingerprint", "export", "import-torch", "zoo", "quickstart"
)  # fmt: skip


class PipelineOrder(TyperGroup):
    """`--help` lists the commands in the order a user runs them, not alphabetically."""

    def list_commands(self, ctx):
        return sorted(self.commands, key=lambda name: PIPELINE_ORDER.index(name) if name in PIPELINE_ORDER else len(PIPELINE_ORDER))


app = typer.Typer(cls=PipelineOrder, no_args_is_help=True, pretty_exceptions_show_locals=False, add_completion=False)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

EXIT_ERROR, EXIT_SOME_FAILED = 1, 3
MODEL_HELP = "Model directory; may be left out when $TFDNADET_MODEL (else ./model) is the model."
def _config(config: Optional[str], options: dict, settings: Optional[List[str]]):
    from tfdnadet.config import load_config, parse_settings

    return load_config(config, {**options, **parse_settings(settings)})


def _progress_verbosity() -> int:
    """Keras' bar updating in place on a terminal; one line per epoch in a log file."""
    return 1 if sys.stderr.isatty() else 2


@contextlib.contextmanager
def _progress_to_stderr():
    """Keras writes its progress bar to stdout; keep stdout for results."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


class _TrainingBar:
    """Training progress on stderr: on a terminal one bar that fits the screen and updates in place, plus a line
    per finished epoch; otherwise (a log file) only the line per epoch."""

    SHOWN = ("loss", "accuracy", "val_loss", "val_accuracy")

    def __init__(self, header: str = ""):
        self._progress = self._task = None
        self._header = header  # printed when training starts, so an error before it stays one line

    def callback(self):
        from tfdnadet.training.callbacks import ProgressReport

        return ProgressReport(self.update)

    def update(self, p) -> None:
        self._print_header()
        if p.epoch_done:
            self.close()
            err.print(f"epoch {p.epoch}/{p.epochs}  {self._metrics(p.logs)}", highlight=False)
        elif err.is_terminal:
            if self._progress is None:
                self._open()
            self._progress.update(self._task, completed=p.step, total=p.steps, epoch=f"{p.epoch}/{p.epochs}", metrics=self._metrics(p.logs))

    def member(self, index: int, count: int) -> None:
        """A line as each run of an ensemble starts (stage1.encoders, train.runs_per_encoder)."""
        self.close()
        self._print_header()
        err.print(f"run {index + 1}/{count} of an ensemble (the model averages its runs)", highlight=False)

    def note(self, message: str) -> None:
        """A line about the run (e.g. the resolution chosen), under the header."""
        self.close()
        self._print_header()
        err.print(message, highlight=False)

    def _print_header(self) -> None:
        if self._header:
            err.print(self._header, highlight=False)
            self._header = ""

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def _open(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("epoch {task.fields[epoch]}"), BarColumn(bar_width=20), MofNCompleteColumn(), TimeRemainingColumn())
        self._progress = Progress(*columns, TextColumn("{task.fields[metrics]}"), console=err, transient=True)
        self._progress.start()
        self._task = self._progress.add_task("training", epoch="", metrics="")

    def _metrics(self, logs: dict) -> str:
        return "  ".join(f"{key} {logs[key]:.4g}" for key in self.SHOWN if key in logs)


@contextlib.contextmanager
def _training_progress(header: str = ""):
    """Yields the bar that draws a training run's progress, `header` first (its callback() goes to the trainer)."""
    bar = _TrainingBar(header)
    try:
        yield bar
    finally:
        bar.close()


@contextlib.contextmanager
def _says_how_to_continue(how: str):
    """Ctrl-C (or SIGTERM) during a long command: one line on how to continue it, exit 130 (typer would end it in
    silence)."""
    try:
        yield
    except KeyboardInterrupt:
        err.print(f"interrupted: {how}", highlight=False)
        raise typer.Exit(130) from None


def _this_command(extra: str = "") -> str:
    """The command line as the user typed it (plus `extra` when it is not there), to paste again."""
    words = ["tfdnadet", *sys.argv[1:]]
    if extra and extra not in words:
        words.append(extra)
    return shlex.join(words)


def _resume_hint() -> str:
    return f"{_this_command('--resume')} continues from the last finished epoch."


def _print_table(table: Table) -> None:
    """On a terminal fit the screen; in a pipe or file keep every cell on one line, for grep and friends."""
    wide = Console(soft_wrap=True, width=None if out.is_terminal else 10_000)
    wide.print(table)


def _warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {message}", highlight=False)


def _failed(failures: list) -> None:
    for path, reason in failures:
        err.print(f"[red]failed:[/red] {path}: {reason}", highlight=False)
    if failures:
        raise typer.Exit(EXIT_SOME_FAILED)


# --- The model argument: MODEL first everywhere, optional when the default model exists ---


# Commands resolve their model before importing TensorFlow: a wrong path is refused in a second, not after ten.


def _model_dir(model: Optional[str]) -> str:
    """MODEL, else the default model, checked to be a model directory."""
    from tfdnadet.model_metadata import default_model_dir, read_metadata

    path = model or default_model_dir()
    read_metadata(path)
    return path


def _model_then(model: Optional[str], second: Optional[str], metavar: str) -> tuple:
    """`[MODEL] SECOND`: given alone, the one argument is SECOND and the model is the default one."""
    if second is not None:
        return _model_dir(model), second
    if model is None:
        raise typer.BadParameter(f"missing argument {metavar}.")
    return _model_dir(None), model


def _model_and_inputs(arguments: List[str]) -> tuple:
    """`[MODEL] PATH...`: the first argument is the model unless it is no model directory while the default is one."""
    from tfdnadet.model_metadata import default_model_dir, is_model_dir

    first, *rest = arguments
    default = default_model_dir()
    if is_model_dir(first) or not is_model_dir(default):
        if not rest:
            raise typer.BadParameter("give MODEL and then image files or folders (MODEL may be left out when $TFDNADET_MODEL is set).")
        return _model_dir(first), rest
    return default, arguments


ModelArgument = typer.Argument(None, metavar="MODEL", help=MODEL_HELP, show_default=False)
ModelAndInputs = typer.Argument(..., metavar="[MODEL] PATH", help=f"Image files or folders, after the model. {MODEL_HELP}")
ConfigOption = typer.Option(None, "--config", "-c", help="YAML config file or built-in name: paper, cpu, tiny (default: cpu).")
SetOption = typer.Option(None, "--set", help="Override any config value: --set data.base_size=64 (repeatable).")
BatchSizeOption = typer.Option(None, "--batch-size", min=1, help="Images per inference batch (default 16).")
AllowOutsideRootOption = typer.Option(False, "--allow-outside-root", help="Let a manifest list files outside its own folder.")


# --- Training, in pipeline order ---


def _resume_config(config: Optional[str], out_dir: str, resume: bool) -> Optional[str]:
    """--resume without --config continues with the run's own config.yaml."""
    saved = os.path.join(out_dir, "config.yaml")
    return saved if resume and config is None and os.path.isfile(saved) else config


def _train_options(steps_per_epoch, learning_rate, precision, distribution, seed) -> dict:
    """The train.* overrides that train-stage1 and train-stage2 share."""
    return {
        "train.steps_per_epoch": steps_per_epoch,
        "train.learning_rate": learning_rate,
        "train.precision": precision,
        "train.distribution": distribution,
        "train.seed": seed,
    }


def _precision_line(cfg) -> str:
    from tfdnadet.precision import describe_precision

    return f"precision: {describe_precision(cfg.train.precision)}"


def _print_trained(result) -> None:
    s = result.selection
    if s and "members" in s:
        judged = f"; accuracy on the validation models {s['val_models_accuracy']:.3f}" if "val_models_accuracy" in s else ""
        if "val_models_augmented_accuracy" in s:
            judged += f", under data.augment {s['val_models_augmented_accuracy']:.3f}"
        runs = f"the mean of {s['members']} runs, kept epochs {', '.join(map(str, s['epochs']))}" if s["members"] > 1 else f"kept epoch {s['epochs'][0]}"
        kept = f" ({runs}, chosen on {s['select_on']}{judged})"
    else:
        kept = f" (kept epoch {s['epoch']}, chosen on {s['select_on']})" if s else ""
    err.print(f"trained {counted(result.epochs_completed, 'epoch')}, {counted(result.steps, 'step')}; model written to {result.model_dir}{kept}")
    out.print_json(json.dumps({"model": result.model_dir, "epochs": result.epochs_completed, "steps": result.steps, "selection": result.selection}))


@app.command("train-stage1")
def train_stage1_command(
    data: Optional[str] = typer.Option(None, "--data", "-d", help="A folder of natural photos (default: photos bundled with installed packages)."),
    out_dir: str = typer.Option(..., "--out", "-o", help="Run directory: checkpoints, history.csv, curves.png, model/."),
    config: Optional[str] = ConfigOption,
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's last checkpoint."),
    epochs: Optional[int] = typer.Option(None, help="stage1.epochs (null in the config: train.epochs)"),
    steps_per_epoch: Optional[int] = typer.Option(None, help="train.steps_per_epoch"),
    learning_rate: Optional[float] = typer.Option(None, help="train.learning_rate"),
    precision: Optional[str] = typer.Option(None, help="train.precision: auto, float32, mixed_float16, mixed_bfloat16"),
    distribution: Optional[str] = typer.Option(None, help="train.distribution: default, mirrored, multi_worker"),
    seed: Optional[int] = typer.Option(None, help="train.seed"),
    crops: Optional[int] = typer.Option(None, help="stage1.crops (random crops cut from the photos)"),
    settings: Optional[List[str]] = SetOption,
):
    """Pretrain the encoder on image-transformation classification (stage 1), for train-stage2 --init RUN/model."""
    from tfdnadet.training.stage1 import train_stage1

    cfg = _config(
        _resume_config(config, out_dir, resume),
        {
            "stage1.epochs": epochs,
            **_train_options(steps_per_epoch, learning_rate, precision, distribution, seed),
            "stage1.crops": crops,
        },
        settings,
    )
    with _says_how_to_continue(_resume_hint()), _training_progress(_precision_line(cfg)) as bar:
        result = train_stage1(
            data, out_dir, cfg, resume=resume, verbose=0, callbacks=(bar.callback(),), on_skipped=_warn, on_member=bar.member, on_note=bar.note
        )
    _print_trained(result)


@app.command("train-stage2")
def train_stage2_command(
    data: str = typer.Option(..., "--data", "-d", help="Class folders ROOT/<class>/**, a CSV manifest or an annotation txt."),
    out_dir: str = typer.Option(..., "--out", "-o", help="Run directory: checkpoints, history.csv, curves.png, model/."),
    config: Optional[str] = ConfigOption,
    init: Optional[str] = typer.Option(None, "--init", help="Initialise the encoder from a model directory (e.g. stage 1)."),
    no_pretrain: bool = typer.Option(False, "--no-pretrain", help="Randomly initialised encoder (the Base+PCL ablation); excludes --init."),
    method: str = typer.Option(
        "dnadet", "--method", help="dnadet (SupCon + CE on patches), base (CE on whole images), dnadet_spectral (DNA-Det encoder "
        "+ spectral branch), spectral (that branch alone), or a baseline: attnet, dct, prnu, gfd (GFD-Net)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's last checkpoint."),
    epochs: Optional[int] = typer.Option(None, help="train.epochs"),
    steps_per_epoch: Optional[int] = typer.Option(None, help="train.steps_per_epoch"),
    learning_rate: Optional[float] = typer.Option(None, help="train.learning_rate"),
    precision: Optional[str] = typer.Option(None, help="train.precision: auto, float32, mixed_float16, mixed_bfloat16"),
    distribution: Optional[str] = typer.Option(None, help="train.distribution: default, mirrored, multi_worker"),
    loss: Optional[str] = typer.Option(None, help="train.loss: pcl (SupCon + CE) or ce"),
    jit_compile: Optional[bool] = typer.Option(None, "--jit/--no-jit", help="train.jit_compile (XLA)"),
    seed: Optional[int] = typer.Option(None, help="train.seed"),
    width: Optional[float] = typer.Option(None, help="model.width (encoder channel multiplier)"),
    images_per_class: Optional[int] = typer.Option(None, help="data.images_per_class (k in a class-balanced batch)"),
    patches_per_image: Optional[int] = typer.Option(None, help="data.patches_per_image"),
    patch_size: Optional[int] = typer.Option(None, help="data.patch_size"),
    base_size: Optional[int] = typer.Option(None, help="data.base_size (first resize)"),
    input_size: Optional[int] = typer.Option(None, help="data.input_size (second resize)"),
    classes: Optional[str] = typer.Option(None, help="data.class_names for integer labels, comma separated"),
    allow_outside_root: bool = AllowOutsideRootOption,
    heads: Optional[str] = typer.Option(None, "--heads", help="heads.layout: multiclass, or one-vs-all (one binary head per class)"),
    val_data: Optional[str] = typer.Option(
        None,
        "--val-data",
        help="Images of generator models not in training (a zoo: its validation split) to choose the epoch on; "
        "default: the validation split of the zoo --data is in.",
    ),
    freeze_backbone: bool = typer.Option(False, "--freeze-backbone", help="Train the heads only (train.finetune_from_block=frozen)."),
    settings: Optional[List[str]] = SetOption,
):
    """Train the architecture classifier (stage 2) on labelled images."""
    if no_pretrain and init:
        raise typer.BadParameter("--no-pretrain and --init exclude each other.", param_hint="--no-pretrain")
    from tfdnadet.training.stage2 import train_stage2

    cfg = _config(
        _resume_config(config, out_dir, resume),
        {
            "train.epochs": epochs,
            **_train_options(steps_per_epoch, learning_rate, precision, distribution, seed),
            "train.loss": loss,
            "train.jit_compile": jit_compile,
            "model.width": width,
            "data.images_per_class": images_per_class,
            "data.patches_per_image": patches_per_image,
            "data.patch_size": patch_size,
            "data.base_size": base_size,
            "data.input_size": input_size,
            "data.class_names": classes.split(",") if classes else None,
            "heads.layout": heads,
            "train.finetune_from_block": "frozen" if freeze_backbone else None,
        },
        settings,
    )
    from tfdnadet.methods import apply_method

    cfg = apply_method(cfg, method)
    with _says_how_to_continue(_resume_hint()), _training_progress(_precision_line(cfg)) as bar:
        result = train_stage2(
            data,
            out_dir,
            cfg,
            init_model=init,
            resume=resume,
            verbose=0,
            callbacks=(bar.callback(),),
            on_skipped=_warn,
            allow_outside_root=allow_outside_root,
            val_data=val_data,
            on_member=bar.member,
            on_note=bar.note,
        )
    _print_trained(result)


@app.command("add-head")
def add_head_command(
    model: Optional[str] = ModelArgument,
    name: Optional[str] = typer.Argument(None, metavar="NAME", help="Head name: the architecture it recognises (letters, digits, '_')."),
    positives: str = typer.Option(..., "--positives", "-p", help="Folder of images made by this architecture (searched recursively)."),
    negatives: Optional[List[str]] = typer.Option(
        None, "--negatives", "-n", help="Folder of other images (repeatable). Default: the model's training data less class NAME."
    ),
    finetune_top: Optional[int] = typer.Option(None, "--finetune-top", help="heads.finetune_top: train a private copy of the last K encoder blocks."),
    epochs: Optional[int] = typer.Option(None, help="heads.epochs"),
    steps_per_epoch: Optional[int] = typer.Option(None, help="heads.steps_per_epoch"),
    threshold_fpr: Optional[float] = typer.Option(
        None, "--threshold-fpr", help="heads.threshold_fpr: share of the validation split's negatives the threshold lets fire (default 0)."
    ),
    replace: bool = typer.Option(False, "--replace", help="Train again a head that already exists."),
):
    """Add a one-vs-all head for one architecture; the backbone and every other head stay bit-for-bit unchanged."""
    model_dir, name = _model_then(model, name, "NAME")
    from tfdnadet.training.add_head import add_head

    with _progress_to_stderr():
        info = add_head(
            model_dir,
            name,
            positives,
            tuple(negatives or ()),
            finetune_top=finetune_top,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            threshold_fpr=threshold_fpr,
            replace=replace,
            verbose=_progress_verbosity(),
            on_skipped=_warn,
        )
    err.print(f"added head '{name}' to {model_dir}: threshold {info['threshold']:.3f} ({info['threshold_rule']})")
    out.print_json(json.dumps(info))


heads_app = typer.Typer(no_args_is_help=True, help="List, remove, calibrate and evaluate the named heads of a model.")
app.add_typer(heads_app, name="heads")


@heads_app.command("list")
def heads_list_command(
    model: Optional[str] = ModelArgument,
    as_json: bool = typer.Option(False, "--json", help="A JSON list on stdout."),
):
    """Name, kind, positives count, threshold, validation precision/recall and date of every head."""
    model_dir = _model_dir(model)
    from tfdnadet.models.model_dir import LIST_FIELDS, list_heads

    rows = list_heads(model_dir)
    if as_json:
        print(json.dumps(rows))
        return
    table = Table(*LIST_FIELDS)
    for row in rows:
        table.add_row(*("-" if row[k] is None else f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k]) for k in LIST_FIELDS))
    _print_table(table)


@heads_app.command("remove")
def heads_remove_command(
    model: Optional[str] = ModelArgument,
    name: Optional[str] = typer.Argument(None, metavar="NAME", help="The head to remove."),
):
    """Delete one head; the backbone and the other heads are not touched."""
    model_dir, name = _model_then(model, name, "NAME")
    from tfdnadet.models.model_dir import remove_head

    left = remove_head(model_dir, name)
    err.print(f"removed head '{name}' from {model_dir}; heads left: {', '.join(left)}")


@heads_app.command("calibrate")
def heads_calibrate_command(
    model: Optional[str] = ModelArgument,
    name: Optional[str] = typer.Argument(None, metavar="NAME", help="The binary head to calibrate."),
    data: str = typer.Option(..., "--data", "-d", help="Labelled validation images: class NAME = positives, other classes = negatives."),
    target_precision: Optional[float] = typer.Option(None, "--target-precision", help="Lowest threshold reaching this precision (default: best F1)."),
    batch_size: Optional[int] = BatchSizeOption,
):
    """Choose a binary head's threshold on validation data and store it with the head."""
    model_dir, name = _model_then(model, name, "NAME")
    from tfdnadet.evaluation.heads import calibrate_head

    info = calibrate_head(model_dir, name, data, target_precision, **_given(batch_size=batch_size))
    err.print(
        f"head '{name}': threshold {info['threshold']:.4f} ({info['threshold_rule']}), "
        f"precision {info['val_precision']:.3f}, recall {info['val_recall']:.3f} on {info['val_count']} images"
    )
    out.print_json(json.dumps(info))


@heads_app.command("evaluate")
def heads_evaluate_command(
    model: Optional[str] = ModelArgument,
    data: str = typer.Option(..., "--data", "-d", help="Labelled images; classes no head knows make the open-set check."),
    out_dir: Optional[str] = typer.Option(None, "--out", "-o", help="Write heads_evaluation.json here."),
    batch_size: Optional[int] = BatchSizeOption,
):
    """Per-head precision/recall/F1/AUC, failed/multiple attribution and self-contradiction rates, open-set rate."""
    model_dir = _model_dir(model)
    from tfdnadet.evaluation.heads import evaluate_heads, write_heads_evaluation
    from tfdnadet.models.model_dir import load_detector

    metrics = evaluate_heads(load_detector(model_dir), data, **_given(batch_size=batch_size))
    if metrics["skipped"]:
        _warn(f"skipped {counted(len(metrics['skipped']), 'unusable image file')}, e.g. {metrics['skipped'][0]['path']}")
    _print_heads_metrics(metrics)
    if out_dir:
        err.print(f"wrote {write_heads_evaluation(metrics, out_dir)}")


def _print_heads_metrics(metrics: dict) -> None:
    rates, open_set = metrics["rates"], metrics["open_set"]
    share = lambda value: "-" if value is None else f"{value:.3f}"  # noqa: E731
    out.print(
        f"images: {metrics['count']}   failed attribution: {share(rates['failed_attribution'])}   "
        f"multiple attribution: {share(rates['multiple_attribution'])}   self-contradiction: {share(rates['self_contradiction'])}   "
        f"verdict accuracy: {share(metrics['verdict_accuracy'])}"
    )
    table = Table("head", "threshold", "precision", "recall", "f1", "auc", "positives", "negatives")
    for name, m in metrics["heads"].items():
        table.add_row(name, *(share(m[k]) for k in ("threshold", "precision", "recall", "f1", "auc")), str(m["positives"]), str(m["negatives"]))
    _print_table(table)
    classes = ", ".join(open_set["classes"]) or "none in the data"
    out.print(f"open set ({classes}): {open_set['count']} images, answered unknown-generator or real: {share(open_set['rate'])}")


@app.command("calibrate-rejection")
def calibrate_rejection_command(
    model: Optional[str] = ModelArgument,
    score: str = typer.Option("gaussian", "--score", help="Rejection score: msp, heads or gaussian."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="A zoo's zoo.json: its train split (Gaussian fitting) and validation split."),
    train: Optional[str] = typer.Option(None, "--train", help="Labelled training images of the model's classes (Gaussian fitting)."),
    validation: Optional[str] = typer.Option(None, "--validation", help="Labelled validation images; classes the model lacks are left out."),
    accept: float = typer.Option(0.95, "--accept", help="Share of known validation images the threshold accepts."),
    fit_validation: bool = typer.Option(
        False,
        "--fit-validation/--train-only",
        help="gaussian: fit on the validation images of known classes too (the threshold then from their out-of-fold scores), or on the training images only.",
    ),
    batch_size: Optional[int] = BatchSizeOption,
):
    """Fit the open-set rejection rule on known classes and store it in the model (predict then says unknown-generator)."""
    if (protocol is None) == (validation is None):
        raise typer.BadParameter("give either --protocol ZOO_DIR/zoo.json or --validation DATA (and --train DATA for gaussian).")
    model_dir = _model_dir(model)
    from tfdnadet.evaluation.open_set import calibrate_rejection, zoo_calibration_data

    data = zoo_calibration_data(protocol) if protocol else {"train": train, "validation": validation}
    rule = calibrate_rejection(
        model_dir, score, data["validation"], data["train"], accept, fit_validation=fit_validation, **_given(batch_size=batch_size)
    )
    err.print(
        f"rejection score {rule['score']}: threshold {rule['threshold']:.4f} accepts "
        f"{100 * rule['validation_accepted']:.1f}% of {rule['validation_count']} validation images of known classes"
        + (" (out of fold: each scored by a Gaussian that did not see its class's validation images)" if rule.get("fit_validation") else "")
    )
    out.print_json(json.dumps({k: v for k, v in rule.items() if k not in ("means", "precision")}))


def _given(**options) -> dict:
    """The options a user gave (not None): the library's own defaults apply to the others."""
    return {key: value for key, value in options.items() if value is not None}


# --- Using a model ---


@app.command("predict")
def predict_command(
    arguments: List[str] = ModelAndInputs,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per image (JSON lines) on stdout."),
    batch_size: Optional[int] = BatchSizeOption,
    top_k: Optional[int] = typer.Option(None, "--top-k", min=1, help="How many classes to list per image (default 3)."),
):
    """Attribute images to the architecture that made them (or to real)."""
    model, paths = _model_and_inputs(arguments)
    from tfdnadet.inference import attribute
    from tfdnadet.models.model_dir import load_detector

    results, failures = attribute(load_detector(model), paths, **_given(batch_size=batch_size, top_k=top_k))
    if as_json:
        for result in results:
            print(json.dumps(result.to_dict()))
    elif results:
        _print_table(_attribution_table(results, width=out.width if out.is_terminal else None))
    _failed(failures)


def _attribution_table(results: list, width: Optional[int] = None) -> Table:
    """file, answer with its probability, the runners-up, and (with binary heads) the verdict and every head.

    With a `width` (a terminal) file names are trimmed from the left to fit, keeping the end that tells them
    apart; without one (a pipe or file) every cell is whole, on one line.
    """
    binary = any(r.heads for r in results)
    file_width = max(12, width // 3) if width else None
    table = Table(box=None, pad_edge=False)
    # The file column keeps its width (the other columns wrap instead), so the end of each name stays readable.
    table.add_column("file", no_wrap=True, min_width=min(file_width or 0, max(len(r.path) for r in results)))
    for header in ("class", "runners-up", *(["verdict", "binary heads (+ positive)"] if binary else [])):
        table.add_column(header)
    for r in results:
        answer = r.label if r.probability is None else f"{r.label} {r.probability:.2f}"
        runners_up = ", ".join(f"{n} {p:.2f}" for n, p in r.top[1:])
        verdict = f"{r.verdict}: {', '.join(r.attributed)}" if len(r.attributed) > 1 else r.verdict
        heads = ", ".join(f"{n} {h['score']:.2f}{' +' if h['positive'] else ''}" for n, h in r.heads.items())
        table.add_row(_left_trimmed(r.path, file_width), answer, runners_up, *([verdict, heads] if binary else []))
    return table


def _left_trimmed(path: str, width: Optional[int]) -> str:
    return path if width is None or len(path) <= width else "…" + path[-(width - 1) :]


@app.command("evaluate")
def evaluate_command(
    model: Optional[str] = ModelArgument,
    data: Optional[str] = typer.Option(
        None, "--data", "-d", help="Labelled images: class folders, CSV manifest, annotation txt, or a folder of annotation txt splits."
    ),
    protocol: Optional[str] = typer.Option(
        None, "--protocol", help="A zoo's zoo.json: the Table 2 cross-test protocol (closed-set, cross-seed/loss/finetune/dataset)."
    ),
    out_dir: Optional[str] = typer.Option(None, "--out", "-o", help="Write evaluation.json and a confusion-matrix PNG here."),
    batch_size: Optional[int] = BatchSizeOption,
    classes: Optional[str] = typer.Option(None, help="Names of integer labels (annotation txt), comma separated."),
    attack: Optional[str] = typer.Option(
        None, "--attack", help="Table 5 robustness: crop, blur, jpeg, noise, relight, combo (comma separated) or all; with --protocol on every test split."
    ),
    attack_seed: int = typer.Option(0, "--attack-seed", help="Seed of the deterministic test attacks."),
    allow_outside_root: bool = AllowOutsideRootOption,
    report: Optional[str] = typer.Option(
        None, "--report", help="Write report.md and report.html here: metrics, confusion matrix, t-SNE, Grad-CAM, curves."
    ),
    run: Optional[str] = typer.Option(None, "--run", help="Training run directory for the report's curves (default: the model's parent)."),
    tsne_samples: Optional[int] = typer.Option(None, "--tsne-samples", help="Images drawn for the report's t-SNE plot (default 500)."),
    open_set: bool = typer.Option(
        False, "--open-set", help="With --protocol: known test splits vs the architectures held out of training (AUROC, OSCR, false rejection)."
    ),
    unknown: Optional[str] = typer.Option(None, "--unknown", help="With --open-set: the held-out architectures (default: the zoo's ones the model lacks)."),
    score: Optional[str] = typer.Option(None, "--score", help="With --open-set: rejection score msp, heads or gaussian (default: the model's own)."),
):
    """Accuracy, macro-F1, per-class precision/recall and the confusion matrix on labelled images."""
    if (data is None) == (protocol is None):
        raise typer.BadParameter("give either --data DATA or --protocol ZOO_DIR/zoo.json.")
    if (run or tsne_samples) and not report:
        raise typer.BadParameter("--run and --tsne-samples go with --report DIR.")
    model_dir = _model_dir(model)
    from tfdnadet.evaluation.run import EvaluationRequest, run_evaluation
    from tfdnadet.models.model_dir import load_detector

    request = EvaluationRequest(
        data=data,
        protocol=protocol,
        out_dir=out_dir,
        class_names=classes.split(",") if classes else None,
        attack=attack,
        attack_seed=attack_seed,
        allow_outside_root=allow_outside_root,
        report_dir=report,
        run_dir=run,
        open_set=open_set,
        unknown=unknown.split(",") if unknown else None,
        score=score,
        **_given(batch_size=batch_size, tsne_samples=tsne_samples),
    )
    result = run_evaluation(load_detector(model_dir), model_dir, request)
    if result.splits is not None:
        _print_splits(result.splits)
    if result.robustness is not None:
        for row in result.robustness["rows"].values():
            _warn_skipped(row["skipped"], f"{row['data']}: ")
        _print_robustness(result.robustness)
    if result.metrics is not None:
        _warn_skipped(result.metrics["skipped"])
        _print_metrics(result.metrics)
    if result.open_set is not None:
        _print_open_set(result.open_set)
    for path in result.written:
        err.print(f"wrote {path}", highlight=False)


def _print_open_set(results: dict) -> None:
    title = f"open set, score {results['score']}: known splits vs {', '.join(results['unknown_classes'])} ({results['unknown_count']} images)"
    columns = ["known split", "images", "accuracy (%)", "AUROC", "OSCR", "false rejection at 95% (%)"]
    rule = results["rejection_threshold"] is not None
    if rule:
        title += f"; the model's threshold refuses {100 * results['unknown_refused_by_rule']:.2f}% of the unknowns"
    grid = Table(*columns, *(["refused by the model's threshold (%)"] if rule else []), title=title)
    for name, m in [*results["splits"].items(), ("all known", results["all_known"])]:
        cells = [name, str(m["count"]), f"{100 * m['accuracy']:.2f}", f"{m['auroc']:.3f}", f"{m['oscr']:.3f}", f"{100 * m['false_rejection_at_95']:.2f}"]
        grid.add_row(*cells, *([f"{100 * m['refused_by_rule']:.2f}"] if rule else []))
    _print_table(grid)
    title = "each unknown generator model, least told apart first: AUROC against all known images, the class named most often"
    grid = Table(Column("unknown generator model", overflow="fold"), "images", "AUROC", Column("named (%)", no_wrap=True), title=title)
    if rule:
        grid.add_column("refused (%)")
    for name, m in sorted(results["unknown_models"].items(), key=lambda item: item[1]["auroc"]):
        top, share = next(iter(m["taken_for"].items()))
        cells = [name, str(m["count"]), f"{m['auroc']:.3f}", f"{top} {100 * share:.0f}"]
        grid.add_row(*cells, *([f"{100 * m['refused_by_rule']:.1f}"] if rule else []))
    _print_table(grid)


def _warn_skipped(skipped: list, where: str = "") -> None:
    if skipped:
        _warn(f"{where}skipped {counted(len(skipped), 'unusable image file')}, e.g. {skipped[0]['path']}: {skipped[0]['reason']}")


def _print_robustness(table: dict) -> None:
    """The layout of Table 5: accuracy (%) per attack, one row per test set."""
    from tfdnadet.data.perturb import ATTACK_TITLES

    titles = {"clean": "Clean", **ATTACK_TITLES}
    grid = Table("test set", "images", *(titles[c] for c in table["columns"]), title=f"accuracy (%) under attack, seed {table['seed']}")
    for name, row in table["rows"].items():
        grid.add_row(name, str(row["count"]), *(f"{100 * row['scores'][c]['accuracy']:.2f}" for c in table["columns"]))
    _print_table(grid)


def _print_splits(results: dict) -> None:
    """The layout of Table 2: one row per test split, accuracy and macro-F1 in percent."""
    grid = Table("split", "images", "accuracy (%)", "macro-F1 (%)", title="attribution accuracy per test split")
    for name, metrics in results.items():
        grid.add_row(name, str(metrics["count"]), f"{100 * metrics['accuracy']:.2f}", f"{100 * metrics['macro_f1']:.2f}")
    _print_table(grid)


def _print_metrics(metrics: dict) -> None:
    out.print(f"images: {metrics['count']}   accuracy: {metrics['accuracy']:.4f}   macro-F1: {metrics['macro_f1']:.4f}")
    agreement = metrics.get("patch_agreement", {})  # [3] mean share of 4x4 grid patches agreeing, per true class
    table = Table("class", "precision", "recall", "f1", "support", "patch agreement")
    for name, m in metrics["per_class"].items():
        shown = f"{agreement[name]:.3f}" if name in agreement else "-"
        table.add_row(name, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"]), shown)
    _print_table(table)
    names = metrics["class_names"]
    confusion = Table("true \\ predicted", *names, title="confusion matrix")
    for name, row in zip(names, metrics["confusion_matrix"]):
        if sum(row):
            confusion.add_row(name, *[str(v) for v in row])
    _print_table(confusion)


@app.command("gradcam")
def gradcam_command(
    arguments: List[str] = ModelAndInputs,
    head: Optional[str] = typer.Option(None, "--head", help="Head to explain, by name (default: the multiclass head)."),
    layer: Optional[int] = typer.Option(None, "--layer", help="Encoder layer 1-8 whose feature map is explained (default: 4, as the paper)."),
    out_dir: str = typer.Option("gradcam", "--out", "-o", help="Folder for one overlay PNG per image and contact_sheet.png."),
    batch_size: Optional[int] = BatchSizeOption,
):
    """Grad-CAM evidence: a heatmap over each image showing where the attribution comes from."""
    model, paths = _model_and_inputs(arguments)
    from tfdnadet.explain.gradcam import explain_files
    from tfdnadet.models.model_dir import load_detector

    result = explain_files(load_detector(model), paths, out_dir, **_given(head=head, layer=layer, batch_size=batch_size))
    images = [item.to_dict() for item in result.explanations]
    print(json.dumps({"head": result.head, "layer": result.layer, "images": images, "contact_sheet": result.contact_sheet}))
    err.print(f"wrote {counted(len(result.explanations), 'overlay')} to {out_dir}")
    _failed(result.failures)


@app.command("fingerprint")
def fingerprint_command(
    arguments: List[str] = ModelAndInputs,
    out_dir: str = typer.Option("fingerprints", "--out", "-o", help="Folder for fingerprints/, classes/ (means, spectra), contact_sheet.png."),
    group_by: str = typer.Option("predicted", "--group-by", help="Means per class the model predicts (predicted) or per folder the images are in (folder)."),
    batch_size: Optional[int] = BatchSizeOption,
):
    """GFD-Net fingerprints (models trained with --method gfd): G(x) per image, each class's mean and its spectrum."""
    model, paths = _model_and_inputs(arguments)
    from tfdnadet.explain.fingerprint import fingerprint_files
    from tfdnadet.models.model_dir import load_detector

    result, failures = fingerprint_files(load_detector(model), model, paths, out_dir, group_by=group_by, **_given(batch_size=batch_size))
    print(json.dumps(result.to_dict()))
    err.print(f"wrote {counted(len(result.fingerprints), 'fingerprint')} to {out_dir}")
    _failed(failures)


@app.command("export")
def export_command(
    model: Optional[str] = typer.Argument(
        None, metavar="MODEL", help=f"{MODEL_HELP} With --check and no --name: the export to validate.", show_default=False
    ),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="Model name under BASE (the name TF Serving serves)."),
    base: Optional[str] = typer.Option(None, "--base", help="TF Serving model base: BASE/NAME/VERSION/ and BASE/models.config (default: savedmodels)."),
    version: Optional[int] = typer.Option(None, "--version", help="Version folder to write (default: the next integer)."),
    server_base: Optional[str] = typer.Option(None, "--server-base", help="Where the server sees BASE: base_path in models.config (default: /models)."),
    check: bool = typer.Option(False, "--check", help="Validate as TF Serving would: load, list signatures, run the warm-up requests."),
    precision: Optional[str] = typer.Option(
        None, "--precision", help="Graph compute dtype: auto (default: the model's bfloat16 where this CPU/GPU has it natively), float32, mixed_bfloat16."
    ),
):
    """Export a SavedModel for TensorFlow Serving to BASE/NAME/VERSION/, or validate an export with --check."""
    import dataclasses

    if name is None and not (check and model):
        raise typer.BadParameter("give --name NAME to export MODEL, or --check EXPORT_DIR to validate an export.")
    model_dir = _model_dir(model) if name is not None else None
    from tfdnadet.export import check_export, export_model

    result = {}
    if name is not None:
        exported = export_model(model_dir, name, version=version, **_given(base=base, server_base=server_base, precision=precision))
        err.print(f"exported {exported.path} (computes in {exported.precision}); {exported.models_config} lists every model beside it")
        result = dataclasses.asdict(exported)
        model = exported.path
    if check:
        checked = check_export(model)
        err.print(f"{checked['path']}: loaded, {len(checked['signatures'])} signatures, {len(checked['requests'])} warm-up requests answered")
        result = {**result, "check": checked} if result else checked
    out.print_json(json.dumps(result))


@app.command("import-torch")
def import_torch_command(
    checkpoint: str = typer.Argument(..., help="The official DNA-Det model.pth (a PyTorch state dict)."),
    out_dir: str = typer.Option(..., "--out", "-o", help="Model directory to write."),
    classes: Optional[str] = typer.Option(
        None, help="Names of the checkpoint's classes in label order, e.g. real,progan,mmdgan,sngan,infomaxgan; "
        "leave out for a pretraining checkpoint (backbone only)."
    ),
    image_size: int = typer.Option(512, help="Inference size (the paper resizes to 512)."),
    base_size: int = typer.Option(128, help="First resize (the data set's lowest resolution)."),
    backbone: str = typer.Option("dnadet", help="Backbone to load the encoder into: dnadet, or dnadet_spectral (its spatial branch)."),
):
    """Convert a released DNA-Det PyTorch checkpoint into a tfdnadet model directory (needs the torch extra)."""
    from tfdnadet.interop.torch_import import import_torch_checkpoint

    detector = import_torch_checkpoint(
        checkpoint, out_dir, classes.split(",") if classes else None, image_size=image_size, base_size=base_size, backbone=backbone
    )
    heads = ", ".join(detector.heads) or "none (backbone only)"
    err.print(f"wrote {out_dir} (heads: {heads})")


zoo_app = typer.Typer(no_args_is_help=True, help="The mini GAN zoo: generators trained here, split as the paper's Table 1.")
app.add_typer(zoo_app, name="zoo")


@zoo_app.command("build")
def zoo_build_command(
    out_dir: str = typer.Option(..., "--out", "-o", help="Zoo directory: zoo.json, <split>/<arch>/<model>/*.png, <split>.csv, preview.png."),
    preset: str = typer.Option("tiny", "--preset", help="tiny (minutes, 32 px), small (64 px, six architectures), medium (small's models, a third more GAN steps, bfloat16) or full."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Models trained at the same time, each in its own process (default: one per core, at most 4)."),
):
    """Train the zoo's GANs (resumable per model) and write their images, split manifests and a preview grid."""
    from tfdnadet.zoo.build import build_zoo

    with _says_how_to_continue(f"{_this_command()} again continues; finished models are kept."), _model_progress_bars() as on_progress:
        zoo = build_zoo(out_dir, preset, workers, on_progress)
    err.print(f"zoo '{preset}' in {out_dir}: {len(zoo['models'])} models; preview {os.path.join(out_dir, zoo['preview'])}")
    splits = {name: split["images"] for name, split in zoo["splits"].items()}
    out.print_json(json.dumps({"zoo": os.path.join(out_dir, "zoo.json"), "preview": os.path.join(out_dir, zoo["preview"]), "images": splits}))


@app.command("quickstart")
def quickstart_command(
    out_dir: str = typer.Option("tfdnadet-quickstart", "--out", "-o", help="Where the zoo, runs and results go (reused when run again)."),
):
    """The embedded default job: tiny GAN zoo, stage 1, stage 2, cross-test protocol, a one-vs-all head, export."""
    from tfdnadet.quickstart import run_quickstart

    with _says_how_to_continue(f"{_this_command()} again continues; finished stages are kept."), _StageConsole() as stages:
        result = run_quickstart(out_dir, callbacks=(stages.training.callback(),), on_stage=stages.start, on_progress=stages.progress)
    _print_quickstart(result)


class _StageConsole:
    """A header per quick-start stage on stderr; the zoo's progress bars live only during their own stage."""

    def __init__(self):
        self._bars = None
        self._reused = False
        self.training = _TrainingBar()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._close_bars()

    def start(self, number: int, total: int, title: str, done: bool) -> None:
        self._close_bars()
        self._reused = done  # a finished zoo still reports its models: no bars for work not done now
        note = "  [dim](done before: reused)[/dim]" if done else ""
        err.print(f"\n[bold]{number}/{total} {title}[/bold]{note}", highlight=False)

    def progress(self, model_id: str, step: int, total: int) -> None:
        if self._reused:
            return
        if self._bars is None:
            self._bars = _model_progress_bars()
            self._on_progress = self._bars.__enter__()
        self._on_progress(model_id, step, total)

    def _close_bars(self) -> None:
        self.training.close()
        if self._bars is not None:
            self._bars.__exit__(None, None, None)
            self._bars = None


def _print_quickstart(result) -> None:
    """The protocol table, what each file is (paths relative to here), and the commands to try next."""
    here = os.getcwd()
    shown = lambda path: os.path.relpath(path, here)  # noqa: E731
    out.print("\n[bold]Architecture attribution on the tiny zoo's test splits (paper Table 2 layout)[/bold]")
    _print_splits(result.protocol)
    if result.stage1:
        out.print(
            f"stage 1 (pretraining on {result.stage1['classes']} image transformations): validation accuracy "
            f"{result.stage1['val_accuracy']:.3f} after {result.stage1['epochs']} epochs (chance {1 / result.stage1['classes']:.3f})",
            highlight=False,
        )
    out.print("\n[bold]Files written:[/bold]")
    for label, path in result.files.items():
        out.print(f"  {label}: {shown(path)}", highlight=False)  # whole paths, even when the line wraps
    model, test_image = shown(result.model_dir), shown(result.example_image)
    out.print("\n[bold]Next, try:[/bold]")
    for command in (
        f"tfdnadet predict {model} {test_image}",
        f"tfdnadet evaluate {model} --data {shown(result.test_csv)} --report {shown(result.report_dir)}",
        f"tfdnadet gradcam {model} {test_image} --out {shown(result.gradcam_dir)}",
        f"tfdnadet heads list {model}",
        f"tfdnadet export --check {shown(result.export_dir)}",
    ):
        out.print(f"  {command}", highlight=False, soft_wrap=True)


@contextlib.contextmanager
def _model_progress_bars():
    """A progress bar per model on stderr (off a terminal one line per finished model); yields on_progress(model_id,
    step, total)."""
    from rich.progress import Progress

    tasks = {}
    with Progress(console=err, disable=not err.is_terminal) as progress:  # a log file gets no final render of the bars

        def on_progress(model_id: str, step: int, total: int) -> None:
            if model_id not in tasks:
                tasks[model_id] = progress.add_task(model_id, total=total)
            progress.update(tasks[model_id], completed=step)
            if step == total and not err.is_terminal:  # no live bars in a log file: one line per model
                err.print(f"{model_id}: {total}/{total} steps", highlight=False)

        yield on_progress


def main() -> None:
    from tfdnadet.errors import TfdnadetError

    quiet_startup()
    default_sigterm = signal.signal(signal.SIGTERM, _stop_as_on_ctrl_c)
    try:
        app()
    except TfdnadetError as exc:
        _exit_with_error(str(exc))
    except OSError as exc:  # a path that cannot be read or written: an unwritable --out, a full disk
        _exit_with_error(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc.strerror or exc))
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, default_sigterm)  # main() called in-process (tests) leaves no handler behind


def _stop_as_on_ctrl_c(signum, frame) -> None:
    """`kill`, `timeout` and job schedulers stop a command as Ctrl-C does: its processes and temporary files are
    cleaned up and it says how to continue (left to the default, a zoo build's model processes ran on)."""
    raise KeyboardInterrupt


def _exit_with_error(message: str) -> None:
    from rich.markup import escape

    err.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    sys.exit(EXIT_ERROR)


if __name__ == "__main__":
    main()
