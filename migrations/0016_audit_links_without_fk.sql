-- Read calls' events are now written and linked into the chain in one
-- transaction, a batch at a time. The foreign key from a link to its event
-- cost a row lock on the event (a heap write and a WAL record) for every
-- link, and guarded nothing the chain does not: a link is only ever written
-- in the transaction that writes or finalises its event, events cannot be
-- deleted before a purge covers their links (audit_events_append_only), and
-- `audit verify` names any event whose link or content is missing.
ALTER TABLE audit_chain_links DROP CONSTRAINT audit_chain_links_event_id_fkey;
