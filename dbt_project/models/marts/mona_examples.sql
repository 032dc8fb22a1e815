with

labeled_conditions as (

    select * from {{ ref('int_mona__labeled') }}

),

final as (

    select
        condition_id,
        arrangement_key,
        arrangement_number,
        country,
        country_code,
        arrangement_type,
        economic_code,
        economic_area,
        economic_descriptor_number,
        condition_type,
        description,
        test_date,
        test_year,
        status_raw,
        label,
        case when label = 'MET' then 1 else 0 end as is_met,
        {{ reward_input_text('country', 'arrangement_type', 'economic_area', 'description') }}
            as reward_text

    from labeled_conditions
    where label in ('MET', 'NON_MET')

)

select * from final
