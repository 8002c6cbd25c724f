//! Secrets and ConfigMaps sent as protobuf, as kubectl 1.32+ sends its typed creates
//! (`kubectl create secret generic`, `kubectl create configmap`): the `k8s\0` envelope around a
//! `runtime.Unknown` whose raw bytes are the object, decoded to the JSON it stands for. Only
//! the fields these two kinds have are read (metadata's name, namespace, labels and
//! annotations; data, binaryData, stringData, type).

use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::authz::proto_fields;
use crate::errors::ApiError;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn first<'a>(fields: &[(u64, &'a [u8])], n: u64) -> Option<&'a [u8]> {
    fields.iter().find(|(f, _)| *f == n).map(|(_, v)| *v)
}

/// The entries of a protobuf map field `n` (each a message of key 1 and value 2).
fn entries(
    fields: &[(u64, &[u8])],
    n: u64,
    value: impl Fn(&[u8]) -> Value,
) -> Result<Option<Value>, ApiError> {
    let mut out = Map::new();
    for (_, entry) in fields.iter().filter(|(f, _)| *f == n) {
        let e = proto_fields(entry)?;
        out.insert(
            text(first(&e, 1).unwrap_or_default()),
            value(first(&e, 2).unwrap_or_default()),
        );
    }
    Ok((!out.is_empty()).then_some(Value::Object(out)))
}

fn metadata(bytes: &[u8]) -> Result<Value, ApiError> {
    let f = proto_fields(bytes)?;
    let mut meta = Map::new();
    for (n, key) in [(1, "name"), (2, "generateName"), (3, "namespace")] {
        if let Some(v) = first(&f, n).filter(|v| !v.is_empty()) {
            meta.insert(key.into(), text(v).into());
        }
    }
    let string = |v: &[u8]| Value::String(text(v));
    for (n, key) in [(11, "labels"), (12, "annotations")] {
        if let Some(map) = entries(&f, n, string)? {
            meta.insert(key.into(), map);
        }
    }
    Ok(Value::Object(meta))
}

/// The JSON of a protobuf Secret or ConfigMap body; `None` for another kind (which the caller
/// answers 415, as before).
pub(crate) fn from_protobuf(body: &[u8]) -> Result<Option<Value>, ApiError> {
    let Some(envelope) = body.strip_prefix(b"k8s\0") else {
        return Ok(None);
    };
    let unknown = proto_fields(envelope)?;
    let type_meta = proto_fields(first(&unknown, 1).unwrap_or_default())?;
    let kind = text(first(&type_meta, 2).unwrap_or_default());
    let raw = proto_fields(first(&unknown, 2).unwrap_or_default())?;
    let b64 = |v: &[u8]| Value::String(base64::engine::general_purpose::STANDARD.encode(v));
    let string = |v: &[u8]| Value::String(text(v));
    let mut obj = json!({
        "apiVersion": "v1",
        "kind": kind,
        "metadata": metadata(first(&raw, 1).unwrap_or_default())?,
    });
    match kind.as_str() {
        "Secret" => {
            if let Some(data) = entries(&raw, 2, b64)? {
                obj["data"] = data;
            }
            if let Some(t) = first(&raw, 3).filter(|t| !t.is_empty()) {
                obj["type"] = text(t).into();
            }
            if let Some(data) = entries(&raw, 4, string)? {
                obj["stringData"] = data;
            }
        }
        "ConfigMap" => {
            if let Some(data) = entries(&raw, 2, string)? {
                obj["data"] = data;
            }
            if let Some(data) = entries(&raw, 3, b64)? {
                obj["binaryData"] = data;
            }
        }
        _ => return Ok(None),
    }
    Ok(Some(obj))
}
