-- Pins: deploy systems mark the images they run; nothing pinned is deleted
-- through the gateway (DeleteImages, DeleteRepository, cleanup).
CREATE TABLE pins (
    account_id  text        NOT NULL,
    region      text        NOT NULL,
    repository  text        NOT NULL,
    digest      text        NOT NULL,
    holder      text        NOT NULL,
    reason      text        NOT NULL DEFAULT '',
    created_by  text        NOT NULL,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz,
    tags        text[]      NOT NULL DEFAULT '{}',
    PRIMARY KEY (account_id, region, repository, digest, holder)
);
CREATE INDEX pins_by_holder ON pins (holder, account_id, region, repository, digest);
