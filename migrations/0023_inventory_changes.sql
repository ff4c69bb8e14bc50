-- The inventory's change log, which WatchImages streams (docs/events.md).
--
-- Triggers on images, image_scans and pins write one row per change, in the
-- writer's transaction, whatever wrote it (an RPC, the reconcile, an event).
-- `id` is insertion order, which is not commit order; the cursor is `seq`,
-- given to committed rows by the sequencer (`sequence_inventory_changes`),
-- one at a time under an advisory lock, so that a reader that has seen
-- `seq` N never sees a row below N appear later.

CREATE TABLE inventory_changes (
    id          bigserial   PRIMARY KEY,
    seq         bigint,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    account_id  text        NOT NULL,
    region      text        NOT NULL,
    repository  text        NOT NULL,
    digest      text        NOT NULL,
    -- pushed | tagged | untagged | deleted | archived | restored | scanned | pinned | unpinned
    kind        text        NOT NULL,
    -- The image's tags after the change.
    tags        text[]      NOT NULL DEFAULT '{}',
    -- tagged / untagged: the tags added or removed.
    changed_tags text[]     NOT NULL DEFAULT '{}',
    -- scanned: {status, critical, high, ...}; pinned / unpinned: {holder}.
    detail      jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE UNIQUE INDEX inventory_changes_by_seq ON inventory_changes (seq) WHERE seq IS NOT NULL;
CREATE INDEX inventory_changes_unsequenced ON inventory_changes (id) WHERE seq IS NULL;

-- The head of the sequence and what retention has removed.
CREATE TABLE inventory_change_head (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    seq             bigint  NOT NULL DEFAULT 0,
    -- Every change up to this seq has been pruned: an older cursor is out of range.
    pruned_through  bigint  NOT NULL DEFAULT 0
);
INSERT INTO inventory_change_head DEFAULT VALUES;

-- Wakes the sequencers (every replica runs one; they take turns).
CREATE FUNCTION inventory_changes_pending() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ecr_gateway_changes_pending', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER inventory_changes_inserted AFTER INSERT ON inventory_changes
    FOR EACH STATEMENT EXECUTE FUNCTION inventory_changes_pending();

-- Gives the committed, unsequenced changes (at most `max_rows`, oldest
-- first) the next seqs and notifies the new head. Returns the head.
CREATE FUNCTION sequence_inventory_changes(max_rows integer) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    base bigint;
    n bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('ecr_gateway_inventory_changes'));
    SELECT seq INTO base FROM inventory_change_head;
    WITH todo AS (
        SELECT id, row_number() OVER (ORDER BY id) AS ord
        FROM inventory_changes WHERE seq IS NULL ORDER BY id LIMIT max_rows
    )
    UPDATE inventory_changes c SET seq = base + todo.ord FROM todo WHERE c.id = todo.id;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        UPDATE inventory_change_head SET seq = base + n;
        PERFORM pg_notify('ecr_gateway_changes', (base + n)::text);
    END IF;
    RETURN base + n;
END
$$;

-- images: pushed (a new row), deleted, tags added / removed, archived / restored.
CREATE FUNCTION record_image_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO inventory_changes (account_id, region, repository, digest, kind, tags, detail)
        SELECT account_id, region, repository, digest, 'pushed', tags,
               jsonb_build_object('pushedAt', pushed_at, 'status', status)
        FROM new_rows;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO inventory_changes (account_id, region, repository, digest, kind, tags)
        SELECT account_id, region, repository, digest, 'deleted', tags FROM old_rows;
    ELSE
        INSERT INTO inventory_changes (account_id, region, repository, digest, kind, tags, changed_tags)
        SELECT n.account_id, n.region, n.repository, n.digest, d.kind, n.tags, d.changed
        FROM new_rows n
        JOIN old_rows o USING (account_id, region, repository, digest)
        CROSS JOIN LATERAL (
            SELECT 'tagged' AS kind,
                   ARRAY(SELECT unnest(n.tags) EXCEPT SELECT unnest(o.tags) ORDER BY 1) AS changed
            UNION ALL
            SELECT 'untagged',
                   ARRAY(SELECT unnest(o.tags) EXCEPT SELECT unnest(n.tags) ORDER BY 1)
        ) d
        WHERE n.tags IS DISTINCT FROM o.tags AND cardinality(d.changed) > 0;

        INSERT INTO inventory_changes (account_id, region, repository, digest, kind, tags, detail)
        SELECT n.account_id, n.region, n.repository, n.digest,
               CASE WHEN n.status = 'ARCHIVED' THEN 'archived' ELSE 'restored' END,
               n.tags, jsonb_build_object('status', n.status, 'previousStatus', o.status)
        FROM new_rows n
        JOIN old_rows o USING (account_id, region, repository, digest)
        WHERE n.status IS DISTINCT FROM o.status
          AND (n.status = 'ARCHIVED' OR (o.status = 'ARCHIVED' AND n.status = 'ACTIVE')
               OR (o.status = 'ACTIVATING' AND n.status = 'ACTIVE'));
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER images_changes_inserted AFTER INSERT ON images REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION record_image_changes();
CREATE TRIGGER images_changes_updated AFTER UPDATE ON images
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION record_image_changes();
CREATE TRIGGER images_changes_deleted AFTER DELETE ON images REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION record_image_changes();

-- image_scans: a scan that completed (a new completion, or new counts).
CREATE FUNCTION record_scan_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO inventory_changes (account_id, region, repository, digest, kind, tags, detail)
    SELECT n.account_id, n.region, n.repository, n.digest, 'scanned', COALESCE(i.tags, '{}'),
           jsonb_build_object('status', n.status, 'completedAt', n.completed_at,
                              'critical', n.critical, 'high', n.high, 'medium', n.medium,
                              'low', n.low, 'informational', n.informational, 'undefined', n.undefined)
    FROM new_rows n
    LEFT JOIN images i USING (account_id, region, repository, digest)
    WHERE n.status IN ('COMPLETE', 'ACTIVE')
      AND NOT EXISTS (
          SELECT 1 FROM old_rows o
          WHERE (o.account_id, o.region, o.repository, o.digest) = (n.account_id, n.region, n.repository, n.digest)
            AND o.status = n.status AND o.completed_at IS NOT DISTINCT FROM n.completed_at
            AND (o.critical, o.high, o.medium, o.low, o.informational, o.undefined)
                = (n.critical, n.high, n.medium, n.low, n.informational, n.undefined));
    RETURN NULL;
END
$$;
CREATE FUNCTION record_scan_inserts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO inventory_changes (account_id, region, repository, digest, kind, tags, detail)
    SELECT n.account_id, n.region, n.repository, n.digest, 'scanned', COALESCE(i.tags, '{}'),
           jsonb_build_object('status', n.status, 'completedAt', n.completed_at,
                              'critical', n.critical, 'high', n.high, 'medium', n.medium,
                              'low', n.low, 'informational', n.informational, 'undefined', n.undefined)
    FROM new_rows n
    LEFT JOIN images i USING (account_id, region, repository, digest)
    WHERE n.status IN ('COMPLETE', 'ACTIVE');
    RETURN NULL;
END
$$;
CREATE TRIGGER image_scans_changes_inserted AFTER INSERT ON image_scans REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION record_scan_inserts();
CREATE TRIGGER image_scans_changes_updated AFTER UPDATE ON image_scans
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION record_scan_changes();

-- pins: pinned / unpinned, by holder.
CREATE FUNCTION record_pin_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO inventory_changes (account_id, region, repository, digest, kind, tags, detail)
        SELECT p.account_id, p.region, p.repository, p.digest, 'pinned', COALESCE(i.tags, '{}'),
               jsonb_build_object('holder', p.holder)
        FROM new_rows p LEFT JOIN images i USING (account_id, region, repository, digest);
    ELSE
        INSERT INTO inventory_changes (account_id, region, repository, digest, kind, tags, detail)
        SELECT p.account_id, p.region, p.repository, p.digest, 'unpinned', COALESCE(i.tags, '{}'),
               jsonb_build_object('holder', p.holder)
        FROM old_rows p LEFT JOIN images i USING (account_id, region, repository, digest);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER pins_changes_inserted AFTER INSERT ON pins REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION record_pin_changes();
CREATE TRIGGER pins_changes_deleted AFTER DELETE ON pins REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION record_pin_changes();

-- The reconcile's backstop: a repository whose events could not all be
-- applied, or that the listing found changed, has its images read in the
-- next pass even when events are on (docs/events.md).
ALTER TABLE sync_state ADD COLUMN dirty_since timestamptz;
