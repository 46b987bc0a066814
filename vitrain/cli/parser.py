"""The ``vitrain`` argument parser. The options of ``train`` and ``pretrain`` are generated from
:class:`~vitrain.config.TrainConfig`'s declarations; those of the other commands are written here."""

from __future__ import annotations

import argparse
from typing import Any, Union, get_args, get_origin, get_type_hints

from .. import __version__
from ..config import Option, TrainConfig, comma_list, options
from ..config.option import format_value
from ..config.train import FINE_TUNING, RUNNING

S = argparse.SUPPRESS  # only options given on the command line reach the config
LICENSE_HELP = "the license the model card names (its YAML header's license), e.g. mit, apache-2.0, cc-by-4.0"


def _flag_help(opt: Option, default: Any) -> str:
    """The option's help with its default, where the default says something (not None, not a switch)."""
    if default is None or isinstance(default, bool):
        return opt.help
    return f"{opt.help} (default: {format_value(default)})"


def _add_option(group: argparse._ActionsContainer, opt: Option, hint: Any, default: Any) -> None:
    """One flag of a TrainConfig field; list fields take a comma string, which the config coerces."""
    if get_origin(hint) is Union:  # Optional[X] -> X
        hint = next(a for a in get_args(hint) if a is not type(None))
    kind = get_origin(hint) or hint  # list[float] -> list
    kwargs: dict[str, Any] = {"dest": opt.name, "default": S, "help": _flag_help(opt, default)}
    if kind is bool:
        kwargs["action"] = "store_false" if default else "store_true"
    else:
        if kind in (int, float):
            kwargs["type"] = kind
        if opt.choices is not None:
            kwargs["choices"] = list(opt.choices)
        if opt.metavar is not None:
            kwargs["metavar"] = opt.metavar
        if opt.const is not None:  # the flag alone means this value
            kwargs["nargs"], kwargs["const"] = "?", opt.const
    group.add_argument(opt.flag, **kwargs)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Every TrainConfig option as a flag, in its ``--help`` section, and ``--config``/``--resume``/``--init``."""
    hints = get_type_hints(TrainConfig)
    defaults = TrainConfig().to_dict()
    by_group: dict[str | None, list[Option]] = {}  # sections in the order their first option comes
    for opt in options(TrainConfig):
        if opt.flag:
            by_group.setdefault(opt.group, []).append(opt)
    for title, group_options in by_group.items():
        group = parser if title is None else parser.add_argument_group(title)
        if title == RUNNING:
            group.add_argument("--config", help="YAML file with any of these options (flags given here win)")
            group.add_argument(
                "--resume",
                metavar="DIR|auto",
                help="continue the run in DIR after its last completed epoch; auto: continue the run in --out "
                "if it holds one (with the same settings), else start it there: one command line that starts "
                "or continues (torchrun --max-restarts, requeued or preempted jobs)",
            )
        for opt in group_options:
            _add_option(group, opt, hints[opt.name], defaults[opt.name])
        if title == FINE_TUNING:
            group.add_argument(
                "--init",
                dest="pretrained",
                default=S,
                metavar="DIR",
                help="start from a `vitrain pretrain` folder (or any run): the same as --pretrained DIR",
            )


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with its subcommands."""
    parser = argparse.ArgumentParser(prog="vitrain", description="Train Vision Transformers on your images.")
    parser.add_argument("--version", action="version", version=f"vitrain {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    train = sub.add_parser(
        "train",
        help="train a ViT (default data: digits)",
        description="Train a Vision Transformer and write a run folder.",
    )
    add_config_arguments(train)
    pre = sub.add_parser(
        "pretrain",
        help="pretrain a ViT on images without their labels (small data)",
        description="Instance-discrimination pretraining: every training image is its own class. "
        "Writes backbone.safetensors for `vitrain train --init DIR`.",
    )
    add_config_arguments(pre)
    pre.add_argument(
        "--method",
        dest="pretrain",
        choices=["instance-discrimination"],
        default=S,
        help="the pretraining method (default: instance-discrimination)",
    )
    sub.add_parser("models", help="list the named model sizes")
    sub.add_parser("recipes", help="list the training recipes, what each reaches, and the command")
    _add_tool_parsers(sub)
    return parser


def _add_tool_parsers(sub: argparse._SubParsersAction) -> None:
    """bench, eval, predict, export, card, push and serve: plain flags, with their defaults in the parser."""
    bench = sub.add_parser(
        "bench",
        help="training/inference throughput vs timm and torchvision (needs timm)",
        description="Time vitrain's, timm's and torchvision's ViT with the same weights, "
        "interleaved, and print medians, ratios and MFU.",
    )
    bench.add_argument(
        "--configs", default="all", help="comma-separated subset of cifar10-tutorial, vit-ti16, vit-b16 (all)"
    )
    bench.add_argument("--repeats", type=int, default=5, help="interleaved repetitions; the median is kept (5)")
    bench.add_argument("--steps", type=int, default=3, help="steps timed per repetition (3)")
    bench.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    bench.add_argument("--json", action="store_true", help="print the results as JSON")
    bench.add_argument(
        "--precision",
        default="fp32,bf16",
        help="comma-separated precisions to time vitrain and timm in: fp32, bf16 (fp32,bf16)",
    )
    bench.add_argument(
        "--compile",
        action="store_true",
        help="also time torch.compile(vitrain's model) (compilation itself is not timed)",
    )

    ev = sub.add_parser(
        "eval",
        help="evaluate a checkpoint or run folder on any --data source",
        description="Top-1/top-5, loss, per-class precision/recall/F1, confusion matrices.",
    )
    ev.add_argument("checkpoint", help="a .safetensors checkpoint or a run folder (its best.safetensors)")
    ev.add_argument(
        "--data",
        help="as for train; a folder without split folders means all of it, unless it is "
        "the checkpoint's training data (default: the checkpoint's training data, its "
        "splits carved as in training)",
    )
    ev.add_argument(
        "--split",
        choices=["all", "train", "val", "test"],
        help="which split (default: test, or val where there is none; all images of a flat folder "
        "given as --data that the checkpoint was not trained on); all: every image of a flat "
        "folder",
    )
    ev.add_argument("--out", help="folder for report.json and the plots (default CHECKPOINT_DIR/eval/DATA-SPLIT)")
    ev.add_argument(
        "--classes",
        type=comma_list,
        help="only these classes of the data, as for train (default: all; without --data, the checkpoint's)",
    )
    ev.add_argument(
        "--tta",
        choices=["none", "flip"],
        default="none",
        help="test-time augmentation: flip averages the probabilities of each image and its mirror image "
        "(none; only for data whose labels a mirror keeps)",
    )
    _add_running_arguments(ev, data=True)

    pr = sub.add_parser(
        "predict",
        help="classify image files, folders or glob patterns",
        description="Write predictions.csv; optionally annotated copies and attention maps.",
    )
    pr.add_argument("checkpoint", help="a .safetensors checkpoint or a run folder (its best.safetensors)")
    pr.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive) or glob patterns")
    pr.add_argument("--out", default="predictions", help="output folder (default ./predictions)")
    pr.add_argument("--top-k", type=int, default=5, help="how many labels per image in the CSV (5)")
    pr.add_argument(
        "--annotate",
        action="store_true",
        help="save copies with the prediction drawn on them (and right/wrong when the folder names the class)",
    )
    pr.add_argument("--attention", action="store_true", help="save attention-rollout overlays and raw maps (.npy)")
    _add_running_arguments(pr, data=False)

    ex = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX, TorchScript, Hugging Face transformers or timm",
        description="onnx and torchscript: one file with a dynamic batch dimension and the preprocessing in its "
        "metadata. hf and timm: a folder that transformers (ViTForImageClassification, ViTImageProcessor) or timm "
        "loads, with a model card (README.md). Every export is loaded back and checked against vitrain's logits.",
    )
    ex.add_argument("checkpoint", help="a .safetensors checkpoint or a run folder (its best.safetensors)")
    ex.add_argument("--format", choices=["onnx", "torchscript", "hf", "timm"], required=True, help="what to write")
    ex.add_argument(
        "--out",
        help="output file (onnx, torchscript; default beside the checkpoint) or folder (hf, timm; "
        "default RUN/export-FORMAT)",
    )
    ex.add_argument("--license", help=LICENSE_HELP)
    _add_share_parsers(sub)
    _add_shards_parser(sub)
    _add_inspect_parser(sub)


def _add_inspect_parser(sub: argparse._SubParsersAction) -> None:
    """inspect: know the data before training on it."""
    ins = sub.add_parser(
        "inspect",
        help="look at a dataset before training: classes, sizes, modes, duplicates, near-duplicates, split shift",
        description="Reads every image once (with the splits training would make) and writes OUT/inspect.json and "
        "OUT/inspect.html (one self-contained page): images and classes per split, modes, bit depths and sizes, "
        "unreadable files, exact and near duplicates within and across splits, side by side, whether an "
        "evaluation split looks shifted from training, intensity histograms and a contact sheet.",
    )
    ins.add_argument("data", help="a folder, an archive, a folder of shards, or a built-in set")
    ins.add_argument("--out", help="the folder to write into (default runs/inspect-DATA)")
    ins.add_argument(
        "--near-bits",
        type=int,
        default=4,
        help="near-duplicates: thumbnails that correlate at least 0.95 and whose perceptual hashes differ in at "
        "most this many of 64 bits (4; more finds more look-alikes too)",
    )
    ins.add_argument(
        "--labels",
        metavar="RUN",
        help="also list images whose label disagrees most with RUN's predicted probabilities (cleanlab's "
        "confident learning on the run's held-out validation and test images), as candidates to review",
    )
    _add_split_arguments(ins)
    ins.add_argument("--data-root", help="where built-in sets are stored (as for training)")
    ins.add_argument("--no-download", dest="download", action="store_false", help="never download a built-in set")
    ins.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _add_split_arguments(p: argparse.ArgumentParser) -> None:
    """The options that carve a flat folder's splits, with training's defaults (the same images go where
    training puts them)."""
    p.add_argument("--val-fraction", type=float, default=0.1, help="for a flat folder, as for training (0.1)")
    p.add_argument("--test-fraction", type=float, default=0.1, help="for a flat folder, as for training (0.1)")
    p.add_argument("--split-seed", type=int, default=0, help="for a flat folder, as for training (0)")


def _add_shards_parser(sub: argparse._SubParsersAction) -> None:
    """shards: a folder of class folders as WebDataset shards, for data larger than memory."""
    shards = sub.add_parser(
        "shards",
        help="write a folder of class folders (or an archive of one) as WebDataset shards to stream",
        description="Splits the data as training would (split folders, or --val-fraction/--test-fraction/"
        "--split-seed for a flat folder) and writes OUT/{train,val,test}-NNNNNN.tar of --shard-size samples "
        "each (KEY.jpg|png|... with its bytes, KEY.cls) and OUT/classes.txt; train with --data OUT.",
    )
    shards.add_argument("data", help="a folder of class folders, or a .zip/.tar of one")
    shards.add_argument("--out", required=True, help="the folder to write the shards into (new, or empty)")
    shards.add_argument("--shard-size", type=int, default=1000, help="samples per shard (1000)")
    _add_split_arguments(shards)


def _add_share_parsers(sub: argparse._SubParsersAction) -> None:
    """card, push and serve: describing, publishing and showing a run."""
    card = sub.add_parser(
        "card",
        help="write a run's model card (README.md in the Hugging Face Hub's form)",
        description="Data, splits, test accuracy, per-class results, the leak check, the command and the "
        "report's warnings as limitations, under a YAML header the Hub reads.",
    )
    card.add_argument("run", help="a run folder (with report.json)")
    card.add_argument("--out", help="the file to write (default RUN/README.md)")
    card.add_argument("--license", help=LICENSE_HELP)
    card.add_argument(
        "--format", choices=["vitrain", "hf", "timm"], default="vitrain", help="which export the card describes"
    )

    push = sub.add_parser(
        "push",
        help="upload a run's export and model card to the Hugging Face Hub",
        description="Exports the run (--format hf or timm) with its model card into a temporary folder and "
        "uploads it with huggingface_hub (a token from `hf auth login` or HF_TOKEN).",
    )
    push.add_argument("run", help="a run folder (with report.json)")
    push.add_argument("--repo", required=True, help="the Hub repository, USER/NAME (created if missing)")
    push.add_argument("--format", choices=["hf", "timm"], default="hf", help="which export to upload (hf)")
    push.add_argument("--license", help=LICENSE_HELP)
    push.add_argument("--private", action="store_true", help="create the repository as private")

    serve = sub.add_parser(
        "serve",
        help="a local web app: classify images with a run's model, see its report (needs vitrain[serve])",
        description="Gradio app with two tabs: classify an image (top classes, attention rollout, time) and "
        "the run (curves, confusion matrix, per-class table, the test images it got wrong, notes, config).",
    )
    serve.add_argument("run", help="a run folder")
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (127.0.0.1: this machine only; 0.0.0.0: every network, with a warning)",
    )
    serve.add_argument("--port", type=int, default=7860, help="(7860)")
    serve.add_argument("--top-k", type=int, default=5, help="classes shown per image (5)")
    serve.add_argument("--max-upload-mb", type=float, default=10, help="largest upload accepted, in MB (10)")
    serve.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N")
    serve.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="fp32", help="as for predict (fp32)")


def _add_running_arguments(p: argparse.ArgumentParser, data: bool) -> None:
    p.add_argument("--batch-size", type=int, default=64, help="(64)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="fp32",
        help="fp32 (default), bf16 autocast, or auto: bf16 where it makes this model's forward pass faster",
    )
    if data:
        p.add_argument("--workers", type=int, default=0, help="data-loading processes (0)")
        p.add_argument("--data-root", help="where torchvision sets are stored")
        p.add_argument("--no-download", dest="download", action="store_false", help="never download torchvision sets")
        same = "; by default the training run's own when --data names its data, else {}"
        for option in ("--val-fraction", "--test-fraction"):
            p.add_argument(option, type=float, help="as for train, with --split on a flat folder" + same.format(0.1))
        p.add_argument("--split-seed", type=int, help="as for train, with --split on a flat folder" + same.format(0))
