//! The `bedrock` server: CLI, configuration, HTTP router, authentication and
//! handlers. Storage lives in `bedrock-store`, the write path in
//! `bedrock-ingest`, analytics in `bedrock-query`.

pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod crypto;
pub mod docs;
pub mod error;
pub mod extract;
pub mod time;

use std::net::SocketAddr;
use std::time::Duration;

use axum::ServiceExt;
use bedrock_store::control::ControlPlane;
use tokio::net::TcpListener;
use tower::Layer;

use crate::config::{LogFormat, ServeSettings, StorageSettings};

/// Connects to the control-plane database of the settings and migrates it.
pub async fn open_control_plane(storage: &StorageSettings) -> anyhow::Result<ControlPlane> {
    std::fs::create_dir_all(&storage.data_dir)?;
    let control = ControlPlane::connect(&storage.control_plane_url(), storage.db_max_connections).await?;
    control.migrate().await?;
    Ok(control)
}

pub fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colour codes only when a person is watching; log files stay plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// A server bound to its listener, ready to run.
pub struct Server {
    listener: TcpListener,
    state: app::AppState,
}

impl Server {
    pub async fn bind(settings: ServeSettings) -> anyhow::Result<Server> {
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(|err| anyhow::anyhow!("could not listen on {}: {err}", settings.listen))?;
        let state = app::AppState::open(settings).await?;
        Ok(Server { listener, state })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains requests and closes the stores.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let state = self.state.clone();
        let timeout = Duration::from_secs(state.settings.shutdown_timeout_seconds);
        let router = app::router(state.clone());
        let service = tower::util::MapRequestLayer::new(app::normalize_slash).layer(router);
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
        let serve = axum::serve(self.listener, ServiceExt::<axum::extract::Request>::into_make_service(service))
            .with_graceful_shutdown(async move {
                shutdown.await;
                let _ = stopped_tx.send(());
            });
        let drained = async {
            serve.await?;
            Ok::<(), std::io::Error>(())
        };
        tokio::pin!(drained);
        tokio::select! {
            result = &mut drained => result?,
            _ = async {
                let _ = stopped_rx.await;
                tokio::time::sleep(timeout).await;
            } => {
                tracing::warn!(timeout_seconds = timeout.as_secs(), "shutdown timed out waiting for requests");
            }
        }
        state.shutdown().await;
        tracing::info!("server stopped");
        Ok(())
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "could not install the SIGTERM handler");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
    tracing::info!("shutdown signal received");
}
