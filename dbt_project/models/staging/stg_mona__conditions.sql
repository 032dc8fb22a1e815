with

source as (

    select * from {{ source('raw', 'mona_conditions') }}

),

economic_areas as (

    select * from {{ ref('economic_areas') }}

),

whitespace_collapsed as (

    select
        {{ collapse_whitespace('arrangement_number') }} as arrangement_number,
        {{ collapse_whitespace('country') }} as country,
        {{ collapse_whitespace('country_code') }} as country_code,
        {{ collapse_whitespace('arrangement_type') }} as arrangement_type,
        {{ collapse_whitespace('approval_date') }} as approval_date,
        {{ collapse_whitespace('review_type') }} as review_type,
        {{ collapse_whitespace('condition_type') }} as condition_type,
        {{ collapse_whitespace('economic_code') }} as economic_code,
        {{ collapse_whitespace('economic_descriptor') }} as economic_descriptor,
        {{ collapse_whitespace('description') }} as description,
        {{ collapse_whitespace('description_code') }} as description_code,
        {{ collapse_whitespace('test_date') }} as test_date,
        {{ collapse_whitespace('test_date_text') }} as test_date_text,
        {{ collapse_whitespace('status') }} as status,
        nullif(trim(comments), '') as comments,
        extra_columns,
        source_file,
        source_sha256,
        source_sheet,
        source_row,
        ingested_at

    from source

),

typed as (

    select
        * exclude (economic_code, status) replace (
            -- sqlfluff cannot parse DuckDB's lambda syntax in this macro.
            {{ title_case_if_upper('country') }} as country,  -- noqa: PRS
            upper(country_code) as country_code,
            upper(arrangement_type) as arrangement_type,
            try_cast(approval_date as date) as approval_date,
            case
                when upper(condition_type) in ('PA', 'SPC', 'SB') then upper(condition_type)
                when condition_type ilike 'prior action%' then 'PA'
                when condition_type ilike 'structural performance criteri%' then 'SPC'
                when condition_type ilike 'structural benchmark%' then 'SB'
                when condition_type is not null then upper(condition_type)
                when test_date_text ilike '%prior action%' then 'PA'
            end as condition_type,
            try_cast(test_date as date) as test_date
        ),
        coalesce(
            {{ review_sequence_from_text('review_type') }},
            case when review_type is null then {{ review_sequence_from_text('test_date_text') }} end
        ) as review_sequence,
        try_cast(economic_code as decimal(4, 1)) as given_economic_code,
        nullif(regexp_extract(economic_descriptor || ' ', '^(\d{1,2})\.(?:(\d)\.?)?\s', 1), '')
            as descriptor_major,
        nullif(regexp_extract(economic_descriptor || ' ', '^(\d{1,2})\.(?:(\d)\.?)?\s', 2), '')
            as descriptor_minor,
        nullif(trim(regexp_replace(economic_descriptor || ' ', '^\d{1,2}\.(?:\d\.?)?\s+', '')), '')
            as descriptor_name,
        status as status_raw,
        {{ status_code('status') }} as status_code

    from whitespace_collapsed

),

economic_codes_derived as (

    select
        *,
        case
            when descriptor_major is not null
                then descriptor_major || '.' || coalesce(descriptor_minor || '.', '')
        end as descriptor_number,
        case
            when descriptor_major is not null
                then {{ economic_code_for_number('descriptor_major', 'descriptor_minor') }}
        end as expected_economic_code

    from typed

),

economic_areas_joined as (

    select
        conditions.*,
        coalesce(conditions.given_economic_code, conditions.expected_economic_code) as economic_code,
        economic_areas.economic_descriptor_number as seed_descriptor_number,
        economic_areas.economic_area as seed_economic_area

    from economic_codes_derived as conditions

    left join economic_areas
        on
            coalesce(conditions.given_economic_code, conditions.expected_economic_code)
            = economic_areas.economic_code

),

final as (

    select
        -- a workbook's sheets each count their rows from 1: the sheet is part of the key
        md5(
            source_sha256 || ':' || coalesce(source_sheet || ':', '') || cast(source_row as varchar)
        ) as raw_row_id,
        md5(
            lower(coalesce(country, '')) || '|'
            || coalesce(arrangement_number, '') || '|'
            || coalesce(cast(economic_code as varchar), '') || '|'
            || lower(coalesce(description, ''))
        ) as condition_id,
        coalesce(
            arrangement_number,
            coalesce(country, 'Unknown') || ':' || coalesce(
                cast(year(approval_date) as varchar), cast(year(test_date) as varchar), 'unknown'
            )
        ) as arrangement_key,
        * exclude (
            given_economic_code, descriptor_major, descriptor_minor, descriptor_name, descriptor_number,
            seed_descriptor_number, seed_economic_area
        ),
        year(approval_date) as approval_year,
        coalesce(descriptor_number, seed_descriptor_number) as economic_descriptor_number,
        -- the taxonomy's name when the code is known, so one area has one spelling across exports
        coalesce(seed_economic_area, descriptor_name) as economic_area,
        coalesce(year(test_date), year(approval_date)) as test_year

    from economic_areas_joined

)

select * from final
