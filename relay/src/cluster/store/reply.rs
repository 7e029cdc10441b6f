//! Reading a script's reply: an array of fields in the order the script
//! writes them, each read once by name, in turn. The scripts write a missing
//! value as `''` (Lua's `or ''`), which reads as `None` where a value may
//! be missing. Anything else unexpected is a [`Malformed`].

use std::sync::Arc;

use redis::Value;

use super::{NodeId, SideState};
use crate::conns::ConnId;

/// What is wrong with a reply; the store adds which call it answered.
#[derive(Debug)]
pub(crate) struct Malformed(pub(crate) String);

/// A reply's fields, read front to back.
pub(super) struct Fields<'a> {
    items: &'a [Value],
    /// Index of the next field to read.
    next: usize,
}

impl<'a> Fields<'a> {
    /// The fields of an array reply.
    pub(super) fn of(reply: &'a Value) -> Result<Self, Malformed> {
        match reply {
            Value::Array(items) | Value::Set(items) => Ok(Fields { items, next: 0 }),
            other => Err(Malformed(format!("expected an array, got {other:?}"))),
        }
    }

    /// Whether every field has been read.
    pub(super) fn is_empty(&self) -> bool {
        self.next >= self.items.len()
    }

    /// The next field as text.
    pub(super) fn text(&mut self, name: &str) -> Result<&'a str, Malformed> {
        let at = self.next;
        let v = self
            .items
            .get(at)
            .ok_or_else(|| Malformed(format!("field {at} ({name}) is missing")))?;
        self.next += 1;
        text(v).ok_or_else(|| Malformed(format!("field {at} ({name}) is not text: {v:?}")))
    }

    /// The next field as text that may be missing (`''`).
    pub(super) fn maybe(&mut self, name: &str) -> Result<Option<&'a str>, Malformed> {
        Ok(Some(self.text(name)?).filter(|s| !s.is_empty()))
    }

    /// The next field as a node id, if any.
    pub(super) fn node(&mut self, name: &str) -> Result<Option<NodeId>, Malformed> {
        Ok(self.maybe(name)?.map(Arc::from))
    }

    /// The next field as a side state, if the side exists.
    pub(super) fn state(&mut self, name: &str) -> Result<Option<SideState>, Malformed> {
        let at = self.next;
        self.maybe(name)?
            .map(|s| s.parse())
            .transpose()
            .map_err(|e| Malformed(format!("field {at} ({name}): {e}")))
    }

    /// The next field as a connection id, if any.
    pub(super) fn conn(&mut self, name: &str) -> Result<Option<ConnId>, Malformed> {
        let at = self.next;
        self.maybe(name)?
            .map(|s| s.parse().map(ConnId))
            .transpose()
            .map_err(|e| Malformed(format!("field {at} ({name}): {e}")))
    }

    /// The next field as a count (the scripts write a missing one as `'0'`).
    pub(super) fn count(&mut self, name: &str) -> Result<u64, Malformed> {
        let at = self.next;
        let s = self.text(name)?;
        s.parse()
            .map_err(|_| Malformed(format!("field {at} ({name}) is not a count: {s:?}")))
    }

    /// The next field as a flag written `'1'` or `'0'`.
    pub(super) fn flag(&mut self, name: &str) -> Result<bool, Malformed> {
        let at = self.next;
        match self.text(name)? {
            "1" => Ok(true),
            "0" => Ok(false),
            s => Err(Malformed(format!(
                "field {at} ({name}) is not 0 or 1: {s:?}"
            ))),
        }
    }

    /// Passes over a field the registry has no use for (it must be there).
    pub(super) fn skip(&mut self, name: &str) -> Result<(), Malformed> {
        self.text(name).map(drop)
    }

    /// Checks that nothing is left: a longer reply means the script and this
    /// module no longer agree on its shape.
    pub(super) fn end(self) -> Result<(), Malformed> {
        match self.items.len() - self.next.min(self.items.len()) {
            0 => Ok(()),
            n => Err(Malformed(format!(
                "{n} unexpected field(s) after field {}",
                self.next
            ))),
        }
    }
}

/// A text value (Lua strings come back as bulk strings).
pub(super) fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// An integer reply (Lua numbers come back as integers).
pub(super) fn int(reply: &Value) -> Result<i64, Malformed> {
    match reply {
        Value::Int(n) => Ok(*n),
        other => Err(Malformed(format!("expected an integer, got {other:?}"))),
    }
}

/// An unknown first field (the status word of most scripts).
pub(super) fn unknown_status(status: &str) -> Malformed {
    Malformed(format!("unknown status {status:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn array(fields: &[&str]) -> Value {
        Value::Array(
            fields
                .iter()
                .map(|f| Value::BulkString(f.as_bytes().to_vec()))
                .collect(),
        )
    }

    #[test]
    fn fields_read_in_turn_with_empty_as_none() {
        let v = array(&["ok", "", "n1", "here", "", "7", "1", "12"]);
        let mut f = Fields::of(&v).unwrap();
        assert_eq!(f.text("status").unwrap(), "ok");
        assert_eq!(f.node("a").unwrap(), None);
        assert_eq!(f.node("b").unwrap().as_deref(), Some("n1"));
        assert_eq!(f.state("c").unwrap(), Some(SideState::Here));
        assert_eq!(f.state("d").unwrap(), None);
        assert_eq!(f.count("e").unwrap(), 7);
        assert!(f.flag("f").unwrap());
        assert_eq!(f.conn("g").unwrap(), Some(ConnId(12)));
        assert!(f.is_empty());
        f.end().unwrap();
    }

    #[test]
    fn odd_fields_are_errors_that_say_which() {
        let v = array(&["here-ish", "x", "2", "ok"]);
        let mut f = Fields::of(&v).unwrap();
        let e = f.state("peer state").unwrap_err().0;
        assert!(e.contains("field 0 (peer state)"), "{e}");
        let e = f.count("acc").unwrap_err().0;
        assert!(e.contains("field 1 (acc) is not a count"), "{e}");
        let e = f.flag("alive").unwrap_err().0;
        assert!(e.contains("field 2 (alive) is not 0 or 1"), "{e}");
        let e = f.text("status").unwrap();
        assert_eq!(e, "ok");
        let e = f.text("more").unwrap_err().0;
        assert!(e.contains("field 4 (more) is missing"), "{e}");
        let v = array(&["ok", "extra"]);
        let mut f = Fields::of(&v).unwrap();
        f.skip("status").unwrap();
        assert!(f.end().unwrap_err().0.contains("1 unexpected field"));
        assert!(Fields::of(&Value::Int(1)).is_err());
        assert!(int(&array(&[])).is_err());
        assert_eq!(int(&Value::Int(3)).unwrap(), 3);
        let v = Value::Array(vec![Value::Int(3)]);
        assert!(Fields::of(&v).unwrap().text("status").is_err());
    }
}
