-- 0007: what-if and retroactive rule changes (SPEC 13).
-- Frozen copy of what sql/*.sql defines at this revision; never edit it.
--
-- pyxp.simulate_rules / pyxp.simulation_report replay the ledger under an
-- installed ruleset version (writing nothing); pyxp.apply_rules_retroactively
-- activates it and appends one RULES_ADJUSTMENT row per wallet it changes.
-- install_ruleset can install without activating (activate => false); only
-- activation takes the awards' lock. REVERSAL and RULES_ADJUSTMENT are
-- reserved action names, rules.adjustment: a reserved key prefix, and a
-- RULES_ADJUSTMENT row cannot be reversed. Caps are applied inside the
-- writer's main statements (pyxp.append_rows): pyxp.capped_rows is gone.
SET LOCAL ROLE pyxp_owner;

ALTER TABLE pyxp.rulesets ADD COLUMN applied_retroactively_at timestamptz;

CREATE TYPE pyxp.simulation_state AS (
    balance    numeric,
    used       jsonb,
    applied    jsonb,
    by_action  jsonb
);

DROP FUNCTION pyxp.install_ruleset(jsonb, text);
DROP FUNCTION pyxp.capped_rows(pyxp.pending_row[], text);

-- The caller's key of a generic award (pyxp.award, pyxp.award_many): an
-- identifier of at most 256 characters outside the namespaces of the keys
-- the flow functions derive (campaign.created:..., reverse:..., ...), so a
-- manual award can never pose as, or block, a flow's award (PX016).
CREATE OR REPLACE FUNCTION pyxp.checked_award_key(p_key text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v text := pyxp.checked_identifier('idempotency key', p_key, 256);
BEGIN
    IF v ~ '^(campaign\.(created|approved|vote)|completion\.(submitted|outcome|vote)|client\.onboarded|reverse|rules\.adjustment)(/[0-9]+)?:' THEN
        RAISE EXCEPTION 'invalid idempotency key %: reserved for pyxp''s own flows', quote_literal(v)
            USING ERRCODE = 'PX016',
                  HINT = 'keys starting with campaign.*:, completion.*:, client.onboarded:, reverse: or rules.adjustment: are pyxp''s';
    END IF;
    RETURN v;
END
$$;

-- Refuses a malformed compiled definition (PX024). The Python compiler
-- already produces well-formed ones; this guards direct SQL callers.
CREATE OR REPLACE FUNCTION pyxp.check_ruleset_definition(p_definition jsonb)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_problem text;
BEGIN
    SELECT problem INTO v_problem FROM (
        SELECT 'name must be a non-empty text' AS problem
         WHERE coalesce(p_definition ->> 'name', '') !~ '^[a-z0-9][a-z0-9_-]{0,62}$'
        UNION ALL
        SELECT 'levels must be a non-empty array'
         WHERE jsonb_typeof(p_definition -> 'levels') IS DISTINCT FROM 'array'
            OR jsonb_array_length(p_definition -> 'levels') = 0
        UNION ALL
        SELECT 'rules must be an array'
         WHERE jsonb_typeof(p_definition -> 'rules') IS DISTINCT FROM 'array'
        UNION ALL
        SELECT 'balance_floor must be an integer or null'
         WHERE jsonb_typeof(p_definition -> 'balance_floor') NOT IN ('null', 'number')
            OR (p_definition ->> 'balance_floor') !~ '^-?[0-9]{1,16}$'
        UNION ALL
        SELECT format('timezone %s is not an IANA time zone name', p_definition -> 'timezone')
         WHERE p_definition ? 'timezone'
           AND (jsonb_typeof(p_definition -> 'timezone') IS DISTINCT FROM 'string'
                OR NOT EXISTS (SELECT FROM pg_catalog.pg_timezone_names z
                                WHERE z.name = p_definition ->> 'timezone'))
    ) p LIMIT 1;
    IF v_problem IS NULL THEN
        SELECT format('level row %s: %s', ord, problem) INTO v_problem FROM (
            SELECT l.ord,
                   CASE
                     WHEN (l.value ->> 'level') !~ '^[0-9]{1,18}$' OR (l.value ->> 'threshold') !~ '^[0-9]{1,18}$'
                          OR (l.value ->> 'increment') !~ '^[0-9]{1,18}$'
                          OR jsonb_typeof(l.value -> 'is_last') IS DISTINCT FROM 'boolean'
                       THEN 'level, threshold, increment must be integers and is_last a boolean'
                     WHEN (l.value ->> 'level')::bigint <> l.ord THEN 'levels must be 1, 2, 3, ... in order'
                     WHEN l.ord = 1 AND (l.value ->> 'threshold')::bigint <> 0 THEN 'level 1 starts at 0 XP'
                     WHEN (l.value ->> 'increment')::bigint <= 0 THEN 'increments are positive'
                     WHEN (l.value ->> 'is_last')::boolean <> (l.ord = l.total) THEN 'only the last row has is_last'
                     WHEN l.ord < l.total AND (l.value ->> 'threshold')::numeric + (l.value ->> 'increment')::numeric
                          <> (l.next_value ->> 'threshold')::numeric
                       THEN 'threshold + increment must equal the next threshold'
                   END AS problem
            FROM (
                SELECT e.value, e.ord, lead(e.value) OVER (ORDER BY e.ord) AS next_value,
                       count(*) OVER () AS total
                FROM jsonb_array_elements(p_definition -> 'levels') WITH ORDINALITY e(value, ord)
            ) l
        ) p WHERE problem IS NOT NULL ORDER BY ord LIMIT 1;
    END IF;
    IF v_problem IS NULL THEN
        SELECT format('rule %s: %s', ord, problem) INTO v_problem FROM (
            SELECT r.ord,
                   CASE
                     WHEN coalesce(r.value ->> 'action', '') !~ '^[A-Za-z][A-Za-z0-9_]{0,63}$'
                       THEN 'action must match [A-Za-z][A-Za-z0-9_]{0,63}'
                     WHEN count(*) OVER (PARTITION BY r.value ->> 'action') > 1
                       THEN format('duplicate action %s', r.value ->> 'action')
                     WHEN upper(r.value ->> 'action') IN ('REVERSAL', 'RULES_ADJUSTMENT')
                       THEN format('action %s is reserved for pyxp''s own rows', r.value ->> 'action')
                     WHEN jsonb_typeof(r.value -> 'event') NOT IN ('null', 'string')
                       OR jsonb_typeof(r.value -> 'condition') NOT IN ('null', 'string')
                       OR jsonb_typeof(r.value -> 'formula') NOT IN ('null', 'string')
                       THEN 'event, condition and formula must be texts or null'
                     WHEN coalesce(r.value ->> 'constant', '') !~ '^-?[0-9]{1,16}(\.[0-9]{1,20})?$'
                       THEN 'constant must be a decimal number'
                     WHEN jsonb_typeof(r.value -> 'coefficients') IS DISTINCT FROM 'object'
                       OR EXISTS (SELECT FROM jsonb_each_text(r.value -> 'coefficients') c
                                   WHERE c.key !~ '^[A-Z_][A-Z0-9_]{0,63}$'
                                      OR c.value !~ '^-?[0-9]{1,16}(\.[0-9]{1,20})?$')
                       THEN 'coefficients must map INPUT names to decimal numbers'
                     WHEN jsonb_typeof(r.value -> 'campaign_types') NOT IN ('null', 'array')
                       OR EXISTS (SELECT FROM jsonb_array_elements_text(
                                      CASE WHEN jsonb_typeof(r.value -> 'campaign_types') = 'array'
                                           THEN r.value -> 'campaign_types' ELSE '[]' END) t
                                   WHERE t NOT IN ('B2C', 'AGENCY_B2C', 'INDIVIDUAL'))
                       THEN 'campaign_types must be null or a list of B2C, AGENCY_B2C, INDIVIDUAL'
                     WHEN r.value ? 'cap' AND (
                            jsonb_typeof(r.value -> 'cap') IS DISTINCT FROM 'object'
                            OR (SELECT count(*) FROM jsonb_object_keys(r.value -> 'cap')) <> 2
                            OR jsonb_typeof(r.value -> 'cap' -> 'max_xp') IS DISTINCT FROM 'number'
                            OR coalesce(r.value -> 'cap' ->> 'max_xp', '') !~ '^[0-9]{1,16}$'
                            OR NOT (r.value -> 'cap' ->> 'max_xp')::numeric BETWEEN 1 AND 1e15
                            OR coalesce(r.value -> 'cap' ->> 'per', '') NOT IN ('day', 'week', 'month', 'year'))
                       THEN 'cap must be {"max_xp": 1..10^15, "per": "day", "week", "month" or "year"}'
                     WHEN r.value ? 'group' AND (jsonb_typeof(r.value -> 'group') IS DISTINCT FROM 'string'
                                                 OR (r.value ->> 'group') !~ '^[a-z][a-z0-9_-]{0,62}$')
                       THEN 'group must match [a-z][a-z0-9_-]{0,62}'
                     WHEN r.value ? 'group' AND NOT r.value ? 'cap'
                       THEN format('group %s needs a cap: every rule of a group carries the same cap',
                                   r.value ->> 'group')
                     WHEN r.value ? 'group'
                          AND min((r.value -> 'cap')::text) OVER (PARTITION BY r.value ->> 'group')
                              <> max((r.value -> 'cap')::text) OVER (PARTITION BY r.value ->> 'group')
                       THEN format('the rules of group %s carry different caps', r.value ->> 'group')
                   END AS problem
            FROM jsonb_array_elements(p_definition -> 'rules') WITH ORDINALITY r(value, ord)
        ) p WHERE problem IS NOT NULL ORDER BY ord LIMIT 1;
    END IF;
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION 'invalid ruleset definition %: %', coalesce(quote_literal(p_definition ->> 'name'), 'NULL'), v_problem
            USING ERRCODE = 'PX024', HINT = 'compile rulesets from a TOML config seed: pyxp rules apply FILE';
    END IF;
END
$$;

-- Makes ruleset version p_ruleset_id the active one; returns the balances
-- whose level changed. The caller holds SHARE ROW EXCLUSIVE on xp_balances
-- (the lock protocol above). Periods are counted in the active ruleset's
-- zone: another zone moves their bounds, so the balances' period columns are
-- re-derived (one pass over the ledger). Activating the active version
-- changes nothing.
CREATE FUNCTION pyxp.activate_ruleset(p_ruleset_id bigint)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    v_zone text := (SELECT r.timezone FROM pyxp.rulesets r WHERE r.ruleset_id = p_ruleset_id);
BEGIN
    IF (SELECT r.is_active FROM pyxp.rulesets r WHERE r.ruleset_id = p_ruleset_id) THEN
        RETURN 0;
    END IF;
    IF (SELECT r.timezone FROM pyxp.rulesets r WHERE r.is_active) IS DISTINCT FROM v_zone THEN
        PERFORM pyxp.rebuild_period_columns(v_zone);
    END IF;
    -- Two statements: the partial unique index allows one active row at a time.
    UPDATE pyxp.rulesets r SET is_active = false WHERE r.is_active;
    UPDATE pyxp.rulesets r SET is_active = true, activated_at = now() WHERE r.ruleset_id = p_ruleset_id;
    RETURN pyxp.recalculate_levels();
END
$$;

-- Installs a compiled ruleset (from pyxp.ruleset_config) and, unless
-- activate is false, makes it active. Same content as the active version:
-- nothing changes. Same content as an older version of that name: that
-- version is (re-)activated. Otherwise a new version (max + 1) is created.
-- Activation re-derives every balance's level. Old versions stay: ledger
-- rows keep their rule ids. activate => false installs a version to
-- simulate (pyxp.simulate_rules) or to apply later.
CREATE FUNCTION pyxp.install_ruleset(definition jsonb, source text, activate boolean DEFAULT true)
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
               install_ruleset.definition ->> 'description',
               (install_ruleset.definition ->> 'balance_floor')::bigint,
               coalesce(install_ruleset.definition ->> 'timezone', 'UTC'),
               EXISTS (SELECT FROM jsonb_array_elements(install_ruleset.definition -> 'rules') r WHERE r ? 'cap')
        RETURNING rulesets.ruleset_id INTO v_id;

        INSERT INTO pyxp.level_thresholds (ruleset_id, level, threshold, increment, is_last)
        SELECT v_id, (l ->> 'level')::bigint, (l ->> 'threshold')::bigint,
               (l ->> 'increment')::bigint, (l ->> 'is_last')::boolean
        FROM jsonb_array_elements(install_ruleset.definition -> 'levels') l;

        INSERT INTO pyxp.rules (ruleset_id, position, action, event, campaign_types, condition,
                                formula, xp_constant, xp_coefficients, description, cap_max_xp, cap_per, cap_group)
        SELECT v_id, r.ord, r.value ->> 'action', r.value ->> 'event',
               CASE WHEN jsonb_typeof(r.value -> 'campaign_types') = 'array'
                    THEN ARRAY(SELECT jsonb_array_elements_text(r.value -> 'campaign_types')) END,
               r.value ->> 'condition', coalesce(r.value ->> 'formula', r.value ->> 'constant'),
               (r.value ->> 'constant')::numeric, r.value -> 'coefficients', r.value ->> 'description',
               (r.value -> 'cap' ->> 'max_xp')::bigint, r.value -> 'cap' ->> 'per', r.value ->> 'group'
        FROM jsonb_array_elements(install_ruleset.definition -> 'rules') WITH ORDINALITY r(value, ord);
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

-- A balance's XP in its latest period of a kind (xp_balances.<kind>_xp,
-- sql/07_periods.sql) after new rows of p_gained XP in period p_new (NULL:
-- no new row): counted anew when p_new is a later period, added when it is
-- the same, left alone when it is earlier (those rows are the ledger's).
-- SQL, inlined into the writer's UPDATE.
CREATE FUNCTION pyxp.kept_period_xp(p_kept_start timestamptz, p_kept_xp bigint, p_new timestamptz,
                                    p_gained bigint)
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN p_new IS NULL THEN p_kept_xp
                WHEN p_kept_start IS NULL OR p_new > p_kept_start THEN p_gained
                WHEN p_new = p_kept_start THEN p_kept_xp + p_gained
                ELSE p_kept_xp END
$$;

-- The ruleset a ledger row was written under (its levels in replays and the
-- change feed): its rule's; a reversal's is its request's (xp_requests); a
-- RULES_ADJUSTMENT's is the one its key names (rules.adjustment:<id>:<wallet>,
-- pyxp.apply_rules_retroactively).
-- PL/pgSQL: a SQL function with a sub-select is not inlined, and would be
-- planned anew at every call.
CREATE OR REPLACE FUNCTION pyxp.row_ruleset(p_rule_id bigint, p_key text)
RETURNS bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
DECLARE
    v_id bigint;
BEGIN
    SELECT ru.ruleset_id INTO v_id FROM pyxp.rules ru WHERE ru.rule_id = p_rule_id;
    IF v_id IS NULL AND p_key LIKE 'rules.adjustment:%' THEN
        v_id := split_part(p_key, ':', 2)::bigint;
    ELSIF v_id IS NULL THEN
        SELECT q.ruleset_id INTO v_id FROM pyxp.xp_requests q WHERE q.idempotency_key = p_key;
    END IF;
    RETURN v_id;
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
-- balances; insert; update each balance once; return. Per-row results
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
    v_after numeric[];       -- per row: the wallet's balance after it (range-checked before any cast)
    v_feed xid8[];           -- per row: its feed group
    v_ids bigint[];          -- per row: the id it got (NULL: replayed, or no row)
    v_conflict_ord integer;  -- the first row whose key a call with other inputs claimed
    v_range_ord integer;     -- a row whose balance would leave [-2^62, 2^62]
    v_expected integer;      -- rows to insert
    v_inserted integer;
    v_applied numeric[];     -- per row: what applies of it (a capped gain: what is left of its allowance)
    v_allowance text[];      -- per row: the allowance a capped gain uses (pyxp.cap_allowance), else NULL
    v_period timestamptz[];  -- and the start of its period
    v_floored boolean := false;
    v_at timestamptz;        -- the new rows' effective time (periods)
    v_day timestamptz;
    v_week timestamptz;
    v_month timestamptz;
    v_year timestamptz;
    v_problem record;
BEGIN
    IF coalesce(cardinality(v_rows), 0) = 0 THEN
        RETURN;
    END IF;
    -- 1. The wallets' row locks. One wallet: FOR UPDATE (a new wallet's row
    --    is inserted first; a concurrent insert of the same wallet makes ON
    --    CONFLICT wait, then we lock its row). A batch: each row created if
    --    missing or locked if present, one statement, strictly in wallet
    --    order (creating the missing rows first and locking the others after
    --    let a batch hold a new wallet's row while waiting for an older one
    --    that a caller awarding in wallet order held: a deadlock, 40P01); its
    --    no-op update changes no indexed column (HOT).
    IF NOT p_batch THEN
        PERFORM FROM pyxp.xp_balances b WHERE b.user_wallet = v_wallet FOR UPDATE;
        IF NOT FOUND THEN
            INSERT INTO pyxp.xp_balances (user_wallet, total_xp, current_level, xp_to_next_level)
            SELECT v_wallet, 0, c.level, c.next_level_xp::bigint FROM pyxp.curve_position(p_ruleset, 0) c
            ON CONFLICT (user_wallet) DO NOTHING;
            PERFORM FROM pyxp.xp_balances b WHERE b.user_wallet = v_wallet FOR UPDATE;
        END IF;
    ELSE
        INSERT INTO pyxp.xp_balances AS x (user_wallet, total_xp, current_level, xp_to_next_level)
        SELECT w.user_wallet, 0, c.level, c.next_level_xp::bigint
          FROM (SELECT DISTINCT r.user_wallet FROM unnest(v_rows) r) w
         CROSS JOIN pyxp.curve_position(p_ruleset, 0) c
         ORDER BY w.user_wallet
        ON CONFLICT (user_wallet) DO UPDATE SET updated_at = x.updated_at;
    END IF;
    <<planning>>
    LOOP
    -- 2. Under the locks (a new statement: READ COMMITTED sees what the
    --    previous holder committed): each generic award's claim made before
    --    (a replay, or PX010 for other inputs); caps (SPEC 12; only when the
    --    ruleset has a capped rule): each new capped gain is cut to what is
    --    left of its allowance in the current period (xp_cap_usage), in row
    --    order: within one call an allowance's gains only add up, so the
    --    k-th applies least(C_k, L) - least(C_k-1, L), C the running sum of
    --    the gains asked, L what was left. Then the running
    --    balances, per wallet in row order, and the feed group
    --    (sql/11_changes.sql: this transaction's id, or the wallet's last
    --    group if higher).
    -- Without caps the same statement without the caps' lookups and window
    -- (every plan node costs its start-up on every award).
    IF NOT p_caps THEN
        SELECT array_agg(x.claim_id ORDER BY x.ord), array_agg(x.after ORDER BY x.ord),
               array_agg(x.feed ORDER BY x.ord),
               (array_agg(x.ord ORDER BY x.ord) FILTER (WHERE x.conflict))[1],
               (array_agg(x.ord ORDER BY x.ord) FILTER (WHERE abs(x.after) > pyxp.balance_limit()))[1],
               count(*) FILTER (WHERE x.claim_id IS NULL AND x.transaction_type IS NOT NULL)
          INTO v_claims, v_after, v_feed, v_conflict_ord, v_range_ord, v_expected
          FROM (SELECT r.ord, r.transaction_type, k.id AS claim_id,
                       k.id IS NOT NULL AND (k.request_digest <> pyxp.inputs_digest(r.inputs)
                                             OR k.idempotency_key <> r.idempotency_key) AS conflict,
                       b.total_xp + sum(r.xp_amount) FILTER (WHERE k.id IS NULL)
                                        OVER (PARTITION BY r.user_wallet ORDER BY r.ord) AS after,
                       greatest(pg_current_xact_id(), b.last_feed_xid) AS feed
                  FROM unnest(v_rows) WITH ORDINALITY r(call_index, user_wallet, idempotency_key, inputs,
                                                        transaction_type, xp_amount, xp_requested, apply_floor,
                                                        rule_id, campaign_id, subject, metadata, reverses,
                                                        moderations, ord)
                 CROSS JOIN LATERAL (SELECT b.total_xp, b.last_feed_xid FROM pyxp.xp_balances b
                                      WHERE b.user_wallet = r.user_wallet LIMIT 1) b
                  LEFT JOIN LATERAL (SELECT k.id, k.request_digest, k.idempotency_key FROM pyxp.xp_transactions k
                                      WHERE r.inputs IS NOT NULL AND k.request_digest IS NOT NULL
                                        AND pyxp.key_hash(k.idempotency_key) = pyxp.key_hash(r.idempotency_key)
                                      LIMIT 1) k ON true) x;
    ELSE
        SELECT array_agg(x.claim_id ORDER BY x.ord), array_agg(x.after ORDER BY x.ord),
               array_agg(x.feed ORDER BY x.ord),
               (array_agg(x.ord ORDER BY x.ord) FILTER (WHERE x.conflict))[1],
               (array_agg(x.ord ORDER BY x.ord) FILTER (WHERE abs(x.after) > pyxp.balance_limit()))[1],
               count(*) FILTER (WHERE x.claim_id IS NULL AND x.transaction_type IS NOT NULL),
               array_agg(x.applied ORDER BY x.ord), array_agg(x.allowance ORDER BY x.ord),
               array_agg(x.period_start ORDER BY x.ord)
          INTO v_claims, v_after, v_feed, v_conflict_ord, v_range_ord, v_expected, v_applied, v_allowance, v_period
          FROM (SELECT y.*, y.total_xp + sum(y.applied) FILTER (WHERE y.claim_id IS NULL)
                                             OVER (PARTITION BY y.user_wallet ORDER BY y.ord) AS after
                  FROM (SELECT z.*, CASE WHEN z.allowance IS NULL THEN z.xp_amount
                                         ELSE least(z.asked, z.left_) - least(z.asked - z.xp_amount, z.left_) END AS applied
                          FROM (SELECT r.ord, r.user_wallet, r.transaction_type, r.xp_amount, k.id AS claim_id,
                                       k.id IS NOT NULL AND (k.request_digest <> pyxp.inputs_digest(r.inputs)
                                                             OR k.idempotency_key <> r.idempotency_key) AS conflict,
                                       b.total_xp, greatest(pg_current_xact_id(), b.last_feed_xid) AS feed,
                                       a.allowance, a.period_start,
                                       sum(r.xp_amount) OVER (PARTITION BY r.user_wallet, a.allowance, a.period_start
                                                              ORDER BY r.ord) AS asked,
                                       greatest(a.cap_max_xp - coalesce(a.used_xp, 0), 0) AS left_
                                  FROM unnest(v_rows) WITH ORDINALITY r(call_index, user_wallet, idempotency_key, inputs,
                                                                        transaction_type, xp_amount, xp_requested,
                                                                        apply_floor, rule_id, campaign_id, subject,
                                                                        metadata, reverses, moderations, ord)
                                 CROSS JOIN LATERAL (SELECT b.total_xp, b.last_feed_xid FROM pyxp.xp_balances b
                                                      WHERE b.user_wallet = r.user_wallet LIMIT 1) b
                                  LEFT JOIN LATERAL (SELECT k.id, k.request_digest, k.idempotency_key
                                                       FROM pyxp.xp_transactions k
                                                      WHERE r.inputs IS NOT NULL AND k.request_digest IS NOT NULL
                                                        AND pyxp.key_hash(k.idempotency_key) = pyxp.key_hash(r.idempotency_key)
                                                      LIMIT 1) k ON true
                                  LEFT JOIN LATERAL (SELECT c.allowance, c.period_start, c.cap_max_xp,
                                                            (SELECT u.used_xp FROM pyxp.xp_cap_usage u
                                                              WHERE u.user_wallet = r.user_wallet
                                                                AND u.allowance = c.allowance
                                                                AND u.period_start = c.period_start LIMIT 1) AS used_xp
                                                       FROM (SELECT pyxp.cap_allowance(ru.cap_group, ru.action) AS allowance,
                                                                    date_trunc(ru.cap_per, now(), p_timezone) AS period_start,
                                                                    ru.cap_max_xp
                                                               FROM pyxp.rules ru
                                                              WHERE p_caps AND ru.rule_id = r.rule_id
                                                                AND ru.cap_max_xp IS NOT NULL AND r.xp_amount > 0
                                                                AND r.reverses IS NULL AND k.id IS NULL
                                                              LIMIT 1) c) a ON true) z) y) x;
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

    -- 3. The new rows, in row order (ids follow each wallet's chain). A
    --    generic award's row claims its key; it is skipped if a call that
    --    committed while this one waited for the lock holds the key (below).
    WITH inserted AS (
        INSERT INTO pyxp.xp_transactions (user_wallet, transaction_type, xp_amount, xp_requested,
                                          balance_after, rule_id, campaign_id, subject, idempotency_key,
                                          metadata, reverses, feed_xid, request_digest)
        SELECT r.user_wallet, r.transaction_type, r.xp_amount::bigint, r.xp_requested::bigint, r.after::bigint,
               r.rule_id, r.campaign_id, r.subject, r.idempotency_key, coalesce(r.metadata, '{}'), r.reverses,
               r.feed, pyxp.inputs_digest(r.inputs)
          FROM ROWS FROM (unnest(v_rows), unnest(v_claims), unnest(v_after), unnest(v_feed)) WITH ORDINALITY
               r(call_index, user_wallet, idempotency_key, inputs, transaction_type, xp_amount, xp_requested,
                 apply_floor, rule_id, campaign_id, subject, metadata, reverses, moderations, claim, after,
                 feed, ord)
         WHERE r.claim IS NULL AND r.transaction_type IS NOT NULL
         ORDER BY r.ord
        ON CONFLICT (pyxp.key_hash(idempotency_key)) WHERE request_digest IS NOT NULL DO NOTHING
        RETURNING id
    )
    SELECT array_agg(i.id ORDER BY i.id) INTO v_ids FROM inserted i;
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
         CROSS JOIN LATERAL (SELECT k.* FROM pyxp.xp_transactions k
                              WHERE r.inputs IS NOT NULL AND k.request_digest IS NOT NULL
                                AND pyxp.key_hash(k.idempotency_key) = pyxp.key_hash(r.idempotency_key)
                              LIMIT 1) k
         WHERE v_claims[r.ordinality] IS NULL              -- not a replay: a row this call meant to write
           AND NOT (k.id = ANY (coalesce(v_ids, '{}')))
         ORDER BY k.request_digest = pyxp.inputs_digest(r.inputs) AND k.idempotency_key = r.idempotency_key,
                  r.ordinality                              -- a conflict first
         LIMIT 1;
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

    -- 4. Each balance once: its last new row's balance, its level on the
    --    active curve, the votes it counts, and its latest periods
    --    (xp_balances.<kind>_start/_xp, sql/07_periods.sql): the new rows'
    --    period of each kind is the wallet's latest (reset), the same
    --    (added) or an earlier one (a transaction that began before the
    --    period turned: left to the ledger). A call's new rows of one wallet
    --    share one effective time: now(), or for a reversal (always alone in
    --    its call) the created_at of the row it reverses: the periods are
    --    computed once (p_timezone), not per row.
    v_at := now();
    IF v_rows[1].reverses IS NOT NULL THEN
        SELECT o.created_at INTO v_at FROM pyxp.xp_transactions o WHERE o.id = v_rows[1].reverses;
    END IF;
    v_day := date_trunc('day', v_at, p_timezone);
    v_week := date_trunc('week', v_at, p_timezone);
    v_month := date_trunc('month', v_at, p_timezone);
    v_year := date_trunc('year', v_at, p_timezone);
    UPDATE pyxp.xp_balances x
       SET total_xp = coalesce(f.after::bigint, x.total_xp), current_level = c.level,
           xp_to_next_level = (c.next_level_xp - coalesce(f.after::bigint, x.total_xp))::bigint,
           total_moderations = x.total_moderations + f.moderations, updated_at = now(),
           last_feed_xid = coalesce(f.feed, x.last_feed_xid),
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
                   sum(r.moderations) FILTER (WHERE r.claim IS NULL)::bigint AS moderations,
                   sum(r.xp_amount) FILTER (WHERE r.id IS NOT NULL)::bigint AS gained,
                   (array_agg(b.total_xp))[1] AS total_xp
              FROM ROWS FROM (unnest(v_rows), unnest(v_claims), unnest(v_after), unnest(v_feed), unnest(v_ids))
                   WITH ORDINALITY r(call_index, user_wallet, idempotency_key, inputs, transaction_type, xp_amount,
                                     xp_requested, apply_floor, rule_id, campaign_id, subject, metadata, reverses,
                                     moderations, claim, after, feed, id, ord)
             CROSS JOIN LATERAL (SELECT b.total_xp FROM pyxp.xp_balances b WHERE b.user_wallet = r.user_wallet LIMIT 1) b
             GROUP BY r.user_wallet) f
     CROSS JOIN LATERAL pyxp.curve_position(p_ruleset, coalesce(f.after::bigint, f.total_xp)) c
     WHERE x.user_wallet = f.user_wallet AND (f.after IS NOT NULL OR f.moderations <> 0);

    -- 4b. What the new capped gains used of their allowances (xp_cap_usage),
    --     and what a reversal of a capped gain frees (pyxp.freed_allowance),
    --     under the same locks.
    IF p_caps THEN
        INSERT INTO pyxp.xp_cap_usage AS u (user_wallet, allowance, period_start, used_xp)
        SELECT r.user_wallet, r.allowance, r.period_start, sum(r.xp_amount)::bigint
          FROM ROWS FROM (unnest(v_rows), unnest(v_ids), unnest(v_allowance), unnest(v_period))
               r(call_index, user_wallet, idempotency_key, inputs, transaction_type, xp_amount, xp_requested,
                 apply_floor, rule_id, campaign_id, subject, metadata, reverses, moderations, id, allowance,
                 period_start)
         WHERE r.allowance IS NOT NULL AND r.id IS NOT NULL AND r.xp_amount > 0
         GROUP BY r.user_wallet, r.allowance, r.period_start
        ON CONFLICT (user_wallet, allowance, period_start) DO UPDATE SET used_xp = u.used_xp + excluded.used_xp;
    END IF;
    IF v_rows[1].reverses IS NOT NULL THEN  -- a reversal: alone in its call
        UPDATE pyxp.xp_cap_usage u SET used_xp = u.used_xp - f.freed_xp
          FROM pyxp.freed_allowance(v_rows[1].reverses) f
         WHERE u.user_wallet = v_rows[1].user_wallet AND u.allowance = f.allowance
           AND u.period_start = f.period_start AND v_ids[1] IS NOT NULL;
    END IF;

    -- 5. One row per row with a transaction_type: new ones with their levels
    --    on the active curve, replayed ones as they were written.
    RETURN QUERY
        SELECT r.call_index, coalesce(r.id, t.id), r.user_wallet, r.transaction_type,
               coalesce(t.xp_amount, r.xp_amount::bigint), CASE WHEN t.id IS NULL THEN r.xp_requested::bigint ELSE t.xp_requested END,
               coalesce(t.balance_after, r.after::bigint), now_.level,
               (now_.next_level_xp - coalesce(t.balance_after, r.after))::bigint, before_.level, t.id IS NOT NULL
          FROM ROWS FROM (unnest(v_rows), unnest(v_claims), unnest(v_after), unnest(v_ids)) WITH ORDINALITY
               r(call_index, user_wallet, idempotency_key, inputs, transaction_type, xp_amount, xp_requested,
                 apply_floor, rule_id, campaign_id, subject, metadata, reverses, moderations, claim, after, id, ord)
          LEFT JOIN LATERAL (SELECT t.* FROM pyxp.xp_transactions t WHERE t.id = r.claim LIMIT 1) t ON true
         CROSS JOIN LATERAL (SELECT CASE WHEN t.id IS NULL THEN p_ruleset
                                         ELSE pyxp.row_ruleset(t.rule_id, t.idempotency_key) END AS ruleset_id) s
         CROSS JOIN LATERAL pyxp.curve_position(s.ruleset_id, coalesce(t.balance_after, r.after::bigint)) now_
         CROSS JOIN LATERAL pyxp.curve_position(s.ruleset_id, coalesce(t.balance_after - t.xp_amount,
                                                                      (r.after - r.xp_amount)::bigint)) before_
         WHERE r.transaction_type IS NOT NULL
         ORDER BY r.ord;
END
$$;

-- Public: appends a compensating row (transaction_type REVERSAL, the opposite
-- of the applied amount, reverses = transaction_id) to the same wallet.
-- A row is reversed once: repeating the call with the same reason replays,
-- another reason is refused (PX014), as is reversing a reversal. The balance
-- floor does not apply: a reversal compensates exactly.
CREATE OR REPLACE FUNCTION pyxp.reverse_transaction(transaction_id bigint, reason text)
RETURNS SETOF pyxp.award_result
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_reason text := pyxp.checked_identifier('reason', reverse_transaction.reason, 500);
    v_original pyxp.xp_transactions;
    v_key text;
    v_inputs jsonb;
    v_ruleset record;
BEGIN
    SELECT * INTO v_ruleset FROM pyxp.writing_ruleset();
    SELECT * INTO v_original FROM pyxp.xp_transactions t WHERE t.id = reverse_transaction.transaction_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown transaction %', coalesce(reverse_transaction.transaction_id::text, 'NULL')
            USING ERRCODE = 'PX015', HINT = 'pass the id of an xp_transactions row';
    ELSIF v_original.reverses IS NOT NULL THEN
        RAISE EXCEPTION 'transaction % reverses transaction % and cannot itself be reversed',
                        v_original.id, v_original.reverses
            USING ERRCODE = 'PX014', HINT = 'award the amount again instead';
    ELSIF v_original.transaction_type = 'RULES_ADJUSTMENT' AND v_original.rule_id IS NULL THEN
        RAISE EXCEPTION 'transaction % is a retroactive rules adjustment and cannot be reversed', v_original.id
            USING ERRCODE = 'PX014', HINT = 'apply another ruleset version retroactively instead (pyxp rules apply --retroactive)';
    END IF;
    v_key := 'reverse:' || v_original.id;
    v_inputs := jsonb_build_object('transaction_id', v_original.id, 'reason', v_reason);
    IF NOT pyxp.claim_request(v_key, v_inputs, v_ruleset.ruleset_id) THEN
        RETURN QUERY SELECT * FROM pyxp.replayed_award(
            v_key, v_inputs, format('transaction %s was already reversed', v_original.id), 'PX014');
        RETURN;
    END IF;
    RETURN QUERY
        SELECT w.transaction_id, w.user_wallet, w.transaction_type, w.xp_amount, w.xp_requested, w.total_xp,
               w.current_level, w.xp_to_next_level, w.previous_level, w.replayed
          FROM pyxp.append_rows(v_ruleset.ruleset_id, v_ruleset.balance_floor, v_ruleset.timezone,
                                v_ruleset.has_caps,
                                ARRAY[ROW(0, v_original.user_wallet, v_key, NULL, 'REVERSAL', -v_original.xp_amount,
                                          NULL, false, NULL, v_original.campaign_id, v_original.subject,
                                          jsonb_build_object('reason', v_reason,
                                                             'reversed_type', v_original.transaction_type),
                                          v_original.id, 0)::pyxp.pending_row], false) w;
END
$$;

-- Periods and caps (SPEC 12).
--
-- A period is a calendar period in the active ruleset's timezone
-- (rulesets.timezone, IANA): day, ISO week (from Monday), month, year; 'all'
-- is the whole history. date_trunc(unit, at, zone) gives a period's start as
-- an instant, so a day across a DST change lasts 23 or 25 hours.
-- A ledger row counts in the period of its created_at; a reversal in the
-- period of the row it reverses ("effective time"), so a reversed award
-- disappears from the board it was earned on.
--
-- How the period totals are kept: each balance holds its latest period of
-- each kind and its XP there (xp_balances.<kind>_start, <kind>_xp, kept by
-- the writer in the UPDATE it makes anyway, so no extra statement or row per
-- award), indexed in board order. That answers the boards of the current
-- periods from an index (top 100 = 100 index entries). A board of a past
-- period, or of a period just ended while some wallet already moved past it,
-- is computed from the ledger (BRIN on created_at, plus the reversals).
--
-- Caps: a capped gain is cut to what is left of the wallet's allowance in
-- the period containing the award (pyxp.append_rows, step 2, under the
-- wallet's balance row lock); xp_cap_usage keeps what each allowance used
-- (pyxp.append_rows, step 4; a reversal frees: pyxp.freed_allowance).
-- A period name in any case, normalised, or PX026. Its size is checked
-- before lower() copies it.
CREATE OR REPLACE FUNCTION pyxp.checked_period(p_period text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    IF p_period IS NOT NULL AND octet_length(p_period) <= 16
       AND lower(p_period) IN ('all', 'day', 'week', 'month', 'year') THEN
        RETURN lower(p_period);
    END IF;
    RAISE EXCEPTION 'invalid period %', coalesce(quote_literal(left(p_period, 32)), 'NULL')
        USING ERRCODE = 'PX026', HINT = 'period is all, day, week, month or year (any case)';
END
$$;

-- The period of kind p_kind (day, week, month, year) containing p_at in
-- zone p_timezone: [period_start, period_end). PX026 for a NULL or
-- infinite p_at.
CREATE OR REPLACE FUNCTION pyxp.period_bounds(p_kind text, p_at timestamptz, p_timezone text,
                                   OUT period_start timestamptz, OUT period_end timestamptz)
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
BEGIN
    IF p_at IS NULL OR NOT isfinite(p_at) THEN
        RAISE EXCEPTION 'invalid at: %', coalesce(p_at::text, 'NULL')
            USING ERRCODE = 'PX026', HINT = 'at is a finite timestamp with time zone (default now())';
    END IF;
    period_start := date_trunc(p_kind, p_at, p_timezone);
    -- The next period starts one calendar unit later in local time (23 or
    -- 25 hours for a day across DST); date_trunc again lands on the start of
    -- that period even where a local midnight does not exist.
    period_end := date_trunc(p_kind, (period_start AT TIME ZONE p_timezone + ('1 ' || p_kind)::interval)
                                     AT TIME ZONE p_timezone, p_timezone);
EXCEPTION WHEN datetime_field_overflow THEN  -- a period reaching past PostgreSQL's last timestamp
    RAISE EXCEPTION 'invalid at: %: its % ends beyond the last timestamp', p_at, p_kind
        USING ERRCODE = 'PX026', HINT = 'at is a timestamp before the year 294276';
END
$$;

-- One ledger row under the candidate, as the writer would apply it: a
-- reversal takes back what its original applied (and frees its allowance);
-- a capped gain is cut to what is left; a penalty under a floor is cut to
-- what keeps the balance at the floor (a balance already below loses
-- nothing more). p_asked: the candidate's amount for the row (reversals:
-- ignored).
CREATE FUNCTION pyxp.simulation_step(p_state pyxp.simulation_state, p_id bigint, p_action text, p_asked numeric,
                                     p_reverses bigint, p_reversed boolean, p_floor bigint, p_allowance text,
                                     p_cap bigint)
RETURNS pyxp.simulation_state
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v_state pyxp.simulation_state := p_state;
    v_amount numeric := p_asked;
    v_original jsonb;
    v_used numeric;
BEGIN
    IF p_reverses IS NOT NULL THEN
        v_original := v_state.applied -> p_reverses::text;
        v_amount := -(v_original ->> 'a')::numeric;
        IF v_original ->> 'k' IS NOT NULL THEN
            v_state.used := jsonb_set(v_state.used, ARRAY[v_original ->> 'k'],
                                      to_jsonb((v_state.used ->> (v_original ->> 'k'))::numeric
                                               - (v_original ->> 'a')::numeric));
        END IF;
    ELSIF p_allowance IS NOT NULL AND v_amount > 0 THEN
        v_used := coalesce((v_state.used ->> p_allowance)::numeric, 0);
        v_amount := least(v_amount, greatest(p_cap - v_used, 0));
        v_state.used := jsonb_set(v_state.used, ARRAY[p_allowance], to_jsonb(v_used + v_amount));
    ELSIF p_floor IS NOT NULL AND v_amount < 0 THEN
        v_amount := pyxp.floored_amount(v_amount, p_floor, v_state.balance);
    END IF;
    v_state.balance := v_state.balance + v_amount;
    v_state.by_action := jsonb_set(v_state.by_action, ARRAY[p_action],
                                   to_jsonb(coalesce((v_state.by_action ->> p_action)::numeric, 0) + v_amount));
    IF p_reversed THEN
        v_state.applied := jsonb_set(v_state.applied, ARRAY[p_id::text],
                                     jsonb_build_object('a', v_amount,
                                                        'k', CASE WHEN p_allowance IS NOT NULL AND v_amount > 0
                                                                  THEN p_allowance END));
    END IF;
    RETURN v_state;
END
$$;

CREATE AGGREGATE pyxp.simulated_balance(bigint, text, numeric, bigint, boolean, bigint, text, bigint) (
    SFUNC = pyxp.simulation_step,
    STYPE = pyxp.simulation_state,
    INITCOND = '(0,{},{},{})'
);

-- The ruleset version to simulate, or PX027.
CREATE FUNCTION pyxp.checked_ruleset(p_ruleset_id bigint)
RETURNS pyxp.rulesets
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_ruleset pyxp.rulesets;
BEGIN
    SELECT * INTO v_ruleset FROM pyxp.rulesets r WHERE r.ruleset_id = p_ruleset_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown ruleset %', coalesce(p_ruleset_id::text, 'NULL')
            USING ERRCODE = 'PX027', HINT = 'pass a ruleset_id of pyxp.rulesets (pyxp rules list)';
    END IF;
    RETURN v_ruleset;
END
$$;

-- A candidate's formula on a row's stored inputs, or PX018 when the row
-- lacks one (the live award would have been refused: no guess at 0).
CREATE FUNCTION pyxp.simulated_amount(p_id bigint, p_action text, p_constant numeric, p_coefficients jsonb,
                                      p_inputs jsonb)
RETURNS numeric
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_missing text;
BEGIN
    SELECT k INTO v_missing FROM jsonb_object_keys(p_coefficients) k WHERE NOT p_inputs ? k LIMIT 1;
    IF v_missing IS NOT NULL THEN
        RAISE EXCEPTION 'transaction % has no input % for the candidate''s rule %', p_id, v_missing, p_action
            USING ERRCODE = 'PX018', HINT = 'a candidate''s formula may only use the inputs its action''s rows kept';
    END IF;
    RETURN pyxp.rule_amount(p_constant, p_coefficients, p_inputs);
END
$$;

-- Every ledger row but the RULES_ADJUSTMENT ones, with what the candidate
-- asks for it: `asked` (a rule row: the candidate's rule of its action on its
-- stored inputs, 0 without one; a reversal: the opposite of what its
-- original asks) and `applied`, what applies of it when order does not
-- matter: a capped gain cut set-based, the k-th gain of an allowance
-- (wallet, allowance, period) applying least(C_k, cap) - least(C_k-1, cap),
-- C the running sum of its gains asked (exact while no reversal frees that
-- allowance: `frees` marks such reversals, and their wallets are folded in
-- order, pyxp.simulated_totals); a reversal, the opposite of what its
-- original applies. Also: whether a later row reverses it, and its
-- allowance under the candidate ("allowance@period start", capped rules).
CREATE FUNCTION pyxp.simulated_rows(p_ruleset_id bigint)
RETURNS TABLE (id bigint, user_wallet text, action text, now_xp bigint, asked numeric, applied numeric,
               reverses bigint, reversed boolean, frees boolean, allowance text, cap_max_xp bigint)
LANGUAGE sql STABLE
AS $$
    WITH rows_ AS (
        SELECT t.id, t.user_wallet, t.transaction_type AS action, t.xp_amount AS now_xp, t.reverses,
               CASE WHEN t.reverses IS NOT NULL THEN NULL
                    WHEN c.rule_id IS NULL THEN 0
                    WHEN c.xp_coefficients = '{}' THEN round(c.xp_constant)
                    ELSE pyxp.simulated_amount(t.id, c.action, c.xp_constant, c.xp_coefficients, t.metadata)
               END AS asked,
               v.id IS NOT NULL AS reversed,
               CASE WHEN c.cap_max_xp IS NOT NULL
                    THEN pyxp.cap_allowance(c.cap_group, c.action) || '@'
                         || date_trunc(c.cap_per, t.created_at, rs.timezone) END AS allowance,
               c.cap_max_xp
          FROM pyxp.xp_transactions t
          JOIN pyxp.rulesets rs ON rs.ruleset_id = p_ruleset_id
          LEFT JOIN pyxp.rules c ON c.ruleset_id = p_ruleset_id AND c.action = t.transaction_type
                                AND t.reverses IS NULL
          LEFT JOIN (SELECT DISTINCT x.reverses AS id FROM pyxp.xp_transactions x WHERE x.reverses IS NOT NULL) v
                 ON v.id = t.id
         WHERE NOT (t.transaction_type = 'RULES_ADJUSTMENT' AND t.rule_id IS NULL AND t.reverses IS NULL)
    ), capped AS (
        SELECT g.id, least(g.gained, g.cap_max_xp) - least(g.gained - g.asked, g.cap_max_xp) AS applied
          FROM (SELECT r.id, r.asked, r.cap_max_xp,
                       sum(r.asked) OVER (PARTITION BY r.user_wallet, r.allowance ORDER BY r.id) AS gained
                  FROM rows_ r WHERE r.allowance IS NOT NULL AND r.asked > 0) g
    )
    SELECT r.id, r.user_wallet, r.action, r.now_xp, coalesce(r.asked, -o.asked),
           coalesce(c.applied, r.asked, -o.applied), r.reverses, r.reversed,
           coalesce(o.allowance IS NOT NULL AND o.asked > 0, false), r.allowance, r.cap_max_xp
      FROM rows_ r
      LEFT JOIN capped c ON c.id = r.id
      LEFT JOIN (SELECT o.id, o.asked, coalesce(oc.applied, o.asked) AS applied, o.allowance
                   FROM rows_ o LEFT JOIN capped oc ON oc.id = o.id
                  WHERE o.reversed) o ON o.id = r.reverses
$$;

-- Per wallet with a balance: its total now and under the candidate, and
-- (only for wallets folded in order) the candidate's XP per action.
CREATE FUNCTION pyxp.simulated_totals(p_ruleset_id bigint)
RETURNS TABLE (user_wallet text, total_xp_now bigint, total_xp_then numeric, by_action jsonb)
LANGUAGE plpgsql STABLE
SET jit = off
AS $$
DECLARE
    v_ruleset pyxp.rulesets := pyxp.checked_ruleset(p_ruleset_id);
BEGIN
    RETURN QUERY
        WITH r AS MATERIALIZED (SELECT * FROM pyxp.simulated_rows(v_ruleset.ruleset_id)),
        -- Order matters in a wallet with a penalty under the candidate's
        -- floor, or a reversal that frees a capped allowance: folded.
        per_wallet AS (
            SELECT r.user_wallet, sum(r.applied) AS linear,
                   bool_or(r.frees OR v_ruleset.balance_floor IS NOT NULL AND r.asked < 0) AS in_order
              FROM r GROUP BY r.user_wallet
        ),
        folded AS (
            SELECT r.user_wallet,
                   pyxp.simulated_balance(r.id, r.action, r.asked, r.reverses, r.reversed, v_ruleset.balance_floor,
                                          r.allowance, r.cap_max_xp ORDER BY r.id) AS state
              FROM r JOIN per_wallet w ON w.user_wallet = r.user_wallet AND w.in_order
             GROUP BY r.user_wallet
        )
        SELECT b.user_wallet, b.total_xp, coalesce((f.state).balance, w.linear, 0), (f.state).by_action
          FROM pyxp.xp_balances b
          LEFT JOIN per_wallet w ON w.user_wallet = b.user_wallet
          LEFT JOIN folded f ON f.user_wallet = b.user_wallet;
END
$$;

-- Public (SPEC 13): what every wallet's total and level would be had
-- ruleset version ruleset_id (installed, active or not) been active for the
-- whole ledger. Writes nothing. One row per wallet with a balance.
CREATE FUNCTION pyxp.simulate_rules(ruleset_id bigint)
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
END
$$;

-- A simulated total as a balance, or PX019 when it would leave [-2^62, 2^62].
CREATE FUNCTION pyxp.checked_simulated_total(p_wallet text, p_total numeric)
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF abs(p_total) > pyxp.balance_limit() THEN
        RAISE EXCEPTION 'under that ruleset the balance of % would be %, out of range', p_wallet, p_total
            USING ERRCODE = 'PX019', HINT = 'a balance stays between -2^62 and 2^62';
    END IF;
    RETURN p_total::bigint;
END
$$;

-- Public (SPEC 13): the simulation summed up for people and scripts (pyxp
-- rules simulate): per action (rows, XP now, XP then), the top_wallets
-- wallets with the largest changes, and a summary (wallets up, down, level
-- changes, totals). Two passes over the ledger (the wallets' totals, then
-- the actions'). Writes nothing.
CREATE FUNCTION pyxp.simulation_report(ruleset_id bigint, top_wallets integer DEFAULT 10)
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
                 GROUP BY e.key) a
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
                                   ORDER BY abs(t.then_xp - t.now_xp) DESC, t.user_wallet), '[]')
                          FROM (SELECT * FROM leveled l WHERE l.then_xp <> l.now_xp
                                 ORDER BY abs(l.then_xp - l.now_xp) DESC, l.user_wallet LIMIT v_top) t))
      INTO v_report;
    RETURN v_report;
END
$$;

-- Owner (SPEC 13): activates ruleset version ruleset_id and appends, for each
-- wallet whose simulated total differs from its balance, one
-- RULES_ADJUSTMENT row of the difference (metadata names the version), so
-- that every balance equals pyxp.simulate_rules(ruleset_id). One
-- transaction: SHARE ROW EXCLUSIVE on rulesets, then on xp_balances (the
-- ruleset-switch lock of sql/04_rulesets.sql, in install_ruleset's order),
-- so awards in flight finish before the simulation reads the ledger and new
-- ones wait for the commit: none is lost or counted twice. The rows go
-- through the one writer (pyxp.append_rows), each a claim of the key
-- rules.adjustment:<ruleset_id>:<transaction id>:<wallet>.
-- Idempotent by the numbers: applying a version again adds only the
-- differences left (none if nothing changed since; after a reversal, or
-- another version applied meanwhile, what brings every balance back to
-- this version's simulation).
CREATE FUNCTION pyxp.apply_rules_retroactively(ruleset_id bigint)
RETURNS TABLE (ruleset_id_applied bigint, name text, version integer, already_applied boolean,
               wallets_adjusted bigint, xp_adjusted numeric, balances_changed bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET lock_timeout = '10s'  -- see recalculate_levels: never queue every award behind an open transaction
SET jit = off
AS $$
DECLARE
    v_ruleset pyxp.rulesets := pyxp.checked_ruleset(apply_rules_retroactively.ruleset_id);
    v_levels bigint;
    v_chunk pyxp.pending_row[];
    v_wallets bigint := 0;
    v_xp numeric := 0;
BEGIN
    PERFORM pyxp.require_read_committed();
    -- Installers' lock first, then the awards' (the order of install_ruleset).
    LOCK TABLE pyxp.rulesets IN SHARE ROW EXCLUSIVE MODE;
    LOCK TABLE pyxp.xp_balances IN SHARE ROW EXCLUSIVE MODE;
    v_levels := pyxp.activate_ruleset(v_ruleset.ruleset_id);
    -- Wallets in order, 10,000 per call of the writer.
    FOR v_chunk IN
        SELECT array_agg(ROW(0, d.user_wallet, d.key,
                             jsonb_build_object('action', 'RULES_ADJUSTMENT', 'wallet', d.user_wallet,
                                                'ruleset_id', v_ruleset.ruleset_id),
                             'RULES_ADJUSTMENT', d.delta, NULL, false, NULL, NULL, NULL,
                             jsonb_build_object('ruleset_id', v_ruleset.ruleset_id, 'ruleset', v_ruleset.name,
                                                'version', v_ruleset.version, 'total_xp_before', d.now_xp,
                                                'reason', 'retroactive application of the rules'),
                             NULL, 0)::pyxp.pending_row ORDER BY d.user_wallet)
          FROM (SELECT s.user_wallet, s.total_xp_then - s.total_xp_now AS delta, s.total_xp_now AS now_xp,
                       format('rules.adjustment:%s:%s:%s', v_ruleset.ruleset_id, pg_current_xact_id(),
                              s.user_wallet) AS key,
                       (row_number() OVER (ORDER BY s.user_wallet) - 1) / 10000 AS chunk
                  FROM pyxp.simulated_totals(v_ruleset.ruleset_id) s
                 WHERE pyxp.checked_simulated_total(s.user_wallet, s.total_xp_then) <> s.total_xp_now) d
         GROUP BY d.chunk
         ORDER BY d.chunk
    LOOP
        PERFORM FROM pyxp.append_rows(v_ruleset.ruleset_id, v_ruleset.balance_floor, v_ruleset.timezone,
                                      v_ruleset.has_caps, v_chunk, true);
        v_wallets := v_wallets + cardinality(v_chunk);
        v_xp := v_xp + (SELECT sum(c.xp_amount) FROM unnest(v_chunk) c);
    END LOOP;
    IF v_wallets > 0 THEN
        UPDATE pyxp.rulesets r SET applied_retroactively_at = now() WHERE r.ruleset_id = v_ruleset.ruleset_id;
    END IF;
    RETURN QUERY SELECT v_ruleset.ruleset_id, v_ruleset.name, v_ruleset.version, v_wallets = 0, v_wallets, v_xp,
                        v_levels;
END
$$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pyxp FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    pyxp.simulate_rules(bigint),
    pyxp.simulation_report(bigint, integer)
TO pyxp_writer, pyxp_reader;

COMMENT ON FUNCTION pyxp.activate_ruleset(bigint) IS
    'internal: makes a ruleset version the active one; re-derives levels (and period columns for another zone).';
COMMENT ON FUNCTION pyxp.install_ruleset(jsonb, text, boolean) IS
    'internal: installs a compiled ruleset and activates it unless told not to (pyxp rules apply, install). Owner only.';
COMMENT ON FUNCTION pyxp.kept_period_xp(timestamptz, bigint, timestamptz, bigint) IS
    'internal: a balance''s XP in its latest period of a kind after new rows.';
COMMENT ON FUNCTION pyxp.simulation_step(pyxp.simulation_state, bigint, text, numeric, bigint, boolean, bigint, text, bigint) IS
    'internal: one ledger row replayed under a candidate ruleset (floor, caps, reversals), for pyxp.simulated_balance.';
COMMENT ON FUNCTION pyxp.checked_ruleset(bigint) IS 'internal: a ruleset version by id, or PX027.';
COMMENT ON FUNCTION pyxp.simulated_amount(bigint, text, numeric, jsonb, jsonb) IS
    'internal: a candidate''s formula on a ledger row''s stored inputs, or PX018.';
COMMENT ON FUNCTION pyxp.simulated_rows(bigint) IS
    'internal: every ledger row but the adjustments, with what a candidate ruleset asks for it.';
COMMENT ON FUNCTION pyxp.simulated_totals(bigint) IS
    'internal: every wallet''s total now and under a candidate ruleset.';
COMMENT ON FUNCTION pyxp.simulate_rules(bigint) IS
    'API: every wallet''s total and level now and had that ruleset version been active for the whole ledger; writes nothing.';
COMMENT ON FUNCTION pyxp.checked_simulated_total(text, numeric) IS 'internal: a simulated total as a balance, or PX019.';
COMMENT ON FUNCTION pyxp.simulation_report(bigint, integer) IS
    'API: the simulation of a ruleset version summed up: per action, the largest changes, a summary (JSON); writes nothing.';
COMMENT ON FUNCTION pyxp.apply_rules_retroactively(bigint) IS
    'internal: (owner only) activates a ruleset version and appends one RULES_ADJUSTMENT row per wallet whose total differs from its simulation.';
COMMENT ON FUNCTION pyxp.checked_award_key(text) IS 'internal: a caller''s idempotency key outside pyxp''s namespaces, or PX016.';
COMMENT ON FUNCTION pyxp.check_ruleset_definition(jsonb) IS 'internal: PX024 for a malformed compiled ruleset.';
COMMENT ON FUNCTION pyxp.row_ruleset(bigint, text) IS 'internal: the ruleset a ledger row was written under.';
COMMENT ON FUNCTION pyxp.append_rows(bigint, bigint, text, boolean, pyxp.pending_row[], boolean) IS
    'internal: THE writer: locks the wallets, replays claimed generic awards, applies floor and caps, appends every ledger row and updates each balance once.';
COMMENT ON FUNCTION pyxp.reverse_transaction(bigint, text) IS
    'API: appends the compensating row of a ledger row (once; the same reason again replays).';
COMMENT ON FUNCTION pyxp.checked_period(text) IS 'internal: a period name normalised (all, day, week, month, year), or PX026.';
COMMENT ON FUNCTION pyxp.period_bounds(text, timestamptz, text) IS
    'internal: start and end of the calendar period of a kind containing an instant, in a zone.';
COMMENT ON AGGREGATE pyxp.simulated_balance(bigint, text, numeric, bigint, boolean, bigint, text, bigint) IS
    'internal: a wallet''s rows folded in id order under a candidate ruleset.';

RESET ROLE;
