-- When the repository's tag mutability and exclusion filters were last read
-- from ECR. ResolveImage and CheckDeployment call a tag immutable only when
-- this is no older than the image row they answer from (unknown: mutable).
-- Every writer of the row so far read these settings from ECR at synced_at.

ALTER TABLE repositories ADD COLUMN settings_synced_at timestamptz;
UPDATE repositories SET settings_synced_at = synced_at;

-- A re-read that confirms the same settings moves only the two timestamps:
-- that changes no cached answer, so it notifies nothing (as for synced_at).
CREATE OR REPLACE FUNCTION notify_inventory_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed record;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('ecr_gateway_inventory', '*');
        RETURN NULL;
    END IF;
    -- TG_ARGV[0] names the repository column ('repository', or 'name' in repositories).
    IF TG_OP = 'DELETE' THEN
        FOR changed IN EXECUTE format(
            'SELECT DISTINCT account_id, region, %I AS repository FROM old_rows', TG_ARGV[0]) LOOP
            PERFORM pg_notify('ecr_gateway_inventory',
                              changed.account_id || '/' || changed.region || '/' || changed.repository);
        END LOOP;
    ELSIF TG_OP = 'UPDATE' THEN
        -- Rows whose only change is synced_at / settings_synced_at (the sync
        -- rewrites them every pass) change no answer: compare the rows without them.
        FOR changed IN EXECUTE format(
            'SELECT DISTINCT c.j->>''account_id'' AS account_id, c.j->>''region'' AS region,
                    c.j->>%L AS repository
             FROM (SELECT to_jsonb(n) - ''synced_at'' - ''settings_synced_at'' AS j FROM new_rows n
                   EXCEPT SELECT to_jsonb(o) - ''synced_at'' - ''settings_synced_at'' FROM old_rows o) c',
            TG_ARGV[0]) LOOP
            PERFORM pg_notify('ecr_gateway_inventory',
                              changed.account_id || '/' || changed.region || '/' || changed.repository);
        END LOOP;
    ELSE
        FOR changed IN EXECUTE format(
            'SELECT DISTINCT account_id, region, %I AS repository FROM new_rows', TG_ARGV[0]) LOOP
            PERFORM pg_notify('ecr_gateway_inventory',
                              changed.account_id || '/' || changed.region || '/' || changed.repository);
        END LOOP;
    END IF;
    RETURN NULL;
END
$$;
