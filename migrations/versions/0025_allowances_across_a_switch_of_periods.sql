-- 0025: an allowance whose periods move (a ruleset in another timezone, or
-- with another cap per) starts its current period from what that period
-- already used (found by a hostile test, 2026-11-27).
-- Frozen copy of what sql/*.sql defines at this revision; never edit it.
--
-- xp_cap_usage keeps each period's usage under the period's start in the
-- zone it was counted in. Switched to another zone, an allowance's day there
-- overlaps the old zone's, and it started from nothing: a wallet that used
-- 250 of a 250-per-day allowance under UTC got 250 more under
-- America/New_York the same afternoon, and audit() said nothing (each row
-- agreed with its own period's rows). Now:
--   * xp_cap_usage.seeded_xp (with seeded_per, seeded_zone, seeded_at): the
--     part of a period's usage that gains counted in other periods used; an
--     activation counts it (pyxp.seed_cap_usage, for the allowances whose
--     period the previous active ruleset did not have), and this migration
--     counts it for the active ruleset's current periods;
--   * a reversal frees its gain there too (pyxp.freed_allowances replaces
--     pyxp.freed_allowance);
--   * audit() checks the seeds, and that no capped gain applied more than
--     was left in the period that governed it, whatever period the gains
--     before it were counted in (pyxp.exceeded_allowances; before, a
--     period's total against the largest cap of its own rows).
-- Reviewed by a second hostile test before landing:
--   * an allowance holds the gains counted under its name and those of its
--     actions (pyxp.capped_allowances, pyxp.moved_allowances; seeded_by names
--     the ruleset whose actions a seed counted): a rule put into a group, or
--     a group renamed, the same day brings what it used;
--   * under caps a row is dated no earlier than its ruleset's activation
--     (rulesets.activated_at, now the clock after the switch's lock): an
--     award begun before the switch counted in the new zone's previous day,
--     which nothing had counted.

SET LOCAL ROLE pyxp_owner;

ALTER TABLE pyxp.xp_cap_usage
    ADD COLUMN seeded_xp bigint NOT NULL DEFAULT 0,
    ADD COLUMN seeded_per text,
    ADD COLUMN seeded_zone text,
    ADD COLUMN seeded_by bigint,
    ADD COLUMN seeded_at timestamptz,
    ADD CONSTRAINT xp_cap_usage_seed_check CHECK (
        seeded_xp BETWEEN 0 AND used_xp
        AND (seeded_per IS NULL) = (seeded_at IS NULL) AND (seeded_zone IS NULL) = (seeded_at IS NULL)
        AND (seeded_by IS NULL) = (seeded_at IS NULL) AND (seeded_at IS NOT NULL OR seeded_xp = 0));
CREATE INDEX xp_cap_usage_seeded ON pyxp.xp_cap_usage (user_wallet, allowance) WHERE seeded_at IS NOT NULL;

DROP FUNCTION pyxp.freed_allowance(bigint);

CREATE FUNCTION pyxp.capped_allowances()
RETURNS TABLE (ruleset_id bigint, allowance text, per text, zone text, actions text[])
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT ru.ruleset_id, pyxp.cap_allowance(ru.cap_group, ru.action), min(ru.cap_per), min(rs.timezone),
           array_agg(ru.action ORDER BY ru.action)
      FROM pyxp.rules ru JOIN pyxp.rulesets rs ON rs.ruleset_id = ru.ruleset_id
     WHERE ru.cap_max_xp IS NOT NULL
     GROUP BY ru.ruleset_id, pyxp.cap_allowance(ru.cap_group, ru.action)
$$;

COMMENT ON FUNCTION pyxp.capped_allowances() IS
    'internal: every capped allowance of every ruleset version: its period, zone and actions.';

REVOKE ALL ON FUNCTION pyxp.capped_allowances() FROM PUBLIC;

CREATE FUNCTION pyxp.capped_gains(p_partitions oid[], p_since timestamptz)
RETURNS TABLE (user_wallet text, allowance text, action text, actions text[], at timestamptz, per text,
               zone text, cap_max_xp bigint, seq bigint, xp_amount bigint, is_gain boolean)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT g.user_wallet, a.allowance, ru.action, a.actions, g.at, ru.cap_per, rs.timezone,
           ru.cap_max_xp, g.seq, g.xp_amount, g.is_gain
      FROM (SELECT t.user_wallet, t.rule_id, t.created_at AS at, t.wallet_seq AS seq, t.xp_amount, true AS is_gain
              FROM pyxp.xp_transactions t
             WHERE t.reverses IS NULL AND t.xp_amount > 0
               AND t.rule_id IN (SELECT c.rule_id FROM pyxp.rules c WHERE c.cap_max_xp IS NOT NULL)
               AND (p_partitions IS NULL OR t.tableoid = ANY (p_partitions))
               AND (p_since IS NULL OR t.created_at >= p_since)
            UNION ALL
            SELECT t.user_wallet, o.rule_id, o.created_at, t.wallet_seq, t.xp_amount, false
              FROM pyxp.xp_transactions t
             CROSS JOIN LATERAL (SELECT o.rule_id, o.created_at, o.xp_amount FROM pyxp.xp_transactions o
                                  WHERE o.id = t.reverses
                                 UNION ALL
                                 SELECT a.rule_id, a.created_at, a.xp_amount FROM pyxp.xp_archived_originals a
                                  WHERE a.transaction_id = t.reverses
                                 LIMIT 1) o
             WHERE t.reverses IS NOT NULL AND o.xp_amount > 0
               AND (p_partitions IS NULL OR t.tableoid = ANY (p_partitions))
               AND (p_since IS NULL OR (t.created_at >= p_since AND o.created_at >= p_since))) g
      JOIN pyxp.rules ru ON ru.rule_id = g.rule_id
      JOIN pyxp.rulesets rs ON rs.ruleset_id = ru.ruleset_id
      JOIN pyxp.capped_allowances() a
        ON a.ruleset_id = ru.ruleset_id AND a.allowance = pyxp.cap_allowance(ru.cap_group, ru.action)
     WHERE ru.cap_max_xp IS NOT NULL
$$;

COMMENT ON FUNCTION pyxp.capped_gains(oid[], timestamptz) IS
    'internal: the capped gains of the ledger and the reversals of them, as they count in allowances.';

REVOKE ALL ON FUNCTION pyxp.capped_gains(oid[], timestamptz) FROM PUBLIC;

CREATE FUNCTION pyxp.moved_allowances(p_ruleset bigint, p_previous bigint, p_at timestamptz)
RETURNS TABLE (allowance text, per text, zone text, actions text[], start timestamptz, first timestamptz)
LANGUAGE sql STABLE
AS $$
    SELECT k.allowance, k.per, k.zone, k.actions, date_trunc(k.per, p_at, k.zone),
           pyxp.period_first_instant(k.per, p_at, k.zone)
      FROM (SELECT a.allowance, a.per, a.zone, a.actions FROM pyxp.capped_allowances() a WHERE a.ruleset_id = p_ruleset
            EXCEPT
            SELECT a.allowance, a.per, a.zone, a.actions FROM pyxp.capped_allowances() a WHERE a.ruleset_id = p_previous) k
$$;

COMMENT ON FUNCTION pyxp.moved_allowances(bigint, bigint, timestamptz) IS
    'internal: the capped allowances an activation moves (another period, zone or actions), with their period then.';

REVOKE ALL ON FUNCTION pyxp.moved_allowances(bigint, bigint, timestamptz) FROM PUBLIC;

CREATE FUNCTION pyxp.freed_allowances(p_reverses bigint)
RETURNS TABLE (allowance text, period_start timestamptz, freed_xp bigint, freed_seed bigint)
LANGUAGE sql STABLE
AS $$
    SELECT f.allowance, f.period_start, o.xp_amount, f.freed_seed
      FROM pyxp.xp_transactions o
      JOIN pyxp.rules ru ON ru.rule_id = o.rule_id
      JOIN pyxp.rulesets rs ON rs.ruleset_id = ru.ruleset_id
     CROSS JOIN LATERAL (SELECT pyxp.cap_allowance(ru.cap_group, ru.action) AS allowance,
                                date_trunc(ru.cap_per, o.created_at, rs.timezone) AS own_start) a
     CROSS JOIN LATERAL (SELECT a.allowance, a.own_start AS period_start, 0::bigint AS freed_seed
                         UNION ALL
                         SELECT u.allowance, u.period_start, o.xp_amount FROM pyxp.xp_cap_usage u
                           LEFT JOIN pyxp.capped_allowances() s ON s.ruleset_id = u.seeded_by AND s.allowance = u.allowance
                          WHERE u.user_wallet = o.user_wallet AND u.seeded_at IS NOT NULL AND o.created_at < u.seeded_at
                            AND u.period_start = date_trunc(u.seeded_per, o.created_at, u.seeded_zone)
                            AND (u.allowance = a.allowance OR ru.action = ANY (s.actions))
                            AND NOT (u.allowance = a.allowance AND u.period_start = a.own_start)) f
     WHERE o.id = p_reverses AND ru.cap_max_xp IS NOT NULL AND o.xp_amount > 0
$$;

COMMENT ON FUNCTION pyxp.freed_allowances(bigint) IS
    'internal: what a reversal frees of capped allowances: in the period of the gain it reverses, and in the periods seeded with it.';

REVOKE ALL ON FUNCTION pyxp.freed_allowances(bigint) FROM PUBLIC;

CREATE FUNCTION pyxp.seed_cap_usage(p_ruleset bigint, p_previous bigint, p_at timestamptz)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_horizon timestamptz := pyxp.archive_horizon();
    v_blocked record;
BEGIN
    IF NOT EXISTS (SELECT FROM pyxp.moved_allowances(p_ruleset, p_previous, p_at)) THEN
        RETURN;
    END IF;
    -- An archived period of the allowance (or of one of its actions) may
    -- overlap it: one that starts less than the longest period the other
    -- rulesets gave them (and a day) before it.
    SELECT k.allowance, k.per, k.first INTO v_blocked
      FROM pyxp.moved_allowances(p_ruleset, p_previous, p_at) k
     WHERE k.first < v_horizon
       AND EXISTS (SELECT FROM pyxp.capped_allowances() o
                     JOIN pyxp.xp_archived_cap_usage a ON a.allowance = o.allowance
                    WHERE o.ruleset_id <> p_ruleset AND (o.allowance = k.allowance OR o.actions && k.actions)
                      AND a.period_start > k.first - (('1 ' || o.per)::interval + interval '1 day'))
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'the % from % of allowance % holds gains written before %, and they were archived',
                        v_blocked.per, v_blocked.first, v_blocked.allowance, v_horizon
            USING ERRCODE = 'PX029',
                  HINT = 'activate a ruleset that changes this allowance''s period once its current one begins after the archive horizon';
    END IF;
    -- Seeds left by an earlier switch to these periods: counted anew below.
    UPDATE pyxp.xp_cap_usage u
       SET used_xp = u.used_xp - u.seeded_xp, seeded_xp = 0, seeded_per = NULL, seeded_zone = NULL,
           seeded_by = NULL, seeded_at = NULL
      FROM pyxp.moved_allowances(p_ruleset, p_previous, p_at) k
     WHERE u.seeded_at IS NOT NULL AND u.allowance = k.allowance AND u.period_start = k.start;
    -- The gains in the period that count in it, the allowance's own rows
    -- (counted under its name there) aside.
    INSERT INTO pyxp.xp_cap_usage AS u (user_wallet, allowance, period_start, used_xp, seeded_xp, seeded_per,
                                        seeded_zone, seeded_by, seeded_at)
    SELECT g.user_wallet, k.allowance, k.start, sum(g.xp_amount), sum(g.xp_amount), k.per, k.zone, p_ruleset, p_at
      FROM pyxp.moved_allowances(p_ruleset, p_previous, p_at) k
      JOIN pyxp.capped_gains(NULL, (SELECT min(m.first) FROM pyxp.moved_allowances(p_ruleset, p_previous, p_at) m)) g
        ON (g.allowance = k.allowance OR g.action = ANY (k.actions))
       AND date_trunc(k.per, g.at, k.zone) = k.start
       AND NOT (g.allowance = k.allowance AND date_trunc(g.per, g.at, g.zone) = k.start)
     GROUP BY g.user_wallet, k.allowance, k.start, k.per, k.zone
    HAVING sum(g.xp_amount) > 0
    ON CONFLICT (user_wallet, allowance, period_start) DO UPDATE
       SET used_xp = u.used_xp + excluded.seeded_xp, seeded_xp = excluded.seeded_xp,
           seeded_per = excluded.seeded_per, seeded_zone = excluded.seeded_zone, seeded_by = excluded.seeded_by,
           seeded_at = excluded.seeded_at;
END
$$;

COMMENT ON FUNCTION pyxp.seed_cap_usage(bigint, bigint, timestamptz) IS
    'internal: at an activation, the current period of each allowance moved to another zone or per counts what its gains there used.';

REVOKE ALL ON FUNCTION pyxp.seed_cap_usage(bigint, bigint, timestamptz) FROM PUBLIC;

CREATE FUNCTION pyxp.ledger_cap_seeds()
RETURNS TABLE (user_wallet text, allowance text, period_start timestamptz, seeded_xp bigint, ledger_xp bigint)
LANGUAGE sql STABLE
AS $$
    SELECT u.user_wallet, u.allowance, u.period_start, u.seeded_xp,
           CASE WHEN pyxp.period_first_instant(u.seeded_per, u.period_start, u.seeded_zone)
                     >= coalesce(pyxp.archive_horizon(), '-infinity')
                THEN coalesce(sum(g.xp_amount) FILTER (WHERE g.at < u.seeded_at
                                                      AND date_trunc(u.seeded_per, g.at, u.seeded_zone) = u.period_start
                                                      AND NOT (g.allowance = u.allowance
                                                               AND date_trunc(g.per, g.at, g.zone) = u.period_start)),
                              0)::bigint
           END
      FROM pyxp.xp_cap_usage u
      LEFT JOIN pyxp.capped_allowances() a ON a.ruleset_id = u.seeded_by AND a.allowance = u.allowance
      LEFT JOIN pyxp.capped_gains(NULL, NULL) g
        ON g.user_wallet = u.user_wallet AND (g.allowance = u.allowance OR g.action = ANY (a.actions))
     WHERE u.seeded_at IS NOT NULL
     GROUP BY u.user_wallet, u.allowance, u.period_start, u.seeded_xp, u.seeded_per, u.seeded_zone, u.seeded_at
$$;

COMMENT ON FUNCTION pyxp.ledger_cap_seeds() IS
    'internal: for each seeded usage row, what its seed must be, from the ledger.';

REVOKE ALL ON FUNCTION pyxp.ledger_cap_seeds() FROM PUBLIC;

CREATE FUNCTION pyxp.exceeded_allowances()
RETURNS TABLE (user_wallet text, allowance text, period_start timestamptz, per text, zone text,
               used_xp bigint, cap_max_xp bigint)
LANGUAGE sql STABLE
AS $$
    WITH gains AS (SELECT * FROM pyxp.capped_gains(NULL, NULL)),
    keys AS (SELECT DISTINCT a.allowance, a.per, a.zone, a.actions FROM pyxp.capped_allowances() a),
    counted AS (
        SELECT g.user_wallet, k.allowance, k.per, k.zone, k.actions, p.start, g.seq,
               g.is_gain AND g.xp_amount > 0
                   AND (g.allowance, g.per, g.zone, g.actions) = (k.allowance, k.per, k.zone, k.actions) AS governed,
               g.cap_max_xp, g.xp_amount
          FROM gains g
          JOIN keys k ON k.allowance = g.allowance OR g.action = ANY (k.actions)
         CROSS JOIN LATERAL (SELECT date_trunc(k.per, g.at, k.zone) AS start) p
    ), running AS (
        SELECT c.*, sum(c.xp_amount) OVER (PARTITION BY c.user_wallet, c.allowance, c.per, c.zone, c.actions, c.start
                                           ORDER BY c.seq ROWS UNBOUNDED PRECEDING)
                    + coalesce((SELECT a.used_xp FROM pyxp.xp_archived_cap_usage a
                                 WHERE a.user_wallet = c.user_wallet AND a.allowance = c.allowance
                                   AND a.period_start = c.start), 0) AS used_xp
          FROM counted c
    )
    SELECT r.user_wallet, r.allowance, r.start, r.per, r.zone, max(r.used_xp)::bigint, max(r.cap_max_xp)
      FROM running r
     WHERE r.governed AND r.used_xp > r.cap_max_xp
     GROUP BY r.user_wallet, r.allowance, r.start, r.per, r.zone
$$;

COMMENT ON FUNCTION pyxp.exceeded_allowances() IS
    'internal: the periods where a capped gain applied more than was left of its allowance.';

REVOKE ALL ON FUNCTION pyxp.exceeded_allowances() FROM PUBLIC;

CREATE OR REPLACE FUNCTION pyxp.rows_cap_usage(p_partitions oid[])
RETURNS TABLE (user_wallet text, allowance text, period_start timestamptz, used_xp bigint, cap_max_xp bigint)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT g.user_wallet, g.allowance, date_trunc(g.per, g.at, g.zone), sum(g.xp_amount)::bigint, max(g.cap_max_xp)
      FROM pyxp.capped_gains(p_partitions, NULL) g
     GROUP BY 1, 2, 3
$$;

CREATE OR REPLACE FUNCTION pyxp.activate_ruleset(p_ruleset_id bigint)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    v_zone text := (SELECT r.timezone FROM pyxp.rulesets r WHERE r.ruleset_id = p_ruleset_id);
    v_previous bigint := (SELECT r.ruleset_id FROM pyxp.rulesets r WHERE r.is_active);
    -- The instant of the switch: after the caller's lock (the transaction may
    -- have waited for it since its start). A capped award writes no row
    -- dated before it (pyxp.append_rows), and the seed counts the periods
    -- containing it.
    v_at timestamptz := clock_timestamp();
BEGIN
    IF (SELECT r.is_active FROM pyxp.rulesets r WHERE r.ruleset_id = p_ruleset_id) THEN
        RETURN 0;
    END IF;
    IF (SELECT r.timezone FROM pyxp.rulesets r WHERE r.is_active) IS DISTINCT FROM v_zone THEN
        -- (the archived rows' periods are kept in the archive's zone only: PX029)
        PERFORM pyxp.require_whole_ledger(format('activating a ruleset in timezone %s', v_zone));
        PERFORM pyxp.rebuild_period_columns(v_zone);
    END IF;
    -- An allowance whose periods move (another zone, another per) starts
    -- its current period from what that period already used.
    IF (SELECT r.has_caps FROM pyxp.rulesets r WHERE r.ruleset_id = p_ruleset_id) THEN
        PERFORM pyxp.seed_cap_usage(p_ruleset_id, v_previous, v_at);
    END IF;
    -- Two statements: the partial unique index allows one active row at a time.
    UPDATE pyxp.rulesets r SET is_active = false WHERE r.is_active;
    UPDATE pyxp.rulesets r SET is_active = true, activated_at = v_at WHERE r.ruleset_id = p_ruleset_id;
    RETURN pyxp.recalculate_levels();
END
$$;

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
    v_problem record;
BEGIN
    IF coalesce(cardinality(v_rows), 0) = 0 THEN
        RETURN;
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
         ORDER BY w.user_wallet
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
    IF NOT p_caps THEN
        SELECT array_agg(x.claim_id ORDER BY x.ord), array_agg(x.after ORDER BY x.ord),
               array_agg(x.feed ORDER BY x.ord),
               (array_agg(x.ord ORDER BY x.ord) FILTER (WHERE x.conflict))[1],
               (array_agg(x.ord ORDER BY x.ord) FILTER (WHERE abs(x.after) > pyxp.balance_limit()))[1],
               count(*) FILTER (WHERE x.claim_id IS NULL AND x.transaction_type IS NOT NULL),
               array_agg(x.seq ORDER BY x.ord), array_agg(x.claimed_at ORDER BY x.ord)
          INTO v_claims, v_after, v_feed, v_conflict_ord, v_range_ord, v_expected, v_seq, v_claimed_at
          FROM (SELECT r.ord, r.transaction_type, k.id AS claim_id, k.created_at AS claimed_at,
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
                                      WHERE b.user_wallet = r.user_wallet LIMIT 1 FOR UPDATE) b
                  LEFT JOIN LATERAL (SELECT c.transaction_id, c.created_at FROM pyxp.xp_award_claims c
                                      WHERE r.inputs IS NOT NULL AND c.key_hash = pyxp.key_hash(r.idempotency_key)
                                      LIMIT 1) c ON true
                  LEFT JOIN LATERAL pyxp.claimed_row(c.transaction_id, c.created_at) k ON true) x;
    ELSE
        SELECT array_agg(x.claim_id ORDER BY x.ord), array_agg(x.after ORDER BY x.ord),
               array_agg(x.feed ORDER BY x.ord),
               (array_agg(x.ord ORDER BY x.ord) FILTER (WHERE x.conflict))[1],
               (array_agg(x.ord ORDER BY x.ord) FILTER (WHERE abs(x.after) > pyxp.balance_limit()))[1],
               count(*) FILTER (WHERE x.claim_id IS NULL AND x.transaction_type IS NOT NULL),
               array_agg(x.applied ORDER BY x.ord), array_agg(x.allowance ORDER BY x.ord),
               array_agg(x.period_start ORDER BY x.ord), array_agg(x.seq ORDER BY x.ord), bool_or(x.waited),
               array_agg(x.claimed_at ORDER BY x.ord)
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
                                       greatest(pg_current_xact_id(), b.last_feed_xid) AS feed,
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
                                                              LIMIT 1) c) a ON true) z) y) x;
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

CREATE OR REPLACE FUNCTION pyxp.unsliced_problems(p_since_checkpoint boolean, p_part integer)
RETURNS TABLE (check_name text, user_wallet text, transaction_id bigint, detail text)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET plan_cache_mode = force_custom_plan
COST 4000000 ROWS 10
AS $fn$
BEGIN
    IF p_since_checkpoint THEN
        IF p_part = 1 THEN
            RETURN QUERY SELECT * FROM pyxp.row_problems(true);
        END IF;
        RETURN;
    END IF;
    IF p_part = 1 THEN
        RETURN QUERY SELECT * FROM pyxp.rank_problems();
        RETURN;
    END IF;
    RETURN QUERY
    SELECT 'checkpoint_mismatch', c.user_wallet, NULL::bigint,
           format('checkpoint at wallet_seq %s (%s XP) of a wallet without a balance', c.wallet_seq, c.total_xp)
      FROM pyxp.xp_wallet_checkpoints c
     WHERE NOT EXISTS (SELECT FROM pyxp.xp_balances b WHERE b.user_wallet = c.user_wallet)
    UNION ALL
    -- Identities stored before 0002 that today's checks would read otherwise
    -- (NFKC, Unicode whitespace, invisible characters): one person may be two
    -- wallets here; a DBA decides what to merge. A wallet already in the
    -- canonical 0x form (0x and 40 lower-case hex digits: ASCII, no space,
    -- nothing to fold) reads the same: only the others go through the
    -- PL/pgSQL checks (4.8 s of the audit at 1M balances, 1.7 s now).
    SELECT 'identity_not_normalised', b.user_wallet, NULL,
           CASE WHEN pyxp.invisible_character(f.form) IS NOT NULL
                THEN format('wallet %s holds %s, refused since 0002', quote_literal(b.user_wallet),
                            pyxp.code_point(pyxp.invisible_character(f.form)))
                ELSE format('wallet %s is read %s since 0002', quote_literal(b.user_wallet), quote_literal(f.form)) END
      FROM (SELECT b.user_wallet FROM pyxp.xp_balances b WHERE b.user_wallet COLLATE "C" !~ '^0x[0-9a-f]{40}$') b
     CROSS JOIN LATERAL (SELECT CASE WHEN x.t ~* '^0x[0-9a-f]{40}$' THEN lower(x.t) ELSE x.t END AS form
                           FROM (SELECT pyxp.trimmed_text(b.user_wallet, true) AS t) x) f
     WHERE f.form <> b.user_wallet OR pyxp.invisible_character(f.form) IS NOT NULL
    UNION ALL
    -- Caps: what xp_cap_usage holds against the ledger (the part its
    -- period's own rows used; what a switch seeded from other periods'
    -- gains), and no capped gain applied beyond what was left in the period
    -- that governed it (nothing to read when no rule ever carried a cap).
    SELECT 'cap_usage_mismatch', coalesce(u.user_wallet, l.user_wallet), NULL,
           format('%s from %s: xp_cap_usage says %s XP used by its period''s rows, the ledger %s XP',
                  coalesce(u.allowance, l.allowance), coalesce(u.period_start, l.period_start),
                  coalesce(u.used_xp - u.seeded_xp, 0), coalesce(l.used_xp, 0))
      FROM pyxp.xp_cap_usage u
      FULL JOIN pyxp.ledger_cap_usage() l
        ON l.user_wallet = u.user_wallet AND l.allowance = u.allowance AND l.period_start = u.period_start
     WHERE coalesce(u.used_xp - u.seeded_xp, 0) <> coalesce(l.used_xp, 0)
       AND (EXISTS (SELECT FROM pyxp.rules ru WHERE ru.cap_max_xp IS NOT NULL)
            OR EXISTS (SELECT FROM pyxp.xp_cap_usage))
    UNION ALL
    SELECT 'cap_usage_mismatch', s.user_wallet, NULL,
           format('%s from %s: xp_cap_usage says %s XP used by gains counted in other periods, the ledger %s XP',
                  s.allowance, s.period_start, s.seeded_xp, s.ledger_xp)
      FROM pyxp.ledger_cap_seeds() s
     WHERE s.seeded_xp <> s.ledger_xp
    UNION ALL
    SELECT 'cap_exceeded', e.user_wallet, NULL,
           format('%s from %s (%s in %s): %s XP granted, cap %s', e.allowance, e.period_start, e.per, e.zone,
                  e.used_xp, e.cap_max_xp)
      FROM pyxp.exceeded_allowances() e
     WHERE EXISTS (SELECT FROM pyxp.rules ru WHERE ru.cap_max_xp IS NOT NULL);
END
$fn$;

-- The active ruleset's current periods count what gains of other periods
-- used there (a switch made before this revision). Under the ruleset
-- switch's lock: no award meanwhile. Where those gains were archived
-- (PX029), nothing is counted, and the migration says so.
DO $$
DECLARE
    v_active bigint := (SELECT r.ruleset_id FROM pyxp.rulesets r WHERE r.is_active AND r.has_caps);
BEGIN
    IF v_active IS NOT NULL THEN
        LOCK TABLE pyxp.xp_balances IN SHARE ROW EXCLUSIVE MODE;
        PERFORM pyxp.seed_cap_usage(v_active, NULL, clock_timestamp());
    END IF;
EXCEPTION WHEN SQLSTATE 'PX029' THEN
    RAISE WARNING 'pyxp 0025: the current periods of the capped allowances were not counted: %', SQLERRM;
END
$$;

RESET ROLE;
