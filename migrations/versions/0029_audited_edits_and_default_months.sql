-- 0029: three hostile tests (the audit against an owner's edits, deployments
-- and migrations, the Python client), and a month whose rows went to the
-- default partition moved into its own partition (2026-11-27).
-- Frozen copy of what sql/*.sql defines at this revision; never edit it.
--
-- * pyxp.create_ledger_partitions creates the partition of every month
--   whose rows are in the default partition (nobody created it in time),
--   at or after the archive's horizon, and moves those rows into it,
--   unchanged, under EXCLUSIVE on the ledger and ACCESS EXCLUSIVE on the
--   default partition. Before, such a month stayed in the default
--   partition, which no archive takes (a known limit since a hostile test).
--   pyxp.archive_ledger_partitions refuses (PX030, nothing archived) while
--   the default partition holds rows dated in the range it would archive.
--   pyxp.ledger_unmoved refuses (40001) a read whose snapshot is older than
--   such a move (it could prune the default partition and read nothing).
-- * audit(): a generic award's amount against its rule's formula
--   (amount_mismatch) and, for a rule without inputs, its inputs' digest
--   against its action and wallet (inputs_mismatch: a row moved to another
--   wallet); a reversal's key; a row without a rule that is neither a
--   reversal nor a retroactive adjustment (rule_missing); each ruleset's
--   tables against its definition (ruleset_mismatch; install_ruleset and
--   the audit read one derivation, pyxp.definition_*), or, for a ruleset an
--   older install_ruleset wrote otherwise, against the digest of its tables
--   now (xp_rulesets_as_installed, filled below); the campaigns' registry
--   against their creation and approval rows (campaign_mismatch); a
--   checkpoint naming no row (a NULL hid it); the rows of wallets without a
--   balance are looked for by the openings' count of archived rows, which
--   the archives' count must equal (opening_mismatch).
-- * A batch's row count (pyxp.transaction_rows) is its transaction's only:
--   a count left in a pooled session refused every other client's batches.

SET LOCAL ROLE pyxp_owner;

-- The rulesets an older install_ruleset wrote otherwise than their
-- definition reads today (a definition with caps installed before caps
-- existed: its rules have none), found below, with the digest of their
-- tables now (pyxp.ruleset_tables_digest). audit() compares such a
-- ruleset's tables with that digest, every other one's with its definition
-- (ruleset_mismatch). Empty in a database installed at 0029.
CREATE TABLE pyxp.xp_rulesets_as_installed (
    ruleset_id     bigint PRIMARY KEY REFERENCES pyxp.rulesets,
    tables_digest  text NOT NULL
);
GRANT SELECT ON pyxp.xp_rulesets_as_installed TO pyxp_reader;

-- What a compiled definition installs: its settings, its level curve, its
-- rules (in file order). install_ruleset writes them; audit() reads each
-- ruleset's tables against them (ruleset_mismatch, 0029: a hostile test
-- edited a rule's constant, a cap, the curve and the zone in place, and
-- audit() said nothing, the balances made to match).
CREATE FUNCTION pyxp.definition_settings(p_definition jsonb)
RETURNS TABLE (balance_floor bigint, timezone text, has_caps boolean)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT (p_definition ->> 'balance_floor')::bigint, coalesce(p_definition ->> 'timezone', 'UTC'),
           EXISTS (SELECT FROM jsonb_array_elements(p_definition -> 'rules') r WHERE r ? 'cap')
$$;
COMMENT ON FUNCTION pyxp.definition_settings(jsonb) IS
    'internal: the balance floor, timezone and has_caps a compiled ruleset installs (install_ruleset; audit compares).';
REVOKE ALL ON FUNCTION pyxp.definition_settings(jsonb) FROM PUBLIC;

CREATE FUNCTION pyxp.definition_levels(p_definition jsonb)
RETURNS TABLE (level bigint, threshold bigint, increment bigint, is_last boolean)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT (l ->> 'level')::bigint, (l ->> 'threshold')::bigint, (l ->> 'increment')::bigint,
           (l ->> 'is_last')::boolean
      FROM jsonb_array_elements(p_definition -> 'levels') l
$$;
COMMENT ON FUNCTION pyxp.definition_levels(jsonb) IS
    'internal: the level_thresholds rows a compiled ruleset installs (install_ruleset; audit compares).';
REVOKE ALL ON FUNCTION pyxp.definition_levels(jsonb) FROM PUBLIC;

CREATE FUNCTION pyxp.definition_rules(p_definition jsonb)
RETURNS TABLE (rule_position integer, action text, event text, campaign_types text[], condition text, formula text,
               xp_constant numeric, xp_coefficients jsonb, description text, cap_max_xp bigint, cap_per text,
               cap_group text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT r.ord::integer, r.value ->> 'action', r.value ->> 'event',
           CASE WHEN jsonb_typeof(r.value -> 'campaign_types') = 'array'
                THEN ARRAY(SELECT jsonb_array_elements_text(r.value -> 'campaign_types')) END,
           r.value ->> 'condition', coalesce(r.value ->> 'formula', r.value ->> 'constant'),
           (r.value ->> 'constant')::numeric, r.value -> 'coefficients', r.value ->> 'description',
           (r.value -> 'cap' ->> 'max_xp')::bigint, r.value -> 'cap' ->> 'per', r.value ->> 'group'
      FROM jsonb_array_elements(p_definition -> 'rules') WITH ORDINALITY r(value, ord)
$$;
COMMENT ON FUNCTION pyxp.definition_rules(jsonb) IS
    'internal: the rules rows a compiled ruleset installs, in file order (install_ruleset; audit compares).';
REVOKE ALL ON FUNCTION pyxp.definition_rules(jsonb) FROM PUBLIC;

-- What of a ruleset's tables is not what its definition installs (no rows:
-- all of it is). The rules' display texts (formula, description) are not
-- compared.
CREATE FUNCTION pyxp.ruleset_table_problems(p_ruleset pyxp.rulesets)
RETURNS SETOF text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT format('balance_floor %s, timezone %s, has_caps %s; its definition: %s, %s, %s',
                  p_ruleset.balance_floor, p_ruleset.timezone, p_ruleset.has_caps, d.balance_floor, d.timezone,
                  d.has_caps)
      FROM pyxp.definition_settings(p_ruleset.definition) d
     WHERE (p_ruleset.balance_floor, p_ruleset.timezone, p_ruleset.has_caps)
           IS DISTINCT FROM (d.balance_floor, d.timezone, d.has_caps)
    UNION ALL
    SELECT format('level %s is not its definition''s (threshold %s, increment %s)', l.level, l.threshold, l.increment)
      FROM (SELECT lt.level, lt.threshold, lt.increment, lt.is_last FROM pyxp.level_thresholds lt
             WHERE lt.ruleset_id = p_ruleset.ruleset_id
            EXCEPT SELECT * FROM pyxp.definition_levels(p_ruleset.definition)) l
    UNION ALL
    SELECT format('level %s of its definition is missing or differs', l.level)
      FROM (SELECT * FROM pyxp.definition_levels(p_ruleset.definition)
            EXCEPT SELECT lt.level, lt.threshold, lt.increment, lt.is_last FROM pyxp.level_thresholds lt
             WHERE lt.ruleset_id = p_ruleset.ruleset_id) l
    UNION ALL
    SELECT format('rule %s is not its definition''s (constant %s, coefficients %s, cap %s per %s)', r.action,
                  r.xp_constant, r.xp_coefficients, r.cap_max_xp, r.cap_per)
      FROM (SELECT ru.position, ru.action, ru.event, ru.campaign_types, ru.condition, ru.xp_constant,
                   ru.xp_coefficients, ru.cap_max_xp, ru.cap_per, ru.cap_group
              FROM pyxp.rules ru WHERE ru.ruleset_id = p_ruleset.ruleset_id
            EXCEPT
            SELECT d.rule_position, d.action, d.event, d.campaign_types, d.condition, d.xp_constant,
                   d.xp_coefficients, d.cap_max_xp, d.cap_per, d.cap_group
              FROM pyxp.definition_rules(p_ruleset.definition) d) r
    UNION ALL
    SELECT format('rule %s of its definition is missing or differs', d.action)
      FROM (SELECT d.rule_position, d.action, d.event, d.campaign_types, d.condition, d.xp_constant,
                   d.xp_coefficients, d.cap_max_xp, d.cap_per, d.cap_group
              FROM pyxp.definition_rules(p_ruleset.definition) d
            EXCEPT
            SELECT ru.position, ru.action, ru.event, ru.campaign_types, ru.condition, ru.xp_constant,
                   ru.xp_coefficients, ru.cap_max_xp, ru.cap_per, ru.cap_group
              FROM pyxp.rules ru WHERE ru.ruleset_id = p_ruleset.ruleset_id) d
$$;
COMMENT ON FUNCTION pyxp.ruleset_table_problems(pyxp.rulesets) IS
    'internal: what of a ruleset''s tables is not what its definition installs (audit: ruleset_mismatch).';
REVOKE ALL ON FUNCTION pyxp.ruleset_table_problems(pyxp.rulesets) FROM PUBLIC;

-- A digest of what a ruleset's tables say (its settings, levels and rules,
-- as ruleset_table_problems compares them): for the rulesets whose tables
-- an older install_ruleset wrote otherwise (pyxp.xp_rulesets_as_installed).
CREATE FUNCTION pyxp.ruleset_tables_digest(p_ruleset_id bigint)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT encode(sha256(convert_to(concat_ws(' | ',
               (SELECT ROW(r.balance_floor, r.timezone, r.has_caps)::text FROM pyxp.rulesets r
                 WHERE r.ruleset_id = p_ruleset_id),
               (SELECT string_agg(ROW(l.level, l.threshold, l.increment, l.is_last)::text, ', ' ORDER BY l.level)
                  FROM pyxp.level_thresholds l WHERE l.ruleset_id = p_ruleset_id),
               (SELECT string_agg(ROW(ru.position, ru.action, ru.event, ru.campaign_types, ru.condition, ru.xp_constant,
                                      ru.xp_coefficients, ru.cap_max_xp, ru.cap_per, ru.cap_group)::text, ', '
                                  ORDER BY ru.position)
                  FROM pyxp.rules ru WHERE ru.ruleset_id = p_ruleset_id)), 'UTF8')), 'hex')
$$;
COMMENT ON FUNCTION pyxp.ruleset_tables_digest(bigint) IS
    'internal: a digest of a ruleset''s settings, levels and rules (pyxp.xp_rulesets_as_installed).';
REVOKE ALL ON FUNCTION pyxp.ruleset_tables_digest(bigint) FROM PUBLIC;

-- true; or 40001 (serialization_failure: run it again) when a partition of
-- the ledger that this statement's snapshot holds as attached no longer is.
-- An archive (sql/13_retention.sql) detaches partitions under ACCESS
-- EXCLUSIVE; a read that waited for that lock (or one in a REPEATABLE READ
-- snapshot taken before the archive) is planned after the archive's commit,
-- on the partitions left, but reads with a snapshot that sees no archive:
-- the archived rows were missing from what it read, and the checks that
-- would refuse it (PX029: the archive's horizon, the feed's floor) passed
-- (found by a hostile test, 0026: a feed read skipped the archived rows and
-- handed out the cursors after them; audit() reported twelve findings on a
-- sound ledger; a past board came back empty). The readers of the ledger
-- call it after their reads: pg_inherits as the snapshot sees it, against
-- pg_partition_tree, which reads the catalog as it is now (after the read's
-- locks). A partition attached since (pyxp.create_ledger_partitions) is no
-- concern when it was made empty: the snapshot sees no row in it; nor is
-- one detached that held no row the snapshot sees (an archive of empty
-- partitions: a hostile test found it failing reads). But since 0029 a
-- partition may be attached with rows moved from the default partition,
-- where this snapshot still sees them: a read planned after the move prunes
-- the default partition for their month and finds the new partition empty
-- (40001 too, when a partition was attached since the snapshot and the
-- default partition holds rows, as this snapshot sees it, that a move
-- takes: dated at or after the archive's horizon). Leader only (it raises).
CREATE OR REPLACE FUNCTION pyxp.ledger_unmoved()
RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED
AS $$
DECLARE
    v_then oid[];  -- the partitions as this snapshot sees them
    v_now oid[];   -- and as the catalog is now
    v_gone oid;
    v_rows boolean;
BEGIN
    SELECT ARRAY(SELECT i.inhrelid FROM pg_catalog.pg_inherits i
                  WHERE i.inhparent = 'pyxp.xp_transactions'::regclass ORDER BY 1),
           ARRAY(SELECT p.relid FROM pg_catalog.pg_partition_tree('pyxp.xp_transactions'::regclass) p
                  WHERE p.parentrelid = 'pyxp.xp_transactions'::regclass ORDER BY 1)
      INTO v_then, v_now;
    IF v_then = v_now THEN
        RETURN true;  -- (nearly always: one query)
    END IF;
    FOR v_gone IN
        SELECT i.inhrelid FROM pg_catalog.pg_inherits i
         WHERE i.inhparent = 'pyxp.xp_transactions'::regclass
           AND NOT EXISTS (SELECT FROM pg_catalog.pg_partition_tree('pyxp.xp_transactions'::regclass) p
                            WHERE p.relid = i.inhrelid)
    LOOP
        -- The detached partition (in pyxp_archive), read with this snapshot;
        -- dropped since (its oid no longer names a table: regclass reads the
        -- catalog as it is now), assumed to have held rows. No exception
        -- block: audit() calls this in a parallel query, where no
        -- subtransaction may start.
        IF v_gone::regclass::text ~ '^[0-9]+$' THEN
            v_rows := true;
        ELSE
            EXECUTE format('SELECT EXISTS (SELECT FROM %s)', v_gone::regclass) INTO v_rows;
        END IF;
        IF v_rows THEN
            RAISE EXCEPTION 'rows of the ledger were archived while this read ran (after its snapshot was taken)'
                USING ERRCODE = '40001',
                      HINT = 'run it again, in a new transaction: it then sees the archive (and PX029 for what needs its rows)';
        END IF;
    END LOOP;
    IF NOT v_now <@ v_then
       AND EXISTS (SELECT FROM pyxp.xp_transactions_default d
                    WHERE d.created_at >= coalesce(pyxp.archive_horizon(), '-infinity')) THEN
        RAISE EXCEPTION 'rows of the ledger were moved into a partition of their own while this read ran (after its snapshot was taken)'
            USING ERRCODE = '40001',
                  HINT = 'run it again, in a new transaction: it then sees them in their partition';
    END IF;
    RETURN true;
END
$$;

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
    v_horizon constant timestamptz := coalesce(pyxp.archive_horizon(), '-infinity');
    v_months timestamptz[];
    v_moving boolean;
    v_locked boolean := false;
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
    -- The months ahead, and those of the rows in the default partition: read
    -- again under the move's locks when it holds any (a row committed there
    -- after a first look is then waited for, and seen).
    LOOP
        SELECT array_agg(m.month ORDER BY m.month), bool_or(m.moved) INTO v_months, v_moving
          FROM (SELECT (v_this_month AT TIME ZONE 'UTC' + make_interval(months => a.n)) AT TIME ZONE 'UTC', false
                  FROM generate_series(0, months_ahead) a(n)
                UNION
                SELECT DISTINCT date_trunc('month', d.created_at, 'UTC'), true
                  FROM pyxp.xp_transactions_default d WHERE d.created_at >= v_horizon) m(month, moved);
        EXIT WHEN v_locked OR NOT v_moving;
        LOCK TABLE pyxp.xp_transactions IN EXCLUSIVE MODE;
        LOCK TABLE pyxp.xp_transactions_default IN ACCESS EXCLUSIVE MODE;
        v_locked := true;
    END LOOP;
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO v_columns
      FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = 'pyxp.xp_transactions'::regclass AND a.attnum > 0 AND NOT a.attisdropped;
    FOREACH v_start IN ARRAY v_months LOOP
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
            created := true;
            note := CASE WHEN v_moved > 0 THEN format('%s rows moved from xp_transactions_default', v_moved) END;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Owner operation (monthly, after pyxp.create_ledger_partitions): archives
-- every partition of the ledger that ends at or before archived_before (at
-- most the start of this month, UTC), except the default partition. One row
-- per partition archived; none when there is nothing to archive. In order:
--   1. EXCLUSIVE on xp_audit_checkpoints (one archive or checkpoint at a
--      time), SHARE on rulesets (no ruleset activated meanwhile), then SHARE
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
    -- Rows of a month that had no partition (in the default partition),
    -- dated in the range this archive takes: it would leave them behind,
    -- dated before its horizon, where no partition of theirs can be made
    -- and no archive takes them (0029; before, they stayed there for good).
    SELECT d.id, d.created_at INTO v_problem
      FROM pyxp.xp_transactions_default d
     WHERE d.created_at >= coalesce(pyxp.archive_horizon(), '-infinity') AND d.created_at < v_ends[cardinality(v_ends)]
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'transaction % (%) is in the default partition (its month had no partition), in the range to archive',
                        v_problem.id, v_problem.created_at
            USING ERRCODE = 'PX030',
                  HINT = 'run pyxp.create_ledger_partitions() (pyxp db create-partitions) first: it moves such rows into their month''s partition';
    END IF;
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
      FROM (SELECT pyxp.oldest_running_here(pg_current_snapshot()) AS oldest) o
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

-- The chain checks, one walk of each audited wallet's rows in wallet_seq
-- order from its starting position (its checkpoint's row, the anchor,
-- included):
--   running_balance      balance_after <> previous balance_after + xp_amount
--   wallet_seq_gap       a row's wallet_seq is not the previous one's + 1
--                        (the first row's previous is 0: rows are 1, 2, ...)
--   checkpoint_mismatch  the checkpoint's row is missing (and not
--                        archived: at or before the opening's position), or
--                        its balance_after is not the checkpoint's balance
--   balance_mismatch     xp_balances.total_xp <> the checkpoint's balance
--                        + the rows since (the full audit: the ledger sum,
--                        or the opening's balance + the rows after it)
--   opening_mismatch     the rows at positions 1 .. the opening's are not its
--                        archived rows + the ledger's rows there (a row
--                        added, or an archived one back, before the opening)
--   wallet_seq_mismatch  xp_balances.last_wallet_seq <> the last row's
--   level_mismatch       the level is not the active curve's for the total
--   period_mismatch      (full audit only: a period's rows may predate the
--                        checkpoint) the balance's latest periods and their
--                        XP (sql/07_periods.sql) are not the ledger's (its
--                        rows after the opening, and the opening's latest
--                        periods)
-- Per-row findings are gathered per wallet (jsonb, NULL when healthy).
--
-- One slice of the audited wallets: those in [p_from, p_to) (NULL:
-- unbounded); pyxp.chain_problems runs the slices. A slice reads its wallets
-- once (materialized), then one window and one aggregate per wallet over
-- its rows. The full audit streams a slice: the index of the rows in
-- (user_wallet, wallet_seq) order merged with the wallets, so no sort (a
-- probe of the index per wallet instead: 19.8 s against 9.0 s for the
-- slices at 10M rows). Since a checkpoint: one index probe per wallet, for
-- its rows from its checkpoint's position.
-- PL/pgSQL, planned for each call (force_custom_plan): the mode and the
-- bounds are constants in the plan, so one branch is planned and the bounds
-- are index ranges; and, not inlined, a call is what the caller's plan can
-- hand to a parallel worker (COST: a slice is worth a worker).
CREATE OR REPLACE FUNCTION pyxp.chain_problems_between(p_since_checkpoint boolean, p_from text, p_to text)
RETURNS TABLE (check_name text, user_wallet text, wallet_seq bigint, detail text)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET plan_cache_mode = force_custom_plan
COST 1000000 ROWS 10
AS $fn$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH wallets AS MATERIALIZED (
        SELECT g.* FROM pyxp.audited_wallets(true) g
         WHERE p_since_checkpoint
           AND (p_from IS NULL OR g.user_wallet >= p_from) AND (p_to IS NULL OR g.user_wallet < p_to)
        UNION ALL
        SELECT g.* FROM pyxp.wallets_between(p_from, p_to) g
         WHERE NOT p_since_checkpoint
    ), walked AS (
        -- The full audit: every row of the slice, the index in (user_wallet,
        -- wallet_seq) order merged with the wallets, one window and one
        -- aggregate per wallet, no sort. It walks from position 1: the rows
        -- at or before the opening (stragglers: sql/01_schema.sql) are
        -- counted, not chained; they are in the opening's sums.
        SELECT r.user_wallet, max(r.seq) AS max_seq,
               sum(r.xp_amount) FILTER (WHERE r.seq > r.from_seq) AS xp_since,
               bool_or(r.seq = r.cp_seq) AS cp_seen,
               count(*) FILTER (WHERE r.seq <= r.op_seq) AS op_kept,
               max(r.at) FILTER (WHERE r.seq > r.from_seq) AS latest_at,
               sum(r.xp_amount) FILTER (WHERE r.seq > r.from_seq AND r.at >= r.day_start) AS day_xp,
               sum(r.xp_amount) FILTER (WHERE r.seq > r.from_seq AND r.at >= r.week_start) AS week_xp,
               sum(r.xp_amount) FILTER (WHERE r.seq > r.from_seq AND r.at >= r.month_start) AS month_xp,
               sum(r.xp_amount) FILTER (WHERE r.seq > r.from_seq AND r.at >= r.year_start) AS year_xp,
               jsonb_agg(jsonb_build_object('seq', r.seq, 'after', r.balance_after, 'amount', r.xp_amount,
                                            'previous', r.previous, 'previous_seq', r.previous_seq,
                                            'running', r.running, 'gap', r.gap, 'checkpoint', r.checkpoint))
                   FILTER (WHERE r.running OR r.gap OR r.checkpoint) AS bad_rows
          FROM (SELECT y.*,
                       y.seq > y.from_seq AND y.balance_after <> y.previous + y.xp_amount AS running,
                       y.seq > y.from_seq AND y.seq <> y.previous_seq + 1 AS gap,
                       y.seq = y.cp_seq AND y.balance_after <> y.cp_xp AS checkpoint
                  FROM (SELECT x.user_wallet, x.wallet_seq AS seq, x.balance_after, x.xp_amount,
                               CASE WHEN x.reverses IS NULL THEN x.created_at  -- a reversal counts in its original's period
                                    ELSE pyxp.reversed_row_at(x.reverses)
                               END AS at,
                               h.from_seq, h.cp_seq, h.cp_xp, h.op_seq,
                               h.day_start, h.week_start, h.month_start, h.year_start,
                               -- the previous row walked, unless it is at or before
                               -- the starting position: then that position's balance
                               CASE WHEN lag(x.wallet_seq) OVER w > h.from_seq
                                    THEN lag(x.balance_after) OVER w ELSE h.from_xp END AS previous,
                               CASE WHEN lag(x.wallet_seq) OVER w > h.from_seq
                                    THEN lag(x.wallet_seq) OVER w ELSE h.from_seq END AS previous_seq
                          FROM pyxp.xp_transactions x
                          JOIN wallets h ON h.user_wallet = x.user_wallet
                         WHERE NOT p_since_checkpoint
                           AND (p_from IS NULL OR x.user_wallet >= p_from) AND (p_to IS NULL OR x.user_wallet < p_to)
                        WINDOW w AS (PARTITION BY x.user_wallet ORDER BY x.wallet_seq)) y) r
         GROUP BY r.user_wallet
    ), per_wallet AS (
        -- Since a checkpoint: one wallet at a time (a nested loop over the
        -- wallets: the planner has no estimate of how many rows the feed
        -- holds since, and joined to a set it took for one row, the walk of
        -- every wallet was run again per wallet: 2.5 min for 240,000 rows),
        -- its rows from its checkpoint's position, the window and the
        -- aggregate over them.
        SELECT g.*, w.*
          FROM wallets g
         CROSS JOIN LATERAL (
                SELECT coalesce(greatest(max(r.seq), g.op_seq), 0) AS ledger_seq,
                       g.from_xp + coalesce(sum(r.xp_amount) FILTER (WHERE r.seq > g.from_seq), 0) AS ledger_xp,
                       -- (a checkpoint at or before the opening: its row was archived;
                       -- no opening: it names a row the ledger must hold. 0029: a
                       -- NULL here left a checkpoint naming no row unreported.)
                       coalesce(bool_or(r.seq = g.cp_seq), false) OR coalesce(g.cp_seq <= g.op_seq, false) AS cp_found,
                       count(*) FILTER (WHERE r.seq <= g.op_seq) AS op_kept,
                       greatest(max(r.at) FILTER (WHERE r.seq > g.from_seq), g.op_last_at) AS latest_at,
                       pyxp.sum_with_opening(sum(r.xp_amount) FILTER (WHERE r.seq > g.from_seq AND r.at >= g.day_start),
                                             g.op_day_start = g.day_start, g.op_day_xp) AS ledger_day_xp,
                       pyxp.sum_with_opening(sum(r.xp_amount) FILTER (WHERE r.seq > g.from_seq AND r.at >= g.week_start),
                                             g.op_week_start = g.week_start, g.op_week_xp) AS ledger_week_xp,
                       pyxp.sum_with_opening(sum(r.xp_amount) FILTER (WHERE r.seq > g.from_seq AND r.at >= g.month_start),
                                             g.op_month_start = g.month_start, g.op_month_xp) AS ledger_month_xp,
                       pyxp.sum_with_opening(sum(r.xp_amount) FILTER (WHERE r.seq > g.from_seq AND r.at >= g.year_start),
                                             g.op_year_start = g.year_start, g.op_year_xp) AS ledger_year_xp,
                       jsonb_agg(jsonb_build_object('seq', r.seq, 'after', r.balance_after, 'amount', r.xp_amount,
                                                    'previous', r.previous, 'previous_seq', r.previous_seq,
                                                    'running', r.running, 'gap', r.gap, 'checkpoint', r.checkpoint))
                           FILTER (WHERE r.running OR r.gap OR r.checkpoint) AS bad_rows
                  FROM (SELECT y.*,
                               y.seq > g.from_seq AND y.balance_after <> y.previous + y.xp_amount AS running,
                               y.seq > g.from_seq AND y.seq <> y.previous_seq + 1 AS gap,
                               y.seq = g.cp_seq AND y.balance_after <> g.cp_xp AS checkpoint
                          FROM (SELECT x.wallet_seq AS seq, x.balance_after, x.xp_amount,
                                       CASE WHEN x.reverses IS NULL THEN x.created_at  -- a reversal counts in its original's period
                                            ELSE pyxp.reversed_row_at(x.reverses)
                                       END AS at,
                                       -- the previous row walked, unless it is at or before
                                       -- the starting position: then that position's balance
                                       CASE WHEN lag(x.wallet_seq) OVER w > g.from_seq
                                            THEN lag(x.balance_after) OVER w ELSE g.from_xp END AS previous,
                                       CASE WHEN lag(x.wallet_seq) OVER w > g.from_seq
                                            THEN lag(x.wallet_seq) OVER w ELSE g.from_seq END AS previous_seq
                                  FROM pyxp.xp_transactions x
                                 WHERE x.user_wallet = g.user_wallet
                                   AND x.wallet_seq >= g.from_seq
                                WINDOW w AS (ORDER BY x.wallet_seq)) y) r
             ) w
         WHERE p_since_checkpoint
        UNION ALL
        SELECT g.*,
               coalesce(greatest(a.max_seq, g.op_seq), 0) AS ledger_seq,
               g.from_xp + coalesce(a.xp_since, 0) AS ledger_xp,
               -- (a checkpoint at or before the opening: its row was archived)
               coalesce(a.cp_seen, false) OR coalesce(g.cp_seq <= g.op_seq, false) AS cp_found,
               coalesce(a.op_kept, 0) AS op_kept,
               greatest(a.latest_at, g.op_last_at) AS latest_at,
               pyxp.sum_with_opening(a.day_xp, g.op_day_start = g.day_start, g.op_day_xp) AS ledger_day_xp,
               pyxp.sum_with_opening(a.week_xp, g.op_week_start = g.week_start, g.op_week_xp) AS ledger_week_xp,
               pyxp.sum_with_opening(a.month_xp, g.op_month_start = g.month_start, g.op_month_xp) AS ledger_month_xp,
               pyxp.sum_with_opening(a.year_xp, g.op_year_start = g.year_start, g.op_year_xp) AS ledger_year_xp,
               a.bad_rows
          FROM wallets g
          LEFT JOIN walked a ON a.user_wallet = g.user_wallet
         WHERE NOT p_since_checkpoint
    ), checked AS (
        SELECT p.*, c.level, c.next_level_xp, z.tz,
               p.total_xp IS DISTINCT FROM p.ledger_xp AS bad_balance,
               p.last_wallet_seq IS DISTINCT FROM p.ledger_seq AS bad_seq,
               p.total_xp IS NOT NULL
                   AND (p.current_level <> c.level OR p.xp_to_next_level <> c.next_level_xp - p.total_xp) AS bad_level,
               p.cp_seq IS NOT NULL AND NOT p.cp_found AS bad_checkpoint,
               -- a checkpoint at the opening's position (its row archived)
               -- holds the opening's balance (0026: an opening and a
               -- balance raised together, with no row since, were not seen)
               p.cp_seq = p.op_seq AND p.cp_xp IS DISTINCT FROM p.op_xp AS bad_opening_checkpoint,
               NOT p_since_checkpoint AND p.op_rows + p.op_kept <> p.op_seq AS bad_opening,
               NOT p_since_checkpoint AND p.total_xp IS NOT NULL
                   AND ((p.day_start, p.day_xp, p.week_start, p.week_xp, p.month_start, p.month_xp,
                         p.year_start, p.year_xp)
                        IS DISTINCT FROM
                        (date_trunc('day', p.latest_at, z.tz), p.ledger_day_xp,
                         date_trunc('week', p.latest_at, z.tz), p.ledger_week_xp,
                         date_trunc('month', p.latest_at, z.tz), p.ledger_month_xp,
                         date_trunc('year', p.latest_at, z.tz), p.ledger_year_xp)) AS bad_periods
          FROM per_wallet p
         CROSS JOIN (SELECT r.ruleset_id, r.timezone AS tz FROM pyxp.rulesets r WHERE r.is_active) z
         CROSS JOIN LATERAL pyxp.curve_position(z.ruleset_id, coalesce(p.total_xp, 0)) c
    )
    SELECT f.check_name, c.user_wallet, f.wallet_seq, f.detail
      FROM checked c
     CROSS JOIN LATERAL (
            -- The rows' findings, as the walk flagged them.
            SELECT k.check_name, (r ->> 'seq')::bigint AS wallet_seq, k.detail
              FROM jsonb_array_elements(c.bad_rows) r
             CROSS JOIN LATERAL (VALUES
                    ('checkpoint_mismatch', (r ->> 'checkpoint')::boolean,
                     format('wallet_seq %s: balance_after = %s, checkpoint says %s', r ->> 'seq', r ->> 'after',
                            c.cp_xp)),
                    ('running_balance', (r ->> 'running')::boolean,
                     format('balance_after = %s, previous balance_after %s + xp_amount %s = %s', r ->> 'after',
                            r ->> 'previous', r ->> 'amount',
                            (r ->> 'previous')::bigint + (r ->> 'amount')::bigint)),
                    ('wallet_seq_gap', (r ->> 'gap')::boolean,
                     format('wallet_seq %s follows wallet_seq %s', r ->> 'seq', r ->> 'previous_seq'))
                 ) k(check_name, found, detail)
             WHERE k.found
            UNION ALL
            SELECT 'checkpoint_mismatch', NULL,
                   format('checkpoint at wallet_seq %s (%s XP): no such ledger row', c.cp_seq, c.cp_xp)
             WHERE c.bad_checkpoint
            UNION ALL
            SELECT 'checkpoint_mismatch', NULL,
                   format('checkpoint at wallet_seq %s (%s XP): the opening there holds %s XP', c.cp_seq, c.cp_xp,
                          c.op_xp)
             WHERE c.bad_opening_checkpoint
            UNION ALL
            SELECT 'balance_mismatch', NULL,
                   CASE WHEN c.total_xp IS NULL
                        THEN format('ledger sum %s but no xp_balances row', c.ledger_xp)
                        WHEN c.from_seq > 0 AND c.from_seq = c.op_seq AND NOT p_since_checkpoint
                        THEN format('xp_balances.total_xp = %s, opening %s + rows since = %s',
                                    c.total_xp, c.from_xp, c.ledger_xp)
                        WHEN c.from_seq > 0
                        THEN format('xp_balances.total_xp = %s, checkpoint %s + rows since = %s',
                                    c.total_xp, c.from_xp, c.ledger_xp)
                        ELSE format('xp_balances.total_xp = %s, ledger sum = %s', c.total_xp, c.ledger_xp) END
             WHERE c.bad_balance
            UNION ALL
            SELECT 'opening_mismatch', NULL,
                   format('opening at wallet_seq %s: %s rows archived + %s in the ledger up to it',
                          c.op_seq, c.op_rows, c.op_kept)
             WHERE c.bad_opening
            UNION ALL
            SELECT 'wallet_seq_mismatch', NULL,
                   format('xp_balances.last_wallet_seq = %s, last ledger row''s wallet_seq = %s',
                          c.last_wallet_seq, c.ledger_seq)
             WHERE c.bad_seq AND c.total_xp IS NOT NULL
            UNION ALL
            SELECT 'level_mismatch', NULL,
                   format('level %s with %s to next, curve says level %s with %s to next',
                          c.current_level, c.xp_to_next_level, c.level, c.next_level_xp - c.total_xp)
             WHERE c.bad_level
            UNION ALL
            SELECT 'period_mismatch', NULL,
                   format('%s: xp_balances holds %s XP from %s, the ledger %s XP from %s', k.kind,
                          coalesce(k.kept_xp::text, 'no'), coalesce(k.kept_start::text, 'no period'),
                          coalesce(x.xp::text, 'no'), coalesce(k.start::text, 'no period'))
              FROM (VALUES ('day', c.day_start, c.day_xp, date_trunc('day', c.latest_at, c.tz)),
                           ('week', c.week_start, c.week_xp, date_trunc('week', c.latest_at, c.tz)),
                           ('month', c.month_start, c.month_xp, date_trunc('month', c.latest_at, c.tz)),
                           ('year', c.year_start, c.year_xp, date_trunc('year', c.latest_at, c.tz)))
                   k(kind, kept_start, kept_xp, start)
             CROSS JOIN LATERAL pyxp.period_xp_from_rows(c.user_wallet, k.start, k.kind, c.tz) AS x(xp)
             WHERE c.bad_periods AND (k.kept_start, k.kept_xp) IS DISTINCT FROM (k.start, x.xp)
         ) f
     WHERE c.bad_rows IS NOT NULL OR c.bad_balance OR c.bad_seq OR c.bad_level OR c.bad_checkpoint
        OR c.bad_periods OR c.bad_opening OR c.bad_opening_checkpoint;
END
$fn$;

-- The checks of single rows (pyxp.audited_rows):
--   reversal_mismatch   a reversal that does not mirror its original (same
--                       wallet, opposite amount; an archived original is
--                       read in xp_archived_originals), reverses a reversal
--                       or a row that does not exist, or is a second
--                       reversal of its original (no foreign key or unique
--                       index holds these on a partitioned ledger:
--                       sql/01_schema.sql)
--   rule_missing, rule_mismatch  a row's rule is gone, or is another action
--   request_missing     a flow's or reversal's row without its xp_requests row
--                       (found by its key's hash)
--   claim_mismatch      a generic award's row without its claim in
--                       xp_award_claims, or a claim without its row (but
--                       for a row archived: its created_at is before the
--                       archive horizon, sql/13_retention.sql), or
--                       whose hash is not its row's key's (the full audit
--                       joins the rows to the claims on the row's id, and
--                       looks for claims without a row when the counts say
--                       one exists; since a checkpoint, each new row probes
--                       its claim)
CREATE OR REPLACE FUNCTION pyxp.row_problems(p_since_checkpoint boolean)
RETURNS TABLE (check_name text, user_wallet text, transaction_id bigint, detail text)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT 'reversal_mismatch', t.user_wallet, t.id,
           CASE WHEN o.id IS NULL THEN format('reverses transaction %s, which does not exist', t.reverses)
                WHEN o.second_id IS NOT NULL
                THEN format('transaction %s is also reversed by transaction %s', o.id, o.second_id)
                ELSE format('reverses transaction %s (%s XP to %s) with %s XP', o.id, o.xp_amount, o.user_wallet,
                            t.xp_amount) END
      FROM pyxp.audited_rows(p_since_checkpoint) t
      LEFT JOIN LATERAL (SELECT o.id, o.xp_amount, o.user_wallet, o.reverses,
                                (SELECT min(x.id) FROM pyxp.xp_transactions x
                                  WHERE x.reverses = t.reverses AND x.id < t.id) AS second_id
                           FROM (SELECT o.id, o.xp_amount, o.user_wallet, o.reverses
                                   FROM pyxp.xp_transactions o WHERE o.id = t.reverses
                                 UNION ALL
                                 SELECT a.transaction_id, a.xp_amount, a.user_wallet, a.reverses
                                   FROM pyxp.xp_archived_originals a WHERE a.transaction_id = t.reverses) o
                          LIMIT 1) o ON true
     WHERE t.reverses IS NOT NULL
       AND (o.id IS NULL OR o.second_id IS NOT NULL
            OR t.xp_amount <> -o.xp_amount OR t.user_wallet <> o.user_wallet OR o.reverses IS NOT NULL)
    UNION ALL
    -- (0029, a hostile test: a reversal pointed at another original, its
    -- amount and the balances made to match, was clean.)
    SELECT 'reversal_mismatch', t.user_wallet, t.id,
           format('reverses transaction %s, but its key is %s and its rule %s', t.reverses,
                  quote_literal(t.idempotency_key), coalesce(t.rule_id::text, 'none'))
      FROM pyxp.audited_rows(p_since_checkpoint) t
     WHERE t.reverses IS NOT NULL
       AND (t.idempotency_key <> 'reverse:' || t.reverses OR t.rule_id IS NOT NULL)
    UNION ALL
    -- The full audit: every generic award's row joined to the claims naming
    -- it (a LEFT join, which PostgreSQL 15 can run in parallel workers, a
    -- FULL join it cannot: 26-31 s in one process at 10M rows, 18 s with
    -- two workers, most of it hashing the keys again)...
    SELECT 'claim_mismatch', t.user_wallet, t.id,
           CASE WHEN c.key_hash IS NULL THEN format('no claim in xp_award_claims for key %s', quote_literal(t.idempotency_key))
                ELSE format('claim %s of transaction %s is not the hash of its key %s', c.key_hash, t.id,
                            quote_literal(t.idempotency_key)) END
      FROM pyxp.xp_transactions t
      LEFT JOIN pyxp.xp_award_claims c ON c.transaction_id = t.id AND c.created_at = t.created_at
     WHERE NOT p_since_checkpoint AND t.request_digest IS NOT NULL
       -- pyxp.key_hash, spelled out and compared as bytes: a function call per row costs
       -- 5 times more, the text form of the hash 15 % more
       AND (c.key_hash IS NULL OR uuid_send(c.key_hash) <> substr(sha256(convert_to(t.idempotency_key, 'UTF8')), 1, 16))
    UNION ALL
    -- ... and the claims without their row (archived rows excepted: claimed
    -- before the archive horizon, sql/13_retention.sql), searched for only
    -- when the count or the sum of transaction ids of the claims from the
    -- horizon on differs from the generic rows'. Why that suffices: when the
    -- join above finds nothing, every generic row has exactly one claim
    -- naming it (two would share its key's hash, the claims' primary key),
    -- dated as the row; so the claims from the horizon on are those of the
    -- rows from the horizon on plus the ones without a row, which equal
    -- counts rule out. (The sums make a claim moved to another transaction
    -- show both its findings. The horizon is read once, an InitPlan:
    -- the function, not inlined, cost 2 us a row.)
    SELECT 'claim_mismatch', NULL, c.transaction_id,
           format('claim %s names transaction %s (%s), which does not exist', c.key_hash, c.transaction_id,
                  c.created_at)
      FROM pyxp.xp_award_claims c
     WHERE NOT p_since_checkpoint
       AND c.created_at >= coalesce((SELECT pyxp.archive_horizon()), '-infinity')
       AND NOT EXISTS (SELECT FROM pyxp.xp_transactions t
                        WHERE t.id = c.transaction_id AND t.created_at = c.created_at AND t.request_digest IS NOT NULL)
       AND (SELECT (count(*), sum(k.transaction_id)) FROM pyxp.xp_award_claims k
             WHERE k.created_at >= coalesce((SELECT pyxp.archive_horizon()), '-infinity'))
           IS DISTINCT FROM
           (SELECT (count(*), sum(t.id)) FROM pyxp.xp_transactions t
             WHERE t.request_digest IS NOT NULL AND t.created_at >= coalesce((SELECT pyxp.archive_horizon()), '-infinity'))
    UNION ALL
    SELECT 'claim_mismatch', t.user_wallet, t.id,
           CASE WHEN c.key_hash IS NULL THEN format('no claim in xp_award_claims for key %s', quote_literal(t.idempotency_key))
                ELSE format('the claim of key %s names transaction %s (%s)', quote_literal(t.idempotency_key),
                            c.transaction_id, c.created_at) END
      FROM pyxp.audited_rows(p_since_checkpoint) t
      LEFT JOIN pyxp.xp_award_claims c  -- pyxp.key_hash, spelled out (as above)
             ON c.key_hash = encode(substr(sha256(convert_to(t.idempotency_key, 'UTF8')), 1, 16), 'hex')::uuid
     WHERE p_since_checkpoint AND t.request_digest IS NOT NULL
       AND (c.key_hash IS NULL OR (c.transaction_id, c.created_at) <> (t.id, t.created_at))
    UNION ALL
    SELECT CASE WHEN ru.rule_id IS NULL THEN 'rule_missing' ELSE 'rule_mismatch' END, t.user_wallet, t.id,
           CASE WHEN ru.rule_id IS NULL THEN format('rule %s of this row does not exist', t.rule_id)
                ELSE format('transaction_type %s but rule %s is %s', t.transaction_type, ru.rule_id, ru.action) END
      FROM pyxp.audited_rows(p_since_checkpoint) t
      LEFT JOIN pyxp.rules ru ON ru.rule_id = t.rule_id
     WHERE t.rule_id IS NOT NULL AND (ru.rule_id IS NULL OR ru.action <> t.transaction_type)
    UNION ALL
    -- A row without a rule is a reversal or a retroactive adjustment
    -- (pyxp.apply_rules_retroactively: its key and metadata name the
    -- ruleset applied). 0029, a hostile test: a 'GIFT' row of 5,000 XP, the
    -- balances made to match, was clean.
    SELECT 'rule_missing', t.user_wallet, t.id,
           format('%s row without a rule, neither a reversal nor a retroactive adjustment', t.transaction_type)
      FROM pyxp.audited_rows(p_since_checkpoint) t
     WHERE t.rule_id IS NULL AND t.reverses IS NULL
       AND NOT (t.transaction_type = 'RULES_ADJUSTMENT' AND t.idempotency_key LIKE 'rules.adjustment:%'
                AND t.metadata ->> 'ruleset_id' = split_part(t.idempotency_key, ':', 2))
    UNION ALL
    -- A generic award's row against what its call gave (0029, a hostile
    -- test: an amount raised, or a row moved to another wallet, with the
    -- balances made to match, was clean): its amount is its rule's formula
    -- on the params its metadata holds (its rule's inputs by name:
    -- pyxp.award), or a cut of it (a cap: xp_requested keeps the formula's,
    -- and what applied lies between 0 and it; a balance floor the same for
    -- a penalty); and, for a rule without inputs, its inputs' digest is that
    -- of its action and wallet (params {}). A rule with inputs is left out
    -- of the digest's check: a ledger carried from an early revision holds
    -- digests of params the metadata does not spell alike (300.0 for 300:
    -- test_migrations' ledger of 0005).
    -- pyxp.inputs_digest spelled out and compared as bytes (as the claims'
    -- hashes above), on the text jsonb_build_object('action', ..., 'params',
    -- '{}', 'wallet', ...) prints, written out (building the jsonb cost twice
    -- as much: 5.6 s against 2.7 s at 1M rows in one process); the formula
    -- of a rule without inputs is its rounded constant (the function call
    -- cost 1.7 s against 0.7 s).
    SELECT CASE WHEN g.digest_ok THEN 'amount_mismatch' ELSE 'inputs_mismatch' END, g.user_wallet, g.id,
           CASE WHEN g.digest_ok
                THEN format('%s XP (requested %s) where rule %s gives %s', g.xp_amount,
                            coalesce(g.xp_requested::text, 'none'), g.rule_id, g.formula)
                ELSE format('its inputs'' digest %s is not that of %s', g.request_digest, g.inputs) END
      FROM (SELECT t.id, t.user_wallet, t.xp_amount, t.xp_requested, t.rule_id, t.request_digest, i.inputs,
                   t.request_digest IS NULL OR ru.xp_coefficients <> '{}'
                   OR substr(sha256(convert_to(i.inputs, 'UTF8')), 1, 8) = int8send(t.request_digest) AS digest_ok,
                   CASE WHEN ru.xp_coefficients = '{}' THEN round(ru.xp_constant)
                        ELSE pyxp.rule_amount(ru.xp_constant, ru.xp_coefficients, t.metadata) END AS formula
              FROM pyxp.audited_rows(p_since_checkpoint) t
              JOIN pyxp.rules ru ON ru.rule_id = t.rule_id
             CROSS JOIN LATERAL (
                    SELECT '{"action": ' || to_json(t.transaction_type)::text || ', "params": {}, "wallet": '
                           || to_json(t.user_wallet)::text || '}' AS inputs) i
            ) g
     WHERE NOT g.digest_ok
        OR coalesce(g.xp_requested, g.xp_amount) <> g.formula
        OR (g.xp_requested IS NOT NULL
            AND NOT (g.xp_amount BETWEEN least(0, g.xp_requested) AND greatest(0, g.xp_requested)))
    UNION ALL
    SELECT 'request_missing', t.user_wallet, t.id,
           format('no xp_requests row for key %s', quote_literal(t.idempotency_key))
      FROM pyxp.audited_rows(p_since_checkpoint) t
     WHERE t.request_digest IS NULL
       AND NOT EXISTS (SELECT FROM pyxp.xp_requests q WHERE q.key_hash = pyxp.key_hash(t.idempotency_key))
$$;

-- The rows a transaction writes through batches and retroactive
-- applications, counted in a transaction-local setting
-- (pyxp.transaction_rows, '<transaction id>:<rows>'), p_rows more: PX023
-- past 15,728,640 (2^24 less 2^20 for the single awards and chained rows a
-- group may also hold). Single awards and flows do not count (a statement
-- each: 16 million of them in one transaction is not a workload). A count
-- of another transaction counts nothing (0029, a hostile test: a session's
-- SET of the setting, left on a pooled server connection, refused every
-- other client's batches there).
CREATE OR REPLACE FUNCTION pyxp.counted_transaction_rows(p_rows bigint)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_seen text := current_setting('pyxp.transaction_rows', true);
    v_xact text := pg_current_xact_id()::text;
    v_rows bigint := CASE WHEN split_part(v_seen, ':', 1) = v_xact AND split_part(v_seen, ':', 2) ~ '^[0-9]{1,15}$'
                          THEN split_part(v_seen, ':', 2)::bigint ELSE 0 END + p_rows;
BEGIN
    IF v_rows > 15728640 THEN
        RAISE EXCEPTION 'a transaction writes at most 15728640 ledger rows through batches and retroactive applications, this one % more after %',
                        p_rows, v_rows - p_rows
            USING ERRCODE = 'PX023',
                  HINT = 'commit and go on in a new transaction: the change feed ranks one transaction''s rows below 2^24';
    END IF;
    PERFORM set_config('pyxp.transaction_rows', v_xact || ':' || v_rows, true);
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
    -- Installers queue on the rulesets table (version numbers); awards only
    -- read it, so an install that does not activate holds no award. The
    -- awards' lock is taken only to activate (pyxp.activate_ruleset).
    LOCK TABLE pyxp.rulesets IN SHARE ROW EXCLUSIVE MODE;
    IF install_ruleset.activate THEN
        LOCK TABLE pyxp.xp_balances IN SHARE ROW EXCLUSIVE MODE;
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

-- Every inconsistency between the ledger, the balances and the rules, one
-- row each; no rows when healthy. What it proves: each wallet's rows are
-- numbered 1, 2, ... and each row's balance_after chains from the previous
-- one, each balance equals the sum of its wallet's rows and holds its last
-- wallet_seq, levels match the active curve, the audit checkpoints match the
-- ledger (pyxp.chain_problems); reversals mirror what they reverse, rows name
-- the action of an existing rule, a flow's or reversal's rows have their
-- request (pyxp.row_problems) and a request its rows or its kept inputs;
-- the rank buckets count the balances they hold (pyxp.rank_problems, one
-- of pyxp.unsliced_problems' checks); exactly one ruleset is active, no
-- ledger row lacks its balance, total_moderations counts the votes
-- recorded, the balances' period columns and the caps' usage match the ledger and no cap
-- is exceeded, a registration is granted exactly when its client email was
-- onboarded, identities stored before 0002 read the same today.
-- (jit off: compiling the plan cost more than running it, 100 ms vs 6 ms on a
-- small ledger; on 10M rows the scans dominate either way.
-- parallel_tuple_cost 0: the checks' scans and joins of the whole ledger
-- may run in parallel workers (the helpers are PARALLEL SAFE), but a check
-- whose filter compares two expressions is estimated to pass most rows, and
-- sending those through a Gather priced the parallel plan out; the checks
-- return only findings, none on a healthy ledger. At 10M rows the claims'
-- check takes 18 s with workers against 26-31 s without. The chain walk
-- has workers of its own: pyxp.chain_problems' slices, with the unsliced
-- checks as two more calls beside them.)
CREATE OR REPLACE FUNCTION pyxp.audit()
RETURNS TABLE (check_name text, user_wallet text, transaction_id bigint, detail text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET jit = off
SET parallel_tuple_cost = 0
AS $$
    SELECT 'active_ruleset', NULL::text, NULL::bigint,
           format('%s active rulesets, expected 1', count(*))
      FROM pyxp.rulesets r WHERE r.is_active HAVING count(*) <> 1
    UNION ALL
    -- Each ruleset's tables against its definition (pyxp.definition_*, what
    -- install_ruleset wrote from it): the amounts, caps, curve and zone the
    -- other checks compare the ledger with (0029); a ruleset an older
    -- install_ruleset wrote otherwise, against the digest of its tables at
    -- 0029 (pyxp.xp_rulesets_as_installed).
    SELECT 'ruleset_mismatch', NULL, NULL, format('ruleset %s v%s (id %s): %s', rs.name, rs.version, rs.ruleset_id, x.problem)
      FROM pyxp.rulesets rs
      LEFT JOIN pyxp.xp_rulesets_as_installed k ON k.ruleset_id = rs.ruleset_id
     CROSS JOIN LATERAL (
            SELECT 'its content_hash is not the sha256 of its definition' AS problem
             WHERE rs.content_hash <> encode(sha256(convert_to(rs.definition::text, 'UTF8')), 'hex')
            UNION ALL
            SELECT p.problem FROM pyxp.ruleset_table_problems(rs) p(problem) WHERE k.ruleset_id IS NULL
            UNION ALL
            SELECT 'its tables are not what they were at 0029 (installed by an older pyxp, they differ from its definition)'
             WHERE k.tables_digest <> pyxp.ruleset_tables_digest(rs.ruleset_id)
         ) x
    UNION ALL
    -- The chain walk and, beside it, the unsliced checks (ranks, checkpoints
    -- without a balance, wallets' forms, caps: pyxp.unsliced_problems).
    SELECT * FROM pyxp.chain_problems(false, true)
    UNION ALL
    SELECT * FROM pyxp.row_problems(false)
    UNION ALL
    -- Rows of a wallet without a balance row: the walk starts from the
    -- balances, so it counts them; when every row was walked (the count
    -- matches), nothing more is read. The archived rows counted are the
    -- openings' (each checked against its positions by the walk), not the
    -- archives' own count, which nothing else checks (0029, a hostile test:
    -- an archive's count lowered by one hid a forged wallet's row).
    SELECT 'balance_mismatch', o.user_wallet, NULL, format('ledger sum %s but no xp_balances row', o.total)
      FROM (SELECT t.user_wallet, sum(t.xp_amount) AS total
              FROM pyxp.xp_transactions t
             WHERE NOT EXISTS (SELECT FROM pyxp.xp_balances b WHERE b.user_wallet = t.user_wallet)
             GROUP BY t.user_wallet) o
     WHERE (SELECT count(*) FROM pyxp.xp_transactions)
           + (SELECT coalesce(sum(o.archived_rows), 0) FROM pyxp.xp_wallet_openings o)
           <> (SELECT coalesce(sum(b.last_wallet_seq), 0) FROM pyxp.xp_balances b)
    UNION ALL
    SELECT 'opening_mismatch', NULL, NULL,
           format('the archives count %s rows archived, the openings %s', a.archived, o.archived)
      FROM (SELECT coalesce(sum(a.rows_archived), 0) AS archived FROM pyxp.xp_ledger_archives a) a,
           (SELECT coalesce(sum(o.archived_rows), 0) AS archived FROM pyxp.xp_wallet_openings o) o
     WHERE a.archived <> o.archived
    UNION ALL
    SELECT 'moderation_count', b.user_wallet, NULL,
           format('total_moderations = %s, votes recorded = %s', b.total_moderations, coalesce(v.votes, 0))
      FROM pyxp.xp_balances b
      -- A vote is a request of a vote key: its rows (all to the voter) hold
      -- the key, or (a vote no rule awards) the request keeps it.
      FULL JOIN (SELECT x.user_wallet, count(*) AS votes
                   FROM (SELECT t.user_wallet, t.idempotency_key
                           FROM pyxp.xp_transactions t
                          WHERE t.request_digest IS NULL
                            AND t.idempotency_key ~ '^(campaign|completion)[.]vote(/[0-9]+)?:'
                         UNION
                         SELECT q.inputs ->> 'wallet', q.idempotency_key
                           FROM pyxp.xp_requests q
                          WHERE q.idempotency_key ~ '^(campaign|completion)[.]vote(/[0-9]+)?:') x
                  GROUP BY 1) v ON v.user_wallet = b.user_wallet
     WHERE coalesce(b.total_moderations, 0) <> coalesce(v.votes, 0)
    UNION ALL
    -- The campaigns' registry against the ledger: a campaign's creation and
    -- approval rows are its creator's, and its creation rows name its type
    -- (0029, a hostile test: the registry's creator or type edited, which
    -- later approvals, votes and completions read, was clean).
    SELECT 'campaign_mismatch', t.user_wallet, t.id,
           format('campaign %s is %s''s (%s) in the registry, but %s row %s is %s''s (%s)', c.campaign_id,
                  c.creator_wallet, c.campaign_type, split_part(t.idempotency_key, ':', 1), t.id, t.user_wallet,
                  coalesce(t.metadata ->> 'campaign_type', 'no type'))
      FROM pyxp.xp_transactions t
      JOIN pyxp.campaigns c ON c.campaign_id = t.campaign_id
     WHERE t.request_digest IS NULL AND t.reverses IS NULL
       AND t.idempotency_key IN ('campaign.created:' || c.campaign_id, 'campaign.approved:' || c.campaign_id)
       AND ((c.creator_wallet IS NOT NULL AND t.user_wallet <> c.creator_wallet)
            OR (t.idempotency_key LIKE 'campaign.created:%' AND t.metadata ->> 'campaign_type' <> c.campaign_type))
    UNION ALL
    -- A request that keeps neither its key nor its inputs has them in its
    -- ledger rows only (pyxp.recorded_request): without a row, a retry's
    -- inputs could not be shown or a vote counted.
    SELECT 'request_rows_missing', NULL, NULL,
           format('request %s (claimed %s) keeps no key and no ledger row holds it', q.key_hash, q.created_at)
      FROM pyxp.xp_requests q
     WHERE q.idempotency_key IS NULL
       AND NOT EXISTS (SELECT FROM pyxp.xp_transactions t
                        WHERE pyxp.key_hash(t.idempotency_key) = q.key_hash AND t.request_digest IS NULL)
    UNION ALL
    SELECT 'registration_grant', a.client_wallet, NULL,
           format('registration %s of %s is %s', a.id, a.client_email,
                  CASE WHEN a.xp_granted THEN 'granted without an onboarding of that email'
                       ELSE 'pending although that email was onboarded' END)
      FROM pyxp.agency_b2c_clients a
     CROSS JOIN LATERAL (SELECT EXISTS (
                SELECT FROM pyxp.xp_requests q
                 WHERE q.key_hash IN (pyxp.key_hash('client.onboarded:' || a.client_email),
                                      -- stored as read before 0028, onboarded since (pyxp.email_before_0028)
                                      pyxp.key_hash('client.onboarded:'
                                                    || pyxp.lower_cased(pyxp.trimmed_text(a.client_email, true)))))
                AS onboarded) q
     WHERE a.xp_granted <> q.onboarded
    UNION ALL
    -- Client emails stored before 0002 that today's checks would read
    -- otherwise (the wallets: pyxp.unsliced_problems).
    SELECT 'identity_not_normalised', a.client_wallet, NULL,
           format('client email %s of registration %s is read %s since 0002', quote_literal(a.client_email), a.id,
                  coalesce(quote_literal(f.form), 'as refused'))
      FROM pyxp.agency_b2c_clients a
     CROSS JOIN LATERAL (SELECT CASE WHEN pyxp.invisible_character(x.t) IS NULL THEN x.t END AS form
                           FROM (SELECT pyxp.lower_cased(pyxp.trimmed_text(a.client_email, true)) AS t) x) f
     WHERE f.form IS DISTINCT FROM a.client_email
       -- or as read before 0028 (lower() in the database's collation: pyxp.email_before_0028)
       AND (f.form IS NULL OR lower(pyxp.trimmed_text(a.client_email, true)) IS DISTINCT FROM a.client_email)
    UNION ALL
    -- No finding; 40001 when the ledger was read with a snapshot older than
    -- an archive's commit (its rows would have been reported missing).
    SELECT NULL, NULL, NULL, NULL WHERE NOT pyxp.ledger_unmoved()
    ORDER BY 1, 2, 3
$$;

-- The rulesets installed before 0029 whose tables differ from what their
-- definition installs today: their tables as they are, by digest.
INSERT INTO pyxp.xp_rulesets_as_installed (ruleset_id, tables_digest)
SELECT r.ruleset_id, pyxp.ruleset_tables_digest(r.ruleset_id)
  FROM pyxp.rulesets r
 WHERE EXISTS (SELECT FROM pyxp.ruleset_table_problems(r));

RESET ROLE;
