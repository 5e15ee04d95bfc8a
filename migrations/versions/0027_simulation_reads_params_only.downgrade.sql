-- Downgrade of 0027: back to 0026's simulation.

SET LOCAL ROLE pyxp_owner;

CREATE OR REPLACE FUNCTION pyxp.apply_rules_retroactively(ruleset_id bigint)
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
BEGIN
    PERFORM pyxp.require_read_committed();
    -- Installers' lock first, then the awards' (the order of install_ruleset).
    LOCK TABLE pyxp.rulesets IN SHARE ROW EXCLUSIVE MODE;
    LOCK TABLE pyxp.xp_balances IN SHARE ROW EXCLUSIVE MODE;
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
                       format('rules.adjustment:%s:%s:%s', v_ruleset.ruleset_id, pg_current_xact_id(),
                              s.user_wallet) AS key,
                       (row_number() OVER (ORDER BY s.user_wallet) - 1) / 10000 AS chunk
                  FROM pyxp.simulated_totals(v_ruleset.ruleset_id) s
                 WHERE pyxp.checked_simulated_total(s.user_wallet, s.total_xp_then) <> s.total_xp_now) d
         GROUP BY d.chunk
         ORDER BY d.chunk
    LOOP
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

CREATE OR REPLACE FUNCTION pyxp.simulated_amount(p_id bigint, p_action text, p_constant numeric, p_coefficients jsonb,
                                      p_inputs jsonb)
RETURNS numeric
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_missing text;
BEGIN
    SELECT k INTO v_missing FROM jsonb_object_keys(p_coefficients) k WHERE NOT p_inputs ? k LIMIT 1;
    IF v_missing IS NOT NULL THEN
        RAISE EXCEPTION 'transaction % has no input % for the candidate''s rule %', p_id, v_missing, p_action
            USING ERRCODE = 'PX018', HINT = 'a candidate''s formula may only use the inputs its action''s rows kept';
    END IF;
    RETURN pyxp.rule_amount(p_constant, p_coefficients, p_inputs);
END
$$;

CREATE OR REPLACE FUNCTION pyxp.simulated_rows(p_ruleset_id bigint)
RETURNS TABLE (id bigint, user_wallet text, action text, now_xp bigint, asked numeric, applied numeric,
               reverses bigint, reversed boolean, frees boolean, allowance text, cap_max_xp bigint)
LANGUAGE sql STABLE
AS $$
    WITH rows_ AS (
        SELECT t.id, t.user_wallet, t.transaction_type AS action, t.xp_amount AS now_xp, t.reverses,
               CASE WHEN t.reverses IS NOT NULL THEN NULL
                    WHEN c.rule_id IS NULL THEN 0
                    WHEN c.xp_coefficients = '{}' THEN round(c.xp_constant)
                    ELSE pyxp.simulated_amount(t.id, c.action, c.xp_constant, c.xp_coefficients, t.metadata)
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
        SELECT t.user_wallet, t.total_xp_now AS now_xp, b.current_level AS level_now, t.by_action,
               pyxp.checked_simulated_total(t.user_wallet, t.total_xp_then) AS then_xp, c.level AS level_then
          FROM pyxp.simulated_totals(v_ruleset.ruleset_id) t
          JOIN pyxp.xp_balances b ON b.user_wallet = t.user_wallet
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
                 GROUP BY e.key) a
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
                                   ORDER BY abs(t.then_xp - t.now_xp) DESC, t.user_wallet), '[]')
                          FROM (SELECT * FROM leveled l WHERE l.then_xp <> l.now_xp
                                 ORDER BY abs(l.then_xp - l.now_xp) DESC, l.user_wallet LIMIT v_top) t))
      INTO v_report;
    PERFORM pyxp.ledger_unmoved();  -- (40001 after a read older than an archive)
    RETURN v_report;
END
$$;

DROP FUNCTION pyxp.row_formula_inputs(jsonb, boolean, jsonb);

COMMENT ON FUNCTION pyxp.simulated_amount(bigint, text, numeric, jsonb, jsonb) IS
    'internal: a candidate''s formula on a ledger row''s stored inputs, or PX018.';

DROP SEQUENCE pyxp.retroactive_applications;

RESET ROLE;
