"""Ahead-of-time compile report for the Triton kernels: registers, spills, shared memory, tensor cores.

Every op module of :mod:`fastfold_kernels` lists the kernel configurations the model launches in
``aot_configs() -> list[AOTConfig]``, or ``aot_configs(arch)`` where its launcher picks tiles by the
GPU's architecture. This script compiles each of them for each requested NVIDIA
architecture WITHOUT a GPU (REFERENCE.md section 4: ``triton.compile(ASTSource(...),
target=GPUTarget("cuda", arch, 32))``), then reads from the cubin, with the ``cuobjdump`` Triton
ships, the registers per thread and the STACK/LOCAL bytes (register spills), takes the shared memory
from Triton's metadata, and greps the SASS for tensor-core instructions (``HGMMA`` is Hopper's
warpgroup MMA, ``HMMA`` the Ampere-style warp MMA).

    python profiling/compile_report.py --json out.json [--arch 90 80] [--kernel NAME ...]

Writes a JSON list of rows ``{"kernel", "arch", "config", "registers", "spill_bytes",
"shared_bytes", "tensor_cores", ...}`` and prints a table; exits non-zero when any configuration
fails to compile, spills, or needs more shared memory than the architecture has.

A kernel decorated while ``TRITON_INTERPRET=1`` is an interpreter object that cannot be compiled, so
when that variable is set this script re-executes itself without it before importing any kernel.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Iterable, Sequence

OP_MODULES = (
    "fastfold_kernels.layer_norm",
    "fastfold_kernels.rotary_attention",
    "fastfold_kernels.triangle_attention",
    "fastfold_kernels.triangle_multiplicative_update",
)
DEFAULT_ARCHS = (90, 80)

# Largest dynamic shared memory one block may opt into (CUDA programming guide, compute capabilities
# table): a config above this compiles but fails to launch on that GPU.
SHARED_LIMIT_BYTES = {80: 166912, 86: 101376, 89: 101376, 90: 232448}

_INTERPRET_VAR = "TRITON_INTERPRET"
_REEXEC_GUARD = "_FASTFOLD_COMPILE_REPORT_REEXEC"


# --------------------------------------------------------------------------------------------------
# The interpreter guard
# --------------------------------------------------------------------------------------------------
def interpreter_requested(env: dict[str, str] | None = None) -> bool:
    """True when ``TRITON_INTERPRET`` asks for the interpreter (Triton treats "1"/"true"/"on" so)."""
    value = (env if env is not None else os.environ).get(_INTERPRET_VAR, "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def clean_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment without ``TRITON_INTERPRET``: kernels imported there compile."""
    env = dict(os.environ if env is None else env)
    env.pop(_INTERPRET_VAR, None)
    return env


def _reexec_without_interpreter(argv: Sequence[str]) -> None:
    """Replace this process by one running the same report with the interpreter off."""
    env = clean_env()
    if env.get(_REEXEC_GUARD):  # pragma: no cover - would only loop if execve kept the variable
        raise RuntimeError("compile_report: TRITON_INTERPRET is still set after re-executing")
    env[_REEXEC_GUARD] = "1"
    script = str(Path(__file__).resolve())
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, script, *argv], env)


# --------------------------------------------------------------------------------------------------
# Collecting the configurations
# --------------------------------------------------------------------------------------------------
def load_module(ref: str):
    """Import ``ref``: a dotted module name, or a path to a ``.py`` file (loaded under its stem)."""
    if ref.endswith(".py") or os.sep in ref:
        path = Path(ref).resolve()
        name = "_aot_" + re.sub(r"\W", "_", path.stem)
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {ref!r} as a module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(ref)


def takes_arch(getter) -> bool:
    """True when ``aot_configs`` takes an ``arch`` argument (its launches differ by architecture)."""
    try:
        return "arch" in inspect.signature(getter).parameters
    except (TypeError, ValueError):
        return False


def module_configs(ref: str, arch: int | None = None) -> list:
    """The module's ``aot_configs(arch)`` (or ``aot_configs()`` when it takes no arch: the same
    launches everywhere); raises ``AttributeError`` when it does not define one."""
    module = load_module(ref)
    getter = getattr(module, "aot_configs", None)
    if getter is None:
        raise AttributeError(f"{ref} defines no aot_configs(): its kernels cannot be compile-checked")
    configs = list(getter(arch=arch) if arch is not None and takes_arch(getter) else getter())
    if not configs:
        raise ValueError(f"{ref}.aot_configs() returned no configurations")
    return configs


def name_matches(patterns: Sequence[str] | None, *names: str) -> bool:
    """``--kernel`` filter: a pattern (fnmatch-style) matching the config name or its module."""
    if not patterns:
        return True
    candidates = {n for n in names} | {n.rsplit(".", 1)[-1] for n in names}
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in candidates)


# --------------------------------------------------------------------------------------------------
# Compiling one configuration
# --------------------------------------------------------------------------------------------------
def _pointer_attrs(signature: dict[str, str], arg_names: Sequence[str]) -> dict:
    """Mark every pointer 16-byte aligned, as Triton's launcher does for fresh torch allocations.

    Without it the AOT build would assume unaligned pointers and report narrower loads (and other
    register counts) than the kernels really run with.
    """
    try:
        from triton.backends.compiler import BaseBackend

        aligned = BaseBackend.parse_attr("D")
    except (ImportError, AttributeError):  # triton without parse_attr: its literal form
        aligned = [["tt.divisibility", 16]]
    return {(i,): aligned for i, n in enumerate(arg_names) if signature[n].startswith("*")}


def build_source(cfg, constexpr_in_signature: bool = True):
    """``ASTSource`` for one :class:`AOTConfig`, in the conventions of the installed Triton.

    Triton >= 3.3 keys ``constexprs`` by argument name and wants every argument, constexprs included
    (typed ``"constexpr"``), in ``signature``. Constexpr parameters the config leaves out take their
    default from the kernel's definition.
    """
    from triton.compiler import ASTSource
    from triton.runtime import JITFunction

    fn = cfg.fn
    if not isinstance(fn, JITFunction):
        raise TypeError(
            f"{cfg.name}: fn is {type(fn).__name__}, not a compilable triton.jit function "
            "(was it decorated with TRITON_INTERPRET=1 set?)"
        )
    params = getattr(fn, "params", [])
    constexprs = dict(cfg.constexprs)
    for p in params:
        if p.is_constexpr and p.name not in constexprs:
            if p.default is inspect.Parameter.empty:
                raise ValueError(f"{cfg.name}: constexpr {p.name!r} has no value and no default")
            constexprs[p.name] = p.default
    unknown = sorted(set(cfg.signature) - set(fn.arg_names)) + sorted(set(constexprs) - set(fn.arg_names))
    if unknown:
        raise ValueError(f"{cfg.name}: {unknown} are not arguments of {fn.__name__}{tuple(fn.arg_names)}")
    missing = [n for n in fn.arg_names if n not in cfg.signature and n not in constexprs]
    if missing:
        raise ValueError(f"{cfg.name}: no type for arguments {missing} of {fn.__name__}")
    signature = {}
    for n in fn.arg_names:
        if n in constexprs:
            if constexpr_in_signature:
                signature[n] = "constexpr"
        else:
            signature[n] = cfg.signature[n]
    attrs = _pointer_attrs({n: signature.get(n, "constexpr") for n in fn.arg_names}, fn.arg_names)
    if "constexprs" not in inspect.signature(ASTSource.__init__).parameters:
        raise RuntimeError(f"triton {_triton_version()} is older than 3.3: its ASTSource is not supported")
    return ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)


def compile_config(cfg, arch: int):
    """Compile ``cfg`` for ``sm_<arch>`` without a GPU; returns Triton's ``CompiledKernel``."""
    import triton
    from triton.backends.compiler import GPUTarget

    options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    target = GPUTarget("cuda", arch, 32)
    try:
        return triton.compile(build_source(cfg), target=target, options=options)
    except KeyError as first:
        # A Triton that wants constexprs only in ``constexprs`` (not typed in the signature).
        try:
            return triton.compile(build_source(cfg, constexpr_in_signature=False), target=target,
                                  options=options)
        except Exception:
            raise first from None


def _triton_version() -> str:
    import triton

    return triton.__version__


# --------------------------------------------------------------------------------------------------
# Reading the binary
# --------------------------------------------------------------------------------------------------
def find_tool(name: str) -> str | None:
    """Path of an NVIDIA binary tool: Triton's knob, Triton's bundled copy, then ``PATH``."""
    try:
        from triton import knobs

        path = getattr(knobs.nvidia, name).path
        if path and os.path.isfile(path):
            return path
    except (ImportError, AttributeError, RuntimeError):
        pass
    import triton

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if bundled.is_file():
        return str(bundled)
    return shutil.which(name)


_RES_LINE = re.compile(r"Function\s+(\S+?):\s*\n\s*(.*)")
_RES_FIELD = re.compile(r"([A-Z_]+(?:\[\d+\])?):(\d+)")


def parse_res_usage(text: str) -> dict[str, dict[str, int]]:
    """``cuobjdump -res-usage`` output -> ``{function: {"REG": .., "STACK": .., "SHARED": .., "LOCAL": ..}}``."""
    out: dict[str, dict[str, int]] = {}
    for match in _RES_LINE.finditer(text):
        out[match.group(1)] = {k: int(v) for k, v in _RES_FIELD.findall(match.group(2))}
    return out


_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas_verbose(text: str) -> dict[str, int]:
    """``ptxas -v`` output -> ``{"REG", "STACK", "SPILL_STORES", "SPILL_LOADS"}`` (one entry function)."""
    regs = _PTXAS_REGS.search(text)
    stack = _PTXAS_STACK.search(text)
    if regs is None or stack is None:
        raise ValueError(f"unrecognised ptxas -v output:\n{text}")
    return {
        "REG": int(regs.group(1)),
        "STACK": int(stack.group(1)),
        "SPILL_STORES": int(stack.group(2)),
        "SPILL_LOADS": int(stack.group(3)),
    }


def tensor_core_kind(sass: str) -> str | None:
    """``"HGMMA"`` (sm_90 warpgroup MMA), ``"HMMA"`` (warp MMA) or ``None`` from SASS text."""
    # Plain substring tests: the SASS of a big kernel is megabytes ("HGMMA" does not contain "HMMA").
    if "HGMMA" in sass:
        return "HGMMA"
    if "HMMA" in sass:
        return "HMMA"
    return None


def tensor_core_kind_from_ptx(ptx: str) -> str | None:
    """The same question asked of the PTX (``wgmma`` lowers to HGMMA, ``mma.sync`` to HMMA)."""
    if "wgmma.mma_async" in ptx:
        return "HGMMA"
    if re.search(r"\bmma\.sync\b", ptx):
        return "HMMA"
    return None


_DOT_PRECISION = re.compile(r"inputPrecision\s*=\s*(\w+)")
_DOT_OPERAND = re.compile(r":\s*tensor<(?:\d+x)+([a-z]+\d*)")


def dot_summary(ttir: str) -> list[dict[str, str]]:
    """Every ``tt.dot`` of the Triton IR: operand element type and input precision.

    Triton prints ``inputPrecision`` only when it differs from its default, ``ieee``. An fp32 dot in
    ``ieee`` precision (full fp32, what the trunk's fp32 parity path asks for) has no tensor-core form,
    so only the other dots are expected to reach HGMMA/HMMA.
    """
    dots = []
    for line in ttir.splitlines():
        if "tt.dot " not in line:
            continue
        operand = _DOT_OPERAND.search(line)
        precision = _DOT_PRECISION.search(line)
        dots.append({
            "operand": operand.group(1) if operand else "?",
            "precision": precision.group(1) if precision else "ieee",
        })
    return dots


def dots_need_tensor_cores(dots: Iterable[dict[str, str]]) -> bool:
    """True when some dot has a tensor-core form (anything but an fp32 ``ieee`` dot)."""
    return any(not (d["operand"] == "f32" and d["precision"] == "ieee") for d in dots)


def _run_tool(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout + proc.stderr


def _triton_ptxas(arch: int) -> str | None:
    """The ptxas Triton itself assembles ``sm_<arch>`` with (3.9 has a newer one for sm_90+)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        path = get_ptxas(arch).path
        if path and os.path.isfile(path):
            return path
    except (ImportError, AttributeError, RuntimeError, TypeError):
        pass
    return find_tool("ptxas")


def _triton_ptxas_flags(kernel) -> list[str]:
    """The register-allocation flags Triton's own ptxas call passes, so the re-assembly matches its cubin.

    Register counts depend on them (triton 3.9 adds ``--regAllocOptLevel=2``; without it a spilling
    kernel gets another allocation), so read them from this Triton's ``make_cubin``.
    """
    flags = ["-lineinfo"]
    try:
        from triton.backends.nvidia.compiler import CUDABackend

        source = inspect.getsource(CUDABackend.make_cubin)
    except (ImportError, AttributeError, OSError, TypeError):
        source = ""
    if "--regAllocOptLevel=2" in source:
        flags.append("--regAllocOptLevel=2")
    if not getattr(kernel.metadata, "enable_fp_fusion", True):
        flags.append("--fmad=false")
    return flags


def _ptxas_arch(arch: int) -> str:
    # Triton builds sm_90 kernels for sm_90a (wgmma needs the architecture-specific features).
    return f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"


_FACTS_FORMAT = 2  # bump when what binary_facts reads or how changes: stale cache entries are ignored


def _facts_cache_dir() -> Path:
    """Where facts read from a cubin are kept, so a rerun over Triton's compile cache is quick."""
    base = os.environ.get("TRITON_CACHE_DIR") or os.path.join(Path.home(), ".triton", "cache")
    return Path(base) / "fastfold_compile_report"


def binary_facts(kernel, arch: int, tools: str = "auto") -> dict[str, Any]:
    """Registers, spills and tensor-core kind of a compiled kernel, with the tool that gave them.

    ``tools``: ``"auto"`` (cuobjdump, else ptxas -v, else Triton's metadata) or ``"ptxas"`` (skip
    cuobjdump). Cached on disk by the cubin's hash: the same binary always gives the same facts.
    """
    cubin = kernel.asm["cubin"]
    key = hashlib.sha256(cubin + f"{tools}/{_FACTS_FORMAT}".encode()).hexdigest()
    cache = _facts_cache_dir() / f"{key}.json"
    if cache.is_file():
        try:
            return json.loads(cache.read_text())
        except (OSError, ValueError):
            pass  # a torn write by a concurrent run: measure again
    facts = _read_binary(kernel, arch, use_cuobjdump=tools == "auto")
    if facts["registers"] is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(facts))
            os.replace(tmp, cache)
        except OSError:
            pass  # a read-only cache only costs time
    return facts


def _read_binary(kernel, arch: int, use_cuobjdump: bool = True) -> dict[str, Any]:
    name = kernel.metadata.name
    cuobjdump = find_tool("cuobjdump") if use_cuobjdump else None
    with tempfile.TemporaryDirectory() as tmp:
        cubin_path = os.path.join(tmp, "kernel.cubin")
        Path(cubin_path).write_bytes(kernel.asm["cubin"])
        if cuobjdump is not None:
            text = _run_tool([cuobjdump, "-res-usage", "-sass", cubin_path])
            usage = parse_res_usage(text)
            if not usage:
                raise RuntimeError(f"cuobjdump -res-usage printed no resource usage for {name}")
            res = usage.get(name) or max(usage.values(), key=lambda r: r.get("REG", 0))
            return {
                "registers": res.get("REG"),
                "stack_bytes": res.get("STACK", 0),
                "local_bytes": res.get("LOCAL", 0),
                "spill_bytes": res.get("STACK", 0) + res.get("LOCAL", 0),
                "tensor_cores": tensor_core_kind(text),
                "facts_from": "cuobjdump -res-usage/-sass",
            }
        ptxas = _triton_ptxas(arch)
        if ptxas is not None:
            ptx_path = os.path.join(tmp, "kernel.ptx")
            Path(ptx_path).write_text(kernel.asm["ptx"])
            cmd = [ptxas, *_triton_ptxas_flags(kernel), "-v", f"--gpu-name={_ptxas_arch(arch)}", ptx_path,
                   "-o", cubin_path]
            info = parse_ptxas_verbose(_run_tool(cmd))
            return {
                "registers": info["REG"],
                "stack_bytes": info["STACK"],  # the stack frame holds the spilled registers
                "local_bytes": 0,
                "spill_bytes": info["STACK"],
                "spill_store_bytes": info["SPILL_STORES"],
                "tensor_cores": tensor_core_kind_from_ptx(kernel.asm["ptx"]),
                "facts_from": "ptxas -v and PTX (cuobjdump not used)",
            }
    # Neither tool: Triton only fills n_regs/n_spills when it loads the kernel on a GPU.
    return {
        "registers": getattr(kernel, "n_regs", None),
        "stack_bytes": None,
        "local_bytes": None,
        "spill_bytes": getattr(kernel, "n_spills", None),
        "tensor_cores": tensor_core_kind_from_ptx(kernel.asm["ptx"]),
        "facts_from": "triton metadata only (no cuobjdump or ptxas found)",
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


def describe_config(cfg) -> dict[str, Any]:
    """The launch parameters of a config, as JSON."""
    pointer_types = sorted({t[1:] for t in cfg.signature.values() if t.startswith("*")})
    return {
        "fn": getattr(cfg.fn, "__name__", str(cfg.fn)),
        "num_warps": cfg.num_warps,
        "num_stages": cfg.num_stages,
        "constexprs": {k: _jsonable(v) for k, v in cfg.constexprs.items()},
        "pointer_dtypes": pointer_types,
    }


def config_label(config: dict[str, Any]) -> str:
    """One-line form of :func:`describe_config` for the printed table."""
    consts = " ".join(f"{k}={v}" for k, v in config.get("constexprs", {}).items())
    dtypes = "/".join(config.get("pointer_dtypes", []))
    return f"w{config.get('num_warps')} s{config.get('num_stages')} {dtypes} {consts}".strip()


def report_row(module_ref: str, index: int, arch: int, tools: str = "auto") -> dict[str, Any]:
    """Compile config ``index`` of ``module_ref`` for ``arch`` and describe it (errors become a row)."""
    row: dict[str, Any] = {"module": module_ref, "index": index, "arch": arch, "kernel": None, "config": None}
    try:
        cfg = module_configs(module_ref, arch)[index]
        row.update(kernel=cfg.name, config=describe_config(cfg), uses_dot=bool(cfg.uses_dot))
        start = time.perf_counter()
        kernel = compile_config(cfg, arch)
        row["compile_s"] = round(time.perf_counter() - start, 3)
        row["shared_bytes"] = int(kernel.metadata.shared)
        row["shared_limit_bytes"] = SHARED_LIMIT_BYTES.get(arch)
        row.update(binary_facts(kernel, arch, tools))
        dots = dot_summary(kernel.asm["ttir"])
        row["dots"] = dots
        row["expects_tensor_cores"] = dots_need_tensor_cores(dots)
        row["error"] = None
    except Exception as err:  # one broken config must not hide the others
        row["error"] = f"{type(err).__name__}: {err}"
    return row


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------
def row_problems(row: dict[str, Any]) -> list[str]:
    """What is wrong with one row: compile error, spills, shared memory over the limit, wrong MMA."""
    if row.get("error"):
        return [row["error"]]
    problems = []
    if row.get("spill_bytes"):
        problems.append(f"spills {row['spill_bytes']} bytes")
    limit = row.get("shared_limit_bytes")
    if limit is not None and row.get("shared_bytes", 0) > limit:
        problems.append(f"shared memory {row['shared_bytes']} > {limit} bytes")
    if row.get("uses_dot") and not row.get("dots"):
        problems.append("uses_dot=True but the kernel has no tt.dot")
    if row.get("expects_tensor_cores"):
        wanted = "HGMMA" if row["arch"] >= 90 else "HMMA"
        if row.get("tensor_cores") != wanted:
            problems.append(f"tensor cores {row.get('tensor_cores')}, expected {wanted}")
    return problems


def collect_jobs(
    modules: Sequence[str], archs: Sequence[int], kernels: Sequence[str] | None, tools: str = "auto"
) -> tuple[list[tuple[str, int, int, str]], list[dict[str, Any]]]:
    """(module, config index, arch) for every selected config; modules that fail become error rows.

    The configs are listed per arch: a module's launcher may pick other tiles on another GPU.
    """
    jobs, failed = [], []
    for ref in modules:
        for arch in archs:
            try:
                configs = module_configs(ref, arch)
            except Exception as err:
                failed.append({"module": ref, "index": None, "arch": arch, "kernel": ref, "config": None,
                               "error": f"{type(err).__name__}: {err}"})
                continue
            for index, cfg in enumerate(configs):
                if name_matches(kernels, cfg.name, ref):
                    jobs.append((ref, index, arch, tools))
    return jobs, failed


def _start_methods() -> list[str]:
    import multiprocessing

    return multiprocessing.get_all_start_methods()


def _pool_job(job: tuple[str, int, int, str]) -> dict[str, Any]:
    return report_row(*job)


def run_report(
    modules: Sequence[str] = OP_MODULES,
    archs: Sequence[int] = DEFAULT_ARCHS,
    kernels: Sequence[str] | None = None,
    processes: int = 2,
    tools: str = "auto",
) -> list[dict[str, Any]]:
    """Compile every selected configuration for every arch; one row each (see module docstring).

    Must run in a process where the kernels were imported with the interpreter off.
    """
    if interpreter_requested():
        raise RuntimeError("run_report needs TRITON_INTERPRET unset (use main(), which re-executes)")
    jobs, rows = collect_jobs(modules, archs, kernels, tools)
    if processes > 1 and len(jobs) > 2:
        # fork: workers inherit the imported kernels (a spawned worker re-imports torch and triton,
        # seconds each); nothing has compiled yet, so no LLVM threads exist to be forked mid-state.
        method = "fork" if "fork" in _start_methods() else "spawn"
        with ProcessPoolExecutor(max_workers=processes, mp_context=get_context(method)) as pool:
            rows.extend(pool.map(_pool_job, jobs))
    else:
        rows.extend(report_row(*job) for job in jobs)
    for row in rows:
        row["problems"] = row_problems(row)
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A fixed-width table of the rows for the terminal."""
    head = ("kernel", "arch", "regs", "spill", "smem KB", "TC", "config / problems")
    lines = [f"{head[0]:<40} {head[1]:>4} {head[2]:>5} {head[3]:>6} {head[4]:>8} {head[5]:>6}  {head[6]}"]
    for row in rows:
        smem = row.get("shared_bytes")
        smem_s = f"{smem / 1024:.1f}" if isinstance(smem, int) else "-"
        detail = "; ".join(row.get("problems") or []) or config_label(row.get("config") or {})
        mark = "!! " if row.get("problems") else ""
        lines.append(
            f"{str(row.get('kernel')):<40} {str(row.get('arch') or '-'):>4} "
            f"{str(row.get('registers', '-')):>5} {str(row.get('spill_bytes', '-')):>6} {smem_s:>8} "
            f"{str(row.get('tensor_cores') or '-'):>6}  {mark}{detail}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--arch", type=int, nargs="+", default=list(DEFAULT_ARCHS), help="sm versions")
    parser.add_argument("--kernel", nargs="+", help="only configs/modules matching these (fnmatch)")
    parser.add_argument("--module", action="append", default=[],
                        help="another module (dotted name or .py path) with aot_configs(); repeatable")
    parser.add_argument("--no-ops", action="store_true", help="skip the fastfold_kernels op modules")
    parser.add_argument("--processes", type=int, default=2, help="parallel compile processes")
    parser.add_argument("--tools", choices=("auto", "ptxas"), default="auto",
                        help="auto: cuobjdump (else ptxas -v); ptxas: read the facts from ptxas -v")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if interpreter_requested():
        _reexec_without_interpreter(argv)
    args = parse_args(argv)
    if importlib.util.find_spec("triton") is None:  # the op modules import without it; compiling needs it
        print("compile_report needs the triton package, which is not installed: pip install 'triton>=3.6' "
              "(wheels exist for Linux only)", file=sys.stderr)
        return 2
    modules = ([] if args.no_ops else list(OP_MODULES)) + list(args.module)
    start = time.perf_counter()
    rows = run_report(modules, args.arch, args.kernel, args.processes, args.tools)
    elapsed = time.perf_counter() - start
    print(format_table(rows))
    bad = [r for r in rows if r["problems"]]
    facts = sorted({r.get("facts_from") for r in rows if r.get("facts_from")})
    print(f"\n{len(rows)} rows, {len(bad)} with problems, {elapsed:.1f} s, triton {_triton_version()}; "
          f"facts from: {', '.join(facts) or '-'}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
