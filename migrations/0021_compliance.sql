-- Compliance: every cached repository judged against the org policy.

-- When the repository's lifecycle and repository policies were last read
-- from ECR (NULL: never; a registry listing does not read them). Rows written
-- whole (create, update, a strong read) read them at synced_at.
ALTER TABLE repositories ADD COLUMN policies_synced_at timestamptz;
UPDATE repositories SET policies_synced_at = synced_at
WHERE lifecycle_policy IS NOT NULL OR repository_policy IS NOT NULL;

-- The violations in force: one row per repository, rule and field, kept
-- from the evaluation that first found it (`since`) until one finds it gone.
-- Written only by `compliance::evaluate_*`, which diff what they judge
-- against these rows, so an evaluation that changes nothing writes nothing.
CREATE TABLE policy_violations (
    account_id  text        NOT NULL,
    region      text        NOT NULL,
    repository  text        NOT NULL,
    rule        text        NOT NULL,
    field       text        NOT NULL,
    actual      text        NOT NULL,
    wanted      text        NOT NULL,
    mendable    boolean     NOT NULL,
    description text        NOT NULL,
    since       timestamptz NOT NULL,
    PRIMARY KEY (account_id, region, repository, rule, field)
);
-- A rule filter walks this index in the listing's order.
CREATE INDEX policy_violations_rule ON policy_violations (rule, account_id, region, repository, field);

-- The last whole-registry evaluation: when, and how fresh its input was
-- (the oldest `synced_at` of the repositories it judged).
CREATE TABLE compliance_evaluations (
    account_id     text        NOT NULL,
    region         text        NOT NULL,
    evaluated_at   timestamptz NOT NULL,
    input_synced_at timestamptz,
    repositories   bigint      NOT NULL,
    violations     bigint      NOT NULL,
    PRIMARY KEY (account_id, region)
);

-- A re-read that confirms the same policies moves only policies_synced_at:
-- that changes no cached answer, so it notifies nothing (as for synced_at).
CREATE OR REPLACE FUNCTION notify_inventory_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed record;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('ecr_gateway_inventory', '*');
        RETURN NULL;
    END IF;
    -- TG_ARGV[0] names the repository column ('repository', or 'name' in repositories).
    IF TG_OP = 'DELETE' THEN
        FOR changed IN EXECUTE format(
            'SELECT DISTINCT account_id, region, %I AS repository FROM old_rows', TG_ARGV[0]) LOOP
            PERFORM pg_notify('ecr_gateway_inventory',
                              changed.account_id || '/' || changed.region || '/' || changed.repository);
        END LOOP;
    ELSIF TG_OP = 'UPDATE' THEN
        -- Rows whose only change is a read time (the sync rewrites them every
        -- pass) change no answer: compare the rows without them.
        FOR changed IN EXECUTE format(
            'SELECT DISTINCT c.j->>''account_id'' AS account_id, c.j->>''region'' AS region,
                    c.j->>%L AS repository
             FROM (SELECT to_jsonb(n) - ''synced_at'' - ''settings_synced_at'' - ''policies_synced_at'' AS j
                   FROM new_rows n
                   EXCEPT SELECT to_jsonb(o) - ''synced_at'' - ''settings_synced_at'' - ''policies_synced_at''
                   FROM old_rows o) c',
            TG_ARGV[0]) LOOP
            PERFORM pg_notify('ecr_gateway_inventory',
                              changed.account_id || '/' || changed.region || '/' || changed.repository);
        END LOOP;
    ELSE
        FOR changed IN EXECUTE format(
            'SELECT DISTINCT account_id, region, %I AS repository FROM new_rows', TG_ARGV[0]) LOOP
            PERFORM pg_notify('ecr_gateway_inventory',
                              changed.account_id || '/' || changed.region || '/' || changed.repository);
        END LOOP;
    END IF;
    RETURN NULL;
END
$$;
