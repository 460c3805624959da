from __future__ import annotations

from fastproxy.accounts import keys


def test_generated_keys_are_well_formed_and_distinct() -> None:
    generated = {keys.generate_key() for _ in range(200)}
    assert len(generated) == 200
    for key in generated:
        assert keys.well_formed(key), key
        assert len(key) == len("sk-fp-") + 43


def test_hash_prefix_and_hint() -> None:
    key = keys.generate_key()
    digest = keys.hash_key(key)
    assert len(digest) == 64 and key not in digest
    assert keys.display_prefix(key) == key[:10] and keys.hint(key) == key[-4:]
    assert keys.same_hash(digest, keys.hash_key(key))
    assert not keys.same_hash(digest, keys.hash_key(keys.generate_key()))


def test_malformed_keys_are_refused() -> None:
    good = keys.generate_key()
    for bad in ["", "sk-fp-", good[:-1], good + "x", good.replace("sk-fp-", "sk-xx-"), good[:-1] + "!"]:
        assert not keys.well_formed(bad), bad
