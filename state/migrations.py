"""Ordered schema migrations, recorded in ``schema_migrations`` and applied under the state lock.

Append new migrations to ``MIGRATIONS``; never edit one that has shipped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from state.errors import StateUnavailableError

Connection = Any  # duckdb.DuckDBPyConnection; kept loose so this module imports nothing heavy

DEFAULT_BACKEND_GROUP = "default_backend_group"

# The SDA models of the seed's `show sdamodel` (000): 64 GB of accelerator memory per device.
SEED_MODELS: tuple[tuple[int, str, int], ...] = (
    (1, "Small.64GB", 1),
    (2, "Medium.128GB", 2),
    (3, "Large.256GB", 4),
    (4, "xLarge.512GB", 8),
    (5, "2xLarge.1024GB", 16),
    (6, "3xLarge.1536GB", 24),
    (7, "4xLarge.2048GB", 32),
    (8, "6xLarge.3072GB", 48),
    (9, "8xLarge.4096GB", 64),
    (10, "12xLarge.6144GB", 96),
    (11, "24xLarge.12288GB", 192),
    (12, "48xLarge.24576GB", 384),
    (52, "1.5xLarge.768GB", 12),
)


def m001_initial(conn: Connection) -> None:
    """Every entity the seeds name, plus the job, history and usage tables of the scheduler."""
    conn.execute(
        """
        CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR);
        CREATE SEQUENCE seq_sda START 1;
        CREATE SEQUENCE seq_sdamodel START 53;
        CREATE SEQUENCE seq_usergroup START 1;
        CREATE SEQUENCE seq_modelgroup START 1;
        CREATE SEQUENCE seq_backendgroup START 1;
        CREATE SEQUENCE seq_backend START 1;
        CREATE SEQUENCE seq_event START 1;
        CREATE SEQUENCE seq_job START 1;
        CREATE TABLE tokens (
            value VARCHAR PRIMARY KEY,
            description VARCHAR NOT NULL,
            priority INTEGER NOT NULL DEFAULT 0,
            access_level VARCHAR NOT NULL DEFAULT 'USER',
            current_sda INTEGER,
            max_sda INTEGER NOT NULL DEFAULT 1,
            duplicable INTEGER NOT NULL DEFAULT 1,
            worker_execute_info VARCHAR NOT NULL DEFAULT '',
            created_at TIMESTAMP NOT NULL
        );
        CREATE TABLE token_env (
            token VARCHAR NOT NULL, name VARCHAR NOT NULL, value VARCHAR NOT NULL, position INTEGER NOT NULL
        );
        CREATE TABLE sda_models (id INTEGER PRIMARY KEY, name VARCHAR NOT NULL, devices INTEGER NOT NULL);
        CREATE TABLE sdas (
            id INTEGER PRIMARY KEY,
            token VARCHAR NOT NULL,
            model_id INTEGER NOT NULL,
            model_group_id INTEGER,
            description VARCHAR NOT NULL DEFAULT '',
            reserved BOOLEAN NOT NULL DEFAULT FALSE,
            created_at TIMESTAMP NOT NULL
        );
        CREATE TABLE sda_reservations (
            sda_id INTEGER NOT NULL, backend_id INTEGER NOT NULL, device_index INTEGER NOT NULL
        );
        CREATE TABLE user_groups (id INTEGER PRIMARY KEY, name VARCHAR NOT NULL, description VARCHAR NOT NULL);
        CREATE TABLE user_group_tokens (group_id INTEGER NOT NULL, token VARCHAR NOT NULL, position INTEGER NOT NULL);
        CREATE TABLE model_groups (id INTEGER PRIMARY KEY, name VARCHAR NOT NULL, backend_group_id INTEGER NOT NULL);
        CREATE TABLE model_group_models (group_id INTEGER NOT NULL, model_id INTEGER NOT NULL, position INTEGER NOT NULL);
        CREATE TABLE backend_groups (id INTEGER PRIMARY KEY, name VARCHAR NOT NULL);
        CREATE TABLE memberships (user_group_id INTEGER NOT NULL, model_group_id INTEGER NOT NULL);
        CREATE TABLE backends (
            id INTEGER PRIMARY KEY,
            host VARCHAR NOT NULL,
            ip VARCHAR NOT NULL,
            group_id INTEGER NOT NULL DEFAULT 0,
            status VARCHAR NOT NULL DEFAULT 'ACTIVE',
            created_at TIMESTAMP NOT NULL
        );
        CREATE TABLE devices (
            backend_id INTEGER NOT NULL,
            idx INTEGER NOT NULL,
            status VARCHAR NOT NULL DEFAULT 'IDLE',
            uuid VARCHAR,
            name VARCHAR,
            memory_total_mib BIGINT,
            memory_used_mib BIGINT,
            util_gpu INTEGER,
            util_mem INTEGER,
            temp_gpu INTEGER,
            temp_mem INTEGER,
            sampled_at TIMESTAMP
        );
        CREATE TABLE versions (
            version VARCHAR PRIMARY KEY,
            supported BOOLEAN NOT NULL DEFAULT TRUE,
            latest BOOLEAN NOT NULL DEFAULT FALSE,
            path VARCHAR NOT NULL,
            query_command VARCHAR NOT NULL DEFAULT '',
            worker_command VARCHAR NOT NULL DEFAULT '',
            health_check_command VARCHAR NOT NULL DEFAULT ''
        );
        CREATE TABLE worker_env (version VARCHAR NOT NULL, name VARCHAR NOT NULL, value VARCHAR NOT NULL,
                                 position INTEGER NOT NULL);
        CREATE TABLE events (
            id BIGINT PRIMARY KEY,
            time TIMESTAMP NOT NULL,
            action VARCHAR NOT NULL,
            token VARCHAR NOT NULL DEFAULT '',
            command VARCHAR NOT NULL DEFAULT '',
            detail VARCHAR NOT NULL DEFAULT ''
        );
        CREATE TABLE jobs (
            id BIGINT PRIMARY KEY,
            token VARCHAR NOT NULL,
            sda_id INTEGER NOT NULL,
            priority INTEGER NOT NULL,
            status VARCHAR NOT NULL,
            host VARCHAR NOT NULL DEFAULT '',
            pid INTEGER,
            pid_create_time DOUBLE,
            launcher_pid INTEGER,
            launcher_create_time DOUBLE,
            process_name VARCHAR NOT NULL DEFAULT '',
            client_version VARCHAR NOT NULL DEFAULT '',
            device_count INTEGER NOT NULL,
            request_time TIMESTAMP NOT NULL,
            submit_time TIMESTAMP,
            start_time TIMESTAMP,
            release_requested BOOLEAN NOT NULL DEFAULT FALSE
        );
        CREATE TABLE job_devices (
            job_id BIGINT NOT NULL, backend_id INTEGER NOT NULL, device_index INTEGER NOT NULL,
            PRIMARY KEY (backend_id, device_index)
        );
        CREATE TABLE job_processes (
            job_id BIGINT NOT NULL, pid INTEGER NOT NULL, name VARCHAR NOT NULL, memory_mib BIGINT NOT NULL,
            backend_id INTEGER, device_index INTEGER
        );
        CREATE TABLE job_history (
            id BIGINT PRIMARY KEY,
            token VARCHAR NOT NULL,
            sda_id INTEGER NOT NULL,
            priority INTEGER NOT NULL,
            host VARCHAR NOT NULL DEFAULT '',
            pid INTEGER,
            process_name VARCHAR NOT NULL DEFAULT '',
            client_version VARCHAR NOT NULL DEFAULT '',
            device_count INTEGER NOT NULL,
            devices VARCHAR NOT NULL DEFAULT '',
            request_time TIMESTAMP NOT NULL,
            start_time TIMESTAMP,
            end_time TIMESTAMP NOT NULL,
            exit_code INTEGER,
            end_reason VARCHAR NOT NULL
        );
        CREATE TABLE device_usage (
            job_id BIGINT NOT NULL, token VARCHAR NOT NULL, backend_id INTEGER NOT NULL,
            device_index INTEGER NOT NULL, start_time TIMESTAMP NOT NULL, end_time TIMESTAMP NOT NULL
        );
        CREATE INDEX idx_sdas_token ON sdas(token);
        CREATE INDEX idx_devices_backend ON devices(backend_id);
        CREATE INDEX idx_jobs_token ON jobs(token);
        CREATE INDEX idx_history_token ON job_history(token);
        """
    )
    conn.execute("INSERT INTO meta VALUES ('app', 'moreh-tools')")
    conn.execute("INSERT INTO backend_groups VALUES (0, ?)", [DEFAULT_BACKEND_GROUP])
    conn.executemany("INSERT INTO sda_models VALUES (?, ?, ?)", [list(m) for m in SEED_MODELS])


def m002_api(conn: Connection) -> None:
    """The REST API's tables: portal sign-in users, IPMI addresses of backends, a GPU sample history."""
    conn.execute(
        """
        CREATE SEQUENCE seq_user START 1;
        CREATE TABLE users (
            id VARCHAR PRIMARY KEY,
            n_id INTEGER NOT NULL,
            name VARCHAR NOT NULL,
            salt VARCHAR NOT NULL,
            password_hash VARCHAR NOT NULL,
            question VARCHAR NOT NULL,
            answer_hash VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL,
            updated_at TIMESTAMP NOT NULL
        );
        CREATE TABLE backend_ipmi (backend_id INTEGER PRIMARY KEY, ip VARCHAR NOT NULL, status INTEGER NOT NULL);
        CREATE TABLE device_samples (
            t DOUBLE NOT NULL,
            backend_id INTEGER NOT NULL,
            idx INTEGER NOT NULL,
            memory_total_mib BIGINT,
            memory_used_mib BIGINT,
            util_gpu INTEGER,
            util_mem INTEGER,
            temp_gpu INTEGER,
            temp_mem INTEGER
        );
        CREATE INDEX idx_device_samples_t ON device_samples(t);
        """
    )


def m003_model_descriptions(conn: Connection) -> None:
    """The description (``desc``) the REST API gives an SDA model."""
    conn.execute("CREATE TABLE sda_model_info (model_id INTEGER PRIMARY KEY, description VARCHAR NOT NULL)")


def m004_event_origin(conn: Connection) -> None:
    """Who asked for each change: the peer's Unix uid and the way in (``uid=1000 socket``)."""
    conn.execute("ALTER TABLE events ADD COLUMN origin VARCHAR NOT NULL DEFAULT ''")


def m005_host_identity(conn: Connection) -> None:
    """Hosts known by their machine id (not their editable name), when each last reported, and per job: the
    backend it runs on, its guardian, and who asked it to stop."""
    # DuckDB alters no table that an index depends on: drop the indexes, alter, index again.
    conn.execute(
        """
        DROP INDEX idx_jobs_token;
        DROP INDEX idx_history_token;
        ALTER TABLE backends ADD COLUMN machine_id VARCHAR;
        ALTER TABLE backends ADD COLUMN last_seen TIMESTAMP;
        ALTER TABLE backends ADD COLUMN unreachable BOOLEAN NOT NULL DEFAULT FALSE;
        ALTER TABLE jobs ADD COLUMN backend_id INTEGER;
        ALTER TABLE jobs ADD COLUMN guardian_pid INTEGER;
        ALTER TABLE jobs ADD COLUMN guardian_create_time DOUBLE;
        ALTER TABLE jobs ADD COLUMN release_detail VARCHAR NOT NULL DEFAULT '';
        ALTER TABLE job_history ADD COLUMN end_detail VARCHAR NOT NULL DEFAULT '';
        CREATE INDEX idx_jobs_token ON jobs(token);
        CREATE INDEX idx_history_token ON job_history(token);
        """
    )
    # Jobs queued before this version name their host only; tie them to the backend of that name.
    conn.execute("UPDATE jobs SET backend_id = b.id FROM backends b WHERE b.host = jobs.host")


def m006_time_limits_and_backfill_plan(conn: Connection) -> None:
    """Job time limits (a default and a maximum per token and per SDA model, each job's own limit) and the
    backfill plan of the last applied scheduling pass (each planned job's start and devices)."""
    conn.execute(
        """
        CREATE TABLE token_time_limits (token VARCHAR PRIMARY KEY, default_s DOUBLE, max_s DOUBLE);
        CREATE TABLE model_time_limits (model_id INTEGER PRIMARY KEY, default_s DOUBLE, max_s DOUBLE);
        CREATE TABLE scheduler_plan (
            job_id BIGINT NOT NULL, start_time DOUBLE NOT NULL, backend_id INTEGER NOT NULL, device_index INTEGER NOT NULL
        );
        DROP INDEX idx_jobs_token;
        DROP INDEX idx_history_token;
        ALTER TABLE jobs ADD COLUMN time_limit DOUBLE;
        ALTER TABLE job_history ADD COLUMN time_limit DOUBLE;
        CREATE INDEX idx_jobs_token ON jobs(token);
        CREATE INDEX idx_history_token ON job_history(token);
        """
    )


def m007_group_quotas_and_fair_share(conn: Connection) -> None:
    """GPU quotas per user group and backend group, temporary quota requests, decayed usage per user group, and
    per job: the group it is charged to, whether it borrowed, and whether it is being preempted."""
    conn.execute(
        """
        CREATE SEQUENCE seq_quota_request START 1;
        CREATE TABLE group_quotas (
            user_group_id INTEGER NOT NULL, backend_group_id INTEGER NOT NULL, nominal INTEGER NOT NULL,
            borrow INTEGER NOT NULL, PRIMARY KEY (user_group_id, backend_group_id)
        );
        CREATE TABLE quota_requests (
            id BIGINT PRIMARY KEY,
            token VARCHAR NOT NULL,
            user_group_id INTEGER NOT NULL,
            backend_group_id INTEGER NOT NULL,
            gpus INTEGER NOT NULL,
            days INTEGER NOT NULL,
            reason VARCHAR NOT NULL,
            status VARCHAR NOT NULL,
            requested_at DOUBLE NOT NULL,
            decided_at DOUBLE,
            expires_at DOUBLE
        );
        CREATE TABLE fairshare_usage (user_group_id INTEGER PRIMARY KEY, usage DOUBLE NOT NULL, updated_at DOUBLE NOT NULL);
        DROP INDEX idx_jobs_token;
        ALTER TABLE jobs ADD COLUMN charged_group INTEGER;
        ALTER TABLE jobs ADD COLUMN fairshare_group INTEGER;
        ALTER TABLE jobs ADD COLUMN borrowed BOOLEAN NOT NULL DEFAULT FALSE;
        ALTER TABLE jobs ADD COLUMN preempting BOOLEAN NOT NULL DEFAULT FALSE;
        ALTER TABLE jobs ADD COLUMN preempted_for BIGINT;
        ALTER TABLE jobs ADD COLUMN preempt_time DOUBLE;
        CREATE INDEX idx_jobs_token ON jobs(token);
        """
    )


def m008_gpu_guardian(conn: Connection) -> None:
    """The GPU guardian: why devices are out of use (failed GPUs, processes outside the scheduler, NVML failing on a
    host), idle policies per token or SDA model, each running job's idle bookkeeping, and the notices a job's
    launcher prints. New tables only: the UNHEALTHY status lives in ``devices.status``."""
    conn.execute(
        """
        CREATE TABLE device_flags (
            backend_id INTEGER NOT NULL,
            idx INTEGER,
            kind VARCHAR NOT NULL,
            cause VARCHAR NOT NULL,
            pid INTEGER,
            user_name VARCHAR,
            memory_mib BIGINT,
            job_id BIGINT,
            device_job BIGINT,
            since TIMESTAMP NOT NULL,
            seen_at TIMESTAMP NOT NULL
        );
        CREATE TABLE idle_policies (
            scope VARCHAR NOT NULL,
            target VARCHAR NOT NULL,
            util_percent DOUBLE NOT NULL,
            memory_mib DOUBLE NOT NULL,
            window_s DOUBLE NOT NULL,
            grace_s DOUBLE NOT NULL,
            updated_at TIMESTAMP NOT NULL,
            PRIMARY KEY (scope, target)
        );
        CREATE TABLE job_idle (
            job_id BIGINT PRIMARY KEY,
            idle_since DOUBLE,
            warned BOOLEAN NOT NULL DEFAULT FALSE,
            seconds_left DOUBLE,
            reclaimed BOOLEAN NOT NULL DEFAULT FALSE,
            notified_at DOUBLE,
            checked_at DOUBLE
        );
        CREATE SEQUENCE seq_job_notice START 1;
        CREATE TABLE job_notices (
            id BIGINT PRIMARY KEY, job_id BIGINT NOT NULL, time TIMESTAMP NOT NULL, text VARCHAR NOT NULL
        );
        """
    )


def m009_job_containment(conn: Connection) -> None:
    """How each job's processes are contained (cgroups, or the process-group fallback), as its launcher said."""
    conn.execute("CREATE TABLE job_containment (job_id INTEGER PRIMARY KEY, description VARCHAR NOT NULL)")


MIGRATIONS: tuple[Callable[[Connection], None], ...] = (
    m001_initial,
    m002_api,
    m003_model_descriptions,
    m004_event_origin,
    m005_host_identity,
    m006_time_limits_and_backfill_plan,
    m007_group_quotas_and_fair_share,
    m008_gpu_guardian,
    m009_job_containment,
)
LATEST_VERSION = len(MIGRATIONS)


def _table_names(conn: Connection) -> set[str]:
    rows = conn.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'").fetchall()
    return {r[0] for r in rows}


def is_latest(conn: Connection) -> bool:
    """Whether the file is a moreh-tools state already at ``LATEST_VERSION``: one cheap query.

    False means "not known to be": :func:`current_version` then sorts new, old and foreign files apart.
    """
    try:
        row = conn.execute(
            "SELECT (SELECT max(version) FROM schema_migrations), (SELECT count(*) FROM meta WHERE key = 'app')"
        ).fetchone()
    except Exception:  # a missing table: a new or foreign file
        return False
    return row is not None and row[0] == LATEST_VERSION and row[1] == 1


def current_version(conn: Connection) -> int:
    """Return the applied schema version: 0 for an empty file; raise for a foreign database."""
    tables = _table_names(conn)
    if not tables:
        return 0
    if "schema_migrations" not in tables or "meta" not in tables:
        raise StateUnavailableError(
            "The state file holds tables that moreh-tools did not create (a foreign DuckDB file); "
            "point MOREH_HOME at another directory or move the file away."
        )
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return int(row[0]) if row else 0


def migrate(conn: Connection) -> None:
    """Apply every migration newer than the file's version, all in one transaction."""
    version = current_version(conn)
    conn.execute("BEGIN TRANSACTION")
    try:
        if version == 0:
            conn.execute(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR, applied_at TIMESTAMP)"
            )
        for number, migration in enumerate(MIGRATIONS, start=1):
            if number <= version:
                continue
            migration(conn)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?, now())", [number, migration.__name__])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
