//! The verbs on a collection (list, create, delete a selection), on one object (get,
//! update, patch, delete) and on its `status` subresource.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde_json::{json, Value};

use super::watch::watch;
use super::write::{create, delete, patch};
use super::{json_response, read_body, with_warnings, Body, Params};
use crate::errors::ApiError;
use crate::fields::{self, FieldValidation};
use crate::meta::{self, FieldSelector, LabelSelector};
use crate::store::{Event, EventType, Res};
use crate::{tables, Inner};

/// Whether the client asked for a server-side table.
fn wants_table(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

/// `items` as the server-side table a client asked for, with the objects as its
/// `includeObject` parameter says (`PartialObjectMetadata` by default).
fn table_response(res: Res, items: &[Value], params: &Params, rv: Option<u64>) -> Response<Body> {
    let include = params
        .get("includeObject")
        .unwrap_or("PartialObjectMetadata");
    json_response(200, &tables::table(res, items, include, rv))
}

/// A request's label and field selectors.
pub(super) struct Filter {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    /// The selectors of `params` (`labelSelector`, `fieldSelector`).
    pub(super) fn from_params(params: &Params) -> Result<Self, ApiError> {
        Ok(Self {
            labels: LabelSelector::parse(params.get("labelSelector").unwrap_or(""))
                .map_err(ApiError::bad_request)?,
            fields: FieldSelector::parse(params.get("fieldSelector").unwrap_or(""))
                .map_err(ApiError::bad_request)?,
        })
    }

    /// Whether `obj` is selected.
    fn matches(&self, obj: &Value) -> bool {
        self.labels
            .matches(obj.get("metadata").and_then(|m| m.get("labels")))
            && self.fields.matches(obj)
    }

    /// What a watch with this filter sees of `e`, like the API server: a change that brings an
    /// object into the selection is ADDED, one that takes it out is DELETED.
    pub(super) fn event_type(&self, e: &Event) -> Option<&'static str> {
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

/// A request on a collection of `res` (in `ns`, or across namespaces when `None`).
pub(super) async fn collection(
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
            let filter = Filter::from_params(&params)?;
            let (items, rv) = inner.store.list(res, ns);
            let items: Vec<Value> = items.into_iter().filter(|o| filter.matches(o)).collect();
            if wants_table(&req) {
                return Ok(table_response(res, &items, &params, Some(rv)));
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
            let filter = Filter::from_params(&params)?;
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

/// A request on object `name` of `res` in `ns`.
pub(super) async fn object(
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
                return Ok(table_response(res, &[obj], &params, None));
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

/// `GET`, `PUT` and `PATCH` on an object's `status`: only the status changes.
pub(super) async fn status_subresource(
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
