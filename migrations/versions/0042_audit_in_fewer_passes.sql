-- 0042: the audit's checks of single rows (pyxp.row_problems) read the
-- ledger in fewer passes. Each row is checked against its rule in one pass
-- (rule_missing, rule_mismatch, amount_mismatch, inputs_mismatch: three
-- passes up to 0041), and the ids held twice are grouped once (a parallel
-- plan grouped every id in each of its three processes). The findings are
-- 0041's but one: a row whose rule cannot be evaluated on its metadata (an
-- input edited to a string) is reported (amount_mismatch) where audit()
-- failed with 22P02 without naming it (pyxp.audited_rule_amount).
SET LOCAL ROLE pyxp_owner;

-- What the audit evaluates a rule's linear form with (pyxp.row_problems):
-- pyxp.rule_amount on every row whose inputs are what the writer stores,
-- JSON numbers (PX004), and this on the others. An owner's edit can make an
-- input, or a coefficient, something rule_amount cannot read ("abc", an
-- object): it raised (22P02, 22023) and audit() failed without naming the
-- row (a hostile test, 0042). Here such a value gives NaN, which no amount
-- equals (amount_mismatch); what rule_amount reads (pyxp.readable_number)
-- it evaluates, as before.
CREATE FUNCTION pyxp.readable_number(p_value jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    -- a number, JSON null or nothing (no term), or a string numeric reads:
    -- spaces, a sign, an exponent of at most four digits
    SELECT CASE coalesce(jsonb_typeof(p_value), 'null')
               WHEN 'number' THEN true
               WHEN 'null' THEN true
               WHEN 'string'
               THEN p_value #>> '{}'
                    ~ '^[ \t\n\r\v\f]*[+-]?([0-9]+([.][0-9]*)?|[.][0-9]+)([eE][+-]?[0-9]{1,4})?[ \t\n\r\v\f]*$'
               ELSE false END
$$;

CREATE FUNCTION pyxp.audited_rule_amount(p_constant numeric, p_coefficients jsonb, p_params jsonb)
RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN jsonb_typeof(p_coefficients) IS DISTINCT FROM 'object' THEN 'NaN'::numeric
                WHEN EXISTS (SELECT FROM jsonb_each(p_coefficients) c
                              WHERE NOT (pyxp.readable_number(c.value) AND pyxp.readable_number(p_params -> c.key)))
                THEN 'NaN'
                ELSE pyxp.rule_amount(p_constant, p_coefficients, p_params) END
$$;

-- A rule's test of a row's metadata for inputs rule_amount may not read
-- (pyxp.audited_rule_amount reads those rows): lax $ ? (any input of the
-- rule is neither a number nor null). NULL when the coefficients are not an
-- object of numbers under names a writer accepts (every row is read the
-- slow way). Built once per rule.
CREATE FUNCTION pyxp.odd_inputs_path(p_coefficients jsonb)
RETURNS jsonpath
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN jsonb_typeof(p_coefficients) = 'object' AND p_coefficients <> '{}'
                 AND NOT EXISTS (SELECT FROM jsonb_each(p_coefficients) c
                                  WHERE jsonb_typeof(c.value) <> 'number'
                                     OR c.key !~ '^[A-Za-z_$][A-Za-z0-9_$]*$')
           THEN ('lax $ ? (' || (SELECT string_agg(format('(@.%1$s.type() != "number" && @.%1$s.type() != "null")',
                                                          to_json(k.key)), ' || ')
                                   FROM jsonb_object_keys(p_coefficients) k(key)) || ')')::jsonpath END
$$;

REVOKE ALL ON FUNCTION pyxp.readable_number(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION pyxp.audited_rule_amount(numeric, jsonb, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION pyxp.odd_inputs_path(jsonb) FROM PUBLIC;
COMMENT ON FUNCTION pyxp.readable_number(jsonb) IS
    'internal: whether rule_amount reads a coefficient or an input (the audit''s guard).';
COMMENT ON FUNCTION pyxp.audited_rule_amount(numeric, jsonb, jsonb) IS
    'internal: rule_amount for the audit, NaN where rule_amount would raise (an edited input).';
COMMENT ON FUNCTION pyxp.odd_inputs_path(jsonb) IS
    'internal: a rule''s jsonpath test for inputs that are neither numbers nor null (the audit''s slow path).';

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
    -- not all numbers is read the slow way. The WHERE is what every row is checked
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
                        ELSE format('%s XP (requested %s) where rule %s gives %s', g.xp_amount,
                                    coalesce(g.xp_requested::text, 'none'), g.rule_id, g.formula) END
             WHERE g.rule_found IS NOT NULL
               AND (NOT g.digest_ok
                    OR coalesce(g.xp_requested, g.xp_amount) <> g.formula
                    OR (g.xp_requested IS NOT NULL
                        AND NOT (g.xp_amount BETWEEN least(0, g.xp_requested) AND greatest(0, g.xp_requested))))
         ) f(check_name, detail)
     WHERE (g.rule_id IS NOT NULL AND (g.rule_found IS NULL OR g.action <> g.transaction_type))
        OR (g.rule_id IS NULL AND g.reverses IS NULL
            AND NOT (g.transaction_type = 'RULES_ADJUSTMENT' AND g.idempotency_key LIKE 'rules.adjustment:%'
                     AND g.metadata ->> 'ruleset_id' = split_part(g.idempotency_key, ':', 2)))
        OR (g.rule_found IS NOT NULL
            AND (NOT g.digest_ok
                 OR coalesce(g.xp_requested, g.xp_amount) <> g.formula
                 OR (g.xp_requested IS NOT NULL
                     AND NOT (g.xp_amount BETWEEN least(0, g.xp_requested) AND greatest(0, g.xp_requested)))))
    UNION ALL
    SELECT 'request_missing', t.user_wallet, t.id,
           format('no xp_requests row for key %s', quote_literal(t.idempotency_key))
      FROM pyxp.audited_rows(p_since_checkpoint) t
     WHERE t.request_digest IS NULL
       AND NOT EXISTS (SELECT FROM pyxp.xp_requests q WHERE q.key_hash = pyxp.key_hash(t.idempotency_key))
$$;

CREATE OR REPLACE FUNCTION pyxp.schema_revision()
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$ SELECT '0042' $$;

RESET ROLE;
