-- 0039: pyxp.changes() refuses a cursor ahead of the feed whose group is
-- an id no transaction can have: past the first epoch, one whose low 32
-- bits are 0, 1 or 2 (such as 4294967296 << 24). pg_xact_status read it as
-- NULL or 'committed', pyxp.transaction_ended took its transaction for
-- ended, and the cursor read an empty page for good, with no PX023 (a
-- newcomer's review).
SET LOCAL ROLE pyxp_owner;

-- Past the first epoch, an id whose low 32 bits are 0, 1 or 2 is no
-- transaction's (the invalid, bootstrap and frozen ids are skipped when ids
-- are handed out), and pg_xact_status reads it as NULL or 'committed'
-- whatever its epoch: such a group is not ended, and its cursor ahead of the
-- feed is refused (before 0039 it read an empty page for good: a
-- newcomer's review).
CREATE OR REPLACE FUNCTION pyxp.transaction_ended(p_group xid8)
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

-- The revision whose functions this database has: every revision from 0036
-- on replaces it with its own number (and its downgrade with the one before).
-- pyxp.alembic_version says the same, but a table is copied by a logical
-- replication that publishes it (FOR ALL TABLES) and a function is not:
-- pyxp db current and pyxp db upgrade refuse a database whose two differ
-- (pyxp/schema.py, revision_mismatch; a hostile test, 0036: a subscriber
-- said 0036 with 0035's functions, and pyxp db upgrade did nothing there).
CREATE OR REPLACE FUNCTION pyxp.schema_revision()
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$ SELECT '0039' $$;

RESET ROLE;
