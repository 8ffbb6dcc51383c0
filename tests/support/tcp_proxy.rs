//! A plain TCP proxy in front of a real service, for one daemon only and
//! for protocols whose bytes a test cannot read (SSH): switched off (every
//! open connection cut, new ones dropped: the service is down) or into a
//! black hole (every socket held open, nothing forwarded any more: a
//! partitioned or frozen server).

#![allow(dead_code)] // each test binary uses its own part

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The proxy; it stops when dropped.
pub struct TcpProxy {
    pub addr: SocketAddr,
    enabled: Arc<AtomicBool>,
    hole: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// A proxy to `upstream` (`host:port`), forwarding.
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let (enabled, hole) = (
            Arc::new(AtomicBool::new(true)),
            Arc::new(AtomicBool::new(false)),
        );
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let upstream = upstream.to_owned();
        let accept = {
            let (enabled, hole, connections) = (enabled.clone(), hole.clone(), connections.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    if !enabled.load(Ordering::SeqCst) {
                        continue; // dropped: connection refused in effect
                    }
                    let (upstream, hole) = (upstream.clone(), hole.clone());
                    connections.lock().unwrap().push(tokio::spawn(async move {
                        if let Ok(server) = TcpStream::connect(&upstream).await {
                            let (cr, cw) = client.into_split();
                            let (sr, sw) = server.into_split();
                            tokio::join!(pipe(cr, sw, hole.clone()), pipe(sr, cw, hole));
                        }
                    }));
                }
            })
        };
        Self {
            addr,
            enabled,
            hole,
            connections,
            accept,
        }
    }

    /// Off: every open connection is cut and new ones are dropped.
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::SeqCst);
        if !on {
            for task in self.connections.lock().unwrap().drain(..) {
                task.abort();
            }
        }
    }

    /// Forwards nothing from now on, holding every socket open.
    pub fn black_hole(&self) {
        self.hole.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.set_enabled(false);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    hole: Arc<AtomicBool>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        while hole.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
