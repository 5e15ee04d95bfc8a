-- 0015: the ledger is partitioned by month (issue 15 item 3). Frozen copy of what sql/*.sql
-- defines at this revision; never edit it.
--
-- pyxp.xp_transactions becomes a table partitioned by range of created_at: an existing
-- ledger's table becomes its partition xp_transactions_before_YYYY_MM (every row before the
-- month after its last row; its indexes are rebuilt as the partitioned ledger's), then
-- one partition per month from there (pyxp.create_ledger_partitions) and a default one. A
-- partitioned table's unique keys hold its partition key, so:
--   * the primary key is (id, created_at);
--   * a generic award's claim moves from the ledger's unique index on its key's hash to the
--     new table xp_award_claims (key hash, id and created_at of its row), filled here from
--     the generic rows;
--   * the foreign key reverses -> id and the unique index on reverses go: a reversal's key
--     (reverse:<id>) is claimed once in xp_requests, and audit() reports a reversal whose
--     original is missing or reversed twice;
--   * (user_wallet, wallet_seq) is no longer a unique index (audit() reports a repeated
--     position).
-- The TRUNCATE trigger is given to every partition; event triggers (a superuser's) refuse
-- DETACH and DROP of a partition. An empty ledger is created afresh, as sql/*.sql does.
SET LOCAL ROLE pyxp_owner;

LOCK TABLE pyxp.xp_balances IN SHARE ROW EXCLUSIVE MODE;  -- no award meanwhile
LOCK TABLE pyxp.xp_transactions IN ACCESS EXCLUSIVE MODE;

DROP VIEW pyxp.idempotency_keys;
DROP FUNCTION pyxp.audited_rows(boolean);  -- returns the old table's row type
DROP TRIGGER xp_transactions_append_only ON pyxp.xp_transactions;
DROP TRIGGER xp_transactions_no_truncate ON pyxp.xp_transactions;
DROP TRIGGER xp_transactions_wake_feed ON pyxp.xp_transactions;
ALTER TABLE pyxp.xp_transactions DROP CONSTRAINT xp_transactions_reverses_fkey;

-- A generic award's claim (pyxp.award, pyxp.award_many): its key's hash, and
-- where its ledger row is (id, and created_at, which names its partition).
-- Its primary key is what makes a key claimable once across every partition
-- of the ledger, and what serialises two concurrent awards with one key: the
-- second INSERT waits for the first transaction, then skips its row, and the
-- writer replays or raises PX010 (sql/05_engine.sql). The writer inserts the
-- claim and its row in one statement; audit() checks that each generic row
-- has its claim and each claim its row. About 90 bytes per award with its
-- index (the ledger's unique index on the key's hash it replaces, before
-- 0015: about 40).
CREATE TABLE pyxp.xp_award_claims (
    key_hash        uuid PRIMARY KEY,          -- pyxp.key_hash(idempotency key)
    transaction_id  bigint NOT NULL,           -- xp_transactions.id of its row
    created_at      timestamptz NOT NULL       -- xp_transactions.created_at of its row
);

-- Each generic award's claim (pyxp.key_hash, spelled out: no function call per row).
ALTER TABLE pyxp.xp_award_claims DROP CONSTRAINT xp_award_claims_pkey;
INSERT INTO pyxp.xp_award_claims (key_hash, transaction_id, created_at)
SELECT encode(substr(sha256(convert_to(t.idempotency_key, 'UTF8')), 1, 16), 'hex')::uuid, t.id, t.created_at
  FROM pyxp.xp_transactions t
 WHERE t.request_digest IS NOT NULL;
ALTER TABLE pyxp.xp_award_claims ADD CONSTRAINT xp_award_claims_pkey PRIMARY KEY (key_hash);

-- The old table: dropped when empty, else renamed to the partition of its rows' months,
-- its indexes, identity and primary key dropped (the partitioned ledger builds its own).
DO $old_ledger$
DECLARE
    v_month timestamptz;
    v_last bigint;
BEGIN
    IF NOT EXISTS (SELECT FROM pyxp.xp_transactions) THEN
        DROP TABLE pyxp.xp_transactions;
        RETURN;
    END IF;
    SELECT greatest(date_trunc('month', now(), 'UTC'),
                    (date_trunc('month', max(t.created_at), 'UTC') AT TIME ZONE 'UTC' + interval '1 month')
                        AT TIME ZONE 'UTC'),
           max(t.id)
      INTO v_month, v_last
      FROM pyxp.xp_transactions t;
    SELECT greatest(v_last, CASE WHEN s.is_called THEN s.last_value ELSE s.last_value - 1 END)
      INTO v_last FROM pyxp.xp_transactions_id_seq s;
    PERFORM set_config('pyxp.migration_0015', v_month::text || '|' || v_last, true);
    DROP INDEX pyxp.xp_transactions_wallet_seq, pyxp.xp_transactions_feed, pyxp.xp_transactions_created,
               pyxp.xp_transactions_claim, pyxp.xp_transactions_request_rows, pyxp.xp_transactions_reversed_once;
    ALTER TABLE pyxp.xp_transactions DROP CONSTRAINT xp_transactions_pkey;
    ALTER TABLE pyxp.xp_transactions ALTER COLUMN id DROP IDENTITY;
    EXECUTE format('ALTER TABLE pyxp.xp_transactions RENAME TO %I',
                   'xp_transactions_before_' || to_char(v_month AT TIME ZONE 'UTC', 'YYYY_MM'));
END
$old_ledger$;

-- The ledger. Append-only: no UPDATE/DELETE/TRUNCATE privilege for anyone but
-- the owner, and triggers refuse them even for the owner, on every partition
-- (sql/12_partitions.sql, which also refuses DETACH and DROP of a partition).
-- Partitioned by range of created_at, one partition per calendar month (UTC;
-- sql/12_partitions.sql creates them ahead), so that a month's rows are one
-- table, and old months can be kept apart from the hot ones. What the
-- partitioning changes (0015): a key of the ledger holds created_at, so
--   * the primary key is (id, created_at): id stays unique (one identity
--     sequence hands it out), and a lookup by id probes each partition's
--     primary key;
--   * a generic award's claim, which must be unique across every partition,
--     is a row of pyxp.xp_award_claims (below), not a unique index of the
--     ledger;
--   * a row is reversed once because its reversal's key (reverse:<id>) is
--     claimed once in xp_requests; reverses carries no foreign key (the
--     writer reads the row it reverses; audit() reports a reversal whose
--     original is missing or reversed twice);
--   * (user_wallet, wallet_seq) is not a unique index: the writer numbers a
--     wallet's rows under its balance row lock, and audit()'s walk reports a
--     repeated or missing position (wallet_seq_gap).
-- Idempotency: a generic award's row (pyxp.award, pyxp.award_many) carries
-- request_digest, a digest of the call's inputs; its key is claimed in
-- xp_award_claims. Rows of flows and reversals have request_digest NULL:
-- their key is claimed in xp_requests, and xp_transactions_request_rows finds
-- their rows by the key's hash.
-- rule_id and idempotency_key carry no foreign key (a check per row, and a
-- share lock on the one rule and ruleset row every award names): audit()
-- reports a row whose rule or request is missing.
-- Invariants (checked by pyxp.audit()):
--   * per wallet, wallet_seq numbers the rows 1, 2, 3, ... in the order they
--     applied (the writer assigns it under the wallet's balance row lock, so
--     a wallet's rows commit in wallet_seq order), and balance_after =
--     previous balance_after + xp_amount in that order. Nothing relies on a
--     global order of ids (they may come from per-node ranges once the
--     ledger is distributed: README "Scaling out");
--   * xp_balances.total_xp = sum(xp_amount) = last balance_after, and
--     xp_balances.last_wallet_seq = the last row's wallet_seq.
CREATE TABLE pyxp.xp_transactions (
    id                bigint GENERATED ALWAYS AS IDENTITY,
    user_wallet       text NOT NULL,
    transaction_type  text NOT NULL,
    xp_amount         bigint NOT NULL,        -- applied
    xp_requested      bigint,                 -- set only when a balance floor cut the amount
    balance_after     bigint NOT NULL,
    rule_id           bigint,                 -- NULL for reversals
    campaign_id       text,
    subject           text,                   -- completion id, client email, ...
    idempotency_key   text NOT NULL,
    metadata          jsonb NOT NULL DEFAULT '{}',
    reverses          bigint,                 -- the row this one reverses (its id)
    created_at        timestamptz NOT NULL DEFAULT now(),
    -- The change feed's group (pyxp.changes, sql/11_changes.sql): the writing
    -- transaction's id, raised to the wallet's previous row's group so that a
    -- wallet's rows never go back in feed order. NULL for rows written before
    -- 0003 (their feed cursor is their id).
    feed_xid          xid8,
    -- A generic award's row: pyxp.inputs_digest of its inputs (its claim).
    request_digest    bigint,
    -- The row's position in its wallet's history: 1, 2, 3, ... (0008).
    wallet_seq        bigint NOT NULL,
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);

-- A wallet's rows in order of application (history, audit, checkpoints). The
-- INCLUDE columns are what pyxp.audit's walk of every
-- wallet's chain reads, so the walk is an index-only scan in that order
-- (the heap in index order is random reads: 76 s against 5 s at 10M rows).
CREATE INDEX xp_transactions_wallet_seq ON pyxp.xp_transactions (user_wallet, wallet_seq)
    INCLUDE (balance_after, xp_amount, created_at, reverses);
CREATE INDEX xp_transactions_feed ON pyxp.xp_transactions (feed_xid, id);
-- Boards of past periods read the rows of a time range (pyxp.period_board):
-- rows are appended in created_at order, so a BRIN index finds them for a
-- few bytes per thousand rows.
CREATE INDEX xp_transactions_created ON pyxp.xp_transactions USING brin (created_at);
CREATE INDEX xp_transactions_request_rows ON pyxp.xp_transactions (pyxp.key_hash(idempotency_key))
    WHERE request_digest IS NULL;
-- The reversal of a row (a row is reversed once: its reversal's key is
-- claimed once in xp_requests; audit() reports a row reversed twice).
CREATE INDEX xp_transactions_reversals ON pyxp.xp_transactions (reverses)
    WHERE reverses IS NOT NULL;

CREATE TRIGGER xp_transactions_append_only
    BEFORE UPDATE OR DELETE ON pyxp.xp_transactions
    FOR EACH ROW EXECUTE FUNCTION pyxp.refuse_ledger_change();
CREATE TRIGGER xp_transactions_no_truncate
    BEFORE TRUNCATE ON pyxp.xp_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION pyxp.refuse_ledger_change();

CREATE TRIGGER xp_transactions_wake_feed
    AFTER INSERT ON pyxp.xp_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION pyxp.wake_feed_listeners();

-- The rows the single-row checks read: every row (p_since_checkpoint false)
-- or the rows written since the last checkpoint (a superset: feed_xid >= its
-- snapshot's xmin; callers pass true only when a checkpoint exists). A
-- function, not a CTE: each check scans what it needs (a CTE read by three
-- checks was a 10M-row tuplestore).
CREATE FUNCTION pyxp.audited_rows(p_since_checkpoint boolean)
RETURNS SETOF pyxp.xp_transactions
LANGUAGE sql STABLE
AS $$
    SELECT t.* FROM pyxp.xp_transactions t
     WHERE NOT p_since_checkpoint
    UNION ALL
    SELECT t.* FROM pyxp.xp_transactions t
     WHERE p_since_checkpoint AND t.feed_xid >= pyxp.last_checkpoint_xmin()
$$;

COMMENT ON FUNCTION pyxp.audited_rows(boolean) IS
    'internal: the rows the single-row checks read: every row, or those written since the last checkpoint.';

REVOKE ALL ON FUNCTION pyxp.audited_rows(boolean) FROM PUBLIC;
-- Every idempotency key pyxp holds, wherever its claim is: a generic award's
-- row in the ledger (claimed in xp_award_claims), or a flow's or reversal's request (its key text
-- from its first ledger row, or kept in the request when it wrote none).
-- For auditors ("which call wrote this row?") and for checks that every key
-- has its rows.
CREATE VIEW pyxp.idempotency_keys AS
    SELECT t.idempotency_key, 'ledger'::text AS claimed_in, t.user_wallet, t.id AS transaction_id, t.created_at
      FROM pyxp.xp_transactions t
     WHERE t.request_digest IS NOT NULL
    UNION ALL
    SELECT coalesce(q.idempotency_key, f.idempotency_key), 'xp_requests', coalesce(f.user_wallet, q.inputs ->> 'wallet'),
           NULL, coalesce(q.created_at, f.created_at)
      FROM pyxp.xp_requests q
      LEFT JOIN LATERAL (SELECT t.idempotency_key, t.user_wallet, t.created_at FROM pyxp.xp_transactions t
                          WHERE pyxp.key_hash(t.idempotency_key) = q.key_hash AND t.request_digest IS NULL
                          LIMIT 1) f ON q.idempotency_key IS NULL;


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
                  LEFT JOIN LATERAL (SELECT k.id, k.request_digest, k.idempotency_key
                                      FROM pyxp.xp_award_claims c
                                      JOIN pyxp.xp_transactions k ON k.id = c.transaction_id AND k.created_at = c.created_at
                                      WHERE r.inputs IS NOT NULL AND c.key_hash = pyxp.key_hash(r.idempotency_key)
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
                                                      FROM pyxp.xp_award_claims c
                                                      JOIN pyxp.xp_transactions k ON k.id = c.transaction_id AND k.created_at = c.created_at
                                                      WHERE r.inputs IS NOT NULL AND c.key_hash = pyxp.key_hash(r.idempotency_key)
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

    -- 3. The new rows, in row order (ids ascend in row order: the sequence
    --    is read after the sort). A generic award's row is written with its
    --    claim (xp_award_claims), in the same statement; it is skipped if a
    --    call that committed while this one waited for the lock holds the
    --    key (the claim's INSERT waits for it, then skips: below).
    WITH numbered AS MATERIALIZED (
        SELECT r.*, nextval('pyxp.xp_transactions_id_seq') AS id, now() AS created_at
          FROM ROWS FROM (unnest(v_rows), unnest(v_claims), unnest(v_after), unnest(v_feed), unnest(v_seq))
               WITH ORDINALITY
               r(call_index, user_wallet, idempotency_key, inputs, transaction_type, xp_amount, xp_requested,
                 apply_floor, rule_id, campaign_id, subject, metadata, reverses, moderations, claim, after,
                 feed, seq, ord)
         WHERE r.claim IS NULL AND r.transaction_type IS NOT NULL
         ORDER BY r.ord
    ), claimed AS (
        INSERT INTO pyxp.xp_award_claims AS c (key_hash, transaction_id, created_at)
        SELECT pyxp.key_hash(r.idempotency_key), r.id, r.created_at FROM numbered r WHERE r.inputs IS NOT NULL
        ON CONFLICT (key_hash) DO NOTHING
        RETURNING c.transaction_id
    ), inserted AS (
        INSERT INTO pyxp.xp_transactions (id, user_wallet, transaction_type, xp_amount, xp_requested,
                                          balance_after, rule_id, campaign_id, subject, idempotency_key,
                                          metadata, reverses, feed_xid, request_digest, wallet_seq, created_at)
        OVERRIDING SYSTEM VALUE
        SELECT r.id, r.user_wallet, r.transaction_type, r.xp_amount::bigint, r.xp_requested::bigint, r.after::bigint,
               r.rule_id, r.campaign_id, r.subject, r.idempotency_key, coalesce(r.metadata, '{}'), r.reverses,
               r.feed, pyxp.inputs_digest(r.inputs), r.seq, r.created_at
          FROM numbered r
         WHERE r.inputs IS NULL OR r.id IN (SELECT c.transaction_id FROM claimed c)
         ORDER BY r.ord
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
         CROSS JOIN LATERAL (SELECT k.* FROM pyxp.xp_award_claims c
                               JOIN pyxp.xp_transactions k ON k.id = c.transaction_id AND k.created_at = c.created_at
                              WHERE r.inputs IS NOT NULL AND c.key_hash = pyxp.key_hash(r.idempotency_key)
                              LIMIT 1) k
         WHERE v_claims[r.ordinality] IS NULL              -- not a replay: a row this call meant to write
           AND NOT (k.id = ANY (coalesce(v_ids, '{}')))
         ORDER BY k.request_digest = pyxp.inputs_digest(r.inputs) AND k.idempotency_key = r.idempotency_key,
                  r.ordinality                              -- a conflict first
         LIMIT 1;
        IF NOT FOUND THEN
            -- A claim whose row the ledger does not hold (audit() reports
            -- claim_mismatch): neither a replay nor a conflict can be told.
            RAISE EXCEPTION 'an idempotency key of this call is claimed by transaction %, which the ledger does not hold',
                            (SELECT string_agg(c.transaction_id::text, ', ')
                               FROM unnest(v_rows) r JOIN pyxp.xp_award_claims c
                                 ON r.inputs IS NOT NULL AND c.key_hash = pyxp.key_hash(r.idempotency_key)
                              WHERE NOT EXISTS (SELECT FROM pyxp.xp_transactions k
                                                 WHERE k.id = c.transaction_id AND k.created_at = c.created_at))
                USING ERRCODE = 'PX028', HINT = 'SELECT * FROM pyxp.audit() reports it (claim_mismatch)';
        END IF;
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
-- The balance floor applied to a call's or batch's rows, under the wallets'
-- locks: penalties cut so that a balance does not go below it (the row then
-- records xp_requested), each wallet's rows walked in order from its
-- balance. Rows whose generic award was made before (replays) are skipped.
CREATE OR REPLACE FUNCTION pyxp.floored_rows(p_ruleset bigint, p_rows pyxp.pending_row[], p_floor bigint)
RETURNS pyxp.pending_row[]
LANGUAGE plpgsql
AS $$
DECLARE
    v_row record;
    v_next pyxp.pending_row[] := p_rows;
    v_wallet text;
    v_running numeric;
    v_applied numeric;
BEGIN
    FOR v_row IN
        SELECT r.ordinality AS ord, r.user_wallet, r.xp_amount, r.apply_floor,
               EXISTS (SELECT FROM pyxp.xp_award_claims c
                        WHERE r.inputs IS NOT NULL AND c.key_hash = pyxp.key_hash(r.idempotency_key)) AS claimed
          FROM unnest(p_rows) WITH ORDINALITY r
         ORDER BY r.user_wallet, r.ordinality
    LOOP
        CONTINUE WHEN v_row.claimed;
        IF v_wallet IS DISTINCT FROM v_row.user_wallet THEN
            v_wallet := v_row.user_wallet;
            SELECT b.total_xp INTO v_running FROM pyxp.xp_balances b WHERE b.user_wallet = v_wallet FOR UPDATE;
            v_running := coalesce(v_running, 0);
        END IF;
        v_applied := CASE WHEN v_row.apply_floor THEN pyxp.floored_amount(v_row.xp_amount, p_floor, v_running)
                          ELSE v_row.xp_amount END;
        IF v_applied <> v_row.xp_amount THEN
            v_next[v_row.ord].xp_requested := v_row.xp_amount;
            v_next[v_row.ord].xp_amount := v_applied;
        END IF;
        v_running := v_running + v_applied;
    END LOOP;
    RETURN v_next;
END
$$;
-- The rows of generic awards (pyxp.award: one event; pyxp.award_many: a
-- batch): each event's action's rule in the active ruleset, evaluated on its
-- params. Refused, naming the event in a batch: an unknown action (PX009), a
-- missing or unknown formula input (PX018, PX017), an amount beyond +-10^15
-- (PX004). An event whose key is already claimed is not checked: it replays
-- (its action may have left the ruleset since) or is a PX010, which
-- append_rows decides. The common case (a known action, no formula, no
-- params, an amount in range) is one query.
CREATE OR REPLACE FUNCTION pyxp.planned_awards(p_ruleset bigint, p_events pyxp.batch_event[], p_batch boolean)
RETURNS pyxp.pending_row[]
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_rows pyxp.pending_row[];
    v_plain boolean;
    v_problem record;
BEGIN
    SELECT array_agg(ROW(e.event_index, e.wallet, e.key, e.inputs, e.action,
                         pyxp.rule_amount(ru.xp_constant, ru.xp_coefficients, e.params), NULL, true, ru.rule_id,
                         e.campaign_id, e.subject, e.metadata, NULL, 0)::pyxp.pending_row ORDER BY e.event_index),
           bool_and(ru.rule_id IS NOT NULL AND ru.xp_coefficients = '{}' AND e.params = '{}'
                    AND abs(ru.xp_constant) <= 1e15)
      INTO v_rows, v_plain
      FROM unnest(p_events) e
      LEFT JOIN pyxp.rules ru ON ru.ruleset_id = p_ruleset AND ru.action = e.action;
    IF v_plain THEN
        RETURN v_rows;
    END IF;

    -- The checks, in this order, on the events whose key is not claimed yet.
    SELECT e.event_index, x.code, x.message, x.hint INTO v_problem
      FROM unnest(p_events) e
      LEFT JOIN pyxp.rules ru ON ru.ruleset_id = p_ruleset AND ru.action = e.action
     CROSS JOIN LATERAL (
            SELECT 1 AS step, 'PX009' AS code, format('unknown action %s', quote_literal(e.action)) AS message,
                   (SELECT format('actions of the active ruleset %s v%s: %s', r.name, r.version,
                                  (SELECT string_agg(a.action, ', ' ORDER BY a.position)
                                     FROM pyxp.rules a WHERE a.ruleset_id = r.ruleset_id))
                      FROM pyxp.rulesets r WHERE r.ruleset_id = p_ruleset) AS hint
             WHERE ru.rule_id IS NULL
            UNION ALL
            SELECT CASE p.code WHEN 'PX018' THEN 2 ELSE 3 END, p.code, p.message, p.hint
              FROM pyxp.formula_input_problems(ru.action, ru.xp_coefficients, e.params, true) p
             WHERE ru.rule_id IS NOT NULL
            UNION ALL
            SELECT 4, 'PX004', format('XP amount %s of %s is out of range',
                                      pyxp.rule_amount(ru.xp_constant, ru.xp_coefficients, e.params), ru.action),
                   'an award is at most 10^15 XP; check the formula inputs'
             WHERE ru.rule_id IS NOT NULL AND abs(pyxp.rule_amount(ru.xp_constant, ru.xp_coefficients, e.params)) > 1e15
         ) x
     WHERE NOT EXISTS (SELECT FROM pyxp.xp_award_claims c  -- LIMIT: a probe per event, never a hash join
                        WHERE c.key_hash = pyxp.key_hash(e.key) LIMIT 1)
     ORDER BY x.step, e.event_index
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '%', CASE WHEN p_batch THEN format('event %s: ', v_problem.event_index) ELSE '' END
                             || v_problem.message
            USING ERRCODE = v_problem.code, HINT = v_problem.hint;
    END IF;
    RETURN v_rows;
END
$$;
-- The checks of single rows (pyxp.audited_rows):
--   reversal_mismatch   a reversal that does not mirror its original (same
--                       wallet, opposite amount), reverses a reversal or a
--                       row that does not exist, or is a second reversal of
--                       its original (no foreign key or unique index holds
--                       these on a partitioned ledger: sql/01_schema.sql)
--   rule_missing, rule_mismatch  a row's rule is gone, or is another action
--   request_missing     a flow's or reversal's row without its xp_requests row
--                       (found by its key's hash)
--   claim_mismatch      a generic award's row without its claim in
--                       xp_award_claims, or a claim without its row, or
--                       whose hash is not its row's key's (the full audit
--                       joins the two tables on the row's id; since a
--                       checkpoint, each new row probes its claim)
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
                           FROM pyxp.xp_transactions o WHERE o.id = t.reverses LIMIT 1) o ON true
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
       AND (t.id IS NULL OR c.key_hash IS NULL
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
-- Every inconsistency between the ledger, the balances and the rules, one
-- row each; no rows when healthy. What it proves: each wallet's rows are
-- numbered 1, 2, ... and each row's balance_after chains from the previous
-- one, each balance equals the sum of its wallet's rows and holds its last
-- wallet_seq, levels match the active curve, the audit checkpoints match the
-- ledger (pyxp.chain_problems); reversals mirror what they reverse, rows name
-- the action of an existing rule, a flow's or reversal's rows have their
-- request (pyxp.row_problems) and a request its rows or its kept inputs;
-- the rank buckets count the balances they hold (pyxp.rank_problems);
-- exactly one ruleset is active, no ledger row lacks its balance, total_moderations counts the votes recorded, the
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
           -- (a position held twice, which no unique index prevents since 0015: its later row)
           (SELECT max(t.id) FROM pyxp.xp_transactions t WHERE t.user_wallet = c.user_wallet AND t.wallet_seq = c.wallet_seq),
           c.detail
      FROM pyxp.chain_problems(false) c
    UNION ALL
    SELECT * FROM pyxp.row_problems(false)
    UNION ALL
    SELECT * FROM pyxp.rank_problems()
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
      -- A vote is a request of a vote key: its rows (all to the voter) hold
      -- the key, or (a vote no rule awards) the request keeps it.
      FULL JOIN (SELECT x.user_wallet, count(*) AS votes
                   FROM (SELECT t.user_wallet, t.idempotency_key
                           FROM pyxp.xp_transactions t
                          WHERE t.request_digest IS NULL
                            AND t.idempotency_key ~ '^(campaign|completion)\.vote(/[0-9]+)?:'
                         UNION
                         SELECT q.inputs ->> 'wallet', q.idempotency_key
                           FROM pyxp.xp_requests q
                          WHERE q.idempotency_key ~ '^(campaign|completion)\.vote(/[0-9]+)?:') x
                  GROUP BY 1) v ON v.user_wallet = b.user_wallet
     WHERE coalesce(b.total_moderations, 0) <> coalesce(v.votes, 0)
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
    SELECT 'registration_grant', a.client_wallet, NULL,
           format('registration %s of %s is %s', a.id, a.client_email,
                  CASE WHEN a.xp_granted THEN 'granted without an onboarding of that email'
                       ELSE 'pending although that email was onboarded' END)
      FROM pyxp.agency_b2c_clients a
      LEFT JOIN pyxp.xp_requests q ON q.key_hash = pyxp.key_hash('client.onboarded:' || a.client_email)
     WHERE a.xp_granted <> (q.key_hash IS NOT NULL)
    UNION ALL
    -- Identities stored before 0002 that today's checks would read otherwise
    -- (NFKC, Unicode whitespace, invisible characters): one person may be two
    -- wallets or emails here; a DBA decides what to merge. A wallet already
    -- in the canonical 0x form (0x and 40 lower-case hex digits: ASCII, no
    -- space, nothing to fold) reads the same: only the others go through
    -- the PL/pgSQL checks (4.8 s of the audit at 1M balances, 1.7 s now).
    SELECT 'identity_not_normalised', b.user_wallet, NULL,
           CASE WHEN pyxp.invisible_character(f.form) IS NOT NULL
                THEN format('wallet %s holds U+%s, refused since 0002', quote_literal(b.user_wallet),
                            upper(lpad(to_hex(ascii(pyxp.invisible_character(f.form))), 4, '0')))
                ELSE format('wallet %s is read %s since 0002', quote_literal(b.user_wallet), quote_literal(f.form)) END
      FROM (SELECT b.user_wallet FROM pyxp.xp_balances b WHERE b.user_wallet COLLATE "C" !~ '^0x[0-9a-f]{40}$') b
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
               (SELECT max(t.id) FROM pyxp.xp_transactions t  -- a position held twice: its later row
                 WHERE t.user_wallet = c.user_wallet AND t.wallet_seq = c.wallet_seq),
               c.detail
          FROM pyxp.chain_problems(v_since) c
        UNION ALL
        SELECT * FROM pyxp.row_problems(v_since)
        ORDER BY 1, 2, 3;
END
$$;

COMMENT ON FUNCTION pyxp.key_hash(text) IS 'internal: the claims'' key (xp_award_claims, xp_requests), 16 bytes of sha256 of an idempotency key.';

GRANT SELECT ON pyxp.xp_transactions, pyxp.xp_award_claims, pyxp.idempotency_keys TO pyxp_reader;

-- The partitions a ledger has: name, range (NULL bounds: MINVALUE, or the
-- default partition) and whether it is the default.
CREATE FUNCTION pyxp.ledger_partitions()
RETURNS TABLE (partition_name text, range_start timestamptz, range_end timestamptz, is_default boolean)
LANGUAGE sql STABLE
SET search_path = pyxp, pg_temp
SET datestyle = 'ISO, YMD'  -- the bounds are read back from their text: ISO with a numeric offset, never
SET timezone = 'UTC'        -- an abbreviation that reads back as another zone (IST, CST)
AS $$
    SELECT c.relname::text,
           (substring(b.bound FROM 'FROM \(''([^'']+)''\)'))::timestamptz,
           (substring(b.bound FROM 'TO \(''([^'']+)''\)'))::timestamptz,
           b.bound = 'DEFAULT'
      FROM pg_catalog.pg_inherits i
      JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
     CROSS JOIN LATERAL (SELECT pg_catalog.pg_get_expr(c.relpartbound, c.oid) AS bound) b
     WHERE i.inhparent = 'pyxp.xp_transactions'::regclass
     ORDER BY 3 NULLS LAST, 2 NULLS FIRST
$$;
-- A table to become a partition of the ledger (attached by the caller): the
-- ledger's columns, the TRUNCATE refusal (not cloned by PostgreSQL) and the
-- reader's grant. The ledger's indexes and row triggers come with the ATTACH.
CREATE FUNCTION pyxp.new_ledger_partition(p_name text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pyxp, pg_temp
AS $$
BEGIN
    EXECUTE format('CREATE TABLE pyxp.%I (LIKE pyxp.xp_transactions INCLUDING DEFAULTS)', p_name);
    EXECUTE format('CREATE TRIGGER xp_transactions_no_truncate BEFORE TRUNCATE ON pyxp.%I '
                   'FOR EACH STATEMENT EXECUTE FUNCTION pyxp.refuse_ledger_change()', p_name);
    EXECUTE format('GRANT SELECT ON pyxp.%I TO pyxp_reader', p_name);
END
$$;
COMMENT ON FUNCTION pyxp.new_ledger_partition(text) IS
    'internal: creates a table with the ledger''s columns and TRUNCATE refusal, to be attached as a partition.';
-- Owner operation, to run from a scheduler (monthly is enough; it does
-- nothing for a month that a partition holds): creates the monthly
-- partitions of this month and of the months_ahead months after it.
-- A month whose rows already went to the default partition is left there
-- (created false, and why): its rows stay in the ledger, in the default
-- partition. Each partition is created apart, given the TRUNCATE trigger and
-- the reader's grant, then attached: ATTACH takes SHARE UPDATE EXCLUSIVE on
-- the ledger (awards and reads go on) and ACCESS EXCLUSIVE on the default
-- partition while it checks it (empty, normally). It waits at most 1 s for
-- a lock (lock_timeout): run it again later.
CREATE FUNCTION pyxp.create_ledger_partitions(months_ahead integer DEFAULT 2)
RETURNS TABLE (partition_name text, range_start timestamptz, range_end timestamptz, created boolean, note text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET lock_timeout = '1s'
SET datestyle = 'ISO, YMD'  -- the bounds it writes (%L) and reads back (pyxp.ledger_partitions)
SET timezone = 'UTC'
AS $$
DECLARE
    v_this_month constant timestamptz := date_trunc('month', now(), 'UTC');
    v_until timestamptz;
    v_start timestamptz;
    v_end timestamptz;
    v_name text;
BEGIN
    IF months_ahead IS NULL OR months_ahead NOT BETWEEN 0 AND 120 THEN
        RAISE EXCEPTION 'months_ahead must be between 0 and 120, got %', coalesce(months_ahead::text, 'NULL')
            USING ERRCODE = 'PX023', HINT = 'the default, 2, keeps this month and the next two; run it monthly';
    END IF;
    v_until := (v_this_month AT TIME ZONE 'UTC' + make_interval(months => months_ahead + 1)) AT TIME ZONE 'UTC';
    v_start := v_this_month;
    WHILE v_start < v_until LOOP
        v_end := (v_start AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC';
        v_name := 'xp_transactions_' || to_char(v_start AT TIME ZONE 'UTC', 'YYYY_MM');
        partition_name := v_name;
        range_start := v_start;
        range_end := v_end;
        IF EXISTS (SELECT FROM pyxp.ledger_partitions() p
                    WHERE NOT p.is_default AND coalesce(p.range_start < v_end, true) AND p.range_end > v_start) THEN
            v_start := v_end;
            CONTINUE;  -- a partition holds (part of) this month already
        ELSIF EXISTS (SELECT FROM pyxp.xp_transactions_default d WHERE d.created_at >= v_start AND d.created_at < v_end) THEN
            created := false;
            note := 'rows of this month are in xp_transactions_default: they stay there';
        ELSE
            PERFORM pyxp.new_ledger_partition(v_name);
            EXECUTE format('ALTER TABLE pyxp.xp_transactions ATTACH PARTITION pyxp.%I FOR VALUES FROM (%L) TO (%L)',
                           v_name, v_start, v_end);
            created := true;
            note := NULL;
        END IF;
        RETURN NEXT;
        v_start := v_end;
    END LOOP;
END
$$;
COMMENT ON FUNCTION pyxp.create_ledger_partitions(integer) IS
    'internal: creates the ledger''s monthly partitions up to months_ahead months from now (run it monthly). Owner only.';
COMMENT ON FUNCTION pyxp.ledger_partitions() IS
    'internal: the ledger''s partitions and their ranges.';
REVOKE ALL ON FUNCTION pyxp.create_ledger_partitions(integer), pyxp.ledger_partitions(),
    pyxp.new_ledger_partition(text) FROM PUBLIC;

-- The partitions: the default one, the old table as the partition of every row before
-- its month (or, for an empty ledger, an empty one before this month, as sql/*.sql), and
-- the months from there.
DO $partitions$
DECLARE
    v_kept text := current_setting('pyxp.migration_0015', true);
    v_month timestamptz := coalesce(split_part(nullif(v_kept, ''), '|', 1)::timestamptz,
                                    date_trunc('month', now(), 'UTC'));
    v_before constant text := 'xp_transactions_before_' || to_char(v_month AT TIME ZONE 'UTC', 'YYYY_MM');
    v_name text;
BEGIN
    FOREACH v_name IN ARRAY ARRAY['xp_transactions_default', v_before] LOOP
        IF to_regclass(format('pyxp.%I', v_name)) IS NULL THEN
            PERFORM pyxp.new_ledger_partition(v_name);
        ELSE  -- the old table: its columns and grant are the ledger's already
            EXECUTE format('CREATE TRIGGER xp_transactions_no_truncate BEFORE TRUNCATE ON pyxp.%I '
                           'FOR EACH STATEMENT EXECUTE FUNCTION pyxp.refuse_ledger_change()', v_name);
        END IF;
    END LOOP;
    ALTER TABLE pyxp.xp_transactions ATTACH PARTITION pyxp.xp_transactions_default DEFAULT;
    EXECUTE format('ALTER TABLE pyxp.xp_transactions ATTACH PARTITION pyxp.%I FOR VALUES FROM (MINVALUE) TO (%L)',
                   v_before, v_month);
    IF coalesce(v_kept, '') <> '' THEN
        PERFORM setval(pg_get_serial_sequence('pyxp.xp_transactions', 'id'), split_part(v_kept, '|', 2)::bigint);
    END IF;
END
$partitions$;
SELECT count(*) FROM pyxp.create_ledger_partitions();

RESET ROLE;

-- The guard of the ledger's partitions, run by event triggers at every DDL
-- command of the database, whoever issues it:
--   ddl_command_start  remembers the ledger (by name) and every partition
--                      below it (by oid; sub-partitions too), in a setting of
--                      this transaction;
--   ddl_command_end    refuses the command (PX013) if the ledger no longer
--                      answers to pyxp.xp_transactions (renamed, moved to
--                      another schema, its schema renamed: the guard would
--                      lose it), or if one of its partitions still exists but
--                      is no longer below it (DETACH); then gives the
--                      TRUNCATE refusal to every partition that lacks it
--                      (CREATE TABLE ... PARTITION OF, ATTACH of a table
--                      made by hand);
--   sql_drop           refuses the drop (PX013) of a partition, whatever
--                      the command (DROP TABLE, DROP OWNED, DROP EXTENSION
--                      of an extension it was added to, ...), unless the
--                      ledger itself is dropped with it (DROP SCHEMA pyxp,
--                      a downgrade).
-- It belongs to a superuser (created here after RESET ROLE, by the superuser
-- the event triggers need) and runs as its owner (SECURITY DEFINER, search
-- path pinned), so that a partition created by its owner gets its trigger
-- whoever runs the next command, and so that no role below the superuser
-- can change what a superuser's DDL command runs. Like the append-only
-- triggers, it refuses commands, not a deliberate removal: a superuser (or
-- the schema's owner, who may drop the function) can disable it, and
-- audit() then sees rows gone.
CREATE FUNCTION pyxp.guard_ledger_partitions()
RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_seen text := current_setting('pyxp.ledger_partitions', true);
    v_ledger oid;
    v_kept oid[];
    v_name text;
BEGIN
    IF TG_EVENT = 'ddl_command_start' THEN
        v_ledger := to_regclass('pyxp.xp_transactions');
        PERFORM set_config('pyxp.ledger_partitions',
                           CASE WHEN v_ledger IS NULL THEN ''
                                ELSE v_ledger || ':' || coalesce((SELECT string_agg(t.relid::oid::text, ',')
                                                                    FROM pg_partition_tree(v_ledger) t
                                                                   WHERE t.relid <> v_ledger), '')
                           END, true);
        RETURN;
    END IF;
    IF coalesce(v_seen, '') = '' THEN
        RETURN;
    END IF;
    v_ledger := split_part(v_seen, ':', 1)::oid;
    v_kept := string_to_array(nullif(split_part(v_seen, ':', 2), ''), ',')::oid[];
    IF TG_EVENT = 'sql_drop' THEN
        SELECT d.object_identity INTO v_name
          FROM pg_event_trigger_dropped_objects() d
         WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0 AND d.objid = ANY (v_kept)
           AND NOT EXISTS (SELECT FROM pg_event_trigger_dropped_objects() l
                            WHERE l.classid = 'pg_class'::regclass AND l.objid = v_ledger)
         LIMIT 1;
        IF v_name IS NOT NULL THEN
            RAISE EXCEPTION 'xp_transactions is append-only: DROP of its partition % refused', v_name
                USING ERRCODE = 'PX013',
                      HINT = 'a partition holds ledger rows; correct a row with pyxp.reverse_transaction(transaction_id, reason)';
        END IF;
        RETURN;
    END IF;
    -- ddl_command_end
    IF to_regclass('pyxp.xp_transactions') IS DISTINCT FROM v_ledger
       AND EXISTS (SELECT FROM pg_class c WHERE c.oid = v_ledger) THEN
        RAISE EXCEPTION 'xp_transactions is append-only: renaming or moving the ledger (now %) refused',
                        v_ledger::regclass
            USING ERRCODE = 'PX013', HINT = 'the ledger is pyxp.xp_transactions';
    END IF;
    SELECT c.oid::regclass::text INTO v_name
      FROM pg_class c
     WHERE c.oid = ANY (v_kept)
       AND NOT EXISTS (SELECT FROM pg_partition_tree(v_ledger) t WHERE t.relid = c.oid)
     LIMIT 1;
    IF v_name IS NOT NULL THEN
        RAISE EXCEPTION 'xp_transactions is append-only: DETACH of its partition % refused', v_name
            USING ERRCODE = 'PX013',
                  HINT = 'a partition holds ledger rows; correct a row with pyxp.reverse_transaction(transaction_id, reason)';
    END IF;
    FOR v_name IN
        SELECT t.relid::regclass::text FROM pg_partition_tree(v_ledger) t WHERE t.isleaf
    LOOP
        -- Checked one by one: the CREATE TRIGGER below runs this function
        -- again, which may have given the next partition its trigger.
        IF NOT EXISTS (SELECT FROM pg_trigger g
                        WHERE g.tgrelid = v_name::regclass AND g.tgfoid = 'pyxp.refuse_ledger_change()'::regprocedure
                          AND (g.tgtype & 32) <> 0) THEN  -- TRIGGER_TYPE_TRUNCATE
            EXECUTE format('CREATE TRIGGER xp_transactions_no_truncate BEFORE TRUNCATE ON %s '
                           'FOR EACH STATEMENT EXECUTE FUNCTION pyxp.refuse_ledger_change()', v_name);
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION pyxp.guard_ledger_partitions() IS
    'internal: event trigger function refusing DETACH and DROP of a ledger partition and renaming the ledger (PX013); gives each partition the TRUNCATE refusal.';
REVOKE ALL ON FUNCTION pyxp.guard_ledger_partitions() FROM PUBLIC;
-- Event triggers belong to a superuser (PostgreSQL's rule): another
-- migrating role gets neither them nor their function, and a warning.
DO $guard$
BEGIN
    IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        CREATE EVENT TRIGGER pyxp_ledger_partitions_start ON ddl_command_start
            EXECUTE FUNCTION pyxp.guard_ledger_partitions();
        CREATE EVENT TRIGGER pyxp_ledger_partitions_end ON ddl_command_end
            EXECUTE FUNCTION pyxp.guard_ledger_partitions();
        CREATE EVENT TRIGGER pyxp_ledger_partitions_drop ON sql_drop
            EXECUTE FUNCTION pyxp.guard_ledger_partitions();
    ELSE
        DROP FUNCTION pyxp.guard_ledger_partitions();
        RAISE WARNING 'pyxp: % is no superuser: DETACH and DROP of a ledger partition are not refused', current_user
            USING HINT = 'a superuser can run the CREATE FUNCTION and CREATE EVENT TRIGGER statements of sql/12_partitions.sql';
    END IF;
END
$guard$;
