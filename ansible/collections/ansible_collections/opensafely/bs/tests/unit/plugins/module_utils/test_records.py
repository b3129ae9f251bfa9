# -*- coding: utf-8 -*-
# Copyright: the bs developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json

from ansible_collections.opensafely.bs.plugins.module_utils import records as bsrec


def lines(*records):
    return "\n".join(json.dumps(r) for r in records) + "\n"


USERS_FAILED = lines(
    {"tool": "bs-users", "type": "user", "action": "create_user", "target": "alice",
     "changed": True, "uid": 1001},
    {"tool": "bs-users", "type": "membership", "action": "set_groups", "target": "bob",
     "changed": True, "add": ["docker"], "remove": ["sudo"]},
    {"tool": "bs-users", "type": "group", "action": "none", "target": "reviewers",
     "changed": False},
    {"tool": "bs-users", "type": "error", "kind": "fetch_failed", "target": "carol",
     "message": "HTTP 500"},
    {"tool": "bs-users", "type": "summary", "changed": 2, "unchanged": 1, "failed": 1,
     "ok": False, "exit": 1},
    {"tool": "bs-perms", "type": "summary", "changed": 0, "unchanged": 4, "failed": 0,
     "ok": True, "exit": 0},
)


def test_a_failed_tool_does_not_hide_the_others():
    parsed, bad = bsrec.parse_json_lines(USERS_FAILED)
    assert bad == []
    order, tools, kept = bsrec.by_tool(parsed, "changed")
    assert order == ["bs-users", "bs-perms"]
    assert tools["bs-users"]["failed"] and tools["bs-users"]["changed"]
    assert not tools["bs-perms"]["failed"] and not tools["bs-perms"]["changed"]
    assert [r.get("action", r["type"]) for r in kept["bs-users"]] == [
        "create_user", "set_groups", "error"]
    assert kept["bs-perms"] == []


def test_a_tool_without_its_summary_is_failed():
    parsed = bsrec.parse_json_lines(lines(
        {"tool": "bs-docker", "type": "network", "action": "create_network",
         "target": "jobs-db", "changed": True}))[0]
    tools = bsrec.by_tool(parsed)[1]
    assert tools["bs-docker"] == {"summary": None, "changed": True, "failed": True,
                                  "exit": None, "ok": False}


def test_lines_that_are_not_records_are_reported():
    parsed, bad = bsrec.parse_json_lines('{"tool":"bs-users","type":"note"}\nnot json\n[1]\n')
    assert len(parsed) == 1
    assert [b["line"] for b in bad] == [2, 3]


def test_secret_looking_values_and_env_maps_are_masked():
    record = {"tool": "bs-jobs", "type": "job", "entry": {
        "env": {"DATABASE_URL": "mssql://u:pw@db"}, "token": "abc", "secrets": 0,
        "Authorization": "xyz", "workspace": "ws"}}
    scrubbed = bsrec.scrub(record)
    assert scrubbed["entry"]["env"] == {"DATABASE_URL": bsrec.MASK}
    assert scrubbed["entry"]["token"] == bsrec.MASK
    assert scrubbed["entry"]["Authorization"] == bsrec.MASK
    assert scrubbed["entry"]["secrets"] == 0
    assert scrubbed["entry"]["workspace"] == "ws"
    assert "pw@db" not in json.dumps(bsrec.parse_json_lines(lines(record))[0])


def test_diff_lists_each_changed_record_per_tool():
    parsed = bsrec.parse_json_lines(USERS_FAILED + lines(
        {"tool": "bs-jobs", "type": "unit", "action": "write_unit",
         "target": "/etc/systemd/system/bs-jobs-poller.service", "changed": True,
         "content": "[Service]\nExecStart=bs-jobs poll\n"}))[0]
    order = bsrec.by_tool(parsed)[0]
    diff = bsrec.render_diff(order, parsed)
    assert [d["before_header"] for d in diff] == ["bs-users", "bs-jobs"]
    users = diff[0]["prepared"]
    assert "create_user alice (uid=1001)" in users
    assert 'set_groups bob (add=["docker"], remove=["sudo"])' in users
    assert "reviewers" not in users
    assert "  + ExecStart=bs-jobs poll" in diff[1]["prepared"]
