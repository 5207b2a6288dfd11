"""The compiled program as data: lower a preset's train step (or decode loop) for a mesh from abstract inputs
(nothing is allocated, so GPU-sized shapes compile on emulated CPU devices) and read what XLA built: the
collectives of the optimised HLO, cost analysis and memory analysis, all per device. tests/test_compiled.py
asserts on them; scripts/memory_plan.py and scripts/perf_model.py report them."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from jaxchat import engine
from jaxchat import model as gpt
from jaxchat import sharding as shd
from jaxchat import train
from jaxchat.checkpoint import abstract_like
from jaxchat.config import ModelConfig, TrainConfig
from jaxchat.optim import make_optimizer

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "pred": 1,
               "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1}
# `%name = f32[8192,65536]{1,0} all-reduce(...)` or a tuple result `(f32[..], f32[..]) all-reduce(...)`;
# async pairs (`all-gather-start` / `-done`) are counted once, at their start.
_OP = re.compile(r"=\s*(\(.*?\)|\S+)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(")
_ARRAY = re.compile(r"([a-z]\w*)\[([\d,]*)\]")
_HOST = re.compile(r"custom_call_target=\"(?:xla_python_host_callback|xla_ffi_python_cpu_callback|"
                   r"xla_ffi_python_gpu_callback)\"|\b(?:send|recv|infeed|outfeed)\(")


@dataclass(frozen=True)
class Collective:
    kind: str
    shapes: tuple  # ((dtype, dims), ...): the result arrays (per device)
    group: int  # devices taking part
    times: int  # executions per step (the trip counts of the loops it sits in)
    line: str

    @property
    def bytes(self) -> int:
        """Bytes of the result arrays, per execution."""
        return sum(DTYPE_BYTES.get(dt, 4) * math.prod(dims) for dt, dims in self.shapes)

    @property
    def largest(self) -> int:
        """Elements of the biggest array this op produces."""
        return max((math.prod(dims) for _, dims in self.shapes), default=0)

    @property
    def wire_bytes(self) -> float:
        """Bytes each device sends per step with ring algorithms (NCCL's "bus bytes"): a gather or scatter moves
        (n−1)/n of the whole array, an all-reduce twice that."""
        n = max(self.group, 1)
        whole = self.bytes * (n if self.kind == "reduce-scatter" else 1)
        return whole * (n - 1) / n * (2 if self.kind == "all-reduce" else 1) * self.times


def _computations(hlo_text: str) -> tuple[dict, str]:
    comps, name, entry = {}, None, ""
    for line in hlo_text.splitlines():
        m = re.match(r"(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if m:
            name = m.group(2)
            comps[name] = []
            entry = name if m.group(1) else entry
        elif name and line.strip() and line.strip() != "}":
            comps[name].append(line)
    return comps, entry


_CALLS = re.compile(r"(calls|to_apply|body|condition|branch_computations)=(\{[^}]*\}|%?[\w.\-]+)")


def _times(comps: dict, entry: str) -> dict:
    """Executions per step of every computation reachable from ENTRY (while bodies × known trip count)."""
    times = {entry: 1}
    todo = [entry]
    while todo:
        c = todo.pop()
        for line in comps.get(c, ()):
            trip = re.search(r'known_trip_count":\{"n":"(\d+)"', line)
            for kind, callees in _CALLS.findall(line):
                k = int(trip.group(1)) if (trip and kind == "body") else 1
                for callee in re.findall(r"%?([\w.\-]+)", callees.strip("{}")):
                    if callee in comps and callee not in times:
                        times[callee] = times[c] * k
                        todo.append(callee)
    return times


def collectives(hlo_text: str) -> list[Collective]:
    """Every collective op of an optimised HLO module, with its result shapes, group size and executions."""
    comps, entry = _computations(hlo_text)
    times = _times(comps, entry)
    out = []
    for comp, lines in comps.items():
        for line in lines:
            m = _OP.search(line)
            if not m:
                continue
            arrays = _ARRAY.findall(m.group(1))
            if m.group(3) and m.group(1).startswith("("):  # async start: (operands..., results...)
                arrays = arrays[len(arrays) // 2:]
            shapes = tuple((dt, tuple(int(d) for d in dims.split(",") if d)) for dt, dims in arrays)
            out.append(Collective(m.group(2), shapes, _group_size(line), times.get(comp, 1), line.strip()[:300]))
    return out


def _group_size(line: str) -> int:
    """Devices per replica group: `replica_groups={{0,1,..}}`, iota `[G,N]<=[..]`, or a mesh axis list."""
    m = re.search(r"replica_groups=\{\{([\d,]*)\}", line)
    if m:
        return len(m.group(1).split(","))
    m = re.search(r"replica_groups=\[\d+,(\d+)\]", line)
    if m:
        return int(m.group(1))
    m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)
    if m:
        sizes = dict(re.findall(r"'(\w+)'=(\d+)", m.group(1)))
        return math.prod(int(sizes[a]) for a in re.findall(r"'(\w+)'", m.group(2)))
    return 1


def collective_bytes(colls: list[Collective]) -> dict[str, float]:
    """Wire bytes per device per step, by collective kind."""
    out = {k: 0.0 for k in COLLECTIVES}
    for c in colls:
        out[c.kind] += c.wire_bytes
    return out


def host_transfers(hlo_text: str) -> list[str]:
    """Lines that move data between host and device inside the program (callbacks, send/recv, in/outfeed)."""
    return [line.strip()[:200] for line in hlo_text.splitlines() if _HOST.search(line)]


def lower_train_step(mc: ModelConfig, tc: TrainConfig, mesh, *, accum: int = 1, rows: int | None = None,
                     num_iterations: int = 1000):
    """The real jitted train step (train.jit_train_step) lowered for `mesh` from abstract state and batch:
    [accum, rows, T] tokens, rows = device_batch_size × mesh size by default."""
    rows = rows or tc.device_batch_size * mesh.size
    tx = make_optimizer(mc, tc, num_iterations)
    sh = train.state_shardings(mc, tx, mesh)
    shapes = gpt.param_shapes(mc)
    state = {"step": jax.ShapeDtypeStruct((), jnp.int32, sharding=sh["step"]),
             "params": abstract_like(shapes, sh["params"]),
             "opt_state": abstract_like(jax.eval_shape(tx.init, shapes), sh["opt_state"])}
    bsh = shd.batch_sharding(mesh, ndim=3, leading=1)
    batch = {k: jax.ShapeDtypeStruct((accum, rows, mc.max_seq_len), jnp.int32, sharding=bsh)
             for k in ("inputs", "targets")}
    setup = train.Setup(None, tx, mesh, sh, bsh, mc, tc, num_iterations)
    return train.jit_train_step(setup).lower(state, batch)


def lower_decode_loop(mc: ModelConfig, mesh, *, batch: int, cache_len: int, max_new: int = 256):
    """The engine's decode loop (`engine.run`: a while_loop of cached one-token steps) lowered for `mesh`, with
    the params, the KV cache and the decode state sharded as the engine shards them."""
    params = abstract_like(gpt.param_shapes(mc), gpt.param_shardings(mc, mesh))
    st_shapes = jax.eval_shape(lambda: engine.new_state(mc, batch, cache_len, max_new))
    st = abstract_like(st_shapes, engine.state_shardings(st_shapes, mesh))
    with shd.scope(mesh):
        return engine.run.lower(params, st, max_new, cfg=mc, stops=engine.Stops(ends=(0,)))


def loop_bodies(hlo_text: str) -> str:
    """The HLO text of what runs more than once per call: every while-loop body and what it calls."""
    comps, entry = _computations(hlo_text)
    body = {b for lines in comps.values() for line in lines for b in re.findall(r"body=%?([\w.\-]+)", line)}
    inside, todo = set(), list(body)
    while todo:
        c = todo.pop()
        if c in inside or c not in comps:
            continue
        inside.add(c)
        for line in comps[c]:
            for _, callees in _CALLS.findall(line):
                todo += re.findall(r"%?([\w.\-]+)", callees.strip("{}"))
    return "\n".join(line for c in sorted(inside) for line in comps[c])


def analyse(compiled) -> dict:
    """FLOPs, bytes accessed, collectives, memory of one compiled executable (per device)."""
    hlo = compiled.as_text()
    colls = collectives(hlo)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
    mem = compiled.memory_analysis()
    out = {"flops": float(cost.get("flops", 0.0)), "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
           "collective_bytes": collective_bytes(colls), "collective_count": {k: 0 for k in COLLECTIVES},
           "host_transfers": len(host_transfers(hlo))}
    for c in colls:
        out["collective_count"][c.kind] += c.times
    if mem is not None:
        out["memory"] = {"arguments": mem.argument_size_in_bytes, "outputs": mem.output_size_in_bytes,
                         "aliased": mem.alias_size_in_bytes, "temp": mem.temp_size_in_bytes,
                         "total": mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
                         + mem.temp_size_in_bytes}
    return out
