//! Field paths (`filter.name_prefix`) into request messages, and the JSON value a path or
//! query string value stands for, so that path variables and query parameters go through the
//! same proto3 JSON parser as bodies.

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use wasmgate_sdk::serde_json::{Map, Value};

/// Finds the field a dotted path names, accepting the proto name (`name_prefix`) or the JSON
/// name (`namePrefix`) at each step. Every step but the last must be a singular message.
pub fn resolve<S: AsRef<str>>(
    message: &MessageDescriptor,
    path: &[S],
) -> Result<Vec<FieldDescriptor>, String> {
    let mut current = message.clone();
    let mut fields = Vec::with_capacity(path.len());
    for (index, name) in path.iter().enumerate() {
        let name = name.as_ref();
        let field = current
            .get_field_by_name(name)
            .or_else(|| current.get_field_by_json_name(name))
            .ok_or_else(|| format!("`{}` has no field `{name}`", current.full_name()))?;
        if index + 1 < path.len() {
            match field.kind() {
                Kind::Message(next) if !field.is_list() && !field.is_map() => current = next,
                _ => {
                    return Err(format!(
                        "`{name}` is not a message field, so it has no fields"
                    ));
                }
            }
        }
        fields.push(field);
    }
    Ok(fields)
}

/// Whether a path variable or query parameter can set this field: a scalar, an enum, or a
/// well-known type whose JSON form is a string or scalar (Timestamp, Duration, wrappers, ...).
/// Repeated such fields take one value per query parameter.
pub fn settable_from_text(field: &FieldDescriptor) -> bool {
    !field.is_map()
        && match field.kind() {
            Kind::Message(message) => text_json_kind(message.full_name()).is_some(),
            _ => true,
        }
}

/// For well-known message types written as a JSON scalar: whether that scalar is a bool.
fn text_json_kind(full_name: &str) -> Option<bool> {
    match full_name {
        "google.protobuf.BoolValue" => Some(true),
        "google.protobuf.Timestamp"
        | "google.protobuf.Duration"
        | "google.protobuf.FieldMask"
        | "google.protobuf.StringValue"
        | "google.protobuf.BytesValue"
        | "google.protobuf.Int32Value"
        | "google.protobuf.Int64Value"
        | "google.protobuf.UInt32Value"
        | "google.protobuf.UInt64Value"
        | "google.protobuf.FloatValue"
        | "google.protobuf.DoubleValue" => Some(false),
        _ => None,
    }
}

/// The JSON value for `text` given to `field`. Numbers stay strings: the proto3 JSON mapping
/// accepts quoted numbers, and the parser then reports a bad one against the field.
pub fn text_to_json(field: &FieldDescriptor, text: &str) -> Result<Value, String> {
    let is_bool = match field.kind() {
        Kind::Bool => true,
        Kind::Message(message) => text_json_kind(message.full_name()) == Some(true),
        _ => false,
    };
    if !is_bool {
        return Ok(Value::String(text.to_owned()));
    }
    match text {
        "true" => Ok(Value::Bool(true)),
        "false" => Ok(Value::Bool(false)),
        _ => Err(format!("`{text}` is not a bool (true or false)")),
    }
}

/// Sets `value` at the field path in a JSON object under construction, creating the objects
/// on the way. The field is written under its proto name; a value the body gave under the JSON
/// name is removed first, so that the parser does not see the field twice.
pub fn insert(root: &mut Map<String, Value>, fields: &[FieldDescriptor], value: Value) {
    let (last, parents) = fields.split_last().expect("field paths are not empty");
    let mut object = root;
    for field in parents {
        // Keep what the body gave for the parent, whichever name it used.
        if field.json_name() != field.name()
            && let Some(given) = object.remove(field.json_name())
        {
            object.entry(field.name().to_owned()).or_insert(given);
        }
        let slot = object
            .entry(field.name().to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        object = slot.as_object_mut().expect("made an object above");
    }
    if last.json_name() != last.name() {
        object.remove(last.json_name());
    }
    object.insert(last.name().to_owned(), value);
}

/// The dotted path by which a client names a field (its proto names).
pub fn display(fields: &[FieldDescriptor]) -> String {
    fields
        .iter()
        .map(|f| f.name())
        .collect::<Vec<_>>()
        .join(".")
}
