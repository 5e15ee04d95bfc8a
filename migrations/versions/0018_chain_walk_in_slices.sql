-- 0018: the chain walk in parallel slices (issue 15 item 1). Frozen copy of what sql/*.sql
-- defines at this revision; never edit it.
--
-- pyxp.chain_problems runs the chain checks in eight slices of the wallets
-- (pyxp.chain_problems_between, new: one slice, PL/pgSQL planned per call) that the
-- caller's plan may hand to parallel workers, when there are enough rows to walk
-- (pyxp.walk_in_slices, new); the full audit streams each slice (the rows' index merged
-- with the slice's wallets, pyxp.wallets_between, new) instead of one index probe per
-- wallet. Functions only: no table changes, nothing rewritten.
SET LOCAL ROLE pyxp_owner;

CREATE TYPE pyxp.audited_wallet AS (
    user_wallet text, from_seq bigint, from_xp bigint, cp_seq bigint, cp_xp bigint,
    total_xp bigint, current_level bigint, xp_to_next_level bigint, last_wallet_seq bigint,
    day_start timestamptz, day_xp bigint, week_start timestamptz, week_xp bigint,
    month_start timestamptz, month_xp bigint, year_start timestamptz, year_xp bigint,
    op_seq bigint, op_xp bigint, op_last_at timestamptz, op_day_start timestamptz, op_day_xp bigint,
    op_week_start timestamptz, op_week_xp bigint, op_month_start timestamptz, op_month_xp bigint,
    op_year_start timestamptz, op_year_xp bigint, op_rows bigint);

CREATE FUNCTION pyxp.wallets_between(p_from text, p_to text)
RETURNS SETOF pyxp.audited_wallet
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT b.user_wallet, coalesce(o.wallet_seq, 0), coalesce(o.total_xp, 0), c.wallet_seq, c.total_xp,
           b.total_xp, b.current_level, b.xp_to_next_level, b.last_wallet_seq,
           b.day_start, b.day_xp, b.week_start, b.week_xp, b.month_start, b.month_xp, b.year_start, b.year_xp,
           o.wallet_seq, o.total_xp, o.last_at, o.day_start, o.day_xp, o.week_start, o.week_xp,
           o.month_start, o.month_xp, o.year_start, o.year_xp, o.archived_rows
      FROM pyxp.xp_balances b
      LEFT JOIN pyxp.xp_wallet_checkpoints c
             ON c.user_wallet = b.user_wallet
            AND (p_from IS NULL OR c.user_wallet >= p_from) AND (p_to IS NULL OR c.user_wallet < p_to)
      LEFT JOIN pyxp.xp_wallet_openings o
             ON o.user_wallet = b.user_wallet
            AND (p_from IS NULL OR o.user_wallet >= p_from) AND (p_to IS NULL OR o.user_wallet < p_to)
     WHERE (p_from IS NULL OR b.user_wallet >= p_from) AND (p_to IS NULL OR b.user_wallet < p_to)
$$;

DROP FUNCTION pyxp.audited_wallets(boolean);  -- its return type changes: RETURNS SETOF pyxp.audited_wallet
CREATE FUNCTION pyxp.audited_wallets(p_since_checkpoint boolean)
RETURNS SETOF pyxp.audited_wallet
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT w.* FROM pyxp.wallets_between(NULL, NULL) w
     WHERE NOT p_since_checkpoint
    UNION ALL
    SELECT w.user_wallet, coalesce(c.wallet_seq, o.wallet_seq, 0), coalesce(c.total_xp, o.total_xp, 0),
           c.wallet_seq, c.total_xp,
           b.total_xp, b.current_level, b.xp_to_next_level, b.last_wallet_seq,
           b.day_start, b.day_xp, b.week_start, b.week_xp, b.month_start, b.month_xp, b.year_start, b.year_xp,
           o.wallet_seq, o.total_xp, o.last_at, o.day_start, o.day_xp, o.week_start, o.week_xp,
           o.month_start, o.month_xp, o.year_start, o.year_xp, o.archived_rows
      FROM (SELECT DISTINCT t.user_wallet FROM pyxp.xp_transactions t
             WHERE t.feed_xid >= pyxp.last_checkpoint_xmin()) w
      LEFT JOIN LATERAL (SELECT b.* FROM pyxp.xp_balances b WHERE b.user_wallet = w.user_wallet LIMIT 1) b ON true
      LEFT JOIN LATERAL (SELECT c.* FROM pyxp.xp_wallet_checkpoints c WHERE c.user_wallet = w.user_wallet LIMIT 1) c
             ON true
      LEFT JOIN LATERAL (SELECT o.* FROM pyxp.xp_wallet_openings o WHERE o.user_wallet = w.user_wallet LIMIT 1) o
             ON true
     WHERE p_since_checkpoint
$$;

CREATE FUNCTION pyxp.chain_problems_between(p_since_checkpoint boolean, p_from text, p_to text)
RETURNS TABLE (check_name text, user_wallet text, wallet_seq bigint, detail text)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET plan_cache_mode = force_custom_plan
COST 1000000 ROWS 10
AS $fn$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH wallets AS MATERIALIZED (
        SELECT g.* FROM pyxp.audited_wallets(true) g
         WHERE p_since_checkpoint
           AND (p_from IS NULL OR g.user_wallet >= p_from) AND (p_to IS NULL OR g.user_wallet < p_to)
        UNION ALL
        SELECT g.* FROM pyxp.wallets_between(p_from, p_to) g
         WHERE NOT p_since_checkpoint
    ), walked AS (
        -- The full audit: every row of the slice, the index in (user_wallet,
        -- wallet_seq) order merged with the wallets, one window and one
        -- aggregate per wallet, no sort. It walks from position 1: the rows
        -- at or before the opening (stragglers: sql/01_schema.sql) are
        -- counted, not chained; they are in the opening's sums.
        SELECT r.user_wallet, max(r.seq) AS max_seq,
               sum(r.xp_amount) FILTER (WHERE r.seq > r.from_seq) AS xp_since,
               bool_or(r.seq = r.cp_seq) AS cp_seen,
               count(*) FILTER (WHERE r.seq <= r.op_seq) AS op_kept,
               max(r.at) FILTER (WHERE r.seq > r.from_seq) AS latest_at,
               sum(r.xp_amount) FILTER (WHERE r.seq > r.from_seq AND r.at >= r.day_start) AS day_xp,
               sum(r.xp_amount) FILTER (WHERE r.seq > r.from_seq AND r.at >= r.week_start) AS week_xp,
               sum(r.xp_amount) FILTER (WHERE r.seq > r.from_seq AND r.at >= r.month_start) AS month_xp,
               sum(r.xp_amount) FILTER (WHERE r.seq > r.from_seq AND r.at >= r.year_start) AS year_xp,
               jsonb_agg(jsonb_build_object('seq', r.seq, 'after', r.balance_after, 'amount', r.xp_amount,
                                            'previous', r.previous, 'previous_seq', r.previous_seq,
                                            'running', r.running, 'gap', r.gap, 'checkpoint', r.checkpoint))
                   FILTER (WHERE r.running OR r.gap OR r.checkpoint) AS bad_rows
          FROM (SELECT y.*,
                       y.seq > y.from_seq AND y.balance_after <> y.previous + y.xp_amount AS running,
                       y.seq > y.from_seq AND y.seq <> y.previous_seq + 1 AS gap,
                       y.seq = y.cp_seq AND y.balance_after <> y.cp_xp AS checkpoint
                  FROM (SELECT x.user_wallet, x.wallet_seq AS seq, x.balance_after, x.xp_amount,
                               CASE WHEN x.reverses IS NULL THEN x.created_at  -- a reversal counts in its original's period
                                    ELSE pyxp.reversed_row_at(x.reverses)
                               END AS at,
                               h.from_seq, h.cp_seq, h.cp_xp, h.op_seq,
                               h.day_start, h.week_start, h.month_start, h.year_start,
                               -- the previous row walked, unless it is at or before
                               -- the starting position: then that position's balance
                               CASE WHEN lag(x.wallet_seq) OVER w > h.from_seq
                                    THEN lag(x.balance_after) OVER w ELSE h.from_xp END AS previous,
                               CASE WHEN lag(x.wallet_seq) OVER w > h.from_seq
                                    THEN lag(x.wallet_seq) OVER w ELSE h.from_seq END AS previous_seq
                          FROM pyxp.xp_transactions x
                          JOIN wallets h ON h.user_wallet = x.user_wallet
                         WHERE NOT p_since_checkpoint
                           AND (p_from IS NULL OR x.user_wallet >= p_from) AND (p_to IS NULL OR x.user_wallet < p_to)
                        WINDOW w AS (PARTITION BY x.user_wallet ORDER BY x.wallet_seq)) y) r
         GROUP BY r.user_wallet
    ), per_wallet AS (
        -- Since a checkpoint: one wallet at a time (a nested loop over the
        -- wallets: the planner has no estimate of how many rows the feed
        -- holds since, and joined to a set it took for one row, the walk of
        -- every wallet was run again per wallet: 2.5 min for 240,000 rows),
        -- its rows from its checkpoint's position, the window and the
        -- aggregate over them.
        SELECT g.*, w.*
          FROM wallets g
         CROSS JOIN LATERAL (
                SELECT coalesce(greatest(max(r.seq), g.op_seq), 0) AS ledger_seq,
                       g.from_xp + coalesce(sum(r.xp_amount) FILTER (WHERE r.seq > g.from_seq), 0) AS ledger_xp,
                       -- (a checkpoint at or before the opening: its row was archived)
                       coalesce(bool_or(r.seq = g.cp_seq), false) OR g.cp_seq <= g.op_seq AS cp_found,
                       count(*) FILTER (WHERE r.seq <= g.op_seq) AS op_kept,
                       greatest(max(r.at) FILTER (WHERE r.seq > g.from_seq), g.op_last_at) AS latest_at,
                       pyxp.sum_with_opening(sum(r.xp_amount) FILTER (WHERE r.seq > g.from_seq AND r.at >= g.day_start),
                                             g.op_day_start = g.day_start, g.op_day_xp) AS ledger_day_xp,
                       pyxp.sum_with_opening(sum(r.xp_amount) FILTER (WHERE r.seq > g.from_seq AND r.at >= g.week_start),
                                             g.op_week_start = g.week_start, g.op_week_xp) AS ledger_week_xp,
                       pyxp.sum_with_opening(sum(r.xp_amount) FILTER (WHERE r.seq > g.from_seq AND r.at >= g.month_start),
                                             g.op_month_start = g.month_start, g.op_month_xp) AS ledger_month_xp,
                       pyxp.sum_with_opening(sum(r.xp_amount) FILTER (WHERE r.seq > g.from_seq AND r.at >= g.year_start),
                                             g.op_year_start = g.year_start, g.op_year_xp) AS ledger_year_xp,
                       jsonb_agg(jsonb_build_object('seq', r.seq, 'after', r.balance_after, 'amount', r.xp_amount,
                                                    'previous', r.previous, 'previous_seq', r.previous_seq,
                                                    'running', r.running, 'gap', r.gap, 'checkpoint', r.checkpoint))
                           FILTER (WHERE r.running OR r.gap OR r.checkpoint) AS bad_rows
                  FROM (SELECT y.*,
                               y.seq > g.from_seq AND y.balance_after <> y.previous + y.xp_amount AS running,
                               y.seq > g.from_seq AND y.seq <> y.previous_seq + 1 AS gap,
                               y.seq = g.cp_seq AND y.balance_after <> g.cp_xp AS checkpoint
                          FROM (SELECT x.wallet_seq AS seq, x.balance_after, x.xp_amount,
                                       CASE WHEN x.reverses IS NULL THEN x.created_at  -- a reversal counts in its original's period
                                            ELSE pyxp.reversed_row_at(x.reverses)
                                       END AS at,
                                       -- the previous row walked, unless it is at or before
                                       -- the starting position: then that position's balance
                                       CASE WHEN lag(x.wallet_seq) OVER w > g.from_seq
                                            THEN lag(x.balance_after) OVER w ELSE g.from_xp END AS previous,
                                       CASE WHEN lag(x.wallet_seq) OVER w > g.from_seq
                                            THEN lag(x.wallet_seq) OVER w ELSE g.from_seq END AS previous_seq
                                  FROM pyxp.xp_transactions x
                                 WHERE x.user_wallet = g.user_wallet
                                   AND x.wallet_seq >= g.from_seq
                                WINDOW w AS (ORDER BY x.wallet_seq)) y) r
             ) w
         WHERE p_since_checkpoint
        UNION ALL
        SELECT g.*,
               coalesce(greatest(a.max_seq, g.op_seq), 0) AS ledger_seq,
               g.from_xp + coalesce(a.xp_since, 0) AS ledger_xp,
               -- (a checkpoint at or before the opening: its row was archived)
               coalesce(a.cp_seen, false) OR g.cp_seq <= g.op_seq AS cp_found,
               coalesce(a.op_kept, 0) AS op_kept,
               greatest(a.latest_at, g.op_last_at) AS latest_at,
               pyxp.sum_with_opening(a.day_xp, g.op_day_start = g.day_start, g.op_day_xp) AS ledger_day_xp,
               pyxp.sum_with_opening(a.week_xp, g.op_week_start = g.week_start, g.op_week_xp) AS ledger_week_xp,
               pyxp.sum_with_opening(a.month_xp, g.op_month_start = g.month_start, g.op_month_xp) AS ledger_month_xp,
               pyxp.sum_with_opening(a.year_xp, g.op_year_start = g.year_start, g.op_year_xp) AS ledger_year_xp,
               a.bad_rows
          FROM wallets g
          LEFT JOIN walked a ON a.user_wallet = g.user_wallet
         WHERE NOT p_since_checkpoint
    ), checked AS (
        SELECT p.*, c.level, c.next_level_xp, z.tz,
               p.total_xp IS DISTINCT FROM p.ledger_xp AS bad_balance,
               p.last_wallet_seq IS DISTINCT FROM p.ledger_seq AS bad_seq,
               p.total_xp IS NOT NULL
                   AND (p.current_level <> c.level OR p.xp_to_next_level <> c.next_level_xp - p.total_xp) AS bad_level,
               p.cp_seq IS NOT NULL AND NOT p.cp_found AS bad_checkpoint,
               NOT p_since_checkpoint AND p.op_rows + p.op_kept <> p.op_seq AS bad_opening,
               NOT p_since_checkpoint AND p.total_xp IS NOT NULL
                   AND ((p.day_start, p.day_xp, p.week_start, p.week_xp, p.month_start, p.month_xp,
                         p.year_start, p.year_xp)
                        IS DISTINCT FROM
                        (date_trunc('day', p.latest_at, z.tz), p.ledger_day_xp,
                         date_trunc('week', p.latest_at, z.tz), p.ledger_week_xp,
                         date_trunc('month', p.latest_at, z.tz), p.ledger_month_xp,
                         date_trunc('year', p.latest_at, z.tz), p.ledger_year_xp)) AS bad_periods
          FROM per_wallet p
         CROSS JOIN (SELECT r.ruleset_id, r.timezone AS tz FROM pyxp.rulesets r WHERE r.is_active) z
         CROSS JOIN LATERAL pyxp.curve_position(z.ruleset_id, coalesce(p.total_xp, 0)) c
    )
    SELECT f.check_name, c.user_wallet, f.wallet_seq, f.detail
      FROM checked c
     CROSS JOIN LATERAL (
            -- The rows' findings, as the walk flagged them.
            SELECT k.check_name, (r ->> 'seq')::bigint AS wallet_seq, k.detail
              FROM jsonb_array_elements(c.bad_rows) r
             CROSS JOIN LATERAL (VALUES
                    ('checkpoint_mismatch', (r ->> 'checkpoint')::boolean,
                     format('wallet_seq %s: balance_after = %s, checkpoint says %s', r ->> 'seq', r ->> 'after',
                            c.cp_xp)),
                    ('running_balance', (r ->> 'running')::boolean,
                     format('balance_after = %s, previous balance_after %s + xp_amount %s = %s', r ->> 'after',
                            r ->> 'previous', r ->> 'amount',
                            (r ->> 'previous')::bigint + (r ->> 'amount')::bigint)),
                    ('wallet_seq_gap', (r ->> 'gap')::boolean,
                     format('wallet_seq %s follows wallet_seq %s', r ->> 'seq', r ->> 'previous_seq'))
                 ) k(check_name, found, detail)
             WHERE k.found
            UNION ALL
            SELECT 'checkpoint_mismatch', NULL,
                   format('checkpoint at wallet_seq %s (%s XP): no such ledger row', c.cp_seq, c.cp_xp)
             WHERE c.bad_checkpoint
            UNION ALL
            SELECT 'balance_mismatch', NULL,
                   CASE WHEN c.total_xp IS NULL
                        THEN format('ledger sum %s but no xp_balances row', c.ledger_xp)
                        WHEN c.from_seq > 0 AND c.from_seq = c.op_seq AND NOT p_since_checkpoint
                        THEN format('xp_balances.total_xp = %s, opening %s + rows since = %s',
                                    c.total_xp, c.from_xp, c.ledger_xp)
                        WHEN c.from_seq > 0
                        THEN format('xp_balances.total_xp = %s, checkpoint %s + rows since = %s',
                                    c.total_xp, c.from_xp, c.ledger_xp)
                        ELSE format('xp_balances.total_xp = %s, ledger sum = %s', c.total_xp, c.ledger_xp) END
             WHERE c.bad_balance
            UNION ALL
            SELECT 'opening_mismatch', NULL,
                   format('opening at wallet_seq %s: %s rows archived + %s in the ledger up to it',
                          c.op_seq, c.op_rows, c.op_kept)
             WHERE c.bad_opening
            UNION ALL
            SELECT 'wallet_seq_mismatch', NULL,
                   format('xp_balances.last_wallet_seq = %s, last ledger row''s wallet_seq = %s',
                          c.last_wallet_seq, c.ledger_seq)
             WHERE c.bad_seq AND c.total_xp IS NOT NULL
            UNION ALL
            SELECT 'level_mismatch', NULL,
                   format('level %s with %s to next, curve says level %s with %s to next',
                          c.current_level, c.xp_to_next_level, c.level, c.next_level_xp - c.total_xp)
             WHERE c.bad_level
            UNION ALL
            SELECT 'period_mismatch', NULL,
                   format('%s: xp_balances holds %s XP from %s, the ledger %s XP from %s', k.kind,
                          coalesce(k.kept_xp::text, 'no'), coalesce(k.kept_start::text, 'no period'),
                          coalesce(x.xp::text, 'no'), coalesce(k.start::text, 'no period'))
              FROM (VALUES ('day', c.day_start, c.day_xp, date_trunc('day', c.latest_at, c.tz)),
                           ('week', c.week_start, c.week_xp, date_trunc('week', c.latest_at, c.tz)),
                           ('month', c.month_start, c.month_xp, date_trunc('month', c.latest_at, c.tz)),
                           ('year', c.year_start, c.year_xp, date_trunc('year', c.latest_at, c.tz)))
                   k(kind, kept_start, kept_xp, start)
             CROSS JOIN LATERAL pyxp.period_xp_from_rows(c.user_wallet, k.start, k.kind, c.tz) AS x(xp)
             WHERE c.bad_periods AND (k.kept_start, k.kept_xp) IS DISTINCT FROM (k.start, x.xp)
         ) f
     WHERE c.bad_rows IS NOT NULL OR c.bad_balance OR c.bad_seq OR c.bad_level OR c.bad_checkpoint
        OR c.bad_periods OR c.bad_opening;
END
$fn$;

CREATE FUNCTION pyxp.walk_in_slices(p_since_checkpoint boolean)
RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
DECLARE
    v_setting text := nullif(btrim(current_setting('pyxp.audit_parallel_min_rows', true)), '');
    v_rows bigint;
BEGIN
    IF v_setting !~ '^[0-9]{1,18}$' THEN
        RAISE EXCEPTION 'pyxp.audit_parallel_min_rows must be a whole number of rows (0: always in slices), got %',
                        quote_literal(v_setting)
            USING ERRCODE = 'PX023', HINT = 'RESET pyxp.audit_parallel_min_rows (100000 rows)';
    END IF;
    v_rows := coalesce(v_setting::bigint, 100000);
    -- Two statements, not one with the mode in its WHERE: planned once for
    -- both modes, that one read the ledger in the order of its heap, where
    -- the new rows come last (14 s at 10M rows), not from the feed index.
    IF p_since_checkpoint THEN
        RETURN (SELECT count(*) FROM (SELECT FROM pyxp.xp_transactions t
                                       WHERE t.feed_xid >= pyxp.last_checkpoint_xmin() LIMIT v_rows) x) >= v_rows;
    END IF;
    RETURN (SELECT count(*) FROM (SELECT FROM pyxp.xp_transactions t LIMIT v_rows) x) >= v_rows;
END
$$;

CREATE OR REPLACE FUNCTION pyxp.chain_problems(p_since_checkpoint boolean)
RETURNS TABLE (check_name text, user_wallet text, wallet_seq bigint, detail text)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT * FROM pyxp.chain_problems_between(p_since_checkpoint, NULL, NULL)
     WHERE NOT pyxp.walk_in_slices(p_since_checkpoint)
    UNION ALL
    SELECT s.* FROM (
        SELECT * FROM pyxp.chain_problems_between(p_since_checkpoint, NULL, '0x2')
        UNION ALL
        SELECT * FROM pyxp.chain_problems_between(p_since_checkpoint, '0x2', '0x4')
        UNION ALL
        SELECT * FROM pyxp.chain_problems_between(p_since_checkpoint, '0x4', '0x6')
        UNION ALL
        SELECT * FROM pyxp.chain_problems_between(p_since_checkpoint, '0x6', '0x8')
        UNION ALL
        SELECT * FROM pyxp.chain_problems_between(p_since_checkpoint, '0x8', '0xa')
        UNION ALL
        SELECT * FROM pyxp.chain_problems_between(p_since_checkpoint, '0xa', '0xc')
        UNION ALL
        SELECT * FROM pyxp.chain_problems_between(p_since_checkpoint, '0xc', '0xe')
        UNION ALL
        SELECT * FROM pyxp.chain_problems_between(p_since_checkpoint, '0xe', NULL)
        OFFSET 0) s
     WHERE pyxp.walk_in_slices(p_since_checkpoint)
$$;

COMMENT ON FUNCTION pyxp.wallets_between(text, text) IS
    'internal: the wallets with a balance in a range of wallet texts, with their checkpoint and opening (the full audit''s walk).';
COMMENT ON FUNCTION pyxp.chain_problems_between(boolean, text, text) IS
    'internal: the chain checks of the audited wallets in a range of wallet texts (one slice of pyxp.chain_problems).';
COMMENT ON FUNCTION pyxp.walk_in_slices(boolean) IS
    'internal: whether the chain walk has enough rows (pyxp.audit_parallel_min_rows) to run in parallel slices.';
COMMENT ON FUNCTION pyxp.audited_wallets(boolean) IS
    'internal: the wallets an audit walks (all, or those with rows since the last checkpoint) and where each starts.';

REVOKE ALL ON FUNCTION pyxp.wallets_between(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pyxp.chain_problems_between(boolean, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pyxp.walk_in_slices(boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION pyxp.audited_wallets(boolean) FROM PUBLIC;

RESET ROLE;
