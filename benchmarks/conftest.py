"""Shared setup of the pytest-benchmark suite.

    pytest benchmarks/ --benchmark-only                        # the full suite (< 10 min on a 2-core CPU)
    pytest benchmarks/ --benchmark-only --bench-quick          # smoke run: smallest sizes only
    pytest benchmarks/ --benchmark-only --benchmark-json benchmarks/results/<device>-<date>.json

Every benchmark records in ``benchmark.extra_info``: FLOPs and fused-implementation bytes (from
``esmfold_fast.benchmarking.flops``), achieved GFLOP/s, the fraction of this session's measured matmul peak,
peak memory and the device. Triton kernels are timed only on CUDA: on CPU they run through Triton's
numpy interpreter, which checks correctness but says nothing about speed.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Imported kernels are built for the interpreter on CPU (correctness only); never timed here.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from esmfold_fast.benchmarking.measure import default_device, machine_info, measure_matmul_peak  # noqa: E402

DEVICE = default_device()
TRITON_CPU_REASON = "triton runs on CPU only through its interpreter (correctness, not speed): not timed"


def pytest_addoption(parser):
    parser.addoption("--bench-quick", action="store_true", default=False,
                     help="smallest sizes only (a smoke run of the whole suite)")


def _quick(config) -> bool:
    return bool(config.getoption("--bench-quick")) or os.environ.get("ESMFOLD_BENCH_QUICK") == "1"


def pytest_generate_tests(metafunc):
    """Parametrise ``case`` from the module's ``CASES`` (``QUICK_CASES`` under --bench-quick, plus
    ``CUDA_CASES`` on a GPU), so sizes of the other mode are never collected rather than skipped."""
    if "case" not in metafunc.fixturenames:
        return
    mod = metafunc.module
    cases = dict(mod.QUICK_CASES) if _quick(metafunc.config) else dict(mod.CASES)
    if DEVICE == "cuda" and not _quick(metafunc.config):
        cases.update(getattr(mod, "CUDA_CASES", {}))
    metafunc.parametrize("case", list(cases.values()), ids=list(cases))


@pytest.fixture(scope="session")
def quick(request) -> bool:
    return _quick(request.config)


@pytest.fixture(scope="session")
def device() -> str:
    return DEVICE


@pytest.fixture(scope="session")
def matmul_peak() -> dict[str, float]:
    """Measured once per session: best FLOP/s of a large fp32 and bf16 matmul on this device."""
    if DEVICE == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    return {
        "float32": measure_matmul_peak(DEVICE, torch.float32),
        "bfloat16": measure_matmul_peak(DEVICE, torch.bfloat16),
    }


@pytest.fixture(scope="session")
def machine() -> dict:
    return machine_info()


class _Memory:
    """Peak memory of the code run inside the context: CUDA max allocated above the starting point,
    on CPU the process's peak RSS growth (ru_maxrss only rises, so a first call shows it best)."""

    def __enter__(self):
        if DEVICE == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            import resource

            self.start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return self

    def __exit__(self, *exc):
        if DEVICE == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
            self.kind = "cuda_max_allocated_above_start"
        else:
            import resource

            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.start
            self.kind = "rss_peak_growth"
        return False


def _median_seconds(benchmark) -> float | None:
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable: the function ran once, untimed
        return None
    return stats.stats.median


def record(benchmark, *, flops: float, bytes_moved: float, dtype: torch.dtype | str, peak: dict,
           memory: _Memory | None = None, **extra) -> None:
    """Fill ``benchmark.extra_info`` after ``benchmark(...)`` ran."""
    name = dtype if isinstance(dtype, str) else str(dtype).replace("torch.", "")
    info = benchmark.extra_info
    info.update(extra)
    info["device"] = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu"
    info["dtype"] = name
    info["flops"] = flops
    info["bytes"] = bytes_moved
    seconds = _median_seconds(benchmark)
    roof = peak.get(name, peak["float32"])
    info["matmul_peak_gflops"] = roof / 1e9
    if seconds:
        info["gflops"] = flops / seconds / 1e9
        info["fraction_of_matmul_peak"] = flops / seconds / roof
        info["gbytes_per_s"] = bytes_moved / seconds / 1e9
    if memory is not None:
        info["peak_memory_bytes"] = memory.peak
        info["peak_memory_kind"] = memory.kind


class BenchEnv:
    """What every benchmark needs, as one fixture (test files never import conftest)."""

    def __init__(self, quick: bool, peak: dict[str, float]):
        self.device = DEVICE
        self.quick = quick
        self.peak = peak
        self.Memory = _Memory

    @staticmethod
    def require(provider: str) -> None:
        """Skip, with the reason, a provider that cannot be timed on this device."""
        if provider == "triton" and DEVICE != "cuda":
            pytest.skip(TRITON_CPU_REASON)

    def record(self, benchmark, **kw) -> None:
        record(benchmark, peak=self.peak, **kw)

    def measure(self, benchmark, fn, *, rounds: int, warmup_rounds: int = 0,
                inference_mode: bool = False) -> _Memory:
        """Peak memory of one first call of ``fn`` (synchronised), then ``rounds`` timed calls with
        ``benchmark.pedantic``; returns the memory for :meth:`record`."""

        def run():
            if inference_mode:
                with torch.inference_mode():
                    out = fn()
            else:
                out = fn()
            self.sync()
            return out

        with self.Memory() as mem:
            run()
        benchmark.pedantic(run, rounds=rounds, warmup_rounds=warmup_rounds)
        return mem

    @staticmethod
    def sync() -> None:
        if DEVICE == "cuda":
            torch.cuda.synchronize()


@pytest.fixture
def bench_env(quick, matmul_peak) -> BenchEnv:
    return BenchEnv(quick, matmul_peak)
