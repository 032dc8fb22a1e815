{#- The review a MONA row belongs to, as an integer: R0 / program approval -> 0, R3 -> 3,
    'Third Review' -> 3, '3rd review' -> 3, 'Second Review Prior action' -> 2; NULL when the text
    names no review (e.g. a date such as '09/15/2007'). -#}
{% macro review_sequence_from_text(expression) -%}
    {%- set ordinals = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
                        "ninth", "tenth", "eleventh", "twelfth"] -%}
    case
        when regexp_matches({{ expression }}, '(?i)^r\s*\d+\b')
            then cast(regexp_extract({{ expression }}, '(?i)^r\s*(\d+)', 1) as integer)
        when regexp_matches({{ expression }}, '(?i)\b\d+(st|nd|rd|th)?\s+review\b')
            then cast(regexp_extract({{ expression }}, '(?i)\b(\d+)(?:st|nd|rd|th)?\s+review\b', 1) as integer)
        when regexp_matches({{ expression }}, '(?i)\breview\s+\d+\b')
            then cast(regexp_extract({{ expression }}, '(?i)\breview\s+(\d+)\b', 1) as integer)
        {%- for ordinal in ordinals %}
        when regexp_matches({{ expression }}, '(?i)\b{{ ordinal }}\s+review\b') then {{ loop.index }}
        {%- endfor %}
        when regexp_matches({{ expression }}, '(?i)\bapproval\b') then 0
    end
{%- endmacro %}
