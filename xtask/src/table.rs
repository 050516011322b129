//! Typed reading of TOML tables with errors that name the key.
//!
//! Appliance and scenario files are parsed into plain [`toml::Table`]s and then
//! read key by key through a [`TableReader`], which knows the dotted path of the
//! table it reads (`domain[1]`) and the file it came from. Every error is a
//! [`KeyError`] whose text starts with `FILE: KEY:`. A reader remembers which
//! keys were asked for, so [`TableReader::finish`] can refuse any other key and
//! list the known ones: adding a key to a file format is one more read call.

use std::fmt;
use std::ops::RangeInclusive;

use toml::{Table, Value};

/// A problem in a TOML file, located by file and key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    /// The file as shown to the user.
    pub file: String,
    /// Dotted key path (`domain[1].memory`), or `None` for whole-file problems.
    pub key: Option<String>,
    /// What is wrong, in words.
    pub message: String,
}

impl KeyError {
    /// An error about one key.
    pub fn new(file: &str, key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            key: Some(key.into()),
            message: message.into(),
        }
    }

    /// An error about the whole file (syntax, unreadable file).
    pub fn whole_file(file: &str, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            key: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(formatter, "{}: {}: {}", self.file, key, self.message),
            None => write!(formatter, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for KeyError {}

/// Parses TOML text into a table; a syntax error becomes a whole-file error
/// carrying the parser's line and column.
pub fn parse_document(text: &str, file: &str) -> Result<Table, KeyError> {
    text.parse::<Table>().map_err(|error| {
        let detail = error.to_string();
        KeyError::whole_file(file, format!("not valid TOML: {}", detail.trim_end()))
    })
}

/// Reads the keys of one table, tracking which keys are known.
#[derive(Debug)]
pub struct TableReader<'a> {
    table: &'a Table,
    file: &'a str,
    path: String,
    known: Vec<&'static str>,
}

/// The TOML type name of a value, for "expected X, found Y" messages.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

impl<'a> TableReader<'a> {
    /// A reader for `table`, found at `path` (empty for the document root) in `file`.
    pub fn new(table: &'a Table, file: &'a str, path: impl Into<String>) -> Self {
        Self {
            table,
            file,
            path: path.into(),
            known: Vec::new(),
        }
    }

    /// The full dotted path of `key` in this table.
    pub fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{}", self.path, key)
        }
    }

    /// An error about `key` of this table.
    pub fn error(&self, key: &str, message: impl Into<String>) -> KeyError {
        KeyError::new(self.file, self.key_path(key), message)
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        if !self.known.contains(&key) {
            self.known.push(key);
        }
        self.table.get(key)
    }

    fn wrong_type(&self, key: &str, expected: &str, found: &Value) -> KeyError {
        self.error(
            key,
            format!("expected {expected}, found {}", type_name(found)),
        )
    }

    /// An optional string.
    pub fn string(&mut self, key: &'static str) -> Result<Option<&'a str>, KeyError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.as_str())),
            Some(other) => Err(self.wrong_type(key, "a string", other)),
        }
    }

    /// An optional boolean.
    pub fn boolean(&mut self, key: &'static str) -> Result<Option<bool>, KeyError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Boolean(value)) => Ok(Some(*value)),
            Some(other) => Err(self.wrong_type(key, "true or false", other)),
        }
    }

    /// A string that must be present.
    pub fn required_string(&mut self, key: &'static str) -> Result<&'a str, KeyError> {
        self.string(key)?
            .ok_or_else(|| self.error(key, "missing (this key is required)"))
    }

    /// An optional integer that must lie in `range`; `unit` (e.g. `" MiB"`) is
    /// appended to the range in the error message.
    pub fn integer_in<T>(
        &mut self,
        key: &'static str,
        range: RangeInclusive<T>,
        unit: &str,
    ) -> Result<Option<T>, KeyError>
    where
        T: Copy + fmt::Display + Into<i64> + TryFrom<i64>,
    {
        let value = match self.get(key) {
            None => return Ok(None),
            Some(Value::Integer(value)) => *value,
            Some(other) => return Err(self.wrong_type(key, "an integer", other)),
        };
        let (start, end) = (*range.start(), *range.end());
        let in_range = (start.into()..=end.into()).contains(&value);
        match T::try_from(value) {
            Ok(converted) if in_range => Ok(Some(converted)),
            _ => Err(self.error(
                key,
                format!("{value} is out of range {start}..={end}{unit}"),
            )),
        }
    }

    /// An optional positive number of seconds (integer or float).
    pub fn seconds(&mut self, key: &'static str) -> Result<Option<f64>, KeyError> {
        let value = match self.get(key) {
            None => return Ok(None),
            Some(Value::Integer(value)) => *value as f64,
            Some(Value::Float(value)) => *value,
            Some(other) => return Err(self.wrong_type(key, "a number of seconds", other)),
        };
        if value.is_finite() && value > 0.0 {
            Ok(Some(value))
        } else {
            Err(self.error(key, format!("{value} is not a positive number of seconds")))
        }
    }

    /// An optional finite number (integer or float).
    pub fn number(&mut self, key: &'static str) -> Result<Option<f64>, KeyError> {
        let value = match self.get(key) {
            None => return Ok(None),
            Some(Value::Integer(value)) => *value as f64,
            Some(Value::Float(value)) => *value,
            Some(other) => return Err(self.wrong_type(key, "a number", other)),
        };
        if value.is_finite() {
            Ok(Some(value))
        } else {
            Err(self.error(key, format!("{value} is not a finite number")))
        }
    }

    /// An optional array of finite numbers.
    pub fn number_list(&mut self, key: &'static str) -> Result<Option<Vec<f64>>, KeyError> {
        let items = match self.get(key) {
            None => return Ok(None),
            Some(Value::Array(items)) => items,
            Some(other) => return Err(self.wrong_type(key, "an array of numbers", other)),
        };
        let mut numbers = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Value::Integer(value) => numbers.push(*value as f64),
                Value::Float(value) if value.is_finite() => numbers.push(*value),
                other => return Err(self.wrong_type(key, "an array of numbers", other)),
            }
        }
        Ok(Some(numbers))
    }

    /// An optional array of strings.
    pub fn string_list(&mut self, key: &'static str) -> Result<Option<Vec<String>>, KeyError> {
        let items = match self.get(key) {
            None => return Ok(None),
            Some(Value::Array(items)) => items,
            Some(other) => return Err(self.wrong_type(key, "an array of strings", other)),
        };
        items
            .iter()
            .enumerate()
            .map(|(index, item)| match item {
                Value::String(text) => Ok(text.clone()),
                other => Err(KeyError::new(
                    self.file,
                    format!("{}[{index}]", self.key_path(key)),
                    format!("expected a string, found {}", type_name(other)),
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// An optional sub-table (`[machine]`).
    pub fn table(&mut self, key: &'static str) -> Result<Option<TableReader<'a>>, KeyError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Table(table)) => {
                Ok(Some(TableReader::new(table, self.file, self.key_path(key))))
            }
            Some(other) => Err(self.wrong_type(key, format!("a table ([{key}])").as_str(), other)),
        }
    }

    /// An optional array of tables (`[[domain]]`); absent means empty.
    pub fn table_array(&mut self, key: &'static str) -> Result<Vec<TableReader<'a>>, KeyError> {
        let items = match self.get(key) {
            None => return Ok(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(other) => {
                return Err(self.wrong_type(key, format!("tables ([[{key}]])").as_str(), other))
            }
        };
        items
            .iter()
            .enumerate()
            .map(|(index, item)| {
                let path = format!("{}[{index}]", self.key_path(key));
                match item {
                    Value::Table(table) => Ok(TableReader::new(table, self.file, path)),
                    other => Err(KeyError::new(
                        self.file,
                        path,
                        format!("expected a table ([[{key}]]), found {}", type_name(other)),
                    )),
                }
            })
            .collect()
    }

    /// Ends reading: any key that was never asked for is an error naming it.
    pub fn finish(self) -> Result<(), KeyError> {
        let mut unknown: Vec<&String> = self
            .table
            .keys()
            .filter(|key| !self.known.contains(&key.as_str()))
            .collect();
        unknown.sort();
        match unknown.first() {
            None => Ok(()),
            Some(key) => {
                let mut known = self.known.clone();
                known.sort_unstable();
                Err(self.error(
                    key,
                    format!("unknown key (known keys: {})", known.join(", ")),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document(text: &str) -> Table {
        parse_document(text, "test.toml").unwrap()
    }

    #[test]
    fn unknown_key_is_named_with_its_path_and_the_known_keys() {
        let table = document("[[item]]\nname = 'a'\ncolour = 'red'\n");
        let mut root = TableReader::new(&table, "test.toml", "");
        let mut items = root.table_array("item").unwrap();
        assert_eq!(items.len(), 1);
        let mut item = items.remove(0);
        assert_eq!(item.required_string("name").unwrap(), "a");
        let error = item.finish().unwrap_err();
        assert_eq!(error.key.as_deref(), Some("item[0].colour"));
        assert_eq!(
            error.to_string(),
            "test.toml: item[0].colour: unknown key (known keys: name)"
        );
        root.finish().unwrap();
    }

    #[test]
    fn integer_range_and_type_errors_name_the_key() {
        let table = document("small = 300\nnegative = -1\ntext = 'x'\nok = 7\n");
        let mut reader = TableReader::new(&table, "f.toml", "machine");
        let error = reader.integer_in::<u8>("small", 1..=8, "").unwrap_err();
        assert_eq!(
            error.to_string(),
            "f.toml: machine.small: 300 is out of range 1..=8"
        );
        let error = reader
            .integer_in::<u32>("negative", 2..=3072, " MiB")
            .unwrap_err();
        assert_eq!(error.message, "-1 is out of range 2..=3072 MiB");
        let error = reader.integer_in::<u32>("text", 0..=1, "").unwrap_err();
        assert_eq!(error.message, "expected an integer, found a string");
        assert_eq!(reader.integer_in::<u32>("ok", 0..=10, "").unwrap(), Some(7));
        assert_eq!(
            reader.integer_in::<u32>("absent", 0..=10, "").unwrap(),
            None
        );
    }

    #[test]
    fn missing_required_string_is_named() {
        let table = document("");
        let mut reader = TableReader::new(&table, "f.toml", "domain[2]");
        let error = reader.required_string("name").unwrap_err();
        assert_eq!(
            error.to_string(),
            "f.toml: domain[2].name: missing (this key is required)"
        );
    }

    #[test]
    fn string_list_rejects_non_strings_by_index() {
        let table = document("expect = ['a', 2]\n");
        let mut reader = TableReader::new(&table, "s.toml", "scenario[0]");
        let error = reader.string_list("expect").unwrap_err();
        assert_eq!(error.key.as_deref(), Some("scenario[0].expect[1]"));
    }

    #[test]
    fn syntax_errors_are_whole_file_errors() {
        let error = parse_document("name = \n", "broken.toml").unwrap_err();
        assert_eq!(error.key, None);
        assert!(
            error.to_string().starts_with("broken.toml: not valid TOML"),
            "{error}"
        );
    }

    #[test]
    fn seconds_must_be_positive() {
        let table = document("a = 0\nb = 1.5\n");
        let mut reader = TableReader::new(&table, "s.toml", "");
        assert!(reader.seconds("a").is_err());
        assert_eq!(reader.seconds("b").unwrap(), Some(1.5));
    }
}
