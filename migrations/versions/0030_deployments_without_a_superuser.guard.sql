-- 0030: the ledger partitions' guard (sql/12_partitions.sql), installed or
-- brought up to date by a superuser. Run by revision 0030, and again by
-- migrations/env.py at the end of every migration run that leaves the
-- database at 0030 or later: a database that a role which is no superuser
-- migrated gets the guard from the next superuser's pyxp db upgrade, even
-- with no revision left to run. It changes nothing when the guard is
-- current. Frozen; never edit it (a later guard comes with its own file).
--
-- A guard from before 0030 read xp_ledger_archives, the owner's table, as
-- the superuser who installed it: a member of pyxp_owner put a view there
-- calling its own function, ran a DETACH and was made superuser (a hostile
-- test). A role that is no superuser cannot replace it: it is warned, at
-- every migration run, until a superuser does.
DO $guard$
DECLARE
    v_super constant boolean := (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user);
    v_guard oid := pg_catalog.to_regprocedure('pyxp.guard_ledger_partitions()');
    v_trigger text;
    v_event text;
BEGIN
    IF pg_catalog.to_regclass('pyxp.xp_transactions') IS NULL THEN
        RETURN;  -- (not installed, or below 0015)
    END IF;
    IF v_guard IS NOT NULL
       AND EXISTS (SELECT FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_roles r ON r.oid = p.proowner
                    WHERE p.oid = v_guard AND r.rolsuper AND p.prosecdef
                      AND p.prosrc LIKE '%pyxp.archiving_xact%')  -- (the guard of 0030)
       AND (SELECT count(*) FROM pg_catalog.pg_event_trigger e
             WHERE e.evtfoid = v_guard AND e.evtenabled = 'A'
               AND e.evtname IN ('pyxp_ledger_partitions_start', 'pyxp_ledger_partitions_end',
                                 'pyxp_ledger_partitions_drop')) = 3 THEN
        RETURN;  -- current
    END IF;
    IF NOT v_super THEN
        -- (no guard at all: the warning of the install, 0015's, said so; a
        -- function of that name no superuser owns is no event trigger's)
        IF EXISTS (SELECT FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_roles r ON r.oid = p.proowner
                    WHERE p.oid = v_guard AND r.rolsuper) THEN
            RAISE WARNING 'pyxp: the ledger partitions'' guard is not the one of revision 0030 (a guard from before it can be made to run code of a member of pyxp_owner as the superuser who installed it)'
                USING HINT = 'a superuser''s pyxp db upgrade replaces it, also once the database is at the latest revision';
        END IF;
        RETURN;
    END IF;
    -- A function of that name a superuser does not own (the owner of schema
    -- pyxp may create one): dropped, with any event trigger running it, so
    -- that the guard is made anew and is the superuser's.
    IF v_guard IS NOT NULL
       AND NOT (SELECT r.rolsuper FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_roles r ON r.oid = p.proowner
                 WHERE p.oid = v_guard) THEN
        DROP FUNCTION pyxp.guard_ledger_partitions() CASCADE;
    END IF;
    EXECUTE $function$CREATE OR REPLACE FUNCTION pyxp.guard_ledger_partitions()
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
$$;$function$;
    COMMENT ON FUNCTION pyxp.guard_ledger_partitions() IS
        'internal: event trigger function refusing DETACH and DROP of a ledger partition and renaming the ledger (PX013); gives each partition the TRUNCATE refusal.';
    REVOKE ALL ON FUNCTION pyxp.guard_ledger_partitions() FROM PUBLIC;
    v_guard := pg_catalog.to_regprocedure('pyxp.guard_ledger_partitions()');
    FOREACH v_event IN ARRAY ARRAY['start', 'end', 'drop'] LOOP
        v_trigger := 'pyxp_ledger_partitions_' || v_event;
        IF EXISTS (SELECT FROM pg_catalog.pg_event_trigger e WHERE e.evtname = v_trigger AND e.evtfoid <> v_guard) THEN
            EXECUTE pg_catalog.format('DROP EVENT TRIGGER %I', v_trigger);
        END IF;
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger e WHERE e.evtname = v_trigger) THEN
            EXECUTE pg_catalog.format('CREATE EVENT TRIGGER %I ON %s EXECUTE FUNCTION pyxp.guard_ledger_partitions()',
                                      v_trigger, CASE v_event WHEN 'start' THEN 'ddl_command_start'
                                                              WHEN 'end' THEN 'ddl_command_end' ELSE 'sql_drop' END);
        END IF;
        -- Under session_replication_role = replica too (0028; see sql/09_security.sql).
        EXECUTE pg_catalog.format('ALTER EVENT TRIGGER %I ENABLE ALWAYS', v_trigger);
    END LOOP;
    IF current_setting('pyxp.repairing_guard', true) = 'on' THEN  -- (migrations/env.py's run, not the revision's)
        RAISE NOTICE 'pyxp: the ledger partitions'' guard of revision 0030 is installed (by %)', current_user;
    END IF;
END
$guard$;
