//! Shared pieces of the harness tests: the test API's descriptor set (compiled from
//! tests/proto with protox, the google/api annotations from demo-grpc/proto), plugins built
//! from it, and protobuf helpers to read what the plugin sends and to fake what a gRPC server
//! answers.

#![allow(dead_code)] // each test file uses its own part

use std::sync::OnceLock;

use base64::Engine;
use grpc_transcode::GrpcTranscode;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use wasmgate_sdk::Action;
use wasmgate_sdk::serde_json::{self, Value, json};
use wasmgate_sdk::testing::{Harness, TestRequest, TestResponse};

fn descriptor_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let root = env!("CARGO_MANIFEST_DIR");
        let includes = [
            format!("{root}/tests/proto"),
            format!("{root}/../../demo-grpc/proto"),
        ];
        // Encoded by protox itself: prost's FileDescriptorSet would drop the options'
        // extensions, which is where the annotations are.
        protox::Compiler::new(includes)
            .and_then(|mut compiler| {
                compiler
                    .include_imports(true)
                    .open_files(["shop/v1/shop.proto", "shop/v1/bad_template.proto"])?;
                Ok(compiler.encode_file_descriptor_set())
            })
            .unwrap_or_else(|err| panic!("{err:?}"))
    })
}

/// The descriptor set as the config gets it (`@base64file:` resolved).
pub fn descriptors_base64() -> String {
    base64::engine::general_purpose::STANDARD.encode(descriptor_bytes())
}

pub fn pool() -> DescriptorPool {
    DescriptorPool::decode(descriptor_bytes()).unwrap()
}

pub fn message_type(name: &str) -> MessageDescriptor {
    pool()
        .get_message_by_name(name)
        .unwrap_or_else(|| panic!("no message {name}"))
}

pub fn config_with(extra: Value) -> Value {
    let mut config = json!({
        "descriptors": descriptors_base64(),
        "services": ["shop.v1.Shop"],
    });
    for (key, value) in extra.as_object().unwrap() {
        config[key] = value.clone();
    }
    config
}

pub fn plugin() -> Harness<GrpcTranscode> {
    plugin_with(json!({}))
}

pub fn plugin_with(extra: Value) -> Harness<GrpcTranscode> {
    Harness::new(&config_with(extra).to_string()).unwrap_or_else(|err| panic!("{err}"))
}

pub fn rejection(config: Value) -> String {
    match Harness::<GrpcTranscode>::new(&config.to_string()) {
        Ok(_) => panic!("accepted: {config}"),
        Err(message) => message,
    }
}

/// A length-prefixed gRPC frame.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut framed = vec![0];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

/// The message of type `name` in JSON, encoded and framed as a gRPC server sends it.
pub fn grpc_frame(name: &str, json: Value) -> Vec<u8> {
    let message = DynamicMessage::deserialize(message_type(name), json).unwrap();
    frame(&message.encode_to_vec())
}

/// The request message the plugin framed into the body, as JSON (proto names, defaults
/// written out, so tests can compare every field).
pub fn sent_message(request: &TestRequest, name: &str) -> Value {
    let body = request.body.as_ref().expect("a body was set");
    assert_eq!(body[0], 0, "uncompressed");
    let length = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    assert_eq!(body.len(), 5 + length, "exactly one frame");
    let message = DynamicMessage::decode(message_type(name), &body[5..]).unwrap();
    let options = prost_reflect::SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true);
    message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .unwrap()
}

/// Runs the request phase and asserts it forwards the request.
pub fn forward(plugin: &mut Harness<GrpcTranscode>, request: &mut TestRequest) {
    match plugin.on_request(request) {
        Action::Continue => {}
        Action::Respond(reply) => panic!(
            "answered {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        ),
    }
}

/// Runs the request phase and returns the direct answer (status and JSON body).
pub fn refuse(plugin: &mut Harness<GrpcTranscode>, request: &mut TestRequest) -> (u16, Value) {
    match plugin.on_request(request) {
        Action::Continue => panic!("forwarded {} {}", request.method, request.path),
        Action::Respond(reply) => {
            let content_type = reply
                .headers
                .iter()
                .find(|(name, _)| name == "content-type")
                .map(|(_, value)| value.clone());
            assert_eq!(content_type.as_deref(), Some(&b"application/json"[..]));
            (reply.status, serde_json::from_slice(&reply.body).unwrap())
        }
    }
}

/// What a gRPC server answers: 200, `application/grpc`, the frames, then the status trailers.
pub fn grpc_response(
    request: &TestRequest,
    body: Vec<u8>,
    code: u32,
    message: &str,
) -> TestResponse {
    let mut response = TestResponse::answering(request, 200)
        .with_header("content-type", "application/grpc")
        .with_header("grpc-accept-encoding", "identity")
        .with_body(body);
    response
        .trailers
        .set("grpc-status", code.to_string().as_bytes())
        .unwrap();
    if !message.is_empty() {
        response
            .trailers
            .set("grpc-message", message.as_bytes())
            .unwrap();
    }
    response
}

pub fn body_json(response: &TestResponse) -> Value {
    serde_json::from_slice(response.body.as_ref().unwrap()).unwrap_or_else(|err| {
        panic!(
            "not JSON ({err}): {}",
            String::from_utf8_lossy(response.body.as_ref().unwrap())
        )
    })
}
