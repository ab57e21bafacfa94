//! `[params]` (the JSON Schema of a call's first frame) and the prompt templates rendered from
//! them (`system_prompt`, `first_message`, with `minijinja`).

use std::collections::BTreeSet;

use micdrop_core::error::MicdropError;
use serde_json::{Map, Value};

use crate::ToolsError;

/// Params keys every server accepts whatever `[params]` says (Micdrop's bearer token, the
/// store's resume id). They are never given to templates as secrets: `authorization` is removed.
pub const ALWAYS_ACCEPTED: &[&str] = &["authorization", "conversation_id"];

/// The validated shape of a call's params.
#[derive(Debug)]
pub struct ParamsSpec {
    validator: jsonschema::Validator,
    properties: BTreeSet<String>,
}

impl ParamsSpec {
    /// Compiles the `[params]` schema (an object schema).
    pub fn new(schema: &Value) -> Result<Self, ToolsError> {
        let invalid = |m: String| ToolsError::Params(m);
        if schema.get("type").and_then(Value::as_str) != Some("object") {
            return Err(invalid(
                "[params] must be an object schema: type = \"object\"".into(),
            ));
        }
        jsonschema::meta::validate(schema)
            .map_err(|e| invalid(format!("invalid JSON Schema: {e}")))?;
        let validator = jsonschema::validator_for(schema)
            .map_err(|e| invalid(format!("invalid JSON Schema: {e}")))?;
        let properties = schema
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        Ok(Self {
            validator,
            properties,
        })
    }

    /// The declared property names.
    pub fn properties(&self) -> &BTreeSet<String> {
        &self.properties
    }

    /// Validates a call's params: an object matching the schema once `authorization` and
    /// `conversation_id` are set aside. Any mismatch is 4400 `Invalid params` (Micdrop's rule);
    /// what did not match is logged at debug level, never the values.
    pub fn validate(&self, params: Option<&Value>) -> Result<(), MicdropError> {
        let Some(Value::Object(map)) = params else {
            return Err(MicdropError::invalid_params());
        };
        let rest = without_always_accepted(map);
        let rest = Value::Object(rest);
        if let Some(errors) = crate::webhook::schema_errors(&self.validator, &rest) {
            let paths: Vec<String> = self
                .validator
                .iter_errors(&rest)
                .take(3)
                .map(|e| e.instance_path().to_string())
                .collect();
            tracing::debug!(paths = ?paths, "params rejected by [params]");
            let _ = errors;
            return Err(MicdropError::invalid_params());
        }
        Ok(())
    }
}

fn without_always_accepted(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter()
        .filter(|(k, _)| !ALWAYS_ACCEPTED.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The prompt templates: `system_prompt` and `first_message`, rendered per call over `params`
/// (without `authorization`). Templates without variables are rendered once.
#[derive(Debug)]
pub struct PromptTemplates {
    env: minijinja::Environment<'static>,
    has_first: bool,
    dynamic: bool,
}

const SYSTEM: &str = "system_prompt";
const FIRST: &str = "first_message";

impl PromptTemplates {
    /// Parses the templates and checks their variables: only `params.<name>` with `<name>`
    /// declared in `[params]` (or `conversation_id`) may be used; anything else is an error.
    pub fn new(
        system_prompt: &str,
        first_message: Option<&str>,
        params: Option<&ParamsSpec>,
    ) -> Result<Self, ToolsError> {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Lenient);
        let mut dynamic = false;
        for (name, source) in [(SYSTEM, Some(system_prompt)), (FIRST, first_message)] {
            let Some(source) = source else { continue };
            env.add_template_owned(name, source.to_owned())
                .map_err(|e| ToolsError::Template(format!("[call] {name}: {e}")))?;
            let tmpl = env
                .get_template(name)
                .map_err(|e| ToolsError::Template(format!("[call] {name}: {e}")))?;
            let mut vars: Vec<String> = tmpl.undeclared_variables(true).into_iter().collect();
            vars.sort();
            for var in vars {
                dynamic = true;
                let known = match var.split_once('.') {
                    Some(("params", field)) => {
                        field == "conversation_id"
                            || params.is_some_and(|p| p.properties().contains(field))
                    }
                    None => var == "params" && params.is_some(),
                    _ => false,
                };
                if !known {
                    let hint = if params.is_none() {
                        " (declare it in [params])".to_owned()
                    } else if var.starts_with("params.") {
                        " (not a property of [params])".to_owned()
                    } else {
                        " (templates see `params.<name>` only)".to_owned()
                    };
                    return Err(ToolsError::Template(format!(
                        "[call] {name}: unknown variable `{var}`{hint}"
                    )));
                }
            }
        }
        Ok(Self {
            env,
            has_first: first_message.is_some(),
            dynamic,
        })
    }

    /// Whether any template uses `params` (else every call renders the same text).
    pub fn is_dynamic(&self) -> bool {
        self.dynamic
    }

    /// Renders the system prompt and the first message for a call's params.
    pub fn render(&self, params: Option<&Value>) -> Result<(String, Option<String>), String> {
        let ctx = match params {
            Some(Value::Object(map)) => {
                let mut m = map.clone();
                m.remove("authorization");
                Value::Object(m)
            }
            _ => Value::Object(Map::new()),
        };
        let ctx = minijinja::context! { params => minijinja::value::Serde(&ctx) };
        let render = |name: &str| {
            self.env
                .get_template(name)
                .and_then(|t| t.render(&ctx))
                .map_err(|e| format!("{name}: {e}"))
        };
        let system = render(SYSTEM)?;
        let first = if self.has_first {
            Some(render(FIRST)?)
        } else {
            None
        };
        Ok((system, first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> ParamsSpec {
        ParamsSpec::new(&json!({
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name"],
            "additionalProperties": false
        }))
        .unwrap()
    }

    #[test]
    fn params_are_validated_with_the_always_accepted_keys() {
        let s = spec();
        assert!(s.validate(Some(&json!({"name": "Léa"}))).is_ok());
        assert!(
            s.validate(Some(
                &json!({"name": "Léa", "authorization": "Bearer x", "conversation_id": "c"})
            ))
            .is_ok()
        );
        for bad in [
            json!({}),
            json!({"name": 3}),
            json!({"name": "a", "x": 1}),
            json!([1]),
        ] {
            let e = s.validate(Some(&bad)).unwrap_err();
            assert_eq!(e, MicdropError::invalid_params(), "{bad}");
        }
        assert_eq!(s.validate(None).unwrap_err().code, 4400);
        assert!(ParamsSpec::new(&json!({"type": "string"})).is_err());
        assert!(ParamsSpec::new(&json!({"type": "object", "properties": 3})).is_err());
    }

    #[test]
    fn templates_render_params_and_reject_unknown_variables() {
        let s = spec();
        let t = PromptTemplates::new(
            "Tu parles à {{ params.name }}{% if params.age %} ({{ params.age }} ans){% endif %}.",
            Some("Bonjour {{params.name}} !"),
            Some(&s),
        )
        .unwrap();
        assert!(t.is_dynamic());
        let (sys, first) = t
            .render(Some(
                &json!({"name": "Léa", "age": 30, "authorization": "Bearer s"}),
            ))
            .unwrap();
        assert_eq!(sys, "Tu parles à Léa (30 ans).");
        assert_eq!(first.as_deref(), Some("Bonjour Léa !"));
        let (sys, _) = t.render(Some(&json!({"name": "Tom"}))).unwrap();
        assert_eq!(sys, "Tu parles à Tom.");

        let e = PromptTemplates::new("{{ params.nom }}", None, Some(&s)).unwrap_err();
        assert!(e.to_string().contains("params.nom"), "{e}");
        let e = PromptTemplates::new("{{ user }}", None, Some(&s)).unwrap_err();
        assert!(e.to_string().contains("`user`"), "{e}");
        let e = PromptTemplates::new("x", Some("{{ params.name }}"), None).unwrap_err();
        assert!(e.to_string().contains("first_message"), "{e}");
        assert!(PromptTemplates::new("{{ params.name", None, Some(&s)).is_err());
        let t = PromptTemplates::new("Pas de variable.", None, None).unwrap();
        assert!(!t.is_dynamic());
        assert_eq!(t.render(None).unwrap().0, "Pas de variable.");
        // The bearer token is never visible to templates.
        let t = PromptTemplates::new("[{{ params }}]", None, Some(&s)).unwrap();
        let (sys, _) = t
            .render(Some(
                &json!({"name": "L", "authorization": "Bearer secret"}),
            ))
            .unwrap();
        assert!(!sys.contains("secret"), "{sys}");
    }
}
