-- Cleanup runs: a long-running cleanup is a resource. A worker (any replica)
-- holds a run under a lease; the run's items record the plan and each image's
-- outcome, so a run resumes after a crash without deleting anything twice.
CREATE TABLE cleanup_runs (
    id                uuid        PRIMARY KEY,
    account_id        text        NOT NULL,
    region            text        NOT NULL,
    -- One repository, or every cached repository whose name starts with the prefix.
    repository        text        NOT NULL DEFAULT '',
    repository_prefix text        NOT NULL DEFAULT '',
    -- NULL: each repository's own lifecycle policy.
    policy_text       text,
    dry_run           boolean     NOT NULL,
    state             text        NOT NULL
                      CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    cancel_requested  boolean     NOT NULL DEFAULT false,
    planned           boolean     NOT NULL DEFAULT false,
    principal         text        NOT NULL,
    principal_type    text        NOT NULL,
    groups            text[]      NOT NULL DEFAULT '{}',
    auth_method       text        NOT NULL,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    started_at        timestamptz,
    finished_at       timestamptz,
    -- The worker that holds the run, until lease_until.
    holder            text,
    lease_until       timestamptz,
    -- Times a worker took the run up (more than 1: it resumed).
    attempts          integer     NOT NULL DEFAULT 0,
    batches           integer     NOT NULL DEFAULT 0,
    error             text        NOT NULL DEFAULT '',
    -- Repositories of a prefix run left alone, with why: [{"repository", "reason"}].
    skipped           jsonb       NOT NULL DEFAULT '[]',
    CHECK ((repository = '') <> (repository_prefix = ''))
);
CREATE INDEX cleanup_runs_unfinished ON cleanup_runs (created_at) WHERE state IN ('pending', 'running');
CREATE INDEX cleanup_runs_newest ON cleanup_runs (created_at DESC, id DESC);

CREATE TABLE cleanup_run_items (
    run_id         uuid        NOT NULL REFERENCES cleanup_runs (id) ON DELETE CASCADE,
    repository     text        NOT NULL,
    digest         text        NOT NULL,
    tags           text[]      NOT NULL,
    pushed_at      timestamptz NOT NULL,
    rule_priority  integer     NOT NULL,
    action         text        NOT NULL CHECK (action IN ('expire', 'transition')),
    -- pending → submitted (in a BatchDeleteImage) → deleted | already_gone | failed;
    -- or saved_by_pin, saved_by_protection, would_expire (dry run), skipped, cancelled.
    outcome        text        NOT NULL,
    message        text        NOT NULL DEFAULT '',
    batch          integer,
    audit_event_id uuid,
    updated_at     timestamptz NOT NULL,
    PRIMARY KEY (run_id, repository, digest)
);
CREATE INDEX cleanup_run_items_open ON cleanup_run_items (run_id, repository, pushed_at, digest)
    WHERE outcome IN ('pending', 'submitted');
