//! `grpc-transcode`: a first-party wasmgate plugin that lets REST/JSON clients call gRPC
//! upstreams. Paths and verbs come from the `google.api.http` annotations in the configured
//! descriptor set (and `POST /pkg.Service/Method` always works); JSON bodies, path variables
//! and query parameters become a protobuf message in a gRPC frame; the gRPC response and its
//! status come back as JSON and an HTTP status. See docs/first-party-plugins.md.
//!
//! The plugin keeps no per-request state in `self` (the two phases of one request may run in
//! different instances): the response phase finds its method again through the context value
//! `grpc.method`.

pub mod api;
pub mod fields;
pub mod framing;
pub mod request;
pub mod response;
pub mod status;
pub mod template;

use prost::Message;
use prost_reflect::SerializeOptions;
use serde::Deserialize;
use wasmgate_sdk::serde_json::json;
use wasmgate_sdk::{Action, Capabilities, Plugin, Reply, Request, Response};

use crate::api::Api;
use crate::response::{GrpcStatus, JsonReply, Output, StreamFormat};

/// Context values that carry the request's routing to the response phase.
const CTX_METHOD: &str = "grpc.method";
const CTX_RESPONSE_BODY: &str = "grpc.response_body";
const CTX_STREAM: &str = "grpc.stream";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// A serialized `FileDescriptorSet` in base64 (`"@base64file:api.pb"`), imports included.
    pub descriptors: String,
    /// The full names of the services to expose (`"demo.v1.Items"`).
    pub services: Vec<String>,
    /// Write fields under their proto names (`created_at`) instead of JSON names (`createdAt`).
    #[serde(default)]
    pub use_proto_names: bool,
    /// Write fields that have their default value (`0`, `""`, `[]`) instead of leaving them out.
    #[serde(default)]
    pub emit_defaults: bool,
}

pub struct GrpcTranscode {
    api: Api,
    json: SerializeOptions,
}

impl Plugin for GrpcTranscode {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let api = Api::load(&config.descriptors, &config.services)?;
        let json = SerializeOptions::new()
            .use_proto_field_name(config.use_proto_names)
            .skip_default_fields(!config.emit_defaults);
        Ok(GrpcTranscode { api, json })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            request_body: true,
            response_body: true,
        }
    }

    fn on_request(&mut self, request: &mut Request<'_>) -> Action {
        // Native gRPC clients use the same paths as the fallback: leave them alone.
        if request
            .header_str("content-type")
            .is_some_and(|t| t.starts_with("application/grpc"))
        {
            return Action::Continue;
        }
        let method = request.method();
        let path = request.path();
        let Some((route, captures)) = self.api.route(&method, &path) else {
            return Action::Continue;
        };
        let body = request.body().unwrap_or_default();
        let query = request.query();
        let message = match request::message(&route, &body, &captures, query.as_deref()) {
            Ok(message) => message,
            Err(bad) => {
                let mut error = status::error_body(status::INVALID_ARGUMENT, &bad.message, vec![]);
                if let Some(field) = bad.field {
                    error["field"] = json!(field);
                }
                return Action::Respond(Reply::new(400).json(&error));
            }
        };
        let ndjson = route.method.is_server_streaming() && accepts_ndjson(request);
        let framed = framing::frame(&message.encode_to_vec());
        if let Err(why) = rewrite(request, route.grpc_path, framed) {
            wasmgate_sdk::log::error(&format!("cannot rewrite the request: {why}"));
            let error = status::error_body(status::INTERNAL, &why, vec![]);
            return Action::Respond(Reply::new(500).json(&error));
        }
        request.set_ctx(CTX_METHOD, route.grpc_path);
        if let Some(field) = route.response_body {
            request.set_ctx(CTX_RESPONSE_BODY, field);
        }
        if ndjson {
            request.set_ctx(CTX_STREAM, "ndjson");
        }
        Action::Continue
    }

    fn on_response(&mut self, response: &mut Response<'_>) {
        // Only the requests this plugin turned into gRPC calls.
        let Some(grpc_path) = response.ctx(CTX_METHOD) else {
            return;
        };
        let Some(method) = self.api.method(&grpc_path) else {
            return;
        };
        let reply = match grpc_status(response) {
            Some(grpc) => {
                let response_body = response.ctx(CTX_RESPONSE_BODY);
                let format = match response.ctx(CTX_STREAM).as_deref() {
                    Some("ndjson") => StreamFormat::Ndjson,
                    _ => StreamFormat::Array,
                };
                let output = Output {
                    options: &self.json,
                    response_body: response_body.as_deref(),
                    format,
                };
                let body = response.body().unwrap_or_default();
                response::reply(&self.api.pool, method, &grpc, &body, &output)
            }
            None => {
                let http = response.status();
                let (status, code) = if http == 200 {
                    (502, status::INTERNAL)
                } else {
                    (http, status::from_http_status(http))
                };
                let message = format!("the upstream answered HTTP {http} without a grpc-status");
                JsonReply::error(status, code, &message, Vec::new())
            }
        };
        write_reply(response, reply);
    }
}

/// Turns the client's request into the gRPC call: `POST /pkg.Service/Method`, framed protobuf.
fn rewrite(request: &mut Request<'_>, grpc_path: &str, framed: Vec<u8>) -> Result<(), String> {
    request.set_method("POST")?;
    request.set_path(grpc_path)?;
    request.set_query(None)?;
    request.set_header("content-type", "application/grpc")?;
    request.set_header("te", "trailers")?;
    // JSON-client headers that mean nothing (or something else) to a gRPC server.
    request.remove_header("accept");
    request.remove_header("content-encoding");
    request.set_body(framed)
}

fn accepts_ndjson(request: &Request<'_>) -> bool {
    request
        .header_all("accept")
        .iter()
        .any(|value| String::from_utf8_lossy(value).contains("application/x-ndjson"))
}

/// The status from the trailers, or from the headers of a trailers-only response.
fn grpc_status(response: &Response<'_>) -> Option<GrpcStatus> {
    let (code, in_trailers) = match response.trailer("grpc-status") {
        Some(code) => (code, true),
        None => (response.header("grpc-status")?, false),
    };
    let field = |name: &str| match in_trailers {
        true => response.trailer(name),
        false => response.header(name),
    };
    Some(GrpcStatus {
        code: status::parse(&code),
        message: field("grpc-message")
            .map(|m| status::decode_message(&m))
            .unwrap_or_default(),
        details: field("grpc-status-details-bin").and_then(|d| response::decode_details(&d)),
    })
}

/// Replaces the gRPC response with the JSON one; no `grpc-*` header or trailer reaches the
/// client.
fn write_reply(response: &mut Response<'_>, reply: JsonReply) {
    for name in response.header_names() {
        if name.starts_with("grpc-") {
            response.remove_header(&name);
        }
    }
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        response.remove_trailer(name);
    }
    let written = response
        .set_status(reply.status)
        .and_then(|()| response.set_header("content-type", reply.content_type))
        .and_then(|()| response.set_body(reply.body));
    if let Err(why) = written {
        wasmgate_sdk::log::error(&format!("cannot write the JSON response: {why}"));
    }
}

wasmgate_sdk::export_plugin!(GrpcTranscode);
