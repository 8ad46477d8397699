//! The served side of an HTTP connection, and the buffer limits of both sides, shared by the
//! runtimes. Parsing and the protocol's answers come from core; the runtime reads bytes into
//! a buffer, takes requests out with [`next_request`] (or [`next_answer`]) until it yields
//! nothing, and writes the answers.

use crate::RuntimeStats;
use crate::endpoints::{self, WhoAmI};
use hybridcast_core::Node;
use hybridcast_core::http::{self, HttpLimits, Method, Request, Response};
use std::time::Instant;

/// Largest request body served for anything but the session exchanges (the protocol's other
/// requests have none).
pub const MAX_REQUEST_BODY: usize = 64 * 1024;

/// The limits for requests served: bodies are capped at `max_request_body` (use
/// `Config::max_request_body`, which makes room for a full session copy, and at least
/// [`MAX_REQUEST_BODY`]), so a served connection buffers at most the head limit plus that,
/// whatever `http.max_body_bytes` allows for answers.
pub fn serve_limits(limits: &HttpLimits, max_request_body: usize) -> HttpLimits {
    HttpLimits {
        max_body_bytes: limits
            .max_body_bytes
            .min(max_request_body.max(MAX_REQUEST_BODY)),
        ..*limits
    }
}

/// Most bytes a connection buffers for one message under `limits`: one byte past the
/// largest valid message, so that an oversized one is seen as such.
pub fn buffer_limit(limits: &HttpLimits) -> usize {
    limits.max_header_bytes + limits.max_body_bytes + 1
}

/// The answer to one request, ready to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The encoded response.
    pub bytes: Vec<u8>,
    /// Close the connection once it is written (the client asked to, or the request was
    /// malformed and the rest of the stream cannot be framed).
    pub close: bool,
}

/// What the bytes buffered on a served connection hold next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Served {
    /// A complete request, taken out of the buffer: answer it, then [`respond`].
    Request(Request),
    /// A request that is malformed or over the limits: write this error answer and close (the
    /// buffer was discarded: the rest of the stream cannot be framed).
    Reject(Answer),
}

/// Takes the next complete request out of `inbuf`; `None` when more bytes are needed.
pub fn next_request(inbuf: &mut Vec<u8>, limits: &HttpLimits) -> Option<Served> {
    match http::parse_request(inbuf, limits) {
        Ok(Some((req, used))) => {
            inbuf.drain(..used);
            Some(Served::Request(req))
        }
        Ok(None) => None,
        Err(e) => {
            inbuf.clear();
            Some(Served::Reject(Answer {
                bytes: e.to_response().encode(),
                close: true,
            }))
        }
    }
}

/// Encodes `resp` as the answer to `req`, closing after it when the client asked to.
pub fn respond(req: &Request, mut resp: Response) -> Answer {
    let close = !req.keep_alive();
    if close {
        resp.headers.push(("connection".into(), "close".into()));
    }
    Answer {
        bytes: resp.encode(),
        close,
    }
}

/// [`next_request`] and [`respond`] together, for a runtime that can answer on the spot.
pub fn next_answer(
    inbuf: &mut Vec<u8>,
    limits: &HttpLimits,
    answer: impl FnOnce(&Request) -> Response,
) -> Option<Answer> {
    match next_request(inbuf, limits)? {
        Served::Request(req) => {
            let resp = answer(&req);
            Some(respond(&req, resp))
        }
        Served::Reject(a) => Some(a),
    }
}

/// The answer to one request: the runtime's endpoints ([`endpoints::PATH_CLUSTER`],
/// [`endpoints::PATH_WHOAMI`], [`endpoints::PATH_METRICS`]), else the protocol's.
pub fn answer(
    node: &mut Node,
    whoami: &WhoAmI,
    stats: &RuntimeStats,
    now: Instant,
    req: &Request,
) -> Response {
    let own = [
        endpoints::PATH_CLUSTER,
        endpoints::PATH_WHOAMI,
        endpoints::PATH_METRICS,
    ];
    if !own.contains(&req.path.as_str()) {
        return node.handle_http_request(now, req);
    }
    if req.method != Method::Get {
        return Response::error(405, "only GET is served");
    }
    match req.path.as_str() {
        endpoints::PATH_CLUSTER => endpoints::json(&endpoints::cluster_view(node)),
        endpoints::PATH_WHOAMI => endpoints::json(whoami),
        _ => endpoints::metrics(&node.stats(), stats),
    }
}

/// True if the connection that carried `resp` may carry another request: the server did not
/// say `connection: close`. (The caller also needs the stream open with no bytes left over.)
pub fn reusable(resp: &Response) -> bool {
    !resp
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_pipelined_requests_one_at_a_time_and_closes_on_request() {
        let limits = serve_limits(&HttpLimits::default(), 0);
        let mut inbuf = b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\nGET /c"
            .to_vec();
        let mut seen = Vec::new();
        let mut ok = |r: &Request| {
            seen.push(r.path.clone());
            Response::ok("text/plain", "fine")
        };
        let a = next_answer(&mut inbuf, &limits, &mut ok).expect("first");
        assert!(!a.close);
        let b = next_answer(&mut inbuf, &limits, &mut ok).expect("second");
        assert!(b.close);
        assert!(String::from_utf8_lossy(&b.bytes).contains("connection: close"));
        assert_eq!(
            next_answer(&mut inbuf, &limits, &mut ok),
            None,
            "incomplete"
        );
        assert_eq!(seen, ["/a", "/b"]);
    }

    #[test]
    fn a_malformed_request_gets_its_error_and_closes() {
        let limits = serve_limits(&HttpLimits::default(), 0);
        let mut inbuf = b"POST /x HTTP/1.1\r\ncontent-length: 1000000\r\n\r\n".to_vec();
        let a = next_answer(&mut inbuf, &limits, |_| unreachable!("not answered"))
            .expect("an error answer");
        assert!(a.close);
        assert!(a.bytes.starts_with(b"HTTP/1.1 413 "));
        assert!(inbuf.is_empty());
    }
}
