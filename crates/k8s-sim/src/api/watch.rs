//! Watch streams: events since a resource version (410 Expired when it is too old) or
//! initial events with their bookmark, then live events through the request's selectors,
//! with periodic bookmarks and `timeoutSeconds`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::Response;
use serde_json::{json, Value};

use super::handlers::Filter;
use super::{streaming, Body, Params};
use crate::errors::ApiError;
use crate::store::Res;
use crate::{tables, Inner};

/// How often a watch that allows bookmarks gets one.
const BOOKMARK_PERIOD: Duration = Duration::from_secs(10);

/// One line of a watch stream.
fn event_line(typ: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": typ, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// `GET ...?watch=true` on a collection: a stream of events, as a table when `table`.
pub(super) fn watch(
    inner: &Arc<Inner>,
    res: Res,
    ns: Option<&str>,
    params: &Params,
    table: bool,
) -> Result<Response<Body>, ApiError> {
    let filter = Filter::from_params(params)?;
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
    let start = match inner.expiry.refuses(since) {
        Some(oldest) => Err(oldest),
        None => inner.store.watch(res, ns, since),
    };
    let mut cut = inner.expiry.subscribe();
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
                _ = cut.changed() => {
                    let status = ApiError::new(410, "Expired", "too old resource version (expired on demand)".to_owned()).status();
                    let _ = tx.send(event_line("ERROR", &status)).await;
                    return;
                }
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
