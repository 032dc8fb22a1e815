{#- MONA's economic code for a descriptor number ('1.6.' -> 20.6, '3.' -> 22.0, '10.' -> 29.0):
    19 + major + minor / 10, as in ml.data.taxonomy.economic_code_for_number. -#}
{% macro economic_code_for_number(major, minor) -%}
    cast(19 + cast({{ major }} as integer) + coalesce(cast({{ minor }} as integer), 0) / 10 as decimal(4, 1))
{%- endmacro %}
