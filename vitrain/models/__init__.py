"""Vision Transformer models: the architecture, named sizes and weight converters."""

from .registry import PRESETS, create_model, model_names, resolve_config
from .vit import VisionTransformer, ViTConfig

__all__ = ["PRESETS", "ViTConfig", "VisionTransformer", "create_model", "model_names", "resolve_config"]
