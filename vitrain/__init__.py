"""vitrain: train Vision Transformers on real image datasets.

Python API::

    import vitrain
    model = vitrain.create_model("vit-cifar", num_classes=10)   # a fresh ViT
    model = vitrain.load_model("runs/digits-20261122-101500")    # a trained one, with model.meta
"""

__version__ = "0.1.0"

from .checkpoint import load_model  # noqa: E402
from .models import create_model  # noqa: E402

__all__ = ["__version__", "create_model", "load_model"]
