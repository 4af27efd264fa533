-- The partial states of traces, spans and usage records: one row per object
-- per flush, plus one marker row per flush (kind 'flush', empty organization)
-- whose seq and state record the write-ahead log records the flush contains.
-- Rows are never updated; reads merge an object's rows in flush order
-- (version, then instance). trace_id is '' when the row does not name a trace.
CREATE TABLE IF NOT EXISTS events (
    organization_id String,
    kind String,
    id String,
    trace_id String,
    instance String,
    version UInt64,
    seq UInt64,
    state String
) ENGINE = MergeTree()
PARTITION BY kind
ORDER BY (organization_id, kind, id, version)
