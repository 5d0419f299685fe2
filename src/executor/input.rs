//! Checking and decoding tool input.
//!
//! Tool input comes from the model, so it is often slightly wrong: a field
//! missing, a number sent as a string. serde's own messages for that ("invalid
//! type: string, expected u64") do not say which field is wrong, and the model
//! needs to know exactly that to fix its next call. So each tool declares its
//! fields in a small table, [`decode`] checks the input against the table and
//! words any mismatch itself, and only then hands the value to serde, which at
//! that point cannot fail on types.
//!
//! Unknown fields are ignored: models add fields such as `description` that
//! change nothing, and refusing them would only cost a step.

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::ToolError;

/// The JSON type a field must have.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    Str,
    /// A non-negative integer.
    UInt,
    Bool,
    StrList,
    /// An array of objects, each checked against these fields.
    ObjList(&'static [Field]),
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::UInt => "a non-negative integer",
            Kind::Bool => "a boolean",
            Kind::StrList => "an array of strings",
            Kind::ObjList(_) => "an array of objects",
        }
    }

    fn accepts(self, value: &Value) -> bool {
        match self {
            Kind::Str => value.is_string(),
            Kind::UInt => value.is_u64(),
            Kind::Bool => value.is_boolean(),
            Kind::StrList => value
                .as_array()
                .is_some_and(|items| items.iter().all(Value::is_string)),
            Kind::ObjList(_) => value.is_array(),
        }
    }
}

/// One field of a tool's input.
#[derive(Debug, Clone, Copy)]
pub(super) struct Field {
    pub name: &'static str,
    pub kind: Kind,
    pub required: bool,
}

/// A required field.
pub(super) const fn req(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: true,
    }
}

/// An optional field; `null` counts as absent.
pub(super) const fn opt(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: false,
    }
}

/// Checks `input` against `fields` and decodes it into `T`.
///
/// Errors name the tool, the field (with its index inside arrays) and the
/// expected type, and show a short form of what was sent.
pub(super) fn decode<T: DeserializeOwned>(
    tool: &str,
    input: &Value,
    fields: &[Field],
) -> Result<T, ToolError> {
    check_object(tool, "", input, fields)?;
    serde_json::from_value(input.clone())
        .map_err(|e| ToolError::new(format!("{tool}: invalid input: {e}")))
}

fn check_object(
    tool: &str,
    prefix: &str,
    value: &Value,
    fields: &[Field],
) -> Result<(), ToolError> {
    let Some(object) = value.as_object() else {
        let names: Vec<&str> = fields.iter().map(|f| f.name).collect();
        let what = if prefix.is_empty() {
            "input".to_string()
        } else {
            prefix.to_string()
        };
        return Err(ToolError::new(format!(
            "{tool}: {what} must be a JSON object with the fields {}, got {}",
            names.join(", "),
            describe_value(value)
        )));
    };

    for field in fields {
        let path = format!(
            "{prefix}{}{}",
            if prefix.is_empty() { "" } else { "." },
            field.name
        );
        let value = match object.get(field.name) {
            None | Some(Value::Null) if field.required => {
                return Err(ToolError::new(format!(
                    "{tool}: missing required field `{path}` ({})",
                    field.kind.describe()
                )));
            }
            None | Some(Value::Null) => continue,
            Some(value) => value,
        };
        if !field.kind.accepts(value) {
            return Err(ToolError::new(format!(
                "{tool}: field `{path}` must be {}, got {}",
                field.kind.describe(),
                describe_value(value)
            )));
        }
        if let (Kind::ObjList(inner), Value::Array(items)) = (field.kind, value) {
            for (i, item) in items.iter().enumerate() {
                check_object(tool, &format!("{path}[{i}]"), item, inner)?;
            }
        }
    }
    Ok(())
}

/// A short description of a JSON value for error messages: its type and,
/// for scalars, a glimpse of the value.
fn describe_value(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => {
            let shown: String = s.chars().take(40).collect();
            let more = if shown.len() < s.len() { "…" } else { "" };
            format!("the string {shown:?}{more}")
        }
        Value::Array(items) => format!("an array of {} item(s)", items.len()),
        Value::Object(_) => "an object".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    const EDIT: &[Field] = &[req("old_string", Kind::Str), opt("replace_all", Kind::Bool)];
    const FIELDS: &[Field] = &[
        req("file_path", Kind::Str),
        opt("limit", Kind::UInt),
        opt("ignore", Kind::StrList),
        opt("edits", Kind::ObjList(EDIT)),
    ];

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct In {
        file_path: String,
        limit: Option<u64>,
    }

    fn err(input: Value) -> String {
        decode::<In>("T", &input, FIELDS).unwrap_err().0
    }

    #[test]
    fn messages() {
        assert_eq!(
            err(json!({})),
            "T: missing required field `file_path` (a string)"
        );
        assert_eq!(
            err(json!({"file_path": null})),
            "T: missing required field `file_path` (a string)"
        );
        assert_eq!(
            err(json!({"file_path": "x", "limit": -1})),
            "T: field `limit` must be a non-negative integer, got the number -1"
        );
        assert_eq!(
            err(json!({"file_path": "x", "ignore": ["a", 1]})),
            "T: field `ignore` must be an array of strings, got an array of 2 item(s)"
        );
        assert_eq!(
            err(json!({"file_path": "x", "edits": [{"old_string": "a"}, {"replace_all": true}]})),
            "T: missing required field `edits[1].old_string` (a string)"
        );
        assert_eq!(
            err(json!({"file_path": "x", "edits": ["a"]})),
            "T: edits[0] must be a JSON object with the fields old_string, replace_all, \
             got the string \"a\""
        );
    }

    #[test]
    fn null_optional_and_unknown_fields_pass() {
        let v: In = decode(
            "T",
            &json!({"file_path": "x", "limit": null, "description": "hi"}),
            FIELDS,
        )
        .unwrap();
        assert_eq!(v.file_path, "x");
        assert_eq!(v.limit, None);
    }
}
