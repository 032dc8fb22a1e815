{#- Fails on the rows where `expression` is not true (dbt_utils.expression_is_true, without the
    package: the machines have no network for `dbt deps`). On a column, the expression is appended
    to the column name (`column_name: ">= 0"`). -#}
{% test expression_is_true(model, expression, column_name=None) %}

select *
from {{ model }}
{% if column_name is none %}
where not ({{ expression }})
{%- else %}
where not ({{ column_name }} {{ expression }})
{%- endif %}

{% endtest %}
