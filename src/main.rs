//! The `tidings` binary: parse the configuration, start logging, catch
//! SIGTERM and Ctrl-C, run the server until one arrives.

use tokio::signal::unix::{SignalKind, signal};

/// mimalloc (the default feature): glibc malloc was a fifth of the CPU
/// profile of a fan-out burst; see load-tests/results/ANALYSIS.md.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tidings::{Config, Server, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::load();
    telemetry::init_logging(config.log_format);
    // Installed before the server binds and announces itself: a SIGTERM
    // that follows the `listening on` line is always a graceful shutdown.
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = interrupt.recv() => {},
        }
    };
    let server = Server::bind(&config).await?;
    server.run(shutdown).await?;
    Ok(())
}
