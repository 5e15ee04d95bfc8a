-- Downgrade of 0048: campaign types and votes trimmed of spaces only.
SET LOCAL ROLE pyxp_owner;

CREATE OR REPLACE FUNCTION pyxp.checked_campaign_type(p_type text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v text := CASE WHEN octet_length(p_type) <= 64 THEN regexp_replace(upper(btrim(p_type) COLLATE "C"), '^FOR_', '') END;
BEGIN
    IF p_type IS NULL THEN
        RETURN NULL;
    ELSIF v IN ('B2C', 'AGENCY_B2C', 'INDIVIDUAL') THEN
        RETURN v;
    END IF;
    RAISE EXCEPTION 'unknown campaign type: %', quote_literal(left(p_type, 100))
        USING ERRCODE = 'PX003',
              HINT = 'accepted: B2C, AGENCY_B2C, INDIVIDUAL (any case), or FOR_B2C, FOR_AGENCY_B2C, FOR_INDIVIDUAL';
END
$$;

CREATE OR REPLACE FUNCTION pyxp.checked_vote(p_decision text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v text := CASE WHEN octet_length(p_decision) <= 64 THEN upper(btrim(p_decision) COLLATE "C") END;
BEGIN
    IF v IN ('VALID', 'REFUSE') THEN
        RETURN v;
    END IF;
    RAISE EXCEPTION 'invalid vote decision: %', coalesce(quote_literal(left(p_decision, 100)), 'NULL')
        USING ERRCODE = 'PX008', HINT = 'accepted: VALID or REFUSE';
END
$$;

CREATE OR REPLACE FUNCTION pyxp.schema_revision()
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$ SELECT '0047' $$;

RESET ROLE;
