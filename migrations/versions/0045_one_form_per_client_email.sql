-- 0045: a client email has one form. Lower-casing a capital with a
-- combining mark that has no precomposed capital (J̌, İ + a mark, ...) left
-- the lower-case letter and its mark apart, where the same email typed in
-- lower case is composed by NFKC: J̌AN@… and ǰan@… were two clients, each
-- onboarded (a hostile test, helper-76); and a final sigma was not folded
-- (ΟΔΟΣ@… read οδοσ@…, οδος@… stayed). pyxp.checked_email now folds with
-- pyxp.folded_email: lower-cased, final sigma as sigma, NFKC again. The
-- forms stored before that read otherwise since are recorded in
-- xp_email_forms_before_0028, which the flows and the audit read
-- (pyxp.email_before_0028): such a client is still found, and paid once.
SET LOCAL ROLE pyxp_owner;

-- A client email's one form, from a text already trimmed and NFKC-normalised
-- (pyxp.trimmed_text): lower-cased (pyxp.lower_cased), the final sigma as a
-- sigma (Unicode's case folding: ΟΔΟΣ@… and οδος@… are one email), then
-- NFKC again. Lower-casing a capital with a combining mark that has no
-- precomposed capital form (J̌, H̱, T̈, İ + a mark, ...) leaves the lower-case
-- letter and its mark apart, where the same email typed in lower case is
-- composed by NFKC (ǰ): J̌AN@… and ǰan@… were two clients, each onboarded,
-- and the stored form did not read as itself (0045, a hostile test,
-- helper-76). A SQL function: inlined where it is called.
CREATE FUNCTION pyxp.folded_email(p_email text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
AS $$ SELECT normalize(replace(pyxp.lower_cased(p_email), 'ς', 'σ'), NFKC) $$;
REVOKE ALL ON FUNCTION pyxp.folded_email(text) FROM PUBLIC;
COMMENT ON FUNCTION pyxp.folded_email(text) IS 'internal: a client email''s one form (lower-cased, final sigma folded, NFKC).';

CREATE OR REPLACE FUNCTION pyxp.checked_email(p_email text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v text := pyxp.folded_email(pyxp.cleaned_text('client email', p_email, 254, 'PX002', true));
BEGIN
    IF v IS NULL OR length(v) > 254
       OR v !~ '^[^@[:space:][:cntrl:]]+@([^@[:space:][:cntrl:].]+[.])+[^@[:space:][:cntrl:].]+$'
    THEN
        RAISE EXCEPTION 'invalid client email: %', coalesce(quote_literal(left(p_email, 300)), 'NULL')
            USING ERRCODE = 'PX002',
                  HINT = 'an email is local@domain.tld: one @, a non-empty local part, a domain with a dot, at most 254 characters';
    END IF;
    RETURN v;
END
$$;

CREATE OR REPLACE FUNCTION pyxp.audit()
RETURNS TABLE (check_name text, user_wallet text, transaction_id bigint, detail text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET jit = off
SET parallel_tuple_cost = 0
AS $$
    SELECT 'active_ruleset', NULL::text, NULL::bigint,
           format('%s active rulesets, expected 1', count(*))
      FROM pyxp.rulesets r WHERE r.is_active HAVING count(*) <> 1
    UNION ALL
    -- The activations' history (0040) against the rulesets: the active
    -- ruleset is the last one activated, each ruleset's activated_at is its
    -- last activation's, each activation replaced the ruleset of the one
    -- before it (a row taken out of the history breaks that chain) and not
    -- itself (activating the active ruleset adds nothing), and the rows 0040
    -- rebuilt come first (one added later would pass as rebuilt: a hostile
    -- test). activated_at is the clock's: it may step back, so it is not
    -- checked against the order.
    SELECT 'activation_history', NULL, NULL, x.problem
      FROM (SELECT format('ruleset %s is active, but the last activation (%s) is of ruleset %s',
                          r.ruleset_id, coalesce(l.activation_id::text, 'none'), coalesce(l.ruleset_id::text, 'none'))
                   AS problem
              FROM pyxp.rulesets r
              LEFT JOIN LATERAL (SELECT a.activation_id, a.ruleset_id FROM pyxp.ruleset_activations a
                                  ORDER BY a.activation_id DESC LIMIT 1) l ON true
             WHERE r.is_active AND l.ruleset_id IS DISTINCT FROM r.ruleset_id
            UNION ALL
            SELECT format('ruleset %s says it was activated at %s, its last activation (%s) at %s', r.ruleset_id,
                          coalesce(r.activated_at::text, 'never'), coalesce(l.activation_id::text, 'none'),
                          coalesce(l.activated_at::text, 'never'))
              FROM pyxp.rulesets r
              LEFT JOIN LATERAL (SELECT a.activation_id, a.activated_at FROM pyxp.ruleset_activations a
                                  WHERE a.ruleset_id = r.ruleset_id
                                  ORDER BY a.activation_id DESC LIMIT 1) l ON true
             WHERE r.activated_at IS DISTINCT FROM l.activated_at
            UNION ALL
            SELECT format('activation %s says it replaced ruleset %s, but the activation before it is of ruleset %s',
                          a.activation_id, coalesce(a.previous_ruleset_id::text, 'none'),
                          coalesce(a.before::text, 'none'))
              FROM (SELECT a.*, lag(a.ruleset_id) OVER (ORDER BY a.activation_id) AS before
                      FROM pyxp.ruleset_activations a) a
             WHERE NOT a.reconstructed AND a.previous_ruleset_id IS DISTINCT FROM a.before
            UNION ALL
            SELECT format('activation %s says it replaced ruleset %s by itself', a.activation_id, a.ruleset_id)
              FROM pyxp.ruleset_activations a
             WHERE a.previous_ruleset_id = a.ruleset_id
            UNION ALL
            SELECT format('activation %s is marked rebuilt by 0040, but activation %s before it is not',
                          a.activation_id, f.activation_id)
              FROM pyxp.ruleset_activations a
              JOIN LATERAL (SELECT min(f.activation_id) AS activation_id FROM pyxp.ruleset_activations f
                             WHERE NOT f.reconstructed) f ON f.activation_id < a.activation_id
             WHERE a.reconstructed) x
    UNION ALL
    -- Each ruleset's tables against its definition (pyxp.definition_*, what
    -- install_ruleset wrote from it): the amounts, caps, curve and zone the
    -- other checks compare the ledger with (0029); a ruleset an older
    -- install_ruleset wrote otherwise, against the digest of its tables at
    -- 0029 (pyxp.xp_rulesets_as_installed).
    SELECT 'ruleset_mismatch', NULL, NULL, format('ruleset %s v%s (id %s): %s', rs.name, rs.version, rs.ruleset_id, x.problem)
      FROM pyxp.rulesets rs
      LEFT JOIN pyxp.xp_rulesets_as_installed k ON k.ruleset_id = rs.ruleset_id
     CROSS JOIN LATERAL (
            SELECT 'its content_hash is not the sha256 of its definition' AS problem
             WHERE rs.content_hash <> encode(sha256(convert_to(rs.definition::text, 'UTF8')), 'hex')
            UNION ALL
            SELECT p.problem FROM pyxp.ruleset_table_problems(rs) p(problem) WHERE k.ruleset_id IS NULL
            UNION ALL
            SELECT 'its tables are not what they were at 0029 (installed by an older pyxp, they differ from its definition)'
             WHERE k.tables_digest <> pyxp.ruleset_tables_digest(rs.ruleset_id)
         ) x
    UNION ALL
    -- The chain walk and, beside it, the unsliced checks (ranks, checkpoints
    -- without a balance, wallets' forms, caps: pyxp.unsliced_problems).
    SELECT * FROM pyxp.chain_problems(false, true)
    UNION ALL
    SELECT * FROM pyxp.row_problems(false)
    UNION ALL
    -- Rows of a wallet without a balance row: the walk starts from the
    -- balances, so it counts them; when every row was walked (the count
    -- matches), nothing more is read. The archived rows counted are the
    -- openings' (each checked against its positions by the walk), not the
    -- archives' own count, which nothing else checks (0029, a hostile test:
    -- an archive's count lowered by one hid a forged wallet's row).
    SELECT 'balance_mismatch', o.user_wallet, NULL, format('ledger sum %s but no xp_balances row', o.total)
      FROM (SELECT t.user_wallet, sum(t.xp_amount) AS total
              FROM pyxp.xp_transactions t
             WHERE NOT EXISTS (SELECT FROM pyxp.xp_balances b WHERE b.user_wallet = t.user_wallet)
             GROUP BY t.user_wallet) o
     WHERE (SELECT count(*) FROM pyxp.xp_transactions)
           + (SELECT coalesce(sum(o.archived_rows), 0) FROM pyxp.xp_wallet_openings o)
           <> (SELECT coalesce(sum(b.last_wallet_seq), 0) FROM pyxp.xp_balances b)
    UNION ALL
    SELECT 'opening_mismatch', NULL, NULL,
           format('the archives count %s rows archived, the openings %s', a.archived, o.archived)
      FROM (SELECT coalesce(sum(a.rows_archived), 0) AS archived FROM pyxp.xp_ledger_archives a) a,
           (SELECT coalesce(sum(o.archived_rows), 0) AS archived FROM pyxp.xp_wallet_openings o) o
     WHERE a.archived <> o.archived
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
                            AND t.idempotency_key ~ '^(campaign|completion)[.]vote(/[0-9]+)?:'
                         UNION
                         SELECT q.inputs ->> 'wallet', q.idempotency_key
                           FROM pyxp.xp_requests q
                          WHERE q.idempotency_key ~ '^(campaign|completion)[.]vote(/[0-9]+)?:') x
                  GROUP BY 1) v ON v.user_wallet = b.user_wallet
     WHERE coalesce(b.total_moderations, 0) <> coalesce(v.votes, 0)
    UNION ALL
    -- The campaigns' registry against the ledger: a campaign's creation and
    -- approval rows are its creator's, and its creation rows name its type
    -- (0029, a hostile test: the registry's creator or type edited, which
    -- later approvals, votes and completions read, was clean).
    SELECT 'campaign_mismatch', t.user_wallet, t.id,
           format('campaign %s is %s''s (%s) in the registry, but %s row %s is %s''s (%s)', c.campaign_id,
                  c.creator_wallet, c.campaign_type, split_part(t.idempotency_key, ':', 1), t.id, t.user_wallet,
                  coalesce(t.metadata ->> 'campaign_type', 'no type'))
      FROM pyxp.xp_transactions t
      JOIN pyxp.campaigns c ON c.campaign_id = t.campaign_id
     WHERE t.request_digest IS NULL AND t.reverses IS NULL
       AND t.idempotency_key IN ('campaign.created:' || c.campaign_id, 'campaign.approved:' || c.campaign_id)
       AND ((c.creator_wallet IS NOT NULL AND t.user_wallet <> c.creator_wallet)
            OR (t.idempotency_key LIKE 'campaign.created:%' AND t.metadata ->> 'campaign_type' <> c.campaign_type))
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
     CROSS JOIN LATERAL (SELECT EXISTS (
                SELECT FROM pyxp.xp_requests q
                 WHERE q.key_hash IN (pyxp.key_hash('client.onboarded:' || a.client_email),
                                      -- stored as read before 0028 or 0045, onboarded since (pyxp.email_before_0028)
                                      pyxp.key_hash('client.onboarded:'
                                                    || pyxp.folded_email(pyxp.trimmed_text(a.client_email, true)))))
                AS onboarded) q
     WHERE a.xp_granted <> q.onboarded
    UNION ALL
    -- Client emails stored before 0002 that today's checks would read
    -- otherwise (the wallets: pyxp.unsliced_problems).
    SELECT 'identity_not_normalised', a.client_wallet, NULL,
           format('client email %s of registration %s is read %s since 0002', quote_literal(a.client_email), a.id,
                  coalesce(quote_literal(f.form), 'as refused'))
      FROM pyxp.agency_b2c_clients a
     CROSS JOIN LATERAL (SELECT CASE WHEN pyxp.invisible_character(x.t) IS NULL THEN x.t END AS form
                           FROM (SELECT pyxp.folded_email(pyxp.trimmed_text(a.client_email, true)) AS t) x) f
     WHERE f.form IS DISTINCT FROM a.client_email
       -- or as read before 0028 (lower() in the database's collation), or
       -- a form 0028 or 0045 recorded (pyxp.email_before_0028: the flows
       -- find the registration by it)
       AND (f.form IS NULL OR lower(pyxp.trimmed_text(a.client_email, true)) IS DISTINCT FROM a.client_email)
       AND NOT EXISTS (SELECT FROM pyxp.xp_email_forms_before_0028 e
                        WHERE e.client_email = f.form AND e.stored_form = a.client_email)
    UNION ALL
    -- No finding; 40001 when the ledger was read with a snapshot older than
    -- an archive's commit (its rows would have been reported missing).
    SELECT NULL, NULL, NULL, NULL WHERE NOT pyxp.ledger_unmoved()
    ORDER BY 1, 2, 3
$$;

CREATE OR REPLACE FUNCTION pyxp.schema_revision()
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$ SELECT '0045' $$;

-- The forms 0028 recorded (a database whose collation lowered otherwise),
-- under the form 0045 reads their email as: the flows look them up by it.
INSERT INTO pyxp.xp_email_forms_before_0028 (client_email, stored_form)
SELECT pyxp.folded_email(e.client_email), e.stored_form
  FROM pyxp.xp_email_forms_before_0028 e
 WHERE pyxp.folded_email(e.client_email) <> e.client_email
ON CONFLICT DO NOTHING;

-- The forms stored up to 0044 (registrations, onboarding keys) that
-- pyxp.folded_email reads otherwise, where that is all that differs: a
-- form checked_email gave (lower-cased, trimmed, no invisible character)
-- whose NFC is its NFKC (not a form stored before 0002, NFKC-folded since:
-- those stay the audit's identity_not_normalised, for a DBA to decide).
INSERT INTO pyxp.xp_email_forms_before_0028 (client_email, stored_form)
SELECT DISTINCT pyxp.folded_email(f.form), f.form
  FROM (SELECT a.client_email AS form FROM pyxp.agency_b2c_clients a
        UNION
        SELECT substr(q.idempotency_key, 18) FROM pyxp.xp_requests q
         WHERE q.idempotency_key LIKE 'client.onboarded:%'
        UNION
        SELECT substr(t.idempotency_key, 18) FROM pyxp.xp_transactions t
         WHERE t.idempotency_key LIKE 'client.onboarded:%') f
 WHERE pyxp.folded_email(f.form) <> f.form
   AND pyxp.lower_cased(f.form) = f.form
   AND pyxp.trimmed_text(f.form, false) = f.form
   AND pyxp.invisible_character(f.form) IS NULL
   AND normalize(f.form, NFC) = normalize(f.form, NFKC)
ON CONFLICT DO NOTHING;

RESET ROLE;
