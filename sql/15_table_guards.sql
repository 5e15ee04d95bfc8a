-- TRUNCATE of pyxp's other tables (0034, a hostile test of table
-- maintenance under load). The ledger refuses UPDATE, DELETE and TRUNCATE
-- (sql/09_security.sql); the rest of pyxp's state refused nothing, and a
-- TRUNCATE by mistake (a cleanup script, a wrong schema) did quiet damage:
-- of xp_award_claims or xp_requests, the keys they hold were paid again on
-- retry; of campaigns, an approval paid whoever the caller named as the
-- creator, and audit() stayed clean; of xp_balances, every award failed
-- with a raw 23502. pyxp itself never truncates a table. A statement
-- trigger (ALWAYS: also under session_replication_role = replica) refuses
-- it with PX013, nothing changed. An owner who means it drops the trigger:
-- this guards against mistakes, not against the owner (README "Whom pyxp
-- trusts").

SET LOCAL ROLE pyxp_owner;

CREATE FUNCTION pyxp.refuse_truncate()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'TRUNCATE of pyxp.% refused: pyxp''s tables are the ledger''s state', TG_TABLE_NAME
        USING ERRCODE = 'PX013',
              DETAIL = 'its rows are what keys, registrations, balances, ranks or audits rest on',
              HINT = 'correct the ledger with pyxp.reverse_transaction(); to drop pyxp, run pyxp db downgrade';
END
$$;

CREATE TRIGGER agency_b2c_clients_no_truncate BEFORE TRUNCATE ON pyxp.agency_b2c_clients
    FOR EACH STATEMENT EXECUTE FUNCTION pyxp.refuse_truncate();
CREATE TRIGGER campaigns_no_truncate BEFORE TRUNCATE ON pyxp.campaigns
    FOR EACH STATEMENT EXECUTE FUNCTION pyxp.refuse_truncate();
CREATE TRIGGER level_thresholds_no_truncate BEFORE TRUNCATE ON pyxp.level_thresholds
    FOR EACH STATEMENT EXECUTE FUNCTION pyxp.refuse_truncate();
CREATE TRIGGER rules_no_truncate BEFORE TRUNCATE ON pyxp.rules
    FOR EACH STATEMENT EXECUTE FUNCTION pyxp.refuse_truncate();
CREATE TRIGGER ruleset_activations_no_truncate BEFORE TRUNCATE ON pyxp.ruleset_activations
    FOR EACH STATEMENT EXECUTE FUNCTION pyxp.refuse_truncate();
CREATE TRIGGER rulesets_no_truncate BEFORE TRUNCATE ON pyxp.rulesets
    FOR EACH STATEMENT EXECUTE FUNCTION pyxp.refuse_truncate();
CREATE TRIGGER subject_locks_no_truncate BEFORE TRUNCATE ON pyxp.subject_locks
    FOR EACH STATEMENT EXECUTE FUNCTION pyxp.refuse_truncate();
CREATE TRIGGER xp_archived_cap_usage_no_truncate BEFORE TRUNCATE ON pyxp.xp_archived_cap_usage
    FOR EACH STATEMENT EXECUTE FUNCTION pyxp.refuse_truncate();
CREATE TRIGGER xp_archived_originals_no_truncate BEFORE TRUNCATE ON pyxp.xp_archived_originals
    FOR EACH STATEMENT EXECUTE FUNCTION pyxp.refuse_truncate();
CREATE TRIGGER xp_audit_checkpoints_no_truncate BEFORE TRUNCATE ON pyxp.xp_audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION pyxp.refuse_truncate();
CREATE TRIGGER xp_award_claims_no_truncate BEFORE TRUNCATE ON pyxp.xp_award_claims
    FOR EACH STATEMENT EXECUTE FUNCTION pyxp.refuse_truncate();
CREATE TRIGGER xp_balances_no_truncate BEFORE TRUNCATE ON pyxp.xp_balances
    FOR EACH STATEMENT EXECUTE FUNCTION pyxp.refuse_truncate();
CREATE TRIGGER xp_cap_usage_no_truncate BEFORE TRUNCATE ON pyxp.xp_cap_usage
    FOR EACH STATEMENT EXECUTE FUNCTION pyxp.refuse_truncate();
CREATE TRIGGER xp_email_forms_before_0028_no_truncate BEFORE TRUNCATE ON pyxp.xp_email_forms_before_0028
    FOR EACH STATEMENT EXECUTE FUNCTION pyxp.refuse_truncate();
CREATE TRIGGER xp_ledger_archives_no_truncate BEFORE TRUNCATE ON pyxp.xp_ledger_archives
    FOR EACH STATEMENT EXECUTE FUNCTION pyxp.refuse_truncate();
CREATE TRIGGER xp_ledger_forks_no_truncate BEFORE TRUNCATE ON pyxp.xp_ledger_forks
    FOR EACH STATEMENT EXECUTE FUNCTION pyxp.refuse_truncate();
CREATE TRIGGER xp_period_rank_counts_no_truncate BEFORE TRUNCATE ON pyxp.xp_period_rank_counts
    FOR EACH STATEMENT EXECUTE FUNCTION pyxp.refuse_truncate();
CREATE TRIGGER xp_rank_counts_no_truncate BEFORE TRUNCATE ON pyxp.xp_rank_counts
    FOR EACH STATEMENT EXECUTE FUNCTION pyxp.refuse_truncate();
CREATE TRIGGER xp_requests_no_truncate BEFORE TRUNCATE ON pyxp.xp_requests
    FOR EACH STATEMENT EXECUTE FUNCTION pyxp.refuse_truncate();
CREATE TRIGGER xp_rulesets_as_installed_no_truncate BEFORE TRUNCATE ON pyxp.xp_rulesets_as_installed
    FOR EACH STATEMENT EXECUTE FUNCTION pyxp.refuse_truncate();
CREATE TRIGGER xp_wallet_checkpoints_no_truncate BEFORE TRUNCATE ON pyxp.xp_wallet_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION pyxp.refuse_truncate();
CREATE TRIGGER xp_wallet_openings_no_truncate BEFORE TRUNCATE ON pyxp.xp_wallet_openings
    FOR EACH STATEMENT EXECUTE FUNCTION pyxp.refuse_truncate();

ALTER TABLE pyxp.agency_b2c_clients ENABLE ALWAYS TRIGGER agency_b2c_clients_no_truncate;
ALTER TABLE pyxp.campaigns ENABLE ALWAYS TRIGGER campaigns_no_truncate;
ALTER TABLE pyxp.level_thresholds ENABLE ALWAYS TRIGGER level_thresholds_no_truncate;
ALTER TABLE pyxp.rules ENABLE ALWAYS TRIGGER rules_no_truncate;
ALTER TABLE pyxp.ruleset_activations ENABLE ALWAYS TRIGGER ruleset_activations_no_truncate;
ALTER TABLE pyxp.rulesets ENABLE ALWAYS TRIGGER rulesets_no_truncate;
ALTER TABLE pyxp.subject_locks ENABLE ALWAYS TRIGGER subject_locks_no_truncate;
ALTER TABLE pyxp.xp_archived_cap_usage ENABLE ALWAYS TRIGGER xp_archived_cap_usage_no_truncate;
ALTER TABLE pyxp.xp_archived_originals ENABLE ALWAYS TRIGGER xp_archived_originals_no_truncate;
ALTER TABLE pyxp.xp_audit_checkpoints ENABLE ALWAYS TRIGGER xp_audit_checkpoints_no_truncate;
ALTER TABLE pyxp.xp_award_claims ENABLE ALWAYS TRIGGER xp_award_claims_no_truncate;
ALTER TABLE pyxp.xp_balances ENABLE ALWAYS TRIGGER xp_balances_no_truncate;
ALTER TABLE pyxp.xp_cap_usage ENABLE ALWAYS TRIGGER xp_cap_usage_no_truncate;
ALTER TABLE pyxp.xp_email_forms_before_0028 ENABLE ALWAYS TRIGGER xp_email_forms_before_0028_no_truncate;
ALTER TABLE pyxp.xp_ledger_archives ENABLE ALWAYS TRIGGER xp_ledger_archives_no_truncate;
ALTER TABLE pyxp.xp_ledger_forks ENABLE ALWAYS TRIGGER xp_ledger_forks_no_truncate;
ALTER TABLE pyxp.xp_period_rank_counts ENABLE ALWAYS TRIGGER xp_period_rank_counts_no_truncate;
ALTER TABLE pyxp.xp_rank_counts ENABLE ALWAYS TRIGGER xp_rank_counts_no_truncate;
ALTER TABLE pyxp.xp_requests ENABLE ALWAYS TRIGGER xp_requests_no_truncate;
ALTER TABLE pyxp.xp_rulesets_as_installed ENABLE ALWAYS TRIGGER xp_rulesets_as_installed_no_truncate;
ALTER TABLE pyxp.xp_wallet_checkpoints ENABLE ALWAYS TRIGGER xp_wallet_checkpoints_no_truncate;
ALTER TABLE pyxp.xp_wallet_openings ENABLE ALWAYS TRIGGER xp_wallet_openings_no_truncate;

COMMENT ON FUNCTION pyxp.refuse_truncate() IS
    'internal: trigger refusing TRUNCATE of pyxp''s tables other than the ledger (PX013).';
REVOKE ALL ON FUNCTION pyxp.refuse_truncate() FROM PUBLIC;

RESET ROLE;
