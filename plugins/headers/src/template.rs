//! Header value templates: literal text with `{method}`, `{path}`, `{host}`, `{client_ip}`,
//! `{request_id}` and `{ctx.NAME}`; `{{` and `}}` stand for literal braces. A template is
//! parsed once, when the config is loaded, and expanded per request.

/// Context value names are limited by the gateway.
const MAX_CONTEXT_NAME_BYTES: usize = 128;

/// What a placeholder stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Var {
    Method,
    Path,
    Host,
    ClientIp,
    RequestId,
    Ctx(String),
}

/// Where placeholder values come from: the request, or the request a response answers.
pub trait Vars {
    /// The value of `var`; an unset context value or a missing host is empty.
    fn var(&self, var: &Var) -> String;
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Var(Var),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find(['{', '}']) {
            literal.push_str(&rest[..at]);
            let tail = &rest[at..];
            if tail.starts_with("{{") || tail.starts_with("}}") {
                literal.push_str(&tail[..1]);
                rest = &tail[2..];
                continue;
            }
            if tail.starts_with('}') {
                return Err("a `}` without `{` (write `}}` for a literal brace)".into());
            }
            let Some(end) = tail.find('}') else {
                return Err("a `{` without `}` (write `{{` for a literal brace)".into());
            };
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(Part::Var(var(&tail[1..end])?));
            rest = &tail[end + 1..];
        }
        literal.push_str(rest);
        if let Some(bad) = literal
            .bytes()
            .find(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
        {
            return Err(format!(
                "control character 0x{bad:02x} is not allowed in a header value"
            ));
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template { parts })
    }

    pub fn expand(&self, vars: &impl Vars) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Var(var) => out.push_str(&vars.var(var)),
            }
        }
        out
    }
}

fn var(name: &str) -> Result<Var, String> {
    Ok(match name {
        "method" => Var::Method,
        "path" => Var::Path,
        "host" => Var::Host,
        "client_ip" => Var::ClientIp,
        "request_id" => Var::RequestId,
        _ => match name.strip_prefix("ctx.") {
            Some(ctx) if !ctx.is_empty() && ctx.len() <= MAX_CONTEXT_NAME_BYTES => {
                Var::Ctx(ctx.to_owned())
            }
            _ => {
                return Err(format!(
                    "unknown placeholder `{{{name}}}` (known: {{method}}, {{path}}, {{host}}, \
                     {{client_ip}}, {{request_id}}, {{ctx.NAME}})"
                ));
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;

    impl Vars for Fixed {
        fn var(&self, var: &Var) -> String {
            match var {
                Var::Method => "GET".into(),
                Var::Path => "/a".into(),
                Var::Host => "example.test".into(),
                Var::ClientIp => "10.0.0.1".into(),
                Var::RequestId => "r-1".into(),
                Var::Ctx(name) if name == "user_id" => "u-42".into(),
                Var::Ctx(_) => String::new(),
            }
        }
    }

    fn expand(text: &str) -> String {
        Template::parse(text).unwrap().expand(&Fixed)
    }

    #[test]
    fn placeholders_and_literals() {
        assert_eq!(expand("plain"), "plain");
        assert_eq!(expand(""), "");
        assert_eq!(
            expand("{method} {path} on {host} from {client_ip} ({request_id})"),
            "GET /a on example.test from 10.0.0.1 (r-1)"
        );
        assert_eq!(
            expand("user={ctx.user_id};tenant={ctx.tenant}"),
            "user=u-42;tenant="
        );
        assert_eq!(expand("{{literal}} {{{method}}}"), "{literal} {GET}");
    }

    #[test]
    fn mistakes_are_found_at_parse_time() {
        let error = |text: &str| Template::parse(text).unwrap_err();
        assert!(error("{nope}").contains("unknown placeholder `{nope}`"));
        assert!(error("{ctx.}").contains("unknown placeholder"));
        assert!(error("{Method}").contains("unknown placeholder"));
        assert!(error("open {method").contains("without `}`"));
        assert!(error("close }").contains("without `{`"));
        assert!(error("line\nbreak").contains("control character 0x0a"));
        assert!(Template::parse("tab\tis fine").is_ok());
        assert!(error(&format!("{{ctx.{}}}", "n".repeat(129))).contains("unknown placeholder"));
    }
}
