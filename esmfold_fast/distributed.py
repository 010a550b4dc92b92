"""``fold`` and ``embed`` on a Ray cluster: the single-machine record pipeline, one model replica per actor.

    from esmfold_fast.distributed import fold_fasta
    report = fold_fasta("proteins.fasta", "out/", model="facebook/esmfold_v1", address="auto")

The driver reads the FASTA with the project's own reader, leaves out records complete in the output directory
(the same ``<id>.<task>.done`` markers as the CLI, so a rerun or a restarted driver does only what is missing),
and packs the rest into length-sorted batches under the same token budget as the CLI. The batches become a
``ray.data`` dataset of one row each, mapped by an actor pool (``map_batches`` with a callable class and
``ActorPoolStrategy``): each actor loads the model once and runs :func:`esmfold_fast.batch.process_batch` on its
batches, which writes the record files exactly as the single-machine command does and returns one status row
per record, never raising, so a failing record cannot fail the job. The driver merges the rows into one
``summary.tsv`` as they arrive.

A killed actor is restarted by Ray and its batch retried on a live one; records the dead actor had finished
are not redone (their markers exist), so every record is written once. The output directory must be one that
every node sees under the same path (a shared file system).

``ray`` is an optional extra (``pip install 'esmfold-fast[ray]'``), imported only here and only when used.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Sequence

from .batch import RunOptions, RunReport, pack_batches, process_batch, session
from .fasta import FastaRecord, RecordError
from .tasks import TaskSpec

INSTALL_HINT = "Ray is not installed: pip install 'esmfold-fast[ray]' (or pip install 'ray[data]')"


class RayUnavailable(RuntimeError):
    """``ray`` (with ``ray.data``) cannot be imported; the message says how to install it."""


def import_ray():
    """``ray`` with ``ray.data`` loaded, or :class:`RayUnavailable` naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401 - the batch API
    except ImportError as err:
        raise RayUnavailable(INSTALL_HINT) from err
    return ray


@dataclasses.dataclass(frozen=True)
class Cluster:
    """Where and how wide to run. ``address``: ``"local"`` starts a Ray instance on this machine, anything
    else is passed to ``ray.init`` (``"auto"``, ``"ray://head:10001"``). ``gpus_per_actor`` (default: 1 when
    the cluster has GPUs) or ``cpus_per_actor`` (a CPU replica per that many cores, when it has none; default:
    the smallest node's cores, one replica per node, since every replica holds the whole model);
    ``actors``: the pool size (default: as many as the cluster's GPUs or CPUs allow)."""

    address: str = "local"
    actors: int | None = None
    cpus_per_actor: float | None = None
    gpus_per_actor: float | None = None
    local_cpus: int | None = None  # only for address="local": the CPUs the local instance may use


class _BatchWorker:
    """A Ray Data callable class: the model is loaded once per actor, then every row (one batch of records,
    as JSON) is processed and turned into status rows (as JSON: they hold None and mixed types)."""

    def __init__(self, spec: TaskSpec, outdir: str, label: str, threads: int | None) -> None:
        import torch

        if threads:
            torch.set_num_threads(max(1, int(threads)))
        self.task = spec.build()
        self.outdir, self.label = Path(outdir), label

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        rows: list[str] = []
        for payload in batch["records"]:
            records = [FastaRecord(**r) for r in json.loads(str(payload))]
            rows += [json.dumps(r, allow_nan=False) for r in process_batch(self.task, records, self.outdir,
                                                                           label=self.label)]
        return {"row": rows}


def fold_fasta(input: str | os.PathLike, outdir: str | os.PathLike, model: str, *, max_tokens: int = 1024,
               max_length: int | None = None, cluster: Cluster = Cluster(), overwrite: bool = False,
               quiet: bool = False, **spec_fields: Any) -> RunReport:
    """Fold every record of ``input`` into ``outdir`` on a Ray cluster; the outputs (names, layout, values)
    are the single-machine ``esmfold-fast fold``'s. ``spec_fields``: the other fields of
    :class:`~esmfold_fast.tasks.TaskSpec` (``device``, ``dtype``, ``backend``, ``chunk_size``, ``fold`` =
    :class:`~esmfold_fast.tasks.FoldOptions`, ...)."""
    from .fasta import DEFAULT_MAX_LENGTH, read_fasta

    contents = read_fasta(input, max_length=max_length or DEFAULT_MAX_LENGTH)
    spec = TaskSpec("fold", model=str(model), **spec_fields)
    return run_distributed(spec, contents.records, Path(outdir), bad_records=contents.errors,
                           label=contents.path, max_tokens=max_tokens, cluster=cluster, overwrite=overwrite,
                           quiet=quiet)


def embed_fasta(input: str | os.PathLike, outdir: str | os.PathLike, model: str, *, max_tokens: int = 4096,
                cluster: Cluster = Cluster(), overwrite: bool = False, quiet: bool = False,
                **spec_fields: Any) -> RunReport:
    """Embed every record of ``input`` into ``outdir`` on a Ray cluster, as ``esmfold-fast embed`` does
    (``spec_fields``: ``embed`` = :class:`~esmfold_fast.embed.EmbedOptions`, ``npz``, ``device``, ...)."""
    from .embed import embeddable
    from .fasta import read_fasta

    contents = embeddable(read_fasta(input, max_length=None))
    spec = TaskSpec("embed", model=str(model), **spec_fields)
    return run_distributed(spec, contents.records, Path(outdir), bad_records=contents.errors,
                           label=contents.path, max_tokens=max_tokens, cluster=cluster, overwrite=overwrite,
                           quiet=quiet)


def run_distributed(
    spec: TaskSpec,
    records: Sequence[FastaRecord],
    outdir: Path,
    *,
    bad_records: Sequence[RecordError] = (),
    cluster: Cluster = Cluster(),
    **options: Any,
) -> RunReport:
    """:func:`esmfold_fast.batch.run_task`'s run with the batches done by a Ray actor pool (``options``: the
    fields of :class:`~esmfold_fast.batch.RunOptions`)."""
    ray = import_ray()
    opts = RunOptions(**options)
    outdir.mkdir(parents=True, exist_ok=True)
    planner = _planner(spec)  # the task's token counts and columns; no model on the driver
    with session(planner, records, outdir, bad_records, opts, where=f" on Ray ({cluster.address})") as run:
        if run.todo:
            batches = pack_batches(run.todo, planner.tokens, opts.max_tokens)
            for row in _map_on_ray(ray, spec, batches, outdir, opts.label, cluster, run.log, opts.quiet):
                run.add_row(row)
    return run.report


def _planner(spec: TaskSpec):
    """The task without a model, for what the driver needs: names, columns, token counts (any spec with
    TaskSpec's ``build(model, check)`` will do)."""
    return spec.build(model=object(), check=False)


def _map_on_ray(ray, spec: TaskSpec, batches: list[list[FastaRecord]], outdir: Path, label: str,
                cluster: Cluster, log, quiet: bool) -> Any:
    """Yield every record's status row as the actor pool finishes batches."""
    started_here = _connect(ray, cluster)
    context = ray.data.DataContext.get_current()
    bars = context.enable_progress_bars
    try:
        if quiet:
            context.enable_progress_bars = False  # for this run only: restored below
        resources = ray.cluster_resources()
        gpus = cluster.gpus_per_actor
        cpus = cluster.cpus_per_actor
        if gpus is None and cpus is None:
            gpus = 1 if resources.get("GPU", 0) >= 1 else None
            cpus = None if gpus else _smallest_node_cpus(ray)  # one replica per node: a model per core would not fit
        if gpus:
            actors = cluster.actors or max(1, int(resources.get("GPU", 0) // gpus))
        else:
            actors = cluster.actors or max(1, int(resources.get("CPU", 1) // cpus))
        actors = min(actors, len(batches))
        log.info(f"{len(batches)} batches on {actors} actors ({f'{gpus} GPU' if gpus else f'{cpus} CPU'} each)")
        items = [{"records": json.dumps([dataclasses.asdict(r) for r in batch])} for batch in batches]
        dataset = ray.data.from_items(items, override_num_blocks=len(items))
        mapped = dataset.map_batches(
            _BatchWorker,
            batch_size=1,
            fn_constructor_kwargs={"spec": spec, "outdir": str(outdir), "label": label,
                                   "threads": None if gpus else cpus},
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=gpus or 0,
            num_cpus=cpus if not gpus else 1,
        )
        for item in mapped.iter_rows():
            yield json.loads(item["row"])
    finally:
        context.enable_progress_bars = bars
        if started_here:
            ray.shutdown()


def _smallest_node_cpus(ray) -> float:
    """The CPUs of the smallest alive node (at least 1), so a CPU replica fits on every node."""
    cpus = [n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    return max(1.0, min((c for c in cpus if c > 0), default=1.0))


def _connect(ray, cluster: Cluster) -> bool:
    """Connect to the cluster (or start a local one); True when this call started Ray and must stop it."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"log_to_driver": True, "include_dashboard": False}
    if cluster.address == "local":
        kwargs["num_cpus"] = cluster.local_cpus or os.cpu_count()
    else:
        kwargs["address"] = cluster.address
    ray.init(**kwargs)
    return True
