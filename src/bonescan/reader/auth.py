"""Reader credentials and session tokens: only salted hashes are ever stored.

Passwords use scrypt from the standard library (memory-hard, so a stolen study database does not give the
passwords away cheaply). Session ids are long random strings, so a plain SHA-256 of them is enough at rest.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

# scrypt cost: 16 MiB and ~50 ms per check on a laptop core; enough for a handful of readers signing in.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1


def new_password() -> str:
    """A random reader password that is easy to type: 4 groups of 4 lowercase letters and digits."""
    alphabet = "abcdefghjkmnpqrstuvwxyz23456789"  # no look-alikes (i, l, o, 0, 1)
    return "-".join("".join(secrets.choice(alphabet) for _ in range(4)) for _ in range(4))


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """Return 'scrypt$n$r$p$salt$hash' for storage."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """True when `password` matches the stored scrypt hash (constant-time comparison)."""
    try:
        scheme, n, r, p, salt_hex, digest_hex = stored.split("$")
        if scheme != "scrypt":
            return False
        digest = hashlib.scrypt(
            password.encode("utf-8"), salt=bytes.fromhex(salt_hex), n=int(n), r=int(r), p=int(p), dklen=32
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest.hex(), digest_hex)


# Checked against when the reader name is unknown, so both failures cost the same time and look the same.
_UNKNOWN_READER_HASH = hash_password(secrets.token_urlsafe(16))


def check_credentials(password: str, stored: str | None) -> bool:
    """Verify a password against a reader's stored hash, or against a decoy when the reader does not exist."""
    if stored is None:
        verify_password(password, _UNKNOWN_READER_HASH)
        return False
    return verify_password(password, stored)


def new_session_token() -> str:
    """A random session id for the browser cookie."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """SHA-256 of a session id, as kept in the database."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
