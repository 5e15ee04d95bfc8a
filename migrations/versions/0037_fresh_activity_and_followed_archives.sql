-- 0037: pyxp.schema_revision() says the revision of the functions, which a
-- logical replication does not copy (it copies pyxp.alembic_version). A
-- reversal frees its allowance before the balance update whose triggers may
-- award; the nested-write mark is the writing transaction's id; PX019's hint
-- states the bound (pyxp.append_rows, pyxp.refuse_period_xp). The feed's
-- horizon reads pg_stat_activity as it is now, not as the reader's
-- transaction first read it (pyxp.oldest_running_here: a reader inside a
-- transaction was held back by a transaction another database began after
-- its first read); so does the 55P03 of the operations that hold every
-- award (pyxp.hold_awards). A cursor another session's newer snapshot
-- handed out reads an empty page in an older REPEATABLE READ snapshot,
-- where it was refused with PX023 (pyxp.changes, pyxp.transaction_ended). A
-- logical replication subscriber makes the archives its publisher made
-- (pyxp.follow_replicated_archives: their partitions stayed in its ledger,
-- and its audit reported opening_mismatch for every archived wallet); pyxp
-- db upgrade runs it, and an archive refuses while one is not made here.
-- simulate_rules refuses an unknown ruleset on a ledger with no balance too
-- (PX027); simulation_report names the rules its replay cannot count
-- (not_simulated).
SET LOCAL ROLE pyxp_owner;

-- The revision whose functions this database has: every revision from 0037
-- on replaces it with its own number (its downgrade puts the one before back;
-- 0037's drops it).
-- pyxp.alembic_version says the same, but a table is copied by a logical
-- replication that publishes it (FOR ALL TABLES) and a function is not:
-- pyxp db current and pyxp db upgrade refuse a database whose two differ
-- (pyxp/schema.py, revision_mismatch; a hostile test: a subscriber said 0036
-- with 0035's functions, and pyxp db upgrade did nothing there).
CREATE FUNCTION pyxp.schema_revision()
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$ SELECT '0037' $$;

REVOKE ALL ON FUNCTION pyxp.schema_revision() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pyxp.schema_revision() TO pyxp_writer, pyxp_reader;
COMMENT ON FUNCTION pyxp.schema_revision() IS
    'API: the revision of pyxp whose functions this database has (pyxp db current compares it with pyxp.alembic_version, which a logical replication may copy).';

-- Whether transaction p_group (as the ledger counts them, pyxp.ledger_xid)
-- has ended, whatever the caller's snapshot (pg_xact_status: NULL for an id
-- too old to tell, 22023 for one in the future; an id below the offset is
-- from the cluster the ledger was copied from). A cursor the feed handed out
-- has a group whose transaction had ended (it was below a horizon).
CREATE FUNCTION pyxp.transaction_ended(p_group xid8)
RETURNS boolean
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    IF p_group::text::numeric < pyxp.xid_offset() THEN
        RETURN true;
    END IF;
    RETURN coalesce(pg_xact_status((p_group::text::numeric - pyxp.xid_offset())::text::xid8) <> 'in progress', true);
EXCEPTION WHEN invalid_parameter_value THEN
    RETURN false;
END
$$;

REVOKE ALL ON FUNCTION pyxp.transaction_ended(xid8) FROM PUBLIC;
COMMENT ON FUNCTION pyxp.transaction_ended(xid8) IS
    'internal: whether a feed group''s transaction has ended, whatever the caller''s snapshot.';

-- Detaches the ledger's partitions p_names (their oids p_oids) and moves
-- them to schema pyxp_archive, under the ledger's ACCESS EXCLUSIVE lock,
-- which the caller holds. The guard (sql/12_partitions.sql) lets through
-- these partitions' DETACH in this transaction only. (A guard installed
-- before 0030, which a migrating role that is no superuser could not
-- replace, reads pyxp.archiving and the archive's row instead.) For
-- pyxp.archive_ledger_partitions and pyxp.follow_replicated_archives.
CREATE FUNCTION pyxp.move_to_archive(p_names text[], p_oids oid[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pyxp, pg_temp
AS $$
BEGIN
    PERFORM set_config('pyxp.archiving', array_to_string(p_oids, ','), true);
    PERFORM set_config('pyxp.archiving_xact', pg_current_xact_id()::text, true);
    FOR i IN 1 .. cardinality(p_names) LOOP
        EXECUTE format('ALTER TABLE pyxp.xp_transactions DETACH PARTITION pyxp.%I', p_names[i]);
        EXECUTE format('ALTER TABLE pyxp.%I SET SCHEMA pyxp_archive', p_names[i]);
    END LOOP;
    PERFORM set_config('pyxp.archiving', '', true);
    PERFORM set_config('pyxp.archiving_xact', '', true);
END
$$;

-- Owner operation on a logical replication subscriber of pyxp's tables (and
-- after its switchover): the archives its publisher made, which reached it
-- as rows (xp_ledger_archives, the openings, the archived usage, originals
-- and requests) while their partitions stayed in its ledger (a DETACH is
-- not replicated), are made here too: each archive's partitions, still
-- attached, are moved to pyxp_archive, in archive order. Before 0037 the
-- subscriber's audit() reported opening_mismatch for every archived wallet,
-- it could not archive itself (PX032), and after the switchover its archive
-- took the same months again (23505; a hostile test). An archive is moved
-- only when the partitions named hold exactly the rows it took (their
-- count, rows_archived, and highest id, last_transaction_id), besides rows
-- written after it (ids above its last), which go to the default partition
-- as on the publisher: else PX030 and nothing moved. A partition of the archive this database never had
-- counts no row (the archive took none from it, or the count differs). One
-- row per partition moved; none when every archive is here (a publisher's
-- own are, always). pyxp db upgrade runs it at its end (migrations/env.py).
-- Locks: EXCLUSIVE on xp_audit_checkpoints (one archive or checkpoint at a
-- time), the partitions' lock, then ACCESS EXCLUSIVE on the ledger for the
-- catalog changes (at most lock_timeout, 1 s): the subscription's apply
-- and readers wait that long.
CREATE FUNCTION pyxp.follow_replicated_archives()
RETURNS TABLE (archive_id bigint, partition_name text, rows_archived bigint, archive_table text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET lock_timeout = '1s'
AS $$
#variable_conflict use_column
DECLARE
    v_archive record;
    v_names text[];
    v_oids oid[];
    v_counts bigint[];
    v_count bigint;
    v_later bigint;  -- rows of these partitions written after the archive
    v_after bigint;
    v_top bigint;
    v_id bigint;
    v_name text;
    v_columns text;
BEGIN
    IF NOT EXISTS (SELECT FROM pyxp.xp_ledger_archives a JOIN pyxp.ledger_partitions() p
                                 ON p.partition_name = ANY (a.partitions)) THEN
        RETURN;  -- (every archive is here: no lock taken, pyxp db upgrade runs this on every database)
    END IF;
    PERFORM pyxp.require_read_committed();
    LOCK TABLE pyxp.xp_audit_checkpoints IN EXCLUSIVE MODE;
    PERFORM pyxp.lock_ledger_partitions();
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO v_columns
      FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = 'pyxp.xp_transactions'::regclass AND a.attnum > 0 AND NOT a.attisdropped;
    FOR v_archive IN
        SELECT a.archive_id, a.partitions, a.rows_archived, coalesce(a.last_transaction_id, 0) AS top_id
          FROM pyxp.xp_ledger_archives a
         WHERE EXISTS (SELECT FROM pyxp.ledger_partitions() p WHERE p.partition_name = ANY (a.partitions))
         ORDER BY a.archive_id
    LOOP
        SELECT array_agg(p.partition_name ORDER BY p.range_end),
               array_agg(('pyxp.' || quote_ident(p.partition_name))::regclass::oid ORDER BY p.range_end)
          INTO v_names, v_oids
          FROM pyxp.ledger_partitions() p
         WHERE p.partition_name = ANY (v_archive.partitions) AND NOT p.is_default;
        -- The ledger's lock first: no row enters or leaves these partitions
        -- (the subscription's apply waits) until this transaction commits.
        LOCK TABLE pyxp.xp_transactions IN ACCESS EXCLUSIVE MODE;
        v_counts := '{}';
        v_top := NULL;
        v_later := 0;
        FOREACH v_name IN ARRAY v_names LOOP
            EXECUTE format('SELECT count(*) FILTER (WHERE t.id <= $1), max(t.id) FILTER (WHERE t.id <= $1), '
                           'count(*) FILTER (WHERE t.id > $1) FROM pyxp.%I t', v_name)
               INTO v_count, v_id, v_after USING v_archive.top_id;
            v_later := v_later + v_after;
            v_counts := v_counts || v_count;
            v_top := greatest(v_top, v_id);
        END LOOP;
        IF (SELECT sum(c) FROM unnest(v_counts) c) IS DISTINCT FROM v_archive.rows_archived
           OR v_top IS DISTINCT FROM nullif(v_archive.top_id, 0) THEN
            RAISE EXCEPTION 'archive % took % rows up to transaction %, its partitions here (%) hold % up to transaction %',
                            v_archive.archive_id, v_archive.rows_archived, coalesce(nullif(v_archive.top_id, 0)::text, 'none'),
                            array_to_string(v_names, ', '), (SELECT sum(c) FROM unnest(v_counts) c),
                            coalesce(v_top::text, 'none')
                USING ERRCODE = 'PX030',
                      HINT = 'a subscriber behind its publisher: wait until it has caught up; rows of those months in '
                             'the default partition: run pyxp.create_ledger_partitions() first; nothing was moved';
        END IF;
        -- Rows dated in those months that the publisher wrote after the
        -- archive (their transaction began before the months ended; ids above
        -- the archive's last): the publisher keeps them in its default
        -- partition, and this ledger received them in the partitions still
        -- attached here. They go to the default partition too, unchanged,
        -- once the months are detached (its bounds then take them in); a
        -- partition fires no row trigger on INSERT (the ledger's AFTER INSERT
        -- trigger is the parent's, per statement). Before, the archive could
        -- never be followed (0037, a re-test).
        IF v_later > 0 THEN
            CREATE TEMP TABLE pyxp_rows_after_archive (LIKE pyxp.xp_transactions) ON COMMIT DROP;
            FOREACH v_name IN ARRAY v_names LOOP
                EXECUTE format('INSERT INTO pg_temp.pyxp_rows_after_archive (%s) SELECT %s FROM pyxp.%I t WHERE t.id > $1',
                               v_columns, v_columns, v_name) USING v_archive.top_id;
                EXECUTE format('ALTER TABLE pyxp.%I DISABLE TRIGGER xp_transactions_append_only', v_name);
                EXECUTE format('DELETE FROM pyxp.%I t WHERE t.id > $1', v_name) USING v_archive.top_id;
                EXECUTE format('ALTER TABLE pyxp.%I ENABLE ALWAYS TRIGGER xp_transactions_append_only', v_name);
            END LOOP;
        END IF;
        PERFORM pyxp.move_to_archive(v_names, v_oids);
        IF v_later > 0 THEN
            EXECUTE format('INSERT INTO pyxp.xp_transactions_default (%s) SELECT %s FROM pg_temp.pyxp_rows_after_archive',
                           v_columns, v_columns);
            DROP TABLE pg_temp.pyxp_rows_after_archive;
        END IF;
        FOR i IN 1 .. cardinality(v_names) LOOP
            archive_id := v_archive.archive_id;
            partition_name := v_names[i];
            rows_archived := v_counts[i];
            archive_table := 'pyxp_archive.' || quote_ident(v_names[i]);
            RETURN NEXT;
        END LOOP;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION pyxp.follow_replicated_archives(), pyxp.move_to_archive(text[], oid[]) FROM PUBLIC;
COMMENT ON FUNCTION pyxp.follow_replicated_archives() IS
    'internal: on a logical replication subscriber, moves to pyxp_archive the partitions its publisher archived (their rows checked against the archive). Owner only.';
COMMENT ON FUNCTION pyxp.move_to_archive(text[], oid[]) IS
    'internal: detaches ledger partitions and moves them to schema pyxp_archive (the caller holds the ledger''s lock).';

-- The oldest transaction snapshot p_snapshot saw running that is not running
-- in another database of the cluster now (one of those writes no row here;
-- one that ended since counts as still running): below its id, every feed
-- group is final (the feed's horizon, above), and no transaction can still
-- add a row to one (pyxp.archive_ledger_partitions). NULL: none. A
-- transaction id is held in pg_locks from its assignment to its end, and
-- pg_stat_activity says which database its backend is in; a prepared
-- transaction (two-phase commit) has no backend: pg_prepared_xacts says
-- (0028: one left prepared in another database held the feed back until it
-- ended, a hostile test). PostgreSQL keeps one copy of pg_stat_activity for
-- a transaction's duration: it is read afresh here (pg_stat_clear_snapshot,
-- which also ends the caller's copy of the cumulative statistics), after
-- p_snapshot was taken, so it lists the backend of every transaction in the
-- snapshot's list that is still running, with its database. Before 0037 a
-- reader inside a transaction took a backend started after its first read,
-- in another database, for one of this database, and was held back until
-- its own transaction ended (a reproduction of stop 39's hypothesis); a pid
-- reused meanwhile by a backend of this database could have let a page pass
-- a transaction still running here.
CREATE OR REPLACE FUNCTION pyxp.oldest_running_here(p_snapshot pg_snapshot)
RETURNS xid8
LANGUAGE sql STABLE
AS $$
    SELECT pg_catalog.pg_stat_clear_snapshot();
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
    ELSIF (v_after >> 24)::text::xid8 >= pyxp.ledger_xid(pg_snapshot_xmax(v_snapshot)) AND NOT pg_is_in_recovery()
          AND NOT pyxp.transaction_ended((v_after >> 24)::text::xid8) THEN
        -- A group no transaction has reached, or whose transaction still
        -- runs: no cursor the feed returned (0028: one was accepted, and the
        -- rows below it skipped for good, a hostile test); or one from a
        -- cluster whose transaction ids ran higher (a dump restored
        -- elsewhere). A standby may lag: there, none is refused. A group at
        -- or above this snapshot's xmax whose transaction has ended is a
        -- cursor a newer snapshot handed out, read in an older REPEATABLE
        -- READ or SERIALIZABLE one (a cursor store shared by sessions): its
        -- page is empty here, every group from it on being at or above the
        -- horizon, and the next transaction reads on (0037, a hostile test:
        -- it was refused, and a client takes PX023 for good).
        RAISE EXCEPTION 'after_cursor % is ahead of the feed (the transaction of its group % has not ended)',
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
    PERFORM pg_catalog.pg_stat_clear_snapshot();  -- (pg_stat_activity as it is now, not as this transaction first read it)
    SELECT string_agg(h.holder, '; ' ORDER BY h.since NULLS LAST, h.holder), bool_or(h.prepared)
      INTO v_holders, v_prepared
      FROM (SELECT DISTINCT
                   CASE WHEN l.pid IS NULL
                        THEN 'prepared transaction'
                             || coalesce(format(' %s (prepared %s by %s)', quote_literal(p.gid), p.prepared, p.owner), '')
                        ELSE format('session pid %s', l.pid)
                             -- (another role's session shows neither to pyxp_owner without
                             -- pg_read_all_stats: nothing then, not "(, transaction started )",
                             -- a hostile test, 0037)
                             || CASE WHEN a.state IS NOT NULL
                                     THEN format(' (%s, transaction started %s)', a.state, a.xact_start) ELSE '' END
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
    -- An archive of this ledger whose partitions are still attached here: a
    -- publisher's archive that reached this database (a logical replication
    -- subscriber, or the primary it became) and that
    -- pyxp.follow_replicated_archives has not made here. Archiving now would
    -- take the same months a second time, and its openings would count their
    -- rows twice (0037, a hostile test: after a switchover whose follow had
    -- failed, audit() reported every wallet of those months for good).
    SELECT a.archive_id, p.partition_name INTO v_problem
      FROM pyxp.xp_ledger_archives a JOIN pyxp.ledger_partitions() p ON p.partition_name = ANY (a.partitions)
     ORDER BY a.archive_id LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'archive % took partition %, which is still attached here: it was made on the publisher this database replicated',
                        v_problem.archive_id, v_problem.partition_name
            USING ERRCODE = 'PX030',
                  HINT = 'run pyxp db upgrade (pyxp.follow_replicated_archives()) first: it makes that archive here, or says why it cannot';
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
    PERFORM pyxp.move_to_archive(v_names, v_oids);
    FOR i IN 1 .. cardinality(v_names) LOOP
        archive_id := v_archive;
        partition_name := v_names[i];
        range_start := v_starts[i];
        range_end := v_ends[i];
        rows_archived := v_counts[i];
        archive_table := 'pyxp_archive.' || quote_ident(v_names[i]);
        RETURN NEXT;
    END LOOP;
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
    -- (PX027 before anything: inside the query it was checked only when a
    -- balance was joined, and on a ledger with none any id was accepted, a
    -- hostile test, 0037)
    PERFORM pyxp.checked_ruleset(simulate_rules.ruleset_id);
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

-- Public (SPEC 13): the simulation summed up for people and scripts (pyxp
-- rules simulate): per action (rows, XP now, XP then), the top_wallets
-- wallets with the largest changes, and a summary (wallets up, down, level
-- changes, totals). Two passes over the ledger (the wallets' totals, then
-- the actions'). Writes nothing.
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
                 GROUP BY e.key
                UNION ALL
                -- Earlier retroactive adjustments: in the totals now, left out
                -- under the candidate (0027: the actions did not add up to the
                -- summary after any retroactive application).
                SELECT t.transaction_type, count(*), sum(t.xp_amount), 0
                  FROM pyxp.xp_transactions t
                 WHERE t.transaction_type = 'RULES_ADJUSTMENT' AND t.rule_id IS NULL AND t.reverses IS NULL
                 GROUP BY t.transaction_type) a
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
                                   ORDER BY abs(t.then_xp - t.now_xp) DESC, t.user_wallet COLLATE "C"), '[]')
                          FROM (SELECT * FROM leveled l WHERE l.then_xp <> l.now_xp
                                 -- ties by code point, whatever the database's collation (0034)
                                 ORDER BY abs(l.then_xp - l.now_xp) DESC, l.user_wallet COLLATE "C" LIMIT v_top) t),
        -- What the replay cannot count (0037, a hostile test): it re-evaluates
        -- rows, so a call that wrote none is not seen. A rule of the candidate
        -- on an event whose action no row of the ledger carries ('added': the
        -- past calls of that event count nothing for it), and a rule whose
        -- event, campaign types or condition differ from the active
        -- version's rule of its action ('selection_changed': it is applied to
        -- every old row of the action, as that rule selected them).
        'not_simulated', (SELECT coalesce(jsonb_agg(jsonb_build_object('action', c.action, 'reason', c.reason)
                                                    ORDER BY c.action COLLATE "C"), '[]')
                            FROM (SELECT r.action, CASE WHEN o.rule_id IS NULL THEN 'added' ELSE 'selection_changed' END AS reason
                                    FROM pyxp.rules r
                                    LEFT JOIN pyxp.rules o
                                           ON o.action = r.action
                                          AND o.ruleset_id = (SELECT x.ruleset_id FROM pyxp.rulesets x WHERE x.is_active)
                                   WHERE r.ruleset_id = v_ruleset.ruleset_id AND NOT v_ruleset.is_active
                                     AND CASE WHEN o.rule_id IS NULL
                                              THEN r.event IS NOT NULL
                                                   AND NOT EXISTS (SELECT FROM actions a WHERE a.action = r.action AND a.rows_ > 0)
                                              ELSE (r.event, r.campaign_types, r.condition)
                                                   IS DISTINCT FROM (o.event, o.campaign_types, o.condition) END) c))
      INTO v_report;
    PERFORM pyxp.ledger_unmoved();  -- (40001 after a read older than an archive)
    RETURN v_report;
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
