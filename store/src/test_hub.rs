//! A Hugging Face Hub on loopback for tests (feature `test-hub`): it serves
//! repositories in the Hub's layout — `/api/{models,datasets}/<repo>/revision/<rev>`
//! and `/[datasets/]<repo>/resolve/<rev>/<path>` — with the Hub's answers to what
//! it refuses (401 for a gated or unknown repository without a token, 404 with
//! `X-Error-Code` for a missing revision or file), so that `hf://` URIs are read
//! by the real client code with `HF_ENDPOINT` pointing here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use crate::hub::RepoKind;

/// One commit: file paths and their bytes.
pub type Files = BTreeMap<String, Vec<u8>>;

/// A repository: commits by sha, branches and tags naming them, and the token a
/// gated or private one asks for.
#[derive(Clone, Debug, Default)]
pub struct TestRepo {
    commits: BTreeMap<String, Files>,
    refs: BTreeMap<String, String>,
    token: Option<String>,
}

impl TestRepo {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `files` as a commit named by `reference` (a branch or tag); the
    /// commit's sha is derived from the reference and the files. Returns it.
    pub fn commit(&mut self, reference: &str, files: Files) -> String {
        use sha2::Digest as _;
        let mut hasher = sha2::Sha256::new();
        hasher.update(reference.as_bytes());
        for (path, bytes) in &files {
            hasher.update(path.as_bytes());
            hasher.update(bytes);
        }
        let sha = hex::encode(&hasher.finalize()[..20]);
        self.commits.insert(sha.clone(), files);
        self.refs.insert(reference.to_string(), sha.clone());
        sha
    }

    /// Makes the repository gated: it answers 401 unless sent `token`.
    pub fn gated(mut self, token: &str) -> Self {
        self.token = Some(token.to_string());
        self
    }
}

#[derive(Default)]
struct Hub {
    repos: BTreeMap<(String, String), TestRepo>,
    /// Every path asked for, in order.
    requests: Vec<String>,
    /// Bytes per second files are sent at (none: as fast as loopback goes).
    rate: Option<u64>,
}

/// The server; it stops when dropped.
pub struct TestHub {
    /// `http://127.0.0.1:<port>`, for `HF_ENDPOINT`.
    pub endpoint: String,
    hub: Arc<Mutex<Hub>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn collection(kind: RepoKind) -> &'static str {
    match kind {
        RepoKind::Model => "models",
        RepoKind::Dataset => "datasets",
    }
}

impl TestHub {
    /// Starts an empty Hub on an ephemeral loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr: SocketAddr = listener.local_addr()?;
        let hub = Arc::new(Mutex::new(Hub::default()));
        let app = axum::Router::new().fallback(serve).with_state(hub.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            endpoint: format!("http://{addr}"),
            hub,
            task,
        })
    }

    /// Adds (or replaces) the repository `<org>/<name>`.
    pub fn add(&self, kind: RepoKind, repo: &str, content: TestRepo) {
        let mut hub = self.hub.lock().unwrap();
        hub.repos
            .insert((collection(kind).into(), repo.into()), content);
    }

    /// Sends files at `bytes_per_second`, as a link to a remote Hub would, for
    /// measurements where the download time matters.
    pub fn throttle(&self, bytes_per_second: u64) {
        self.hub.lock().unwrap().rate = Some(bytes_per_second.max(1));
    }

    /// The paths asked for so far (query strings left out).
    pub fn requests(&self) -> Vec<String> {
        self.hub.lock().unwrap().requests.clone()
    }
}

/// `%XX` escapes decoded; anything else as it is.
fn decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&segment[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn refusal(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [("x-error-code", code), ("x-error-message", message)],
        message.to_string(),
    )
        .into_response()
}

async fn serve(State(hub): State<Arc<Mutex<Hub>>>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    let mut hub = hub.lock().unwrap();
    hub.requests.push(path.clone());
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(decode)
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match segments.as_slice() {
        [
            "api",
            kind @ ("models" | "datasets"),
            org,
            name,
            "revision",
            rev,
        ] => {
            let repo_id = format!("{org}/{name}");
            let (repo, sha) = match lookup(&hub, kind, &repo_id, rev, request.headers()) {
                Ok(found) => found,
                Err(refused) => return *refused,
            };
            let siblings: Vec<_> = repo.commits[&sha]
                .iter()
                .map(|(path, bytes)| serde_json::json!({"rfilename": path, "size": bytes.len()}))
                .collect();
            axum::Json(serde_json::json!({"id": repo_id, "sha": sha, "siblings": siblings}))
                .into_response()
        }
        rest => {
            let (kind, rest) = match rest {
                ["datasets", rest @ ..] => ("datasets", rest),
                rest => ("models", rest),
            };
            let [org, name, "resolve", rev, file @ ..] = rest else {
                return refusal(StatusCode::NOT_FOUND, "NotFound", "no such page");
            };
            let repo_id = format!("{org}/{name}");
            let (repo, sha) = match lookup(&hub, kind, &repo_id, rev, request.headers()) {
                Ok(found) => found,
                Err(refused) => return *refused,
            };
            let file = file.join("/");
            let Some(bytes) = repo.commits[&sha].get(&file) else {
                return refusal(
                    StatusCode::NOT_FOUND,
                    "EntryNotFound",
                    &format!("{file} does not exist on {rev}"),
                );
            };
            let bytes = bytes.clone();
            let body = match hub.rate {
                None => Body::from(bytes),
                Some(rate) => throttled(bytes, rate),
            };
            (
                [
                    ("x-repo-commit", sha.clone()),
                    (
                        header::ETAG.as_str(),
                        format!("\"{sha}-{}\"", bytes_len(&repo, &sha, &file)),
                    ),
                ],
                body,
            )
                .into_response()
        }
    }
}

/// The repository and the commit `rev` names in it, or the Hub's refusal.
fn lookup(
    hub: &Hub,
    kind: &str,
    repo_id: &str,
    rev: &str,
    headers: &HeaderMap,
) -> Result<(TestRepo, String), Box<Response>> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(repo) = hub.repos.get(&(kind.to_string(), repo_id.to_string())) else {
        // Without a token the Hub does not tell a private repository from a
        // missing one.
        return Err(Box::new(match bearer {
            None => refusal(
                StatusCode::UNAUTHORIZED,
                "RepoNotFound",
                "Repository not found",
            ),
            Some(_) => refusal(
                StatusCode::NOT_FOUND,
                "RepoNotFound",
                "Repository not found",
            ),
        }));
    };
    if let Some(token) = &repo.token {
        match bearer {
            None => {
                return Err(Box::new(refusal(
                    StatusCode::UNAUTHORIZED,
                    "GatedRepo",
                    "Access to this repository is restricted: you must be authenticated",
                )));
            }
            Some(given) if given != token => {
                return Err(Box::new(refusal(
                    StatusCode::UNAUTHORIZED,
                    "InvalidCredentials",
                    "Invalid credentials in Authorization header",
                )));
            }
            Some(_) => {}
        }
    }
    let sha = if repo.commits.contains_key(rev) {
        rev.to_string()
    } else if let Some(sha) = repo.refs.get(rev) {
        sha.clone()
    } else {
        return Err(Box::new(refusal(
            StatusCode::NOT_FOUND,
            "RevisionNotFound",
            &format!("Invalid rev id: {rev}"),
        )));
    };
    Ok((repo.clone(), sha))
}

fn bytes_len(repo: &TestRepo, sha: &str, file: &str) -> usize {
    repo.commits[sha].get(file).map_or(0, Vec::len)
}

/// `bytes` sent in 16 KiB chunks at `rate` bytes per second.
fn throttled(bytes: Vec<u8>, rate: u64) -> Body {
    const CHUNK: usize = 16 << 10;
    let chunks: Vec<bytes::Bytes> = bytes
        .chunks(CHUNK)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    let stream = futures::stream::iter(chunks).then(move |chunk| async move {
        let pause = std::time::Duration::from_secs_f64(chunk.len() as f64 / rate as f64);
        tokio::time::sleep(pause).await;
        Ok::<_, std::io::Error>(chunk)
    });
    Body::from_stream(stream)
}
