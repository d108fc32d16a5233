//! `testdata/malformed/`: inputs that must be refused with an error. None may panic,
//! overflow the stack, or make the decoder allocate what a length field claims.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

use firmware_proto::Message;
use serde::Deserialize;
use support::{load_json, unhex, vectors};

/// Counts the bytes live on the current thread, so tests running in parallel do not
/// disturb each other's measurements.
struct CountingAllocator;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counters only
// touch const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize));
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        track(new_size as isize - layout.size() as isize);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Most a malformed message may make the decoder hold at once. Real messages are at most
/// a few KiB; a decoder that believed a length field would need gigabytes.
const ALLOCATION_LIMIT: isize = 16 * 1024;

const CATEGORIES: [&str; 10] = [
    "truncated",
    "trailing",
    "wrong_types",
    "missing_fields",
    "out_of_range",
    "not_well_formed",
    "nesting",
    "depth_limit",
    "duplicate_keys",
    "huge_lengths",
];

/// One case: either `hex`, or `prefix ‖ repeat × times ‖ suffix` for inputs too large to
/// write out.
#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    description: String,
    #[serde(default)]
    hex: Option<String>,
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    repeat: String,
    #[serde(default)]
    times: usize,
    #[serde(default)]
    suffix: String,
}

impl Case {
    fn bytes(&self) -> Vec<u8> {
        match &self.hex {
            Some(hex) => unhex(hex),
            None => {
                let mut out = unhex(&self.prefix);
                let unit = unhex(&self.repeat);
                for _ in 0..self.times {
                    out.extend_from_slice(&unit);
                }
                out.extend(unhex(&self.suffix));
                out
            }
        }
    }
}

fn all_cases() -> Vec<(String, Case)> {
    CATEGORIES
        .iter()
        .flat_map(|category| {
            let cases: Vec<Case> = load_json(&format!("malformed/{category}.json"));
            assert!(!cases.is_empty(), "malformed/{category}.json is empty");
            cases
                .into_iter()
                .map(move |case| (format!("{category}/{}", case.name), case))
        })
        .collect()
}

/// Decodes `bytes` and describes what went wrong if it was not a plain error.
fn refused(bytes: &[u8]) -> Result<(), String> {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    let result = catch_unwind(AssertUnwindSafe(|| Message::decode(bytes)));
    let peak = PEAK.with(|p| p.get());
    match result {
        Err(_) => Err("panicked".into()),
        Ok(Ok(m)) => Err(format!("decoded to {m:?}")),
        Ok(Err(_)) if peak > ALLOCATION_LIMIT => Err(format!("allocated {peak} bytes")),
        Ok(Err(_)) => Ok(()),
    }
}

#[test]
fn every_malformed_input_is_refused_without_panicking_or_allocating_what_it_claims() {
    let cases = all_cases();
    assert!(cases.len() >= 60, "only {} cases", cases.len());
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(name, case)| {
            assert!(!case.description.is_empty(), "{name} has no description");
            refused(&case.bytes())
                .err()
                .map(|why| format!("{name}: {why}"))
        })
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn deep_nesting_cases_really_are_ten_thousand_levels_deep() {
    let nesting: Vec<Case> = load_json("malformed/nesting.json");
    for case in nesting {
        assert_eq!(case.times, 10_000, "{}", case.name);
        assert!(case.bytes().len() > 10_000, "{}", case.name);
    }
}

#[test]
fn a_message_127_levels_deep_decodes_and_the_depth_limit_cases_are_one_level_deeper() {
    // PROTOCOL.md 2.3: the envelope is level 1; arrays, maps and tags each add one.
    let nested = |levels: usize| {
        let mut bytes = unhex("82 07 a1 05");
        bytes.extend(std::iter::repeat_n(0x81, levels - 3));
        bytes.push(0x80);
        bytes
    };
    assert_eq!(
        Message::decode(&nested(127)).ok(),
        Some(Message::Heartbeat(firmware_proto::Heartbeat { time: None }))
    );
    assert!(Message::decode(&nested(128)).is_err());
    let limit: Vec<Case> = load_json("malformed/depth_limit.json");
    assert_eq!(limit[0].bytes(), nested(128));
}

#[test]
fn every_proper_prefix_of_every_vector_is_refused() {
    for v in vectors() {
        let cbor = unhex(&v.cbor);
        for len in 0..cbor.len() {
            if let Err(why) = refused(&cbor[..len]) {
                panic!("vector {} cut to {len} bytes: {why}", v.name);
            }
        }
    }
}

#[test]
fn every_vector_with_any_byte_appended_is_refused() {
    for v in vectors() {
        let mut cbor = unhex(&v.cbor);
        for extra in [0x00, 0x01, 0x80, 0xa0, 0xf6, 0xff] {
            cbor.push(extra);
            if let Err(why) = refused(&cbor) {
                panic!("vector {} followed by {extra:#04x}: {why}", v.name);
            }
            cbor.pop();
        }
    }
}

#[test]
fn the_allocation_counter_sees_a_large_allocation() {
    // Guards the guard: if the counter stopped counting, the limit above would pass
    // vacuously.
    PEAK.with(|p| p.set(0));
    LIVE.with(|l| l.set(0));
    let big = vec![0u8; 4 * ALLOCATION_LIMIT as usize];
    assert!(PEAK.with(|p| p.get()) >= 4 * ALLOCATION_LIMIT);
    drop(big);
}
