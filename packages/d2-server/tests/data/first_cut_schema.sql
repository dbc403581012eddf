-- The SQLite schema of d2-server 2.0.0's first cut: its hand-written migrations 1-3
-- (d2/server/migrations.py, removed when Alembic replaced it), kept as test data to
-- build a database exactly as that code left it. Run with sqlite3 executescript;
-- that code then set PRAGMA user_version = 3.

-- migration 1
CREATE TABLE accounts (
            id TEXT PRIMARY KEY,
            plan TEXT NOT NULL,
            max_tools INTEGER NOT NULL,
            bundle_size_bytes INTEGER NOT NULL,
            event_batch INTEGER NOT NULL,
            ingest_interval INTEGER NOT NULL,
            max_apps INTEGER NOT NULL,
            created_at REAL NOT NULL);
CREATE TABLE apps (
            id INTEGER PRIMARY KEY,
            account_id TEXT NOT NULL REFERENCES accounts(id),
            name TEXT NOT NULL,
            current_version INTEGER NOT NULL DEFAULT 0,
            revoked INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            UNIQUE (account_id, name));
CREATE TABLE tokens (
            hash TEXT PRIMARY KEY,
            app_id INTEGER NOT NULL REFERENCES apps(id),
            scopes TEXT NOT NULL,
            created_at REAL NOT NULL);
CREATE TABLE signing_keys (
            kid TEXT PRIMARY KEY,
            alg TEXT NOT NULL,
            private_pem BLOB NOT NULL,
            public_jwk TEXT NOT NULL,
            created_at REAL NOT NULL,
            refresh_until REAL,
            retired_at REAL,
            remove_at REAL);
CREATE TABLE device_keys (
            account_id TEXT NOT NULL REFERENCES accounts(id),
            key_id TEXT NOT NULL,
            algorithm TEXT NOT NULL,
            public_key BLOB NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (account_id, key_id));
CREATE TABLE versions (
            app_id INTEGER NOT NULL REFERENCES apps(id),
            version INTEGER NOT NULL,
            document TEXT NOT NULL,
            body BLOB NOT NULL,
            device_key_id TEXT NOT NULL,
            signature BLOB NOT NULL,
            published_at REAL NOT NULL,
            PRIMARY KEY (app_id, version));
CREATE TABLE bundles (
            id INTEGER PRIMARY KEY,
            app_id INTEGER NOT NULL,
            version INTEGER NOT NULL,
            jws TEXT NOT NULL,
            etag TEXT NOT NULL,
            kid TEXT NOT NULL,
            iat INTEGER NOT NULL,
            exp INTEGER NOT NULL,
            created_at REAL NOT NULL,
            FOREIGN KEY (app_id, version) REFERENCES versions(app_id, version));
CREATE INDEX bundles_by_version ON bundles (app_id, version, id);
CREATE TABLE drafts (
            app_id INTEGER PRIMARY KEY REFERENCES apps(id),
            version INTEGER NOT NULL,
            document TEXT NOT NULL,
            updated_at REAL NOT NULL);
CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            app_id INTEGER NOT NULL REFERENCES apps(id),
            token_hash TEXT NOT NULL,
            event_type TEXT NOT NULL,
            payload TEXT NOT NULL,
            occurred_at TEXT NOT NULL,
            received_at REAL NOT NULL);
CREATE INDEX events_by_app ON events (app_id, id);

-- migration 2
CREATE TABLE app_device_keys (
            app_id INTEGER NOT NULL REFERENCES apps(id),
            key_id TEXT NOT NULL,
            algorithm TEXT NOT NULL,
            public_key BLOB NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (app_id, key_id));
INSERT INTO app_device_keys (app_id, key_id, algorithm, public_key, created_at)
            SELECT p.id, k.key_id, k.algorithm, k.public_key, k.created_at
            FROM device_keys k JOIN apps p ON p.account_id = k.account_id;
DROP TABLE device_keys;
ALTER TABLE app_device_keys RENAME TO device_keys;

-- migration 3
CREATE INDEX events_by_received ON events (received_at);
CREATE TABLE event_counts (
            app_id INTEGER PRIMARY KEY REFERENCES apps(id),
            events INTEGER NOT NULL,
            bytes INTEGER NOT NULL);
INSERT INTO event_counts (app_id, events, bytes)
            SELECT app_id, COUNT(*), SUM(length(CAST(event_type AS BLOB))
                + length(CAST(payload AS BLOB)) + length(CAST(occurred_at AS BLOB)))
            FROM events GROUP BY app_id;
CREATE TRIGGER events_counted_in AFTER INSERT ON events BEGIN
            INSERT OR IGNORE INTO event_counts (app_id, events, bytes)
                VALUES (new.app_id, 0, 0);
            UPDATE event_counts SET events = events + 1,
                bytes = bytes + length(CAST(new.event_type AS BLOB))
                    + length(CAST(new.payload AS BLOB)) + length(CAST(new.occurred_at AS BLOB))
                WHERE app_id = new.app_id;
        END;
CREATE TRIGGER events_counted_out AFTER DELETE ON events BEGIN
            UPDATE event_counts SET events = events - 1,
                bytes = bytes - length(CAST(old.event_type AS BLOB))
                    - length(CAST(old.payload AS BLOB)) - length(CAST(old.occurred_at AS BLOB))
                WHERE app_id = old.app_id;
        END;
CREATE TRIGGER events_counted_moved
            AFTER UPDATE OF app_id, event_type, payload, occurred_at ON events BEGIN
            UPDATE event_counts SET events = events - 1,
                bytes = bytes - length(CAST(old.event_type AS BLOB))
                    - length(CAST(old.payload AS BLOB)) - length(CAST(old.occurred_at AS BLOB))
                WHERE app_id = old.app_id;
            INSERT OR IGNORE INTO event_counts (app_id, events, bytes)
                VALUES (new.app_id, 0, 0);
            UPDATE event_counts SET events = events + 1,
                bytes = bytes + length(CAST(new.event_type AS BLOB))
                    + length(CAST(new.payload AS BLOB)) + length(CAST(new.occurred_at AS BLOB))
                WHERE app_id = new.app_id;
        END;
