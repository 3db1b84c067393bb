-- Acme's fleet app: the migration that created its device table, as Acme's team wrote it.
-- golioth-sync never changes this schema; examples/acme_fleet/mapping.yaml describes it.

CREATE SCHEMA app;

CREATE TABLE app.organizations (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    slug       text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9-]+$'),
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TYPE app.connectivity AS ENUM ('ONLINE', 'OFFLINE', 'UNREACHABLE');

CREATE TABLE app.devices (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id  uuid NOT NULL REFERENCES app.organizations (id) ON DELETE CASCADE,
    display_name     text NOT NULL CONSTRAINT devices_display_name_length CHECK (char_length(display_name) BETWEEN 1 AND 120),
    serial_numbers   text[] NOT NULL DEFAULT '{}',
    -- What kind of hardware this is: Acme's own classification, no Golioth counterpart.
    device_type      text NOT NULL CONSTRAINT devices_device_type_known CHECK (device_type IN ('sensor', 'gateway', 'unclassified')),
    -- Free-form: {"tags": [...], "site": "...", "installed_by": "..."}
    metadata         jsonb NOT NULL DEFAULT '{}'::jsonb,
    is_active        boolean NOT NULL DEFAULT true,
    config           jsonb NOT NULL DEFAULT '{}'::jsonb,
    connectivity     app.connectivity,
    last_online_at   timestamptz,
    last_offline_at  timestamptz,
    firmware         jsonb NOT NULL DEFAULT '{}'::jsonb,
    notes            text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz
);

CREATE INDEX devices_organization_live ON app.devices (organization_id) WHERE deleted_at IS NULL;
CREATE INDEX devices_serial_numbers ON app.devices USING gin (serial_numbers);

-- Their own change time: every update moves it.
CREATE FUNCTION app.touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER devices_touch_updated_at BEFORE UPDATE ON app.devices
FOR EACH ROW EXECUTE FUNCTION app.touch_updated_at();

-- Their own audit trail: who changed which device, and how.
CREATE TABLE app.audit_log (
    id         bigserial PRIMARY KEY,
    table_name text NOT NULL,
    row_id     uuid NOT NULL,
    action     text NOT NULL,
    changed_by text NOT NULL DEFAULT current_user,
    changed_at timestamptz NOT NULL DEFAULT now(),
    old_row    jsonb,
    new_row    jsonb
);

CREATE FUNCTION app.audit_devices() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO app.audit_log (table_name, row_id, action, old_row, new_row)
    VALUES (TG_TABLE_NAME, coalesce(NEW.id, OLD.id), lower(TG_OP),
            CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
            CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END);
    RETURN NULL;
END
$$;

CREATE TRIGGER devices_audit AFTER INSERT OR UPDATE OR DELETE ON app.devices
FOR EACH ROW EXECUTE FUNCTION app.audit_devices();
