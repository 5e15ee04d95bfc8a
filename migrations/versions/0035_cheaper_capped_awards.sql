-- 0035: a capped award's CPU; the rank counts' slot leased per transaction
-- (prepared transactions); a write called by a trigger of another call's
-- ledger insert refused (PX034).
-- PostgreSQL reads a CHECK constraint's stored expression again at every
-- statement that writes its table: the usage rows' seed check, written out,
-- cost each capped award about 3 % of its CPU; it is now one call of an
-- IMMUTABLE function. The writer's planning statement aggregates its arrays
-- from a subquery sorted in call order instead of sorting each array's input.
SET LOCAL ROLE pyxp_owner;

-- A usage row's seed (below) is all there or all absent, and at most what
-- the row used.
CREATE FUNCTION pyxp.cap_usage_seed_consistent(p_used_xp bigint, p_seeded_xp bigint, p_seeded_per text,
                                               p_seeded_zone text, p_seeded_by bigint, p_seeded_at timestamptz,
                                               p_seeded_seq bigint)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN p_seeded_xp BETWEEN 0 AND p_used_xp
       AND num_nulls(p_seeded_per, p_seeded_zone, p_seeded_by, p_seeded_at, p_seeded_seq) IN (0, 5)
       AND (p_seeded_at IS NOT NULL OR p_seeded_xp = 0);
END
$$;

REVOKE ALL ON FUNCTION pyxp.cap_usage_seed_consistent(bigint, bigint, text, text, bigint, timestamptz, bigint) FROM PUBLIC;
COMMENT ON FUNCTION pyxp.cap_usage_seed_consistent(bigint, bigint, text, text, bigint, timestamptz, bigint) IS
    'internal: xp_cap_usage''s seed check (all or nothing, at most the usage).';

-- The same rule as before (validated on the rows present).
ALTER TABLE pyxp.xp_cap_usage DROP CONSTRAINT xp_cap_usage_seed_check,
    ADD CONSTRAINT xp_cap_usage_seed_check CHECK (
        pyxp.cap_usage_seed_consistent(used_xp, seeded_xp, seeded_per, seeded_zone, seeded_by, seeded_at, seeded_seq));

DROP FUNCTION pyxp.kept_period_xp(timestamptz, bigint, timestamptz, bigint);

-- PX019 for a period's XP beyond bigint (pyxp.kept_period_xp).
CREATE FUNCTION pyxp.refuse_period_xp(p_xp numeric)
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RAISE EXCEPTION 'a wallet''s XP in one period would be %, out of range', p_xp
        USING ERRCODE = 'PX019',
              HINT = 'what a wallet gains or loses within one day, week, month or year stays between -2^63 and 2^63';
END
$$;

-- A balance's XP in its latest period of a kind (xp_balances.<kind>_xp,
-- sql/07_periods.sql) after new rows of p_gained XP in period p_new (NULL:
-- no new row): counted anew when p_new is a later period, added when it is
-- the same, left alone when it is earlier (those rows are the ledger's).
-- SQL, inlined into the writer's UPDATE. A period's XP is a difference of
-- balances, which bigint does not always hold (from -2^62 to 2^62 in one
-- day is 2^63): computed in numeric, refused beyond (PX019, 0035; it was a
-- bare 22003, and a batch whose gains summed to 2^63 was refused though
-- its period's XP fitted).
CREATE FUNCTION pyxp.kept_period_xp(p_kept_start timestamptz, p_kept_xp bigint, p_new timestamptz,
                                    p_gained numeric)
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN p_new IS NULL THEN p_kept_xp
                WHEN p_kept_start IS NULL OR p_new > p_kept_start THEN
                    CASE WHEN abs(p_gained) < 9223372036854775807 THEN p_gained::bigint
                         ELSE pyxp.refuse_period_xp(p_gained) END
                WHEN p_new = p_kept_start THEN
                    CASE WHEN abs(p_kept_xp + p_gained) < 9223372036854775807 THEN (p_kept_xp + p_gained)::bigint
                         ELSE pyxp.refuse_period_xp(p_kept_xp + p_gained) END
                ELSE p_kept_xp END
$$;

COMMENT ON FUNCTION pyxp.kept_period_xp(timestamptz, bigint, timestamptz, numeric) IS
    'internal: a balance''s XP in its latest period of a kind after new rows.';
COMMENT ON FUNCTION pyxp.refuse_period_xp(numeric) IS 'internal: PX019 for a period''s XP beyond bigint.';
REVOKE ALL ON FUNCTION pyxp.kept_period_xp(timestamptz, bigint, timestamptz, numeric), pyxp.refuse_period_xp(numeric) FROM PUBLIC;

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
-- balances; insert; update each balance once; return. Four for a single call:
-- its lock is taken by the second (0020; under caps since 0021). Per-row results
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
    v_claimed_at timestamptz[];  -- and that row's created_at (pyxp.claimed_row)
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
    v_now timestamptz := now();  -- the new rows' time (below: under caps, no earlier than the activation)
    v_at timestamptz;        -- the new rows' effective time (periods)
    v_reversed_at timestamptz;  -- a reversal's original's created_at
    v_day timestamptz;
    v_week timestamptz;
    v_month timestamptz;
    v_year timestamptz;
    v_waited boolean;        -- a single capped call locked a version newer than its snapshot's (step 2)
    v_slot integer;          -- the rank counts' slot of this transaction (step 4)
    v_set text;              -- (set_config's result)
    v_problem record;
BEGIN
    IF coalesce(cardinality(v_rows), 0) = 0 THEN
        RETURN;
    END IF;
    -- Called by a trigger that step 3 of another call fired (an application's
    -- trigger on the ledger or the claims that awards or reverses): that
    -- call's rows are in the ledger and its balances not updated yet, so this
    -- call would read them stale and the other call would then write over
    -- this one's balance (0035, a hostile test: a +2 bonus in the ledger,
    -- missing from the balance, two rows at one wallet_seq). Refused before
    -- anything is written. Triggers on the balances fire after step 4: an
    -- award there sees the updated balance, and is accepted.
    IF current_setting('pyxp.appending_rows', true) = 'on' THEN
        RAISE EXCEPTION 'a writing function of pyxp was called by a trigger fired while another call inserted its ledger rows'
            USING ERRCODE = 'PX034',
                  DETAIL = 'that call has not updated its balances yet: this call would read them stale, and that one write over this one''s',
                  HINT = 'award after the call returns, or from a trigger on pyxp.xp_balances or on a table of your own';
    END IF;
    IF pyxp.ledger_cluster() <> (pg_control_system()).system_identifier THEN
        PERFORM pyxp.require_ledger_cluster();  -- PX032: a ledger copied from another cluster (0032)
    END IF;
    IF pyxp.ledger_timeline() <> pyxp.current_timeline() THEN
        -- Every writing function adopts a new timeline before it takes its
        -- locks (pyxp.follow_timeline, 0033); a path that did not would
        -- write ids the history left behind had used.
        RAISE EXCEPTION 'internal: a write on timeline % of a ledger adopted on timeline %', pyxp.current_timeline(),
                        pyxp.ledger_timeline()
            USING HINT = 'the writing function must call pyxp.follow_timeline() before its locks';
    END IF;
    -- Under caps, a row is dated no earlier than the activation of the
    -- ruleset it is written under: a transaction that began before the
    -- switch (an application's, or an award queued behind the switch's lock)
    -- would otherwise count in a period of the new zone that began before
    -- the switch, which the switch did not count (pyxp.seed_cap_usage: the
    -- period containing the activation), and get a fresh allowance there
    -- (0027, a hostile test: +100 over a used 250-per-day allowance). Its
    -- cap, its row and its periods all take this time.
    IF p_caps THEN
        v_now := greatest(v_now, (SELECT r.activated_at FROM pyxp.rulesets r WHERE r.ruleset_id = p_ruleset));
    END IF;
    -- 1. The wallets' row locks. A batch: each row created if missing or
    --    locked if present, one statement, strictly in wallet order (creating
    --    the missing rows first and locking the others after let a batch hold
    --    a new wallet's row while waiting for an older one that a caller
    --    awarding in wallet order held: a deadlock, 40P01); DO UPDATE ...
    --    WHERE false locks a present row without writing a version of it.
    --    One wallet (a single award, a flow, a reversal): locked by step 2
    --    itself (FOR UPDATE in its read of the balance: one statement less on
    --    the hot path, 0020; under caps too since 0021); a wallet without a
    --    balance row gets one there, and step 2 runs again.
    IF p_batch THEN
        INSERT INTO pyxp.xp_balances AS x (user_wallet, total_xp, current_level, xp_to_next_level)
        SELECT w.user_wallet, 0, c.level, c.next_level_xp::bigint
          FROM (SELECT DISTINCT r.user_wallet FROM unnest(v_rows) r) w
         CROSS JOIN pyxp.curve_position(p_ruleset, 0) c
         ORDER BY w.user_wallet COLLATE "C"  -- code-point order, whatever the database's collation (0034)
        ON CONFLICT (user_wallet) DO UPDATE SET updated_at = x.updated_at WHERE false;
    END IF;
    <<planning>>
    LOOP
    -- 2. The balances, locked (FOR UPDATE: the latest version, after any
    --    holder's commit), and each generic award's claim made before (a
    --    replay, or PX010 for other inputs). A batch, locked in step 1: this
    --    statement's snapshot sees what the locks' previous holders
    --    committed. A single call's lock is taken here, after the snapshot:
    --    a claim committed by the holder it waited for (the same award, made
    --    concurrently) is not seen, and step 3's claim INSERT, which waits
    --    for it, skips the row: the call then runs again as a replay (below;
    --    under caps the reread that follows sees the claim first).
    --    Caps (SPEC 12; only when the ruleset has a capped rule): each new
    --    capped gain is cut to what is left of its allowance in the current
    --    period (xp_cap_usage), in row order: within one call an allowance's
    --    gains only add up, so the k-th applies least(C_k, L) - least(C_k-1, L),
    --    C the running sum of the gains asked, L what was left. That usage
    --    must include what the lock's previous holder committed, which this
    --    statement's snapshot may not hold: a single call compares the
    --    balance version it locked with the one its snapshot sees (ctid:
    --    every update writes a new version). Different, a writer of the
    --    wallet committed after the snapshot (it waited for it, or it
    --    committed just before the lock): step 2 runs again, the lock held,
    --    in a snapshot taken after that commit (0021; a statement of its own
    --    taking the lock first cost every capped award a statement).
    --    Then the running balances, per wallet in row order, and the feed
    --    group (sql/11_changes.sql: this transaction's id, or the wallet's
    --    last group if higher).
    -- Without caps the same statement without the caps' lookups and window
    -- (every plan node costs its start-up on every award).
    -- The arrays are aggregated from rows already in call order (the
    -- subquery's ORDER BY): a plain aggregate over one sorted subquery reads
    -- it in that order (no join, no grouping, no parallel plan above it),
    -- where array_agg(... ORDER BY) sorted its input once per array, eight
    -- to ten sorts per call (0035).
    IF NOT p_caps THEN
        SELECT array_agg(x.claim_id), array_agg(x.after),
               array_agg(x.feed),
               min(x.ord) FILTER (WHERE x.conflict),
               min(x.ord) FILTER (WHERE abs(x.after) > pyxp.balance_limit()),
               count(*) FILTER (WHERE x.claim_id IS NULL AND x.transaction_type IS NOT NULL),
               array_agg(x.seq), array_agg(x.claimed_at)
          INTO v_claims, v_after, v_feed, v_conflict_ord, v_range_ord, v_expected, v_seq, v_claimed_at
          FROM (SELECT r.ord, r.transaction_type, k.id AS claim_id, k.created_at AS claimed_at,
                       k.id IS NOT NULL AND (k.request_digest <> pyxp.inputs_digest(r.inputs)
                                             OR k.idempotency_key <> r.idempotency_key) AS conflict,
                       b.total_xp + sum(r.xp_amount) FILTER (WHERE k.id IS NULL)
                                        OVER (PARTITION BY r.user_wallet ORDER BY r.ord) AS after,
                       b.last_wallet_seq + count(*) FILTER (WHERE k.id IS NULL AND r.transaction_type IS NOT NULL)
                                               OVER (PARTITION BY r.user_wallet ORDER BY r.ord) AS seq,
                       greatest(pyxp.ledger_xid(pg_current_xact_id()), b.last_feed_xid) AS feed
                  FROM unnest(v_rows) WITH ORDINALITY r(call_index, user_wallet, idempotency_key, inputs,
                                                        transaction_type, xp_amount, xp_requested, apply_floor,
                                                        rule_id, campaign_id, subject, metadata, reverses,
                                                        moderations, ord)
                 CROSS JOIN LATERAL (SELECT b.total_xp, b.last_feed_xid, b.last_wallet_seq FROM pyxp.xp_balances b
                                      WHERE b.user_wallet = r.user_wallet LIMIT 1 FOR UPDATE) b
                  LEFT JOIN LATERAL (SELECT c.transaction_id, c.created_at FROM pyxp.xp_award_claims c
                                      WHERE r.inputs IS NOT NULL AND c.key_hash = pyxp.key_hash(r.idempotency_key)
                                      LIMIT 1) c ON true
                  LEFT JOIN LATERAL pyxp.claimed_row(c.transaction_id, c.created_at) k ON true
                 ORDER BY r.ord) x;
    ELSE
        SELECT array_agg(x.claim_id), array_agg(x.after),
               array_agg(x.feed),
               min(x.ord) FILTER (WHERE x.conflict),
               min(x.ord) FILTER (WHERE abs(x.after) > pyxp.balance_limit()),
               count(*) FILTER (WHERE x.claim_id IS NULL AND x.transaction_type IS NOT NULL),
               array_agg(x.applied), array_agg(x.allowance),
               array_agg(x.period_start), array_agg(x.seq), bool_or(x.waited),
               array_agg(x.claimed_at)
          INTO v_claims, v_after, v_feed, v_conflict_ord, v_range_ord, v_expected, v_applied, v_allowance, v_period,
               v_seq, v_waited, v_claimed_at
          FROM (SELECT y.*, y.total_xp + sum(y.applied) FILTER (WHERE y.claim_id IS NULL)
                                             OVER (PARTITION BY y.user_wallet ORDER BY y.ord) AS after,
                       y.last_wallet_seq + count(*) FILTER (WHERE y.claim_id IS NULL AND y.transaction_type IS NOT NULL)
                                                  OVER (PARTITION BY y.user_wallet ORDER BY y.ord) AS seq
                  FROM (SELECT z.*, CASE WHEN z.allowance IS NULL THEN z.xp_amount
                                         ELSE least(z.asked, z.left_) - least(z.asked - z.xp_amount, z.left_) END AS applied
                          FROM (SELECT r.ord, r.user_wallet, r.transaction_type, r.xp_amount, k.id AS claim_id,
                                       k.created_at AS claimed_at,
                                       k.id IS NOT NULL AND (k.request_digest <> pyxp.inputs_digest(r.inputs)
                                                             OR k.idempotency_key <> r.idempotency_key) AS conflict,
                                       b.total_xp, b.last_wallet_seq,
                                       greatest(pyxp.ledger_xid(pg_current_xact_id()), b.last_feed_xid) AS feed,
                                       -- the version locked is not the snapshot's (evaluated above the lock)
                                       NOT p_batch AND b.ctid IS DISTINCT FROM
                                           (SELECT s.ctid FROM pyxp.xp_balances s
                                             WHERE s.user_wallet = r.user_wallet LIMIT 1) AS waited,
                                       a.allowance, a.period_start,
                                       sum(r.xp_amount) OVER (PARTITION BY r.user_wallet, a.allowance, a.period_start
                                                              ORDER BY r.ord) AS asked,
                                       greatest(a.cap_max_xp - coalesce(a.used_xp, 0), 0) AS left_
                                  FROM unnest(v_rows) WITH ORDINALITY r(call_index, user_wallet, idempotency_key, inputs,
                                                                        transaction_type, xp_amount, xp_requested,
                                                                        apply_floor, rule_id, campaign_id, subject,
                                                                        metadata, reverses, moderations, ord)
                                 CROSS JOIN LATERAL (SELECT b.total_xp, b.last_feed_xid, b.last_wallet_seq, b.ctid
                                                       FROM pyxp.xp_balances b
                                                      WHERE b.user_wallet = r.user_wallet LIMIT 1 FOR UPDATE) b
                                  LEFT JOIN LATERAL (SELECT c.transaction_id, c.created_at FROM pyxp.xp_award_claims c
                                                      WHERE r.inputs IS NOT NULL
                                                        AND c.key_hash = pyxp.key_hash(r.idempotency_key)
                                                      LIMIT 1) c ON true
                                  LEFT JOIN LATERAL pyxp.claimed_row(c.transaction_id, c.created_at) k ON true
                                  LEFT JOIN LATERAL (SELECT c.allowance, c.period_start, c.cap_max_xp,
                                                            (SELECT u.used_xp FROM pyxp.xp_cap_usage u
                                                              WHERE u.user_wallet = r.user_wallet
                                                                AND u.allowance = c.allowance
                                                                AND u.period_start = c.period_start LIMIT 1) AS used_xp
                                                       FROM (SELECT pyxp.cap_allowance(ru.cap_group, ru.action) AS allowance,
                                                                    date_trunc(ru.cap_per, v_now, p_timezone) AS period_start,
                                                                    ru.cap_max_xp
                                                               FROM pyxp.rules ru
                                                              WHERE p_caps AND ru.rule_id = r.rule_id
                                                                AND ru.cap_max_xp IS NOT NULL AND r.xp_amount > 0
                                                                AND r.reverses IS NULL AND k.id IS NULL
                                                              LIMIT 1) c) a ON true) z) y
                 ORDER BY y.ord) x;
    END IF;
    IF v_after IS NULL THEN  -- one wallet (step 1) without a balance row yet
        INSERT INTO pyxp.xp_balances (user_wallet, total_xp, current_level, xp_to_next_level)
        SELECT v_wallet, 0, c.level, c.next_level_xp::bigint FROM pyxp.curve_position(p_ruleset, 0) c
        ON CONFLICT (user_wallet) DO NOTHING;  -- inserted concurrently: locked in the next round
        CONTINUE planning;
    END IF;
    IF v_waited THEN  -- (caps) the lock waited: read the usage again, after the holder's commit
        CONTINUE planning;
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
    --    is now() (under caps, no earlier than the activation: v_now), or for
    --    a reversal (alone in its call) no earlier than its
    --    original's (a transaction may begin before the one it reverses):
    --    created_at names the partition, and an archive, which takes the
    --    oldest partitions, must never take a reversal and keep its original.
    IF v_rows[1].reverses IS NOT NULL THEN
        SELECT o.created_at INTO v_reversed_at FROM pyxp.xp_transactions o WHERE o.id = v_rows[1].reverses;
    END IF;
    -- (The triggers this statement fires run with pyxp.appending_rows on: a
    -- writing call among them is refused, above. A transaction-local setting:
    -- an error in between rolls it back with the (sub)transaction.)
    v_set := set_config('pyxp.appending_rows', 'on', true);
    WITH numbered AS MATERIALIZED (
        SELECT r.*, nextval('pyxp.xp_transactions_id_seq') AS id, greatest(v_now, v_reversed_at) AS created_at
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
    v_set := set_config('pyxp.appending_rows', 'off', true);
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
    v_at := coalesce(v_reversed_at, v_now);
    -- The rank counts' slot: this backend's pid, leased for the transaction
    -- by an advisory lock (never waited for: pg_try). The slot's rows must
    -- be written by no other transaction still in progress, and a prepared
    -- transaction keeps its locks on its slot's rows after its backend moved
    -- on (the next transaction of the same session behind a pooler, or a
    -- new session that got the pid): it holds its lease too, and this one
    -- takes pid + 2^22 (above any pid), and so on (0035, a hostile test:
    -- every award on that backend waited for the prepared transaction, with
    -- no deadlock reported). After 64 leases taken (an application holding
    -- these keys) the pid, as before 0035.
    v_slot := pg_backend_pid();
    FOR i IN 1 .. 64 LOOP
        EXIT WHEN pg_try_advisory_xact_lock(1887007857, v_slot);
        v_slot := v_slot + 4194304;
        IF i = 64 THEN
            v_slot := pg_backend_pid();
        END IF;
    END LOOP;
    v_day := date_trunc('day', v_at, p_timezone);
    v_week := date_trunc('week', v_at, p_timezone);
    v_month := date_trunc('month', v_at, p_timezone);
    v_year := date_trunc('year', v_at, p_timezone);
    -- The rank counts (sql/07_ranks.sql) follow in the same statement, and the
    -- caps' usage (CTE used, below):
    -- each balance whose total moved leaves the bucket of its old total
    -- and joins the bucket of its new one, and on each period's board
    -- leaves the bucket of its old (start, XP) for the bucket of its new
    -- one (xp_period_rank_counts: a probe of each); a balance this call
    -- created (ranked false) only joins. Counted in this transaction's slot
    -- (v_slot: no other transaction in progress writes it: no wait, and no
    -- order to keep against deadlocks); a move within one bucket, or a period XP that did
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
                   sum(r.xp_amount) FILTER (WHERE r.id IS NOT NULL) AS gained,  -- numeric: 2^63 in a batch (0035)
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
    SELECT u.period, u.period_start, u.period_xp, coalesce(q.wallet_start, ''), v_slot, sum(u.delta)
      FROM moved m
     CROSS JOIN LATERAL unnest('{day,week,month,year,day,week,month,year}'::text[], m.period_starts, m.period_xps,
                               '{-1,-1,-1,-1,1,1,1,1}'::integer[]) u(period, period_start, period_xp, delta)
      LEFT JOIN LATERAL pyxp.period_bucket_of(u.period, u.period_start, u.period_xp, m.user_wallet) q ON true
     WHERE u.period_start IS NOT NULL
     GROUP BY u.period, u.period_start, u.period_xp, coalesce(q.wallet_start, '')
    HAVING sum(u.delta) <> 0  -- a period whose XP did not change: -1 and +1 in one bucket
    ON CONFLICT (period, period_start, period_xp, wallet_start, slot)
       DO UPDATE SET wallets = k.wallets + excluded.wallets
    ), used AS (
    -- What the new capped gains used of their allowances (xp_cap_usage),
    -- under the same locks; nothing without caps (v_allowance NULL). In this
    -- statement, not one of its own: a statement costs its executor start-up
    -- on every award (0021: 3-4 % of a capped award's CPU).
    INSERT INTO pyxp.xp_cap_usage AS u (user_wallet, allowance, period_start, used_xp)
    SELECT r.user_wallet, r.allowance, r.period_start, sum(r.xp_amount)::bigint
      FROM ROWS FROM (unnest(v_rows), unnest(v_ids), unnest(v_allowance), unnest(v_period))
           r(call_index, user_wallet, idempotency_key, inputs, transaction_type, xp_amount, xp_requested,
             apply_floor, rule_id, campaign_id, subject, metadata, reverses, moderations, id, allowance,
             period_start)
     WHERE p_caps AND r.allowance IS NOT NULL AND r.id IS NOT NULL AND r.xp_amount > 0
     GROUP BY r.user_wallet, r.allowance, r.period_start
    ON CONFLICT (user_wallet, allowance, period_start) DO UPDATE SET used_xp = u.used_xp + excluded.used_xp
    )
    INSERT INTO pyxp.xp_rank_counts AS k (neg_xp, wallet, slot, wallets)
    SELECT d.neg_xp, d.wallet, v_slot, sum(d.delta)
      FROM moved m
     CROSS JOIN LATERAL (SELECT o.neg_xp, o.wallet, -1 AS delta
                           FROM pyxp.rank_bucket_of(m.old_xp, m.user_wallet) o WHERE m.was_ranked
                         UNION ALL
                         SELECT n.neg_xp, n.wallet, 1 FROM pyxp.rank_bucket_of(m.new_xp, m.user_wallet) n) d
     GROUP BY d.neg_xp, d.wallet
    HAVING sum(d.delta) <> 0
     ORDER BY d.neg_xp, d.wallet
    ON CONFLICT (neg_xp, wallet, slot) DO UPDATE SET wallets = k.wallets + excluded.wallets;

    -- 4b. What a reversal of a capped gain frees of its allowance, in its
    --     period and in those seeded with it (pyxp.freed_allowances), under
    --     the same locks.
    IF v_rows[1].reverses IS NOT NULL THEN  -- a reversal: alone in its call
        UPDATE pyxp.xp_cap_usage u SET used_xp = u.used_xp - f.freed_xp, seeded_xp = u.seeded_xp - f.freed_seed
          FROM pyxp.freed_allowances(v_rows[1].reverses) f
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
          FROM ROWS FROM (unnest(v_rows), unnest(v_claims), unnest(v_claimed_at), unnest(v_after), unnest(v_ids))
               WITH ORDINALITY
               r(call_index, user_wallet, idempotency_key, inputs, transaction_type, xp_amount, xp_requested,
                 apply_floor, rule_id, campaign_id, subject, metadata, reverses, moderations, claim, claimed_at,
                 after, id, ord)
          LEFT JOIN LATERAL pyxp.claimed_row(r.claim, r.claimed_at) t ON true  -- a replay's row
         CROSS JOIN LATERAL (SELECT CASE WHEN t.id IS NULL THEN p_ruleset
                                         ELSE pyxp.row_ruleset(t.rule_id, t.idempotency_key) END AS ruleset_id) s
         CROSS JOIN LATERAL pyxp.curve_position(s.ruleset_id, coalesce(t.balance_after, r.after::bigint)) now_
         CROSS JOIN LATERAL pyxp.curve_position(s.ruleset_id, coalesce(t.balance_after - t.xp_amount,
                                                                      (r.after - r.xp_amount)::bigint)) before_
         WHERE r.transaction_type IS NOT NULL
         ORDER BY r.ord;
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
-- Each call's queries planned for its cursor: from the sixth call of a
-- session PL/pgSQL would plan them generically, and with 15 partitions or
-- more that plan sorted every row after the cursor on each page (a temp
-- file the size of the rest of the ledger; 53400 under temp_file_limit: a
-- hostile test, 0035) instead of streaming the window until LIMIT.
SET plan_cache_mode = force_custom_plan
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
    -- (As the ledger counts transaction ids: pyxp.ledger_xid.)
    v_horizon xid8 := pyxp.ledger_xid(CASE WHEN pg_is_in_recovery() THEN pg_snapshot_xmin(v_snapshot) ELSE least(
        pyxp.oldest_running_here(v_snapshot), pg_current_xact_id_if_assigned(), pg_snapshot_xmax(v_snapshot)) END);
    v_group xid8;
    v_rank bigint;
    v_floor bigint := (SELECT max(a.feed_floor) FROM pyxp.xp_ledger_archives a);
    v_kept bigint;
BEGIN
    PERFORM pyxp.require_ledger_cluster();  -- (PX032: the groups of another cluster, 0032)
    IF v_after IS NULL OR v_after < 0 THEN
        RAISE EXCEPTION 'invalid after_cursor: %', coalesce(v_after::text, 'NULL')
            USING ERRCODE = 'PX023', HINT = 'after_cursor is 0 (from the start) or a cursor the feed returned';
    END IF;
    v_kept := pyxp.forked_cursor(v_after);
    IF v_kept IS NOT NULL THEN
        -- A cursor of a history this database left (0033, a hostile test of
        -- failovers): the rows it was read up to are not here, and the
        -- groups above the ledger's last row were handed out again, to rows
        -- it would skip. Refused on a standby too.
        RAISE EXCEPTION 'after_cursor % was handed out by a history this database left (a failover, a point-in-time recovery or a copy): the rows it was read up to are not in this ledger',
                        v_after
            USING ERRCODE = 'PX033',
                  DETAIL = format('every row this ledger kept from that history is at or below cursor %s', v_kept),
                  HINT = format('go on from cursor %s; what was read after it (rows, levels, totals) no longer happened: read the wallets'' balances again (README "Copies of the database")', v_kept);
    ELSIF (v_after >> 24)::text::xid8 >= pyxp.ledger_xid(pg_snapshot_xmax(v_snapshot)) AND NOT pg_is_in_recovery() THEN
        -- A group no transaction has reached: no cursor the feed returned
        -- (0028: one was accepted, and the rows below it skipped for good, a
        -- hostile test); or one from a cluster whose transaction ids ran
        -- higher (a dump restored elsewhere). A standby may lag: there, none
        -- is refused.
        RAISE EXCEPTION 'after_cursor % is ahead of the feed (its group % has no transaction yet)',
                        v_after, v_after >> 24
            USING ERRCODE = 'PX023',
                  HINT = 'pass a cursor this database''s feed returned (a copy not adopted yet: run pyxp db upgrade first; README "Copies of the database")';
    ELSIF v_after < v_floor AND (v_wallet IS NULL OR pyxp.wallet_feed_behind_archive(v_wallet, v_after, v_floor)) THEN
        -- Rows after this cursor were archived (sql/13_retention.sql): never
        -- skipped silently.
        RAISE EXCEPTION 'rows after cursor % were archived', v_after
            USING ERRCODE = 'PX029',
                  DETAIL = format('the archived rows reach cursor %s', v_floor),
                  HINT = 'a consumer must be past the rows archived; they are in schema pyxp_archive (or its dump)';
    END IF;
    v_group := (v_after >> 24)::text::xid8;
    v_rank := v_after & 16777215;
    RETURN QUERY
        WITH page AS (
            -- Each branch names its columns: with t.* in some, a column an
            -- application added to the ledger failed every read of the feed
            -- (42601, each UNION query must have the same number of
            -- columns; a hostile test, 0034).
            -- Rows from before 0003: cursor = id.
            (SELECT t.id AS cur, t.id, t.user_wallet, t.transaction_type, t.xp_amount, t.balance_after, t.rule_id,
                    t.campaign_id, t.subject, t.idempotency_key, t.created_at
               FROM pyxp.xp_transactions t
              WHERE t.feed_xid IS NULL AND t.id > v_after
                AND (v_wallet IS NULL OR t.user_wallet = v_wallet)
              ORDER BY t.id
              LIMIT v_max)
            UNION ALL
            -- Whole feed: final groups from the cursor's on, ranked as scanned
            -- (index xp_transactions_feed; the window streams, LIMIT stops it).
            (SELECT (g.feed_xid::text::bigint << 24)
                    + CASE WHEN g.rank > 16777215 THEN pyxp.raised_feed_overflow(g.feed_xid) ELSE g.rank END,
                    g.id, g.user_wallet, g.transaction_type, g.xp_amount, g.balance_after, g.rule_id,
                    g.campaign_id, g.subject, g.idempotency_key, g.created_at
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
            (SELECT (t.feed_xid::text::bigint << 24)
                    + CASE WHEN r.rank > 16777215 THEN pyxp.raised_feed_overflow(t.feed_xid) ELSE r.rank END,
                    t.id, t.user_wallet, t.transaction_type, t.xp_amount, t.balance_after, t.rule_id,
                    t.campaign_id, t.subject, t.idempotency_key, t.created_at
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
    -- Read with a snapshot older than an archive's commit: those rows were
    -- missing, and the floor above unseen (40001).
    PERFORM pyxp.ledger_unmoved();
END
$$;

-- The chain checks, one walk of each audited wallet's rows in wallet_seq
-- order from its starting position (its checkpoint's row, the anchor,
-- included):
--   running_balance      balance_after <> previous balance_after + xp_amount
--   wallet_seq_gap       a row's wallet_seq is not the previous one's + 1
--                        (the first row's previous is 0: rows are 1, 2, ...)
--   checkpoint_mismatch  the checkpoint's row is missing (and not
--                        archived: at or before the opening's position), or
--                        its balance_after is not the checkpoint's balance
--   balance_mismatch     xp_balances.total_xp <> the checkpoint's balance
--                        + the rows since (the full audit: the ledger sum,
--                        or the opening's balance + the rows after it)
--   opening_mismatch     the rows at positions 1 .. the opening's are not its
--                        archived rows + the ledger's rows there (a row
--                        added, or an archived one back, before the opening)
--   wallet_seq_mismatch  xp_balances.last_wallet_seq <> the last row's
--   level_mismatch       the level is not the active curve's for the total
--   period_mismatch      (full audit only: a period's rows may predate the
--                        checkpoint) the balance's latest periods and their
--                        XP (sql/07_periods.sql) are not the ledger's (its
--                        rows after the opening, and the opening's latest
--                        periods)
-- Per-row findings are gathered per wallet (jsonb, NULL when healthy).
--
-- One slice of the audited wallets: those in [p_from, p_to) (NULL:
-- unbounded); pyxp.chain_problems runs the slices. A slice reads its wallets
-- once (materialized), then one window and one aggregate per wallet over
-- its rows. The full audit streams a slice: the index of the rows in
-- (user_wallet, wallet_seq) order merged with the wallets, so no sort (a
-- probe of the index per wallet instead: 19.8 s against 9.0 s for the
-- slices at 10M rows). Since a checkpoint: one index probe per wallet, for
-- its rows from its checkpoint's position.
-- PL/pgSQL, planned for each call (force_custom_plan): the mode and the
-- bounds are constants in the plan, so one branch is planned and the bounds
-- are index ranges; and, not inlined, a call is what the caller's plan can
-- hand to a parallel worker (COST: a slice is worth a worker).
-- No nested loop joins (enable_nestloop off; the since-checkpoint walk's
-- LATERAL is one anyway): the planner has no statistics on the per-wallet
-- aggregate (it guesses 200 rows), and without statistics on the ledger's
-- partitioned parent, which autovacuum never analyzes, a slice of more than
-- about 135,000 wallets joined them to it by a nested loop, every wallet
-- against every aggregate row: audit() ran for more than 10 minutes on
-- 200,000 wallets (a hostile test, 0035; 2.8 s with this setting, and the
-- same time as before once the parent is analyzed).
CREATE OR REPLACE FUNCTION pyxp.chain_problems_between(p_since_checkpoint boolean, p_from text, p_to text)
RETURNS TABLE (check_name text, user_wallet text, wallet_seq bigint, detail text)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET plan_cache_mode = force_custom_plan
SET enable_nestloop = off
COST 1000000 ROWS 10
AS $fn$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH wallets AS MATERIALIZED (
        SELECT g.* FROM pyxp.audited_wallets(true) g
         WHERE p_since_checkpoint
           AND (p_from IS NULL OR g.user_wallet >= p_from) AND (p_to IS NULL OR g.user_wallet < p_to)
        UNION ALL
        SELECT g.* FROM pyxp.wallets_between(p_from, p_to) g
         WHERE NOT p_since_checkpoint
    ), walked AS (
        -- The full audit: every row of the slice, the index in (user_wallet,
        -- wallet_seq) order merged with the wallets, one window and one
        -- aggregate per wallet, no sort. It walks from position 1: the rows
        -- at or before the opening (stragglers: sql/01_schema.sql) are
        -- counted, not chained; they are in the opening's sums.
        SELECT r.user_wallet, max(r.seq) AS max_seq,
               sum(r.xp_amount) FILTER (WHERE r.seq > r.from_seq) AS xp_since,
               bool_or(r.seq = r.cp_seq) AS cp_seen,
               count(*) FILTER (WHERE r.seq <= r.op_seq) AS op_kept,
               max(r.at) FILTER (WHERE r.seq > r.from_seq) AS latest_at,
               sum(r.xp_amount) FILTER (WHERE r.seq > r.from_seq AND r.at >= r.day_start) AS day_xp,
               sum(r.xp_amount) FILTER (WHERE r.seq > r.from_seq AND r.at >= r.week_start) AS week_xp,
               sum(r.xp_amount) FILTER (WHERE r.seq > r.from_seq AND r.at >= r.month_start) AS month_xp,
               sum(r.xp_amount) FILTER (WHERE r.seq > r.from_seq AND r.at >= r.year_start) AS year_xp,
               jsonb_agg(jsonb_build_object('seq', r.seq, 'after', r.balance_after, 'amount', r.xp_amount,
                                            'previous', r.previous, 'previous_seq', r.previous_seq,
                                            'running', r.running, 'gap', r.gap, 'checkpoint', r.checkpoint))
                   FILTER (WHERE r.running OR r.gap OR r.checkpoint) AS bad_rows
          FROM (SELECT y.*,
                       y.seq > y.from_seq AND y.balance_after <> y.previous + y.xp_amount AS running,
                       y.seq > y.from_seq AND y.seq <> y.previous_seq + 1 AS gap,
                       y.seq = y.cp_seq AND y.balance_after <> y.cp_xp AS checkpoint
                  FROM (SELECT x.user_wallet, x.wallet_seq AS seq, x.balance_after, x.xp_amount,
                               CASE WHEN x.reverses IS NULL THEN x.created_at  -- a reversal counts in its original's period
                                    ELSE pyxp.reversed_row_at(x.reverses)
                               END AS at,
                               h.from_seq, h.cp_seq, h.cp_xp, h.op_seq,
                               h.day_start, h.week_start, h.month_start, h.year_start,
                               -- the previous row walked, unless it is at or before
                               -- the starting position: then that position's balance
                               CASE WHEN lag(x.wallet_seq) OVER w > h.from_seq
                                    THEN lag(x.balance_after) OVER w ELSE h.from_xp END AS previous,
                               CASE WHEN lag(x.wallet_seq) OVER w > h.from_seq
                                    THEN lag(x.wallet_seq) OVER w ELSE h.from_seq END AS previous_seq
                          FROM pyxp.xp_transactions x
                          JOIN wallets h ON h.user_wallet = x.user_wallet
                         WHERE NOT p_since_checkpoint
                           AND (p_from IS NULL OR x.user_wallet >= p_from) AND (p_to IS NULL OR x.user_wallet < p_to)
                        WINDOW w AS (PARTITION BY x.user_wallet ORDER BY x.wallet_seq)) y) r
         GROUP BY r.user_wallet
    ), per_wallet AS (
        -- Since a checkpoint: one wallet at a time (a nested loop over the
        -- wallets: the planner has no estimate of how many rows the feed
        -- holds since, and joined to a set it took for one row, the walk of
        -- every wallet was run again per wallet: 2.5 min for 240,000 rows),
        -- its rows from its checkpoint's position, the window and the
        -- aggregate over them.
        SELECT g.*, w.*
          FROM wallets g
         CROSS JOIN LATERAL (
                SELECT coalesce(greatest(max(r.seq), g.op_seq), 0) AS ledger_seq,
                       g.from_xp + coalesce(sum(r.xp_amount) FILTER (WHERE r.seq > g.from_seq), 0) AS ledger_xp,
                       -- (a checkpoint at or before the opening: its row was archived;
                       -- no opening: it names a row the ledger must hold. 0029: a
                       -- NULL here left a checkpoint naming no row unreported.)
                       coalesce(bool_or(r.seq = g.cp_seq), false) OR coalesce(g.cp_seq <= g.op_seq, false) AS cp_found,
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
                                   AND x.wallet_seq >= g.from_seq
                                WINDOW w AS (ORDER BY x.wallet_seq)) y) r
             ) w
         WHERE p_since_checkpoint
        UNION ALL
        SELECT g.*,
               coalesce(greatest(a.max_seq, g.op_seq), 0) AS ledger_seq,
               g.from_xp + coalesce(a.xp_since, 0) AS ledger_xp,
               -- (a checkpoint at or before the opening: its row was archived)
               coalesce(a.cp_seen, false) OR coalesce(g.cp_seq <= g.op_seq, false) AS cp_found,
               coalesce(a.op_kept, 0) AS op_kept,
               greatest(a.latest_at, g.op_last_at) AS latest_at,
               pyxp.sum_with_opening(a.day_xp, g.op_day_start = g.day_start, g.op_day_xp) AS ledger_day_xp,
               pyxp.sum_with_opening(a.week_xp, g.op_week_start = g.week_start, g.op_week_xp) AS ledger_week_xp,
               pyxp.sum_with_opening(a.month_xp, g.op_month_start = g.month_start, g.op_month_xp) AS ledger_month_xp,
               pyxp.sum_with_opening(a.year_xp, g.op_year_start = g.year_start, g.op_year_xp) AS ledger_year_xp,
               a.bad_rows
          FROM wallets g
          LEFT JOIN walked a ON a.user_wallet = g.user_wallet
         WHERE NOT p_since_checkpoint
    ), checked AS (
        SELECT p.*, c.level, c.next_level_xp, z.tz,
               p.total_xp IS DISTINCT FROM p.ledger_xp AS bad_balance,
               p.last_wallet_seq IS DISTINCT FROM p.ledger_seq AS bad_seq,
               p.total_xp IS NOT NULL
                   AND (p.current_level <> c.level OR p.xp_to_next_level <> c.next_level_xp - p.total_xp) AS bad_level,
               p.cp_seq IS NOT NULL AND NOT p.cp_found AS bad_checkpoint,
               -- a checkpoint at the opening's position (its row archived)
               -- holds the opening's balance (0026: an opening and a
               -- balance raised together, with no row since, were not seen)
               p.cp_seq = p.op_seq AND p.cp_xp IS DISTINCT FROM p.op_xp AS bad_opening_checkpoint,
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
            SELECT 'checkpoint_mismatch', NULL,
                   format('checkpoint at wallet_seq %s (%s XP): the opening there holds %s XP', c.cp_seq, c.cp_xp,
                          c.op_xp)
             WHERE c.bad_opening_checkpoint
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
        OR c.bad_periods OR c.bad_opening OR c.bad_opening_checkpoint;
END
$fn$;

RESET ROLE;
