//! Usage errors in one line: clap's own rendering spreads an error over up to five lines (the error,
//! the missing arguments one per line, a usage line, a tip); this renders it from the error's kind
//! and context as `error: SENTENCE` plus one hint line naming the help of the command at fault.

use std::ffi::OsString;

use clap::error::{ContextKind, ContextValue, ErrorKind};

/// The two lines printed for a usage error: `error: ...` and a hint.
pub(crate) fn render(err: &clap::Error, cli: &clap::Command, args: &[OsString]) -> (String, String) {
    let (path, cmd) = command_at_fault(cli, args);
    let message = match err.kind() {
        ErrorKind::InvalidSubcommand => {
            let name = string(err, ContextKind::InvalidSubcommand).unwrap_or_default();
            match strings(err, ContextKind::SuggestedSubcommand).as_slice() {
                [] => format!("unknown command '{name}' for '{path}' (the commands: {})", subcommands(cmd)),
                suggested => format!(
                    "unknown command '{name}' for '{path}' (did you mean '{}'?)",
                    suggested.join("' or '")
                ),
            }
        }
        ErrorKind::UnknownArgument => {
            let arg = string(err, ContextKind::InvalidArg).unwrap_or_default();
            match string(err, ContextKind::SuggestedArg) {
                Some(suggested) => {
                    format!("unknown argument '{arg}' for '{path}' (did you mean '{suggested}'?)")
                }
                None if arg.starts_with('-') => format!("unknown argument '{arg}' for '{path}'"),
                None => format!("unexpected argument '{arg}' for '{path}'"),
            }
        }
        ErrorKind::MissingRequiredArgument => {
            format!("'{path}' is missing {}", strings(err, ContextKind::InvalidArg).join(" "))
        }
        ErrorKind::MissingSubcommand | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            format!("'{path}' needs a command: {}", subcommands(cmd))
        }
        ErrorKind::InvalidValue => {
            let value = string(err, ContextKind::InvalidValue).unwrap_or_default();
            let arg = string(err, ContextKind::InvalidArg).unwrap_or_default();
            match strings(err, ContextKind::ValidValue).as_slice() {
                [] if value.is_empty() => format!("'{arg}' needs a value"),
                [] => format!("invalid value '{value}' for '{arg}'"),
                valid => format!("invalid value '{value}' for '{arg}' (valid: {})", valid.join(", ")),
            }
        }
        _ => first_sentence(err),
    };
    (format!("error: {message}"), format!("try '{path} --help'"))
}

/// The subcommand the arguments name (its path, e.g. `replikativ ormap assoc`, and its definition):
/// the deepest one reached by following subcommand names through the arguments.
fn command_at_fault<'a>(cli: &'a clap::Command, args: &[OsString]) -> (String, &'a clap::Command) {
    let mut cmd = cli;
    let mut path = vec![cli.get_name().to_owned()];
    for arg in args.iter().skip(1).filter_map(|a| a.to_str()) {
        if arg == "--" {
            break;
        }
        if let Some(sub) = cmd.find_subcommand(arg) {
            path.push(sub.get_name().to_owned());
            cmd = sub;
        }
    }
    (path.join(" "), cmd)
}

fn subcommands(cmd: &clap::Command) -> String {
    let names: Vec<&str> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .map(|s| s.get_name())
        .collect();
    names.join(", ")
}

fn string(err: &clap::Error, kind: ContextKind) -> Option<String> {
    match err.get(kind)? {
        ContextValue::String(s) => Some(s.clone()),
        ContextValue::Strings(v) => v.first().cloned(),
        other => Some(other.to_string()),
    }
}

fn strings(err: &clap::Error, kind: ContextKind) -> Vec<String> {
    match err.get(kind) {
        Some(ContextValue::Strings(v)) => v.clone(),
        Some(ContextValue::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// Any other error: clap's first line, with the indented lines that continue it (a list of
/// arguments or values) joined onto it, without usage and tips.
fn first_sentence(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let mut lines = rendered.lines();
    let mut sentence = lines.next().unwrap_or_default().trim_start_matches("error: ").trim_end().to_owned();
    for line in lines {
        let item = line.trim();
        if !line.starts_with("  ") || item.is_empty() || item.starts_with("tip:") {
            break;
        }
        sentence.push(' ');
        sentence.push_str(item);
    }
    sentence
}
