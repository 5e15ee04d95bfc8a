-- 0039's downgrade: pyxp.transaction_ended as at 0038 (0037's).
SET LOCAL ROLE pyxp_owner;

CREATE OR REPLACE FUNCTION pyxp.transaction_ended(p_group xid8)
RETURNS boolean
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    IF p_group::text::numeric < pyxp.xid_offset() THEN
        RETURN true;
    END IF;
    RETURN coalesce(pg_xact_status((p_group::text::numeric - pyxp.xid_offset())::text::xid8) <> 'in progress', true);
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
AS $$ SELECT '0038' $$;

RESET ROLE;
