-- Downgrade of 0004: client_email_locks and the functions of 0003 again.
-- Refused when 0003 would misread what 0004 stored: its vote keys would not
-- find /2 keys (a retry would award twice).
DO $guard$
BEGIN
    IF EXISTS (SELECT FROM pyxp.xp_requests q
                WHERE q.idempotency_key ~ '^(campaign|completion)[.]vote/[0-9]+:'
                   OR (q.idempotency_key ~ '^(campaign|completion)[.]vote:' AND q.idempotency_key ~ '%(25|3A)'))
       OR EXISTS (SELECT FROM pyxp.campaigns c WHERE c.creator_wallet IS NULL) THEN
        RAISE EXCEPTION 'cannot downgrade below 0002 nor to 0003: votes keyed since 0002 (ids with : or %%) or campaigns known by type only would be misread by 0003 and earlier'
            USING ERRCODE = 'PX024', HINT = 'stay on 0004 or later';
    END IF;
END
$guard$;
SET LOCAL ROLE pyxp_owner;
CREATE TABLE pyxp.client_email_locks (
    client_email  text PRIMARY KEY
);
REVOKE ALL ON pyxp.client_email_locks FROM PUBLIC;
GRANT SELECT ON pyxp.client_email_locks TO pyxp_reader;

CREATE FUNCTION pyxp.lock_client_email(p_email text)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM FROM pyxp.client_email_locks l WHERE l.client_email = p_email FOR UPDATE;
    IF NOT FOUND THEN
        -- A concurrent first insert of the same email makes this one wait, then skip.
        INSERT INTO pyxp.client_email_locks (client_email) VALUES (p_email)
        ON CONFLICT (client_email) DO NOTHING;
        PERFORM FROM pyxp.client_email_locks l WHERE l.client_email = p_email FOR UPDATE;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION pyxp.cleaned_text(p_what text, p_value text, p_max integer, p_code text, p_nfkc boolean)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v text := p_value;
    v_invisible text;
BEGIN
    IF v IS NULL THEN
        RETURN NULL;
    ELSIF octet_length(v) > 4 * p_max + 1024 THEN
        RAISE EXCEPTION 'invalid %: a text of % bytes', p_what, octet_length(v)
            USING ERRCODE = p_code, HINT = format('%s has at most %s characters', p_what, p_max);
    END IF;
    IF p_nfkc AND octet_length(v) <> length(v) THEN  -- ASCII is already in NFKC
        v := normalize(v, NFKC);
    END IF;
    v := regexp_replace(v, '^[[:space:]\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+'
                           '|[[:space:]\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$', '', 'g');
    v_invisible := substring(v from '[\u0001-\u001f\u007f-\u009f\u00ad\u034f\u0600-\u0605\u061c\u06dd\u070f'
                                     '\u0890-\u0891\u08e2\u115f-\u1160\u17b4-\u17b5\u180b-\u180f\u200b-\u200f'
                                     '\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufffb'
                                     '\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3'
                                     '\U0001d173-\U0001d17a\U000e0000-\U000e0fff]');
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

CREATE OR REPLACE FUNCTION pyxp.vote_key(p_event text, p_subject text, p_subject_field text, p_wallet text)
RETURNS text
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_legacy text := format('%s:%s:%s', p_event, p_subject, p_wallet);
BEGIN
    IF p_subject ~ '[%:]' AND EXISTS (
           SELECT FROM pyxp.xp_requests q
            WHERE q.idempotency_key = v_legacy
              AND q.inputs ->> 'wallet' = p_wallet AND q.inputs ->> p_subject_field = p_subject) THEN
        RETURN v_legacy;
    END IF;
    RETURN format('%s:%s:%s', p_event, pyxp.key_part(p_subject), p_wallet);
END
$$;

CREATE OR REPLACE FUNCTION pyxp.check_completion_owner(p_completion text, p_wallet text, p_campaign text,
                                            p_own_key text)
RETURNS void
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_first jsonb;
BEGIN
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
    -- A vote or completion may have recorded the campaign's type already (no
    -- creator yet). A campaign created before is the key's business (PX010).
    SELECT * INTO v_known FROM pyxp.campaigns c WHERE c.campaign_id = v_campaign;
    IF v_known.creator_wallet IS NULL AND v_known.campaign_type <> v_type THEN
        RAISE EXCEPTION 'campaign % is %, not %', v_campaign, v_known.campaign_type, v_type
            USING ERRCODE = 'PX011', HINT = format('pass campaign_type %s', v_known.campaign_type);
    END IF;
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
    -- A row recorded by a vote or completion gets its creator; a replay finds
    -- the row complete: nothing is written.
    INSERT INTO pyxp.campaigns AS c (campaign_id, campaign_type, creator_wallet)
    VALUES (v_campaign, v_type, v_wallet)
    ON CONFLICT ON CONSTRAINT campaigns_pkey DO UPDATE SET creator_wallet = EXCLUDED.creator_wallet
        WHERE c.creator_wallet IS NULL;
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
    PERFORM pyxp.require_read_committed();
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
    -- Every group below this is final (see above).
    v_horizon xid8 := pg_snapshot_xmin(pg_current_snapshot());
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
                    g.idempotency_key, g.metadata, g.reverses, g.created_at, g.feed_xid
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
          JOIN pyxp.xp_requests q ON q.idempotency_key = p.idempotency_key
         CROSS JOIN LATERAL pyxp.curve_position(q.ruleset_id, p.balance_after - p.xp_amount) before_
         CROSS JOIN LATERAL pyxp.curve_position(q.ruleset_id, p.balance_after) after_
         ORDER BY p.cur
         LIMIT v_max;
END
$$;

DROP FUNCTION pyxp.trimmed_text(p_value text, p_nfkc boolean);
DROP FUNCTION pyxp.invisible_character(p_value text);
DROP FUNCTION pyxp.lock_subject(p_subject text);
DROP TABLE pyxp.subject_locks;

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
GRANT EXECUTE ON FUNCTION pyxp.changes(bigint, integer, text) TO pyxp_writer, pyxp_reader;

COMMENT ON FUNCTION pyxp.award_campaign_creation(text, text, text, numeric, boolean, boolean) IS
    'API: campaign created (seed POST /api/xp/award-campaign-creation): MINT and options to the creator; registers the campaign. Once per campaign.';
COMMENT ON FUNCTION pyxp.register_agency_client(text, text, text, text) IS
    'API: an agency registers a B2C client email for a campaign: pending until the client signs in.';
COMMENT ON FUNCTION pyxp.onboard_agency_client(text, text) IS
    'API: the client signs in with its email: onboarding XP to the client wallet (never the agency), once per email.';
COMMENT ON FUNCTION pyxp.audit() IS
    'API: one row per inconsistency between ledger, balances, levels, rules and registrations; none when healthy.';
COMMENT ON FUNCTION pyxp.cleaned_text(text, text, integer, text, boolean) IS
    'internal: size check, NFKC (identities), Unicode trim, refusal of invisible characters.';
COMMENT ON FUNCTION pyxp.checked_award_key(text) IS 'internal: a caller''s idempotency key outside pyxp''s namespaces, or PX016.';
COMMENT ON FUNCTION pyxp.vote_key(text, text, text, text) IS 'internal: the key of a vote, or the one an earlier version stored for it.';
COMMENT ON FUNCTION pyxp.check_completion_owner(text, text, text, text) IS 'internal: PX011 when a call names another completer or campaign than the completion''s.';
COMMENT ON FUNCTION pyxp.lock_client_email(text) IS 'internal: the row lock serialising one client email''s registrations and onboarding.';
COMMENT ON FUNCTION pyxp.changes(bigint, integer, text) IS
    'API: the change feed: committed ledger rows after a cursor, each exactly once, with total_xp and the levels before and after; pass back the last cursor.';

RESET ROLE;
