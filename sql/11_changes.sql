-- The change feed (SPEC 11): every committed ledger row, exactly once, for
-- any service that follows it with plain SQL. No daemon, no queue to consume.
--
-- The trap: ids come from a sequence at INSERT, not at COMMIT. A reader that
-- asks for "ids above the last one I saw" skips a row whose transaction got
-- a lower id and committed later. So the feed is not ordered by id.
--
-- Groups. Each ledger row carries feed_xid, written by the one writer of the
-- ledger under the wallet's balance row lock (pyxp.append_rows):
--   feed_xid = greatest(id of the writing transaction, feed_xid of the
--                       wallet's previous row)          (xp_balances.last_feed_xid)
-- (Every transaction id here, the writer's and the horizon's, is counted as
-- the ledger counts them, pyxp.ledger_xid: this cluster's plus an offset,
-- 0 unless the ledger was copied from a cluster whose ids ran higher,
-- sql/14_copies.sql. One offset for all: the order of ids, which is all
-- the proof below uses, is kept.)
-- Two facts follow:
--   (1) feed_xid >= the writer's own transaction id;
--   (2) along a wallet's balance_after chain, feed_xid never decreases, and
--       ids increase (rows of a wallet are appended under its lock).
-- The feed order is (feed_xid, id); a row's cursor is
--   feed_xid * 2^24 + its rank by id among the rows of its group,
-- and the reader returns only groups below its horizon: the oldest
-- transaction id its snapshot saw running, leaving out transactions running
-- in another database of the cluster (they cannot write this ledger; a
-- transaction id is held in pg_locks from its assignment to its end, and
-- pg_stat_activity says which database its backend is in).
--
-- Why every committed row is seen exactly once: group G < horizon means every
-- transaction of this database with an id <= G had finished (committed or
-- rolled back) when the snapshot was taken (ids below the snapshot's xmin
-- had; the others it saw running are all counted in the horizon, except
-- those still running elsewhere, which write no row here), so by (1) every
-- row that has or will ever have feed_xid = G was written by a finished
-- transaction: the group is final, its rows and their ranks never change,
-- and the snapshot sees all the committed ones. A transaction that can still
-- write here has an id >= horizon (it was running at the snapshot, and so
-- counted, or it started after, with an id >= the snapshot's xmax), so by (1)
-- its rows land in a group >= horizon, above every cursor handed out so far:
-- a reader passing its last cursor back meets them once they commit.
-- Rolled-back rows are never visible. By (2), a wallet's rows come in
-- balance_after order. (A transaction that ended between the snapshot and
-- the look at pg_locks counts as if still running: at worst a group waits
-- for the next read.)
-- The cost: the feed waits for the oldest running transaction of this
-- database that has a transaction id (it wrote or locked a row, or asked for
-- its id), so such a transaction left open holds the feed back until it ends,
-- whoever runs it: any role that may connect to the database can (README
-- "Live XP": revoke CONNECT from PUBLIC, set idle_in_transaction_session_timeout).
-- On a standby, a transaction of any database of the primary does.
--
-- Rows written before 0003 have no group (feed_xid NULL): their cursor is
-- their id, and 0003 checked that every id then was below the first group's
-- cursor. Limits: 2^24 rows per group, and cursors fit in bigint while
-- transaction ids stay below 2^39 (about 550 billion transactions). A group
-- holds its transaction's rows (and rows older transactions chained to its
-- wallets after it): batches and retroactive applications count their rows
-- per transaction and stop at 15,728,640 (pyxp.counted_transaction_rows,
-- PX023), and a reader meeting a rank past 2^24 - 1 fails (PX031) rather than
-- hand out a cursor of the next group (0028: a hostile test worked out that
-- the rest of the group would be skipped for good).

SET LOCAL ROLE pyxp_owner;

-- The oldest transaction snapshot p_snapshot saw running that is not running
-- in another database of the cluster now (one of those writes no row here;
-- one that ended since counts as still running): below its id, every feed
-- group is final (the feed's horizon, above), and no transaction can still
-- add a row to one (pyxp.archive_ledger_partitions). NULL: none. A
-- transaction id is held in pg_locks from its assignment to its end, and
-- pg_stat_activity says which database its backend is in; a prepared
-- transaction (two-phase commit) has no backend: pg_prepared_xacts says
-- (0028: one left prepared in another database held the feed back until it
-- ended, a hostile test). PostgreSQL keeps one copy of pg_stat_activity for
-- a transaction's duration: it is read afresh here (pg_stat_clear_snapshot,
-- which also ends the caller's copy of the cumulative statistics), after
-- p_snapshot was taken, so it lists the backend of every transaction in the
-- snapshot's list that is still running, with its database. Before 0037 a
-- reader inside a transaction took a backend started after its first read,
-- in another database, for one of this database, and was held back until
-- its own transaction ended (a reproduction of stop 39's hypothesis); a pid
-- reused meanwhile by a backend of this database could have let a page pass
-- a transaction still running here.
CREATE FUNCTION pyxp.oldest_running_here(p_snapshot pg_snapshot)
RETURNS xid8
LANGUAGE sql STABLE
AS $$
    SELECT pg_catalog.pg_stat_clear_snapshot();
    SELECT min(x.xid)
      FROM pg_snapshot_xip(p_snapshot) x(xid)
     WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_locks l
                         JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
                        WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock'
                          AND l.transactionid = xid(x.xid)
                          AND a.datid <> (SELECT d.oid FROM pg_catalog.pg_database d
                                           WHERE d.datname = current_database()))
       AND NOT EXISTS (SELECT FROM pg_catalog.pg_prepared_xacts p
                        WHERE p.transaction = xid(x.xid) AND p.database <> current_database())
$$;

-- Whether a consumer of wallet p_wallet's rows, at cursor p_after below the
-- feed's floor (the archives' feed_floor: a consumer of the whole feed there
-- is refused), may miss rows: the wallet has archived rows after the cursor
-- (xp_wallet_openings.last_cursor; unknown for an archive before 0026:
-- assumed so), or rows left in the ledger in the cursor's group when an
-- archive may have taken rows of that group out (a group at or below the
-- floor's: its rows left are ranked anew, so a rank no longer says which of
-- them were read). Otherwise every row of the wallet after the cursor is in
-- a later group, whole: the consumer reads on (before 0026 it was refused
-- for good, even for its wallet's new rows: a hostile test).
CREATE FUNCTION pyxp.wallet_feed_behind_archive(p_wallet text, p_after bigint, p_floor bigint)
RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT EXISTS (SELECT FROM pyxp.xp_wallet_openings o
                    WHERE o.user_wallet = p_wallet AND (o.last_cursor IS NULL OR o.last_cursor > p_after))
        OR (p_after >> 24 <= p_floor >> 24
            AND EXISTS (SELECT FROM pyxp.xp_transactions t
                         WHERE t.feed_xid = (p_after >> 24)::text::xid8 AND t.user_wallet = p_wallet))
$$;

-- The rows a transaction writes through batches and retroactive
-- applications, counted in a transaction-local setting
-- (pyxp.transaction_rows, '<transaction mark>:<rows>'), p_rows more: PX023
-- past 15,728,640 (2^24 less 2^20 for the single awards and chained rows a
-- group may also hold). Single awards and flows do not count (a statement
-- each: 16 million of them in one transaction is not a workload). A count
-- of another transaction counts nothing (0029, a hostile test: a session's
-- SET of the setting, left on a pooled server connection, refused every
-- other client's batches there; 0047: or the next client's, set ahead with
-- the next transaction id: pyxp.transaction_mark).
CREATE FUNCTION pyxp.counted_transaction_rows(p_rows bigint)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_seen text := current_setting('pyxp.transaction_rows', true);
    v_xact text := pyxp.transaction_mark(pg_current_xact_id());
    v_rows bigint := CASE WHEN split_part(v_seen, ':', 1) = v_xact AND split_part(v_seen, ':', 2) ~ '^[0-9]{1,15}$'
                          THEN split_part(v_seen, ':', 2)::bigint ELSE 0 END + p_rows;
BEGIN
    IF v_rows > 15728640 THEN
        RAISE EXCEPTION 'a transaction writes at most 15728640 ledger rows through batches and retroactive applications, this one % more after %',
                        p_rows, v_rows - p_rows
            USING ERRCODE = 'PX023',
                  HINT = 'commit and go on in a new transaction: the change feed ranks one transaction''s rows below 2^24';
    END IF;
    PERFORM set_config('pyxp.transaction_rows', v_xact || ':' || v_rows, true);
END
$$;

-- PX031: a feed group holds more rows than a cursor can rank (2^24 - 1).
CREATE FUNCTION pyxp.raised_feed_overflow(p_group xid8)
RETURNS bigint
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'feed group % holds more than 16777215 rows: their cursors would be the next group''s', p_group
        USING ERRCODE = 'PX031',
              HINT = 'see README "Live XP": a transaction that writes that many rows cannot be followed by cursor';
END
$$;

-- Whether transaction p_group (as the ledger counts them, pyxp.ledger_xid)
-- has ended, whatever the caller's snapshot (pg_xact_status: NULL for an id
-- too old to tell, 22023 for one in the future; an id below the offset is
-- from the cluster the ledger was copied from). A cursor the feed handed out
-- has a group whose transaction had ended (it was below a horizon).
-- Past the first epoch, an id whose low 32 bits are 0, 1 or 2 is no
-- transaction's (the invalid, bootstrap and frozen ids are skipped when ids
-- are handed out), and pg_xact_status reads it as NULL or 'committed'
-- whatever its epoch: such a group is not ended, and its cursor ahead of the
-- feed is refused (before 0039 it read an empty page for good: a
-- newcomer's review).
CREATE FUNCTION pyxp.transaction_ended(p_group xid8)
RETURNS boolean
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_xid numeric := p_group::text::numeric - pyxp.xid_offset();
BEGIN
    IF v_xid < 0 THEN
        RETURN true;
    END IF;
    IF v_xid >= 4294967296 AND mod(v_xid, 4294967296) < 3 THEN
        RETURN false;
    END IF;
    RETURN coalesce(pg_xact_status(v_xid::text::xid8) <> 'in progress', true);
EXCEPTION WHEN invalid_parameter_value THEN
    RETURN false;
END
$$;

-- Whether a transaction of this database whose id, as the ledger counts it,
-- is at or below p_group runs now, read afresh whatever the caller's
-- snapshot (the caller's own transaction included): while one does, every
-- reader's horizon is at or below its id, so no feed has handed out a cursor
-- of group p_group (0039, a hostile test: such a cursor below the snapshot's
-- xmax was accepted, and once the running transaction committed, its rows
-- were skipped for good). A transaction known to run in another database
-- (its backend's, or as a prepared transaction) does not count: it writes no
-- row here (as pyxp.oldest_running_here, which also says why
-- pg_stat_activity is read afresh). pg_locks gives 32-bit ids: each is
-- widened against the snapshot's xmax, within 2^31 of every running id.
CREATE FUNCTION pyxp.running_here_up_to(p_group xid8)
RETURNS boolean
LANGUAGE sql VOLATILE
AS $$
    SELECT pg_catalog.pg_stat_clear_snapshot();
    SELECT EXISTS (
        SELECT FROM pg_catalog.pg_locks l
          LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
          LEFT JOIN pg_catalog.pg_prepared_xacts p ON l.pid IS NULL AND p.transaction = l.transactionid
         CROSS JOIN (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax) s
         WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted
           AND (a.datid = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = current_database())
                OR p.database = current_database())
           AND s.xmax + (l.transactionid::text::bigint - s.xmax % 4294967296 + 6442450944) % 4294967296 - 2147483648
               + pyxp.xid_offset() <= p_group::text::bigint)
$$;

-- Public: committed ledger rows after `after_cursor`, ascending by cursor, at
-- most `max_rows` (1..1000), optionally one wallet's. total_xp is the balance
-- right after the row; previous_level and current_level its levels before
-- and after, on the curve of the ruleset the row was written under.
CREATE FUNCTION pyxp.changes(after_cursor bigint DEFAULT 0, max_rows integer DEFAULT 100,
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
    ELSIF NOT pg_is_in_recovery() AND (v_after >> 24)::text::xid8 >= v_horizon
          AND (((v_after >> 24)::text::xid8 >= pyxp.ledger_xid(pg_snapshot_xmax(v_snapshot))
                AND NOT pyxp.transaction_ended((v_after >> 24)::text::xid8))
               OR pyxp.running_here_up_to((v_after >> 24)::text::xid8)) THEN
        -- A group no transaction has reached, or whose transaction still
        -- runs: no cursor the feed returned (0028: one was accepted, and the
        -- rows below it skipped for good, a hostile test); or one from a
        -- cluster whose transaction ids ran higher (a dump restored
        -- elsewhere). Nor one at or above the horizon while a transaction of
        -- this database at or below its group runs, the reader's own
        -- included (0039: below the snapshot's xmax it was accepted). A
        -- standby may lag: there, none is refused. A group at or above the
        -- horizon whose transaction, and every one before it here, has
        -- ended is a cursor a newer snapshot handed out, read in an older
        -- REPEATABLE READ or SERIALIZABLE one (a cursor store shared by
        -- sessions): its page is empty here, every group from it on being at
        -- or above the horizon, and the next transaction reads on (0037, a
        -- hostile test: it was refused, and a client takes PX023 for good).
        -- (Below the horizon nothing is read afresh: a feed's read at the
        -- head of the ledger costs nothing more.)
        RAISE EXCEPTION 'after_cursor % is ahead of the feed (group %: no transaction has reached it, or one at or below it has not ended)',
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

-- Wake-ups (SPEC 11): listeners of channel pyxp_changes hear of new rows.
-- NOTIFY takes a cluster-wide lock at commit that serialises every notifying
-- transaction, commit flush included, so not every award notifies: the first
-- statement that writes ledger rows in each 100 ms slot does (the slot is
-- claimed on a sequence, which takes no lock a transaction keeps). A
-- notification is sent only if its transaction commits. A listener therefore
-- reads the feed when woken AND at least once a second (the slot's other
-- commits, a notifier that rolled back): pyxp's watch does both. README
-- "Live XP" has the measured cost of both designs. A transaction sets
-- pyxp.feed_wakeups to off to send none: one to be prepared (PostgreSQL
-- refuses to PREPARE a transaction that notified; 0028, a hostile test), or
-- one whose commit must not wait for that lock (lock_timeout).
CREATE SEQUENCE pyxp.feed_wakeup_slot;

CREATE FUNCTION pyxp.wake_feed_listeners()
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

CREATE TRIGGER xp_transactions_wake_feed
    AFTER INSERT ON pyxp.xp_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION pyxp.wake_feed_listeners();

REVOKE ALL ON FUNCTION pyxp.changes(bigint, integer, text), pyxp.wake_feed_listeners(),
                        pyxp.wallet_feed_behind_archive(text, bigint, bigint),
                        pyxp.oldest_running_here(pg_snapshot), pyxp.counted_transaction_rows(bigint),
                        pyxp.raised_feed_overflow(xid8), pyxp.transaction_ended(xid8),
                        pyxp.running_here_up_to(xid8) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pyxp.changes(bigint, integer, text) TO pyxp_writer, pyxp_reader;
REVOKE ALL ON SEQUENCE pyxp.feed_wakeup_slot FROM PUBLIC;
GRANT SELECT ON SEQUENCE pyxp.feed_wakeup_slot TO pyxp_reader;

COMMENT ON FUNCTION pyxp.changes(bigint, integer, text) IS
    'API: the change feed: committed ledger rows after a cursor, each exactly once, with total_xp and the levels before and after; pass back the last cursor.';
COMMENT ON FUNCTION pyxp.wallet_feed_behind_archive(text, bigint, bigint) IS
    'internal: whether a consumer of one wallet''s rows, below the feed''s floor, may miss rows an archive took.';
COMMENT ON FUNCTION pyxp.counted_transaction_rows(bigint) IS
    'internal: counts the rows a transaction writes through batches and retroactive applications; PX023 past 15728640.';
COMMENT ON FUNCTION pyxp.raised_feed_overflow(xid8) IS
    'internal: PX031, a feed group holding more rows than a cursor can rank.';
COMMENT ON FUNCTION pyxp.transaction_ended(xid8) IS
    'internal: whether a feed group''s transaction has ended, whatever the caller''s snapshot.';
COMMENT ON FUNCTION pyxp.running_here_up_to(xid8) IS
    'internal: whether a transaction of this database at or below a feed group runs now, whatever the caller''s snapshot.';
COMMENT ON FUNCTION pyxp.oldest_running_here(pg_snapshot) IS
    'internal: the oldest transaction a snapshot saw running that is not running in another database now.';
COMMENT ON FUNCTION pyxp.wake_feed_listeners() IS
    'internal: trigger sending at most one NOTIFY pyxp_changes per 100 ms slot.';

RESET ROLE;
