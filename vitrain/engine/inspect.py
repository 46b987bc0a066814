"""``vitrain inspect DATA``: know the data before training on it.

Loads ``--data`` as training would (the same splits), reads every image once
(:func:`vitrain.data.inspection.scan`), and writes ``inspect.json`` and ``inspect.html`` (one
self-contained page: thumbnails inline) into ``--out``: images and classes per split,
modes, bit depths, sizes, unreadable files, exact and near duplicates within and across
splits, side by side, whether an evaluation split looks shifted from training, the
intensity histograms and a contact sheet of a few images per class and split.
"""

from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..data.inspection import (
    FEATURES,
    NEAR_DISTANCE,
    SplitFacts,
    exact_duplicates,
    near_duplicates,
    scan,
    split_shift,
    summary,
    thumbnails,
)
from ..data.sources import load_data

SHOWN_PAIRS = 24  # duplicate pairs shown side by side per kind (all are counted, and listed in the JSON)
PER_CLASS = 4  # contact sheet: images per class and split
MIN_HASHED_SIDE = 16  # smaller images are not searched for near-duplicates


def inspect_data(
    data: str,
    out: Path,
    *,
    data_root: str | None = None,
    download: bool = True,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    near_distance: int = NEAR_DISTANCE,
    labels: str | None = None,
    progress: bool = True,
    log=print,
) -> dict[str, Any]:
    """Inspect ``data`` (see the module docstring); returns what ``inspect.json`` holds."""
    started = time.perf_counter()
    splits = load_data(
        data,
        data_root=data_root,
        download=download,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        split_seed=split_seed,
        skip_bad_images="headers",
    )
    datasets = {k: v for k, v in (("train", splits.train), ("val", splits.val), ("test", splits.test)) if v is not None}
    total = sum(len(d) for d in datasets.values())
    bar = tqdm(total=total, desc="reading", disable=not progress, dynamic_ncols=True, leave=False)
    facts = {name: scan(d, name, splits.channels, bar.update) for name, d in datasets.items()}
    bar.close()
    root = Path(splits.name)
    for f in facts.values():  # files by their path below the data folder
        f.names = [_below(name, root) for name in f.names]
    read_seconds = time.perf_counter() - started
    for path, reason in splits.skipped.items():
        facts["train"].unreadable.append((str(path), reason))  # unreadable headers: left out as the split was made
    pairs_started = time.perf_counter()
    exact = exact_duplicates(list(facts.values()))
    notes = [n for n in splits.notes if not n.startswith("skipped ")]  # the unreadable files are listed below
    if splits.native_size < MIN_HASHED_SIDE:
        near = []
        notes.append(
            f"near duplicates not searched: images of {splits.native_size} px are too small for perceptual "
            "hashes to tell copies from look-alikes"
        )
    else:
        near = near_duplicates(list(facts.values()), near_distance)
    pairs_seconds = time.perf_counter() - pairs_started
    enough = len(facts["train"]) >= 4  # random parts of training to compare with
    shift = {n: split_shift(facts["train"], f) for n, f in facts.items() if n != "train" and len(f) > 1 and enough}
    found = {
        "data": data,
        "classes": list(splits.classes),
        "channels": splits.channels,
        "notes": notes,
        "splits": {name: summary(f, splits.classes) for name, f in facts.items()},
        "unreadable": [{"file": n, "reason": r} for f in facts.values() for n, r in f.unreadable],
        "exact_duplicates": _duplicates_summary(exact, facts),
        "near_duplicates": _near_summary(near, facts, near_distance),
        "split_shift": shift,
        "seconds": round(time.perf_counter() - started, 1),
        "read_seconds": round(read_seconds, 1),  # loading the data and reading every image once
        "images_per_second": round(total / max(read_seconds, 1e-9), 1),
        "duplicate_search_seconds": round(pairs_seconds, 1),  # exact copies, and near ones: every pair compared
    }
    if labels:
        found["label_candidates"] = label_candidates(labels, datasets, facts, list(splits.classes))
    out.mkdir(parents=True, exist_ok=True)
    (out / "inspect.json").write_text(json.dumps(found, indent=2) + "\n", encoding="utf-8")
    page = render_page(found, facts, datasets, exact, near, splits.classes)
    (out / "inspect.html").write_text(page, encoding="utf-8")
    for line in terminal_summary(found):
        log(line)
    log(f"wrote {out / 'inspect.json'} and {out / 'inspect.html'}")
    return found


def label_candidates(run: str, datasets: dict[str, Any], facts: dict[str, SplitFacts], classes: list[str]) -> dict:
    """Images whose given label disagrees most with the run's predicted probabilities, as candidates to review.

    Only the run's held-out splits (validation and test) are scored: their predictions are out of sample,
    while the training images were seen by the model. cleanlab's confident learning picks the candidates
    (``find_label_issues``, ranked by the probability given to the label), never the truth.
    """
    import torch
    from torch.utils.data import DataLoader

    try:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError:
        raise ValueError("vitrain inspect --labels needs cleanlab: pip install 'vitrain[inspect]'") from None

    from ..checkpoint import load_model
    from ..data.transforms import TransformedDataset, eval_transform_for
    from .predict import checkpoint_bit_depth

    model = load_model(run)
    if list(model.meta["classes"]) != list(classes):
        raise ValueError(f"--labels {run}: the run was trained on other classes than the data has")
    rows, probabilities = [], []
    for split in ("val", "test"):
        dataset = datasets.get(split)
        if dataset is None or hasattr(dataset, "shards"):
            continue
        if hasattr(dataset, "bit_depth"):
            dataset.bit_depth = checkpoint_bit_depth(model.meta)
        images = TransformedDataset(dataset, eval_transform_for(model.meta, model.config.img_size))
        with torch.inference_mode():
            for batch, _ in DataLoader(images, batch_size=64):
                probabilities.append(torch.softmax(model(batch).float(), dim=1).numpy())
        rows += [(split, i) for i in range(len(dataset))]
    if not rows:
        raise ValueError(f"--labels {run}: the data has no validation or test images (files or in memory) to score")
    probs = np.concatenate(probabilities)
    given = np.asarray([datasets[s].targets[i] for s, i in rows])
    issues = set(np.flatnonzero(find_label_issues(given, probs)).tolist())  # confident learning's flags
    ranked = np.argsort(get_label_quality_scores(given, probs, method="self_confidence"), kind="stable")
    position = {(s, index): k for s, f in facts.items() for k, index in enumerate(f.indices)}
    candidates = []
    for r in ranked[: max(len(issues), 20)]:
        split, index = rows[r]
        candidates.append(
            {
                "split": split,
                "index": int(index),
                "name": facts[split].names[position[(split, index)]] if (split, index) in position else str(index),
                "given": classes[int(given[r])],
                "predicted": classes[int(probs[r].argmax())],
                "probability_of_given": round(float(probs[r, given[r]]), 4),
                "label_issue": int(r) in issues,
            }
        )
    return {
        "run": run,
        "scored": "the run's held-out splits (validation and test)",
        "images": len(rows),
        "label_issues": len(issues),
        "candidates": candidates,
    }


def _below(name: str, root: Path) -> str:
    try:
        return str(Path(name).relative_to(root)) if root.is_dir() else name
    except ValueError:
        return name


def _kind(a: str, b: str) -> str:
    return f"within {a}" if a == b else f"across {'/'.join(sorted((a, b), key=['train', 'val', 'test'].index))}"


def _duplicates_summary(groups: list[list[tuple[str, int]]], facts: dict[str, SplitFacts]) -> dict[str, Any]:
    kinds: dict[str, int] = {}
    for group in groups:
        for i, (a, _) in enumerate(group):
            for b, _ in group[i + 1 :]:
                kinds[_kind(a, b)] = kinds.get(_kind(a, b), 0) + 1
    listed = [[facts[s].names[i] for s, i in group] for group in groups[:200]]
    return {"groups": len(groups), "pairs": kinds, "examples": listed}


def _near_summary(pairs, facts: dict[str, SplitFacts], distance: int) -> dict[str, Any]:
    kinds: dict[str, int] = {}
    for (a, _), (b, _), _ in pairs:
        kinds[_kind(a, b)] = kinds.get(_kind(a, b), 0) + 1
    listed = [{"a": facts[a].names[i], "b": facts[b].names[j], "bits": d} for (a, i), (b, j), d in pairs[:200]]
    by_bits: dict[str, int] = {}
    for _, _, d in pairs:
        by_bits[str(d)] = by_bits.get(str(d), 0) + 1
    return {"max_bits": distance, "pairs": len(pairs), "by_kind": kinds, "by_bits": by_bits, "examples": listed}


def terminal_summary(found: dict[str, Any]) -> list[str]:
    """The lines ``vitrain inspect`` prints."""
    lines = [f"data: {found['data']}  {len(found['classes'])} classes, {found['channels']} channel(s)"]
    lines += [f"  note: {note}" for note in found["notes"]]
    for name, s in found["splits"].items():
        lines.append(
            f"  {name}: {s['images']} images, imbalance {s['imbalance']}x, modes "
            + ", ".join(f"{k} {v}" for k, v in s["modes"].items())
            + f", shorter side {s['shorter_side']['min']}-{s['shorter_side']['max']} px"
        )
    if found["unreadable"]:
        lines.append(f"  unreadable: {len(found['unreadable'])} file(s), e.g. {found['unreadable'][0]['file']}")
    exact, near = found["exact_duplicates"], found["near_duplicates"]
    lines.append(
        f"  exact duplicates: {exact['groups']} group(s)"
        + "".join(f"; {n} pair(s) {k}" for k, n in exact["pairs"].items())
    )
    lines.append(
        f"  near duplicates (thumbnails correlate >= 0.95, at most {near['max_bits']} of 64 hash bits differ): "
        f"{near['pairs']} pair(s)" + "".join(f"; {n} {k}" for k, n in near["by_kind"].items())
    )
    for name, s in found["split_shift"].items():
        verdict = "SHIFTED from training" if s["shifted"] else "like training"
        lines.append(
            f"  {name} split: {verdict} (largest difference: {s['feature']}, KS {s['statistic']}; random parts "
            f"of training differ by at most {s['random_training_parts_max']})"
        )
    if "label_candidates" in found:
        labels = found["label_candidates"]
        lines.append(
            f"  labels (scored by {labels['run']} on {labels['scored']}): {labels['label_issues']} of "
            f"{labels['images']} images flagged by confident learning; the least likely labels: "
            + "; ".join(f"{c['name']} ({c['given']}, looks {c['predicted']})" for c in labels["candidates"][:3])
        )
    lines.append(
        f"  read {sum(s['images'] for s in found['splits'].values())} images in {found['read_seconds']}s "
        f"({found['images_per_second']:.0f}/s), compared every pair in {found['duplicate_search_seconds']}s"
    )
    return lines


# ------------------------------------------------------------------ the page


def _img(png: bytes, title: str) -> str:
    if not png:
        return f'<div class="missing" title="{html.escape(title)}">unreadable</div>'
    data = base64.b64encode(png).decode()
    return f'<img src="data:image/png;base64,{data}" title="{html.escape(title)}" alt="{html.escape(title)}">'


def _histograms(facts: dict[str, SplitFacts], channels: int) -> str:
    """Inline SVG: each split's intensity histogram per channel, as lines."""
    colors = {"train": "#1f77b4", "val": "#2ca02c", "test": "#d62728"}
    names = ["gray"] if channels == 1 else ["red", "green", "blue"]
    blocks = []
    for c, channel in enumerate(names):
        top = max(float(f.histogram[c].max()) for f in facts.values()) or 1.0
        lines = []
        for split, f in facts.items():
            values = f.histogram[c] / top
            points = " ".join(f"{i * 300 / (len(values) - 1):.1f},{100 - v * 95:.1f}" for i, v in enumerate(values))
            lines.append(
                f'<polyline fill="none" stroke="{colors.get(split, "#555")}" stroke-width="2" points="{points}"/>'
            )
        blocks.append(
            f'<figure><svg viewBox="0 0 300 100" width="270" height="90">{"".join(lines)}</svg>'
            f"<figcaption>{channel} intensity, dark to bright</figcaption></figure>"
        )
    legend = " ".join(f'<span style="color:{colors[s]}">&#9632; {s}</span>' for s in facts)
    return f"<p>{legend}</p><div class='row'>{''.join(blocks)}</div>"


def _counts(counts: dict[str, int], unit: str = "") -> str:
    return ", ".join(f"{html.escape(str(k))}{unit}: {v}" for k, v in counts.items())


def render_page(found, facts, datasets, exact, near, classes) -> str:
    """``inspect.html``: one self-contained page (styles and thumbnails inline)."""
    wanted: dict[str, set[int]] = {name: set() for name in facts}
    sheet: dict[str, dict[int, list[int]]] = {}
    for name, f in facts.items():
        sheet[name] = {
            c: [i for i, label in enumerate(f.labels) if label == c][:PER_CLASS] for c in range(len(classes))
        }
        for rows in sheet[name].values():
            wanted[name].update(f.indices[i] for i in rows)
    shown_exact = [g[:2] for g in exact[:SHOWN_PAIRS]]
    shown_near = [(a, b) for a, b, _ in near[:SHOWN_PAIRS]]
    for a, b in [*shown_exact, *shown_near]:
        for split, i in (a, b):
            wanted[split].add(facts[split].indices[i])
    for c in found.get("label_candidates", {}).get("candidates", [])[:SHOWN_PAIRS]:
        wanted[c["split"]].add(c["index"])
    pngs = {name: thumbnails(datasets[name], name, sorted(wanted[name])) for name in facts}

    def thumb(split: str, i: int) -> str:
        return _img(pngs[split].get(facts[split].indices[i], b""), facts[split].names[i])

    parts = [f"<h1>vitrain inspect: {html.escape(found['data'])}</h1>"]
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in found["notes"]]
    parts.append(
        "<h2>Splits</h2><table><tr><th>split</th><th>images</th><th>imbalance</th><th>modes</th>"
        "<th>bit depths</th><th>shorter side</th><th>aspect ratio</th><th>unreadable</th></tr>"
    )
    for name, s in found["splits"].items():
        parts.append(
            f"<tr><td>{name}</td><td>{s['images']}</td><td>{s['imbalance']}x</td><td>{_counts(s['modes'])}</td>"
            f"<td>{_counts(s['bit_depths'], ' bits')}</td><td>{s['shorter_side']['min']}-{s['shorter_side']['max']}"
            f" px (median {s['shorter_side']['median']:g})</td><td>{s['aspect_ratio']['min']}-"
            f"{s['aspect_ratio']['max']}</td><td>{s['unreadable']}</td></tr>"
        )
    parts.append("</table><h3>Images per class</h3><table><tr><th>class</th>")
    parts += [f"<th>{name}</th>" for name in found["splits"]] + ["</tr>"]
    for c in classes:
        parts.append(
            f"<tr><td>{html.escape(c)}</td>"
            + "".join(f"<td>{s['per_class'][c]}</td>" for s in found["splits"].values())
            + "</tr>"
        )
    parts.append("</table>")
    if found["unreadable"]:
        parts.append(
            "<h2>Unreadable files</h2><ul>"
            + "".join(
                f"<li>{html.escape(u['file'])}: {html.escape(u['reason'])}</li>" for u in found["unreadable"][:100]
            )
            + "</ul>"
        )
    parts.append(
        "<h2>Does each split look like training?</h2><table><tr><th>split</th><th>verdict</th>"
        + "".join(f"<th>{f}</th>" for f in FEATURES)
        + "<th>random parts of training</th></tr>"
    )
    for name, s in found["split_shift"].items():
        verdict = "<b class='bad'>shifted</b>" if s["shifted"] else "like training"
        parts.append(
            f"<tr><td>{name}</td><td>{verdict}</td>"
            + "".join(f"<td>{s['per_feature'][f]}</td>" for f in FEATURES)
            + f"<td>&le; {s['random_training_parts_max']}</td></tr>"
        )
    parts.append(
        "</table><p class='note'>Kolmogorov-Smirnov statistics between the split and training, per "
        "feature; a split is shifted when its largest one exceeds what every one of 200 random parts of "
        "training of its size shows against the rest of training.</p>"
    )
    parts.append(_histograms(facts, found["channels"]))
    for title, pairs, extra in (
        ("Exact duplicates (the same bytes)", shown_exact, [""] * len(shown_exact)),
        (
            f"Near duplicates (thumbnails correlate at least 0.95, at most {found['near_duplicates']['max_bits']} "
            "of 64 hash bits differ)",
            shown_near,
            [f"{d} bits" for _, _, d in near[:SHOWN_PAIRS]],
        ),
    ):
        parts.append(f"<h2>{title}</h2>")
        if not pairs:
            parts.append("<p>none found</p>")
        for (a, i), (b, j), note in ((p[0], p[1], e) for p, e in zip(pairs, extra)):
            parts.append(
                f"<div class='pair'>{thumb(a, i)}{thumb(b, j)}<span>{_kind(a, b)} {note}<br>"
                f"{html.escape(facts[a].names[i])}<br>{html.escape(facts[b].names[j])}</span></div>"
            )
    if "label_candidates" in found:
        labels = found["label_candidates"]
        parts.append(
            f"<h2>Labels to review</h2><p class='note'>The images of {html.escape(labels['scored'])} whose label "
            f"{html.escape(labels['run'])} finds least likely, first; {labels['label_issues']} of {labels['images']} "
            "are flagged by confident learning (cleanlab). Candidates to look at, not verdicts.</p>"
        )
        for c in labels["candidates"][:SHOWN_PAIRS]:
            k = facts[c["split"]].indices.index(c["index"]) if c["index"] in facts[c["split"]].indices else None
            picture = thumb(c["split"], k) if k is not None else ""
            parts.append(
                f"<div class='pair'>{picture}<span>{html.escape(c['name'])}"
                f"{' (flagged)' if c['label_issue'] else ''}<br>labelled "
                f"<b>{html.escape(c['given'])}</b> (p = {c['probability_of_given']}), looks like "
                f"<b>{html.escape(c['predicted'])}</b></span></div>"
            )
    parts.append("<h2>Contact sheet</h2>")
    for name in facts:
        parts.append(f"<h3>{name}</h3><table>")
        for c, rows in sheet[name].items():
            parts.append(
                f"<tr><td>{html.escape(classes[c])}</td><td>" + "".join(thumb(name, i) for i in rows) + "</td></tr>"
            )
        parts.append("</table>")
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}img{margin:2px;image-rendering:pixelated;"
        "vertical-align:middle}.pair{display:flex;gap:8px;align-items:center;margin:6px 0}.note{color:#555}"
        ".bad{color:#c00}.row{display:flex;flex-wrap:wrap;gap:16px}figure{margin:0}.missing{display:inline-block;width:96px;color:#c00}"
    )
    head = f"<meta charset='utf-8'><title>vitrain inspect</title><style>{style}</style>"
    return f"<!doctype html><html><head>{head}</head><body>{''.join(parts)}</body></html>\n"
