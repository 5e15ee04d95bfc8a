-- 0011: a compact idempotency store (issue 15, item 4).
-- Frozen copy of what sql/*.sql defines at this revision; never edit it.
--
-- A flow's or reversal's request (xp_requests) keeps its key's hash and its
-- inputs' digest, about 100 bytes, instead of the key text and a jsonb copy
-- of the inputs (about 300): the call's ledger rows hold its key and the
-- values its inputs are rebuilt from (pyxp.rebuilt_request_inputs), which is
-- what later calls consult and what a PX010 shows of the first call. A
-- request whose rows do not rebuild its inputs exactly (it wrote none, or it
-- was stored in an earlier form) keeps them. The ledger finds a request's
-- rows by the key's hash (16 bytes per row instead of the key text).
SET LOCAL ROLE pyxp_owner;

-- The functions the move below uses.
CREATE FUNCTION pyxp.request_inputs_digest(p_inputs jsonb)
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE STRICT
AS $$
BEGIN
    RETURN pyxp.inputs_digest(coalesce(
        (SELECT jsonb_object_agg(e.key, CASE WHEN jsonb_typeof(e.value) = 'number'
                                             THEN to_jsonb(trim_scale(e.value::numeric)) ELSE e.value END)
           FROM jsonb_each(p_inputs) e), '{}'));
END
$$;

CREATE FUNCTION pyxp.rebuilt_request_inputs(p_key text, p_event text, p_wallet text, p_campaign_id text,
                                            p_subject text, p_metadata jsonb, p_reverses bigint)
RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN p_key LIKE 'reverse:%' THEN
            jsonb_build_object('transaction_id', p_reverses, 'reason', p_metadata -> 'reason')
        WHEN p_key LIKE 'campaign.created:%' THEN
            jsonb_build_object('wallet', p_wallet, 'campaign_type', p_metadata -> 'campaign_type',
                               'mint_value', coalesce(p_metadata -> 'MINT_VALUE', 'null'),
                               'winstory_creates_video', p_metadata -> 'winstory_creates_video',
                               'no_rewards', p_metadata -> 'no_rewards')
        WHEN p_key LIKE 'campaign.approved:%' OR p_key LIKE 'client.onboarded:%' THEN
            jsonb_build_object('wallet', p_wallet)
        WHEN p_key LIKE 'campaign.vote%' THEN
            jsonb_build_object('vote_decision', p_metadata -> 'vote_decision',
                               'campaign_type', p_metadata -> 'campaign_type',
                               'wallet', p_wallet, 'campaign_id', p_campaign_id)
        WHEN p_key LIKE 'completion.vote%' THEN
            jsonb_build_object('vote_decision', p_metadata -> 'vote_decision', 'campaign_id', p_campaign_id,
                               'campaign_type', p_metadata -> 'campaign_type',
                               'wallet', p_wallet, 'completion_id', p_subject)
        WHEN p_key LIKE 'completion.submitted:%' OR p_key LIKE 'completion.outcome:%' THEN
            jsonb_build_object('event', p_event, 'wallet', p_wallet, 'campaign_id', p_campaign_id,
                               'campaign_type', p_metadata -> 'campaign_type', 'is_paid', p_metadata -> 'is_paid')
            || (p_metadata - 'campaign_type' - 'is_paid')
    END
$$;

-- The requests move to their compact form. The move holds xp_requests
-- (ACCESS EXCLUSIVE) and the index rebuild below holds the ledger (SHARE)
-- until the migration commits: awards wait meanwhile.
DROP VIEW pyxp.idempotency_keys;
ALTER TABLE pyxp.xp_requests RENAME TO xp_requests_0009;
ALTER TABLE pyxp.xp_requests_0009 RENAME CONSTRAINT xp_requests_pkey TO xp_requests_0009_pkey;
ALTER TABLE pyxp.xp_requests_0009 RENAME CONSTRAINT xp_requests_ruleset_id_fkey TO xp_requests_0009_ruleset_id_fkey;

-- One row per flow call or reversal: its claim (the generic awards' claims
-- are their ledger rows: see xp_transactions.request_digest). Its primary
-- key is what serialises two concurrent calls with the same key: the second
-- INSERT waits for the first transaction, then sees the row and replays. A
-- later call with the same key and other inputs is refused (PX010).
-- About 100 bytes per call, whatever the key's or the inputs' length (0011;
-- before, the key text and a jsonb copy of the inputs: about 300): a key's
-- hash and its inputs' digest, because the call's ledger rows hold the rest
-- (their idempotency_key, created_at, their rules' ruleset, and the wallet,
-- campaign, subject and metadata its inputs are rebuilt from:
-- pyxp.rebuilt_request_inputs), which is what later calls consult (a
-- completion's owner, an onboarding's wallet) and what a PX010 shows of the
-- first call (pyxp.recorded_request). A call whose rows cannot give them
-- back (it wrote none, or was stored before 0011 in another form) keeps its
-- key, inputs, ruleset and time here; a reversal keeps its ruleset (its row
-- names no rule).
CREATE TABLE pyxp.xp_requests (
    key_hash         uuid PRIMARY KEY,          -- pyxp.key_hash(idempotency key)
    inputs_digest    bigint NOT NULL,           -- pyxp.request_inputs_digest(inputs)
    ruleset_id       bigint REFERENCES pyxp.rulesets,  -- curve the result was computed with; NULL: its rows' rules'
    created_at       timestamptz,               -- NULL: its rows'
    idempotency_key  text,                      -- NULL: its rows'
    inputs           jsonb,                     -- NULL: rebuilt from its rows
    CONSTRAINT xp_requests_kept_together CHECK (
        (idempotency_key IS NULL) = (inputs IS NULL)
        AND (idempotency_key IS NULL OR (ruleset_id IS NOT NULL AND created_at IS NOT NULL)))
);

-- A request keeps its key and inputs unless its first ledger row (found by
-- 0009's index on the key text) rebuilds its inputs exactly, and its ruleset
-- and time unless that row's rule and time are the same. The primary key is
-- built after the move: packed, not split by random inserts.
ALTER TABLE pyxp.xp_requests DROP CONSTRAINT xp_requests_pkey;
INSERT INTO pyxp.xp_requests (key_hash, inputs_digest, ruleset_id, created_at, idempotency_key, inputs)
SELECT pyxp.key_hash(q.idempotency_key), pyxp.request_inputs_digest(q.inputs),
       CASE WHEN k.keep OR f.ruleset_id IS DISTINCT FROM q.ruleset_id THEN q.ruleset_id END,
       CASE WHEN k.keep OR f.created_at IS DISTINCT FROM q.created_at THEN q.created_at END,
       CASE WHEN k.keep THEN q.idempotency_key END, CASE WHEN k.keep THEN q.inputs END
  FROM pyxp.xp_requests_0009 q
  LEFT JOIN LATERAL (SELECT t.user_wallet, t.campaign_id, t.subject, t.metadata, t.reverses, t.created_at,
                            ru.event, ru.ruleset_id
                       FROM pyxp.xp_transactions t
                       LEFT JOIN pyxp.rules ru ON ru.rule_id = t.rule_id
                      WHERE t.idempotency_key = q.idempotency_key AND t.request_digest IS NULL
                      ORDER BY t.wallet_seq
                      LIMIT 1) f ON true
 CROSS JOIN LATERAL (SELECT f.user_wallet IS NULL
                            OR pyxp.rebuilt_request_inputs(q.idempotency_key, f.event, f.user_wallet, f.campaign_id,
                                                           f.subject, f.metadata, f.reverses)
                               IS DISTINCT FROM q.inputs AS keep) k;
ALTER TABLE pyxp.xp_requests ADD CONSTRAINT xp_requests_pkey PRIMARY KEY (key_hash);
DROP TABLE pyxp.xp_requests_0009;
GRANT SELECT ON pyxp.xp_requests TO pyxp_reader;

DROP INDEX pyxp.xp_transactions_request_rows;
CREATE INDEX xp_transactions_request_rows ON pyxp.xp_transactions (pyxp.key_hash(idempotency_key))
    WHERE request_digest IS NULL;

-- Every idempotency key pyxp holds, wherever its claim is: a generic award's
-- claim row in the ledger, or a flow's or reversal's request (its key text
-- from its first ledger row, or kept in the request when it wrote none).
-- For auditors ("which call wrote this row?") and for checks that every key
-- has its rows.
CREATE VIEW pyxp.idempotency_keys AS
    SELECT t.idempotency_key, 'ledger'::text AS claimed_in, t.user_wallet, t.id AS transaction_id, t.created_at
      FROM pyxp.xp_transactions t
     WHERE t.request_digest IS NOT NULL
    UNION ALL
    SELECT coalesce(q.idempotency_key, f.idempotency_key), 'xp_requests', coalesce(f.user_wallet, q.inputs ->> 'wallet'),
           NULL, coalesce(q.created_at, f.created_at)
      FROM pyxp.xp_requests q
      LEFT JOIN LATERAL (SELECT t.idempotency_key, t.user_wallet, t.created_at FROM pyxp.xp_transactions t
                          WHERE pyxp.key_hash(t.idempotency_key) = q.key_hash AND t.request_digest IS NULL
                          LIMIT 1) f ON q.idempotency_key IS NULL;
GRANT SELECT ON pyxp.idempotency_keys TO pyxp_reader;

-- Functions: the new claim, and every reader of xp_requests.
DROP FUNCTION pyxp.claim_request(text, jsonb, bigint);

CREATE FUNCTION pyxp.claim_request(p_key text, p_inputs jsonb, p_ruleset_id bigint, p_rebuilt jsonb)
RETURNS boolean
LANGUAGE plpgsql
AS $$
DECLARE
    v_keep boolean := p_rebuilt IS NULL OR p_rebuilt <> p_inputs;
BEGIN
    INSERT INTO pyxp.xp_requests (key_hash, inputs_digest, ruleset_id, created_at, idempotency_key, inputs)
    VALUES (pyxp.key_hash(p_key), pyxp.request_inputs_digest(p_inputs),
            CASE WHEN v_keep OR p_key LIKE 'reverse:%' THEN p_ruleset_id END,
            CASE WHEN v_keep THEN now() END, CASE WHEN v_keep THEN p_key END, CASE WHEN v_keep THEN p_inputs END)
    ON CONFLICT (key_hash) DO NOTHING;
    RETURN FOUND;
END
$$;

CREATE FUNCTION pyxp.recorded_request(p_key text)
RETURNS TABLE (inputs jsonb, inputs_digest bigint, ruleset_id bigint, created_at timestamptz, same_key boolean)
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_hash uuid := pyxp.key_hash(p_key);
    v_request pyxp.xp_requests;
    v_first record;
BEGIN
    SELECT * INTO v_request FROM pyxp.xp_requests q WHERE q.key_hash = v_hash;
    IF NOT FOUND THEN
        RETURN;
    ELSIF v_request.idempotency_key IS NOT NULL THEN
        RETURN QUERY SELECT v_request.inputs, v_request.inputs_digest, v_request.ruleset_id, v_request.created_at,
                            v_request.idempotency_key = p_key;
        RETURN;
    END IF;
    SELECT t.idempotency_key, t.user_wallet, t.campaign_id, t.subject, t.metadata, t.reverses, t.created_at,
           t.rule_id, ru.event, ru.ruleset_id
      INTO v_first
      FROM pyxp.xp_transactions t
      LEFT JOIN pyxp.rules ru ON ru.rule_id = t.rule_id
     WHERE pyxp.key_hash(t.idempotency_key) = v_hash AND t.request_digest IS NULL
     ORDER BY t.wallet_seq
     LIMIT 1;
    IF v_first.rule_id IS NOT NULL AND v_first.event IS NULL THEN  -- its rule is gone
        RETURN QUERY SELECT NULL::jsonb, v_request.inputs_digest, v_request.ruleset_id, v_request.created_at,
                            v_first.idempotency_key = p_key;
        RETURN;
    END IF;
    RETURN QUERY SELECT pyxp.rebuilt_request_inputs(v_first.idempotency_key, v_first.event, v_first.user_wallet,
                                                    v_first.campaign_id, v_first.subject, v_first.metadata,
                                                    v_first.reverses),
                        v_request.inputs_digest, coalesce(v_request.ruleset_id, v_first.ruleset_id),
                        coalesce(v_request.created_at, v_first.created_at), coalesce(v_first.idempotency_key = p_key, true);
END
$$;

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
        SELECT q.ruleset_id INTO v_id FROM pyxp.xp_requests q WHERE q.key_hash = pyxp.key_hash(p_key);
    END IF;
    RETURN v_id;
END
$$;

CREATE OR REPLACE FUNCTION pyxp.replayed_award(p_key text, p_inputs jsonb,
                                    p_conflict_message text DEFAULT NULL,
                                    p_conflict_code text DEFAULT 'PX010')
RETURNS SETOF pyxp.award_result
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_request record;
BEGIN
    SELECT * INTO STRICT v_request FROM pyxp.recorded_request(p_key) r;
    IF v_request.same_key AND (v_request.inputs IS NULL OR v_request.ruleset_id IS NULL) THEN
        RAISE EXCEPTION 'the ledger no longer holds the first call with idempotency key %', quote_literal(p_key)
            USING ERRCODE = 'PX028',
                  DETAIL = 'its request keeps only a digest, and its ledger rows or their rule are gone',
                  HINT = 'pyxp.audit() names them (request_rows_missing, rule_missing)';
    ELSIF NOT v_request.same_key OR v_request.inputs_digest <> pyxp.request_inputs_digest(p_inputs) THEN
        RAISE EXCEPTION '%', coalesce(p_conflict_message,
                                      format('idempotency key %L was already used with other inputs', p_key))
            USING ERRCODE = p_conflict_code,
                  DETAIL = format('first call: %s; this call: %s',
                                  CASE WHEN NOT v_request.same_key THEN 'another key with the same hash'
                                       ELSE v_request.inputs::text END,
                                  p_inputs),
                  HINT = 'repeat a call with exactly the same inputs to get its result again';
    END IF;
    RETURN QUERY
        SELECT t.id, t.user_wallet, t.transaction_type, t.xp_amount, t.xp_requested, t.balance_after,
               now_.level, (now_.next_level_xp - t.balance_after)::bigint, before_.level, true
          FROM pyxp.xp_transactions t
          CROSS JOIN LATERAL pyxp.curve_position(v_request.ruleset_id, t.balance_after) now_
          CROSS JOIN LATERAL pyxp.curve_position(v_request.ruleset_id, t.balance_after - t.xp_amount) before_
         WHERE pyxp.key_hash(t.idempotency_key) = pyxp.key_hash(p_key) AND t.request_digest IS NULL
           AND t.idempotency_key = p_key
         ORDER BY t.id;
END
$$;

CREATE OR REPLACE FUNCTION pyxp.post_award(
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
    v_rebuilt jsonb;
BEGIN
    SELECT * INTO v_ruleset FROM pyxp.writing_ruleset();
    -- Whether the call writes rows (a rule of its event applies): then they
    -- will rebuild its inputs, and its request need not keep them.
    IF EXISTS (SELECT FROM pyxp.rules ru
                WHERE ru.ruleset_id = v_ruleset.ruleset_id AND ru.event = p_event
                  AND (ru.campaign_types IS NULL OR p_campaign_type = ANY (ru.campaign_types))
                  AND (ru.condition IS NULL OR ru.condition = ANY (p_facts))) THEN
        v_rebuilt := pyxp.rebuilt_request_inputs(p_key, p_event, p_wallet, p_campaign_id, p_subject, p_metadata, NULL);
    END IF;
    IF NOT pyxp.claim_request(p_key, p_inputs, v_ruleset.ruleset_id, v_rebuilt) THEN
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
          FROM pyxp.append_rows(v_ruleset.ruleset_id, v_ruleset.balance_floor, v_ruleset.timezone,
                                v_ruleset.has_caps, v_rows, false) w;
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
    v_metadata jsonb;  -- the reversal row's
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
    v_metadata := jsonb_build_object('reason', v_reason, 'reversed_type', v_original.transaction_type);
    IF NOT pyxp.claim_request(v_key, v_inputs, v_ruleset.ruleset_id,
                              pyxp.rebuilt_request_inputs(v_key, NULL, v_original.user_wallet, v_original.campaign_id,
                                                          v_original.subject, v_metadata, v_original.id)) THEN
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
                                          v_metadata, v_original.id, 0)::pyxp.pending_row], false) w;
END
$$;

CREATE OR REPLACE FUNCTION pyxp.vote_key(p_event text, p_subject text, p_subject_field text, p_wallet text)
RETURNS text
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_legacy text := format('%s:%s:%s', p_event, p_subject, p_wallet);
    v_key text := format('%s:%s:%s', p_event, pyxp.key_part(p_subject), p_wallet);
    v_stored jsonb;
BEGIN
    IF p_subject ~ '[%:]' AND EXISTS (
           SELECT FROM pyxp.recorded_request(v_legacy) r
            WHERE r.same_key AND r.inputs ->> 'wallet' = p_wallet AND r.inputs ->> p_subject_field = p_subject) THEN
        RETURN v_legacy;
    END IF;
    SELECT r.inputs INTO v_stored FROM pyxp.recorded_request(v_key) r WHERE r.same_key;
    IF v_stored IS NOT NULL AND (v_stored ->> 'wallet' IS DISTINCT FROM p_wallet
                                 OR v_stored ->> p_subject_field IS DISTINCT FROM p_subject) THEN
        RETURN format('%s/2:%s:%s', p_event, pyxp.key_part(p_subject), p_wallet);
    END IF;
    RETURN v_key;
END
$$;

CREATE OR REPLACE FUNCTION pyxp.check_completion_owner(p_completion text, p_wallet text, p_campaign text,
                                            p_own_key text)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_first jsonb;
BEGIN
    PERFORM pyxp.lock_subject('completion:' || p_completion);
    SELECT r.inputs INTO v_first
      FROM unnest(ARRAY['completion.submitted:' || p_completion, 'completion.outcome:' || p_completion]) k (key)
     CROSS JOIN LATERAL pyxp.recorded_request(k.key) r
     WHERE k.key <> p_own_key AND r.same_key
     ORDER BY r.created_at
     LIMIT 1;
    IF v_first IS NULL THEN
        RETURN;
    ELSIF v_first ->> 'campaign_id' IS DISTINCT FROM p_campaign
          OR (p_wallet IS NOT NULL AND v_first ->> 'wallet' IS DISTINCT FROM p_wallet) THEN
        RAISE EXCEPTION 'completion % belongs to % on campaign %, not % on campaign %', p_completion,
                        v_first ->> 'wallet', v_first ->> 'campaign_id', coalesce(p_wallet, '(a moderator)'), p_campaign
            USING ERRCODE = 'PX011',
                  DETAIL = format('recorded: %s', v_first),
                  HINT = 'name the completer wallet and campaign of the completion''s submission';
    END IF;
END
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
    v_onboarded record;  -- the client's onboarding, if any: its request
BEGIN
    IF register_agency_client.company_name IS NOT NULL THEN  -- blank: none
        v_company := nullif(pyxp.cleaned_text('company name', register_agency_client.company_name, 200,
                                              'PX016', false), '');
        IF v_company IS NOT NULL THEN
            v_company := pyxp.checked_identifier('company name', v_company, 200);
        END IF;
    END IF;
    PERFORM pyxp.require_read_committed();
    SELECT * INTO v_known FROM pyxp.campaigns c WHERE c.campaign_id = v_campaign;
    IF v_known.campaign_id IS NOT NULL
       AND (v_known.campaign_type <> 'AGENCY_B2C' OR v_known.creator_wallet <> v_agency) THEN
        RAISE EXCEPTION 'campaign % is a % campaign created by %, not an AGENCY_B2C campaign of %',
                        v_campaign, v_known.campaign_type, v_known.creator_wallet, v_agency
            USING ERRCODE = 'PX022', HINT = 'register clients on the agency''s own AGENCY_B2C campaigns';
    END IF;

    PERFORM pyxp.lock_subject('client_email:' || v_email);
    SELECT r.inputs ->> 'wallet' AS wallet, r.created_at INTO v_onboarded
      FROM pyxp.recorded_request('client.onboarded:' || v_email) r;
    INSERT INTO pyxp.agency_b2c_clients AS a (agency_wallet, client_email, campaign_id, company_name,
                                              client_wallet, xp_granted, onboarded_at)
    VALUES (v_agency, v_email, v_campaign, v_company, v_onboarded.wallet,
            v_onboarded.created_at IS NOT NULL, v_onboarded.created_at)
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
    PERFORM pyxp.require_read_committed();
    PERFORM pyxp.lock_subject('client_email:' || v_email);
    SELECT array_agg(a.agency_wallet ORDER BY a.id) AS agencies,
           array_agg(a.campaign_id ORDER BY a.id) AS campaigns,
           (array_agg(a.company_name ORDER BY a.id) FILTER (WHERE a.company_name IS NOT NULL))[1] AS company
      INTO v_pending
      FROM pyxp.agency_b2c_clients a
     WHERE a.client_email = v_email AND NOT a.xp_granted;

    IF v_pending.agencies IS NULL
       AND NOT EXISTS (SELECT FROM pyxp.xp_requests q WHERE q.key_hash = pyxp.key_hash(v_key)) THEN
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

CREATE OR REPLACE FUNCTION pyxp.row_problems(p_since_checkpoint boolean)
RETURNS TABLE (check_name text, user_wallet text, transaction_id bigint, detail text)
LANGUAGE sql STABLE
AS $$
    SELECT 'reversal_mismatch', t.user_wallet, t.id,
           format('reverses transaction %s (%s XP to %s) with %s XP', o.id, o.xp_amount, o.user_wallet, t.xp_amount)
      FROM pyxp.audited_rows(p_since_checkpoint) t
     CROSS JOIN LATERAL (SELECT o.* FROM pyxp.xp_transactions o WHERE o.id = t.reverses LIMIT 1) o
     WHERE t.reverses IS NOT NULL
       AND (t.xp_amount <> -o.xp_amount OR t.user_wallet <> o.user_wallet OR o.reverses IS NOT NULL)
    UNION ALL
    SELECT CASE WHEN ru.rule_id IS NULL THEN 'rule_missing' ELSE 'rule_mismatch' END, t.user_wallet, t.id,
           CASE WHEN ru.rule_id IS NULL THEN format('rule %s of this row does not exist', t.rule_id)
                ELSE format('transaction_type %s but rule %s is %s', t.transaction_type, ru.rule_id, ru.action) END
      FROM pyxp.audited_rows(p_since_checkpoint) t
      LEFT JOIN pyxp.rules ru ON ru.rule_id = t.rule_id
     WHERE t.rule_id IS NOT NULL AND (ru.rule_id IS NULL OR ru.action <> t.transaction_type)
    UNION ALL
    SELECT 'request_missing', t.user_wallet, t.id,
           format('no xp_requests row for key %s', quote_literal(t.idempotency_key))
      FROM pyxp.audited_rows(p_since_checkpoint) t
     WHERE t.request_digest IS NULL
       AND NOT EXISTS (SELECT FROM pyxp.xp_requests q WHERE q.key_hash = pyxp.key_hash(t.idempotency_key))
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
    SELECT c.check_name, c.user_wallet,
           (SELECT t.id FROM pyxp.xp_transactions t WHERE t.user_wallet = c.user_wallet AND t.wallet_seq = c.wallet_seq),
           c.detail
      FROM pyxp.chain_problems(false) c
    UNION ALL
    SELECT * FROM pyxp.row_problems(false)
    UNION ALL
    SELECT * FROM pyxp.rank_problems()
    UNION ALL
    -- Rows of a wallet without a balance row: the walk starts from the
    -- balances, so it counts them; when every row was walked (the count
    -- matches), nothing more is read.
    SELECT 'balance_mismatch', o.user_wallet, NULL, format('ledger sum %s but no xp_balances row', o.total)
      FROM (SELECT t.user_wallet, sum(t.xp_amount) AS total
              FROM pyxp.xp_transactions t
             WHERE NOT EXISTS (SELECT FROM pyxp.xp_balances b WHERE b.user_wallet = t.user_wallet)
             GROUP BY t.user_wallet) o
     WHERE (SELECT count(*) FROM pyxp.xp_transactions)
           <> (SELECT coalesce(sum(b.last_wallet_seq), 0) FROM pyxp.xp_balances b)
    UNION ALL
    SELECT 'checkpoint_mismatch', c.user_wallet, NULL,
           format('checkpoint at wallet_seq %s (%s XP) of a wallet without a balance', c.wallet_seq, c.total_xp)
      FROM pyxp.xp_wallet_checkpoints c
     WHERE NOT EXISTS (SELECT FROM pyxp.xp_balances b WHERE b.user_wallet = c.user_wallet)
    UNION ALL
    SELECT 'moderation_count', b.user_wallet, NULL,
           format('total_moderations = %s, votes recorded = %s', b.total_moderations, coalesce(v.votes, 0))
      FROM pyxp.xp_balances b
      -- A vote is a request of a vote key: its rows (all to the voter) hold
      -- the key, or (a vote no rule awards) the request keeps it.
      FULL JOIN (SELECT x.user_wallet, count(*) AS votes
                   FROM (SELECT t.user_wallet, t.idempotency_key
                           FROM pyxp.xp_transactions t
                          WHERE t.request_digest IS NULL
                            AND t.idempotency_key ~ '^(campaign|completion)\.vote(/[0-9]+)?:'
                         UNION
                         SELECT q.inputs ->> 'wallet', q.idempotency_key
                           FROM pyxp.xp_requests q
                          WHERE q.idempotency_key ~ '^(campaign|completion)\.vote(/[0-9]+)?:') x
                  GROUP BY 1) v ON v.user_wallet = b.user_wallet
     WHERE coalesce(b.total_moderations, 0) <> coalesce(v.votes, 0)
    UNION ALL
    -- A request that keeps neither its key nor its inputs has them in its
    -- ledger rows only (pyxp.recorded_request): without a row, a retry's
    -- inputs could not be shown or a vote counted.
    SELECT 'request_rows_missing', NULL, NULL,
           format('request %s (claimed %s) keeps no key and no ledger row holds it', q.key_hash, q.created_at)
      FROM pyxp.xp_requests q
     WHERE q.idempotency_key IS NULL
       AND NOT EXISTS (SELECT FROM pyxp.xp_transactions t
                        WHERE pyxp.key_hash(t.idempotency_key) = q.key_hash AND t.request_digest IS NULL)
    UNION ALL
    SELECT 'registration_grant', a.client_wallet, NULL,
           format('registration %s of %s is %s', a.id, a.client_email,
                  CASE WHEN a.xp_granted THEN 'granted without an onboarding of that email'
                       ELSE 'pending although that email was onboarded' END)
      FROM pyxp.agency_b2c_clients a
      LEFT JOIN pyxp.xp_requests q ON q.key_hash = pyxp.key_hash('client.onboarded:' || a.client_email)
     WHERE a.xp_granted <> (q.key_hash IS NOT NULL)
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
    -- Caps: what xp_cap_usage holds against the ledger, and no allowance
    -- used beyond the largest cap its rows' rules carried (nothing to read
    -- when no rule ever carried a cap).
    SELECT CASE WHEN coalesce(u.used_xp, 0) <> coalesce(l.used_xp, 0) THEN 'cap_usage_mismatch'
                ELSE 'cap_exceeded' END,
           coalesce(u.user_wallet, l.user_wallet), NULL,
           format('%s from %s: xp_cap_usage says %s XP used, the ledger %s XP, cap %s',
                  coalesce(u.allowance, l.allowance), coalesce(u.period_start, l.period_start),
                  coalesce(u.used_xp, 0), coalesce(l.used_xp, 0), coalesce(l.cap_max_xp::text, 'none'))
      FROM pyxp.xp_cap_usage u
      FULL JOIN pyxp.ledger_cap_usage() l
        ON l.user_wallet = u.user_wallet AND l.allowance = u.allowance AND l.period_start = u.period_start
     WHERE (coalesce(u.used_xp, 0) <> coalesce(l.used_xp, 0) OR l.used_xp > l.cap_max_xp)
       AND (EXISTS (SELECT FROM pyxp.rules ru WHERE ru.cap_max_xp IS NOT NULL)
            OR EXISTS (SELECT FROM pyxp.xp_cap_usage))
    ORDER BY 1, 2, 3
$$;

COMMENT ON FUNCTION pyxp.request_inputs_digest(jsonb) IS 'internal: the digest a flow''s or reversal''s request keeps of its inputs.';

COMMENT ON FUNCTION pyxp.rebuilt_request_inputs(text, text, text, text, text, jsonb, bigint) IS
    'internal: a flow call''s or reversal''s inputs rebuilt from one of its ledger rows.';

COMMENT ON FUNCTION pyxp.claim_request(text, jsonb, bigint, jsonb) IS 'internal: records a flow''s or reversal''s claim; false when its key was used before.';

COMMENT ON FUNCTION pyxp.recorded_request(text) IS 'internal: an earlier flow call''s or reversal''s request, with its inputs kept or rebuilt from its rows.';

REVOKE ALL ON FUNCTION
    pyxp.request_inputs_digest(jsonb),
    pyxp.rebuilt_request_inputs(text, text, text, text, text, jsonb, bigint),
    pyxp.claim_request(text, jsonb, bigint, jsonb),
    pyxp.recorded_request(text)
FROM PUBLIC;

RESET ROLE;
