//! The owner check: the path's `{user_id}` must be the caller's own.

use crate::auth::UserId;
use crate::error::ApiError;

/// A caller proven to own the tasks under the path they asked for. Every repository call
/// takes one, so no statement can run without an owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner(UserId);

impl Owner {
    /// Compares the path's user id (as sent, or percent-decoded) with the token's.
    /// Decided before the body is read and before any database work.
    pub fn authorize(caller: UserId, path_user_id: &str) -> Result<Owner, ApiError> {
        let matches = path_user_id == caller.as_str()
            || percent_encoding::percent_decode_str(path_user_id)
                .decode_utf8()
                .is_ok_and(|decoded| decoded == caller.as_str());
        if matches {
            Ok(Owner(caller))
        } else {
            Err(ApiError::Forbidden)
        }
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> UserId {
        UserId::parse(id).unwrap()
    }

    #[test]
    fn only_the_callers_own_path_is_allowed() {
        assert!(Owner::authorize(user("alice"), "alice").is_ok());
        assert!(matches!(
            Owner::authorize(user("alice"), "bob"),
            Err(ApiError::Forbidden)
        ));
        assert!(Owner::authorize(user("a b"), "a%20b").is_ok());
    }
}
