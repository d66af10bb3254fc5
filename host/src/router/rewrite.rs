//! Path `rewrite` templates: literal text with `{param}` holes filled from the route's captures.

use matchit::Params;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Param(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewriteTemplate {
    pieces: Vec<Piece>,
}

impl RewriteTemplate {
    /// Parses a template; `known` lists the parameter names the route's path captures.
    pub fn parse(template: &str, known: &[String]) -> Result<Self, String> {
        if !template.starts_with('/') {
            return Err(format!("rewrite `{template}` must start with `/`"));
        }
        let mut pieces = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Literal(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("rewrite `{template}` has an unclosed `{{`"))?
                + open;
            let name = rest[open + 1..close].trim_start_matches('*');
            if !known.iter().any(|k| k == name) {
                return Err(format!(
                    "rewrite `{template}` uses `{{{name}}}`, which the route's path does not capture{}",
                    if known.is_empty() {
                        String::new()
                    } else {
                        format!(" (it captures: {})", known.join(", "))
                    }
                ));
            }
            pieces.push(Piece::Param(name.to_owned()));
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("rewrite `{template}` has a `}}` without `{{`"));
        }
        if !rest.is_empty() {
            pieces.push(Piece::Literal(rest.to_owned()));
        }
        Ok(RewriteTemplate { pieces })
    }

    /// The new path; `//` produced by an empty capture next to a literal slash is collapsed.
    pub fn render(&self, params: &Params<'_, '_>) -> String {
        let mut out = String::with_capacity(64);
        for piece in &self.pieces {
            match piece {
                Piece::Literal(text) => out.push_str(text),
                Piece::Param(name) => {
                    let value = params.get(name).unwrap_or("");
                    if out.ends_with('/') {
                        out.push_str(value.trim_start_matches('/'));
                    } else {
                        out.push_str(value);
                    }
                }
            }
        }
        if out.is_empty() {
            out.push('/');
        }
        out
    }
}

/// Names of the parameters a matchit pattern captures (`{id}`, `{*rest}`).
pub fn captured_params(pattern: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let inner = &rest[open + 1..open + close];
        // `{{` escapes a literal brace in matchit patterns.
        if !inner.starts_with('{') {
            names.push(inner.trim_start_matches('*').to_owned());
        }
        rest = &rest[open + close + 1..];
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(pattern: &str, template: &str, path: &str) -> String {
        let mut router = matchit::Router::new();
        router.insert(pattern, ()).unwrap();
        let matched = router.at(path).unwrap();
        RewriteTemplate::parse(template, &captured_params(pattern))
            .unwrap()
            .render(&matched.params)
    }

    #[test]
    fn renders_captures() {
        assert_eq!(
            render("/user/v1/{*rest}", "/{rest}", "/user/v1/a/b"),
            "/a/b"
        );
        assert_eq!(render("/u/{id}/x", "/users/{id}", "/u/42/x"), "/users/42");
        assert_eq!(
            render("/api/{*rest}", "/v2/{rest}", "/api/items"),
            "/v2/items"
        );
    }

    #[test]
    fn rejects_unknown_params() {
        let err = RewriteTemplate::parse("/{nope}", &["rest".into()]).unwrap_err();
        assert!(err.contains("does not capture"), "{err}");
        assert!(RewriteTemplate::parse("nope", &[]).is_err());
        assert!(RewriteTemplate::parse("/{rest", &["rest".into()]).is_err());
    }
}
