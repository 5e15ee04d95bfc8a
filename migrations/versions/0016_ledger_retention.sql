-- 0016: retention (issue 15 item 3). Frozen copy of what sql/*.sql defines at this
-- revision; never edit it.
--
-- pyxp.archive_ledger_partitions(archived_before) moves old partitions of the ledger,
-- verified by an audit checkpoint, into schema pyxp_archive; what the proofs still need of
-- them stays in pyxp: xp_ledger_archives, xp_wallet_openings (per wallet: the position,
-- balance and latest periods after its last archived row), xp_archived_originals,
-- xp_archived_cap_usage, and xp_requests.archive_id (a request whose rows were archived
-- keeps its key and inputs). The audit walks each wallet from its opening; a replay of an
-- archived call, a reversal of an archived row, a board of an archived period, a what-if
-- over the whole ledger and a switch to another timezone are refused (PX029). The
-- partitions' guard lets the archive's DETACH through (replaced when a superuser migrates).
CREATE SCHEMA pyxp_archive AUTHORIZATION pyxp_owner;
GRANT USAGE ON SCHEMA pyxp_archive TO pyxp_reader;

SET LOCAL ROLE pyxp_owner;

-- Retention (sql/13_retention.sql): old partitions taken out of the ledger by
-- pyxp.archive_ledger_partitions, after an audit checkpoint verified their
-- rows, into schema pyxp_archive (to dump, then drop). What the proofs still
-- need of them stays here, so that a balance is its opening + the rows since.
-- One row per archive: which partitions, up to when, how many rows.
CREATE TABLE pyxp.xp_ledger_archives (
    archive_id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    archived_before      timestamptz NOT NULL,  -- every partition of this archive and before ends at or before it
    partitions           text[] NOT NULL,       -- their names (tables of schema pyxp_archive since)
    partition_oids       oid[] NOT NULL,        -- (pyxp.guard_ledger_partitions lets their DETACH through)
    rows_archived        bigint NOT NULL,
    wallets_opened       bigint NOT NULL,       -- wallets with rows archived (their openings)
    last_transaction_id  bigint,                -- the highest id archived
    timezone             text NOT NULL,         -- the zone of the openings' periods (the active ruleset's)
    checkpoint_id        bigint NOT NULL REFERENCES pyxp.xp_audit_checkpoints,  -- the one it recorded first
    feed_floor           bigint,                -- the highest change-feed cursor archived (pyxp.changes refuses below it)
    archived_by_xid      xid8 NOT NULL DEFAULT pg_current_xact_id(),  -- its transaction (the guard lets it detach)
    archived_at          timestamptz NOT NULL DEFAULT now()
);

-- Per wallet, its opening: the state after its position wallet_seq, the
-- highest position of its rows archived, summing every row at positions
-- 1 .. wallet_seq (archived, or a rarer row still in the ledger that took
-- an earlier position although its transaction began after the archived
-- range: a straggler). The audit walks the wallet's rows after wallet_seq
-- from total_xp; last_at and the <kind>_start/_xp columns are the latest
-- periods of those positions (in xp_ledger_archives.timezone), which the
-- balance's period columns continue.
CREATE TABLE pyxp.xp_wallet_openings (
    user_wallet  text PRIMARY KEY,
    wallet_seq   bigint NOT NULL CHECK (wallet_seq >= 1),
    total_xp     bigint NOT NULL,       -- balance_after of the row at wallet_seq
    archived_rows bigint NOT NULL,      -- its rows archived (the others at positions 1 .. wallet_seq are in the ledger)
    last_at      timestamptz NOT NULL,  -- the latest time (a reversal: its original's) of those rows
    day_start    timestamptz NOT NULL,
    day_xp       bigint NOT NULL,
    week_start   timestamptz NOT NULL,
    week_xp      bigint NOT NULL,
    month_start  timestamptz NOT NULL,
    month_xp     bigint NOT NULL,
    year_start   timestamptz NOT NULL,
    year_xp      bigint NOT NULL,
    archive_id   bigint NOT NULL REFERENCES pyxp.xp_ledger_archives
);

-- Archived rows that a reversal still in the ledger reverses: what the
-- audit, the periods and the caps read of an original (an archived row
-- cannot be reversed any more, PX029, so this set only grows by archives).
CREATE TABLE pyxp.xp_archived_originals (
    transaction_id    bigint PRIMARY KEY,
    user_wallet       text NOT NULL,
    transaction_type  text NOT NULL,
    xp_amount         bigint NOT NULL,
    rule_id           bigint,
    reverses          bigint,
    created_at        timestamptz NOT NULL,
    archive_id        bigint NOT NULL REFERENCES pyxp.xp_ledger_archives
);

-- What the archived rows used of each capped allowance per period (as
-- pyxp.ledger_cap_usage counts it), with the largest cap of their rules:
-- the audit adds it to what the ledger's rows use.
CREATE TABLE pyxp.xp_archived_cap_usage (
    user_wallet   text NOT NULL,
    allowance     text NOT NULL,
    period_start  timestamptz NOT NULL,
    used_xp       bigint NOT NULL,
    cap_max_xp    bigint NOT NULL,
    PRIMARY KEY (user_wallet, allowance, period_start)
);

ALTER TABLE pyxp.xp_requests ADD COLUMN archive_id bigint;  -- its rows were archived: kept key and inputs

GRANT SELECT ON pyxp.xp_ledger_archives, pyxp.xp_wallet_openings, pyxp.xp_archived_originals,
    pyxp.xp_archived_cap_usage TO pyxp_reader;

CREATE FUNCTION pyxp.archive_horizon()
RETURNS timestamptz
LANGUAGE sql STABLE
AS $$ SELECT max(a.archived_before) FROM pyxp.xp_ledger_archives a WHERE a.rows_archived > 0 $$;
COMMENT ON FUNCTION pyxp.archive_horizon() IS 'internal: the end of the ledger''s archived range, NULL when nothing was archived.';

CREATE FUNCTION pyxp.reversed_row_at(p_reverses bigint)
RETURNS timestamptz
LANGUAGE sql STABLE
AS $$
    SELECT coalesce((SELECT o.created_at FROM pyxp.xp_transactions o WHERE o.id = p_reverses LIMIT 1),
                    (SELECT a.created_at FROM pyxp.xp_archived_originals a WHERE a.transaction_id = p_reverses))
$$;
COMMENT ON FUNCTION pyxp.reversed_row_at(bigint) IS
    'internal: the created_at of the row a reversal reverses, in the ledger or among the archived originals.';

CREATE FUNCTION pyxp.rows_cap_usage(p_partitions oid[])
RETURNS TABLE (user_wallet text, allowance text, period_start timestamptz, used_xp bigint, cap_max_xp bigint)
LANGUAGE sql STABLE
AS $$
    -- Gains of capped rules (a hash join of the ledger with those rules),
    -- then reversals (index xp_transactions_reversals) of capped gains: only
    -- the reversals look their original up (a probe per row of the ledger
    -- cost 5 s of the audit at 1M rows).
    SELECT g.user_wallet, pyxp.cap_allowance(ru.cap_group, ru.action), date_trunc(ru.cap_per, g.at, rs.timezone),
           sum(g.xp_amount)::bigint, max(ru.cap_max_xp)
      FROM (SELECT t.user_wallet, t.rule_id, t.created_at AS at, t.xp_amount
              FROM pyxp.xp_transactions t
             WHERE t.reverses IS NULL AND t.xp_amount > 0
               AND t.rule_id IN (SELECT c.rule_id FROM pyxp.rules c WHERE c.cap_max_xp IS NOT NULL)
               AND (p_partitions IS NULL OR t.tableoid = ANY (p_partitions))
            UNION ALL
            SELECT t.user_wallet, o.rule_id, o.created_at, t.xp_amount
              FROM pyxp.xp_transactions t
             CROSS JOIN LATERAL (SELECT o.rule_id, o.created_at, o.xp_amount FROM pyxp.xp_transactions o
                                  WHERE o.id = t.reverses
                                 UNION ALL
                                 SELECT a.rule_id, a.created_at, a.xp_amount FROM pyxp.xp_archived_originals a
                                  WHERE a.transaction_id = t.reverses
                                 LIMIT 1) o
             WHERE t.reverses IS NOT NULL AND o.xp_amount > 0
               AND (p_partitions IS NULL OR t.tableoid = ANY (p_partitions))) g
      JOIN pyxp.rules ru ON ru.rule_id = g.rule_id
      JOIN pyxp.rulesets rs ON rs.ruleset_id = ru.ruleset_id
     WHERE ru.cap_max_xp IS NOT NULL
     GROUP BY 1, 2, 3
$$;
COMMENT ON FUNCTION pyxp.rows_cap_usage(oid[]) IS
    'internal: what each capped allowance used per period in the rows of some partitions (NULL: all), and its cap.';

CREATE FUNCTION pyxp.sum_with_opening(p_rows numeric, p_same_period boolean, p_opening_xp bigint)
RETURNS numeric
LANGUAGE sql IMMUTABLE
AS $$ SELECT CASE WHEN p_same_period THEN coalesce(p_rows, 0) + p_opening_xp ELSE p_rows END $$;
COMMENT ON FUNCTION pyxp.sum_with_opening(numeric, boolean, bigint) IS
    'internal: a period''s XP from the rows walked plus, in the opening''s latest period, the opening''s.';

CREATE OR REPLACE FUNCTION pyxp.replayed_award(p_key text, p_inputs jsonb,
                                    p_conflict_message text DEFAULT NULL,
                                    p_conflict_code text DEFAULT 'PX010')
RETURNS SETOF pyxp.award_result
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_request record;
    v_archive pyxp.xp_ledger_archives;
BEGIN
    SELECT * INTO STRICT v_request FROM pyxp.recorded_request(p_key) r;
    IF v_request.same_key AND (v_request.inputs IS NULL OR v_request.ruleset_id IS NULL) THEN
        RAISE EXCEPTION 'the ledger no longer holds the first call with idempotency key %', quote_literal(p_key)
            USING ERRCODE = 'PX028',
                  DETAIL = 'its request keeps only a digest, and its ledger rows or their rule are gone',
                  HINT = 'pyxp.audit() names them (request_rows_missing, rule_missing)';
    ELSIF NOT v_request.same_key OR v_request.inputs_digest <> pyxp.request_inputs_digest(p_inputs) THEN
        RAISE EXCEPTION '%', coalesce(p_conflict_message,
                                      format('idempotency key %L was already used with other inputs', p_key))
            USING ERRCODE = p_conflict_code,
                  DETAIL = format('first call: %s; this call: %s',
                                  CASE WHEN NOT v_request.same_key THEN 'another key with the same hash'
                                       ELSE v_request.inputs::text END,
                                  p_inputs),
                  HINT = 'repeat a call with exactly the same inputs to get its result again';
    END IF;
    -- Its rows were archived (sql/13_retention.sql): the call was applied,
    -- and its key stays claimed, but its result is no longer here.
    SELECT a.* INTO v_archive
      FROM pyxp.xp_requests q JOIN pyxp.xp_ledger_archives a ON a.archive_id = q.archive_id
     WHERE q.key_hash = pyxp.key_hash(p_key);
    IF FOUND THEN
        RAISE EXCEPTION 'the call with idempotency key % was applied on %, and its ledger rows were archived',
                        quote_literal(p_key), v_request.created_at
            USING ERRCODE = 'PX029',
                  DETAIL = format('archive %s (rows before %s, archived %s); nothing was written again',
                                  v_archive.archive_id, v_archive.archived_before, v_archive.archived_at),
                  HINT = 'its rows are in schema pyxp_archive (or their dump)';
    END IF;
    RETURN QUERY
        SELECT t.id, t.user_wallet, t.transaction_type, t.xp_amount, t.xp_requested, t.balance_after,
               now_.level, (now_.next_level_xp - t.balance_after)::bigint, before_.level, true
          FROM pyxp.xp_transactions t
          CROSS JOIN LATERAL pyxp.curve_position(v_request.ruleset_id, t.balance_after) now_
          CROSS JOIN LATERAL pyxp.curve_position(v_request.ruleset_id, t.balance_after - t.xp_amount) before_
         WHERE pyxp.key_hash(t.idempotency_key) = pyxp.key_hash(p_key) AND t.request_digest IS NULL
           AND t.idempotency_key = p_key
         ORDER BY t.id;
END
$$;
COMMENT ON FUNCTION pyxp.replayed_award(text, jsonb, text, text) IS 'internal: the original rows of a flow''s or reversal''s key, or PX010 for other inputs.';

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
    v_reversed_at timestamptz;  -- a reversal's original's created_at
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
    --    key (the claim's INSERT waits for it, then skips: below). created_at
    --    is now(), or for a reversal (alone in its call) no earlier than its
    --    original's (a transaction may begin before the one it reverses):
    --    created_at names the partition, and an archive, which takes the
    --    oldest partitions, must never take a reversal and keep its original.
    IF v_rows[1].reverses IS NOT NULL THEN
        SELECT o.created_at INTO v_reversed_at FROM pyxp.xp_transactions o WHERE o.id = v_rows[1].reverses;
    END IF;
    WITH numbered AS MATERIALIZED (
        SELECT r.*, nextval('pyxp.xp_transactions_id_seq') AS id, greatest(now(), v_reversed_at) AS created_at
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
            -- A claim whose row was archived (sql/13_retention.sql; its
            -- created_at names an archived partition's range): the key was
            -- used, and stays used.
            SELECT r.call_index, r.idempotency_key, c.transaction_id, c.created_at INTO v_problem
              FROM unnest(v_rows) r JOIN pyxp.xp_award_claims c
                ON r.inputs IS NOT NULL AND c.key_hash = pyxp.key_hash(r.idempotency_key)
             WHERE c.created_at < pyxp.archive_horizon()
               AND NOT EXISTS (SELECT FROM pyxp.xp_transactions k
                                WHERE k.id = c.transaction_id AND k.created_at = c.created_at)
             LIMIT 1;
            IF FOUND THEN
                RAISE EXCEPTION '%idempotency key % was used by transaction % on %, whose row was archived',
                                CASE WHEN p_batch THEN format('event %s: ', v_problem.call_index) ELSE '' END,
                                quote_literal(v_problem.idempotency_key), v_problem.transaction_id, v_problem.created_at
                    USING ERRCODE = 'PX029',
                          DETAIL = 'the award was applied then; nothing was written again',
                          HINT = 'its row is in schema pyxp_archive (or its dump); a new award needs a new key';
            END IF;
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
    v_at := coalesce(v_reversed_at, now());
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
COMMENT ON FUNCTION pyxp.append_rows(bigint, bigint, text, boolean, pyxp.pending_row[], boolean) IS
    'internal: THE writer: locks the wallets, replays claimed generic awards, applies floor and caps, appends every ledger row and updates each balance once.';

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
    v_metadata jsonb;  -- the reversal row's
    v_ruleset record;
BEGIN
    SELECT * INTO v_ruleset FROM pyxp.writing_ruleset();
    SELECT * INTO v_original FROM pyxp.xp_transactions t WHERE t.id = reverse_transaction.transaction_id;
    IF NOT FOUND THEN
        v_key := 'reverse:' || reverse_transaction.transaction_id;
        IF EXISTS (SELECT FROM pyxp.xp_requests q WHERE q.key_hash = pyxp.key_hash(v_key)) THEN
            -- Reversed before its row was archived (sql/13_retention.sql):
            -- the reversal's result, or PX029 when it was archived too.
            RETURN QUERY SELECT * FROM pyxp.replayed_award(
                v_key, jsonb_build_object('transaction_id', reverse_transaction.transaction_id, 'reason', v_reason),
                format('transaction %s was already reversed', reverse_transaction.transaction_id), 'PX014');
            RETURN;
        ELSIF reverse_transaction.transaction_id <= (SELECT max(a.last_transaction_id) FROM pyxp.xp_ledger_archives a) THEN
            RAISE EXCEPTION 'transaction % is not in the ledger: it was archived, or never existed',
                            reverse_transaction.transaction_id
                USING ERRCODE = 'PX029',
                      HINT = 'an archived row cannot be reversed (pyxp.xp_ledger_archives lists the archives)';
        END IF;
        RAISE EXCEPTION 'unknown transaction %', coalesce(reverse_transaction.transaction_id::text, 'NULL')
            USING ERRCODE = 'PX015', HINT = 'pass the id of an xp_transactions row';
    ELSIF v_original.reverses IS NOT NULL THEN
        RAISE EXCEPTION 'transaction % reverses transaction % and cannot itself be reversed',
                        v_original.id, v_original.reverses
            USING ERRCODE = 'PX014', HINT = 'award the amount again instead';
    ELSIF v_original.transaction_type = 'RULES_ADJUSTMENT' AND v_original.rule_id IS NULL THEN
        RAISE EXCEPTION 'transaction % is a retroactive rules adjustment and cannot be reversed', v_original.id
            USING ERRCODE = 'PX014', HINT = 'apply another ruleset version retroactively instead (pyxp rules apply --retroactive)';
    END IF;
    v_key := 'reverse:' || v_original.id;
    v_inputs := jsonb_build_object('transaction_id', v_original.id, 'reason', v_reason);
    v_metadata := jsonb_build_object('reason', v_reason, 'reversed_type', v_original.transaction_type);
    IF NOT pyxp.claim_request(v_key, v_inputs, v_ruleset.ruleset_id,
                              pyxp.rebuilt_request_inputs(v_key, NULL, v_original.user_wallet, v_original.campaign_id,
                                                          v_original.subject, v_metadata, v_original.id)) THEN
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
                                          v_metadata, v_original.id, 0)::pyxp.pending_row], false) w;
END
$$;
COMMENT ON FUNCTION pyxp.reverse_transaction(bigint, text) IS
    'API: appends the compensating row of a ledger row (once; the same reason again replays).';

CREATE OR REPLACE FUNCTION pyxp.leaderboard(max_rows integer DEFAULT 100, offset_rows integer DEFAULT 0,
                                 period text DEFAULT 'all', at timestamptz DEFAULT now())
RETURNS TABLE (rank bigint, user_wallet text, total_xp bigint, current_level bigint, period_xp bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$
DECLARE
    v_max integer := pyxp.checked_row_count('max_rows', leaderboard.max_rows);
    v_period text := pyxp.checked_period(leaderboard.period);
    v_bounds record;
    v_bucket record;  -- a deep page's rank bucket: its start, the balances before it
    v_reach bigint;   -- how far into the board from that start the page reaches
BEGIN
    IF leaderboard.offset_rows IS NULL OR leaderboard.offset_rows < 0 THEN
        RAISE EXCEPTION 'invalid offset_rows: %', coalesce(leaderboard.offset_rows::text, 'NULL')
            USING ERRCODE = 'PX023', HINT = 'offset_rows is 0 or more';
    END IF;
    IF v_period = 'all' THEN
        IF leaderboard.offset_rows < 4096 THEN
            RETURN QUERY
                SELECT leaderboard.offset_rows + row_number() OVER (ORDER BY b.total_xp DESC, b.user_wallet COLLATE "C"),
                       b.user_wallet, b.total_xp, b.current_level, b.total_xp
                  FROM (SELECT x.user_wallet, x.total_xp, x.current_level
                          FROM pyxp.xp_balances x
                         ORDER BY x.total_xp DESC, x.user_wallet COLLATE "C"
                         OFFSET leaderboard.offset_rows LIMIT v_max) b
                 ORDER BY 1;
            RETURN;
        END IF;
        -- A deep page: from the start of the bucket holding position
        -- offset_rows + 1, stepping over only that bucket's balances before it.
        SELECT e.neg_xp, e.wallet, e.before_ INTO v_bucket
          FROM (SELECT e.neg_xp, e.wallet,
                       coalesce(sum(e.wallets) OVER (ORDER BY e.neg_xp, e.wallet COLLATE "C"
                                                     ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before_
                  FROM pyxp.rank_buckets() e) e
         WHERE e.before_ <= leaderboard.offset_rows
         ORDER BY e.neg_xp DESC, e.wallet COLLATE "C" DESC
         LIMIT 1;
        -- Two index ranges from the bucket's start, each cut to what the
        -- page can reach (the rest of its tie group, then the lower totals),
        -- so the sort above them holds about bucket size + max_rows rows.
        v_reach := leaderboard.offset_rows - v_bucket.before_ + v_max;
        RETURN QUERY
            SELECT leaderboard.offset_rows + row_number() OVER (ORDER BY b.total_xp DESC, b.user_wallet COLLATE "C"),
                   b.user_wallet, b.total_xp, b.current_level, b.total_xp
              FROM (SELECT u.* FROM ((SELECT x.user_wallet, x.total_xp, x.current_level FROM pyxp.xp_balances x
                                       WHERE x.total_xp = -v_bucket.neg_xp AND x.user_wallet COLLATE "C" >= v_bucket.wallet
                                       ORDER BY x.user_wallet COLLATE "C" LIMIT v_reach)
                                     UNION ALL
                                     (SELECT x.user_wallet, x.total_xp, x.current_level FROM pyxp.xp_balances x
                                       WHERE x.total_xp < -v_bucket.neg_xp
                                       ORDER BY x.total_xp DESC, x.user_wallet COLLATE "C" LIMIT v_reach)) u
                     ORDER BY u.total_xp DESC, u.user_wallet COLLATE "C"
                    OFFSET leaderboard.offset_rows - v_bucket.before_ LIMIT v_max) b
             ORDER BY 1;
        RETURN;
    END IF;
    v_bounds := pyxp.period_bounds(v_period, leaderboard.at, pyxp.active_timezone());
    IF pyxp.period_cached(v_period, v_bounds.period_start) THEN
        RETURN QUERY EXECUTE format(
            'SELECT $1 + row_number() OVER (ORDER BY b.xp DESC, b.user_wallet COLLATE "C"), b.user_wallet, b.total_xp,
                    b.current_level, b.xp
               FROM (SELECT x.user_wallet, x.total_xp, x.current_level, x.%2$I AS xp
                       FROM pyxp.xp_balances x
                      WHERE x.%1$I = $2
                      ORDER BY x.%2$I DESC, x.user_wallet COLLATE "C"
                     OFFSET $1 LIMIT $3) b
              ORDER BY 1', v_period || '_start', v_period || '_xp')
            USING leaderboard.offset_rows::bigint, v_bounds.period_start, v_max;
    ELSE
        PERFORM pyxp.require_unarchived_period(v_period, v_bounds.period_start);  -- a past period: from the ledger
        RETURN QUERY
            SELECT leaderboard.offset_rows + row_number() OVER (ORDER BY p.period_xp DESC, p.user_wallet COLLATE "C"),
                   p.user_wallet, x.total_xp, x.current_level, p.period_xp
              FROM (SELECT t.user_wallet, t.period_xp
                      FROM pyxp.ledger_period_totals(v_bounds.period_start, v_bounds.period_end) t
                     ORDER BY t.period_xp DESC, t.user_wallet COLLATE "C"
                    OFFSET leaderboard.offset_rows LIMIT v_max) p
              JOIN pyxp.xp_balances x ON x.user_wallet = p.user_wallet
             ORDER BY 1;
    END IF;
END
$$;
COMMENT ON FUNCTION pyxp.leaderboard(integer, integer, text, timestamptz) IS
    'API: the leaderboard of all time or of the day, week, month or year containing at: rank, wallet, total, level, period_xp.';

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
    PERFORM pyxp.require_unarchived_period(v_period, v_bounds.period_start);  -- a past period: from the ledger
    SELECT r.rank INTO v_rank
      FROM (SELECT t.user_wallet, row_number() OVER (ORDER BY t.period_xp DESC, t.user_wallet COLLATE "C") AS rank
              FROM pyxp.ledger_period_totals(v_bounds.period_start, v_bounds.period_end) t) r
     WHERE r.user_wallet = v_wallet;
    RETURN v_rank;
END
$$;
COMMENT ON FUNCTION pyxp.wallet_rank(text, text, timestamptz) IS
    'API: a wallet''s rank on a leaderboard (all time or a period), NULL when it is not on it.';

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
    PERFORM pyxp.require_unarchived_period(v_period, v_bounds.period_start);
    RETURN coalesce((
        SELECT sum(t.xp_amount)
          FROM pyxp.xp_transactions t
         CROSS JOIN LATERAL (SELECT CASE WHEN t.reverses IS NULL THEN t.created_at
                                         ELSE pyxp.reversed_row_at(t.reverses) END AS at) e
         WHERE t.user_wallet = v_wallet AND e.at >= v_bounds.period_start AND e.at < v_bounds.period_end), 0)::bigint;
END
$$;
COMMENT ON FUNCTION pyxp.period_xp(text, text, timestamptz) IS
    'API: the XP a wallet earned in the day, week, month or year containing at (0 if none).';

CREATE OR REPLACE FUNCTION pyxp.ledger_latest_periods(p_timezone text)
RETURNS TABLE (user_wallet text, day_start timestamptz, day_xp bigint, week_start timestamptz, week_xp bigint,
               month_start timestamptz, month_xp bigint, year_start timestamptz, year_xp bigint)
LANGUAGE sql STABLE
AS $$
    WITH rows_ AS (
        SELECT t.user_wallet,
               date_trunc('day', e.at, p_timezone) AS d, date_trunc('week', e.at, p_timezone) AS w,
               date_trunc('month', e.at, p_timezone) AS m, date_trunc('year', e.at, p_timezone) AS y,
               t.xp_amount AS d_xp, t.xp_amount AS w_xp, t.xp_amount AS m_xp, t.xp_amount AS y_xp
          FROM pyxp.xp_transactions t
          LEFT JOIN pyxp.xp_wallet_openings o ON o.user_wallet = t.user_wallet
         CROSS JOIN LATERAL (SELECT CASE WHEN t.reverses IS NULL THEN t.created_at
                                         ELSE pyxp.reversed_row_at(t.reverses) END AS at) e
         WHERE t.wallet_seq > coalesce(o.wallet_seq, 0)
        UNION ALL
        SELECT o.user_wallet, o.day_start, o.week_start, o.month_start, o.year_start,
               o.day_xp, o.week_xp, o.month_xp, o.year_xp
          FROM pyxp.xp_wallet_openings o
    ), latest AS (
        SELECT r.*, max(r.d) OVER w_ AS max_d, max(r.w) OVER w_ AS max_w,
               max(r.m) OVER w_ AS max_m, max(r.y) OVER w_ AS max_y
          FROM rows_ r
        WINDOW w_ AS (PARTITION BY r.user_wallet)
    )
    SELECT l.user_wallet,
           max(l.max_d), (sum(l.d_xp) FILTER (WHERE l.d = l.max_d))::bigint,
           max(l.max_w), (sum(l.w_xp) FILTER (WHERE l.w = l.max_w))::bigint,
           max(l.max_m), (sum(l.m_xp) FILTER (WHERE l.m = l.max_m))::bigint,
           max(l.max_y), (sum(l.y_xp) FILTER (WHERE l.y = l.max_y))::bigint
      FROM latest l
     GROUP BY l.user_wallet
$$;
COMMENT ON FUNCTION pyxp.ledger_latest_periods(text) IS
    'internal: from the ledger (and the openings), each wallet''s latest period of each kind and its XP there.';

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
    ELSIF v_after < (SELECT max(a.feed_floor) FROM pyxp.xp_ledger_archives a) THEN
        -- Rows after this cursor were archived (sql/13_retention.sql): never
        -- skipped silently.
        RAISE EXCEPTION 'rows after cursor % were archived', v_after
            USING ERRCODE = 'PX029',
                  DETAIL = format('the archived rows reach cursor %s',
                                  (SELECT max(a.feed_floor) FROM pyxp.xp_ledger_archives a)),
                  HINT = 'a consumer must be past the rows archived; they are in schema pyxp_archive (or its dump)';
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
COMMENT ON FUNCTION pyxp.changes(bigint, integer, text) IS
    'API: the change feed: committed ledger rows after a cursor, each exactly once, with total_xp and the levels before and after; pass back the last cursor.';

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
COMMENT ON FUNCTION pyxp.rank_problems() IS
    'internal: rank buckets and period board counts that differ from the balances they count (for pyxp.audit).';

CREATE OR REPLACE FUNCTION pyxp.ledger_cap_usage()
RETURNS TABLE (user_wallet text, allowance text, period_start timestamptz, used_xp bigint, cap_max_xp bigint)
LANGUAGE sql STABLE
AS $$
    SELECT u.user_wallet, u.allowance, u.period_start, sum(u.used_xp)::bigint, max(u.cap_max_xp)
      FROM (SELECT * FROM pyxp.rows_cap_usage(NULL)
            UNION ALL
            SELECT a.user_wallet, a.allowance, a.period_start, a.used_xp, a.cap_max_xp
              FROM pyxp.xp_archived_cap_usage a) u
     GROUP BY 1, 2, 3
$$;
COMMENT ON FUNCTION pyxp.ledger_cap_usage() IS
    'internal: from the ledger and the archived rows'' usage, what each capped allowance used per period, and its cap.';

CREATE OR REPLACE FUNCTION pyxp.simulated_totals(p_ruleset_id bigint)
RETURNS TABLE (user_wallet text, total_xp_now bigint, total_xp_then numeric, by_action jsonb)
LANGUAGE plpgsql STABLE
SET jit = off
AS $$
DECLARE
    v_ruleset pyxp.rulesets := pyxp.checked_ruleset(p_ruleset_id);
BEGIN
    -- The candidate re-evaluates every row: archived rows are not here
    -- (sql/13_retention.sql), so neither a what-if nor a retroactive
    -- application can be computed any more (PX029).
    PERFORM pyxp.require_whole_ledger('a what-if of the rules (simulation, retroactive application)');
    RETURN QUERY
        WITH r AS MATERIALIZED (SELECT * FROM pyxp.simulated_rows(v_ruleset.ruleset_id)),
        -- Order matters in a wallet with a penalty under the candidate's
        -- floor, or a reversal that frees a capped allowance: folded.
        per_wallet AS (
            SELECT r.user_wallet, sum(r.applied) AS linear,
                   bool_or(r.frees OR v_ruleset.balance_floor IS NOT NULL AND r.asked < 0) AS in_order
              FROM r GROUP BY r.user_wallet
        ),
        folded AS (
            SELECT r.user_wallet,
                   pyxp.simulated_balance(r.id, r.action, r.asked, r.reverses, r.reversed, v_ruleset.balance_floor,
                                          r.allowance, r.cap_max_xp ORDER BY r.id) AS state
              FROM r JOIN per_wallet w ON w.user_wallet = r.user_wallet AND w.in_order
             GROUP BY r.user_wallet
        )
        SELECT b.user_wallet, b.total_xp, coalesce((f.state).balance, w.linear, 0), (f.state).by_action
          FROM pyxp.xp_balances b
          LEFT JOIN per_wallet w ON w.user_wallet = b.user_wallet
          LEFT JOIN folded f ON f.user_wallet = b.user_wallet;
END
$$;
COMMENT ON FUNCTION pyxp.simulated_totals(bigint) IS
    'internal: every wallet''s total now and under a candidate ruleset.';

CREATE OR REPLACE FUNCTION pyxp.activate_ruleset(p_ruleset_id bigint)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    v_zone text := (SELECT r.timezone FROM pyxp.rulesets r WHERE r.ruleset_id = p_ruleset_id);
BEGIN
    IF (SELECT r.is_active FROM pyxp.rulesets r WHERE r.ruleset_id = p_ruleset_id) THEN
        RETURN 0;
    END IF;
    IF (SELECT r.timezone FROM pyxp.rulesets r WHERE r.is_active) IS DISTINCT FROM v_zone THEN
        -- (the archived rows' periods are kept in the archive's zone only: PX029)
        PERFORM pyxp.require_whole_ledger(format('activating a ruleset in timezone %s', v_zone));
        PERFORM pyxp.rebuild_period_columns(v_zone);
    END IF;
    -- Two statements: the partial unique index allows one active row at a time.
    UPDATE pyxp.rulesets r SET is_active = false WHERE r.is_active;
    UPDATE pyxp.rulesets r SET is_active = true, activated_at = now() WHERE r.ruleset_id = p_ruleset_id;
    RETURN pyxp.recalculate_levels();
END
$$;
COMMENT ON FUNCTION pyxp.activate_ruleset(bigint) IS
    'internal: makes a ruleset version the active one; re-derives levels (and period columns for another zone).';

DROP FUNCTION pyxp.audited_wallets(boolean);  -- returns the openings too
CREATE FUNCTION pyxp.audited_wallets(p_since_checkpoint boolean)
RETURNS TABLE (user_wallet text, from_seq bigint, from_xp bigint, cp_seq bigint, cp_xp bigint,
               total_xp bigint, current_level bigint, xp_to_next_level bigint, last_wallet_seq bigint,
               day_start timestamptz, day_xp bigint, week_start timestamptz, week_xp bigint,
               month_start timestamptz, month_xp bigint, year_start timestamptz, year_xp bigint,
               op_seq bigint, op_xp bigint, op_last_at timestamptz, op_day_start timestamptz, op_day_xp bigint,
               op_week_start timestamptz, op_week_xp bigint, op_month_start timestamptz, op_month_xp bigint,
               op_year_start timestamptz, op_year_xp bigint, op_rows bigint)
LANGUAGE sql STABLE
AS $$
    SELECT b.user_wallet, coalesce(o.wallet_seq, 0), coalesce(o.total_xp, 0), c.wallet_seq, c.total_xp,
           b.total_xp, b.current_level, b.xp_to_next_level, b.last_wallet_seq,
           b.day_start, b.day_xp, b.week_start, b.week_xp, b.month_start, b.month_xp, b.year_start, b.year_xp,
           o.wallet_seq, o.total_xp, o.last_at, o.day_start, o.day_xp, o.week_start, o.week_xp,
           o.month_start, o.month_xp, o.year_start, o.year_xp, o.archived_rows
      FROM pyxp.xp_balances b
      LEFT JOIN pyxp.xp_wallet_checkpoints c ON c.user_wallet = b.user_wallet
      LEFT JOIN pyxp.xp_wallet_openings o ON o.user_wallet = b.user_wallet
     WHERE NOT p_since_checkpoint
    UNION ALL
    SELECT w.user_wallet, coalesce(c.wallet_seq, o.wallet_seq, 0), coalesce(c.total_xp, o.total_xp, 0),
           c.wallet_seq, c.total_xp,
           b.total_xp, b.current_level, b.xp_to_next_level, b.last_wallet_seq,
           b.day_start, b.day_xp, b.week_start, b.week_xp, b.month_start, b.month_xp, b.year_start, b.year_xp,
           o.wallet_seq, o.total_xp, o.last_at, o.day_start, o.day_xp, o.week_start, o.week_xp,
           o.month_start, o.month_xp, o.year_start, o.year_xp, o.archived_rows
      FROM (SELECT DISTINCT t.user_wallet FROM pyxp.xp_transactions t
             WHERE t.feed_xid >= pyxp.last_checkpoint_xmin()) w
      LEFT JOIN LATERAL (SELECT b.* FROM pyxp.xp_balances b WHERE b.user_wallet = w.user_wallet LIMIT 1) b ON true
      LEFT JOIN LATERAL (SELECT c.* FROM pyxp.xp_wallet_checkpoints c WHERE c.user_wallet = w.user_wallet LIMIT 1) c
             ON true
      LEFT JOIN LATERAL (SELECT o.* FROM pyxp.xp_wallet_openings o WHERE o.user_wallet = w.user_wallet LIMIT 1) o
             ON true
     WHERE p_since_checkpoint
$$;
COMMENT ON FUNCTION pyxp.audited_wallets(boolean) IS
    'internal: the wallets an audit walks (all, or those with rows since the last checkpoint) and where each starts.';

CREATE OR REPLACE FUNCTION pyxp.period_xp_from_rows(p_wallet text, p_start timestamptz, p_kind text, p_timezone text)
RETURNS bigint
LANGUAGE sql STABLE
AS $$
    SELECT (sum(x.xp) FILTER (WHERE x.xp IS NOT NULL))::bigint
      FROM (SELECT t.xp_amount AS xp
              FROM pyxp.xp_transactions t
             CROSS JOIN LATERAL (SELECT CASE WHEN t.reverses IS NULL THEN t.created_at
                                             ELSE pyxp.reversed_row_at(t.reverses) END AS at) e
             WHERE t.user_wallet = p_wallet AND date_trunc(p_kind, e.at, p_timezone) = p_start
               AND t.wallet_seq > coalesce((SELECT o.wallet_seq FROM pyxp.xp_wallet_openings o
                                             WHERE o.user_wallet = p_wallet), 0)
            UNION ALL
            SELECT CASE p_kind WHEN 'day' THEN o.day_xp WHEN 'week' THEN o.week_xp WHEN 'month' THEN o.month_xp
                               ELSE o.year_xp END
              FROM pyxp.xp_wallet_openings o
             WHERE o.user_wallet = p_wallet
               AND CASE p_kind WHEN 'day' THEN o.day_start WHEN 'week' THEN o.week_start
                               WHEN 'month' THEN o.month_start ELSE o.year_start END = p_start) x
$$;
COMMENT ON FUNCTION pyxp.period_xp_from_rows(text, timestamptz, text, text) IS
    'internal: a wallet''s XP in one period, from its rows and its opening (the audit''s mismatch path).';

CREATE OR REPLACE FUNCTION pyxp.chain_problems(p_since_checkpoint boolean)
RETURNS TABLE (check_name text, user_wallet text, wallet_seq bigint, detail text)
LANGUAGE sql STABLE
AS $$
    WITH per_wallet AS (
        -- One wallet at a time (a nested loop over the audited wallets): its
        -- rows from the index in wallet_seq order, the window and the
        -- aggregate over them, so no sort of the whole ledger (a merge of
        -- all wallets sorted 10M rows: 69 s for the walk, against 25 s).
        -- The full audit walks from position 1 (one index descent either
        -- way): the rows at or before the opening (stragglers: sql/01_schema.sql)
        -- are counted, not chained; they are in the opening's sums.
        SELECT g.*, w.*
          FROM pyxp.audited_wallets(p_since_checkpoint) g
         CROSS JOIN LATERAL (
                SELECT coalesce(greatest(max(r.seq), g.op_seq), 0) AS ledger_seq,
                       g.from_xp + coalesce(sum(r.xp_amount) FILTER (WHERE r.seq > g.from_seq), 0) AS ledger_xp,
                       -- (a checkpoint at or before the opening: its row was archived)
                       coalesce(bool_or(r.seq = g.cp_seq), false) OR g.cp_seq <= g.op_seq AS cp_found,
                       count(*) FILTER (WHERE r.seq <= g.op_seq) AS op_kept,
                       greatest(max(r.at) FILTER (WHERE r.seq > g.from_seq), g.op_last_at) AS latest_at,
                       pyxp.sum_with_opening(sum(r.xp_amount) FILTER (WHERE r.seq > g.from_seq AND r.at >= g.day_start),
                                             g.op_day_start = g.day_start, g.op_day_xp) AS ledger_day_xp,
                       pyxp.sum_with_opening(sum(r.xp_amount) FILTER (WHERE r.seq > g.from_seq AND r.at >= g.week_start),
                                             g.op_week_start = g.week_start, g.op_week_xp) AS ledger_week_xp,
                       pyxp.sum_with_opening(sum(r.xp_amount) FILTER (WHERE r.seq > g.from_seq AND r.at >= g.month_start),
                                             g.op_month_start = g.month_start, g.op_month_xp) AS ledger_month_xp,
                       pyxp.sum_with_opening(sum(r.xp_amount) FILTER (WHERE r.seq > g.from_seq AND r.at >= g.year_start),
                                             g.op_year_start = g.year_start, g.op_year_xp) AS ledger_year_xp,
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
                                            ELSE pyxp.reversed_row_at(x.reverses)
                                       END AS at,
                                       -- the previous row walked, unless it is at or before
                                       -- the starting position: then that position's balance
                                       CASE WHEN lag(x.wallet_seq) OVER w > g.from_seq
                                            THEN lag(x.balance_after) OVER w ELSE g.from_xp END AS previous,
                                       CASE WHEN lag(x.wallet_seq) OVER w > g.from_seq
                                            THEN lag(x.wallet_seq) OVER w ELSE g.from_seq END AS previous_seq
                                  FROM pyxp.xp_transactions x
                                 WHERE x.user_wallet = g.user_wallet
                                   AND x.wallet_seq >= CASE WHEN p_since_checkpoint THEN g.from_seq ELSE 0 END
                                WINDOW w AS (ORDER BY x.wallet_seq)) y) r
             ) w
    ), checked AS (
        SELECT p.*, c.level, c.next_level_xp, z.tz,
               p.total_xp IS DISTINCT FROM p.ledger_xp AS bad_balance,
               p.last_wallet_seq IS DISTINCT FROM p.ledger_seq AS bad_seq,
               p.total_xp IS NOT NULL
                   AND (p.current_level <> c.level OR p.xp_to_next_level <> c.next_level_xp - p.total_xp) AS bad_level,
               p.cp_seq IS NOT NULL AND NOT p.cp_found AS bad_checkpoint,
               NOT p_since_checkpoint AND p.op_rows + p.op_kept <> p.op_seq AS bad_opening,
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
                        WHEN c.from_seq > 0 AND c.from_seq = c.op_seq AND NOT p_since_checkpoint
                        THEN format('xp_balances.total_xp = %s, opening %s + rows since = %s',
                                    c.total_xp, c.from_xp, c.ledger_xp)
                        WHEN c.from_seq > 0
                        THEN format('xp_balances.total_xp = %s, checkpoint %s + rows since = %s',
                                    c.total_xp, c.from_xp, c.ledger_xp)
                        ELSE format('xp_balances.total_xp = %s, ledger sum = %s', c.total_xp, c.ledger_xp) END
             WHERE c.bad_balance
            UNION ALL
            SELECT 'opening_mismatch', NULL,
                   format('opening at wallet_seq %s: %s rows archived + %s in the ledger up to it',
                          c.op_seq, c.op_rows, c.op_kept)
             WHERE c.bad_opening
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
        OR c.bad_periods OR c.bad_opening
$$;
COMMENT ON FUNCTION pyxp.chain_problems(boolean) IS
    'internal: one walk of the audited wallets'' chains in wallet_seq order: chain, balance, level, checkpoint, periods.';

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
COMMENT ON FUNCTION pyxp.row_problems(boolean) IS
    'internal: checks of single rows (reversals, rules, requests), on every row or on those since the last checkpoint.';

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
           + (SELECT coalesce(sum(a.rows_archived), 0) FROM pyxp.xp_ledger_archives a)
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
COMMENT ON FUNCTION pyxp.audit() IS
    'API: one row per inconsistency between ledger, balances, levels, rules and registrations; none when healthy.';

-- PX029 when the ledger has archived rows and p_what needs them all.
CREATE FUNCTION pyxp.require_whole_ledger(p_what text)
RETURNS void
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_horizon timestamptz := pyxp.archive_horizon();
BEGIN
    IF v_horizon IS NOT NULL THEN
        RAISE EXCEPTION '% needs the whole ledger, and its rows before % were archived', p_what, v_horizon
            USING ERRCODE = 'PX029',
                  HINT = 'the archived rows are in schema pyxp_archive (or their dump); pyxp.xp_ledger_archives lists them';
    END IF;
END
$$;

-- PX029 when a period that began before the archived range ended is read
-- from the ledger (its archived rows are gone from it).
CREATE FUNCTION pyxp.require_unarchived_period(p_period text, p_start timestamptz)
RETURNS void
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_horizon timestamptz := pyxp.archive_horizon();
BEGIN
    IF p_start < v_horizon THEN
        RAISE EXCEPTION 'the % from % began before %, and the ledger''s rows before then were archived',
                        p_period, p_start, v_horizon
            USING ERRCODE = 'PX029',
                  HINT = 'a wallet''s latest period of each kind is kept on its balance; older boards are in the archive';
    END IF;
END
$$;

-- Owner operation (monthly, after pyxp.create_ledger_partitions): archives
-- every partition of the ledger that ends at or before archived_before (at
-- most the start of this month, UTC), except the default partition. One row
-- per partition archived; none when there is nothing to archive. In order:
--   1. EXCLUSIVE on xp_audit_checkpoints (one archive or checkpoint at a
--      time), SHARE on rulesets (no ruleset activated meanwhile), then SHARE
--      on those partitions: no row can be added to them meanwhile (only a
--      transaction that began before their range ended could, and one that
--      did is waited for)
--   2. an audit checkpoint (pyxp.record_audit_checkpoint, a statement of its
--      own, so it sees every row of those partitions): what was written
--      since the last one is verified (PX028, nothing archived, when
--      anything is inconsistent), and the archive names it; PX030 for a
--      reversal among those rows whose original stays
--   3. the openings: per wallet with archived rows, their count, and its
--      positions up to its highest archived one folded into its previous
--      opening (balance_after of that row, and the latest periods of those
--      positions, in the active ruleset's zone)
--   4. the archived rows' use of capped allowances
--   5. the requests of archived flow and reversal rows keep their key and
--      inputs (rebuilt from the rows, pyxp.recorded_request) and are marked
--   6. ACCESS EXCLUSIVE on the ledger (awards wait until this transaction
--      commits: at most lock_timeout, 1 s, for the lock, then the catalog
--      changes below): the originals of reversals still in the ledger, then
--      DETACH each partition (pyxp.guard_ledger_partitions lets through the
--      partitions of this transaction's archive row) and move it to
--      pyxp_archive.
-- Steps 3 to 5 read every archived row: run it when awards are few.
CREATE FUNCTION pyxp.archive_ledger_partitions(archived_before timestamptz)
RETURNS TABLE (archive_id bigint, partition_name text, range_start timestamptz, range_end timestamptz,
               rows_archived bigint, archive_table text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET lock_timeout = '1s'
SET datestyle = 'ISO, YMD'  -- the partitions' bounds (pyxp.ledger_partitions)
SET jit = off
AS $$
#variable_conflict use_column
DECLARE
    v_names text[];
    v_oids oid[];
    v_starts timestamptz[];
    v_ends timestamptz[];
    v_counts bigint[] := '{}';
    v_count bigint;
    v_top_id bigint;
    v_id bigint;
    v_checkpoint bigint;
    v_archive bigint;
    v_zone text;
    v_name text;
    v_problem record;
BEGIN
    PERFORM pyxp.require_read_committed();
    IF archive_ledger_partitions.archived_before IS NULL OR NOT isfinite(archive_ledger_partitions.archived_before)
       OR archive_ledger_partitions.archived_before > date_trunc('month', now(), 'UTC') THEN
        RAISE EXCEPTION 'archived_before must be a time at or before the start of this month (UTC), got %',
                        coalesce(archive_ledger_partitions.archived_before::text, 'NULL')
            USING ERRCODE = 'PX023',
                  HINT = 'e.g. the start of a month a year ago: only whole partitions before it are archived';
    END IF;
    -- One archive or checkpoint at a time (record_audit_checkpoint takes the
    -- same lock; a second archive waits for at most lock_timeout, then fails
    -- with 55P03, or finds these partitions gone). SHARE on rulesets: no
    -- ruleset is activated meanwhile (install_ruleset's SHARE ROW EXCLUSIVE),
    -- so the openings' periods are in the zone that stays active.
    LOCK TABLE pyxp.xp_audit_checkpoints IN EXCLUSIVE MODE;
    LOCK TABLE pyxp.rulesets IN SHARE MODE;
    v_zone := pyxp.active_timezone();
    SELECT array_agg(p.partition_name ORDER BY p.range_end), array_agg(p.range_start ORDER BY p.range_end),
           array_agg(p.range_end ORDER BY p.range_end),
           array_agg(('pyxp.' || quote_ident(p.partition_name))::regclass::oid ORDER BY p.range_end)
      INTO v_names, v_starts, v_ends, v_oids
      FROM pyxp.ledger_partitions() p
     WHERE NOT p.is_default AND p.range_end <= archive_ledger_partitions.archived_before;
    IF v_names IS NULL THEN
        RETURN;
    END IF;
    FOREACH v_name IN ARRAY v_names LOOP
        EXECUTE format('LOCK TABLE pyxp.%I IN SHARE MODE', v_name);
    END LOOP;
    SELECT k.checkpoint_id INTO v_checkpoint FROM pyxp.record_audit_checkpoint() k;
    FOREACH v_name IN ARRAY v_names LOOP
        EXECUTE format('SELECT count(*), max(t.id) FROM pyxp.%I t', v_name) INTO v_count, v_id;
        v_counts := v_counts || v_count;
        v_top_id := greatest(v_top_id, v_id);
    END LOOP;
    -- A reversal among these rows whose original stays (its transaction
    -- began before the original's; since 0016 the writer dates a reversal no
    -- earlier than its original): the ledger's boards would lose it.
    SELECT r.id, r.reverses, o.created_at INTO v_problem
      FROM pyxp.xp_transactions r
      JOIN pyxp.xp_transactions o ON o.id = r.reverses AND NOT (o.tableoid = ANY (v_oids))
     WHERE r.tableoid = ANY (v_oids) AND r.created_at < v_ends[cardinality(v_ends)] AND r.reverses IS NOT NULL
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'reversal % would be archived, but transaction % that it reverses (%) would stay',
                        v_problem.id, v_problem.reverses, v_problem.created_at
            USING ERRCODE = 'PX030',
                  HINT = 'archive up to a later month, one that holds the reversed transaction too';
    END IF;
    INSERT INTO pyxp.xp_ledger_archives AS a (archived_before, partitions, partition_oids, rows_archived,
                                              wallets_opened, last_transaction_id, timezone, checkpoint_id,
                                              feed_floor)
    VALUES (v_ends[cardinality(v_ends)], v_names, v_oids,
            (SELECT sum(c) FROM unnest(v_counts) c), 0, v_top_id, v_zone, v_checkpoint,
            -- the highest cursor (sql/11_changes.sql) an archived row may have had
            (SELECT greatest(max(t.id) FILTER (WHERE t.feed_xid IS NULL),
                             (max(t.feed_xid)::text::bigint << 24) + 16777215)
               FROM pyxp.xp_transactions t
              WHERE t.tableoid = ANY (v_oids) AND t.created_at < v_ends[cardinality(v_ends)]))
    RETURNING a.archive_id INTO v_archive;

    -- 3. The openings: of every wallet with archived rows, its count of
    --    them, and the fold of its rows at positions after its previous
    --    opening and up to its highest archived one (a straggler still in
    --    the ledger among them), read before the DETACH, by the wallet's
    --    index range; their time is a reversal's original's.
    WITH tops AS (
        SELECT t.user_wallet, max(t.wallet_seq) AS top_seq, count(*) AS archived
          FROM pyxp.xp_transactions t
         WHERE t.tableoid = ANY (v_oids) AND t.created_at < v_ends[cardinality(v_ends)]
         GROUP BY t.user_wallet
    ), moved AS MATERIALIZED (
        SELECT g.user_wallet, greatest(g.top_seq, o.wallet_seq) AS top_seq, g.archived + coalesce(o.archived_rows, 0) AS archived,
               o.wallet_seq AS old_seq, o.total_xp AS old_xp, o.last_at AS old_at,
               o.day_start AS old_day, o.day_xp AS old_day_xp, o.week_start AS old_week, o.week_xp AS old_week_xp,
               o.month_start AS old_month, o.month_xp AS old_month_xp, o.year_start AS old_year,
               o.year_xp AS old_year_xp
          FROM tops g
          LEFT JOIN pyxp.xp_wallet_openings o ON o.user_wallet = g.user_wallet
    ), folded_rows AS MATERIALIZED (
        SELECT m.user_wallet, x.wallet_seq, x.balance_after, x.xp_amount,
               CASE WHEN x.reverses IS NULL THEN x.created_at ELSE pyxp.reversed_row_at(x.reverses) END AS at
          FROM moved m
          JOIN pyxp.xp_transactions x
            ON x.user_wallet = m.user_wallet AND x.wallet_seq > coalesce(m.old_seq, 0) AND x.wallet_seq <= m.top_seq
    ), ends AS (  -- grouped, never a scan of folded_rows per wallet
        SELECT r.user_wallet, max(r.at) AS max_at, (array_agg(r.balance_after ORDER BY r.wallet_seq DESC))[1] AS balance
          FROM folded_rows r GROUP BY r.user_wallet
    ), latest AS MATERIALIZED (
        SELECT m.*, x.last_at, coalesce(e.balance, m.old_xp) AS total_xp,
               date_trunc('day', x.last_at, v_zone) AS day_start, date_trunc('week', x.last_at, v_zone) AS week_start,
               date_trunc('month', x.last_at, v_zone) AS month_start,
               date_trunc('year', x.last_at, v_zone) AS year_start
          FROM moved m
          LEFT JOIN ends e ON e.user_wallet = m.user_wallet
         CROSS JOIN LATERAL (SELECT greatest(m.old_at, e.max_at) AS last_at) x
    ), sums AS (
        SELECT r.user_wallet,
               sum(r.xp_amount) FILTER (WHERE r.at >= l.day_start)::bigint AS day_xp,
               sum(r.xp_amount) FILTER (WHERE r.at >= l.week_start)::bigint AS week_xp,
               sum(r.xp_amount) FILTER (WHERE r.at >= l.month_start)::bigint AS month_xp,
               sum(r.xp_amount) FILTER (WHERE r.at >= l.year_start)::bigint AS year_xp
          FROM folded_rows r JOIN latest l ON l.user_wallet = r.user_wallet
         GROUP BY r.user_wallet
    ), opened AS (
        INSERT INTO pyxp.xp_wallet_openings AS o (user_wallet, wallet_seq, total_xp, archived_rows, last_at,
                                                  day_start, day_xp, week_start, week_xp, month_start, month_xp,
                                                  year_start, year_xp, archive_id)
        SELECT l.user_wallet, l.top_seq, l.total_xp, l.archived, l.last_at,
               l.day_start, coalesce(s.day_xp, 0) + CASE WHEN l.old_day = l.day_start THEN l.old_day_xp ELSE 0 END,
               l.week_start, coalesce(s.week_xp, 0) + CASE WHEN l.old_week = l.week_start THEN l.old_week_xp ELSE 0 END,
               l.month_start, coalesce(s.month_xp, 0) + CASE WHEN l.old_month = l.month_start THEN l.old_month_xp ELSE 0 END,
               l.year_start, coalesce(s.year_xp, 0) + CASE WHEN l.old_year = l.year_start THEN l.old_year_xp ELSE 0 END,
               v_archive
          FROM latest l
          LEFT JOIN sums s ON s.user_wallet = l.user_wallet
        ON CONFLICT (user_wallet) DO UPDATE
           SET wallet_seq = excluded.wallet_seq, total_xp = excluded.total_xp, archived_rows = excluded.archived_rows,
               last_at = excluded.last_at, day_start = excluded.day_start, day_xp = excluded.day_xp,
               week_start = excluded.week_start, week_xp = excluded.week_xp, month_start = excluded.month_start,
               month_xp = excluded.month_xp, year_start = excluded.year_start, year_xp = excluded.year_xp,
               archive_id = excluded.archive_id
        RETURNING 1
    )
    UPDATE pyxp.xp_ledger_archives a SET wallets_opened = (SELECT count(*) FROM opened) WHERE a.archive_id = v_archive;

    -- 4. What the archived rows used of capped allowances.
    INSERT INTO pyxp.xp_archived_cap_usage AS u (user_wallet, allowance, period_start, used_xp, cap_max_xp)
    SELECT c.user_wallet, c.allowance, c.period_start, c.used_xp, c.cap_max_xp FROM pyxp.rows_cap_usage(v_oids) c
    ON CONFLICT (user_wallet, allowance, period_start) DO UPDATE
       SET used_xp = u.used_xp + excluded.used_xp, cap_max_xp = greatest(u.cap_max_xp, excluded.cap_max_xp);

    -- 5. The requests of archived flow and reversal rows: marked, with their
    --    key and inputs (rebuilt from the rows while they are here). A
    --    request whose rows cannot rebuild them (their rule deleted: audit()
    --    says rule_missing) is only marked.
    UPDATE pyxp.xp_requests q
       SET archive_id = v_archive,
           idempotency_key = coalesce(q.idempotency_key, CASE WHEN r.complete THEN r.key END),
           inputs = coalesce(q.inputs, CASE WHEN r.complete THEN r.inputs END),
           ruleset_id = coalesce(q.ruleset_id, CASE WHEN r.complete THEN r.ruleset_id END),
           created_at = coalesce(q.created_at, CASE WHEN r.complete THEN r.created_at END)
      FROM (SELECT k.key, k.hash, rr.inputs, rr.ruleset_id, rr.created_at,
                   rr.inputs IS NOT NULL AND rr.ruleset_id IS NOT NULL AND rr.created_at IS NOT NULL AS complete
              FROM (SELECT DISTINCT t.idempotency_key AS key, pyxp.key_hash(t.idempotency_key) AS hash
                      FROM pyxp.xp_transactions t
                     WHERE t.tableoid = ANY (v_oids) AND t.created_at < v_ends[cardinality(v_ends)]
                       AND t.request_digest IS NULL) k
              LEFT JOIN LATERAL (SELECT rr.* FROM pyxp.recorded_request(k.key) rr WHERE rr.same_key) rr ON true) r
     WHERE q.key_hash = r.hash AND q.archive_id IS NULL;

    -- 6. Under the ledger's lock: no reversal of an archived row can start
    --    any more, and none is in flight.
    LOCK TABLE pyxp.xp_transactions IN ACCESS EXCLUSIVE MODE;
    INSERT INTO pyxp.xp_archived_originals (transaction_id, user_wallet, transaction_type, xp_amount, rule_id, reverses,
                                            created_at, archive_id)
    SELECT o.id, o.user_wallet, o.transaction_type, o.xp_amount, o.rule_id, o.reverses, o.created_at, v_archive
      FROM pyxp.xp_transactions r
      JOIN pyxp.xp_transactions o ON o.id = r.reverses AND o.tableoid = ANY (v_oids)
     WHERE r.reverses IS NOT NULL AND NOT (r.tableoid = ANY (v_oids));
    PERFORM set_config('pyxp.archiving', array_to_string(v_oids, ','), true);
    FOR i IN 1 .. cardinality(v_names) LOOP
        EXECUTE format('ALTER TABLE pyxp.xp_transactions DETACH PARTITION pyxp.%I', v_names[i]);
        EXECUTE format('ALTER TABLE pyxp.%I SET SCHEMA pyxp_archive', v_names[i]);
        archive_id := v_archive;
        partition_name := v_names[i];
        range_start := v_starts[i];
        range_end := v_ends[i];
        rows_archived := v_counts[i];
        archive_table := 'pyxp_archive.' || quote_ident(v_names[i]);
        RETURN NEXT;
    END LOOP;
    PERFORM set_config('pyxp.archiving', '', true);
END
$$;

COMMENT ON FUNCTION pyxp.archive_ledger_partitions(timestamptz) IS
    'internal: moves the ledger''s partitions ending at or before archived_before into schema pyxp_archive after an audit checkpoint, keeping each wallet''s opening. Owner only.';

COMMENT ON FUNCTION pyxp.require_whole_ledger(text) IS 'internal: PX029 when rows of the ledger were archived.';

COMMENT ON FUNCTION pyxp.require_unarchived_period(text, timestamptz) IS
    'internal: PX029 for a period that began before the archived range ended.';

REVOKE ALL ON FUNCTION pyxp.archive_ledger_partitions(timestamptz),
    pyxp.require_whole_ledger(text), pyxp.require_unarchived_period(text, timestamptz) FROM PUBLIC;

REVOKE ALL ON FUNCTION pyxp.archive_horizon(), pyxp.reversed_row_at(bigint), pyxp.rows_cap_usage(oid[]),
    pyxp.sum_with_opening(numeric, boolean, bigint), pyxp.audited_wallets(boolean) FROM PUBLIC;

RESET ROLE;

-- The partitions' guard belongs to a superuser (sql/12_partitions.sql): replaced when one
-- migrates; otherwise it keeps refusing every DETACH, the archive's included.
DO $guard$
BEGIN
    IF to_regprocedure('pyxp.guard_ledger_partitions()') IS NULL THEN
        RETURN;
    ELSIF NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        RAISE WARNING 'pyxp: % is no superuser: the partitions'' guard still refuses the DETACH of pyxp.archive_ledger_partitions', current_user
            USING HINT = 'a superuser can run the CREATE FUNCTION pyxp.guard_ledger_partitions statement of sql/12_partitions.sql';
        RETURN;
    END IF;
    EXECUTE $function$
CREATE OR REPLACE FUNCTION pyxp.guard_ledger_partitions()
RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_seen text := current_setting('pyxp.ledger_partitions', true);
    v_ledger oid;
    v_kept oid[];
    v_detached oid[];  -- partitions this command detached
    v_archived boolean;
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
    SELECT array_agg(c.oid ORDER BY c.oid) INTO v_detached
      FROM pg_class c
     WHERE c.oid = ANY (v_kept)
       AND NOT EXISTS (SELECT FROM pg_partition_tree(v_ledger) t WHERE t.relid = c.oid);
    -- pyxp.archive_ledger_partitions (sql/13_retention.sql) detaching the
    -- partitions of the archive it recorded (read by EXECUTE: a command that
    -- drops the table, a downgrade, must not fail on planning a query of it)
    IF v_detached IS NOT NULL
       AND v_detached <@ string_to_array(nullif(current_setting('pyxp.archiving', true), ''), ',')::oid[]
       AND to_regclass('pyxp.xp_ledger_archives') IS NOT NULL THEN
        EXECUTE 'SELECT EXISTS (SELECT FROM pyxp.xp_ledger_archives a
                                 WHERE $1 <@ a.partition_oids AND a.archived_by_xid = pg_current_xact_id())'
           INTO v_archived USING v_detached;
    END IF;
    IF v_detached IS NOT NULL AND NOT coalesce(v_archived, false) THEN
        v_name := v_detached[1]::regclass::text;
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
$$
$function$;
END
$guard$;
