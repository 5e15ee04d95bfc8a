-- 0003: the change feed (SPEC 11): feed groups on ledger rows and balances,
-- the writers that set them, pyxp.changes, rate-limited wake-ups.
-- Frozen copy of what sql/*.sql defines at this revision; never edit it.
SET LOCAL ROLE pyxp_owner;

-- Adding nullable columns without a default rewrites nothing: rows written
-- before this revision keep feed_xid NULL (their cursor is their id).
ALTER TABLE pyxp.xp_transactions ADD COLUMN feed_xid xid8;
ALTER TABLE pyxp.xp_balances ADD COLUMN last_feed_xid xid8;
CREATE INDEX xp_transactions_feed ON pyxp.xp_transactions (feed_xid, id);

-- Every id written so far must stay below the first group's cursor (any later
-- transaction's id is at least the current xmin).
DO $check$
DECLARE
    v_max_id bigint := (SELECT max(id) FROM pyxp.xp_transactions);
    v_first bigint := pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 24;
BEGIN
    IF v_max_id >= v_first THEN
        RAISE EXCEPTION 'ledger ids (up to %) reach the first feed cursor %', v_max_id, v_first;
    END IF;
END
$check$;
CREATE OR REPLACE FUNCTION pyxp.write_ledger_rows(p_wallet text, p_ruleset_id bigint, p_key text,
                                       p_rows pyxp.planned_row[], p_moderations integer,
                                       p_apply_floor boolean)
RETURNS SETOF pyxp.award_result
LANGUAGE plpgsql
AS $$
DECLARE
    v_floor bigint;
    v_running bigint;
    v_row pyxp.planned_row;
    v_out pyxp.award_result;
    v_level bigint;
    v_next numeric;
    v_feed xid8;
BEGIN
    IF cardinality(p_rows) = 0 AND p_moderations = 0 THEN
        RETURN;
    END IF;
    -- The wallet's lock. A new wallet's row is inserted first; a concurrent
    -- insert of the same wallet makes ON CONFLICT wait, then we lock its row.
    SELECT b.total_xp, b.last_feed_xid INTO v_running, v_feed
      FROM pyxp.xp_balances b WHERE b.user_wallet = p_wallet FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO pyxp.xp_balances (user_wallet, total_xp, current_level, xp_to_next_level)
        SELECT p_wallet, 0, c.level, c.next_level_xp::bigint FROM pyxp.curve_position(p_ruleset_id, 0) c
        ON CONFLICT (user_wallet) DO NOTHING;
        SELECT b.total_xp, b.last_feed_xid INTO STRICT v_running, v_feed
          FROM pyxp.xp_balances b WHERE b.user_wallet = p_wallet FOR UPDATE;
    END IF;
    -- The feed group of these rows (sql/11_changes.sql): this transaction's
    -- id, or the wallet's last group if that is higher (greatest skips NULL).
    v_feed := greatest(pg_current_xact_id(), v_feed);
    IF p_apply_floor THEN
        SELECT r.balance_floor INTO v_floor FROM pyxp.rulesets r WHERE r.ruleset_id = p_ruleset_id;
    END IF;
    SELECT c.level, c.next_level_xp INTO v_level, v_next FROM pyxp.curve_position(p_ruleset_id, v_running) c;

    FOREACH v_row IN ARRAY p_rows LOOP
        v_out.previous_level := v_level;
        v_out.xp_requested := NULL;
        v_out.xp_amount := v_row.xp_amount;
        v_out.xp_amount := pyxp.floored_amount(v_row.xp_amount, v_floor, v_running);
        IF v_out.xp_amount <> v_row.xp_amount THEN
            v_out.xp_requested := v_row.xp_amount;
        END IF;
        IF v_running + v_out.xp_amount NOT BETWEEN -pyxp.balance_limit() AND pyxp.balance_limit() THEN
            RAISE EXCEPTION 'balance of % would be %, out of range', p_wallet, v_running + v_out.xp_amount
                USING ERRCODE = 'PX019', HINT = 'a balance stays between -2^62 and 2^62';
        END IF;
        v_running := v_running + v_out.xp_amount;

        INSERT INTO pyxp.xp_transactions (user_wallet, transaction_type, xp_amount, xp_requested,
                                          balance_after, rule_id, campaign_id, subject,
                                          idempotency_key, metadata, reverses, feed_xid)
        VALUES (p_wallet, v_row.transaction_type, v_out.xp_amount, v_out.xp_requested,
                v_running, v_row.rule_id, v_row.campaign_id, v_row.subject,
                p_key, coalesce(v_row.metadata, '{}'), v_row.reverses, v_feed)
        RETURNING id INTO v_out.transaction_id;

        SELECT c.level, c.next_level_xp INTO v_level, v_next FROM pyxp.curve_position(p_ruleset_id, v_running) c;
        v_out.user_wallet := p_wallet;
        v_out.transaction_type := v_row.transaction_type;
        v_out.total_xp := v_running;
        v_out.current_level := v_level;
        v_out.xp_to_next_level := (v_next - v_running)::bigint;
        v_out.replayed := false;
        RETURN NEXT v_out;
    END LOOP;

    UPDATE pyxp.xp_balances b
       SET total_xp = v_running,
           current_level = v_level,
           xp_to_next_level = (v_next - v_running)::bigint,
           total_moderations = b.total_moderations + p_moderations,
           updated_at = now(),
           last_feed_xid = CASE WHEN cardinality(p_rows) > 0 THEN v_feed ELSE b.last_feed_xid END
     WHERE b.user_wallet = p_wallet;
END
$$;
CREATE OR REPLACE FUNCTION pyxp.award_many(events jsonb)
RETURNS SETOF pyxp.batch_award_result
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_events pyxp.batch_event[] := '{}';
    v_new pyxp.batch_event[];        -- events whose key is not stored yet
    v_rows pyxp.batch_row[];
    v_event pyxp.batch_event;
    v_item jsonb;
    v_index integer := -1;
    v_ruleset bigint;
    v_floor bigint;
    v_problem record;
    v_message text;
    v_hint text;
    v_code text;
BEGIN
    IF pg_column_size(award_many.events) > 16777216 THEN  -- size before work
        RAISE EXCEPTION 'a batch holds at most 16 MiB of JSON, got % bytes', pg_column_size(award_many.events)
            USING ERRCODE = 'PX023', HINT = 'split the batch';
    ELSIF jsonb_typeof(award_many.events) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'events must be a JSON array of awards'
            USING ERRCODE = 'PX017',
                  HINT = '[{"wallet": ..., "action": ..., "idempotency_key": ..., "params": {...}, "context": {...}}]';
    ELSIF jsonb_array_length(award_many.events) > 10000 THEN
        RAISE EXCEPTION 'a batch holds at most 10000 events, got %', jsonb_array_length(award_many.events)
            USING ERRCODE = 'PX023', HINT = 'split the batch';
    END IF;

    -- 1. Validate and normalise each event, as pyxp.award does. One exception
    --    block for the whole loop (not one per event): it only adds the index.
    BEGIN
        FOR v_item IN SELECT e FROM jsonb_array_elements(award_many.events) e LOOP
            v_index := v_index + 1;
            IF jsonb_typeof(v_item) IS DISTINCT FROM 'object' THEN
                RAISE EXCEPTION 'not a JSON object' USING ERRCODE = 'PX017',
                    HINT = '{"wallet": ..., "action": ..., "idempotency_key": ..., "params": {...}}';
            END IF;
            v_event.event_index := v_index;
            -- Texts only: a number or object is not silently turned into its JSON text.
            v_event.wallet := pyxp.checked_wallet(
                CASE WHEN jsonb_typeof(v_item -> 'wallet') = 'string' THEN v_item ->> 'wallet' END);
            v_event.action := pyxp.checked_identifier('action',
                CASE WHEN jsonb_typeof(v_item -> 'action') = 'string' THEN v_item ->> 'action' END, 64);
            v_event.key := pyxp.checked_award_key(
                CASE WHEN jsonb_typeof(v_item -> 'idempotency_key') = 'string'
                     THEN v_item ->> 'idempotency_key' END);
            -- JSON null params/context: as if omitted (SQL NULL in pyxp.award).
            v_event.params := pyxp.checked_params(nullif(v_item -> 'params', 'null'::jsonb));
            v_event.metadata := pyxp.checked_context(nullif(v_item -> 'context', 'null'::jsonb));
            v_event.campaign_id := pyxp.context_column(v_event.metadata, 'campaign_id', 128);
            v_event.subject := pyxp.context_column(v_event.metadata, 'subject', 256);
            v_event.metadata := v_event.metadata || v_event.params;
            -- Same canonical inputs as pyxp.award: a batch replays single awards and back.
            v_event.inputs := jsonb_build_object('action', v_event.action, 'wallet', v_event.wallet,
                                                 'params', v_event.params);
            v_events := v_events || v_event;
        END LOOP;
    EXCEPTION WHEN SQLSTATE 'PX001' OR SQLSTATE 'PX004' OR SQLSTATE 'PX016' OR SQLSTATE 'PX017' THEN
        GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT, v_hint = PG_EXCEPTION_HINT, v_code = RETURNED_SQLSTATE;
        RAISE EXCEPTION 'event %: %', v_index, v_message
            USING ERRCODE = v_code, HINT = coalesce(nullif(v_hint, ''), 'see README: Error codes');
    END;

    PERFORM pyxp.require_read_committed();
    LOCK TABLE pyxp.xp_balances IN ROW EXCLUSIVE MODE;  -- lock protocol: see 04_rulesets.sql
    v_ruleset := pyxp.active_ruleset_id();
    SELECT r.balance_floor INTO v_floor FROM pyxp.rulesets r WHERE r.ruleset_id = v_ruleset;

    -- 2. Rules: unknown actions, input problems (formula_input_problems, as
    --    planned_rows), amounts. Like pyxp.award, an event whose key is
    --    already stored replays without these checks (its action may have
    --    left the active ruleset since): they apply to v_new only.
    v_new := ARRAY(SELECT e FROM unnest(v_events) e
                    WHERE NOT EXISTS (SELECT FROM pyxp.xp_requests q WHERE q.idempotency_key = e.key));
    SELECT e.event_index, e.action INTO v_problem
      FROM unnest(v_new) e
     WHERE NOT EXISTS (SELECT FROM pyxp.rules ru WHERE ru.ruleset_id = v_ruleset AND ru.action = e.action)
     ORDER BY e.event_index LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'event %: unknown action %', v_problem.event_index, quote_literal(v_problem.action)
            USING ERRCODE = 'PX009', HINT = 'an action code of the active ruleset: pyxp rules show';
    END IF;
    SELECT e.event_index, x.code, x.message, x.hint INTO v_problem
      FROM unnest(v_new) e
      JOIN pyxp.rules ru ON ru.ruleset_id = v_ruleset AND ru.action = e.action
     CROSS JOIN LATERAL pyxp.formula_input_problems(ru.action, ru.xp_coefficients, e.params, true) x
     ORDER BY x.code = 'PX017', e.event_index LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'event %: %', v_problem.event_index, v_problem.message
            USING ERRCODE = v_problem.code, HINT = v_problem.hint;
    END IF;

    SELECT array_agg(ROW(w.event_index, w.first_index, w.wallet, w.action, w.key, w.rule_id, w.amount,
                         w.campaign_id, w.subject, w.metadata, w.inputs, false, NULL, NULL)::pyxp.batch_row
                     ORDER BY w.event_index)
      INTO v_rows
      FROM (SELECT e.event_index, min(e.event_index) OVER (PARTITION BY e.key) AS first_index, e.wallet,
                   e.action, e.key, ru.rule_id,
                   pyxp.rule_amount(ru.xp_constant, ru.xp_coefficients, e.params) AS amount,
                   e.campaign_id, e.subject, e.metadata, e.inputs
              FROM unnest(v_events) e
              LEFT JOIN pyxp.rules ru ON ru.ruleset_id = v_ruleset AND ru.action = e.action) w;

    SELECT b.event_index, b.action, b.amount INTO v_problem
      FROM unnest(v_rows) b JOIN unnest(v_new) n ON n.event_index = b.event_index
     WHERE abs(b.amount) > 1e15
     ORDER BY b.event_index LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'event %: XP amount % of % is out of range', v_problem.event_index, v_problem.amount, v_problem.action
            USING ERRCODE = 'PX004', HINT = 'an award is at most 10^15 XP; check the formula inputs';
    END IF;

    -- 3. Idempotency. Within the batch, a repeated key must carry the same
    --    inputs (it then replays its first occurrence). Then claim the keys
    --    (key order: two batches never wait on each other in a cycle); a key
    --    already stored must carry the same inputs and replays.
    SELECT b.event_index, b.key, b.first_index INTO v_problem
      FROM unnest(v_rows) b JOIN unnest(v_rows) f ON f.event_index = b.first_index
     WHERE b.event_index <> b.first_index AND b.inputs IS DISTINCT FROM f.inputs
     ORDER BY b.event_index LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'event %: idempotency key % was already used with other inputs (event %)',
                        v_problem.event_index, quote_literal(v_problem.key), v_problem.first_index
            USING ERRCODE = 'PX010', HINT = 'repeat a call with exactly the same inputs to get its result again';
    END IF;
    WITH claimed AS (
        INSERT INTO pyxp.xp_requests (idempotency_key, inputs, ruleset_id)
        SELECT b.key, b.inputs, v_ruleset FROM unnest(v_rows) b
         WHERE b.event_index = b.first_index ORDER BY b.key
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING idempotency_key
    )
    SELECT array_agg(ROW(b.event_index, b.first_index, b.wallet, b.action, b.key, b.rule_id, b.amount,
                         b.campaign_id, b.subject, b.metadata, b.inputs,
                         c.idempotency_key IS NOT NULL AND b.event_index = b.first_index,
                         NULL, NULL)::pyxp.batch_row ORDER BY b.event_index)
      INTO v_rows
      FROM unnest(v_rows) b LEFT JOIN claimed c ON c.idempotency_key = b.key;
    SELECT b.event_index, b.key, q.inputs AS first_inputs, b.inputs INTO v_problem
      FROM unnest(v_rows) b JOIN pyxp.xp_requests q ON q.idempotency_key = b.key
     WHERE b.event_index = b.first_index AND NOT b.claimed AND q.inputs IS DISTINCT FROM b.inputs
     ORDER BY b.event_index LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'event %: idempotency key % was already used with other inputs',
                        v_problem.event_index, quote_literal(v_problem.key)
            USING ERRCODE = 'PX010', DETAIL = format('first call: %s; this call: %s', v_problem.first_inputs, v_problem.inputs),
                  HINT = 'repeat a call with exactly the same inputs to get its result again';
    END IF;

    -- 4. Balance rows: each wallet's row is created if missing or locked if
    --    present, one statement, strictly in wallet order. (Creating every
    --    missing row first and locking the others after let a batch hold a
    --    new wallet's row while waiting for an older one that a caller
    --    awarding in wallet order held: a deadlock, 40P01.) The no-op update
    --    is what locks an existing row; it changes no indexed column (HOT).
    INSERT INTO pyxp.xp_balances AS x (user_wallet, total_xp, current_level, xp_to_next_level)
    SELECT w.wallet, 0, c.level, c.next_level_xp::bigint
      FROM (SELECT DISTINCT b.wallet FROM unnest(v_rows) b WHERE b.claimed) w
     CROSS JOIN pyxp.curve_position(v_ruleset, 0) c
     ORDER BY w.wallet
    ON CONFLICT (user_wallet) DO UPDATE SET updated_at = x.updated_at;

    -- 5. Amounts applied and running balances, per wallet in event order.
    --    Without a floor, a window sum; with one, penalties depend on the
    --    running balance, so rows of a wallet are walked in order.
    IF v_floor IS NULL THEN
        SELECT array_agg(ROW(w.event_index, w.first_index, w.wallet, w.action, w.key, w.rule_id, w.amount,
                             w.campaign_id, w.subject, w.metadata, w.inputs, w.claimed,
                             CASE WHEN w.claimed THEN w.amount END,
                             CASE WHEN w.claimed THEN w.total_xp + w.running END)::pyxp.batch_row
                         ORDER BY w.event_index)
          INTO v_rows
          FROM (SELECT b.*, x.total_xp,
                       sum(b.amount) FILTER (WHERE b.claimed)
                           OVER (PARTITION BY b.wallet ORDER BY b.event_index) AS running
                  FROM unnest(v_rows) b LEFT JOIN pyxp.xp_balances x ON x.user_wallet = b.wallet) w;
    ELSE
        DECLARE
            v_row pyxp.batch_row;
            v_next pyxp.batch_row[] := '{}';
            v_wallet text;
            v_running numeric;
        BEGIN
            FOR v_row IN SELECT b.* FROM unnest(v_rows) b ORDER BY b.wallet, b.event_index LOOP
                IF v_row.claimed THEN
                    IF v_wallet IS DISTINCT FROM v_row.wallet THEN
                        v_wallet := v_row.wallet;
                        SELECT x.total_xp INTO v_running FROM pyxp.xp_balances x WHERE x.user_wallet = v_wallet;
                    END IF;
                    v_row.applied := pyxp.floored_amount(v_row.amount, v_floor, v_running);
                    v_running := v_running + v_row.applied;
                    v_row.balance_after := v_running;
                END IF;
                v_next := v_next || v_row;
            END LOOP;
            v_rows := v_next;
        END;
    END IF;
    SELECT b.event_index, b.wallet, b.balance_after INTO v_problem FROM unnest(v_rows) b
     WHERE b.claimed AND b.balance_after NOT BETWEEN -pyxp.balance_limit() AND pyxp.balance_limit()
     ORDER BY b.event_index LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'event %: balance of % would be %, out of range', v_problem.event_index, v_problem.wallet,
                        v_problem.balance_after
            USING ERRCODE = 'PX019', HINT = 'a balance stays between -2^62 and 2^62';
    END IF;

    -- 6. Append the rows (wallet, event order: ids follow each balance_after chain)
    --    and update each balance once.
    --    Feed group: this transaction's id, or the wallet's last group if
    --    higher (see write_ledger_rows and sql/11_changes.sql).
    INSERT INTO pyxp.xp_transactions (user_wallet, transaction_type, xp_amount, xp_requested, balance_after,
                                      rule_id, campaign_id, subject, idempotency_key, metadata, feed_xid)
    SELECT b.wallet, b.action, b.applied::bigint, CASE WHEN b.applied <> b.amount THEN b.amount::bigint END,
           b.balance_after::bigint, b.rule_id, b.campaign_id, b.subject, b.key, b.metadata,
           greatest(pg_current_xact_id(), x.last_feed_xid)
      FROM unnest(v_rows) b JOIN pyxp.xp_balances x ON x.user_wallet = b.wallet
     WHERE b.claimed
     ORDER BY b.wallet, b.event_index;

    UPDATE pyxp.xp_balances x
       SET total_xp = f.balance_after, current_level = c.level,
           xp_to_next_level = (c.next_level_xp - f.balance_after)::bigint, updated_at = now(),
           last_feed_xid = greatest(pg_current_xact_id(), x.last_feed_xid)
      FROM (SELECT DISTINCT ON (b.wallet) b.wallet, b.balance_after::bigint AS balance_after
              FROM unnest(v_rows) b WHERE b.claimed ORDER BY b.wallet, b.event_index DESC) f
     CROSS JOIN LATERAL pyxp.curve_position(v_ruleset, f.balance_after) c
     WHERE x.user_wallet = f.wallet;

    -- 7. One result row per event, in event order: new rows, or the rows its
    --    key produced before (replayed).
    RETURN QUERY
        SELECT b.event_index, t.id, t.user_wallet, t.transaction_type, t.xp_amount, t.xp_requested,
               t.balance_after, now_.level, (now_.next_level_xp - t.balance_after)::bigint, before_.level,
               NOT (b.claimed AND b.event_index = b.first_index)
          FROM unnest(v_rows) b
          JOIN pyxp.xp_requests q ON q.idempotency_key = b.key
          JOIN pyxp.xp_transactions t ON t.idempotency_key = b.key
         CROSS JOIN LATERAL pyxp.curve_position(q.ruleset_id, t.balance_after) now_
         CROSS JOIN LATERAL pyxp.curve_position(q.ruleset_id, t.balance_after - t.xp_amount) before_
         ORDER BY b.event_index, t.id;
END
$$;
RESET ROLE;

SET LOCAL ROLE pyxp_owner;

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
    v_horizon xid8 := CASE WHEN pg_is_in_recovery() THEN pg_snapshot_xmin(v_snapshot) ELSE least(
        (SELECT min(x.xid)
           FROM pg_snapshot_xip(v_snapshot) x(xid)
          WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_locks l
                              JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
                             WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock'
                               AND l.transactionid = xid(x.xid)
                               AND a.datid <> (SELECT d.oid FROM pg_catalog.pg_database d
                                                WHERE d.datname = current_database()))),
        pg_current_xact_id_if_assigned(),
        pg_snapshot_xmax(v_snapshot)) END;
    v_group xid8;
    v_rank bigint;
BEGIN
    IF v_after IS NULL OR v_after < 0 THEN
        RAISE EXCEPTION 'invalid after_cursor: %', coalesce(v_after::text, 'NULL')
            USING ERRCODE = 'PX023', HINT = 'after_cursor is 0 (from the start) or a cursor the feed returned';
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
            (SELECT (g.feed_xid::text::bigint << 24) + g.rank, g.id, g.user_wallet, g.transaction_type,
                    g.xp_amount, g.xp_requested, g.balance_after, g.rule_id, g.campaign_id, g.subject,
                    g.idempotency_key, g.metadata, g.reverses, g.created_at, g.feed_xid
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
            (SELECT (t.feed_xid::text::bigint << 24) + r.rank, t.*
               FROM pyxp.xp_transactions t
              CROSS JOIN LATERAL (SELECT count(*) AS rank FROM pyxp.xp_transactions o
                                   WHERE o.feed_xid = t.feed_xid AND o.id <= t.id) r
              WHERE v_wallet IS NOT NULL AND t.user_wallet = v_wallet
                AND t.feed_xid >= v_group AND t.feed_xid < v_horizon
                AND (t.feed_xid > v_group OR r.rank > v_rank)
              ORDER BY t.id
              LIMIT v_max)
        )
        SELECT p.cur, p.id, p.user_wallet, p.transaction_type, p.xp_amount, p.balance_after,
               before_.level, after_.level, p.campaign_id, p.subject, p.created_at
          FROM page p
          JOIN pyxp.xp_requests q ON q.idempotency_key = p.idempotency_key
         CROSS JOIN LATERAL pyxp.curve_position(q.ruleset_id, p.balance_after - p.xp_amount) before_
         CROSS JOIN LATERAL pyxp.curve_position(q.ruleset_id, p.balance_after) after_
         ORDER BY p.cur
         LIMIT v_max;
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
-- "Live XP" has the measured cost of both designs.
CREATE SEQUENCE pyxp.feed_wakeup_slot;

CREATE FUNCTION pyxp.wake_feed_listeners()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    v_slot bigint := (extract(epoch FROM clock_timestamp()) * 10)::bigint;  -- 100 ms slots
BEGIN
    IF v_slot > (SELECT s.last_value FROM pyxp.feed_wakeup_slot s) THEN
        PERFORM setval('pyxp.feed_wakeup_slot', v_slot);
        PERFORM pg_notify('pyxp_changes', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER xp_transactions_wake_feed
    AFTER INSERT ON pyxp.xp_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION pyxp.wake_feed_listeners();

REVOKE ALL ON FUNCTION pyxp.changes(bigint, integer, text), pyxp.wake_feed_listeners() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pyxp.changes(bigint, integer, text) TO pyxp_writer, pyxp_reader;
REVOKE ALL ON SEQUENCE pyxp.feed_wakeup_slot FROM PUBLIC;
GRANT SELECT ON SEQUENCE pyxp.feed_wakeup_slot TO pyxp_reader;

COMMENT ON FUNCTION pyxp.changes(bigint, integer, text) IS
    'API: the change feed: committed ledger rows after a cursor, each exactly once, with total_xp and the levels before and after; pass back the last cursor.';
COMMENT ON FUNCTION pyxp.wake_feed_listeners() IS
    'internal: trigger sending at most one NOTIFY pyxp_changes per 100 ms slot.';

RESET ROLE;
