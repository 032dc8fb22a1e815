{#- A var that comes from the RLXF profile (ml.data.warehouse.dbt_vars passes them with --vars), so
    the profile is its one source and dbt_project.yml sets no default. Parsing (`dbt parse`, the
    prepare step) needs no profile and sees 0; building without the var is an error naming it. -#}
{% macro profile_var(name) -%}
    {%- set value = var(name, none) -%}
    {%- if value is none and execute -%}
        {{ exceptions.raise_compiler_error(
            "dbt var '" ~ name ~ "' is not set: it comes from the RLXF profile; pass "
            ~ "--vars from ml.data.warehouse.dbt_vars") }}
    {%- endif -%}
    {{ return(0 if value is none else value) }}
{%- endmacro %}
