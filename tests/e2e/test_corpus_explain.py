"""Real third-party ID tokens (shared/corpus: other_oidc, gcp_identity, gitlab_ci_oidc) through
`ephemera explain` with their issuers' recorded JWKS pinned: accepted at their `verify_at`,
refused today (`token_expired`), refused for another audience (`audience_mismatch`).

The corpus is found through EPHEMERA_CORPUS, else <repo>/../shared/corpus. When it is missing the
tests are skipped, except with CI=true, where they fail."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from harness import REPO, ci_strict, run_cli, to_toml

FOLDERS = ("other_oidc", "gcp_identity", "gitlab_ci_oidc")


def corpus_dir() -> Path:
    return Path(os.environ.get("EPHEMERA_CORPUS") or (REPO.parent / "shared" / "corpus"))


def load_tokens() -> list:
    manifest = corpus_dir() / "MANIFEST.json"
    if not manifest.is_file():
        return [pytest.param(None, id="corpus-missing")]
    entries = json.loads(manifest.read_text())
    out = []
    for e in entries:
        f = e["file"]
        if f.split("/")[0] in FOLDERS and "/tokens/" in f:
            out.append(pytest.param(e, id=Path(f).stem))
    assert out, f"no tokens of {FOLDERS} in {manifest}"
    return out


TOKENS = load_tokens()


def require_corpus(entry):
    if entry is None:
        msg = f"corpus not found at {corpus_dir()} (set EPHEMERA_CORPUS)"
        if ci_strict():
            pytest.fail(msg)
        pytest.skip(msg)


def jwks_path(entry) -> Path:
    # "keys" is "<path> (note...)" or "<path>"
    rel = entry["keys"].split(" ")[0]
    p = corpus_dir() / rel
    assert p.is_file(), p
    return p


def write_config(tmp_path: Path, entry, audience: str | None = None) -> Path:
    iss = entry["iss"]
    aud = entry["aud"][0] if isinstance(entry["aud"], list) else entry["aud"]
    u = urlsplit(iss)
    prov = {
        "name": "corpus",
        "profile": "oidc",
        "issuer": iss,
        "audiences": [audience or aud],
        "jwks_file": str(jwks_path(entry)),
        "max_token_lifetime": "48h",
        "max_token_age": "48h",
    }
    if u.scheme == "http" and u.hostname not in ("127.0.0.1", "localhost", "::1"):
        prov["allow_insecure_issuer"] = True
    if isinstance(entry["aud"], list) and len(entry["aud"]) > 1:
        # a token also meant for other parties needs the explicit opt-in (ATTACKS.md case 17)
        prov["allow_multiple_audiences"] = True
    cfg = {
        "server": {"listen": "127.0.0.1:1", "issuer": "http://127.0.0.1:1"},
        "state": {"backend": "memory"},
        "audit": {"path": str(tmp_path / "audit.jsonl")},
        "providers": [prov],
        "roles": [{
            "name": "corpus-role",
            "provider": "corpus",
            "max_ttl": "15m",
            "conditions": {"sub": entry["sub"]},
            "credential": {"kind": "jwt", "audience": "https://partner.example"},
        }],
    }
    path = tmp_path / f"corpus-{audience is not None}.toml"
    path.write_text(to_toml(cfg))
    return path


def explain(ephemera_bin, config: Path, entry, at: int | None):
    args = ["explain", "--config", str(config), "--role", "corpus-role",
            "--token-file", str(corpus_dir() / entry["file"]), "--json"]
    if at is not None:
        args += ["--at", str(at)]
    res = run_cli(ephemera_bin, args)
    assert res.returncode in (0, 3), res
    return res.returncode, json.loads(res.stdout)


@pytest.mark.parametrize("entry", TOKENS)
def test_accepted_at_verify_at(ephemera_bin, tmp_path, entry):
    require_corpus(entry)
    code, doc = explain(ephemera_bin, write_config(tmp_path, entry), entry, entry["verify_at"])
    assert code == 0, doc
    assert doc["decision"] == "allow"
    tok = doc["trace"]["token"]
    assert tok["issuer"] == entry["iss"] and tok["subject"] == entry["sub"]
    assert tok["expires_at"] == entry["exp"]
    assert tok["kid"] == entry["kid"]
    assert doc["trace"]["lifetime"] == min(900, entry["exp"] - entry["verify_at"])


@pytest.mark.parametrize("entry", TOKENS)
def test_refused_today_as_expired(ephemera_bin, tmp_path, entry):
    require_corpus(entry)
    code, doc = explain(ephemera_bin, write_config(tmp_path, entry), entry, None)
    assert code == 3, doc
    assert doc["reason"] == "token_expired", doc


@pytest.mark.parametrize("entry", TOKENS)
def test_refused_for_another_audience(ephemera_bin, tmp_path, entry):
    require_corpus(entry)
    cfg = write_config(tmp_path, entry, audience="https://not-this-audience.example")
    code, doc = explain(ephemera_bin, cfg, entry, entry["verify_at"])
    assert code == 3, doc
    assert doc["reason"] == "audience_mismatch", doc


@pytest.mark.parametrize("entry", TOKENS)
def test_refused_against_another_issuers_keys(ephemera_bin, tmp_path, entry):
    """The same token with its issuer's JWKS swapped for another issuer's: never accepted."""
    require_corpus(entry)
    others = [p for p in (corpus_dir() / "gcp_identity" / "jwks").glob("*.json")] + \
        [p for p in (corpus_dir() / "other_oidc" / "jwks").glob("*.json")]
    other = next(p for p in others if p.resolve() != jwks_path(entry).resolve())
    cfg_path = write_config(tmp_path, entry)
    cfg_path.write_text(cfg_path.read_text().replace(str(jwks_path(entry)), str(other)))
    code, doc = explain(ephemera_bin, cfg_path, entry, entry["verify_at"])
    assert code == 3, doc
    assert doc["reason"] in ("unknown_key", "signature_invalid", "key_alg_mismatch"), doc
