"""The evaluation report: `report.md` and a self-contained `report.html`, written to one folder.

The report states the promotion decision first (promoted, or kept as challenger, with both numbers),
then what a reader needs to believe it: the per-policy headline table, over-optimisation flags, the
tests of significance, Table-3-style sample answers with their proxy and gold rewards, training curves
and plots, and an appendix of every headline metric. Both files are rendered from one list of blocks,
so they say the same thing. The HTML has inline CSS and its PNGs as base64 data URIs (it can be
mailed or opened from an artifact store with nothing beside it), and a Content-Security-Policy that
forbids scripts and remote loads. Answers are model output: every piece of text is escaped (HTML, and
Markdown links/tables), never trusted. Files are written to temporary names and moved into place, so
a reader never sees half a report.
"""

from __future__ import annotations

import base64
import html
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ml.evaluation.metrics import ALPHA, SLIP_BELOW
from ml.evaluation.plots import save_plots
from ml.evaluation.summary import OTHER_SCENARIO, SCENARIOS, PolicyEvaluation
from ml.io import atomic_write_text
from ml.markdown import cell_text, inert, markdown_table

DEFAULT_TITLE = "RLXF on MONA: policy evaluation"
PLOTS_FOLDER = "plots"
PLOT_CAPTIONS = {
    "reward_by_policy": "Mean proxy P(MET), gold P(MET) and judged reward per policy, with 95% confidence intervals.",
    "training_curves": "RL training: the training reward of rollouts, the judged reward on validation prompts, and "
                       "the KL to the RL reference (the SFT policy).",
    "kl_vs_gold": "Tuned policies' answers: KL to the base policy against gold P(MET); large markers are means.",
}
_CURVE_COLUMNS = ("reward_mean", "judged_reward", "gold_p_met", "proxy_p_met", "on_topic_rate", "kl_to_reference",
                  "kl", "kl_coef", "entropy")
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
       padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #4C72B0; padding-bottom: .3rem; }
h2 { margin-top: 2rem; border-bottom: 1px solid #ddd; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .9rem; }
#headline td, #tests td { white-space: nowrap; }
th, td { border: 1px solid #ccc; padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: #f0f3f8; }
tr:nth-child(even) td { background: #fafafa; }
code { background: #f3f3f3; padding: 0 .2rem; }
img { max-width: 100%; border: 1px solid #eee; }
figure { margin: 1rem 0; }
figcaption { font-size: .85rem; color: #555; }
.callout { padding: .6rem .9rem; border-left: 5px solid; margin: .8rem 0; }
.good { border-color: #55A868; background: #eef7f0; }
.warn { border-color: #DD8452; background: #fdf2ea; }
.info { border-color: #4C72B0; background: #eef2f9; }
"""


@dataclass
class ReportFiles:
    md: Path
    html: Path
    plots: dict[str, Path]
    headline: dict[str, float]

    def moved_to(self, folder: Path) -> ReportFiles:
        """The same files once their folder is `folder` (the report was written in a staging folder)."""
        return ReportFiles(folder / self.md.name, folder / self.html.name,
                           {name: folder / PLOTS_FOLDER / path.name for name, path in self.plots.items()},
                           self.headline)


# The report as blocks, rendered twice (Markdown and HTML). Text in blocks is raw; renderers escape it.
@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Paragraph:
    text: str
    strong: str = ""  # bold lead-in
    style: str = ""  # "good", "warn", "info": a call-out box in HTML


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    frame: pd.DataFrame  # already formatted as text
    html_id: str = ""
    code_columns: tuple[str, ...] = ()  # cells shown as code (metric names)
    collapsed: str = ""  # HTML: folded away under this summary line


@dataclass
class Image:
    name: str
    path: Path
    caption: str
    relative: str = ""  # path from the report folder, for Markdown


Block = Heading | Paragraph | Bullets | Table | Image


def write_report(evaluation: PolicyEvaluation, folder: Path, training_curves: pd.DataFrame | None = None,
                 promotion: dict | None = None, title: str = DEFAULT_TITLE, tuned: str = "ppo") -> ReportFiles:
    """Writes `report.md`, `report.html` and `plots/*.png` into `folder` (created if needed).

    `promotion`: {"decision": "promoted" | "challenger", "new_value", "champion_value",
    "champion_version", "version", "reason"} (and optionally "metric"), as the registry decided it;
    None when no decision was made. Returns the paths and `evaluation.headline()`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plots = save_plots(evaluation, folder / PLOTS_FOLDER, training_curves)
    blocks = build_blocks(evaluation, plots, folder, training_curves, promotion, title, tuned)
    md_path, html_path = folder / "report.md", folder / "report.html"
    atomic_write_text(md_path, render_markdown(blocks))
    atomic_write_text(html_path, render_html(blocks, title))
    return ReportFiles(md=md_path, html=html_path, plots=plots, headline=evaluation.headline())


def build_blocks(evaluation: PolicyEvaluation, plots: dict[str, Path], folder: Path,
                 training_curves: pd.DataFrame | None, promotion: dict | None, title: str,
                 tuned: str = "ppo") -> list[Block]:
    blocks: list[Block] = [Heading(1, title), *_summary_blocks(evaluation, tuned), Paragraph(
        f"{evaluation.n_prompts} held-out prompts; policies: {', '.join(evaluation.policies)}. "
        "Proxy P(MET): from the reward model the policy was tuned against. Gold P(MET): from a reward model "
        "trained on disjoint data, never used for training: a proxy gain it does not confirm is "
        "over-optimisation, not alignment. Judged reward: gold P(MET) times the probability, by an area "
        "classifier fitted on the gold side's data, that the answer is about the area asked; the champion rule "
        "uses it. Attainable: for each prompt, the best judged reward among real conditions of the asked area "
        "(or of its sub-areas), "
        "re-scored in that prompt's context.")]
    blocks += _decision_blocks(promotion)
    blocks += _verdict_blocks(evaluation)
    blocks += [Heading(2, "Policies"), Table(headline_table(evaluation.table), html_id="headline"),
               Paragraph(_table_notes(evaluation))]
    blocks += _flag_blocks(evaluation)
    blocks += [Heading(2, "Tests of significance"), Table(significance_table(evaluation.tests), html_id="tests"),
               Paragraph("Gain: difference of means over answers. Welch: unequal-variance t-test over answers, "
                         f"with Hedges' g. Paired bootstrap: {evaluation.n_boot:,} resamples of the prompts both "
                         "policies answered, each averaged over its samples first; percentile CI; two-sided p "
                         "from a paired permutation test (the sign of each prompt's difference flipped at random). "
                         f"Significant means p below {ALPHA}.")]
    blocks += _sample_blocks(evaluation.scenarios)
    blocks += _curve_blocks(training_curves, plots, folder)
    figures = [name for name in ("reward_by_policy", "kl_vs_gold") if name in plots]
    if figures:
        blocks.append(Heading(2, "Plots"))
        blocks += [_image(name, plots, folder) for name in figures]
    headline = evaluation.headline()
    blocks += [Heading(2, "Appendix: headline metrics"),
               Paragraph("Every number logged as an MLflow metric for this evaluation."),
               Table(pd.DataFrame({"metric": list(headline), "value": [_num(v, 4) for v in headline.values()]}),
                     html_id="metrics", code_columns=("metric",), collapsed=f"{len(headline)} metrics")]
    return blocks


def headline_table(table: pd.DataFrame) -> pd.DataFrame:
    """The per-policy table as text: rewards as `mean (low–high)`; missing values as an em dash."""
    def with_ci(prefix: str) -> list[str]:
        return [_with_ci(*row) for row in table[[f"{prefix}_mean", f"{prefix}_ci_low", f"{prefix}_ci_high"]]
                .itertuples(index=False)]

    return pd.DataFrame({
        "policy": table["policy"],
        "n": table["n"].map(lambda v: f"{int(v)}"),
        "judged reward (95% CI)": with_ci("judged"),
        "share of attainable": table["ceiling_share"].map(_share),
        "gold P(MET) (95% CI)": with_ci("gold"),
        "proxy P(MET) (95% CI)": with_ci("proxy"),
        "on topic (classifier)": table["on_topic_rate"].map(_share),
        "on topic (embeddings)": table["on_topic_rate_knn"].map(_share),
        "KL to RL reference": table["kl_reference_mean"].map(_num),
        "KL to base": table["kl_mean"].map(_num),
        "words (median)": table["words_median"].map(lambda v: _num(v, 0)),
        "distinct-2": table["distinct_2"].map(_num),
        "most common first word": [_opening(word, share) for word, share in
                                   table[["opening_word", "opening_share"]].itertuples(index=False)],
        "nearest-train similarity": table["nearest_similarity"].map(_num),
        "copies": table["copy_share"].map(_share),
        "quotes a precedent shown": table["quote_share"].map(_share),
        "repeats itself": table["repeat_share"].map(_share),
        "names what no training condition names": table["unknown_name_share"].map(_share),
        f"holds a token drawn at p < {SLIP_BELOW:g}": table["slip_share"].map(_share),
        "borrows the question's words": table["echo_share"].map(_share),
    })


def _opening(word: object, share: float) -> str:
    return f"{word} ({_share(share)})" if isinstance(word, str) else "—"


def significance_table(tests: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "comparison": [f"{t} vs {c}" for t, c in zip(tests["treatment"], tests["control"])],
        "reward": tests["metric"],
        "gain": tests["gain"].map(_signed),
        "Welch t": tests["welch_t"].map(lambda v: _num(v, 2)),
        "Welch p": tests["welch_p"].map(_p),
        "Hedges' g": tests["hedges_g"].map(lambda v: _num(v, 2)),
        "paired diff (95% CI)": [f"{_signed(d)} ({_signed(lo)} to {_signed(hi)})" for d, lo, hi in
                                 tests[["bootstrap_diff", "bootstrap_ci_low", "bootstrap_ci_high"]]
                                 .itertuples(index=False)],
        "paired p": tests["bootstrap_p"].map(_p),  # permutation test over the paired prompts
        "paired d": tests["paired_d"].map(lambda v: _num(v, 2)),
        "prompts paired": tests["n_pairs"].map(lambda v: f"{int(v)}"),
    })


def render_markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + inert(block.text), ""]
        elif isinstance(block, Paragraph):
            lead = f"**{inert(block.strong)}** " if block.strong else ""
            lines += [lead + inert(block.text), ""]
        elif isinstance(block, Bullets):
            lines += [f"- {inert(item)}" for item in block.items] + [""]
        elif isinstance(block, Table):
            lines += [markdown_table(block.frame, block.code_columns), ""]
        elif isinstance(block, Image):
            lines += [f"![{inert(block.caption)}]({block.relative})", "", f"*{inert(block.caption)}*", ""]
    return "\n".join(lines).rstrip() + "\n"


def render_html(blocks: list[Block], title: str) -> str:
    body: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{_h(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            lead = f"<strong>{_h(block.strong)}</strong> " if block.strong else ""
            css = f' class="callout {block.style}"' if block.style else ""
            body.append(f"<p{css}>{lead}{_h(block.text)}</p>")
        elif isinstance(block, Bullets):
            body.append("<ul>" + "".join(f"<li>{_h(item)}</li>" for item in block.items) + "</ul>")
        elif isinstance(block, Table):
            body.append(_html_table(block))
        elif isinstance(block, Image):
            data = base64.b64encode(block.path.read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{_h(block.caption)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{_h(block.caption)}</figcaption></figure>")
    # No scripts, no remote loads: the page is data, and some of that data is model output.
    policy = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{policy}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_h(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>", *body, "</body>", "</html>", ""])


def _decision_blocks(promotion: dict | None) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Decision")]
    if not promotion:
        return blocks + [Paragraph("No promotion decision was made with this evaluation.", style="info")]
    promoted = str(promotion.get("decision", "")).lower() == "promoted"
    metric = f" on {promotion['metric']}" if promotion.get("metric") else ""
    version = f"Version {promotion['version']}" if promotion.get("version") else "The new version"
    champion = promotion.get("champion_version")
    champion_value = promotion.get("champion_value")
    if champion_value is None or (isinstance(champion_value, float) and math.isnan(champion_value)):
        comparison = f"{version} scored {_num(promotion.get('new_value'))}{metric}; there was no champion to beat."
    else:
        comparison = (f"{version} scored {_num(promotion.get('new_value'))}{metric} against "
                      f"{_num(champion_value)} for the champion{f' (version {champion})' if champion else ''}.")
    reason = str(promotion.get("reason") or "").strip()
    reason = f" Reason: {reason}{'' if reason.endswith(('.', '!', '?')) else '.'}" if reason else ""
    lead = "Promoted to champion." if promoted else "Kept as challenger."
    return blocks + [Paragraph(comparison + reason, strong=lead, style="good" if promoted else "warn")]


def _verdict_blocks(evaluation: PolicyEvaluation) -> list[Block]:
    tests = evaluation.tests
    if tests.empty:
        return [Heading(2, "Verdict"), Paragraph("No comparison could be made: the answers hold no tuned policy "
                                                 "together with base or random.", style="info")]
    items = []
    for _, pair in tests.groupby("comparison", sort=False):
        by_metric = pair.set_index("metric")
        parts = []
        for metric, label in (("judged", "judged reward"), ("gold", "gold P(MET)"), ("proxy", "proxy P(MET)")):
            if metric not in by_metric.index or not math.isfinite(by_metric.loc[metric, "gain"]):
                continue
            test = by_metric.loc[metric]
            parts.append(f"{label} {_signed(test['gain'])} (paired permutation p {_p(test['bootstrap_p'])}, "
                         f"d {_num(test['paired_d'], 2)}; Welch p {_p(test['welch_p'])})")
        if not parts:
            parts.append("no reward available")
        items.append(f"{pair['treatment'].iloc[0]} vs {pair['control'].iloc[0]}: " + "; ".join(parts) + ".")
    return [Heading(2, "Verdict"), Bullets(items)]


def _flag_blocks(evaluation: PolicyEvaluation) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Over-optimisation")]
    if evaluation.flags.empty:
        return blocks + [Paragraph("No tuned policy was compared with base: not assessed.", style="info")]
    for row in evaluation.flags.itertuples(index=False):
        if row.flagged:
            blocks.append(Paragraph(f"{row.reason}.", strong=f"{row.policy}: over-optimisation suspected.",
                                    style="warn"))
        else:
            blocks.append(Paragraph(f"{row.reason}.", strong=f"{row.policy}: no over-optimisation signal.",
                                    style="good" if row.reason.startswith("gold reward confirms") else "info"))
    blocks.append(Paragraph(
        "Rule (vs base, paired permutation test over prompts): flagged when the proxy gain is significant "
        f"(p below {ALPHA}) and the gold gain is not significant or not positive, or when gold falls "
        "significantly while proxy rises."))
    return blocks


def _sample_blocks(samples: pd.DataFrame) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Sample answers (the paper's Table 3, extended)")]
    if samples.empty:
        return blocks + [Paragraph("No prompts to sample.")]
    titles = {**{s: s.capitalize() for s in SCENARIOS}, OTHER_SCENARIO: "Other areas"}
    for scenario, rows in samples.groupby("scenario", sort=False):
        blocks.append(Heading(3, titles.get(scenario, str(scenario))))
        for _, prompt_rows in rows.groupby("prompt_id", sort=False):
            first = prompt_rows.iloc[0]
            where = ", ".join(cell_text(first[c]) for c in ("country", "arrangement_type", "economic_area")
                              if cell_text(first[c]))
            blocks.append(Paragraph(cell_text(first["prompt"]), strong=f"{where}."))
            blocks.append(Table(pd.DataFrame({
                "policy": prompt_rows["policy"], "answer": prompt_rows["answer"].map(cell_text),
                "proxy P(MET)": prompt_rows["proxy_reward"].map(_num),
                "gold P(MET)": prompt_rows["gold_reward"].map(_num),
                "judged": prompt_rows["judged_reward"].map(_num) if "judged_reward" in prompt_rows else "—"})))
    return blocks


def _curve_blocks(curves: pd.DataFrame | None, plots: dict[str, Path], folder: Path) -> list[Block]:
    if curves is None or curves.empty or "step" not in curves:
        return [Heading(2, "Training curves"), Paragraph("No training curves were given.")]
    curves = curves.sort_values("step")
    rows = []
    for column in _CURVE_COLUMNS:
        if column in curves:
            part = curves[["step", column]].dropna()
            if not part.empty:
                first, last = part.iloc[0], part.iloc[-1]
                rows.append({"series": column, "first step": f"{int(first['step'])}", "first": _num(first[column]),
                             "last step": f"{int(last['step'])}", "last": _num(last[column]),
                             "change": _signed(last[column] - first[column])})
    blocks: list[Block] = [Heading(2, "Training curves")]
    if "training_curves" in plots:
        blocks.append(_image("training_curves", plots, folder))
    if rows:
        blocks.append(Table(pd.DataFrame(rows), html_id="curves"))
    return blocks


def _table_notes(evaluation: PolicyEvaluation) -> str:
    accuracy = evaluation.area_classifier_accuracy
    classifier = (f"its accuracy on held-out corpus conditions is {accuracy:.1%}" if math.isfinite(accuracy)
                  else "the corpus was too small to measure its accuracy")
    return ("KL: nats per answer at the sampling temperature, to the policy's RL reference (the SFT policy for "
            "an RL-tuned one, the base for SFT) and to the base model (none for the reference policies). "
            "On topic (classifier): share of answers that the gold side's TF-IDF classifier of economic area "
            f"assigns to the area asked for or to one of its sub-areas ({classifier}; MONA's areas nest: \"6. "
            "Financial sector\" holds 6.1-6.3); on topic (embeddings): share whose ten nearest training "
            "conditions by MiniLM sentence embeddings mostly belong to that area or one of its sub-areas. "
            "Distinct-2: unique word pairs over all word pairs of the policy's answers. Most common first "
            "word: the word most of the policy's answers open with, and their share (a policy that opens most "
            "answers with one verb, \"Prepare a ...\", can still score well on distinct-2). Nearest-train "
            "similarity: TF-IDF cosine to the closest training condition (lower is more novel); copies: share at "
            "or above "
            f"{evaluation.copy_threshold:g}. The random policy draws corpus conditions, so it copies by construction. "
            "Repeats itself: share of answers with a stuttered word (\"staff staff\") or a three-word phrase said "
            "twice. Names what no training condition names: share of answers with a capitalised name after the "
            "opening word (\"Ministry of Business Development\") that no training condition, country or "
            "arrangement type holds: an institution the policy may have invented, or a real one the record "
            "lacks (month names aside). Borrows the question's words: share of answers holding a word of five "
            "letters or more that the prompt uses and no training condition does (\"Finalize draft conditions for "
            "...\", \"a draft policy proposal\"): an answer that speaks of the request instead of stating a measure.")


def _summary_blocks(evaluation: PolicyEvaluation, tuned: str) -> list[Block]:
    """The report's first lines: how close the tuned policy is to the best it could do."""
    table = evaluation.table.set_index("policy")
    if tuned not in table.index:
        return []
    row = table.loc[tuned]
    text = (f"{tuned.upper()}: judged reward {_num(row['judged_mean'])}, {_share(row['ceiling_share'])} of the "
            f"attainable {_num(evaluation.ceiling)}; gold P(MET) {_num(row['gold_mean'])}; on topic "
            f"{_share(row['on_topic_rate'])} by the area classifier and {_share(row['on_topic_rate_knn'])} by "
            f"embeddings; {_share(row['copy_share'])} copies of training conditions "
            f"({_share(row['quote_share'])} quote a precedent their prompt shows).")
    if "historical" in table.index:
        text += (" Historical MET conditions of the same prompts: judged "
                 f"{_num(table.loc['historical', 'judged_mean'])}, "
                 f"gold P(MET) {_num(table.loc['historical', 'gold_mean'])}.")
    return [Paragraph(text, strong="Summary.", style="info")]


def _image(name: str, plots: dict[str, Path], folder: Path) -> Image:
    return Image(name, plots[name], PLOT_CAPTIONS.get(name, name),
                 relative=Path(os.path.relpath(plots[name], folder)).as_posix())


def _html_table(block: Table) -> str:
    def cell(column: str, value: object) -> str:
        text = _h(cell_text(value))
        return f"<td><code>{text}</code></td>" if column in block.code_columns else f"<td>{text}</td>"

    columns = list(block.frame.columns)
    table_id = f' id="{_h(block.html_id)}"' if block.html_id else ""
    head = "<tr>" + "".join(f"<th>{_h(str(c))}</th>" for c in columns) + "</tr>"
    rows = ["<tr>" + "".join(cell(c, v) for c, v in zip(columns, row)) + "</tr>"
            for row in block.frame.itertuples(index=False)]
    table = f'<div class="scroll"><table{table_id}><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></div>'
    return f"<details><summary>{_h(block.collapsed)}</summary>{table}</details>" if block.collapsed else table


def _h(text: str) -> str:
    return html.escape(str(text), quote=True)


def _num(value: object, digits: int = 3) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "—"
    return "—" if not math.isfinite(number) else f"{number:.{digits}f}"


def _signed(value: object) -> str:
    number = float(value) if value is not None else math.nan
    return "—" if not math.isfinite(number) else f"{number:+.3f}"


def _share(value: object) -> str:
    number = float(value) if value is not None else math.nan
    return "—" if not math.isfinite(number) else f"{number:.0%}"


def _p(value: object) -> str:
    number = float(value) if value is not None else math.nan
    if not math.isfinite(number):
        return "—"
    # Small p-values in scientific notation, not "<0.001": the bootstrap's floor (1 / (n_boot + 1))
    # then shows, and Markdown needs no escaping of "<".
    return f"{number:.3f}" if number >= 0.001 else f"{number:.1e}"


def _with_ci(mean: float, low: float, high: float) -> str:
    if not math.isfinite(mean):
        return "—"
    return f"{mean:.3f} ({low:.3f}–{high:.3f})" if math.isfinite(low) and math.isfinite(high) else f"{mean:.3f}"

