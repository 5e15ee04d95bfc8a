-- 0014: exact ranks on the boards of the current periods from counts (issues 11 item 3, 13
-- item 4). Frozen copy of what sql/*.sql defines at this revision; never edit it.
--
-- pyxp.wallet_rank(wallet, period) counted the balances above the wallet on its period's
-- board index (~118 ns an entry: 22 ms on a week's board of 154k wallets). New table
-- xp_period_rank_counts: per period, period start and period XP (and, for a value many
-- wallets share, per range of wallets), how many balances hold it; the writer moves a
-- balance from its old bucket to its new one per kind of period, in its backend's slot, in
-- the statement that sets the balance. Counted from the balances here, one bucket per
-- value, under the lock that keeps awards out; pyxp.rebalance_rank_buckets cuts the values
-- many wallets share. The bucket starts of both count tables get an index of their own.
SET LOCAL ROLE pyxp_owner;

LOCK TABLE pyxp.xp_balances IN SHARE ROW EXCLUSIVE MODE;

-- The bucket starts (slot 0 rows; 0014): a probe for the bucket holding a
-- position reads one entry here, instead of stepping back over the rows of
-- every backend that counted in the bucket before reaching its slot 0 row.
-- Writers never write slot 0, so their updates leave this index alone.
CREATE INDEX xp_rank_counts_starts ON pyxp.xp_rank_counts (neg_xp, wallet) WHERE slot = 0;

-- Exact ranks on the boards of the current periods (pyxp.wallet_rank with a
-- period; 0014). Per period, period start and period XP, how many balances
-- hold it: a period's XP values are few (what a wallet earns in a day or a
-- week), so each value is a bucket of the board (period_xp desc, wallet).
-- A value many wallets share (76,000 at 2 XP on a week's board of the
-- bench) is cut by wallet into buckets, each starting at wallet_start ('':
-- the value's first). A wallet's rank on the board of period S is 1 + the
-- wallets counted at a higher XP or in an earlier bucket of its own XP +
-- the balances of its bucket before it (an index range of
-- xp_balances_<period>_board, at most about 2 x bucket_size entries),
-- instead of a count of the board above it.
-- Invariant (pyxp.audit checks it): per bucket, the sum of wallets over the
-- slots = the (ranked) balances with <period>_start = period_start,
-- <period>_xp = period_xp and a wallet from wallet_start to the value's next
-- bucket start. The writer moves a balance from its old bucket to its new
-- one, in the slot of its backend, as for xp_rank_counts;
-- pyxp.rebalance_rank_buckets folds the slots into slot 0, drops the
-- buckets that count nobody, cuts the values that grew past 2 x bucket_size
-- wallets, and is the only place bucket starts other than '' appear.
CREATE TABLE pyxp.xp_period_rank_counts (
    period        text NOT NULL CHECK (period IN ('day', 'week', 'month', 'year')),
    period_start  timestamptz NOT NULL,
    period_xp     bigint NOT NULL,
    wallet_start  text COLLATE "C" NOT NULL,
    slot          integer NOT NULL CHECK (slot >= 0),
    wallets       bigint NOT NULL,
    PRIMARY KEY (period, period_start, period_xp, wallet_start, slot)
) WITH (fillfactor = 50);  -- room for HOT updates of the counts
-- The bucket starts, as xp_rank_counts_starts.
CREATE INDEX xp_period_rank_counts_starts ON pyxp.xp_period_rank_counts (period, period_start, period_xp, wallet_start)
    WHERE slot = 0;

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
    v_seq bigint[];          -- per row: its wallet_seq (its position in its wallet's history)
    v_ids bigint[];          -- per row: the id it got (NULL: replayed, or no row)
    v_conflict_ord integer;  -- the first row whose key a call with other inputs claimed
    v_range_ord integer;     -- a row whose balance would leave [-2^62, 2^62]
    v_expected integer;      -- rows to insert
    v_inserted integer;
    v_applied numeric[];     -- per row: what applies of it (a capped gain: what is left of its allowance)
    v_allowance text[];      -- per row: the allowance a capped gain uses (pyxp.cap_allowance), else NULL
    v_period timestamptz[];  -- and the start of its period
    v_floored boolean := false;
    v_at timestamptz;        -- the new rows' effective time (periods)
    v_day timestamptz;
    v_week timestamptz;
    v_month timestamptz;
    v_year timestamptz;
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
    <<planning>>
    LOOP
    -- 2. Under the locks (a new statement: READ COMMITTED sees what the
    --    previous holder committed): each generic award's claim made before
    --    (a replay, or PX010 for other inputs); caps (SPEC 12; only when the
    --    ruleset has a capped rule): each new capped gain is cut to what is
    --    left of its allowance in the current period (xp_cap_usage), in row
    --    order: within one call an allowance's gains only add up, so the
    --    k-th applies least(C_k, L) - least(C_k-1, L), C the running sum of
    --    the gains asked, L what was left. Then the running
    --    balances, per wallet in row order, and the feed group
    --    (sql/11_changes.sql: this transaction's id, or the wallet's last
    --    group if higher).
    -- Without caps the same statement without the caps' lookups and window
    -- (every plan node costs its start-up on every award).
    IF NOT p_caps THEN
        SELECT array_agg(x.claim_id ORDER BY x.ord), array_agg(x.after ORDER BY x.ord),
               array_agg(x.feed ORDER BY x.ord),
               (array_agg(x.ord ORDER BY x.ord) FILTER (WHERE x.conflict))[1],
               (array_agg(x.ord ORDER BY x.ord) FILTER (WHERE abs(x.after) > pyxp.balance_limit()))[1],
               count(*) FILTER (WHERE x.claim_id IS NULL AND x.transaction_type IS NOT NULL),
               array_agg(x.seq ORDER BY x.ord)
          INTO v_claims, v_after, v_feed, v_conflict_ord, v_range_ord, v_expected, v_seq
          FROM (SELECT r.ord, r.transaction_type, k.id AS claim_id,
                       k.id IS NOT NULL AND (k.request_digest <> pyxp.inputs_digest(r.inputs)
                                             OR k.idempotency_key <> r.idempotency_key) AS conflict,
                       b.total_xp + sum(r.xp_amount) FILTER (WHERE k.id IS NULL)
                                        OVER (PARTITION BY r.user_wallet ORDER BY r.ord) AS after,
                       b.last_wallet_seq + count(*) FILTER (WHERE k.id IS NULL AND r.transaction_type IS NOT NULL)
                                               OVER (PARTITION BY r.user_wallet ORDER BY r.ord) AS seq,
                       greatest(pg_current_xact_id(), b.last_feed_xid) AS feed
                  FROM unnest(v_rows) WITH ORDINALITY r(call_index, user_wallet, idempotency_key, inputs,
                                                        transaction_type, xp_amount, xp_requested, apply_floor,
                                                        rule_id, campaign_id, subject, metadata, reverses,
                                                        moderations, ord)
                 CROSS JOIN LATERAL (SELECT b.total_xp, b.last_feed_xid, b.last_wallet_seq FROM pyxp.xp_balances b
                                      WHERE b.user_wallet = r.user_wallet LIMIT 1) b
                  LEFT JOIN LATERAL (SELECT k.id, k.request_digest, k.idempotency_key FROM pyxp.xp_transactions k
                                      WHERE r.inputs IS NOT NULL AND k.request_digest IS NOT NULL
                                        AND pyxp.key_hash(k.idempotency_key) = pyxp.key_hash(r.idempotency_key)
                                      LIMIT 1) k ON true) x;
    ELSE
        SELECT array_agg(x.claim_id ORDER BY x.ord), array_agg(x.after ORDER BY x.ord),
               array_agg(x.feed ORDER BY x.ord),
               (array_agg(x.ord ORDER BY x.ord) FILTER (WHERE x.conflict))[1],
               (array_agg(x.ord ORDER BY x.ord) FILTER (WHERE abs(x.after) > pyxp.balance_limit()))[1],
               count(*) FILTER (WHERE x.claim_id IS NULL AND x.transaction_type IS NOT NULL),
               array_agg(x.applied ORDER BY x.ord), array_agg(x.allowance ORDER BY x.ord),
               array_agg(x.period_start ORDER BY x.ord), array_agg(x.seq ORDER BY x.ord)
          INTO v_claims, v_after, v_feed, v_conflict_ord, v_range_ord, v_expected, v_applied, v_allowance, v_period,
               v_seq
          FROM (SELECT y.*, y.total_xp + sum(y.applied) FILTER (WHERE y.claim_id IS NULL)
                                             OVER (PARTITION BY y.user_wallet ORDER BY y.ord) AS after,
                       y.last_wallet_seq + count(*) FILTER (WHERE y.claim_id IS NULL AND y.transaction_type IS NOT NULL)
                                                  OVER (PARTITION BY y.user_wallet ORDER BY y.ord) AS seq
                  FROM (SELECT z.*, CASE WHEN z.allowance IS NULL THEN z.xp_amount
                                         ELSE least(z.asked, z.left_) - least(z.asked - z.xp_amount, z.left_) END AS applied
                          FROM (SELECT r.ord, r.user_wallet, r.transaction_type, r.xp_amount, k.id AS claim_id,
                                       k.id IS NOT NULL AND (k.request_digest <> pyxp.inputs_digest(r.inputs)
                                                             OR k.idempotency_key <> r.idempotency_key) AS conflict,
                                       b.total_xp, b.last_wallet_seq,
                                       greatest(pg_current_xact_id(), b.last_feed_xid) AS feed,
                                       a.allowance, a.period_start,
                                       sum(r.xp_amount) OVER (PARTITION BY r.user_wallet, a.allowance, a.period_start
                                                              ORDER BY r.ord) AS asked,
                                       greatest(a.cap_max_xp - coalesce(a.used_xp, 0), 0) AS left_
                                  FROM unnest(v_rows) WITH ORDINALITY r(call_index, user_wallet, idempotency_key, inputs,
                                                                        transaction_type, xp_amount, xp_requested,
                                                                        apply_floor, rule_id, campaign_id, subject,
                                                                        metadata, reverses, moderations, ord)
                                 CROSS JOIN LATERAL (SELECT b.total_xp, b.last_feed_xid, b.last_wallet_seq
                                                       FROM pyxp.xp_balances b
                                                      WHERE b.user_wallet = r.user_wallet LIMIT 1) b
                                  LEFT JOIN LATERAL (SELECT k.id, k.request_digest, k.idempotency_key
                                                       FROM pyxp.xp_transactions k
                                                      WHERE r.inputs IS NOT NULL AND k.request_digest IS NOT NULL
                                                        AND pyxp.key_hash(k.idempotency_key) = pyxp.key_hash(r.idempotency_key)
                                                      LIMIT 1) k ON true
                                  LEFT JOIN LATERAL (SELECT c.allowance, c.period_start, c.cap_max_xp,
                                                            (SELECT u.used_xp FROM pyxp.xp_cap_usage u
                                                              WHERE u.user_wallet = r.user_wallet
                                                                AND u.allowance = c.allowance
                                                                AND u.period_start = c.period_start LIMIT 1) AS used_xp
                                                       FROM (SELECT pyxp.cap_allowance(ru.cap_group, ru.action) AS allowance,
                                                                    date_trunc(ru.cap_per, now(), p_timezone) AS period_start,
                                                                    ru.cap_max_xp
                                                               FROM pyxp.rules ru
                                                              WHERE p_caps AND ru.rule_id = r.rule_id
                                                                AND ru.cap_max_xp IS NOT NULL AND r.xp_amount > 0
                                                                AND r.reverses IS NULL AND k.id IS NULL
                                                              LIMIT 1) c) a ON true) z) y) x;
    END IF;
    -- A cut gain records both amounts: xp_amount what applies, xp_requested
    -- what the rule asked.
    IF p_caps THEN
        FOR i IN 1 .. cardinality(v_rows) LOOP
            IF v_applied[i] <> v_rows[i].xp_amount THEN
                v_rows[i].xp_requested := v_rows[i].xp_amount;
                v_rows[i].xp_amount := v_applied[i];
            END IF;
        END LOOP;
    END IF;
        -- A balance floor cuts penalties by the running balance of what
        -- applies (after the caps' cuts), then step 2 runs again on the
        -- cut rows (slow path: floors are rare; the caps' cut is then a
        -- no-op): xp_amount becomes what applies, xp_requested keeps what
        -- the rule asked.
        EXIT planning WHEN p_floor IS NULL OR v_floored;  -- a simple expression: no query on the hot path
        EXIT planning WHEN NOT EXISTS (SELECT FROM unnest(v_rows) r WHERE r.apply_floor AND r.xp_amount < 0);
        v_rows := pyxp.floored_rows(p_ruleset, v_rows, p_floor);
        v_floored := true;
    END LOOP;
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
                                          metadata, reverses, feed_xid, request_digest, wallet_seq)
        SELECT r.user_wallet, r.transaction_type, r.xp_amount::bigint, r.xp_requested::bigint, r.after::bigint,
               r.rule_id, r.campaign_id, r.subject, r.idempotency_key, coalesce(r.metadata, '{}'), r.reverses,
               r.feed, pyxp.inputs_digest(r.inputs), r.seq
          FROM ROWS FROM (unnest(v_rows), unnest(v_claims), unnest(v_after), unnest(v_feed), unnest(v_seq))
               WITH ORDINALITY
               r(call_index, user_wallet, idempotency_key, inputs, transaction_type, xp_amount, xp_requested,
                 apply_floor, rule_id, campaign_id, subject, metadata, reverses, moderations, claim, after,
                 feed, seq, ord)
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
    --    its call) the created_at of the row it reverses: the periods are
    --    computed once (p_timezone), not per row.
    v_at := now();
    IF v_rows[1].reverses IS NOT NULL THEN
        SELECT o.created_at INTO v_at FROM pyxp.xp_transactions o WHERE o.id = v_rows[1].reverses;
    END IF;
    v_day := date_trunc('day', v_at, p_timezone);
    v_week := date_trunc('week', v_at, p_timezone);
    v_month := date_trunc('month', v_at, p_timezone);
    v_year := date_trunc('year', v_at, p_timezone);
    -- The rank counts (sql/07_ranks.sql) follow in the same statement:
    -- each balance whose total moved leaves the bucket of its old total
    -- and joins the bucket of its new one, and on each period's board
    -- leaves the bucket of its old (start, XP) for the bucket of its new
    -- one (xp_period_rank_counts: a probe of each); a balance this call
    -- created (ranked false) only joins. Counted in this backend's own slot
    -- (no other live transaction writes it: no wait, and no order to keep
    -- against deadlocks); a move within one bucket, or a period XP that did
    -- not change, touches no count.
    WITH moved AS (
    UPDATE pyxp.xp_balances x
       SET ranked = true, total_xp = coalesce(f.after::bigint, x.total_xp), current_level = c.level,
           xp_to_next_level = (c.next_level_xp - coalesce(f.after::bigint, x.total_xp))::bigint,
           total_moderations = x.total_moderations + f.moderations, updated_at = now(),
           last_feed_xid = coalesce(f.feed, x.last_feed_xid), last_wallet_seq = coalesce(f.seq, x.last_wallet_seq),
           day_start = CASE WHEN f.after IS NULL THEN x.day_start ELSE greatest(x.day_start, v_day) END,
           day_xp = pyxp.kept_period_xp(x.day_start, x.day_xp, CASE WHEN f.after IS NOT NULL THEN v_day END, f.gained),
           week_start = CASE WHEN f.after IS NULL THEN x.week_start ELSE greatest(x.week_start, v_week) END,
           week_xp = pyxp.kept_period_xp(x.week_start, x.week_xp, CASE WHEN f.after IS NOT NULL THEN v_week END, f.gained),
           month_start = CASE WHEN f.after IS NULL THEN x.month_start ELSE greatest(x.month_start, v_month) END,
           month_xp = pyxp.kept_period_xp(x.month_start, x.month_xp, CASE WHEN f.after IS NOT NULL THEN v_month END, f.gained),
           year_start = CASE WHEN f.after IS NULL THEN x.year_start ELSE greatest(x.year_start, v_year) END,
           year_xp = pyxp.kept_period_xp(x.year_start, x.year_xp, CASE WHEN f.after IS NOT NULL THEN v_year END, f.gained)
      FROM (SELECT r.user_wallet,
                   (array_agg(r.after ORDER BY r.ord DESC) FILTER (WHERE r.id IS NOT NULL))[1] AS after,
                   max(r.feed) FILTER (WHERE r.id IS NOT NULL) AS feed,
                   max(r.seq) FILTER (WHERE r.id IS NOT NULL) AS seq,
                   sum(r.moderations) FILTER (WHERE r.claim IS NULL)::bigint AS moderations,
                   sum(r.xp_amount) FILTER (WHERE r.id IS NOT NULL)::bigint AS gained,
                   b.total_xp, b.ranked, b.day_start, b.day_xp, b.week_start, b.week_xp, b.month_start,
                   b.month_xp, b.year_start, b.year_xp
              FROM ROWS FROM (unnest(v_rows), unnest(v_claims), unnest(v_after), unnest(v_feed), unnest(v_ids),
                              unnest(v_seq))
                   WITH ORDINALITY r(call_index, user_wallet, idempotency_key, inputs, transaction_type, xp_amount,
                                     xp_requested, apply_floor, rule_id, campaign_id, subject, metadata, reverses,
                                     moderations, claim, after, feed, id, seq, ord)
             CROSS JOIN LATERAL (SELECT b.total_xp, b.ranked, b.day_start, b.day_xp, b.week_start, b.week_xp,
                                        b.month_start, b.month_xp, b.year_start, b.year_xp
                                   FROM pyxp.xp_balances b
                                  WHERE b.user_wallet = r.user_wallet LIMIT 1) b
             GROUP BY r.user_wallet, b.total_xp, b.ranked, b.day_start, b.day_xp, b.week_start, b.week_xp,
                      b.month_start, b.month_xp, b.year_start, b.year_xp) f  -- b: one row per wallet
     CROSS JOIN LATERAL pyxp.curve_position(p_ruleset, coalesce(f.after::bigint, f.total_xp)) c
     WHERE x.user_wallet = f.user_wallet AND (f.after IS NOT NULL OR f.moderations <> 0 OR NOT f.ranked)
    RETURNING x.user_wallet, f.total_xp AS old_xp, f.ranked AS was_ranked, x.total_xp AS new_xp,
              -- Its place on each period's board before (NULL: not counted) and after.
              ARRAY[CASE WHEN f.ranked THEN f.day_start END, CASE WHEN f.ranked THEN f.week_start END,
                    CASE WHEN f.ranked THEN f.month_start END, CASE WHEN f.ranked THEN f.year_start END,
                    x.day_start, x.week_start, x.month_start, x.year_start] AS period_starts,
              ARRAY[f.day_xp, f.week_xp, f.month_xp, f.year_xp, x.day_xp, x.week_xp, x.month_xp, x.year_xp]
                  AS period_xps
    ), period_moves AS (
    INSERT INTO pyxp.xp_period_rank_counts AS k (period, period_start, period_xp, wallet_start, slot, wallets)
    SELECT u.period, u.period_start, u.period_xp, coalesce(q.wallet_start, ''), pg_backend_pid(), sum(u.delta)
      FROM moved m
     CROSS JOIN LATERAL unnest('{day,week,month,year,day,week,month,year}'::text[], m.period_starts, m.period_xps,
                               '{-1,-1,-1,-1,1,1,1,1}'::integer[]) u(period, period_start, period_xp, delta)
      LEFT JOIN LATERAL pyxp.period_bucket_of(u.period, u.period_start, u.period_xp, m.user_wallet) q ON true
     WHERE u.period_start IS NOT NULL
     GROUP BY u.period, u.period_start, u.period_xp, coalesce(q.wallet_start, '')
    HAVING sum(u.delta) <> 0  -- a period whose XP did not change: -1 and +1 in one bucket
    ON CONFLICT (period, period_start, period_xp, wallet_start, slot)
       DO UPDATE SET wallets = k.wallets + excluded.wallets
    )
    INSERT INTO pyxp.xp_rank_counts AS k (neg_xp, wallet, slot, wallets)
    SELECT d.neg_xp, d.wallet, pg_backend_pid(), sum(d.delta)
      FROM moved m
     CROSS JOIN LATERAL (SELECT o.neg_xp, o.wallet, -1 AS delta
                           FROM pyxp.rank_bucket_of(m.old_xp, m.user_wallet) o WHERE m.was_ranked
                         UNION ALL
                         SELECT n.neg_xp, n.wallet, 1 FROM pyxp.rank_bucket_of(m.new_xp, m.user_wallet) n) d
     GROUP BY d.neg_xp, d.wallet
    HAVING sum(d.delta) <> 0
     ORDER BY d.neg_xp, d.wallet
    ON CONFLICT (neg_xp, wallet, slot) DO UPDATE SET wallets = k.wallets + excluded.wallets;

    -- 4b. What the new capped gains used of their allowances (xp_cap_usage),
    --     and what a reversal of a capped gain frees (pyxp.freed_allowance),
    --     under the same locks.
    IF p_caps THEN
        INSERT INTO pyxp.xp_cap_usage AS u (user_wallet, allowance, period_start, used_xp)
        SELECT r.user_wallet, r.allowance, r.period_start, sum(r.xp_amount)::bigint
          FROM ROWS FROM (unnest(v_rows), unnest(v_ids), unnest(v_allowance), unnest(v_period))
               r(call_index, user_wallet, idempotency_key, inputs, transaction_type, xp_amount, xp_requested,
                 apply_floor, rule_id, campaign_id, subject, metadata, reverses, moderations, id, allowance,
                 period_start)
         WHERE r.allowance IS NOT NULL AND r.id IS NOT NULL AND r.xp_amount > 0
         GROUP BY r.user_wallet, r.allowance, r.period_start
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

CREATE FUNCTION pyxp.period_kinds()
RETURNS TABLE (i integer, period text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT * FROM (VALUES (1, 'day'), (2, 'week'), (3, 'month'), (4, 'year')) k(i, period) $$;

CREATE FUNCTION pyxp.period_board_entries()
RETURNS TABLE (period text, period_start timestamptz, period_xp bigint, user_wallet text, ranked boolean)
LANGUAGE sql STABLE
AS $$
    SELECT k.period, (ARRAY[b.day_start, b.week_start, b.month_start, b.year_start])[k.i],
           (ARRAY[b.day_xp, b.week_xp, b.month_xp, b.year_xp])[k.i], b.user_wallet, b.ranked
      FROM pyxp.xp_balances b CROSS JOIN pyxp.period_kinds() k
     WHERE (ARRAY[b.day_start, b.week_start, b.month_start, b.year_start])[k.i] IS NOT NULL
$$;

CREATE FUNCTION pyxp.period_bucket_of(p_period text, p_start timestamptz, p_xp bigint, p_wallet text)
RETURNS TABLE (wallet_start text)
LANGUAGE sql STABLE
AS $$
    SELECT c.wallet_start FROM pyxp.xp_period_rank_counts c
     WHERE c.period = p_period AND c.period_start = p_start AND c.period_xp = p_xp
       AND c.wallet_start <= p_wallet COLLATE "C" AND c.slot = 0
     ORDER BY c.wallet_start DESC
     LIMIT 1
$$;

CREATE FUNCTION pyxp.period_counts_from_balances()
RETURNS TABLE (period text, period_start timestamptz, period_xp bigint, wallet_start text, slot integer,
               wallets bigint)
LANGUAGE sql STABLE
AS $$
    SELECT e.period, e.period_start, e.period_xp, '', 0, count(*)
      FROM pyxp.period_board_entries() e WHERE e.ranked
     GROUP BY e.period, e.period_start, e.period_xp
$$;

CREATE OR REPLACE FUNCTION pyxp.wallet_rank(wallet text, period text DEFAULT 'all', at timestamptz DEFAULT now())
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
        SELECT r.rank INTO v_rank FROM pyxp.board_rank(v_total, v_wallet) r;  -- the rank buckets
        RETURN v_rank;
    END IF;
    v_bounds := pyxp.period_bounds(v_period, wallet_rank.at, pyxp.active_timezone());
    IF pyxp.period_cached(v_period, v_bounds.period_start) THEN
        EXECUTE format('SELECT b.%1$I, b.%2$I FROM pyxp.xp_balances b WHERE b.user_wallet = $1',
                       v_period || '_start', v_period || '_xp')
           INTO v_start, v_total USING v_wallet;
        IF v_start IS DISTINCT FROM v_bounds.period_start THEN
            RETURN NULL;
        END IF;
        -- The wallets counted at a higher XP on that board, or in an earlier
        -- bucket of the wallet's XP (xp_period_rank_counts), then the
        -- balances of its bucket before it.
        EXECUTE format('SELECT 1 + coalesce((SELECT sum(c.wallets) FROM pyxp.xp_period_rank_counts c
                                              WHERE c.period = $4 AND c.period_start = $1 AND c.period_xp >= $2
                                                AND (c.period_xp > $2 OR c.wallet_start < k.wallet_start)), 0)::bigint
                                 + (SELECT count(*) FROM pyxp.xp_balances b
                                     WHERE b.%1$I = $1 AND b.%2$I = $2 AND b.user_wallet COLLATE "C" >= k.wallet_start
                                       AND b.user_wallet COLLATE "C" < $3)
                            FROM (SELECT coalesce((SELECT q.wallet_start
                                                     FROM pyxp.period_bucket_of($4, $1, $2, $3) q), '''') AS wallet_start) k',
                       v_period || '_start', v_period || '_xp')
           INTO v_rank USING v_bounds.period_start, v_total, v_wallet, v_period;
        RETURN v_rank;
    END IF;
    SELECT r.rank INTO v_rank
      FROM (SELECT t.user_wallet, row_number() OVER (ORDER BY t.period_xp DESC, t.user_wallet COLLATE "C") AS rank
              FROM pyxp.ledger_period_totals(v_bounds.period_start, v_bounds.period_end) t) r
     WHERE r.user_wallet = v_wallet;
    RETURN v_rank;
END
$$;

CREATE OR REPLACE FUNCTION pyxp.rebuild_period_columns(p_timezone text)
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
           (p.day_start, p.day_xp, p.week_start, p.week_xp, p.month_start, p.month_xp, p.year_start, p.year_xp);
    -- The period boards' counts, from the columns just derived.
    DELETE FROM pyxp.xp_period_rank_counts;
    INSERT INTO pyxp.xp_period_rank_counts SELECT * FROM pyxp.period_counts_from_balances();
$$;

CREATE OR REPLACE FUNCTION pyxp.rebalance_rank_buckets(bucket_size integer DEFAULT 1024, full_rebuild boolean DEFAULT false)
RETURNS TABLE (buckets bigint, recut_buckets bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET lock_timeout = '1s'
AS $$
DECLARE
    v_size constant integer := rebalance_rank_buckets.bucket_size;
    v_full boolean := rebalance_rank_buckets.full_rebuild;
    v_recut bigint := 0;
    v_bucket record;
BEGIN
    IF v_size IS NULL OR v_size NOT BETWEEN 16 AND 1000000 THEN
        RAISE EXCEPTION 'invalid bucket_size: %', coalesce(v_size::text, 'NULL')
            USING ERRCODE = 'PX023', HINT = 'bucket_size is between 16 and 1000000 balances';
    END IF;
    PERFORM pyxp.require_read_committed();
    LOCK TABLE pyxp.xp_balances IN SHARE ROW EXCLUSIVE MODE;
    INSERT INTO pyxp.xp_rank_counts (neg_xp, wallet, slot, wallets)
    VALUES (-9223372036854775807, '', 0, 0) ON CONFLICT DO NOTHING;
    IF FOUND THEN  -- the first bucket was gone: writers counted nothing since; cut afresh
        v_full := true;
    END IF;
    -- The writers' slots, folded into slot 0 (every bucket has its slot 0 row).
    WITH folded AS (
        DELETE FROM pyxp.xp_rank_counts c WHERE c.slot <> 0 RETURNING c.neg_xp, c.wallet, c.wallets
    )
    UPDATE pyxp.xp_rank_counts c SET wallets = c.wallets + f.wallets
      FROM (SELECT f.neg_xp, f.wallet, sum(f.wallets) AS wallets FROM folded f GROUP BY f.neg_xp, f.wallet) f
     WHERE c.neg_xp = f.neg_xp AND c.wallet = f.wallet AND c.slot = 0;
    -- Balances nobody counted (index xp_balances_unranked): counted now.
    UPDATE pyxp.xp_rank_counts c SET wallets = c.wallets + u.wallets
      FROM (SELECT k.neg_xp, k.wallet, count(*) AS wallets
              FROM pyxp.xp_balances b CROSS JOIN LATERAL pyxp.rank_bucket_of(b.total_xp, b.user_wallet) k
             WHERE NOT b.ranked
             GROUP BY k.neg_xp, k.wallet) u
     WHERE c.neg_xp = u.neg_xp AND c.wallet = u.wallet AND c.slot = 0;
    -- The period boards' counts (xp_period_rank_counts): the writers' slots
    -- and the balances nobody counted (each in the bucket holding it),
    -- folded into slot 0; then the buckets that count nobody are dropped
    -- (their empty range joins the bucket before).
    WITH folded AS (
        DELETE FROM pyxp.xp_period_rank_counts c WHERE c.slot <> 0
        RETURNING c.period, c.period_start, c.period_xp, c.wallet_start, c.wallets
    )
    INSERT INTO pyxp.xp_period_rank_counts AS c (period, period_start, period_xp, wallet_start, slot, wallets)
    SELECT m.period, m.period_start, m.period_xp, m.wallet_start, 0, sum(m.wallets)
      FROM (SELECT f.period, f.period_start, f.period_xp, f.wallet_start, f.wallets FROM folded f
            UNION ALL
            SELECT e.period, e.period_start, e.period_xp, coalesce(q.wallet_start, ''), 1
              FROM pyxp.period_board_entries() e
              LEFT JOIN LATERAL pyxp.period_bucket_of(e.period, e.period_start, e.period_xp, e.user_wallet) q ON true
             WHERE NOT e.ranked) m
     GROUP BY m.period, m.period_start, m.period_xp, m.wallet_start
    ON CONFLICT (period, period_start, period_xp, wallet_start, slot)
       DO UPDATE SET wallets = c.wallets + excluded.wallets;
    DELETE FROM pyxp.xp_period_rank_counts c WHERE c.wallets = 0;
    UPDATE pyxp.xp_balances SET ranked = true WHERE NOT ranked;
    -- Empty buckets: their (no) balances join the bucket before.
    DELETE FROM pyxp.xp_rank_counts c
     WHERE c.wallets = 0 AND c.neg_xp > -9223372036854775807;
    v_full := v_full OR (SELECT count(*) > 2 * (sum(c.wallets) / v_size + 1) FROM pyxp.xp_rank_counts c);
    IF v_full THEN
        DELETE FROM pyxp.xp_rank_counts c WHERE c.neg_xp > -9223372036854775807;
        UPDATE pyxp.xp_rank_counts c SET wallets = (SELECT count(*) FROM pyxp.xp_balances);
        -- And the period boards' counts afresh from the balances (one
        -- bucket per value, cut below).
        DELETE FROM pyxp.xp_period_rank_counts;
        INSERT INTO pyxp.xp_period_rank_counts SELECT * FROM pyxp.period_counts_from_balances();
    END IF;
    FOR v_bucket IN
        SELECT * FROM pyxp.rank_buckets() e WHERE e.wallets > 2 * v_size OR (v_full AND e.wallets > v_size)
    LOOP
        -- Its balances in board order: the first keeps the bucket's start,
        -- every bucket_size-th after it starts a bucket.
        DELETE FROM pyxp.xp_rank_counts c WHERE c.neg_xp = v_bucket.neg_xp AND c.wallet = v_bucket.wallet;
        INSERT INTO pyxp.xp_rank_counts (neg_xp, wallet, slot, wallets)
        SELECT CASE WHEN p.n = 1 THEN v_bucket.neg_xp ELSE -p.total_xp END,
               CASE WHEN p.n = 1 THEN v_bucket.wallet ELSE p.user_wallet END,
               0, least(v_size, p.held - p.n + 1)
          FROM (SELECT r.total_xp, r.user_wallet, count(*) OVER () AS held,
                       row_number() OVER (ORDER BY r.total_xp DESC, r.user_wallet COLLATE "C") AS n
                  FROM pyxp.board_range(-v_bucket.neg_xp, v_bucket.wallet,
                                        -v_bucket.next_neg_xp, v_bucket.next_wallet) r) p
         WHERE p.n % v_size = 1;
        INSERT INTO pyxp.xp_rank_counts (neg_xp, wallet, slot, wallets)  -- it held nothing after all
        VALUES (v_bucket.neg_xp, v_bucket.wallet, 0, 0) ON CONFLICT DO NOTHING;
        v_recut := v_recut + 1;
    END LOOP;
    -- A period board's buckets past 2 x bucket_size wallets (a value many
    -- wallets share): cut by wallet, every bucket_size-th balance of its
    -- range (an index range of the board) starting a bucket.
    FOR v_bucket IN
        SELECT g.* FROM (SELECT c.period, c.period_start, c.period_xp, c.wallet_start, c.wallets,
                                lead(c.wallet_start) OVER (PARTITION BY c.period, c.period_start, c.period_xp
                                                           ORDER BY c.wallet_start) AS next_start
                           FROM pyxp.xp_period_rank_counts c) g  -- slot 0 only, since the fold
         WHERE g.wallets > 2 * v_size OR (v_full AND g.wallets > v_size)
    LOOP
        DELETE FROM pyxp.xp_period_rank_counts c
         WHERE c.period = v_bucket.period AND c.period_start = v_bucket.period_start
           AND c.period_xp = v_bucket.period_xp AND c.wallet_start = v_bucket.wallet_start;
        EXECUTE format($cut$
            INSERT INTO pyxp.xp_period_rank_counts (period, period_start, period_xp, wallet_start, slot, wallets)
            SELECT $1, $2, $3, CASE WHEN p.n = 1 THEN $4 ELSE p.user_wallet END, 0, least($6, p.held - p.n + 1)
              FROM (SELECT b.user_wallet, count(*) OVER () AS held,
                           row_number() OVER (ORDER BY b.user_wallet COLLATE "C") AS n
                      FROM pyxp.xp_balances b
                     WHERE b.%1$I = $2 AND b.%2$I = $3 AND b.user_wallet COLLATE "C" >= $4
                       AND ($5 IS NULL OR b.user_wallet COLLATE "C" < $5)) p
             WHERE p.n %% $6 = 1$cut$, v_bucket.period || '_start', v_bucket.period || '_xp')
        USING v_bucket.period, v_bucket.period_start, v_bucket.period_xp, v_bucket.wallet_start,
              v_bucket.next_start, v_size;
    END LOOP;
    -- Fresh statistics for the bucket probes (pyxp.rank_bucket_of): planned
    -- on a table the statistics still saw small, a probe read and sorted the
    -- whole table (58 us a probe against 2.6 us at a few thousand rows), in
    -- every backend whose cached plan was made then. ANALYZE also makes those
    -- backends plan again. A few milliseconds (0013).
    ANALYZE pyxp.xp_rank_counts, pyxp.xp_period_rank_counts;
    RETURN QUERY SELECT count(*), v_recut FROM pyxp.xp_rank_counts c;
END
$$;

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
    -- probe per balance (period_bucket_of with a NULL XP finds nothing at
    -- once): the others are one bucket, ''.
    SELECT 'rank_count_mismatch', NULL, NULL,
           format('%s board from %s: bucket of %s XP from %s counts %s wallets, holds %s',
                  coalesce(c.period, h.period), coalesce(c.period_start, h.period_start),
                  coalesce(c.period_xp, h.period_xp), quote_literal(coalesce(c.wallet_start, h.wallet_start)),
                  coalesce(c.counted, 0), coalesce(h.held, 0))
      FROM (SELECT c.period, c.period_start, c.period_xp, c.wallet_start, sum(c.wallets) AS counted
              FROM pyxp.xp_period_rank_counts c GROUP BY c.period, c.period_start, c.period_xp, c.wallet_start) c
      FULL JOIN (SELECT e.period, e.period_start, e.period_xp, coalesce(q.wallet_start, '') AS wallet_start,
                        count(*) AS held
                   FROM pyxp.period_board_entries() e
                   LEFT JOIN (SELECT DISTINCT s.period, s.period_start, s.period_xp
                                FROM pyxp.xp_period_rank_counts s WHERE s.wallet_start <> '') s
                          ON s.period = e.period AND s.period_start = e.period_start AND s.period_xp = e.period_xp
                   LEFT JOIN LATERAL pyxp.period_bucket_of(e.period, e.period_start,
                                                           CASE WHEN s.period IS NOT NULL THEN e.period_xp END,
                                                           e.user_wallet) q ON true
                  WHERE e.ranked
                  GROUP BY e.period, e.period_start, e.period_xp, coalesce(q.wallet_start, '')) h
             ON h.period = c.period AND h.period_start = c.period_start AND h.period_xp = c.period_xp
            AND h.wallet_start = c.wallet_start
     WHERE coalesce(c.counted, 0) <> coalesce(h.held, 0)
$$;

COMMENT ON FUNCTION pyxp.period_kinds() IS 'internal: the kinds of periods, numbered as the balances'' columns.';

COMMENT ON FUNCTION pyxp.period_board_entries() IS
    'internal: each balance on the board of its latest period of each kind, with its XP there.';

COMMENT ON FUNCTION pyxp.period_bucket_of(text, timestamptz, bigint, text) IS
    'internal: the bucket of a period board holding a period XP and wallet (xp_period_rank_counts).';

COMMENT ON FUNCTION pyxp.period_counts_from_balances() IS
    'internal: the period boards'' counts from the balances, one bucket per value.';

COMMENT ON FUNCTION pyxp.rebuild_period_columns(text) IS
    'internal: re-derives every balance''s latest periods and their XP from the ledger, in a zone, and the period boards'' counts.';

COMMENT ON FUNCTION pyxp.rank_problems() IS
    'internal: rank buckets and period board counts that differ from the balances they count (for pyxp.audit).';


REVOKE ALL ON FUNCTION pyxp.period_kinds(), pyxp.period_board_entries(), pyxp.period_bucket_of(text, timestamptz, bigint, text), pyxp.period_counts_from_balances() FROM PUBLIC;
GRANT SELECT ON pyxp.xp_period_rank_counts TO pyxp_reader;

INSERT INTO pyxp.xp_period_rank_counts SELECT * FROM pyxp.period_counts_from_balances();
