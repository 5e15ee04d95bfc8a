-- 0040: the history of ruleset activations (pyxp.ruleset_activations):
-- which ruleset, and so which rules, floor, timezone and caps, was in force
-- at any instant. rulesets.activated_at keeps a ruleset's latest activation
-- only: a ruleset activated again overwrote it, and a DBA could not tell
-- what was in force before (a DBA's review, 0039). Append-only; audit()
-- checks it against the rulesets (activation_history). And pyxp_reader (and pyxp_writer) may
-- compute a key's hash (pyxp.key_hash), to find its claim.
SET LOCAL ROLE pyxp_owner;

CREATE TABLE pyxp.ruleset_activations (
    activation_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ruleset_id           bigint NOT NULL REFERENCES pyxp.rulesets,
    activated_at         timestamptz NOT NULL,
    previous_ruleset_id  bigint REFERENCES pyxp.rulesets,  -- the ruleset it replaced (NULL: the first)
    reconstructed        boolean NOT NULL DEFAULT false
);

-- An active ruleset without an activation time (no pyxp path leaves one;
-- an edit may have) takes its creation time: the history's last row must be
-- its activation, and audit() compares the two (a hostile test: the row was
-- left out, and the audit reported it for good, the history append-only).
UPDATE pyxp.rulesets r SET activated_at = r.created_at WHERE r.is_active AND r.activated_at IS NULL;

-- The activations before 0040, rebuilt from what the rulesets kept: each
-- activated ruleset's latest activation, in time order, the active one last
-- (audit() holds the active ruleset to the last activation). A ruleset
-- activated, replaced and activated again shows its last activation only.
INSERT INTO pyxp.ruleset_activations (ruleset_id, activated_at, previous_ruleset_id, reconstructed)
SELECT r.ruleset_id, r.activated_at, lag(r.ruleset_id) OVER w, true
  FROM pyxp.rulesets r
 WHERE r.activated_at IS NOT NULL
WINDOW w AS (ORDER BY r.is_active, r.activated_at, r.ruleset_id)
 ORDER BY r.is_active, r.activated_at, r.ruleset_id;

-- The activations' history is append-only too: an UPDATE or DELETE
-- would rewrite which ruleset was in force when (PX013; its TRUNCATE:
-- sql/15_table_guards.sql). ALWAYS, as the ledger's.
CREATE FUNCTION pyxp.refuse_history_change()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'pyxp.% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'PX013',
              HINT = 'a ruleset is activated with pyxp rules apply (pyxp.install_ruleset); its history stays';
END
$$;
REVOKE ALL ON FUNCTION pyxp.refuse_history_change() FROM PUBLIC;
COMMENT ON FUNCTION pyxp.refuse_history_change() IS 'internal: trigger refusing UPDATE, DELETE on ruleset_activations (PX013).';

CREATE TRIGGER ruleset_activations_append_only
    BEFORE UPDATE OR DELETE ON pyxp.ruleset_activations
    FOR EACH ROW EXECUTE FUNCTION pyxp.refuse_history_change();
ALTER TABLE pyxp.ruleset_activations ENABLE ALWAYS TRIGGER ruleset_activations_append_only;
CREATE TRIGGER ruleset_activations_no_truncate BEFORE TRUNCATE ON pyxp.ruleset_activations
    FOR EACH STATEMENT EXECUTE FUNCTION pyxp.refuse_truncate();
ALTER TABLE pyxp.ruleset_activations ENABLE ALWAYS TRIGGER ruleset_activations_no_truncate;

REVOKE ALL ON pyxp.ruleset_activations FROM PUBLIC;
GRANT SELECT ON pyxp.ruleset_activations TO pyxp_reader;

-- A claim is found by its key's hash: a DBA reading xp_award_claims or
-- xp_requests computes it (before, only by writing the formula out).
GRANT EXECUTE ON FUNCTION pyxp.key_hash(text) TO pyxp_writer, pyxp_reader;
COMMENT ON FUNCTION pyxp.key_hash(text) IS 'API: the claims'' key (xp_award_claims, xp_requests), 16 bytes of sha256 of an idempotency key.';

CREATE OR REPLACE FUNCTION pyxp.activate_ruleset(p_ruleset_id bigint)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    v_zone text := (SELECT r.timezone FROM pyxp.rulesets r WHERE r.ruleset_id = p_ruleset_id);
    v_previous bigint := (SELECT r.ruleset_id FROM pyxp.rulesets r WHERE r.is_active);
    -- The instant of the switch: after the caller's lock (the transaction may
    -- have waited for it since its start). A capped award writes no row
    -- dated before it (pyxp.append_rows), and the seed counts the periods
    -- containing it.
    v_at timestamptz := clock_timestamp();
BEGIN
    IF (SELECT r.is_active FROM pyxp.rulesets r WHERE r.ruleset_id = p_ruleset_id) THEN
        RETURN 0;
    END IF;
    IF (SELECT r.timezone FROM pyxp.rulesets r WHERE r.is_active) IS DISTINCT FROM v_zone THEN
        -- (the archived rows' periods are kept in the archive's zone only: PX029)
        PERFORM pyxp.require_whole_ledger(format('activating a ruleset in timezone %s', v_zone));
        PERFORM pyxp.rebuild_period_columns(v_zone);
    END IF;
    -- An allowance whose periods move (another zone, another per) starts
    -- its current period from what that period already used.
    IF (SELECT r.has_caps FROM pyxp.rulesets r WHERE r.ruleset_id = p_ruleset_id) THEN
        PERFORM pyxp.seed_cap_usage(p_ruleset_id, v_previous, v_at);
    END IF;
    -- Two statements: the partial unique index allows one active row at a time.
    UPDATE pyxp.rulesets r SET is_active = false WHERE r.is_active;
    UPDATE pyxp.rulesets r SET is_active = true, activated_at = v_at WHERE r.ruleset_id = p_ruleset_id;
    -- The history (0040): which ruleset was in force from when. Its
    -- activation_id is taken under the caller's SHARE ROW EXCLUSIVE lock on
    -- xp_balances (pyxp.hold_awards), which one activation holds at a time:
    -- the ids' order is the activations' (audit() checks the chain by it).
    INSERT INTO pyxp.ruleset_activations (ruleset_id, activated_at, previous_ruleset_id)
    VALUES (p_ruleset_id, v_at, v_previous);
    RETURN pyxp.recalculate_levels();
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
                                      -- stored as read before 0028, onboarded since (pyxp.email_before_0028)
                                      pyxp.key_hash('client.onboarded:'
                                                    || pyxp.lower_cased(pyxp.trimmed_text(a.client_email, true)))))
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
                           FROM (SELECT pyxp.lower_cased(pyxp.trimmed_text(a.client_email, true)) AS t) x) f
     WHERE f.form IS DISTINCT FROM a.client_email
       -- or as read before 0028 (lower() in the database's collation: pyxp.email_before_0028)
       AND (f.form IS NULL OR lower(pyxp.trimmed_text(a.client_email, true)) IS DISTINCT FROM a.client_email)
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
AS $$ SELECT '0040' $$;

RESET ROLE;
