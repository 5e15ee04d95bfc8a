-- The Winstory flows (seeds: xp-flow-diagrams, xp-completers): thin wrappers
-- over pyxp.post_award. Each validates its inputs, derives the natural
-- idempotency key of SPEC section 4 and the facts that select rules (event,
-- campaign type, condition), and lets the engine do the rest. No XP amount
-- is written here: the active ruleset decides.
--
--   event                 key                                   facts
--   campaign.created      campaign.created:<campaign>           winstory_creates_video, no_rewards
--   campaign.approved     campaign.approved:<campaign>          -
--   campaign.vote         campaign.vote:<campaign*>:<moderator> VALID | REFUSE
--   completion.submitted  completion.submitted:<completion>     free | paid
--   completion.validated  completion.outcome:<completion>       -   (one key: validated
--   completion.refused    completion.outcome:<completion>       -    or refused, never both)
--   completion.vote       completion.vote:<completion*>:<mod.>  VALID | REFUSE
--   client.onboarded      client.onboarded:<email>              -
--
-- Keys are injective (SPEC 4): a key of one id is its prefix + the id; in a
-- key of two parts, the first (*) is escaped by pyxp.key_part ('%' -> '%25',
-- ':' -> '%3A'), so the first unescaped ':' after the prefix splits the two:
-- award_moderation_vote('b:0xmod', 'a', ...) and ('0xmod', 'a:b', ...) are
-- two votes. Ids without '%' or ':' give the same key text as before that
-- escaping (0002), and pyxp.vote_key finds the key an earlier version
-- stored for the others, so a retry spanning the upgrade replays.

-- One part of a key of two parts, escaped so that the key is injective.
CREATE FUNCTION pyxp.key_part(p_id text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT replace(replace(p_id, '%', '%25'), ':', '%3A') $$;

-- The key of a vote: <event>:<key_part(subject)>:<wallet>. Before 0002 the
-- subject was not escaped, so keys stored by 0001 are not injective:
--   * when the subject contains '%' or ':', the key 0001 stored for this very
--     vote (same wallet and subject in its inputs) is the one to replay;
--   * a key 0001 stored for ANOTHER vote may hold this vote's key text
--     (0001's ('0xmod', 'a:b') and this ('b:0xmod', 'a') both spell
--     campaign.vote:a:b:0xmod): keys 0002 builds are injective, so a stored
--     key whose inputs name another wallet or subject is such a legacy key,
--     and this vote takes <event>/2:... instead (the same on every retry).
CREATE FUNCTION pyxp.vote_key(p_event text, p_subject text, p_subject_field text, p_wallet text)
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

-- The campaign type of a call: the registry's when pyxp knows the campaign
-- (a different type passed: PX011), else the one passed (none: PX012), which
-- the registry then records (creator unknown), so later votes and outcomes
-- may omit it (SPEC 4). A concurrent first call with another type loses on
-- the registry's primary key and gets PX011.
CREATE FUNCTION pyxp.resolved_campaign_type(p_campaign_id text, p_campaign_type text)
RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    v_given text := pyxp.checked_campaign_type(p_campaign_type);
    v_known text;
BEGIN
    SELECT c.campaign_type INTO v_known FROM pyxp.campaigns c WHERE c.campaign_id = p_campaign_id;
    IF v_known IS NULL AND v_given IS NOT NULL THEN
        PERFORM pyxp.require_read_committed();  -- before its first write, like every writer
        INSERT INTO pyxp.campaigns (campaign_id, campaign_type) VALUES (p_campaign_id, v_given)
        ON CONFLICT ON CONSTRAINT campaigns_pkey DO NOTHING;
        SELECT c.campaign_type INTO STRICT v_known FROM pyxp.campaigns c WHERE c.campaign_id = p_campaign_id;
    END IF;
    IF v_known IS NOT NULL AND v_given IS NOT NULL AND v_known <> v_given THEN
        RAISE EXCEPTION 'campaign % is %, not %', p_campaign_id, v_known, v_given
            USING ERRCODE = 'PX011', HINT = format('pass campaign_type %s, or omit it', v_known);
    ELSIF v_known IS NULL THEN
        RAISE EXCEPTION 'unknown campaign %: its type is needed', p_campaign_id
            USING ERRCODE = 'PX012',
                  HINT = 'pass campaign_type (B2C, AGENCY_B2C, INDIVIDUAL), or award the campaign creation first';
    END IF;
    RETURN v_known;
END
$$;

-- Every call about one flow subject serialises on the lock of its row in
-- pyxp.subject_locks (created on first use): an email's registrations and
-- onboarding ('client_email:<email>': a registration can never slip in
-- between an onboarding's read of the pending rows and its commit), a
-- completion's submission, outcome and votes ('completion:<id>': two of them
-- naming different completers cannot both pass check_completion_owner). The
-- statements after it see what the previous holder committed (READ
-- COMMITTED). A row lock, not an advisory lock: locking it takes UPDATE on
-- that table, which no role but the owner has (SPEC 7: a role without pyxp
-- privileges can take any advisory lock and block pyxp).
CREATE FUNCTION pyxp.lock_subject(p_subject text)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pyxp.require_read_committed();  -- before its first write, like every writer
    PERFORM FROM pyxp.subject_locks l WHERE l.subject = p_subject FOR UPDATE;
    IF NOT FOUND THEN
        -- A concurrent first insert of the same subject makes this one wait, then skip.
        INSERT INTO pyxp.subject_locks (subject) VALUES (p_subject)
        ON CONFLICT (subject) DO NOTHING;
        PERFORM FROM pyxp.subject_locks l WHERE l.subject = p_subject FOR UPDATE;
    END IF;
END
$$;

-- A completion belongs to the campaign of the first call that named it (its
-- submission, its outcome or a moderator's vote: subject_locks.campaign_id,
-- 0023; before 0023 votes were left out, and a submission could name another
-- campaign than the votes before it) and to the completer of its submission,
-- or of its outcome when that came first. A later call naming another
-- campaign, or another completer (a submission or outcome), is refused
-- (PX011), before anything is written (SPEC 4). The call's own key is
-- skipped; a retry of a call made before is not checked at all (its caller
-- asks pyxp.call_recorded first): it replays. Holds the completion's subject
-- lock until commit (see lock_subject). p_mint: the MINT value of an
-- INDIVIDUAL submission or refusal, which must be its counterpart's (PX011,
-- 0028: a refusal naming 0.01 took 0.005 XP back from a +5,000 submission, a
-- hostile test); a validation's, or another type's, is not compared.
CREATE FUNCTION pyxp.check_completion_owner(p_completion text, p_wallet text, p_campaign text,
                                            p_own_key text, p_mint numeric DEFAULT NULL)
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
    ELSIF p_mint IS NOT NULL AND v_first ->> 'event' IN ('completion.submitted', 'completion.refused')
          AND (v_first ->> 'MINT_VALUE_WINC')::numeric <> p_mint THEN
        RAISE EXCEPTION 'completion % was recorded with mint_value_winc %, not %', p_completion,
                        v_first ->> 'MINT_VALUE_WINC', p_mint
            USING ERRCODE = 'PX011',
                  DETAIL = format('recorded: %s', v_first),
                  HINT = 'pass the mint_value_winc of the completion''s submission';
    END IF;
END
$$;

-- A campaign type that must be given (campaign creation): NULL is PX003 too.
CREATE FUNCTION pyxp.required_campaign_type(p_campaign_type text)
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

-- Formula inputs of a call, without the ones not given. Which flow passes
-- which is mirrored in pyxp/ruleset_config.py (FLOW_INPUTS), which refuses a
-- flow rule naming another: keep the two in step.
CREATE FUNCTION pyxp.formula_inputs(p_price_completion numeric, p_mint_value_winc numeric, p_mint_value numeric)
RETURNS jsonb
LANGUAGE sql IMMUTABLE
AS $$
    SELECT jsonb_strip_nulls(jsonb_build_object('PRICE_COMPLETION', p_price_completion,
                                                'MINT_VALUE_WINC', p_mint_value_winc,
                                                'MINT_VALUE', p_mint_value))
$$;

-- Seed: POST /api/xp/award-campaign-creation. Registers the campaign (id ->
-- type, creator) and awards the creation rules: the MINT of its type, plus
-- the options chosen (Winstory creates the video, no rewards). Once per
-- campaign; the same campaign id with other inputs: PX010.
CREATE FUNCTION pyxp.award_campaign_creation(
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

-- Campaign approved by moderation: the approval rules, to the creator. The
-- creator comes from the registry; passing another one is refused (PX011); an
-- unknown campaign needs creator_wallet (PX012), and its type when a rule of
-- the approval depends on it (PX012). Once per campaign.
CREATE FUNCTION pyxp.award_campaign_approval(campaign_id text, creator_wallet text DEFAULT NULL)
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

-- Seed: POST /api/xp/award-moderation. A moderator's vote on a campaign:
-- the vote rules (VALID / REFUSE), counted in total_moderations. Once per
-- (campaign, moderator); another decision later: PX010.
CREATE FUNCTION pyxp.award_moderation_vote(
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

-- Seed: POST /api/xp/award-completion. Neither flag: the submission (free or
-- paid: PRICE_COMPLETION; INDIVIDUAL: MINT_VALUE_WINC). is_validated /
-- is_refused: the moderation outcome, once per completion and only one of
-- the two ever. Refused before anything is written: both flags (PX005), paid
-- without a positive price or a price on a free mission (PX006), INDIVIDUAL
-- submission or refusal without a positive mint_value_winc (PX007). A free
-- mission may pass price_completion 0 (no price).
CREATE FUNCTION pyxp.award_completion(
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
    v_key := CASE WHEN v_event = 'completion.submitted' THEN 'completion.submitted:' ELSE 'completion.outcome:' END
             || v_completion;
    v_inputs := jsonb_build_object('event', v_event, 'wallet', v_wallet, 'campaign_id', v_campaign,
                                   'campaign_type', v_type, 'is_paid', v_paid);
    -- A free mission's price 0 is no price: one call with or without it
    -- (0028: a retry without it got PX010, a hostile test). A call recorded
    -- with its 0 before 0028 keeps it, and replays either way.
    IF NOT v_paid AND coalesce(v_price, 0) = 0 THEN
        v_price := CASE WHEN pyxp.call_recorded(v_key, v_inputs || pyxp.formula_inputs(0, v_mint, NULL)) THEN 0 END;
    END IF;
    v_params := pyxp.formula_inputs(v_price, v_mint, NULL);
    v_inputs := v_inputs || v_params;
    -- The completion's submission (or outcome) made before, with these
    -- inputs or others, is the key's business: a replay, or PX010.
    IF NOT EXISTS (SELECT FROM pyxp.recorded_request(v_key)) THEN
        PERFORM pyxp.check_completion_owner(v_completion, v_wallet, v_campaign, v_key,
                                            CASE WHEN v_type = 'INDIVIDUAL' AND NOT v_validated THEN v_mint END);
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

-- Seed: awardCompletionModerationXP. A moderator's vote on a completion,
-- counted in total_moderations. Once per (completion, moderator).
CREATE FUNCTION pyxp.award_completion_moderation(
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

-- Seed: agency-client 'register'. A pending registration: the agency's B2C
-- client will earn the onboarding XP when it first signs in. If pyxp knows
-- the campaign, it must be an AGENCY_B2C campaign created by that agency
-- (PX022); if it does not, the registry records it as one (0023: another
-- wallet's creation of it is then refused). The same (agency, email,
-- campaign) again changes nothing and returns the existing row, whatever the
-- registry says since. A client already onboarded gets the row granted at
-- once, without XP again.
CREATE FUNCTION pyxp.register_agency_client(
    agency_wallet text, client_email text, campaign_id text, company_name text DEFAULT NULL)
RETURNS SETOF pyxp.agency_b2c_clients
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_agency text := pyxp.checked_wallet(register_agency_client.agency_wallet, 'agency wallet');
    v_email text := pyxp.checked_email(register_agency_client.client_email);
    v_before text[] := pyxp.email_before_0028(register_agency_client.client_email, v_email);
    v_campaign text := pyxp.checked_identifier('campaign id', register_agency_client.campaign_id);
    v_company text;
    v_known pyxp.campaigns;
    v_approved text;     -- the creator an approval of the campaign named, if any
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
    PERFORM pyxp.follow_timeline();  -- (a failover or a point-in-time recovery: the ids move past the history left, 0033)
    PERFORM pyxp.require_ledger_cluster();  -- (PX032: ids of the registrations' sequence may be taken, 0032)
    -- The same registration again: its row, nothing changed (SPEC 5),
    -- whatever the registry says since.
    RETURN QUERY
        SELECT a.* FROM pyxp.agency_b2c_clients a
         WHERE a.agency_wallet = v_agency AND a.client_email = ANY (v_email || v_before) AND a.campaign_id = v_campaign;
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
    END IF;
    -- An approval names the campaign's creator too, and may precede its
    -- creation: it must be this agency (0028; a hostile test saw an approval
    -- pay +100 to one wallet and a registration make the campaign another's,
    -- which then nobody could create). Serialised with approvals and
    -- creations on the campaign's subject lock (see award_campaign_creation),
    -- taken after the registry row's, as a creation does.
    PERFORM pyxp.lock_subject('campaign:' || v_campaign);
    SELECT r.inputs ->> 'wallet' INTO v_approved
      FROM pyxp.recorded_request('campaign.approved:' || v_campaign) r WHERE r.same_key;
    IF v_approved <> v_agency THEN
        RAISE EXCEPTION 'campaign % was approved for creator %, not the agency %', v_campaign, v_approved, v_agency
            USING ERRCODE = 'PX022', HINT = 'register clients on the agency''s own AGENCY_B2C campaigns';
    ELSIF v_known.creator_wallet IS NULL THEN  -- its type recorded by a vote or completion: now its agency
        UPDATE pyxp.campaigns c SET creator_wallet = v_agency WHERE c.campaign_id = v_campaign;
    END IF;

    PERFORM pyxp.lock_subject('client_email:' || v_email);
    SELECT r.inputs ->> 'wallet' AS wallet, r.created_at, e.email INTO v_onboarded
      FROM unnest(v_email || v_before) WITH ORDINALITY e(email, n)
     CROSS JOIN LATERAL pyxp.recorded_request('client.onboarded:' || e.email) r
     ORDER BY e.n
     LIMIT 1;
    IF v_onboarded.wallet = v_agency THEN  -- as onboard_agency_client refuses it the other way round
        RAISE EXCEPTION 'client % was onboarded with wallet %, the registering agency''s', v_email, v_agency
            USING ERRCODE = 'PX021', HINT = 'the onboarding XP goes to the client''s own wallet, never the agency';
    END IF;
    -- Stored as the email's onboarding spelt it (before 0028, maybe otherwise).
    v_email := coalesce(v_onboarded.email, v_email);
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

-- Seed: agency-client 'onboard'. The client signs in with its email: the
-- onboarding rules award it (never the agency) once per email ever; the
-- agency wallet(s) are kept in the row's metadata; every pending registration
-- of that email is marked granted with the client wallet and onboarded_at.
-- No pending registration and no earlier onboarding: no rows, nothing
-- written. A client wallet equal to a registering agency's: PX021. Another
-- wallet than at the first onboarding: PX010.
CREATE FUNCTION pyxp.onboard_agency_client(client_email text, client_wallet text)
RETURNS SETOF pyxp.award_result
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_email text := pyxp.checked_email(onboard_agency_client.client_email);
    v_before text[] := pyxp.email_before_0028(onboard_agency_client.client_email, v_email);
    v_wallet text := pyxp.checked_wallet(onboard_agency_client.client_wallet, 'client wallet');
    v_key text := 'client.onboarded:' || v_email;
    v_pending record;
BEGIN
    PERFORM pyxp.require_read_committed();
    -- An email onboarded before 0028 in the form of that time (see
    -- pyxp.email_before_0028) keeps its key: a replay, or PX010.
    IF cardinality(v_before) > 0
       AND NOT EXISTS (SELECT FROM pyxp.xp_requests q WHERE q.key_hash = pyxp.key_hash(v_key)) THEN
        v_key := coalesce((SELECT 'client.onboarded:' || f.form
                             FROM unnest(v_before) WITH ORDINALITY f(form, n)
                            WHERE EXISTS (SELECT FROM pyxp.xp_requests q
                                           WHERE q.key_hash = pyxp.key_hash('client.onboarded:' || f.form))
                            ORDER BY f.n LIMIT 1), v_key);
    END IF;
    -- Nobody registered this client and it was never onboarded: nothing to
    -- grant, and nothing written, not even its subject lock's row (0028). A
    -- registration committing meanwhile stays pending until the next sign-in,
    -- as if this one had come first.
    IF NOT EXISTS (SELECT FROM pyxp.agency_b2c_clients a WHERE a.client_email = ANY (v_email || v_before))
       AND NOT EXISTS (SELECT FROM pyxp.xp_requests q WHERE q.key_hash = pyxp.key_hash(v_key)) THEN
        RETURN;
    END IF;
    PERFORM pyxp.lock_subject('client_email:' || v_email);
    SELECT array_agg(a.agency_wallet ORDER BY a.id) AS agencies,
           array_agg(a.campaign_id ORDER BY a.id) AS campaigns,
           (array_agg(a.company_name ORDER BY a.id) FILTER (WHERE a.company_name IS NOT NULL))[1] AS company
      INTO v_pending
      FROM pyxp.agency_b2c_clients a
     WHERE a.client_email = ANY (v_email || v_before) AND NOT a.xp_granted;

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
     WHERE a.client_email = ANY (v_email || v_before) AND NOT a.xp_granted;
END
$$;
