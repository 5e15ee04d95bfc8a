-- 0013: the rank buckets' probe reads xp_rank_counts' primary key (issue 11). Frozen copy of
-- what sql/*.sql defines at this revision; never edit it.
--
-- pyxp.rank_bucket_of (the writer probes it twice per moved balance, wallet_rank once):
-- planned on a table its statistics still saw small, a probe read the whole table and
-- sorted it for the top row (58 us a probe against 2.6 us at a few thousand count rows),
-- in every backend whose cached plan was made then. It gains a plain bound on neg_xp that
-- repeats its row comparison (an index bound the planner can price), and
-- pyxp.rebalance_rank_buckets ends with ANALYZE of the table. Functions only (statistics of
-- a table as it is now, small on a new database, would be the stale ones: left to the
-- rebalance and autovacuum).
SET LOCAL ROLE pyxp_owner;

CREATE OR REPLACE FUNCTION pyxp.rank_bucket_of(p_total_xp bigint, p_wallet text)
RETURNS TABLE (neg_xp bigint, wallet text)
LANGUAGE sql STABLE
AS $$
    SELECT c.neg_xp, c.wallet FROM pyxp.xp_rank_counts c
     WHERE c.neg_xp <= -p_total_xp AND (c.neg_xp, c.wallet) <= (-p_total_xp, p_wallet COLLATE "C")
       AND c.slot = 0
     ORDER BY c.neg_xp DESC, c.wallet DESC
     LIMIT 1
$$;

CREATE OR REPLACE FUNCTION pyxp.rebalance_rank_buckets(bucket_size integer DEFAULT 1024, full_rebuild boolean DEFAULT false)
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
    LOCK TABLE pyxp.xp_balances IN SHARE ROW EXCLUSIVE MODE;
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
    UPDATE pyxp.xp_balances SET ranked = true WHERE NOT ranked;
    -- Empty buckets: their (no) balances join the bucket before.
    DELETE FROM pyxp.xp_rank_counts c
     WHERE c.wallets = 0 AND c.neg_xp > -9223372036854775807;
    v_full := v_full OR (SELECT count(*) > 2 * (sum(c.wallets) / v_size + 1) FROM pyxp.xp_rank_counts c);
    IF v_full THEN
        DELETE FROM pyxp.xp_rank_counts c WHERE c.neg_xp > -9223372036854775807;
        UPDATE pyxp.xp_rank_counts c SET wallets = (SELECT count(*) FROM pyxp.xp_balances);
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
    -- Fresh statistics for the bucket probes (pyxp.rank_bucket_of): planned
    -- on a table the statistics still saw small, a probe read and sorted the
    -- whole table (58 us a probe against 2.6 us at a few thousand rows), in
    -- every backend whose cached plan was made then. ANALYZE also makes those
    -- backends plan again. A few milliseconds (0013).
    ANALYZE pyxp.xp_rank_counts;
    RETURN QUERY SELECT count(*), v_recut FROM pyxp.xp_rank_counts c;
END
$$;

