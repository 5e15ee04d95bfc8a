-- 0005: one write path (pyxp.append_rows) and lean idempotency records.
-- Frozen copy of what sql/*.sql defines at this revision; never edit it.
--
-- Carries the ledger into the new form: a generic award's claim is its
-- ledger row (request_digest = pyxp.inputs_digest of the inputs its request
-- stored, under the unique index xp_transactions_claim), so those requests
-- leave xp_requests; flows and reversals keep theirs. The ledger's rows are
-- otherwise unchanged: request_digest is set on those claim rows only, with
-- the append-only trigger disabled for this one statement, inside this
-- migration's transaction (the owner's documented operation).
SET LOCAL ROLE pyxp_owner;

DROP FUNCTION pyxp.write_ledger_rows(p_wallet text, p_ruleset_id bigint, p_key text, p_rows pyxp.planned_row[], p_moderations integer, p_apply_floor boolean);
DROP FUNCTION pyxp.planned_rows(p_rule_ids bigint[], p_params jsonb, p_strict boolean, p_campaign_id text, p_subject text, p_metadata jsonb);
DROP FUNCTION pyxp.post_award( p_key text, p_inputs jsonb, p_wallet text, p_action text, p_event text, p_campaign_type text, p_facts text[], p_params jsonb, p_strict_params boolean, p_campaign_id text, p_subject text, p_metadata jsonb, p_moderations integer, p_conflict_message text);
DROP TYPE pyxp.planned_row;
DROP TYPE pyxp.batch_row;

ALTER TABLE pyxp.xp_transactions
    DROP CONSTRAINT xp_transactions_rule_id_fkey,
    DROP CONSTRAINT xp_transactions_idempotency_key_fkey,
    ADD COLUMN request_digest bigint;

CREATE TYPE pyxp.pending_row AS (
    call_index        integer,   -- the batch event it belongs to (0 outside award_many)
    user_wallet       text,
    idempotency_key   text,
    inputs            jsonb,     -- a generic award's canonical inputs: its claim;
                                 -- NULL: the caller claimed the key in xp_requests
    transaction_type  text,
    xp_amount         numeric,   -- to apply (the rule's amount, or what the floor left of it)
    xp_requested      numeric,   -- the rule's amount when the balance floor cut it, else NULL
    apply_floor       boolean,   -- false: a reversal compensates exactly
    rule_id           bigint,
    campaign_id       text,
    subject           text,
    metadata          jsonb,
    reverses          bigint,
    moderations       integer    -- added to the wallet's total_moderations (votes);
                                 -- a row without transaction_type only counts them
);

CREATE FUNCTION pyxp.key_hash(p_key text)
RETURNS uuid
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE STRICT
AS $$ BEGIN RETURN encode(substr(sha256(convert_to(p_key, 'UTF8')), 1, 16), 'hex')::uuid; END $$;

CREATE FUNCTION pyxp.inputs_digest(p_inputs jsonb)
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE STRICT
AS $$ BEGIN RETURN ('x' || encode(substr(sha256(convert_to(p_inputs::text, 'UTF8')), 1, 8), 'hex'))::bit(64)::bigint; END $$;

CREATE FUNCTION pyxp.row_ruleset(p_rule_id bigint, p_key text)
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

CREATE FUNCTION pyxp.append_rows(p_ruleset bigint, p_floor bigint, p_rows pyxp.pending_row[],
                                 p_batch boolean)
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
    -- A balance floor cuts penalties by the running balance (slow path:
    -- floors are rare): xp_amount becomes what applies, xp_requested keeps
    -- what the rule asked.
    IF p_floor IS NOT NULL AND EXISTS (SELECT FROM unnest(v_rows) r WHERE r.apply_floor AND r.xp_amount < 0) THEN
        v_rows := pyxp.floored_rows(p_ruleset, v_rows, p_floor);
    END IF;

    -- 2. Under the locks (a new statement: READ COMMITTED sees what the
    --    previous holder committed): each generic award's claim made before
    --    (a replay, or PX010 for other inputs), then the running balances,
    --    per wallet in row order, and the feed group (sql/11_changes.sql:
    --    this transaction's id, or the wallet's last group if higher).
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
            RETURN QUERY SELECT * FROM pyxp.append_rows(p_ruleset, p_floor, p_rows, p_batch);  -- now a replay
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
    --    active curve, the votes it counts.
    UPDATE pyxp.xp_balances x
       SET total_xp = coalesce(f.after::bigint, x.total_xp), current_level = c.level,
           xp_to_next_level = (c.next_level_xp - coalesce(f.after::bigint, x.total_xp))::bigint,
           total_moderations = x.total_moderations + f.moderations, updated_at = now(),
           last_feed_xid = coalesce(f.feed, x.last_feed_xid)
      FROM (SELECT r.user_wallet,
                   (array_agg(r.after ORDER BY r.ord DESC) FILTER (WHERE r.id IS NOT NULL))[1] AS after,
                   max(r.feed) FILTER (WHERE r.id IS NOT NULL) AS feed,
                   sum(r.moderations) FILTER (WHERE r.claim IS NULL)::bigint AS moderations,
                   (array_agg(b.total_xp))[1] AS total_xp
              FROM ROWS FROM (unnest(v_rows), unnest(v_claims), unnest(v_after), unnest(v_feed), unnest(v_ids))
                   WITH ORDINALITY r(call_index, user_wallet, idempotency_key, inputs, transaction_type, xp_amount,
                                     xp_requested, apply_floor, rule_id, campaign_id, subject, metadata, reverses,
                                     moderations, claim, after, feed, id, ord)
             CROSS JOIN LATERAL (SELECT b.total_xp FROM pyxp.xp_balances b WHERE b.user_wallet = r.user_wallet LIMIT 1) b
             GROUP BY r.user_wallet) f
     CROSS JOIN LATERAL pyxp.curve_position(p_ruleset, coalesce(f.after::bigint, f.total_xp)) c
     WHERE x.user_wallet = f.user_wallet AND (f.after IS NOT NULL OR f.moderations <> 0);

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

CREATE FUNCTION pyxp.raise_key_conflict(p_batch boolean, p_call_index integer, p_key text, p_inputs jsonb,
                                        p_first_wallet text, p_first_type text, p_first_amount bigint,
                                        p_first_metadata jsonb)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION '%idempotency key % was already used with other inputs',
                    CASE WHEN p_batch THEN format('event %s: ', p_call_index) ELSE '' END, quote_literal(p_key)
        USING ERRCODE = 'PX010',
              DETAIL = format('first call: %s; this call: %s',
                              jsonb_build_object('action', p_first_type, 'wallet', p_first_wallet,
                                                 'xp_amount', p_first_amount, 'metadata', p_first_metadata),
                              p_inputs),
              HINT = 'repeat a call with exactly the same inputs to get its result again';
END
$$;

CREATE FUNCTION pyxp.floored_rows(p_ruleset bigint, p_rows pyxp.pending_row[], p_floor bigint)
RETURNS pyxp.pending_row[]
LANGUAGE plpgsql
AS $$
DECLARE
    v_row record;
    v_next pyxp.pending_row[] := p_rows;
    v_wallet text;
    v_running numeric;
    v_applied numeric;
BEGIN
    FOR v_row IN
        SELECT r.ordinality AS ord, r.user_wallet, r.xp_amount, r.apply_floor,
               EXISTS (SELECT FROM pyxp.xp_transactions k
                        WHERE r.inputs IS NOT NULL AND k.request_digest IS NOT NULL
                          AND pyxp.key_hash(k.idempotency_key) = pyxp.key_hash(r.idempotency_key)
                        LIMIT 1) AS claimed
          FROM unnest(p_rows) WITH ORDINALITY r
         ORDER BY r.user_wallet, r.ordinality
    LOOP
        CONTINUE WHEN v_row.claimed;
        IF v_wallet IS DISTINCT FROM v_row.user_wallet THEN
            v_wallet := v_row.user_wallet;
            SELECT b.total_xp INTO v_running FROM pyxp.xp_balances b WHERE b.user_wallet = v_wallet FOR UPDATE;
            v_running := coalesce(v_running, 0);
        END IF;
        v_applied := CASE WHEN v_row.apply_floor THEN pyxp.floored_amount(v_row.xp_amount, p_floor, v_running)
                          ELSE v_row.xp_amount END;
        IF v_applied <> v_row.xp_amount THEN
            v_next[v_row.ord].xp_requested := v_row.xp_amount;
            v_next[v_row.ord].xp_amount := v_applied;
        END IF;
        v_running := v_running + v_applied;
    END LOOP;
    RETURN v_next;
END
$$;

CREATE FUNCTION pyxp.writing_ruleset(OUT ruleset_id bigint, OUT balance_floor bigint)
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pyxp.require_read_committed();
    LOCK TABLE pyxp.xp_balances IN ROW EXCLUSIVE MODE;
    SELECT r.ruleset_id, r.balance_floor INTO ruleset_id, balance_floor FROM pyxp.rulesets r WHERE r.is_active;
    IF ruleset_id IS NULL THEN
        PERFORM pyxp.active_ruleset_id();  -- PX020
    END IF;
END
$$;

CREATE FUNCTION pyxp.planned_awards(p_ruleset bigint, p_events pyxp.batch_event[], p_batch boolean)
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
     WHERE NOT EXISTS (SELECT FROM pyxp.xp_transactions k  -- LIMIT: a probe per event, never a hash join
                        WHERE k.request_digest IS NOT NULL AND pyxp.key_hash(k.idempotency_key) = pyxp.key_hash(e.key)
                        LIMIT 1)
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

CREATE FUNCTION pyxp.post_award(
    p_key text, p_inputs jsonb, p_wallet text,
    p_event text, p_campaign_type text, p_facts text[], p_params jsonb,
    p_campaign_id text, p_subject text, p_metadata jsonb, p_moderations integer,
    p_conflict_message text DEFAULT NULL)
RETURNS SETOF pyxp.award_result
LANGUAGE plpgsql
AS $$
DECLARE
    v_ruleset record;
    v_rows pyxp.pending_row[];
    v_problem record;
BEGIN
    SELECT * INTO v_ruleset FROM pyxp.writing_ruleset();
    IF NOT pyxp.claim_request(p_key, p_inputs, v_ruleset.ruleset_id) THEN
        RETURN QUERY SELECT * FROM pyxp.replayed_award(p_key, p_inputs, p_conflict_message);
        RETURN;
    END IF;

    SELECT x.code, x.message, x.hint INTO v_problem
      FROM pyxp.rules ru
     CROSS JOIN LATERAL pyxp.formula_input_problems(ru.action, ru.xp_coefficients, p_params, false) x
     WHERE ru.ruleset_id = v_ruleset.ruleset_id AND ru.event = p_event
       AND (ru.campaign_types IS NULL OR p_campaign_type = ANY (ru.campaign_types))
       AND (ru.condition IS NULL OR ru.condition = ANY (p_facts))
     ORDER BY ru.position
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '%', v_problem.message USING ERRCODE = v_problem.code, HINT = v_problem.hint;
    END IF;
    v_rows := ARRAY(
        SELECT ROW(0, p_wallet, p_key, NULL, ru.action,
                   pyxp.rule_amount(ru.xp_constant, ru.xp_coefficients, p_params), NULL, true, ru.rule_id,
                   p_campaign_id, p_subject, p_metadata, NULL, 0)::pyxp.pending_row
          FROM pyxp.rules ru
         WHERE ru.ruleset_id = v_ruleset.ruleset_id AND ru.event = p_event
           AND (ru.campaign_types IS NULL OR p_campaign_type = ANY (ru.campaign_types))
           AND (ru.condition IS NULL OR ru.condition = ANY (p_facts))
         ORDER BY ru.position);
    SELECT r.transaction_type, r.xp_amount INTO v_problem FROM unnest(v_rows) r WHERE abs(r.xp_amount) > 1e15 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'XP amount % of % is out of range', v_problem.xp_amount, v_problem.transaction_type
            USING ERRCODE = 'PX004', HINT = 'an award is at most 10^15 XP; check the formula inputs';
    END IF;
    IF p_moderations > 0 THEN  -- counted once, with the call's first row (or alone)
        IF cardinality(v_rows) = 0 THEN
            v_rows := ARRAY[ROW(0, p_wallet, p_key, NULL, NULL, 0, NULL, false, NULL, NULL, NULL, NULL, NULL,
                                p_moderations)::pyxp.pending_row];
        ELSE
            v_rows[1].moderations := p_moderations;
        END IF;
    END IF;
    RETURN QUERY
        SELECT w.transaction_id, w.user_wallet, w.transaction_type, w.xp_amount, w.xp_requested, w.total_xp,
               w.current_level, w.xp_to_next_level, w.previous_level, w.replayed
          FROM pyxp.append_rows(v_ruleset.ruleset_id, v_ruleset.balance_floor, v_rows, false) w;
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
        IF v_result ? upper(replace(v_item.key, '$', '')) THEN
            RAISE EXCEPTION 'invalid params: input % given twice', upper(replace(v_item.key, '$', ''))
                USING ERRCODE = 'PX017', HINT = 'input names are case-insensitive and ignore $: give each once';
        END IF;
        -- trim_scale: 300.0 and 300 are one input (a generic award's claim
        -- keeps a digest of its inputs' text).
        v_result := v_result || jsonb_build_object(
            upper(replace(v_item.key, '$', '')),
            trim_scale(pyxp.checked_number(v_item.key, v_item.value::numeric)));
    END LOOP;
    RETURN v_result;
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
         WHERE t.idempotency_key = p_key AND t.request_digest IS NULL
         ORDER BY t.id;
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
          FROM pyxp.append_rows(v_ruleset.ruleset_id, v_ruleset.balance_floor,
                                pyxp.planned_awards(v_ruleset.ruleset_id, ARRAY[v_event], false), false) w;
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
          FROM pyxp.append_rows(v_ruleset.ruleset_id, v_ruleset.balance_floor,
                                ARRAY[ROW(0, v_original.user_wallet, v_key, NULL, 'REVERSAL', -v_original.xp_amount,
                                          NULL, false, NULL, v_original.campaign_id, v_original.subject,
                                          jsonb_build_object('reason', v_reason,
                                                             'reversed_type', v_original.transaction_type),
                                          v_original.id, 0)::pyxp.pending_row], false) w;
END
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
    v_known pyxp.campaigns;
BEGIN
    -- The registry row first, locked until commit: a vote or completion that
    -- records the campaign's type meanwhile waits for this call, or this call
    -- waits for it and then sees the type it recorded (no creator yet). A
    -- campaign created before is the key's business (PX010, or a replay).
    PERFORM pyxp.require_read_committed();
    INSERT INTO pyxp.campaigns (campaign_id, campaign_type, creator_wallet)
    VALUES (v_campaign, v_type, v_wallet)
    ON CONFLICT ON CONSTRAINT campaigns_pkey DO NOTHING;
    SELECT * INTO STRICT v_known FROM pyxp.campaigns c WHERE c.campaign_id = v_campaign FOR UPDATE;
    IF v_known.creator_wallet IS NULL AND v_known.campaign_type <> v_type THEN
        RAISE EXCEPTION 'campaign % is %, not %', v_campaign, v_known.campaign_type, v_type
            USING ERRCODE = 'PX011', HINT = format('pass campaign_type %s', v_known.campaign_type);
    END IF;
    RETURN QUERY SELECT * FROM pyxp.post_award(
        'campaign.created:' || v_campaign,
        jsonb_build_object('wallet', v_wallet, 'campaign_type', v_type, 'mint_value', v_mint,
                           'winstory_creates_video', v_video, 'no_rewards', v_no_rewards),
        v_wallet, 'campaign.created', v_type,
        array_remove(ARRAY[CASE WHEN v_video THEN 'winstory_creates_video' END,
                           CASE WHEN v_no_rewards THEN 'no_rewards' END], NULL),
        v_params, v_campaign, NULL,
        jsonb_build_object('campaign_type', v_type, 'winstory_creates_video', v_video,
                           'no_rewards', v_no_rewards) || v_params,
        0, format('campaign %s was already created with other inputs', v_campaign));
    -- Recorded even when no rule awards anything (INDIVIDUAL in winstory). A
    -- row recorded by a vote or completion gets its creator; a replay finds
    -- the row complete: nothing is written.
    UPDATE pyxp.campaigns c SET creator_wallet = v_wallet
     WHERE c.campaign_id = v_campaign AND c.creator_wallet IS NULL;
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
        v_given, 'campaign.approved', v_known.campaign_type, '{}',
        '{}', v_campaign, NULL, '{}', 0,
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
        pyxp.vote_key('campaign.vote', v_campaign, 'campaign_id', v_wallet),
        jsonb_build_object('vote_decision', v_vote, 'campaign_type', v_type,
                           'wallet', v_wallet, 'campaign_id', v_campaign),
        v_wallet, 'campaign.vote', v_type, ARRAY[v_vote],
        '{}', v_campaign, NULL,
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
    v_key text;
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
    v_key := CASE WHEN v_event = 'completion.submitted' THEN 'completion.submitted:' ELSE 'completion.outcome:' END
             || v_completion;
    PERFORM pyxp.check_completion_owner(v_completion, v_wallet, v_campaign, v_key);
    RETURN QUERY SELECT * FROM pyxp.post_award(
        v_key,
        v_inputs, v_wallet, v_event, v_type,
        ARRAY[CASE WHEN v_paid THEN 'paid' ELSE 'free' END],
        v_params, v_campaign, v_completion,
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
    PERFORM pyxp.check_completion_owner(v_completion, NULL, v_campaign, '');
    RETURN QUERY SELECT * FROM pyxp.post_award(
        pyxp.vote_key('completion.vote', v_completion, 'completion_id', v_wallet),
        jsonb_build_object('vote_decision', v_vote, 'campaign_id', v_campaign, 'campaign_type', v_type,
                           'wallet', v_wallet, 'completion_id', v_completion),
        v_wallet, 'completion.vote', v_type, ARRAY[v_vote],
        '{}', v_campaign, v_completion,
        jsonb_build_object('vote_decision', v_vote, 'campaign_type', v_type), 1,
        format('moderator %s already voted on completion %s', v_wallet, v_completion));
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
    PERFORM pyxp.require_read_committed();
    PERFORM pyxp.lock_subject('client_email:' || v_email);
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
        v_wallet, 'client.onboarded', 'AGENCY_B2C', '{}',
        '{}', v_pending.campaigns[1], v_email,
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
                  WHERE q.idempotency_key ~ '^(campaign|completion)\.vote(/[0-9]+)?:'
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
    -- Identities stored before 0002 that today's checks would read otherwise
    -- (NFKC, Unicode whitespace, invisible characters): one person may be two
    -- wallets or emails here; a DBA decides what to merge.
    SELECT 'identity_not_normalised', b.user_wallet, NULL,
           CASE WHEN pyxp.invisible_character(f.form) IS NOT NULL
                THEN format('wallet %s holds U+%s, refused since 0002', quote_literal(b.user_wallet),
                            upper(lpad(to_hex(ascii(pyxp.invisible_character(f.form))), 4, '0')))
                ELSE format('wallet %s is read %s since 0002', quote_literal(b.user_wallet), quote_literal(f.form)) END
      FROM pyxp.xp_balances b
     CROSS JOIN LATERAL (SELECT CASE WHEN x.t ~* '^0x[0-9a-f]{40}$' THEN lower(x.t) ELSE x.t END AS form
                           FROM (SELECT pyxp.trimmed_text(b.user_wallet, true) AS t) x) f
     WHERE f.form <> b.user_wallet OR pyxp.invisible_character(f.form) IS NOT NULL
    UNION ALL
    SELECT 'identity_not_normalised', a.client_wallet, NULL,
           format('client email %s of registration %s is read %s since 0002', quote_literal(a.client_email), a.id,
                  coalesce(quote_literal(f.form), 'as refused'))
      FROM pyxp.agency_b2c_clients a
     CROSS JOIN LATERAL (SELECT CASE WHEN pyxp.invisible_character(x.t) IS NULL THEN x.t END AS form
                           FROM (SELECT lower(pyxp.trimmed_text(a.client_email, true)) AS t) x) f
     WHERE f.form IS DISTINCT FROM a.client_email
    UNION ALL
    SELECT CASE WHEN ru.rule_id IS NULL THEN 'rule_missing' ELSE 'rule_mismatch' END, t.user_wallet, t.id,
           CASE WHEN ru.rule_id IS NULL THEN format('rule %s of this row does not exist', t.rule_id)
                ELSE format('transaction_type %s but rule %s is %s', t.transaction_type, ru.rule_id, ru.action) END
      FROM pyxp.xp_transactions t
      LEFT JOIN pyxp.rules ru ON ru.rule_id = t.rule_id
     WHERE t.rule_id IS NOT NULL AND (ru.rule_id IS NULL OR ru.action <> t.transaction_type)
    UNION ALL
    -- A flow's or reversal's row needs its request (its claim and inputs).
    SELECT 'request_missing', t.user_wallet, t.id,
           format('no xp_requests row for key %s', quote_literal(t.idempotency_key))
      FROM pyxp.xp_transactions t
     WHERE t.request_digest IS NULL
       AND NOT EXISTS (SELECT FROM pyxp.xp_requests q WHERE q.idempotency_key = t.idempotency_key)
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

    -- 3. Plan and write the first occurrence of each key; one result row per
    --    event, in event order: its rows, or its first occurrence's (replayed).
    SELECT * INTO v_ruleset FROM pyxp.writing_ruleset();
    RETURN QUERY
        WITH firsts AS (
            SELECT e.event_index, min(e.event_index) OVER (PARTITION BY e.key) AS first_index
              FROM unnest(v_events) e
        ), written AS (
            SELECT * FROM pyxp.append_rows(
                v_ruleset.ruleset_id, v_ruleset.balance_floor,
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

CREATE OR REPLACE FUNCTION pyxp.changes(after_cursor bigint DEFAULT 0, max_rows integer DEFAULT 100,
                             wallet text DEFAULT NULL)
RETURNS TABLE (cursor bigint, transaction_id bigint, user_wallet text, transaction_type text,
               xp_amount bigint, total_xp bigint, previous_level bigint, current_level bigint,
               campaign_id text, subject text, created_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$
DECLARE
    v_max integer := pyxp.checked_row_count('max_rows', changes.max_rows);
    v_wallet text := CASE WHEN changes.wallet IS NOT NULL THEN pyxp.checked_wallet(changes.wallet) END;
    v_after bigint := changes.after_cursor;
    v_snapshot pg_snapshot := pg_current_snapshot();
    -- Every group below this is final (see above): the oldest transaction the
    -- snapshot saw running that is not running in another database now, and
    -- the reader's own transaction if it has written (its id is in no
    -- snapshot's list of running ones, and it may still roll back). On a hot
    -- standby the list of running transactions is not exposed (it is kept in
    -- the snapshot's overflow): there, the snapshot's xmin, cluster-wide.
    v_horizon xid8 := CASE WHEN pg_is_in_recovery() THEN pg_snapshot_xmin(v_snapshot) ELSE least(
        (SELECT min(x.xid)
           FROM pg_snapshot_xip(v_snapshot) x(xid)
          WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_locks l
                              JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
                             WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock'
                               AND l.transactionid = xid(x.xid)
                               AND a.datid <> (SELECT d.oid FROM pg_catalog.pg_database d
                                                WHERE d.datname = current_database()))),
        pg_current_xact_id_if_assigned(),
        pg_snapshot_xmax(v_snapshot)) END;
    v_group xid8;
    v_rank bigint;
BEGIN
    IF v_after IS NULL OR v_after < 0 THEN
        RAISE EXCEPTION 'invalid after_cursor: %', coalesce(v_after::text, 'NULL')
            USING ERRCODE = 'PX023', HINT = 'after_cursor is 0 (from the start) or a cursor the feed returned';
    END IF;
    v_group := (v_after >> 24)::text::xid8;
    v_rank := v_after & 16777215;
    RETURN QUERY
        WITH page AS (
            -- Rows from before 0003: cursor = id.
            (SELECT t.id AS cur, t.*
               FROM pyxp.xp_transactions t
              WHERE t.feed_xid IS NULL AND t.id > v_after
                AND (v_wallet IS NULL OR t.user_wallet = v_wallet)
              ORDER BY t.id
              LIMIT v_max)
            UNION ALL
            -- Whole feed: final groups from the cursor's on, ranked as scanned
            -- (index xp_transactions_feed; the window streams, LIMIT stops it).
            (SELECT (g.feed_xid::text::bigint << 24) + g.rank, g.id, g.user_wallet, g.transaction_type,
                    g.xp_amount, g.xp_requested, g.balance_after, g.rule_id, g.campaign_id, g.subject,
                    g.idempotency_key, g.metadata, g.reverses, g.created_at, g.feed_xid, g.request_digest
               FROM (SELECT t.*, row_number() OVER (PARTITION BY t.feed_xid ORDER BY t.id) AS rank
                       FROM pyxp.xp_transactions t
                      WHERE v_wallet IS NULL AND t.feed_xid >= v_group AND t.feed_xid < v_horizon
                      ORDER BY t.feed_xid, t.id) g
              WHERE g.feed_xid > v_group OR g.rank > v_rank
              ORDER BY g.feed_xid, g.id
              LIMIT v_max)
            UNION ALL
            -- One wallet: its rows in chain order (= feed order, fact 2), each
            -- ranked within its whole group.
            (SELECT (t.feed_xid::text::bigint << 24) + r.rank, t.*
               FROM pyxp.xp_transactions t
              CROSS JOIN LATERAL (SELECT count(*) AS rank FROM pyxp.xp_transactions o
                                   WHERE o.feed_xid = t.feed_xid AND o.id <= t.id) r
              WHERE v_wallet IS NOT NULL AND t.user_wallet = v_wallet
                AND t.feed_xid >= v_group AND t.feed_xid < v_horizon
                AND (t.feed_xid > v_group OR r.rank > v_rank)
              ORDER BY t.id
              LIMIT v_max)
        )
        SELECT p.cur, p.id, p.user_wallet, p.transaction_type, p.xp_amount, p.balance_after,
               before_.level, after_.level, p.campaign_id, p.subject, p.created_at
          FROM page p
         CROSS JOIN LATERAL (SELECT pyxp.row_ruleset(p.rule_id, p.idempotency_key) AS ruleset_id) q
         CROSS JOIN LATERAL pyxp.curve_position(q.ruleset_id, p.balance_after - p.xp_amount) before_
         CROSS JOIN LATERAL pyxp.curve_position(q.ruleset_id, p.balance_after) after_
         ORDER BY p.cur
         LIMIT v_max;
END
$$;

CREATE OR REPLACE FUNCTION pyxp.wake_feed_listeners()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    v_slot bigint := (extract(epoch FROM clock_timestamp()) * 10)::bigint;  -- 100 ms slots
    v_seen text := current_setting('pyxp.feed_slot_seen', true);
BEGIN
    -- A backend reads the sequence at most once per slot: the last slot it
    -- saw is kept in its session (pyxp.feed_slot_seen). A stale or forged
    -- value only delays this session's own wake-ups, which are hints.
    IF v_seen IS NULL OR v_seen !~ '^[0-9]{1,18}$' OR v_slot > v_seen::bigint THEN
        IF v_slot > (SELECT s.last_value FROM pyxp.feed_wakeup_slot s) THEN
            PERFORM setval('pyxp.feed_wakeup_slot', v_slot);
            PERFORM pg_notify('pyxp_changes', '');
        END IF;
        PERFORM set_config('pyxp.feed_slot_seen', v_slot::text, false);
    END IF;
    RETURN NULL;
END
$$;

-- Generic awards' requests (inputs {action, wallet, params}) become their
-- rows' claims; the digest is what a retry computes from the same inputs
-- (params without trailing zeros, as checked_params gives them since 0005).
ALTER TABLE pyxp.xp_transactions DISABLE TRIGGER xp_transactions_append_only;
UPDATE pyxp.xp_transactions t
   SET request_digest = pyxp.inputs_digest(jsonb_set(f.inputs, '{params}', (
           SELECT coalesce(jsonb_object_agg(p.key, trim_scale(p.value::numeric)), '{}')
             FROM jsonb_each_text(f.inputs -> 'params') p)))
  FROM (SELECT DISTINCT ON (o.idempotency_key) o.id, q.inputs
          FROM pyxp.xp_transactions o
          JOIN pyxp.xp_requests q ON q.idempotency_key = o.idempotency_key
         WHERE q.inputs ? 'action' AND q.inputs ? 'wallet' AND q.inputs ? 'params'
         ORDER BY o.idempotency_key, o.id) f
 WHERE t.id = f.id;
ALTER TABLE pyxp.xp_transactions ENABLE TRIGGER xp_transactions_append_only;
DELETE FROM pyxp.xp_requests q
 WHERE EXISTS (SELECT FROM pyxp.xp_transactions t
                WHERE t.idempotency_key = q.idempotency_key AND t.request_digest IS NOT NULL);

DROP INDEX pyxp.xp_transactions_key;
CREATE UNIQUE INDEX xp_transactions_claim ON pyxp.xp_transactions (pyxp.key_hash(idempotency_key))
    WHERE request_digest IS NOT NULL;
CREATE INDEX xp_transactions_request_rows ON pyxp.xp_transactions (idempotency_key)
    WHERE request_digest IS NULL;

CREATE VIEW pyxp.idempotency_keys AS
    SELECT t.idempotency_key, 'ledger'::text AS claimed_in, t.user_wallet, t.id AS transaction_id, t.created_at
      FROM pyxp.xp_transactions t
     WHERE t.request_digest IS NOT NULL
    UNION ALL
    SELECT q.idempotency_key, 'xp_requests', q.inputs ->> 'wallet', NULL, q.created_at
      FROM pyxp.xp_requests q;
REVOKE ALL ON pyxp.idempotency_keys FROM PUBLIC;
GRANT SELECT ON pyxp.idempotency_keys TO pyxp_reader;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pyxp FROM PUBLIC;

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
GRANT EXECUTE ON FUNCTION
    pyxp.level_for(numeric),
    pyxp.balance(text),
    pyxp.history(text, integer, bigint),
    pyxp.leaderboard(integer, integer),
    pyxp.wallet_rank(text),
    pyxp.audit()
TO pyxp_writer, pyxp_reader;
REVOKE ALL ON FUNCTION pyxp.changes(bigint, integer, text), pyxp.wake_feed_listeners() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pyxp.changes(bigint, integer, text) TO pyxp_writer, pyxp_reader;

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
COMMENT ON FUNCTION pyxp.level_for(numeric) IS
    'API: level, level_start_xp, next_level_xp and xp_to_next_level of any whole total on the active curve; level_for(next_level_xp) is the next level.';
COMMENT ON FUNCTION pyxp.balance(text) IS
    'API: a wallet''s total XP, level, XP to the next level and moderation count (0 XP, level 1 when it has no history).';
COMMENT ON FUNCTION pyxp.history(text, integer, bigint) IS
    'API: a wallet''s ledger rows, newest first; pass the last transaction_id as before_id to page on.';
COMMENT ON FUNCTION pyxp.leaderboard(integer, integer) IS
    'API: wallets by total XP, highest first, ties by wallet.';
COMMENT ON FUNCTION pyxp.wallet_rank(text) IS
    'API: a wallet''s rank on the leaderboard, NULL when it has no balance.';
COMMENT ON FUNCTION pyxp.audit() IS
    'API: one row per inconsistency between ledger, balances, levels, rules and registrations; none when healthy.';
COMMENT ON FUNCTION pyxp.install_ruleset(jsonb, text) IS
    'internal: installs and activates a compiled ruleset (pyxp rules apply). Owner only.';
COMMENT ON FUNCTION pyxp.recalculate_levels() IS
    'internal: re-derives every balance''s level from the active curve. Owner only.';
COMMENT ON FUNCTION pyxp.cleaned_text(text, text, integer, text, boolean) IS
    'internal: size check, NFKC (identities), Unicode trim, refusal of invisible characters.';
COMMENT ON FUNCTION pyxp.trimmed_text(text, boolean) IS 'internal: NFKC (identities) and Unicode whitespace trimmed.';
COMMENT ON FUNCTION pyxp.invisible_character(text) IS 'internal: the first control or invisible character of a text, or NULL.';
COMMENT ON FUNCTION pyxp.checked_wallet(text, text) IS 'internal: a normalised wallet, or PX001.';
COMMENT ON FUNCTION pyxp.checked_email(text) IS 'internal: a normalised client email, or PX002.';
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
COMMENT ON FUNCTION pyxp.rule_amount(numeric, jsonb, jsonb) IS 'internal: a rule''s linear form evaluated, halves away from zero.';
COMMENT ON FUNCTION pyxp.floored_amount(numeric, bigint, numeric) IS 'internal: a penalty cut by the balance floor.';
COMMENT ON FUNCTION pyxp.balance_limit() IS 'internal: 2^62, the bound of every balance.';
COMMENT ON FUNCTION pyxp.key_hash(text) IS 'internal: the claim index''s key, 16 bytes of sha256 of an idempotency key.';
COMMENT ON FUNCTION pyxp.inputs_digest(jsonb) IS 'internal: 8 bytes of sha256 of a generic award''s canonical inputs, kept on its claim row.';
COMMENT ON FUNCTION pyxp.row_ruleset(bigint, text) IS 'internal: the ruleset a ledger row was written under.';
COMMENT ON FUNCTION pyxp.claim_request(text, jsonb, bigint) IS 'internal: records a flow''s or reversal''s key and inputs; false when it was used before.';
COMMENT ON FUNCTION pyxp.replayed_award(text, jsonb, text, text) IS 'internal: the original rows of a flow''s or reversal''s key, or PX010 for other inputs.';
COMMENT ON FUNCTION pyxp.append_rows(bigint, bigint, pyxp.pending_row[], boolean) IS
    'internal: THE writer: one statement locks the wallets, replays claimed generic awards, appends every ledger row and updates each balance once.';
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
COMMENT ON FUNCTION pyxp.check_completion_owner(text, text, text, text) IS 'internal: PX011 when a call names another completer or campaign than the completion''s.';
COMMENT ON FUNCTION pyxp.required_campaign_type(text) IS 'internal: a campaign type that must be given, or PX003.';
COMMENT ON FUNCTION pyxp.formula_inputs(numeric, numeric, numeric) IS 'internal: a flow''s formula inputs as JSON.';
COMMENT ON FUNCTION pyxp.lock_subject(text) IS 'internal: the row lock serialising every call about one client email or completion.';
COMMENT ON FUNCTION pyxp.refuse_ledger_change() IS 'internal: trigger refusing UPDATE, DELETE, TRUNCATE on xp_transactions (PX013).';
COMMENT ON FUNCTION pyxp.changes(bigint, integer, text) IS
    'API: the change feed: committed ledger rows after a cursor, each exactly once, with total_xp and the levels before and after; pass back the last cursor.';
COMMENT ON FUNCTION pyxp.wake_feed_listeners() IS
    'internal: trigger sending at most one NOTIFY pyxp_changes per 100 ms slot.';

RESET ROLE;
