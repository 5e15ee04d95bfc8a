-- 0023: a flow call made before replays whatever was recorded about its
-- campaign or completion since; a later call contradicting what an earlier
-- one recorded is refused (issue: hostile testing of the flows).
-- Frozen copy of what sql/*.sql defines at this revision; never edit it.
--
--   * pyxp.call_recorded (new): whether a call's key was claimed with the same
--     inputs. The flows ask it before comparing a call with earlier ones: an
--     approval, a completion's submission, outcome or vote made before replays
--     even if the registry or the completion's campaign changed since (before,
--     the comparison ran first and refused the retry with PX011); a
--     registration made before returns its row (before: PX022).
--   * A completion's campaign is fixed by the first call naming it, a vote
--     included (subject_locks.campaign_id, new; before, votes were left out, so
--     a submission could name another campaign than the votes before it).
--   * A creation by another wallet than an earlier approval named as creator,
--     or than the agency whose client registration named the campaign, is
--     refused (PX011): a registration on a campaign pyxp does not know records
--     it as that agency's AGENCY_B2C campaign; an approval and a creation of
--     one campaign serialise on its subject lock ('campaign:<id>').
--   * An approval of a campaign whose type pyxp does not know is refused (PX012)
--     when a rule of the approval depends on the type (it used its key up for no
--     row).
--   * pyxp.code_point (new): PX001 and audit() name a refused character by its
--     whole code point (U+E0041 was shown as U+E004).
SET LOCAL ROLE pyxp_owner;

ALTER TABLE pyxp.subject_locks ADD COLUMN campaign_id text;

CREATE FUNCTION pyxp.call_recorded(p_key text, p_inputs jsonb)
RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT EXISTS (SELECT FROM pyxp.xp_requests q
                    WHERE q.key_hash = pyxp.key_hash(p_key)
                      AND q.inputs_digest = pyxp.request_inputs_digest(p_inputs))
$$;

COMMENT ON FUNCTION pyxp.call_recorded(text, jsonb) IS 'internal: whether a flow call or reversal was made before with the same key and inputs (a retry: it replays).';
REVOKE ALL ON FUNCTION pyxp.call_recorded(text, jsonb) FROM PUBLIC;

CREATE FUNCTION pyxp.code_point(p_char text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
AS $$ SELECT 'U+' || upper(lpad(to_hex(ascii(p_char)), greatest(4, length(to_hex(ascii(p_char)))), '0')) $$;

COMMENT ON FUNCTION pyxp.code_point(text) IS 'internal: a character''s code point as U+XXXX (all its hex digits).';
REVOKE ALL ON FUNCTION pyxp.code_point(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION pyxp.check_completion_owner(p_completion text, p_wallet text, p_campaign text,
                                            p_own_key text)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_subject text := 'completion:' || p_completion;
    v_campaign text;
    v_first jsonb;
BEGIN
    PERFORM pyxp.lock_subject(v_subject);
    SELECT l.campaign_id INTO v_campaign FROM pyxp.subject_locks l WHERE l.subject = v_subject;
    IF v_campaign IS NULL OR p_wallet IS NOT NULL THEN
        SELECT r.inputs INTO v_first
          FROM unnest(ARRAY['completion.submitted:' || p_completion, 'completion.outcome:' || p_completion]) k (key)
         CROSS JOIN LATERAL pyxp.recorded_request(k.key) r
         WHERE k.key <> p_own_key AND r.same_key
         ORDER BY r.created_at
         LIMIT 1;
    END IF;
    IF v_campaign IS NULL THEN
        -- The completion's first call since 0023: the campaign of its
        -- submission or outcome if it has one, else this call's.
        v_campaign := coalesce(v_first ->> 'campaign_id', p_campaign);
        UPDATE pyxp.subject_locks l SET campaign_id = v_campaign WHERE l.subject = v_subject;
    END IF;
    IF v_campaign IS DISTINCT FROM p_campaign
       OR (p_wallet IS NOT NULL AND v_first IS NOT NULL AND v_first ->> 'wallet' IS DISTINCT FROM p_wallet) THEN
        RAISE EXCEPTION 'completion % belongs to % on campaign %, not % on campaign %', p_completion,
                        coalesce(v_first ->> 'wallet', '(no completer yet)'), v_campaign,
                        coalesce(p_wallet, '(a moderator)'), p_campaign
            USING ERRCODE = 'PX011',
                  DETAIL = format('recorded: %s', coalesce(v_first, jsonb_build_object('campaign_id', v_campaign))),
                  HINT = 'name the completer wallet and campaign of the completion''s first call';
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
    v_key text := 'campaign.created:' || v_campaign;
    v_inputs jsonb := jsonb_build_object('wallet', v_wallet, 'campaign_type', v_type, 'mint_value', v_mint,
                                         'winstory_creates_video', v_video, 'no_rewards', v_no_rewards);
    v_known pyxp.campaigns;
    v_approved text;
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
    IF NOT EXISTS (SELECT FROM pyxp.recorded_request(v_key)) THEN
        -- The campaign's first creation: what earlier calls recorded of it
        -- must agree (0023). An approval of a campaign pyxp did not know
        -- named its creator and has no registry row to lock: approvals and
        -- creations serialise on the campaign's subject lock, so this read
        -- sees an approval that committed before, and one that comes after
        -- sees this creator in the registry.
        PERFORM pyxp.lock_subject('campaign:' || v_campaign);
        SELECT r.inputs ->> 'wallet' INTO v_approved
          FROM pyxp.recorded_request('campaign.approved:' || v_campaign) r WHERE r.same_key;
        IF v_known.creator_wallet <> v_wallet THEN  -- named by an agency's client registration
            RAISE EXCEPTION 'campaign % is the AGENCY_B2C campaign of %, whose clients were registered on it, not a campaign of %',
                            v_campaign, v_known.creator_wallet, v_wallet
                USING ERRCODE = 'PX011', HINT = format('create it with creator_wallet %s', v_known.creator_wallet);
        ELSIF v_known.campaign_type <> v_type THEN
            RAISE EXCEPTION 'campaign % is %, not %', v_campaign, v_known.campaign_type, v_type
                USING ERRCODE = 'PX011', HINT = format('pass campaign_type %s', v_known.campaign_type);
        ELSIF v_approved <> v_wallet THEN
            RAISE EXCEPTION 'campaign % was approved for creator %, not %', v_campaign, v_approved, v_wallet
                USING ERRCODE = 'PX011', HINT = format('create it with creator_wallet %s', v_approved);
        END IF;
    END IF;
    RETURN QUERY SELECT * FROM pyxp.post_award(
        v_key, v_inputs,
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
    -- Serialised with the campaign's creation (see award_campaign_creation).
    PERFORM pyxp.lock_subject('campaign:' || v_campaign);
    SELECT * INTO v_known FROM pyxp.campaigns c WHERE c.campaign_id = v_campaign;
    IF v_given IS NOT NULL AND pyxp.call_recorded('campaign.approved:' || v_campaign,
                                                   jsonb_build_object('wallet', v_given)) THEN
        NULL;  -- this very call again: it replays, whatever the registry says since
    ELSIF v_known.creator_wallet IS NOT NULL AND v_given IS NOT NULL AND v_given <> v_known.creator_wallet THEN
        RAISE EXCEPTION 'campaign % was created by %, not %', v_campaign, v_known.creator_wallet, v_given
            USING ERRCODE = 'PX011', HINT = 'omit creator_wallet: the registry knows it';
    ELSIF v_known.creator_wallet IS NULL AND v_given IS NULL THEN
        RAISE EXCEPTION 'unknown campaign %: its creator is needed', v_campaign
            USING ERRCODE = 'PX012', HINT = 'pass creator_wallet, or award the campaign creation first';
    ELSIF v_known.campaign_type IS NULL AND EXISTS (
              SELECT FROM pyxp.rules ru
               WHERE ru.ruleset_id = pyxp.active_ruleset_id() AND ru.event = 'campaign.approved'
                 AND ru.campaign_types IS NOT NULL) THEN
        -- Rules of the approval that depend on the campaign's type cannot be
        -- told without it: the call would use its key up for no row (0023).
        RAISE EXCEPTION 'unknown campaign %: its type is needed, the active rules of an approval depend on it',
                        v_campaign
            USING ERRCODE = 'PX012',
                  HINT = 'award the campaign creation first (or a vote naming its campaign_type)';
    ELSE
        v_given := coalesce(v_known.creator_wallet, v_given);
    END IF;
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
    -- The completion's submission (or outcome) made before, with these
    -- inputs or others, is the key's business: a replay, or PX010.
    IF NOT EXISTS (SELECT FROM pyxp.recorded_request(v_key)) THEN
        PERFORM pyxp.check_completion_owner(v_completion, v_wallet, v_campaign, v_key);
    END IF;
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
    v_key text := pyxp.vote_key('completion.vote', v_completion, 'completion_id', v_wallet);
    v_inputs jsonb := jsonb_build_object('vote_decision', v_vote, 'campaign_id', v_campaign, 'campaign_type', v_type,
                                         'wallet', v_wallet, 'completion_id', v_completion);
BEGIN
    IF NOT pyxp.call_recorded(v_key, v_inputs) THEN  -- a retry replays
        PERFORM pyxp.check_completion_owner(v_completion, NULL, v_campaign, '');
    END IF;
    RETURN QUERY SELECT * FROM pyxp.post_award(
        v_key, v_inputs,
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
    -- The same registration again: its row, nothing changed (SPEC 5),
    -- whatever the registry says since.
    RETURN QUERY
        SELECT a.* FROM pyxp.agency_b2c_clients a
         WHERE a.agency_wallet = v_agency AND a.client_email = v_email AND a.campaign_id = v_campaign;
    IF FOUND THEN
        RETURN;
    END IF;
    -- A campaign pyxp does not know becomes the agency's AGENCY_B2C campaign
    -- (0023), so that a creation by another wallet is refused; the registry
    -- row is locked until commit (a concurrent creation waits, then sees it).
    INSERT INTO pyxp.campaigns (campaign_id, campaign_type, creator_wallet)
    VALUES (v_campaign, 'AGENCY_B2C', v_agency)
    ON CONFLICT ON CONSTRAINT campaigns_pkey DO NOTHING;
    SELECT * INTO STRICT v_known FROM pyxp.campaigns c WHERE c.campaign_id = v_campaign FOR UPDATE;
    IF v_known.campaign_type <> 'AGENCY_B2C' OR v_known.creator_wallet <> v_agency THEN
        RAISE EXCEPTION 'campaign % is a % campaign created by %, not an AGENCY_B2C campaign of %',
                        v_campaign, v_known.campaign_type, v_known.creator_wallet, v_agency
            USING ERRCODE = 'PX022', HINT = 'register clients on the agency''s own AGENCY_B2C campaigns';
    ELSIF v_known.creator_wallet IS NULL THEN  -- its type recorded by a vote or completion: now its agency
        UPDATE pyxp.campaigns c SET creator_wallet = v_agency WHERE c.campaign_id = v_campaign;
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
        RAISE EXCEPTION 'invalid %: % contains %, an invisible or control character', p_what,
                        quote_literal(left(regexp_replace(v, '[^[:print:]]', '?', 'g'), 60)),
                        pyxp.code_point(v_invisible)
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
                THEN format('wallet %s holds %s, refused since 0002', quote_literal(b.user_wallet),
                            pyxp.code_point(pyxp.invisible_character(f.form)))
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


RESET ROLE;
