-- Each event records the authorization decision that let the call in or kept
-- it out: allow/deny, the action and resource, and the ids of the deciding
-- policies (docs/security.md). Null for events that are not calls (the sync's
-- and cleanup worker's own records) and for calls with no identity.
ALTER TABLE audit_events ADD COLUMN authz_decision jsonb;

-- Like every other field of the call, the decision is fixed when the event is
-- first written: finalising a pending event may set only its outcome.
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
        NEW.resources, NEW.authz_decision)
       IS DISTINCT FROM
       (OLD.event_id, OLD.event_time, OLD.event_name, OLD.event_source, OLD.read_only, OLD.principal,
        OLD.principal_type, OLD.groups, OLD.auth_method, OLD.source_ip, OLD.user_agent, OLD.registry_alias,
        OLD.account_id, OLD.region, OLD.gateway_request_id, OLD.client_request_id, OLD.request_parameters,
        OLD.resources, OLD.authz_decision) THEN
        RAISE EXCEPTION 'finalising audit event % may set only its outcome', OLD.event_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;

