//! The keys of the schema, derived from the schema's own types: every section struct is
//! declared through the `section!` macro, which lists its fields as it defines
//! them, and every field's type says what kind of value it takes. No list is kept by hand,
//! so a new field is a known key (with the right value check) by being declared.

use std::num::NonZeroU64;
use std::path::PathBuf;

use berth_engine_core::{BackendKind, Network, PullPolicy, SecurityProfile};

use super::types::{CpuQuantity, HumanDuration, Limit, MemoryQuantity};

/// What a value in the file must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ValueKind {
    /// A mapping of keys.
    Section,
    /// A mapping of names the user chooses to values (`builders`); its one child key is
    /// `*`, which matches any name.
    Named,
    /// Text.
    Text,
    /// Text, or a number standing for its text (`run_as_user: 1000`).
    TextOrNumber,
    /// `true` or `false`.
    Bool,
    /// A whole number.
    Count,
    /// A quantity or duration: text, or a bare number (`cpu: 2`, `max_lifetime: 90`).
    Quantity,
    /// `runner.workspace`: `none`, `ephemeral`, `{host_path: ..}` or `{volume: ..}`.
    Workspace,
    /// A list (its entries are checked when they deserialize).
    List,
    /// `runner.network`: `none`, `full`, `true`, `false` or `{allow: [..], dns: ..}`.
    Network,
}

impl ValueKind {
    /// What a value of this kind looks like, for "expected ..." messages.
    pub(crate) fn expected(self) -> &'static str {
        match self {
            ValueKind::Section => "a section (a mapping of keys)",
            ValueKind::Named => "a mapping of names to values",
            ValueKind::Text => "text (quote it if it looks like a number or true/false)",
            ValueKind::TextOrNumber => "text or a number",
            ValueKind::Bool => "true or false",
            ValueKind::Count => "a whole number",
            ValueKind::Quantity => "a quantity or duration, like 2, 500m, 4Gi or 30m",
            ValueKind::Workspace => "none, ephemeral, {host_path: /abs/dir} or {volume: name}",
            ValueKind::List => "a list",
            ValueKind::Network => berth_engine_core::NETWORK_FORMS,
        }
    }
}

/// One key of a section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Key {
    /// Its name in the file.
    pub(crate) name: &'static str,
    /// What its value must be.
    pub(crate) kind: ValueKind,
    /// The keys under it (a section's fields, a workspace's forms).
    pub(crate) children: Vec<Key>,
}

/// A type of the schema: what kind of value it takes and, for a section, its keys.
pub(crate) trait Schema {
    /// What kind of value a key of this type takes.
    fn kind() -> ValueKind;
    /// The keys under a key of this type.
    fn keys() -> Vec<Key> {
        Vec::new()
    }
}

macro_rules! leaf {
    ($kind:ident: $($ty:ty),*) => {
        $(impl Schema for $ty {
            fn kind() -> ValueKind {
                ValueKind::$kind
            }
        })*
    };
}

leaf!(Text: String, PathBuf, BackendKind, PullPolicy, SecurityProfile);
leaf!(Bool: bool);
leaf!(Count: u64, NonZeroU64);
leaf!(Quantity: HumanDuration, CpuQuantity, MemoryQuantity);

impl Schema for Network {
    fn kind() -> ValueKind {
        ValueKind::Network
    }
    /// The keys of the `{allow: [..], dns: ..}` form.
    fn keys() -> Vec<Key> {
        vec![
            Key {
                name: "allow",
                kind: ValueKind::List,
                children: Vec::new(),
            },
            Key {
                name: "dns",
                kind: ValueKind::Bool,
                children: Vec::new(),
            },
        ]
    }
}

impl<T: Schema> Schema for Option<T> {
    fn kind() -> ValueKind {
        T::kind()
    }
    fn keys() -> Vec<Key> {
        T::keys()
    }
}

impl<T> Schema for Vec<T> {
    fn kind() -> ValueKind {
        ValueKind::List
    }
}

impl<T> Schema for Limit<T> {
    fn kind() -> ValueKind {
        ValueKind::Quantity
    }
}

/// Declares a section struct of the schema and its [`Schema`] impl from one field list, so
/// the known keys are the fields. A field may name its value kind after `=>` where its type
/// says less (`Option<String> => ValueKind::TextOrNumber`). Serde renames would make the
/// names differ; a unit test compares them with serde's.
macro_rules! section {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$field_meta:meta])*
                pub $field:ident: $ty:ty $(=> $kind:expr)?,
            )*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $(
                $(#[$field_meta])*
                pub $field: $ty,
            )*
        }

        impl $crate::config::keys::Schema for $name {
            fn kind() -> $crate::config::keys::ValueKind {
                $crate::config::keys::ValueKind::Section
            }
            fn keys() -> Vec<$crate::config::keys::Key> {
                vec![$(
                    $crate::config::keys::Key {
                        name: stringify!($field),
                        kind: $crate::config::keys::section!(@kind $ty $(, $kind)?),
                        children: <$ty as $crate::config::keys::Schema>::keys(),
                    },
                )*]
            }
        }
    };
    (@kind $ty:ty) => { <$ty as $crate::config::keys::Schema>::kind() };
    (@kind $ty:ty, $kind:expr) => { $kind };
}
pub(crate) use section;

/// Whether the known path `known` (where a `*` segment is any name) names `path`.
pub(crate) fn path_matches(known: &str, path: &str) -> bool {
    let (mut k, mut p) = (known.split('.'), path.split('.'));
    loop {
        match (k.next(), p.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a == "*" || a == b => {}
            _ => return false,
        }
    }
}

/// Every key path under `keys` as dotted paths with their kinds, sections included
/// (`runner`, `runner.resources`, `runner.resources.cpu`).
pub(crate) fn flatten(prefix: &str, keys: &[Key], out: &mut Vec<(String, ValueKind)>) {
    for key in keys {
        let path = if prefix.is_empty() {
            key.name.to_owned()
        } else {
            format!("{prefix}.{}", key.name)
        };
        out.push((path.clone(), key.kind));
        flatten(&path, &key.children, out);
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The name among `names` nearest to `name` within `limit` edits, if any.
pub(crate) fn nearest<'a>(
    name: &str,
    names: impl IntoIterator<Item = &'a str>,
    limit: usize,
) -> Option<&'a str> {
    names
        .into_iter()
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, k)| k)
}

/// The known path nearest to the unknown `key`, if any is close: first among its siblings,
/// then anywhere (a typo in the section name, `runer.image`).
pub(crate) fn suggest<'a>(key: &str, known: &'a [(String, ValueKind)]) -> Option<&'a str> {
    let parent_of = |k: &str| k.rsplit_once('.').map_or("", |(p, _)| p).to_owned();
    let parent = parent_of(key);
    let paths = || known.iter().map(|(k, _)| k.as_str());
    nearest(key, paths().filter(|k| parent_of(k) == parent), 3).or_else(|| nearest(key, paths(), 2))
}
