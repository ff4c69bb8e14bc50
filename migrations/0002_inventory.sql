-- Inventory: every image of every managed repository, the tag index used by
-- ResolveImage, sync leases shared by replicas, and a record of every sync run.

CREATE TABLE images (
    account_id           text        NOT NULL,
    region               text        NOT NULL,
    repository           text        NOT NULL,
    digest               text        NOT NULL,
    tags                 text[]      NOT NULL DEFAULT '{}',
    size_bytes           bigint,
    -- ECR always reports imagePushedAt; a missing one is stored as the epoch.
    pushed_at            timestamptz NOT NULL,
    last_pulled_at       timestamptz,
    manifest_media_type  text,
    artifact_media_type  text,
    status               text        NOT NULL DEFAULT 'ACTIVE',
    subject_digest       text,
    -- From the manifest (BatchGetImage): image | index | artifact; NULL until fetched.
    kind                 text,
    artifact_type        text,
    -- Index children: [{"digest", "mediaType", "size", "platform": {"os", "architecture", "variant"}}].
    children             jsonb       NOT NULL DEFAULT '[]'::jsonb,
    synced_at            timestamptz NOT NULL,
    PRIMARY KEY (account_id, region, repository, digest)
);

-- ListImages newest first, keyset (pushed_at, digest).
CREATE INDEX images_by_push ON images (account_id, region, repository, pushed_at DESC, digest DESC);
-- SearchImages by digest across registries.
CREATE INDEX images_by_digest ON images (digest);
-- Referrers of an image (signatures, SBOMs).
CREATE INDEX images_by_subject ON images (account_id, region, repository, subject_digest) WHERE subject_digest IS NOT NULL;

-- tag -> digest, the ResolveImage fast path; kept in step with images.tags.
CREATE TABLE image_tags (
    account_id  text NOT NULL,
    region      text NOT NULL,
    repository  text NOT NULL,
    tag         text NOT NULL,
    digest      text NOT NULL,
    PRIMARY KEY (account_id, region, repository, tag),
    FOREIGN KEY (account_id, region, repository, digest)
        REFERENCES images (account_id, region, repository, digest) ON DELETE CASCADE
);
CREATE INDEX image_tags_by_tag ON image_tags (tag text_pattern_ops);
CREATE INDEX image_tags_by_digest ON image_tags (account_id, region, repository, digest);

-- One row per repository that the sync keeps; a replica holds the lease while it syncs.
CREATE TABLE sync_state (
    account_id      text        NOT NULL,
    region          text        NOT NULL,
    repository      text        NOT NULL,
    lease_holder    text,
    lease_until     timestamptz,
    last_synced_at  timestamptz,
    last_error      text,
    PRIMARY KEY (account_id, region, repository)
);

CREATE TABLE sync_runs (
    run_id          uuid        PRIMARY KEY,
    account_id      text        NOT NULL,
    region          text        NOT NULL,
    repository      text,
    trigger         text        NOT NULL,
    holder          text        NOT NULL,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz,
    status          text        NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    pages           integer     NOT NULL DEFAULT 0,
    images_seen     integer     NOT NULL DEFAULT 0,
    images_added    integer     NOT NULL DEFAULT 0,
    images_changed  integer     NOT NULL DEFAULT 0,
    images_removed  integer     NOT NULL DEFAULT 0,
    ecr_calls       integer     NOT NULL DEFAULT 0,
    error           text
);
CREATE INDEX sync_runs_recent ON sync_runs (account_id, region, repository, started_at DESC);
