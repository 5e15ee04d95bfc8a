-- 0007 down: back to 0006. Refused while the ledger holds RULES_ADJUSTMENT
-- rows: 0006 cannot tell their ruleset (its change feed would skip them),
-- and the ledger is append-only.
SET LOCAL ROLE pyxp_owner;

DO $guard$
BEGIN
    IF EXISTS (SELECT FROM pyxp.xp_transactions t
                WHERE t.transaction_type = 'RULES_ADJUSTMENT' AND t.rule_id IS NULL AND t.reverses IS NULL) THEN
        RAISE EXCEPTION 'cannot downgrade below 0007: the ledger holds retroactive RULES_ADJUSTMENT rows'
            USING ERRCODE = 'PX024', HINT = 'they are part of the ledger for good; stay at 0007 or later';
    END IF;
END
$guard$;

DROP AGGREGATE pyxp.simulated_balance(bigint, text, numeric, bigint, boolean, bigint, text, bigint);
DROP FUNCTION pyxp.activate_ruleset(bigint);
DROP FUNCTION pyxp.install_ruleset(jsonb, text, boolean);
DROP FUNCTION pyxp.kept_period_xp(timestamptz, bigint, timestamptz, bigint);
DROP FUNCTION pyxp.simulation_step(pyxp.simulation_state, bigint, text, numeric, bigint, boolean, bigint, text, bigint);
DROP FUNCTION pyxp.checked_ruleset(bigint);
DROP FUNCTION pyxp.simulated_amount(bigint, text, numeric, jsonb, jsonb);
DROP FUNCTION pyxp.simulated_rows(bigint);
DROP FUNCTION pyxp.simulated_totals(bigint);
DROP FUNCTION pyxp.simulate_rules(bigint);
DROP FUNCTION pyxp.checked_simulated_total(text, numeric);
DROP FUNCTION pyxp.simulation_report(bigint, integer);
DROP FUNCTION pyxp.apply_rules_retroactively(bigint);


-- The caller's key of a generic award (pyxp.award, pyxp.award_many): an
-- identifier of at most 256 characters outside the namespaces of the keys
-- the flow functions derive (campaign.created:..., reverse:..., ...), so a
-- manual award can never pose as, or block, a flow's award (PX016).
CREATE OR REPLACE FUNCTION pyxp.checked_award_key(p_key text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v text := pyxp.checked_identifier('idempotency key', p_key, 256);
BEGIN
    IF v ~ '^(campaign\.(created|approved|vote)|completion\.(submitted|outcome|vote)|client\.onboarded|reverse)(/[0-9]+)?:' THEN
        RAISE EXCEPTION 'invalid idempotency key %: reserved for pyxp''s own flows', quote_literal(v)
            USING ERRCODE = 'PX016',
                  HINT = 'keys starting with campaign.*:, completion.*:, client.onboarded: or reverse: are pyxp''s';
    END IF;
    RETURN v;
END
$$;

-- Refuses a malformed compiled definition (PX024). The Python compiler
-- already produces well-formed ones; this guards direct SQL callers.
CREATE OR REPLACE FUNCTION pyxp.check_ruleset_definition(p_definition jsonb)
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
                     WHEN jsonb_typeof(r.value -> 'event') NOT IN ('null', 'string')
                       OR jsonb_typeof(r.value -> 'condition') NOT IN ('null', 'string')
                       OR jsonb_typeof(r.value -> 'formula') NOT IN ('null', 'string')
                       THEN 'event, condition and formula must be texts or null'
                     WHEN coalesce(r.value ->> 'constant', '') !~ '^-?[0-9]{1,16}(\.[0-9]{1,20})?$'
                       THEN 'constant must be a decimal number'
                     WHEN jsonb_typeof(r.value -> 'coefficients') IS DISTINCT FROM 'object'
                       OR EXISTS (SELECT FROM jsonb_each_text(r.value -> 'coefficients') c
                                   WHERE c.key !~ '^[A-Z_][A-Z0-9_]{0,63}$'
                                      OR c.value !~ '^-?[0-9]{1,16}(\.[0-9]{1,20})?$')
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

-- Installs a compiled ruleset (from pyxp.ruleset_config) and makes it active.
-- Same content as the active version: nothing changes. Same content as an
-- older version of that name: that version is re-activated. Otherwise a new
-- version (max + 1) is created. Activation re-derives every balance's level.
-- Old versions stay: ledger rows keep their rule ids.
CREATE FUNCTION pyxp.install_ruleset(definition jsonb, source text)
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
    LOCK TABLE pyxp.xp_balances IN SHARE ROW EXCLUSIVE MODE;

    SELECT * INTO v_found FROM pyxp.rulesets r WHERE r.name = v_name AND r.content_hash = v_hash;
    IF v_found.is_active THEN
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
               install_ruleset.definition ->> 'description',
               (install_ruleset.definition ->> 'balance_floor')::bigint,
               coalesce(install_ruleset.definition ->> 'timezone', 'UTC'),
               EXISTS (SELECT FROM jsonb_array_elements(install_ruleset.definition -> 'rules') r WHERE r ? 'cap')
        RETURNING rulesets.ruleset_id INTO v_id;

        INSERT INTO pyxp.level_thresholds (ruleset_id, level, threshold, increment, is_last)
        SELECT v_id, (l ->> 'level')::bigint, (l ->> 'threshold')::bigint,
               (l ->> 'increment')::bigint, (l ->> 'is_last')::boolean
        FROM jsonb_array_elements(install_ruleset.definition -> 'levels') l;

        INSERT INTO pyxp.rules (ruleset_id, position, action, event, campaign_types, condition,
                                formula, xp_constant, xp_coefficients, description, cap_max_xp, cap_per, cap_group)
        SELECT v_id, r.ord, r.value ->> 'action', r.value ->> 'event',
               CASE WHEN jsonb_typeof(r.value -> 'campaign_types') = 'array'
                    THEN ARRAY(SELECT jsonb_array_elements_text(r.value -> 'campaign_types')) END,
               r.value ->> 'condition', coalesce(r.value ->> 'formula', r.value ->> 'constant'),
               (r.value ->> 'constant')::numeric, r.value -> 'coefficients', r.value ->> 'description',
               (r.value -> 'cap' ->> 'max_xp')::bigint, r.value -> 'cap' ->> 'per', r.value ->> 'group'
        FROM jsonb_array_elements(install_ruleset.definition -> 'rules') WITH ORDINALITY r(value, ord);
        v_created := true;
    END IF;

    -- Periods are counted in the active ruleset's zone: another zone moves
    -- their bounds, so the balances' period columns are re-derived (one pass
    -- over the ledger, under the lock above).
    IF (SELECT r.timezone FROM pyxp.rulesets r WHERE r.is_active)
       IS DISTINCT FROM (SELECT r.timezone FROM pyxp.rulesets r WHERE r.ruleset_id = v_id) THEN
        PERFORM pyxp.rebuild_period_columns((SELECT r.timezone FROM pyxp.rulesets r WHERE r.ruleset_id = v_id));
    END IF;
    -- Two statements: the partial unique index allows one active row at a time.
    UPDATE pyxp.rulesets r SET is_active = false WHERE r.is_active;
    UPDATE pyxp.rulesets r SET is_active = true, activated_at = now() WHERE r.ruleset_id = v_id;

    RETURN QUERY
        SELECT r.ruleset_id, r.name, r.version, v_created, true, pyxp.recalculate_levels()
        FROM pyxp.rulesets r WHERE r.ruleset_id = v_id;
END
$$;

-- The ruleset a ledger row was written under (its levels in replays and the
-- change feed): its rule's; a reversal's is its request's (xp_requests).
-- PL/pgSQL: a SQL function with a sub-select is not inlined, and would be
-- planned anew at every call.
CREATE OR REPLACE FUNCTION pyxp.row_ruleset(p_rule_id bigint, p_key text)
RETURNS bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
DECLARE
    v_id bigint;
BEGIN
    SELECT ru.ruleset_id INTO v_id FROM pyxp.rules ru WHERE ru.rule_id = p_rule_id;
    IF v_id IS NULL THEN
        SELECT q.ruleset_id INTO v_id FROM pyxp.xp_requests q WHERE q.idempotency_key = p_key;
    END IF;
    RETURN v_id;
END
$$;

-- THE writer (see the top of this file). p_rows: the rows of one call (all
-- one wallet; p_batch false) or of a batch's events (p_batch true: error
-- messages name the event), in the order their ids must follow. Returns one
-- row per pending row with a transaction_type, new or replayed, in that order.
-- p_ruleset, p_floor, p_timezone, p_caps: the writing ruleset
-- (pyxp.writing_ruleset): its curve, balance floor, period zone, and whether
-- any of its rules is capped (sql/07_periods.sql).
--
-- Five small statements, each set-based over the rows (one row for a single
-- award): lock the wallets; find the claims and compute the running
-- balances; insert; update each balance once; return. Per-row results
-- travel in arrays zipped with ROWS FROM, and every lookup is an index probe
-- (LATERAL ... LIMIT 1): nothing is joined back by value, so a batch of
-- 10,000 rows costs 10,000 times a row, not 10,000 squared (one statement
-- with CTEs joined by value did: a batch of 1,000 ran 5 times slower).
CREATE OR REPLACE FUNCTION pyxp.append_rows(p_ruleset bigint, p_floor bigint, p_timezone text, p_caps boolean,
                                 p_rows pyxp.pending_row[], p_batch boolean)
RETURNS SETOF pyxp.batch_award_result
LANGUAGE plpgsql
AS $$
DECLARE
    v_rows pyxp.pending_row[] := p_rows;
    v_wallet text := p_rows[1].user_wallet;
    v_claims bigint[];       -- per row: the ledger row that claimed its key before (a replay)
    v_after numeric[];       -- per row: the wallet's balance after it (range-checked before any cast)
    v_feed xid8[];           -- per row: its feed group
    v_ids bigint[];          -- per row: the id it got (NULL: replayed, or no row)
    v_conflict_ord integer;  -- the first row whose key a call with other inputs claimed
    v_range_ord integer;     -- a row whose balance would leave [-2^62, 2^62]
    v_expected integer;      -- rows to insert
    v_inserted integer;
    v_problem record;
BEGIN
    IF coalesce(cardinality(v_rows), 0) = 0 THEN
        RETURN;
    END IF;
    -- 1. The wallets' row locks. One wallet: FOR UPDATE (a new wallet's row
    --    is inserted first; a concurrent insert of the same wallet makes ON
    --    CONFLICT wait, then we lock its row). A batch: each row created if
    --    missing or locked if present, one statement, strictly in wallet
    --    order (creating the missing rows first and locking the others after
    --    let a batch hold a new wallet's row while waiting for an older one
    --    that a caller awarding in wallet order held: a deadlock, 40P01); its
    --    no-op update changes no indexed column (HOT).
    IF NOT p_batch THEN
        PERFORM FROM pyxp.xp_balances b WHERE b.user_wallet = v_wallet FOR UPDATE;
        IF NOT FOUND THEN
            INSERT INTO pyxp.xp_balances (user_wallet, total_xp, current_level, xp_to_next_level)
            SELECT v_wallet, 0, c.level, c.next_level_xp::bigint FROM pyxp.curve_position(p_ruleset, 0) c
            ON CONFLICT (user_wallet) DO NOTHING;
            PERFORM FROM pyxp.xp_balances b WHERE b.user_wallet = v_wallet FOR UPDATE;
        END IF;
    ELSE
        INSERT INTO pyxp.xp_balances AS x (user_wallet, total_xp, current_level, xp_to_next_level)
        SELECT w.user_wallet, 0, c.level, c.next_level_xp::bigint
          FROM (SELECT DISTINCT r.user_wallet FROM unnest(v_rows) r) w
         CROSS JOIN pyxp.curve_position(p_ruleset, 0) c
         ORDER BY w.user_wallet
        ON CONFLICT (user_wallet) DO UPDATE SET updated_at = x.updated_at;
    END IF;
    -- A balance floor cuts penalties by the running balance (slow path:
    -- floors are rare): xp_amount becomes what applies, xp_requested keeps
    -- what the rule asked.
    IF p_floor IS NOT NULL AND EXISTS (SELECT FROM unnest(v_rows) r WHERE r.apply_floor AND r.xp_amount < 0) THEN
        v_rows := pyxp.floored_rows(p_ruleset, v_rows, p_floor);
    END IF;
    -- Caps cut gains by what is left of their allowance (slow path too: only
    -- when the ruleset has a capped rule). Gains only, so it commutes with
    -- the floor, which cuts penalties only.
    IF p_caps THEN
        v_rows := pyxp.capped_rows(v_rows, p_timezone);
    END IF;

    -- 2. Under the locks (a new statement: READ COMMITTED sees what the
    --    previous holder committed): each generic award's claim made before
    --    (a replay, or PX010 for other inputs), then the running balances,
    --    per wallet in row order, and the feed group (sql/11_changes.sql:
    --    this transaction's id, or the wallet's last group if higher).
    SELECT array_agg(x.claim_id ORDER BY x.ord), array_agg(x.after ORDER BY x.ord),
           array_agg(x.feed ORDER BY x.ord),
           (array_agg(x.ord ORDER BY x.ord) FILTER (WHERE x.conflict))[1],
           (array_agg(x.ord ORDER BY x.ord) FILTER (WHERE abs(x.after) > pyxp.balance_limit()))[1],
           count(*) FILTER (WHERE x.claim_id IS NULL AND x.transaction_type IS NOT NULL)
      INTO v_claims, v_after, v_feed, v_conflict_ord, v_range_ord, v_expected
      FROM (SELECT r.ord, r.transaction_type, k.id AS claim_id,
                   k.id IS NOT NULL AND (k.request_digest <> pyxp.inputs_digest(r.inputs)
                                         OR k.idempotency_key <> r.idempotency_key) AS conflict,
                   b.total_xp + sum(r.xp_amount) FILTER (WHERE k.id IS NULL)
                                    OVER (PARTITION BY r.user_wallet ORDER BY r.ord) AS after,
                   greatest(pg_current_xact_id(), b.last_feed_xid) AS feed
              FROM unnest(v_rows) WITH ORDINALITY r(call_index, user_wallet, idempotency_key, inputs,
                                                    transaction_type, xp_amount, xp_requested, apply_floor,
                                                    rule_id, campaign_id, subject, metadata, reverses,
                                                    moderations, ord)
             CROSS JOIN LATERAL (SELECT b.total_xp, b.last_feed_xid FROM pyxp.xp_balances b
                                  WHERE b.user_wallet = r.user_wallet LIMIT 1) b
              LEFT JOIN LATERAL (SELECT k.id, k.request_digest, k.idempotency_key FROM pyxp.xp_transactions k
                                  WHERE r.inputs IS NOT NULL AND k.request_digest IS NOT NULL
                                    AND pyxp.key_hash(k.idempotency_key) = pyxp.key_hash(r.idempotency_key)
                                  LIMIT 1) k ON true) x;
    IF v_conflict_ord IS NOT NULL THEN
        SELECT k.* INTO v_problem FROM pyxp.xp_transactions k WHERE k.id = v_claims[v_conflict_ord];
        PERFORM pyxp.raise_key_conflict(p_batch, v_rows[v_conflict_ord].call_index,
                                        v_rows[v_conflict_ord].idempotency_key,
                                        v_rows[v_conflict_ord].inputs, v_problem.user_wallet,
                                        v_problem.transaction_type, v_problem.xp_amount, v_problem.metadata);
    ELSIF v_range_ord IS NOT NULL THEN
        RAISE EXCEPTION '%balance of % would be %, out of range',
                        CASE WHEN p_batch THEN format('event %s: ', v_rows[v_range_ord].call_index) ELSE '' END,
                        v_rows[v_range_ord].user_wallet, v_after[v_range_ord]
            USING ERRCODE = 'PX019', HINT = 'a balance stays between -2^62 and 2^62';
    END IF;

    -- 3. The new rows, in row order (ids follow each wallet's chain). A
    --    generic award's row claims its key; it is skipped if a call that
    --    committed while this one waited for the lock holds the key (below).
    WITH inserted AS (
        INSERT INTO pyxp.xp_transactions (user_wallet, transaction_type, xp_amount, xp_requested,
                                          balance_after, rule_id, campaign_id, subject, idempotency_key,
                                          metadata, reverses, feed_xid, request_digest)
        SELECT r.user_wallet, r.transaction_type, r.xp_amount::bigint, r.xp_requested::bigint, r.after::bigint,
               r.rule_id, r.campaign_id, r.subject, r.idempotency_key, coalesce(r.metadata, '{}'), r.reverses,
               r.feed, pyxp.inputs_digest(r.inputs)
          FROM ROWS FROM (unnest(v_rows), unnest(v_claims), unnest(v_after), unnest(v_feed)) WITH ORDINALITY
               r(call_index, user_wallet, idempotency_key, inputs, transaction_type, xp_amount, xp_requested,
                 apply_floor, rule_id, campaign_id, subject, metadata, reverses, moderations, claim, after,
                 feed, ord)
         WHERE r.claim IS NULL AND r.transaction_type IS NOT NULL
         ORDER BY r.ord
        ON CONFLICT (pyxp.key_hash(idempotency_key)) WHERE request_digest IS NOT NULL DO NOTHING
        RETURNING id
    )
    SELECT array_agg(i.id ORDER BY i.id) INTO v_ids FROM inserted i;
    v_inserted := coalesce(cardinality(v_ids), 0);
    IF v_inserted < v_expected THEN
        -- A key was claimed by a call on another wallet (other inputs: PX010)
        -- that committed while this INSERT waited for it. With the same
        -- inputs (same wallet, same lock) the probe of step 2, a statement
        -- run after the locks were granted, saw it: kept as a guard.
        SELECT r.call_index, r.idempotency_key, r.inputs, k.user_wallet, k.transaction_type, k.xp_amount,
               k.metadata, k.request_digest = pyxp.inputs_digest(r.inputs) AND k.idempotency_key = r.idempotency_key
                   AS same
          INTO v_problem
          FROM unnest(v_rows) WITH ORDINALITY r
         CROSS JOIN LATERAL (SELECT k.* FROM pyxp.xp_transactions k
                              WHERE r.inputs IS NOT NULL AND k.request_digest IS NOT NULL
                                AND pyxp.key_hash(k.idempotency_key) = pyxp.key_hash(r.idempotency_key)
                              LIMIT 1) k
         WHERE v_claims[r.ordinality] IS NULL              -- not a replay: a row this call meant to write
           AND NOT (k.id = ANY (coalesce(v_ids, '{}')))
         ORDER BY k.request_digest = pyxp.inputs_digest(r.inputs) AND k.idempotency_key = r.idempotency_key,
                  r.ordinality                              -- a conflict first
         LIMIT 1;
        IF v_problem.same AND NOT p_batch AND cardinality(v_rows) = 1 THEN
            RETURN QUERY SELECT * FROM pyxp.append_rows(p_ruleset, p_floor, p_timezone, p_caps, p_rows, p_batch);  -- now a replay
            RETURN;
        ELSIF v_problem.same THEN
            RAISE EXCEPTION 'an award of this batch was made concurrently by another transaction'
                USING ERRCODE = '40001', HINT = 'retry the batch: the awards already made replay';
        END IF;
        PERFORM pyxp.raise_key_conflict(p_batch, v_problem.call_index, v_problem.idempotency_key, v_problem.inputs,
                                        v_problem.user_wallet, v_problem.transaction_type, v_problem.xp_amount,
                                        v_problem.metadata);
    END IF;
    -- Ids back to their rows (the inserted ones are the rows without a
    -- claim and with a transaction_type, in order).
    IF v_inserted > 0 AND (v_inserted < cardinality(v_rows)) THEN
        v_ids := ARRAY(SELECT CASE WHEN r.claim IS NULL AND r.transaction_type IS NOT NULL
                                   THEN v_ids[count(*) FILTER (WHERE r.claim IS NULL AND r.transaction_type IS NOT NULL)
                                                  OVER (ORDER BY r.ord)] END
                         FROM ROWS FROM (unnest(v_rows), unnest(v_claims)) WITH ORDINALITY
                              r(call_index, user_wallet, idempotency_key, inputs, transaction_type, xp_amount,
                                xp_requested, apply_floor, rule_id, campaign_id, subject, metadata, reverses,
                                moderations, claim, ord)
                        ORDER BY r.ord);
    END IF;

    -- 4. Each balance once: its last new row's balance, its level on the
    --    active curve, the votes it counts, and its latest periods
    --    (xp_balances.<kind>_start/_xp, sql/07_periods.sql): the new rows'
    --    period of each kind is the wallet's latest (reset), the same
    --    (added) or an earlier one (a transaction that began before the
    --    period turned: left to the ledger). A call's new rows of one wallet
    --    share one effective time: now(), or for a reversal (always alone in
    --    its call) the created_at of the row it reverses.
    UPDATE pyxp.xp_balances x
       SET total_xp = coalesce(f.after::bigint, x.total_xp), current_level = c.level,
           xp_to_next_level = (c.next_level_xp - coalesce(f.after::bigint, x.total_xp))::bigint,
           total_moderations = x.total_moderations + f.moderations, updated_at = now(),
           last_feed_xid = coalesce(f.feed, x.last_feed_xid),
           day_start = greatest(x.day_start, p.d),
           day_xp = CASE WHEN p.d IS NULL THEN x.day_xp
                         WHEN p.d > x.day_start OR x.day_start IS NULL THEN f.gained
                         WHEN p.d = x.day_start THEN x.day_xp + f.gained ELSE x.day_xp END,
           week_start = greatest(x.week_start, p.w),
           week_xp = CASE WHEN p.w IS NULL THEN x.week_xp
                         WHEN p.w > x.week_start OR x.week_start IS NULL THEN f.gained
                          WHEN p.w = x.week_start THEN x.week_xp + f.gained ELSE x.week_xp END,
           month_start = greatest(x.month_start, p.m),
           month_xp = CASE WHEN p.m IS NULL THEN x.month_xp
                         WHEN p.m > x.month_start OR x.month_start IS NULL THEN f.gained
                           WHEN p.m = x.month_start THEN x.month_xp + f.gained ELSE x.month_xp END,
           year_start = greatest(x.year_start, p.y),
           year_xp = CASE WHEN p.y IS NULL THEN x.year_xp
                         WHEN p.y > x.year_start OR x.year_start IS NULL THEN f.gained
                          WHEN p.y = x.year_start THEN x.year_xp + f.gained ELSE x.year_xp END
      FROM (SELECT r.user_wallet,
                   (array_agg(r.after ORDER BY r.ord DESC) FILTER (WHERE r.id IS NOT NULL))[1] AS after,
                   max(r.feed) FILTER (WHERE r.id IS NOT NULL) AS feed,
                   sum(r.moderations) FILTER (WHERE r.claim IS NULL)::bigint AS moderations,
                   sum(r.xp_amount) FILTER (WHERE r.id IS NOT NULL)::bigint AS gained,
                   max(r.reverses) FILTER (WHERE r.id IS NOT NULL) AS reverses,
                   (array_agg(b.total_xp))[1] AS total_xp
              FROM ROWS FROM (unnest(v_rows), unnest(v_claims), unnest(v_after), unnest(v_feed), unnest(v_ids))
                   WITH ORDINALITY r(call_index, user_wallet, idempotency_key, inputs, transaction_type, xp_amount,
                                     xp_requested, apply_floor, rule_id, campaign_id, subject, metadata, reverses,
                                     moderations, claim, after, feed, id, ord)
             CROSS JOIN LATERAL (SELECT b.total_xp FROM pyxp.xp_balances b WHERE b.user_wallet = r.user_wallet LIMIT 1) b
             GROUP BY r.user_wallet) f
     CROSS JOIN LATERAL pyxp.curve_position(p_ruleset, coalesce(f.after::bigint, f.total_xp)) c
     CROSS JOIN LATERAL (SELECT CASE WHEN f.after IS NULL THEN NULL  -- votes counted, no row: no period
                                     WHEN f.reverses IS NULL THEN now()
                                     ELSE (SELECT o.created_at FROM pyxp.xp_transactions o
                                            WHERE o.id = f.reverses LIMIT 1) END AS at) e
     CROSS JOIN LATERAL (SELECT date_trunc('day', e.at, p_timezone) AS d, date_trunc('week', e.at, p_timezone) AS w,
                                date_trunc('month', e.at, p_timezone) AS m,
                                date_trunc('year', e.at, p_timezone) AS y) p
     WHERE x.user_wallet = f.user_wallet AND (f.after IS NOT NULL OR f.moderations <> 0);

    -- 4b. What capped gains used of their allowance (under the same locks),
    --     and what reversals of capped gains freed (pyxp.freed_allowance).
    IF p_caps THEN
        INSERT INTO pyxp.xp_cap_usage AS u (user_wallet, allowance, period_start, used_xp)
        SELECT r.user_wallet, pyxp.cap_allowance(ru.cap_group, ru.action), date_trunc(ru.cap_per, now(), p_timezone),
               sum(r.xp_amount)::bigint
          FROM ROWS FROM (unnest(v_rows), unnest(v_ids))
               r(call_index, user_wallet, idempotency_key, inputs, transaction_type, xp_amount, xp_requested,
                 apply_floor, rule_id, campaign_id, subject, metadata, reverses, moderations, id)
          JOIN pyxp.rules ru ON ru.rule_id = r.rule_id AND ru.cap_max_xp IS NOT NULL
         WHERE r.id IS NOT NULL AND r.reverses IS NULL AND r.xp_amount > 0
         GROUP BY 1, 2, 3
        ON CONFLICT (user_wallet, allowance, period_start) DO UPDATE SET used_xp = u.used_xp + excluded.used_xp;
    END IF;
    IF v_rows[1].reverses IS NOT NULL THEN  -- a reversal: alone in its call
        UPDATE pyxp.xp_cap_usage u SET used_xp = u.used_xp - f.freed_xp
          FROM pyxp.freed_allowance(v_rows[1].reverses) f
         WHERE u.user_wallet = v_rows[1].user_wallet AND u.allowance = f.allowance
           AND u.period_start = f.period_start AND v_ids[1] IS NOT NULL;
    END IF;

    -- 5. One row per row with a transaction_type: new ones with their levels
    --    on the active curve, replayed ones as they were written.
    RETURN QUERY
        SELECT r.call_index, coalesce(r.id, t.id), r.user_wallet, r.transaction_type,
               coalesce(t.xp_amount, r.xp_amount::bigint), CASE WHEN t.id IS NULL THEN r.xp_requested::bigint ELSE t.xp_requested END,
               coalesce(t.balance_after, r.after::bigint), now_.level,
               (now_.next_level_xp - coalesce(t.balance_after, r.after))::bigint, before_.level, t.id IS NOT NULL
          FROM ROWS FROM (unnest(v_rows), unnest(v_claims), unnest(v_after), unnest(v_ids)) WITH ORDINALITY
               r(call_index, user_wallet, idempotency_key, inputs, transaction_type, xp_amount, xp_requested,
                 apply_floor, rule_id, campaign_id, subject, metadata, reverses, moderations, claim, after, id, ord)
          LEFT JOIN LATERAL (SELECT t.* FROM pyxp.xp_transactions t WHERE t.id = r.claim LIMIT 1) t ON true
         CROSS JOIN LATERAL (SELECT CASE WHEN t.id IS NULL THEN p_ruleset
                                         ELSE pyxp.row_ruleset(t.rule_id, t.idempotency_key) END AS ruleset_id) s
         CROSS JOIN LATERAL pyxp.curve_position(s.ruleset_id, coalesce(t.balance_after, r.after::bigint)) now_
         CROSS JOIN LATERAL pyxp.curve_position(s.ruleset_id, coalesce(t.balance_after - t.xp_amount,
                                                                      (r.after - r.xp_amount)::bigint)) before_
         WHERE r.transaction_type IS NOT NULL
         ORDER BY r.ord;
END
$$;

-- Public: appends a compensating row (transaction_type REVERSAL, the opposite
-- of the applied amount, reverses = transaction_id) to the same wallet.
-- A row is reversed once: repeating the call with the same reason replays,
-- another reason is refused (PX014), as is reversing a reversal. The balance
-- floor does not apply: a reversal compensates exactly.
CREATE OR REPLACE FUNCTION pyxp.reverse_transaction(transaction_id bigint, reason text)
RETURNS SETOF pyxp.award_result
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_reason text := pyxp.checked_identifier('reason', reverse_transaction.reason, 500);
    v_original pyxp.xp_transactions;
    v_key text;
    v_inputs jsonb;
    v_ruleset record;
BEGIN
    SELECT * INTO v_ruleset FROM pyxp.writing_ruleset();
    SELECT * INTO v_original FROM pyxp.xp_transactions t WHERE t.id = reverse_transaction.transaction_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown transaction %', coalesce(reverse_transaction.transaction_id::text, 'NULL')
            USING ERRCODE = 'PX015', HINT = 'pass the id of an xp_transactions row';
    ELSIF v_original.reverses IS NOT NULL THEN
        RAISE EXCEPTION 'transaction % reverses transaction % and cannot itself be reversed',
                        v_original.id, v_original.reverses
            USING ERRCODE = 'PX014', HINT = 'award the amount again instead';
    END IF;
    v_key := 'reverse:' || v_original.id;
    v_inputs := jsonb_build_object('transaction_id', v_original.id, 'reason', v_reason);
    IF NOT pyxp.claim_request(v_key, v_inputs, v_ruleset.ruleset_id) THEN
        RETURN QUERY SELECT * FROM pyxp.replayed_award(
            v_key, v_inputs, format('transaction %s was already reversed', v_original.id), 'PX014');
        RETURN;
    END IF;
    RETURN QUERY
        SELECT w.transaction_id, w.user_wallet, w.transaction_type, w.xp_amount, w.xp_requested, w.total_xp,
               w.current_level, w.xp_to_next_level, w.previous_level, w.replayed
          FROM pyxp.append_rows(v_ruleset.ruleset_id, v_ruleset.balance_floor, v_ruleset.timezone,
                                v_ruleset.has_caps,
                                ARRAY[ROW(0, v_original.user_wallet, v_key, NULL, 'REVERSAL', -v_original.xp_amount,
                                          NULL, false, NULL, v_original.campaign_id, v_original.subject,
                                          jsonb_build_object('reason', v_reason,
                                                             'reversed_type', v_original.transaction_type),
                                          v_original.id, 0)::pyxp.pending_row], false) w;
END
$$;

-- Periods and caps (SPEC 12).
--
-- A period is a calendar period in the active ruleset's timezone
-- (rulesets.timezone, IANA): day, ISO week (from Monday), month, year; 'all'
-- is the whole history. date_trunc(unit, at, zone) gives a period's start as
-- an instant, so a day across a DST change lasts 23 or 25 hours.
-- A ledger row counts in the period of its created_at; a reversal in the
-- period of the row it reverses ("effective time"), so a reversed award
-- disappears from the board it was earned on.
--
-- How the period totals are kept: each balance holds its latest period of
-- each kind and its XP there (xp_balances.<kind>_start, <kind>_xp, kept by
-- the writer in the UPDATE it makes anyway, so no extra statement or row per
-- award), indexed in board order. That answers the boards of the current
-- periods from an index (top 100 = 100 index entries). A board of a past
-- period, or of a period just ended while some wallet already moved past it,
-- is computed from the ledger (BRIN on created_at, plus the reversals).
--
-- Caps: a capped gain is cut to what is left of the wallet's allowance in
-- the period containing the award (pyxp.capped_rows, under the wallet's
-- balance row lock); xp_cap_usage keeps what each allowance used
-- (pyxp.append_rows, pyxp.freed_allowance).
-- A period name in any case, normalised, or PX026. Its size is checked
-- before lower() copies it.
CREATE OR REPLACE FUNCTION pyxp.checked_period(p_period text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    IF p_period IS NOT NULL AND octet_length(p_period) <= 16
       AND lower(p_period) IN ('all', 'day', 'week', 'month', 'year') THEN
        RETURN lower(p_period);
    END IF;
    RAISE EXCEPTION 'invalid period %', coalesce(quote_literal(left(p_period, 32)), 'NULL')
        USING ERRCODE = 'PX026', HINT = 'period is all, day, week, month or year (any case)';
END
$$;

-- The period of kind p_kind (day, week, month, year) containing p_at in
-- zone p_timezone: [period_start, period_end). PX026 for a NULL or
-- infinite p_at.
CREATE OR REPLACE FUNCTION pyxp.period_bounds(p_kind text, p_at timestamptz, p_timezone text,
                                   OUT period_start timestamptz, OUT period_end timestamptz)
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
BEGIN
    IF p_at IS NULL OR NOT isfinite(p_at) THEN
        RAISE EXCEPTION 'invalid at: %', coalesce(p_at::text, 'NULL')
            USING ERRCODE = 'PX026', HINT = 'at is a finite timestamp with time zone (default now())';
    END IF;
    period_start := date_trunc(p_kind, p_at, p_timezone);
    -- The next period starts one calendar unit later in local time (23 or
    -- 25 hours for a day across DST); date_trunc again lands on the start of
    -- that period even where a local midnight does not exist.
    period_end := date_trunc(p_kind, (period_start AT TIME ZONE p_timezone + ('1 ' || p_kind)::interval)
                                     AT TIME ZONE p_timezone, p_timezone);
END
$$;

-- Caps applied to the writer's rows, under the wallets' balance row locks
-- (the writer's slow path when the ruleset has caps): each capped gain, in
-- row order, is cut to what is left of its allowance in the current period
-- (possibly 0): xp_amount becomes what applies, xp_requested keeps what the
-- rule asked. Penalties and reversals are never cut. Rows whose generic
-- award was made before (replays) are skipped. One statement: within one
-- call a key's gains only add up (no reversal among them), so the k-th gain
-- applies least(C_k, L) - least(C_k-1, L), C the running sum of the gains
-- asked, L what was left before the call (xp_cap_usage).
CREATE FUNCTION pyxp.capped_rows(p_rows pyxp.pending_row[], p_timezone text)
RETURNS pyxp.pending_row[]
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN ARRAY(
        SELECT ROW(x.call_index, x.user_wallet, x.idempotency_key, x.inputs, x.transaction_type,
                   CASE WHEN x.allowance IS NULL THEN x.xp_amount
                        ELSE least(x.asked, x.left_) - least(x.asked - x.xp_amount, x.left_) END,
                   CASE WHEN x.allowance IS NOT NULL AND x.asked > x.left_ THEN x.xp_amount ELSE x.xp_requested END,
                   x.apply_floor, x.rule_id, x.campaign_id, x.subject, x.metadata, x.reverses,
                   x.moderations)::pyxp.pending_row
          FROM (SELECT r.*, a.allowance,
                       sum(r.xp_amount) OVER (PARTITION BY r.user_wallet, a.allowance, a.period_start
                                              ORDER BY r.ord) AS asked,
                       greatest(a.cap_max_xp - coalesce(u.used_xp, 0), 0) AS left_
                  FROM unnest(p_rows) WITH ORDINALITY r(call_index, user_wallet, idempotency_key, inputs,
                                                        transaction_type, xp_amount, xp_requested, apply_floor,
                                                        rule_id, campaign_id, subject, metadata, reverses,
                                                        moderations, ord)
                  LEFT JOIN LATERAL (
                        SELECT pyxp.cap_allowance(ru.cap_group, ru.action) AS allowance, ru.cap_max_xp,
                               date_trunc(ru.cap_per, now(), p_timezone) AS period_start
                          FROM pyxp.rules ru
                         WHERE ru.rule_id = r.rule_id AND ru.cap_max_xp IS NOT NULL
                           AND r.xp_amount > 0 AND r.reverses IS NULL
                           AND NOT EXISTS (SELECT FROM pyxp.xp_transactions k
                                            WHERE r.inputs IS NOT NULL AND k.request_digest IS NOT NULL
                                              AND pyxp.key_hash(k.idempotency_key) = pyxp.key_hash(r.idempotency_key)
                                            LIMIT 1)
                         LIMIT 1) a ON true
                  LEFT JOIN LATERAL (
                        SELECT u.used_xp FROM pyxp.xp_cap_usage u
                         WHERE u.user_wallet = r.user_wallet AND u.allowance = a.allowance
                           AND u.period_start = a.period_start
                         LIMIT 1) u ON true) x
         ORDER BY x.ord);
END
$$;

DROP TYPE pyxp.simulation_state;
ALTER TABLE pyxp.rulesets DROP COLUMN applied_retroactively_at;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pyxp FROM PUBLIC;

COMMENT ON FUNCTION pyxp.install_ruleset(jsonb, text) IS
    'internal: installs and activates a compiled ruleset (pyxp rules apply). Owner only.';
COMMENT ON FUNCTION pyxp.capped_rows(pyxp.pending_row[], text) IS
    'internal: caps applied to the writer''s rows: gains cut to what is left of their allowance.';
COMMENT ON FUNCTION pyxp.checked_award_key(text) IS 'internal: a caller''s idempotency key outside pyxp''s namespaces, or PX016.';
COMMENT ON FUNCTION pyxp.check_ruleset_definition(jsonb) IS 'internal: PX024 for a malformed compiled ruleset.';
COMMENT ON FUNCTION pyxp.row_ruleset(bigint, text) IS 'internal: the ruleset a ledger row was written under.';
COMMENT ON FUNCTION pyxp.append_rows(bigint, bigint, text, boolean, pyxp.pending_row[], boolean) IS
    'internal: THE writer: locks the wallets, replays claimed generic awards, applies floor and caps, appends every ledger row and updates each balance once.';
COMMENT ON FUNCTION pyxp.reverse_transaction(bigint, text) IS
    'API: appends the compensating row of a ledger row (once; the same reason again replays).';
COMMENT ON FUNCTION pyxp.checked_period(text) IS 'internal: a period name normalised (all, day, week, month, year), or PX026.';
COMMENT ON FUNCTION pyxp.period_bounds(text, timestamptz, text) IS
    'internal: start and end of the calendar period of a kind containing an instant, in a zone.';

RESET ROLE;
