"""The plots of a run folder (``vitrain/report.py``)."""

from __future__ import annotations

from PIL import Image


def test_samples_png_is_in_the_run_folder(trained):
    run, _ = trained
    with Image.open(run / "samples.png") as img:
        assert img.width > 100 and img.height > 100
