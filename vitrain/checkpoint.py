"""Self-describing safetensors checkpoints and the pickle-free resumable training state.

A model checkpoint's metadata holds everything needed to rebuild and use the model:
``{"format": "vitrain", "arch": {...ViTConfig...}, "classes": [...], "img_size",
"in_chans", "mean", "std", "crop_pct", ...}``. Every write goes to a temporary file in the
same folder, is flushed to disk and then renamed over the target, so a crash leaves
either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save as safetensors_bytes

from .models.vit import VisionTransformer, ViTConfig
from .models.weights import (  # noqa: F401 - part of this module's interface
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    load_weights,
    read_model_checkpoint,
    read_tensors,
)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a synced temporary file and an atomic rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)  # the old file at ``path`` is untouched
        if isinstance(err, OSError) and err.filename is None:  # say which file could not be written
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # pragma: no cover - some filesystems cannot sync folders
        pass


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete the temporary files that :func:`atomic_write_bytes` leaves when a process is killed
    mid-write (``.NAME.XXXX.tmp``); the files they were to replace are intact. Returns what was removed."""
    stale = sorted(Path(folder).glob(".*.tmp")) if Path(folder).is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _snapshot(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies on the CPU that training can no longer change (safetensors also refuses shared or
    non-contiguous storage: checkpoints own their bytes)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata=metadata))


def model_metadata(model: VisionTransformer, **meta: Any) -> dict[str, Any]:
    """The metadata dict for ``model``: its architecture plus ``meta`` (classes, preprocessing)."""
    cfg = model.config
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": cfg.to_dict(),
        "img_size": cfg.img_size,
        "in_chans": cfg.in_chans,
        **model.meta,
        **meta,
    }


def _model_file(model: VisionTransformer, meta: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    return _snapshot(model.state_dict()), {"vitrain": json.dumps(model_metadata(model, **meta))}


def save_model(path: str | Path, model: VisionTransformer, **meta: Any) -> None:
    """Save weights and self-description; ``meta`` adds to (or overrides) ``model.meta``."""
    _write_tensors(Path(path), *_model_file(model, meta))


def model_from_checkpoint(path: str | Path) -> VisionTransformer:
    """Rebuild the model described by a vitrain checkpoint and load its weights."""
    tensors, meta = read_model_checkpoint(path)
    try:
        config = ViTConfig(**meta["arch"])
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{path}: invalid architecture in metadata ({err})") from None
    model = VisionTransformer(config)
    load_weights(model, tensors, str(path))
    model.meta = {k: v for k, v in meta.items() if k not in ("format", "format_version", "arch")}
    return model


def resolve_checkpoint_path(source: str | Path) -> Path:
    """A checkpoint file, or a run folder (its ``best.safetensors``, else ``last.safetensors``)."""
    path = Path(source).expanduser()
    if path.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: a folder without best.safetensors or last.safetensors")
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or run folder")
    return path


def load_model(source: str | Path) -> VisionTransformer:
    """Load a trained model from a vitrain checkpoint file or run folder, in eval mode.

    Class names and preprocessing are on ``model.meta``. (Foreign pretrained weights are
    read through :mod:`vitrain.models.convert`.)
    """
    path = resolve_checkpoint_path(source)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: unknown checkpoint format (vitrain checkpoints are .safetensors)")
    return model_from_checkpoint(path).eval()


# ------------------------------------------------------------------ resumable training state


def _flatten(obj: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    """Replace every tensor in a nested structure by a reference into ``tensors``."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        if not all(isinstance(k, (str, int)) for k in obj):
            raise TypeError(f"cannot store dict keys of type {[type(k) for k in obj]}")
        # JSON keys are strings: remember which were ints (optimizer state is keyed by int)
        return {"__dict__": [[k, _flatten(v, tensors, f"{prefix}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix} in the training state")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        return {k: _unflatten(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Save a nested dict of tensors and plain values (model, optimizer, RNG ...) atomically.

    Tensors go into safetensors, everything else into its JSON metadata: nothing is pickled.
    """
    _write_tensors(Path(path), *_state_file(state))


def _state_file(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, tensors, "s")
    return _snapshot(tensors), {"vitrain_state": json.dumps(skeleton)}


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a training state written by :func:`save_state`."""
    tensors, raw = read_tensors(Path(path))
    if "vitrain_state" not in raw:
        raise CheckpointError(f"{path}: not a vitrain training state")
    return _unflatten(json.loads(raw["vitrain_state"]), tensors)


class CheckpointWriter:
    """Writes a run's checkpoint files on one background thread, in the order they were asked for.

    Each call copies what it saves (weights, optimizer state, the history) before it returns,
    so training goes on changing them; serializing, writing, syncing and renaming happen on
    the thread. Every file is still written atomically, so a crash leaves the old file or the
    new one; the state file, asked for last, stays the commit point of an epoch. At most
    ``max_pending`` writes wait (about an epoch's worth): the next call blocks until the
    oldest is done. A write that fails is raised, naming its file, by the next call, by
    :meth:`wait` or by :meth:`close`. ``background=False`` writes in the calling thread,
    which is what training does on the CPU (``vitrain.engine.train.writes_behind``). Used as a
    context manager, it closes on the way out: with :meth:`close_after_error` (which reports
    through ``log``) when an error is leaving the block.
    """

    def __init__(self, background: bool = True, max_pending: int = 4, log: Callable[[str], None] = print) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="vitrain-checkpoint") if background else None
        self._pending: list[Future] = []
        self._max_pending = max_pending
        self._log = log

    def save_model(self, path: str | Path, model: VisionTransformer, **meta: Any) -> None:
        """:func:`save_model`, written behind the caller."""
        self._submit(_write_tensors, Path(path), *_model_file(model, meta))

    def save_state(self, path: str | Path, state: dict[str, Any]) -> None:
        """:func:`save_state`, written behind the caller."""
        self._submit(_write_tensors, Path(path), *_state_file(state))

    def write_bytes(self, path: str | Path, data: bytes) -> None:
        """:func:`atomic_write_bytes`, written behind the caller."""
        self._submit(atomic_write_bytes, Path(path), data)

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        self._reap(block=len(self._pending) >= self._max_pending)
        if self._pool is None:
            fn(*args)
        else:
            self._pending.append(self._pool.submit(fn, *args))

    def _reap(self, block: bool, everything: bool = False) -> None:
        """Drop finished writes (raising the first failure); with ``block``, wait for the oldest
        (with ``everything``, for all of them) first."""
        while self._pending and (everything or block or self._pending[0].done()):
            self._pending.pop(0).result()
            block = False

    def wait(self) -> None:
        """Block until every write asked for so far is on disk; raise the first that failed."""
        self._reap(block=True, everything=True)

    def close(self) -> None:
        """Finish the writes asked for, stop the thread, and raise the first write that failed."""
        errors = self._finish()
        if errors:
            raise errors[0]

    def close_after_error(self) -> None:
        """Close while another error is on its way (an interrupt, a crash in training): the writes
        asked for are still finished, so the run resumes from its last epoch; failed ones are logged."""
        for err in self._finish():
            self._log(f"warning: a checkpoint write failed too: {err}")

    def _finish(self) -> list[BaseException]:
        errors = []
        while self._pending:
            err = self._pending.pop(0).exception()
            if err is not None:
                errors.append(err)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        return errors

    def __enter__(self) -> "CheckpointWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.close_after_error()


__all__ = [
    "CheckpointError",
    "CheckpointWriter",
    "load_model",
    "load_state",
    "model_from_checkpoint",
    "read_model_checkpoint",
    "resolve_checkpoint_path",
    "save_model",
    "save_state",
]
