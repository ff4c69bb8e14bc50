-- Recovery looks up the attempts of one operation (a caller's request_id) to
-- tell whether a later attempt finished what a crashed one started.
CREATE INDEX audit_events_operation_attempts ON audit_events (principal, client_request_id, event_time)
    WHERE client_request_id IS NOT NULL AND NOT read_only;
