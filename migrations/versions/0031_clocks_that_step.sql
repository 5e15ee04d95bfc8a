-- 0031: a hostile test of a server clock that is not monotonic (an NTP
-- step, a VM restored, a failover to a standby behind), 2026-11-27. Frozen
-- copy of what sql/*.sql defines at this revision; never edit it.
--
-- * A switch's seed of a capped allowance (pyxp.seed_cap_usage) counts the
--   gains that existed then by their position (xp_cap_usage.seeded_seq, the
--   wallet's last wallet_seq), not by their created_at; the audit
--   (pyxp.ledger_cap_seeds) and a reversal's freeing
--   (pyxp.freed_allowances) count the same gains. A gain dated after the
--   switch that counted it (written while the clock ran ahead) made a false
--   cap_usage_mismatch, and its reversal freed nothing of the seed.
-- * The seed counts every period of the new zone from the switch's on that
--   holds gains, not the switch's only: gains dated in a later period (the
--   clock ran ahead) were not counted, and that day granted its allowance
--   again when it came.
-- * pyxp.create_ledger_partitions makes no month before the archive's
--   horizon (a clock that stepped back into an archived month made it
--   again, and every later archive failed with 42P07; with a row dated
--   there its ATTACH was retried until 53200), and an ATTACH that failed
--   without the move's locks is retried once, with them.
-- * pyxp.wake_feed_listeners claims a slot more than a second behind the
--   last one (a slot claimed while the clock ran ahead silenced the
--   wake-ups until the clock came back to it).

SET LOCAL ROLE pyxp_owner;

ALTER TABLE pyxp.xp_cap_usage ADD COLUMN seeded_seq bigint;
-- The seeds made before 0031 counted the gains dated before seeded_at:
-- the positions before the wallet's first row dated at or after it.
UPDATE pyxp.xp_cap_usage u
   SET seeded_seq = coalesce((SELECT min(t.wallet_seq) - 1 FROM pyxp.xp_transactions t
                               WHERE t.user_wallet = u.user_wallet AND t.created_at >= u.seeded_at),
                             (SELECT b.last_wallet_seq FROM pyxp.xp_balances b WHERE b.user_wallet = u.user_wallet),
                             0)
 WHERE u.seeded_at IS NOT NULL;
ALTER TABLE pyxp.xp_cap_usage DROP CONSTRAINT xp_cap_usage_seed_check,
    ADD CONSTRAINT xp_cap_usage_seed_check CHECK (
        seeded_xp BETWEEN 0 AND used_xp
        AND (seeded_per IS NULL) = (seeded_at IS NULL) AND (seeded_zone IS NULL) = (seeded_at IS NULL)
        AND (seeded_by IS NULL) = (seeded_at IS NULL) AND (seeded_seq IS NULL) = (seeded_at IS NULL)
        AND (seeded_at IS NOT NULL OR seeded_xp = 0));

DROP FUNCTION pyxp.capped_gains(oid[], timestamptz);
-- The capped gains of the ledger as they count in allowances: each gain
-- (user_wallet, allowance: its rule's, action, actions: its allowance's in
-- its ruleset, at: its created_at, its own period per and zone: its rule's,
-- in its ruleset's zone, cap: its rule's, seq: its wallet_seq, xp_amount:
-- what it applied), and each reversal of one (the gain's, but seq its own
-- and xp_amount negative), with is_gain and gain_seq (the gain's own
-- position: a seed counts the gains that existed when it was made; 0 for an
-- archived gain, older than any seed the audit checks). Only the
-- rows of partitions p_partitions when it is not NULL; only the gains since
-- p_since when it is not NULL (a reversal after it, of a gain before it, is
-- left out too). Gains: a hash join of the ledger with the capped rules;
-- only the reversals look their original up (index xp_transactions_reversals;
-- a probe per row of the ledger cost 5 s of the audit at 1M rows).
CREATE FUNCTION pyxp.capped_gains(p_partitions oid[], p_since timestamptz)
RETURNS TABLE (user_wallet text, allowance text, action text, actions text[], at timestamptz, per text,
               zone text, cap_max_xp bigint, seq bigint, xp_amount bigint, is_gain boolean, gain_seq bigint)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT g.user_wallet, a.allowance, ru.action, a.actions, g.at, ru.cap_per, rs.timezone,
           ru.cap_max_xp, g.seq, g.xp_amount, g.is_gain, g.gain_seq
      FROM (SELECT t.user_wallet, t.rule_id, t.created_at AS at, t.wallet_seq AS seq, t.xp_amount, true AS is_gain,
                   t.wallet_seq AS gain_seq
              FROM pyxp.xp_transactions t
             WHERE t.reverses IS NULL AND t.xp_amount > 0
               AND t.rule_id IN (SELECT c.rule_id FROM pyxp.rules c WHERE c.cap_max_xp IS NOT NULL)
               AND (p_partitions IS NULL OR t.tableoid = ANY (p_partitions))
               AND (p_since IS NULL OR t.created_at >= p_since)
            UNION ALL
            SELECT t.user_wallet, o.rule_id, o.created_at, t.wallet_seq, t.xp_amount, false, o.wallet_seq
              FROM pyxp.xp_transactions t
             CROSS JOIN LATERAL (SELECT o.rule_id, o.created_at, o.xp_amount, o.wallet_seq FROM pyxp.xp_transactions o
                                  WHERE o.id = t.reverses
                                 UNION ALL
                                 SELECT a.rule_id, a.created_at, a.xp_amount, 0 FROM pyxp.xp_archived_originals a
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

-- What a reversal frees of capped allowances: what the capped gain it
-- reverses applied, in that gain's period (its rule's, in the zone of its
-- rule's ruleset), and in each period an activation seeded with it (a row of
-- xp_cap_usage whose seeded period holds the gain, seeded when the gain
-- existed: its position is at most seeded_seq; freed_seed, from its seed
-- too). No row for a reversal of
-- anything else. For the writer's step 4b, under the wallet's lock.
CREATE OR REPLACE FUNCTION pyxp.freed_allowances(p_reverses bigint)
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
                          WHERE u.user_wallet = o.user_wallet AND u.seeded_at IS NOT NULL AND o.wallet_seq <= u.seeded_seq
                            AND u.period_start = date_trunc(u.seeded_per, o.created_at, u.seeded_zone)
                            AND (u.allowance = a.allowance OR ru.action = ANY (s.actions))
                            AND NOT (u.allowance = a.allowance AND u.period_start = a.own_start)) f
     WHERE o.id = p_reverses AND ru.cap_max_xp IS NOT NULL AND o.xp_amount > 0
$$;

-- Activating ruleset p_ruleset after p_previous (NULL: none): each capped
-- allowance whose period (per, zone) or actions p_previous did not have
-- (pyxp.moved_allowances) starts its current period from what the gains
-- there used that were counted elsewhere (under another zone or per: their
-- period starts elsewhere; or, for one of its actions, under another
-- allowance: a rule moved into or out of a group), less what reversals of
-- them freed. Without it a new zone's
-- day would start from nothing hours after the old zone's day used it all
-- (a hostile test, 2026-11-27). Written as xp_cap_usage.seeded_xp of the
-- period's row (counted anew: a seed left by an earlier switch to that
-- period or a later one is replaced), with the period it counted, the
-- activation's instant p_at (rulesets.activated_at, the clock after the
-- caller's lock) and the gains it counted: every one in the ledger, as the
-- lock holds every award out, so up to the wallet's last position
-- (seeded_seq). The periods: the one containing p_at and every later one
-- holding gains (0031: rows written while the server's clock ran ahead,
-- then stepped back, are dated there; counting only the first, their day
-- granted its allowance again when it came, a hostile test). No capped row
-- is dated before p_at (pyxp.append_rows), so no award counts in an
-- earlier period of the new zone.
-- PX029 when that period began before the archive horizon and the
-- allowance's archived gains may lie in it (they cannot be counted here).
-- The caller holds SHARE ROW EXCLUSIVE on xp_balances (no award meanwhile).
-- One pass over the ledger since the earliest of those periods' starts.
CREATE OR REPLACE FUNCTION pyxp.seed_cap_usage(p_ruleset bigint, p_previous bigint, p_at timestamptz)
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
    -- Seeds left by an earlier switch to these periods (from the switch's on,
    -- of the same length and zone, or starting where one of them does: the
    -- INSERT below would add to them): counted anew below. A seed of other
    -- periods stays (its periods come back with a switch back to them).
    UPDATE pyxp.xp_cap_usage u
       SET used_xp = u.used_xp - u.seeded_xp, seeded_xp = 0, seeded_per = NULL, seeded_zone = NULL,
           seeded_by = NULL, seeded_at = NULL, seeded_seq = NULL
      FROM pyxp.moved_allowances(p_ruleset, p_previous, p_at) k
     WHERE u.seeded_at IS NOT NULL AND u.allowance = k.allowance AND u.period_start >= k.start
       AND ((u.seeded_per, u.seeded_zone) = (k.per, k.zone) OR date_trunc(k.per, u.period_start, k.zone) = u.period_start);
    -- The gains in each period that count in it, the allowance's own rows
    -- (counted under its name there) aside.
    INSERT INTO pyxp.xp_cap_usage AS u (user_wallet, allowance, period_start, used_xp, seeded_xp, seeded_per,
                                        seeded_zone, seeded_by, seeded_at, seeded_seq)
    SELECT g.user_wallet, k.allowance, p.start, sum(g.xp_amount), sum(g.xp_amount), k.per, k.zone, p_ruleset, p_at,
           min(b.last_wallet_seq)
      FROM pyxp.moved_allowances(p_ruleset, p_previous, p_at) k
      JOIN pyxp.capped_gains(NULL, (SELECT min(m.first) FROM pyxp.moved_allowances(p_ruleset, p_previous, p_at) m)) g
        ON g.allowance = k.allowance OR g.action = ANY (k.actions)
     CROSS JOIN LATERAL (SELECT date_trunc(k.per, g.at, k.zone) AS start) p
      JOIN pyxp.xp_balances b ON b.user_wallet = g.user_wallet
     WHERE p.start >= k.start
       AND NOT (g.allowance = k.allowance AND date_trunc(g.per, g.at, g.zone) = p.start)
     GROUP BY g.user_wallet, k.allowance, p.start, k.per, k.zone
    HAVING sum(g.xp_amount) > 0
    ON CONFLICT (user_wallet, allowance, period_start) DO UPDATE
       SET used_xp = u.used_xp + excluded.seeded_xp, seeded_xp = excluded.seeded_xp,
           seeded_per = excluded.seeded_per, seeded_zone = excluded.seeded_zone, seeded_by = excluded.seeded_by,
           seeded_at = excluded.seeded_at, seeded_seq = excluded.seeded_seq;
END
$$;

-- For each seeded row of xp_cap_usage, what its seed must be: the gains of
-- its allowance in its seeded period, counted in other periods, that
-- existed when it was seeded (positions up to seeded_seq, whatever their
-- created_at: 0031), less the reversals of them; NULL where that period
-- began before the archive horizon (its archived gains cannot be counted).
-- For pyxp.audit.
CREATE OR REPLACE FUNCTION pyxp.ledger_cap_seeds()
RETURNS TABLE (user_wallet text, allowance text, period_start timestamptz, seeded_xp bigint, ledger_xp bigint)
LANGUAGE sql STABLE
AS $$
    SELECT u.user_wallet, u.allowance, u.period_start, u.seeded_xp,
           CASE WHEN pyxp.period_first_instant(u.seeded_per, u.period_start, u.seeded_zone)
                     >= coalesce(pyxp.archive_horizon(), '-infinity')
                THEN coalesce(sum(g.xp_amount) FILTER (WHERE g.gain_seq <= u.seeded_seq
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
     GROUP BY u.user_wallet, u.allowance, u.period_start, u.seeded_xp, u.seeded_per, u.seeded_zone, u.seeded_seq
$$;

CREATE OR REPLACE FUNCTION pyxp.create_ledger_partitions(months_ahead integer DEFAULT 2)
RETURNS TABLE (partition_name text, range_start timestamptz, range_end timestamptz, created boolean, note text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET lock_timeout = '1s'
SET datestyle = 'ISO, YMD'  -- the bounds it writes (%L) and reads back (pyxp.ledger_partitions)
SET timezone = 'UTC'
AS $$
DECLARE
    v_this_month constant timestamptz := date_trunc('month', now(), 'UTC');
    v_horizon timestamptz;
    v_months timestamptz[];
    v_moving boolean;
    v_locked boolean := false;
    v_retried boolean := false;  -- an ATTACH without the locks failed: the next attempt takes them
    v_attached boolean;
    v_deadline timestamptz;
    v_start timestamptz;
    v_end timestamptz;
    v_name text;
    v_columns text;
    v_moved bigint;
BEGIN
    IF months_ahead IS NULL OR months_ahead NOT BETWEEN 0 AND 120 THEN
        RAISE EXCEPTION 'months_ahead must be between 0 and 120, got %', coalesce(months_ahead::text, 'NULL')
            USING ERRCODE = 'PX023', HINT = 'the default, 2, keeps this month and the next two; run it monthly';
    END IF;
    -- Its reads of the default partition and the ATTACH's scan of it must see
    -- the same rows (in REPEATABLE READ the ATTACH failed with a raw 23514).
    PERFORM pyxp.require_read_committed();
    -- One move or archive at a time (sql/13_retention.sql takes the same
    -- lock): two moves each held what the other waited for, with awards
    -- between them (40P01 for new awards, a hostile test, 0030); and an
    -- archive committed between the read of its horizon and the move's
    -- locks had a month it had just archived made again from a row dated
    -- there, after which every archive failed (42P07).
    PERFORM pyxp.lock_ledger_partitions();
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO v_columns
      FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = 'pyxp.xp_transactions'::regclass AND a.attnum > 0 AND NOT a.attisdropped;
    <<attempt>>
    LOOP
    v_horizon := coalesce(pyxp.archive_horizon(), '-infinity');
    -- The months ahead, and those of the rows in the default partition: read
    -- again under the move's locks when it holds any (a row committed there
    -- after a first look is then waited for, and seen). None before the
    -- archive's horizon (a month start): the clock that says which month
    -- this is can step back into a month already archived (0031, a hostile
    -- test: that month was made again inside the archived range, and every
    -- later archive failed with 42P07; or, with a row dated there, its
    -- ATTACH was retried until 53200).
    LOOP
        SELECT array_agg(m.month ORDER BY m.month), bool_or(m.moved) INTO v_months, v_moving
          FROM (SELECT (v_this_month AT TIME ZONE 'UTC' + make_interval(months => a.n)) AT TIME ZONE 'UTC', false
                  FROM generate_series(0, months_ahead) a(n)
                 WHERE (v_this_month AT TIME ZONE 'UTC' + make_interval(months => a.n)) AT TIME ZONE 'UTC' >= v_horizon
                UNION
                SELECT DISTINCT date_trunc('month', d.created_at, 'UTC'), true
                  FROM pyxp.xp_transactions_default d WHERE d.created_at >= v_horizon) m(month, moved);
        EXIT WHEN v_locked OR NOT (coalesce(v_moving, false) OR v_retried);
        -- EXCLUSIVE on the ledger (awards wait for the move, reads go on),
        -- then ACCESS EXCLUSIVE on the default partition, waited for while
        -- the first is held for less than the deadlock check's delay only:
        -- a call whose plan opened every partition (a replay's, a
        -- reversal's) holds the default partition and then queues for the
        -- ledger, behind this lock, and each waited for the other (40P01
        -- for that call, a hostile test, 0030). When that wait ends, both
        -- are released (the block's subtransaction) and taken again, for at
        -- most 5 seconds. (Not NOWAIT: a request that never queues is
        -- starved by readers that overlap, a re-test found: 55P03 with
        -- three readers of 30 ms transactions.)
        v_deadline := clock_timestamp() + interval '5 seconds';
        LOOP
            BEGIN
                LOCK TABLE pyxp.xp_transactions IN EXCLUSIVE MODE;
                PERFORM set_config('lock_timeout', greatest(1, (extract(epoch FROM least(
                                       current_setting('deadlock_timeout')::interval / 2, interval '200 ms')) * 1000)::integer)::text,
                                   true);
                LOCK TABLE pyxp.xp_transactions_default IN ACCESS EXCLUSIVE MODE;
                PERFORM set_config('lock_timeout', '1s', true);
                EXIT;
            EXCEPTION WHEN lock_not_available THEN
                IF clock_timestamp() > v_deadline THEN
                    RAISE EXCEPTION 'the ledger''s partitions were busy for 5 seconds: rows of months without a partition not moved'
                        USING ERRCODE = '55P03', HINT = 'run it again (when awards are fewer)';
                END IF;
                PERFORM pg_sleep(0.01);
            END;
        END LOOP;
        v_locked := true;
    END LOOP;
    FOREACH v_start IN ARRAY coalesce(v_months, '{}') LOOP  -- (none: every month asked for was archived)
        v_end := (v_start AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC';
        v_name := 'xp_transactions_' || to_char(v_start AT TIME ZONE 'UTC', 'YYYY_MM');
        partition_name := v_name;
        range_start := v_start;
        range_end := v_end;
        IF EXISTS (SELECT FROM pyxp.ledger_partitions() p
                    WHERE NOT p.is_default AND coalesce(p.range_start < v_end, true) AND p.range_end > v_start) THEN
            IF NOT EXISTS (SELECT FROM pyxp.xp_transactions_default d
                            WHERE d.created_at >= v_start AND d.created_at < v_end) THEN
                CONTINUE;  -- a partition holds (part of) this month already
            END IF;
            -- (a partition made by hand, holding part of the month)
            created := false;
            note := 'rows of this month are in xp_transactions_default, and a partition holds part of the month: '
                    'they stay there';
        ELSE
            PERFORM pyxp.new_ledger_partition(v_name);
            v_moved := 0;
            IF v_locked THEN
                -- (no row can enter the default partition meanwhile: the copy
                -- and the DELETE see the same rows)
                EXECUTE format('INSERT INTO pyxp.%I (%s) SELECT %s FROM pyxp.xp_transactions_default d '
                               'WHERE d.created_at >= %L AND d.created_at < %L',
                               v_name, v_columns, v_columns, v_start, v_end);
                GET DIAGNOSTICS v_moved = ROW_COUNT;
                IF v_moved > 0 THEN
                    ALTER TABLE pyxp.xp_transactions_default DISABLE TRIGGER xp_transactions_append_only;
                    DELETE FROM pyxp.xp_transactions_default d WHERE d.created_at >= v_start AND d.created_at < v_end;
                    ALTER TABLE pyxp.xp_transactions_default ENABLE ALWAYS TRIGGER xp_transactions_append_only;
                END IF;
                EXECUTE format('ALTER TABLE pyxp.xp_transactions ATTACH PARTITION pyxp.%I FOR VALUES FROM (%L) TO (%L)',
                               v_name, v_start, v_end);
            ELSE
                -- Without the move's locks, nothing is copied or deleted (a
                -- row committed between the two would be deleted uncopied):
                -- the look above found no row of this month in the default
                -- partition. One may have committed there since (the ATTACH's
                -- scan finds it: 23514, raw up to 0029): this month's partition
                -- is undone, and the months read again under the locks (once:
                -- a second attempt holds them).
                v_attached := true;
                BEGIN
                    EXECUTE format('ALTER TABLE pyxp.xp_transactions ATTACH PARTITION pyxp.%I FOR VALUES FROM (%L) TO (%L)',
                                   v_name, v_start, v_end);
                EXCEPTION WHEN check_violation THEN
                    v_attached := false;
                END;
                IF NOT v_attached THEN
                    EXECUTE format('DROP TABLE pyxp.%I', v_name);
                    v_retried := true;
                    CONTINUE attempt;
                END IF;
            END IF;
            created := true;
            note := CASE WHEN v_moved > 0 THEN format('%s rows moved from xp_transactions_default', v_moved) END;
        END IF;
        RETURN NEXT;
    END LOOP;
    EXIT attempt;
    END LOOP attempt;
END
$$;

CREATE OR REPLACE FUNCTION pyxp.wake_feed_listeners()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    v_slot bigint := (extract(epoch FROM clock_timestamp()) * 10)::bigint;  -- 100 ms slots
    v_seen text := current_setting('pyxp.feed_slot_seen', true);
BEGIN
    IF lower(current_setting('pyxp.feed_wakeups', true) COLLATE "C") IN ('off', 'false', 'no', '0', 'f', 'n') THEN
        RETURN NULL;
    END IF;
    -- A backend reads the sequence at most once per slot: the last slot it
    -- saw is kept in its session (pyxp.feed_slot_seen). A stale or forged
    -- value only delays this session's own wake-ups, which are hints. A slot
    -- more than a second (10 slots) behind the last one claimed or seen is a
    -- clock that stepped back: it is claimed (0031, a hostile test: a slot
    -- claimed while the server's clock ran an hour ahead silenced every
    -- wake-up for that hour).
    IF v_seen IS NULL OR v_seen !~ '^[0-9]{1,18}$' OR v_slot > v_seen::bigint OR v_slot < v_seen::bigint - 10 THEN
        IF (SELECT v_slot > s.last_value OR v_slot < s.last_value - 10 FROM pyxp.feed_wakeup_slot s) THEN
            PERFORM setval('pyxp.feed_wakeup_slot', v_slot);
            PERFORM pg_notify('pyxp_changes', '');
        END IF;
        PERFORM set_config('pyxp.feed_slot_seen', v_slot::text, false);
    END IF;
    RETURN NULL;
END
$$;

RESET ROLE;
