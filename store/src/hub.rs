//! Hugging Face Hub repositories as read-only sources:
//! `hf://[datasets/]<org>/<name>[@<revision>][/<path>]`.
//!
//! The Hub serves every file of a repository at a commit as
//! `<endpoint>/[datasets/]<org>/<name>/resolve/<commit>/<path>` and describes a
//! revision (its commit sha and files) at
//! `<endpoint>/api/{models,datasets}/<org>/<name>/revision/<revision>`. A store
//! over a Hub URI asks for the revision once, then reads every file at the
//! commit it resolved to, so a branch that moves while a model downloads cannot
//! mix two commits, and [`HubStore::pinned_uri`] names that commit for the
//! lineage. The endpoint is `$HF_ENDPOINT` (the variable the Hub's own clients
//! read), else `https://huggingface.co`. The token is the `HF_TOKEN` key of the
//! Secret named beside the URI, sent as a Bearer token and never shown.

use futures::stream::{StreamExt, TryStreamExt};
use serde::Deserialize;

use crate::store::{ByteStream, ObjectEntry};
use crate::{Credentials, StoreError};

/// The Hub's address unless `HF_ENDPOINT` says otherwise.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// The variable naming another Hub endpoint (a mirror, or a test server).
pub const ENDPOINT_VAR: &str = "HF_ENDPOINT";
/// The credential key holding the Hub token (in the Secret, or plain without one).
pub const TOKEN_KEY: &str = "HF_TOKEN";
/// The revision read when the URI names none.
pub const DEFAULT_REVISION: &str = "main";
/// Hub repository and organisation names are at most this long.
const MAX_NAME_LEN: usize = 96;

/// Whether a repository holds a model or a dataset: the Hub keeps them apart,
/// under different URL prefixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepoKind {
    Model,
    Dataset,
}

impl RepoKind {
    /// The start of the repository's pages (`datasets/` for datasets).
    fn page_prefix(self) -> &'static str {
        match self {
            Self::Model => "",
            Self::Dataset => "datasets/",
        }
    }

    /// The API collection: `models` or `datasets`.
    fn api_collection(self) -> &'static str {
        match self {
            Self::Model => "models",
            Self::Dataset => "datasets",
        }
    }
}

/// A parsed `hf://` URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubRef {
    pub kind: RepoKind,
    /// `<org>/<name>`.
    pub repo: String,
    /// A branch, tag or commit sha (`main` when the URI names none).
    pub revision: String,
    /// A file or folder inside the repository (`""`: all of it); a trailing `/`
    /// marks a folder.
    pub path: String,
}

impl HubRef {
    /// Parses the part of an `hf://` URI after the scheme. Errors name the part
    /// that is wrong.
    pub fn parse(rest: &str) -> Result<Self, String> {
        let (kind, rest) = match rest.split_once('/') {
            Some(("datasets", rest)) => (RepoKind::Dataset, rest),
            Some(("spaces", _)) => {
                return Err(
                    "Spaces are applications, not models or datasets; use hf://<org>/<model> or hf://datasets/<org>/<dataset>"
                        .into(),
                );
            }
            _ => (RepoKind::Model, rest),
        };
        let form = match kind {
            RepoKind::Model => "hf://<org>/<model>[@<revision>][/<path>]",
            RepoKind::Dataset => "hf://datasets/<org>/<dataset>[@<revision>][/<path>]",
        };
        let (org, rest) = rest
            .split_once('/')
            .ok_or_else(|| format!("expected {form}: the repository needs an organisation"))?;
        check_name("organisation", org, form)?;
        let (name_rev, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (name, revision) = match name_rev.split_once('@') {
            Some((name, revision)) => (name, Some(revision)),
            None => (name_rev, None),
        };
        check_name("repository name", name, form)?;
        let revision = match revision {
            None => DEFAULT_REVISION.to_string(),
            Some(r) => parse_revision(r)?,
        };
        if path
            .trim_end_matches('/')
            .split('/')
            .any(|s| matches!(s, "." | ".."))
            || path.contains("//")
            || path.starts_with('/')
        {
            return Err(format!(
                "path {path:?} must be a plain file or folder path in the repository (no empty, '.' or '..' parts)"
            ));
        }
        Ok(Self {
            kind,
            repo: format!("{org}/{name}"),
            revision,
            path: path.to_string(),
        })
    }

    /// The URI of this file or folder at `revision`.
    pub fn uri_at(&self, revision: &str) -> String {
        let mut uri = format!(
            "hf://{}{}@{}",
            self.kind.page_prefix(),
            self.repo,
            revision.replace('/', "%2F")
        );
        if !self.path.is_empty() {
            uri.push('/');
            uri.push_str(&self.path);
        }
        uri
    }
}

/// Organisation and repository names: letters, digits, `-`, `_` and `.`, not
/// starting or ending with `-` or `.`, without `--` or `..`.
fn check_name(what: &str, name: &str, form: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{what} {name:?} {why} (expected {form})"));
    if name.is_empty() {
        return Err(format!("the {what} is empty (expected {form})"));
    }
    if name.len() > MAX_NAME_LEN {
        return bad(&format!("is longer than {MAX_NAME_LEN} characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return bad("may hold only letters, digits, '-', '_' and '.'");
    }
    if name.starts_with(['-', '.'])
        || name.ends_with(['-', '.'])
        || name.contains("--")
        || name.contains("..")
    {
        return bad("must not start or end with '-' or '.', nor hold '--' or '..'");
    }
    Ok(())
}

/// A branch, tag or commit. A `/` inside one (`refs/pr/1`) is written `%2F`, as
/// the Hub's own `hf://` paths write it, so that the path can follow.
fn parse_revision(raw: &str) -> Result<String, String> {
    let revision = raw.replace("%2F", "/").replace("%2f", "/");
    let ok_chars = revision
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if revision.is_empty()
        || !ok_chars
        || revision.contains("..")
        || revision
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(format!(
            "revision {raw:?} is not a branch, tag or commit sha (letters, digits, '-', '_', '.', and '%2F' for a '/' inside one)"
        ));
    }
    Ok(revision)
}

/// Whether `revision` is a full commit sha, which never moves.
pub fn is_commit(revision: &str) -> bool {
    revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit())
}

/// What the Hub says about one revision of a repository.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The commit sha the revision points at.
    pub commit: String,
    /// Every file at that commit, with its size when the Hub gave it.
    pub files: Vec<ObjectEntry>,
}

#[derive(Deserialize)]
struct RevisionInfo {
    sha: String,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
    #[serde(default)]
    size: Option<u64>,
}

/// A store over one `hf://` URI.
pub struct HubStore {
    uri: String,
    hub: HubRef,
    endpoint: url::Url,
    client: reqwest::Client,
    token: Option<String>,
    /// Where the token would come from, for the message when one is needed.
    credentials: Credentials,
    resolved: tokio::sync::OnceCell<Resolved>,
}

/// Everything but the token.
impl std::fmt::Debug for HubStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubStore")
            .field("uri", &self.uri)
            .field("endpoint", &self.endpoint.as_str())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl HubStore {
    /// A store over `hub` (parsed from `uri`), with the endpoint from
    /// `HF_ENDPOINT` and the token from `credentials`' `HF_TOKEN`.
    pub fn open(uri: &str, hub: HubRef, credentials: &Credentials) -> Result<Self, StoreError> {
        let endpoint = std::env::var(ENDPOINT_VAR)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.into());
        Self::with(uri, hub, credentials, &endpoint, credentials.get(TOKEN_KEY))
    }

    /// A store over `hub` at `endpoint` with `token`; `credentials` only say
    /// where the token came from.
    pub(crate) fn with(
        uri: &str,
        hub: HubRef,
        credentials: &Credentials,
        endpoint: &str,
        token: Option<String>,
    ) -> Result<Self, StoreError> {
        let endpoint = url::Url::parse(endpoint)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| StoreError::InvalidUri {
                uri: endpoint.to_string(),
                reason: format!("{ENDPOINT_VAR} must be an http(s) URL such as {DEFAULT_ENDPOINT}"),
            })?;
        let client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| StoreError::Unreachable {
                uri: uri.to_string(),
                reason: format!("cannot set up an HTTP client: {e}"),
            })?;
        Ok(Self {
            uri: uri.to_string(),
            hub,
            endpoint,
            client,
            token,
            credentials: credentials.clone(),
            resolved: tokio::sync::OnceCell::new(),
        })
    }

    /// The parsed URI.
    pub fn hub_ref(&self) -> &HubRef {
        &self.hub
    }

    /// `endpoint` with `segments` appended, each percent-encoded.
    fn url<'a>(&self, segments: impl IntoIterator<Item = &'a str>) -> url::Url {
        let mut url = self.endpoint.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn get_request(&self, url: url::Url) -> reqwest::RequestBuilder {
        let request = self.client.get(url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// The revision's commit and files, asked for once per store.
    pub async fn resolve(&self) -> Result<&Resolved, StoreError> {
        self.resolved
            .get_or_try_init(|| self.fetch_revision())
            .await
    }

    async fn fetch_revision(&self) -> Result<Resolved, StoreError> {
        let (org, name) = self.hub.repo.split_once('/').unwrap_or_default();
        let mut url = self.url([
            "api",
            self.hub.kind.api_collection(),
            org,
            name,
            "revision",
            &self.hub.revision,
        ]);
        // With blobs the Hub adds each file's size.
        url.set_query(Some("blobs=true"));
        let response = self.send(url).await?;
        let info: RevisionInfo = response.json().await.map_err(|e| StoreError::Hub {
            uri: self.uri.clone(),
            reason: format!(
                "the Hub's description of revision {} is not what was expected: {}",
                self.hub.revision,
                e.without_url()
            ),
        })?;
        if !is_commit(&info.sha) {
            return Err(StoreError::Hub {
                uri: self.uri.clone(),
                reason: format!(
                    "the Hub named commit {:?} for revision {}, which is not a commit sha",
                    info.sha, self.hub.revision
                ),
            });
        }
        let mut files: Vec<ObjectEntry> = info
            .siblings
            .into_iter()
            .map(|s| ObjectEntry {
                name: s.rfilename,
                size: s.size.unwrap_or(0),
            })
            .collect();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Resolved {
            commit: info.sha.to_ascii_lowercase(),
            files,
        })
    }

    /// `hf://...@<commit>/<path>`: this URI at the commit its revision resolved to.
    pub async fn pinned_uri(&self) -> Result<String, StoreError> {
        let commit = &self.resolve().await?.commit;
        Ok(self.hub.uri_at(commit))
    }

    /// The files under the URI's path, named relative to it: the file itself
    /// (`""`) when the path names one, else everything in the folder. Hidden
    /// names (`.gitattributes`) are skipped, as every store skips them.
    pub async fn list(&self) -> Result<Vec<ObjectEntry>, StoreError> {
        let resolved = self.resolve().await?;
        let path = self.hub.path.as_str();
        let visible = |name: &str| !name.split('/').any(|p| p.starts_with('.'));
        if !path.is_empty()
            && !path.ends_with('/')
            && let Some(file) = resolved.files.iter().find(|f| f.name == path)
        {
            return Ok(vec![ObjectEntry {
                name: String::new(),
                size: file.size,
            }]);
        }
        let prefix = if path.is_empty() || path.ends_with('/') {
            path.to_string()
        } else {
            format!("{path}/")
        };
        let entries: Vec<ObjectEntry> = resolved
            .files
            .iter()
            .filter_map(|f| {
                let name = f.name.strip_prefix(&prefix)?;
                visible(name).then(|| ObjectEntry {
                    name: name.to_string(),
                    size: f.size,
                })
            })
            .collect();
        if entries.is_empty() && !path.is_empty() {
            return Err(StoreError::Hub {
                uri: self.uri.clone(),
                reason: format!(
                    "{} has no file or folder {path:?} at revision {} (commit {})",
                    self.hub.repo, self.hub.revision, resolved.commit
                ),
            });
        }
        Ok(entries)
    }

    /// Streams the file `rel` below the URI's path, at the resolved commit. A
    /// name the revision does not hold is [`StoreError::NotFound`] without a
    /// request.
    pub async fn get(&self, rel: &str) -> Result<ByteStream, StoreError> {
        let resolved = self.resolve().await?;
        let path = match (self.hub.path.trim_end_matches('/'), rel) {
            (base, "") => base.to_string(),
            ("", rel) => rel.to_string(),
            (base, rel) => format!("{base}/{rel}"),
        };
        let shown = self.hub.uri_at(&resolved.commit);
        let shown = if rel.is_empty() {
            shown
        } else {
            format!("{}/{rel}", shown.trim_end_matches('/'))
        };
        if !resolved.files.iter().any(|f| f.name == path) {
            return Err(StoreError::NotFound { uri: shown });
        }
        let (org, name) = self.hub.repo.split_once('/').unwrap_or_default();
        let mut segments = Vec::new();
        if self.hub.kind == RepoKind::Dataset {
            segments.push("datasets");
        }
        segments.extend([org, name, "resolve", resolved.commit.as_str()]);
        segments.extend(path.split('/'));
        let response = self.send(self.url(segments)).await?;
        Ok(response
            .bytes_stream()
            .map_err(move |e| StoreError::Unreachable {
                uri: shown.clone(),
                reason: e.without_url().to_string(),
            })
            .boxed())
    }

    /// Sends a GET, turning the Hub's refusals into messages that say what to
    /// do. The URL is never shown with the token, which travels in a header
    /// that redirects to another host drop.
    async fn send(&self, url: url::Url) -> Result<reqwest::Response, StoreError> {
        let response = self
            .get_request(url)
            .send()
            .await
            .map_err(|e| StoreError::Unreachable {
                uri: self.uri.clone(),
                reason: format!("{} ({})", e.without_url(), self.endpoint),
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let code = header("x-error-code").unwrap_or_default();
        let hub_message = header("x-error-message")
            .map(|m| format!(" (the Hub says: {m})"))
            .unwrap_or_default();
        let repo = &self.hub.repo;
        let reason = match status.as_u16() {
            401 if self.token.is_none() => format!(
                "the Hub answered 401 Unauthorized for {repo}: it is gated or private (or does not exist) and no token was given; {}{hub_message}",
                self.token_hint()
            ),
            401 => format!(
                "the Hub answered 401 Unauthorized for {repo}: it rejected the token; check {}{hub_message}",
                self.token_source()
            ),
            403 => format!(
                "the Hub answered 403 Forbidden for {repo}: the token's account has no access to it (for a gated repository, accept its conditions on the Hub; a fine-grained token needs read access to it); the token is {}{hub_message}",
                self.token_source()
            ),
            404 if code == "RevisionNotFound" => {
                format!("{repo} has no revision {}{hub_message}", self.hub.revision)
            }
            404 if code == "EntryNotFound" => {
                return Err(StoreError::NotFound {
                    uri: self.uri.clone(),
                });
            }
            404 => format!(
                "the Hub has no {} {repo} at revision {}{}{hub_message}",
                match self.hub.kind {
                    RepoKind::Model => "model repository",
                    RepoKind::Dataset => "dataset repository",
                },
                self.hub.revision,
                // The Hub answers a token without access to a private
                // repository as if the repository did not exist.
                if self.token.is_some() {
                    format!(
                        ", or it is private and the token ({}) cannot see it",
                        self.token_source()
                    )
                } else {
                    String::new()
                }
            ),
            _ => {
                return Err(StoreError::Unreachable {
                    uri: self.uri.clone(),
                    reason: format!("the Hub answered {status}{hub_message}"),
                });
            }
        };
        Err(StoreError::Hub {
            uri: self.uri.clone(),
            reason,
        })
    }

    /// Where a token for this URI is read from.
    fn token_source(&self) -> String {
        match &self.credentials {
            Credentials::Secret(secret) => format!(
                "key {TOKEN_KEY} of Secret {secret:?} (in the pod as {})",
                crate::credential_env_var(secret, TOKEN_KEY)
            ),
            Credentials::Ambient => format!("the {TOKEN_KEY} variable"),
        }
    }

    /// How to give a token.
    fn token_hint(&self) -> String {
        match &self.credentials {
            Credentials::Secret(secret) => format!(
                "add a Hub token with read access as key {TOKEN_KEY} of Secret {secret:?}, the credentialsSecretRef beside the URI"
            ),
            Credentials::Ambient => format!(
                "set credentialsSecretRef beside the URI to a Secret whose key {TOKEN_KEY} holds a Hub token with read access"
            ),
        }
    }
}

#[cfg(test)]
mod tests;
