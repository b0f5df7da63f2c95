"""Task end from the platform (issue 15, part B): `POST /v1/events/github` and `POST /v1/events/gitlab`,
through the real binary.

GitHub: a repository or organization webhook on the "Workflow runs" event, signed with the webhook
secret (`X-Hub-Signature-256: sha256=HEX(HMAC-SHA256(secret, raw body))`, "Validating webhook
deliveries"). A `workflow_run` delivery with `action: completed` ends the task
`REPOSITORY_ID/RUN_ID/RUN_ATTEMPT` of the github-actions provider whose secret signed it: an ID token
of that run attempt is refused after it, a broker JWT of that task introspects inactive. Redeliveries
(same `X-GitHub-Delivery`) are duplicates; a second delivery for an ended task is `already`.

GitLab: a project webhook on "Job events" (`X-Gitlab-Event: Job Hook`, `object_kind: build`); a job
in a final state ends `PROJECT_ID/PIPELINE_ID/JOB_ID` of the gitlab provider. Authenticity by the
secret token (`X-Gitlab-Token`) or the signing token (Standard Webhooks: `webhook-id`,
`webhook-timestamp`, `webhook-signature: v1,BASE64`).

Every payload here is shaped like the platforms' documented examples (GitHub "Webhook events and
payloads" -> workflow_run, ping, workflow_job; GitLab "Webhook events" -> Job events), with every
top-level key they show, and signed by the test over the exact bytes it sends.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import os
import signal
import types
import uuid

import pytest
import requests

from crash_util import Served
from harness import (
    AUDIENCE,
    GH_REPOSITORY_ID,
    HTTP_TIMEOUT,
    PARTNER,
    broker_config,
    check_error_hygiene,
    cloud_role,
    github_claims,
    github_provider,
    now,
    run_cli,
    to_toml,
    verify_broker_jwt,
    wait_until,
    wait_until_presentable,
    with_overrides,
)

ADMIN_TOKEN = "admin-" + "e" * 40
JWT_CREDENTIAL = {"kind": "jwt", "audience": PARTNER}
REPO_ID = int(GH_REPOSITORY_ID)  # webhook payloads carry ids as JSON numbers, ID tokens as strings
OWNER = "acme"
REPO = "app"

# GitHub's own test vector ("Validating webhook deliveries" -> Testing the webhook payload validation)
DOC_SECRET = "It's a Secret to Everybody"
DOC_PAYLOAD = b"Hello, World!"
DOC_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"

# How the broker refuses an exchange of a revoked task: the refusal an admin revocation makes
# (test_admin.py: 400 `invalid_target`, reason `policy_denied`, "revoked (KEY)").
REVOKED = (400, "invalid_target", "policy_denied")

GITLAB_PROJECT_ID = 4242
GITLAB_STATES_FINAL = ["success", "failed", "canceled", "skipped"]
GITLAB_STATES_RUNNING = ["created", "pending", "running", "manual"]


def new_secret() -> str:
    return "whk-" + os.urandom(24).hex()


def new_run_id() -> int:
    return 6_000_000_000 + uuid.uuid4().int % 1_000_000_000


def new_id() -> int:
    return 10_000 + uuid.uuid4().int % 1_000_000_000


# ---- signing -------------------------------------------------------------------------------------


def hub_signature(secret: str | bytes, body: bytes) -> str:
    """`X-Hub-Signature-256` as GitHub computes it: the HMAC-SHA256 hex digest of the raw body."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def hub_signature_sha1(secret: str, body: bytes) -> str:
    """The legacy `X-Hub-Signature` (SHA-1) GitHub sends beside it."""
    return "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


def standard_webhook_key(secret: str) -> bytes:
    """Standard Webhooks: a `whsec_BASE64` secret is the base64 of the key; any other is the key."""
    return base64.b64decode(secret[len("whsec_"):]) if secret.startswith("whsec_") else secret.encode()


def standard_webhook_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(standard_webhook_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def test_the_test_signers_match_the_documented_vectors():
    """The signers below are the platforms' own: GitHub's published vector, and the Standard
    Webhooks construction recomputed by hand from its definition."""
    assert hub_signature(DOC_SECRET, DOC_PAYLOAD) == DOC_SIGNATURE
    key = bytes(range(32))
    secret = "whsec_" + base64.b64encode(key).decode()
    want = base64.b64encode(hmac.new(key, b"msg_1.1700000000.{}", hashlib.sha256).digest()).decode()
    assert standard_webhook_signature(secret, "msg_1", 1700000000, b"{}") == "v1," + want
    # a secret without the prefix is its own bytes (the twin)
    assert standard_webhook_key("plain-secret-0123456789") == b"plain-secret-0123456789"


def body_of(payload) -> bytes:
    """A payload as the platforms send it: compact JSON, UTF-8."""
    return json.dumps(payload, separators=(",", ":")).encode()


# ---- GitHub payloads (shapes of "Webhook events and payloads") -----------------------------------


def gh_user(login: str, user_id: int, kind: str = "User") -> dict:
    api = f"https://api.github.com/users/{login}"
    return {
        "login": login, "id": user_id, "node_id": base64.b64encode(f"04:User{user_id}".encode()).decode(),
        "avatar_url": f"https://avatars.githubusercontent.com/u/{user_id}?v=4", "gravatar_id": "",
        "url": api, "html_url": f"https://github.com/{login}", "followers_url": f"{api}/followers",
        "following_url": f"{api}/following{{/other_user}}", "gists_url": f"{api}/gists{{/gist_id}}",
        "starred_url": f"{api}/starred{{/owner}}{{/repo}}", "subscriptions_url": f"{api}/subscriptions",
        "organizations_url": f"{api}/orgs", "repos_url": f"{api}/repos", "events_url": f"{api}/events{{/privacy}}",
        "received_events_url": f"{api}/received_events", "type": kind, "user_view_type": "public",
        "site_admin": False,
    }


def gh_repo_lite(repo_id: int) -> dict:
    """The repository as `workflow_run.repository` / `head_repository` carry it."""
    full = f"{OWNER}/{REPO}"
    api = f"https://api.github.com/repos/{full}"
    return {
        "id": repo_id, "node_id": base64.b64encode(f"010:Repository{repo_id}".encode()).decode(),
        "name": REPO, "full_name": full, "private": True, "owner": gh_user(OWNER, 987654, "Organization"),
        "html_url": f"https://github.com/{full}", "description": "the application", "fork": False, "url": api,
        "forks_url": f"{api}/forks", "keys_url": f"{api}/keys{{/key_id}}",
        "collaborators_url": f"{api}/collaborators{{/collaborator}}", "teams_url": f"{api}/teams",
        "hooks_url": f"{api}/hooks", "issue_events_url": f"{api}/issues/events{{/number}}",
        "events_url": f"{api}/events", "assignees_url": f"{api}/assignees{{/user}}",
        "branches_url": f"{api}/branches{{/branch}}", "tags_url": f"{api}/tags",
        "blobs_url": f"{api}/git/blobs{{/sha}}", "git_tags_url": f"{api}/git/tags{{/sha}}",
        "git_refs_url": f"{api}/git/refs{{/sha}}", "trees_url": f"{api}/git/trees{{/sha}}",
        "statuses_url": f"{api}/statuses/{{sha}}", "languages_url": f"{api}/languages",
        "stargazers_url": f"{api}/stargazers", "contributors_url": f"{api}/contributors",
        "subscribers_url": f"{api}/subscribers", "subscription_url": f"{api}/subscription",
        "commits_url": f"{api}/commits{{/sha}}", "git_commits_url": f"{api}/git/commits{{/sha}}",
        "comments_url": f"{api}/comments{{/number}}", "issue_comment_url": f"{api}/issues/comments{{/number}}",
        "contents_url": f"{api}/contents/{{+path}}", "compare_url": f"{api}/compare/{{base}}...{{head}}",
        "merges_url": f"{api}/merges", "archive_url": f"{api}/{{archive_format}}{{/ref}}",
        "downloads_url": f"{api}/downloads", "issues_url": f"{api}/issues{{/number}}",
        "pulls_url": f"{api}/pulls{{/number}}", "milestones_url": f"{api}/milestones{{/number}}",
        "notifications_url": f"{api}/notifications{{?since,all,participating}}",
        "labels_url": f"{api}/labels{{/name}}", "releases_url": f"{api}/releases{{/id}}",
        "deployments_url": f"{api}/deployments",
    }


def gh_repository(repo_id: int) -> dict:
    """The top-level `repository` of a delivery."""
    full = f"{OWNER}/{REPO}"
    r = gh_repo_lite(repo_id)
    r.update({
        "created_at": "2023-03-01T09:12:44Z", "updated_at": "2025-01-20T11:02:17Z", "pushed_at": "2025-01-21T08:30:05Z",
        "git_url": f"git://github.com/{full}.git", "ssh_url": f"git@github.com:{full}.git",
        "clone_url": f"https://github.com/{full}.git", "svn_url": f"https://github.com/{full}", "homepage": None,
        "size": 5120, "stargazers_count": 3, "watchers_count": 3, "language": "Rust", "has_issues": True,
        "has_projects": False, "has_downloads": True, "has_wiki": False, "has_pages": False, "has_discussions": False,
        "forks_count": 0, "mirror_url": None, "archived": False, "disabled": False, "open_issues_count": 2,
        "license": None, "allow_forking": False, "is_template": False, "web_commit_signoff_required": False,
        "topics": [], "visibility": "private", "forks": 0, "open_issues": 2, "watchers": 3, "default_branch": "main",
        "custom_properties": {},
    })
    return r


def gh_organization() -> dict:
    api = f"https://api.github.com/orgs/{OWNER}"
    return {
        "login": OWNER, "id": 987654, "node_id": "MDEyOk9yZ2FuaXphdGlvbjk4NzY1NA==", "url": api,
        "repos_url": f"{api}/repos", "events_url": f"{api}/events", "hooks_url": f"{api}/hooks",
        "issues_url": f"{api}/issues", "members_url": f"{api}/members{{/member}}",
        "public_members_url": f"{api}/public_members{{/member}}",
        "avatar_url": "https://avatars.githubusercontent.com/u/987654?v=4", "description": "",
    }


def workflow_run_payload(action: str, run_id: int, attempt: int, *, repo_id: int = REPO_ID,
                         conclusion: str | None = "success") -> dict:
    """A `workflow_run` delivery (`requested`, `in_progress` or `completed`), every top-level key of
    GitHub's example (`action`, `organization`, `repository`, `sender`, `workflow`, `workflow_run`)
    and every member of `workflow_run` its schema requires."""
    full = f"{OWNER}/{REPO}"
    api = f"https://api.github.com/repos/{full}"
    run_api = f"{api}/actions/runs/{run_id}"
    sha = hashlib.sha1(str(run_id).encode()).hexdigest()
    status = {"requested": "queued", "in_progress": "in_progress", "completed": "completed"}[action]
    actor = gh_user("octocat", 583231)
    workflow_id = 71_236_455
    return {
        "action": action,
        "workflow_run": {
            "id": run_id, "name": "Deploy", "node_id": f"WFR_kwLO{run_id:x}", "head_branch": "main",
            "head_sha": sha, "path": ".github/workflows/deploy.yml", "display_title": "Deploy the app",
            "run_number": 412, "event": "push", "status": status,
            "conclusion": conclusion if action == "completed" else None,
            "workflow_id": workflow_id, "check_suite_id": 31_000_000_000 + run_id % 1000,
            "check_suite_node_id": "CS_kwDOAbCdEf8AAAAHN0Bbbw", "url": run_api,
            "html_url": f"https://github.com/{full}/actions/runs/{run_id}", "pull_requests": [],
            "created_at": "2025-01-21T08:30:09Z", "updated_at": "2025-01-21T08:34:51Z", "actor": actor,
            "run_attempt": attempt, "referenced_workflows": [], "run_started_at": "2025-01-21T08:30:09Z",
            "triggering_actor": actor, "jobs_url": f"{run_api}/jobs", "logs_url": f"{run_api}/logs",
            "check_suite_url": f"{api}/check-suites/{31_000_000_000 + run_id % 1000}",
            "artifacts_url": f"{run_api}/artifacts", "cancel_url": f"{run_api}/cancel",
            "rerun_url": f"{run_api}/rerun",
            "previous_attempt_url": f"{run_api}/attempts/{attempt - 1}" if attempt > 1 else None,
            "workflow_url": f"{api}/actions/workflows/{workflow_id}",
            "head_commit": {
                "id": sha, "tree_id": hashlib.sha1(sha.encode()).hexdigest(), "message": "Deploy: bump the version",
                "timestamp": "2025-01-21T08:30:05Z",
                "author": {"name": "Mona Octocat", "email": "octocat@github.com"},
                "committer": {"name": "GitHub", "email": "noreply@github.com"},
            },
            "repository": gh_repo_lite(repo_id), "head_repository": gh_repo_lite(repo_id),
        },
        "workflow": {
            "id": workflow_id, "node_id": "W_kwDOAbCdEf4EPuJn", "name": "Deploy",
            "path": ".github/workflows/deploy.yml", "state": "active", "created_at": "2024-05-02T10:11:12.000Z",
            "updated_at": "2024-05-02T10:11:12.000Z", "url": f"{api}/actions/workflows/{workflow_id}",
            "html_url": f"https://github.com/{full}/blob/main/.github/workflows/deploy.yml",
            "badge_url": f"https://github.com/{full}/workflows/Deploy/badge.svg",
        },
        "repository": gh_repository(repo_id),
        "organization": gh_organization(),
        "sender": actor,
    }


def workflow_job_payload(run_id: int, attempt: int) -> dict:
    """A `workflow_job` `completed` delivery of one job of that run attempt."""
    full = f"{OWNER}/{REPO}"
    job_id = 33_000_000_000 + run_id % 1_000_000
    return {
        "action": "completed",
        "workflow_job": {
            "id": job_id, "run_id": run_id, "run_attempt": attempt, "workflow_name": "Deploy", "head_branch": "main",
            "run_url": f"https://api.github.com/repos/{full}/actions/runs/{run_id}",
            "node_id": "CR_kwDOAbCdEf8AAAAHuKk", "head_sha": hashlib.sha1(str(run_id).encode()).hexdigest(),
            "url": f"https://api.github.com/repos/{full}/actions/jobs/{job_id}",
            "html_url": f"https://github.com/{full}/actions/runs/{run_id}/job/{job_id}",
            "status": "completed", "conclusion": "success", "created_at": "2025-01-21T08:30:10Z",
            "started_at": "2025-01-21T08:30:14Z", "completed_at": "2025-01-21T08:31:02Z", "name": "build",
            "steps": [{"name": "Set up job", "status": "completed", "conclusion": "success", "number": 1,
                       "started_at": "2025-01-21T08:30:14Z", "completed_at": "2025-01-21T08:30:16Z"}],
            "check_run_url": f"https://api.github.com/repos/{full}/check-runs/{job_id}",
            "labels": ["ubuntu-latest"], "runner_id": 7, "runner_name": "GitHub Actions 7",
            "runner_group_id": 2, "runner_group_name": "GitHub Actions",
        },
        "repository": gh_repository(REPO_ID),
        "organization": gh_organization(),
        "sender": gh_user("octocat", 583231),
    }


def ping_payload(hook_id: int = 500_000_001) -> dict:
    """The `ping` GitHub sends when a webhook is created."""
    full = f"{OWNER}/{REPO}"
    hooks = f"https://api.github.com/repos/{full}/hooks/{hook_id}"
    return {
        "zen": "Keep it logically awesome.",
        "hook_id": hook_id,
        "hook": {
            "type": "Repository", "id": hook_id, "name": "web", "active": True, "events": ["workflow_run"],
            "config": {"content_type": "json", "insecure_ssl": "0", "secret": "********",
                       "url": "https://broker.example/v1/events/github"},
            "updated_at": "2025-01-21T08:00:00Z", "created_at": "2025-01-21T08:00:00Z", "url": hooks,
            "test_url": f"{hooks}/test", "ping_url": f"{hooks}/pings", "deliveries_url": f"{hooks}/deliveries",
            "last_response": {"code": None, "status": "unused", "message": None},
        },
        "repository": gh_repository(REPO_ID),
        "sender": gh_user("octocat", 583231),
    }


def github_headers(event: str, guid: str | None, body: bytes, secret: str | None) -> dict:
    """The delivery headers GitHub sends ("Delivery headers")."""
    h = {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/044aadd",
        "X-GitHub-Event": event,
        "X-GitHub-Hook-ID": "500000001",
        "X-GitHub-Hook-Installation-Target-Type": "repository",
        "X-GitHub-Hook-Installation-Target-ID": str(REPO_ID),
    }
    if guid is not None:
        h["X-GitHub-Delivery"] = guid
    if secret is not None:
        h["X-Hub-Signature"] = hub_signature_sha1(secret, body)
        h["X-Hub-Signature-256"] = hub_signature(secret, body)
    return h


# ---- GitLab payloads (shapes of "Webhook events" -> Job events) -----------------------------------


def job_payload(pipeline_id: int, build_id: int, status: str, project_id: int = GITLAB_PROJECT_ID) -> dict:
    """A Job Hook body, every top-level key of GitLab's example."""
    sha = hashlib.sha1(f"{pipeline_id}".encode()).hexdigest()
    finished = status in GITLAB_STATES_FINAL
    started = status not in ("created", "pending", "manual", "skipped")
    web = "https://gitlab.example.com/acme/app"
    return {
        "object_kind": "build",
        "ref": "main",
        "tag": False,
        "before_sha": hashlib.sha1(b"before").hexdigest(),
        "sha": sha,
        "build_id": build_id,
        "build_name": "deploy",
        "build_stage": "deploy",
        "build_status": status,
        "build_created_at": "2025-01-21 08:30:09 UTC",
        "build_created_at_iso": "2025-01-21T08:30:09Z",
        "build_started_at": "2025-01-21 08:30:20 UTC" if started else None,
        "build_started_at_iso": "2025-01-21T08:30:20Z" if started else None,
        "build_finished_at": "2025-01-21 08:31:40 UTC" if finished and started else None,
        "build_finished_at_iso": "2025-01-21T08:31:40Z" if finished and started else None,
        "build_duration": 80.4 if finished and started else None,
        "build_queued_duration": 11.2,
        "build_allow_failure": False,
        "build_failure_reason": "script_failure" if status == "failed" else "unknown_failure",
        "retries_count": 0,
        "pipeline_id": pipeline_id,
        "project_id": project_id,
        "project_name": "Acme / app",
        "user": {"id": 77, "name": "Mona", "username": "mona", "email": "[REDACTED]",
                 "avatar_url": "https://gitlab.example.com/uploads/-/system/user/avatar/77/avatar.png"},
        "commit": {
            "id": pipeline_id, "name": None, "sha": sha, "message": "Deploy: bump the version\n",
            "author_name": "Mona", "author_email": "mona@example.com", "author_url": "https://gitlab.example.com/mona",
            "status": "running", "duration": None, "started_at": "2025-01-21 08:30:10 UTC",
            "started_at_iso": "2025-01-21T08:30:10Z", "finished_at": None, "finished_at_iso": None,
        },
        "repository": {
            "name": "app", "url": "git@gitlab.example.com:acme/app.git", "description": "the application",
            "homepage": web, "git_http_url": f"{web}.git", "git_ssh_url": "git@gitlab.example.com:acme/app.git",
            "visibility_level": 0,
        },
        "project": {
            "id": project_id, "name": "app", "description": "the application", "web_url": web, "avatar_url": None,
            "git_ssh_url": "git@gitlab.example.com:acme/app.git", "git_http_url": f"{web}.git", "namespace": "Acme",
            "visibility_level": 0, "path_with_namespace": "acme/app", "default_branch": "main",
            "ci_config_path": None,
        },
        "runner": {"id": 380987, "description": "shared-runners-manager-6", "runner_type": "instance_type",
                   "active": True, "is_shared": True, "tags": ["linux", "docker"]} if started else None,
        "environment": {"name": "production", "action": "start", "deployment_tier": "production"},
        "source_pipeline": None,
    }


def gitlab_headers(event_uuid: str | None = None, idempotency_key: str | None = None) -> dict:
    """The headers every GitLab delivery carries (no authentication yet)."""
    h = {
        "Content-Type": "application/json",
        "User-Agent": "GitLab/17.9.0",
        "X-Gitlab-Event": "Job Hook",
        "X-Gitlab-Instance": "https://gitlab.example.com",
        "X-Gitlab-Webhook-UUID": str(uuid.uuid4()),
    }
    if event_uuid is not None:
        h["X-Gitlab-Event-UUID"] = event_uuid
    if idempotency_key is not None:
        h["Idempotency-Key"] = idempotency_key
    return h


def gitlab_claims(issuer: str, pipeline_id: int, job_id: int, **overrides) -> dict:
    """A GitLab CI `id_tokens` token of that job."""
    t = now()
    c = {"iss": issuer, "aud": AUDIENCE, "sub": "project_path:acme/app:ref_type:branch:ref:main",
         "project_path": "acme/app", "project_id": str(GITLAB_PROJECT_ID), "namespace_path": "acme",
         "namespace_id": "77", "ref": "main", "ref_type": "branch", "ref_protected": "true",
         "pipeline_id": str(pipeline_id), "job_id": str(job_id), "pipeline_source": "push",
         "user_login": "mona", "user_id": "77", "runner_environment": "gitlab-hosted",
         "iat": t, "nbf": t, "exp": t + 300, "jti": uuid.uuid4().hex}
    return with_overrides(c, overrides)


# ---- the broker ----------------------------------------------------------------------------------


class Events:
    """A broker with webhook secrets on its providers: `github` (and optionally `github2`, its own
    issuer and secret) and optionally `gitlab`; one JWT role each (`deploy`, `deploy2`, `gl-deploy`);
    the admin credential for introspection."""

    def __init__(self, broker_factory, mock_factory, tmp_path, *, github_secret: str | None = None,
                 second_github: bool = False, gitlab_secret: str | None = None, with_github: bool = True):
        self.tmp = tmp_path
        (tmp_path / "admin.token").write_text(ADMIN_TOKEN)
        providers, roles = [], []
        self.secrets: dict[str, str] = {}
        self.mocks: dict = {}
        if with_github:
            self._add_github("github", "deploy", github_secret or new_secret(), mock_factory, providers, roles)
        if second_github:
            self._add_github("github2", "deploy2", new_secret(), mock_factory, providers, roles)
        if gitlab_secret is not None:
            self.mocks["gitlab"] = mock_factory()
            self.secrets["gitlab"] = gitlab_secret
            providers.append({"name": "gitlab", "profile": "gitlab", "issuer": self.mocks["gitlab"].issuer,
                              "audiences": [AUDIENCE],
                              "webhook_secret_file": str(self._secret_file("gitlab", gitlab_secret))})
            roles.append(cloud_role("gl-deploy", "gitlab", JWT_CREDENTIAL,
                                    conditions={"project_id": str(GITLAB_PROJECT_ID), "ref": "main"}))
        self.broker = broker_factory(providers=providers, roles=roles, server={"rate_limit_per_second": 0},
                                     extra_config={"admin": {"token_file": str(tmp_path / "admin.token")}})

    def _secret_file(self, name: str, secret: str):
        path = self.tmp / f"{name}.webhook-secret"
        path.write_text(secret + "\n")  # trimmed by the broker
        return path

    def _add_github(self, name, role_name, secret, mock_factory, providers, roles):
        self.mocks[name] = mock_factory()
        self.secrets[name] = secret
        providers.append(github_provider(name, self.mocks[name].issuer,
                                         webhook_secret_file=str(self._secret_file(name, secret))))
        roles.append(cloud_role(role_name, name, JWT_CREDENTIAL))

    @property
    def url(self) -> str:
        return self.broker.url

    # -- workloads
    def github_token(self, run_id: int, attempt: int, provider: str = "github") -> str:
        m = self.mocks[provider]
        return m.sign(github_claims(m.issuer, run_id=str(run_id), run_attempt=str(attempt)))

    def exchange_github(self, run_id: int, attempt: int, provider: str = "github"):
        return self.broker.exchange(self.github_token(run_id, attempt, provider),
                                    role={"github": "deploy", "github2": "deploy2"}[provider])

    def github_credential(self, run_id: int, attempt: int, provider: str = "github") -> str:
        r = self.exchange_github(run_id, attempt, provider)
        assert r.status == 200, r
        return r.json["access_token"]

    def exchange_gitlab(self, pipeline_id: int, job_id: int):
        m = self.mocks["gitlab"]
        return self.broker.exchange(m.sign(gitlab_claims(m.issuer, pipeline_id, job_id)), role="gl-deploy")

    def gitlab_credential(self, pipeline_id: int, job_id: int) -> str:
        r = self.exchange_gitlab(pipeline_id, job_id)
        assert r.status == 200, r
        return r.json["access_token"]

    def active(self, token: str) -> bool:
        r = requests.post(self.url + "/v1/introspect", data={"token": token},
                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, r.text
        body = r.json()
        if body["active"] is False:
            assert body == {"active": False}, body
        return body["active"]

    # -- deliveries
    def post(self, path: str, body: bytes, headers: dict) -> requests.Response:
        return requests.post(self.url + path, data=body, headers=headers, timeout=HTTP_TIMEOUT)

    def github_delivery(self, payload, *, event: str = "workflow_run", guid: str | None = "new",
                        secret: str | None = "github", body: bytes | None = None,
                        headers: dict | None = None) -> tuple[requests.Response, str | None]:
        """Delivers `payload` (or raw `body`) to `/v1/events/github`, signed with the secret of
        provider `secret` (a provider name), or a literal secret, or unsigned (None). Returns the
        answer and the delivery GUID."""
        guid = str(uuid.uuid4()) if guid == "new" else guid
        raw = body if body is not None else body_of(payload)
        key = self.secrets.get(secret, secret) if secret is not None else None
        h = github_headers(event, guid, raw, key)
        h.update(headers or {})
        return self.post("/v1/events/github", raw, {k: v for k, v in h.items() if v is not None}), guid

    def gitlab_delivery(self, payload, *, token: str | None = "gitlab", signed: bool = False,
                        msg_id: str | None = "new", event_uuid: str | None = "new",
                        secret: str = "gitlab") -> tuple[requests.Response, str | None]:
        """Delivers a Job Hook body to `/v1/events/gitlab`, authenticated by `X-Gitlab-Token`
        (`token`: a provider name, a literal, or None) or, with `signed`, by the signing token
        (Standard Webhooks, now). Returns the answer and the delivery id (`Idempotency-Key`, which
        GitLab also sends as `webhook-id`)."""
        raw = body_of(payload)
        msg_id = f"{uuid.uuid4()}" if msg_id == "new" else msg_id
        event_uuid = f"{uuid.uuid4()}" if event_uuid == "new" else event_uuid
        h = gitlab_headers(event_uuid=event_uuid, idempotency_key=msg_id)
        if token is not None:
            h["X-Gitlab-Token"] = self.secrets.get(token, token)
        if signed:
            ts = now()
            h["webhook-id"] = msg_id
            h["webhook-timestamp"] = str(ts)
            h["webhook-signature"] = standard_webhook_signature(self.secrets.get(secret, secret), msg_id, ts, raw)
        return self.post("/v1/events/gitlab", raw, {k: v for k, v in h.items() if v is not None}), msg_id

    # -- audit
    def revokes(self) -> list[dict]:
        return [r for r in self.broker.audit() if r["decision"] == "revoke"]

    def denies(self, reason: str) -> list[dict]:
        return [r for r in self.broker.audit() if r["decision"] == "deny" and r.get("reason") == reason]


def assert_revoked(r, key: str):
    """The exchange was refused because `key` is revoked, as an admin revocation refuses it."""
    assert (r.status, r.error, r.reason) == REVOKED, r
    assert f"revoked ({key})" in r.description, r
    assert "access_token" not in r.text


def assert_ended(resp: requests.Response, key: str, guid: str):
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"ended": key, "delivery": guid}, resp.text


def assert_refused(resp: requests.Response, status: int, error: str, secrets=()):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"] == error, body
    check_error_hygiene(types.SimpleNamespace(json=body), secrets)


def gh_task(run_id: int, attempt: int) -> str:
    return f"{REPO_ID}/{run_id}/{attempt}"


@pytest.fixture
def ev(broker_factory, mock_factory, tmp_path):
    return Events(broker_factory, mock_factory, tmp_path)


# ---- GitHub: workflow_run completed ---------------------------------------------------------------


def test_a_completed_workflow_run_ends_that_run_attempt(ev):
    run = new_run_id()
    before = ev.github_credential(run, 1)  # an ID token of the attempt, accepted before
    other_attempt = ev.github_credential(run, 2)
    assert verify_broker_jwt(ev.broker, before)["task"] == gh_task(run, 1)
    assert ev.active(before) and ev.active(other_attempt)

    payload = workflow_run_payload("completed", run, 1)
    print(f"workflow_run completed payload: {len(body_of(payload))} bytes")
    resp, guid = ev.github_delivery(payload)
    key = f"task:github:{gh_task(run, 1)}"
    assert_ended(resp, key, guid)

    # after: a fresh ID token of that run attempt is refused; its broker JWT is inactive
    assert_revoked(ev.exchange_github(run, 1), key)
    assert ev.active(before) is False
    # the twins: another attempt of the same run (its own task) goes on
    assert ev.active(other_attempt) is True
    assert ev.exchange_github(run, 2).status == 200
    assert ev.exchange_github(new_run_id(), 1).status == 200

    # audited once, with the delivery id
    revokes = ev.revokes()
    assert len(revokes) == 1, revokes
    rec = revokes[0]
    assert rec["delivery_id"] == guid, rec
    assert rec["task"] == gh_task(run, 1) and rec["provider"] == "github", rec
    assert "workflow_run" in rec["detail"], rec


def test_a_redelivery_is_a_duplicate_and_another_delivery_is_already(ev):
    run = new_run_id()
    payload = workflow_run_payload("completed", run, 1)
    key = f"task:github:{gh_task(run, 1)}"
    first, guid = ev.github_delivery(payload)
    assert_ended(first, key, guid)
    assert len(ev.revokes()) == 1
    records = len(ev.broker.audit())

    # GitHub's "Redeliver": the same X-GitHub-Delivery, the same body
    again, _ = ev.github_delivery(payload, guid=guid)
    assert again.status_code == 200 and again.json() == {"duplicate": guid}, again.text
    # a second, different delivery for the ended task (e.g. a second webhook on the organization)
    second, guid2 = ev.github_delivery(payload)
    assert second.status_code == 200, second.text
    body = second.json()
    assert body["ended"] == key and body["already"] is True, body
    assert set(body) <= {"ended", "already", "delivery"} and body.get("delivery", guid2) == guid2, body
    # neither wrote a record
    assert len(ev.broker.audit()) == records, ev.broker.audit()[records:]
    assert [r["delivery_id"] for r in ev.revokes()] == [guid]
    # and the task stays ended
    assert_revoked(ev.exchange_github(run, 1), key)

    # a task an admin ended first: the delivery says `already`, and the admin's record is the one
    run2 = new_run_id()
    r = requests.post(ev.url + "/v1/revoke", data={"task": gh_task(run2, 1), "provider": "github"},
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    third, guid3 = ev.github_delivery(workflow_run_payload("completed", run2, 1))
    assert third.status_code == 200 and third.json()["already"] is True, third.text
    assert third.json()["ended"] == f"task:github:{gh_task(run2, 1)}", third.text
    assert [r.get("delivery_id") for r in ev.revokes()] == [guid, None], ev.revokes()


def test_a_forged_delivery_does_not_use_up_its_delivery_id(ev):
    """A refused delivery records nothing under its GUID: the genuine delivery with that GUID
    (sent by GitHub after, or redelivered) still ends the task."""
    run = new_run_id()
    payload = workflow_run_payload("completed", run, 1)
    guid = str(uuid.uuid4())
    forged, _ = ev.github_delivery(payload, guid=guid, secret=new_secret())
    assert forged.status_code == 401, forged.text
    real, _ = ev.github_delivery(payload, guid=guid)
    assert_ended(real, f"task:github:{gh_task(run, 1)}", guid)


def altered(body: bytes) -> bytes:
    """The signed body with the run attempt changed after signing (same length)."""
    return body.replace(b'"run_attempt":1', b'"run_attempt":2', 1)


# (what is wrong, how the delivery is made): each is 401 `invalid_client`, audited
# `event_unauthenticated`, and revokes nothing
UNAUTHENTICATED = {
    "bad-signature": dict(headers={"X-Hub-Signature-256": "sha256=" + "ab" * 32}),
    "no-signature": dict(secret=None),
    "only-the-sha1-signature": dict(headers={"X-Hub-Signature-256": None}),
    "wrong-secret": dict(secret="another-webhook-secret-0123456789"),
    "body-altered-after-signing": dict(alter=True),
    "signature-not-hex": dict(headers={"X-Hub-Signature-256": "sha256=" + "zz" * 32}),
    "empty-signature": dict(headers={"X-Hub-Signature-256": ""}),
    "no-delivery-id": dict(guid=None),
}


@pytest.mark.parametrize("case", sorted(UNAUTHENTICATED))
def test_an_unauthenticated_delivery_is_401_and_ends_nothing(ev, case):
    run = new_run_id()
    credential = ev.github_credential(run, 1)
    payload = workflow_run_payload("completed", run, 1)
    kw = dict(UNAUTHENTICATED[case])
    if kw.pop("alter", False):
        signed = body_of(payload)
        kw["body"] = altered(signed)
        assert kw["body"] != signed
        kw["headers"] = {"X-Hub-Signature-256": hub_signature(ev.secrets["github"], signed),
                         "X-Hub-Signature": None}
    resp, _ = ev.github_delivery(payload, **kw)
    sent_sig = (kw.get("headers") or {}).get("X-Hub-Signature-256") or ""
    assert_refused(resp, 401, "invalid_client", secrets=[ev.secrets["github"], sent_sig[len("sha256="):]])
    assert resp.json()["error_description"].startswith("event_unauthenticated"), resp.text
    # audited (never with the signature), and nothing revoked
    denies = ev.denies("event_unauthenticated")
    assert len(denies) == 1, ev.broker.audit()
    assert len(sent_sig) < 16 or sent_sig[len("sha256="):] not in json.dumps(denies[0]), denies
    assert ev.revokes() == []
    assert ev.active(credential) is True
    assert ev.exchange_github(run, 1).status == 200
    # the twin: the same delivery, made right, ends the task
    ok, guid = ev.github_delivery(payload)
    assert_ended(ok, f"task:github:{gh_task(run, 1)}", guid)
    assert ev.active(credential) is False


def test_githubs_documented_vector_authenticates_and_a_non_json_body_is_400(broker_factory, mock_factory, tmp_path):
    """With GitHub's documented secret, the documented body ("Hello, World!") and signature pass
    the signature check and are refused as malformed (400 `event_invalid`); the same body with the
    signature of another secret is 401: the broker's HMAC is GitHub's."""
    ev = Events(broker_factory, mock_factory, tmp_path, github_secret=DOC_SECRET)
    resp, _ = ev.github_delivery(None, body=DOC_PAYLOAD, secret=None,
                                 headers={"X-Hub-Signature-256": DOC_SIGNATURE})
    assert_refused(resp, 400, "invalid_request")
    assert resp.json()["error_description"].startswith("event_invalid"), resp.text
    assert len(ev.denies("event_invalid")) == 1, ev.broker.audit()
    twin, _ = ev.github_delivery(None, body=DOC_PAYLOAD, secret=new_secret())
    assert_refused(twin, 401, "invalid_client")
    assert len(ev.denies("event_unauthenticated")) == 1, ev.broker.audit()
    assert ev.revokes() == []


def drop(payload: dict, *path: str) -> dict:
    p = copy.deepcopy(payload)
    node = p
    for k in path[:-1]:
        node = node[k]
    del node[path[-1]]
    return p


@pytest.mark.parametrize("case", ["truncated-json", "json-array", "no-workflow_run", "no-run_attempt",
                                  "no-repository-id", "run-id-a-string"])
def test_a_malformed_delivery_with_a_good_signature_is_400(ev, case):
    run = new_run_id()
    good = workflow_run_payload("completed", run, 1)
    body = {
        "truncated-json": body_of(good)[:-40],
        "json-array": b"[]",
        "no-workflow_run": body_of(drop(good, "workflow_run")),
        "no-run_attempt": body_of(drop(good, "workflow_run", "run_attempt")),
        "no-repository-id": body_of(drop(good, "repository", "id")),
        "run-id-a-string": body_of(dict(good, workflow_run=dict(good["workflow_run"], id="x/../1"))),
    }[case]
    resp, _ = ev.github_delivery(None, body=body)
    assert_refused(resp, 400, "invalid_request")
    assert resp.json()["error_description"].startswith("event_invalid"), resp.text
    assert len(ev.denies("event_invalid")) == 1, ev.broker.audit()
    assert ev.revokes() == []
    assert ev.exchange_github(run, 1).status == 200
    ok, guid = ev.github_delivery(good)  # the twin
    assert_ended(ok, f"task:github:{gh_task(run, 1)}", guid)


@pytest.mark.parametrize("event,action", [("workflow_run", "requested"), ("workflow_run", "in_progress"),
                                          ("workflow_job", "completed"), ("ping", None)])
def test_other_events_and_actions_are_ignored(ev, event, action):
    """Only a completed workflow run ends its attempt: a run requested or in progress goes on, and
    one job's end is not the run's (an ID token names no job, so ending the attempt would end the
    jobs still running)."""
    run = new_run_id()
    credential = ev.github_credential(run, 1)
    payload = {"workflow_run": lambda: workflow_run_payload(action, run, 1),
               "workflow_job": lambda: workflow_job_payload(run, 1),
               "ping": ping_payload}[event]()
    resp, _ = ev.github_delivery(payload, event=event)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"ignored"} and isinstance(body["ignored"], str) and body["ignored"], body
    assert ev.revokes() == []
    assert ev.active(credential) is True
    assert ev.exchange_github(run, 1).status == 200
    # the twin: the run's completion ends it
    ok, guid = ev.github_delivery(workflow_run_payload("completed", run, 1))
    assert_ended(ok, f"task:github:{gh_task(run, 1)}", guid)


def test_each_github_secret_ends_tasks_in_its_own_provider_only(broker_factory, mock_factory, tmp_path):
    """Two github-actions providers with their own webhook secrets (two GitHub organizations, say)
    and the same task string in both: a delivery ends the task only in the namespace of the
    provider whose secret signed it."""
    ev = Events(broker_factory, mock_factory, tmp_path, second_github=True)
    run = new_run_id()
    in_one, in_two = ev.github_credential(run, 1, "github"), ev.github_credential(run, 1, "github2")
    payload = workflow_run_payload("completed", run, 1)

    resp, guid = ev.github_delivery(payload, secret="github2")
    assert_ended(resp, f"task:github2:{gh_task(run, 1)}", guid)
    assert ev.active(in_two) is False
    assert_revoked(ev.exchange_github(run, 1, "github2"), f"task:github2:{gh_task(run, 1)}")
    # the twin: the same task string under the other provider goes on
    assert ev.active(in_one) is True
    assert ev.exchange_github(run, 1, "github").status == 200

    resp, guid = ev.github_delivery(payload, secret="github")
    assert_ended(resp, f"task:github:{gh_task(run, 1)}", guid)
    assert ev.active(in_one) is False
    assert_revoked(ev.exchange_github(run, 1, "github"), f"task:github:{gh_task(run, 1)}")
    assert [(r["provider"], r["task"]) for r in ev.revokes()] == [("github2", gh_task(run, 1)),
                                                                  ("github", gh_task(run, 1))]
    # a third secret is neither's
    resp, _ = ev.github_delivery(workflow_run_payload("completed", new_run_id(), 1), secret=new_secret())
    assert_refused(resp, 401, "invalid_client")


# ---- GitLab: job events ---------------------------------------------------------------------------


GITLAB_TOKEN_SECRET = "glwh-" + "4f1c" * 8


@pytest.fixture
def gl(broker_factory, mock_factory, tmp_path):
    return Events(broker_factory, mock_factory, tmp_path, with_github=False, gitlab_secret=GITLAB_TOKEN_SECRET)


def gl_task(pipeline_id: int, job_id: int) -> str:
    return f"{GITLAB_PROJECT_ID}/{pipeline_id}/{job_id}"


def test_a_gitlab_job_in_a_final_state_ends_that_job(gl):
    pipeline = new_id()
    for status in GITLAB_STATES_FINAL:
        job, sibling = new_id(), new_id()
        credential, beside = gl.gitlab_credential(pipeline, job), gl.gitlab_credential(pipeline, sibling)
        resp, msg_id = gl.gitlab_delivery(job_payload(pipeline, job, status))
        key = f"task:gitlab:{gl_task(pipeline, job)}"
        assert_ended(resp, key, msg_id)
        assert gl.active(credential) is False, status
        assert_revoked(gl.exchange_gitlab(pipeline, job), key)
        # the twin: another job of the same pipeline goes on (a GitLab token names its job)
        assert gl.active(beside) is True, status
        assert gl.exchange_gitlab(pipeline, sibling).status == 200, status
        rec = gl.revokes()[-1]
        assert (rec["task"], rec["provider"], rec["delivery_id"]) == (gl_task(pipeline, job), "gitlab", msg_id), rec
    assert len(gl.revokes()) == len(GITLAB_STATES_FINAL)


def test_a_gitlab_job_not_finished_is_ignored(gl):
    pipeline, job = new_id(), new_id()
    credential = gl.gitlab_credential(pipeline, job)
    for status in GITLAB_STATES_RUNNING:
        resp, _ = gl.gitlab_delivery(job_payload(pipeline, job, status))
        assert resp.status_code == 200 and set(resp.json()) == {"ignored"}, (status, resp.text)
    assert gl.revokes() == []
    assert gl.active(credential) is True
    assert gl.exchange_gitlab(pipeline, job).status == 200
    resp, msg_id = gl.gitlab_delivery(job_payload(pipeline, job, "success"))  # the twin
    assert_ended(resp, f"task:gitlab:{gl_task(pipeline, job)}", msg_id)


@pytest.mark.parametrize("token", ["wrong", "missing", "prefix"])
def test_a_gitlab_delivery_with_a_wrong_secret_token_is_401(gl, token):
    pipeline, job = new_id(), new_id()
    credential = gl.gitlab_credential(pipeline, job)
    payload = job_payload(pipeline, job, "success")
    sent = {"wrong": "glwh-" + "0000" * 8, "missing": None, "prefix": GITLAB_TOKEN_SECRET[:-1]}[token]
    resp, _ = gl.gitlab_delivery(payload, token=sent)
    assert_refused(resp, 401, "invalid_client", secrets=[GITLAB_TOKEN_SECRET, sent or ""])
    assert resp.json()["error_description"].startswith("event_unauthenticated"), resp.text
    assert len(gl.denies("event_unauthenticated")) == 1
    assert gl.revokes() == [] and gl.active(credential) is True
    resp, msg_id = gl.gitlab_delivery(payload)  # the twin: the right token
    assert_ended(resp, f"task:gitlab:{gl_task(pipeline, job)}", msg_id)


def test_a_gitlab_delivery_id_is_idempotency_key_else_event_uuid(gl):
    """GitLab retries a delivery with the same `Idempotency-Key`: a duplicate. Without it (GitLab
    before 17.4) the `X-Gitlab-Event-UUID` is the id; with neither, the delivery is refused."""
    pipeline = new_id()
    job = new_id()
    payload = job_payload(pipeline, job, "failed")
    first, key_id = gl.gitlab_delivery(payload)
    assert_ended(first, f"task:gitlab:{gl_task(pipeline, job)}", key_id)
    retry, _ = gl.gitlab_delivery(payload, msg_id=key_id)
    assert retry.status_code == 200 and retry.json() == {"duplicate": key_id}, retry.text
    assert len(gl.revokes()) == 1

    job2 = new_id()
    event_uuid = str(uuid.uuid4())
    resp, _ = gl.gitlab_delivery(job_payload(pipeline, job2, "success"), msg_id=None, event_uuid=event_uuid)
    assert_ended(resp, f"task:gitlab:{gl_task(pipeline, job2)}", event_uuid)
    assert gl.revokes()[-1]["delivery_id"] == event_uuid

    job3 = new_id()
    resp, _ = gl.gitlab_delivery(job_payload(pipeline, job3, "success"), msg_id=None, event_uuid=None)
    assert_refused(resp, 401, "invalid_client")
    assert gl.exchange_gitlab(pipeline, job3).status == 200
    assert len(gl.revokes()) == 2


def test_a_github_delivery_signed_with_the_gitlab_secret_is_401(gl):
    """The GitLab provider's secret authenticates GitLab deliveries only: no github-actions provider
    has a secret, so every GitHub delivery is refused."""
    resp, _ = gl.github_delivery(workflow_run_payload("completed", new_run_id(), 1), secret=GITLAB_TOKEN_SECRET)
    assert_refused(resp, 401, "invalid_client", secrets=[GITLAB_TOKEN_SECRET])
    assert gl.revokes() == []


SIGNING_TOKEN = "whsec_" + base64.b64encode(bytes.fromhex("5b" * 8 + "a7" * 8 + "c3" * 16)).decode()


@pytest.fixture
def gl_signed(broker_factory, mock_factory, tmp_path):
    """The gitlab provider's secret is a GitLab signing token (`whsec_` + base64 of 32 bytes)."""
    return Events(broker_factory, mock_factory, tmp_path, with_github=False, gitlab_secret=SIGNING_TOKEN)


def test_a_signed_gitlab_delivery_ends_the_job(gl_signed):
    pipeline, job = new_id(), new_id()
    credential = gl_signed.gitlab_credential(pipeline, job)
    resp, msg_id = gl_signed.gitlab_delivery(job_payload(pipeline, job, "success"), token=None, signed=True)
    assert_ended(resp, f"task:gitlab:{gl_task(pipeline, job)}", msg_id)
    assert gl_signed.active(credential) is False
    assert gl_signed.revokes()[-1]["delivery_id"] == msg_id


def signed_headers(body: bytes, key: bytes, *, timestamp: int | None = None, sign_body: bytes | None = None) -> dict:
    """A GitLab delivery's headers, signed (Standard Webhooks) with the HMAC key `key`."""
    msg_id, ts = str(uuid.uuid4()), now() if timestamp is None else timestamp
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + (body if sign_body is None else sign_body), hashlib.sha256)
    h = gitlab_headers(event_uuid=str(uuid.uuid4()), idempotency_key=msg_id)
    h.update({"webhook-id": msg_id, "webhook-timestamp": str(ts),
              "webhook-signature": "v1," + base64.b64encode(mac.digest()).decode()})
    return h


@pytest.mark.parametrize("case", ["stale", "future", "wrong-key", "body-altered", "token-text-as-key",
                                  "no-signature"])
def test_a_signed_gitlab_delivery_that_does_not_verify_is_401(gl_signed, case):
    pipeline, job = new_id(), new_id()
    credential = gl_signed.gitlab_credential(pipeline, job)
    body = body_of(job_payload(pipeline, job, "success"))
    key = standard_webhook_key(SIGNING_TOKEN)
    headers = {
        "stale": lambda: signed_headers(body, key, timestamp=now() - 600),
        "future": lambda: signed_headers(body, key, timestamp=now() + 600),
        "wrong-key": lambda: signed_headers(body, os.urandom(32)),
        "body-altered": lambda: signed_headers(body, key, sign_body=body_of(job_payload(pipeline, job, "running"))),
        # the signing token's text as the key, not the 32 bytes it encodes
        "token-text-as-key": lambda: signed_headers(body, SIGNING_TOKEN.encode()),
        "no-signature": lambda: gitlab_headers(event_uuid=str(uuid.uuid4()), idempotency_key=str(uuid.uuid4())),
    }[case]()
    resp = gl_signed.post("/v1/events/gitlab", body, headers)
    assert_refused(resp, 401, "invalid_client", secrets=[SIGNING_TOKEN])
    assert resp.json()["error_description"].startswith("event_unauthenticated"), resp.text
    assert gl_signed.revokes() == [] and gl_signed.active(credential) is True
    assert len(gl_signed.denies("event_unauthenticated")) == 1
    # the twins: signed right, now (and within the five minutes either side)
    for ts in (None, now() - 240):
        twin = signed_headers(body, key, timestamp=ts)
        resp = gl_signed.post("/v1/events/gitlab", body, twin)
        if ts is None:
            assert_ended(resp, f"task:gitlab:{gl_task(pipeline, job)}", twin["webhook-id"])
        else:
            assert resp.status_code == 200 and resp.json()["already"] is True, resp.text


def test_a_plain_secret_signs_as_its_bytes(gl):
    """A secret without the `whsec_` prefix is the HMAC key as it is written."""
    pipeline, job = new_id(), new_id()
    resp, msg_id = gl.gitlab_delivery(job_payload(pipeline, job, "canceled"), token=None, signed=True)
    assert_ended(resp, f"task:gitlab:{gl_task(pipeline, job)}", msg_id)


# ---- durability -------------------------------------------------------------------------------------


def test_a_webhook_task_end_outlives_the_loss_of_the_state_file(ephemera_bin, mock_factory, tmp_path):
    """The file backend re-asserts the revocations the audit log records when its state file is
    lost: a task ended by a webhook is one of them, like an admin's."""
    mock = mock_factory()
    secret = new_secret()
    (tmp_path / "github.secret").write_text(secret)
    leeway = 3
    cfg = broker_config(tmp_path, [github_provider("github", mock.issuer, leeway=f"{leeway}s",
                                                   webhook_secret_file=str(tmp_path / "github.secret"))],
                        [cloud_role("deploy", "github", JWT_CREDENTIAL)], server={"rate_limit_per_second": 0})
    cfg["state"] = {"backend": "file"}
    s = Served(ephemera_bin, tmp_path / "served", cfg)
    try:
        ended, other = new_run_id(), new_run_id()

        def token(run_id, iat=None):
            claims = github_claims(mock.issuer, run_id=str(run_id), run_attempt="1")
            if iat is not None:
                claims.update(iat=iat, nbf=iat, exp=iat + 300)
            return mock.sign(claims)

        assert s.current.exchange(token(ended)).status == 200
        body = body_of(workflow_run_payload("completed", ended, 1))
        guid = str(uuid.uuid4())
        r = requests.post(s.current.url + "/v1/events/github", data=body,
                          headers=github_headers("workflow_run", guid, body, secret), timeout=HTTP_TIMEOUT)
        assert r.status_code == 200 and r.json()["ended"] == f"task:github:{gh_task(ended, 1)}", r.text
        s.end("kill")
        s.state_path.unlink()
        b = s.start_again()
        up = now()
        assert "state was lost" in b.stderr(), b.stderr()[-2000:]
        # tokens issued after the new epoch (past the replay guard): the ended task stays ended
        wait_until(lambda: now() > up, timeout=5, interval=0.02, what="a second after the start")
        iat = now() + leeway
        wait_until_presentable(iat, leeway)
        assert_revoked(b.exchange(token(ended, iat)), f"task:github:{gh_task(ended, 1)}")
        assert b.exchange(token(other, iat)).status == 200  # the twin
    finally:
        s.close()


# ---- rotating the secret ------------------------------------------------------------------------

RELOADED = "config reloaded"


def log_events(broker, message: str) -> int:
    """How many of the broker's JSON log lines carry exactly this message."""
    n = 0
    for line in broker.stderr().splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        n += isinstance(e, dict) and e.get("fields", {}).get("message") == message
    return n


def test_a_reload_rotates_the_webhook_secret(ev):
    """The secret file is read at each reload (`kill -HUP`): after a rotation the old secret is
    refused and the new one ends tasks, with no restart."""
    old, rotated = ev.secrets["github"], new_secret()
    (ev.tmp / "github.webhook-secret").write_text(rotated + "\n")
    before = log_events(ev.broker, RELOADED)
    ev.broker.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: log_events(ev.broker, RELOADED) > before, 10, what="the reload logged")
    run = new_run_id()
    payload = workflow_run_payload("completed", run, 1)
    resp, _ = ev.github_delivery(payload, secret=old)
    assert_refused(resp, 401, "invalid_client", secrets=[old, rotated])
    assert ev.revokes() == []
    resp, guid = ev.github_delivery(payload, secret=rotated)  # the twin
    assert_ended(resp, f"task:github:{gh_task(run, 1)}", guid)


# ---- config --------------------------------------------------------------------------------------


def check_config(ephemera_bin, tmp_path, prov: dict):
    """`ephemera check` on one provider and a role that pins its workload."""
    conditions = {"gitlab": {"project_id": str(GITLAB_PROJECT_ID)}, "oidc": {"sub": "svc"}}.get(prov["profile"])
    cfg = broker_config(tmp_path, [prov], [cloud_role("deploy", prov["name"], JWT_CREDENTIAL, conditions=conditions)])
    path = tmp_path / "ephemera.toml"
    path.write_text(to_toml(cfg))
    return run_cli(ephemera_bin, ["check", "--config", str(path)])


def test_webhook_secret_file_config(ephemera_bin, tmp_path, mock_issuer):
    good, short = tmp_path / "good.secret", tmp_path / "short.secret"
    good.write_text(new_secret() + "\n")
    short.write_text("fifteen-bytes!!\n")  # 15 bytes once trimmed
    iss = "https://token.actions.githubusercontent.com"
    # the twins: a github-actions and a gitlab provider with a secret of 16+ bytes load
    r = check_config(ephemera_bin, tmp_path, github_provider("github", iss, webhook_secret_file=str(good)))
    assert r.returncode == 0, (r.stdout, r.stderr)
    r = check_config(ephemera_bin, tmp_path, {"name": "gitlab", "profile": "gitlab", "issuer": "https://gitlab.com",
                                              "audiences": [AUDIENCE], "webhook_secret_file": str(good)})
    assert r.returncode == 0, (r.stdout, r.stderr)
    for prov in (
        {"name": "oidc", "profile": "oidc", "issuer": "https://ci.example.com", "audiences": [AUDIENCE],
         "webhook_secret_file": str(good)},
        github_provider("github", iss, webhook_secret_file=str(short)),
        github_provider("github", iss, webhook_secret_file=str(tmp_path / "missing.secret")),
    ):
        r = check_config(ephemera_bin, tmp_path, prov)
        assert r.returncode == 2 and "webhook_secret_file" in r.stderr, (prov, r.returncode, r.stdout, r.stderr)
        assert good.read_text().strip() not in r.stderr + r.stdout


def test_the_signed_bytes_are_the_bytes_sent(ev):
    """Whitespace the JSON parser would ignore is still part of the signed body: a body re-indented
    after signing is refused; the same re-indented body signed as sent is accepted."""
    run = new_run_id()
    payload = workflow_run_payload("completed", run, 1)
    compact = body_of(payload)
    pretty = json.dumps(payload, indent=2).encode()
    resp, _ = ev.github_delivery(None, body=pretty,
                                 headers={"X-Hub-Signature-256": hub_signature(ev.secrets["github"], compact),
                                          "X-Hub-Signature": None})
    assert_refused(resp, 401, "invalid_client")
    ok, guid = ev.github_delivery(None, body=pretty)
    assert_ended(ok, f"task:github:{gh_task(run, 1)}", guid)

