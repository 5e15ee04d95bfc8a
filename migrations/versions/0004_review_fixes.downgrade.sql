-- Downgrade of 0004: nothing to undo. 0002 and 0003 as they landed already
-- hold these fixes (0004 changes nothing on a database they built), so the
-- state 0004 leaves is the state 0003 leaves; a database that ran earlier
-- texts of 0002/0003 keeps the fixes, which 0003's functions read alike.
-- Going further down, 0002's downgrade refuses what 0001 would misread.
SELECT 1;
