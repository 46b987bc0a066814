"""The JAX backend (``--backend jax``): the Flax ViT trained with optax in one jitted step.

It implements :class:`~vitrain.engine.backend.Backend`, so :func:`~vitrain.engine.train.train`
runs the same loop, time-budget planner, run folder and report as with PyTorch. The model
starts from the same weights as the PyTorch backend would (the PyTorch model is built,
pretrained weights and ``--freeze`` included, and converted), and every checkpoint is
written in the PyTorch model's names and layouts, so ``vitrain eval``, ``predict``,
``export`` and ``--pretrained`` read a JAX run unchanged.

Batches come from vitrain's loaders (augmented on the CPU, MixUp/CutMix included) as numpy
arrays. The step (forward, loss, gradient, clipping, the optax update, the EMA) is one
``jax.jit`` function with no host round trip inside it: the learning rate of the step comes
in as an argument (the PyTorch backend's schedule, computed on the host), a batch whose
gradient is not finite leaves the weights as they were (decided on the device), and the
dropout key is derived from ``--seed``, the epoch and the step. Several local devices share
each step (a ``Mesh`` over the batch axis, the weights replicated): ``--batch-size`` images per
device, as per process under torchrun, and XLA averages the gradients over the devices.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from ..checkpoint import CheckpointError, CheckpointWriter
from ..config import ConfigError, TrainConfig
from ..data.sources import DataSplits
from ..models.pretrained import Pretrained
from . import distributed
from .backend import Speed, StepResult
from .build import build_model
from .distributed import Dist
from .evaluate import EvalResult, evaluate_logits
from .optim import EMA_WARMUP, Schedule, layer_id, param_groups, schedule_for
from .precision import Precision
from .torch_backend import build_batch_mix, class_weights, first_batches, forever

# steps the speed probe does not count: the first compiles, and XLA's CPU steps take a few more to reach speed
WARMUP_STEPS = 5
# dropout's random bits come from XLA's RngBitGenerator, keyed by threefry: the tutorial step ran 12% faster than
# with threefry bits on a 2-core CPU, and the masks stay the same however the batch is split among devices (tested)
PRNG = "rbg"
INSTALL = "the JAX backend needs JAX, Flax and optax: pip install 'vitrain[jax]'"


def import_jax():
    """``jax``, or a :class:`ConfigError` that says how to install the JAX backend."""
    try:
        import jax
        import optax  # noqa: F401
        from flax import nnx  # noqa: F401
    except ImportError:
        raise ConfigError(f"--backend jax: {INSTALL}") from None
    if not jax.config.jax_compilation_cache_dir:  # unless JAX_COMPILATION_CACHE_DIR names one
        # compiled steps are kept on disk: a resumed or repeated run with the same shapes skips compiling
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vitrain" / "jax"
        jax.config.update("jax_compilation_cache_dir", str(cache))
    return jax


def jax_devices(setting: str) -> list:
    """The devices ``--device`` names for JAX, in every process: auto (JAX's default platform), cpu, cuda or cuda:N."""
    jax = import_jax()
    if setting == "auto":
        return jax.devices()
    platform, _, index = setting.partition(":")
    try:
        devices = jax.devices("cpu" if platform == "cpu" else "gpu")
    except RuntimeError:
        raise ConfigError(f"--device {setting}: JAX has no {platform} device here (use --device cpu)") from None
    if index and jax.process_count() > 1:
        raise ConfigError(f"--device {setting}: under torchrun each process uses its own devices (use --device cuda)")
    return [devices[int(index)]] if index else devices


def local_devices(setting: str) -> list:
    """This process's share of :func:`jax_devices`."""
    jax = import_jax()
    return [d for d in jax_devices(setting) if d.process_index == jax.process_index()]


def jax_precision(setting: str, platform: str) -> Precision:
    """``--precision`` for the Flax model: bf16 on GPUs and TPUs (auto), never by itself on a CPU, where XLA
    does not use bf16 matrix units (``benchmarks/jax_profile.py``: its bf16 products are no faster)."""
    if setting == "fp32":
        return Precision(None, setting, "--precision fp32")
    if setting == "bf16":
        return Precision(torch.bfloat16, setting, "--precision bf16: the Flax model computes in bfloat16")
    if platform in ("gpu", "tpu"):
        return Precision(torch.bfloat16, setting, f"auto: a {platform.upper()}; the Flax model computes in bfloat16")
    return Precision(None, setting, "auto: on a CPU, XLA's bf16 matrix products are no faster than float32")


def join_processes(place: Dist, setting: str = "auto") -> None:
    """Under torchrun, start JAX's distributed runtime: process ``place.rank`` of ``place.world``.

    Rank 0 picks a free port on its host (``MASTER_ADDR``) for JAX's coordinator and tells the
    others over the PyTorch process group, which vitrain keeps for its own bookkeeping. Each
    process brings its local devices (with several processes on a node, the GPU of its local
    rank, unless ``--device`` (``setting``) is cpu); the training step's gradients are then averaged
    over every device of every process. On CPUs the collectives go over gloo.
    """
    jax = import_jax()
    if not place.active or jax.distributed.is_initialized():
        return
    import socket

    import torch.distributed as dist

    port = [None]
    if place.main:
        with socket.socket() as probe:
            probe.bind(("", 0))
            port[0] = probe.getsockname()[1]
    dist.broadcast_object_list(port, src=0)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    jax.distributed.initialize(
        f"{os.environ.get('MASTER_ADDR', '127.0.0.1')}:{port[0]}",
        num_processes=place.world,
        process_id=place.rank,
        local_device_ids=[place.local_rank] if per_node > 1 and _uses_gpu(setting) else None,
    )


def _uses_gpu(setting: str) -> bool:
    """Whether ``--device`` means GPUs for JAX, asked before JAX starts (which would fix its devices):
    cuda, or auto with JAX's CUDA plugin installed."""
    import importlib.util

    if setting != "auto":
        return setting.startswith("cuda")
    names = ("jax_cuda12_plugin", "jax_cuda12_pjrt", "jax_cuda13_plugin", "jax_cuda13_pjrt")
    return any(importlib.util.find_spec(name) for name in names)


def _cross_entropy(jnp, logits, targets, weight, smoothing: float):
    """``torch.nn.functional.cross_entropy`` (mean), for int labels or soft targets, with class weights."""
    logp = logits - logits.max(axis=1, keepdims=True)
    logp = logp - jnp.log(jnp.exp(logp).sum(axis=1, keepdims=True))
    n_classes = logits.shape[1]
    w = jnp.ones(n_classes) if weight is None else weight
    if targets.ndim == 2:  # soft targets (MixUp/CutMix): the mean over images
        soft = targets * (1 - smoothing) + smoothing / n_classes
        return -(soft * logp * w).sum(axis=1).mean()
    picked = jnp.take_along_axis(logp, targets[:, None], axis=1)[:, 0]
    norm = w[targets].sum()  # a weighted mean, as PyTorch takes it
    nll = -(w[targets] * picked).sum() / norm
    if not smoothing:
        return nll
    return (1 - smoothing) * nll + smoothing / n_classes * (-(logp * w).sum() / norm)


def build_transformation(cfg: TrainConfig, names: Any, params: Any, trainable_names: set[str], depth: int):
    """The optax transformation of ``--optimizer`` over ``params`` (``names``: their PyTorch names, the same tree).

    As the PyTorch backend's parameter groups: weight decay only on matrices and kernels (not
    biases, norms, tokens or position embeddings), ``--layer-decay`` and ``--head-lr`` as a
    per-parameter factor on the update, frozen parameters never updated. The learning rate
    is a hyperparameter set before every step (``optax.inject_hyperparams``).
    """
    import jax
    import optax

    skip = {"pos_embed", "cls_token", "dist_token"}
    decay = jax.tree.map(lambda n, p: p.ndim >= 2 and n not in skip, names, params)
    per_group = cfg.layer_decay < 1 or cfg.head_lr is not None

    def factor(name: str) -> float:
        if name not in trainable_names:
            return 0.0
        if not per_group:
            return 1.0
        if cfg.head_lr is not None and name.startswith(("head.", "head_dist.")):
            return cfg.head_lr / cfg.lr
        layer = layer_id(name, depth) if cfg.layer_decay < 1 else depth + 1
        return cfg.layer_decay ** (depth + 1 - layer)

    factors = jax.tree.map(factor, names)

    def make(learning_rate):
        b1, b2 = cfg.betas
        if cfg.optimizer == "adamw":
            inner = optax.adamw(learning_rate, b1, b2, cfg.eps, weight_decay=cfg.weight_decay, mask=decay)
        else:  # Adam and SGD add the weight decay to the gradient (L2), as torch.optim does
            core = (
                optax.adam(learning_rate, b1, b2, cfg.eps)
                if cfg.optimizer == "adam"
                else optax.sgd(learning_rate, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
            )
            inner = optax.chain(optax.add_decayed_weights(cfg.weight_decay, decay), core)
        scale = optax.stateless(lambda updates, _: jax.tree.map(lambda u, f: u * f, updates, factors))
        return optax.chain(inner, scale)

    return optax.inject_hyperparams(make)(learning_rate=cfg.lr)


class JaxBackend:
    """A ViT trained with JAX, as ``cfg`` says (see the module docstring)."""

    compiled = True  # the first epoch also compiles the step
    compiling = None  # jax.jit always compiles; --compile is torch.compile's
    saves_inside = False  # commits at the end of each epoch only

    def __init__(
        self,
        cfg: TrainConfig,
        splits: DataSplits,
        device: torch.device,
        place: Dist,
        pretrained: Pretrained | None = None,
    ) -> None:
        jax = import_jax()
        import jax.numpy as jnp
        import optax
        from flax import nnx
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        from ..models.vit_flax import FlaxViT, load_torch_state, torch_names

        self.cfg, self.place, self.jax, self.jnp, self.nnx = cfg, place, jax, jnp, nnx
        self.devices = jax_devices(cfg.device)  # of every process (under torchrun)
        self.local = local_devices(cfg.device)
        # --batch-size is per device, as it is per process under torchrun: this process's loader delivers its
        # devices' share of each global batch, and the step computes on the whole global batch
        self.process_batch = cfg.batch_size * len(self.local)
        mesh = Mesh(np.array(self.devices), ("data",))
        self.batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
        self.replicated = NamedSharding(mesh, PartitionSpec())
        # evaluation runs on this process's devices only (each rank evaluates its shard, as with PyTorch)
        local_mesh = Mesh(np.array(self.local), ("data",))
        self.local_batch = NamedSharding(local_mesh, PartitionSpec("data"))
        self.local_replicated = NamedSharding(local_mesh, PartitionSpec())
        platform = self.devices[0].platform
        self.precision = jax_precision(cfg.precision, platform)
        self.dtype = jnp.bfloat16 if self.precision.dtype else jnp.float32
        # the PyTorch model gives the initial (or pretrained) weights, the names and the checkpoints' format
        self.model = build_model(cfg, pretrained, splits)
        flax_model = FlaxViT(self.model.config, nnx.Rngs(cfg.seed), self.dtype)
        load_torch_state(flax_model, self.model.state_dict())
        trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
        if self.model.config.stem == "conv":  # a frozen stem's BatchNorm keeps its statistics, as in PyTorch
            flax_model.patch_embed.frozen = not any(".stem." in n for n in trainable)
        self.names = torch_names(flax_model)
        self.graphdef, params, rest = nnx.split(flax_model, nnx.Param, ...)
        flat = nnx.to_flat_state(params)
        self.name_tree = nnx.from_flat_state([(p, v.replace(self.names[p])) for p, v in flat])
        self.trainable = trainable
        self.trainable_mask = jax.tree.map(lambda n: float(n in trainable), self.name_tree)
        self.amp_dtype = None  # the final evaluation reads best.safetensors, in float32
        self.num_classes = len(cfg.classes)
        self.n_train = len(splits.train)
        weight = class_weights(cfg, splits, torch.device("cpu"))
        self.loss_weight = None if weight is None else jnp.asarray(weight.numpy())
        self.batch_mix = build_batch_mix(cfg, self.num_classes)
        self.description = (
            f"JAX on {len(self.devices)} {platform} device(s)"
            + (f" in {jax.process_count()} processes" if jax.process_count() > 1 else "")
            + (" (bf16)" if self.dtype == jnp.bfloat16 else "")
            + (f", EMA {cfg.ema:g}" if cfg.ema else "")
        )
        self.state: dict[str, Any] = self._replicate({"params": params, "rest": rest})
        self.schedule: Schedule | None = None
        self.sched_step = 0  # optimizer steps so far: the schedule's position
        self.epoch_key: Any = jax.random.key(cfg.seed, impl=PRNG)
        self.epoch_step = 0
        # lr() reports the rate of the PyTorch backend's first parameter group, as its metrics.csv does
        first = param_groups(self.model, cfg.weight_decay, cfg.lr, cfg.layer_decay, cfg.head_lr)[0]
        self.lr_scale = first.get("lr", cfg.lr) / cfg.lr
        self.tx = build_transformation(cfg, self.name_tree, params, trainable, self.model.config.depth)
        self._step = jax.jit(self._train_step, donate_argnums=(0,))
        self._logits = jax.jit(self._eval_logits)
        self._norm = jax.jit(optax.tree.norm)

    # ---------------------------------------------------------------- the run

    def start(self, total_steps: int, steps_per_epoch: int) -> None:
        """Build the schedule, the optax state and the EMA."""
        cfg = self.cfg
        self.schedule = schedule_for(cfg, total_steps)
        self.state = self._fresh_state(self.state)

    def _replicate(self, tree: Any) -> Any:
        """Host values (or arrays of one device) as arrays replicated on every device of every process."""
        return self.jax.device_put(self.jax.tree.map(np.asarray, tree), self.replicated)

    def _fresh_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """``state``'s weights with a new optax state (and EMA)."""
        jax, params = self.jax, state["params"]
        fresh = {"params": params, "rest": state["rest"], "opt": self._replicate(jax.jit(self.tx.init)(params))}
        if self.cfg.ema:
            fresh["ema"] = jax.tree.map(lambda a: a.copy(), {"params": params, "rest": state["rest"]})
            fresh["ema_count"] = self._replicate(np.int32(0))
        return fresh

    def start_epoch(self, epoch: int) -> None:
        """Dropout keys from (seed, epoch); MixUp/CutMix (torch, on the CPU) seeded as in the PyTorch backend."""
        from .torch_backend import epoch_seed

        torch.manual_seed(epoch_seed(self.cfg.seed, epoch) + self.place.rank)  # each rank mixes its own slice
        self.epoch_key = self.jax.random.fold_in(self.jax.random.key(self.cfg.seed, impl=PRNG), epoch)
        self.epoch_step = 0

    def _loss(self, params, rest, images, targets, labels, key):
        nnx = self.nnx
        # new Variables of this trace: BatchNorm updates its statistics in place while training
        model = nnx.merge(self.graphdef, params, rest, copy=True)
        logits = model(images, train=True, rngs=nnx.Rngs(dropout=key))
        loss = _cross_entropy(self.jnp, logits, targets, self.loss_weight, self.cfg.label_smoothing)
        _, _, new_rest = nnx.split(model, nnx.Param, ...)
        return loss, ((logits.argmax(axis=1) == labels).sum(), new_rest)

    def _train_step(self, state, images, targets, labels, lr, epoch_key, step):
        """The jitted step: gradient, clipping (as ``clip_grad_norm_``), the optax update, the EMA."""
        import optax

        jax, jnp, cfg = self.jax, self.jnp, self.cfg
        key = jax.random.fold_in(epoch_key, step)
        grad_fn = jax.value_and_grad(self._loss, has_aux=True)
        (loss, (correct, rest)), grads = grad_fn(state["params"], state["rest"], images, targets, labels, key)
        grads = jax.tree.map(lambda g, t: g * t, grads, self.trainable_mask)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(grad_norm) & jnp.isfinite(loss)
        if cfg.clip_grad > 0:
            coef = jnp.minimum(cfg.clip_grad / (grad_norm + 1e-6), 1.0)
            grads = jax.tree.map(lambda g: g * coef, grads)
        opt = state["opt"]
        opt = opt._replace(hyperparams={**opt.hyperparams, "learning_rate": lr})
        updates, new_opt = self.tx.update(grads, opt, state["params"])
        params = optax.apply_updates(state["params"], updates)
        # a batch whose gradient is not finite changes nothing (the schedule still advances)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        new = {"params": keep(params, state["params"]), "rest": keep(rest, state["rest"]), "opt": keep(new_opt, opt)}
        if "ema" in state:  # as the PyTorch backend: the first update copies the weights, then a warmed-up decay
            count = state["ema_count"]
            d = jnp.minimum(cfg.ema, (1.0 + count) / (EMA_WARMUP + count))  # optim.ema_decay
            current = {"params": new["params"], "rest": new["rest"]}
            ema = jax.tree.map(lambda e, p: jnp.where(count == 0, p, d * e + (1 - d) * p), state["ema"], current)
            new["ema"], new["ema_count"] = keep(ema, state["ema"]), jnp.where(finite, count + 1, count)
        return new, loss, correct, grad_norm, finite

    def _batch(self, array: np.ndarray):
        """This process's slice of a global batch, as the global array the step computes on."""
        return self.jax.make_array_from_process_local_data(self.batch_sharding, array)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> StepResult:
        """One jitted step on a CPU batch (mixed first, with torch, when MixUp/CutMix is on)."""
        self.state, result = self._apply(self.state, images, labels, self.cfg.lr * self.schedule(self.sched_step))
        self.sched_step += 1
        if self.cfg.skip_nonfinite > 0:  # batches may be skipped: the loop needs to know at once
            result.finite = bool(result.finite)
        return result

    def _apply(self, state: dict[str, Any], images: torch.Tensor, labels: torch.Tensor, lr: float):
        targets = labels
        if self.batch_mix is not None:
            images, targets = self.batch_mix(images, labels)
        batch = [self._batch(t.numpy()) for t in (images, targets, labels)]
        key, step = self.epoch_key, np.int32(self.epoch_step)
        state, loss, correct, grad_norm, finite = self._step(state, *batch, np.float32(lr), key, step)
        self.epoch_step += 1
        if not self.place.main:  # the loop sums the ranks' counts; rank 0's is already the global batch's
            correct = 0
        return state, StepResult(loss, correct, grad_norm, finite, labels.shape[0])

    def _evaluated(self) -> dict[str, Any]:
        return self.state["ema"] if "ema" in self.state else self.state

    def _eval_logits(self, params, rest, images):
        return self.nnx.merge(self.graphdef, params, rest)(images, train=False)

    def evaluate(self, batches: Iterable) -> EvalResult:
        """The evaluated model (the EMA with ``--ema``) over ``batches`` (this rank's shard under torchrun),
        on this process's devices; a batch is padded to a multiple of them."""
        jax, tree = self.jax, self._evaluated()
        if self.place.active:  # a copy on this process's devices: the ranks' shards differ in size
            tree = jax.device_put(jax.tree.map(lambda a: a.addressable_data(0), tree), self.local_replicated)
        n_devices, size = len(self.local), None

        def logits_of(images: torch.Tensor) -> torch.Tensor:
            nonlocal size
            images, n = images.numpy(), len(images)
            size = size or -(-n // n_devices) * n_devices  # the first batch's size, divided among the devices
            if n < size:
                images = np.concatenate([images, np.zeros((size - n, *images.shape[1:]), images.dtype)])
            logits = self._logits(tree["params"], tree["rest"], jax.device_put(images, self.local_batch))
            return torch.from_numpy(np.array(logits)[:n])

        return evaluate_logits(logits_of, batches, torch.device("cpu"), self.num_classes, self.place)

    def lr(self) -> float:
        """The learning rate of the next step (of the first parameter group, as in the PyTorch backend)."""
        return self.cfg.lr * self.lr_scale * self.schedule(self.sched_step)

    def replan(self, total_steps: int, step: int | None = None) -> None:
        """A new length for the schedule; with ``step``, it continues from that step."""
        if step is not None:
            self.sched_step = step
        self.schedule.total = total_steps

    # ---------------------------------------------------------------- the planner's probe

    def measure(self, loaders: dict[str, Any], seconds: float) -> Speed:
        """Time steps on a copy of the state (the first few compile and warm up and are not counted, at most 200),
        three validation batches (after one that compiles), and writing a checkpoint and a state once."""
        jax = self.jax
        probe = self._fresh_state(jax.tree.map(lambda a: a.copy(), self.state))
        images, labels = next(iter(loaders["train"]))
        short = 0 if len(self.devices) > 1 else self.n_train % self.process_batch  # several devices: dropped
        if short:  # an epoch's short last batch needs a step of its own: compiled now, as the plan is made
            probe, _ = self._apply(probe, images[:short], labels[:short], self.cfg.lr)
        steps, timed, t0 = 0, 0.0, 0.0
        for images, labels in forever(loaders["train"]):
            if len(labels) != self.process_batch:
                continue
            probe, result = self._apply(probe, images, labels, self.cfg.lr)
            float(result.loss)  # wait for the device
            steps += 1
            if steps == WARMUP_STEPS:
                t0 = time.perf_counter()
            elif steps > WARMUP_STEPS:
                timed = time.perf_counter() - t0
                # every process takes part in every step: they stop together, when one of them would
                if distributed.any_rank(timed >= seconds or steps >= 200, self.place, torch.device("cpu")):
                    break
        self.evaluate(first_batches(loaders["val"], 1))  # compiles
        t0 = time.perf_counter()
        self.evaluate(first_batches(loaders["val"], 3))
        val_batch = (time.perf_counter() - t0) / min(3, len(loaders["val"]))
        real, self.state = self.state, probe
        with tempfile.TemporaryDirectory() as tmp, CheckpointWriter(background=False) as files:
            t0 = time.perf_counter()
            self.save_weights(files, Path(tmp) / "m.safetensors", 0)
            files.save_state(Path(tmp) / "s.safetensors", self.state_dict())
            checkpoint = time.perf_counter() - t0
        self.state = real
        return Speed(step=timed / (steps - WARMUP_STEPS), val_batch=val_batch, checkpoint=checkpoint)

    # ---------------------------------------------------------------- files

    def _torch_weights(self, tree: dict[str, Any]) -> dict[str, torch.Tensor]:
        from ..models.vit_flax import state_to_torch

        arrays = state_to_torch([tree["params"], tree["rest"]], self.names)
        return {name: torch.from_numpy(np.array(a)) for name, a in arrays.items()}

    def state_dict(self) -> dict[str, Any]:
        """The weights (PyTorch names and layouts), the optax state, the schedule and the EMA."""
        jax = self.jax
        leaves = jax.tree_util.tree_flatten_with_path(self.state["opt"])[0]
        optimizer = {jax.tree_util.keystr(path): torch.from_numpy(np.array(leaf)) for path, leaf in leaves}
        state = {
            "model": self._torch_weights(self.state),
            "optimizer": optimizer,
            "scheduler": {
                "step": self.sched_step,
                "schedule": dataclasses.asdict(self.schedule) if self.schedule else None,
            },
        }
        if "ema" in self.state:
            state["ema"] = {**self._torch_weights(self.state["ema"]), "n_averaged": int(self.state["ema_count"])}
        return state

    def load_state_dict(self, state: dict[str, Any], source: str) -> None:
        """Continue from :meth:`state_dict` as saved in ``source``."""
        jax = self.jax
        try:
            self.state["params"], self.state["rest"] = self._from_torch(state["model"])
            leaves, treedef = jax.tree_util.tree_flatten_with_path(self.state["opt"])
            saved = state["optimizer"]
            values = []
            for path, leaf in leaves:
                value = saved[jax.tree_util.keystr(path)].numpy()
                if value.shape != np.shape(leaf):
                    raise ValueError(f"{jax.tree_util.keystr(path)} has shape {value.shape}, not {np.shape(leaf)}")
                values.append(value.astype(np.asarray(leaf).dtype))
            self.state["opt"] = jax.device_put(jax.tree_util.tree_unflatten(treedef, values), self.replicated)
            self.sched_step = state["scheduler"]["step"]
            self.schedule = Schedule(**state["scheduler"]["schedule"])
            if "ema" in self.state:
                ema = dict(state["ema"])
                self.state["ema_count"] = jax.device_put(np.int32(ema.pop("n_averaged")), self.replicated)
                params, rest = self._from_torch(ema)
                self.state["ema"] = {"params": params, "rest": rest}
        except (KeyError, ValueError, TypeError) as err:
            raise CheckpointError(f"{source}: not the state of a JAX run of this configuration ({err})") from None

    def _from_torch(self, weights: dict[str, Any]) -> tuple[Any, Any]:
        from ..models.vit_flax import load_torch_state

        # a copy: merge() would otherwise adopt the state's Variable objects, which load_torch_state sets,
        # and self.state (and an EMA loaded after it) would share their arrays
        model = self.nnx.merge(self.graphdef, self.state["params"], self.state["rest"], copy=True)
        load_torch_state(model, weights)
        _, params, rest = self.nnx.split(model, self.nnx.Param, ...)
        return self.jax.device_put((params, rest), self.replicated)

    def save_weights(self, files: CheckpointWriter, path: Path, epoch: int) -> None:
        """The evaluated model, converted to the PyTorch model, as a self-describing checkpoint."""
        missing, unexpected = self.model.load_state_dict(self._torch_weights(self._evaluated()), strict=False)
        if unexpected or any(not name.endswith("num_batches_tracked") for name in missing):
            raise RuntimeError(f"the JAX model's weights do not match the PyTorch model's: {missing or unexpected}")
        files.save_model(path, self.model, epoch=epoch)

    def epoch_scalars(self) -> dict[str, float]:
        """The evaluated model's parameter norm (computed on this process's copy: only rank 0 asks)."""
        params = self.jax.tree.map(lambda a: a.addressable_data(0), self._evaluated()["params"])
        return {"param_norm": float(self._norm(params))}
