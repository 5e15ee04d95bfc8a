-- 0017 undone: the audit's checks as at 0016.
SET LOCAL ROLE pyxp_owner;

CREATE OR REPLACE FUNCTION pyxp.rank_problems()
RETURNS TABLE (check_name text, user_wallet text, transaction_id bigint, detail text)
LANGUAGE sql STABLE
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
    -- The period boards: each bucket counted as many times as ranked
    -- balances it holds. Only the values cut into several buckets need a
    -- probe per balance (period_bucket_of); the others are one bucket, '',
    -- counted without any probe (a probe per entry, even one finding
    -- nothing, was 4.8 s of the audit at 200k balances).
    SELECT 'rank_count_mismatch', NULL, NULL,
           format('%s board from %s: bucket of %s XP from %s counts %s wallets, holds %s',
                  coalesce(c.period, h.period), coalesce(c.period_start, h.period_start),
                  coalesce(c.period_xp, h.period_xp), quote_literal(coalesce(c.wallet_start, h.wallet_start)),
                  coalesce(c.counted, 0), coalesce(h.held, 0))
      FROM (SELECT c.period, c.period_start, c.period_xp, c.wallet_start, sum(c.wallets) AS counted
              FROM pyxp.xp_period_rank_counts c GROUP BY c.period, c.period_start, c.period_xp, c.wallet_start) c
      FULL JOIN (SELECT e.period, e.period_start, e.period_xp, e.wallet_start, count(*) AS held
                   FROM (SELECT e.period, e.period_start, e.period_xp, '' AS wallet_start
                           FROM pyxp.period_board_entries() e
                          WHERE e.ranked
                            AND NOT EXISTS (SELECT FROM pyxp.xp_period_rank_counts s
                                             WHERE s.period = e.period AND s.period_start = e.period_start
                                               AND s.period_xp = e.period_xp AND s.wallet_start <> '')
                         UNION ALL
                         SELECT e.period, e.period_start, e.period_xp, coalesce(q.wallet_start, '')
                           FROM pyxp.period_board_entries() e
                           JOIN (SELECT DISTINCT s.period, s.period_start, s.period_xp
                                   FROM pyxp.xp_period_rank_counts s WHERE s.wallet_start <> '') s
                             ON s.period = e.period AND s.period_start = e.period_start AND s.period_xp = e.period_xp
                           LEFT JOIN LATERAL pyxp.period_bucket_of(e.period, e.period_start, e.period_xp,
                                                                   e.user_wallet) q ON true
                          WHERE e.ranked) e
                  GROUP BY e.period, e.period_start, e.period_xp, e.wallet_start) h
             ON h.period = c.period AND h.period_start = c.period_start AND h.period_xp = c.period_xp
            AND h.wallet_start = c.wallet_start
     WHERE coalesce(c.counted, 0) <> coalesce(h.held, 0)
$$;

CREATE OR REPLACE FUNCTION pyxp.row_problems(p_since_checkpoint boolean)
RETURNS TABLE (check_name text, user_wallet text, transaction_id bigint, detail text)
LANGUAGE sql STABLE
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
    SELECT 'claim_mismatch', t.user_wallet, coalesce(t.id, c.transaction_id),
           CASE WHEN c.key_hash IS NULL THEN format('no claim in xp_award_claims for key %s', quote_literal(t.idempotency_key))
                WHEN t.id IS NULL THEN format('claim %s names transaction %s (%s), which does not exist', c.key_hash,
                                              c.transaction_id, c.created_at)
                ELSE format('claim %s of transaction %s is not the hash of its key %s', c.key_hash, t.id,
                            quote_literal(t.idempotency_key)) END
      FROM (SELECT t.* FROM pyxp.xp_transactions t WHERE NOT p_since_checkpoint AND t.request_digest IS NOT NULL) t
      FULL JOIN (SELECT c.* FROM pyxp.xp_award_claims c WHERE NOT p_since_checkpoint) c
             ON c.transaction_id = t.id AND c.created_at = t.created_at
     WHERE NOT p_since_checkpoint
       AND ((t.id IS NULL AND NOT c.created_at < coalesce(pyxp.archive_horizon(), '-infinity'))
            OR c.key_hash IS NULL
            -- pyxp.key_hash, spelled out and compared as bytes: a function call per row costs
            -- 5 times more, the text form of the hash 15 % more
            OR uuid_send(c.key_hash) <> substr(sha256(convert_to(t.idempotency_key, 'UTF8')), 1, 16))
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
    SELECT 'request_missing', t.user_wallet, t.id,
           format('no xp_requests row for key %s', quote_literal(t.idempotency_key))
      FROM pyxp.audited_rows(p_since_checkpoint) t
     WHERE t.request_digest IS NULL
       AND NOT EXISTS (SELECT FROM pyxp.xp_requests q WHERE q.key_hash = pyxp.key_hash(t.idempotency_key))
$$;

ALTER FUNCTION pyxp.archive_horizon() PARALLEL UNSAFE;
ALTER FUNCTION pyxp.period_board_entries() PARALLEL UNSAFE;
ALTER FUNCTION pyxp.period_bucket_of(text, timestamptz, bigint, text) PARALLEL UNSAFE;
ALTER FUNCTION pyxp.reversed_row_at(bigint) PARALLEL UNSAFE;
ALTER FUNCTION pyxp.rows_cap_usage(oid[]) PARALLEL UNSAFE;
ALTER FUNCTION pyxp.ledger_cap_usage() PARALLEL UNSAFE;
ALTER FUNCTION pyxp.board_range(bigint, text, bigint, text) PARALLEL UNSAFE;
ALTER FUNCTION pyxp.rank_bucket_of(bigint, text) PARALLEL UNSAFE;
ALTER FUNCTION pyxp.rank_buckets() PARALLEL UNSAFE;
ALTER FUNCTION pyxp.last_checkpoint_xmin() PARALLEL UNSAFE;
ALTER FUNCTION pyxp.audited_wallets(boolean) PARALLEL UNSAFE;
ALTER FUNCTION pyxp.period_xp_from_rows(text, timestamptz, text, text) PARALLEL UNSAFE;
ALTER FUNCTION pyxp.sum_with_opening(numeric, boolean, bigint) PARALLEL UNSAFE;
ALTER FUNCTION pyxp.chain_problems(boolean) PARALLEL UNSAFE;
ALTER FUNCTION pyxp.audited_rows(boolean) PARALLEL UNSAFE;

ALTER FUNCTION pyxp.audit() RESET parallel_tuple_cost;

DROP FUNCTION pyxp.period_board_range(text, timestamptz, bigint, text, text);
RESET ROLE;
