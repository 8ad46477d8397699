//! HTTP targets: `parse_request` and `parse_response` under limits the input chooses.
//!
//! The first three bytes pick the limits (255 picks the default), the rest is the message.
//! A parsed message must respect the limits, be found again in the bytes it consumed alone,
//! need more bytes when cut short, and survive its own encoder.

use hybridcast_core::http::{self, HttpError, HttpLimits, MAX_HEADERS, Request, Response};

/// Limits for re-parsing encoder output: only the encoder is under test there.
const WIDE: HttpLimits = HttpLimits {
    max_header_bytes: 1 << 24,
    max_headers: MAX_HEADERS,
    max_body_bytes: usize::MAX,
};

/// The limits the first three bytes choose, and the message after them.
fn split(data: &[u8]) -> (HttpLimits, &[u8]) {
    let d = HttpLimits::default();
    let byte = |i: usize| data.get(i).copied().unwrap_or(255);
    let limits = HttpLimits {
        max_header_bytes: match byte(0) {
            255 => d.max_header_bytes,
            b => usize::from(b) * 16,
        },
        max_headers: match byte(1) {
            255 => d.max_headers,
            b => usize::from(b % 40),
        },
        max_body_bytes: match byte(2) {
            255 => d.max_body_bytes,
            b => usize::from(b) * 8,
        },
    };
    (limits, data.get(3..).unwrap_or_default())
}

/// Checks shared by requests and responses; `head` is the length of the header section.
fn check_frame(
    msg: &[u8],
    limits: &HttpLimits,
    consumed: usize,
    body_len: usize,
    header_count: usize,
) {
    assert!(
        consumed <= msg.len(),
        "consumed {consumed} of {}",
        msg.len()
    );
    assert!(
        body_len <= limits.max_body_bytes,
        "body {body_len} over the limit"
    );
    let head = consumed - body_len;
    assert!(head <= limits.max_header_bytes, "head of {head} bytes");
    assert!(header_count <= limits.max_headers.min(MAX_HEADERS));
}

/// Cutting a complete message short must ask for more bytes, never give another answer.
fn check_prefixes<T: std::fmt::Debug>(
    msg: &[u8],
    consumed: usize,
    parse: impl Fn(&[u8]) -> Result<Option<T>, HttpError>,
) {
    for cut in [consumed / 2, consumed.saturating_sub(1)] {
        if cut < consumed {
            let r = parse(&msg[..cut]);
            assert!(matches!(r, Ok(None)), "prefix of {cut} bytes gave {r:?}");
        }
    }
}

/// Headers `Request::encode` keeps (see its documentation).
fn kept(headers: &[(String, String)]) -> Vec<(String, String)> {
    let vchar = |b: u8| b == b'\t' || (b >= 0x20 && b != 0x7f);
    headers
        .iter()
        .filter(|(n, v)| {
            !["host", "content-length", "transfer-encoding"].contains(&n.as_str())
                && v.bytes().all(vchar)
        })
        .cloned()
        .collect()
}

/// `http::parse_request` on arbitrary bytes under input-chosen limits; a parsed request
/// re-encodes to one that parses back the same.
pub fn http_request(data: &[u8]) {
    let (limits, msg) = split(data);
    let parse = |b: &[u8]| http::parse_request(b, &limits);
    let Ok(Some((req, consumed))) = parse(msg) else {
        return;
    };
    check_frame(msg, &limits, consumed, req.body.len(), req.headers.len());
    assert!(req.path.starts_with('/'), "{req:?}");
    assert_eq!(parse(&msg[..consumed]), Ok(Some((req.clone(), consumed))));
    check_prefixes(msg, consumed, parse);
    let _ = req.keep_alive();

    let mut plain = req.clone();
    if plain.headers.len() + 2 > MAX_HEADERS {
        plain.headers.clear();
    }
    let encoded = plain.encode("fuzz.example:80");
    let (back, used) = match http::parse_request(&encoded, &WIDE) {
        Ok(Some(r)) => r,
        other => panic!("encoding of {plain:?} parses as {other:?}"),
    };
    assert_eq!(used, encoded.len());
    assert_eq!(
        (
            back.method,
            &back.path,
            &back.query,
            &back.body,
            back.version
        ),
        (
            plain.method,
            &plain.path,
            &plain.query,
            &plain.body,
            plain.version
        ),
        "round trip"
    );
    let mut want = vec![("host".to_owned(), "fuzz.example:80".to_owned())];
    want.extend(kept(&plain.headers));
    want.push(("content-length".to_owned(), plain.body.len().to_string()));
    assert_eq!(back.headers, want, "headers after the round trip");
}

/// `http::parse_response` on arbitrary bytes under input-chosen limits; a parsed response
/// re-encodes to one that parses back with the same status and body.
pub fn http_response(data: &[u8]) {
    let (limits, msg) = split(data);
    let parse = |b: &[u8]| http::parse_response(b, &limits);
    let Ok(Some((resp, consumed))) = parse(msg) else {
        return;
    };
    check_frame(msg, &limits, consumed, resp.body.len(), resp.headers.len());
    let bodyless = (100..200).contains(&resp.status) || resp.status == 204 || resp.status == 304;
    if bodyless {
        assert!(resp.body.is_empty(), "{resp:?}");
    }
    assert_eq!(parse(&msg[..consumed]), Ok(Some((resp.clone(), consumed))));
    check_prefixes(msg, consumed, parse);

    let mut plain = resp.clone();
    if plain.headers.len() + 1 > MAX_HEADERS {
        plain.headers.clear();
    }
    let encoded = plain.encode();
    let (back, used): (Response, usize) = match http::parse_response(&encoded, &WIDE) {
        Ok(Some(r)) => r,
        other => panic!("encoding of {plain:?} parses as {other:?}"),
    };
    assert_eq!(used, encoded.len());
    assert_eq!((back.status, &back.body), (plain.status, &plain.body));
}

/// A request the node's peers would send, for seeds: `path` with the given headers and body.
pub fn request_bytes(req: &Request) -> Vec<u8> {
    req.encode("127.0.0.1:7000")
}
