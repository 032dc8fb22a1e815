"""PNG figures of a reward-model evaluation: the confusion matrix and the reliability diagram.

They go next to the markdown report and into the MLflow run, so a reader sees at a glance where
the classifier errs and whether its P(MET) can be read as a probability. Figures are drawn on the
Agg canvas directly (no pyplot), so plotting works headless and never touches global state.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ml.reward.encoder import LABELS
from ml.reward.evaluate import RewardEvaluation

DPI = 120


def save_plots(evaluation: RewardEvaluation, folder: Path) -> dict[str, Path]:
    """Writes confusion_matrix.png and reliability_diagram.png into `folder`; name -> path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figures = {"confusion_matrix": confusion_matrix_figure(evaluation.confusion),
               "reliability_diagram": reliability_figure(evaluation)}
    paths = {}
    for name, figure in figures.items():
        paths[name] = folder / f"{name}.png"
        FigureCanvasAgg(figure).print_png(paths[name])
    return paths


def confusion_matrix_figure(confusion: np.ndarray) -> Figure:
    figure = Figure(figsize=(4.2, 3.6), dpi=DPI, layout="constrained")
    ax = figure.add_subplot()
    image = ax.imshow(confusion, cmap="Blues")
    figure.colorbar(image, ax=ax)
    threshold = confusion.max() / 2 if confusion.size else 0
    for (row, col), count in np.ndenumerate(confusion):
        ax.text(col, row, str(count), ha="center", va="center",
                color="white" if count > threshold else "black")
    ax.set(xticks=range(len(LABELS)), yticks=range(len(LABELS)), xticklabels=LABELS, yticklabels=LABELS,
           xlabel="predicted", ylabel="true", title="Reward model, test split")
    return figure


def reliability_figure(evaluation: RewardEvaluation) -> Figure:
    """Mean P(MET) against the observed MET share per bin, over the share of rows per bin."""
    curve = evaluation.reliability
    filled = curve[curve["count"] > 0]
    figure = Figure(figsize=(4.8, 4.2), dpi=DPI, layout="constrained")
    ax = figure.add_subplot()
    width = float(curve["bin_upper"].iloc[0] - curve["bin_lower"].iloc[0])
    ax.bar(curve["bin_lower"], curve["count"] / max(curve["count"].sum(), 1), width=width, align="edge",
           color="lightgray", label="share of rows")
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    ax.plot(filled["mean_predicted"], filled["observed_rate"], marker="o",
            label=f"reward model (ECE {evaluation.metrics['ece']:.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted P(MET)", ylabel="observed MET share",
           title="Reliability, test split")
    ax.legend(loc="upper left", fontsize="small")
    return figure
