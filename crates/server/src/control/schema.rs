//! Migrations of the control database: portable SQL (TEXT and BIGINT only)
//! that SQLite and PostgreSQL both run. Each step runs once, in order, in
//! one transaction with its row in `schema_migrations`.

/// The migrations, in order. Never edit a released step: add a new one.
pub const MIGRATIONS: &[(i64, &str, &[&str])] = &[
    (
        1,
        "tailnets, users, keys, nodes, settings, collections, audit log",
        &[
            "CREATE TABLE tailnets (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            created BIGINT NOT NULL,
            deleted BIGINT,
            audit_seq BIGINT NOT NULL,
            audit_head TEXT NOT NULL,
            audit_time BIGINT NOT NULL,
            anchor_seq BIGINT NOT NULL,
            anchor_hash TEXT NOT NULL
        )",
            "CREATE TABLE users (
            id TEXT PRIMARY KEY,
            tailnet_id TEXT NOT NULL REFERENCES tailnets(id),
            login_name TEXT NOT NULL,
            display_name TEXT NOT NULL,
            role TEXT NOT NULL,
            status TEXT NOT NULL,
            created BIGINT NOT NULL,
            UNIQUE (tailnet_id, login_name)
        )",
            "CREATE TABLE keys (
            id TEXT PRIMARY KEY,
            tailnet_id TEXT NOT NULL REFERENCES tailnets(id),
            user_id TEXT NOT NULL,
            key_type TEXT NOT NULL,
            hash TEXT NOT NULL UNIQUE,
            description TEXT NOT NULL,
            created BIGINT NOT NULL,
            expires BIGINT,
            revoked BIGINT,
            reusable BIGINT NOT NULL,
            ephemeral BIGINT NOT NULL,
            preauthorized BIGINT NOT NULL,
            tags TEXT NOT NULL,
            uses BIGINT NOT NULL
        )",
            "CREATE INDEX keys_by_tailnet ON keys (tailnet_id, created)",
            "CREATE TABLE nodes (
            id TEXT PRIMARY KEY,
            tailnet_id TEXT NOT NULL REFERENCES tailnets(id),
            name TEXT NOT NULL,
            hostname TEXT NOT NULL,
            os TEXT NOT NULL,
            addresses TEXT NOT NULL,
            tags TEXT NOT NULL,
            routes TEXT NOT NULL,
            no_logs BIGINT NOT NULL,
            instance TEXT,
            user_id TEXT NOT NULL,
            key_id TEXT NOT NULL,
            created BIGINT NOT NULL,
            last_seen BIGINT NOT NULL
        )",
            "CREATE INDEX nodes_by_tailnet ON nodes (tailnet_id, name)",
            "CREATE TABLE settings (
            tailnet_id TEXT NOT NULL REFERENCES tailnets(id),
            name TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (tailnet_id, name)
        )",
            "CREATE TABLE collections (
            name TEXT PRIMARY KEY,
            tailnet_id TEXT NOT NULL REFERENCES tailnets(id),
            created BIGINT NOT NULL,
            retention_days BIGINT
        )",
            "CREATE TABLE adoptions (
            collection TEXT NOT NULL,
            instance TEXT NOT NULL,
            adopted BIGINT NOT NULL,
            PRIMARY KEY (collection, instance)
        )",
            "CREATE TABLE audit_events (
            tailnet_id TEXT NOT NULL,
            seq BIGINT NOT NULL,
            event_time BIGINT NOT NULL,
            event_group_id TEXT NOT NULL,
            actor_id TEXT NOT NULL,
            actor_login TEXT NOT NULL,
            action TEXT NOT NULL,
            target_type TEXT NOT NULL,
            target_id TEXT NOT NULL,
            property TEXT NOT NULL,
            failed BIGINT NOT NULL,
            body TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL,
            PRIMARY KEY (tailnet_id, seq)
        )",
            "CREATE INDEX audit_by_time ON audit_events (tailnet_id, event_time, seq)",
            "CREATE INDEX audit_by_actor ON audit_events (tailnet_id, actor_login, action, seq)",
            "CREATE INDEX audit_by_action ON audit_events (tailnet_id, action, seq)",
            "CREATE INDEX audit_by_target ON audit_events (tailnet_id, target_type, target_id, seq)",
        ],
    ),
    (
        2,
        "audit indexes for actor-only and property filters",
        &[
            "CREATE INDEX audit_by_actor_only ON audit_events (tailnet_id, actor_login, seq)",
            "CREATE INDEX audit_by_property ON audit_events (tailnet_id, property, seq)",
        ],
    ),
    (
        3,
        "who created each key (keys made for another user act only while their creator could make them)",
        &["ALTER TABLE keys ADD COLUMN created_by TEXT"],
    ),
    (
        4,
        "collections and adoptions per tailnet: names are per tailnet, an instance is adopted into a collection by one tailnet",
        &[
            "CREATE TABLE tailnet_collections (
            tailnet_id TEXT NOT NULL REFERENCES tailnets(id),
            name TEXT NOT NULL,
            created BIGINT NOT NULL,
            retention_days BIGINT,
            PRIMARY KEY (tailnet_id, name)
        )",
            "INSERT INTO tailnet_collections (tailnet_id, name, created, retention_days)
             SELECT tailnet_id, name, created, retention_days FROM collections",
            "CREATE TABLE tailnet_adoptions (
            tailnet_id TEXT NOT NULL,
            collection TEXT NOT NULL,
            instance TEXT NOT NULL,
            adopted BIGINT NOT NULL,
            PRIMARY KEY (collection, instance)
        )",
            "INSERT INTO tailnet_adoptions (tailnet_id, collection, instance, adopted)
             SELECT c.tailnet_id, a.collection, a.instance, a.adopted
             FROM adoptions a JOIN collections c ON c.name = a.collection",
            "DROP TABLE adoptions",
            "DROP TABLE collections",
            "CREATE INDEX adoptions_by_tailnet ON tailnet_adoptions (tailnet_id, collection)",
        ],
    ),
    (
        5,
        "detection rules per tailnet (custom rules and built-in rules' enabled flags) and alert acknowledgements",
        &[
            "CREATE TABLE detection_rules (
            tailnet_id TEXT NOT NULL REFERENCES tailnets(id),
            id TEXT NOT NULL,
            yaml TEXT NOT NULL,
            enabled BIGINT NOT NULL,
            created BIGINT NOT NULL,
            updated BIGINT NOT NULL,
            PRIMARY KEY (tailnet_id, id)
        )",
            "CREATE TABLE alert_acks (
            tailnet_id TEXT NOT NULL REFERENCES tailnets(id),
            alert_id TEXT NOT NULL,
            actor TEXT NOT NULL,
            acked BIGINT NOT NULL,
            note TEXT NOT NULL,
            PRIMARY KEY (tailnet_id, alert_id)
        )",
        ],
    ),
    (
        6,
        "log streams: destinations per tailnet and log type, secrets sealed",
        &[
            "CREATE TABLE log_streams (
            tailnet_id TEXT NOT NULL REFERENCES tailnets(id),
            id TEXT NOT NULL,
            log_type TEXT NOT NULL,
            config TEXT NOT NULL,
            secrets TEXT NOT NULL,
            start_position BIGINT NOT NULL,
            created BIGINT NOT NULL,
            updated BIGINT NOT NULL,
            PRIMARY KEY (tailnet_id, id)
        )",
            "CREATE INDEX log_streams_by_type ON log_streams (tailnet_id, log_type, created)",
        ],
    ),
    (
        7,
        "console sign-in: passwords (argon2id), one-time setup links, sessions",
        &[
            "CREATE TABLE passwords (
            user_id TEXT PRIMARY KEY,
            tailnet_id TEXT NOT NULL REFERENCES tailnets(id),
            hash TEXT NOT NULL,
            updated BIGINT NOT NULL
        )",
            "CREATE TABLE password_setups (
            token_hash TEXT PRIMARY KEY,
            tailnet_id TEXT NOT NULL REFERENCES tailnets(id),
            user_id TEXT NOT NULL,
            expires BIGINT NOT NULL
        )",
            "CREATE TABLE sessions (
            token_hash TEXT PRIMARY KEY,
            tailnet_id TEXT NOT NULL REFERENCES tailnets(id),
            user_id TEXT NOT NULL,
            key_id TEXT NOT NULL,
            csrf TEXT NOT NULL,
            created BIGINT NOT NULL,
            expires BIGINT NOT NULL
        )",
            "CREATE INDEX sessions_by_user ON sessions (user_id)",
        ],
    ),
];
