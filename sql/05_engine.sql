-- The award engine: the one place where ledger rows and balances are written.
--
--   public function (award, award_completion, ...)   validates and normalises inputs
--     -> pyxp.post_award(...)     claims the idempotency key, resolves the rules of
--                                 the active ruleset, evaluates their linear forms
--       -> pyxp.write_ledger_rows(...)   locks the wallet's balance row, appends
--                                        the rows, updates the balance and level
--
-- Atomicity: each public function runs in its caller's transaction; any error
-- aborts all of it, so a refusal never leaves a row behind.
-- Idempotency: pyxp.xp_requests' primary key. A second call with the same key
-- waits for the first one's transaction, then replays its rows (replayed =
-- true) or, with other inputs, raises PX010. Nothing is written by a replay.
-- Concurrency: one call touches one wallet; its rows are appended under that
-- wallet's balance row lock (FOR UPDATE), so awards to one wallet serialise
-- and never lose or double an amount.
-- Plans: every statement of an award is a keyed lookup or insert, so the
-- writing entry points run with plan_cache_mode = force_generic_plan (it
-- applies to the functions they call): planning each statement anew cost
-- more than executing it (measured: about 45 % of an award's server time).

-- The arithmetic every write path shares (single awards, batches).

-- A rule's XP for the given inputs: round_half_away(constant + sum(coef * input))
-- (numeric round() rounds halves away from zero). PL/pgSQL, not SQL: a SQL
-- function with a sub-select cannot be inlined and would be planned anew at
-- every call (measured: +50 % on an award).
CREATE FUNCTION pyxp.rule_amount(p_constant numeric, p_coefficients jsonb, p_params jsonb)
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

-- A balance floor cuts a penalty to what keeps the balance at the floor; a
-- balance already below it (floor raised later) loses nothing more. Gains,
-- and every amount without a floor, apply in full.
CREATE FUNCTION pyxp.floored_amount(p_amount numeric, p_floor bigint, p_balance numeric)
RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN p_floor IS NOT NULL AND p_amount < 0
                THEN greatest(p_amount, least(0, p_floor - p_balance))
                ELSE p_amount END
$$;

-- Balances stay within [-2^62, 2^62] (PX019): xp_to_next_level and every
-- threshold computation then fit in bigint.
CREATE FUNCTION pyxp.balance_limit()
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT 4611686018427387904::bigint $$;

-- A ledger row about to be written (amount before any balance floor).
CREATE TYPE pyxp.planned_row AS (
    transaction_type  text,
    xp_amount         bigint,
    rule_id           bigint,
    campaign_id       text,
    subject           text,
    metadata          jsonb,
    reverses          bigint
);

-- Records a call's key and inputs. true: this call is the first with this key
-- and must do the work. false: the key was used before (possibly by a
-- concurrent transaction this INSERT waited for): the caller replays.
CREATE FUNCTION pyxp.claim_request(p_key text, p_inputs jsonb, p_ruleset_id bigint)
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

-- The original result of an earlier call with this key, marked replayed.
-- Levels are computed on the curve that was active for the original call, so
-- the replay returns what the original call returned. Other inputs: PX010
-- (or the caller's code and message, e.g. PX014 for a second reversal).
CREATE FUNCTION pyxp.replayed_award(p_key text, p_inputs jsonb,
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

-- Appends planned rows for one wallet and updates its balance, under the
-- balance row lock. Applies the ruleset's balance floor to penalties when
-- p_apply_floor (the row then records xp_requested). A balance leaving
-- [-2^62, 2^62] is refused (PX019). p_moderations is added to
-- total_moderations in the same UPDATE.
CREATE FUNCTION pyxp.write_ledger_rows(p_wallet text, p_ruleset_id bigint, p_key text,
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
    v_feed xid8;
BEGIN
    IF cardinality(p_rows) = 0 AND p_moderations = 0 THEN
        RETURN;
    END IF;
    -- The wallet's lock. A new wallet's row is inserted first; a concurrent
    -- insert of the same wallet makes ON CONFLICT wait, then we lock its row.
    SELECT b.total_xp, b.last_feed_xid INTO v_running, v_feed
      FROM pyxp.xp_balances b WHERE b.user_wallet = p_wallet FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO pyxp.xp_balances (user_wallet, total_xp, current_level, xp_to_next_level)
        SELECT p_wallet, 0, c.level, c.next_level_xp::bigint FROM pyxp.curve_position(p_ruleset_id, 0) c
        ON CONFLICT (user_wallet) DO NOTHING;
        SELECT b.total_xp, b.last_feed_xid INTO STRICT v_running, v_feed
          FROM pyxp.xp_balances b WHERE b.user_wallet = p_wallet FOR UPDATE;
    END IF;
    -- The feed group of these rows (sql/11_changes.sql): this transaction's
    -- id, or the wallet's last group if that is higher (greatest skips NULL).
    v_feed := greatest(pg_current_xact_id(), v_feed);
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
                                          idempotency_key, metadata, reverses, feed_xid)
        VALUES (p_wallet, v_row.transaction_type, v_out.xp_amount, v_out.xp_requested,
                v_running, v_row.rule_id, v_row.campaign_id, v_row.subject,
                p_key, coalesce(v_row.metadata, '{}'), v_row.reverses, v_feed)
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
           updated_at = now(),
           last_feed_xid = CASE WHEN cardinality(p_rows) > 0 THEN v_feed ELSE b.last_feed_xid END
     WHERE b.user_wallet = p_wallet;
END
$$;

-- Why params cannot feed a rule's formula, one row per problem: an input the
-- formula needs and params lack (PX018); with p_strict, a param the formula
-- does not use (PX017: a typo in a manual award's params). Callers raise the
-- first, missing inputs first. Shared by single awards and batches.
CREATE FUNCTION pyxp.formula_input_problems(p_action text, p_coefficients jsonb, p_params jsonb,
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

-- Evaluates rules' linear forms: round_half_away(constant + sum(coef * input)).
-- Input problems as formula_input_problems (p_strict is only passed with the
-- single rule of an action code, pyxp.award). An amount beyond +-10^15: PX004.
CREATE FUNCTION pyxp.planned_rows(p_rule_ids bigint[], p_params jsonb, p_strict boolean,
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

-- Claims the key, resolves the rules of the active ruleset and writes their
-- rows. Rules are chosen by action code (p_action, generic award) or by event:
-- every rule of that event whose campaign_types include p_campaign_type (or
-- are NULL) and whose condition is NULL or one of p_facts, in file order.
-- Amounts come only from the rules: no XP figure is written in PL/pgSQL.
CREATE FUNCTION pyxp.post_award(
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
    PERFORM pyxp.require_read_committed();
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

-- Public: awards the active rule `action` to `wallet`, once per
-- idempotency_key. params: the formula inputs ({"PRICE_COMPLETION": 300});
-- context: free JSON kept in the row's metadata (its "campaign_id" and
-- "subject", if texts, also fill those columns). The key's inputs are action,
-- wallet and params: a retry with another context is a replay.
CREATE FUNCTION pyxp.award(wallet text, action text, idempotency_key text,
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

-- Public: appends a compensating row (transaction_type REVERSAL, the opposite
-- of the applied amount, reverses = transaction_id) to the same wallet.
-- A row is reversed once: repeating the call with the same reason replays,
-- another reason is refused (PX014), as is reversing a reversal. The balance
-- floor does not apply: a reversal compensates exactly.
CREATE FUNCTION pyxp.reverse_transaction(transaction_id bigint, reason text)
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
    PERFORM pyxp.require_read_committed();
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
