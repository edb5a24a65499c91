#!/usr/bin/env bash
# pwlint's GitHub Action (action.yml at the repository root runs this script).
#
# Installs pwlint from the action's own checkout, lints PATHS with annotations
# (`--format github`), optionally writes SARIF and the `pwlint diff --git` Markdown of a
# pull request, and reports what it did through $GITHUB_OUTPUT and $GITHUB_STEP_SUMMARY.
# Every pwlint run happens before the script exits, so a SARIF upload or a comment step
# after it (with `if: always()`) has its file even when the check fails the job.
#
# Inputs arrive as environment variables, never pasted into the script by the runner
# (a path or an argument cannot become shell code):
#   PWLINT_PATHS         files or folders, separated by spaces or newlines, quoted as in a shell
#   PWLINT_ARGS          more `pwlint check` arguments, quoted as in a shell
#   PWLINT_SARIF         write SARIF here when not empty
#   PWLINT_DIFF_COMMENT  "true": write the `pwlint diff --git BASE` Markdown for a PR comment
#   PWLINT_DIFF_BASE     the revision to compare with (default: origin/$GITHUB_BASE_REF)
#   PWLINT_DIFF_ARGS     more `pwlint diff` arguments
#   PWLINT_EXTRAS        pwlint extras to install, comma-separated (onnx, keras, torch)
#   PWLINT_ACTION_SKIP_INSTALL  "1": use the pwlint already installed (tests)
# The exit code is `pwlint check`'s (0 clean, 1 findings, 2 errors); an error of the SARIF
# or diff run (exit 2) also fails. New findings in the diff alone do not: the check gates.
set -uo pipefail

fail() {  # one annotation and exit 2, as pwlint does for bad input
    echo "::error title=pwlint action::$1"
    exit 2
}

output() {  # name=value to the step's outputs (also kept when the step fails)
    [ -n "${GITHUB_OUTPUT:-}" ] && printf '%s=%s\n' "$1" "$2" >>"$GITHUB_OUTPUT"
}

summary() {
    [ -n "${GITHUB_STEP_SUMMARY:-}" ] && printf '%s\n' "$1" >>"$GITHUB_STEP_SUMMARY"
}

PYTHON=$(command -v python || command -v python3) || fail "no python on PATH (set the python-version input)"

# Split a shell-quoted list into NUL-separated words with shlex: quotes are honoured,
# nothing is expanded or run.
split() {
    "$PYTHON" -c 'import shlex, sys; sys.stdout.write("".join(w + "\0" for w in shlex.split(sys.argv[1])))' "$1"
}

read_words() {  # read_words ARRAY_NAME INPUT_NAME VALUE
    split "$3" >/dev/null 2>&1 || fail "input '$2' is not a valid list of words (unbalanced quotes?): $3"
    mapfile -d '' -t "$1" < <(split "$3")
}

read_words PATHS paths "${PWLINT_PATHS:-.}"
read_words ARGS args "${PWLINT_ARGS:-}"
read_words DIFF_ARGS diff-args "${PWLINT_DIFF_ARGS:-}"
[ "${#PATHS[@]}" -gt 0 ] || PATHS=(.)

# The action chooses the format and the files written; `check` options doing the same
# would silently change what the annotations, SARIF or exit code mean.
for arg in "${ARGS[@]}"; do
    case "$arg" in
        --format|--format=*|--output-file|--output-file=*|--output|--output=*|-o|-o?*|--fix|--unsafe-fixes|--diff|--write-baseline|--write-baseline=*)
            fail "input 'args' must not contain $arg: the action sets the format and the output files (use the 'sarif' input for SARIF)" ;;
    esac
done

EXTRAS=$(printf '%s' "${PWLINT_EXTRAS:-}" | tr -d ' ')
case "$EXTRAS" in
    *[!A-Za-z0-9_,-]*) fail "input 'extras' must be comma-separated extra names (onnx, keras, torch), not: ${PWLINT_EXTRAS}" ;;
esac

if [ "${PWLINT_ACTION_SKIP_INSTALL:-}" != "1" ]; then
    [ -n "${GITHUB_ACTION_PATH:-}" ] || fail "GITHUB_ACTION_PATH is not set: run this script through action.yml"
    echo "::group::pip install pwlint from ${GITHUB_ACTION_PATH}${EXTRAS:+ [$EXTRAS]}"
    "$PYTHON" -m pip install --disable-pip-version-check --quiet "${GITHUB_ACTION_PATH}${EXTRAS:+[$EXTRAS]}" \
        || fail "pip could not install pwlint from ${GITHUB_ACTION_PATH}"
    echo "::endgroup::"
fi

pwlint() { "$PYTHON" -m pwlint "$@"; }

# 1. Annotations: the gate.
pwlint check --format github "${ARGS[@]}" "${PATHS[@]}"
check_code=$?
output exit-code "$check_code"
case "$check_code" in
    0) summary "**pwlint**: no findings at or above fail-on in \`${PATHS[*]}\`." ;;
    1) summary "**pwlint**: findings in \`${PATHS[*]}\` (exit 1); they are annotated on the model files." ;;
    *) summary "**pwlint**: some files could not be checked (exit $check_code); see the error annotations." ;;
esac
final_code=$check_code

# 2. SARIF for code scanning: every finding, whatever the gate said.
sarif_file=""
if [ -n "${PWLINT_SARIF:-}" ]; then
    mkdir -p "$(dirname "$PWLINT_SARIF")"
    pwlint check --format sarif --output-file "$PWLINT_SARIF" --exit-zero "${ARGS[@]}" "${PATHS[@]}"
    sarif_code=$?
    if [ "$sarif_code" -le 1 ] || [ -s "$PWLINT_SARIF" ]; then sarif_file=$PWLINT_SARIF; fi
    if [ "$sarif_code" -ge 2 ] && [ "$final_code" -eq 0 ]; then final_code=$sarif_code; fi
fi
output sarif-file "$sarif_file"

# 3. The pull request's model diff as Markdown, for a sticky comment.
diff_file=""
diff_code=""
diff_comment=${PWLINT_DIFF_COMMENT:-false}
if [ "${diff_comment,,}" = "true" ]; then
    base=${PWLINT_DIFF_BASE:-}
    if [ -z "$base" ] && [ -n "${GITHUB_BASE_REF:-}" ]; then
        base="origin/${GITHUB_BASE_REF}"
        # actions/checkout fetches one commit by default: fetch the base branch's tip,
        # which is what the pull request's merge commit is compared with.
        if ! git rev-parse --verify --quiet "${base}^{commit}" >/dev/null; then
            git fetch --no-tags --quiet --depth=1 origin \
                "+refs/heads/${GITHUB_BASE_REF}:refs/remotes/origin/${GITHUB_BASE_REF}" \
                || echo "::warning title=pwlint action::could not fetch ${base}"
        fi
    fi
    if [ -z "$base" ]; then
        echo "::notice title=pwlint action::no model diff: not a pull request and no diff-base given"
    else
        diff_file="${RUNNER_TEMP:-${TMPDIR:-/tmp}}/pwlint-diff.md"
        pwlint diff --git "$base" --format markdown --output-file "$diff_file" "${DIFF_ARGS[@]}" "${PATHS[@]}"
        diff_code=$?
        if [ -s "$diff_file" ]; then
            summary ""
            [ -n "${GITHUB_STEP_SUMMARY:-}" ] && cat "$diff_file" >>"$GITHUB_STEP_SUMMARY"
        else
            diff_file=""
        fi
        if [ "$diff_code" -ge 2 ] && [ "$final_code" -eq 0 ]; then final_code=$diff_code; fi
    fi
fi
output diff-file "$diff_file"
output diff-exit-code "$diff_code"

exit "$final_code"
