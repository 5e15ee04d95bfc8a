-- 0038's downgrade: the functions as at 0037.
SET LOCAL ROLE pyxp_owner;

DROP FUNCTION pyxp.follow_replicated_archives(bigint);
DROP FUNCTION pyxp.archive_pending_here(bigint);

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
-- count, rows_archived, and highest id, last_transaction_id): else PX030
-- and nothing moved. A partition of the archive this database never had
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
    v_top bigint;
    v_id bigint;
    v_name text;
BEGIN
    IF NOT EXISTS (SELECT FROM pyxp.xp_ledger_archives a JOIN pyxp.ledger_partitions() p
                                 ON p.partition_name = ANY (a.partitions)) THEN
        RETURN;  -- (every archive is here: no lock taken, pyxp db upgrade runs this on every database)
    END IF;
    PERFORM pyxp.require_read_committed();
    LOCK TABLE pyxp.xp_audit_checkpoints IN EXCLUSIVE MODE;
    PERFORM pyxp.lock_ledger_partitions();
    FOR v_archive IN
        SELECT a.archive_id, a.partitions, a.rows_archived, a.last_transaction_id
          FROM pyxp.xp_ledger_archives a
         WHERE EXISTS (SELECT FROM pyxp.ledger_partitions() p WHERE p.partition_name = ANY (a.partitions))
         ORDER BY a.archive_id
    LOOP
        SELECT array_agg(p.partition_name ORDER BY p.range_end),
               array_agg(('pyxp.' || quote_ident(p.partition_name))::regclass::oid ORDER BY p.range_end)
          INTO v_names, v_oids
          FROM pyxp.ledger_partitions() p
         WHERE p.partition_name = ANY (v_archive.partitions) AND NOT p.is_default;
        v_counts := '{}';
        v_top := NULL;
        FOREACH v_name IN ARRAY v_names LOOP
            EXECUTE format('LOCK TABLE pyxp.%I IN SHARE MODE', v_name);
            EXECUTE format('SELECT count(*), max(t.id) FROM pyxp.%I t', v_name) INTO v_count, v_id;
            v_counts := v_counts || v_count;
            v_top := greatest(v_top, v_id);
        END LOOP;
        IF (SELECT sum(c) FROM unnest(v_counts) c) IS DISTINCT FROM v_archive.rows_archived
           OR v_top IS DISTINCT FROM v_archive.last_transaction_id THEN
            RAISE EXCEPTION 'archive % took % rows up to transaction %, its partitions here (%) hold % up to transaction %',
                            v_archive.archive_id, v_archive.rows_archived, coalesce(v_archive.last_transaction_id::text, 'none'),
                            array_to_string(v_names, ', '), (SELECT sum(c) FROM unnest(v_counts) c),
                            coalesce(v_top::text, 'none')
                USING ERRCODE = 'PX030',
                      HINT = 'a subscriber behind its publisher: wait until it has caught up; rows of those months in '
                             'the default partition: run pyxp.create_ledger_partitions() first; nothing was moved';
        END IF;
        LOCK TABLE pyxp.xp_transactions IN ACCESS EXCLUSIVE MODE;
        PERFORM pyxp.move_to_archive(v_names, v_oids);
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

REVOKE ALL ON FUNCTION pyxp.follow_replicated_archives() FROM PUBLIC;
COMMENT ON FUNCTION pyxp.follow_replicated_archives() IS
    'internal: on a logical replication subscriber, moves to pyxp_archive the partitions its publisher archived (their rows checked against the archive). Owner only.';

-- Refuses UPDATE, DELETE and TRUNCATE on the ledger, even for the owner
-- (PX013). Corrections are new rows: pyxp.reverse_transaction(). A superuser
-- can still disable triggers; pyxp.audit() would then see the damage.
CREATE OR REPLACE FUNCTION pyxp.refuse_ledger_change()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'xp_transactions is append-only: % refused', TG_OP
        USING ERRCODE = 'PX013',
              HINT = 'correct a row with pyxp.reverse_transaction(transaction_id, reason)';
END
$$;

CREATE OR REPLACE FUNCTION pyxp.create_ledger_partitions(months_ahead integer DEFAULT 2)
RETURNS TABLE (partition_name text, range_start timestamptz, range_end timestamptz, created boolean, note text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET lock_timeout = '1s'
SET datestyle = 'ISO, YMD'  -- the bounds it writes (%L) and reads back (pyxp.ledger_partitions)
SET timezone = 'UTC'
AS $$
DECLARE
    v_this_month constant timestamptz := date_trunc('month', now(), 'UTC');
    v_horizon timestamptz;
    v_months timestamptz[];
    v_moving boolean;
    v_locked boolean := false;
    v_retried boolean := false;  -- an ATTACH without the locks failed: the next attempt takes them
    v_attached boolean;
    v_deadline timestamptz;
    v_start timestamptz;
    v_end timestamptz;
    v_name text;
    v_columns text;
    v_moved bigint;
BEGIN
    IF months_ahead IS NULL OR months_ahead NOT BETWEEN 0 AND 120 THEN
        RAISE EXCEPTION 'months_ahead must be between 0 and 120, got %', coalesce(months_ahead::text, 'NULL')
            USING ERRCODE = 'PX023', HINT = 'the default, 2, keeps this month and the next two; run it monthly';
    END IF;
    -- Its reads of the default partition and the ATTACH's scan of it must see
    -- the same rows (in REPEATABLE READ the ATTACH failed with a raw 23514).
    PERFORM pyxp.require_read_committed();
    -- One move or archive at a time (sql/13_retention.sql takes the same
    -- lock): two moves each held what the other waited for, with awards
    -- between them (40P01 for new awards, a hostile test, 0030); and an
    -- archive committed between the read of its horizon and the move's
    -- locks had a month it had just archived made again from a row dated
    -- there, after which every archive failed (42P07).
    PERFORM pyxp.lock_ledger_partitions();
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO v_columns
      FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = 'pyxp.xp_transactions'::regclass AND a.attnum > 0 AND NOT a.attisdropped;
    <<attempt>>
    LOOP
    v_horizon := coalesce(pyxp.archive_horizon(), '-infinity');
    -- The months ahead, and those of the rows in the default partition: read
    -- again under the move's locks when it holds any (a row committed there
    -- after a first look is then waited for, and seen). None before the
    -- archive's horizon (a month start): the clock that says which month
    -- this is can step back into a month already archived (0031, a hostile
    -- test: that month was made again inside the archived range, and every
    -- later archive failed with 42P07; or, with a row dated there, its
    -- ATTACH was retried until 53200).
    LOOP
        SELECT array_agg(m.month ORDER BY m.month), bool_or(m.moved) INTO v_months, v_moving
          FROM (SELECT (v_this_month AT TIME ZONE 'UTC' + make_interval(months => a.n)) AT TIME ZONE 'UTC', false
                  FROM generate_series(0, months_ahead) a(n)
                 WHERE (v_this_month AT TIME ZONE 'UTC' + make_interval(months => a.n)) AT TIME ZONE 'UTC' >= v_horizon
                UNION
                SELECT DISTINCT date_trunc('month', d.created_at, 'UTC'), true
                  FROM pyxp.xp_transactions_default d WHERE d.created_at >= v_horizon) m(month, moved);
        EXIT WHEN v_locked OR NOT (coalesce(v_moving, false) OR v_retried);
        -- EXCLUSIVE on the ledger (awards wait for the move, reads go on),
        -- then ACCESS EXCLUSIVE on the default partition, waited for while
        -- the first is held for less than the deadlock check's delay only:
        -- a call whose plan opened every partition (a replay's, a
        -- reversal's) holds the default partition and then queues for the
        -- ledger, behind this lock, and each waited for the other (40P01
        -- for that call, a hostile test, 0030). When that wait ends, both
        -- are released (the block's subtransaction) and taken again, for at
        -- most 5 seconds. (Not NOWAIT: a request that never queues is
        -- starved by readers that overlap, a re-test found: 55P03 with
        -- three readers of 30 ms transactions.)
        v_deadline := clock_timestamp() + interval '5 seconds';
        LOOP
            BEGIN
                LOCK TABLE pyxp.xp_transactions IN EXCLUSIVE MODE;
                PERFORM set_config('lock_timeout', greatest(1, (extract(epoch FROM least(
                                       current_setting('deadlock_timeout')::interval / 2, interval '200 ms')) * 1000)::integer)::text,
                                   true);
                LOCK TABLE pyxp.xp_transactions_default IN ACCESS EXCLUSIVE MODE;
                PERFORM set_config('lock_timeout', '1s', true);
                EXIT;
            EXCEPTION WHEN lock_not_available THEN
                IF clock_timestamp() > v_deadline THEN
                    RAISE EXCEPTION 'the ledger''s partitions were busy for 5 seconds: rows of months without a partition not moved'
                        USING ERRCODE = '55P03', HINT = 'run it again (when awards are fewer)';
                END IF;
                PERFORM pg_sleep(0.01);
            END;
        END LOOP;
        v_locked := true;
    END LOOP;
    FOREACH v_start IN ARRAY coalesce(v_months, '{}') LOOP  -- (none: every month asked for was archived)
        v_end := (v_start AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC';
        v_name := 'xp_transactions_' || to_char(v_start AT TIME ZONE 'UTC', 'YYYY_MM');
        partition_name := v_name;
        range_start := v_start;
        range_end := v_end;
        IF EXISTS (SELECT FROM pyxp.ledger_partitions() p
                    WHERE NOT p.is_default AND coalesce(p.range_start < v_end, true) AND p.range_end > v_start) THEN
            IF NOT EXISTS (SELECT FROM pyxp.xp_transactions_default d
                            WHERE d.created_at >= v_start AND d.created_at < v_end) THEN
                CONTINUE;  -- a partition holds (part of) this month already
            END IF;
            -- (a partition made by hand, holding part of the month)
            created := false;
            note := 'rows of this month are in xp_transactions_default, and a partition holds part of the month: '
                    'they stay there';
        ELSE
            PERFORM pyxp.new_ledger_partition(v_name);
            v_moved := 0;
            IF v_locked THEN
                -- (no row can enter the default partition meanwhile: the copy
                -- and the DELETE see the same rows)
                EXECUTE format('INSERT INTO pyxp.%I (%s) SELECT %s FROM pyxp.xp_transactions_default d '
                               'WHERE d.created_at >= %L AND d.created_at < %L',
                               v_name, v_columns, v_columns, v_start, v_end);
                GET DIAGNOSTICS v_moved = ROW_COUNT;
                IF v_moved > 0 THEN
                    ALTER TABLE pyxp.xp_transactions_default DISABLE TRIGGER xp_transactions_append_only;
                    DELETE FROM pyxp.xp_transactions_default d WHERE d.created_at >= v_start AND d.created_at < v_end;
                    ALTER TABLE pyxp.xp_transactions_default ENABLE ALWAYS TRIGGER xp_transactions_append_only;
                END IF;
                EXECUTE format('ALTER TABLE pyxp.xp_transactions ATTACH PARTITION pyxp.%I FOR VALUES FROM (%L) TO (%L)',
                               v_name, v_start, v_end);
            ELSE
                -- Without the move's locks, nothing is copied or deleted (a
                -- row committed between the two would be deleted uncopied):
                -- the look above found no row of this month in the default
                -- partition. One may have committed there since (the ATTACH's
                -- scan finds it: 23514, raw up to 0029): this month's partition
                -- is undone, and the months read again under the locks (once:
                -- a second attempt holds them).
                v_attached := true;
                BEGIN
                    EXECUTE format('ALTER TABLE pyxp.xp_transactions ATTACH PARTITION pyxp.%I FOR VALUES FROM (%L) TO (%L)',
                                   v_name, v_start, v_end);
                EXCEPTION WHEN check_violation THEN
                    v_attached := false;
                END;
                IF NOT v_attached THEN
                    EXECUTE format('DROP TABLE pyxp.%I', v_name);
                    v_retried := true;
                    CONTINUE attempt;
                END IF;
            END IF;
            created := true;
            note := CASE WHEN v_moved > 0 THEN format('%s rows moved from xp_transactions_default', v_moved) END;
        END IF;
        RETURN NEXT;
    END LOOP;
    EXIT attempt;
    END LOOP attempt;
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
                                 ORDER BY abs(l.then_xp - l.now_xp) DESC, l.user_wallet COLLATE "C" LIMIT v_top) t))
      INTO v_report;
    PERFORM pyxp.ledger_unmoved();  -- (40001 after a read older than an archive)
    RETURN v_report;
END
$$;

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
AS $$ SELECT '0037' $$;

RESET ROLE;
