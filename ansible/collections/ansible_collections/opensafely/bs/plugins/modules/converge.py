#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: the bs developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: converge
short_description: Converge a research backend server with the bs tools
version_added: "0.1.0"
description:
  - Runs the bs tools on the host for one backend, as C(just manage BACKEND) does, and turns
    their JSON Lines into the task's result.
  - By default it runs the chain of the backend's own justfile (C(backends/BACKEND/justfile),
    recipe C(manage)); with O(tools) it runs C(bin/converge) with exactly those tools.
  - In check mode it runs the bs C(check) verb (the justfile's C(check) recipe), so nothing on the
    host changes, and drift is reported as C(changed).
  - With C(--diff) every changed record is shown, per tool.
  - A failed item in one tool fails the task, and the result still holds every tool's summary
    and records, so the other tools' work is not hidden.
  - The module never reads C(/etc/bs/secrets.env); the tools read it on the host. Values under
    secret-looking keys in a record are masked before they reach Ansible.
author:
  - The bs developers (@opensafely-core)
options:
  backend:
    description:
      - The backend this host is, the name of a directory under C(backends/) of O(repo).
    type: str
    required: true
  repo:
    description:
      - The bs checkout on the host.
    type: path
    required: true
  root:
    description:
      - The root the tools work on (C(BS_ROOT)); C(/) is the host itself, any other directory
        a sandbox root.
    type: path
    default: /
  tools:
    description:
      - Run only these tools, in this order, through C(bin/converge) instead of the
        backend's justfile chain.
    type: list
    elements: str
  records:
    description:
      - Which records the result and facts carry. V(changed) keeps the changes, errors and
        skipped changes; V(all) every record; V(none) only the per-tool summaries.
    type: str
    choices: [all, changed, none]
    default: changed
  timeout:
    description:
      - Seconds the whole chain may take before it is stopped and the task fails.
    type: int
    default: 1800
attributes:
  check_mode:
    support: full
    description: Runs the bs C(check) verb; nothing changes, drift is C(changed).
  diff_mode:
    support: full
    description: The changed records of each tool, one line each.
  platform:
    support: full
    platforms: posix
    description: Debian hosts with the bs tools installed.
notes:
  - The tools take the run lock C(/run/lock/bs.lock) themselves, so a fleet run and an
    operator's C(just manage) on the same host do not interleave.
requirements:
  - The bs release binaries on the host's PATH, and C(just) unless O(tools) is given.
seealso:
  - module: opensafely.bs.facts
"""

EXAMPLES = r"""
- name: Converge the host to its backend
  opensafely.bs.converge:
    backend: tpp
    repo: /srv/bs

- name: Drift report only (nothing changes)
  opensafely.bs.converge:
    backend: tpp
    repo: /srv/bs
  check_mode: true
  register: drift

- name: Only the accounts and permissions
  opensafely.bs.converge:
    backend: test
    repo: /srv/bs
    tools: [bs-users, bs-perms]
"""

RETURN = r"""
exit:
  description:
    - Exit status of the chain (0 ok, 1 an item failed, 2 usage or config error, 3 drift).
    - Not named C(rc), which Ansible would take for a failure whenever it is not 0 (drift is not).
  returned: always
  type: int
  sample: 0
mode:
  description: The bs verb that ran, C(apply) or C(check).
  returned: always
  type: str
  sample: apply
drift:
  description: In check mode, whether any tool found drift.
  returned: always
  type: bool
  sample: false
tools:
  description: Per tool, whether it changed or failed anything.
  returned: always
  type: dict
  sample:
    bs-users:
      changed: false
      failed: false
      ok: true
      exit: 0
      summary: {tool: bs-users, type: summary, changed: 0, unchanged: 12, failed: 0, ok: true}
tool_order:
  description: The tools in the order they ran (Ansible may print RV(tools) sorted).
  returned: always
  type: list
  elements: str
  sample: [bs-host, bs-users, bs-perms, bs-docker, bs-chrony, bs-jobs, bs-release]
failed_tools:
  description: The tools that failed an item or did not finish.
  returned: always
  type: list
  elements: str
  sample: [bs-users]
records:
  description: Per tool, the records kept under O(records).
  returned: always
  type: dict
  sample:
    bs-users:
      - {tool: bs-users, type: error, kind: fetch_failed, target: alice, message: HTTP 500}
errors:
  description: Every error record of every tool.
  returned: always
  type: list
  elements: dict
bad_lines:
  description: Lines of stdout that were not a bs JSON record (should never happen).
  returned: always
  type: list
  elements: dict
stderr_lines:
  description: The end of what the tools wrote for people on stderr.
  returned: always
  type: list
  elements: str
ansible_facts:
  description: Facts about the run.
  returned: always
  type: dict
  contains:
    bs_converge:
      description: O(backend), RV(mode), RV(exit), RV(drift), RV(tools), RV(tool_order) and RV(records).
      type: dict
      returned: always
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.opensafely.bs.plugins.module_utils import records as bsrec

STDERR_TAIL = 60


def chain_argv(module, check):
    """The command and extra environment for the chain, or fail the module."""
    params = module.params
    repo, backend = params["repo"], params["backend"]
    if not bsrec.BACKEND_NAME.match(backend):
        module.fail_json(msg="backend %r is not a backend name" % backend)
    justfile = os.path.join(repo, "backends", backend, "justfile")
    env = {"BS_ROOT": params["root"]}
    if params["tools"]:
        for tool in params["tools"]:
            if not bsrec.TOOL_NAME.match(tool):
                module.fail_json(msg="%r is not a bs tool name" % tool)
        converge = os.path.join(repo, "bin", "converge")
        if not os.path.isfile(converge):
            module.fail_json(msg="%s is missing: is %s a bs checkout?" % (converge, repo))
        env.update({"BS_BACKEND": backend, "BS_REPO": repo})
        verb = ["--verb", "check"] if check else []
        return [converge] + verb + list(params["tools"]), env
    if not os.path.isfile(justfile):
        module.fail_json(msg="%s is missing: no backend %s in %s" % (justfile, backend, repo))
    just = module.get_bin_path("just", required=True, opt_dirs=["/usr/local/bin"])
    return [just, "--justfile", justfile, "check" if check else "manage"], env


def main():
    module = AnsibleModule(
        argument_spec=dict(
            backend=dict(type="str", required=True),
            repo=dict(type="path", required=True),
            root=dict(type="path", default="/"),
            tools=dict(type="list", elements="str"),
            records=dict(type="str", choices=["all", "changed", "none"], default="changed"),
            timeout=dict(type="int", default=1800),
        ),
        supports_check_mode=True,
    )
    check = module.check_mode
    argv, env = chain_argv(module, check)
    if module.params["timeout"] > 0:
        argv = ["timeout", "--kill-after=30", str(module.params["timeout"])] + argv
    rc, out, err = module.run_command(argv, cwd=module.params["repo"], environ_update=env)

    parsed, bad = bsrec.parse_json_lines(out)
    order, tools, kept = bsrec.by_tool(parsed, module.params["records"])
    errors = [r for r in parsed if r.get("type") == "error"]
    failed_tools = [t for t in order if tools[t]["failed"]]
    drift = check and (rc == bsrec.EXIT_DRIFT or any(tools[t]["changed"] for t in order))
    changed = bool(drift) or any(tools[t]["changed"] for t in order)

    result = dict(
        changed=changed,
        exit=rc,
        mode="check" if check else "apply",
        drift=bool(drift),
        tools=tools,
        tool_order=order,
        failed_tools=failed_tools,
        records=kept,
        errors=errors,
        bad_lines=bad,
        stderr_lines=err.splitlines()[-STDERR_TAIL:],
        ansible_facts=dict(bs_converge=dict(
            backend=module.params["backend"],
            mode="check" if check else "apply",
            exit=rc,
            drift=bool(drift),
            tools=tools,
            tool_order=order,
            records=kept,
        )),
    )
    if module._diff:
        result["diff"] = bsrec.render_diff(order, parsed)

    if rc in (bsrec.EXIT_OK,) or (check and rc == bsrec.EXIT_DRIFT):
        if bad:
            module.fail_json(msg="the tools printed lines that are not bs records", **result)
        if not order:
            module.fail_json(msg="the chain ran no tool (no summary on stdout)", **result)
        module.exit_json(**result)
    if rc == bsrec.EXIT_USAGE:
        msg = "usage or config error: the chain stopped before anything else changed"
    elif rc == bsrec.EXIT_ITEM_FAILED:
        msg = "an item failed in %s; the other items and tools were still done" % (
            ", ".join(failed_tools) or "a tool")
    elif rc == 124 or rc == 137:
        msg = "the chain did not finish within %s seconds" % module.params["timeout"]
    else:
        msg = "the chain exited %s" % rc
    module.fail_json(msg=msg, **result)


if __name__ == "__main__":
    main()
