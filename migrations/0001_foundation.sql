-- Foundation: the repository cache, idempotent operations and the audit trail.
-- Everything that mirrors ECR is keyed by registry (AWS account id + region).

CREATE TABLE repositories (
    account_id          text        NOT NULL,
    region              text        NOT NULL,
    name                text        NOT NULL,
    arn                 text        NOT NULL,
    uri                 text        NOT NULL,
    created_at          timestamptz,
    tag_mutability      text        NOT NULL,
    exclusion_filters   jsonb       NOT NULL DEFAULT '[]'::jsonb,
    scan_on_push        boolean     NOT NULL,
    encryption_type     text        NOT NULL,
    kms_key             text,
    tags                jsonb       NOT NULL DEFAULT '{}'::jsonb,
    lifecycle_policy    text,
    repository_policy   text,
    synced_at           timestamptz NOT NULL,
    PRIMARY KEY (account_id, region, name)
);

-- Prefix filters (`payments/`) and keyset pages walk this index.
CREATE INDEX repositories_name_pattern ON repositories (account_id, region, name text_pattern_ops);
-- Tag filters: tags @> '{"team":"payments"}'.
CREATE INDEX repositories_tags ON repositories USING gin (tags jsonb_path_ops);

-- One row per caller-supplied request_id: the idempotency record of a mutation.
CREATE TABLE operations (
    principal       text        NOT NULL,
    request_id      text        NOT NULL,
    method          text        NOT NULL,
    request_hash    bytea       NOT NULL,
    state           text        NOT NULL CHECK (state IN ('pending', 'succeeded', 'failed')),
    -- While pending: until when the current attempt owns the operation.
    lease_until     timestamptz NOT NULL,
    attempts        integer     NOT NULL DEFAULT 1,
    -- The encoded protobuf response of a succeeded operation, replayed on retry.
    response        bytea,
    error_code      text,
    error_message   text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, request_id)
);

-- The audit trail: one row per call, shaped like a CloudTrail record.
-- A mutation's row is written as 'pending' before ECR is called and finalised
-- ('succeeded' / 'failed') in the same transaction as the cache update.
CREATE TABLE audit_events (
    event_id            uuid        PRIMARY KEY,
    event_time          timestamptz NOT NULL,
    event_name          text        NOT NULL,
    event_source        text        NOT NULL,
    read_only           boolean     NOT NULL,
    status              text        NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    principal           text        NOT NULL,
    principal_type      text        NOT NULL,
    groups              text[]      NOT NULL DEFAULT '{}',
    auth_method         text        NOT NULL,
    source_ip           text,
    user_agent          text,
    registry_alias      text,
    account_id          text,
    region              text,
    -- The gateway's id for this call (CloudTrail requestID).
    gateway_request_id  uuid        NOT NULL,
    -- The caller's idempotency key, when given.
    client_request_id   text,
    request_parameters  jsonb       NOT NULL DEFAULT '{}'::jsonb,
    response_elements   jsonb,
    error_code          text,
    error_message       text,
    ecr_request_ids     text[]      NOT NULL DEFAULT '{}',
    resources           jsonb       NOT NULL DEFAULT '[]'::jsonb,
    finalized_at        timestamptz
);

CREATE INDEX audit_events_time ON audit_events (event_time DESC, event_id DESC);
CREATE INDEX audit_events_pending ON audit_events (event_time) WHERE status = 'pending';
