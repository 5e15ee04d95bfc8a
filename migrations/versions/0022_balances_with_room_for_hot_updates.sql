-- 0022: balances keep half of each page free (fillfactor 50), so that a new
-- curve's recalculation writes no index entry.
-- Frozen copy of what sql/*.sql defines at this revision; never edit it.
--
-- pyxp.recalculate_levels (run by install_ruleset when it activates a ruleset,
-- while every award waits for it) updates current_level, xp_to_next_level and
-- updated_at of every balance whose level changes: no indexed column. With
-- full pages each such update put its new version on another page and wrote
-- an entry in each of the table's indexes (the primary key, the leaderboard,
-- the four period boards): 77-101 s at 1M balances, and the table and its
-- indexes grew by as much at every switch. With room on the row's page the
-- update is HOT (no index entry), and the next scan of the page prunes the old
-- version without a VACUUM: 7-9 s at 1M balances, the table's size stable.
-- An award's update changes indexed columns and still writes its index
-- entries, but its new version stays on the row's page.
--
-- The table is rewritten so that the pages it has get that room (CLUSTER on
-- the primary key, the only rewrite a transaction block allows; the clustering
-- mark is removed after, the table keeps no preferred order). The rewrite holds
-- an ACCESS EXCLUSIVE lock on xp_balances while it runs: 11.5 s at 1M
-- balances.
SET LOCAL ROLE pyxp_owner;

ALTER TABLE pyxp.xp_balances SET (fillfactor = 50);
CLUSTER pyxp.xp_balances USING xp_balances_pkey;
ALTER TABLE pyxp.xp_balances SET WITHOUT CLUSTER;

RESET ROLE;
