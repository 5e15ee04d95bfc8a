-- 0044: what pyxp.audit_since_checkpoint and pyxp.record_audit_checkpoint
-- read since a checkpoint is probed, as sql/07_verification.sql always
-- said: each new generic row's claim and each new flow's or reversal's
-- request by its key (a join hashed every claim and every request ever
-- made), and the wallets with new rows in key order (in a hash's order,
-- each wallet's balance, checkpoint and rows were random reads). At 10M
-- rows, 150,000 new ones of 139,318 wallets: 4.1 s -> 2.7 s. And
-- record_audit_checkpoint, an INSERT that runs no parallel workers, walks
-- the wallets in one call instead of eight slices one after the other.
SET LOCAL ROLE pyxp_owner;

-- The wallets a verification walks, each from a position.
-- p_since_checkpoint false: every wallet with a balance, from its first row,
-- or from its opening when its first rows were archived.
-- true (callers pass it only when a checkpoint exists): the wallets with a
-- row written since the last checkpoint (found by the feed index: feed_xid
-- >= the checkpoint's snapshot xmin), from their checkpoint's position, each
-- looked up by its key (a probe per wallet, never a pass over a table).
-- Callers plan it with p_since_checkpoint known (force_custom_plan), so
-- only one branch is planned.
CREATE OR REPLACE FUNCTION pyxp.audited_wallets(p_since_checkpoint boolean)
RETURNS SETOF pyxp.audited_wallet
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT w.* FROM pyxp.wallets_between(NULL, NULL) w
     WHERE NOT p_since_checkpoint
    UNION ALL
    SELECT w.user_wallet, coalesce(c.wallet_seq, o.wallet_seq, 0), coalesce(c.total_xp, o.total_xp, 0),
           c.wallet_seq, c.total_xp,
           b.total_xp, b.current_level, b.xp_to_next_level, b.last_wallet_seq,
           b.day_start, b.day_xp, b.week_start, b.week_xp, b.month_start, b.month_xp, b.year_start, b.year_xp,
           o.wallet_seq, o.total_xp, o.last_at, o.day_start, o.day_xp, o.week_start, o.week_xp,
           o.month_start, o.month_xp, o.year_start, o.year_xp, o.archived_rows
      -- in key order, so that the probes of the balances, checkpoints and
      -- ledger that follow read each index page once (0044: in a hash's
      -- order, 139,318 wallets of 1M read 430,000 pages outside shared
      -- buffers, 3.2 s; in key order 91,000, 1.4 s)
      FROM (SELECT t.user_wallet FROM pyxp.xp_transactions t
             WHERE t.feed_xid >= pyxp.last_checkpoint_xmin()
             GROUP BY t.user_wallet ORDER BY t.user_wallet) w
      LEFT JOIN LATERAL (SELECT b.* FROM pyxp.xp_balances b WHERE b.user_wallet = w.user_wallet LIMIT 1) b ON true
      LEFT JOIN LATERAL (SELECT c.* FROM pyxp.xp_wallet_checkpoints c WHERE c.user_wallet = w.user_wallet LIMIT 1) c
             ON true
      LEFT JOIN LATERAL (SELECT o.* FROM pyxp.xp_wallet_openings o WHERE o.user_wallet = w.user_wallet LIMIT 1) o
             ON true
     WHERE p_since_checkpoint
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
      -- (a probe of the claims' key per row, LATERAL ... LIMIT 1: as a join,
      -- the planner, which cannot tell how many rows are new, hashed every
      -- claim, 10M of them for 150,000 new rows: the checks since took
      -- 2.0 s, now 1.3 s; 0044)
      LEFT JOIN LATERAL (
             SELECT c.key_hash, c.transaction_id, c.created_at FROM pyxp.xp_award_claims c
              WHERE c.key_hash = encode(substr(sha256(convert_to(t.idempotency_key, 'UTF8')), 1, 16), 'hex')::uuid
              LIMIT 1) c ON true  -- pyxp.key_hash, spelled out (as above)
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
    -- The full audit: the rows of flows and reversals against every request
    -- (an anti join); since a checkpoint, each new row probes its request's
    -- key (LATERAL ... LIMIT 1, as the claims above: a join hashed every
    -- request ever made, one per flow call, at every checkpoint; 0044).
    SELECT 'request_missing', t.user_wallet, t.id,
           format('no xp_requests row for key %s', quote_literal(t.idempotency_key))
      FROM pyxp.audited_rows(p_since_checkpoint) t
     WHERE NOT p_since_checkpoint AND t.request_digest IS NULL
       AND NOT EXISTS (SELECT FROM pyxp.xp_requests q WHERE q.key_hash = pyxp.key_hash(t.idempotency_key))
    UNION ALL
    SELECT 'request_missing', t.user_wallet, t.id,
           format('no xp_requests row for key %s', quote_literal(t.idempotency_key))
      FROM pyxp.audited_rows(p_since_checkpoint) t
      LEFT JOIN LATERAL (SELECT q.key_hash FROM pyxp.xp_requests q
                          WHERE q.key_hash = pyxp.key_hash(t.idempotency_key) LIMIT 1) q ON true
     WHERE p_since_checkpoint AND t.request_digest IS NULL AND q.key_hash IS NULL
$$;

-- Public: verifies what was written since the last checkpoint (as
-- pyxp.audit_since_checkpoint) and, when that is clean, records a new
-- checkpoint: each wallet verified gets its position (last wallet_seq and
-- balance). One statement, so the verification and the positions it records
-- read one snapshot; rows committed meanwhile are the next checkpoint's.
-- Refused with PX028 (nothing recorded) when anything is inconsistent: run
-- pyxp.audit_since_checkpoint() to list it. Checkpoints are taken one at a
-- time (EXCLUSIVE lock on xp_audit_checkpoints: awards and readers do not
-- wait for it).
CREATE OR REPLACE FUNCTION pyxp.record_audit_checkpoint(OUT checkpoint_id bigint, OUT wallets_verified bigint,
                                             OUT rows_verified bigint, OUT created_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET jit = off
SET plan_cache_mode = force_custom_plan
AS $$
#variable_conflict use_column
DECLARE
    v_problems bigint;
    v_first text;  -- the first finding, for the error's detail
    v_since boolean;
BEGIN
    PERFORM pyxp.follow_timeline();  -- (a failover or a point-in-time recovery: the ids move past the history left, 0033)
    PERFORM pyxp.require_ledger_cluster();  -- (PX032: its snapshot's xmin would be another cluster's, 0032)
    LOCK TABLE pyxp.xp_audit_checkpoints IN EXCLUSIVE MODE;
    v_since := pyxp.last_checkpoint_xmin() IS NOT NULL;
    WITH problems AS MATERIALIZED (
        -- one walk, not pyxp.chain_problems' slices: an INSERT runs no
        -- parallel workers, and each slice finds its wallets again (0044:
        -- 4.52 s -> 4.29 s for 100,000 new rows at the default size)
        SELECT c.check_name, c.user_wallet, c.detail FROM pyxp.chain_problems_between(v_since, NULL, NULL) c
        UNION ALL
        SELECT r.check_name, r.user_wallet, r.detail FROM pyxp.row_problems(v_since) r
    ), verified AS MATERIALIZED (
        SELECT w.user_wallet, w.last_wallet_seq, w.total_xp, w.from_seq
          FROM pyxp.audited_wallets(v_since) w
         WHERE w.last_wallet_seq > 0 AND w.last_wallet_seq > w.from_seq
    ), header AS (
        INSERT INTO pyxp.xp_audit_checkpoints AS k (snapshot_xmin, wallets_verified, rows_verified)
        SELECT pyxp.ledger_xid(pg_snapshot_xmin(pg_current_snapshot())), count(*),
               coalesce(sum(v.last_wallet_seq - v.from_seq), 0)
          FROM verified v
        HAVING NOT EXISTS (SELECT FROM problems)
        RETURNING k.checkpoint_id, k.wallets_verified, k.rows_verified, k.created_at
    ), positions AS (
        INSERT INTO pyxp.xp_wallet_checkpoints AS c (user_wallet, wallet_seq, total_xp, checkpoint_id)
        SELECT v.user_wallet, v.last_wallet_seq, v.total_xp, h.checkpoint_id
          FROM verified v CROSS JOIN header h
        ON CONFLICT (user_wallet) DO UPDATE
           SET wallet_seq = excluded.wallet_seq, total_xp = excluded.total_xp, checkpoint_id = excluded.checkpoint_id
    )
    SELECT h.checkpoint_id, h.wallets_verified, h.rows_verified, h.created_at,
           (SELECT count(*) FROM problems),
           (SELECT format('%s %s: %s', p.check_name, coalesce(p.user_wallet, ''), p.detail)
              FROM problems p ORDER BY p.check_name, p.user_wallet LIMIT 1)
      INTO checkpoint_id, wallets_verified, rows_verified, created_at, v_problems, v_first
      FROM (SELECT 1) one LEFT JOIN header h ON true;
    PERFORM pyxp.ledger_unmoved();  -- (40001 after a read older than an archive: nothing recorded)
    IF v_problems > 0 THEN
        RAISE EXCEPTION 'the ledger since the last checkpoint has % inconsistencies; no checkpoint recorded',
                        v_problems
            USING ERRCODE = 'PX028',
                  DETAIL = 'first: ' || v_first,
                  HINT = 'SELECT * FROM pyxp.audit_since_checkpoint() lists them';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION pyxp.schema_revision()
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$ SELECT '0044' $$;

RESET ROLE;
