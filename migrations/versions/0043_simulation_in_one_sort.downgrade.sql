-- Back to 0042: the simulation's functions as they were.
SET LOCAL ROLE pyxp_owner;

DROP FUNCTION pyxp.simulated_rows(bigint);
DROP FUNCTION pyxp.replayed_rows(bigint);
DROP FUNCTION pyxp.candidate_rows(bigint);

-- A candidate's formula on a row's formula inputs (pyxp.row_formula_inputs),
-- or PX018 when the row lacks one (the live award would have been refused:
-- no guess at 0), or PX004 when it gives more than 10^15 XP (the live award
-- would have been refused; 0027: the simulation counted it, and a
-- retroactive application wrote an adjustment of 10^18 XP).
CREATE OR REPLACE FUNCTION pyxp.simulated_amount(p_id bigint, p_action text, p_constant numeric, p_coefficients jsonb,
                                      p_inputs jsonb)
RETURNS numeric
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_missing text;
    v_amount numeric;
BEGIN
    SELECT k INTO v_missing FROM jsonb_object_keys(p_coefficients) k WHERE NOT p_inputs ? k LIMIT 1;
    IF v_missing IS NOT NULL THEN
        RAISE EXCEPTION 'transaction % has no input % for the candidate''s rule %', p_id, v_missing, p_action
            USING ERRCODE = 'PX018', HINT = 'a candidate''s formula may only use the inputs its action''s rows kept';
    END IF;
    v_amount := pyxp.rule_amount(p_constant, p_coefficients, p_inputs);
    IF abs(v_amount) > 1e15 THEN
        RAISE EXCEPTION 'transaction %: the candidate''s rule % gives % XP', p_id, p_action, v_amount
            USING ERRCODE = 'PX004', HINT = 'an award is at most 10^15 XP: a live award on these inputs would be refused';
    END IF;
    RETURN v_amount;
END
$$;

-- Every ledger row but the RULES_ADJUSTMENT ones, with what the candidate
-- asks for it: `asked` (a rule row: the candidate's rule of its action on its
-- stored inputs, 0 without one; a reversal: the opposite of what its
-- original asks) and `applied`, what applies of it when order does not
-- matter: a capped gain cut set-based, the k-th gain of an allowance
-- (wallet, allowance, period) applying least(C_k, cap) - least(C_k-1, cap),
-- C the running sum of its gains asked (exact while no reversal frees that
-- allowance: `frees` marks such reversals, and their wallets are folded in
-- order, pyxp.simulated_totals); a reversal, the opposite of what its
-- original applies. Also: whether a later row reverses it, and its
-- allowance under the candidate ("allowance@period start", capped rules).
CREATE FUNCTION pyxp.simulated_rows(p_ruleset_id bigint)
RETURNS TABLE (id bigint, user_wallet text, action text, now_xp bigint, asked numeric, applied numeric,
               reverses bigint, reversed boolean, frees boolean, allowance text, cap_max_xp bigint)
LANGUAGE sql STABLE
AS $$
    WITH rows_ AS (
        SELECT t.id, t.user_wallet, t.transaction_type AS action, t.xp_amount AS now_xp, t.reverses,
               CASE WHEN t.reverses IS NOT NULL THEN NULL
                    WHEN c.rule_id IS NULL THEN 0
                    WHEN c.xp_coefficients = '{}' THEN round(c.xp_constant)
                    ELSE pyxp.simulated_amount(t.id, c.action, c.xp_constant, c.xp_coefficients,
                                               pyxp.row_formula_inputs(t.metadata, t.request_digest IS NOT NULL,
                                                                       o.xp_coefficients))
               END AS asked,
               v.id IS NOT NULL AS reversed,
               CASE WHEN c.cap_max_xp IS NOT NULL
                    THEN pyxp.cap_allowance(c.cap_group, c.action) || '@'
                         || date_trunc(c.cap_per, t.created_at, rs.timezone) END AS allowance,
               c.cap_max_xp
          FROM pyxp.xp_transactions t
          JOIN pyxp.rulesets rs ON rs.ruleset_id = p_ruleset_id
          LEFT JOIN pyxp.rules c ON c.ruleset_id = p_ruleset_id AND c.action = t.transaction_type
                                AND t.reverses IS NULL
          LEFT JOIN pyxp.rules o ON o.rule_id = t.rule_id  -- the rule it was written under
          LEFT JOIN (SELECT DISTINCT x.reverses AS id FROM pyxp.xp_transactions x WHERE x.reverses IS NOT NULL) v
                 ON v.id = t.id
         WHERE NOT (t.transaction_type = 'RULES_ADJUSTMENT' AND t.rule_id IS NULL AND t.reverses IS NULL)
    ), capped AS (
        SELECT g.id, least(g.gained, g.cap_max_xp) - least(g.gained - g.asked, g.cap_max_xp) AS applied
          FROM (SELECT r.id, r.asked, r.cap_max_xp,
                       sum(r.asked) OVER (PARTITION BY r.user_wallet, r.allowance ORDER BY r.id) AS gained
                  FROM rows_ r WHERE r.allowance IS NOT NULL AND r.asked > 0) g
    )
    SELECT r.id, r.user_wallet, r.action, r.now_xp, coalesce(r.asked, -o.asked),
           coalesce(c.applied, r.asked, -o.applied), r.reverses, r.reversed,
           coalesce(o.allowance IS NOT NULL AND o.asked > 0, false), r.allowance, r.cap_max_xp
      FROM rows_ r
      LEFT JOIN capped c ON c.id = r.id
      LEFT JOIN (SELECT o.id, o.asked, coalesce(oc.applied, o.asked) AS applied, o.allowance
                   FROM rows_ o LEFT JOIN capped oc ON oc.id = o.id
                  WHERE o.reversed) o ON o.id = r.reverses
$$;

-- Per wallet with a balance: its total now and under the candidate, and
-- (only for wallets folded in order) the candidate's XP per action.
CREATE OR REPLACE FUNCTION pyxp.simulated_totals(p_ruleset_id bigint)
RETURNS TABLE (user_wallet text, total_xp_now bigint, total_xp_then numeric, by_action jsonb)
LANGUAGE plpgsql STABLE
SET jit = off
AS $$
DECLARE
    v_ruleset pyxp.rulesets := pyxp.checked_ruleset(p_ruleset_id);
BEGIN
    -- The candidate re-evaluates every row: archived rows are not here
    -- (sql/13_retention.sql), so neither a what-if nor a retroactive
    -- application can be computed any more (PX029).
    PERFORM pyxp.require_whole_ledger('a what-if of the rules (simulation, retroactive application)');
    RETURN QUERY
        WITH r AS MATERIALIZED (SELECT * FROM pyxp.simulated_rows(v_ruleset.ruleset_id)),
        -- Order matters in a wallet with a penalty under the candidate's
        -- floor, or a reversal that frees a capped allowance: folded.
        per_wallet AS (
            SELECT r.user_wallet, sum(r.applied) AS linear,
                   bool_or(r.frees OR v_ruleset.balance_floor IS NOT NULL AND r.asked < 0) AS in_order
              FROM r GROUP BY r.user_wallet
        ),
        folded AS (
            SELECT r.user_wallet,
                   pyxp.simulated_balance(r.id, r.action, r.asked, r.reverses, r.reversed, v_ruleset.balance_floor,
                                          r.allowance, r.cap_max_xp ORDER BY r.id) AS state
              FROM r JOIN per_wallet w ON w.user_wallet = r.user_wallet AND w.in_order
             GROUP BY r.user_wallet
        )
        SELECT b.user_wallet, b.total_xp, coalesce((f.state).balance, w.linear, 0), (f.state).by_action
          FROM pyxp.xp_balances b
          LEFT JOIN per_wallet w ON w.user_wallet = b.user_wallet
          LEFT JOIN folded f ON f.user_wallet = b.user_wallet;
END
$$;

REVOKE ALL ON FUNCTION pyxp.simulated_rows(bigint) FROM PUBLIC;
COMMENT ON FUNCTION pyxp.simulated_amount(bigint, text, numeric, jsonb, jsonb) IS
    'internal: a candidate''s formula on a ledger row''s stored inputs, or PX018 (an input missing) or PX004 (over 10^15).';
COMMENT ON FUNCTION pyxp.simulated_rows(bigint) IS
    'internal: every ledger row but the adjustments, with what a candidate ruleset asks for it.';

CREATE OR REPLACE FUNCTION pyxp.schema_revision()
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$ SELECT '0042' $$;

RESET ROLE;
