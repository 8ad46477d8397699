//! Minimal sans-IO HTTP/1.x message codec: pure functions from bytes to
//! [`Request`]/[`Response`] values and back.
//!
//! Invariant: every amount of work and memory is bounded by [`HttpLimits`]
//! (header section size, header count, body size), checked before anything
//! is allocated for it; malformed or over-limit input becomes an
//! [`HttpError`] that maps to an HTTP status via [`HttpError::status`]; no
//! input bytes can make these functions panic.

use bytes::Bytes;

/// Hard upper bound on the number of headers parsed (size of the stack array).
pub const MAX_HEADERS: usize = 32;

/// Bounds applied while parsing a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Maximum size of the head (start line through the blank line), in bytes.
    pub max_header_bytes: usize,
    /// Maximum number of header fields (clamped to [`MAX_HEADERS`]).
    pub max_headers: usize,
    /// Maximum body size accepted from `content-length`, in bytes.
    pub max_body_bytes: usize,
}

impl Default for HttpLimits {
    /// 8 KiB header section, 32 headers, 64 MiB body.
    fn default() -> Self {
        HttpLimits {
            max_header_bytes: 8 * 1024,
            max_headers: MAX_HEADERS,
            max_body_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Request method; anything unrecognised is [`Method::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`
    Get,
    /// `POST`
    Post,
    /// `HEAD`
    Head,
    /// `PUT`
    Put,
    /// `DELETE`
    Delete,
    /// Any other syntactically valid method token (encoded as `OTHER`).
    Other,
}

const METHODS: [(Method, &str); 6] = [
    (Method::Get, "GET"),
    (Method::Post, "POST"),
    (Method::Head, "HEAD"),
    (Method::Put, "PUT"),
    (Method::Delete, "DELETE"),
    (Method::Other, "OTHER"),
];

impl Method {
    fn from_token(token: &str) -> Method {
        let found = METHODS.iter().find(|(_, name)| *name == token);
        found.map_or(Method::Other, |(m, _)| *m)
    }

    /// The method's token (`OTHER` for [`Method::Other`]).
    pub fn as_str(self) -> &'static str {
        let found = METHODS.iter().find(|(m, _)| *m == self);
        found.map_or("OTHER", |(_, name)| name)
    }
}

/// A parsed (or to-be-encoded) HTTP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Request method.
    pub method: Method,
    /// Percent-decoded path without the query string; starts with `/`.
    pub path: String,
    /// Percent-decoded `k=v` query pairs in order (`+` is a space).
    pub query: Vec<(String, String)>,
    /// Headers with lower-cased names and trimmed UTF-8 values, in order.
    pub headers: Vec<(String, String)>,
    /// Request body (exactly `content-length` bytes).
    pub body: Bytes,
    /// HTTP minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
}

impl Request {
    /// Builds an HTTP/1.1 GET request; undecodable components are kept verbatim.
    pub fn get(path_and_query: &str) -> Request {
        let (raw_path, raw_query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let lenient = |s: &str, plus| percent_decode(s, plus).unwrap_or_else(|| s.to_owned());
        let mut path = lenient(raw_path, false);
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        let query = query_pairs(raw_query)
            .map(|(k, v)| (lenient(k, true), lenient(v, true)))
            .collect();
        Request {
            method: Method::Get,
            path,
            query,
            headers: Vec::new(),
            body: Bytes::new(),
            version: 1,
        }
    }

    /// Value of the first query parameter named `name`.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Value of the first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Whether the connection may be reused after this request.
    pub fn keep_alive(&self) -> bool {
        let has = |token: &str| {
            self.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
                .flat_map(|(_, v)| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        };
        if has("close") {
            false
        } else {
            self.version >= 1 || has("keep-alive")
        }
    }

    /// Serialises the request for sending to `host`.
    ///
    /// Output: `METHOD target HTTP/1.1` (`HTTP/1.0` if `version == 0`), then
    /// `host: <host>`, then every user header except `host`, `content-length`
    /// and `transfer-encoding` (headers with an invalid name or a value
    /// containing control characters are skipped, as is an invalid host), then
    /// `content-length: <body len>`, a blank line and the body. The target is
    /// the path (each `/`-separated segment percent-encoded, `/` prepended if
    /// missing) plus `?k=v&...` when the query is non-empty. Parsing the output
    /// gives back the same method, path, query, body and version, and headers
    /// `[host] ++ kept user headers ++ [content-length]` (names lower-cased,
    /// values trimmed).
    pub fn encode(&self, host: &str) -> Vec<u8> {
        let mut target = self
            .path
            .split('/')
            .map(percent_encode)
            .collect::<Vec<_>>()
            .join("/");
        if !target.starts_with('/') {
            target.insert(0, '/');
        }
        for (i, (k, v)) in self.query.iter().enumerate() {
            target.push(if i == 0 { '?' } else { '&' });
            target.push_str(&percent_encode(k));
            target.push('=');
            target.push_str(&percent_encode(v));
        }
        let minor = if self.version == 0 { 0 } else { 1 };
        let line = format!("{} {target} HTTP/1.{minor}\r\n", self.method.as_str());
        let mut out = line.into_bytes();
        push_header(&mut out, "host", host);
        for (name, value) in &self.headers {
            if !is_framing_header(name) && !name.eq_ignore_ascii_case("host") {
                push_header(&mut out, name, value);
            }
        }
        finish(out, &self.body)
    }
}

/// An HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers with lower-cased names and trimmed values (when parsed).
    pub headers: Vec<(String, String)>,
    /// Response body.
    pub body: Bytes,
}

impl Response {
    /// A 200 response with the given content type and body.
    pub fn ok(content_type: &str, body: impl Into<Bytes>) -> Response {
        Response {
            status: 200,
            headers: vec![("content-type".to_owned(), content_type.to_owned())],
            body: body.into(),
        }
    }

    /// A plain-text response whose body is `reason` followed by a newline.
    pub fn error(status: u16, reason: &str) -> Response {
        Response {
            status,
            headers: vec![(
                "content-type".to_owned(),
                "text/plain; charset=utf-8".to_owned(),
            )],
            body: Bytes::from(format!("{reason}\n")),
        }
    }

    /// Value of the first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Serialises as HTTP/1.1 with a canonical reason phrase and `content-length`.
    ///
    /// User `content-length`/`transfer-encoding` headers and invalid headers are
    /// skipped. For 1xx, 204 and 304 neither `content-length` nor the body is
    /// written, since those statuses never carry a body.
    pub fn encode(&self) -> Vec<u8> {
        // Three digits always: a status below 100 (parsed from, say, `031`) must not come out
        // as `31`, which no parser reads back.
        let line = format!(
            "HTTP/1.1 {:03} {}\r\n",
            self.status,
            reason_phrase(self.status)
        );
        let mut out = line.into_bytes();
        for (name, value) in &self.headers {
            if !is_framing_header(name) {
                push_header(&mut out, name, value);
            }
        }
        if bodyless_status(self.status) {
            out.extend_from_slice(b"\r\n");
            out
        } else {
            finish(out, &self.body)
        }
    }
}

/// Canonical reason phrase for `status`, or `"Unknown"`.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        _ => "Unknown",
    }
}

/// Why a message could not be parsed; each variant maps to a status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The header section exceeds `max_header_bytes` (431).
    #[error("header section exceeds {limit} bytes")]
    HeadersTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// More header fields than allowed (431).
    #[error("more than {limit} header fields")]
    TooManyHeaders {
        /// The effective limit.
        limit: usize,
    },
    /// `content-length` is above `max_body_bytes` (413).
    #[error("body of {length} bytes exceeds limit of {limit} bytes")]
    BodyTooLarge {
        /// The declared length.
        length: u64,
        /// The configured limit.
        limit: usize,
    },
    /// A POST or PUT request has no `content-length` (411).
    #[error("content-length required")]
    LengthRequired,
    /// The message has a `transfer-encoding` header (501).
    #[error("transfer-encoding is not supported")]
    UnsupportedTransferEncoding,
    /// The HTTP version is neither 1.0 nor 1.1 (505).
    #[error("unsupported HTTP version")]
    UnsupportedVersion,
    /// Any other syntax or semantic error (400).
    #[error("malformed HTTP message: {0}")]
    Malformed(&'static str),
}

impl HttpError {
    /// The HTTP status code to answer with.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadersTooLarge { .. } | HttpError::TooManyHeaders { .. } => 431,
            HttpError::BodyTooLarge { .. } => 413,
            HttpError::LengthRequired => 411,
            HttpError::UnsupportedTransferEncoding => 501,
            HttpError::UnsupportedVersion => 505,
            HttpError::Malformed(_) => 400,
        }
    }

    /// An error response describing `self`, with `connection: close`.
    pub fn to_response(&self) -> Response {
        let mut resp = Response::error(self.status(), &self.to_string());
        resp.headers
            .push(("connection".to_owned(), "close".to_owned()));
        resp
    }
}

/// Parses one request from the start of `buf`.
///
/// `Ok(None)`: the bytes so far are a valid prefix, need more.
/// `Ok(Some((req, consumed)))`: one complete request occupies `buf[..consumed]`
/// (pipelined bytes after it are left alone). `Err`: fatal for this connection.
pub fn parse_request(
    buf: &[u8],
    limits: &HttpLimits,
) -> Result<Option<(Request, usize)>, HttpError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let max_headers = limits.max_headers.min(MAX_HEADERS);
    let mut req = httparse::Request::new(&mut storage[..max_headers]);
    let parsed = req.parse(header_window(buf, limits));
    let Some(head_len) = head_status(parsed, buf.len(), limits, max_headers)? else {
        return Ok(None);
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HttpError::Malformed("incomplete request line"));
    };
    let method = Method::from_token(method);
    let (raw_path, raw_query) = target.split_once('?').unwrap_or((target, ""));
    if !raw_path.starts_with('/') {
        return Err(HttpError::Malformed("path must start with '/'"));
    }
    let bad_escape = HttpError::Malformed("invalid percent-encoding");
    let path = percent_decode(raw_path, false).ok_or(bad_escape.clone())?;
    let query = query_pairs(raw_query)
        .map(|(k, v)| Some((percent_decode(k, true)?, percent_decode(v, true)?)))
        .collect::<Option<Vec<_>>>()
        .ok_or(bad_escape)?;
    let headers = convert_headers(req.headers)?;
    let length = match content_length(&headers, limits)? {
        Some(n) => n,
        None if matches!(method, Method::Post | Method::Put) => {
            return Err(HttpError::LengthRequired);
        }
        None => 0,
    };
    let Some((body, consumed)) = take_body(buf, head_len, length) else {
        return Ok(None);
    };
    let request = Request {
        method,
        path,
        query,
        headers,
        body,
        version,
    };
    Ok(Some((request, consumed)))
}

/// Parses one response from the start of `buf` (same contract as [`parse_request`]).
///
/// A response without `content-length` is malformed, except 1xx, 204 and 304,
/// which always have an empty body.
pub fn parse_response(
    buf: &[u8],
    limits: &HttpLimits,
) -> Result<Option<(Response, usize)>, HttpError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let max_headers = limits.max_headers.min(MAX_HEADERS);
    let mut resp = httparse::Response::new(&mut storage[..max_headers]);
    let parsed = resp.parse(header_window(buf, limits));
    let Some(head_len) = head_status(parsed, buf.len(), limits, max_headers)? else {
        return Ok(None);
    };
    let Some(status) = resp.code else {
        return Err(HttpError::Malformed("incomplete status line"));
    };
    let headers = convert_headers(resp.headers)?;
    let length = if bodyless_status(status) {
        if find_header(&headers, "transfer-encoding").is_some() {
            return Err(HttpError::UnsupportedTransferEncoding);
        }
        0
    } else {
        content_length(&headers, limits)?
            .ok_or(HttpError::Malformed("response without content-length"))?
    };
    let Some((body, consumed)) = take_body(buf, head_len, length) else {
        return Ok(None);
    };
    let response = Response {
        status,
        headers,
        body,
    };
    Ok(Some((response, consumed)))
}

/// Percent-encodes everything except the unreserved characters `A-Za-z0-9-._~`.
pub fn percent_encode(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// The part of `buf` that may hold the header section under `limits`.
fn header_window<'a>(buf: &'a [u8], limits: &HttpLimits) -> &'a [u8] {
    &buf[..buf.len().min(limits.max_header_bytes)]
}

/// Turns an httparse result into the head length, `None` for "need more".
fn head_status(
    parsed: httparse::Result<usize>,
    buf_len: usize,
    limits: &HttpLimits,
    max_headers: usize,
) -> Result<Option<usize>, HttpError> {
    match parsed {
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) if buf_len > limits.max_header_bytes => {
            Err(HttpError::HeadersTooLarge {
                limit: limits.max_header_bytes,
            })
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            Err(HttpError::TooManyHeaders { limit: max_headers })
        }
        Err(httparse::Error::Version) => Err(HttpError::UnsupportedVersion),
        Err(httparse::Error::HeaderName) => Err(HttpError::Malformed("invalid header name")),
        Err(httparse::Error::HeaderValue) => Err(HttpError::Malformed("invalid header value")),
        Err(_) => Err(HttpError::Malformed("invalid start line")),
    }
}

/// Lower-cases names, trims values and rejects non-UTF-8 values.
fn convert_headers(raw: &[httparse::Header<'_>]) -> Result<Vec<(String, String)>, HttpError> {
    raw.iter()
        .map(|h| {
            let value = std::str::from_utf8(h.value)
                .map_err(|_| HttpError::Malformed("header value is not UTF-8"))?;
            let value = value.trim_matches([' ', '\t']).to_owned();
            Ok((h.name.to_ascii_lowercase(), value))
        })
        .collect()
}

/// The validated body length, or `None` if there is no `content-length`.
fn content_length(
    headers: &[(String, String)],
    limits: &HttpLimits,
) -> Result<Option<usize>, HttpError> {
    if find_header(headers, "transfer-encoding").is_some() {
        return Err(HttpError::UnsupportedTransferEncoding);
    }
    let mut found: Option<u64> = None;
    for (_, value) in headers.iter().filter(|(n, _)| n == "content-length") {
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HttpError::Malformed("content-length is not a number"));
        }
        let n: u64 = value
            .parse()
            .map_err(|_| HttpError::Malformed("content-length overflows"))?;
        if found.is_some_and(|f| f != n) {
            return Err(HttpError::Malformed("conflicting content-length headers"));
        }
        found = Some(n);
    }
    let Some(length) = found else {
        return Ok(None);
    };
    match usize::try_from(length) {
        Ok(n) if n <= limits.max_body_bytes => Ok(Some(n)),
        _ => Err(HttpError::BodyTooLarge {
            length,
            limit: limits.max_body_bytes,
        }),
    }
}

/// Copies the body if all of it has arrived; returns it with the total length.
fn take_body(buf: &[u8], head_len: usize, length: usize) -> Option<(Bytes, usize)> {
    let end = head_len.checked_add(length)?;
    let body = buf.get(head_len..end)?;
    Some((Bytes::copy_from_slice(body), end))
}

/// Splits a raw query string into `(key, value)` pieces, skipping empty ones.
fn query_pairs(raw: &str) -> impl Iterator<Item = (&str, &str)> {
    raw.split('&')
        .filter(|s| !s.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// Decodes `%XX` escapes (and `+` as space if asked); `None` if invalid.
fn percent_decode(s: &str, plus_as_space: bool) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hi = char::from(bytes.next()?).to_digit(16)?;
                let lo = char::from(bytes.next()?).to_digit(16)?;
                out.push(u8::try_from(hi * 16 + lo).ok()?);
            }
            b'+' if plus_as_space => out.push(b' '),
            _ => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn is_framing_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("transfer-encoding")
}

fn bodyless_status(status: u16) -> bool {
    (100..200).contains(&status) || status == 204 || status == 304
}

/// Appends `name: value\r\n` if both are safe to put on the wire.
fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    let vchar = |b: u8| b == b'\t' || (b >= 0x20 && b != 0x7f);
    if !name.is_empty() && name.bytes().all(tchar) && value.bytes().all(vchar) {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
}

/// Appends `content-length`, the blank line and the body.
fn finish(mut out: Vec<u8>, body: &[u8]) -> Vec<u8> {
    push_header(&mut out, "content-length", &body.len().to_string());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `http_response` fuzz target: status `031` parsed as 31 and was written
    /// back as `HTTP/1.1 31`, which does not parse.
    #[test]
    fn short_status_round_trips() {
        let raw = b"HTTP/1.1 031 X\r\ncontent-length: 0\r\n\r\n";
        let (resp, _) = parse_response(raw, &HttpLimits::default())
            .expect("parses")
            .expect("complete");
        assert_eq!(resp.status, 31);
        let again = parse_response(&resp.encode(), &HttpLimits::default());
        assert_eq!(again.ok().flatten().map(|(r, _)| r.status), Some(31));
    }
    use quickcheck::{QuickCheck, TestResult};

    fn req(raw: &[u8]) -> Result<Option<(Request, usize)>, HttpError> {
        parse_request(raw, &HttpLimits::default())
    }

    fn req_err(raw: &[u8]) -> HttpError {
        match req(raw) {
            Err(e) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    fn lim(max_header_bytes: usize, max_headers: usize, max_body_bytes: usize) -> HttpLimits {
        let (h, n, b) = (max_header_bytes, max_headers, max_body_bytes);
        HttpLimits {
            max_header_bytes: h,
            max_headers: n,
            max_body_bytes: b,
        }
    }

    fn method_of(i: u8) -> Method {
        METHODS[usize::from(i) % METHODS.len()].0
    }

    const SAMPLE: &[u8] = b"POST /a%20b/c?x=1&y=hello+world&flag HTTP/1.1\r\nHost: h\r\nX-Thing:  v \r\ncontent-length: 5\r\n\r\nhello";

    #[test]
    fn parses_full_request() {
        let (r, n) = req(SAMPLE).unwrap().unwrap();
        assert_eq!(n, SAMPLE.len());
        assert_eq!(r.method, Method::Post);
        assert_eq!(r.path, "/a b/c");
        assert_eq!(r.query_param("y"), Some("hello world"));
        assert_eq!(r.query_param("flag"), Some(""));
        assert_eq!(r.query_param("nope"), None);
        assert_eq!(r.header("x-thing"), Some("v"));
        assert_eq!(r.header("HOST"), Some("h"));
        assert_eq!(&r.body[..], b"hello");
        assert!(r.keep_alive());
    }

    #[test]
    fn every_strict_prefix_needs_more() {
        for i in 0..SAMPLE.len() {
            assert_eq!(req(&SAMPLE[..i]), Ok(None), "prefix of length {i}");
        }
        let resp = Response::ok("text/plain", "body").encode();
        for i in 0..resp.len() {
            assert_eq!(parse_response(&resp[..i], &HttpLimits::default()), Ok(None));
        }
        let (_, n) = parse_response(&resp, &HttpLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!(n, resp.len());
    }

    #[test]
    fn pipelined_requests_are_left_alone() {
        let mut buf = SAMPLE.to_vec();
        buf.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\nGET");
        let (first, n) = req(&buf).unwrap().unwrap();
        assert_eq!(&first.body[..], b"hello");
        let (second, m) = req(&buf[n..]).unwrap().unwrap();
        assert_eq!(
            (second.method, second.path.as_str()),
            (Method::Get, "/next")
        );
        assert!(second.body.is_empty());
        assert_eq!(req(&buf[n + m..]), Ok(None));
    }

    #[test]
    fn duplicate_content_length() {
        let same = b"PUT / HTTP/1.1\r\ncontent-length: 2\r\nContent-Length: 02\r\n\r\nok";
        assert_eq!(&req(same).unwrap().unwrap().0.body[..], b"ok");
        let differ = b"PUT / HTTP/1.1\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok!";
        assert!(matches!(req_err(differ), HttpError::Malformed(_)));
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |raw: &[u8]| req(raw).unwrap().unwrap().0.keep_alive();
        assert!(ka(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nconnection: Keep-Alive\r\n\r\n"));
    }

    #[test]
    fn error_variants_and_statuses() {
        let small = lim(64, 32, 1024);
        let partial = [b"GET / HTTP/1.1\r\nx: ".as_slice(), &[b'a'; 100]].concat();
        let too_large = HttpError::HeadersTooLarge { limit: 64 };
        assert_eq!(parse_request(&partial, &small), Err(too_large.clone()));
        let complete = [partial.as_slice(), b"\r\n\r\n"].concat();
        assert_eq!(parse_request(&complete, &small), Err(too_large.clone()));
        let partial_resp = [b"HTTP/1.1 200 OK\r\nx: ".as_slice(), &[b'a'; 100]].concat();
        assert_eq!(
            parse_response(&partial_resp, &small),
            Err(too_large.clone())
        );
        assert_eq!(too_large.status(), 431);

        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(req_err(&many), HttpError::TooManyHeaders { limit: 32 });
        let few = lim(1024, 2, 1024);
        let three = b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n";
        assert_eq!(
            parse_request(three, &few),
            Err(HttpError::TooManyHeaders { limit: 2 })
        );
        assert_eq!(HttpError::TooManyHeaders { limit: 2 }.status(), 431);

        let tiny = lim(1024, 32, 10);
        let big = b"POST / HTTP/1.1\r\ncontent-length: 100\r\n\r\n";
        let e = parse_request(big, &tiny).unwrap_err();
        assert_eq!(
            (e.status(), e),
            (
                413,
                HttpError::BodyTooLarge {
                    length: 100,
                    limit: 10
                }
            )
        );

        for raw in [
            b"POST / HTTP/1.1\r\n\r\n".as_slice(),
            b"PUT /x HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(req_err(raw), HttpError::LengthRequired);
        }
        assert_eq!(HttpError::LengthRequired.status(), 411);

        let chunked = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(req_err(chunked), HttpError::UnsupportedTransferEncoding);
        assert_eq!(HttpError::UnsupportedTransferEncoding.status(), 501);

        assert_eq!(
            req_err(b"GET / HTTP/2.0\r\n\r\n"),
            HttpError::UnsupportedVersion
        );
        assert_eq!(HttpError::UnsupportedVersion.status(), 505);

        let malformed: [&[u8]; 9] = [
            b"GET\r\n\r\n",
            b"GET nopath HTTP/1.1\r\n\r\n",
            b"GET /%zz HTTP/1.1\r\n\r\n",
            b"GET /?a=%4 HTTP/1.1\r\n\r\n",
            b"GET /%ff HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nx: \xff\xfe\r\n\r\n",
            b"GET / HTTP/1.1\r\ncontent-length: 1a\r\n\r\n",
            b"GET / HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
            b"GET / HTTP/1.1\r\ncontent-length: 99999999999999999999999\r\n\r\n",
        ];
        for raw in malformed {
            let e = req_err(raw);
            assert!(matches!(e, HttpError::Malformed(_)), "{raw:?} gave {e:?}");
            assert_eq!(e.status(), 400);
        }
    }

    #[test]
    fn error_to_response() {
        let e = HttpError::LengthRequired;
        let r = e.to_response();
        assert_eq!(r.status, 411);
        assert_eq!(r.header("Connection"), Some("close"));
        assert_eq!(r.body, Bytes::from(format!("{e}\n")));
        let wire = String::from_utf8(r.encode()).unwrap();
        assert!(wire.starts_with("HTTP/1.1 411 Length Required\r\n"));
    }

    #[test]
    fn responses() {
        let l = HttpLimits::default();
        let no_len = b"HTTP/1.1 200 OK\r\n\r\n";
        assert!(matches!(
            parse_response(no_len, &l),
            Err(HttpError::Malformed(_))
        ));
        let empty = b"HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\nHTTP/1.1";
        let (r, n) = parse_response(empty, &l).unwrap().unwrap();
        assert_eq!((r.status, n, r.body.len()), (204, empty.len() - 8, 0));
        let ok = Response::ok("application/json", "{}");
        let (back, _) = parse_response(&ok.encode(), &l).unwrap().unwrap();
        assert_eq!(back.header("content-type"), Some("application/json"));
        assert_eq!(back.header("content-length"), Some("2"));
        assert_eq!(&back.body[..], b"{}");
        assert_eq!(reason_phrase(431), "Request Header Fields Too Large");
        assert_eq!(reason_phrase(299), "Unknown");
    }

    #[test]
    fn get_builder_and_percent_encode() {
        let r = Request::get("/a%2Fb?k=v+w&k=2&bare&bad=%z");
        assert_eq!(r.path, "/a/b");
        assert_eq!(r.query_param("k"), Some("v w"));
        assert_eq!(r.query_param("bare"), Some(""));
        assert_eq!(r.query_param("bad"), Some("%z"));
        assert_eq!(Request::get("x").path, "/x");
        assert_eq!(percent_encode("aZ0-._~ /+é"), "aZ0-._~%20%2F%2B%C3%A9");
    }

    #[test]
    fn encode_headers_round_trip() {
        let mut r = Request::get("/p?q=1");
        r.headers = vec![
            ("x-one".into(), "1".into()),
            ("Host".into(), "ignored".into()),
            ("content-length".into(), "99".into()),
            ("bad name".into(), "x".into()),
            ("x-inject".into(), "a\r\nevil: 1".into()),
            ("x-two".into(), "two words".into()),
        ];
        let (back, _) = req(&r.encode("example")).unwrap().unwrap();
        let expected: Vec<(String, String)> = [
            ("host", "example"),
            ("x-one", "1"),
            ("x-two", "two words"),
            ("content-length", "0"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(back.headers, expected);
        assert_eq!(
            Request {
                headers: r.headers.clone(),
                ..back
            },
            r
        );
    }

    fn check_bounds(buf: &[u8], l: &HttpLimits) -> bool {
        let head_ok = |consumed: usize, body: &Bytes, n: usize| {
            consumed <= buf.len()
                && body.len() <= l.max_body_bytes
                && consumed - body.len() <= l.max_header_bytes
                && n <= l.max_headers.min(MAX_HEADERS)
        };
        let r = match parse_request(buf, l) {
            Ok(Some((r, c))) => head_ok(c, &r.body, r.headers.len()),
            _ => true,
        };
        let s = match parse_response(buf, l) {
            Ok(Some((s, c))) => head_ok(c, &s.body, s.headers.len()),
            _ => true,
        };
        r && s
    }

    #[test]
    fn prop_never_panics_on_arbitrary_bytes() {
        fn prop(data: Vec<u8>, prefix: u8) -> bool {
            let prefixes: [&[u8]; 4] = [
                b"",
                b"GET /x?y HTTP/1.1\r\n",
                b"POST / HTTP/1.1\r\ncontent-length: 3\r\n",
                b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n",
            ];
            let buf = [prefixes[usize::from(prefix) % 4], &data].concat();
            check_bounds(&buf, &HttpLimits::default())
        }
        QuickCheck::new()
            .tests(1000)
            .quickcheck(prop as fn(Vec<u8>, u8) -> bool);
    }

    #[test]
    fn prop_small_limits_are_never_exceeded() {
        type Args = (u16, u8, u8, u8, String, Vec<u8>, Vec<u8>);
        fn prop((h, n, b, extra, seg, body, tail): Args) -> bool {
            let limits = lim(usize::from(h % 512), usize::from(n % 40), usize::from(b));
            let mut r = Request::get("/");
            r.method = method_of(extra);
            r.path.push_str(&seg);
            r.headers = (0..extra % 40)
                .map(|i| (format!("x-{i}"), seg.clone()))
                .collect();
            r.body = body.into();
            let mut buf = r.encode("h");
            buf.extend_from_slice(&tail);
            let resp = Response {
                status: 200,
                headers: r.headers,
                body: r.body,
            };
            check_bounds(&buf, &limits) && check_bounds(&resp.encode(), &limits)
        }
        QuickCheck::new()
            .tests(500)
            .quickcheck(prop as fn(Args) -> bool);
    }

    #[test]
    fn prop_request_round_trip() {
        type Args = (u8, Vec<String>, Vec<(String, String)>, Vec<u8>);
        fn prop((m, segs, query, body): Args) -> bool {
            let r = Request {
                method: method_of(m),
                path: format!("/{}", segs.join("/")),
                query,
                headers: Vec::new(),
                body: body.into(),
                version: 1,
            };
            let wire = r.encode("h");
            match parse_request(&wire, &lim(1 << 24, 32, 1 << 24)) {
                Ok(Some((back, n))) => {
                    n == wire.len()
                        && back.header("host") == Some("h")
                        && back.headers.len() == 2
                        && Request {
                            headers: Vec::new(),
                            ..back
                        } == r
                }
                _ => false,
            }
        }
        QuickCheck::new().quickcheck(prop as fn(Args) -> bool);
    }

    #[test]
    fn prop_response_round_trip() {
        fn prop(status: u16, body: Vec<u8>) -> TestResult {
            let status = 100 + status % 500;
            if bodyless_status(status) {
                return TestResult::discard();
            }
            let r = Response {
                status,
                headers: Vec::new(),
                body: body.into(),
            };
            let wire = r.encode();
            TestResult::from_bool(match parse_response(&wire, &lim(1 << 24, 32, 1 << 24)) {
                Ok(Some((back, n))) => {
                    n == wire.len()
                        && back.status == r.status
                        && back.body == r.body
                        && back.header("content-length") == Some(&r.body.len().to_string())
                }
                _ => false,
            })
        }
        QuickCheck::new().quickcheck(prop as fn(u16, Vec<u8>) -> TestResult);
    }
}
