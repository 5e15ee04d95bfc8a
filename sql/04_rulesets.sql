-- Rulesets: installing a compiled config seed, activating it, re-deriving levels.
--
-- Lock protocol (ruleset switch vs awards): every award first takes
-- ROW EXCLUSIVE on pyxp.xp_balances, then reads the active ruleset.
-- Activation and recalculate_levels() take SHARE ROW EXCLUSIVE on it, which
-- waits for awards in flight and holds new ones until commit. So no award
-- ever computes with one curve while the balances are re-derived with another.

-- Holds every award: SHARE ROW EXCLUSIVE on pyxp.xp_balances, which waits
-- for the awards in flight and holds new ones until the caller commits (a
-- ruleset's activation, recalculate_levels, rebalance_rank_buckets,
-- apply_rules_retroactively, adopt_cluster). It waits at most the caller's
-- lock_timeout; then 55P03 (the same code: a caller's retry still applies)
-- names who held the table when the wait ended: a prepared transaction
-- (two-phase commit), which no session will end, by its gid; a session by
-- its pid (with its state and transaction start where pyxp_owner may see
-- them: its own sessions, or as a member of pg_read_all_stats). Before 0036 the bare
-- "canceling statement due to lock timeout" left a DBA to find a prepared
-- award alone (a hostile test). The exception block is a subtransaction:
-- owner operations only, never an award's path.
CREATE FUNCTION pyxp.hold_awards(p_caller text)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_holders text;
    v_prepared boolean;
BEGIN
    LOCK TABLE pyxp.xp_balances IN SHARE ROW EXCLUSIVE MODE;
EXCEPTION WHEN lock_not_available THEN
    PERFORM pg_catalog.pg_stat_clear_snapshot();  -- (pg_stat_activity as it is now, not as this transaction first read it)
    SELECT string_agg(h.holder, '; ' ORDER BY h.since NULLS LAST, h.holder), bool_or(h.prepared)
      INTO v_holders, v_prepared
      FROM (SELECT DISTINCT
                   CASE WHEN l.pid IS NULL
                        THEN 'prepared transaction'
                             || coalesce(format(' %s (prepared %s by %s)', quote_literal(p.gid), p.prepared, p.owner), '')
                        ELSE format('session pid %s', l.pid)
                             -- (another role's session shows neither to pyxp_owner without
                             -- pg_read_all_stats: nothing then, not "(, transaction started )",
                             -- a hostile test, 0037)
                             || CASE WHEN a.state IS NOT NULL
                                     THEN format(' (%s, transaction started %s)', a.state, a.xact_start) ELSE '' END
                   END AS holder,
                   coalesce(p.prepared, a.xact_start) AS since,
                   l.pid IS NULL AS prepared
              FROM pg_catalog.pg_locks l
              -- A prepared transaction's locks have no pid; its transaction id's
              -- lock has the same virtualtransaction.
              LEFT JOIN pg_catalog.pg_locks x
                     ON l.pid IS NULL AND x.pid IS NULL AND x.locktype = 'transactionid'
                    AND x.virtualtransaction = l.virtualtransaction
              LEFT JOIN pg_catalog.pg_prepared_xacts p ON p.transaction = x.transactionid
              LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'relation' AND l.granted
               AND l.relation = 'pyxp.xp_balances'::regclass
               AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = current_database())
               AND l.pid IS DISTINCT FROM pg_backend_pid()) h;
    RAISE EXCEPTION '% could not hold the awards within lock_timeout (%): %', p_caller,
                    current_setting('lock_timeout'),
                    coalesce('pyxp.xp_balances is held by ' || v_holders,
                             'the transactions that held pyxp.xp_balances have ended since')
        USING ERRCODE = '55P03',
              HINT = CASE WHEN v_prepared
                          THEN 'a prepared transaction holds it until COMMIT PREPARED or ROLLBACK PREPARED '
                               '(pg_prepared_xacts; its coordinator should end it); then run this again'
                          WHEN v_holders IS NOT NULL
                          THEN 'end that transaction (pg_stat_activity shows it by its pid; '
                               'pg_terminate_backend(pid) ends it), then run this again'
                          ELSE 'run this again' END;
END
$$;

-- Re-derives current_level and xp_to_next_level of every balance from the
-- active curve, in one set-based UPDATE. Returns the number of rows changed.
-- Owner only (SPEC 7): its lock holds every award until it commits, so a
-- writer that could call it and leave its transaction open would stall them
-- all. It waits at most 10 s for awards in flight (lock_timeout), so a
-- transaction left open by a writer cannot queue every later award behind
-- it either: it fails (55P03) and awards go on.
CREATE FUNCTION pyxp.recalculate_levels()
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET lock_timeout = '10s'
AS $$
DECLARE
    v_ruleset bigint;
    v_changed bigint;
BEGIN
    PERFORM pyxp.require_read_committed();
    PERFORM pyxp.hold_awards('pyxp.recalculate_levels');
    v_ruleset := pyxp.active_ruleset_id();
    WITH target AS (
        SELECT b.user_wallet, c.level, (c.next_level_xp - b.total_xp)::bigint AS to_next
        FROM pyxp.xp_balances b
        CROSS JOIN LATERAL pyxp.curve_position(v_ruleset, b.total_xp) c
    )
    UPDATE pyxp.xp_balances b
       SET current_level = t.level, xp_to_next_level = t.to_next, updated_at = now()
      FROM target t
     WHERE b.user_wallet = t.user_wallet
       AND (b.current_level, b.xp_to_next_level) IS DISTINCT FROM (t.level, t.to_next);
    GET DIAGNOSTICS v_changed = ROW_COUNT;
    RETURN v_changed;
END
$$;

-- Refuses a malformed compiled definition (PX024). The Python compiler
-- already produces well-formed ones; this guards direct SQL callers.
CREATE FUNCTION pyxp.check_ruleset_definition(p_definition jsonb)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_problem text;
BEGIN
    SELECT problem INTO v_problem FROM (
        SELECT 'name must be a non-empty text' AS problem
         WHERE coalesce(p_definition ->> 'name', '') !~ '^[a-z0-9][a-z0-9_-]{0,62}$'
        UNION ALL
        SELECT 'levels must be a non-empty array'
         WHERE jsonb_typeof(p_definition -> 'levels') IS DISTINCT FROM 'array'
            OR jsonb_array_length(p_definition -> 'levels') = 0
        UNION ALL
        SELECT 'rules must be an array'
         WHERE jsonb_typeof(p_definition -> 'rules') IS DISTINCT FROM 'array'
        UNION ALL
        SELECT 'balance_floor must be an integer or null'
         WHERE jsonb_typeof(p_definition -> 'balance_floor') NOT IN ('null', 'number')
            OR (p_definition ->> 'balance_floor') !~ '^-?[0-9]{1,16}$'
        UNION ALL
        SELECT format('timezone %s is not an IANA time zone name', p_definition -> 'timezone')
         WHERE p_definition ? 'timezone'
           AND (jsonb_typeof(p_definition -> 'timezone') IS DISTINCT FROM 'string'
                OR NOT EXISTS (SELECT FROM pg_catalog.pg_timezone_names z
                                WHERE z.name = p_definition ->> 'timezone'))
        UNION ALL
        -- Names of the host's settings, not zones: localtime is the server's
        -- /etc/localtime (another host after a restore or a failover moves
        -- every period), Factory a placeholder (a hostile test, 0034).
        SELECT format('timezone %s names the server host''s setting, not a time zone', p_definition -> 'timezone')
         WHERE p_definition ->> 'timezone' IN ('localtime', 'Factory')
    ) p LIMIT 1;
    IF v_problem IS NULL THEN
        SELECT format('level row %s: %s', ord, problem) INTO v_problem FROM (
            SELECT l.ord,
                   CASE
                     WHEN (l.value ->> 'level') !~ '^[0-9]{1,18}$' OR (l.value ->> 'threshold') !~ '^[0-9]{1,18}$'
                          OR (l.value ->> 'increment') !~ '^[0-9]{1,18}$'
                          OR jsonb_typeof(l.value -> 'is_last') IS DISTINCT FROM 'boolean'
                       THEN 'level, threshold, increment must be integers and is_last a boolean'
                     WHEN (l.value ->> 'level')::bigint <> l.ord THEN 'levels must be 1, 2, 3, ... in order'
                     WHEN l.ord = 1 AND (l.value ->> 'threshold')::bigint <> 0 THEN 'level 1 starts at 0 XP'
                     WHEN (l.value ->> 'increment')::bigint <= 0 THEN 'increments are positive'
                     WHEN (l.value ->> 'is_last')::boolean <> (l.ord = l.total) THEN 'only the last row has is_last'
                     WHEN l.ord < l.total AND (l.value ->> 'threshold')::numeric + (l.value ->> 'increment')::numeric
                          <> (l.next_value ->> 'threshold')::numeric
                       THEN 'threshold + increment must equal the next threshold'
                   END AS problem
            FROM (
                SELECT e.value, e.ord, lead(e.value) OVER (ORDER BY e.ord) AS next_value,
                       count(*) OVER () AS total
                FROM jsonb_array_elements(p_definition -> 'levels') WITH ORDINALITY e(value, ord)
            ) l
        ) p WHERE problem IS NOT NULL ORDER BY ord LIMIT 1;
    END IF;
    IF v_problem IS NULL THEN
        SELECT format('rule %s: %s', ord, problem) INTO v_problem FROM (
            SELECT r.ord,
                   CASE
                     WHEN coalesce(r.value ->> 'action', '') !~ '^[A-Za-z][A-Za-z0-9_]{0,63}$'
                       THEN 'action must match [A-Za-z][A-Za-z0-9_]{0,63}'
                     WHEN count(*) OVER (PARTITION BY r.value ->> 'action') > 1
                       THEN format('duplicate action %s', r.value ->> 'action')
                     WHEN upper(r.value ->> 'action') IN ('REVERSAL', 'RULES_ADJUSTMENT')
                       THEN format('action %s is reserved for pyxp''s own rows', r.value ->> 'action')
                     WHEN jsonb_typeof(r.value -> 'event') NOT IN ('null', 'string')
                       OR jsonb_typeof(r.value -> 'condition') NOT IN ('null', 'string')
                       OR jsonb_typeof(r.value -> 'formula') NOT IN ('null', 'string')
                       THEN 'event, condition and formula must be texts or null'
                     WHEN coalesce(r.value ->> 'constant', '') !~ '^-?[0-9]{1,16}([.][0-9]{1,20})?$'
                       THEN 'constant must be a decimal number'
                     WHEN jsonb_typeof(r.value -> 'coefficients') IS DISTINCT FROM 'object'
                       OR EXISTS (SELECT FROM jsonb_each_text(r.value -> 'coefficients') c
                                   WHERE c.key !~ '^[A-Z_][A-Z0-9_]{0,63}$'
                                      OR c.value !~ '^-?[0-9]{1,16}([.][0-9]{1,20})?$')
                       THEN 'coefficients must map INPUT names to decimal numbers'
                     WHEN jsonb_typeof(r.value -> 'campaign_types') NOT IN ('null', 'array')
                       OR EXISTS (SELECT FROM jsonb_array_elements_text(
                                      CASE WHEN jsonb_typeof(r.value -> 'campaign_types') = 'array'
                                           THEN r.value -> 'campaign_types' ELSE '[]' END) t
                                   WHERE t NOT IN ('B2C', 'AGENCY_B2C', 'INDIVIDUAL'))
                       THEN 'campaign_types must be null or a list of B2C, AGENCY_B2C, INDIVIDUAL'
                     WHEN r.value ? 'cap' AND (
                            jsonb_typeof(r.value -> 'cap') IS DISTINCT FROM 'object'
                            OR (SELECT count(*) FROM jsonb_object_keys(r.value -> 'cap')) <> 2
                            OR jsonb_typeof(r.value -> 'cap' -> 'max_xp') IS DISTINCT FROM 'number'
                            OR coalesce(r.value -> 'cap' ->> 'max_xp', '') !~ '^[0-9]{1,16}$'
                            OR NOT (r.value -> 'cap' ->> 'max_xp')::numeric BETWEEN 1 AND 1e15
                            OR coalesce(r.value -> 'cap' ->> 'per', '') NOT IN ('day', 'week', 'month', 'year'))
                       THEN 'cap must be {"max_xp": 1..10^15, "per": "day", "week", "month" or "year"}'
                     WHEN r.value ? 'group' AND (jsonb_typeof(r.value -> 'group') IS DISTINCT FROM 'string'
                                                 OR (r.value ->> 'group') !~ '^[a-z][a-z0-9_-]{0,62}$')
                       THEN 'group must match [a-z][a-z0-9_-]{0,62}'
                     WHEN r.value ? 'group' AND NOT r.value ? 'cap'
                       THEN format('group %s needs a cap: every rule of a group carries the same cap',
                                   r.value ->> 'group')
                     WHEN r.value ? 'group'
                          AND min((r.value -> 'cap')::text) OVER (PARTITION BY r.value ->> 'group')
                              <> max((r.value -> 'cap')::text) OVER (PARTITION BY r.value ->> 'group')
                       THEN format('the rules of group %s carry different caps', r.value ->> 'group')
                   END AS problem
            FROM jsonb_array_elements(p_definition -> 'rules') WITH ORDINALITY r(value, ord)
        ) p WHERE problem IS NOT NULL ORDER BY ord LIMIT 1;
    END IF;
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION 'invalid ruleset definition %: %', coalesce(quote_literal(p_definition ->> 'name'), 'NULL'), v_problem
            USING ERRCODE = 'PX024', HINT = 'compile rulesets from a TOML config seed: pyxp rules apply FILE';
    END IF;
END
$$;

-- Makes ruleset version p_ruleset_id the active one; returns the balances
-- whose level changed. The caller holds SHARE ROW EXCLUSIVE on xp_balances
-- (the lock protocol above). Periods are counted in the active ruleset's
-- zone: another zone moves their bounds, so the balances' period columns are
-- re-derived (one pass over the ledger), and capped allowances whose periods
-- moved count what their current period used (pyxp.seed_cap_usage).
-- Activating the active version changes nothing.
CREATE FUNCTION pyxp.activate_ruleset(p_ruleset_id bigint)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    v_zone text := (SELECT r.timezone FROM pyxp.rulesets r WHERE r.ruleset_id = p_ruleset_id);
    v_previous bigint := (SELECT r.ruleset_id FROM pyxp.rulesets r WHERE r.is_active);
    -- The instant of the switch: after the caller's lock (the transaction may
    -- have waited for it since its start). A capped award writes no row
    -- dated before it (pyxp.append_rows), and the seed counts the periods
    -- containing it.
    v_at timestamptz := clock_timestamp();
BEGIN
    IF (SELECT r.is_active FROM pyxp.rulesets r WHERE r.ruleset_id = p_ruleset_id) THEN
        RETURN 0;
    END IF;
    IF (SELECT r.timezone FROM pyxp.rulesets r WHERE r.is_active) IS DISTINCT FROM v_zone THEN
        -- (the archived rows' periods are kept in the archive's zone only: PX029)
        PERFORM pyxp.require_whole_ledger(format('activating a ruleset in timezone %s', v_zone));
        PERFORM pyxp.rebuild_period_columns(v_zone);
    END IF;
    -- An allowance whose periods move (another zone, another per) starts
    -- its current period from what that period already used.
    IF (SELECT r.has_caps FROM pyxp.rulesets r WHERE r.ruleset_id = p_ruleset_id) THEN
        PERFORM pyxp.seed_cap_usage(p_ruleset_id, v_previous, v_at);
    END IF;
    -- Two statements: the partial unique index allows one active row at a time.
    UPDATE pyxp.rulesets r SET is_active = false WHERE r.is_active;
    UPDATE pyxp.rulesets r SET is_active = true, activated_at = v_at WHERE r.ruleset_id = p_ruleset_id;
    -- The history (0040): which ruleset was in force from when. Its
    -- activation_id is taken under the caller's SHARE ROW EXCLUSIVE lock on
    -- xp_balances (pyxp.hold_awards), which one activation holds at a time:
    -- the ids' order is the activations' (audit() checks the chain by it).
    INSERT INTO pyxp.ruleset_activations (ruleset_id, activated_at, previous_ruleset_id)
    VALUES (p_ruleset_id, v_at, v_previous);
    RETURN pyxp.recalculate_levels();
END
$$;

-- What a compiled definition installs: its settings, its level curve, its
-- rules (in file order). install_ruleset writes them; audit() reads each
-- ruleset's tables against them (ruleset_mismatch, 0029: a hostile test
-- edited a rule's constant, a cap, the curve and the zone in place, and
-- audit() said nothing, the balances made to match).
CREATE FUNCTION pyxp.definition_settings(p_definition jsonb)
RETURNS TABLE (balance_floor bigint, timezone text, has_caps boolean)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT (p_definition ->> 'balance_floor')::bigint, coalesce(p_definition ->> 'timezone', 'UTC'),
           EXISTS (SELECT FROM jsonb_array_elements(p_definition -> 'rules') r WHERE r ? 'cap')
$$;

CREATE FUNCTION pyxp.definition_levels(p_definition jsonb)
RETURNS TABLE (level bigint, threshold bigint, increment bigint, is_last boolean)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT (l ->> 'level')::bigint, (l ->> 'threshold')::bigint, (l ->> 'increment')::bigint,
           (l ->> 'is_last')::boolean
      FROM jsonb_array_elements(p_definition -> 'levels') l
$$;

CREATE FUNCTION pyxp.definition_rules(p_definition jsonb)
RETURNS TABLE (rule_position integer, action text, event text, campaign_types text[], condition text, formula text,
               xp_constant numeric, xp_coefficients jsonb, description text, cap_max_xp bigint, cap_per text,
               cap_group text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT r.ord::integer, r.value ->> 'action', r.value ->> 'event',
           CASE WHEN jsonb_typeof(r.value -> 'campaign_types') = 'array'
                THEN ARRAY(SELECT jsonb_array_elements_text(r.value -> 'campaign_types')) END,
           r.value ->> 'condition', coalesce(r.value ->> 'formula', r.value ->> 'constant'),
           (r.value ->> 'constant')::numeric, r.value -> 'coefficients', r.value ->> 'description',
           (r.value -> 'cap' ->> 'max_xp')::bigint, r.value -> 'cap' ->> 'per', r.value ->> 'group'
      FROM jsonb_array_elements(p_definition -> 'rules') WITH ORDINALITY r(value, ord)
$$;

-- What of a ruleset's tables is not what its definition installs (no rows:
-- all of it is). The rules' display texts (formula, description) are not
-- compared.
CREATE FUNCTION pyxp.ruleset_table_problems(p_ruleset pyxp.rulesets)
RETURNS SETOF text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT format('balance_floor %s, timezone %s, has_caps %s; its definition: %s, %s, %s',
                  p_ruleset.balance_floor, p_ruleset.timezone, p_ruleset.has_caps, d.balance_floor, d.timezone,
                  d.has_caps)
      FROM pyxp.definition_settings(p_ruleset.definition) d
     WHERE (p_ruleset.balance_floor, p_ruleset.timezone, p_ruleset.has_caps)
           IS DISTINCT FROM (d.balance_floor, d.timezone, d.has_caps)
    UNION ALL
    SELECT format('level %s is not its definition''s (threshold %s, increment %s)', l.level, l.threshold, l.increment)
      FROM (SELECT lt.level, lt.threshold, lt.increment, lt.is_last FROM pyxp.level_thresholds lt
             WHERE lt.ruleset_id = p_ruleset.ruleset_id
            EXCEPT SELECT * FROM pyxp.definition_levels(p_ruleset.definition)) l
    UNION ALL
    SELECT format('level %s of its definition is missing or differs', l.level)
      FROM (SELECT * FROM pyxp.definition_levels(p_ruleset.definition)
            EXCEPT SELECT lt.level, lt.threshold, lt.increment, lt.is_last FROM pyxp.level_thresholds lt
             WHERE lt.ruleset_id = p_ruleset.ruleset_id) l
    UNION ALL
    SELECT format('rule %s is not its definition''s (constant %s, coefficients %s, cap %s per %s)', r.action,
                  r.xp_constant, r.xp_coefficients, r.cap_max_xp, r.cap_per)
      FROM (SELECT ru.position, ru.action, ru.event, ru.campaign_types, ru.condition, ru.xp_constant,
                   ru.xp_coefficients, ru.cap_max_xp, ru.cap_per, ru.cap_group
              FROM pyxp.rules ru WHERE ru.ruleset_id = p_ruleset.ruleset_id
            EXCEPT
            SELECT d.rule_position, d.action, d.event, d.campaign_types, d.condition, d.xp_constant,
                   d.xp_coefficients, d.cap_max_xp, d.cap_per, d.cap_group
              FROM pyxp.definition_rules(p_ruleset.definition) d) r
    UNION ALL
    SELECT format('rule %s of its definition is missing or differs', d.action)
      FROM (SELECT d.rule_position, d.action, d.event, d.campaign_types, d.condition, d.xp_constant,
                   d.xp_coefficients, d.cap_max_xp, d.cap_per, d.cap_group
              FROM pyxp.definition_rules(p_ruleset.definition) d
            EXCEPT
            SELECT ru.position, ru.action, ru.event, ru.campaign_types, ru.condition, ru.xp_constant,
                   ru.xp_coefficients, ru.cap_max_xp, ru.cap_per, ru.cap_group
              FROM pyxp.rules ru WHERE ru.ruleset_id = p_ruleset.ruleset_id) d
$$;

-- A digest of what a ruleset's tables say (its settings, levels and rules,
-- as ruleset_table_problems compares them): for the rulesets whose tables
-- an older install_ruleset wrote otherwise (pyxp.xp_rulesets_as_installed).
CREATE FUNCTION pyxp.ruleset_tables_digest(p_ruleset_id bigint)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT encode(sha256(convert_to(concat_ws(' | ',
               (SELECT ROW(r.balance_floor, r.timezone, r.has_caps)::text FROM pyxp.rulesets r
                 WHERE r.ruleset_id = p_ruleset_id),
               (SELECT string_agg(ROW(l.level, l.threshold, l.increment, l.is_last)::text, ', ' ORDER BY l.level)
                  FROM pyxp.level_thresholds l WHERE l.ruleset_id = p_ruleset_id),
               (SELECT string_agg(ROW(ru.position, ru.action, ru.event, ru.campaign_types, ru.condition, ru.xp_constant,
                                      ru.xp_coefficients, ru.cap_max_xp, ru.cap_per, ru.cap_group)::text, ', '
                                  ORDER BY ru.position)
                  FROM pyxp.rules ru WHERE ru.ruleset_id = p_ruleset_id)), 'UTF8')), 'hex')
$$;

-- Installs a compiled ruleset (from pyxp.ruleset_config) and, unless
-- activate is false, makes it active. Same content as the active version:
-- nothing changes. Same content as an older version of that name: that
-- version is (re-)activated. Otherwise a new version (max + 1) is created.
-- Activation re-derives every balance's level. Old versions stay: ledger
-- rows keep their rule ids. activate => false installs a version to
-- simulate (pyxp.simulate_rules) or to apply later.
CREATE FUNCTION pyxp.install_ruleset(definition jsonb, source text, activate boolean DEFAULT true)
RETURNS TABLE (ruleset_id bigint, name text, version integer, created boolean, activated boolean,
               balances_changed bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET lock_timeout = '10s'  -- see recalculate_levels: never queue every award behind an open transaction
AS $$
DECLARE
    v_name text := install_ruleset.definition ->> 'name';
    v_hash text := encode(sha256(convert_to(install_ruleset.definition::text, 'UTF8')), 'hex');
    v_found pyxp.rulesets;
    v_id bigint;
    v_created boolean := false;
BEGIN
    PERFORM pyxp.check_ruleset_definition(install_ruleset.definition);
    IF install_ruleset.source IS NULL THEN
        RAISE EXCEPTION 'invalid ruleset definition %: source is NULL', quote_literal(v_name)
            USING ERRCODE = 'PX024', HINT = 'pass the TOML text the definition was compiled from';
    END IF;
    PERFORM pyxp.require_read_committed();
    PERFORM pyxp.follow_timeline();  -- (a failover or a point-in-time recovery: the ids move past the history left, 0033)
    PERFORM pyxp.require_ledger_cluster();  -- (PX032: ids of the rulesets' sequence may be taken, 0032)
    -- Installers queue on the rulesets table (version numbers); awards only
    -- read it, so an install that does not activate holds no award. The
    -- awards' lock is taken only to activate (pyxp.activate_ruleset).
    LOCK TABLE pyxp.rulesets IN SHARE ROW EXCLUSIVE MODE;
    IF install_ruleset.activate THEN
        PERFORM pyxp.hold_awards('pyxp.install_ruleset');
    END IF;

    SELECT * INTO v_found FROM pyxp.rulesets r WHERE r.name = v_name AND r.content_hash = v_hash;
    IF v_found.is_active OR (v_found.ruleset_id IS NOT NULL AND NOT install_ruleset.activate) THEN
        RETURN QUERY SELECT v_found.ruleset_id, v_found.name, v_found.version, false, false, 0::bigint;
        RETURN;
    END IF;

    IF v_found.ruleset_id IS NOT NULL THEN
        v_id := v_found.ruleset_id;
    ELSE
        INSERT INTO pyxp.rulesets (name, version, content_hash, definition, source, description, balance_floor,
                                   timezone, has_caps)
        SELECT v_name,
               coalesce((SELECT max(r.version) FROM pyxp.rulesets r WHERE r.name = v_name), 0) + 1,
               v_hash, install_ruleset.definition, install_ruleset.source,
               install_ruleset.definition ->> 'description', d.balance_floor, d.timezone, d.has_caps
          FROM pyxp.definition_settings(install_ruleset.definition) d
        RETURNING rulesets.ruleset_id INTO v_id;

        INSERT INTO pyxp.level_thresholds (ruleset_id, level, threshold, increment, is_last)
        SELECT v_id, l.* FROM pyxp.definition_levels(install_ruleset.definition) l;

        INSERT INTO pyxp.rules (ruleset_id, position, action, event, campaign_types, condition,
                                formula, xp_constant, xp_coefficients, description, cap_max_xp, cap_per, cap_group)
        SELECT v_id, r.* FROM pyxp.definition_rules(install_ruleset.definition) r;
        v_created := true;
    END IF;

    IF NOT install_ruleset.activate THEN
        RETURN QUERY SELECT r.ruleset_id, r.name, r.version, v_created, false, 0::bigint
                       FROM pyxp.rulesets r WHERE r.ruleset_id = v_id;
        RETURN;
    END IF;
    RETURN QUERY
        SELECT r.ruleset_id, r.name, r.version, v_created, true, pyxp.activate_ruleset(v_id)
        FROM pyxp.rulesets r WHERE r.ruleset_id = v_id;
END
$$;
