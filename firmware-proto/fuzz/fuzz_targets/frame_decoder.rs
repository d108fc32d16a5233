//! Feeds arbitrary bytes to `FrameDecoder` in an arbitrary chunking and checks that what it
//! returns does not depend on the chunking, that `pending()` counts the bytes since the
//! last delimiter, that the stats agree with what was returned, and that every frame it
//! accepts re-frames and decodes back to the same message.
//!
//! Input layout: byte 0 is `n` (mod 16); the next `n` bytes are chunk lengths (each + 1),
//! used in a cycle to split the remaining bytes, which are the serial stream.

#![no_main]

use firmware_proto::{encode_frame, max_frame_len, Feed, FrameDecoder, FrameError};
use libfuzzer_sys::fuzz_target;

/// Small enough that fuzzed frames overflow it often.
const SMALL: usize = 64;
/// The size the hub uses for its default message limit.
const LARGE: usize = max_frame_len(1024);

type Outcome = Result<Vec<u8>, FrameError>;

fn run<const N: usize>(stream: &[u8], chunk_lens: &[u8]) -> Vec<Outcome> {
    let mut decoder = FrameDecoder::<N>::new();
    let mut outcomes = Vec::new();
    let mut since_delimiter = 0usize;
    let mut offset = 0;
    let mut lens = chunk_lens.iter().cycle();
    while offset < stream.len() {
        let len = match lens.next() {
            Some(&l) => usize::from(l) + 1,
            None => stream.len(),
        };
        let mut input = &stream[offset..(offset + len).min(stream.len())];
        offset += input.len();
        loop {
            let before = input.len();
            let (outcome, rest) = match decoder.feed(input) {
                Feed::NeedMore => (None, &input[input.len()..]),
                Feed::Frame { message, rest } => {
                    assert!(message.len() < N, "a message longer than the buffer");
                    (Some(Ok(message.to_vec())), rest)
                }
                Feed::Error { error, rest } => (Some(Err(error)), rest),
            };
            let consumed = &input[..before - rest.len()];
            match consumed.iter().rposition(|&b| b == 0) {
                Some(last) => since_delimiter = consumed.len() - last - 1,
                None => since_delimiter += consumed.len(),
            }
            assert_eq!(decoder.pending(), since_delimiter);
            outcomes.extend(outcome);
            if rest.is_empty() {
                break;
            }
            input = rest;
        }
    }
    let stats = decoder.stats();
    let frames = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(stats.frames as usize, frames);
    assert_eq!(stats.errors() as usize, outcomes.len() - frames);
    outcomes
}

fn reframes_to_itself(message: &[u8]) {
    let mut out = vec![0u8; max_frame_len(message.len())];
    let n = encode_frame(message, &mut out).expect("max_frame_len is enough");
    let mut decoder = FrameDecoder::<{ max_frame_len(LARGE) }>::new();
    match decoder.feed(&out[..n]) {
        Feed::Frame {
            message: again,
            rest,
        } => {
            assert_eq!(again, message);
            assert!(rest.is_empty());
        }
        other => panic!("a re-framed message did not decode: {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 16).min(rest.len());
    let (chunk_lens, stream) = rest.split_at(n);

    let small = run::<SMALL>(stream, chunk_lens);
    assert_eq!(
        small,
        run::<SMALL>(stream, &[]),
        "chunking changed the result"
    );
    let large = run::<LARGE>(stream, chunk_lens);
    assert_eq!(
        large,
        run::<LARGE>(stream, &[]),
        "chunking changed the result"
    );

    // Both decoders see the same delimited segments; the small one may only drop more.
    assert_eq!(small.len(), large.len());
    for (s, l) in small.iter().zip(&large) {
        match s {
            Ok(_) => assert_eq!(s, l),
            Err(FrameError::Oversized) => {}
            Err(_) => assert_eq!(s, l),
        }
    }
    for message in large.iter().flatten() {
        reframes_to_itself(message);
    }
});
