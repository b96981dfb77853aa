-- A source schema that exercises what a clone's catalog must carry over:
-- every common column type, enums, domains, composite and range types,
-- arrays, partitions, inheritance, views, materialized views, sequences,
-- functions, triggers, rules, RLS policies, grants, comments, collations,
-- TOAST-able values, unlogged tables and every index kind.

CREATE SCHEMA app;
CREATE ROLE app_reader;
CREATE COLLATION app.german (provider = libc, locale = 'C.UTF-8');

CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy');
ALTER TYPE app.mood ADD VALUE 'ecstatic' AFTER 'happy';
CREATE DOMAIN app.positive AS integer CHECK (VALUE > 0);
CREATE TYPE app.address AS (street text, city text, zip varchar(10));
CREATE TYPE app.floatrange AS RANGE (subtype = float8);

CREATE SEQUENCE app.ticket_seq START 1000 INCREMENT 7;

CREATE TABLE app.everything (
    id          bigserial PRIMARY KEY,
    small       smallint,
    regular     integer NOT NULL DEFAULT 0,
    big         bigint,
    exact       numeric(12, 3),
    real_num    real,
    dbl         double precision,
    flag        boolean,
    label       text COLLATE app.german,
    fixed       char(4),
    varying     varchar(40),
    raw         bytea,
    day         date,
    clock       time,
    at_local    timestamp,
    at_zone     timestamptz,
    span        interval,
    uid         uuid,
    doc         json,
    docb        jsonb,
    addr        inet,
    net         cidr,
    mac         macaddr,
    bits        bit varying(16),
    words       text[],
    grid        integer[][],
    feeling     app.mood,
    amount      app.positive,
    home        app.address,
    window_r    tstzrange,
    custom_r    app.floatrange,
    pt          point,
    box_col     box,
    search      tsvector,
    ticket      integer DEFAULT nextval('app.ticket_seq'),
    loud        text GENERATED ALWAYS AS (upper(label)) STORED,
    CONSTRAINT label_not_blank CHECK (label <> '')
);
COMMENT ON TABLE app.everything IS 'one column of each common type';
COMMENT ON COLUMN app.everything.feeling IS 'an enum column';

CREATE UNIQUE INDEX everything_uid ON app.everything (uid);
CREATE INDEX everything_label_hash ON app.everything USING hash (label);
CREATE INDEX everything_docb ON app.everything USING gin (docb jsonb_path_ops);
CREATE INDEX everything_words ON app.everything USING gin (words);
CREATE INDEX everything_box ON app.everything USING gist (box_col);
CREATE INDEX everything_window ON app.everything USING gist (window_r);
CREATE INDEX everything_pt ON app.everything USING spgist (pt);
CREATE INDEX everything_day ON app.everything USING brin (day);
CREATE INDEX everything_lower_label ON app.everything (lower(label)) WHERE flag;
CREATE INDEX everything_search ON app.everything USING gin (search);

INSERT INTO app.everything (small, regular, big, exact, real_num, dbl, flag, label, fixed, varying, raw,
    day, clock, at_local, at_zone, span, uid, doc, docb, addr, net, mac, bits, words, grid, feeling,
    amount, home, window_r, custom_r, pt, box_col, search)
SELECT i % 100, i, i * 1000000000::bigint, i / 7.0, i / 3.0, i / 11.0, i % 2 = 0, 'label ' || i,
    'ab', 'varying ' || i, decode(md5(i::text), 'hex'), date '2024-01-01' + i, time '10:00' + i * interval '1 s',
    timestamp '2024-01-01' + i * interval '1 h', timestamptz '2024-01-01 00:00+00' + i * interval '1 min',
    i * interval '1 day', md5(i::text)::uuid, json_build_object('i', i), jsonb_build_object('i', i, 'tags', array['x', 'y']),
    ('10.0.' || (i % 250) || '.1')::inet, '10.1.0.0/16', '08:00:2b:01:02:03', B'1010', array['w' || i, 'v'],
    array[[i, i + 1], [i + 2, i + 3]], (array['sad', 'ok', 'happy', 'ecstatic'])[1 + i % 4]::app.mood,
    1 + i, row('street ' || i, 'city', '12345')::app.address,
    tstzrange(timestamptz '2024-01-01 00:00+00', timestamptz '2024-01-01 00:00+00' + i * interval '1 h'),
    app.floatrange(i, i + 0.5), point(i, -i), box(point(i, i), point(i + 1, i + 1)),
    to_tsvector('english', 'row number ' || i)
FROM generate_series(1, 500) AS i;
-- Values stored out of line (TOAST).
INSERT INTO app.everything (label, docb, raw, words)
SELECT 'big ' || i, jsonb_build_object('blob', repeat('x', 20000)), decode(repeat('ab', 50000), 'hex'),
    array_fill('long word'::text, array[3000])
FROM generate_series(1, 5) AS i;

CREATE TABLE app.events (id int, at date NOT NULL, payload text) PARTITION BY RANGE (at);
CREATE TABLE app.events_2024 PARTITION OF app.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE app.events_2025 PARTITION OF app.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')
    PARTITION BY LIST (id);
CREATE TABLE app.events_2025_a PARTITION OF app.events_2025 FOR VALUES IN (1, 2, 3);
CREATE TABLE app.events_default PARTITION OF app.events DEFAULT;
CREATE INDEX events_at ON app.events (at);
INSERT INTO app.events SELECT i, date '2024-06-01' + (i % 500), 'event ' || i FROM generate_series(1, 300) i
    WHERE i % 500 < 200 OR i IN (1, 2, 3);

CREATE TABLE app.vehicle (id serial PRIMARY KEY, wheels int);
CREATE TABLE app.car (seats int) INHERITS (app.vehicle);
INSERT INTO app.car (wheels, seats) VALUES (4, 5), (4, 2);

CREATE TABLE app.parent (id int PRIMARY KEY);
CREATE TABLE app.child (id int PRIMARY KEY, parent_id int REFERENCES app.parent ON DELETE CASCADE);
INSERT INTO app.parent SELECT generate_series(1, 10);
INSERT INTO app.child SELECT i, 1 + i % 10 FROM generate_series(1, 30) i;

CREATE UNLOGGED TABLE app.scratch (k int PRIMARY KEY, v text);
INSERT INTO app.scratch VALUES (1, 'one');

CREATE VIEW app.happy_rows AS SELECT id, label FROM app.everything WHERE feeling = 'happy';
CREATE MATERIALIZED VIEW app.mood_counts AS SELECT feeling, count(*) AS n FROM app.everything GROUP BY feeling;
CREATE UNIQUE INDEX mood_counts_feeling ON app.mood_counts (feeling);

CREATE FUNCTION app.touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.regular := NEW.regular + 1;
    RETURN NEW;
END $$;
CREATE TRIGGER everything_touch BEFORE UPDATE ON app.everything FOR EACH ROW EXECUTE FUNCTION app.touch();
CREATE FUNCTION app.add(a int, b int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT a + b';
CREATE RULE parent_no_delete AS ON DELETE TO app.parent WHERE old.id = 1 DO INSTEAD NOTHING;

ALTER TABLE app.child ENABLE ROW LEVEL SECURITY;
CREATE POLICY child_even ON app.child FOR SELECT TO app_reader USING (id % 2 = 0);
GRANT USAGE ON SCHEMA app TO app_reader;
GRANT SELECT ON app.child, app.happy_rows TO app_reader;

-- Churn the catalog so the copy sees dead and updated catalog tuples.
CREATE TABLE app.dropped_later (x int);
DROP TABLE app.dropped_later;
ALTER TABLE app.parent ADD COLUMN note text;
ALTER TABLE app.parent DROP COLUMN note;
-- Database-level settings travel with a clone.
DO $$ BEGIN
    EXECUTE format('ALTER DATABASE %I SET work_mem = %L', current_database(), '7MB');
    EXECUTE format('ALTER ROLE app_reader IN DATABASE %I SET search_path = app', current_database());
END $$;
ANALYZE;
