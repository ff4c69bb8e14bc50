-- The audit trail as a security team uses it: indexed lookups, a hash chain
-- in commit order (which also orders the live stream), and append-only rows.

-- Lookups: newest first by principal, by event name, by resource ARN (the
-- first resource; exact or prefix). Other filters narrow these or the time index.
CREATE INDEX audit_events_principal ON audit_events (principal, event_time DESC, event_id DESC);
CREATE INDEX audit_events_name ON audit_events (event_name, event_time DESC, event_id DESC);
CREATE INDEX audit_events_resource ON audit_events ((resources -> 0 ->> 'ARN') text_pattern_ops, event_time DESC, event_id DESC);

-- The chain: one link per finalised event, in the order a single chainer
-- (whichever replica holds the audit_chain row lock) takes them from
-- audit_chain_queue. A link
-- commits after its event, and links commit in sequence order, so a reader
-- that sees link N sees every link before it: the stream resumes by sequence.
CREATE TABLE audit_chain_links (
    seq        bigint      PRIMARY KEY,
    event_id   uuid        NOT NULL UNIQUE REFERENCES audit_events (event_id),
    prev_hash  bytea       NOT NULL,
    hash       bytea       NOT NULL,
    chained_at timestamptz NOT NULL DEFAULT now()
);
-- The head of the chain (one row).
CREATE TABLE audit_chain (
    id        boolean PRIMARY KEY DEFAULT true CHECK (id),
    last_seq  bigint  NOT NULL,
    last_hash bytea   NOT NULL
);
INSERT INTO audit_chain (last_seq, last_hash) VALUES (0, '\x0000000000000000000000000000000000000000000000000000000000000000');
-- Finalised events not chained yet: written in the transaction that
-- finalises the event, consumed by the chainer.
CREATE TABLE audit_chain_queue (
    event_id uuid PRIMARY KEY
);

-- Append-only: a pending event may be finalised once; a finalised event and
-- a chain link are never changed or removed.
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        RAISE EXCEPTION 'audit events are append-only: the table cannot be truncated'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'audit events are append-only: % cannot be deleted', OLD.event_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF OLD.status <> 'pending' THEN
        RAISE EXCEPTION 'audit event % is final and cannot be changed', OLD.event_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF (NEW.event_id, NEW.event_time, NEW.event_name, NEW.event_source, NEW.read_only, NEW.principal,
        NEW.principal_type, NEW.groups, NEW.auth_method, NEW.source_ip, NEW.user_agent, NEW.registry_alias,
        NEW.account_id, NEW.region, NEW.gateway_request_id, NEW.client_request_id, NEW.request_parameters,
        NEW.resources)
       IS DISTINCT FROM
       (OLD.event_id, OLD.event_time, OLD.event_name, OLD.event_source, OLD.read_only, OLD.principal,
        OLD.principal_type, OLD.groups, OLD.auth_method, OLD.source_ip, OLD.user_agent, OLD.registry_alias,
        OLD.account_id, OLD.region, OLD.gateway_request_id, OLD.client_request_id, OLD.request_parameters,
        OLD.resources) THEN
        RAISE EXCEPTION 'finalising audit event % may set only its outcome', OLD.event_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();

CREATE FUNCTION audit_chain_links_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit chain is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_chain_links_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_chain_links
    FOR EACH STATEMENT EXECUTE FUNCTION audit_chain_links_append_only();
