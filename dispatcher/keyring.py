"""The secret key ring: ``DISPATCHER_SECRET_KEY`` may list several keys, newest first, separated by commas.

Rotating a secret must not break the links already sent (an unsubscribe link in
last month's email, a pay link in an SMS, a call menu in progress), so:

* the first key signs (and encrypts) everything new;
* every listed key is accepted when a token is checked, until it is removed.

Rotation is: prepend the new key (``new,old``), restart the processes, and drop
``old`` once the links signed under it may expire (see the README's operations
notes). A value without a comma is one key, used exactly as written, as before.
"""

from __future__ import annotations


def ring(secret: bytes) -> tuple[bytes, ...]:
    """The keys of ``secret``, newest first; empty for an empty secret.

    With a comma, each key is stripped of surrounding spaces and empty ones are
    dropped (``"new, old,"`` is two keys); without one, the value is one key as is.
    """
    if b"," not in secret:
        return (secret,) if secret else ()
    return tuple(key for key in (part.strip() for part in secret.split(b",")) if key)


def signing_key(secret: bytes) -> bytes:
    """The key that signs new tokens: the ring's first. Raises ``ValueError`` for an empty ring."""
    keys = ring(secret)
    if not keys:
        raise ValueError("the secret key ring is empty")
    return keys[0]
