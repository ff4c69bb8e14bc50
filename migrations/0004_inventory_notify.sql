-- Every replica keeps an in-process read cache over the inventory
-- (src/store/cache.rs). These triggers tell the replicas, on commit, which
-- repositories' rows changed: one notification per repository and statement
-- (Postgres folds identical notifications of one transaction into one).
-- Payload: 'account_id/region/repository'; '*' means everything.

CREATE FUNCTION notify_inventory_changed() RETURNS trigger LANGUAGE plpgsql AS $$
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
        -- Rows whose only change is synced_at (the repository listing rewrites
        -- it every pass) change no answer: compare the rows without it.
        FOR changed IN EXECUTE format(
            'SELECT DISTINCT c.j->>''account_id'' AS account_id, c.j->>''region'' AS region,
                    c.j->>%L AS repository
             FROM (SELECT to_jsonb(n) - ''synced_at'' AS j FROM new_rows n
                   EXCEPT SELECT to_jsonb(o) - ''synced_at'' FROM old_rows o) c', TG_ARGV[0]) LOOP
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

CREATE TRIGGER images_inserted AFTER INSERT ON images REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notify_inventory_changed('repository');
CREATE TRIGGER images_updated AFTER UPDATE ON images REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notify_inventory_changed('repository');
CREATE TRIGGER images_deleted AFTER DELETE ON images REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notify_inventory_changed('repository');
CREATE TRIGGER images_truncated AFTER TRUNCATE ON images
    FOR EACH STATEMENT EXECUTE FUNCTION notify_inventory_changed();

CREATE TRIGGER image_tags_inserted AFTER INSERT ON image_tags REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notify_inventory_changed('repository');
CREATE TRIGGER image_tags_updated AFTER UPDATE ON image_tags REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notify_inventory_changed('repository');
CREATE TRIGGER image_tags_deleted AFTER DELETE ON image_tags REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notify_inventory_changed('repository');
CREATE TRIGGER image_tags_truncated AFTER TRUNCATE ON image_tags
    FOR EACH STATEMENT EXECUTE FUNCTION notify_inventory_changed();

CREATE TRIGGER repositories_inserted AFTER INSERT ON repositories REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notify_inventory_changed('name');
CREATE TRIGGER repositories_updated AFTER UPDATE ON repositories REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notify_inventory_changed('name');
CREATE TRIGGER repositories_deleted AFTER DELETE ON repositories REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notify_inventory_changed('name');
CREATE TRIGGER repositories_truncated AFTER TRUNCATE ON repositories
    FOR EACH STATEMENT EXECUTE FUNCTION notify_inventory_changed();
