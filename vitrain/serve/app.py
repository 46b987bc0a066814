"""``vitrain serve RUN``: a local web app (Gradio) that shows a trained model and its run.

Tab one classifies an image dropped, pasted or picked (the run's own test images are
offered as examples): the top-k classes as bars, the attention rollout over the image and
the time it took. Tab two shows the run: its curves, confusion matrix, per-class table, the
test images it got wrong, the notes of its report and its config.

The model is loaded once. Of the run folder, the app serves only its example images and
plots (Gradio's ``allowed_paths``; besides them, Gradio serves its own cache of uploads and
of the images the app shows, which it deletes after a day); uploads over the size limit and
files that are not images are refused with a message that says so.
"""

from __future__ import annotations

import csv
import ipaddress
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home, before gradio is imported

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..data.images import ImageReadError  # noqa: E402
from ..engine.card import limitations, per_class_rows  # noqa: E402
from ..engine.final import EXAMPLES  # noqa: E402
from ..engine.predict import Predictor, attention_overlay  # noqa: E402

DEFAULT_PORT = 7860
MAX_UPLOAD_MB = 10
OVERLAY_SIDE = 768  # the attention overlay's longer side at most: a 12-megapixel photo stays a small picture
SHOWN_EXAMPLES = 40
# small images (digits are 8 px) fill the frame, their pixels kept sharp
CSS = "#input-image img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }"


def image_input(**kwargs) -> gr.Image:
    """An image input that hands over the uploaded file itself (as ``vitrain predict`` reads files) and
    refuses a file that is not an image with a message naming it.

    (The check wraps the instance's ``preprocess``: subclassing a Gradio component makes Gradio
    write a type-stub file beside this module.)
    """
    # image_mode None: the file as uploaded, not converted and saved again; format png: a pasted image is kept lossless
    image = gr.Image(type="filepath", image_mode=None, format="png", **kwargs)
    preprocess = image.preprocess

    def checked(payload):
        try:
            return preprocess(payload)
        except Exception:  # Pillow cannot open it: the upload is not an image
            name = getattr(payload, "orig_name", None) or "the file"
            raise gr.Error(f"{name} is not an image this app can read (PNG, JPEG, WebP, BMP, TIFF, GIF)") from None

    image.preprocess = checked
    return image


def read_examples(run: Path) -> list[dict[str, str]]:
    """The rows of ``RUN/examples/index.csv`` whose files exist (empty for runs without one)."""
    index = run / EXAMPLES / "index.csv"
    if not index.is_file():
        return []
    with open(index, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    # plain file names inside examples/ only: the index is not trusted to point anywhere else
    return [r for r in rows if Path(r["file"]).name == r["file"] and (run / EXAMPLES / r["file"]).is_file()]


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Classifier:
    """The model of a run, loaded once; :meth:`__call__` is the app's classify handler."""

    def __init__(self, run: Path, top_k: int = 5, device: torch.device | None = None, precision: str = "fp32"):
        self.predictor = Predictor(run, batch_size=1, device=device, precision=precision)
        self.top_k = top_k
        self.crop_pct = self.predictor.meta.get("crop_pct", 1.0)

    def classify(self, path: str | Path) -> dict[str, Any]:
        """Top-k classes, the rollout overlay and the milliseconds taken for one image file."""
        started = time.perf_counter()
        result = self.predictor.predict([Path(path)], top_k=self.top_k, attention=True)
        if result.failed:
            raise ImageReadError(result.failed[0][1])
        prediction = result.predictions[0]
        overlay = attention_overlay(prediction, self.crop_pct, max_side=OVERLAY_SIDE)
        return {
            "top": prediction.top,
            "overlay": overlay,
            "milliseconds": (time.perf_counter() - started) * 1000,
        }

    def __call__(self, path: str | None):
        if not path:
            return None, None, ""
        try:
            found = self.classify(path)
        except ImageReadError as err:
            raise gr.Error(str(err).replace(str(path), Path(path).name)) from None
        label, probability = found["top"][0]
        summary = (
            f"**{label}** with probability **{probability:.4f}**, in {found['milliseconds']:.0f} ms "
            f"on {self.predictor.device.type}"
        )
        return dict(found["top"]), found["overlay"], summary


def _run_summary(report: dict[str, Any]) -> str:
    test = report["test"]
    lines = [
        f"**{report.get('data')}**, {len(report['classes'])} classes; "
        + ", ".join(f"{k} {v:,}" for k, v in report.get("splits", {}).items())
        + " images",
        "",
        f"{test.get('split', 'test')} accuracy **{test['accuracy']:.4f}**"
        + (f", balanced {test['balanced_accuracy']:.4f}" if test.get("balanced_accuracy") is not None else "")
        + (f", top-5 {test['top5']:.4f}" if test.get("top5") is not None else "")
        + f"; validation accuracy {report['val']['accuracy']:.4f} at the best epoch ({report['best_epoch']} of "
        f"{report.get('epochs', '?')}); {report.get('train_seconds', 0):.0f} s of training on {report.get('device')}",
    ]
    if report.get("command"):
        lines += ["", f"`{report['command']}`"]
    return "\n".join(lines)


def _notes(report: dict[str, Any]) -> str:
    notes = list(report.get("notes", []))
    notes += [n for n in limitations(report) if n.rstrip(".").lower() not in {m.lower() for m in notes}]
    return "\n".join(f"- {n}" for n in notes)


def build_app(
    run: str | Path, *, top_k: int = 5, device: torch.device | None = None, precision: str = "fp32"
) -> gr.Blocks:
    """The Gradio app of the run folder ``run`` (its ``best.safetensors`` or ``last.safetensors``)."""
    run = Path(run).expanduser().resolve()
    if not run.is_dir():
        raise ValueError(f"{run}: vitrain serve takes a run folder")
    classifier = Classifier(run, top_k=top_k, device=device, precision=precision)
    classes = classifier.predictor.classes
    examples = read_examples(run)
    report_path = run / "report.json"
    try:
        report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.is_file() else None
    except json.JSONDecodeError as err:
        raise ValueError(f"{report_path}: not valid JSON ({err})") from None
    day = 24 * 3600
    with gr.Blocks(title=f"vitrain · {run.name}", analytics_enabled=False, delete_cache=(day, day)) as app:
        gr.Markdown(f"# {run.name}\nA Vision Transformer trained with vitrain: {len(classes)} classes.")
        with gr.Tab("Classify", id="classify"):
            with gr.Row():
                with gr.Column():
                    image = image_input(
                        sources=["upload", "clipboard"], label="Image", height=320, elem_id="input-image"
                    )
                    button = gr.Button("Classify", variant="primary", elem_id="classify")
                with gr.Column():
                    summary = gr.Markdown(elem_id="summary")
                    label = gr.Label(num_top_classes=top_k, label="Top classes", elem_id="top-classes")
                    overlay = gr.Image(label="Attention rollout", interactive=False, height=320, elem_id="attention")
            shown = [r for r in examples if r["correct"] == "true"] or examples
            if shown:
                gr.Examples(
                    examples=[[str(run / EXAMPLES / r["file"])] for r in shown[:SHOWN_EXAMPLES]],
                    inputs=[image],
                    label="Test images of this run",
                )
            for trigger in (image.change, button.click):  # one model, one image at a time
                trigger(
                    classifier,
                    inputs=[image],
                    outputs=[label, overlay, summary],
                    concurrency_limit=1,
                    concurrency_id="classify",
                )
        with gr.Tab("Run", id="run"):
            if report is None:
                gr.Markdown(f"No report.json in {run.name}: the run has not finished.")
            else:
                _run_tab(run, report, examples)
    return app


def _run_tab(run: Path, report: dict[str, Any], examples: list[dict[str, str]]) -> None:
    """The run tab's components, from the run folder's files."""
    gr.Markdown(_run_summary(report), elem_id="run-summary")
    with gr.Row():
        for name, title in (("accuracy.png", "Accuracy"), ("loss.png", "Loss")):
            if (run / name).is_file():
                gr.Image(str(run / name), label=title, interactive=False)
    with gr.Row():
        if (run / "confusion_matrix.png").is_file():
            gr.Image(str(run / "confusion_matrix.png"), label="Confusion matrix", interactive=False)
        rows = [
            [c, n, "" if r is None else round(r, 4), "" if p is None else round(p, 4)]
            for c, n, r, p in per_class_rows(report)
        ]
        gr.Dataframe(
            rows,
            headers=["class", "test images", "recall", "precision"],
            label="Per class",
            interactive=False,
            elem_id="per-class",
        )
    wrong = [r for r in examples if r["correct"] == "false"]
    matrix = np.asarray(report["test"]["confusion_matrix"])
    split = "Test" if report["test"].get("split", "test") == "test" else "Validation"
    gr.Gallery(
        [(str(run / EXAMPLES / r["file"]), f"{r['true_label']} → {r['predicted_label']}") for r in wrong],
        label=f"{split} images it got wrong, true → predicted class ({len(wrong)} of "
        f"{int(matrix.sum() - np.trace(matrix))} shown)",
        columns=8,
        height="auto",
        elem_id="wrong",
    )
    gr.Markdown("### Notes\n" + _notes(report), elem_id="notes")
    config = run / "config.yaml"
    text = config.read_text() if config.is_file() else ""
    gr.Code(text, language="yaml", label="config.yaml", interactive=False, max_lines=30)


def served_files(run: Path) -> list[str]:
    """What the app may send from the run folder: its example images and plots (not its checkpoints)."""
    plots = [run / name for name in ("accuracy.png", "loss.png", "confusion_matrix.png")]
    return [str(p) for p in [run / EXAMPLES, *plots] if p.exists()]


def serve(
    run: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    top_k: int = 5,
    max_upload_mb: float = MAX_UPLOAD_MB,
    device: torch.device | None = None,
    precision: str = "fp32",
    log=print,
    block: bool = True,
) -> gr.Blocks:
    """Build the app and start it on ``host:port``; with ``block``, until interrupted."""
    run = Path(run).expanduser().resolve()
    app = build_app(run, top_k=top_k, device=device, precision=precision)
    if not is_loopback(host):
        log(
            f"warning: listening on {host}: anyone who can reach this machine on port {port} can use the app and "
            "see this run's report and test images"
        )
    app.queue(default_concurrency_limit=1)
    try:
        app.launch(
            server_name=host,
            server_port=port,
            max_file_size=int(max_upload_mb * 1024 * 1024),
            allowed_paths=served_files(run),
            share=False,
            show_error=True,
            ssr_mode=False,
            enable_monitoring=False,
            mcp_server=False,
            prevent_thread_lock=True,
            quiet=True,
            css=CSS,
        )
    except OSError as err:  # the port is taken, or the host is not an address of this machine
        raise OSError(f"--host {host} --port {port}: cannot listen there ({err})") from None
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    log(f"serving {run} at http://{f'[{shown}]' if ':' in shown else shown}:{port} (Ctrl-C stops)")
    if block:
        app.block_thread()
    return app
