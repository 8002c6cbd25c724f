//! The HTTP server: routing, discovery, CRUD, list and watch.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::errors::ApiError;
use crate::fields::{self, FieldValidation};
use crate::meta::{self, FieldSelector, LabelSelector};
use crate::store::{Event, EventType, Res};
use crate::{admission, authz, exec, jobs, kubelet, openapi, tables, Inner};

/// A response body: whole or streamed.
pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// How often a watch that allows bookmarks gets one.
const BOOKMARK_PERIOD: Duration = Duration::from_secs(10);

/// The Kubernetes version the simulator claims to be (its schema is k8s-openapi's `v1_33`).
pub(crate) const VERSION_MINOR: &str = "33";

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

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

pub(crate) fn json_response(code: u16, v: &Value) -> Response<Body> {
    let mut resp = Response::new(full(serde_json::to_vec(v).unwrap_or_default()));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

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
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

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

pub(crate) async fn read_body(req: Request<Incoming>) -> Result<Value, ApiError> {
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if content_type.contains("protobuf") || content_type.contains("cbor") {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/merge-patch+json, application/strategic-merge-patch+json, application/json-patch+json, application/apply-patch+yaml (got {content_type})"),
        ));
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
    let result = match segs.as_slice() {
        ["version"] => Ok(json_response(
            200,
            &json!({
                "major": "1", "minor": VERSION_MINOR,
                "gitVersion": format!("v1.{VERSION_MINOR}.0"),
                "gitCommit": "berth-k8s-sim", "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24",
                "compiler": "gc", "platform": "linux/amd64",
            }),
        )),
        ["healthz" | "livez" | "readyz", ..] => {
            let mut r = Response::new(full("ok"));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain"),
            );
            Ok(r)
        }
        ["api"] => Ok(json_response(
            200,
            &json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": inner.addr.to_string()}],
            }),
        )),
        ["api", "v1"] => Ok(json_response(200, &core_resources())),
        ["apis"] => Ok(json_response(
            200,
            &json!({"kind": "APIGroupList", "apiVersion": "v1",
                "groups": [authz::group(), batch_group()]}),
        )),
        ["apis", authz::GROUP] => {
            let mut g = authz::group();
            g["kind"] = json!("APIGroup");
            g["apiVersion"] = json!("v1");
            Ok(json_response(200, &g))
        }
        ["apis", authz::GROUP, "v1"] => Ok(json_response(200, &authz::resources())),
        ["apis", "batch"] => {
            let mut g = batch_group();
            g["kind"] = json!("APIGroup");
            g["apiVersion"] = json!("v1");
            Ok(json_response(200, &g))
        }
        ["apis", "batch", "v1"] => Ok(json_response(200, &batch_resources())),
        ["openapi", "v3"] => Ok(json_response(200, &openapi::index())),
        ["openapi", "v3", "api", "v1"] => Ok(json_response(200, &openapi::group_version(""))),
        ["openapi", "v3", "apis", "batch", "v1"] => {
            Ok(json_response(200, &openapi::group_version("batch")))
        }
        ["openapi", "v3", "apis", authz::GROUP, "v1"] => {
            Ok(json_response(200, &openapi::group_version(authz::GROUP)))
        }
        ["api", "v1", rest @ ..] => resource(&inner, "", rest, params, req).await,
        ["apis", "batch", "v1", rest @ ..] => resource(&inner, "batch", rest, params, req).await,
        ["apis", authz::GROUP, "v1", rest @ ..] => authz::serve(&inner, rest, &params, req).await,
        _ => Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )),
    };
    result.unwrap_or_else(|e| error_response(&e))
}

fn resource_entry(
    name: &str,
    singular: &str,
    namespaced: bool,
    kind: &str,
    verbs: &[&str],
    short: &[&str],
) -> Value {
    let mut r = json!({
        "name": name, "singularName": singular, "namespaced": namespaced,
        "kind": kind, "verbs": verbs,
    });
    if !short.is_empty() {
        r["shortNames"] = json!(short);
    }
    if matches!(name, "pods" | "jobs") {
        r["categories"] = json!(["all"]);
    }
    r
}

const OBJECT_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn core_resources() -> Value {
    json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            resource_entry("events", "event", true, "Event", OBJECT_VERBS, &["ev"]),
            resource_entry("limitranges", "limitrange", true, "LimitRange", OBJECT_VERBS, &["limits"]),
            resource_entry("namespaces", "namespace", false, "Namespace",
                &["create", "delete", "get", "list", "patch", "update", "watch"], &["ns"]),
            resource_entry("nodes", "node", false, "Node",
                &["create", "delete", "get", "list", "patch", "update", "watch"], &["no"]),
            resource_entry("persistentvolumeclaims", "persistentvolumeclaim", true,
                "PersistentVolumeClaim", OBJECT_VERBS, &["pvc"]),
            resource_entry("pods", "pod", true, "Pod", OBJECT_VERBS, &["po"]),
            resource_entry("pods/exec", "", true, "PodExecOptions", &["create", "get"], &[]),
            resource_entry("pods/log", "", true, "Pod", &["get"], &[]),
            resource_entry("pods/status", "", true, "Pod", &["get", "patch", "update"], &[]),
            resource_entry("resourcequotas", "resourcequota", true, "ResourceQuota", OBJECT_VERBS, &["quota"]),
        ],
    })
}

fn batch_group() -> Value {
    json!({
        "name": "batch",
        "versions": [{"groupVersion": "batch/v1", "version": "v1"}],
        "preferredVersion": {"groupVersion": "batch/v1", "version": "v1"},
    })
}

fn batch_resources() -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "batch/v1",
        "resources": [
            resource_entry("jobs", "job", true, "Job", OBJECT_VERBS, &[]),
            resource_entry("jobs/status", "", true, "Job", &["get", "patch", "update"], &[]),
        ],
    })
}

pub(crate) fn unknown_resource() -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

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

/// Whether the client asked for a server-side table.
fn wants_table(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

struct Filter {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn from(params: &Params) -> Result<Self, ApiError> {
        Ok(Self {
            labels: LabelSelector::parse(params.get("labelSelector").unwrap_or(""))
                .map_err(ApiError::bad_request)?,
            fields: FieldSelector::parse(params.get("fieldSelector").unwrap_or(""))
                .map_err(ApiError::bad_request)?,
        })
    }

    fn matches(&self, obj: &Value) -> bool {
        self.labels
            .matches(obj.get("metadata").and_then(|m| m.get("labels")))
            && self.fields.matches(obj)
    }

    /// What a watch with this filter sees of `e`, like the API server: a change that brings an
    /// object into the selection is ADDED, one that takes it out is DELETED.
    fn event_type(&self, e: &Event) -> Option<&'static str> {
        let now = self.matches(&e.object);
        match (e.typ, e.old.as_deref().map(|o| self.matches(o))) {
            (EventType::Modified, Some(before)) => match (before, now) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            },
            (typ, _) => now.then_some(typ.as_str()),
        }
    }
}

async fn collection(
    inner: &Arc<Inner>,
    res: Res,
    ns: Option<&str>,
    method: &Method,
    params: Params,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    if ns.is_none() && res.namespaced() && *method != Method::GET {
        return Err(ApiError::method_not_allowed());
    }
    match *method {
        Method::GET if params.flag("watch") && params.get("watch").is_some() => {
            watch(inner, res, ns, &params, wants_table(&req))
        }
        Method::GET => {
            let filter = Filter::from(&params)?;
            let (items, rv) = inner.store.list(res, ns);
            let items: Vec<Value> = items.into_iter().filter(|o| filter.matches(o)).collect();
            if wants_table(&req) {
                let include = params
                    .get("includeObject")
                    .unwrap_or("PartialObjectMetadata");
                return Ok(json_response(
                    200,
                    &tables::table(res, &items, include, Some(rv)),
                ));
            }
            Ok(json_response(
                200,
                &json!({
                    "kind": format!("{}List", res.kind()),
                    "apiVersion": res.api_version(),
                    "metadata": {"resourceVersion": rv.to_string()},
                    "items": items,
                }),
            ))
        }
        Method::POST => {
            let ns = ns.unwrap_or("");
            let dry_run = params.get("dryRun").is_some_and(|d| d == "All");
            let validation = FieldValidation::parse(params.get("fieldValidation"))?;
            let mut body = read_body(req).await?;
            let warnings = fields::decode(res, &mut body, validation)?;
            let created = create(inner, res, ns, body, dry_run).await?;
            Ok(with_warnings(json_response(201, &created), &warnings))
        }
        Method::DELETE => {
            let filter = Filter::from(&params)?;
            let body = read_body(req).await?;
            let (items, rv) = inner.store.list(res, ns);
            let mut deleted = Vec::new();
            for item in items.into_iter().filter(|o| filter.matches(o)) {
                let name = item["metadata"]["name"].as_str().unwrap_or("").to_owned();
                let item_ns = item["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                if let Ok(obj) = delete(inner, res, &item_ns, &name, &params, &body).await {
                    deleted.push(obj);
                }
            }
            Ok(json_response(
                200,
                &json!({
                    "kind": format!("{}List", res.kind()),
                    "apiVersion": res.api_version(),
                    "metadata": {"resourceVersion": rv.to_string()},
                    "items": deleted,
                }),
            ))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

async fn object(
    inner: &Arc<Inner>,
    res: Res,
    ns: &str,
    name: &str,
    method: &Method,
    params: Params,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    match *method {
        Method::GET => {
            let obj = inner
                .store
                .get(res, ns, name)
                .ok_or_else(|| ApiError::not_found(res, name))?;
            if wants_table(&req) {
                let include = params
                    .get("includeObject")
                    .unwrap_or("PartialObjectMetadata");
                return Ok(json_response(
                    200,
                    &tables::table(res, &[obj], include, None),
                ));
            }
            Ok(json_response(200, &obj))
        }
        Method::PUT => {
            let validation = FieldValidation::parse(params.get("fieldValidation"))?;
            let mut body = read_body(req).await?;
            let warnings = fields::decode(res, &mut body, validation)?;
            let expected = body["metadata"]["resourceVersion"]
                .as_str()
                .map(str::to_owned);
            if body["metadata"]["name"].as_str().is_some_and(|n| n != name) {
                return Err(ApiError::bad_request(
                    "the name of the object does not match the name on the URL",
                ));
            }
            let updated = inner
                .store
                .update(res, ns, name, expected.as_deref(), |obj| {
                    let status = obj["status"].clone();
                    let md = obj["metadata"].clone();
                    *obj = body;
                    // The main resource does not change status; keep server-set metadata.
                    obj["status"] = status;
                    for f in ["deletionTimestamp", "ownerReferences"] {
                        if obj["metadata"][f].is_null() && !md[f].is_null() {
                            obj["metadata"][f] = md[f].clone();
                        }
                    }
                    Ok(())
                })?;
            Ok(with_warnings(json_response(200, &updated), &warnings))
        }
        Method::PATCH => {
            let validation = FieldValidation::parse(params.get("fieldValidation"))?;
            let body = read_body(req).await?;
            let mut warnings = Vec::new();
            let updated = patch(inner, res, ns, name, &body, |obj| {
                warnings = fields::decode(res, obj, validation)?;
                Ok(())
            })?;
            Ok(with_warnings(json_response(200, &updated), &warnings))
        }
        Method::DELETE => {
            let body = read_body(req).await?;
            let obj = delete(inner, res, ns, name, &params, &body).await?;
            Ok(json_response(200, &obj))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// PATCH bodies are applied as JSON merge patches (strategic merge patches included, which
/// then replace lists instead of merging them) and as JSON patches when the body is an array;
/// `decode` then sees the patched object, as the API server decodes the result of a patch.
fn patch(
    inner: &Arc<Inner>,
    res: Res,
    ns: &str,
    name: &str,
    body: &Value,
    decode: impl FnOnce(&mut Value) -> Result<(), ApiError>,
) -> Result<Value, ApiError> {
    inner.store.update(res, ns, name, None, |obj| {
        if let Value::Array(ops) = body {
            json_patch(obj, ops)?;
        } else {
            meta::merge_patch(obj, body);
        }
        decode(obj)
    })
}

/// A small RFC 6902 subset: add, replace and remove on object paths and array indexes.
fn json_patch(obj: &mut Value, ops: &[Value]) -> Result<(), ApiError> {
    for op in ops {
        let path = op["path"].as_str().unwrap_or("");
        let parts: Vec<String> = path
            .split('/')
            .skip(1)
            .map(|p| p.replace("~1", "/").replace("~0", "~"))
            .collect();
        let Some((last, parents)) = parts.split_last() else {
            return Err(ApiError::bad_request("empty JSON patch path"));
        };
        let mut cur = &mut *obj;
        for p in parents {
            cur = match cur {
                Value::Object(m) => m.entry(p.clone()).or_insert(json!({})),
                Value::Array(a) => p
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| a.get_mut(i))
                    .ok_or_else(|| ApiError::bad_request(format!("no path {path}")))?,
                _ => return Err(ApiError::bad_request(format!("no path {path}"))),
            };
        }
        match (op["op"].as_str().unwrap_or(""), cur) {
            ("add" | "replace", Value::Object(m)) => {
                m.insert(last.clone(), op["value"].clone());
            }
            ("add", Value::Array(a)) if last == "-" => a.push(op["value"].clone()),
            ("add" | "replace", Value::Array(a)) => {
                let i: usize = last
                    .parse()
                    .map_err(|_| ApiError::bad_request(format!("bad index in {path}")))?;
                if i < a.len() {
                    a[i] = op["value"].clone();
                } else {
                    a.push(op["value"].clone());
                }
            }
            ("remove", Value::Object(m)) => {
                m.remove(last);
            }
            ("remove", Value::Array(a)) => {
                if let Ok(i) = last.parse::<usize>() {
                    if i < a.len() {
                        a.remove(i);
                    }
                }
            }
            (other, _) => {
                return Err(ApiError::bad_request(format!(
                    "unsupported JSON patch op {other:?} at {path}"
                )))
            }
        }
    }
    Ok(())
}

async fn status_subresource(
    inner: &Arc<Inner>,
    res: Res,
    ns: &str,
    name: &str,
    method: &Method,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    match *method {
        Method::GET => inner
            .store
            .get(res, ns, name)
            .map(|o| json_response(200, &o))
            .ok_or_else(|| ApiError::not_found(res, name)),
        Method::PUT | Method::PATCH => {
            let is_put = *method == Method::PUT;
            let body = read_body(req).await?;
            let expected = if is_put {
                body["metadata"]["resourceVersion"]
                    .as_str()
                    .map(str::to_owned)
            } else {
                None
            };
            let updated = inner
                .store
                .update(res, ns, name, expected.as_deref(), |obj| {
                    if is_put {
                        obj["status"] = body["status"].clone();
                    } else {
                        let mut patched = obj.clone();
                        meta::merge_patch(&mut patched, &body);
                        obj["status"] = patched["status"].clone();
                    }
                    Ok(())
                })?;
            Ok(json_response(200, &updated))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// Fills a namespace's defaults.
pub(crate) fn default_namespace(mut obj: Value) -> Value {
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_owned();
    obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
    obj["spec"] = json!({"finalizers": ["kubernetes"]});
    obj["status"] = json!({"phase": "Active"});
    obj
}

/// How long a new claim stays Pending ([`crate::Sim::bind_claims_after`]).
fn pending_claim_delay(inner: &Inner) -> Option<std::time::Duration> {
    *inner
        .claim_bind_delay
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn create(
    inner: &Arc<Inner>,
    res: Res,
    ns: &str,
    mut body: Value,
    dry_run: bool,
) -> Result<Value, ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    if let Some(kind) = body["kind"].as_str() {
        if kind != res.kind() {
            return Err(ApiError::bad_request(format!(
                "the kind {kind:?} of the object does not match the resource {}",
                res.plural()
            )));
        }
    }
    if let Some(body_ns) = body["metadata"]["namespace"].as_str() {
        if res.namespaced() && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
    }
    let name = body["metadata"]["name"].as_str().unwrap_or("").to_owned();
    body = match res {
        Res::Namespace => default_namespace(body),
        Res::Pod => {
            let mut pod = kubelet::default_pod(body, &name)?;
            admission::admit_pod(inner, ns, &mut pod)?;
            pod
        }
        Res::Pvc => {
            let mut pvc = kubelet::default_pvc(body, &name)?;
            if pending_claim_delay(inner).is_some() {
                kubelet::unbind(&mut pvc);
            }
            pvc
        }
        Res::Job => jobs::default_job(body, &name)?,
        Res::Node | Res::Event | Res::LimitRange => body,
        Res::ResourceQuota => {
            let mut quota = body;
            quota["status"] = json!({"hard": quota["spec"]["hard"], "used": {}});
            quota
        }
    };
    if dry_run {
        return Ok(body);
    }
    if res == Res::Job {
        // The job's uid labels its pod template: fill it in before anyone sees the job.
        let created = inner.store.create_with(res, ns, body, |obj| {
            let name = obj["metadata"]["name"].as_str().unwrap_or("").to_owned();
            let uid = obj["metadata"]["uid"].as_str().unwrap_or("").to_owned();
            jobs::label_template(obj, &name, &uid);
        })?;
        let name = created["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        // Create the first pod at once, so `kubectl wait -l job-name=...` right after
        // `kubectl create` finds it.
        jobs::reconcile(inner);
        return Ok(inner.store.get(res, ns, &name).unwrap_or(created));
    }
    let created = inner.store.create(res, ns, body)?;
    if res == Res::Pvc {
        if let Err(e) = kubelet::create_claim_volume(inner, &created).await {
            let name = created["metadata"]["name"].as_str().unwrap_or("");
            inner.store.remove(res, ns, name);
            return Err(e);
        }
        if let Some(delay) = pending_claim_delay(inner) {
            kubelet::bind_later(inner, &created, delay);
        }
    }
    if res == Res::Pod {
        kubelet::ensure_workers(inner);
    }
    Ok(created)
}

/// How dependents are handled when deleting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Propagation {
    Orphan,
    Background,
    Foreground,
}

async fn delete(
    inner: &Arc<Inner>,
    res: Res,
    ns: &str,
    name: &str,
    params: &Params,
    body: &Value,
) -> Result<Value, ApiError> {
    let policy = body["propagationPolicy"]
        .as_str()
        .or_else(|| params.get("propagationPolicy"))
        .map(str::to_owned);
    let orphan_flag = body["orphanDependents"]
        .as_bool()
        .or_else(|| params.get("orphanDependents").map(|v| v == "true"));
    let policy = match (policy.as_deref(), orphan_flag) {
        (Some("Foreground"), _) => Propagation::Foreground,
        (Some("Background"), _) => Propagation::Background,
        (Some("Orphan"), _) | (None, Some(true)) => Propagation::Orphan,
        (Some(other), _) => {
            return Err(ApiError::bad_request(format!(
                "unknown propagationPolicy {other:?}"
            )))
        }
        // batch/v1 jobs orphan their pods by default; everything else deletes in background.
        (None, _) if res == Res::Job => Propagation::Orphan,
        (None, _) => Propagation::Background,
    };
    if let Some(pre) = body["preconditions"]["uid"].as_str() {
        let current = inner
            .store
            .get(res, ns, name)
            .ok_or_else(|| ApiError::not_found(res, name))?;
        if current["metadata"]["uid"].as_str() != Some(pre) {
            return Err(ApiError::conflict(res, name));
        }
    }
    match res {
        Res::Namespace => {
            if matches!(name, "default" | "kube-system" | "kube-public") {
                return Err(ApiError::forbidden(
                    res,
                    name,
                    "this namespace may not be deleted",
                ));
            }
            let obj = inner.store.update(res, "", name, None, |obj| {
                if obj["metadata"]["deletionTimestamp"].is_null() {
                    obj["metadata"]["deletionTimestamp"] = json!(meta::now_rfc3339());
                    obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                }
                obj["status"]["phase"] = json!("Terminating");
                Ok(())
            })?;
            jobs::reconcile(inner);
            Ok(obj)
        }
        Res::Pod => {
            jobs::count_deleted_pod(inner, ns, name);
            kubelet::delete_pod(inner, ns, name)
        }
        Res::Pvc => {
            let obj = inner
                .store
                .remove(res, ns, name)
                .ok_or_else(|| ApiError::not_found(res, name))?;
            kubelet::remove_claim_volume(inner, &obj);
            Ok(obj)
        }
        Res::Job => jobs::delete_job(inner, ns, name, policy),
        Res::Node | Res::Event | Res::ResourceQuota | Res::LimitRange => inner
            .store
            .remove(res, ns, name)
            .ok_or_else(|| ApiError::not_found(res, name)),
    }
}

fn event_line(typ: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": typ, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn watch(
    inner: &Arc<Inner>,
    res: Res,
    ns: Option<&str>,
    params: &Params,
    table: bool,
) -> Result<Response<Body>, ApiError> {
    let filter = Filter::from(params)?;
    let since = match params.get("resourceVersion") {
        None | Some("" | "0") => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}")))?,
        ),
    };
    let initial_events = params.get("sendInitialEvents") == Some("true");
    let bookmarks = params.get("allowWatchBookmarks") == Some("true");
    let since = if initial_events { None } else { since };
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .map(Duration::from_secs);
    let include = params
        .get("includeObject")
        .unwrap_or("PartialObjectMetadata")
        .to_owned();
    let (tx, resp) = streaming("application/json");
    let start = inner.store.watch(res, ns, since);
    let ns = ns.map(str::to_owned);
    tokio::spawn(async move {
        let render = |obj: &Value| {
            if table {
                tables::table(res, std::slice::from_ref(obj), &include, None)
            } else {
                obj.clone()
            }
        };
        let mut start = match start {
            Ok(start) => start,
            Err(oldest) => {
                let status = ApiError::new(
                    410,
                    "Expired",
                    format!(
                        "too old resource version: {} ({oldest})",
                        since.unwrap_or(0)
                    ),
                )
                .status();
                let _ = tx.send(event_line("ERROR", &status)).await;
                return;
            }
        };
        for e in &start.backlog {
            if let Some(typ) = filter.event_type(e) {
                if tx.send(event_line(typ, &render(&e.object))).await.is_err() {
                    return;
                }
            }
        }
        if initial_events {
            let bookmark = json!({
                "kind": res.kind(), "apiVersion": res.api_version(),
                "metadata": {"resourceVersion": start.rv.to_string(),
                    "annotations": {"k8s.io/initial-events-end": "true"}},
            });
            if tx.send(event_line("BOOKMARK", &bookmark)).await.is_err() {
                return;
            }
        }
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut last_rv = start.rv;
        let mut bookmark_tick = tokio::time::interval(BOOKMARK_PERIOD);
        bookmark_tick.tick().await;
        loop {
            let next = async {
                match deadline {
                    Some(d) => tokio::time::timeout_at(d, start.live.recv()).await.ok(),
                    None => Some(start.live.recv().await),
                }
            };
            tokio::select! {
                () = tx.closed() => return,
                _ = bookmark_tick.tick(), if bookmarks => {
                    let bookmark = json!({
                        "kind": res.kind(), "apiVersion": res.api_version(),
                        "metadata": {"resourceVersion": last_rv.to_string()},
                    });
                    if tx.send(event_line("BOOKMARK", &bookmark)).await.is_err() {
                        return;
                    }
                }
                next = next => {
                    let Some(Ok(e)) = next else { return };
                    last_rv = last_rv.max(e.rv);
                    let in_scope = e.res == res
                        && ns.as_deref().is_none_or(|ns| !res.namespaced() || e.namespace() == ns);
                    if !in_scope {
                        continue;
                    }
                    let Some(typ) = filter.event_type(&e) else { continue };
                    if tx.send(event_line(typ, &render(&e.object))).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    Ok(resp)
}
