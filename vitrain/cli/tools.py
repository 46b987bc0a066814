"""The commands that work from a checkpoint or list things: eval, predict, export, card, push, serve, bench,
models, recipes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import ConfigError


def models_table() -> str:
    """``vitrain models``: every named size with its parameter count and dimensions."""
    import torch

    from ..models.registry import PRESETS, resolve_config
    from ..models.vit import VisionTransformer

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


def run_tool(args: argparse.Namespace) -> int:
    """eval, predict, export, card, push, serve (everything after training, from a run or checkpoint) and bench."""
    if args.command == "bench":
        return _bench(args)
    if args.command == "export":
        from ..engine.export import export_model

        export_model(args.checkpoint, args.format, args.out, license=args.license)
        return 0
    if args.command == "card":
        from ..engine.card import model_card, read_run, write_card

        folder, _ = read_run(args.run)
        fmt = None if args.format == "vitrain" else args.format
        written = write_card(
            Path(args.out) if args.out else folder / "README.md", model_card(folder, fmt, args.license)
        )
        print(f"model card: {written}")
        return 0
    if args.command == "push":
        from ..engine.push import push_run

        push_run(args.run, args.repo, fmt=args.format, license=args.license, private=args.private)
        return 0
    if args.command == "serve":
        return _serve(args)
    if args.command == "shards":
        return _shards(args)
    if args.command == "inspect":
        from ..engine.inspect import inspect_data

        name = Path(args.data.rstrip("/")).name.split(".")[0] or "data"
        inspect_data(
            args.data,
            Path(args.out) if args.out else Path("runs") / f"inspect-{name}",
            data_root=args.data_root,
            download=args.download,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            split_seed=args.split_seed,
            near_distance=args.near_bits,
            labels=args.labels,
            progress=args.progress,
        )
        return 0
    from .. import api

    if args.command == "eval":
        api.evaluate(
            args.checkpoint,
            args.data,
            split=args.split,
            out=args.out,
            batch_size=args.batch_size,
            workers=args.workers,
            device=args.device,
            precision=args.precision,
            tta=args.tta,
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
        precision=args.precision,
        out=args.out,
        annotate=args.annotate,
        attention=args.attention,
    )
    return _print_predictions(args, result)


def _print_predictions(args: argparse.Namespace, result) -> int:
    """The table, the summary and the notes of ``vitrain predict``; 1 when some inputs failed."""
    from ..engine.predict import in_training_data

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


def _serve(args: argparse.Namespace) -> int:
    """``vitrain serve``: the web app, until Ctrl-C."""
    from ..checkpoint import resolve_checkpoint_path
    from ..engine.device import resolve_device

    run = Path(args.run).expanduser()
    if run.is_file():
        raise ConfigError(f"{run}: vitrain serve takes a run folder (the one holding it: {run.parent})")
    if run.is_dir() and (run / "backbone.safetensors").is_file() and not (run / "last.safetensors").is_file():
        raise ConfigError(f"{run} is a pretraining run (vitrain pretrain): train a classifier from it with --init")
    resolve_checkpoint_path(run)  # a clear error before the web framework loads
    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port must be between 1 and 65535, got {args.port}")
    if args.top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {args.top_k}")
    if args.max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb must be positive, got {args.max_upload_mb:g}")
    try:
        from ..serve.app import serve
    except ImportError as err:
        raise ConfigError(f"vitrain serve needs Gradio ({err.name} is missing): pip install 'vitrain[serve]'") from None
    serve(
        run,
        host=args.host,
        port=args.port,
        top_k=args.top_k,
        max_upload_mb=args.max_upload_mb,
        device=resolve_device(args.device),
        precision=args.precision,
    )
    return 0


def _bench(args: argparse.Namespace) -> int:
    """``vitrain bench``: time vitrain's ViT against timm's and torchvision's."""
    import json

    from ..engine.bench import CONFIGS, run_benchmark
    from ..engine.device import resolve_device

    names = [c.name for c in CONFIGS]
    wanted = names if args.configs == "all" else args.configs.split(",")
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise ConfigError(f"--configs: unknown {', '.join(unknown)}; choose from {', '.join(names)}")
    if args.repeats < 1 or args.steps < 1:
        raise ConfigError("--repeats and --steps must be at least 1")
    precisions = tuple(p for p in args.precision.split(",") if p)
    if not precisions or any(p not in ("fp32", "bf16") for p in precisions):
        raise ConfigError(f"--precision: a comma-separated list of fp32 and bf16 (got {args.precision})")
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
        precisions=precisions,
    )
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


def recipes_list() -> str:
    """``vitrain recipes``: each recipe with what it reaches and its command."""
    from ..recipes import recipes

    listed = "\n".join(
        f"{r.name}\n  {r.summary}\n  reference: {r.reference}\n  run: {r.command}\n" for r in recipes().values()
    )
    return (
        listed + "\nauto (the default when no recipe and no model option is named)\n  cifar10-best for images of "
        "17 to 48 px, folder-best for larger ones, vitrain's defaults for smaller ones (digits); the batch size "
        "halved for small datasets; the log says which and why\n"
    )


def _shards(args: argparse.Namespace) -> int:
    """``vitrain shards``: a folder's splits as WebDataset shards."""
    from ..data.shards import write_shards
    from ..data.sources import load_data

    out = Path(args.out)
    if args.shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1 (got {args.shard_size})")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out}: already holds files; shards go into a new or empty folder")
    splits = load_data(
        args.data, val_fraction=args.val_fraction, test_fraction=args.test_fraction, split_seed=args.split_seed
    )
    if not hasattr(splits.train, "paths"):
        raise ValueError(f"vitrain shards {args.data}: reads a folder of class folders or an archive of one")
    for note in splits.notes:
        print(f"note: {note}")
    parts = {"train": splits.train, "val": splits.val, "test": splits.test}
    write_shards(parts, splits.classes, out, args.shard_size)
    print(f"wrote {out}; train with: vitrain train --data {out}")
    return 0
