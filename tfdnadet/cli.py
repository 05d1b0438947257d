"""The `tfdnadet` command: parse options, call a library function, render its result.

JSON goes to stdout; progress bars and messages go to stderr. Known errors are one line on stderr and exit
code 1, usage errors 2, "some inputs failed" 3.
"""

import contextlib
import json
import os
import sys
from typing import List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # keep TensorFlow's C++ start-up chatter off the terminal

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

app = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False, add_completion=False)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

EXIT_ERROR, EXIT_SOME_FAILED = 1, 3

ConfigOption = typer.Option(None, "--config", "-c", help="YAML config file or built-in name: paper, cpu, tiny (default: cpu).")
SetOption = typer.Option(None, "--set", help="Override any config value: --set data.base_size=64 (repeatable).")


def _config(config: Optional[str], options: dict, settings: Optional[List[str]]):
    from tfdnadet.config import load_config
    from tfdnadet.errors import TfdnadetError

    overrides = dict(options)
    for item in settings or []:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise TfdnadetError(f"--set expects SECTION.KEY=VALUE. Received: {item!r}")
        import yaml

        overrides[key.strip()] = yaml.safe_load(value)
    return load_config(config, overrides)


def _progress_verbosity() -> int:
    return 1 if sys.stderr.isatty() else 2


@contextlib.contextmanager
def _progress_to_stderr():
    """Keras writes its progress bar to stdout; keep stdout for results."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _print_table(table: Table) -> None:
    """On a terminal fit the screen; in a pipe or file keep every cell on one line, for grep and friends."""
    wide = Console(soft_wrap=True, width=None if out.is_terminal else 10_000)
    wide.print(table)


def _warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {message}", highlight=False)


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


def _print_trained(result) -> None:
    err.print(f"trained {result.epochs_completed} epoch(s), {result.steps} steps; model written to {result.model_dir}")
    out.print_json(json.dumps({"model": result.model_dir, "epochs": result.epochs_completed, "steps": result.steps}))


@app.command("train-stage2")
def train_stage2_command(
    data: str = typer.Option(..., "--data", "-d", help="Class folders ROOT/<class>/**, a CSV manifest or an annotation txt."),
    out_dir: str = typer.Option(..., "--out", "-o", help="Run directory: checkpoints, history.csv, curves.png, model/."),
    config: Optional[str] = ConfigOption,
    init: Optional[str] = typer.Option(None, "--init", help="Initialise the encoder from a model directory (e.g. stage 1)."),
    no_pretrain: bool = typer.Option(False, "--no-pretrain", help="Randomly initialised encoder (the Base+PCL ablation); excludes --init."),
    method: str = typer.Option(
        "dnadet", "--method", help="dnadet (SupCon + CE on patches), base (CE on whole images), dnadet_spectral (DNA-Det encoder "
        "+ spectral branch), spectral (that branch alone), or a baseline: attnet, dct, prnu."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's last checkpoint."),
    epochs: Optional[int] = typer.Option(None, help="train.epochs"),
    steps_per_epoch: Optional[int] = typer.Option(None, help="train.steps_per_epoch"),
    learning_rate: Optional[float] = typer.Option(None, help="train.learning_rate"),
    precision: Optional[str] = typer.Option(None, help="train.precision: float32, mixed_float16, mixed_bfloat16"),
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
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help="Let a manifest list files outside its own folder."),
    heads: Optional[str] = typer.Option(None, "--heads", help="heads.layout: multiclass, or one-vs-all (one binary head per class)"),
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
        },
        settings,
    )
    from tfdnadet.methods import apply_method

    cfg = apply_method(cfg, method)
    with _progress_to_stderr():
        result = train_stage2(
            data,
            out_dir,
            cfg,
            init_model=init,
            resume=resume,
            verbose=_progress_verbosity(),
            on_skipped=_warn,
            allow_outside_root=allow_outside_root,
        )
    _print_trained(result)


@app.command("predict")
def predict_command(
    model: str = typer.Argument(..., help="Model directory."),
    paths: List[str] = typer.Argument(..., help="Image files or folders."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per image (JSON lines) on stdout."),
    batch_size: int = typer.Option(16, help="Images per inference batch."),
    top_k: int = typer.Option(3, help="How many classes to list per image."),
):
    """Attribute images to the architecture that made them (or to real)."""
    from tfdnadet.inference import attribute
    from tfdnadet.models.model_dir import load_detector

    detector = load_detector(model)
    results, failures = attribute(detector, paths, batch_size, top_k)
    if as_json:
        for result in results:
            print(json.dumps(result.to_dict()))
    else:
        _print_table(_attribution_table(results, top_k))
    for path, reason in failures:
        err.print(f"[red]failed:[/red] {path}: {reason}", highlight=False)
    if failures:
        raise typer.Exit(EXIT_SOME_FAILED)


def _attribution_table(results: list, top_k: int) -> Table:
    """file, multiclass answer, top-k, the combined verdict and (when the model has them) every binary head."""
    binary = any(r.heads for r in results)
    table = Table("file", "class", "probability", f"top-{top_k}", "verdict", *(["binary heads (+ positive)"] if binary else []))
    for r in results:
        verdict = f"{r.verdict}: {', '.join(r.attributed)}" if len(r.attributed) > 1 else r.verdict
        heads = ", ".join(f"{n} {h['score']:.2f}{' +' if h['positive'] else ''}" for n, h in r.heads.items())
        probability = "-" if r.probability is None else f"{r.probability:.3f}"
        top = ", ".join(f"{n} {p:.2f}" for n, p in r.top)
        table.add_row(r.path, r.label, probability, top, verdict, *([heads] if binary else []))
    return table


@app.command("evaluate")
def evaluate_command(
    model: str = typer.Argument(..., help="Model directory."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Labelled images: class folders, CSV manifest or annotation txt."),
    protocol: Optional[str] = typer.Option(
        None, "--protocol", help="A zoo's zoo.json: the Table 2 cross-test protocol (closed-set, cross-seed/loss/finetune/dataset)."
    ),
    out_dir: Optional[str] = typer.Option(None, "--out", "-o", help="Write evaluation.json and a confusion-matrix PNG here."),
    batch_size: int = typer.Option(16, help="Images per inference batch."),
    classes: Optional[str] = typer.Option(None, help="Names of integer labels (annotation txt), comma separated."),
    attack: Optional[str] = typer.Option(
        None, "--attack", help="Table 5 robustness: crop, blur, jpeg, noise, relight, combo (comma separated) or all."
    ),
    attack_seed: int = typer.Option(0, "--attack-seed", help="Seed of the deterministic test attacks."),
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help="Let a manifest list files outside its own folder."),
    report: Optional[str] = typer.Option(
        None, "--report", help="Write report.md and report.html here: metrics, confusion matrix, t-SNE, Grad-CAM, curves."
    ),
    run: Optional[str] = typer.Option(None, "--run", help="Training run directory for the report's curves (default: the model's parent)."),
    tsne_samples: int = typer.Option(500, "--tsne-samples", help="Images drawn for the report's t-SNE plot."),
):
    """Accuracy, macro-F1, per-class precision/recall and the confusion matrix on labelled images."""
    from tfdnadet.evaluation.evaluate import evaluate_dataset, write_evaluation
    from tfdnadet.evaluation.splits import annotation_splits, evaluate_splits, is_annotation_folder
    from tfdnadet.models.model_dir import load_detector

    if (data is None) == (protocol is None):
        raise typer.BadParameter("give either --data DATA or --protocol ZOO_DIR/zoo.json.")
    detector = load_detector(model)
    if protocol:
        _evaluate_protocol(detector, model, protocol, batch_size, out_dir)
        return
    names = classes.split(",") if classes else None
    if is_annotation_folder(data) and not (attack or report):
        results = evaluate_splits(detector, annotation_splits(data), batch_size, names, allow_outside_root)
        _print_splits(results)
        for name, metrics in results.items() if out_dir else ():
            written = write_evaluation(metrics, out_dir, name)
            err.print(f"wrote {written['json']} and {written['confusion_png']}")
        return
    if attack:
        _evaluate_attacks(detector, {"closed-set": data}, attack, attack_seed, batch_size, names, allow_outside_root, out_dir)
        return
    if report:
        from tfdnadet.evaluation.report import evaluate_with_report

        run_dir = run or os.path.dirname(os.path.abspath(model))
        metrics, report_paths = evaluate_with_report(
            detector, data, report, batch_size=batch_size, class_names=names, allow_outside_root=allow_outside_root, run_dir=run_dir, tsne_samples=tsne_samples
        )
    else:
        metrics = evaluate_dataset(detector, data, batch_size, names, allow_outside_root)
    if metrics["skipped"]:
        _warn(f"skipped {len(metrics['skipped'])} unusable image file(s), e.g. {metrics['skipped'][0]['path']}: {metrics['skipped'][0]['reason']}")
    _print_metrics(metrics)
    if out_dir:
        written = write_evaluation(metrics, out_dir)
        err.print(f"wrote {written['json']} and {written['confusion_png']}")
    if report:
        err.print(f"wrote {report_paths['markdown']} and {report_paths['html']}")


def _evaluate_protocol(detector, model: str, zoo: str, batch_size: int, out_dir: Optional[str]) -> None:
    from tfdnadet.evaluation.protocol import evaluate_protocol, write_protocol

    results = evaluate_protocol(detector, zoo, batch_size)
    _print_splits(results)
    if out_dir:
        for path in write_protocol(results, out_dir, model, zoo).values():
            err.print(f"wrote {path}")


def _evaluate_attacks(detector, test_sets, attack, seed, batch_size, names, allow_outside_root, out_dir) -> None:
    from tfdnadet.data.perturb import parse_attacks
    from tfdnadet.evaluation.robustness import robustness_table, write_robustness

    table = robustness_table(detector, test_sets, parse_attacks(attack), seed, batch_size, names, allow_outside_root)
    for row in table["rows"].values():
        if row["skipped"]:
            _warn(f"{row['data']}: skipped {len(row['skipped'])} unusable image file(s), e.g. {row['skipped'][0]['path']}: {row['skipped'][0]['reason']}")
    _print_robustness(table)
    if out_dir:
        path = os.path.join(out_dir, "robustness.json")
        write_robustness(table, path)
        err.print(f"wrote {path}")


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


@app.command("quickstart")
def quickstart_command(
    out_dir: str = typer.Option("tfdnadet-quickstart", "--out", "-o", help="Where the zoo, runs and results go (reused when run again)."),
):
    """The embedded default job: tiny GAN zoo, stage 1, stage 2, cross-test protocol, a one-vs-all head, export."""
    from tfdnadet.quickstart import run_quickstart

    with _progress_to_stderr(), _model_progress_bars() as on_progress:
        result = run_quickstart(out_dir, verbose=_progress_verbosity(), on_progress=on_progress)
    out.print("[bold]Architecture attribution on the tiny zoo's test splits (paper Table 2 layout)[/bold]")
    _print_splits(result.protocol)
    for name, path in result.files.items():
        out.print(f"{name}: {path}", highlight=False)


@contextlib.contextmanager
def _model_progress_bars():
    """A progress bar per model on stderr; yields on_progress(model_id, step, total)."""
    from rich.progress import Progress

    tasks = {}
    with Progress(console=err) as progress:

        def on_progress(model_id: str, step: int, total: int) -> None:
            if model_id not in tasks:
                tasks[model_id] = progress.add_task(model_id, total=total)
            progress.update(tasks[model_id], completed=step)
            if step == total and not err.is_terminal:  # no live bars in a log file: one line per model
                err.print(f"{model_id}: {total}/{total} steps", highlight=False)

        yield on_progress


@app.command("export")
def export_command(
    model: Optional[str] = typer.Argument(
        None, help="Model directory (default: $TFDNADET_MODEL, else ./model); with --check and no --name: the export to validate."
    ),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="Model name under BASE (the name TF Serving serves)."),
    base: str = typer.Option("savedmodels", "--base", help="TF Serving model base: BASE/NAME/VERSION/ and BASE/models.config."),
    version: Optional[int] = typer.Option(None, "--version", help="Version folder to write (default: the next integer)."),
    server_base: str = typer.Option("/models", "--server-base", help="Where the server sees BASE (base_path in models.config)."),
    check: bool = typer.Option(False, "--check", help="Validate as TF Serving would: load, list signatures, run the warm-up requests."),
):
    """Export a SavedModel for TensorFlow Serving to BASE/NAME/VERSION/, or validate an export with --check."""
    import dataclasses

    from tfdnadet.export import check_export, export_model

    if name is None and not (check and model):
        raise typer.BadParameter("give --name NAME to export MODEL, or --check EXPORT_DIR to validate an export.")
    result = {}
    if name is not None:
        exported = export_model(_model_dir(model), name, base, version, server_base)
        err.print(f"exported {exported.path}; {exported.models_config} lists every model under {base}")
        result = dataclasses.asdict(exported)
        model = exported.path
    if check:
        checked = check_export(model)
        err.print(f"{checked['path']}: loaded, {len(checked['signatures'])} signatures, {len(checked['requests'])} warm-up requests answered")
        result = {**result, "check": checked} if result else checked
    out.print_json(json.dumps(result))


@app.command("gradcam")
def gradcam_command(
    model: str = typer.Argument(..., help="Model directory."),
    paths: List[str] = typer.Argument(..., help="Image files or folders."),
    head: Optional[str] = typer.Option(None, "--head", help="Head to explain, by name (default: the multiclass head)."),
    layer: Optional[int] = typer.Option(None, "--layer", help="Encoder layer 1-8 whose feature map is explained (default: 4, as the paper)."),
    out_dir: str = typer.Option("gradcam", "--out", "-o", help="Folder for one overlay PNG per image and contact_sheet.png."),
    batch_size: int = typer.Option(16, help="Images per batch."),
):
    """Grad-CAM evidence: a heatmap over each image showing where the attribution comes from."""
    from tfdnadet.explain.gradcam import explain_files
    from tfdnadet.models.model_dir import load_detector

    chosen = {key: value for key, value in {"head": head, "layer": layer}.items() if value is not None}
    result = explain_files(load_detector(model), paths, out_dir, batch_size=batch_size, **chosen)
    images = [item.to_dict() for item in result.explanations]
    print(json.dumps({"head": result.head, "layer": result.layer, "images": images, "contact_sheet": result.contact_sheet}))
    err.print(f"wrote {len(result.explanations)} overlay(s) to {out_dir}")
    for path, reason in result.failures:
        err.print(f"[red]failed:[/red] {path}: {reason}", highlight=False)
    if result.failures:
        raise typer.Exit(EXIT_SOME_FAILED)


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


ModelArgument = typer.Argument(None, help="Model directory (default: $TFDNADET_MODEL, else ./model).")


def _model_dir(model: Optional[str]) -> str:
    from tfdnadet.models.model_dir import default_model_dir

    return model or default_model_dir()


@app.command("add-head")
def add_head_command(
    name: str = typer.Argument(..., help="Head name: the architecture it recognises (letters, digits, '_')."),
    positives: str = typer.Option(..., "--positives", "-p", help="Folder of images made by this architecture (searched recursively)."),
    negatives: Optional[List[str]] = typer.Option(
        None, "--negatives", "-n", help="Folder of other images (repeatable). Default: the model's training data less class NAME."
    ),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model directory (default: $TFDNADET_MODEL, else ./model)."),
    finetune_top: Optional[int] = typer.Option(None, "--finetune-top", help="heads.finetune_top: train a private copy of the last K encoder blocks."),
    epochs: Optional[int] = typer.Option(None, help="heads.epochs"),
    steps_per_epoch: Optional[int] = typer.Option(None, help="heads.steps_per_epoch"),
    replace: bool = typer.Option(False, "--replace", help="Train again a head that already exists."),
):
    """Add a one-vs-all head for one architecture; the backbone and every other head stay bit-for-bit unchanged."""
    from tfdnadet.training.add_head import add_head

    model_dir = _model_dir(model)
    with _progress_to_stderr():
        info = add_head(
            model_dir,
            name,
            positives,
            tuple(negatives or ()),
            finetune_top=finetune_top,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
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
    from tfdnadet.models.model_dir import LIST_FIELDS, list_heads

    rows = list_heads(_model_dir(model))
    if as_json:
        print(json.dumps(rows))
        return
    table = Table(*LIST_FIELDS)
    for row in rows:
        table.add_row(*("-" if row[k] is None else f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k]) for k in LIST_FIELDS))
    _print_table(table)


@heads_app.command("remove")
def heads_remove_command(
    name: str = typer.Argument(..., help="The head to remove."),
    model: Optional[str] = ModelArgument,
):
    """Delete one head; the backbone and the other heads are not touched."""
    from tfdnadet.models.model_dir import remove_head

    model_dir = _model_dir(model)
    left = remove_head(model_dir, name)
    err.print(f"removed head '{name}' from {model_dir}; heads left: {', '.join(left)}")


@heads_app.command("calibrate")
def heads_calibrate_command(
    name: str = typer.Argument(..., help="The binary head to calibrate."),
    model: Optional[str] = ModelArgument,
    data: str = typer.Option(..., "--data", "-d", help="Labelled validation images: class NAME = positives, other classes = negatives."),
    target_precision: Optional[float] = typer.Option(None, "--target-precision", help="Lowest threshold reaching this precision (default: best F1)."),
    batch_size: int = typer.Option(16, help="Images per inference batch."),
):
    """Choose a binary head's threshold on validation data and store it with the head."""
    from tfdnadet.evaluation.heads import calibrate_head

    info = calibrate_head(_model_dir(model), name, data, target_precision, batch_size)
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
    batch_size: int = typer.Option(16, help="Images per inference batch."),
):
    """Per-head precision/recall/F1/AUC, failed/multiple attribution and self-contradiction rates, open-set rate."""
    from tfdnadet.evaluation.heads import evaluate_heads, write_heads_evaluation
    from tfdnadet.models.model_dir import load_detector

    metrics = evaluate_heads(load_detector(_model_dir(model)), data, batch_size)
    if metrics["skipped"]:
        _warn(f"skipped {len(metrics['skipped'])} unusable image file(s), e.g. {metrics['skipped'][0]['path']}")
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


@app.command("train-stage1")
def train_stage1_command(
    data: Optional[str] = typer.Option(None, "--data", "-d", help="A folder of natural photos (default: photos bundled with installed packages)."),
    out_dir: str = typer.Option(..., "--out", "-o", help="Run directory: checkpoints, history.csv, curves.png, model/."),
    config: Optional[str] = ConfigOption,
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's last checkpoint."),
    epochs: Optional[int] = typer.Option(None, help="stage1.epochs (null in the config: train.epochs)"),
    steps_per_epoch: Optional[int] = typer.Option(None, help="train.steps_per_epoch"),
    learning_rate: Optional[float] = typer.Option(None, help="train.learning_rate"),
    precision: Optional[str] = typer.Option(None, help="train.precision: float32, mixed_float16, mixed_bfloat16"),
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
    with _progress_to_stderr():
        result = train_stage1(data, out_dir, cfg, resume=resume, verbose=_progress_verbosity(), on_skipped=_warn)
    _print_trained(result)


zoo_app = typer.Typer(no_args_is_help=True, help="The mini GAN zoo: generators trained here, split as the paper's Table 1.")
app.add_typer(zoo_app, name="zoo")


@zoo_app.command("build")
def zoo_build_command(
    out_dir: str = typer.Option(..., "--out", "-o", help="Zoo directory: zoo.json, <split>/<arch>/<model>/*.png, <split>.csv, preview.png."),
    preset: str = typer.Option("tiny", "--preset", help="tiny (minutes, 32 px), small (64 px, six architectures) or full."),
    workers: int = typer.Option(1, "--workers", help="Models trained at the same time, each in its own process."),
):
    """Train the zoo's GANs (resumable per model) and write their images, split manifests and a preview grid."""
    from tfdnadet.zoo.build import build_zoo

    with _model_progress_bars() as on_progress:
        zoo = build_zoo(out_dir, preset, workers, on_progress)
    err.print(f"zoo '{preset}' in {out_dir}: {len(zoo['models'])} models; preview {os.path.join(out_dir, zoo['preview'])}")
    splits = {name: split["images"] for name, split in zoo["splits"].items()}
    out.print_json(json.dumps({"zoo": os.path.join(out_dir, "zoo.json"), "preview": os.path.join(out_dir, zoo["preview"]), "images": splits}))


def main() -> None:
    from tfdnadet.errors import TfdnadetError

    try:
        app()
    except TfdnadetError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
