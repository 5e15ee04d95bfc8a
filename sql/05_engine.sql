-- The award engine: the one place where ledger rows and balances are written.
--
--   public functions (award, award_many, the flows, reverse_transaction)
--     validate and normalise their inputs, then plan the rows they ask for
--     from the active ruleset (pyxp.planned_awards, pyxp.post_award)
--       -> pyxp.append_rows(ruleset, floor, rows, batch)   THE writer
--
-- append_rows is the only statement path that inserts into xp_transactions
-- or updates a balance's total: a single award is a batch of one row, a
-- flow a batch of its rules' rows, award_many a batch of up to 10,000
-- events, a reversal a batch of one compensating row. It locks the wallets'
-- balance rows, finds the generic awards made before (replay or PX010),
-- applies the balance floor, appends the rows and updates each balance once,
-- set-based.
--
-- Atomicity: each public function runs in its caller's transaction; any error
-- aborts all of it, so a refusal never leaves a row behind.
-- Idempotency, two kinds of claims:
--   * a generic award (pyxp.award, pyxp.award_many) is claimed in
--     pyxp.xp_award_claims by its key's hash, with where its ledger row is;
--     the row carries request_digest, a digest of the call's canonical
--     inputs (action, wallet, params): a retry whose inputs digest alike
--     replays, another is PX010. The claim and the row are written by one
--     statement.
--   * a flow or a reversal is claimed in pyxp.xp_requests by its key's hash
--     and its inputs' digest (pyxp.claim_request), before its rows are
--     planned. Later calls consult its inputs (a completion's owner, an
--     onboarding's wallet, a vote's stored key), rebuilt from its ledger
--     rows (pyxp.recorded_request).
-- Races: two generic awards with one key and the same inputs name the same
-- wallet, so they serialise on its balance row lock. A batch probes the claims
-- after taking its locks (a new statement: READ COMMITTED sees the first one's
-- commit) and replays; a single award takes the lock in the statement that
-- probes (0020: one statement less per award), so it misses the first one's
-- claim, its claim INSERT waits for it and skips the row, and the call runs
-- again as a replay. With different wallets (other inputs:
-- PX010 anyway) they meet in xp_award_claims' primary key: the second INSERT
-- waits for the first transaction, then skips the row, and the writer raises PX010;
-- if the first rolled back, the second goes on.
-- Concurrency: a call's rows are appended under its wallets' balance row
-- locks (FOR UPDATE; a batch takes them in wallet order, so two batches never
-- wait on each other in a cycle), so awards to one wallet serialise and
-- never lose or double an amount. Under that lock each new row gets the
-- wallet's next wallet_seq (xp_balances.last_wallet_seq + 1, ...): a
-- wallet's rows commit in wallet_seq order, which is what the running-balance
-- proof, history's pages and the audit checkpoints rely on, not the ids.
-- Plans: every statement of an award is a keyed lookup or insert, so the
-- writing entry points run with plan_cache_mode = force_generic_plan (it
-- applies to the functions they call): planning each statement anew cost
-- more than executing it (measured: about 45 % of an award's server time).
-- A generic plan sees an array of unknown length (estimated 100 rows), so
-- each lookup into the ledger or the balances is a LATERAL subquery with
-- LIMIT 1 (or EXISTS with LIMIT): a keyed probe per row, never a hash join
-- over a whole index (measured: 40 ms per award on a 200k-row ledger).

-- The arithmetic every write path shares (single awards, batches).

-- A rule's XP for the given inputs: round_half_away(constant + sum(coef * input))
-- (numeric round() rounds halves away from zero). PL/pgSQL, not SQL: a SQL
-- function with a sub-select cannot be inlined and would be planned anew at
-- every call (measured: +50 % on an award).
CREATE FUNCTION pyxp.rule_amount(p_constant numeric, p_coefficients jsonb, p_params jsonb)
RETURNS numeric
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    IF p_coefficients = '{}'::jsonb THEN
        RETURN round(p_constant);
    END IF;
    RETURN round(p_constant + (SELECT sum(c.value::numeric * (p_params ->> c.key)::numeric)
                                 FROM jsonb_each_text(p_coefficients) c));
END
$$;

-- A balance floor cuts a penalty to what keeps the balance at the floor; a
-- balance already below it (floor raised later) loses nothing more. Gains,
-- and every amount without a floor, apply in full.
CREATE FUNCTION pyxp.floored_amount(p_amount numeric, p_floor bigint, p_balance numeric)
RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN p_floor IS NOT NULL AND p_amount < 0
                THEN greatest(p_amount, least(0, p_floor - p_balance))
                ELSE p_amount END
$$;

-- PX019 for a period's XP beyond bigint (pyxp.kept_period_xp).
CREATE FUNCTION pyxp.refuse_period_xp(p_xp numeric)
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RAISE EXCEPTION 'a wallet''s XP in one period would be %, out of range', p_xp
        USING ERRCODE = 'PX019',
              HINT = 'what a wallet gains or loses within one day, week, month or year stays strictly between -(2^63 - 1) and 2^63 - 1';
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

-- Balances stay within [-2^62, 2^62] (PX019): xp_to_next_level and every
-- threshold computation then fit in bigint.
CREATE FUNCTION pyxp.balance_limit()
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT 4611686018427387904::bigint $$;


-- A generic award's inputs, as its claim row keeps them: the first 8 bytes of
-- sha256 of the canonical JSON text (jsonb prints keys in one order). A
-- retry whose inputs digest the same is a replay (odds of two different
-- inputs digesting alike: 2^-64).
CREATE FUNCTION pyxp.inputs_digest(p_inputs jsonb)
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE STRICT
AS $$ BEGIN RETURN ('x' || encode(substr(sha256(convert_to(p_inputs::text, 'UTF8')), 1, 8), 'hex'))::bit(64)::bigint; END $$;

-- The ruleset a ledger row was written under (its levels in replays and the
-- change feed): its rule's; a reversal's is its request's (xp_requests); a
-- RULES_ADJUSTMENT's is the one its key names (rules.adjustment:<id>:<wallet>,
-- pyxp.apply_rules_retroactively).
-- PL/pgSQL: a SQL function with a sub-select is not inlined, and would be
-- planned anew at every call.
CREATE FUNCTION pyxp.row_ruleset(p_rule_id bigint, p_key text)
RETURNS bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
DECLARE
    v_id bigint;
BEGIN
    SELECT ru.ruleset_id INTO v_id FROM pyxp.rules ru WHERE ru.rule_id = p_rule_id;
    IF v_id IS NULL AND p_key LIKE 'rules.adjustment:%' THEN
        v_id := split_part(p_key, ':', 2)::bigint;
    ELSIF v_id IS NULL THEN
        SELECT q.ruleset_id INTO v_id FROM pyxp.xp_requests q WHERE q.key_hash = pyxp.key_hash(p_key);
    END IF;
    RETURN v_id;
END
$$;

-- One generic award, validated (pyxp.award, each event of pyxp.award_many).
CREATE TYPE pyxp.batch_event AS (
    event_index  integer,
    wallet       text,
    action       text,
    key          text,
    params       jsonb,
    metadata     jsonb,
    campaign_id  text,
    subject      text,
    inputs       jsonb
);

-- What the writer returns: the row's call (batch event), then the award row.
CREATE TYPE pyxp.batch_award_result AS (
    event_index       integer,
    transaction_id    bigint,
    user_wallet       text,
    transaction_type  text,
    xp_amount         bigint,
    xp_requested      bigint,
    total_xp          bigint,
    current_level     bigint,
    xp_to_next_level  bigint,
    previous_level    bigint,
    replayed          boolean
);

-- A ledger row a call asks for, before the balance floor: what every public
-- writing function hands to pyxp.append_rows.
CREATE TYPE pyxp.pending_row AS (
    call_index        integer,   -- the batch event it belongs to (0 outside award_many)
    user_wallet       text,
    idempotency_key   text,
    inputs            jsonb,     -- a generic award's canonical inputs: its claim;
                                 -- NULL: the caller claimed the key in xp_requests
    transaction_type  text,
    xp_amount         numeric,   -- to apply (the rule's amount, or what the floor left of it)
    xp_requested      numeric,   -- the rule's amount when the balance floor cut it, else NULL
    apply_floor       boolean,   -- false: a reversal compensates exactly
    rule_id           bigint,
    campaign_id       text,
    subject           text,
    metadata          jsonb,
    reverses          bigint,
    moderations       integer    -- added to the wallet's total_moderations (votes);
                                 -- a row without transaction_type only counts them
);

-- The digest a flow's or reversal's request keeps of its inputs (a flat
-- JSON object): pyxp.inputs_digest with every number in its shortest form
-- (300.0 is 300), so that inputs equal as jsonb (which compares numbers by
-- value) digest alike, and a retry spelling a price 300.0 still replays.
CREATE FUNCTION pyxp.request_inputs_digest(p_inputs jsonb)
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE STRICT
AS $$
BEGIN
    RETURN pyxp.inputs_digest(coalesce(
        (SELECT jsonb_object_agg(e.key, CASE WHEN jsonb_typeof(e.value) = 'number'
                                             THEN to_jsonb(trim_scale(e.value::numeric)) ELSE e.value END)
           FROM jsonb_each(p_inputs) e), '{}'));
END
$$;

-- The inputs of a flow call or reversal, rebuilt from one of the ledger rows
-- it wrote: every row of a flow call has the call's wallet, campaign,
-- subject and metadata (which holds the rest of its inputs: formula inputs,
-- campaign type, options, decision), its rule names the call's event, and a
-- reversal's row holds what it reverses and the reason. The form is the one
-- each function of sql/06_flows.sql builds (and reverse_transaction): a
-- request whose rows rebuild its inputs exactly keeps only their digest
-- (pyxp.claim_request checks it on the call's own values). NULL for a key
-- of no known kind.
CREATE FUNCTION pyxp.rebuilt_request_inputs(p_key text, p_event text, p_wallet text, p_campaign_id text,
                                            p_subject text, p_metadata jsonb, p_reverses bigint)
RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN p_key LIKE 'reverse:%' THEN
            jsonb_build_object('transaction_id', p_reverses, 'reason', p_metadata -> 'reason')
        WHEN p_key LIKE 'campaign.created:%' THEN
            jsonb_build_object('wallet', p_wallet, 'campaign_type', p_metadata -> 'campaign_type',
                               'mint_value', coalesce(p_metadata -> 'MINT_VALUE', 'null'),
                               'winstory_creates_video', p_metadata -> 'winstory_creates_video',
                               'no_rewards', p_metadata -> 'no_rewards')
        WHEN p_key LIKE 'campaign.approved:%' OR p_key LIKE 'client.onboarded:%' THEN
            jsonb_build_object('wallet', p_wallet)
        WHEN p_key LIKE 'campaign.vote%' THEN
            jsonb_build_object('vote_decision', p_metadata -> 'vote_decision',
                               'campaign_type', p_metadata -> 'campaign_type',
                               'wallet', p_wallet, 'campaign_id', p_campaign_id)
        WHEN p_key LIKE 'completion.vote%' THEN
            jsonb_build_object('vote_decision', p_metadata -> 'vote_decision', 'campaign_id', p_campaign_id,
                               'campaign_type', p_metadata -> 'campaign_type',
                               'wallet', p_wallet, 'completion_id', p_subject)
        WHEN p_key LIKE 'completion.submitted:%' OR p_key LIKE 'completion.outcome:%' THEN
            jsonb_build_object('event', p_event, 'wallet', p_wallet, 'campaign_id', p_campaign_id,
                               'campaign_type', p_metadata -> 'campaign_type', 'is_paid', p_metadata -> 'is_paid')
            || (p_metadata - 'campaign_type' - 'is_paid')
    END
$$;

-- The cluster whose transaction ids the ledger counts in (0032, a hostile
-- test of copies): the change feed's groups (xp_transactions.feed_xid,
-- xp_balances.last_feed_xid, sql/11_changes.sql), the audit checkpoints'
-- snapshot xmins, the archives' feed floors and the openings' cursors are
-- transaction ids of the cluster that wrote them, plus pyxp.xid_offset().
-- A logical copy (pg_dump and restore, logical replication, pg_upgrade)
-- carries them to a cluster whose ids run elsewhere: lower, and new rows
-- land in groups below what consumers already read, or the feed stalls for
-- billions of transactions, and the incremental audit skips new rows; and
-- logical replication does not carry sequences (ids used again). So the
-- writer, the feed, the checkpoints and the archive refuse (PX032) on a
-- cluster that is not this one (PostgreSQL's system identifier, which a
-- physical copy keeps) until pyxp.adopt_cluster() (pyxp db upgrade runs
-- it) makes the ledger this cluster's. Both are rewritten by
-- pyxp.adopt_cluster: constants, inlined and folded by the planner. STABLE,
-- not IMMUTABLE: the planner evaluates an IMMUTABLE call once and records
-- no dependency on it, so a session's cached plans kept the old offset
-- after an adoption (writing below what it adopted); an inlined STABLE
-- function's replacement invalidates them.
-- NULL: pg_control_system() cannot be read here (nothing is refused).
CREATE FUNCTION pyxp.ledger_cluster()
RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT NULL::bigint $$;

-- Added to this cluster's transaction ids wherever the ledger stores or
-- compares one (pyxp.ledger_xid): 0 unless the ledger came from a cluster
-- whose ids ran higher (pyxp.adopt_cluster).
CREATE FUNCTION pyxp.xid_offset()
RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT 0::bigint $$;

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

-- A transaction id of this cluster as the ledger counts it (every such id
-- moves by the same offset: the feed's and the checkpoints' proofs, which
-- compare ids of this cluster only with each other and with the stored
-- ones, hold as they do without it). Inlined: with offset 0 it is its
-- argument.
CREATE FUNCTION pyxp.ledger_xid(p_xid xid8)
RETURNS xid8
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN pyxp.xid_offset() = 0 THEN p_xid ELSE (p_xid::text::numeric + pyxp.xid_offset())::text::xid8 END $$;

-- A mark of a transaction that no session can set ahead of it: its id and
-- its start time in microseconds (settings-free). What the writer's
-- transaction-local settings name their transaction by (pyxp.appending_rows,
-- pyxp.transaction_rows): a session-level SET of one, left on a pooled
-- server connection, is never the next transaction's there. The id alone
-- was (0047, a hostile test, helper-74: on a quiet server the next id is
-- predictable, and a value set ahead refused the next client's valid award,
-- PX034, or batch, PX023). A SQL function: inlined where it is called; NULL
-- for a transaction without an id.
CREATE FUNCTION pyxp.transaction_mark(p_xid xid8)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT p_xid::text || '@' || (extract(epoch FROM now()) * 1000000)::bigint $$;

-- PX032 unless the ledger is this cluster's (pyxp.ledger_cluster; 0: a
-- logical replication subscriber, sql/14_copies.sql). The writer makes the
-- same test inline (a simple expression: no statement).
CREATE FUNCTION pyxp.require_ledger_cluster()
RETURNS void
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    IF pyxp.ledger_cluster() = 0 THEN
        RAISE EXCEPTION 'this database is a logical replication subscriber: its ledger is its publisher''s until the switchover'
            USING ERRCODE = 'PX032',
                  DETAIL = 'writes here would take ids and feed groups the publisher''s rows still arrive with',
                  HINT = 'write to the publisher; at the switchover drop the subscription, then run pyxp db upgrade';
    ELSIF pyxp.ledger_cluster() <> (pg_control_system()).system_identifier THEN
        RAISE EXCEPTION 'this ledger counts the transaction ids of another PostgreSQL cluster (system identifier %, this one %): it was copied here',
                        pyxp.ledger_cluster(), (pg_control_system()).system_identifier
            USING ERRCODE = 'PX032',
                  DETAIL = 'by pg_dump and restore, logical replication or pg_upgrade: its change feed, audit checkpoints and sequences need this cluster''s',
                  HINT = 'run pyxp db upgrade (or SELECT * FROM pyxp.adopt_cluster() as its owner) once, before writing or following the feed';
    END IF;
END
$$;

-- The end of the ledger's archived range (sql/13_retention.sql): every row
-- written before it was in an archived partition, or is in the default
-- partition. NULL: no row archived (an archive of empty partitions takes
-- nothing anyone could ask for).
CREATE FUNCTION pyxp.archive_horizon()
RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT max(a.archived_before) FROM pyxp.xp_ledger_archives a WHERE a.rows_archived > 0 $$;

-- true; or 40001 (serialization_failure: run it again) when a partition of
-- the ledger that this statement's snapshot holds as attached no longer is.
-- An archive (sql/13_retention.sql) detaches partitions under ACCESS
-- EXCLUSIVE; a read that waited for that lock (or one in a REPEATABLE READ
-- snapshot taken before the archive) is planned after the archive's commit,
-- on the partitions left, but reads with a snapshot that sees no archive:
-- the archived rows were missing from what it read, and the checks that
-- would refuse it (PX029: the archive's horizon, the feed's floor) passed
-- (found by a hostile test, 0026: a feed read skipped the archived rows and
-- handed out the cursors after them; audit() reported twelve findings on a
-- sound ledger; a past board came back empty). The readers of the ledger
-- call it after their reads: pg_inherits as the snapshot sees it, against
-- pg_partition_tree, which reads the catalog as it is now (after the read's
-- locks). A partition attached since (pyxp.create_ledger_partitions) is no
-- concern when it was made empty: the snapshot sees no row in it; nor is
-- one detached that held no row the snapshot sees (an archive of empty
-- partitions: a hostile test found it failing reads). But since 0029 a
-- partition may be attached with rows moved from the default partition,
-- where this snapshot still sees them: a read planned after the move prunes
-- the default partition for their month and finds the new partition empty
-- (40001 too, when a partition was attached since the snapshot and the
-- default partition holds rows, as this snapshot sees it, that a move
-- takes: dated at or after the archive's horizon). And 40001 when a table
-- of schema pyxp was rewritten (a new relfilenode) after the snapshot: a
-- read that waited for the rewrite's lock reads the new file, where
-- pg_repack re-inserted, in its own transactions (the last ones under its
-- swap's ACCESS EXCLUSIVE), the rows written while it copied: committed
-- before this snapshot, invisible to it (a hostile test, 0034: the feed
-- skipped 346 of 239,402 rows, for good, and audit() reported balances
-- that did not match on a sound ledger). pg_class as the snapshot sees it
-- against pg_relation_filenode (the catalog as it is now). VACUUM FULL,
-- CLUSTER and ALTER TABLE SET TABLESPACE rewrite too, keeping each row's
-- xmin: their reads were right, and are refused all the same (a retry).
-- Leader only (it raises).
CREATE FUNCTION pyxp.ledger_unmoved()
RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED
AS $$
DECLARE
    v_then oid[];  -- the partitions as this snapshot sees them
    v_now oid[];   -- and as the catalog is now
    v_gone oid;
    v_rows boolean;
BEGIN
    SELECT ARRAY(SELECT i.inhrelid FROM pg_catalog.pg_inherits i
                  WHERE i.inhparent = 'pyxp.xp_transactions'::regclass ORDER BY 1),
           ARRAY(SELECT p.relid FROM pg_catalog.pg_partition_tree('pyxp.xp_transactions'::regclass) p
                  WHERE p.parentrelid = 'pyxp.xp_transactions'::regclass ORDER BY 1)
      INTO v_then, v_now;
    IF EXISTS (SELECT FROM pg_catalog.pg_class c
                WHERE c.relnamespace = 'pyxp'::regnamespace AND c.relkind = 'r'
                  AND c.relfilenode <> pg_catalog.pg_relation_filenode(c.oid)) THEN  -- (dropped since: NULL, no rewrite)
        RAISE EXCEPTION 'a table of the ledger was rewritten while this read ran (after its snapshot was taken)'
            USING ERRCODE = '40001',
                  DETAIL = 'pg_repack, VACUUM FULL, CLUSTER or ALTER TABLE SET TABLESPACE: rows it wrote again are invisible to this read',
                  HINT = 'run it again, in a new transaction';
    END IF;
    IF v_then = v_now THEN
        RETURN true;  -- (nearly always: two queries)
    END IF;
    FOR v_gone IN
        SELECT i.inhrelid FROM pg_catalog.pg_inherits i
         WHERE i.inhparent = 'pyxp.xp_transactions'::regclass
           AND NOT EXISTS (SELECT FROM pg_catalog.pg_partition_tree('pyxp.xp_transactions'::regclass) p
                            WHERE p.relid = i.inhrelid)
    LOOP
        -- The detached partition (in pyxp_archive), read with this snapshot;
        -- dropped since (its oid no longer names a table: regclass reads the
        -- catalog as it is now), assumed to have held rows. No exception
        -- block: audit() calls this in a parallel query, where no
        -- subtransaction may start.
        IF v_gone::regclass::text ~ '^[0-9]+$' THEN
            v_rows := true;
        ELSE
            EXECUTE format('SELECT EXISTS (SELECT FROM %s)', v_gone::regclass) INTO v_rows;
        END IF;
        IF v_rows THEN
            RAISE EXCEPTION 'rows of the ledger were archived while this read ran (after its snapshot was taken)'
                USING ERRCODE = '40001',
                      HINT = 'run it again, in a new transaction: it then sees the archive (and PX029 for what needs its rows)';
        END IF;
    END LOOP;
    IF NOT v_now <@ v_then
       AND EXISTS (SELECT FROM pyxp.xp_transactions_default d
                    WHERE d.created_at >= coalesce(pyxp.archive_horizon(), '-infinity')) THEN
        RAISE EXCEPTION 'rows of the ledger were moved into a partition of their own while this read ran (after its snapshot was taken)'
            USING ERRCODE = '40001',
                  HINT = 'run it again, in a new transaction: it then sees them in their partition';
    END IF;
    RETURN true;
END
$$;

-- Records a flow's or reversal's claim: its key's hash and its inputs'
-- digest, plus the key, inputs, ruleset and time when its rows will not
-- rebuild them (p_rebuilt: what they rebuild, NULL when the call writes
-- none), and the ruleset of a reversal (its row names no rule). true:
-- this call is the first with this key and must do the work. false: the key
-- was used before (possibly by a concurrent transaction this INSERT waited
-- for): the caller replays.
CREATE FUNCTION pyxp.claim_request(p_key text, p_inputs jsonb, p_ruleset_id bigint, p_rebuilt jsonb)
RETURNS boolean
LANGUAGE plpgsql
AS $$
DECLARE
    v_keep boolean := p_rebuilt IS NULL OR p_rebuilt <> p_inputs;
BEGIN
    INSERT INTO pyxp.xp_requests (key_hash, inputs_digest, ruleset_id, created_at, idempotency_key, inputs)
    VALUES (pyxp.key_hash(p_key), pyxp.request_inputs_digest(p_inputs),
            CASE WHEN v_keep OR p_key LIKE 'reverse:%' THEN p_ruleset_id END,
            CASE WHEN v_keep THEN now() END, CASE WHEN v_keep THEN p_key END, CASE WHEN v_keep THEN p_inputs END)
    ON CONFLICT (key_hash) DO NOTHING;
    RETURN FOUND;
END
$$;

-- What pyxp holds of an earlier flow call or reversal with this key: its
-- request, with its inputs, ruleset and time as kept there, or from its
-- first ledger row (index xp_transactions_request_rows). No row: the key was never
-- claimed. same_key false: another key with the same hash (odds 2^-128)
-- claimed it, which is a conflict, never a replay. inputs and ruleset_id
-- NULL: a request whose rows, or the rule of its first row, are gone, so
-- that its call can no longer be told (pyxp.audit reports
-- request_rows_missing or rule_missing).
CREATE FUNCTION pyxp.recorded_request(p_key text)
RETURNS TABLE (inputs jsonb, inputs_digest bigint, ruleset_id bigint, created_at timestamptz, same_key boolean)
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_hash uuid := pyxp.key_hash(p_key);
    v_request pyxp.xp_requests;
    v_first record;
BEGIN
    SELECT * INTO v_request FROM pyxp.xp_requests q WHERE q.key_hash = v_hash;
    IF NOT FOUND THEN
        RETURN;
    ELSIF v_request.idempotency_key IS NOT NULL THEN
        RETURN QUERY SELECT v_request.inputs, v_request.inputs_digest, v_request.ruleset_id, v_request.created_at,
                            v_request.idempotency_key = p_key;
        RETURN;
    END IF;
    SELECT t.idempotency_key, t.user_wallet, t.campaign_id, t.subject, t.metadata, t.reverses, t.created_at,
           t.rule_id, ru.event, ru.ruleset_id
      INTO v_first
      FROM pyxp.xp_transactions t
      LEFT JOIN pyxp.rules ru ON ru.rule_id = t.rule_id
     WHERE pyxp.key_hash(t.idempotency_key) = v_hash AND t.request_digest IS NULL
     ORDER BY t.wallet_seq
     LIMIT 1;
    IF NOT FOUND THEN
        -- A request without its rows: or rows archived after this statement's
        -- snapshot, whose request it sees unmarked (it waited for the
        -- archive's lock): 40001 (a hostile test: a completion's outcome
        -- naming another completer, and a registration of an onboarded
        -- client, were decided on nothing while an archive committed).
        PERFORM pyxp.ledger_unmoved();
    END IF;
    IF v_first.rule_id IS NOT NULL AND v_first.event IS NULL THEN  -- its rule is gone
        RETURN QUERY SELECT NULL::jsonb, v_request.inputs_digest, v_request.ruleset_id, v_request.created_at,
                            v_first.idempotency_key = p_key;
        RETURN;
    END IF;
    RETURN QUERY SELECT pyxp.rebuilt_request_inputs(v_first.idempotency_key, v_first.event, v_first.user_wallet,
                                                    v_first.campaign_id, v_first.subject, v_first.metadata,
                                                    v_first.reverses),
                        v_request.inputs_digest, coalesce(v_request.ruleset_id, v_first.ruleset_id),
                        coalesce(v_request.created_at, v_first.created_at), coalesce(v_first.idempotency_key = p_key, true);
END
$$;

-- Whether this very call was made before: its key claimed with the same
-- inputs (a flow call's or a reversal's request). Such a call is a retry, and
-- replays (SPEC 4) whatever was recorded about its campaign or completion
-- since: the flows ask it before the checks that compare a call with earlier
-- ones, so that those checks refuse only calls never made. (Another key with
-- the same hash, odds 2^-128, passes here and gets PX010 from replayed_award.)
CREATE FUNCTION pyxp.call_recorded(p_key text, p_inputs jsonb)
RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT EXISTS (SELECT FROM pyxp.xp_requests q
                    WHERE q.key_hash = pyxp.key_hash(p_key)
                      AND q.inputs_digest = pyxp.request_inputs_digest(p_inputs))
$$;

-- The original result of an earlier flow or reversal with this key, marked
-- replayed. Levels are computed on the curve that was active for the
-- original call, so the replay returns what the original call returned.
-- Other inputs (another digest; odds of two inputs digesting alike: 2^-64):
-- PX010 (or the caller's code and message, e.g. PX014 for a second
-- reversal), whose detail shows the first call's inputs. A first call the
-- ledger no longer holds (its rows or their rule deleted): PX028, never an
-- empty replay. Rows are found by index xp_transactions_request_rows.
CREATE FUNCTION pyxp.replayed_award(p_key text, p_inputs jsonb,
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

-- The ledger row a claim names (xp_award_claims: id and created_at), for the
-- writer's replays and conflicts. PL/pgSQL and STRICT, called from a LATERAL
-- join: a key never claimed (a NULL claim, every new award) calls nothing,
-- and the writer's hot statements name no ledger partition. A statement
-- naming the partitioned ledger locks every partition and index at each
-- execution of its generic plan, and where the pruning depends on a join's
-- values (run time) initialises a scan of each (PostgreSQL 15): an award on
-- a ledger of 17 partitions took 11 % more CPU with the claim joined to its
-- row than with this function (0021). No row: the claim's row was archived, or is missing (the writer's
-- guard tells which).
CREATE FUNCTION pyxp.claimed_row(p_id bigint, p_created_at timestamptz)
RETURNS SETOF pyxp.xp_transactions
LANGUAGE plpgsql STABLE STRICT
ROWS 1  -- (the default estimate, 1000 rows, priced its callers' plans past jit_above_cost: JIT at every call)
AS $$
BEGIN
    RETURN QUERY SELECT t.* FROM pyxp.xp_transactions t WHERE t.id = p_id AND t.created_at = p_created_at;
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
CREATE FUNCTION pyxp.append_rows(p_ruleset bigint, p_floor bigint, p_timezone text, p_caps boolean,
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
    v_one pyxp.pending_row;  -- the row of a call of one row (step 2)
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
    IF current_setting('pyxp.appending_rows', true) = pyxp.transaction_mark(pg_current_xact_id_if_assigned()) THEN
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
    -- A call of one row (a single award, a reversal, a flow call of one
    -- rule; not a batch, whose rows step 1 locked): the same statement
    -- without the window, the sorts and the aggregates that order a call's
    -- rows, and with or without the caps (0036: every plan node costs its
    -- start-up at every award, and the caps' lookups' start-up is paid
    -- even when no rule is capped: about 3 % of a single award's
    -- instructions, capped or not, README "Performance"). A capped gain
    -- alone in its call applies least(its amount, what is left).
    IF NOT p_batch AND cardinality(v_rows) = 1 AND NOT p_caps THEN
        v_one := v_rows[1];
        SELECT ARRAY[x.claim_id], ARRAY[x.after], ARRAY[x.feed], CASE WHEN x.conflict THEN 1 END,
               CASE WHEN abs(x.after) > pyxp.balance_limit() THEN 1 END, x.written,
               ARRAY[x.last_wallet_seq + x.written], ARRAY[x.claimed_at]
          INTO v_claims, v_after, v_feed, v_conflict_ord, v_range_ord, v_expected, v_seq, v_claimed_at
          FROM (SELECT k.id AS claim_id, k.created_at AS claimed_at,
                       k.id IS NOT NULL AND (k.request_digest <> pyxp.inputs_digest(v_one.inputs)
                                             OR k.idempotency_key <> v_one.idempotency_key) AS conflict,
                       b.total_xp + CASE WHEN k.id IS NULL THEN v_one.xp_amount END AS after,
                       b.last_wallet_seq, (k.id IS NULL AND v_one.transaction_type IS NOT NULL)::integer AS written,
                       greatest(pyxp.ledger_xid(pg_current_xact_id()), b.last_feed_xid) AS feed
                  FROM (SELECT b.total_xp, b.last_feed_xid, b.last_wallet_seq FROM pyxp.xp_balances b
                         WHERE b.user_wallet = v_one.user_wallet LIMIT 1 FOR UPDATE) b
                  LEFT JOIN LATERAL (SELECT c.transaction_id, c.created_at FROM pyxp.xp_award_claims c
                                      WHERE v_one.inputs IS NOT NULL
                                        AND c.key_hash = pyxp.key_hash(v_one.idempotency_key)
                                      LIMIT 1) c ON true
                  LEFT JOIN LATERAL pyxp.claimed_row(c.transaction_id, c.created_at) k ON true) x;
    ELSIF NOT p_batch AND cardinality(v_rows) = 1 THEN
        v_one := v_rows[1];
        SELECT ARRAY[x.claim_id], ARRAY[x.after], ARRAY[x.feed], CASE WHEN x.conflict THEN 1 END,
               CASE WHEN abs(x.after) > pyxp.balance_limit() THEN 1 END, x.written,
               ARRAY[x.last_wallet_seq + x.written], ARRAY[x.claimed_at],
               ARRAY[x.applied], ARRAY[x.allowance], ARRAY[x.period_start], x.waited
          INTO v_claims, v_after, v_feed, v_conflict_ord, v_range_ord, v_expected, v_seq, v_claimed_at,
               v_applied, v_allowance, v_period, v_waited
          FROM (SELECT y.*, y.total_xp + CASE WHEN y.claim_id IS NULL THEN y.applied END AS after
                  FROM (SELECT k.id AS claim_id, k.created_at AS claimed_at,
                               k.id IS NOT NULL AND (k.request_digest <> pyxp.inputs_digest(v_one.inputs)
                                                     OR k.idempotency_key <> v_one.idempotency_key) AS conflict,
                               b.total_xp, b.last_wallet_seq,
                               (k.id IS NULL AND v_one.transaction_type IS NOT NULL)::integer AS written,
                               greatest(pyxp.ledger_xid(pg_current_xact_id()), b.last_feed_xid) AS feed,
                               -- the version locked is not the snapshot's (evaluated above the lock)
                               b.ctid IS DISTINCT FROM (SELECT s.ctid FROM pyxp.xp_balances s
                                                         WHERE s.user_wallet = v_one.user_wallet LIMIT 1) AS waited,
                               a.allowance, a.period_start,
                               CASE WHEN a.allowance IS NULL THEN v_one.xp_amount
                                    ELSE least(v_one.xp_amount, greatest(a.cap_max_xp - coalesce(a.used_xp, 0), 0))
                               END AS applied
                          FROM (SELECT b.total_xp, b.last_feed_xid, b.last_wallet_seq, b.ctid FROM pyxp.xp_balances b
                                 WHERE b.user_wallet = v_one.user_wallet LIMIT 1 FOR UPDATE) b
                          LEFT JOIN LATERAL (SELECT c.transaction_id, c.created_at FROM pyxp.xp_award_claims c
                                              WHERE v_one.inputs IS NOT NULL
                                                AND c.key_hash = pyxp.key_hash(v_one.idempotency_key)
                                              LIMIT 1) c ON true
                          LEFT JOIN LATERAL pyxp.claimed_row(c.transaction_id, c.created_at) k ON true
                          LEFT JOIN LATERAL (SELECT c.allowance, c.period_start, c.cap_max_xp,
                                                    (SELECT u.used_xp FROM pyxp.xp_cap_usage u
                                                      WHERE u.user_wallet = v_one.user_wallet
                                                        AND u.allowance = c.allowance
                                                        AND u.period_start = c.period_start LIMIT 1) AS used_xp
                                               FROM (SELECT pyxp.cap_allowance(ru.cap_group, ru.action) AS allowance,
                                                            date_trunc(ru.cap_per, v_now, p_timezone) AS period_start,
                                                            ru.cap_max_xp
                                                       FROM pyxp.rules ru
                                                      WHERE ru.rule_id = v_one.rule_id AND ru.cap_max_xp IS NOT NULL
                                                        AND v_one.xp_amount > 0 AND v_one.reverses IS NULL
                                                        AND k.id IS NULL
                                                      LIMIT 1) c) a ON true) y) x;
    ELSIF NOT p_caps THEN
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
    -- (The triggers this statement fires run with pyxp.appending_rows set to
    -- this transaction's mark: a writing call among them is refused, above. A
    -- transaction-local setting: an error in between rolls it back with the
    -- (sub)transaction. The mark, not 'on': a value any session may set, left
    -- set by one client behind a pooler, refused every other client's award
    -- there (a hostile test, 0036); see pyxp.transaction_mark.)
    v_set := set_config('pyxp.appending_rows', pyxp.transaction_mark(pg_current_xact_id()), true);
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
    v_set := set_config('pyxp.appending_rows', '', true);
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

    -- 3b. What a reversal of a capped gain frees of its allowance, in its
    --     period and in those seeded with it (pyxp.freed_allowances), under
    --     the same locks; before step 4, whose update fires the balances'
    --     triggers: an award made there sees the allowance freed (it was cut
    --     as if still used, with a clean audit, when this came after: a
    --     hostile test, 0036).
    IF v_rows[1].reverses IS NOT NULL THEN  -- a reversal: alone in its call
        UPDATE pyxp.xp_cap_usage u SET used_xp = u.used_xp - f.freed_xp, seeded_xp = u.seeded_xp - f.freed_seed
          FROM pyxp.freed_allowances(v_rows[1].reverses) f
         WHERE u.user_wallet = v_rows[1].user_wallet AND u.allowance = f.allowance
           AND u.period_start = f.period_start AND v_ids[1] IS NOT NULL;
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

-- PX010 for a generic award whose key a call with other inputs claimed;
-- the detail says what that first call wrote, against this call's inputs.
CREATE FUNCTION pyxp.raise_key_conflict(p_batch boolean, p_call_index integer, p_key text, p_inputs jsonb,
                                        p_first_wallet text, p_first_type text, p_first_amount bigint,
                                        p_first_metadata jsonb)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION '%idempotency key % was already used with other inputs',
                    CASE WHEN p_batch THEN format('event %s: ', p_call_index) ELSE '' END, quote_literal(p_key)
        USING ERRCODE = 'PX010',
              DETAIL = format('first call: %s; this call: %s',
                              jsonb_build_object('action', p_first_type, 'wallet', p_first_wallet,
                                                 'xp_amount', p_first_amount, 'metadata', p_first_metadata),
                              p_inputs),
              HINT = 'repeat a call with exactly the same inputs to get its result again';
END
$$;

-- The balance floor applied to a call's or batch's rows, under the wallets'
-- locks: penalties cut so that a balance does not go below it (the row then
-- records xp_requested), each wallet's rows walked in order from its
-- balance. Rows whose generic award was made before (replays) are skipped.
CREATE FUNCTION pyxp.floored_rows(p_ruleset bigint, p_rows pyxp.pending_row[], p_floor bigint)
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

-- Why params cannot feed a rule's formula, one row per problem: an input the
-- formula needs and params lack (PX018); with p_strict, a param the formula
-- does not use (PX017: a typo in a manual award's params). Callers raise the
-- first, missing inputs first. Shared by single awards and batches.
CREATE FUNCTION pyxp.formula_input_problems(p_action text, p_coefficients jsonb, p_params jsonb,
                                            p_strict boolean)
RETURNS TABLE (code text, message text, hint text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT 'PX018', format('missing input %s for %s', c.key, p_action),
           format('pass %s, a number between 0 and 10^15', c.key)
      FROM jsonb_object_keys(p_coefficients) c(key)
     WHERE NOT p_params ? c.key
    UNION ALL
    SELECT 'PX017', format('unknown param %s: no formula of this action uses it', p.key),
           'params holds formula inputs only; put anything else in context'
      FROM jsonb_object_keys(p_params) p(key)
     WHERE p_strict AND NOT p_coefficients ? p.key
$$;

-- Where every writing function starts (SPEC 4, lock protocol of
-- 04_rulesets.sql): READ COMMITTED only (PX025), the ledger's timeline
-- followed (pyxp.follow_timeline: after a failover or a point-in-time
-- recovery, before any lock of an award is taken), ROW EXCLUSIVE on
-- xp_balances before the active ruleset is read, then the active ruleset
-- (PX020 when none), its balance floor, period zone and whether it caps.
CREATE FUNCTION pyxp.writing_ruleset(OUT ruleset_id bigint, OUT balance_floor bigint, OUT timezone text,
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

-- The rows of generic awards (pyxp.award: one event; pyxp.award_many: a
-- batch): each event's action's rule in the active ruleset, evaluated on its
-- params; the row's metadata is the event's context (its metadata field)
-- with the params. Refused, naming the event in a batch: an unknown action
-- (PX009), a missing or unknown formula input (PX018, PX017), a context key
-- naming a param (read as params' names are: any case, $ ignored) with
-- another value (PX017, 0041: the params' value was kept and the context's
-- lost, silently; or both kept, under two spellings), an amount beyond +-10^15
-- (PX004). An event whose key is already claimed is not checked: it replays
-- (its action may have left the ruleset since; its context is not its
-- inputs) or is a PX010, which append_rows decides. The common case (a known
-- action, no formula, no params, an amount in range) is one query.
CREATE FUNCTION pyxp.planned_awards(p_ruleset bigint, p_events pyxp.batch_event[], p_batch boolean)
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
                         e.campaign_id, e.subject, e.metadata || e.params, NULL, 0)::pyxp.pending_row
                     ORDER BY e.event_index),
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
            SELECT 4, 'PX017', format('context key %s is also a param, with another value (%s in context, %s in params)',
                                      quote_literal(left(k.key, 70)),
                                      CASE WHEN length(k.value::text) > 100 THEN left(k.value::text, 97) || '...'
                                           ELSE k.value::text END, p.value),
                   'a formula input goes in params; drop it from context, or give both the same value'
              FROM jsonb_each(e.metadata) k
              JOIN jsonb_each(e.params) p ON p.key = pyxp.param_name(k.key)
             WHERE k.value <> p.value
            UNION ALL
            SELECT 5, 'PX004', format('XP amount %s of %s is out of range',
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

-- Claims a flow's key (xp_requests), resolves the rules of the active
-- ruleset for its event (every rule of that event whose campaign_types
-- include p_campaign_type, or are NULL, and whose condition is NULL or one
-- of p_facts, in file order), evaluates them and hands the rows to the
-- writer. Amounts come only from the rules: no XP figure is written in
-- PL/pgSQL. A call whose event has no rule writes no ledger row; a vote still
-- counts in total_moderations (a row without transaction_type: counted, not
-- appended).
CREATE FUNCTION pyxp.post_award(
    p_key text, p_inputs jsonb, p_wallet text,
    p_event text, p_campaign_type text, p_facts text[], p_params jsonb,
    p_campaign_id text, p_subject text, p_metadata jsonb, p_moderations integer,
    p_conflict_message text DEFAULT NULL)
RETURNS SETOF pyxp.award_result
LANGUAGE plpgsql
AS $$
DECLARE
    v_ruleset record;
    v_rows pyxp.pending_row[];
    v_problem record;
    v_rebuilt jsonb;
BEGIN
    SELECT * INTO v_ruleset FROM pyxp.writing_ruleset();
    -- Whether the call writes rows (a rule of its event applies): then they
    -- will rebuild its inputs, and its request need not keep them.
    IF EXISTS (SELECT FROM pyxp.rules ru
                WHERE ru.ruleset_id = v_ruleset.ruleset_id AND ru.event = p_event
                  AND (ru.campaign_types IS NULL OR p_campaign_type = ANY (ru.campaign_types))
                  AND (ru.condition IS NULL OR ru.condition = ANY (p_facts))) THEN
        v_rebuilt := pyxp.rebuilt_request_inputs(p_key, p_event, p_wallet, p_campaign_id, p_subject, p_metadata, NULL);
    END IF;
    IF NOT pyxp.claim_request(p_key, p_inputs, v_ruleset.ruleset_id, v_rebuilt) THEN
        RETURN QUERY SELECT * FROM pyxp.replayed_award(p_key, p_inputs, p_conflict_message);
        RETURN;
    END IF;

    SELECT x.code, x.message, x.hint INTO v_problem
      FROM pyxp.rules ru
     CROSS JOIN LATERAL pyxp.formula_input_problems(ru.action, ru.xp_coefficients, p_params, false) x
     WHERE ru.ruleset_id = v_ruleset.ruleset_id AND ru.event = p_event
       AND (ru.campaign_types IS NULL OR p_campaign_type = ANY (ru.campaign_types))
       AND (ru.condition IS NULL OR ru.condition = ANY (p_facts))
     ORDER BY ru.position
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '%', v_problem.message USING ERRCODE = v_problem.code, HINT = v_problem.hint;
    END IF;
    v_rows := ARRAY(
        SELECT ROW(0, p_wallet, p_key, NULL, ru.action,
                   pyxp.rule_amount(ru.xp_constant, ru.xp_coefficients, p_params), NULL, true, ru.rule_id,
                   p_campaign_id, p_subject, p_metadata, NULL, 0)::pyxp.pending_row
          FROM pyxp.rules ru
         WHERE ru.ruleset_id = v_ruleset.ruleset_id AND ru.event = p_event
           AND (ru.campaign_types IS NULL OR p_campaign_type = ANY (ru.campaign_types))
           AND (ru.condition IS NULL OR ru.condition = ANY (p_facts))
         ORDER BY ru.position);
    SELECT r.transaction_type, r.xp_amount INTO v_problem FROM unnest(v_rows) r WHERE abs(r.xp_amount) > 1e15 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'XP amount % of % is out of range', v_problem.xp_amount, v_problem.transaction_type
            USING ERRCODE = 'PX004', HINT = 'an award is at most 10^15 XP; check the formula inputs';
    END IF;
    IF p_moderations > 0 THEN  -- counted once, with the call's first row (or alone)
        IF cardinality(v_rows) = 0 THEN
            v_rows := ARRAY[ROW(0, p_wallet, p_key, NULL, NULL, 0, NULL, false, NULL, NULL, NULL, NULL, NULL,
                                p_moderations)::pyxp.pending_row];
        ELSE
            v_rows[1].moderations := p_moderations;
        END IF;
    END IF;
    RETURN QUERY
        SELECT w.transaction_id, w.user_wallet, w.transaction_type, w.xp_amount, w.xp_requested, w.total_xp,
               w.current_level, w.xp_to_next_level, w.previous_level, w.replayed
          FROM pyxp.append_rows(v_ruleset.ruleset_id, v_ruleset.balance_floor, v_ruleset.timezone,
                                v_ruleset.has_caps, v_rows, false) w;
END
$$;

-- Public: awards the active rule `action` to `wallet`, once per
-- idempotency_key: a batch of one (pyxp.planned_awards, pyxp.append_rows).
-- params: the formula inputs ({"PRICE_COMPLETION": 300}); context: free JSON
-- kept in the row's metadata (its "campaign_id" and "subject", if texts,
-- also fill those columns). The key's inputs are action, wallet and params:
-- a retry with another context is a replay.
CREATE FUNCTION pyxp.award(wallet text, action text, idempotency_key text,
                           params jsonb DEFAULT '{}', context jsonb DEFAULT '{}')
RETURNS SETOF pyxp.award_result
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_event pyxp.batch_event;
    v_ruleset record;
BEGIN
    v_event.event_index := 0;
    v_event.wallet := pyxp.checked_wallet(award.wallet);
    v_event.action := pyxp.checked_identifier('action', award.action, 64);
    v_event.key := pyxp.checked_award_key(award.idempotency_key);
    v_event.params := pyxp.checked_params(award.params);
    v_event.metadata := pyxp.checked_context(award.context);
    v_event.campaign_id := pyxp.context_column(v_event.metadata, 'campaign_id', 128);
    v_event.subject := pyxp.context_column(v_event.metadata, 'subject', 256);
    v_event.inputs := jsonb_build_object('action', v_event.action, 'wallet', v_event.wallet,
                                         'params', v_event.params);
    SELECT * INTO v_ruleset FROM pyxp.writing_ruleset();
    RETURN QUERY
        SELECT w.transaction_id, w.user_wallet, w.transaction_type, w.xp_amount, w.xp_requested, w.total_xp,
               w.current_level, w.xp_to_next_level, w.previous_level, w.replayed
          FROM pyxp.append_rows(v_ruleset.ruleset_id, v_ruleset.balance_floor, v_ruleset.timezone,
                                v_ruleset.has_caps,
                                pyxp.planned_awards(v_ruleset.ruleset_id, ARRAY[v_event], false), false) w;
END
$$;

-- Public: appends a compensating row (transaction_type REVERSAL, the opposite
-- of the applied amount, reverses = transaction_id) to the same wallet.
-- A row is reversed once: repeating the call with the same reason replays,
-- another reason is refused (PX014), as is reversing a reversal. The balance
-- floor does not apply: a reversal compensates exactly.
CREATE FUNCTION pyxp.reverse_transaction(transaction_id bigint, reason text)
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
