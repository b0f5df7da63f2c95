#!/usr/bin/env bash
# The logic of the Ephemera GitHub Action (main.js and post.js only run this with `main` or `post`).
#
#   main: installs a pinned ephemera release for the runner's platform (its SHA-256 checked against
#         checksums.txt beside this script, or the `sha256` input, BEFORE anything is extracted),
#         puts it on the job's PATH, and exchanges the job's GitHub ID token at the broker:
#         `--format github-env` exports the credential to the job's later steps (each secret masked
#         in the log first); `--format json` writes the broker's answer to a private file under
#         $RUNNER_TEMP instead (its secrets masked too) and never sets a secret as an output.
#   post: ends the job's task at the broker (`ephemera end-task`, with a fresh ID token), so the
#         credential stops working when the job ends, not when it expires. A failure here is a
#         warning, never a failed job: the job's work is done.
#
# Inputs come as GitHub passes them to JavaScript actions: the environment variable
# INPUT_<name upper-cased> (`-` kept: INPUT_RELEASE-URL, which a shell reads with printenv only).
# State goes from main to post through $GITHUB_STATE (`name=value` lines; post sees STATE_<name>).
# Outputs go to $GITHUB_OUTPUT, the PATH entry to $GITHUB_PATH, workflow commands (::error::,
# ::warning::, ::notice::, ::add-mask::) to stdout. Nothing here needs Node or GitHub: the tests
# run it with a fake ID token endpoint, a fake release server and a real broker
# (tests/e2e/test_github_action.py).
set -euo pipefail

# The release this version of the action installs unless the `version` input says otherwise.
DEFAULT_VERSION=0.1.0
DEFAULT_RELEASE_URL=https://github.com/ephemera-dev/ephemera/releases/download
# The pins travel with the action (never read from the job's workspace or another action's
# directory: GITHUB_ACTION_PATH is only set for composite actions, and there it names that action).
ACTION_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CHECKSUMS="$ACTION_DIR/checksums.txt"

# ---- workflow commands --------------------------------------------------------------------------

# The data of a workflow command: `%`, CR and LF escaped (GitHub unescapes them).
escape_data() {
  local s=$1
  s=${s//'%'/'%25'}
  s=${s//$'\r'/'%0D'}
  s=${s//$'\n'/'%0A'}
  printf '%s' "$s"
}
error() { printf '::error::%s\n' "$(escape_data "$*")"; }
warning() { printf '::warning::%s\n' "$(escape_data "$*")"; }
notice() { printf '::notice::%s\n' "$(escape_data "$*")"; }
fail() {
  error "$*"
  exit 1
}

# `input VAR NAME [DEFAULT]`: sets VAR to the input NAME, from INPUT_<NAME> (upper-cased, spaces as
# `_`, `-` kept), trimmed; else to DEFAULT.
input() {
  local env="INPUT_${2^^}" v
  env=${env// /_}
  v=$(printenv "$env" || true)
  v="${v#"${v%%[![:space:]]*}"}"
  v="${v%"${v##*[![:space:]]}"}"
  [[ $v != *[[:cntrl:]]* ]] || fail "input $2: a control character or line break in the value"
  printf -v "$1" '%s' "${v:-${3:-}}"
}

# Appends `name=value` to one of the runner's files ($GITHUB_OUTPUT, $GITHUB_STATE).
put() {
  local file=$1 name=$2 value=$3
  [[ $value != *[[:cntrl:]]* ]] || fail "$name: a control character in the value"
  printf '%s=%s\n' "$name" "$value" >>"$file"
}
output() { put "$GITHUB_OUTPUT" "$1" "$2"; }
save_state() { put "$GITHUB_STATE" "$1" "$2"; }

runner_file() {
  local name=$1
  [[ -n ${!name:-} ]] || fail "$name is not set: this script runs as a GitHub Actions step (main.js, post.js)"
}

# Seconds since the epoch -> RFC 3339 UTC; anything else as it is (AWS's Expiration already is).
rfc3339() {
  if [[ $1 =~ ^[0-9]+$ ]]; then date -u -d "@$1" +%Y-%m-%dT%H:%M:%SZ; else printf '%s' "$1"; fi
}

# ---- install ------------------------------------------------------------------------------------

# Sets TARGET from RUNNER_OS/RUNNER_ARCH (the platforms releases are built for).
runner_target() {
  case "${RUNNER_OS:-}/${RUNNER_ARCH:-}" in
    Linux/X64) TARGET=x86_64-unknown-linux-gnu ;;
    Linux/ARM64) TARGET=aarch64-unknown-linux-gnu ;;
    *)
      fail "no ephemera release for this runner (RUNNER_OS=${RUNNER_OS:-unset}, RUNNER_ARCH=${RUNNER_ARCH:-unset}):" \
        "releases are built for Linux/X64 and Linux/ARM64; install ephemera another way and give its path in the ephemera input"
      ;;
  esac
}

# Sets EXPECTED: the `sha256` input, else the line of checksums.txt for ASSET.
pinned_sha256() {
  local asset=$1 given=$2 pins
  if [[ -n $given ]]; then
    [[ $given =~ ^[0-9A-Fa-f]{64}$ ]] || fail "input sha256: not a SHA-256 (64 hex digits)"
    EXPECTED=${given,,}
    return
  fi
  pins=$(awk -v f="$asset" '!/^[[:space:]]*#/ && NF == 2 && ($2 == f || $2 == "*" f) { print $1 }' "$CHECKSUMS" 2>/dev/null || true)
  if [[ -z $pins ]]; then
    fail "no SHA-256 pinned for ephemera $VERSION $TARGET: give the sha256 input or use a released version"
  fi
  if [[ $(wc -l <<<"$pins") -ne 1 || ! $pins =~ ^[0-9a-f]{64}$ ]]; then
    fail "checksums.txt: the pin for $asset is malformed or given twice"
  fi
  EXPECTED=$pins
}

# Checks the release URL: https, or http on a loopback address (the tests' fake release server).
# Sets PROTO for curl's --proto.
release_proto() {
  local url=$1
  [[ $url != *@* ]] || fail "input release-url: no user information (\`@\`) in the URL"
  case $url in
    https://*) PROTO='=https' ;;
    http://127.0.0.1[:/]* | http://localhost[:/]* | http://\[::1\][:/]*) PROTO='=http' ;;
    *) fail "input release-url: must be https (http only on a loopback address), got $url" ;;
  esac
}

# Downloads, verifies and installs the release (not yet on PATH); sets BIN.
install_release() {
  local release_url=$1 sha_input=$2 asset url tmp actual root dir
  runner_target
  asset="ephemera-$VERSION-$TARGET.tar.gz"
  pinned_sha256 "$asset" "$sha_input"
  release_proto "$release_url"
  url="${release_url%/}/v$VERSION/$asset"
  root=${RUNNER_TOOL_CACHE:-${RUNNER_TEMP:-}}
  [[ -n $root ]] || fail "neither RUNNER_TOOL_CACHE nor RUNNER_TEMP is set: nowhere to install ephemera"
  tmp=$(mktemp -d "${RUNNER_TEMP:-${TMPDIR:-/tmp}}/ephemera-download.XXXXXXXX")
  # shellcheck disable=SC2064 # expand now: the path is local
  trap "rm -rf '$tmp'" EXIT

  echo "Downloading $url"
  curl --fail --silent --show-error --location --proto "$PROTO" --proto-redir '=https' \
    --retry 3 --connect-timeout 20 --max-time 600 --output "$tmp/$asset" "$url" ||
    fail "download of $url failed"
  actual=$(sha256sum "$tmp/$asset" | cut -d' ' -f1)
  if [[ $actual != "$EXPECTED" ]]; then
    fail "SHA-256 mismatch for $asset: expected $EXPECTED, got $actual; nothing was extracted or installed"
  fi
  echo "SHA-256 of $asset verified: $actual"

  mkdir "$tmp/x"
  tar -xzf "$tmp/$asset" -C "$tmp/x" --no-same-owner "ephemera-$VERSION-$TARGET/ephemera" ||
    fail "$asset holds no ephemera-$VERSION-$TARGET/ephemera"
  dir="$root/ephemera/$VERSION/$TARGET"
  mkdir -p "$dir"
  install -m 0755 "$tmp/x/ephemera-$VERSION-$TARGET/ephemera" "$dir/ephemera"
  BIN="$dir/ephemera"
  echo "Installed ephemera $VERSION ($TARGET) at $BIN"
}

# Sets GOT_VERSION from `ephemera --version` (`ephemera VERSION (commit HEX)`).
binary_version() {
  local out
  out=$("$BIN" --version 2>&1) || fail "$BIN --version failed: $out"
  [[ $out =~ ^ephemera\ ([^ ]+) ]] || fail "$BIN --version printed $out, not ephemera VERSION"
  GOT_VERSION=${BASH_REMATCH[1]}
}

# ---- main ---------------------------------------------------------------------------------------

# The broker's JSON answer: the string value of KEY (no escapes in the values this reads: JWTs,
# AWS keys, URNs). Prints nothing when the key is absent; fails on a value it cannot read whole.
json_string() {
  local file=$1 key=$2 m
  m=$(grep -oE "\"$key\"[[:space:]]*:[[:space:]]*\"[^\"]*\"" "$file" | head -n 1 || true)
  [[ -n $m ]] || return 0
  m=${m#*:}
  m=${m#*\"}
  m=${m%\"}
  [[ $m != *\\* ]] || return 1
  printf '%s' "$m"
}

json_number() {
  grep -oE "\"$2\"[[:space:]]*:[[:space:]]*[0-9]+" "$1" | head -n 1 | grep -oE '[0-9]+$' || true
}

main() {
  local broker role audience format sha_input release_url end_task given before exchanged_env expiry
  runner_file GITHUB_OUTPUT
  runner_file GITHUB_STATE
  runner_file GITHUB_PATH
  input broker broker
  input role role
  [[ -n $broker ]] || fail "input broker is required"
  [[ -n $role ]] || fail "input role is required"
  input audience audience "$broker"
  input format format github-env
  input VERSION version "$DEFAULT_VERSION"
  input sha_input sha256
  input release_url release-url "$DEFAULT_RELEASE_URL"
  input end_task end-task true
  input given ephemera
  case $format in github-env | json) ;; *) fail "input format: github-env or json, got $format" ;; esac
  case $end_task in true | false) ;; *) fail "input end-task: true or false, got $end_task" ;; esac
  [[ $VERSION =~ ^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]+)?$ ]] || fail "input version: not a version, got $VERSION"

  if [[ -n $given ]]; then
    BIN=$(command -v -- "$given") || fail "input ephemera: $given is not an executable"
    BIN=$(readlink -f -- "$BIN")
    binary_version
    echo "Using ephemera $GOT_VERSION at $BIN (the ephemera input: nothing downloaded)"
  else
    install_release "$release_url" "$sha_input"
    binary_version
    [[ $GOT_VERSION == "$VERSION" ]] || fail "the release of ephemera $VERSION holds ephemera $GOT_VERSION"
    # the job's later steps find it on PATH (credential_process lines, `ephemera grants`, ...)
    printf '%s\n' "$(dirname -- "$BIN")" >>"$GITHUB_PATH"
  fi
  output ephemera-path "$BIN"
  output version "$GOT_VERSION"
  if [[ -n ${GITHUB_REPOSITORY_ID:-} && -n ${GITHUB_RUN_ID:-} && -n ${GITHUB_RUN_ATTEMPT:-} ]]; then
    output task "$GITHUB_REPOSITORY_ID/$GITHUB_RUN_ID/$GITHUB_RUN_ATTEMPT"
  fi

  local args=(exchange --broker "$broker" --role "$role" --github-actions --audience "$audience")
  if [[ $format == github-env ]]; then
    runner_file GITHUB_ENV
    before=$(stat -c %s -- "$GITHUB_ENV")
    # stdout (the ::add-mask:: commands) and stderr (the broker's reason) go to the log as they are
    "$BIN" "${args[@]}" --format github-env || fail "the exchange for role $role at $broker failed (above)"
    record_exchange "$broker" "$role" "$audience" "$end_task" ""
    exchanged_env=$(tail -c "+$((before + 1))" -- "$GITHUB_ENV")
    expiry=$(grep -E '^(EPHEMERA_TOKEN_EXPIRES_AT|AWS_CREDENTIAL_EXPIRATION)=' <<<"$exchanged_env" | head -n 1 || true)
    [[ -z $expiry ]] || output expires-at "$(rfc3339 "${expiry#*=}")"
  else
    json_exchange "$broker" "$role" "$audience" "$end_task" "${args[@]}"
  fi
}

# What post needs, saved once the broker has handed out a credential (and only then: a failed
# exchange leaves nothing to end).
record_exchange() {
  save_state ephemera "$BIN"
  save_state broker "$1"
  save_state role "$2"
  save_state audience "$3"
  save_state end_task "$4"
  [[ -z $5 ]] || save_state credential_file "$5"
  save_state exchanged true
}

# --format json: the answer goes to a private file, never through this script's variables as a
# whole; its secrets are masked before anything else is printed, and are never outputs.
json_exchange() {
  local broker=$1 role=$2 audience=$3 end_task=$4 file key value expires_in
  shift 4
  [[ -n ${RUNNER_TEMP:-} ]] || fail "RUNNER_TEMP is not set: nowhere private to keep the credential"
  file=$(umask 077 && mktemp --suffix=.json "$RUNNER_TEMP/ephemera-credential.XXXXXXXX")
  if ! "$BIN" "$@" --format json >"$file"; then
    rm -f -- "$file"
    fail "the exchange for role $role at $broker failed (above)"
  fi
  record_exchange "$broker" "$role" "$audience" "$end_task" "$file"
  for key in access_token SecretAccessKey SessionToken; do
    if ! value=$(json_string "$file" "$key"); then
      rm -f -- "$file"
      fail "the broker's answer: cannot read $key to mask it; the credential file was deleted"
    fi
    [[ -z $value ]] || printf '::add-mask::%s\n' "$value"
  done
  output credential-file "$file"
  output token-type "$(json_string "$file" token_type)"
  output issued-token-type "$(json_string "$file" issued_token_type)"
  value=$(json_string "$file" Expiration)
  expires_in=$(json_number "$file" expires_in)
  if [[ -n $value ]]; then
    output expires-at "$value"
  elif [[ -n $expires_in ]]; then
    output expires-at "$(rfc3339 "$(($(date +%s) + expires_in))")"
  fi
  echo "The broker's answer is in $file (outputs.credential-file; deleted by the post step)"
}

# ---- post ---------------------------------------------------------------------------------------

post() {
  local out err rc
  if [[ -n ${STATE_credential_file:-} ]]; then
    rm -f -- "$STATE_credential_file"
  fi
  if [[ ${STATE_exchanged:-} != true ]]; then
    notice "ephemera: nothing to end (the main step handed out no credential)"
    return 0
  fi
  if [[ ${STATE_end_task:-true} != true ]]; then
    notice "ephemera: end-task is false: the credentials of task ${GITHUB_REPOSITORY_ID:-?}/${GITHUB_RUN_ID:-?}/${GITHUB_RUN_ATTEMPT:-?} stay valid until they expire"
    return 0
  fi
  err=$(mktemp)
  # shellcheck disable=SC2064
  trap "rm -f '$err'" EXIT
  if out=$("$STATE_ephemera" end-task --broker "$STATE_broker" --role "$STATE_role" \
    --github-actions --audience "$STATE_audience" 2>"$err"); then
    printf '%s\n' "$out"
  else
    rc=$?
    warning "ephemera end-task failed (exit $rc): the task's credentials stay valid until they expire: $(cat -- "$err")"
  fi
  return 0
}

case "${1:-}" in
  main) main ;;
  post) post ;;
  *)
    echo "usage: $0 main|post" >&2
    exit 2
    ;;
esac
