//! Scenario files: a TOML table whose `mode` names the subcommand and whose other keys
//! are that mode's long flags without the dashes (`total-rate = 50000`, `ramp-up = 10`;
//! `total_rate` works too). A scenario can say everything the command line can, clap
//! checks it the same way, and flags given after the file override it.
//!
//! Values: strings, integers and floats are the flag's value; `true` gives a flag
//! without a value (false leaves it out); an array repeats the flag.

use std::ffi::OsString;
use std::path::Path;

/// The command line `edgehub-sim scenario FILE [FLAGS...]` stands for: the program
/// name, the mode, the file's flags, then `overrides`.
pub fn expand(
    program: OsString,
    file: &Path,
    overrides: &[String],
) -> Result<Vec<OsString>, String> {
    let text =
        std::fs::read_to_string(file).map_err(|e| format!("scenario {}: {e}", file.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("scenario {}: {}", file.display(), e.message()))?;
    let mode = match table.get("mode") {
        Some(toml::Value::String(mode)) => mode.clone(),
        Some(other) => {
            return Err(format!(
                "scenario {}: mode = {other}: write the mode as a string, for example mode = \"devices\"",
                file.display()
            ))
        }
        None => {
            return Err(format!(
                "scenario {}: no mode: say which one, for example mode = \"devices\" (mqtt, idle, devices, serial)",
                file.display()
            ))
        }
    };
    let mut args = vec![program, mode.into()];
    for (key, value) in table.iter().filter(|(k, _)| k.as_str() != "mode") {
        let flag = format!("--{}", key.replace('_', "-"));
        push(&mut args, &flag, value)
            .map_err(|why| format!("scenario {}: {key}: {why}", file.display()))?;
    }
    args.extend(overrides.iter().map(OsString::from));
    Ok(args)
}

fn push(args: &mut Vec<OsString>, flag: &str, value: &toml::Value) -> Result<(), String> {
    match value {
        toml::Value::String(s) => args.extend([flag.into(), s.into()]),
        toml::Value::Integer(i) => args.extend([flag.into(), i.to_string().into()]),
        toml::Value::Float(f) => args.extend([flag.into(), f.to_string().into()]),
        toml::Value::Boolean(true) => args.push(flag.into()),
        toml::Value::Boolean(false) => {}
        toml::Value::Array(items) => {
            for item in items {
                if matches!(item, toml::Value::Array(_) | toml::Value::Table(_)) {
                    return Err(
                        "an array of plain values is one flag repeated; nest nothing".into(),
                    );
                }
                push(args, flag, item)?;
            }
        }
        toml::Value::Table(_) | toml::Value::Datetime(_) => {
            return Err("give a string, a number, true/false or an array of those".into())
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expanded(text: &str, overrides: &[&str]) -> Result<Vec<String>, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("s.toml");
        std::fs::write(&file, text).expect("write");
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        expand("edgehub-sim".into(), &file, &overrides).map(|args| {
            args.into_iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        })
    }

    #[test]
    fn keys_become_long_flags_after_the_mode_and_overrides_come_last() {
        let args = expanded(
            "mode = \"devices\"\ndevices = 1000\ntotal_rate = 50000.5\nurl = \"wss://h/device\"\n",
            &["--duration", "5"],
        )
        .expect("expands");
        assert_eq!(
            args,
            [
                "edgehub-sim",
                "devices",
                "--devices",
                "1000",
                "--total-rate",
                "50000.5",
                "--url",
                "wss://h/device",
                "--duration",
                "5"
            ]
        );
    }

    #[test]
    fn true_is_a_bare_flag_false_is_left_out_and_arrays_repeat() {
        let args =
            expanded("mode = \"mqtt\"\na = true\nb = false\nc = [1, 2]\n", &[]).expect("expands");
        assert_eq!(args, ["edgehub-sim", "mqtt", "--a", "--c", "1", "--c", "2"]);
    }

    #[test]
    fn a_scenario_without_a_mode_or_with_a_table_says_what_to_write() {
        let error = expanded("devices = 3\n", &[]).expect_err("no mode");
        assert!(error.contains("mode = \"devices\""), "{error}");
        let error = expanded("mode = \"devices\"\n[x]\ny = 1\n", &[]).expect_err("a table");
        assert!(error.contains("x: give a string"), "{error}");
    }
}

#[cfg(test)]
mod examples {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    #[test]
    fn every_example_scenario_in_config_is_a_valid_command_line() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/scenarios");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).expect("config/scenarios exists") {
            let path = entry.expect("entry").path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let args = super::expand(
                "edgehub-sim".into(),
                &path,
                &["--duration".into(), "1".into()],
            )
            .unwrap_or_else(|e| panic!("{e}"));
            let cli =
                Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                !matches!(cli.command, Command::Scenario { .. }),
                "{} names a mode",
                path.display()
            );
            checked += 1;
        }
        assert!(checked >= 4, "the examples were found: {checked}");
    }

    #[test]
    fn a_flag_after_the_file_overrides_the_files_value() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("s.toml");
        std::fs::write(&file, "mode = \"devices\"\ndevices = 7\n").expect("write");
        let args = super::expand(
            "edgehub-sim".into(),
            &file,
            &["--devices".into(), "9".into()],
        )
        .expect("expands");
        let Command::Devices(devices) = Cli::try_parse_from(args).expect("parses").command else {
            panic!("devices mode");
        };
        assert_eq!(devices.devices, 9);
    }
}
