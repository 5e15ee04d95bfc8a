-- 0022 downgrade: xp_balances without a fillfactor of its own (the pages keep
-- the room they have until their rows are updated).
SET LOCAL ROLE pyxp_owner;

ALTER TABLE pyxp.xp_balances RESET (fillfactor);

RESET ROLE;
