"""Encryption of session data at rest: AES-256-GCM under a list of keys (``encryption_key``).

Rules of this module: no I/O beyond the operating system's random numbers. The ``cryptography``
package (extra ``sessionmw[crypto]``) is imported when a :class:`RecordCipher` is built, so a site
without ``encryption_key`` never loads it.

The keys: each configured key (a string or bytes of any length) becomes a 256-bit AES key by
HKDF-SHA256 with a fixed ``info``, so a key given for sessionmw is never used as-is. The first key
encrypts; every key decrypts, the first first, so a site rotates keys as it rotates ``secret_key``:
put the new key first, keep the old one after it until every session was written again (or ended).
HKDF does not stretch a weak key: give random keys of 32 bytes or more (``secrets.token_urlsafe(32)``).

The nonces: AES-GCM with a random 96-bit nonce is good for about 2**32 encryptions under one key
(NIST SP 800-38D), which a busy site writes in weeks. So each record gets a random 192-bit nonce
whose first half, with the key, derives the record's own AES key (keyed BLAKE2b, a PRF), and whose
second half is the GCM nonce: the construction of XAES-256-GCM, with no practical limit on the
number of records one key encrypts. It costs about a microsecond per read and per write.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

from .errors import ConfigError

__all__ = ["NONCE_SIZE", "OVERHEAD", "RecordCipher"]

#: Bytes of random nonce stored before each ciphertext: 12 derive the record's key, 12 are GCM's.
NONCE_SIZE = 24
#: Bytes an encrypted payload adds to its plaintext: the nonce and GCM's 16-byte tag.
OVERHEAD = NONCE_SIZE + 16

_HKDF_INFO = b"sessionmw.encryption_key.aes-256-gcm.v1"
_SUBKEY_LABEL = b"sessionmw.record-key.v1\x00"


class RecordCipher:
    """AES-256-GCM over session data, the first key encrypting and every key decrypting.

    :param keys: the configured keys (``Settings.encryption_key``), at least one.
    """

    __slots__ = ("_keys", "_aead", "_invalid")

    def __init__(self, keys: tuple[bytes, ...]) -> None:
        if not keys:
            raise ValueError("RecordCipher needs at least one key")
        try:
            from cryptography.exceptions import InvalidTag
            from cryptography.hazmat.primitives import hashes
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
            from cryptography.hazmat.primitives.kdf.hkdf import HKDF
        except ImportError:  # pragma: no cover - the settings check this at start-up
            raise ConfigError(
                "encryption_key needs the cryptography package: pip install 'sessionmw[crypto]'",
                option="encryption_key",
            ) from None
        derived = []
        for key in keys:
            hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO)
            derived.append(hkdf.derive(key))
        self._keys: tuple[bytes, ...] = tuple(derived)
        self._aead: Callable[[bytes], Any] = AESGCM
        self._invalid: type[Exception] = InvalidTag

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        """Return the nonce and the ciphertext of ``plaintext`` (with its tag), bound to ``aad``."""
        nonce = os.urandom(NONCE_SIZE)
        aead = self._aead(self._record_key(self._keys[0], nonce))
        ciphertext: bytes = aead.encrypt(nonce[12:], plaintext, aad)
        return nonce + ciphertext

    def decrypt(self, blob: bytes, aad: bytes) -> bytes | None:
        """Return the plaintext of a blob made by :meth:`encrypt` with any key, or ``None``.

        ``None`` when no key opens it: the data was made under a key no longer configured, altered,
        or written for another ``aad`` (another session's handle, other metadata).
        """
        if len(blob) < OVERHEAD:
            return None
        nonce, ciphertext = blob[:NONCE_SIZE], blob[NONCE_SIZE:]
        for key in self._keys:
            aead = self._aead(self._record_key(key, nonce))
            try:
                plaintext: bytes = aead.decrypt(nonce[12:], ciphertext, aad)
            except self._invalid:  # not this key, or not this record
                continue
            return plaintext
        return None

    @staticmethod
    def _record_key(key: bytes, nonce: bytes) -> bytes:
        return hashlib.blake2b(_SUBKEY_LABEL + nonce[:12], key=key, digest_size=32).digest()
