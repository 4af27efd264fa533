-- Agents and what they boot from: templates, adapters with their tools, and
-- the per-template adapter configurations. JSON values are stored as TEXT,
-- times as integer microseconds since the Unix epoch (UTC), booleans as
-- BIGINT 0 or 1, so the same queries run on SQLite and Postgres.

CREATE TABLE templates (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    model TEXT NOT NULL,
    system_prompt TEXT NOT NULL,
    reasoning_effort TEXT,
    max_tokens BIGINT,
    config TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (organization_id, name)
);

CREATE TABLE adapters (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    config_schema TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (organization_id, name)
);

CREATE TABLE tools (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    adapter_id TEXT NOT NULL REFERENCES adapters(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    parameters TEXT NOT NULL,
    url TEXT NOT NULL,
    timeout_seconds DOUBLE PRECISION NOT NULL,
    enabled BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (adapter_id, name)
);
CREATE INDEX tools_organization ON tools (organization_id, created_at);

-- `config` holds the plain values; `secrets` maps each write-only key to its
-- value encrypted under the server key.
CREATE TABLE adapter_configs (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    template_id TEXT NOT NULL REFERENCES templates(id) ON DELETE CASCADE,
    adapter_id TEXT NOT NULL REFERENCES adapters(id) ON DELETE CASCADE,
    config TEXT NOT NULL,
    secrets TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (template_id, adapter_id)
);
CREATE INDEX adapter_configs_organization ON adapter_configs (organization_id, created_at);

-- `adapters` is the snapshot of the template's adapter configs taken when the
-- agent was created (a JSON list), so later template edits leave it alone.
CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    purpose TEXT NOT NULL,
    template_id TEXT REFERENCES templates(id) ON DELETE SET NULL,
    model TEXT NOT NULL,
    system_prompt TEXT NOT NULL,
    reasoning_effort TEXT,
    max_tokens BIGINT,
    config TEXT NOT NULL,
    adapters TEXT NOT NULL,
    status TEXT NOT NULL,
    sleep_until BIGINT,
    sleep_reason TEXT,
    last_run_id TEXT,
    last_run_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX agents_organization ON agents (organization_id, created_at);

CREATE TABLE agent_tags (
    agent_id TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (agent_id, tag)
);
CREATE INDEX agent_tags_tag ON agent_tags (tag);

-- Every lifecycle transition, numbered per agent.
CREATE TABLE agent_transitions (
    agent_id TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    action TEXT NOT NULL,
    from_status TEXT NOT NULL,
    to_status TEXT NOT NULL,
    reason TEXT,
    run_id TEXT,
    sleep_until BIGINT,
    at BIGINT NOT NULL,
    PRIMARY KEY (agent_id, seq)
);
