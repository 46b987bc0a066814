#!/usr/bin/env bash
# Regenerates the command outputs quoted in README.md and the docs (getting started, the
# guides' transcripts), on this machine, into runs/transcripts/*.txt. Run from the
# repository root with the venv active; it takes about 11 minutes on 2 CPU cores and needs
# ../shared/datasets for the folder examples. The quoted outputs name the machine and commit.
set -euo pipefail
out=runs/transcripts
data=../shared/datasets
rm -rf "$out" runs/digits runs/digits-budget runs/flowers runs/mri-from-flowers runs/digits-ddp \
  runs/imbalanced runs/imbalanced-flowers runs/flowers-patch predictions digits-png && mkdir -p "$out"
say() { echo "\$ $*" | tee "$out/$name.txt"; "$@" 2>&1 | tee -a "$out/$name.txt"; }
{ lscpu | grep -E "Model name|^CPU\(s\)|Flags"; git rev-parse --short HEAD; date -u +%F; } > "$out/machine.txt"

name=digits      say vitrain train --no-progress --out runs/digits
name=budget      say vitrain train --time-budget 0.5 --no-progress --out runs/digits-budget
name=eval        say vitrain eval runs/digits --data digits
python - <<'PY'
from pathlib import Path
from PIL import Image
from vitrain.data.sources import load_data
test = load_data("digits").test
for i in range(len(test)):
    image, label = test[i]
    (Path("digits-png") / str(label)).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image[0].numpy()).save(Path("digits-png") / str(label) / f"{i:03d}.png")
PY
name=predict     say vitrain predict runs/digits digits-png --annotate --attention --out predictions
name=onnx        say vitrain export runs/digits --format onnx
name=torchscript say vitrain export runs/digits --format torchscript
name=folder      say vitrain train --data $data/flowers17.tar --recipe folder-best --time-budget 2 --no-progress --out runs/flowers
name=finetune    say vitrain train --data $data/brain-tumor-mri.tar --pretrained runs/flowers --dedupe --time-budget 1 --no-progress --out runs/mri-from-flowers
name=torchrun    say torchrun --standalone --nproc-per-node 2 -m vitrain train --epochs 2 --no-progress --device cpu --out runs/digits-ddp
python - <<'PY'
# an imbalanced folder: three flowers17 classes with 80, 40 and 16 images
import tarfile
from pathlib import Path
keep = {"bluebell": 80, "crocus": 40, "daisy": 16}
with tarfile.open("../shared/datasets/flowers17.tar") as tar:
    members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)
    for name, count in keep.items():
        chosen = [m for m in members if m.name.split("/")[-2] == name][:count]
        for m in chosen:
            target = Path("runs/imbalanced-flowers") / name / Path(m.name).name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(m).read())
PY
name=imbalanced  say vitrain train --data runs/imbalanced-flowers --model vit-mini4 --img-size 32 --epochs 3 --no-progress --out runs/imbalanced
name=models      say vitrain models
name=recipes     say vitrain recipes
# sharing a model: a patch-stem model (transformers and timm have no convolutional stem)
name=share-train say vitrain train --data $data/flowers17.tar --recipe folder-best --stem patch --time-budget 2 --no-progress --out runs/flowers-patch
name=export-hf   say vitrain export runs/flowers-patch --format hf --license mit
name=export-timm say vitrain export runs/flowers-patch --format timm --license mit
name=export-refused say vitrain export runs/flowers --format hf || true
name=card        say vitrain card runs/flowers-patch --license mit
name=hf-pipeline say python docs/scripts/hf_parity.py runs/flowers-patch
