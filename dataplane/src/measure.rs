//! The proxy's per-request work without its sockets, public (and hidden from the docs) for the
//! criterion benches in `bench/`. A request through the proxy costs two TCP hops of kernel time
//! plus this; measured apart, a change to the parser, the router or the rewrite shows up here
//! in nanoseconds instead of drowning in the loopback's noise.

use crate::exchange::{prepare_request, prepare_response, Proxy};
use crate::framing::BodyProgress;
use crate::headers::Forwarded;
use crate::{ProxyConfig, RouteTable};

/// One keep-alive connection's head work, with its buffers reused across requests as the
/// connection's are.
pub struct HeadWork {
    proxy: Proxy,
    out: Vec<u8>,
}

impl HeadWork {
    /// Routes through `table` with `config`.
    pub fn new(table: RouteTable, config: ProxyConfig) -> HeadWork {
        HeadWork {
            proxy: Proxy::new(table, config),
            out: Vec::with_capacity(1024),
        }
    }

    /// What the proxy does with one request head and its response head, in order: parse and
    /// check the request head, route it, count it, rewrite it for the backend; parse and check
    /// the response head, rewrite it for the client, find its body's end in `response`; stop
    /// counting. Returns the bytes the two rewritten heads took, or `None` if the request was
    /// refused or the response rejected.
    pub fn exchange(&mut self, request: &[u8], response: &[u8]) -> Option<usize> {
        let forwarded = Forwarded {
            client_ip: b"192.0.2.1",
            proto: b"http",
        };
        self.out.clear();
        let prepared =
            prepare_request(&self.proxy, request, &mut self.out, &forwarded, None).ok()?;
        let request_bytes = self.out.len();
        self.out.clear();
        let answer = prepare_response(response, &mut self.out, false, false, true).ok()?;
        let mut body = BodyProgress::new(answer.framing);
        body.advance(&response[answer.len..]).ok()?;
        drop(prepared);
        Some(request_bytes + self.out.len())
    }
}
