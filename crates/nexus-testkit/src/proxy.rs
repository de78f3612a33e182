//! A TCP proxy on loopback that a test can turn into a black hole: what a client
//! writes is then lost without the client noticing, as bytes in flight are when a
//! server dies. That makes "the write was lost" a deterministic test step.

use std::{net::SocketAddr, sync::Arc};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// Forwards connections to `target` until told to swallow them.
pub struct TcpProxy {
    addr: SocketAddr,
    /// (generation, black hole): connections of an older generation are cut.
    state: Arc<watch::Sender<(u64, bool)>>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards to `target` (`host:port`).
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind proxy: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("proxy address: {e}"));
        let (tx, rx) = watch::channel((0u64, false));
        let target = target.to_owned();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let generation = rx.borrow().0;
                let rx = rx.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&target).await {
                        pipe(client, server, generation, rx).await;
                    }
                });
            }
        });
        Self {
            addr,
            state: Arc::new(tx),
        }
    }

    /// `nats://<proxy address>`.
    pub fn nats_url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// From now on, bytes in both directions are dropped; connections stay open.
    /// Callable from any thread (a fake's handler, say).
    pub fn black_hole(&self) {
        self.state.send_modify(|s| s.1 = true);
    }

    /// Closes every connection open now, and forwards new ones again.
    pub fn restore(&self) {
        self.state.send_modify(|s| {
            s.0 += 1;
            s.1 = false;
        });
    }
}

async fn pipe(
    mut client: TcpStream,
    mut server: TcpStream,
    generation: u64,
    mut state: watch::Receiver<(u64, bool)>,
) {
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 16 * 1024];
    // Read when the bytes arrive, not when the wait began: the switch may come between.
    let lost = |state: &watch::Receiver<(u64, bool)>| state.borrow().1;
    loop {
        tokio::select! {
            n = cr.read(&mut up) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if !lost(&state) && sw.write_all(&up[..n]).await.is_err() { return },
            },
            n = sr.read(&mut down) => match n {
                Ok(0) | Err(_) => {
                    // A dead server behind a black hole goes unnoticed by the client.
                    if lost(&state) {
                        let _ = state.wait_for(|s| s.0 != generation).await;
                    }
                    return;
                }
                Ok(n) => if !lost(&state) && cw.write_all(&down[..n]).await.is_err() { return },
            },
            changed = state.changed() => {
                if changed.is_err() || state.borrow().0 != generation {
                    return;
                }
            }
        }
    }
}
