-- Remediation runs: RemediateRepositories records one with an item per
-- selected repository; a worker (any replica, under a lease) mends them one
-- by one, re-reading each from ECR first, and records each outcome.
CREATE TABLE remediation_runs (
    id               uuid        PRIMARY KEY,
    account_id       text        NOT NULL,
    region           text        NOT NULL,
    -- Only these rules are mended; empty: every mendable rule.
    rules            text[]      NOT NULL DEFAULT '{}',
    -- Values for required tags without a default.
    tags             jsonb       NOT NULL DEFAULT '{}'::jsonb,
    state            text        NOT NULL
                     CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    cancel_requested boolean     NOT NULL DEFAULT false,
    principal        text        NOT NULL,
    principal_type   text        NOT NULL,
    groups           text[]      NOT NULL DEFAULT '{}',
    auth_method      text        NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    finished_at      timestamptz,
    -- The worker that holds the run, until lease_until.
    holder           text,
    lease_until      timestamptz,
    attempts         integer     NOT NULL DEFAULT 0,
    error            text        NOT NULL DEFAULT ''
);
CREATE INDEX remediation_runs_open ON remediation_runs (created_at) WHERE state IN ('pending', 'running');
CREATE INDEX remediation_runs_newest ON remediation_runs (created_at DESC, id DESC);

CREATE TABLE remediation_items (
    run_id         uuid        NOT NULL REFERENCES remediation_runs (id) ON DELETE CASCADE,
    repository     text        NOT NULL,
    -- pending → mended | unchanged | gone | failed; or cancelled.
    outcome        text        NOT NULL
                   CHECK (outcome IN ('pending', 'mended', 'unchanged', 'gone', 'failed', 'cancelled')),
    -- The planned changes (from the cache), then the ones made.
    changes        jsonb       NOT NULL DEFAULT '[]'::jsonb,
    -- What stays broken.
    left_findings  jsonb       NOT NULL DEFAULT '[]'::jsonb,
    message        text        NOT NULL DEFAULT '',
    -- The audit event of the change (set before ECR is called).
    audit_event_id uuid,
    updated_at     timestamptz NOT NULL,
    PRIMARY KEY (run_id, repository)
);
