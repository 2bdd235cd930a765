//! The Prometheus/OpenMetrics exporter: `/metrics` over HTTP
//! (`[metrics] listen`) and a textfile for node_exporter
//! (`[metrics] textfile`). It reads a `MetricsSnapshot` the daemon fills
//! (`adapter.rs` from the manager, `CallStats` from the D-Bus layer) and
//! never touches the kernel.
pub mod adapter;
pub mod calls;
pub mod encode;
pub mod server;
pub mod snapshot;
pub mod textfile;

use std::{net::SocketAddr, sync::Arc};

pub use self::{
    calls::CallStats,
    encode::{encode, Format},
    server::Exporter,
    snapshot::*,
};
use crate::config::MetricsConfig;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics: cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

/// The exporter's tasks; they end when this is dropped.
#[derive(Debug, Default)]
pub struct Running {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Where `/metrics` is served (the bound port when 0 was asked for).
    pub local_addr: Option<SocketAddr>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts what `cfg` asks for (nothing when both are off).
pub async fn start(cfg: &MetricsConfig, source: Arc<dyn Source>) -> Result<Running, MetricsError> {
    let exporter = Exporter::new(source);
    let mut running = Running::default();
    if let Some(addr) = cfg.listen {
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|source| MetricsError::Listen { addr, source })?;
        running.local_addr = listener.local_addr().ok();
        tracing::info!(addr = %running.local_addr.unwrap_or(addr), "serving metrics");
        running.tasks.push(tokio::spawn(server::serve(listener, exporter.clone())));
    }
    if let Some(path) = &cfg.textfile {
        tracing::info!(path = %path.display(), "writing metrics textfile");
        running.tasks.push(tokio::spawn(textfile::run(path.clone(), cfg.textfile_interval, exporter)));
    }
    Ok(running)
}
