"""vitrain: train Vision Transformers on real image datasets.

Python API::

    import vitrain
    run = vitrain.train("digits", epochs=10, out="runs/digits-10")   # what `vitrain train` does
    print(run.report["test"]["accuracy"])
    report = vitrain.evaluate(run.path, "digits")                      # `vitrain eval`
    result = vitrain.predict(run.path, ["images/"])                    # `vitrain predict`
    model = vitrain.create_model("vit-cifar", num_classes=10)         # a fresh ViT
    model = vitrain.load_model("deit_tiny_patch16_224.pth")            # a checkpoint or pretrained weights
"""

__version__ = "0.1.0"

from .api import Run, evaluate, load_model, predict, pretrain, train  # noqa: E402
from .models import create_model  # noqa: E402

__all__ = ["__version__", "Run", "create_model", "evaluate", "load_model", "predict", "pretrain", "train"]
