"""``vitrain serve`` (``vitrain/serve/app.py``): the web app, over HTTP and in a real browser (Debian's
Chromium driven by Playwright). The browser tests save screenshots under build/test-artifacts/ (or
``$VITRAIN_TEST_ARTIFACTS``); they skip, saying why, only where Chromium is missing."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vitrain
from vitrain.cli import main

from .conftest import _read_csv

ARTIFACTS = Path(os.environ.get("VITRAIN_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "build/test-artifacts"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# as root on a machine without a network: no sandbox, nothing started in the background
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
UPLOAD_LIMIT_MB = 0.05


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> int:
    try:
        return urllib.request.urlopen(url, timeout=10).status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory):
    """``vitrain serve`` in its own process on a free loopback port: (url, run folder).

    ``$VITRAIN_SERVE_RUN`` serves another run folder (the docs' screenshots come from a real run).
    """
    run = Path(os.environ.get("VITRAIN_SERVE_RUN") or trained[0])
    port = free_port()
    command = [sys.executable, "-m", "vitrain", "serve", str(run), "--port", str(port)]
    log = tmp_path_factory.mktemp("serve") / "serve.log"  # a file, not a pipe: the server never waits on it
    with open(log, "w") as output:
        process = subprocess.Popen(command + ["--max-upload-mb", str(UPLOAD_LIMIT_MB)], stdout=output, stderr=output)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    while True:
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"vitrain serve did not start: {log.read_text()}")
        time.sleep(0.5)
    yield url, run
    process.terminate()
    process.wait(timeout=30)


def test_the_app_serves_its_examples_and_plots_and_nothing_else(served):
    url, run = served
    example = next((run / "examples").glob("*.png"))
    assert _get(f"{url}gradio_api/file={example}") == 200
    assert _get(f"{url}gradio_api/file={run / 'confusion_matrix.png'}") == 200
    refused = [run / n for n in ("best.safetensors", "last.safetensors", "config.yaml", "report.json")]
    refused += [run / "examples" / ".." / "best.safetensors", Path("/etc/passwd"), Path(__file__)]
    for path in refused:
        assert _get(f"{url}gradio_api/file={path}") == 403, path
    encoded = str(run / "examples" / "%2e%2e" / "best.safetensors")
    assert _get(f"{url}gradio_api/file={encoded}") in (403, 404)


def test_classifier_gives_predicts_answer(trained, tmp_path):
    from vitrain.serve.app import Classifier

    run, data = trained
    image = data / "fox" / "003.png"
    found = Classifier(run, top_k=3).classify(image)
    expected = vitrain.predict(run, [str(image)], top_k=3, out=tmp_path).predictions[0]
    assert [label for label, _ in found["top"]] == [label for label, _ in expected.top]
    assert np.allclose([p for _, p in found["top"]], [p for _, p in expected.top], atol=1e-6)
    assert found["overlay"].size == (240, 240)  # the 20 px image enlarged 12x (to >= 224 px), the rollout over it


def test_listening_beyond_this_machine_warns(trained, monkeypatch):
    import gradio as gr

    from vitrain.serve.app import is_loopback, serve

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20")
    launched = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: launched.update(kwargs))
    said = []
    serve(trained[0], host="0.0.0.0", port=7860, block=False, log=said.append)
    assert said[0].startswith("warning: listening on 0.0.0.0: anyone who can reach this machine")
    assert launched["server_name"] == "0.0.0.0" and launched["share"] is False
    assert all(Path(p).parent == trained[0].resolve() or Path(p).name == "examples" for p in launched["allowed_paths"])


def test_a_run_without_examples_or_report_still_serves(trained, tmp_path):
    from vitrain.serve.app import build_app

    run = tmp_path / "bare"
    run.mkdir()
    shutil.copy(trained[0] / "best.safetensors", run / "best.safetensors")
    build_app(run).close()
    (run / "report.json").write_text("{not json")
    with pytest.raises(ValueError, match="report.json: not valid JSON"):
        build_app(run)


def test_serve_refuses_a_folder_without_a_model_and_bad_options(tmp_path, capsys):
    assert main(["serve", str(tmp_path)]) == 2
    assert "without best.safetensors or last.safetensors" in capsys.readouterr().err
    (tmp_path / "last.safetensors").write_bytes(b"")
    assert main(["serve", str(tmp_path / "last.safetensors")]) == 2
    assert "vitrain serve takes a run folder" in capsys.readouterr().err
    for flags, message in (
        (["--port", "70000"], "--port must be between 1 and 65535, got 70000"),
        (["--top-k", "0"], "--top-k must be at least 1, got 0"),
        (["--max-upload-mb", "0"], "--max-upload-mb must be positive, got 0"),
    ):
        assert main(["serve", str(tmp_path), *flags]) == 2
        assert message in capsys.readouterr().err


# ------------------------------------------------------------------ in a real browser


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("Chromium is missing (apt-get install chromium): the browser tests need it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, served):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(served[0])
    page.wait_for_selector("#input-image input[type=file]", state="attached")
    yield page
    page.close()


def _screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_upload_shows_predicts_label_probability_and_attention(page, served, tmp_path):
    _, run = served
    rows = _read_csv(run / "examples" / "index.csv")
    image = run / "examples" / next(r["file"] for r in rows if r["correct"] == "true")
    page.locator("#input-image input[type=file]").set_input_files(str(image))
    page.wait_for_function("document.querySelector('#summary').innerText.includes('probability')", timeout=60_000)
    shown = re.fullmatch(
        r"(.+) with probability ([0-9.]+), in (\d+) ms on cpu", page.locator("#summary").inner_text().strip()
    )
    assert shown, page.locator("#summary").inner_text()
    assert main(["predict", str(run), str(image), "--out", str(tmp_path / "pred")]) == 0
    expected = _read_csv(tmp_path / "pred" / "predictions.csv")[0]
    assert shown.group(1) == expected["label"]
    assert abs(float(shown.group(2)) - float(expected["probability"])) < 5e-5  # shown to 4 decimals
    bars = page.locator("#top-classes").inner_text()
    assert expected["top1_label"] in bars and expected["top2_label"] in bars
    page.wait_for_selector("#attention img")
    _screenshot(page, "serve-classify.png")


def test_run_tab_shows_curves_table_mistakes_notes_and_config(page, served):
    _, run = served
    report = json.loads((run / "report.json").read_text())
    page.get_by_role("tab", name="Run").click()
    page.wait_for_selector("#per-class")
    table = page.locator("#per-class").inner_text()
    assert all(name in table for name in report["classes"])
    assert f"{report['test']['accuracy']:.4f}" in page.locator("#run-summary").inner_text()
    assert "It knows only these" in page.locator("#notes").inner_text()
    wrong = sum(r["correct"] == "false" for r in _read_csv(run / "examples" / "index.csv"))
    assert f"Test images it got wrong, true → predicted class ({wrong} of" in page.locator("body").inner_text()
    assert "seed:" in page.locator("body").inner_text()  # config.yaml
    page.wait_for_timeout(500)  # the plots finish drawing
    _screenshot(page, "serve-run.png")


def test_an_rgba_upload_is_read_as_predict_reads_it(page, served, tmp_path):
    """The app classifies the uploaded file itself (Gradio does not convert it): a PNG with transparency
    gets predict's answer, whose reading composites it on white."""
    _, run = served
    source = next((run / "examples").glob("*.png"), None) or next((run / "examples").glob("*.jp*g"))
    with Image.open(source) as img:
        rgba = img.convert("RGBA")
    alpha = np.full(rgba.size[::-1], 255, dtype=np.uint8)
    alpha[: alpha.shape[0] // 2] = 60
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(tmp_path / "see-through.png")
    page.locator("#input-image input[type=file]").set_input_files(str(tmp_path / "see-through.png"))
    page.wait_for_function("document.querySelector('#summary').innerText.includes('probability')", timeout=60_000)
    shown = re.fullmatch(r"(.+) with probability ([0-9.]+), in \d+ ms on cpu", page.locator("#summary").inner_text())
    assert main(["predict", str(run), str(tmp_path / "see-through.png"), "--out", str(tmp_path / "pred")]) == 0
    expected = _read_csv(tmp_path / "pred" / "predictions.csv")[0]
    assert shown.group(1) == expected["label"] and abs(float(shown.group(2)) - float(expected["probability"])) < 5e-5


def test_uploads_that_are_not_images_or_too_big_are_refused_with_a_message(page, tmp_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is text")
    page.locator("#input-image input[type=file]").set_input_files(str(not_image))
    page.get_by_text("notes.png is not an image this app can read").wait_for(timeout=30_000)
    page.reload()
    page.wait_for_selector("#input-image input[type=file]", state="attached")
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > UPLOAD_LIMIT_MB * 1024 * 1024
    page.locator("#input-image input[type=file]").set_input_files(str(big))
    page.get_by_text("exceed the maximum allowed size").wait_for(timeout=30_000)
    _screenshot(page, "serve-refused.png")
