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
            "{what}; check the kubeconfig (KUBECONFIG, kubernetes.kubeconfig), the context (kubernetes.context) and that the API server is reachable (kubectl cluster-info)"
        ),
        source: Some(Box::new(err)),
    }
}

fn status(err: &kube::Error) -> Option<&kube::core::Status> {
    match err {
        kube::Error::Api(status) => Some(status.as_ref()),
        _ => None,
    }
}

pub(crate) fn is_not_found(err: &kube::Error) -> bool {
    status(err).is_some_and(|s| s.code == 404)
}

pub(crate) fn is_conflict(err: &kube::Error) -> bool {
    status(err).is_some_and(|s| s.code == 409)
}

/// Maps an API error of `step` in `address`'s namespace.
pub(crate) fn api(address: &str, step: &str, err: kube::Error) -> Error {
    match status(&err) {
        // RBAC, Pod Security admission, ResourceQuota and LimitRange all answer 403; the
        // hint follows the server's message.
        Some(s) if s.code == 403 => crate::policy::refused(address, step, &s.message),
        Some(s) if s.code == 422 || s.code == 400 => Error::invalid_spec(
            "kubernetes",
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
