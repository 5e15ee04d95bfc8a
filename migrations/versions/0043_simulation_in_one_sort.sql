-- 0043: the what-if of a ruleset (pyxp.simulate_rules, simulation_report,
-- apply_rules_retroactively) reads the ledger once and sorts its rows once:
-- each row's amount under the candidate (pyxp.candidate_rows; reversals
-- mirrored by pyxp.replayed_rows), one window per wallet and allowance
-- sorted by the wallet's hash (pyxp.simulated_rows), the sums per wallet in
-- that order. 0042 materialized the rows twice and sorted them four times
-- in the database's collation: a cap's simulation at 10M rows, 68 s -> 30 s.
-- And what an owner's edit of a row's formula inputs does (helper-73): an
-- input that is not a number, or JSON null, is refused by the simulation
-- with PX004 naming the row (pyxp.simulated_amount; 22P02, or a NULL
-- amount, before); an input removed or nulled is an amount_mismatch of the
-- audit (pyxp.row_problems: the form's NULL was let through); a reversal
-- of a row the wallet's fold does not hold no longer makes the wallet's
-- simulated total fall back to the sum that ignores order
-- (pyxp.simulation_step). And pyxp.simulated_totals gives each wallet's
-- level now: simulate_rules and simulation_report joined the balances again,
-- a probe per wallet (14 s of 59 at 1M wallets).
SET LOCAL ROLE pyxp_owner;

-- (other return types: dropped, created again below)
DROP FUNCTION pyxp.simulated_rows(bigint);
DROP FUNCTION pyxp.simulated_totals(bigint);

-- One ledger row under the candidate, as the writer would apply it: a
-- reversal takes back what its original applied (and frees its allowance);
-- a capped gain is cut to what is left; a penalty under a floor is cut to
-- what keeps the balance at the floor (a balance already below loses
-- nothing more). p_asked: the candidate's amount for the row (a reversal:
-- the opposite of what it asks of the original, used only when the
-- wallet's rows do not hold that original).
CREATE OR REPLACE FUNCTION pyxp.simulation_step(p_state pyxp.simulation_state, p_id bigint, p_action text, p_asked numeric,
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

-- A candidate's formula on a row's formula inputs (pyxp.row_formula_inputs),
-- or PX018 when the row lacks one (the live award would have been refused:
-- no guess at 0), or PX004 when one is JSON null or not a number
-- rule_amount reads (the writer stores numbers: an owner edited it, which
-- audit() reports as the row's amount_mismatch; 0043: a text failed the
-- simulation with 22P02 without naming the row, a null made the row's
-- amount NULL) or when it gives more than 10^15 XP (the live award would
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
CREATE OR REPLACE FUNCTION pyxp.simulate_rules(ruleset_id bigint)
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

-- Public (SPEC 13): the simulation summed up for people and scripts (pyxp
-- rules simulate): per action (rows, XP now, XP then), the top_wallets
-- wallets with the largest changes, and a summary (wallets up, down, level
-- changes, totals). Two passes over the ledger (the wallets' totals, then
-- the actions'). Writes nothing.
CREATE OR REPLACE FUNCTION pyxp.simulation_report(ruleset_id bigint, top_wallets integer DEFAULT 10)
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

-- The checks of single rows (pyxp.audited_rows):
--   reversal_mismatch   a reversal that does not mirror its original (same
--                       wallet, opposite amount; an archived original is
--                       read in xp_archived_originals), reverses a reversal
--                       or a row that does not exist, or is a second
--                       reversal of its original (no foreign key or unique
--                       index holds these on a partitioned ledger:
--                       sql/01_schema.sql)
--   rule_missing, rule_mismatch  a row's rule is gone, or is another action
--   duplicate_id        two rows with one id (the full audit only)
--   request_missing     a flow's or reversal's row without its xp_requests row
--                       (found by its key's hash)
--   claim_mismatch      a generic award's row without its claim in
--                       xp_award_claims, or a claim without its row (but
--                       for a row archived: its created_at is before the
--                       archive horizon, sql/13_retention.sql), or
--                       whose hash is not its row's key's (the full audit
--                       joins the rows to the claims on the row's id, and
--                       looks for claims without a row when the counts say
--                       one exists; since a checkpoint, each new row probes
--                       its claim)
CREATE OR REPLACE FUNCTION pyxp.row_problems(p_since_checkpoint boolean)
RETURNS TABLE (check_name text, user_wallet text, transaction_id bigint, detail text)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT 'reversal_mismatch', t.user_wallet, t.id,
           CASE WHEN o.id IS NULL THEN format('reverses transaction %s, which does not exist', t.reverses)
                WHEN o.second_id IS NOT NULL
                THEN format('transaction %s is also reversed by transaction %s', o.id, o.second_id)
                ELSE format('reverses transaction %s (%s XP to %s) with %s XP', o.id, o.xp_amount, o.user_wallet,
                            t.xp_amount) END
      FROM pyxp.audited_rows(p_since_checkpoint) t
      LEFT JOIN LATERAL (SELECT o.id, o.xp_amount, o.user_wallet, o.reverses,
                                (SELECT min(x.id) FROM pyxp.xp_transactions x
                                  WHERE x.reverses = t.reverses AND x.id < t.id) AS second_id
                           FROM (SELECT o.id, o.xp_amount, o.user_wallet, o.reverses
                                   FROM pyxp.xp_transactions o WHERE o.id = t.reverses
                                 UNION ALL
                                 SELECT a.transaction_id, a.xp_amount, a.user_wallet, a.reverses
                                   FROM pyxp.xp_archived_originals a WHERE a.transaction_id = t.reverses) o
                          LIMIT 1) o ON true
     WHERE t.reverses IS NOT NULL
       AND (o.id IS NULL OR o.second_id IS NOT NULL
            OR t.xp_amount <> -o.xp_amount OR t.user_wallet <> o.user_wallet OR o.reverses IS NOT NULL)
    UNION ALL
    -- Two rows with one id: the ledger's primary key is (id, created_at), as
    -- a partitioned table's unique index must hold its partition key, and a
    -- reversal names its original by id alone (0032, a hostile test: after a
    -- logical replication switchover, which carries no sequence, the next
    -- award got id 1, another wallet's row's, and reversing it reversed that
    -- row; audit() said nothing). The full audit only: one grouping of the
    -- ids in the order of the partitions' primary keys (merged, no sort),
    -- then each id found twice looked up (OFFSET 0 keeps that a lookup: a
    -- join let a parallel plan build the grouping in every worker, three
    -- times the work; 0042).
    SELECT 'duplicate_id', t.user_wallet, t.id, format('transaction id %s names %s rows', t.id, d.n)
      FROM (SELECT x.id, count(*) AS n FROM pyxp.xp_transactions x
             WHERE NOT p_since_checkpoint GROUP BY x.id HAVING count(*) > 1) d
     CROSS JOIN LATERAL (SELECT t.user_wallet, t.id FROM pyxp.xp_transactions t WHERE t.id = d.id OFFSET 0) t
    UNION ALL
    -- (0029, a hostile test: a reversal pointed at another original, its
    -- amount and the balances made to match, was clean.)
    SELECT 'reversal_mismatch', t.user_wallet, t.id,
           format('reverses transaction %s, but its key is %s and its rule %s', t.reverses,
                  quote_literal(t.idempotency_key), coalesce(t.rule_id::text, 'none'))
      FROM pyxp.audited_rows(p_since_checkpoint) t
     WHERE t.reverses IS NOT NULL
       AND (t.idempotency_key <> 'reverse:' || t.reverses OR t.rule_id IS NOT NULL)
    UNION ALL
    -- The full audit: every generic award's row joined to the claims naming
    -- it (a LEFT join, which PostgreSQL 15 can run in parallel workers, a
    -- FULL join it cannot: 26-31 s in one process at 10M rows, 18 s with
    -- two workers, most of it hashing the keys again)...
    SELECT 'claim_mismatch', t.user_wallet, t.id,
           CASE WHEN c.key_hash IS NULL THEN format('no claim in xp_award_claims for key %s', quote_literal(t.idempotency_key))
                ELSE format('claim %s of transaction %s is not the hash of its key %s', c.key_hash, t.id,
                            quote_literal(t.idempotency_key)) END
      FROM pyxp.xp_transactions t
      LEFT JOIN pyxp.xp_award_claims c ON c.transaction_id = t.id AND c.created_at = t.created_at
     WHERE NOT p_since_checkpoint AND t.request_digest IS NOT NULL
       -- pyxp.key_hash, spelled out and compared as bytes: a function call per row costs
       -- 5 times more, the text form of the hash 15 % more
       AND (c.key_hash IS NULL OR uuid_send(c.key_hash) <> substr(sha256(convert_to(t.idempotency_key, 'UTF8')), 1, 16))
    UNION ALL
    -- ... and the claims without their row (archived rows excepted: claimed
    -- before the archive horizon, sql/13_retention.sql), searched for only
    -- when the count or the sum of transaction ids of the claims from the
    -- horizon on differs from the generic rows'. Why that suffices: when the
    -- join above finds nothing, every generic row has exactly one claim
    -- naming it (two would share its key's hash, the claims' primary key),
    -- dated as the row; so the claims from the horizon on are those of the
    -- rows from the horizon on plus the ones without a row, which equal
    -- counts rule out. (The sums make a claim moved to another transaction
    -- show both its findings. The horizon is read once, an InitPlan:
    -- the function, not inlined, cost 2 us a row.)
    SELECT 'claim_mismatch', NULL, c.transaction_id,
           format('claim %s names transaction %s (%s), which does not exist', c.key_hash, c.transaction_id,
                  c.created_at)
      FROM pyxp.xp_award_claims c
     WHERE NOT p_since_checkpoint
       AND c.created_at >= coalesce((SELECT pyxp.archive_horizon()), '-infinity')
       AND NOT EXISTS (SELECT FROM pyxp.xp_transactions t
                        WHERE t.id = c.transaction_id AND t.created_at = c.created_at AND t.request_digest IS NOT NULL)
       AND (SELECT (count(*), sum(k.transaction_id)) FROM pyxp.xp_award_claims k
             WHERE k.created_at >= coalesce((SELECT pyxp.archive_horizon()), '-infinity'))
           IS DISTINCT FROM
           (SELECT (count(*), sum(t.id)) FROM pyxp.xp_transactions t
             WHERE t.request_digest IS NOT NULL AND t.created_at >= coalesce((SELECT pyxp.archive_horizon()), '-infinity'))
    UNION ALL
    SELECT 'claim_mismatch', t.user_wallet, t.id,
           CASE WHEN c.key_hash IS NULL THEN format('no claim in xp_award_claims for key %s', quote_literal(t.idempotency_key))
                ELSE format('the claim of key %s names transaction %s (%s)', quote_literal(t.idempotency_key),
                            c.transaction_id, c.created_at) END
      FROM pyxp.audited_rows(p_since_checkpoint) t
      LEFT JOIN pyxp.xp_award_claims c  -- pyxp.key_hash, spelled out (as above)
             ON c.key_hash = encode(substr(sha256(convert_to(t.idempotency_key, 'UTF8')), 1, 16), 'hex')::uuid
     WHERE p_since_checkpoint AND t.request_digest IS NOT NULL
       AND (c.key_hash IS NULL OR (c.transaction_id, c.created_at) <> (t.id, t.created_at))
    UNION ALL
    -- Each row against its rule, in one pass of the rows (one join of the
    -- rules; three passes up to 0041):
    --   rule_missing, rule_mismatch: the row's rule is gone, or is another
    --   action; a row without a rule is a reversal or a retroactive
    --   adjustment (pyxp.apply_rules_retroactively: its key and metadata
    --   name the ruleset applied; 0029, a hostile test: a 'GIFT' row of
    --   5,000 XP, the balances made to match, was clean);
    --   amount_mismatch, inputs_mismatch: a generic award's row against
    --   what its call gave (0029, a hostile test: an amount raised, or a row
    --   moved to another wallet, with the balances made to match, was
    --   clean): its amount is its rule's formula on the params its metadata
    --   holds (its rule's inputs by name: pyxp.award), or a cut of it (a
    --   cap: xp_requested keeps the formula's, and what applied lies between
    --   0 and it; a balance floor the same for a penalty); and, for a rule
    --   without inputs, its inputs' digest is that of its action and wallet
    --   (params {}). A rule with inputs is left out of the digest's check: a
    --   ledger carried from an early revision holds digests of params the
    --   metadata does not spell alike (300.0 for 300: test_migrations'
    --   ledger of 0005).
    -- pyxp.inputs_digest spelled out and compared as bytes (as the claims'
    -- hashes above), on the text jsonb_build_object('action', ..., 'params',
    -- '{}', 'wallet', ...) prints, written out (building the jsonb cost twice
    -- as much: 5.6 s against 2.7 s at 1M rows in one process); the formula
    -- of a rule without inputs is its rounded constant (the function call
    -- cost 1.7 s against 0.7 s). A rule that cannot be evaluated on the
    -- row's metadata (an input edited to a string: pyxp.audited_rule_amount
    -- gives NaN, which no amount equals) is an amount_mismatch too; a row
    -- costs one jsonpath test more (0.2 us), and only a row whose inputs are
    -- not all numbers is read the slow way. So is a row whose input was
    -- removed from its metadata or edited to JSON null (the writer refuses
    -- both: PX018, PX004): the form gives NULL, which 0042 compared with <>
    -- and let through (helper-73). The WHERE is what every row is checked
    -- against; the findings of a row that fails it are spelled out after.
    SELECT f.check_name, g.user_wallet, g.id, f.detail
      FROM (SELECT t.id, t.user_wallet, t.transaction_type, t.xp_amount, t.xp_requested, t.rule_id,
                   t.request_digest, t.reverses, t.idempotency_key, t.metadata,
                   ru.rule_id AS rule_found, ru.action, ru.xp_coefficients AS coefficients, i.inputs,
                   t.request_digest IS NULL OR ru.xp_coefficients <> '{}'
                   OR substr(sha256(convert_to(i.inputs, 'UTF8')), 1, 8) = int8send(t.request_digest) AS digest_ok,
                   CASE WHEN ru.xp_coefficients = '{}' THEN round(ru.xp_constant)
                        WHEN NOT jsonb_path_exists(t.metadata, ru.odd_inputs)
                        THEN pyxp.rule_amount(ru.xp_constant, ru.xp_coefficients, t.metadata)
                        ELSE pyxp.audited_rule_amount(ru.xp_constant, ru.xp_coefficients, t.metadata) END AS formula
              FROM pyxp.audited_rows(p_since_checkpoint) t
              -- (each rule's test built once, by the rules' scan: on the nullable side of
              -- the join, the planner computes it there; OFFSET 0 did too, but took the
              -- join out of the parallel workers)
              LEFT JOIN (SELECT r.rule_id, r.action, r.xp_constant, r.xp_coefficients,
                                pyxp.odd_inputs_path(r.xp_coefficients) AS odd_inputs
                           FROM pyxp.rules r) ru ON ru.rule_id = t.rule_id
             CROSS JOIN LATERAL (
                    SELECT '{"action": ' || to_json(t.transaction_type)::text || ', "params": {}, "wallet": '
                           || to_json(t.user_wallet)::text || '}' AS inputs) i
            ) g
     CROSS JOIN LATERAL (
            SELECT CASE WHEN g.rule_found IS NULL THEN 'rule_missing' ELSE 'rule_mismatch' END,
                   CASE WHEN g.rule_found IS NULL THEN format('rule %s of this row does not exist', g.rule_id)
                        ELSE format('transaction_type %s but rule %s is %s', g.transaction_type, g.rule_found,
                                    g.action) END
             WHERE g.rule_id IS NOT NULL AND (g.rule_found IS NULL OR g.action <> g.transaction_type)
            UNION ALL
            SELECT 'rule_missing',
                   format('%s row without a rule, neither a reversal nor a retroactive adjustment', g.transaction_type)
             WHERE g.rule_id IS NULL AND g.reverses IS NULL
               AND NOT (g.transaction_type = 'RULES_ADJUSTMENT' AND g.idempotency_key LIKE 'rules.adjustment:%'
                        AND g.metadata ->> 'ruleset_id' = split_part(g.idempotency_key, ':', 2))
            UNION ALL
            SELECT CASE WHEN g.digest_ok THEN 'amount_mismatch' ELSE 'inputs_mismatch' END,
                   CASE WHEN NOT g.digest_ok
                        THEN format('its inputs'' digest %s is not that of %s', g.request_digest, g.inputs)
                        WHEN g.formula = 'NaN'
                        THEN format('%s XP (requested %s): rule %s''s form %s cannot be evaluated on its metadata %s',
                                    g.xp_amount, coalesce(g.xp_requested::text, 'none'), g.rule_id,
                                    g.coefficients, left(g.metadata::text, 200))
                        WHEN g.formula IS NULL
                        THEN format('%s XP (requested %s): an input of rule %s''s form %s is missing or null in its metadata %s',
                                    g.xp_amount, coalesce(g.xp_requested::text, 'none'), g.rule_id,
                                    g.coefficients, left(g.metadata::text, 200))
                        ELSE format('%s XP (requested %s) where rule %s gives %s', g.xp_amount,
                                    coalesce(g.xp_requested::text, 'none'), g.rule_id, g.formula) END
             WHERE g.rule_found IS NOT NULL
               AND (NOT g.digest_ok
                    OR coalesce(g.xp_requested, g.xp_amount) IS DISTINCT FROM g.formula
                    OR (g.xp_requested IS NOT NULL
                        AND NOT (g.xp_amount BETWEEN least(0, g.xp_requested) AND greatest(0, g.xp_requested))))
         ) f(check_name, detail)
     WHERE (g.rule_id IS NOT NULL AND (g.rule_found IS NULL OR g.action <> g.transaction_type))
        OR (g.rule_id IS NULL AND g.reverses IS NULL
            AND NOT (g.transaction_type = 'RULES_ADJUSTMENT' AND g.idempotency_key LIKE 'rules.adjustment:%'
                     AND g.metadata ->> 'ruleset_id' = split_part(g.idempotency_key, ':', 2)))
        OR (g.rule_found IS NOT NULL
            AND (NOT g.digest_ok
                 OR coalesce(g.xp_requested, g.xp_amount) IS DISTINCT FROM g.formula
                 OR (g.xp_requested IS NOT NULL
                     AND NOT (g.xp_amount BETWEEN least(0, g.xp_requested) AND greatest(0, g.xp_requested)))))
    UNION ALL
    SELECT 'request_missing', t.user_wallet, t.id,
           format('no xp_requests row for key %s', quote_literal(t.idempotency_key))
      FROM pyxp.audited_rows(p_since_checkpoint) t
     WHERE t.request_digest IS NULL
       AND NOT EXISTS (SELECT FROM pyxp.xp_requests q WHERE q.key_hash = pyxp.key_hash(t.idempotency_key))
$$;

REVOKE ALL ON FUNCTION pyxp.candidate_rows(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION pyxp.replayed_rows(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION pyxp.simulated_rows(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION pyxp.simulated_totals(bigint) FROM PUBLIC;
COMMENT ON FUNCTION pyxp.simulated_amount(bigint, text, numeric, jsonb, jsonb) IS
    'internal: a candidate''s formula on a ledger row''s stored inputs, or PX018 (an input missing) or PX004 (an input not a number, or over 10^15).';
COMMENT ON FUNCTION pyxp.candidate_rows(bigint) IS
    'internal: every ledger row but the adjustments, with what a candidate ruleset asks for it and its allowance under it.';
COMMENT ON FUNCTION pyxp.replayed_rows(bigint) IS
    'internal: pyxp.candidate_rows with each reversal mirroring its original.';
COMMENT ON FUNCTION pyxp.simulated_rows(bigint) IS
    'internal: every ledger row but the adjustments, with what applies of it under a candidate ruleset when order does not matter, sorted by wallet.';
COMMENT ON FUNCTION pyxp.simulated_totals(bigint) IS
    'internal: every wallet''s total and level now and its total under a candidate ruleset.';

CREATE OR REPLACE FUNCTION pyxp.schema_revision()
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$ SELECT '0043' $$;

RESET ROLE;
