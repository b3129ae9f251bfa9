# -*- coding: utf-8 -*-
# Copyright: the bs developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bs tools' JSON Lines, read for Ansible.

Every bs tool prints one JSON object a line on stdout, each with "tool" and "type", and ends
with its "summary" (docs/json.md). This module turns that stream into what the modules return:
per tool its summary, its records, and the diff a person reads with --diff.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import re

# Exit codes every bs tool shares (docs/json.md).
EXIT_OK = 0
EXIT_ITEM_FAILED = 1
EXIT_USAGE = 2
EXIT_DRIFT = 3

MASK = "********"

# The tools never print a secret (their contract), but a fleet run copies records into
# Ansible's facts, callbacks and logs, which reach more people than the host's own journal.
# Values under these keys are masked whatever a future record puts there.
_SECRET_KEY = re.compile(
    r"(token|secret|password|passwd|authorization|credential|private_key|api_key|cookie)",
    re.IGNORECASE,
)
# Maps of environment variables (a job definition's "env") are masked value by value: a
# job's environment is the place a database URL with a password would sit.
_ENV_KEYS = frozenset(["env", "environment"])

# Record keys rendered in the diff, in this order, after "action target".
_DIFF_FIELDS = (
    "add", "remove", "added", "removed", "differs", "keys", "differences",
    "uid", "gid", "path", "purpose", "source",
)

# Tool names bs ships; anything else given to a module is refused before a command runs.
TOOL_NAME = re.compile(r"^bs-[a-z][a-z0-9-]*$")
BACKEND_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def scrub(value, key=None):
    """Return VALUE with the values under secret-looking keys (and every env value) masked."""
    if key is not None and _SECRET_KEY.search(key) and value not in (None, "", [], {}):
        if isinstance(value, (bool, int, float)):
            return value  # a counter such as "secrets": 0 says nothing secret
        return MASK
    if isinstance(value, dict):
        if key is not None and key.lower() in _ENV_KEYS:
            return dict((k, MASK) for k in value)
        return dict((k, scrub(v, k)) for k, v in value.items())
    if isinstance(value, list):
        if key is not None and key.lower() in _ENV_KEYS:
            return [MASK] * len(value)
        return [scrub(v) for v in value]
    return value


def parse_json_lines(text):
    """Split stdout into (records, bad_lines): records are the JSON objects, scrubbed."""
    records, bad = [], []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            bad.append({"line": number, "text": line[:200]})
            continue
        if not isinstance(record, dict) or not isinstance(record.get("tool"), str):
            bad.append({"line": number, "text": line[:200]})
            continue
        records.append(scrub(record))
    return records, bad


def is_change(record):
    return record.get("changed") is True


def keep(record, which):
    """Whether a record goes into the result under records=WHICH (all, changed, none)."""
    if record.get("type") == "summary":
        return False  # summaries are returned per tool already
    if which == "all":
        return True
    if which == "changed":
        return is_change(record) or record.get("type") in ("error", "skipped", "plan_skipped")
    return False


def by_tool(records, which="changed"):
    """Group records per tool, in the order the tools ran.

    Returns (order, tools, kept): tools[t] = {"summary", "changed", "failed", "exit", "ok",
    "counts"}; kept[t] is the list of records kept under WHICH.
    """
    order, tools, kept = [], {}, {}
    for record in records:
        tool = record["tool"]
        if tool not in tools:
            order.append(tool)
            tools[tool] = {"summary": None, "errors": 0, "changes": 0}
            kept[tool] = []
        entry = tools[tool]
        if record.get("type") == "summary":
            entry["summary"] = record
        elif record.get("type") == "error":
            entry["errors"] += 1
        elif is_change(record):
            entry["changes"] += 1
        if keep(record, which):
            kept[tool].append(record)
    result = {}
    for tool in order:
        entry = tools[tool]
        summary = entry["summary"]
        if summary is None:
            # A tool that died before its summary (killed, crashed): never call it ok.
            result[tool] = {
                "summary": None, "changed": entry["changes"] > 0, "failed": True,
                "exit": None, "ok": False,
            }
            continue
        failed_items = int(summary.get("failed") or 0)
        exit_code = summary.get("exit")
        result[tool] = {
            "summary": summary,
            "changed": int(summary.get("changed") or 0) > 0,
            "failed": summary.get("ok") is False or failed_items > 0
            or exit_code in (EXIT_ITEM_FAILED, EXIT_USAGE),
            "exit": exit_code,
            "ok": summary.get("ok") is True,
        }
    return order, result, kept


def _short(value):
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def render_change(record):
    """One readable line (plus content lines) for a changed record."""
    head = "%s %s" % (record.get("action", record.get("type", "?")), record.get("target", ""))
    details = []
    for field in _DIFF_FIELDS:
        if field in record and record[field] not in (None, [], {}, ""):
            details.append("%s=%s" % (field, _short(record[field])))
    line = head.rstrip()
    if details:
        line += " (" + ", ".join(details) + ")"
    lines = [line]
    content = record.get("content")
    if isinstance(content, str) and content:
        lines.extend("  + " + text for text in content.splitlines())
    return lines


def render_diff(order, records):
    """Ansible's diff: one prepared entry per tool that changed (or would change) something."""
    diffs = []
    for tool in order:
        lines = []
        for record in records:
            if record.get("tool") == tool and is_change(record):
                lines.extend(render_change(record))
        if lines:
            diffs.append({
                "before_header": tool,
                "after_header": tool,
                "prepared": "%s:\n%s\n" % (tool, "\n".join("  " + text for text in lines)),
            })
    return diffs
