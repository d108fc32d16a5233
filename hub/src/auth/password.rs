//! Passwords: argon2 hashes in PHC string format, never plain text.

use std::fmt;
use std::io::{self, BufRead, IsTerminal as _};

use argon2::password_hash::{Output, PasswordHasher as _, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use serde::Deserialize;

/// Memory cost in KiB of new hashes: OWASP's recommended argon2id setting
/// (m=19456 KiB, t=2, p=1), which is also argon2's default.
pub const M_COST_KIB: u32 = Params::DEFAULT_M_COST;
/// Iterations of new hashes.
pub const T_COST: u32 = Params::DEFAULT_T_COST;
/// Parallelism of new hashes.
pub const P_COST: u32 = Params::DEFAULT_P_COST;

/// Verified in place of a real hash when the username is unknown, so that a login
/// attempt for a user that does not exist costs as much time as one for a user that
/// does. Its parameters are those of [`hash_password`] (checked by a test); which password
/// it hashes does not matter, as its result is ignored.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$ZWRnZWh1Yi1kdW1teS1zYWx0$YrTYtbWRuo0P6wwrQwrSb1ukSH/Hg0AZNaHP/yqfMwA";

/// An argon2 password hash in PHC string format (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`),
/// validated when the config is read.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PasswordHash(String);

/// Why a configured `password_hash` is refused. The messages never repeat the value: it
/// may be a plain-text password typed into the wrong place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPasswordHash {
    /// Not a PHC string at all (most likely a plain-text password).
    #[error(
        "this is not an argon2 hash in PHC format ($argon2id$v=19$m=…,t=…,p=…$SALT$HASH); \
         passwords are never written in plain text: run `edgehub hash-password`, type the \
         password, and paste the line it prints"
    )]
    NotPhc,
    /// A PHC string of another algorithm (bcrypt, scrypt, pbkdf2, …).
    #[error(
        "this hash uses {0:?}; only argon2 hashes (argon2id recommended) are accepted: \
         run `edgehub hash-password` to make one"
    )]
    NotArgon2(String),
    /// Argon2 parameters or salt out of range.
    #[error("this argon2 hash has unusable parameters ({0}); run `edgehub hash-password` to make a new one")]
    BadParams(String),
}

impl PasswordHash {
    /// Validates a PHC string as an argon2 hash argon2 can verify against.
    pub fn new(phc: impl Into<String>) -> Result<PasswordHash, InvalidPasswordHash> {
        let phc = phc.into();
        let parsed = parse(&phc)?;
        Params::try_from(&parsed).map_err(|e| InvalidPasswordHash::BadParams(e.to_string()))?;
        if parsed.hash.is_none() || parsed.salt.is_none() {
            return Err(InvalidPasswordHash::NotPhc);
        }
        Ok(PasswordHash(phc))
    }

    /// The PHC string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `password` is the one this hash was made from. CPU-heavy (argon2 with the
    /// hash's own parameters), working in `memory`: see
    /// [`super::Authenticator::verify_password`].
    pub(crate) fn verify(&self, password: &[u8], memory: &mut Argon2Memory) -> bool {
        verify_phc(&self.0, password, memory)
    }
}

/// The memory one argon2 check works in (m_cost KiB: 19 MiB with `edgehub hash-password`'s
/// hashes), kept from one check to the next.
///
/// argon2's own `verify_password` allocates and frees it on every check; glibc then keeps
/// the freed block in the arena of whichever thread ran the check, so a burst of logins
/// on the blocking pool's many threads left hundreds of MiB behind. A fixed set of these,
/// one per check that may run at once, bounds that memory instead.
#[derive(Default)]
pub struct Argon2Memory(Vec<Block>);

impl Argon2Memory {
    /// No memory yet: it grows to what the first hash checked needs.
    pub fn new() -> Argon2Memory {
        Argon2Memory::default()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.0.len() * Block::SIZE
    }

    /// At least `blocks` blocks, kept for the next check.
    fn blocks(&mut self, blocks: usize) -> &mut [Block] {
        if self.0.len() < blocks {
            self.0.resize(blocks, Block::default());
        }
        &mut self.0[..blocks]
    }
}

fn parse(phc: &str) -> Result<argon2::PasswordHash<'_>, InvalidPasswordHash> {
    let parsed = argon2::PasswordHash::new(phc).map_err(|_| InvalidPasswordHash::NotPhc)?;
    Algorithm::try_from(parsed.algorithm)
        .map_err(|_| InvalidPasswordHash::NotArgon2(parsed.algorithm.as_str().to_owned()))?;
    Ok(parsed)
}

/// What argon2's `verify_password` does, in caller-provided memory: algorithm, version
/// and parameters come from the hash itself, and the outputs are compared in constant time.
fn verify_phc(phc: &str, password: &[u8], memory: &mut Argon2Memory) -> bool {
    let Ok(parsed) = argon2::PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let Ok(version) = parsed
        .version
        .map_or(Ok(Version::default()), Version::try_from)
    else {
        return false;
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let mut salt_bytes = [0u8; Salt::MAX_LENGTH];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let blocks = params.block_count();
    let mut out = [0u8; Output::MAX_LENGTH];
    let out = &mut out[..expected.len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt, out, memory.blocks(blocks))
        .is_ok()
        && Output::new(out).is_ok_and(|computed| computed == expected)
}

/// Burns the time of one verification for a user that does not exist.
pub(crate) fn verify_dummy(password: &[u8], memory: &mut Argon2Memory) {
    let _ = verify_phc(DUMMY_HASH, password, memory);
}

impl TryFrom<String> for PasswordHash {
    type Error = InvalidPasswordHash;

    fn try_from(phc: String) -> Result<Self, Self::Error> {
        PasswordHash::new(phc)
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The hash is offline-crackable: keep it out of debug logs.
        let head = self.0.rsplitn(3, '$').nth(2).unwrap_or("?");
        write!(f, "PasswordHash({head}$…)")
    }
}

/// Why [`hash_password`] failed.
#[derive(Debug, thiserror::Error)]
pub enum HashPasswordError {
    /// An empty password would let anyone in who knows the user name.
    #[error("the password is empty")]
    Empty,
    /// The two entries at the terminal differ.
    #[error("the passwords do not match")]
    Mismatch,
    /// Standard input could not be read.
    #[error("cannot read the password from standard input: {0}")]
    Read(#[from] io::Error),
    /// argon2 refused (not expected with fixed parameters).
    #[error("argon2 failed: {0}")]
    Argon2(String),
}

/// Hashes `password` with argon2id, OWASP's parameters and a random 16-byte salt, as a
/// PHC string for `password_hash` in the config.
pub fn hash_password(password: &[u8]) -> Result<String, HashPasswordError> {
    if password.is_empty() {
        return Err(HashPasswordError::Empty);
    }
    let argon2_error = |e: argon2::password_hash::Error| HashPasswordError::Argon2(e.to_string());
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None)
        .map_err(|e| HashPasswordError::Argon2(e.to_string()))?;
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(argon2_error)?;
    let hash = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password, &salt)
        .map_err(argon2_error)?;
    Ok(hash.to_string())
}

/// Reads a new password for `edgehub hash-password`: at a terminal, twice and without
/// echo (prompts on stderr, so stdout carries only the hash); otherwise the first line
/// of standard input, without its line ending, so `printf '%s\n' "$PW" | edgehub
/// hash-password` works in scripts.
pub fn read_new_password() -> Result<String, HashPasswordError> {
    let stdin = io::stdin();
    if stdin.is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        let second = rpassword::prompt_password("Repeat password: ")?;
        if first != second {
            return Err(HashPasswordError::Mismatch);
        }
        return non_empty(first);
    }
    read_password_line(stdin.lock())
}

/// The first line of `input` without its `\n` or `\r\n`.
fn read_password_line(mut input: impl BufRead) -> Result<String, HashPasswordError> {
    let mut line = String::new();
    input.read_line(&mut line)?;
    let password = line
        .strip_suffix('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or(&line);
    non_empty(password.to_owned())
}

fn non_empty(password: String) -> Result<String, HashPasswordError> {
    if password.is_empty() {
        return Err(HashPasswordError::Empty);
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_hash_verifies_its_password_only() {
        let phc = hash_password(b"correct horse").expect("hash");
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        let hash = PasswordHash::new(phc.clone()).expect("valid PHC");
        let mut memory = Argon2Memory::new();
        assert!(hash.verify(b"correct horse", &mut memory));
        assert!(!hash.verify(b"correct horse ", &mut memory));
        assert!(!hash.verify(b"", &mut memory));
        assert_eq!(
            memory.bytes(),
            M_COST_KIB as usize * 1024,
            "one block, reused"
        );
        // Salts are random.
        assert_ne!(phc, hash_password(b"correct horse").expect("hash"));
    }

    #[test]
    fn hashes_of_other_variants_and_parameters_verify_in_reused_memory() {
        let salt = SaltString::encode_b64(b"sixteen byte slt").expect("salt");
        let phc = |algorithm, version, params| {
            Argon2::new(algorithm, version, params)
                .hash_password(b"pw", &salt)
                .expect("hash")
                .to_string()
        };
        let params = |m, t, p, len| Params::new(m, t, p, Some(len)).expect("params");
        let mut memory = Argon2Memory::new();
        for phc in [
            hash_password(b"pw").expect("hash"),
            phc(Algorithm::Argon2id, Version::V0x13, params(8192, 1, 2, 16)),
            phc(Algorithm::Argon2i, Version::V0x10, params(4096, 3, 1, 64)),
            phc(Algorithm::Argon2d, Version::V0x13, params(1024, 2, 4, 32)),
        ] {
            let hash = PasswordHash::new(phc.clone()).expect("valid PHC");
            assert!(hash.verify(b"pw", &mut memory), "{phc}");
            assert!(!hash.verify(b"pW", &mut memory), "{phc}");
        }
        assert_eq!(
            memory.bytes(),
            M_COST_KIB as usize * 1024,
            "the largest m_cost checked, kept"
        );
    }

    #[test]
    fn the_dummy_hash_costs_what_a_real_one_does() {
        let dummy = argon2::PasswordHash::new(DUMMY_HASH).expect("dummy parses");
        let real_phc = hash_password(b"x").expect("hash");
        let real = argon2::PasswordHash::new(&real_phc).expect("parses");
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.version, real.version);
        assert_eq!(dummy.params, real.params);
        assert_eq!(dummy.hash.map(|h| h.len()), real.hash.map(|h| h.len()));
    }

    #[test]
    fn plain_text_and_foreign_hashes_are_refused_without_echoing_them() {
        let error = PasswordHash::new("hunter2").expect_err("plain text");
        assert_eq!(error, InvalidPasswordHash::NotPhc);
        let message = error.to_string();
        assert!(!message.contains("hunter2"), "{message}");
        assert!(message.contains("edgehub hash-password"), "{message}");
        assert!(matches!(
            PasswordHash::new("$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW"),
            Err(InvalidPasswordHash::NotPhc)
        ));
        assert_eq!(
            PasswordHash::new("$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E"),
            Err(InvalidPasswordHash::NotArgon2("scrypt".into()))
        );
        assert!(matches!(
            PasswordHash::new("$argon2id$v=19$m=1,t=2,p=1$ZWRnZWh1Yi1kdW1teS1zYWx0$YrTYtbWRuo0P6wwrQwrSb1ukSH/Hg0AZNaHP/yqfMwA"),
            Err(InvalidPasswordHash::BadParams(_))
        ));
        assert!(matches!(
            PasswordHash::new("$argon2id$v=19$m=19456,t=2,p=1"),
            Err(InvalidPasswordHash::NotPhc)
        ));
    }

    #[test]
    fn debug_output_hides_salt_and_hash() {
        let hash = PasswordHash::new(DUMMY_HASH).expect("valid");
        let debug = format!("{hash:?}");
        assert_eq!(debug, "PasswordHash($argon2id$v=19$m=19456,t=2,p=1$…)");
    }

    #[test]
    fn a_piped_password_is_the_first_line_without_its_ending() {
        let read = |input: &str| read_password_line(input.as_bytes()).map_err(|e| e.to_string());
        assert_eq!(read("secret\n").as_deref(), Ok("secret"));
        assert_eq!(read("secret\r\nmore\n").as_deref(), Ok("secret"));
        assert_eq!(read("no newline").as_deref(), Ok("no newline"));
        assert_eq!(read(" spaces kept \n").as_deref(), Ok(" spaces kept "));
        assert!(read("\n").is_err());
        assert!(read("").is_err());
    }

    #[test]
    fn an_empty_password_is_not_hashed() {
        assert!(matches!(hash_password(b""), Err(HashPasswordError::Empty)));
    }
}
