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

-- Public: the level of a total under the active ruleset's curve. Any whole
-- number, bigint or numeric (SPEC 5): what it returns can be passed back in,
-- so level_for(next_level_xp) is the next level even where next_level_xp
-- passes the bigint limit. level_start_xp, next_level_xp and
-- xp_to_next_level are numeric for that reason. Not a whole number, or a
-- total whose level would not fit in bigint: PX004. NULL: no row.
CREATE FUNCTION pyxp.level_for(total_xp numeric)
RETURNS TABLE (level bigint, level_start_xp numeric, next_level_xp numeric, xp_to_next_level numeric)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$
DECLARE
    v_total numeric := level_for.total_xp;
    v_ruleset bigint := pyxp.active_ruleset_id();
    v_last pyxp.level_thresholds;
    v_steps numeric;
BEGIN
    IF v_total IS NULL THEN
        RETURN;
    ELSIF v_total IN ('NaN'::numeric, 'Infinity'::numeric, '-Infinity'::numeric) OR v_total <> trunc(v_total)
          OR abs(v_total) > 1e30 THEN
        RAISE EXCEPTION 'invalid total_xp: % is not a whole number in range', left(v_total::text, 60)
            USING ERRCODE = 'PX004', HINT = 'a whole number of XP, e.g. 2500, between -10^30 and 10^30';
    ELSIF v_total <= 9223372036854775807 THEN
        -- Below the bigint range everything is level 1, like any negative total.
        RETURN QUERY
            SELECT c.level, c.level_start_xp::numeric, c.next_level_xp, c.next_level_xp - v_total
              FROM pyxp.curve_position(v_ruleset, greatest(v_total, -1)::bigint) c;
        RETURN;
    END IF;
    -- Past the bigint range: every threshold is below, so the last generated
    -- level and its constant increment place it.
    SELECT * INTO STRICT v_last FROM pyxp.level_thresholds lt WHERE lt.ruleset_id = v_ruleset AND lt.is_last;
    v_steps := floor((v_total - v_last.threshold) / v_last.increment);
    IF v_last.level + v_steps > 9223372036854775807 THEN
        RAISE EXCEPTION 'invalid total_xp: % is beyond the last level', v_total
            USING ERRCODE = 'PX004', HINT = 'a total whose level fits in bigint';
    END IF;
    RETURN QUERY SELECT (v_last.level + v_steps)::bigint, v_last.threshold + v_steps * v_last.increment,
                        v_last.threshold + (v_steps + 1) * v_last.increment,
                        v_last.threshold + (v_steps + 1) * v_last.increment - v_total;
END
$$;
