//! `relay host --guests N`: a room host on the command line. Stdin lines
//! are data for the guests, except lines starting with `/`, which are
//! commands (`/admit 3`, `/deny 3`, `/remove 3`, `/to 3`, `/to all`,
//! `/guests`, `/help`; `//text` sends `/text`). On a terminal, a bare `y`
//! or `n` also answers the oldest guest asking to join; piped input has no
//! such shortcut, so a script's data line `y` is never taken for an answer.
//! Prompts and events go to stderr.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use relay_protocol::client::{Client, Event, Target};
use relay_protocol::{GuestId, GuestLeftReason};

use super::say;

/// What the person asked for with one line of input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Line {
    /// Data for the current target.
    Data(String),
    /// Let a guest in.
    Admit(GuestId),
    /// Turn a guest away.
    Deny(GuestId),
    /// End a guest.
    Remove(GuestId),
    /// Send the lines that follow to this target.
    To(Target),
    /// List the guests.
    Guests,
    /// Say what the commands are.
    Help,
    /// `y` or `n` to the oldest request (a terminal only).
    Answer(bool),
    /// A command that is not one; the sentence says why.
    Bad(String),
}

/// The commands, for `/help` and for a mistyped one.
pub(super) const HELP: &str = "commands: /admit ID, /deny ID, /remove ID, /to ID, /to all, /guests, /help; start a line with // to send one that starts with /";

/// Reads one line of the room host's input; `answers` when a bare `y` or
/// `n` answers a request (a person at a terminal while one waits).
pub(super) fn parse(line: &str, answers: bool) -> Line {
    if let Some(rest) = line.strip_prefix("//") {
        return Line::Data(format!("/{rest}"));
    }
    if answers {
        match line.trim().to_ascii_lowercase().as_str() {
            "y" | "yes" => return Line::Answer(true),
            "n" | "no" => return Line::Answer(false),
            _ => {}
        }
    }
    let Some(cmd) = line.strip_prefix('/') else {
        return Line::Data(line.to_owned());
    };
    let mut words = cmd.split_whitespace();
    let (name, arg, extra) = (words.next(), words.next(), words.next());
    let id = |arg: Option<&str>| -> Result<GuestId, String> {
        match arg.map(str::parse::<GuestId>) {
            Some(Ok(id)) if id > 0 && extra.is_none() => Ok(id),
            _ => Err(format!(
                "/{} takes one guest id (a positive number), e.g. /{} 3",
                name.unwrap_or_default(),
                name.unwrap_or_default()
            )),
        }
    };
    let parsed = match name {
        Some("admit") => id(arg).map(Line::Admit),
        Some("deny") => id(arg).map(Line::Deny),
        Some("remove") => id(arg).map(Line::Remove),
        Some("to") if arg == Some("all") && extra.is_none() => Ok(Line::To(Target::All)),
        Some("to") => id(arg)
            .map(|g| Line::To(Target::Guest(g)))
            .map_err(|_| "/to takes a guest id or all, e.g. /to 3 or /to all".to_owned()),
        Some("guests") if arg.is_none() => Ok(Line::Guests),
        Some("help") => Ok(Line::Help),
        _ => Err(format!("unknown command {line:?}; {HELP}")),
    };
    parsed.unwrap_or_else(Line::Bad)
}

/// Where a guest stands, as the host heard it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Waiting,
    In,
    Away,
}

/// The room as the host's events told it; shared by the event loop and
/// the stdin reader.
#[derive(Debug, Default)]
pub(super) struct View {
    guests: BTreeMap<GuestId, (Option<String>, Standing)>,
    /// Guests waiting for an answer, oldest first.
    asking: VecDeque<GuestId>,
    /// Where typed lines go.
    target: Target,
}

/// The view, shared.
pub(super) type Shared = Arc<Mutex<View>>;

/// Locks the view (a panic elsewhere leaves it readable).
fn lock(v: &Shared) -> std::sync::MutexGuard<'_, View> {
    v.lock().unwrap_or_else(|e| e.into_inner())
}

impl View {
    /// `guest 3 (Ana)` or `guest 3`.
    fn who(&self, id: GuestId) -> String {
        match self.guests.get(&id).and_then(|(n, _)| n.as_deref()) {
            Some(name) => format!("guest {id} ({name})"),
            None => format!("guest {id}"),
        }
    }

    fn admitted(&self) -> usize {
        self.guests
            .values()
            .filter(|(_, s)| *s != Standing::Waiting)
            .count()
    }
}

/// Tells the person about a room event; false when `ev` is not one.
pub(super) fn on_event(view: &Shared, ev: &Event, ask: bool, terminal: bool) -> bool {
    let mut v = lock(view);
    match ev {
        Event::GuestJoined { guest, name } => {
            v.guests.insert(*guest, (name.clone(), Standing::Waiting));
            if ask {
                v.asking.push_back(*guest);
                let who = v.who(*guest);
                say(if terminal {
                    format!("{who} asks to join: admit? [y/n]")
                } else {
                    format!("{who} asks to join: /admit {guest} or /deny {guest}")
                });
            }
        }
        Event::GuestAdmitted(g) => {
            v.asking.retain(|a| a != g);
            if let Some((_, s)) = v.guests.get_mut(g) {
                *s = Standing::In;
            }
            let n = v.admitted();
            say(format!("{} is in ({n} in the room)", v.who(*g)));
        }
        Event::GuestLeft { guest, reason } => {
            v.asking.retain(|a| a != guest);
            let why = match reason {
                GuestLeftReason::Left => "left",
                GuestLeftReason::Closed => "closed the connection",
                GuestLeftReason::Timeout => "did not come back (or get an answer) in time",
                GuestLeftReason::Denied => "was turned away",
                GuestLeftReason::Removed => "was removed",
            };
            let who = v.who(*guest);
            v.guests.remove(guest);
            if v.target == Target::Guest(*guest) {
                say(format!(
                    "{who} {why}; what you type now goes to no one: /to all or /to ID"
                ));
            } else {
                say(format!("{who} {why}"));
            }
        }
        Event::GuestEncrypted(g) => say(format!(
            "{}: end-to-end encrypted with its own key the relay never saw",
            v.who(*g)
        )),
        Event::GuestFailed { guest, why } => {
            // The sentence of a failed exchange, then what it means here.
            say(format!(
                "{}: {why}; it was removed, the room goes on",
                v.who(*guest)
            ));
        }
        Event::GuestUnfinished(g) => say(format!(
            "{} left without its end-of-session frame: its last lines may be missing",
            v.who(*g)
        )),
        Event::GuestAway(g) => {
            if let Some((_, s)) = v.guests.get_mut(g) {
                *s = Standing::Away;
            }
            say(format!(
                "{}'s connection dropped; waiting for it to come back",
                v.who(*g)
            ));
        }
        Event::GuestBack(g) => {
            if let Some((_, s)) = v.guests.get_mut(g) {
                *s = Standing::In;
            }
            say(format!("{} is back", v.who(*g)));
        }
        _ => return false,
    }
    true
}

/// Whether a bare `y`/`n` would answer someone now.
pub(super) fn someone_asks(view: &Shared) -> bool {
    !lock(view).asking.is_empty()
}

/// The mark of a guest's line on stdout.
pub(super) fn mark(id: GuestId) -> String {
    format!("guest {id}> ")
}

/// Carries out one line of input; returns the data to send and where, if any.
pub(super) async fn on_line(
    view: &Shared,
    client: &Client,
    line: Line,
) -> Option<(Target, String)> {
    let done = match line {
        Line::Data(text) => {
            let v = lock(view);
            match v.target {
                Target::All if v.admitted() == 0 => {
                    say("no guest is in the room yet: the line reached no one")
                }
                Target::Guest(g) if !v.guests.contains_key(&g) => say(format!(
                    "guest {g} is not in the room: the line reached no one"
                )),
                _ => {}
            }
            return Some((v.target, text));
        }
        Line::Answer(yes) => {
            let oldest = lock(view).asking.pop_front();
            match oldest {
                Some(g) if yes => client.admit(g).await,
                Some(g) => client.deny(g).await,
                None => return None,
            }
        }
        Line::Admit(g) => client.admit(g).await,
        Line::Deny(g) => client.deny(g).await,
        Line::Remove(g) => client.remove(g).await,
        Line::To(t) => {
            let mut v = lock(view);
            v.target = t;
            say(match t {
                Target::All => "what you type goes to every guest".to_owned(),
                Target::Guest(g) if v.guests.contains_key(&g) => {
                    format!("what you type goes to {} only", v.who(g))
                }
                Target::Guest(g) => {
                    format!(
                        "guest {g} is not in the room; what you type goes to no one until /to all or /to ID"
                    )
                }
            });
            return None;
        }
        Line::Guests => {
            let v = lock(view);
            if v.guests.is_empty() {
                say("no guests");
            }
            for (id, (_, s)) in &v.guests {
                let s = match s {
                    Standing::Waiting => "waiting for your answer",
                    Standing::In => "in",
                    Standing::Away => "away",
                };
                say(format!("{}: {s}", v.who(*id)));
            }
            return None;
        }
        Line::Help => {
            say(HELP);
            return None;
        }
        Line::Bad(why) => {
            say(why);
            return None;
        }
    };
    if let Err(e) = done {
        say(e.to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_data_unless_they_are_commands() {
        assert_eq!(parse("hello", false), Line::Data("hello".into()));
        assert_eq!(parse("//admit 3", false), Line::Data("/admit 3".into()));
        assert_eq!(parse("/admit 3", false), Line::Admit(3));
        assert_eq!(parse("/deny 12", true), Line::Deny(12));
        assert_eq!(parse("/remove 2", false), Line::Remove(2));
        assert_eq!(parse("/to 2", false), Line::To(Target::Guest(2)));
        assert_eq!(parse("/to all", false), Line::To(Target::All));
        assert_eq!(parse("/guests", false), Line::Guests);
        // y and n answer only when asked to (a terminal with a request waiting).
        assert_eq!(parse("y", false), Line::Data("y".into()));
        assert_eq!(parse("Y", true), Line::Answer(true));
        assert_eq!(parse("no", true), Line::Answer(false));
        for bad in [
            "/admit",
            "/admit x",
            "/admit 0",
            "/admit 1 2",
            "/to",
            "/to -1",
            "/kick 3",
            "/",
        ] {
            assert!(matches!(parse(bad, true), Line::Bad(_)), "{bad}");
        }
        let Line::Bad(why) = parse("/kick 3", false) else {
            unreachable!()
        };
        assert!(why.contains("/admit ID"), "{why}");
    }
}
