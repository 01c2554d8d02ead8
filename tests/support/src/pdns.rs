//! A real PowerDNS (`pdns_server`, gsqlite3 backend) on 127.0.0.1 for tests,
//! with a small DNS client to query it. Needs the Debian packages listed in
//! tests/interop/pdns/README.md (scripts/install-deps --test installs them);
//! fails, never skips, without them.

use std::collections::BTreeSet;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meridian_dns::{ApiKey, PdnsConfig, PdnsProvider};
use serde_json::json;

pub const ZONE: &str = "example.com.";
pub const HOST: &str = "track.example.com.";
pub const A: &str = "192.0.2.10";
pub const B: &str = "192.0.2.11";
pub const SCHEMA: &str = "/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql";
pub const INSTALL_HINT: &str =
    "install the PowerDNS test peer: apt-get install -y pdns-server pdns-backend-sqlite3 sqlite3 (see tests/interop/pdns/README.md)";

/// A running pdns_server in its own temp dir; killed and removed on drop,
/// including when a test panics.
pub struct Pdns {
    child: Child,
    dir: PathBuf,
    pub dns_port: u16,
    pub api_url: String,
    pub api_key: String,
    http: reqwest::Client,
}

impl Drop for Pdns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn find_binary(name: &str) -> Option<PathBuf> {
    // pdns_server lives in /usr/sbin, which is not on every user's PATH.
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn unique() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}-{nanos:x}", std::process::id())
}

fn random_key() -> String {
    use std::hash::{BuildHasher, RandomState};
    let s = RandomState::new();
    format!("{:016x}{:016x}", s.hash_one(unique()), s.hash_one(1u8))
}

/// A port free for both UDP and TCP, since pdns binds both for DNS.
fn free_dns_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn create_db(db: &Path) {
    assert!(
        Path::new(SCHEMA).is_file(),
        "{SCHEMA} missing: pdns-backend-sqlite3 is not installed; {INSTALL_HINT}"
    );
    let status = if let Some(sqlite3) = find_binary("sqlite3") {
        Command::new(sqlite3)
            .arg(db)
            .arg(format!(".read {SCHEMA}"))
            .status()
    } else {
        Command::new("python3")
            .args([
                "-c",
                "import sqlite3, sys; sqlite3.connect(sys.argv[1]).executescript(open(sys.argv[2]).read())",
            ])
            .arg(db)
            .arg(SCHEMA)
            .status()
    };
    let status = status.unwrap_or_else(|e| panic!("creating the sqlite db: {e}; {INSTALL_HINT}"));
    assert!(status.success(), "creating the sqlite db failed: {status}");
}

impl Pdns {
    pub async fn start() -> Pdns {
        let server = find_binary("pdns_server").unwrap_or_else(|| {
            panic!("pdns_server not found on PATH or in /usr/sbin; {INSTALL_HINT}")
        });
        let dir = std::env::temp_dir().join(format!("meridian-pdns-{}", unique()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("pdns.sqlite3");
        create_db(&db);
        let dns_port = free_dns_port();
        let web_port = free_tcp_port();
        let api_key = random_key();
        let conf = format!(
            "launch=gsqlite3\n\
             gsqlite3-database={db}\n\
             daemon=no\n\
             guardian=no\n\
             socket-dir={dir}\n\
             local-address=127.0.0.1\n\
             local-port={dns_port}\n\
             api=yes\n\
             api-key={api_key}\n\
             webserver=yes\n\
             webserver-address=127.0.0.1\n\
             webserver-port={web_port}\n\
             webserver-allow-from=127.0.0.0/8\n\
             security-poll-suffix=\n\
             enable-lua-records=yes\n\
             cache-ttl=0\n\
             query-cache-ttl=0\n\
             negquery-cache-ttl=0\n",
            db = db.display(),
            dir = dir.display(),
        );
        std::fs::write(dir.join("pdns.conf"), conf).unwrap();
        let log = std::fs::File::create(dir.join("pdns.log")).unwrap();
        let child = Command::new(&server)
            .arg(format!("--config-dir={}", dir.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", server.display()));
        let mut pdns = Pdns {
            child,
            dir,
            dns_port,
            api_url: format!("http://127.0.0.1:{web_port}"),
            api_key,
            http: reqwest::Client::new(),
        };
        pdns.wait_ready().await;
        pdns.create_zone().await;
        pdns
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pdns.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("pdns_server exited with {status}:\n{}", self.log());
            }
            let ready = self
                .http
                .get(format!("{}/api/v1/servers/localhost", self.api_url))
                .header("X-API-Key", &self.api_key)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pdns_server API not ready after 20s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn create_zone(&self) {
        let resp = self
            .http
            .post(format!("{}/api/v1/servers/localhost/zones", self.api_url))
            .header("X-API-Key", &self.api_key)
            .json(&json!({"name": ZONE, "kind": "Native", "nameservers": ["ns1.example.com."]}))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        assert_eq!(
            status,
            201,
            "creating {ZONE}: {}",
            resp.text().await.unwrap()
        );
    }

    pub fn provider(&self, use_lua: bool) -> PdnsProvider {
        PdnsProvider::new(PdnsConfig {
            api_url: self.api_url.clone(),
            api_key: ApiKey::new(self.api_key.clone()),
            zone: ZONE.to_owned(),
            use_lua,
        })
        .unwrap()
    }

    /// Changes an RRset behind Meridian's back, as an operator would.
    /// Replaces the `rtype` records of `name` through the API, as a person
    /// editing the zone by hand would (drift).
    pub async fn edit_by_hand(&self, name: &str, rtype: &str, contents: &[&str]) {
        let records: Vec<_> = contents
            .iter()
            .map(|c| json!({"content": c, "disabled": false}))
            .collect();
        let resp = self
            .http
            .patch(format!(
                "{}/api/v1/servers/localhost/zones/{ZONE}",
                self.api_url
            ))
            .header("X-API-Key", &self.api_key)
            .json(&json!({"rrsets": [{
                "name": name, "type": rtype, "ttl": 30, "changetype": "REPLACE", "records": records,
            }]}))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        assert_eq!(status, 204, "hand edit: {}", resp.text().await.unwrap());
    }

    /// Deletes the `rtype` RRset of `name` through the API, by hand.
    pub async fn delete_by_hand(&self, name: &str, rtype: &str) {
        let resp = self
            .http
            .patch(format!(
                "{}/api/v1/servers/localhost/zones/{ZONE}",
                self.api_url
            ))
            .header("X-API-Key", &self.api_key)
            .json(&json!({"rrsets": [{"name": name, "type": rtype, "changetype": "DELETE"}]}))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        assert_eq!(status, 204, "hand delete: {}", resp.text().await.unwrap());
    }

    /// The types of the RRsets at `name`, sorted, as the API lists them.
    pub async fn rrsets(&self, name: &str) -> Vec<String> {
        let zone: serde_json::Value = self
            .http
            .get(format!(
                "{}/api/v1/servers/localhost/zones/{ZONE}",
                self.api_url
            ))
            .header("X-API-Key", &self.api_key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut types: Vec<String> = zone["rrsets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["name"] == name)
            .filter_map(|r| r["type"].as_str().map(str::to_owned))
            .collect();
        types.sort();
        types
    }

    /// The A answers for HOST, from one real DNS query over UDP.
    pub async fn query_a(&self) -> BTreeSet<String> {
        query_a(self.dns_port, HOST)
            .await
            .unwrap_or_else(|e| panic!("DNS query for {HOST}: {e}\npdns log:\n{}", self.log()))
    }
}

/// A minimal DNS client: one A question, the A answers back.
pub async fn query_a(port: u16, name: &str) -> Result<BTreeSet<String>, String> {
    let id: u16 = (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        & 0xffff) as u16;
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD, 1 question
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root, type A, class IN
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&q, ("127.0.0.1", port)).await.unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = tokio::time::timeout(Duration::from_secs(3), sock.recv_from(&mut buf))
        .await
        .map_err(|_| "no answer within 3s".to_owned())?
        .unwrap();
    let msg = &buf[..n];
    if msg.len() < 12 || msg[..2] != id.to_be_bytes() {
        return Err("malformed or mismatched reply".to_owned());
    }
    let rcode = msg[3] & 0x0f;
    if rcode != 0 {
        return Err(format!("rcode {rcode} (2 = SERVFAIL, 3 = NXDOMAIN)"));
    }
    let ancount = u16::from_be_bytes([msg[6], msg[7]]);
    let mut pos = skip_name(msg, 12)? + 4;
    let mut out = BTreeSet::new();
    for _ in 0..ancount {
        pos = skip_name(msg, pos)?;
        let field = |i: usize| msg.get(pos + i).copied().ok_or("truncated answer");
        let rtype = u16::from_be_bytes([field(0)?, field(1)?]);
        let rdlen = u16::from_be_bytes([field(8)?, field(9)?]) as usize;
        let rdata = msg
            .get(pos + 10..pos + 10 + rdlen)
            .ok_or("truncated rdata")?;
        if rtype == 1 && rdlen == 4 {
            out.insert(format!(
                "{}.{}.{}.{}",
                rdata[0], rdata[1], rdata[2], rdata[3]
            ));
        }
        pos += 10 + rdlen;
    }
    Ok(out)
}

fn skip_name(msg: &[u8], mut pos: usize) -> Result<usize, String> {
    loop {
        let len = *msg.get(pos).ok_or("truncated name")? as usize;
        if len == 0 {
            return Ok(pos + 1);
        }
        if len & 0xc0 == 0xc0 {
            return Ok(pos + 2); // compression pointer ends the name here
        }
        pos += 1 + len;
    }
}
