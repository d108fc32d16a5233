//! `testdata/forward_compat.json`: hand-written CBOR a newer peer, or another CBOR
//! encoder, may send, with the message this version must read from it.

mod support;

use firmware_proto::Message;
use serde::Deserialize;
use support::{load_json, unhex};

#[derive(Debug, Deserialize)]
struct Case {
    category: String,
    name: String,
    description: String,
    cbor: String,
    message: Message,
}

#[test]
fn every_forward_compatible_input_decodes_to_the_expected_message() {
    let cases: Vec<Case> = load_json("forward_compat.json");
    assert!(cases.len() >= 10);
    for case in cases {
        assert!(!case.description.is_empty(), "case {}", case.name);
        let decoded = Message::decode(&unhex(&case.cbor))
            .unwrap_or_else(|e| panic!("case {} ({}): {e}", case.name, case.category));
        assert_eq!(
            decoded, case.message,
            "case {} ({})",
            case.name, case.category
        );
    }
}

#[test]
fn forward_compatible_cases_cover_newer_and_older_peers_other_encoders_and_leniencies() {
    let cases: Vec<Case> = load_json("forward_compat.json");
    const CATEGORIES: [&str; 4] = ["newer_peer", "older_peer", "other_encoder", "lenient"];
    for category in CATEGORIES {
        assert!(
            cases.iter().any(|c| c.category == category),
            "no {category} case"
        );
    }
    assert!(cases
        .iter()
        .all(|c| CATEGORIES.contains(&c.category.as_str())));
    for needle in [
        "unknown_body_keys",
        "unknown_kind",
        "extra_elements",
        "fourth_element",
    ] {
        assert!(
            cases.iter().any(|c| c.name.contains(needle)),
            "no case about {needle}"
        );
    }
}

#[test]
fn what_a_newer_peer_added_is_not_carried_into_a_re_encoding() {
    // Unknown keys, elements and kinds are dropped, not preserved: a hub that forwards a
    // decoded message forwards only what it understood.
    let cases: Vec<Case> = load_json("forward_compat.json");
    for case in cases.iter().filter(|c| c.category == "newer_peer") {
        let input = unhex(&case.cbor);
        let decoded = Message::decode(&input).expect("decodes");
        assert_ne!(decoded.to_vec(), input, "case {}", case.name);
        assert_eq!(
            Message::decode(&decoded.to_vec()).ok(),
            Some(decoded),
            "case {}",
            case.name
        );
    }
}
