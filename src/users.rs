//! Operators: names, roles and argon2id password hashes (RFC 9106). The
//! dashboard and REST API (issue 5) authenticate against these; the CLI
//! manages them. There is no default user and no default password.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What a user may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read everything.
    Viewer,
    /// Also run operations, manage firmware and FOTA.
    Operator,
    /// Also manage users, device keys and settings.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// May a user with this role do what `required` allows?
    pub fn allows(self, required: Role) -> bool {
        self >= required
    }
}

impl std::str::FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Role> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(invalid(
                "role",
                format!("`{other}`: expected viewer, operator or admin"),
            )),
        }
    }
}

fn invalid(what: &'static str, reason: impl Into<String>) -> Error {
    Error::Invalid {
        what,
        reason: reason.into(),
    }
}

/// User names: what people type at a login form and what logs show.
pub fn check_name(name: &str) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "._-@".contains(c);
    if name.is_empty() || name.len() > 64 || !name.chars().all(ok_char) {
        return Err(invalid(
            "user name",
            format!("`{name}`: 1 to 64 letters, digits, `.`, `_`, `-` or `@`"),
        ));
    }
    Ok(())
}

/// Shortest password accepted (NIST SP 800-63B §5.1.1.2 asks for 8 at
/// least; operators of a device fleet get 12).
pub const MIN_PASSWORD_CHARS: usize = 12;

fn check_password(password: &str) -> Result<()> {
    let n = password.chars().count();
    if n < MIN_PASSWORD_CHARS {
        return Err(invalid(
            "password",
            format!("at least {MIN_PASSWORD_CHARS} characters, got {n}"),
        ));
    }
    if n > 1024 {
        return Err(invalid("password", "at most 1024 characters"));
    }
    Ok(())
}

/// argon2id (RFC 9106) at OWASP's recommended minimum for servers: 19 MiB,
/// 2 passes, 1 lane. RFC 9106 §4's own options (64 MiB to 2 GiB) cost more
/// memory per login than a small server should spend.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hash a new password (checked for length) into a PHC string.
pub fn hash_password(password: &str) -> Result<String> {
    check_password(password)?;
    let salt = crate::secret::random::<16>()?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| invalid("password", e.to_string()))?;
    Ok(argon2()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| invalid("password", e.to_string()))?
        .to_string())
}

/// Does `password` match the stored PHC string? A malformed hash matches
/// nothing.
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| argon2().verify_password(password.as_bytes(), &h).is_ok())
}

/// Someone signed in: through a dashboard session or an API token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: i64,
    pub name: String,
    /// For a token, the lesser of its role and its user's.
    pub role: Role,
    pub via_token: bool,
}

/// A user as listed: never the hash.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct User {
    pub name: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse batterx", &h));
        assert!(!verify_password("correct horse battery", "not a hash"));
        assert_ne!(h, hash_password("correct horse battery").unwrap(), "salted");
        assert!(hash_password("short").is_err());
    }

    #[test]
    fn roles_include_the_lesser_ones() {
        assert!(Role::Admin.allows(Role::Operator) && Role::Operator.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::Operator) && !Role::Operator.allows(Role::Admin));
        assert_eq!("operator".parse::<Role>().unwrap(), Role::Operator);
        assert!("root".parse::<Role>().is_err());
        for bad in ["", "a b", "<script>", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        check_name("ops.team-1@example").unwrap();
    }
}
