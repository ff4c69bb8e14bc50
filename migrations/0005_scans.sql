-- Scan results cached from ECR (DescribeImageScanFindings), and the deploy
-- gate's vulnerability exceptions.

-- One row per image whose scan the gateway has read.
CREATE TABLE image_scans (
    account_id                       text        NOT NULL,
    region                           text        NOT NULL,
    repository                       text        NOT NULL,
    digest                           text        NOT NULL,
    -- ECR's status, or NOT_SCANNED when ECR has no scan of the image.
    status                           text        NOT NULL,
    description                      text,
    completed_at                     timestamptz,
    vulnerability_source_updated_at  timestamptz,
    critical                         integer     NOT NULL DEFAULT 0,
    high                             integer     NOT NULL DEFAULT 0,
    medium                           integer     NOT NULL DEFAULT 0,
    low                              integer     NOT NULL DEFAULT 0,
    informational                    integer     NOT NULL DEFAULT 0,
    undefined                        integer     NOT NULL DEFAULT 0,
    fetched_at                       timestamptz NOT NULL,
    PRIMARY KEY (account_id, region, repository, digest)
);
-- ListVulnerableImages by minimum severity.
CREATE INDEX image_scans_critical ON image_scans (account_id, region, repository, digest) WHERE critical > 0;
CREATE INDEX image_scans_high ON image_scans (account_id, region, repository, digest) WHERE critical > 0 OR high > 0;

-- The findings of the scan above (replaced whole on each read).
CREATE TABLE scan_findings (
    account_id       text    NOT NULL,
    region           text    NOT NULL,
    repository       text    NOT NULL,
    digest           text    NOT NULL,
    ordinal          integer NOT NULL,
    name             text    NOT NULL,
    -- 1 informational … 5 critical, 6 undefined (the proto's Severity).
    severity         smallint NOT NULL,
    description      text,
    uri              text,
    package_name     text,
    package_version  text,
    fixed_in_version text,
    score            double precision,
    PRIMARY KEY (account_id, region, repository, digest, ordinal)
);
-- ListVulnerableImages by CVE id.
CREATE INDEX scan_findings_by_name ON scan_findings (name);

CREATE TABLE vulnerability_exceptions (
    id             uuid        PRIMARY KEY,
    cve_id         text        NOT NULL,
    scope          text        NOT NULL CHECK (scope IN ('org', 'namespace', 'repository', 'image')),
    account_id     text,
    region         text,
    namespace      text,
    repository     text,
    digest         text,
    justification  text        NOT NULL,
    created_by     text        NOT NULL,
    created_at     timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    revoked_at     timestamptz,
    revoked_by     text,
    revoke_reason  text
);
CREATE INDEX vulnerability_exceptions_by_cve ON vulnerability_exceptions (cve_id, expires_at);
CREATE INDEX vulnerability_exceptions_recent ON vulnerability_exceptions (created_at DESC, id DESC);

-- The read cache (migration 0004) holds gate inputs too: a changed scan drops
-- its repository's entries; a changed exception drops everything (they are rare).
CREATE TRIGGER image_scans_inserted AFTER INSERT ON image_scans REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notify_inventory_changed('repository');
CREATE TRIGGER image_scans_updated AFTER UPDATE ON image_scans REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notify_inventory_changed('repository');
CREATE TRIGGER image_scans_deleted AFTER DELETE ON image_scans REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notify_inventory_changed('repository');
CREATE TRIGGER image_scans_truncated AFTER TRUNCATE ON image_scans
    FOR EACH STATEMENT EXECUTE FUNCTION notify_inventory_changed();

CREATE FUNCTION notify_exceptions_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ecr_gateway_inventory', '*');
    RETURN NULL;
END
$$;
CREATE TRIGGER vulnerability_exceptions_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON vulnerability_exceptions
    FOR EACH STATEMENT EXECUTE FUNCTION notify_exceptions_changed();
