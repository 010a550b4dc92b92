"""Confidence plots of one folded record: pLDDT per residue and the PAE heatmap (PNG, matplotlib).

Both plots cover the *real* residues only (padding and a multimer's linker removed, as in
:mod:`esmfold_fast.output`) and mark chain boundaries. matplotlib is an optional dependency
(``pip install 'esmfold-fast[plot]'``); it is imported on first use, with the Agg canvas attached to
each ``Figure`` directly, so nothing touches pyplot's global state or the user's backend choice.
"""

from __future__ import annotations

import io
import os
from typing import Any, Mapping

import numpy as np

from .output import _CA, CHAIN_IDS, _atom37_positions, _numpy, _select_item, atomic_write

# AlphaFold's pLDDT confidence bands (very high / confident / low / very low).
_PLDDT_BANDS = ((90, 100, "#0053d6"), (70, 90, "#65cbf3"), (50, 70, "#ffdb13"), (0, 50, "#ff7d45"))


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("plots need matplotlib: pip install 'esmfold-fast[plot]' (or pip install matplotlib)") from exc
    return Figure, FigureCanvasAgg


def _png(fig, canvas_cls) -> bytes:
    canvas_cls(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _chain_starts(chain: np.ndarray) -> list[int]:
    """0-based positions (in the real-residue order) where a new chain begins, the first excluded."""
    return [int(k) for k in np.flatnonzero(chain[1:] != chain[:-1]) + 1]


def plddt_plot_png(output: Mapping[str, Any], i: int, title: str | None = None) -> bytes:
    """PNG bytes: the per-residue pLDDT (CA atom, 0-100) of item ``i`` with AlphaFold's confidence bands
    shaded and a dashed vertical line at each chain boundary (chain ids written above)."""
    Figure, Canvas = _matplotlib()
    item = _select_item(output, _atom37_positions(output), i)
    plddt = item.plddt[:, _CA]
    n = plddt.size
    x = np.arange(1, n + 1)
    fig = Figure(figsize=(8, 3.2))
    ax = fig.add_subplot()
    for lo, hi, color in _PLDDT_BANDS:
        ax.axhspan(lo, hi, color=color, alpha=0.15, linewidth=0)
    ax.plot(x, plddt, color="black", linewidth=1)
    starts = _chain_starts(item.chain)
    for s in starts:
        ax.axvline(s + 0.5, color="tab:red", linestyle="--", linewidth=1)
    if starts:
        bounds = [0] + starts + [n]
        for a, b in zip(bounds[:-1], bounds[1:]):
            ax.text((a + b) / 2 + 0.5, 101, CHAIN_IDS[item.chain[a]], ha="center", va="bottom", fontsize=8)
    ax.set_xlim(0.5, n + 0.5)
    ax.set_ylim(0, 100)
    ax.set_xlabel("residue (chains concatenated)" if starts else "residue")
    ax.set_ylabel("pLDDT")
    if title:
        ax.set_title(title, pad=14 if starts else 6)
    fig.tight_layout()
    return _png(fig, Canvas)


def pae_plot_png(output: Mapping[str, Any], i: int, title: str | None = None) -> bytes:
    """PNG bytes: the PAE heatmap of item ``i`` (real residues; row = aligned residue, column = scored
    residue, as AlphaFold plots it), 0 to the max PAE, with chain boundary lines."""
    Figure, Canvas = _matplotlib()
    item = _select_item(output, _atom37_positions(output), i)
    pae = _numpy(output["predicted_aligned_error"])[i][np.ix_(item.present, item.present)].astype(np.float64)
    if "max_predicted_aligned_error" in output:
        vmax = float(np.asarray(_numpy(output["max_predicted_aligned_error"])).reshape(-1)[0])
    else:
        vmax = float(np.nanmax(pae)) if pae.size else 1.0
    n = pae.shape[0]
    fig = Figure(figsize=(5.2, 4.4))
    ax = fig.add_subplot()
    image = ax.imshow(pae, cmap="Greens_r", vmin=0, vmax=vmax, extent=(0.5, n + 0.5, n + 0.5, 0.5),
                      interpolation="nearest")
    for s in _chain_starts(item.chain):
        ax.axvline(s + 0.5, color="black", linewidth=1)
        ax.axhline(s + 0.5, color="black", linewidth=1)
    fig.colorbar(image, ax=ax, label="expected position error (Å)")
    ax.set_xlabel("scored residue")
    ax.set_ylabel("aligned residue")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _png(fig, Canvas)


def plot_pngs(output: Mapping[str, Any], i: int, title: str | None = None) -> tuple[bytes, bytes]:
    """``(pLDDT plot, PAE heatmap)`` of item ``i`` as PNG bytes (see :func:`plddt_plot_png`,
    :func:`pae_plot_png`), for a caller that writes its files itself."""
    return plddt_plot_png(output, i, title), pae_plot_png(output, i, title)


def save_plots(
    output: Mapping[str, Any],
    i: int,
    plddt_png: str | os.PathLike | None,
    pae_png: str | os.PathLike | None,
    title: str | None = None,
) -> None:
    """Write item ``i``'s pLDDT plot to the path ``plddt_png`` and its PAE heatmap to ``pae_png`` (PNG,
    each written atomically; ``None`` skips that plot)."""
    if plddt_png is not None:
        atomic_write(plddt_png, plddt_plot_png(output, i, title))
    if pae_png is not None:
        atomic_write(pae_png, pae_plot_png(output, i, title))


__all__ = ["pae_plot_png", "plddt_plot_png", "plot_pngs", "save_plots"]
