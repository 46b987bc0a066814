"""A run's model card: README.md in the Hugging Face Hub's form (a YAML header, then Markdown).

Everything in it comes from the run folder: ``report.json`` (data, splits, scores, per-class
results, the leak check, the command) and the checkpoint's metadata (architecture,
preprocessing). The report's warnings become the card's limitations.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..checkpoint import load_model, resolve_checkpoint_path
from ..models.vit import VisionTransformer
from .evaluate import is_imbalanced

MARK = "<!-- model card written by vitrain card; vitrain replaces this file when it writes the card again -->"
LIBRARIES = {"hf": "transformers", "timm": "timm", None: "vitrain"}
# the Hub's dataset repositories of the built-in torchvision sets
HUB_DATASETS = {
    "cifar10": "uoft-cs/cifar10",
    "cifar100": "uoft-cs/cifar100",
    "mnist": "ylecun/mnist",
    "fashion-mnist": "zalando-datasets/fashion_mnist",
}


class CardError(ValueError):
    """The run folder lacks what a model card is written from."""


def read_run(run: str | Path) -> tuple[Path, dict[str, Any]]:
    """(run folder, its report.json) for a run folder or a checkpoint inside one."""
    path = Path(run).expanduser()
    if not path.exists():
        raise CardError(f"{path}: no such run folder")
    folder = path if path.is_dir() else path.parent
    report = folder / "report.json"
    if not report.is_file():
        kind = "a pretraining run" if (folder / "backbone.safetensors").is_file() else "not a finished training run"
        raise CardError(f"{folder}: no report.json ({kind}; a model card describes a finished training run)")
    try:
        return folder, json.loads(report.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CardError(f"{report}: not valid JSON ({err})") from None


def interval(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95%) of an accuracy measured on ``n`` images."""
    if n <= 0:
        return (0.0, 1.0)
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def per_class_rows(report: dict[str, Any]) -> list[tuple[str, int, float | None, float | None]]:
    """(class, test images, recall, precision) per class, from the test confusion matrix."""
    classes = report["classes"]
    matrix = np.asarray(report["test"]["confusion_matrix"])
    support, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    rows = []
    for i, name in enumerate(classes):
        recall = matrix[i, i] / support[i] if support[i] else None
        precision = matrix[i, i] / predicted[i] if predicted[i] else None
        rows.append((name, int(support[i]), recall, precision))
    return rows


def limitations(report: dict[str, Any]) -> list[str]:
    """The report's warnings, in words for a reader of the card."""
    test, found = report["test"], []
    found.append(
        f"It knows only these {len(report['classes'])} classes and gives every image one of them; it has no "
        "'none of these' answer."
    )
    if test.get("split") != "test":
        found.append(
            "There was no test split: the scores are on the validation split, which also chose the best epoch, "
            "so they are optimistic."
        )
    low, high = interval(test["accuracy"], test["images"])
    found.append(
        f"The {test.get('split', 'test')} accuracy was measured on {test['images']:,} images; its 95% confidence "
        f"interval is {low:.1%} to {high:.1%}."
    )
    leakage = report.get("leakage") or {}
    for split in ("val", "test"):
        leak = leakage.get(split) or {}
        count = leak.get("identical_to_train", 0)
        if count:
            what = (
                "removed before scoring (--dedupe)"
                if leakage.get("dedupe") not in (None, False, "off")
                else "kept, so the score is inflated"
            )
            found.append(f"{count} of the {split} images were byte-identical to training images: {what}.")
    support = np.asarray(test["confusion_matrix"]).sum(axis=1)
    if len(support) and is_imbalanced(support):
        found.append(
            f"The classes are imbalanced ({support.max()} test images in the largest class, {support.min()} in the "
            f"smallest): accuracy favours the large classes; the balanced accuracy is "
            f"{test.get('balanced_accuracy', float('nan')):.4f}."
        )
    skipped = report.get("skipped_images", {}).get("count")
    if skipped:
        found.append(f"{skipped} unreadable images were left out of the data.")
    if report.get("skipped_batches"):
        found.append(f"{report['skipped_batches']} training batches with a non-finite loss were skipped.")
    for note in report.get("notes", []):
        if note.startswith(("imbalanced", "all ")):
            found.append(note[0].upper() + note[1:] + ".")
    return found


def _header(report: dict[str, Any], name: str, fmt: str | None, license: str | None) -> str:
    test = report["test"]
    data = str(report.get("data", ""))
    dataset = {"name": Path(data).name or data, "type": HUB_DATASETS.get(data, Path(data).stem or data)}
    dataset["split"] = test.get("split", "test")
    metrics = [{"type": "accuracy", "value": round(test["accuracy"], 4), "name": f"{dataset['split']} accuracy"}]
    if test.get("top5") is not None:
        metrics.append({"type": "top_5_accuracy", "value": round(test["top5"], 4), "name": "top-5 accuracy"})
    header: dict[str, Any] = {"library_name": LIBRARIES[fmt], "pipeline_tag": "image-classification"}
    if license:
        header["license"] = license
    header["tags"] = ["vitrain", "vision-transformer", "image-classification"] + (["timm"] if fmt == "timm" else [])
    if data in HUB_DATASETS:
        header["datasets"] = [HUB_DATASETS[data]]
    header["metrics"] = ["accuracy"]
    header["model-index"] = [
        {
            "name": name,
            "results": [
                {
                    "task": {"type": "image-classification", "name": "Image Classification"},
                    "dataset": dataset,
                    "metrics": metrics,
                }
            ],
        }
    ]
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n"


def _cell(text: str) -> str:
    """Text for a Markdown table cell (a class name may hold a ``|``)."""
    return str(text).replace("|", "\\|")


def _usage(fmt: str | None, repo: str | None, name: str, channels: int = 3) -> str:
    where = repo or f"path/to/{name}"
    if fmt == "hf":
        return (
            "```python\nfrom transformers import pipeline\n\n"
            f'classify = pipeline("image-classification", model="{where}")\n'
            'print(classify("image.jpg"))\n```\n'
        )
    if fmt == "timm":
        source = f"hf-hub:{repo}" if repo else f"local-dir:{where}"
        return (
            "```python\nimport timm\nfrom timm.data import create_transform, resolve_data_config\n\n"
            f'model = timm.create_model("{source}", pretrained=True).eval()\n'
            "transform = create_transform(**resolve_data_config({}, model=model))\n"
            'labels = model.pretrained_cfg["label_names"]\n'
            + ('# a grayscale model: open images with PIL.Image.open(path).convert("L")\n' if channels == 1 else "")
            + "```\n"
        )
    return f"```bash\nvitrain predict {where} image.jpg\nvitrain eval {where} --data FOLDER\n```\n"


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def model_card(
    run: str | Path,
    fmt: str | None = None,
    license: str | None = None,
    repo: str | None = None,
    model: VisionTransformer | None = None,
) -> str:
    """The model card of ``run`` (a run folder) as Markdown with the Hub's YAML header.

    ``fmt`` is the export it describes (``hf``, ``timm``, or None for vitrain's own checkpoint);
    ``repo`` (``USER/NAME``) names it in the usage example. ``model`` is the run's model when
    the caller has loaded it already (else it is loaded from the run folder).
    """
    folder, report = read_run(run)
    model = model if model is not None else load_model(resolve_checkpoint_path(folder))
    cfg, meta, test = model.config, model.meta, report["test"]
    name = repo.split("/")[-1] if repo else folder.resolve().name
    params = report.get("model", {}).get("parameters") or sum(p.numel() for p in model.parameters())
    lines = [_header(report, name, fmt, license), f"# {name}", ""]
    lines.append(
        f"A Vision Transformer that sorts {cfg.img_size}x{cfg.img_size} "
        f"{'grayscale' if cfg.in_chans == 1 else 'RGB'} images into {len(report['classes'])} classes "
        f"({', '.join(report['classes'][:12])}{', ...' if len(report['classes']) > 12 else ''}), trained with "
        f"vitrain on `{report['data']}`."
    )
    lines += ["", f"**{test.get('split', 'test')} accuracy: {test['accuracy']:.4f}**"]
    extra = [f"balanced accuracy {test['balanced_accuracy']:.4f}"] if test.get("balanced_accuracy") else []
    extra += [f"top-5 {test['top5']:.4f}"] if test.get("top5") is not None else []
    extra += [f"validation accuracy {report['val']['accuracy']:.4f} at the best epoch ({report['best_epoch']})"]
    lines += [f"({'; '.join(extra)}).", "", "## How to use", "", _usage(fmt, repo, name, cfg.in_chans)]
    crop = meta.get("crop_pct", 1.0)
    lines += [
        "Preprocessing: resize the shorter side to "
        f"{int(round(cfg.img_size / crop))} px (bilinear), center-crop {cfg.img_size}x{cfg.img_size}, scale to "
        f"[0, 1], normalize with mean {meta['mean']} and std {meta['std']}.",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| parameters | {params:,} |",
        f"| input | {cfg.in_chans} x {cfg.img_size} x {cfg.img_size}, patches of {cfg.patch_size} px |",
        f"| encoder | {cfg.depth} blocks, width {cfg.embed_dim}, {cfg.num_heads} heads, MLP {cfg.mlp_dim} |",
        f"| pooling | {'class token' if cfg.pool == 'cls' else 'mean of the patch tokens'} |",
        "",
        "## Data",
        "",
        f"`{report['data']}`, {len(report['classes'])} classes.",
        "",
        "| split | images |",
        "|---|---|",
    ]
    lines += [f"| {split} | {count:,} |" for split, count in report.get("splits", {}).items()]
    lines += [""] + [f"- {note}" for note in report.get("notes", [])]
    lines += ["", "## Results per class", "", f"On the {test.get('split', 'test')} split.", ""]
    lines += ["| class | images | recall | precision |", "|---|---|---|---|"]
    for cls, support, recall, precision in per_class_rows(report):
        lines.append(f"| {_cell(cls)} | {support} | {_rate(recall)} | {_rate(precision)} |")
    leakage = report.get("leakage") or {}
    lines += ["", "## Leak check", ""]
    if leakage:
        for split in ("val", "test"):
            leak = leakage.get(split)
            if leak:
                lines.append(
                    f"- {split}: {leak.get('identical_to_train', 0)} of {leak.get('images', 0)} images are "
                    "byte-identical to a training image"
                    + (f" ({leak['removed']} removed)" if leak.get("removed") else "")
                )
        lines.append("- Copies that were resized or re-encoded are not detected by this check.")
    else:
        lines.append("This run's report holds no leak check.")
    lines += ["", "## Training", ""]
    if report.get("command"):
        lines += [
            "The command that ran it (the last one, for a resumed run):",
            "",
            f"```bash\n{report['command']}\n```",
            "",
        ]
    lines += [
        "Every setting is in `config.yaml` of the run folder; "
        "`vitrain train --config config.yaml --out NEW_FOLDER` repeats it.",
        "",
    ]
    facts = [
        f"{report.get('epochs', '?')} epochs, best epoch {report['best_epoch']}",
        f"{report.get('train_seconds', 0):.0f} s of training on {report.get('device', '?')}",
        f"seed {report.get('seed', '?')}",
    ]
    precision = (report.get("precision") or {}).get("compute")
    if precision:
        facts.append(f"precision {precision}")
    recipe = (report.get("recipe") or {}).get("name")
    if recipe:
        facts.append(f"recipe {recipe}")
    lines += ["- " + "; ".join(facts), "", "## Limitations", ""]
    lines += [f"- {item}" for item in limitations(report)]
    lines += ["", MARK, ""]
    return "\n".join(lines)


def is_vitrain_card(path: Path) -> bool:
    """Whether the file at ``path`` is a model card that vitrain wrote (it ends with :data:`MARK`)."""
    try:
        return MARK in path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def write_card(path: Path, text: str) -> Path:
    """Write the card, refusing to replace a README.md that vitrain did not write."""
    if path.is_dir():
        path = path / "README.md"
    if path.exists() and not is_vitrain_card(path):
        raise CardError(f"{path} exists and was not written by vitrain card; give another --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
