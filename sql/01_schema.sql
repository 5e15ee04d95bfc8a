-- pyxp schema: roles, tables, indexes.
--
-- Readable current definition. Migrations under migrations/versions/ install
-- frozen copies; tests check that both build the same database.
--
-- Roles are cluster-wide and may already exist (another database of the same
-- cluster, a concurrent migration): each is created only if missing, and a
-- concurrent creation by someone else is not an error.
DO $roles$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['pyxp_owner', 'pyxp_writer', 'pyxp_reader'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = v_role) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created meanwhile by a concurrent session
            END;
        END IF;
    END LOOP;
    -- The migrating role must be able to SET ROLE pyxp_owner below.
    IF NOT pg_catalog.pg_has_role(current_user, 'pyxp_owner', 'MEMBER') THEN
        EXECUTE format('GRANT pyxp_owner TO %I', current_user);
    END IF;
END
$roles$;

CREATE SCHEMA pyxp AUTHORIZATION pyxp_owner;
REVOKE ALL ON SCHEMA pyxp FROM PUBLIC;

-- Everything below is created by, and so owned by, the NOLOGIN owner role.
SET LOCAL ROLE pyxp_owner;

-- A ruleset version: rules + level curve, compiled from a TOML config seed.
-- Exactly one version is active (partial unique index below).
CREATE TABLE pyxp.rulesets (
    ruleset_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name           text NOT NULL,
    version        integer NOT NULL CHECK (version >= 1),
    content_hash   text NOT NULL,          -- sha256 of the compiled definition
    definition     jsonb NOT NULL,         -- compiled form, as applied
    source         text NOT NULL,          -- TOML text, as applied
    description    text,
    balance_floor  bigint,                 -- NULL: penalties apply in full
    is_active      boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    activated_at   timestamptz,
    -- Periods (SPEC 12) are calendar periods in this IANA zone: day, ISO
    -- week, month, year. Caps count in them, and so do the period boards.
    timezone       text NOT NULL DEFAULT 'UTC',
    has_caps       boolean NOT NULL DEFAULT false,  -- a rule carries a cap: the writer's slow path
    -- When pyxp.apply_rules_retroactively last adjusted balances to this
    -- version (NULL: never).
    applied_retroactively_at timestamptz,
    UNIQUE (name, version),
    UNIQUE (name, content_hash)
);
CREATE UNIQUE INDEX rulesets_one_active ON pyxp.rulesets ((true)) WHERE is_active;

-- Every activation of a ruleset, in order (0040): which ruleset, and so which
-- rules, floor, timezone and caps, was in force at any instant — the one of
-- the last activation at or before it. rulesets.activated_at keeps only a
-- ruleset's latest activation. Written by pyxp.activate_ruleset only;
-- append-only (pyxp.refuse_history_change, sql/09_security.sql). 0040 rebuilt
-- the activations made before it from rulesets.activated_at (reconstructed):
-- one per ruleset, its latest, so an earlier activation of a ruleset
-- activated again later is not there. activation_id is the order of the
-- activations (taken under the awards' lock: pyxp.activate_ruleset);
-- activated_at is the clock's.
CREATE TABLE pyxp.ruleset_activations (
    activation_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ruleset_id           bigint NOT NULL REFERENCES pyxp.rulesets,
    activated_at         timestamptz NOT NULL,
    previous_ruleset_id  bigint REFERENCES pyxp.rulesets,  -- the ruleset it replaced (NULL: the first)
    reconstructed        boolean NOT NULL DEFAULT false
);

-- The level curve of a ruleset, levels 1..N. Past the row with is_last, levels
-- follow each other every `increment` XP forever. Totals below the level-1
-- threshold (0) are level 1.
CREATE TABLE pyxp.level_thresholds (
    ruleset_id  bigint NOT NULL REFERENCES pyxp.rulesets,
    level       bigint NOT NULL CHECK (level >= 1),
    threshold   bigint NOT NULL CHECK (threshold >= 0),
    increment   bigint NOT NULL CHECK (increment > 0),  -- to the next level
    is_last     boolean NOT NULL,
    PRIMARY KEY (ruleset_id, level),
    UNIQUE (ruleset_id, threshold)
);

-- A rule: XP = round_half_away(xp_constant + sum(coefficient * input)).
-- event NULL: reachable only by action code through pyxp.award().
CREATE TABLE pyxp.rules (
    rule_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ruleset_id       bigint NOT NULL REFERENCES pyxp.rulesets,
    position         integer NOT NULL,     -- order in the file = order of ledger rows
    action           text NOT NULL,        -- written as xp_transactions.transaction_type
    event            text,
    campaign_types   text[],               -- NULL: every campaign type
    condition        text,                 -- NULL: always, else one fact of the call
    formula          text NOT NULL,        -- as written, for people
    xp_constant      numeric NOT NULL,
    xp_coefficients  jsonb NOT NULL DEFAULT '{}',  -- input name -> coefficient
    description      text,
    -- A cap (SPEC 12): a gain is cut to what is left of the wallet's allowance
    -- of cap_max_xp per cap_per in the ruleset's timezone. Rules of one
    -- cap_group share one allowance (and carry the same cap); without a
    -- group the allowance is the rule's own (pyxp.cap_allowance).
    cap_max_xp       bigint CHECK (cap_max_xp BETWEEN 1 AND 1000000000000000),
    cap_per          text CHECK (cap_per IN ('day', 'week', 'month', 'year')),
    cap_group        text,
    CONSTRAINT rules_cap_complete CHECK ((cap_max_xp IS NULL) = (cap_per IS NULL)),
    CONSTRAINT rules_cap_group_capped CHECK (cap_group IS NULL OR cap_max_xp IS NOT NULL),
    UNIQUE (ruleset_id, action),
    UNIQUE (ruleset_id, position)
);
CREATE INDEX rules_by_event ON pyxp.rules (ruleset_id, event);

-- Campaign registry: filled by award_campaign_creation, read by later calls.
-- A vote or completion naming an unknown campaign with its type records the
-- type; the creator stays NULL until the creation is awarded, or an agency's
-- client registration names the campaign (0023: it is then that agency's
-- AGENCY_B2C campaign, SPEC 5, and a creation by another wallet is refused).
-- A campaign whose approval named its creator before pyxp knew it gets no
-- row (its type is unknown), but its creation by another wallet is refused
-- too (pyxp.award_campaign_creation reads the approval's request).
CREATE TABLE pyxp.campaigns (
    campaign_id     text PRIMARY KEY,
    campaign_type   text NOT NULL CHECK (campaign_type IN ('B2C', 'AGENCY_B2C', 'INDIVIDUAL')),
    creator_wallet  text,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- The claims' key: the first 16 bytes of sha256(idempotency key).
-- Two different keys sharing them (odds 2^-128) make the second one's award
-- fail with PX010, never replay the other's result: the key texts are
-- compared.
-- PL/pgSQL: a SQL function that cannot be inlined (convert_to is only
-- STABLE) is planned anew at every call.
CREATE FUNCTION pyxp.key_hash(p_key text)
RETURNS uuid
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE STRICT
AS $$ BEGIN RETURN encode(substr(sha256(convert_to(p_key, 'UTF8')), 1, 16), 'hex')::uuid; END $$;

-- One row per flow call or reversal: its claim (the generic awards' claims
-- are their ledger rows: see xp_transactions.request_digest). Its primary
-- key is what serialises two concurrent calls with the same key: the second
-- INSERT waits for the first transaction, then sees the row and replays. A
-- later call with the same key and other inputs is refused (PX010).
-- About 100 bytes per call, whatever the key's or the inputs' length (0011;
-- before, the key text and a jsonb copy of the inputs: about 300): a key's
-- hash and its inputs' digest, because the call's ledger rows hold the rest
-- (their idempotency_key, created_at, their rules' ruleset, and the wallet,
-- campaign, subject and metadata its inputs are rebuilt from:
-- pyxp.rebuilt_request_inputs), which is what later calls consult (a
-- completion's owner, an onboarding's wallet) and what a PX010 shows of the
-- first call (pyxp.recorded_request). A call whose rows cannot give them
-- back (it wrote none, or was stored before 0011 in another form) keeps its
-- key, inputs, ruleset and time here; a reversal keeps its ruleset (its row
-- names no rule).
CREATE TABLE pyxp.xp_requests (
    key_hash         uuid PRIMARY KEY,          -- pyxp.key_hash(idempotency key)
    inputs_digest    bigint NOT NULL,           -- pyxp.request_inputs_digest(inputs)
    ruleset_id       bigint REFERENCES pyxp.rulesets,  -- curve the result was computed with; NULL: its rows' rules'
    created_at       timestamptz,               -- NULL: its rows'
    idempotency_key  text,                      -- NULL: its rows'
    inputs           jsonb,                     -- NULL: rebuilt from its rows
    archive_id       bigint,                    -- its rows were archived (xp_ledger_archives): kept key and inputs
    CONSTRAINT xp_requests_kept_together CHECK (
        (idempotency_key IS NULL) = (inputs IS NULL)
        AND (idempotency_key IS NULL OR (ruleset_id IS NOT NULL AND created_at IS NOT NULL)))
);

-- The ledger. Append-only: no UPDATE/DELETE/TRUNCATE privilege for anyone but
-- the owner, and triggers refuse them even for the owner, on every partition
-- (sql/12_partitions.sql, which also refuses DETACH and DROP of a partition).
-- Partitioned by range of created_at, one partition per calendar month (UTC;
-- sql/12_partitions.sql creates them ahead), so that a month's rows are one
-- table, and old months can be kept apart from the hot ones. What the
-- partitioning changes (0015): a key of the ledger holds created_at, so
--   * the primary key is (id, created_at): id stays unique (one identity
--     sequence hands it out), and a lookup by id probes each partition's
--     primary key;
--   * a generic award's claim, which must be unique across every partition,
--     is a row of pyxp.xp_award_claims (below), not a unique index of the
--     ledger;
--   * a row is reversed once because its reversal's key (reverse:<id>) is
--     claimed once in xp_requests; reverses carries no foreign key (the
--     writer reads the row it reverses; audit() reports a reversal whose
--     original is missing or reversed twice);
--   * (user_wallet, wallet_seq) is not a unique index: the writer numbers a
--     wallet's rows under its balance row lock, and audit()'s walk reports a
--     repeated or missing position (wallet_seq_gap).
-- Idempotency: a generic award's row (pyxp.award, pyxp.award_many) carries
-- request_digest, a digest of the call's inputs; its key is claimed in
-- xp_award_claims. Rows of flows and reversals have request_digest NULL:
-- their key is claimed in xp_requests, and xp_transactions_request_rows finds
-- their rows by the key's hash.
-- rule_id and idempotency_key carry no foreign key (a check per row, and a
-- share lock on the one rule and ruleset row every award names): audit()
-- reports a row whose rule or request is missing.
-- Invariants (checked by pyxp.audit()):
--   * per wallet, wallet_seq numbers the rows 1, 2, 3, ... in the order they
--     applied (the writer assigns it under the wallet's balance row lock, so
--     a wallet's rows commit in wallet_seq order), and balance_after =
--     previous balance_after + xp_amount in that order. Nothing relies on a
--     global order of ids (they may come from per-node ranges once the
--     ledger is distributed: README "Scaling out");
--   * xp_balances.total_xp = sum(xp_amount) = last balance_after, and
--     xp_balances.last_wallet_seq = the last row's wallet_seq.
CREATE TABLE pyxp.xp_transactions (
    id                bigint GENERATED ALWAYS AS IDENTITY,
    user_wallet       text NOT NULL,
    transaction_type  text NOT NULL,
    xp_amount         bigint NOT NULL,        -- applied
    xp_requested      bigint,                 -- set only when a balance floor cut the amount
    balance_after     bigint NOT NULL,
    rule_id           bigint,                 -- NULL for reversals
    campaign_id       text,
    subject           text,                   -- completion id, client email, ...
    idempotency_key   text NOT NULL,
    metadata          jsonb NOT NULL DEFAULT '{}',
    reverses          bigint,                 -- the row this one reverses (its id)
    created_at        timestamptz NOT NULL DEFAULT now(),
    -- The change feed's group (pyxp.changes, sql/11_changes.sql): the writing
    -- transaction's id, raised to the wallet's previous row's group so that a
    -- wallet's rows never go back in feed order. NULL for rows written before
    -- 0003 (their feed cursor is their id).
    feed_xid          xid8,
    -- A generic award's row: pyxp.inputs_digest of its inputs (its claim).
    request_digest    bigint,
    -- The row's position in its wallet's history: 1, 2, 3, ... (0008).
    wallet_seq        bigint NOT NULL,
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
-- A wallet's rows in order of application (history, audit, checkpoints). The
-- INCLUDE columns are what pyxp.audit's walk of every
-- wallet's chain reads, so the walk is an index-only scan in that order
-- (the heap in index order is random reads: 76 s against 5 s at 10M rows).
CREATE INDEX xp_transactions_wallet_seq ON pyxp.xp_transactions (user_wallet, wallet_seq)
    INCLUDE (balance_after, xp_amount, created_at, reverses);
CREATE INDEX xp_transactions_feed ON pyxp.xp_transactions (feed_xid, id);
-- Boards of past periods read the rows of a time range (pyxp.period_board):
-- rows are appended in created_at order, so a BRIN index finds them for a
-- few bytes per thousand rows.
CREATE INDEX xp_transactions_created ON pyxp.xp_transactions USING brin (created_at);
CREATE INDEX xp_transactions_request_rows ON pyxp.xp_transactions (pyxp.key_hash(idempotency_key))
    WHERE request_digest IS NULL;
-- The reversal of a row (a row is reversed once: its reversal's key is
-- claimed once in xp_requests; audit() reports a row reversed twice).
CREATE INDEX xp_transactions_reversals ON pyxp.xp_transactions (reverses)
    WHERE reverses IS NOT NULL;

-- A generic award's claim (pyxp.award, pyxp.award_many): its key's hash, and
-- where its ledger row is (id, and created_at, which names its partition).
-- Its primary key is what makes a key claimable once across every partition
-- of the ledger, and what serialises two concurrent awards with one key: the
-- second INSERT waits for the first transaction, then skips its row, and the
-- writer replays or raises PX010 (sql/05_engine.sql). The writer inserts the
-- claim and its row in one statement; audit() checks that each generic row
-- has its claim and each claim its row. About 90 bytes per award with its
-- index (the ledger's unique index on the key's hash it replaces, before
-- 0015: about 40).
CREATE TABLE pyxp.xp_award_claims (
    key_hash        uuid PRIMARY KEY,          -- pyxp.key_hash(idempotency key)
    transaction_id  bigint NOT NULL,           -- xp_transactions.id of its row
    created_at      timestamptz NOT NULL       -- xp_transactions.created_at of its row
);

-- Every idempotency key pyxp holds, wherever its claim is: a generic award's
-- row in the ledger (claimed in xp_award_claims), or a flow's or reversal's request (its key text
-- from its first ledger row, or kept in the request when it wrote none).
-- For auditors ("which call wrote this row?") and for checks that every key
-- has its rows.
CREATE VIEW pyxp.idempotency_keys AS
    SELECT t.idempotency_key, 'ledger'::text AS claimed_in, t.user_wallet, t.id AS transaction_id, t.created_at
      FROM pyxp.xp_transactions t
     WHERE t.request_digest IS NOT NULL
    UNION ALL
    SELECT coalesce(q.idempotency_key, f.idempotency_key), 'xp_requests', coalesce(f.user_wallet, q.inputs ->> 'wallet'),
           NULL, coalesce(q.created_at, f.created_at)
      FROM pyxp.xp_requests q
      LEFT JOIN LATERAL (SELECT t.idempotency_key, t.user_wallet, t.created_at FROM pyxp.xp_transactions t
                          WHERE pyxp.key_hash(t.idempotency_key) = q.key_hash AND t.request_digest IS NULL
                          LIMIT 1) f ON q.idempotency_key IS NULL;

-- Current balance per wallet, maintained in the same transaction as the
-- ledger rows. The range keeps xp_to_next_level (<= 100 + 2^62) and every
-- threshold arithmetic inside bigint.
CREATE TABLE pyxp.xp_balances (
    user_wallet        text PRIMARY KEY,
    total_xp           bigint NOT NULL DEFAULT 0
                       CHECK (total_xp BETWEEN -4611686018427387904 AND 4611686018427387904),
    current_level      bigint NOT NULL DEFAULT 1,
    xp_to_next_level   bigint NOT NULL,
    total_moderations  bigint NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    last_feed_xid      xid8,                   -- feed_xid of the wallet's last ledger row
    -- The wallet's latest period of each kind and its XP there (SPEC 12),
    -- kept by the writer for the boards of the current periods. Invariant
    -- (pyxp.audit checks it): <kind>_start is the latest period holding one
    -- of the wallet's rows (a reversal counts in the period of the row it
    -- reverses), <kind>_xp the sum of its rows there; NULL: no rows. So the
    -- board of period S is exactly the balances with <kind>_start = S as
    -- long as no balance has moved past S (pyxp.period_board).
    day_start          timestamptz,
    day_xp             bigint,
    week_start         timestamptz,
    week_xp            bigint,
    month_start        timestamptz,
    month_xp           bigint,
    year_start         timestamptz,
    year_xp            bigint,
    last_wallet_seq    bigint NOT NULL DEFAULT 0, -- wallet_seq of the wallet's last ledger row (0: none)
    -- Counted in xp_rank_counts (0009) and xp_period_rank_counts (0014).
    -- False only inside the call that created the balance: the writer counts
    -- it when it sets its total.
    ranked             boolean NOT NULL DEFAULT false
) WITH (fillfactor = 50);
-- Half of each page left free (0022): room for a new version of every row
-- of the page. An award's update changes indexed columns (total_xp, the
-- boards) and writes index entries anyway, but its new version stays on the
-- row's page. A new curve's recalculation (pyxp.recalculate_levels, which
-- install_ruleset runs while every award waits) changes no indexed column:
-- with room on the page, each of its updates is HOT, no index entry is
-- written, and the next scan of the page prunes the old versions (no
-- VACUUM needed). At 1M balances: 77-101 s with full pages, 7-9 s.
-- Leaderboard order: total_xp desc, ties by wallet compared byte by byte
-- (COLLATE "C": the same order on every server, whatever its locale, and
-- what the rank buckets below cut).
CREATE INDEX xp_balances_leaderboard ON pyxp.xp_balances (total_xp DESC, user_wallet COLLATE "C");
-- The boards of the current periods, same order.
CREATE INDEX xp_balances_day_board ON pyxp.xp_balances (day_start, day_xp DESC, user_wallet COLLATE "C");
CREATE INDEX xp_balances_week_board ON pyxp.xp_balances (week_start, week_xp DESC, user_wallet COLLATE "C");
CREATE INDEX xp_balances_month_board ON pyxp.xp_balances (month_start, month_xp DESC, user_wallet COLLATE "C");
CREATE INDEX xp_balances_year_board ON pyxp.xp_balances (year_start, year_xp DESC, user_wallet COLLATE "C");
-- Balances not counted in the rank buckets yet (a few at any time: those
-- being created): pyxp.rebalance_rank_buckets finds them without a scan.
CREATE INDEX xp_balances_unranked ON pyxp.xp_balances (user_wallet) WHERE NOT ranked;

-- Exact ranks without counting the balances above (pyxp.wallet_rank,
-- pyxp.leaderboard's deep pages; sql/07_ranks.sql). The all-time board
-- (total_xp desc, wallet) is cut into buckets of consecutive positions; a
-- bucket starts at the position of (total_xp = -neg_xp, wallet) and holds
-- the balances from there up to the next bucket's start. The first bucket
-- starts before every balance (neg_xp = -2^63, wallet ''). neg_xp (minus
-- the total) makes board order the index's ascending order, so "the last
-- start at or before a position" is one index probe.
-- Invariant (pyxp.audit checks it): per bucket, the sum of wallets over
-- its slots = the balances in it. Every bucket has its slot 0 row (the
-- count as cut). A writer adds and subtracts in the slot of its
-- transaction (its backend's pid, leased by an advisory lock, or above 2^22
-- when a prepared transaction still holds the pid's: pyxp.append_rows,
-- 0035): a row no other transaction in progress writes, so counting never
-- makes an award wait for another, nor closes a deadlock cycle, nor queues
-- behind a client idle in a transaction, or a prepared one.
-- pyxp.rebalance_rank_buckets folds the writers' slots back
-- into slot 0, and is the only place bucket starts change, under a lock
-- that excludes every writer.
CREATE TABLE pyxp.xp_rank_counts (
    neg_xp   bigint NOT NULL,
    wallet   text COLLATE "C" NOT NULL,
    slot     integer NOT NULL CHECK (slot >= 0),
    wallets  bigint NOT NULL,
    PRIMARY KEY (neg_xp, wallet, slot)
) WITH (fillfactor = 50);  -- room for HOT updates of the counts
INSERT INTO pyxp.xp_rank_counts (neg_xp, wallet, slot, wallets) VALUES (-9223372036854775807, '', 0, 0);
-- The bucket starts (slot 0 rows; 0014): a probe for the bucket holding a
-- position reads one entry here, instead of stepping back over the rows of
-- every backend that counted in the bucket before reaching its slot 0 row.
-- Writers never write slot 0, so their updates leave this index alone.
CREATE INDEX xp_rank_counts_starts ON pyxp.xp_rank_counts (neg_xp, wallet) WHERE slot = 0;

-- Exact ranks on the boards of the current periods (pyxp.wallet_rank with a
-- period; 0014). Per period, period start and period XP, how many balances
-- hold it: a period's XP values are few (what a wallet earns in a day or a
-- week), so each value is a bucket of the board (period_xp desc, wallet).
-- A value many wallets share (76,000 at 2 XP on a week's board of the
-- bench) is cut by wallet into buckets, each starting at wallet_start ('':
-- the value's first). A wallet's rank on the board of period S is 1 + the
-- wallets counted at a higher XP or in an earlier bucket of its own XP +
-- the balances of its bucket before it (an index range of
-- xp_balances_<period>_board, at most about 2 x bucket_size entries),
-- instead of a count of the board above it.
-- Invariant (pyxp.audit checks it): per bucket, the sum of wallets over the
-- slots = the (ranked) balances with <period>_start = period_start,
-- <period>_xp = period_xp and a wallet from wallet_start to the value's next
-- bucket start. The writer moves a balance from its old bucket to its new
-- one, in the slot of its transaction, as for xp_rank_counts;
-- pyxp.rebalance_rank_buckets folds the slots into slot 0, drops the
-- buckets that count nobody, cuts the values that grew past 2 x bucket_size
-- wallets, and is the only place bucket starts other than '' appear.
CREATE TABLE pyxp.xp_period_rank_counts (
    period        text NOT NULL CHECK (period IN ('day', 'week', 'month', 'year')),
    period_start  timestamptz NOT NULL,
    period_xp     bigint NOT NULL,
    wallet_start  text COLLATE "C" NOT NULL,
    slot          integer NOT NULL CHECK (slot >= 0),
    wallets       bigint NOT NULL,
    PRIMARY KEY (period, period_start, period_xp, wallet_start, slot)
) WITH (fillfactor = 50);  -- room for HOT updates of the counts
-- The bucket starts, as xp_rank_counts_starts.
CREATE INDEX xp_period_rank_counts_starts ON pyxp.xp_period_rank_counts (period, period_start, period_xp, wallet_start)
    WHERE slot = 0;

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

-- How much of each capped allowance a wallet used in a period: the sum of
-- the amounts its capped gains applied there, less what reversals of them
-- freed (pyxp.audit recomputes it from the ledger). Written by the writer
-- under the wallet's balance row lock, so concurrent awards never exceed a
-- cap. allowance: 'group:<name>' or 'rule:<action>' (pyxp.cap_allowance).
-- A row is keyed by its period's start (date_trunc(per, at, zone) of the
-- rules that count there): the rows counted in it are those with that start.
-- When an activation puts an allowance in periods of another zone or length
-- (cap per), its current period already holds gains that were counted in
-- the old periods (or, for an action moved into its group, under another
-- allowance): the activation counts them in as seeded_xp (part of used_xp),
-- with the period it counted (seeded_per in seeded_zone, from period_start),
-- the ruleset whose allowance it counted (seeded_by: its actions), when
-- (seeded_at) and which gains: the wallet's rows up to position seeded_seq
-- (wallet_seq), those that existed then, whatever their created_at says (a
-- clock that stepped back dates rows after the switch that counted them:
-- 0031, a hostile test), so that the new period's allowance starts from what
-- it used (pyxp.seed_cap_usage; 0025, found by a hostile test). A reversal
-- frees its gain in both.
CREATE TABLE pyxp.xp_cap_usage (
    user_wallet   text NOT NULL,
    allowance     text NOT NULL,
    period_start  timestamptz NOT NULL,
    used_xp       bigint NOT NULL CHECK (used_xp >= 0),
    seeded_xp     bigint NOT NULL DEFAULT 0,
    seeded_per    text,
    seeded_zone   text,
    seeded_by     bigint,  -- a ruleset_id (no foreign key: its trigger would fire on every usage row the writer inserts)
    seeded_at     timestamptz,
    seeded_seq    bigint,
    PRIMARY KEY (user_wallet, allowance, period_start),
    -- A function, not the expression: PostgreSQL reads a CHECK's stored
    -- expression again at every statement that writes the table, and the
    -- expression written out cost a capped award about 3 % of its CPU (0035).
    CONSTRAINT xp_cap_usage_seed_check CHECK (
        pyxp.cap_usage_seed_consistent(used_xp, seeded_xp, seeded_per, seeded_zone, seeded_by, seeded_at, seeded_seq))
);
-- The seeded rows (few: those of the periods a switch crossed), for a
-- reversal's freeing and the audit.
CREATE INDEX xp_cap_usage_seeded ON pyxp.xp_cap_usage (user_wallet, allowance) WHERE seeded_at IS NOT NULL;

-- Audit checkpoints (pyxp.record_audit_checkpoint): each one a point up to
-- which the ledger was verified. snapshot_xmin is the xmin of the snapshot
-- the verification read: every row that snapshot did not see was written by
-- a transaction with an id >= snapshot_xmin, so its feed_xid (>= its writer's
-- id) is too, and the next verification finds the wallets with new rows by a
-- range scan of xp_transactions_feed, in time proportional to the new rows.
CREATE TABLE pyxp.xp_audit_checkpoints (
    checkpoint_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at        timestamptz NOT NULL DEFAULT now(),
    snapshot_xmin     xid8 NOT NULL,
    wallets_verified  bigint NOT NULL,   -- wallets with rows since the previous checkpoint
    rows_verified     bigint NOT NULL    -- rows since the previous checkpoint
);

-- Per wallet, its position at its last checkpoint: the wallet_seq of its last
-- verified row and the balance there. A wallet without a row here starts at
-- position 0 with 0 XP. pyxp.audit checks every row here against the ledger.
CREATE TABLE pyxp.xp_wallet_checkpoints (
    user_wallet    text PRIMARY KEY,
    wallet_seq     bigint NOT NULL CHECK (wallet_seq >= 1),
    total_xp       bigint NOT NULL,
    checkpoint_id  bigint NOT NULL REFERENCES pyxp.xp_audit_checkpoints
);

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
    archived_by_xid      xid8 NOT NULL DEFAULT pg_current_xact_id(),  -- its transaction (a guard from before 0030 reads it)
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
    archive_id   bigint NOT NULL REFERENCES pyxp.xp_ledger_archives,
    -- the change-feed cursor its last archived row had (sql/11_changes.sql):
    -- a consumer of this wallet's rows past it missed none (0026; NULL:
    -- archived before 0026, unknown)
    last_cursor  bigint
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

-- Agency -> B2C client registrations, granted once per client email.
CREATE TABLE pyxp.agency_b2c_clients (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agency_wallet  text NOT NULL,
    client_email   text NOT NULL,
    client_wallet  text,
    company_name   text,
    campaign_id    text NOT NULL,
    xp_granted     boolean NOT NULL DEFAULT false,
    onboarded_at   timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (agency_wallet, client_email, campaign_id)
);
CREATE INDEX agency_b2c_clients_pending ON pyxp.agency_b2c_clients (client_email)
    WHERE NOT xp_granted;

-- Client emails stored before 0028 in a database whose collation read them
-- otherwise than pyxp.lower_cased does since (LOCALE 'C': Émile@…; ICU
-- tr-TR: alıce@…), filled by migration 0028 from the registrations and the
-- onboarding keys of that time, and read by the flows
-- (pyxp.email_before_0028): a client spelling its email otherwise than at
-- its registration is still found, and paid once. Empty in a database
-- installed at 0028 or whose collation is C.UTF-8's. Migration 0045 adds
-- the forms stored before it that pyxp.folded_email reads otherwise since
-- (a capital with a combining mark, J̌AN@… stored as j + U+030C; a final
-- sigma): the name says when the table began.
CREATE TABLE pyxp.xp_email_forms_before_0028 (
    client_email text NOT NULL,  -- as read since 0028
    stored_form  text NOT NULL,  -- as stored before
    PRIMARY KEY (client_email, stored_form)
);

-- The rulesets an older install_ruleset wrote otherwise than their
-- definition reads today (a definition with caps installed before caps
-- existed: its rules have none), found by migration 0029, with the digest
-- of their tables then (pyxp.ruleset_tables_digest). audit() compares such a
-- ruleset's tables with that digest, every other one's with its definition
-- (ruleset_mismatch). Empty in a database installed at 0029.
CREATE TABLE pyxp.xp_rulesets_as_installed (
    ruleset_id     bigint PRIMARY KEY REFERENCES pyxp.rulesets,
    tables_digest  text NOT NULL
);

-- One row per flow subject ever named ('client_email:<email>',
-- 'completion:<completion id>', 'campaign:<campaign id>'): the row lock that
-- serialises every call about that subject (pyxp.lock_subject): an email's
-- registrations and onboarding, a completion's submission, outcome and votes,
-- a campaign's creation and approval (0023).
CREATE TABLE pyxp.subject_locks (
    subject      text PRIMARY KEY,
    -- A completion's campaign: the one the first call naming the completion
    -- named (its submission, its outcome or a vote; 0023), which every later
    -- call must name (pyxp.check_completion_owner). NULL for other subjects,
    -- and for a completion not named since 0023 (its first call after takes
    -- the campaign of its submission or outcome, if any, else its own).
    campaign_id  text
);

-- What every award function returns: one row per ledger row created or replayed.
-- total_xp / levels are the wallet's state right after that row.
CREATE TYPE pyxp.award_result AS (
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

-- The revision whose functions this database has: every revision from 0036
-- on replaces it with its own number (and its downgrade with the one before).
-- pyxp.alembic_version says the same, but a table is copied by a logical
-- replication that publishes it (FOR ALL TABLES) and a function is not:
-- pyxp db current and pyxp db upgrade refuse a database whose two differ
-- (pyxp/schema.py, revision_mismatch; a hostile test, 0036: a subscriber
-- said 0036 with 0035's functions, and pyxp db upgrade did nothing there).
CREATE FUNCTION pyxp.schema_revision()
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$ SELECT '0048' $$;
