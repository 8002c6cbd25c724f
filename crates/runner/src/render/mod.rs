//! Kubernetes objects as YAML text, as `berth render` prints them, the objects of
//! `berth render --server` ([`server`]) and of `berth render --kind` ([`kinds`]).

pub mod kinds;
pub mod server;

pub use server::server_objects;

use serde_json::Value;
use yaml_rust2::Yaml;

use crate::error::{Result, RunnerError};

/// `objects` as YAML documents, one after another, each ending in a newline.
///
/// # Errors
/// [`RunnerError::Config`] when the YAML emitter refuses a value (it does not for JSON).
///
/// Text of several lines (a ConfigMap's file, a script) is written as a literal block
/// (`|`) when that reads back as the same document, else quoted.
pub fn yaml(objects: &[Value]) -> Result<String> {
    let mut out = String::new();
    for object in objects {
        let doc = to_yaml(object);
        let literal = emit(&doc, true)?;
        let reads_back = yaml_rust2::YamlLoader::load_from_str(&literal)
            .is_ok_and(|docs| docs.len() == 1 && docs[0] == doc);
        out.push_str(&if reads_back {
            literal
        } else {
            emit(&doc, false)?
        });
        out.push('\n');
    }
    Ok(out)
}

fn emit(doc: &Yaml, multiline: bool) -> Result<String> {
    let mut text = String::new();
    let mut emitter = yaml_rust2::YamlEmitter::new(&mut text);
    emitter.multiline_strings(multiline);
    emitter.dump(doc).map_err(|e| RunnerError::Config {
        key: "render".into(),
        reason: format!("cannot write YAML: {e:?}"),
    })?;
    Ok(text)
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

    #[test]
    fn text_of_several_lines_is_a_literal_block_only_when_it_reads_back() {
        let file = "runner:\n  backend: kubernetes\n";
        let awkward = "  leading spaces\nand two newlines\n\n";
        let text =
            super::yaml(&[serde_json::json!({"data": {"config.yaml": file}})]).expect("yaml");
        assert!(text.contains("config.yaml: |\n"), "{text}");
        let text = super::yaml(&[serde_json::json!({"a": file, "b": awkward})]).expect("yaml");
        let docs = yaml_rust2::YamlLoader::load_from_str(&text).expect("parses");
        assert_eq!(docs[0]["a"].as_str(), Some(file), "{text}");
        assert_eq!(docs[0]["b"].as_str(), Some(awkward), "{text}");
        // A literal block would lose the leading spaces and a newline: the text is quoted.
        assert!(text.contains("b: \"  leading"), "{text}");
    }
}
