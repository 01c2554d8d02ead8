//! Provider APIs may be https:// (Alibaba Cloud DNS's default endpoint is).
//! Before, the HTTP client was built without TLS and every https:// URL
//! failed before a byte was sent. A listener on loopback reads what the
//! PowerDNS provider sends to an https:// URL: a TLS ClientHello.

use meridian_dns::{ApiKey, Owner, PdnsConfig, PdnsProvider, Provider};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

#[tokio::test]
async fn an_https_api_url_is_spoken_to_in_tls() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut head = [0u8; 6];
        socket.read_exact(&mut head).await.unwrap();
        head
    });
    let provider = PdnsProvider::new(PdnsConfig {
        api_url: format!("https://127.0.0.1:{port}"),
        api_key: ApiKey::new("key"),
        zone: "example.com".into(),
        use_lua: false,
    })
    .unwrap();
    let owner = Owner::new("meridian-test", "p");
    // The listener never answers: the call fails, after sending its hello.
    let call = provider.read("track.example.com", &owner);
    let (head, result) = tokio::join!(server, call);
    let head = head.unwrap();
    assert!(result.is_err());
    // A TLS record of type handshake (22), version 3.x, then a ClientHello (1).
    assert_eq!((head[0], head[1], head[5]), (22, 3, 1), "{head:?}");
}
