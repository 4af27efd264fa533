-- The typed columns of every trace, span and usage record, resolved from its
-- merged state, for the queries that filter, sort and sum them in ClickHouse.
-- A flush writes one row per object it contains, merged from all the object's
-- rows in `events`; merged_rows counts those rows. Rows only ever accumulate
-- in `events`, so a row merged from more of them is the newer one, and the
-- engine keeps it. Queries read the table with FINAL.
-- Booleans are UInt8 (0 or 1); trace_id is '' when the object names no trace.
CREATE TABLE IF NOT EXISTS objects (
    organization_id String,
    kind String,
    id String,
    trace_id String,
    merged_rows UInt64,
    name Nullable(String),
    agent_id Nullable(String),
    started_at Nullable(Int64),
    ended_at Nullable(Int64),
    first_seen Nullable(Int64),
    has_error Nullable(UInt8),
    span_type Nullable(String),
    flagged Nullable(UInt8),
    passed Nullable(UInt8),
    meta Nullable(String),
    has_usage Nullable(UInt8),
    model Nullable(String),
    input_tokens Nullable(Int64),
    output_tokens Nullable(Int64),
    cached_tokens Nullable(Int64),
    reasoning_tokens Nullable(Int64),
    cost_nanos Nullable(Int64),
    usage_at Nullable(Int64),
    span_id Nullable(String)
) ENGINE = ReplacingMergeTree(merged_rows)
PARTITION BY kind
ORDER BY (organization_id, kind, id)
;

-- The spans of each trace, for reads of a trace's spans: `events` and
-- `objects` are ordered by object id. A flush adds a row for each span
-- whose merged state names a trace. A row stays when a span moves to
-- another trace, so readers check the trace that `objects` names.
CREATE TABLE IF NOT EXISTS trace_spans (
    organization_id String,
    trace_id String,
    id String
) ENGINE = ReplacingMergeTree()
ORDER BY (organization_id, trace_id, id)
