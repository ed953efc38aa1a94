//! A fault-injecting HTTPS proxy in front of the test apiserver, for clients
//! that must survive a flaky control plane (the operator under test).
//!
//! It listens on an ephemeral loopback port and serves the apiserver's own
//! certificate (from the cluster's `pki` directory, beside the admin
//! kubeconfig), so a kubeconfig that trusts the cluster's CA trusts it too;
//! each request goes upstream over a new TLS connection with the client's own
//! headers, `Authorization` included, so the apiserver sees the client's
//! identity. By a seeded schedule, with at most [`Plan::max_each`] of each
//! kind, it answers instead of the apiserver (409 Conflict to writes, 429 Too
//! Many Requests with `Retry-After: 1`, 500), delays a request 0.5–1 s before
//! forwarding it, or cuts a watch a short while after it started. Counts of
//! what it did: [`FaultProxy::injected`].
//!
//! One request per client connection (`Connection: close` both ways): the
//! responses pass through as bytes, their framing untouched.

use std::collections::BTreeMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use kube::config::Kubeconfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use rustls::{StreamOwned, crypto::aws_lc_rs};

use crate::Cluster;

/// What the proxy can do to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// 409 with a `Status` of reason `Conflict`, to a POST, PUT or PATCH.
    Conflict,
    /// 429 with `Retry-After: 1`.
    TooManyRequests,
    /// 500 with a `Status` of reason `InternalError`.
    ServerError,
    /// Forwarded after 0.5–1 s.
    Slow,
    /// A watch, forwarded, then closed mid-stream after [`WATCH_CUT`].
    DropWatch,
}

/// How long a watch that is to be dropped lives.
pub const WATCH_CUT: Duration = Duration::from_millis(1500);

/// The faults of one class of requests: each run of `cycle` consecutive
/// requests of the class gets `faults`, at positions shuffled by the seed, and
/// passes the rest through untouched.
#[derive(Clone, Debug)]
pub struct Class {
    pub cycle: u64,
    pub faults: Vec<Fault>,
}

/// The schedule of a proxy.
#[derive(Clone, Debug)]
pub struct Plan {
    pub seed: u64,
    /// POST, PUT and PATCH.
    pub writes: Class,
    /// Requests with `watch=` set.
    pub watches: Class,
    /// Everything else.
    pub reads: Class,
    /// No fault is injected more often than this; the rest pass.
    pub max_each: u32,
}

impl Default for Plan {
    /// Every fault early in a run (small cycles), few enough in all that a
    /// client with ordinary retries gets through.
    fn default() -> Self {
        use Fault::*;
        Plan {
            seed: 0x5eed,
            writes: Class {
                cycle: 4,
                faults: vec![Conflict, Slow],
            },
            watches: Class {
                cycle: 3,
                faults: vec![DropWatch],
            },
            reads: Class {
                cycle: 6,
                faults: vec![TooManyRequests, ServerError, Slow],
            },
            max_each: 4,
        }
    }
}

/// A running proxy; stopped (with every connection through it) on drop.
pub struct FaultProxy {
    address: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    upstream: SocketAddr,
    server_tls: Arc<ServerConfig>,
    client_tls: Arc<ClientConfig>,
    plan: Plan,
    state: Mutex<State>,
    requests: AtomicU64,
    stop: AtomicBool,
}

#[derive(Default)]
struct State {
    /// Requests seen so far of each class: writes, watches, reads.
    seen: [u64; 3],
    injected: BTreeMap<Fault, u32>,
}

impl FaultProxy {
    /// Start a proxy to `cluster`'s apiserver, which must be on loopback and
    /// have its `pki` directory beside the admin kubeconfig (as `tests/cluster`
    /// lays it out).
    pub fn start(cluster: &Cluster, plan: Plan) -> anyhow::Result<FaultProxy> {
        let admin = cluster.kubeconfig();
        let pki = admin
            .parent()
            .context("the admin kubeconfig has no directory")?;
        let server = Kubeconfig::read_from(admin)?
            .clusters
            .first()
            .and_then(|c| c.cluster.as_ref()?.server.clone())
            .context("the admin kubeconfig names no server")?;
        let upstream: SocketAddr = server
            .strip_prefix("https://")
            .and_then(|a| a.trim_end_matches('/').parse().ok())
            .with_context(|| format!("the apiserver {server} is not https://<ip>:<port>"))?;
        ensure!(
            upstream.ip().is_loopback(),
            "the apiserver {server} is not on loopback"
        );
        let read_pem = |file: &str| -> anyhow::Result<Vec<CertificateDer<'static>>> {
            let path = pki.join(file);
            CertificateDer::pem_file_iter(&path)
                .and_then(|certs| certs.collect())
                .with_context(|| format!("reading {} (a tests/cluster state?)", path.display()))
        };
        let key_path = pki.join("apiserver.key");
        let key = PrivateKeyDer::from_pem_file(&key_path)
            .with_context(|| format!("reading {}", key_path.display()))?;

        let provider = Arc::new(aws_lc_rs::default_provider());
        let server_tls = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(read_pem("apiserver.crt")?, key)?;
        let mut roots = RootCertStore::empty();
        for ca in read_pem("ca.crt")? {
            roots.add(ca)?;
        }
        let client_tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();

        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            server_tls: Arc::new(server_tls),
            client_tls: Arc::new(client_tls),
            plan,
            state: Mutex::default(),
            requests: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let accepting = shared.clone();
        let acceptor = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if accepting.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let shared = accepting.clone();
                std::thread::spawn(move || {
                    if let Err(err) = shared.serve(stream) {
                        eprintln!("fault proxy: {err:#}");
                    }
                });
            }
        });
        Ok(FaultProxy {
            address,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The URL to give clients as their `server`.
    pub fn url(&self) -> String {
        format!("https://{}", self.address)
    }

    /// How many times each fault was injected so far.
    pub fn injected(&self) -> BTreeMap<Fault, u32> {
        self.shared.state.lock().unwrap().injected.clone()
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the acceptor, which then sees `stop`.
        let _ = TcpStream::connect(self.address);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// A request as read from the client, with its head rewritten to be sent
/// upstream.
struct Request {
    method: String,
    target: String,
    head: Vec<u8>,
    body: Vec<u8>,
}

impl Request {
    fn is_watch(&self) -> bool {
        self.target.split_once('?').is_some_and(|(_, query)| {
            query.split('&').any(|pair| {
                pair.strip_prefix("watch=")
                    .is_some_and(|v| v != "false" && v != "0")
            })
        })
    }

    fn is_write(&self) -> bool {
        matches!(self.method.as_str(), "POST" | "PUT" | "PATCH")
    }
}

impl Shared {
    fn serve(&self, tcp: TcpStream) -> anyhow::Result<()> {
        tcp.set_nodelay(true)?;
        let connection = ServerConnection::new(self.server_tls.clone())?;
        let mut client = StreamOwned::new(connection, tcp);
        let request = match read_request(&mut client) {
            Ok(request) => request,
            // A client (or the wake-up of Drop) that sent nothing.
            Err(err) if err.kind() == ErrorKind::UnexpectedEof => return Ok(()),
            Err(err) => return Err(err).context("reading a request"),
        };
        self.requests.fetch_add(1, Ordering::SeqCst);
        let fault = self.decide(&request);
        let cut = match fault {
            Some(Fault::Conflict) => {
                return respond(&mut client, 409, "Conflict", "Conflict", None);
            }
            Some(Fault::TooManyRequests) => {
                return respond(
                    &mut client,
                    429,
                    "Too Many Requests",
                    "TooManyRequests",
                    Some(1),
                );
            }
            Some(Fault::ServerError) => {
                return respond(
                    &mut client,
                    500,
                    "Internal Server Error",
                    "InternalError",
                    None,
                );
            }
            Some(Fault::Slow) => {
                let extra = splitmix(self.plan.seed ^ self.requests.load(Ordering::SeqCst)) % 500;
                std::thread::sleep(Duration::from_millis(500 + extra));
                None
            }
            Some(Fault::DropWatch) => Some(Instant::now() + WATCH_CUT),
            None => None,
        };
        let complete = self
            .forward(&request, &mut client, cut)
            .with_context(|| format!("{} {}", request.method, request.target))?;
        if complete {
            client.conn.send_close_notify();
            client.flush()?;
        }
        Ok(())
    }

    /// The fault for this request, if any, by the plan; counted.
    fn decide(&self, request: &Request) -> Option<Fault> {
        let plan = &self.plan;
        let (index, class) = if request.is_watch() {
            (1, &plan.watches)
        } else if request.is_write() {
            (0, &plan.writes)
        } else {
            (2, &plan.reads)
        };
        let mut state = self.state.lock().unwrap();
        let n = state.seen[index];
        state.seen[index] += 1;
        let cycle = class.cycle.max(class.faults.len() as u64).max(1);
        // The cycle's faults at seeded positions (a Fisher–Yates shuffle).
        let mut slots: Vec<Option<Fault>> = class.faults.iter().copied().map(Some).collect();
        slots.resize(cycle as usize, None);
        let mut random = plan.seed ^ ((index as u64) << 56) ^ (n / cycle);
        for i in (1..slots.len()).rev() {
            random = splitmix(random);
            slots.swap(i, (random % (i as u64 + 1)) as usize);
        }
        let fault = slots[(n % cycle) as usize]?;
        let count = state.injected.entry(fault).or_default();
        if *count >= plan.max_each {
            return None;
        }
        *count += 1;
        Some(fault)
    }

    /// Send `request` upstream and copy the response to `client` until the
    /// apiserver ends it, or until `cut`; whether it was copied to its end.
    fn forward(
        &self,
        request: &Request,
        client: &mut StreamOwned<ServerConnection, TcpStream>,
        cut: Option<Instant>,
    ) -> anyhow::Result<bool> {
        let tcp = TcpStream::connect(self.upstream)?;
        tcp.set_nodelay(true)?;
        let name = ServerName::from(self.upstream.ip());
        let connection = ClientConnection::new(self.client_tls.clone(), name)?;
        let mut upstream = StreamOwned::new(connection, tcp);
        upstream.write_all(&request.head)?;
        upstream.write_all(&request.body)?;
        upstream.flush()?;
        // Wake up now and then to notice `cut` and `stop` on a quiet watch.
        upstream
            .sock
            .set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut buffer = vec![0; 64 * 1024];
        loop {
            if self.stop.load(Ordering::SeqCst) || cut.is_some_and(|t| Instant::now() >= t) {
                return Ok(false);
            }
            match upstream.read(&mut buffer) {
                Ok(0) => return Ok(true),
                Ok(n) => {
                    client.write_all(&buffer[..n])?;
                    client.flush()?;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                // The apiserver closing without close_notify still ends the response.
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(true),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Read one request: its head up to the blank line, then `Content-Length`
/// bytes of body.
fn read_request(stream: &mut impl Read) -> io::Result<Request> {
    let invalid = |what: &str| io::Error::new(ErrorKind::InvalidData, what.to_string());
    let mut data = Vec::new();
    let mut chunk = [0; 16 * 1024];
    let end = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        data.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&data[..end]).map_err(|_| invalid("a head not UTF-8"))?;
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    let request_line = lines.next().ok_or_else(|| invalid("no request line"))?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(invalid("a malformed request line"));
    };
    let mut length = 0;
    let mut upstream = format!("{request_line}\r\n");
    for line in lines {
        let (name, value) = line.split_once(':').ok_or_else(|| invalid(line))?;
        let name = name.trim().to_ascii_lowercase();
        match name.as_str() {
            "content-length" => {
                length = value.trim().parse().map_err(|_| invalid(line))?;
            }
            "transfer-encoding" => return Err(invalid("a chunked request body")),
            "connection" | "keep-alive" => continue,
            _ => {}
        }
        upstream.push_str(line);
        upstream.push_str("\r\n");
    }
    upstream.push_str("Connection: close\r\n\r\n");
    let mut body = data[end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Request {
        method: method.to_string(),
        target: target.to_string(),
        head: upstream.into_bytes(),
        body,
    })
}

/// Answer as the apiserver would fail: a `Status` object.
fn respond(
    client: &mut StreamOwned<ServerConnection, TcpStream>,
    code: u16,
    text: &str,
    reason: &str,
    retry_after: Option<u32>,
) -> anyhow::Result<()> {
    let mut details = serde_json::json!({});
    let mut extra = String::new();
    if let Some(seconds) = retry_after {
        details = serde_json::json!({"retryAfterSeconds": seconds});
        extra = format!("Retry-After: {seconds}\r\n");
    }
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!("{text} (injected by the fault proxy of the tests)"),
        "reason": reason,
        "details": details,
        "code": code,
    })
    .to_string();
    write!(
        client,
        "HTTP/1.1 {code} {text}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         {extra}Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    client.conn.send_close_notify();
    client.flush()?;
    Ok(())
}

/// SplitMix64: a good enough mix of a seed for a test schedule.
fn splitmix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
