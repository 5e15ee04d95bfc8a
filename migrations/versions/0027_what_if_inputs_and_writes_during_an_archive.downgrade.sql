-- Downgrade of 0027: back to 0026's simulation.

SET LOCAL ROLE pyxp_owner;

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
BEGIN
    PERFORM pyxp.require_read_committed();
    -- Installers' lock first, then the awards' (the order of install_ruleset).
    LOCK TABLE pyxp.rulesets IN SHARE ROW EXCLUSIVE MODE;
    LOCK TABLE pyxp.xp_balances IN SHARE ROW EXCLUSIVE MODE;
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
                       format('rules.adjustment:%s:%s:%s', v_ruleset.ruleset_id, pg_current_xact_id(),
                              s.user_wallet) AS key,
                       (row_number() OVER (ORDER BY s.user_wallet) - 1) / 10000 AS chunk
                  FROM pyxp.simulated_totals(v_ruleset.ruleset_id) s
                 WHERE pyxp.checked_simulated_total(s.user_wallet, s.total_xp_then) <> s.total_xp_now) d
         GROUP BY d.chunk
         ORDER BY d.chunk
    LOOP
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

CREATE OR REPLACE FUNCTION pyxp.archive_ledger_partitions(archived_before timestamptz)
RETURNS TABLE (archive_id bigint, partition_name text, range_start timestamptz, range_end timestamptz,
               rows_archived bigint, archive_table text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET lock_timeout = '1s'
SET datestyle = 'ISO, YMD'  -- the partitions' bounds (pyxp.ledger_partitions)
SET jit = off
AS $$
#variable_conflict use_column
DECLARE
    v_names text[];
    v_oids oid[];
    v_starts timestamptz[];
    v_ends timestamptz[];
    v_counts bigint[] := '{}';
    v_count bigint;
    v_top_id bigint;
    v_id bigint;
    v_checkpoint bigint;
    v_archive bigint;
    v_zone text;
    v_name text;
    v_problem record;
BEGIN
    PERFORM pyxp.require_read_committed();
    IF archive_ledger_partitions.archived_before IS NULL OR NOT isfinite(archive_ledger_partitions.archived_before)
       OR archive_ledger_partitions.archived_before > date_trunc('month', now(), 'UTC') THEN
        RAISE EXCEPTION 'archived_before must be a time at or before the start of this month (UTC), got %',
                        coalesce(archive_ledger_partitions.archived_before::text, 'NULL')
            USING ERRCODE = 'PX023',
                  HINT = 'e.g. the start of a month a year ago: only whole partitions before it are archived';
    END IF;
    -- One archive or checkpoint at a time (record_audit_checkpoint takes the
    -- same lock; a second archive waits for at most lock_timeout, then fails
    -- with 55P03, or finds these partitions gone). SHARE on rulesets: no
    -- ruleset is activated meanwhile (install_ruleset's SHARE ROW EXCLUSIVE),
    -- so the openings' periods are in the zone that stays active.
    LOCK TABLE pyxp.xp_audit_checkpoints IN EXCLUSIVE MODE;
    LOCK TABLE pyxp.rulesets IN SHARE MODE;
    v_zone := pyxp.active_timezone();
    SELECT array_agg(p.partition_name ORDER BY p.range_end), array_agg(p.range_start ORDER BY p.range_end),
           array_agg(p.range_end ORDER BY p.range_end),
           array_agg(('pyxp.' || quote_ident(p.partition_name))::regclass::oid ORDER BY p.range_end)
      INTO v_names, v_starts, v_ends, v_oids
      FROM pyxp.ledger_partitions() p
     WHERE NOT p.is_default AND p.range_end <= archive_ledger_partitions.archived_before;
    IF v_names IS NULL THEN
        RETURN;
    END IF;
    FOREACH v_name IN ARRAY v_names LOOP
        EXECUTE format('LOCK TABLE pyxp.%I IN SHARE MODE', v_name);
    END LOOP;
    SELECT k.checkpoint_id INTO v_checkpoint FROM pyxp.record_audit_checkpoint() k;
    FOREACH v_name IN ARRAY v_names LOOP
        EXECUTE format('SELECT count(*), max(t.id) FROM pyxp.%I t', v_name) INTO v_count, v_id;
        v_counts := v_counts || v_count;
        v_top_id := greatest(v_top_id, v_id);
    END LOOP;
    -- A reversal among these rows whose original stays (its transaction
    -- began before the original's; since 0016 the writer dates a reversal no
    -- earlier than its original): the ledger's boards would lose it.
    SELECT r.id, r.reverses, o.created_at, o.tableoid::regclass AS partition,
           (SELECT c.relname::text FROM pg_catalog.pg_class c WHERE c.oid = o.tableoid)
           IN (SELECT p.partition_name FROM pyxp.ledger_partitions() p WHERE p.is_default) AS in_default
      INTO v_problem
      FROM pyxp.xp_transactions r
      JOIN pyxp.xp_transactions o ON o.id = r.reverses AND NOT (o.tableoid = ANY (v_oids))
     WHERE r.tableoid = ANY (v_oids) AND r.created_at < v_ends[cardinality(v_ends)] AND r.reverses IS NOT NULL
     LIMIT 1;
    IF FOUND THEN
        -- (A row in the default partition, written while its month had no
        -- partition, is never archived: neither is the month of a reversal of
        -- it. Known limit, README "Retention".)
        RAISE EXCEPTION 'reversal % would be archived, but transaction % that it reverses (%) would stay',
                        v_problem.id, v_problem.reverses, v_problem.created_at
            USING ERRCODE = 'PX030',
                  HINT = CASE WHEN v_problem.in_default
                              THEN format('transaction %s is in the default partition %s (its month had no partition), '
                                          'which no archive takes: archive up to the month before reversal %s',
                                          v_problem.reverses, v_problem.partition, v_problem.id)
                              ELSE 'archive up to a later month, one that holds the reversed transaction too' END;
    END IF;
    INSERT INTO pyxp.xp_ledger_archives AS a (archived_before, partitions, partition_oids, rows_archived,
                                              wallets_opened, last_transaction_id, timezone, checkpoint_id,
                                              feed_floor)
    VALUES (v_ends[cardinality(v_ends)], v_names, v_oids,
            (SELECT sum(c) FROM unnest(v_counts) c), 0, v_top_id, v_zone, v_checkpoint,
            -- the cursor (sql/11_changes.sql) of the last row of the highest
            -- group holding an archived row, its rows ranked as the feed
            -- ranks them now, archived or not (after the DETACH the rows
            -- left in it would be ranked anew: a consumer must be past all of
            -- it); or of the last archived row from before 0003. (Before
            -- 0026: that group's cursor + 2^24 - 1, which no row has: a
            -- consumer that had read every archived row was refused for good.)
            (SELECT greatest(a.top_id, (a.top_group::text::bigint << 24)
                                       + (SELECT count(*) FROM pyxp.xp_transactions x WHERE x.feed_xid = a.top_group))
               FROM (SELECT max(t.id) FILTER (WHERE t.feed_xid IS NULL) AS top_id, max(t.feed_xid) AS top_group
                       FROM pyxp.xp_transactions t
                      WHERE t.tableoid = ANY (v_oids) AND t.created_at < v_ends[cardinality(v_ends)]) a))
    RETURNING a.archive_id INTO v_archive;

    -- 3. The openings: of every wallet with archived rows, its count of
    --    them, and the fold of its rows at positions after its previous
    --    opening and up to its highest archived one (a straggler still in
    --    the ledger among them), read before the DETACH, by the wallet's
    --    index range; their time is a reversal's original's.
    WITH tops AS (
        SELECT t.user_wallet, max(t.wallet_seq) AS top_seq, count(*) AS archived,
               -- its last archived row in the feed's order (feed_xid, id)
               (array_agg(t.id ORDER BY t.feed_xid DESC NULLS LAST, t.id DESC))[1] AS top_id,
               max(t.feed_xid) AS top_group
          FROM pyxp.xp_transactions t
         WHERE t.tableoid = ANY (v_oids) AND t.created_at < v_ends[cardinality(v_ends)]
         GROUP BY t.user_wallet
    ), moved AS MATERIALIZED (
        SELECT g.user_wallet, greatest(g.top_seq, o.wallet_seq) AS top_seq, g.archived + coalesce(o.archived_rows, 0) AS archived,
               -- that row's cursor, ranked in its group as the feed ranks it
               -- now (a row from before 0003: its id)
               coalesce((g.top_group::text::bigint << 24)
                        + (SELECT count(*) FROM pyxp.xp_transactions x WHERE x.feed_xid = g.top_group AND x.id <= g.top_id),
                        g.top_id) AS last_cursor,
               o.wallet_seq AS old_seq, o.total_xp AS old_xp, o.last_at AS old_at,
               o.day_start AS old_day, o.day_xp AS old_day_xp, o.week_start AS old_week, o.week_xp AS old_week_xp,
               o.month_start AS old_month, o.month_xp AS old_month_xp, o.year_start AS old_year,
               o.year_xp AS old_year_xp
          FROM tops g
          LEFT JOIN pyxp.xp_wallet_openings o ON o.user_wallet = g.user_wallet
    ), folded_rows AS MATERIALIZED (
        SELECT m.user_wallet, x.wallet_seq, x.balance_after, x.xp_amount,
               CASE WHEN x.reverses IS NULL THEN x.created_at ELSE pyxp.reversed_row_at(x.reverses) END AS at
          FROM moved m
          JOIN pyxp.xp_transactions x
            ON x.user_wallet = m.user_wallet AND x.wallet_seq > coalesce(m.old_seq, 0) AND x.wallet_seq <= m.top_seq
    ), ends AS (  -- grouped, never a scan of folded_rows per wallet
        SELECT r.user_wallet, max(r.at) AS max_at, (array_agg(r.balance_after ORDER BY r.wallet_seq DESC))[1] AS balance
          FROM folded_rows r GROUP BY r.user_wallet
    ), latest AS MATERIALIZED (
        SELECT m.*, x.last_at, coalesce(e.balance, m.old_xp) AS total_xp,
               date_trunc('day', x.last_at, v_zone) AS day_start, date_trunc('week', x.last_at, v_zone) AS week_start,
               date_trunc('month', x.last_at, v_zone) AS month_start,
               date_trunc('year', x.last_at, v_zone) AS year_start
          FROM moved m
          LEFT JOIN ends e ON e.user_wallet = m.user_wallet
         CROSS JOIN LATERAL (SELECT greatest(m.old_at, e.max_at) AS last_at) x
    ), sums AS (
        SELECT r.user_wallet,
               sum(r.xp_amount) FILTER (WHERE r.at >= l.day_start)::bigint AS day_xp,
               sum(r.xp_amount) FILTER (WHERE r.at >= l.week_start)::bigint AS week_xp,
               sum(r.xp_amount) FILTER (WHERE r.at >= l.month_start)::bigint AS month_xp,
               sum(r.xp_amount) FILTER (WHERE r.at >= l.year_start)::bigint AS year_xp
          FROM folded_rows r JOIN latest l ON l.user_wallet = r.user_wallet
         GROUP BY r.user_wallet
    ), opened AS (
        INSERT INTO pyxp.xp_wallet_openings AS o (user_wallet, wallet_seq, total_xp, archived_rows, last_at,
                                                  day_start, day_xp, week_start, week_xp, month_start, month_xp,
                                                  year_start, year_xp, archive_id, last_cursor)
        SELECT l.user_wallet, l.top_seq, l.total_xp, l.archived, l.last_at,
               l.day_start, coalesce(s.day_xp, 0) + CASE WHEN l.old_day = l.day_start THEN l.old_day_xp ELSE 0 END,
               l.week_start, coalesce(s.week_xp, 0) + CASE WHEN l.old_week = l.week_start THEN l.old_week_xp ELSE 0 END,
               l.month_start, coalesce(s.month_xp, 0) + CASE WHEN l.old_month = l.month_start THEN l.old_month_xp ELSE 0 END,
               l.year_start, coalesce(s.year_xp, 0) + CASE WHEN l.old_year = l.year_start THEN l.old_year_xp ELSE 0 END,
               v_archive, l.last_cursor
          FROM latest l
          LEFT JOIN sums s ON s.user_wallet = l.user_wallet
        ON CONFLICT (user_wallet) DO UPDATE
           SET wallet_seq = excluded.wallet_seq, total_xp = excluded.total_xp, archived_rows = excluded.archived_rows,
               last_at = excluded.last_at, day_start = excluded.day_start, day_xp = excluded.day_xp,
               week_start = excluded.week_start, week_xp = excluded.week_xp, month_start = excluded.month_start,
               month_xp = excluded.month_xp, year_start = excluded.year_start, year_xp = excluded.year_xp,
               archive_id = excluded.archive_id, last_cursor = excluded.last_cursor
        RETURNING 1
    )
    UPDATE pyxp.xp_ledger_archives a SET wallets_opened = (SELECT count(*) FROM opened) WHERE a.archive_id = v_archive;

    -- 4. What the archived rows used of capped allowances.
    INSERT INTO pyxp.xp_archived_cap_usage AS u (user_wallet, allowance, period_start, used_xp, cap_max_xp)
    SELECT c.user_wallet, c.allowance, c.period_start, c.used_xp, c.cap_max_xp FROM pyxp.rows_cap_usage(v_oids) c
    ON CONFLICT (user_wallet, allowance, period_start) DO UPDATE
       SET used_xp = u.used_xp + excluded.used_xp, cap_max_xp = greatest(u.cap_max_xp, excluded.cap_max_xp);

    -- 5. The requests of archived flow and reversal rows: marked, with their
    --    key and inputs (rebuilt from the rows while they are here). A
    --    request whose rows cannot rebuild them (their rule deleted: audit()
    --    says rule_missing) is only marked.
    UPDATE pyxp.xp_requests q
       SET archive_id = v_archive,
           idempotency_key = coalesce(q.idempotency_key, CASE WHEN r.complete THEN r.key END),
           inputs = coalesce(q.inputs, CASE WHEN r.complete THEN r.inputs END),
           ruleset_id = coalesce(q.ruleset_id, CASE WHEN r.complete THEN r.ruleset_id END),
           created_at = coalesce(q.created_at, CASE WHEN r.complete THEN r.created_at END)
      FROM (SELECT k.key, k.hash, rr.inputs, rr.ruleset_id, rr.created_at,
                   rr.inputs IS NOT NULL AND rr.ruleset_id IS NOT NULL AND rr.created_at IS NOT NULL AS complete
              FROM (SELECT DISTINCT t.idempotency_key AS key, pyxp.key_hash(t.idempotency_key) AS hash
                      FROM pyxp.xp_transactions t
                     WHERE t.tableoid = ANY (v_oids) AND t.created_at < v_ends[cardinality(v_ends)]
                       AND t.request_digest IS NULL) k
              LEFT JOIN LATERAL (SELECT rr.* FROM pyxp.recorded_request(k.key) rr WHERE rr.same_key) rr ON true) r
     WHERE q.key_hash = r.hash AND q.archive_id IS NULL;

    -- 6. Under the ledger's lock: no reversal of an archived row can start
    --    any more, and none is in flight.
    LOCK TABLE pyxp.xp_transactions IN ACCESS EXCLUSIVE MODE;
    INSERT INTO pyxp.xp_archived_originals (transaction_id, user_wallet, transaction_type, xp_amount, rule_id, reverses,
                                            created_at, archive_id)
    SELECT o.id, o.user_wallet, o.transaction_type, o.xp_amount, o.rule_id, o.reverses, o.created_at, v_archive
      FROM pyxp.xp_transactions r
      JOIN pyxp.xp_transactions o ON o.id = r.reverses AND o.tableoid = ANY (v_oids)
     WHERE r.reverses IS NOT NULL AND NOT (r.tableoid = ANY (v_oids));
    PERFORM set_config('pyxp.archiving', array_to_string(v_oids, ','), true);
    FOR i IN 1 .. cardinality(v_names) LOOP
        EXECUTE format('ALTER TABLE pyxp.xp_transactions DETACH PARTITION pyxp.%I', v_names[i]);
        EXECUTE format('ALTER TABLE pyxp.%I SET SCHEMA pyxp_archive', v_names[i]);
        archive_id := v_archive;
        partition_name := v_names[i];
        range_start := v_starts[i];
        range_end := v_ends[i];
        rows_archived := v_counts[i];
        archive_table := 'pyxp_archive.' || quote_ident(v_names[i]);
        RETURN NEXT;
    END LOOP;
    PERFORM set_config('pyxp.archiving', '', true);
END
$$;

CREATE OR REPLACE FUNCTION pyxp.changes(after_cursor bigint DEFAULT 0, max_rows integer DEFAULT 100,
                             wallet text DEFAULT NULL)
RETURNS TABLE (cursor bigint, transaction_id bigint, user_wallet text, transaction_type text,
               xp_amount bigint, total_xp bigint, previous_level bigint, current_level bigint,
               campaign_id text, subject text, created_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$
DECLARE
    v_max integer := pyxp.checked_row_count('max_rows', changes.max_rows);
    v_wallet text := CASE WHEN changes.wallet IS NOT NULL THEN pyxp.checked_wallet(changes.wallet) END;
    v_after bigint := changes.after_cursor;
    v_snapshot pg_snapshot := pg_current_snapshot();
    -- Every group below this is final (see above): the oldest transaction the
    -- snapshot saw running that is not running in another database now, and
    -- the reader's own transaction if it has written (its id is in no
    -- snapshot's list of running ones, and it may still roll back). On a hot
    -- standby the list of running transactions is not exposed (it is kept in
    -- the snapshot's overflow): there, the snapshot's xmin, cluster-wide.
    v_horizon xid8 := CASE WHEN pg_is_in_recovery() THEN pg_snapshot_xmin(v_snapshot) ELSE least(
        (SELECT min(x.xid)
           FROM pg_snapshot_xip(v_snapshot) x(xid)
          WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_locks l
                              JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
                             WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock'
                               AND l.transactionid = xid(x.xid)
                               AND a.datid <> (SELECT d.oid FROM pg_catalog.pg_database d
                                                WHERE d.datname = current_database()))),
        pg_current_xact_id_if_assigned(),
        pg_snapshot_xmax(v_snapshot)) END;
    v_group xid8;
    v_rank bigint;
    v_floor bigint := (SELECT max(a.feed_floor) FROM pyxp.xp_ledger_archives a);
BEGIN
    IF v_after IS NULL OR v_after < 0 THEN
        RAISE EXCEPTION 'invalid after_cursor: %', coalesce(v_after::text, 'NULL')
            USING ERRCODE = 'PX023', HINT = 'after_cursor is 0 (from the start) or a cursor the feed returned';
    ELSIF v_after < v_floor AND (v_wallet IS NULL OR pyxp.wallet_feed_behind_archive(v_wallet, v_after, v_floor)) THEN
        -- Rows after this cursor were archived (sql/13_retention.sql): never
        -- skipped silently.
        RAISE EXCEPTION 'rows after cursor % were archived', v_after
            USING ERRCODE = 'PX029',
                  DETAIL = format('the archived rows reach cursor %s', v_floor),
                  HINT = 'a consumer must be past the rows archived; they are in schema pyxp_archive (or its dump)';
    END IF;
    v_group := (v_after >> 24)::text::xid8;
    v_rank := v_after & 16777215;
    RETURN QUERY
        WITH page AS (
            -- Rows from before 0003: cursor = id.
            (SELECT t.id AS cur, t.*
               FROM pyxp.xp_transactions t
              WHERE t.feed_xid IS NULL AND t.id > v_after
                AND (v_wallet IS NULL OR t.user_wallet = v_wallet)
              ORDER BY t.id
              LIMIT v_max)
            UNION ALL
            -- Whole feed: final groups from the cursor's on, ranked as scanned
            -- (index xp_transactions_feed; the window streams, LIMIT stops it).
            (SELECT (g.feed_xid::text::bigint << 24) + g.rank, g.id, g.user_wallet, g.transaction_type,
                    g.xp_amount, g.xp_requested, g.balance_after, g.rule_id, g.campaign_id, g.subject,
                    g.idempotency_key, g.metadata, g.reverses, g.created_at, g.feed_xid, g.request_digest,
                    g.wallet_seq
               FROM (SELECT t.*, row_number() OVER (PARTITION BY t.feed_xid ORDER BY t.id) AS rank
                       FROM pyxp.xp_transactions t
                      WHERE v_wallet IS NULL AND t.feed_xid >= v_group AND t.feed_xid < v_horizon
                      ORDER BY t.feed_xid, t.id) g
              WHERE g.feed_xid > v_group OR g.rank > v_rank
              ORDER BY g.feed_xid, g.id
              LIMIT v_max)
            UNION ALL
            -- One wallet: its rows in chain order (= feed order, fact 2), each
            -- ranked within its whole group.
            (SELECT (t.feed_xid::text::bigint << 24) + r.rank, t.*
               FROM pyxp.xp_transactions t
              CROSS JOIN LATERAL (SELECT count(*) AS rank FROM pyxp.xp_transactions o
                                   WHERE o.feed_xid = t.feed_xid AND o.id <= t.id) r
              WHERE v_wallet IS NOT NULL AND t.user_wallet = v_wallet
                AND t.feed_xid >= v_group AND t.feed_xid < v_horizon
                AND (t.feed_xid > v_group OR r.rank > v_rank)
              ORDER BY t.wallet_seq
              LIMIT v_max)
        )
        SELECT p.cur, p.id, p.user_wallet, p.transaction_type, p.xp_amount, p.balance_after,
               before_.level, after_.level, p.campaign_id, p.subject, p.created_at
          FROM page p
         CROSS JOIN LATERAL (SELECT pyxp.row_ruleset(p.rule_id, p.idempotency_key) AS ruleset_id) q
         CROSS JOIN LATERAL pyxp.curve_position(q.ruleset_id, p.balance_after - p.xp_amount) before_
         CROSS JOIN LATERAL pyxp.curve_position(q.ruleset_id, p.balance_after) after_
         ORDER BY p.cur
         LIMIT v_max;
    -- Read with a snapshot older than an archive's commit: those rows were
    -- missing, and the floor above unseen (40001).
    PERFORM pyxp.ledger_unmoved();
END
$$;

CREATE OR REPLACE FUNCTION pyxp.ledger_unmoved()
RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED
AS $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_inherits i
                WHERE i.inhparent = 'pyxp.xp_transactions'::regclass
                  AND NOT EXISTS (SELECT FROM pg_catalog.pg_partition_tree('pyxp.xp_transactions'::regclass) p
                                   WHERE p.relid = i.inhrelid)) THEN
        RAISE EXCEPTION 'rows of the ledger were archived while this read ran (after its snapshot was taken)'
            USING ERRCODE = '40001',
                  HINT = 'run it again, in a new transaction: it then sees the archive (and PX029 for what needs its rows)';
    END IF;
    RETURN true;
END
$$;

CREATE OR REPLACE FUNCTION pyxp.recorded_request(p_key text)
RETURNS TABLE (inputs jsonb, inputs_digest bigint, ruleset_id bigint, created_at timestamptz, same_key boolean)
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_hash uuid := pyxp.key_hash(p_key);
    v_request pyxp.xp_requests;
    v_first record;
BEGIN
    SELECT * INTO v_request FROM pyxp.xp_requests q WHERE q.key_hash = v_hash;
    IF NOT FOUND THEN
        RETURN;
    ELSIF v_request.idempotency_key IS NOT NULL THEN
        RETURN QUERY SELECT v_request.inputs, v_request.inputs_digest, v_request.ruleset_id, v_request.created_at,
                            v_request.idempotency_key = p_key;
        RETURN;
    END IF;
    SELECT t.idempotency_key, t.user_wallet, t.campaign_id, t.subject, t.metadata, t.reverses, t.created_at,
           t.rule_id, ru.event, ru.ruleset_id
      INTO v_first
      FROM pyxp.xp_transactions t
      LEFT JOIN pyxp.rules ru ON ru.rule_id = t.rule_id
     WHERE pyxp.key_hash(t.idempotency_key) = v_hash AND t.request_digest IS NULL
     ORDER BY t.wallet_seq
     LIMIT 1;
    IF v_first.rule_id IS NOT NULL AND v_first.event IS NULL THEN  -- its rule is gone
        RETURN QUERY SELECT NULL::jsonb, v_request.inputs_digest, v_request.ruleset_id, v_request.created_at,
                            v_first.idempotency_key = p_key;
        RETURN;
    END IF;
    RETURN QUERY SELECT pyxp.rebuilt_request_inputs(v_first.idempotency_key, v_first.event, v_first.user_wallet,
                                                    v_first.campaign_id, v_first.subject, v_first.metadata,
                                                    v_first.reverses),
                        v_request.inputs_digest, coalesce(v_request.ruleset_id, v_first.ruleset_id),
                        coalesce(v_request.created_at, v_first.created_at), coalesce(v_first.idempotency_key = p_key, true);
END
$$;

CREATE OR REPLACE FUNCTION pyxp.simulated_amount(p_id bigint, p_action text, p_constant numeric, p_coefficients jsonb,
                                      p_inputs jsonb)
RETURNS numeric
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_missing text;
BEGIN
    SELECT k INTO v_missing FROM jsonb_object_keys(p_coefficients) k WHERE NOT p_inputs ? k LIMIT 1;
    IF v_missing IS NOT NULL THEN
        RAISE EXCEPTION 'transaction % has no input % for the candidate''s rule %', p_id, v_missing, p_action
            USING ERRCODE = 'PX018', HINT = 'a candidate''s formula may only use the inputs its action''s rows kept';
    END IF;
    RETURN pyxp.rule_amount(p_constant, p_coefficients, p_inputs);
END
$$;

CREATE OR REPLACE FUNCTION pyxp.simulated_rows(p_ruleset_id bigint)
RETURNS TABLE (id bigint, user_wallet text, action text, now_xp bigint, asked numeric, applied numeric,
               reverses bigint, reversed boolean, frees boolean, allowance text, cap_max_xp bigint)
LANGUAGE sql STABLE
AS $$
    WITH rows_ AS (
        SELECT t.id, t.user_wallet, t.transaction_type AS action, t.xp_amount AS now_xp, t.reverses,
               CASE WHEN t.reverses IS NOT NULL THEN NULL
                    WHEN c.rule_id IS NULL THEN 0
                    WHEN c.xp_coefficients = '{}' THEN round(c.xp_constant)
                    ELSE pyxp.simulated_amount(t.id, c.action, c.xp_constant, c.xp_coefficients, t.metadata)
               END AS asked,
               v.id IS NOT NULL AS reversed,
               CASE WHEN c.cap_max_xp IS NOT NULL
                    THEN pyxp.cap_allowance(c.cap_group, c.action) || '@'
                         || date_trunc(c.cap_per, t.created_at, rs.timezone) END AS allowance,
               c.cap_max_xp
          FROM pyxp.xp_transactions t
          JOIN pyxp.rulesets rs ON rs.ruleset_id = p_ruleset_id
          LEFT JOIN pyxp.rules c ON c.ruleset_id = p_ruleset_id AND c.action = t.transaction_type
                                AND t.reverses IS NULL
          LEFT JOIN (SELECT DISTINCT x.reverses AS id FROM pyxp.xp_transactions x WHERE x.reverses IS NOT NULL) v
                 ON v.id = t.id
         WHERE NOT (t.transaction_type = 'RULES_ADJUSTMENT' AND t.rule_id IS NULL AND t.reverses IS NULL)
    ), capped AS (
        SELECT g.id, least(g.gained, g.cap_max_xp) - least(g.gained - g.asked, g.cap_max_xp) AS applied
          FROM (SELECT r.id, r.asked, r.cap_max_xp,
                       sum(r.asked) OVER (PARTITION BY r.user_wallet, r.allowance ORDER BY r.id) AS gained
                  FROM rows_ r WHERE r.allowance IS NOT NULL AND r.asked > 0) g
    )
    SELECT r.id, r.user_wallet, r.action, r.now_xp, coalesce(r.asked, -o.asked),
           coalesce(c.applied, r.asked, -o.applied), r.reverses, r.reversed,
           coalesce(o.allowance IS NOT NULL AND o.asked > 0, false), r.allowance, r.cap_max_xp
      FROM rows_ r
      LEFT JOIN capped c ON c.id = r.id
      LEFT JOIN (SELECT o.id, o.asked, coalesce(oc.applied, o.asked) AS applied, o.allowance
                   FROM rows_ o LEFT JOIN capped oc ON oc.id = o.id
                  WHERE o.reversed) o ON o.id = r.reverses
$$;

CREATE OR REPLACE FUNCTION pyxp.simulation_report(ruleset_id bigint, top_wallets integer DEFAULT 10)
RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET jit = off
AS $$
DECLARE
    v_ruleset pyxp.rulesets := pyxp.checked_ruleset(simulation_report.ruleset_id);
    v_top integer := pyxp.checked_row_count('top_wallets', simulation_report.top_wallets);
    v_report jsonb;
BEGIN
    WITH leveled AS MATERIALIZED (
        SELECT t.user_wallet, t.total_xp_now AS now_xp, b.current_level AS level_now, t.by_action,
               pyxp.checked_simulated_total(t.user_wallet, t.total_xp_then) AS then_xp, c.level AS level_then
          FROM pyxp.simulated_totals(v_ruleset.ruleset_id) t
          JOIN pyxp.xp_balances b ON b.user_wallet = t.user_wallet
         CROSS JOIN LATERAL pyxp.curve_position(v_ruleset.ruleset_id,
                                                pyxp.checked_simulated_total(t.user_wallet, t.total_xp_then)) c
    ),
    -- Per action: the rows' amounts under the candidate, except in the
    -- wallets folded in order, whose figures the fold kept (by_action).
    actions AS (
        SELECT a.action, sum(a.rows_)::bigint AS rows_, sum(a.now_xp)::bigint AS now_xp,
               sum(a.then_xp)::bigint AS then_xp
          FROM (SELECT r.action, count(*) AS rows_, sum(r.now_xp) AS now_xp,
                       sum(r.applied) FILTER (WHERE f.user_wallet IS NULL) AS then_xp
                  FROM pyxp.simulated_rows(v_ruleset.ruleset_id) r
                  LEFT JOIN (SELECT l.user_wallet FROM leveled l WHERE l.by_action IS NOT NULL) f
                         ON f.user_wallet = r.user_wallet
                 GROUP BY r.action
                UNION ALL
                SELECT e.key, 0, 0, sum(e.value::numeric)
                  FROM leveled l CROSS JOIN LATERAL jsonb_each_text(l.by_action) e
                 GROUP BY e.key) a
         GROUP BY a.action
    )
    SELECT jsonb_build_object(
        'ruleset', jsonb_build_object('ruleset_id', v_ruleset.ruleset_id, 'name', v_ruleset.name,
                                      'version', v_ruleset.version, 'is_active', v_ruleset.is_active),
        'summary', (SELECT jsonb_build_object(
                        'wallets', count(*), 'up', count(*) FILTER (WHERE l.then_xp > l.now_xp),
                        'down', count(*) FILTER (WHERE l.then_xp < l.now_xp),
                        'unchanged', count(*) FILTER (WHERE l.then_xp = l.now_xp),
                        'level_up', count(*) FILTER (WHERE l.level_then > l.level_now),
                        'level_down', count(*) FILTER (WHERE l.level_then < l.level_now),
                        'xp_now', coalesce(sum(l.now_xp), 0), 'xp_then', coalesce(sum(l.then_xp), 0))
                      FROM leveled l),
        'actions', (SELECT coalesce(jsonb_agg(jsonb_build_object('action', a.action, 'rows', a.rows_,
                                                                 'xp_now', a.now_xp, 'xp_then', coalesce(a.then_xp, 0))
                                              ORDER BY a.action), '[]')
                      FROM actions a),
        'top_changes', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                                   'user_wallet', t.user_wallet, 'total_xp_now', t.now_xp, 'total_xp_then', t.then_xp,
                                   'level_now', t.level_now, 'level_then', t.level_then)
                                   ORDER BY abs(t.then_xp - t.now_xp) DESC, t.user_wallet), '[]')
                          FROM (SELECT * FROM leveled l WHERE l.then_xp <> l.now_xp
                                 ORDER BY abs(l.then_xp - l.now_xp) DESC, l.user_wallet LIMIT v_top) t))
      INTO v_report;
    PERFORM pyxp.ledger_unmoved();  -- (40001 after a read older than an archive)
    RETURN v_report;
END
$$;

DROP FUNCTION pyxp.oldest_running_here(pg_snapshot);

DROP FUNCTION pyxp.row_formula_inputs(jsonb, boolean, jsonb);

COMMENT ON FUNCTION pyxp.simulated_amount(bigint, text, numeric, jsonb, jsonb) IS
    'internal: a candidate''s formula on a ledger row''s stored inputs, or PX018.';

DROP SEQUENCE pyxp.retroactive_applications;

RESET ROLE;
