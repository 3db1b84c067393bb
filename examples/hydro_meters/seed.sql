-- Meters of two utilities; the mapping syncs hydro-north only.
INSERT INTO meters (utility, serial, label, status, labels, fw, installed_on) VALUES
    ('hydro-north', 'HN-1001', 'Main street 12',  'active',   '{residential}', '2.1.0', '2023-04-01'),
    ('hydro-north', 'HN-1002', 'Station road 3',  'disabled', '{commercial}',  '2.0.4', '2022-11-15'),
    ('hydro-north', 'HN-1003', 'Mill lane 7',     'retired',  '{}',            NULL,    '2019-06-30'),
    ('hydro-south', 'HS-2001', 'Harbour 1',       'active',   '{industrial}',  '2.1.0', '2024-01-10');
