-- tether schema v11: API tokens of `tether server` (Authorization: Bearer ...).
--
-- Only a hash of each token is kept (sha256 of a 256-bit random secret: nothing to brute
-- force, so no slow hash is needed); the secret is shown once, when it is created. A revoked
-- token keeps its row (who had access, and until when); its name can be given to a new token.
CREATE TABLE IF NOT EXISTS api_tokens (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    scope TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION
);

