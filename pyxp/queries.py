"""Every SQL statement the package sends: calls to ``pyxp.`` functions with
named notation and explicit casts. Nothing else in the package writes SQL
against the ledger."""

from __future__ import annotations

AWARD = """SELECT * FROM pyxp.award(
    wallet => %(wallet)s::text, action => %(action)s::text,
    idempotency_key => %(idempotency_key)s::text,
    params => %(params)s::jsonb, context => %(context)s::jsonb)"""

AWARD_MANY = "SELECT * FROM pyxp.award_many(events => %(events)s::jsonb)"

REVERSE_TRANSACTION = """SELECT * FROM pyxp.reverse_transaction(
    transaction_id => %(transaction_id)s::bigint, reason => %(reason)s::text)"""

AWARD_CAMPAIGN_CREATION = """SELECT * FROM pyxp.award_campaign_creation(
    creator_wallet => %(creator_wallet)s::text, campaign_id => %(campaign_id)s::text,
    campaign_type => %(campaign_type)s::text, mint_value => %(mint_value)s::numeric,
    winstory_creates_video => %(winstory_creates_video)s::boolean,
    no_rewards => %(no_rewards)s::boolean)"""

AWARD_CAMPAIGN_APPROVAL = """SELECT * FROM pyxp.award_campaign_approval(
    campaign_id => %(campaign_id)s::text, creator_wallet => %(creator_wallet)s::text)"""

AWARD_MODERATION_VOTE = """SELECT * FROM pyxp.award_moderation_vote(
    moderator_wallet => %(moderator_wallet)s::text, campaign_id => %(campaign_id)s::text,
    vote_decision => %(vote_decision)s::text, campaign_type => %(campaign_type)s::text)"""

AWARD_COMPLETION = """SELECT * FROM pyxp.award_completion(
    completer_wallet => %(completer_wallet)s::text, campaign_id => %(campaign_id)s::text,
    completion_id => %(completion_id)s::text, campaign_type => %(campaign_type)s::text,
    is_validated => %(is_validated)s::boolean, is_refused => %(is_refused)s::boolean,
    is_paid => %(is_paid)s::boolean, price_completion => %(price_completion)s::numeric,
    mint_value_winc => %(mint_value_winc)s::numeric)"""

AWARD_COMPLETION_MODERATION = """SELECT * FROM pyxp.award_completion_moderation(
    moderator_wallet => %(moderator_wallet)s::text, campaign_id => %(campaign_id)s::text,
    completion_id => %(completion_id)s::text, vote_decision => %(vote_decision)s::text,
    campaign_type => %(campaign_type)s::text)"""

REGISTER_AGENCY_CLIENT = """SELECT * FROM pyxp.register_agency_client(
    agency_wallet => %(agency_wallet)s::text, client_email => %(client_email)s::text,
    campaign_id => %(campaign_id)s::text, company_name => %(company_name)s::text)"""

ONBOARD_AGENCY_CLIENT = """SELECT * FROM pyxp.onboard_agency_client(
    client_email => %(client_email)s::text, client_wallet => %(client_wallet)s::text)"""

BALANCE = "SELECT * FROM pyxp.balance(wallet => %(wallet)s::text)"

HISTORY = """SELECT * FROM pyxp.history(
    wallet => %(wallet)s::text, max_rows => %(max_rows)s::integer, before_id => %(before_id)s::bigint)"""

# What archives took of a wallet's history (README "Retention"): its rows in the archived range,
# the end of that range (the latest archive's), and its balance. No row for a wallet without an
# opening (none archived, or an unknown wallet). pyxp_reader's: a writer may read no table.
WALLET_ARCHIVE = """SELECT b.user_wallet, o.archived_rows, a.archived_before, b.total_xp, b.current_level
  FROM pyxp.balance(wallet => %(wallet)s::text) b
  JOIN pyxp.xp_wallet_openings o ON o.user_wallet = b.user_wallet
 CROSS JOIN (SELECT max(x.archived_before) AS archived_before FROM pyxp.xp_ledger_archives x) a"""

# `at` NULL: the period containing the call's now() (SPEC 12).
LEADERBOARD = """SELECT * FROM pyxp.leaderboard(
    max_rows => %(max_rows)s::integer, offset_rows => %(offset_rows)s::integer,
    period => %(period)s::text, at => coalesce(%(at)s::timestamptz, now()))"""

WALLET_RANK = """SELECT pyxp.wallet_rank(
    wallet => %(wallet)s::text, period => %(period)s::text, at => coalesce(%(at)s::timestamptz, now())) AS rank"""

PERIOD_XP = """SELECT pyxp.period_xp(
    wallet => %(wallet)s::text, period => %(period)s::text, at => coalesce(%(at)s::timestamptz, now())) AS period_xp"""

LEVEL_FOR = "SELECT * FROM pyxp.level_for(total_xp => %(total_xp)s::numeric)"

RECALCULATE_LEVELS = "SELECT pyxp.recalculate_levels() AS changed"
REBALANCE_RANK_BUCKETS = """SELECT * FROM pyxp.rebalance_rank_buckets(
    bucket_size => %(bucket_size)s, full_rebuild => %(full_rebuild)s)"""

ARCHIVE_LEDGER_PARTITIONS = "SELECT * FROM pyxp.archive_ledger_partitions(archived_before => %(archived_before)s)"
CREATE_LEDGER_PARTITIONS = "SELECT * FROM pyxp.create_ledger_partitions(months_ahead => %(months_ahead)s)"

AUDIT = "SELECT * FROM pyxp.audit()"
AUDIT_SINCE_CHECKPOINT = "SELECT * FROM pyxp.audit_since_checkpoint()"
RECORD_AUDIT_CHECKPOINT = "SELECT * FROM pyxp.record_audit_checkpoint()"

INSTALL_RULESET = """SELECT * FROM pyxp.install_ruleset(
    definition => %(definition)s::jsonb, source => %(source)s::text)"""

# Installs without activating (from migration 0007 on).
INSTALL_RULESET_INACTIVE = """SELECT * FROM pyxp.install_ruleset(
    definition => %(definition)s::jsonb, source => %(source)s::text, activate => false)"""

# The zone the active ruleset's periods are counted in (SPEC 12).
ACTIVE_TIMEZONE = "SELECT r.timezone FROM pyxp.rulesets r WHERE r.is_active"

# What-if and retroactive rule changes (SPEC 13).
SIMULATION_REPORT = """SELECT pyxp.simulation_report(
    ruleset_id => %(ruleset_id)s::bigint, top_wallets => %(top)s::integer) AS report"""

APPLY_RULES_RETROACTIVELY = """SELECT * FROM pyxp.apply_rules_retroactively(ruleset_id => %(ruleset_id)s::bigint)"""

ACTIVE_RULESET = """SELECT r.ruleset_id, r.name, r.version, r.balance_floor, r.activated_at,
       r.definition, r.source
  FROM pyxp.rulesets r WHERE r.is_active"""

# -- reads of the rule and level tables for the CLI (rules show, levels) -------

# The rules of the active ruleset, in file order (= order of their ledger rows).
ACTIVE_RULES = """SELECT ru.position, ru.action, ru.event, ru.campaign_types, ru.condition, ru.formula
  FROM pyxp.rules ru JOIN pyxp.rulesets r ON r.ruleset_id = ru.ruleset_id AND r.is_active
 ORDER BY ru.position"""

# Levels 1..%(first)s of the active curve, walked with pyxp.level_for only: each
# level starts where the previous one's next_level_xp is.
FIRST_LEVELS = """WITH RECURSIVE curve AS (
    SELECT l.level, l.level_start_xp, l.next_level_xp FROM pyxp.level_for(total_xp => 0) l
    UNION ALL
    SELECT n.level, n.level_start_xp, n.next_level_xp
      FROM curve c CROSS JOIN LATERAL pyxp.level_for(total_xp => c.next_level_xp) n
     WHERE c.level < %(first)s::bigint
)
SELECT c.level, c.level_start_xp, c.next_level_xp, c.next_level_xp - c.level_start_xp AS increment
  FROM curve c ORDER BY c.level"""

# Where given totals stand on the active curve (pyxp.level_for of each).
LEVELS_OF_TOTALS = """SELECT t.total_xp, l.level, l.level_start_xp, l.next_level_xp, l.xp_to_next_level
  FROM unnest(%(totals)s::numeric[]) WITH ORDINALITY t(total_xp, ord)
 CROSS JOIN LATERAL pyxp.level_for(total_xp => t.total_xp) l
 ORDER BY t.ord"""

# Every installed ruleset version (pyxp rules list), oldest first, with its rule count.
RULESETS = """SELECT r.ruleset_id, r.name, r.version, r.is_active AS active, r.created_at, r.activated_at,
       r.timezone, (SELECT count(*) FROM pyxp.rules ru WHERE ru.ruleset_id = r.ruleset_id) AS rules
  FROM pyxp.rulesets r ORDER BY r.name, r.version"""

# Every activation of a ruleset, newest first (pyxp.ruleset_activations, 0040); with at, the one
# in force then: the last, in the history's order (activation_id), at or before it (README "Which
# ruleset was in force when": activated_at is the clock's).
RULESET_ACTIVATIONS = """SELECT a.activation_id, a.activated_at, a.ruleset_id, r.name, r.version, r.timezone,
       p.name AS replaced_name, p.version AS replaced_version, a.reconstructed
  FROM pyxp.ruleset_activations a
  JOIN pyxp.rulesets r ON r.ruleset_id = a.ruleset_id
  LEFT JOIN pyxp.rulesets p ON p.ruleset_id = a.previous_ruleset_id
 WHERE %(at)s::timestamptz IS NULL OR a.activated_at <= %(at)s::timestamptz
 ORDER BY a.activation_id DESC
 LIMIT CASE WHEN %(at)s::timestamptz IS NULL THEN NULL ELSE 1 END"""

# The change feed (SPEC 11).
CHANGES = """SELECT * FROM pyxp.changes(
    after_cursor => %(after_cursor)s::bigint, max_rows => %(max_rows)s::integer, wallet => %(wallet)s::text)"""

LISTEN_CHANGES = "LISTEN pyxp_changes"
# The session's idle_session_timeout in seconds (0: none): a watch waits less than that between reads.
IDLE_SESSION_TIMEOUT = "SELECT setting::float8 / 1000 FROM pg_catalog.pg_settings WHERE name = 'idle_session_timeout'"
