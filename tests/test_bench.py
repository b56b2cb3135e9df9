"""`fastoptim bench` end to end on tiny budgets (no timing is asserted), and the kernel cache."""

import itertools
import json
import math
import os
import statistics
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastoptim import bench, cli


def test_mixes_have_the_advertised_shape() -> None:
    transformer = bench.transformer_mix()
    assert len(transformer) == 75
    assert 7.5e6 < sum(math.prod(shape) for shape in transformer) < 8.5e6
    small = [math.prod(shape) for shape in bench.many_small_mix()]
    assert len(small) == 400 and min(small) >= 64 and max(small) <= 16384


def test_wide_gradients_span_six_more_decades_than_gaussian_ones() -> None:
    shapes = [(1000, 100), (7,)]
    gaussian, wide = bench.gradients(shapes, "gaussian"), bench.gradients(shapes, "wide")
    again = bench.gradients(shapes, "gaussian")
    assert all(torch.equal(a, b) for a, b in zip(gaussian, again, strict=True))  # seeded
    # Each wide gradient is its Gaussian one times 10^u, u in [-3, 3].
    exponents = (wide[0] / gaussian[0]).log10()
    assert -3.001 < exponents.min() < -2.99 and 2.99 < exponents.max() < 3.001
    assert [g.shape for g in wide] == [torch.Size(s) for s in shapes]


class Contender:
    def __init__(self, label: str, log: list[str]) -> None:
        self.label, self.log = label, log

    def step(self) -> None:
        self.log.append(self.label)


def test_contenders_take_turns_in_changing_orders() -> None:
    """Each contender steps once per turn, and none always follows the same one (nor
    itself): a step's time depends on what ran before it (the probe's follower, for one,
    writes back the probe's dirty cache lines: 5-15% on the many-small mix when fastoptim
    always followed it)."""
    log: list[str] = []
    labels = ["fastoptim", "torch fused", "torch foreach", "bandwidth probe"]
    times = bench.interleaved_step_times({x: Contender(x, log) for x in labels}, 30)
    assert all(len(times[label]) == 30 for label in labels)
    turns = [log[k : k + 4] for k in range(0, len(log), 4)]
    assert all(sorted(turn) == sorted(labels) for turn in turns)
    predecessors = {label: set() for label in labels}
    for before, label in itertools.pairwise(log):
        predecessors[label].add(before)
    assert all(predecessors[label] == set(labels) - {label} for label in labels)
    # Seeded: the same orders every run.
    again: list[str] = []
    bench.interleaved_step_times({x: Contender(x, again) for x in labels}, 30)
    assert again == log


def test_bandwidth_probe_adds_and_counts_its_bytes() -> None:
    probe = bench.BandwidthProbe(1000)  # its first step compiles and runs
    probe.step()
    assert probe.bytes == 12_000
    assert np.allclose(probe.a, 1 + 2e-6)
    assert probe.gb_per_s([2.0, 1e-6, 0.5]) == pytest.approx(12_000 / 0.5 / 1e9)  # median


PROBE_THREADS = """
import torch
torch.set_num_threads(1)
import numba
from fastoptim import bench
probe = bench.BandwidthProbe(1000)  # its first step starts Numba's thread pool
probe.step()
print(torch.get_num_threads(), numba.get_num_threads())
"""


def test_bandwidth_probe_keeps_torchs_thread_count_and_uses_it() -> None:
    """The probe runs as the kernels do: Numba's thread pool, started by its first step,
    leaves torch's thread count as the user set it, and the probe runs on that many. In a new
    process, since the pool starts once per process."""
    run = subprocess.run(
        [sys.executable, "-c", PROBE_THREADS], capture_output=True, text=True, check=True
    )
    assert run.stdout.split() == ["1", "1"]


def test_bench_writes_ratios_and_a_table(tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    argv = ["bench", "--optimizers", "adam,SGD", "--mix", "many-small", "--scale", "0.02"]
    assert cli.main([*argv, "--repeats", "2", "--out", str(out), "--no-first-step"]) == 0
    report = json.loads(out.read_text())
    assert report["bandwidth_gb_per_s"] > 0
    results = report["results"]
    assert [(r["mix"], r["optimizer"]) for r in results] == [
        ("many-small", "Adam"),
        ("many-small", "SGD"),
    ]
    for result in results:
        assert result["ratio_to_torch_best"] > 0
        assert result["fastoptim_bandwidth_fraction"] > 0
        assert result["torch_best_mode"] in result["median_ms"]
        assert "fastoptim" in result["median_ms"] and "torch fused" in result["median_ms"]
    compact = {(r["optimizer"], r["state_dtype"]): r for r in report["compact_state"]}
    assert compact.keys() == {(n, d) for n in ("Adam", "SGD") for d in ("bfloat16", "int8")}
    for r in compact.values():
        assert r["ratio_to_float32_state"] > 0 and r["ratio_to_float32_state_wide_gradients"] > 0
    # Bytes per parameter are counted from the state: SGD keeps one momentum buffer, Adam two
    # moments; at this scale most tensors are under 4096 elements and keep float32 state.
    assert compact["Adam", "bfloat16"]["state_bytes_per_parameter"] == 4.0
    assert compact["SGD", "bfloat16"]["state_bytes_per_parameter"] == 2.0
    assert 2.0 < compact["Adam", "int8"]["state_bytes_per_parameter"] <= 8.0
    printed = capsys.readouterr().out
    assert "| many-small | Adam |" in printed and "| many-small | SGD |" in printed
    assert "| many-small | Adam | int8 |" in printed
    # The probe's bandwidth, timed between the steps, for each optimizer and overall.
    rates = [r["bandwidth_gb_per_s"] for r in results + report["compact_state"]]
    assert all(rate > 0 for rate in rates)
    median = statistics.median(r["bandwidth_gb_per_s"] for r in results)
    assert report["bandwidth_gb_per_s"] == pytest.approx(median)
    assert "Memory bandwidth (a += s * b, float32, timed between the steps): " in printed
    assert "Memory bandwidth during the state timings: " in printed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--optimizers", "adam,nosuch"], "unknown 'nosuch'; choose from SGD, Adam"),
        (["--mix", "huge"], "unknown 'huge'; choose from transformer, many-small"),
        (["--repeats", "0"], "invalid value '0': expected a number > 0"),
        (["--scale", "-1"], "invalid value '-1': expected a number > 0"),
    ],
)
def test_bench_rejects_bad_arguments(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_rejects_an_output_in_a_missing_directory(tmp_path, capsys) -> None:
    out = tmp_path / "missing" / "bench.json"
    assert cli.main(["bench", "--out", str(out)]) == 2
    assert "--out: no directory" in capsys.readouterr().err


CACHE_PROBE = """
import torch, fastoptim
from fastoptim.kernels.adam import adam_kernel
param = torch.randn(10, requires_grad=True)
param.grad = torch.randn(10)
fastoptim.Adam([param]).step()
stats = adam_kernel.parallel.stats
print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))
"""


def test_compiled_kernels_are_reused_from_the_disk_cache(tmp_path) -> None:
    environment = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    runs = [
        subprocess.run(
            [sys.executable, "-c", CACHE_PROBE],
            env=environment,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        for _ in range(2)
    ]
    assert runs[0] == ["0", "1"]  # compiled and written to the cache
    assert runs[1] == ["1", "0"]  # loaded from it
    assert any(tmp_path.rglob("*.nbi"))
