//! Errors as values: one [`Diagnostic`] per problem, all of a file's problems in one
//! [`Diagnostics`].

use std::fmt;
use std::ops::Range;

use serde::Serialize;

/// One problem in a Smolfile, located like a compiler error.
///
/// Displays as `{file}:{line}:{column}: {path}: {message}`, for example
/// `Smolfile:7:10: [dev].ports[1]: expected HOST:GUEST with ports 1-65535, found "80"`.
/// Serializes (for `--json`) as an object with the same five fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// The file as the user named it.
    pub file: String,
    /// 1-based line; `None` when the problem is the whole file (it could not be read).
    pub line: Option<usize>,
    /// 1-based column in characters (not bytes); `None` exactly when `line` is.
    pub column: Option<usize>,
    /// Where in the document: `cpus`, `env[0]`, `[dev].ports[1]`, `[netwrk]`;
    /// empty for problems that belong to no key (TOML syntax, unreadable file).
    pub path: String,
    /// What was expected and what was found.
    pub message: String,
}

impl Diagnostic {
    /// A problem with the file as a whole, at no particular position.
    pub(crate) fn whole_file(file: &str, message: String) -> Diagnostic {
        Diagnostic {
            file: file.to_owned(),
            line: None,
            column: None,
            path: String::new(),
            message,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.file)?;
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, "{line}:{column}:")?;
        }
        if !self.path.is_empty() {
            write!(f, " {}:", self.path)?;
        }
        write!(f, " {}", self.message)
    }
}

/// Every problem found in one file, in file order. Never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Diagnostics(Vec<Diagnostic>);

impl Diagnostics {
    /// Wraps `diagnostics`, sorted by position so they read in file order.
    pub fn new(mut diagnostics: Vec<Diagnostic>) -> Self {
        diagnostics.sort_by_key(|d| (d.line, d.column));
        Diagnostics(diagnostics)
    }

    /// The diagnostics, owned.
    pub fn into_vec(self) -> Vec<Diagnostic> {
        self.0
    }
}

impl std::ops::Deref for Diagnostics {
    type Target = [Diagnostic];

    fn deref(&self) -> &[Diagnostic] {
        &self.0
    }
}

impl IntoIterator for Diagnostics {
    type Item = Diagnostic;
    type IntoIter = std::vec::IntoIter<Diagnostic>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Diagnostics {
    type Item = &'a Diagnostic;
    type IntoIter = std::slice::Iter<'a, Diagnostic>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// One diagnostic per line, no trailing newline.
impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Turns byte offsets from the TOML parser into diagnostics with lines and columns.
pub(crate) struct Source<'a> {
    file: &'a str,
    text: &'a str,
    /// Byte offset where each line starts.
    line_starts: Vec<usize>,
}

impl<'a> Source<'a> {
    pub(crate) fn new(file: &'a str, text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Source {
            file,
            text,
            line_starts,
        }
    }

    pub(crate) fn file(&self) -> &'a str {
        self.file
    }

    pub(crate) fn text(&self) -> &'a str {
        self.text
    }

    /// A diagnostic located at the start of `span`.
    pub(crate) fn diagnostic(
        &self,
        span: Range<usize>,
        path: String,
        message: String,
    ) -> Diagnostic {
        let offset = self.floor_char_boundary(span.start.min(self.text.len()));
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let line_start = self.line_starts[line - 1];
        let column = self.text[line_start..offset].chars().count() + 1;
        Diagnostic {
            file: self.file.to_owned(),
            line: Some(line),
            column: Some(column),
            path,
            message,
        }
    }

    fn floor_char_boundary(&self, mut offset: usize) -> usize {
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let src = Source::new("Smolfile", "a = 1\né = \"x\"\n");
        let d = src.diagnostic(11..14, "é".into(), "m".into());
        assert_eq!((d.line, d.column), (Some(2), Some(5)));
        let d = src.diagnostic(0..1, String::new(), "m".into());
        assert_eq!((d.line, d.column), (Some(1), Some(1)));
        // The parser reports unexpected end of input just past the last byte.
        let d = src.diagnostic(15..15, String::new(), "m".into());
        assert_eq!((d.line, d.column), (Some(3), Some(1)));
    }

    #[test]
    fn display_omits_what_is_unknown() {
        let d = Diagnostic::whole_file("Smolfile", "cannot read: gone".into());
        assert_eq!(d.to_string(), "Smolfile: cannot read: gone");
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"file": "Smolfile", "line": null, "column": null, "path": "", "message": "cannot read: gone"})
        );
    }
}
