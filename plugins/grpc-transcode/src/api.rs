//! The exposed API, built once from the config: the descriptor pool, the gRPC methods of the
//! listed services, and the HTTP bindings of their `google.api.http` annotations.

use std::collections::HashMap;

use base64::Engine;
use prost_reflect::{DescriptorPool, DynamicMessage, FieldDescriptor, MethodDescriptor, Value};

use crate::fields;
use crate::template::{Capture, PathTemplate};

/// The extension that carries a method's `HttpRule` (google/api/annotations.proto).
const HTTP_RULE_EXTENSION: &str = "google.api.http";

pub struct Api {
    pub pool: DescriptorPool,
    /// Most specific template first (see [`PathTemplate::literal_count`]).
    bindings: Vec<Binding>,
    /// By gRPC path (`/demo.v1.Items/GetItem`): unary and server-streaming methods.
    methods: HashMap<String, MethodDescriptor>,
}

/// One HTTP verb and path template bound to a method.
pub struct Binding {
    pub http_method: String,
    pub template: PathTemplate,
    pub grpc_path: String,
    pub body: Body,
    /// A top-level field of the response to answer with instead of the whole message.
    pub response_body: Option<String>,
}

/// What the HTTP request body fills.
#[derive(Clone)]
pub enum Body {
    /// No body: every field not in the path comes from the query.
    None,
    /// `body: "*"`: the whole request message (the query is not read).
    Whole,
    /// `body: "field"`: that field; the rest come from the path and the query.
    Field(FieldDescriptor),
}

/// A request this API transcodes.
pub struct Route<'a> {
    pub grpc_path: &'a str,
    pub method: &'a MethodDescriptor,
    pub body: Body,
    pub response_body: Option<&'a str>,
}

impl Api {
    /// Decodes `descriptors` (a base64 `FileDescriptorSet`) and prepares `services`.
    pub fn load(descriptors: &str, services: &[String]) -> Result<Api, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(descriptors.trim())
            .map_err(|err| {
                format!(
                    "`descriptors` is not base64 ({err}); give the descriptor set file as \"@base64file:api.pb\""
                )
            })?;
        let pool = DescriptorPool::decode(bytes.as_slice())
            .map_err(|err| format!("`descriptors` is not a valid FileDescriptorSet: {err}"))?;
        if services.is_empty() {
            return Err(
                "`services` is empty: list the services to expose (\"pkg.Service\")".into(),
            );
        }
        let http_rule = pool.get_extension_by_name(HTTP_RULE_EXTENSION);
        let mut api = Api {
            pool: pool.clone(),
            bindings: Vec::new(),
            methods: HashMap::new(),
        };
        for name in services {
            let service = pool.get_service_by_name(name).ok_or_else(|| {
                let known: Vec<_> = pool.services().map(|s| s.full_name().to_owned()).collect();
                format!(
                    "service `{name}` is not in the descriptors (they have: {})",
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                )
            })?;
            for method in service.methods() {
                // Client and bidirectional streams have no request/response JSON form here.
                if method.is_client_streaming() {
                    continue;
                }
                let grpc_path = format!("/{}/{}", service.full_name(), method.name());
                if let Some(extension) = &http_rule {
                    let options = method.options();
                    if options.has_extension(extension)
                        && let Value::Message(rule) = options.get_extension(extension).as_ref()
                    {
                        api.add_rule(&method, &grpc_path, rule, true)?;
                    }
                }
                api.methods.insert(grpc_path, method);
            }
        }
        api.bindings
            .sort_by_key(|binding| std::cmp::Reverse(binding.template.literal_count()));
        Ok(api)
    }

    fn add_rule(
        &mut self,
        method: &MethodDescriptor,
        grpc_path: &str,
        rule: &DynamicMessage,
        top_level: bool,
    ) -> Result<(), String> {
        let context = |why: String| format!("`{}` google.api.http: {why}", method.full_name());
        let text = |name: &str| {
            rule.get_field_by_name(name)
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        };
        let mut pattern = None;
        for verb in ["get", "put", "post", "delete", "patch"] {
            if rule.has_field_by_name(verb) {
                pattern = Some((verb.to_ascii_uppercase(), text(verb)));
            }
        }
        if let Some(custom) = rule.get_field_by_name("custom")
            && let Some(custom) = custom.as_message()
            && rule.has_field_by_name("custom")
        {
            let field = |name: &str| {
                custom
                    .get_field_by_name(name)
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            };
            pattern = Some((field("kind"), field("path")));
        }
        if let Some((http_method, path)) = pattern {
            let template = PathTemplate::parse(&path).map_err(context)?;
            let input = method.input();
            for variable in template.variables() {
                let path = fields::resolve(&input, &variable.field_path).map_err(context)?;
                let field = path.last().expect("resolve returns one field per name");
                if field.is_list() || !fields::settable_from_text(field) {
                    return Err(context(format!(
                        "path variable `{}` must name a singular scalar field",
                        variable.field_path.join(".")
                    )));
                }
            }
            let body = match text("body").as_str() {
                "" => Body::None,
                "*" => Body::Whole,
                name => Body::Field(input.get_field_by_name(name).ok_or_else(|| {
                    context(format!(
                        "body field `{name}` is not in `{}`",
                        input.full_name()
                    ))
                })?),
            };
            let response_body = match text("response_body") {
                name if name.is_empty() => None,
                name if method.output().get_field_by_name(&name).is_some() => Some(name),
                name => {
                    return Err(context(format!(
                        "response_body field `{name}` is not in `{}`",
                        method.output().full_name()
                    )));
                }
            };
            self.bindings.push(Binding {
                http_method,
                template,
                grpc_path: grpc_path.to_owned(),
                body,
                response_body,
            });
        }
        if top_level
            && let Some(more) = rule.get_field_by_name("additional_bindings")
            && let Some(list) = more.as_list()
        {
            for extra in list {
                if let Some(extra) = extra.as_message() {
                    self.add_rule(method, grpc_path, extra, false)?;
                }
            }
        }
        Ok(())
    }

    /// The route for a request, or `None` when it is not one of this API's bindings.
    ///
    /// `POST /pkg.Service/Method` always reaches a unary or server-streaming method of an
    /// exposed service, with the whole message as the body.
    pub fn route(&self, http_method: &str, path: &str) -> Option<(Route<'_>, Vec<Capture<'_>>)> {
        for binding in &self.bindings {
            if binding.http_method != http_method {
                continue;
            }
            if let Some(captures) = binding.template.matches(path) {
                let method = &self.methods[&binding.grpc_path];
                let route = Route {
                    grpc_path: &binding.grpc_path,
                    method,
                    body: binding.body.clone(),
                    response_body: binding.response_body.as_deref(),
                };
                return Some((route, captures));
            }
        }
        if http_method == "POST"
            && let Some((grpc_path, method)) = self.methods.get_key_value(path)
        {
            let route = Route {
                grpc_path,
                method,
                body: Body::Whole,
                response_body: None,
            };
            return Some((route, Vec::new()));
        }
        None
    }

    /// The method behind a gRPC path, for the response phase.
    pub fn method(&self, grpc_path: &str) -> Option<&MethodDescriptor> {
        self.methods.get(grpc_path)
    }

    pub fn bindings(&self) -> &[Binding] {
        &self.bindings
    }
}
