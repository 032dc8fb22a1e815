{#- A MONA status as the key into the `status_label_map` seed: upper case, and every run of
    characters other than letters, digits and `/` turned into one space, so that `Not met`,
    `NOT MET`, `Not-met`, `not met.` and `Met (with delay)` / `Met with delay` meet one seed row;
    NULL when nothing is left. -#}
{% macro status_code(expression) -%}
    nullif(trim(upper(regexp_replace({{ expression }}, '[^\pL\pN/]+', ' ', 'g'))), '')
{%- endmacro %}
