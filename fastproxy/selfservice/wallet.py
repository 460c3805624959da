"""Sign-In with Ethereum (EIP-4361): parse the message, check it against this server, recover the signer.

The message is parsed here (its grammar is a fixed sequence of lines) and the signature is
recovered from the exact text the wallet signed with eth-account (EIP-191 personal_sign). Checks:
domain and URI match the configured origin, the chain id is allowed, Issued At is not in the
future, Expiration Time not passed, Not Before reached, and the signer is the address named in the
message. The nonce is checked by the caller, last (taking it is the step that can't be undone).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection
from datetime import datetime
from urllib.parse import urlsplit

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils.address import is_checksum_address

from fastproxy.selfservice.errors import SignInFailed

# Clocks of wallets and servers differ a little.
SKEW_S = 60
MAX_MESSAGE = 4096

_HEADER = re.compile(
    r"^(?:(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*)://)?(?P<domain>[^\s/?#]+)"
    r" wants you to sign in with your Ethereum account:$"
)
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_NONCE = re.compile(r"^[A-Za-z0-9]{8,}$")
_FIELDS = ("URI", "Version", "Chain ID", "Nonce", "Issued At")
_OPTIONAL = ("Expiration Time", "Not Before", "Request ID")


class SiweMessage:
    __slots__ = ("address", "chain_id", "domain", "expiration", "issued_at", "nonce", "not_before", "scheme", "uri")

    def __init__(self, text: str) -> None:
        """Parse; SignInFailed (401) naming what is wrong."""
        lines = text.split("\n")
        header = _HEADER.match(lines[0]) if lines else None
        if header is None or len(lines) < 8 or lines[2] != "":
            raise _bad("it does not start like an EIP-4361 message")
        self.scheme = header["scheme"]
        self.domain = header["domain"]
        self.address = lines[1]
        if not _ADDRESS.match(self.address) or not is_checksum_address(self.address):
            raise _bad("the address is not an EIP-55 checksummed Ethereum address")
        at = 4 if lines[3] == "" else 5  # an optional statement line, then a blank line
        if at == 5 and lines[4] != "":
            raise _bad("the statement must be one line")
        fields: dict[str, str] = {}
        for name in _FIELDS:
            if at >= len(lines) or not lines[at].startswith(name + ": "):
                raise _bad(f"'{name}' is missing or out of order")
            fields[name] = lines[at][len(name) + 2 :]
            at += 1
        for name in _OPTIONAL:
            if at < len(lines) and lines[at].startswith(name + ": "):
                fields[name] = lines[at][len(name) + 2 :]
                at += 1
        if at < len(lines) and lines[at] == "Resources:":
            at += 1
            while at < len(lines) and lines[at].startswith("- "):
                at += 1
        if at != len(lines):
            raise _bad("it has unexpected lines")
        if fields["Version"] != "1":
            raise _bad("only version 1 is supported")
        if not fields["Chain ID"].isdigit():
            raise _bad("the chain id is not a number")
        if not _NONCE.match(fields["Nonce"]):
            raise _bad("the nonce must be at least 8 letters or digits")
        self.uri = fields["URI"]
        self.chain_id = int(fields["Chain ID"])
        self.nonce = fields["Nonce"]
        self.issued_at = _time(fields["Issued At"], "Issued At")
        self.expiration = _time(fields["Expiration Time"], "Expiration Time") if "Expiration Time" in fields else None
        self.not_before = _time(fields["Not Before"], "Not Before") if "Not Before" in fields else None


def _bad(why: str) -> SignInFailed:
    return SignInFailed(f"Invalid sign-in message: {why}.", code="invalid_siwe_message")


def _time(value: str, name: str) -> float:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _bad(f"'{name}' is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise _bad(f"'{name}' needs a time zone")
    return parsed.timestamp()


class WalletVerifier:
    def __init__(self, origin: str, chain_ids: Collection[int], clock: Callable[[], float] = time.time) -> None:
        parts = urlsplit(origin)
        self.origin = origin.rstrip("/")
        self.scheme = parts.scheme
        self.domain = parts.netloc
        self.chain_ids = frozenset(chain_ids)
        self._clock = clock

    def verify(self, text: str, signature: str) -> SiweMessage:
        """The parsed message when it is for this server, current, and signed by its address; else SignInFailed."""
        if len(text) > MAX_MESSAGE:
            raise _bad("it is too long")
        message = SiweMessage(text)
        if message.domain != self.domain or (message.scheme is not None and message.scheme != self.scheme):
            raise SignInFailed(
                f"The sign-in message is for another site ({message.domain!r}); this server is {self.domain!r}.",
                code="siwe_domain_mismatch",
            )
        if message.uri != self.origin and not message.uri.startswith(self.origin + "/"):
            raise SignInFailed(f"The sign-in message's URI is not under {self.origin}.", code="siwe_domain_mismatch")
        if message.chain_id not in self.chain_ids:
            raise SignInFailed(f"Chain id {message.chain_id} is not accepted here.", code="siwe_chain_not_allowed")
        now = self._clock()
        if message.issued_at > now + SKEW_S:
            raise SignInFailed("The sign-in message is issued in the future.", code="siwe_not_yet_valid")
        if message.not_before is not None and message.not_before > now + SKEW_S:
            raise SignInFailed("The sign-in message is not valid yet.", code="siwe_not_yet_valid")
        if message.expiration is not None and message.expiration <= now:
            raise SignInFailed("The sign-in message has expired.", code="siwe_expired")
        try:
            signer = Account.recover_message(encode_defunct(text=text), signature=signature)
        except Exception:  # eth-account raises several kinds for a malformed signature
            raise SignInFailed("The signature is malformed.", code="invalid_signature") from None
        if signer != message.address:
            raise SignInFailed("The signature was not made by the message's address.", code="invalid_signature")
        return message
