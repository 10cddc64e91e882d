"""Who is asking: JSON Web Tokens and their roles, the static token, minting.

`[auth]` names a key: `jwt_secret` (HS256) or `jwt_public_key` (a PEM file;
RS256, ES256 or EdDSA by the key's type), with optional `jwt_issuer` and
`jwt_audience`. A token carries `sub`, `exp` and `role`. PyJWT verifies it;
nothing here compares signatures by hand. `[server] token` keeps working
and means admin.

Roles, each with everything of the one before:
- viewer: the page, every GET endpoint, `/ws`;
- operator: start, stop, restart (and scale);
- admin: reload.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# PyJWT and cryptography are imported where they are used: about 15 MB of
# the supervisor's memory that a config without [auth] never needs.

ROLES = ("viewer", "operator", "admin")

#: The role a token needs for a request; None: public.
_OPERATOR_ACTIONS = ("start", "stop", "restart", "scale")


@dataclass(frozen=True)
class AuthConfig:
    """The `[auth]` table; empty (no JWT) by default."""

    jwt_secret: str | None = None
    jwt_public_key: Path | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None

    @property
    def enabled(self) -> bool:
        return self.jwt_secret is not None or self.jwt_public_key is not None


@dataclass(frozen=True)
class Identity:
    """A verified caller: `sub` ("static token" for [server] token), role, expiry (epoch s)."""

    sub: str
    role: str
    exp: float | None = None

    def may(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


class TokenError(Exception):
    """A token that does not verify; the message says why (never the token)."""


def required_role(method: str, path: str) -> str | None:
    """The role a request needs, or None when it is public.

    Public: the page and its files, /healthz, /api/info, /api/keys (the
    snapshots' public key), /openapi.json.
    """
    if path == "/ws" or path == "/metrics" or (path.startswith("/api/")
                                              and path not in ("/api/info", "/api/keys")):
        if method != "POST":
            return "viewer"
        if path.startswith("/api/components/") and path.rsplit("/", 1)[-1] in _OPERATOR_ACTIONS:
            return "operator"
        return "admin"
    return None


def algorithm_for(key: Any) -> str:
    """The JWS algorithm of a public key: RS256, ES256 or EdDSA."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return "ES256"
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey
                  | ed448.Ed448PublicKey | ed448.Ed448PrivateKey):
        return "EdDSA"
    raise ValueError(f"expected an RSA, EC (P-256) or Ed25519 key, got {type(key).__name__}")


def load_public_key(path: Path) -> Any:
    """The public key in a PEM file; ValueError says what is wrong."""
    from cryptography.hazmat.primitives import serialization

    data = path.read_bytes()
    try:
        return serialization.load_pem_public_key(data)
    except ValueError:
        pass
    try:
        return serialization.load_pem_private_key(data, password=None).public_key()
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path} holds no PEM public key: {exc}") from None


class Verifier:
    """Verifies JWTs against the configured key."""

    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        if config.jwt_public_key is not None:
            self.key: Any = load_public_key(config.jwt_public_key)
            self.algorithm = algorithm_for(self.key)
        else:
            self.key = config.jwt_secret
            self.algorithm = "HS256"

    def verify(self, token: str) -> Identity:
        """The identity in `token`; TokenError with the reason when it does not verify."""
        import jwt

        try:
            claims = jwt.decode(
                token, self.key, algorithms=[self.algorithm], issuer=self.config.jwt_issuer,
                audience=self.config.jwt_audience,
                options={"require": ["exp", "sub", "role"],
                         "verify_aud": self.config.jwt_audience is not None})
        except jwt.ExpiredSignatureError:
            raise TokenError("token expired") from None
        except jwt.InvalidSignatureError:
            raise TokenError("token signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError(f"token has no {exc.claim!r} claim") from None
        except jwt.InvalidIssuerError:
            raise TokenError("token issuer is not the configured jwt_issuer") from None
        except jwt.InvalidAudienceError:
            raise TokenError("token audience is not the configured jwt_audience") from None
        except jwt.InvalidAlgorithmError:
            raise TokenError(f"token is not signed with {self.algorithm}") from None
        except jwt.DecodeError:
            raise TokenError("malformed token") from None
        except jwt.InvalidTokenError as exc:
            raise TokenError(f"invalid token: {exc}") from None
        role = claims.get("role")
        if role not in ROLES:
            raise TokenError(f"token role {role!r} is not one of {', '.join(ROLES)}")
        return Identity(sub=str(claims["sub"]), role=role, exp=float(claims["exp"]))


_TTL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_ttl(text: str) -> float:
    """Seconds in "90", "90s", "30m", "1h" or "2d"; ValueError otherwise."""
    found = _TTL.match(text)
    if not found or float(found.group(1)) <= 0:
        raise ValueError(f"expected a duration such as 90s, 30m, 1h or 2d, got {text!r}")
    return float(found.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[
        found.group(2)]


def mint(config: AuthConfig, *, role: str, ttl: float, sub: str,
         private_key: Path | None = None, now: float | None = None) -> str:
    """A signed token for `role`, valid `ttl` seconds.

    With jwt_secret it is signed with the secret; with jwt_public_key the
    matching private key (a PEM file) must be given.
    """
    import jwt
    from cryptography.hazmat.primitives import serialization

    if role not in ROLES:
        raise ValueError(f"expected a role among {', '.join(ROLES)}, got {role!r}")
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {"sub": sub, "role": role, "iat": int(issued),
                              "exp": int(issued + ttl)}
    if config.jwt_issuer:
        claims["iss"] = config.jwt_issuer
    if config.jwt_audience:
        claims["aud"] = config.jwt_audience
    if config.jwt_secret is not None:
        return jwt.encode(claims, config.jwt_secret, algorithm="HS256")
    if private_key is None:
        raise ValueError("[auth] jwt_public_key is set: give the matching private key "
                         "(--key FILE) to sign with")
    key = serialization.load_pem_private_key(private_key.read_bytes(), password=None)
    return jwt.encode(claims, key, algorithm=algorithm_for(key))  # type: ignore[arg-type]
