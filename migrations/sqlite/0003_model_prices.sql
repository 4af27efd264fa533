-- Per-organization model price overrides, in USD per million tokens. Prices
-- are exact decimal strings, such as "2.500000000", so that no backend rounds
-- them through floating point.

CREATE TABLE model_prices (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    model TEXT NOT NULL,
    input_per_million TEXT NOT NULL,
    cached_input_per_million TEXT NOT NULL,
    output_per_million TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (organization_id, model)
);
