"""Benchmark code: measurement harness, FLOP/byte model and the ``esmfold-fast bench`` command.

The runtime (loading, folding, writing structures, ``esmfold-fast fold``) never imports this package:
it is used only by ``esmfold-fast bench`` (imported when that subcommand runs), ``benchmarks/``,
``profiling/`` and their tests. Unlike the runtime it may pull in transformers and fair-esm (the
peers it compares against) and writes random-weight checkpoints to a cache directory.

    cli      ``esmfold-fast bench``: ours against the reference backend and transformers
    measure  one process per measured point (``python -m esmfold_fast.benchmarking.measure SPEC``),
             shared random checkpoints, inputs and timing helpers
    flops    the analytic FLOP and memory-traffic model of ESMFold, per component
    launches, memory_model   kernel launches per trunk block and the analytic peak memory (meta device)
    dropin   speed and memory of ``esmfold_fast.accelerate`` on every class it supports
    throughput   measured fold times per length -> wall time and device-hours for a length distribution
"""
