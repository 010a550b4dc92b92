"""Speed and peak memory of :func:`esmfold_fast.accelerate` on every supported class (issue 9's table).

Each case is one class at one length, randomly initialised (every parameter randomised, so no zero layer hides
work), fp32, on the inputs' device:

- transformers ``EsmForProteinFolding``: ``model.infer([sequence])`` (its own API, all its trunk passes);
- transformers ``EsmModel`` / ``EsmForMaskedLM`` / ``EsmForSequenceClassification`` /
  ``EsmForTokenClassification``: ``model(input_ids, attention_mask=ones)`` (a tokenizer's output);
- fair-esm ``ESM2``: ``model(tokens)``.

Time (:func:`time_case`): in ONE process and on ONE model object, the original and the accelerated model
alternate (``accelerate`` before each accelerated call, ``restore`` after it), one untimed warm-up call each,
then ``rounds`` timed calls each, under ``torch.inference_mode``; the speedup is the original's median over the
accelerated median. Every single time is kept, since a shared machine drifts.

Peak memory (:func:`memory_case`): each side in a fresh process (``python -m esmfold_fast.benchmarking.dropin
SPEC``): build, one warm-up call at a short length (lazy tables, oneDNN set-up), give freed heap back
(``malloc_trim``), reset the peak-RSS mark (``/proc/self/clear_refs``), one call at the measured length; the
figure is that call's peak RSS (``VmHWM``) above the RSS before it. Where the kernel refuses the reset, the
warm-up is skipped and the first call's peak is reported (``hwm_reset`` says which). RSS at tens of MiB moves
with glibc's heap layout, so the child also reports :func:`allocator_peak_bytes` of one more call: the peak of
live bytes of torch's CPU allocator (every tensor, kernels' scratch included; not oneDNN/BLAS-internal buffers),
from the profiler's allocation events.

Denormals: both sides run with denormals flushed to zero unless ``flush_denormal=False``. On random weights the
folding trunk's softmaxes produce denormal floats that make the original about 4x slower on the CPU (measured:
one pass 19 s vs 4.4 s at L=256), which says nothing about the two code paths. ``torch.set_flush_denormal`` sets
the flag of the calling thread only, and the intra-op worker threads copy it when they are created: so
:func:`flush_denormals_process_wide` must run before the first parallel op of the process (the CLI and the memory
child call it first thing); set later, only the main thread's share of each op is flushed.

The runtime never imports this module.
"""

from __future__ import annotations

import contextlib
import gc
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..memory import release_freed_heap
from . import measure as M

CLASSES = (
    "EsmForProteinFolding",
    "EsmModel",
    "EsmForMaskedLM",
    "EsmForSequenceClassification",
    "EsmForTokenClassification",
    "ESM2",  # fair-esm
)
LM_CLASSES = CLASSES[1:]
LM_SIZES = {"8M": (6, 320, 20), "35M": (12, 480, 20), "150M": (30, 640, 20)}  # layers, width, heads
_TAG = "DROPIN_RESULT "


@dataclass(frozen=True)
class Case:
    """One class at one length. ``lm``: the ESM-2 size (the folding model's LM too); ``max_recycles``: the
    folding trunk's (``infer`` runs ``max_recycles + 1`` passes; the released model's is 4)."""

    cls: str
    length: int
    lm: str = "35M"
    max_recycles: int = 4
    seed: int = 0

    def describe(self) -> str:
        if self.cls == "EsmForProteinFolding":
            return (f"{self.cls}.infer L={self.length} (ESM-2 {self.lm} LM, 1 trunk block c_s 1024 / c_z 128, "
                    f"{self.max_recycles + 1} passes)")
        return f"{self.cls} L={self.length} (ESM-2 {self.lm})"


# ----------------------------------------------------------------------------- models and calls
def _hf_lm_config(size: str, **extra):
    from transformers import EsmConfig
    from transformers.models.esm.configuration_esm import get_default_vocab_list

    layers, dim, heads = LM_SIZES[size]
    return EsmConfig(
        vocab_size=33, hidden_size=dim, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * dim, position_embedding_type="rotary", token_dropout=True, pad_token_id=1,
        mask_token_id=32, max_position_embeddings=1026, emb_layer_norm_before=False, layer_norm_eps=1e-5,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, vocab_list=list(get_default_vocab_list()),
        **extra,
    )  # fmt: skip


def build_model(case: Case) -> nn.Module:
    """The randomised fp32 model of ``case``, in eval mode, never accelerated."""
    torch.manual_seed(case.seed)
    if case.cls == "EsmForProteinFolding":
        from ..config import named_config

        cfg = named_config("esmfold_v1", esm=f"esm2_t{LM_SIZES[case.lm][0]}_{case.lm}_UR50D", num_blocks=1,
                           max_recycles=case.max_recycles, fp16_esm=False)  # fp32 LM: fair CPU timing
        model = M.transformers_esmfold(cfg)
    elif case.cls == "ESM2":
        layers, dim, heads = LM_SIZES[case.lm]
        model = M.fair_esm2(layers, dim, heads)
    else:
        import transformers

        model = getattr(transformers, case.cls)(_hf_lm_config(case.lm))
    M.randomize_parameters_(model, case.seed)
    return model.float().eval()


def make_call(model: nn.Module, case: Case, length: int | None = None) -> Callable[[], Any]:
    """A no-argument call of ``model`` on ``case``'s input at ``length`` (default: the case's), on the
    model's device."""
    length = case.length if length is None else length
    device = next(model.parameters()).device
    if case.cls == "EsmForProteinFolding":
        seq = M.random_sequence(length, case.seed)
        return lambda: model.infer([seq])["positions"]
    gen = torch.Generator().manual_seed(case.seed)
    tokens = torch.randint(4, 24, (1, length + 2), generator=gen)
    tokens[:, 0], tokens[:, -1] = 0, 2  # <cls> ... <eos>
    tokens = tokens.to(device)
    if case.cls == "ESM2":
        return lambda: model(tokens)["logits"]
    mask = torch.ones_like(tokens)
    first = "last_hidden_state" if case.cls == "EsmModel" else "logits"
    return lambda: model(tokens, attention_mask=mask)[first]


# ----------------------------------------------------------------------------- time (one process)
@dataclass
class TimeResult:
    case: dict
    original_s: list[float] = field(default_factory=list)
    accelerated_s: list[float] = field(default_factory=list)
    warmup_s: list[float] = field(default_factory=list)  # untimed rounds: original, accelerated, ...
    max_abs_diff: float = 0.0  # accelerated vs original output of the last round

    @property
    def speedup(self) -> float:
        return statistics.median(self.original_s) / statistics.median(self.accelerated_s)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["original_median_s"] = statistics.median(self.original_s)
        d["accelerated_median_s"] = statistics.median(self.accelerated_s)
        d["speedup"] = self.speedup
        d["per_round_speedup"] = [o / a for o, a in zip(self.original_s, self.accelerated_s)]
        return d


def _denormals_flushed_now() -> bool:
    return float(torch.tensor(1e-40, dtype=torch.float32) * 1.0) == 0.0


def flush_denormals_process_wide() -> None:
    """Flush denormals in this thread and in every intra-op worker created after this call (call it before
    the process's first parallel op; see the module docstring)."""
    torch.set_flush_denormal(True)


@contextlib.contextmanager
def flushed_denormals(on: bool = True):
    """Denormals flushed in the calling thread inside; left as found afterwards."""
    if not on or _denormals_flushed_now():
        yield
        return
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


@contextlib.contextmanager
def accelerated(model: nn.Module):
    from esmfold_fast import accelerate, restore

    accelerate(model)
    try:
        yield model
    finally:
        restore(model)


def time_case(case: Case, rounds: int = 3, warmup: int = 1, model: nn.Module | None = None,
              log: Callable[[str], None] | None = None, flush_denormal: bool = True) -> TimeResult:
    """Original and accelerated alternating on one model object (see the module docstring)."""
    with flushed_denormals(flush_denormal):
        return _time_case(case, rounds, warmup, model, log)


def _time_case(case, rounds, warmup, model, log) -> TimeResult:
    model = build_model(case) if model is None else model
    fn = make_call(model, case)
    res = TimeResult(case=asdict(case))
    ref = out = None
    for i in range(warmup + rounds):
        t, ref = M.timed_runs(fn, "cpu")
        (res.original_s if i >= warmup else res.warmup_s).append(t[0])
        with accelerated(model):
            t, out = M.timed_runs(fn, "cpu")
        (res.accelerated_s if i >= warmup else res.warmup_s).append(t[0])
        if i >= warmup:
            if log:
                log(f"  {case.describe()} round {i - warmup + 1}: original {res.original_s[-1]:.3f} s, "
                    f"accelerated {res.accelerated_s[-1]:.3f} s")
    res.max_abs_diff = float((out.float() - ref.float()).abs().max())
    return res


# ----------------------------------------------------------------------------- memory (fresh process each)
def _reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux ``clear_refs`` 5); False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def allocator_peak_bytes(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Peak of live bytes torch's CPU allocator held above the start during ``fn()`` (output included), from
    ``torch.profiler``'s allocation events in time order; returns it and ``fn``'s output."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak, out


def _child(spec: dict) -> dict:
    torch.set_num_threads(int(spec.get("threads", 2)))
    if spec.get("flush_denormal", True):
        flush_denormals_process_wide()  # before the first parallel op: the workers inherit it
    case = Case(**spec["case"])
    model = build_model(case)
    if spec["accelerated"]:
        from esmfold_fast import accelerate

        accelerate(model)
    warm = int(spec.get("warmup_length", 16))
    hwm_reset = False
    with torch.inference_mode(), flushed_denormals(spec.get("flush_denormal", True)):
        if warm and _reset_peak_rss():
            make_call(model, case, warm)()
            gc.collect()
            release_freed_heap()
            hwm_reset = _reset_peak_rss()
        rss_before = M._rss_now()
        t0 = time.perf_counter()
        out = make_call(model, case)()
        seconds = time.perf_counter() - t0
        peak = M._peak_rss()
        finite = bool(torch.isfinite(out.float()).all())
        del out
        alloc_peak, _ = allocator_peak_bytes(make_call(model, case))
    return dict(peak_rss_bytes=peak, rss_before_bytes=rss_before, forward_peak_bytes=peak - rss_before,
                hwm_reset=hwm_reset, seconds=seconds, output_finite=finite, allocator_peak_bytes=alloc_peak)


def memory_point(case: Case, accelerated: bool, threads: int = 2, timeout: float | None = 1800,
                 flush_denormal: bool = True) -> dict:
    """One side's peak memory of one call in a fresh process."""
    spec = dict(case=asdict(case), accelerated=accelerated, threads=threads, flush_denormal=flush_denormal)
    proc = subprocess.run([sys.executable, "-m", "esmfold_fast.benchmarking.dropin", json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_TAG)]
    if proc.returncode != 0 or not lines:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise M.PointFailed(f"{case.describe()} accelerated={accelerated}: exit {proc.returncode}: {tail}")
    return json.loads(lines[-1][len(_TAG):])


def memory_case(case: Case, threads: int = 2, flush_denormal: bool = True) -> dict:
    """Original then accelerated, each in its own process; ratio = accelerated / original forward peak."""
    orig = memory_point(case, False, threads, flush_denormal=flush_denormal)
    acc = memory_point(case, True, threads, flush_denormal=flush_denormal)
    return dict(case=asdict(case), original=orig, accelerated=acc,
                ratio=acc["forward_peak_bytes"] / max(1, orig["forward_peak_bytes"]),
                allocator_ratio=acc["allocator_peak_bytes"] / max(1, orig["allocator_peak_bytes"]))


# ----------------------------------------------------------------------------- the table
def default_cases(lm: str = "35M", lengths=(128, 256, 512, 1024), fold_length: int = 256,
                  fold_lm: str = "8M", max_recycles: int = 4) -> list[Case]:
    cases = [Case("EsmForProteinFolding", fold_length, lm=fold_lm, max_recycles=max_recycles)]
    cases += [Case(c, L, lm=lm) for c in LM_CLASSES for L in lengths]
    return cases


def markdown_table(times: list[dict], memory: list[dict]) -> str:
    """One row per case: medians, speedup, every run, memory ratio."""
    mem = {json.dumps(m["case"], sort_keys=True): m for m in memory}
    rows = ["| class | L | original median | accelerated median | speedup (orig/acc) | original runs (s) "
            "| accelerated runs (s) | allocator peak orig / acc (MiB) | memory (acc/orig) "
            "| RSS peak orig / acc (MiB) | RSS (acc/orig) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in times:
        c = t["case"]
        m = mem.get(json.dumps(c, sort_keys=True))
        mib = (f"{m['original']['forward_peak_bytes'] / 2**20:.0f} / {m['accelerated']['forward_peak_bytes'] / 2**20:.0f}"
               if m else "-")
        ratio = f"{m['ratio']:.2f}" if m else "-"
        amib = (f"{m['original']['allocator_peak_bytes'] / 2**20:.1f} / "
                f"{m['accelerated']['allocator_peak_bytes'] / 2**20:.1f}" if m else "-")
        aratio = f"**{m['allocator_ratio']:.2f}**" if m else "-"
        name = c["cls"] + (f" ({c['lm']} LM)" if c["cls"] == "EsmForProteinFolding" else f" ({c['lm']})")
        rows.append(
            f"| {name} | {c['length']} | {t['original_median_s']:.3f} s | {t['accelerated_median_s']:.3f} s "
            f"| **{t['speedup']:.2f}x** | {' / '.join(f'{x:.3f}' for x in t['original_s'])} "
            f"| {' / '.join(f'{x:.3f}' for x in t['accelerated_s'])} | {amib} | {aratio} | {mib} | {ratio} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m esmfold_fast.benchmarking.dropin '<json spec>'", file=sys.stderr)
        return 2
    print(_TAG + json.dumps(_child(json.loads(argv[0]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
