-- Mutating events, newest first. Reads (every lookup, resolve and check is
-- an event too) far outnumber mutations, so a lookup of what changed
-- (read_only = false), alone or with a resource prefix, would otherwise walk
-- past every recent read to find a page. Written only for mutations.
CREATE INDEX audit_events_mutations ON audit_events (event_time DESC, event_id DESC) WHERE NOT read_only;
