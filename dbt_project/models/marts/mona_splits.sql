{#- Cut points on 1000 hash buckets, rounded so that 0.7 + 0.1 gives 800, not 799.99... -#}
{%- set train_share = profile_var('split_train_share') -%}
{%- set train_cut = (train_share * 1000) | round | int -%}
{%- set validation_cut = ((train_share + profile_var('split_validation_share')) * 1000) | round | int -%}

with

examples as (

    select * from {{ ref('mona_examples') }}

),

buckets_assigned as (

    -- The split depends only on the arrangement: md5 of its key, first 32 bits, mod 1000. New data
    -- never moves an existing arrangement to another split, and all of its conditions stay together.
    select
        *,
        cast(('0x' || left(md5(arrangement_key), 8)) as bigint) % 1000 as split_bucket

    from examples

),

final as (

    select
        *,
        case
            when split_bucket < {{ train_cut }} then 'train'
            when split_bucket < {{ validation_cut }} then 'validation'
            else 'test'
        end as split,
        coalesce(
            test_year > max(test_year) over () - {{ profile_var('temporal_holdout_years') }},
            false
        ) as is_temporal_holdout

    from buckets_assigned

)

select * from final
