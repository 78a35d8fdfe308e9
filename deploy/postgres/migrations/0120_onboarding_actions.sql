-- Onboarding completion actions (issue 20, seed 002 markComplete: "trigger post-completion hook, e.g. unlock
-- feature"; docs/growth.md "Completion actions").

-- The ledger and audit of every action a completion applied, once each: its primary key is what makes a
-- retried or replayed completion apply nothing twice (inserted in the transaction that records the
-- completion, with the action's own effect). Never updated except `emitted`, never deleted but by erasure.
CREATE TABLE IF NOT EXISTS growth_onboarding_actions (
    customer_id  text        NOT NULL,
    person_id    text        NOT NULL,
    step_id      text        NOT NULL,
    action_index integer     NOT NULL CHECK (action_index >= 0),
    kind         text        NOT NULL CHECK (kind IN ('set_flag', 'grant_trial', 'emit')),
    detail       jsonb       NOT NULL,
    flow         text        NOT NULL,
    actor        text        NOT NULL CHECK (length(actor) BETWEEN 1 AND 200),
    request_id   text,
    applied_at   timestamptz NOT NULL DEFAULT now(),
    -- emit actions: the event was acknowledged by Kafka (a repeat of the completion retries it, same id).
    emitted      boolean     NOT NULL DEFAULT false,
    -- emit actions: a request is writing the event since then (concurrent repeats leave it to that one;
    -- a claim older than the lease, its request gone, is taken over).
    emit_claimed_at timestamptz,
    PRIMARY KEY (customer_id, person_id, step_id, action_index)
);

-- Flag values set for one person or a whole customer (growth's own table; scope 'customer' has subject ''),
-- applied on top of the flag's rules where the subject is known: POST /v1/flags/evaluate and onboarding.
CREATE TABLE IF NOT EXISTS growth_flag_overrides (
    flag_key    text        NOT NULL,
    customer_id text        NOT NULL,
    scope       text        NOT NULL CHECK (scope IN ('person', 'customer')),
    subject_id  text        NOT NULL,
    variant     text        NOT NULL,
    source      text        NOT NULL,
    set_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (flag_key, customer_id, scope, subject_id)
);
CREATE INDEX IF NOT EXISTS growth_flag_overrides_customer_idx ON growth_flag_overrides (customer_id);

-- Time-limited boolean features (trials) per customer, which the entitlement API adds to the plan's
-- features until expires_at. Owner module: services/plans/trials.py. grant_key makes a grant idempotent.
CREATE TABLE IF NOT EXISTS feature_trials (
    grant_key   text        PRIMARY KEY,
    customer_id text        NOT NULL,
    feature     text        NOT NULL,
    granted_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    source      text        NOT NULL,
    CHECK (expires_at > granted_at)
);
CREATE INDEX IF NOT EXISTS feature_trials_customer_idx ON feature_trials (customer_id, expires_at);

-- The same claim for the onboarding_step_completed event itself: two concurrent repeats of a completion
-- whose event is not written yet must not both write it.
ALTER TABLE growth_onboarding_progress ADD COLUMN IF NOT EXISTS emit_claimed_at timestamptz;
