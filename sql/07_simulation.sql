-- What-if and retroactive rule changes (SPEC 13).
--
-- Every ledger row produced by a rule keeps its action (transaction_type)
-- and its formula inputs (metadata), so the ledger can be replayed exactly
-- under another ruleset version, without calling anything again:
--   * a rule row is re-evaluated with the candidate's rule of the same
--     action on its stored inputs; an action the candidate lacks gives 0;
--   * a reversal mirrors what its original applies under the candidate;
--   * earlier RULES_ADJUSTMENT rows are left out (they are what a previous
--     retroactive change added);
--   * the candidate's floor and caps apply in ledger order per wallet (id
--     order: a wallet's rows are appended under its lock), caps in the
--     candidate's timezone, on each row's created_at;
--   * levels come from the candidate's curve.
-- Set-based: one pass over the ledger computes every row's amount under the
-- candidate (pyxp.candidate_rows, pyxp.replayed_rows), one sort of those
-- rows by wallet cuts the capped gains with a running sum per allowance and
-- gives each wallet's total as their sum (pyxp.simulated_rows), except for
-- the wallets where order matters beyond that (a penalty under a floor, or
-- a reversal freeing a capped allowance), whose rows are read again and
-- folded in id order by the aggregate pyxp.simulated_balance. (0043: at
-- 10M rows, 68 s -> 30 s for a cap; the rows were materialized twice and
-- sorted four times, in the database's collation.)

-- What the fold keeps for one wallet: its running balance, the XP each
-- allowance used ("allowance@period start" -> XP), what each row that is
-- reversed later applied (id -> {"a": XP, "k": allowance or null}), and the
-- XP applied per action.
CREATE TYPE pyxp.simulation_state AS (
    balance    numeric,
    used       jsonb,
    applied    jsonb,
    by_action  jsonb
);

-- One ledger row under the candidate, as the writer would apply it: a
-- reversal takes back what its original applied (and frees its allowance);
-- a capped gain is cut to what is left; a penalty under a floor is cut to
-- what keeps the balance at the floor (a balance already below loses
-- nothing more). p_asked: the candidate's amount for the row (a reversal:
-- the opposite of what it asks of the original, used only when the
-- wallet's rows do not hold that original).
CREATE FUNCTION pyxp.simulation_step(p_state pyxp.simulation_state, p_id bigint, p_action text, p_asked numeric,
                                     p_reverses bigint, p_reversed boolean, p_floor bigint, p_allowance text,
                                     p_cap bigint)
RETURNS pyxp.simulation_state
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v_state pyxp.simulation_state := p_state;
    v_amount numeric := p_asked;
    v_original jsonb;
    v_used numeric;
BEGIN
    IF p_reverses IS NOT NULL THEN
        v_original := v_state.applied -> p_reverses::text;
        -- An original this wallet's rows do not hold (an owner's edit, which
        -- audit() reports: deleted, another wallet's, an adjustment) takes
        -- back what the candidate asks of it (p_asked, the mirror), or
        -- nothing; 0043: it made the wallet's state NULL.
        v_amount := coalesce(-(v_original ->> 'a')::numeric, p_asked, 0);
        IF v_original ->> 'k' IS NOT NULL THEN
            v_state.used := jsonb_set(v_state.used, ARRAY[v_original ->> 'k'],
                                      to_jsonb((v_state.used ->> (v_original ->> 'k'))::numeric
                                               - (v_original ->> 'a')::numeric));
        END IF;
    ELSIF p_allowance IS NOT NULL AND v_amount > 0 THEN
        v_used := coalesce((v_state.used ->> p_allowance)::numeric, 0);
        v_amount := least(v_amount, greatest(p_cap - v_used, 0));
        v_state.used := jsonb_set(v_state.used, ARRAY[p_allowance], to_jsonb(v_used + v_amount));
    ELSIF p_floor IS NOT NULL AND v_amount < 0 THEN
        v_amount := pyxp.floored_amount(v_amount, p_floor, v_state.balance);
    END IF;
    v_state.balance := v_state.balance + v_amount;
    v_state.by_action := jsonb_set(v_state.by_action, ARRAY[p_action],
                                   to_jsonb(coalesce((v_state.by_action ->> p_action)::numeric, 0) + v_amount));
    IF p_reversed THEN
        v_state.applied := jsonb_set(v_state.applied, ARRAY[p_id::text],
                                     jsonb_build_object('a', v_amount,
                                                        'k', CASE WHEN p_allowance IS NOT NULL AND v_amount > 0
                                                                  THEN p_allowance END));
    END IF;
    RETURN v_state;
END
$$;

CREATE AGGREGATE pyxp.simulated_balance(bigint, text, numeric, bigint, boolean, bigint, text, bigint) (
    SFUNC = pyxp.simulation_step,
    STYPE = pyxp.simulation_state,
    INITCOND = '(0,{},{},{})'
);

-- The ruleset version to simulate, or PX027.
CREATE FUNCTION pyxp.checked_ruleset(p_ruleset_id bigint)
RETURNS pyxp.rulesets
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_ruleset pyxp.rulesets;
BEGIN
    SELECT * INTO v_ruleset FROM pyxp.rulesets r WHERE r.ruleset_id = p_ruleset_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown ruleset %', coalesce(p_ruleset_id::text, 'NULL')
            USING ERRCODE = 'PX027', HINT = 'pass a ruleset_id of pyxp.rulesets (pyxp rules list)';
    END IF;
    RETURN v_ruleset;
END
$$;

-- A row's formula inputs: a flow's rows keep only them in their metadata
-- (with other facts under lower-case keys, never an INPUT name); a generic
-- award's metadata is its context with its params over it (pyxp.award), and
-- its params are exactly the inputs of the rule it was written under (any
-- other param was refused, PX017): the metadata's keys that rule's formula
-- names, nothing of the context (0027: the simulation read a context note
-- as an input, a hostile test; a text failed the whole simulation with
-- 22P02, a number replaced the input, a JSON null lost the row's amount).
-- A generic award whose rule is gone (audit: rule_missing) kept none.
CREATE FUNCTION pyxp.row_formula_inputs(p_metadata jsonb, p_generic boolean, p_rule_coefficients jsonb)
RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN NOT p_generic THEN p_metadata
                ELSE (SELECT coalesce(jsonb_object_agg(m.key, m.value), '{}')
                        FROM jsonb_each(p_metadata) m WHERE p_rule_coefficients ? m.key) END
$$;

-- A candidate's formula on a row's formula inputs (pyxp.row_formula_inputs),
-- or PX018 when the row lacks one (the live award would have been refused:
-- no guess at 0), or PX004 when one is JSON null or not a number
-- rule_amount reads (the writer stores numbers: an owner edited it, which
-- audit() reports as the row's amount_mismatch; 0043: a text failed the
-- simulation with 22P02 without naming the row, a null made the row's
-- amount NULL) or when it gives more than 10^15 XP (the live award would
-- have been refused; 0027: the simulation counted it, and a retroactive
-- application wrote an adjustment of 10^18 XP).
CREATE FUNCTION pyxp.simulated_amount(p_id bigint, p_action text, p_constant numeric, p_coefficients jsonb,
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
     WHERE NOT p_inputs ? k OR jsonb_typeof(p_inputs -> k) = 'null' OR NOT pyxp.readable_number(p_inputs -> k)
     LIMIT 1;
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
-- what it asks (a reversal, the opposite of what its original asks). Exact
-- while no reversal frees that allowance: a wallet with a reversal that
-- does (`frees`) is folded in order (pyxp.simulated_totals), where the
-- reversal takes back what its original applied. Rows come sorted by
-- wallet (wallet_hash, then user_wallet: an integer sorts faster than the
-- database's collation, and a GROUP BY of both reads that order with no
-- sort of its own).
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
           CASE WHEN g.allowance_no IS NOT NULL AND g.asked > 0
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

-- Per wallet with a balance: its total and level now, its total under the
-- candidate, and (only for wallets folded in order) the candidate's XP per
-- action (0043: with the level, read from the balance it starts from;
-- callers joined the balances again, a probe per wallet their plan chose
-- on the function's default estimate of 1,000 rows: 14 s of 59 at 1M
-- wallets). Order
-- matters in a wallet with a penalty under the candidate's floor, or a
-- reversal that frees a capped allowance: those wallets' rows are read
-- again (pyxp.replayed_rows, for them only) and folded in id order; the
-- other wallets' totals are the sums of pyxp.simulated_rows.
CREATE FUNCTION pyxp.simulated_totals(p_ruleset_id bigint)
RETURNS TABLE (user_wallet text, total_xp_now bigint, level_now bigint, total_xp_then numeric, by_action jsonb)
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
        SELECT b.user_wallet, b.total_xp, b.current_level, coalesce((f.state).balance, w.linear, 0),
               (f.state).by_action
          FROM pyxp.xp_balances b
          LEFT JOIN per_wallet w ON w.user_wallet = b.user_wallet
          LEFT JOIN folded f ON f.user_wallet = b.user_wallet;
END
$$;

-- Public (SPEC 13): what every wallet's total and level would be had
-- ruleset version ruleset_id (installed, active or not) been active for the
-- whole ledger. Writes nothing. One row per wallet with a balance.
CREATE FUNCTION pyxp.simulate_rules(ruleset_id bigint)
RETURNS TABLE (user_wallet text, total_xp_now bigint, total_xp_then bigint, level_now bigint, level_then bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET jit = off
AS $$
BEGIN
    -- (PX027 before anything: inside the query it was checked only when a
    -- balance was joined, and on a ledger with none any id was accepted, a
    -- hostile test, 0037)
    PERFORM pyxp.checked_ruleset(simulate_rules.ruleset_id);
    RETURN QUERY
        SELECT s.user_wallet, s.total_xp_now, pyxp.checked_simulated_total(s.user_wallet, s.total_xp_then),
               s.level_now, c.level
          FROM pyxp.simulated_totals(simulate_rules.ruleset_id) s
         CROSS JOIN LATERAL pyxp.curve_position(simulate_rules.ruleset_id,
                                                pyxp.checked_simulated_total(s.user_wallet, s.total_xp_then)) c
         ORDER BY s.user_wallet;
    PERFORM pyxp.ledger_unmoved();  -- (40001 after a read older than an archive)
END
$$;

-- A simulated total as a balance, or PX019 when it would leave [-2^62, 2^62].
CREATE FUNCTION pyxp.checked_simulated_total(p_wallet text, p_total numeric)
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF abs(p_total) > pyxp.balance_limit() THEN
        RAISE EXCEPTION 'under that ruleset the balance of % would be %, out of range', p_wallet, p_total
            USING ERRCODE = 'PX019', HINT = 'a balance stays between -2^62 and 2^62';
    END IF;
    RETURN p_total::bigint;
END
$$;

-- Public (SPEC 13): the simulation summed up for people and scripts (pyxp
-- rules simulate): per action (rows, XP now, XP then), the top_wallets
-- wallets with the largest changes, and a summary (wallets up, down, level
-- changes, totals). Two passes over the ledger (the wallets' totals, then
-- the actions'). Writes nothing.
CREATE FUNCTION pyxp.simulation_report(ruleset_id bigint, top_wallets integer DEFAULT 10)
RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET jit = off
AS $$
DECLARE
    v_ruleset pyxp.rulesets := pyxp.checked_ruleset(simulation_report.ruleset_id);
    v_top integer := pyxp.checked_row_count('top_wallets', simulation_report.top_wallets);
    v_report jsonb;
BEGIN
    WITH leveled AS MATERIALIZED (
        SELECT t.user_wallet, t.total_xp_now AS now_xp, t.level_now, t.by_action,
               pyxp.checked_simulated_total(t.user_wallet, t.total_xp_then) AS then_xp, c.level AS level_then
          FROM pyxp.simulated_totals(v_ruleset.ruleset_id) t
         CROSS JOIN LATERAL pyxp.curve_position(v_ruleset.ruleset_id,
                                                pyxp.checked_simulated_total(t.user_wallet, t.total_xp_then)) c
    ),
    -- Per action: the rows' amounts under the candidate, except in the
    -- wallets folded in order, whose figures the fold kept (by_action).
    actions AS (
        SELECT a.action, sum(a.rows_)::bigint AS rows_, sum(a.now_xp)::bigint AS now_xp,
               sum(a.then_xp)::bigint AS then_xp
          FROM (SELECT r.action, count(*) AS rows_, sum(r.now_xp) AS now_xp,
                       sum(r.applied) FILTER (WHERE f.user_wallet IS NULL) AS then_xp
                  FROM pyxp.simulated_rows(v_ruleset.ruleset_id) r
                  LEFT JOIN (SELECT l.user_wallet FROM leveled l WHERE l.by_action IS NOT NULL) f
                         ON f.user_wallet = r.user_wallet
                 GROUP BY r.action
                UNION ALL
                SELECT e.key, 0, 0, sum(e.value::numeric)
                  FROM leveled l CROSS JOIN LATERAL jsonb_each_text(l.by_action) e
                 GROUP BY e.key
                UNION ALL
                -- Earlier retroactive adjustments: in the totals now, left out
                -- under the candidate (0027: the actions did not add up to the
                -- summary after any retroactive application).
                SELECT t.transaction_type, count(*), sum(t.xp_amount), 0
                  FROM pyxp.xp_transactions t
                 WHERE t.transaction_type = 'RULES_ADJUSTMENT' AND t.rule_id IS NULL AND t.reverses IS NULL
                 GROUP BY t.transaction_type) a
         GROUP BY a.action
    )
    SELECT jsonb_build_object(
        'ruleset', jsonb_build_object('ruleset_id', v_ruleset.ruleset_id, 'name', v_ruleset.name,
                                      'version', v_ruleset.version, 'is_active', v_ruleset.is_active),
        'summary', (SELECT jsonb_build_object(
                        'wallets', count(*), 'up', count(*) FILTER (WHERE l.then_xp > l.now_xp),
                        'down', count(*) FILTER (WHERE l.then_xp < l.now_xp),
                        'unchanged', count(*) FILTER (WHERE l.then_xp = l.now_xp),
                        'level_up', count(*) FILTER (WHERE l.level_then > l.level_now),
                        'level_down', count(*) FILTER (WHERE l.level_then < l.level_now),
                        'xp_now', coalesce(sum(l.now_xp), 0), 'xp_then', coalesce(sum(l.then_xp), 0))
                      FROM leveled l),
        'actions', (SELECT coalesce(jsonb_agg(jsonb_build_object('action', a.action, 'rows', a.rows_,
                                                                 'xp_now', a.now_xp, 'xp_then', coalesce(a.then_xp, 0))
                                              ORDER BY a.action), '[]')
                      FROM actions a),
        'top_changes', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                                   'user_wallet', t.user_wallet, 'total_xp_now', t.now_xp, 'total_xp_then', t.then_xp,
                                   'level_now', t.level_now, 'level_then', t.level_then)
                                   ORDER BY abs(t.then_xp - t.now_xp) DESC, t.user_wallet COLLATE "C"), '[]')
                          FROM (SELECT * FROM leveled l WHERE l.then_xp <> l.now_xp
                                 -- ties by code point, whatever the database's collation (0034)
                                 ORDER BY abs(l.then_xp - l.now_xp) DESC, l.user_wallet COLLATE "C" LIMIT v_top) t),
        -- What the replay cannot count (0037, a hostile test): it re-evaluates
        -- rows, so a call that wrote none is not seen. A rule of the candidate
        -- on an event whose action no row of the ledger carries ('added': the
        -- past calls of that event count nothing for it), and a rule whose
        -- event, campaign types or condition differ from the active
        -- version's rule of its action ('selection_changed': it is applied to
        -- every old row of the action, as that rule selected them).
        'not_simulated', (SELECT coalesce(jsonb_agg(jsonb_build_object('action', c.action, 'reason', c.reason)
                                                    ORDER BY c.action COLLATE "C"), '[]')
                            FROM (SELECT r.action, CASE WHEN o.rule_id IS NULL THEN 'added' ELSE 'selection_changed' END AS reason
                                    FROM pyxp.rules r
                                    LEFT JOIN pyxp.rules o
                                           ON o.action = r.action
                                          AND o.ruleset_id = (SELECT x.ruleset_id FROM pyxp.rulesets x WHERE x.is_active)
                                   WHERE r.ruleset_id = v_ruleset.ruleset_id AND NOT v_ruleset.is_active
                                     AND CASE WHEN o.rule_id IS NULL
                                              THEN r.event IS NOT NULL
                                                   AND NOT EXISTS (SELECT FROM actions a WHERE a.action = r.action AND a.rows_ > 0)
                                              ELSE (r.event, r.campaign_types, r.condition)
                                                   IS DISTINCT FROM (o.event, o.campaign_types, o.condition) END) c))
      INTO v_report;
    PERFORM pyxp.ledger_unmoved();  -- (40001 after a read older than an archive)
    RETURN v_report;
END
$$;

-- A number per retroactive application, in its adjustments' keys: two in
-- one transaction must not share keys (0027: the second one's rows were
-- taken for replays of the first's and nothing was written, a hostile test).
CREATE SEQUENCE pyxp.retroactive_applications;

-- Owner (SPEC 13): activates ruleset version ruleset_id and appends, for each
-- wallet whose simulated total differs from its balance, one
-- RULES_ADJUSTMENT row of the difference (metadata names the version), so
-- that every balance equals pyxp.simulate_rules(ruleset_id). One
-- transaction: SHARE ROW EXCLUSIVE on rulesets, then on xp_balances (the
-- ruleset-switch lock of sql/04_rulesets.sql, in install_ruleset's order),
-- so awards in flight finish before the simulation reads the ledger and new
-- ones wait for the commit: none is lost or counted twice. The rows go
-- through the one writer (pyxp.append_rows), each a claim of the key
-- rules.adjustment:<ruleset_id>:<transaction id>.<application>:<wallet>
-- (<application>: pyxp.retroactive_applications; before 0027, none).
-- Idempotent by the numbers: applying a version again adds only the
-- differences left (none if nothing changed since; after a reversal, or
-- another version applied meanwhile, what brings every balance back to
-- this version's simulation).
CREATE FUNCTION pyxp.apply_rules_retroactively(ruleset_id bigint)
RETURNS TABLE (ruleset_id_applied bigint, name text, version integer, already_applied boolean,
               wallets_adjusted bigint, xp_adjusted numeric, balances_changed bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET lock_timeout = '10s'  -- see recalculate_levels: never queue every award behind an open transaction
SET jit = off
AS $$
DECLARE
    v_ruleset pyxp.rulesets := pyxp.checked_ruleset(apply_rules_retroactively.ruleset_id);
    v_levels bigint;
    v_chunk pyxp.pending_row[];
    v_wallets bigint := 0;
    v_xp numeric := 0;
    v_call bigint := nextval('pyxp.retroactive_applications');
BEGIN
    PERFORM pyxp.require_read_committed();
    -- (a failover or a point-in-time recovery: the ids move past the history
    -- left, 0033; a review found this writer, which takes its own locks
    -- rather than pyxp.writing_ruleset's, writing there without it)
    PERFORM pyxp.follow_timeline();
    -- Installers' lock first, then the awards' (the order of install_ruleset).
    LOCK TABLE pyxp.rulesets IN SHARE ROW EXCLUSIVE MODE;
    PERFORM pyxp.hold_awards('pyxp.apply_rules_retroactively');
    v_levels := pyxp.activate_ruleset(v_ruleset.ruleset_id);
    -- Wallets in order, 10,000 per call of the writer.
    FOR v_chunk IN
        SELECT array_agg(ROW(0, d.user_wallet, d.key,
                             jsonb_build_object('action', 'RULES_ADJUSTMENT', 'wallet', d.user_wallet,
                                                'ruleset_id', v_ruleset.ruleset_id),
                             'RULES_ADJUSTMENT', d.delta, NULL, false, NULL, NULL, NULL,
                             jsonb_build_object('ruleset_id', v_ruleset.ruleset_id, 'ruleset', v_ruleset.name,
                                                'version', v_ruleset.version, 'total_xp_before', d.now_xp,
                                                'reason', 'retroactive application of the rules'),
                             NULL, 0)::pyxp.pending_row ORDER BY d.user_wallet)
          FROM (SELECT s.user_wallet, s.total_xp_then - s.total_xp_now AS delta, s.total_xp_now AS now_xp,
                       format('rules.adjustment:%s:%s.%s:%s', v_ruleset.ruleset_id, pyxp.ledger_xid(pg_current_xact_id()),
                              v_call, s.user_wallet) AS key,
                       (row_number() OVER (ORDER BY s.user_wallet) - 1) / 10000 AS chunk
                  FROM pyxp.simulated_totals(v_ruleset.ruleset_id) s
                 WHERE pyxp.checked_simulated_total(s.user_wallet, s.total_xp_then) <> s.total_xp_now) d
         GROUP BY d.chunk
         ORDER BY d.chunk
    LOOP
        PERFORM pyxp.counted_transaction_rows(cardinality(v_chunk));  -- the feed's bound (sql/11_changes.sql)
        PERFORM FROM pyxp.append_rows(v_ruleset.ruleset_id, v_ruleset.balance_floor, v_ruleset.timezone,
                                      v_ruleset.has_caps, v_chunk, true);
        v_wallets := v_wallets + cardinality(v_chunk);
        v_xp := v_xp + (SELECT sum(c.xp_amount) FROM unnest(v_chunk) c);
    END LOOP;
    IF v_wallets > 0 THEN
        UPDATE pyxp.rulesets r SET applied_retroactively_at = now() WHERE r.ruleset_id = v_ruleset.ruleset_id;
    END IF;
    RETURN QUERY SELECT v_ruleset.ruleset_id, v_ruleset.name, v_ruleset.version, v_wallets = 0, v_wallets, v_xp,
                        v_levels;
END
$$;

COMMENT ON FUNCTION pyxp.simulation_step(pyxp.simulation_state, bigint, text, numeric, bigint, boolean, bigint, text, bigint) IS
    'internal: one ledger row replayed under a candidate ruleset (floor, caps, reversals), for pyxp.simulated_balance.';
COMMENT ON AGGREGATE pyxp.simulated_balance(bigint, text, numeric, bigint, boolean, bigint, text, bigint) IS
    'internal: a wallet''s rows folded in id order under a candidate ruleset.';
COMMENT ON FUNCTION pyxp.checked_ruleset(bigint) IS 'internal: a ruleset version by id, or PX027.';
COMMENT ON FUNCTION pyxp.simulated_amount(bigint, text, numeric, jsonb, jsonb) IS
    'internal: a candidate''s formula on a ledger row''s stored inputs, or PX018 (an input missing) or PX004 (an input not a number, or over 10^15).';
COMMENT ON FUNCTION pyxp.row_formula_inputs(jsonb, boolean, jsonb) IS
    'internal: a ledger row''s formula inputs: a flow''s metadata, or a generic award''s params (not its context).';
COMMENT ON FUNCTION pyxp.candidate_rows(bigint) IS
    'internal: every ledger row but the adjustments, with what a candidate ruleset asks for it and its allowance under it.';
COMMENT ON FUNCTION pyxp.replayed_rows(bigint) IS
    'internal: pyxp.candidate_rows with each reversal mirroring its original.';
COMMENT ON FUNCTION pyxp.simulated_rows(bigint) IS
    'internal: every ledger row but the adjustments, with what applies of it under a candidate ruleset when order does not matter, sorted by wallet.';
COMMENT ON FUNCTION pyxp.simulated_totals(bigint) IS
    'internal: every wallet''s total and level now and its total under a candidate ruleset.';
COMMENT ON FUNCTION pyxp.simulate_rules(bigint) IS
    'API: every wallet''s total and level now and had that ruleset version been active for the whole ledger; writes nothing.';
COMMENT ON FUNCTION pyxp.checked_simulated_total(text, numeric) IS 'internal: a simulated total as a balance, or PX019.';
COMMENT ON FUNCTION pyxp.simulation_report(bigint, integer) IS
    'API: the simulation of a ruleset version summed up: per action, the largest changes, a summary (JSON); writes nothing.';
COMMENT ON FUNCTION pyxp.apply_rules_retroactively(bigint) IS
    'internal: (owner only) activates a ruleset version and appends one RULES_ADJUSTMENT row per wallet whose total differs from its simulation.';
