-- The ledger's partitions (issue 15): pyxp.xp_transactions is partitioned by
-- range of created_at (sql/01_schema.sql says what that changes in its keys):
--   xp_transactions_before_YYYY_MM  every row older than that month: a
--                                    ledger's rows from before 0015 (its
--                                    table became this partition), rows
--                                    loaded with past dates
--   xp_transactions_YYYY_MM         one calendar month (UTC), created ahead
--                                    by pyxp.create_ledger_partitions()
--   xp_transactions_default         any other row: a month nobody created in
--                                    time (an award never fails for want of
--                                    a partition). Normally empty; creating a
--                                    month reads it (ATTACH checks that none
--                                    of its rows belongs to the new month).
-- Append-only on every partition: the row triggers of the ledger (UPDATE,
-- DELETE) are cloned to each partition by PostgreSQL; the TRUNCATE trigger is
-- not, so each partition gets its own (pyxp.new_ledger_partition, and
-- pyxp.guard_ledger_partitions for a partition made by hand). DETACH and
-- DROP of a partition would take its rows out of the ledger: the event
-- triggers below refuse them (PX013), except when the whole ledger is dropped
-- (DROP SCHEMA pyxp, a downgrade). Event triggers need a superuser: a
-- migration run by another role installs everything else and warns.

SET LOCAL ROLE pyxp_owner;

-- The partitions a ledger has: name, range (NULL bounds: MINVALUE, or the
-- default partition) and whether it is the default.
CREATE FUNCTION pyxp.ledger_partitions()
RETURNS TABLE (partition_name text, range_start timestamptz, range_end timestamptz, is_default boolean)
LANGUAGE sql STABLE
SET search_path = pyxp, pg_temp
SET datestyle = 'ISO, YMD'  -- the bounds are read back from their text: ISO with a numeric offset, never
SET timezone = 'UTC'        -- an abbreviation that reads back as another zone (IST, CST)
AS $$
    SELECT c.relname::text,
           (substring(b.bound FROM 'FROM [(]''([^'']+)''[)]'))::timestamptz,
           (substring(b.bound FROM 'TO [(]''([^'']+)''[)]'))::timestamptz,
           b.bound = 'DEFAULT'
      FROM pg_catalog.pg_inherits i
      JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
     CROSS JOIN LATERAL (SELECT pg_catalog.pg_get_expr(c.relpartbound, c.oid) AS bound) b
     WHERE i.inhparent = 'pyxp.xp_transactions'::regclass
     ORDER BY 3 NULLS LAST, 2 NULLS FIRST
$$;

-- A table to become a partition of the ledger (attached by the caller): the
-- ledger's columns, the TRUNCATE refusal (not cloned by PostgreSQL) and the
-- reader's grant. The ledger's indexes and row triggers come with the ATTACH.
CREATE FUNCTION pyxp.new_ledger_partition(p_name text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pyxp, pg_temp
AS $$
BEGIN
    EXECUTE format('CREATE TABLE pyxp.%I (LIKE pyxp.xp_transactions INCLUDING DEFAULTS)', p_name);
    EXECUTE format('CREATE TRIGGER xp_transactions_no_truncate BEFORE TRUNCATE ON pyxp.%I '
                   'FOR EACH STATEMENT EXECUTE FUNCTION pyxp.refuse_ledger_change()', p_name);
    EXECUTE format('ALTER TABLE pyxp.%I ENABLE ALWAYS TRIGGER xp_transactions_no_truncate', p_name);  -- 0028
    EXECUTE format('GRANT SELECT ON pyxp.%I TO pyxp_reader', p_name);
END
$$;
COMMENT ON FUNCTION pyxp.new_ledger_partition(text) IS
    'internal: creates a table with the ledger''s columns and TRUNCATE refusal, to be attached as a partition.';

-- Owner operation, to run from a scheduler (monthly is enough; it does
-- nothing for a month that a partition holds): creates the monthly
-- partitions of this month and of the months_ahead months after it, and of
-- any other month whose rows went to the default partition (nobody created
-- it in time). Each partition is created apart, given the TRUNCATE trigger
-- and the reader's grant, then attached: ATTACH takes SHARE UPDATE EXCLUSIVE
-- on the ledger (awards and reads go on) and ACCESS EXCLUSIVE on the default
-- partition while it checks it (empty, normally). It waits at most 1 s for
-- a lock (lock_timeout): run it again later.
-- A month whose rows are in the default partition (0029; before, it was
-- left there, and no archive could ever take it) gets its partition too,
-- and its rows are moved into it, unchanged (ids, positions, feed cursors,
-- claims: nothing names a row's partition), before the ATTACH:
--   EXCLUSIVE on the ledger first: no row is written meanwhile (awards wait
--     for the move; reads go on), and a row routed to the default partition
--     before it (its transaction still running) is waited for;
--   then ACCESS EXCLUSIVE on the default partition (reads of the ledger
--     wait: their plans lock every partition);
--   the rows are copied into the new table (no trigger fires there: it is
--     not attached yet, so the feed is not woken), and deleted from the
--     default partition with its append-only trigger disabled for that one
--     statement: the only DELETE of ledger rows anywhere, under these locks,
--     in this transaction (no other session ever sees the trigger off);
--   the ATTACH then finds no row of that month in the default partition.
-- Not moved: rows dated before the archive's horizon (a transaction that
-- began in a month archived before it wrote; README "Retention"): a
-- partition of theirs would lie in the archived range. A read whose
-- snapshot is older than the move, planned after it, would prune the
-- default partition and miss them: pyxp.ledger_unmoved refuses it (40001).
-- The lock of the ledger's partitions: one pyxp.create_ledger_partitions or
-- pyxp.archive_ledger_partitions at a time, the second refused at once
-- (55P03, nothing done; they run for seconds, and a scheduler runs them
-- again). The row 'ledger_partitions' of pyxp.subject_locks, locked: a row
-- lock, not an advisory lock, which a role without pyxp privileges could
-- take and hold (SPEC 7).
CREATE FUNCTION pyxp.lock_ledger_partitions()
RETURNS void
LANGUAGE plpgsql
SET search_path = pyxp, pg_temp
AS $$
BEGIN
    INSERT INTO pyxp.subject_locks (subject) VALUES ('ledger_partitions') ON CONFLICT (subject) DO NOTHING;
    PERFORM FROM pyxp.subject_locks l WHERE l.subject = 'ledger_partitions' FOR UPDATE NOWAIT;
EXCEPTION WHEN lock_not_available THEN
    RAISE EXCEPTION 'another pyxp.create_ledger_partitions or pyxp.archive_ledger_partitions is running'
        USING ERRCODE = '55P03', HINT = 'run it again once that one has committed';
END
$$;

CREATE FUNCTION pyxp.create_ledger_partitions(months_ahead integer DEFAULT 2)
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
    -- (Every archive's end, one that took no row too: a month it took,
    -- empty, was made again from a row dated there written after it, and
    -- every later archive was refused, PX030, or failed, 42P07: a hostile
    -- test, 0038. Such a row stays in the default partition, as a row dated
    -- in a month an archive took rows of does.)
    v_horizon := coalesce((SELECT max(a.archived_before) FROM pyxp.xp_ledger_archives a), '-infinity');
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
COMMENT ON FUNCTION pyxp.lock_ledger_partitions() IS
    'internal: one create_ledger_partitions or archive_ledger_partitions at a time (a row lock; 55P03 for the second).';
COMMENT ON FUNCTION pyxp.create_ledger_partitions(integer) IS
    'internal: creates the ledger''s monthly partitions up to months_ahead months from now (run it monthly). Owner only.';
COMMENT ON FUNCTION pyxp.ledger_partitions() IS
    'internal: the ledger''s partitions and their ranges.';

-- The two partitions every ledger has: the default one, and the one of the
-- rows older than this month. (Migration 0015 makes an existing ledger's
-- table the second one, to the month after its last row, and creates the
-- rest the same way.)
DO $partitions$
DECLARE
    v_month constant timestamptz := date_trunc('month', now(), 'UTC');
    v_name text;
BEGIN
    FOREACH v_name IN ARRAY ARRAY['xp_transactions_default',
                                  'xp_transactions_before_' || to_char(v_month AT TIME ZONE 'UTC', 'YYYY_MM')] LOOP
        PERFORM pyxp.new_ledger_partition(v_name);
    END LOOP;
    ALTER TABLE pyxp.xp_transactions ATTACH PARTITION pyxp.xp_transactions_default DEFAULT;
    EXECUTE format('ALTER TABLE pyxp.xp_transactions ATTACH PARTITION pyxp.%I FOR VALUES FROM (MINVALUE) TO (%L)',
                   'xp_transactions_before_' || to_char(v_month AT TIME ZONE 'UTC', 'YYYY_MM'), v_month);
END
$partitions$;
INSERT INTO pyxp.subject_locks (subject) VALUES ('ledger_partitions');  -- (pyxp.lock_ledger_partitions)
SELECT count(*) FROM pyxp.create_ledger_partitions();

REVOKE ALL ON FUNCTION pyxp.create_ledger_partitions(integer), pyxp.ledger_partitions(),
    pyxp.new_ledger_partition(text), pyxp.lock_ledger_partitions() FROM PUBLIC;

RESET ROLE;

-- The guard of the ledger's partitions, run by event triggers at every DDL
-- command of the database, whoever issues it:
--   ddl_command_start  remembers the ledger (by name) and every partition
--                      below it (by oid; sub-partitions too), in a setting of
--                      this transaction;
--   ddl_command_end    refuses the command (PX013) if the ledger no longer
--                      answers to pyxp.xp_transactions (renamed, moved to
--                      another schema, its schema renamed: the guard would
--                      lose it), or if one of its partitions still exists but
--                      is no longer below it (DETACH; except the partitions
--                      pyxp.archive_ledger_partitions archives: it names them
--                      in setting pyxp.archiving of its transaction, and that
--                      transaction's id in setting pyxp.archiving_xact); then
--                      gives the
--                      TRUNCATE refusal to every partition that lacks it
--                      (CREATE TABLE ... PARTITION OF, ATTACH of a table
--                      made by hand);
--   sql_drop           refuses the drop (PX013) of a partition, whatever
--                      the command (DROP TABLE, DROP OWNED, DROP EXTENSION
--                      of an extension it was added to, ...), unless the
--                      ledger itself is dropped with it (DROP SCHEMA pyxp,
--                      a downgrade).
-- It belongs to a superuser (created here after RESET ROLE, by the superuser
-- the event triggers need) and runs as its owner (SECURITY DEFINER, search
-- path pinned), so that a partition created by its owner gets its trigger
-- whoever runs the next command, and so that no role below the superuser
-- can change what a superuser's DDL command runs. It reads the catalogs and
-- settings only, never a table of schema pyxp: whatever it reads runs as
-- the superuser, and the owner of pyxp decides what reading its tables runs
-- (a view in a table's place, a column of its own type with its own cast).
-- Up to 0029 it read the archive's row in xp_ledger_archives: a member of
-- pyxp_owner put a view there calling its own function, ran a DETACH, and
-- was made superuser (a hostile test, 0030). The archive's settings are as
-- strong a proof: the roles that can DETACH a partition are the owner's,
-- who could write an archive row as easily as set them. Like the append-only
-- triggers, it refuses commands, not a deliberate removal: a superuser (or
-- the schema's owner, who may drop the function) can disable it, and
-- audit() then sees rows gone.
CREATE FUNCTION pyxp.guard_ledger_partitions()
RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_seen text := current_setting('pyxp.ledger_partitions', true);
    v_ledger oid;
    v_kept oid[];
    v_detached oid[];  -- partitions this command detached
    v_archived boolean;
    v_name text;
BEGIN
    IF TG_EVENT = 'ddl_command_start' THEN
        v_ledger := to_regclass('pyxp.xp_transactions');
        PERFORM set_config('pyxp.ledger_partitions',
                           CASE WHEN v_ledger IS NULL THEN ''
                                ELSE v_ledger || ':' || coalesce((SELECT string_agg(t.relid::oid::text, ',')
                                                                    FROM pg_partition_tree(v_ledger) t
                                                                   WHERE t.relid <> v_ledger), '')
                           END, true);
        RETURN;
    END IF;
    IF coalesce(v_seen, '') = '' THEN
        RETURN;
    END IF;
    v_ledger := split_part(v_seen, ':', 1)::oid;
    v_kept := string_to_array(nullif(split_part(v_seen, ':', 2), ''), ',')::oid[];
    IF TG_EVENT = 'sql_drop' THEN
        SELECT d.object_identity INTO v_name
          FROM pg_event_trigger_dropped_objects() d
         WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0 AND d.objid = ANY (v_kept)
           AND NOT EXISTS (SELECT FROM pg_event_trigger_dropped_objects() l
                            WHERE l.classid = 'pg_class'::regclass AND l.objid = v_ledger)
         LIMIT 1;
        IF v_name IS NOT NULL THEN
            RAISE EXCEPTION 'xp_transactions is append-only: DROP of its partition % refused', v_name
                USING ERRCODE = 'PX013',
                      HINT = 'a partition holds ledger rows; correct a row with pyxp.reverse_transaction(transaction_id, reason)';
        END IF;
        RETURN;
    END IF;
    -- ddl_command_end
    IF to_regclass('pyxp.xp_transactions') IS DISTINCT FROM v_ledger
       AND EXISTS (SELECT FROM pg_class c WHERE c.oid = v_ledger) THEN
        RAISE EXCEPTION 'xp_transactions is append-only: renaming or moving the ledger (now %) refused',
                        v_ledger::regclass
            USING ERRCODE = 'PX013', HINT = 'the ledger is pyxp.xp_transactions';
    END IF;
    SELECT array_agg(c.oid ORDER BY c.oid) INTO v_detached
      FROM pg_class c
     WHERE c.oid = ANY (v_kept)
       AND NOT EXISTS (SELECT FROM pg_partition_tree(v_ledger) t WHERE t.relid = c.oid);
    -- pyxp.archive_ledger_partitions (sql/13_retention.sql) detaching the
    -- partitions it archives, in its own transaction (a setting left in the
    -- session by set_config(..., false) names an older transaction)
    IF v_detached IS NOT NULL
       AND v_detached <@ string_to_array(nullif(current_setting('pyxp.archiving', true), ''), ',')::oid[]
       AND current_setting('pyxp.archiving_xact', true) = pg_current_xact_id()::text THEN
        v_archived := true;
    END IF;
    IF v_detached IS NOT NULL AND NOT coalesce(v_archived, false) THEN
        v_name := v_detached[1]::regclass::text;
        RAISE EXCEPTION 'xp_transactions is append-only: DETACH of its partition % refused', v_name
            USING ERRCODE = 'PX013',
                  HINT = 'a partition holds ledger rows; correct a row with pyxp.reverse_transaction(transaction_id, reason)';
    END IF;
    FOR v_name IN
        SELECT t.relid::regclass::text FROM pg_partition_tree(v_ledger) t WHERE t.isleaf
    LOOP
        -- Checked one by one: the CREATE TRIGGER below runs this function
        -- again, which may have given the next partition its trigger.
        IF NOT EXISTS (SELECT FROM pg_trigger g
                        WHERE g.tgrelid = v_name::regclass AND g.tgfoid = 'pyxp.refuse_ledger_change()'::regprocedure
                          AND (g.tgtype & 32) <> 0) THEN  -- TRIGGER_TYPE_TRUNCATE
            EXECUTE format('CREATE TRIGGER xp_transactions_no_truncate BEFORE TRUNCATE ON %s '
                           'FOR EACH STATEMENT EXECUTE FUNCTION pyxp.refuse_ledger_change()', v_name);
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION pyxp.guard_ledger_partitions() IS
    'internal: event trigger function refusing DETACH and DROP of a ledger partition and renaming the ledger (PX013); gives each partition the TRUNCATE refusal.';
REVOKE ALL ON FUNCTION pyxp.guard_ledger_partitions() FROM PUBLIC;

-- Event triggers belong to a superuser (PostgreSQL's rule): another
-- migrating role gets neither them nor their function, and a warning.
DO $guard$
BEGIN
    IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        CREATE EVENT TRIGGER pyxp_ledger_partitions_start ON ddl_command_start
            EXECUTE FUNCTION pyxp.guard_ledger_partitions();
        CREATE EVENT TRIGGER pyxp_ledger_partitions_end ON ddl_command_end
            EXECUTE FUNCTION pyxp.guard_ledger_partitions();
        CREATE EVENT TRIGGER pyxp_ledger_partitions_drop ON sql_drop
            EXECUTE FUNCTION pyxp.guard_ledger_partitions();
        -- Under session_replication_role = replica too (0028; see 09_security.sql).
        ALTER EVENT TRIGGER pyxp_ledger_partitions_start ENABLE ALWAYS;
        ALTER EVENT TRIGGER pyxp_ledger_partitions_end ENABLE ALWAYS;
        ALTER EVENT TRIGGER pyxp_ledger_partitions_drop ENABLE ALWAYS;
    ELSE
        DROP FUNCTION pyxp.guard_ledger_partitions();
        RAISE WARNING 'pyxp: % is no superuser: DETACH and DROP of a ledger partition are not refused', current_user
            USING HINT = 'a superuser''s pyxp db upgrade installs the guard, also once the database is at the latest revision';
    END IF;
END
$guard$;
