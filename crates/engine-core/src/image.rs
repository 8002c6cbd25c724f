//! Images: pull policy, build specs, progress events, and tar streams.

use std::collections::BTreeMap;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::ImageRef;

/// A tar archive as a stream of byte chunks, used for build contexts and file copies.
pub type TarStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// A [`TarStream`] over bytes already in memory.
#[must_use]
pub fn tar_stream_from_bytes(bytes: impl Into<Bytes>) -> TarStream {
    let bytes = bytes.into();
    Box::pin(futures_util::stream::iter([Ok(bytes)]))
}

/// Reads a whole [`TarStream`] into memory, refusing more than `limit` bytes.
///
/// # Errors
/// [`Error::InvalidSpec`] naming `tar` when the archive is larger than `limit`; the error
/// the stream failed with (see [`Error::from_io`]).
pub async fn collect_tar_stream(mut stream: TarStream, limit: usize) -> Result<Bytes> {
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Error::from_io("read a tar stream", e))?;
        if buf.len() + chunk.len() > limit {
            return Err(Error::invalid_spec(
                "tar",
                format!("the archive is larger than the {limit}-byte limit"),
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// When to pull an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PullPolicy {
    /// Always pull, even when present.
    Always,
    /// Pull only when missing.
    #[default]
    IfNotPresent,
    /// Never pull: a missing image is [`Error::ImageNotFound`].
    Never,
}

impl std::str::FromStr for PullPolicy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "always" | "Always" => Ok(PullPolicy::Always),
            "if_not_present" | "IfNotPresent" => Ok(PullPolicy::IfNotPresent),
            "never" | "Never" => Ok(PullPolicy::Never),
            other => Err(Error::invalid_spec(
                "pull_policy",
                format!("unknown pull policy {other:?}: expected always, if_not_present or never"),
            )),
        }
    }
}

/// What an engine knows about a local image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ImageInfo {
    /// The reference it was asked for by.
    pub reference: ImageRef,
    /// The engine's id for it (`sha256:...`), when known.
    pub id: Option<String>,
    /// Its size in bytes, when known.
    pub size_bytes: Option<u64>,
}

impl ImageInfo {
    /// An image known by reference and optional id.
    #[must_use]
    pub fn new(reference: ImageRef, id: Option<String>, size_bytes: Option<u64>) -> Self {
        Self {
            reference,
            id,
            size_bytes,
        }
    }
}

/// One progress report of a pull or build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProgressEvent {
    /// The layer or step it is about, when there is one.
    pub id: Option<String>,
    /// What is happening ("Downloading", "Step 2/4 : COPY . /", ...).
    pub status: String,
    /// Bytes done, when known.
    pub current: Option<u64>,
    /// Bytes in all, when known.
    pub total: Option<u64>,
}

impl ProgressEvent {
    /// A status line without byte counts.
    #[must_use]
    pub fn status(id: Option<String>, status: impl Into<String>) -> Self {
        Self {
            id,
            status: status.into(),
            current: None,
            total: None,
        }
    }

    /// A status line with byte counts.
    #[must_use]
    pub fn with_counts(mut self, current: Option<u64>, total: Option<u64>) -> Self {
        self.current = current;
        self.total = total;
        self
    }
}

/// Receives [`ProgressEvent`]s; cheap to clone. [`Progress::none`] ignores them.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use berth_engine_core::{Progress, ProgressEvent};
///
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let sink = seen.clone();
/// let progress = Progress::new(move |e: &ProgressEvent| sink.lock().unwrap().push(e.status.clone()));
/// progress.emit(&ProgressEvent::status(None, "Pulling"));
/// assert_eq!(seen.lock().unwrap().as_slice(), ["Pulling"]);
/// ```
#[derive(Clone, Default)]
pub struct Progress(Option<ProgressCallback>);

type ProgressCallback = Arc<dyn Fn(&ProgressEvent) + Send + Sync>;

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Progress(callback)"
        } else {
            "Progress(none)"
        })
    }
}

impl Progress {
    /// Ignores every event.
    #[must_use]
    pub fn none() -> Self {
        Self(None)
    }

    /// Calls `f` for every event.
    pub fn new(f: impl Fn(&ProgressEvent) + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(f)))
    }

    /// Reports one event.
    pub fn emit(&self, event: &ProgressEvent) {
        if let Some(f) = &self.0 {
            f(event);
        }
    }
}

/// What to build: a tar context holding a Dockerfile, and the tag to give the result.
///
/// ```
/// use berth_engine_core::{tar_stream_from_bytes, BuildSpec, ImageRef};
///
/// let context = Vec::new(); // a tar archive with a Dockerfile in it
/// let spec = BuildSpec::new(ImageRef::new("local/tool:dev").unwrap(), tar_stream_from_bytes(context))
///     .with_build_arg("VERSION", "1.2");
/// assert_eq!(spec.dockerfile, "Dockerfile");
/// ```
#[non_exhaustive]
pub struct BuildSpec {
    /// The tag of the built image.
    pub tag: ImageRef,
    /// The build context as a tar stream.
    pub context: TarStream,
    /// The Dockerfile's path inside the context, default `Dockerfile`.
    pub dockerfile: String,
    /// Build arguments.
    pub build_args: BTreeMap<String, String>,
    /// Labels for the image.
    pub labels: BTreeMap<String, String>,
    /// Whether to pull newer base images, default false.
    pub pull: bool,
}

impl fmt::Debug for BuildSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BuildSpec")
            .field("tag", &self.tag)
            .field("dockerfile", &self.dockerfile)
            .field("build_args", &self.build_args)
            .field("labels", &self.labels)
            .field("pull", &self.pull)
            .finish_non_exhaustive()
    }
}

impl BuildSpec {
    /// A build of `context` tagged `tag`, with the defaults documented on each field.
    #[must_use]
    pub fn new(tag: ImageRef, context: TarStream) -> Self {
        Self {
            tag,
            context,
            dockerfile: "Dockerfile".into(),
            build_args: BTreeMap::new(),
            labels: BTreeMap::new(),
            pull: false,
        }
    }

    /// Adds one build argument.
    #[must_use]
    pub fn with_build_arg(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.build_args.insert(key.into(), value.into());
        self
    }

    /// Sets the Dockerfile path inside the context.
    #[must_use]
    pub fn with_dockerfile(mut self, path: impl Into<String>) -> Self {
        self.dockerfile = path.into();
        self
    }

    /// Checks the spec before any I/O.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `dockerfile` or `build_args`.
    pub fn validate(&self) -> Result<()> {
        if self.dockerfile.is_empty() || self.dockerfile.starts_with('/') {
            return Err(Error::invalid_spec(
                "dockerfile",
                format!(
                    "must be a path relative to the context, got {:?}",
                    self.dockerfile
                ),
            ));
        }
        crate::spec::validate_env(&self.build_args).map_err(|_| {
            Error::invalid_spec(
                "build_args",
                "names must be non-empty without '=' or NUL, values without NUL",
            )
        })
    }
}
