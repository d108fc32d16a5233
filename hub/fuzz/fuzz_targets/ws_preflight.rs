//! Feeds arbitrary bytes, in an arbitrary chunking, to the WebSocket listener's HTTP
//! preflight, and what it lets through to tungstenite's handshake with the listener's
//! upgrade rules (path, Origin, subprotocol) as the callback, as the front door does.
//!
//! Input layout: byte 0 bit 0 = the listener allows any Origin (else one); byte 1 is `n`
//! (mod 16); the next `n` bytes are chunk lengths (each + 1), used in a cycle to split the
//! remaining bytes, which are the peer's stream.
//!
//! Checks: no panic; the preflight reads no more than `MAX_REQUEST_HEAD` bytes, hands on
//! exactly the bytes it read (a prefix of the stream), and its verdict does not depend on
//! the chunking; the handshake's route agrees with the preflight's (the WebSocket limits
//! are chosen by it); an accepted upgrade answers with a subprotocol the client offered
//! and the route speaks, and only for an allowed or same-origin Origin.

#![no_main]

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use hub::front::ws::{
    preflight, same_origin, ws_config, HandshakeRequest, HandshakeResponse, Preflight, Rewind,
    Route, UpgradeRules, MAX_REQUEST_HEAD, MQTT_SUBPROTOCOLS,
};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const ORIGIN: &str = "https://dash.example";

/// The peer: its bytes in chunks (all at once when `lens` is empty); writes vanish.
struct Peer<'a> {
    data: &'a [u8],
    lens: &'a [u8],
    next: usize,
}

impl AsyncRead for Peer<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let chunk = match self.lens.get(self.next % self.lens.len().max(1)) {
            Some(&len) => usize::from(len) + 1,
            None => usize::MAX,
        };
        self.next += 1;
        let n = chunk.min(buf.remaining()).min(self.data.len());
        let (now, later) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = later;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Peer<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Runs a future whose I/O is always ready; `None` if it keeps waiting anyway.
fn run<F: Future>(future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    (0..64).find_map(|_| match future.as_mut().poll(&mut cx) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    })
}

fn read_head(
    stream: &[u8],
    lens: &[u8],
    rules: &UpgradeRules,
) -> Result<(Preflight, BytesMut), io::ErrorKind> {
    let mut peer = Peer {
        data: stream,
        lens,
        next: 0,
    };
    let outcome = run(preflight(&mut peer, rules)).expect("reading from memory never waits");
    outcome.map_err(|e| e.kind())
}

/// Checks what the upgrade rules answered to the request tungstenite parsed.
fn check_decision(
    rules: &UpgradeRules,
    req: &HandshakeRequest,
    route: Route,
    resp: &HandshakeResponse,
) {
    let origin = req.headers().get("origin");
    let host = req.headers().get("host").and_then(|h| h.to_str().ok());
    assert!(
        rules.allowed_origins.iter().any(|o| o == "*")
            || origin.is_none_or(|o| {
                o.as_bytes().eq_ignore_ascii_case(ORIGIN.as_bytes())
                    || o.to_str().is_ok_and(|o| same_origin(o, host, rules.tls))
            }),
        "upgraded for origin {origin:?}"
    );
    if let Some(chosen) = resp.headers().get("sec-websocket-protocol") {
        let chosen = chosen.to_str().expect("we answer with one of our names");
        let speaks: &[&str] = match route {
            Route::Mqtt => &MQTT_SUBPROTOCOLS,
            Route::Device => &[firmware_proto::WS_SUBPROTOCOL],
        };
        assert!(speaks.contains(&chosen), "{chosen:?} on {route:?}");
        let offered = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|s| s.trim() == chosen);
        assert!(
            offered,
            "answered {chosen:?}, which the client did not offer"
        );
    }
}

fn rules(any_origin: bool) -> UpgradeRules {
    UpgradeRules {
        mqtt_path: "/mqtt".into(),
        device_path: Some("/device".into()),
        allowed_origins: vec![if any_origin { "*" } else { ORIGIN }.into()],
        tls: true,
    }
}

fuzz_target!(|data: &[u8]| {
    let [flags, n, rest @ ..] = data else {
        return;
    };
    let n = usize::from(n % 16).min(rest.len());
    let (lens, stream) = rest.split_at(n);
    let rules = rules(flags & 1 == 1);

    let chunked = read_head(stream, lens, &rules);
    let whole = read_head(stream, &[], &rules);
    let one_by_one = read_head(stream, &[0], &rules);
    let verdict = |r: &Result<(Preflight, BytesMut), io::ErrorKind>| match r {
        Ok((p, _)) => Ok(format!("{p:?}")),
        Err(e) => Err(*e),
    };
    assert_eq!(
        verdict(&chunked),
        verdict(&whole),
        "the chunking changed the verdict"
    );
    assert_eq!(
        verdict(&chunked),
        verdict(&one_by_one),
        "the chunking changed the verdict"
    );

    let Ok((verdict, head)) = chunked else {
        return;
    };
    assert!(head.len() <= MAX_REQUEST_HEAD, "read {} bytes", head.len());
    assert_eq!(&head[..], &stream[..head.len()], "hands on what it read");
    let Preflight::Upgrade { device } = verdict else {
        return;
    };

    let peer = Peer {
        data: &stream[head.len()..],
        lens,
        next: 0,
    };
    let mut route = None;
    let callback = |req: &HandshakeRequest, resp: HandshakeResponse| {
        let (chosen, resp) = rules.decide(req, resp).map_err(|(_, error)| error)?;
        check_decision(&rules, req, chosen, &resp);
        route = Some(chosen);
        Ok(resp)
    };
    let config = ws_config(64 * 1024);
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(
        Rewind::new(head, peer),
        callback,
        Some(config),
    );
    let _ = run(handshake);
    if let Some(route) = route {
        assert_eq!(
            route == Route::Device,
            device,
            "the preflight chose the {} WebSocket limits for a {route:?} connection",
            if device { "device" } else { "MQTT" }
        );
    }
});
