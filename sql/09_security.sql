-- Append-only ledger and privileges.

-- Refuses UPDATE, DELETE and TRUNCATE on the ledger, even for the owner
-- (PX013). Corrections are new rows: pyxp.reverse_transaction(). A superuser
-- can still disable triggers; pyxp.audit() would then see the damage.
-- One DELETE is skipped instead, row by row: a logical replication apply
-- worker's. A publisher deletes ledger rows in one place only, when
-- pyxp.create_ledger_partitions moves a month's rows out of its default
-- partition (sql/12_partitions.sql): with publish_via_partition_root the
-- DELETE is published, the copy into the new partition (not yet attached,
-- in no publication) is not, and the subscriber keeps its rows where its
-- own partitions put them (its own create_ledger_partitions moves them).
-- Refused, the DELETE stopped the subscription for good: the apply retried
-- it forever, and no later award reached the subscriber (0038, a hostile
-- test). The backend's type says an apply worker, which no session can
-- claim to be (session_replication_role can be set by a role granted SET
-- on it, 0028).
CREATE FUNCTION pyxp.refuse_ledger_change()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_OP = 'DELETE' AND TG_LEVEL = 'ROW'
       AND (SELECT a.backend_type FROM pg_catalog.pg_stat_activity a
             WHERE a.pid = pg_catalog.pg_backend_pid()) = 'logical replication worker' THEN
        RETURN NULL;  -- (the row stays)
    END IF;
    RAISE EXCEPTION 'xp_transactions is append-only: % refused', TG_OP
        USING ERRCODE = 'PX013',
              HINT = 'correct a row with pyxp.reverse_transaction(transaction_id, reason)';
END
$$;

CREATE TRIGGER xp_transactions_append_only
    BEFORE UPDATE OR DELETE ON pyxp.xp_transactions
    FOR EACH ROW EXECUTE FUNCTION pyxp.refuse_ledger_change();
CREATE TRIGGER xp_transactions_no_truncate
    BEFORE TRUNCATE ON pyxp.xp_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION pyxp.refuse_ledger_change();
-- ALWAYS: they fire under session_replication_role = replica too, which a
-- role granted SET on it (PostgreSQL 15) sets to skip ordinary triggers
-- (0028, a hostile test: DELETE and UPDATE went through). The row trigger's
-- setting recurses to the partitions and their future clones; each
-- partition's TRUNCATE trigger is its own (pyxp.new_ledger_partition).
ALTER TABLE pyxp.xp_transactions ENABLE ALWAYS TRIGGER xp_transactions_append_only;
ALTER TABLE pyxp.xp_transactions ENABLE ALWAYS TRIGGER xp_transactions_no_truncate;

-- The activations' history (0040) is append-only too: an UPDATE or DELETE
-- would rewrite which ruleset was in force when (PX013; its TRUNCATE:
-- sql/15_table_guards.sql). ALWAYS, as the ledger's.
CREATE FUNCTION pyxp.refuse_history_change()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'pyxp.% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'PX013',
              HINT = 'a ruleset is activated with pyxp rules apply (pyxp.install_ruleset); its history stays';
END
$$;

CREATE TRIGGER ruleset_activations_append_only
    BEFORE UPDATE OR DELETE ON pyxp.ruleset_activations
    FOR EACH ROW EXECUTE FUNCTION pyxp.refuse_history_change();
ALTER TABLE pyxp.ruleset_activations ENABLE ALWAYS TRIGGER ruleset_activations_append_only;

-- Nobody but the owner writes a table. pyxp_reader reads every table;
-- pyxp_writer only executes the public functions (which are SECURITY DEFINER,
-- run as the owner with search_path pinned to pyxp, pg_temp). Internal
-- functions (checked_*, post_award, append_rows, ...) are granted to
-- nobody: a writer cannot append a row that skipped validation.
REVOKE ALL ON ALL TABLES IN SCHEMA pyxp FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pyxp FROM PUBLIC;
GRANT USAGE ON SCHEMA pyxp TO pyxp_writer, pyxp_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA pyxp TO pyxp_reader;

GRANT EXECUTE ON FUNCTION
    pyxp.award(text, text, text, jsonb, jsonb),
    pyxp.reverse_transaction(bigint, text),
    pyxp.award_campaign_creation(text, text, text, numeric, boolean, boolean),
    pyxp.award_campaign_approval(text, text),
    pyxp.award_moderation_vote(text, text, text, text),
    pyxp.award_completion(text, text, text, text, boolean, boolean, boolean, numeric, numeric),
    pyxp.award_completion_moderation(text, text, text, text, text),
    pyxp.register_agency_client(text, text, text, text),
    pyxp.onboard_agency_client(text, text),
    pyxp.award_many(jsonb),
    pyxp.award_many(jsonb[])
TO pyxp_writer;
-- pyxp.recalculate_levels() and pyxp.apply_rules_retroactively() stay the
-- owner's (SPEC 7): their lock holds every award.

GRANT EXECUTE ON FUNCTION
    pyxp.schema_revision(),
    pyxp.level_for(numeric),
    pyxp.balance(text),
    pyxp.history(text, integer, bigint),
    pyxp.leaderboard(integer, integer, text, timestamptz),
    pyxp.wallet_rank(text, text, timestamptz),
    pyxp.period_xp(text, text, timestamptz),
    pyxp.simulate_rules(bigint),
    pyxp.simulation_report(bigint, integer),
    pyxp.audit(),
    pyxp.audit_since_checkpoint()
TO pyxp_writer, pyxp_reader;
-- A claim is found by its key's hash: a DBA reading xp_award_claims or
-- xp_requests computes it (0040; before, only by writing the formula out).
GRANT EXECUTE ON FUNCTION pyxp.key_hash(text) TO pyxp_writer, pyxp_reader;
-- Recording a checkpoint writes only the checkpoint tables and waits for no
-- award: a writer (a scheduled job) may do it.
GRANT EXECUTE ON FUNCTION pyxp.record_audit_checkpoint() TO pyxp_writer;

RESET ROLE;
