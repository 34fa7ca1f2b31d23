//! A TCP proxy in front of the Kinesis emulator that can cut every connection it
//! carries, for the connection losses an enhanced fan-out reader must survive.
//!
//! A SubscribeToShard subscription is one long HTTP/1.1 response on the emulator's
//! plain port, its events pushed about once a second. The proxy forwards bytes both
//! ways, unchanged, and notes which connections carried a SubscribeToShard request.
//! [`CutProxy::cut`] resets every connection open at that moment (an abortive close,
//! so both esm and the emulator see the connection fail mid-response), as a network
//! failure would; connections made afterwards pass again. esm reaches it through
//! `AWS_ENDPOINT_URL_KINESIS`, like any endpoint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// What a connection is known to carry.
#[derive(Default)]
struct Connection {
    /// A SubscribeToShard request went through it.
    subscription: AtomicBool,
    /// Bytes the emulator sent through it since its last SubscribeToShard request.
    bytes_down: AtomicU64,
}

#[derive(Default)]
struct Shared {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Connection>>>,
    /// Subscriptions seen over the proxy's life.
    subscriptions: AtomicU64,
}

/// The connections one [`CutProxy::cut`] reset.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cut {
    /// Connections reset.
    pub connections: usize,
    /// Of those, the ones that carried a SubscribeToShard request...
    pub subscriptions: usize,
    /// ...and, of those, the ones whose response had already brought events (more
    /// than an error or a response head takes).
    pub flowing: usize,
}

/// A running proxy; it stops when the test's runtime ends.
pub struct CutProxy {
    /// Where it listens (127.0.0.1).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    cut: tokio::sync::watch::Sender<u64>,
}

/// A response head and an error event fit in this many bytes; a subscription that
/// brought more was pushing events.
const HEAD_BYTES: u64 = 1_024;

impl CutProxy {
    /// Starts a proxy to `upstream` (e.g. `http://127.0.0.1:4567`).
    pub async fn start(upstream: &str) -> Self {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap_or_else(|e| panic!("{upstream} is not http://IP:PORT: {e}"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let shared = Arc::new(Shared::default());
        let cut = tokio::sync::watch::Sender::new(0u64);
        let (accepting, cuts) = (shared.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                // Subscribed before anything else, so a cut from now on reaches it.
                let cut = cuts.subscribe();
                tokio::spawn(forward(client, upstream, accepting.clone(), cut));
            }
        });
        Self { addr, shared, cut }
    }

    /// The endpoint URL to give esm.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Resets every connection open now; returns what it cut.
    pub fn cut(&self) -> Cut {
        let open = self.shared.open.lock().unwrap_or_else(|e| e.into_inner());
        let cut = Cut {
            connections: open.len(),
            subscriptions: open.values().filter(|c| c.is_subscription()).count(),
            flowing: open.values().filter(|c| c.is_flowing()).count(),
        };
        self.cut.send_modify(|generation| *generation += 1);
        cut
    }

    /// Connections open now whose SubscribeToShard response is bringing events.
    pub fn flowing_subscriptions(&self) -> usize {
        let open = self.shared.open.lock().unwrap_or_else(|e| e.into_inner());
        open.values().filter(|c| c.is_flowing()).count()
    }

    /// SubscribeToShard requests seen since the start.
    pub fn subscriptions(&self) -> u64 {
        self.shared.subscriptions.load(Ordering::SeqCst)
    }
}

impl Connection {
    fn is_subscription(&self) -> bool {
        self.subscription.load(Ordering::SeqCst)
    }

    fn is_flowing(&self) -> bool {
        self.is_subscription() && self.bytes_down.load(Ordering::SeqCst) > HEAD_BYTES
    }
}

/// Carries one connection until either side closes it or the proxy cuts it.
async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    mut cut: tokio::sync::watch::Receiver<u64>,
) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    let connection = Arc::new(Connection::default());
    shared
        .open
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, connection.clone());

    let was_cut = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let up = pump(client_read, server_write, |bytes| {
            if contains(bytes, b"SubscribeToShard") {
                connection.bytes_down.store(0, Ordering::SeqCst);
                connection.subscription.store(true, Ordering::SeqCst);
                shared.subscriptions.fetch_add(1, Ordering::SeqCst);
            }
        });
        let down = pump(server_read, client_write, |bytes| {
            connection
                .bytes_down
                .fetch_add(bytes.len() as u64, Ordering::SeqCst);
        });
        tokio::select! {
            _ = async { tokio::join!(up, down) } => false,
            _ = cut.changed() => true,
        }
    };
    shared
        .open
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    if was_cut {
        // An abortive close: both ends see a reset, not a clean end of the response.
        let _ = client.set_zero_linger();
        let _ = server.set_zero_linger();
    }
}

/// Copies `from` to `to` until `from` ends (then half-closes `to`) or either fails,
/// showing each chunk to `seen`.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut seen: impl FnMut(&[u8]),
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => {
                seen(&buf[..n]);
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
