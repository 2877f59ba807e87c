"""`DIR/dice.png`: validation Dice per round, one line per site and the mean (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _value(value) -> float:
    return float("nan") if value is None else float(value)


def save_dice_plot(metrics: dict, path: str | Path) -> Path:
    """Plot the `rounds` of a metrics record; the held-out site (if any) dotted, the mean dashed."""
    rounds = metrics.get("rounds", [])
    holdout = (metrics.get("plan") or {}).get("holdout")
    xs = [r["round"] for r in rounds]
    figure, axes = plt.subplots(figsize=(6, 4), dpi=120)
    for site in sorted({name for r in rounds for name in r["sites"]}):
        ys = [_value(r["sites"].get(site, {}).get("dice")) for r in rounds]
        style = ":" if site == holdout else "-"
        axes.plot(xs, ys, style, marker="o", label=f"{site} (held out)" if site == holdout else site)
    axes.plot(xs, [_value(r.get("mean_dice")) for r in rounds], "k--", linewidth=2, label="mean")
    centralized = (metrics.get("centralized") or {}).get("dice")
    if centralized is not None:
        axes.axhline(centralized, color="grey", linewidth=1, label="centralized")
    axes.set(xlabel="round", ylabel="validation Dice", title=f"{metrics.get('name', 'run')}: Dice per round")
    axes.set_ylim(0, 1)
    if xs:
        axes.set_xticks(xs)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
