//! Kubernetes objects as YAML text, as `berth render` prints them.

use serde_json::Value;
use yaml_rust2::Yaml;

use crate::error::{Result, RunnerError};

/// `objects` as YAML documents, one after another, each ending in a newline.
///
/// # Errors
/// [`RunnerError::Config`] when the YAML emitter refuses a value (it does not for JSON).
pub fn yaml(objects: &[Value]) -> Result<String> {
    let mut out = String::new();
    for object in objects {
        let mut text = String::new();
        yaml_rust2::YamlEmitter::new(&mut text)
            .dump(&to_yaml(object))
            .map_err(|e| RunnerError::Config {
                key: "render".into(),
                reason: format!("cannot write YAML: {e:?}"),
            })?;
        out.push_str(&text);
        out.push('\n');
    }
    Ok(out)
}

fn to_yaml(value: &Value) -> Yaml {
    match value {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Number(n) => n
            .as_i64()
            .map_or_else(|| Yaml::Real(n.to_string()), Yaml::Integer),
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(items) => Yaml::Array(items.iter().map(to_yaml).collect()),
        Value::Object(map) => Yaml::Hash(
            map.iter()
                .map(|(k, v)| (Yaml::String(k.clone()), to_yaml(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_object_is_one_document() {
        let text = super::yaml(&[
            serde_json::json!({"kind": "Job", "spec": {"replicas": 1}}),
            serde_json::json!({"kind": "Role"}),
        ])
        .expect("yaml");
        assert_eq!(text.matches("---").count(), 2, "{text}");
        assert!(
            text.contains("kind: Job") && text.contains("replicas: 1"),
            "{text}"
        );
    }
}
