"""``--pretrained SOURCE``: find ViT weights, convert them to vitrain's layout, fit them to a model.

SOURCE is one of

* ``timm:NAME`` -- a timm model name, downloaded through timm (``deit_tiny_patch16_224``);
* ``torchvision:NAME[:WEIGHTS]`` -- a torchvision model (``vit_b_16``, weights ``DEFAULT``);
* ``hf:ORG/NAME`` -- a Hugging Face Hub repository of a ``transformers`` ViT or DeiT;
* a local file (``.safetensors``, ``.pth``, ``.pt``, ``.bin``) in timm, torchvision, Hugging
  Face or vitrain layout, detected from its keys; or a vitrain run folder / a Hugging Face
  model folder (``config.json`` beside the weights).

Files are read without executing code: safetensors, or ``torch.load(weights_only=True)``.
When a download fails (no internet), the error says at once how to pass a local file.
"""

from __future__ import annotations

import contextlib
import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .convert import StateDict, adapt, infer_arch, to_vitrain
from .vit import VisionTransformer, ViTConfig
from .weights import CheckpointError, load_weights

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


class PretrainedError(ValueError):
    """The pretrained weights cannot be found, read or fitted; the message says which and why."""


@dataclass
class Pretrained:
    """Weights in vitrain's names, the architecture they imply, and the preprocessing they expect."""

    source: str
    layout: str  # timm, torchvision, huggingface or vitrain
    state_dict: StateDict
    arch: dict[str, Any]  # ViTConfig fields
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    crop_pct: float = 0.875
    notes: list[str] = field(default_factory=list)
    head_trained: bool = True  # False for a `vitrain pretrain` backbone: its classifier is never kept

    def model(self, **overrides: Any) -> VisionTransformer:
        """A ViT built from these weights, with ``overrides`` (img_size, patch_size, in_chans,
        num_classes, head_hidden, head_dropout, dropout, drop_path) applied.

        When ``num_classes``/head settings are given the classifier is newly initialized;
        otherwise the pretrained head is kept and the model computes what the source did.
        """
        target = {**self.arch, **{k: v for k, v in overrides.items() if v is not None}}
        try:
            config = ViTConfig(**target)
        except (TypeError, ValueError) as err:
            raise PretrainedError(f"--pretrained {self.source}: {err}") from None
        try:
            weights = adapt(self.state_dict, self.arch, config.to_dict())
        except ValueError as err:
            raise PretrainedError(f"--pretrained {self.source}: {err}") from None
        heads = ("head.", "head_dist.")
        keep_head = self.head_trained and all(
            target[k] == self.arch[k] for k in ("num_classes", "head_hidden", "head_dropout") if k in self.arch
        )
        model = VisionTransformer(config)
        # adapt() drops the old head(s): the pretrained ones go back in when they fit, else the fresh ones stay
        source_heads = self.state_dict if keep_head else model.state_dict()
        weights.update({k: v for k, v in source_heads.items() if k.startswith(heads)})
        try:
            load_weights(model, weights, f"--pretrained {self.source}")
        except CheckpointError as err:
            raise PretrainedError(str(err)) from None
        return model


def _offline_help(source: str, kind: str, name: str, error: Exception) -> PretrainedError:
    save = {
        "timm": f"python -c \"import timm, torch; torch.save(timm.create_model('{name}', pretrained=True)"
        f".state_dict(), '{name}.pth')\"",
        "torchvision": f"python -c \"import torchvision, torch; torch.save(torchvision.models.get_model('{name}', "
        f"weights='DEFAULT').state_dict(), '{name}.pth')\"",
        "hf": f"huggingface-cli download {name} --local-dir {name.split('/')[-1]}",
    }[kind]
    target = name.split("/")[-1] if kind == "hf" else f"{name}.pth"
    return PretrainedError(
        f"--pretrained {source}: could not download the weights ({type(error).__name__}: {str(error)[:200]}). "
        f"Without internet, fetch them on a machine that has it:\n  {save}\n"
        f"copy the result here and pass --pretrained {target}"
    )


def reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` seconds."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline_unless_reachable():
    """Without a route to the Hugging Face Hub, use only its local cache.

    huggingface_hub otherwise retries each file for about 20 s before giving up; a missing
    cache entry now fails at once, and cached weights still load.
    """
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or not reachable("huggingface.co")
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _from_timm(source: str, name: str) -> Pretrained:
    try:
        import timm
    except ImportError:
        raise PretrainedError(f"--pretrained {source} needs timm (pip install timm)") from None
    if name not in timm.list_models(pretrained=True) and name.split(".")[0] not in timm.list_models():
        raise PretrainedError(f"--pretrained {source}: timm has no model called {name!r}")
    try:
        with _hub_offline_unless_reachable():
            model = timm.create_model(name, pretrained=True)
    except Exception as err:  # noqa: BLE001 -- any download failure gets the same advice
        raise _offline_help(source, "timm", name, err) from None
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    state, layout = _convert(source, model.state_dict())
    heads = getattr(model.blocks[0].attn, "num_heads", None)
    return Pretrained(
        source,
        layout,
        state,
        infer_arch(state, heads),
        list(cfg.get("mean", IMAGENET_MEAN)),
        list(cfg.get("std", IMAGENET_STD)),
        float(cfg.get("crop_pct", 0.875)),
    )


def _from_torchvision(source: str, spec: str) -> Pretrained:
    import torchvision

    name, _, weights = spec.partition(":")
    try:
        enum = torchvision.models.get_model_weights(name)
        chosen = enum[weights] if weights else enum.DEFAULT
    except (ValueError, KeyError) as err:
        raise PretrainedError(f"--pretrained {source}: not a torchvision model with weights ({err})") from None
    try:
        model = torchvision.models.get_model(name, weights=chosen)
    except Exception as err:  # noqa: BLE001
        raise _offline_help(source, "torchvision", name, err) from None
    preset = chosen.transforms()
    state, layout = _convert(source, model.state_dict())
    heads = model.encoder.layers[0].self_attention.num_heads
    return Pretrained(
        source,
        layout,
        state,
        infer_arch(state, heads),
        list(preset.mean),
        list(preset.std),
        preset.crop_size[0] / preset.resize_size[0],
    )


def _from_hf(source: str, repo: str, num_heads: int | None = None) -> Pretrained:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise PretrainedError(f"--pretrained {source} needs huggingface_hub (pip install huggingface_hub)") from None
    try:
        with _hub_offline_unless_reachable():
            config, weights = _hf_download(hf_hub_download, repo)
    except Exception as err:  # noqa: BLE001
        raise _offline_help(source, "hf", repo, err) from None
    return _from_file(source, Path(weights), Path(config).parent, num_heads)


def _hf_download(hf_hub_download, repo: str) -> tuple[str, str]:
    config = hf_hub_download(repo, "config.json")
    try:
        weights = hf_hub_download(repo, "model.safetensors")
    except Exception:  # noqa: BLE001 -- older repositories only have the pickle file
        weights = hf_hub_download(repo, "pytorch_model.bin")
    try:
        hf_hub_download(repo, "preprocessor_config.json")
    except Exception:  # noqa: BLE001 -- optional
        pass
    return config, weights


def _read_file(source: str, path: Path) -> StateDict:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise PretrainedError(f"--pretrained {source}: not a readable safetensors file ({err})") from None
    try:
        # weights_only: a pickle that would run code is refused, never executed
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- UnpicklingError, RuntimeError, EOFError, IndexError ...
        first = (str(err).splitlines() or [type(err).__name__])[0]  # some errors of a truncated file say nothing
        raise PretrainedError(
            f"--pretrained {source}: cannot be read as plain tensors (torch.load with weights_only=True): {first[:300]}"
        ) from None
    for key in ("model", "state_dict", "model_state_dict", "module", "model_ema"):  # common wrappers
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise PretrainedError(f"--pretrained {source}: holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in loaded.items()}


def _convert(source: str, state: StateDict) -> tuple[StateDict, str]:
    try:
        return to_vitrain(state)
    except KeyError as err:
        raise PretrainedError(f"--pretrained {source}: {err.args[0]}") from None


def _hf_preprocessing(folder: Path) -> tuple[dict[str, Any], list[float] | None, list[float] | None, float | None]:
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    pre_path = folder / "preprocessor_config.json"
    pre = json.loads(pre_path.read_text()) if pre_path.is_file() else {}
    crop_pct = None
    if pre.get("do_center_crop") and isinstance(pre.get("crop_size"), (dict, int)) and pre.get("size"):
        crop = pre["crop_size"]["height"] if isinstance(pre["crop_size"], dict) else pre["crop_size"]
        size = pre["size"]
        size = size.get("shortest_edge", size.get("height")) if isinstance(size, dict) else size
        crop_pct = crop / size if size else None
    elif pre:
        crop_pct = 1.0  # resized straight to the input size
    return config, pre.get("image_mean"), pre.get("image_std"), crop_pct


def _from_file(source: str, path: Path, beside: Path | None = None, num_heads: int | None = None) -> Pretrained:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            is_vitrain = "vitrain" in (f.metadata() or {})
        if is_vitrain:
            from .weights import read_model_checkpoint

            try:
                state, meta = read_model_checkpoint(path)
            except CheckpointError as err:
                raise PretrainedError(f"--pretrained {source}: {err}") from None
            arch = {k: v for k, v in meta["arch"].items() if k in ViTConfig.__dataclass_fields__}
            arch = {**ViTConfig(**arch).to_dict()}
            backbone_only = bool(meta.get("backbone_only"))
            what = (
                "without labels (vitrain pretrain)" if backbone_only else f"on {len(meta.get('classes', []))} classes"
            )
            return Pretrained(
                source,
                "vitrain",
                state,
                arch,
                list(meta.get("mean", IMAGENET_MEAN)),
                list(meta.get("std", IMAGENET_STD)),
                float(meta.get("crop_pct", 1.0)),
                [f"weights trained on {meta.get('data', 'unknown data')} {what}"],
                head_trained=not backbone_only,
            )
    state, layout = _convert(source, _read_file(source, path))
    config, mean, std, crop_pct = _hf_preprocessing(beside or path.parent)
    notes = []
    if mean is None:
        notes.append(
            f"{path.name} does not record its preprocessing; using ImageNet's mean/std (override with --mean/--std)"
        )
    arch = infer_arch(state, num_heads or config.get("num_attention_heads"))
    if layout == "huggingface":
        arch["norm_eps"] = float(config.get("layer_norm_eps", 1e-12))
    if not (num_heads or "num_attention_heads" in config):
        notes.append(
            f"{path.name} does not record its number of heads; assuming {arch['num_heads']} "
            "(64 dims per head, as in every standard ViT; override with --num-heads)"
        )
    return Pretrained(
        source, layout, state, arch, mean or list(IMAGENET_MEAN), std or list(IMAGENET_STD), crop_pct or 0.875, notes
    )


def load_pretrained(source: str, num_heads: int | None = None) -> Pretrained:
    """Resolve ``source`` (see the module docstring) into converted weights and their architecture.

    ``num_heads`` overrides the head count, which a bare state dict does not record.
    """
    kind, sep, rest = source.partition(":")
    if sep and kind == "timm":
        found = _from_timm(source, rest)
    elif sep and kind == "torchvision":
        found = _from_torchvision(source, rest)
    elif sep and kind == "hf":
        found = _from_hf(source, rest, num_heads)
    else:
        path = Path(source)
        if path.is_dir():
            candidates = [
                path / n for n in ("best.safetensors", "backbone.safetensors", "model.safetensors", "pytorch_model.bin")
            ]
            found_file = next((c for c in candidates if c.is_file()), None)
            if found_file is None:
                raise PretrainedError(
                    f"--pretrained {source}: a folder without best.safetensors (a vitrain run) "
                    "or model.safetensors / pytorch_model.bin (a Hugging Face model)"
                )
            path = found_file
        elif not path.is_file():
            raise PretrainedError(
                f"--pretrained {source}: no such file, and not timm:NAME, torchvision:NAME or hf:ORG/NAME"
            )
        elif path.suffix not in WEIGHT_SUFFIXES:
            raise PretrainedError(f"--pretrained {source}: expected a {', '.join(WEIGHT_SUFFIXES)} file")
        found = _from_file(source, path, num_heads=num_heads)
    if num_heads:
        found.arch["num_heads"] = num_heads
    return found
