"""The reward model's input text, in the paper's training-sample format.

The paper trains its classifier on samples made of four fields: country, type of arrangement,
economic classification and the condition's description. dbt builds this text for the corpus
(`dbt_project/macros/reward_input_text.sql`) and the policy's answers are scored through this
function; `tests/integration/test_dbt.py` pins that both produce the same string.
"""

from __future__ import annotations

UNKNOWN = "Unknown"


def reward_input_text(country: str | None, arrangement_type: str | None, economic_area: str | None,
                      description: str | None) -> str:
    def clean(value: str | None) -> str:
        text = " ".join(str(value).split()) if value is not None else ""
        return text or UNKNOWN

    return (
        f"Country: {clean(country)}; Type of arrangement: {clean(arrangement_type)}; "
        f"Economic classification: {clean(economic_area)}; Condition: {clean(description)}"
    )
