//! A TCP proxy on 127.0.0.1 that can hold back HTTP requests of one method
//! (e.g. `PATCH`) for a while, as a slow or congested network would. A held
//! request whose client gives up (closes the connection) during the hold is
//! dropped, never forwarded: exactly what a request cut off in flight
//! becomes. Tests of fencing use it to delay a provider submit past the
//! failover lease.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Default)]
struct State {
    /// (method prefix, e.g. "PATCH ", how long) while delaying.
    delay: Mutex<Option<(String, Duration)>>,
    held: AtomicUsize,
    dropped: AtomicUsize,
    forwarded_late: AtomicUsize,
}

/// The proxy; stops on drop.
pub struct DelayProxy {
    pub port: u16,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl DelayProxy {
    /// Forwards 127.0.0.1:port to `target` (`host:port`).
    pub async fn start(target: &str) -> DelayProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        let (target, shared) = (target.to_owned(), state.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (target, state) = (target.clone(), shared.clone());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&target).await {
                        relay(client, server, state).await;
                    }
                });
            }
        });
        DelayProxy { port, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Holds every request with this method for `by`, from now on.
    pub fn delay(&self, method: &str, by: Duration) {
        *self.state.delay.lock().unwrap() = Some((format!("{method} "), by));
    }

    /// Stops holding new requests (held ones keep their hold).
    pub fn no_delay(&self) {
        *self.state.delay.lock().unwrap() = None;
    }

    /// Requests held so far.
    pub fn held(&self) -> usize {
        self.state.held.load(Ordering::SeqCst)
    }

    /// Held requests whose client gave up during the hold: never forwarded.
    pub fn dropped(&self) -> usize {
        self.state.dropped.load(Ordering::SeqCst)
    }

    /// Held requests forwarded after their hold.
    pub fn forwarded_late(&self) -> usize {
        self.state.forwarded_late.load(Ordering::SeqCst)
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, server: TcpStream, state: Arc<State>) {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let back = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
        let _ = to_client.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from_client.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut pending = buf[..n].to_vec();
        let hold = state
            .delay
            .lock()
            .unwrap()
            .clone()
            .filter(|(method, _)| pending.starts_with(method.as_bytes()))
            .map(|(_, by)| by);
        if let Some(by) = hold {
            state.held.fetch_add(1, Ordering::SeqCst);
            let until = tokio::time::sleep(by);
            tokio::pin!(until);
            let mut more = vec![0u8; 64 * 1024];
            loop {
                tokio::select! {
                    _ = &mut until => break,
                    read = from_client.read(&mut more) => match read {
                        Ok(0) | Err(_) => {
                            // The client gave up: the request never leaves.
                            state.dropped.fetch_add(1, Ordering::SeqCst);
                            back.abort();
                            return;
                        }
                        Ok(m) => pending.extend_from_slice(&more[..m]),
                    },
                }
            }
            state.forwarded_late.fetch_add(1, Ordering::SeqCst);
        }
        if to_server.write_all(&pending).await.is_err() {
            break;
        }
    }
    let _ = to_server.shutdown().await;
    let _ = back.await;
}
