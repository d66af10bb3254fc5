//! gRPC status codes: their names, the HTTP status a JSON client gets for each (the mapping
//! grpc-gateway uses), and the JSON error body.

use wasmgate_sdk::serde_json::{Value, json};

pub const OK: u32 = 0;
pub const INVALID_ARGUMENT: u32 = 3;
pub const INTERNAL: u32 = 13;

const NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The code's canonical name (`NOT_FOUND`), or `UNKNOWN` for codes outside 0..=16.
pub fn name(code: u32) -> &'static str {
    NAMES.get(code as usize).copied().unwrap_or("UNKNOWN")
}

/// The HTTP status for a gRPC status code.
pub fn http_status(code: u32) -> u16 {
    match code {
        0 => 200,
        1 => 499, // CANCELLED: the client closed the request (nginx's code)
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500, // UNKNOWN, INTERNAL, DATA_LOSS and codes that do not exist
    }
}

/// The gRPC code a non-gRPC HTTP answer stands for (the table of the gRPC HTTP/2 protocol
/// spec, "HTTP to gRPC status code mapping"), for upstreams that answer without a
/// `grpc-status`, such as a proxy in between.
pub fn from_http_status(status: u16) -> u32 {
    match status {
        400 => INTERNAL,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

/// A `grpc-status` value as sent: a decimal number. Anything else is UNKNOWN, as the spec says.
pub fn parse(value: &[u8]) -> u32 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(2)
}

/// `grpc-message` is percent-encoded on the wire (so that it stays a valid header value).
pub fn decode_message(value: &[u8]) -> String {
    percent_encoding::percent_decode(value)
        .decode_utf8_lossy()
        .into_owned()
}

/// The JSON error body: `{"code": 5, "status": "NOT_FOUND", "message": "...", "details": []}`.
pub fn error_body(code: u32, message: &str, details: Vec<Value>) -> Value {
    json!({
        "code": code,
        "status": name(code),
        "message": message,
        "details": details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_name_and_an_http_status() {
        let expected = [
            (0, "OK", 200),
            (1, "CANCELLED", 499),
            (2, "UNKNOWN", 500),
            (3, "INVALID_ARGUMENT", 400),
            (4, "DEADLINE_EXCEEDED", 504),
            (5, "NOT_FOUND", 404),
            (6, "ALREADY_EXISTS", 409),
            (7, "PERMISSION_DENIED", 403),
            (8, "RESOURCE_EXHAUSTED", 429),
            (9, "FAILED_PRECONDITION", 400),
            (10, "ABORTED", 409),
            (11, "OUT_OF_RANGE", 400),
            (12, "UNIMPLEMENTED", 501),
            (13, "INTERNAL", 500),
            (14, "UNAVAILABLE", 503),
            (15, "DATA_LOSS", 500),
            (16, "UNAUTHENTICATED", 401),
            (17, "UNKNOWN", 500),
        ];
        for (code, expected_name, status) in expected {
            assert_eq!(name(code), expected_name);
            assert_eq!(http_status(code), status, "{expected_name}");
        }
    }

    #[test]
    fn status_and_message_parsing() {
        assert_eq!(parse(b"5"), 5);
        assert_eq!(parse(b"five"), 2);
        assert_eq!(
            decode_message(b"item%207 is 100%25 gone"),
            "item 7 is 100% gone"
        );
    }
}
