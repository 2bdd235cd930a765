//! A minimal HTTP/1.1 server for `/metrics`: GET or HEAD only, one request
//! per connection, bounded request size, time limits and a cap on open
//! connections. Snapshots are taken on a blocking thread and shared for a
//! second, so that scrapers cannot load the manager (and with it the data
//! path and the D-Bus API) more than once a second.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{Mutex, Semaphore},
};

use super::{
    encode::{encode, Format},
    snapshot::{MetricsSnapshot, Source},
};

/// Requests larger than this (line plus headers) are refused.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 8;
/// For reading the request, and again for writing the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// A snapshot younger than this is reused.
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// Takes (and caches) snapshots and encodes them.
pub struct Exporter {
    source: Arc<dyn Source>,
    cache: Mutex<Option<(Instant, Arc<MetricsSnapshot>)>>,
}

impl Exporter {
    pub fn new(source: Arc<dyn Source>) -> Arc<Exporter> {
        Arc::new(Exporter { source, cache: Mutex::new(None) })
    }

    /// A snapshot at most `MAX_AGE` old; concurrent callers share one.
    pub async fn snapshot(&self) -> Arc<MetricsSnapshot> {
        let mut cache = self.cache.lock().await;
        if let Some((at, s)) = cache.as_ref().filter(|(at, _)| at.elapsed() < MAX_AGE).map(|(a, s)| (*a, s.clone())) {
            tracing::trace!(age = ?at.elapsed(), "metrics snapshot reused");
            return s;
        }
        let source = self.source.clone();
        // The source takes the manager's lock: never on an async thread.
        let fresh = match tokio::task::spawn_blocking(move || source.snapshot()).await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::error!(error = %e, "metrics snapshot failed");
                Arc::new(MetricsSnapshot::default())
            }
        };
        *cache = Some((Instant::now(), fresh.clone()));
        fresh
    }

    /// The exposition in `format`, encoded on a blocking thread (1,000
    /// throttles take milliseconds).
    pub async fn render(&self, format: Format) -> String {
        let snapshot = self.snapshot().await;
        tokio::task::spawn_blocking(move || encode(&snapshot, format)).await.unwrap_or_default()
    }
}

/// Serves until the task is aborted.
pub async fn serve(listener: TcpListener, exporter: Arc<Exporter>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, most likely: wait instead of spinning.
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics: too many connections; closed");
            continue;
        };
        let exporter = exporter.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &exporter).await {
                tracing::debug!(%peer, error = %e, "metrics: connection ended");
            }
            drop(slot);
        });
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Metrics { format: Format, head: bool },
    NotFound,
    BadMethod,
    Bad,
}

async fn handle(mut stream: TcpStream, exporter: &Exporter) -> std::io::Result<()> {
    let head = match tokio::time::timeout(IO_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(h))) => h,
        Ok(Ok(None)) => {
            return respond(&mut stream, "431 Request Header Fields Too Large", "text/plain", b"", false).await
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => return Ok(()),
    };
    match parse(&head) {
        Request::Metrics { format, head } => {
            let body = exporter.render(format).await;
            respond(&mut stream, "200 OK", format.content_type(), body.as_bytes(), head).await
        }
        Request::NotFound => respond(&mut stream, "404 Not Found", "text/plain", b"not found\n", false).await,
        Request::BadMethod => respond(&mut stream, "405 Method Not Allowed", "text/plain", b"", false).await,
        Request::Bad => respond(&mut stream, "400 Bad Request", "text/plain", b"", false).await,
    }
}

/// The request line and headers; `None` when they exceed `MAX_REQUEST`.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            break;
        }
        if buf.len() > MAX_REQUEST {
            return Ok(None);
        }
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// Reads the request line and the Accept header.
pub fn parse(head: &str) -> Request {
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let (Some(method), Some(target), Some(version)) = (first.next(), first.next(), first.next()) else {
        return Request::Bad;
    };
    if !version.starts_with("HTTP/1.") {
        return Request::Bad;
    }
    let path = target.split('?').next().unwrap_or("");
    if path != "/metrics" {
        return Request::NotFound;
    }
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Request::BadMethod,
    };
    let accept = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("accept"))
        .map(|(_, v)| v.trim());
    Request::Metrics { format: Format::negotiate(accept), head }
}

async fn respond(stream: &mut TcpStream, status: &str, ctype: &str, body: &[u8], head: bool) -> std::io::Result<()> {
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(header.as_bytes()).await?;
        if !head {
            stream.write_all(body).await?;
        }
        stream.shutdown().await
    };
    tokio::time::timeout(IO_TIMEOUT, write).await.unwrap_or(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_negotiates() {
        let om = "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n\r\n";
        assert_eq!(parse(om), Request::Metrics { format: Format::OpenMetrics, head: false });
        let plain = "GET /metrics?x=1 HTTP/1.0\r\n\r\n";
        assert_eq!(parse(plain), Request::Metrics { format: Format::Prometheus, head: false });
        assert_eq!(
            parse("HEAD /metrics HTTP/1.1\r\n\r\n"),
            Request::Metrics { format: Format::Prometheus, head: true }
        );
        assert_eq!(parse("GET / HTTP/1.1\r\n\r\n"), Request::NotFound);
        assert_eq!(parse("POST /metrics HTTP/1.1\r\n\r\n"), Request::BadMethod);
        assert_eq!(parse("GET /metrics\r\n\r\n"), Request::Bad);
        assert_eq!(parse(""), Request::Bad);
    }
}
