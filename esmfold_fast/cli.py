"""The ``esmfold-fast`` command line: ``fold`` FASTA records to structures plus scores, ``embed`` them with ESM-2
(both batch runs through :mod:`esmfold_fast.batch`, here or on Ray), or ``bench``.

Errors are one line each on stderr and never a traceback (``--traceback`` shows one for bug
reports). Exit status: 0 every record folded, 1 some record failed (the others are still written),
2 usage, input-file, output-directory or model problems.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Sequence

# torch and the model are imported inside the functions that need them.
from .fasta import AMINO_ACID_LETTERS, DEFAULT_MAX_LENGTH, FastaContents, FastaError, read_fasta
from .tasks import DEFAULT_CHAIN_LINKER, DEFAULT_RESIDUE_INDEX_OFFSET

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
        _error("a command is required: fold, embed or bench")
        return EXIT_USAGE
    if args.command == "bench":
        return _bench(args.bench_args)
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        _error("interrupted; rerun the same command to resume (complete records are skipped)")
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
        description="Fast ESMFold: predict protein structures from sequences, or embed them with ESM-2.",
        epilog="Exit status: 0 all records done, 1 some record failed, 2 usage/input/model error.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_fold_parser(sub)
    _add_embed_parser(sub)
    bench_p = sub.add_parser("bench", help="benchmark the model and kernels (run 'bench --help')",
                             add_help=False)
    bench_p.add_argument("bench_args", nargs=argparse.REMAINDER)
    return parser


_RUN_EPILOG = (
    "Resume: a record is complete once <id>.<command>.done is written (after all its files); a rerun skips "
    "complete records and redoes the rest (--overwrite redoes all). OUTDIR also gets summary.tsv (one row per "
    "record) and <command>.log. Exit status: 0 all records done, 1 some record failed, 2 usage/input/model error."
)


def _add_fold_parser(sub) -> None:
    p = sub.add_parser(
        "fold",
        help="fold every record of a FASTA file",
        description=(
            "Fold every record of a FASTA file. Chains of a complex go in one record separated by ':' "
            "(they are joined by a poly-G linker that is removed from the output). Writes <id>.pdb "
            "(and/or <id>.cif, ModelCIF), <id>.scores.json and <id>.pae.json (AlphaFold DB layout) per "
            "record into OUTDIR, where <id> is the record id made safe as a file name. Records are sorted by "
            "length and folded in batches. Bad records are reported and skipped; the rest are folded."
        ),
        epilog=_RUN_EPILOG,
    )
    _add_run_arguments(p, "structures")
    p.add_argument("--model", metavar="PATH", required=True,
                   help="checkpoint: a transformers EsmForProteinFolding directory (config.json + "
                        "model.safetensors or pytorch_model.bin), a fair-esm esmfold_3B_v1.pt file, "
                        "or a name found in the local cache (facebook/esmfold_v1, esmfold_3B_v1); "
                        "nothing is downloaded without --download")
    p.add_argument("--esm-path", metavar="PATH", default=None,
                   help="ESM-2 checkpoint for a fair-esm .pt model (default: beside it, else the "
                        "torch hub cache)")
    p.add_argument("--max-tokens-per-batch", type=_non_negative_int, default=1024, metavar="N",
                   help="fold records together while the padded batch (records x longest, linkers "
                        "counted) stays within N residues; 0 folds one record per pass (default: 1024)")
    p.add_argument("--num-recycles", type=_non_negative_int, default=None, metavar="N",
                   help="recycling iterations: N+1 trunk passes (default, as the reference: "
                        "max_recycles passes, 4 for ESMFold v1, the same as --num-recycles 3)")
    p.add_argument("--chunk-size", type=_positive_int, default=None, metavar="N",
                   help="chunk the pair-state work over at most N rows to save memory on long "
                        "sequences (default: from the memory budget); lowered automatically on out-of-memory")
    p.add_argument("--max-length", type=_positive_int, default=DEFAULT_MAX_LENGTH, metavar="N",
                   help="skip (with an error) records longer than N residues summed over their "
                        f"chains (default: {DEFAULT_MAX_LENGTH})")
    p.add_argument("--format", choices=("pdb", "cif", "both"), default="pdb",
                   help="structure file format: PDB, ModelCIF (mmCIF with pLDDT as a ModelCIF QA metric; "
                        "needs the 'cif' extra) or both (default: pdb)")
    p.add_argument("--plots", action="store_true",
                   help="also write <id>.plddt.png and <id>.pae.png (needs matplotlib: the 'plot' extra)")
    p.add_argument("--chain-linker", type=_linker, default=DEFAULT_CHAIN_LINKER, metavar="SEQ",
                   help=f"residues joining the chains of a complex (default: {len(DEFAULT_CHAIN_LINKER)} G)")
    p.add_argument("--residue-index-offset", type=_non_negative_int, default=DEFAULT_RESIDUE_INDEX_OFFSET,
                   metavar="N", help="residue-index gap between chains of a complex "
                                     f"(default: {DEFAULT_RESIDUE_INDEX_OFFSET})")


def _add_embed_parser(sub) -> None:
    p = sub.add_parser(
        "embed",
        help="embed every record of a FASTA file with ESM-2 (fair-esm extract.py's outputs)",
        description=(
            "Embed every record of a FASTA file with an ESM-2 model. Writes <id>.pt per record in fair-esm "
            "extract.py's layout (label, representations, mean_representations, bos_representations, contacts; "
            "logits on request), loadable with torch.load(weights_only=True), and <id>.npz with --npz. "
            "Records are sorted by length and embedded in batches."
        ),
        epilog=_RUN_EPILOG,
    )
    _add_run_arguments(p, "embeddings")
    p.add_argument("--model", metavar="PATH", required=True,
                   help="ESM-2 checkpoint: a fair-esm .pt file, a transformers EsmModel/EsmForMaskedLM "
                        "directory, or a cached name (esm2_t33_650M_UR50D, facebook/esm2_t33_650M_UR50D); "
                        "nothing is downloaded without --download")
    p.add_argument("--repr-layers", type=int, nargs="+", default=[-1], metavar="K",
                   help="layers whose representations to save; negative counts from the end, 0 is the "
                        "embedding (default: -1)")
    p.add_argument("--include", nargs="+", choices=("mean", "per_tok", "bos", "contacts", "logits"),
                   default=["mean"], help="what to save per record (default: mean)")
    p.add_argument("--toks-per-batch", type=_non_negative_int, default=4096, metavar="N",
                   help="embed records together while the padded batch stays within N tokens; 0 = one "
                        "record per pass (default: 4096)")
    p.add_argument("--truncation-seq-length", type=_positive_int, default=1022, metavar="N",
                   help="embed only the first N residues of longer records (default: 1022)")
    p.add_argument("--npz", action="store_true", help="also write <id>.npz (numpy arrays)")


def _add_run_arguments(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("input", metavar="INPUT.fasta", help="FASTA file with one or more records; - reads stdin")
    p.add_argument("-o", "--output", metavar="OUTDIR", required=True,
                   help=f"output directory for the {what} (created if missing)")
    p.add_argument("--device", type=_device, default=None, metavar="D",
                   help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--dtype", type=_dtype, default=None, metavar="T",
                   help="compute dtype: float32/fp32, bfloat16/bf16, float16/fp16 or float64 "
                        "(default: float32; on CUDA ESMFold's LM runs in fp16 like the reference)")
    p.add_argument("--backend", choices=_BACKENDS, default="auto",
                   help="kernel backend: triton on CUDA and torch elsewhere when auto (default: auto)")
    p.add_argument("--download", action="store_true",
                   help="download a named model that is not in the local cache (Hugging Face hub or "
                        "fair-esm's URLs, into the usual caches)")
    p.add_argument("--overwrite", action="store_true", help="redo records that are already complete")
    ray = p.add_argument_group("running on a Ray cluster (pip install 'esmfold-fast[ray]')")
    ray.add_argument("--ray", metavar="ADDRESS", default=None,
                     help="run the batches on a Ray cluster: 'local' starts one on this machine, 'auto' joins "
                          "the running one, or ray://HOST:PORT; OUTDIR must be on a file system every node sees")
    ray.add_argument("--ray-actors", type=_positive_int, default=None, metavar="N",
                     help="model replicas (default: one per GPU, or per --ray-cpus-per-actor cores)")
    ray.add_argument("--ray-gpus-per-actor", type=_positive_float, default=None, metavar="G",
                     help="GPUs per replica (default: 1 when the cluster has GPUs)")
    ray.add_argument("--ray-cpus-per-actor", type=_positive_float, default=None, metavar="C",
                     help="CPU cores per replica on a cluster without GPUs (default: all of the smallest "
                          "node's, one replica per node: each replica holds the whole model)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    p.add_argument("--traceback", action="store_true",
                   help="show a Python traceback on unexpected errors (for bug reports)")


def fold(args: argparse.Namespace) -> int:
    """The ``fold`` command; returns the exit status, raises for exit-2 problems."""
    from .tasks import FoldOptions

    contents = _read_input(args, max_length=args.max_length)
    if args.format in ("cif", "both"):
        _require_modelcif()
    if args.plots:
        _require_matplotlib()
    options = FoldOptions(
        num_recycles=args.num_recycles,
        formats=("pdb", "cif") if args.format == "both" else (args.format,),
        chain_linker=args.chain_linker,
        residue_index_offset=args.residue_index_offset,
        plots=args.plots,
    )
    return _execute("fold", contents, args, args.max_tokens_per_batch, fold=options, esm_path=args.esm_path,
                    chunk_size=args.chunk_size)


def embed(args: argparse.Namespace) -> int:
    """The ``embed`` command; returns the exit status, raises for exit-2 problems."""
    from .embed import EmbedOptions

    try:
        options = EmbedOptions(repr_layers=tuple(args.repr_layers), include=tuple(args.include),
                               truncation_seq_length=args.truncation_seq_length)
    except ValueError as err:
        raise UsageError(_one_line(err)) from err
    from .embed import embeddable

    contents = embeddable(_read_input(args, max_length=None))
    return _execute("embed", contents, args, args.toks_per_batch, embed=options, npz=args.npz)


def _execute(kind: str, contents: FastaContents, args: argparse.Namespace, max_tokens: int, **options) -> int:
    """Make the output directory, resolve the model, then run here or on Ray; returns the exit status."""
    from .tasks import TaskSpec

    if not contents.records:  # nothing to run: say why per record, load no model, create nothing
        for err in contents.errors:
            _error(err.message)
        _error(f"{contents.path}: no valid records to {kind}")
        return EXIT_RECORD_FAILED
    esm_path = options.get("esm_path")
    if esm_path is not None and not Path(esm_path).is_file():
        raise UsageError(f"{esm_path}: no such ESM-2 checkpoint file (--esm-path)")
    if args.ray is not None:
        _ray_or_usage_error()
    outdir = _make_outdir(Path(args.output))
    spec = TaskSpec(kind, model=_model_name(args, kind), device=None if args.device is None else str(args.device),
                    dtype=args.dtype, backend=args.backend, **options)
    if args.ray is not None:
        return _run_on_ray(spec, contents, outdir, args, max_tokens)
    task = _build_task(spec, args)
    return _run(task, contents, outdir, args, max_tokens)


_COMMANDS = {"fold": fold, "embed": embed}


def _run(task, contents: FastaContents, outdir: Path, args: argparse.Namespace, max_tokens: int) -> int:
    from .batch import run_task

    report = run_task(
        task, contents.records, outdir, bad_records=contents.errors, label=contents.path,
        max_tokens=max_tokens, overwrite=args.overwrite, quiet=args.quiet, stream=sys.stderr,
        error_prefix=f"{PROG}: error: ",
        record_errors=(RuntimeError, ValueError, OSError, MemoryError, *_triton_errors()),
    )
    return _finish(task, report, outdir, args)


def _finish(task, report, outdir: Path, args: argparse.Namespace) -> int:
    from .batch import final_line

    if not args.quiet or not report.exit_ok:
        _info(f"{PROG}: {final_line(task, report, outdir)}")
    return EXIT_OK if report.exit_ok else EXIT_RECORD_FAILED


def _ray_or_usage_error() -> None:
    from .distributed import RayUnavailable, import_ray

    try:
        import_ray()
    except RayUnavailable as err:
        raise UsageError(f"--ray: {err}") from err


def _run_on_ray(spec, contents: FastaContents, outdir: Path, args: argparse.Namespace, max_tokens: int) -> int:
    from .distributed import Cluster, _planner, run_distributed

    cluster = Cluster(address=args.ray, actors=args.ray_actors, cpus_per_actor=args.ray_cpus_per_actor,
                      gpus_per_actor=args.ray_gpus_per_actor)
    report = run_distributed(
        spec, contents.records, outdir, bad_records=contents.errors, label=contents.path, max_tokens=max_tokens,
        cluster=cluster, overwrite=args.overwrite, quiet=args.quiet, stream=sys.stderr,
        error_prefix=f"{PROG}: error: ",
    )
    return _finish(_planner(spec), report, outdir, args)


def _read_input(args: argparse.Namespace, max_length: int | None) -> FastaContents:
    contents = read_fasta(args.input, max_length=max_length)
    if not contents.records and not contents.errors:
        raise UsageError(f"{contents.path}: no records")
    return contents


def _make_outdir(outdir: Path) -> Path:
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except FileExistsError as err:
        raise UsageError(f"{outdir}: output path exists and is not a directory") from err
    except OSError as err:
        raise UsageError(f"{outdir}: cannot create output directory ({err.strerror or err})") from err
    return outdir


def _require_modelcif() -> None:
    if importlib.util.find_spec("modelcif") is None:
        raise UsageError("--format cif needs python-modelcif: pip install 'esmfold-fast[cif]'")


def _require_matplotlib() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plots needs matplotlib: pip install 'esmfold-fast[plot]'")


def _model_name(args: argparse.Namespace, kind: str) -> str:
    """``--model``, downloaded first with ``--download``; a missing path is one line naming it."""
    from .pretrained import ensure_local, lookup, resolve_pretrained

    name = args.model
    if args.download:
        try:
            name = ensure_local(args.model, "esmfold" if kind == "fold" else "esm2")
        except (ValueError, OSError, RuntimeError) as err:
            raise UsageError(f"cannot download {args.model}: {_one_line(err)}") from err
    elif not Path(name).exists() and lookup(name) is not None:  # esmfold_v1, esm2_t33_650M_UR50D, ...
        try:
            name = resolve_pretrained(name)  # from whichever local cache has it; the error says where to put it
        except ValueError as err:
            raise UsageError(f"cannot load model: {_one_line(err)}") from err
    if not Path(name).exists() and _looks_like_a_path(name):
        raise UsageError(f"{name}: no such model file or directory (--model)")
    return name


def _build_task(spec, args: argparse.Namespace):
    """Validate device and backend, load the checkpoint and build the task; every failure is one line naming
    the model."""
    import torch

    from .backend import get_backend
    from .tasks import load_model

    device = args.device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present")
    try:
        get_backend(args.backend, device)
    except (ValueError, RuntimeError) as err:
        raise UsageError(f"--backend {args.backend}: {_one_line(err)}") from err

    t0 = time.perf_counter()
    if not args.quiet:
        _info(f"loading model {spec.model} on {device} ...")
    try:
        model = load_model(dataclasses.replace(spec, device=str(device)))
    except (ValueError, OSError, RuntimeError, KeyError) as err:  # CheckpointError is a ValueError
        message = _one_line(err)
        if spec.model not in message:
            message = f"{spec.model}: {message}"
        raise UsageError(f"cannot load model: {message}") from err
    try:
        task = spec.build(model)
    except ValueError as err:  # embed options that do not fit the model (a layer out of range, no contact head)
        raise UsageError(f"{spec.model}: {_one_line(err)}") from err
    if not args.quiet:
        _info(f"model loaded in {time.perf_counter() - t0:.1f} s")
    return task


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


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _linker(text: str) -> str:
    linker = text.strip().upper()
    bad = sorted(set(linker) - AMINO_ACID_LETTERS)
    if bad:
        raise argparse.ArgumentTypeError(f"not amino-acid letters: {''.join(bad)!r}")
    return linker


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
