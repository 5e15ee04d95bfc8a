-- Periods and caps (SPEC 12).
--
-- A period is a calendar period in the active ruleset's timezone
-- (rulesets.timezone, IANA): day, ISO week (from Monday), month, year; 'all'
-- is the whole history. date_trunc(unit, at, zone) gives a period's start as
-- an instant, so a day across a DST change lasts 23 or 25 hours.
-- A ledger row counts in the period of its created_at; a reversal in the
-- period of the row it reverses ("effective time"), so a reversed award
-- disappears from the board it was earned on.
--
-- How the period totals are kept: each balance holds its latest period of
-- each kind and its XP there (xp_balances.<kind>_start, <kind>_xp, kept by
-- the writer in the UPDATE it makes anyway, so no extra statement or row per
-- award), indexed in board order. That answers the boards of the current
-- periods from an index (top 100 = 100 index entries). A board of a past
-- period, or of a period just ended while some wallet already moved past it,
-- is computed from the ledger (BRIN on created_at, plus the reversals).
--
-- Caps: a capped gain is cut to what is left of the wallet's allowance in
-- the period containing the award (pyxp.append_rows, step 2, under the
-- wallet's balance row lock); xp_cap_usage keeps what each allowance used
-- (pyxp.append_rows, step 4; a reversal frees: pyxp.freed_allowances). An
-- activation that moves an allowance's periods (another zone, another per)
-- counts what its current period already used (pyxp.seed_cap_usage).
-- The kinds of periods, in the order every array of them follows
-- (xp_balances' columns: day, week, month, year).
CREATE FUNCTION pyxp.period_kinds()
RETURNS TABLE (i integer, period text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT * FROM (VALUES (1, 'day'), (2, 'week'), (3, 'month'), (4, 'year')) k(i, period) $$;

-- Each balance on the board of its latest period of each kind: its period,
-- the period's start, its XP there. Inlined into its callers (a filter on
-- ranked reaches xp_balances_unranked).
CREATE FUNCTION pyxp.period_board_entries()
RETURNS TABLE (period text, period_start timestamptz, period_xp bigint, user_wallet text, ranked boolean)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT k.period, (ARRAY[b.day_start, b.week_start, b.month_start, b.year_start])[k.i],
           (ARRAY[b.day_xp, b.week_xp, b.month_xp, b.year_xp])[k.i], b.user_wallet, b.ranked
      FROM pyxp.xp_balances b CROSS JOIN pyxp.period_kinds() k
     WHERE (ARRAY[b.day_start, b.week_start, b.month_start, b.year_start])[k.i] IS NOT NULL
$$;

-- The bucket of a period board holding (period_xp, wallet): the value's
-- last bucket start at or before the wallet (none: the value's first
-- bucket, ''). One probe of xp_period_rank_counts' primary key; inlined
-- into its callers (a LEFT JOIN LATERAL: no row means '').
CREATE FUNCTION pyxp.period_bucket_of(p_period text, p_start timestamptz, p_xp bigint, p_wallet text)
RETURNS TABLE (wallet_start text)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT c.wallet_start FROM pyxp.xp_period_rank_counts c
     WHERE c.period = p_period AND c.period_start = p_start AND c.period_xp = p_xp
       AND c.wallet_start <= p_wallet COLLATE "C" AND c.slot = 0
     ORDER BY c.wallet_start DESC
     LIMIT 1
$$;

-- The balances of a period board (the latest period of a kind, starting at
-- p_start) holding p_xp there, from wallet p_from up to p_to (excluded;
-- NULL: to the end of that value), in the board's wallet order (byte by
-- byte). One index-only range of that kind's board index: the branches of
-- the other kinds, and of the other end, are pruned at run time (one-time
-- filters). What pyxp.rank_problems counts a cut value's buckets with;
-- inlined into it (SQL, STABLE, one SELECT).
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

-- Every (ranked) balance counted on its latest periods' boards, each value
-- one bucket (''): what the counts are after a rebuild, before the
-- rebalance cuts the values many wallets share.
CREATE FUNCTION pyxp.period_counts_from_balances()
RETURNS TABLE (period text, period_start timestamptz, period_xp bigint, wallet_start text, slot integer,
               wallets bigint)
LANGUAGE sql STABLE
AS $$
    SELECT e.period, e.period_start, e.period_xp, '', 0, count(*)
      FROM pyxp.period_board_entries() e WHERE e.ranked
     GROUP BY e.period, e.period_start, e.period_xp
$$;

-- A period name in any case, normalised, or PX026. Its size is checked
-- before lower() copies it.
CREATE FUNCTION pyxp.checked_period(p_period text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    IF p_period IS NOT NULL AND octet_length(p_period) <= 16
       AND lower(p_period) IN ('all', 'day', 'week', 'month', 'year') THEN
        RETURN lower(p_period);
    END IF;
    RAISE EXCEPTION 'invalid period %', coalesce(quote_literal(left(p_period, 32)), 'NULL')
        USING ERRCODE = 'PX026', HINT = 'period is all, day, week, month or year (any case)';
END
$$;

-- The period of kind p_kind (day, week, month, year) containing p_at in
-- zone p_timezone: period_start, its key (the <kind>_start the writer
-- stores), and period_end, the next period's. Its instants are
-- [period_first_instant(period_start), period_first_instant(period_end)):
-- the same except where the clocks go back at local midnight (below).
-- PX026 for a NULL or infinite p_at.
CREATE FUNCTION pyxp.period_bounds(p_kind text, p_at timestamptz, p_timezone text,
                                   OUT period_start timestamptz, OUT period_end timestamptz)
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
BEGIN
    IF p_at IS NULL OR NOT isfinite(p_at) THEN
        RAISE EXCEPTION 'invalid at: %', coalesce(p_at::text, 'NULL')
            USING ERRCODE = 'PX026', HINT = 'at is a finite timestamp with time zone (default now())';
    END IF;
    period_start := date_trunc(p_kind, p_at, p_timezone);
    -- The next period starts one calendar unit later in local time (23 or
    -- 25 hours for a day across DST); date_trunc again lands on the start of
    -- that period even where a local midnight does not exist.
    period_end := date_trunc(p_kind, (period_start AT TIME ZONE p_timezone + ('1 ' || p_kind)::interval)
                                     AT TIME ZONE p_timezone, p_timezone);
    -- The readers then scan from the period's first instant, which looks a
    -- day before its start (pyxp.period_first_instant): computed here too,
    -- so that a period at PostgreSQL's first timestamps is refused like one
    -- at its last (a bare 22008 for a week of 4714 BC: a hostile test, 0036).
    PERFORM pyxp.period_first_instant(p_kind, period_start, p_timezone);
EXCEPTION WHEN datetime_field_overflow THEN  -- a period reaching past PostgreSQL's range of timestamps
    IF p_at < '0001-01-01 00:00:00+00'::timestamptz THEN
        RAISE EXCEPTION 'invalid at: %: its % begins before the first timestamp', p_at, p_kind
            USING ERRCODE = 'PX026', HINT = 'at is a timestamp after the year 4713 BC';
    END IF;
    RAISE EXCEPTION 'invalid at: %: its % ends beyond the last timestamp', p_at, p_kind
        USING ERRCODE = 'PX026', HINT = 'at is a timestamp before the year 294276';
END
$$;

-- The first instant of the period of kind p_kind (day, week, month, year)
-- holding p_at in zone p_zone: the earliest instant whose local time is the
-- period's first local time. A period's key (the <kind>_start the writer
-- stores, period_bounds' period_start) is date_trunc(kind, at, zone), the
-- same for every instant of the period, and its first instant except where
-- the clocks go back at local midnight (Atlantic/Azores, America/Havana,
-- Asia/Gaza, ... in autumn): that midnight happens twice, date_trunc gives
-- the second, and the hour before it is the period's first. The readers of a
-- past board scan [first instant, first instant of the next period), so that
-- this hour is on its own day's board, not the day before's too (found by a
-- hostile test: 0024). The earlier midnight is the local start less the
-- offset in force before the change (a day earlier: changes are months
-- apart); where a local start does not exist (clocks going forward at
-- midnight), date_trunc's instant is the change itself, the first instant.
-- One expression, so that the planner inlines it (no STRICT, no FROM;
-- STABLE, as timestamptz arithmetic is).
CREATE FUNCTION pyxp.period_first_instant(p_kind text, p_at timestamptz, p_zone text)
RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN timezone('UTC', date_trunc(p_kind, timezone(p_zone, p_at))
                                     - (timezone(p_zone, timezone(p_zone, date_trunc(p_kind, timezone(p_zone, p_at)))
                                                         - interval '24 hours')
                                        - timezone('UTC', timezone(p_zone, date_trunc(p_kind, timezone(p_zone, p_at)))
                                                          - interval '24 hours')))
                     < timezone(p_zone, date_trunc(p_kind, timezone(p_zone, p_at)))
                 AND timezone(p_zone, timezone('UTC', date_trunc(p_kind, timezone(p_zone, p_at))
                                                    - (timezone(p_zone, timezone(p_zone, date_trunc(p_kind, timezone(p_zone, p_at)))
                                                                        - interval '24 hours')
                                                       - timezone('UTC', timezone(p_zone, date_trunc(p_kind, timezone(p_zone, p_at)))
                                                                         - interval '24 hours'))))
                     = date_trunc(p_kind, timezone(p_zone, p_at))
                THEN timezone('UTC', date_trunc(p_kind, timezone(p_zone, p_at))
                                     - (timezone(p_zone, timezone(p_zone, date_trunc(p_kind, timezone(p_zone, p_at)))
                                                         - interval '24 hours')
                                        - timezone('UTC', timezone(p_zone, date_trunc(p_kind, timezone(p_zone, p_at)))
                                                          - interval '24 hours')))
                ELSE timezone(p_zone, date_trunc(p_kind, timezone(p_zone, p_at))) END
$$;

-- The zone periods are counted in: the active ruleset's (PX020 if none).
CREATE FUNCTION pyxp.active_timezone()
RETURNS text
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_zone text;
BEGIN
    SELECT r.timezone INTO v_zone FROM pyxp.rulesets r WHERE r.is_active;
    IF v_zone IS NULL THEN
        PERFORM pyxp.active_ruleset_id();  -- PX020
    END IF;
    RETURN v_zone;
END
$$;

-- The created_at of the row a reversal reverses: in the ledger, or (a row
-- archived since, sql/13_retention.sql) in xp_archived_originals. A
-- reversal counts in that row's period.
CREATE FUNCTION pyxp.reversed_row_at(p_reverses bigint)
RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT coalesce((SELECT o.created_at FROM pyxp.xp_transactions o WHERE o.id = p_reverses LIMIT 1),
                    (SELECT a.created_at FROM pyxp.xp_archived_originals a WHERE a.transaction_id = p_reverses))
$$;

-- Every wallet with a row in [p_start, p_end) and its XP there, from the
-- ledger: rows created in the range that reverse nothing, and reversals of
-- rows created in it (wherever the reversal falls). Exact at any time; reads
-- the range's rows (BRIN xp_transactions_created) and every reversal.
CREATE FUNCTION pyxp.ledger_period_totals(p_start timestamptz, p_end timestamptz)
RETURNS TABLE (user_wallet text, period_xp bigint)
LANGUAGE sql STABLE
AS $$
    SELECT x.user_wallet, sum(x.xp_amount)::bigint
      FROM (SELECT t.user_wallet, t.xp_amount
              FROM pyxp.xp_transactions t
             WHERE t.created_at >= p_start AND t.created_at < p_end AND t.reverses IS NULL
            UNION ALL
            SELECT t.user_wallet, t.xp_amount
              FROM pyxp.xp_transactions t
              JOIN pyxp.xp_transactions o ON o.id = t.reverses
             WHERE t.reverses IS NOT NULL AND o.created_at >= p_start AND o.created_at < p_end) x
     WHERE pyxp.ledger_unmoved()  -- (40001 after a read older than an archive)
     GROUP BY x.user_wallet
$$;

-- Whether the board of the p_kind period starting at p_start is exactly the
-- balances whose <kind>_start = p_start (see xp_balances): true unless some
-- balance already moved past it (then it may hold rows of p_start too).
-- One index probe.
CREATE FUNCTION pyxp.period_cached(p_kind text, p_start timestamptz)
RETURNS boolean
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_past boolean;
BEGIN
    EXECUTE format('SELECT EXISTS (SELECT FROM pyxp.xp_balances b WHERE b.%I > $1)', p_kind || '_start')
       INTO v_past USING p_start;
    RETURN NOT v_past;
END
$$;

-- Public: the leaderboard. period 'all' (default): balances by total_xp
-- desc, ties by wallet byte by byte, period_xp = total_xp (index
-- xp_balances_leaderboard; a deep page starts from the rank bucket holding
-- its first position, sql/07_ranks.sql, instead of stepping over every
-- balance before it).
-- A period (day, week, month, year, any case): the wallets with a row in the
-- period containing `at` (default now()), by period_xp desc, ties by wallet,
-- with their current total and level. max_rows: 1..1000; offset_rows pages
-- on (rank = offset_rows + position).
CREATE FUNCTION pyxp.leaderboard(max_rows integer DEFAULT 100, offset_rows integer DEFAULT 0,
                                 period text DEFAULT 'all', at timestamptz DEFAULT now())
RETURNS TABLE (rank bigint, user_wallet text, total_xp bigint, current_level bigint, period_xp bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$
DECLARE
    v_max integer := pyxp.checked_row_count('max_rows', leaderboard.max_rows);
    v_period text := pyxp.checked_period(leaderboard.period);
    v_bounds record;
    v_zone text;
    v_bucket record;  -- a deep page's rank bucket: its start, the balances before it
    v_reach bigint;   -- how far into the board from that start the page reaches
BEGIN
    IF leaderboard.offset_rows IS NULL OR leaderboard.offset_rows < 0 THEN
        RAISE EXCEPTION 'invalid offset_rows: %', coalesce(leaderboard.offset_rows::text, 'NULL')
            USING ERRCODE = 'PX023', HINT = 'offset_rows is 0 or more';
    END IF;
    IF v_period = 'all' THEN
        IF leaderboard.offset_rows < 4096 THEN
            RETURN QUERY
                SELECT leaderboard.offset_rows + row_number() OVER (ORDER BY b.total_xp DESC, b.user_wallet COLLATE "C"),
                       b.user_wallet, b.total_xp, b.current_level, b.total_xp
                  FROM (SELECT x.user_wallet, x.total_xp, x.current_level
                          FROM pyxp.xp_balances x
                         ORDER BY x.total_xp DESC, x.user_wallet COLLATE "C"
                         OFFSET leaderboard.offset_rows LIMIT v_max) b
                 ORDER BY 1;
            RETURN;
        END IF;
        -- A deep page: from the start of the bucket holding position
        -- offset_rows + 1, stepping over only that bucket's balances before it.
        SELECT e.neg_xp, e.wallet, e.before_ INTO v_bucket
          FROM (SELECT e.neg_xp, e.wallet,
                       coalesce(sum(e.wallets) OVER (ORDER BY e.neg_xp, e.wallet COLLATE "C"
                                                     ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before_
                  FROM pyxp.rank_buckets() e) e
         WHERE e.before_ <= leaderboard.offset_rows
         ORDER BY e.neg_xp DESC, e.wallet COLLATE "C" DESC
         LIMIT 1;
        -- Two index ranges from the bucket's start, each cut to what the
        -- page can reach (the rest of its tie group, then the lower totals),
        -- so the sort above them holds about bucket size + max_rows rows.
        v_reach := leaderboard.offset_rows - v_bucket.before_ + v_max;
        RETURN QUERY
            SELECT leaderboard.offset_rows + row_number() OVER (ORDER BY b.total_xp DESC, b.user_wallet COLLATE "C"),
                   b.user_wallet, b.total_xp, b.current_level, b.total_xp
              FROM (SELECT u.* FROM ((SELECT x.user_wallet, x.total_xp, x.current_level FROM pyxp.xp_balances x
                                       WHERE x.total_xp = -v_bucket.neg_xp AND x.user_wallet COLLATE "C" >= v_bucket.wallet
                                       ORDER BY x.user_wallet COLLATE "C" LIMIT v_reach)
                                     UNION ALL
                                     (SELECT x.user_wallet, x.total_xp, x.current_level FROM pyxp.xp_balances x
                                       WHERE x.total_xp < -v_bucket.neg_xp
                                       ORDER BY x.total_xp DESC, x.user_wallet COLLATE "C" LIMIT v_reach)) u
                     ORDER BY u.total_xp DESC, u.user_wallet COLLATE "C"
                    OFFSET leaderboard.offset_rows - v_bucket.before_ LIMIT v_max) b
             ORDER BY 1;
        RETURN;
    END IF;
    v_zone := pyxp.active_timezone();
    v_bounds := pyxp.period_bounds(v_period, leaderboard.at, v_zone);
    IF pyxp.period_cached(v_period, v_bounds.period_start) THEN
        RETURN QUERY EXECUTE format(
            'SELECT $1 + row_number() OVER (ORDER BY b.xp DESC, b.user_wallet COLLATE "C"), b.user_wallet, b.total_xp,
                    b.current_level, b.xp
               FROM (SELECT x.user_wallet, x.total_xp, x.current_level, x.%2$I AS xp
                       FROM pyxp.xp_balances x
                      WHERE x.%1$I = $2
                      ORDER BY x.%2$I DESC, x.user_wallet COLLATE "C"
                     OFFSET $1 LIMIT $3) b
              ORDER BY 1', v_period || '_start', v_period || '_xp')
            USING leaderboard.offset_rows::bigint, v_bounds.period_start, v_max;
    ELSE
        PERFORM pyxp.require_unarchived_period(v_period, v_bounds.period_start);  -- a past period: from the ledger
        RETURN QUERY
            SELECT leaderboard.offset_rows + row_number() OVER (ORDER BY p.period_xp DESC, p.user_wallet COLLATE "C"),
                   p.user_wallet, x.total_xp, x.current_level, p.period_xp
              FROM (SELECT t.user_wallet, t.period_xp
                      FROM pyxp.ledger_period_totals(pyxp.period_first_instant(v_period, v_bounds.period_start, v_zone),
                                                     pyxp.period_first_instant(v_period, v_bounds.period_end, v_zone)) t
                     ORDER BY t.period_xp DESC, t.user_wallet COLLATE "C"
                    OFFSET leaderboard.offset_rows LIMIT v_max) p
              JOIN pyxp.xp_balances x ON x.user_wallet = p.user_wallet
             ORDER BY 1;
    END IF;
END
$$;

-- Public: a wallet's rank on leaderboard(period => period, at => at), NULL
-- when it is not on that board. 'all': the rank buckets (pyxp.board_rank);
-- a current period: the wallets counted above it in xp_period_rank_counts
-- plus its tie group before it (0014); a past period: from the ledger.
CREATE FUNCTION pyxp.wallet_rank(wallet text, period text DEFAULT 'all', at timestamptz DEFAULT now())
RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$
DECLARE
    v_wallet text := pyxp.checked_wallet(wallet_rank.wallet);
    v_period text := pyxp.checked_period(wallet_rank.period);
    v_bounds record;
    v_zone text;
    v_total bigint;
    v_start timestamptz;
    v_rank bigint;
BEGIN
    IF v_period = 'all' THEN
        SELECT b.total_xp INTO v_total FROM pyxp.xp_balances b WHERE b.user_wallet = v_wallet;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
        SELECT r.rank INTO v_rank FROM pyxp.board_rank(v_total, v_wallet) r;  -- the rank buckets
        RETURN v_rank;
    END IF;
    v_zone := pyxp.active_timezone();
    v_bounds := pyxp.period_bounds(v_period, wallet_rank.at, v_zone);
    IF pyxp.period_cached(v_period, v_bounds.period_start) THEN
        EXECUTE format('SELECT b.%1$I, b.%2$I FROM pyxp.xp_balances b WHERE b.user_wallet = $1',
                       v_period || '_start', v_period || '_xp')
           INTO v_start, v_total USING v_wallet;
        IF v_start IS DISTINCT FROM v_bounds.period_start THEN
            RETURN NULL;
        END IF;
        -- The wallets counted at a higher XP on that board, or in an earlier
        -- bucket of the wallet's XP (xp_period_rank_counts), then the
        -- balances of its bucket before it.
        EXECUTE format('SELECT 1 + coalesce((SELECT sum(c.wallets) FROM pyxp.xp_period_rank_counts c
                                              WHERE c.period = $4 AND c.period_start = $1 AND c.period_xp >= $2
                                                AND (c.period_xp > $2 OR c.wallet_start < k.wallet_start)), 0)::bigint
                                 + (SELECT count(*) FROM pyxp.xp_balances b
                                     WHERE b.%1$I = $1 AND b.%2$I = $2 AND b.user_wallet COLLATE "C" >= k.wallet_start
                                       AND b.user_wallet COLLATE "C" < $3)
                            FROM (SELECT coalesce((SELECT q.wallet_start
                                                     FROM pyxp.period_bucket_of($4, $1, $2, $3) q), '''') AS wallet_start) k',
                       v_period || '_start', v_period || '_xp')
           INTO v_rank USING v_bounds.period_start, v_total, v_wallet, v_period;
        RETURN v_rank;
    END IF;
    PERFORM pyxp.require_unarchived_period(v_period, v_bounds.period_start);  -- a past period: from the ledger
    SELECT r.rank INTO v_rank
      FROM (SELECT t.user_wallet, row_number() OVER (ORDER BY t.period_xp DESC, t.user_wallet COLLATE "C") AS rank
              FROM pyxp.ledger_period_totals(pyxp.period_first_instant(v_period, v_bounds.period_start, v_zone),
                                             pyxp.period_first_instant(v_period, v_bounds.period_end, v_zone)) t) r
     WHERE r.user_wallet = v_wallet;
    RETURN v_rank;
END
$$;

-- Public: the XP a wallet earned in the period containing `at` (its rows
-- there, reversals counted in the period of what they reverse); 0 if none.
-- 'all': its total.
CREATE FUNCTION pyxp.period_xp(wallet text, period text, at timestamptz DEFAULT now())
RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$
DECLARE
    v_wallet text := pyxp.checked_wallet(period_xp.wallet);
    v_period text := pyxp.checked_period(period_xp.period);
    v_bounds record;
    v_zone text;
    v_first timestamptz;  -- an earlier period's instants: [v_first, v_end)
    v_end timestamptz;
    v_start timestamptz;
    v_xp bigint;
BEGIN
    IF v_period = 'all' THEN
        RETURN coalesce((SELECT b.total_xp FROM pyxp.xp_balances b WHERE b.user_wallet = v_wallet), 0);
    END IF;
    v_zone := pyxp.active_timezone();
    v_bounds := pyxp.period_bounds(v_period, period_xp.at, v_zone);
    EXECUTE format('SELECT b.%1$I, b.%2$I FROM pyxp.xp_balances b WHERE b.user_wallet = $1',
                   v_period || '_start', v_period || '_xp')
       INTO v_start, v_xp USING v_wallet;
    IF v_start IS NULL OR v_start < v_bounds.period_start THEN
        RETURN 0;                   -- no row in that period or later
    ELSIF v_start = v_bounds.period_start THEN
        RETURN v_xp;                -- its latest period: kept by the writer
    END IF;
    -- An earlier period: the wallet's rows (index xp_transactions_wallet_seq).
    PERFORM pyxp.require_unarchived_period(v_period, v_bounds.period_start);
    v_first := pyxp.period_first_instant(v_period, v_bounds.period_start, v_zone);
    v_end := pyxp.period_first_instant(v_period, v_bounds.period_end, v_zone);
    RETURN coalesce((
        SELECT sum(t.xp_amount)
          FROM pyxp.xp_transactions t
         CROSS JOIN LATERAL (SELECT CASE WHEN t.reverses IS NULL THEN t.created_at
                                         ELSE pyxp.reversed_row_at(t.reverses) END AS at) e
         WHERE t.user_wallet = v_wallet AND e.at >= v_first AND e.at < v_end
           AND pyxp.ledger_unmoved()), 0)::bigint;  -- (40001 after a read older than an archive)
END
$$;

-- The allowance a rule's cap counts in: its group's, or its own.
CREATE FUNCTION pyxp.cap_allowance(p_group text, p_action text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN p_group IS NOT NULL THEN 'group:' || p_group ELSE 'rule:' || p_action END $$;

-- Every capped allowance of every ruleset version: its period (per, in the
-- ruleset's zone) and the actions of its rules, sorted (a group's rules
-- share one allowance, whose cap they must agree on: sql/04_rulesets.sql).
-- An allowance holds the gains counted under its name, and those of its
-- actions (0025: a rule moved into a group brings what it used of the
-- period; a hostile test found it starting again).
CREATE FUNCTION pyxp.capped_allowances()
RETURNS TABLE (ruleset_id bigint, allowance text, per text, zone text, actions text[])
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT ru.ruleset_id, pyxp.cap_allowance(ru.cap_group, ru.action), min(ru.cap_per), min(rs.timezone),
           array_agg(ru.action ORDER BY ru.action)
      FROM pyxp.rules ru JOIN pyxp.rulesets rs ON rs.ruleset_id = ru.ruleset_id
     WHERE ru.cap_max_xp IS NOT NULL
     GROUP BY ru.ruleset_id, pyxp.cap_allowance(ru.cap_group, ru.action)
$$;


-- What a reversal frees of capped allowances: what the capped gain it
-- reverses applied, in that gain's period (its rule's, in the zone of its
-- rule's ruleset), and in each period an activation seeded with it (a row of
-- xp_cap_usage whose seeded period holds the gain, seeded when the gain
-- existed: its position is at most seeded_seq; freed_seed, from its seed
-- too). No row for a reversal of
-- anything else. For the writer's step 4b, under the wallet's lock.
CREATE FUNCTION pyxp.freed_allowances(p_reverses bigint)
RETURNS TABLE (allowance text, period_start timestamptz, freed_xp bigint, freed_seed bigint)
LANGUAGE sql STABLE
AS $$
    SELECT f.allowance, f.period_start, o.xp_amount, f.freed_seed
      FROM pyxp.xp_transactions o
      JOIN pyxp.rules ru ON ru.rule_id = o.rule_id
      JOIN pyxp.rulesets rs ON rs.ruleset_id = ru.ruleset_id
     CROSS JOIN LATERAL (SELECT pyxp.cap_allowance(ru.cap_group, ru.action) AS allowance,
                                date_trunc(ru.cap_per, o.created_at, rs.timezone) AS own_start) a
     CROSS JOIN LATERAL (SELECT a.allowance, a.own_start AS period_start, 0::bigint AS freed_seed
                         UNION ALL
                         SELECT u.allowance, u.period_start, o.xp_amount FROM pyxp.xp_cap_usage u
                           LEFT JOIN pyxp.capped_allowances() s ON s.ruleset_id = u.seeded_by AND s.allowance = u.allowance
                          WHERE u.user_wallet = o.user_wallet AND u.seeded_at IS NOT NULL AND o.wallet_seq <= u.seeded_seq
                            AND u.period_start = date_trunc(u.seeded_per, o.created_at, u.seeded_zone)
                            AND (u.allowance = a.allowance OR ru.action = ANY (s.actions))
                            AND NOT (u.allowance = a.allowance AND u.period_start = a.own_start)) f
     WHERE o.id = p_reverses AND ru.cap_max_xp IS NOT NULL AND o.xp_amount > 0
$$;

-- The capped gains of the ledger as they count in allowances: each gain
-- (user_wallet, allowance: its rule's, action, actions: its allowance's in
-- its ruleset, at: its created_at, its own period per and zone: its rule's,
-- in its ruleset's zone, cap: its rule's, seq: its wallet_seq, xp_amount:
-- what it applied), and each reversal of one (the gain's, but seq its own
-- and xp_amount negative), with is_gain and gain_seq (the gain's own
-- position: a seed counts the gains that existed when it was made; 0 for an
-- archived gain, older than any seed the audit checks). Only the
-- rows of partitions p_partitions when it is not NULL; only the gains since
-- p_since when it is not NULL (a reversal after it, of a gain before it, is
-- left out too). Gains: a hash join of the ledger with the capped rules;
-- only the reversals look their original up (index xp_transactions_reversals;
-- a probe per row of the ledger cost 5 s of the audit at 1M rows).
CREATE FUNCTION pyxp.capped_gains(p_partitions oid[], p_since timestamptz)
RETURNS TABLE (user_wallet text, allowance text, action text, actions text[], at timestamptz, per text,
               zone text, cap_max_xp bigint, seq bigint, xp_amount bigint, is_gain boolean, gain_seq bigint)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT g.user_wallet, a.allowance, ru.action, a.actions, g.at, ru.cap_per, rs.timezone,
           ru.cap_max_xp, g.seq, g.xp_amount, g.is_gain, g.gain_seq
      FROM (SELECT t.user_wallet, t.rule_id, t.created_at AS at, t.wallet_seq AS seq, t.xp_amount, true AS is_gain,
                   t.wallet_seq AS gain_seq
              FROM pyxp.xp_transactions t
             WHERE t.reverses IS NULL AND t.xp_amount > 0
               AND t.rule_id IN (SELECT c.rule_id FROM pyxp.rules c WHERE c.cap_max_xp IS NOT NULL)
               AND (p_partitions IS NULL OR t.tableoid = ANY (p_partitions))
               AND (p_since IS NULL OR t.created_at >= p_since)
            UNION ALL
            SELECT t.user_wallet, o.rule_id, o.created_at, t.wallet_seq, t.xp_amount, false, o.wallet_seq
              FROM pyxp.xp_transactions t
             CROSS JOIN LATERAL (SELECT o.rule_id, o.created_at, o.xp_amount, o.wallet_seq FROM pyxp.xp_transactions o
                                  WHERE o.id = t.reverses
                                 UNION ALL
                                 SELECT a.rule_id, a.created_at, a.xp_amount, 0 FROM pyxp.xp_archived_originals a
                                  WHERE a.transaction_id = t.reverses
                                 LIMIT 1) o
             WHERE t.reverses IS NOT NULL AND o.xp_amount > 0
               AND (p_partitions IS NULL OR t.tableoid = ANY (p_partitions))
               AND (p_since IS NULL OR (t.created_at >= p_since AND o.created_at >= p_since))) g
      JOIN pyxp.rules ru ON ru.rule_id = g.rule_id
      JOIN pyxp.rulesets rs ON rs.ruleset_id = ru.ruleset_id
      JOIN pyxp.capped_allowances() a
        ON a.ruleset_id = ru.ruleset_id AND a.allowance = pyxp.cap_allowance(ru.cap_group, ru.action)
     WHERE ru.cap_max_xp IS NOT NULL
$$;

-- The capped allowances ruleset p_ruleset moves at an activation after
-- p_previous (NULL: none): those whose period (per, zone) or actions
-- p_previous did not have, each with the period containing p_at (its key,
-- date_trunc, and its first instant).
CREATE FUNCTION pyxp.moved_allowances(p_ruleset bigint, p_previous bigint, p_at timestamptz)
RETURNS TABLE (allowance text, per text, zone text, actions text[], start timestamptz, first timestamptz)
LANGUAGE sql STABLE
AS $$
    SELECT k.allowance, k.per, k.zone, k.actions, date_trunc(k.per, p_at, k.zone),
           pyxp.period_first_instant(k.per, p_at, k.zone)
      FROM (SELECT a.allowance, a.per, a.zone, a.actions FROM pyxp.capped_allowances() a WHERE a.ruleset_id = p_ruleset
            EXCEPT
            SELECT a.allowance, a.per, a.zone, a.actions FROM pyxp.capped_allowances() a WHERE a.ruleset_id = p_previous) k
$$;

-- Activating ruleset p_ruleset after p_previous (NULL: none): each capped
-- allowance whose period (per, zone) or actions p_previous did not have
-- (pyxp.moved_allowances) starts its current period from what the gains
-- there used that were counted elsewhere (under another zone or per: their
-- period starts elsewhere; or, for one of its actions, under another
-- allowance: a rule moved into or out of a group), less what reversals of
-- them freed. Without it a new zone's
-- day would start from nothing hours after the old zone's day used it all
-- (a hostile test, 2026-11-27). Written as xp_cap_usage.seeded_xp of the
-- period's row (counted anew: a seed left by an earlier switch to that
-- period or a later one is replaced), with the period it counted, the
-- activation's instant p_at (rulesets.activated_at, the clock after the
-- caller's lock) and the gains it counted: every one in the ledger, as the
-- lock holds every award out, so up to the wallet's last position
-- (seeded_seq). The periods: the one containing p_at and every later one
-- holding gains (0031: rows written while the server's clock ran ahead,
-- then stepped back, are dated there; counting only the first, their day
-- granted its allowance again when it came, a hostile test). No capped row
-- is dated before p_at (pyxp.append_rows), so no award counts in an
-- earlier period of the new zone.
-- PX029 when that period began before the archive horizon and the
-- allowance's archived gains may lie in it (they cannot be counted here).
-- The caller holds SHARE ROW EXCLUSIVE on xp_balances (no award meanwhile).
-- One pass over the ledger since the earliest of those periods' starts.
CREATE FUNCTION pyxp.seed_cap_usage(p_ruleset bigint, p_previous bigint, p_at timestamptz)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_horizon timestamptz := pyxp.archive_horizon();
    v_blocked record;
BEGIN
    IF NOT EXISTS (SELECT FROM pyxp.moved_allowances(p_ruleset, p_previous, p_at)) THEN
        RETURN;
    END IF;
    -- An archived period of the allowance (or of one of its actions) may
    -- overlap it: one that starts less than the longest period the other
    -- rulesets gave them (and a day) before it.
    SELECT k.allowance, k.per, k.first INTO v_blocked
      FROM pyxp.moved_allowances(p_ruleset, p_previous, p_at) k
     WHERE k.first < v_horizon
       AND EXISTS (SELECT FROM pyxp.capped_allowances() o
                     JOIN pyxp.xp_archived_cap_usage a ON a.allowance = o.allowance
                    WHERE o.ruleset_id <> p_ruleset AND (o.allowance = k.allowance OR o.actions && k.actions)
                      AND a.period_start > k.first - (('1 ' || o.per)::interval + interval '1 day'))
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'the % from % of allowance % holds gains written before %, and they were archived',
                        v_blocked.per, v_blocked.first, v_blocked.allowance, v_horizon
            USING ERRCODE = 'PX029',
                  HINT = 'activate a ruleset that changes this allowance''s period once its current one begins after the archive horizon';
    END IF;
    -- Seeds left by an earlier switch to these periods (from the switch's on,
    -- of the same length and zone, or starting where one of them does: the
    -- INSERT below would add to them): counted anew below. A seed of other
    -- periods stays (its periods come back with a switch back to them).
    UPDATE pyxp.xp_cap_usage u
       SET used_xp = u.used_xp - u.seeded_xp, seeded_xp = 0, seeded_per = NULL, seeded_zone = NULL,
           seeded_by = NULL, seeded_at = NULL, seeded_seq = NULL
      FROM pyxp.moved_allowances(p_ruleset, p_previous, p_at) k
     WHERE u.seeded_at IS NOT NULL AND u.allowance = k.allowance AND u.period_start >= k.start
       AND ((u.seeded_per, u.seeded_zone) = (k.per, k.zone) OR date_trunc(k.per, u.period_start, k.zone) = u.period_start);
    -- The gains in each period that count in it, the allowance's own rows
    -- (counted under its name there) aside.
    INSERT INTO pyxp.xp_cap_usage AS u (user_wallet, allowance, period_start, used_xp, seeded_xp, seeded_per,
                                        seeded_zone, seeded_by, seeded_at, seeded_seq)
    SELECT g.user_wallet, k.allowance, p.start, sum(g.xp_amount), sum(g.xp_amount), k.per, k.zone, p_ruleset, p_at,
           min(b.last_wallet_seq)
      FROM pyxp.moved_allowances(p_ruleset, p_previous, p_at) k
      JOIN pyxp.capped_gains(NULL, (SELECT min(m.first) FROM pyxp.moved_allowances(p_ruleset, p_previous, p_at) m)) g
        ON g.allowance = k.allowance OR g.action = ANY (k.actions)
     CROSS JOIN LATERAL (SELECT date_trunc(k.per, g.at, k.zone) AS start) p
      JOIN pyxp.xp_balances b ON b.user_wallet = g.user_wallet
     WHERE p.start >= k.start
       AND NOT (g.allowance = k.allowance AND date_trunc(g.per, g.at, g.zone) = p.start)
     GROUP BY g.user_wallet, k.allowance, p.start, k.per, k.zone
    HAVING sum(g.xp_amount) > 0
    ON CONFLICT (user_wallet, allowance, period_start) DO UPDATE
       SET used_xp = u.used_xp + excluded.seeded_xp, seeded_xp = excluded.seeded_xp,
           seeded_per = excluded.seeded_per, seeded_zone = excluded.seeded_zone, seeded_by = excluded.seeded_by,
           seeded_at = excluded.seeded_at, seeded_seq = excluded.seeded_seq;
END
$$;

-- For each seeded row of xp_cap_usage, what its seed must be: the gains of
-- its allowance in its seeded period, counted in other periods, that
-- existed when it was seeded (positions up to seeded_seq, whatever their
-- created_at: 0031), less the reversals of them; NULL where that period
-- began before the archive horizon (its archived gains cannot be counted).
-- For pyxp.audit.
CREATE FUNCTION pyxp.ledger_cap_seeds()
RETURNS TABLE (user_wallet text, allowance text, period_start timestamptz, seeded_xp bigint, ledger_xp bigint)
LANGUAGE sql STABLE
AS $$
    SELECT u.user_wallet, u.allowance, u.period_start, u.seeded_xp,
           CASE WHEN pyxp.period_first_instant(u.seeded_per, u.period_start, u.seeded_zone)
                     >= coalesce(pyxp.archive_horizon(), '-infinity')
                THEN coalesce(sum(g.xp_amount) FILTER (WHERE g.gain_seq <= u.seeded_seq
                                                      AND date_trunc(u.seeded_per, g.at, u.seeded_zone) = u.period_start
                                                      AND NOT (g.allowance = u.allowance
                                                               AND date_trunc(g.per, g.at, g.zone) = u.period_start)),
                              0)::bigint
           END
      FROM pyxp.xp_cap_usage u
      LEFT JOIN pyxp.capped_allowances() a ON a.ruleset_id = u.seeded_by AND a.allowance = u.allowance
      LEFT JOIN pyxp.capped_gains(NULL, NULL) g
        ON g.user_wallet = u.user_wallet AND (g.allowance = u.allowance OR g.action = ANY (a.actions))
     WHERE u.seeded_at IS NOT NULL
     GROUP BY u.user_wallet, u.allowance, u.period_start, u.seeded_xp, u.seeded_per, u.seeded_zone, u.seeded_seq
$$;

-- Every capped gain that applied more than was left of its allowance in the
-- period that governed it: its rule's period (per, zone), holding every
-- gain of the allowance there (counted under its name, or of one of its
-- actions in the gain's ruleset), whatever period those were counted in, up to
-- and including it in the wallet's order (wallet_seq, the order the writer
-- counts in under the wallet's lock), less reversals before it, plus what
-- archived rows used there. One row per period, with the largest such sum,
-- as it was when the gain was written and its rule's cap. For pyxp.audit:
-- a usage row can agree with its own rows while its period lacked room
-- (a switch's seed missing).
CREATE FUNCTION pyxp.exceeded_allowances()
RETURNS TABLE (user_wallet text, allowance text, period_start timestamptz, per text, zone text,
               used_xp bigint, cap_max_xp bigint)
LANGUAGE sql STABLE
AS $$
    WITH gains AS (SELECT * FROM pyxp.capped_gains(NULL, NULL)),
    keys AS (SELECT DISTINCT a.allowance, a.per, a.zone, a.actions FROM pyxp.capped_allowances() a),
    counted AS (
        SELECT g.user_wallet, k.allowance, k.per, k.zone, k.actions, p.start, g.seq,
               g.is_gain AND g.xp_amount > 0
                   AND (g.allowance, g.per, g.zone, g.actions) = (k.allowance, k.per, k.zone, k.actions) AS governed,
               g.cap_max_xp, g.xp_amount
          FROM gains g
          JOIN keys k ON k.allowance = g.allowance OR g.action = ANY (k.actions)
         CROSS JOIN LATERAL (SELECT date_trunc(k.per, g.at, k.zone) AS start) p
    ), running AS (
        SELECT c.*, sum(c.xp_amount) OVER (PARTITION BY c.user_wallet, c.allowance, c.per, c.zone, c.actions, c.start
                                           ORDER BY c.seq ROWS UNBOUNDED PRECEDING)
                    + coalesce((SELECT a.used_xp FROM pyxp.xp_archived_cap_usage a
                                 WHERE a.user_wallet = c.user_wallet AND a.allowance = c.allowance
                                   AND a.period_start = c.start), 0) AS used_xp
          FROM counted c
    )
    SELECT r.user_wallet, r.allowance, r.start, r.per, r.zone, max(r.used_xp)::bigint, max(r.cap_max_xp)
      FROM running r
     WHERE r.governed AND r.used_xp > r.cap_max_xp
     GROUP BY r.user_wallet, r.allowance, r.start, r.per, r.zone
$$;

-- From the ledger, in zone p_timezone: each wallet's latest period of each
-- kind and its XP there (what xp_balances.<kind>_start/_xp must hold): its
-- rows after its opening (sql/13_retention.sql), a reversal in its
-- original's period, and its opening's latest periods (kept in the
-- archive's zone, which is the only zone once an archive exists). One pass
-- over the ledger: for pyxp.rebuild_period_columns.
CREATE FUNCTION pyxp.ledger_latest_periods(p_timezone text)
RETURNS TABLE (user_wallet text, day_start timestamptz, day_xp bigint, week_start timestamptz, week_xp bigint,
               month_start timestamptz, month_xp bigint, year_start timestamptz, year_xp bigint)
LANGUAGE sql STABLE
AS $$
    WITH rows_ AS (
        SELECT t.user_wallet,
               date_trunc('day', e.at, p_timezone) AS d, date_trunc('week', e.at, p_timezone) AS w,
               date_trunc('month', e.at, p_timezone) AS m, date_trunc('year', e.at, p_timezone) AS y,
               t.xp_amount AS d_xp, t.xp_amount AS w_xp, t.xp_amount AS m_xp, t.xp_amount AS y_xp
          FROM pyxp.xp_transactions t
          LEFT JOIN pyxp.xp_wallet_openings o ON o.user_wallet = t.user_wallet
         CROSS JOIN LATERAL (SELECT CASE WHEN t.reverses IS NULL THEN t.created_at
                                         ELSE pyxp.reversed_row_at(t.reverses) END AS at) e
         WHERE t.wallet_seq > coalesce(o.wallet_seq, 0)
        UNION ALL
        SELECT o.user_wallet, o.day_start, o.week_start, o.month_start, o.year_start,
               o.day_xp, o.week_xp, o.month_xp, o.year_xp
          FROM pyxp.xp_wallet_openings o
    ), latest AS (
        SELECT r.*, max(r.d) OVER w_ AS max_d, max(r.w) OVER w_ AS max_w,
               max(r.m) OVER w_ AS max_m, max(r.y) OVER w_ AS max_y
          FROM rows_ r
        WINDOW w_ AS (PARTITION BY r.user_wallet)
    )
    SELECT l.user_wallet,
           max(l.max_d), (sum(l.d_xp) FILTER (WHERE l.d = l.max_d))::bigint,
           max(l.max_w), (sum(l.w_xp) FILTER (WHERE l.w = l.max_w))::bigint,
           max(l.max_m), (sum(l.m_xp) FILTER (WHERE l.m = l.max_m))::bigint,
           max(l.max_y), (sum(l.y_xp) FILTER (WHERE l.y = l.max_y))::bigint
      FROM latest l
     GROUP BY l.user_wallet
$$;

-- What each capped allowance used per period in the rows of partitions
-- p_partitions (NULL: the whole ledger): capped gains' applied amounts, less
-- the reversals of them (in the gain's period, by the gain's rule, found in
-- the ledger or in xp_archived_originals), with the largest cap its rows'
-- rules carried. For pyxp.ledger_cap_usage and pyxp.archive_ledger_partitions.
CREATE FUNCTION pyxp.rows_cap_usage(p_partitions oid[])
RETURNS TABLE (user_wallet text, allowance text, period_start timestamptz, used_xp bigint, cap_max_xp bigint)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT g.user_wallet, g.allowance, date_trunc(g.per, g.at, g.zone), sum(g.xp_amount)::bigint, max(g.cap_max_xp)
      FROM pyxp.capped_gains(p_partitions, NULL) g
     GROUP BY 1, 2, 3
$$;

-- What each capped allowance used per period, from the ledger's rows and
-- what archived rows used (xp_archived_cap_usage), with the largest cap:
-- what xp_cap_usage must hold (pyxp.audit).
CREATE FUNCTION pyxp.ledger_cap_usage()
RETURNS TABLE (user_wallet text, allowance text, period_start timestamptz, used_xp bigint, cap_max_xp bigint)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT u.user_wallet, u.allowance, u.period_start, sum(u.used_xp)::bigint, max(u.cap_max_xp)
      FROM (SELECT * FROM pyxp.rows_cap_usage(NULL)
            UNION ALL
            SELECT a.user_wallet, a.allowance, a.period_start, a.used_xp, a.cap_max_xp
              FROM pyxp.xp_archived_cap_usage a) u
     GROUP BY 1, 2, 3
$$;

-- Re-derives every balance's period columns (xp_balances.<kind>_start,
-- <kind>_xp) from the ledger in zone p_timezone: when a ruleset with another
-- timezone becomes active, and in the migration that introduced them. One
-- pass over the ledger; the caller holds the lock that keeps awards out
-- (install_ruleset: SHARE ROW EXCLUSIVE on xp_balances). The period boards'
-- counts (xp_period_rank_counts) are counted afresh from them, one bucket
-- per value (the next rebalance cuts the values many wallets share).
CREATE FUNCTION pyxp.rebuild_period_columns(p_timezone text)
RETURNS void
LANGUAGE sql
AS $$
    UPDATE pyxp.xp_balances b
       SET day_start = p.day_start, day_xp = p.day_xp, week_start = p.week_start, week_xp = p.week_xp,
           month_start = p.month_start, month_xp = p.month_xp, year_start = p.year_start, year_xp = p.year_xp
      FROM pyxp.xp_balances b2
      LEFT JOIN pyxp.ledger_latest_periods(p_timezone) p ON p.user_wallet = b2.user_wallet
     WHERE b.user_wallet = b2.user_wallet
       AND (b.day_start, b.day_xp, b.week_start, b.week_xp, b.month_start, b.month_xp, b.year_start, b.year_xp)
           IS DISTINCT FROM
           (p.day_start, p.day_xp, p.week_start, p.week_xp, p.month_start, p.month_xp, p.year_start, p.year_xp);
    -- The period boards' counts, from the columns just derived.
    DELETE FROM pyxp.xp_period_rank_counts;
    INSERT INTO pyxp.xp_period_rank_counts SELECT * FROM pyxp.period_counts_from_balances();
$$;

COMMENT ON FUNCTION pyxp.period_kinds() IS 'internal: the kinds of periods, numbered as the balances'' columns.';
COMMENT ON FUNCTION pyxp.period_board_entries() IS
    'internal: each balance on the board of its latest period of each kind, with its XP there.';
COMMENT ON FUNCTION pyxp.period_bucket_of(text, timestamptz, bigint, text) IS
    'internal: the bucket of a period board holding a period XP and wallet (xp_period_rank_counts).';
COMMENT ON FUNCTION pyxp.period_board_range(text, timestamptz, bigint, text, text) IS
    'internal: the balances of a period board holding an XP value, between two wallets.';
COMMENT ON FUNCTION pyxp.period_counts_from_balances() IS
    'internal: the period boards'' counts from the balances, one bucket per value.';
COMMENT ON FUNCTION pyxp.checked_period(text) IS 'internal: a period name normalised (all, day, week, month, year), or PX026.';
COMMENT ON FUNCTION pyxp.period_bounds(text, timestamptz, text) IS
    'internal: start and end of the calendar period of a kind containing an instant, in a zone.';
COMMENT ON FUNCTION pyxp.period_first_instant(text, timestamptz, text) IS
    'internal: the earliest instant of a calendar period in a zone (a local midnight may happen twice).';
COMMENT ON FUNCTION pyxp.active_timezone() IS 'internal: the active ruleset''s timezone, periods are counted in it.';
COMMENT ON FUNCTION pyxp.ledger_period_totals(timestamptz, timestamptz) IS
    'internal: every wallet''s XP in a time range, from the ledger (reversals in their original''s period).';
COMMENT ON FUNCTION pyxp.period_cached(text, timestamptz) IS
    'internal: whether the balances'' period columns hold a period''s whole board.';
COMMENT ON FUNCTION pyxp.leaderboard(integer, integer, text, timestamptz) IS
    'API: the leaderboard of all time or of the day, week, month or year containing at: rank, wallet, total, level, period_xp.';
COMMENT ON FUNCTION pyxp.wallet_rank(text, text, timestamptz) IS
    'API: a wallet''s rank on a leaderboard (all time or a period), NULL when it is not on it.';
COMMENT ON FUNCTION pyxp.period_xp(text, text, timestamptz) IS
    'API: the XP a wallet earned in the day, week, month or year containing at (0 if none).';
COMMENT ON FUNCTION pyxp.cap_allowance(text, text) IS 'internal: the allowance a cap counts in, its group''s or its rule''s.';
COMMENT ON FUNCTION pyxp.freed_allowances(bigint) IS
    'internal: what a reversal frees of capped allowances: in the period of the gain it reverses, and in the periods seeded with it.';
COMMENT ON FUNCTION pyxp.capped_allowances() IS
    'internal: every capped allowance of every ruleset version: its period, zone and actions.';
COMMENT ON FUNCTION pyxp.moved_allowances(bigint, bigint, timestamptz) IS
    'internal: the capped allowances an activation moves (another period, zone or actions), with their period then.';
COMMENT ON FUNCTION pyxp.capped_gains(oid[], timestamptz) IS
    'internal: the capped gains of the ledger and the reversals of them, as they count in allowances.';
COMMENT ON FUNCTION pyxp.seed_cap_usage(bigint, bigint, timestamptz) IS
    'internal: at an activation, the current period of each allowance moved to another zone or per counts what its gains there used.';
COMMENT ON FUNCTION pyxp.ledger_cap_seeds() IS
    'internal: for each seeded usage row, what its seed must be, from the ledger.';
COMMENT ON FUNCTION pyxp.exceeded_allowances() IS
    'internal: the periods where a capped gain applied more than was left of its allowance.';
COMMENT ON FUNCTION pyxp.ledger_latest_periods(text) IS
    'internal: from the ledger (and the openings), each wallet''s latest period of each kind and its XP there.';
COMMENT ON FUNCTION pyxp.ledger_cap_usage() IS
    'internal: from the ledger and the archived rows'' usage, what each capped allowance used per period, and its cap.';
COMMENT ON FUNCTION pyxp.rows_cap_usage(oid[]) IS
    'internal: what each capped allowance used per period in the rows of some partitions (NULL: all), and its cap.';
COMMENT ON FUNCTION pyxp.reversed_row_at(bigint) IS
    'internal: the created_at of the row a reversal reverses, in the ledger or among the archived originals.';
COMMENT ON FUNCTION pyxp.rebuild_period_columns(text) IS
    'internal: re-derives every balance''s latest periods and their XP from the ledger, in a zone, and the period boards'' counts.';
