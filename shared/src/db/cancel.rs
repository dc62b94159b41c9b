//! Cancel requests that wait for the server to close their connection, as libpq's do.
//!
//! tokio-postgres's `CancelToken::cancel_query` shuts its connection down as soon as the
//! request is written. PgBouncer before 1.20 then frees the cancel's client while the server
//! connection carrying the cancel still points at it, and exits on the next event
//! (`FATAL … disconnect_client(): bad client state: 0`, pgbouncer#801, fixed by #846),
//! dropping every connection it holds: a statement that ran past its deadline took the
//! pooler down with it. Keeping the connection open until the server closes it (which it
//! does once the cancel is processed) is what libpq's `PQcancel` does, and what every
//! PgBouncer expects.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_postgres::config::Host;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::CancelToken;
use tokio_postgres_rustls::MakeRustlsConnect;

/// Where cancel requests go: the URL's one TCP host, when it has one address. With several
/// hosts or addresses (only tokio-postgres knows which one a connection reached: a cancel
/// sent to another server is lost) or a Unix socket, cancels go through `cancel_query` as
/// they are, which PgBouncer before 1.20 does not survive.
#[derive(Debug, Clone)]
pub(super) struct CancelTarget {
    /// The name TLS verifies.
    host: String,
    /// What to connect to: `hostaddr` when the URL gives one, else the host.
    connect_to: String,
    port: u16,
}

impl CancelTarget {
    pub(super) fn of(config: &tokio_postgres::Config) -> Option<CancelTarget> {
        let [Host::Tcp(host)] = config.get_hosts() else {
            return None;
        };
        let port = match config.get_ports() {
            [] => 5432,
            [port] => *port,
            _ => return None,
        };
        let connect_to = match config.get_hostaddrs() {
            [] => host.clone(),
            [addr] => match addr {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => v6.to_string(),
            },
            _ => return None,
        };
        Some(CancelTarget {
            host: host.clone(),
            connect_to,
            port,
        })
    }
}

/// Sends `token`'s cancel request and keeps its connection open until the server closes
/// it, at most `linger` after the request is sent; the whole at most `connect_timeout` +
/// 2 × `linger`. Errors are not reported: the caller waits for the call's own answer anyway.
pub(super) async fn cancel(
    token: CancelToken,
    mut tls: MakeRustlsConnect,
    target: Option<CancelTarget>,
    connect_timeout: Duration,
    linger: Duration,
) {
    let address = match &target {
        Some(target) => one_address(target, connect_timeout).await,
        None => None,
    };
    let (Some(target), Some(address)) = (target, address) else {
        let _ = tokio::time::timeout(connect_timeout + linger, token.cancel_query(tls)).await;
        return;
    };
    let send = async {
        let tcp = tokio::time::timeout(connect_timeout, TcpStream::connect(address))
            .await
            .ok()?
            .ok()?;
        let _ = tcp.set_nodelay(true);
        let (stream, returned) = KeepOpen::new(tcp);
        let connect =
            match MakeTlsConnect::<KeepOpen<TcpStream>>::make_tls_connect(&mut tls, &target.host) {
                Ok(connect) => connect,
                Err(never) => match never {},
            };
        token.cancel_query_raw(stream, connect).await.ok()?;
        returned.await.ok()
    };
    let Ok(Some(mut tcp)) = tokio::time::timeout(connect_timeout + linger, send).await else {
        return;
    };
    // The server closes the connection once it has processed the request.
    let mut buf = [0u8; 256];
    let _ = tokio::time::timeout(linger, async {
        while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// The target's address when its name has exactly one (an IP address has one).
async fn one_address(target: &CancelTarget, timeout: Duration) -> Option<SocketAddr> {
    let lookup = tokio::net::lookup_host((target.connect_to.as_str(), target.port));
    let mut addresses = tokio::time::timeout(timeout, lookup).await.ok()?.ok()?;
    let first = addresses.next()?;
    addresses.all(|other| other == first).then_some(first)
}

/// A stream whose shutdown only flushes, and which hands its inner stream back when
/// dropped, so that the connection outlives `cancel_query_raw`.
struct KeepOpen<S> {
    stream: Option<S>,
    back: Option<oneshot::Sender<S>>,
}

impl<S> KeepOpen<S> {
    fn new(stream: S) -> (Self, oneshot::Receiver<S>) {
        let (back, returned) = oneshot::channel();
        let keep = KeepOpen {
            stream: Some(stream),
            back: Some(back),
        };
        (keep, returned)
    }

    fn inner(&mut self) -> &mut S {
        self.stream.as_mut().expect("taken only on drop")
    }
}

impl<S> Drop for KeepOpen<S> {
    fn drop(&mut self) {
        if let (Some(stream), Some(back)) = (self.stream.take(), self.back.take()) {
            let _ = back.send(stream);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for KeepOpen<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.inner()).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for KeepOpen<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.inner()).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.inner()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.inner()).poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Option<(String, String, u16)> {
        CancelTarget::of(&url.parse().unwrap()).map(|t| (t.host, t.connect_to, t.port))
    }

    #[test]
    fn cancels_go_to_the_urls_one_tcp_host() {
        assert_eq!(
            target("postgres://u@ep-x-pooler.neon.tech/db?sslmode=require"),
            Some((
                "ep-x-pooler.neon.tech".into(),
                "ep-x-pooler.neon.tech".into(),
                5432
            ))
        );
        assert_eq!(
            target("postgres://u@db.example:6432/db?hostaddr=10.0.0.5"),
            Some(("db.example".into(), "10.0.0.5".into(), 6432))
        );
        assert_eq!(target("postgres://u@a,b/db"), None);
        assert_eq!(target("host=/run/postgresql user=u"), None);
    }
}
