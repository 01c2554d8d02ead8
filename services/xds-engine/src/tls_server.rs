//! TLS on the xDS port, with client certificates per [`ClientAuth`].
//!
//! A rustls acceptor in front of tonic (rather than tonic's `tls` feature,
//! which would build a second rustls crypto provider): each accepted
//! connection is handshaken in its own task, so a slow or silent client
//! cannot hold up others, and the verified SPIFFE ID of the peer rides
//! along as [`PeerIdentity`] in every request's extensions. Under
//! `Required`, a client without a certificate the trust bundle vouches for
//! fails the handshake and never reaches gRPC.

use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use crate::server::{ClientAuth, PeerIdentity, Server};

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The certificate, key or trust bundle could not be used.
    #[error("xDS TLS configuration: {0}")]
    Config(String),
}

/// The server's certificate, replaceable while serving (renewal).
#[derive(Debug)]
pub struct ServerCert {
    current: RwLock<Arc<CertifiedKey>>,
}

fn certified(chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, Error> {
    let chain: Vec<CertificateDer<'static>> = meridian_ca::certificates_der(chain_pem)
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    if chain.is_empty() {
        return Err(Error::Config("no certificate in the server chain".into()));
    }
    let key = PrivateKeyDer::try_from(pem_body(key_pem)?)
        .map_err(|e| Error::Config(format!("server key: {e}")))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| Error::Config(format!("server key: {e}")))?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

/// DER of the first PEM block of a key file.
fn pem_body(pem: &str) -> Result<Vec<u8>, Error> {
    use base64::Engine;
    let start = pem
        .find("-----BEGIN ")
        .and_then(|s| pem[s..].find('\n').map(|n| s + n + 1))
        .ok_or_else(|| Error::Config("no PEM block in the key".into()))?;
    let end = pem[start..]
        .find("-----END ")
        .map(|e| start + e)
        .ok_or_else(|| Error::Config("unterminated PEM block in the key".into()))?;
    let body: String = pem[start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| Error::Config(format!("key PEM: {e}")))
}

impl ServerCert {
    /// A certificate from PEM (chain first leaf) and its PKCS#8 key.
    pub fn new(chain_pem: &str, key_pem: &str) -> Result<Arc<Self>, Error> {
        Ok(Arc::new(ServerCert {
            current: RwLock::new(certified(chain_pem, key_pem)?),
        }))
    }

    /// Replaces the certificate; new handshakes use it at once.
    pub fn replace(&self, chain_pem: &str, key_pem: &str) -> Result<(), Error> {
        let next = certified(chain_pem, key_pem)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// The rustls configuration of the xDS port.
pub fn server_config(
    cert: Arc<ServerCert>,
    trust_bundle_pem: &str,
    auth: ClientAuth,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(e.to_string()))?;
    let builder = match auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional | ClientAuth::Required => {
            let mut roots = rustls::RootCertStore::empty();
            for der in meridian_ca::certificates_der(trust_bundle_pem) {
                roots
                    .add(CertificateDer::from(der))
                    .map_err(|e| Error::Config(format!("trust bundle: {e}")))?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = if auth == ClientAuth::Optional {
                v.allow_unauthenticated()
            } else {
                v
            };
            builder.with_client_cert_verifier(v.build().map_err(|e| Error::Config(e.to_string()))?)
        }
    };
    let mut config = builder.with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// One accepted TLS connection and its peer's identity.
pub struct TlsConn {
    inner: TlsStream<TcpStream>,
    peer: PeerIdentity,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerIdentity;
    fn connect_info(&self) -> PeerIdentity {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Serves ADS and CSDS over TLS on `listener` until `shutdown`.
pub async fn serve_tls(
    listener: TcpListener,
    server: Server,
    config: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    serve_tls_with(
        listener,
        server,
        config,
        tonic::service::Routes::default(),
        shutdown,
    )
    .await
}

/// [`serve_tls`], with `extra` gRPC services on the same port.
pub async fn serve_tls_with(
    listener: TcpListener,
    server: Server,
    config: Arc<rustls::ServerConfig>,
    extra: tonic::service::Routes,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let acceptor = TlsAcceptor::from(config);
    let (tx, rx) = mpsc::channel::<Result<TlsConn, std::io::Error>>(64);
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "xds accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // See `serve`: without NODELAY small responses wait for Nagle.
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                let tls = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = handshake => r,
                };
                match tls {
                    Ok(Ok(stream)) => {
                        let peer = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|c| meridian_ca::spiffe_id_of(c))
                            .map(|id| id.to_string());
                        let _ = tx
                            .send(Ok(TlsConn {
                                inner: stream,
                                peer: PeerIdentity(peer),
                            }))
                            .await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(%addr, error = %e, "xds TLS handshake refused")
                    }
                    Err(_) => tracing::info!(%addr, "xds TLS handshake timed out"),
                }
            });
        }
    });
    tonic::transport::Server::builder()
        .add_routes(extra)
        .add_service(server.ads_service())
        .add_service(server.csds_service())
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), shutdown.cancelled_owned())
        .await
}
