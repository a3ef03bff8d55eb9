//! The HTTP accept loop: HTTP/1.1 and HTTP/2 (h2c or over TLS) on one
//! listener, with limits a server facing the internet needs and that
//! `axum::serve` does not set: a client gets a limited time to send a
//! request's headers (slow-header clients cannot hold connections open
//! forever; it also closes HTTP/1 keep-alive connections idle that long,
//! so clients should pool idle connections for less, as the agent does),
//! and idle HTTP/2 connections are pinged. Graceful shutdown stops
//! accepting, lets requests in flight finish, then returns.

use crate::api::ClientAddr;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tower::ServiceExt;

/// Default time a client has to send a request's headers, counted from
/// when the server starts reading them (a new or idle keep-alive connection).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 keep-alive ping interval, and how long a ping may go unanswered.
const H2_KEEP_ALIVE: (Duration, Duration) = (Duration::from_secs(60), Duration::from_secs(20));

/// Something that yields accepted connections and their peer addresses.
pub trait Accept: Send + 'static {
    /// The connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Waits for the next connection.
    fn accept(&mut self) -> impl std::future::Future<Output = (Self::Io, SocketAddr)> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        axum::serve::Listener::accept(self).await
    }
}

impl Accept for crate::tls::TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        axum::serve::Listener::accept(self).await
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then waits for
/// open connections to finish their requests.
pub async fn serve<L: Accept>(
    mut listener: L,
    app: axum::Router,
    header_read_timeout: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    // Closed (dropped) when shutdown begins; every connection watches it.
    let (signal_tx, signal_rx) = watch::channel(());
    // Held by every connection: all gone once `closed` resolves.
    let (close_tx, close_rx) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, addr) = tokio::select! {
            conn = listener.accept() => conn,
            () = &mut shutdown => break,
        };
        let service = app
            .clone()
            .map_request(move |mut req: axum::http::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(ClientAddr(addr)));
                req.map(axum::body::Body::new)
            });
        let mut signal = signal_rx.clone();
        let close = close_rx.clone();
        tokio::spawn(async move {
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(H2_KEEP_ALIVE.0)
                .keep_alive_timeout(H2_KEEP_ALIVE.1);
            let hyper_service = TowerToHyperService::new(service);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), hyper_service);
            let mut conn = std::pin::pin!(conn);
            let mut draining = false;
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(peer = %addr, "connection ended: {e}");
                        }
                        break;
                    }
                    _ = signal.changed(), if !draining => {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(close);
        });
    }
    drop(signal_tx);
    drop(close_rx);
    close_tx.closed().await;
}
