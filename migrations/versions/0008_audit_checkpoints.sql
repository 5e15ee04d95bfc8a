-- 0008: audit checkpoints and each wallet's order of application (issue 15).
-- Frozen copy of what sql/*.sql defines at this revision; never edit it.
--
-- Every ledger row gets wallet_seq, its position in its wallet's history
-- (1, 2, ...; assigned by the writer under the wallet's lock), and every
-- balance last_wallet_seq: the running-balance proof, history's pages and
-- the audit checkpoints use it instead of the global order of ids. Rows
-- already in the ledger are numbered in id order (the order they applied
-- in: they were inserted under their wallet's lock), with the append-only
-- trigger disabled for this one statement, inside this migration's
-- transaction (the owner's documented operation, as in 0005). The wallet
-- index becomes (user_wallet, wallet_seq) INCLUDE (what the audit's walk
-- reads). pyxp.audit walks each wallet's chain once;
-- pyxp.audit_since_checkpoint / pyxp.record_audit_checkpoint verify what was
-- written since the last checkpoint (xp_audit_checkpoints,
-- xp_wallet_checkpoints).
SET LOCAL ROLE pyxp_owner;

ALTER TABLE pyxp.xp_transactions ADD COLUMN wallet_seq bigint;
-- The UPDATE below writes a new version of every row: without the secondary
-- indexes it is one pass (each index would otherwise take an entry per row,
-- at random places); they are built again after it, as they were. (At 10M
-- rows: 31 min and still running with the indexes in place.)
DROP INDEX pyxp.xp_transactions_wallet, pyxp.xp_transactions_feed, pyxp.xp_transactions_created,
           pyxp.xp_transactions_claim, pyxp.xp_transactions_request_rows, pyxp.xp_transactions_reversed_once;
ALTER TABLE pyxp.xp_transactions DISABLE TRIGGER xp_transactions_append_only;
UPDATE pyxp.xp_transactions t
   SET wallet_seq = n.seq
  FROM (SELECT x.id, row_number() OVER (PARTITION BY x.user_wallet ORDER BY x.id) AS seq
          FROM pyxp.xp_transactions x) n
 WHERE t.id = n.id;
ALTER TABLE pyxp.xp_transactions ENABLE TRIGGER xp_transactions_append_only;
ALTER TABLE pyxp.xp_transactions ALTER COLUMN wallet_seq SET NOT NULL;
CREATE INDEX xp_transactions_feed ON pyxp.xp_transactions (feed_xid, id);
CREATE INDEX xp_transactions_created ON pyxp.xp_transactions USING brin (created_at);
CREATE UNIQUE INDEX xp_transactions_claim ON pyxp.xp_transactions (pyxp.key_hash(idempotency_key))
    WHERE request_digest IS NOT NULL;
CREATE INDEX xp_transactions_request_rows ON pyxp.xp_transactions (idempotency_key)
    WHERE request_digest IS NULL;
CREATE UNIQUE INDEX xp_transactions_reversed_once ON pyxp.xp_transactions (reverses)
    WHERE reverses IS NOT NULL;
-- A wallet's rows in order of application (history, audit, checkpoints); one
-- row per position. The INCLUDE columns are what pyxp.audit's walk of every
-- wallet's chain reads, so the walk is an index-only scan in that order
-- (the heap in index order is random reads: 76 s against 5 s at 10M rows).
CREATE UNIQUE INDEX xp_transactions_wallet_seq ON pyxp.xp_transactions (user_wallet, wallet_seq)
    INCLUDE (balance_after, xp_amount, created_at, reverses);

ALTER TABLE pyxp.xp_balances ADD COLUMN last_wallet_seq bigint NOT NULL DEFAULT 0;
UPDATE pyxp.xp_balances b
   SET last_wallet_seq = n.rows_
  FROM (SELECT t.user_wallet, count(*) AS rows_ FROM pyxp.xp_transactions t GROUP BY t.user_wallet) n
 WHERE b.user_wallet = n.user_wallet;

-- Audit checkpoints (pyxp.record_audit_checkpoint): each one a point up to
-- which the ledger was verified. snapshot_xmin is the xmin of the snapshot
-- the verification read: every row that snapshot did not see was written by
-- a transaction with an id >= snapshot_xmin, so its feed_xid (>= its writer's
-- id) is too, and the next verification finds the wallets with new rows by a
-- range scan of xp_transactions_feed, in time proportional to the new rows.
CREATE TABLE pyxp.xp_audit_checkpoints (
    checkpoint_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at        timestamptz NOT NULL DEFAULT now(),
    snapshot_xmin     xid8 NOT NULL,
    wallets_verified  bigint NOT NULL,   -- wallets with rows since the previous checkpoint
    rows_verified     bigint NOT NULL    -- rows since the previous checkpoint
);

-- Per wallet, its position at its last checkpoint: the wallet_seq of its last
-- verified row and the balance there. A wallet without a row here starts at
-- position 0 with 0 XP. pyxp.audit checks every row here against the ledger.
CREATE TABLE pyxp.xp_wallet_checkpoints (
    user_wallet    text PRIMARY KEY,
    wallet_seq     bigint NOT NULL CHECK (wallet_seq >= 1),
    total_xp       bigint NOT NULL,
    checkpoint_id  bigint NOT NULL REFERENCES pyxp.xp_audit_checkpoints
);
REVOKE ALL ON pyxp.xp_audit_checkpoints, pyxp.xp_wallet_checkpoints FROM PUBLIC;
GRANT SELECT ON pyxp.xp_audit_checkpoints, pyxp.xp_wallet_checkpoints TO pyxp_reader;

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
    UPDATE pyxp.xp_balances x
       SET total_xp = coalesce(f.after::bigint, x.total_xp), current_level = c.level,
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
                   (array_agg(b.total_xp))[1] AS total_xp
              FROM ROWS FROM (unnest(v_rows), unnest(v_claims), unnest(v_after), unnest(v_feed), unnest(v_ids),
                              unnest(v_seq))
                   WITH ORDINALITY r(call_index, user_wallet, idempotency_key, inputs, transaction_type, xp_amount,
                                     xp_requested, apply_floor, rule_id, campaign_id, subject, metadata, reverses,
                                     moderations, claim, after, feed, id, seq, ord)
             CROSS JOIN LATERAL (SELECT b.total_xp FROM pyxp.xp_balances b WHERE b.user_wallet = r.user_wallet LIMIT 1) b
             GROUP BY r.user_wallet) f
     CROSS JOIN LATERAL pyxp.curve_position(p_ruleset, coalesce(f.after::bigint, f.total_xp)) c
     WHERE x.user_wallet = f.user_wallet AND (f.after IS NOT NULL OR f.moderations <> 0);

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

-- Public: the XP a wallet earned in the period containing `at` (its rows
-- there, reversals counted in the period of what they reverse); 0 if none.
-- 'all': its total.
CREATE OR REPLACE FUNCTION pyxp.period_xp(wallet text, period text, at timestamptz DEFAULT now())
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
    -- An earlier period: the wallet's rows (index xp_transactions_wallet_seq).
    RETURN coalesce((
        SELECT sum(t.xp_amount)
          FROM pyxp.xp_transactions t
          LEFT JOIN pyxp.xp_transactions o ON o.id = t.reverses
         WHERE t.user_wallet = v_wallet
           AND coalesce(o.created_at, t.created_at) >= v_bounds.period_start
           AND coalesce(o.created_at, t.created_at) < v_bounds.period_end), 0)::bigint;
END
$$;

-- Reads: balance, history (the audit is in 07_verification.sql).
-- SECURITY DEFINER so that pyxp_writer, which has no SELECT on the tables,
-- can read through them; pyxp_reader may also read the tables directly.

-- A wallet's balance. A wallet with no history has 0 XP at level 1 (one row
-- with created_at NULL), so callers need no special case.
CREATE OR REPLACE FUNCTION pyxp.balance(wallet text)
RETURNS TABLE (user_wallet text, total_xp bigint, current_level bigint, xp_to_next_level bigint,
               total_moderations bigint, created_at timestamptz, updated_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$
DECLARE
    v_wallet text := pyxp.checked_wallet(balance.wallet);
BEGIN
    RETURN QUERY
        SELECT b.user_wallet, b.total_xp, b.current_level, b.xp_to_next_level,
               b.total_moderations, b.created_at, b.updated_at
          FROM pyxp.xp_balances b WHERE b.user_wallet = v_wallet;
    IF NOT FOUND THEN
        RETURN QUERY
            SELECT v_wallet, 0::bigint, c.level, c.next_level_xp::bigint, 0::bigint,
                   NULL::timestamptz, NULL::timestamptz
              FROM pyxp.curve_position(pyxp.active_ruleset_id(), 0) c;
    END IF;
END
$$;

-- A wallet's ledger rows, newest first (by wallet_seq, the wallet's order of
-- application). Keyset pagination: pass the last transaction_id of a page as
-- before_id to get the next one: the rows before that row in the wallet's
-- order (index xp_transactions_wallet_seq). A before_id that is not one of
-- the wallet's rows gives the wallet's rows with a lower id (a wallet's ids
-- grow with its wallet_seq). max_rows: 1..1000.
CREATE OR REPLACE FUNCTION pyxp.history(wallet text, max_rows integer DEFAULT 50, before_id bigint DEFAULT NULL)
RETURNS TABLE (transaction_id bigint, user_wallet text, transaction_type text, xp_amount bigint,
               xp_requested bigint, balance_after bigint, rule_id bigint, campaign_id text,
               subject text, idempotency_key text, metadata jsonb, reverses bigint,
               created_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$
DECLARE
    v_wallet text := pyxp.checked_wallet(history.wallet);
    v_max integer := pyxp.checked_row_count('max_rows', history.max_rows);
    v_below bigint;  -- rows with a wallet_seq below this one
BEGIN
    IF history.before_id IS NULL THEN
        v_below := 9223372036854775807;
    ELSE
        SELECT t.wallet_seq INTO v_below
          FROM pyxp.xp_transactions t WHERE t.id = history.before_id AND t.user_wallet = v_wallet;
        IF NOT FOUND THEN  -- another wallet's row, or none: the wallet's rows with a lower id
            SELECT coalesce(max(t.wallet_seq), 0) + 1 INTO v_below
              FROM pyxp.xp_transactions t WHERE t.user_wallet = v_wallet AND t.id < history.before_id;
        END IF;
    END IF;
    RETURN QUERY
        SELECT t.id, t.user_wallet, t.transaction_type, t.xp_amount, t.xp_requested, t.balance_after,
               t.rule_id, t.campaign_id, t.subject, t.idempotency_key, t.metadata, t.reverses, t.created_at
          FROM pyxp.xp_transactions t
         WHERE t.user_wallet = v_wallet AND t.wallet_seq < v_below
         ORDER BY t.wallet_seq DESC
         LIMIT v_max;
END
$$;

-- Verification: pyxp.audit (everything, the whole ledger), and audit
-- checkpoints: pyxp.audit_since_checkpoint proves what was written since the
-- last checkpoint in time proportional to the new rows, and
-- pyxp.record_audit_checkpoint moves the checkpoint forward once that proof
-- is clean (SPEC 4 "every balance provable from its history": a balance is
-- its checkpoint's balance + the rows since).
--
-- Both walk each wallet's chain in wallet_seq order (pyxp.chain_problems):
-- the full audit every wallet from its first row, the incremental one the
-- wallets with new rows from their checkpoint's position. Why the walk is
-- fast: index xp_transactions_wallet_seq carries what it reads (an
-- index-only scan, merge-joined to the balances in wallet order), and every
-- per-wallet check is computed once per wallet, not once per row.
-- SECURITY DEFINER so that pyxp_writer and pyxp_reader can call them.

-- The xmin of the snapshot the last checkpoint read (NULL: no checkpoint
-- yet). Every row that snapshot did not see has a feed_xid >= it.
CREATE OR REPLACE FUNCTION pyxp.last_checkpoint_xmin()
RETURNS xid8
LANGUAGE sql STABLE
AS $$
    SELECT k.snapshot_xmin FROM pyxp.xp_audit_checkpoints k ORDER BY k.checkpoint_id DESC LIMIT 1
$$;

-- The wallets a verification walks, each from a position, with its balance
-- row (NULL columns: none) and its checkpoint (cp_*, NULL: none).
-- p_since_checkpoint false: every wallet with a balance, from its first row.
-- true (callers pass it only when a checkpoint exists): the wallets with a
-- row written since the last checkpoint (found by the feed index: feed_xid
-- >= the checkpoint's snapshot xmin), from their checkpoint's position, each
-- looked up by its key (a probe per wallet, never a pass over a table).
-- Callers plan it with p_since_checkpoint known (force_custom_plan), so
-- only one branch is planned.
CREATE OR REPLACE FUNCTION pyxp.audited_wallets(p_since_checkpoint boolean)
RETURNS TABLE (user_wallet text, from_seq bigint, from_xp bigint, cp_seq bigint, cp_xp bigint,
               total_xp bigint, current_level bigint, xp_to_next_level bigint, last_wallet_seq bigint,
               day_start timestamptz, day_xp bigint, week_start timestamptz, week_xp bigint,
               month_start timestamptz, month_xp bigint, year_start timestamptz, year_xp bigint)
LANGUAGE sql STABLE
AS $$
    SELECT b.user_wallet, 0::bigint, 0::bigint, c.wallet_seq, c.total_xp,
           b.total_xp, b.current_level, b.xp_to_next_level, b.last_wallet_seq,
           b.day_start, b.day_xp, b.week_start, b.week_xp, b.month_start, b.month_xp, b.year_start, b.year_xp
      FROM pyxp.xp_balances b
      LEFT JOIN pyxp.xp_wallet_checkpoints c ON c.user_wallet = b.user_wallet
     WHERE NOT p_since_checkpoint
    UNION ALL
    SELECT w.user_wallet, coalesce(c.wallet_seq, 0), coalesce(c.total_xp, 0), c.wallet_seq, c.total_xp,
           b.total_xp, b.current_level, b.xp_to_next_level, b.last_wallet_seq,
           b.day_start, b.day_xp, b.week_start, b.week_xp, b.month_start, b.month_xp, b.year_start, b.year_xp
      FROM (SELECT DISTINCT t.user_wallet FROM pyxp.xp_transactions t
             WHERE t.feed_xid >= pyxp.last_checkpoint_xmin()) w
      LEFT JOIN LATERAL (SELECT b.* FROM pyxp.xp_balances b WHERE b.user_wallet = w.user_wallet LIMIT 1) b ON true
      LEFT JOIN LATERAL (SELECT c.* FROM pyxp.xp_wallet_checkpoints c WHERE c.user_wallet = w.user_wallet LIMIT 1) c
             ON true
     WHERE p_since_checkpoint
$$;

-- A wallet's XP in the period of a kind starting at p_start, from its rows
-- (a reversal in its original's period): what pyxp.chain_problems reports
-- against a balance's period columns, on the mismatch path only.
CREATE OR REPLACE FUNCTION pyxp.period_xp_from_rows(p_wallet text, p_start timestamptz, p_kind text, p_timezone text)
RETURNS bigint
LANGUAGE sql STABLE
AS $$
    SELECT sum(t.xp_amount)::bigint
      FROM pyxp.xp_transactions t
      LEFT JOIN pyxp.xp_transactions o ON o.id = t.reverses
     WHERE t.user_wallet = p_wallet AND date_trunc(p_kind, coalesce(o.created_at, t.created_at), p_timezone) = p_start
$$;

-- The chain checks, one walk of each audited wallet's rows in wallet_seq
-- order from its starting position (its checkpoint's row, the anchor,
-- included):
--   running_balance      balance_after <> previous balance_after + xp_amount
--   wallet_seq_gap       a row's wallet_seq is not the previous one's + 1
--                        (the first row's previous is 0: rows are 1, 2, ...)
--   checkpoint_mismatch  the checkpoint's row is missing, or its
--                        balance_after is not the checkpoint's balance
--   balance_mismatch     xp_balances.total_xp <> the checkpoint's balance
--                        + the rows since (the full audit: the ledger sum)
--   wallet_seq_mismatch  xp_balances.last_wallet_seq <> the last row's
--   level_mismatch       the level is not the active curve's for the total
--   period_mismatch      (full audit only: a period's rows may predate the
--                        checkpoint) the balance's latest periods and their
--                        XP (sql/07_periods.sql) are not the ledger's
-- Per-row findings are gathered per wallet (jsonb, NULL when healthy), so
-- each wallet is one index-only range scan, one window and one aggregate.
CREATE OR REPLACE FUNCTION pyxp.chain_problems(p_since_checkpoint boolean)
RETURNS TABLE (check_name text, user_wallet text, wallet_seq bigint, detail text)
LANGUAGE sql STABLE
AS $$
    WITH per_wallet AS (
        -- One wallet at a time (a nested loop over the audited wallets): its
        -- rows from the index in wallet_seq order, the window and the
        -- aggregate over them, so no sort of the whole ledger (a merge of
        -- all wallets sorted 10M rows: 69 s for the walk, against 25 s).
        SELECT g.*, w.*
          FROM pyxp.audited_wallets(p_since_checkpoint) g
         CROSS JOIN LATERAL (
                SELECT coalesce(max(r.seq), 0) AS ledger_seq,
                       g.from_xp + coalesce(sum(r.xp_amount) FILTER (WHERE r.seq > g.from_seq), 0) AS ledger_xp,
                       coalesce(bool_or(r.seq = g.cp_seq), false) AS cp_found,
                       max(r.at) AS latest_at,
                       sum(r.xp_amount) FILTER (WHERE r.at >= g.day_start) AS ledger_day_xp,
                       sum(r.xp_amount) FILTER (WHERE r.at >= g.week_start) AS ledger_week_xp,
                       sum(r.xp_amount) FILTER (WHERE r.at >= g.month_start) AS ledger_month_xp,
                       sum(r.xp_amount) FILTER (WHERE r.at >= g.year_start) AS ledger_year_xp,
                       jsonb_agg(jsonb_build_object('seq', r.seq, 'after', r.balance_after, 'amount', r.xp_amount,
                                                    'previous', r.previous, 'previous_seq', r.previous_seq,
                                                    'running', r.running, 'gap', r.gap, 'checkpoint', r.checkpoint))
                           FILTER (WHERE r.running OR r.gap OR r.checkpoint) AS bad_rows
                  FROM (SELECT y.*,
                               y.seq > g.from_seq AND y.balance_after <> y.previous + y.xp_amount AS running,
                               y.seq > g.from_seq AND y.seq <> y.previous_seq + 1 AS gap,
                               y.seq = g.cp_seq AND y.balance_after <> g.cp_xp AS checkpoint
                          FROM (SELECT x.wallet_seq AS seq, x.balance_after, x.xp_amount,
                                       CASE WHEN x.reverses IS NULL THEN x.created_at  -- a reversal counts in its original's period
                                            ELSE (SELECT o.created_at FROM pyxp.xp_transactions o WHERE o.id = x.reverses)
                                       END AS at,
                                       coalesce(lag(x.balance_after) OVER w, g.from_xp) AS previous,
                                       coalesce(lag(x.wallet_seq) OVER w, g.from_seq) AS previous_seq
                                  FROM pyxp.xp_transactions x
                                 WHERE x.user_wallet = g.user_wallet AND x.wallet_seq >= g.from_seq
                                WINDOW w AS (ORDER BY x.wallet_seq)) y) r
             ) w
    ), checked AS (
        SELECT p.*, c.level, c.next_level_xp, z.tz,
               p.total_xp IS DISTINCT FROM p.ledger_xp AS bad_balance,
               p.last_wallet_seq IS DISTINCT FROM p.ledger_seq AS bad_seq,
               p.total_xp IS NOT NULL
                   AND (p.current_level <> c.level OR p.xp_to_next_level <> c.next_level_xp - p.total_xp) AS bad_level,
               p.cp_seq IS NOT NULL AND NOT p.cp_found AS bad_checkpoint,
               NOT p_since_checkpoint AND p.total_xp IS NOT NULL
                   AND ((p.day_start, p.day_xp, p.week_start, p.week_xp, p.month_start, p.month_xp,
                         p.year_start, p.year_xp)
                        IS DISTINCT FROM
                        (date_trunc('day', p.latest_at, z.tz), p.ledger_day_xp,
                         date_trunc('week', p.latest_at, z.tz), p.ledger_week_xp,
                         date_trunc('month', p.latest_at, z.tz), p.ledger_month_xp,
                         date_trunc('year', p.latest_at, z.tz), p.ledger_year_xp)) AS bad_periods
          FROM per_wallet p
         CROSS JOIN (SELECT r.ruleset_id, r.timezone AS tz FROM pyxp.rulesets r WHERE r.is_active) z
         CROSS JOIN LATERAL pyxp.curve_position(z.ruleset_id, coalesce(p.total_xp, 0)) c
    )
    SELECT f.check_name, c.user_wallet, f.wallet_seq, f.detail
      FROM checked c
     CROSS JOIN LATERAL (
            -- The rows' findings, as the walk flagged them.
            SELECT k.check_name, (r ->> 'seq')::bigint AS wallet_seq, k.detail
              FROM jsonb_array_elements(c.bad_rows) r
             CROSS JOIN LATERAL (VALUES
                    ('checkpoint_mismatch', (r ->> 'checkpoint')::boolean,
                     format('wallet_seq %s: balance_after = %s, checkpoint says %s', r ->> 'seq', r ->> 'after',
                            c.cp_xp)),
                    ('running_balance', (r ->> 'running')::boolean,
                     format('balance_after = %s, previous balance_after %s + xp_amount %s = %s', r ->> 'after',
                            r ->> 'previous', r ->> 'amount',
                            (r ->> 'previous')::bigint + (r ->> 'amount')::bigint)),
                    ('wallet_seq_gap', (r ->> 'gap')::boolean,
                     format('wallet_seq %s follows wallet_seq %s', r ->> 'seq', r ->> 'previous_seq'))
                 ) k(check_name, found, detail)
             WHERE k.found
            UNION ALL
            SELECT 'checkpoint_mismatch', NULL,
                   format('checkpoint at wallet_seq %s (%s XP): no such ledger row', c.cp_seq, c.cp_xp)
             WHERE c.bad_checkpoint
            UNION ALL
            SELECT 'balance_mismatch', NULL,
                   CASE WHEN c.total_xp IS NULL
                        THEN format('ledger sum %s but no xp_balances row', c.ledger_xp)
                        WHEN c.from_seq > 0
                        THEN format('xp_balances.total_xp = %s, checkpoint %s + rows since = %s',
                                    c.total_xp, c.from_xp, c.ledger_xp)
                        ELSE format('xp_balances.total_xp = %s, ledger sum = %s', c.total_xp, c.ledger_xp) END
             WHERE c.bad_balance
            UNION ALL
            SELECT 'wallet_seq_mismatch', NULL,
                   format('xp_balances.last_wallet_seq = %s, last ledger row''s wallet_seq = %s',
                          c.last_wallet_seq, c.ledger_seq)
             WHERE c.bad_seq AND c.total_xp IS NOT NULL
            UNION ALL
            SELECT 'level_mismatch', NULL,
                   format('level %s with %s to next, curve says level %s with %s to next',
                          c.current_level, c.xp_to_next_level, c.level, c.next_level_xp - c.total_xp)
             WHERE c.bad_level
            UNION ALL
            SELECT 'period_mismatch', NULL,
                   format('%s: xp_balances holds %s XP from %s, the ledger %s XP from %s', k.kind,
                          coalesce(k.kept_xp::text, 'no'), coalesce(k.kept_start::text, 'no period'),
                          coalesce(x.xp::text, 'no'), coalesce(k.start::text, 'no period'))
              FROM (VALUES ('day', c.day_start, c.day_xp, date_trunc('day', c.latest_at, c.tz)),
                           ('week', c.week_start, c.week_xp, date_trunc('week', c.latest_at, c.tz)),
                           ('month', c.month_start, c.month_xp, date_trunc('month', c.latest_at, c.tz)),
                           ('year', c.year_start, c.year_xp, date_trunc('year', c.latest_at, c.tz)))
                   k(kind, kept_start, kept_xp, start)
             CROSS JOIN LATERAL pyxp.period_xp_from_rows(c.user_wallet, k.start, k.kind, c.tz) AS x(xp)
             WHERE c.bad_periods AND (k.kept_start, k.kept_xp) IS DISTINCT FROM (k.start, x.xp)
         ) f
     WHERE c.bad_rows IS NOT NULL OR c.bad_balance OR c.bad_seq OR c.bad_level OR c.bad_checkpoint
        OR c.bad_periods
$$;

-- The rows the single-row checks read: every row (p_since_checkpoint false)
-- or the rows written since the last checkpoint (a superset: feed_xid >= its
-- snapshot's xmin; callers pass true only when a checkpoint exists). A
-- function, not a CTE: each check scans what it needs (a CTE read by three
-- checks was a 10M-row tuplestore).
CREATE OR REPLACE FUNCTION pyxp.audited_rows(p_since_checkpoint boolean)
RETURNS SETOF pyxp.xp_transactions
LANGUAGE sql STABLE
AS $$
    SELECT t.* FROM pyxp.xp_transactions t
     WHERE NOT p_since_checkpoint
    UNION ALL
    SELECT t.* FROM pyxp.xp_transactions t
     WHERE p_since_checkpoint AND t.feed_xid >= pyxp.last_checkpoint_xmin()
$$;

-- The checks of single rows (pyxp.audited_rows):
--   reversal_mismatch   a reversal that does not mirror its original (same
--                       wallet, opposite amount), or reverses a reversal
--   rule_missing, rule_mismatch  a row's rule is gone, or is another action
--   request_missing     a flow's or reversal's row without its xp_requests row
CREATE OR REPLACE FUNCTION pyxp.row_problems(p_since_checkpoint boolean)
RETURNS TABLE (check_name text, user_wallet text, transaction_id bigint, detail text)
LANGUAGE sql STABLE
AS $$
    SELECT 'reversal_mismatch', t.user_wallet, t.id,
           format('reverses transaction %s (%s XP to %s) with %s XP', o.id, o.xp_amount, o.user_wallet, t.xp_amount)
      FROM pyxp.audited_rows(p_since_checkpoint) t
     CROSS JOIN LATERAL (SELECT o.* FROM pyxp.xp_transactions o WHERE o.id = t.reverses LIMIT 1) o
     WHERE t.reverses IS NOT NULL
       AND (t.xp_amount <> -o.xp_amount OR t.user_wallet <> o.user_wallet OR o.reverses IS NOT NULL)
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
       AND NOT EXISTS (SELECT FROM pyxp.xp_requests q WHERE q.idempotency_key = t.idempotency_key)
$$;

-- Every inconsistency between the ledger, the balances and the rules, one
-- row each; no rows when healthy. What it proves: each wallet's rows are
-- numbered 1, 2, ... and each row's balance_after chains from the previous
-- one, each balance equals the sum of its wallet's rows and holds its last
-- wallet_seq, levels match the active curve, the audit checkpoints match the
-- ledger (pyxp.chain_problems); reversals mirror what they reverse, rows name
-- the action of an existing rule, a flow's or reversal's rows have their
-- request (pyxp.row_problems); exactly one ruleset is active, no ledger row
-- lacks its balance, total_moderations counts the votes recorded, the
-- balances' period columns and the caps' usage match the ledger and no cap
-- is exceeded, a registration is granted exactly when its client email was
-- onboarded, identities stored before 0002 read the same today.
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
    SELECT c.check_name, c.user_wallet,
           (SELECT t.id FROM pyxp.xp_transactions t WHERE t.user_wallet = c.user_wallet AND t.wallet_seq = c.wallet_seq),
           c.detail
      FROM pyxp.chain_problems(false) c
    UNION ALL
    SELECT * FROM pyxp.row_problems(false)
    UNION ALL
    -- Rows of a wallet without a balance row: the walk starts from the
    -- balances, so it counts them; when every row was walked (the count
    -- matches), nothing more is read.
    SELECT 'balance_mismatch', o.user_wallet, NULL, format('ledger sum %s but no xp_balances row', o.total)
      FROM (SELECT t.user_wallet, sum(t.xp_amount) AS total
              FROM pyxp.xp_transactions t
             WHERE NOT EXISTS (SELECT FROM pyxp.xp_balances b WHERE b.user_wallet = t.user_wallet)
             GROUP BY t.user_wallet) o
     WHERE (SELECT count(*) FROM pyxp.xp_transactions)
           <> (SELECT coalesce(sum(b.last_wallet_seq), 0) FROM pyxp.xp_balances b)
    UNION ALL
    SELECT 'checkpoint_mismatch', c.user_wallet, NULL,
           format('checkpoint at wallet_seq %s (%s XP) of a wallet without a balance', c.wallet_seq, c.total_xp)
      FROM pyxp.xp_wallet_checkpoints c
     WHERE NOT EXISTS (SELECT FROM pyxp.xp_balances b WHERE b.user_wallet = c.user_wallet)
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
    -- Caps: what xp_cap_usage holds against the ledger, and no allowance
    -- used beyond the largest cap its rows' rules carried (nothing to read
    -- when no rule ever carried a cap).
    SELECT CASE WHEN coalesce(u.used_xp, 0) <> coalesce(l.used_xp, 0) THEN 'cap_usage_mismatch'
                ELSE 'cap_exceeded' END,
           coalesce(u.user_wallet, l.user_wallet), NULL,
           format('%s from %s: xp_cap_usage says %s XP used, the ledger %s XP, cap %s',
                  coalesce(u.allowance, l.allowance), coalesce(u.period_start, l.period_start),
                  coalesce(u.used_xp, 0), coalesce(l.used_xp, 0), coalesce(l.cap_max_xp::text, 'none'))
      FROM pyxp.xp_cap_usage u
      FULL JOIN pyxp.ledger_cap_usage() l
        ON l.user_wallet = u.user_wallet AND l.allowance = u.allowance AND l.period_start = u.period_start
     WHERE (coalesce(u.used_xp, 0) <> coalesce(l.used_xp, 0) OR l.used_xp > l.cap_max_xp)
       AND (EXISTS (SELECT FROM pyxp.rules ru WHERE ru.cap_max_xp IS NOT NULL)
            OR EXISTS (SELECT FROM pyxp.xp_cap_usage))
    ORDER BY 1, 2, 3
$$;

-- Public: the same findings as pyxp.audit, for what was written since the
-- last checkpoint (pyxp.record_audit_checkpoint): the chain of every wallet
-- with new rows from its checkpoint's position (its balance = the
-- checkpoint's balance + the rows since), its level, and the new rows'
-- reversals, rules and requests. Reads in time proportional to the new rows
-- (and their wallets); runs on a hot standby. Not covered: what only the
-- full audit reads (period columns, caps' usage, vote counts,
-- registrations, a balance changed without a ledger row).
-- (Before the first checkpoint, what was written since is everything: the
-- checks run in full mode. plan_cache_mode: each call is planned for its mode.)
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
        SELECT c.check_name, c.user_wallet,
               (SELECT t.id FROM pyxp.xp_transactions t WHERE t.user_wallet = c.user_wallet AND t.wallet_seq = c.wallet_seq),
               c.detail
          FROM pyxp.chain_problems(v_since) c
        UNION ALL
        SELECT * FROM pyxp.row_problems(v_since)
        ORDER BY 1, 2, 3;
END
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
    LOCK TABLE pyxp.xp_audit_checkpoints IN EXCLUSIVE MODE;
    v_since := pyxp.last_checkpoint_xmin() IS NOT NULL;
    WITH problems AS MATERIALIZED (
        SELECT c.check_name, c.user_wallet, c.detail FROM pyxp.chain_problems(v_since) c
        UNION ALL
        SELECT r.check_name, r.user_wallet, r.detail FROM pyxp.row_problems(v_since) r
    ), verified AS MATERIALIZED (
        SELECT w.user_wallet, w.last_wallet_seq, w.total_xp, w.from_seq
          FROM pyxp.audited_wallets(v_since) w
         WHERE w.last_wallet_seq > 0 AND w.last_wallet_seq > w.from_seq
    ), header AS (
        INSERT INTO pyxp.xp_audit_checkpoints AS k (snapshot_xmin, wallets_verified, rows_verified)
        SELECT pg_snapshot_xmin(pg_current_snapshot()), count(*), coalesce(sum(v.last_wallet_seq - v.from_seq), 0)
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
    IF v_problems > 0 THEN
        RAISE EXCEPTION 'the ledger since the last checkpoint has % inconsistencies; no checkpoint recorded',
                        v_problems
            USING ERRCODE = 'PX028',
                  DETAIL = 'first: ' || v_first,
                  HINT = 'SELECT * FROM pyxp.audit_since_checkpoint() lists them';
    END IF;
END
$$;

-- Public: committed ledger rows after `after_cursor`, ascending by cursor, at
-- most `max_rows` (1..1000), optionally one wallet's. total_xp is the balance
-- right after the row; previous_level and current_level its levels before
-- and after, on the curve of the ruleset the row was written under.
CREATE OR REPLACE FUNCTION pyxp.changes(after_cursor bigint DEFAULT 0, max_rows integer DEFAULT 100,
                             wallet text DEFAULT NULL)
RETURNS TABLE (cursor bigint, transaction_id bigint, user_wallet text, transaction_type text,
               xp_amount bigint, total_xp bigint, previous_level bigint, current_level bigint,
               campaign_id text, subject text, created_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$
DECLARE
    v_max integer := pyxp.checked_row_count('max_rows', changes.max_rows);
    v_wallet text := CASE WHEN changes.wallet IS NOT NULL THEN pyxp.checked_wallet(changes.wallet) END;
    v_after bigint := changes.after_cursor;
    v_snapshot pg_snapshot := pg_current_snapshot();
    -- Every group below this is final (see above): the oldest transaction the
    -- snapshot saw running that is not running in another database now, and
    -- the reader's own transaction if it has written (its id is in no
    -- snapshot's list of running ones, and it may still roll back). On a hot
    -- standby the list of running transactions is not exposed (it is kept in
    -- the snapshot's overflow): there, the snapshot's xmin, cluster-wide.
    v_horizon xid8 := CASE WHEN pg_is_in_recovery() THEN pg_snapshot_xmin(v_snapshot) ELSE least(
        (SELECT min(x.xid)
           FROM pg_snapshot_xip(v_snapshot) x(xid)
          WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_locks l
                              JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
                             WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock'
                               AND l.transactionid = xid(x.xid)
                               AND a.datid <> (SELECT d.oid FROM pg_catalog.pg_database d
                                                WHERE d.datname = current_database()))),
        pg_current_xact_id_if_assigned(),
        pg_snapshot_xmax(v_snapshot)) END;
    v_group xid8;
    v_rank bigint;
BEGIN
    IF v_after IS NULL OR v_after < 0 THEN
        RAISE EXCEPTION 'invalid after_cursor: %', coalesce(v_after::text, 'NULL')
            USING ERRCODE = 'PX023', HINT = 'after_cursor is 0 (from the start) or a cursor the feed returned';
    END IF;
    v_group := (v_after >> 24)::text::xid8;
    v_rank := v_after & 16777215;
    RETURN QUERY
        WITH page AS (
            -- Rows from before 0003: cursor = id.
            (SELECT t.id AS cur, t.*
               FROM pyxp.xp_transactions t
              WHERE t.feed_xid IS NULL AND t.id > v_after
                AND (v_wallet IS NULL OR t.user_wallet = v_wallet)
              ORDER BY t.id
              LIMIT v_max)
            UNION ALL
            -- Whole feed: final groups from the cursor's on, ranked as scanned
            -- (index xp_transactions_feed; the window streams, LIMIT stops it).
            (SELECT (g.feed_xid::text::bigint << 24) + g.rank, g.id, g.user_wallet, g.transaction_type,
                    g.xp_amount, g.xp_requested, g.balance_after, g.rule_id, g.campaign_id, g.subject,
                    g.idempotency_key, g.metadata, g.reverses, g.created_at, g.feed_xid, g.request_digest,
                    g.wallet_seq
               FROM (SELECT t.*, row_number() OVER (PARTITION BY t.feed_xid ORDER BY t.id) AS rank
                       FROM pyxp.xp_transactions t
                      WHERE v_wallet IS NULL AND t.feed_xid >= v_group AND t.feed_xid < v_horizon
                      ORDER BY t.feed_xid, t.id) g
              WHERE g.feed_xid > v_group OR g.rank > v_rank
              ORDER BY g.feed_xid, g.id
              LIMIT v_max)
            UNION ALL
            -- One wallet: its rows in chain order (= feed order, fact 2), each
            -- ranked within its whole group.
            (SELECT (t.feed_xid::text::bigint << 24) + r.rank, t.*
               FROM pyxp.xp_transactions t
              CROSS JOIN LATERAL (SELECT count(*) AS rank FROM pyxp.xp_transactions o
                                   WHERE o.feed_xid = t.feed_xid AND o.id <= t.id) r
              WHERE v_wallet IS NOT NULL AND t.user_wallet = v_wallet
                AND t.feed_xid >= v_group AND t.feed_xid < v_horizon
                AND (t.feed_xid > v_group OR r.rank > v_rank)
              ORDER BY t.wallet_seq
              LIMIT v_max)
        )
        SELECT p.cur, p.id, p.user_wallet, p.transaction_type, p.xp_amount, p.balance_after,
               before_.level, after_.level, p.campaign_id, p.subject, p.created_at
          FROM page p
         CROSS JOIN LATERAL (SELECT pyxp.row_ruleset(p.rule_id, p.idempotency_key) AS ruleset_id) q
         CROSS JOIN LATERAL pyxp.curve_position(q.ruleset_id, p.balance_after - p.xp_amount) before_
         CROSS JOIN LATERAL pyxp.curve_position(q.ruleset_id, p.balance_after) after_
         ORDER BY p.cur
         LIMIT v_max;
END
$$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pyxp FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pyxp.audit_since_checkpoint() TO pyxp_writer, pyxp_reader;
-- Recording a checkpoint writes only the checkpoint tables and waits for no
-- award: a writer (a scheduled job) may do it.
GRANT EXECUTE ON FUNCTION pyxp.record_audit_checkpoint() TO pyxp_writer;

COMMENT ON FUNCTION pyxp.audit_since_checkpoint() IS
    'API: audit() of what was written since the last audit checkpoint (chains, balances, levels, new rows); none when healthy.';
COMMENT ON FUNCTION pyxp.record_audit_checkpoint() IS
    'API: verifies what was written since the last audit checkpoint and records a new one; PX028 when inconsistent.';
COMMENT ON FUNCTION pyxp.last_checkpoint_xmin() IS
    'internal: the snapshot xmin of the last audit checkpoint; rows it did not see have a feed_xid at least this.';
COMMENT ON FUNCTION pyxp.audited_wallets(boolean) IS
    'internal: the wallets an audit walks (all, or those with rows since the last checkpoint) and where each starts.';
COMMENT ON FUNCTION pyxp.period_xp_from_rows(text, timestamptz, text, text) IS
    'internal: a wallet''s XP in one period, from its rows (the audit''s mismatch path).';
COMMENT ON FUNCTION pyxp.chain_problems(boolean) IS
    'internal: one walk of the audited wallets'' chains in wallet_seq order: chain, balance, level, checkpoint, periods.';
COMMENT ON FUNCTION pyxp.audited_rows(boolean) IS
    'internal: the rows the single-row checks read: every row, or those written since the last checkpoint.';
COMMENT ON FUNCTION pyxp.row_problems(boolean) IS
    'internal: checks of single rows (reversals, rules, requests), on every row or on those since the last checkpoint.';

RESET ROLE;
