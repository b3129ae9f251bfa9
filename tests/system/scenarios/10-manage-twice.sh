#!/usr/bin/env bash
# `just manage test` twice on a fresh Debian: the first run converges the host (every tool's
# summary ok, something changed, and the accounts, keys and files are really there), the second
# changes nothing (every tool's summary says changed 0), pwck -r and grpck -r find the account
# files clean, and `just check-backend test` then finds
# no drift. Whatever tools the backend chains, each must print JSON Lines ending in its summary.
# systest-nested: run
set -euo pipefail
# shellcheck source=tests/system/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

st_require_bins bs-users just
st_start manage

# check_run WHAT: the last st_tool printed JSON Lines in which every tool's last record is its
# one summary, and every summary is ok with nothing failed. Prints the tools, one a line.
check_run() {
    local what=$1 tool all
    assert_json_lines "$ST_JSON" "$what: stdout" || return 1
    all=$(jq -s -c . <<<"$ST_JSON") # one array, for filters across records
    tools=$(jq -r '.tool' <<<"$ST_JSON" | awk '!seen[$0]++')
    assert_contains "$tools" bs-users "$what: bs-users ran" || return 1
    for tool in $tools; do
        assert_json_eq "[.[] | select(.tool == \"$tool\")] | last | .type" summary "$all" \
            "$what: the last record of $tool is its summary" || return 1
        assert_json_eq "[.[] | select(.tool == \"$tool\" and .type == \"summary\")] | length" 1 \
            "$all" "$what: $tool printed one summary" || return 1
        assert_json_eq "select(.tool == \"$tool\" and .type == \"summary\") | [.ok, .failed]" \
            '[true,0]' "$ST_JSON" "$what: $tool's summary is ok with nothing failed" || return 1
    done
    assert_json_eq '[.[] | select(.type == "error")] | length' 0 "$all" \
        "$what: no error records" || return 1
}

st_step "first run: converges"
st_tool sh -c 'cd /opt/bs && exec just manage test'
assert_eq 0 "$ST_RC" "exit status of the first 'just manage test'"
check_run "first run"
first_tools=$tools
assert_json_eq '[.[] | select(.type == "summary") | .changed] | add > 0' true \
    "$(jq -s -c . <<<"$ST_JSON")" \
    "the first run changed something"
assert_json_eq 'select(.type == "summary" and .tool == "bs-users") | .changed > 0' true \
    "$ST_JSON" "bs-users changed something on a fresh host"
printf 'first run summaries:\n%s\n' "$(st_summaries)" >&2

st_step "first run: the host is really in the backend's state"
assert_managed_groups
assert_person test-developer "developers researchers reviewers docker sudo"
assert_person TestCapitals "developers researchers reviewers docker sudo"
assert_person test-researcher "researchers reviewers docker"
assert_person test-reviewer reviewers
assert_contains "$(st_exec sshd -T)" "authorizedkeysfile /etc/ssh/authorized_keys.d/%u" \
    "sshd reads the root-owned keys files"
assert_success "the cron entry for the key refresh is installed" \
    st_exec test -s /etc/cron.d/bs-users-keys
assert_success "pwck -r finds nothing wrong in the account files" st_exec pwck -q -r
assert_success "grpck -r finds nothing wrong in the group files" st_exec grpck -r
assert_failure "no account-file transaction is left open" \
    st_exec test -e /etc/.bs-accounts.journal

st_step "second run: changes nothing"
st_tool sh -c 'cd /opt/bs && exec just manage test'
assert_eq 0 "$ST_RC" "exit status of the second 'just manage test'"
check_run "second run"
assert_eq "$first_tools" "$tools" "the second run ran the same tools"
for tool in $tools; do
    assert_json_eq "select(.tool == \"$tool\" and .type == \"summary\") | .changed" 0 \
        "$ST_JSON" "second run: $tool's summary reports zero changes"
done
assert_json_eq '[.[] | select(.changed == true)] | length' 0 "$(jq -s -c . <<<"$ST_JSON")" \
    "second run: no record says it changed something"
printf 'second run summaries:\n%s\n' "$(st_summaries)" >&2

st_step "check-backend finds no drift (once the engine restart bs-docker owes for daemon.json is done)"
st_engine_restarted_by_hand
st_tool sh -c 'cd /opt/bs && exec just check-backend test'
assert_json_lines "$ST_JSON" "check-backend: stdout"
for tool in $(jq -r 'select(.type == "summary") | .tool' <<<"$ST_JSON"); do
    assert_json_eq "select(.tool == \"$tool\" and .type == \"summary\") | [.ok, .failed, .changed]" \
        '[true,0,0]' "$ST_JSON" "check-backend: $tool's summary is ok and finds no drift"
done
assert_eq 0 "$ST_RC" "exit status of 'just check-backend test' (3 would be drift)"
