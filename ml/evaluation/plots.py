"""PNG figures of the policy evaluation, for report.md (linked) and report.html (embedded).

- `reward_by_policy.png`: proxy and gold reward per policy with 95% CI error bars: the paper's
  comparison, and beside it the judge the policy never trained against;
- `training_curves.png`: PPO's reward and gold reward (left) and KL to the base policy (right) over
  steps: a proxy curve that climbs while the gold curve stays flat is over-optimisation as it happens;
- `kl_vs_gold.png`: each tuned policy's answers, KL to base against gold reward: how far from the base
  model a policy moved, and whether moving bought anything the judge values.
Figures are drawn on the Agg canvas directly (no pyplot), so plotting is headless and keeps no global
state; each file is written to a temporary name and moved into place.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ml.evaluation.summary import TUNED_POLICIES, PolicyEvaluation
from ml.io import atomic_write

DPI = 110
REWARD_COLORS = {"proxy": "#4C72B0", "gold": "#DD8452", "judged": "#55A868"}


def save_plots(evaluation: PolicyEvaluation, folder: Path,
               training_curves: pd.DataFrame | None = None) -> dict[str, Path]:
    """Writes the figures that have data into `folder`; name -> path. The training-curve figure needs
    `training_curves`, the KL figure at least one tuned answer with a finite KL."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figures = {"reward_by_policy": reward_by_policy_figure(evaluation.table),
               "training_curves": training_curves_figure(training_curves),
               "kl_vs_gold": kl_vs_gold_figure(evaluation.scored)}
    paths = {}
    for name, figure in figures.items():
        if figure is not None:
            paths[name] = save_png(figure, folder / f"{name}.png")
    return paths


def save_png(figure: Figure, path: Path) -> Path:
    path = Path(path)
    atomic_write(path, FigureCanvasAgg(figure).print_png)
    return path


def reward_by_policy_figure(table: pd.DataFrame) -> Figure:
    """Grouped bars: mean proxy P(MET), gold P(MET) and judged reward per policy, error bars the 95% CI."""
    figure = Figure(figsize=(max(4.5, 1.1 * len(table) + 2), 3.8), dpi=DPI, layout="constrained")
    ax = figure.add_subplot()
    x = np.arange(len(table))
    width = 0.27
    labels = {"proxy": "proxy P(MET)", "gold": "gold P(MET)", "judged": "judged reward"}
    for offset, metric in ((-width, "proxy"), (0.0, "gold"), (width, "judged")):
        mean = table[f"{metric}_mean"].to_numpy(dtype=float)
        low, high = table[f"{metric}_ci_low"].to_numpy(dtype=float), table[f"{metric}_ci_high"].to_numpy(dtype=float)
        # An undefined CI (a single answer) draws no error bar instead of failing the plot.
        errors = np.nan_to_num(np.vstack([mean - low, high - mean]), nan=0.0)
        ax.bar(x + offset, np.nan_to_num(mean), width, yerr=errors, capsize=3, color=REWARD_COLORS[metric],
               label=labels[metric])
    ax.set_xticks(x, list(table["policy"]))
    ax.set(ylim=(0, 1), ylabel="mean over answers", title="P(MET) and judged reward by policy (95% CI)")
    ax.legend(loc="upper left", fontsize="small")
    return figure


def training_curves_figure(curves: pd.DataFrame | None) -> Figure | None:
    """Left: the rollouts' training reward per step (`reward_mean`, the design's reward before
    normalisation), and the validation evaluations' `judged_reward`, `gold_p_met` and `proxy_p_met`;
    right: `kl` to the RL reference per step (and `kl_coef` on a second axis when logged). None without a
    `step` column or any data."""
    if curves is None or curves.empty or "step" not in curves:
        return None
    reward_columns = [c for c in ("reward_mean", "proxy_p_met", "gold_p_met", "judged_reward")
                      if _has_data(curves, c)]
    if not reward_columns and not _has_data(curves, "kl"):
        return None
    curves = curves.sort_values("step")
    figure = Figure(figsize=(9, 3.6), dpi=DPI, layout="constrained")
    left, right = figure.subplots(1, 2)
    styles = {"reward_mean": dict(color="#8172B3", alpha=0.6, label="training reward (rollouts)"),
              "proxy_p_met": dict(color=REWARD_COLORS["proxy"], marker="o", label="proxy P(MET) (validation)"),
              "gold_p_met": dict(color=REWARD_COLORS["gold"], marker="s", label="gold P(MET) (validation)"),
              "judged_reward": dict(color=REWARD_COLORS["judged"], marker="^", label="judged reward (validation)")}
    for column in reward_columns:
        part = curves[["step", column]].dropna()  # eval columns are NaN between evaluations
        left.plot(part["step"], part[column], **styles[column])
    left.set(xlabel="RL step", ylabel="reward", title="Training reward and validation judges")
    if reward_columns:
        left.legend(fontsize="small")
    lines = []
    if _has_data(curves, "kl"):
        part = curves[["step", "kl"]].dropna()
        lines += right.plot(part["step"], part["kl"], color="#55A868", label="KL to RL reference")
    if _has_data(curves, "kl_coef"):
        # The adaptive KL coefficient lives on another scale: its own axis, one shared legend.
        twin = right.twinx()
        part = curves[["step", "kl_coef"]].dropna()
        lines += twin.plot(part["step"], part["kl_coef"], color="gray", linestyle="--", label="KL coefficient")
        twin.set_ylabel("KL coefficient")
    right.set(xlabel="RL step", ylabel="nats per answer", title="KL to the RL reference (SFT policy)")
    if lines:
        right.legend(lines, [line.get_label() for line in lines], fontsize="small", loc="lower right")
    return figure


def kl_vs_gold_figure(scored: pd.DataFrame) -> Figure | None:
    """Scatter of KL to base against gold reward for tuned policies' answers, with each policy's mean
    as a large marker; None when no tuned answer has a finite KL."""
    tuned = scored[scored["policy"].isin(TUNED_POLICIES)]
    tuned = tuned[np.isfinite(tuned["kl_to_base"].to_numpy(dtype=float))
                  & np.isfinite(tuned["gold_reward"].to_numpy(dtype=float))]
    if tuned.empty:
        return None
    figure = Figure(figsize=(5.2, 3.8), dpi=DPI, layout="constrained")
    ax = figure.add_subplot()
    colors = {"sft": "#8172B3", "ppo": "#C44E52", "grpo": "#937860"}
    for policy, rows in tuned.groupby("policy", sort=False):
        color = colors.get(policy, "black")
        ax.scatter(rows["kl_to_base"], rows["gold_reward"], s=10, alpha=0.35, color=color)
        ax.scatter([rows["kl_to_base"].mean()], [rows["gold_reward"].mean()], s=120, color=color,
                   edgecolor="black", label=f"{policy} (mean)")
    base = scored.loc[scored["policy"] == "base", "gold_reward"].to_numpy(dtype=float)
    if np.isfinite(base).any():
        ax.axhline(float(np.nanmean(base)), color="gray", linestyle="--", label="base gold mean")
    ax.set(xlabel="KL to base (nats per answer)", ylabel="gold P(MET)",
           title="Distance from base vs gold reward", ylim=(0, 1))
    ax.legend(fontsize="small")
    return figure


def _has_data(frame: pd.DataFrame, column: str) -> bool:
    return column in frame and bool(np.isfinite(pd.to_numeric(frame[column], errors="coerce")
                                                .to_numpy(dtype=float)).any())

