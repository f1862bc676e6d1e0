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

/// The file name of `path` for a table row (the whole path if it has none).
pub fn file_label(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    )
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
