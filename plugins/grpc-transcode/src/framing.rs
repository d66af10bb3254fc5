//! gRPC's length-prefixed messages: a one-byte compressed flag, a four-byte big-endian length,
//! then the message.

/// One message framed for the wire, uncompressed.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let length = u32::try_from(message.len()).expect("messages are bounded by max_body_bytes");
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

/// Splits a whole response body into its messages.
pub fn unframe(mut body: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut messages = Vec::new();
    while !body.is_empty() {
        let Some(header) = body.get(..5) else {
            return Err(format!(
                "a gRPC frame header is cut short ({} bytes)",
                body.len()
            ));
        };
        if header[0] != 0 {
            // The request never offers an encoding, so a compressed message is a server bug.
            return Err("the upstream sent a compressed gRPC message".into());
        }
        let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let Some(message) = body.get(5..5 + length) else {
            return Err(format!(
                "a gRPC message is cut short ({} of {length} bytes)",
                body.len() - 5
            ));
        };
        messages.push(message);
        body = &body[5 + length..];
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut body = frame(b"abc");
        assert_eq!(body, [0, 0, 0, 0, 3, b'a', b'b', b'c']);
        body.extend(frame(b""));
        body.extend(frame(b"de"));
        assert_eq!(unframe(&body).unwrap(), [&b"abc"[..], b"", b"de"]);
        assert!(unframe(b"").unwrap().is_empty());
    }

    #[test]
    fn broken_frames_are_errors() {
        assert!(
            unframe(&[0, 0, 0])
                .unwrap_err()
                .contains("header is cut short")
        );
        assert!(
            unframe(&[0, 0, 0, 0, 4, 1])
                .unwrap_err()
                .contains("1 of 4 bytes")
        );
        assert!(
            unframe(&[1, 0, 0, 0, 0])
                .unwrap_err()
                .contains("compressed")
        );
    }
}
