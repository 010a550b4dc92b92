"""The ``esmfold-fast`` command line: ``fold`` FASTA records to PDB/mmCIF plus scores, or ``bench``.

Errors are one line each on stderr and never a traceback (``--traceback`` shows one for bug
reports). Exit status: 0 every record folded, 1 some record failed (the others are still written),
2 usage, input-file, output-directory or model problems.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Sequence

# torch and the model are imported inside the functions that need them.
from .fasta import DEFAULT_MAX_LENGTH, FastaError, FastaRecord, read_fasta

EXIT_OK, EXIT_RECORD_FAILED, EXIT_USAGE = 0, 1, 2
PROG = "esmfold-fast"

_DTYPES = {
    "float32": "float32", "fp32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16",
    "float64": "float64", "fp64": "float64",
}
_BACKENDS = ("auto", "reference", "torch", "triton")


class UsageError(Exception):
    """A problem with the command line, the input file, the output directory or the model (exit 2)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``esmfold-fast`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # forwarded untouched: the bench command parses its own options
        return _bench(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage / help
        return _exit_status(exc)
    if args.command is None:
        parser.print_usage(sys.stderr)
        _error("a command is required: fold or bench")
        return EXIT_USAGE
    if args.command == "bench":
        return _bench(args.bench_args)
    try:
        return fold(args)
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except (UsageError, FastaError) as err:
        _error(_one_line(err))
        return EXIT_USAGE
    except (ValueError, OSError, RuntimeError) as err:  # CheckpointError is a ValueError
        if args.traceback:
            raise
        _error(_one_line(err))
        return EXIT_USAGE
    except Exception as err:  # a bug: still one line, with a way to see the traceback
        if args.traceback:
            raise
        _error(f"internal error ({type(err).__name__}: {_one_line(err)}); rerun with --traceback for details")
        return EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fast ESMFold: predict protein structures from sequences.",
        epilog="Exit status: 0 all records folded, 1 some record failed, 2 usage/input/model error.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    fold_p = sub.add_parser(
        "fold",
        help="fold every record of a FASTA file",
        description=(
            "Fold every record of a FASTA file. Chains of a complex go in one record separated by ':' "
            "(they are joined by a poly-G linker that is removed from the output). Writes <id>.pdb "
            "(and/or <id>.cif) and <id>.scores.json per record into OUTDIR, where <id> is the record "
            "id made safe as a file name. Bad records are reported and skipped; the rest are folded."
        ),
        epilog="Exit status: 0 all records folded, 1 some record failed, 2 usage/input/model error.",
    )
    fold_p.add_argument("input", metavar="INPUT.fasta", help="FASTA file with one or more records")
    fold_p.add_argument("-o", "--output", metavar="OUTDIR", required=True,
                        help="output directory (created if missing)")
    fold_p.add_argument("--model", metavar="PATH", required=True,
                        help="checkpoint: a transformers EsmForProteinFolding directory (config.json + "
                             "model.safetensors or pytorch_model.bin), a fair-esm esmfold_3B_v1.pt file, "
                             "or a name found in the local cache (facebook/esmfold_v1, esmfold_3B_v1); "
                             "nothing is downloaded")
    fold_p.add_argument("--esm-path", metavar="PATH", default=None,
                        help="ESM-2 checkpoint for a fair-esm .pt model (default: beside it, else the "
                             "torch hub cache)")
    fold_p.add_argument("--num-recycles", type=_non_negative_int, default=None, metavar="N",
                        help="recycling iterations: N+1 trunk passes (default, as the reference: "
                             "max_recycles passes, 4 for ESMFold v1, the same as --num-recycles 3)")
    fold_p.add_argument("--chunk-size", type=_positive_int, default=None, metavar="N",
                        help="chunk the pair-state attention over N rows to save memory on long "
                             "sequences (default: the model's setting)")
    fold_p.add_argument("--device", type=_device, default=None, metavar="D",
                        help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)")
    fold_p.add_argument("--dtype", type=_dtype, default=None, metavar="T",
                        help="compute dtype: float32/fp32, bfloat16/bf16, float16/fp16 or float64 "
                             "(default: float32; on CUDA the LM runs in fp16 like the reference)")
    fold_p.add_argument("--backend", choices=_BACKENDS, default="auto",
                        help="kernel backend: triton on CUDA and torch elsewhere when auto (default: auto)")
    fold_p.add_argument("--max-length", type=_positive_int, default=DEFAULT_MAX_LENGTH, metavar="N",
                        help="skip (with an error) records longer than N residues summed over their "
                             f"chains (default: {DEFAULT_MAX_LENGTH})")
    fold_p.add_argument("--format", choices=("pdb", "cif", "both"), default="pdb",
                        help="structure file format: PDB, mmCIF or both (default: pdb)")
    fold_p.add_argument("--traceback", action="store_true",
                        help="show a Python traceback on unexpected errors (for bug reports)")

    bench_p = sub.add_parser("bench", help="benchmark the model and kernels (run 'bench --help')",
                             add_help=False)
    bench_p.add_argument("bench_args", nargs=argparse.REMAINDER)
    return parser


def fold(args: argparse.Namespace) -> int:
    """The ``fold`` command; returns the exit status, raises for exit-2 problems."""
    started = time.perf_counter()
    contents = read_fasta(args.input, max_length=args.max_length)
    for err in contents.errors:
        _error(err.message)
    records = contents.records
    if not records:
        _error(f"{args.input}: no valid records to fold")
        return EXIT_RECORD_FAILED

    outdir = Path(args.output)
    _make_outdir(outdir)
    model = _load_model(args)

    record_errors = (RuntimeError, ValueError, OSError, *_triton_errors())
    failed = 0
    for n, record in enumerate(records, start=1):
        t0 = time.perf_counter()
        try:
            summary = _fold_record(model, record, args, outdir)
        except record_errors as err:
            failed += 1
            _error(f"{args.input}: record {record.index} {record.id!r}: folding failed: {_fold_failure(err)}")
            _release_accelerator_memory()
            continue
        chains = len(record.chains)
        _info(
            f"[{n}/{len(records)}] {record.id}: {record.num_residues} residues, {chains} chain"
            f"{'s' if chains > 1 else ''}, {summary} ({time.perf_counter() - t0:.1f} s)"
        )

    total = len(records) + len(contents.errors)
    bad = failed + len(contents.errors)
    _info(
        f"{PROG}: folded {len(records) - failed} of {total} record{'s' if total != 1 else ''} in "
        f"{time.perf_counter() - started:.1f} s"
        + (f", {bad} failed" if bad else "")
        + f"; outputs in {outdir}"
    )
    return EXIT_OK if bad == 0 else EXIT_RECORD_FAILED


def _fold_record(model, record: FastaRecord, args: argparse.Namespace, outdir: Path) -> str:
    """Fold one record and write its files; returns the confidence summary for the progress line.

    Every output text is produced before the first file is written, and each file is written
    atomically, so a failing record leaves no file behind.
    """
    import torch

    from .output import atomic_write, output_to_mmcif, output_to_pdbs, scores_json

    with torch.inference_mode():  # the writers need no [L, L, C] output: leave them out (GBs at L ~ 2700)
        output = model.infer([record.sequence], num_recycles=args.num_recycles, return_pair_outputs=False)
    texts: dict[str, str] = {}
    if args.format in ("pdb", "both"):
        texts[".pdb"] = output_to_pdbs(output)[0]
    if args.format in ("cif", "both"):
        texts[".cif"] = output_to_mmcif(output, name=record.id)[0]
    scores_text = scores_json(output, 0, id=record.id, header=record.header)
    for suffix, text in texts.items():
        atomic_write(outdir / f"{record.id}{suffix}", text)
    atomic_write(outdir / f"{record.id}.scores.json", scores_text)  # last: marks the record complete
    mean_plddt = float(output["mean_plddt"][0])
    ptm = float(output["ptm"][0])
    return f"mean pLDDT {mean_plddt:.1f}, pTM {ptm:.3f}"


def _make_outdir(outdir: Path) -> None:
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except FileExistsError as err:
        raise UsageError(f"{outdir}: output path exists and is not a directory") from err
    except OSError as err:
        raise UsageError(f"{outdir}: cannot create output directory ({err.strerror or err})") from err


def _load_model(args: argparse.Namespace):
    """Validate backend/device, then load the checkpoint; every failure is one line naming the path."""
    import torch

    from .backend import get_backend

    path = Path(args.model)
    if not path.exists() and _looks_like_a_path(args.model):
        raise UsageError(f"{path}: no such model file or directory (--model)")
    if args.esm_path is not None and not Path(args.esm_path).is_file():
        raise UsageError(f"{args.esm_path}: no such ESM-2 checkpoint file (--esm-path)")
    device = args.device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present")
    try:
        get_backend(args.backend, device)
    except (ValueError, RuntimeError) as err:
        raise UsageError(f"--backend {args.backend}: {_one_line(err)}") from err
    dtype = getattr(torch, args.dtype) if args.dtype else None

    from .esmfold import ESMFold

    t0 = time.perf_counter()
    _info(f"loading model {args.model} on {device} ...")
    try:
        model = ESMFold.from_pretrained(
            args.model, backend=args.backend, device=device, dtype=dtype, esm_path=args.esm_path
        )
        if args.chunk_size is not None:
            model.set_chunk_size(args.chunk_size)
    except (ValueError, OSError, RuntimeError, KeyError) as err:  # CheckpointError is a ValueError
        message = _one_line(err)
        if args.model not in message and str(path) not in message:
            message = f"{args.model}: {message}"
        raise UsageError(f"cannot load model: {message}") from err
    _info(f"model loaded in {time.perf_counter() - t0:.1f} s")
    return model


def _looks_like_a_path(text: str) -> bool:
    """A missing ``--model`` that cannot be a cache name (``org/model`` or ``esmfold_3B_v1``)."""
    return (
        text.startswith((".", "/", "~"))
        or text.count("/") > 1
        or os.sep != "/" and os.sep in text
        or text.endswith((".pt", ".bin", ".safetensors", ".json"))
    )


def _bench(argv: Sequence[str]) -> int:
    """Forward to :func:`esmfold_fast.benchmarking.cli.main`, imported only here: the runtime (``fold``)
    never loads the benchmark code or what it compares against."""
    try:
        from .benchmarking.cli import main as bench_main
    except ImportError as err:
        _error(f"bench is unavailable: {_one_line(err)}")
        return EXIT_USAGE
    try:
        status = bench_main(list(argv))
    except SystemExit as exc:
        return _exit_status(exc)
    return int(status or 0)


def _triton_errors() -> tuple[type[BaseException], ...]:
    """Triton's exception classes, which are not ``RuntimeError`` (none when triton is missing).

    ``TritonError`` is the base of ``OutOfResources``, ``CompilationError``, ``PTXASError`` and the
    rest since triton 3; the two named ones are added for layouts without that base. Looked up only
    when :data:`fastfold_kernels.HAVE_TRITON` says triton imported, so this never imports it anew.
    """
    import importlib

    from fastfold_kernels import HAVE_TRITON

    if not HAVE_TRITON:
        return ()
    found = []
    for module, name in (
        ("triton.errors", "TritonError"),
        ("triton.runtime.errors", "OutOfResources"),
        ("triton.compiler.errors", "CompilationError"),
    ):
        try:
            cls = getattr(importlib.import_module(module), name)
        except Exception:  # another triton layout: that class is simply not caught by name
            continue
        if isinstance(cls, type) and issubclass(cls, Exception):
            found.append(cls)
    return tuple(found)


def _fold_failure(err: BaseException) -> str:
    if type(err).__module__.split(".")[0] == "triton":
        return _triton_failure(err)
    message = _one_line(err)
    if "out of memory" in message.lower():
        message += " (try a smaller --chunk-size, a lower-precision --dtype or a shorter sequence)"
    return message


def _triton_failure(err: BaseException) -> str:
    """One line for a Triton exception: what failed, triton's own first line, and what to try."""
    kinds = {cls.__name__ for cls in type(err).__mro__}
    if "OutOfResources" in kinds:
        detail = _one_line(err).split(". Reducing block sizes")[0]  # advice for kernel authors, not users
        return (f"Triton kernel out of resources ({detail}); try a smaller --chunk-size, another --dtype "
                "or --backend torch")
    if "CompilationError" in kinds:
        # The message opens with the kernel's source; the error itself is error_message.
        detail = _one_line(getattr(err, "error_message", None) or err)
        return f"Triton kernel failed to compile ({type(err).__name__}: {detail}); try --backend torch"
    return f"Triton error ({type(err).__name__}: {_one_line(err)}); try --backend torch"


def _release_accelerator_memory() -> None:
    """After a failed record (often out-of-memory) give cached blocks back before the next one."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _dtype(text: str) -> str:
    key = text.strip().lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise argparse.ArgumentTypeError(
            f"unknown dtype {text!r}; choose float32/fp32, bfloat16/bf16, float16/fp16 or float64"
        )
    return _DTYPES[key]


def _device(text: str):
    import torch

    try:
        return torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r} (e.g. cpu, cuda, cuda:0)") from None


def _exit_status(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return EXIT_OK
    if isinstance(code, int):
        return code
    _error(str(code))
    return EXIT_USAGE


def _one_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


def _error(message: str) -> None:
    print(f"{PROG}: error: {' '.join(message.splitlines())}", file=sys.stderr, flush=True)


def _info(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
