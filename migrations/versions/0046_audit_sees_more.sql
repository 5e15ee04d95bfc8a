-- 0046: the audit sees what a hostile test (helper-75) changed unseen, as
-- an owner: the key or inputs a request keeps (an archived submission's
-- wallet edited: the completer's outcome was refused, another wallet paid);
-- a RULES_ADJUSTMENT row naming a ruleset never applied retroactively, or
-- another wallet (a forged 5,000 XP); a feed position beyond the next
-- transaction id (a balance's last_feed_xid: the wallet's rows were held
-- back from the feed; a checkpoint's snapshot_xmin: the rows since were
-- hidden from audit_since_checkpoint, and sealed by the next checkpoint);
-- rank counts in writers' slots of a bucket with no start.
SET LOCAL ROLE pyxp_owner;

-- Feed positions no transaction has reached (0046, helper-75): a row's
-- feed_xid, a balance's last_feed_xid (which the wallet's next rows are
-- raised to: sql/11_changes.sql) or a checkpoint's snapshot_xmin beyond
-- this cluster's next transaction id (the snapshot's xmax, or past the
-- reader's own id when it has written: its rows and balances are visible
-- to it, and its id may be at or above the xmax; in the ledger's ids:
-- pyxp.ledger_xid). The writer stores none: a row's group is
-- its writer's id or its wallet's previous row's, a checkpoint's the xmin of
-- the snapshot it read. An owner raising one holds a wallet's later rows
-- back from the change feed until the ids reach it (a raise of 100,000: they
-- were left out of pyxp.changes, audit() clean), or hides the rows since a
-- checkpoint from audit_since_checkpoint, which a record_audit_checkpoint
-- then sealed. Only on the ledger's own cluster: a subscriber holds its
-- publisher's ids, and a copy not adopted yet another cluster's
-- (sql/14_copies.sql). A copy that keeps this cluster's name (a physical
-- clone promoted to run on its own, rows replicated back after a failback)
-- is reported until adopted: its feed would hand out groups below its
-- rows' (pyxp db upgrade adopts it). The rows are one range of the feed index; the
-- balances a pass over them (the full audit only). A raise below the next
-- id is not seen (README "What the audit proves").
CREATE FUNCTION pyxp.feed_problems(p_since_checkpoint boolean)
RETURNS TABLE (check_name text, user_wallet text, transaction_id bigint, detail text)
LANGUAGE sql STABLE PARALLEL SAFE  -- (without it, every check of audit() ran in one process: 4.8 -> 8.4 s at 1M rows)
AS $$
    WITH next AS MATERIALIZED (
        SELECT pyxp.ledger_xid(greatest(pg_snapshot_xmax(pg_current_snapshot()),  -- (greatest skips a NULL: no id)
                                        (pg_current_xact_id_if_assigned()::text::numeric + 1)::text::xid8)) AS xid
         WHERE CASE WHEN coalesce(pyxp.ledger_cluster(), 0) = 0 THEN false
                    ELSE pyxp.ledger_cluster() = (pg_control_system()).system_identifier END
    )
    SELECT 'feed_mismatch', t.user_wallet, t.id,
           format('feed_xid %s, beyond the next transaction id %s (an edit, or a copy not adopted: '
                  'pyxp db upgrade adopts it)', t.feed_xid, n.xid)
      FROM next n JOIN pyxp.xp_transactions t ON t.feed_xid >= n.xid
    UNION ALL
    SELECT 'feed_mismatch', b.user_wallet, NULL,
           format('xp_balances.last_feed_xid %s, beyond the next transaction id %s (an edit, or a copy not '
                  'adopted: pyxp db upgrade adopts it)', b.last_feed_xid, n.xid)
      FROM next n JOIN pyxp.xp_balances b ON b.last_feed_xid >= n.xid
     WHERE NOT p_since_checkpoint
    UNION ALL
    SELECT 'feed_mismatch', NULL, NULL,
           format('audit checkpoint %s read from snapshot xmin %s, beyond the next transaction id %s (an edit, '
                  'or a copy not adopted: pyxp db upgrade adopts it)', k.checkpoint_id, k.snapshot_xmin, n.xid)
      FROM next n JOIN pyxp.xp_audit_checkpoints k ON k.snapshot_xmin > n.xid
$$;
REVOKE ALL ON FUNCTION pyxp.feed_problems(boolean) FROM PUBLIC;
COMMENT ON FUNCTION pyxp.feed_problems(boolean) IS
    'internal: feed positions (rows, balances, checkpoints) beyond the next transaction id (for pyxp.audit).';

CREATE OR REPLACE FUNCTION pyxp.rank_problems()
RETURNS TABLE (check_name text, user_wallet text, transaction_id bigint, detail text)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT 'rank_count_mismatch', NULL::text, NULL::bigint,
           format('rank bucket from (%s XP, %s) counts %s wallets, holds %s',
                  -e.neg_xp, quote_literal(e.wallet), e.wallets, n.held - coalesce(u.uncounted, 0))
      FROM pyxp.rank_buckets() e
     CROSS JOIN LATERAL (SELECT count(*) AS held
                           FROM pyxp.board_range(-e.neg_xp, e.wallet, -e.next_neg_xp, e.next_wallet)) n
      LEFT JOIN (SELECT k.neg_xp, k.wallet, count(*) AS uncounted
                   FROM pyxp.xp_balances b CROSS JOIN LATERAL pyxp.rank_bucket_of(b.total_xp, b.user_wallet) k
                  WHERE NOT b.ranked
                  GROUP BY k.neg_xp, k.wallet) u ON u.neg_xp = e.neg_xp AND u.wallet = e.wallet
     WHERE n.held - coalesce(u.uncounted, 0) <> e.wallets
    UNION ALL
    SELECT 'rank_count_mismatch', NULL, NULL, 'no rank bucket starts before every balance'
     WHERE NOT EXISTS (SELECT FROM pyxp.xp_rank_counts c
                        WHERE c.neg_xp = -9223372036854775807 AND c.wallet = '' AND c.slot = 0)
    UNION ALL
    SELECT 'rank_count_mismatch', b.user_wallet, NULL, 'balance not counted in its rank bucket (ranked = false)'
      FROM pyxp.xp_balances b WHERE NOT b.ranked
    UNION ALL
    -- Counts in writers' slots of no bucket: a writer counts a balance in the
    -- bucket whose start (its slot 0 row) holds it, so every start a slot
    -- names has its slot 0 row. Counts without one are a bucket the writers
    -- never see (pyxp.rank_bucket_of reads slot 0): its balances' next moves
    -- are counted in the bucket before, and pyxp.rebalance_rank_buckets drops
    -- it (0046, helper-75: such a start, with the counts of the bucket before
    -- split to match, was clean until an award moved a balance past it).
    SELECT 'rank_count_mismatch', NULL, NULL,
           format('rank counts from (%s XP, %s) in slots %s (%s wallets): no bucket starts there', -c.neg_xp,
                  quote_literal(c.wallet), string_agg(c.slot::text, ', ' ORDER BY c.slot), sum(c.wallets))
      FROM pyxp.xp_rank_counts c
     WHERE c.slot <> 0
       AND NOT EXISTS (SELECT FROM pyxp.xp_rank_counts s WHERE s.neg_xp = c.neg_xp AND s.wallet = c.wallet AND s.slot = 0)
     GROUP BY c.neg_xp, c.wallet
    HAVING sum(c.wallets) <> 0
    UNION ALL
    -- The period boards: each bucket (over its slots) against the ranked
    -- balances it holds, placed as pyxp.period_bucket_of places them: a
    -- value never cut has every holder in its one bucket, ''; a value cut
    -- into buckets has, from each start ('' included) up to the next, the
    -- holders in between. The first are counted in one pass over the
    -- balances (a hash aggregate per kind), the others one index-only range
    -- of the board's index per bucket (pyxp.period_board_range), less the
    -- unranked balances in it (xp_balances_unranked, few), instead of a
    -- probe per balance (16 s of 0016's audit at 1M balances; the whole check
    -- took 30 s there, 2.2 s now).
    SELECT 'rank_count_mismatch', NULL, NULL,
           format('%s board from %s: bucket of %s XP from %s counts %s wallets, holds %s',
                  coalesce(c.period, h.period), coalesce(c.period_start, h.period_start),
                  coalesce(c.period_xp, h.period_xp), quote_literal(coalesce(c.wallet_start, h.wallet_start)),
                  coalesce(c.counted, 0), coalesce(h.held, 0))
      FROM (SELECT c.period, c.period_start, c.period_xp, c.wallet_start, sum(c.wallets) AS counted
              FROM pyxp.xp_period_rank_counts c GROUP BY c.period, c.period_start, c.period_xp, c.wallet_start) c
      FULL JOIN (
            SELECT v.period, v.period_start, v.period_xp, '' AS wallet_start, v.held
              FROM (SELECT CASE WHEN GROUPING(b.day_start) = 0 THEN 'day' WHEN GROUPING(b.week_start) = 0 THEN 'week'
                                WHEN GROUPING(b.month_start) = 0 THEN 'month' ELSE 'year' END AS period,
                           coalesce(b.day_start, b.week_start, b.month_start, b.year_start) AS period_start,
                           coalesce(b.day_xp, b.week_xp, b.month_xp, b.year_xp) AS period_xp, count(*) AS held
                      FROM pyxp.xp_balances b
                     WHERE b.ranked
                     GROUP BY GROUPING SETS ((b.day_start, b.day_xp), (b.week_start, b.week_xp),
                                             (b.month_start, b.month_xp), (b.year_start, b.year_xp))) v
             WHERE v.period_start IS NOT NULL  -- (a balance with no row in a kind of period yet)
               AND NOT EXISTS (SELECT FROM pyxp.xp_period_rank_counts s
                                WHERE s.period = v.period AND s.period_start = v.period_start
                                  AND s.period_xp = v.period_xp AND s.wallet_start <> '' AND s.slot = 0)
            UNION ALL
            SELECT s.period, s.period_start, s.period_xp, s.wallet_start, n.held - coalesce(u.unranked, 0)
              FROM (SELECT s.*, lead(s.wallet_start) OVER (PARTITION BY s.period, s.period_start, s.period_xp
                                                           ORDER BY s.wallet_start) AS next_start
                      FROM (SELECT c.period, c.period_start, c.period_xp, c.wallet_start
                              FROM pyxp.xp_period_rank_counts c WHERE c.wallet_start <> '' AND c.slot = 0
                            UNION
                            SELECT c.period, c.period_start, c.period_xp, ''
                              FROM pyxp.xp_period_rank_counts c WHERE c.wallet_start <> '' AND c.slot = 0) s) s
             CROSS JOIN LATERAL (SELECT count(*) AS held
                                   FROM pyxp.period_board_range(s.period, s.period_start, s.period_xp,
                                                                s.wallet_start, s.next_start)) n
              LEFT JOIN (SELECT e.period, e.period_start, e.period_xp, coalesce(q.wallet_start, '') AS wallet_start,
                                count(*) AS unranked
                           FROM pyxp.period_board_entries() e
                           LEFT JOIN LATERAL pyxp.period_bucket_of(e.period, e.period_start, e.period_xp,
                                                                   e.user_wallet) q ON true
                          WHERE NOT e.ranked
                          GROUP BY 1, 2, 3, 4) u
                     ON u.period = s.period AND u.period_start = s.period_start AND u.period_xp = s.period_xp
                    AND u.wallet_start = s.wallet_start
           ) h
             ON h.period = c.period AND h.period_start = c.period_start AND h.period_xp = c.period_xp
            AND h.wallet_start = c.wallet_start
     WHERE coalesce(c.counted, 0) <> coalesce(h.held, 0)
$$;

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
    --   name the ruleset applied, which says it was applied retroactively,
    --   and its key ends with its wallet; 0029, a hostile test: a 'GIFT' row
    --   of 5,000 XP, the balances made to match, was clean);
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
                        ELSE pyxp.audited_rule_amount(ru.xp_constant, ru.xp_coefficients, t.metadata) END AS formula,
                   -- a row without a rule that is a retroactive adjustment: its key and
                   -- metadata name one ruleset, which was applied retroactively, and its key
                   -- ends with its wallet (0046, helper-75: a forged adjustment naming a
                   -- ruleset never applied was clean; the applied ones are read once, an
                   -- InitPlan, and only for a row without a rule)
                   t.rule_id IS NULL AND t.reverses IS NULL AND t.transaction_type = 'RULES_ADJUSTMENT'
                   AND t.idempotency_key LIKE 'rules.adjustment:%'
                   AND t.metadata ->> 'ruleset_id' = split_part(t.idempotency_key, ':', 2)
                   AND right(t.idempotency_key, length(t.user_wallet) + 1) = ':' || t.user_wallet
                   AND t.metadata ->> 'ruleset_id' = ANY (ARRAY(SELECT r.ruleset_id::text FROM pyxp.rulesets r
                                                                 WHERE r.applied_retroactively_at IS NOT NULL))
                   AS adjustment
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
                   CASE WHEN g.transaction_type = 'RULES_ADJUSTMENT' AND g.idempotency_key LIKE 'rules.adjustment:%'
                        THEN format('RULES_ADJUSTMENT row of key %s and metadata ruleset_id %s: not an adjustment of '
                                    'this wallet by a ruleset applied retroactively', quote_literal(g.idempotency_key),
                                    coalesce(quote_literal(g.metadata ->> 'ruleset_id'), 'none'))
                        ELSE format('%s row without a rule, neither a reversal nor a retroactive adjustment',
                                    g.transaction_type) END
             WHERE g.rule_id IS NULL AND g.reverses IS NULL AND NOT g.adjustment
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
        OR (g.rule_id IS NULL AND g.reverses IS NULL AND NOT g.adjustment)
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

CREATE OR REPLACE FUNCTION pyxp.audit()
RETURNS TABLE (check_name text, user_wallet text, transaction_id bigint, detail text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET jit = off
SET parallel_tuple_cost = 0
AS $$
    SELECT 'active_ruleset', NULL::text, NULL::bigint,
           format('%s active rulesets, expected 1', count(*))
      FROM pyxp.rulesets r WHERE r.is_active HAVING count(*) <> 1
    UNION ALL
    -- The activations' history (0040) against the rulesets: the active
    -- ruleset is the last one activated, each ruleset's activated_at is its
    -- last activation's, each activation replaced the ruleset of the one
    -- before it (a row taken out of the history breaks that chain) and not
    -- itself (activating the active ruleset adds nothing), and the rows 0040
    -- rebuilt come first (one added later would pass as rebuilt: a hostile
    -- test). activated_at is the clock's: it may step back, so it is not
    -- checked against the order.
    SELECT 'activation_history', NULL, NULL, x.problem
      FROM (SELECT format('ruleset %s is active, but the last activation (%s) is of ruleset %s',
                          r.ruleset_id, coalesce(l.activation_id::text, 'none'), coalesce(l.ruleset_id::text, 'none'))
                   AS problem
              FROM pyxp.rulesets r
              LEFT JOIN LATERAL (SELECT a.activation_id, a.ruleset_id FROM pyxp.ruleset_activations a
                                  ORDER BY a.activation_id DESC LIMIT 1) l ON true
             WHERE r.is_active AND l.ruleset_id IS DISTINCT FROM r.ruleset_id
            UNION ALL
            SELECT format('ruleset %s says it was activated at %s, its last activation (%s) at %s', r.ruleset_id,
                          coalesce(r.activated_at::text, 'never'), coalesce(l.activation_id::text, 'none'),
                          coalesce(l.activated_at::text, 'never'))
              FROM pyxp.rulesets r
              LEFT JOIN LATERAL (SELECT a.activation_id, a.activated_at FROM pyxp.ruleset_activations a
                                  WHERE a.ruleset_id = r.ruleset_id
                                  ORDER BY a.activation_id DESC LIMIT 1) l ON true
             WHERE r.activated_at IS DISTINCT FROM l.activated_at
            UNION ALL
            SELECT format('activation %s says it replaced ruleset %s, but the activation before it is of ruleset %s',
                          a.activation_id, coalesce(a.previous_ruleset_id::text, 'none'),
                          coalesce(a.before::text, 'none'))
              FROM (SELECT a.*, lag(a.ruleset_id) OVER (ORDER BY a.activation_id) AS before
                      FROM pyxp.ruleset_activations a) a
             WHERE NOT a.reconstructed AND a.previous_ruleset_id IS DISTINCT FROM a.before
            UNION ALL
            SELECT format('activation %s says it replaced ruleset %s by itself', a.activation_id, a.ruleset_id)
              FROM pyxp.ruleset_activations a
             WHERE a.previous_ruleset_id = a.ruleset_id
            UNION ALL
            SELECT format('activation %s is marked rebuilt by 0040, but activation %s before it is not',
                          a.activation_id, f.activation_id)
              FROM pyxp.ruleset_activations a
              JOIN LATERAL (SELECT min(f.activation_id) AS activation_id FROM pyxp.ruleset_activations f
                             WHERE NOT f.reconstructed) f ON f.activation_id < a.activation_id
             WHERE a.reconstructed) x
    UNION ALL
    -- Each ruleset's tables against its definition (pyxp.definition_*, what
    -- install_ruleset wrote from it): the amounts, caps, curve and zone the
    -- other checks compare the ledger with (0029); a ruleset an older
    -- install_ruleset wrote otherwise, against the digest of its tables at
    -- 0029 (pyxp.xp_rulesets_as_installed).
    SELECT 'ruleset_mismatch', NULL, NULL, format('ruleset %s v%s (id %s): %s', rs.name, rs.version, rs.ruleset_id, x.problem)
      FROM pyxp.rulesets rs
      LEFT JOIN pyxp.xp_rulesets_as_installed k ON k.ruleset_id = rs.ruleset_id
     CROSS JOIN LATERAL (
            SELECT 'its content_hash is not the sha256 of its definition' AS problem
             WHERE rs.content_hash <> encode(sha256(convert_to(rs.definition::text, 'UTF8')), 'hex')
            UNION ALL
            SELECT p.problem FROM pyxp.ruleset_table_problems(rs) p(problem) WHERE k.ruleset_id IS NULL
            UNION ALL
            SELECT 'its tables are not what they were at 0029 (installed by an older pyxp, they differ from its definition)'
             WHERE k.tables_digest <> pyxp.ruleset_tables_digest(rs.ruleset_id)
         ) x
    UNION ALL
    -- The chain walk and, beside it, the unsliced checks (ranks, checkpoints
    -- without a balance, wallets' forms, caps: pyxp.unsliced_problems).
    SELECT * FROM pyxp.chain_problems(false, true)
    UNION ALL
    SELECT * FROM pyxp.row_problems(false)
    UNION ALL
    SELECT * FROM pyxp.feed_problems(false)
    UNION ALL
    -- Rows of a wallet without a balance row: the walk starts from the
    -- balances, so it counts them; when every row was walked (the count
    -- matches), nothing more is read. The archived rows counted are the
    -- openings' (each checked against its positions by the walk), not the
    -- archives' own count, which nothing else checks (0029, a hostile test:
    -- an archive's count lowered by one hid a forged wallet's row).
    SELECT 'balance_mismatch', o.user_wallet, NULL, format('ledger sum %s but no xp_balances row', o.total)
      FROM (SELECT t.user_wallet, sum(t.xp_amount) AS total
              FROM pyxp.xp_transactions t
             WHERE NOT EXISTS (SELECT FROM pyxp.xp_balances b WHERE b.user_wallet = t.user_wallet)
             GROUP BY t.user_wallet) o
     WHERE (SELECT count(*) FROM pyxp.xp_transactions)
           + (SELECT coalesce(sum(o.archived_rows), 0) FROM pyxp.xp_wallet_openings o)
           <> (SELECT coalesce(sum(b.last_wallet_seq), 0) FROM pyxp.xp_balances b)
    UNION ALL
    SELECT 'opening_mismatch', NULL, NULL,
           format('the archives count %s rows archived, the openings %s', a.archived, o.archived)
      FROM (SELECT coalesce(sum(a.rows_archived), 0) AS archived FROM pyxp.xp_ledger_archives a) a,
           (SELECT coalesce(sum(o.archived_rows), 0) AS archived FROM pyxp.xp_wallet_openings o) o
     WHERE a.archived <> o.archived
    UNION ALL
    SELECT 'moderation_count', b.user_wallet, NULL,
           format('total_moderations = %s, votes recorded = %s', b.total_moderations, coalesce(v.votes, 0))
      FROM pyxp.xp_balances b
      -- A vote is a request of a vote key: its rows (all to the voter) hold
      -- the key, or (a vote no rule awards) the request keeps it.
      FULL JOIN (SELECT x.user_wallet, count(*) AS votes
                   FROM (SELECT t.user_wallet, t.idempotency_key
                           FROM pyxp.xp_transactions t
                          WHERE t.request_digest IS NULL
                            AND t.idempotency_key ~ '^(campaign|completion)[.]vote(/[0-9]+)?:'
                         UNION
                         SELECT q.inputs ->> 'wallet', q.idempotency_key
                           FROM pyxp.xp_requests q
                          WHERE q.idempotency_key ~ '^(campaign|completion)[.]vote(/[0-9]+)?:') x
                  GROUP BY 1) v ON v.user_wallet = b.user_wallet
     WHERE coalesce(b.total_moderations, 0) <> coalesce(v.votes, 0)
    UNION ALL
    -- The campaigns' registry against the ledger: a campaign's creation and
    -- approval rows are its creator's, and its creation rows name its type
    -- (0029, a hostile test: the registry's creator or type edited, which
    -- later approvals, votes and completions read, was clean).
    SELECT 'campaign_mismatch', t.user_wallet, t.id,
           format('campaign %s is %s''s (%s) in the registry, but %s row %s is %s''s (%s)', c.campaign_id,
                  c.creator_wallet, c.campaign_type, split_part(t.idempotency_key, ':', 1), t.id, t.user_wallet,
                  coalesce(t.metadata ->> 'campaign_type', 'no type'))
      FROM pyxp.xp_transactions t
      JOIN pyxp.campaigns c ON c.campaign_id = t.campaign_id
     WHERE t.request_digest IS NULL AND t.reverses IS NULL
       AND t.idempotency_key IN ('campaign.created:' || c.campaign_id, 'campaign.approved:' || c.campaign_id)
       AND ((c.creator_wallet IS NOT NULL AND t.user_wallet <> c.creator_wallet)
            OR (t.idempotency_key LIKE 'campaign.created:%' AND t.metadata ->> 'campaign_type' <> c.campaign_type))
    UNION ALL
    -- A request that keeps neither its key nor its inputs has them in its
    -- ledger rows only (pyxp.recorded_request): without a row, a retry's
    -- inputs could not be shown or a vote counted.
    SELECT 'request_rows_missing', NULL, NULL,
           format('request %s (claimed %s) keeps no key and no ledger row holds it', q.key_hash, q.created_at)
      FROM pyxp.xp_requests q
     WHERE q.idempotency_key IS NULL
       AND NOT EXISTS (SELECT FROM pyxp.xp_transactions t
                        WHERE pyxp.key_hash(t.idempotency_key) = q.key_hash AND t.request_digest IS NULL)
    UNION ALL
    -- A request that keeps its key and inputs (its call wrote no row whose
    -- inputs give them back, or its rows were archived) is what later calls
    -- read of that call: a completion's owner, an onboarding's wallet. Its
    -- key is its hash's and its inputs its digest's (0046, helper-75: the
    -- wallet of an archived submission edited, the completer's outcome was
    -- refused and another wallet paid, audit() clean).
    SELECT CASE WHEN k.hash <> q.key_hash THEN 'claim_mismatch' ELSE 'inputs_mismatch' END,
           q.inputs ->> 'wallet', NULL,
           CASE WHEN k.hash <> q.key_hash
                THEN format('request %s keeps key %s, whose hash is %s', q.key_hash,
                            quote_literal(q.idempotency_key), k.hash)
                ELSE format('request %s (key %s) keeps inputs %s, whose digest is not its %s', q.key_hash,
                            quote_literal(q.idempotency_key), left(q.inputs::text, 300), q.inputs_digest) END
      FROM pyxp.xp_requests q
     CROSS JOIN LATERAL (SELECT pyxp.key_hash(q.idempotency_key) AS hash) k
     WHERE q.idempotency_key IS NOT NULL
       AND (k.hash <> q.key_hash OR pyxp.request_inputs_digest(q.inputs) <> q.inputs_digest)
    UNION ALL
    SELECT 'registration_grant', a.client_wallet, NULL,
           format('registration %s of %s is %s', a.id, a.client_email,
                  CASE WHEN a.xp_granted THEN 'granted without an onboarding of that email'
                       ELSE 'pending although that email was onboarded' END)
      FROM pyxp.agency_b2c_clients a
     CROSS JOIN LATERAL (SELECT EXISTS (
                SELECT FROM pyxp.xp_requests q
                 WHERE q.key_hash IN (pyxp.key_hash('client.onboarded:' || a.client_email),
                                      -- stored as read before 0028 or 0045, onboarded since (pyxp.email_before_0028)
                                      pyxp.key_hash('client.onboarded:'
                                                    || pyxp.folded_email(pyxp.trimmed_text(a.client_email, true)))))
                AS onboarded) q
     WHERE a.xp_granted <> q.onboarded
    UNION ALL
    -- Client emails stored before 0002 that today's checks would read
    -- otherwise (the wallets: pyxp.unsliced_problems).
    SELECT 'identity_not_normalised', a.client_wallet, NULL,
           format('client email %s of registration %s is read %s since 0002', quote_literal(a.client_email), a.id,
                  coalesce(quote_literal(f.form), 'as refused'))
      FROM pyxp.agency_b2c_clients a
     CROSS JOIN LATERAL (SELECT CASE WHEN pyxp.invisible_character(x.t) IS NULL THEN x.t END AS form
                           FROM (SELECT pyxp.folded_email(pyxp.trimmed_text(a.client_email, true)) AS t) x) f
     WHERE f.form IS DISTINCT FROM a.client_email
       -- or as read before 0028 (lower() in the database's collation), or
       -- a form 0028 or 0045 recorded (pyxp.email_before_0028: the flows
       -- find the registration by it)
       AND (f.form IS NULL OR lower(pyxp.trimmed_text(a.client_email, true)) IS DISTINCT FROM a.client_email)
       AND NOT EXISTS (SELECT FROM pyxp.xp_email_forms_before_0028 e
                        WHERE e.client_email = f.form AND e.stored_form = a.client_email)
    UNION ALL
    -- No finding; 40001 when the ledger was read with a snapshot older than
    -- an archive's commit (its rows would have been reported missing).
    SELECT NULL, NULL, NULL, NULL WHERE NOT pyxp.ledger_unmoved()
    ORDER BY 1, 2, 3
$$;

CREATE OR REPLACE FUNCTION pyxp.audit_since_checkpoint()
RETURNS TABLE (check_name text, user_wallet text, transaction_id bigint, detail text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET jit = off
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    v_since boolean := pyxp.last_checkpoint_xmin() IS NOT NULL;
BEGIN
    RETURN QUERY
        SELECT 'active_ruleset', NULL::text, NULL::bigint,
               format('%s active rulesets, expected 1', count(*))
          FROM pyxp.rulesets r WHERE r.is_active HAVING count(*) <> 1
        UNION ALL
        -- Since a checkpoint, the new rows' single-row checks run beside the
        -- walk (pyxp.unsliced_problems); before the first, after it.
        SELECT * FROM pyxp.chain_problems(v_since, v_since)
        UNION ALL
        SELECT * FROM pyxp.row_problems(false) WHERE NOT v_since
        UNION ALL
        SELECT * FROM pyxp.feed_problems(v_since)
        ORDER BY 1, 2, 3;
    PERFORM pyxp.ledger_unmoved();  -- (40001 after a read older than an archive)
END
$$;

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
        UNION ALL
        SELECT f.check_name, f.user_wallet, f.detail FROM pyxp.feed_problems(v_since) f
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
AS $$ SELECT '0046' $$;

RESET ROLE;
