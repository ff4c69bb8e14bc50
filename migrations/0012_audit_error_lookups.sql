-- Lookups of errors (one principal's, or everyone's), newest first: errors
-- are a few per cent of events, so without these a lookup walks every event
-- of the principal (or of the trail) to find a page of them. Partial indexes
-- cost nothing on the calls that succeed.
CREATE INDEX audit_events_errors ON audit_events (event_time DESC, event_id DESC)
    WHERE error_code IS NOT NULL;
CREATE INDEX audit_events_principal_errors ON audit_events (principal, event_time DESC, event_id DESC)
    WHERE error_code IS NOT NULL;
