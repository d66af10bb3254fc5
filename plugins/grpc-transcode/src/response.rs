//! The response half: the gRPC status (trailers, or headers in a trailers-only response), the
//! message or stream of messages back to JSON, and the JSON error body for everything else.

use base64::Engine;
use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, MethodDescriptor, ReflectMessage, SerializeOptions,
};
use wasmgate_sdk::serde_json::{self, Value};

use crate::framing;
use crate::status;

/// How a server stream is written to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFormat {
    /// One JSON array of the messages (`application/json`).
    Array,
    /// One message per line (`application/x-ndjson`), when the client's `Accept` asks for it.
    Ndjson,
}

/// The gRPC outcome of a call as the upstream reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcStatus {
    pub code: u32,
    pub message: String,
    /// `grpc-status-details-bin`: a serialized `google.rpc.Status`, base64 without padding.
    pub details: Option<Vec<u8>>,
}

/// What the client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonReply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl JsonReply {
    pub fn error(http_status: u16, code: u32, message: &str, details: Vec<Value>) -> JsonReply {
        JsonReply {
            status: http_status,
            content_type: "application/json",
            body: status::error_body(code, message, details)
                .to_string()
                .into_bytes(),
        }
    }
}

/// How messages are written: the config's JSON options and the binding's `response_body`.
pub struct Output<'a> {
    pub options: &'a SerializeOptions,
    pub response_body: Option<&'a str>,
    pub format: StreamFormat,
}

/// The JSON reply for a gRPC response with this status and body.
pub fn reply(
    pool: &DescriptorPool,
    method: &MethodDescriptor,
    grpc: &GrpcStatus,
    body: &[u8],
    output: &Output<'_>,
) -> JsonReply {
    if grpc.code != status::OK {
        let details = grpc
            .details
            .as_deref()
            .map(|bytes| details_json(pool, bytes, output.options))
            .unwrap_or_default();
        return JsonReply::error(
            status::http_status(grpc.code),
            grpc.code,
            &grpc.message,
            details,
        );
    }
    match messages_json(method, body, output) {
        Ok(messages) => render(method, messages, output.format),
        Err(why) => JsonReply::error(502, status::INTERNAL, &why, Vec::new()),
    }
}

fn messages_json(
    method: &MethodDescriptor,
    body: &[u8],
    output: &Output<'_>,
) -> Result<Vec<Value>, String> {
    let frames = framing::unframe(body)?;
    if !method.is_server_streaming() && frames.len() != 1 {
        return Err(format!(
            "the upstream sent {} messages for a unary method",
            frames.len()
        ));
    }
    frames
        .into_iter()
        .map(|frame| {
            let message = DynamicMessage::decode(method.output(), frame).map_err(|err| {
                format!(
                    "the upstream's `{}` does not decode: {err}",
                    method.output().full_name()
                )
            })?;
            to_json(&message, output)
        })
        .collect()
}

fn to_json(message: &DynamicMessage, output: &Output<'_>) -> Result<Value, String> {
    let whole = |options: &SerializeOptions| {
        message
            .serialize_with_options(serde_json::value::Serializer, options)
            .map_err(|err| format!("the response does not convert to JSON: {err}"))
    };
    let Some(field) = output.response_body else {
        return whole(output.options);
    };
    // The field alone, with its default written out (an empty list is `[]`, not nothing).
    let options = output.options.clone().skip_default_fields(false);
    let descriptor = message
        .descriptor()
        .get_field_by_name(field)
        .expect("response_body was checked against the output type at load");
    let mut object = whole(&options)?;
    let object = object.as_object_mut().expect("messages are JSON objects");
    Ok(object
        .remove(descriptor.json_name())
        .or_else(|| object.remove(descriptor.name()))
        .unwrap_or(Value::Null))
}

fn render(method: &MethodDescriptor, messages: Vec<Value>, format: StreamFormat) -> JsonReply {
    if !method.is_server_streaming() {
        let message = messages
            .into_iter()
            .next()
            .expect("unary replies have one message");
        return JsonReply {
            status: 200,
            content_type: "application/json",
            body: message.to_string().into_bytes(),
        };
    }
    match format {
        StreamFormat::Array => JsonReply {
            status: 200,
            content_type: "application/json",
            body: Value::Array(messages).to_string().into_bytes(),
        },
        StreamFormat::Ndjson => {
            let mut body = Vec::new();
            for message in messages {
                body.extend(message.to_string().into_bytes());
                body.push(b'\n');
            }
            JsonReply {
                status: 200,
                content_type: "application/x-ndjson",
                body,
            }
        }
    }
}

/// `google.rpc.Status`, the message in `grpc-status-details-bin` (public for the tests, which
/// encode one as a server would).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<prost_types::Any>,
}

/// The status details as JSON `Any` values: decoded when the descriptors know the type,
/// `{"@type": ..., "value": base64}` otherwise.
fn details_json(pool: &DescriptorPool, bytes: &[u8], options: &SerializeOptions) -> Vec<Value> {
    let Ok(status) = RpcStatus::decode(bytes) else {
        return Vec::new();
    };
    status
        .details
        .into_iter()
        .map(|any| {
            let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
            let decoded = pool
                .get_message_by_name(type_name)
                .and_then(|desc| DynamicMessage::decode(desc, any.value.as_slice()).ok())
                .and_then(|m| {
                    m.serialize_with_options(serde_json::value::Serializer, options)
                        .ok()
                });
            let mut object = match decoded {
                Some(Value::Object(object)) => object,
                _ => {
                    let mut object = serde_json::Map::new();
                    let value = base64::engine::general_purpose::STANDARD.encode(&any.value);
                    object.insert("value".into(), Value::String(value));
                    object
                }
            };
            object.insert("@type".into(), Value::String(any.type_url));
            Value::Object(object)
        })
        .collect()
}

/// `grpc-status-details-bin` is base64, usually without padding.
pub fn decode_details(value: &[u8]) -> Option<Vec<u8>> {
    let trimmed: Vec<u8> = value.iter().copied().filter(|b| *b != b'=').collect();
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(trimmed)
        .ok()
}
