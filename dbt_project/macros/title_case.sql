{#- Title case for names exported in upper case (GABON -> Gabon, GUINEA-BISSAU -> Guinea-Bissau,
    CÔTE D'IVOIRE -> Côte D'Ivoire): like Python's str.title(), a letter is upper case when the
    character before it is not a letter. The joining words and/of/the stay lower case inside a name
    (TRINIDAD AND TOBAGO -> Trinidad and Tobago), as MONA writes them in its title-case exports.
    Names that are not entirely upper case are returned unchanged. -#}
{% macro title_case_if_upper(expression) -%}
    case
        when {{ expression }} = upper({{ expression }}) and {{ expression }} <> lower({{ expression }})
            then {{ title_case(expression) }}
        else {{ expression }}
    end
{%- endmacro %}

{% macro title_case(expression) -%}
    regexp_replace(regexp_replace(regexp_replace(
        array_to_string(
            list_transform(
                string_split(lower({{ expression }}), ''),
                lambda ch, i: case
                    when i = 1 or not regexp_matches(string_split(lower({{ expression }}), '')[i - 1], '\pL')
                        then upper(ch)
                    else ch
                end
            ),
            ''
        ),
        ' And\b', ' and', 'g'), ' Of\b', ' of', 'g'), ' The\b', ' the', 'g')
{%- endmacro %}
