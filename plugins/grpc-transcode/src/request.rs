//! The request half: the gRPC request message from the JSON body, the path variables and the
//! query parameters, parsed with the proto3 JSON mapping. Whatever is wrong is a
//! [`BadRequest`] that names the field, and the upstream is never called.

use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor};
use wasmgate_sdk::serde_json::{self, Map, Value};

use crate::api::{Body, Route};
use crate::fields;
use crate::template::Capture;

/// Why a request cannot be transcoded: answered with 400 INVALID_ARGUMENT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest {
    /// The field (dotted, as the client wrote it) or query parameter at fault, when known.
    pub field: Option<String>,
    pub message: String,
}

impl BadRequest {
    fn new(field: Option<String>, message: impl Into<String>) -> Self {
        BadRequest {
            field,
            message: message.into(),
        }
    }
}

/// Builds the request message for `route`.
pub fn message(
    route: &Route<'_>,
    body: &[u8],
    captures: &[Capture<'_>],
    query: Option<&str>,
) -> Result<DynamicMessage, BadRequest> {
    let input = route.method.input();
    let mut root = Map::new();
    // Lowest precedence first: the body, then the query, then the path variables.
    match &route.body {
        Body::None => {}
        Body::Whole => root = body_object(body)?,
        Body::Field(field) => {
            if !body_is_empty(body) {
                root.insert(field.name().to_owned(), parse_json(body)?);
            }
        }
    }
    if !matches!(route.body, Body::Whole)
        && let Some(query) = query
    {
        apply_query(&mut root, &input, query)?;
    }
    for capture in captures {
        let path = fields::resolve(&input, capture.field_path)
            .expect("path variables were checked against the input type at load");
        let name = fields::display(&path);
        let field = path.last().expect("resolve returns one field per name");
        let value = fields::text_to_json(field, &capture.value)
            .map_err(|why| BadRequest::new(Some(name), why))?;
        fields::insert(&mut root, &path, value);
    }
    decode(&input, Value::Object(root))
}

fn body_is_empty(body: &[u8]) -> bool {
    body.iter().all(u8::is_ascii_whitespace)
}

fn parse_json(body: &[u8]) -> Result<Value, BadRequest> {
    serde_json::from_slice(body)
        .map_err(|err| BadRequest::new(None, format!("the body is not valid JSON: {err}")))
}

/// The body as a JSON object; an empty body is `{}`.
fn body_object(body: &[u8]) -> Result<Map<String, Value>, BadRequest> {
    if body_is_empty(body) {
        return Ok(Map::new());
    }
    match parse_json(body)? {
        Value::Object(object) => Ok(object),
        other => Err(BadRequest::new(
            None,
            format!("the body must be a JSON object, not {}", json_kind(&other)),
        )),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `a.b=1&tags=x&tags=y`: each parameter names a field (proto or JSON names); repeated fields
/// take every value, other fields exactly one.
fn apply_query(
    root: &mut Map<String, Value>,
    input: &MessageDescriptor,
    query: &str,
) -> Result<(), BadRequest> {
    let mut seen: Vec<String> = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = form_decode(name);
        let value = form_decode(value);
        let bad = |why: String| BadRequest::new(Some(name.clone()), why);
        let names: Vec<&str> = name.split('.').collect();
        let path = fields::resolve(input, &names)
            .map_err(|why| bad(format!("unknown query parameter `{name}`: {why}")))?;
        let field = path.last().expect("resolve returns one field per name");
        if !fields::settable_from_text(field) {
            return Err(bad(format!(
                "query parameter `{name}` names a message field; set its fields (`{name}.x`) or use the body"
            )));
        }
        let value = fields::text_to_json(field, &value).map_err(bad)?;
        let key = fields::display(&path);
        if field.is_list() {
            let mut list = match seen.contains(&key) {
                true => take_list(root, &path),
                false => Vec::new(),
            };
            list.push(value);
            fields::insert(root, &path, Value::Array(list));
        } else if seen.contains(&key) {
            return Err(bad(format!(
                "query parameter `{name}` is given more than once"
            )));
        } else {
            fields::insert(root, &path, value);
        }
        seen.push(key);
    }
    Ok(())
}

/// The list built so far for a repeated field (set by an earlier query parameter).
fn take_list(root: &mut Map<String, Value>, path: &[prost_reflect::FieldDescriptor]) -> Vec<Value> {
    let mut object = root;
    for field in &path[..path.len() - 1] {
        match object.get_mut(field.name()) {
            Some(Value::Object(next)) => object = next,
            _ => return Vec::new(),
        }
    }
    match object.remove(path[path.len() - 1].name()) {
        Some(Value::Array(list)) => list,
        _ => Vec::new(),
    }
}

/// Query strings are form-encoded: `+` is a space, then percent-decoding.
fn form_decode(text: &str) -> String {
    let spaced = text.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

/// Parses the assembled JSON into the message, rejecting unknown fields, and names the field
/// at fault.
fn decode(input: &MessageDescriptor, json: Value) -> Result<DynamicMessage, BadRequest> {
    let mut track = serde_path_to_error::Track::new();
    let deserializer = serde_path_to_error::Deserializer::new(json, &mut track);
    DynamicMessage::deserialize_with_options(
        input.clone(),
        deserializer,
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .map_err(|err| {
        let path = track.path().to_string();
        let parent = (path != "?" && path != ".").then_some(path);
        // An unknown field is reported at its parent object; name the field itself.
        let unknown = err
            .to_string()
            .strip_prefix("unrecognized field name '")
            .and_then(|rest| rest.strip_suffix('\''))
            .map(str::to_owned);
        let field = match (parent, unknown) {
            (Some(parent), Some(name)) => Some(format!("{parent}.{name}")),
            (None, Some(name)) => Some(name),
            (parent, None) => parent,
        };
        let message = match &field {
            Some(field) => format!("field `{field}`: {err}"),
            None => err.to_string(),
        };
        BadRequest::new(field, message)
    })
}
