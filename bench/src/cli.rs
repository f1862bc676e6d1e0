//! The benchmark binaries' command line: flags read one by one, values parsed
//! with errors that name the flag, and the `--help` / bad-flag exit path.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The command-line arguments after the program name, read flag by flag.
#[derive(Debug)]
pub struct Flags {
    args: std::iter::Skip<std::env::Args>,
    current: String,
}

impl Flags {
    /// The next flag (e.g. `--requests`), or `None` at the end.
    pub fn next_flag(&mut self) -> Option<String> {
        self.current = self.args.next()?;
        Some(self.current.clone())
    }

    /// The value following the current flag as the path of an existing file.
    pub fn existing_file(&mut self) -> Result<PathBuf, String> {
        let path = self.value::<PathBuf>()?;
        if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "{}: {} is not a file",
                self.current,
                path.display()
            ))
        }
    }

    /// The value following the current flag, parsed; errors name the flag.
    pub fn value<T>(&mut self) -> Result<T, String>
    where
        T: FromStr,
        T::Err: Display,
    {
        let name = &self.current;
        self.args
            .next()
            .ok_or_else(|| format!("{name} needs a value"))?
            .parse()
            .map_err(|e| format!("{name}: {e}"))
    }
}

/// Table-row labels for `paths`: each file's name, or, where two files share
/// a name (`target/release/x` and `target/sidecar/x`), as many of its last
/// path components as tell it apart from the others.
pub fn file_labels(paths: &[PathBuf]) -> Vec<String> {
    // The last `depth` components of `path`, as a path (a root stays `/x`).
    let tail = |path: &Path, depth: usize| -> PathBuf {
        let parts: Vec<_> = path.components().collect();
        let from = parts.len().saturating_sub(depth);
        parts.get(from..).unwrap_or_default().iter().collect()
    };
    paths
        .iter()
        .map(|path| {
            (1..=path.components().count())
                .find(|&depth| {
                    let label = tail(path, depth);
                    paths
                        .iter()
                        .filter(|other| tail(other, depth) == label)
                        .count()
                        == 1
                })
                .map_or_else(|| path.clone(), |depth| tail(path, depth))
                .display()
                .to_string()
        })
        .collect()
}

/// Parses the command line with `parse`; on an error (a bad flag, or the usage
/// text for `--help`) prints it to stderr and returns `None` (exit with code 2).
pub fn parse_command_line<T>(parse: impl FnOnce(&mut Flags) -> Result<T, String>) -> Option<T> {
    let mut flags = Flags {
        args: std::env::args().skip(1),
        current: String::new(),
    };
    parse(&mut flags)
        .map_err(|message| eprintln!("{message}"))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_file_names_made_longer_only_where_two_share_one() {
        let cases: [(&[&str], &[&str]); 5] = [
            (&["a/b/x.wasm", "c/y.wasm"], &["x.wasm", "y.wasm"]),
            (&["/x", "/y/x"], &["/x", "y/x"]),
            (
                &["target/release/sidecar", "target/sidecar/sidecar"],
                &["release/sidecar", "sidecar/sidecar"],
            ),
            (&["one/x", "two/one/x"], &["one/x", "two/one/x"]),
            (&["/tmp/x", "/tmp/x"], &["/tmp/x", "/tmp/x"]),
        ];
        for (paths, labels) in cases {
            let paths: Vec<PathBuf> = paths.iter().map(PathBuf::from).collect();
            assert_eq!(file_labels(&paths), labels, "{paths:?}");
        }
    }
}
