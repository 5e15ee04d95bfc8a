-- 0007 down: back to 0006. The RULES_ADJUSTMENT rows stay in the ledger
-- (append-only); 0006 reads them as rows without a rule.
SET LOCAL ROLE pyxp_owner;

DROP AGGREGATE pyxp.simulated_balance(bigint, text, numeric, bigint, boolean, bigint, text, bigint);
DROP FUNCTION pyxp.activate_ruleset(bigint);
DROP FUNCTION pyxp.install_ruleset(jsonb, text, boolean);
DROP FUNCTION pyxp.simulation_step(pyxp.simulation_state, bigint, text, numeric, bigint, boolean, bigint, text, bigint);
DROP FUNCTION pyxp.checked_ruleset(bigint);
DROP FUNCTION pyxp.simulated_rows(bigint);
DROP FUNCTION pyxp.simulated_totals(bigint);
DROP FUNCTION pyxp.simulate_rules(bigint);
DROP FUNCTION pyxp.checked_simulated_total(text, numeric);
DROP FUNCTION pyxp.simulation_report(bigint, integer);
DROP FUNCTION pyxp.apply_rules_retroactively(bigint);


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
    IF v ~ '^(campaign\.(created|approved|vote)|completion\.(submitted|outcome|vote)|client\.onboarded|reverse)(/[0-9]+)?:' THEN
        RAISE EXCEPTION 'invalid idempotency key %: reserved for pyxp''s own flows', quote_literal(v)
            USING ERRCODE = 'PX016',
                  HINT = 'keys starting with campaign.*:, completion.*:, client.onboarded: or reverse: are pyxp''s';
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

-- Installs a compiled ruleset (from pyxp.ruleset_config) and makes it active.
-- Same content as the active version: nothing changes. Same content as an
-- older version of that name: that version is re-activated. Otherwise a new
-- version (max + 1) is created. Activation re-derives every balance's level.
-- Old versions stay: ledger rows keep their rule ids.
CREATE FUNCTION pyxp.install_ruleset(definition jsonb, source text)
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
    LOCK TABLE pyxp.xp_balances IN SHARE ROW EXCLUSIVE MODE;

    SELECT * INTO v_found FROM pyxp.rulesets r WHERE r.name = v_name AND r.content_hash = v_hash;
    IF v_found.is_active THEN
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

    -- Periods are counted in the active ruleset's zone: another zone moves
    -- their bounds, so the balances' period columns are re-derived (one pass
    -- over the ledger, under the lock above).
    IF (SELECT r.timezone FROM pyxp.rulesets r WHERE r.is_active)
       IS DISTINCT FROM (SELECT r.timezone FROM pyxp.rulesets r WHERE r.ruleset_id = v_id) THEN
        PERFORM pyxp.rebuild_period_columns((SELECT r.timezone FROM pyxp.rulesets r WHERE r.ruleset_id = v_id));
    END IF;
    -- Two statements: the partial unique index allows one active row at a time.
    UPDATE pyxp.rulesets r SET is_active = false WHERE r.is_active;
    UPDATE pyxp.rulesets r SET is_active = true, activated_at = now() WHERE r.ruleset_id = v_id;

    RETURN QUERY
        SELECT r.ruleset_id, r.name, r.version, v_created, true, pyxp.recalculate_levels()
        FROM pyxp.rulesets r WHERE r.ruleset_id = v_id;
END
$$;

-- The ruleset a ledger row was written under (its levels in replays and the
-- change feed): its rule's; a reversal's is its request's (xp_requests).
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
    IF v_id IS NULL THEN
        SELECT q.ruleset_id INTO v_id FROM pyxp.xp_requests q WHERE q.idempotency_key = p_key;
    END IF;
    RETURN v_id;
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

DROP TYPE pyxp.simulation_state;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pyxp FROM PUBLIC;

COMMENT ON FUNCTION pyxp.install_ruleset(jsonb, text) IS
    'internal: installs and activates a compiled ruleset (pyxp rules apply). Owner only.';
COMMENT ON FUNCTION pyxp.checked_award_key(text) IS 'internal: a caller''s idempotency key outside pyxp''s namespaces, or PX016.';
COMMENT ON FUNCTION pyxp.check_ruleset_definition(jsonb) IS 'internal: PX024 for a malformed compiled ruleset.';
COMMENT ON FUNCTION pyxp.row_ruleset(bigint, text) IS 'internal: the ruleset a ledger row was written under.';
COMMENT ON FUNCTION pyxp.reverse_transaction(bigint, text) IS
    'API: appends the compensating row of a ledger row (once; the same reason again replays).';

RESET ROLE;
