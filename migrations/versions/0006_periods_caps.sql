-- 0006: periods and caps (SPEC 12).
-- Frozen copy of what sql/*.sql defines at this revision; never edit it.
--
-- Rulesets gain a timezone (periods are calendar periods in it) and rules an
-- optional cap (cap_max_xp per cap_per, shared by a cap_group). Balances
-- gain their latest period of each kind and its XP (the boards of the
-- current periods), filled here from the existing ledger in the active
-- ruleset's zone (UTC: every ruleset installed before has it).
-- xp_cap_usage records what capped gains used per allowance and period.
-- leaderboard and wallet_rank take a period and an instant; period_xp is new.
SET LOCAL ROLE pyxp_owner;

ALTER TABLE pyxp.rulesets
    ADD COLUMN timezone text NOT NULL DEFAULT 'UTC',
    ADD COLUMN has_caps boolean NOT NULL DEFAULT false;
ALTER TABLE pyxp.rules
    ADD COLUMN cap_max_xp bigint CHECK (cap_max_xp BETWEEN 1 AND 1000000000000000),
    ADD COLUMN cap_per text CHECK (cap_per IN ('day', 'week', 'month', 'year')),
    ADD COLUMN cap_group text,
    ADD CONSTRAINT rules_cap_complete CHECK ((cap_max_xp IS NULL) = (cap_per IS NULL)),
    ADD CONSTRAINT rules_cap_group_capped CHECK (cap_group IS NULL OR cap_max_xp IS NOT NULL);
ALTER TABLE pyxp.xp_balances
    ADD COLUMN day_start timestamptz,
    ADD COLUMN day_xp bigint,
    ADD COLUMN week_start timestamptz,
    ADD COLUMN week_xp bigint,
    ADD COLUMN month_start timestamptz,
    ADD COLUMN month_xp bigint,
    ADD COLUMN year_start timestamptz,
    ADD COLUMN year_xp bigint;
CREATE INDEX xp_balances_day_board ON pyxp.xp_balances (day_start, day_xp DESC, user_wallet);
CREATE INDEX xp_balances_week_board ON pyxp.xp_balances (week_start, week_xp DESC, user_wallet);
CREATE INDEX xp_balances_month_board ON pyxp.xp_balances (month_start, month_xp DESC, user_wallet);
CREATE INDEX xp_balances_year_board ON pyxp.xp_balances (year_start, year_xp DESC, user_wallet);
CREATE INDEX xp_transactions_created ON pyxp.xp_transactions USING brin (created_at);
CREATE TABLE pyxp.xp_cap_usage (
    user_wallet   text NOT NULL,
    allowance     text NOT NULL,
    period_start  timestamptz NOT NULL,
    used_xp       bigint NOT NULL CHECK (used_xp >= 0),
    PRIMARY KEY (user_wallet, allowance, period_start)
);

DROP FUNCTION pyxp.append_rows(bigint, bigint, pyxp.pending_row[], boolean);
DROP FUNCTION pyxp.leaderboard(integer, integer);
DROP FUNCTION pyxp.wallet_rank(text);
DROP FUNCTION pyxp.writing_ruleset();

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
CREATE OR REPLACE FUNCTION pyxp.install_ruleset(definition jsonb, source text)
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
CREATE FUNCTION pyxp.append_rows(p_ruleset bigint, p_floor bigint, p_timezone text, p_caps boolean,
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

-- Where every writing function starts (SPEC 4, lock protocol of
-- 04_rulesets.sql): READ COMMITTED only (PX025), ROW EXCLUSIVE on
-- xp_balances before the active ruleset is read, then the active ruleset
-- (PX020 when none), its balance floor, period zone and whether it caps.
CREATE FUNCTION pyxp.writing_ruleset(OUT ruleset_id bigint, OUT balance_floor bigint, OUT timezone text,
                                     OUT has_caps boolean)
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pyxp.require_read_committed();
    LOCK TABLE pyxp.xp_balances IN ROW EXCLUSIVE MODE;
    SELECT r.ruleset_id, r.balance_floor, r.timezone, r.has_caps INTO ruleset_id, balance_floor, timezone, has_caps
      FROM pyxp.rulesets r WHERE r.is_active;
    IF ruleset_id IS NULL THEN
        PERFORM pyxp.active_ruleset_id();  -- PX020
    END IF;
END
$$;

-- Claims a flow's key (xp_requests), resolves the rules of the active
-- ruleset for its event (every rule of that event whose campaign_types
-- include p_campaign_type, or are NULL, and whose condition is NULL or one
-- of p_facts, in file order), evaluates them and hands the rows to the
-- writer. Amounts come only from the rules: no XP figure is written in
-- PL/pgSQL. A call whose event has no rule writes no ledger row; a vote still
-- counts in total_moderations (a row without transaction_type: counted, not
-- appended).
CREATE OR REPLACE FUNCTION pyxp.post_award(
    p_key text, p_inputs jsonb, p_wallet text,
    p_event text, p_campaign_type text, p_facts text[], p_params jsonb,
    p_campaign_id text, p_subject text, p_metadata jsonb, p_moderations integer,
    p_conflict_message text DEFAULT NULL)
RETURNS SETOF pyxp.award_result
LANGUAGE plpgsql
AS $$
DECLARE
    v_ruleset record;
    v_rows pyxp.pending_row[];
    v_problem record;
BEGIN
    SELECT * INTO v_ruleset FROM pyxp.writing_ruleset();
    IF NOT pyxp.claim_request(p_key, p_inputs, v_ruleset.ruleset_id) THEN
        RETURN QUERY SELECT * FROM pyxp.replayed_award(p_key, p_inputs, p_conflict_message);
        RETURN;
    END IF;

    SELECT x.code, x.message, x.hint INTO v_problem
      FROM pyxp.rules ru
     CROSS JOIN LATERAL pyxp.formula_input_problems(ru.action, ru.xp_coefficients, p_params, false) x
     WHERE ru.ruleset_id = v_ruleset.ruleset_id AND ru.event = p_event
       AND (ru.campaign_types IS NULL OR p_campaign_type = ANY (ru.campaign_types))
       AND (ru.condition IS NULL OR ru.condition = ANY (p_facts))
     ORDER BY ru.position
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '%', v_problem.message USING ERRCODE = v_problem.code, HINT = v_problem.hint;
    END IF;
    v_rows := ARRAY(
        SELECT ROW(0, p_wallet, p_key, NULL, ru.action,
                   pyxp.rule_amount(ru.xp_constant, ru.xp_coefficients, p_params), NULL, true, ru.rule_id,
                   p_campaign_id, p_subject, p_metadata, NULL, 0)::pyxp.pending_row
          FROM pyxp.rules ru
         WHERE ru.ruleset_id = v_ruleset.ruleset_id AND ru.event = p_event
           AND (ru.campaign_types IS NULL OR p_campaign_type = ANY (ru.campaign_types))
           AND (ru.condition IS NULL OR ru.condition = ANY (p_facts))
         ORDER BY ru.position);
    SELECT r.transaction_type, r.xp_amount INTO v_problem FROM unnest(v_rows) r WHERE abs(r.xp_amount) > 1e15 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'XP amount % of % is out of range', v_problem.xp_amount, v_problem.transaction_type
            USING ERRCODE = 'PX004', HINT = 'an award is at most 10^15 XP; check the formula inputs';
    END IF;
    IF p_moderations > 0 THEN  -- counted once, with the call's first row (or alone)
        IF cardinality(v_rows) = 0 THEN
            v_rows := ARRAY[ROW(0, p_wallet, p_key, NULL, NULL, 0, NULL, false, NULL, NULL, NULL, NULL, NULL,
                                p_moderations)::pyxp.pending_row];
        ELSE
            v_rows[1].moderations := p_moderations;
        END IF;
    END IF;
    RETURN QUERY
        SELECT w.transaction_id, w.user_wallet, w.transaction_type, w.xp_amount, w.xp_requested, w.total_xp,
               w.current_level, w.xp_to_next_level, w.previous_level, w.replayed
          FROM pyxp.append_rows(v_ruleset.ruleset_id, v_ruleset.balance_floor, v_ruleset.timezone,
                                v_ruleset.has_caps, v_rows, false) w;
END
$$;

-- Public: awards the active rule `action` to `wallet`, once per
-- idempotency_key: a batch of one (pyxp.planned_awards, pyxp.append_rows).
-- params: the formula inputs ({"PRICE_COMPLETION": 300}); context: free JSON
-- kept in the row's metadata (its "campaign_id" and "subject", if texts,
-- also fill those columns). The key's inputs are action, wallet and params:
-- a retry with another context is a replay.
CREATE OR REPLACE FUNCTION pyxp.award(wallet text, action text, idempotency_key text,
                           params jsonb DEFAULT '{}', context jsonb DEFAULT '{}')
RETURNS SETOF pyxp.award_result
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_event pyxp.batch_event;
    v_ruleset record;
BEGIN
    v_event.event_index := 0;
    v_event.wallet := pyxp.checked_wallet(award.wallet);
    v_event.action := pyxp.checked_identifier('action', award.action, 64);
    v_event.key := pyxp.checked_award_key(award.idempotency_key);
    v_event.params := pyxp.checked_params(award.params);
    v_event.metadata := pyxp.checked_context(award.context);
    v_event.campaign_id := pyxp.context_column(v_event.metadata, 'campaign_id', 128);
    v_event.subject := pyxp.context_column(v_event.metadata, 'subject', 256);
    v_event.metadata := v_event.metadata || v_event.params;
    v_event.inputs := jsonb_build_object('action', v_event.action, 'wallet', v_event.wallet,
                                         'params', v_event.params);
    SELECT * INTO v_ruleset FROM pyxp.writing_ruleset();
    RETURN QUERY
        SELECT w.transaction_id, w.user_wallet, w.transaction_type, w.xp_amount, w.xp_requested, w.total_xp,
               w.current_level, w.xp_to_next_level, w.previous_level, w.replayed
          FROM pyxp.append_rows(v_ruleset.ruleset_id, v_ruleset.balance_floor, v_ruleset.timezone,
                                v_ruleset.has_caps,
                                pyxp.planned_awards(v_ruleset.ruleset_id, ARRAY[v_event], false), false) w;
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
CREATE FUNCTION pyxp.checked_period(p_period text)
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
CREATE FUNCTION pyxp.period_bounds(p_kind text, p_at timestamptz, p_timezone text,
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

-- The zone periods are counted in: the active ruleset's (PX020 if none).
CREATE FUNCTION pyxp.active_timezone()
RETURNS text
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_zone text;
BEGIN
    SELECT r.timezone INTO v_zone FROM pyxp.rulesets r WHERE r.is_active;
    IF v_zone IS NULL THEN
        PERFORM pyxp.active_ruleset_id();  -- PX020
    END IF;
    RETURN v_zone;
END
$$;

-- Every wallet with a row in [p_start, p_end) and its XP there, from the
-- ledger: rows created in the range that reverse nothing, and reversals of
-- rows created in it (wherever the reversal falls). Exact at any time; reads
-- the range's rows (BRIN xp_transactions_created) and every reversal.
CREATE FUNCTION pyxp.ledger_period_totals(p_start timestamptz, p_end timestamptz)
RETURNS TABLE (user_wallet text, period_xp bigint)
LANGUAGE sql STABLE
AS $$
    SELECT x.user_wallet, sum(x.xp_amount)::bigint
      FROM (SELECT t.user_wallet, t.xp_amount
              FROM pyxp.xp_transactions t
             WHERE t.created_at >= p_start AND t.created_at < p_end AND t.reverses IS NULL
            UNION ALL
            SELECT t.user_wallet, t.xp_amount
              FROM pyxp.xp_transactions t
              JOIN pyxp.xp_transactions o ON o.id = t.reverses
             WHERE t.reverses IS NOT NULL AND o.created_at >= p_start AND o.created_at < p_end) x
     GROUP BY x.user_wallet
$$;

-- Whether the board of the p_kind period starting at p_start is exactly the
-- balances whose <kind>_start = p_start (see xp_balances): true unless some
-- balance already moved past it (then it may hold rows of p_start too).
-- One index probe.
CREATE FUNCTION pyxp.period_cached(p_kind text, p_start timestamptz)
RETURNS boolean
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_past boolean;
BEGIN
    EXECUTE format('SELECT EXISTS (SELECT FROM pyxp.xp_balances b WHERE b.%I > $1)', p_kind || '_start')
       INTO v_past USING p_start;
    RETURN NOT v_past;
END
$$;

-- Public: the leaderboard. period 'all' (default): balances by total_xp
-- desc, ties by wallet, period_xp = total_xp (index xp_balances_leaderboard).
-- A period (day, week, month, year, any case): the wallets with a row in the
-- period containing `at` (default now()), by period_xp desc, ties by wallet,
-- with their current total and level. max_rows: 1..1000; offset_rows pages
-- on (rank = offset_rows + position).
CREATE FUNCTION pyxp.leaderboard(max_rows integer DEFAULT 100, offset_rows integer DEFAULT 0,
                                 period text DEFAULT 'all', at timestamptz DEFAULT now())
RETURNS TABLE (rank bigint, user_wallet text, total_xp bigint, current_level bigint, period_xp bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$
DECLARE
    v_max integer := pyxp.checked_row_count('max_rows', leaderboard.max_rows);
    v_period text := pyxp.checked_period(leaderboard.period);
    v_bounds record;
BEGIN
    IF leaderboard.offset_rows IS NULL OR leaderboard.offset_rows < 0 THEN
        RAISE EXCEPTION 'invalid offset_rows: %', coalesce(leaderboard.offset_rows::text, 'NULL')
            USING ERRCODE = 'PX023', HINT = 'offset_rows is 0 or more';
    END IF;
    IF v_period = 'all' THEN
        RETURN QUERY
            SELECT leaderboard.offset_rows + row_number() OVER (ORDER BY b.total_xp DESC, b.user_wallet),
                   b.user_wallet, b.total_xp, b.current_level, b.total_xp
              FROM (SELECT x.user_wallet, x.total_xp, x.current_level
                      FROM pyxp.xp_balances x
                     ORDER BY x.total_xp DESC, x.user_wallet
                     OFFSET leaderboard.offset_rows LIMIT v_max) b
             ORDER BY 1;
        RETURN;
    END IF;
    v_bounds := pyxp.period_bounds(v_period, leaderboard.at, pyxp.active_timezone());
    IF pyxp.period_cached(v_period, v_bounds.period_start) THEN
        RETURN QUERY EXECUTE format(
            'SELECT $1 + row_number() OVER (ORDER BY b.xp DESC, b.user_wallet), b.user_wallet, b.total_xp,
                    b.current_level, b.xp
               FROM (SELECT x.user_wallet, x.total_xp, x.current_level, x.%2$I AS xp
                       FROM pyxp.xp_balances x
                      WHERE x.%1$I = $2
                      ORDER BY x.%2$I DESC, x.user_wallet
                     OFFSET $1 LIMIT $3) b
              ORDER BY 1', v_period || '_start', v_period || '_xp')
            USING leaderboard.offset_rows::bigint, v_bounds.period_start, v_max;
    ELSE
        RETURN QUERY
            SELECT leaderboard.offset_rows + row_number() OVER (ORDER BY p.period_xp DESC, p.user_wallet),
                   p.user_wallet, x.total_xp, x.current_level, p.period_xp
              FROM (SELECT t.user_wallet, t.period_xp
                      FROM pyxp.ledger_period_totals(v_bounds.period_start, v_bounds.period_end) t
                     ORDER BY t.period_xp DESC, t.user_wallet
                    OFFSET leaderboard.offset_rows LIMIT v_max) p
              JOIN pyxp.xp_balances x ON x.user_wallet = p.user_wallet
             ORDER BY 1;
    END IF;
END
$$;

-- Public: a wallet's rank on leaderboard(period => period, at => at), NULL
-- when it is not on that board. 'all': two index range counts on
-- xp_balances_leaderboard; a current period: the same on its board index.
CREATE FUNCTION pyxp.wallet_rank(wallet text, period text DEFAULT 'all', at timestamptz DEFAULT now())
RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$
DECLARE
    v_wallet text := pyxp.checked_wallet(wallet_rank.wallet);
    v_period text := pyxp.checked_period(wallet_rank.period);
    v_bounds record;
    v_total bigint;
    v_start timestamptz;
    v_rank bigint;
BEGIN
    IF v_period = 'all' THEN
        SELECT b.total_xp INTO v_total FROM pyxp.xp_balances b WHERE b.user_wallet = v_wallet;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
        RETURN 1 + (SELECT count(*) FROM pyxp.xp_balances b WHERE b.total_xp > v_total)
                 + (SELECT count(*) FROM pyxp.xp_balances b WHERE b.total_xp = v_total AND b.user_wallet < v_wallet);
    END IF;
    v_bounds := pyxp.period_bounds(v_period, wallet_rank.at, pyxp.active_timezone());
    IF pyxp.period_cached(v_period, v_bounds.period_start) THEN
        EXECUTE format('SELECT b.%1$I, b.%2$I FROM pyxp.xp_balances b WHERE b.user_wallet = $1',
                       v_period || '_start', v_period || '_xp')
           INTO v_start, v_total USING v_wallet;
        IF v_start IS DISTINCT FROM v_bounds.period_start THEN
            RETURN NULL;
        END IF;
        EXECUTE format('SELECT 1 + (SELECT count(*) FROM pyxp.xp_balances b WHERE b.%1$I = $1 AND b.%2$I > $2)
                                 + (SELECT count(*) FROM pyxp.xp_balances b
                                     WHERE b.%1$I = $1 AND b.%2$I = $2 AND b.user_wallet < $3)',
                       v_period || '_start', v_period || '_xp')
           INTO v_rank USING v_bounds.period_start, v_total, v_wallet;
        RETURN v_rank;
    END IF;
    SELECT r.rank INTO v_rank
      FROM (SELECT t.user_wallet, row_number() OVER (ORDER BY t.period_xp DESC, t.user_wallet) AS rank
              FROM pyxp.ledger_period_totals(v_bounds.period_start, v_bounds.period_end) t) r
     WHERE r.user_wallet = v_wallet;
    RETURN v_rank;
END
$$;

-- Public: the XP a wallet earned in the period containing `at` (its rows
-- there, reversals counted in the period of what they reverse); 0 if none.
-- 'all': its total.
CREATE FUNCTION pyxp.period_xp(wallet text, period text, at timestamptz DEFAULT now())
RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$
DECLARE
    v_wallet text := pyxp.checked_wallet(period_xp.wallet);
    v_period text := pyxp.checked_period(period_xp.period);
    v_bounds record;
    v_start timestamptz;
    v_xp bigint;
BEGIN
    IF v_period = 'all' THEN
        RETURN coalesce((SELECT b.total_xp FROM pyxp.xp_balances b WHERE b.user_wallet = v_wallet), 0);
    END IF;
    v_bounds := pyxp.period_bounds(v_period, period_xp.at, pyxp.active_timezone());
    EXECUTE format('SELECT b.%1$I, b.%2$I FROM pyxp.xp_balances b WHERE b.user_wallet = $1',
                   v_period || '_start', v_period || '_xp')
       INTO v_start, v_xp USING v_wallet;
    IF v_start IS NULL OR v_start < v_bounds.period_start THEN
        RETURN 0;                   -- no row in that period or later
    ELSIF v_start = v_bounds.period_start THEN
        RETURN v_xp;                -- its latest period: kept by the writer
    END IF;
    -- An earlier period: the wallet's rows (index xp_transactions_wallet).
    RETURN coalesce((
        SELECT sum(t.xp_amount)
          FROM pyxp.xp_transactions t
          LEFT JOIN pyxp.xp_transactions o ON o.id = t.reverses
         WHERE t.user_wallet = v_wallet
           AND coalesce(o.created_at, t.created_at) >= v_bounds.period_start
           AND coalesce(o.created_at, t.created_at) < v_bounds.period_end), 0)::bigint;
END
$$;

-- The allowance a rule's cap counts in: its group's, or its own.
CREATE FUNCTION pyxp.cap_allowance(p_group text, p_action text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN p_group IS NOT NULL THEN 'group:' || p_group ELSE 'rule:' || p_action END $$;

-- What a reversal frees of a capped allowance: what the capped gain it
-- reverses applied, in that gain's period (in the zone of its rule's
-- ruleset). No row for a reversal of anything else.
CREATE FUNCTION pyxp.freed_allowance(p_reverses bigint)
RETURNS TABLE (allowance text, period_start timestamptz, freed_xp bigint)
LANGUAGE sql STABLE
AS $$
    SELECT pyxp.cap_allowance(ru.cap_group, ru.action), date_trunc(ru.cap_per, o.created_at, rs.timezone), o.xp_amount
      FROM pyxp.xp_transactions o
      JOIN pyxp.rules ru ON ru.rule_id = o.rule_id
      JOIN pyxp.rulesets rs ON rs.ruleset_id = ru.ruleset_id
     WHERE o.id = p_reverses AND ru.cap_max_xp IS NOT NULL AND o.xp_amount > 0
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

-- From the ledger, in zone p_timezone: each wallet's latest period of each
-- kind and its XP there (what xp_balances.<kind>_start/_xp must hold). One
-- pass over the ledger: for pyxp.rebuild_period_columns and pyxp.audit.
CREATE FUNCTION pyxp.ledger_latest_periods(p_timezone text)
RETURNS TABLE (user_wallet text, day_start timestamptz, day_xp bigint, week_start timestamptz, week_xp bigint,
               month_start timestamptz, month_xp bigint, year_start timestamptz, year_xp bigint)
LANGUAGE sql STABLE
AS $$
    WITH rows_ AS (
        SELECT t.user_wallet, t.xp_amount,
               date_trunc('day', e.at, p_timezone) AS d, date_trunc('week', e.at, p_timezone) AS w,
               date_trunc('month', e.at, p_timezone) AS m, date_trunc('year', e.at, p_timezone) AS y
          FROM pyxp.xp_transactions t
          LEFT JOIN pyxp.xp_transactions o ON o.id = t.reverses
         CROSS JOIN LATERAL (SELECT coalesce(o.created_at, t.created_at) AS at) e
    ), latest AS (
        SELECT r.*, max(r.d) OVER w_ AS max_d, max(r.w) OVER w_ AS max_w,
               max(r.m) OVER w_ AS max_m, max(r.y) OVER w_ AS max_y
          FROM rows_ r
        WINDOW w_ AS (PARTITION BY r.user_wallet)
    )
    SELECT l.user_wallet,
           max(l.max_d), (sum(l.xp_amount) FILTER (WHERE l.d = l.max_d))::bigint,
           max(l.max_w), (sum(l.xp_amount) FILTER (WHERE l.w = l.max_w))::bigint,
           max(l.max_m), (sum(l.xp_amount) FILTER (WHERE l.m = l.max_m))::bigint,
           max(l.max_y), (sum(l.xp_amount) FILTER (WHERE l.y = l.max_y))::bigint
      FROM latest l
     GROUP BY l.user_wallet
$$;

-- From the ledger: what each capped allowance used per period (capped gains'
-- applied amounts, less the reversals of them), with the largest cap its
-- rows' rules carried (what xp_cap_usage must hold; pyxp.audit).
CREATE FUNCTION pyxp.ledger_cap_usage()
RETURNS TABLE (user_wallet text, allowance text, period_start timestamptz, used_xp bigint, cap_max_xp bigint)
LANGUAGE sql STABLE
AS $$
    SELECT t.user_wallet, pyxp.cap_allowance(ru.cap_group, ru.action), date_trunc(ru.cap_per, g.at, rs.timezone),
           sum(t.xp_amount)::bigint, max(ru.cap_max_xp)
      FROM pyxp.xp_transactions t
      LEFT JOIN pyxp.xp_transactions o ON o.id = t.reverses
     CROSS JOIN LATERAL (SELECT coalesce(o.rule_id, t.rule_id) AS rule_id, coalesce(o.created_at, t.created_at) AS at,
                                coalesce(o.xp_amount, t.xp_amount) AS gain) g
      JOIN pyxp.rules ru ON ru.rule_id = g.rule_id
      JOIN pyxp.rulesets rs ON rs.ruleset_id = ru.ruleset_id
     WHERE ru.cap_max_xp IS NOT NULL AND g.gain > 0
     GROUP BY 1, 2, 3
$$;

-- Re-derives every balance's period columns (xp_balances.<kind>_start,
-- <kind>_xp) from the ledger in zone p_timezone: when a ruleset with another
-- timezone becomes active, and in the migration that introduced them. One
-- pass over the ledger; the caller holds the lock that keeps awards out
-- (install_ruleset: SHARE ROW EXCLUSIVE on xp_balances).
CREATE FUNCTION pyxp.rebuild_period_columns(p_timezone text)
RETURNS void
LANGUAGE sql
AS $$
    UPDATE pyxp.xp_balances b
       SET day_start = p.day_start, day_xp = p.day_xp, week_start = p.week_start, week_xp = p.week_xp,
           month_start = p.month_start, month_xp = p.month_xp, year_start = p.year_start, year_xp = p.year_xp
      FROM pyxp.xp_balances b2
      LEFT JOIN pyxp.ledger_latest_periods(p_timezone) p ON p.user_wallet = b2.user_wallet
     WHERE b.user_wallet = b2.user_wallet
       AND (b.day_start, b.day_xp, b.week_start, b.week_xp, b.month_start, b.month_xp, b.year_start, b.year_xp)
           IS DISTINCT FROM
           (p.day_start, p.day_xp, p.week_start, p.week_xp, p.month_start, p.month_xp, p.year_start, p.year_xp)
$$;

-- Every inconsistency between the ledger, the balances and the rules, one
-- row each; no rows when healthy. What it proves: each balance equals the sum
-- of its wallet's rows, each row's balance_after chains from the previous
-- one, levels match the active curve, reversals mirror what they reverse,
-- rows name the action of an existing rule, a flow's or reversal's rows have
-- their request, exactly one ruleset is active,
-- total_moderations counts the votes recorded, the balances' period columns
-- and the caps' usage match the ledger and no cap is exceeded, a registration is granted
-- exactly when its client email was onboarded, identities stored before 0002
-- read the same today.
-- (jit off: compiling the plan cost more than running it, 100 ms vs 6 ms on a
-- small ledger; on 10M rows the scans dominate either way.)
CREATE OR REPLACE FUNCTION pyxp.audit()
RETURNS TABLE (check_name text, user_wallet text, transaction_id bigint, detail text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET jit = off
AS $$
    SELECT 'active_ruleset', NULL::text, NULL::bigint,
           format('%s active rulesets, expected 1', count(*))
      FROM pyxp.rulesets r WHERE r.is_active HAVING count(*) <> 1
    UNION ALL
    SELECT 'balance_mismatch', coalesce(b.user_wallet, l.user_wallet), NULL,
           CASE WHEN b.user_wallet IS NULL
                THEN format('ledger sum %s but no xp_balances row', l.total)
                ELSE format('xp_balances.total_xp = %s, ledger sum = %s', b.total_xp, coalesce(l.total, 0)) END
      FROM pyxp.xp_balances b
      FULL JOIN (SELECT t.user_wallet, sum(t.xp_amount) AS total
                   FROM pyxp.xp_transactions t GROUP BY t.user_wallet) l
        ON l.user_wallet = b.user_wallet
     WHERE b.user_wallet IS NULL OR b.total_xp <> coalesce(l.total, 0)
    UNION ALL
    SELECT 'running_balance', c.user_wallet, c.id,
           format('balance_after = %s, previous balance_after %s + xp_amount %s = %s',
                  c.balance_after, coalesce(c.previous, 0), c.xp_amount, coalesce(c.previous, 0) + c.xp_amount)
      FROM (SELECT t.user_wallet, t.id, t.balance_after, t.xp_amount,
                   lag(t.balance_after) OVER (PARTITION BY t.user_wallet ORDER BY t.id) AS previous
              FROM pyxp.xp_transactions t) c
     WHERE c.balance_after <> coalesce(c.previous, 0) + c.xp_amount
    UNION ALL
    SELECT 'level_mismatch', b.user_wallet, NULL,
           format('level %s with %s to next, curve says level %s with %s to next',
                  b.current_level, b.xp_to_next_level, c.level, c.next_level_xp - b.total_xp)
      FROM pyxp.xp_balances b
     CROSS JOIN LATERAL pyxp.curve_position(
                (SELECT r.ruleset_id FROM pyxp.rulesets r WHERE r.is_active), b.total_xp) c
     WHERE b.current_level <> c.level OR b.xp_to_next_level <> c.next_level_xp - b.total_xp
    UNION ALL
    SELECT 'reversal_mismatch', t.user_wallet, t.id,
           format('reverses transaction %s (%s XP to %s) with %s XP', o.id, o.xp_amount, o.user_wallet, t.xp_amount)
      FROM pyxp.xp_transactions t
      JOIN pyxp.xp_transactions o ON o.id = t.reverses
     WHERE t.xp_amount <> -o.xp_amount OR t.user_wallet <> o.user_wallet OR o.reverses IS NOT NULL
    UNION ALL
    SELECT 'moderation_count', b.user_wallet, NULL,
           format('total_moderations = %s, votes recorded = %s', b.total_moderations, coalesce(v.votes, 0))
      FROM pyxp.xp_balances b
      FULL JOIN (SELECT q.inputs ->> 'wallet' AS user_wallet, count(*) AS votes
                   FROM pyxp.xp_requests q
                  WHERE q.idempotency_key ~ '^(campaign|completion)\.vote(/[0-9]+)?:'
                  GROUP BY 1) v ON v.user_wallet = b.user_wallet
     WHERE coalesce(b.total_moderations, 0) <> coalesce(v.votes, 0)
    UNION ALL
    SELECT 'registration_grant', a.client_wallet, NULL,
           format('registration %s of %s is %s', a.id, a.client_email,
                  CASE WHEN a.xp_granted THEN 'granted without an onboarding of that email'
                       ELSE 'pending although that email was onboarded' END)
      FROM pyxp.agency_b2c_clients a
      LEFT JOIN pyxp.xp_requests q ON q.idempotency_key = 'client.onboarded:' || a.client_email
     WHERE a.xp_granted <> (q.idempotency_key IS NOT NULL)
    UNION ALL
    -- Identities stored before 0002 that today's checks would read otherwise
    -- (NFKC, Unicode whitespace, invisible characters): one person may be two
    -- wallets or emails here; a DBA decides what to merge.
    SELECT 'identity_not_normalised', b.user_wallet, NULL,
           CASE WHEN pyxp.invisible_character(f.form) IS NOT NULL
                THEN format('wallet %s holds U+%s, refused since 0002', quote_literal(b.user_wallet),
                            upper(lpad(to_hex(ascii(pyxp.invisible_character(f.form))), 4, '0')))
                ELSE format('wallet %s is read %s since 0002', quote_literal(b.user_wallet), quote_literal(f.form)) END
      FROM pyxp.xp_balances b
     CROSS JOIN LATERAL (SELECT CASE WHEN x.t ~* '^0x[0-9a-f]{40}$' THEN lower(x.t) ELSE x.t END AS form
                           FROM (SELECT pyxp.trimmed_text(b.user_wallet, true) AS t) x) f
     WHERE f.form <> b.user_wallet OR pyxp.invisible_character(f.form) IS NOT NULL
    UNION ALL
    SELECT 'identity_not_normalised', a.client_wallet, NULL,
           format('client email %s of registration %s is read %s since 0002', quote_literal(a.client_email), a.id,
                  coalesce(quote_literal(f.form), 'as refused'))
      FROM pyxp.agency_b2c_clients a
     CROSS JOIN LATERAL (SELECT CASE WHEN pyxp.invisible_character(x.t) IS NULL THEN x.t END AS form
                           FROM (SELECT lower(pyxp.trimmed_text(a.client_email, true)) AS t) x) f
     WHERE f.form IS DISTINCT FROM a.client_email
    UNION ALL
    SELECT CASE WHEN ru.rule_id IS NULL THEN 'rule_missing' ELSE 'rule_mismatch' END, t.user_wallet, t.id,
           CASE WHEN ru.rule_id IS NULL THEN format('rule %s of this row does not exist', t.rule_id)
                ELSE format('transaction_type %s but rule %s is %s', t.transaction_type, ru.rule_id, ru.action) END
      FROM pyxp.xp_transactions t
      LEFT JOIN pyxp.rules ru ON ru.rule_id = t.rule_id
     WHERE t.rule_id IS NOT NULL AND (ru.rule_id IS NULL OR ru.action <> t.transaction_type)
    UNION ALL
    -- The balances' latest periods (sql/07_periods.sql), in the active zone.
    SELECT 'period_mismatch', b.user_wallet, NULL,
           format('%s: xp_balances holds %s XP from %s, the ledger %s XP from %s', k.kind,
                  coalesce(k.kept_xp::text, 'no'), coalesce(k.kept_start::text, 'no period'),
                  coalesce(k.xp::text, 'no'), coalesce(k.start::text, 'no period'))
      FROM pyxp.xp_balances b
      LEFT JOIN pyxp.ledger_latest_periods((SELECT r.timezone FROM pyxp.rulesets r WHERE r.is_active)) p
        ON p.user_wallet = b.user_wallet
     CROSS JOIN LATERAL (VALUES ('day', b.day_start, b.day_xp, p.day_start, p.day_xp),
                                ('week', b.week_start, b.week_xp, p.week_start, p.week_xp),
                                ('month', b.month_start, b.month_xp, p.month_start, p.month_xp),
                                ('year', b.year_start, b.year_xp, p.year_start, p.year_xp))
                        k(kind, kept_start, kept_xp, start, xp)
     WHERE (k.kept_start, k.kept_xp) IS DISTINCT FROM (k.start, k.xp)
    UNION ALL
    -- Caps: what xp_cap_usage holds against the ledger, and no allowance
    -- used beyond the largest cap its rows' rules carried.
    SELECT CASE WHEN coalesce(u.used_xp, 0) <> coalesce(l.used_xp, 0) THEN 'cap_usage_mismatch'
                ELSE 'cap_exceeded' END,
           coalesce(u.user_wallet, l.user_wallet), NULL,
           format('%s from %s: xp_cap_usage says %s XP used, the ledger %s XP, cap %s',
                  coalesce(u.allowance, l.allowance), coalesce(u.period_start, l.period_start),
                  coalesce(u.used_xp, 0), coalesce(l.used_xp, 0), coalesce(l.cap_max_xp::text, 'none'))
      FROM pyxp.xp_cap_usage u
      FULL JOIN pyxp.ledger_cap_usage() l
        ON l.user_wallet = u.user_wallet AND l.allowance = u.allowance AND l.period_start = u.period_start
     WHERE coalesce(u.used_xp, 0) <> coalesce(l.used_xp, 0) OR l.used_xp > l.cap_max_xp
    UNION ALL
    -- A flow's or reversal's row needs its request (its claim and inputs).
    SELECT 'request_missing', t.user_wallet, t.id,
           format('no xp_requests row for key %s', quote_literal(t.idempotency_key))
      FROM pyxp.xp_transactions t
     WHERE t.request_digest IS NULL
       AND NOT EXISTS (SELECT FROM pyxp.xp_requests q WHERE q.idempotency_key = t.idempotency_key)
    ORDER BY 1, 2, 3
$$;

-- Batch ingestion: many generic awards in one call, processed set-based.
--
-- pyxp.award_many(events) takes a JSON array of awards shaped like
-- pyxp.award's parameters: {"wallet", "action", "idempotency_key", "params",
-- "context"}. Same rules, validation and idempotency as pyxp.award, through
-- the same planner and writer (pyxp.planned_awards, pyxp.append_rows: a
-- single award is a batch of one); the batch is one transaction: every
-- event applies, or (any refusal) none does and the error names the event's
-- index (0-based).
--
-- Steps: validate each event (a loop of pure function calls: no
-- subtransactions); within the batch, a repeated key must carry the same
-- inputs (it then replays its first occurrence); plan and write the first
-- occurrences (the writer locks every wallet's balance row in wallet order,
-- so concurrent batches never deadlock, and updates each balance once).
CREATE OR REPLACE FUNCTION pyxp.award_many(events jsonb)
RETURNS SETOF pyxp.batch_award_result
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_events pyxp.batch_event[] := '{}';
    v_event pyxp.batch_event;
    v_item jsonb;
    v_index integer := -1;
    v_ruleset record;
    v_problem record;
    v_message text;
    v_hint text;
    v_code text;
BEGIN
    IF pg_column_size(award_many.events) > 16777216 THEN  -- size before work
        RAISE EXCEPTION 'a batch holds at most 16 MiB of JSON, got % bytes', pg_column_size(award_many.events)
            USING ERRCODE = 'PX023', HINT = 'split the batch';
    ELSIF jsonb_typeof(award_many.events) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'events must be a JSON array of awards'
            USING ERRCODE = 'PX017',
                  HINT = '[{"wallet": ..., "action": ..., "idempotency_key": ..., "params": {...}, "context": {...}}]';
    ELSIF jsonb_array_length(award_many.events) > 10000 THEN
        RAISE EXCEPTION 'a batch holds at most 10000 events, got %', jsonb_array_length(award_many.events)
            USING ERRCODE = 'PX023', HINT = 'split the batch';
    END IF;

    -- 1. Validate and normalise each event, as pyxp.award does. One exception
    --    block for the whole loop (not one per event): it only adds the index.
    BEGIN
        FOR v_item IN SELECT e FROM jsonb_array_elements(award_many.events) e LOOP
            v_index := v_index + 1;
            IF jsonb_typeof(v_item) IS DISTINCT FROM 'object' THEN
                RAISE EXCEPTION 'not a JSON object' USING ERRCODE = 'PX017',
                    HINT = '{"wallet": ..., "action": ..., "idempotency_key": ..., "params": {...}}';
            END IF;
            v_event.event_index := v_index;
            -- Texts only: a number or object is not silently turned into its JSON text.
            v_event.wallet := pyxp.checked_wallet(
                CASE WHEN jsonb_typeof(v_item -> 'wallet') = 'string' THEN v_item ->> 'wallet' END);
            v_event.action := pyxp.checked_identifier('action',
                CASE WHEN jsonb_typeof(v_item -> 'action') = 'string' THEN v_item ->> 'action' END, 64);
            v_event.key := pyxp.checked_award_key(
                CASE WHEN jsonb_typeof(v_item -> 'idempotency_key') = 'string'
                     THEN v_item ->> 'idempotency_key' END);
            -- JSON null params/context: as if omitted (SQL NULL in pyxp.award).
            v_event.params := pyxp.checked_params(nullif(v_item -> 'params', 'null'::jsonb));
            v_event.metadata := pyxp.checked_context(nullif(v_item -> 'context', 'null'::jsonb));
            v_event.campaign_id := pyxp.context_column(v_event.metadata, 'campaign_id', 128);
            v_event.subject := pyxp.context_column(v_event.metadata, 'subject', 256);
            v_event.metadata := v_event.metadata || v_event.params;
            -- Same canonical inputs as pyxp.award: a batch replays single awards and back.
            v_event.inputs := jsonb_build_object('action', v_event.action, 'wallet', v_event.wallet,
                                                 'params', v_event.params);
            v_events := v_events || v_event;
        END LOOP;
    EXCEPTION WHEN SQLSTATE 'PX001' OR SQLSTATE 'PX004' OR SQLSTATE 'PX016' OR SQLSTATE 'PX017' THEN
        GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT, v_hint = PG_EXCEPTION_HINT, v_code = RETURNED_SQLSTATE;
        RAISE EXCEPTION 'event %: %', v_index, v_message
            USING ERRCODE = v_code, HINT = coalesce(nullif(v_hint, ''), 'see README: Error codes');
    END;

    -- 2. Within the batch, a repeated key must carry the same inputs.
    SELECT e.event_index, e.key, f.event_index AS first_index INTO v_problem
      FROM (SELECT e.*, min(e.event_index) OVER (PARTITION BY e.key) AS first_index FROM unnest(v_events) e) e
      JOIN unnest(v_events) f ON f.event_index = e.first_index
     WHERE e.event_index <> e.first_index AND e.inputs IS DISTINCT FROM f.inputs
     ORDER BY e.event_index LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'event %: idempotency key % was already used with other inputs (event %)',
                        v_problem.event_index, quote_literal(v_problem.key), v_problem.first_index
            USING ERRCODE = 'PX010', HINT = 'repeat a call with exactly the same inputs to get its result again';
    END IF;

    -- 3. Plan and write the first occurrence of each key; one result row per
    --    event, in event order: its rows, or its first occurrence's (replayed).
    SELECT * INTO v_ruleset FROM pyxp.writing_ruleset();
    RETURN QUERY
        WITH firsts AS (
            SELECT e.event_index, min(e.event_index) OVER (PARTITION BY e.key) AS first_index
              FROM unnest(v_events) e
        ), written AS (
            SELECT * FROM pyxp.append_rows(
                v_ruleset.ruleset_id, v_ruleset.balance_floor, v_ruleset.timezone, v_ruleset.has_caps,
                pyxp.planned_awards(v_ruleset.ruleset_id,
                                    ARRAY(SELECT e FROM unnest(v_events) e
                                            JOIN firsts f ON f.event_index = e.event_index
                                           WHERE f.first_index = f.event_index
                                           ORDER BY e.event_index), true),
                true)
        )
        SELECT f.event_index, w.transaction_id, w.user_wallet, w.transaction_type, w.xp_amount, w.xp_requested,
               w.total_xp, w.current_level, w.xp_to_next_level, w.previous_level,
               w.replayed OR f.event_index <> f.first_index
          FROM firsts f JOIN written w ON w.event_index = f.first_index
         ORDER BY f.event_index, w.transaction_id;
END
$$;

SELECT pyxp.rebuild_period_columns(coalesce((SELECT r.timezone FROM pyxp.rulesets r WHERE r.is_active), 'UTC'));

REVOKE ALL ON pyxp.xp_cap_usage FROM PUBLIC;
GRANT SELECT ON pyxp.xp_cap_usage TO pyxp_reader;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pyxp FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    pyxp.leaderboard(integer, integer, text, timestamptz),
    pyxp.wallet_rank(text, text, timestamptz),
    pyxp.period_xp(text, text, timestamptz)
TO pyxp_writer, pyxp_reader;

COMMENT ON FUNCTION pyxp.append_rows(bigint, bigint, text, boolean, pyxp.pending_row[], boolean) IS
    'internal: THE writer: locks the wallets, replays claimed generic awards, applies floor and caps, appends every ledger row and updates each balance once.';
COMMENT ON FUNCTION pyxp.checked_period(text) IS 'internal: a period name normalised (all, day, week, month, year), or PX026.';
COMMENT ON FUNCTION pyxp.period_bounds(text, timestamptz, text) IS
    'internal: start and end of the calendar period of a kind containing an instant, in a zone.';
COMMENT ON FUNCTION pyxp.active_timezone() IS 'internal: the active ruleset''s timezone, periods are counted in it.';
COMMENT ON FUNCTION pyxp.ledger_period_totals(timestamptz, timestamptz) IS
    'internal: every wallet''s XP in a time range, from the ledger (reversals in their original''s period).';
COMMENT ON FUNCTION pyxp.period_cached(text, timestamptz) IS
    'internal: whether the balances'' period columns hold a period''s whole board.';
COMMENT ON FUNCTION pyxp.leaderboard(integer, integer, text, timestamptz) IS
    'API: the leaderboard of all time or of the day, week, month or year containing at: rank, wallet, total, level, period_xp.';
COMMENT ON FUNCTION pyxp.wallet_rank(text, text, timestamptz) IS
    'API: a wallet''s rank on a leaderboard (all time or a period), NULL when it is not on it.';
COMMENT ON FUNCTION pyxp.period_xp(text, text, timestamptz) IS
    'API: the XP a wallet earned in the day, week, month or year containing at (0 if none).';
COMMENT ON FUNCTION pyxp.cap_allowance(text, text) IS 'internal: the allowance a cap counts in, its group''s or its rule''s.';
COMMENT ON FUNCTION pyxp.freed_allowance(bigint) IS
    'internal: what a reversal frees of a capped allowance, in the period of the gain it reverses.';
COMMENT ON FUNCTION pyxp.capped_rows(pyxp.pending_row[], text) IS
    'internal: caps applied to the writer''s rows: gains cut to what is left of their allowance.';
COMMENT ON FUNCTION pyxp.ledger_latest_periods(text) IS
    'internal: from the ledger, each wallet''s latest period of each kind and its XP there.';
COMMENT ON FUNCTION pyxp.ledger_cap_usage() IS
    'internal: from the ledger, what each capped allowance used per period, and its cap.';
COMMENT ON FUNCTION pyxp.rebuild_period_columns(text) IS
    'internal: re-derives every balance''s latest periods and their XP from the ledger, in a zone.';
COMMENT ON FUNCTION pyxp.check_ruleset_definition(jsonb) IS 'internal: PX024 for a malformed compiled ruleset.';
COMMENT ON FUNCTION pyxp.install_ruleset(jsonb, text) IS
    'internal: installs and activates a compiled ruleset (pyxp rules apply). Owner only.';
COMMENT ON FUNCTION pyxp.writing_ruleset() IS 'internal: READ COMMITTED check, the ruleset-switch lock, the active ruleset and floor.';
COMMENT ON FUNCTION pyxp.post_award(text, jsonb, text, text, text, text[], jsonb, text, text, jsonb, integer, text) IS
    'internal: claims a flow''s key, resolves its event''s active rules and hands their rows to the writer.';
COMMENT ON FUNCTION pyxp.award(text, text, text, jsonb, jsonb) IS
    'API: awards the active rule `action` to `wallet` once per idempotency_key; params = formula inputs, context = free JSON kept in metadata. Returns one row per ledger row (replayed = true on a retry).';
COMMENT ON FUNCTION pyxp.reverse_transaction(bigint, text) IS
    'API: appends the compensating row of a ledger row (once; the same reason again replays).';
COMMENT ON FUNCTION pyxp.audit() IS
    'API: one row per inconsistency between ledger, balances, levels, rules and registrations; none when healthy.';
COMMENT ON FUNCTION pyxp.award_many(jsonb) IS
    'API: many generic awards (a JSON array of {wallet, action, idempotency_key, params, context}) in one transaction: all apply or none; errors name the event index. At most 10000 events and 16 MiB.';
COMMENT ON FUNCTION pyxp.writing_ruleset() IS 'internal: READ COMMITTED check, the ruleset-switch lock, the active ruleset and floor.';

RESET ROLE;
