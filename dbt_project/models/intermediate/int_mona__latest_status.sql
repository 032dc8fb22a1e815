with

conditions as (

    select * from {{ ref('stg_mona__conditions') }}

),

rows_ranked_by_recency as (

    -- Assessed rows first; among them the latest review, then the latest test date, then the
    -- latest export of that review. A condition never assessed keeps its latest unassessed row.
    select
        *,
        row_number() over (
            partition by condition_id
            order by
                (status_code is not null) desc,
                review_sequence desc nulls last,
                test_date desc nulls last,
                ingested_at desc,
                source_sheet desc nulls last,
                source_row desc
        ) as recency_rank

    from conditions

),

assessments_deduplicated as (

    -- The same review arrives again with every new export, or on two sheets of one workbook: keep
    -- one assessment per review.
    select
        condition_id,
        review_sequence,
        test_date,
        status_code

    from conditions
    where status_code is not null
    qualify row_number() over (
        partition by condition_id, review_sequence, test_date
        order by ingested_at desc, source_sheet desc nulls last, source_row desc
    ) = 1

),

status_histories as (

    select
        condition_id,
        string_agg(
            status_code, ' > '
            order by review_sequence asc nulls first, test_date asc nulls first
        ) as status_history

    from assessments_deduplicated
    group by condition_id

),

row_counts as (

    select
        condition_id,
        count(*) as n_rows,
        count(distinct review_sequence) as n_reviews

    from conditions
    group by condition_id

),

final as (

    select
        -- recency_rank is a column of latest, excluded from it.
        latest.* exclude (recency_rank),  -- noqa: RF02
        row_counts.n_rows,
        row_counts.n_reviews,
        status_histories.status_history

    from rows_ranked_by_recency as latest

    inner join row_counts
        on latest.condition_id = row_counts.condition_id

    left join status_histories
        on latest.condition_id = status_histories.condition_id

    where latest.recency_rank = 1

)

select * from final
