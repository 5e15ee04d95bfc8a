-- 0043: the what-if of a ruleset (pyxp.simulate_rules, simulation_report,
-- apply_rules_retroactively) reads the ledger once and sorts its rows once:
-- each row's amount under the candidate (pyxp.candidate_rows; reversals
-- mirrored by pyxp.replayed_rows), one window per wallet and allowance
-- sorted by the wallet's hash (pyxp.simulated_rows), the sums per wallet in
-- that order. 0042 materialized the rows twice and sorted them four times
-- in the database's collation: a cap's simulation at 10M rows, 71 s -> 30 s.
-- And an input a row's metadata holds that is not a number (an owner's
-- edit) is refused with PX004 naming the row, where the simulation failed
-- with 22P02 (pyxp.simulated_amount).
SET LOCAL ROLE pyxp_owner;

-- (another return type: dropped, created again below)
DROP FUNCTION pyxp.simulated_rows(bigint);

-- A candidate's formula on a row's formula inputs (pyxp.row_formula_inputs),
-- or PX018 when the row lacks one (the live award would have been refused:
-- no guess at 0), or PX004 when one is not a number rule_amount reads (the
-- writer stores numbers: an owner edited it, which audit() reports as the
-- row's amount_mismatch; 0043: the simulation failed with 22P02 without
-- naming the row) or when it gives more than 10^15 XP (the live award would
-- have been refused; 0027: the simulation counted it, and a retroactive
-- application wrote an adjustment of 10^18 XP).
CREATE OR REPLACE FUNCTION pyxp.simulated_amount(p_id bigint, p_action text, p_constant numeric, p_coefficients jsonb,
                                      p_inputs jsonb)
RETURNS numeric
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v_input text;
    v_value jsonb;
    v_amount numeric;
BEGIN
    SELECT k, p_inputs -> k INTO v_input, v_value
      FROM jsonb_object_keys(p_coefficients) k
     WHERE NOT p_inputs ? k OR NOT pyxp.readable_number(p_inputs -> k) LIMIT 1;
    IF v_input IS NOT NULL AND NOT p_inputs ? v_input THEN
        RAISE EXCEPTION 'transaction % has no input % for the candidate''s rule %', p_id, v_input, p_action
            USING ERRCODE = 'PX018', HINT = 'a candidate''s formula may only use the inputs its action''s rows kept';
    ELSIF v_input IS NOT NULL THEN
        RAISE EXCEPTION 'transaction %: input % of the candidate''s rule % is not a number: %', p_id, v_input,
                        p_action, left(v_value::text, 100)
            USING ERRCODE = 'PX004',
                  HINT = 'the writer stores numbers: the row was edited after it was written (audit() reports it)';
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
-- asks for it (`asked`): a rule row, the candidate's rule of its action on
-- its stored inputs, 0 without one; a reversal, NULL here
-- (pyxp.replayed_rows mirrors its original). And the row's allowance under
-- the candidate, for a rule with a cap: its name (pyxp.cap_allowance), a
-- number for it (`allowance_no`, which the window of pyxp.simulated_rows
-- sorts on in place of the name) and its period's start in the candidate's
-- timezone. The rules' columns are read once per rule (their scan, the
-- nullable side of the join), not per row.
CREATE FUNCTION pyxp.candidate_rows(p_ruleset_id bigint)
RETURNS TABLE (id bigint, user_wallet text, action text, now_xp bigint, reverses bigint, asked numeric,
               allowance text, allowance_no bigint, period_start timestamptz, cap_max_xp bigint)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT t.id, t.user_wallet, t.transaction_type, t.xp_amount, t.reverses,
           CASE WHEN t.reverses IS NOT NULL THEN NULL
                WHEN c.rule_id IS NULL THEN 0
                WHEN c.xp_coefficients = '{}' THEN round(c.xp_constant)
                ELSE pyxp.simulated_amount(t.id, c.action, c.xp_constant, c.xp_coefficients,
                                           pyxp.row_formula_inputs(t.metadata, t.request_digest IS NOT NULL,
                                                                   o.xp_coefficients))
           END,
           c.allowance, c.allowance_no,
           CASE WHEN c.allowance IS NOT NULL THEN date_trunc(c.cap_per, t.created_at, rs.timezone) END,
           c.cap_max_xp
      FROM pyxp.xp_transactions t
      JOIN pyxp.rulesets rs ON rs.ruleset_id = p_ruleset_id
      LEFT JOIN (SELECT r.*, a.allowance, dense_rank() OVER (ORDER BY a.allowance COLLATE "C") AS allowance_no
                   FROM pyxp.rules r
                  CROSS JOIN LATERAL (SELECT CASE WHEN r.cap_max_xp IS NOT NULL
                                                  THEN pyxp.cap_allowance(r.cap_group, r.action) END) a(allowance)
                  WHERE r.ruleset_id = p_ruleset_id) c
             ON c.action = t.transaction_type AND t.reverses IS NULL
      LEFT JOIN pyxp.rules o ON o.rule_id = t.rule_id  -- the rule it was written under
     WHERE NOT (t.transaction_type = 'RULES_ADJUSTMENT' AND t.rule_id IS NULL AND t.reverses IS NULL)
$$;

-- pyxp.candidate_rows with each reversal mirroring its original: `asked`,
-- the opposite of what the candidate asks for the original; `frees`,
-- whether the original is a gain of a capped allowance, which the reversal
-- gives back (its wallet is folded in order: pyxp.simulated_totals). The
-- originals are found by the reversals' index and read again by id: a few
-- rows, not a second pass of the ledger.
CREATE FUNCTION pyxp.replayed_rows(p_ruleset_id bigint)
RETURNS TABLE (id bigint, user_wallet text, action text, now_xp bigint, asked numeric, reverses bigint,
               frees boolean, allowance text, allowance_no bigint, period_start timestamptz, cap_max_xp bigint)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT r.id, r.user_wallet, r.action, r.now_xp, coalesce(r.asked, -o.asked), r.reverses,
           coalesce(o.allowance IS NOT NULL AND o.asked > 0, false),
           r.allowance, r.allowance_no, r.period_start, r.cap_max_xp
      FROM pyxp.candidate_rows(p_ruleset_id) r
      LEFT JOIN (SELECT c.id, c.asked, c.allowance
                   FROM pyxp.candidate_rows(p_ruleset_id) c
                  WHERE c.id IN (SELECT x.reverses FROM pyxp.xp_transactions x WHERE x.reverses IS NOT NULL)) o
             ON o.id = r.reverses
$$;

-- pyxp.replayed_rows with what applies of each row when order does not
-- matter (`applied`): a capped gain cut set-based, the k-th gain of an
-- allowance (wallet, allowance, period) applying least(C_k, cap) -
-- least(C_k-1, cap), C the running sum of its gains asked; any other row,
-- what it asks. Exact while no reversal frees that allowance; a reversal
-- that does (`frees`) has no `applied`: its wallet is folded in order
-- (pyxp.simulated_totals). Rows come sorted by wallet (wallet_hash, then
-- user_wallet: an integer sorts faster than the database's collation, and
-- a GROUP BY of both reads that order with no sort of its own).
-- One sort of the ledger's rows, which carries only what the window and
-- the callers read: the subquery's OFFSET 0 makes the rows' amounts be
-- computed before the sort (flattened, the planner sorted the rows'
-- metadata and evaluated the amounts above the window, 0043).
CREATE FUNCTION pyxp.simulated_rows(p_ruleset_id bigint)
RETURNS TABLE (id bigint, wallet_hash integer, user_wallet text, action text, now_xp bigint, asked numeric,
               applied numeric, frees boolean)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT g.id, g.wallet_hash, g.user_wallet, g.action, g.now_xp, g.asked,
           CASE WHEN g.frees THEN NULL
                WHEN g.allowance_no IS NOT NULL AND g.asked > 0
                THEN least(g.gained, g.cap_max_xp) - least(g.gained - g.asked, g.cap_max_xp)
                ELSE g.asked END,
           g.frees
      FROM (SELECT r.*, sum(r.asked) FILTER (WHERE r.asked > 0)
                            OVER (PARTITION BY r.wallet_hash, r.user_wallet, r.allowance_no, r.period_start
                                  ORDER BY r.id) AS gained
              FROM (SELECT r.id, hashtext(r.user_wallet) AS wallet_hash, r.user_wallet, r.action, r.now_xp, r.asked,
                           r.frees, r.allowance_no, r.period_start, r.cap_max_xp
                      FROM pyxp.replayed_rows(p_ruleset_id) r
                    OFFSET 0) r) g
$$;

-- Per wallet with a balance: its total now and under the candidate, and
-- (only for wallets folded in order) the candidate's XP per action. Order
-- matters in a wallet with a penalty under the candidate's floor, or a
-- reversal that frees a capped allowance: those wallets' rows are read
-- again (pyxp.replayed_rows, for them only) and folded in id order; the
-- other wallets' totals are the sums of pyxp.simulated_rows.
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
        WITH per_wallet AS MATERIALIZED (
            SELECT r.user_wallet, sum(r.applied) AS linear,
                   bool_or(r.frees OR v_ruleset.balance_floor IS NOT NULL AND r.asked < 0) AS in_order
              FROM pyxp.simulated_rows(v_ruleset.ruleset_id) r
             GROUP BY r.wallet_hash, r.user_wallet
        ),
        folded AS (
            SELECT r.user_wallet,
                   pyxp.simulated_balance(r.id, r.action, r.asked, r.reverses, v.id IS NOT NULL,
                                          v_ruleset.balance_floor, r.allowance || '@' || r.period_start,
                                          r.cap_max_xp ORDER BY r.id) AS state
              FROM pyxp.replayed_rows(v_ruleset.ruleset_id) r
              LEFT JOIN (SELECT DISTINCT x.reverses AS id FROM pyxp.xp_transactions x WHERE x.reverses IS NOT NULL) v
                     ON v.id = r.id
             WHERE r.user_wallet IN (SELECT w.user_wallet FROM per_wallet w WHERE w.in_order)
             GROUP BY r.user_wallet
        )
        SELECT b.user_wallet, b.total_xp, coalesce((f.state).balance, w.linear, 0), (f.state).by_action
          FROM pyxp.xp_balances b
          LEFT JOIN per_wallet w ON w.user_wallet = b.user_wallet
          LEFT JOIN folded f ON f.user_wallet = b.user_wallet;
END
$$;

REVOKE ALL ON FUNCTION pyxp.candidate_rows(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION pyxp.replayed_rows(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION pyxp.simulated_rows(bigint) FROM PUBLIC;
COMMENT ON FUNCTION pyxp.simulated_amount(bigint, text, numeric, jsonb, jsonb) IS
    'internal: a candidate''s formula on a ledger row''s stored inputs, or PX018 (an input missing) or PX004 (an input not a number, or over 10^15).';
COMMENT ON FUNCTION pyxp.candidate_rows(bigint) IS
    'internal: every ledger row but the adjustments, with what a candidate ruleset asks for it and its allowance under it.';
COMMENT ON FUNCTION pyxp.replayed_rows(bigint) IS
    'internal: pyxp.candidate_rows with each reversal mirroring its original.';
COMMENT ON FUNCTION pyxp.simulated_rows(bigint) IS
    'internal: every ledger row but the adjustments, with what applies of it under a candidate ruleset when order does not matter, sorted by wallet.';

CREATE OR REPLACE FUNCTION pyxp.schema_revision()
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$ SELECT '0043' $$;

RESET ROLE;
