-- Downgrade of 0037: 0036's functions.
SET LOCAL ROLE pyxp_owner;

DROP FUNCTION pyxp.follow_replicated_archives();

-- The revision whose functions this database has: every revision from 0036
-- on replaces it with its own number (and its downgrade with the one before).
-- pyxp.alembic_version says the same, but a table is copied by a logical
-- replication that publishes it (FOR ALL TABLES) and a function is not:
-- pyxp db current and pyxp db upgrade refuse a database whose two differ
-- (pyxp/schema.py, revision_mismatch; a hostile test, 0036: a subscriber
-- said 0036 with 0035's functions, and pyxp db upgrade did nothing there).
CREATE OR REPLACE FUNCTION pyxp.schema_revision()
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$ SELECT '0036' $$;

-- The oldest transaction snapshot p_snapshot saw running that is not running
-- in another database of the cluster now (one of those writes no row here;
-- one that ended since counts as still running): below its id, every feed
-- group is final (the feed's horizon, above), and no transaction can still
-- add a row to one (pyxp.archive_ledger_partitions). NULL: none. A
-- transaction id is held in pg_locks from its assignment to its end, and
-- pg_stat_activity says which database its backend is in; a prepared
-- transaction (two-phase commit) has no backend: pg_prepared_xacts says
-- (0028: one left prepared in another database held the feed back until it
-- ended, a hostile test).
CREATE OR REPLACE FUNCTION pyxp.oldest_running_here(p_snapshot pg_snapshot)
RETURNS xid8
LANGUAGE sql STABLE
AS $$
    SELECT min(x.xid)
      FROM pg_snapshot_xip(p_snapshot) x(xid)
     WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_locks l
                         JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
                        WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock'
                          AND l.transactionid = xid(x.xid)
                          AND a.datid <> (SELECT d.oid FROM pg_catalog.pg_database d
                                           WHERE d.datname = current_database()))
       AND NOT EXISTS (SELECT FROM pg_catalog.pg_prepared_xacts p
                        WHERE p.transaction = xid(x.xid) AND p.database <> current_database())
$$;

-- Public: committed ledger rows after `after_cursor`, ascending by cursor, at
-- most `max_rows` (1..1000), optionally one wallet's. total_xp is the balance
-- right after the row; previous_level and current_level its levels before
-- and after, on the curve of the ruleset the row was written under.
CREATE OR REPLACE FUNCTION pyxp.changes(after_cursor bigint DEFAULT 0, max_rows integer DEFAULT 100,
                             wallet text DEFAULT NULL)
RETURNS TABLE (cursor bigint, transaction_id bigint, user_wallet text, transaction_type text,
               xp_amount bigint, total_xp bigint, previous_level bigint, current_level bigint,
               campaign_id text, subject text, created_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
-- Each call's queries planned for its cursor: from the sixth call of a
-- session PL/pgSQL would plan them generically, and with 15 partitions or
-- more that plan sorted every row after the cursor on each page (a temp
-- file the size of the rest of the ledger; 53400 under temp_file_limit: a
-- hostile test, 0035) instead of streaming the window until LIMIT.
SET plan_cache_mode = force_custom_plan
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
    -- (As the ledger counts transaction ids: pyxp.ledger_xid.)
    v_horizon xid8 := pyxp.ledger_xid(CASE WHEN pg_is_in_recovery() THEN pg_snapshot_xmin(v_snapshot) ELSE least(
        pyxp.oldest_running_here(v_snapshot), pg_current_xact_id_if_assigned(), pg_snapshot_xmax(v_snapshot)) END);
    v_group xid8;
    v_rank bigint;
    v_floor bigint := (SELECT max(a.feed_floor) FROM pyxp.xp_ledger_archives a);
    v_kept bigint;
BEGIN
    PERFORM pyxp.require_ledger_cluster();  -- (PX032: the groups of another cluster, 0032)
    IF v_after IS NULL OR v_after < 0 THEN
        RAISE EXCEPTION 'invalid after_cursor: %', coalesce(v_after::text, 'NULL')
            USING ERRCODE = 'PX023', HINT = 'after_cursor is 0 (from the start) or a cursor the feed returned';
    END IF;
    v_kept := pyxp.forked_cursor(v_after);
    IF v_kept IS NOT NULL THEN
        -- A cursor of a history this database left (0033, a hostile test of
        -- failovers): the rows it was read up to are not here, and the
        -- groups above the ledger's last row were handed out again, to rows
        -- it would skip. Refused on a standby too.
        RAISE EXCEPTION 'after_cursor % was handed out by a history this database left (a failover, a point-in-time recovery or a copy): the rows it was read up to are not in this ledger',
                        v_after
            USING ERRCODE = 'PX033',
                  DETAIL = format('every row this ledger kept from that history is at or below cursor %s', v_kept),
                  HINT = format('go on from cursor %s; what was read after it (rows, levels, totals) no longer happened: read the wallets'' balances again (README "Copies of the database")', v_kept);
    ELSIF (v_after >> 24)::text::xid8 >= pyxp.ledger_xid(pg_snapshot_xmax(v_snapshot)) AND NOT pg_is_in_recovery() THEN
        -- A group no transaction has reached: no cursor the feed returned
        -- (0028: one was accepted, and the rows below it skipped for good, a
        -- hostile test); or one from a cluster whose transaction ids ran
        -- higher (a dump restored elsewhere). A standby may lag: there, none
        -- is refused.
        RAISE EXCEPTION 'after_cursor % is ahead of the feed (its group % has no transaction yet)',
                        v_after, v_after >> 24
            USING ERRCODE = 'PX023',
                  HINT = 'pass a cursor this database''s feed returned (a copy not adopted yet: run pyxp db upgrade first; README "Copies of the database")';
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
            -- Each branch names its columns: with t.* in some, a column an
            -- application added to the ledger failed every read of the feed
            -- (42601, each UNION query must have the same number of
            -- columns; a hostile test, 0034).
            -- Rows from before 0003: cursor = id.
            (SELECT t.id AS cur, t.id, t.user_wallet, t.transaction_type, t.xp_amount, t.balance_after, t.rule_id,
                    t.campaign_id, t.subject, t.idempotency_key, t.created_at
               FROM pyxp.xp_transactions t
              WHERE t.feed_xid IS NULL AND t.id > v_after
                AND (v_wallet IS NULL OR t.user_wallet = v_wallet)
              ORDER BY t.id
              LIMIT v_max)
            UNION ALL
            -- Whole feed: final groups from the cursor's on, ranked as scanned
            -- (index xp_transactions_feed; the window streams, LIMIT stops it).
            (SELECT (g.feed_xid::text::bigint << 24)
                    + CASE WHEN g.rank > 16777215 THEN pyxp.raised_feed_overflow(g.feed_xid) ELSE g.rank END,
                    g.id, g.user_wallet, g.transaction_type, g.xp_amount, g.balance_after, g.rule_id,
                    g.campaign_id, g.subject, g.idempotency_key, g.created_at
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
            (SELECT (t.feed_xid::text::bigint << 24)
                    + CASE WHEN r.rank > 16777215 THEN pyxp.raised_feed_overflow(t.feed_xid) ELSE r.rank END,
                    t.id, t.user_wallet, t.transaction_type, t.xp_amount, t.balance_after, t.rule_id,
                    t.campaign_id, t.subject, t.idempotency_key, t.created_at
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
CREATE OR REPLACE FUNCTION pyxp.hold_awards(p_caller text)
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

-- Owner operation (monthly, after pyxp.create_ledger_partitions): archives
-- every partition of the ledger that ends at or before archived_before (at
-- most the start of this month, UTC), except the default partition. One row
-- per partition archived; none when there is nothing to archive. In order:
--   1. EXCLUSIVE on xp_audit_checkpoints (one archive or checkpoint at a
--      time), SHARE on rulesets (no ruleset activated meanwhile), the
--      lock of the ledger's partitions (pyxp.lock_ledger_partitions: no move meanwhile;
--      PX030 for rows of a month without a partition in the range), then SHARE
--      on those partitions: no row can be added to them meanwhile (only a
--      transaction that began before their range ended could: one that
--      wrote to them is waited for; one that had not yet written does so
--      after the archive, and its rows, dated in the archived range, go to
--      the default partition: in the ledger, audited and in the feed, but
--      never archived, see README "Retention")
--   2. an audit checkpoint (pyxp.record_audit_checkpoint, a statement of its
--      own, so it sees every row of those partitions): what was written
--      since the last one is verified (PX028, nothing archived, when
--      anything is inconsistent), and the archive names it; PX030 for a
--      reversal among those rows whose original stays
--   3. the openings: per wallet with archived rows, their count, and its
--      positions up to its highest archived one folded into its previous
--      opening (balance_after of that row, and the latest periods of those
--      positions, in the active ruleset's zone)
--   4. the archived rows' use of capped allowances
--   5. the requests of archived flow and reversal rows keep their key and
--      inputs (rebuilt from the rows, pyxp.recorded_request) and are marked
--   6. ACCESS EXCLUSIVE on the ledger (awards wait until this transaction
--      commits: at most lock_timeout, 1 s, for the lock, then the catalog
--      changes below): the originals of reversals still in the ledger, then
--      DETACH each partition (pyxp.guard_ledger_partitions lets through the
--      partitions of this transaction's archive row) and move it to
--      pyxp_archive.
-- Steps 3 to 5 read every archived row: run it when awards are few.
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
    v_open record;
BEGIN
    PERFORM pyxp.require_read_committed();
    PERFORM pyxp.follow_timeline();  -- (a failover or a point-in-time recovery: the ids move past the history left, 0033)
    PERFORM pyxp.require_ledger_cluster();  -- (PX032: its feed floor counts this cluster's ids, 0032)
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
    -- Nor while rows are moved out of the default partition (the lock of
    -- pyxp.create_ledger_partitions, sql/12_partitions.sql: a move that read
    -- the horizon before this archive committed made a month it archived
    -- again, a hostile test, 0030).
    PERFORM pyxp.lock_ledger_partitions();
    -- Rows of a month that had no partition (in the default partition),
    -- dated in the range asked for: it would leave them behind, dated before
    -- its horizon, where no partition of theirs can be made and no archive
    -- takes them (0029; before, they stayed there for good). The range asked
    -- for, not the partitions found (0030: with no partition for September
    -- and October, an archive to November took August and said nothing).
    SELECT d.id, d.created_at INTO v_problem
      FROM pyxp.xp_transactions_default d
     WHERE d.created_at >= coalesce(pyxp.archive_horizon(), '-infinity')
       AND d.created_at < archive_ledger_partitions.archived_before
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'transaction % (%) is in the default partition (its month had no partition), in the range to archive',
                        v_problem.id, v_problem.created_at
            USING ERRCODE = 'PX030',
                  HINT = 'run pyxp.create_ledger_partitions() (pyxp db create-partitions) first: it moves such rows into their month''s partition';
    END IF;
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
    -- A group of these rows that a transaction running now may still add a
    -- row to (a transaction with a lower id chains a wallet's next row into
    -- its last row's group, sql/11_changes.sql): the feed would rank that row
    -- at or below the floor this archive sets, where no consumer reads (0027,
    -- a hostile test: a row delivered to nobody).
    -- (The transactions of this database only, as the feed counts them.)
    SELECT t.feed_xid AS feed_group, o.oldest INTO v_open
      FROM (SELECT pyxp.ledger_xid(pyxp.oldest_running_here(pg_current_snapshot())) AS oldest) o
      JOIN pyxp.xp_transactions t
        ON t.tableoid = ANY (v_oids) AND t.created_at < v_ends[cardinality(v_ends)] AND t.feed_xid >= o.oldest
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'rows to archive are in feed group %, which transaction % or a later one, running now, may still add to',
                        v_open.feed_group, v_open.oldest
            USING ERRCODE = 'PX030',
                  HINT = 'archive again once the transactions running now have ended (pg_stat_activity)';
    END IF;
    IF v_problem.id IS NOT NULL THEN
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
               -- now (a row from before 0003: its id); in a group an earlier
               -- archive took rows of, its rank then was higher than now (the
               -- rows left were ranked anew, 0027: a consumer was moved past a
               -- row, a hostile test): that group's last cursor, which no
               -- consumer in the group is past
               coalesce((g.top_group::text::bigint << 24)
                        + CASE WHEN g.top_group::text::bigint
                                    <= (SELECT max(a.feed_floor) >> 24 FROM pyxp.xp_ledger_archives a WHERE a.archive_id <> v_archive)
                               THEN 16777215
                               ELSE (SELECT count(*) FROM pyxp.xp_transactions x
                                      WHERE x.feed_xid = g.top_group AND x.id <= g.top_id) END,
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
    -- The guard (sql/12_partitions.sql) lets through these partitions'
    -- DETACH in this transaction only. (A guard installed before 0030, which
    -- a migrating role that is no superuser could not replace, reads
    -- pyxp.archiving and the archive's row instead.)
    PERFORM set_config('pyxp.archiving', array_to_string(v_oids, ','), true);
    PERFORM set_config('pyxp.archiving_xact', pg_current_xact_id()::text, true);
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
    PERFORM set_config('pyxp.archiving_xact', '', true);
END
$$;

-- Public (SPEC 13): what every wallet's total and level would be had
-- ruleset version ruleset_id (installed, active or not) been active for the
-- whole ledger. Writes nothing. One row per wallet with a balance.
CREATE OR REPLACE FUNCTION pyxp.simulate_rules(ruleset_id bigint)
RETURNS TABLE (user_wallet text, total_xp_now bigint, total_xp_then bigint, level_now bigint, level_then bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET jit = off
AS $$
BEGIN
    RETURN QUERY
        SELECT s.user_wallet, s.total_xp_now, pyxp.checked_simulated_total(s.user_wallet, s.total_xp_then),
               b.current_level, c.level
          FROM pyxp.simulated_totals(simulate_rules.ruleset_id) s
          JOIN pyxp.xp_balances b ON b.user_wallet = s.user_wallet
         CROSS JOIN LATERAL pyxp.curve_position(simulate_rules.ruleset_id,
                                                pyxp.checked_simulated_total(s.user_wallet, s.total_xp_then)) c
         ORDER BY s.user_wallet;
    PERFORM pyxp.ledger_unmoved();  -- (40001 after a read older than an archive)
END
$$;

DROP FUNCTION pyxp.move_to_archive(text[], oid[]);
DROP FUNCTION pyxp.transaction_ended(xid8);

RESET ROLE;
