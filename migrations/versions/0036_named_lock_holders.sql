-- 0036: the owner operations that hold every award (a ruleset's activation,
-- recalculate_levels, rebalance_rank_buckets, apply_rules_retroactively,
-- adopt_cluster) name who held pyxp.xp_balances when their lock_timeout
-- ran out: a prepared transaction by its gid, a session by its pid (55P03).
SET LOCAL ROLE pyxp_owner;

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

RESET ROLE;
