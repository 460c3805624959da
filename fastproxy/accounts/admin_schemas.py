"""Request bodies of the admin API. Unknown fields are refused so a typo never passes silently;
PATCH bodies tell "absent" (UNSET, leave as is) from null (clear) apart."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import UNSET, UnsetType

from fastproxy.core.schemas import KeyCache, Limits
from fastproxy.store import ApiKey

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Email = Annotated[str, msgspec.Meta(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")]
Model = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
UnixTime = Annotated[int, msgspec.Meta(ge=0, le=32503680000)]
# The id of a provider key (`id` in a provider's api_keys): requests are served with that key only.
UpstreamKey = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]


class UserCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    email: Email | None = None
    limits: Limits | None = None
    upstream_key: UpstreamKey | None = None


class UserPatch(msgspec.Struct, forbid_unknown_fields=True):
    name: Name | UnsetType = UNSET
    email: Email | UnsetType | None = UNSET
    limits: Limits | UnsetType | None = UNSET
    upstream_key: UpstreamKey | UnsetType | None = UNSET
    # false re-enables a user; its keys revoked by DELETE stay revoked.
    disabled: bool | UnsetType = UNSET


class KeyCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    user_id: Id | None = None
    allowed_models: list[Model] | None = None
    expires_at: UnixTime | None = None
    limits: Limits | None = None
    # The key's response-cache settings: {"enabled", "ttl", "scope", "generations"} (core.schemas.KeyCache).
    cache: KeyCache | None = None
    upstream_key: UpstreamKey | None = None


class KeyPatch(msgspec.Struct, forbid_unknown_fields=True):
    name: Name | UnsetType = UNSET
    allowed_models: list[Model] | UnsetType | None = UNSET
    expires_at: UnixTime | UnsetType | None = UNSET
    limits: Limits | UnsetType | None = UNSET
    cache: KeyCache | UnsetType | None = UNSET
    upstream_key: UpstreamKey | UnsetType | None = UNSET


class KeyCreated(ApiKey, kw_only=True):
    """The only response that ever carries the key itself."""

    key: str


user_create = msgspec.json.Decoder(UserCreate)
user_patch = msgspec.json.Decoder(UserPatch)
key_create = msgspec.json.Decoder(KeyCreate)
key_patch = msgspec.json.Decoder(KeyPatch)


def changes(patch: msgspec.Struct) -> dict[str, object]:
    """The fields a PATCH body set (null included), by name."""
    return {name: value for name in patch.__struct_fields__ if (value := getattr(patch, name)) is not UNSET}
