"""Measurement harness shared by ``esmfold-fast bench``, ``benchmarks/`` and ``profiling/``.

Every measured point runs in its own Python process
(``python -m esmfold_fast.benchmarking.measure SPEC``), so peak memory belongs to that one model and
that one length: on CPU the child's own peak RSS (``VmHWM`` of ``/proc/self/status``, see
:func:`_peak_rss`), on CUDA ``torch.cuda.max_memory_allocated``. The child prints one JSON line;
:func:`run_point` returns it as a dict.

Both sides of a comparison load the *same* random weights: :func:`prepare_esmfold_checkpoint`
writes a transformers ``EsmForProteinFolding`` directory (every parameter randomised, so no
zero-initialised layer hides a difference) that ours reads with ``ESMFold.from_pretrained`` and
transformers with ``EsmForProteinFolding.from_pretrained``; :func:`prepare_esm2_checkpoint` writes
a fair-esm raw ``.pt`` for the ESM-2-only comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from ..config import ESM2Config, ESMFoldConfig

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
FOLD_PROVIDERS = ("ours", "reference", "transformers")
ESM2_PROVIDERS = ("ours", "fair-esm")
_RESULT_TAG = "BENCH_RESULT "


# ----------------------------------------------------------------------------- shared inputs
def random_sequence(length: int, seed: int = 0) -> str:
    """A reproducible random protein sequence over the 20 standard amino acids."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(AMINO_ACIDS), (length,), generator=gen)
    return "".join(AMINO_ACIDS[i] for i in idx.tolist())


@torch.no_grad()
def randomize_parameters_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Fresh random values for EVERY parameter (fan-in scaled matrices, LayerNorm gains near 1,
    small vectors elsewhere) so zero-initialised output and gating layers do real work. Drawn on the
    parameters' device (a multi-GB model on a GPU is not drawn on the CPU)."""
    gens: dict[torch.device, torch.Generator] = {}
    for name, p in module.named_parameters():
        gen = gens.setdefault(p.device, torch.Generator(device=p.device).manual_seed(seed))
        draw = lambda: torch.randn(p.shape, generator=gen, dtype=torch.float32, device=p.device)  # noqa: E731
        if p.dim() >= 2:
            val = draw() / math.sqrt(p.shape[-1])
        elif name.endswith("weight") and "norm" in name.lower():
            val = 1.0 + 0.1 * draw()
        else:
            val = 0.1 * draw()
        p.copy_(val.to(p.dtype))
    return module


def rotary_tables(length: int, head_dim: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [length, head_dim] of ESM-2's rotary embedding (rotate-halves layout), in fp32."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def tri_mul_weights(c_z: int, c_h: int, device: torch.device | str, dtype: torch.dtype,
                    generator: torch.Generator):
    """Random ``fastfold_kernels.triangle_multiplicative_update.TriMulWeights``: fan-in scaled
    matrices, LayerNorm gains around 1, biases of std 0.2. Drawn on ``generator``'s device, then moved
    to ``device`` and ``dtype``."""
    from fastfold_kernels.triangle_multiplicative_update import TriMulWeights

    def r(*shape, centre=0.0, std=None):
        std = std if std is not None else shape[-1] ** -0.5
        draw = torch.randn(*shape, generator=generator, device=generator.device)
        return (centre + std * draw).to(device=device, dtype=dtype)

    return TriMulWeights(
        ln_in_weight=r(c_z, centre=1.0, std=0.2), ln_in_bias=r(c_z, std=0.2),
        a_p_weight=r(c_h, c_z), a_p_bias=r(c_h, std=0.2), a_g_weight=r(c_h, c_z), a_g_bias=r(c_h, std=0.2),
        b_p_weight=r(c_h, c_z), b_p_bias=r(c_h, std=0.2), b_g_weight=r(c_h, c_z), b_g_bias=r(c_h, std=0.2),
        ln_out_weight=r(c_h, centre=1.0, std=0.2), ln_out_bias=r(c_h, std=0.2),
        z_weight=r(c_z, c_h), z_bias=r(c_z, std=0.2), g_weight=r(c_z, c_z), g_bias=r(c_z, std=0.2),
    )


def transformers_config_kwargs(cfg: ESMFoldConfig) -> dict[str, Any]:
    """``EsmConfig`` keyword arguments of an ``EsmForProteinFolding`` with ``cfg``'s shapes."""
    import dataclasses

    from transformers.models.esm.configuration_esm import get_default_vocab_list

    fold = dataclasses.asdict(cfg)
    esm = fold.pop("esm")
    return dict(
        vocab_size=esm["alphabet_size"],
        mask_token_id=esm["mask_idx"],
        pad_token_id=esm["padding_idx"],
        hidden_size=esm["embed_dim"],
        num_hidden_layers=esm["num_layers"],
        num_attention_heads=esm["attention_heads"],
        intermediate_size=4 * esm["embed_dim"],
        max_position_embeddings=1026,
        layer_norm_eps=esm["layer_norm_eps"],
        position_embedding_type="rotary",
        emb_layer_norm_before=False,
        token_dropout=esm["token_dropout"],
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        is_folding_model=True,
        esmfold_config=fold,
        vocab_list=list(get_default_vocab_list()),
    )


def transformers_esmfold(cfg: ESMFoldConfig, device: torch.device | str | None = None) -> nn.Module:
    """transformers' ``EsmForProteinFolding`` with ``cfg``'s shapes (its own initialisation; its
    __init__ halves the LM when ``cfg.fp16_esm``), built on ``device``, in eval mode."""
    from transformers import EsmConfig, EsmForProteinFolding

    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = EsmForProteinFolding(EsmConfig(**transformers_config_kwargs(cfg)))
    return model.eval()


def transformers_inputs(sequence: str, device: torch.device | str):
    """``aatype``, ``attention_mask`` and ``position_ids`` [1, L] of ``EsmForProteinFolding.forward``."""
    from transformers.models.esm.openfold_utils import residue_constants as rc

    aatype = torch.tensor([rc.restype_order_with_x.get(a, 20) for a in sequence], device=device)[None]
    mask = torch.ones_like(aatype)
    position_ids = torch.arange(len(sequence), device=device)[None]
    return aatype, mask, position_ids


def fair_esm2(num_layers: int, embed_dim: int, attention_heads: int, token_dropout: bool = True) -> nn.Module:
    """fair-esm's ``ESM2`` with the ESM-1b alphabet (every ESM-2 checkpoint's)."""
    import esm

    return esm.model.esm2.ESM2(num_layers=num_layers, embed_dim=embed_dim, attention_heads=attention_heads,
                               alphabet=esm.data.Alphabet.from_architecture("ESM-1b"),
                               token_dropout=token_dropout)


def _cache_root() -> Path:
    root = Path(os.environ.get("ESMFOLD_FAST_BENCH_CACHE", Path(tempfile.gettempdir()) / "esmfold_fast_bench"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_esmfold_checkpoint(cfg: ESMFoldConfig, seed: int = 0, root: Path | None = None) -> Path:
    """Write (once, cached by config and seed) a transformers ``EsmForProteinFolding`` directory with
    random weights at ``cfg``'s shapes, LM kept in fp32 (``fp16_esm=False``) for fair CPU timing."""
    import dataclasses

    cfg = dataclasses.replace(cfg, fp16_esm=False)
    out = (root or _cache_root()) / f"esmfold-{cfg.esm_type}-{_key(dataclasses.asdict(cfg), seed)}"
    if (out / "DONE").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    model = transformers_esmfold(cfg)
    randomize_parameters_(model, seed)
    model.save_pretrained(out)
    (out / "DONE").write_text("ok\n")
    return out


def prepare_esm2_checkpoint(cfg: ESM2Config, seed: int = 0, root: Path | None = None) -> Path:
    """Write (once) a fair-esm raw-layout ESM-2 ``.pt`` plus its contact-regression sibling."""
    name = f"esm2_t{cfg.num_layers}_d{cfg.embed_dim}_bench"
    out_dir = (root or _cache_root()) / f"esm2-{_key(cfg.num_layers, cfg.embed_dim, cfg.attention_heads, seed)}"
    path = out_dir / f"{name}.pt"
    if (out_dir / "DONE").is_file():
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    model = fair_esm2(cfg.num_layers, cfg.embed_dim, cfg.attention_heads, cfg.token_dropout)
    randomize_parameters_(model, seed)
    state = {}
    for k, v in model.state_dict().items():
        if k.startswith("contact_head."):
            continue
        prefix = "encoder." if k.startswith("lm_head.") else "encoder.sentence_encoder."
        state[prefix + k] = v
    namespace = argparse.Namespace(encoder_layers=cfg.num_layers, encoder_embed_dim=cfg.embed_dim,
                                   encoder_attention_heads=cfg.attention_heads,
                                   token_dropout=cfg.token_dropout)
    torch.save({"cfg": {"model": namespace}, "model": state}, path)
    reg = {k: v for k, v in model.state_dict().items() if k.startswith("contact_head.regression")}
    torch.save({"model": reg}, out_dir / f"{name}-contact-regression.pt")
    (out_dir / "DONE").write_text("ok\n")
    return path


# ----------------------------------------------------------------------------- matmul peak
def measure_matmul_peak(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                        n: int | None = None, repeats: int = 5) -> float:
    """Best achieved FLOP/s of one large square matmul: the roofline against which every
    benchmark's fraction of peak is reported."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.matmul(a, b)
    best = math.inf
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (a no-op on CPU), so wall-clock times cover it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_runs(fn, device: torch.device | str, *, warmup: int = 0, repeats: int = 1) -> tuple[list[float], Any]:
    """Seconds of each of ``repeats`` synchronised calls of ``fn()`` after ``warmup`` untimed ones, under
    ``torch.inference_mode``; returns the times and the last call's output."""
    times, out = [], None
    with torch.inference_mode():
        for i in range(warmup + repeats):
            synchronize(device)
            t0 = time.perf_counter()
            out = fn()
            synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return times, out


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# ----------------------------------------------------------------------------- the child side
def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    """This process's own peak RSS: /proc's VmHWM belongs to the address space exec created, whereas
    ``ru_maxrss`` carries the parent's RSS at fork over, so a large parent (a pytest run that has
    folded in-process) would inflate every child's figure."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
            "float64": torch.float64}[name]


def ours_fold(model, sequence: str, num_recycles: int | None):
    """A no-argument fold of ``sequence`` by our ``ESMFold``; returns the final atom14 positions."""
    return lambda: model.infer([sequence], num_recycles=num_recycles)["positions"][-1, 0]


def build_fold(spec: dict):
    """Load the model named by ``spec`` and return a no-argument callable running one fold."""
    device, dtype = torch.device(spec["device"]), _dtype(spec["dtype"])
    seq, num_recycles = spec["sequence"], spec["num_passes"] - 1
    provider = spec["provider"]
    if provider in ("ours", "reference"):
        from esmfold_fast import ESMFold

        backend = "reference" if provider == "reference" else spec.get("backend", "auto")
        model = ESMFold.from_pretrained(spec["checkpoint"], backend=backend, device=device, dtype=dtype)
        model.eval()
        if spec.get("chunk_size", "default") != "default":
            model.set_chunk_size(spec["chunk_size"])
        return ours_fold(model, seq, num_recycles)
    if provider == "transformers":
        from transformers import EsmForProteinFolding

        model = EsmForProteinFolding.from_pretrained(spec["checkpoint"]).to(device=device, dtype=dtype).eval()
        if spec.get("chunk_size", "default") != "default":
            model.trunk.set_chunk_size(spec["chunk_size"])
        aatype, mask, position_ids = transformers_inputs(seq, device)

        def fold():
            # transformers' infer() has no num_recycles; forward(num_recycles=N) runs N + 1 passes.
            out = model(aatype, mask, position_ids=position_ids, num_recycles=num_recycles)
            return out["positions"][-1, 0]

        return fold
    raise ValueError(f"unknown fold provider {provider!r}; choose from {FOLD_PROVIDERS}")


def build_esm2_forward(spec: dict):
    device, dtype = torch.device(spec["device"]), _dtype(spec["dtype"])
    gen = torch.Generator().manual_seed(spec.get("seed", 0))
    tokens = torch.randint(4, 24, (1, spec["length"] + 2), generator=gen)
    tokens[:, 0], tokens[:, -1] = 0, 2  # <cls> ... <eos>
    tokens = tokens.to(device)
    if spec["provider"] == "ours":
        from esmfold_fast import ESM2

        model = ESM2.from_pretrained(spec["checkpoint"], device=device, dtype=dtype).eval()
    elif spec["provider"] == "fair-esm":
        raw = torch.load(spec["checkpoint"], map_location="cpu", weights_only=False)
        args = raw["cfg"]["model"]
        model = fair_esm2(args.encoder_layers, args.encoder_embed_dim, args.encoder_attention_heads,
                          args.token_dropout)
        state = {k.replace("encoder.sentence_encoder.", "").replace("encoder.", ""): v
                 for k, v in raw["model"].items()}
        model.load_state_dict(state, strict=False)
        model = model.to(device=device, dtype=dtype).eval()
    else:
        raise ValueError(f"unknown ESM-2 provider {spec['provider']!r}; choose from {ESM2_PROVIDERS}")

    def forward():
        return model(tokens)["logits"]

    return forward


def _child_main(spec: dict) -> dict:
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = torch.device(spec["device"])
    make = {"fold": build_fold, "esm2": build_esm2_forward}[spec["task"]]
    fn = make(spec)
    rss_before = _rss_now()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        cuda_before = torch.cuda.memory_allocated(device)
    times, out = timed_runs(fn, device, warmup=spec.get("warmup", 0), repeats=spec.get("repeats", 1))
    result = {
        "times_s": times,
        "median_s": statistics.median(times),
        "rss_before_bytes": rss_before,
        "peak_rss_bytes": _peak_rss(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        result["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(device)
        result["cuda_before_bytes"] = cuda_before
    if spec.get("save_output"):
        torch.save(out.detach().float().cpu(), spec["save_output"])
    result["output_finite"] = bool(torch.isfinite(out.float()).all())
    return result


# ----------------------------------------------------------------------------- the parent side
class PointFailed(RuntimeError):
    """A measured child process failed (crash, out of memory, timeout)."""


def run_point(spec: dict, timeout: float | None = None, env: dict | None = None) -> dict:
    """Run one measurement in a fresh process and return its JSON result (plus ``wall_s``)."""
    child_env = dict(os.environ)
    if env:
        child_env.update(env)
    if torch.device(spec.get("device", "cpu")).type == "cuda":
        child_env.pop("TRITON_INTERPRET", None)  # interpreted kernels cannot run on CUDA tensors
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "esmfold_fast.benchmarking.measure", json.dumps(spec)],
                              capture_output=True, text=True, timeout=timeout, env=child_env)
    except subprocess.TimeoutExpired as err:
        raise PointFailed(f"{_describe(spec)}: timed out after {timeout} s") from err
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise PointFailed(f"{_describe(spec)}: exit {proc.returncode}: " + " | ".join(tail))
    result = json.loads(lines[-1][len(_RESULT_TAG):])
    result["wall_s"] = time.perf_counter() - t0
    result["spec"] = spec
    return result


def _describe(spec: dict) -> str:
    return f"{spec.get('task')}/{spec.get('provider')} L={spec.get('length')} {spec.get('dtype')}"


def add_model_arguments(ap: argparse.ArgumentParser) -> None:
    """The model options every profiling script shares: config, blocks, passes, dtype, device."""
    ap.add_argument("--config", default="esmfold_v1_8M", help="named config (esmfold_v1, esmfold_v1_8M, tiny)")
    ap.add_argument("--num-blocks", type=int, default=1)
    ap.add_argument("--passes", type=int, default=1)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--device", default=None)


def fold_spec(provider: str, checkpoint: Path | str, length: int, *, num_passes: int = 1,
              dtype: str = "float32", device: str | None = None, warmup: int = 0, repeats: int = 1,
              seed: int = 0, threads: int | None = None, backend: str = "auto",
              save_output: str | None = None, chunk_size: Any = "default") -> dict:
    """The JSON spec of one fold measurement (see :func:`run_point`)."""
    return dict(task="fold", provider=provider, checkpoint=str(checkpoint), length=length,
                sequence=random_sequence(length, seed), num_passes=num_passes, dtype=dtype,
                device=device or default_device(), warmup=warmup, repeats=repeats, threads=threads,
                backend=backend, save_output=save_output, chunk_size=chunk_size)


def esm2_spec(provider: str, checkpoint: Path | str, length: int, *, dtype: str = "float32",
              device: str | None = None, warmup: int = 1, repeats: int = 1, seed: int = 0,
              threads: int | None = None) -> dict:
    return dict(task="esm2", provider=provider, checkpoint=str(checkpoint), length=length, dtype=dtype,
                device=device or default_device(), warmup=warmup, repeats=repeats, seed=seed,
                threads=threads)


def alternate(specs: Sequence[dict], rounds: int, timeout: float | None = None) -> list[list[dict]]:
    """Run ``specs`` one after another, ``rounds`` times (a, b, a, b, ...), so slow drifts in machine
    load hit every side alike. Returns one list of results per spec."""
    results: list[list[dict]] = [[] for _ in specs]
    for _ in range(rounds):
        for i, spec in enumerate(specs):
            results[i].append(run_point(spec, timeout=timeout))
    return results


def median_of(results: Iterable[dict], key: str = "median_s") -> float:
    return statistics.median(r[key] for r in results)


def peak_memory_bytes(result: dict) -> int:
    """The memory figure a comparison uses: CUDA max allocated on GPU, peak RSS on CPU."""
    return int(result.get("cuda_peak_bytes", result["peak_rss_bytes"]))


def growth_exponent(lengths: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of log(value) against log(L): 2.0 means memory grows like L^2."""
    xs = [math.log(x) for x in lengths]
    ys = [math.log(y) for y in values]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def machine_info() -> dict:
    """What the numbers were measured on (for JSON files and RESULTS.md)."""
    import platform

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        info["cpu"] = platform.processor()
    for pkg in ("triton", "transformers", "esm"):
        try:
            mod = __import__(pkg)
            info[pkg] = getattr(mod, "__version__", "installed")
        except ImportError:
            info[pkg] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m esmfold_fast.benchmarking.measure '<json spec>'", file=sys.stderr)
        return 2
    result = _child_main(json.loads(argv[0]))
    print(_RESULT_TAG + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
