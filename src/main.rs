use clap::Parser;

// glibc's allocator kept hundreds of MiB of freed request buffers resident
// under load (seen with the load generator); mimalloc returns them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use bedrock::config::{Cli, Command, LogFormat};

/// Turns off transparent huge pages for this process. mimalloc requests them,
/// and a 2 MiB page that is partly used stays resident whole: after 4.4
/// million spans of harness load, 580 MiB of the server's 980 MiB RSS were
/// huge pages.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes integer arguments and touches no memory of ours.
        let result = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if result != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "could not turn off transparent huge pages");
        }
    }
}

/// Has mimalloc return freed pages to the system at once rather than 1 s
/// later, its default, unless `MIMALLOC_PURGE_DELAY` sets another delay.
/// Under harness load the server frees request and flush buffers on every
/// thread all the time. With the 1 s delay, the pages freed in the last
/// second stayed resident: 484 to 517 MiB up to 3.5 million rows, against
/// 205 to 374 MiB with no delay. A 100 ms delay still reached 538 MiB on the
/// way to 10 million spans, over the 512 MiB the harness may use.
///
/// The delay costs OTLP ingest, whose flushes grow large buffers and fault
/// their pages in again: 55,676 spans/s with no delay against 72,532 at
/// 100 ms (BENCHMARKS.md). Deployments that take mostly OTLP may set
/// `MIMALLOC_PURGE_DELAY=100`.
fn purge_freed_memory_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // mimalloc.h numbers `mi_option_purge_delay` 15 in v2 and v3. The -sys
    // crate has no constant for it.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: mi_option_set only stores the value of a valid option.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 0) };
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(settings) => {
            bedrock::init_logging(settings.log_format, &settings.log);
            disable_transparent_huge_pages();
            purge_freed_memory_at_once();
            serve(settings).await
        }
        Command::Migrate(storage) => {
            bedrock::init_logging(LogFormat::Text, "info");
            bedrock::open_control_plane(&storage).await.map(|_| tracing::info!("migrations applied"))
        }
        Command::MakeAdmin { email, revoke, storage } => {
            bedrock::init_logging(LogFormat::Text, "info");
            make_admin(&storage, &email, !revoke).await
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bedrock: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(settings: bedrock::config::ServeSettings) -> anyhow::Result<()> {
    let server = bedrock::Server::bind(settings).await?;
    tracing::info!(address = %server.local_addr()?, "bedrock listening");
    server.run(bedrock::shutdown_signal()).await
}

async fn make_admin(storage: &bedrock::config::StorageSettings, email: &str, grant: bool) -> anyhow::Result<()> {
    let control = bedrock::open_control_plane(storage).await?;
    control
        .set_admin(&email.trim().to_lowercase(), grant)
        .await
        .map_err(|err| anyhow::anyhow!("could not update {email}: {err}"))?;
    tracing::info!(email, is_admin = grant, "administrator flag updated");
    Ok(())
}
