-- A few rows so the example has something to sync: two organizations, devices in both.
INSERT INTO app.organizations (slug, name) VALUES ('acme', 'Acme Corp'), ('globex', 'Globex');

INSERT INTO app.devices (organization_id, display_name, serial_numbers, device_type, metadata, connectivity)
SELECT o.id, d.display_name, d.serial_numbers::text[], d.device_type, d.metadata::jsonb, d.connectivity::app.connectivity
FROM app.organizations o
JOIN (VALUES
    ('acme',   'Boiler room sensor', '{ACM-0001}', 'sensor',  '{"tags": ["boiler", "floor-1"], "site": "Lyon"}', 'ONLINE'),
    ('acme',   'Roof gateway',       '{ACM-0002}', 'gateway', '{"tags": ["roof"], "site": "Lyon"}',              'OFFLINE'),
    ('acme',   'Cold store probe',   '{ACM-0003}', 'sensor',  '{"site": "Grenoble"}',                            NULL),
    ('globex', 'Globex meter 1',     '{GBX-0001}', 'sensor',  '{"tags": ["meter"]}',                             'ONLINE')
) AS d (slug, display_name, serial_numbers, device_type, metadata, connectivity) ON d.slug = o.slug;
