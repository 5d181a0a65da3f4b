//! The columns of a key row and their values, in one order for every
//! dialect: the core writes the statements that name them and turns rows
//! into values and back; a backend only converts a [`Value`] to and from
//! its driver's types (its codec).

use std::time::SystemTime;

use crate::row::{HashColumns, KeyRow};
use crate::{BoxError, CreditColumns};

/// A column value between the core and a backend; `None` is SQL `NULL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A 64-bit integer column.
    Int(Option<i64>),
    /// A text column.
    Text(Option<String>),
    /// A binary column.
    Bytes(Option<Vec<u8>>),
    /// A time column (the dialect chooses how it keeps microseconds).
    Time(Option<SystemTime>),
    /// A list of names (the dialect chooses how it keeps them).
    Texts(Vec<String>),
    /// A flag, never `NULL` (the dialect chooses how it keeps it: a boolean,
    /// or 0 and 1).
    Bool(bool),
}

/// The kind of a column: what a backend decodes it as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// [`Value::Int`].
    Int,
    /// [`Value::Text`].
    Text,
    /// [`Value::Bytes`].
    Bytes,
    /// [`Value::Time`].
    Time,
    /// [`Value::Texts`].
    Texts,
    /// [`Value::Bool`].
    Bool,
}

/// The columns of `tower_api_key_keys` a key row holds, in the order of
/// [`KeyRow::values`]; a read of [`select_columns`] has one more, the
/// account's limits ([`Kind::Text`]).
pub const KEY_COLUMNS: [(&str, Kind); 33] = [
    ("key_id", Kind::Text),
    ("service_account_id", Kind::Text),
    ("hash", Kind::Bytes),
    ("hash_scheme", Kind::Text),
    ("hash_pepper_version", Kind::Int),
    ("previous_hash", Kind::Bytes),
    ("previous_hash_scheme", Kind::Text),
    ("previous_hash_pepper_version", Kind::Int),
    ("previous_valid_until", Kind::Time),
    ("scopes", Kind::Texts),
    ("description", Kind::Text),
    ("created_at", Kind::Time),
    ("expires_at", Kind::Time),
    ("last_used_at", Kind::Time),
    ("hint", Kind::Text),
    ("rate_limits", Kind::Text),
    ("credits_remaining", Kind::Int),
    ("credits_refill_amount", Kind::Int),
    ("credits_refill_interval", Kind::Text),
    ("credits_refill_day", Kind::Int),
    ("credits_refilled_at", Kind::Time),
    ("credits_generation", Kind::Int),
    ("version", Kind::Int),
    ("compromised_at", Kind::Time),
    ("compromise_url", Kind::Text),
    ("compromise_source", Kind::Text),
    ("compromise_action", Kind::Text),
    ("compromised_hash", Kind::Bytes),
    ("allowed_networks", Kind::Texts),
    ("metadata", Kind::Text),
    ("operator_locked", Kind::Bool),
    ("retire_when_unused", Kind::Bool),
    ("retired_unused_since", Kind::Time),
];

/// The kinds of the columns a read of [`select_columns`] returns.
pub fn read_kinds() -> impl Iterator<Item = Kind> {
    KEY_COLUMNS
        .iter()
        .map(|(_, kind)| *kind)
        .chain([Kind::Text])
}

/// Whether a change may write the column: not the id, the account, the
/// creation time nor the last use.
fn changeable(name: &str) -> bool {
    !matches!(
        name,
        "key_id" | "service_account_id" | "created_at" | "last_used_at"
    )
}

/// The select list of a key row of `tower_api_key_keys`, with its account's
/// limits read in the same statement (the same text in every dialect).
pub fn select_columns() -> String {
    let names: Vec<&str> = KEY_COLUMNS.iter().map(|(name, _)| *name).collect();
    format!(
        "{}, (SELECT a.rate_limits FROM tower_api_key_account_limits AS a \
          WHERE a.service_account_id = tower_api_key_keys.service_account_id) \
          AS account_rate_limits",
        names.join(", ")
    )
}

/// The insert of [`KeyRow::values`], parameters `$1`, `$2`, ...
pub(crate) fn insert_sql() -> String {
    let names: Vec<&str> = KEY_COLUMNS.iter().map(|(name, _)| *name).collect();
    let params: Vec<String> = (1..=KEY_COLUMNS.len()).map(|n| format!("${n}")).collect();
    format!(
        "INSERT INTO tower_api_key_keys ({}) VALUES ({})",
        names.join(", "),
        params.join(", ")
    )
}

/// The update of [`KeyRow::changed_values`] (the key id first, then what a
/// change may write), parameters `$1`, `$2`, ...
pub(crate) fn update_sql() -> String {
    let sets: Vec<String> = KEY_COLUMNS
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| changeable(name))
        .enumerate()
        .map(|(i, name)| format!("{name} = ${}", i + 2))
        .collect();
    format!(
        "UPDATE tower_api_key_keys SET {} WHERE key_id = $1",
        sets.join(", ")
    )
}

/// `v` as a text value.
pub(crate) fn text(v: &str) -> Value {
    Value::Text(Some(v.to_owned()))
}

fn hash_values(h: &HashColumns) -> [Value; 3] {
    [
        Value::Bytes(h.digest.clone()),
        Value::Text(h.scheme.clone()),
        Value::Int(h.pepper_version),
    ]
}

impl KeyRow {
    /// The row's values, in the order of [`KEY_COLUMNS`].
    pub fn values(&self) -> Vec<Value> {
        let c = &self.credits;
        let mut values = vec![text(&self.key_id), text(&self.service_account_id)];
        values.extend(hash_values(&self.hash));
        values.extend(hash_values(&self.previous));
        values.extend([
            Value::Time(self.previous_valid_until),
            Value::Texts(self.scopes.clone()),
            text(&self.description),
            Value::Time(Some(self.created_at)),
            Value::Time(self.expires_at),
            Value::Time(self.last_used_at),
            text(&self.hint),
            text(&self.rate_limits),
            Value::Int(c.remaining),
            Value::Int(c.refill_amount),
            Value::Text(c.refill_interval.clone()),
            Value::Int(c.refill_day),
            Value::Time(c.refilled_at),
            Value::Int(Some(c.generation)),
            Value::Int(Some(self.version)),
            Value::Time(self.compromised_at),
            Value::Text(self.compromise_url.clone()),
            Value::Text(self.compromise_source.clone()),
            Value::Text(self.compromise_action.clone()),
            Value::Bytes(self.compromised_hash.clone()),
            Value::Texts(self.allowed_networks.clone()),
            Value::Text(self.metadata.clone()),
            Value::Bool(self.operator_locked),
            Value::Bool(self.retire_when_unused),
            Value::Time(self.retired_unused_since),
        ]);
        values
    }

    /// The key id, then the values a change may write, for
    /// the key update's parameters.
    pub fn changed_values(&self) -> Vec<Value> {
        let values = KEY_COLUMNS.iter().zip(self.values());
        let changed = values.filter(|((name, _), _)| changeable(name));
        std::iter::once(text(&self.key_id))
            .chain(changed.map(|(_, value)| value))
            .collect()
    }

    /// The row a read of [`select_columns`] returned, as values in the
    /// order of [`read_kinds`].
    ///
    /// A value that is not of its column's kind (a codec that could not
    /// read the column as its kind, such as SQLite text that is not UTF-8)
    /// makes the row [`unreadable`](KeyRow::unreadable), naming the column:
    /// the row still pages by its id and creation time, and reads of its
    /// record fail. An unreadable key id is an error.
    pub fn from_values(mut values: Vec<Value>) -> Result<Self, BoxError> {
        let names = KEY_COLUMNS.iter().map(|(name, _)| *name);
        let mut unreadable = None;
        let columns = names.chain(["account_rate_limits"]).zip(read_kinds());
        for (value, (name, kind)) in values.iter_mut().zip(columns) {
            if value.kind() != kind {
                if name == "key_id" {
                    return Err(mismatch());
                }
                unreadable.get_or_insert_with(|| format!("column {name} cannot be read"));
                *value = Value::placeholder(kind);
            }
        }
        let mut values = values.into_iter();
        let mut next = move || values.next().ok_or("a key row has too few columns");
        let key_id = req(opt_text(next()?)?)?;
        let service_account_id = req(opt_text(next()?)?)?;
        let hash_columns = HashColumns {
            digest: bytes(next()?)?,
            scheme: opt_text(next()?)?,
            pepper_version: int(next()?)?,
        };
        let previous = HashColumns {
            digest: bytes(next()?)?,
            scheme: opt_text(next()?)?,
            pepper_version: int(next()?)?,
        };
        Ok(KeyRow {
            key_id,
            service_account_id,
            hash: hash_columns,
            previous,
            previous_valid_until: time(next()?)?,
            scopes: match next()? {
                Value::Texts(names) => names,
                _ => return Err(mismatch()),
            },
            description: req(opt_text(next()?)?)?,
            created_at: req(time(next()?)?)?,
            expires_at: time(next()?)?,
            last_used_at: time(next()?)?,
            hint: req(opt_text(next()?)?)?,
            rate_limits: req(opt_text(next()?)?)?,
            credits: CreditColumns {
                remaining: int(next()?)?,
                refill_amount: int(next()?)?,
                refill_interval: opt_text(next()?)?,
                refill_day: int(next()?)?,
                refilled_at: time(next()?)?,
                generation: req(int(next()?)?)?,
            },
            version: req(int(next()?)?)?,
            compromised_at: time(next()?)?,
            compromise_url: opt_text(next()?)?,
            compromise_source: opt_text(next()?)?,
            compromise_action: opt_text(next()?)?,
            compromised_hash: bytes(next()?)?,
            allowed_networks: match next()? {
                Value::Texts(nets) => nets,
                _ => return Err(mismatch()),
            },
            metadata: opt_text(next()?)?,
            operator_locked: match next()? {
                Value::Bool(locked) => locked,
                _ => return Err(mismatch()),
            },
            retire_when_unused: match next()? {
                Value::Bool(flag) => flag,
                _ => return Err(mismatch()),
            },
            retired_unused_since: time(next()?)?,
            account_rate_limits: opt_text(next()?)?,
            unreadable,
        })
    }
}

impl Value {
    /// The kind of column this value is of.
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Value::Int(_) => Kind::Int,
            Value::Text(_) => Kind::Text,
            Value::Bytes(_) => Kind::Bytes,
            Value::Time(_) => Kind::Time,
            Value::Texts(_) => Kind::Texts,
            Value::Bool(_) => Kind::Bool,
        }
    }

    /// A value of `kind` that stands in for one a codec could not read.
    fn placeholder(kind: Kind) -> Self {
        match kind {
            Kind::Int => Value::Int(Some(0)),
            Kind::Text => Value::Text(Some(String::new())),
            Kind::Bytes => Value::Bytes(None),
            Kind::Time => Value::Time(Some(SystemTime::UNIX_EPOCH)),
            Kind::Texts => Value::Texts(Vec::new()),
            Kind::Bool => Value::Bool(false),
        }
    }
}

fn mismatch() -> BoxError {
    "a key row column has an unexpected type".into()
}

fn req<T>(value: Option<T>) -> Result<T, BoxError> {
    value.ok_or_else(|| "a key row column is NULL".into())
}

fn int(value: Value) -> Result<Option<i64>, BoxError> {
    match value {
        Value::Int(v) => Ok(v),
        _ => Err(mismatch()),
    }
}

fn opt_text(value: Value) -> Result<Option<String>, BoxError> {
    match value {
        Value::Text(v) => Ok(v),
        _ => Err(mismatch()),
    }
}

fn bytes(value: Value) -> Result<Option<Vec<u8>>, BoxError> {
    match value {
        Value::Bytes(v) => Ok(v),
        _ => Err(mismatch()),
    }
}

fn time(value: Value) -> Result<Option<SystemTime>, BoxError> {
    match value {
        Value::Time(v) => Ok(v),
        _ => Err(mismatch()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_round_trips_through_its_values_and_a_change_writes_what_it_may() {
        let at = SystemTime::UNIX_EPOCH;
        let row = KeyRow {
            key_id: "k".into(),
            service_account_id: "sa".into(),
            scopes: vec!["a.b".into(), "c".into()],
            description: "d".into(),
            created_at: at,
            expires_at: None,
            last_used_at: Some(at),
            hint: "h".into(),
            rate_limits: "5/1s".into(),
            account_rate_limits: Some("9/1d".into()),
            credits: CreditColumns {
                remaining: Some(3),
                generation: 2,
                ..CreditColumns::default()
            },
            version: 4,
            hash: HashColumns {
                digest: Some(vec![1; 32]),
                scheme: Some("sha256".into()),
                pepper_version: None,
            },
            previous: HashColumns::default(),
            previous_valid_until: None,
            compromised_at: Some(at),
            compromise_url: Some("https://example.com/leak".into()),
            compromise_source: Some("scanner".into()),
            compromise_action: Some("quarantine".into()),
            compromised_hash: Some(vec![1; 32]),
            allowed_networks: vec!["10.0.0.0/8".into(), "2001:db8::/32".into()],
            metadata: Some(r#"{"plan":"pro"}"#.into()),
            operator_locked: true,
            retire_when_unused: false,
            retired_unused_since: Some(at),
            unreadable: None,
        };
        let mut values = row.values();
        assert_eq!(values.len(), KEY_COLUMNS.len());
        values.push(Value::Text(row.account_rate_limits.clone()));
        assert_eq!(KeyRow::from_values(values).unwrap(), row);
        let kinds: Vec<Kind> = read_kinds().collect();
        assert_eq!(kinds.len(), KEY_COLUMNS.len() + 1);
        // The id, then 29 changeable columns, each numbered in the update.
        assert_eq!(row.changed_values().len(), 30);
        let sql = update_sql();
        assert!(sql.contains("version = $20") && sql.ends_with("key_id = $1"));
        assert!(!sql.contains("created_at") && !sql.contains("last_used_at ="));
        assert!(
            sql.contains("operator_locked = $28")
                && sql.contains("retire_when_unused = $29")
                && sql.contains("retired_unused_since = $30")
        );
        assert!(KeyRow::from_values(vec![Value::Int(None)]).is_err());
    }

    #[test]
    fn a_value_of_another_kind_makes_the_row_unreadable_naming_the_column_but_not_its_id() {
        let at = SystemTime::UNIX_EPOCH;
        let row = KeyRow {
            key_id: "k".into(),
            service_account_id: "sa".into(),
            scopes: Vec::new(),
            description: "d".into(),
            created_at: at,
            expires_at: None,
            last_used_at: None,
            hint: "h".into(),
            rate_limits: String::new(),
            account_rate_limits: None,
            credits: CreditColumns::default(),
            version: 1,
            hash: HashColumns::default(),
            previous: HashColumns::default(),
            previous_valid_until: None,
            compromised_at: None,
            compromise_url: None,
            compromise_source: None,
            compromise_action: None,
            compromised_hash: None,
            allowed_networks: Vec::new(),
            metadata: None,
            operator_locked: false,
            retire_when_unused: true,
            retired_unused_since: None,
            unreadable: None,
        };
        let mut values = row.values();
        values.push(Value::Text(None));
        let description = KEY_COLUMNS
            .iter()
            .position(|(name, _)| *name == "description")
            .unwrap();
        values[description] = Value::Bytes(Some(vec![0xff]));
        let read = KeyRow::from_values(values.clone()).unwrap();
        assert_eq!(read.key_id, "k");
        assert_eq!(read.created_at, at);
        assert_eq!(
            read.unreadable.as_deref(),
            Some("column description cannot be read")
        );
        let err = read.record().unwrap_err().to_string();
        assert_eq!(err, "column description cannot be read");
        values[0] = Value::Bytes(Some(vec![0xff]));
        assert!(KeyRow::from_values(values).is_err(), "no id, no row");
    }
}
