//! Opening the database and applying the substrate's migrations.
//!
//! The substrate owns migration versions 1..=999; the upload domain uses 1000 and up in the
//! same `_sqlx_migrations` table (each migrator ignores the other's versions).

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use crate::EventError;

/// Opens (creating if missing) a SQLite database at `url` (`sqlite://PATH` or `sqlite::memory:`)
/// in WAL mode, with a busy timeout so writers queue instead of failing.
///
/// Durability: WAL with `synchronous = NORMAL` survives a killed process with nothing lost; a
/// power failure may lose the last transactions (use `synchronous = FULL` via the URL's
/// `?synchronous=full` for that, at a large cost per commit).
///
/// # Errors
/// A malformed URL or an unopenable file.
pub async fn open_sqlite(url: &str) -> Result<SqlitePool, EventError> {
    let mut opts = SqliteConnectOptions::from_str(url)?.create_if_missing(true).busy_timeout(Duration::from_secs(30)).foreign_keys(true);
    if !url.contains("synchronous=") {
        opts = opts.synchronous(SqliteSynchronous::Normal);
    }
    if !url.contains(":memory:") && !url.contains("mode=memory") {
        opts = opts.journal_mode(SqliteJournalMode::Wal);
        if let Some(parent) = Path::new(opts.get_filename()).parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|e| EventError::Config(format!("creating {}: {e}", parent.display())))?;
        }
    }
    // No ping before each acquire: a local file does not drop connections, and the ping would
    // add a round trip to the connection's thread to every query and transaction.
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .min_connections(1)
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(opts)
        .await?;
    Ok(pool)
}

/// The connection write transactions use, taken out of `pool` (which opens a replacement), so
/// it shares in-memory databases too. Checkpoints run beside it (see `Bus::spawn_timers`)
/// instead of inside the commit that crosses the autocheckpoint threshold, fsyncs included,
/// while holding the only write lock; its own threshold is only the backstop if they stop. A
/// larger page cache: this connection's cache stays valid between its transactions.
///
/// # Errors
/// Database failures.
pub async fn open_writer(pool: &SqlitePool) -> Result<SqliteConnection, EventError> {
    let mut conn = pool.acquire().await?.detach();
    sqlx::query("PRAGMA wal_autocheckpoint = 20000").execute(&mut conn).await?;
    sqlx::query("PRAGMA cache_size = -8192").execute(&mut conn).await?;
    Ok(conn)
}

/// A migrator of `(version, description, sql)` entries that tolerates other migrators'
/// versions in the same table.
pub fn migrator(migrations: &[(i64, &'static str, &'static str)]) -> Migrator {
    let list = migrations
        .iter()
        .map(|(v, d, sql)| Migration::new(*v, Cow::Borrowed(*d), MigrationType::Simple, sqlx::SqlSafeStr::into_sql_str(*sql), false))
        .collect();
    let mut m = Migrator::with_migrations(list);
    m.set_ignore_missing(true);
    m
}

/// Applies the substrate's own migrations.
///
/// # Errors
/// A failed or checksum-mismatched migration.
pub async fn migrate(pool: &SqlitePool) -> Result<(), EventError> {
    migrator(&[(1, "events", include_str!("../migrations/sqlite/0001_events.sql"))]).run(pool).await?;
    Ok(())
}
