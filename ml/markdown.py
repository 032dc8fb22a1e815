"""Markdown for the reports: one table renderer (pandas' `to_markdown`) and the escaping that makes any
text inert.

Reports quote model output and user data (answers, file names, condition texts); a viewer must show
that text, never follow it: `inert` escapes HTML and Markdown's link, code and table syntax.
"""

from __future__ import annotations

import html
import math
from collections.abc import Collection

import numpy as np
import pandas as pd


def inert(text: object) -> str:
    """Text made inert in Markdown: HTML escaped, and no link/image syntax, table breaks or newlines
    (a model could answer `![x](http://tracker)`; a viewer would fetch it)."""
    text = html.escape(" ".join(str(text).split()), quote=False)
    for char in ("\\", "|", "[", "]", "`"):
        text = text.replace(char, "\\" + char)
    return text


def cell_text(value: object) -> str:
    """A table cell: empty for missing values, floats to three decimals (whole numbers without any)."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return ""
    if isinstance(value, float | np.floating):
        if math.isfinite(value) and float(value).is_integer() and abs(value) >= 1:
            return f"{value:.0f}"
        return f"{value:.3f}"
    return str(value)


def markdown_table(frame: pd.DataFrame, code_columns: Collection[str] = ()) -> str:
    """A GitHub-flavoured Markdown table of `frame` (its index left out); every cell inert, the cells of
    `code_columns` as inline code."""
    def cell(column: str, value: object) -> str:
        text = cell_text(value)
        if column in code_columns:  # inline code shows text as is; only its delimiters must go
            code = text.replace("`", "").replace("|", "\\|")
            return f"`{code}`"
        return inert(text)

    cells = pd.DataFrame([[cell(column, value) for column, value in zip(frame.columns, row)]
                          for row in frame.itertuples(index=False)],
                         columns=[inert(column) for column in frame.columns])
    # Cells are already text: tabulate must not re-format numbers.
    return cells.to_markdown(index=False, tablefmt="github", disable_numparse=True)
