-- Migration 0033: histories left behind (a hostile test of failovers and
-- point-in-time recovery, 2026-11-27). A physical copy that goes on from an
-- earlier point of its history (a point-in-time recovery; a standby promoted
-- before it had received its primary's last transactions) starts a new
-- timeline, which hands out again the transaction ids and sequence values
-- the history it left had used. A consumer of the change feed holding a
-- cursor of a lost row was refused (PX023), then skipped every row the new
-- timeline wrote below it; a reversal of a lost award's id reversed another
-- wallet's row. The ledger now names its timeline (pyxp.ledger_timeline);
-- the first write on a new one adopts it (pyxp.follow_timeline), and every
-- adoption that may leave a history behind (a new timeline, a copy, rows
-- ahead of this cluster) moves the ledger's transaction ids and sequences a
-- margin (2^31) past what it holds and records it (xp_ledger_forks):
-- pyxp.changes refuses a cursor in between (PX033) and names the cursor to
-- go on from. A frozen snapshot of sql/*.sql at this revision (sql/05_engine,
-- sql/11_changes, sql/14_copies and every writer that takes its own locks).

SET LOCAL ROLE pyxp_owner;
-- The timeline of this cluster the ledger was last adopted on (0033, a
-- hostile test of failovers and point-in-time recovery). A physical copy
-- keeps the cluster and its transaction ids, but one that goes on from an
-- earlier point of its history (a point-in-time recovery; a promoted
-- standby that had not received its primary's last transactions) starts a
-- new timeline and hands out again the ids, and the sequences' values, that
-- the history it left had used: for rows consumers of the change feed had
-- read, and ids clients held. The writer compares it with
-- pyxp.current_timeline(), and on a new timeline adopts it first
-- (pyxp.follow_timeline, sql/14_copies.sql). Written by pyxp.adopt_cluster,
-- a constant like pyxp.ledger_cluster. NULL: not known (the timeline cannot
-- be read here): then nothing compares it (a strict comparison with a NULL
-- constant is folded away, and the timeline is not read).
CREATE FUNCTION pyxp.ledger_timeline()
RETURNS integer
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT NULL::integer $$;
-- This server's timeline, on a primary: its WAL insertion timeline (in the
-- name of its current WAL file: right from the promotion on, where the
-- control file's checkpoint still names the previous timeline until the
-- promotion's spread checkpoint ends). NULL on a standby, where nothing
-- compares it: a standby's control file names the timeline it replays only
-- from its next restartpoint on (minutes after a switchover: a re-test of
-- 0033 had a standby refuse valid cursors with PX033 meanwhile), and a
-- standby needs none: it cannot write, and it receives the rows of a new
-- timeline only with or after the adoption that records it
-- (xp_ledger_forks, in the first writer's transaction). Volatile, so that
-- it is inlined into the writer's test (a simple expression, well under a
-- microsecond).
CREATE FUNCTION pyxp.current_timeline()
RETURNS integer
LANGUAGE sql VOLATILE
AS $$
    SELECT CASE WHEN NOT pg_is_in_recovery()
                THEN ('x' || left(pg_walfile_name(pg_current_wal_insert_lsn()), 8))::bit(32)::integer END
$$;
-- How far an adoption that may leave a history behind moves the ledger's
-- transaction ids and sequences past what it holds (pyxp.adopt_cluster):
-- 2^31, more than a cluster runs in two days at 10,000 transactions a
-- second. A consumer's cursor or a client's id from a history that went
-- on further than that past the ledger's last row is beyond what a refusal
-- can tell (README "Copies of the database"). Cursors fit in bigint while
-- the ledger's transaction ids stay below 2^39: 256 margins.
CREATE FUNCTION pyxp.fork_margin()
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT 2147483648::bigint $$;
-- The highest transaction id the ledger holds, as it counts them: its rows'
-- groups (a balance's last group and an opening's cursor are a row's: below
-- these), the checkpoints' xmins and the archives' floors. NULL: none.
CREATE FUNCTION pyxp.highest_ledger_xid()
RETURNS numeric
LANGUAGE sql STABLE
AS $$
    SELECT greatest(
        (SELECT t.feed_xid::text::numeric FROM pyxp.xp_transactions t
          WHERE t.feed_xid IS NOT NULL ORDER BY t.feed_xid DESC LIMIT 1),  -- (index xp_transactions_feed)
        (SELECT max(k.snapshot_xmin::text::numeric) FROM pyxp.xp_audit_checkpoints k),
        (SELECT max(a.feed_floor >> 24) FROM pyxp.xp_ledger_archives a))
$$;
-- The last cursor of feed group p_highest (the ledger's highest transaction
-- id, pyxp.highest_ledger_xid): every row kept is at or below it. 0: none.
CREATE FUNCTION pyxp.kept_cursor(p_highest numeric)
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT coalesce((p_highest::bigint << 24) | 16777215, 0) $$;
-- One row per adoption that moved the ledger's ids by the margin
-- (pyxp.adopt_cluster): where the history it kept ends, where the one it
-- writes since starts. pyxp.changes refuses a cursor between the two
-- (PX033): one handed out by the history left behind, for a row this
-- database does not hold.
CREATE TABLE pyxp.xp_ledger_forks (
    fork_id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    previous_cluster   bigint,            -- the cluster the ledger named (ledger_cluster()): 0 a subscriber, NULL unknown
    this_cluster       bigint,            -- the one it names since
    previous_timeline  integer,           -- the timeline it named (ledger_timeline()), NULL unknown
    this_timeline      integer,           -- the one it names since, NULL unknown
    kept_cursor        bigint NOT NULL,   -- every row the ledger kept has a cursor at or below it (0: none)
    resumed_group      numeric NOT NULL,  -- every group written since is at or above it
    margin             bigint NOT NULL,
    adopted_at         timestamptz NOT NULL DEFAULT now()
);

-- The cursor a consumer holding p_after goes on from when p_after was handed
-- out by a history this database left (a failover, a point-in-time
-- recovery, a copy): above every row the ledger kept, below every group it
-- has written since (xp_ledger_forks), or, on a new timeline not adopted
-- yet (no write since), above every row it holds. NULL otherwise. A cursor
-- at or below the kept rows' is answered as usual: the rows a lost history
-- added to a group the ledger kept (a transaction that began before the
-- fork point and committed after it) are beyond what a cursor can tell.
CREATE FUNCTION pyxp.forked_cursor(p_after bigint)
RETURNS bigint
LANGUAGE sql STABLE
AS $$
    SELECT f.kept_cursor FROM pyxp.xp_ledger_forks f
     WHERE p_after > f.kept_cursor AND (p_after >> 24) < f.resumed_group
    UNION ALL
    SELECT k.kept FROM (SELECT pyxp.kept_cursor(pyxp.highest_ledger_xid()) AS kept) k
     WHERE pyxp.ledger_timeline() <> pyxp.current_timeline() AND p_after > k.kept
    LIMIT 1
$$;
-- Each identity column's sequence of pyxp's tables, with the highest id its
-- table holds (the ledger's: archived ones too), where it stands, and
-- whether it is behind its table.
CREATE FUNCTION pyxp.identity_sequences(OUT sequence regclass, OUT label text, OUT highest bigint,
                                        OUT last_value bigint, OUT is_called boolean, OUT behind boolean)
RETURNS SETOF record
LANGUAGE plpgsql
AS $$
DECLARE
    v record;
BEGIN
    FOR v IN
        SELECT s.oid::regclass AS seq, 'pyxp.' || s.relname AS name, c.oid::regclass AS owner, a.attname AS col
          FROM pg_catalog.pg_depend d
          JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
          JOIN pg_catalog.pg_class c ON c.oid = d.refobjid
          JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = d.refobjsubid
         WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
           AND d.deptype = 'i' AND s.relnamespace = 'pyxp'::regnamespace
         ORDER BY s.relname
    LOOP
        sequence := v.seq;
        label := v.name;
        EXECUTE format('SELECT max(%I) FROM %s', v.col, v.owner) INTO highest;
        IF v.owner = 'pyxp.xp_transactions'::regclass THEN
            highest := greatest(highest, (SELECT max(a.last_transaction_id) FROM pyxp.xp_ledger_archives a));
        END IF;
        EXECUTE format('SELECT last_value, is_called FROM %s', v.seq) INTO last_value, is_called;
        highest := coalesce(highest, 0);
        behind := highest > last_value OR (highest = last_value AND NOT is_called);  -- nextval would give a held id
        RETURN NEXT;
    END LOOP;
END
$$;
-- Its columns change (the timelines): dropped and created again.
DROP FUNCTION pyxp.adopt_cluster();

-- Makes the ledger this cluster's where it is not (one row; none when it is).
-- Owner only. It is not, when the ledger names another cluster or another
-- timeline of this one, or when what it holds runs ahead of this cluster:
-- a feed group, a checkpoint's
-- xmin or an archive's floor at or above this cluster's next transaction id
-- (as the ledger counts it), or an identity sequence behind its table's
-- highest id. Its name is no proof: a physical clone promoted to run on its
-- own keeps the system identifier, and rows replicated back to a cluster
-- after a failback carry the other one's ids (a re-test of 0032 reused ids
-- both ways). Then, holding every award (SHARE ROW EXCLUSIVE on
-- xp_balances, the lock protocol of sql/04_rulesets.sql) and every move or
-- archive (pyxp.lock_ledger_partitions):
--   * xid_offset: the highest transaction id the ledger holds, plus the
--     margin below, less the oldest of this cluster that may still write
--     it (this transaction's, or an older one running here), plus 1; on
--     this cluster, never below the offset the ledger had (plus the
--     margin); 0 on a new cluster whose ids already run higher. From then
--     on the ledger counts this cluster's ids plus it (pyxp.ledger_xid):
--     every new group is above every old one, so a consumer's cursor goes
--     on, exactly once, and the incremental audit covers the new rows. The
--     order of this cluster's ids is kept: the feed's and the checkpoints'
--     proofs hold as they are.
--   * the margin, pyxp.fork_margin() (2^31) for each timeline passed, at
--     most 4 (one for a copy, or rows ahead), where the ledger holds rows and may
--     have left a history behind: a new timeline of this cluster, a copy,
--     rows ahead of it. The history left may have gone on (the
--     rows of a primary a promoted standby had not received; those after a
--     recovery's target, or after a dump was taken), and consumers and
--     clients hold its cursors and ids, which this database cannot see.
--     Every new group starts at least the margin above what the ledger
--     holds and above this timeline's ids before: a cursor handed out
--     within the margin past what the ledger kept is refused (PX033,
--     pyxp.forked_cursor), not answered with a skip. One row of
--     xp_ledger_forks records it.
--   * every sequence of a pyxp table's identity column is advanced past
--     the highest id the table holds (the ledger's: archived ones too),
--     and by the margin past its own value too where it is applied (a lost
--     history's ids are not handed out again: a reversal of one is refused
--     as unknown, not applied to another wallet's row);
--   * pyxp.ledger_cluster(), pyxp.ledger_timeline() and pyxp.xid_offset()
--     are written anew (their callers' cached plans are invalidated with
--     them).
-- It runs twice at once when two writers meet a new timeline together: the
-- second, once it has the locks, finds nothing left to do.
-- A database subscribing to pyxp's tables (pyxp.subscribes_to_the_ledger)
-- is a copy still being written by its publisher: its ledger is named
-- cluster 0, which no cluster is (every write and read of the feed refuses,
-- PX032), until an adoption once the subscription is dropped (the
-- switchover). Migration 0032 runs this at its end: a subscriber that
-- installs it is not adopted early.
CREATE FUNCTION pyxp.adopt_cluster()
RETURNS TABLE (previous_cluster bigint, this_cluster bigint, xid_offset bigint, sequences_advanced text[],
               previous_timeline integer, this_timeline integer)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET lock_timeout = '10s'  -- (recalculate_levels': never queue every award behind an open transaction)
AS $$
DECLARE
    v_this bigint;
    v_timeline integer;
    v_locked boolean := false;
    v_highest numeric;
    v_oldest numeric;
    v_behind boolean;
    v_margin bigint := 0;
    v_sequence record;
    v_snapshot pg_snapshot;
BEGIN
    BEGIN
        v_this := (pg_control_system()).system_identifier;
    EXCEPTION WHEN insufficient_privilege THEN
        v_this := NULL;  -- (a service that hides it: nothing is refused)
    END;
    IF pyxp.subscribes_to_the_ledger() THEN
        v_this := 0;  -- a subscriber: not this cluster's until its switchover
    END IF;
    IF has_function_privilege('pg_catalog.pg_walfile_name(pg_lsn)', 'EXECUTE')
       AND has_function_privilege('pg_catalog.pg_current_wal_insert_lsn()', 'EXECUTE') THEN
        v_timeline := pyxp.current_timeline();
    END IF;  -- (else not known: nothing compares it)
    <<look>>
    LOOP
        v_highest := pyxp.highest_ledger_xid();
        v_behind := EXISTS (SELECT FROM pyxp.identity_sequences() q WHERE q.behind);
        -- Nothing to do (looked at again under the locks: another adoption,
        -- a writer's on the same new timeline, may have committed meanwhile).
        IF pyxp.ledger_cluster() IS NOT DISTINCT FROM v_this AND pyxp.ledger_timeline() IS NOT DISTINCT FROM v_timeline
           AND NOT v_behind
           AND coalesce(v_highest, 0) < pyxp.ledger_xid(pg_snapshot_xmax(pg_current_snapshot()))::text::numeric THEN
            RETURN;
        END IF;
        EXIT look WHEN v_locked;
        PERFORM pyxp.require_read_committed();
        LOCK TABLE pyxp.xp_balances IN SHARE ROW EXCLUSIVE MODE;
        PERFORM pyxp.lock_ledger_partitions();
        v_locked := true;
    END LOOP;
    -- The oldest transaction of this cluster that may still write: this one,
    -- one the snapshot saw running, or one at or above its xmax (a snapshot
    -- lists the running ids below its xmax only: a batch that took its id
    -- before this one and waits for the locks above was left out, and its
    -- rows landed below the fork's resumed_group: a re-test of 0033).
    v_snapshot := pg_current_snapshot();
    v_oldest := least(pg_current_xact_id()::text::numeric,
                      pyxp.oldest_running_here(v_snapshot)::text::numeric,
                      pg_snapshot_xmax(v_snapshot)::text::numeric);
    previous_cluster := pyxp.ledger_cluster();
    this_cluster := v_this;
    previous_timeline := pyxp.ledger_timeline();
    this_timeline := v_timeline;
    -- A history may have been left behind (the margin, above): a new
    -- timeline, a copy, rows ahead of this cluster. Not the first adoption
    -- of a ledger with no rows, nor the first record of its timeline.
    -- One margin per timeline passed, at most 4: a ledger still naming
    -- timeline 1 on timeline 3 may have been adopted on timeline 2 by writes
    -- this server never received (its standby was cut off first), whose ids
    -- ran up to a margin past that adoption's (a re-test of 0033: a second
    -- failover took them again). At most 4: timeline numbers also jump
    -- without writes (recovery attempts abandoned), and each margin spends
    -- one of the 256 the cursors hold (a review).
    IF v_highest IS NOT NULL
       AND (previous_cluster IS DISTINCT FROM v_this OR previous_timeline <> v_timeline
            OR v_highest >= pyxp.ledger_xid(pg_snapshot_xmax(pg_current_snapshot()))::text::numeric) THEN
        v_margin := pyxp.fork_margin()
                    * CASE WHEN previous_cluster IS NOT DISTINCT FROM v_this AND previous_timeline < v_timeline
                           THEN least(v_timeline - previous_timeline, 4) ELSE 1 END;
    END IF;
    IF v_margin > 0 OR previous_cluster IS DISTINCT FROM v_this THEN
        adopt_cluster.xid_offset := greatest(coalesce(v_highest, 0) + v_margin + 1 - v_oldest,
                                             CASE WHEN previous_cluster IS NOT DISTINCT FROM v_this
                                                  THEN pyxp.xid_offset() + v_margin ELSE 0 END,
                                             0);
    ELSE
        adopt_cluster.xid_offset := pyxp.xid_offset();  -- (the timeline recorded, or a sequence behind)
    END IF;
    -- Cursors are a group times 2^24 in a bigint: groups stay below 2^39. An
    -- adoption that would start them within a margin of it is refused
    -- (nothing written; a re-test of 0033 put a cluster on timeline 257, and
    -- the new rows' cursors wrapped negative, before the old ones). Before
    -- the sequences move: setval is not undone by a rollback (a third check
    -- found every refused write moving them 2^39).
    IF v_oldest + adopt_cluster.xid_offset >= 549755813888 - pyxp.fork_margin() THEN
        RAISE EXCEPTION 'adopting this ledger would number its transaction ids from %, past what its change feed''s cursors can hold (2^39, less a margin of 2^31)',
                        v_oldest + adopt_cluster.xid_offset
            USING ERRCODE = 'PX031',
                  DETAIL = format('offset %s, %s margins of 2^31 (timeline %s after %s)', adopt_cluster.xid_offset,
                                  v_margin / pyxp.fork_margin(), v_timeline, previous_timeline),
                  HINT = 'see README "Failovers and point-in-time recovery", its limits: this ledger cannot follow another timeline';
    END IF;
    sequences_advanced := '{}';
    FOR v_sequence IN
        SELECT q.*, CASE WHEN q.sequence = 'pyxp.xp_ledger_forks_fork_id_seq'::regclass THEN 0  -- (its rows are adoptions')
                         ELSE v_margin END AS step
          FROM pyxp.identity_sequences() q
    LOOP
        IF v_sequence.step > 0 OR v_sequence.behind THEN
            PERFORM setval(v_sequence.sequence, greatest(v_sequence.highest, v_sequence.last_value) + v_sequence.step);
            sequences_advanced := sequences_advanced || v_sequence.label;
        END IF;
    END LOOP;
    IF v_margin > 0 THEN
        INSERT INTO pyxp.xp_ledger_forks (previous_cluster, this_cluster, previous_timeline, this_timeline,
                                          kept_cursor, resumed_group, margin)
        VALUES (previous_cluster, v_this, previous_timeline, v_timeline, pyxp.kept_cursor(v_highest),
                v_oldest + adopt_cluster.xid_offset, v_margin);
    END IF;
    EXECUTE format('CREATE OR REPLACE FUNCTION pyxp.ledger_cluster() RETURNS bigint LANGUAGE sql STABLE PARALLEL SAFE '
                   'AS %L', format('SELECT %s::bigint', coalesce(v_this::text, 'NULL')));
    EXECUTE format('CREATE OR REPLACE FUNCTION pyxp.ledger_timeline() RETURNS integer LANGUAGE sql STABLE PARALLEL SAFE '
                   'AS %L', format('SELECT %s::integer', coalesce(v_timeline::text, 'NULL')));
    EXECUTE format('CREATE OR REPLACE FUNCTION pyxp.xid_offset() RETURNS bigint LANGUAGE sql STABLE PARALLEL SAFE '
                   'AS %L', format('SELECT %s::bigint', adopt_cluster.xid_offset));
    RETURN NEXT;
END
$$;
-- A new timeline of this cluster (a failover, a point-in-time recovery):
-- adopted (pyxp.adopt_cluster) by the first write on it, before the write
-- takes any lock of an award (pyxp.writing_ruleset, which tests the
-- timelines inline first: a call per award costs more than the test), and
-- by the other writing functions that name the cluster, or take their own
-- locks. Nothing when the ledger is on this timeline. Owner only. A ledger of another
-- cluster is left to pyxp.require_ledger_cluster (PX032: pyxp db upgrade
-- adopts a copy). READ COMMITTED, as every writer (PX025 otherwise).
CREATE FUNCTION pyxp.follow_timeline()
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$
BEGIN
    IF pyxp.ledger_timeline() <> pyxp.current_timeline()
       AND NOT coalesce(pyxp.ledger_cluster() = 0 OR pyxp.ledger_cluster() <> (pg_control_system()).system_identifier,
                        false) THEN
        PERFORM FROM pyxp.adopt_cluster();
    END IF;
END
$$;
-- Where every writing function starts (SPEC 4, lock protocol of
-- 04_rulesets.sql): READ COMMITTED only (PX025), the ledger's timeline
-- followed (pyxp.follow_timeline: after a failover or a point-in-time
-- recovery, before any lock of an award is taken), ROW EXCLUSIVE on
-- xp_balances before the active ruleset is read, then the active ruleset
-- (PX020 when none), its balance floor, period zone and whether it caps.
CREATE OR REPLACE FUNCTION pyxp.writing_ruleset(OUT ruleset_id bigint, OUT balance_floor bigint, OUT timezone text,
                                     OUT has_caps boolean)
LANGUAGE plpgsql
AS $$
BEGIN
    IF current_setting('transaction_isolation') NOT IN ('read committed', 'read uncommitted') THEN  -- no query
        PERFORM pyxp.require_read_committed();  -- PX025
    END IF;
    IF pyxp.ledger_timeline() <> pyxp.current_timeline() THEN  -- (no query)
        PERFORM pyxp.follow_timeline();  -- a new timeline: adopted before any award takes its locks (0033)
    END IF;
    LOCK TABLE pyxp.xp_balances IN ROW EXCLUSIVE MODE;
    SELECT r.ruleset_id, r.balance_floor, r.timezone, r.has_caps INTO ruleset_id, balance_floor, timezone, has_caps
      FROM pyxp.rulesets r WHERE r.is_active;
    IF ruleset_id IS NULL THEN
        PERFORM pyxp.active_ruleset_id();  -- PX020
    END IF;
END
$$;
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
    v_problem record;
BEGIN
    IF coalesce(cardinality(v_rows), 0) = 0 THEN
        RETURN;
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
-- Owner (SPEC 13): activates ruleset version ruleset_id and appends, for each
-- wallet whose simulated total differs from its balance, one
-- RULES_ADJUSTMENT row of the difference (metadata names the version), so
-- that every balance equals pyxp.simulate_rules(ruleset_id). One
-- transaction: SHARE ROW EXCLUSIVE on rulesets, then on xp_balances (the
-- ruleset-switch lock of sql/04_rulesets.sql, in install_ruleset's order),
-- so awards in flight finish before the simulation reads the ledger and new
-- ones wait for the commit: none is lost or counted twice. The rows go
-- through the one writer (pyxp.append_rows), each a claim of the key
-- rules.adjustment:<ruleset_id>:<transaction id>.<application>:<wallet>
-- (<application>: pyxp.retroactive_applications; before 0027, none).
-- Idempotent by the numbers: applying a version again adds only the
-- differences left (none if nothing changed since; after a reversal, or
-- another version applied meanwhile, what brings every balance back to
-- this version's simulation).
CREATE OR REPLACE FUNCTION pyxp.apply_rules_retroactively(ruleset_id bigint)
RETURNS TABLE (ruleset_id_applied bigint, name text, version integer, already_applied boolean,
               wallets_adjusted bigint, xp_adjusted numeric, balances_changed bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET lock_timeout = '10s'  -- see recalculate_levels: never queue every award behind an open transaction
SET jit = off
AS $$
DECLARE
    v_ruleset pyxp.rulesets := pyxp.checked_ruleset(apply_rules_retroactively.ruleset_id);
    v_levels bigint;
    v_chunk pyxp.pending_row[];
    v_wallets bigint := 0;
    v_xp numeric := 0;
    v_call bigint := nextval('pyxp.retroactive_applications');
BEGIN
    PERFORM pyxp.require_read_committed();
    -- (a failover or a point-in-time recovery: the ids move past the history
    -- left, 0033; a review found this writer, which takes its own locks
    -- rather than pyxp.writing_ruleset's, writing there without it)
    PERFORM pyxp.follow_timeline();
    -- Installers' lock first, then the awards' (the order of install_ruleset).
    LOCK TABLE pyxp.rulesets IN SHARE ROW EXCLUSIVE MODE;
    LOCK TABLE pyxp.xp_balances IN SHARE ROW EXCLUSIVE MODE;
    v_levels := pyxp.activate_ruleset(v_ruleset.ruleset_id);
    -- Wallets in order, 10,000 per call of the writer.
    FOR v_chunk IN
        SELECT array_agg(ROW(0, d.user_wallet, d.key,
                             jsonb_build_object('action', 'RULES_ADJUSTMENT', 'wallet', d.user_wallet,
                                                'ruleset_id', v_ruleset.ruleset_id),
                             'RULES_ADJUSTMENT', d.delta, NULL, false, NULL, NULL, NULL,
                             jsonb_build_object('ruleset_id', v_ruleset.ruleset_id, 'ruleset', v_ruleset.name,
                                                'version', v_ruleset.version, 'total_xp_before', d.now_xp,
                                                'reason', 'retroactive application of the rules'),
                             NULL, 0)::pyxp.pending_row ORDER BY d.user_wallet)
          FROM (SELECT s.user_wallet, s.total_xp_then - s.total_xp_now AS delta, s.total_xp_now AS now_xp,
                       format('rules.adjustment:%s:%s.%s:%s', v_ruleset.ruleset_id, pyxp.ledger_xid(pg_current_xact_id()),
                              v_call, s.user_wallet) AS key,
                       (row_number() OVER (ORDER BY s.user_wallet) - 1) / 10000 AS chunk
                  FROM pyxp.simulated_totals(v_ruleset.ruleset_id) s
                 WHERE pyxp.checked_simulated_total(s.user_wallet, s.total_xp_then) <> s.total_xp_now) d
         GROUP BY d.chunk
         ORDER BY d.chunk
    LOOP
        PERFORM pyxp.counted_transaction_rows(cardinality(v_chunk));  -- the feed's bound (sql/11_changes.sql)
        PERFORM FROM pyxp.append_rows(v_ruleset.ruleset_id, v_ruleset.balance_floor, v_ruleset.timezone,
                                      v_ruleset.has_caps, v_chunk, true);
        v_wallets := v_wallets + cardinality(v_chunk);
        v_xp := v_xp + (SELECT sum(c.xp_amount) FROM unnest(v_chunk) c);
    END LOOP;
    IF v_wallets > 0 THEN
        UPDATE pyxp.rulesets r SET applied_retroactively_at = now() WHERE r.ruleset_id = v_ruleset.ruleset_id;
    END IF;
    RETURN QUERY SELECT v_ruleset.ruleset_id, v_ruleset.name, v_ruleset.version, v_wallets = 0, v_wallets, v_xp,
                        v_levels;
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
            (SELECT (g.feed_xid::text::bigint << 24)
                    + CASE WHEN g.rank > 16777215 THEN pyxp.raised_feed_overflow(g.feed_xid) ELSE g.rank END,
                    g.id, g.user_wallet, g.transaction_type,
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
            (SELECT (t.feed_xid::text::bigint << 24)
                    + CASE WHEN r.rank > 16777215 THEN pyxp.raised_feed_overflow(t.feed_xid) ELSE r.rank END, t.*
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
-- Installs a compiled ruleset (from pyxp.ruleset_config) and, unless
-- activate is false, makes it active. Same content as the active version:
-- nothing changes. Same content as an older version of that name: that
-- version is (re-)activated. Otherwise a new version (max + 1) is created.
-- Activation re-derives every balance's level. Old versions stay: ledger
-- rows keep their rule ids. activate => false installs a version to
-- simulate (pyxp.simulate_rules) or to apply later.
CREATE OR REPLACE FUNCTION pyxp.install_ruleset(definition jsonb, source text, activate boolean DEFAULT true)
RETURNS TABLE (ruleset_id bigint, name text, version integer, created boolean, activated boolean,
               balances_changed bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET lock_timeout = '10s'  -- see recalculate_levels: never queue every award behind an open transaction
AS $$
DECLARE
    v_name text := install_ruleset.definition ->> 'name';
    v_hash text := encode(sha256(convert_to(install_ruleset.definition::text, 'UTF8')), 'hex');
    v_found pyxp.rulesets;
    v_id bigint;
    v_created boolean := false;
BEGIN
    PERFORM pyxp.check_ruleset_definition(install_ruleset.definition);
    IF install_ruleset.source IS NULL THEN
        RAISE EXCEPTION 'invalid ruleset definition %: source is NULL', quote_literal(v_name)
            USING ERRCODE = 'PX024', HINT = 'pass the TOML text the definition was compiled from';
    END IF;
    PERFORM pyxp.require_read_committed();
    PERFORM pyxp.follow_timeline();  -- (a failover or a point-in-time recovery: the ids move past the history left, 0033)
    PERFORM pyxp.require_ledger_cluster();  -- (PX032: ids of the rulesets' sequence may be taken, 0032)
    -- Installers queue on the rulesets table (version numbers); awards only
    -- read it, so an install that does not activate holds no award. The
    -- awards' lock is taken only to activate (pyxp.activate_ruleset).
    LOCK TABLE pyxp.rulesets IN SHARE ROW EXCLUSIVE MODE;
    IF install_ruleset.activate THEN
        LOCK TABLE pyxp.xp_balances IN SHARE ROW EXCLUSIVE MODE;
    END IF;

    SELECT * INTO v_found FROM pyxp.rulesets r WHERE r.name = v_name AND r.content_hash = v_hash;
    IF v_found.is_active OR (v_found.ruleset_id IS NOT NULL AND NOT install_ruleset.activate) THEN
        RETURN QUERY SELECT v_found.ruleset_id, v_found.name, v_found.version, false, false, 0::bigint;
        RETURN;
    END IF;

    IF v_found.ruleset_id IS NOT NULL THEN
        v_id := v_found.ruleset_id;
    ELSE
        INSERT INTO pyxp.rulesets (name, version, content_hash, definition, source, description, balance_floor,
                                   timezone, has_caps)
        SELECT v_name,
               coalesce((SELECT max(r.version) FROM pyxp.rulesets r WHERE r.name = v_name), 0) + 1,
               v_hash, install_ruleset.definition, install_ruleset.source,
               install_ruleset.definition ->> 'description', d.balance_floor, d.timezone, d.has_caps
          FROM pyxp.definition_settings(install_ruleset.definition) d
        RETURNING rulesets.ruleset_id INTO v_id;

        INSERT INTO pyxp.level_thresholds (ruleset_id, level, threshold, increment, is_last)
        SELECT v_id, l.* FROM pyxp.definition_levels(install_ruleset.definition) l;

        INSERT INTO pyxp.rules (ruleset_id, position, action, event, campaign_types, condition,
                                formula, xp_constant, xp_coefficients, description, cap_max_xp, cap_per, cap_group)
        SELECT v_id, r.* FROM pyxp.definition_rules(install_ruleset.definition) r;
        v_created := true;
    END IF;

    IF NOT install_ruleset.activate THEN
        RETURN QUERY SELECT r.ruleset_id, r.name, r.version, v_created, false, 0::bigint
                       FROM pyxp.rulesets r WHERE r.ruleset_id = v_id;
        RETURN;
    END IF;
    RETURN QUERY
        SELECT r.ruleset_id, r.name, r.version, v_created, true, pyxp.activate_ruleset(v_id)
        FROM pyxp.rulesets r WHERE r.ruleset_id = v_id;
END
$$;
-- Seed: agency-client 'register'. A pending registration: the agency's B2C
-- client will earn the onboarding XP when it first signs in. If pyxp knows
-- the campaign, it must be an AGENCY_B2C campaign created by that agency
-- (PX022); if it does not, the registry records it as one (0023: another
-- wallet's creation of it is then refused). The same (agency, email,
-- campaign) again changes nothing and returns the existing row, whatever the
-- registry says since. A client already onboarded gets the row granted at
-- once, without XP again.
CREATE OR REPLACE FUNCTION pyxp.register_agency_client(
    agency_wallet text, client_email text, campaign_id text, company_name text DEFAULT NULL)
RETURNS SETOF pyxp.agency_b2c_clients
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_agency text := pyxp.checked_wallet(register_agency_client.agency_wallet, 'agency wallet');
    v_email text := pyxp.checked_email(register_agency_client.client_email);
    v_before text[] := pyxp.email_before_0028(register_agency_client.client_email, v_email);
    v_campaign text := pyxp.checked_identifier('campaign id', register_agency_client.campaign_id);
    v_company text;
    v_known pyxp.campaigns;
    v_approved text;     -- the creator an approval of the campaign named, if any
    v_onboarded record;  -- the client's onboarding, if any: its request
BEGIN
    IF register_agency_client.company_name IS NOT NULL THEN  -- blank: none
        v_company := nullif(pyxp.cleaned_text('company name', register_agency_client.company_name, 200,
                                              'PX016', false), '');
        IF v_company IS NOT NULL THEN
            v_company := pyxp.checked_identifier('company name', v_company, 200);
        END IF;
    END IF;
    PERFORM pyxp.require_read_committed();
    PERFORM pyxp.follow_timeline();  -- (a failover or a point-in-time recovery: the ids move past the history left, 0033)
    PERFORM pyxp.require_ledger_cluster();  -- (PX032: ids of the registrations' sequence may be taken, 0032)
    -- The same registration again: its row, nothing changed (SPEC 5),
    -- whatever the registry says since.
    RETURN QUERY
        SELECT a.* FROM pyxp.agency_b2c_clients a
         WHERE a.agency_wallet = v_agency AND a.client_email = ANY (v_email || v_before) AND a.campaign_id = v_campaign;
    IF FOUND THEN
        RETURN;
    END IF;
    -- A campaign pyxp does not know becomes the agency's AGENCY_B2C campaign
    -- (0023), so that a creation by another wallet is refused; the registry
    -- row is locked until commit (a concurrent creation waits, then sees it).
    INSERT INTO pyxp.campaigns (campaign_id, campaign_type, creator_wallet)
    VALUES (v_campaign, 'AGENCY_B2C', v_agency)
    ON CONFLICT ON CONSTRAINT campaigns_pkey DO NOTHING;
    SELECT * INTO STRICT v_known FROM pyxp.campaigns c WHERE c.campaign_id = v_campaign FOR UPDATE;
    IF v_known.campaign_type <> 'AGENCY_B2C' OR v_known.creator_wallet <> v_agency THEN
        RAISE EXCEPTION 'campaign % is a % campaign created by %, not an AGENCY_B2C campaign of %',
                        v_campaign, v_known.campaign_type, v_known.creator_wallet, v_agency
            USING ERRCODE = 'PX022', HINT = 'register clients on the agency''s own AGENCY_B2C campaigns';
    END IF;
    -- An approval names the campaign's creator too, and may precede its
    -- creation: it must be this agency (0028; a hostile test saw an approval
    -- pay +100 to one wallet and a registration make the campaign another's,
    -- which then nobody could create). Serialised with approvals and
    -- creations on the campaign's subject lock (see award_campaign_creation),
    -- taken after the registry row's, as a creation does.
    PERFORM pyxp.lock_subject('campaign:' || v_campaign);
    SELECT r.inputs ->> 'wallet' INTO v_approved
      FROM pyxp.recorded_request('campaign.approved:' || v_campaign) r WHERE r.same_key;
    IF v_approved <> v_agency THEN
        RAISE EXCEPTION 'campaign % was approved for creator %, not the agency %', v_campaign, v_approved, v_agency
            USING ERRCODE = 'PX022', HINT = 'register clients on the agency''s own AGENCY_B2C campaigns';
    ELSIF v_known.creator_wallet IS NULL THEN  -- its type recorded by a vote or completion: now its agency
        UPDATE pyxp.campaigns c SET creator_wallet = v_agency WHERE c.campaign_id = v_campaign;
    END IF;

    PERFORM pyxp.lock_subject('client_email:' || v_email);
    SELECT r.inputs ->> 'wallet' AS wallet, r.created_at, e.email INTO v_onboarded
      FROM unnest(v_email || v_before) WITH ORDINALITY e(email, n)
     CROSS JOIN LATERAL pyxp.recorded_request('client.onboarded:' || e.email) r
     ORDER BY e.n
     LIMIT 1;
    IF v_onboarded.wallet = v_agency THEN  -- as onboard_agency_client refuses it the other way round
        RAISE EXCEPTION 'client % was onboarded with wallet %, the registering agency''s', v_email, v_agency
            USING ERRCODE = 'PX021', HINT = 'the onboarding XP goes to the client''s own wallet, never the agency';
    END IF;
    -- Stored as the email's onboarding spelt it (before 0028, maybe otherwise).
    v_email := coalesce(v_onboarded.email, v_email);
    INSERT INTO pyxp.agency_b2c_clients AS a (agency_wallet, client_email, campaign_id, company_name,
                                              client_wallet, xp_granted, onboarded_at)
    VALUES (v_agency, v_email, v_campaign, v_company, v_onboarded.wallet,
            v_onboarded.created_at IS NOT NULL, v_onboarded.created_at)
    ON CONFLICT ON CONSTRAINT agency_b2c_clients_agency_wallet_client_email_campaign_id_key DO NOTHING;

    RETURN QUERY
        SELECT a.* FROM pyxp.agency_b2c_clients a
         WHERE a.agency_wallet = v_agency AND a.client_email = v_email AND a.campaign_id = v_campaign;
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
    PERFORM pyxp.follow_timeline();  -- (a failover or a point-in-time recovery: the ids move past the history left, 0033)
    PERFORM pyxp.require_ledger_cluster();  -- (PX032: its snapshot's xmin would be another cluster's, 0032)
    LOCK TABLE pyxp.xp_audit_checkpoints IN EXCLUSIVE MODE;
    v_since := pyxp.last_checkpoint_xmin() IS NOT NULL;
    WITH problems AS MATERIALIZED (
        SELECT c.check_name, c.user_wallet, c.detail FROM pyxp.chain_problems(v_since, false) c
        UNION ALL
        SELECT r.check_name, r.user_wallet, r.detail FROM pyxp.row_problems(v_since) r
    ), verified AS MATERIALIZED (
        SELECT w.user_wallet, w.last_wallet_seq, w.total_xp, w.from_seq
          FROM pyxp.audited_wallets(v_since) w
         WHERE w.last_wallet_seq > 0 AND w.last_wallet_seq > w.from_seq
    ), header AS (
        INSERT INTO pyxp.xp_audit_checkpoints AS k (snapshot_xmin, wallets_verified, rows_verified)
        SELECT pyxp.ledger_xid(pg_snapshot_xmin(pg_current_snapshot())), count(*),
               coalesce(sum(v.last_wallet_seq - v.from_seq), 0)
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
    PERFORM pyxp.ledger_unmoved();  -- (40001 after a read older than an archive: nothing recorded)
    IF v_problems > 0 THEN
        RAISE EXCEPTION 'the ledger since the last checkpoint has % inconsistencies; no checkpoint recorded',
                        v_problems
            USING ERRCODE = 'PX028',
                  DETAIL = 'first: ' || v_first,
                  HINT = 'SELECT * FROM pyxp.audit_since_checkpoint() lists them';
    END IF;
END
$$;
-- Owner operation (monthly, after pyxp.create_ledger_partitions): archives
-- every partition of the ledger that ends at or before archived_before (at
-- most the start of this month, UTC), except the default partition. One row
-- per partition archived; none when there is nothing to archive. In order:
--   1. EXCLUSIVE on xp_audit_checkpoints (one archive or checkpoint at a
--      time), SHARE on rulesets (no ruleset activated meanwhile), the
--      lock of the ledger's partitions (pyxp.lock_ledger_partitions: no move meanwhile;
--      PX030 for rows of a month without a partition in the range), then SHARE
--      on those partitions: no row can be added to them meanwhile (only a
--      transaction that began before their range ended could: one that
--      wrote to them is waited for; one that had not yet written does so
--      after the archive, and its rows, dated in the archived range, go to
--      the default partition: in the ledger, audited and in the feed, but
--      never archived, see README "Retention")
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
CREATE OR REPLACE FUNCTION pyxp.archive_ledger_partitions(archived_before timestamptz)
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
    v_open record;
BEGIN
    PERFORM pyxp.require_read_committed();
    PERFORM pyxp.follow_timeline();  -- (a failover or a point-in-time recovery: the ids move past the history left, 0033)
    PERFORM pyxp.require_ledger_cluster();  -- (PX032: its feed floor counts this cluster's ids, 0032)
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
    -- Nor while rows are moved out of the default partition (the lock of
    -- pyxp.create_ledger_partitions, sql/12_partitions.sql: a move that read
    -- the horizon before this archive committed made a month it archived
    -- again, a hostile test, 0030).
    PERFORM pyxp.lock_ledger_partitions();
    -- Rows of a month that had no partition (in the default partition),
    -- dated in the range asked for: it would leave them behind, dated before
    -- its horizon, where no partition of theirs can be made and no archive
    -- takes them (0029; before, they stayed there for good). The range asked
    -- for, not the partitions found (0030: with no partition for September
    -- and October, an archive to November took August and said nothing).
    SELECT d.id, d.created_at INTO v_problem
      FROM pyxp.xp_transactions_default d
     WHERE d.created_at >= coalesce(pyxp.archive_horizon(), '-infinity')
       AND d.created_at < archive_ledger_partitions.archived_before
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'transaction % (%) is in the default partition (its month had no partition), in the range to archive',
                        v_problem.id, v_problem.created_at
            USING ERRCODE = 'PX030',
                  HINT = 'run pyxp.create_ledger_partitions() (pyxp db create-partitions) first: it moves such rows into their month''s partition';
    END IF;
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
    SELECT r.id, r.reverses, o.created_at, o.tableoid::regclass AS partition,
           (SELECT c.relname::text FROM pg_catalog.pg_class c WHERE c.oid = o.tableoid)
           IN (SELECT p.partition_name FROM pyxp.ledger_partitions() p WHERE p.is_default) AS in_default
      INTO v_problem
      FROM pyxp.xp_transactions r
      JOIN pyxp.xp_transactions o ON o.id = r.reverses AND NOT (o.tableoid = ANY (v_oids))
     WHERE r.tableoid = ANY (v_oids) AND r.created_at < v_ends[cardinality(v_ends)] AND r.reverses IS NOT NULL
     LIMIT 1;
    -- A group of these rows that a transaction running now may still add a
    -- row to (a transaction with a lower id chains a wallet's next row into
    -- its last row's group, sql/11_changes.sql): the feed would rank that row
    -- at or below the floor this archive sets, where no consumer reads (0027,
    -- a hostile test: a row delivered to nobody).
    -- (The transactions of this database only, as the feed counts them.)
    SELECT t.feed_xid AS feed_group, o.oldest INTO v_open
      FROM (SELECT pyxp.ledger_xid(pyxp.oldest_running_here(pg_current_snapshot())) AS oldest) o
      JOIN pyxp.xp_transactions t
        ON t.tableoid = ANY (v_oids) AND t.created_at < v_ends[cardinality(v_ends)] AND t.feed_xid >= o.oldest
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'rows to archive are in feed group %, which transaction % or a later one, running now, may still add to',
                        v_open.feed_group, v_open.oldest
            USING ERRCODE = 'PX030',
                  HINT = 'archive again once the transactions running now have ended (pg_stat_activity)';
    END IF;
    IF v_problem.id IS NOT NULL THEN
        -- (A row in the default partition, written while its month had no
        -- partition, is never archived: neither is the month of a reversal of
        -- it. Known limit, README "Retention".)
        RAISE EXCEPTION 'reversal % would be archived, but transaction % that it reverses (%) would stay',
                        v_problem.id, v_problem.reverses, v_problem.created_at
            USING ERRCODE = 'PX030',
                  HINT = CASE WHEN v_problem.in_default
                              THEN format('transaction %s is in the default partition %s (its month had no partition), '
                                          'which no archive takes: archive up to the month before reversal %s',
                                          v_problem.reverses, v_problem.partition, v_problem.id)
                              ELSE 'archive up to a later month, one that holds the reversed transaction too' END;
    END IF;
    INSERT INTO pyxp.xp_ledger_archives AS a (archived_before, partitions, partition_oids, rows_archived,
                                              wallets_opened, last_transaction_id, timezone, checkpoint_id,
                                              feed_floor)
    VALUES (v_ends[cardinality(v_ends)], v_names, v_oids,
            (SELECT sum(c) FROM unnest(v_counts) c), 0, v_top_id, v_zone, v_checkpoint,
            -- the cursor (sql/11_changes.sql) of the last row of the highest
            -- group holding an archived row, its rows ranked as the feed
            -- ranks them now, archived or not (after the DETACH the rows
            -- left in it would be ranked anew: a consumer must be past all of
            -- it); or of the last archived row from before 0003. (Before
            -- 0026: that group's cursor + 2^24 - 1, which no row has: a
            -- consumer that had read every archived row was refused for good.)
            (SELECT greatest(a.top_id, (a.top_group::text::bigint << 24)
                                       + (SELECT count(*) FROM pyxp.xp_transactions x WHERE x.feed_xid = a.top_group))
               FROM (SELECT max(t.id) FILTER (WHERE t.feed_xid IS NULL) AS top_id, max(t.feed_xid) AS top_group
                       FROM pyxp.xp_transactions t
                      WHERE t.tableoid = ANY (v_oids) AND t.created_at < v_ends[cardinality(v_ends)]) a))
    RETURNING a.archive_id INTO v_archive;

    -- 3. The openings: of every wallet with archived rows, its count of
    --    them, and the fold of its rows at positions after its previous
    --    opening and up to its highest archived one (a straggler still in
    --    the ledger among them), read before the DETACH, by the wallet's
    --    index range; their time is a reversal's original's.
    WITH tops AS (
        SELECT t.user_wallet, max(t.wallet_seq) AS top_seq, count(*) AS archived,
               -- its last archived row in the feed's order (feed_xid, id)
               (array_agg(t.id ORDER BY t.feed_xid DESC NULLS LAST, t.id DESC))[1] AS top_id,
               max(t.feed_xid) AS top_group
          FROM pyxp.xp_transactions t
         WHERE t.tableoid = ANY (v_oids) AND t.created_at < v_ends[cardinality(v_ends)]
         GROUP BY t.user_wallet
    ), moved AS MATERIALIZED (
        SELECT g.user_wallet, greatest(g.top_seq, o.wallet_seq) AS top_seq, g.archived + coalesce(o.archived_rows, 0) AS archived,
               -- that row's cursor, ranked in its group as the feed ranks it
               -- now (a row from before 0003: its id); in a group an earlier
               -- archive took rows of, its rank then was higher than now (the
               -- rows left were ranked anew, 0027: a consumer was moved past a
               -- row, a hostile test): that group's last cursor, which no
               -- consumer in the group is past
               coalesce((g.top_group::text::bigint << 24)
                        + CASE WHEN g.top_group::text::bigint
                                    <= (SELECT max(a.feed_floor) >> 24 FROM pyxp.xp_ledger_archives a WHERE a.archive_id <> v_archive)
                               THEN 16777215
                               ELSE (SELECT count(*) FROM pyxp.xp_transactions x
                                      WHERE x.feed_xid = g.top_group AND x.id <= g.top_id) END,
                        g.top_id) AS last_cursor,
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
                                                  year_start, year_xp, archive_id, last_cursor)
        SELECT l.user_wallet, l.top_seq, l.total_xp, l.archived, l.last_at,
               l.day_start, coalesce(s.day_xp, 0) + CASE WHEN l.old_day = l.day_start THEN l.old_day_xp ELSE 0 END,
               l.week_start, coalesce(s.week_xp, 0) + CASE WHEN l.old_week = l.week_start THEN l.old_week_xp ELSE 0 END,
               l.month_start, coalesce(s.month_xp, 0) + CASE WHEN l.old_month = l.month_start THEN l.old_month_xp ELSE 0 END,
               l.year_start, coalesce(s.year_xp, 0) + CASE WHEN l.old_year = l.year_start THEN l.old_year_xp ELSE 0 END,
               v_archive, l.last_cursor
          FROM latest l
          LEFT JOIN sums s ON s.user_wallet = l.user_wallet
        ON CONFLICT (user_wallet) DO UPDATE
           SET wallet_seq = excluded.wallet_seq, total_xp = excluded.total_xp, archived_rows = excluded.archived_rows,
               last_at = excluded.last_at, day_start = excluded.day_start, day_xp = excluded.day_xp,
               week_start = excluded.week_start, week_xp = excluded.week_xp, month_start = excluded.month_start,
               month_xp = excluded.month_xp, year_start = excluded.year_start, year_xp = excluded.year_xp,
               archive_id = excluded.archive_id, last_cursor = excluded.last_cursor
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
    -- The guard (sql/12_partitions.sql) lets through these partitions'
    -- DETACH in this transaction only. (A guard installed before 0030, which
    -- a migrating role that is no superuser could not replace, reads
    -- pyxp.archiving and the archive's row instead.)
    PERFORM set_config('pyxp.archiving', array_to_string(v_oids, ','), true);
    PERFORM set_config('pyxp.archiving_xact', pg_current_xact_id()::text, true);
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
    PERFORM set_config('pyxp.archiving_xact', '', true);
END
$$;
COMMENT ON FUNCTION pyxp.adopt_cluster() IS
    'internal: makes a ledger copied from another cluster, or left on another timeline of this one, this cluster''s: its transaction ids'' offset, its sequences, its timeline. Owner only; pyxp db upgrade runs it, and the first write on a new timeline.';
COMMENT ON FUNCTION pyxp.ledger_timeline() IS
    'internal: the timeline of this cluster the ledger was last adopted on (NULL: not known here).';
COMMENT ON FUNCTION pyxp.current_timeline() IS
    'internal: this server''s WAL insertion timeline on a primary; NULL on a standby (nothing compares it there).';
COMMENT ON FUNCTION pyxp.fork_margin() IS
    'internal: how far an adoption that may leave a history behind moves the ledger''s ids past what it holds (2^31).';
COMMENT ON FUNCTION pyxp.highest_ledger_xid() IS
    'internal: the highest transaction id the ledger holds (groups, checkpoints'' xmins, archives'' floors), as it counts them.';
COMMENT ON FUNCTION pyxp.kept_cursor(numeric) IS
    'internal: the last cursor of the feed group of the ledger''s highest transaction id (0: none).';
COMMENT ON FUNCTION pyxp.forked_cursor(bigint) IS
    'internal: the cursor to go on from when this one was handed out by a history this database left (PX033), else NULL.';
COMMENT ON FUNCTION pyxp.identity_sequences() IS
    'internal: each identity sequence of pyxp''s tables, its table''s highest id and where it stands.';
COMMENT ON FUNCTION pyxp.follow_timeline() IS
    'internal: adopts a new timeline of this cluster (a failover, a point-in-time recovery) before a write. Owner only.';
COMMENT ON TABLE pyxp.xp_ledger_forks IS
    'Adoptions that moved the ledger''s ids past a history it may have left (a failover, a point-in-time recovery, a copy): pyxp.changes refuses a cursor between kept_cursor and resumed_group (PX033).';

REVOKE ALL ON FUNCTION pyxp.adopt_cluster(), pyxp.ledger_timeline(), pyxp.current_timeline(),
    pyxp.fork_margin(), pyxp.highest_ledger_xid(), pyxp.kept_cursor(numeric), pyxp.forked_cursor(bigint),
    pyxp.identity_sequences(), pyxp.follow_timeline() FROM PUBLIC;
GRANT SELECT ON pyxp.xp_ledger_forks TO pyxp_reader;

-- The ledger's timeline recorded (nothing else moves on a ledger already
-- this cluster's).
SELECT * FROM pyxp.adopt_cluster();

RESET ROLE;
