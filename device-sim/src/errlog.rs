//! Errors seen by many clients at once, counted by message; each distinct message is
//! printed once when first seen, so a storm of disconnects stays readable.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::report::ErrorCount;

/// Distinct messages printed before the rest are only counted.
const PRINT_AT_MOST: usize = 20;

/// Distinct error messages and their counts.
#[derive(Default)]
pub struct ErrorLog {
    counts: Mutex<BTreeMap<String, u64>>,
}

impl ErrorLog {
    /// Counts `message`; prints it with `who` the first time it is seen.
    pub fn record(&self, who: &str, message: &str) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(message) {
            *n += 1;
            return;
        }
        let distinct = counts.len();
        counts.insert(message.to_owned(), 1);
        drop(counts);
        if distinct < PRINT_AT_MOST {
            eprintln!("edgehub-sim: {who}: {message}");
        } else if distinct == PRINT_AT_MOST {
            eprintln!("edgehub-sim: more distinct errors: only counted, see the summary");
        }
    }

    /// Every message with its count, most frequent first.
    pub fn counts(&self) -> Vec<ErrorCount> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<ErrorCount> = counts
            .iter()
            .map(|(message, &count)| ErrorCount {
                message: message.clone(),
                count,
            })
            .collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.count));
        v
    }
}
