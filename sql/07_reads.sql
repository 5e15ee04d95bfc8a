-- Reads: balance, history (the audit is in 07_verification.sql).
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

-- A wallet's ledger rows, newest first (by wallet_seq, the wallet's order of
-- application). Keyset pagination: pass the last transaction_id of a page as
-- before_id to get the next one: the rows before that row in the wallet's
-- order (index xp_transactions_wallet_seq). A before_id that is not one of
-- the wallet's rows gives the wallet's rows with a lower id (a wallet's ids
-- grow with its wallet_seq). max_rows: 1..1000.
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
    v_below bigint;  -- rows with a wallet_seq below this one
BEGIN
    IF history.before_id IS NULL THEN
        v_below := 9223372036854775807;
    ELSE
        SELECT t.wallet_seq INTO v_below
          FROM pyxp.xp_transactions t WHERE t.id = history.before_id AND t.user_wallet = v_wallet;
        IF NOT FOUND THEN  -- another wallet's row, or none: the wallet's rows with a lower id
            SELECT coalesce(max(t.wallet_seq), 0) + 1 INTO v_below
              FROM pyxp.xp_transactions t WHERE t.user_wallet = v_wallet AND t.id < history.before_id;
        END IF;
    END IF;
    RETURN QUERY
        SELECT t.id, t.user_wallet, t.transaction_type, t.xp_amount, t.xp_requested, t.balance_after,
               t.rule_id, t.campaign_id, t.subject, t.idempotency_key, t.metadata, t.reverses, t.created_at
          FROM pyxp.xp_transactions t
         WHERE t.user_wallet = v_wallet AND t.wallet_seq < v_below
         ORDER BY t.wallet_seq DESC
         LIMIT v_max;
    PERFORM pyxp.ledger_unmoved();  -- (40001 after a read older than an archive)
END
$$;
