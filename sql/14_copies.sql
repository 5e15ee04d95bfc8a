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

SET LOCAL ROLE pyxp_owner;

-- Makes the ledger this cluster's where it is not (one row; none when it is).
-- Owner only. It is not, when the ledger names another cluster, or when
-- what it holds runs ahead of this cluster: a feed group, a checkpoint's
-- xmin or an archive's floor at or above this cluster's next transaction id
-- (as the ledger counts it), or an identity sequence behind its table's
-- highest id. Its name is no proof: a physical clone promoted to run on its
-- own keeps the system identifier, and rows replicated back to a cluster
-- after a failback carry the other one's ids (a re-test of 0032 reused ids
-- both ways). Then, holding every award (SHARE ROW EXCLUSIVE on
-- xp_balances, the lock protocol of sql/04_rulesets.sql) and every move or
-- archive (pyxp.lock_ledger_partitions):
--   * xid_offset: the highest transaction id the ledger holds, less the
--     oldest of this cluster that may still write it (this transaction's,
--     or an older one running here), plus 1; never below the offset the
--     ledger had on this cluster, and 0 on a new cluster whose ids already
--     run higher. From then on the ledger counts this cluster's ids plus
--     it (pyxp.ledger_xid): every new group is above every old one, as on
--     the cluster that wrote them, so a consumer's cursor goes on, exactly
--     once, and the incremental audit covers the new rows. The order of
--     this cluster's ids is kept: the feed's and the checkpoints' proofs
--     hold as they are.
--   * every sequence of a pyxp table's identity column is advanced past
--     the highest id the table holds (the ledger's: archived ones too);
--   * pyxp.ledger_cluster() and pyxp.xid_offset() are written anew (their
--     callers' cached plans are invalidated with them).
-- A database subscribing to pyxp's tables (pyxp.subscribes_to_the_ledger)
-- is a copy still being written by its publisher: its ledger is named
-- cluster 0, which no cluster is (every write and read of the feed refuses,
-- PX032), until an adoption once the subscription is dropped (the
-- switchover). Migration 0032 runs this at its end: a subscriber that
-- installs it is not adopted early.
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

CREATE FUNCTION pyxp.adopt_cluster()
RETURNS TABLE (previous_cluster bigint, this_cluster bigint, xid_offset bigint, sequences_advanced text[])
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET lock_timeout = '10s'  -- (recalculate_levels': never queue every award behind an open transaction)
AS $$
DECLARE
    v_this bigint;
    v_locked boolean := false;
    v_highest numeric;
    v_oldest numeric;
    v_behind boolean;
    v_sequence record;
    v_max bigint;
    v_current record;
BEGIN
    BEGIN
        v_this := (pg_control_system()).system_identifier;
    EXCEPTION WHEN insufficient_privilege THEN
        v_this := NULL;  -- (a service that hides it: nothing is refused)
    END;
    IF pyxp.subscribes_to_the_ledger() THEN
        v_this := 0;  -- a subscriber: not this cluster's until its switchover
    END IF;
    <<look>>
    LOOP
        -- The highest transaction id the ledger holds, as it counts them (a
        -- balance's last group and an opening's cursor are a row's: below
        -- these), and whether a sequence is behind its table.
        v_highest := greatest(
            (SELECT t.feed_xid::text::numeric FROM pyxp.xp_transactions t
              WHERE t.feed_xid IS NOT NULL ORDER BY t.feed_xid DESC LIMIT 1),  -- (index xp_transactions_feed)
            (SELECT max(k.snapshot_xmin::text::numeric) FROM pyxp.xp_audit_checkpoints k),
            (SELECT max(a.feed_floor >> 24) FROM pyxp.xp_ledger_archives a));
        v_behind := false;
        FOR v_sequence IN
            SELECT s.oid::regclass AS sequence, 'pyxp.' || s.relname AS label, c.oid::regclass AS owner,
                   a.attname AS col
              FROM pg_catalog.pg_depend d
              JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
              JOIN pg_catalog.pg_class c ON c.oid = d.refobjid
              JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = d.refobjsubid
             WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
               AND d.deptype = 'i' AND s.relnamespace = 'pyxp'::regnamespace
             ORDER BY s.relname
        LOOP
            EXECUTE format('SELECT max(%I) FROM %s', v_sequence.col, v_sequence.owner) INTO v_max;
            IF v_sequence.owner = 'pyxp.xp_transactions'::regclass THEN
                v_max := greatest(v_max, (SELECT max(a.last_transaction_id) FROM pyxp.xp_ledger_archives a));
            END IF;
            EXECUTE format('SELECT last_value, is_called FROM %s', v_sequence.sequence) INTO v_current;
            IF v_max > v_current.last_value OR (v_max = v_current.last_value AND NOT v_current.is_called) THEN
                v_behind := true;
                IF v_locked THEN
                    PERFORM setval(v_sequence.sequence, v_max);
                    sequences_advanced := sequences_advanced || v_sequence.label;
                END IF;
            END IF;
        END LOOP;
        EXIT look WHEN v_locked;
        IF pyxp.ledger_cluster() IS NOT DISTINCT FROM v_this AND NOT v_behind
           AND coalesce(v_highest, 0) < pyxp.ledger_xid(pg_snapshot_xmax(pg_current_snapshot()))::text::numeric THEN
            RETURN;
        END IF;
        PERFORM pyxp.require_read_committed();
        LOCK TABLE pyxp.xp_balances IN SHARE ROW EXCLUSIVE MODE;
        PERFORM pyxp.lock_ledger_partitions();
        v_locked := true;
        sequences_advanced := '{}';  -- (looked at again under the locks)
    END LOOP;
    v_oldest := least(pg_current_xact_id()::text::numeric,
                      pyxp.oldest_running_here(pg_current_snapshot())::text::numeric);
    previous_cluster := pyxp.ledger_cluster();
    this_cluster := v_this;
    adopt_cluster.xid_offset := greatest(coalesce(v_highest, 0) + 1 - v_oldest,
                                         CASE WHEN previous_cluster IS NOT DISTINCT FROM v_this
                                              THEN pyxp.xid_offset() ELSE 0 END,
                                         0);
    EXECUTE format('CREATE OR REPLACE FUNCTION pyxp.ledger_cluster() RETURNS bigint LANGUAGE sql STABLE PARALLEL SAFE '
                   'AS %L', format('SELECT %s::bigint', coalesce(v_this::text, 'NULL')));
    EXECUTE format('CREATE OR REPLACE FUNCTION pyxp.xid_offset() RETURNS bigint LANGUAGE sql STABLE PARALLEL SAFE '
                   'AS %L', format('SELECT %s::bigint', adopt_cluster.xid_offset));
    RETURN NEXT;
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
    'internal: makes a ledger copied from another cluster this cluster''s: its transaction ids'' offset, its sequences. Owner only; pyxp db upgrade runs it.';

REVOKE ALL ON FUNCTION pyxp.ledger_cluster(), pyxp.xid_offset(), pyxp.ledger_xid(xid8), pyxp.require_ledger_cluster(),
    pyxp.subscribes_to_the_ledger(), pyxp.adopt_cluster() FROM PUBLIC;

-- This database's ledger is this cluster's from the start.
SELECT * FROM pyxp.adopt_cluster();

RESET ROLE;
