-- Where each audit sink (JSON lines, NATS JetStream) has delivered the chain
-- up to: the last sequence written or acknowledged.
CREATE TABLE audit_sink_cursors (
    sink       text        PRIMARY KEY,
    seq        bigint      NOT NULL,
    updated_at timestamptz NOT NULL
);
