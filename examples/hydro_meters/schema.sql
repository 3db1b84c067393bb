-- Hydro's water meters: one table shared by the utilities Hydro serves, keyed by an identity.
-- golioth-sync never changes this schema; examples/hydro_meters/mapping.yaml describes it.

CREATE TABLE meters (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    utility       text NOT NULL,
    serial        text NOT NULL,
    label         text NOT NULL,
    status        text NOT NULL DEFAULT 'active'
                  CONSTRAINT meters_status_check CHECK (status IN ('active', 'disabled', 'retired')),
    labels        text[] NOT NULL DEFAULT '{}',
    fw            text,
    last_contact  timestamptz,
    installed_on  date,
    -- The Golioth device id, kept on the row: Hydro's support staff look devices up by it.
    golioth_id    text,
    CONSTRAINT meters_utility_serial UNIQUE (utility, serial),
    CONSTRAINT meters_utility_golioth_id UNIQUE (utility, golioth_id)
);

CREATE INDEX meters_utility ON meters (utility);
