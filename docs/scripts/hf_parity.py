"""The Hugging Face export of a run, through transformers' pipeline, against `vitrain predict` on the run's
example test images (the share guide quotes its output). Usage: python docs/scripts/hf_parity.py RUN

It compares twice: as vitrain predicts (large JPEGs decoded in Pillow's draft mode, as in training), and
with vitrain decoding every image whole, as transformers does, which leaves the center crop's rounding
as the only difference."""

import sys
from pathlib import Path

import numpy as np
from transformers import pipeline
from transformers.utils import logging

import vitrain
import vitrain.engine.predict

logging.disable_progress_bar()
run = Path(sys.argv[1])
images = sorted(str(p) for p in (run / "examples").iterdir() if p.suffix != ".csv")
classes = vitrain.load_model(run).meta["classes"]
classify = pipeline("image-classification", model=str(run / "export-hf"), top_k=len(classes))  # every class
theirs = [{t["label"]: t["score"] for t in classify(path)} for path in images]


def compare(title: str) -> None:
    ours = vitrain.predict(run, images, top_k=1000, out=run / "predictions")
    same = sum(max(t, key=t.get) == p.label for t, p in zip(theirs, ours.predictions))
    diffs = [max(abs(t[label] - prob) for label, prob in p.top) for t, p in zip(theirs, ours.predictions)]
    kinds = ", ".join(sorted({Path(p).suffix for p in images}))
    print(f"{title}: the same top-1 for {same} of {len(images)} images ({kinds})")
    print(
        f"  largest probability difference per image: median {np.median(diffs):.1e}, largest {max(diffs):.1e}, "
        f"{sum(d > 1e-5 for d in diffs)} images above 1e-5"
    )


compare("as vitrain predicts")
vitrain.engine.predict.eval_decode_side_for = lambda meta, size: None  # decode whole, as transformers does
compare("with vitrain decoding whole images")
