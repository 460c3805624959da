"""End-user accounts under /api: sign-up and login with JWT sessions, Sign-In with Ethereum, self-service keys.

errors     the 401/403/404 this API answers with (OpenAI-shaped, like every other error)
passwords  argon2id hashing and the sign-up password policy
tokens     access tokens (HS256 JWTs with a `kid`, rotating secrets) and opaque refresh tokens
wallet     EIP-4361 messages: parsed here, the signature recovered with eth-account
nonces     single-use sign-in nonces, in Redis or the database
web        CORS and the security headers of /api and /admin
service    the bundle lifespan builds and State holds
api        the /api handlers (a side API: the proxied /v1 path never runs any of this)
"""
