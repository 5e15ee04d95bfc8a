-- 0036: the owner operations that hold every award (a ruleset's activation,
-- recalculate_levels, rebalance_rank_buckets, apply_rules_retroactively,
-- adopt_cluster) name who held pyxp.xp_balances when their lock_timeout
-- ran out: a prepared transaction by its gid, a session by its pid (55P03).
-- The writer plans a call of one row (a single award, a reversal, a flow
-- call of one rule) without the window, sorts and aggregates that order a
-- call's rows (pyxp.append_rows, step 2). A period read at PostgreSQL's
-- first timestamps is refused with PX026, as at its last (pyxp.period_bounds).
-- pyxp.schema_revision() says the revision of the functions, which a logical
-- replication does not copy (it copies pyxp.alembic_version).
SET LOCAL ROLE pyxp_owner;

-- The revision whose functions this database has: every revision from 0036
-- on replaces it with its own number (and its downgrade with the one before).
-- pyxp.alembic_version says the same, but a table is copied by a logical
-- replication that publishes it (FOR ALL TABLES) and a function is not:
-- pyxp db current and pyxp db upgrade refuse a database whose two differ
-- (pyxp/schema.py, revision_mismatch; a hostile test, 0036: a subscriber
-- said 0036 with 0035's functions, and pyxp db upgrade did nothing there).
CREATE FUNCTION pyxp.schema_revision()
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$ SELECT '0036' $$;

REVOKE ALL ON FUNCTION pyxp.schema_revision() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pyxp.schema_revision() TO pyxp_writer, pyxp_reader;
COMMENT ON FUNCTION pyxp.schema_revision() IS
    'API: the revision of pyxp whose functions this database has (pyxp db current compares it with pyxp.alembic_version, which a logical replication may copy).';

-- Holds every award: SHARE ROW EXCLUSIVE on pyxp.xp_balances, which waits
-- for the awards in flight and holds new ones until the caller commits (a
-- ruleset's activation, recalculate_levels, rebalance_rank_buckets,
-- apply_rules_retroactively, adopt_cluster). It waits at most the caller's
-- lock_timeout; then 55P03 (the same code: a caller's retry still applies)
-- names who held the table when the wait ended: a prepared transaction
-- (two-phase commit), which no session will end, by its gid; a session by
-- its pid (with its state and transaction start where pyxp_owner may see
-- them: its own sessions, or as a member of pg_read_all_stats). Before 0036 the bare
-- "canceling statement due to lock timeout" left a DBA to find a prepared
-- award alone (a hostile test). The exception block is a subtransaction:
-- owner operations only, never an award's path.
CREATE FUNCTION pyxp.hold_awards(p_caller text)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_holders text;
    v_prepared boolean;
BEGIN
    LOCK TABLE pyxp.xp_balances IN SHARE ROW EXCLUSIVE MODE;
EXCEPTION WHEN lock_not_available THEN
    SELECT string_agg(h.holder, '; ' ORDER BY h.since NULLS LAST, h.holder), bool_or(h.prepared)
      INTO v_holders, v_prepared
      FROM (SELECT DISTINCT
                   CASE WHEN l.pid IS NULL
                        THEN 'prepared transaction'
                             || coalesce(format(' %s (prepared %s by %s)', quote_literal(p.gid), p.prepared, p.owner), '')
                        ELSE format('session pid %s', l.pid)
                             || coalesce(format(' (%s, transaction started %s)', a.state, a.xact_start), '')
                   END AS holder,
                   coalesce(p.prepared, a.xact_start) AS since,
                   l.pid IS NULL AS prepared
              FROM pg_catalog.pg_locks l
              -- A prepared transaction's locks have no pid; its transaction id's
              -- lock has the same virtualtransaction.
              LEFT JOIN pg_catalog.pg_locks x
                     ON l.pid IS NULL AND x.pid IS NULL AND x.locktype = 'transactionid'
                    AND x.virtualtransaction = l.virtualtransaction
              LEFT JOIN pg_catalog.pg_prepared_xacts p ON p.transaction = x.transactionid
              LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'relation' AND l.granted
               AND l.relation = 'pyxp.xp_balances'::regclass
               AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = current_database())
               AND l.pid IS DISTINCT FROM pg_backend_pid()) h;
    RAISE EXCEPTION '% could not hold the awards within lock_timeout (%): %', p_caller,
                    current_setting('lock_timeout'),
                    coalesce('pyxp.xp_balances is held by ' || v_holders,
                             'the transactions that held pyxp.xp_balances have ended since')
        USING ERRCODE = '55P03',
              HINT = CASE WHEN v_prepared
                          THEN 'a prepared transaction holds it until COMMIT PREPARED or ROLLBACK PREPARED '
                               '(pg_prepared_xacts; its coordinator should end it); then run this again'
                          WHEN v_holders IS NOT NULL
                          THEN 'end that transaction (pg_stat_activity shows it by its pid; '
                               'pg_terminate_backend(pid) ends it), then run this again'
                          ELSE 'run this again' END;
END
$$;

REVOKE ALL ON FUNCTION pyxp.hold_awards(text) FROM PUBLIC;
COMMENT ON FUNCTION pyxp.hold_awards(text) IS
    'internal: SHARE ROW EXCLUSIVE on xp_balances (every award held); past lock_timeout, 55P03 naming the holders.';

-- Re-derives current_level and xp_to_next_level of every balance from the
-- active curve, in one set-based UPDATE. Returns the number of rows changed.
-- Owner only (SPEC 7): its lock holds every award until it commits, so a
-- writer that could call it and leave its transaction open would stall them
-- all. It waits at most 10 s for awards in flight (lock_timeout), so a
-- transaction left open by a writer cannot queue every later award behind
-- it either: it fails (55P03) and awards go on.
CREATE OR REPLACE FUNCTION pyxp.recalculate_levels()
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET lock_timeout = '10s'
AS $$
DECLARE
    v_ruleset bigint;
    v_changed bigint;
BEGIN
    PERFORM pyxp.require_read_committed();
    PERFORM pyxp.hold_awards('pyxp.recalculate_levels');
    v_ruleset := pyxp.active_ruleset_id();
    WITH target AS (
        SELECT b.user_wallet, c.level, (c.next_level_xp - b.total_xp)::bigint AS to_next
        FROM pyxp.xp_balances b
        CROSS JOIN LATERAL pyxp.curve_position(v_ruleset, b.total_xp) c
    )
    UPDATE pyxp.xp_balances b
       SET current_level = t.level, xp_to_next_level = t.to_next, updated_at = now()
      FROM target t
     WHERE b.user_wallet = t.user_wallet
       AND (b.current_level, b.xp_to_next_level) IS DISTINCT FROM (t.level, t.to_next);
    GET DIAGNOSTICS v_changed = ROW_COUNT;
    RETURN v_changed;
END
$$;

-- Installs a compiled ruleset (from pyxp.ruleset_config) and, unless
-- activate is false, makes it active. Same content as the active version:
-- nothing changes. Same content as an older version of that name: that
-- version is (re-)activated. Otherwise a new version (max + 1) is created.
-- Activation re-derives every balance's level. Old versions stay: ledger
-- rows keep their rule ids. activate => false installs a version to
-- simulate (pyxp.simulate_rules) or to apply later.
CREATE OR REPLACE FUNCTION pyxp.install_ruleset(definition jsonb, source text, activate boolean DEFAULT true)
RETURNS TABLE (ruleset_id bigint, name text, version integer, created boolean, activated boolean,
               balances_changed bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET lock_timeout = '10s'  -- see recalculate_levels: never queue every award behind an open transaction
AS $$
DECLARE
    v_name text := install_ruleset.definition ->> 'name';
    v_hash text := encode(sha256(convert_to(install_ruleset.definition::text, 'UTF8')), 'hex');
    v_found pyxp.rulesets;
    v_id bigint;
    v_created boolean := false;
BEGIN
    PERFORM pyxp.check_ruleset_definition(install_ruleset.definition);
    IF install_ruleset.source IS NULL THEN
        RAISE EXCEPTION 'invalid ruleset definition %: source is NULL', quote_literal(v_name)
            USING ERRCODE = 'PX024', HINT = 'pass the TOML text the definition was compiled from';
    END IF;
    PERFORM pyxp.require_read_committed();
    PERFORM pyxp.follow_timeline();  -- (a failover or a point-in-time recovery: the ids move past the history left, 0033)
    PERFORM pyxp.require_ledger_cluster();  -- (PX032: ids of the rulesets' sequence may be taken, 0032)
    -- Installers queue on the rulesets table (version numbers); awards only
    -- read it, so an install that does not activate holds no award. The
    -- awards' lock is taken only to activate (pyxp.activate_ruleset).
    LOCK TABLE pyxp.rulesets IN SHARE ROW EXCLUSIVE MODE;
    IF install_ruleset.activate THEN
        PERFORM pyxp.hold_awards('pyxp.install_ruleset');
    END IF;

    SELECT * INTO v_found FROM pyxp.rulesets r WHERE r.name = v_name AND r.content_hash = v_hash;
    IF v_found.is_active OR (v_found.ruleset_id IS NOT NULL AND NOT install_ruleset.activate) THEN
        RETURN QUERY SELECT v_found.ruleset_id, v_found.name, v_found.version, false, false, 0::bigint;
        RETURN;
    END IF;

    IF v_found.ruleset_id IS NOT NULL THEN
        v_id := v_found.ruleset_id;
    ELSE
        INSERT INTO pyxp.rulesets (name, version, content_hash, definition, source, description, balance_floor,
                                   timezone, has_caps)
        SELECT v_name,
               coalesce((SELECT max(r.version) FROM pyxp.rulesets r WHERE r.name = v_name), 0) + 1,
               v_hash, install_ruleset.definition, install_ruleset.source,
               install_ruleset.definition ->> 'description', d.balance_floor, d.timezone, d.has_caps
          FROM pyxp.definition_settings(install_ruleset.definition) d
        RETURNING rulesets.ruleset_id INTO v_id;

        INSERT INTO pyxp.level_thresholds (ruleset_id, level, threshold, increment, is_last)
        SELECT v_id, l.* FROM pyxp.definition_levels(install_ruleset.definition) l;

        INSERT INTO pyxp.rules (ruleset_id, position, action, event, campaign_types, condition,
                                formula, xp_constant, xp_coefficients, description, cap_max_xp, cap_per, cap_group)
        SELECT v_id, r.* FROM pyxp.definition_rules(install_ruleset.definition) r;
        v_created := true;
    END IF;

    IF NOT install_ruleset.activate THEN
        RETURN QUERY SELECT r.ruleset_id, r.name, r.version, v_created, false, 0::bigint
                       FROM pyxp.rulesets r WHERE r.ruleset_id = v_id;
        RETURN;
    END IF;
    RETURN QUERY
        SELECT r.ruleset_id, r.name, r.version, v_created, true, pyxp.activate_ruleset(v_id)
        FROM pyxp.rulesets r WHERE r.ruleset_id = v_id;
END
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

-- Owner (SPEC 13): activates ruleset version ruleset_id and appends, for each
-- wallet whose simulated total differs from its balance, one
-- RULES_ADJUSTMENT row of the difference (metadata names the version), so
-- that every balance equals pyxp.simulate_rules(ruleset_id). One
-- transaction: SHARE ROW EXCLUSIVE on rulesets, then on xp_balances (the
-- ruleset-switch lock of sql/04_rulesets.sql, in install_ruleset's order),
-- so awards in flight finish before the simulation reads the ledger and new
-- ones wait for the commit: none is lost or counted twice. The rows go
-- through the one writer (pyxp.append_rows), each a claim of the key
-- rules.adjustment:<ruleset_id>:<transaction id>.<application>:<wallet>
-- (<application>: pyxp.retroactive_applications; before 0027, none).
-- Idempotent by the numbers: applying a version again adds only the
-- differences left (none if nothing changed since; after a reversal, or
-- another version applied meanwhile, what brings every balance back to
-- this version's simulation).
CREATE OR REPLACE FUNCTION pyxp.apply_rules_retroactively(ruleset_id bigint)
RETURNS TABLE (ruleset_id_applied bigint, name text, version integer, already_applied boolean,
               wallets_adjusted bigint, xp_adjusted numeric, balances_changed bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET lock_timeout = '10s'  -- see recalculate_levels: never queue every award behind an open transaction
SET jit = off
AS $$
DECLARE
    v_ruleset pyxp.rulesets := pyxp.checked_ruleset(apply_rules_retroactively.ruleset_id);
    v_levels bigint;
    v_chunk pyxp.pending_row[];
    v_wallets bigint := 0;
    v_xp numeric := 0;
    v_call bigint := nextval('pyxp.retroactive_applications');
BEGIN
    PERFORM pyxp.require_read_committed();
    -- (a failover or a point-in-time recovery: the ids move past the history
    -- left, 0033; a review found this writer, which takes its own locks
    -- rather than pyxp.writing_ruleset's, writing there without it)
    PERFORM pyxp.follow_timeline();
    -- Installers' lock first, then the awards' (the order of install_ruleset).
    LOCK TABLE pyxp.rulesets IN SHARE ROW EXCLUSIVE MODE;
    PERFORM pyxp.hold_awards('pyxp.apply_rules_retroactively');
    v_levels := pyxp.activate_ruleset(v_ruleset.ruleset_id);
    -- Wallets in order, 10,000 per call of the writer.
    FOR v_chunk IN
        SELECT array_agg(ROW(0, d.user_wallet, d.key,
                             jsonb_build_object('action', 'RULES_ADJUSTMENT', 'wallet', d.user_wallet,
                                                'ruleset_id', v_ruleset.ruleset_id),
                             'RULES_ADJUSTMENT', d.delta, NULL, false, NULL, NULL, NULL,
                             jsonb_build_object('ruleset_id', v_ruleset.ruleset_id, 'ruleset', v_ruleset.name,
                                                'version', v_ruleset.version, 'total_xp_before', d.now_xp,
                                                'reason', 'retroactive application of the rules'),
                             NULL, 0)::pyxp.pending_row ORDER BY d.user_wallet)
          FROM (SELECT s.user_wallet, s.total_xp_then - s.total_xp_now AS delta, s.total_xp_now AS now_xp,
                       format('rules.adjustment:%s:%s.%s:%s', v_ruleset.ruleset_id, pyxp.ledger_xid(pg_current_xact_id()),
                              v_call, s.user_wallet) AS key,
                       (row_number() OVER (ORDER BY s.user_wallet) - 1) / 10000 AS chunk
                  FROM pyxp.simulated_totals(v_ruleset.ruleset_id) s
                 WHERE pyxp.checked_simulated_total(s.user_wallet, s.total_xp_then) <> s.total_xp_now) d
         GROUP BY d.chunk
         ORDER BY d.chunk
    LOOP
        PERFORM pyxp.counted_transaction_rows(cardinality(v_chunk));  -- the feed's bound (sql/11_changes.sql)
        PERFORM FROM pyxp.append_rows(v_ruleset.ruleset_id, v_ruleset.balance_floor, v_ruleset.timezone,
                                      v_ruleset.has_caps, v_chunk, true);
        v_wallets := v_wallets + cardinality(v_chunk);
        v_xp := v_xp + (SELECT sum(c.xp_amount) FROM unnest(v_chunk) c);
    END LOOP;
    IF v_wallets > 0 THEN
        UPDATE pyxp.rulesets r SET applied_retroactively_at = now() WHERE r.ruleset_id = v_ruleset.ruleset_id;
    END IF;
    RETURN QUERY SELECT v_ruleset.ruleset_id, v_ruleset.name, v_ruleset.version, v_wallets = 0, v_wallets, v_xp,
                        v_levels;
END
$$;

-- Makes the ledger this cluster's where it is not (one row; none when it is).
-- Owner only. It is not, when the ledger names another cluster or another
-- timeline of this one, or when what it holds runs ahead of this cluster:
-- a feed group, a checkpoint's
-- xmin or an archive's floor at or above this cluster's next transaction id
-- (as the ledger counts it), or an identity sequence behind its table's
-- highest id. Its name is no proof: a physical clone promoted to run on its
-- own keeps the system identifier, and rows replicated back to a cluster
-- after a failback carry the other one's ids (a re-test of 0032 reused ids
-- both ways). Then, holding every award (SHARE ROW EXCLUSIVE on
-- xp_balances, the lock protocol of sql/04_rulesets.sql) and every move or
-- archive (pyxp.lock_ledger_partitions):
--   * xid_offset: the highest transaction id the ledger holds, plus the
--     margin below, less the oldest of this cluster that may still write
--     it (this transaction's, or an older one running here), plus 1; on
--     this cluster, never below the offset the ledger had (plus the
--     margin); 0 on a new cluster whose ids already run higher. From then
--     on the ledger counts this cluster's ids plus it (pyxp.ledger_xid):
--     every new group is above every old one, so a consumer's cursor goes
--     on, exactly once, and the incremental audit covers the new rows. The
--     order of this cluster's ids is kept: the feed's and the checkpoints'
--     proofs hold as they are.
--   * the margin, pyxp.fork_margin() (2^31) for each timeline passed, at
--     most 4 (one for a copy, or rows ahead), where the ledger holds rows and may
--     have left a history behind: a new timeline of this cluster, a copy,
--     rows ahead of it. The history left may have gone on (the
--     rows of a primary a promoted standby had not received; those after a
--     recovery's target, or after a dump was taken), and consumers and
--     clients hold its cursors and ids, which this database cannot see.
--     Every new group starts at least the margin above what the ledger
--     holds and above this timeline's ids before: a cursor handed out
--     within the margin past what the ledger kept is refused (PX033,
--     pyxp.forked_cursor), not answered with a skip. One row of
--     xp_ledger_forks records it.
--   * every sequence of a pyxp table's identity column is advanced past
--     the highest id the table holds (the ledger's: archived ones too),
--     and by the margin past its own value too where it is applied (a lost
--     history's ids are not handed out again: a reversal of one is refused
--     as unknown, not applied to another wallet's row);
--   * pyxp.ledger_cluster(), pyxp.ledger_timeline() and pyxp.xid_offset()
--     are written anew (their callers' cached plans are invalidated with
--     them).
-- It runs twice at once when two writers meet a new timeline together: the
-- second, once it has the locks, finds nothing left to do.
-- A database subscribing to pyxp's tables (pyxp.subscribes_to_the_ledger)
-- is a copy still being written by its publisher: its ledger is named
-- cluster 0, which no cluster is (every write and read of the feed refuses,
-- PX032), until an adoption once the subscription is dropped (the
-- switchover). Migration 0032 runs this at its end: a subscriber that
-- installs it is not adopted early.
CREATE OR REPLACE FUNCTION pyxp.adopt_cluster()
RETURNS TABLE (previous_cluster bigint, this_cluster bigint, xid_offset bigint, sequences_advanced text[],
               previous_timeline integer, this_timeline integer)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET lock_timeout = '10s'  -- (recalculate_levels': never queue every award behind an open transaction)
AS $$
DECLARE
    v_this bigint;
    v_timeline integer;
    v_locked boolean := false;
    v_highest numeric;
    v_oldest numeric;
    v_behind boolean;
    v_margin bigint := 0;
    v_sequence record;
    v_snapshot pg_snapshot;
BEGIN
    BEGIN
        v_this := (pg_control_system()).system_identifier;
    EXCEPTION WHEN insufficient_privilege THEN
        v_this := NULL;  -- (a service that hides it: nothing is refused)
    END;
    IF pyxp.subscribes_to_the_ledger() THEN
        v_this := 0;  -- a subscriber: not this cluster's until its switchover
    END IF;
    IF has_function_privilege('pg_catalog.pg_walfile_name(pg_lsn)', 'EXECUTE')
       AND has_function_privilege('pg_catalog.pg_current_wal_insert_lsn()', 'EXECUTE') THEN
        v_timeline := pyxp.current_timeline();
    END IF;  -- (else not known: nothing compares it)
    <<look>>
    LOOP
        v_highest := pyxp.highest_ledger_xid();
        v_behind := EXISTS (SELECT FROM pyxp.identity_sequences() q WHERE q.behind);
        -- Nothing to do (looked at again under the locks: another adoption,
        -- a writer's on the same new timeline, may have committed meanwhile).
        IF pyxp.ledger_cluster() IS NOT DISTINCT FROM v_this AND pyxp.ledger_timeline() IS NOT DISTINCT FROM v_timeline
           AND NOT v_behind
           AND coalesce(v_highest, 0) < pyxp.ledger_xid(pg_snapshot_xmax(pg_current_snapshot()))::text::numeric THEN
            RETURN;
        END IF;
        EXIT look WHEN v_locked;
        PERFORM pyxp.require_read_committed();
        PERFORM pyxp.hold_awards('pyxp.adopt_cluster');
        PERFORM pyxp.lock_ledger_partitions();
        v_locked := true;
    END LOOP;
    -- The oldest transaction of this cluster that may still write: this one,
    -- one the snapshot saw running, or one at or above its xmax (a snapshot
    -- lists the running ids below its xmax only: a batch that took its id
    -- before this one and waits for the locks above was left out, and its
    -- rows landed below the fork's resumed_group: a re-test of 0033).
    v_snapshot := pg_current_snapshot();
    v_oldest := least(pg_current_xact_id()::text::numeric,
                      pyxp.oldest_running_here(v_snapshot)::text::numeric,
                      pg_snapshot_xmax(v_snapshot)::text::numeric);
    previous_cluster := pyxp.ledger_cluster();
    this_cluster := v_this;
    previous_timeline := pyxp.ledger_timeline();
    this_timeline := v_timeline;
    -- A history may have been left behind (the margin, above): a new
    -- timeline, a copy, rows ahead of this cluster. Not the first adoption
    -- of a ledger with no rows, nor the first record of its timeline.
    -- One margin per timeline passed, at most 4: a ledger still naming
    -- timeline 1 on timeline 3 may have been adopted on timeline 2 by writes
    -- this server never received (its standby was cut off first), whose ids
    -- ran up to a margin past that adoption's (a re-test of 0033: a second
    -- failover took them again). At most 4: timeline numbers also jump
    -- without writes (recovery attempts abandoned), and each margin spends
    -- one of the 256 the cursors hold (a review).
    IF v_highest IS NOT NULL
       AND (previous_cluster IS DISTINCT FROM v_this OR previous_timeline <> v_timeline
            OR v_highest >= pyxp.ledger_xid(pg_snapshot_xmax(pg_current_snapshot()))::text::numeric) THEN
        v_margin := pyxp.fork_margin()
                    * CASE WHEN previous_cluster IS NOT DISTINCT FROM v_this AND previous_timeline < v_timeline
                           THEN least(v_timeline - previous_timeline, 4) ELSE 1 END;
    END IF;
    IF v_margin > 0 OR previous_cluster IS DISTINCT FROM v_this THEN
        adopt_cluster.xid_offset := greatest(coalesce(v_highest, 0) + v_margin + 1 - v_oldest,
                                             CASE WHEN previous_cluster IS NOT DISTINCT FROM v_this
                                                  THEN pyxp.xid_offset() + v_margin ELSE 0 END,
                                             0);
    ELSE
        adopt_cluster.xid_offset := pyxp.xid_offset();  -- (the timeline recorded, or a sequence behind)
    END IF;
    -- Cursors are a group times 2^24 in a bigint: groups stay below 2^39. An
    -- adoption that would start them within a margin of it is refused
    -- (nothing written; a re-test of 0033 put a cluster on timeline 257, and
    -- the new rows' cursors wrapped negative, before the old ones). Before
    -- the sequences move: setval is not undone by a rollback (a third check
    -- found every refused write moving them 2^39).
    IF v_oldest + adopt_cluster.xid_offset >= 549755813888 - pyxp.fork_margin() THEN
        RAISE EXCEPTION 'adopting this ledger would number its transaction ids from %, past what its change feed''s cursors can hold (2^39, less a margin of 2^31)',
                        v_oldest + adopt_cluster.xid_offset
            USING ERRCODE = 'PX031',
                  DETAIL = format('offset %s, %s margins of 2^31 (timeline %s after %s)', adopt_cluster.xid_offset,
                                  v_margin / pyxp.fork_margin(), v_timeline, previous_timeline),
                  HINT = 'see README "Failovers and point-in-time recovery", its limits: this ledger cannot follow another timeline';
    END IF;
    sequences_advanced := '{}';
    FOR v_sequence IN
        SELECT q.*, CASE WHEN q.sequence = 'pyxp.xp_ledger_forks_fork_id_seq'::regclass THEN 0  -- (its rows are adoptions')
                         ELSE v_margin END AS step
          FROM pyxp.identity_sequences() q
    LOOP
        IF v_sequence.step > 0 OR v_sequence.behind THEN
            PERFORM setval(v_sequence.sequence, greatest(v_sequence.highest, v_sequence.last_value) + v_sequence.step);
            sequences_advanced := sequences_advanced || v_sequence.label;
        END IF;
    END LOOP;
    IF v_margin > 0 THEN
        INSERT INTO pyxp.xp_ledger_forks (previous_cluster, this_cluster, previous_timeline, this_timeline,
                                          kept_cursor, resumed_group, margin)
        VALUES (previous_cluster, v_this, previous_timeline, v_timeline, pyxp.kept_cursor(v_highest),
                v_oldest + adopt_cluster.xid_offset, v_margin);
    END IF;
    EXECUTE format('CREATE OR REPLACE FUNCTION pyxp.ledger_cluster() RETURNS bigint LANGUAGE sql STABLE PARALLEL SAFE '
                   'AS %L', format('SELECT %s::bigint', coalesce(v_this::text, 'NULL')));
    EXECUTE format('CREATE OR REPLACE FUNCTION pyxp.ledger_timeline() RETURNS integer LANGUAGE sql STABLE PARALLEL SAFE '
                   'AS %L', format('SELECT %s::integer', coalesce(v_timeline::text, 'NULL')));
    EXECUTE format('CREATE OR REPLACE FUNCTION pyxp.xid_offset() RETURNS bigint LANGUAGE sql STABLE PARALLEL SAFE '
                   'AS %L', format('SELECT %s::bigint', adopt_cluster.xid_offset));
    RETURN NEXT;
END
$$;

-- THE writer (see the top of this file). p_rows: the rows of one call (all
-- one wallet; p_batch false) or of a batch's events (p_batch true: error
-- messages name the event), in the order their ids must follow. Returns one
-- row per pending row with a transaction_type, new or replayed, in that order.
-- p_ruleset, p_floor, p_timezone, p_caps: the writing ruleset
-- (pyxp.writing_ruleset): its curve, balance floor, period zone, and whether
-- any of its rules is capped (sql/07_periods.sql).
--
-- Five small statements, each set-based over the rows (one row for a single
-- award): lock the wallets; find the claims and compute the running
-- balances; insert; update each balance once; return. Four for a single call:
-- its lock is taken by the second (0020; under caps since 0021). Per-row results
-- travel in arrays zipped with ROWS FROM, and every lookup is an index probe
-- (LATERAL ... LIMIT 1): nothing is joined back by value, so a batch of
-- 10,000 rows costs 10,000 times a row, not 10,000 squared (one statement
-- with CTEs joined by value did: a batch of 1,000 ran 5 times slower).
CREATE OR REPLACE FUNCTION pyxp.append_rows(p_ruleset bigint, p_floor bigint, p_timezone text, p_caps boolean,
                                 p_rows pyxp.pending_row[], p_batch boolean)
RETURNS SETOF pyxp.batch_award_result
LANGUAGE plpgsql
AS $$
DECLARE
    v_rows pyxp.pending_row[] := p_rows;
    v_wallet text := p_rows[1].user_wallet;
    v_claims bigint[];       -- per row: the ledger row that claimed its key before (a replay)
    v_claimed_at timestamptz[];  -- and that row's created_at (pyxp.claimed_row)
    v_after numeric[];       -- per row: the wallet's balance after it (range-checked before any cast)
    v_feed xid8[];           -- per row: its feed group
    v_seq bigint[];          -- per row: its wallet_seq (its position in its wallet's history)
    v_ids bigint[];          -- per row: the id it got (NULL: replayed, or no row)
    v_conflict_ord integer;  -- the first row whose key a call with other inputs claimed
    v_range_ord integer;     -- a row whose balance would leave [-2^62, 2^62]
    v_expected integer;      -- rows to insert
    v_inserted integer;
    v_applied numeric[];     -- per row: what applies of it (a capped gain: what is left of its allowance)
    v_allowance text[];      -- per row: the allowance a capped gain uses (pyxp.cap_allowance), else NULL
    v_period timestamptz[];  -- and the start of its period
    v_floored boolean := false;
    v_now timestamptz := now();  -- the new rows' time (below: under caps, no earlier than the activation)
    v_at timestamptz;        -- the new rows' effective time (periods)
    v_reversed_at timestamptz;  -- a reversal's original's created_at
    v_day timestamptz;
    v_week timestamptz;
    v_month timestamptz;
    v_year timestamptz;
    v_waited boolean;        -- a single capped call locked a version newer than its snapshot's (step 2)
    v_slot integer;          -- the rank counts' slot of this transaction (step 4)
    v_set text;              -- (set_config's result)
    v_problem record;
    v_one pyxp.pending_row;  -- the row of a call of one row (step 2)
BEGIN
    IF coalesce(cardinality(v_rows), 0) = 0 THEN
        RETURN;
    END IF;
    -- Called by a trigger that step 3 of another call fired (an application's
    -- trigger on the ledger or the claims that awards or reverses): that
    -- call's rows are in the ledger and its balances not updated yet, so this
    -- call would read them stale and the other call would then write over
    -- this one's balance (0035, a hostile test: a +2 bonus in the ledger,
    -- missing from the balance, two rows at one wallet_seq). Refused before
    -- anything is written. Triggers on the balances fire after step 4: an
    -- award there sees the updated balance, and is accepted.
    IF current_setting('pyxp.appending_rows', true) = pg_current_xact_id_if_assigned()::text THEN
        RAISE EXCEPTION 'a writing function of pyxp was called by a trigger fired while another call inserted its ledger rows'
            USING ERRCODE = 'PX034',
                  DETAIL = 'that call has not updated its balances yet: this call would read them stale, and that one write over this one''s',
                  HINT = 'award after the call returns, or from a trigger on pyxp.xp_balances or on a table of your own';
    END IF;
    IF pyxp.ledger_cluster() <> (pg_control_system()).system_identifier THEN
        PERFORM pyxp.require_ledger_cluster();  -- PX032: a ledger copied from another cluster (0032)
    END IF;
    IF pyxp.ledger_timeline() <> pyxp.current_timeline() THEN
        -- Every writing function adopts a new timeline before it takes its
        -- locks (pyxp.follow_timeline, 0033); a path that did not would
        -- write ids the history left behind had used.
        RAISE EXCEPTION 'internal: a write on timeline % of a ledger adopted on timeline %', pyxp.current_timeline(),
                        pyxp.ledger_timeline()
            USING HINT = 'the writing function must call pyxp.follow_timeline() before its locks';
    END IF;
    -- Under caps, a row is dated no earlier than the activation of the
    -- ruleset it is written under: a transaction that began before the
    -- switch (an application's, or an award queued behind the switch's lock)
    -- would otherwise count in a period of the new zone that began before
    -- the switch, which the switch did not count (pyxp.seed_cap_usage: the
    -- period containing the activation), and get a fresh allowance there
    -- (0027, a hostile test: +100 over a used 250-per-day allowance). Its
    -- cap, its row and its periods all take this time.
    IF p_caps THEN
        v_now := greatest(v_now, (SELECT r.activated_at FROM pyxp.rulesets r WHERE r.ruleset_id = p_ruleset));
    END IF;
    -- 1. The wallets' row locks. A batch: each row created if missing or
    --    locked if present, one statement, strictly in wallet order (creating
    --    the missing rows first and locking the others after let a batch hold
    --    a new wallet's row while waiting for an older one that a caller
    --    awarding in wallet order held: a deadlock, 40P01); DO UPDATE ...
    --    WHERE false locks a present row without writing a version of it.
    --    One wallet (a single award, a flow, a reversal): locked by step 2
    --    itself (FOR UPDATE in its read of the balance: one statement less on
    --    the hot path, 0020; under caps too since 0021); a wallet without a
    --    balance row gets one there, and step 2 runs again.
    IF p_batch THEN
        INSERT INTO pyxp.xp_balances AS x (user_wallet, total_xp, current_level, xp_to_next_level)
        SELECT w.user_wallet, 0, c.level, c.next_level_xp::bigint
          FROM (SELECT DISTINCT r.user_wallet FROM unnest(v_rows) r) w
         CROSS JOIN pyxp.curve_position(p_ruleset, 0) c
         ORDER BY w.user_wallet COLLATE "C"  -- code-point order, whatever the database's collation (0034)
        ON CONFLICT (user_wallet) DO UPDATE SET updated_at = x.updated_at WHERE false;
    END IF;
    <<planning>>
    LOOP
    -- 2. The balances, locked (FOR UPDATE: the latest version, after any
    --    holder's commit), and each generic award's claim made before (a
    --    replay, or PX010 for other inputs). A batch, locked in step 1: this
    --    statement's snapshot sees what the locks' previous holders
    --    committed. A single call's lock is taken here, after the snapshot:
    --    a claim committed by the holder it waited for (the same award, made
    --    concurrently) is not seen, and step 3's claim INSERT, which waits
    --    for it, skips the row: the call then runs again as a replay (below;
    --    under caps the reread that follows sees the claim first).
    --    Caps (SPEC 12; only when the ruleset has a capped rule): each new
    --    capped gain is cut to what is left of its allowance in the current
    --    period (xp_cap_usage), in row order: within one call an allowance's
    --    gains only add up, so the k-th applies least(C_k, L) - least(C_k-1, L),
    --    C the running sum of the gains asked, L what was left. That usage
    --    must include what the lock's previous holder committed, which this
    --    statement's snapshot may not hold: a single call compares the
    --    balance version it locked with the one its snapshot sees (ctid:
    --    every update writes a new version). Different, a writer of the
    --    wallet committed after the snapshot (it waited for it, or it
    --    committed just before the lock): step 2 runs again, the lock held,
    --    in a snapshot taken after that commit (0021; a statement of its own
    --    taking the lock first cost every capped award a statement).
    --    Then the running balances, per wallet in row order, and the feed
    --    group (sql/11_changes.sql: this transaction's id, or the wallet's
    --    last group if higher).
    -- Without caps the same statement without the caps' lookups and window
    -- (every plan node costs its start-up on every award).
    -- The arrays are aggregated from rows already in call order (the
    -- subquery's ORDER BY): a plain aggregate over one sorted subquery reads
    -- it in that order (no join, no grouping, no parallel plan above it),
    -- where array_agg(... ORDER BY) sorted its input once per array, eight
    -- to ten sorts per call (0035).
    -- A call of one row (a single award, a reversal, a flow call of one
    -- rule; not a batch, whose rows step 1 locked): the same statement
    -- without the window, the sorts and the aggregates that order a call's
    -- rows, and with or without the caps (0036: every plan node costs its
    -- start-up at every award, and the caps' lookups' start-up is paid
    -- even when no rule is capped: about 3 % of a single award's
    -- instructions, capped or not, README "Performance"). A capped gain
    -- alone in its call applies least(its amount, what is left).
    IF NOT p_batch AND cardinality(v_rows) = 1 AND NOT p_caps THEN
        v_one := v_rows[1];
        SELECT ARRAY[x.claim_id], ARRAY[x.after], ARRAY[x.feed], CASE WHEN x.conflict THEN 1 END,
               CASE WHEN abs(x.after) > pyxp.balance_limit() THEN 1 END, x.written,
               ARRAY[x.last_wallet_seq + x.written], ARRAY[x.claimed_at]
          INTO v_claims, v_after, v_feed, v_conflict_ord, v_range_ord, v_expected, v_seq, v_claimed_at
          FROM (SELECT k.id AS claim_id, k.created_at AS claimed_at,
                       k.id IS NOT NULL AND (k.request_digest <> pyxp.inputs_digest(v_one.inputs)
                                             OR k.idempotency_key <> v_one.idempotency_key) AS conflict,
                       b.total_xp + CASE WHEN k.id IS NULL THEN v_one.xp_amount END AS after,
                       b.last_wallet_seq, (k.id IS NULL AND v_one.transaction_type IS NOT NULL)::integer AS written,
                       greatest(pyxp.ledger_xid(pg_current_xact_id()), b.last_feed_xid) AS feed
                  FROM (SELECT b.total_xp, b.last_feed_xid, b.last_wallet_seq FROM pyxp.xp_balances b
                         WHERE b.user_wallet = v_one.user_wallet LIMIT 1 FOR UPDATE) b
                  LEFT JOIN LATERAL (SELECT c.transaction_id, c.created_at FROM pyxp.xp_award_claims c
                                      WHERE v_one.inputs IS NOT NULL
                                        AND c.key_hash = pyxp.key_hash(v_one.idempotency_key)
                                      LIMIT 1) c ON true
                  LEFT JOIN LATERAL pyxp.claimed_row(c.transaction_id, c.created_at) k ON true) x;
    ELSIF NOT p_batch AND cardinality(v_rows) = 1 THEN
        v_one := v_rows[1];
        SELECT ARRAY[x.claim_id], ARRAY[x.after], ARRAY[x.feed], CASE WHEN x.conflict THEN 1 END,
               CASE WHEN abs(x.after) > pyxp.balance_limit() THEN 1 END, x.written,
               ARRAY[x.last_wallet_seq + x.written], ARRAY[x.claimed_at],
               ARRAY[x.applied], ARRAY[x.allowance], ARRAY[x.period_start], x.waited
          INTO v_claims, v_after, v_feed, v_conflict_ord, v_range_ord, v_expected, v_seq, v_claimed_at,
               v_applied, v_allowance, v_period, v_waited
          FROM (SELECT y.*, y.total_xp + CASE WHEN y.claim_id IS NULL THEN y.applied END AS after
                  FROM (SELECT k.id AS claim_id, k.created_at AS claimed_at,
                               k.id IS NOT NULL AND (k.request_digest <> pyxp.inputs_digest(v_one.inputs)
                                                     OR k.idempotency_key <> v_one.idempotency_key) AS conflict,
                               b.total_xp, b.last_wallet_seq,
                               (k.id IS NULL AND v_one.transaction_type IS NOT NULL)::integer AS written,
                               greatest(pyxp.ledger_xid(pg_current_xact_id()), b.last_feed_xid) AS feed,
                               -- the version locked is not the snapshot's (evaluated above the lock)
                               b.ctid IS DISTINCT FROM (SELECT s.ctid FROM pyxp.xp_balances s
                                                         WHERE s.user_wallet = v_one.user_wallet LIMIT 1) AS waited,
                               a.allowance, a.period_start,
                               CASE WHEN a.allowance IS NULL THEN v_one.xp_amount
                                    ELSE least(v_one.xp_amount, greatest(a.cap_max_xp - coalesce(a.used_xp, 0), 0))
                               END AS applied
                          FROM (SELECT b.total_xp, b.last_feed_xid, b.last_wallet_seq, b.ctid FROM pyxp.xp_balances b
                                 WHERE b.user_wallet = v_one.user_wallet LIMIT 1 FOR UPDATE) b
                          LEFT JOIN LATERAL (SELECT c.transaction_id, c.created_at FROM pyxp.xp_award_claims c
                                              WHERE v_one.inputs IS NOT NULL
                                                AND c.key_hash = pyxp.key_hash(v_one.idempotency_key)
                                              LIMIT 1) c ON true
                          LEFT JOIN LATERAL pyxp.claimed_row(c.transaction_id, c.created_at) k ON true
                          LEFT JOIN LATERAL (SELECT c.allowance, c.period_start, c.cap_max_xp,
                                                    (SELECT u.used_xp FROM pyxp.xp_cap_usage u
                                                      WHERE u.user_wallet = v_one.user_wallet
                                                        AND u.allowance = c.allowance
                                                        AND u.period_start = c.period_start LIMIT 1) AS used_xp
                                               FROM (SELECT pyxp.cap_allowance(ru.cap_group, ru.action) AS allowance,
                                                            date_trunc(ru.cap_per, v_now, p_timezone) AS period_start,
                                                            ru.cap_max_xp
                                                       FROM pyxp.rules ru
                                                      WHERE ru.rule_id = v_one.rule_id AND ru.cap_max_xp IS NOT NULL
                                                        AND v_one.xp_amount > 0 AND v_one.reverses IS NULL
                                                        AND k.id IS NULL
                                                      LIMIT 1) c) a ON true) y) x;
    ELSIF NOT p_caps THEN
        SELECT array_agg(x.claim_id), array_agg(x.after),
               array_agg(x.feed),
               min(x.ord) FILTER (WHERE x.conflict),
               min(x.ord) FILTER (WHERE abs(x.after) > pyxp.balance_limit()),
               count(*) FILTER (WHERE x.claim_id IS NULL AND x.transaction_type IS NOT NULL),
               array_agg(x.seq), array_agg(x.claimed_at)
          INTO v_claims, v_after, v_feed, v_conflict_ord, v_range_ord, v_expected, v_seq, v_claimed_at
          FROM (SELECT r.ord, r.transaction_type, k.id AS claim_id, k.created_at AS claimed_at,
                       k.id IS NOT NULL AND (k.request_digest <> pyxp.inputs_digest(r.inputs)
                                             OR k.idempotency_key <> r.idempotency_key) AS conflict,
                       b.total_xp + sum(r.xp_amount) FILTER (WHERE k.id IS NULL)
                                        OVER (PARTITION BY r.user_wallet ORDER BY r.ord) AS after,
                       b.last_wallet_seq + count(*) FILTER (WHERE k.id IS NULL AND r.transaction_type IS NOT NULL)
                                               OVER (PARTITION BY r.user_wallet ORDER BY r.ord) AS seq,
                       greatest(pyxp.ledger_xid(pg_current_xact_id()), b.last_feed_xid) AS feed
                  FROM unnest(v_rows) WITH ORDINALITY r(call_index, user_wallet, idempotency_key, inputs,
                                                        transaction_type, xp_amount, xp_requested, apply_floor,
                                                        rule_id, campaign_id, subject, metadata, reverses,
                                                        moderations, ord)
                 CROSS JOIN LATERAL (SELECT b.total_xp, b.last_feed_xid, b.last_wallet_seq FROM pyxp.xp_balances b
                                      WHERE b.user_wallet = r.user_wallet LIMIT 1 FOR UPDATE) b
                  LEFT JOIN LATERAL (SELECT c.transaction_id, c.created_at FROM pyxp.xp_award_claims c
                                      WHERE r.inputs IS NOT NULL AND c.key_hash = pyxp.key_hash(r.idempotency_key)
                                      LIMIT 1) c ON true
                  LEFT JOIN LATERAL pyxp.claimed_row(c.transaction_id, c.created_at) k ON true
                 ORDER BY r.ord) x;
    ELSE
        SELECT array_agg(x.claim_id), array_agg(x.after),
               array_agg(x.feed),
               min(x.ord) FILTER (WHERE x.conflict),
               min(x.ord) FILTER (WHERE abs(x.after) > pyxp.balance_limit()),
               count(*) FILTER (WHERE x.claim_id IS NULL AND x.transaction_type IS NOT NULL),
               array_agg(x.applied), array_agg(x.allowance),
               array_agg(x.period_start), array_agg(x.seq), bool_or(x.waited),
               array_agg(x.claimed_at)
          INTO v_claims, v_after, v_feed, v_conflict_ord, v_range_ord, v_expected, v_applied, v_allowance, v_period,
               v_seq, v_waited, v_claimed_at
          FROM (SELECT y.*, y.total_xp + sum(y.applied) FILTER (WHERE y.claim_id IS NULL)
                                             OVER (PARTITION BY y.user_wallet ORDER BY y.ord) AS after,
                       y.last_wallet_seq + count(*) FILTER (WHERE y.claim_id IS NULL AND y.transaction_type IS NOT NULL)
                                                  OVER (PARTITION BY y.user_wallet ORDER BY y.ord) AS seq
                  FROM (SELECT z.*, CASE WHEN z.allowance IS NULL THEN z.xp_amount
                                         ELSE least(z.asked, z.left_) - least(z.asked - z.xp_amount, z.left_) END AS applied
                          FROM (SELECT r.ord, r.user_wallet, r.transaction_type, r.xp_amount, k.id AS claim_id,
                                       k.created_at AS claimed_at,
                                       k.id IS NOT NULL AND (k.request_digest <> pyxp.inputs_digest(r.inputs)
                                                             OR k.idempotency_key <> r.idempotency_key) AS conflict,
                                       b.total_xp, b.last_wallet_seq,
                                       greatest(pyxp.ledger_xid(pg_current_xact_id()), b.last_feed_xid) AS feed,
                                       -- the version locked is not the snapshot's (evaluated above the lock)
                                       NOT p_batch AND b.ctid IS DISTINCT FROM
                                           (SELECT s.ctid FROM pyxp.xp_balances s
                                             WHERE s.user_wallet = r.user_wallet LIMIT 1) AS waited,
                                       a.allowance, a.period_start,
                                       sum(r.xp_amount) OVER (PARTITION BY r.user_wallet, a.allowance, a.period_start
                                                              ORDER BY r.ord) AS asked,
                                       greatest(a.cap_max_xp - coalesce(a.used_xp, 0), 0) AS left_
                                  FROM unnest(v_rows) WITH ORDINALITY r(call_index, user_wallet, idempotency_key, inputs,
                                                                        transaction_type, xp_amount, xp_requested,
                                                                        apply_floor, rule_id, campaign_id, subject,
                                                                        metadata, reverses, moderations, ord)
                                 CROSS JOIN LATERAL (SELECT b.total_xp, b.last_feed_xid, b.last_wallet_seq, b.ctid
                                                       FROM pyxp.xp_balances b
                                                      WHERE b.user_wallet = r.user_wallet LIMIT 1 FOR UPDATE) b
                                  LEFT JOIN LATERAL (SELECT c.transaction_id, c.created_at FROM pyxp.xp_award_claims c
                                                      WHERE r.inputs IS NOT NULL
                                                        AND c.key_hash = pyxp.key_hash(r.idempotency_key)
                                                      LIMIT 1) c ON true
                                  LEFT JOIN LATERAL pyxp.claimed_row(c.transaction_id, c.created_at) k ON true
                                  LEFT JOIN LATERAL (SELECT c.allowance, c.period_start, c.cap_max_xp,
                                                            (SELECT u.used_xp FROM pyxp.xp_cap_usage u
                                                              WHERE u.user_wallet = r.user_wallet
                                                                AND u.allowance = c.allowance
                                                                AND u.period_start = c.period_start LIMIT 1) AS used_xp
                                                       FROM (SELECT pyxp.cap_allowance(ru.cap_group, ru.action) AS allowance,
                                                                    date_trunc(ru.cap_per, v_now, p_timezone) AS period_start,
                                                                    ru.cap_max_xp
                                                               FROM pyxp.rules ru
                                                              WHERE p_caps AND ru.rule_id = r.rule_id
                                                                AND ru.cap_max_xp IS NOT NULL AND r.xp_amount > 0
                                                                AND r.reverses IS NULL AND k.id IS NULL
                                                              LIMIT 1) c) a ON true) z) y
                 ORDER BY y.ord) x;
    END IF;
    IF v_after IS NULL THEN  -- one wallet (step 1) without a balance row yet
        INSERT INTO pyxp.xp_balances (user_wallet, total_xp, current_level, xp_to_next_level)
        SELECT v_wallet, 0, c.level, c.next_level_xp::bigint FROM pyxp.curve_position(p_ruleset, 0) c
        ON CONFLICT (user_wallet) DO NOTHING;  -- inserted concurrently: locked in the next round
        CONTINUE planning;
    END IF;
    IF v_waited THEN  -- (caps) the lock waited: read the usage again, after the holder's commit
        CONTINUE planning;
    END IF;
    -- A cut gain records both amounts: xp_amount what applies, xp_requested
    -- what the rule asked.
    IF p_caps THEN
        FOR i IN 1 .. cardinality(v_rows) LOOP
            IF v_applied[i] <> v_rows[i].xp_amount THEN
                v_rows[i].xp_requested := v_rows[i].xp_amount;
                v_rows[i].xp_amount := v_applied[i];
            END IF;
        END LOOP;
    END IF;
        -- A balance floor cuts penalties by the running balance of what
        -- applies (after the caps' cuts), then step 2 runs again on the
        -- cut rows (slow path: floors are rare; the caps' cut is then a
        -- no-op): xp_amount becomes what applies, xp_requested keeps what
        -- the rule asked.
        EXIT planning WHEN p_floor IS NULL OR v_floored;  -- a simple expression: no query on the hot path
        EXIT planning WHEN NOT EXISTS (SELECT FROM unnest(v_rows) r WHERE r.apply_floor AND r.xp_amount < 0);
        v_rows := pyxp.floored_rows(p_ruleset, v_rows, p_floor);
        v_floored := true;
    END LOOP;
    IF v_conflict_ord IS NOT NULL THEN
        SELECT k.* INTO v_problem FROM pyxp.xp_transactions k WHERE k.id = v_claims[v_conflict_ord];
        PERFORM pyxp.raise_key_conflict(p_batch, v_rows[v_conflict_ord].call_index,
                                        v_rows[v_conflict_ord].idempotency_key,
                                        v_rows[v_conflict_ord].inputs, v_problem.user_wallet,
                                        v_problem.transaction_type, v_problem.xp_amount, v_problem.metadata);
    ELSIF v_range_ord IS NOT NULL THEN
        RAISE EXCEPTION '%balance of % would be %, out of range',
                        CASE WHEN p_batch THEN format('event %s: ', v_rows[v_range_ord].call_index) ELSE '' END,
                        v_rows[v_range_ord].user_wallet, v_after[v_range_ord]
            USING ERRCODE = 'PX019', HINT = 'a balance stays between -2^62 and 2^62';
    END IF;

    -- 3. The new rows, in row order (ids ascend in row order: the sequence
    --    is read after the sort). A generic award's row is written with its
    --    claim (xp_award_claims), in the same statement; it is skipped if a
    --    call that committed while this one waited for the lock holds the
    --    key (the claim's INSERT waits for it, then skips: below). created_at
    --    is now() (under caps, no earlier than the activation: v_now), or for
    --    a reversal (alone in its call) no earlier than its
    --    original's (a transaction may begin before the one it reverses):
    --    created_at names the partition, and an archive, which takes the
    --    oldest partitions, must never take a reversal and keep its original.
    IF v_rows[1].reverses IS NOT NULL THEN
        SELECT o.created_at INTO v_reversed_at FROM pyxp.xp_transactions o WHERE o.id = v_rows[1].reverses;
    END IF;
    -- (The triggers this statement fires run with pyxp.appending_rows set to
    -- this transaction's id: a writing call among them is refused, above. A
    -- transaction-local setting: an error in between rolls it back with the
    -- (sub)transaction. The id, not 'on': a value any session may set, left
    -- set by one client behind a pooler, refused every other client's award
    -- there (a hostile test, 0036).)
    v_set := set_config('pyxp.appending_rows', pg_current_xact_id()::text, true);
    WITH numbered AS MATERIALIZED (
        SELECT r.*, nextval('pyxp.xp_transactions_id_seq') AS id, greatest(v_now, v_reversed_at) AS created_at
          FROM ROWS FROM (unnest(v_rows), unnest(v_claims), unnest(v_after), unnest(v_feed), unnest(v_seq))
               WITH ORDINALITY
               r(call_index, user_wallet, idempotency_key, inputs, transaction_type, xp_amount, xp_requested,
                 apply_floor, rule_id, campaign_id, subject, metadata, reverses, moderations, claim, after,
                 feed, seq, ord)
         WHERE r.claim IS NULL AND r.transaction_type IS NOT NULL
         ORDER BY r.ord
    ), claimed AS (
        INSERT INTO pyxp.xp_award_claims AS c (key_hash, transaction_id, created_at)
        SELECT pyxp.key_hash(r.idempotency_key), r.id, r.created_at FROM numbered r WHERE r.inputs IS NOT NULL
        ON CONFLICT (key_hash) DO NOTHING
        RETURNING c.transaction_id
    ), inserted AS (
        INSERT INTO pyxp.xp_transactions (id, user_wallet, transaction_type, xp_amount, xp_requested,
                                          balance_after, rule_id, campaign_id, subject, idempotency_key,
                                          metadata, reverses, feed_xid, request_digest, wallet_seq, created_at)
        OVERRIDING SYSTEM VALUE
        SELECT r.id, r.user_wallet, r.transaction_type, r.xp_amount::bigint, r.xp_requested::bigint, r.after::bigint,
               r.rule_id, r.campaign_id, r.subject, r.idempotency_key, coalesce(r.metadata, '{}'), r.reverses,
               r.feed, pyxp.inputs_digest(r.inputs), r.seq, r.created_at
          FROM numbered r
         WHERE r.inputs IS NULL OR r.id IN (SELECT c.transaction_id FROM claimed c)
         ORDER BY r.ord
        RETURNING id
    )
    SELECT array_agg(i.id ORDER BY i.id) INTO v_ids FROM inserted i;
    v_set := set_config('pyxp.appending_rows', '', true);
    v_inserted := coalesce(cardinality(v_ids), 0);
    IF v_inserted < v_expected THEN
        -- A key was claimed by a call on another wallet (other inputs: PX010)
        -- that committed while this INSERT waited for it. With the same
        -- inputs (same wallet, same lock) the probe of step 2, a statement
        -- run after the locks were granted, saw it: kept as a guard.
        SELECT r.call_index, r.idempotency_key, r.inputs, k.user_wallet, k.transaction_type, k.xp_amount,
               k.metadata, k.request_digest = pyxp.inputs_digest(r.inputs) AND k.idempotency_key = r.idempotency_key
                   AS same
          INTO v_problem
          FROM unnest(v_rows) WITH ORDINALITY r
         CROSS JOIN LATERAL (SELECT k.* FROM pyxp.xp_award_claims c
                               JOIN pyxp.xp_transactions k ON k.id = c.transaction_id AND k.created_at = c.created_at
                              WHERE r.inputs IS NOT NULL AND c.key_hash = pyxp.key_hash(r.idempotency_key)
                              LIMIT 1) k
         WHERE v_claims[r.ordinality] IS NULL              -- not a replay: a row this call meant to write
           AND NOT (k.id = ANY (coalesce(v_ids, '{}')))
         ORDER BY k.request_digest = pyxp.inputs_digest(r.inputs) AND k.idempotency_key = r.idempotency_key,
                  r.ordinality                              -- a conflict first
         LIMIT 1;
        IF NOT FOUND THEN
            -- A claim whose row was archived (sql/13_retention.sql; its
            -- created_at names an archived partition's range): the key was
            -- used, and stays used.
            SELECT r.call_index, r.idempotency_key, c.transaction_id, c.created_at INTO v_problem
              FROM unnest(v_rows) r JOIN pyxp.xp_award_claims c
                ON r.inputs IS NOT NULL AND c.key_hash = pyxp.key_hash(r.idempotency_key)
             WHERE c.created_at < pyxp.archive_horizon()
               AND NOT EXISTS (SELECT FROM pyxp.xp_transactions k
                                WHERE k.id = c.transaction_id AND k.created_at = c.created_at)
             LIMIT 1;
            IF FOUND THEN
                RAISE EXCEPTION '%idempotency key % was used by transaction % on %, whose row was archived',
                                CASE WHEN p_batch THEN format('event %s: ', v_problem.call_index) ELSE '' END,
                                quote_literal(v_problem.idempotency_key), v_problem.transaction_id, v_problem.created_at
                    USING ERRCODE = 'PX029',
                          DETAIL = 'the award was applied then; nothing was written again',
                          HINT = 'its row is in schema pyxp_archive (or its dump); a new award needs a new key';
            END IF;
            -- A claim whose row the ledger does not hold (audit() reports
            -- claim_mismatch): neither a replay nor a conflict can be told.
            RAISE EXCEPTION 'an idempotency key of this call is claimed by transaction %, which the ledger does not hold',
                            (SELECT string_agg(c.transaction_id::text, ', ')
                               FROM unnest(v_rows) r JOIN pyxp.xp_award_claims c
                                 ON r.inputs IS NOT NULL AND c.key_hash = pyxp.key_hash(r.idempotency_key)
                              WHERE NOT EXISTS (SELECT FROM pyxp.xp_transactions k
                                                 WHERE k.id = c.transaction_id AND k.created_at = c.created_at))
                USING ERRCODE = 'PX028', HINT = 'SELECT * FROM pyxp.audit() reports it (claim_mismatch)';
        END IF;
        IF v_problem.same AND NOT p_batch AND cardinality(v_rows) = 1 THEN
            RETURN QUERY SELECT * FROM pyxp.append_rows(p_ruleset, p_floor, p_timezone, p_caps, p_rows, p_batch);  -- now a replay
            RETURN;
        ELSIF v_problem.same THEN
            RAISE EXCEPTION 'an award of this batch was made concurrently by another transaction'
                USING ERRCODE = '40001', HINT = 'retry the batch: the awards already made replay';
        END IF;
        PERFORM pyxp.raise_key_conflict(p_batch, v_problem.call_index, v_problem.idempotency_key, v_problem.inputs,
                                        v_problem.user_wallet, v_problem.transaction_type, v_problem.xp_amount,
                                        v_problem.metadata);
    END IF;
    -- Ids back to their rows (the inserted ones are the rows without a
    -- claim and with a transaction_type, in order).
    IF v_inserted > 0 AND (v_inserted < cardinality(v_rows)) THEN
        v_ids := ARRAY(SELECT CASE WHEN r.claim IS NULL AND r.transaction_type IS NOT NULL
                                   THEN v_ids[count(*) FILTER (WHERE r.claim IS NULL AND r.transaction_type IS NOT NULL)
                                                  OVER (ORDER BY r.ord)] END
                         FROM ROWS FROM (unnest(v_rows), unnest(v_claims)) WITH ORDINALITY
                              r(call_index, user_wallet, idempotency_key, inputs, transaction_type, xp_amount,
                                xp_requested, apply_floor, rule_id, campaign_id, subject, metadata, reverses,
                                moderations, claim, ord)
                        ORDER BY r.ord);
    END IF;

    -- 3b. What a reversal of a capped gain frees of its allowance, in its
    --     period and in those seeded with it (pyxp.freed_allowances), under
    --     the same locks; before step 4, whose update fires the balances'
    --     triggers: an award made there sees the allowance freed (it was cut
    --     as if still used, with a clean audit, when this came after: a
    --     hostile test, 0036).
    IF v_rows[1].reverses IS NOT NULL THEN  -- a reversal: alone in its call
        UPDATE pyxp.xp_cap_usage u SET used_xp = u.used_xp - f.freed_xp, seeded_xp = u.seeded_xp - f.freed_seed
          FROM pyxp.freed_allowances(v_rows[1].reverses) f
         WHERE u.user_wallet = v_rows[1].user_wallet AND u.allowance = f.allowance
           AND u.period_start = f.period_start AND v_ids[1] IS NOT NULL;
    END IF;

    -- 4. Each balance once: its last new row's balance, its level on the
    --    active curve, the votes it counts, and its latest periods
    --    (xp_balances.<kind>_start/_xp, sql/07_periods.sql): the new rows'
    --    period of each kind is the wallet's latest (reset), the same
    --    (added) or an earlier one (a transaction that began before the
    --    period turned: left to the ledger). A call's new rows of one wallet
    --    share one effective time: now(), or for a reversal (always alone in
    --    its call) the created_at of the row it reverses: the periods are
    --    computed once (p_timezone), not per row.
    v_at := coalesce(v_reversed_at, v_now);
    -- The rank counts' slot: this backend's pid, leased for the transaction
    -- by an advisory lock (never waited for: pg_try). The slot's rows must
    -- be written by no other transaction still in progress, and a prepared
    -- transaction keeps its locks on its slot's rows after its backend moved
    -- on (the next transaction of the same session behind a pooler, or a
    -- new session that got the pid): it holds its lease too, and this one
    -- takes pid + 2^22 (above any pid), and so on (0035, a hostile test:
    -- every award on that backend waited for the prepared transaction, with
    -- no deadlock reported). After 64 leases taken (an application holding
    -- these keys) the pid, as before 0035.
    v_slot := pg_backend_pid();
    FOR i IN 1 .. 64 LOOP
        EXIT WHEN pg_try_advisory_xact_lock(1887007857, v_slot);
        v_slot := v_slot + 4194304;
        IF i = 64 THEN
            v_slot := pg_backend_pid();
        END IF;
    END LOOP;
    v_day := date_trunc('day', v_at, p_timezone);
    v_week := date_trunc('week', v_at, p_timezone);
    v_month := date_trunc('month', v_at, p_timezone);
    v_year := date_trunc('year', v_at, p_timezone);
    -- The rank counts (sql/07_ranks.sql) follow in the same statement, and the
    -- caps' usage (CTE used, below):
    -- each balance whose total moved leaves the bucket of its old total
    -- and joins the bucket of its new one, and on each period's board
    -- leaves the bucket of its old (start, XP) for the bucket of its new
    -- one (xp_period_rank_counts: a probe of each); a balance this call
    -- created (ranked false) only joins. Counted in this transaction's slot
    -- (v_slot: no other transaction in progress writes it: no wait, and no
    -- order to keep against deadlocks); a move within one bucket, or a period XP that did
    -- not change, touches no count.
    WITH moved AS (
    UPDATE pyxp.xp_balances x
       SET ranked = true, total_xp = coalesce(f.after::bigint, x.total_xp), current_level = c.level,
           xp_to_next_level = (c.next_level_xp - coalesce(f.after::bigint, x.total_xp))::bigint,
           total_moderations = x.total_moderations + f.moderations, updated_at = now(),
           last_feed_xid = coalesce(f.feed, x.last_feed_xid), last_wallet_seq = coalesce(f.seq, x.last_wallet_seq),
           day_start = CASE WHEN f.after IS NULL THEN x.day_start ELSE greatest(x.day_start, v_day) END,
           day_xp = pyxp.kept_period_xp(x.day_start, x.day_xp, CASE WHEN f.after IS NOT NULL THEN v_day END, f.gained),
           week_start = CASE WHEN f.after IS NULL THEN x.week_start ELSE greatest(x.week_start, v_week) END,
           week_xp = pyxp.kept_period_xp(x.week_start, x.week_xp, CASE WHEN f.after IS NOT NULL THEN v_week END, f.gained),
           month_start = CASE WHEN f.after IS NULL THEN x.month_start ELSE greatest(x.month_start, v_month) END,
           month_xp = pyxp.kept_period_xp(x.month_start, x.month_xp, CASE WHEN f.after IS NOT NULL THEN v_month END, f.gained),
           year_start = CASE WHEN f.after IS NULL THEN x.year_start ELSE greatest(x.year_start, v_year) END,
           year_xp = pyxp.kept_period_xp(x.year_start, x.year_xp, CASE WHEN f.after IS NOT NULL THEN v_year END, f.gained)
      FROM (SELECT r.user_wallet,
                   (array_agg(r.after ORDER BY r.ord DESC) FILTER (WHERE r.id IS NOT NULL))[1] AS after,
                   max(r.feed) FILTER (WHERE r.id IS NOT NULL) AS feed,
                   max(r.seq) FILTER (WHERE r.id IS NOT NULL) AS seq,
                   sum(r.moderations) FILTER (WHERE r.claim IS NULL)::bigint AS moderations,
                   sum(r.xp_amount) FILTER (WHERE r.id IS NOT NULL) AS gained,  -- numeric: 2^63 in a batch (0035)
                   b.total_xp, b.ranked, b.day_start, b.day_xp, b.week_start, b.week_xp, b.month_start,
                   b.month_xp, b.year_start, b.year_xp
              FROM ROWS FROM (unnest(v_rows), unnest(v_claims), unnest(v_after), unnest(v_feed), unnest(v_ids),
                              unnest(v_seq))
                   WITH ORDINALITY r(call_index, user_wallet, idempotency_key, inputs, transaction_type, xp_amount,
                                     xp_requested, apply_floor, rule_id, campaign_id, subject, metadata, reverses,
                                     moderations, claim, after, feed, id, seq, ord)
             CROSS JOIN LATERAL (SELECT b.total_xp, b.ranked, b.day_start, b.day_xp, b.week_start, b.week_xp,
                                        b.month_start, b.month_xp, b.year_start, b.year_xp
                                   FROM pyxp.xp_balances b
                                  WHERE b.user_wallet = r.user_wallet LIMIT 1) b
             GROUP BY r.user_wallet, b.total_xp, b.ranked, b.day_start, b.day_xp, b.week_start, b.week_xp,
                      b.month_start, b.month_xp, b.year_start, b.year_xp) f  -- b: one row per wallet
     CROSS JOIN LATERAL pyxp.curve_position(p_ruleset, coalesce(f.after::bigint, f.total_xp)) c
     WHERE x.user_wallet = f.user_wallet AND (f.after IS NOT NULL OR f.moderations <> 0 OR NOT f.ranked)
    RETURNING x.user_wallet, f.total_xp AS old_xp, f.ranked AS was_ranked, x.total_xp AS new_xp,
              -- Its place on each period's board before (NULL: not counted) and after.
              ARRAY[CASE WHEN f.ranked THEN f.day_start END, CASE WHEN f.ranked THEN f.week_start END,
                    CASE WHEN f.ranked THEN f.month_start END, CASE WHEN f.ranked THEN f.year_start END,
                    x.day_start, x.week_start, x.month_start, x.year_start] AS period_starts,
              ARRAY[f.day_xp, f.week_xp, f.month_xp, f.year_xp, x.day_xp, x.week_xp, x.month_xp, x.year_xp]
                  AS period_xps
    ), period_moves AS (
    INSERT INTO pyxp.xp_period_rank_counts AS k (period, period_start, period_xp, wallet_start, slot, wallets)
    SELECT u.period, u.period_start, u.period_xp, coalesce(q.wallet_start, ''), v_slot, sum(u.delta)
      FROM moved m
     CROSS JOIN LATERAL unnest('{day,week,month,year,day,week,month,year}'::text[], m.period_starts, m.period_xps,
                               '{-1,-1,-1,-1,1,1,1,1}'::integer[]) u(period, period_start, period_xp, delta)
      LEFT JOIN LATERAL pyxp.period_bucket_of(u.period, u.period_start, u.period_xp, m.user_wallet) q ON true
     WHERE u.period_start IS NOT NULL
     GROUP BY u.period, u.period_start, u.period_xp, coalesce(q.wallet_start, '')
    HAVING sum(u.delta) <> 0  -- a period whose XP did not change: -1 and +1 in one bucket
    ON CONFLICT (period, period_start, period_xp, wallet_start, slot)
       DO UPDATE SET wallets = k.wallets + excluded.wallets
    ), used AS (
    -- What the new capped gains used of their allowances (xp_cap_usage),
    -- under the same locks; nothing without caps (v_allowance NULL). In this
    -- statement, not one of its own: a statement costs its executor start-up
    -- on every award (0021: 3-4 % of a capped award's CPU).
    INSERT INTO pyxp.xp_cap_usage AS u (user_wallet, allowance, period_start, used_xp)
    SELECT r.user_wallet, r.allowance, r.period_start, sum(r.xp_amount)::bigint
      FROM ROWS FROM (unnest(v_rows), unnest(v_ids), unnest(v_allowance), unnest(v_period))
           r(call_index, user_wallet, idempotency_key, inputs, transaction_type, xp_amount, xp_requested,
             apply_floor, rule_id, campaign_id, subject, metadata, reverses, moderations, id, allowance,
             period_start)
     WHERE p_caps AND r.allowance IS NOT NULL AND r.id IS NOT NULL AND r.xp_amount > 0
     GROUP BY r.user_wallet, r.allowance, r.period_start
    ON CONFLICT (user_wallet, allowance, period_start) DO UPDATE SET used_xp = u.used_xp + excluded.used_xp
    )
    INSERT INTO pyxp.xp_rank_counts AS k (neg_xp, wallet, slot, wallets)
    SELECT d.neg_xp, d.wallet, v_slot, sum(d.delta)
      FROM moved m
     CROSS JOIN LATERAL (SELECT o.neg_xp, o.wallet, -1 AS delta
                           FROM pyxp.rank_bucket_of(m.old_xp, m.user_wallet) o WHERE m.was_ranked
                         UNION ALL
                         SELECT n.neg_xp, n.wallet, 1 FROM pyxp.rank_bucket_of(m.new_xp, m.user_wallet) n) d
     GROUP BY d.neg_xp, d.wallet
    HAVING sum(d.delta) <> 0
     ORDER BY d.neg_xp, d.wallet
    ON CONFLICT (neg_xp, wallet, slot) DO UPDATE SET wallets = k.wallets + excluded.wallets;

    -- 5. One row per row with a transaction_type: new ones with their levels
    --    on the active curve, replayed ones as they were written.
    RETURN QUERY
        SELECT r.call_index, coalesce(r.id, t.id), r.user_wallet, r.transaction_type,
               coalesce(t.xp_amount, r.xp_amount::bigint), CASE WHEN t.id IS NULL THEN r.xp_requested::bigint ELSE t.xp_requested END,
               coalesce(t.balance_after, r.after::bigint), now_.level,
               (now_.next_level_xp - coalesce(t.balance_after, r.after))::bigint, before_.level, t.id IS NOT NULL
          FROM ROWS FROM (unnest(v_rows), unnest(v_claims), unnest(v_claimed_at), unnest(v_after), unnest(v_ids))
               WITH ORDINALITY
               r(call_index, user_wallet, idempotency_key, inputs, transaction_type, xp_amount, xp_requested,
                 apply_floor, rule_id, campaign_id, subject, metadata, reverses, moderations, claim, claimed_at,
                 after, id, ord)
          LEFT JOIN LATERAL pyxp.claimed_row(r.claim, r.claimed_at) t ON true  -- a replay's row
         CROSS JOIN LATERAL (SELECT CASE WHEN t.id IS NULL THEN p_ruleset
                                         ELSE pyxp.row_ruleset(t.rule_id, t.idempotency_key) END AS ruleset_id) s
         CROSS JOIN LATERAL pyxp.curve_position(s.ruleset_id, coalesce(t.balance_after, r.after::bigint)) now_
         CROSS JOIN LATERAL pyxp.curve_position(s.ruleset_id, coalesce(t.balance_after - t.xp_amount,
                                                                      (r.after - r.xp_amount)::bigint)) before_
         WHERE r.transaction_type IS NOT NULL
         ORDER BY r.ord;
END
$$;

-- The period of kind p_kind (day, week, month, year) containing p_at in
-- zone p_timezone: period_start, its key (the <kind>_start the writer
-- stores), and period_end, the next period's. Its instants are
-- [period_first_instant(period_start), period_first_instant(period_end)):
-- the same except where the clocks go back at local midnight (below).
-- PX026 for a NULL or infinite p_at.
CREATE OR REPLACE FUNCTION pyxp.period_bounds(p_kind text, p_at timestamptz, p_timezone text,
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

-- PX019 for a period's XP beyond bigint (pyxp.kept_period_xp).
CREATE OR REPLACE FUNCTION pyxp.refuse_period_xp(p_xp numeric)
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RAISE EXCEPTION 'a wallet''s XP in one period would be %, out of range', p_xp
        USING ERRCODE = 'PX019',
              HINT = 'what a wallet gains or loses within one day, week, month or year stays strictly between -(2^63 - 1) and 2^63 - 1';
END
$$;

RESET ROLE;
