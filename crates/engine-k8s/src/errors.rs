//! Mapping kube's errors onto the engine contract's kinds.

use berth_engine_core::{BackendKind, Error};

pub(crate) const BACKEND: BackendKind = BackendKind::Kubernetes;

pub(crate) fn unavailable(
    address: &str,
    what: &str,
    err: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::Unavailable {
        backend: BACKEND,
        address: address.to_owned(),
        hint: format!(
            "{what}; check the kubeconfig (KUBECONFIG or the file configured), the context and that the API server is reachable (kubectl cluster-info)"
        ),
        source: Some(Box::new(err)),
    }
}

pub(crate) fn status(err: &kube::Error) -> Option<&kube::core::Status> {
    match err {
        kube::Error::Api(status) => Some(status.as_ref()),
        _ => None,
    }
}

pub(crate) fn is_not_found(err: &kube::Error) -> bool {
    status(err).is_some_and(|s| s.code == 404)
}

pub(crate) fn is_forbidden(err: &kube::Error) -> bool {
    status(err).is_some_and(|s| s.code == 403)
}

pub(crate) fn is_conflict(err: &kube::Error) -> bool {
    status(err).is_some_and(|s| s.code == 409)
}

/// The field a refused request names: the first `field` among the Status causes (as
/// `spec.template.spec.containers[0].image`), else the one its message names (`Job.batch "x"
/// is invalid: FIELD: why`), else the kind of object refused.
fn invalid_field(s: &kube::core::Status) -> String {
    s.details
        .as_ref()
        .and_then(|d| {
            d.causes
                .iter()
                .map(|c| c.field.as_str())
                .find(|f| !f.is_empty())
        })
        .map(str::to_owned)
        .or_else(|| field_in_message(&s.message).map(str::to_owned))
        .or_else(|| {
            s.details
                .as_ref()
                .map(|d| d.kind.clone())
                .filter(|k| !k.is_empty())
        })
        .unwrap_or_else(|| "request".to_owned())
}

/// The field of a Kubernetes validation message: `X "name" is invalid: FIELD: why`.
pub(crate) fn field_in_message(message: &str) -> Option<&str> {
    let (_, rest) = message.split_once(" is invalid: ")?;
    let field = rest.split(": ").next()?.trim();
    (!field.is_empty() && !field.contains(' ')).then_some(field)
}

/// Maps an API error of `step` in `address`'s namespace.
pub(crate) fn api(address: &str, step: &str, err: kube::Error) -> Error {
    match status(&err) {
        // RBAC, Pod Security admission, ResourceQuota and LimitRange all answer 403; the
        // hint follows the server's message.
        Some(s) if s.code == 403 => crate::policy::refused(address, step, &s.message),
        Some(s) if s.code == 422 || s.code == 400 => Error::invalid_spec(
            invalid_field(s),
            format!("the API server refused to {step}: {}", s.message),
        ),
        Some(s) if s.code == 404 => Error::NotFound {
            what: "object",
            name: format!("{step}: {}", s.message),
        },
        Some(_) => Error::backend(BACKEND, step.to_owned(), err),
        None => match err {
            kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::HttpError(_) => {
                unavailable(address, &format!("cannot {step}"), err)
            }
            other => Error::backend(BACKEND, step.to_owned(), other),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_engine_core::ErrorKind;

    fn refused(status: serde_json::Value) -> Error {
        let status: kube::core::Status = serde_json::from_value(status).expect("a Status");
        api(
            "https://api:6443",
            "create job",
            kube::Error::Api(Box::new(status)),
        )
    }

    #[test]
    fn a_422_names_the_field_of_its_cause() {
        let err = refused(serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 422,
            "reason": "Invalid",
            "message": "Job.batch \"x\" is invalid: spec.template.spec.containers[0].image: Required value",
            "details": {"name": "x", "group": "batch", "kind": "Job", "causes": [
                {"reason": "FieldValueRequired", "message": "Required value",
                 "field": "spec.template.spec.containers[0].image"}
            ]}
        }));
        assert_eq!(err.kind(), ErrorKind::InvalidSpec);
        match &err {
            Error::InvalidSpec { field, reason } => {
                assert_eq!(field, "spec.template.spec.containers[0].image");
                assert!(reason.contains("Required value"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_400_without_causes_names_the_field_of_its_message_or_the_object() {
        let err = refused(serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 422,
            "reason": "Invalid",
            "message": "Pod \"p\" is invalid: spec.containers[0].resources.requests: Invalid value: \"2\": must be less than or equal to cpu limit",
        }));
        assert!(
            matches!(&err, Error::InvalidSpec { field, .. } if field == "spec.containers[0].resources.requests"),
            "{err:?}"
        );
        let err = refused(serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 400,
            "reason": "BadRequest", "message": "the body of the request was in an unknown format",
            "details": {"kind": "jobs"}
        }));
        assert!(
            matches!(&err, Error::InvalidSpec { field, .. } if field == "jobs"),
            "{err:?}"
        );
    }
}
