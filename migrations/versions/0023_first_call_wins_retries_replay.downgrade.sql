-- 0023 downgrade: the flows, cleaned_text and unsliced_problems as 0022 left
-- them; pyxp.call_recorded, pyxp.code_point and subject_locks.campaign_id
-- dropped. Registry rows that registrations recorded stay (0022's flows read
-- them as campaigns created by that agency).
SET LOCAL ROLE pyxp_owner;

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

CREATE OR REPLACE FUNCTION pyxp.cleaned_text(p_what text, p_value text, p_max integer, p_code text, p_nfkc boolean)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v text;
    v_invisible text;
BEGIN
    IF p_value IS NULL THEN
        RETURN NULL;
    ELSIF octet_length(p_value) > 4 * p_max + 1024 THEN
        RAISE EXCEPTION 'invalid %: a text of % bytes', p_what, octet_length(p_value)
            USING ERRCODE = p_code, HINT = format('%s has at most %s characters', p_what, p_max);
    END IF;
    v := pyxp.trimmed_text(p_value, p_nfkc);
    v_invisible := pyxp.invisible_character(v);
    IF v_invisible IS NOT NULL THEN
        RAISE EXCEPTION 'invalid %: % contains U+%, an invisible or control character', p_what,
                        quote_literal(left(regexp_replace(v, '[^[:print:]]', '?', 'g'), 60)),
                        upper(lpad(to_hex(ascii(v_invisible)), 4, '0'))
            USING ERRCODE = p_code,
                  HINT = format('%s has no control or invisible characters (zero-width spaces, joiners, '
                                'soft hyphens, bidi controls, ...)', p_what);
    END IF;
    RETURN v;
END
$$;

CREATE OR REPLACE FUNCTION pyxp.unsliced_problems(p_since_checkpoint boolean, p_part integer)
RETURNS TABLE (check_name text, user_wallet text, transaction_id bigint, detail text)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET plan_cache_mode = force_custom_plan
COST 4000000 ROWS 10
AS $fn$
BEGIN
    IF p_since_checkpoint THEN
        IF p_part = 1 THEN
            RETURN QUERY SELECT * FROM pyxp.row_problems(true);
        END IF;
        RETURN;
    END IF;
    IF p_part = 1 THEN
        RETURN QUERY SELECT * FROM pyxp.rank_problems();
        RETURN;
    END IF;
    RETURN QUERY
    SELECT 'checkpoint_mismatch', c.user_wallet, NULL::bigint,
           format('checkpoint at wallet_seq %s (%s XP) of a wallet without a balance', c.wallet_seq, c.total_xp)
      FROM pyxp.xp_wallet_checkpoints c
     WHERE NOT EXISTS (SELECT FROM pyxp.xp_balances b WHERE b.user_wallet = c.user_wallet)
    UNION ALL
    -- Identities stored before 0002 that today's checks would read otherwise
    -- (NFKC, Unicode whitespace, invisible characters): one person may be two
    -- wallets here; a DBA decides what to merge. A wallet already in the
    -- canonical 0x form (0x and 40 lower-case hex digits: ASCII, no space,
    -- nothing to fold) reads the same: only the others go through the
    -- PL/pgSQL checks (4.8 s of the audit at 1M balances, 1.7 s now).
    SELECT 'identity_not_normalised', b.user_wallet, NULL,
           CASE WHEN pyxp.invisible_character(f.form) IS NOT NULL
                THEN format('wallet %s holds U+%s, refused since 0002', quote_literal(b.user_wallet),
                            upper(lpad(to_hex(ascii(pyxp.invisible_character(f.form))), 4, '0')))
                ELSE format('wallet %s is read %s since 0002', quote_literal(b.user_wallet), quote_literal(f.form)) END
      FROM (SELECT b.user_wallet FROM pyxp.xp_balances b WHERE b.user_wallet COLLATE "C" !~ '^0x[0-9a-f]{40}$') b
     CROSS JOIN LATERAL (SELECT CASE WHEN x.t ~* '^0x[0-9a-f]{40}$' THEN lower(x.t) ELSE x.t END AS form
                           FROM (SELECT pyxp.trimmed_text(b.user_wallet, true) AS t) x) f
     WHERE f.form <> b.user_wallet OR pyxp.invisible_character(f.form) IS NOT NULL
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
            OR EXISTS (SELECT FROM pyxp.xp_cap_usage));
END
$fn$;


DROP FUNCTION pyxp.call_recorded(text, jsonb);
DROP FUNCTION pyxp.code_point(text);
ALTER TABLE pyxp.subject_locks DROP COLUMN campaign_id;

RESET ROLE;
