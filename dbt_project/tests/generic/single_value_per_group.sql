{#- Fails on each group (by `group_by`) whose rows hold more than one value of the column, e.g. an
    arrangement whose conditions landed in two splits. -#}
{% test single_value_per_group(model, column_name, group_by) %}

select
    {{ group_by }},
    count(distinct {{ column_name }}) as n_values

from {{ model }}
group by {{ group_by }}
having count(distinct {{ column_name }}) > 1

{% endtest %}
