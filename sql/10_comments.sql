-- What `\df+ pyxp.*` says of each function (SPEC 5, README "SQL API").
--
-- The naming rule: public functions are exactly those granted to
-- pyxp_writer or pyxp_reader (sql/09_security.sql), and their description
-- starts with "API:"; every other function is internal (called by the public
-- ones, granted to nobody) and its description starts with "internal:".
-- tests/test_security.py holds every function to this rule.

-- Public: writes.
COMMENT ON FUNCTION pyxp.award(text, text, text, jsonb, jsonb) IS
    'API: awards the active rule `action` to `wallet` once per idempotency_key; params = formula inputs, context = free JSON kept in metadata. Returns one row per ledger row (replayed = true on a retry).';
COMMENT ON FUNCTION pyxp.award_many(jsonb) IS
    'API: many generic awards (a JSON array of {wallet, action, idempotency_key, params, context}) in one transaction: all apply or none; errors name the event index. At most 10000 events and 16 MiB.';
COMMENT ON FUNCTION pyxp.award_many(jsonb[]) IS
    'API: award_many for drivers that send an array of JSON objects (node-postgres: $1::jsonb[]).';
COMMENT ON FUNCTION pyxp.reverse_transaction(bigint, text) IS
    'API: appends the compensating row of a ledger row (once; the same reason again replays).';
COMMENT ON FUNCTION pyxp.award_campaign_creation(text, text, text, numeric, boolean, boolean) IS
    'API: campaign created (seed POST /api/xp/award-campaign-creation): MINT and options to the creator; registers the campaign. Once per campaign.';
COMMENT ON FUNCTION pyxp.award_campaign_approval(text, text) IS
    'API: campaign approved by moderation: XP to its creator (from the registry). Once per campaign.';
COMMENT ON FUNCTION pyxp.award_moderation_vote(text, text, text, text) IS
    'API: a moderator''s VALID/REFUSE vote on a campaign (seed POST /api/xp/award-moderation). Once per (campaign, moderator).';
COMMENT ON FUNCTION pyxp.award_completion(text, text, text, text, boolean, boolean, boolean, numeric, numeric) IS
    'API: completion submitted (no flag), validated or refused (seed POST /api/xp/award-completion). Once per completion each; the outcome belongs to the submission''s completer and campaign.';
COMMENT ON FUNCTION pyxp.award_completion_moderation(text, text, text, text, text) IS
    'API: a moderator''s VALID/REFUSE vote on a completion. Once per (completion, moderator).';
COMMENT ON FUNCTION pyxp.register_agency_client(text, text, text, text) IS
    'API: an agency registers a B2C client email for a campaign: pending until the client signs in.';
COMMENT ON FUNCTION pyxp.onboard_agency_client(text, text) IS
    'API: the client signs in with its email: onboarding XP to the client wallet (never the agency), once per email.';

-- Public: reads.
COMMENT ON FUNCTION pyxp.level_for(numeric) IS
    'API: level, level_start_xp, next_level_xp and xp_to_next_level of any whole total on the active curve; level_for(next_level_xp) is the next level.';
COMMENT ON FUNCTION pyxp.balance(text) IS
    'API: a wallet''s total XP, level, XP to the next level and moderation count (0 XP, level 1 when it has no history).';
COMMENT ON FUNCTION pyxp.history(text, integer, bigint) IS
    'API: a wallet''s ledger rows, newest first; pass the last transaction_id as before_id to page on.';
COMMENT ON FUNCTION pyxp.audit() IS
    'API: one row per inconsistency between ledger, balances, levels, rules and registrations; none when healthy.';
COMMENT ON FUNCTION pyxp.audit_since_checkpoint() IS
    'API: audit() of what was written since the last audit checkpoint (chains, balances, levels, new rows); none when healthy.';
COMMENT ON FUNCTION pyxp.record_audit_checkpoint() IS
    'API: verifies what was written since the last audit checkpoint and records a new one; PX028 when inconsistent.';
COMMENT ON FUNCTION pyxp.last_checkpoint_xmin() IS
    'internal: the snapshot xmin of the last audit checkpoint; rows it did not see have a feed_xid at least this.';
COMMENT ON FUNCTION pyxp.wallets_between(text, text) IS
    'internal: the wallets with a balance in a range of wallet texts, with their checkpoint and opening (the full audit''s walk).';
COMMENT ON FUNCTION pyxp.readable_number(jsonb) IS
    'internal: whether rule_amount reads a coefficient or an input (the audit''s guard).';
COMMENT ON FUNCTION pyxp.audited_rule_amount(numeric, jsonb, jsonb) IS
    'internal: rule_amount for the audit, NaN where rule_amount would raise (an edited input).';
COMMENT ON FUNCTION pyxp.odd_inputs_path(jsonb) IS
    'internal: a rule''s jsonpath test for inputs that are neither numbers nor null (the audit''s slow path).';
COMMENT ON FUNCTION pyxp.audited_wallets(boolean) IS
    'internal: the wallets an audit walks (all, or those with rows since the last checkpoint) and where each starts.';
COMMENT ON FUNCTION pyxp.period_xp_from_rows(text, timestamptz, text, text) IS
    'internal: a wallet''s XP in one period, from its rows and its opening (the audit''s mismatch path).';
COMMENT ON FUNCTION pyxp.sum_with_opening(numeric, boolean, bigint) IS
    'internal: a period''s XP from the rows walked plus, in the opening''s latest period, the opening''s.';
COMMENT ON FUNCTION pyxp.chain_problems_between(boolean, text, text) IS
    'internal: the chain checks of the audited wallets in a range of wallet texts (one slice of pyxp.chain_problems).';
COMMENT ON FUNCTION pyxp.walk_in_slices(boolean) IS
    'internal: whether the chain walk has enough rows (pyxp.audit_parallel_min_rows) to run in parallel slices.';
COMMENT ON FUNCTION pyxp.chain_problems(boolean, boolean) IS
    'internal: the walk of the audited wallets'' chains in wallet_seq order (chain, balance, level, checkpoint, periods) and, when asked, the unsliced checks; a large walk runs in parallel slices, those checks beside them.';
COMMENT ON FUNCTION pyxp.unsliced_problems(boolean, integer) IS
    'internal: the audit''s checks not cut into slices (1: ranks; 2: checkpoints without a balance, wallets'' forms, caps; since a checkpoint 1: the new rows''), as calls a parallel worker can run.';
COMMENT ON FUNCTION pyxp.audited_rows(boolean) IS
    'internal: the rows the single-row checks read: every row, or those written since the last checkpoint.';
COMMENT ON FUNCTION pyxp.transaction_mark(xid8) IS 'internal: a transaction''s id and start time, which no session can set ahead of it.';
COMMENT ON FUNCTION pyxp.feed_problems(boolean) IS
    'internal: feed positions (rows, balances, checkpoints) beyond the next transaction id (for pyxp.audit).';
COMMENT ON FUNCTION pyxp.row_problems(boolean) IS
    'internal: checks of single rows (reversals, rules, requests), on every row or on those since the last checkpoint.';

-- Owner only (not granted): they hold every award while they run.
COMMENT ON FUNCTION pyxp.install_ruleset(jsonb, text, boolean) IS
    'internal: installs a compiled ruleset and activates it unless told not to (pyxp rules apply, install). Owner only.';
COMMENT ON FUNCTION pyxp.activate_ruleset(bigint) IS
    'internal: makes a ruleset version the active one; re-derives levels (and period columns for another zone).';
COMMENT ON FUNCTION pyxp.schema_revision() IS
    'API: the revision of pyxp whose functions this database has (pyxp db current compares it with pyxp.alembic_version, which a logical replication may copy).';
COMMENT ON FUNCTION pyxp.hold_awards(text) IS
    'internal: SHARE ROW EXCLUSIVE on xp_balances (every award held); past lock_timeout, 55P03 naming the holders.';
COMMENT ON FUNCTION pyxp.recalculate_levels() IS
    'internal: re-derives every balance''s level from the active curve. Owner only.';

-- Internal.
COMMENT ON FUNCTION pyxp.cleaned_text(text, text, integer, text, boolean) IS
    'internal: size check, NFKC (identities), Unicode trim, refusal of invisible characters.';
COMMENT ON FUNCTION pyxp.trimmed_text(text, boolean) IS 'internal: NFKC (identities) and Unicode whitespace trimmed.';
COMMENT ON FUNCTION pyxp.invisible_character(text) IS 'internal: the first control or invisible character of a text, or NULL.';
COMMENT ON FUNCTION pyxp.checked_wallet(text, text) IS 'internal: a normalised wallet, or PX001.';
COMMENT ON FUNCTION pyxp.checked_email(text) IS 'internal: a normalised client email, or PX002.';
COMMENT ON FUNCTION pyxp.folded_email(text) IS 'internal: a client email''s one form (lower-cased, final sigma folded, NFKC).';
COMMENT ON FUNCTION pyxp.lower_cased(text) IS 'internal: a text lower-cased the same way whatever the database''s collation.';
COMMENT ON FUNCTION pyxp.email_before_0028(text, text) IS 'internal: the forms a client email was stored in before 0028 (the database''s collation) that read as it now.';
COMMENT ON FUNCTION pyxp.emails_lowered_until() IS 'internal: until when registrations may hold emails read before 0028 (a constant migration 0034 writes; NULL: none).';
COMMENT ON FUNCTION pyxp.checked_campaign_type(text) IS 'internal: B2C, AGENCY_B2C or INDIVIDUAL, or PX003.';
COMMENT ON FUNCTION pyxp.checked_vote(text) IS 'internal: VALID or REFUSE, or PX008.';
COMMENT ON FUNCTION pyxp.checked_identifier(text, text, integer) IS 'internal: a cleaned id, or PX016.';
COMMENT ON FUNCTION pyxp.checked_number(text, numeric) IS 'internal: a finite number in [0, 10^15], or PX004.';
COMMENT ON FUNCTION pyxp.checked_params(jsonb) IS 'internal: formula inputs, names normalised, or PX017/PX004.';
COMMENT ON FUNCTION pyxp.checked_context(jsonb) IS 'internal: a JSON object of at most 16 KiB and 16 levels, or PX017.';
COMMENT ON FUNCTION pyxp.checked_row_count(text, integer, integer) IS 'internal: a row count in range, or PX023.';
COMMENT ON FUNCTION pyxp.checked_award_key(text) IS 'internal: a caller''s idempotency key outside pyxp''s namespaces, or PX016.';
COMMENT ON FUNCTION pyxp.context_column(jsonb, text, integer) IS 'internal: a context text field that fills a ledger column.';
COMMENT ON FUNCTION pyxp.require_read_committed() IS 'internal: PX025 unless the transaction is READ COMMITTED.';
COMMENT ON FUNCTION pyxp.active_ruleset_id() IS 'internal: the active ruleset, or PX020.';
COMMENT ON FUNCTION pyxp.curve_position(bigint, bigint) IS 'internal: where a bigint total stands on a ruleset''s curve.';
COMMENT ON FUNCTION pyxp.check_ruleset_definition(jsonb) IS 'internal: PX024 for a malformed compiled ruleset.';
COMMENT ON FUNCTION pyxp.definition_settings(jsonb) IS
    'internal: the balance floor, timezone and has_caps a compiled ruleset installs (install_ruleset; audit compares).';
COMMENT ON FUNCTION pyxp.definition_levels(jsonb) IS
    'internal: the level_thresholds rows a compiled ruleset installs (install_ruleset; audit compares).';
COMMENT ON FUNCTION pyxp.ruleset_table_problems(pyxp.rulesets) IS
    'internal: what of a ruleset''s tables is not what its definition installs (audit: ruleset_mismatch).';
COMMENT ON FUNCTION pyxp.ruleset_tables_digest(bigint) IS
    'internal: a digest of a ruleset''s settings, levels and rules (pyxp.xp_rulesets_as_installed).';
COMMENT ON FUNCTION pyxp.definition_rules(jsonb) IS
    'internal: the rules rows a compiled ruleset installs, in file order (install_ruleset; audit compares).';
COMMENT ON FUNCTION pyxp.rule_amount(numeric, jsonb, jsonb) IS 'internal: a rule''s linear form evaluated, halves away from zero.';
COMMENT ON FUNCTION pyxp.floored_amount(numeric, bigint, numeric) IS 'internal: a penalty cut by the balance floor.';
COMMENT ON FUNCTION pyxp.kept_period_xp(timestamptz, bigint, timestamptz, numeric) IS
    'internal: a balance''s XP in its latest period of a kind after new rows.';
COMMENT ON FUNCTION pyxp.refuse_period_xp(numeric) IS 'internal: PX019 for a period''s XP beyond bigint.';
COMMENT ON FUNCTION pyxp.cap_usage_seed_consistent(bigint, bigint, text, text, bigint, timestamptz, bigint) IS
    'internal: xp_cap_usage''s seed check (all or nothing, at most the usage).';
COMMENT ON FUNCTION pyxp.balance_limit() IS 'internal: 2^62, the bound of every balance.';
COMMENT ON FUNCTION pyxp.param_name(text) IS 'internal: a formula input''s name as params are read (upper case, $ dropped).';
COMMENT ON FUNCTION pyxp.key_hash(text) IS 'API: the claims'' key (xp_award_claims, xp_requests), 16 bytes of sha256 of an idempotency key.';
COMMENT ON FUNCTION pyxp.inputs_digest(jsonb) IS 'internal: 8 bytes of sha256 of a generic award''s canonical inputs, kept on its claim row.';
COMMENT ON FUNCTION pyxp.row_ruleset(bigint, text) IS 'internal: the ruleset a ledger row was written under.';
COMMENT ON FUNCTION pyxp.request_inputs_digest(jsonb) IS 'internal: the digest a flow''s or reversal''s request keeps of its inputs.';
COMMENT ON FUNCTION pyxp.rebuilt_request_inputs(text, text, text, text, text, jsonb, bigint) IS
    'internal: a flow call''s or reversal''s inputs rebuilt from one of its ledger rows.';
COMMENT ON FUNCTION pyxp.claim_request(text, jsonb, bigint, jsonb) IS 'internal: records a flow''s or reversal''s claim; false when its key was used before.';
COMMENT ON FUNCTION pyxp.recorded_request(text) IS 'internal: an earlier flow call''s or reversal''s request, with its inputs kept or rebuilt from its rows.';
COMMENT ON FUNCTION pyxp.archive_horizon() IS 'internal: the end of the ledger''s archived range, NULL when nothing was archived.';
COMMENT ON FUNCTION pyxp.ledger_unmoved() IS
    'internal: true, or 40001 when the ledger was read with a snapshot older than an archive''s commit or a rewrite of one of pyxp''s tables.';
COMMENT ON FUNCTION pyxp.replayed_award(text, jsonb, text, text) IS 'internal: the original rows of a flow''s or reversal''s key, or PX010 for other inputs.';
COMMENT ON FUNCTION pyxp.append_rows(bigint, bigint, text, boolean, pyxp.pending_row[], boolean) IS
    'internal: THE writer: locks the wallets, replays claimed generic awards, applies floor and caps, appends every ledger row and updates each balance once.';
COMMENT ON FUNCTION pyxp.code_point(text) IS 'internal: a character''s code point as U+XXXX (all its hex digits).';
COMMENT ON FUNCTION pyxp.call_recorded(text, jsonb) IS 'internal: whether a flow call or reversal was made before with the same key and inputs (a retry: it replays).';
COMMENT ON FUNCTION pyxp.claimed_row(bigint, timestamptz) IS 'internal: the ledger row a claim names, for the writer''s replays (no call for a new key).';
COMMENT ON FUNCTION pyxp.raise_key_conflict(boolean, integer, text, jsonb, text, text, bigint, jsonb) IS 'internal: PX010 for a generic award''s key claimed with other inputs.';
COMMENT ON FUNCTION pyxp.floored_rows(bigint, pyxp.pending_row[], bigint) IS 'internal: the balance floor applied to the writer''s rows, per wallet in order.';
COMMENT ON FUNCTION pyxp.formula_input_problems(text, jsonb, jsonb, boolean) IS 'internal: missing or unknown formula inputs.';
COMMENT ON FUNCTION pyxp.writing_ruleset() IS 'internal: READ COMMITTED check, the ruleset-switch lock, the active ruleset and floor.';
COMMENT ON FUNCTION pyxp.planned_awards(bigint, pyxp.batch_event[], boolean) IS 'internal: the rows of generic awards (single or batch), with their checks.';
COMMENT ON FUNCTION pyxp.post_award(text, jsonb, text, text, text, text[], jsonb, text, text, jsonb, integer, text) IS
    'internal: claims a flow''s key, resolves its event''s active rules and hands their rows to the writer.';
COMMENT ON FUNCTION pyxp.key_part(text) IS 'internal: escapes one part of a two-part key (injective keys).';
COMMENT ON FUNCTION pyxp.vote_key(text, text, text, text) IS 'internal: the key of a vote, or the one an earlier version stored for it.';
COMMENT ON FUNCTION pyxp.resolved_campaign_type(text, text) IS 'internal: the campaign''s type from the registry or the call (recorded), or PX011/PX012.';
COMMENT ON FUNCTION pyxp.check_completion_owner(text, text, text, text, numeric) IS 'internal: PX011 when a call names another completer, campaign or MINT value than the completion''s.';
COMMENT ON FUNCTION pyxp.required_campaign_type(text) IS 'internal: a campaign type that must be given, or PX003.';
COMMENT ON FUNCTION pyxp.formula_inputs(numeric, numeric, numeric) IS 'internal: a flow''s formula inputs as JSON.';
COMMENT ON FUNCTION pyxp.lock_subject(text) IS 'internal: the row lock serialising every call about one client email or completion.';
COMMENT ON FUNCTION pyxp.refuse_history_change() IS 'internal: trigger refusing UPDATE, DELETE on ruleset_activations (PX013).';
COMMENT ON FUNCTION pyxp.refuse_ledger_change() IS 'internal: trigger refusing UPDATE, DELETE, TRUNCATE on xp_transactions (PX013).';
