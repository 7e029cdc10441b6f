//! Who a side is within its session: the host, or one of its guests. The
//! registries keep sessions as one host and the places its guests take; the
//! protocol's roles name them at the edge (a plain pairing is one guest
//! place: the mac is the host, the browser the guest of place 0).

use relay_protocol::Role;

/// A side within its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Member {
    /// The side that registered the session (the mac).
    Host,
    /// The guest in this place (the browser, in place 0).
    Guest(usize),
}

impl Member {
    /// The endpoint role this side connects with.
    pub fn role(self) -> Role {
        match self {
            Member::Host => Role::Mac,
            Member::Guest(_) => Role::Browser,
        }
    }
}

impl From<Role> for Member {
    fn from(role: Role) -> Self {
        match role {
            Role::Mac => Member::Host,
            Role::Browser => Member::Guest(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_name_the_host_and_the_first_guest_and_back() {
        for role in [Role::Mac, Role::Browser] {
            assert_eq!(Member::from(role).role(), role);
        }
        assert_eq!(Member::Guest(3).role(), Role::Browser);
    }
}
