//! TCP proxies in front of Postgres: one that counts round trips ("flights", the times the
//! client starts sending after having received something, or for the first time: one
//! request/response exchange is one flight however many messages it carries); one that
//! can lose the answer to a write: its commit reaches the server and takes effect, then
//! the connection dies before the client hears of it, the one failure after which a client
//! cannot know a write's outcome; and one that forgets its connections, as a NAT or Neon's
//! proxy does while a Lambda instance is frozen, without the client hearing of it.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    ToServer,
    ToClient,
}

/// Counts client→server flights across all proxied connections.
pub struct FlightCounter {
    pub port: u16,
    pub flights: Arc<AtomicUsize>,
}

impl FlightCounter {
    /// Proxies a free port on 127.0.0.1 to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> FlightCounter {
        let flights = Arc::new(AtomicUsize::new(0));
        let counter = flights.clone();
        let port = listen(upstream, move |client, server| {
            count_flights(client, server, counter.clone())
        })
        .await;
        FlightCounter { port, flights }
    }
}

/// Accepts connections on a free port of 127.0.0.1 and hands each, with a fresh connection
/// to `upstream`, to `relay` in a task of its own. Returns the port.
async fn listen<F, Fut>(upstream: String, relay: F) -> u16
where
    F: Fn(TcpStream, TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let port = crate::cluster::free_port();
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(&upstream).await else {
                continue;
            };
            tokio::spawn(relay(client, server));
        }
    });
    port
}

async fn count_flights(client: TcpStream, server: TcpStream, counter: Arc<AtomicUsize>) {
    let last = Arc::new(Mutex::new(Direction::ToClient));
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let last_up = last.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = client_read.read(&mut buf).await {
            if n == 0 {
                break;
            }
            {
                let mut last = last_up.lock().unwrap();
                if *last == Direction::ToClient {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                *last = Direction::ToServer;
            }
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = server_read.read(&mut buf).await {
        if n == 0 {
            break;
        }
        *last.lock().unwrap() = Direction::ToClient;
        if client_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

/// The start of a ReadyForQuery: the server's last word after a Sync.
const READY: &[u8] = b"Z\0\0\0\x05";
/// A Sync: the end of a message group, after which the server commits an implicit
/// transaction and answers ReadyForQuery.
const SYNC: &[u8] = b"S\0\0\0\x04";
/// An Execute of the unnamed portal, all rows: how tokio-postgres runs a statement.
const EXECUTE: &[u8] = b"E\0\0\0\x09\0\0\0\0\0";

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

pub struct CommitCutter {
    pub port: u16,
    cuts: Arc<AtomicUsize>,
}

impl CommitCutter {
    /// Proxies 127.0.0.1:`port` (a free one) to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> CommitCutter {
        let cuts = Arc::new(AtomicUsize::new(0));
        let budget = cuts.clone();
        let port = listen(upstream, move |client, server| {
            relay(client, server, budget.clone())
        })
        .await;
        CommitCutter { port, cuts }
    }

    /// The answers to the next `n` commits (on any connection) are lost.
    pub fn cut_next(&self, n: usize) {
        self.cuts.store(n, Ordering::SeqCst);
    }

    /// How many of the requested cuts are still to come.
    pub fn cuts_left(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

/// Relays both ways until a cut is due: from the first client flight that executes a
/// statement, the server's answers are swallowed (the client's messages still reach the
/// server) until the server has answered every Sync the client sent (ReadyForQuery comes
/// after the commit of an implicit transaction) and the client has been quiet for a moment;
/// then the client is hung up on without a byte of those answers.
async fn relay(client: TcpStream, server: TcpStream, cuts: Arc<AtomicUsize>) {
    let cut = Arc::new(AtomicBool::new(false));
    let syncs = Arc::new(AtomicUsize::new(0));
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let (cut_up, syncs_up) = (cut.clone(), syncs.clone());
    let upstream = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent_since_cut = Vec::new();
        while let Ok(n) = client_read.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let chunk = &buf[..n];
            if !cut_up.load(Ordering::SeqCst)
                && count(chunk, EXECUTE) > 0
                && cuts
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_sub(1))
                    .is_ok()
            {
                cut_up.store(true, Ordering::SeqCst);
            }
            if cut_up.load(Ordering::SeqCst) {
                sent_since_cut.extend_from_slice(chunk);
                syncs_up.store(count(&sent_since_cut, SYNC), Ordering::SeqCst);
            }
            if server_write.write_all(chunk).await.is_err() {
                break;
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut swallowed = Vec::new();
    while let Ok(n) = server_read.read(&mut buf).await {
        if n == 0 {
            break;
        }
        if cut.load(Ordering::SeqCst) {
            swallowed.extend_from_slice(&buf[..n]);
            let answered = count(&swallowed, READY);
            if answered >= syncs.load(Ordering::SeqCst) {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                if answered >= syncs.load(Ordering::SeqCst) {
                    break;
                }
            }
            continue;
        }
        if client_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    upstream.abort();
    let _ = client_write.shutdown().await;
}

/// What a [`Forgetter`] does with the next bytes a forgotten connection sends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Forget {
    /// Answers them with a reset, as a NAT gateway does for a connection it timed out, or a
    /// host for a connection it no longer knows. They never reach the server.
    Reset,
    /// Drops them and everything after, without a word: a path that lost its state and
    /// answers nothing.
    Silently,
}

pub struct Forgetter {
    pub port: u16,
    state: Arc<ForgetterState>,
}

struct ForgetterState {
    /// Connections accepted before the latest [`Forgetter::forget`] are forgotten.
    generation: AtomicUsize,
    mode: AtomicU8,
    /// Client bytes that arrived on a forgotten connection (each connection counts once).
    hits: AtomicUsize,
    /// For each connection that ended unforgotten: its generation, and whether the client
    /// closed (or half-closed) it before the server did.
    ends: Mutex<Vec<(usize, bool)>>,
    /// Counts [`Forgetter::hang_up`]s; each connection open at one is hung up on.
    hang_ups: tokio::sync::watch::Sender<usize>,
}

impl Forgetter {
    /// Proxies 127.0.0.1:`port` (a free one) to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> Forgetter {
        let state = Arc::new(ForgetterState {
            generation: AtomicUsize::new(0),
            mode: AtomicU8::new(0),
            hits: AtomicUsize::new(0),
            ends: Mutex::new(Vec::new()),
            hang_ups: tokio::sync::watch::Sender::new(0),
        });
        let shared = state.clone();
        let port = listen(upstream, move |client, server| {
            let born = shared.generation.load(Ordering::SeqCst);
            forgetful_relay(client, server, shared.clone(), born)
        })
        .await;
        Forgetter { port, state }
    }

    /// Forgets every connection open now, without telling either side: the client's next
    /// bytes on one are answered as `how` says; the server side is closed then.
    pub fn forget(&self, how: Forget) {
        self.state.mode.store(how as u8, Ordering::SeqCst);
        self.state.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Hangs up on the client of every connection open now, with a reset, as a pooler or a
    /// network path that drops a connection does, while the server's side stays open: a
    /// statement the server is running goes on, and its answer goes nowhere.
    pub fn hang_up(&self) {
        self.state.hang_ups.send_modify(|n| *n += 1);
    }

    /// How many forgotten connections the client has tried to use.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// The connections opened since the latest [`Forgetter::forget`] that have ended, each
    /// as whether its client closed first.
    pub fn ended_since_forget(&self) -> Vec<bool> {
        let now = self.state.generation.load(Ordering::SeqCst);
        let ends = self.state.ends.lock().unwrap();
        ends.iter()
            .filter(|(born, _)| *born == now)
            .map(|(_, client_first)| *client_first)
            .collect()
    }
}

async fn forgetful_relay(
    mut client: TcpStream,
    mut server: TcpStream,
    state: Arc<ForgetterState>,
    born: usize,
) {
    let mut up = vec![0u8; 64 * 1024];
    let mut down = vec![0u8; 64 * 1024];
    let mut hang_ups = state.hang_ups.subscribe();
    loop {
        tokio::select! {
            _ = hang_ups.changed() => {
                let _ = client.set_zero_linger();
                drop(client);
                // The server's answers, until it closes, or for a minute at most.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(60), async {
                    while let Ok(n) = server.read(&mut down).await {
                        if n == 0 {
                            break;
                        }
                    }
                })
                .await;
                return;
            }
            read = client.read(&mut up) => {
                let n = match read {
                    Ok(0) | Err(_) => {
                        state.ends.lock().unwrap().push((born, true));
                        return;
                    }
                    Ok(n) => n,
                };
                if state.generation.load(Ordering::SeqCst) != born {
                    state.hits.fetch_add(1, Ordering::SeqCst);
                    drop(server);
                    if state.mode.load(Ordering::SeqCst) == Forget::Reset as u8 {
                        let _ = client.set_zero_linger();
                        return;
                    }
                    // Silently: hold the client's side open and swallow it, until it gives up.
                    while let Ok(n) = client.read(&mut up).await {
                        if n == 0 {
                            return;
                        }
                    }
                    return;
                }
                if server.write_all(&up[..n]).await.is_err() {
                    return;
                }
            }
            read = server.read(&mut down) => {
                let n = match read {
                    Ok(0) | Err(_) => {
                        state.ends.lock().unwrap().push((born, false));
                        return;
                    }
                    Ok(n) => n,
                };
                if client.write_all(&down[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}
