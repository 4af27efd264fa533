-- Eval cases (inputs with their rubrics) and trace reviews. JSON values are
-- stored as TEXT and times as integer microseconds since the Unix epoch (UTC),
-- as in the other tables. A review's trace lives in the event store, so
-- `trace_id` is not a foreign key.

CREATE TABLE eval_cases (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    input TEXT NOT NULL,
    expected TEXT NOT NULL,
    rubric TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX eval_cases_organization ON eval_cases (organization_id, created_at);

CREATE TABLE trace_reviews (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    trace_id TEXT NOT NULL,
    reviewer_id TEXT REFERENCES users(id) ON DELETE SET NULL,
    source TEXT NOT NULL,
    criterion_scores TEXT NOT NULL,
    comment TEXT NOT NULL,
    eval_id TEXT REFERENCES eval_cases(id) ON DELETE SET NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX trace_reviews_trace ON trace_reviews (organization_id, trace_id, created_at);
CREATE INDEX trace_reviews_organization ON trace_reviews (organization_id, created_at);
