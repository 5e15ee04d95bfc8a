-- 0039's downgrade: pyxp.transaction_ended and pyxp.changes as at 0038 (0037's).
SET LOCAL ROLE pyxp_owner;

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
    ELSIF (v_after >> 24)::text::xid8 >= pyxp.ledger_xid(pg_snapshot_xmax(v_snapshot)) AND NOT pg_is_in_recovery()
          AND NOT pyxp.transaction_ended((v_after >> 24)::text::xid8) THEN
        -- A group no transaction has reached, or whose transaction still
        -- runs: no cursor the feed returned (0028: one was accepted, and the
        -- rows below it skipped for good, a hostile test); or one from a
        -- cluster whose transaction ids ran higher (a dump restored
        -- elsewhere). A standby may lag: there, none is refused. A group at
        -- or above this snapshot's xmax whose transaction has ended is a
        -- cursor a newer snapshot handed out, read in an older REPEATABLE
        -- READ or SERIALIZABLE one (a cursor store shared by sessions): its
        -- page is empty here, every group from it on being at or above the
        -- horizon, and the next transaction reads on (0037, a hostile test:
        -- it was refused, and a client takes PX023 for good).
        RAISE EXCEPTION 'after_cursor % is ahead of the feed (the transaction of its group % has not ended)',
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

DROP FUNCTION pyxp.running_here_up_to(xid8);

CREATE OR REPLACE FUNCTION pyxp.transaction_ended(p_group xid8)
RETURNS boolean
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    IF p_group::text::numeric < pyxp.xid_offset() THEN
        RETURN true;
    END IF;
    RETURN coalesce(pg_xact_status((p_group::text::numeric - pyxp.xid_offset())::text::xid8) <> 'in progress', true);
EXCEPTION WHEN invalid_parameter_value THEN
    RETURN false;
END
$$;

-- The revision whose functions this database has: every revision from 0036
-- on replaces it with its own number (and its downgrade with the one before).
-- pyxp.alembic_version says the same, but a table is copied by a logical
-- replication that publishes it (FOR ALL TABLES) and a function is not:
-- pyxp db current and pyxp db upgrade refuse a database whose two differ
-- (pyxp/schema.py, revision_mismatch; a hostile test, 0036: a subscriber
-- said 0036 with 0035's functions, and pyxp db upgrade did nothing there).
CREATE OR REPLACE FUNCTION pyxp.schema_revision()
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$ SELECT '0038' $$;

RESET ROLE;
