-- Verification: pyxp.audit (everything, the whole ledger), and audit
-- checkpoints: pyxp.audit_since_checkpoint proves what was written since the
-- last checkpoint in time proportional to the new rows, and
-- pyxp.record_audit_checkpoint moves the checkpoint forward once that proof
-- is clean (SPEC 4 "every balance provable from its history": a balance is
-- its checkpoint's balance + the rows since).
--
-- Both walk each wallet's chain in wallet_seq order (pyxp.chain_problems):
-- the full audit every wallet from its first row, the incremental one the
-- wallets with new rows from their checkpoint's position. Why the walk is
-- fast: index xp_transactions_wallet_seq carries what it reads (an
-- index-only scan, merged with the balances in wallet order), every
-- per-wallet check is computed once per wallet, not once per row, and a
-- large walk is cut into slices of the wallets that parallel workers share,
-- with the checks that are not cut into slices (pyxp.unsliced_problems)
-- beside them.
-- SECURITY DEFINER so that pyxp_writer and pyxp_reader can call them.

-- The xmin of the snapshot the last checkpoint read (NULL: no checkpoint
-- yet). Every row that snapshot did not see has a feed_xid >= it.
CREATE FUNCTION pyxp.last_checkpoint_xmin()
RETURNS xid8
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT k.snapshot_xmin FROM pyxp.xp_audit_checkpoints k ORDER BY k.checkpoint_id DESC LIMIT 1
$$;

-- A wallet as a verification walks it: where it starts (from_seq, from_xp:
-- its checkpoint's position and balance, or its opening's, or 0), its balance
-- row (NULL columns: none), its checkpoint (cp_*, NULL: none) and its opening
-- (op_*, NULL: none; sql/13_retention.sql).
CREATE TYPE pyxp.audited_wallet AS (
    user_wallet text, from_seq bigint, from_xp bigint, cp_seq bigint, cp_xp bigint,
    total_xp bigint, current_level bigint, xp_to_next_level bigint, last_wallet_seq bigint,
    day_start timestamptz, day_xp bigint, week_start timestamptz, week_xp bigint,
    month_start timestamptz, month_xp bigint, year_start timestamptz, year_xp bigint,
    op_seq bigint, op_xp bigint, op_last_at timestamptz, op_day_start timestamptz, op_day_xp bigint,
    op_week_start timestamptz, op_week_xp bigint, op_month_start timestamptz, op_month_xp bigint,
    op_year_start timestamptz, op_year_xp bigint, op_rows bigint);

-- The wallets with a balance in [p_from, p_to) (NULL: unbounded), each from
-- its first row or its opening: the full audit's wallets
-- (pyxp.audited_wallets) or one slice of them (pyxp.chain_problems_between).
-- The bounds are on all three tables, so each is an index range of its
-- primary key, merged in wallet order.
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

-- The wallets a verification walks, each from a position.
-- p_since_checkpoint false: every wallet with a balance, from its first row,
-- or from its opening when its first rows were archived.
-- true (callers pass it only when a checkpoint exists): the wallets with a
-- row written since the last checkpoint (found by the feed index: feed_xid
-- >= the checkpoint's snapshot xmin), from their checkpoint's position, each
-- looked up by its key (a probe per wallet, never a pass over a table).
-- Callers plan it with p_since_checkpoint known (force_custom_plan), so
-- only one branch is planned.
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
      -- in key order, so that the probes of the balances, checkpoints and
      -- ledger that follow read each index page once (0044: in a hash's
      -- order, 139,318 wallets of 1M read 430,000 pages outside shared
      -- buffers, 3.2 s; in key order 91,000, 1.4 s)
      FROM (SELECT t.user_wallet FROM pyxp.xp_transactions t
             WHERE t.feed_xid >= pyxp.last_checkpoint_xmin()
             GROUP BY t.user_wallet ORDER BY t.user_wallet) w
      LEFT JOIN LATERAL (SELECT b.* FROM pyxp.xp_balances b WHERE b.user_wallet = w.user_wallet LIMIT 1) b ON true
      LEFT JOIN LATERAL (SELECT c.* FROM pyxp.xp_wallet_checkpoints c WHERE c.user_wallet = w.user_wallet LIMIT 1) c
             ON true
      LEFT JOIN LATERAL (SELECT o.* FROM pyxp.xp_wallet_openings o WHERE o.user_wallet = w.user_wallet LIMIT 1) o
             ON true
     WHERE p_since_checkpoint
$$;

-- A wallet's XP in the period of a kind starting at p_start, from its rows
-- after its opening (a reversal in its original's period) and its opening's
-- XP there: what pyxp.chain_problems reports against a balance's period
-- columns, on the mismatch path only.
CREATE FUNCTION pyxp.period_xp_from_rows(p_wallet text, p_start timestamptz, p_kind text, p_timezone text)
RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT (sum(x.xp) FILTER (WHERE x.xp IS NOT NULL))::bigint
      FROM (SELECT t.xp_amount AS xp
              FROM pyxp.xp_transactions t
             CROSS JOIN LATERAL (SELECT CASE WHEN t.reverses IS NULL THEN t.created_at
                                             ELSE pyxp.reversed_row_at(t.reverses) END AS at) e
             WHERE t.user_wallet = p_wallet AND date_trunc(p_kind, e.at, p_timezone) = p_start
               AND t.wallet_seq > coalesce((SELECT o.wallet_seq FROM pyxp.xp_wallet_openings o
                                             WHERE o.user_wallet = p_wallet), 0)
            UNION ALL
            SELECT CASE p_kind WHEN 'day' THEN o.day_xp WHEN 'week' THEN o.week_xp WHEN 'month' THEN o.month_xp
                               ELSE o.year_xp END
              FROM pyxp.xp_wallet_openings o
             WHERE o.user_wallet = p_wallet
               AND CASE p_kind WHEN 'day' THEN o.day_start WHEN 'week' THEN o.week_start
                               WHEN 'month' THEN o.month_start ELSE o.year_start END = p_start) x
$$;

-- A period's XP from the rows walked (p_rows; NULL: none) and, when the
-- opening's latest period of that kind is the one checked, the opening's XP
-- there.
CREATE FUNCTION pyxp.sum_with_opening(p_rows numeric, p_same_period boolean, p_opening_xp bigint)
RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN p_same_period THEN coalesce(p_rows, 0) + p_opening_xp ELSE p_rows END $$;

-- The chain checks, one walk of each audited wallet's rows in wallet_seq
-- order from its starting position (its checkpoint's row, the anchor,
-- included):
--   running_balance      balance_after <> previous balance_after + xp_amount
--   wallet_seq_gap       a row's wallet_seq is not the previous one's + 1
--                        (the first row's previous is 0: rows are 1, 2, ...)
--   checkpoint_mismatch  the checkpoint's row is missing (and not
--                        archived: at or before the opening's position), or
--                        its balance_after is not the checkpoint's balance
--   balance_mismatch     xp_balances.total_xp <> the checkpoint's balance
--                        + the rows since (the full audit: the ledger sum,
--                        or the opening's balance + the rows after it)
--   opening_mismatch     the rows at positions 1 .. the opening's are not its
--                        archived rows + the ledger's rows there (a row
--                        added, or an archived one back, before the opening)
--   wallet_seq_mismatch  xp_balances.last_wallet_seq <> the last row's
--   level_mismatch       the level is not the active curve's for the total
--   period_mismatch      (full audit only: a period's rows may predate the
--                        checkpoint) the balance's latest periods and their
--                        XP (sql/07_periods.sql) are not the ledger's (its
--                        rows after the opening, and the opening's latest
--                        periods)
-- Per-row findings are gathered per wallet (jsonb, NULL when healthy).
--
-- One slice of the audited wallets: those in [p_from, p_to) (NULL:
-- unbounded); pyxp.chain_problems runs the slices. A slice reads its wallets
-- once (materialized), then one window and one aggregate per wallet over
-- its rows. The full audit streams a slice: the index of the rows in
-- (user_wallet, wallet_seq) order merged with the wallets, so no sort (a
-- probe of the index per wallet instead: 19.8 s against 9.0 s for the
-- slices at 10M rows). Since a checkpoint: one index probe per wallet, for
-- its rows from its checkpoint's position.
-- PL/pgSQL, planned for each call (force_custom_plan): the mode and the
-- bounds are constants in the plan, so one branch is planned and the bounds
-- are index ranges; and, not inlined, a call is what the caller's plan can
-- hand to a parallel worker (COST: a slice is worth a worker).
-- No nested loop joins (enable_nestloop off; the since-checkpoint walk's
-- LATERAL is one anyway): the planner has no statistics on the per-wallet
-- aggregate (it guesses 200 rows), and without statistics on the ledger's
-- partitioned parent, which autovacuum never analyzes, a slice of more than
-- about 135,000 wallets joined them to it by a nested loop, every wallet
-- against every aggregate row: audit() ran for more than 10 minutes on
-- 200,000 wallets (a hostile test, 0035; 2.8 s with this setting, and the
-- same time as before once the parent is analyzed).
CREATE FUNCTION pyxp.chain_problems_between(p_since_checkpoint boolean, p_from text, p_to text)
RETURNS TABLE (check_name text, user_wallet text, wallet_seq bigint, detail text)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET plan_cache_mode = force_custom_plan
SET enable_nestloop = off
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
                       -- (a checkpoint at or before the opening: its row was archived;
                       -- no opening: it names a row the ledger must hold. 0029: a
                       -- NULL here left a checkpoint naming no row unreported.)
                       coalesce(bool_or(r.seq = g.cp_seq), false) OR coalesce(g.cp_seq <= g.op_seq, false) AS cp_found,
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
               coalesce(a.cp_seen, false) OR coalesce(g.cp_seq <= g.op_seq, false) AS cp_found,
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
               -- a checkpoint at the opening's position (its row archived)
               -- holds the opening's balance (0026: an opening and a
               -- balance raised together, with no row since, were not seen)
               p.cp_seq = p.op_seq AND p.cp_xp IS DISTINCT FROM p.op_xp AS bad_opening_checkpoint,
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
            SELECT 'checkpoint_mismatch', NULL,
                   format('checkpoint at wallet_seq %s (%s XP): the opening there holds %s XP', c.cp_seq, c.cp_xp,
                          c.op_xp)
             WHERE c.bad_opening_checkpoint
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
        OR c.bad_periods OR c.bad_opening OR c.bad_opening_checkpoint;
END
$fn$;

-- Whether the chain walk is worth its slices (pyxp.chain_problems): at
-- least pyxp.audit_parallel_min_rows rows to walk (a setting; 100000 when
-- unset; 0: always; anything but a whole number: PX023): the ledger's rows,
-- or since a checkpoint those written
-- since. Counted up to that number, no further. Below it, one walk costs
-- less than eight plans and two workers, each of which starts cold (about
-- 0.2 s; one walk reads about 2 us a row in the full audit, 10 us since a
-- checkpoint; 50 rows: 10 ms against 44 ms).
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

-- The checks that are not cut into slices, in two calls that a plan can
-- hand to parallel workers beside the chain walk's slices
-- (pyxp.chain_problems; PL/pgSQL, planned per call, like a slice). The full
-- audit: part 1, the rank buckets' and period boards' counts
-- (pyxp.rank_problems); part 2, checkpoints without a balance, wallets not
-- in the form today's checks give them, caps. Since a checkpoint: part 1,
-- the new rows' single-row checks (pyxp.row_problems); part 2, nothing. At
-- 10M rows right after heavy writes, part 1 takes 5.8 s in one process (the
-- board ranges' index-only scans visit the heap until a vacuum) and part 2
-- 3.7 s; since a checkpoint part 1 took 1.3 s for 250,000 rows: run beside
-- the slices, on the other core, instead of after them, and in two calls so
-- that neither is the last to finish (one call of both took 16.6 s beside
-- slices that took 15 s).
CREATE FUNCTION pyxp.unsliced_problems(p_since_checkpoint boolean, p_part integer)
RETURNS TABLE (check_name text, user_wallet text, transaction_id bigint, detail text)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET plan_cache_mode = force_custom_plan
COST 4000000 ROWS 10
AS $fn$
BEGIN
    IF p_since_checkpoint THEN
        IF p_part = 1 THEN
            RETURN QUERY SELECT * FROM pyxp.row_problems(true);
        END IF;
        RETURN;
    END IF;
    IF p_part = 1 THEN
        RETURN QUERY SELECT * FROM pyxp.rank_problems();
        RETURN;
    END IF;
    RETURN QUERY
    SELECT 'checkpoint_mismatch', c.user_wallet, NULL::bigint,
           format('checkpoint at wallet_seq %s (%s XP) of a wallet without a balance', c.wallet_seq, c.total_xp)
      FROM pyxp.xp_wallet_checkpoints c
     WHERE NOT EXISTS (SELECT FROM pyxp.xp_balances b WHERE b.user_wallet = c.user_wallet)
    UNION ALL
    -- Identities stored before 0002 that today's checks would read otherwise
    -- (NFKC, Unicode whitespace, invisible characters): one person may be two
    -- wallets here; a DBA decides what to merge. A wallet already in the
    -- canonical 0x form (0x and 40 lower-case hex digits: ASCII, no space,
    -- nothing to fold) reads the same: only the others go through the
    -- PL/pgSQL checks (4.8 s of the audit at 1M balances, 1.7 s now).
    SELECT 'identity_not_normalised', b.user_wallet, NULL,
           CASE WHEN pyxp.invisible_character(f.form) IS NOT NULL
                THEN format('wallet %s holds %s, refused since 0002', quote_literal(b.user_wallet),
                            pyxp.code_point(pyxp.invisible_character(f.form)))
                ELSE format('wallet %s is read %s since 0002', quote_literal(b.user_wallet), quote_literal(f.form)) END
      FROM (SELECT b.user_wallet FROM pyxp.xp_balances b WHERE b.user_wallet COLLATE "C" !~ '^0x[0-9a-f]{40}$') b
     CROSS JOIN LATERAL (SELECT CASE WHEN x.t ~* '^0x[0-9a-f]{40}$' THEN lower(x.t) ELSE x.t END AS form
                           FROM (SELECT pyxp.trimmed_text(b.user_wallet, true) AS t) x) f
     WHERE f.form <> b.user_wallet OR pyxp.invisible_character(f.form) IS NOT NULL
    UNION ALL
    -- Caps: what xp_cap_usage holds against the ledger (the part its
    -- period's own rows used; what a switch seeded from other periods'
    -- gains), and no capped gain applied beyond what was left in the period
    -- that governed it (nothing to read when no rule ever carried a cap).
    SELECT 'cap_usage_mismatch', coalesce(u.user_wallet, l.user_wallet), NULL,
           format('%s from %s: xp_cap_usage says %s XP used by its period''s rows, the ledger %s XP',
                  coalesce(u.allowance, l.allowance), coalesce(u.period_start, l.period_start),
                  coalesce(u.used_xp - u.seeded_xp, 0), coalesce(l.used_xp, 0))
      FROM pyxp.xp_cap_usage u
      FULL JOIN pyxp.ledger_cap_usage() l
        ON l.user_wallet = u.user_wallet AND l.allowance = u.allowance AND l.period_start = u.period_start
     WHERE coalesce(u.used_xp - u.seeded_xp, 0) <> coalesce(l.used_xp, 0)
       AND (EXISTS (SELECT FROM pyxp.rules ru WHERE ru.cap_max_xp IS NOT NULL)
            OR EXISTS (SELECT FROM pyxp.xp_cap_usage))
    UNION ALL
    SELECT 'cap_usage_mismatch', s.user_wallet, NULL,
           format('%s from %s: xp_cap_usage says %s XP used by gains counted in other periods, the ledger %s XP',
                  s.allowance, s.period_start, s.seeded_xp, s.ledger_xp)
      FROM pyxp.ledger_cap_seeds() s
     WHERE s.seeded_xp <> s.ledger_xp
    UNION ALL
    SELECT 'cap_exceeded', e.user_wallet, NULL,
           format('%s from %s (%s in %s): %s XP granted, cap %s', e.allowance, e.period_start, e.per, e.zone,
                  e.used_xp, e.cap_max_xp)
      FROM pyxp.exceeded_allowances() e
     WHERE EXISTS (SELECT FROM pyxp.rules ru WHERE ru.cap_max_xp IS NOT NULL);
END
$fn$;

-- The chain checks of the audited wallets (pyxp.chain_problems_between) and,
-- with p_unsliced, the checks of pyxp.unsliced_problems: one walk of every
-- wallet and then those, or, when pyxp.walk_in_slices says so, eight slices
-- by the canonical wallet form's third character (0x + 40 lower-case hex
-- digits: 0x0.. and 0x1.., ..., 0xe.. and 0xf..) and the unsliced checks as
-- two more calls. Every wallet is in exactly one slice, whatever its form or
-- the collation (each bound is the same comparison on both sides); wallets
-- of other forms are in the first or last slice. The calls are independent:
-- the caller's plan may run them in parallel workers (a Parallel Append
-- under a Gather, the costliest call first; OFFSET 0 keeps them a subquery
-- of their own, so that the Gather is theirs and is not started when the
-- one walk runs instead). 10M rows, 2 workers: the walk 9.0 s against 19.8 s
-- for the walk of 0017; with the unsliced checks beside it, 15.5 s against
-- 17.7 s one after the other, right after the bench's writes (16.6 s with
-- them in one call): the walk and the checks are bound by the two cores'
-- time, not by waiting. A plan that cannot use workers
-- (record_audit_checkpoint's INSERT, which passes p_unsliced false) runs
-- them one after another. A chain finding names its row by wallet_seq,
-- looked up here; the others name it by transaction_id.
CREATE FUNCTION pyxp.chain_problems(p_since_checkpoint boolean, p_unsliced boolean)
RETURNS TABLE (check_name text, user_wallet text, transaction_id bigint, detail text)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT c.check_name, c.user_wallet,
           -- a chain finding's row, by its wallet_seq (a position held twice, which no unique
           -- index prevents since 0015: its later row)
           coalesce(c.transaction_id,
                    (SELECT max(t.id) FROM pyxp.xp_transactions t
                      WHERE t.user_wallet = c.user_wallet AND t.wallet_seq = c.wallet_seq)),
           c.detail
      FROM (
        SELECT c.*, NULL::bigint FROM pyxp.chain_problems_between(p_since_checkpoint, NULL, NULL) c
         WHERE NOT pyxp.walk_in_slices(p_since_checkpoint)
        UNION ALL
        SELECT u.check_name, u.user_wallet, NULL, u.detail, u.transaction_id
          FROM generate_series(1, 2) n CROSS JOIN LATERAL pyxp.unsliced_problems(p_since_checkpoint, n) u
         WHERE p_unsliced AND NOT pyxp.walk_in_slices(p_since_checkpoint)
        UNION ALL
        SELECT s.* FROM (
            SELECT u.check_name, u.user_wallet, NULL::bigint, u.detail, u.transaction_id
              FROM pyxp.unsliced_problems(p_since_checkpoint, 1) u
             WHERE p_unsliced
            UNION ALL
            SELECT u.check_name, u.user_wallet, NULL, u.detail, u.transaction_id
              FROM pyxp.unsliced_problems(p_since_checkpoint, 2) u
             WHERE p_unsliced
            UNION ALL
            SELECT c.*, NULL FROM pyxp.chain_problems_between(p_since_checkpoint, NULL, '0x2') c
            UNION ALL
            SELECT c.*, NULL FROM pyxp.chain_problems_between(p_since_checkpoint, '0x2', '0x4') c
            UNION ALL
            SELECT c.*, NULL FROM pyxp.chain_problems_between(p_since_checkpoint, '0x4', '0x6') c
            UNION ALL
            SELECT c.*, NULL FROM pyxp.chain_problems_between(p_since_checkpoint, '0x6', '0x8') c
            UNION ALL
            SELECT c.*, NULL FROM pyxp.chain_problems_between(p_since_checkpoint, '0x8', '0xa') c
            UNION ALL
            SELECT c.*, NULL FROM pyxp.chain_problems_between(p_since_checkpoint, '0xa', '0xc') c
            UNION ALL
            SELECT c.*, NULL FROM pyxp.chain_problems_between(p_since_checkpoint, '0xc', '0xe') c
            UNION ALL
            SELECT c.*, NULL FROM pyxp.chain_problems_between(p_since_checkpoint, '0xe', NULL) c
            OFFSET 0) s
         WHERE pyxp.walk_in_slices(p_since_checkpoint)
           ) c(check_name, user_wallet, wallet_seq, detail, transaction_id)
$$;

-- The rows the single-row checks read: every row (p_since_checkpoint false)
-- or the rows written since the last checkpoint (a superset: feed_xid >= its
-- snapshot's xmin; callers pass true only when a checkpoint exists). A
-- function, not a CTE: each check scans what it needs (a CTE read by three
-- checks was a 10M-row tuplestore).
CREATE FUNCTION pyxp.audited_rows(p_since_checkpoint boolean)
RETURNS SETOF pyxp.xp_transactions
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT t.* FROM pyxp.xp_transactions t
     WHERE NOT p_since_checkpoint
    UNION ALL
    SELECT t.* FROM pyxp.xp_transactions t
     WHERE p_since_checkpoint AND t.feed_xid >= pyxp.last_checkpoint_xmin()
$$;

-- What the audit evaluates a rule's linear form with (pyxp.row_problems):
-- pyxp.rule_amount on every row whose inputs are what the writer stores,
-- JSON numbers (PX004), and this on the others. An owner's edit can make an
-- input, or a coefficient, something rule_amount cannot read ("abc", an
-- object): it raised (22P02, 22023) and audit() failed without naming the
-- row (a hostile test, 0042). Here such a value gives NaN, which no amount
-- equals (amount_mismatch); what rule_amount reads (pyxp.readable_number)
-- it evaluates, as before.
CREATE FUNCTION pyxp.readable_number(p_value jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    -- a number, JSON null or nothing (no term), or a string numeric reads:
    -- spaces, a sign, an exponent of at most four digits
    SELECT CASE coalesce(jsonb_typeof(p_value), 'null')
               WHEN 'number' THEN true
               WHEN 'null' THEN true
               WHEN 'string'
               THEN p_value #>> '{}'
                    ~ '^[ \t\n\r\v\f]*[+-]?([0-9]+([.][0-9]*)?|[.][0-9]+)([eE][+-]?[0-9]{1,4})?[ \t\n\r\v\f]*$'
               ELSE false END
$$;

CREATE FUNCTION pyxp.audited_rule_amount(p_constant numeric, p_coefficients jsonb, p_params jsonb)
RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN jsonb_typeof(p_coefficients) IS DISTINCT FROM 'object' THEN 'NaN'::numeric
                WHEN EXISTS (SELECT FROM jsonb_each(p_coefficients) c
                              WHERE NOT (pyxp.readable_number(c.value) AND pyxp.readable_number(p_params -> c.key)))
                THEN 'NaN'
                ELSE pyxp.rule_amount(p_constant, p_coefficients, p_params) END
$$;

-- A rule's test of a row's metadata for inputs rule_amount may not read
-- (pyxp.audited_rule_amount reads those rows): lax $ ? (any input of the
-- rule is neither a number nor null). NULL when the coefficients are not an
-- object of numbers under names a writer accepts (every row is read the
-- slow way). Built once per rule.
CREATE FUNCTION pyxp.odd_inputs_path(p_coefficients jsonb)
RETURNS jsonpath
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN jsonb_typeof(p_coefficients) = 'object' AND p_coefficients <> '{}'
                 AND NOT EXISTS (SELECT FROM jsonb_each(p_coefficients) c
                                  WHERE jsonb_typeof(c.value) <> 'number'
                                     OR c.key !~ '^[A-Za-z_$][A-Za-z0-9_$]*$')
           THEN ('lax $ ? (' || (SELECT string_agg(format('(@.%1$s.type() != "number" && @.%1$s.type() != "null")',
                                                          to_json(k.key)), ' || ')
                                   FROM jsonb_object_keys(p_coefficients) k(key)) || ')')::jsonpath END
$$;

-- The checks of single rows (pyxp.audited_rows):
--   reversal_mismatch   a reversal that does not mirror its original (same
--                       wallet, opposite amount; an archived original is
--                       read in xp_archived_originals), reverses a reversal
--                       or a row that does not exist, or is a second
--                       reversal of its original (no foreign key or unique
--                       index holds these on a partitioned ledger:
--                       sql/01_schema.sql)
--   rule_missing, rule_mismatch  a row's rule is gone, or is another action
--   duplicate_id        two rows with one id (the full audit only)
--   request_missing     a flow's or reversal's row without its xp_requests row
--                       (found by its key's hash)
--   claim_mismatch      a generic award's row without its claim in
--                       xp_award_claims, or a claim without its row (but
--                       for a row archived: its created_at is before the
--                       archive horizon, sql/13_retention.sql), or
--                       whose hash is not its row's key's (the full audit
--                       joins the rows to the claims on the row's id, and
--                       looks for claims without a row when the counts say
--                       one exists; since a checkpoint, each new row probes
--                       its claim)
CREATE FUNCTION pyxp.row_problems(p_since_checkpoint boolean)
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
    -- Two rows with one id: the ledger's primary key is (id, created_at), as
    -- a partitioned table's unique index must hold its partition key, and a
    -- reversal names its original by id alone (0032, a hostile test: after a
    -- logical replication switchover, which carries no sequence, the next
    -- award got id 1, another wallet's row's, and reversing it reversed that
    -- row; audit() said nothing). The full audit only: one grouping of the
    -- ids in the order of the partitions' primary keys (merged, no sort),
    -- then each id found twice looked up (OFFSET 0 keeps that a lookup: a
    -- join let a parallel plan build the grouping in every worker, three
    -- times the work; 0042).
    SELECT 'duplicate_id', t.user_wallet, t.id, format('transaction id %s names %s rows', t.id, d.n)
      FROM (SELECT x.id, count(*) AS n FROM pyxp.xp_transactions x
             WHERE NOT p_since_checkpoint GROUP BY x.id HAVING count(*) > 1) d
     CROSS JOIN LATERAL (SELECT t.user_wallet, t.id FROM pyxp.xp_transactions t WHERE t.id = d.id OFFSET 0) t
    UNION ALL
    -- (0029, a hostile test: a reversal pointed at another original, its
    -- amount and the balances made to match, was clean.)
    SELECT 'reversal_mismatch', t.user_wallet, t.id,
           format('reverses transaction %s, but its key is %s and its rule %s', t.reverses,
                  quote_literal(t.idempotency_key), coalesce(t.rule_id::text, 'none'))
      FROM pyxp.audited_rows(p_since_checkpoint) t
     WHERE t.reverses IS NOT NULL
       AND (t.idempotency_key <> 'reverse:' || t.reverses OR t.rule_id IS NOT NULL)
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
      -- (a probe of the claims' key per row, LATERAL ... LIMIT 1: as a join,
      -- the planner, which cannot tell how many rows are new, hashed every
      -- claim, 10M of them for 150,000 new rows: the checks since took
      -- 2.0 s, now 1.3 s; 0044)
      LEFT JOIN LATERAL (
             SELECT c.key_hash, c.transaction_id, c.created_at FROM pyxp.xp_award_claims c
              WHERE c.key_hash = encode(substr(sha256(convert_to(t.idempotency_key, 'UTF8')), 1, 16), 'hex')::uuid
              LIMIT 1) c ON true  -- pyxp.key_hash, spelled out (as above)
     WHERE p_since_checkpoint AND t.request_digest IS NOT NULL
       AND (c.key_hash IS NULL OR (c.transaction_id, c.created_at) <> (t.id, t.created_at))
    UNION ALL
    -- Each row against its rule, in one pass of the rows (one join of the
    -- rules; three passes up to 0041):
    --   rule_missing, rule_mismatch: the row's rule is gone, or is another
    --   action; a row without a rule is a reversal or a retroactive
    --   adjustment (pyxp.apply_rules_retroactively: its key and metadata
    --   name the ruleset applied, which says it was applied retroactively,
    --   and its key ends with its wallet; 0029, a hostile test: a 'GIFT' row
    --   of 5,000 XP, the balances made to match, was clean);
    --   amount_mismatch, inputs_mismatch: a generic award's row against
    --   what its call gave (0029, a hostile test: an amount raised, or a row
    --   moved to another wallet, with the balances made to match, was
    --   clean): its amount is its rule's formula on the params its metadata
    --   holds (its rule's inputs by name: pyxp.award), or a cut of it (a
    --   cap: xp_requested keeps the formula's, and what applied lies between
    --   0 and it; a balance floor the same for a penalty); and, for a rule
    --   without inputs, its inputs' digest is that of its action and wallet
    --   (params {}). A rule with inputs is left out of the digest's check: a
    --   ledger carried from an early revision holds digests of params the
    --   metadata does not spell alike (300.0 for 300: test_migrations'
    --   ledger of 0005).
    -- pyxp.inputs_digest spelled out and compared as bytes (as the claims'
    -- hashes above), on the text jsonb_build_object('action', ..., 'params',
    -- '{}', 'wallet', ...) prints, written out (building the jsonb cost twice
    -- as much: 5.6 s against 2.7 s at 1M rows in one process); the formula
    -- of a rule without inputs is its rounded constant (the function call
    -- cost 1.7 s against 0.7 s). A rule that cannot be evaluated on the
    -- row's metadata (an input edited to a string: pyxp.audited_rule_amount
    -- gives NaN, which no amount equals) is an amount_mismatch too; a row
    -- costs one jsonpath test more (0.2 us), and only a row whose inputs are
    -- not all numbers is read the slow way. So is a row whose input was
    -- removed from its metadata or edited to JSON null (the writer refuses
    -- both: PX018, PX004): the form gives NULL, which 0042 compared with <>
    -- and let through (helper-73). The WHERE is what every row is checked
    -- against; the findings of a row that fails it are spelled out after.
    SELECT f.check_name, g.user_wallet, g.id, f.detail
      FROM (SELECT t.id, t.user_wallet, t.transaction_type, t.xp_amount, t.xp_requested, t.rule_id,
                   t.request_digest, t.reverses, t.idempotency_key, t.metadata,
                   ru.rule_id AS rule_found, ru.action, ru.xp_coefficients AS coefficients, i.inputs,
                   t.request_digest IS NULL OR ru.xp_coefficients <> '{}'
                   OR substr(sha256(convert_to(i.inputs, 'UTF8')), 1, 8) = int8send(t.request_digest) AS digest_ok,
                   CASE WHEN ru.xp_coefficients = '{}' THEN round(ru.xp_constant)
                        WHEN NOT jsonb_path_exists(t.metadata, ru.odd_inputs)
                        THEN pyxp.rule_amount(ru.xp_constant, ru.xp_coefficients, t.metadata)
                        ELSE pyxp.audited_rule_amount(ru.xp_constant, ru.xp_coefficients, t.metadata) END AS formula,
                   -- a row without a rule that is a retroactive adjustment: its key and
                   -- metadata name one ruleset, which was applied retroactively, and its key
                   -- ends with its wallet (0046, helper-75: a forged adjustment naming a
                   -- ruleset never applied was clean; the applied ones are read once, an
                   -- InitPlan, and only for a row without a rule)
                   t.rule_id IS NULL AND t.reverses IS NULL AND t.transaction_type = 'RULES_ADJUSTMENT'
                   AND t.idempotency_key LIKE 'rules.adjustment:%'
                   AND t.metadata ->> 'ruleset_id' = split_part(t.idempotency_key, ':', 2)
                   AND right(t.idempotency_key, length(t.user_wallet) + 1) = ':' || t.user_wallet
                   AND t.metadata ->> 'ruleset_id' = ANY (ARRAY(SELECT r.ruleset_id::text FROM pyxp.rulesets r
                                                                 WHERE r.applied_retroactively_at IS NOT NULL))
                   AS adjustment
              FROM pyxp.audited_rows(p_since_checkpoint) t
              -- (each rule's test built once, by the rules' scan: on the nullable side of
              -- the join, the planner computes it there; OFFSET 0 did too, but took the
              -- join out of the parallel workers)
              LEFT JOIN (SELECT r.rule_id, r.action, r.xp_constant, r.xp_coefficients,
                                pyxp.odd_inputs_path(r.xp_coefficients) AS odd_inputs
                           FROM pyxp.rules r) ru ON ru.rule_id = t.rule_id
             CROSS JOIN LATERAL (
                    SELECT '{"action": ' || to_json(t.transaction_type)::text || ', "params": {}, "wallet": '
                           || to_json(t.user_wallet)::text || '}' AS inputs) i
            ) g
     CROSS JOIN LATERAL (
            SELECT CASE WHEN g.rule_found IS NULL THEN 'rule_missing' ELSE 'rule_mismatch' END,
                   CASE WHEN g.rule_found IS NULL THEN format('rule %s of this row does not exist', g.rule_id)
                        ELSE format('transaction_type %s but rule %s is %s', g.transaction_type, g.rule_found,
                                    g.action) END
             WHERE g.rule_id IS NOT NULL AND (g.rule_found IS NULL OR g.action <> g.transaction_type)
            UNION ALL
            SELECT 'rule_missing',
                   CASE WHEN g.transaction_type = 'RULES_ADJUSTMENT' AND g.idempotency_key LIKE 'rules.adjustment:%'
                        THEN format('RULES_ADJUSTMENT row of key %s and metadata ruleset_id %s: not an adjustment of '
                                    'this wallet by a ruleset applied retroactively', quote_literal(g.idempotency_key),
                                    coalesce(quote_literal(g.metadata ->> 'ruleset_id'), 'none'))
                        ELSE format('%s row without a rule, neither a reversal nor a retroactive adjustment',
                                    g.transaction_type) END
             WHERE g.rule_id IS NULL AND g.reverses IS NULL AND NOT g.adjustment
            UNION ALL
            SELECT CASE WHEN g.digest_ok THEN 'amount_mismatch' ELSE 'inputs_mismatch' END,
                   CASE WHEN NOT g.digest_ok
                        THEN format('its inputs'' digest %s is not that of %s', g.request_digest, g.inputs)
                        WHEN g.formula = 'NaN'
                        THEN format('%s XP (requested %s): rule %s''s form %s cannot be evaluated on its metadata %s',
                                    g.xp_amount, coalesce(g.xp_requested::text, 'none'), g.rule_id,
                                    g.coefficients, left(g.metadata::text, 200))
                        WHEN g.formula IS NULL
                        THEN format('%s XP (requested %s): an input of rule %s''s form %s is missing or null in its metadata %s',
                                    g.xp_amount, coalesce(g.xp_requested::text, 'none'), g.rule_id,
                                    g.coefficients, left(g.metadata::text, 200))
                        ELSE format('%s XP (requested %s) where rule %s gives %s', g.xp_amount,
                                    coalesce(g.xp_requested::text, 'none'), g.rule_id, g.formula) END
             WHERE g.rule_found IS NOT NULL
               AND (NOT g.digest_ok
                    OR coalesce(g.xp_requested, g.xp_amount) IS DISTINCT FROM g.formula
                    OR (g.xp_requested IS NOT NULL
                        AND NOT (g.xp_amount BETWEEN least(0, g.xp_requested) AND greatest(0, g.xp_requested))))
         ) f(check_name, detail)
     WHERE (g.rule_id IS NOT NULL AND (g.rule_found IS NULL OR g.action <> g.transaction_type))
        OR (g.rule_id IS NULL AND g.reverses IS NULL AND NOT g.adjustment)
        OR (g.rule_found IS NOT NULL
            AND (NOT g.digest_ok
                 OR coalesce(g.xp_requested, g.xp_amount) IS DISTINCT FROM g.formula
                 OR (g.xp_requested IS NOT NULL
                     AND NOT (g.xp_amount BETWEEN least(0, g.xp_requested) AND greatest(0, g.xp_requested)))))
    UNION ALL
    -- The full audit: the rows of flows and reversals against every request
    -- (an anti join); since a checkpoint, each new row probes its request's
    -- key (LATERAL ... LIMIT 1, as the claims above: a join hashed every
    -- request ever made, one per flow call, at every checkpoint; 0044).
    SELECT 'request_missing', t.user_wallet, t.id,
           format('no xp_requests row for key %s', quote_literal(t.idempotency_key))
      FROM pyxp.audited_rows(p_since_checkpoint) t
     WHERE NOT p_since_checkpoint AND t.request_digest IS NULL
       AND NOT EXISTS (SELECT FROM pyxp.xp_requests q WHERE q.key_hash = pyxp.key_hash(t.idempotency_key))
    UNION ALL
    SELECT 'request_missing', t.user_wallet, t.id,
           format('no xp_requests row for key %s', quote_literal(t.idempotency_key))
      FROM pyxp.audited_rows(p_since_checkpoint) t
      LEFT JOIN LATERAL (SELECT q.key_hash FROM pyxp.xp_requests q
                          WHERE q.key_hash = pyxp.key_hash(t.idempotency_key) LIMIT 1) q ON true
     WHERE p_since_checkpoint AND t.request_digest IS NULL AND q.key_hash IS NULL
$$;

-- Feed positions no transaction has reached (0046, helper-75): a row's
-- feed_xid, a balance's last_feed_xid (which the wallet's next rows are
-- raised to: sql/11_changes.sql) or a checkpoint's snapshot_xmin beyond
-- this cluster's next transaction id (the snapshot's xmax, or past the
-- reader's own id when it has written: its rows and balances are visible
-- to it, and its id may be at or above the xmax; in the ledger's ids:
-- pyxp.ledger_xid). The writer stores none: a row's group is
-- its writer's id or its wallet's previous row's, a checkpoint's the xmin of
-- the snapshot it read. An owner raising one holds a wallet's later rows
-- back from the change feed until the ids reach it (a raise of 100,000: they
-- were left out of pyxp.changes, audit() clean), or hides the rows since a
-- checkpoint from audit_since_checkpoint, which a record_audit_checkpoint
-- then sealed. Only on the ledger's own cluster: a subscriber holds its
-- publisher's ids, and a copy not adopted yet another cluster's
-- (sql/14_copies.sql). A copy that keeps this cluster's name (a physical
-- clone promoted to run on its own, rows replicated back after a failback)
-- is reported until adopted: its feed would hand out groups below its
-- rows' (pyxp db upgrade adopts it). The rows are one range of the feed index; the
-- balances a pass over them (the full audit only). A raise below the next
-- id is not seen (README "What the audit proves").
CREATE FUNCTION pyxp.feed_problems(p_since_checkpoint boolean)
RETURNS TABLE (check_name text, user_wallet text, transaction_id bigint, detail text)
LANGUAGE sql STABLE PARALLEL SAFE  -- (without it, every check of audit() ran in one process: 4.8 -> 8.4 s at 1M rows)
AS $$
    WITH next AS MATERIALIZED (
        SELECT pyxp.ledger_xid(greatest(pg_snapshot_xmax(pg_current_snapshot()),  -- (greatest skips a NULL: no id)
                                        (pg_current_xact_id_if_assigned()::text::numeric + 1)::text::xid8)) AS xid
         WHERE CASE WHEN coalesce(pyxp.ledger_cluster(), 0) = 0 THEN false
                    ELSE pyxp.ledger_cluster() = (pg_control_system()).system_identifier END
    )
    SELECT 'feed_mismatch', t.user_wallet, t.id,
           format('feed_xid %s, beyond the next transaction id %s (an edit, or a copy not adopted: '
                  'pyxp db upgrade adopts it)', t.feed_xid, n.xid)
      FROM next n JOIN pyxp.xp_transactions t ON t.feed_xid >= n.xid
    UNION ALL
    SELECT 'feed_mismatch', b.user_wallet, NULL,
           format('xp_balances.last_feed_xid %s, beyond the next transaction id %s (an edit, or a copy not '
                  'adopted: pyxp db upgrade adopts it)', b.last_feed_xid, n.xid)
      FROM next n JOIN pyxp.xp_balances b ON b.last_feed_xid >= n.xid
     WHERE NOT p_since_checkpoint
    UNION ALL
    SELECT 'feed_mismatch', NULL, NULL,
           format('audit checkpoint %s read from snapshot xmin %s, beyond the next transaction id %s (an edit, '
                  'or a copy not adopted: pyxp db upgrade adopts it)', k.checkpoint_id, k.snapshot_xmin, n.xid)
      FROM next n JOIN pyxp.xp_audit_checkpoints k ON k.snapshot_xmin > n.xid
$$;

-- Every inconsistency between the ledger, the balances and the rules, one
-- row each; no rows when healthy. What it proves: each wallet's rows are
-- numbered 1, 2, ... and each row's balance_after chains from the previous
-- one, each balance equals the sum of its wallet's rows and holds its last
-- wallet_seq, levels match the active curve, the audit checkpoints match the
-- ledger (pyxp.chain_problems); reversals mirror what they reverse, rows name
-- the action of an existing rule, a flow's or reversal's rows have their
-- request (pyxp.row_problems) and a request its rows or its kept inputs;
-- the rank buckets count the balances they hold (pyxp.rank_problems, one
-- of pyxp.unsliced_problems' checks); exactly one ruleset is active, no
-- ledger row lacks its balance, total_moderations counts the votes
-- recorded, the balances' period columns and the caps' usage match the ledger and no cap
-- is exceeded, a registration is granted exactly when its client email was
-- onboarded, identities stored before 0002 read the same today.
-- (jit off: compiling the plan cost more than running it, 100 ms vs 6 ms on a
-- small ledger; on 10M rows the scans dominate either way.
-- parallel_tuple_cost 0: the checks' scans and joins of the whole ledger
-- may run in parallel workers (the helpers are PARALLEL SAFE), but a check
-- whose filter compares two expressions is estimated to pass most rows, and
-- sending those through a Gather priced the parallel plan out; the checks
-- return only findings, none on a healthy ledger. At 10M rows the claims'
-- check takes 18 s with workers against 26-31 s without. The chain walk
-- has workers of its own: pyxp.chain_problems' slices, with the unsliced
-- checks as two more calls beside them.)
CREATE FUNCTION pyxp.audit()
RETURNS TABLE (check_name text, user_wallet text, transaction_id bigint, detail text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET jit = off
SET parallel_tuple_cost = 0
AS $$
    SELECT 'active_ruleset', NULL::text, NULL::bigint,
           format('%s active rulesets, expected 1', count(*))
      FROM pyxp.rulesets r WHERE r.is_active HAVING count(*) <> 1
    UNION ALL
    -- The activations' history (0040) against the rulesets: the active
    -- ruleset is the last one activated, each ruleset's activated_at is its
    -- last activation's, each activation replaced the ruleset of the one
    -- before it (a row taken out of the history breaks that chain) and not
    -- itself (activating the active ruleset adds nothing), and the rows 0040
    -- rebuilt come first (one added later would pass as rebuilt: a hostile
    -- test). activated_at is the clock's: it may step back, so it is not
    -- checked against the order.
    SELECT 'activation_history', NULL, NULL, x.problem
      FROM (SELECT format('ruleset %s is active, but the last activation (%s) is of ruleset %s',
                          r.ruleset_id, coalesce(l.activation_id::text, 'none'), coalesce(l.ruleset_id::text, 'none'))
                   AS problem
              FROM pyxp.rulesets r
              LEFT JOIN LATERAL (SELECT a.activation_id, a.ruleset_id FROM pyxp.ruleset_activations a
                                  ORDER BY a.activation_id DESC LIMIT 1) l ON true
             WHERE r.is_active AND l.ruleset_id IS DISTINCT FROM r.ruleset_id
            UNION ALL
            SELECT format('ruleset %s says it was activated at %s, its last activation (%s) at %s', r.ruleset_id,
                          coalesce(r.activated_at::text, 'never'), coalesce(l.activation_id::text, 'none'),
                          coalesce(l.activated_at::text, 'never'))
              FROM pyxp.rulesets r
              LEFT JOIN LATERAL (SELECT a.activation_id, a.activated_at FROM pyxp.ruleset_activations a
                                  WHERE a.ruleset_id = r.ruleset_id
                                  ORDER BY a.activation_id DESC LIMIT 1) l ON true
             WHERE r.activated_at IS DISTINCT FROM l.activated_at
            UNION ALL
            SELECT format('activation %s says it replaced ruleset %s, but the activation before it is of ruleset %s',
                          a.activation_id, coalesce(a.previous_ruleset_id::text, 'none'),
                          coalesce(a.before::text, 'none'))
              FROM (SELECT a.*, lag(a.ruleset_id) OVER (ORDER BY a.activation_id) AS before
                      FROM pyxp.ruleset_activations a) a
             WHERE NOT a.reconstructed AND a.previous_ruleset_id IS DISTINCT FROM a.before
            UNION ALL
            SELECT format('activation %s says it replaced ruleset %s by itself', a.activation_id, a.ruleset_id)
              FROM pyxp.ruleset_activations a
             WHERE a.previous_ruleset_id = a.ruleset_id
            UNION ALL
            SELECT format('activation %s is marked rebuilt by 0040, but activation %s before it is not',
                          a.activation_id, f.activation_id)
              FROM pyxp.ruleset_activations a
              JOIN LATERAL (SELECT min(f.activation_id) AS activation_id FROM pyxp.ruleset_activations f
                             WHERE NOT f.reconstructed) f ON f.activation_id < a.activation_id
             WHERE a.reconstructed) x
    UNION ALL
    -- Each ruleset's tables against its definition (pyxp.definition_*, what
    -- install_ruleset wrote from it): the amounts, caps, curve and zone the
    -- other checks compare the ledger with (0029); a ruleset an older
    -- install_ruleset wrote otherwise, against the digest of its tables at
    -- 0029 (pyxp.xp_rulesets_as_installed).
    SELECT 'ruleset_mismatch', NULL, NULL, format('ruleset %s v%s (id %s): %s', rs.name, rs.version, rs.ruleset_id, x.problem)
      FROM pyxp.rulesets rs
      LEFT JOIN pyxp.xp_rulesets_as_installed k ON k.ruleset_id = rs.ruleset_id
     CROSS JOIN LATERAL (
            SELECT 'its content_hash is not the sha256 of its definition' AS problem
             WHERE rs.content_hash <> encode(sha256(convert_to(rs.definition::text, 'UTF8')), 'hex')
            UNION ALL
            SELECT p.problem FROM pyxp.ruleset_table_problems(rs) p(problem) WHERE k.ruleset_id IS NULL
            UNION ALL
            SELECT 'its tables are not what they were at 0029 (installed by an older pyxp, they differ from its definition)'
             WHERE k.tables_digest <> pyxp.ruleset_tables_digest(rs.ruleset_id)
         ) x
    UNION ALL
    -- The chain walk and, beside it, the unsliced checks (ranks, checkpoints
    -- without a balance, wallets' forms, caps: pyxp.unsliced_problems).
    SELECT * FROM pyxp.chain_problems(false, true)
    UNION ALL
    SELECT * FROM pyxp.row_problems(false)
    UNION ALL
    SELECT * FROM pyxp.feed_problems(false)
    UNION ALL
    -- Rows of a wallet without a balance row: the walk starts from the
    -- balances, so it counts them; when every row was walked (the count
    -- matches), nothing more is read. The archived rows counted are the
    -- openings' (each checked against its positions by the walk), not the
    -- archives' own count, which nothing else checks (0029, a hostile test:
    -- an archive's count lowered by one hid a forged wallet's row).
    SELECT 'balance_mismatch', o.user_wallet, NULL, format('ledger sum %s but no xp_balances row', o.total)
      FROM (SELECT t.user_wallet, sum(t.xp_amount) AS total
              FROM pyxp.xp_transactions t
             WHERE NOT EXISTS (SELECT FROM pyxp.xp_balances b WHERE b.user_wallet = t.user_wallet)
             GROUP BY t.user_wallet) o
     WHERE (SELECT count(*) FROM pyxp.xp_transactions)
           + (SELECT coalesce(sum(o.archived_rows), 0) FROM pyxp.xp_wallet_openings o)
           <> (SELECT coalesce(sum(b.last_wallet_seq), 0) FROM pyxp.xp_balances b)
    UNION ALL
    SELECT 'opening_mismatch', NULL, NULL,
           format('the archives count %s rows archived, the openings %s', a.archived, o.archived)
      FROM (SELECT coalesce(sum(a.rows_archived), 0) AS archived FROM pyxp.xp_ledger_archives a) a,
           (SELECT coalesce(sum(o.archived_rows), 0) AS archived FROM pyxp.xp_wallet_openings o) o
     WHERE a.archived <> o.archived
    UNION ALL
    SELECT 'moderation_count', b.user_wallet, NULL,
           format('total_moderations = %s, votes recorded = %s', b.total_moderations, coalesce(v.votes, 0))
      FROM pyxp.xp_balances b
      -- A vote is a request of a vote key: its rows (all to the voter) hold
      -- the key, or (a vote no rule awards) the request keeps it.
      FULL JOIN (SELECT x.user_wallet, count(*) AS votes
                   FROM (SELECT t.user_wallet, t.idempotency_key
                           FROM pyxp.xp_transactions t
                          WHERE t.request_digest IS NULL
                            AND t.idempotency_key ~ '^(campaign|completion)[.]vote(/[0-9]+)?:'
                         UNION
                         SELECT q.inputs ->> 'wallet', q.idempotency_key
                           FROM pyxp.xp_requests q
                          WHERE q.idempotency_key ~ '^(campaign|completion)[.]vote(/[0-9]+)?:') x
                  GROUP BY 1) v ON v.user_wallet = b.user_wallet
     WHERE coalesce(b.total_moderations, 0) <> coalesce(v.votes, 0)
    UNION ALL
    -- The campaigns' registry against the ledger: a campaign's creation and
    -- approval rows are its creator's, and its creation rows name its type
    -- (0029, a hostile test: the registry's creator or type edited, which
    -- later approvals, votes and completions read, was clean).
    SELECT 'campaign_mismatch', t.user_wallet, t.id,
           format('campaign %s is %s''s (%s) in the registry, but %s row %s is %s''s (%s)', c.campaign_id,
                  c.creator_wallet, c.campaign_type, split_part(t.idempotency_key, ':', 1), t.id, t.user_wallet,
                  coalesce(t.metadata ->> 'campaign_type', 'no type'))
      FROM pyxp.xp_transactions t
      JOIN pyxp.campaigns c ON c.campaign_id = t.campaign_id
     WHERE t.request_digest IS NULL AND t.reverses IS NULL
       AND t.idempotency_key IN ('campaign.created:' || c.campaign_id, 'campaign.approved:' || c.campaign_id)
       AND ((c.creator_wallet IS NOT NULL AND t.user_wallet <> c.creator_wallet)
            OR (t.idempotency_key LIKE 'campaign.created:%' AND t.metadata ->> 'campaign_type' <> c.campaign_type))
    UNION ALL
    -- A request that keeps neither its key nor its inputs has them in its
    -- ledger rows only (pyxp.recorded_request): without a row, a retry's
    -- inputs could not be shown or a vote counted.
    SELECT 'request_rows_missing', NULL, NULL,
           format('request %s (claimed %s) keeps no key and no ledger row holds it', q.key_hash, q.created_at)
      FROM pyxp.xp_requests q
     WHERE q.idempotency_key IS NULL
       AND NOT EXISTS (SELECT FROM pyxp.xp_transactions t
                        WHERE pyxp.key_hash(t.idempotency_key) = q.key_hash AND t.request_digest IS NULL)
    UNION ALL
    -- A request that keeps its key and inputs (its call wrote no row whose
    -- inputs give them back, or its rows were archived) is what later calls
    -- read of that call: a completion's owner, an onboarding's wallet. Its
    -- key is its hash's and its inputs its digest's (0046, helper-75: the
    -- wallet of an archived submission edited, the completer's outcome was
    -- refused and another wallet paid, audit() clean).
    SELECT CASE WHEN k.hash <> q.key_hash THEN 'claim_mismatch' ELSE 'inputs_mismatch' END,
           q.inputs ->> 'wallet', NULL,
           CASE WHEN k.hash <> q.key_hash
                THEN format('request %s keeps key %s, whose hash is %s', q.key_hash,
                            quote_literal(q.idempotency_key), k.hash)
                ELSE format('request %s (key %s) keeps inputs %s, whose digest is not its %s', q.key_hash,
                            quote_literal(q.idempotency_key), left(q.inputs::text, 300), q.inputs_digest) END
      FROM pyxp.xp_requests q
     CROSS JOIN LATERAL (SELECT pyxp.key_hash(q.idempotency_key) AS hash) k
     WHERE q.idempotency_key IS NOT NULL
       AND (k.hash <> q.key_hash OR pyxp.request_inputs_digest(q.inputs) <> q.inputs_digest)
    UNION ALL
    SELECT 'registration_grant', a.client_wallet, NULL,
           format('registration %s of %s is %s', a.id, a.client_email,
                  CASE WHEN a.xp_granted THEN 'granted without an onboarding of that email'
                       ELSE 'pending although that email was onboarded' END)
      FROM pyxp.agency_b2c_clients a
     CROSS JOIN LATERAL (SELECT EXISTS (
                SELECT FROM pyxp.xp_requests q
                 WHERE q.key_hash IN (pyxp.key_hash('client.onboarded:' || a.client_email),
                                      -- stored as read before 0028 or 0045, onboarded since (pyxp.email_before_0028)
                                      pyxp.key_hash('client.onboarded:'
                                                    || pyxp.folded_email(pyxp.trimmed_text(a.client_email, true)))))
                AS onboarded) q
     WHERE a.xp_granted <> q.onboarded
    UNION ALL
    -- Client emails stored before 0002 that today's checks would read
    -- otherwise (the wallets: pyxp.unsliced_problems).
    SELECT 'identity_not_normalised', a.client_wallet, NULL,
           format('client email %s of registration %s is read %s since 0002', quote_literal(a.client_email), a.id,
                  coalesce(quote_literal(f.form), 'as refused'))
      FROM pyxp.agency_b2c_clients a
     CROSS JOIN LATERAL (SELECT CASE WHEN pyxp.invisible_character(x.t) IS NULL THEN x.t END AS form
                           FROM (SELECT pyxp.folded_email(pyxp.trimmed_text(a.client_email, true)) AS t) x) f
     WHERE f.form IS DISTINCT FROM a.client_email
       -- or as read before 0028 (lower() in the database's collation), or
       -- a form 0028 or 0045 recorded (pyxp.email_before_0028: the flows
       -- find the registration by it)
       AND (f.form IS NULL OR lower(pyxp.trimmed_text(a.client_email, true)) IS DISTINCT FROM a.client_email)
       AND NOT EXISTS (SELECT FROM pyxp.xp_email_forms_before_0028 e
                        WHERE e.client_email = f.form AND e.stored_form = a.client_email)
    UNION ALL
    -- No finding; 40001 when the ledger was read with a snapshot older than
    -- an archive's commit (its rows would have been reported missing).
    SELECT NULL, NULL, NULL, NULL WHERE NOT pyxp.ledger_unmoved()
    ORDER BY 1, 2, 3
$$;

-- Public: the same findings as pyxp.audit, for what was written since the
-- last checkpoint (pyxp.record_audit_checkpoint): the chain of every wallet
-- with new rows from its checkpoint's position (its balance = the
-- checkpoint's balance + the rows since), its level, and the new rows'
-- reversals, rules and requests. Reads in time proportional to the new rows
-- (and their wallets); runs on a hot standby. Not covered: what only the
-- full audit reads (period columns, caps' usage, vote counts,
-- registrations, a balance changed without a ledger row).
-- (Before the first checkpoint, what was written since is everything: the
-- checks run in full mode. plan_cache_mode: each call is planned for its mode.)
CREATE FUNCTION pyxp.audit_since_checkpoint()
RETURNS TABLE (check_name text, user_wallet text, transaction_id bigint, detail text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET jit = off
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    v_since boolean := pyxp.last_checkpoint_xmin() IS NOT NULL;
BEGIN
    RETURN QUERY
        SELECT 'active_ruleset', NULL::text, NULL::bigint,
               format('%s active rulesets, expected 1', count(*))
          FROM pyxp.rulesets r WHERE r.is_active HAVING count(*) <> 1
        UNION ALL
        -- Since a checkpoint, the new rows' single-row checks run beside the
        -- walk (pyxp.unsliced_problems); before the first, after it.
        SELECT * FROM pyxp.chain_problems(v_since, v_since)
        UNION ALL
        SELECT * FROM pyxp.row_problems(false) WHERE NOT v_since
        UNION ALL
        SELECT * FROM pyxp.feed_problems(v_since)
        ORDER BY 1, 2, 3;
    PERFORM pyxp.ledger_unmoved();  -- (40001 after a read older than an archive)
END
$$;

-- Public: verifies what was written since the last checkpoint (as
-- pyxp.audit_since_checkpoint) and, when that is clean, records a new
-- checkpoint: each wallet verified gets its position (last wallet_seq and
-- balance). One statement, so the verification and the positions it records
-- read one snapshot; rows committed meanwhile are the next checkpoint's.
-- Refused with PX028 (nothing recorded) when anything is inconsistent: run
-- pyxp.audit_since_checkpoint() to list it. Checkpoints are taken one at a
-- time (EXCLUSIVE lock on xp_audit_checkpoints: awards and readers do not
-- wait for it).
CREATE FUNCTION pyxp.record_audit_checkpoint(OUT checkpoint_id bigint, OUT wallets_verified bigint,
                                             OUT rows_verified bigint, OUT created_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET jit = off
SET plan_cache_mode = force_custom_plan
AS $$
#variable_conflict use_column
DECLARE
    v_problems bigint;
    v_first text;  -- the first finding, for the error's detail
    v_since boolean;
BEGIN
    PERFORM pyxp.follow_timeline();  -- (a failover or a point-in-time recovery: the ids move past the history left, 0033)
    PERFORM pyxp.require_ledger_cluster();  -- (PX032: its snapshot's xmin would be another cluster's, 0032)
    LOCK TABLE pyxp.xp_audit_checkpoints IN EXCLUSIVE MODE;
    v_since := pyxp.last_checkpoint_xmin() IS NOT NULL;
    WITH problems AS MATERIALIZED (
        -- one walk, not pyxp.chain_problems' slices: an INSERT runs no
        -- parallel workers, and each slice finds its wallets again (0044:
        -- 4.52 s -> 4.29 s for 100,000 new rows at the default size)
        SELECT c.check_name, c.user_wallet, c.detail FROM pyxp.chain_problems_between(v_since, NULL, NULL) c
        UNION ALL
        SELECT r.check_name, r.user_wallet, r.detail FROM pyxp.row_problems(v_since) r
        UNION ALL
        SELECT f.check_name, f.user_wallet, f.detail FROM pyxp.feed_problems(v_since) f
    ), verified AS MATERIALIZED (
        SELECT w.user_wallet, w.last_wallet_seq, w.total_xp, w.from_seq
          FROM pyxp.audited_wallets(v_since) w
         WHERE w.last_wallet_seq > 0 AND w.last_wallet_seq > w.from_seq
    ), header AS (
        INSERT INTO pyxp.xp_audit_checkpoints AS k (snapshot_xmin, wallets_verified, rows_verified)
        SELECT pyxp.ledger_xid(pg_snapshot_xmin(pg_current_snapshot())), count(*),
               coalesce(sum(v.last_wallet_seq - v.from_seq), 0)
          FROM verified v
        HAVING NOT EXISTS (SELECT FROM problems)
        RETURNING k.checkpoint_id, k.wallets_verified, k.rows_verified, k.created_at
    ), positions AS (
        INSERT INTO pyxp.xp_wallet_checkpoints AS c (user_wallet, wallet_seq, total_xp, checkpoint_id)
        SELECT v.user_wallet, v.last_wallet_seq, v.total_xp, h.checkpoint_id
          FROM verified v CROSS JOIN header h
        ON CONFLICT (user_wallet) DO UPDATE
           SET wallet_seq = excluded.wallet_seq, total_xp = excluded.total_xp, checkpoint_id = excluded.checkpoint_id
    )
    SELECT h.checkpoint_id, h.wallets_verified, h.rows_verified, h.created_at,
           (SELECT count(*) FROM problems),
           (SELECT format('%s %s: %s', p.check_name, coalesce(p.user_wallet, ''), p.detail)
              FROM problems p ORDER BY p.check_name, p.user_wallet LIMIT 1)
      INTO checkpoint_id, wallets_verified, rows_verified, created_at, v_problems, v_first
      FROM (SELECT 1) one LEFT JOIN header h ON true;
    PERFORM pyxp.ledger_unmoved();  -- (40001 after a read older than an archive: nothing recorded)
    IF v_problems > 0 THEN
        RAISE EXCEPTION 'the ledger since the last checkpoint has % inconsistencies; no checkpoint recorded',
                        v_problems
            USING ERRCODE = 'PX028',
                  DETAIL = 'first: ' || v_first,
                  HINT = 'SELECT * FROM pyxp.audit_since_checkpoint() lists them';
    END IF;
END
$$;
