//! Refusing an API key typed on the command line, before clap reads it.
//!
//! No argument takes a key (`keys check` reads it from stdin), so one that
//! holds a key is a mistake, and the key is exposed already (shell history,
//! `ps`). Every argument is scanned before parsing, so neither a command
//! that would accept the text (`--account`) nor clap's error for one that
//! would not (`keys get <key>`) ever stores or prints it: the refusal names
//! the argument, never its value.

use std::ffi::OsString;

use clap::Command;
use tower_api_key::{KeyFormat, ID_LEN, MAX_PREFIX_LEN, SECRET_LEN};

/// Whether a key, of any issuer prefix, appears anywhere in `text`, even
/// glued to other characters: a whole key with a valid checksum, or the
/// shape of one whose checksum is cut short or mistyped (`PREFIX_ID_` and
/// a whole secret), which still holds everything needed to use the key.
pub fn holds_key(text: &str) -> bool {
    let b = text.as_bytes();
    let base62 = |bytes: Option<&[u8]>, len: usize| {
        bytes.is_some_and(|s| s.len() == len && s.iter().all(u8::is_ascii_alphanumeric))
    };
    // A key is PREFIX '_' ID '_' SECRET CHECKSUM; every '_' may end a
    // prefix of 1 to 16 characters.
    b.iter().enumerate().any(|(at, &c)| {
        c == b'_'
            && (1..=MAX_PREFIX_LEN.min(at)).any(|len| {
                let start = at - len;
                let Ok(prefix) = std::str::from_utf8(&b[start..at]) else {
                    return false;
                };
                let Ok(format) = KeyFormat::new(prefix) else {
                    return false;
                };
                let whole = b
                    .get(start..start + format.key_len())
                    .is_some_and(|window| format.parse_bytes(window).is_ok());
                let id = at + 1;
                let secret = id + ID_LEN + 1;
                let shape = base62(b.get(id..id + ID_LEN), ID_LEN)
                    && b.get(id + ID_LEN) == Some(&b'_')
                    && base62(b.get(secret..secret + SECRET_LEN), SECRET_LEN);
                whole || shape
            })
    })
}

/// The message refusing `args` (the program name first) when one of them
/// holds a key; `None` when none does.
pub fn key_refusal(args: &[OsString], root: &Command) -> Option<String> {
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let index = args.iter().skip(1).position(|a| holds_key(a))? + 1;
    let mut root = root.clone();
    // Global options are known to every subcommand once built.
    root.build();
    let (command, place) = place_of(&args, index, &root);
    Some(match place {
        place if command == ["keys", "check"] => format!(
            "`keys check` reads the key from stdin, never from the command line, where other \
             users can see it (ps); {} holds an API key, which is not shown here: treat it as \
             exposed, and revoke or reissue it",
            place.describe()
        ),
        place => format!(
            "{} holds an API key: refused, and not shown here; a key typed on a command line \
             is exposed (shell history, ps): if it is a real one, revoke or reissue it",
            place.describe()
        ),
    })
}

/// Where an argument sits on the command line.
#[derive(Debug, PartialEq, Eq)]
enum Place {
    /// The value of a flag, or the flag itself (`--account=...`).
    Flag(String),
    /// A positional argument of a (sub)command.
    Positional { command: Vec<String>, name: String },
    /// Anywhere else (an unknown command, say): its position.
    Nth(usize),
}

impl Place {
    fn describe(&self) -> String {
        match self {
            Self::Flag(flag) => flag.clone(),
            Self::Positional { command, name } if command.is_empty() => name.clone(),
            Self::Positional { command, name } => format!("{name} of `{}`", command.join(" ")),
            Self::Nth(n) => format!("argument {n}"),
        }
    }
}

/// Walks `args` as clap would, far enough to name argument `index`; the
/// subcommand it belongs to (such as `["keys", "get"]`), and its place.
fn place_of(args: &[String], index: usize, root: &Command) -> (Vec<String>, Place) {
    let mut cmd = root;
    let mut command: Vec<String> = Vec::new();
    let mut positional = 0;
    let mut only_positionals = false;
    let mut i = 1;
    while i < args.len() && i <= index {
        let arg = args[i].as_str();
        if !only_positionals && arg == "--" {
            only_positionals = true;
            i += 1;
            continue;
        }
        if !only_positionals && arg.len() > 1 && arg.starts_with('-') {
            let (flag, takes_value) = if let Some(long) = arg.strip_prefix("--") {
                let (name, inline) = match long.split_once('=') {
                    Some((name, _)) => (name, true),
                    None => (long, false),
                };
                let takes = cmd
                    .get_arguments()
                    .find(|a| a.get_long() == Some(name))
                    .is_some_and(|a| a.get_action().takes_values());
                (format!("--{name}"), takes && !inline)
            } else {
                let short = arg[1..].chars().next().unwrap_or('-');
                let takes = cmd
                    .get_arguments()
                    .find(|a| a.get_short() == Some(short))
                    .is_some_and(|a| a.get_action().takes_values());
                // `-ojson` carries its value; `-o json` has it next.
                (format!("-{short}"), takes && arg.chars().count() == 2)
            };
            if i == index || (takes_value && i + 1 == index) {
                return (command, Place::Flag(flag));
            }
            i += if takes_value { 2 } else { 1 };
            continue;
        }
        if positional == 0 && !only_positionals {
            if let Some(sub) = cmd.find_subcommand(arg) {
                if i == index {
                    return (command, Place::Nth(index));
                }
                command.push(sub.get_name().to_owned());
                cmd = sub;
                i += 1;
                continue;
            }
        }
        if i == index {
            let place = match cmd.get_positionals().nth(positional) {
                Some(a) => Place::Positional {
                    command: command.clone(),
                    name: a
                        .get_value_names()
                        .and_then(|names| names.first())
                        .map_or_else(|| a.get_id().to_string(), ToString::to_string),
                },
                None => Place::Nth(index),
            };
            return (command, place);
        }
        positional += 1;
        i += 1;
    }
    (command, Place::Nth(index))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use tower_api_key::CHECKSUM_LEN;

    fn key(prefix: &str) -> String {
        let format = KeyFormat::new(prefix).unwrap();
        format.generate().unwrap().expose_secret().to_owned()
    }

    #[test]
    fn finds_whole_keys_of_any_prefix_even_glued_to_text() {
        for prefix in ["tak", "a", "acme0", "abcdefghijklmnop"] {
            let k = key(prefix);
            assert!(holds_key(&k), "{prefix}");
            assert!(holds_key(&format!("x{k}y")), "{prefix} glued");
            assert!(holds_key(&format!("--account={k}")), "{prefix} in a flag");
            // Cut short or mistyped in its checksum, it still holds the
            // whole secret (issue 20 review: such a key was echoed).
            let whole_secret = k.len() - CHECKSUM_LEN;
            assert!(holds_key(&k[..k.len() - 1]), "{prefix} cut short");
            assert!(holds_key(&k[..whole_secret]), "{prefix} without checksum");
            assert!(!holds_key(&k[..whole_secret - 1]), "{prefix} secret cut");
        }
        let k = key("tak");
        let mut broken = k.clone().into_bytes();
        let last = broken.len() - 1;
        broken[last] = if broken[last] == b'0' { b'1' } else { b'0' };
        assert!(
            holds_key(std::str::from_utf8(&broken).unwrap()),
            "a mistyped checksum"
        );
        assert!(!holds_key("sa-reports"));
        assert!(!holds_key("tak_0000000000000000_"));
        assert!(!holds_key(
            "tak_000000000000000_00000000000000000000000000000000"
        ));
    }

    fn place(args: &[&str]) -> String {
        let args: Vec<OsString> = std::iter::once("tower-api-key")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        let strings: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let index = strings.iter().position(|a| a.contains("KEY")).unwrap();
        let mut root = crate::Cli::command();
        root.build();
        place_of(&strings, index, &root).1.describe()
    }

    #[test]
    fn names_the_argument_that_holds_the_key() {
        assert_eq!(place(&["keys", "create", "--account", "KEY"]), "--account");
        assert_eq!(place(&["keys", "create", "--account=KEY"]), "--account");
        assert_eq!(place(&["keys", "get", "KEY"]), "ID of `keys get`");
        assert_eq!(
            place(&[
                "-o",
                "json",
                "keys",
                "add-credits",
                "0000000000000000",
                "KEY"
            ]),
            "N of `keys add-credits`"
        );
        assert_eq!(
            place(&["keys", "update", "--unscoped", "KEY", "--expires-at", "x"]),
            "ID of `keys update`"
        );
        assert_eq!(
            place(&["keys", "update", "0000000000000000", "--expires-at", "KEY"]),
            "--expires-at"
        );
        assert_eq!(place(&["keys", "list", "-oKEY"]), "-o");
        assert_eq!(place(&["KEY"]), "argument 1");
        assert_eq!(place(&["keys", "frob", "KEY"]), "argument 3");
    }
}
