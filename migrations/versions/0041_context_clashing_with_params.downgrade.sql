-- 0041's downgrade: pyxp.planned_awards, pyxp.award, pyxp.award_many and
-- pyxp.checked_params as at 0040 (a context key clashing with a param keeps
-- the param's value); no pyxp.param_name.
SET LOCAL ROLE pyxp_owner;

CREATE OR REPLACE FUNCTION pyxp.planned_awards(p_ruleset bigint, p_events pyxp.batch_event[], p_batch boolean)
RETURNS pyxp.pending_row[]
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_rows pyxp.pending_row[];
    v_plain boolean;
    v_problem record;
BEGIN
    SELECT array_agg(ROW(e.event_index, e.wallet, e.key, e.inputs, e.action,
                         pyxp.rule_amount(ru.xp_constant, ru.xp_coefficients, e.params), NULL, true, ru.rule_id,
                         e.campaign_id, e.subject, e.metadata, NULL, 0)::pyxp.pending_row ORDER BY e.event_index),
           bool_and(ru.rule_id IS NOT NULL AND ru.xp_coefficients = '{}' AND e.params = '{}'
                    AND abs(ru.xp_constant) <= 1e15)
      INTO v_rows, v_plain
      FROM unnest(p_events) e
      LEFT JOIN pyxp.rules ru ON ru.ruleset_id = p_ruleset AND ru.action = e.action;
    IF v_plain THEN
        RETURN v_rows;
    END IF;

    -- The checks, in this order, on the events whose key is not claimed yet.
    SELECT e.event_index, x.code, x.message, x.hint INTO v_problem
      FROM unnest(p_events) e
      LEFT JOIN pyxp.rules ru ON ru.ruleset_id = p_ruleset AND ru.action = e.action
     CROSS JOIN LATERAL (
            SELECT 1 AS step, 'PX009' AS code, format('unknown action %s', quote_literal(e.action)) AS message,
                   (SELECT format('actions of the active ruleset %s v%s: %s', r.name, r.version,
                                  (SELECT string_agg(a.action, ', ' ORDER BY a.position)
                                     FROM pyxp.rules a WHERE a.ruleset_id = r.ruleset_id))
                      FROM pyxp.rulesets r WHERE r.ruleset_id = p_ruleset) AS hint
             WHERE ru.rule_id IS NULL
            UNION ALL
            SELECT CASE p.code WHEN 'PX018' THEN 2 ELSE 3 END, p.code, p.message, p.hint
              FROM pyxp.formula_input_problems(ru.action, ru.xp_coefficients, e.params, true) p
             WHERE ru.rule_id IS NOT NULL
            UNION ALL
            SELECT 4, 'PX004', format('XP amount %s of %s is out of range',
                                      pyxp.rule_amount(ru.xp_constant, ru.xp_coefficients, e.params), ru.action),
                   'an award is at most 10^15 XP; check the formula inputs'
             WHERE ru.rule_id IS NOT NULL AND abs(pyxp.rule_amount(ru.xp_constant, ru.xp_coefficients, e.params)) > 1e15
         ) x
     WHERE NOT EXISTS (SELECT FROM pyxp.xp_award_claims c  -- LIMIT: a probe per event, never a hash join
                        WHERE c.key_hash = pyxp.key_hash(e.key) LIMIT 1)
     ORDER BY x.step, e.event_index
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '%', CASE WHEN p_batch THEN format('event %s: ', v_problem.event_index) ELSE '' END
                             || v_problem.message
            USING ERRCODE = v_problem.code, HINT = v_problem.hint;
    END IF;
    RETURN v_rows;
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
    v_event pyxp.batch_event;
    v_ruleset record;
BEGIN
    v_event.event_index := 0;
    v_event.wallet := pyxp.checked_wallet(award.wallet);
    v_event.action := pyxp.checked_identifier('action', award.action, 64);
    v_event.key := pyxp.checked_award_key(award.idempotency_key);
    v_event.params := pyxp.checked_params(award.params);
    v_event.metadata := pyxp.checked_context(award.context);
    v_event.campaign_id := pyxp.context_column(v_event.metadata, 'campaign_id', 128);
    v_event.subject := pyxp.context_column(v_event.metadata, 'subject', 256);
    v_event.metadata := v_event.metadata || v_event.params;
    v_event.inputs := jsonb_build_object('action', v_event.action, 'wallet', v_event.wallet,
                                         'params', v_event.params);
    SELECT * INTO v_ruleset FROM pyxp.writing_ruleset();
    RETURN QUERY
        SELECT w.transaction_id, w.user_wallet, w.transaction_type, w.xp_amount, w.xp_requested, w.total_xp,
               w.current_level, w.xp_to_next_level, w.previous_level, w.replayed
          FROM pyxp.append_rows(v_ruleset.ruleset_id, v_ruleset.balance_floor, v_ruleset.timezone,
                                v_ruleset.has_caps,
                                pyxp.planned_awards(v_ruleset.ruleset_id, ARRAY[v_event], false), false) w;
END
$$;

CREATE OR REPLACE FUNCTION pyxp.award_many(events jsonb)
RETURNS SETOF pyxp.batch_award_result
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_events pyxp.batch_event[] := '{}';
    v_event pyxp.batch_event;
    v_item jsonb;
    v_index integer := -1;
    v_ruleset record;
    v_problem record;
    v_message text;
    v_hint text;
    v_code text;
BEGIN
    IF pg_column_size(award_many.events) > 16777216 THEN  -- size before work
        RAISE EXCEPTION 'a batch holds at most 16 MiB of JSON, got % bytes', pg_column_size(award_many.events)
            USING ERRCODE = 'PX023', HINT = 'split the batch';
    ELSIF jsonb_typeof(award_many.events) IS DISTINCT FROM 'array' THEN
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
        -- A field pyxp does not read is a mistake, not a note: a misspelt
        -- "params" or "context" was dropped and the award made without it
        -- (0028, a hostile test). One query over the batch, every event an
        -- object by now. An event whose key is claimed is a retry, which
        -- replays whatever it carries (a batch made before 0028 was refused
        -- on its retry: a second hostile test).
        SELECT e.i - 1 AS event_index, k.key INTO v_problem
          FROM jsonb_array_elements(award_many.events) WITH ORDINALITY e(item, i)
         CROSS JOIN LATERAL jsonb_object_keys(e.item) k(key)
         WHERE k.key NOT IN ('wallet', 'action', 'idempotency_key', 'params', 'context')
           AND NOT EXISTS (SELECT FROM pyxp.xp_award_claims c
                            WHERE c.key_hash = pyxp.key_hash(v_events[e.i].key) LIMIT 1)
         ORDER BY e.i
         LIMIT 1;
        IF FOUND THEN
            v_index := v_problem.event_index;
            RAISE EXCEPTION 'unknown field %', quote_literal(left(v_problem.key, 70)) USING ERRCODE = 'PX017',
                HINT = 'an event holds "wallet", "action", "idempotency_key", and optionally "params" and "context"';
        END IF;
    EXCEPTION WHEN SQLSTATE 'PX001' OR SQLSTATE 'PX004' OR SQLSTATE 'PX016' OR SQLSTATE 'PX017' THEN
        GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT, v_hint = PG_EXCEPTION_HINT, v_code = RETURNED_SQLSTATE;
        RAISE EXCEPTION 'event %: %', v_index, v_message
            USING ERRCODE = v_code, HINT = coalesce(nullif(v_hint, ''), 'see README: Error codes');
    END;

    -- 2. Within the batch, a repeated key must carry the same inputs.
    SELECT e.event_index, e.key, f.event_index AS first_index INTO v_problem
      FROM (SELECT e.*, min(e.event_index) OVER (PARTITION BY e.key) AS first_index FROM unnest(v_events) e) e
      JOIN unnest(v_events) f ON f.event_index = e.first_index
     WHERE e.event_index <> e.first_index AND e.inputs IS DISTINCT FROM f.inputs
     ORDER BY e.event_index LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'event %: idempotency key % was already used with other inputs (event %)',
                        v_problem.event_index, quote_literal(v_problem.key), v_problem.first_index
            USING ERRCODE = 'PX010', HINT = 'repeat a call with exactly the same inputs to get its result again';
    END IF;

    PERFORM pyxp.counted_transaction_rows(cardinality(v_events));  -- the feed's bound (sql/11_changes.sql)
    -- 3. Plan and write the first occurrence of each key; one result row per
    --    event, in event order: its rows, or its first occurrence's (replayed).
    SELECT * INTO v_ruleset FROM pyxp.writing_ruleset();
    RETURN QUERY
        WITH firsts AS (
            SELECT e.event_index, min(e.event_index) OVER (PARTITION BY e.key) AS first_index
              FROM unnest(v_events) e
        ), written AS (
            SELECT * FROM pyxp.append_rows(
                v_ruleset.ruleset_id, v_ruleset.balance_floor, v_ruleset.timezone, v_ruleset.has_caps,
                pyxp.planned_awards(v_ruleset.ruleset_id,
                                    ARRAY(SELECT e FROM unnest(v_events) e
                                            JOIN firsts f ON f.event_index = e.event_index
                                           WHERE f.first_index = f.event_index
                                           ORDER BY e.event_index), true),
                true)
        )
        SELECT f.event_index, w.transaction_id, w.user_wallet, w.transaction_type, w.xp_amount, w.xp_requested,
               w.total_xp, w.current_level, w.xp_to_next_level, w.previous_level,
               w.replayed OR f.event_index <> f.first_index
          FROM firsts f JOIN written w ON w.event_index = f.first_index
         ORDER BY f.event_index, w.transaction_id;
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
    IF p_params IS NULL OR p_params = '{}' THEN  -- no inputs (most awards): no query
        RETURN v_result;
    ELSIF pg_column_size(p_params) > 65536 THEN  -- size before work: 64 inputs fit in far less
        RAISE EXCEPTION 'invalid params: % bytes', pg_column_size(p_params)
            USING ERRCODE = 'PX017', HINT = 'params holds at most 64 formula inputs';
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
        IF v_result ? upper(replace(v_item.key, '$', '') COLLATE "C") THEN
            RAISE EXCEPTION 'invalid params: input % given twice', upper(replace(v_item.key, '$', '') COLLATE "C")
                USING ERRCODE = 'PX017', HINT = 'input names are case-insensitive and ignore $: give each once';
        END IF;
        -- trim_scale: 300.0 and 300 are one input (a generic award's claim
        -- keeps a digest of its inputs' text).
        v_result := v_result || jsonb_build_object(
            upper(replace(v_item.key, '$', '') COLLATE "C"),
            trim_scale(pyxp.checked_number(v_item.key, v_item.value::numeric)));
    END LOOP;
    RETURN v_result;
END
$$;

DROP FUNCTION pyxp.param_name(text);

CREATE OR REPLACE FUNCTION pyxp.schema_revision()
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$ SELECT '0040' $$;

RESET ROLE;
