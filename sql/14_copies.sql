-- A ledger copied to another PostgreSQL cluster (0032, a hostile test,
-- 2026-11-27). The change feed's groups, the audit checkpoints' snapshot
-- xmins, the archives' feed floors and the openings' cursors are
-- transaction ids of the cluster that wrote them (pyxp.ledger_cluster,
-- sql/05_engine.sql). A physical copy (a streaming standby, pg_basebackup,
-- point-in-time recovery) keeps the cluster, and its ids. A logical one
-- (pg_dump and restore, logical replication and a switchover) and
-- pg_upgrade make a new cluster, whose ids run elsewhere; and logical
-- replication does not carry sequences. What a test found on such copies:
--   * new rows were written in groups below what consumers had read (their
--     cursors then skipped them for good), or, to wallets with rows, in
--     their old groups, which the feed held back for billions of
--     transactions; an old cursor was refused, then accepted once the new
--     ids reached it, and skipped every row written since;
--   * audit_since_checkpoint() and record_audit_checkpoint() left out rows
--     written since the copy (their groups were below the last
--     checkpoint's xmin);
--   * after a switchover the first award got id 1, another wallet's row's:
--     reversing it reversed that row.
-- So the writer, the feed, the checkpoints, the archive, ruleset installs
-- and registrations refuse (PX032, pyxp.require_ledger_cluster) on a
-- cluster that is not the ledger's, until pyxp.adopt_cluster() makes it the
-- ledger's: pyxp db upgrade calls it at the end of every run, and migration
-- 0032 did at install.
--
-- A physical copy that goes on from an earlier point of its history (0033,
-- a hostile test of failovers): a point-in-time recovery, or a standby
-- promoted before it had received its primary's last transactions, starts
-- a new timeline, which hands out again the transaction ids and sequence
-- values the history it left had used. Consumers of the feed holding a
-- cursor of a lost row were refused (PX023), then, once the new ids passed
-- it, skipped every row written on the new timeline below it (retried
-- awards included); and a client reversing the id of a lost award reversed
-- the row that took its id, another wallet's. So the ledger also names its
-- timeline (pyxp.ledger_timeline), the first write on a new one adopts it
-- (pyxp.follow_timeline), and every adoption that may leave a history
-- behind (a new timeline, a copy, rows ahead of this cluster) moves the
-- ledger's ids and sequences a margin past what it holds, and records it
-- (xp_ledger_forks): a cursor between the two is refused with PX033, which
-- names the cursor to go on from.

SET LOCAL ROLE pyxp_owner;

-- Whether a logical replication subscription of this database carries
-- any of pyxp's tables (pg_subscription_rel: the tables it has synced or
-- syncs). One of unrelated tables does not make the ledger a copy (a
-- re-test of 0032: a subscription to a reference table stopped every
-- award). A subscription created without connecting lists no table yet.
CREATE FUNCTION pyxp.subscribes_to_the_ledger()
RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT EXISTS (SELECT FROM pg_catalog.pg_subscription s
                     JOIN pg_catalog.pg_subscription_rel r ON r.srsubid = s.oid
                     JOIN pg_catalog.pg_class c ON c.oid = r.srrelid
                    WHERE s.subdbid = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = current_database())
                      AND c.relnamespace = 'pyxp'::regnamespace)
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
        PERFORM pyxp.hold_awards('pyxp.adopt_cluster');
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

COMMENT ON FUNCTION pyxp.ledger_cluster() IS
    'internal: the system identifier of the cluster whose transaction ids the ledger counts (NULL: unknown here).';
COMMENT ON FUNCTION pyxp.xid_offset() IS
    'internal: what the ledger adds to this cluster''s transaction ids (0 unless adopted from a cluster whose ids ran higher).';
COMMENT ON FUNCTION pyxp.ledger_xid(xid8) IS 'internal: a transaction id of this cluster as the ledger counts it.';
COMMENT ON FUNCTION pyxp.require_ledger_cluster() IS
    'internal: PX032 when the ledger was copied from another cluster and not adopted (pyxp.adopt_cluster).';
COMMENT ON FUNCTION pyxp.subscribes_to_the_ledger() IS
    'internal: whether a logical replication subscription of this database carries any of pyxp''s tables.';
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

REVOKE ALL ON FUNCTION pyxp.ledger_cluster(), pyxp.xid_offset(), pyxp.ledger_xid(xid8), pyxp.require_ledger_cluster(),
    pyxp.subscribes_to_the_ledger(), pyxp.adopt_cluster(), pyxp.ledger_timeline(), pyxp.current_timeline(),
    pyxp.fork_margin(), pyxp.highest_ledger_xid(), pyxp.kept_cursor(numeric), pyxp.forked_cursor(bigint),
    pyxp.identity_sequences(), pyxp.follow_timeline() FROM PUBLIC;
GRANT SELECT ON pyxp.xp_ledger_forks TO pyxp_reader;

-- This database's ledger is this cluster's from the start.
SELECT * FROM pyxp.adopt_cluster();

RESET ROLE;
