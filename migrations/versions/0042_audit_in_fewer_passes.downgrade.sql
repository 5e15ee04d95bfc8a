-- 0042's downgrade: pyxp.row_problems as at 0041; no pyxp.audited_rule_amount, readable_number, odd_inputs_path.
SET LOCAL ROLE pyxp_owner;

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
    -- row; audit() said nothing). One grouping of the ids (parallel workers
    -- share it), the full audit only.
    SELECT 'duplicate_id', t.user_wallet, t.id, format('transaction id %s names %s rows', t.id, d.n)
      FROM (SELECT x.id, count(*) AS n FROM pyxp.xp_transactions x
             WHERE NOT p_since_checkpoint GROUP BY x.id HAVING count(*) > 1) d
      JOIN pyxp.xp_transactions t ON t.id = d.id
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
    SELECT CASE WHEN ru.rule_id IS NULL THEN 'rule_missing' ELSE 'rule_mismatch' END, t.user_wallet, t.id,
           CASE WHEN ru.rule_id IS NULL THEN format('rule %s of this row does not exist', t.rule_id)
                ELSE format('transaction_type %s but rule %s is %s', t.transaction_type, ru.rule_id, ru.action) END
      FROM pyxp.audited_rows(p_since_checkpoint) t
      LEFT JOIN pyxp.rules ru ON ru.rule_id = t.rule_id
     WHERE t.rule_id IS NOT NULL AND (ru.rule_id IS NULL OR ru.action <> t.transaction_type)
    UNION ALL
    -- A row without a rule is a reversal or a retroactive adjustment
    -- (pyxp.apply_rules_retroactively: its key and metadata name the
    -- ruleset applied). 0029, a hostile test: a 'GIFT' row of 5,000 XP, the
    -- balances made to match, was clean.
    SELECT 'rule_missing', t.user_wallet, t.id,
           format('%s row without a rule, neither a reversal nor a retroactive adjustment', t.transaction_type)
      FROM pyxp.audited_rows(p_since_checkpoint) t
     WHERE t.rule_id IS NULL AND t.reverses IS NULL
       AND NOT (t.transaction_type = 'RULES_ADJUSTMENT' AND t.idempotency_key LIKE 'rules.adjustment:%'
                AND t.metadata ->> 'ruleset_id' = split_part(t.idempotency_key, ':', 2))
    UNION ALL
    -- A generic award's row against what its call gave (0029, a hostile
    -- test: an amount raised, or a row moved to another wallet, with the
    -- balances made to match, was clean): its amount is its rule's formula
    -- on the params its metadata holds (its rule's inputs by name:
    -- pyxp.award), or a cut of it (a cap: xp_requested keeps the formula's,
    -- and what applied lies between 0 and it; a balance floor the same for
    -- a penalty); and, for a rule without inputs, its inputs' digest is that
    -- of its action and wallet (params {}). A rule with inputs is left out
    -- of the digest's check: a ledger carried from an early revision holds
    -- digests of params the metadata does not spell alike (300.0 for 300:
    -- test_migrations' ledger of 0005).
    -- pyxp.inputs_digest spelled out and compared as bytes (as the claims'
    -- hashes above), on the text jsonb_build_object('action', ..., 'params',
    -- '{}', 'wallet', ...) prints, written out (building the jsonb cost twice
    -- as much: 5.6 s against 2.7 s at 1M rows in one process); the formula
    -- of a rule without inputs is its rounded constant (the function call
    -- cost 1.7 s against 0.7 s).
    SELECT CASE WHEN g.digest_ok THEN 'amount_mismatch' ELSE 'inputs_mismatch' END, g.user_wallet, g.id,
           CASE WHEN g.digest_ok
                THEN format('%s XP (requested %s) where rule %s gives %s', g.xp_amount,
                            coalesce(g.xp_requested::text, 'none'), g.rule_id, g.formula)
                ELSE format('its inputs'' digest %s is not that of %s', g.request_digest, g.inputs) END
      FROM (SELECT t.id, t.user_wallet, t.xp_amount, t.xp_requested, t.rule_id, t.request_digest, i.inputs,
                   t.request_digest IS NULL OR ru.xp_coefficients <> '{}'
                   OR substr(sha256(convert_to(i.inputs, 'UTF8')), 1, 8) = int8send(t.request_digest) AS digest_ok,
                   CASE WHEN ru.xp_coefficients = '{}' THEN round(ru.xp_constant)
                        ELSE pyxp.rule_amount(ru.xp_constant, ru.xp_coefficients, t.metadata) END AS formula
              FROM pyxp.audited_rows(p_since_checkpoint) t
              JOIN pyxp.rules ru ON ru.rule_id = t.rule_id
             CROSS JOIN LATERAL (
                    SELECT '{"action": ' || to_json(t.transaction_type)::text || ', "params": {}, "wallet": '
                           || to_json(t.user_wallet)::text || '}' AS inputs) i
            ) g
     WHERE NOT g.digest_ok
        OR coalesce(g.xp_requested, g.xp_amount) <> g.formula
        OR (g.xp_requested IS NOT NULL
            AND NOT (g.xp_amount BETWEEN least(0, g.xp_requested) AND greatest(0, g.xp_requested)))
    UNION ALL
    SELECT 'request_missing', t.user_wallet, t.id,
           format('no xp_requests row for key %s', quote_literal(t.idempotency_key))
      FROM pyxp.audited_rows(p_since_checkpoint) t
     WHERE t.request_digest IS NULL
       AND NOT EXISTS (SELECT FROM pyxp.xp_requests q WHERE q.key_hash = pyxp.key_hash(t.idempotency_key))
$$;

-- Every inconsistency between the ledger, the balances and the rules, one
-- row each; no rows when healthy. What it proves: each wallet's rows are
-- numbered 1, 2, ... and each row's balance_after chains from the previous
-- one, each balance equals the sum of its wallet's rows and holds its last
-- wallet_seq, levels match the active curve, the audit checkpoints match the
-- ledger (pyxp.chain_problems); reversals mirror what they reverse, rows name
-- the action of an existing rule, a flow's or reversal's rows have their
-- request (pyxp.row_problems) and a request its rows or its kept inputs;
-- the rank buckets count the balances they hold (pyxp.rank_problems, one
-- of pyxp.unsliced_problems' checks); exactly one ruleset is active, no
-- ledger row lacks its balance, total_moderations counts the votes
-- recorded, the balances' period columns and the caps' usage match the ledger and no cap
-- is exceeded, a registration is granted exactly when its client email was
-- onboarded, identities stored before 0002 read the same today.
-- (jit off: compiling the plan cost more than running it, 100 ms vs 6 ms on a
-- small ledger; on 10M rows the scans dominate either way.
-- parallel_tuple_cost 0: the checks' scans and joins of the whole ledger
-- may run in parallel workers (the helpers are PARALLEL SAFE), but a check
-- whose filter compares two expressions is estimated to pass most rows, and
-- sending those through a Gather priced the parallel plan out; the checks
-- return only findings, none on a healthy ledger. At 10M rows the claims'
-- check takes 18 s with workers against 26-31 s without. The chain walk
-- has workers of its own: pyxp.chain_problems' slices, with the unsliced

DROP FUNCTION pyxp.odd_inputs_path(jsonb);
DROP FUNCTION pyxp.audited_rule_amount(numeric, jsonb, jsonb);
DROP FUNCTION pyxp.readable_number(jsonb);

CREATE OR REPLACE FUNCTION pyxp.schema_revision()
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$ SELECT '0041' $$;

RESET ROLE;
