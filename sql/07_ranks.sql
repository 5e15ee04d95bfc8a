-- Exact all-time ranks in under a millisecond (0009): the rank buckets of
-- xp_rank_counts (sql/01_schema.sql). A wallet's rank is
--     1 + the wallets of every bucket before its own (a sum over a few
--         thousand small rows)
--       + the balances of its own bucket before it (an index range count of
--         about bucket_size / 2 entries),
-- instead of a count of every balance above it (61 ms at 1M wallets).
--
-- Who changes what, and the locks that keep the counts exact:
--   * the writer (pyxp.append_rows, step 4) moves a balance from the bucket
--     of its old total to the bucket of its new one (-1 / +1 in the slot of
--     its backend, which no other live transaction writes), in the
--     statement that sets the total, under the balance's row lock; a
--     balance the call created is counted there for the first time
--     (xp_balances.ranked).
--   * pyxp.rebalance_rank_buckets moves bucket starts. It takes SHARE ROW
--     EXCLUSIVE on xp_balances, which every writer's ROW EXCLUSIVE
--     (pyxp.writing_ruleset, taken before anything is read) excludes: no
--     award is between reading a bucket and counting in it while starts
--     move, and every award after it reads the new starts.
-- Buckets never split by themselves: as wallets move, some grow, and each
-- backend that moved wallets adds a row per bucket. A rank stays exact
-- whatever the sizes; its cost grows with its bucket's size and the rows
-- to sum (README "Ranks": run the rebalance from a scheduler).

-- The balances between two board positions, [from, to) in board order
-- (total_xp desc, wallet byte by byte). Index ranges of
-- xp_balances_leaderboard (both ends in one tie group, or the rest of the
-- first tie group, the totals in between, the start of the last tie group),
-- so it reads only the entries in between: a row comparison across a desc
-- and an asc column has no index range, and an end left to a filter would
-- read the rest of a tie group (tens of thousands of wallets may share a
-- total).
-- Inlined into its callers (SQL, STABLE, one SELECT).
CREATE FUNCTION pyxp.board_range(p_from_xp bigint, p_from_wallet text, p_to_xp bigint, p_to_wallet text)
RETURNS TABLE (total_xp bigint, user_wallet text)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT b.total_xp, b.user_wallet FROM pyxp.xp_balances b
     WHERE b.total_xp = p_from_xp AND b.user_wallet COLLATE "C" >= p_from_wallet
       AND b.user_wallet COLLATE "C" < p_to_wallet AND p_to_xp = p_from_xp
    UNION ALL
    SELECT b.total_xp, b.user_wallet FROM pyxp.xp_balances b
     WHERE b.total_xp = p_from_xp AND b.user_wallet COLLATE "C" >= p_from_wallet AND p_to_xp <> p_from_xp
    UNION ALL
    SELECT b.total_xp, b.user_wallet FROM pyxp.xp_balances b
     WHERE b.total_xp < p_from_xp AND b.total_xp > p_to_xp
    UNION ALL
    SELECT b.total_xp, b.user_wallet FROM pyxp.xp_balances b
     WHERE b.total_xp = p_to_xp AND p_to_xp <> p_from_xp AND b.user_wallet COLLATE "C" < p_to_wallet
$$;

-- The bucket holding the board position of (total_xp, wallet): the last
-- bucket start at or before it. One probe of xp_rank_counts' primary key.
-- The writer probes twice per moved balance. A seq scan that sorts the
-- table for its top row (the plan chosen when the statistics see a small
-- table: every bucket, and a row per bucket and per backend that moved
-- wallets) costs 58 us a probe at a few thousand rows, the index 2.6 us:
-- pyxp.rebalance_rank_buckets keeps the statistics fresh, and the plain
-- bound on neg_xp (it repeats the row comparison) gives the planner an
-- index bound it can price (0013).
CREATE FUNCTION pyxp.rank_bucket_of(p_total_xp bigint, p_wallet text)
RETURNS TABLE (neg_xp bigint, wallet text)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT c.neg_xp, c.wallet FROM pyxp.xp_rank_counts c
     WHERE c.neg_xp <= -p_total_xp AND (c.neg_xp, c.wallet) <= (-p_total_xp, p_wallet COLLATE "C")
       AND c.slot = 0
     ORDER BY c.neg_xp DESC, c.wallet DESC
     LIMIT 1
$$;

-- A balance's all-time rank: 1 + the wallets of the buckets before its own
-- + the balances of its own bucket before it. Inlined into its callers
-- (pyxp.wallet_rank; pyxp bench explains it).
CREATE FUNCTION pyxp.board_rank(p_total_xp bigint, p_wallet text)
RETURNS TABLE (rank bigint)
LANGUAGE sql STABLE
AS $$
    SELECT 1 + coalesce((SELECT sum(c.wallets) FROM pyxp.xp_rank_counts c
                          WHERE (c.neg_xp, c.wallet) < (k.neg_xp, k.wallet COLLATE "C")), 0)::bigint
             + (SELECT count(*) FROM pyxp.board_range(-k.neg_xp, k.wallet, p_total_xp, p_wallet))
      FROM pyxp.rank_bucket_of(p_total_xp, p_wallet) k
$$;

-- Each bucket once: its start, the wallets it holds (over its slots), and
-- where the next one starts (the end of the board after the last one).
CREATE FUNCTION pyxp.rank_buckets()
RETURNS TABLE (neg_xp bigint, wallet text, wallets bigint, next_neg_xp bigint, next_wallet text)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT g.neg_xp, g.wallet, g.wallets,
           lead(g.neg_xp, 1, 9223372036854775807) OVER w, lead(g.wallet, 1, '') OVER w
      FROM (SELECT c.neg_xp, c.wallet, sum(c.wallets)::bigint AS wallets
              FROM pyxp.xp_rank_counts c GROUP BY c.neg_xp, c.wallet) g
    WINDOW w AS (ORDER BY g.neg_xp, g.wallet)
$$;

-- Owner operation, to run from a scheduler: folds the writers' slots into
-- slot 0, counts any balance not counted yet (one the owner inserted around
-- the writer), drops empty buckets (never the first; on the period boards
-- of xp_period_rank_counts, any), and re-cuts into buckets of bucket_size
-- consecutive balances every bucket that grew past 2 x bucket_size (on a
-- period board: a value many wallets share, cut by wallet) -- or the whole
-- all-time board when full_rebuild, when it holds
-- more than twice the buckets its size needs (shrunk buckets), or when the
-- first bucket was deleted (the writer finds no bucket then, and counts
-- nothing: audit() reports it); a whole cut counts the period boards
-- afresh too (the repair of a count audit() reports). Returns the
-- all-time board's buckets after it and how many of them it re-cut. Holds every award while it runs
-- (SHARE ROW EXCLUSIVE on xp_balances, the lock of recalculate_levels):
-- a few milliseconds without a re-cut, about 5 s per million balances
-- re-cut (4.8 s for a full cut of 1M). It waits at most 1 s for the awards
-- in flight (lock_timeout; new awards queue behind that wait): an award
-- transaction left open makes it fail with 55P03, and the next run does
-- the work.
CREATE FUNCTION pyxp.rebalance_rank_buckets(bucket_size integer DEFAULT 1024, full_rebuild boolean DEFAULT false)
RETURNS TABLE (buckets bigint, recut_buckets bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET lock_timeout = '1s'
AS $$
DECLARE
    v_size constant integer := rebalance_rank_buckets.bucket_size;
    v_full boolean := rebalance_rank_buckets.full_rebuild;
    v_recut bigint := 0;
    v_bucket record;
BEGIN
    IF v_size IS NULL OR v_size NOT BETWEEN 16 AND 1000000 THEN
        RAISE EXCEPTION 'invalid bucket_size: %', coalesce(v_size::text, 'NULL')
            USING ERRCODE = 'PX023', HINT = 'bucket_size is between 16 and 1000000 balances';
    END IF;
    PERFORM pyxp.require_read_committed();
    PERFORM pyxp.hold_awards('pyxp.rebalance_rank_buckets');
    INSERT INTO pyxp.xp_rank_counts (neg_xp, wallet, slot, wallets)
    VALUES (-9223372036854775807, '', 0, 0) ON CONFLICT DO NOTHING;
    IF FOUND THEN  -- the first bucket was gone: writers counted nothing since; cut afresh
        v_full := true;
    END IF;
    -- The writers' slots, folded into slot 0 (every bucket has its slot 0 row).
    WITH folded AS (
        DELETE FROM pyxp.xp_rank_counts c WHERE c.slot <> 0 RETURNING c.neg_xp, c.wallet, c.wallets
    )
    UPDATE pyxp.xp_rank_counts c SET wallets = c.wallets + f.wallets
      FROM (SELECT f.neg_xp, f.wallet, sum(f.wallets) AS wallets FROM folded f GROUP BY f.neg_xp, f.wallet) f
     WHERE c.neg_xp = f.neg_xp AND c.wallet = f.wallet AND c.slot = 0;
    -- Balances nobody counted (index xp_balances_unranked): counted now.
    UPDATE pyxp.xp_rank_counts c SET wallets = c.wallets + u.wallets
      FROM (SELECT k.neg_xp, k.wallet, count(*) AS wallets
              FROM pyxp.xp_balances b CROSS JOIN LATERAL pyxp.rank_bucket_of(b.total_xp, b.user_wallet) k
             WHERE NOT b.ranked
             GROUP BY k.neg_xp, k.wallet) u
     WHERE c.neg_xp = u.neg_xp AND c.wallet = u.wallet AND c.slot = 0;
    -- The period boards' counts (xp_period_rank_counts): the writers' slots
    -- and the balances nobody counted (each in the bucket holding it),
    -- folded into slot 0; then the buckets that count nobody are dropped
    -- (their empty range joins the bucket before).
    WITH folded AS (
        DELETE FROM pyxp.xp_period_rank_counts c WHERE c.slot <> 0
        RETURNING c.period, c.period_start, c.period_xp, c.wallet_start, c.wallets
    )
    INSERT INTO pyxp.xp_period_rank_counts AS c (period, period_start, period_xp, wallet_start, slot, wallets)
    SELECT m.period, m.period_start, m.period_xp, m.wallet_start, 0, sum(m.wallets)
      FROM (SELECT f.period, f.period_start, f.period_xp, f.wallet_start, f.wallets FROM folded f
            UNION ALL
            SELECT e.period, e.period_start, e.period_xp, coalesce(q.wallet_start, ''), 1
              FROM pyxp.period_board_entries() e
              LEFT JOIN LATERAL pyxp.period_bucket_of(e.period, e.period_start, e.period_xp, e.user_wallet) q ON true
             WHERE NOT e.ranked) m
     GROUP BY m.period, m.period_start, m.period_xp, m.wallet_start
    ON CONFLICT (period, period_start, period_xp, wallet_start, slot)
       DO UPDATE SET wallets = c.wallets + excluded.wallets;
    DELETE FROM pyxp.xp_period_rank_counts c WHERE c.wallets = 0;
    UPDATE pyxp.xp_balances SET ranked = true WHERE NOT ranked;
    -- Empty buckets: their (no) balances join the bucket before.
    DELETE FROM pyxp.xp_rank_counts c
     WHERE c.wallets = 0 AND c.neg_xp > -9223372036854775807;
    v_full := v_full OR (SELECT count(*) > 2 * (sum(c.wallets) / v_size + 1) FROM pyxp.xp_rank_counts c);
    IF v_full THEN
        DELETE FROM pyxp.xp_rank_counts c WHERE c.neg_xp > -9223372036854775807;
        UPDATE pyxp.xp_rank_counts c SET wallets = (SELECT count(*) FROM pyxp.xp_balances);
        -- And the period boards' counts afresh from the balances (one
        -- bucket per value, cut below).
        DELETE FROM pyxp.xp_period_rank_counts;
        INSERT INTO pyxp.xp_period_rank_counts SELECT * FROM pyxp.period_counts_from_balances();
    END IF;
    FOR v_bucket IN
        SELECT * FROM pyxp.rank_buckets() e WHERE e.wallets > 2 * v_size OR (v_full AND e.wallets > v_size)
    LOOP
        -- Its balances in board order: the first keeps the bucket's start,
        -- every bucket_size-th after it starts a bucket.
        DELETE FROM pyxp.xp_rank_counts c WHERE c.neg_xp = v_bucket.neg_xp AND c.wallet = v_bucket.wallet;
        INSERT INTO pyxp.xp_rank_counts (neg_xp, wallet, slot, wallets)
        SELECT CASE WHEN p.n = 1 THEN v_bucket.neg_xp ELSE -p.total_xp END,
               CASE WHEN p.n = 1 THEN v_bucket.wallet ELSE p.user_wallet END,
               0, least(v_size, p.held - p.n + 1)
          FROM (SELECT r.total_xp, r.user_wallet, count(*) OVER () AS held,
                       row_number() OVER (ORDER BY r.total_xp DESC, r.user_wallet COLLATE "C") AS n
                  FROM pyxp.board_range(-v_bucket.neg_xp, v_bucket.wallet,
                                        -v_bucket.next_neg_xp, v_bucket.next_wallet) r) p
         WHERE p.n % v_size = 1;
        INSERT INTO pyxp.xp_rank_counts (neg_xp, wallet, slot, wallets)  -- it held nothing after all
        VALUES (v_bucket.neg_xp, v_bucket.wallet, 0, 0) ON CONFLICT DO NOTHING;
        v_recut := v_recut + 1;
    END LOOP;
    -- A period board's buckets past 2 x bucket_size wallets (a value many
    -- wallets share): cut by wallet, every bucket_size-th balance of its
    -- range (an index range of the board) starting a bucket.
    FOR v_bucket IN
        SELECT g.* FROM (SELECT c.period, c.period_start, c.period_xp, c.wallet_start, c.wallets,
                                lead(c.wallet_start) OVER (PARTITION BY c.period, c.period_start, c.period_xp
                                                           ORDER BY c.wallet_start) AS next_start
                           FROM pyxp.xp_period_rank_counts c) g  -- slot 0 only, since the fold
         WHERE g.wallets > 2 * v_size OR (v_full AND g.wallets > v_size)
    LOOP
        DELETE FROM pyxp.xp_period_rank_counts c
         WHERE c.period = v_bucket.period AND c.period_start = v_bucket.period_start
           AND c.period_xp = v_bucket.period_xp AND c.wallet_start = v_bucket.wallet_start;
        EXECUTE format($cut$
            INSERT INTO pyxp.xp_period_rank_counts (period, period_start, period_xp, wallet_start, slot, wallets)
            SELECT $1, $2, $3, CASE WHEN p.n = 1 THEN $4 ELSE p.user_wallet END, 0, least($6, p.held - p.n + 1)
              FROM (SELECT b.user_wallet, count(*) OVER () AS held,
                           row_number() OVER (ORDER BY b.user_wallet COLLATE "C") AS n
                      FROM pyxp.xp_balances b
                     WHERE b.%1$I = $2 AND b.%2$I = $3 AND b.user_wallet COLLATE "C" >= $4
                       AND ($5 IS NULL OR b.user_wallet COLLATE "C" < $5)) p
             WHERE p.n %% $6 = 1$cut$, v_bucket.period || '_start', v_bucket.period || '_xp')
        USING v_bucket.period, v_bucket.period_start, v_bucket.period_xp, v_bucket.wallet_start,
              v_bucket.next_start, v_size;
    END LOOP;
    -- Fresh statistics for the bucket probes (pyxp.rank_bucket_of): planned
    -- on a table the statistics still saw small, a probe read and sorted the
    -- whole table (58 us a probe against 2.6 us at a few thousand rows), in
    -- every backend whose cached plan was made then. ANALYZE also makes those
    -- backends plan again. A few milliseconds (0013).
    ANALYZE pyxp.xp_rank_counts, pyxp.xp_period_rank_counts;
    RETURN QUERY SELECT count(*), v_recut FROM pyxp.xp_rank_counts c;
END
$$;

-- For pyxp.audit: each bucket whose counts differ from the counted
-- balances it holds, each period board's XP value counted otherwise than
-- the balances holding it, and balances left uncounted (every balance is counted
-- once the call that created it ends; one inserted around the writer is
-- reported once, as uncounted).
CREATE FUNCTION pyxp.rank_problems()
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
    -- Counts in writers' slots of no bucket: a writer counts a balance in the
    -- bucket whose start (its slot 0 row) holds it, so every start a slot
    -- names has its slot 0 row. Counts without one are a bucket the writers
    -- never see (pyxp.rank_bucket_of reads slot 0): its balances' next moves
    -- are counted in the bucket before, and pyxp.rebalance_rank_buckets drops
    -- it (0046, helper-75: such a start, with the counts of the bucket before
    -- split to match, was clean until an award moved a balance past it).
    SELECT 'rank_count_mismatch', NULL, NULL,
           format('rank counts from (%s XP, %s) in slots %s (%s wallets): no bucket starts there', -c.neg_xp,
                  quote_literal(c.wallet), string_agg(c.slot::text, ', ' ORDER BY c.slot), sum(c.wallets))
      FROM pyxp.xp_rank_counts c
     WHERE c.slot <> 0
       AND NOT EXISTS (SELECT FROM pyxp.xp_rank_counts s WHERE s.neg_xp = c.neg_xp AND s.wallet = c.wallet AND s.slot = 0)
     GROUP BY c.neg_xp, c.wallet
    HAVING sum(c.wallets) <> 0
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

COMMENT ON FUNCTION pyxp.board_range(bigint, text, bigint, text) IS
    'internal: the balances between two positions of the all-time board, [from, to).';
COMMENT ON FUNCTION pyxp.rank_bucket_of(bigint, text) IS
    'internal: the rank bucket holding a board position (xp_rank_counts).';
COMMENT ON FUNCTION pyxp.board_rank(bigint, text) IS
    'internal: a balance''s all-time rank from the rank buckets.';
COMMENT ON FUNCTION pyxp.rank_buckets() IS
    'internal: each rank bucket: its start, the wallets it holds, the next start.';
COMMENT ON FUNCTION pyxp.rebalance_rank_buckets(integer, boolean) IS
    'internal: re-cuts the rank buckets that grew (or all of them); holds every award while it runs. Owner only.';
COMMENT ON FUNCTION pyxp.rank_problems() IS
    'internal: rank buckets and period board counts that differ from the balances they count (for pyxp.audit).';
