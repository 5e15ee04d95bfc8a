-- 0017: the full audit at scale (issue 15 item 1). Frozen copy of what sql/*.sql defines
-- at this revision; never edit it.
--
-- pyxp.rank_problems counts a period board's cut values per bucket with one index-only
-- range of the board's index each (pyxp.period_board_range, new) instead of a probe per
-- balance; pyxp.row_problems checks the claims with a join the planner can run in parallel
-- (rows to claims), and looks for claims without a row only when the counts say one exists;
-- the audit's read-only helpers are PARALLEL SAFE, so its scans and joins may use workers.
SET LOCAL ROLE pyxp_owner;

CREATE FUNCTION pyxp.period_board_range(p_period text, p_start timestamptz, p_xp bigint, p_from text, p_to text)
RETURNS TABLE (user_wallet text)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT b.user_wallet FROM pyxp.xp_balances b
     WHERE p_period = 'day' AND b.day_start = p_start AND b.day_xp = p_xp
       AND b.user_wallet COLLATE "C" >= p_from AND p_to IS NULL
    UNION ALL
    SELECT b.user_wallet FROM pyxp.xp_balances b
     WHERE p_period = 'day' AND b.day_start = p_start AND b.day_xp = p_xp
       AND b.user_wallet COLLATE "C" >= p_from AND b.user_wallet COLLATE "C" < p_to
    UNION ALL
    SELECT b.user_wallet FROM pyxp.xp_balances b
     WHERE p_period = 'week' AND b.week_start = p_start AND b.week_xp = p_xp
       AND b.user_wallet COLLATE "C" >= p_from AND p_to IS NULL
    UNION ALL
    SELECT b.user_wallet FROM pyxp.xp_balances b
     WHERE p_period = 'week' AND b.week_start = p_start AND b.week_xp = p_xp
       AND b.user_wallet COLLATE "C" >= p_from AND b.user_wallet COLLATE "C" < p_to
    UNION ALL
    SELECT b.user_wallet FROM pyxp.xp_balances b
     WHERE p_period = 'month' AND b.month_start = p_start AND b.month_xp = p_xp
       AND b.user_wallet COLLATE "C" >= p_from AND p_to IS NULL
    UNION ALL
    SELECT b.user_wallet FROM pyxp.xp_balances b
     WHERE p_period = 'month' AND b.month_start = p_start AND b.month_xp = p_xp
       AND b.user_wallet COLLATE "C" >= p_from AND b.user_wallet COLLATE "C" < p_to
    UNION ALL
    SELECT b.user_wallet FROM pyxp.xp_balances b
     WHERE p_period = 'year' AND b.year_start = p_start AND b.year_xp = p_xp
       AND b.user_wallet COLLATE "C" >= p_from AND p_to IS NULL
    UNION ALL
    SELECT b.user_wallet FROM pyxp.xp_balances b
     WHERE p_period = 'year' AND b.year_start = p_start AND b.year_xp = p_xp
       AND b.user_wallet COLLATE "C" >= p_from AND b.user_wallet COLLATE "C" < p_to
$$;

COMMENT ON FUNCTION pyxp.period_board_range(text, timestamptz, bigint, text, text) IS
    'internal: the balances of a period board holding an XP value, between two wallets.';

REVOKE ALL ON FUNCTION pyxp.period_board_range(text, timestamptz, bigint, text, text) FROM PUBLIC;

ALTER FUNCTION pyxp.archive_horizon() PARALLEL SAFE;
ALTER FUNCTION pyxp.period_board_entries() PARALLEL SAFE;
ALTER FUNCTION pyxp.period_bucket_of(text, timestamptz, bigint, text) PARALLEL SAFE;
ALTER FUNCTION pyxp.reversed_row_at(bigint) PARALLEL SAFE;
ALTER FUNCTION pyxp.rows_cap_usage(oid[]) PARALLEL SAFE;
ALTER FUNCTION pyxp.ledger_cap_usage() PARALLEL SAFE;
ALTER FUNCTION pyxp.board_range(bigint, text, bigint, text) PARALLEL SAFE;
ALTER FUNCTION pyxp.rank_bucket_of(bigint, text) PARALLEL SAFE;
ALTER FUNCTION pyxp.rank_buckets() PARALLEL SAFE;
ALTER FUNCTION pyxp.last_checkpoint_xmin() PARALLEL SAFE;
ALTER FUNCTION pyxp.audited_wallets(boolean) PARALLEL SAFE;
ALTER FUNCTION pyxp.period_xp_from_rows(text, timestamptz, text, text) PARALLEL SAFE;
ALTER FUNCTION pyxp.sum_with_opening(numeric, boolean, bigint) PARALLEL SAFE;
ALTER FUNCTION pyxp.chain_problems(boolean) PARALLEL SAFE;
ALTER FUNCTION pyxp.audited_rows(boolean) PARALLEL SAFE;

ALTER FUNCTION pyxp.audit() SET parallel_tuple_cost = 0;

CREATE OR REPLACE FUNCTION pyxp.rank_problems()
RETURNS TABLE (check_name text, user_wallet text, transaction_id bigint, detail text)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT 'rank_count_mismatch', NULL::text, NULL::bigint,
           format('rank bucket from (%s XP, %s) counts %s wallets, holds %s',
                  -e.neg_xp, quote_literal(e.wallet), e.wallets, n.held - coalesce(u.uncounted, 0))
      FROM pyxp.rank_buckets() e
     CROSS JOIN LATERAL (SELECT count(*) AS held
                           FROM pyxp.board_range(-e.neg_xp, e.wallet, -e.next_neg_xp, e.next_wallet)) n
      LEFT JOIN (SELECT k.neg_xp, k.wallet, count(*) AS uncounted
                   FROM pyxp.xp_balances b CROSS JOIN LATERAL pyxp.rank_bucket_of(b.total_xp, b.user_wallet) k
                  WHERE NOT b.ranked
                  GROUP BY k.neg_xp, k.wallet) u ON u.neg_xp = e.neg_xp AND u.wallet = e.wallet
     WHERE n.held - coalesce(u.uncounted, 0) <> e.wallets
    UNION ALL
    SELECT 'rank_count_mismatch', NULL, NULL, 'no rank bucket starts before every balance'
     WHERE NOT EXISTS (SELECT FROM pyxp.xp_rank_counts c
                        WHERE c.neg_xp = -9223372036854775807 AND c.wallet = '' AND c.slot = 0)
    UNION ALL
    SELECT 'rank_count_mismatch', b.user_wallet, NULL, 'balance not counted in its rank bucket (ranked = false)'
      FROM pyxp.xp_balances b WHERE NOT b.ranked
    UNION ALL
    -- The period boards: each bucket (over its slots) against the ranked
    -- balances it holds, placed as pyxp.period_bucket_of places them: a
    -- value never cut has every holder in its one bucket, ''; a value cut
    -- into buckets has, from each start ('' included) up to the next, the
    -- holders in between. The first are counted in one pass over the
    -- balances (a hash aggregate per kind), the others one index-only range
    -- of the board's index per bucket (pyxp.period_board_range), less the
    -- unranked balances in it (xp_balances_unranked, few), instead of a
    -- probe per balance (16 s of 0016's audit at 1M balances; the whole check
    -- took 30 s there, 2.2 s now).
    SELECT 'rank_count_mismatch', NULL, NULL,
           format('%s board from %s: bucket of %s XP from %s counts %s wallets, holds %s',
                  coalesce(c.period, h.period), coalesce(c.period_start, h.period_start),
                  coalesce(c.period_xp, h.period_xp), quote_literal(coalesce(c.wallet_start, h.wallet_start)),
                  coalesce(c.counted, 0), coalesce(h.held, 0))
      FROM (SELECT c.period, c.period_start, c.period_xp, c.wallet_start, sum(c.wallets) AS counted
              FROM pyxp.xp_period_rank_counts c GROUP BY c.period, c.period_start, c.period_xp, c.wallet_start) c
      FULL JOIN (
            SELECT v.period, v.period_start, v.period_xp, '' AS wallet_start, v.held
              FROM (SELECT CASE WHEN GROUPING(b.day_start) = 0 THEN 'day' WHEN GROUPING(b.week_start) = 0 THEN 'week'
                                WHEN GROUPING(b.month_start) = 0 THEN 'month' ELSE 'year' END AS period,
                           coalesce(b.day_start, b.week_start, b.month_start, b.year_start) AS period_start,
                           coalesce(b.day_xp, b.week_xp, b.month_xp, b.year_xp) AS period_xp, count(*) AS held
                      FROM pyxp.xp_balances b
                     WHERE b.ranked
                     GROUP BY GROUPING SETS ((b.day_start, b.day_xp), (b.week_start, b.week_xp),
                                             (b.month_start, b.month_xp), (b.year_start, b.year_xp))) v
             WHERE v.period_start IS NOT NULL  -- (a balance with no row in a kind of period yet)
               AND NOT EXISTS (SELECT FROM pyxp.xp_period_rank_counts s
                                WHERE s.period = v.period AND s.period_start = v.period_start
                                  AND s.period_xp = v.period_xp AND s.wallet_start <> '' AND s.slot = 0)
            UNION ALL
            SELECT s.period, s.period_start, s.period_xp, s.wallet_start, n.held - coalesce(u.unranked, 0)
              FROM (SELECT s.*, lead(s.wallet_start) OVER (PARTITION BY s.period, s.period_start, s.period_xp
                                                           ORDER BY s.wallet_start) AS next_start
                      FROM (SELECT c.period, c.period_start, c.period_xp, c.wallet_start
                              FROM pyxp.xp_period_rank_counts c WHERE c.wallet_start <> '' AND c.slot = 0
                            UNION
                            SELECT c.period, c.period_start, c.period_xp, ''
                              FROM pyxp.xp_period_rank_counts c WHERE c.wallet_start <> '' AND c.slot = 0) s) s
             CROSS JOIN LATERAL (SELECT count(*) AS held
                                   FROM pyxp.period_board_range(s.period, s.period_start, s.period_xp,
                                                                s.wallet_start, s.next_start)) n
              LEFT JOIN (SELECT e.period, e.period_start, e.period_xp, coalesce(q.wallet_start, '') AS wallet_start,
                                count(*) AS unranked
                           FROM pyxp.period_board_entries() e
                           LEFT JOIN LATERAL pyxp.period_bucket_of(e.period, e.period_start, e.period_xp,
                                                                   e.user_wallet) q ON true
                          WHERE NOT e.ranked
                          GROUP BY 1, 2, 3, 4) u
                     ON u.period = s.period AND u.period_start = s.period_start AND u.period_xp = s.period_xp
                    AND u.wallet_start = s.wallet_start
           ) h
             ON h.period = c.period AND h.period_start = c.period_start AND h.period_xp = c.period_xp
            AND h.wallet_start = c.wallet_start
     WHERE coalesce(c.counted, 0) <> coalesce(h.held, 0)
$$;

CREATE OR REPLACE FUNCTION pyxp.row_problems(p_since_checkpoint boolean)
RETURNS TABLE (check_name text, user_wallet text, transaction_id bigint, detail text)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT 'reversal_mismatch', t.user_wallet, t.id,
           CASE WHEN o.id IS NULL THEN format('reverses transaction %s, which does not exist', t.reverses)
                WHEN o.second_id IS NOT NULL
                THEN format('transaction %s is also reversed by transaction %s', o.id, o.second_id)
                ELSE format('reverses transaction %s (%s XP to %s) with %s XP', o.id, o.xp_amount, o.user_wallet,
                            t.xp_amount) END
      FROM pyxp.audited_rows(p_since_checkpoint) t
      LEFT JOIN LATERAL (SELECT o.id, o.xp_amount, o.user_wallet, o.reverses,
                                (SELECT min(x.id) FROM pyxp.xp_transactions x
                                  WHERE x.reverses = t.reverses AND x.id < t.id) AS second_id
                           FROM (SELECT o.id, o.xp_amount, o.user_wallet, o.reverses
                                   FROM pyxp.xp_transactions o WHERE o.id = t.reverses
                                 UNION ALL
                                 SELECT a.transaction_id, a.xp_amount, a.user_wallet, a.reverses
                                   FROM pyxp.xp_archived_originals a WHERE a.transaction_id = t.reverses) o
                          LIMIT 1) o ON true
     WHERE t.reverses IS NOT NULL
       AND (o.id IS NULL OR o.second_id IS NOT NULL
            OR t.xp_amount <> -o.xp_amount OR t.user_wallet <> o.user_wallet OR o.reverses IS NOT NULL)
    UNION ALL
    -- The full audit: every generic award's row joined to the claims naming
    -- it (a LEFT join, which PostgreSQL 15 can run in parallel workers, a
    -- FULL join it cannot: 26-31 s in one process at 10M rows, 18 s with
    -- two workers, most of it hashing the keys again)...
    SELECT 'claim_mismatch', t.user_wallet, t.id,
           CASE WHEN c.key_hash IS NULL THEN format('no claim in xp_award_claims for key %s', quote_literal(t.idempotency_key))
                ELSE format('claim %s of transaction %s is not the hash of its key %s', c.key_hash, t.id,
                            quote_literal(t.idempotency_key)) END
      FROM pyxp.xp_transactions t
      LEFT JOIN pyxp.xp_award_claims c ON c.transaction_id = t.id AND c.created_at = t.created_at
     WHERE NOT p_since_checkpoint AND t.request_digest IS NOT NULL
       -- pyxp.key_hash, spelled out and compared as bytes: a function call per row costs
       -- 5 times more, the text form of the hash 15 % more
       AND (c.key_hash IS NULL OR uuid_send(c.key_hash) <> substr(sha256(convert_to(t.idempotency_key, 'UTF8')), 1, 16))
    UNION ALL
    -- ... and the claims without their row (archived rows excepted: claimed
    -- before the archive horizon, sql/13_retention.sql), searched for only
    -- when the count or the sum of transaction ids of the claims from the
    -- horizon on differs from the generic rows'. Why that suffices: when the
    -- join above finds nothing, every generic row has exactly one claim
    -- naming it (two would share its key's hash, the claims' primary key),
    -- dated as the row; so the claims from the horizon on are those of the
    -- rows from the horizon on plus the ones without a row, which equal
    -- counts rule out. (The sums make a claim moved to another transaction
    -- show both its findings. The horizon is read once, an InitPlan:
    -- the function, not inlined, cost 2 us a row.)
    SELECT 'claim_mismatch', NULL, c.transaction_id,
           format('claim %s names transaction %s (%s), which does not exist', c.key_hash, c.transaction_id,
                  c.created_at)
      FROM pyxp.xp_award_claims c
     WHERE NOT p_since_checkpoint
       AND c.created_at >= coalesce((SELECT pyxp.archive_horizon()), '-infinity')
       AND NOT EXISTS (SELECT FROM pyxp.xp_transactions t
                        WHERE t.id = c.transaction_id AND t.created_at = c.created_at AND t.request_digest IS NOT NULL)
       AND (SELECT (count(*), sum(k.transaction_id)) FROM pyxp.xp_award_claims k
             WHERE k.created_at >= coalesce((SELECT pyxp.archive_horizon()), '-infinity'))
           IS DISTINCT FROM
           (SELECT (count(*), sum(t.id)) FROM pyxp.xp_transactions t
             WHERE t.request_digest IS NOT NULL AND t.created_at >= coalesce((SELECT pyxp.archive_horizon()), '-infinity'))
    UNION ALL
    SELECT 'claim_mismatch', t.user_wallet, t.id,
           CASE WHEN c.key_hash IS NULL THEN format('no claim in xp_award_claims for key %s', quote_literal(t.idempotency_key))
                ELSE format('the claim of key %s names transaction %s (%s)', quote_literal(t.idempotency_key),
                            c.transaction_id, c.created_at) END
      FROM pyxp.audited_rows(p_since_checkpoint) t
      LEFT JOIN pyxp.xp_award_claims c  -- pyxp.key_hash, spelled out (as above)
             ON c.key_hash = encode(substr(sha256(convert_to(t.idempotency_key, 'UTF8')), 1, 16), 'hex')::uuid
     WHERE p_since_checkpoint AND t.request_digest IS NOT NULL
       AND (c.key_hash IS NULL OR (c.transaction_id, c.created_at) <> (t.id, t.created_at))
    UNION ALL
    SELECT CASE WHEN ru.rule_id IS NULL THEN 'rule_missing' ELSE 'rule_mismatch' END, t.user_wallet, t.id,
           CASE WHEN ru.rule_id IS NULL THEN format('rule %s of this row does not exist', t.rule_id)
                ELSE format('transaction_type %s but rule %s is %s', t.transaction_type, ru.rule_id, ru.action) END
      FROM pyxp.audited_rows(p_since_checkpoint) t
      LEFT JOIN pyxp.rules ru ON ru.rule_id = t.rule_id
     WHERE t.rule_id IS NOT NULL AND (ru.rule_id IS NULL OR ru.action <> t.transaction_type)
    UNION ALL
    SELECT 'request_missing', t.user_wallet, t.id,
           format('no xp_requests row for key %s', quote_literal(t.idempotency_key))
      FROM pyxp.audited_rows(p_since_checkpoint) t
     WHERE t.request_digest IS NULL
       AND NOT EXISTS (SELECT FROM pyxp.xp_requests q WHERE q.key_hash = pyxp.key_hash(t.idempotency_key))
$$;

RESET ROLE;
