"""The ``vitrain`` command line: ``train``, ``eval``, ``predict``, ``export`` and ``models``."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Sequence

from . import __version__
from .config import ConfigError, TrainConfig, comma_list


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS  # only options given on the command line reach the config

    p.add_argument("--recipe", default=S, help="start from a named recipe (see `vitrain recipes`); flags still win")
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        default=S,
        help="digits (default), cifar10, cifar100, mnist, fashion-mnist, "
        "a folder of class folders, or a .zip/.tar of one",
    )
    g.add_argument(
        "--data-root",
        default=S,
        help="where torchvision sets are stored/downloaded (default ~/.cache/vitrain/datasets)",
    )
    g.add_argument(
        "--no-download",
        dest="download",
        action="store_false",
        default=S,
        help="never download torchvision sets; fail with a message saying where to put them",
    )
    g.add_argument("--classes", default=S, help="comma-separated subset of classes to train on, e.g. glioma,meningioma")
    g.add_argument(
        "--val-fraction", type=float, default=S, help="validation share where the data has no val split (0.1)"
    )
    g.add_argument("--test-fraction", type=float, default=S, help="test share of a flat folder (0.1)")
    g.add_argument("--split-seed", type=int, default=S, help="seed of those splits, independent of --seed (0)")
    g.add_argument(
        "--channels",
        type=int,
        choices=[1, 3],
        default=S,
        help="convert images to 1 or 3 channels (default: 1 if every image is grayscale)",
    )

    g.add_argument(
        "--skip-bad-images",
        action="store_true",
        default=S,
        help="decode every image before training and leave out the unreadable ones (counted in "
        "report.json) instead of stopping at the first",
    )
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=S,
        help="auto (default: picked from the image size), a preset (see `vitrain models`), or vit (explicit dims only)",
    )
    g.add_argument("--img-size", type=int, default=S, help="input size in pixels (images are resized)")
    g.add_argument(
        "--patch-size", type=int, default=S, help="patch size in pixels (the token grid is img-size / patch-size)"
    )
    g.add_argument("--embed-dim", type=int, default=S, help="token width")
    g.add_argument("--depth", type=int, default=S, help="number of encoder blocks")
    g.add_argument("--num-heads", type=int, default=S, help="attention heads per block")
    g.add_argument("--mlp-dim", type=int, default=S, help="hidden width of each block's MLP")
    g.add_argument(
        "--dropout",
        type=float,
        default=S,
        help="dropout rate of the attention weights, the projections, the MLP and the embeddings",
    )
    g.add_argument("--drop-path", type=float, default=S, help="stochastic depth rate of the last block")
    g.add_argument("--pool", choices=["cls", "avg"], default=S, help="class token or global average pooling")
    g.add_argument(
        "--stem",
        choices=["patch", "conv"],
        default=S,
        help="patch: one patchifying convolution (standard ViT); conv: stride-2 3x3 convolutions "
        "(better on small data and short budgets)",
    )

    g = p.add_argument_group("fine-tuning")
    g.add_argument(
        "--pretrained",
        default=S,
        metavar="SOURCE",
        help="start from pretrained ViT/DeiT weights: timm:NAME, torchvision:NAME, hf:ORG/NAME, a "
        ".safetensors/.pth/.bin file (timm, torchvision, Hugging Face or vitrain layout) or a run folder",
    )
    g.add_argument(
        "--freeze",
        default=S,
        help="none (default), backbone (train the head only), or N (train the last N blocks and the head)",
    )
    g.add_argument("--head", default=S, help="linear (default) or mlp:HIDDEN[:DROPOUT], e.g. mlp:512:0.3")
    g.add_argument(
        "--layer-decay",
        type=float,
        default=S,
        help="layer-wise learning-rate decay, e.g. 0.75: each block down from the head gets x0.75 (1: off)",
    )
    g.add_argument("--head-lr", type=float, default=S, help="learning rate of the head (default --lr)")
    g.add_argument(
        "--init",
        dest="pretrained",
        default=S,
        metavar="DIR",
        help="start from a `vitrain pretrain` folder (or any run): the same as --pretrained DIR",
    )

    g = p.add_argument_group("small-data pretraining (see `vitrain pretrain`)")
    g.add_argument(
        "--pretrain",
        choices=["instance-discrimination", "labels", "none"],
        default=S,
        help="a first stage before training, in the same run: instance-discrimination pretrains on the "
        "training images without labels; labels trains on the labels at --pretrain-img-size (a cheap "
        "small-input stage); the second stage fine-tunes that model at --img-size. none: skip that "
        "stage, e.g. to compare with --recipe small-data",
    )
    g.add_argument(
        "--pretrain-share", type=float, default=S, help="the first stage's share of --time-budget, or of --epochs (0.5)"
    )
    g.add_argument("--views", type=int, default=S, help="augmented views of each image per pretraining step (2)")
    g.add_argument(
        "--infonce",
        type=float,
        default=S,
        help="weight of an InfoNCE term between two views, with in-batch negatives (0: off)",
    )
    g.add_argument("--temperature", type=float, default=S, help="of the cosine instance classifier and InfoNCE (0.2)")
    g.add_argument(
        "--instance-smoothing", type=float, default=S, help="label smoothing of the instance targets (0: off)"
    )
    g.add_argument(
        "--instance-init",
        choices=["random", "features"],
        default=S,
        help="the instance classifier's starting weights: random, or features: each image's projection "
        "by the untrained backbone, so the first steps already discriminate (random)",
    )
    g.add_argument("--pretrain-crop-scale", default=S, help="MIN,MAX area of the pretraining crops (0.08,1)")
    g.add_argument(
        "--local-crops",
        type=int,
        default=S,
        metavar="N",
        help="multi-crop: N extra small crops of each image per pretraining step, at --local-crop-size, "
        "each labelled with its image (0: off)",
    )
    g.add_argument(
        "--local-crop-size",
        type=int,
        default=S,
        metavar="PX",
        help="input size of the local crops (default: half the pretraining input, a multiple of the patch)",
    )
    g.add_argument("--local-crop-scale", default=S, help="MIN,MAX area of the local crops (0.05,0.4)")
    g.add_argument(
        "--knn-every",
        type=int,
        default=S,
        metavar="N",
        help="every N pretraining epochs and after the last, report the validation split's "
        "20-nearest-neighbour accuracy on the backbone's features; labels are read for this report "
        "only (0: off, the default)",
    )
    g.add_argument(
        "--pretrain-mixup",
        type=float,
        default=S,
        help="MixUp alpha between instances in the first stage of --pretrain (0: off; `vitrain pretrain` uses --mixup)",
    )
    g.add_argument(
        "--pretrain-cutmix",
        type=float,
        default=S,
        help="CutMix alpha between instances in the first stage of --pretrain (0: off; `vitrain "
        "pretrain` uses --cutmix)",
    )
    g.add_argument(
        "--pretrain-img-size",
        type=int,
        default=S,
        metavar="PX",
        help="input size of the first stage of --pretrain, instance-discrimination or labels (default: "
        "--img-size); the second stage "
        "resamples the position embeddings to --img-size (`vitrain pretrain` uses --img-size)",
    )

    g = p.add_argument_group("augmentation and preprocessing")
    g.add_argument(
        "--augment",
        choices=["auto", "none", "flip-crop", "autoaugment", "randaugment", "trivialaugment"],
        default=S,
        help="training augmentation (auto: none for images of at most 16 px, else flip-crop)",
    )
    g.add_argument("--hflip", type=float, default=S, help="horizontal flip probability (0.5; 0 for digits)")
    g.add_argument(
        "--crop",
        choices=["auto", "resized", "pad"],
        default=S,
        help="the crop of flip-crop: random resized, or pad-and-crop (auto: pad for images of at most 64 px)",
    )
    g.add_argument("--crop-scale", default=S, help="MIN,MAX area of random resized crops (0.08,1)")
    g.add_argument("--crop-ratio", default=S, help="MIN,MAX aspect ratio of random resized crops (0.75,1.333)")
    g.add_argument(
        "--crop-pct",
        type=float,
        default=S,
        help="evaluation center-crop fraction (1.0; with --pretrained, the weights' own)",
    )
    g.add_argument("--random-erasing", type=float, default=S, help="random erasing probability (0)")
    g.add_argument("--mixup", type=float, default=S, help="MixUp alpha on training batches (0: off)")
    g.add_argument("--cutmix", type=float, default=S, help="CutMix alpha (0: off); with --mixup each batch uses one")
    g.add_argument(
        "--normalize",
        choices=["auto", "dataset", "imagenet", "none"],
        default=S,
        help="auto (default): the pretrained weights' statistics with --pretrained, else the dataset's; "
        "or dataset, imagenet, none",
    )
    g.add_argument("--mean", default=S, help="comma-separated per-channel mean (with --std)")
    g.add_argument("--std", default=S, help="comma-separated per-channel std (with --mean)")

    g = p.add_argument_group("optimization")
    g.add_argument("--epochs", type=int, default=S, help="(80)")
    g.add_argument("--batch-size", type=int, default=S, help="(32)")
    g.add_argument("--optimizer", choices=["adamw", "adam", "sgd"], default=S, help="(adamw)")
    g.add_argument("--lr", type=float, default=S, help="peak learning rate (1e-3)")
    g.add_argument("--weight-decay", type=float, default=S, help="applied to weights with ndim >= 2 only (0.05)")
    g.add_argument("--betas", default=S, help="AdamW betas (0.9,0.999)")
    g.add_argument("--eps", type=float, default=S, help="AdamW epsilon (1e-8)")
    g.add_argument("--momentum", type=float, default=S, help="SGD momentum (0.9)")
    g.add_argument("--nesterov", action="store_true", default=S, help="Nesterov momentum for SGD")
    g.add_argument("--schedule", choices=["cosine", "step", "multistep", "constant"], default=S, help="(cosine)")
    g.add_argument("--warmup-epochs", type=float, default=S, help="linear warmup length, any schedule (3)")
    g.add_argument("--min-lr", type=float, default=S, help="final learning rate of the cosine schedule (0)")
    g.add_argument("--step-size", type=float, default=S, help="epochs between decays of the step schedule (10)")
    g.add_argument("--gamma", type=float, default=S, help="decay factor of step/multistep (0.1)")
    g.add_argument("--milestones", default=S, help="multistep decay points as fractions of training (0.6,0.85)")
    g.add_argument("--label-smoothing", type=float, default=S, help="(0.1)")
    g.add_argument(
        "--class-weights",
        choices=["none", "balanced"],
        default=S,
        help="balanced: weight each class's loss by n / (classes x its training images), for imbalanced data (none)",
    )
    g.add_argument("--clip-grad", type=float, default=S, help="clip the gradient norm at this value (0: off)")
    g.add_argument(
        "--skip-nonfinite",
        type=int,
        default=S,
        metavar="N",
        help="skip up to N batches whose loss or gradient is NaN/Inf, then stop (0: stop at the first)",
    )
    g.add_argument(
        "--ema",
        type=float,
        default=S,
        help="keep an exponential moving average of the weights with this decay, e.g. 0.999; "
        "it is what is validated and checkpointed (0: off)",
    )
    g.add_argument(
        "--time-budget",
        type=float,
        default=S,
        metavar="MINUTES",
        help="fit the run into this wall-clock time: measure speed, plan the steps, scale the schedule",
    )

    g = p.add_argument_group("running")
    g.add_argument("--config", help="YAML file with any of these options (flags given here win)")
    g.add_argument("--out", default=S, help="run folder (default runs/DATA-TIMESTAMP)")
    g.add_argument("--resume", metavar="DIR", help="continue the run in DIR after its last completed epoch")
    g.add_argument("--overwrite", action="store_true", default=S, help="replace a run already in --out")
    g.add_argument("--seed", type=int, default=S, help="(0)")
    g.add_argument(
        "--dedupe",
        action="store_true",
        default=S,
        help="drop validation/test images identical to a training image (they are always counted)",
    )
    g.add_argument("--device", default=S, help="auto (default), cpu, cuda or cuda:N")
    g.add_argument("--workers", type=int, default=S, help="data-loading processes (auto)")
    g.add_argument(
        "--compile",
        choices=["auto", "on", "off"],
        default=S,
        help="torch.compile the model for training (auto: on for CUDA, with CUDA graphs on one GPU; off on "
        "CPU, where it was measured not to pay); the first steps are slower while it compiles",
    )
    g.add_argument(
        "--in-memory",
        choices=["auto", "on", "off"],
        default=S,
        help="decode every image once and augment whole batches in memory (auto: when the decoded images fit in 2 GiB)",
    )
    g.add_argument(
        "--best-metric",
        choices=["accuracy", "balanced-accuracy", "loss"],
        default=S,
        help="which validation metric picks best.safetensors (accuracy); balanced-accuracy: the "
        "mean of the per-class recalls, for imbalanced data",
    )
    g.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=S,
        help="no progress bars (one line per epoch only)",
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
    _add_train_arguments(train)
    pre = sub.add_parser(
        "pretrain",
        help="pretrain a ViT on images without their labels (small data)",
        description="Instance-discrimination pretraining: every training image is its own class. "
        "Writes backbone.safetensors for `vitrain train --init DIR`.",
    )
    _add_train_arguments(pre)
    pre.add_argument(
        "--method",
        dest="pretrain",
        choices=["instance-discrimination"],
        default=argparse.SUPPRESS,
        help="the pretraining method (instance-discrimination)",
    )
    sub.add_parser("models", help="list the named model sizes")
    sub.add_parser("recipes", help="list the training recipes, what each reaches, and the command")
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
        help="export a checkpoint to ONNX or TorchScript",
        description="Dynamic batch dimension, preprocessing in the metadata, parity checked.",
    )
    ex.add_argument("checkpoint", help="a .safetensors checkpoint or a run folder (its best.safetensors)")
    ex.add_argument("--format", choices=["onnx", "torchscript"], required=True, help="the file format to write")
    ex.add_argument("--out", help="output file (default beside the checkpoint)")
    return parser


def _add_running_arguments(p: argparse.ArgumentParser, data: bool) -> None:
    p.add_argument("--batch-size", type=int, default=64, help="(64)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    if data:
        p.add_argument("--workers", type=int, default=0, help="data-loading processes (0)")
        p.add_argument("--data-root", help="where torchvision sets are stored")
        p.add_argument("--no-download", dest="download", action="store_false", help="never download torchvision sets")
        same = "; by default the training run's own when --data names its data, else {}"
        for option in ("--val-fraction", "--test-fraction"):
            p.add_argument(option, type=float, help="as for train, with --split on a flat folder" + same.format(0.1))
        p.add_argument("--split-seed", type=int, help="as for train, with --split on a flat folder" + same.format(0))


def _given(args: argparse.Namespace) -> dict:
    """The options given on the command line (the parser leaves out those that were not), by field name."""
    return {k: v for k, v in vars(args).items() if k not in ("command", "config", "resume")}


def train_config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, bool]:
    """Merge defaults < recipe < --config file < flags (or the resumed run's saved config); returns (config, resume)."""
    from .engine.launch import resolve_config

    return resolve_config(_given(args), config_file=args.config, resume=args.resume, command=args.command)


def _models_table() -> str:
    import torch

    from .models.registry import PRESETS, resolve_config
    from .models.vit import VisionTransformer

    lines = [
        f"{'name':<12} {'params':>8}  {'input':>6}  {'patch':>5}  {'dim':>4}  {'depth':>5}  {'heads':>5}  description"
    ]
    for name, (_, description) in PRESETS.items():
        cfg = resolve_config(name, num_classes=10)
        with torch.device("meta"):  # counts parameters without allocating or initializing them
            params = sum(p.numel() for p in VisionTransformer(cfg).parameters())
        lines.append(
            f"{name:<12} {params / 1e6:>7.2f}M  {cfg.img_size:>4}px  {cfg.patch_size:>5}  {cfg.embed_dim:>4}  "
            f"{cfg.depth:>5}  {cfg.num_heads:>5}  {description}"
        )
    lines.append("vit          explicit dims only: --img-size --patch-size --embed-dim --depth --num-heads --mlp-dim")
    lines.append("(parameter counts with a 10-class head)")
    return "\n".join(lines)


def _run_tool(args: argparse.Namespace) -> int:
    """eval, predict, export (everything after training, from a checkpoint alone) and bench."""
    if args.command == "bench":
        return _bench(args)
    if args.command == "export":
        from .engine.export import export_model

        export_model(args.checkpoint, args.format, args.out)
        return 0
    from . import api

    if args.command == "eval":
        api.evaluate(
            args.checkpoint,
            args.data,
            split=args.split,
            out=args.out,
            batch_size=args.batch_size,
            workers=args.workers,
            device=args.device,
            data_root=args.data_root,
            download=args.download,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            split_seed=args.split_seed,
            classes=args.classes,
        )
        return 0
    result = api.predict(
        args.checkpoint,
        args.inputs,
        top_k=args.top_k,
        batch_size=args.batch_size,
        device=args.device,
        out=args.out,
        annotate=args.annotate,
        attention=args.attention,
    )
    return _print_predictions(args, result)


def _print_predictions(args: argparse.Namespace, result) -> int:
    """The table, the summary and the notes of ``vitrain predict``; 1 when some inputs failed."""
    from .engine.predict import in_training_data

    out = Path(args.out)
    width = min(max((len(str(p.path)) for p in result.predictions), default=4), 60)
    print(f"{'image':<{width}}  {'prediction':<20} {'prob':>6}  true")
    for p in result.predictions:
        shown = str(p.path) if len(str(p.path)) <= width else "..." + str(p.path)[-(width - 3) :]
        mark = "" if p.correct is None else f"{p.true_label} ({'right' if p.correct else 'wrong'})"
        print(f"{shown:<{width}}  {p.label:<20} {p.probability:>6.1%}  {mark}")
    accuracy = result.accuracy()
    judged = sum(p.correct is not None for p in result.predictions)
    summary = f"{len(result.predictions)} image(s) classified"
    if accuracy is not None:
        summary += f"; {judged} in folders named like a class: accuracy {accuracy:.4f}"
    print(summary + f"; results in {out / 'predictions.csv'}")
    seen = in_training_data([p.path for p in result.predictions if p.correct is not None], result.meta)
    if seen:
        print(
            f"note: {seen[1]} of them lie in {seen[0]}, the data this checkpoint was trained on, outside any "
            "test or validation folder: it may have trained on them, so this is not a held-out accuracy "
            f"(vitrain eval {args.checkpoint} scores the run's test split)"
        )
    for item, reason in result.failed:
        print(f"vitrain: skipped {item}: {reason}", file=sys.stderr)
    if result.failed:
        print(f"vitrain: {len(result.failed)} input(s) failed", file=sys.stderr)
        return 1
    return 0


def _bench(args: argparse.Namespace) -> int:
    import json

    from .engine.bench import CONFIGS, run_benchmark
    from .engine.device import resolve_device

    names = [c.name for c in CONFIGS]
    wanted = names if args.configs == "all" else args.configs.split(",")
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise ConfigError(f"--configs: unknown {', '.join(unknown)}; choose from {', '.join(names)}")
    if args.repeats < 1 or args.steps < 1:
        raise ConfigError("--repeats and --steps must be at least 1")
    try:
        import timm  # noqa: F401
    except ImportError:
        raise ConfigError("vitrain bench compares against timm: pip install timm") from None
    result = run_benchmark(
        tuple(c for c in CONFIGS if c.name in wanted),
        args.repeats,
        args.steps,
        resolve_device(args.device),
        log=(lambda *a: None) if args.json else print,
        compiled=args.compile,
    )
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


def _raise_keyboard_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


def _worker_message(err: Exception) -> str:
    """The error's own message, also when a DataLoader worker raised it.

    DataLoader re-raises a worker's exception as the same type with the worker's whole
    traceback as its message; its last line is ``module.Type: original message``.
    """
    text = str(err)
    if "Original Traceback" not in text:
        return text
    last = text.strip().splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vitrain`` console script and ``python -m vitrain``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "models":
        print(_models_table())
        return 0
    if args.command == "recipes":
        from .recipes import recipes

        for recipe in recipes().values():
            print(f"{recipe.name}\n  {recipe.summary}\n  reference: {recipe.reference}\n  run: {recipe.command}\n")
        return 0

    from .checkpoint import CheckpointError
    from .data.archive import ArchiveError
    from .data.images import ImageReadError
    from .data.sources import SKIP_BAD_IMAGES_HINT, DataError
    from .engine.export import ExportError

    if args.command not in ("train", "pretrain"):
        try:
            return _run_tool(args)
        except (ConfigError, DataError, ArchiveError, ImageReadError, CheckpointError, ExportError, ValueError) as err:
            print(f"vitrain: error: {err}", file=sys.stderr)
            return 2
        except OSError as err:  # an output that cannot be written: disk full, permissions
            print(f"vitrain: error: {err}", file=sys.stderr)
            return 1

    from .engine.launch import launch
    from .engine.train import TrainingError

    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)  # stop like Ctrl-C: the last epoch is saved
    out = None
    try:
        cfg, resume = train_config_from_args(args)
        out = cfg.out
        launch(args.command, cfg, resume, _given(args))
    except ImageReadError as err:  # a file that passed the header check but does not decode, mid-epoch
        message = _worker_message(err)
        if SKIP_BAD_IMAGES_HINT not in message:
            message += f" ({SKIP_BAD_IMAGES_HINT})"
        print(f"vitrain: error: {message}", file=sys.stderr)
        return 2
    except (ConfigError, DataError, ArchiveError, CheckpointError) as err:
        print(f"vitrain: error: {err}", file=sys.stderr)
        return 2
    except TrainingError as err:
        print(f"vitrain: training stopped: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # disk full, permissions: the files of the last completed epoch are intact
        where = f"; continue with: vitrain {args.command} --resume {out}" if out else ""
        print(f"vitrain: error: {err}. Files already written are intact{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        where = f" --resume {out}" if out else " --resume RUN_FOLDER"
        print(
            f"\nvitrain: interrupted; every completed epoch is saved. Continue with: vitrain {args.command}{where}",
            file=sys.stderr,
        )
        return 130
    finally:
        from .engine.distributed import shutdown

        shutdown()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
