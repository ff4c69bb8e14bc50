-- Retention: the oldest part of the chain may be archived to a file and then
-- purged. Only a whole prefix of the chain can go, and only by first
-- recording the purge here: where the remaining chain starts (the sequence
-- and hash of the last purged link), which archive holds the purged events
-- and that archive's SHA-256. The remaining chain still verifies from that
-- hash, and a purge is itself on record (append-only).
CREATE TABLE audit_purges (
    through_seq    bigint      PRIMARY KEY,
    through_hash   bytea       NOT NULL,
    from_seq       bigint      NOT NULL,
    cutoff         timestamptz NOT NULL,
    archive        text        NOT NULL,
    archive_sha256 text        NOT NULL,
    purged_at      timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER audit_purges_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_purges
    FOR EACH STATEMENT EXECUTE FUNCTION audit_chain_links_append_only();

-- A purge record must continue the previous one, name a link that exists with
-- the hash given, and cover only links chained before its cutoff (which is
-- not in the future).
CREATE FUNCTION audit_purges_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    last_through bigint;
    link_hash bytea;
BEGIN
    SELECT coalesce(max(through_seq), 0) INTO last_through FROM audit_purges;
    IF NEW.from_seq <> last_through + 1 OR NEW.through_seq < NEW.from_seq THEN
        RAISE EXCEPTION 'an audit purge must continue from sequence %', last_through + 1
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.cutoff > now() THEN
        RAISE EXCEPTION 'an audit purge cutoff cannot be in the future'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT hash INTO link_hash FROM audit_chain_links WHERE seq = NEW.through_seq;
    IF link_hash IS NULL OR link_hash <> NEW.through_hash THEN
        RAISE EXCEPTION 'an audit purge must name an existing link and its hash (sequence %)', NEW.through_seq
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF EXISTS (SELECT 1 FROM audit_chain_links
               WHERE seq BETWEEN NEW.from_seq AND NEW.through_seq AND chained_at >= NEW.cutoff) THEN
        RAISE EXCEPTION 'an audit purge may cover only events chained before its cutoff'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER audit_purges_check BEFORE INSERT ON audit_purges
    FOR EACH ROW EXECUTE FUNCTION audit_purges_check();

-- Events go before their links (the triggers below look the link up), so the
-- link's reference to its event is checked at commit.
ALTER TABLE audit_chain_links ALTER CONSTRAINT audit_chain_links_event_id_fkey DEFERRABLE INITIALLY DEFERRED;

-- A finalised event may now be deleted only when its link lies in a recorded purge.
CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        RAISE EXCEPTION 'audit events are append-only: the table cannot be truncated'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF TG_OP = 'DELETE' THEN
        IF EXISTS (SELECT 1 FROM audit_chain_links l
                   WHERE l.event_id = OLD.event_id
                     AND l.seq <= (SELECT coalesce(max(through_seq), 0) FROM audit_purges)) THEN
            RETURN OLD;
        END IF;
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

-- Links: never changed; deleted only inside a recorded purge.
DROP TRIGGER audit_chain_links_append_only ON audit_chain_links;
CREATE TRIGGER audit_chain_links_append_only BEFORE UPDATE OR TRUNCATE ON audit_chain_links
    FOR EACH STATEMENT EXECUTE FUNCTION audit_chain_links_append_only();
CREATE FUNCTION audit_chain_links_purge_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.seq <= (SELECT coalesce(max(through_seq), 0) FROM audit_purges) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'the audit chain is append-only: link % is not in a recorded purge', OLD.seq
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_chain_links_purge_only BEFORE DELETE ON audit_chain_links
    FOR EACH ROW EXECUTE FUNCTION audit_chain_links_purge_only();
