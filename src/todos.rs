//! The TodoWrite tool: the model's task list, answered on the host.
//!
//! The list is session state the sandbox has no business holding, and
//! writing it needs no file system, so the host validates it, stores it
//! (replacing the previous list, as each call sends the whole list), reports
//! it as a progress line and returns it in the turn's result. No executor is
//! started for it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most items one list may hold; a longer list is a runaway, not a plan.
const MAX_ITEMS: usize = 100;
/// Longest text of one item, in characters.
const MAX_TEXT: usize = 1000;

/// Where one item stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TodoStatus {
    /// Not started.
    Pending,
    /// Being worked on now.
    InProgress,
    /// Done.
    Completed,
}

/// One item of the model's todo list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TodoItem {
    /// What is to be done, in the imperative ("Run the tests").
    pub content: String,
    /// Where it stands.
    pub status: TodoStatus,
    /// The same in the present continuous ("Running the tests"), shown
    /// while the item is in progress.
    #[serde(
        default,
        rename = "activeForm",
        skip_serializing_if = "Option::is_none"
    )]
    pub active_form: Option<String>,
    /// The model's own identifier for the item, if it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// Checks TodoWrite's input and returns the list.
///
/// # Errors
///
/// A message for the model naming the item and field that is wrong and
/// what is expected.
pub fn parse(input: &Value) -> Result<Vec<TodoItem>, String> {
    let Some(items) = input.get("todos").and_then(Value::as_array) else {
        return Err(
            "TodoWrite: `todos` must be an array of {content, status, activeForm} objects; send \
             the whole list each time"
                .into(),
        );
    };
    if items.len() > MAX_ITEMS {
        return Err(format!(
            "TodoWrite: {} items is more than the {MAX_ITEMS} allowed; merge small steps",
            items.len()
        ));
    }
    let mut list = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let text = |field: &str, required: bool| -> Result<Option<String>, String> {
            match item.get(field) {
                None | Some(Value::Null) if !required => Ok(None),
                Some(Value::String(s)) if s.trim().is_empty() => Err(format!(
                    "TodoWrite: todos[{i}].{field} is empty; describe the item in a few words"
                )),
                Some(Value::String(s)) if s.chars().count() > MAX_TEXT => Err(format!(
                    "TodoWrite: todos[{i}].{field} is longer than {MAX_TEXT} characters; keep \
                     items short"
                )),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                // Models sometimes send numeric ids; accept them as text.
                Some(Value::Number(n)) if field == "id" => Ok(Some(n.to_string())),
                _ => Err(format!(
                    "TodoWrite: todos[{i}].{field} must be a string{}",
                    if required { "" } else { " when given" }
                )),
            }
        };
        let Some(obj) = item.as_object() else {
            return Err(format!(
                "TodoWrite: todos[{i}] must be an object with content, status and activeForm"
            ));
        };
        let content = text("content", true)?.unwrap_or_default();
        let status = match obj.get("status").and_then(Value::as_str) {
            Some("pending") => TodoStatus::Pending,
            Some("in_progress") => TodoStatus::InProgress,
            Some("completed") => TodoStatus::Completed,
            other => {
                return Err(format!(
                    "TodoWrite: todos[{i}].status is {}; it must be one of pending, in_progress, \
                     completed",
                    other.map_or("missing".to_string(), |s| format!("{s:?}"))
                ));
            }
        };
        list.push(TodoItem {
            content,
            status,
            active_form: text("activeForm", false)?,
            id: text("id", false)?,
        });
    }
    Ok(list)
}

/// The list as the model and a person read it: one line per item with a
/// box showing its status.
pub fn render(list: &[TodoItem]) -> String {
    if list.is_empty() {
        return "(the todo list is empty)".into();
    }
    list.iter()
        .map(|t| {
            let mark = match t.status {
                TodoStatus::Pending => "[ ]",
                TodoStatus::InProgress => "[~]",
                TodoStatus::Completed => "[x]",
            };
            format!("{mark} {}", t.content)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The tool result for the model after a successful TodoWrite.
pub fn result_text(list: &[TodoItem]) -> String {
    let done = list
        .iter()
        .filter(|t| t.status == TodoStatus::Completed)
        .count();
    format!(
        "Todo list saved ({done} of {} done):\n{}",
        list.len(),
        render(list)
    )
}

/// One progress line: how far along the list is and what is in progress.
pub fn progress_line(list: &[TodoItem]) -> String {
    let done = list
        .iter()
        .filter(|t| t.status == TodoStatus::Completed)
        .count();
    let now: Vec<&str> = list
        .iter()
        .filter(|t| t.status == TodoStatus::InProgress)
        .map(|t| t.active_form.as_deref().unwrap_or(&t.content))
        .collect();
    if now.is_empty() {
        format!("Todos: {done} of {} done", list.len())
    } else {
        format!(
            "Todos: {done} of {} done; now: {}",
            list.len(),
            now.join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_and_renders() {
        let list = parse(&json!({"todos": [
            {"content": "Read the code", "status": "completed", "activeForm": "Reading the code"},
            {"content": "Fix the bug", "status": "in_progress", "activeForm": "Fixing the bug", "id": 2},
            {"content": "Run the tests", "status": "pending"}
        ]}))
        .unwrap();
        assert_eq!(list[1].id.as_deref(), Some("2"));
        assert_eq!(
            result_text(&list),
            "Todo list saved (1 of 3 done):\n[x] Read the code\n[~] Fix the bug\n[ ] Run the tests"
        );
        assert_eq!(
            progress_line(&list),
            "Todos: 1 of 3 done; now: Fixing the bug"
        );
        let v = serde_json::to_value(&list).unwrap();
        assert_eq!(v[0]["activeForm"], "Reading the code");
        assert_eq!(v[1]["status"], "in_progress");
        assert!(v[2].get("activeForm").is_none());
        assert_eq!(render(&[]), "(the todo list is empty)");
    }

    #[test]
    fn refuses_what_claude_code_refuses() {
        let err = |v: Value| parse(&v).unwrap_err();
        assert_eq!(
            err(json!({"todos": [{"content": "x", "status": "done"}]})),
            "TodoWrite: todos[0].status is \"done\"; it must be one of pending, in_progress, \
             completed"
        );
        assert!(err(json!({"todos": [{"status": "pending"}]})).contains("todos[0].content"));
        assert!(err(json!({"todos": [{"content": " ", "status": "pending"}]})).contains("empty"));
        assert!(err(json!({"todos": "x"})).contains("must be an array"));
        assert!(err(json!({})).contains("must be an array"));
        assert!(
            err(json!({"todos": [{"content": "a", "status": "pending", "activeForm": 3}]}))
                .contains("activeForm must be a string")
        );
    }
}
