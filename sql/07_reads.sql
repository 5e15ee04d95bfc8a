-- Reads: balance, history, leaderboard, rank, audit.
-- SECURITY DEFINER so that pyxp_writer, which has no SELECT on the tables,
-- can read through them; pyxp_reader may also read the tables directly.

-- A wallet's balance. A wallet with no history has 0 XP at level 1 (one row
-- with created_at NULL), so callers need no special case.
CREATE FUNCTION pyxp.balance(wallet text)
RETURNS TABLE (user_wallet text, total_xp bigint, current_level bigint, xp_to_next_level bigint,
               total_moderations bigint, created_at timestamptz, updated_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$
DECLARE
    v_wallet text := pyxp.checked_wallet(balance.wallet);
BEGIN
    RETURN QUERY
        SELECT b.user_wallet, b.total_xp, b.current_level, b.xp_to_next_level,
               b.total_moderations, b.created_at, b.updated_at
          FROM pyxp.xp_balances b WHERE b.user_wallet = v_wallet;
    IF NOT FOUND THEN
        RETURN QUERY
            SELECT v_wallet, 0::bigint, c.level, c.next_level_xp::bigint, 0::bigint,
                   NULL::timestamptz, NULL::timestamptz
              FROM pyxp.curve_position(pyxp.active_ruleset_id(), 0) c;
    END IF;
END
$$;

-- A wallet's ledger rows, newest first. Keyset pagination: pass the last
-- transaction_id of a page as before_id to get the next one (index
-- xp_transactions_wallet). max_rows: 1..1000.
CREATE FUNCTION pyxp.history(wallet text, max_rows integer DEFAULT 50, before_id bigint DEFAULT NULL)
RETURNS TABLE (transaction_id bigint, user_wallet text, transaction_type text, xp_amount bigint,
               xp_requested bigint, balance_after bigint, rule_id bigint, campaign_id text,
               subject text, idempotency_key text, metadata jsonb, reverses bigint,
               created_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$
DECLARE
    v_wallet text := pyxp.checked_wallet(history.wallet);
    v_max integer := pyxp.checked_row_count('max_rows', history.max_rows);
BEGIN
    RETURN QUERY
        SELECT t.id, t.user_wallet, t.transaction_type, t.xp_amount, t.xp_requested, t.balance_after,
               t.rule_id, t.campaign_id, t.subject, t.idempotency_key, t.metadata, t.reverses, t.created_at
          FROM pyxp.xp_transactions t
         WHERE t.user_wallet = v_wallet
           AND (history.before_id IS NULL OR t.id < history.before_id)
         ORDER BY t.id DESC
         LIMIT v_max;
END
$$;

-- Every inconsistency between the ledger, the balances and the rules, one
-- row each; no rows when healthy. What it proves: each balance equals the sum
-- of its wallet's rows, each row's balance_after chains from the previous
-- one, levels match the active curve, reversals mirror what they reverse,
-- rows name the action of an existing rule, a flow's or reversal's rows have
-- their request, exactly one ruleset is active,
-- total_moderations counts the votes recorded, the balances' period columns
-- and the caps' usage match the ledger and no cap is exceeded, a registration is granted
-- exactly when its client email was onboarded, identities stored before 0002
-- read the same today.
-- (jit off: compiling the plan cost more than running it, 100 ms vs 6 ms on a
-- small ledger; on 10M rows the scans dominate either way.)
CREATE FUNCTION pyxp.audit()
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
    -- The balances' latest periods (sql/07_periods.sql), in the active zone.
    SELECT 'period_mismatch', b.user_wallet, NULL,
           format('%s: xp_balances holds %s XP from %s, the ledger %s XP from %s', k.kind,
                  coalesce(k.kept_xp::text, 'no'), coalesce(k.kept_start::text, 'no period'),
                  coalesce(k.xp::text, 'no'), coalesce(k.start::text, 'no period'))
      FROM pyxp.xp_balances b
      LEFT JOIN pyxp.ledger_latest_periods((SELECT r.timezone FROM pyxp.rulesets r WHERE r.is_active)) p
        ON p.user_wallet = b.user_wallet
     CROSS JOIN LATERAL (VALUES ('day', b.day_start, b.day_xp, p.day_start, p.day_xp),
                                ('week', b.week_start, b.week_xp, p.week_start, p.week_xp),
                                ('month', b.month_start, b.month_xp, p.month_start, p.month_xp),
                                ('year', b.year_start, b.year_xp, p.year_start, p.year_xp))
                        k(kind, kept_start, kept_xp, start, xp)
     WHERE (k.kept_start, k.kept_xp) IS DISTINCT FROM (k.start, k.xp)
    UNION ALL
    -- Caps: what xp_cap_usage holds against the ledger, and no allowance
    -- used beyond the largest cap its rows' rules carried.
    SELECT CASE WHEN coalesce(u.used_xp, 0) <> coalesce(l.used_xp, 0) THEN 'cap_usage_mismatch'
                ELSE 'cap_exceeded' END,
           coalesce(u.user_wallet, l.user_wallet), NULL,
           format('%s from %s: xp_cap_usage says %s XP used, the ledger %s XP, cap %s',
                  coalesce(u.allowance, l.allowance), coalesce(u.period_start, l.period_start),
                  coalesce(u.used_xp, 0), coalesce(l.used_xp, 0), coalesce(l.cap_max_xp::text, 'none'))
      FROM pyxp.xp_cap_usage u
      FULL JOIN pyxp.ledger_cap_usage() l
        ON l.user_wallet = u.user_wallet AND l.allowance = u.allowance AND l.period_start = u.period_start
     WHERE coalesce(u.used_xp, 0) <> coalesce(l.used_xp, 0) OR l.used_xp > l.cap_max_xp
    UNION ALL
    -- A flow's or reversal's row needs its request (its claim and inputs).
    SELECT 'request_missing', t.user_wallet, t.id,
           format('no xp_requests row for key %s', quote_literal(t.idempotency_key))
      FROM pyxp.xp_transactions t
     WHERE t.request_digest IS NULL
       AND NOT EXISTS (SELECT FROM pyxp.xp_requests q WHERE q.idempotency_key = t.idempotency_key)
    ORDER BY 1, 2, 3
$$;
