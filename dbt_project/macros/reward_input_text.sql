{#- The reward model's input text in the paper's training-sample format. Must stay identical to
    ml.data.text.reward_input_text (tests/integration/test_dbt.py compares them row by row):
    whitespace collapsed, NULL or empty -> 'Unknown'. -#}
{% macro reward_input_text(country, arrangement_type, economic_area, description) -%}
    'Country: ' || coalesce({{ collapse_whitespace(country) }}, 'Unknown')
    || '; Type of arrangement: ' || coalesce({{ collapse_whitespace(arrangement_type) }}, 'Unknown')
    || '; Economic classification: ' || coalesce({{ collapse_whitespace(economic_area) }}, 'Unknown')
    || '; Condition: ' || coalesce({{ collapse_whitespace(description) }}, 'Unknown')
{%- endmacro %}
