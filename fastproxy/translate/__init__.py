"""Translation between the OpenAI and Anthropic wire formats. Pure: bytes and msgspec Structs in and out,
no I/O; the request path (fastproxy/proxy) decides when to call it."""
