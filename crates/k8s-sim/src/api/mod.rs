//! The HTTP server: connections, routing, and the request and response helpers the handlers
//! share.
//!
//! - [`discovery`]: `/version`, health, API groups and resource lists, OpenAPI;
//! - [`handlers`]: the verbs on a collection, an object and its `status`;
//! - [`write`]: what create, patch and delete do beyond storing (defaults, admission, the
//!   kubelet and the controllers, propagation);
//! - [`watch`]: watch streams, with bookmarks and initial events.

mod discovery;
mod handlers;
mod watch;
mod write;

pub(crate) use write::{default_namespace, Propagation};

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use handlers::{collection, object, status_subresource};

use crate::errors::ApiError;
use crate::fields;
use crate::meta;
use crate::store::{Res, ARGO_GROUP, NETWORKING_GROUP, RBAC_GROUP};
use crate::{authz, exec, kubelet, Inner};

/// A response body: whole or streamed.
pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The Kubernetes version the simulator claims to be (its schema is k8s-openapi's `v1_33`).
pub(crate) const VERSION_MINOR: &str = "33";

/// Serves HTTP/1.1 (with upgrades, for exec) on `listener` until the runtime stops.
pub(crate) async fn serve(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let inner = inner.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let inner = inner.clone();
                async move { Ok::<_, Infallible>(handle(inner, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

/// A whole body.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// A JSON response with status `code`.
pub(crate) fn json_response(code: u16, v: &Value) -> Response<Body> {
    let mut resp = Response::new(full(serde_json::to_vec(v).unwrap_or_default()));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// The API server's `Status` answer for `e`.
pub(crate) fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.status())
}

/// `resp` with one `Warning` header per message, as the API server sends them (kubectl
/// prints each as `Warning: ...`).
fn with_warnings(mut resp: Response<Body>, warnings: &[String]) -> Response<Body> {
    for w in warnings {
        if let Ok(v) = hyper::header::HeaderValue::from_str(&fields::warning_header(w)) {
            resp.headers_mut().append(hyper::header::WARNING, v);
        }
    }
    resp
}

/// A streamed response fed by the returned sender.
pub(crate) fn streaming(content_type: &'static str) -> (mpsc::Sender<Bytes>, Response<Body>) {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    (tx, resp)
}

/// Request parameters that the handlers read.
pub(crate) struct Params(pub(crate) Vec<(String, String)>);

impl Params {
    /// The first value of `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in order.
    pub(crate) fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Whether `key` is given as true: `1`, `true`, `True`, or present without a value.
    pub(crate) fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("1" | "true" | "True" | ""))
    }
}

/// The request's whole body, whatever its content type.
pub(crate) async fn body_bytes(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    Ok(req
        .into_body()
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?
        .to_bytes())
}

/// The 415 of a body in a format the simulator does not read.
fn unsupported(content_type: &str) -> ApiError {
    ApiError::new(
        415,
        "UnsupportedMediaType",
        format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/merge-patch+json, application/strategic-merge-patch+json, application/json-patch+json, application/apply-patch+yaml (got {content_type})"),
    )
}

/// The request body as JSON: JSON or YAML bodies, `Null` when empty; a protobuf Secret or
/// ConfigMap (kubectl 1.32+'s typed creates); other protobuf and CBOR are 415.
pub(crate) async fn read_body(req: Request<Incoming>) -> Result<Value, ApiError> {
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if content_type.contains("protobuf") {
        if let Some(obj) = crate::secrets::from_protobuf(&body_bytes(req).await?)? {
            return Ok(obj);
        }
        return Err(unsupported(&content_type));
    }
    if content_type.contains("cbor") {
        return Err(unsupported(&content_type));
    }
    let bytes = body_bytes(req).await?;
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    let json = serde_json::from_slice(&bytes);
    if content_type.contains("yaml") {
        // JSON is YAML too; only what is not JSON goes through the YAML parser.
        if let Ok(v) = json {
            return Ok(v);
        }
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| ApiError::bad_request(format!("the YAML body is not UTF-8: {e}")))?;
        return fields::parse_yaml(text)
            .map_err(|e| ApiError::bad_request(format!("error converting YAML to JSON: {e}")));
    }
    json.map_err(|e| {
        ApiError::bad_request(format!(
            "the body is not JSON (send application/json or application/yaml): {e}"
        ))
    })
}

/// Answers one request (errors become `Status` responses).
async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let params = Params(meta::parse_query(req.uri().query()));
    tracing::debug!(method = %req.method(), uri = %req.uri(), "request");
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(meta::percent_decode)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    if let Some(resp) = discovery::answer(&inner, &segs) {
        inner.requests.discovery();
        return resp;
    }
    match segs.as_slice() {
        ["api", "v1", rest @ ..] => inner.requests.resource("", rest, req.method(), &params),
        ["apis", authz::GROUP, _, rest @ ..] => inner.requests.add(
            crate::requests::method_verb(req.method()),
            rest.last().copied().unwrap_or("unknown"),
        ),
        ["apis", group, _, rest @ ..] => {
            inner.requests.resource(group, rest, req.method(), &params)
        }
        _ => inner.requests.unknown(req.method()),
    }
    let result = match segs.as_slice() {
        ["api", "v1", rest @ ..] => resource(&inner, "", rest, params, req).await,
        ["apis", group @ ("batch" | "apps" | RBAC_GROUP | NETWORKING_GROUP), "v1", rest @ ..] => {
            resource(&inner, group, rest, params, req).await
        }
        ["apis", authz::GROUP, "v1", rest @ ..] => authz::serve(&inner, rest, &params, req).await,
        // Argo's CRDs: served once installed; before, the group is unknown to the server.
        ["apis", ARGO_GROUP, "v1alpha1", rest @ ..] => {
            if inner.argo_crds.load(std::sync::atomic::Ordering::SeqCst) {
                resource(&inner, ARGO_GROUP, rest, params, req).await
            } else {
                return page_not_found();
            }
        }
        _ => Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )),
    };
    result.unwrap_or_else(|e| error_response(&e))
}

/// What kube-apiserver answers for a path under a group it does not serve (an API group
/// whose CRDs are not installed): the end of its delegation chain, Go's `http.NotFound`, a
/// plain-text `404 page not found`, not a `Status`.
pub(crate) fn page_not_found() -> Response<Body> {
    let mut resp = Response::new(full("404 page not found\n"));
    *resp.status_mut() = StatusCode::NOT_FOUND;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut().insert(
        "x-content-type-options",
        hyper::header::HeaderValue::from_static("nosniff"),
    );
    resp
}

/// The 404 for a path that names no served resource.
pub(crate) fn unknown_resource() -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

/// Routes a request under a group version (`rest` is the path after it), after
/// authorization.
async fn resource(
    inner: &Arc<Inner>,
    group: &str,
    rest: &[&str],
    params: Params,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let lookup = |plural: &str| Res::from_plural(group, plural).ok_or_else(unknown_resource);
    let method = req.method().clone();
    // Authorization comes before routing, as in the API server's filter chain; a path that
    // names no served resource stays a 404.
    if let Some(attrs) = authz::Attributes::of_request(group, rest, &method, &params) {
        inner.authorize(&attrs)?;
    }
    match rest {
        [plural] => {
            let res = lookup(plural)?;
            collection(inner, res, None, &method, params, req).await
        }
        ["namespaces", ns] if group.is_empty() => {
            object(inner, Res::Namespace, "", ns, &method, params, req).await
        }
        ["namespaces", ns, "status" | "finalize"] if group.is_empty() => {
            object(inner, Res::Namespace, "", ns, &method, params, req).await
        }
        ["namespaces", ns, plural] => {
            let res = lookup(plural)?;
            if !res.namespaced() {
                return Err(unknown_resource());
            }
            collection(inner, res, Some(ns), &method, params, req).await
        }
        ["namespaces", ns, plural, name] => {
            let res = lookup(plural)?;
            object(inner, res, ns, name, &method, params, req).await
        }
        ["namespaces", ns, plural, name, sub] => {
            let res = lookup(plural)?;
            match (res, *sub) {
                (Res::Pod, "log") => kubelet::logs(inner, ns, name, &params).await,
                (Res::Pod, "exec") => exec::exec(inner, ns, name, &params, req).await,
                (_, "status") => status_subresource(inner, res, ns, name, &method, req).await,
                _ => Err(unknown_resource()),
            }
        }
        _ => Err(unknown_resource()),
    }
}
