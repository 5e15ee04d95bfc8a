-- Levels: a lookup in the level curve generated from the config seed.
--
-- The curve is data (pyxp.level_thresholds), computed by the Python config
-- compiler; SQL only looks it up. Past the last generated level the increment
-- is constant, so every bigint total has a level and nothing overflows:
-- (total - threshold) / increment never exceeds bigint, and the next
-- threshold, which may not fit in bigint near its limit, is numeric.

-- The active ruleset, or PX020 when none is (run `pyxp db upgrade`).
CREATE FUNCTION pyxp.active_ruleset_id()
RETURNS bigint
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_id bigint;
BEGIN
    SELECT r.ruleset_id INTO v_id FROM pyxp.rulesets r WHERE r.is_active;
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'no active ruleset'
            USING ERRCODE = 'PX020', HINT = 'activate one: pyxp db upgrade, or pyxp rules apply winstory';
    END IF;
    RETURN v_id;
END
$$;

-- Where a total stands on a ruleset's curve. One index probe: the highest
-- threshold <= total (level 1 starts at 0, so totals below 0 are level 1),
-- then, past the last generated level, whole constant increments.
-- Written as a set-returning SQL function without SET clauses so that the
-- planner inlines it into set-based callers (recalculate_levels, audit).
CREATE FUNCTION pyxp.curve_position(p_ruleset_id bigint, p_total_xp bigint)
RETURNS TABLE (level bigint, level_start_xp bigint, next_level_xp numeric)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT t.level + s.steps,
           t.threshold + s.steps * t.increment,
           (t.threshold + s.steps * t.increment)::numeric + t.increment
    FROM (
        SELECT lt.level, lt.threshold, lt.increment, lt.is_last
          FROM pyxp.level_thresholds lt
         WHERE lt.ruleset_id = p_ruleset_id AND lt.threshold <= greatest(p_total_xp, 0)
         ORDER BY lt.threshold DESC
         LIMIT 1
    ) t
    CROSS JOIN LATERAL (
        SELECT CASE WHEN t.is_last AND p_total_xp > t.threshold
                    THEN (p_total_xp - t.threshold) / t.increment
                    ELSE 0 END AS steps
    ) s
$$;

-- Public: the level of a total under the active ruleset's curve.
-- next_level_xp and xp_to_next_level are numeric: at the ends of the bigint
-- range they do not fit in bigint.
CREATE FUNCTION pyxp.level_for(total_xp bigint)
RETURNS TABLE (level bigint, level_start_xp bigint, next_level_xp numeric, xp_to_next_level numeric)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$
    SELECT c.level, c.level_start_xp, c.next_level_xp, c.next_level_xp - level_for.total_xp
    FROM pyxp.curve_position(pyxp.active_ruleset_id(), level_for.total_xp) c
    WHERE level_for.total_xp IS NOT NULL
$$;
