-- Downgrade of 0011: every request keeps its key text and a jsonb copy of its
-- inputs again, rebuilt from its first ledger row where it kept only their
-- digest (a request without its rows, which pyxp.audit reports as
-- request_rows_missing, makes the downgrade fail: nothing to rebuild from).
SET LOCAL ROLE pyxp_owner;

DROP VIEW pyxp.idempotency_keys;
ALTER TABLE pyxp.xp_requests RENAME TO xp_requests_0010;
ALTER TABLE pyxp.xp_requests_0010 RENAME CONSTRAINT xp_requests_pkey TO xp_requests_0010_pkey;
ALTER TABLE pyxp.xp_requests_0010 RENAME CONSTRAINT xp_requests_ruleset_id_fkey TO xp_requests_0010_ruleset_id_fkey;

-- One row per flow call or reversal (the generic awards' claims are their
-- ledger rows: see xp_transactions.request_digest). Its primary key is what
-- serialises two concurrent calls with the same key: the second INSERT waits
-- for the first transaction, then sees the row and replays. `inputs` is the
-- canonical form of what the call asked for, which later calls consult (a
-- completion's owner, an onboarding's wallet); a later call with the same key
-- and other inputs is refused (PX010).
CREATE TABLE pyxp.xp_requests (
    idempotency_key  text PRIMARY KEY,
    inputs           jsonb NOT NULL,
    ruleset_id       bigint NOT NULL REFERENCES pyxp.rulesets,  -- curve the result was computed with
    created_at       timestamptz NOT NULL DEFAULT now()
);

INSERT INTO pyxp.xp_requests (idempotency_key, inputs, ruleset_id, created_at)
SELECT coalesce(q.idempotency_key, f.idempotency_key),
       coalesce(q.inputs, pyxp.rebuilt_request_inputs(f.idempotency_key, f.event, f.user_wallet, f.campaign_id,
                                                      f.subject, f.metadata, f.reverses)),
       coalesce(q.ruleset_id, f.ruleset_id), coalesce(q.created_at, f.created_at)
  FROM pyxp.xp_requests_0010 q
  LEFT JOIN LATERAL (SELECT t.idempotency_key, t.user_wallet, t.campaign_id, t.subject, t.metadata, t.reverses,
                            t.created_at, ru.event, ru.ruleset_id
                       FROM pyxp.xp_transactions t
                       LEFT JOIN pyxp.rules ru ON ru.rule_id = t.rule_id
                      WHERE pyxp.key_hash(t.idempotency_key) = q.key_hash AND t.request_digest IS NULL
                      ORDER BY t.wallet_seq
                      LIMIT 1) f ON q.idempotency_key IS NULL;
DROP TABLE pyxp.xp_requests_0010;
GRANT SELECT ON pyxp.xp_requests TO pyxp_reader;

DROP INDEX pyxp.xp_transactions_request_rows;
CREATE INDEX xp_transactions_request_rows ON pyxp.xp_transactions (idempotency_key)
    WHERE request_digest IS NULL;

-- Every idempotency key pyxp holds, wherever its claim is: a generic award's
-- claim row in the ledger, or a flow's or reversal's request. For auditors
-- ("which call wrote this row?") and for checks that every key has its rows.
CREATE VIEW pyxp.idempotency_keys AS
    SELECT t.idempotency_key, 'ledger'::text AS claimed_in, t.user_wallet, t.id AS transaction_id, t.created_at
      FROM pyxp.xp_transactions t
     WHERE t.request_digest IS NOT NULL
    UNION ALL
    SELECT q.idempotency_key, 'xp_requests', q.inputs ->> 'wallet', NULL, q.created_at
      FROM pyxp.xp_requests q;
GRANT SELECT ON pyxp.idempotency_keys TO pyxp_reader;

DROP FUNCTION pyxp.request_inputs_digest(jsonb);

DROP FUNCTION pyxp.rebuilt_request_inputs(text, text, text, text, text, jsonb, bigint);

DROP FUNCTION pyxp.claim_request(text, jsonb, bigint, jsonb);

DROP FUNCTION pyxp.recorded_request(text);

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

COMMENT ON FUNCTION pyxp.claim_request(text, jsonb, bigint) IS 'internal: records a flow''s or reversal''s key and inputs; false when it was used before.';

REVOKE ALL ON FUNCTION pyxp.claim_request(text, jsonb, bigint) FROM PUBLIC;

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
           SELECT FROM pyxp.xp_requests q
            WHERE q.idempotency_key = v_legacy
              AND q.inputs ->> 'wallet' = p_wallet AND q.inputs ->> p_subject_field = p_subject) THEN
        RETURN v_legacy;
    END IF;
    SELECT q.inputs INTO v_stored FROM pyxp.xp_requests q WHERE q.idempotency_key = v_key;
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
    SELECT q.inputs INTO v_first
      FROM pyxp.xp_requests q
     WHERE q.idempotency_key IN ('completion.submitted:' || p_completion, 'completion.outcome:' || p_completion)
       AND q.idempotency_key <> p_own_key
     ORDER BY q.created_at
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
    v_onboarded pyxp.xp_requests;
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
       AND NOT EXISTS (SELECT FROM pyxp.xp_requests q WHERE q.idempotency_key = t.idempotency_key)
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

RESET ROLE;
