-- Signed digests of the audit chain: the head (sequence, hash) signed with
-- the gateway's Ed25519 key at a configured interval. Append-only.
CREATE TABLE audit_digests (
    seq        bigint      PRIMARY KEY,
    hash       bytea       NOT NULL,
    signed_at  timestamptz NOT NULL,
    public_key bytea       NOT NULL,
    signature  bytea       NOT NULL
);
CREATE TRIGGER audit_digests_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_digests
    FOR EACH STATEMENT EXECUTE FUNCTION audit_chain_links_append_only();
