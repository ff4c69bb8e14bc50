-- Appending links to the hash chain in one statement. Before, the writer
-- locked the chain's head, and then the links, the new head and the
-- notification each took a round trip to the gateway while the lock was
-- held; under load every round trip waited behind the calls the gateway was
-- serving, and the other batches waited for the lock (Postgres sat idle
-- while callers queued). Now the gateway computes the events' canonical
-- forms before the statement, and this function takes the head's row lock,
-- hashes each link as sha256(previous hash || canonical form) — the same
-- bytes `audit::chain::link_bytes` computes, which `audit verify` uses and a
-- test holds equal — inserts the links, moves the head and notifies
-- listeners. The lock is held until the calling transaction ends, so links
-- still commit in sequence order.
CREATE FUNCTION audit_append_links(ids uuid[], canonicals bytea[], channel text)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    n integer := coalesce(array_length(ids, 1), 0);
    head_seq bigint;
    head_hash bytea;
    prevs bytea[] := '{}';
    hashes bytea[] := '{}';
BEGIN
    IF n <> coalesce(array_length(canonicals, 1), 0) THEN
        RAISE EXCEPTION 'audit_append_links: % event ids but % canonical forms', n,
            coalesce(array_length(canonicals, 1), 0);
    END IF;
    IF n = 0 THEN
        RETURN NULL;
    END IF;
    SELECT last_seq, last_hash INTO head_seq, head_hash FROM audit_chain FOR UPDATE;
    FOR i IN 1 .. n LOOP
        prevs[i] := head_hash;
        head_hash := sha256(head_hash || canonicals[i]);
        hashes[i] := head_hash;
    END LOOP;
    INSERT INTO audit_chain_links (seq, event_id, prev_hash, hash)
    SELECT head_seq + u.i, u.id, prevs[u.i], hashes[u.i]
    FROM unnest(ids) WITH ORDINALITY AS u(id, i);
    UPDATE audit_chain SET last_seq = head_seq + n, last_hash = head_hash;
    PERFORM pg_notify(channel, (head_seq + n)::text);
    RETURN head_seq + n;
END
$$;
