//! Warnings about the configuration, said once: at start, and at a reload only those that
//! are new (a changed value, another file), not again each time the same file is read.

use std::collections::HashSet;

/// The configuration warnings given for the configuration in force, by key.
///
/// A key names the warning and what it is about, with every value it mentions
/// (`"max_connections:20000>1792"`), so a changed value is a new warning. A warning that
/// no longer applies is forgotten at the next reload and said again if it comes back.
#[derive(Debug, Default)]
pub struct Warnings {
    /// Said for the configuration in force.
    said: HashSet<String>,
    /// Given while building the next one (said again only if new).
    next: HashSet<String>,
}

impl Warnings {
    /// Gives the warning `key`: runs `log` unless the configuration in force, or the one
    /// being built, has had it.
    pub fn warn(&mut self, key: impl Into<String>, log: impl FnOnce()) {
        let key = key.into();
        if !self.said.contains(&key) && !self.next.contains(&key) {
            log();
        }
        self.next.insert(key);
    }

    /// The configuration being built is now in force: its warnings are the ones said.
    pub fn commit(&mut self) {
        self.said = std::mem::take(&mut self.next);
    }

    /// The configuration being built was refused: the one in force keeps its warnings.
    pub fn discard(&mut self) {
        self.next.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(warnings: &mut Warnings, keys: &[&str]) -> Vec<String> {
        let mut logged = Vec::new();
        for key in keys {
            warnings.warn(*key, || logged.push((*key).to_owned()));
        }
        logged
    }

    #[test]
    fn a_warning_is_said_once_per_configuration_and_again_only_when_it_changes() {
        let mut w = Warnings::default();
        // At start: each once, even if the same check runs twice.
        assert_eq!(
            said(&mut w, &["dev-pki", "dev-pki", "limit:100"]),
            ["dev-pki", "limit:100"]
        );
        w.commit();
        // A reload of the same file: nothing.
        assert!(said(&mut w, &["dev-pki", "limit:100"]).is_empty());
        w.commit();
        // A changed value is a new warning; one that went away is forgotten.
        assert_eq!(said(&mut w, &["limit:200"]), ["limit:200"]);
        w.commit();
        assert_eq!(said(&mut w, &["dev-pki", "limit:200"]), ["dev-pki"]);
    }

    #[test]
    fn a_refused_reload_leaves_the_warnings_of_the_configuration_in_force() {
        let mut w = Warnings::default();
        said(&mut w, &["dev-pki"]);
        w.commit();
        assert_eq!(said(&mut w, &["crl-old"]), ["crl-old"]);
        w.discard();
        assert!(said(&mut w, &["dev-pki"]).is_empty());
    }
}
