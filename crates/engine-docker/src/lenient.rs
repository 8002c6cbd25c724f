//! Reading answers that a Docker-compatible daemon spells differently from Docker.
//!
//! bollard's models are Docker's: an enum field holding a value Docker never sends fails the
//! whole call. Podman's compatibility API sends container states of its own (`stopped`,
//! `configured`, `initialized`), so a container that is between exit and cleanup cannot be
//! inspected or listed through bollard alone. These calls keep bollard's happy path and, only
//! when its parse fails, read the same answer again with the states mapped onto Docker's
//! (bollard hands back the payload with its `json_data_content` feature).

use bollard::errors::Error as BollardError;
use bollard::models::{ContainerInspectResponse, ContainerSummary};
use bollard::query_parameters::{InspectContainerOptions, ListContainersOptions};
use bollard::Docker;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// `GET /containers/{name}/json`, tolerating states Docker does not have.
pub(crate) async fn inspect_container(
    docker: &Docker,
    name: &str,
) -> Result<ContainerInspectResponse, BollardError> {
    reparse(
        docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await,
        |value| normalise_state(value.pointer_mut("/State/Status")),
    )
}

/// `GET /containers/json`, tolerating states Docker does not have.
pub(crate) async fn list_containers(
    docker: &Docker,
    options: ListContainersOptions,
) -> Result<Vec<ContainerSummary>, BollardError> {
    reparse(docker.list_containers(Some(options)).await, |value| {
        if let Some(items) = value.as_array_mut() {
            for item in items {
                normalise_state(item.get_mut("State"));
            }
        }
    })
}

/// `result` unchanged unless bollard could not parse the answer: then the payload, with
/// `fix` applied, parsed again (the original error when that fails too).
fn reparse<T: DeserializeOwned>(
    result: Result<T, BollardError>,
    fix: impl FnOnce(&mut Value),
) -> Result<T, BollardError> {
    match result {
        Err(BollardError::JsonDataError {
            message,
            contents,
            column,
        }) => {
            let fixed = serde_json::from_str::<Value>(&contents)
                .ok()
                .and_then(|mut value| {
                    fix(&mut value);
                    serde_json::from_value(value).ok()
                });
            fixed.ok_or(BollardError::JsonDataError {
                message,
                contents,
                column,
            })
        }
        other => other,
    }
}

/// Docker's name for a container state: Podman's `stopped` (exited, cleanup pending) is
/// `exited`, `configured` and `initialized` (made, never started) are `created`; anything else
/// unknown becomes the empty state bollard has a variant for.
fn docker_state(state: &str) -> &str {
    match state {
        "created" | "running" | "paused" | "restarting" | "removing" | "exited" | "dead"
        | "stopping" => state,
        "stopped" => "exited",
        "configured" | "initialized" => "created",
        _ => "",
    }
}

fn normalise_state(state: Option<&mut Value>) {
    if let Some(state) = state {
        if let Some(name) = state.as_str() {
            *state = Value::String(docker_state(&name.to_ascii_lowercase()).to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerStateStatusEnum, ContainerSummaryStateEnum};

    fn parse_error<T: DeserializeOwned>(json: &str) -> Result<T, BollardError> {
        match serde_json::from_str::<T>(json) {
            Ok(v) => Ok(v),
            Err(e) => Err(BollardError::JsonDataError {
                message: e.to_string(),
                contents: json.to_owned(),
                column: e.column(),
            }),
        }
    }

    #[test]
    fn podmans_stopped_container_inspects_as_exited() {
        let json = r#"{"Id":"abc","Name":"/x","State":{"Status":"stopped","Running":false,"ExitCode":137}}"#;
        assert!(
            serde_json::from_str::<ContainerInspectResponse>(json).is_err(),
            "bollard alone refuses it"
        );
        let parsed: ContainerInspectResponse = reparse(parse_error(json), |v| {
            normalise_state(v.pointer_mut("/State/Status"));
        })
        .expect("parsed after mapping the state");
        let state = parsed.state.expect("state");
        assert_eq!(state.status, Some(ContainerStateStatusEnum::EXITED));
        assert_eq!(state.exit_code, Some(137));
    }

    #[test]
    fn unknown_and_made_states_map_onto_dockers() {
        let json = r#"[{"Id":"a","State":"configured"},{"Id":"b","State":"Weird"},{"Id":"c","State":"running"}]"#;
        let parsed: Vec<ContainerSummary> = reparse(parse_error(json), |value| {
            for item in value.as_array_mut().expect("array") {
                normalise_state(item.get_mut("State"));
            }
        })
        .expect("parsed");
        let states: Vec<_> = parsed.into_iter().map(|c| c.state).collect();
        assert_eq!(
            states,
            [
                Some(ContainerSummaryStateEnum::CREATED),
                Some(ContainerSummaryStateEnum::EMPTY),
                Some(ContainerSummaryStateEnum::RUNNING)
            ]
        );
    }

    #[test]
    fn other_parse_failures_keep_their_error() {
        let json = r#"{"Id": 5}"#;
        let err = reparse::<ContainerInspectResponse>(parse_error(json), |_| {}).unwrap_err();
        assert!(matches!(err, BollardError::JsonDataError { .. }), "{err}");
    }
}
