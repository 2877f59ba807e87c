"""The sweep's two figures (matplotlib, Agg): final Dice against epsilon, and bytes per round, per
configuration (a row's `label`, else its method)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def _key(row: dict[str, Any]) -> str:
    return row.get("label") or row["method"]


def save_dice_vs_epsilon(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Final mean Dice against the epsilon target (log axis), one line per configuration; no DP at the right."""
    targets = sorted({r["epsilon_target"] for r in rows if r["epsilon_target"] != "none"})
    no_dp_x = (max(targets) * 4) if targets else 1.0
    figure, axes = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    for key in dict.fromkeys(_key(r) for r in rows):
        points = sorted((no_dp_x if r["epsilon_target"] == "none" else r["epsilon_target"], r["final_dice"])
                        for r in rows if _key(r) == key and r["final_dice"] is not None)
        if points:
            axes.plot([x for x, _ in points], [y for _, y in points], marker="o", label=key)
    ticks = [*targets, no_dp_x] if any(r["epsilon_target"] == "none" for r in rows) else targets
    if ticks:
        axes.set_xscale("log")
        axes.set_xticks(ticks, [f"{t:g}" for t in targets] + (["no DP"] if len(ticks) > len(targets) else []))
        axes.minorticks_off()
    axes.set(xlabel="epsilon target over the run (DP-SGD)", ylabel="final validation Dice (mean of sites)",
             title="Dice against privacy budget")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return _save(figure, path)


def save_bytes_plot(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Bytes a site uploads and downloads per round, per configuration (its no-DP run, else its first)."""
    by_method: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["rounds"] and (_key(row) not in by_method or row["epsilon_target"] == "none"):
            by_method[_key(row)] = row
    methods = list(by_method)
    figure, axes = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    xs = range(len(methods))
    up = [by_method[m]["upload_bytes_per_site_round"] / 1e6 for m in methods]
    down = [by_method[m]["download_bytes_per_site_round"] / 1e6 for m in methods]
    axes.bar([x - 0.2 for x in xs], up, width=0.4, label="upload (site -> server)")
    axes.bar([x + 0.2 for x in xs], down, width=0.4, label="download (server -> site)")
    axes.set_xticks(list(xs), methods, rotation=20 if len(methods) > 3 else 0, fontsize=8)
    axes.set(ylabel="MB per site and round", title="Bytes per round, per configuration")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8)
    return _save(figure, path)
