-- The growth service's own tables (services/growth, docs/growth.md). Nothing else reads or writes them.

-- Flags as changed at run time. The file deploy/config/flags.yaml seeds them (source = 'config'); the admin
-- API replaces them (source = 'admin'). A deleted flag keeps its row (deleted = true) so its version keeps
-- counting up if it is created again.
CREATE TABLE IF NOT EXISTS growth_flags (
    flag_key    text        PRIMARY KEY CHECK (flag_key ~ '^[A-Za-z][A-Za-z0-9_.-]{0,99}$'),
    version     integer     NOT NULL CHECK (version >= 1),
    definition  jsonb       NOT NULL,
    source      text        NOT NULL CHECK (source IN ('config', 'admin')),
    deleted     boolean     NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text        NOT NULL CHECK (length(updated_by) BETWEEN 1 AND 200)
);

-- Every change, never updated or deleted: who, when, what (the definition before and after).
CREATE TABLE IF NOT EXISTS growth_flag_audit (
    change_id   bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    flag_key    text        NOT NULL,
    version     integer     NOT NULL,
    action      text        NOT NULL CHECK (action IN ('seed', 'config', 'create', 'update', 'delete')),
    actor       text        NOT NULL CHECK (length(actor) BETWEEN 1 AND 200),
    changed_at  timestamptz NOT NULL DEFAULT now(),
    request_id  text,
    before      jsonb,
    after       jsonb,
    UNIQUE (flag_key, version)
);
CREATE INDEX IF NOT EXISTS growth_flag_audit_key_idx ON growth_flag_audit (flag_key, change_id);

-- Server-side sticky assignments (flags with sticky: true): "<salt>|<attribute>|<value>" -> variant.
CREATE TABLE IF NOT EXISTS growth_sticky_assignments (
    sticky_key  text        PRIMARY KEY,
    variant     text        NOT NULL,
    assigned_at timestamptz NOT NULL DEFAULT now()
);

-- Onboarding progress: the steps a person completed, once each (steps the product already saw done are
-- skipped by their done_when conditions, computed live, not stored).
CREATE TABLE IF NOT EXISTS growth_onboarding_progress (
    customer_id  text        NOT NULL CHECK (length(customer_id) BETWEEN 1 AND 200),
    person_id    text        NOT NULL CHECK (length(person_id) BETWEEN 1 AND 200),
    step_id      text        NOT NULL,
    flow         text        NOT NULL,
    completed_at timestamptz NOT NULL DEFAULT now(),
    -- The onboarding_step_completed event was acknowledged by Kafka (retried until it is; same event_id).
    emitted      boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (customer_id, person_id, step_id)
);
