//! The `airlock` binary: `serve`, `migrate`, `keys`, `events`, `dlq`, `trace` (CONTRACT §1).
//! Exit codes: 0 success, 1 a failure the user caused, 2 usage, 3 an internal error.

use std::path::PathBuf;
use std::process::ExitCode;

use airlock::app::{self, Role};
use airlock::config::Settings;
use airlock_events::{CancellationToken, Catalog, EventQuery};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "airlock", version, about = "A self-hosted, event-driven file-upload pipeline.")]
struct Cli {
    /// A TOML settings file (also AIRLOCK_CONFIG).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API and/or the workers (migrates the database first).
    Serve {
        #[arg(long, value_enum, default_value = "all")]
        role: Role,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The event catalog.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Dead letters.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Print a file's or a correlation's event chain as a tree, with failed and pending deliveries.
    Trace { id: String },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key (printed once; stored hashed).
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// Revoke a key by id.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Every event type: version, visibility, description.
    List,
    /// One type's JSON Schema (`file.promoted` or `file.promoted.v1`).
    Show { event_type: String },
    /// Exit 1 if this catalog breaks the one in DIR (removed types or fields, retyped fields,
    /// new required fields).
    Check {
        #[arg(long)]
        against: PathBuf,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Dead letters, newest first.
    List {
        #[arg(long)]
        subscription: Option<String>,
    },
    /// Send one dead letter (or all) back for new attempts.
    Redrive {
        id: Option<i64>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
        #[arg(long)]
        subscription: Option<String>,
    },
    /// Discard one dead letter.
    Discard { id: i64 },
}

/// A failure the user caused (exit 1), as opposed to an internal one (exit 3).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UserError(String);

fn user(msg: impl Into<String>) -> anyhow::Error {
    UserError(msg.into()).into()
}

fn init_tracing(settings: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.log).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    if settings.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// glibc hands blocks of 128 KiB and up back to the kernel when they are freed (and only raises
/// that threshold slowly), so the buffers of a streamed upload come back as fresh pages to fault
/// in and zero, over and over: a quarter of the CPU of a large PUT. Blocks up to 32 MiB stay in
/// the heap for reuse instead; the server's peak memory in use bounds what is retained.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only sets allocator parameters; it runs before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
        libc::mallopt(libc::M_TOP_PAD, 16 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    // One TLS crypto provider for every client (webhooks): ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<UserError>().is_some() || e.downcast_ref::<airlock::config::ConfigError>().is_some() {
                ExitCode::from(1)
            } else {
                ExitCode::from(3)
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Events { command } = &cli.command {
        return events(command);
    }
    let settings = Settings::load(cli.config.as_deref())?;
    init_tracing(&settings);
    match cli.command {
        Command::Serve { role } => serve(settings, role).await,
        Command::Migrate => {
            app::open(settings).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Keys { command } => {
            let app = app::open(settings).await?;
            match command {
                KeysCommand::Create { tenant, name } => {
                    let (id, key) = airlock::auth::create_key(app.bus.pool(), &tenant, name.as_deref()).await.map_err(|e| user(e.to_string()))?;
                    eprintln!("key id {id} for tenant {tenant} (shown once; store it now)");
                    println!("{key}");
                }
                KeysCommand::Revoke { id } => {
                    if !airlock::auth::revoke_key(app.bus.pool(), &id).await? {
                        return Err(user(format!("no active key with id {id}")));
                    }
                    println!("revoked {id}");
                }
            }
            Ok(())
        }
        Command::Dlq { command } => dlq(settings, command).await,
        Command::Trace { id } => trace(settings, &id).await,
        Command::Events { .. } => Ok(()),
    }
}

async fn serve(settings: Settings, role: Role) -> anyhow::Result<()> {
    let listen = settings.listen.clone();
    let app = app::open(settings).await?;
    let listener = if role == Role::Worker {
        None
    } else {
        Some(tokio::net::TcpListener::bind(&listen).await.map_err(|e| anyhow::anyhow!("listening on {listen}: {e}"))?)
    };
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    stop.cancel();
                    return;
                }
            };
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("Shutting down.");
        stop.cancel();
    });
    if let Some(l) = &listener {
        tracing::info!(address = %l.local_addr()?, public_url = %app.settings.public_url, storage = %app.blobs.describe(), role = ?role, "Airlock is serving.");
    } else {
        tracing::info!(role = ?role, "Airlock workers are running.");
    }
    app::run(app, listener, role, shutdown).await
}

fn events(command: &EventsCommand) -> anyhow::Result<()> {
    let catalog = Catalog::builtin()?;
    match command {
        EventsCommand::List => {
            for t in catalog.types() {
                let vis = if t.visibility == airlock_events::Visibility::Public { "public" } else { "internal" };
                println!("{:<32} {:<9} {}", t.versioned(), vis, t.description);
            }
        }
        EventsCommand::Show { event_type } => {
            let t = catalog.find(event_type).ok_or_else(|| user(format!("unknown event type `{event_type}` (see `airlock events list`)")))?;
            println!("{}", serde_json::to_string_pretty(&t.schema)?);
        }
        EventsCommand::Check { against } => {
            let old = Catalog::from_dir(against).map_err(|e| user(e.to_string()))?;
            let problems = catalog.breaking_changes_since(&old);
            if problems.is_empty() {
                println!("compatible: no breaking change against {}", against.display());
            } else {
                for p in &problems {
                    println!("BREAKING {p}");
                }
                return Err(user(format!("{} breaking change(s) against {}", problems.len(), against.display())));
            }
        }
    }
    Ok(())
}

async fn dlq(settings: Settings, command: DlqCommand) -> anyhow::Result<()> {
    let app = app::open(settings).await?;
    match command {
        DlqCommand::List { subscription } => {
            let letters = app.bus.dead_letters(subscription.as_deref(), 1000).await?;
            if letters.is_empty() {
                println!("no dead letters");
            }
            for d in letters {
                println!(
                    "{:<8} {:<28} {:<28} {:<38} attempts={} failed_at={} error={}",
                    d.id,
                    d.subscription,
                    format!("{}.v{}", d.event_type, d.event_version),
                    d.subject,
                    d.attempts,
                    airlock_events::envelope::format_rfc3339(d.failed_at),
                    d.last_error.unwrap_or_default()
                );
            }
        }
        DlqCommand::Redrive { id: Some(id), .. } => {
            if !app.bus.redrive(id).await? {
                return Err(user(format!("no dead letter {id}")));
            }
            println!("redriven {id}");
        }
        DlqCommand::Redrive { id: None, all: true, subscription } => {
            println!("redriven {}", app.bus.redrive_all(subscription.as_deref()).await?);
        }
        DlqCommand::Redrive { .. } => return Err(user("give a dead letter id or --all")),
        DlqCommand::Discard { id } => {
            if !app.bus.discard(id).await? {
                return Err(user(format!("no dead letter {id}")));
            }
            println!("discarded {id}");
        }
    }
    Ok(())
}

async fn trace(settings: Settings, id: &str) -> anyhow::Result<()> {
    let app = app::open(settings).await?;
    let mut q = EventQuery { limit: 10_000, ..Default::default() };
    let is_file = match uuid::Uuid::parse_str(id) {
        Ok(u) => airlock::files::get(app.bus.pool(), u).await?.is_some(),
        Err(_) => false,
    };
    if is_file {
        q.subject = Some(id.to_owned());
    } else {
        q.correlation_id = Some(id.to_owned());
    }
    let events = app.bus.events(&q).await?;
    if events.is_empty() {
        return Err(user(format!("no events for file or correlation id `{id}`")));
    }
    let ids: Vec<uuid::Uuid> = events.iter().map(|e| e.envelope.event_id).collect();
    let deliveries = app.bus.deliveries_of(&ids).await?;
    print!("{}", airlock::trace::render(&events, &deliveries));
    Ok(())
}
