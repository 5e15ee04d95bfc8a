-- Downgrade of 0002: the functions of 0001 again, without descriptions.
-- Refused when 0001 would misread what 0002 stored: its vote keys would not
-- find the escaped or /2 keys (a retry would award twice), and it has no place
-- for a campaign known by its type only.
DO $guard$
BEGIN
    IF EXISTS (SELECT FROM pyxp.xp_requests q
                WHERE q.idempotency_key ~ '^(campaign|completion)[.]vote/[0-9]+:'
                   OR (q.idempotency_key ~ '^(campaign|completion)[.]vote:' AND q.idempotency_key ~ '%(25|3A)'))
       OR EXISTS (SELECT FROM pyxp.campaigns c WHERE c.creator_wallet IS NULL) THEN
        RAISE EXCEPTION 'cannot downgrade below 0002: votes keyed by 0002 (ids with : or %%) or campaigns known by type only would be misread by 0001'
            USING ERRCODE = 'PX024', HINT = 'stay on 0002 or later';
    END IF;
END
$guard$;
SET LOCAL ROLE pyxp_owner;
CREATE OR REPLACE FUNCTION pyxp.checked_wallet(p_wallet text, p_what text DEFAULT 'wallet')
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v text := regexp_replace(p_wallet, '^\s+|\s+$', '', 'g');
BEGIN
    IF v IS NULL OR v = '' THEN
        RAISE EXCEPTION 'invalid %: %', p_what, coalesce(quote_literal(p_wallet), 'NULL')
            USING ERRCODE = 'PX001', HINT = 'a wallet is a non-empty id of at most 128 characters, e.g. 0x + 40 hex digits';
    ELSIF length(v) > 128 THEN
        RAISE EXCEPTION 'invalid %: % (% characters)', p_what, quote_literal(left(v, 40) || '...'), length(v)
            USING ERRCODE = 'PX001', HINT = 'a wallet has at most 128 characters';
    ELSIF v ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION 'invalid %: % contains control characters', p_what, quote_literal(v)
            USING ERRCODE = 'PX001', HINT = 'a wallet has no control characters (tabs, newlines, ...)';
    ELSIF v ~* '^0x[0-9a-f]{40}$' THEN
        RETURN lower(v);
    END IF;
    RETURN v;
END
$$;
CREATE OR REPLACE FUNCTION pyxp.checked_email(p_email text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v text := lower(regexp_replace(p_email, '^\s+|\s+$', '', 'g'));
BEGIN
    IF v IS NULL OR length(v) > 254
       OR v !~ '^[^@[:space:][:cntrl:]]+@[^@[:space:][:cntrl:]]*[^@[:space:][:cntrl:].]\.[^@[:space:][:cntrl:]]*[^@[:space:][:cntrl:].]$'
    THEN
        RAISE EXCEPTION 'invalid client email: %', coalesce(quote_literal(left(p_email, 300)), 'NULL')
            USING ERRCODE = 'PX002',
                  HINT = 'an email is local@domain.tld: one @, a non-empty local part, a domain with a dot, at most 254 characters';
    END IF;
    RETURN v;
END
$$;
CREATE OR REPLACE FUNCTION pyxp.checked_campaign_type(p_type text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v text := regexp_replace(upper(btrim(p_type)), '^FOR_', '');
BEGIN
    IF p_type IS NULL THEN
        RETURN NULL;
    ELSIF v IN ('B2C', 'AGENCY_B2C', 'INDIVIDUAL') THEN
        RETURN v;
    END IF;
    RAISE EXCEPTION 'unknown campaign type: %', quote_literal(left(p_type, 100))
        USING ERRCODE = 'PX003',
              HINT = 'accepted: B2C, AGENCY_B2C, INDIVIDUAL (any case), or FOR_B2C, FOR_AGENCY_B2C, FOR_INDIVIDUAL';
END
$$;
CREATE OR REPLACE FUNCTION pyxp.checked_vote(p_decision text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v text := upper(btrim(p_decision));
BEGIN
    IF v IN ('VALID', 'REFUSE') THEN
        RETURN v;
    END IF;
    RAISE EXCEPTION 'invalid vote decision: %', coalesce(quote_literal(left(p_decision, 100)), 'NULL')
        USING ERRCODE = 'PX008', HINT = 'accepted: VALID or REFUSE';
END
$$;
CREATE OR REPLACE FUNCTION pyxp.checked_identifier(p_what text, p_value text, p_max integer DEFAULT 128)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v text := regexp_replace(p_value, '^\s+|\s+$', '', 'g');
BEGIN
    IF v IS NULL OR v = '' THEN
        RAISE EXCEPTION 'invalid %: %', p_what, coalesce(quote_literal(p_value), 'NULL')
            USING ERRCODE = 'PX016', HINT = format('%s is a non-empty text of at most %s characters', p_what, p_max);
    ELSIF length(v) > p_max THEN
        RAISE EXCEPTION 'invalid %: % (% characters)', p_what, quote_literal(left(v, 40) || '...'), length(v)
            USING ERRCODE = 'PX016', HINT = format('%s has at most %s characters', p_what, p_max);
    ELSIF v ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION 'invalid %: % contains control characters', p_what, quote_literal(v)
            USING ERRCODE = 'PX016', HINT = format('%s has no control characters', p_what);
    END IF;
    RETURN v;
END
$$;
CREATE OR REPLACE FUNCTION pyxp.checked_number(p_what text, p_value numeric)
RETURNS numeric
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    IF p_value IS NULL THEN
        RETURN NULL;
    ELSIF p_value = 'NaN'::numeric OR p_value IN ('Infinity'::numeric, '-Infinity'::numeric) THEN
        RAISE EXCEPTION 'invalid %: % is not a finite number', p_what, p_value
            USING ERRCODE = 'PX004', HINT = 'a finite number between 0 and 10^15';
    ELSIF p_value < 0 OR p_value > 1e15 THEN
        RAISE EXCEPTION 'invalid %: % is out of range', p_what, p_value
            USING ERRCODE = 'PX004', HINT = 'a finite number between 0 and 10^15';
    END IF;
    RETURN p_value;
END
$$;
CREATE OR REPLACE FUNCTION pyxp.checked_params(p_params jsonb)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v_item record;
    v_result jsonb := '{}';
BEGIN
    IF p_params IS NULL THEN
        RETURN v_result;
    ELSIF jsonb_typeof(p_params) <> 'object' THEN
        RAISE EXCEPTION 'invalid params: % is not a JSON object', left(p_params::text, 100)
            USING ERRCODE = 'PX017', HINT = 'params is an object of formula inputs, e.g. {"PRICE_COMPLETION": 300}';
    ELSIF (SELECT count(*) FROM jsonb_object_keys(p_params)) > 64 THEN
        RAISE EXCEPTION 'invalid params: % inputs', (SELECT count(*) FROM jsonb_object_keys(p_params))
            USING ERRCODE = 'PX017', HINT = 'params holds at most 64 formula inputs';
    END IF;
    FOR v_item IN SELECT key, value FROM jsonb_each(p_params) LOOP
        IF length(v_item.key) > 64 OR v_item.key !~ '^[A-Za-z_$][A-Za-z0-9_$]*$' THEN
            RAISE EXCEPTION 'invalid params: input name %', quote_literal(left(v_item.key, 70))
                USING ERRCODE = 'PX017', HINT = 'input names are identifiers of at most 64 characters, e.g. PRICE_COMPLETION';
        ELSIF jsonb_typeof(v_item.value) <> 'number' THEN
            RAISE EXCEPTION 'invalid %: % is not a number', v_item.key, left(v_item.value::text, 100)
                USING ERRCODE = 'PX004', HINT = 'a finite number between 0 and 10^15';
        END IF;
        IF v_result ? upper(replace(v_item.key, '$', '')) THEN
            RAISE EXCEPTION 'invalid params: input % given twice', upper(replace(v_item.key, '$', ''))
                USING ERRCODE = 'PX017', HINT = 'input names are case-insensitive and ignore $: give each once';
        END IF;
        v_result := v_result || jsonb_build_object(
            upper(replace(v_item.key, '$', '')),
            pyxp.checked_number(v_item.key, v_item.value::numeric));
    END LOOP;
    RETURN v_result;
END
$$;
CREATE OR REPLACE FUNCTION pyxp.checked_context(p_context jsonb)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    IF p_context IS NULL THEN
        RETURN '{}';
    ELSIF jsonb_typeof(p_context) <> 'object' THEN
        RAISE EXCEPTION 'invalid context: % is not a JSON object', left(p_context::text, 100)
            USING ERRCODE = 'PX017', HINT = 'context is a JSON object, e.g. {"note": "manual bonus"}';
    ELSIF octet_length(p_context::text) > 16384 THEN
        RAISE EXCEPTION 'invalid context: % bytes', octet_length(p_context::text)
            USING ERRCODE = 'PX017', HINT = 'context is at most 16 KiB of JSON';
    ELSIF jsonb_path_exists(p_context, 'lax $.**{17}') THEN  -- level 17 = a value inside a 17th container
        RAISE EXCEPTION 'invalid context: nested deeper than 16 levels'
            USING ERRCODE = 'PX017', HINT = 'context is at most 16 levels deep';
    END IF;
    RETURN p_context;
END
$$;
CREATE OR REPLACE FUNCTION pyxp.checked_row_count(p_what text, p_value integer, p_max integer DEFAULT 1000)
RETURNS integer
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    IF p_value IS NULL OR p_value < 1 OR p_value > p_max THEN
        RAISE EXCEPTION 'invalid %: %', p_what, coalesce(p_value::text, 'NULL')
            USING ERRCODE = 'PX023', HINT = format('%s is between 1 and %s', p_what, p_max);
    END IF;
    RETURN p_value;
END
$$;
CREATE OR REPLACE FUNCTION pyxp.checked_award_key(p_key text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v text := pyxp.checked_identifier('idempotency key', p_key, 256);
BEGIN
    IF v ~ '^(campaign\.(created|approved|vote)|completion\.(submitted|outcome|vote)|client\.onboarded|reverse):' THEN
        RAISE EXCEPTION 'invalid idempotency key %: reserved for pyxp''s own flows', quote_literal(v)
            USING ERRCODE = 'PX016',
                  HINT = 'keys starting with campaign.*:, completion.*:, client.onboarded: or reverse: are pyxp''s';
    END IF;
    RETURN v;
END
$$;
CREATE OR REPLACE FUNCTION pyxp.context_column(p_context jsonb, p_field text, p_max integer)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN jsonb_typeof(p_context -> p_field) = 'string'
                THEN pyxp.checked_identifier(replace(p_field, '_', ' '), p_context ->> p_field, p_max) END
$$;
CREATE OR REPLACE FUNCTION pyxp.active_ruleset_id()
RETURNS bigint
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_id bigint;
BEGIN
    SELECT r.ruleset_id INTO v_id FROM pyxp.rulesets r WHERE r.is_active;
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'no active ruleset'
            USING ERRCODE = 'PX020', HINT = 'activate one: pyxp db upgrade, or pyxp rules apply winstory';
    END IF;
    RETURN v_id;
END
$$;
CREATE OR REPLACE FUNCTION pyxp.curve_position(p_ruleset_id bigint, p_total_xp bigint)
RETURNS TABLE (level bigint, level_start_xp bigint, next_level_xp numeric)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT t.level + s.steps,
           t.threshold + s.steps * t.increment,
           (t.threshold + s.steps * t.increment)::numeric + t.increment
    FROM (
        SELECT lt.level, lt.threshold, lt.increment, lt.is_last
          FROM pyxp.level_thresholds lt
         WHERE lt.ruleset_id = p_ruleset_id AND lt.threshold <= greatest(p_total_xp, 0)
         ORDER BY lt.threshold DESC
         LIMIT 1
    ) t
    CROSS JOIN LATERAL (
        SELECT CASE WHEN t.is_last AND p_total_xp > t.threshold
                    THEN (p_total_xp - t.threshold) / t.increment
                    ELSE 0 END AS steps
    ) s
$$;
CREATE OR REPLACE FUNCTION pyxp.level_for(total_xp bigint)
RETURNS TABLE (level bigint, level_start_xp bigint, next_level_xp numeric, xp_to_next_level numeric)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$
    SELECT c.level, c.level_start_xp, c.next_level_xp, c.next_level_xp - level_for.total_xp
    FROM pyxp.curve_position(pyxp.active_ruleset_id(), level_for.total_xp) c
    WHERE level_for.total_xp IS NOT NULL
$$;
CREATE OR REPLACE FUNCTION pyxp.recalculate_levels()
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$
DECLARE
    v_ruleset bigint;
    v_changed bigint;
BEGIN
    LOCK TABLE pyxp.xp_balances IN SHARE ROW EXCLUSIVE MODE;
    v_ruleset := pyxp.active_ruleset_id();
    WITH target AS (
        SELECT b.user_wallet, c.level, (c.next_level_xp - b.total_xp)::bigint AS to_next
        FROM pyxp.xp_balances b
        CROSS JOIN LATERAL pyxp.curve_position(v_ruleset, b.total_xp) c
    )
    UPDATE pyxp.xp_balances b
       SET current_level = t.level, xp_to_next_level = t.to_next, updated_at = now()
      FROM target t
     WHERE b.user_wallet = t.user_wallet
       AND (b.current_level, b.xp_to_next_level) IS DISTINCT FROM (t.level, t.to_next);
    GET DIAGNOSTICS v_changed = ROW_COUNT;
    RETURN v_changed;
END
$$;
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
CREATE OR REPLACE FUNCTION pyxp.install_ruleset(definition jsonb, source text)
RETURNS TABLE (ruleset_id bigint, name text, version integer, created boolean, activated boolean,
               balances_changed bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
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
    LOCK TABLE pyxp.xp_balances IN SHARE ROW EXCLUSIVE MODE;

    SELECT * INTO v_found FROM pyxp.rulesets r WHERE r.name = v_name AND r.content_hash = v_hash;
    IF v_found.is_active THEN
        RETURN QUERY SELECT v_found.ruleset_id, v_found.name, v_found.version, false, false, 0::bigint;
        RETURN;
    END IF;

    IF v_found.ruleset_id IS NOT NULL THEN
        v_id := v_found.ruleset_id;
    ELSE
        INSERT INTO pyxp.rulesets (name, version, content_hash, definition, source, description, balance_floor)
        SELECT v_name,
               coalesce((SELECT max(r.version) FROM pyxp.rulesets r WHERE r.name = v_name), 0) + 1,
               v_hash, install_ruleset.definition, install_ruleset.source,
               install_ruleset.definition ->> 'description',
               (install_ruleset.definition ->> 'balance_floor')::bigint
        RETURNING rulesets.ruleset_id INTO v_id;

        INSERT INTO pyxp.level_thresholds (ruleset_id, level, threshold, increment, is_last)
        SELECT v_id, (l ->> 'level')::bigint, (l ->> 'threshold')::bigint,
               (l ->> 'increment')::bigint, (l ->> 'is_last')::boolean
        FROM jsonb_array_elements(install_ruleset.definition -> 'levels') l;

        INSERT INTO pyxp.rules (ruleset_id, position, action, event, campaign_types, condition,
                                formula, xp_constant, xp_coefficients, description)
        SELECT v_id, r.ord, r.value ->> 'action', r.value ->> 'event',
               CASE WHEN jsonb_typeof(r.value -> 'campaign_types') = 'array'
                    THEN ARRAY(SELECT jsonb_array_elements_text(r.value -> 'campaign_types')) END,
               r.value ->> 'condition', coalesce(r.value ->> 'formula', r.value ->> 'constant'),
               (r.value ->> 'constant')::numeric, r.value -> 'coefficients', r.value ->> 'description'
        FROM jsonb_array_elements(install_ruleset.definition -> 'rules') WITH ORDINALITY r(value, ord);
        v_created := true;
    END IF;

    -- Two statements: the partial unique index allows one active row at a time.
    UPDATE pyxp.rulesets r SET is_active = false WHERE r.is_active;
    UPDATE pyxp.rulesets r SET is_active = true, activated_at = now() WHERE r.ruleset_id = v_id;

    RETURN QUERY
        SELECT r.ruleset_id, r.name, r.version, v_created, true, pyxp.recalculate_levels()
        FROM pyxp.rulesets r WHERE r.ruleset_id = v_id;
END
$$;
CREATE OR REPLACE FUNCTION pyxp.rule_amount(p_constant numeric, p_coefficients jsonb, p_params jsonb)
RETURNS numeric
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    IF p_coefficients = '{}'::jsonb THEN
        RETURN round(p_constant);
    END IF;
    RETURN round(p_constant + (SELECT sum(c.value::numeric * (p_params ->> c.key)::numeric)
                                 FROM jsonb_each_text(p_coefficients) c));
END
$$;
CREATE OR REPLACE FUNCTION pyxp.floored_amount(p_amount numeric, p_floor bigint, p_balance numeric)
RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN p_floor IS NOT NULL AND p_amount < 0
                THEN greatest(p_amount, least(0, p_floor - p_balance))
                ELSE p_amount END
$$;
CREATE OR REPLACE FUNCTION pyxp.balance_limit()
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT 4611686018427387904::bigint $$;
CREATE OR REPLACE FUNCTION pyxp.claim_request(p_key text, p_inputs jsonb, p_ruleset_id bigint)
RETURNS boolean
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO pyxp.xp_requests (idempotency_key, inputs, ruleset_id)
    VALUES (p_key, p_inputs, p_ruleset_id)
    ON CONFLICT (idempotency_key) DO NOTHING;
    RETURN FOUND;
END
$$;
CREATE OR REPLACE FUNCTION pyxp.replayed_award(p_key text, p_inputs jsonb,
                                    p_conflict_message text DEFAULT NULL,
                                    p_conflict_code text DEFAULT 'PX010')
RETURNS SETOF pyxp.award_result
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_request pyxp.xp_requests;
BEGIN
    SELECT * INTO STRICT v_request FROM pyxp.xp_requests q WHERE q.idempotency_key = p_key;
    IF v_request.inputs IS DISTINCT FROM p_inputs THEN
        RAISE EXCEPTION '%', coalesce(p_conflict_message,
                                      format('idempotency key %L was already used with other inputs', p_key))
            USING ERRCODE = p_conflict_code,
                  DETAIL = format('first call: %s; this call: %s', v_request.inputs, p_inputs),
                  HINT = 'repeat a call with exactly the same inputs to get its result again';
    END IF;
    RETURN QUERY
        SELECT t.id, t.user_wallet, t.transaction_type, t.xp_amount, t.xp_requested, t.balance_after,
               now_.level, (now_.next_level_xp - t.balance_after)::bigint, before_.level, true
          FROM pyxp.xp_transactions t
          CROSS JOIN LATERAL pyxp.curve_position(v_request.ruleset_id, t.balance_after) now_
          CROSS JOIN LATERAL pyxp.curve_position(v_request.ruleset_id, t.balance_after - t.xp_amount) before_
         WHERE t.idempotency_key = p_key
         ORDER BY t.id;
END
$$;
CREATE OR REPLACE FUNCTION pyxp.write_ledger_rows(p_wallet text, p_ruleset_id bigint, p_key text,
                                       p_rows pyxp.planned_row[], p_moderations integer,
                                       p_apply_floor boolean)
RETURNS SETOF pyxp.award_result
LANGUAGE plpgsql
AS $$
DECLARE
    v_floor bigint;
    v_running bigint;
    v_row pyxp.planned_row;
    v_out pyxp.award_result;
    v_level bigint;
    v_next numeric;
BEGIN
    IF cardinality(p_rows) = 0 AND p_moderations = 0 THEN
        RETURN;
    END IF;
    -- The wallet's lock. A new wallet's row is inserted first; a concurrent
    -- insert of the same wallet makes ON CONFLICT wait, then we lock its row.
    SELECT b.total_xp INTO v_running FROM pyxp.xp_balances b WHERE b.user_wallet = p_wallet FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO pyxp.xp_balances (user_wallet, total_xp, current_level, xp_to_next_level)
        SELECT p_wallet, 0, c.level, c.next_level_xp::bigint FROM pyxp.curve_position(p_ruleset_id, 0) c
        ON CONFLICT (user_wallet) DO NOTHING;
        SELECT b.total_xp INTO STRICT v_running FROM pyxp.xp_balances b WHERE b.user_wallet = p_wallet FOR UPDATE;
    END IF;
    IF p_apply_floor THEN
        SELECT r.balance_floor INTO v_floor FROM pyxp.rulesets r WHERE r.ruleset_id = p_ruleset_id;
    END IF;
    SELECT c.level, c.next_level_xp INTO v_level, v_next FROM pyxp.curve_position(p_ruleset_id, v_running) c;

    FOREACH v_row IN ARRAY p_rows LOOP
        v_out.previous_level := v_level;
        v_out.xp_requested := NULL;
        v_out.xp_amount := v_row.xp_amount;
        v_out.xp_amount := pyxp.floored_amount(v_row.xp_amount, v_floor, v_running);
        IF v_out.xp_amount <> v_row.xp_amount THEN
            v_out.xp_requested := v_row.xp_amount;
        END IF;
        IF v_running + v_out.xp_amount NOT BETWEEN -pyxp.balance_limit() AND pyxp.balance_limit() THEN
            RAISE EXCEPTION 'balance of % would be %, out of range', p_wallet, v_running + v_out.xp_amount
                USING ERRCODE = 'PX019', HINT = 'a balance stays between -2^62 and 2^62';
        END IF;
        v_running := v_running + v_out.xp_amount;

        INSERT INTO pyxp.xp_transactions (user_wallet, transaction_type, xp_amount, xp_requested,
                                          balance_after, rule_id, campaign_id, subject,
                                          idempotency_key, metadata, reverses)
        VALUES (p_wallet, v_row.transaction_type, v_out.xp_amount, v_out.xp_requested,
                v_running, v_row.rule_id, v_row.campaign_id, v_row.subject,
                p_key, coalesce(v_row.metadata, '{}'), v_row.reverses)
        RETURNING id INTO v_out.transaction_id;

        SELECT c.level, c.next_level_xp INTO v_level, v_next FROM pyxp.curve_position(p_ruleset_id, v_running) c;
        v_out.user_wallet := p_wallet;
        v_out.transaction_type := v_row.transaction_type;
        v_out.total_xp := v_running;
        v_out.current_level := v_level;
        v_out.xp_to_next_level := (v_next - v_running)::bigint;
        v_out.replayed := false;
        RETURN NEXT v_out;
    END LOOP;

    UPDATE pyxp.xp_balances b
       SET total_xp = v_running,
           current_level = v_level,
           xp_to_next_level = (v_next - v_running)::bigint,
           total_moderations = b.total_moderations + p_moderations,
           updated_at = now()
     WHERE b.user_wallet = p_wallet;
END
$$;
CREATE OR REPLACE FUNCTION pyxp.formula_input_problems(p_action text, p_coefficients jsonb, p_params jsonb,
                                            p_strict boolean)
RETURNS TABLE (code text, message text, hint text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT 'PX018', format('missing input %s for %s', c.key, p_action),
           format('pass %s, a number between 0 and 10^15', c.key)
      FROM jsonb_object_keys(p_coefficients) c(key)
     WHERE NOT p_params ? c.key
    UNION ALL
    SELECT 'PX017', format('unknown param %s: no formula of this action uses it', p.key),
           'params holds formula inputs only; put anything else in context'
      FROM jsonb_object_keys(p_params) p(key)
     WHERE p_strict AND NOT p_coefficients ? p.key
$$;
CREATE OR REPLACE FUNCTION pyxp.planned_rows(p_rule_ids bigint[], p_params jsonb, p_strict boolean,
                                  p_campaign_id text, p_subject text, p_metadata jsonb)
RETURNS pyxp.planned_row[]
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_problem record;
    v_rule record;
    v_rows pyxp.planned_row[] := '{}';
BEGIN
    SELECT x.code, x.message, x.hint INTO v_problem
      FROM pyxp.rules ru
     CROSS JOIN LATERAL pyxp.formula_input_problems(ru.action, ru.xp_coefficients, p_params, p_strict) x
     WHERE ru.rule_id = ANY (p_rule_ids)
     ORDER BY x.code = 'PX017'
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '%', v_problem.message USING ERRCODE = v_problem.code, HINT = v_problem.hint;
    END IF;

    FOR v_rule IN
        SELECT ru.rule_id, ru.action,
               pyxp.rule_amount(ru.xp_constant, ru.xp_coefficients, p_params) AS amount
          FROM unnest(p_rule_ids) WITH ORDINALITY u(rule_id, ord)
          JOIN pyxp.rules ru ON ru.rule_id = u.rule_id
         ORDER BY u.ord
    LOOP
        IF abs(v_rule.amount) > 1e15 THEN
            RAISE EXCEPTION 'XP amount % of % is out of range', v_rule.amount, v_rule.action
                USING ERRCODE = 'PX004', HINT = 'an award is at most 10^15 XP; check the formula inputs';
        END IF;
        v_rows := v_rows || ROW(v_rule.action, v_rule.amount::bigint, v_rule.rule_id,
                                p_campaign_id, p_subject, p_metadata, NULL)::pyxp.planned_row;
    END LOOP;
    RETURN v_rows;
END
$$;
CREATE OR REPLACE FUNCTION pyxp.post_award(
    p_key text, p_inputs jsonb, p_wallet text,
    p_action text, p_event text, p_campaign_type text, p_facts text[],
    p_params jsonb, p_strict_params boolean,
    p_campaign_id text, p_subject text, p_metadata jsonb, p_moderations integer,
    p_conflict_message text DEFAULT NULL)
RETURNS SETOF pyxp.award_result
LANGUAGE plpgsql
AS $$
DECLARE
    v_ruleset bigint;
    v_rule_ids bigint[];
BEGIN
    -- Before reading the active ruleset: see the lock protocol in 04_rulesets.sql.
    LOCK TABLE pyxp.xp_balances IN ROW EXCLUSIVE MODE;
    v_ruleset := pyxp.active_ruleset_id();
    IF NOT pyxp.claim_request(p_key, p_inputs, v_ruleset) THEN
        RETURN QUERY SELECT * FROM pyxp.replayed_award(p_key, p_inputs, p_conflict_message);
        RETURN;
    END IF;

    IF p_action IS NOT NULL THEN
        SELECT array_agg(ru.rule_id) INTO v_rule_ids
          FROM pyxp.rules ru WHERE ru.ruleset_id = v_ruleset AND ru.action = p_action;
        IF v_rule_ids IS NULL THEN
            RAISE EXCEPTION 'unknown action %', quote_literal(p_action)
                USING ERRCODE = 'PX009',
                      HINT = (SELECT format('actions of the active ruleset %s v%s: %s', r.name, r.version,
                                            (SELECT string_agg(ru.action, ', ' ORDER BY ru.position)
                                               FROM pyxp.rules ru WHERE ru.ruleset_id = r.ruleset_id))
                                FROM pyxp.rulesets r WHERE r.ruleset_id = v_ruleset);
        END IF;
    ELSE
        SELECT coalesce(array_agg(ru.rule_id ORDER BY ru.position), '{}') INTO v_rule_ids
          FROM pyxp.rules ru
         WHERE ru.ruleset_id = v_ruleset AND ru.event = p_event
           AND (ru.campaign_types IS NULL OR p_campaign_type = ANY (ru.campaign_types))
           AND (ru.condition IS NULL OR ru.condition = ANY (p_facts));
    END IF;

    RETURN QUERY SELECT * FROM pyxp.write_ledger_rows(
        p_wallet, v_ruleset, p_key,
        pyxp.planned_rows(v_rule_ids, p_params, p_strict_params, p_campaign_id, p_subject, p_metadata),
        p_moderations, true);
END
$$;
CREATE OR REPLACE FUNCTION pyxp.award(wallet text, action text, idempotency_key text,
                           params jsonb DEFAULT '{}', context jsonb DEFAULT '{}')
RETURNS SETOF pyxp.award_result
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_wallet text := pyxp.checked_wallet(award.wallet);
    v_action text := pyxp.checked_identifier('action', award.action, 64);
    v_key text := pyxp.checked_award_key(award.idempotency_key);
    v_params jsonb := pyxp.checked_params(award.params);
    v_context jsonb := pyxp.checked_context(award.context);
    v_campaign_id text := pyxp.context_column(v_context, 'campaign_id', 128);
    v_subject text := pyxp.context_column(v_context, 'subject', 256);
BEGIN
    RETURN QUERY SELECT * FROM pyxp.post_award(
        v_key, jsonb_build_object('action', v_action, 'wallet', v_wallet, 'params', v_params),
        v_wallet, v_action, NULL, NULL, NULL, v_params, true,
        v_campaign_id, v_subject, v_context || v_params, 0);
END
$$;
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
    v_ruleset bigint;
BEGIN
    LOCK TABLE pyxp.xp_balances IN ROW EXCLUSIVE MODE;
    v_ruleset := pyxp.active_ruleset_id();
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
    IF NOT pyxp.claim_request(v_key, v_inputs, v_ruleset) THEN
        RETURN QUERY SELECT * FROM pyxp.replayed_award(
            v_key, v_inputs, format('transaction %s was already reversed', v_original.id), 'PX014');
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM pyxp.write_ledger_rows(
        v_original.user_wallet, v_ruleset, v_key,
        ARRAY[ROW('REVERSAL', -v_original.xp_amount, NULL, v_original.campaign_id, v_original.subject,
                  jsonb_build_object('reason', v_reason, 'reversed_type', v_original.transaction_type),
                  v_original.id)::pyxp.planned_row],
        0, false);
END
$$;
CREATE OR REPLACE FUNCTION pyxp.resolved_campaign_type(p_campaign_id text, p_campaign_type text)
RETURNS text
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_given text := pyxp.checked_campaign_type(p_campaign_type);
    v_known text;
BEGIN
    SELECT c.campaign_type INTO v_known FROM pyxp.campaigns c WHERE c.campaign_id = p_campaign_id;
    IF v_known IS NOT NULL AND v_given IS NOT NULL AND v_known <> v_given THEN
        RAISE EXCEPTION 'campaign % is %, not %', p_campaign_id, v_known, v_given
            USING ERRCODE = 'PX011', HINT = format('pass campaign_type %s, or omit it', v_known);
    ELSIF v_known IS NULL AND v_given IS NULL THEN
        RAISE EXCEPTION 'unknown campaign %: its type is needed', p_campaign_id
            USING ERRCODE = 'PX012',
                  HINT = 'pass campaign_type (B2C, AGENCY_B2C, INDIVIDUAL), or award the campaign creation first';
    END IF;
    RETURN coalesce(v_known, v_given);
END
$$;
CREATE OR REPLACE FUNCTION pyxp.required_campaign_type(p_campaign_type text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF p_campaign_type IS NULL THEN
        RAISE EXCEPTION 'campaign type is required'
            USING ERRCODE = 'PX003', HINT = 'accepted: B2C, AGENCY_B2C, INDIVIDUAL (any case), or FOR_B2C, FOR_AGENCY_B2C, FOR_INDIVIDUAL';
    END IF;
    RETURN pyxp.checked_campaign_type(p_campaign_type);
END
$$;
CREATE OR REPLACE FUNCTION pyxp.formula_inputs(p_price_completion numeric, p_mint_value_winc numeric, p_mint_value numeric)
RETURNS jsonb
LANGUAGE sql IMMUTABLE
AS $$
    SELECT jsonb_strip_nulls(jsonb_build_object('PRICE_COMPLETION', p_price_completion,
                                                'MINT_VALUE_WINC', p_mint_value_winc,
                                                'MINT_VALUE', p_mint_value))
$$;
CREATE OR REPLACE FUNCTION pyxp.award_campaign_creation(
    creator_wallet text, campaign_id text, campaign_type text, mint_value numeric DEFAULT NULL,
    winstory_creates_video boolean DEFAULT false, no_rewards boolean DEFAULT false)
RETURNS SETOF pyxp.award_result
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_wallet text := pyxp.checked_wallet(award_campaign_creation.creator_wallet, 'creator wallet');
    v_campaign text := pyxp.checked_identifier('campaign id', award_campaign_creation.campaign_id);
    v_type text := pyxp.required_campaign_type(award_campaign_creation.campaign_type);
    v_mint numeric := pyxp.checked_number('mint_value', award_campaign_creation.mint_value);
    v_video boolean := coalesce(award_campaign_creation.winstory_creates_video, false);
    v_no_rewards boolean := coalesce(award_campaign_creation.no_rewards, false);
    v_params jsonb := pyxp.formula_inputs(NULL, NULL, v_mint);
BEGIN
    RETURN QUERY SELECT * FROM pyxp.post_award(
        'campaign.created:' || v_campaign,
        jsonb_build_object('wallet', v_wallet, 'campaign_type', v_type, 'mint_value', v_mint,
                           'winstory_creates_video', v_video, 'no_rewards', v_no_rewards),
        v_wallet, NULL, 'campaign.created', v_type,
        array_remove(ARRAY[CASE WHEN v_video THEN 'winstory_creates_video' END,
                           CASE WHEN v_no_rewards THEN 'no_rewards' END], NULL),
        v_params, false, v_campaign, NULL,
        jsonb_build_object('campaign_type', v_type, 'winstory_creates_video', v_video,
                           'no_rewards', v_no_rewards) || v_params,
        0, format('campaign %s was already created with other inputs', v_campaign));
    -- Still recorded when no rule awards anything (INDIVIDUAL in winstory).
    -- A replay finds the row already there: nothing is written.
    INSERT INTO pyxp.campaigns (campaign_id, campaign_type, creator_wallet)
    VALUES (v_campaign, v_type, v_wallet)
    ON CONFLICT ON CONSTRAINT campaigns_pkey DO NOTHING;
END
$$;
CREATE OR REPLACE FUNCTION pyxp.award_campaign_approval(campaign_id text, creator_wallet text DEFAULT NULL)
RETURNS SETOF pyxp.award_result
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_campaign text := pyxp.checked_identifier('campaign id', award_campaign_approval.campaign_id);
    v_given text;
    v_known pyxp.campaigns;
BEGIN
    IF award_campaign_approval.creator_wallet IS NOT NULL THEN
        v_given := pyxp.checked_wallet(award_campaign_approval.creator_wallet, 'creator wallet');
    END IF;
    SELECT * INTO v_known FROM pyxp.campaigns c WHERE c.campaign_id = v_campaign;
    IF v_known.creator_wallet IS NOT NULL AND v_given IS NOT NULL AND v_given <> v_known.creator_wallet THEN
        RAISE EXCEPTION 'campaign % was created by %, not %', v_campaign, v_known.creator_wallet, v_given
            USING ERRCODE = 'PX011', HINT = 'omit creator_wallet: the registry knows it';
    ELSIF v_known.creator_wallet IS NULL AND v_given IS NULL THEN
        RAISE EXCEPTION 'unknown campaign %: its creator is needed', v_campaign
            USING ERRCODE = 'PX012', HINT = 'pass creator_wallet, or award the campaign creation first';
    END IF;
    v_given := coalesce(v_known.creator_wallet, v_given);
    RETURN QUERY SELECT * FROM pyxp.post_award(
        'campaign.approved:' || v_campaign, jsonb_build_object('wallet', v_given),
        v_given, NULL, 'campaign.approved', v_known.campaign_type, '{}',
        '{}', false, v_campaign, NULL, '{}', 0,
        format('campaign %s was already approved for another creator', v_campaign));
END
$$;
CREATE OR REPLACE FUNCTION pyxp.award_moderation_vote(
    moderator_wallet text, campaign_id text, vote_decision text, campaign_type text DEFAULT NULL)
RETURNS SETOF pyxp.award_result
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_wallet text := pyxp.checked_wallet(award_moderation_vote.moderator_wallet, 'moderator wallet');
    v_campaign text := pyxp.checked_identifier('campaign id', award_moderation_vote.campaign_id);
    v_vote text := pyxp.checked_vote(award_moderation_vote.vote_decision);
    v_type text := pyxp.resolved_campaign_type(v_campaign, award_moderation_vote.campaign_type);
BEGIN
    RETURN QUERY SELECT * FROM pyxp.post_award(
        format('campaign.vote:%s:%s', v_campaign, v_wallet),
        jsonb_build_object('vote_decision', v_vote, 'campaign_type', v_type,
                           'wallet', v_wallet, 'campaign_id', v_campaign),
        v_wallet, NULL, 'campaign.vote', v_type, ARRAY[v_vote],
        '{}', false, v_campaign, NULL,
        jsonb_build_object('vote_decision', v_vote, 'campaign_type', v_type), 1,
        format('moderator %s already voted on campaign %s', v_wallet, v_campaign));
END
$$;
CREATE OR REPLACE FUNCTION pyxp.award_completion(
    completer_wallet text, campaign_id text, completion_id text, campaign_type text DEFAULT NULL,
    is_validated boolean DEFAULT false, is_refused boolean DEFAULT false, is_paid boolean DEFAULT false,
    price_completion numeric DEFAULT NULL, mint_value_winc numeric DEFAULT NULL)
RETURNS SETOF pyxp.award_result
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_wallet text := pyxp.checked_wallet(award_completion.completer_wallet, 'completer wallet');
    v_campaign text := pyxp.checked_identifier('campaign id', award_completion.campaign_id);
    v_completion text := pyxp.checked_identifier('completion id', award_completion.completion_id);
    v_validated boolean := coalesce(award_completion.is_validated, false);
    v_refused boolean := coalesce(award_completion.is_refused, false);
    v_paid boolean := coalesce(award_completion.is_paid, false);
    v_price numeric := pyxp.checked_number('price_completion', award_completion.price_completion);
    v_mint numeric := pyxp.checked_number('mint_value_winc', award_completion.mint_value_winc);
    v_type text;
    v_event text;
    v_params jsonb;
    v_inputs jsonb;
BEGIN
    IF v_validated AND v_refused THEN
        RAISE EXCEPTION 'completion % cannot be both validated and refused', v_completion
            USING ERRCODE = 'PX005', HINT = 'set is_validated or is_refused, or neither for a submission';
    ELSIF v_paid AND coalesce(v_price, 0) <= 0 THEN
        RAISE EXCEPTION 'paid completion % needs a positive price_completion, got %', v_completion,
                        coalesce(v_price::text, 'NULL')
            USING ERRCODE = 'PX006', HINT = 'is_paid => true with price_completion > 0';
    ELSIF NOT v_paid AND v_price > 0 THEN
        RAISE EXCEPTION 'free completion % has a price_completion (%)', v_completion, v_price
            USING ERRCODE = 'PX006', HINT = 'a price above 0 only goes with is_paid => true';
    END IF;
    v_type := pyxp.resolved_campaign_type(v_campaign, award_completion.campaign_type);
    IF v_type = 'INDIVIDUAL' AND NOT v_validated AND coalesce(v_mint, 0) <= 0 THEN
        RAISE EXCEPTION 'INDIVIDUAL completion % needs a positive mint_value_winc, got %', v_completion,
                        coalesce(v_mint::text, 'NULL')
            USING ERRCODE = 'PX007', HINT = 'pass mint_value_winc, the MINT value in $WINC (> 0)';
    END IF;

    v_event := CASE WHEN v_validated THEN 'completion.validated'
                    WHEN v_refused THEN 'completion.refused'
                    ELSE 'completion.submitted' END;
    v_params := pyxp.formula_inputs(v_price, v_mint, NULL);
    v_inputs := jsonb_build_object('event', v_event, 'wallet', v_wallet, 'campaign_id', v_campaign,
                                   'campaign_type', v_type, 'is_paid', v_paid) || v_params;
    RETURN QUERY SELECT * FROM pyxp.post_award(
        CASE WHEN v_event = 'completion.submitted' THEN 'completion.submitted:' ELSE 'completion.outcome:' END
            || v_completion,
        v_inputs, v_wallet, NULL, v_event, v_type,
        ARRAY[CASE WHEN v_paid THEN 'paid' ELSE 'free' END],
        v_params, false, v_campaign, v_completion,
        jsonb_build_object('campaign_type', v_type, 'is_paid', v_paid) || v_params, 0,
        CASE WHEN v_event = 'completion.submitted'
             THEN format('completion %s was already submitted with other inputs', v_completion)
             ELSE format('completion %s already has an outcome recorded with other inputs '
                         '(validated or refused, once, never both)', v_completion) END);
END
$$;
CREATE OR REPLACE FUNCTION pyxp.award_completion_moderation(
    moderator_wallet text, campaign_id text, completion_id text, vote_decision text,
    campaign_type text DEFAULT NULL)
RETURNS SETOF pyxp.award_result
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_wallet text := pyxp.checked_wallet(award_completion_moderation.moderator_wallet, 'moderator wallet');
    v_campaign text := pyxp.checked_identifier('campaign id', award_completion_moderation.campaign_id);
    v_completion text := pyxp.checked_identifier('completion id', award_completion_moderation.completion_id);
    v_vote text := pyxp.checked_vote(award_completion_moderation.vote_decision);
    v_type text := pyxp.resolved_campaign_type(v_campaign, award_completion_moderation.campaign_type);
BEGIN
    RETURN QUERY SELECT * FROM pyxp.post_award(
        format('completion.vote:%s:%s', v_completion, v_wallet),
        jsonb_build_object('vote_decision', v_vote, 'campaign_id', v_campaign, 'campaign_type', v_type,
                           'wallet', v_wallet, 'completion_id', v_completion),
        v_wallet, NULL, 'completion.vote', v_type, ARRAY[v_vote],
        '{}', false, v_campaign, v_completion,
        jsonb_build_object('vote_decision', v_vote, 'campaign_type', v_type), 1,
        format('moderator %s already voted on completion %s', v_wallet, v_completion));
END
$$;
CREATE OR REPLACE FUNCTION pyxp.lock_client_email(p_email text)
RETURNS void
LANGUAGE sql
AS $$
    SELECT pg_advisory_xact_lock(hashtextextended('pyxp.client_email:' || p_email, 0))
$$;
CREATE OR REPLACE FUNCTION pyxp.register_agency_client(
    agency_wallet text, client_email text, campaign_id text, company_name text DEFAULT NULL)
RETURNS SETOF pyxp.agency_b2c_clients
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_agency text := pyxp.checked_wallet(register_agency_client.agency_wallet, 'agency wallet');
    v_email text := pyxp.checked_email(register_agency_client.client_email);
    v_campaign text := pyxp.checked_identifier('campaign id', register_agency_client.campaign_id);
    v_company text;
    v_known pyxp.campaigns;
    v_onboarded pyxp.xp_requests;
BEGIN
    IF nullif(btrim(register_agency_client.company_name), '') IS NOT NULL THEN
        v_company := pyxp.checked_identifier('company name', register_agency_client.company_name, 200);
    END IF;
    SELECT * INTO v_known FROM pyxp.campaigns c WHERE c.campaign_id = v_campaign;
    IF v_known.campaign_id IS NOT NULL
       AND (v_known.campaign_type <> 'AGENCY_B2C' OR v_known.creator_wallet <> v_agency) THEN
        RAISE EXCEPTION 'campaign % is a % campaign created by %, not an AGENCY_B2C campaign of %',
                        v_campaign, v_known.campaign_type, v_known.creator_wallet, v_agency
            USING ERRCODE = 'PX022', HINT = 'register clients on the agency''s own AGENCY_B2C campaigns';
    END IF;

    PERFORM pyxp.lock_client_email(v_email);
    SELECT * INTO v_onboarded FROM pyxp.xp_requests q WHERE q.idempotency_key = 'client.onboarded:' || v_email;
    INSERT INTO pyxp.agency_b2c_clients AS a (agency_wallet, client_email, campaign_id, company_name,
                                              client_wallet, xp_granted, onboarded_at)
    VALUES (v_agency, v_email, v_campaign, v_company, v_onboarded.inputs ->> 'wallet',
            v_onboarded.idempotency_key IS NOT NULL, v_onboarded.created_at)
    ON CONFLICT ON CONSTRAINT agency_b2c_clients_agency_wallet_client_email_campaign_id_key DO NOTHING;

    RETURN QUERY
        SELECT a.* FROM pyxp.agency_b2c_clients a
         WHERE a.agency_wallet = v_agency AND a.client_email = v_email AND a.campaign_id = v_campaign;
END
$$;
CREATE OR REPLACE FUNCTION pyxp.onboard_agency_client(client_email text, client_wallet text)
RETURNS SETOF pyxp.award_result
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_email text := pyxp.checked_email(onboard_agency_client.client_email);
    v_wallet text := pyxp.checked_wallet(onboard_agency_client.client_wallet, 'client wallet');
    v_key text := 'client.onboarded:' || v_email;
    v_pending record;
BEGIN
    PERFORM pyxp.lock_client_email(v_email);
    SELECT array_agg(a.agency_wallet ORDER BY a.id) AS agencies,
           array_agg(a.campaign_id ORDER BY a.id) AS campaigns,
           (array_agg(a.company_name ORDER BY a.id) FILTER (WHERE a.company_name IS NOT NULL))[1] AS company
      INTO v_pending
      FROM pyxp.agency_b2c_clients a
     WHERE a.client_email = v_email AND NOT a.xp_granted;

    IF v_pending.agencies IS NULL
       AND NOT EXISTS (SELECT FROM pyxp.xp_requests q WHERE q.idempotency_key = v_key) THEN
        RETURN;  -- nobody registered this client: nothing to grant
    ELSIF v_wallet = ANY (v_pending.agencies) THEN
        RAISE EXCEPTION 'client wallet % is the registering agency''s wallet', v_wallet
            USING ERRCODE = 'PX021', HINT = 'the onboarding XP goes to the client''s own wallet, never the agency';
    END IF;

    RETURN QUERY SELECT * FROM pyxp.post_award(
        v_key, jsonb_build_object('wallet', v_wallet),
        v_wallet, NULL, 'client.onboarded', 'AGENCY_B2C', '{}',
        '{}', false, v_pending.campaigns[1], v_email,
        jsonb_strip_nulls(jsonb_build_object(
            'agency_wallet', v_pending.agencies[1],
            'agency_wallets', CASE WHEN cardinality(v_pending.agencies) > 1 THEN to_jsonb(v_pending.agencies) END,
            'campaign_ids', CASE WHEN cardinality(v_pending.campaigns) > 1 THEN to_jsonb(v_pending.campaigns) END,
            'company_name', v_pending.company)),
        0, format('client %s was already onboarded with another wallet', v_email));

    UPDATE pyxp.agency_b2c_clients a
       SET xp_granted = true, client_wallet = v_wallet, onboarded_at = now()
     WHERE a.client_email = v_email AND NOT a.xp_granted;
END
$$;
CREATE OR REPLACE FUNCTION pyxp.balance(wallet text)
RETURNS TABLE (user_wallet text, total_xp bigint, current_level bigint, xp_to_next_level bigint,
               total_moderations bigint, created_at timestamptz, updated_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$
DECLARE
    v_wallet text := pyxp.checked_wallet(balance.wallet);
BEGIN
    RETURN QUERY
        SELECT b.user_wallet, b.total_xp, b.current_level, b.xp_to_next_level,
               b.total_moderations, b.created_at, b.updated_at
          FROM pyxp.xp_balances b WHERE b.user_wallet = v_wallet;
    IF NOT FOUND THEN
        RETURN QUERY
            SELECT v_wallet, 0::bigint, c.level, c.next_level_xp::bigint, 0::bigint,
                   NULL::timestamptz, NULL::timestamptz
              FROM pyxp.curve_position(pyxp.active_ruleset_id(), 0) c;
    END IF;
END
$$;
CREATE OR REPLACE FUNCTION pyxp.history(wallet text, max_rows integer DEFAULT 50, before_id bigint DEFAULT NULL)
RETURNS TABLE (transaction_id bigint, user_wallet text, transaction_type text, xp_amount bigint,
               xp_requested bigint, balance_after bigint, rule_id bigint, campaign_id text,
               subject text, idempotency_key text, metadata jsonb, reverses bigint,
               created_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$
DECLARE
    v_wallet text := pyxp.checked_wallet(history.wallet);
    v_max integer := pyxp.checked_row_count('max_rows', history.max_rows);
BEGIN
    RETURN QUERY
        SELECT t.id, t.user_wallet, t.transaction_type, t.xp_amount, t.xp_requested, t.balance_after,
               t.rule_id, t.campaign_id, t.subject, t.idempotency_key, t.metadata, t.reverses, t.created_at
          FROM pyxp.xp_transactions t
         WHERE t.user_wallet = v_wallet
           AND (history.before_id IS NULL OR t.id < history.before_id)
         ORDER BY t.id DESC
         LIMIT v_max;
END
$$;
CREATE OR REPLACE FUNCTION pyxp.leaderboard(max_rows integer DEFAULT 100, offset_rows integer DEFAULT 0)
RETURNS TABLE (rank bigint, user_wallet text, total_xp bigint, current_level bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$
DECLARE
    v_max integer := pyxp.checked_row_count('max_rows', leaderboard.max_rows);
BEGIN
    IF leaderboard.offset_rows IS NULL OR leaderboard.offset_rows < 0 THEN
        RAISE EXCEPTION 'invalid offset_rows: %', coalesce(leaderboard.offset_rows::text, 'NULL')
            USING ERRCODE = 'PX023', HINT = 'offset_rows is 0 or more';
    END IF;
    RETURN QUERY
        SELECT leaderboard.offset_rows + row_number() OVER (ORDER BY b.total_xp DESC, b.user_wallet),
               b.user_wallet, b.total_xp, b.current_level
          FROM (SELECT x.user_wallet, x.total_xp, x.current_level
                  FROM pyxp.xp_balances x
                 ORDER BY x.total_xp DESC, x.user_wallet
                 OFFSET leaderboard.offset_rows LIMIT v_max) b
         ORDER BY 1;
END
$$;
CREATE OR REPLACE FUNCTION pyxp.wallet_rank(wallet text)
RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$
DECLARE
    v_wallet text := pyxp.checked_wallet(wallet_rank.wallet);
    v_total bigint;
BEGIN
    SELECT b.total_xp INTO v_total FROM pyxp.xp_balances b WHERE b.user_wallet = v_wallet;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN 1 + (SELECT count(*) FROM pyxp.xp_balances b WHERE b.total_xp > v_total)
             + (SELECT count(*) FROM pyxp.xp_balances b WHERE b.total_xp = v_total AND b.user_wallet < v_wallet);
END
$$;
CREATE OR REPLACE FUNCTION pyxp.audit()
RETURNS TABLE (check_name text, user_wallet text, transaction_id bigint, detail text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET jit = off
AS $$
    SELECT 'active_ruleset', NULL::text, NULL::bigint,
           format('%s active rulesets, expected 1', count(*))
      FROM pyxp.rulesets r WHERE r.is_active HAVING count(*) <> 1
    UNION ALL
    SELECT 'balance_mismatch', coalesce(b.user_wallet, l.user_wallet), NULL,
           CASE WHEN b.user_wallet IS NULL
                THEN format('ledger sum %s but no xp_balances row', l.total)
                ELSE format('xp_balances.total_xp = %s, ledger sum = %s', b.total_xp, coalesce(l.total, 0)) END
      FROM pyxp.xp_balances b
      FULL JOIN (SELECT t.user_wallet, sum(t.xp_amount) AS total
                   FROM pyxp.xp_transactions t GROUP BY t.user_wallet) l
        ON l.user_wallet = b.user_wallet
     WHERE b.user_wallet IS NULL OR b.total_xp <> coalesce(l.total, 0)
    UNION ALL
    SELECT 'running_balance', c.user_wallet, c.id,
           format('balance_after = %s, previous balance_after %s + xp_amount %s = %s',
                  c.balance_after, coalesce(c.previous, 0), c.xp_amount, coalesce(c.previous, 0) + c.xp_amount)
      FROM (SELECT t.user_wallet, t.id, t.balance_after, t.xp_amount,
                   lag(t.balance_after) OVER (PARTITION BY t.user_wallet ORDER BY t.id) AS previous
              FROM pyxp.xp_transactions t) c
     WHERE c.balance_after <> coalesce(c.previous, 0) + c.xp_amount
    UNION ALL
    SELECT 'level_mismatch', b.user_wallet, NULL,
           format('level %s with %s to next, curve says level %s with %s to next',
                  b.current_level, b.xp_to_next_level, c.level, c.next_level_xp - b.total_xp)
      FROM pyxp.xp_balances b
     CROSS JOIN LATERAL pyxp.curve_position(
                (SELECT r.ruleset_id FROM pyxp.rulesets r WHERE r.is_active), b.total_xp) c
     WHERE b.current_level <> c.level OR b.xp_to_next_level <> c.next_level_xp - b.total_xp
    UNION ALL
    SELECT 'reversal_mismatch', t.user_wallet, t.id,
           format('reverses transaction %s (%s XP to %s) with %s XP', o.id, o.xp_amount, o.user_wallet, t.xp_amount)
      FROM pyxp.xp_transactions t
      JOIN pyxp.xp_transactions o ON o.id = t.reverses
     WHERE t.xp_amount <> -o.xp_amount OR t.user_wallet <> o.user_wallet OR o.reverses IS NOT NULL
    UNION ALL
    SELECT 'moderation_count', b.user_wallet, NULL,
           format('total_moderations = %s, votes recorded = %s', b.total_moderations, coalesce(v.votes, 0))
      FROM pyxp.xp_balances b
      FULL JOIN (SELECT q.inputs ->> 'wallet' AS user_wallet, count(*) AS votes
                   FROM pyxp.xp_requests q
                  WHERE q.idempotency_key LIKE 'campaign.vote:%' OR q.idempotency_key LIKE 'completion.vote:%'
                  GROUP BY 1) v ON v.user_wallet = b.user_wallet
     WHERE coalesce(b.total_moderations, 0) <> coalesce(v.votes, 0)
    UNION ALL
    SELECT 'registration_grant', a.client_wallet, NULL,
           format('registration %s of %s is %s', a.id, a.client_email,
                  CASE WHEN a.xp_granted THEN 'granted without an onboarding of that email'
                       ELSE 'pending although that email was onboarded' END)
      FROM pyxp.agency_b2c_clients a
      LEFT JOIN pyxp.xp_requests q ON q.idempotency_key = 'client.onboarded:' || a.client_email
     WHERE a.xp_granted <> (q.idempotency_key IS NOT NULL)
    UNION ALL
    SELECT 'rule_mismatch', t.user_wallet, t.id,
           format('transaction_type %s but rule %s is %s', t.transaction_type, ru.rule_id, ru.action)
      FROM pyxp.xp_transactions t
      JOIN pyxp.rules ru ON ru.rule_id = t.rule_id
     WHERE ru.action <> t.transaction_type
    ORDER BY 1, 2, 3
$$;
CREATE OR REPLACE FUNCTION pyxp.award_many(events jsonb)
RETURNS SETOF pyxp.batch_award_result
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_events pyxp.batch_event[] := '{}';
    v_new pyxp.batch_event[];        -- events whose key is not stored yet
    v_rows pyxp.batch_row[];
    v_event pyxp.batch_event;
    v_item jsonb;
    v_index integer := -1;
    v_ruleset bigint;
    v_floor bigint;
    v_problem record;
    v_message text;
    v_hint text;
    v_code text;
BEGIN
    IF jsonb_typeof(award_many.events) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'events must be a JSON array of awards'
            USING ERRCODE = 'PX017',
                  HINT = '[{"wallet": ..., "action": ..., "idempotency_key": ..., "params": {...}, "context": {...}}]';
    ELSIF jsonb_array_length(award_many.events) > 10000 THEN
        RAISE EXCEPTION 'a batch holds at most 10000 events, got %', jsonb_array_length(award_many.events)
            USING ERRCODE = 'PX023', HINT = 'split the batch';
    END IF;

    -- 1. Validate and normalise each event, as pyxp.award does. One exception
    --    block for the whole loop (not one per event): it only adds the index.
    BEGIN
        FOR v_item IN SELECT e FROM jsonb_array_elements(award_many.events) e LOOP
            v_index := v_index + 1;
            IF jsonb_typeof(v_item) IS DISTINCT FROM 'object' THEN
                RAISE EXCEPTION 'not a JSON object' USING ERRCODE = 'PX017',
                    HINT = '{"wallet": ..., "action": ..., "idempotency_key": ..., "params": {...}}';
            END IF;
            v_event.event_index := v_index;
            -- Texts only: a number or object is not silently turned into its JSON text.
            v_event.wallet := pyxp.checked_wallet(
                CASE WHEN jsonb_typeof(v_item -> 'wallet') = 'string' THEN v_item ->> 'wallet' END);
            v_event.action := pyxp.checked_identifier('action',
                CASE WHEN jsonb_typeof(v_item -> 'action') = 'string' THEN v_item ->> 'action' END, 64);
            v_event.key := pyxp.checked_award_key(
                CASE WHEN jsonb_typeof(v_item -> 'idempotency_key') = 'string'
                     THEN v_item ->> 'idempotency_key' END);
            -- JSON null params/context: as if omitted (SQL NULL in pyxp.award).
            v_event.params := pyxp.checked_params(nullif(v_item -> 'params', 'null'::jsonb));
            v_event.metadata := pyxp.checked_context(nullif(v_item -> 'context', 'null'::jsonb));
            v_event.campaign_id := pyxp.context_column(v_event.metadata, 'campaign_id', 128);
            v_event.subject := pyxp.context_column(v_event.metadata, 'subject', 256);
            v_event.metadata := v_event.metadata || v_event.params;
            -- Same canonical inputs as pyxp.award: a batch replays single awards and back.
            v_event.inputs := jsonb_build_object('action', v_event.action, 'wallet', v_event.wallet,
                                                 'params', v_event.params);
            v_events := v_events || v_event;
        END LOOP;
    EXCEPTION WHEN SQLSTATE 'PX001' OR SQLSTATE 'PX004' OR SQLSTATE 'PX016' OR SQLSTATE 'PX017' THEN
        GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT, v_hint = PG_EXCEPTION_HINT, v_code = RETURNED_SQLSTATE;
        RAISE EXCEPTION 'event %: %', v_index, v_message
            USING ERRCODE = v_code, HINT = coalesce(nullif(v_hint, ''), 'see README: Error codes');
    END;

    LOCK TABLE pyxp.xp_balances IN ROW EXCLUSIVE MODE;  -- lock protocol: see 04_rulesets.sql
    v_ruleset := pyxp.active_ruleset_id();
    SELECT r.balance_floor INTO v_floor FROM pyxp.rulesets r WHERE r.ruleset_id = v_ruleset;

    -- 2. Rules: unknown actions, input problems (formula_input_problems, as
    --    planned_rows), amounts. Like pyxp.award, an event whose key is
    --    already stored replays without these checks (its action may have
    --    left the active ruleset since): they apply to v_new only.
    v_new := ARRAY(SELECT e FROM unnest(v_events) e
                    WHERE NOT EXISTS (SELECT FROM pyxp.xp_requests q WHERE q.idempotency_key = e.key));
    SELECT e.event_index, e.action INTO v_problem
      FROM unnest(v_new) e
     WHERE NOT EXISTS (SELECT FROM pyxp.rules ru WHERE ru.ruleset_id = v_ruleset AND ru.action = e.action)
     ORDER BY e.event_index LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'event %: unknown action %', v_problem.event_index, quote_literal(v_problem.action)
            USING ERRCODE = 'PX009', HINT = 'an action code of the active ruleset: pyxp rules show';
    END IF;
    SELECT e.event_index, x.code, x.message, x.hint INTO v_problem
      FROM unnest(v_new) e
      JOIN pyxp.rules ru ON ru.ruleset_id = v_ruleset AND ru.action = e.action
     CROSS JOIN LATERAL pyxp.formula_input_problems(ru.action, ru.xp_coefficients, e.params, true) x
     ORDER BY x.code = 'PX017', e.event_index LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'event %: %', v_problem.event_index, v_problem.message
            USING ERRCODE = v_problem.code, HINT = v_problem.hint;
    END IF;

    SELECT array_agg(ROW(w.event_index, w.first_index, w.wallet, w.action, w.key, w.rule_id, w.amount,
                         w.campaign_id, w.subject, w.metadata, w.inputs, false, NULL, NULL)::pyxp.batch_row
                     ORDER BY w.event_index)
      INTO v_rows
      FROM (SELECT e.event_index, min(e.event_index) OVER (PARTITION BY e.key) AS first_index, e.wallet,
                   e.action, e.key, ru.rule_id,
                   pyxp.rule_amount(ru.xp_constant, ru.xp_coefficients, e.params) AS amount,
                   e.campaign_id, e.subject, e.metadata, e.inputs
              FROM unnest(v_events) e
              LEFT JOIN pyxp.rules ru ON ru.ruleset_id = v_ruleset AND ru.action = e.action) w;

    SELECT b.event_index, b.action, b.amount INTO v_problem
      FROM unnest(v_rows) b JOIN unnest(v_new) n ON n.event_index = b.event_index
     WHERE abs(b.amount) > 1e15
     ORDER BY b.event_index LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'event %: XP amount % of % is out of range', v_problem.event_index, v_problem.amount, v_problem.action
            USING ERRCODE = 'PX004', HINT = 'an award is at most 10^15 XP; check the formula inputs';
    END IF;

    -- 3. Idempotency. Within the batch, a repeated key must carry the same
    --    inputs (it then replays its first occurrence). Then claim the keys
    --    (key order: two batches never wait on each other in a cycle); a key
    --    already stored must carry the same inputs and replays.
    SELECT b.event_index, b.key, b.first_index INTO v_problem
      FROM unnest(v_rows) b JOIN unnest(v_rows) f ON f.event_index = b.first_index
     WHERE b.event_index <> b.first_index AND b.inputs IS DISTINCT FROM f.inputs
     ORDER BY b.event_index LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'event %: idempotency key % was already used with other inputs (event %)',
                        v_problem.event_index, quote_literal(v_problem.key), v_problem.first_index
            USING ERRCODE = 'PX010', HINT = 'repeat a call with exactly the same inputs to get its result again';
    END IF;
    WITH claimed AS (
        INSERT INTO pyxp.xp_requests (idempotency_key, inputs, ruleset_id)
        SELECT b.key, b.inputs, v_ruleset FROM unnest(v_rows) b
         WHERE b.event_index = b.first_index ORDER BY b.key
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING idempotency_key
    )
    SELECT array_agg(ROW(b.event_index, b.first_index, b.wallet, b.action, b.key, b.rule_id, b.amount,
                         b.campaign_id, b.subject, b.metadata, b.inputs,
                         c.idempotency_key IS NOT NULL AND b.event_index = b.first_index,
                         NULL, NULL)::pyxp.batch_row ORDER BY b.event_index)
      INTO v_rows
      FROM unnest(v_rows) b LEFT JOIN claimed c ON c.idempotency_key = b.key;
    SELECT b.event_index, b.key, q.inputs AS first_inputs, b.inputs INTO v_problem
      FROM unnest(v_rows) b JOIN pyxp.xp_requests q ON q.idempotency_key = b.key
     WHERE b.event_index = b.first_index AND NOT b.claimed AND q.inputs IS DISTINCT FROM b.inputs
     ORDER BY b.event_index LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'event %: idempotency key % was already used with other inputs',
                        v_problem.event_index, quote_literal(v_problem.key)
            USING ERRCODE = 'PX010', DETAIL = format('first call: %s; this call: %s', v_problem.first_inputs, v_problem.inputs),
                  HINT = 'repeat a call with exactly the same inputs to get its result again';
    END IF;

    -- 4. Balance rows: create the missing ones, then lock all in wallet order.
    INSERT INTO pyxp.xp_balances (user_wallet, total_xp, current_level, xp_to_next_level)
    SELECT w.wallet, 0, c.level, c.next_level_xp::bigint
      FROM (SELECT DISTINCT b.wallet FROM unnest(v_rows) b WHERE b.claimed) w
     CROSS JOIN pyxp.curve_position(v_ruleset, 0) c
     ORDER BY w.wallet
    ON CONFLICT (user_wallet) DO NOTHING;
    PERFORM 1 FROM pyxp.xp_balances x
     WHERE x.user_wallet IN (SELECT b.wallet FROM unnest(v_rows) b WHERE b.claimed)
     ORDER BY x.user_wallet FOR UPDATE;

    -- 5. Amounts applied and running balances, per wallet in event order.
    --    Without a floor, a window sum; with one, penalties depend on the
    --    running balance, so rows of a wallet are walked in order.
    IF v_floor IS NULL THEN
        SELECT array_agg(ROW(w.event_index, w.first_index, w.wallet, w.action, w.key, w.rule_id, w.amount,
                             w.campaign_id, w.subject, w.metadata, w.inputs, w.claimed,
                             CASE WHEN w.claimed THEN w.amount END,
                             CASE WHEN w.claimed THEN w.total_xp + w.running END)::pyxp.batch_row
                         ORDER BY w.event_index)
          INTO v_rows
          FROM (SELECT b.*, x.total_xp,
                       sum(b.amount) FILTER (WHERE b.claimed)
                           OVER (PARTITION BY b.wallet ORDER BY b.event_index) AS running
                  FROM unnest(v_rows) b LEFT JOIN pyxp.xp_balances x ON x.user_wallet = b.wallet) w;
    ELSE
        DECLARE
            v_row pyxp.batch_row;
            v_next pyxp.batch_row[] := '{}';
            v_wallet text;
            v_running numeric;
        BEGIN
            FOR v_row IN SELECT b.* FROM unnest(v_rows) b ORDER BY b.wallet, b.event_index LOOP
                IF v_row.claimed THEN
                    IF v_wallet IS DISTINCT FROM v_row.wallet THEN
                        v_wallet := v_row.wallet;
                        SELECT x.total_xp INTO v_running FROM pyxp.xp_balances x WHERE x.user_wallet = v_wallet;
                    END IF;
                    v_row.applied := pyxp.floored_amount(v_row.amount, v_floor, v_running);
                    v_running := v_running + v_row.applied;
                    v_row.balance_after := v_running;
                END IF;
                v_next := v_next || v_row;
            END LOOP;
            v_rows := v_next;
        END;
    END IF;
    SELECT b.event_index, b.wallet, b.balance_after INTO v_problem FROM unnest(v_rows) b
     WHERE b.claimed AND b.balance_after NOT BETWEEN -pyxp.balance_limit() AND pyxp.balance_limit()
     ORDER BY b.event_index LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'event %: balance of % would be %, out of range', v_problem.event_index, v_problem.wallet,
                        v_problem.balance_after
            USING ERRCODE = 'PX019', HINT = 'a balance stays between -2^62 and 2^62';
    END IF;

    -- 6. Append the rows (wallet, event order: ids follow each balance_after chain)
    --    and update each balance once.
    INSERT INTO pyxp.xp_transactions (user_wallet, transaction_type, xp_amount, xp_requested, balance_after,
                                      rule_id, campaign_id, subject, idempotency_key, metadata)
    SELECT b.wallet, b.action, b.applied::bigint, CASE WHEN b.applied <> b.amount THEN b.amount::bigint END,
           b.balance_after::bigint, b.rule_id, b.campaign_id, b.subject, b.key, b.metadata
      FROM unnest(v_rows) b WHERE b.claimed
     ORDER BY b.wallet, b.event_index;

    UPDATE pyxp.xp_balances x
       SET total_xp = f.balance_after, current_level = c.level,
           xp_to_next_level = (c.next_level_xp - f.balance_after)::bigint, updated_at = now()
      FROM (SELECT DISTINCT ON (b.wallet) b.wallet, b.balance_after::bigint AS balance_after
              FROM unnest(v_rows) b WHERE b.claimed ORDER BY b.wallet, b.event_index DESC) f
     CROSS JOIN LATERAL pyxp.curve_position(v_ruleset, f.balance_after) c
     WHERE x.user_wallet = f.wallet;

    -- 7. One result row per event, in event order: new rows, or the rows its
    --    key produced before (replayed).
    RETURN QUERY
        SELECT b.event_index, t.id, t.user_wallet, t.transaction_type, t.xp_amount, t.xp_requested,
               t.balance_after, now_.level, (now_.next_level_xp - t.balance_after)::bigint, before_.level,
               NOT (b.claimed AND b.event_index = b.first_index)
          FROM unnest(v_rows) b
          JOIN pyxp.xp_requests q ON q.idempotency_key = b.key
          JOIN pyxp.xp_transactions t ON t.idempotency_key = b.key
         CROSS JOIN LATERAL pyxp.curve_position(q.ruleset_id, t.balance_after) now_
         CROSS JOIN LATERAL pyxp.curve_position(q.ruleset_id, t.balance_after - t.xp_amount) before_
         ORDER BY b.event_index, t.id;
END
$$;
DROP FUNCTION pyxp.award_many(jsonb[]);
DROP FUNCTION pyxp.check_completion_owner(text, text, text, text);
DROP FUNCTION pyxp.cleaned_text(text, text, integer, text, boolean);
DROP FUNCTION pyxp.invisible_character(text);
DROP FUNCTION pyxp.key_part(text);
DROP FUNCTION pyxp.level_for(numeric);
DROP FUNCTION pyxp.lock_subject(text);
DROP FUNCTION pyxp.require_read_committed();
DROP FUNCTION pyxp.trimmed_text(text, boolean);
DROP FUNCTION pyxp.vote_key(text, text, text, text);

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pyxp FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pyxp.recalculate_levels() TO pyxp_writer;
GRANT EXECUTE ON FUNCTION pyxp.level_for(bigint) TO pyxp_writer, pyxp_reader;
DROP TABLE pyxp.subject_locks;
ALTER TABLE pyxp.campaigns ALTER COLUMN creator_wallet SET NOT NULL;
COMMENT ON FUNCTION pyxp.checked_wallet(text, text) IS NULL;
COMMENT ON FUNCTION pyxp.checked_email(text) IS NULL;
COMMENT ON FUNCTION pyxp.checked_campaign_type(text) IS NULL;
COMMENT ON FUNCTION pyxp.checked_vote(text) IS NULL;
COMMENT ON FUNCTION pyxp.checked_identifier(text, text, integer) IS NULL;
COMMENT ON FUNCTION pyxp.checked_number(text, numeric) IS NULL;
COMMENT ON FUNCTION pyxp.checked_params(jsonb) IS NULL;
COMMENT ON FUNCTION pyxp.checked_context(jsonb) IS NULL;
COMMENT ON FUNCTION pyxp.checked_row_count(text, integer, integer) IS NULL;
COMMENT ON FUNCTION pyxp.checked_award_key(text) IS NULL;
COMMENT ON FUNCTION pyxp.context_column(jsonb, text, integer) IS NULL;
COMMENT ON FUNCTION pyxp.active_ruleset_id() IS NULL;
COMMENT ON FUNCTION pyxp.curve_position(bigint, bigint) IS NULL;
COMMENT ON FUNCTION pyxp.level_for(bigint) IS NULL;
COMMENT ON FUNCTION pyxp.recalculate_levels() IS NULL;
COMMENT ON FUNCTION pyxp.check_ruleset_definition(jsonb) IS NULL;
COMMENT ON FUNCTION pyxp.install_ruleset(jsonb, text) IS NULL;
COMMENT ON FUNCTION pyxp.rule_amount(numeric, jsonb, jsonb) IS NULL;
COMMENT ON FUNCTION pyxp.floored_amount(numeric, bigint, numeric) IS NULL;
COMMENT ON FUNCTION pyxp.balance_limit() IS NULL;
COMMENT ON FUNCTION pyxp.claim_request(text, jsonb, bigint) IS NULL;
COMMENT ON FUNCTION pyxp.replayed_award(text, jsonb, text, text) IS NULL;
COMMENT ON FUNCTION pyxp.write_ledger_rows(text, bigint, text, pyxp.planned_row[], integer, boolean) IS NULL;
COMMENT ON FUNCTION pyxp.formula_input_problems(text, jsonb, jsonb, boolean) IS NULL;
COMMENT ON FUNCTION pyxp.planned_rows(bigint[], jsonb, boolean, text, text, jsonb) IS NULL;
COMMENT ON FUNCTION pyxp.post_award(text, jsonb, text, text, text, text, text[], jsonb, boolean, text, text, jsonb, integer, text) IS NULL;
COMMENT ON FUNCTION pyxp.award(text, text, text, jsonb, jsonb) IS NULL;
COMMENT ON FUNCTION pyxp.reverse_transaction(bigint, text) IS NULL;
COMMENT ON FUNCTION pyxp.resolved_campaign_type(text, text) IS NULL;
COMMENT ON FUNCTION pyxp.required_campaign_type(text) IS NULL;
COMMENT ON FUNCTION pyxp.formula_inputs(numeric, numeric, numeric) IS NULL;
COMMENT ON FUNCTION pyxp.award_campaign_creation(text, text, text, numeric, boolean, boolean) IS NULL;
COMMENT ON FUNCTION pyxp.award_campaign_approval(text, text) IS NULL;
COMMENT ON FUNCTION pyxp.award_moderation_vote(text, text, text, text) IS NULL;
COMMENT ON FUNCTION pyxp.award_completion(text, text, text, text, boolean, boolean, boolean, numeric, numeric) IS NULL;
COMMENT ON FUNCTION pyxp.award_completion_moderation(text, text, text, text, text) IS NULL;
COMMENT ON FUNCTION pyxp.lock_client_email(text) IS NULL;
COMMENT ON FUNCTION pyxp.register_agency_client(text, text, text, text) IS NULL;
COMMENT ON FUNCTION pyxp.onboard_agency_client(text, text) IS NULL;
COMMENT ON FUNCTION pyxp.balance(text) IS NULL;
COMMENT ON FUNCTION pyxp.history(text, integer, bigint) IS NULL;
COMMENT ON FUNCTION pyxp.leaderboard(integer, integer) IS NULL;
COMMENT ON FUNCTION pyxp.wallet_rank(text) IS NULL;
COMMENT ON FUNCTION pyxp.audit() IS NULL;
COMMENT ON FUNCTION pyxp.award_many(jsonb) IS NULL;
COMMENT ON FUNCTION pyxp.refuse_ledger_change() IS NULL;
RESET ROLE;
