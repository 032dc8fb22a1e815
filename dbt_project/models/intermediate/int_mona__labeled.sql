with

latest_status as (

    select * from {{ ref('int_mona__latest_status') }}

),

status_label_map as (

    select * from {{ ref('status_label_map') }}

),

final as (

    -- A status the map does not know is EXCLUDED, never NON_MET: a new MONA status form must not
    -- silently become a training label (it is counted and warned about instead).
    select
        latest_status.*,
        case
            when latest_status.status_code is null then 'EXCLUDED'
            when status_label_map.status_code is null then 'EXCLUDED'
            else status_label_map.label
        end as label,
        case
            when latest_status.status_code is null then 'not_assessed'
            when status_label_map.status_code is null then 'unknown_status'
            when status_label_map.label = 'EXCLUDED' then 'not_assessed'
            else 'mapped'
        end as label_reason,
        status_label_map.meaning as status_meaning

    from latest_status

    left join status_label_map
        on latest_status.status_code = status_label_map.status_code

)

select * from final
