"""Meshes and the one sharding rules table: every array on the mesh (params, optimizer state, batches, KV cache)
gets its `NamedSharding` from `RULES` (logical axis → mesh axes), so 1 or N devices, FSDP or data parallel, or a
tensor axis is a `MeshConfig` change. Mesh axes: `data` (batch split), `fsdp` (batch split and params sharded,
ZeRO-3), `tensor` (head/MLP/vocab dims split). A mesh axis that does not divide a dimension is dropped from it,
so tiny models run on big meshes; `explain()` shows the result. Axis types are Auto."""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxchat.config import MeshConfig

MESH_AXES = ("data", "fsdp", "tensor")


@dataclass(frozen=True)
class Rules:
    """Logical axis → mesh axis (or tuple of axes, or None = replicated)."""

    table: tuple[tuple[str, object], ...] = (
        ("batch", ("data", "fsdp")),
        ("seq", None),
        ("vocab", "tensor"),
        ("embed", "fsdp"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
        ("mlp", "tensor"),
        ("layers", None),
        ("scalar", None),  # master's per-layer scalars and small gates: replicated
        ("ns_layers", ("data", "fsdp", "tensor")),  # Muon's Newton–Schulz: whole matrices, layers split
        ("cache_batch", ("data", "fsdp")),
        ("cache_seq", None),
        ("cache_heads", "tensor"),
        ("head_dim", None),
        # activations: batch split like the data, model dims split over `tensor` only
        ("act_embed", None),
        ("act_heads", "tensor"),
        ("act_mlp", "tensor"),
        ("act_vocab", "tensor"),
    )

    def __getitem__(self, name):
        for k, v in self.table:
            if k == name:
                return v
        raise KeyError(f"no sharding rule for logical axis {name!r}; known: {[k for k, _ in self.table]}")


RULES = Rules()

CACHE_LAYER_AXES = ("cache_batch", "cache_heads", "cache_seq", "head_dim")  # each layer's k / v


def make_mesh(cfg: MeshConfig = MeshConfig(), devices=None) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh over `devices` (default: all), with Auto axis types."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    fill = [i for i, s in enumerate(sizes) if s == -1]
    if len(fill) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {cfg}")
    known = math.prod(s for s in sizes if s != -1)
    if fill:
        if n % known:
            raise ValueError(f"{n} devices cannot be split as {cfg}")
        sizes[fill[0]] = n // known
    if math.prod(sizes) != n:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, have {n}")
    arr = np.array(devices).reshape(sizes)
    kw = {}
    if hasattr(jax.sharding, "AxisType"):
        kw["axis_types"] = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return Mesh(arr, MESH_AXES, **kw)


def spec_for(axes: tuple, shape: tuple, mesh: Mesh, rules: Rules = RULES) -> P:
    """PartitionSpec for an array with these logical axes, dropping mesh axes that do not divide a dim
    (or that an earlier dim already used)."""
    used: set[str] = set(getattr(mesh, "manual_axes", ()))  # inside shard_map those axes are already split
    out = []
    for name, dim in zip(axes, shape):
        target = rules[name] if name is not None else None
        if target is None:
            out.append(None)
            continue
        cand = (target,) if isinstance(target, str) else tuple(target)
        keep = []
        size = 1
        for ax in cand:
            if ax in used or mesh.shape[ax] == 1:
                continue
            if dim % (size * mesh.shape[ax]) == 0:
                keep.append(ax)
                size *= mesh.shape[ax]
        used.update(keep)
        out.append(None if not keep else keep[0] if len(keep) == 1 else tuple(keep))
    return P(*out)


def constrain(x, axes: tuple, rules: Rules = RULES):
    """Pin an activation's layout (logical axes → the rules table) when traced under a mesh (`jax.set_mesh`);
    a no-op without one. Without these pins XLA may shard activations like the FSDP weights (along the
    model dim) and replicate the batch — every device would then compute the whole batch."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, spec_for(axes, x.shape, mesh, rules))


def scope(mesh: Mesh | None):
    """The one way code enters a mesh: `jax.set_mesh(mesh)` (so `constrain` sees it), or nothing for None."""
    return jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()


class in_mesh:
    """`fn` traced and called under `scope(mesh)`; `.lower()` too (for the compiled-program tests)."""

    def __init__(self, mesh, fn):
        self.mesh, self.fn = mesh, fn

    def __call__(self, *args, **kwargs):
        with scope(self.mesh):
            return self.fn(*args, **kwargs)

    def lower(self, *args, **kwargs):
        with scope(self.mesh):
            return self.fn.lower(*args, **kwargs)


def tree_shardings(axes_tree, shapes_tree, mesh: Mesh, rules: Rules = RULES):
    """NamedShardings for a tree of arrays given a parallel tree of logical-axes tuples."""
    is_axes = lambda x: isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x)  # noqa: E731
    return jax.tree.map(
        lambda ax, s: NamedSharding(mesh, spec_for(ax, tuple(s.shape), mesh, rules)),
        axes_tree, shapes_tree, is_leaf=is_axes,
    )


def batch_sharding(mesh: Mesh, ndim: int = 2, rules: Rules = RULES, leading: int = 0) -> NamedSharding:
    """Sharding for [*leading, B, T, ...] batches: B over the batch axes, everything else replicated."""
    batch = rules["batch"]
    spec = [None] * leading + [batch] + [None] * (ndim - 1 - leading)
    return NamedSharding(mesh, P(*spec))


def cache_shardings(cache, mesh: Mesh, rules: Rules = RULES):
    axes = {"k": [CACHE_LAYER_AXES] * len(cache["k"]), "v": [CACHE_LAYER_AXES] * len(cache["v"]),
            "pos": ("cache_batch",), **({"prev": ("cache_batch", "act_embed")} if "prev" in cache else {})}
    return tree_shardings(axes, cache, mesh, rules)


def batch_divisor(mesh: Mesh, rules: Rules = RULES) -> int:
    """How many ways the batch dim is split (global batch rows must be a multiple of this)."""
    b = rules["batch"]
    axes = (b,) if isinstance(b, str) else tuple(b or ())
    return math.prod(mesh.shape[a] for a in axes)


def init_sharded(init_fn, shardings, *args):
    """Create a pytree directly in its sharded layout: jit(init, out_shardings) never materialises it whole."""
    return jax.jit(init_fn, out_shardings=shardings)(*args)


def explain(axes_tree, shapes_tree, mesh: Mesh) -> str:
    """Human-readable table of each leaf's shape, logical axes and resulting PartitionSpec."""
    lines = []
    flat_axes = jax.tree_util.tree_flatten_with_path(
        axes_tree, is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x))[0]
    flat_shapes = jax.tree.leaves(shapes_tree)
    for (path, ax), s in zip(flat_axes, flat_shapes):
        name = jax.tree_util.keystr(path)
        lines.append(f"{name:28s} {str(tuple(s.shape)):22s} {str(ax):40s} {spec_for(ax, tuple(s.shape), mesh)}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# Multi-host


def maybe_initialize_distributed() -> bool:
    """`jax.distributed.initialize` when the environment describes a multi-process run: JAX_COORDINATOR_ADDRESS
    + JAX_NUM_PROCESSES + JAX_PROCESS_ID (+ JAX_LOCAL_DEVICE_IDS), or a SLURM job of several tasks (JAX detects
    the rest). Must run before any other JAX call. True when it initialised."""
    if getattr(maybe_initialize_distributed, "_done", False):
        return True
    env, kwargs = os.environ, {}
    if env.get("JAX_COORDINATOR_ADDRESS"):
        kwargs = dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"], process_id=int(env.get("JAX_PROCESS_ID", "0")),
                      num_processes=int(env.get("JAX_NUM_PROCESSES", "1")))
        if env.get("JAX_LOCAL_DEVICE_IDS"):
            kwargs["local_device_ids"] = [int(x) for x in env["JAX_LOCAL_DEVICE_IDS"].split(",")]
        if kwargs["num_processes"] <= 1:
            return False
    elif not (int(env.get("SLURM_NTASKS", "1")) > 1 and env.get("SLURM_JOB_ID")):
        return False
    # CPU processes exchange collectives through gloo (GPU/TPU backends use their own interconnect).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    maybe_initialize_distributed._done = True
    return True


def put_global_batch(local_np, sharding: NamedSharding):
    """Place this process's rows of a global batch on the mesh (single host: a plain device_put)."""
    if jax.process_count() == 1:
        return jax.device_put(local_np, sharding)
    return jax.make_array_from_process_local_data(sharding, local_np)
