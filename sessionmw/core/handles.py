"""The name under which the store keeps a session: a one-way hash of its id (``Session.handle``).

Rules of this module: no I/O, no state. The raw session id lives only in the cookie and in
``Session.id``; the core gives every backend operation the id's *handle* instead, so a copy of the
store (a backup, a replica, a dump, ``MONITOR``, a directory listing) names no session that a cookie
could carry. The handle is a key, an index entry and an administration name (``SessionInfo.sid``,
``SessionStore.terminate``), never a credential.

Why an unkeyed SHA-256 with a fixed prefix (as Rails since CVE-2019-16782) and not an HMAC under a
site key: ids are 256 random bits, so a hash of one cannot be inverted or guessed by trying ids, and
a key would add no secrecy. Without a key, the handle of an id is the same in every process, for
every ``secret_key`` (rotating the signing keys keeps every session), and administration tools that
never see the site's secrets can still compute it.

A handle is ``h1.`` and 43 URL-safe base64 characters (46 in all): short enough for every backend's
keys (memcached leaves 64 characters to a session name), recognisable at a glance, and never equal
to a raw id, which is 43 URL-safe base64 characters with no ``.``.
"""

from __future__ import annotations

import binascii
import hashlib

__all__ = ["HANDLE_LENGTH", "HANDLE_PREFIX", "handle_of", "is_handle"]

#: What every handle starts with; the version lets a later scheme live beside this one.
HANDLE_PREFIX = "h1."
#: The length of a handle: the prefix and a SHA-256 digest in unpadded URL-safe base64.
HANDLE_LENGTH = len(HANDLE_PREFIX) + 43

# Domain separation: the handle is the hash of this label and the id, so no other hash of the id
# that sessionmw (or anything else) computes can be the handle. Short on purpose: with a 43-character
# id the input fits one SHA-256 block (55 bytes at most), half the work of two.
_DOMAIN = b"sessionmw:"
_PREFIX = HANDLE_PREFIX.encode("ascii")
_URLSAFE = bytes.maketrans(b"+/", b"-_")
_sha256 = hashlib.sha256
_b64 = binascii.b2a_base64


def handle_of(sid: str) -> str:
    """Return the stored name of session id ``sid``: ``h1.`` and its SHA-256 in URL-safe base64."""
    # Runs about once per request (the cookie's id, or a new one): b2a_base64 and a translate table
    # skip base64.urlsafe_b64encode's Python layers. Ids are ASCII (URL-safe base64).
    digest = _sha256(_DOMAIN + sid.encode()).digest()
    return (_PREFIX + _b64(digest, newline=False)[:43].translate(_URLSAFE)).decode()


def is_handle(name: str) -> bool:
    """Tell whether ``name`` has the form of a handle (and so is not a raw session id)."""
    return len(name) == HANDLE_LENGTH and name.startswith(HANDLE_PREFIX)
