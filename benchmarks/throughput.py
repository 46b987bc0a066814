"""Training and inference throughput of vitrain's ViT vs timm's and torchvision's, as ratios.

The same as ``vitrain bench`` (see :mod:`vitrain.engine.bench`): identical architectures and
weights (logits checked equal first), interleaved timing, medians, MFU against a matmul
rate measured on the same machine.

    python benchmarks/throughput.py                       # all three configurations
    python benchmarks/throughput.py --configs cifar10-tutorial --repeats 7 --json
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitrain.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
