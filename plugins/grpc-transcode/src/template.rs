//! `google.api.http` path templates, compiled once at config time and matched per request:
//!
//! ```text
//! Template = "/" Segments [ ":" Verb ]
//! Segment  = "*" | "**" | LITERAL | "{" FieldPath [ "=" Segments ] "}"
//! ```
//!
//! `*` matches one path segment, `**` the rest of the path (so it must come last), and a
//! variable captures what its segments match (one segment when it has no `=`).

/// A compiled path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    source: String,
    segments: Vec<Segment>,
    verb: Option<String>,
    variables: Vec<Variable>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one non-empty segment.
    One,
    /// `**`: every remaining segment (zero or more).
    Rest,
}

/// A `{field.path}` and the segments it covers (`end` is `None` when it runs to a `**`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub field_path: Vec<String>,
    start: usize,
    end: Option<usize>,
}

/// A variable's value in a matched path, percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture<'t> {
    pub field_path: &'t [String],
    pub value: String,
}

impl PathTemplate {
    pub fn parse(source: &str) -> Result<PathTemplate, String> {
        let context = |why: &str| format!("path template `{source}`: {why}");
        let fail = |why: &str| Err(context(why));
        let Some(rest) = source.strip_prefix('/') else {
            return fail("must start with `/`");
        };
        let (body, verb) = split_verb(rest);
        if verb.is_some_and(str::is_empty) {
            return fail("the verb after `:` is empty");
        }
        let mut template = PathTemplate {
            source: source.to_owned(),
            segments: Vec::new(),
            verb: verb.map(str::to_owned),
            variables: Vec::new(),
        };
        for piece in split_top_level(body) {
            if let Some(inner) = piece.strip_prefix('{') {
                let Some(inner) = inner.strip_suffix('}') else {
                    return fail(&format!("`{piece}` is not a closed variable"));
                };
                let (field, pattern) = inner.split_once('=').unwrap_or((inner, "*"));
                let field_path: Vec<String> = field.split('.').map(str::to_owned).collect();
                if field_path.iter().any(|name| !is_identifier(name)) {
                    return fail(&format!("`{field}` is not a field path"));
                }
                let start = template.segments.len();
                for part in pattern.split('/') {
                    if part.starts_with('{') {
                        return fail("variables cannot nest");
                    }
                    template
                        .segments
                        .push(segment(part).map_err(|why| context(&why))?);
                }
                let end = (template.segments.last() != Some(&Segment::Rest))
                    .then_some(template.segments.len());
                template.variables.push(Variable {
                    field_path,
                    start,
                    end,
                });
            } else {
                template
                    .segments
                    .push(segment(piece).map_err(|why| context(&why))?);
            }
        }
        let rest_at = template.segments.iter().position(|s| *s == Segment::Rest);
        if rest_at.is_some_and(|at| at + 1 != template.segments.len()) {
            return fail("`**` must be the last segment");
        }
        Ok(template)
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn variables(&self) -> &[Variable] {
        &self.variables
    }

    /// How specific the template is: when several match a path, the one with more literal
    /// segments wins (`/v1/items:search` over `/v1/{name=**}`).
    pub fn literal_count(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count()
            + usize::from(self.verb.is_some())
    }

    /// The variables' values if `path` (without the query, percent-encoded) matches.
    pub fn matches(&self, path: &str) -> Option<Vec<Capture<'_>>> {
        let path = path.strip_prefix('/')?;
        let path = match &self.verb {
            Some(verb) => path.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => path,
        };
        let parts: Vec<&str> = path.split('/').collect();
        for (index, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Rest => break,
                Segment::One if parts.get(index).is_some_and(|p| !p.is_empty()) => {}
                Segment::Literal(literal) if parts.get(index) == Some(&literal.as_str()) => {}
                _ => return None,
            }
        }
        let ends_with_rest = self.segments.last() == Some(&Segment::Rest);
        if !ends_with_rest && parts.len() != self.segments.len() {
            return None;
        }
        if ends_with_rest && parts.len() < self.segments.len() - 1 {
            return None;
        }
        let captures = self
            .variables
            .iter()
            .map(|variable| {
                let end = variable.end.unwrap_or(parts.len());
                let value = parts[variable.start..end]
                    .iter()
                    .map(|part| percent_encoding::percent_decode_str(part).decode_utf8_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                Capture {
                    field_path: &variable.field_path,
                    value,
                }
            })
            .collect();
        Some(captures)
    }
}

fn segment(text: &str) -> Result<Segment, String> {
    match text {
        "*" => Ok(Segment::One),
        "**" => Ok(Segment::Rest),
        "" => Err("empty segment".into()),
        _ if text.contains(['{', '}', '*']) => Err(format!("`{text}` is not a valid segment")),
        _ => Ok(Segment::Literal(text.to_owned())),
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Splits off a trailing `:verb` that is outside any variable.
fn split_verb(template: &str) -> (&str, Option<&str>) {
    let mut depth = 0;
    let mut last_colon = None;
    for (at, c) in template.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            '/' if depth == 0 => last_colon = None,
            ':' if depth == 0 => last_colon = Some(at),
            _ => {}
        }
    }
    match last_colon {
        Some(at) => (&template[..at], Some(&template[at + 1..])),
        None => (template, None),
    }
}

/// Splits on the `/` that are outside variables.
fn split_top_level(template: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (at, c) in template.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            '/' if depth == 0 => {
                pieces.push(&template[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    pieces.push(&template[start..]);
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captures(template: &str, path: &str) -> Option<Vec<(String, String)>> {
        let template = PathTemplate::parse(template).unwrap();
        template.matches(path).map(|captures| {
            captures
                .into_iter()
                .map(|c| (c.field_path.join("."), c.value))
                .collect()
        })
    }

    fn pairs(list: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(
            list.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn literals_and_single_variables() {
        assert_eq!(captures("/v1/items", "/v1/items"), pairs(&[]));
        assert_eq!(
            captures("/v1/items/{id}", "/v1/items/7"),
            pairs(&[("id", "7")])
        );
        assert_eq!(captures("/v1/items/{id}", "/v1/items"), None);
        assert_eq!(captures("/v1/items/{id}", "/v1/items/"), None);
        assert_eq!(captures("/v1/items/{id}", "/v1/items/7/x"), None);
        assert_eq!(captures("/v1/items/{id}", "/v2/items/7"), None);
        assert_eq!(
            captures(
                "/v1/shelves/{shelf}/books/{book.id}",
                "/v1/shelves/a%20b/books/9"
            ),
            pairs(&[("shelf", "a b"), ("book.id", "9")])
        );
    }

    #[test]
    fn wildcards_in_variables_and_verbs() {
        assert_eq!(
            captures("/v1/{name=shelves/*/books/*}", "/v1/shelves/1/books/2"),
            pairs(&[("name", "shelves/1/books/2")])
        );
        assert_eq!(captures("/v1/{name=shelves/*}", "/v1/books/1"), None);
        assert_eq!(
            captures("/files/{path=**}", "/files/a/b/c.txt"),
            pairs(&[("path", "a/b/c.txt")])
        );
        assert_eq!(captures("/files/**", "/files"), pairs(&[]));
        assert_eq!(captures("/v1/*/x", "/v1/anything/x"), pairs(&[]));
        assert_eq!(
            captures("/v1/items/{id}:cancel", "/v1/items/7:cancel"),
            pairs(&[("id", "7")])
        );
        assert_eq!(captures("/v1/items/{id}:cancel", "/v1/items/7"), None);
        assert_eq!(captures("/v1/items:search", "/v1/items:search"), pairs(&[]));
    }

    #[test]
    fn bad_templates_are_rejected() {
        for (template, why) in [
            ("v1/items", "must start with `/`"),
            ("/v1/{id", "not a closed variable"),
            ("/v1/{a-b}", "not a field path"),
            ("/v1/{a={b}}", "cannot nest"),
            ("/v1/**/x", "must be the last segment"),
            ("/v1//x", "empty segment"),
            ("/v1/x:", "verb after `:` is empty"),
            ("/v1/a*b", "not a valid segment"),
        ] {
            let err = PathTemplate::parse(template).unwrap_err();
            assert!(err.contains(why), "{template}: {err}");
        }
    }

    #[test]
    fn literal_count_orders_specific_templates_first() {
        let specific = PathTemplate::parse("/v1/items:search").unwrap();
        let general = PathTemplate::parse("/v1/{name=**}").unwrap();
        assert!(specific.literal_count() > general.literal_count());
    }
}
