-- 0019: the audit's unsliced checks beside the chain walk's slices (issue 15 item 1).
-- Frozen copy of what sql/*.sql defines at this revision; never edit it.
--
-- pyxp.unsliced_problems (new) holds the checks that are not cut into slices: in the
-- full audit the rank buckets' and period boards' counts, checkpoints without a
-- balance, wallets' forms and caps (moved out of pyxp.audit), since a checkpoint the
-- new rows' single-row checks, in two calls (part 1: the rank counts, or since a
-- checkpoint the new rows; part 2: the rest). pyxp.chain_problems gets a second
-- parameter and runs both calls beside its eight slices, under the same Gather; it
-- returns the audit's columns (a chain finding's row looked up by its wallet_seq
-- there, no longer in each caller). Functions only.
SET LOCAL ROLE pyxp_owner;

CREATE FUNCTION pyxp.unsliced_problems(p_since_checkpoint boolean, p_part integer)
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

DROP FUNCTION pyxp.chain_problems(boolean);

CREATE FUNCTION pyxp.chain_problems(p_since_checkpoint boolean, p_unsliced boolean)
RETURNS TABLE (check_name text, user_wallet text, transaction_id bigint, detail text)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT c.check_name, c.user_wallet,
           -- a chain finding's row, by its wallet_seq (a position held twice, which no unique
           -- index prevents since 0015: its later row)
           coalesce(c.transaction_id,
                    (SELECT max(t.id) FROM pyxp.xp_transactions t
                      WHERE t.user_wallet = c.user_wallet AND t.wallet_seq = c.wallet_seq)),
           c.detail
      FROM (
        SELECT c.*, NULL::bigint FROM pyxp.chain_problems_between(p_since_checkpoint, NULL, NULL) c
         WHERE NOT pyxp.walk_in_slices(p_since_checkpoint)
        UNION ALL
        SELECT u.check_name, u.user_wallet, NULL, u.detail, u.transaction_id
          FROM generate_series(1, 2) n CROSS JOIN LATERAL pyxp.unsliced_problems(p_since_checkpoint, n) u
         WHERE p_unsliced AND NOT pyxp.walk_in_slices(p_since_checkpoint)
        UNION ALL
        SELECT s.* FROM (
            SELECT u.check_name, u.user_wallet, NULL::bigint, u.detail, u.transaction_id
              FROM pyxp.unsliced_problems(p_since_checkpoint, 1) u
             WHERE p_unsliced
            UNION ALL
            SELECT u.check_name, u.user_wallet, NULL, u.detail, u.transaction_id
              FROM pyxp.unsliced_problems(p_since_checkpoint, 2) u
             WHERE p_unsliced
            UNION ALL
            SELECT c.*, NULL FROM pyxp.chain_problems_between(p_since_checkpoint, NULL, '0x2') c
            UNION ALL
            SELECT c.*, NULL FROM pyxp.chain_problems_between(p_since_checkpoint, '0x2', '0x4') c
            UNION ALL
            SELECT c.*, NULL FROM pyxp.chain_problems_between(p_since_checkpoint, '0x4', '0x6') c
            UNION ALL
            SELECT c.*, NULL FROM pyxp.chain_problems_between(p_since_checkpoint, '0x6', '0x8') c
            UNION ALL
            SELECT c.*, NULL FROM pyxp.chain_problems_between(p_since_checkpoint, '0x8', '0xa') c
            UNION ALL
            SELECT c.*, NULL FROM pyxp.chain_problems_between(p_since_checkpoint, '0xa', '0xc') c
            UNION ALL
            SELECT c.*, NULL FROM pyxp.chain_problems_between(p_since_checkpoint, '0xc', '0xe') c
            UNION ALL
            SELECT c.*, NULL FROM pyxp.chain_problems_between(p_since_checkpoint, '0xe', NULL) c
            OFFSET 0) s
         WHERE pyxp.walk_in_slices(p_since_checkpoint)
           ) c(check_name, user_wallet, wallet_seq, detail, transaction_id)
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
    -- The chain walk and, beside it, the unsliced checks (ranks, checkpoints
    -- without a balance, wallets' forms, caps: pyxp.unsliced_problems).
    SELECT * FROM pyxp.chain_problems(false, true)
    UNION ALL
    SELECT * FROM pyxp.row_problems(false)
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
           + (SELECT coalesce(sum(a.rows_archived), 0) FROM pyxp.xp_ledger_archives a)
           <> (SELECT coalesce(sum(b.last_wallet_seq), 0) FROM pyxp.xp_balances b)
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
    -- Client emails stored before 0002 that today's checks would read
    -- otherwise (the wallets: pyxp.unsliced_problems).
    SELECT 'identity_not_normalised', a.client_wallet, NULL,
           format('client email %s of registration %s is read %s since 0002', quote_literal(a.client_email), a.id,
                  coalesce(quote_literal(f.form), 'as refused'))
      FROM pyxp.agency_b2c_clients a
     CROSS JOIN LATERAL (SELECT CASE WHEN pyxp.invisible_character(x.t) IS NULL THEN x.t END AS form
                           FROM (SELECT lower(pyxp.trimmed_text(a.client_email, true)) AS t) x) f
     WHERE f.form IS DISTINCT FROM a.client_email
    ORDER BY 1, 2, 3
$$;

CREATE OR REPLACE FUNCTION pyxp.audit_since_checkpoint()
RETURNS TABLE (check_name text, user_wallet text, transaction_id bigint, detail text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET jit = off
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    v_since boolean := pyxp.last_checkpoint_xmin() IS NOT NULL;
BEGIN
    RETURN QUERY
        SELECT 'active_ruleset', NULL::text, NULL::bigint,
               format('%s active rulesets, expected 1', count(*))
          FROM pyxp.rulesets r WHERE r.is_active HAVING count(*) <> 1
        UNION ALL
        -- Since a checkpoint, the new rows' single-row checks run beside the
        -- walk (pyxp.unsliced_problems); before the first, after it.
        SELECT * FROM pyxp.chain_problems(v_since, v_since)
        UNION ALL
        SELECT * FROM pyxp.row_problems(false) WHERE NOT v_since
        ORDER BY 1, 2, 3;
END
$$;

CREATE OR REPLACE FUNCTION pyxp.record_audit_checkpoint(OUT checkpoint_id bigint, OUT wallets_verified bigint,
                                             OUT rows_verified bigint, OUT created_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET jit = off
SET plan_cache_mode = force_custom_plan
AS $$
#variable_conflict use_column
DECLARE
    v_problems bigint;
    v_first text;  -- the first finding, for the error's detail
    v_since boolean;
BEGIN
    LOCK TABLE pyxp.xp_audit_checkpoints IN EXCLUSIVE MODE;
    v_since := pyxp.last_checkpoint_xmin() IS NOT NULL;
    WITH problems AS MATERIALIZED (
        SELECT c.check_name, c.user_wallet, c.detail FROM pyxp.chain_problems(v_since, false) c
        UNION ALL
        SELECT r.check_name, r.user_wallet, r.detail FROM pyxp.row_problems(v_since) r
    ), verified AS MATERIALIZED (
        SELECT w.user_wallet, w.last_wallet_seq, w.total_xp, w.from_seq
          FROM pyxp.audited_wallets(v_since) w
         WHERE w.last_wallet_seq > 0 AND w.last_wallet_seq > w.from_seq
    ), header AS (
        INSERT INTO pyxp.xp_audit_checkpoints AS k (snapshot_xmin, wallets_verified, rows_verified)
        SELECT pg_snapshot_xmin(pg_current_snapshot()), count(*), coalesce(sum(v.last_wallet_seq - v.from_seq), 0)
          FROM verified v
        HAVING NOT EXISTS (SELECT FROM problems)
        RETURNING k.checkpoint_id, k.wallets_verified, k.rows_verified, k.created_at
    ), positions AS (
        INSERT INTO pyxp.xp_wallet_checkpoints AS c (user_wallet, wallet_seq, total_xp, checkpoint_id)
        SELECT v.user_wallet, v.last_wallet_seq, v.total_xp, h.checkpoint_id
          FROM verified v CROSS JOIN header h
        ON CONFLICT (user_wallet) DO UPDATE
           SET wallet_seq = excluded.wallet_seq, total_xp = excluded.total_xp, checkpoint_id = excluded.checkpoint_id
    )
    SELECT h.checkpoint_id, h.wallets_verified, h.rows_verified, h.created_at,
           (SELECT count(*) FROM problems),
           (SELECT format('%s %s: %s', p.check_name, coalesce(p.user_wallet, ''), p.detail)
              FROM problems p ORDER BY p.check_name, p.user_wallet LIMIT 1)
      INTO checkpoint_id, wallets_verified, rows_verified, created_at, v_problems, v_first
      FROM (SELECT 1) one LEFT JOIN header h ON true;
    IF v_problems > 0 THEN
        RAISE EXCEPTION 'the ledger since the last checkpoint has % inconsistencies; no checkpoint recorded',
                        v_problems
            USING ERRCODE = 'PX028',
                  DETAIL = 'first: ' || v_first,
                  HINT = 'SELECT * FROM pyxp.audit_since_checkpoint() lists them';
    END IF;
END
$$;

COMMENT ON FUNCTION pyxp.chain_problems(boolean, boolean) IS
    'internal: one walk of the audited wallets'' chains in wallet_seq order (chain, balance, level, checkpoint, periods), in parallel slices with the unsliced checks beside them when large.';
COMMENT ON FUNCTION pyxp.unsliced_problems(boolean, integer) IS
    'internal: the audit''s checks not cut into slices (1: ranks, 2: wallets'' forms, caps; since a checkpoint 1: the new rows''), as calls a parallel worker can run.';

REVOKE ALL ON FUNCTION pyxp.unsliced_problems(boolean, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION pyxp.chain_problems(boolean, boolean) FROM PUBLIC;

RESET ROLE;
