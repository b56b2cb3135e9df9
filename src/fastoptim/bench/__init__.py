"""``fastoptim bench``: step time of fastoptim against torch.optim's best mode, in one run.

For every optimizer and parameter mix, fastoptim's default step and each of torch.optim's
modes (for-loop, foreach, and fused where torch has it) get their own copy of the parameters
and are stepped in turn, repetition after repetition, so that machine noise hits all alike.
Results are ratios of medians to torch's fastest mode, and each optimizer's fraction of the
memory-bandwidth limit: a read-modify-write probe (a += s * b) takes its turn between the
steps, and each step is compared with the probe's bandwidth of the same turn. fastoptim's
bfloat16 and 8-bit state (``state_dtype``) are timed against its float32 state the same way,
with Gaussian and with wide-range gradients, and the bytes of state they keep per parameter.
"""

import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numba import njit, prange

import fastoptim
from fastoptim.catalog import OPTIMIZERS, info
from fastoptim.planning import kernel_turn
from fastoptim.state import state_nbytes

# Options benchmarked per optimizer, and the bytes each moves per parameter element in
# units of the element size: reads + writes of param, grad and state (fastoptim.catalog).
SETTINGS: dict[str, tuple[dict[str, Any], int]] = {
    entry.name: (entry.bench_options, entry.bytes_per_element) for entry in OPTIMIZERS
}


def transformer_mix(scale: float = 1.0) -> list[tuple[int, ...]]:
    """~8M parameters in 75 tensors: an embedding and six transformer blocks of width 320."""
    width = max(8, int(320 * scale))
    shapes: list[tuple[int, ...]] = [(max(8, int(2000 * scale)), width)]
    for _ in range(6):
        shapes += [(3 * width, width), (3 * width,), (width, width), (width,)]
        shapes += [(4 * width, width), (4 * width,), (width, 4 * width), (width,)]
        shapes += [(width,), (width,), (width,), (width,)]
    return [*shapes, (width,), (width,)]


def many_small_mix(scale: float = 1.0) -> list[tuple[int, ...]]:
    """400 tensors of 64 to 16k elements, log-uniformly spread (seeded)."""
    generator = np.random.default_rng(0)
    sizes = np.exp(generator.uniform(math.log(64), math.log(16384), 400)) * scale
    return [(max(1, int(size)),) for size in sizes]


MIXES = {"transformer": transformer_mix, "many-small": many_small_mix}


def gradients(shapes: list[tuple[int, ...]], kind: str) -> list[torch.Tensor]:
    """Seeded gradients: ``gaussian`` (randn x 1e-3), or ``wide``: each of those times 10^u,
    u uniform in [-3, 3], so magnitudes within a tensor span 6 decades more, as in real models
    (a slow path that depends on the data, such as subnormal arithmetic, shows there)."""
    generator = torch.Generator().manual_seed(1)
    grads = [torch.randn(shape, generator=generator) * 1e-3 for shape in shapes]
    if kind == "wide":
        for grad in grads:
            grad *= 10.0 ** (6 * torch.rand(grad.shape, generator=generator) - 3)
    return grads


@njit(parallel=True, cache=True, nogil=True)
def _read_modify_write(a, b, s):  # type: ignore[no-untyped-def]
    for i in prange(a.size):
        a[i] += s * b[i]


class BandwidthProbe:
    """``a += s * b`` over float32 arrays (12 bytes per element): timed between the steps as
    one more contender, so that each step is compared with the bandwidth of its moment. It
    runs as the kernels do (``kernel_turn``): on as many threads as torch uses."""

    def __init__(self, elements: int) -> None:
        self.a = np.ones(elements, np.float32)
        self.b = np.ones(elements, np.float32)
        self.bytes = 12 * elements
        self.step()  # compilation

    def step(self) -> None:
        with kernel_turn():
            _read_modify_write(self.a, self.b, np.float32(1e-6))

    def gb_per_s(self, times: list[float]) -> float:
        """The bandwidth at the median of the probe's step ``times``."""
        return self.bytes / statistics.median(times) / 1e9


PROBE = "bandwidth probe"


def candidates(name: str) -> dict[str, tuple[Any, dict[str, Any]]]:
    """The contenders: fastoptim's default, and torch.optim's for-loop, foreach and fused."""
    entry = info(name)
    modes: dict[str, tuple[Any, dict[str, Any]]] = {
        "fastoptim": (entry.cls, {}),
        "torch for-loop": (entry.torch_cls, {"foreach": False}),
        "torch foreach": (entry.torch_cls, {"foreach": True}),
    }
    if entry.torch_fused:
        modes["torch fused"] = (entry.torch_cls, {"fused": True})
    return modes


@dataclass
class Result:
    mix: str
    optimizer: str
    parameters: int
    tensors: int
    torch_best_mode: str
    ratio_to_torch_best: float
    fastoptim_bandwidth_fraction: float
    bandwidth_gb_per_s: float
    median_ms: dict[str, float]


def interleaved_step_times(optimizers: dict[str, Any], repeats: int) -> dict[str, list[float]]:
    """Seconds of each optimizer's (or the probe's) ``step()``, ``repeats`` times, taking
    turns in a new (seeded) order every turn: a step's time depends on what ran before it
    (the probe's follower, for one, writes back the probe's dirty cache lines), so no
    contender may always follow the same one, nor itself."""
    order = list(optimizers)
    shuffle = random.Random(0).shuffle
    times: dict[str, list[float]] = {label: [] for label in order}
    for _ in range(repeats):
        last = order[-1]
        shuffle(order)
        if order[0] == last:
            order.append(order.pop(0))
        for label in order:
            begin = time.perf_counter()
            optimizers[label].step()
            times[label].append(time.perf_counter() - begin)
    return times


def bench_optimizer(
    name: str, mix: str, shapes: list[tuple[int, ...]], repeats: int, probe: BandwidthProbe
) -> Result:
    """Interleaved median step times of every candidate on ``shapes``, and fastoptim's
    fraction of the bandwidth limit against the probe's bandwidth in the same turn."""
    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(shape, generator=generator) for shape in shapes]
    grads = gradients(shapes, "gaussian")
    options, element_bytes = SETTINGS[name]
    optimizers = {}
    for label, (cls, mode) in candidates(name).items():
        params = [p.clone().requires_grad_() for p in start]
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad.clone()
        optimizers[label] = cls(params, **options, **mode)
        optimizers[label].step()  # warm-up: compilation, state creation
    times = interleaved_step_times({**optimizers, PROBE: probe}, repeats)
    probe_times = times.pop(PROBE)
    medians = {label: statistics.median(values) for label, values in times.items()}
    best = min((label for label in medians if label != "fastoptim"), key=medians.__getitem__)
    ratios = [ours / theirs for ours, theirs in zip(times["fastoptim"], times[best], strict=True)]
    elements = sum(p.numel() for p in start)
    # The least time the step's bytes take at the probe's bandwidth of the same turn, over
    # the step's time.
    step_bytes = element_bytes * 4 * elements
    pairs = zip(probe_times, times["fastoptim"], strict=True)
    fractions = [step_bytes * probe_time / probe.bytes / t for probe_time, t in pairs]
    return Result(
        mix=mix,
        optimizer=name,
        parameters=elements,
        tensors=len(start),
        torch_best_mode=best,
        ratio_to_torch_best=statistics.median(ratios),
        fastoptim_bandwidth_fraction=statistics.median(fractions),
        bandwidth_gb_per_s=probe.gb_per_s(probe_times),
        median_ms={label: 1e3 * value for label, value in medians.items()},
    )


@dataclass
class CompactResult:
    mix: str
    optimizer: str
    state_dtype: str
    state_bytes_per_parameter: float
    ratio_to_float32_state: float
    ratio_to_float32_state_wide_gradients: float
    bandwidth_gb_per_s: float


COMPACT_STATE = {"bfloat16": torch.bfloat16, "int8": "int8"}
GRADIENTS = ("gaussian", "wide")


def bench_compact_state(
    name: str, mix: str, shapes: list[tuple[int, ...]], repeats: int, probe: BandwidthProbe
) -> list[CompactResult]:
    """fastoptim with bfloat16 and 8-bit state against its float32 state, interleaved, with
    Gaussian and with wide-range gradients: step time ratios, and state bytes per parameter
    counted from the state tensors."""
    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(shape, generator=generator) for shape in shapes]
    options, _ = SETTINGS[name]
    optimizers = {}
    for kind in GRADIENTS:
        grads = gradients(shapes, kind)
        for label, state_dtype in {"float32": None, **COMPACT_STATE}.items():
            params = [p.clone().requires_grad_() for p in start]
            for param, grad in zip(params, grads, strict=True):
                param.grad = grad.clone()
            optimizer = getattr(fastoptim, name)(params, **options, state_dtype=state_dtype)
            optimizer.step()
            optimizers[f"{label}, {kind}"] = optimizer
    times = interleaved_step_times({**optimizers, PROBE: probe}, repeats)
    elements = sum(p.numel() for p in start)

    def ratio(label: str, kind: str) -> float:
        pairs = zip(times[f"{label}, {kind}"], times[f"float32, {kind}"], strict=True)
        return statistics.median(a / b for a, b in pairs)

    results = []
    for label in COMPACT_STATE:
        state = optimizers[f"{label}, gaussian"].state.values()
        tensors = [value for s in state for key, value in s.items() if key != "step"]
        results.append(
            CompactResult(
                mix=mix,
                optimizer=name,
                state_dtype=label,
                state_bytes_per_parameter=state_nbytes(tensors) / elements,
                ratio_to_float32_state=ratio(label, "gaussian"),
                ratio_to_float32_state_wide_gradients=ratio(label, "wide"),
                bandwidth_gb_per_s=probe.gb_per_s(times[PROBE]),
            )
        )
    return results


def compact_table(results: list[CompactResult]) -> str:
    """Compact-state results as a Markdown table."""
    lines = [
        "| mix | optimizer | state | state bytes per parameter | step time / float32 state "
        "| same, gradients over 6 more decades |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.mix} | {r.optimizer} | {r.state_dtype} | {r.state_bytes_per_parameter:.2f} "
            f"| {r.ratio_to_float32_state:.2f}x | {r.ratio_to_float32_state_wide_gradients:.2f}x |"
        )
    return "\n".join(lines)


FIRST_STEP = """
import time, torch, fastoptim
params = [torch.randn(256, 256, requires_grad=True) for _ in range(8)]
for p in params:
    p.grad = torch.randn(256, 256)
optimizer = fastoptim.Adam(params)
start = time.perf_counter()
optimizer.step()
print(time.perf_counter() - start)
"""


def first_step_seconds() -> tuple[float, float]:
    """Time of Adam's first step in a new process: with an empty kernel cache, and the median
    of three runs with the warm cache."""
    with tempfile.TemporaryDirectory() as cache:
        environment = {**os.environ, "NUMBA_CACHE_DIR": cache}
        times = []
        for _ in range(4):
            run = subprocess.run(
                [sys.executable, "-c", FIRST_STEP],
                env=environment,
                check=True,
                capture_output=True,
                text=True,
            )
            times.append(float(run.stdout.strip().splitlines()[-1]))
    return times[0], statistics.median(times[1:])


def bandwidth_range(results: list[Result] | list[CompactResult]) -> str:
    """The probe's bandwidth over ``results``: the median and range of their medians."""
    rates = [r.bandwidth_gb_per_s for r in results]
    return f"{statistics.median(rates):.1f} GB/s ({min(rates):.1f}-{max(rates):.1f})"


def table(results: list[Result]) -> str:
    """The results as a Markdown table of ratios and bandwidth fractions."""
    lines = [
        "| mix | optimizer | torch's best mode | fastoptim / torch best "
        "| fraction of bandwidth limit |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.mix} | {r.optimizer} | {r.torch_best_mode} | {r.ratio_to_torch_best:.2f}x "
            f"| {r.fastoptim_bandwidth_fraction:.2f} |"
        )
    return "\n".join(lines)


def run(
    optimizers: list[str],
    mixes: list[str],
    repeats: int,
    scale: float,
    out: Path | None,
    first_step: bool,
    compact_state: bool = True,
) -> dict[str, Any]:
    """Run the benchmark, print its table and return (and optionally write) the JSON report."""
    shapes = {mix: MIXES[mix](scale) for mix in mixes}
    largest = max(sum(math.prod(s) for s in mix_shapes) for mix_shapes in shapes.values())
    probe = BandwidthProbe(max(largest, 1 << 24))
    results = []
    for mix in mixes:
        for name in optimizers:
            result = bench_optimizer(name, mix, shapes[mix], repeats, probe)
            results.append(result)
            print(
                f"{mix:12} {name:9} {result.ratio_to_torch_best:5.2f}x of {result.torch_best_mode}",
                flush=True,
            )
    compact: list[CompactResult] = []
    if compact_state:
        mix = "transformer" if "transformer" in mixes else mixes[0]
        for name in optimizers:
            compact += bench_compact_state(name, mix, shapes[mix], repeats, probe)
            print(f"{mix:12} {name:9} compact state measured", flush=True)
    report: dict[str, Any] = {
        "command": " ".join(["fastoptim", "bench", *sys.argv[2:]]),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "bandwidth_gb_per_s": statistics.median(r.bandwidth_gb_per_s for r in results),
        "results": [asdict(result) for result in results],
        "compact_state": [asdict(result) for result in compact],
    }
    if first_step:
        cold, warm = first_step_seconds()
        report["first_step_seconds"] = {"cold_cache": cold, "warm_cache": warm}
    method = "a += s * b, float32, timed between the steps"
    print(f"\nMemory bandwidth ({method}): {bandwidth_range(results)}\n")
    print(table(results))
    if compact:
        # The compact steps are bound by arithmetic and memory, float32 by memory: their ratio
        # depends on the bandwidth at the time, which on a shared machine moves.
        print(f"\nMemory bandwidth during the state timings: {bandwidth_range(compact)}\n")
        print(compact_table(compact))
    if first_step:
        print(f"\nFirst Adam step in a new process: {cold:.2f} s cold cache, {warm:.2f} s warm")
    if out is not None:
        out.write_text(json.dumps(report, indent=2))
        print(f"\nWrote {out}")
    return report
