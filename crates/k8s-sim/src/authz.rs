//! Authorization: the deny list that stands in for RBAC ([`crate::Sim::deny`]) and the
//! `SelfSubjectAccessReview` API that answers from it.
//!
//! Every request is the anonymous user's (the simulator has no authentication). Its
//! attributes are resolved as the API server's request-info resolver does, and a request whose
//! verb and resource are on the deny list gets the 403 `Status` of the authorization filter.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde_json::{json, Value};

use crate::api::{self, Body, Params};
use crate::errors::ApiError;
use crate::store::Res;
use crate::Inner;

/// The user of every request.
pub(crate) const USER: &str = "system:anonymous";

/// The group of the authorization API.
pub(crate) const GROUP: &str = "authorization.k8s.io";

const SSAR_PLURAL: &str = "selfsubjectaccessreviews";

/// What a request asks to do, as the authorizer sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Attributes {
    pub(crate) verb: String,
    pub(crate) group: String,
    pub(crate) resource: String,
    pub(crate) subresource: String,
    pub(crate) namespace: String,
    pub(crate) name: String,
}

/// The API group a deny-list resource (`jobs`, `pods/exec`, ...) belongs to.
pub(crate) fn implied_group(resource: &str) -> &'static str {
    match resource.split('/').next().unwrap_or("") {
        "jobs" | "cronjobs" => "batch",
        "deployments" => "apps",
        "roles" | "rolebindings" => crate::store::RBAC_GROUP,
        "networkpolicies" => crate::store::NETWORKING_GROUP,
        SSAR_PLURAL => GROUP,
        "workflows" | "cronworkflows" => crate::store::ARGO_GROUP,
        _ => "",
    }
}

/// The verb of a request, as the request-info resolver maps it: `named` says whether the
/// request names an object (the path's or an exact `metadata.name` field selector's).
fn verb(method: &Method, named: bool, params: &Params) -> String {
    let watch = params.flag("watch") && params.get("watch").is_some();
    match *method {
        Method::GET | Method::HEAD if named => "get",
        Method::GET | Method::HEAD if watch => "watch",
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => return method.as_str().to_ascii_lowercase(),
    }
    .to_owned()
}

/// The object a list or watch names with an exact `metadata.name` field selector.
fn selected_name(params: &Params) -> Option<String> {
    params.get("fieldSelector")?.split(',').find_map(|term| {
        let (field, value) = term
            .split_once("==")
            .or_else(|| term.split_once('='))
            .filter(|(f, _)| !f.ends_with('!'))?;
        (field.trim() == "metadata.name" && !value.is_empty()).then(|| value.trim().to_owned())
    })
}

impl Attributes {
    /// The attributes of a request under `/api/v1` (`group` `""`) or `/apis/<group>/v1`, or
    /// `None` when the path names no resource the simulator serves (that stays a 404).
    pub(crate) fn of_request(
        group: &str,
        rest: &[&str],
        method: &Method,
        params: &Params,
    ) -> Option<Self> {
        let (namespace, parts): (&str, &[&str]) = match rest {
            // A namespace is its own namespace; `status` and `finalize` are its subresources.
            ["namespaces", ns] | ["namespaces", ns, "status" | "finalize"] if group.is_empty() => {
                (*ns, rest)
            }
            ["namespaces", ns, tail @ ..] if !tail.is_empty() => (*ns, tail),
            _ => ("", rest),
        };
        let (plural, name, subresource) = match parts {
            [plural] => (*plural, "", ""),
            [plural, name] => (*plural, *name, ""),
            [plural, name, sub] => (*plural, *name, *sub),
            _ => return None,
        };
        let res = Res::from_plural(group, plural)?;
        if !namespace.is_empty() && !res.namespaced() && res != Res::Namespace {
            return None;
        }
        // A collection GET named by a field selector is still a list or a watch.
        let verb = verb(method, !name.is_empty(), params);
        let name = if name.is_empty() && matches!(*method, Method::GET | Method::HEAD) {
            selected_name(params).unwrap_or_default()
        } else {
            name.to_owned()
        };
        Some(Self {
            verb,
            group: group.to_owned(),
            resource: plural.to_owned(),
            subresource: subresource.to_owned(),
            namespace: namespace.to_owned(),
            name,
        })
    }

    /// `resource` or `resource/subresource`: how the deny list names it.
    fn key(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }

    /// The 403 of the authorization filter, worded as kube-apiserver words it.
    pub(crate) fn forbidden(&self) -> ApiError {
        let scope = if self.namespace.is_empty() {
            "at the cluster scope".to_owned()
        } else {
            format!("in the namespace {:?}", self.namespace)
        };
        let why = format!(
            "User {USER:?} cannot {} resource {:?} in API group {:?} {scope}",
            self.verb,
            self.key(),
            self.group
        );
        let qualified = if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        };
        let message = if self.name.is_empty() {
            format!("{qualified} is forbidden: {why}")
        } else {
            format!("{qualified} {:?} is forbidden: {why}", self.name)
        };
        let mut details = json!({"kind": self.resource});
        if !self.name.is_empty() {
            details["name"] = json!(self.name);
        }
        if !self.group.is_empty() {
            details["group"] = json!(self.group);
        }
        ApiError {
            details: Some(details),
            ..ApiError::new(403, "Forbidden", message)
        }
    }
}

impl Inner {
    /// Whether the deny list refuses `attrs`.
    pub(crate) fn is_denied(&self, attrs: &Attributes) -> bool {
        let key = attrs.key();
        implied_group(&key) == attrs.group
            && self
                .denied
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(&(attrs.verb.clone(), key))
    }

    /// `Ok` when the deny list allows `attrs`, else the 403.
    ///
    /// A `get` of `pods/exec` (the websocket upgrade) must also be allowed to `create` it, as
    /// with the API server's `AuthorizePodWebsocketUpgradeCreatePermission` (on by default
    /// from Kubernetes 1.35; SPDY's POST is a `create` anyway).
    pub(crate) fn authorize(&self, attrs: &Attributes) -> Result<(), ApiError> {
        if self.is_denied(attrs) {
            return Err(attrs.forbidden());
        }
        if attrs.group.is_empty()
            && attrs.resource == "pods"
            && attrs.subresource == "exec"
            && attrs.verb == "get"
        {
            let create = Attributes {
                verb: "create".to_owned(),
                ..attrs.clone()
            };
            if self.is_denied(&create) {
                return Err(create.forbidden());
            }
        }
        Ok(())
    }
}

/// Discovery of `authorization.k8s.io` for `/apis` and `/apis/authorization.k8s.io`.
pub(crate) fn group() -> Value {
    json!({
        "name": GROUP,
        "versions": [{"groupVersion": format!("{GROUP}/v1"), "version": "v1"}],
        "preferredVersion": {"groupVersion": format!("{GROUP}/v1"), "version": "v1"},
    })
}

/// `GET /apis/authorization.k8s.io/v1`.
pub(crate) fn resources() -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/v1"),
        "resources": [{
            "name": SSAR_PLURAL, "singularName": "selfsubjectaccessreview", "namespaced": false,
            "kind": "SelfSubjectAccessReview", "verbs": ["create"],
        }],
    })
}

/// Requests under `/apis/authorization.k8s.io/v1/`.
pub(crate) async fn serve(
    inner: &Arc<Inner>,
    rest: &[&str],
    params: &Params,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let ([SSAR_PLURAL] | [SSAR_PLURAL, _]) = rest else {
        return Err(api::unknown_resource());
    };
    let method = req.method().clone();
    let name = rest.get(1).copied().unwrap_or("");
    inner.authorize(&Attributes {
        verb: verb(&method, !name.is_empty(), params),
        group: GROUP.to_owned(),
        resource: SSAR_PLURAL.to_owned(),
        name: name.to_owned(),
        ..Attributes::default()
    })?;
    if method != Method::POST || !name.is_empty() {
        return Err(ApiError::method_not_allowed());
    }
    let protobuf = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("protobuf"));
    let body = if protobuf {
        // kubectl 1.32+ sends its typed requests as protobuf; it accepts JSON back.
        review_from_protobuf(&api::body_bytes(req).await?)?
    } else {
        api::read_body(req).await?
    };
    Ok(api::json_response(201, &review(inner, body)?))
}

/// The fields of one protobuf message: `(field number, bytes)` of its length-delimited
/// fields (varints and fixed-size fields are skipped: a review needs none).
pub(crate) fn proto_fields(mut buf: &[u8]) -> Result<Vec<(u64, &[u8])>, ApiError> {
    fn varint(buf: &mut &[u8]) -> Result<u64, ApiError> {
        let mut v = 0_u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = buf
                .split_first()
                .ok_or_else(|| ApiError::bad_request("truncated protobuf body"))?;
            *buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ApiError::bad_request("bad protobuf varint"))
    }
    let mut fields = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let skip = match key & 7 {
            0 => {
                varint(&mut buf)?;
                0
            }
            1 => 8,
            5 => 4,
            2 => {
                let len = usize::try_from(varint(&mut buf)?)
                    .map_err(|_| ApiError::bad_request("bad protobuf length"))?;
                let value = buf
                    .get(..len)
                    .ok_or_else(|| ApiError::bad_request("truncated protobuf body"))?;
                fields.push((key >> 3, value));
                len
            }
            _ => return Err(ApiError::bad_request("unsupported protobuf wire type")),
        };
        buf = buf
            .get(skip..)
            .ok_or_else(|| ApiError::bad_request("truncated protobuf body"))?;
    }
    Ok(fields)
}

/// A protobuf `SelfSubjectAccessReview` (the `k8s\0` envelope around a `runtime.Unknown`) as
/// the JSON object it stands for: its spec's resource or non-resource attributes.
fn review_from_protobuf(body: &[u8]) -> Result<Value, ApiError> {
    let envelope = body
        .strip_prefix(b"k8s\0")
        .ok_or_else(|| ApiError::bad_request("the protobuf body lacks the k8s envelope"))?;
    let field = |fields: &[(u64, &[u8])], n: u64| -> Option<Vec<u8>> {
        fields
            .iter()
            .find(|(f, _)| *f == n)
            .map(|(_, v)| v.to_vec())
    };
    let unknown = proto_fields(envelope)?;
    let type_meta = proto_fields(&field(&unknown, 1).unwrap_or_default())?
        .into_iter()
        .map(|(n, v)| (n, String::from_utf8_lossy(v).into_owned()))
        .collect::<Vec<_>>();
    let kind = type_meta
        .iter()
        .find(|(n, _)| *n == 2)
        .map(|(_, k)| k.as_str());
    if kind.is_some_and(|k| k != "SelfSubjectAccessReview") {
        return Err(ApiError::bad_request(format!(
            "the kind {kind:?} of the object does not match the resource {SSAR_PLURAL}"
        )));
    }
    let raw = field(&unknown, 2).unwrap_or_default();
    let review = proto_fields(&raw)?;
    let spec_bytes = field(&review, 2).unwrap_or_default();
    let spec = proto_fields(&spec_bytes)?;
    // Strings by field number, empty ones left out as JSON leaves them out.
    let strings = |bytes: &[u8], names: &[(u64, &str)]| -> Result<Value, ApiError> {
        let mut obj = json!({});
        for (n, v) in proto_fields(bytes)? {
            if let Some((_, name)) = names.iter().find(|(f, _)| *f == n) {
                if !v.is_empty() {
                    obj[*name] = json!(String::from_utf8_lossy(v));
                }
            }
        }
        Ok(obj)
    };
    let mut json_spec = json!({});
    if let Some(attrs) = field(&spec, 1) {
        json_spec["resourceAttributes"] = strings(
            &attrs,
            &[
                (1, "namespace"),
                (2, "verb"),
                (3, "group"),
                (4, "version"),
                (5, "resource"),
                (6, "subresource"),
                (7, "name"),
            ],
        )?;
    }
    if let Some(attrs) = field(&spec, 2) {
        json_spec["nonResourceAttributes"] = strings(&attrs, &[(1, "path"), (2, "verb")])?;
    }
    Ok(json!({
        "kind": "SelfSubjectAccessReview",
        "apiVersion": format!("{GROUP}/v1"),
        "metadata": {"creationTimestamp": null},
        "spec": json_spec,
    }))
}

/// Answers a `SelfSubjectAccessReview` from the deny list: the object comes back with its
/// `status`, and like the API server leaves it, with a null `creationTimestamp`.
fn review(inner: &Inner, mut body: Value) -> Result<Value, ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    if let Some(kind) = body["kind"].as_str() {
        if kind != "SelfSubjectAccessReview" {
            return Err(ApiError::bad_request(format!(
                "the kind {kind:?} of the object does not match the resource {SSAR_PLURAL}"
            )));
        }
    }
    let spec = &body["spec"];
    let resource = &spec["resourceAttributes"];
    if resource.is_object() == spec["nonResourceAttributes"].is_object() {
        let why = if resource.is_object() {
            "cannot be specified in combination with resourceAttributes"
        } else {
            "exactly one of nonResourceAttributes or resourceAttributes must be specified"
        };
        return Err(ApiError {
            details: Some(json!({"kind": "SelfSubjectAccessReview", "group": GROUP,
                "causes": [{"reason": "FieldValueInvalid", "field": "spec.resourceAttributes",
                    "message": format!("Invalid value: \"null\": {why}")}]})),
            ..ApiError::new(
                422,
                "Invalid",
                format!(
                    "SelfSubjectAccessReview.{GROUP} \"\" is invalid: spec.resourceAttributes: Invalid value: \"null\": {why}"
                ),
            )
        });
    }
    let field = |f: &str| resource[f].as_str().unwrap_or("").to_owned();
    let attrs = Attributes {
        verb: field("verb"),
        group: field("group"),
        resource: field("resource"),
        subresource: field("subresource"),
        namespace: field("namespace"),
        name: field("name"),
    };
    let status = if resource.is_object() && inner.is_denied(&attrs) {
        json!({"allowed": false, "denied": true, "reason": format!(
            "the simulator's deny list refuses {} on {:?} in API group {:?}",
            attrs.verb, attrs.key(), attrs.group)})
    } else {
        json!({"allowed": true})
    };
    body["kind"] = json!("SelfSubjectAccessReview");
    body["apiVersion"] = json!(format!("{GROUP}/v1"));
    if !body["metadata"].is_object() {
        body["metadata"] = json!({});
    }
    if body["metadata"].get("creationTimestamp").is_none() {
        body["metadata"]["creationTimestamp"] = Value::Null;
    }
    body["status"] = status;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(group: &str, path: &str, method: Method, query: &str) -> Option<Attributes> {
        let rest: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let params = Params(crate::meta::parse_query(Some(query)));
        Attributes::of_request(group, &rest, &method, &params)
    }

    fn verb_of(group: &str, path: &str, method: Method, query: &str) -> String {
        attrs(group, path, method, query)
            .expect("a served resource")
            .verb
    }

    #[test]
    fn verbs_follow_the_request_info_resolver() {
        let pods = "namespaces/default/pods";
        assert_eq!(verb_of("", pods, Method::GET, ""), "list");
        assert_eq!(verb_of("", pods, Method::GET, "watch=1"), "watch");
        assert_eq!(verb_of("", pods, Method::GET, "watch=true"), "watch");
        assert_eq!(verb_of("", pods, Method::GET, "watch=false"), "list");
        assert_eq!(verb_of("", pods, Method::POST, ""), "create");
        assert_eq!(verb_of("", pods, Method::DELETE, ""), "deletecollection");
        assert_eq!(verb_of("", "pods", Method::GET, ""), "list");
        let p1 = "namespaces/default/pods/p1";
        assert_eq!(verb_of("", p1, Method::GET, ""), "get");
        assert_eq!(verb_of("", p1, Method::PUT, ""), "update");
        assert_eq!(verb_of("", p1, Method::PATCH, ""), "patch");
        assert_eq!(verb_of("", p1, Method::DELETE, ""), "delete");
        let log = attrs("", "namespaces/default/pods/p1/log", Method::GET, "").expect("log");
        assert_eq!((log.verb.as_str(), log.key().as_str()), ("get", "pods/log"));
        let exec = attrs("", "namespaces/default/pods/p1/exec", Method::GET, "").expect("x");
        assert_eq!(
            (exec.verb.as_str(), exec.key().as_str()),
            ("get", "pods/exec")
        );
        let status = attrs("batch", "namespaces/ns/jobs/j/status", Method::PATCH, "").expect("s");
        assert_eq!(status.key(), "jobs/status");
        assert_eq!(status.verb, "patch");
        assert_eq!(status.group, "batch");
        // A list named by a field selector is still a list, of that object.
        let one = attrs("", pods, Method::GET, "fieldSelector=metadata.name%3Dp1").expect("p");
        assert_eq!((one.verb.as_str(), one.name.as_str()), ("list", "p1"));
        // A namespace is its own namespace.
        let ns = attrs("", "namespaces/team", Method::DELETE, "").expect("ns");
        assert_eq!(
            (
                ns.verb.as_str(),
                ns.resource.as_str(),
                ns.namespace.as_str()
            ),
            ("delete", "namespaces", "team")
        );
        assert_eq!(verb_of("", "namespaces", Method::GET, ""), "list");
        // Unknown resources are not authorized here: they stay 404.
        assert!(attrs("", "namespaces/default/widgets", Method::GET, "").is_none());
        assert!(attrs("batch", "namespaces/default/pods", Method::GET, "").is_none());
    }

    #[test]
    fn protobuf_reviews_decode() {
        // What kubectl 1.32 sends for `auth can-i create pods --subresource=exec`.
        let body = b"k8s\x00\n2\n\x17authorization.k8s.io/v1\x12\x17SelfSubjectAccessReview\x12C\n\x10\n\x00\x12\x00\x1a\x00\"\x00*\x002\x008\x00B\x00\x12%\n#\n\x07default\x12\x06create\x1a\x00\"\x00*\x04pods2\x04exec:\x00\x1a\x08\x08\x00\x12\x00\x1a\x00 \x00\x1a\x00\"\x00";
        let review = review_from_protobuf(body).expect("decodes");
        assert_eq!(
            review["spec"],
            json!({"resourceAttributes": {"namespace": "default", "verb": "create",
                "resource": "pods", "subresource": "exec"}})
        );
        assert!(review_from_protobuf(b"k8s\x00\n\x05ab").is_err());
        assert!(review_from_protobuf(b"{}").is_err());
    }

    #[test]
    fn forbidden_is_worded_like_the_api_server() {
        let jobs = attrs("batch", "namespaces/default/jobs", Method::POST, "").expect("jobs");
        let e = jobs.forbidden().status();
        assert_eq!(
            e["message"],
            r#"jobs.batch is forbidden: User "system:anonymous" cannot create resource "jobs" in API group "batch" in the namespace "default""#
        );
        assert_eq!(e["code"], 403);
        assert_eq!(e["reason"], "Forbidden");
        assert_eq!(e["details"], json!({"group": "batch", "kind": "jobs"}));
        let exec = Attributes {
            verb: "create".to_owned(),
            ..attrs("", "namespaces/default/pods/p1/exec", Method::POST, "").expect("exec")
        };
        let e = exec.forbidden().status();
        assert_eq!(
            e["message"],
            r#"pods "p1" is forbidden: User "system:anonymous" cannot create resource "pods/exec" in API group "" in the namespace "default""#
        );
        assert_eq!(e["details"], json!({"name": "p1", "kind": "pods"}));
        let ns = attrs("", "namespaces", Method::GET, "").expect("namespaces");
        assert_eq!(
            ns.forbidden().message,
            r#"namespaces is forbidden: User "system:anonymous" cannot list resource "namespaces" in API group "" at the cluster scope"#
        );
    }
}
