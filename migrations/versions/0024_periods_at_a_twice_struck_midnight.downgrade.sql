-- 0024 downgrade: leaderboard, wallet_rank and period_xp as 0023 left them;
-- pyxp.period_first_instant dropped.
SET LOCAL ROLE pyxp_owner;

CREATE OR REPLACE FUNCTION pyxp.period_xp(wallet text, period text, at timestamptz DEFAULT now())
RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$
DECLARE
    v_wallet text := pyxp.checked_wallet(period_xp.wallet);
    v_period text := pyxp.checked_period(period_xp.period);
    v_bounds record;
    v_start timestamptz;
    v_xp bigint;
BEGIN
    IF v_period = 'all' THEN
        RETURN coalesce((SELECT b.total_xp FROM pyxp.xp_balances b WHERE b.user_wallet = v_wallet), 0);
    END IF;
    v_bounds := pyxp.period_bounds(v_period, period_xp.at, pyxp.active_timezone());
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
    RETURN coalesce((
        SELECT sum(t.xp_amount)
          FROM pyxp.xp_transactions t
         CROSS JOIN LATERAL (SELECT CASE WHEN t.reverses IS NULL THEN t.created_at
                                         ELSE pyxp.reversed_row_at(t.reverses) END AS at) e
         WHERE t.user_wallet = v_wallet AND e.at >= v_bounds.period_start AND e.at < v_bounds.period_end), 0)::bigint;
END
$$;

CREATE OR REPLACE FUNCTION pyxp.wallet_rank(wallet text, period text DEFAULT 'all', at timestamptz DEFAULT now())
RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$
DECLARE
    v_wallet text := pyxp.checked_wallet(wallet_rank.wallet);
    v_period text := pyxp.checked_period(wallet_rank.period);
    v_bounds record;
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
    v_bounds := pyxp.period_bounds(v_period, wallet_rank.at, pyxp.active_timezone());
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
              FROM pyxp.ledger_period_totals(v_bounds.period_start, v_bounds.period_end) t) r
     WHERE r.user_wallet = v_wallet;
    RETURN v_rank;
END
$$;

CREATE OR REPLACE FUNCTION pyxp.leaderboard(max_rows integer DEFAULT 100, offset_rows integer DEFAULT 0,
                                 period text DEFAULT 'all', at timestamptz DEFAULT now())
RETURNS TABLE (rank bigint, user_wallet text, total_xp bigint, current_level bigint, period_xp bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$
DECLARE
    v_max integer := pyxp.checked_row_count('max_rows', leaderboard.max_rows);
    v_period text := pyxp.checked_period(leaderboard.period);
    v_bounds record;
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
    v_bounds := pyxp.period_bounds(v_period, leaderboard.at, pyxp.active_timezone());
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
                      FROM pyxp.ledger_period_totals(v_bounds.period_start, v_bounds.period_end) t
                     ORDER BY t.period_xp DESC, t.user_wallet COLLATE "C"
                    OFFSET leaderboard.offset_rows LIMIT v_max) p
              JOIN pyxp.xp_balances x ON x.user_wallet = p.user_wallet
             ORDER BY 1;
    END IF;
END
$$;


DROP FUNCTION pyxp.period_first_instant(text, timestamptz, text);

RESET ROLE;
