//! API errors and the `Status` bodies they become.

use serde_json::{json, Value};

use crate::store::Res;

/// An error answered as a `metav1.Status` with `status: Failure`.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
    pub(crate) message: String,
    pub(crate) details: Option<Value>,
}

fn details(res: Res, name: &str) -> Value {
    let mut d = json!({"name": name, "kind": res.plural()});
    if !res.group().is_empty() {
        d["group"] = json!(res.group());
    }
    d
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub(crate) fn not_found(res: Res, name: &str) -> Self {
        Self {
            details: Some(details(res, name)),
            ..Self::new(
                404,
                "NotFound",
                format!("{} \"{name}\" not found", res.qualified()),
            )
        }
    }

    pub(crate) fn already_exists(res: Res, name: &str) -> Self {
        Self {
            details: Some(details(res, name)),
            ..Self::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", res.qualified()),
            )
        }
    }

    pub(crate) fn conflict(res: Res, name: &str) -> Self {
        Self {
            details: Some(details(res, name)),
            ..Self::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    res.qualified()
                ),
            )
        }
    }

    pub(crate) fn forbidden(res: Res, name: &str, why: &str) -> Self {
        Self {
            details: Some(details(res, name)),
            ..Self::new(
                403,
                "Forbidden",
                format!("{} \"{name}\" is forbidden: {why}", res.qualified()),
            )
        }
    }

    /// 422 Invalid with one cause, worded like the API server: `Job.batch "x" is invalid: ...`.
    pub(crate) fn invalid(res: Res, name: &str, field: &str, cause: &str, msg: &str) -> Self {
        let kind = if res.group().is_empty() {
            res.kind().to_owned()
        } else {
            format!("{}.{}", res.kind(), res.group())
        };
        let mut d = json!({
            "name": name,
            "kind": res.kind(),
            "causes": [{"reason": cause, "message": msg, "field": field}],
        });
        if !res.group().is_empty() {
            d["group"] = json!(res.group());
        }
        Self {
            details: Some(d),
            ..Self::new(
                422,
                "Invalid",
                format!("{kind} \"{name}\" is invalid: {field}: {msg}"),
            )
        }
    }

    pub(crate) fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// The `Status` object.
    pub(crate) fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}
