{#- Python's `" ".join(text.split())` in SQL: every run of whitespace becomes one space, the ends are
    trimmed, and an empty result is NULL. The character class is exactly what Python's str.isspace()
    accepts (ASCII controls \t \n \v \f \r \x1c-\x1f, NEL, and Unicode separators \pZ), so the
    reward text built here matches ml.data.text.reward_input_text byte for byte. -#}
{% macro collapse_whitespace(expression) -%}
    nullif(trim(regexp_replace({{ expression }}, '[\t\n\x0b\x0c\r\x1c-\x1f\x85\pZ]+', ' ', 'g')), '')
{%- endmacro %}
